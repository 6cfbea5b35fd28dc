//! The events of one bundle as they arrive at the client: the stream is drained in its
//! own task into a bounded buffer and decoded.

use std::sync::Arc;

use quinn::{Connection, RecvStream};

use super::client::{certificate_failure, ClientError};
use crate::codec::{Event, ProtocolError, ResponseDecoder};

/// Fewest bytes the drain task of a bundle stream reads ahead of its consumer.
pub(crate) const MIN_DRAIN_BUDGET: u64 = 1 << 20;
/// Most bytes the drain task of a bundle stream reads ahead of its consumer.
pub(crate) const MAX_DRAIN_BUDGET: u64 = 64 << 20;

/// What the drain task passes on: a chunk, the end of the stream, or the read error.
type DrainItem = Result<Option<bytes::Bytes>, quinn::ReadError>;

/// Reads a bundle's stream as fast as it arrives, in its own task, into a buffer of at
/// most `budget` bytes the consumer empties. quinn closes a connection whose stream
/// holds more than 1024 out-of-order pieces; a consumer that pauses (a slow disk, an
/// fsync) must not leave the stream unread while losses are being repaired behind the
/// read point.
#[derive(Debug)]
pub(crate) struct Drain {
    rx: tokio::sync::mpsc::UnboundedReceiver<DrainItem>,
    budget: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    pub(crate) fn spawn(mut recv: RecvStream, read_chunk: usize, budget: usize) -> Drain {
        let read_chunk = read_chunk.min(budget);
        let sem = Arc::new(tokio::sync::Semaphore::new(budget));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = {
            let sem = sem.clone();
            tokio::spawn(async move {
                loop {
                    // Room for a whole chunk first: the buffer never exceeds the budget.
                    let Ok(permit) = sem.acquire_many(read_chunk as u32).await else {
                        return;
                    };
                    permit.forget();
                    let item = recv.read_chunk(read_chunk, true).await;
                    let (used, last) = match &item {
                        Ok(Some(chunk)) => (chunk.bytes.len(), false),
                        _ => (0, true),
                    };
                    sem.add_permits(read_chunk - used);
                    if tx.send(item.map(|c| c.map(|c| c.bytes))).is_err() || last {
                        // Dropping `recv` unread tells the proxy to stop sending.
                        return;
                    }
                }
            })
        };
        Drain {
            rx,
            budget: sem,
            task,
        }
    }

    async fn next(&mut self) -> DrainItem {
        match self.rx.recv().await {
            Some(Ok(Some(bytes))) => {
                self.budget.add_permits(bytes.len());
                Ok(Some(bytes))
            }
            Some(other) => other,
            None => Err(quinn::ReadError::ClosedStream),
        }
    }

    /// Stops reading: the task ends and drops the stream (STOP_SENDING to the proxy).
    fn stop(&mut self) {
        self.task.abort();
        self.budget.close();
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The events of one bundle as they arrive.
///
/// Call [`next_event`](Self::next_event) until it returns `Ok(None)`: that, and only
/// that, means the bundle arrived complete (End received, stream closed cleanly, nothing
/// after). An Error frame from the proxy comes back as `Err` ([`ClientError::Unauthorized`]
/// or [`ClientError::Proxy`]).
#[derive(Debug)]
pub struct BundleStream {
    pub(crate) drain: Drain,
    pub(crate) decoder: ResponseDecoder,
    pub(crate) eof: bool,
    pub(crate) failed: bool,
    pub(crate) bytes_received: u64,
    pub(crate) _conn: Connection,
}

impl BundleStream {
    /// Bytes received on the stream so far (framing included).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The held images (as the request named them) the bundle was planned
    /// against, once the header arrived; `None` before, or from a proxy older
    /// than protocol version 4.
    pub fn held_used(&self) -> Option<&[String]> {
        self.decoder.held_used()
    }

    /// The next event, `Ok(None)` once the bundle is complete.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if self.failed {
            return Err(ClientError::Truncated("the stream already failed".into()));
        }
        let r = self.next_inner().await;
        if r.is_err() {
            self.failed = true;
            // Tell the proxy to stop sending.
            self.drain.stop();
        }
        r
    }

    async fn next_inner(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            match self.decoder.next_event()? {
                Some(Event::Error(frame)) => return Err(ClientError::from_error_frame(frame)),
                Some(event) => return Ok(Some(event)),
                None => {}
            }
            if self.eof {
                return match self.decoder.finish() {
                    Ok(()) => Ok(None),
                    Err(e @ ProtocolError::Truncated { .. }) => {
                        Err(ClientError::Truncated(e.to_string()))
                    }
                    Err(e) => Err(ClientError::Protocol(e)),
                };
            }
            match self.drain.next().await {
                Ok(Some(bytes)) => {
                    self.bytes_received += bytes.len() as u64;
                    self.decoder.feed(&bytes);
                }
                Ok(None) => self.eof = true,
                Err(quinn::ReadError::Reset(code)) => {
                    return Err(ClientError::Truncated(format!(
                        "the proxy reset the stream (code {code}) while expecting {}",
                        self.expecting()
                    )))
                }
                Err(quinn::ReadError::ConnectionLost(e)) => {
                    if let Some(reason) = certificate_failure(&e) {
                        return Err(ClientError::CertificateNotTrusted(reason));
                    }
                    return Err(ClientError::Truncated(format!(
                        "connection lost ({e}) while expecting {}",
                        self.expecting()
                    )));
                }
                Err(e) => return Err(ClientError::Truncated(e.to_string())),
            }
        }
    }

    fn expecting(&self) -> String {
        match self.decoder.finish() {
            Err(ProtocolError::Truncated { expected }) => expected.to_string(),
            _ => "the end of the stream".to_string(),
        }
    }
}
