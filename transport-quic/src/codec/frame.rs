//! Preamble and frame headers: `u8 type + u32 LE length + payload`.

use super::{Limits, ProtocolError};

/// The four bytes every stream (in both directions) starts with.
pub const MAGIC: [u8; 4] = *b"SLDB";
/// The newest protocol version this build speaks. Version 3 compresses the Header
/// frame with zstd ([`super::compress`]); every other frame is the same as in version 2.
/// Version 4 adds the held images used after the header ([`super::held`]).
pub const PROTOCOL_VERSION: u16 = 4;
/// The oldest protocol version this build still speaks (2: the header carries the
/// per-layer tables the image commits to, [`super::Header::layer_tocs`]; uncompressed).
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// The first version whose Header frame is zstd-compressed.
pub const HEADER_ZSTD_VERSION: u16 = 3;
/// Length of the preamble: magic + u16 LE version.
pub const PREAMBLE_LEN: usize = 6;
/// Length of a frame header: u8 type + u32 LE length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Longest End frame (postcard of two varints).
const MAX_END_FRAME: u32 = 32;

/// The preamble of streams whose frames are the same in every supported version (the
/// Auth stream, trace uploads, ranks queries and their replies): version
/// [`MIN_PROTOCOL_VERSION`], so that peers older than version 3 read them too.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    preamble_for(MIN_PROTOCOL_VERSION)
}

/// The preamble announcing `version`.
pub fn preamble_for(version: u16) -> [u8; PREAMBLE_LEN] {
    let v = version.to_le_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// Checks a received preamble; the version it announces, if this build speaks it.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<u16, ProtocolError> {
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found != MAGIC {
        return Err(ProtocolError::BadMagic { found });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion { version });
    }
    Ok(version)
}

/// The type of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Client → server: the request.
    Request,
    /// Server → client: the bundle header.
    Header,
    /// Server → client: a payload starts (u32 LE index).
    PayloadBegin,
    /// Server → client: compressed bytes of the current payload.
    PayloadData,
    /// Server → client: the payload ends (u32 LE index).
    PayloadEnd,
    /// Server → client: the bundle is complete.
    End,
    /// Server → client: an error; nothing follows.
    Error,
    /// Client → server: a trace upload (instead of a Request).
    TraceUpload,
    /// Server → client: the trace was committed.
    TraceAck,
    /// Client → server: a ranks query (instead of a Request).
    RanksQuery,
    /// Server → client: an image's ranks.
    Ranks,
    /// Client → server: the token, on the first stream of a connection (at most
    /// [`MAX_AUTH_FRAME`] bytes, read before anything larger is accepted).
    Auth,
    /// Server → client: the token was accepted; the connection may now send requests.
    AuthOk,
    /// Client → server: resolve a tag again now (as a RanksQuery; answered with Ranks).
    Refresh,
}

/// Largest Auth frame: the token must fit in it.
pub const MAX_AUTH_FRAME: u32 = 4096;

