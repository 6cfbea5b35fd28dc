//! The typed messages of the Delta Bundle Protocol.
//!
//! These are the protocol's own wire types: they are serialized with postcard, which
//! writes every field (no value is ever skipped for being zero or default), so an index
//! 0, a rank 0 or an empty vector survive a round trip unchanged.

use serde::{Deserialize, Serialize};

/// What a worker asks for: one image, and what it already holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Request {
    /// The bearer token the proxy checks.
    pub token: String,
    /// The wanted image: a reference (`registry/repo:tag`) or a `sha256:` manifest digest.
    pub image: String,
    /// The platform wanted (`os/arch[/variant]`), or the proxy's default.
    pub platform: Option<String>,
    /// Manifest digests of the images the worker already holds.
    #[serde(deserialize_with = "super::bounded::held_images")]
    pub held_images: Vec<String>,
    /// SHA-256 of contents the worker already received (a resumed bundle).
    #[serde(deserialize_with = "super::bounded::held_payloads")]
    pub held_payloads: Vec<[u8; 32]>,
    /// Send the payloads in layer order, ignoring access ranks (trace
    /// collection wants a bundle whose order does not favour any file).
    pub unordered: bool,
}

/// The bundle's header: everything the worker needs before any content arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Header {
    /// Digest of the wanted image's manifest (`sha256:...`).
    pub manifest_digest: String,
    /// Media type of the manifest.
    pub manifest_media_type: String,
    /// The OCI manifest, byte for byte (the worker checks its digest).
    pub manifest: Vec<u8>,
    /// The OCI image configuration, byte for byte.
    pub config: Vec<u8>,
    /// Layer digest table: the wanted image's layers, then the held images' layers.
    #[serde(deserialize_with = "super::bounded::layers")]
    pub layers: Vec<String>,
    /// Indices into `layers` of the wanted image's layers, bottom first.
    #[serde(deserialize_with = "super::bounded::image_layers")]
    pub image_layers: Vec<u32>,
    /// The merged table of contents, sorted by path.
    #[serde(deserialize_with = "super::bounded::toc")]
    pub toc: Vec<TocEntry>,
    /// The body's payloads, in send order.
    #[serde(deserialize_with = "super::bounded::payloads")]
    pub payloads: Vec<PayloadInfo>,
    /// The wanted image's per-layer tables of contents, bottom first (one per
    /// entry of `image_layers`), each in the canonical form whose digest the
    /// layer's manifest annotation commits to (see [`crate::commit`]). The
    /// worker recomputes `toc` from them and refuses a header that does not
    /// follow.
    pub layer_tocs: Vec<Vec<crate::commit::LayerEntry>>,
}

/// The kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (`link` is its target).
    Symlink,
    /// A hard link (`link` is the path it links to).
    Hardlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
}

/// Where an entry's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The entry has no content (directories, links, devices, empty files).
    NoContent,
    /// The content is the payload at this index in [`Header::payloads`].
    Payload(u32),
    /// The worker already holds this content.
    Held,
}

/// One entry of the merged table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// Path relative to the image root, without a leading `/`.
    pub path: String,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits and set-id/sticky bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u64,
    /// Owner group id.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Uncompressed size of the content in bytes.
    pub size: u64,
    /// Symlink target or hard-link source.
    pub link: Option<String>,
    /// Device major number.
    pub devmajor: u32,
    /// Device minor number.
    pub devminor: u32,
    /// Extended attributes (name, value).
    #[serde(deserialize_with = "super::bounded::xattrs")]
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// SHA-256 of the uncompressed content, for regular files.
    pub sha256: Option<[u8; 32]>,
    /// Index into [`Header::layers`] of the layer that supplies this entry.
    pub layer: u32,
    /// Where the content comes from.
    pub source: Source,
}

/// How a payload's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadCompression {
    /// One gzip member.
    Gzip,
    /// One zstd frame.
    Zstd,
}

/// One payload of the body: a compressed content, sent once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadInfo {
    /// SHA-256 of the uncompressed content.
    pub sha256: [u8; 32],
    /// Compression of the bytes on the wire.
    pub compression: PayloadCompression,
    /// Number of compressed bytes that follow in the body.
    pub compressed_len: u64,
    /// Uncompressed size.
    pub size: u64,
}

/// The last frame of a successful bundle, with totals the decoder checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct End {
    /// Number of payloads sent.
    pub payloads: u32,
    /// Total compressed payload bytes sent.
    pub bytes: u64,
}

/// Why the proxy could not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The bearer token was refused.
    Unauthorized,
    /// The image (or platform) does not exist.
    NotFound,
    /// The image is not in Starlight format.
    NotStarlight,
    /// The request was malformed or broke a limit.
    BadRequest,
    /// The proxy is overloaded; retry later.
    Unavailable,
    /// An upstream (registry) failure.
    Upstream,
    /// Anything else.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not found",
            ErrorCode::NotStarlight => "not a Starlight image",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Upstream => "upstream error",
            ErrorCode::Internal => "internal error",
        };
        f.write_str(s)
    }
}

/// An error reported by the proxy instead of (or in the middle of) a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl std::fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What a response decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The bundle's header (always first).
    Header(Header),
    /// A payload starts.
    PayloadBegin {
        /// Index into [`Header::payloads`].
        index: u32,
    },
    /// Compressed bytes of the current payload.
    PayloadData {
        /// Index into [`Header::payloads`].
        index: u32,
        /// The bytes (shared with the decoder's buffer, not copied).
        data: bytes::Bytes,
    },
    /// The payload is complete (exactly `compressed_len` bytes arrived).
    PayloadEnd {
        /// Index into [`Header::payloads`].
        index: u32,
    },
    /// The bundle is complete and its totals match.
    End(End),
    /// The proxy reported an error; nothing follows.
    Error(ErrorFrame),
}
