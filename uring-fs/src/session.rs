//! Mounting a [`Filesystem`] and serving it on the current tokio runtime.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};

use crate::abi::{self, init, InHeader};
use crate::conn::{self, Device, Negotiated, Wanted};
use crate::dispatch::{self, ConnCtx, Outcome, Request};
use crate::fs::Filesystem;
use crate::handover::{self, HandOver, SessionState};
use crate::mounts;
use crate::passthrough::Backings;
use crate::splice::FileReplies;
use crate::transport::{KernelOffers, Transport, TransportChoice};
use crate::uring;

/// Serializes mounts within the process: the INIT handshake happens on a
/// blocking thread, and fusermount children are spawned one at a time.
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
    /// [`TransportChoice::IoUring`] was asked for and could not be had.
    #[error("the io_uring transport is unavailable: {0}")]
    TransportUnavailable(String),
    /// A hand-over was asked of a session that cannot give one, or an
    /// inherited connection cannot be served.
    #[error("hand-over: {0}")]
    HandOver(String),
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
    transport: TransportChoice,
    passthrough: bool,
    splice: bool,
    readdirplus: bool,
    uring_depth: usize,
    survive_exit: bool,
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
            transport: TransportChoice::Auto,
            passthrough: true,
            splice: true,
            readdirplus: true,
            uring_depth: 1024,
            survive_exit: false,
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
    /// buffer and caps reads (`max_pages`). Default 128 KiB, at least 4 KiB.
    pub fn max_write(mut self, bytes: u32) -> Self {
        self.max_write = bytes.max(4096);
        self
    }

    /// Number of tasks reading requests from `/dev/fuse` (at least 1).
    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n.max(1);
        self
    }

    /// The transport to use (default [`TransportChoice::Auto`]).
    pub fn transport(mut self, choice: TransportChoice) -> Self {
        self.transport = choice;
        self
    }

    /// Register the local backing files that [`Filesystem::open_backed`]
    /// names for FUSE passthrough, where the kernel offers it (default on;
    /// needs `CAP_SYS_ADMIN`). Off: such files are served by reads.
    pub fn passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }

    /// Splice file-backed read replies over `/dev/fuse` (default on); off:
    /// `pread` + `writev`.
    pub fn splice(mut self, on: bool) -> Self {
        self.splice = on;
        self
    }

    /// Offer readdirplus to the kernel (default on).
    pub fn readdirplus(mut self, on: bool) -> Self {
        self.readdirplus = on;
        self
    }

    /// Ring entries per io_uring queue (default 1024): how many requests of
    /// one queue may be in the filesystem's hands (parked) at once.
    pub fn uring_queue_depth(mut self, n: usize) -> Self {
        self.uring_depth = n.clamp(1, 8192);
        self
    }

    /// Let the mount outlive this process (default off), so that its
    /// connection can be handed to a successor ([`Session::hand_over`],
    /// [`Session::clone_fd`], [`Session::from_fd`]): no `auto_unmount`
    /// helper and no unmount watcher; the mount then lives as long as any
    /// copy of its `/dev/fuse` fd. Only the `/dev/fuse` transport can be
    /// handed over ([`TransportChoice::Auto`] picks it;
    /// [`TransportChoice::IoUring`] is refused). [`Session::shutdown`] and
    /// drop still unmount.
    pub fn survive_exit(mut self, on: bool) -> Self {
        self.survive_exit = on;
        self
    }

    fn mount_options(&self) -> Result<String, MountError> {
        if conn::check_option(&self.fs_name).is_err() {
            return Err(MountError::InvalidOption(self.fs_name.clone()));
        }
        let mut opts = vec![
            format!("fsname={}", self.fs_name),
            "subtype=uring-fs".to_owned(),
            format!("max_read={}", self.max_write),
        ];
        opts.push(if self.read_only { "ro" } else { "rw" }.to_owned());
        if self.allow_other {
            opts.push("allow_other".to_owned());
        }
        if self.default_permissions {
            opts.push("default_permissions".to_owned());
        }
        Ok(opts.join(","))
    }
}

/// Everything a request task needs.
struct Shared<F> {
    fs: F,
    conn: ConnCtx,
    device: Arc<Device>,
    files: FileReplies,
}

/// The connection, as long as the session holds it.
struct Conn {
    socket: Option<OwnedFd>,
    child: Option<Child>,
    queues: Option<uring::Queues>,
    /// The unmount watcher's pipe (it watches once this closes) and process.
    watcher: Option<(OwnedFd, Child)>,
}

