//! Protocol errors: everything a decoder or encoder refuses.

use super::frame::{FrameKind, PROTOCOL_VERSION};

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
    #[error("protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})")]
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
