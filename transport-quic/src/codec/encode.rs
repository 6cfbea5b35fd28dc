//! Encoders: typed messages in, bytes out. They refuse to produce a stream the decoder
//! would refuse (out of order, over a limit, inconsistent totals).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::compress::compress_header;
use super::frame::{
    frame_header, preamble_for, FrameKind, FRAME_HEADER_LEN, HEADER_ZSTD_VERSION,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use super::held::HELD_USED_VERSION;
use super::sequence::Sequence;
use super::types::{End, ErrorFrame, Header, Request};
use super::validate::{validate_error, validate_header, validate_request};
use super::{Limits, ProtocolError};

/// Appends one postcard-encoded frame of `kind` to `out`.
pub(crate) fn put_message<T: Serialize>(
    kind: FrameKind,
    value: &T,
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let body = postcard::to_stdvec(value).map_err(|e| ProtocolError::Malformed {
        kind,
        reason: e.to_string(),
    })?;
    let limit = kind.max_len(limits);
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= limit)
        .ok_or(ProtocolError::FrameTooLarge {
            kind,
            len: body.len() as u64,
            limit: u64::from(limit),
        })?;
    out.reserve(FRAME_HEADER_LEN + body.len());
    out.put_slice(&frame_header(kind, len));
    out.put_slice(&body);
    Ok(())
}

/// Encodes the client's side of a stream: the preamble and one Request frame.
///
/// The preamble announces [`PROTOCOL_VERSION`] unless [`with_version`](Self::with_version)
/// says otherwise; the server answers in the version the request announces.
#[derive(Debug, Clone)]
pub struct RequestEncoder {
    limits: Limits,
    version: u16,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl RequestEncoder {
    /// An encoder that refuses requests the peer's `limits` would refuse.
    pub fn new(limits: Limits) -> Self {
        RequestEncoder {
            limits,
            version: PROTOCOL_VERSION,
        }
    }

    /// The same encoder announcing `version` (clamped to the versions this build
    /// speaks), e.g. [`MIN_PROTOCOL_VERSION`] for an uncompressed header.
    pub fn with_version(mut self, version: u16) -> Self {
        self.version = version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        self
    }

    /// The whole client→server stream for `req`.
    pub fn encode(&self, req: &Request) -> Result<Bytes, ProtocolError> {
        validate_request(req, &self.limits)?;
        let mut out = BytesMut::new();
        out.put_slice(&preamble_for(self.version));
        put_message(FrameKind::Request, req, &self.limits, &mut out)?;
        Ok(out.freeze())
    }
}

/// Encodes the server's side of a stream, frame by frame, checking the order as it goes.
///
/// The preamble is written before the first frame. Every method appends to `out`; on
/// error nothing is appended and the encoder's state is unchanged. The stream speaks
/// [`MIN_PROTOCOL_VERSION`] (uncompressed header) unless
/// [`with_version`](Self::with_version) names a newer one: a server answers in the
/// version of the request.
#[derive(Debug, Clone)]
pub struct ResponseEncoder {
    limits: Limits,
    seq: Sequence,
    preamble_sent: bool,
    version: u16,
}

impl Default for ResponseEncoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl ResponseEncoder {
    /// An encoder that refuses frames the peer's `limits` would refuse.
    pub fn new(limits: Limits) -> Self {
        ResponseEncoder {
            limits,
            seq: Sequence::new(),
            preamble_sent: false,
            version: MIN_PROTOCOL_VERSION,
        }
    }

    /// The same encoder speaking `version` (clamped to the versions this build speaks):
    /// from [`HEADER_ZSTD_VERSION`] on, the Header frame is zstd-compressed.
    pub fn with_version(mut self, version: u16) -> Self {
        self.version = version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        self
    }

    /// The version this encoder writes.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The limits this encoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn preamble(&mut self, out: &mut BytesMut) {
        if !self.preamble_sent {
            out.put_slice(&preamble_for(self.version));
            self.preamble_sent = true;
        }
    }

    /// Appends the Header frame.
    pub fn header(&mut self, header: &Header, out: &mut BytesMut) -> Result<(), ProtocolError> {
        self.header_with_held(header, &[], out)
    }