impl FrameKind {
    /// The type byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Request => 1,
            FrameKind::Header => 2,
            FrameKind::PayloadBegin => 3,
            FrameKind::PayloadData => 4,
            FrameKind::PayloadEnd => 5,
            FrameKind::End => 6,
            FrameKind::Error => 7,
            FrameKind::TraceUpload => 8,
            FrameKind::TraceAck => 9,
            FrameKind::RanksQuery => 10,
            FrameKind::Ranks => 11,
            FrameKind::Auth => 12,
            FrameKind::AuthOk => 13,
            FrameKind::Refresh => 14,
        }
    }

    /// Parses a type byte.
    pub fn from_code(code: u8) -> Result<Self, ProtocolError> {
        Ok(match code {
            1 => FrameKind::Request,
            2 => FrameKind::Header,
            3 => FrameKind::PayloadBegin,
            4 => FrameKind::PayloadData,
            5 => FrameKind::PayloadEnd,
            6 => FrameKind::End,
            7 => FrameKind::Error,
            8 => FrameKind::TraceUpload,
            9 => FrameKind::TraceAck,
            10 => FrameKind::RanksQuery,
            11 => FrameKind::Ranks,
            12 => FrameKind::Auth,
            13 => FrameKind::AuthOk,
            14 => FrameKind::Refresh,
            other => return Err(ProtocolError::UnknownFrameType(other)),
        })
    }

    /// Largest length a frame of this kind may announce.
    pub fn max_len(self, limits: &Limits) -> u32 {
        match self {
            FrameKind::Request
            | FrameKind::TraceUpload
            | FrameKind::RanksQuery
            | FrameKind::Refresh => limits.max_request,
            FrameKind::Ranks => limits.max_header,
            FrameKind::Auth => MAX_AUTH_FRAME,
            // An empty message.
            FrameKind::AuthOk => 16,
            // Id, flag and two varints.
            FrameKind::TraceAck => limits.max_string.saturating_add(32),
            FrameKind::Header => limits.max_header,
            FrameKind::PayloadBegin | FrameKind::PayloadEnd => 4,
            FrameKind::PayloadData => limits.max_data_frame,
            FrameKind::End => MAX_END_FRAME,
            // Code, message length varint and the message itself.
            FrameKind::Error => limits.max_string.saturating_add(16),
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            FrameKind::Request => "Request",
            FrameKind::Header => "Header",
            FrameKind::PayloadBegin => "PayloadBegin",
            FrameKind::PayloadData => "PayloadData",
            FrameKind::PayloadEnd => "PayloadEnd",
            FrameKind::End => "End",
            FrameKind::Error => "Error",
            FrameKind::TraceUpload => "TraceUpload",
            FrameKind::TraceAck => "TraceAck",
            FrameKind::RanksQuery => "RanksQuery",
            FrameKind::Ranks => "Ranks",
            FrameKind::Auth => "Auth",
            FrameKind::AuthOk => "AuthOk",
            FrameKind::Refresh => "Refresh",
        };
        f.write_str(s)
    }
}

/// Encodes a frame header.
pub fn frame_header(kind: FrameKind, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let l = len.to_le_bytes();
    [kind.code(), l[0], l[1], l[2], l[3]]
}

/// Parses a frame header and checks its length against the limits, before any of the
/// frame's payload is buffered.
pub fn parse_frame_header(
    bytes: &[u8; FRAME_HEADER_LEN],
    limits: &Limits,
) -> Result<(FrameKind, u32), ProtocolError> {
    let kind = FrameKind::from_code(bytes[0])?;
    let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let limit = kind.max_len(limits);
    if len > limit {
        return Err(ProtocolError::FrameTooLarge {
            kind,
            len: u64::from(len),
            limit: u64::from(limit),
        });
    }
    Ok((kind, len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_codes() {
        for code in 0..=255u8 {
            match FrameKind::from_code(code) {
                Ok(kind) => assert_eq!(kind.code(), code),
                Err(e) => assert_eq!(e, ProtocolError::UnknownFrameType(code)),
            }
        }
    }

    #[test]
    fn preamble_checks_magic_and_version() {
        assert_eq!(check_preamble(&preamble()), Ok(2));
        assert_eq!(check_preamble(&preamble_for(3)), Ok(3));
        assert_eq!(check_preamble(&preamble_for(4)), Ok(4));
        for v in [0u16, 1, 5, 7] {
            let err = check_preamble(&preamble_for(v)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("protocol version {v} is not supported (this build speaks 2 to 4)")
            );
        }
        let err = check_preamble(b"HTTP/1").unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic { .. }), "{err}");
    }

    #[test]
    fn frame_lengths_are_bounded_before_buffering() {
        let limits = Limits::default();
        let h = frame_header(FrameKind::PayloadData, limits.max_data_frame + 1);
        let err = parse_frame_header(&h, &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
        let h = frame_header(FrameKind::PayloadBegin, 5);
        assert!(parse_frame_header(&h, &limits).is_err());
        let h = frame_header(FrameKind::Header, 1000);
        assert_eq!(
            parse_frame_header(&h, &limits),
            Ok((FrameKind::Header, 1000))
        );
    }
}
