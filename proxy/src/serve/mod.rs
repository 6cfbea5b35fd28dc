//! The bundle server: answers Delta Bundle Protocol requests (see
//! `transport_quic`) from the directory database and the registry.
//!
//! For each request: check it; find the wanted image (indexing it first if
//! needed) and the held images; get the plan from the shared [`PlanCache`];
//! send the header at once; then stream the payloads in plan order, reading
//! them from the registry with HTTP range requests (coalesced, several in
//! flight, retried on transient errors; see `body.rs`).

mod body;
pub mod cache;
mod header;
mod pieces;
mod resolve;
mod startup;
mod traces;

pub use body::{BufferPool, FetchPolicy};
pub use cache::{CacheConfig, PayloadCache, PayloadCacheStats};
pub use header::{build_header, HeaderError};
pub use pieces::{plan_pieces, Piece, PieceLimits, Slice};
pub use resolve::{index_error, HeldImages, ResolvePolicy, Resolver};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use transport_quic::quic::{BundleHandler, BundleWriter, HandlerError, HandlerFuture, ReplyFuture};
use transport_quic::{ErrorCode, RanksQuery, RanksReply, Request, Trace, TraceAck};

use crate::db::{Db, ImageRecord, TocEntry};
use crate::optimize::{optimize, BundlePlan, CacheStats, OptimizeInput, PlanCache, PlanKey};
use crate::registry::{Platform, RegistryClient};

/// Settings of the bundle server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Registry host (`HOST[:PORT]`) prefixed to image names that name none.
    pub registry_host: Option<String>,
    /// Range requests in flight per bundle.
    pub in_flight: usize,
    /// Largest range request in bytes.
    pub max_range: u64,
    /// Largest gap in bytes between coalesced members.
    pub max_gap: u64,
    /// Retries of a range request after a transient error.
    pub retries: u32,
    /// Wait before the first retry (doubled each time).
    pub retry_backoff: Duration,
    /// Pace each bundle's body to this many bytes per second (none: unpaced).
    pub rate_limit: Option<u64>,
    /// Allowed registries, held-image cap and tag TTL.
    pub resolve: ResolvePolicy,
    /// Trace bodies kept per image (older ones dropped; their ranks stay folded).
    pub max_stored_traces: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            registry_host: None,
            in_flight: 8,
            max_range: 8 << 20,
            max_gap: 64 << 10,
            retries: 3,
            retry_backoff: Duration::from_millis(100),
            rate_limit: None,
            resolve: ResolvePolicy::default(),
            max_stored_traces: crate::db::DEFAULT_MAX_STORED_TRACES,
        }
    }
}

impl ServeOptions {
    /// The bound on payload bytes held in memory per bundle: the requests in
    /// flight plus the one being sent.
    pub fn memory_bound(&self) -> u64 {
        (self.in_flight.max(1) as u64 + 1) * self.max_range.max(1)
    }
}

/// Counters of a [`BundleServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServeStats {
    /// Requests handled.
    pub requests: u64,
    /// Bundles sent complete.
    pub completed: u64,
    /// Requests answered with an error (or cut off).
    pub failed: u64,
    /// Payload bytes sent, those of streams cut off midway included (what a
    /// resumed pull makes it send again shows here).
    pub payload_bytes: u64,
    /// Images indexed on demand.
    pub indexed: u64,
    /// Held images (named by workers, not yet indexed) indexed on demand.
    pub held_indexed: u64,
    /// Traces folded (duplicates not counted).
    pub traces: u64,
    /// The plan cache's counters.
    pub plan_cache: CacheStats,
}

/// Serves bundles; implements [`BundleHandler`].
pub struct BundleServer {
    db: Arc<Db>,
    registry: Arc<RegistryClient>,
    cache: Arc<PlanCache>,
    resolver: Resolver,
    options: ServeOptions,
    buffers: BufferPool,
    /// Ranges shared by every bundle (none: each bundle reads its own).
    payload_cache: Option<Arc<PayloadCache>>,
    requests: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    payload_bytes: AtomicU64,
    /// Bumped whenever a trace is folded: plans built with older ranks are
    /// not reused.
    ranks_version: AtomicU64,
    traces: AtomicU64,
    /// Static start-up orders of images (for images nothing has traced).
    startup: startup::StartupOrders,
}

impl std::fmt::Debug for BundleServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleServer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How a plan orders its payloads.
#[derive(Clone, Copy)]
struct OrderBy<'a> {
    /// Layer order, ignoring ranks (trace collection).
    unordered: bool,
    /// The ranks' version (part of the plan cache key).
    ranks_version: u64,
    /// The image's static start-up order.
    startup: &'a [String],
}

