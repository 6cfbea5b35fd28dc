//! Decoders: bytes in (in chunks of any size), typed events out.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;

use super::bounded::with_limits;
use super::compress::decompress_header;
use super::frame::{
    check_preamble, parse_frame_header, FrameKind, FRAME_HEADER_LEN, HEADER_ZSTD_VERSION,
    PREAMBLE_LEN,
};
use super::held::HELD_USED_VERSION;
use super::sequence::Sequence;
use super::types::{End, ErrorFrame, Event, Header, Request};
use super::validate::{validate_error, validate_header, validate_request};
use super::{Limits, ProtocolError};

/// Splits a byte stream into its preamble and frames, checking each frame's length
/// against the limits (and the caller's order rules) before buffering its payload.
#[derive(Debug, Default)]
pub(crate) struct FrameBuffer {
    buf: BytesMut,
    preamble_done: bool,
    version: Option<u16>,
}

impl FrameBuffer {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, or `None` if more bytes are needed. `admit` sees the
    /// frame's kind and length as soon as its header is complete.
    pub(crate) fn next_frame(
        &mut self,
        limits: &Limits,
        admit: impl FnOnce(FrameKind, u32) -> Result<(), ProtocolError>,
    ) -> Result<Option<(FrameKind, Bytes)>, ProtocolError> {
        if !self.preamble_done {
            let Some(pre) = self.buf.first_chunk::<PREAMBLE_LEN>() else {
                // Refuse a wrong magic as soon as its first bytes disagree.
                let n = self.buf.len().min(4);
                if self.buf[..n] != super::frame::MAGIC[..n] {
                    let mut found = [0u8; 4];
                    found[..n].copy_from_slice(&self.buf[..n]);
                    return Err(ProtocolError::BadMagic { found });
                }
                return Ok(None);
            };
            self.version = Some(check_preamble(pre)?);
            self.buf.advance(PREAMBLE_LEN);
            self.preamble_done = true;
        }
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = parse_frame_header(header, limits)?;
        admit(kind, len)?;
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < total {
            // No reservation from the announced length: the buffer grows only with the
            // bytes that actually arrive (a 5-byte lie costs nothing).
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        Ok(Some((kind, self.buf.split_to(len as usize).freeze())))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The version the stream's preamble announced, once it arrived.
    pub(crate) fn version(&self) -> Option<u16> {
        self.version
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
}

pub(crate) fn decode_message<T: DeserializeOwned>(
    kind: FrameKind,
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    decode_bounded(kind, bytes, &Limits::default())
}

/// Decodes one message with `limits` bounding its vectors as they are read: a declared
/// count over a limit is refused before any element is decoded (see [`super::bounded`]).
pub(crate) fn decode_bounded<T: DeserializeOwned>(
    kind: FrameKind,
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, ProtocolError> {
    let (value, rest) = decode_bounded_prefix(kind, bytes, limits)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed {
            kind,
            reason: format!("{} unexpected bytes after the message", rest.len()),
        });
    }
    Ok(value)
}

/// [`decode_bounded`] of the start of `bytes`; the value and the bytes after it.
pub(crate) fn decode_bounded_prefix<'a, T: DeserializeOwned>(
    kind: FrameKind,
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(T, &'a [u8]), ProtocolError> {
    let (decoded, exceeded) = with_limits(limits, || postcard::take_from_bytes::<T>(bytes));
    if let Some(limit) = exceeded {
        return Err(limit);
    }
    decoded.map_err(|e| ProtocolError::Malformed {
        kind,
        reason: e.to_string(),
    })
}

fn decode_index(kind: FrameKind, bytes: &[u8]) -> Result<u32, ProtocolError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| ProtocolError::Malformed {
        kind,
        reason: format!("{} bytes, expected a 4-byte index", bytes.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}

/// Remembers the first error so that a failed decoder keeps failing.
pub(crate) fn poison<T>(
    slot: &mut Option<ProtocolError>,
    r: Result<T, ProtocolError>,
) -> Result<T, ProtocolError> {
    if let Err(e) = &r {
        *slot = Some(e.clone());
    }
    r
}

/// Decodes the server→client stream (what the client receives).
#[derive(Debug)]
pub struct ResponseDecoder {
    limits: Limits,
    frames: FrameBuffer,
    seq: Sequence,
    ended_with_error: bool,
    failed: Option<ProtocolError>,
    held_used: Option<Vec<String>>,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl ResponseDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        ResponseDecoder {
            limits,
            frames: FrameBuffer::default(),
            seq: Sequence::new(),
            ended_with_error: false,
            failed: None,
            held_used: None,
        }
    }

    /// The held images (names as the request gave them) the bundle was planned
    /// against, once the header arrived on a version-4 stream; `None` before, or
    /// when the proxy speaks an older version (it does not say).
    pub fn held_used(&self) -> Option<&[String]> {
        self.held_used.as_deref()
    }

    /// Appends received bytes (any chunking).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// The protocol version the stream announced, once its preamble arrived.
    pub fn version(&self) -> Option<u16> {
        self.frames.version()
    }

    /// Bytes received but not yet decoded (at most one frame and a frame header).
    pub fn buffered(&self) -> usize {
        self.frames.len()
    }

    /// The next event, `None` if more bytes are needed. After an error, every call
    /// fails.
    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        let r = self.decode_next();
        poison(&mut self.failed, r)
    }

    fn decode_next(&mut self) -> Result<Option<Event>, ProtocolError> {
        loop {
            if self.seq.is_done() {
                if self.frames.is_empty() {
                    return Ok(None);
                }
                // Anything after End or Error is garbage, however short.
                let after = if self.finished_with_error() {
                    FrameKind::Error
                } else {
                    FrameKind::End
                };
                return Err(ProtocolError::TrailingData {
                    after,
                    len: self.frames.len(),
                });
            }
            let seq = &self.seq;
            let Some((kind, body)) = self
                .frames
                .next_frame(&self.limits, |k, l| seq.admit(k, l))?
            else {
                return Ok(None);
            };
            let event = match kind {
                FrameKind::Header => {
                    let version = self.frames.version();
                    let raw = if version >= Some(HEADER_ZSTD_VERSION) {
                        decompress_header(&body, self.limits.max_header)?
                    } else {
                        body.to_vec()
                    };
                    let header: Header = if version >= Some(HELD_USED_VERSION) {
                        let (header, used) = super::held::split(&raw, &self.limits)?;
                        self.held_used = Some(used);
                        header
                    } else {
                        decode_bounded(kind, &raw, &self.limits)?
                    };
                    validate_header(&header, &self.limits)?;
                    self.seq.on_header(&header)?;
                    Event::Header(header)
                }
                FrameKind::PayloadBegin => {
                    let index = decode_index(kind, &body)?;
                    self.seq.on_begin(index)?;
                    Event::PayloadBegin { index }
                }
                FrameKind::PayloadData => {
                    let index = self.seq.on_data(body.len() as u32)?;
                    if body.is_empty() {
                        continue;
                    }
                    Event::PayloadData { index, data: body }
                }
                FrameKind::PayloadEnd => {
                    let index = decode_index(kind, &body)?;
                    self.seq.on_payload_end(index)?;
                    Event::PayloadEnd { index }
                }
                FrameKind::End => {
                    let end: End = decode_message(kind, &body)?;
                    self.seq.on_end(&end)?;
                    self.ended_with_error = false;
                    Event::End(end)
                }
                FrameKind::Error => {
                    let error: ErrorFrame = decode_message(kind, &body)?;
                    validate_error(&error, &self.limits)?;
                    self.seq.on_error()?;
                    self.ended_with_error = true;
                    Event::Error(error)
                }
                FrameKind::Request
                | FrameKind::TraceUpload
                | FrameKind::TraceAck
                | FrameKind::RanksQuery
                | FrameKind::Ranks
                | FrameKind::Auth
                | FrameKind::AuthOk
                | FrameKind::Refresh => {
                    return Err(ProtocolError::UnexpectedFrame {
                        got: kind,
                        expected: "a bundle frame",
                    })
                }
            };
            return Ok(Some(event));
        }
    }

    fn finished_with_error(&self) -> bool {
        self.ended_with_error
    }

    /// Whether End or Error was decoded.
    pub fn is_done(&self) -> bool {
        self.seq.is_done()
    }

    /// Call once the transport reports the end of the stream (after draining
    /// [`next_event`](Self::next_event)): fails unless the stream ended with End or Error
    /// and nothing followed.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        if !self.seq.is_done() {
            return Err(ProtocolError::Truncated {
                expected: if self.frames.preamble_done {
                    self.seq.expecting()
                } else {
                    "the preamble"
                },
            });
        }
        if !self.frames.is_empty() {
            return Err(ProtocolError::TrailingData {
                after: if self.ended_with_error {
                    FrameKind::Error
                } else {
                    FrameKind::End
                },
                len: self.frames.len(),
            });
        }
        Ok(())
    }
}

