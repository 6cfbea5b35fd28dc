//! The content store: a directory of file contents keyed by their SHA-256
//! (`<root>/sha256/ab/abcdef…`), shared by all images.
//!
//! Contents are written to a temporary file under `<root>/tmp` (the same
//! filesystem), made read-only (0444) and renamed into place only once
//! verified, so while the machine runs a path in the store always holds
//! exactly the bytes its name promises. Inserting a content that is already
//! there is a no-op.
//!
//! Durability is per batch, not per content (an fsync per file made a
//! bundle of thousands of small files crawl): [`Store::sync`] flushes the
//! whole store's filesystem once, and the image manager records an image as
//! complete only after it. Contents of images not recorded complete may be
//! torn by a crash; [`Store::verify`] finds them.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("content store {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Bytes given to [`Store::insert_bytes`] do not hash to the expected digest.
    #[error("content does not match its SHA-256: expected {expected}, got {actual}")]
    Digest {
        /// The expected digest (hex).
        expected: String,
        /// The digest of the bytes (hex).
        actual: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`; leftover temporary
    /// files of an earlier run are removed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let store = Store { root };
        let tmp = store.tmp_dir();
        fs::create_dir_all(store.root.join("sha256")).map_err(io_err(&store.root))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the content with SHA-256 `sha` lives (whether or not present).
    pub fn path(&self, sha: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(sha);
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the content with SHA-256 `sha` is present.
    pub fn has(&self, sha: &[u8; 32]) -> bool {
        self.path(sha).is_file()
    }

    /// Opens the content with SHA-256 `sha` for reading.
    pub fn open_content(&self, sha: &[u8; 32]) -> io::Result<File> {
        File::open(self.path(sha))
    }

    /// A new temporary file in the store's filesystem, to be filled and then
    /// handed to [`Store::insert_verified`].
    pub fn temp(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.tmp_dir();
        tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Moves `file`, whose content the caller has verified to hash to `sha`,
    /// into the store: mode 0444, atomic rename (durable after the next
    /// [`Store::sync`]). If the content is already present the temporary
    /// file is dropped instead. Returns the content's path.
    pub fn insert_verified(
        &self,
        file: tempfile::NamedTempFile,
        sha: &[u8; 32],
    ) -> Result<PathBuf, StoreError> {
        let dest = self.path(sha);
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp_path = file.path().to_path_buf();
        fs::set_permissions(&tmp_path, Permissions::from_mode(0o444)).map_err(io_err(&tmp_path))?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        file.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Makes every content inserted so far durable: one `syncfs` of the
    /// filesystem holding the store.
    pub fn sync(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.root).map_err(io_err(&self.root))?;
        // SAFETY: syncfs on a file descriptor we own, for the call's duration.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(io_err(&self.root)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Re-hashes the content `sha` if present; a content whose bytes do not
    /// match its name (torn by a crash) is deleted. Returns whether a
    /// matching content is present.
    pub fn verify(&self, sha: &[u8; 32]) -> Result<bool, StoreError> {
        let path = self.path(sha);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_err(&path))?;
        let actual: [u8; 32] = hasher.finalize().into();
        if &actual == sha {
            return Ok(true);
        }
        self.remove(sha)?;
        Ok(false)
    }

    /// The SHA-256 of every content in the store.
    pub fn list(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let top = self.root.join("sha256");
        let mut out = Vec::new();
        for dir in fs::read_dir(&top).map_err(io_err(&top))? {
            let dir = dir.map_err(io_err(&top))?.path();
            if !dir.is_dir() {
                continue;
            }
            for f in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let name = f.map_err(io_err(&dir))?.file_name();
                let mut sha = [0u8; 32];
                if hex::decode_to_slice(name.as_encoded_bytes(), &mut sha).is_ok() {
                    out.push(sha);
                }
            }
        }
        Ok(out)
    }

    /// Removes the content with SHA-256 `sha`; returns its size if it was there.
    pub fn remove(&self, sha: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let path = self.path(sha);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Inserts `data`, checking it against `sha` first (for contents that
    /// arrive whole, and for tests).
    pub fn insert_bytes(&self, data: &[u8], sha: &[u8; 32]) -> Result<PathBuf, StoreError> {
        let actual: [u8; 32] = Sha256::digest(data).into();
        if &actual != sha {
            return Err(StoreError::Digest {
                expected: hex::encode(sha),
                actual: hex::encode(actual),
            });
        }
        if self.has(sha) {
            return Ok(self.path(sha));
        }
        let mut file = self.temp()?;
        let tmp_path = file.path().to_path_buf();
        file.write_all(data).map_err(io_err(&tmp_path))?;
        self.insert_verified(file, sha)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn insert_is_read_only_keyed_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let data = b"hello store".to_vec();
        let key = sha(&data);
        assert!(!store.has(&key));
        let path = store.insert_bytes(&data, &key).unwrap();
        let hex = hex::encode(key);
        assert_eq!(
            path,
            dir.path().join("store/sha256").join(&hex[..2]).join(&hex)
        );
        assert!(store.has(&key));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        let mut back = Vec::new();
        store
            .open_content(&key)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // A second insert leaves the same inode in place and no temp behind.
        let ino = fs::metadata(&path).unwrap().ino();
        store.insert_bytes(&data, &key).unwrap();
        let mut tmp = store.temp().unwrap();
        tmp.write_all(&data).unwrap();
        store.insert_verified(tmp, &key).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(
            fs::read_dir(dir.path().join("store/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn verify_deletes_torn_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (good, torn) = (sha(b"good"), sha(b"torn"));
        store.insert_bytes(b"good", &good).unwrap();
        store.insert_bytes(b"torn", &torn).unwrap();
        store.sync().unwrap();
        // A crash left the second one short.
        let path = store.path(&torn);
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"to").unwrap();
        assert!(store.verify(&good).unwrap());
        assert!(!store.verify(&torn).unwrap());
        assert!(!store.has(&torn));
        assert!(!store.verify(&sha(b"absent")).unwrap());
    }

    #[test]
    fn list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (sha(b"a"), sha(b"bb"));
        store.insert_bytes(b"a", &a).unwrap();
        store.insert_bytes(b"bb", &b).unwrap();
        let mut listed = store.list().unwrap();
        listed.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(store.remove(&b).unwrap(), Some(2));
        assert_eq!(store.remove(&b).unwrap(), None);
        assert_eq!(store.list().unwrap(), vec![a]);
    }

    #[test]
    fn wrong_bytes_are_refused_and_never_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha(b"expected");
        let err = store.insert_bytes(b"other", &key).unwrap_err();
        assert!(matches!(err, StoreError::Digest { .. }), "{err}");
        assert!(!store.has(&key));
    }

    #[test]
    fn reopening_clears_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, leftover) = store.temp().unwrap().keep().unwrap();
        assert!(leftover.exists());
        let key = sha(b"kept");
        store.insert_bytes(b"kept", &key).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        assert!(store.has(&key));
    }
}
