//! The order a response must follow, shared by the encoder (which refuses to produce an
//! invalid stream) and the decoder (which refuses to accept one).

use super::frame::FrameKind;
use super::types::{End, Header};
use super::ProtocolError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing yet: a Header (or an Error) comes first.
    AwaitHeader,
    /// Between payloads: `next` is the index of the next payload.
    Between { next: u32 },
    /// Inside payload `index`, `received` bytes so far.
    InPayload { index: u32, received: u64 },
    /// The stream is over: nothing may follow this frame.
    Done(FrameKind),
}

/// Tracks where a response stream is and checks each frame against it.
#[derive(Debug, Clone)]
pub(crate) struct Sequence {
    phase: Phase,
    lens: Vec<u64>,
    bytes: u64,
}

impl Sequence {
    pub(crate) fn new() -> Self {
        Sequence {
            phase: Phase::AwaitHeader,
            lens: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether the stream reached End or Error.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// What the stream still expects, for truncation messages.
    pub(crate) fn expecting(&self) -> &'static str {
        match self.phase {
            Phase::AwaitHeader => "the Header frame",
            Phase::Between { next } if next as usize >= self.lens.len() => "the End frame",
            Phase::Between { .. } => "the next payload",
            Phase::InPayload { .. } => "the rest of a payload",
            Phase::Done(_) => "nothing",
        }
    }

    /// Checks that a frame of this kind and length may come next, from its frame header
    /// alone (before its bytes are buffered).
    pub(crate) fn admit(&self, kind: FrameKind, len: u32) -> Result<(), ProtocolError> {
        let unexpected = |expected| {
            Err(ProtocolError::UnexpectedFrame {
                got: kind,
                expected,
            })
        };
        match (self.phase, kind) {
            (Phase::Done(after), _) => Err(ProtocolError::TrailingData {
                after,
                len: super::frame::FRAME_HEADER_LEN + len as usize,
            }),
            (_, FrameKind::Error) => Ok(()),
            (Phase::AwaitHeader, FrameKind::Header) => Ok(()),
            (Phase::AwaitHeader, _) => unexpected("a Header or Error frame"),
            (Phase::Between { .. }, FrameKind::PayloadBegin | FrameKind::End) => Ok(()),
            (Phase::Between { .. }, _) => unexpected("a PayloadBegin, End or Error frame"),
            (Phase::InPayload { index, received }, FrameKind::PayloadData) => {
                let expected = self.lens[index as usize];
                let got = received + u64::from(len);
                if got > expected {
                    return Err(ProtocolError::PayloadOverrun {
                        index,
                        expected,
                        got,
                    });
                }
                Ok(())
            }
            (Phase::InPayload { .. }, FrameKind::PayloadEnd) => Ok(()),
            (Phase::InPayload { .. }, _) => unexpected("a PayloadData, PayloadEnd or Error frame"),
        }
    }

    /// Records the (already validated) header.
    pub(crate) fn on_header(&mut self, header: &Header) -> Result<(), ProtocolError> {
        self.admit(FrameKind::Header, 0)?;
        self.lens = header.payloads.iter().map(|p| p.compressed_len).collect();
        self.phase = Phase::Between { next: 0 };
        Ok(())
    }

    /// Records the start of payload `index`.
    pub(crate) fn on_begin(&mut self, index: u32) -> Result<(), ProtocolError> {
        self.admit(FrameKind::PayloadBegin, 4)?;
        let Phase::Between { next } = self.phase else {
            unreachable!("admit checked the phase")
        };
        if next as usize >= self.lens.len() {
            return Err(ProtocolError::UnexpectedFrame {
                got: FrameKind::PayloadBegin,
                expected: "the End frame (every payload was sent)",
            });
        }
        if index != next {
            return Err(ProtocolError::PayloadOutOfOrder {
                got: index,
                expected: next,
            });
        }
        self.phase = Phase::InPayload { index, received: 0 };
        Ok(())
    }

    /// Records `len` bytes of the current payload; returns its index.
    pub(crate) fn on_data(&mut self, len: u32) -> Result<u32, ProtocolError> {
        self.admit(FrameKind::PayloadData, len)?;
        let Phase::InPayload { index, received } = self.phase else {
            unreachable!("admit checked the phase")
        };
        self.phase = Phase::InPayload {
            index,
            received: received + u64::from(len),
        };
        self.bytes += u64::from(len);
        Ok(index)
    }

    /// Records the end of payload `index`.
    pub(crate) fn on_payload_end(&mut self, index: u32) -> Result<(), ProtocolError> {
        self.admit(FrameKind::PayloadEnd, 4)?;
        let Phase::InPayload {
            index: current,
            received,
        } = self.phase
        else {
            unreachable!("admit checked the phase")
        };
        if index != current {
            return Err(ProtocolError::PayloadOutOfOrder {
                got: index,
                expected: current,
            });
        }
        let expected = self.lens[index as usize];
        if received != expected {
            return Err(ProtocolError::PayloadUnderrun {
                index,
                expected,
                got: received,
            });
        }
        self.phase = Phase::Between { next: index + 1 };
        Ok(())
    }

    /// Records the End frame and checks its totals.
    pub(crate) fn on_end(&mut self, end: &End) -> Result<(), ProtocolError> {
        self.admit(FrameKind::End, 0)?;
        let Phase::Between { next } = self.phase else {
            unreachable!("admit checked the phase")
        };
        let complete = next as usize == self.lens.len();
        if !complete || end.payloads != next || end.bytes != self.bytes {
            return Err(ProtocolError::EndMismatch {
                end_payloads: end.payloads,
                end_bytes: end.bytes,
                payloads: next,
                bytes: self.bytes,
            });
        }
        self.phase = Phase::Done(FrameKind::End);
        Ok(())
    }

    /// Records an Error frame: the stream is over.
    pub(crate) fn on_error(&mut self) -> Result<(), ProtocolError> {
        self.admit(FrameKind::Error, 0)?;
        self.phase = Phase::Done(FrameKind::Error);
        Ok(())
    }

    /// Totals so far: payloads completed and payload bytes.
    pub(crate) fn totals(&self) -> End {
        let payloads = match self.phase {
            Phase::Between { next } => next,
            Phase::InPayload { index, .. } => index,
            Phase::AwaitHeader => 0,
            Phase::Done(_) => self.lens.len() as u32,
        };
        End {
            payloads,
            bytes: self.bytes,
        }
    }
}
