//! Protocol errors: everything a decoder or encoder refuses.

use super::frame::{FrameKind, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// A violation of the Delta Bundle Protocol (or of a configured [`super::Limits`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The stream does not start with the protocol's magic bytes.
    #[error("not a Delta Bundle Protocol stream: magic {found:02x?}, expected \"SLDB\"")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The peer speaks a version this build does not.
    #[error(
        "protocol version {version} is not supported (this build speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version announced by the peer.
        version: u16,
    },
    /// A frame type byte this build does not know.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A frame longer than its limit (checked before buffering it).
    #[error("{kind} frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's kind.
        kind: FrameKind,
        /// Its announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A count or a string longer than its limit.
    #[error("{what}: {count} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// How many there were.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A frame whose payload cannot be decoded.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: FrameKind,
        /// Why.
        reason: String,
    },
    /// A header whose internal references do not hold.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// A table-of-contents entry the worker must never turn into a file.
    #[error("invalid header: entry {index} ({path:?}): {problem}")]
    BadEntry {
        /// The entry's index in the table of contents.
        index: usize,
        /// Its path, cut to a printable length.
        path: String,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// Sizes whose sum does not fit in 64 bits.
    #[error("invalid header: the sum of the {what} overflows 64 bits")]
    SizeOverflow {
        /// Which sizes.
        what: &'static str,
    },
    /// A frame that is not allowed at this point of the stream.
    #[error("unexpected {got} frame: expected {expected}")]
    UnexpectedFrame {
        /// The frame received.
        got: FrameKind,
        /// What the stream should have carried.
        expected: &'static str,
    },
    /// A payload out of header order.
    #[error("payload {got} out of order: expected payload {expected}")]
    PayloadOutOfOrder {
        /// The index received.
        got: u32,
        /// The index expected.
        expected: u32,
    },
    /// More bytes arrived for a payload than its `compressed_len`.
    #[error("payload {index} overruns its length: {got} bytes, header says {expected}")]
    PayloadOverrun {
        /// Payload index.
        index: u32,
        /// Header's `compressed_len`.
        expected: u64,
        /// Bytes received so far, this frame included.
        got: u64,
    },
    /// A payload ended before its `compressed_len` bytes arrived.
    #[error("payload {index} is short: {got} bytes, header says {expected}")]
    PayloadUnderrun {
        /// Payload index.
        index: u32,
        /// Header's `compressed_len`.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The End frame's totals disagree with what was sent.
    #[error("end frame mismatch: it says {end_payloads} payloads / {end_bytes} bytes, the stream carried {payloads} / {bytes}")]
    EndMismatch {
        /// Payload count in the End frame.
        end_payloads: u32,
        /// Byte count in the End frame.
        end_bytes: u64,
        /// Payloads actually carried.
        payloads: u32,
        /// Payload bytes actually carried.
        bytes: u64,
    },
    /// The stream ended before it was complete.
    #[error("stream truncated: it ended while expecting {expected}")]
    Truncated {
        /// What was still expected.
        expected: &'static str,
    },
    /// Bytes after the last frame.
    #[error("{len} bytes of garbage after the {after} frame")]
    TrailingData {
        /// The last valid frame.
        after: FrameKind,
        /// How many bytes followed (at least).
        len: usize,
    },
    /// An earlier error already poisoned this decoder.
    #[error("the decoder already failed: {0}")]
    Failed(Box<ProtocolError>),
}

/// What is wrong with one table-of-contents entry (see [`ProtocolError::BadEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// A name (path, link target or extended attribute name) holds a NUL byte.
    #[error("its {0} holds a NUL byte")]
    Nul(&'static str),
    /// A path component (or an extended attribute name) longer than 255 bytes.
    #[error("its {what} has a component of {len} bytes (the limit is 255)")]
    ComponentTooLong {
        /// Which name.
        what: &'static str,
        /// The component's length.
        len: usize,
    },
    /// An empty, `.` or `..` component, or a leading `/`.
    #[error("its {0} is not a plain relative path (empty, '.' or '..' component, or absolute)")]
    NotRelative(&'static str),
    /// Two entries with the same path.
    #[error("its path appears twice in the table of contents")]
    Duplicate,
    /// A regular file with content but no SHA-256.
    #[error("a regular file of {0} bytes has no SHA-256")]
    MissingHash(u64),
    /// A link without a target, or a target that is empty or too long.
    #[error("its link target is missing, empty or longer than 4095 bytes")]
    BadLink,
}