impl Conn {
    /// Stops the rings, closes our references to the fd and fusermount's
    /// socket (fusermount then unmounts and exits). Blocking.
    fn close(mut self) {
        if let Some(q) = self.queues.take() {
            q.stop();
        }
        drop(self.socket.take());
        let watcher = self.watcher.take().map(|(pipe, child)| {
            drop(pipe);
            child
        });
        let children: Vec<Child> = self.child.take().into_iter().chain(watcher).collect();
        // fusermount exits once it has unmounted, the watcher once the path
        // is no FUSE mount any more: reap them without waiting here.
        std::thread::spawn(move || {
            for mut child in children {
                let _ = child.wait();
            }
        });
    }
}

/// A mounted filesystem being served on the tokio runtime it was mounted
/// from. Unmounts on [`Session::shutdown`], on drop, and — through
/// [`Session::shutdown_on_signal`] — on SIGINT/SIGTERM. If the process dies,
/// the kernel aborts the connection (callers get `ENOTCONN`) and the
/// `fusermount3` helper left behind (auto_unmount) unmounts.
pub struct Session {
    mountpoint: PathBuf,
    device: Arc<Device>,
    negotiated: Negotiated,
    survive_exit: bool,
    transport: Transport,
    passthrough: bool,
    stop: watch::Sender<bool>,
    tasks_gone: mpsc::Receiver<()>,
    conn: Option<Conn>,
    closed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("mountpoint", &self.mountpoint)
            .field("transport", &self.transport)
            .field("passthrough", &self.passthrough)
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
        let mount_opts = options.mount_options()?;
        let offers = KernelOffers::probe();
        let want_uring = match options.transport {
            TransportChoice::DevFuse => false,
            TransportChoice::IoUring if options.survive_exit => {
                return Err(MountError::TransportUnavailable(
                    "a mount that survives the process is served over /dev/fuse".into(),
                ));
            }
            TransportChoice::Auto if options.survive_exit => false,
            TransportChoice::Auto => offers.io_uring && uring::rings_available(),
            TransportChoice::IoUring => {
                if !offers.io_uring {
                    return Err(MountError::TransportUnavailable(
                        "the kernel does not offer it (enable_uring is not Y)".into(),
                    ));
                }
                if !uring::rings_available() {
                    return Err(MountError::TransportUnavailable(
                        "io_uring_setup with 128-byte SQEs failed".into(),
                    ));
                }
                true
            }
        };
        let wanted = Wanted {
            max_write: options.max_write,
            readdirplus: options.readdirplus,
            passthrough: options.passthrough,
            io_uring: want_uring,
        };
        let point = mountpoint.clone();
        let mount_err = |source: io::Error| MountError::Mount {
            path: mountpoint.clone(),
            source,
        };
        let auto_unmount = !options.survive_exit;
        let (mounted, negotiated, watcher) = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let mounted = conn::mount(
                conn::fusermount_program(),
                &point,
                &mount_opts,
                auto_unmount,
            )?;
            match conn::handshake(&mounted.device, wanted) {
                Ok(negotiated) => {
                    let watcher = if auto_unmount {
                        conn::spawn_unmount_watcher(&point)
                            .map_err(|e| tracing::warn!(%e, "no unmount watcher"))
                            .ok()
                    } else {
                        None
                    };
                    Ok((mounted, negotiated, watcher))
                }
                Err(err) => {
                    abandon(mounted, &point);
                    Err(err)
                }
            }
        })
        .await?
        .map_err(mount_err)?;
        let device = Arc::new(mounted.device);
        let mut child = Some(mounted.child);
        if !auto_unmount {
            // Without auto_unmount fusermount exits once it has handed the
            // fd over: reap it now.
            if let Some(mut c) = child.take() {
                let _ = tokio::task::spawn_blocking(move || c.wait()).await;
            }
        }
        let conn = Conn {
            socket: Some(mounted.socket),
            child,
            queues: None,
            watcher,
        };
        Self::serve(
            mountpoint, device, negotiated, conn, fs, options, want_uring, false,
        )
        .await
    }

    /// Serves a connection that another process mounted and negotiated
    /// (a [`HandOver`]'s fd, from systemd's fd store or a predecessor), at
    /// `mountpoint`, without a new INIT. Sends `FUSE_NOTIFY_RESEND` first
    /// where the protocol has it (7.40+), so the requests the previous
    /// server read and never answered are queued again. `options` must
    /// ask for the same `max_write` as the first mount; transport and
    /// passthrough follow `state`. The mount stays hand-over capable.
    ///
    /// The fd is trusted to be the connection of the mount at `mountpoint`
    /// (the kernel offers no way to check which mount an fd serves); the
    /// mount point must be a FUSE mount.
    pub async fn from_fd<F: Filesystem>(
        fd: OwnedFd,
        mountpoint: impl AsRef<Path>,
        fs: F,
        state: SessionState,
        options: MountOptions,
    ) -> Result<Session, MountError> {
        // The mount point itself is not touched: while no process serves
        // the connection, a stat of it would wait for this very server.
        let given = mountpoint.as_ref();
        let (Some(parent), Some(name)) = (given.parent(), given.file_name()) else {
            return Err(MountError::NotADirectory(given.to_owned()));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let mountpoint = parent
            .canonicalize()
            .map_err(|source| MountError::Mount {
                path: given.to_owned(),
                source,
            })?
            .join(name);
        if !mounts::is_fuse_mounted(&mountpoint).unwrap_or(false) {
            return Err(MountError::HandOver(format!(
                "{} is not a FUSE mount",
                mountpoint.display()
            )));
        }
        if !is_fuse_device(&fd) {
            return Err(MountError::HandOver("the fd is not /dev/fuse".into()));
        }
        let negotiated = state.negotiated();
        if negotiated.has(init::OVER_IO_URING) {
            return Err(MountError::HandOver(
                "an io_uring session cannot be handed over".into(),
            ));
        }
        let device = Arc::new(Device::from_fd(fd));
        if state.can_resend() {
            // Before any reader starts: the re-queued requests are then
            // read like new ones.
            let notify = abi::out_header(0, handover::NOTIFY_RESEND, 0);
            if let Err(err) = device.write_parts(&[&notify]) {
                tracing::warn!(%err, "FUSE_NOTIFY_RESEND refused; in-flight requests stay unanswered");
            }
        } else {
            tracing::warn!(
                minor = state.minor(),
                "protocol older than 7.40: requests in flight at the hand-over are not re-sent"
            );
        }
        let conn = Conn {
            socket: None,
            child: None,
            queues: None,
            watcher: None,
        };
        let options = options.survive_exit(true);
        Self::serve(
            mountpoint, device, negotiated, conn, fs, options, false, true,
        )
        .await
    }

    /// Starts serving a negotiated connection.
    #[allow(clippy::too_many_arguments)]
    async fn serve<F: Filesystem>(
        mountpoint: PathBuf,
        device: Arc<Device>,
        negotiated: Negotiated,
        mut conn: Conn,
        fs: F,
        options: MountOptions,
        want_uring: bool,
        inherited: bool,
    ) -> Result<Session, MountError> {
        let fd = match set_nonblocking(&device).and_then(|()| {
            // SAFETY: the `Arc<Device>` inside keeps the fd open and
            // unchanged for as long as the `AsyncFd` lives.
            unsafe { AsyncFd::register_with_interest(Arc::clone(&device), Interest::READABLE) }
                .map_err(io::Error::from)
        }) {
            Ok(fd) => Arc::new(fd),
            Err(source) => {
                if inherited {
                    // Not ours to unmount: the keeper still holds the fd.
                    conn.close();
                } else {
                    fail_mount(conn, &mountpoint);
                }
                return Err(MountError::Mount {
                    path: mountpoint,
                    source,
                });
            }
        };

        let passthrough = negotiated.has(init::PASSTHROUGH);
        let shared = Arc::new(Shared {
            fs,
            conn: ConnCtx {
                backings: passthrough.then(|| Backings::new(Arc::clone(&device))),
                readdirplus: negotiated.has(init::DO_READDIRPLUS),
            },
            device: Arc::clone(&device),
            files: FileReplies::new(options.splice, negotiated.max_write as usize),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (alive, tasks_gone) = mpsc::channel(1);
        for _ in 0..options.readers {
            tokio::spawn(read_requests(
                Arc::clone(&fd),
                Arc::clone(&shared),
                negotiated,
                stop_rx.clone(),
                alive.clone(),
            ));
        }

        let mut transport = Transport::DevFuse {
            readers: options.readers,
        };
        if negotiated.has(init::OVER_IO_URING) {
            match start_rings(&shared, &negotiated, options.uring_depth, &stop_rx, &alive).await {
                Ok(queues) => {
                    transport = Transport::IoUring {
                        queues: queues.len(),
                        depth: queues.depth,
                    };
                    conn.queues = Some(queues);
                }
                Err(err) => {
                    // The kernel waits for the ring after INIT: without it
                    // no request would be served. Give the mount up.
                    stop.send_replace(true);
                    fail_mount(conn, &mountpoint);
                    return Err(MountError::TransportUnavailable(err.to_string()));
                }
            }
        } else if want_uring {
            tracing::warn!("the kernel did not accept FUSE_OVER_IO_URING; using /dev/fuse");
            if options.transport == TransportChoice::IoUring {
                stop.send_replace(true);
                fail_mount(conn, &mountpoint);
                return Err(MountError::TransportUnavailable(
                    "FUSE_OVER_IO_URING not offered at INIT".into(),
                ));
            }
        }
        tracing::info!(
            mountpoint = %mountpoint.display(),
            %transport,
            passthrough,
            inherited,
            protocol = format_args!("7.{}", negotiated.minor),
            "mounted"
        );
        Ok(Session {
            mountpoint,
            device,
            negotiated,
            survive_exit: options.survive_exit,
            transport,
            passthrough,
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

    /// Whether FUSE passthrough was negotiated: backing files named by
    /// [`Filesystem::open_backed`] are then read by the kernel directly.
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// What was negotiated at INIT, to be kept with a copy of the fd.
    pub fn state(&self) -> SessionState {
        SessionState::from_negotiated(&self.negotiated)
    }

    /// A close-on-exec copy of the session's `/dev/fuse` fd, for a keeper
    /// (systemd's fd store): while it is open the mount outlives this
    /// process, crash included. Only for [`MountOptions::survive_exit`]
    /// sessions.
    pub fn clone_fd(&self) -> Result<OwnedFd, MountError> {
        if !self.survive_exit {
            return Err(MountError::HandOver(
                "the session was not mounted to survive the process".into(),
            ));
        }
        handover::dup_fd(&*self.device).map_err(|source| MountError::Mount {
            path: self.mountpoint.clone(),
            source,
        })
    }

    /// Stops serving without unmounting and gives the connection out, for
    /// a successor's [`Session::from_fd`]. Requests being served are
    /// dropped unanswered: the successor's `FUSE_NOTIFY_RESEND` has the
    /// kernel send them again. Only for [`MountOptions::survive_exit`]
    /// sessions.
    pub async fn hand_over(mut self) -> Result<HandOver, MountError> {
        let fd = self.clone_fd()?;
        let state = self.state();
        self.closed = true;
        self.stop.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks_gone.recv())
            .await
            .is_err()
        {
            tracing::warn!("request tasks did not stop in time; handing over anyway");
        }
        if let Some(conn) = self.conn.take() {
            let _ = tokio::task::spawn_blocking(move || conn.close()).await;
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "handed over");
        Ok(HandOver { fd, state })
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
        if let Some(q) = self.conn.as_ref().and_then(|c| c.queues.as_ref()) {
            q.signal_stop();
        }
        // Every task holds a sender: recv() yields None once all are gone.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks_gone.recv())
            .await
            .is_err()
        {
            tracing::warn!("request tasks did not stop in time; unmounting anyway");
        }
        if let Some(conn) = self.conn.take() {
            let _ = tokio::task::spawn_blocking(move || conn.close()).await;
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
        if let Some(conn) = self.conn.take() {
            if let Some(q) = &conn.queues {
                q.signal_stop();
            }
            // Joining the ring threads blocks briefly: not on this thread.
            std::thread::spawn(move || conn.close());
        }
        self.detach_if_mounted();
    }
}

/// Undoes a half-made mount (before serving began). Blocking.
fn abandon(mounted: conn::Mounted, point: &Path) {
    let conn::Mounted {
        device,
        socket,
        mut child,
    } = mounted;
    drop(device);
    drop(socket);
    let _ = child.wait();
    if mounts::is_fuse_mounted(point).unwrap_or(true) {
        let _ = mounts::detach_unmount(point);
    }
}

fn fail_mount(conn: Conn, point: &Path) {
    conn.close();
    if mounts::is_fuse_mounted(point).unwrap_or(true) {
        let _ = mounts::detach_unmount(point);
    }
}

/// Whether `fd` is a `/dev/fuse` character device (10, 229).
fn is_fuse_device(fd: &OwnedFd) -> bool {
    // SAFETY: `stat` is plain data; fstat fills it for a live fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(10, 229)
}

fn set_nonblocking(device: &Device) -> io::Result<()> {
    let fd = device.as_raw_fd();
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

/// Starts the io_uring queues; their requests run through the same
/// dispatcher, each waiting one as a task that stops with the session.
async fn start_rings<F: Filesystem>(
    shared: &Arc<Shared<F>>,
    negotiated: &Negotiated,
    depth: usize,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> io::Result<uring::Queues> {
    let serve: uring::Serve = {
        let shared = Arc::clone(shared);
        let stop = stop.clone();
        let alive = alive.clone();
        Arc::new(move |req: Request| {
            let shared = Arc::clone(&shared);
            let mut stop = stop.clone();
            let alive = alive.clone();
            Box::pin(async move {
                let _alive = alive;
                tokio::select! {
                    biased;
                    outcome = dispatch::handle(&shared.fs, &shared.conn, &req) => outcome,
                    _ = stopped(&mut stop) => Outcome::Error(libc::ENOTCONN),
                }
            })
        })
    };
    let device = Arc::clone(&shared.device);
    let payload = negotiated.max_payload();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || uring::start(device, serve, payload, depth, runtime))
        .await
        .map_err(io::Error::other)?
}

/// Resolves once `stop` is set or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One reader task: takes requests off the fd and spawns a task for each.
/// Loops on `readable()` + `try_io`, so no wake-up is lost after readiness
/// is cleared by a `WouldBlock`.
async fn read_requests<F: Filesystem>(
    fd: Arc<AsyncFd<Arc<Device>>>,
    shared: Arc<Shared<F>>,
    negotiated: Negotiated,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut buf = vec![0u8; (negotiated.max_write as usize + 4096).max(abi::MIN_READ_BUFFER)];
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
        let n = match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
            Err(_would_block) => continue,
            Ok(Ok(n)) => n,
            Ok(Err(err)) => match err.raw_os_error() {
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                Some(libc::ENODEV) => {
                    tracing::debug!("the filesystem was unmounted");
                    return;
                }
                _ => {
                    tracing::error!(%err, "reading /dev/fuse");
                    return;
                }
            },
        };
        let Some(header) = InHeader::parse(&buf[..n]) else {
            tracing::warn!(len = n, "short FUSE request");
            continue;
        };
        let request = Request {
            header,
            args: buf[abi::IN_HEADER_LEN.min(n)..n].to_vec(),
        };
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            tokio::select! {
                _ = stopped(&mut stop) => {}
                _ = serve_dev(&shared, request) => {}
            }
        });
    }
}

/// Serves one `/dev/fuse` request and writes its reply.
async fn serve_dev<F: Filesystem>(shared: &Arc<Shared<F>>, req: Request) {
    let unique = req.header.unique;
    let outcome = dispatch::handle(&shared.fs, &shared.conn, &req).await;
    let sent = match outcome {
        Outcome::NoReply => Ok(()),
        Outcome::Error(e) => shared.device.reply(unique, e, &[]),
        Outcome::Data(body) => shared.device.reply(unique, 0, &body),
        // A small read of a local file (almost always in the page cache):
        // answered right here, saving a hop to a blocking thread.
        Outcome::File { file, offset, len } if len <= INLINE_READ => {
            send_file(shared, unique, &file, offset, len)
        }
        Outcome::File { file, offset, len } => {
            let shared = Arc::clone(shared);
            tokio::task::spawn_blocking(move || send_file(&shared, unique, &file, offset, len))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        }
    };
    if let Err(err) = sent {
        tracing::debug!(
            unique,
            op = dispatch::opcode_name(req.header.opcode),
            %err,
            "reply not delivered"
        );
    }
}

/// File-backed reads up to this size are answered on the request's task.
const INLINE_READ: usize = 32 * 1024;

/// Sends a file-backed read reply (spliced or read); on a failure other
/// than the request being gone, tries to answer `EIO`.
fn send_file<F>(
    shared: &Shared<F>,
    unique: u64,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    let sent = shared.files.send(&shared.device, unique, file, offset, len);
    if let Err(err) = &sent {
        if err.raw_os_error() != Some(libc::ENOENT) {
            let _ = shared.device.reply(unique, libc::EIO, &[]);
        }
    }
    sent
}
