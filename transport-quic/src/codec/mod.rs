//! The Delta Bundle Protocol as a sans-I/O codec: bytes in, typed events out; no
//! sockets, no clock.
//!
//! Each direction of a stream starts with a preamble (`b"SLDB"` + u16 LE version), then
//! frames of `u8 type + u32 LE length + payload`. The client sends one Request frame. The
//! server answers with a Header frame, then for each payload in header order
//! PayloadBegin, PayloadData frames carrying exactly its `compressed_len` bytes, and
//! PayloadEnd, then an End frame with totals; or, at any point, an Error frame.
//!
//! | type | frame        | direction | payload                                   |
//! |------|--------------|-----------|-------------------------------------------|
//! | 1    | Request      | c → s     | postcard [`Request`]                      |
//! | 2    | Header       | s → c     | postcard [`Header`]                       |
//! | 3    | PayloadBegin | s → c     | u32 LE payload index                      |
//! | 4    | PayloadData  | s → c     | raw compressed bytes (≤ `max_data_frame`) |
//! | 5    | PayloadEnd   | s → c     | u32 LE payload index                      |
//! | 6    | End          | s → c     | postcard [`End`]                          |
//! | 7    | Error        | s → c     | postcard [`ErrorFrame`]                   |
//! | 8    | TraceUpload  | c → s     | postcard [`TraceUpload`]                  |
//! | 9    | TraceAck     | s → c     | postcard [`TraceAck`]                     |
//! | 10   | RanksQuery   | c → s     | postcard [`RanksQuery`]                   |
//! | 11   | Ranks        | s → c     | postcard [`RanksReply`]                   |
//! | 12   | Auth         | c → s     | postcard [`exchange::Auth`] (≤ 4 KiB)     |
//! | 13   | AuthOk       | s → c     | empty                                     |
//! | 14   | Refresh      | c → s     | postcard [`RanksQuery`]: re-resolve a tag |
//!
//! The first stream of a QUIC connection carries one Auth frame (the bearer token); the
//! server answers AuthOk or Error and only then lets the connection open more streams
//! or send more bytes (see [`crate::quic`]).
//!
//! Instead of a Request, a client stream may carry one TraceUpload or one RanksQuery
//! (see [`exchange`]); the server then answers with one TraceAck, Ranks or Error frame.
//! Version 4 appends to the Header frame's body the held images the bundle was planned
//! against ([`held`]); the proxy answers every stream in the version its request
//! announced, so clients of versions 2 and 3 read what they always did.
//!
//! Types 8–11 extend version 1 without changing anything a bundle exchange sends, so
//! they need no version bump: a proxy that predates them refuses the frame type with a
//! BadRequest Error frame, which the client reports as such.
//!
//! A round trip, fed in small pieces as a socket would deliver it:
//!
//! ```
//! use bytes::BytesMut;
//! use transport_quic::codec::*;
//!
//! let header = Header { layers: vec!["sha256:l0".into()], image_layers: vec![0],
//!     payloads: vec![PayloadInfo { sha256: [0; 32], compression: PayloadCompression::Zstd,
//!         compressed_len: 3, size: 9 }], ..Header::default() };
//! let mut enc = ResponseEncoder::default();
//! let mut wire = BytesMut::new();
//! enc.header(&header, &mut wire)?;
//! enc.begin_payload(0, &mut wire)?;
//! enc.data(b"abc", &mut wire)?;
//! enc.end_payload(0, &mut wire)?;
//! let totals = enc.totals();
//! enc.end(&totals, &mut wire)?;
//!
//! let mut dec = ResponseDecoder::default();
//! let mut events = Vec::new();
//! for piece in wire.chunks(7) {
//!     dec.feed(piece);
//!     while let Some(event) = dec.next_event()? {
//!         events.push(event);
//!     }
//! }
//! dec.finish()?; // the stream ended with End and nothing after it
//! assert_eq!(events.len(), 5);
//! assert_eq!(events[4], Event::End(End { payloads: 1, bytes: 3 }));
//! # Ok::<(), ProtocolError>(())
//! ```

mod bounded;
pub mod compress;
mod decode;
mod encode;
mod error;
pub mod exchange;
mod frame;
pub mod held;
mod limits;
mod sequence;
mod trace;
mod types;
mod validate;

pub use decode::{RequestDecoder, ResponseDecoder};
pub use encode::{RequestEncoder, ResponseEncoder};
pub use error::{EntryProblem, ProtocolError};
pub use exchange::{
    encode_auth, encode_auth_reply, encode_message, encode_reply, Auth, AuthDecoder, AuthReply,
    AuthReplyDecoder, ClientMessage, MessageDecoder, Reply, ReplyDecoder,
};
pub use frame::{
    preamble, preamble_for, FrameKind, FRAME_HEADER_LEN, HEADER_ZSTD_VERSION, MAGIC,
    MAX_AUTH_FRAME, MIN_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION,
};
pub use limits::Limits;
pub use trace::{RankedPath, RanksQuery, RanksReply, Trace, TraceAck, TraceOpen, TraceUpload};
pub use types::{
    End, EntryKind, ErrorCode, ErrorFrame, Event, Header, PayloadCompression, PayloadInfo, Request,
    Source, TocEntry,
};
pub use validate::{
    validate_ack, validate_error, validate_header, validate_layer_tables, validate_ranks_query,
    validate_ranks_reply, validate_request, validate_trace_upload,
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
