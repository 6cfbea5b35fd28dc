//! The metadata of pulled images, in RocksDB: for each image its reference,
//! manifest digest, bundle header (manifest, config, table of contents) and
//! whether every content arrived. With the content store, it is what a
//! restarted starlightd needs to serve an image again without the network.
//!
//! Keys: `image/<manifest digest>` → the record (postcard), `ref/<reference>`
//! → the manifest digest, `used/<manifest digest>` → when the image was last
//! used (Unix seconds, 8 bytes big-endian), for the garbage collection.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use tracing::warn;
use transport_quic::{Digest, Header, ImageReference, Source, TocEntry};

use crate::header_check::{CheckedHeader, HeaderError};
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
    /// A stored record decodes but fails the checks every header passes.
    #[error("image database: record {key} is refused: {reason}")]
    Refused {
        /// The key concerned.
        key: String,
        /// Why.
        reason: String,
    },
    /// An image is already recorded under this digest with another header:
    /// the recorded one stays.
    #[error("image {digest} is already held with a different header; the recorded image is kept and this one refused")]
    Conflict {
        /// The manifest digest.
        digest: Digest,
    },
}

/// One pulled image. Its reference and header are checked whenever a record
/// is built or read back ([`CheckedHeader`], [`ImageReference`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RecordWire", into = "RecordWire")]
pub struct ImageRecord {
    /// The reference it was pulled by.
    pub reference: ImageReference,
    /// Its bundle header (manifest digest, manifest, config, TOC).
    pub header: CheckedHeader,
    /// Whether every content of the image was verified and stored.
    pub complete: bool,
}

/// The stored form of an [`ImageRecord`] (unchanged from the untyped one).
#[derive(Serialize, Deserialize)]
struct RecordWire {
    reference: String,
    header: Header,
    complete: bool,
}

/// Why a stored record failed its checks.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error(transparent)]
    Reference(#[from] transport_quic::DigestError),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

impl TryFrom<RecordWire> for ImageRecord {
    type Error = RecordError;

    fn try_from(w: RecordWire) -> Result<ImageRecord, RecordError> {
        Ok(ImageRecord {
            reference: ImageReference::parse(&w.reference)?,
            header: CheckedHeader::new(w.header)?,
            complete: w.complete,
        })
    }
}

impl From<ImageRecord> for RecordWire {
    fn from(r: ImageRecord) -> RecordWire {
        RecordWire {
            reference: r.reference.as_str().to_string(),
            header: r.header.into_header(),
            complete: r.complete,
        }
    }
}

impl ImageRecord {
    /// The image's manifest digest.
    pub fn digest(&self) -> Digest {
        self.header.digest()
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
    /// Serializes [`MetaDb::put_new_or_same`]'s read-then-write.
    insert: Arc<Mutex<()>>,
}

impl std::fmt::Debug for MetaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDb").finish_non_exhaustive()
    }
}

/// Keys are built from typed values only: a digest's canonical form, a
/// checked reference.
fn image_key(digest: &Digest) -> String {
    format!("image/{digest}")
}

fn ref_key(reference: &ImageReference) -> String {
    format!("ref/{reference}")
}