/// What a plan lookup produced.
struct Planned {
    plan: Arc<BundlePlan>,
    cache_hit: bool,
}

/// Milliseconds with one decimal, for logs.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn internal(what: &str, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl BundleServer {
    /// A server over `db`, reading blobs with `registry`, caching plans in `cache`.
    pub fn new(
        db: Arc<Db>,
        registry: Arc<RegistryClient>,
        cache: Arc<PlanCache>,
        options: ServeOptions,
    ) -> Self {
        let resolver = Resolver::with_policy(
            db.clone(),
            registry.clone(),
            options.registry_host.clone(),
            options.resolve.clone(),
        );
        BundleServer {
            db,
            registry,
            cache,
            resolver,
            buffers: BufferPool::new(options.max_range.max(1), options.in_flight.max(1) + 1),
            options,
            payload_cache: None,
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
            ranks_version: AtomicU64::new(0),
            traces: AtomicU64::new(0),
            startup: startup::StartupOrders::default(),
        }
    }

    /// The same server reading ranges through `cache`, shared by every bundle.
    pub fn with_payload_cache(mut self, cache: Arc<PayloadCache>) -> Self {
        self.payload_cache = Some(cache);
        self
    }

    /// The payload cache's counters, when there is one.
    pub fn payload_cache_stats(&self) -> Option<PayloadCacheStats> {
        self.payload_cache.as_ref().map(|c| c.stats())
    }

    /// The registry client's range requests and errors.
    pub fn registry_stats(&self) -> crate::registry_stats::RegistryStats {
        self.registry.stats()
    }

    /// Current counters.
    pub fn stats(&self) -> ServeStats {
        ServeStats {
            requests: self.requests.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            payload_bytes: self.payload_bytes.load(Ordering::Relaxed),
            indexed: self.resolver.indexed(),
            held_indexed: self.resolver.held_indexed(),
            traces: self.traces.load(Ordering::Relaxed),
            plan_cache: self.cache.stats(),
        }
    }

    /// The plan for `wanted` given `held`, from the cache or built (the
    /// tables of contents and ranks are loaded only on a miss). With
    /// `unordered`, ranks are ignored: payloads go in layer order. Runs
    /// blocking.
    fn plan(
        db: &Db,
        cache: &PlanCache,
        wanted: &ImageRecord,
        held: &[ImageRecord],
        held_payloads: &HashSet<[u8; 32]>,
        order: &OrderBy<'_>,
    ) -> Result<Planned, HandlerError> {
        let OrderBy {
            unordered,
            ranks_version,
            startup,
        } = *order;
        let key = PlanKey::new(
            &wanted.manifest_digest,
            held.iter().map(|r| r.manifest_digest.as_str()),
            held_payloads,
            ranks_version,
        )
        .with_unordered(unordered);
        if let Some(plan) = cache.get(&key) {
            return Ok(Planned {
                plan,
                cache_hit: true,
            });
        }
        let toc = |r: &ImageRecord| -> Result<Vec<TocEntry>, HandlerError> {
            db.merged_toc(&r.manifest_digest)
                .map_err(|e| internal("directory database", e))
        };
        let wanted_toc = toc(wanted)?;
        let held_tocs = held.iter().map(toc).collect::<Result<Vec<_>, _>>()?;
        let ranks = if unordered {
            HashMap::new()
        } else {
            traces::plan_ranks(db, wanted, startup)?
        };
        let input = OptimizeInput {
            wanted,
            wanted_toc: &wanted_toc,
            held: held
                .iter()
                .zip(&held_tocs)
                .map(|(r, t)| (r, t.as_slice()))
                .collect(),
            held_payloads,
            ranks: &ranks,
        };
        let plan = optimize(&input).map_err(|e| internal("optimizer", e))?;
        Ok(Planned {
            plan: cache.insert(key, Arc::new(plan)),
            cache_hit: false,
        })
    }

    async fn serve(&self, request: Request, out: &mut BundleWriter) -> Result<u64, HandlerError> {
        let started = Instant::now();
        let platform = match &request.platform {
            Some(p) => Some(
                Platform::parse(p)
                    .map_err(|e| HandlerError::new(ErrorCode::BadRequest, e.to_string()))?,
            ),
            None => None,
        };
        let wanted = self
            .resolver
            .wanted(&request.image, platform.as_ref())
            .await?;
        let HeldImages {
            records: held,
            used: held_used,
        } = self.resolver.held(&request.held_images).await?;
        let held_payloads: HashSet<[u8; 32]> = request.held_payloads.iter().copied().collect();
        let reference = wanted
            .references
            .iter()
            .find(|r| !r.contains('@'))
            .or_else(|| wanted.references.first())
            .cloned()
            .ok_or_else(|| {
                HandlerError::new(
                    ErrorCode::Internal,
                    format!(
                        "image {} has no reference to read blobs from",
                        wanted.manifest_digest
                    ),
                )
            })?;

        let (db, cache) = (self.db.clone(), self.cache.clone());
        let limits = PieceLimits {
            max_range: self.options.max_range,
            max_gap: self.options.max_gap,
        };
        let held_count = held.len();
        let unordered = request.unordered;
        let ranks_version = self.ranks_version.load(Ordering::Acquire);
        let startup = if unordered {
            Arc::new(Vec::new())
        } else {
            self.startup
                .order(&self.db, &self.registry, &wanted, &reference)
                .await
        };
        let (header, pieces, cache_hit, payload_total) = tokio::task::spawn_blocking(move || {
            let planned = Self::plan(
                &db,
                &cache,
                &wanted,
                &held,
                &held_payloads,
                &OrderBy {
                    unordered,
                    ranks_version,
                    startup: &startup,
                },
            )?;
            let layer_tocs = header::layer_tables(&db, &wanted)
                .map_err(|e| internal("reading the layer tables", e))?;
            let header = build_header(&wanted, &planned.plan, layer_tocs)
                .map_err(|e| internal("building the header", e))?;
            let pieces = plan_pieces(&planned.plan.payloads, limits);
            Ok::<_, HandlerError>((
                header,
                pieces,
                planned.cache_hit,
                planned.plan.payload_bytes(),
            ))
        })
        .await
        .map_err(|e| internal("planning task", e))??;

        out.send_header_with_held(&header, &held_used).await?;
        let to_header = started.elapsed();
        let payloads = header.payloads.len();
        let manifest = header.manifest_digest.clone();
        drop(header);

        let requests = pieces.len();
        let policy = FetchPolicy {
            in_flight: self.options.in_flight,
            retries: self.options.retries,
            backoff: self.options.retry_backoff,
            rate_limit: self.options.rate_limit,
        };
        let sent = body::stream_payloads(
            self.registry.clone(),
            reference,
            pieces,
            policy,
            &self.buffers,
            self.payload_cache.clone(),
            out,
        )
        .await?;
        let totals = out.totals();
        out.finish(totals).await?;
        info!(
            image = %request.image,
            %manifest,
            held = held_count,
            held_used = ?held_used,
            unordered,
            plan_cache = if cache_hit { "hit" } else { "miss" },
            payloads,
            bytes = sent,
            planned_bytes = payload_total,
            range_requests = requests,
            header_ms = millis(to_header),
            total_ms = millis(started.elapsed()),
            "bundle sent"
        );
        Ok(sent)
    }
}

