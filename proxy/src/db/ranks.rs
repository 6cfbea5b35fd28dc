//! Access ranks (paper §4.4, Trace Collection): startup traces folded into a
//! rank sum and a hit count per (image, path), and the cold-start rule: an
//! image with no traces of its own inherits, by path, the ranks of the
//! nearest older version of the same repository that has traces, "older"
//! meaning indexed earlier by this proxy.

use std::collections::BTreeMap;

use rocksdb::{WriteBatch, WriteOptions};

use super::keys;
use super::records::{ImageRecord, RankRecord, TraceRecord};
use super::{Db, DbError, CF_IMAGES, CF_INDEXED, CF_META, CF_RANKS, CF_TAGS, CF_TRACES};

/// What folding one trace did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldOutcome {
    /// The trace was folded and stored.
    Folded {
        /// Paths whose rank and hits were updated.
        folded: u32,
        /// Opens ignored: repeated paths or paths the image does not have.
        ignored: u32,
    },
    /// A trace with this id was already folded: nothing changed.
    Duplicate,
    /// The trace names an image the database does not hold.
    UnknownImage,
}

/// The ranks the optimizer uses for one image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRanks {
    /// Rank sum and hits per path.
    pub ranks: BTreeMap<String, RankRecord>,
    /// Traces folded into the image's own ranks.
    pub traces: u64,
    /// The older image whose ranks these are, when the image has none of its own.
    pub inherited_from: Option<ImageRecord>,
}

