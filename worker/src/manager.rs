//! The image manager of starlightd: every image it holds has a record in
//! the image database ([`MetaDb`]) and one FUSE mount of its [`ImageFs`] at
//! `<state>/mnt/<manifest hex>`, the lower layer the snapshotter gives
//! containers of that image.
//!
//! - [`ImageManager::pull`]: opens the bundle stream, and at the header
//!   records the image, mounts it and registers it in containerd, then
//!   answers; the body goes on in the background and the record is marked
//!   complete when every content arrived.
//!   If the proxy cannot be reached, an image held complete is provisioned
//!   from local state alone.
//! - [`ImageManager::restore`]: after a restart, mounts every recorded image
//!   again (a complete one runs with no network; the pull of an incomplete
//!   one is resumed on its own, and opens of its missing files wait for it).
//! - [`ImageManager::remove`]: unmounts, unregisters, forgets the record and
//!   deletes every content no remaining image uses.
//! - [`gc`]: the bounded store: evicts images removed from containerd,
//!   unused too long, or least recently used over `max_store_bytes`.

pub mod gc;
mod status;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, OwnedFd};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use transport_quic::quic::{Client, ClientError, ClientOptions, ClientTls, TransportTuning};
use transport_quic::{Digest, Header, ImageReference, Source};
use uring_fs::{MountOptions, Session, SessionState};

use crate::api::{ImageInfo, PullAttempt, PullReport};
use crate::config::Config;
use crate::containerd::list::NamedImage;
use crate::fdstore::{self, MountFdName};
use crate::header_check::CheckedHeader;
use crate::imagefs::ImageFs;
use crate::meta::{ImageRecord, MetaDb, MetaError};
use crate::receiver::{self, ReceiveError, ReceiveOptions, ReceiveReport};
use crate::registration::RegistryError;
use crate::snapshotter::{ImageMounts, ImageUsers, LowerDirError, OverlaySnapshotter};
use crate::store::{Store, StoreError};
use crate::trace::{OpenTrace, TraceRecord};
use crate::waiters::ContentWaiters;

mod handover;
mod in_use;
mod resume;

/// The cache timeout the kernel gets for an image's (immutable) tree.
const TREE_TTL: Duration = Duration::from_secs(3600);

/// How long a silent proxy connection lives (keep-alives every fifth of it):
/// a proxy killed mid-body is noticed this long after its last packet.
pub const DEAD_PROXY: Duration = Duration::from_secs(5);

