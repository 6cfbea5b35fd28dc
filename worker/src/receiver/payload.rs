//! One payload on its way into the store: compressed bytes are streamed
//! through a gzip or zstd decoder into a temporary file of the store
//! (written through io_uring where available, see [`ContentWriter`]) while
//! being hashed; [`PayloadWriter::finish`] checks size and SHA-256, waits
//! for every write, and only then renames the file into place.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use transport_quic::payload::{PayloadDecoder, PayloadError as DecodeError};
use transport_quic::PayloadInfo;

use crate::store::{ContentWriter, Store, StoreError};

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Decoding failed: corrupt, wrong size or wrong SHA-256.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The store could not take the file (e.g. the disk is full).
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

/// The first write error of the store's writer, kept aside: the decoder
/// would report it as a corrupt payload.
type ErrorSlot = Arc<Mutex<Option<io::Error>>>;

/// Passes writes to the store's writer, remembering the first error.
struct Tap {
    out: ContentWriter,
    error: ErrorSlot,
}

impl Tap {
    fn note(&self, e: io::Error) -> io::Error {
        let copy = match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        copy
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf).map_err(|e| self.note(e))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf).map_err(|e| self.note(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().map_err(|e| self.note(e))
    }
}

/// A payload being written into the store: decoded (and hashed) by the
/// protocol's [`PayloadDecoder`] into a temporary file of the store.
pub struct PayloadWriter {
    decoder: PayloadDecoder<Tap>,
    error: ErrorSlot,
    path: PathBuf,
    uring: bool,
}

impl PayloadWriter {
    /// Starts payload `index` described by `info`, in a new temporary file of `store`.
    pub fn new(store: &Store, index: u32, info: &PayloadInfo) -> Result<Self, PayloadError> {
        let out = store
            .writer(info.size)
            .map_err(|source| PayloadError::Store { index, source })?;
        let path = out.path().to_path_buf();
        let uring = out.uses_uring();
        let error = ErrorSlot::default();
        let tap = Tap {
            out,
            error: error.clone(),
        };
        let decoder = PayloadDecoder::new(index, info, tap)?;
        Ok(PayloadWriter {
            decoder,
            error,
            path,
            uring,
        })
    }

    /// The payload's announced description.
    pub fn info(&self) -> &PayloadInfo {
        self.decoder.info()
    }

    /// Whether the content is written through io_uring.
    pub fn uses_uring(&self) -> bool {
        self.uring
    }

    /// Feeds compressed bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), PayloadError> {
        let index = self.decoder.index();
        self.decoder
            .feed(data)
            .map_err(|e| store_error(&self.error, &self.path, index).unwrap_or(e.into()))
    }

    /// Ends the payload: checks size and SHA-256, waits for every write,
    /// then moves the content into `store`. Returns its path there. On
    /// error the temporary file is removed: nothing unverified (nor half
    /// written) is ever visible.
    pub fn finish(self, store: &Store) -> Result<PathBuf, PayloadError> {
        let PayloadWriter {
            decoder,
            error,
            path,
            ..
        } = self;
        let index = decoder.index();
        let sha256 = decoder.info().sha256;
        let tap = decoder
            .finish()
            .map_err(|e| store_error(&error, &path, index).unwrap_or(e.into()))?;
        store
            .commit(tap.out, &sha256)
            .map_err(|source| PayloadError::Store { index, source })
    }
}

/// The store's error, if writing is what failed.
fn store_error(slot: &ErrorSlot, path: &std::path::Path, index: u32) -> Option<PayloadError> {
    let source = slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    Some(PayloadError::Store {
        index,
        source: StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use transport_quic::PayloadCompression;

    use crate::store::test_support::Tmpfs;
    use crate::store::WriteMode;

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
        for mode in [WriteMode::Auto, WriteMode::Plain] {
            good_payloads_land(mode);
        }
    }

    fn good_payloads_land(mode: WriteMode) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_write_mode(mode);
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
            let uring = mode == WriteMode::Auto && crate::store::uring_writer::available();
            assert_eq!(w.uses_uring(), uring);
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

    #[test]
    #[ignore = "needs root: mounts a small tmpfs"]
    fn a_full_disk_is_a_store_error_and_nothing_appears() {
        let Some(fs) = Tmpfs::mount("64k") else {
            return;
        };
        for mode in [WriteMode::Auto, WriteMode::Plain] {
            let store = Store::open(fs.path().join("store"))
                .unwrap()
                .with_write_mode(mode);
            let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
            let bytes = zstd::encode_all(&data[..], 1).unwrap();
            let info = info(&data, PayloadCompression::Zstd, &bytes);
            let mut w = PayloadWriter::new(&store, 7, &info).unwrap();
            let r = bytes
                .chunks(4096)
                .try_for_each(|c| w.feed(c))
                .and_then(|()| w.finish(&store).map(|_| ()));
            let err = r.unwrap_err();
            let PayloadError::Store {
                index: 7,
                source: StoreError::Io { source, .. },
            } = &err
            else {
                panic!("{mode:?}: not a store error: {err}");
            };
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{mode:?}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with("payload 7: content store "), "{msg}");
            assert!(msg.contains("No space left on device"), "{msg}");
            assert!(!store.has(&info.sha256));
            assert!(store.list().unwrap().is_empty());
            assert_eq!(tmp_count(&store), 0);
            std::fs::remove_dir_all(store.root()).unwrap();
        }
    }
}
