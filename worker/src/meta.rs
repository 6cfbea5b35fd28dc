//! The metadata of pulled images, in RocksDB: for each image its reference,
//! manifest digest, bundle header (manifest, config, table of contents) and
//! whether every content arrived. With the content store, it is what a
//! restarted starlightd needs to serve an image again without the network.
//!
//! Keys: `image/<manifest digest>` → the record (postcard), `ref/<reference>`
//! → the manifest digest.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use transport_quic::{Header, Source};

use crate::store::Store;

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// RocksDB failed.
    #[error("image database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored record could not be decoded (or encoded).
    #[error("image database: bad record {key}: {source}")]
    Codec {
        /// The key concerned.
        key: String,
        /// The codec's complaint.
        source: postcard::Error,
    },
}

/// One pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference it was pulled by.
    pub reference: String,
    /// Its bundle header (manifest digest, manifest, config, TOC).
    pub header: Header,
    /// Whether every content of the image was verified and stored.
    pub complete: bool,
}

impl ImageRecord {
    /// The image's manifest digest.
    pub fn digest(&self) -> &str {
        &self.header.manifest_digest
    }

    /// The SHA-256 of every content the image's files need.
    pub fn contents(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.header
            .toc
            .iter()
            .filter(|e| e.source != Source::NoContent)
            .filter_map(|e| e.sha256)
    }

    /// Whether every content the image needs is in `store`.
    pub fn contents_present(&self, store: &Store) -> bool {
        self.contents().all(|sha| store.has(&sha))
    }
}

/// The image database.
#[derive(Clone)]
pub struct MetaDb {
    db: Arc<DB>,
}

impl std::fmt::Debug for MetaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDb").finish_non_exhaustive()
    }
}

fn image_key(digest: &str) -> String {
    format!("image/{digest}")
}

fn ref_key(reference: &str) -> String {
    format!("ref/{reference}")
}

impl MetaDb {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<MetaDb, MetaError> {
        Ok(MetaDb {
            db: Arc::new(DB::open(&crate::durability::options(), path)?),
        })
    }

    /// Records (or replaces) `record`, and points its reference at it;
    /// durable when this returns (synced write).
    pub fn put(&self, record: &ImageRecord) -> Result<(), MetaError> {
        let key = image_key(record.digest());
        let bytes = postcard::to_stdvec(record).map_err(|source| MetaError::Codec {
            key: key.clone(),
            source,
        })?;
        let mut batch = WriteBatch::default();
        batch.put(key.as_bytes(), bytes);
        batch.put(ref_key(&record.reference).as_bytes(), record.digest());
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(())
    }

    /// The image with manifest `digest`.
    pub fn get(&self, digest: &str) -> Result<Option<ImageRecord>, MetaError> {
        let key = image_key(digest);
        let Some(bytes) = self.db.get(key.as_bytes())? else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|source| MetaError::Codec { key, source })
    }

    /// The image last pulled by `reference`.
    pub fn by_reference(&self, reference: &str) -> Result<Option<ImageRecord>, MetaError> {
        match self.db.get(ref_key(reference).as_bytes())? {
            Some(digest) => self.get(&String::from_utf8_lossy(&digest)),
            None => Ok(None),
        }
    }

    /// Every image, by manifest digest.
    pub fn images(&self) -> Result<Vec<ImageRecord>, MetaError> {
        let mut out = Vec::new();
        let prefix = b"image/";
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, bytes) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let record = postcard::from_bytes(&bytes).map_err(|source| MetaError::Codec {
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Forgets the image with manifest `digest` (and its reference, if it
    /// still points there). Returns whether it was known.
    pub fn remove(&self, digest: &str) -> Result<bool, MetaError> {
        let Some(record) = self.get(digest)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        batch.delete(image_key(digest).as_bytes());
        let rkey = ref_key(&record.reference);
        if self.db.get(rkey.as_bytes())?.as_deref() == Some(digest.as_bytes()) {
            batch.delete(rkey.as_bytes());
        }
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha2::{Digest, Sha256};
    use transport_quic::{EntryKind, TocEntry};

    fn record(reference: &str, digest: &str, data: &[u8]) -> ImageRecord {
        ImageRecord {
            reference: reference.into(),
            header: Header {
                manifest_digest: digest.into(),
                manifest: b"{}".to_vec(),
                toc: vec![TocEntry {
                    path: "f".into(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_nsec: 0,
                    size: data.len() as u64,
                    link: None,
                    devmajor: 0,
                    devminor: 0,
                    xattrs: vec![],
                    sha256: Some(Sha256::digest(data).into()),
                    layer: 0,
                    source: Source::Payload(0),
                }],
                ..Header::default()
            },
            complete: true,
        }
    }

    #[test]
    fn records_survive_reopening_and_removal_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let a = record("app:v1", "sha256:aa", b"one");
        let b = record("app:v2", "sha256:bb", b"two");
        {
            let db = MetaDb::open(&dir.path().join("meta")).unwrap();
            db.put(&a).unwrap();
            db.put(&b).unwrap();
        }
        let db = MetaDb::open(&dir.path().join("meta")).unwrap();
        assert_eq!(db.images().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(db.by_reference("app:v2").unwrap(), Some(b.clone()));
        assert_eq!(db.get("sha256:aa").unwrap(), Some(a.clone()));
        // The tag moves: the reference follows, the old image stays.
        let b2 = record("app:v2", "sha256:cc", b"three");
        db.put(&b2).unwrap();
        assert_eq!(db.by_reference("app:v2").unwrap(), Some(b2.clone()));
        assert!(db.remove("sha256:bb").unwrap());
        assert_eq!(db.by_reference("app:v2").unwrap(), Some(b2));
        assert!(!db.remove("sha256:bb").unwrap());
        assert!(db.remove("sha256:cc").unwrap());
        assert_eq!(db.by_reference("app:v2").unwrap(), None);
        assert_eq!(db.images().unwrap(), vec![a]);
    }

    #[test]
    fn contents_present_checks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = record("x:1", "sha256:dd", b"content");
        assert!(!r.contents_present(&store));
        let sha: [u8; 32] = Sha256::digest(b"content").into();
        store.insert_bytes(b"content", &sha).unwrap();
        assert!(r.contents_present(&store));
        assert_eq!(r.contents().count(), 1);
    }
}
