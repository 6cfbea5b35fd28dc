//! The overlayfs snapshotter behind containerd's snapshots gRPC service:
//! records in [`MetaStore`], directories under `<state>/snapshots/<id>/{fs,work}`.
//!
//! Remote snapshots: `prepare` of a layer's extraction snapshot carrying
//! `containerd.io/snapshot.ref` and CRI's image labels is answered from a
//! Starlight bundle (see `super::remote`).
//!
//! Starlight images: committed snapshots labelled [`LABEL_IMAGE`] (made by
//! `crate::containerd` from a bundle header) have no files of their own. In
//! the mounts of any snapshot whose chain reaches one, the topmost such
//! snapshot stands for the whole image: its lowest layer is the merged view
//! ([`ImageMounts::lower_dir`]) of an image whose top layer it is (see
//! [`image_candidates`]), and the (empty) labelled snapshots below are
//! skipped.
//!
//! Known limit: an ordinary layer unpacked by containerd onto a Starlight
//! snapshot that is the top of no image (a lower layer of one) sits on the
//! creating image's whole view, not on that layer's.

use super::store::{Kind, MetaStore, Record, StoreError};
use super::{image_candidates, ImageMounts, LABEL_IMAGE};
use containerd_snapshots::{api::types::Mount, tonic::Status, Info, Usage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Labels kept from prepare to commit.
const STARLIGHT_LABEL_PREFIX: &str = "containerd.io/snapshot/starlight.";

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
    /// The view of a Starlight image could not be mounted.
    #[error("image {digest}: {reason}")]
    ImageMount {
        /// The image's manifest digest.
        digest: String,
        /// Why.
        reason: String,
    },
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
    image_mounts: RwLock<Option<Arc<dyn ImageMounts>>>,
    /// Where remote Prepares get their images ([`super::remote`]).
    pub(super) remote: RwLock<Option<Arc<dyn super::RemoteImages>>>,
    /// Serializes remote Prepares.
    pub(super) remote_lock: tokio::sync::Mutex<()>,
}

/// What a snapshot's mounts are made of, decided from its records (under
/// the metadata lock) before any image is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountPlan {
    /// The snapshot's own `fs` dir (its upper dir when writable).
    fs: PathBuf,
    /// The snapshot's `work` dir.
    work: PathBuf,
    /// Writable (an active snapshot).
    writable: bool,
    /// Layer dirs under the upper dir, nearest first.
    lowers: Vec<PathBuf>,
    /// The Starlight images (manifest digests, best first) any of whose
    /// merged view is the lowest layer; empty: none.
    images: Vec<String>,
}