fn used_key(digest: &Digest) -> String {
    format!("used/{digest}")
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<ImageRecord, MetaError> {
    let key = String::from_utf8_lossy(key).into_owned();
    let wire: RecordWire = postcard::from_bytes(bytes).map_err(|source| MetaError::Codec {
        key: key.clone(),
        source,
    })?;
    let record = ImageRecord::try_from(wire).map_err(|e| MetaError::Refused {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    if key != image_key(&record.digest()) {
        return Err(MetaError::Refused {
            key,
            reason: "its header names another manifest digest".into(),
        });
    }
    Ok(record)
}

/// Whether two headers describe the same image: the same manifest, config
/// and tree (every entry's metadata and content hash), whatever the bundle
/// that delivered it (entries' sources and supplying layers, payloads, the
/// held images' layers).
fn same_image(a: &Header, b: &Header) -> bool {
    // An entry without what only the delivery decides.
    let view = |e: &TocEntry| TocEntry {
        layer: 0,
        source: Source::NoContent,
        ..e.clone()
    };
    a.manifest_digest == b.manifest_digest
        && a.manifest == b.manifest
        && a.config == b.config
        && a.layer_tocs == b.layer_tocs
        && a.toc.len() == b.toc.len()
        && a.toc.iter().zip(&b.toc).all(|(x, y)| view(x) == view(y))
}

impl MetaDb {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<MetaDb, MetaError> {
        Ok(MetaDb {
            db: Arc::new(DB::open(&crate::durability::options(), path)?),
            insert: Arc::new(Mutex::new(())),
        })
    }

    /// Records (or replaces) `record`, and points its reference at it;
    /// durable when this returns (synced write).
    pub fn put(&self, record: &ImageRecord) -> Result<(), MetaError> {
        let key = image_key(&record.digest());
        let bytes = postcard::to_stdvec(record).map_err(|source| MetaError::Codec {
            key: key.clone(),
            source,
        })?;
        let mut batch = WriteBatch::default();
        batch.put(key.as_bytes(), bytes);
        batch.put(
            ref_key(&record.reference).as_bytes(),
            record.digest().to_string(),
        );
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(())
    }

    /// Records `record` unless an image with its digest is recorded with a
    /// different image view ([`MetaError::Conflict`]: the recorded one
    /// stays). When the views agree the recorded header is kept and only
    /// the reference and completeness are updated: a later bundle of the
    /// same image (another held set, a resume) delivers the same tree
    /// through other sources, and never replaces the header.
    pub fn put_new_or_same(&self, record: &ImageRecord) -> Result<(), MetaError> {
        let _one = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = self.get(&record.digest())? {
            if !same_image(&old.header, &record.header) {
                return Err(MetaError::Conflict {
                    digest: record.digest(),
                });
            }
            return self.put(&ImageRecord {
                reference: record.reference.clone(),
                header: old.header,
                complete: record.complete,
            });
        }
        self.put(record)
    }

    /// The image with manifest `digest`.
    pub fn get(&self, digest: &Digest) -> Result<Option<ImageRecord>, MetaError> {
        let key = image_key(digest);
        let Some(bytes) = self.db.get(key.as_bytes())? else {
            return Ok(None);
        };
        decode(key.as_bytes(), &bytes).map(Some)
    }

    /// The image last pulled by `reference`.
    pub fn by_reference(
        &self,
        reference: &ImageReference,
    ) -> Result<Option<ImageRecord>, MetaError> {
        let key = ref_key(reference);
        let Some(value) = self.db.get(key.as_bytes())? else {
            return Ok(None);
        };
        let digest = std::str::from_utf8(&value)
            .ok()
            .and_then(|s| Digest::parse(s).ok())
            .ok_or_else(|| MetaError::Refused {
                key,
                reason: "it does not hold a sha256 digest".into(),
            })?;
        self.get(&digest)
    }

    /// Every image, by manifest digest. A record that fails its checks (one
    /// written by an older starlightd from a hostile header) is logged and
    /// skipped: it is never mounted again.
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
            match decode(&key, &bytes) {
                Ok(record) => out.push(record),
                Err(e) => warn!("skipping a record of the image database: {e}"),
            }
        }
        Ok(out)
    }

    /// Notes that the image with manifest `digest` was used at `unix_secs`.
    /// Not synced: a crash may lose the latest use, which only makes the
    /// image look older to the garbage collection.
    pub fn touch(&self, digest: &Digest, unix_secs: u64) -> Result<(), MetaError> {
        self.db
            .put(used_key(digest).as_bytes(), unix_secs.to_be_bytes())?;
        Ok(())
    }

    /// When the image with manifest `digest` was last used (Unix seconds),
    /// if that was noted.
    pub fn last_used(&self, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let value = self.db.get(used_key(digest).as_bytes())?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Forgets the image with manifest `digest` (and its reference, if it
    /// still points there). Returns whether it was known.
    pub fn remove(&self, digest: &Digest) -> Result<bool, MetaError> {
        let Some(record) = self.get(digest)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        batch.delete(image_key(digest).as_bytes());
        batch.delete(used_key(digest).as_bytes());
        let rkey = ref_key(&record.reference);
        let value = digest.to_string();
        if self.db.get(rkey.as_bytes())?.as_deref() == Some(value.as_bytes()) {
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
    use sha2::{Digest as _, Sha256};
    use transport_quic::{EntryKind, TocEntry};

    fn record(reference: &str, manifest: &str, data: &[u8]) -> ImageRecord {
        let header = Header {
            manifest_digest: Digest::of(manifest.as_bytes()).to_string(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: manifest.as_bytes().to_vec(),
            layers: vec![Digest::of(b"layer").to_string()],
            image_layers: vec![0],
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
                source: Source::Held,
            }],
            ..Header::default()
        };
        ImageRecord {
            reference: ImageReference::parse(reference).unwrap(),
            header: CheckedHeader::new(header).unwrap(),
            complete: true,
        }
    }

    fn r(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    #[test]
    fn records_survive_reopening_and_removal_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let a = record("app:v1", "{\"a\":1}", b"one");
        let b = record("app:v2", "{\"b\":1}", b"two");
        {
            let db = MetaDb::open(&dir.path().join("meta")).unwrap();
            db.put(&a).unwrap();
            db.put(&b).unwrap();
        }
        let db = MetaDb::open(&dir.path().join("meta")).unwrap();
        assert_eq!(db.last_used(&b.digest()).unwrap(), None);
        db.touch(&b.digest(), 1234).unwrap();
        assert_eq!(db.last_used(&b.digest()).unwrap(), Some(1234));
        let mut all = vec![a.clone(), b.clone()];
        all.sort_by_key(|r| r.digest());
        assert_eq!(db.images().unwrap(), all);
        assert_eq!(db.by_reference(&r("app:v2")).unwrap(), Some(b.clone()));
        assert_eq!(db.get(&a.digest()).unwrap(), Some(a.clone()));
        // The tag moves: the reference follows, the old image stays.
        let b2 = record("app:v2", "{\"c\":1}", b"three");
        db.put(&b2).unwrap();
        assert_eq!(db.by_reference(&r("app:v2")).unwrap(), Some(b2.clone()));
        assert!(db.remove(&b.digest()).unwrap());
        assert_eq!(db.last_used(&b.digest()).unwrap(), None);
        assert_eq!(db.by_reference(&r("app:v2")).unwrap(), Some(b2.clone()));
        assert!(!db.remove(&b.digest()).unwrap());
        assert!(db.remove(&b2.digest()).unwrap());
        assert_eq!(db.by_reference(&r("app:v2")).unwrap(), None);
        assert_eq!(db.images().unwrap(), vec![a]);
    }

    #[test]
    fn a_held_digest_is_never_replaced_by_another_header() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(&dir.path().join("meta")).unwrap();
        let a = record("app:v1", "{}", b"one");
        db.put_new_or_same(&a).unwrap();
        // Same manifest, another table of contents: refused, the old one stays.
        let evil = record("app:v1", "{}", b"evil");
        let err = db.put_new_or_same(&evil).unwrap_err();
        assert!(matches!(err, MetaError::Conflict { .. }), "{err}");
        assert_eq!(db.get(&a.digest()).unwrap(), Some(a.clone()));
        // The same image delivered through other sources (another held
        // set, a resume): accepted, the recorded header kept.
        let mut resent = a.clone();
        let mut h = resent.header.clone().into_header();
        h.toc[0].source = Source::Payload(0);
        h.payloads = vec![transport_quic::PayloadInfo {
            sha256: h.toc[0].sha256.unwrap(),
            compression: transport_quic::PayloadCompression::Gzip,
            compressed_len: 9,
            size: h.toc[0].size,
        }];
        resent.header = CheckedHeader::new(h).unwrap();
        resent.complete = false;
        db.put_new_or_same(&resent).unwrap();
        let kept = db.get(&a.digest()).unwrap().unwrap();
        assert_eq!(kept.header, a.header);
        assert!(!kept.complete);
        // The same header under another name is fine.
        let mut again = a.clone();
        again.reference = r("other:1");
        db.put_new_or_same(&again).unwrap();
        assert_eq!(db.by_reference(&r("other:1")).unwrap(), Some(again));
    }

    #[test]
    fn hostile_stored_records_are_skipped_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(&dir.path().join("meta")).unwrap();
        let good = record("app:v1", "{}", b"one");
        db.put(&good).unwrap();
        // What an older starlightd could have stored from a hostile header.
        let mut wire = RecordWire::from(good.clone());
        wire.header.manifest_digest = "sha256:../../../etc".into();
        let bytes = postcard::to_stdvec(&wire).unwrap();
        db.db.put(b"image/sha256:../../../etc", bytes).unwrap();
        assert_eq!(db.images().unwrap(), vec![good]);
    }

    #[test]
    fn contents_present_checks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = record("x:1", "{}", b"content");
        assert!(!r.contents_present(&store));
        let sha: [u8; 32] = Sha256::digest(b"content").into();
        store.insert_bytes(b"content", &sha).unwrap();
        assert!(r.contents_present(&store));
        assert_eq!(r.contents().count(), 1);
    }
}
