//! The server's side of one bundle: frames written to a QUIC stream with back-pressure.

use bytes::BytesMut;
use quinn::{SendStream, VarInt};

use crate::codec::{End, ErrorFrame, Header, Limits, ProtocolError, ResponseEncoder};

/// Application error code used when a bundle is abandoned mid-way (stream reset).
pub(crate) const RESET_ABANDONED: u32 = 1;

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The frame would break the protocol (out of order, over a limit, bad totals).
    #[error("bundle refused by the encoder: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client stopped reading, or the connection was lost.
    #[error("the client is gone: {0}")]
    Stream(#[from] quinn::WriteError),
    /// The stream was already finished, reset or aborted.
    #[error("the bundle stream is already closed")]
    Closed,
    /// The client read nothing for the stall timeout: the bundle was cancelled.
    #[error("the client read nothing for {0:?}: bundle cancelled")]
    Stalled(std::time::Duration),
}

/// Writes one bundle to a QUIC stream, checking the frame order as it goes.
///
/// Every write awaits the stream's flow control, so a slow client slows the handler
/// down instead of growing a buffer: memory stays bounded by the QUIC send window.
/// A writer dropped (or left by its handler) before [`finish`](Self::finish) or
/// [`send_error`](Self::send_error) resets the stream, so the client sees a truncated
/// bundle, never a complete one.
#[derive(Debug)]
pub struct BundleWriter {
    send: Option<SendStream>,
    enc: ResponseEncoder,
    buf: BytesMut,
    current: Option<u32>,
    stall: Option<std::time::Duration>,
}

impl BundleWriter {
    pub(crate) fn new(send: SendStream, limits: Limits) -> Self {
        BundleWriter {
            send: Some(send),
            enc: ResponseEncoder::new(limits),
            buf: BytesMut::new(),
            current: None,
            stall: None,
        }
    }

    /// Answers in protocol `version` (the request's): from version 3 on, the header is
    /// compressed.
    pub(crate) fn with_version(mut self, version: u16) -> Self {
        let enc = std::mem::take(&mut self.enc);
        self.enc = enc.with_version(version);
        self
    }

    /// Cancels the bundle (resets the stream) when one write makes no progress for
    /// `timeout`: a client that stops reading cannot pin the handler's buffers.
    pub(crate) fn with_stall_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stall = Some(timeout);
        self
    }

    /// Writes `bytes`, or cancels the bundle if the client reads nothing for the
    /// stall timeout.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let stall = self.stall;
        let send = self.send.as_mut().ok_or(WriteError::Closed)?;
        let r = match stall {
            None => send.write_all(bytes).await,
            Some(t) => match write_with_progress(send, bytes, t).await {
                Some(r) => r,
                None => {
                    self.abort();
                    return Err(WriteError::Stalled(t));
                }
            },
        };
        r.map_err(|e| match e {
            quinn::WriteError::ClosedStream => WriteError::Closed,
            e => WriteError::Stream(e),
        })
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write(&buf).await;
        self.buf = buf;
        self.buf.clear();
        r
    }

    fn closed(&self) -> Result<(), WriteError> {
        if self.send.is_none() {
            return Err(WriteError::Closed);
        }
        Ok(())
    }

    /// Sends the header (first, once).
    pub async fn send_header(&mut self, header: &Header) -> Result<(), WriteError> {
        self.send_header_with_held(header, &[]).await
    }

    /// Sends the header (first, once), naming the held images the bundle was
    /// planned against (for clients of protocol version 4 and later).
    pub async fn send_header_with_held(
        &mut self,
        header: &Header,
        held_used: &[String],
    ) -> Result<(), WriteError> {
        self.closed()?;
        self.enc
            .header_with_held(header, held_used, &mut self.buf)?;
        self.flush().await
    }

    /// Starts payload `index`, which must be the next one in header order.
    pub async fn begin_payload(&mut self, index: u32) -> Result<(), WriteError> {
        self.closed()?;
        self.enc.begin_payload(index, &mut self.buf)?;
        self.current = Some(index);
        self.flush().await
    }

    /// Sends compressed bytes of the current payload, in frames of at most the
    /// configured data frame size; never more than the header's `compressed_len` in all.
    pub async fn send_data(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.closed()?;
        let chunk = self.enc.limits().max_data_frame.max(1) as usize;
        for piece in data.chunks(chunk) {
            let header = self.enc.data_frame_header(piece.len() as u32)?;
            self.write(&header).await?;
            self.write(piece).await?;
        }
        Ok(())
    }

    /// Ends the current payload (all its bytes must have been sent).
    pub async fn end_payload(&mut self) -> Result<(), WriteError> {
        self.closed()?;
        let index = self.current.ok_or(ProtocolError::UnexpectedFrame {
            got: crate::codec::FrameKind::PayloadEnd,
            expected: "a PayloadBegin frame first",
        })?;
        self.enc.end_payload(index, &mut self.buf)?;
        self.current = None;
        self.flush().await
    }

    /// Payloads completed and bytes sent so far (the End frame to send).
    pub fn totals(&self) -> End {
        self.enc.totals()
    }

    /// Sends the End frame (its totals must match what was sent) and finishes the
    /// stream.
    pub async fn finish(&mut self, end: End) -> Result<(), WriteError> {
        self.closed()?;
        self.enc.end(&end, &mut self.buf)?;
        self.flush().await?;
        self.close()
    }

    /// Sends an Error frame (allowed at any point before End) and finishes the stream.
    pub async fn send_error(&mut self, error: ErrorFrame) -> Result<(), WriteError> {
        self.closed()?;
        self.enc.error(&error, &mut self.buf)?;
        self.flush().await?;
        self.close()
    }

    fn close(&mut self) -> Result<(), WriteError> {
        if let Some(mut send) = self.send.take() {
            // Only fails if the client already stopped the stream.
            send.finish().map_err(|_| WriteError::Closed)?;
        }
        Ok(())
    }

    /// Abandons the bundle: resets the stream, so the client reports it as truncated.
    pub fn abort(&mut self) {
        if let Some(mut send) = self.send.take() {
            // Fails only if the stream is already closed: nothing left to do then.
            let _ = send.reset(VarInt::from_u32(RESET_ABANDONED));
        }
    }

    /// Whether the bundle was completed with End or Error.
    pub fn is_done(&self) -> bool {
        self.enc.is_done()
    }

    /// Whether frames can still be written (not finished, failed or aborted).
    pub fn is_open(&self) -> bool {
        self.send.is_some()
    }
}

/// Writes all of `bytes`; `None` when a single write accepts nothing for `stall`
/// (the client's flow-control window stayed closed).
async fn write_with_progress(
    send: &mut SendStream,
    mut bytes: &[u8],
    stall: std::time::Duration,
) -> Option<Result<(), quinn::WriteError>> {
    while !bytes.is_empty() {
        match tokio::time::timeout(stall, send.write(bytes)).await {
            Err(_) => return None,
            Ok(Err(e)) => return Some(Err(e)),
            Ok(Ok(n)) => bytes = &bytes[n..],
        }
    }
    Some(Ok(()))
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        // quinn finishes a dropped stream cleanly; an unfinished bundle must look broken.
        self.abort();
    }
}