/// A boxed future, for [`ImageRegistry`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where pulled images are registered so that containers can be started
/// from them (containerd; see [`crate::registration`]).
pub trait ImageRegistry: Send + Sync + 'static {
    /// Registers image `name` from its bundle header (idempotent).
    fn register<'a>(
        &'a self,
        name: &'a str,
        header: &'a Header,
    ) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Removes image `name`'s registration.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Every image registered (namespace, name and target digest; every
    /// namespace of containerd, so CRI's `k8s.io` too), for the garbage
    /// collection; `None`: this registry cannot tell (nothing counts as
    /// removed from it).
    fn images(&self) -> BoxFuture<'_, Result<Option<Vec<NamedImage>>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }
    /// Removes one record [`ImageRegistry::images`] listed (in its own
    /// namespace); by default, [`ImageRegistry::remove`] of its name.
    fn remove_listed<'a>(
        &'a self,
        image: &'a NamedImage,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        self.remove(&image.name)
    }
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The image database failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such image.
    #[error("no image {0} (see `starlight images`)")]
    Unknown(String),
    /// An image name or digest that is not a plain reference or a
    /// `sha256:` digest.
    #[error(transparent)]
    Name(#[from] transport_quic::DigestError),
    /// A path the daemon was about to create outside its state directory.
    #[error("refusing to create {path:?}: not a plain name inside {dir}")]
    OutsideState {
        /// The directory it should be in.
        dir: PathBuf,
        /// The name refused.
        path: String,
    },
    /// The bundle could not be fetched.
    #[error("pulling {image}: {reason}")]
    Pull {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// The image could not be mounted.
    #[error("mounting {image}: {reason}")]
    Mount {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// containerd refused the image.
    #[error("registering {image} in containerd: {source}")]
    Register {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
    /// The garbage collection could not tell which images are in use.
    #[error("garbage collection: {0}")]
    Gc(String),
    /// The image is the lower layer of snapshots (containers' root
    /// filesystems): not removed without `force`.
    #[error("{image} is used by {} snapshot(s) ({}): remove those containers first, or force", .snapshots.len(), .snapshots.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    InUse {
        /// The image.
        image: String,
        /// The keys of the snapshots using it.
        snapshots: Vec<String>,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl ImageMounts for ImageManager {
    /// An image recorded but not mounted (its mount failed at start) is
    /// mounted here.
    fn lower_dir<'a>(
        &'a self,
        manifest_digest: &'a str,
    ) -> BoxFuture<'a, Result<PathBuf, LowerDirError>> {
        Box::pin(async move {
            let digest = Digest::parse(manifest_digest)?;
            if let Some(dir) = self.mounted_at(&digest) {
                return Ok(dir);
            }
            let mount_error = |source| LowerDirError::Mount {
                digest: digest.to_string(),
                source,
            };
            let record = self
                .meta
                .get(&digest)
                .map_err(|e| mount_error(ManagerError::Meta(e)))?
                .ok_or_else(|| LowerDirError::Unknown(digest.to_string()))?;
            self.ensure_mounted(&record).await.map_err(mount_error)?;
            self.mounted_at(&digest)
                .ok_or_else(|| LowerDirError::Unmounted(digest.to_string()))
        })
    }

    /// A container is starting on the image: its next open opens a trace.
    fn container_starting(&self, manifest_digest: &str) {
        let Ok(digest) = Digest::parse(manifest_digest) else {
            return;
        };
        if let Err(e) = self.meta.touch(&digest, gc::now_secs()) {
            warn!(%digest, "cannot note the image's use: {e}");
        }
        if let Some(m) = self.mounts.blocking_lock().get(&digest) {
            m.trace.arm();
        }
    }
}

/// A mounted image.
struct Mounted {
    session: Session,
    trace: Arc<OpenTrace>,
    /// The reference the image was pulled as (for its traces).
    reference: String,
}

/// What a pull asks for (see [`crate::api::Request::Pull`]).
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Held images to name (digests or references); empty: every complete one.
    pub from: Vec<String>,
    /// Answer once the body is complete.
    pub wait: bool,
    /// Record the first opens.
    pub trace: bool,
    /// Layer order instead of ranks.
    pub unordered: bool,
    /// Leave containerd alone: the image is mounted but not registered
    /// (a remote-snapshot pull, where containerd's own pull makes the
    /// image record and the snapshotter the snapshots; or a pull resumed at
    /// start, registered by its caller once containerd reconnected).
    pub skip_registration: bool,
}

/// How a pull with `wait` is going, before its final report (the API
/// server turns each into a progress line).
#[derive(Debug, Clone, PartialEq)]
pub enum PullProgress {
    /// The image is mounted and registered; the body is still arriving.
    Registered(PullReport),
}

/// The images starlightd holds.
pub struct ImageManager {
    config: Config,
    store: Arc<Store>,
    meta: MetaDb,
    waiters: Arc<ContentWaiters>,
    registry: Arc<dyn ImageRegistry>,
    client: Mutex<Option<Arc<Client>>>,
    /// Manifest digest → mount (changed under this lock only).
    mounts: tokio::sync::Mutex<HashMap<Digest, Mounted>>,
    /// Manifest digest → mount point, for [`ImageManager::lower_dir`].
    mountpoints: Mutex<HashMap<Digest, PathBuf>>,
    /// Image id hex → a live connection passed by systemd's fd store
    /// (`LISTEN_FDS`), served again by [`ImageManager::restore`].
    inherited: Mutex<HashMap<String, (OwnedFd, SessionState)>>,
    /// Traces of images removed since the last [`ImageManager::traces`].
    removed_traces: Mutex<Vec<ImageTrace>>,
    /// Pulls hold it (read) until their image is recorded and registered;
    /// a collection or a removal holds it (write), so that no pull names
    /// as held a content being deleted.
    gate: tokio::sync::RwLock<()>,
    /// Images whose bundle is arriving (never evicted meanwhile).
    receiving: Mutex<HashSet<Digest>>,
    /// The snapshotter, whose snapshots tell which images are in use.
    snapshots: std::sync::OnceLock<Arc<OverlaySnapshotter>>,
    /// Wakes the background collection.
    gc_wake: tokio::sync::Notify,
    /// The snapshots standing on the images (the snapshotter), asked
    /// before a removal.
    users: Mutex<Option<Arc<dyn ImageUsers>>>,
}

/// The trace recorder of one image, for the uploader.
#[derive(Debug, Clone)]
pub struct ImageTrace {
    /// The reference the image was pulled as.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// Its recorder.
    pub trace: Arc<OpenTrace>,
    /// The image was removed: what its recorder holds is final.
    pub removed: bool,
}

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("state_dir", &self.config.state_dir)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ManagerError + '_ {
    move |source| ManagerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `dir/name`, for a `name` that is one plain component of lowercase
/// letters, digits, `.`, `_` or `-` (not `.` or `..`): the only way the
/// manager builds a path below its state directory, so that nothing it
/// creates can land outside it.
pub fn state_child(dir: &Path, name: &str) -> Result<PathBuf, ManagerError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        );
    if !plain {
        return Err(ManagerError::OutsideState {
            dir: dir.to_path_buf(),
            path: name.chars().take(100).collect(),
        });
    }
    Ok(dir.join(name))
}

