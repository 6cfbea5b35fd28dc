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
