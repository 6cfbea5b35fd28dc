//! The Starlight seekable layer format.
//!
//! A converted layer is a valid `tar+gzip` (or `tar+zstd`) blob made of
//! concatenated members: every regular file's content is a compressed member
//! of its own, and tar headers (with the padding of the previous file) go in
//! members of their own. The proxy can therefore copy any file's compressed
//! content out of the blob by byte range and the worker can decompress it
//! alone. There is no index inside the blob: [`scan_layer`] recovers every
//! member's byte range when the proxy indexes the image.
//!
//! Layout of a converted blob (each box is one member):
//!
//! ```text
//! [hdr(a/) hdr(a/f)] [content of a/f] [pad(a/f) hdr(b) hdr(c)] [content of c] [pad(c) 0*1024]
//! ```
//!
//! Plain `gzip -d`/`zstd -d` (and containerd) read it as one tar stream.
//! Headers are re-serialized as POSIX ustar with PAX records where a field
//! does not fit; the output is deterministic (same input, same bytes).
//! Everything read from a layer is bounded first (see [`limits`]).

pub mod budget;
mod codec;
pub mod commit;
mod convert;
pub mod entry;
mod error;
mod extract;
mod hashio;
pub mod limits;
mod members;
mod normalize;
pub mod path;
mod pax;
mod scan;
mod tar_read;
mod tar_write;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testkit;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use codec::{detect_compression, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL};
pub use convert::{convert_layer, ConvertOptions, ConvertedLayer};
pub use entry::{ContentRef, Entry, EntryKind, Whiteout};
pub use error::FormatError;
pub use extract::{decompress_member, decompress_prefix, extract_content};
pub use scan::{scan_layer, scan_layer_metered, ScannedLayer};

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
