//! The directory database: RocksDB with one column family per record kind.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `meta` | `schema` | schema version, big-endian `u32` |
//! | `tags` | reference | manifest digest |
//! | `images` | manifest digest | [`ImageRecord`] |
//! | `layers` | layer digest | [`LayerRecord`] |
//! | `entries` | layer digest, `0x00`, big-endian `u32` sequence | [`Entry`] (tar order) |
//! | `toc` | manifest digest, `0x00`, path | [`TocEntry`] (sorted by path) |
//! | `ranks` | manifest digest, `0x00`, path | [`RankRecord`] `(rank_sum: u64, hits: u64)` |
//! | `traces` | `t`, `0x00`, trace id | [`TraceRecord`] (as uploaded) |
//! | `traces` | `n`, `0x00`, manifest digest | traces folded for the image, big-endian `u64` |
//! | `indexed` | manifest digest | indexing sequence number, big-endian `u64` |
//!
//! `meta` also holds `index_seq`, the next indexing sequence number: the
//! order images were first indexed in defines which version of a repository
//! is "older" when a never-traced image inherits ranks (see [`ranks`]).
//! The `traces` and `indexed` families were added within schema 1: opening
//! an older schema-1 database creates them empty (its images then count as
//! indexed before any new one).
//!
//! Values are postcard-encoded. Everything but `ranks` and `traces` is derived data: it
//! can be rebuilt at any time by indexing the images again from the registry
//! (see [`Db::clear_derived`]). A database written with another schema
//! version is refused at [`Db::open`]; move it away and re-index.
//!
//! Writes are atomic per image: [`Db::commit_image`] writes one batch.

mod keys;
pub mod ranks;
mod records;

pub use ranks::{FoldOutcome, ImageRanks, DEFAULT_MAX_STORED_TRACES};
pub use records::{
    ImageRecord, LayerRecord, LayerRef, RankRecord, TocEntry, TraceOpenRecord, TraceRecord,
};

use crate::format::Entry;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const CF_META: &str = "meta";
const CF_TAGS: &str = "tags";
const CF_IMAGES: &str = "images";
const CF_LAYERS: &str = "layers";
const CF_ENTRIES: &str = "entries";
const CF_TOC: &str = "toc";
const CF_RANKS: &str = "ranks";
const CF_TRACES: &str = "traces";
const CF_INDEXED: &str = "indexed";
const SCHEMA_KEY: &[u8] = b"schema";
const INDEX_SEQ_KEY: &[u8] = b"index_seq";

/// A key suffix (after a prefix) and its raw value.
type Suffixed = (Vec<u8>, Box<[u8]>);
/// A raw record: column family, key, value.
pub type RawRecord = (String, Vec<u8>, Vec<u8>);

/// Every column family, `meta` first.
const COLUMN_FAMILIES: [&str; 9] = [
    CF_META, CF_TAGS, CF_IMAGES, CF_LAYERS, CF_ENTRIES, CF_TOC, CF_RANKS, CF_TRACES, CF_INDEXED,
];
/// The column families holding derived data (rebuildable from the registry).
const DERIVED: [&str; 6] = [
    CF_TAGS, CF_IMAGES, CF_LAYERS, CF_ENTRIES, CF_TOC, CF_INDEXED,
];

