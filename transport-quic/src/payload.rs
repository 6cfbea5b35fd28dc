//! Decoding one payload of a bundle: its compressed bytes (gzip member or
//! zstd frame, as [`PayloadInfo::compression`] says) are decompressed into a
//! writer while being hashed; [`PayloadDecoder::finish`] checks the size and
//! SHA-256 announced in the header. The decoder never writes more than the
//! announced size.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::{PayloadCompression, PayloadInfo};

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The bytes could not be decompressed (corrupt or truncated member), or
    /// writing the decompressed bytes failed.
    #[error("payload {index} is corrupt: {reason}")]
    Corrupt {
        /// Payload index.
        index: u32,
        /// What went wrong.
        reason: String,
    },
    /// The decompressed size differs from the header's.
    #[error("payload {index}: decompressed to {actual} bytes, the header says {expected}")]
    Size {
        /// Payload index.
        index: u32,
        /// Size from the header.
        expected: u64,
        /// Size decoded (so far, when it overflowed).
        actual: u64,
    },
    /// The content's SHA-256 differs from the header's.
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

impl PayloadError {
    /// The payload concerned.
    pub fn index(&self) -> u32 {
        match self {
            PayloadError::Corrupt { index, .. }
            | PayloadError::Size { index, .. }
            | PayloadError::Digest { index, .. } => *index,
        }
    }
}

/// Hashes what the decompressor writes and passes it on; refuses more than
/// the announced size.
struct HashSink<W> {
    out: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for HashSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other(format!(
                "decompresses to more than the {} bytes announced",
                self.limit
            )));
        }
        self.hasher.update(buf);
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

enum Decoder<W: Write> {
    Gzip(Box<flate2::write::GzDecoder<HashSink<W>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashSink<W>>>),
}

/// One payload being decoded into `W`.
pub struct PayloadDecoder<W: Write> {
    index: u32,
    info: PayloadInfo,
    decoder: Decoder<W>,
}

impl<W: Write> PayloadDecoder<W> {
    /// Starts decoding payload `index`, described by `info`, into `out`.
    pub fn new(index: u32, info: &PayloadInfo, out: W) -> Result<Self, PayloadError> {
        let sink = HashSink {
            out,
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
        Ok(PayloadDecoder {
            index,
            info: info.clone(),
            decoder,
        })
    }

    /// The payload's description from the header.
    pub fn info(&self) -> &PayloadInfo {
        &self.info
    }

    /// The payload's index in the bundle.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn sink(&self) -> &HashSink<W> {
        match &self.decoder {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
        }
    }

    fn corrupt(&self, e: std::io::Error) -> PayloadError {
        let written = self.sink().written;
        if written > self.info.size {
            return PayloadError::Size {
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
        PayloadError::Corrupt {
            index: self.index,
            reason,
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

    /// Ends the payload: checks size and SHA-256; returns the writer.
    pub fn finish(mut self) -> Result<W, PayloadError> {
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
        Ok(sink.out)
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

    fn check(info: &PayloadInfo, bytes: &[u8]) -> Result<Vec<u8>, PayloadError> {
        let mut v = PayloadDecoder::new(7, info, Vec::new())?;
        for piece in bytes.chunks(1000) {
            v.feed(piece)?;
        }
        v.finish()
    }

    #[test]
    fn good_payloads_decode_in_pieces() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let gz = gzip(&data);
        assert_eq!(
            check(&info(&data, PayloadCompression::Gzip, &gz), &gz).unwrap(),
            data
        );
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            check(&info(&data, PayloadCompression::Zstd, &zs), &zs).unwrap(),
            data
        );
    }

    #[test]
    fn wrong_digest_size_truncation_and_corruption_are_caught() {
        let data = b"hello, world, hello, world".repeat(100);
        let gz = gzip(&data);
        let mut i = info(&data, PayloadCompression::Gzip, &gz);
        i.sha256[0] ^= 1;
        assert!(matches!(
            check(&i, &gz),
            Err(PayloadError::Digest { index: 7, .. })
        ));
        let mut i = info(&data, PayloadCompression::Gzip, &gz);
        i.size -= 1;
        assert!(matches!(check(&i, &gz), Err(PayloadError::Size { .. })));
        let i = info(&data, PayloadCompression::Gzip, &gz);
        assert!(check(&i, &gz[..gz.len() - 10]).is_err());
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let i = info(&data, PayloadCompression::Zstd, &zs);
        assert!(check(&i, &zs[..zs.len() / 2]).is_err());
        let mut flipped = gz.clone();
        flipped[20] ^= 0xff;
        assert!(check(&info(&data, PayloadCompression::Gzip, &gz), &flipped).is_err());
    }
}
