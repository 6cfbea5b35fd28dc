//! Issue 13, item 2: running containers survive a crash of starlightd.
//!
//! With the real `starlightd run` binary, a real `docker-registry`, the
//! proxy over QUIC and a private containerd. This test plays systemd: it
//! owns the notify socket and sets `FDSTORE` (as `FileDescriptorStoreMax=`
//! makes systemd do), so starlightd stores each image mount's `/dev/fuse`
//! fd there (`FDSTORE=1`, `FDNAME=<image hex>.<session state>`). A process
//! with its working directory in the image's mount and a file held open
//! keeps running while starlightd is killed with SIGKILL and started again
//! with the stored fds (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`); it
//! then reads the held file and every file it never opened, with exact
//! bytes and no ENOTCONN, EIO or ESTALE. Then the same through a graceful
//! restart (`<state>/keep-mounts`, SIGTERM), and a stop without the marker
//! unmounts within a second while a process sits in the mount.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(dead_code)] // helpers shared in shape with crash_safety.rs

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::TestRegistry;
use serve_support::{noise, starlight_layer, Proxy};
use sha2::{Digest, Sha256};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::api::{call, ImageInfo, PullReport, Request, Response};
use support::containerd::{is_root, unique_name, Containerd};

/// A `starlightd run` child; SIGKILL on drop, and its mounts detached.
struct Daemon {
    child: Child,
    state: PathBuf,
    api: PathBuf,
    log: PathBuf,
}

/// Where one daemon's files go.
struct Setup {
    dir: PathBuf,
    state: PathBuf,
    containerd_socket: PathBuf,
    namespace: String,
    /// Extra environment of the daemon.
    env: Vec<(&'static str, &'static str)>,
}

impl Setup {
    fn config(&self, proxy: std::net::SocketAddr) -> PathBuf {
        let config = self.dir.join("starlightd.toml");
        std::fs::write(
            &config,
            format!(
                "proxy = \"{proxy}\"\nca_file = \"{ca}\"\ntoken = \"{token}\"\nstate_dir = \"{state}\"\n\
                 grace_secs = 2\ncontainerd_socket = \"{ctrd}\"\nnamespace = \"{ns}\"\n\
                 snapshotter_socket = \"{d}/run/snapshotter.sock\"\napi_socket = \"{d}/run/api.sock\"\n",
                ca = self.dir.join("ca.pem").display(),
                token = serve_support::TOKEN,
                state = self.state.display(),
                ctrd = self.containerd_socket.display(),
                ns = self.namespace,
                d = self.dir.display(),
            ),
        )
        .unwrap();
        config
    }

    /// Starts `starlightd run`; `Ok` once it said READY=1, `Err` with its
    /// exit status and log if it exited first.
    fn try_start(&self, proxy: std::net::SocketAddr, log_name: &str) -> Result<Daemon, String> {
        let config = self.config(proxy);
        let notify_path = self.dir.join(format!("{}.sock", unique_name("notify")));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = self.dir.join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info,polyfuse=warn")
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            state: self.state.clone(),
            api: self.dir.join("run/api.sock"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 64];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                assert_eq!(&buf[..n], b"READY=1");
                let _ = std::fs::remove_file(&notify_path);
                return Ok(d);
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                let _ = std::fs::remove_file(&notify_path);
                return Err(format!("{status}: {}", d.log_text()));
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 60 s:\n{}",
                d.log_text()
            );
        }
    }

    fn start(&self, proxy: std::net::SocketAddr, log_name: &str) -> Daemon {
        self.try_start(proxy, log_name)
            .unwrap_or_else(|e| panic!("starlightd did not start: {e}"))
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, rt: &tokio::runtime::Runtime, req: Request) -> Response {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), call(&self.api, &req, |_| {})).await
        })
        .expect("API call timed out")
        .unwrap()
    }

    /// Pulls `image`; a registration refused because containerd's proxy
    /// plugin is still in gRPC's reconnect backoff (it dialled the
    /// snapshotter socket before the daemon served it) is tried again,
    /// for at most a minute.
    fn pull(&self, rt: &tokio::runtime::Runtime, image: &str, wait: bool) -> PullReport {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = Request::Pull {
                image: image.into(),
                from: vec![],
                wait,
                trace: false,
                unordered: false,
            };
            match self.call(rt, req) {
                Response::Pulled(r) => return r,
                Response::Error(e)
                    if e.contains("in containerd")
                        && e.contains("Unavailable")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => panic!("pull {image}: {other:?}\n{}", self.log_text()),
            }
        }
    }

    fn images(&self, rt: &tokio::runtime::Runtime) -> Vec<ImageInfo> {
        match self.call(rt, Request::Images) {
            Response::Images(i) => i,
            other => panic!("images: {other:?}"),
        }
    }

    /// `kill -9`: no chance to clean up, as in a crash.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.state);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