/// Decodes the client→server stream (what the server receives): the preamble, then
/// exactly one Request frame.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    frames: FrameBuffer,
    done: bool,
    failed: Option<ProtocolError>,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            frames: FrameBuffer::default(),
            done: false,
            failed: None,
        }
    }

    /// Appends received bytes (any chunking).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// The request once it is complete, `None` if more bytes are needed (or it was
    /// already returned). After an error, every call fails.
    pub fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        let r = self.decode_next();
        poison(&mut self.failed, r)
    }

    fn decode_next(&mut self) -> Result<Option<Request>, ProtocolError> {
        if self.done {
            if self.frames.is_empty() {
                return Ok(None);
            }
            return Err(ProtocolError::TrailingData {
                after: FrameKind::Request,
                len: self.frames.len(),
            });
        }
        let admit = |kind, _len| match kind {
            FrameKind::Request => Ok(()),
            got => Err(ProtocolError::UnexpectedFrame {
                got,
                expected: "a Request frame",
            }),
        };
        let Some((kind, body)) = self.frames.next_frame(&self.limits, admit)? else {
            return Ok(None);
        };
        let req: Request = decode_bounded(kind, &body, &self.limits)?;
        validate_request(&req, &self.limits)?;
        self.done = true;
        Ok(Some(req))
    }

    /// Call once the transport reports the end of the stream: fails unless exactly one
    /// complete request arrived and nothing followed it.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        if !self.done {
            return Err(ProtocolError::Truncated {
                expected: "the Request frame",
            });
        }
        if !self.frames.is_empty() {
            return Err(ProtocolError::TrailingData {
                after: FrameKind::Request,
                len: self.frames.len(),
            });
        }
        Ok(())
    }
}