/// The distinct contents an image needs, with their sizes.
fn contents_of(header: &Header) -> HashMap<[u8; 32], u64> {
    header
        .toc
        .iter()
        .filter(|e| e.source != Source::NoContent)
        .filter_map(|e| e.sha256.map(|s| (s, e.size)))
        .collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl ImageManager {
    /// A manager over the state of `config` (content store, image
    /// database), registering images with `registry`. Nothing is mounted
    /// until [`ImageManager::restore`].
    pub fn open(
        config: Config,
        registry: Arc<dyn ImageRegistry>,
    ) -> Result<Arc<ImageManager>, ManagerError> {
        let mnt = config.mounts_dir();
        std::fs::create_dir_all(&mnt).map_err(io_err(&mnt))?;
        let store = Arc::new(Store::open(config.store_dir())?);
        let meta = MetaDb::open(&config.images_db())?;
        Ok(Arc::new(ImageManager {
            config,
            store,
            meta,
            waiters: Arc::new(ContentWaiters::new()),
            registry,
            client: Mutex::new(None),
            mounts: tokio::sync::Mutex::new(HashMap::new()),
            mountpoints: Mutex::new(HashMap::new()),
            removed_traces: Mutex::new(Vec::new()),
            inherited: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            receiving: Mutex::new(HashSet::new()),
            snapshots: std::sync::OnceLock::new(),
            gc_wake: tokio::sync::Notify::new(),
            users: Mutex::new(None),
        }))
    }

    /// Gives the garbage collection the snapshotter whose active snapshots
    /// mark images in use (set once).
    pub fn set_snapshotter(&self, snapshots: Arc<OverlaySnapshotter>) {
        let _ = self.snapshots.set(snapshots);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The content store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `<state>/mnt/<64 hex digits>`: built from the typed digest only.
    fn mountpoint(&self, digest: &Digest) -> Result<PathBuf, ManagerError> {
        state_child(&self.config.mounts_dir(), &digest.hex())
    }

    /// Where the image with manifest `digest` is mounted, if it is.
    pub fn mounted_at(&self, digest: &Digest) -> Option<PathBuf> {
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Takes the mount connections systemd passed at start
    /// ([`fdstore::take_inherited`]): [`ImageManager::restore`] serves each
    /// again instead of mounting anew. Fds with bad names are closed.
    pub fn adopt_inherited(&self, fds: Vec<(String, OwnedFd)>) -> usize {
        let mut inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        for (name, fd) in fds {
            match MountFdName::parse(&name) {
                Ok(n) => {
                    inherited.insert(n.image_hex, (fd, n.state));
                }
                Err(e) => warn!("closing an inherited fd: {e}"),
            }
        }
        inherited.len()
    }

    /// Mount options of every image mount. With systemd's fd store
    /// ([`fdstore::available`]) or the hand-over socket
    /// ([`crate::handover::enabled`]) mounts can outlive the process: their
    /// fds go to the store, or to the next daemon.
    fn mount_options(record: &ImageRecord) -> MountOptions {
        MountOptions::default()
            .fs_name(format!("starlight:{}", record.reference))
            .allow_other(true)
            .default_permissions(true)
            .survive_exit(fdstore::available() || crate::handover::enabled())
    }

    /// Serves an inherited connection of `record`'s image, if one was
    /// passed and its mount is still there.
    async fn serve_inherited(
        &self,
        record: &ImageRecord,
        mountpoint: &Path,
        fs: ImageFs,
    ) -> Option<Session> {
        let hex = record.digest().hex();
        let (fd, state) = self
            .inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hex)?;
        match Session::from_fd(fd, mountpoint, fs, state, Self::mount_options(record)).await {
            Ok(session) => {
                info!(image = %record.reference, "serving the connection kept across the restart");
                Some(session)
            }
            Err(e) => {
                warn!(image = %record.reference, "cannot serve the kept connection, mounting anew: {e}");
                let _ = fdstore::remove(&MountFdName {
                    image_hex: hex,
                    state,
                });
                None
            }
        }
    }

    /// Mounts every recorded image (after a start), and resumes in the
    /// background the pull of each image recorded incomplete (see
    /// `manager/resume.rs`). Images that cannot be mounted are logged and skipped.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, ManagerError> {
        let mut n = 0;
        let records = self.meta.images()?;
        // Before any mount is served: opens of files still to come wait.
        self.expect_resumes(&records);
        // Only a complete record vouches for a content: every other one is
        // re-verified or dropped before anything serves the store.
        let store = self.store.clone();
        let list = records.clone();
        tokio::task::spawn_blocking(move || crate::recovery::recover(&store, &list))
            .await
            .map_err(|e| ManagerError::Io {
                path: self.config.store_dir(),
                source: std::io::Error::other(e),
            })??;
        for record in &records {
            let missing = contents_of(&record.header)
                .keys()
                .filter(|s| !self.store.has(s))
                .count();
            if let Err(e) = self.ensure_mounted(record).await {
                error!(image = %record.reference, "cannot restore the image: {e}");
                continue;
            }
            n += 1;
            if record.complete && missing == 0 {
                info!(image = %record.reference, digest = %record.digest(), "image restored");
            } else {
                warn!(
                    image = %record.reference,
                    digest = %record.digest(),
                    missing,
                    "image restored incomplete: resuming its pull; opens of its {missing} missing contents wait for it"
                );
            }
        }
        let resumed = self.resume_incomplete(&records);
        if resumed > 0 {
            info!(
                images = resumed,
                "resuming the pulls cut short by the last stop"
            );
        }
        Ok(n)
    }

    /// Mounts `record`'s image unless it is mounted; returns its trace.
    async fn ensure_mounted(&self, record: &ImageRecord) -> Result<Arc<OpenTrace>, ManagerError> {
        let digest = record.digest();
        let mut mounts = self.mounts.lock().await;
        if let Some(m) = mounts.get(&digest) {
            return Ok(m.trace.clone());
        }
        let mountpoint = self.mountpoint(&digest)?;
        // A kept mount is not touched before it is served again: a stat
        // of it would wait for this very process.
        if !uring_fs::mounts::is_fuse_mounted(&mountpoint).unwrap_or(false) {
            std::fs::create_dir_all(&mountpoint).map_err(io_err(&mountpoint))?;
        }
        let trace = OpenTrace::new(&record.header);
        let trace = Arc::new(if self.config.traces.enabled {
            trace.with_windows(crate::trace_upload::window_limits(&self.config.traces))
        } else {
            trace
        });
        let mount_err = |reason: String| ManagerError::Mount {
            image: record.reference.to_string(),
            reason,
        };
        let fs = ImageFs::new(
            &record.header,
            self.store.clone(),
            self.waiters.clone(),
            TREE_TTL,
        )
        .map_err(|e| mount_err(format!("its table of contents: {e}")))?
        .with_trace(trace.clone());
        let kept = self
            .inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&digest.hex());
        let (session, fs) =
            if kept && uring_fs::mounts::is_fuse_mounted(&mountpoint).unwrap_or(false) {
                let again = ImageFs::new(
                    &record.header,
                    self.store.clone(),
                    self.waiters.clone(),
                    TREE_TTL,
                )
                .map_err(|e| mount_err(format!("its table of contents: {e}")))?
                .with_trace(trace.clone());
                (self.serve_inherited(record, &mountpoint, again).await, fs)
            } else {
                (None, fs)
            };
        let session = match session {
            Some(session) => session,
            None => {
                // A mount left by an earlier run that died is dead: detach it.
                if uring_fs::mounts::is_fuse_mounted(&mountpoint).unwrap_or(false) {
                    warn!(mountpoint = %mountpoint.display(), "detaching a stale mount");
                    uring_fs::mounts::detach_unmount(&mountpoint).map_err(io_err(&mountpoint))?;
                }
                let session = Session::mount(&mountpoint, fs, Self::mount_options(record))
                    .await
                    .map_err(|e| mount_err(e.to_string()))?;
                // Kept in systemd's fd store if there is one (a mount made
                // for the hand-over socket alone is not announced).
                let fd = session.clone_fd().ok().filter(|_| fdstore::available());
                if let Some(fd) = fd {
                    let name = MountFdName {
                        image_hex: digest.hex(),
                        state: session.state(),
                    };
                    if let Err(e) = fdstore::store(&name, fd.as_fd()) {
                        warn!(image = %record.reference, "cannot keep the mount in the fd store: {e}");
                    }
                }
                session
            }
        };
        info!(image = %record.reference, mountpoint = %mountpoint.display(), "image mounted");
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, session.mountpoint().to_path_buf());
        mounts.insert(
            digest,
            Mounted {
                session,
                trace: trace.clone(),
                reference: record.reference.to_string(),
            },
        );
        Ok(trace)
    }

    fn client(&self) -> Result<Arc<Client>, String> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        // A proxy that dies without closing the connection is noticed within
        // DEAD_PROXY (keep-alives unanswered), then waiting opens get the grace.
        let options = ClientOptions {
            transport: TransportTuning {
                idle_timeout: DEAD_PROXY,
                keep_alive: Some(DEAD_PROXY / 5),
                ..TransportTuning::default()
            },
            ..ClientOptions::default()
        };
        let c = Arc::new(
            Client::with_options(ClientTls::CaFile(self.config.ca_file.clone()), options)
                .map_err(|e| e.to_string())?,
        );
        *guard = Some(c.clone());
        Ok(c)
    }

    /// With `warm_connection` set: a task that keeps an authenticated connection to
    /// the proxy open (opened now, kept alive, reopened with the reconnect backoff
    /// when it fails), which every pull then reuses. `None` when it is off or the
    /// client cannot be made. Abort the task to close it.
    pub fn keep_warm(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.config.warm_connection {
            return None;
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                warn!("no warm connection to the proxy: {e}");
                return None;
            }
        };
        let proxy = self.config.proxy.clone();
        let server_name = self.config.server_name.clone();
        let token = self.config.token.clone();
        let (retry, max_retry) = (self.config.backoff.initial, self.config.backoff.max);
        // The name is resolved again for every new connection, so a proxy
        // that moves (DNS) is followed.
        Some(tokio::spawn(async move {
            let mut wait = retry;
            loop {
                let opened = match proxy.resolve().await {
                    Ok(addr) => client
                        .warm(addr, &server_name, &token)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("cannot resolve {proxy}: {e}")),
                };
                match opened {
                    Ok(conn) => {
                        wait = retry;
                        debug!("warm connection to the proxy ready");
                        let why = conn.closed().await;
                        debug!(reason = %why, "warm connection closed: reopening");
                    }
                    Err(e) => {
                        debug!(error = %e, ?wait, "cannot open the warm connection");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(max_retry.max(retry));
                    }
                }
            }
        }))
    }

    /// The record of the image with manifest digest `digest`, if held.
    pub fn record(&self, digest: &Digest) -> Result<Option<ImageRecord>, ManagerError> {
        Ok(self.meta.get(digest)?)
    }

    /// The record named by `image`: a reference or a manifest digest.
    fn find(&self, image: &str) -> Result<ImageRecord, ManagerError> {
        let reference = ImageReference::parse(image)?;
        if let Some(r) = self.meta.by_reference(&reference)? {
            return Ok(r);
        }
        if let Some(digest) = reference.as_digest() {
            if let Some(r) = self.meta.get(&digest)? {
                return Ok(r);
            }
        }
        Err(ManagerError::Unknown(reference.to_string()))
    }

    /// Pulls `image`: answers once it is registered (sending nothing to
    /// `progress`), or with `wait` once the body is over (sending
    /// [`PullProgress::Registered`] to `progress` first).
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        options: PullOptions,
        progress: mpsc::UnboundedSender<PullProgress>,
    ) -> Result<PullReport, ManagerError> {
        let t0 = Instant::now();
        let gate = self.gate.read().await;
        let reference = ImageReference::parse(image)?;
        let image = reference.as_str();
        let pull_err = |reason: String| ManagerError::Pull {
            image: image.to_string(),
            reason,
        };
        let held_images: Vec<String> = if options.from.is_empty() {
            self.meta
                .images()?
                .into_iter()
                .filter(|r| r.complete && r.contents_present(&self.store))
                .map(|r| r.digest().to_string())
                .collect()
        } else {
            let mut held = Vec::new();
            for f in &options.from {
                let from = ImageReference::parse(f)?;
                held.push(match self.meta.by_reference(&from)? {
                    Some(r) => r.digest().to_string(),
                    None => from.to_string(),
                });
            }
            held
        };
        // An image pulled before but incomplete (a receive that gave up, a
        // restart): the contents it already has are named held, verified
        // when stored (or re-verified at start).
        let held_payloads: Vec<[u8; 32]> = match self.meta.by_reference(&reference)? {
            Some(r) if !r.complete => {
                let mut held: Vec<[u8; 32]> = contents_of(&r.header)
                    .into_keys()
                    .filter(|s| self.store.has(s))
                    .collect();
                held.sort_unstable();
                held
            }
            _ => Vec::new(),
        };
        let held_payloads_n = held_payloads.len();
        if held_payloads_n > 0 {
            info!(
                image,
                held = held_payloads_n,
                "resuming a partly present image"
            );
        }
        let client = self.client().map_err(pull_err)?;
        let receiving = receiver::start_gated(
            client,
            self.config.proxy.clone(),
            transport_quic::Request {
                token: self.config.token.clone(),
                image: image.to_string(),
                platform: None,
                held_images,
                held_payloads,
                unordered: options.unordered,
            },
            self.store.clone(),
            self.waiters.clone(),
            ReceiveOptions {
                server_name: self.config.server_name.clone(),
                grace: self.config.grace,
                backoff: self.config.backoff,
            },
        );
        let done = receiving.done;
        let (header, admit) = match receiving.header.await {
            Ok(h) => h,
            Err(_) => {
                let (reason, unreachable) = match done.await {
                    Ok(Err(e)) => {
                        let unreachable = matches!(
                            &e,
                            ReceiveError::Resolve(_)
                                | ReceiveError::Fetch(
                                    ClientError::Connect { .. }
                                        | ClientError::Connection(_)
                                        | ClientError::Send(_)
                                )
                        );
                        (e.to_string(), unreachable)
                    }
                    Ok(Ok(_)) => ("the bundle ended without a header".into(), false),
                    Err(e) => (e.to_string(), false),
                };
                // The proxy is out of reach: an image held complete still
                // provisions, from local state only (paper §4.5).
                if unreachable {
                    if let Some(record) = self.meta.by_reference(&reference)? {
                        if record.complete && record.contents_present(&self.store) {
                            warn!(image, "the proxy is unreachable ({reason}); using the complete local image");
                            return self.pull_local(record, &options, t0).await;
                        }
                    }
                }
                return Err(pull_err(reason));
            }
        };
        let header_secs = secs(t0.elapsed());
        crate::metrics::global().header_arrived(t0.elapsed());
        // The header passed CheckedHeader (in the receiver) before it came
        // here: its digest is typed, nothing of it was stored yet.
        let digest = header.digest();
        let existing = self.meta.get(&digest)?;
        let already_complete = existing
            .as_ref()
            .is_some_and(|r| r.complete && r.contents_present(&self.store));
        // A header that differs from the recorded one only in which contents
        // are payloads and which are held (a resumed pull) continues the
        // record: the recorded header stays.
        let header_kept = match existing {
            Some(old) if old.header != *header => {
                match receiver::check_resumed(&old.header, &header) {
                    Ok(()) => old.header,
                    Err(e) => {
                        done.abort();
                        return Err(pull_err(format!(
                            "the bundle does not continue the recorded image: {e}"
                        )));
                    }
                }
            }
            _ => CheckedHeader::clone(&header),
        };
        let record = ImageRecord {
            reference: reference.clone(),
            header: header_kept,
            complete: already_complete,
        };
        // An image already held under this digest keeps its record: a
        // differing header is refused (and the receive stops, never admitted).
        if let Err(e) = self.meta.put_new_or_same(&record) {
            done.abort();
            return Err(match e {
                MetaError::Conflict { .. } => pull_err(e.to_string()),
                other => other.into(),
            });
        }
        self.receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest);
        let _ = self.meta.touch(&digest, gc::now_secs());
        // A bounded store makes room before the body is admitted, so the
        // store stays under `max_store_bytes` while the bundle arrives. The
        // record is written and the image is receiving (in use, every
        // content it names counted), so the collection may run now.
        let gate = if self.config.gc.max_store_bytes.is_some() && !already_complete {
            drop(gate);
            if let Err(e) = self.collect(false).await {
                warn!(image, "making room before the body: {e}");
            }
            None
        } else {
            Some(gate)
        };
        admit.admit();
        let trace = self.ensure_mounted(&record).await?;
        if options.trace {
            trace.enable();
        }
        if !options.skip_registration {
            self.register_retrying(image, &header).await?;
        }
        let mut report = PullReport {
            image: image.to_string(),
            digest: digest.to_string(),
            entries: header.toc.len(),
            payloads: header.payloads.len(),
            payload_bytes: header.payloads.iter().map(|p| p.compressed_len).sum(),
            content_bytes: header.payloads.iter().map(|p| p.size).sum(),
            header_secs,
            registered_secs: secs(t0.elapsed()),
            complete_secs: None,
            bytes_received: None,
            complete: None,
            held_payloads: held_payloads_n,
            payloads_received: None,
            payload_bytes_received: None,
            attempts: None,
        };
        info!(
            image,
            %digest,
            payloads = report.payloads,
            header_s = report.header_secs,
            registered_s = report.registered_secs,
            "image registered; the body continues in the background"
        );
        crate::metrics::global().image_ready(t0.elapsed());
        // Recorded and registered: a collection may run (and does, now,
        // unless one just made room for this body).
        let made_room = gate.is_none();
        drop(gate);
        if !made_room {
            self.gc_soon();
        }
        let this = self.clone();
        let (image_owned, digest_owned) = (image.to_string(), digest);
        let finishing = tokio::spawn(async move {
            let r = match done.await {
                Ok(Ok(report)) => Some(report),
                Ok(Err(e)) => {
                    error!(image = %image_owned, "receiving failed: {e}");
                    None
                }
                Err(e) => {
                    error!(image = %image_owned, "the receive task failed: {e}");
                    None
                }
            };
            let complete = match r.clone() {
                Some(rep) => {
                    let this = this.clone();
                    let (image, digest) = (image_owned.clone(), digest_owned);
                    tokio::task::spawn_blocking(move || this.finish(&image, &digest, &rep))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            };
            record_receive_metrics(r.as_ref(), complete, t0.elapsed());
            this.receiving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest_owned);
            this.gc_soon();
            (r, complete, t0.elapsed())
        });
        if options.wait {
            let _ = progress.send(PullProgress::Registered(report.clone()));
            let (r, complete, elapsed) = finishing.await.map_err(|e| pull_err(e.to_string()))?;
            report.complete_secs = Some(secs(elapsed));
            report.bytes_received = r.as_ref().map(|r| r.bytes_received);
            report.payloads_received = r.as_ref().map(|r| r.stored);
            report.payload_bytes_received = r.as_ref().map(|r| r.payload_bytes);
            report.attempts = r.map(|r| {
                r.attempts
                    .into_iter()
                    .map(|a| PullAttempt {
                        bytes_received: a.bytes_received,
                        payload_bytes: a.payload_bytes,
                        payloads_announced: a.payloads_announced,
                        payloads_stored: a.payloads_stored,
                        payload_bytes_stored: a.payload_bytes_stored,
                        error: a.error,
                    })
                    .collect()
            });
            report.complete = Some(complete);
        }
        Ok(report)
    }

    /// Provisions a complete image from local state: mounted and registered
    /// again, nothing to receive.
    async fn pull_local(
        &self,
        record: ImageRecord,
        options: &PullOptions,
        t0: Instant,
    ) -> Result<PullReport, ManagerError> {
        let _ = self.meta.touch(&record.digest(), gc::now_secs());
        let tracer = self.ensure_mounted(&record).await?;
        if options.trace {
            tracer.enable();
        }
        if !options.skip_registration {
            self.register_retrying(record.reference.as_str(), &record.header)
                .await?;
        }
        let elapsed = secs(t0.elapsed());
        Ok(PullReport {
            image: record.reference.to_string(),
            digest: record.digest().to_string(),
            entries: record.header.toc.len(),
            payloads: 0,
            payload_bytes: 0,
            content_bytes: 0,
            header_secs: elapsed,
            registered_secs: elapsed,
            complete_secs: Some(elapsed),
            bytes_received: Some(0),
            complete: Some(true),
            held_payloads: 0,
            payloads_received: Some(0),
            payload_bytes_received: Some(0),
            attempts: Some(Vec::new()),
        })
    }

    /// Records the end of a receive; returns whether the image is complete.
    /// Blocking (syncs the store).
    fn finish(&self, image: &str, digest: &Digest, report: &ReceiveReport) -> bool {
        let mut record = match self.meta.get(digest) {
            Ok(Some(r)) => r,
            Ok(None) => return false, // removed meanwhile
            Err(e) => {
                error!(image, "image database: {e}");
                return false;
            }
        };
        let mut complete = report.stream_error.is_none()
            && report.failed.is_empty()
            && record.contents_present(&self.store);
        if complete {
            // Durable before recorded complete (contents are not synced one by one).
            if let Err(e) = self.store.sync() {
                error!(image, "cannot sync the content store: {e}");
                complete = false;
            }
        }
        if complete {
            record.complete = true;
            if let Err(e) = self.meta.put(&record) {
                error!(image, "cannot record the image as complete: {e}");
                return false;
            }
            info!(
                image,
                stored = report.stored,
                bytes = report.bytes_received,
                payload_bytes = report.payload_bytes,
                attempts = report.attempts.len(),
                secs = secs(report.time_to_end),
                "image complete"
            );
        } else {
            error!(
                image,
                stored = report.stored,
                failed = report.failed.len(),
                reason = report.stream_error.as_deref().unwrap_or("corrupt payloads"),
                "image incomplete: opens of its missing files fail with EIO"
            );
        }
        complete
    }

    /// Every image held.
    pub fn images(&self) -> Result<Vec<ImageInfo>, ManagerError> {
        let mut out = Vec::new();
        for r in self.meta.images()? {
            let contents = contents_of(&r.header);
            let (mut held, mut bytes) = (0, 0);
            for (sha, size) in &contents {
                if self.store.has(sha) {
                    held += 1;
                    bytes += size;
                }
            }
            out.push(ImageInfo {
                name: r.reference.to_string(),
                digest: r.digest().to_string(),
                complete: r.complete && held == contents.len(),
                files: r.header.toc.len(),
                contents: contents.len(),
                contents_held: held,
                bytes,
                mountpoint: self.mountpoint(&r.digest())?.display().to_string(),
            });
        }
        Ok(out)
    }

    /// Tells the manager who uses its images' mounts (the snapshotter):
    /// [`ImageManager::remove`] refuses an image in use unless forced.
    pub fn set_image_users(&self, users: Arc<dyn ImageUsers>) {
        *self.users.lock().unwrap_or_else(|p| p.into_inner()) = Some(users);
    }

    /// Returns and clears the trace of `image`.
    pub async fn take_trace(&self, image: &str) -> Result<Vec<TraceRecord>, ManagerError> {
        let digest = self.find(image)?.digest();
        let mounts = self.mounts.lock().await;
        let m = mounts
            .get(&digest)
            .ok_or_else(|| ManagerError::Unknown(image.to_string()))?;
        Ok(m.trace.take())
    }

    /// The trace recorders of every mounted image, and of the images
    /// removed since the last call (each returned once).
    pub async fn traces(&self) -> Vec<ImageTrace> {
        let mounts = self.mounts.lock().await;
        let mut all: Vec<ImageTrace> = mounts
            .iter()
            .map(|(d, m)| ImageTrace {
                image: m.reference.clone(),
                digest: d.to_string(),
                trace: m.trace.clone(),
                removed: false,
            })
            .collect();
        all.append(
            &mut self
                .removed_traces
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        all
    }

    /// Stops serving every image without unmounting (a restart with the
    /// fd store): the store's copies keep the connections, which the next
    /// starlightd serves again.
    pub async fn hand_over_all(&self) {
        let mut mounts = self.mounts.lock().await;
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (_, m) in mounts.drain() {
            match m.session.hand_over().await {
                Ok(handed) => drop(handed),
                Err(e) => warn!("cannot keep a mount across the restart: {e}"),
            }
        }
    }

    /// Unmounts every image (at shutdown).
    pub async fn unmount_all(&self) {
        let mut mounts = self.mounts.lock().await;
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (_, m) in mounts.drain() {
            m.session.shutdown().await;
        }
    }
}