impl MountPlan {
    /// The mounts, given the image's merged view (when `image` is set): a
    /// bind mount with no lower layer, a read-only bind of a single lower
    /// layer when not writable, otherwise overlayfs (nearest layer leftmost).
    fn mounts(&self, image_dir: Option<&Path>) -> Vec<Mount> {
        let mut lower: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if let Some(dir) = image_dir {
            lower.push(dir.display().to_string());
        }
        let bind = |source: String, rw: bool| Mount {
            r#type: "bind".into(),
            source,
            target: String::new(),
            options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
        };
        if lower.is_empty() {
            return vec![bind(self.fs.display().to_string(), self.writable)];
        }
        let mut options = vec![];
        if self.writable {
            options.push(format!("workdir={}", self.work.display()));
            options.push(format!("upperdir={}", self.fs.display()));
        } else if lower.len() == 1 {
            return vec![bind(lower.remove(0), false)];
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }
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
            image_mounts: RwLock::new(None),
            remote: RwLock::new(None),
            remote_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Sets where the merged views of Starlight images come from (snapshots
    /// labelled [`LABEL_IMAGE`]); without it, mounting above such a snapshot
    /// fails.
    pub fn set_image_mounts(&self, mounts: Arc<dyn ImageMounts>) {
        if let Ok(mut guard) = self.image_mounts.write() {
            *guard = Some(mounts);
        }
    }

    /// Closes the metadata database (later calls answer `Unavailable`), so
    /// the state directory can be opened again even while gRPC connections
    /// still hold this value.
    pub fn close(&self) {
        if let Ok(mut guard) = self.store.lock() {
            guard.take();
        }
    }

    pub(super) fn with_store<T>(
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

    async fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let plan = self.with_store(|s| {
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
            self.plan_of(s, &r)
        })?;
        match self.resolve(&plan, kind == Kind::Active).await {
            Ok(m) => Ok(m),
            Err(e) => {
                // The caller gets no snapshot: leave no record either.
                let _ = self.with_store(|s| Ok(s.remove(key)?));
                if let Some(dir) = plan.fs.parent() {
                    let _ = remove_tree(dir);
                }
                Err(e)
            }
        }
    }

    /// What the mounts of a record are made of. A committed snapshot mounts
    /// like a view of itself (its own layer on top, read-only). Layers are
    /// the `fs` dirs of the chain from the nearest down to the topmost
    /// snapshot labelled [`LABEL_IMAGE`], which stands for the whole image
    /// (its merged view). An active snapshot that itself carries the label
    /// is a Starlight layer being registered: it shows its own (empty) dir.
    fn plan_of(&self, s: &MetaStore, r: &Record) -> Result<MountPlan, SnapshotError> {
        let mut plan = MountPlan {
            fs: self.fs_dir(r.id),
            work: self.snapshot_dir(r.id).join("work"),
            writable: r.kind == Kind::Active,
            lowers: vec![],
            images: vec![],
        };
        if r.kind == Kind::Active && r.labels.contains_key(LABEL_IMAGE) {
            return Ok(plan);
        }
        let mut chain = s.parents(&r.key)?;
        if r.kind == Kind::Committed {
            chain.insert(0, r.clone());
        }
        for layer in chain {
            let images = image_candidates(&layer.labels);
            if !images.is_empty() {
                plan.images = images;
                break;
            }
            plan.lowers.push(self.fs_dir(layer.id));
        }
        Ok(plan)
    }

    /// The mounts of a plan, mounting an image's view first if it needs
    /// one (outside the metadata lock): the first of
    /// its candidate images that [`ImageMounts::lower_dir`] answers.
    /// With `starting` (a container's active snapshot being prepared), the
    /// image that answered is told ([`ImageMounts::container_starting`]).
    async fn resolve(&self, plan: &MountPlan, starting: bool) -> Result<Vec<Mount>, SnapshotError> {
        let Some(first) = plan.images.first().cloned() else {
            return Ok(plan.mounts(None));
        };
        let mounts = self
            .image_mounts
            .read()
            .map_err(|_| SnapshotError::Internal("image mounts lock poisoned".into()))?
            .clone()
            .ok_or_else(|| SnapshotError::ImageMount {
                digest: first.clone(),
                reason: "no image mounts configured".into(),
            })?;
        let mut reasons = vec![];
        let mut found = None;
        for digest in &plan.images {
            match mounts.lower_dir(digest).await {
                Ok(dir) => {
                    found = Some((digest.clone(), dir));
                    break;
                }
                Err(reason) => reasons.push(format!("{digest}: {reason}")),
            }
        }
        let Some((digest, found)) = found else {
            return Err(SnapshotError::ImageMount {
                digest: first,
                reason: reasons.join("; "),
            });
        };
        if starting {
            // It notes the use in the image database: off the runtime's threads.
            tokio::task::spawn_blocking(move || mounts.container_starting(&digest))
                .await
                .map_err(|e| SnapshotError::Internal(e.to_string()))?;
        }
        Ok(plan.mounts(Some(&found)))
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
        let plan = self.with_store(|s| {
            let r = s.get(&key)?;
            self.plan_of(s, &r)
        })?;
        self.resolve(&plan, false).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        // A layer of an image containerd is pulling: a Starlight image's
        // layers are committed from its bundle (see `super::remote`).
        if let Some(req) = super::remote::RemoteRequest::of(&labels) {
            if self.prepare_remote(&parent, &req).await? {
                return Err(SnapshotError::Store(StoreError::AlreadyExists(format!(
                    "target snapshot {}",
                    req.target
                ))));
            }
        }
        self.create(&key, &parent, Kind::Active, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.create(&key, &parent, Kind::View, labels).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        // containerd may commit with no labels: the Starlight labels given
        // at prepare stay on the committed record.
        let r = self.with_store(|s| {
            let mut labels: BTreeMap<String, String> = labels.into_iter().collect();
            for (k, v) in s.get(&key)?.labels {
                if k.starts_with(STARLIGHT_LABEL_PREFIX) {
                    labels.entry(k).or_insert(v);
                }
            }
            Ok(s.commit(&name, &key, labels)?)
        })?;
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
    use crate::manager::BoxFuture;
    use crate::snapshotter::LowerDirError;
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

    /// Image views for the tests: one directory per digest, counting calls.
    struct Views {
        root: PathBuf,
        calls: Mutex<Vec<String>>,
        starts: Mutex<Vec<String>>,
    }

    impl ImageMounts for Views {
        fn container_starting(&self, digest: &str) {
            self.starts.lock().unwrap().push(digest.to_string());
        }

        fn lower_dir<'a>(
            &'a self,
            digest: &'a str,
        ) -> BoxFuture<'a, Result<PathBuf, LowerDirError>> {
            self.calls.lock().unwrap().push(digest.to_string());
            let answer = if digest.starts_with("sha256:000") {
                Err(LowerDirError::Unknown(digest.to_string()))
            } else {
                Ok(self.root.join(digest.replace(':', "-")))
            };
            Box::pin(async move { answer })
        }
    }

    fn starlight(digest: &str, layer: usize) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_IMAGE.to_string(), digest.to_string()),
            (super::super::LABEL_LAYER.to_string(), layer.to_string()),
        ])
    }

    #[tokio::test]
    async fn starlight_image_snapshots_mount_the_image_view() {
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::open(&dir.path().join("state")).unwrap();
        let none = HashMap::new;
        // Registration: prepare with the labels, commit without (as
        // containerd may); the labels stay on the committed record.
        let m = sn
            .prepare(
                "ns/1/tmp0".into(),
                String::new(),
                starlight(
                    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    0,
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            (m[0].r#type.as_str(), opts(&m[0])),
            ("bind", vec!["rw", "rbind"])
        );
        sn.commit("ns/2/c0".into(), "ns/1/tmp0".into(), none())
            .await
            .unwrap();
        assert_eq!(
            sn.record("ns/2/c0").unwrap().labels,
            starlight(
                "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                0
            )
            .into_iter()
            .collect()
        );
        // A Starlight layer being registered above one: its own dir only,
        // and no image is mounted for it.
        let m = sn
            .prepare(
                "ns/3/tmp1".into(),
                "ns/2/c0".into(),
                starlight(
                    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    1,
                ),
            )
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind");
        sn.commit(
            "ns/4/c1".into(),
            "ns/3/tmp1".into(),
            starlight(
                "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                1,
            ),
        )
        .await
        .unwrap();

        // Without image mounts, nothing mounts above the image, and the
        // failed prepare leaves no record behind.
        let err = sn
            .prepare("ns/5/x".into(), "ns/4/c1".into(), none())
            .await
            .unwrap_err();
        assert!(matches!(err, SnapshotError::ImageMount { .. }), "{err}");
        assert!(sn.record("ns/5/x").is_err());

        let views = Arc::new(Views {
            root: dir.path().join("views"),
            calls: Mutex::new(vec![]),
            starts: Mutex::new(vec![]),
        });
        sn.set_image_mounts(views.clone());
        let view_a = views
            .root
            .join("sha256-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
            .display()
            .to_string();
        // A container: overlay, its upper dir over the image view alone (the
        // empty Starlight layers are skipped).
        let m = sn
            .prepare("ns/6/ctr".into(), "ns/4/c1".into(), none())
            .await
            .unwrap();
        let ctr = sn.record("ns/6/ctr").unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            opts(&m[0]),
            vec![
                format!("workdir={}", sn.snapshot_dir(ctr.id).join("work").display()),
                format!("upperdir={}", sn.fs_dir(ctr.id).display()),
                format!("lowerdir={view_a}"),
            ]
        );
        assert_eq!(sn.mounts("ns/6/ctr".into()).await.unwrap(), m);
        // The container's start was announced once (not again by Mounts).
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(*views.starts.lock().unwrap(), vec![a.to_string()]);
        // A view, and a committed image layer: a read-only bind of the view.
        for m in [
            sn.view("ns/7/v".into(), "ns/4/c1".into(), none())
                .await
                .unwrap(),
            sn.mounts("ns/4/c1".into()).await.unwrap(),
        ] {
            assert_eq!(
                (m[0].r#type.as_str(), m[0].source.as_str(), opts(&m[0])),
                ("bind", view_a.as_str(), vec!["ro", "rbind"])
            );
        }
        // Views announce no start.
        assert_eq!(views.starts.lock().unwrap().len(), 1);
        // An ordinary layer committed above the image sits over its view.
        // (Its active snapshot counts as a start: the next open after it
        // opens a trace window.)
        sn.prepare("ns/8/l".into(), "ns/4/c1".into(), none())
            .await
            .unwrap();
        assert_eq!(views.starts.lock().unwrap().len(), 2);
        sn.commit("ns/9/cl".into(), "ns/8/l".into(), none())
            .await
            .unwrap();
        let cl = sn.record("ns/9/cl").unwrap();
        assert!(cl.labels.is_empty());
        let m = sn
            .view("ns/10/v2".into(), "ns/9/cl".into(), none())
            .await
            .unwrap();
        assert_eq!(
            opts(&m[0]),
            vec![format!("lowerdir={}:{view_a}", sn.fs_dir(cl.id).display())]
        );
        // A second image sharing the bottom layer: the topmost Starlight
        // layer decides which view is mounted.
        sn.prepare(
            "ns/11/tmp".into(),
            "ns/2/c0".into(),
            starlight(
                "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                1,
            ),
        )
        .await
        .unwrap();
        sn.commit("ns/12/cb".into(), "ns/11/tmp".into(), none())
            .await
            .unwrap();
        let m = sn
            .prepare("ns/13/ctr2".into(), "ns/12/cb".into(), none())
            .await
            .unwrap();
        assert_eq!(
            opts(&m[0])[2],
            format!(
                "lowerdir={}",
                views
                    .root
                    .join("sha256-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
                    .display()
            )
        );
        // A view that cannot be mounted fails the call.
        sn.prepare(
            "ns/14/tmp".into(),
            String::new(),
            starlight(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                0,
            ),
        )
        .await
        .unwrap();
        sn.commit("ns/15/cbad".into(), "ns/14/tmp".into(), none())
            .await
            .unwrap();
        assert!(sn.mounts("ns/15/cbad".into()).await.is_err());
        let err = sn
            .prepare("ns/16/y".into(), "ns/15/cbad".into(), none())
            .await
            .unwrap_err();
        assert_eq!(
            Status::from(err).code(),
            containerd_snapshots::tonic::Code::Internal
        );
        assert!(sn.record("ns/16/y").is_err());
        let calls = views.calls.lock().unwrap().clone();
        let mut asked: Vec<&str> = calls.iter().map(String::as_str).collect();
        asked.dedup();
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked,
            [
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            ]
        );
        // A snapshot that is the top of several images mounts the first of
        // them that can be mounted.
        let mut labels = starlight(
            "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
            0,
        );
        labels.insert(
            super::super::top_of_label(
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
            ),
            "1".into(),
        );
        labels.insert(
            super::super::top_of_label(
                "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
            ),
            "1".into(),
        );
        sn.prepare("ns/18/tmp".into(), String::new(), labels)
            .await
            .unwrap();
        sn.commit("ns/19/cc".into(), "ns/18/tmp".into(), none())
            .await
            .unwrap();
        views.calls.lock().unwrap().clear();
        let m = sn
            .prepare("ns/20/ctr3".into(), "ns/19/cc".into(), none())
            .await
            .unwrap();
        assert_eq!(
            opts(&m[0])[2],
            format!(
                "lowerdir={}",
                views
                    .root
                    .join("sha256-cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc")
                    .display()
            )
        );
        assert_eq!(
            *views.calls.lock().unwrap(),
            [
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
                "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
            ]
        );
        // Ordinary snapshots never ask for an image view.
        let before = views.calls.lock().unwrap().len();
        sn.prepare("ns/17/plain".into(), String::new(), none())
            .await
            .unwrap();
        assert_eq!(views.calls.lock().unwrap().len(), before);
    }
}
