//! The messages of trace collection (paper §4.4): a worker uploads the first opens of
//! a traced container start, the proxy acknowledges once the trace is committed, and
//! anyone holding a token can ask for an image's ranks.
//!
//! Like every protocol type they are postcard-encoded, so a rank 0, a layer 0 or an
//! empty list survive a round trip.

use serde::{Deserialize, Serialize};

/// One traced container start: the first open of each file, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Trace {
    /// A unique id chosen by the worker: the proxy folds a trace id once, so a retried
    /// upload is never counted twice.
    pub id: String,
    /// The reference the image was pulled as (`registry/repo:tag`).
    pub image: String,
    /// Digest of the manifest that actually ran (`sha256:...`).
    pub manifest_digest: String,
    /// The first open of each file, in access order.
    pub opens: Vec<TraceOpen>,
}

/// The first open of one file during a traced start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TraceOpen {
    /// Path relative to the image root, without a leading `/`.
    pub path: String,
    /// Index, bottom first, of the image layer that supplies the file.
    pub layer: u32,
    /// Position of this open in the trace (0 = first file opened).
    pub rank: u32,
    /// Milliseconds since the first open of the trace.
    pub ms_since_start: u64,
    /// Milliseconds the open waited for the file's content.
    pub ms_waited: u64,
}

/// Client → server: upload one trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TraceUpload {
    /// The bearer token the proxy checks.
    pub token: String,
    /// The trace.
    pub trace: Trace,
}

/// Server → client: the trace is committed to the proxy's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TraceAck {
    /// The trace's id.
    pub id: String,
    /// The trace had already been folded (a retried upload): nothing was counted.
    pub duplicate: bool,
    /// Paths folded into the ranks.
    pub folded: u32,
    /// Opens ignored: paths the image does not have, or repeated paths.
    pub ignored: u32,
}

/// Client → server: the ranks of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RanksQuery {
    /// The bearer token the proxy checks.
    pub token: String,
    /// A reference (`registry/repo:tag`) or a `sha256:` manifest digest.
    pub image: String,
}

/// Server → client: the ranks the proxy orders an image's payloads by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RanksReply {
    /// Digest of the image's manifest.
    pub manifest_digest: String,
    /// Traces folded into the image's own ranks.
    pub traces: u64,
    /// When the image has no traces of its own: the manifest digest (and a reference)
    /// of the older version whose ranks it inherits.
    pub inherited_from: Option<String>,
    /// The ranked paths, by ascending average rank (ties by path).
    pub ranks: Vec<RankedPath>,
}

/// The rank of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RankedPath {
    /// Path relative to the image root.
    pub path: String,
    /// Sum of the path's ranks over all traces.
    pub rank_sum: u64,
    /// Number of traces that opened the path.
    pub hits: u64,
}

impl RankedPath {
    /// The average rank (`rank_sum / hits`), `None` without hits.
    pub fn average(&self) -> Option<f64> {
        if self.hits == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        Some(self.rank_sum as f64 / self.hits as f64)
    }
}
