//! Trace uploads and ranks queries: the proxy's side of trace collection
//! (paper §4.4). Uploads are folded into the directory database's ranks
//! (see [`crate::db::ranks`]) before they are acknowledged.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;
use transport_quic::quic::HandlerError;
use transport_quic::{ErrorCode, RankedPath, RanksReply, Trace, TraceAck};

use super::internal;
use super::resolve::Resolver;
use crate::db::{Db, FoldOutcome, ImageRecord, TraceOpenRecord, TraceRecord};
use crate::optimize::Rank;

/// A readable name for an image: its first tag-like reference and digest.
fn describe(image: &ImageRecord) -> String {
    match image
        .references
        .iter()
        .find(|r| !r.contains('@'))
        .or_else(|| image.references.first())
    {
        Some(r) => format!("{r} ({})", image.manifest_digest),
        None => image.manifest_digest.clone(),
    }
}

/// The ranks the optimizer orders `wanted` by. An image traced by real
/// starts is ordered by its own traces alone. Otherwise the static start-up
/// order (`startup`, see [`crate::startup`]) goes first, and ranks
/// inherited from an older version of its repository (logged) follow it:
/// inheritance can reorder what the static analysis did not find, never push
/// what it found back. Inherited paths are carried over to the new
/// version's paths, through version changes, and dropped altogether when
/// too few of them exist in it (see [`crate::startup::inherit`]). Runs
/// blocking.
pub(super) fn plan_ranks(
    db: &Db,
    wanted: &ImageRecord,
    startup: &[String],
) -> Result<HashMap<String, Rank>, HandlerError> {
    let mut found = db
        .image_ranks(wanted)
        .map_err(|e| internal("directory database", e))?;
    if let Some(older) = &found.inherited_from {
        info!(
            image = %wanted.manifest_digest,
            from = %older.manifest_digest,
            paths = found.ranks.len(),
            "ranks of {} inherited from {}",
            describe(wanted),
            describe(older)
        );
    }
    let own = found.inherited_from.is_none() && !found.ranks.is_empty();
    if found.inherited_from.is_some() {
        let toc = db
            .merged_toc(&wanted.manifest_digest)
            .map_err(|e| internal("directory database", e))?;
        let paths: std::collections::HashSet<&str> =
            toc.iter().map(|e| e.entry.path.as_str()).collect();
        let (carried, stats) =
            crate::startup::inherit::carry_over(std::mem::take(&mut found.ranks), &paths);
        info!(
            image = %wanted.manifest_digest,
            kept = stats.kept,
            mapped = stats.mapped,
            dropped = stats.dropped,
            used = carried.is_some(),
            "inherited ranks carried over to the new version's paths"
        );
        found.ranks = carried.unwrap_or_default().into_iter().collect();
    }
    let traced = found.ranks.into_iter().map(|(path, r)| {
        (
            path,
            Rank {
                sum: r.rank_sum,
                hits: r.hits,
            },
        )
    });
    if own {
        return Ok(traced.collect());
    }
    Ok(static_first(startup, traced))
}

