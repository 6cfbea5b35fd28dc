//! The snapshotter's metadata: one record per snapshot, keyed by the
//! snapshot's key (as containerd sends it, namespaced), in a RocksDB
//! database of its own under the state directory.
//!
//! Every record carries a numeric id that names its directory
//! (`<state>/snapshots/<id>`); committing renames the record but keeps the id,
//! so the committed layer is the active snapshot's directory.
//!
//! Every write is synced ([`crate::durability`]): the next id and the new
//! record go to disk in one batch before the snapshot's directory is made,
//! so after a power loss an id is never handed out again and an
//! acknowledged snapshot is never forgotten.

use rocksdb::{WriteBatch, DB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of snapshot records in the database.
const RECORD_PREFIX: &[u8] = b"snap/";
/// Key of the next snapshot id.
const NEXT_ID_KEY: &[u8] = b"meta/next-id";

/// What a snapshot is, as containerd knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Writable, prepared from a (possibly empty) parent.
    Active,
    /// Read-only view of a parent.
    View,
    /// Immutable; may be the parent of other snapshots.
    Committed,
}

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory; unique for the life of the store.
    pub id: u64,
    /// The snapshot's key (for committed snapshots, its name).
    pub key: String,
    /// The parent's key, or empty.
    pub parent: String,
    /// Active, view or committed.
    pub kind: Kind,
    /// containerd's labels (including `containerd.io/snapshot.ref` and the
    /// target-reference labels a remote snapshotter reads).
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u128,
    /// Last change, nanoseconds since the Unix epoch.
    pub updated_ns: u128,
}

impl Record {
    /// Creation time.
    pub fn created(&self) -> SystemTime {
        from_ns(self.created_ns)
    }

