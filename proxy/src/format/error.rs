//! Errors of the layer format: reading source layers, converting, scanning
//! and extracting content.

use std::io;

/// Everything that can go wrong while reading or writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O error of the underlying reader or writer.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The blob ends before the data it announces.
    #[error("truncated layer: {0}")]
    Truncated(String),
    /// The compressed data cannot be decompressed.
    #[error("corrupt compressed data: {0}")]
    Corrupt(String),
    /// The tar stream is malformed (bad header checksum, bad number, ...).
    #[error("invalid tar stream at byte {offset}: {reason}")]
    BadTar {
        /// Offset in the uncompressed tar stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Non-zero data after the end-of-archive marker.
    #[error("trailing garbage after the end of the tar archive at byte {offset}")]
    TrailingData {
        /// Offset in the uncompressed tar stream of the first non-zero byte block.
        offset: u64,
    },
    /// An entry path is unsafe or malformed.
    #[error("invalid path {path:?}: {reason}")]
    BadPath {
        /// The path as found in the layer (lossily decoded).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A symlink or hard-link target is unsafe or names nothing.
    #[error("{path:?}: invalid link target {target:?}: {reason}")]
    BadLink {
        /// The link's own (normalized) path.
        path: String,
        /// The target as found in the layer (lossily decoded).
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A size or count is beyond what the format accepts.
    #[error("{path:?}: {what}")]
    Limit {
        /// The entry concerned (may be empty for whole-layer limits).
        path: String,
        /// Which limit, with the numbers.
        what: String,
    },
    /// A tar entry type or extension the format does not support.
    #[error("{path:?}: unsupported tar entry: {what}")]
    Unsupported {
        /// The entry concerned.
        path: String,
        /// What is unsupported.
        what: String,
    },
    /// A valid blob that is not in the Starlight seekable format.
    #[error("not a Starlight layer: {path:?}: {reason}")]
    NotStarlight {
        /// The first offending entry (empty when the whole blob is concerned).
        path: String,
        /// Why the blob does not qualify.
        reason: String,
    },
    /// Decompressed content does not have the expected size.
    #[error("{path:?}: content is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The entry concerned.
        path: String,
        /// Expected size in bytes.
        expected: u64,
        /// Size found (or a lower bound when output was refused).
        actual: u64,
    },
    /// Decompressed content does not have the expected SHA-256.
    #[error("{path:?}: content SHA-256 is {actual}, expected {expected}")]
    DigestMismatch {
        /// The entry concerned.
        path: String,
        /// Expected lower-case hex digest.
        expected: String,
        /// Digest found.
        actual: String,
    },
    /// An indexing budget was exceeded (see [`super::budget`]).
    #[error(transparent)]
    Budget(#[from] super::budget::BudgetExceeded),
    /// Conversion options that cannot be honoured.
    #[error("invalid conversion options: {0}")]
    BadOptions(String),
}

impl FormatError {
    /// Classifies an I/O error coming out of a decompressor or the tar
    /// stream: early ends become [`FormatError::Truncated`], decoder
    /// complaints [`FormatError::Corrupt`], anything else stays
    /// [`FormatError::Io`].
    pub(crate) fn from_decode(err: io::Error, context: &str) -> Self {
        let from_source = err
            .get_ref()
            .is_some_and(|inner| inner.is::<super::hashio::SourceError>());
        if from_source {
            return Self::Io(err);
        }
        match err.kind() {
            io::ErrorKind::UnexpectedEof => Self::Truncated(format!("{context}: {err}")),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other => {
                Self::Corrupt(format!("{context}: {err}"))
            }
            _ => Self::Io(err),
        }
    }
}
