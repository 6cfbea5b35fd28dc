//! starlightd's Prometheus metrics (all prefixed `starlight_`).
//!
//! The counters and histograms live in one process-wide [`WorkerMetrics`]
//! ([`global`]), bumped where things happen (pulls in the manager and the API,
//! blocked opens in the FUSE file system); [`registry`] builds the registry the
//! metrics endpoint serves, adding the content store's size read at scrape
//! time.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `starlight_pulls_total{outcome}` | counter | pulls by outcome: `complete`, `incomplete` (the bundle ended with contents missing), `failed` (no image) |
//! | `starlight_bundle_bytes_total{outcome}` | counter | bytes received on bundle streams, by the pull's outcome |
//! | `starlight_time_to_header_seconds` | histogram | request to header |
//! | `starlight_time_to_ready_seconds` | histogram | request to image mounted and registered in containerd |
//! | `starlight_time_to_complete_seconds` | histogram | request to last payload stored |
//! | `starlight_payloads_stored_total` | counter | payloads verified and stored |
//! | `starlight_streams_resumed_total` | counter | bundle streams opened again after a break |
//! | `starlight_payload_bytes_resent_total` | counter | payload bytes cut off by a break (the proxy sends them again) |
//! | `starlight_blocked_opens_total{outcome}` | counter | opens that waited for their content: `ready`, `failed` |
//! | `starlight_blocked_open_wait_seconds` | histogram | how long they waited |
//! | `starlight_store_bytes`, `starlight_store_contents` | gauge | the content store now |
//! | `starlight_evictions_total{reason}` | counter | images evicted by the garbage collection: `removed` (gone from containerd), `unused` (unused too long), `bound` (over `max_store_bytes`) |
//! | `starlight_evicted_bytes_total` | counter | content bytes those evictions freed |

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use starlight_metrics::buckets;
use starlight_metrics::collect::gauge;

/// One label, `outcome`.
type Outcome = Vec<(&'static str, &'static str)>;

fn outcome(value: &'static str) -> Outcome {
    vec![("outcome", value)]
}

/// The outcome of a pull, for [`WorkerMetrics::pull_finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// Every content arrived and is durable.
    Complete,
    /// The image is mounted but contents are missing.
    Incomplete,
    /// No image: refused, unreachable, bad header.
    Failed,
}

impl PullOutcome {
    fn label(self) -> &'static str {
        match self {
            PullOutcome::Complete => "complete",
            PullOutcome::Incomplete => "incomplete",
            PullOutcome::Failed => "failed",
        }
    }
}

/// starlightd's counters and histograms.
#[derive(Debug)]
pub struct WorkerMetrics {
    pulls: Family<Outcome, Counter>,
    bundle_bytes: Family<Outcome, Counter>,
    time_to_header: Histogram,
    time_to_ready: Histogram,
    time_to_complete: Histogram,
    payloads_stored: Counter,
    streams_resumed: Counter,
    payload_bytes_resent: Counter,
    blocked_opens: Family<Outcome, Counter>,
    blocked_open_wait: Histogram,
    evictions: Family<Vec<(&'static str, &'static str)>, Counter>,
    evicted_bytes: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            pulls: Family::default(),
            bundle_bytes: Family::default(),
            time_to_header: Histogram::new(buckets::seconds()),
            time_to_ready: Histogram::new(buckets::seconds()),
            time_to_complete: Histogram::new(buckets::seconds()),
            payloads_stored: Counter::default(),
            streams_resumed: Counter::default(),
            payload_bytes_resent: Counter::default(),
            blocked_opens: Family::default(),
            blocked_open_wait: Histogram::new(buckets::seconds()),
            evictions: Family::default(),
            evicted_bytes: Counter::default(),
        }
    }
}

static GLOBAL: LazyLock<WorkerMetrics> = LazyLock::new(WorkerMetrics::default);

/// The process's metrics.
pub fn global() -> &'static WorkerMetrics {
    &GLOBAL
}

impl WorkerMetrics {
    /// A pull's header arrived `elapsed` after the request.
    pub fn header_arrived(&self, elapsed: Duration) {
        self.time_to_header.observe(elapsed.as_secs_f64());
    }

    /// A pull's image is mounted and registered, `elapsed` after the request.
    pub fn image_ready(&self, elapsed: Duration) {
        self.time_to_ready.observe(elapsed.as_secs_f64());
    }

    /// A pull ended: its outcome, the bytes its streams carried, and, when
    /// complete, the time from the request.
    pub fn pull_finished(&self, outcome: PullOutcome, bytes: u64, elapsed: Option<Duration>) {
        self.pulls
            .get_or_create(&self::outcome(outcome.label()))
            .inc();
        self.bundle_bytes
            .get_or_create(&self::outcome(outcome.label()))
            .inc_by(bytes);
        if let (PullOutcome::Complete, Some(e)) = (outcome, elapsed) {
            self.time_to_complete.observe(e.as_secs_f64());
        }
    }

