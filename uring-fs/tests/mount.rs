//! End-to-end tests on real FUSE mounts of `MemFs`.
//!
//! Each test mounts at its own temporary directory and touches the mount only
//! from plain threads (std::fs), never from the runtime serving it. Every
//! wait is bounded, and the session unmounts (detached) when dropped, so a
//! failing test neither hangs nor leaves a mount behind. Skipped (with a
//! message) when not root or when /dev/fuse is missing.

#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use uring_fs::memfs::{Content, MemFs, ROOT};
use uring_fs::{mounts, MountOptions, Session, Transport, TransportChoice};

const WAIT: Duration = Duration::from_secs(20);

/// Why a test cannot run here, if it cannot.
fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(reason) = skip_reason() {
            panic!("cannot run (an ignored test, run as root with --include-ignored): FUSE mount test: {reason}");
        }
    };
}

/// A mounted MemFs. Fields drop in order: the session (unmount) first, then
/// the temporary directory.
struct Mounted {
    session: Option<Session>,
    fs: MemFs,
    _dir: TempDir,
}

impl Mounted {
    async fn new(fs: MemFs, transport: TransportChoice) -> Mounted {
        Self::with_options(fs, transport, MountOptions::default()).await
    }

    async fn with_options(fs: MemFs, transport: TransportChoice, options: MountOptions) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let options = options
            .allow_other(true)
            .default_permissions(true)
            .fs_name("uring-fs-test")
            .transport(transport);
        let session = mount_with(dir.path(), fs.clone(), options, transport).await;
        match transport {
            TransportChoice::IoUring => assert!(
                matches!(session.transport(), Transport::IoUring { .. }),
                "{}",
                session.transport()
            ),
            _ => assert!(matches!(session.transport(), Transport::DevFuse { .. })),
        }
        Mounted {
            session: Some(session),
            fs,
            _dir: dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.session.as_ref().unwrap().mountpoint().to_owned()
    }

    fn take_session(&mut self) -> Session {
        self.session.take().unwrap()
    }

    /// Waits until `n` opens are parked on pending content.
    async fn until_waiting(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.fs.waiting_opens() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} opens arrived",
                self.fs.waiting_opens()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Serializes toggling the fuse module's `enable_uring` across threads and
/// processes (the child servers toggle it too): an exclusive `flock`.
fn lock_uring_toggle() -> fs::File {
    let file = fs::File::create("/tmp/uring-fs-test-enable-uring.lock").unwrap();
    // SAFETY: flock on a file we hold open.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) },
        0
    );
    file
}

/// Whether this kernel has FUSE-over-io_uring at all.
fn kernel_has_uring() -> bool {
    Path::new(ENABLE_URING).exists()
}

/// Mounts; for io_uring, turns `enable_uring` on for the mount (INIT and
/// ring registration) only, then restores it: a connection keeps io_uring
/// once set up, and other mounts on this machine keep their default.
async fn mount_with(
    dir: &Path,
    fs: MemFs,
    options: MountOptions,
    transport: TransportChoice,
) -> Session {
    if transport != TransportChoice::IoUring {
        return Session::mount(dir, fs, options).await.unwrap();
    }
    let _one = tokio::task::spawn_blocking(lock_uring_toggle)
        .await
        .unwrap();
    let before = fs::read_to_string(ENABLE_URING).unwrap();
    fs::write(ENABLE_URING, "Y").unwrap();
    let mounted = Session::mount(dir, fs, options).await;
    fs::write(ENABLE_URING, before.trim()).unwrap();
    mounted.unwrap()
}

