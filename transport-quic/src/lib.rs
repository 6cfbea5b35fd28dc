//! transport-quic: the Delta Bundle Protocol.
//!
//! - [`codec`]: the wire format as a sans-I/O codec (bytes in, typed events out).
//! - [`quic`]: a QUIC client and server around it (quinn + rustls with the ring
//!   provider), one bidirectional stream per request.
//! - [`commit`]: the canonical layer table encoding a converted image commits to.
//! - [`merge`]: the merge of layer tables into the view a container sees.
//! - [`tls`]: certificate helpers (a self-signed pair for demos and tests, PEM parsing).
//! - [`verify`]: a header checked against the manifest digest its image reference pins.
#![forbid(unsafe_code)]

pub mod codec;
pub mod commit;
pub mod digest;
pub mod merge;
pub mod payload;
pub mod quic;
pub mod tls;
pub mod verify;

pub use codec::{
    End, EntryKind, ErrorCode, ErrorFrame, Event, Header, Limits, PayloadCompression, PayloadInfo,
    ProtocolError, RankedPath, RanksQuery, RanksReply, Request, Source, TocEntry, Trace, TraceAck,
    TraceOpen, TraceUpload,
};
pub use digest::{Digest, DigestError, ImageReference};