    /// What a receive's streams did: payloads stored, streams after the
    /// first, and payload bytes cut off by breaks.
    pub fn streams(&self, payloads_stored: u64, resumed: u64, bytes_resent: u64) {
        self.payloads_stored.inc_by(payloads_stored);
        self.streams_resumed.inc_by(resumed);
        self.payload_bytes_resent.inc_by(bytes_resent);
    }

    /// An open that waited since `since` for its content; `ready` tells
    /// whether the content arrived.
    pub fn blocked_open(&self, since: Instant, ready: bool) {
        let label = if ready { "ready" } else { "failed" };
        self.blocked_opens.get_or_create(&outcome(label)).inc();
        self.blocked_open_wait
            .observe(since.elapsed().as_secs_f64());
    }

    /// The garbage collection evicted an image for `reason` (`removed`,
    /// `unused`, `bound`), freeing `bytes` of contents.
    pub fn evicted(&self, reason: &'static str, bytes: u64) {
        self.evictions
            .get_or_create(&vec![("reason", reason)])
            .inc();
        self.evicted_bytes.inc_by(bytes);
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "starlight_evictions",
            "Images evicted by the garbage collection, by reason",
            self.evictions.clone(),
        );
        r.register(
            "starlight_evicted_bytes",
            "Content bytes freed by evictions",
            self.evicted_bytes.clone(),
        );
        r.register("starlight_pulls", "Pulls by outcome", self.pulls.clone());
        r.register(
            "starlight_bundle_bytes",
            "Bytes received on bundle streams, by the pull's outcome",
            self.bundle_bytes.clone(),
        );
        r.register(
            "starlight_time_to_header_seconds",
            "Time from a pull's request to its header",
            self.time_to_header.clone(),
        );
        r.register(
            "starlight_time_to_ready_seconds",
            "Time from a pull's request to its image mounted and registered",
            self.time_to_ready.clone(),
        );
        r.register(
            "starlight_time_to_complete_seconds",
            "Time from a pull's request to its last payload stored",
            self.time_to_complete.clone(),
        );
        r.register(
            "starlight_payloads_stored",
            "Payloads verified and stored",
            self.payloads_stored.clone(),
        );
        r.register(
            "starlight_streams_resumed",
            "Bundle streams opened again after a break",
            self.streams_resumed.clone(),
        );
        r.register(
            "starlight_payload_bytes_resent",
            "Payload bytes cut off by a stream break (sent again on resume)",
            self.payload_bytes_resent.clone(),
        );
        r.register(
            "starlight_blocked_opens",
            "Opens that waited for their content, by outcome",
            self.blocked_opens.clone(),
        );
        r.register(
            "starlight_blocked_open_wait_seconds",
            "How long blocked opens waited",
            self.blocked_open_wait.clone(),
        );
    }
}

/// The registry starlightd serves: the process's metrics and the content
/// store under `store_root`.
pub fn registry(store_root: PathBuf) -> Registry {
    let mut r = Registry::default();
    global().register(&mut r);
    r.register_collector(Box::new(StoreCollector {
        root: store_root,
        cached: Mutex::new(None),
    }));
    r
}

/// How long a measured store size is reused (a scrape walks the store at most
/// this often).
const STORE_SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// The content store's size, measured at scrape time (at most every
/// [`STORE_SCAN_INTERVAL`]).
#[derive(Debug)]
struct StoreCollector {
    root: PathBuf,
    cached: Mutex<Option<(Instant, u64, u64)>>,
}

impl StoreCollector {
    /// (bytes, contents) of the store's files.
    fn measure(&self) -> (u64, u64) {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, bytes, n)) = *cached {
            if at.elapsed() < STORE_SCAN_INTERVAL {
                return (bytes, n);
            }
        }
        let (mut bytes, mut n) = (0u64, 0u64);
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(e.path());
                } else if meta.is_file() {
                    bytes += meta.len();
                    n += 1;
                }
            }
        }
        *cached = Some((Instant::now(), bytes, n));
        (bytes, n)
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (bytes, n) = self.measure();
        gauge(
            &mut e,
            "starlight_store_bytes",
            "Bytes of the content store's files",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut e,
            "starlight_store_contents",
            "Files in the content store",
            i64::try_from(n).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn evictions_are_counted_by_reason_with_their_bytes() {
        let m = WorkerMetrics::default();
        m.evicted("bound", 1000);
        m.evicted("bound", 500);
        m.evicted("removed", 7);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("starlight_evictions_total{reason=\"bound\"} 2"),
            "{text}"
        );
        assert!(text.contains("starlight_evictions_total{reason=\"removed\"} 1"));
        assert!(
            text.contains("starlight_evicted_bytes_total 1507"),
            "{text}"
        );
    }
}