fn trace_key(id: &str) -> Vec<u8> {
    let mut k = b"t\0".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn count_key(manifest_digest: &str) -> Vec<u8> {
    let mut k = b"n\0".to_vec();
    k.extend_from_slice(manifest_digest.as_bytes());
    k
}

/// Marks a trace whose body was dropped (over the per-image cap): a retried upload
/// with its id is still a duplicate.
fn pruned_key(id: &str) -> Vec<u8> {
    let mut k = b"p\0".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// The id of an image's `seq`-th stored trace (in upload order).
fn order_key(manifest_digest: &str, seq: u64) -> Vec<u8> {
    let mut k = b"o\0".to_vec();
    k.extend_from_slice(manifest_digest.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Trace bodies kept per image by default (older ones are dropped; their ranks stay
/// folded).
pub const DEFAULT_MAX_STORED_TRACES: u64 = 256;

fn be_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// The repository of a reference: without its `@digest` and its `:tag`.
pub fn repository(reference: &str) -> &str {
    let name = reference.split_once('@').map_or(reference, |(n, _)| n);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

impl Db {
    fn read_u64(&self, cf: &str, key: &[u8]) -> Result<Option<u64>, DbError> {
        match self
            .db
            .get_pinned_cf(self.cf(cf)?, key)
            .map_err(|e| self.rocks(e))?
        {
            None => Ok(None),
            Some(v) => be_u64(&v).map(Some).ok_or_else(|| DbError::Inconsistent {
                path: self.path.clone(),
                message: format!(
                    "{cf} {}: not a big-endian u64",
                    String::from_utf8_lossy(key)
                ),
            }),
        }
    }

    /// The sequence number of the image's first indexing (`None` for images
    /// indexed by a build that did not record it).
    pub fn index_seq(&self, manifest_digest: &str) -> Result<Option<u64>, DbError> {
        self.read_u64(CF_INDEXED, manifest_digest.as_bytes())
    }

    /// The sequence number the next newly indexed image gets.
    pub(super) fn next_index_seq(&self) -> Result<u64, DbError> {
        Ok(self.read_u64(CF_META, super::INDEX_SEQ_KEY)?.unwrap_or(1))
    }

    /// Number of traces folded into the image's own ranks.
    pub fn trace_count(&self, manifest_digest: &str) -> Result<u64, DbError> {
        Ok(self
            .read_u64(CF_TRACES, &count_key(manifest_digest))?
            .unwrap_or(0))
    }

    /// The stored trace with this id.
    pub fn trace(&self, id: &str) -> Result<Option<TraceRecord>, DbError> {
        self.get(CF_TRACES, &trace_key(id), || format!("trace {id}"))
    }

    /// The image's own ranks, by path.
    pub fn own_ranks(
        &self,
        manifest_digest: &str,
    ) -> Result<BTreeMap<String, RankRecord>, DbError> {
        let mut out = BTreeMap::new();
        for (suffix, v) in self.scan_prefix(CF_RANKS, &keys::prefix(manifest_digest))? {
            let path = String::from_utf8(suffix).map_err(|_| DbError::Inconsistent {
                path: self.path.clone(),
                message: format!("ranks of {manifest_digest}: a path is not UTF-8"),
            })?;
            let rank: RankRecord = self.decode(|| format!("rank {manifest_digest} {path}"), &v)?;
            out.insert(path, rank);
        }
        Ok(out)
    }

    /// Folds one trace into the ranks of its image, in one atomic, synced
    /// batch with the trace itself: each path's first open adds its rank
    /// (position in the trace) to the path's rank sum and one to its hits.
    /// Idempotent per trace id. Paths the image does not have, and repeated
    /// paths (only the first open counts), are ignored.
    pub fn fold_trace(&self, trace: &TraceRecord) -> Result<FoldOutcome, DbError> {
        self.fold_trace_keeping(trace, DEFAULT_MAX_STORED_TRACES)
    }

    /// Whether a trace with this id was folded (stored, or stored and dropped since).
    pub fn trace_seen(&self, id: &str) -> Result<bool, DbError> {
        if self.trace(id)?.is_some() {
            return Ok(true);
        }
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_TRACES)?, pruned_key(id))
            .map_err(|e| self.rocks(e))?
            .is_some())
    }

    /// Trace bodies stored for an image now (at most the cap it was folded with).
    pub fn stored_traces(&self, manifest_digest: &str) -> Result<usize, DbError> {
        let mut prefix = b"o\0".to_vec();
        prefix.extend_from_slice(manifest_digest.as_bytes());
        prefix.push(0);
        Ok(self.scan_prefix(CF_TRACES, &prefix)?.len())
    }

    /// [`fold_trace`](Self::fold_trace), keeping at most `keep` trace bodies for the
    /// image: the oldest is dropped (its id kept as a marker, its ranks stay folded).
    pub fn fold_trace_keeping(
        &self,
        trace: &TraceRecord,
        keep: u64,
    ) -> Result<FoldOutcome, DbError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let digest = &trace.manifest_digest;
        if self.trace_seen(&trace.id)? {
            return Ok(FoldOutcome::Duplicate);
        }
        if self.image(digest)?.is_none() {
            return Ok(FoldOutcome::UnknownImage);
        }
        // First open of each path: the lowest rank, then the earliest listed.
        let mut first: BTreeMap<&str, u32> = BTreeMap::new();
        let mut ignored = 0u32;
        for open in &trace.opens {
            let path = open.path.trim_start_matches('/');
            match first.get_mut(path) {
                Some(rank) => {
                    *rank = (*rank).min(open.rank);
                    ignored += 1;
                }
                None => {
                    first.insert(path, open.rank);
                }
            }
        }
        let ranks_cf = self.cf(CF_RANKS)?;
        let mut batch = WriteBatch::default();
        let mut folded = 0u32;
        for (path, rank) in first {
            if self.toc_entry(digest, path)?.is_none() {
                ignored += 1;
                continue;
            }
            let key = keys::path(digest, path);
            let mut record: RankRecord = self
                .get(CF_RANKS, &key, || format!("rank {digest} {path}"))?
                .unwrap_or_default();
            record.rank_sum = record.rank_sum.saturating_add(u64::from(rank));
            record.hits = record.hits.saturating_add(1);
            let v = self.encode(|| format!("rank {digest} {path}"), &record)?;
            batch.put_cf(ranks_cf, key, v);
            folded += 1;
        }
        let traces_cf = self.cf(CF_TRACES)?;
        let v = self.encode(|| format!("trace {}", trace.id), trace)?;
        batch.put_cf(traces_cf, trace_key(&trace.id), v);
        let seq = self.trace_count(digest)?;
        batch.put_cf(traces_cf, order_key(digest, seq), trace.id.as_bytes());
        let keep = keep.max(1);
        if let Some(old_seq) = (seq + 1).checked_sub(keep + 1) {
            let old_key = order_key(digest, old_seq);
            let old_id = self
                .db
                .get_pinned_cf(traces_cf, &old_key)
                .map_err(|e| self.rocks(e))?
                .map(|v| v.to_vec());
            if let Some(old_id) = old_id {
                let old_id = String::from_utf8_lossy(&old_id).into_owned();
                batch.delete_cf(traces_cf, trace_key(&old_id));
                batch.put_cf(traces_cf, pruned_key(&old_id), []);
                batch.delete_cf(traces_cf, old_key);
            }
        }
        let count = seq.saturating_add(1);
        batch.put_cf(traces_cf, count_key(digest), count.to_be_bytes());
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync).map_err(|e| self.rocks(e))?;
        Ok(FoldOutcome::Folded { folded, ignored })
    }

    /// The nearest older version of `image`'s repository that has traces:
    /// among the images tagged in the same repository and first indexed
    /// before it, the most recently indexed one with ranks.
    pub fn older_traced_version(
        &self,
        image: &ImageRecord,
    ) -> Result<Option<ImageRecord>, DbError> {
        let own_seq = self.index_seq(&image.manifest_digest)?.unwrap_or(u64::MAX);
        let mut candidates: BTreeMap<String, ()> = BTreeMap::new();
        for reference in &image.references {
            let repo = repository(reference);
            for sep in [b':', b'@'] {
                let mut prefix = repo.as_bytes().to_vec();
                prefix.push(sep);
                for (_, digest) in self.scan_prefix(CF_TAGS, &prefix)? {
                    if let Ok(d) = String::from_utf8(digest.to_vec()) {
                        if d != image.manifest_digest {
                            candidates.insert(d, ());
                        }
                    }
                }
            }
        }
        let mut best: Option<(u64, String)> = None;
        for digest in candidates.into_keys() {
            let seq = self.index_seq(&digest)?.unwrap_or(0);
            if seq >= own_seq || best.as_ref().is_some_and(|(b, _)| *b >= seq) {
                continue;
            }
            if self.own_ranks_exist(&digest)? {
                best = Some((seq, digest));
            }
        }
        match best {
            Some((_, digest)) => self.get(CF_IMAGES, digest.as_bytes(), || {
                format!("image record {digest}")
            }),
            None => Ok(None),
        }
    }

    fn own_ranks_exist(&self, manifest_digest: &str) -> Result<bool, DbError> {
        Ok(!self
            .scan_prefix_first(CF_RANKS, &keys::prefix(manifest_digest))?
            .is_empty())
    }

    fn scan_prefix_first(&self, cf: &str, prefix: &[u8]) -> Result<Vec<u8>, DbError> {
        let mut iter = self.db.iterator_cf(
            self.cf(cf)?,
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        match iter.next() {
            Some(item) => {
                let (k, _) = item.map_err(|e| self.rocks(e))?;
                Ok(if k.starts_with(prefix) {
                    k.to_vec()
                } else {
                    Vec::new()
                })
            }
            None => Ok(Vec::new()),
        }
    }

    /// The ranks to order `image`'s payloads by: its own, or, if it has none,
    /// those of [`older_traced_version`](Self::older_traced_version).
    pub fn image_ranks(&self, image: &ImageRecord) -> Result<ImageRanks, DbError> {
        let digest = &image.manifest_digest;
        let ranks = self.own_ranks(digest)?;
        let traces = self.trace_count(digest)?;
        if !ranks.is_empty() {
            return Ok(ImageRanks {
                ranks,
                traces,
                inherited_from: None,
            });
        }
        match self.older_traced_version(image)? {
            Some(older) => Ok(ImageRanks {
                ranks: self.own_ranks(&older.manifest_digest)?,
                traces,
                inherited_from: Some(older),
            }),
            None => Ok(ImageRanks {
                ranks,
                traces,
                inherited_from: None,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(
            repository("127.0.0.1:5000/a/app:v1"),
            "127.0.0.1:5000/a/app"
        );
        assert_eq!(repository("127.0.0.1:5000/a/app"), "127.0.0.1:5000/a/app");
        assert_eq!(
            repository("127.0.0.1:5000/app@sha256:abc"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(repository("app:latest"), "app");
    }
}