    /// Appends the Header frame; from version [`HELD_USED_VERSION`] on, it also
    /// names the held images the bundle was planned against (older versions drop it).
    pub fn header_with_held(
        &mut self,
        header: &Header,
        held_used: &[String],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        validate_header(header, &self.limits)?;
        self.seq.admit(FrameKind::Header, 0)?;
        let kind = FrameKind::Header;
        let mut body = postcard::to_stdvec(header).map_err(|e| ProtocolError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
        if self.version >= HELD_USED_VERSION {
            super::held::append(held_used, &mut body)?;
        }
        // The uncompressed body must pass the limit (the decoder's bomb limit);
        // a compressed frame must pass it too.
        let limit = kind.max_len(&self.limits);
        let too_large = |len: usize| ProtocolError::FrameTooLarge {
            kind,
            len: len as u64,
            limit: u64::from(limit),
        };
        if u32::try_from(body.len()).map_or(true, |l| l > limit) {
            return Err(too_large(body.len()));
        }
        if self.version >= HEADER_ZSTD_VERSION {
            body = compress_header(&body)?;
        }
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l <= limit)
            .ok_or_else(|| too_large(body.len()))?;
        self.seq.on_header(header)?;
        self.preamble(out);
        out.put_slice(&frame_header(kind, len));
        out.put_slice(&body);
        Ok(())
    }

    /// Appends PayloadBegin for payload `index` (the next one in header order).
    pub fn begin_payload(&mut self, index: u32, out: &mut BytesMut) -> Result<(), ProtocolError> {
        self.seq.on_begin(index)?;
        out.put_slice(&frame_header(FrameKind::PayloadBegin, 4));
        out.put_slice(&index.to_le_bytes());
        Ok(())
    }

    /// Accounts for one PayloadData frame of `len` bytes and returns its frame header;
    /// the caller writes the header and then exactly `len` bytes of data. For writers
    /// that send the data without copying it into a frame buffer.
    pub fn data_frame_header(&mut self, len: u32) -> Result<[u8; FRAME_HEADER_LEN], ProtocolError> {
        let limit = self.limits.max_data_frame;
        if len > limit {
            return Err(ProtocolError::FrameTooLarge {
                kind: FrameKind::PayloadData,
                len: u64::from(len),
                limit: u64::from(limit),
            });
        }
        self.seq.on_data(len)?;
        Ok(frame_header(FrameKind::PayloadData, len))
    }

    /// Appends `data` as PayloadData frames of at most `max_data_frame` bytes each.
    pub fn data(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
        // Check the whole slice first so that nothing is appended on error.
        let mut probe = self.seq.clone();
        for chunk in data.chunks(self.chunk_len()) {
            probe.on_data(chunk.len() as u32)?;
        }
        out.reserve(data.len() + FRAME_HEADER_LEN * (1 + data.len() / self.chunk_len()));
        for chunk in data.chunks(self.chunk_len()) {
            let header = self.data_frame_header(chunk.len() as u32)?;
            out.put_slice(&header);
            out.put_slice(chunk);
        }
        Ok(())
    }

    fn chunk_len(&self) -> usize {
        self.limits.max_data_frame.max(1) as usize
    }

    /// Appends PayloadEnd for payload `index` (all its bytes must have been sent).
    pub fn end_payload(&mut self, index: u32, out: &mut BytesMut) -> Result<(), ProtocolError> {
        self.seq.on_payload_end(index)?;
        out.put_slice(&frame_header(FrameKind::PayloadEnd, 4));
        out.put_slice(&index.to_le_bytes());
        Ok(())
    }

    /// Appends the End frame; its totals must match what was sent.
    pub fn end(&mut self, end: &End, out: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut probe = self.seq.clone();
        probe.on_end(end)?;
        let mut frame = BytesMut::new();
        put_message(FrameKind::End, end, &self.limits, &mut frame)?;
        self.seq = probe;
        out.put_slice(&frame);
        Ok(())
    }

    /// Appends an Error frame (allowed at any point before End); nothing may follow.
    pub fn error(&mut self, error: &ErrorFrame, out: &mut BytesMut) -> Result<(), ProtocolError> {
        validate_error(error, &self.limits)?;
        self.seq.admit(FrameKind::Error, 0)?;
        let mut frame = BytesMut::new();
        put_message(FrameKind::Error, error, &self.limits, &mut frame)?;
        self.seq.on_error()?;
        self.preamble(out);
        out.put_slice(&frame);
        Ok(())
    }

    /// Payloads completed and payload bytes sent so far: the End frame to send once every
    /// payload is out.
    pub fn totals(&self) -> End {
        self.seq.totals()
    }

    /// Whether End or Error was written.
    pub fn is_done(&self) -> bool {
        self.seq.is_done()
    }
}