/// Errors of the directory database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// RocksDB failed.
    #[error("database {path}: {source}")]
    Rocks {
        /// Database directory.
        path: PathBuf,
        /// The RocksDB error.
        source: rocksdb::Error,
    },
    /// The database was written with another (newer or unknown) schema.
    #[error(
        "database {path} has schema version {found}; this starlight-proxy reads schema {SCHEMA_VERSION} only. \
         It holds derived data: move it away and index the images again (only access traces are lost)"
    )]
    Schema {
        /// Database directory.
        path: PathBuf,
        /// The version found, as text (it may be unreadable).
        found: String,
    },
    /// The directory holds a RocksDB database that is not ours.
    #[error("database {path}: unknown column family {name:?}: not a starlight-proxy database, or a newer schema")]
    UnknownColumnFamily {
        /// Database directory.
        path: PathBuf,
        /// The unexpected column family.
        name: String,
    },
    /// A stored value does not decode.
    #[error("database {path}: corrupt {what}: {source}")]
    Decode {
        /// Database directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The decoding error.
        source: postcard::Error,
    },
    /// A value does not encode.
    #[error("database {path}: cannot encode {what}: {source}")]
    Encode {
        /// Database directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The encoding error.
        source: postcard::Error,
    },
    /// The records of one image disagree with each other.
    #[error("database {path}: inconsistent record: {message}")]
    Inconsistent {
        /// Database directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Everything one indexing run writes, committed atomically by
/// [`Db::commit_image`].
#[derive(Debug, Clone)]
pub struct ImageWrite {
    /// The reference the image was indexed under (tagged to its digest).
    pub reference: String,
    /// The image record; its `references` are merged with the stored ones.
    pub image: ImageRecord,
    /// The merged table of contents, sorted by path.
    pub toc: Vec<TocEntry>,
    /// Layers not yet in the database, with their entries in tar order.
    pub new_layers: Vec<(LayerRecord, Vec<Entry>)>,
}

/// The directory database.
pub struct Db {
    db: DB,
    path: PathBuf,
    /// Serializes read-modify-write commits (references and tags).
    commit_lock: Mutex<()>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens the database at `path`, creating it (and its parent
    /// directories) if missing. Fails if it was written with another schema.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let rocks = |source| DbError::Rocks {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(existing) = DB::list_cf(&Options::default(), path) {
            if let Some(name) = existing
                .into_iter()
                .find(|n| n != "default" && !COLUMN_FAMILIES.contains(&n.as_str()))
            {
                return Err(DbError::UnknownColumnFamily {
                    path: path.to_path_buf(),
                    name,
                });
            }
        }
        if let Err(e) = std::fs::create_dir_all(path) {
            tracing::debug!(path = %path.display(), error = %e, "create_dir_all failed; RocksDB will report");
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(rocks)?;
        let db = Db {
            db,
            path: path.to_path_buf(),
            commit_lock: Mutex::new(()),
        };
        db.check_schema()?;
        Ok(db)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<(), DbError> {
        let meta = self.cf(CF_META)?;
        match self
            .db
            .get_cf(meta, SCHEMA_KEY)
            .map_err(|e| self.rocks(e))?
        {
            Some(v) if v.as_slice() == SCHEMA_VERSION.to_be_bytes() => Ok(()),
            Some(v) => {
                let found = match <[u8; 4]>::try_from(v.as_slice()) {
                    Ok(b) => u32::from_be_bytes(b).to_string(),
                    Err(_) => format!("(unreadable: {} bytes)", v.len()),
                };
                Err(DbError::Schema {
                    path: self.path.clone(),
                    found,
                })
            }
            None => {
                for name in COLUMN_FAMILIES {
                    let cf = self.cf(name)?;
                    if self
                        .db
                        .iterator_cf(cf, IteratorMode::Start)
                        .next()
                        .is_some()
                    {
                        return Err(DbError::Schema {
                            path: self.path.clone(),
                            found: "(none, but the database holds data)".into(),
                        });
                    }
                }
                self.db
                    .put_cf(meta, SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| self.rocks(e))
            }
        }
    }

    fn rocks(&self, source: rocksdb::Error) -> DbError {
        DbError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, DbError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| DbError::Inconsistent {
                path: self.path.clone(),
                message: format!("column family {name} missing"),
            })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Result<T, DbError> {
        postcard::from_bytes(bytes).map_err(|source| DbError::Decode {
            path: self.path.clone(),
            what: what(),
            source,
        })
    }

    fn encode<T: Serialize>(
        &self,
        what: impl FnOnce() -> String,
        value: &T,
    ) -> Result<Vec<u8>, DbError> {
        postcard::to_stdvec(value).map_err(|source| DbError::Encode {
            path: self.path.clone(),
            what: what(),
            source,
        })
    }

    fn get<T: DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Option<T>, DbError> {
        match self
            .db
            .get_pinned_cf(self.cf(cf)?, key)
            .map_err(|e| self.rocks(e))?
        {
            Some(v) => Ok(Some(self.decode(what, &v)?)),
            None => Ok(None),
        }
    }

    /// Every (key suffix, value) under `prefix` in column family `cf`, in key order.
    fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<Suffixed>, DbError> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            match k.strip_prefix(prefix) {
                Some(suffix) => out.push((suffix.to_vec(), v)),
                None => break,
            }
        }
        Ok(out)
    }

    /// The manifest digest a reference was last indexed as.
    pub fn digest_by_reference(&self, reference: &str) -> Result<Option<String>, DbError> {
        match self
            .db
            .get_cf(self.cf(CF_TAGS)?, reference.as_bytes())
            .map_err(|e| self.rocks(e))?
        {
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| DbError::Inconsistent {
                    path: self.path.clone(),
                    message: format!("tag {reference} is not UTF-8"),
                }),
            None => Ok(None),
        }
    }

    /// The image a reference was last indexed as.
    pub fn image_by_reference(&self, reference: &str) -> Result<Option<ImageRecord>, DbError> {
        match self.digest_by_reference(reference)? {
            Some(d) => self.image(&d),
            None => Ok(None),
        }
    }

    /// The image with manifest digest `manifest_digest`.
    pub fn image(&self, manifest_digest: &str) -> Result<Option<ImageRecord>, DbError> {
        self.get(CF_IMAGES, manifest_digest.as_bytes(), || {
            format!("image record {manifest_digest}")
        })
    }

    /// Every indexed image, by manifest digest.
    pub fn images(&self) -> Result<Vec<ImageRecord>, DbError> {
        let iter = self
            .db
            .iterator_cf(self.cf(CF_IMAGES)?, IteratorMode::Start);
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            out.push(self.decode(
                || format!("image record {}", String::from_utf8_lossy(&k)),
                &v,
            )?);
        }
        Ok(out)
    }

    /// The merged table of contents of an image, sorted by path (empty if
    /// the image is not indexed).
    pub fn merged_toc(&self, manifest_digest: &str) -> Result<Vec<TocEntry>, DbError> {
        self.scan_prefix(CF_TOC, &keys::prefix(manifest_digest))?
            .into_iter()
            .map(|(suffix, v)| {
                self.decode(
                    || {
                        format!(
                            "toc entry {manifest_digest} {}",
                            String::from_utf8_lossy(&suffix)
                        )
                    },
                    &v,
                )
            })
            .collect()
    }

    /// One entry of an image's merged table of contents.
    pub fn toc_entry(
        &self,
        manifest_digest: &str,
        path: &str,
    ) -> Result<Option<TocEntry>, DbError> {
        self.get(CF_TOC, &keys::path(manifest_digest, path), || {
            format!("toc entry {manifest_digest} {path}")
        })
    }

    /// The entries of a layer, in tar order (empty if not indexed).
    pub fn layer_entries(&self, layer_digest: &str) -> Result<Vec<Entry>, DbError> {
        self.scan_prefix(CF_ENTRIES, &keys::prefix(layer_digest))?
            .into_iter()
            .map(|(suffix, v)| {
                self.decode(
                    || format!("entry {layer_digest} #{}", hex::encode(&suffix)),
                    &v,
                )
            })
            .collect()
    }

    /// The layer record of a blob.
    pub fn layer(&self, layer_digest: &str) -> Result<Option<LayerRecord>, DbError> {
        self.get(CF_LAYERS, layer_digest.as_bytes(), || {
            format!("layer record {layer_digest}")
        })
    }

    /// Writes one indexed image in a single atomic batch: the new layers and
    /// their entries, the image record (its references merged with those
    /// already stored), its table of contents (replacing any stored one) and
    /// the tag `w.reference`. A tag that pointed at another image is moved
    /// and removed from that image's references. Writing the same image
    /// twice stores the same keys and values. Returns the stored record.
    pub fn commit_image(&self, w: ImageWrite) -> Result<ImageRecord, DbError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let digest = w.image.manifest_digest.clone();
        if w.toc.len() as u64 != w.image.toc_entries {
            return Err(DbError::Inconsistent {
                path: self.path.clone(),
                message: format!(
                    "image {digest}: toc_entries {} but {} toc entries",
                    w.image.toc_entries,
                    w.toc.len()
                ),
            });
        }
        let mut batch = WriteBatch::default();

        for (record, entries) in &w.new_layers {
            if record.entries != entries.len() as u64 {
                return Err(DbError::Inconsistent {
                    path: self.path.clone(),
                    message: format!(
                        "layer {}: record says {} entries, got {}",
                        record.digest,
                        record.entries,
                        entries.len()
                    ),
                });
            }
            let layer_cf = self.cf(CF_LAYERS)?;
            let entries_cf = self.cf(CF_ENTRIES)?;
            for (seq, e) in entries.iter().enumerate() {
                let seq = u32::try_from(seq).map_err(|_| DbError::Inconsistent {
                    path: self.path.clone(),
                    message: format!("layer {}: more than 2^32 entries", record.digest),
                })?;
                let v = self.encode(|| format!("entry {} {}", record.digest, e.path), e)?;
                batch.put_cf(entries_cf, keys::entry(&record.digest, seq), v);
            }
            let v = self.encode(|| format!("layer record {}", record.digest), record)?;
            batch.put_cf(layer_cf, record.digest.as_bytes(), v);
        }

        // Move the tag: drop the reference from the image it pointed at.
        let images_cf = self.cf(CF_IMAGES)?;
        if let Some(old) = self.digest_by_reference(&w.reference)? {
            if old != digest {
                if let Some(mut rec) = self.image(&old)? {
                    rec.references.retain(|r| r != &w.reference);
                    // Left with no reference, it stays readable by digest from the
                    // same repository (a worker may ask for it by digest).
                    if rec.references.is_empty() {
                        rec.references
                            .push(format!("{}@{old}", ranks::repository(&w.reference)));
                    }
                    let v = self.encode(|| format!("image record {old}"), &rec)?;
                    batch.put_cf(images_cf, old.as_bytes(), v);
                }
            }
        }

        let mut image = w.image;
        if let Some(stored) = self.image(&digest)? {
            image.references.extend(stored.references);
        }
        image.references.push(w.reference.clone());
        image.references.sort();
        image.references.dedup();
        let v = self.encode(|| format!("image record {digest}"), &image)?;
        batch.put_cf(images_cf, digest.as_bytes(), v);

        let toc_cf = self.cf(CF_TOC)?;
        let prefix = keys::prefix(&digest);
        for (suffix, _) in self.scan_prefix(CF_TOC, &prefix)? {
            let mut k = prefix.clone();
            k.extend_from_slice(&suffix);
            batch.delete_cf(toc_cf, k);
        }
        for t in &w.toc {
            let v = self.encode(|| format!("toc entry {digest} {}", t.entry.path), t)?;
            batch.put_cf(toc_cf, keys::path(&digest, &t.entry.path), v);
        }
        batch.put_cf(self.cf(CF_TAGS)?, w.reference.as_bytes(), digest.as_bytes());
        if self.index_seq(&digest)?.is_none() {
            let seq = self.next_index_seq()?;
            batch.put_cf(self.cf(CF_INDEXED)?, digest.as_bytes(), seq.to_be_bytes());
            batch.put_cf(self.cf(CF_META)?, INDEX_SEQ_KEY, (seq + 1).to_be_bytes());
        }

        self.db.write(batch).map_err(|e| self.rocks(e))?;
        Ok(image)
    }

    /// Deletes every derived record (tags, images, layers, entries, tables
    /// of contents, indexing order), keeping the schema version and the
    /// access traces (`ranks`, `traces`). Index the images again to rebuild.
    pub fn clear_derived(&self) -> Result<(), DbError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        for name in DERIVED {
            let cf = self.cf(name)?;
            let mut batch = WriteBatch::default();
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item.map_err(|e| self.rocks(e))?;
                batch.delete_cf(cf, k);
                if batch.len() >= 10_000 {
                    self.db
                        .write(std::mem::take(&mut batch))
                        .map_err(|e| self.rocks(e))?;
                }
            }
            self.db.write(batch).map_err(|e| self.rocks(e))?;
        }
        Ok(())
    }

    /// Number of keys in a column family (tests and diagnostics).
    pub fn count_keys(&self, column_family: &str) -> Result<usize, DbError> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(column_family)?, IteratorMode::Start)
        {
            item.map_err(|e| self.rocks(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Every key and raw value of the database, column family by column
    /// family (tests: comparing two states of the database).
    pub fn dump(&self) -> Result<Vec<RawRecord>, DbError> {
        let mut out = Vec::new();
        for name in COLUMN_FAMILIES {
            for item in self.db.iterator_cf(self.cf(name)?, IteratorMode::Start) {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                out.push((name.to_string(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
