//! One payload on its way into the store: compressed bytes are streamed
//! through a gzip or zstd decoder into a temporary file of the store while
//! being hashed; [`PayloadWriter::finish`] checks size and SHA-256 and only
//! then renames the file into place.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use transport_quic::{PayloadCompression, PayloadInfo};

use crate::store::{Store, StoreError};

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The bytes could not be decompressed, or decompress to too much.
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
        /// Size announced.
        expected: u64,
        /// Size decoded.
        actual: u64,
    },
    /// The content's SHA-256 differs from the header's.
    #[error("payload {index}: SHA-256 mismatch: expected {expected}, got {actual}")]
    Digest {
        /// Payload index.
        index: u32,
        /// Hex digest announced.
        expected: String,
        /// Hex digest of what arrived.
        actual: String,
    },
    /// The store could not take the file.
    #[error("payload {index}: {source}")]
    Store {
        /// Payload index.
        index: u32,
        /// The store's error.
        source: StoreError,
    },
}

/// Writes decoded bytes to the temporary file and hashes them; refuses
/// more than the announced size.
struct Sink {
    file: BufWriter<NamedTempFile>,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other(format!(
                "decompresses to more than the {} bytes announced",
                self.limit
            )));
        }
        self.hasher.update(buf);
        self.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Sink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>),
}

impl Decoder {
    fn sink(&self) -> &Sink {
        match self {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
        }
    }
}

/// A payload being written into the store.
pub struct PayloadWriter {
    index: u32,
    info: PayloadInfo,
    decoder: Decoder,
}

impl PayloadWriter {
    /// Starts payload `index` described by `info`, in a new temporary file of `store`.
    pub fn new(store: &Store, index: u32, info: &PayloadInfo) -> Result<Self, PayloadError> {
        let file = store
            .temp()
            .map_err(|source| PayloadError::Store { index, source })?;
        let sink = Sink {
            file: BufWriter::with_capacity(256 << 10, file),
            hasher: Sha256::new(),
            written: 0,
            limit: info.size,
        };
        let decoder = match info.compression {
            PayloadCompression::Gzip => {
                Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(sink)))
            }
            PayloadCompression::Zstd => Decoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(sink).map_err(|e| PayloadError::Corrupt {
                    index,
                    reason: e.to_string(),
                })?,
            )),
        };
        Ok(PayloadWriter {
            index,
            info: info.clone(),
            decoder,
        })
    }

    /// The payload's announced description.
    pub fn info(&self) -> &PayloadInfo {
        &self.info
    }

    fn corrupt(&self, e: std::io::Error) -> PayloadError {
        let written = self.decoder.sink().written;
        if written > self.info.size {
            return PayloadError::Size {
                index: self.index,
                expected: self.info.size,
                actual: written,
            };
        }
        PayloadError::Corrupt {
            index: self.index,
            reason: e.to_string(),
        }
    }

    /// Feeds compressed bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), PayloadError> {
        let r = match &mut self.decoder {
            Decoder::Gzip(d) => d.write_all(data),
            Decoder::Zstd(d) => d.write_all(data),
        };
        r.map_err(|e| self.corrupt(e))
    }

    /// Ends the payload: checks size and SHA-256, then moves the content
    /// into `store`. Returns its path there. On error the temporary file
    /// is removed: nothing unverified is ever visible.
    pub fn finish(mut self, store: &Store) -> Result<PathBuf, PayloadError> {
        let index = self.index;
        let r = match &mut self.decoder {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zstd(d) => d.flush(),
        };
        r.map_err(|e| self.corrupt(e))?;
        let sink = match self.decoder {
            Decoder::Gzip(d) => d.finish().map_err(|e| PayloadError::Corrupt {
                index,
                reason: e.to_string(),
            })?,
            Decoder::Zstd(d) => d.into_inner(),
        };
        if sink.written != self.info.size {
            return Err(PayloadError::Size {
                index,
                expected: self.info.size,
                actual: sink.written,
            });
        }
        let actual: [u8; 32] = sink.hasher.finalize().into();
        if actual != self.info.sha256 {
            return Err(PayloadError::Digest {
                index,
                expected: hex::encode(self.info.sha256),
                actual: hex::encode(actual),
            });
        }
        let file = sink.file.into_inner().map_err(|e| PayloadError::Store {
            index,
            source: StoreError::Io {
                path: store.root().join("tmp"),
                source: e.into_error(),
            },
        })?;
        store
            .insert_verified(file, &self.info.sha256)
            .map_err(|source| PayloadError::Store { index, source })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    fn tmp_count(store: &Store) -> usize {
        std::fs::read_dir(store.root().join("tmp")).unwrap().count()
    }

    #[test]
    fn good_payloads_land_in_the_store_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for (compression, bytes) in [
            (PayloadCompression::Gzip, gzip(&data)),
            (
                PayloadCompression::Zstd,
                zstd::encode_all(&data[..], 1).unwrap(),
            ),
        ] {
            let info = info(&data, compression, &bytes);
            let mut w = PayloadWriter::new(&store, 0, &info).unwrap();
            for chunk in bytes.chunks(1000) {
                w.feed(chunk).unwrap();
            }
            let path = w.finish(&store).unwrap();
            assert_eq!(std::fs::read(path).unwrap(), data);
        }
        assert_eq!(tmp_count(&store), 0);
    }

    #[test]
    fn corrupt_short_or_wrong_payloads_never_appear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"some content that matters\n".repeat(100);
        let good = gzip(&data);
        let info = info(&data, PayloadCompression::Gzip, &good);

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x5a;
        let truncated = good[..good.len() - 10].to_vec();
        let mut wrong_digest = info.clone();
        wrong_digest.sha256[0] ^= 1;
        let mut too_small = info.clone();
        too_small.size -= 1;
        for (bytes, info) in [
            (flipped, &info),
            (truncated, &info),
            (good.clone(), &wrong_digest),
            (good.clone(), &too_small),
        ] {
            let mut w = PayloadWriter::new(&store, 3, info).unwrap();
            let r = w.feed(&bytes).and_then(|()| w.finish(&store).map(|_| ()));
            let err = r.unwrap_err();
            assert!(err.to_string().starts_with("payload 3"), "{err}");
            assert!(!store.has(&info.sha256));
            assert!(!store.has(&Sha256::digest(&data).into()));
        }
        assert_eq!(tmp_count(&store), 0);
    }
}
