//! Checks payloads as they arrive: each one is streamed through a gzip or
//! zstd decoder into SHA-256, so memory stays bounded whatever its size.
//! Verification runs on its own thread, fed through a bounded channel, so
//! decompression overlaps with receiving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use transport_quic::payload::PayloadDecoder;
use transport_quic::PayloadInfo;

/// Why a payload failed verification (decoding, size or SHA-256).
pub use transport_quic::payload::PayloadError as VerifyError;

/// One payload being verified: decoded into nothing but the hasher.
type PayloadVerifier = PayloadDecoder<std::io::Sink>;

/// A message to the verifier thread.
pub enum Msg {
    /// Payload `index` starts.
    Begin(u32, PayloadInfo),
    /// Compressed bytes of the current payload.
    Data(bytes::Bytes),
    /// The current payload is complete.
    End,
}

/// What the verifier thread checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    /// Payloads verified.
    pub payloads: u64,
    /// Their decompressed bytes.
    pub bytes: u64,
}

/// Verifier threads and the sending ends of their channels: payloads are
/// spread over the threads (payload `i` goes to thread `i % n`), so
/// decompression and hashing use every core while the stream is received.
pub struct VerifierThread {
    workers: Vec<(SyncSender<Msg>, Worker)>,
    /// The thread the current payload's messages go to.
    current: AtomicUsize,
}

/// One verifier thread: what it checked, or its first failure.
type Worker = JoinHandle<Result<Verified, VerifyError>>;

fn run(rx: Receiver<Msg>) -> Result<Verified, VerifyError> {
    let mut current: Option<PayloadVerifier> = None;
    let mut done = Verified::default();
    for msg in rx {
        match msg {
            Msg::Begin(index, info) => {
                done.bytes += info.size;
                current = Some(PayloadVerifier::new(index, &info, std::io::sink())?);
            }
            Msg::Data(data) => {
                if let Some(v) = current.as_mut() {
                    v.feed(&data)?;
                }
            }
            Msg::End => {
                if let Some(v) = current.take() {
                    v.finish()?;
                    done.payloads += 1;
                }
            }
        }
    }
    Ok(done)
}

impl VerifierThread {
    /// Starts one verifier thread per core (at most 4); `depth` messages may
    /// wait in each thread's channel.
    pub fn start(depth: usize) -> std::io::Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Self::start_n(n, depth)
    }

    /// Starts `n` (at least 1) verifier threads.
    pub fn start_n(n: usize, depth: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = sync_channel(depth);
            let handle = std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || run(rx))?;
            workers.push((tx, handle));
        }
        Ok(VerifierThread {
            workers,
            current: AtomicUsize::new(0),
        })
    }

    /// Sends a message; `false` if the thread stopped (on an error: see
    /// [`Self::finish`]).
    pub fn send(&self, msg: Msg) -> bool {
        if let Msg::Begin(index, _) = &msg {
            let n = self.workers.len().max(1);
            self.current
                .store(usize::try_from(*index).unwrap_or(0) % n, Ordering::Relaxed);
        }
        let worker = self.current.load(Ordering::Relaxed);
        self.workers
            .get(worker)
            .is_some_and(|(tx, _)| tx.send(msg).is_ok())
    }

    /// Waits for the threads to check everything sent; the first error (by
    /// payload index) wins.
    pub fn finish(self) -> Result<Verified, VerifyError> {
        let mut total = Verified::default();
        let mut first_error: Option<VerifyError> = None;
        for (tx, handle) in self.workers {
            drop(tx);
            let result = handle.join().unwrap_or_else(|_| {
                Err(VerifyError::Corrupt {
                    index: u32::MAX,
                    reason: "a verifier thread panicked".into(),
                })
            });
            match result {
                Ok(v) => {
                    total.payloads += v.payloads;
                    total.bytes += v.bytes;
                }
                Err(e) => {
                    if first_error.as_ref().is_none_or(|f| e.index() < f.index()) {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use transport_quic::PayloadCompression;

    fn info(data: &[u8], compression: PayloadCompression, compressed: &[u8]) -> PayloadInfo {
        PayloadInfo {
            sha256: Sha256::digest(data).into(),
            compression,
            compressed_len: compressed.len() as u64,
            size: data.len() as u64,
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn thread_reports_the_first_error() {
        let data = b"abc".repeat(1000);
        let gz = gzip(&data);
        let good = info(&data, PayloadCompression::Gzip, &gz);
        let mut bad = good.clone();
        bad.sha256 = [0; 32];
        let t = VerifierThread::start(4).unwrap();
        for (i, inf) in [(0, good.clone()), (1, bad)] {
            t.send(Msg::Begin(i, inf));
            t.send(Msg::Data(bytes::Bytes::from(gz.clone())));
            t.send(Msg::End);
        }
        let err = t.finish().unwrap_err();
        assert_eq!(err.index(), 1);
        let t = VerifierThread::start(4).unwrap();
        t.send(Msg::Begin(0, good));
        t.send(Msg::Data(bytes::Bytes::from(gz)));
        t.send(Msg::End);
        assert_eq!(t.finish().unwrap().payloads, 1);
    }
}