    /// Time of the last change.
    pub fn updated(&self) -> SystemTime {
        from_ns(self.updated_ns)
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_ns(ns: u128) -> SystemTime {
    let secs = (ns / 1_000_000_000) as u64;
    let nanos = (ns % 1_000_000_000) as u32;
    UNIX_EPOCH + std::time::Duration::new(secs, nanos)
}

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No snapshot has this key.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// A snapshot with this key exists already.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The operation does not apply to the snapshot in its current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database failed.
    #[error("metadata database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored record could not be decoded or encoded.
    #[error("corrupt snapshot record: {0}")]
    Codec(#[from] serde_json::Error),
}

/// The metadata database.
pub struct MetaStore {
    db: DB,
}

fn record_key(key: &str) -> Vec<u8> {
    let mut k = RECORD_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

impl MetaStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(MetaStore {
            db: DB::open(&crate::durability::options(), path)?,
        })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Record, StoreError> {
        match self.db.get(record_key(key))? {
            Some(raw) => Ok(serde_json::from_slice(&raw)?),
            None => Err(StoreError::NotFound(key.to_string())),
        }
    }

    fn put(&self, batch: &mut WriteBatch, r: &Record) -> Result<(), StoreError> {
        batch.put(record_key(&r.key), serde_json::to_vec(r)?);
        Ok(())
    }

    /// Creates an active snapshot or a view of `parent` (empty: none), which
    /// must be committed. Returns the new record.
    pub fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Record, StoreError> {
        if kind == Kind::Committed {
            return Err(StoreError::FailedPrecondition(
                "snapshots are committed with commit, not created".into(),
            ));
        }
        if key.is_empty() {
            return Err(StoreError::FailedPrecondition("empty snapshot key".into()));
        }
        if self.db.get(record_key(key))?.is_some() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = self.get(parent)?;
            if p.kind != Kind::Committed {
                return Err(StoreError::FailedPrecondition(format!(
                    "parent {parent:?} is not committed"
                )));
            }
        }
        let id = match self.db.get(NEXT_ID_KEY)? {
            Some(raw) => serde_json::from_slice::<u64>(&raw)?,
            None => 1,
        };
        let now = now_ns();
        let r = Record {
            id,
            key: key.to_string(),
            parent: parent.to_string(),
            kind,
            labels,
            created_ns: now,
            updated_ns: now,
        };
        let mut batch = WriteBatch::default();
        batch.put(NEXT_ID_KEY, serde_json::to_vec(&(id + 1))?);
        self.put(&mut batch, &r)?;
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(r)
    }

    /// The parents of `key`, nearest first (the top of an overlay's lowerdir).
    pub fn parents(&self, key: &str) -> Result<Vec<Record>, StoreError> {
        let mut out: Vec<Record> = vec![];
        let mut next = self.get(key)?.parent;
        while !next.is_empty() {
            let r = self.get(&next)?;
            next = r.parent.clone();
            out.push(r);
            if out.len() > 4096 {
                return Err(StoreError::FailedPrecondition(format!(
                    "parent chain of {key:?} too long or cyclic"
                )));
            }
        }
        Ok(out)
    }

    /// Commits active snapshot `key` as `name`, with `labels`. The record
    /// keeps its id (and so its directory).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Record, StoreError> {
        let active = self.get(key)?;
        if active.kind != Kind::Active {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        if self.db.get(record_key(name))?.is_some() {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        let committed = Record {
            key: name.to_string(),
            kind: Kind::Committed,
            labels,
            updated_ns: now_ns(),
            ..active
        };
        let mut batch = WriteBatch::default();
        batch.delete(record_key(key));
        self.put(&mut batch, &committed)?;
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(committed)
    }

    /// Removes `key`'s record, refusing while other snapshots name it as
    /// their parent. Returns the removed record.
    pub fn remove(&self, key: &str) -> Result<Record, StoreError> {
        let r = self.get(key)?;
        if let Some(child) = self.list()?.into_iter().find(|c| c.parent == key) {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key:?} has a child {:?}",
                child.key
            )));
        }
        self.db
            .delete_opt(record_key(key), &crate::durability::synced())?;
        Ok(r)
    }

    /// Changes the labels of `key`: with no field paths (or the path
    /// `labels`) they become `labels`; a path `labels.NAME` sets (or, if
    /// absent from `labels`, deletes) that one label. Other paths are refused.
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record, StoreError> {
        let mut r = self.get(key)?;
        if fieldpaths.is_empty() {
            r.labels = labels;
        } else {
            for path in fieldpaths {
                if path == "labels" {
                    r.labels = labels.clone();
                } else if let Some(name) = path.strip_prefix("labels.") {
                    match labels.get(name) {
                        Some(v) => {
                            r.labels.insert(name.to_string(), v.clone());
                        }
                        None => {
                            r.labels.remove(name);
                        }
                    }
                } else {
                    return Err(StoreError::FailedPrecondition(format!(
                        "cannot update field {path:?} of a snapshot"
                    )));
                }
            }
        }
        r.updated_ns = now_ns();
        let mut batch = WriteBatch::default();
        self.put(&mut batch, &r)?;
        self.db.write_opt(batch, &crate::durability::synced())?;
        Ok(r)
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        let mut out = vec![];
        for item in self.db.prefix_iterator(RECORD_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(RECORD_PREFIX) {
                break;
            }
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parent_chains_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let s = MetaStore::open(&path).unwrap();
            let a = s.create("ns/1/a", "", Kind::Active, labels(&[])).unwrap();
            let a2 = s
                .commit("ns/2/base", "ns/1/a", labels(&[("l", "1")]))
                .unwrap();
            assert_eq!((a2.id, a2.kind), (a.id, Kind::Committed));
            assert!(matches!(s.get("ns/1/a"), Err(StoreError::NotFound(_))));
            s.create("ns/3/b", "ns/2/base", Kind::Active, labels(&[]))
                .unwrap();
            s.commit("ns/4/top", "ns/3/b", labels(&[])).unwrap();
            let c = s
                .create("ns/5/c", "ns/4/top", Kind::Active, labels(&[]))
                .unwrap();
            let chain: Vec<String> = s
                .parents("ns/5/c")
                .unwrap()
                .into_iter()
                .map(|r| r.key)
                .collect();
            assert_eq!(chain, ["ns/4/top", "ns/2/base"]);
            assert!(c.id > a.id);
            // Only committed snapshots can be parents; keys are unique.
            assert!(matches!(
                s.create("ns/6/d", "ns/5/c", Kind::View, labels(&[])),
                Err(StoreError::FailedPrecondition(_))
            ));
            assert!(matches!(
                s.create("ns/5/c", "", Kind::Active, labels(&[])),
                Err(StoreError::AlreadyExists(_))
            ));
            assert!(matches!(
                s.commit("ns/4/top", "ns/5/c", labels(&[])),
                Err(StoreError::AlreadyExists(_))
            ));
        }
        // Reopened: the records and the id counter survive.
        let s = MetaStore::open(&path).unwrap();
        assert_eq!(s.list().unwrap().len(), 3);
        assert_eq!(s.get("ns/2/base").unwrap().labels, labels(&[("l", "1")]));
        let d = s.create("ns/7/d", "", Kind::Active, labels(&[])).unwrap();
        assert_eq!(d.id, 4);
    }

    #[test]
    fn remove_refuses_parents_and_unknown_keys_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("meta")).unwrap();
        assert!(matches!(s.get("nope"), Err(StoreError::NotFound(_))));
        assert!(matches!(s.remove("nope"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            s.create("x", "nope", Kind::Active, labels(&[])),
            Err(StoreError::NotFound(_))
        ));
        s.create("a", "", Kind::Active, labels(&[])).unwrap();
        s.commit("base", "a", labels(&[])).unwrap();
        s.create("v", "base", Kind::View, labels(&[])).unwrap();
        assert!(matches!(
            s.remove("base"),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.commit("v2", "v", labels(&[])),
            Err(StoreError::FailedPrecondition(_))
        ));
        s.remove("v").unwrap();
        s.remove("base").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn label_updates_by_field_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("meta")).unwrap();
        s.create("a", "", Kind::Active, labels(&[("x", "1"), ("y", "2")]))
            .unwrap();
        let r = s
            .update_labels("a", labels(&[("x", "9"), ("z", "3")]), &["labels.x".into()])
            .unwrap();
        assert_eq!(r.labels, labels(&[("x", "9"), ("y", "2")]));
        let r = s
            .update_labels("a", labels(&[]), &["labels.y".into()])
            .unwrap();
        assert_eq!(r.labels, labels(&[("x", "9")]));
        let r = s.update_labels("a", labels(&[("k", "v")]), &[]).unwrap();
        assert_eq!(r.labels, labels(&[("k", "v")]));
        assert!(r.updated_ns >= r.created_ns);
        assert!(matches!(
            s.update_labels("a", labels(&[]), &["parent".into()]),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert_eq!(s.get("a").unwrap().labels, labels(&[("k", "v")]));
    }
}