/// Each body runs once per transport the kernel offers.
macro_rules! on_each_transport {
    ($($body:ident => $dev:ident, $uring:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs root and /dev/fuse"]
        async fn $dev() {
            require_fuse!();
            $body(TransportChoice::DevFuse).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs root, /dev/fuse and FUSE-over-io_uring"]
        async fn $uring() {
            require_fuse!();
            assert!(
                kernel_has_uring(),
                "needs FUSE-over-io_uring: this kernel has no {ENABLE_URING}"
            );
            $body(TransportChoice::IoUring).await;
        }
    )*};
}

on_each_transport! {
    metadata_answers_at_once_while_contents_are_pending
        => metadata_answers_at_once_dev_fuse, metadata_answers_at_once_io_uring;
    open_waits_for_content_then_reads_exact_bytes
        => open_waits_then_reads_exact_bytes_dev_fuse, open_waits_then_reads_exact_bytes_io_uring;
    many_parked_opens_do_not_delay_a_stat
        => many_parked_opens_do_not_delay_a_stat_dev_fuse, many_parked_opens_do_not_delay_a_stat_io_uring;
    a_failed_pending_open_gives_the_caller_eio
        => failed_open_gives_eio_dev_fuse, failed_open_gives_eio_io_uring;
    shutdown_releases_parked_callers_and_unmounts
        => shutdown_releases_callers_dev_fuse, shutdown_releases_callers_io_uring;
    dropping_the_session_releases_parked_callers_and_unmounts
        => drop_releases_callers_dev_fuse, drop_releases_callers_io_uring;
    passthrough_reads_return_exact_bytes_without_read_requests
        => passthrough_reads_dev_fuse, passthrough_reads_io_uring;
    spliced_reads_return_exact_bytes
        => spliced_reads_dev_fuse, spliced_reads_io_uring;
    killing_the_server_leaves_no_hung_caller
        => killing_the_server_dev_fuse, killing_the_server_io_uring;
    sigterm_unmounts_cleanly_and_releases_the_caller
        => sigterm_unmounts_cleanly_dev_fuse, sigterm_unmounts_cleanly_io_uring;
}

/// Runs `f` on a plain thread; the receiver yields its result.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx
}

/// The thread's result, failing the test if it takes longer than `limit`.
async fn within<T>(limit: Duration, rx: oneshot::Receiver<T>) -> T {
    tokio::time::timeout(limit, rx)
        .await
        .expect("timed out: a caller is hung")
        .expect("caller thread panicked")
}

