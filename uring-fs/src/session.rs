//! Mounting a [`Filesystem`] and serving it on the current tokio runtime.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};

use crate::dispatch;
use crate::fs::Filesystem;
use crate::mounts;
use crate::transport::{KernelOffers, Transport};

/// Serializes mounts within the process (see [`Session::mount`]).
static MOUNT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long [`Session::shutdown`] waits for request tasks to let go.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/dev/fuse` is missing: no FUSE in this kernel or container.
    #[error("/dev/fuse is missing")]
    NoFuseDevice,
    /// The mount point is not a directory.
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A mount option contains a comma.
    #[error("invalid mount option value {0:?}")]
    InvalidOption(String),
    /// Mounting or setting up the session fd failed.
    #[error("mounting {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The blocking mount task did not complete.
    #[error("mount task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Options of a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    read_only: bool,
    allow_other: bool,
    default_permissions: bool,
    fs_name: String,
    max_write: u32,
    readers: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: true,
            allow_other: false,
            default_permissions: false,
            fs_name: "uring-fs".to_owned(),
            max_write: 128 * 1024,
            readers: 4,
        }
    }
}

impl MountOptions {
    /// Mount read-only (the default).
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Let users other than the mounter in (`allow_other`).
    pub fn allow_other(mut self, on: bool) -> Self {
        self.allow_other = on;
        self
    }

    /// Let the kernel check permissions by the mode bits (`default_permissions`).
    pub fn default_permissions(mut self, on: bool) -> Self {
        self.default_permissions = on;
        self
    }

    /// The name shown as the mount's source in the mount table.
    pub fn fs_name(mut self, name: impl Into<String>) -> Self {
        self.fs_name = name.into();
        self
    }

    /// The largest write the kernel sends; it also sizes every request
    /// buffer and caps reads (`max_pages`). Default 128 KiB.
    pub fn max_write(mut self, bytes: u32) -> Self {
        self.max_write = bytes;
        self
    }

    /// Number of tasks reading requests from `/dev/fuse` (at least 1).
    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n.max(1);
        self
    }

    fn kernel_config(&self) -> Result<polyfuse::KernelConfig, MountError> {
        if self.fs_name.contains([',', '\0']) {
            return Err(MountError::InvalidOption(self.fs_name.clone()));
        }
        let mut config = polyfuse::KernelConfig::default();
        config
            .fusermount_path(fusermount_program())
            .auto_unmount(true)
            .max_write(self.max_write)
            .mount_option(&format!("fsname={}", self.fs_name));
        if self.read_only {
            config.mount_option("ro");
        }
        if self.allow_other {
            config.mount_option("allow_other");
        }
        if self.default_permissions {
            config.mount_option("default_permissions");
        }
        Ok(config)
    }
}

/// `fusermount3` where it is installed (fuse3), else `fusermount`.
fn fusermount_program() -> &'static str {
    ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("fusermount")
}

/// The session fd, shared by the reader tasks.
struct FuseFd(Arc<polyfuse::Session>);

impl AsRawFd for FuseFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A mounted filesystem being served on the tokio runtime it was mounted
/// from. Unmounts on [`Session::shutdown`], on drop, and — through
/// [`Session::shutdown_on_signal`] — on SIGINT/SIGTERM.
pub struct Session {
    mountpoint: PathBuf,
    transport: Transport,
    stop: watch::Sender<bool>,
    tasks_gone: mpsc::Receiver<()>,
    conn: Option<Arc<polyfuse::Session>>,
    closed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("mountpoint", &self.mountpoint)
            .field("transport", &self.transport)
            .finish()
    }
}

impl Session {
    /// Mounts `fs` at `mountpoint` (an existing directory) and starts serving
    /// it on the current tokio runtime. Needs root (or a setuid
    /// `fusermount3`) and `/dev/fuse`.
    pub async fn mount<F: Filesystem>(
        mountpoint: impl AsRef<Path>,
        fs: F,
        options: MountOptions,
    ) -> Result<Session, MountError> {
        if !Path::new("/dev/fuse").exists() {
            return Err(MountError::NoFuseDevice);
        }
        let given = mountpoint.as_ref();
        let mountpoint = given.canonicalize().map_err(|source| MountError::Mount {
            path: given.to_owned(),
            source,
        })?;
        if !mountpoint.is_dir() {
            return Err(MountError::NotADirectory(mountpoint));
        }
        let config = options.kernel_config()?;
        let point = mountpoint.clone();
        let conn = tokio::task::spawn_blocking(move || {
            // polyfuse receives the session fd without CLOEXEC and sets it a
            // moment later; a concurrent mount's fork in between would leak
            // the fd into that mount's fusermount and keep this connection
            // alive after close. One mount at a time closes the window.
            let _one_at_a_time = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            polyfuse::Session::mount(point, config)
        })
        .await?
        .map_err(|source| MountError::Mount {
            path: mountpoint.clone(),
            source,
        })?;
        let conn = Arc::new(conn);
        let setup = set_nonblocking(conn.as_raw_fd()).and_then(|()| {
            // SAFETY: `FuseFd` holds the polyfuse session, which keeps the fd
            // open and unchanged for as long as the `FuseFd` (and so the
            // `AsyncFd`) lives.
            unsafe {
                AsyncFd::register_with_interest(FuseFd(Arc::clone(&conn)), Interest::READABLE)
            }
            .map_err(io::Error::from)
        });
        let fd = match setup {
            Ok(fd) => Arc::new(fd),
            Err(source) => {
                drop(conn);
                let _ = mounts::detach_unmount(&mountpoint);
                return Err(MountError::Mount {
                    path: mountpoint,
                    source,
                });
            }
        };

        let fs = Arc::new(fs);
        let (stop, stop_rx) = watch::channel(false);
        let (alive, tasks_gone) = mpsc::channel(1);
        for _ in 0..options.readers {
            tokio::spawn(read_requests(
                Arc::clone(&fd),
                Arc::clone(&fs),
                stop_rx.clone(),
                alive.clone(),
            ));
        }
        let transport = Transport::DevFuse {
            readers: options.readers,
        };
        let offers = KernelOffers::probe();
        tracing::info!(
            mountpoint = %mountpoint.display(),
            %transport,
            kernel_io_uring = offers.io_uring,
            "mounted (the io_uring transport is not built yet)"
        );
        Ok(Session {
            mountpoint,
            transport,
            stop,
            tasks_gone,
            conn: Some(conn),
            closed: false,
        })
    }

    /// The mount point (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The transport chosen at mount time.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Stops serving and unmounts: requests still waiting are dropped, so
    /// their callers get an error (`ENOTCONN`) instead of hanging.
    pub async fn shutdown(mut self) {
        self.close().await;
    }

    /// Installs SIGINT and SIGTERM handlers now (for a binary serving a
    /// mount); the returned future serves until one of them arrives, then
    /// shuts down as [`Session::shutdown`] does.
    pub fn shutdown_on_signal(mut self) -> io::Result<impl Future<Output = ()> + Send> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: unmounting"),
                _ = terminate.recv() => tracing::info!("SIGTERM: unmounting"),
            }
            self.close().await;
        })
    }

    async fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.stop.send_replace(true);
        // Every task holds a sender: recv() yields None once all are gone.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks_gone.recv())
            .await
            .is_err()
        {
            tracing::warn!("request tasks did not stop in time; unmounting anyway");
        }
        // Dropping the last reference closes the session fd (aborting the
        // connection) and runs fusermount; both block, so not on a worker.
        if let Some(conn) = self.conn.take() {
            let _ = tokio::task::spawn_blocking(move || drop(conn)).await;
        }
        self.detach_if_mounted();
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
    }

    fn detach_if_mounted(&self) {
        if mounts::is_fuse_mounted(&self.mountpoint).unwrap_or(true) {
            if let Err(err) = mounts::detach_unmount(&self.mountpoint) {
                tracing::debug!(%err, "detaching the mount");
            }
        }
    }
}

impl Drop for Session {
    /// Stops the tasks (their waiting requests are dropped as the runtime
    /// polls them, which aborts the connection) and detaches the mount now.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.stop.send_replace(true);
        self.conn = None;
        self.detach_if_mounted();
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resolves once `stop` is set or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One reader task: takes requests off the fd and spawns a task for each.
/// Loops on `readable()` + `try_io`, so no wake-up is lost after readiness
/// is cleared by a `WouldBlock`.
async fn read_requests<F: Filesystem>(
    fd: Arc<AsyncFd<FuseFd>>,
    fs: Arc<F>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let mut guard = tokio::select! {
            _ = stopped(&mut stop) => return,
            ready = fd.readable() => match ready {
                Ok(guard) => guard,
                Err(err) => {
                    tracing::error!(%err, "polling /dev/fuse");
                    return;
                }
            },
        };
        let request = match guard.try_io(|inner| inner.get_ref().0.next_request()) {
            Err(_would_block) => continue,
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => {
                tracing::debug!("the filesystem was unmounted");
                return;
            }
            Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(err)) => {
                tracing::error!(%err, "reading /dev/fuse");
                return;
            }
        };
        let fs = Arc::clone(&fs);
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            tokio::select! {
                _ = stopped(&mut stop) => {}
                _ = dispatch::serve(&*fs, &request) => {}
            }
        });
    }
}
