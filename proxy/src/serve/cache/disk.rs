//! The disk tier of the payload cache: one file per cached range in one
//! directory, named `<blob hex>-<offset>-<len>`, holding a magic, the
//! SHA-256 of the bytes, then the bytes. Files are written under a temporary
//! name and renamed, so a crash leaves either a whole file or a temporary one
//! (removed at the next start). A file whose size, magic or digest is wrong is
//! removed and treated as a miss: it is never served. Blocking: call from
//! `spawn_blocking`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::lru::Lru;
use super::PieceKey;

/// First bytes of every cache file (names the format version).
const MAGIC: &[u8; 8] = b"SLPC\x00\x01\r\n";
/// Bytes before the data: magic and SHA-256.
const PREFIX: u64 = 8 + 32;
/// Prefix of temporary files (never read; removed at start).
const TEMP_PREFIX: &str = ".tmp-";

/// Errors opening the disk tier.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// The directory cannot be created or listed.
    #[error("payload cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The disk tier: an LRU index of the files (by size) over a directory.
#[derive(Debug)]
pub(crate) struct DiskTier {
    dir: PathBuf,
    index: Mutex<Lru<PieceKey, ()>>,
}

impl PieceKey {
    /// The file name of this range, when the blob digest is a well-formed
    /// SHA-256 digest (other keys are not stored on disk).
    pub(super) fn file_name(&self) -> Option<String> {
        let hex = self.blob.strip_prefix("sha256:")?;
        crate::registry::check_sha256_digest(&self.blob)
            .then(|| format!("{hex}-{}-{}", self.offset, self.len))
    }

    pub(super) fn from_file_name(name: &str) -> Option<PieceKey> {
        let mut parts = name.split('-');
        let (hex, offset, len) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let key = PieceKey {
            blob: format!("sha256:{hex}"),
            offset: offset.parse().ok()?,
            len: len.parse().ok()?,
        };
        (key.file_name().as_deref() == Some(name)).then_some(key)
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove a payload cache file");
        }
    }
}

impl DiskTier {
    /// Opens (creating) `dir` holding at most `capacity` bytes of data, and
    /// rebuilds the index from its files, oldest modified first: temporary
    /// files, unknown names and files of the wrong size are removed. Returns
    /// the tier and the number of files dropped.
    pub(crate) fn open(dir: &Path, capacity: u64) -> Result<(DiskTier, u64), DiskCacheError> {
        let dir_error = |source| DiskCacheError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_error)?;
        let mut found = Vec::new();
        let mut dropped = 0u64;
        for entry in std::fs::read_dir(dir).map_err(dir_error)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().ok();
            let key = PieceKey::from_file_name(&name);
            match (key, meta) {
                (Some(key), Some(meta))
                    if meta.is_file() && meta.len() == PREFIX.saturating_add(key.len) =>
                {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, key));
                }
                _ => {
                    debug!(file = %name, "dropping a stray payload cache file");
                    remove(&path);
                    dropped += 1;
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            index: Mutex::new(Lru::new(capacity)),
        };
        for (_, key) in found {
            tier.admit(key);
        }
        Ok((tier, dropped))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Adds `key` (whose file exists) to the index, removing the files it evicts.
    fn admit(&self, key: PieceKey) {
        let size = PREFIX + key.len;
        let evicted = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (), size);
        for (old, ()) in evicted {
            if let Some(name) = old.file_name() {
                remove(&self.path(&name));
            }
        }
    }

    /// Forgets `key` and removes its file.
    fn drop_entry(&self, key: &PieceKey, name: &str, why: &str) {
        warn!(file = name, why, "dropping a bad payload cache file");
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        remove(&self.path(name));
    }

    /// The bytes of `key`, when its file is indexed and intact. `Err(())`:
    /// the file was bad and has been dropped.
    pub(crate) fn get(&self, key: &PieceKey) -> Result<Option<Vec<u8>>, ()> {
        let Some(name) = key.file_name() else {
            return Ok(None);
        };
        let known = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some();
        if !known {
            return Ok(None);
        }
        let raw = match std::fs::read(self.path(&name)) {
            Ok(raw) => raw,
            Err(e) => {
                self.drop_entry(key, &name, &e.to_string());
                return Err(());
            }
        };
        let prefix = PREFIX as usize;
        if raw.len() as u64 != PREFIX.saturating_add(key.len) || raw.get(..8) != Some(MAGIC) {
            self.drop_entry(key, &name, "wrong size or magic");
            return Err(());
        }
        let data = &raw[prefix..];
        if Sha256::digest(data).as_slice() != &raw[8..prefix] {
            self.drop_entry(key, &name, "digest mismatch");
            return Err(());
        }
        let mut raw = raw;
        raw.drain(..prefix);
        Ok(Some(raw))
    }

    /// Stores `data` as `key` (written to a temporary file, synced, renamed).
    pub(crate) fn put(&self, key: &PieceKey, data: &[u8]) {
        let Some(name) = key.file_name() else { return };
        if data.len() as u64 != key.len {
            return;
        }
        let temp = self.path(&format!("{TEMP_PREFIX}{name}"));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(data))?;
            f.write_all(data)?;
            f.sync_data()?;
            std::fs::rename(&temp, self.path(&name))
        })();
        match written {
            Ok(()) => self.admit(key.clone()),
            Err(e) => {
                warn!(file = %name, error = %e, "cannot write a payload cache file");
                remove(&temp);
            }
        }
    }

    /// Bytes of data held and files indexed.
    pub(crate) fn usage(&self) -> (u64, usize) {
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        (index.size(), index.len())
    }
}