/// A thread that opens and reads a whole file.
fn read_on_thread(path: PathBuf) -> oneshot::Receiver<io::Result<Vec<u8>>> {
    on_thread(move || {
        let mut bytes = Vec::new();
        fs::File::open(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

async fn metadata_answers_at_once_while_contents_are_pending(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    let dir = fs.mkdir(ROOT, "etc").unwrap();
    let file = fs.add_file(dir, "motd", 12).unwrap();
    fs.add_file(ROOT, "big", 1 << 20).unwrap();
    fs.add_symlink(ROOT, "link", "etc/motd").unwrap();
    fs.set_xattr(file, "user.origin", b"layer-3").unwrap();
    let m = Mounted::new(fs, transport).await;
    let root = m.root();

    let started = Instant::now();
    let rx = on_thread(move || -> io::Result<_> {
        let meta = fs::metadata(root.join("etc/motd"))?;
        let mut names: Vec<_> = fs::read_dir(&root)?
            .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let link = fs::read_link(root.join("link"))?;
        let via_link = fs::metadata(root.join("link"))?.len();
        let dir_meta = fs::symlink_metadata(root.join("etc"))?;
        let xattr = get_xattr(&root.join("etc/motd"), "user.origin")?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let c_root = CString::new(root.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path and out-pointer.
        if unsafe { libc::statvfs(c_root.as_ptr(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let missing = fs::metadata(root.join("nope")).unwrap_err();
        Ok((
            meta,
            names,
            link,
            via_link,
            dir_meta,
            xattr,
            stat.f_flag,
            missing,
        ))
    });
    let (meta, names, link, via_link, dir_meta, xattr, flags, missing) =
        within(Duration::from_secs(5), rx).await.unwrap();
    eprintln!(
        "metadata answered in {:?} with contents pending",
        started.elapsed()
    );
    assert!(meta.is_file());
    assert_eq!(meta.len(), 12);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()),
        0o100444
    );
    assert_eq!(names, ["big", "etc", "link"]);
    assert_eq!(link, Path::new("etc/motd"));
    assert_eq!(via_link, 12);
    assert!(dir_meta.is_dir());
    assert_eq!(xattr, b"layer-3");
    assert_ne!(flags & libc::ST_RDONLY, 0, "mount is read-only");
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(m.fs.waiting_opens(), 0, "no content was asked for");
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

async fn open_waits_for_content_then_reads_exact_bytes(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    let small = fs.add_file(ROOT, "small", 11).unwrap();
    let big_len = (3 << 20) + 12345;
    let big = fs.add_file(ROOT, "big", big_len as u64).unwrap();
    let m = Mounted::new(fs, transport).await;

    let small_reader = read_on_thread(m.root().join("small"));
    let big_reader = read_on_thread(m.root().join("big"));
    m.until_waiting(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(m.fs.waiting_opens(), 2, "both opens still parked");

    m.fs.fulfil(small, Content::Bytes(Arc::from(&b"hello world"[..])))
        .unwrap();
    let bytes = within(Duration::from_secs(5), small_reader).await.unwrap();
    assert_eq!(bytes, b"hello world");

    // A local backing file, served with pread in max_write-sized pieces.
    let backing_dir = tempfile::tempdir().unwrap();
    let backing_path = backing_dir.path().join("blob");
    let expected = pattern(big_len, 7);
    fs::write(&backing_path, &expected).unwrap();
    let file = Arc::new(fs::File::open(&backing_path).unwrap());
    m.fs.fulfil(big, Content::File(file)).unwrap();
    let bytes = within(Duration::from_secs(10), big_reader).await.unwrap();
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes == expected, "backing file content differs");

    // Later opens find the content there at once.
    let again = read_on_thread(m.root().join("small"));
    assert_eq!(
        within(Duration::from_secs(5), again).await.unwrap(),
        b"hello world"
    );
}

async fn many_parked_opens_do_not_delay_a_stat(transport: TransportChoice) {
    const PARKED: usize = 1000;
    let fs = MemFs::new(Duration::from_secs(1));
    let inos: Vec<u64> = (0..PARKED)
        .map(|i| fs.add_file(ROOT, &format!("f{i}"), 4).unwrap())
        .collect();
    fs.add_file(ROOT, "other", 3).unwrap();
    let m = Mounted::new(fs, transport).await;

    let started = Instant::now();
    let readers: Vec<_> = (0..PARKED)
        .map(|i| read_on_thread(m.root().join(format!("f{i}"))))
        .collect();
    m.until_waiting(PARKED).await;
    eprintln!("{PARKED} opens parked after {:?}", started.elapsed());

    let other = m.root().join("other");
    let stat = on_thread(move || {
        let started = Instant::now();
        let meta = fs::metadata(other);
        (meta.map(|m| m.len()), started.elapsed())
    });
    let (len, took) = within(Duration::from_secs(5), stat).await;
    eprintln!("stat with {PARKED} parked opens took {took:?}");
    assert_eq!(len.unwrap(), 3);
    assert!(took < Duration::from_secs(1), "stat took {took:?}");
    assert_eq!(m.fs.waiting_opens(), PARKED, "the opens are still parked");

    let released = Instant::now();
    for (i, ino) in inos.iter().enumerate() {
        let content = format!("{:04}", i % 10_000);
        m.fs.fulfil(*ino, Content::Bytes(Arc::from(content.as_bytes())))
            .unwrap();
    }
    for (i, reader) in readers.into_iter().enumerate() {
        let bytes = within(WAIT, reader).await.unwrap();
        assert_eq!(bytes, format!("{:04}", i % 10_000).as_bytes());
    }
    eprintln!(
        "{PARKED} parked opens completed {:?} after release",
        released.elapsed()
    );

    // A listing larger than one readdir reply continues from the offsets.
    let root = m.root();
    let listing = on_thread(move || fs::read_dir(root).map(|entries| entries.count()));
    assert_eq!(
        within(Duration::from_secs(5), listing).await.unwrap(),
        PARKED + 1
    );
}

async fn a_failed_pending_open_gives_the_caller_eio(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    let ino = fs.add_file(ROOT, "doomed", 10).unwrap();
    let m = Mounted::new(fs, transport).await;

    let reader = read_on_thread(m.root().join("doomed"));
    m.until_waiting(1).await;
    m.fs.fail(ino).unwrap();
    let err = within(Duration::from_secs(5), reader).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Opens after the failure fail at once too.
    let again = read_on_thread(m.root().join("doomed"));
    let err = within(Duration::from_secs(5), again).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

async fn shutdown_releases_parked_callers_and_unmounts(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    fs.add_file(ROOT, "never", 10).unwrap();
    let mut m = Mounted::new(fs, transport).await;
    let root = m.root();

    let reader = read_on_thread(root.join("never"));
    m.until_waiting(1).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), m.take_session().shutdown())
        .await
        .expect("shutdown hung");
    let err = within(Duration::from_secs(5), reader).await.unwrap_err();
    eprintln!(
        "shutdown released the parked caller with {err} in {:?}",
        started.elapsed()
    );
    assert!(!mounts::is_fuse_mounted(&root).unwrap(), "still mounted");
}

async fn dropping_the_session_releases_parked_callers_and_unmounts(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    fs.add_file(ROOT, "never", 10).unwrap();
    let mut m = Mounted::new(fs, transport).await;
    let root = m.root();

    let reader = read_on_thread(root.join("never"));
    m.until_waiting(1).await;
    drop(m.take_session());
    assert!(
        !mounts::is_fuse_mounted(&root).unwrap(),
        "still mounted after drop"
    );
    // Usually well under a second; once, on a loaded 2-core machine, the
    // io_uring ring teardown (on its own thread) took over 5 s. The bound
    // proves the caller is released, not how fast.
    let started = std::time::Instant::now();
    let err = within(Duration::from_secs(20), reader).await.unwrap_err();
    eprintln!(
        "drop released the parked caller with {err} after {:?}",
        started.elapsed()
    );
}

/// Environment variable telling `server_child_process` where to mount.
const CHILD_MOUNT_ENV: &str = "URING_FS_TEST_CHILD_MOUNT";
/// Environment variable telling `server_child_process` which transport.
const CHILD_TRANSPORT_ENV: &str = "URING_FS_TEST_CHILD_TRANSPORT";

/// Not a test by itself: when the tests below run this test binary with the
/// environment variable set, it serves a MemFs with a never-fulfilled file
/// until SIGINT/SIGTERM (clean shutdown) or SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_child_process() {
    let Some(point) = std::env::var_os(CHILD_MOUNT_ENV) else {
        return;
    };
    let fs = MemFs::new(Duration::from_secs(1));
    fs.add_file(ROOT, "never", 10).unwrap();
    let transport = match std::env::var(CHILD_TRANSPORT_ENV).as_deref() {
        Ok("io_uring") => TransportChoice::IoUring,
        _ => TransportChoice::DevFuse,
    };
    let options = MountOptions::default().transport(transport);
    let session = mount_with(Path::new(&point), fs.clone(), options, transport).await;
    let serving = session.shutdown_on_signal().unwrap();
    println!("READY");
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs.waiting_opens() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("PARKED");
    });
    // The bound keeps an orphan from living for ever if the parent dies.
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("no signal came");
    println!("UNMOUNTED");
}

/// Detaches the child's mount if the test fails before it is gone.
struct DetachGuard(PathBuf);

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if mounts::is_fuse_mounted(&self.0).unwrap_or(false) {
            let _ = mounts::detach_unmount(&self.0);
        }
    }
}

/// Kills the child if the test fails before it is gone.
struct KillGuard(std::process::Child);

impl Drop for KillGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for the child to print line `want`.
async fn wait_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) {
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            if line.ends_with(want) {
                return;
            }
        }
        panic!("child exited before {want}");
    })
    .await
    .unwrap_or_else(|_| panic!("child never said {want}"))
}

