//! The overlayfs snapshotter behind containerd's snapshots gRPC service:
//! records in [`MetaStore`], directories under `<state>/snapshots/<id>/{fs,work}`.
//!
//! Remote snapshots (a later step): `prepare` of a layer's extraction
//! snapshot carries the labels `containerd.io/snapshot.ref` (the chain id it
//! will be committed as) and the target-reference labels
//! (`containerd.io/snapshot/remote/...`, CRI's
//! `containerd.io/snapshot/cri.layer-digest`, `...image-ref`). That is where
//! a snapshot would be committed at once from a bundle header (answering
//! `AlreadyExists`, which containerd takes as "layer present") instead of
//! being filled by containerd's tar applier. Only the local path exists now.

use super::store::{Kind, MetaStore, Record, StoreError};
use containerd_snapshots::{api::types::Mount, tonic::Status, Info, Usage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the snapshotter, mapped to gRPC codes containerd understands.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Metadata error (NotFound, AlreadyExists, FailedPrecondition, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A snapshot directory could not be created, read or removed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The snapshotter has been shut down.
    #[error("snapshotter closed")]
    Closed,
    /// A blocking task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        let msg = e.to_string();
        match e {
            SnapshotError::Store(StoreError::NotFound(_)) => Status::not_found(msg),
            SnapshotError::Store(StoreError::AlreadyExists(_)) => Status::already_exists(msg),
            SnapshotError::Store(StoreError::FailedPrecondition(_)) => {
                Status::failed_precondition(msg)
            }
            SnapshotError::Closed => Status::unavailable(msg),
            _ => Status::internal(msg),
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// The overlayfs snapshotter. Share it with [`super::serve_snapshotter`]
/// through an `Arc`.
pub struct OverlaySnapshotter {
    root: PathBuf,
    store: Mutex<Option<MetaStore>>,
}

impl OverlaySnapshotter {
    /// Opens the snapshotter state in `state_dir` (created if missing): the
    /// metadata database `meta/` and the directories `snapshots/`.
    pub fn open(state_dir: &Path) -> Result<Arc<Self>, SnapshotError> {
        let snapshots = state_dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(io_err("create", &snapshots))?;
        let store = MetaStore::open(&state_dir.join("meta"))?;
        Ok(Arc::new(OverlaySnapshotter {
            root: state_dir.to_path_buf(),
            store: Mutex::new(Some(store)),
        }))
    }

    /// Closes the metadata database (later calls answer `Unavailable`), so
    /// the state directory can be opened again even while gRPC connections
    /// still hold this value.
    pub fn close(&self) {
        if let Ok(mut guard) = self.store.lock() {
            guard.take();
        }
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&MetaStore) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let guard = self
            .store
            .lock()
            .map_err(|_| SnapshotError::Internal("metadata lock poisoned".into()))?;
        match guard.as_ref() {
            Some(s) => f(s),
            None => Err(SnapshotError::Closed),
        }
    }

    /// The directory of snapshot `id`.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding a snapshot's files (the upper dir of an active
    /// snapshot, the layer of a committed one).
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// Every snapshot record.
    pub fn records(&self) -> Result<Vec<Record>, SnapshotError> {
        self.with_store(|s| Ok(s.list()?))
    }

    /// The record of `key`.
    pub fn record(&self, key: &str) -> Result<Record, SnapshotError> {
        self.with_store(|s| Ok(s.get(key)?))
    }

    /// Directories under `snapshots/` that belong to no record.
    pub fn orphan_dirs(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        self.with_store(|s| {
            let owned: HashSet<String> = s.list()?.iter().map(|r| r.id.to_string()).collect();
            let dir = self.root.join("snapshots");
            let mut out = vec![];
            for entry in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                let entry = entry.map_err(io_err("read", &dir))?;
                if !owned.contains(&*entry.file_name().to_string_lossy()) {
                    out.push(entry.path());
                }
            }
            Ok(out)
        })
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.with_store(|s| {
            let r = s.create(key, parent, kind, labels.into_iter().collect())?;
            let dir = self.snapshot_dir(r.id);
            let made = std::fs::create_dir_all(dir.join("fs"))
                .and_then(|()| std::fs::create_dir_all(dir.join("work")));
            if let Err(e) = made {
                // Leave no record without its directories.
                let _ = s.remove(key);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io_err("create", &dir)(e));
            }
            tracing::debug!(key, parent, id = r.id, ?kind, "snapshot created");
            self.mounts_of(s, &r)
        })
    }

    /// The mounts of a record: a bind mount with no parent, a read-only
    /// bind of the single parent for a view, otherwise overlayfs with the
    /// parents' `fs` dirs as lowerdir (nearest parent leftmost). A committed
    /// snapshot mounts like a view of itself.
    fn mounts_of(&self, s: &MetaStore, r: &Record) -> Result<Vec<Mount>, SnapshotError> {
        let mut parents = s.parents(&r.key)?;
        if r.kind == Kind::Committed {
            // A committed snapshot shows its own layer on top, read-only.
            parents.insert(0, r.clone());
        }
        let fs = self.fs_dir(r.id);
        let writable = r.kind == Kind::Active;
        let bind = |source: &Path, rw: bool| Mount {
            r#type: "bind".into(),
            source: source.display().to_string(),
            target: String::new(),
            options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
        };
        if parents.is_empty() {
            return Ok(vec![bind(&fs, writable)]);
        }
        let lower: Vec<String> = parents
            .iter()
            .map(|p| self.fs_dir(p.id).display().to_string())
            .collect();
        let mut options = vec![];
        if writable {
            options.push(format!(
                "workdir={}",
                self.snapshot_dir(r.id).join("work").display()
            ));
            options.push(format!("upperdir={}", fs.display()));
        } else if lower.len() == 1 {
            return Ok(vec![bind(&self.fs_dir(parents[0].id), false)]);
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        Ok(vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }])
    }
}