fn skip_reason() -> Option<&'static str> {
    if !is_root() {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

/// An image's files: path → bytes.
type Files = BTreeMap<String, Vec<u8>>;

/// Pushes an image of one layer holding `files`.
fn push(reg: &TestRegistry, repo: &str, files: &Files) -> String {
    let list: Vec<(String, Vec<u8>)> = files.iter().map(|(p, d)| (p.clone(), d.clone())).collect();
    let layer = starlight_layer(&serve_support::tar_of(&list, 1), Compression::Gzip);
    let mut layout = common::layout::OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/app/main"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/{repo}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

/// Image A (pulled complete before the crash) and image B (cut by it):
/// B shares one file with A, has small files and large ones.
fn images() -> (Files, Files) {
    let shared = noise(1, 50_000);
    let mut a = Files::new();
    a.insert("app/shared.bin".into(), shared.clone());
    a.insert("app/a-small.txt".into(), b"image a\n".repeat(100));
    a.insert("app/a-large.bin".into(), noise(2, 1 << 20));
    let mut b = Files::new();
    b.insert("app/shared.bin".into(), shared);
    for i in 0..12u64 {
        b.insert(
            format!("app/b-small-{i:02}.bin"),
            noise(100 + i, 3000 + i as usize),
        );
    }
    for i in 0..4u64 {
        b.insert(format!("app/b-large-{i}.bin"), noise(200 + i, 2 << 20));
    }
    (a, b)
}

/// What reading every file of `files` through `mount` gave: for each path,
/// `Ok(true)` (exact bytes), or the read error. Panics on wrong bytes.
fn read_all(mount: &Path, files: &Files) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    for (path, want) in files {
        let full = mount.join(path);
        let got = std::fs::File::open(&full).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map(|_| v)
        });
        let r = match got {
            Ok(bytes) => {
                assert!(
                    bytes == *want,
                    "WRONG BYTES through the mount: {path} ({} bytes read, {} expected, sha256 {})",
                    bytes.len(),
                    want.len(),
                    hex::encode(Sha256::digest(&bytes))
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        out.insert(path.clone(), r);
    }
    out
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn content_path(state: &Path, data: &[u8]) -> PathBuf {
    let hex = hex::encode(sha(data));
    state.join("content/sha256").join(&hex[..2]).join(hex)
}

/// The mount point of image `info`.
fn mount_of(info: &ImageInfo) -> PathBuf {
    PathBuf::from(&info.mountpoint)
}

fn find<'a>(images: &'a [ImageInfo], reference: &str) -> &'a ImageInfo {
    images
        .iter()
        .find(|i| i.name == reference)
        .unwrap_or_else(|| panic!("no image {reference} in {images:?}"))
}

/// The `content store recovered` line of a daemon's log, as numbers.
fn recovery_counts(log: &str) -> (usize, usize, usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains("content store recovered"))
        .unwrap_or_else(|| panic!("no recovery line in:\n{log}"));
    let field = |name: &str| -> usize {
        let start = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len()
            + 1;
        line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (
        field("vouched"),
        field("verified"),
        field("torn"),
        field("orphans"),
    )
}

/// Registry, proxy, containerd and a daemon setup, torn down on drop.
struct World {
    rt: tokio::runtime::Runtime,
    reg: TestRegistry,
    ctrd: Containerd,
    dir: tempfile::TempDir,
    namespace: String,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reg = {
            let _guard = rt.enter();
            TestRegistry::start()
        };
        let dir = tempfile::Builder::new()
            .prefix("starlight-crash.")
            .tempdir()
            .unwrap();
        let namespace = unique_name("crash");
        let mut ctrd = Containerd::start_with(&format!(
            "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            dir.path().join("run/snapshotter.sock").display()
        ));
        ctrd.namespace = namespace.clone();
        World {
            rt,
            reg,
            ctrd,
            dir,
            namespace,
        }
    }

    fn proxy(&self, rate_limit: Option<u64>) -> Proxy {
        let _guard = self.rt.enter();
        let proxy = Proxy::start(
            &self.reg,
            ServeOptions {
                rate_limit,
                ..ServeOptions::default()
            },
        );
        std::fs::write(self.dir.path().join("ca.pem"), &proxy.cert_pem).unwrap();
        proxy
    }

    /// After a daemon restart containerd's proxy plugin reconnects with
    /// gRPC's backoff: waits (bounded) until a snapshotter call goes through.
    fn wait_for_snapshotter(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("timeout")
                .args(["20", "ctr", "--address"])
                .arg(&self.ctrd.socket)
                .args(["--namespace", &self.namespace])
                .args(["snapshots", "--snapshotter", "starlight", "ls"])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd never reconnected to the snapshotter: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn setup(&self, state: PathBuf) -> Setup {
        Setup {
            dir: self.dir.path().to_path_buf(),
            state,
            containerd_socket: self.ctrd.socket.clone(),
            namespace: self.namespace.clone(),
            env: vec![],
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// One datagram from the notify socket and the fds it carried.
fn recv_notify(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 64];
    // SAFETY: plain data, filled by recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((text, fds))
}

/// The test's fd store: name → fd.
type FdStore = BTreeMap<String, OwnedFd>;

/// Takes every message on `sock` until `until` says stop or `within`
/// passes; FDSTORE messages go to `store`. Whether `until` was met.
fn drain(
    sock: &UnixDatagram,
    store: &mut FdStore,
    within: Duration,
    until: &dyn Fn(&str, &FdStore) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some((text, mut fds)) = recv_notify(sock) else {
            continue;
        };
        if text.starts_with("FDSTORE=1\n") {
            let name = text.split("FDNAME=").nth(1).unwrap().trim().to_owned();
            assert_eq!(fds.len(), 1, "{text}");
            store.insert(name, fds.pop().unwrap());
        }
        if until(&text, store) {
            return true;
        }
    }
    false
}

/// Starts `starlightd run` as systemd would: notify socket, `FDSTORE`, and
/// the stored fds from fd 3 with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`
/// (a shell sets `LISTEN_PID=$$` and execs the daemon, keeping its pid).
fn start_as_systemd(
    setup: &Setup,
    proxy: std::net::SocketAddr,
    notify: &UnixDatagram,
    notify_path: &Path,
    store: &mut FdStore,
    log_name: &str,
) -> Daemon {
    let config = setup.config(proxy);
    let log = setup.dir.join(log_name);
    let out = std::fs::File::create(&log).unwrap();
    let names: Vec<String> = store.keys().cloned().collect();
    let raw: Vec<i32> = store.values().map(|fd| fd.as_raw_fd()).collect();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_starlightd"))
        .arg(&config)
        .env("NOTIFY_SOCKET", notify_path)
        .env("FDSTORE", "64")
        .env("RUST_LOG", "info,polyfuse=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if !raw.is_empty() {
        command
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        // SAFETY: only dup2 (async-signal-safe) between fork and exec. The
        // sources are moved above the targets first, so no target
        // overwrites a source not yet placed.
        unsafe {
            command.pre_exec(move || {
                let mut high = Vec::with_capacity(raw.len());
                for &fd in &raw {
                    let h = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, &h) in high.iter().enumerate() {
                    if libc::dup2(h, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().unwrap();
    let d = Daemon {
        child,
        state: setup.state.clone(),
        api: setup.dir.join("run/api.sock"),
        log,
    };
    let ready = drain(notify, store, Duration::from_secs(60), &|t, _| {
        t == "READY=1"
    });
    assert!(ready, "no READY=1 within 60 s:\n{}", d.log_text());
    d
}

#[test]
#[ignore = "needs root: containerd, FUSE mounts"]
fn a_process_in_a_mount_survives_kill9_and_a_kept_restart_and_a_stop_unmounts() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (_, b) = images();
    let b_ref = push(&world.reg, "survive/b", &b);
    let state = world.dir.path().join("state");
    let setup = world.setup(state.clone());
    let notify_path = world.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut store = FdStore::new();

    let proxy = world.proxy(None);
    let mut daemon = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "first.log",
    );
    world.wait_for_snapshotter();
    let report = daemon.pull(&world.rt, &b_ref, true);
    assert_eq!(report.complete, Some(true), "{report:?}");
    let kept = drain(&notify, &mut store, Duration::from_secs(10), &|_, s| {
        !s.is_empty()
    });
    assert!(kept, "no FDSTORE message:\n{}", daemon.log_text());
    assert_eq!(store.len(), 1, "{:?}", store.keys().collect::<Vec<_>>());
    let mount = mount_of(find(&daemon.images(&world.rt), &b_ref));

    // "The container": cwd inside the mount, one file held open (fd 5)
    // and read once, the others never opened before the crash.
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0/app\" || exit 9; exec 5<b-small-00.bin || exit 8; head -c 100 <&5 >/dev/null; echo opened; read _go; cat <&5 | sha256sum; for f in b-large-*.bin b-small-0[1-9].bin b-small-1*.bin; do sha256sum \"$f\" || exit 7; done")
        .arg(&mount)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "opened\n");

    // The crash. The mount stays (the store holds its fd).
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    assert!(
        starlight_worker_mounts_has(&mount),
        "the mount stays while the fd store holds its fd"
    );
    drop(proxy);
    let started = Instant::now();
    let proxy = world.proxy(None);
    let daemon2 = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "second.log",
    );
    let log = daemon2.log_text();
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    println!("starlightd back after the kill in {:?}", started.elapsed());

    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut sums = String::new();
    out.read_to_string(&mut sums).unwrap();
    let status = shell.wait().unwrap();
    let mut err = String::new();
    shell
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}\n{}", daemon2.log_text());
    assert!(err.is_empty(), "{err}");
    let mut lines = sums.lines();
    let held = &b["app/b-small-00.bin"][100..];
    assert!(lines
        .next()
        .unwrap()
        .starts_with(&hex::encode(Sha256::digest(held))));
    let mut n = 0;
    for l in lines {
        let (sum, name) = l.split_once("  ").unwrap();
        let want = &b[&format!("app/{name}")];
        assert_eq!(sum, hex::encode(Sha256::digest(want)), "{name}");
        n += 1;
    }
    assert_eq!(n, b.len() - 2, "every other file of the image: {sums}");

    // A graceful restart that keeps the mounts: `<state>/keep-mounts`, then
    // SIGTERM; the next starlightd serves the same connection.
    let mut shell = user_of(&mount);
    std::fs::write(state.join("keep-mounts"), b"").unwrap();
    let mut daemon2 = daemon2;
    sigterm_and_wait(&mut daemon2);
    assert!(
        starlight_worker_mounts_has(&mount),
        "kept across the restart"
    );
    assert!(
        !state.join("keep-mounts").exists(),
        "the marker is used once"
    );
    let daemon3 = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "third.log",
    );
    assert!(daemon3
        .log_text()
        .contains("serving the connection kept across the restart"));
    finish_user(&mut shell, &b);

    // A stop without the marker unmounts, quickly, while a process uses
    // the mount.
    let mut user = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0\" && exec sleep 30")
        .arg(mount.join("app"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut daemon3 = daemon3;
    let t = Instant::now();
    sigterm_and_wait(&mut daemon3);
    let took = t.elapsed();
    println!("stop with a process in the mount took {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!starlight_worker_mounts_has(&mount), "a stop unmounts");
    let _ = user.kill();
    let _ = user.wait();
    drop(store);
}

/// A process in the mount: cwd inside, a file held open, waiting for a go.
fn user_of(mount: &Path) -> Child {
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0/app\" || exit 9; exec 5<b-small-00.bin || exit 8; echo opened; read _go; cat <&5 | sha256sum; sha256sum b-large-3.bin")
        .arg(mount)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = shell.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        assert_eq!(Read::read(&mut out, &mut byte).unwrap(), 1);
        line.push(byte[0] as char);
    }
    assert_eq!(line, "opened\n");
    shell
}

fn finish_user(shell: &mut Child, b: &Files) {
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut sums = String::new();
    shell
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut sums)
        .unwrap();
    let status = shell.wait().unwrap();
    let mut err = String::new();
    shell
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
    let want = format!(
        "{}  -\n{}  b-large-3.bin\n",
        hex::encode(Sha256::digest(&b["app/b-small-00.bin"])),
        hex::encode(Sha256::digest(&b["app/b-large-3.bin"]))
    );
    assert_eq!(sums, want);
}

fn sigterm_and_wait(d: &mut Daemon) {
    // SAFETY: kill with the pid of a child we spawned.
    unsafe { libc::kill(d.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn starlight_worker_mounts_has(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}