/// A server in a child process (this binary, `server_child_process`) with
/// a caller parked on its pending file.
struct ChildServer {
    // Drop order: kill the child, then detach a leftover mount, then remove
    // the directory.
    child: KillGuard,
    _detach: DetachGuard,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    reader: oneshot::Receiver<io::Result<Vec<u8>>>,
    root: PathBuf,
    _dir: TempDir,
}

impl ChildServer {
    async fn start(transport: TransportChoice) -> ChildServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let detach = DetachGuard(root.clone());
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_MOUNT_ENV, &root)
            .env(
                CHILD_TRANSPORT_ENV,
                if transport == TransportChoice::IoUring {
                    "io_uring"
                } else {
                    "dev_fuse"
                },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillGuard(child);
        let stdout = child.0.stdout.take().unwrap();
        let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        wait_line(&mut lines, "READY").await;
        assert!(mounts::is_fuse_mounted(&root).unwrap());
        let reader = read_on_thread(root.join("never"));
        wait_line(&mut lines, "PARKED").await;
        ChildServer {
            child,
            _detach: detach,
            lines,
            reader,
            root,
            _dir: dir,
        }
    }

    /// Waits (bounded) until the mount is gone.
    async fn until_unmounted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while mounts::is_fuse_mounted(&self.root).unwrap() {
            assert!(Instant::now() < deadline, "mount not cleaned up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for the child to exit.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn killing_the_server_leaves_no_hung_caller(transport: TransportChoice) {
    let mut server = ChildServer::start(transport).await;
    server.child.0.kill().unwrap();
    server.exit_status().await;
    let reader = std::mem::replace(&mut server.reader, oneshot::channel().1);
    let err = within(Duration::from_secs(10), reader).await.unwrap_err();
    eprintln!("killed server: the parked caller got {err}");
    server.until_unmounted().await;
}

async fn sigterm_unmounts_cleanly_and_releases_the_caller(transport: TransportChoice) {
    let mut server = ChildServer::start(transport).await;
    let pid = libc::pid_t::try_from(server.child.0.id()).unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_line(&mut server.lines, "UNMOUNTED").await;
    let status = server.exit_status().await;
    assert!(status.success(), "server exited with {status}");
    assert!(!mounts::is_fuse_mounted(&server.root).unwrap());
    let reader = std::mem::replace(&mut server.reader, oneshot::channel().1);
    let err = within(Duration::from_secs(10), reader).await.unwrap_err();
    eprintln!("SIGTERM: the parked caller got {err}");
}

/// Writes `len` pattern bytes to a fresh backing file.
fn backing_file(dir: &Path, name: &str, len: usize, seed: u8) -> (Arc<fs::File>, Vec<u8>) {
    let path = dir.join(name);
    let expected = pattern(len, seed);
    fs::write(&path, &expected).unwrap();
    (Arc::new(fs::File::open(&path).unwrap()), expected)
}

async fn passthrough_reads_return_exact_bytes_without_read_requests(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    fs.set_passthrough(true);
    let len = (5 << 20) + 777;
    let ino = fs.add_file(ROOT, "blob", len as u64).unwrap();
    let m = Mounted::new(fs, transport).await;
    assert!(
        m.session.as_ref().unwrap().passthrough(),
        "kernel 6.9+ offers passthrough"
    );
    let backing_dir = tempfile::tempdir().unwrap();
    let (file, expected) = backing_file(backing_dir.path(), "blob", len, 3);
    m.fs.fulfil(ino, Content::File(file)).unwrap();

    let bytes = within(WAIT, read_on_thread(m.root().join("blob")))
        .await
        .unwrap();
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes == expected, "passthrough content differs");
    // Random reads too, from a second open.
    let path = m.root().join("blob");
    let expected2 = expected.clone();
    let random = on_thread(move || -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(path)?;
        for k in 0..200u64 {
            let off = (k * 7919 * 4096 + k * 13) % (len as u64 - 4096);
            let mut buf = [0u8; 4096];
            f.read_exact_at(&mut buf, off)?;
            assert_eq!(&buf[..], &expected2[off as usize..off as usize + 4096]);
        }
        Ok(())
    });
    within(WAIT, random).await.unwrap();
    assert_eq!(m.fs.reads(), 0, "reads bypassed the server");
}

async fn spliced_reads_return_exact_bytes(transport: TransportChoice) {
    let fs = MemFs::new(Duration::from_secs(1));
    let len = (3 << 20) + 4095;
    let ino = fs.add_file(ROOT, "blob", len as u64).unwrap();
    let m = Mounted::with_options(fs, transport, MountOptions::default().splice(true)).await;
    let backing_dir = tempfile::tempdir().unwrap();
    let (file, expected) = backing_file(backing_dir.path(), "blob", len, 9);
    m.fs.fulfil(ino, Content::File(file)).unwrap();
    let bytes = within(WAIT, read_on_thread(m.root().join("blob")))
        .await
        .unwrap();
    assert!(bytes == expected, "spliced content differs");
    assert!(m.fs.reads() > 0, "served by read requests");
}