impl BundleHandler for BundleServer {
    fn handle<'a>(&'a self, request: Request, out: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let image = request.image.clone();
            match self.serve(request, out).await {
                Ok(bytes) => {
                    self.completed.fetch_add(1, Ordering::Relaxed);
                    self.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    let sent = out.totals().bytes;
                    self.payload_bytes.fetch_add(sent, Ordering::Relaxed);
                    warn!(%image, error = %e, payload_bytes = sent, "request failed");
                    Err(e)
                }
            }
        })
    }

    fn upload_trace(&self, trace: Trace) -> ReplyFuture<'_, TraceAck> {
        Box::pin(async move {
            let ack = traces::fold(
                &self.db,
                &self.resolver,
                trace,
                self.options.max_stored_traces,
            )
            .await?;
            if !ack.duplicate {
                self.traces.fetch_add(1, Ordering::Relaxed);
                self.ranks_version.fetch_add(1, Ordering::AcqRel);
            }
            Ok(ack)
        })
    }

    fn ranks(&self, query: RanksQuery) -> ReplyFuture<'_, RanksReply> {
        Box::pin(async move { traces::ranks(&self.db, &self.resolver, &query.image).await })
    }

    fn refresh(&self, query: RanksQuery) -> ReplyFuture<'_, RanksReply> {
        Box::pin(async move {
            let record = self.resolver.refresh(&query.image).await?;
            info!(image = %query.image, manifest = %record.manifest_digest, "tag re-resolved on notice");
            traces::ranks(&self.db, &self.resolver, &record.manifest_digest).await
        })
    }
}