/// The metrics of a pull whose receive ended (`report` is `None` when the
/// receive task itself failed).
fn record_receive_metrics(report: Option<&ReceiveReport>, complete: bool, elapsed: Duration) {
    use crate::metrics::PullOutcome;
    let m = crate::metrics::global();
    let Some(r) = report else {
        m.pull_finished(PullOutcome::Incomplete, 0, None);
        return;
    };
    let outcome = if complete {
        PullOutcome::Complete
    } else {
        PullOutcome::Incomplete
    };
    m.pull_finished(outcome, r.bytes_received, Some(elapsed));
    let resent: u64 = r
        .attempts
        .iter()
        .filter(|a| a.error.is_some())
        .map(|a| a.payload_bytes.saturating_sub(a.payload_bytes_stored))
        .sum();
    m.streams(
        r.stored as u64,
        r.attempts.len().saturating_sub(1) as u64,
        resent,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_children_are_plain_names_only() {
        let dir = Path::new("/var/lib/starlight/mnt");
        let hex = Digest::of(b"x").hex();
        assert_eq!(state_child(dir, &hex).unwrap(), dir.join(&hex));
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "/root/.ssh",
            "a/b",
            "sha256:00",
            "A",
            "a\0",
            "a b",
        ] {
            assert!(
                matches!(
                    state_child(dir, bad),
                    Err(ManagerError::OutsideState { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(state_child(dir, &"a".repeat(256)).is_err());
    }
}