/// Ranks with the static order's paths first (rank = position) and then
/// `inherited`, shifted after them (average + the static order's length).
fn static_first(
    startup: &[String],
    inherited: impl Iterator<Item = (String, Rank)>,
) -> HashMap<String, Rank> {
    let n = startup.len() as u64;
    let mut ranks: HashMap<String, Rank> = startup
        .iter()
        .zip(0u64..)
        .map(|(p, i)| (p.clone(), Rank { sum: i, hits: 1 }))
        .collect();
    for (path, r) in inherited {
        ranks.entry(path).or_insert(Rank {
            sum: r.sum.saturating_add(n.saturating_mul(r.hits)),
            hits: r.hits,
        });
    }
    ranks
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Folds an uploaded trace into its image's ranks; answers once committed.
pub(super) async fn fold(
    db: &std::sync::Arc<Db>,
    resolver: &Resolver,
    trace: Trace,
    keep: u64,
) -> Result<TraceAck, HandlerError> {
    let manifest_digest = if trace.manifest_digest.is_empty() {
        resolver
            .lookup(&trace.image)?
            .map(|r| r.manifest_digest)
            .ok_or_else(|| {
                HandlerError::new(
                    ErrorCode::NotFound,
                    format!("image {} is not indexed", trace.image),
                )
            })?
    } else {
        trace.manifest_digest.clone()
    };
    let record = TraceRecord {
        id: trace.id.clone(),
        image: trace.image.clone(),
        manifest_digest: manifest_digest.clone(),
        received_ms: now_ms(),
        opens: trace
            .opens
            .iter()
            .map(|o| TraceOpenRecord {
                path: o.path.clone(),
                layer: o.layer,
                rank: o.rank,
                ms_since_start: o.ms_since_start,
                ms_waited: o.ms_waited,
            })
            .collect(),
    };
    let db = db.clone();
    let outcome = tokio::task::spawn_blocking(move || db.fold_trace_keeping(&record, keep))
        .await
        .map_err(|e| internal("trace task", e))?
        .map_err(|e| internal("directory database", e))?;
    let id = trace.id;
    match outcome {
        FoldOutcome::Folded { folded, ignored } => {
            info!(
                trace = %id,
                image = %trace.image,
                manifest = %manifest_digest,
                opens = trace.opens.len(),
                folded,
                ignored,
                "trace folded into ranks"
            );
            Ok(TraceAck {
                id,
                duplicate: false,
                folded,
                ignored,
            })
        }
        FoldOutcome::Duplicate => {
            info!(trace = %id, image = %trace.image, "trace already folded: not counted again");
            Ok(TraceAck {
                id,
                duplicate: true,
                folded: 0,
                ignored: 0,
            })
        }
        FoldOutcome::UnknownImage => Err(HandlerError::new(
            ErrorCode::NotFound,
            format!(
                "image {manifest_digest} ({}) is not indexed by this proxy",
                trace.image
            ),
        )),
    }
}

/// The ranks of `image` (indexing it first if needed), by ascending average
/// rank, ties by path.
pub(super) async fn ranks(
    db: &std::sync::Arc<Db>,
    resolver: &Resolver,
    image: &str,
) -> Result<RanksReply, HandlerError> {
    let record = resolver.wanted(image, None).await?;
    let db = db.clone();
    let found = tokio::task::spawn_blocking(move || {
        let found = db.image_ranks(&record);
        (record, found)
    })
    .await
    .map_err(|e| internal("ranks task", e))?;
    let (record, found) = found;
    let found = found.map_err(|e| internal("directory database", e))?;
    let mut ranks: Vec<RankedPath> = found
        .ranks
        .into_iter()
        .map(|(path, r)| RankedPath {
            path,
            rank_sum: r.rank_sum,
            hits: r.hits,
        })
        .collect();
    ranks.sort_by(|a, b| {
        let (x, y) = (a.average(), b.average());
        match (x, y) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.path.cmp(&b.path))
    });
    Ok(RanksReply {
        manifest_digest: record.manifest_digest.clone(),
        traces: found.traces,
        inherited_from: found.inherited_from.as_ref().map(describe),
        ranks,
    })
}

#[cfg(test)]
mod static_first_tests {
    use super::*;

    #[test]
    fn the_static_order_goes_before_inherited_ranks() {
        let startup = vec!["bin/app".to_string(), "lib/libc.so.6".to_string()];
        let inherited = vec![
            ("old/first".to_string(), Rank { sum: 0, hits: 3 }),
            ("lib/libc.so.6".to_string(), Rank { sum: 90, hits: 3 }),
            ("old/second".to_string(), Rank { sum: 3, hits: 3 }),
        ];
        let ranks = static_first(&startup, inherited.into_iter());
        let avg = |p: &str| ranks.get(p).and_then(Rank::average);
        assert_eq!(avg("bin/app"), Some(0.0));
        assert_eq!(avg("lib/libc.so.6"), Some(1.0));
        assert_eq!(avg("old/first"), Some(2.0));
        assert_eq!(avg("old/second"), Some(3.0));
        assert_eq!(ranks.len(), 4);
    }
}
