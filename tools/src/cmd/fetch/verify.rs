//! Checks payloads as they arrive: each one is streamed through a gzip or
//! zstd decoder into SHA-256, so memory stays bounded whatever its size.
//! Verification runs on its own thread, fed through a bounded channel, so
//! decompression overlaps with receiving.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};
use transport_quic::{PayloadCompression, PayloadInfo};

/// Why a payload failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The payload could not be decompressed (corrupt or truncated member).
    #[error("payload {index} is corrupt: {reason}")]
    Corrupt {
        /// Payload index.
        index: u32,
        /// The decoder's complaint.
        reason: String,
    },
    /// The decompressed size differs from the header's.
    #[error("payload {index}: decompressed to {actual} bytes, the header says {expected}")]
    Size {
        /// Payload index.
        index: u32,
        /// Size from the header.
        expected: u64,
        /// Size decoded (so far, when over).
        actual: u64,
    },
    /// The decompressed content's SHA-256 differs from the header's.
    #[error("payload {index}: SHA-256 mismatch: expected {expected}, got {actual}")]
    Digest {
        /// Payload index.
        index: u32,
        /// Hex digest from the header.
        expected: String,
        /// Hex digest of what arrived.
        actual: String,
    },
}

impl VerifyError {
    /// The payload concerned.
    pub fn index(&self) -> u32 {
        match self {
            VerifyError::Corrupt { index, .. }
            | VerifyError::Size { index, .. }
            | VerifyError::Digest { index, .. } => *index,
        }
    }
}

/// Hashes what the decoder writes; refuses more than the expected size.
struct HashSink {
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other(format!(
                "decompresses to more than the {} bytes announced",
                self.limit
            )));
        }
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<HashSink>>),
    Zstd(zstd::stream::write::Decoder<'static, HashSink>),
}

/// One payload being verified.
pub struct PayloadVerifier {
    index: u32,
    info: PayloadInfo,
    decoder: Decoder,
}

impl PayloadVerifier {
    /// Starts verifying payload `index` described by `info`.
    pub fn new(index: u32, info: &PayloadInfo) -> Result<Self, VerifyError> {
        let sink = HashSink {
            hasher: Sha256::new(),
            written: 0,
            limit: info.size,
        };
        let decoder = match info.compression {
            PayloadCompression::Gzip => {
                Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(sink)))
            }
            PayloadCompression::Zstd => {
                Decoder::Zstd(zstd::stream::write::Decoder::new(sink).map_err(|e| {
                    VerifyError::Corrupt {
                        index,
                        reason: e.to_string(),
                    }
                })?)
            }
        };
        Ok(PayloadVerifier {
            index,
            info: info.clone(),
            decoder,
        })
    }

    fn corrupt(&self, e: std::io::Error) -> VerifyError {
        let written = self.sink().written;
        if written > self.info.size {
            return VerifyError::Size {
                index: self.index,
                expected: self.info.size,
                actual: written,
            };
        }
        let reason = if e.kind() == std::io::ErrorKind::WriteZero {
            "data after the end of the compressed member".to_string()
        } else {
            e.to_string()
        };
        VerifyError::Corrupt {
            index: self.index,
            reason,
        }
    }

    fn sink(&self) -> &HashSink {
        match &self.decoder {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
        }
    }

    /// Feeds compressed bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        let r = match &mut self.decoder {
            Decoder::Gzip(d) => d.write_all(data),
            Decoder::Zstd(d) => d.write_all(data),
        };
        r.map_err(|e| self.corrupt(e))
    }

    /// Ends the payload: checks size and SHA-256.
    pub fn finish(mut self) -> Result<(), VerifyError> {
        let r = match &mut self.decoder {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zstd(d) => d.flush(),
        };
        r.map_err(|e| self.corrupt(e))?;
        let sink = match self.decoder {
            Decoder::Gzip(d) => d.finish().map_err(|e| VerifyError::Corrupt {
                index: self.index,
                reason: e.to_string(),
            })?,
            Decoder::Zstd(d) => d.into_inner(),
        };
        if sink.written != self.info.size {
            return Err(VerifyError::Size {
                index: self.index,
                expected: self.info.size,
                actual: sink.written,
            });
        }
        let actual: [u8; 32] = sink.hasher.finalize().into();
        if actual != self.info.sha256 {
            return Err(VerifyError::Digest {
                index: self.index,
                expected: hex::encode(self.info.sha256),
                actual: hex::encode(actual),
            });
        }
        Ok(())
    }
}

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
                current = Some(PayloadVerifier::new(index, &info)?);
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

    fn check(info: &PayloadInfo, bytes: &[u8]) -> Result<(), VerifyError> {
        let mut v = PayloadVerifier::new(7, info)?;
        for piece in bytes.chunks(1000) {
            v.feed(piece)?;
        }
        v.finish()
    }

    #[test]
    fn good_payloads_verify_in_pieces() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let gz = gzip(&data);
        check(&info(&data, PayloadCompression::Gzip, &gz), &gz).unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        check(&info(&data, PayloadCompression::Zstd, &zs), &zs).unwrap();
    }

    #[test]
    fn wrong_digest_size_and_truncation_are_caught() {
        let data = b"hello, world, hello, world".repeat(100);
        let gz = gzip(&data);
        let mut i = info(&data, PayloadCompression::Gzip, &gz);
        i.sha256[0] ^= 1;
        assert!(matches!(
            check(&i, &gz),
            Err(VerifyError::Digest { index: 7, .. })
        ));
        let mut i = info(&data, PayloadCompression::Gzip, &gz);
        i.size -= 1;
        assert!(matches!(check(&i, &gz), Err(VerifyError::Size { .. })));
        let i = info(&data, PayloadCompression::Gzip, &gz);
        assert!(check(&i, &gz[..gz.len() - 10]).is_err());
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let i = info(&data, PayloadCompression::Zstd, &zs);
        assert!(check(&i, &zs[..zs.len() / 2]).is_err());
        let mut flipped = gz.clone();
        flipped[20] ^= 0xff;
        assert!(check(&info(&data, PayloadCompression::Gzip, &gz), &flipped).is_err());
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
