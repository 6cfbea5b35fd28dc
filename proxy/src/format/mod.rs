//! The Starlight seekable layer format.
//!
//! A converted layer is a valid `tar+gzip` (or `tar+zstd`) blob made of
//! concatenated members: every regular file's content is a compressed member
//! of its own, and tar headers (with the padding of the previous file) go in
//! members of their own. The proxy can therefore copy any file's compressed
//! content out of the blob by byte range and the worker can decompress it
//! alone. There is no index inside the blob: [`scan_layer`] recovers every
//! member's byte range when the proxy indexes the image.

pub mod entry;

pub use entry::{ContentRef, Entry, EntryKind, Whiteout};

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// Uncompressed tar.
    None,
    /// gzip (`tar+gzip`).
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}
