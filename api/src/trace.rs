//! The trace record: the first open of one file, as starlightd records it
//! and `starlight trace` turns it into the proxy's ranks.

use serde::{Deserialize, Serialize};

/// The first open of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The file's path in the image (as the table of contents names it).
    pub path: String,
    /// The index of the layer the file comes from.
    pub layer: u32,
    /// Milliseconds since the first open of the trace.
    pub at_ms: f64,
    /// Milliseconds the open waited for the file's content.
    pub wait_ms: f64,
}
