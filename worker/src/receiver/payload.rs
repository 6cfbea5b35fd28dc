//! One payload on its way into the store: compressed bytes are streamed
//! through a gzip or zstd decoder into a temporary file of the store while
//! being hashed; [`PayloadWriter::finish`] checks size and SHA-256 and only
//! then renames the file into place.

use std::io::BufWriter;
use std::path::PathBuf;

use tempfile::NamedTempFile;
use transport_quic::payload::{PayloadDecoder, PayloadError as DecodeError};
use transport_quic::PayloadInfo;

use crate::store::{Store, StoreError};

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Decoding failed: corrupt, wrong size or wrong SHA-256.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The store could not take the file.
    #[error("payload {index}: {source}")]
    Store {
        /// Payload index.
        index: u32,
        /// The store's error.
        source: StoreError,
    },
}

impl PayloadError {
    /// The payload concerned.
    pub fn index(&self) -> u32 {
        match self {
            PayloadError::Decode(e) => e.index(),
            PayloadError::Store { index, .. } => *index,
        }
    }
}

/// A payload being written into the store: decoded (and hashed) by the
/// protocol's [`PayloadDecoder`] into a temporary file of the store.
pub struct PayloadWriter {
    decoder: PayloadDecoder<BufWriter<NamedTempFile>>,
}

impl PayloadWriter {
    /// Starts payload `index` described by `info`, in a new temporary file of `store`.
    pub fn new(store: &Store, index: u32, info: &PayloadInfo) -> Result<Self, PayloadError> {
        let file = store
            .temp()
            .map_err(|source| PayloadError::Store { index, source })?;
        // Small contents (most of an image) get a small buffer.
        let capacity = usize::try_from(info.size.clamp(8 << 10, 256 << 10)).unwrap_or(256 << 10);
        let decoder = PayloadDecoder::new(index, info, BufWriter::with_capacity(capacity, file))?;
        Ok(PayloadWriter { decoder })
    }

    /// The payload's announced description.
    pub fn info(&self) -> &PayloadInfo {
        self.decoder.info()
    }

    /// Feeds compressed bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), PayloadError> {
        Ok(self.decoder.feed(data)?)
    }

    /// Ends the payload: checks size and SHA-256, then moves the content
    /// into `store`. Returns its path there. On error the temporary file
    /// is removed: nothing unverified is ever visible.
    pub fn finish(self, store: &Store) -> Result<PathBuf, PayloadError> {
        let index = self.decoder.index();
        let sha256 = self.decoder.info().sha256;
        let file = self.decoder.finish()?;
        let file = file.into_inner().map_err(|e| PayloadError::Store {
            index,
            source: StoreError::Io {
                path: store.root().join("tmp"),
                source: e.into_error(),
            },
        })?;
        store
            .insert_verified(file, &sha256)
            .map_err(|source| PayloadError::Store { index, source })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