/// Removes `dir` and everything below it; a missing `dir` is fine.
fn remove_tree(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", dir)(e)),
        _ => Ok(()),
    }
}

/// Size and inode count of the files below `dir` (hard links once).
fn disk_usage(dir: &Path) -> Result<Usage, SnapshotError> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err("read", &d))? {
            let entry = entry.map_err(io_err("read", &d))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            if seen.insert((meta.dev(), meta.ino())) {
                usage.inodes += 1;
                usage.size += (meta.blocks() * 512) as i64;
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

fn info_of(r: Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        created_at: r.created(),
        updated_at: r.updated(),
        name: r.key,
        parent: r.parent,
        labels: r.labels.into_iter().collect(),
    }
}

/// The stream `list` answers with.
pub type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Info, SnapshotError>>>;

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for OverlaySnapshotter {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        Ok(info_of(self.record(&key)?))
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        let labels: BTreeMap<String, String> = info.labels.into_iter().collect();
        let paths = fieldpaths.unwrap_or_default();
        let r = self.with_store(|s| Ok(s.update_labels(&info.name, labels, &paths)?))?;
        Ok(info_of(r))
    }

    async fn usage(&self, key: String) -> Result<Usage, Self::Error> {
        let r = self.record(&key)?;
        let fs = self.fs_dir(r.id);
        tokio::task::spawn_blocking(move || disk_usage(&fs))
            .await
            .map_err(|e| SnapshotError::Internal(e.to_string()))?
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        self.with_store(|s| {
            let r = s.get(&key)?;
            self.mounts_of(s, &r)
        })
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        // Hook for remote snapshots: see the module documentation.
        self.create(&key, &parent, Kind::Active, labels)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.create(&key, &parent, Kind::View, labels)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        let r = self.with_store(|s| Ok(s.commit(&name, &key, labels.into_iter().collect())?))?;
        // The work dir is only needed while the snapshot is an upper dir.
        let work = self.snapshot_dir(r.id).join("work");
        let _ = std::fs::remove_dir_all(&work);
        tracing::debug!(name, key, id = r.id, "snapshot committed");
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        // Under the lock, the record goes and the directory is renamed out
        // of the way; it is deleted afterwards (a crash in between leaves an
        // orphan that `clear` removes).
        let (r, doomed) = self.with_store(|s| {
            let r = s.remove(&key)?;
            let dir = self.snapshot_dir(r.id);
            let doomed = self.root.join("snapshots").join(format!("rm-{}", r.id));
            match std::fs::rename(&dir, &doomed) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), "cannot move removed snapshot: {e}");
                    Ok((r, dir))
                }
                _ => Ok((r, doomed)),
            }
        })?;
        tokio::task::spawn_blocking(move || remove_tree(&doomed))
            .await
            .map_err(|e| SnapshotError::Internal(e.to_string()))??;
        tracing::debug!(key, id = r.id, "snapshot removed");
        Ok(())
    }

    /// Removes directories no snapshot record owns (left by a crash).
    async fn clear(&self) -> Result<(), Self::Error> {
        let orphans = self.orphan_dirs()?;
        tokio::task::spawn_blocking(move || orphans.iter().try_for_each(|d| remove_tree(d)))
            .await
            .map_err(|e| SnapshotError::Internal(e.to_string()))?
    }

    type InfoStream = InfoStream;

    /// Lists every snapshot; containerd's filters are not applied (its
    /// metadata layer filters the records it keeps itself).
    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        if !filters.is_empty() {
            tracing::debug!(?filters, "list filters ignored");
        }
        let all: Vec<Result<Info, SnapshotError>> = self
            .records()?
            .into_iter()
            .map(|r| Ok(info_of(r)))
            .collect();
        Ok(futures_util::stream::iter(all))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use containerd_snapshots::Snapshotter;

    fn opts(m: &Mount) -> Vec<&str> {
        m.options.iter().map(|o| o.as_str()).collect()
    }

    #[tokio::test]
    async fn mounts_dirs_remove_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::open(dir.path()).unwrap();
        let none = HashMap::new;
        // No parent: a writable bind mount of the snapshot's fs dir.
        let m = sn.prepare("a".into(), String::new(), none()).await.unwrap();
        let a = sn.record("a").unwrap();
        assert_eq!(
            (m[0].r#type.as_str(), opts(&m[0])),
            ("bind", vec!["rw", "rbind"])
        );
        assert_eq!(m[0].source, sn.fs_dir(a.id).display().to_string());
        sn.commit("base".into(), "a".into(), none()).await.unwrap();
        assert!(!sn.snapshot_dir(a.id).join("work").exists());
        sn.prepare("b".into(), "base".into(), none()).await.unwrap();
        sn.commit("top".into(), "b".into(), none()).await.unwrap();
        let top = sn.record("top").unwrap();
        // Active on two layers: overlay, nearest parent leftmost.
        let m = sn.prepare("c".into(), "top".into(), none()).await.unwrap();
        let c = sn.record("c").unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            opts(&m[0]),
            vec![
                format!("workdir={}", sn.snapshot_dir(c.id).join("work").display()),
                format!("upperdir={}", sn.fs_dir(c.id).display()),
                format!(
                    "lowerdir={}:{}",
                    sn.fs_dir(top.id).display(),
                    sn.fs_dir(a.id).display()
                ),
            ]
        );
        assert_eq!(sn.mounts("c".into()).await.unwrap(), m);
        // A committed snapshot: its own layer over its parents, read-only.
        let m = sn.mounts("top".into()).await.unwrap();
        assert_eq!(
            opts(&m[0]),
            vec![format!(
                "lowerdir={}:{}",
                sn.fs_dir(top.id).display(),
                sn.fs_dir(a.id).display()
            )]
        );
        let m = sn.mounts("base".into()).await.unwrap();
        assert_eq!(
            (m[0].r#type.as_str(), opts(&m[0])),
            ("bind", vec!["ro", "rbind"])
        );
        // Views: one parent is a read-only bind, two an overlay without upper.
        let m = sn.view("v1".into(), "base".into(), none()).await.unwrap();
        assert_eq!(
            (m[0].r#type.as_str(), opts(&m[0])),
            ("bind", vec!["ro", "rbind"])
        );
        assert_eq!(m[0].source, sn.fs_dir(a.id).display().to_string());
        let m = sn.view("v2".into(), "top".into(), none()).await.unwrap();
        assert_eq!(m[0].options.len(), 1);
        // Usage counts the upper dir's files.
        std::fs::write(sn.fs_dir(c.id).join("f"), vec![7u8; 10_000]).unwrap();
        let u = sn.usage("c".into()).await.unwrap();
        assert_eq!(u.inodes, 1);
        assert!(u.size >= 10_000);
        // gRPC codes.
        let code = |e: SnapshotError| Status::from(e).code();
        use containerd_snapshots::tonic::Code;
        assert_eq!(
            code(sn.stat("nope".into()).await.unwrap_err()),
            Code::NotFound
        );
        assert_eq!(
            code(sn.remove("top".into()).await.unwrap_err()),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(
                sn.prepare("c".into(), String::new(), none())
                    .await
                    .unwrap_err()
            ),
            Code::AlreadyExists
        );
        // Removal takes the directory along; clear removes orphans only.
        sn.remove("c".into()).await.unwrap();
        assert!(!sn.snapshot_dir(c.id).exists());
        std::fs::create_dir_all(dir.path().join("snapshots/rm-99/fs")).unwrap();
        sn.clear().await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = sn
            .records()
            .unwrap()
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        want.sort();
        assert_eq!(left, want);
        assert_eq!(want.len(), 4); // base, top, v1, v2
        sn.close();
        assert_eq!(
            code(sn.stat("top".into()).await.unwrap_err()),
            Code::Unavailable
        );
    }
}
