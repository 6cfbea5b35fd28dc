//! The values stored in the directory database. Encoded with postcard, which
//! writes every field (zero and default values included) in declaration
//! order: changing a field here changes the schema, so bump
//! [`super::SCHEMA_VERSION`].

use crate::format::{Compression, Entry};
use serde::{Deserialize, Serialize};

/// One entry of an image's merged (flattened) table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// The entry as its layer supplies it (or a synthesized parent directory).
    pub entry: Entry,
    /// Index into [`ImageRecord::layers`] of the layer that supplies it
    /// (0 = bottom).
    pub layer: u32,
}

/// A layer as an image manifest refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the compressed blob (`sha256:...`).
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Compression of the blob.
    pub compression: Compression,
}

/// One indexed image (one platform's manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the image manifest (`sha256:...`).
    pub manifest_digest: String,
    /// Every reference this image was indexed under, sorted.
    pub references: Vec<String>,
    /// Media type of the manifest.
    pub manifest_media_type: String,
    /// Raw manifest bytes as stored in the registry.
    pub manifest_raw: Vec<u8>,
    /// Raw config bytes as stored in the registry.
    pub config_raw: Vec<u8>,
    /// Platform, e.g. `linux/amd64`.
    pub platform: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// Number of entries in the merged table of contents.
    pub toc_entries: u64,
}

/// One indexed layer blob, shared by every image that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the compressed blob (`sha256:...`).
    pub digest: String,
    /// Compression of the blob.
    pub compression: Compression,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (`sha256:...`).
    pub diff_id: String,
    /// Number of tar entries stored for the layer.
    pub entries: u64,
}

/// One uploaded startup trace, kept as received: traces are the only data of
/// the database that cannot be rebuilt from the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The worker's id for the trace (folded once).
    pub id: String,
    /// The reference the worker pulled.
    pub image: String,
    /// Manifest digest of the image that ran.
    pub manifest_digest: String,
    /// When the proxy committed it, milliseconds since the epoch.
    pub received_ms: u64,
    /// The first opens, in access order.
    pub opens: Vec<TraceOpenRecord>,
}

/// The first open of one file in a [`TraceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceOpenRecord {
    /// Path relative to the image root.
    pub path: String,
    /// Index of the image layer supplying it (0 = bottom).
    pub layer: u32,
    /// Position in the trace (0 = first).
    pub rank: u32,
    /// Milliseconds since the trace's first open.
    pub ms_since_start: u64,
    /// Milliseconds the open waited for content.
    pub ms_waited: u64,
}

/// Rank sum and hit count of one path of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RankRecord {
    /// Sum of the path's ranks over all folded traces.
    pub rank_sum: u64,
    /// Number of folded traces that opened the path.
    pub hits: u64,
}
