//! Issue 5's acceptance, with real parts on loopback: a real
//! `docker-registry`, the proxy served in-process over QUIC (throttled for
//! the early-start steps), the real `starlightd run` binary, a private real
//! containerd with `[proxy_plugins.starlight]` at starlightd's snapshotter
//! socket, and runc.
//!
//! 1. `starlight pull` of a two-layer busybox image, then `ctr run
//!    --snapshotter starlight` prints its ready line; a file the container
//!    writes lands in its own layer, not in the image. The time from the
//!    pull to the ready line is printed beside `ctr pull` + `ctr run` of the
//!    same image with overlayfs.
//! 2. Update: with v1 held, pulling v2 transfers only the contents v1 lacks
//!    (byte count asserted) and v2 runs.
//! 3. A payload corrupted in the registry's storage after indexing is
//!    refused: the container's open fails, it never sees wrong bytes.
//! 4. Restart of starlightd with the proxy gone: v1 and v2 run again.
//! 5. `starlight images` / removal: removing v1 frees only what v2 lacks.
//! 6. Early start: with the proxy paced so the body takes seconds, the
//!    container stats its files and starts before the body ends, blocking
//!    only on the open of the last (large) file; the timeline is printed.
//! 7. The proxy killed mid-body (SIGKILL of a real `starlight-proxy serve`
//!    when the workspace's binaries are built): the container's open of a
//!    missing file fails with EIO within the dead-proxy detection time plus
//!    the configured grace; nothing hangs.
//!
//! Needs root, /dev/fuse and busybox; skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::layout::OciLayout;
use common::registry::TestRegistry;
use serve_support::{noise, starlight_layer, Proxy};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::api::{call, ImageInfo, PullReport, Request, Response};
use support::containerd::{is_root, unique_name, Containerd};

const GRACE_SECS: u64 = 3;

fn skip_reason() -> Option<&'static str> {
    if !is_root() {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt install busybox-static)");
    }
    None
}

// ---------------------------------------------------------------------------
// Images.

/// A tar entry: path, file data (none: a directory, or a symlink with
/// `link`), symlink target, mode.
type TarEntry = (String, Option<Vec<u8>>, Option<&'static str>, u32);

fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, link, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        match (data, link) {
            (Some(d), _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, d.as_slice()).unwrap();
            }
            (None, Some(t)) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, t).unwrap();
            }
            (None, None) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn dir(p: &str) -> TarEntry {
    (p.into(), None, None, 0o755)
}

fn file(p: &str, data: &[u8], mode: u32) -> TarEntry {
    (p.into(), Some(data.to_vec()), None, mode)
}

/// The base layer: busybox and its applets.
fn base_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut v = vec![
        dir("bin"),
        file("bin/busybox", &busybox, 0o755),
        (String::from("tmp"), None, None, 0o1777),
        dir("etc"),
        dir("dev"),
        dir("proc"),
        dir("sys"),
    ];
    for applet in [
        "sh",
        "cat",
        "echo",
        "ls",
        "stat",
        "head",
        "wc",
        "sha256sum",
        "date",
        "sleep",
        "true",
    ] {
        v.push((format!("bin/{applet}"), None, Some("busybox"), 0o777));
    }
    tar_of(&v)
}

/// The entrypoint: reads its files and prints the ready line.
const MAIN: &[u8] = b"#!/bin/sh\nfor f in /app/data/*; do cat \"$f\" > /dev/null || exit 1; done\necho \"READY $(cat /app/version)\"\n";

/// The app layer of version `v`: three data files (the second changes
/// with the version) and the version file.
fn app_layer(v: u32) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let data = [
        ("app/data/a.txt", b"first data file\n".repeat(200)),
        (
            "app/data/b.txt",
            format!("second data file, version {v}\n")
                .repeat(300)
                .into_bytes(),
        ),
        ("app/data/c.bin", noise(11, 300_000)),
    ];
    let version = format!("v{v}\n").into_bytes();
    let mut entries = vec![dir("app"), file("app/main", MAIN, 0o755), dir("app/data")];
    let mut files = vec![("app/version".to_string(), version.clone())];
    for (p, d) in &data {
        entries.push(file(p, d, 0o644));
        files.push((p.to_string(), d.clone()));
    }
    entries.push(file("app/version", &version, 0o644));
    (tar_of(&entries), files)
}

fn push(reg: &TestRegistry, repo: &str, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) -> String {
    let layers: Vec<_> = layers
        .iter()
        .map(|t| starlight_layer(t, Compression::Gzip))
        .collect();
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, cmd);
    layout.tag(tag, &desc);
    let reference = format!("{}/{repo}:{tag}", reg.addr);
    layout.push(tag, &reference, false);
    reference
}

// ---------------------------------------------------------------------------
// starlightd.

/// A running `starlightd run`; SIGTERM (then SIGKILL) on drop, and every
/// mount left below its state directory is detached.
struct Daemon {
    child: Child,
    state: PathBuf,
    api: PathBuf,
    log: PathBuf,
}

struct DaemonSetup {
    dir: PathBuf,
    ca: PathBuf,
    namespace: String,
    containerd_socket: PathBuf,
}

impl DaemonSetup {
    fn snapshotter_socket(&self) -> PathBuf {
        self.dir.join("run/snapshotter.sock")
    }

    /// Starts starlightd talking to the proxy at `proxy` and waits for READY=1.
    fn start(&self, proxy: std::net::SocketAddr, token: &str) -> Daemon {
        let config = self.dir.join("starlightd.toml");
        std::fs::write(
            &config,
            format!(
                "proxy = \"{proxy}\"\nca_file = \"{}\"\ntoken = \"{token}\"\nstate_dir = \"{}\"\n\
                 grace_secs = {GRACE_SECS}\ncontainerd_socket = \"{}\"\nnamespace = \"{}\"\n\
                 snapshotter_socket = \"{}\"\napi_socket = \"{}\"\n",
                self.ca.display(),
                self.dir.join("state").display(),
                self.containerd_socket.display(),
                self.namespace,
                self.snapshotter_socket().display(),
                self.dir.join("run/api.sock").display(),
            ),
        )
        .unwrap();
        let notify_path = self.dir.join(format!("notify-{}.sock", unique_name("n")));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let log = self.dir.join("starlightd.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info,polyfuse=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            state: self.dir.join("state"),
            api: self.dir.join("run/api.sock"),
            log,
        };
        let mut buf = [0u8; 64];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", d.log_text()));
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&notify_path);
        d
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, rt: &tokio::runtime::Runtime, req: Request) -> Response {
        rt.block_on(tokio::time::timeout(
            Duration::from_secs(120),
            call(&self.api, &req, |_| {}),
        ))
        .expect("API call timed out")
        .unwrap()
    }

    fn pull(&self, rt: &tokio::runtime::Runtime, image: &str, wait: bool) -> PullReport {
        let req = Request::Pull {
            image: image.into(),
            from: vec![],
            wait,
            trace: false,
            unordered: false,
        };
        match self.call(rt, req) {
            Response::Pulled(r) => r,
            other => panic!("pull {image}: {other:?}\n{}", self.log_text()),
        }
    }

    fn images(&self, rt: &tokio::runtime::Runtime) -> Vec<ImageInfo> {
        match self.call(rt, Request::Images) {
            Response::Images(i) => i,
            other => panic!("images: {other:?}"),
        }
    }

    /// Peak resident set size (kB).
    fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM and wait (bounded); true if it exited 0.
    fn stop(mut self) -> bool {
        let ok = self.terminate();
        self.cleanup_mounts();
        ok
    }

    fn terminate(&mut self) -> bool {
        if let Ok(Some(s)) = self.child.try_wait() {
            return s.success();
        }
        // SAFETY: kill with our child's pid and a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    fn cleanup_mounts(&self) {
        unmount_under(&self.state);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        self.cleanup_mounts();
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

// ---------------------------------------------------------------------------
// A real `starlight-proxy serve` process (built beside starlightd).

/// The proxy binary built beside starlightd, if the workspace was built.
fn proxy_binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_starlightd")).with_file_name("starlight-proxy");
    p.is_file().then_some(p)
}

/// A `starlight-proxy serve` child with `[serve] rate_limit`; SIGKILL on drop.
struct ProxyProcess {
    child: Child,
    addr: std::net::SocketAddr,
    cert_pem: Vec<u8>,
}

impl ProxyProcess {
    fn start(bin: &Path, reg: &TestRegistry, dir: &Path, rate_limit: &str) -> ProxyProcess {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "db = \"{}\"\n[registry]\nurl = \"{}\"\nplain_http = true\n[serve]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{}\"]\nrate_limit = \"{rate_limit}\"\n",
                dir.join("db").display(),
                reg.addr,
                serve_support::TOKEN
            ),
        )
        .unwrap();
        let certs = dir.join("certs");
        let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--self-signed")
            .arg(&certs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("starlight-proxy said {line:?}"))
            .parse()
            .unwrap();
        ProxyProcess {
            child,
            addr,
            cert_pem: std::fs::read(certs.join("cert.pem")).unwrap(),
        }
    }

    /// SIGKILL: no goodbye to its clients.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The paced proxy of the early-start steps: a real process if built, else in-process.
enum PacedProxy {
    Process(ProxyProcess),
    InProcess(Proxy),
}

impl PacedProxy {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            PacedProxy::Process(p) => p.addr,
            PacedProxy::InProcess(p) => p.addr,
        }
    }

    fn cert_pem(&self) -> &[u8] {
        match self {
            PacedProxy::Process(p) => &p.cert_pem,
            PacedProxy::InProcess(p) => &p.cert_pem,
        }
    }

    /// Kills the process (SIGKILL), or stops the in-process server.
    fn kill(&mut self, rt: &tokio::runtime::Runtime) {
        match self {
            PacedProxy::Process(p) => p.kill(),
            PacedProxy::InProcess(p) => rt.block_on(p.stop()),
        }
    }
}

// ---------------------------------------------------------------------------
// Containers.

/// A `ctr run` in progress: its stdout lines with their arrival times.
struct Run {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Run {
    fn start(ctrd: &Containerd, namespace: &str, args: &[&str]) -> Run {
        let mut child = Command::new("timeout")
            .arg("120")
            .arg("ctr")
            .arg("--address")
            .arg(&ctrd.socket)
            .arg("--namespace")
            .arg(namespace)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Run { child, lines: rx }
    }

    /// The next stdout line (bounded wait).
    fn line(&mut self, within: Duration) -> (Instant, String) {
        match self.lines.recv_timeout(within) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let out = self.child.wait_with_output_ref();
                panic!("no line from the container within {within:?} ({e}); stderr: {out}");
            }
        }
    }

    /// Every remaining line, once the container exited (bounded).
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let mut lines = vec![];
        while let Ok((_, l)) = self.lines.recv_timeout(Duration::from_secs(120)) {
            lines.push(l);
        }
        let status = self.child.wait().unwrap();
        let stderr = self.child.wait_with_output_ref();
        (status, lines, stderr)
    }
}

trait StderrText {
    fn wait_with_output_ref(&mut self) -> String;
}

impl StderrText for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ctr` in `namespace` (bounded), panicking on failure; returns stdout.
fn ctr(ctrd: &Containerd, namespace: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("ctr")
        .arg("--address")
        .arg(&ctrd.socket)
        .arg("--namespace")
        .arg(namespace)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `image` with `snapshotter` (`ctr run --rm`); returns its first
/// stdout line (the ready line) and when it arrived.
fn run_to_ready(ctrd: &Containerd, ns: &str, image: &str, snapshotter: &str) -> (String, Instant) {
    let id = unique_name("c");
    let mut run = Run::start(
        ctrd,
        ns,
        &["--rm", "--snapshotter", snapshotter, image, &id],
    );
    let (at, line) = run.line(Duration::from_secs(120));
    let (status, _, stderr) = run.finish();
    assert!(status.success(), "ctr run {image}: {status} {stderr}");
    (line, at)
}

/// Unforced removal of `image`. `ctr run --rm` returns before containerd's
/// garbage collection removes the container's snapshot from the snapshotter
/// (asynchronous): until then the snapshot stands on the image and the
/// removal is refused, so retry that refusal (bounded).
fn remove_when_released(daemon: &Daemon, rt: &tokio::runtime::Runtime, image: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = daemon.call(
            rt,
            Request::Remove {
                image: image.to_string(),
                force: false,
            },
        );
        match &r {
            Response::Error(e) if e.contains("is used by") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => return r,
        }
    }
}

/// After starlightd restarted, containerd's connection to the snapshotter
/// plugin comes back with gRPC's reconnect backoff: wait (bounded) until a
/// snapshotter call goes through.
fn wait_for_snapshotter(ctrd: &Containerd, ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("timeout")
            .args(["20", "ctr", "--address"])
            .arg(&ctrd.socket)
            .args([
                "--namespace",
                ns,
                "snapshots",
                "--snapshotter",
                "starlight",
                "ls",
            ])
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `starlight` CLI built beside starlightd, if the workspace was built.
fn starlight_cli() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_starlightd")).with_file_name("starlight");
    p.is_file().then_some(p)
}

// ---------------------------------------------------------------------------

/// Removes runc's per-namespace state directories (empty once the test's
/// containers are gone; containerd 1.6 keeps them under /run/containerd/runc
/// whatever its root says) when dropped, even after a failure.
struct RuncNamespaces(Vec<String>);

impl Drop for RuncNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
        }
    }
}

/// The tests of this file run one at a time (they time things).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "needs root: containerd, runc and /dev/fuse"]
fn starlightd_end_to_end_with_containerd() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): the starlightd end-to-end test: {reason}");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let reg = TestRegistry::start();
    let base = base_layer();
    let (app1, files1) = app_layer(1);
    let (app2, files2) = app_layer(2);
    let v1 = push(&reg, "e2e/app", "v1", &[base.clone(), app1], &["/app/main"]);
    let v2 = push(&reg, "e2e/app", "v2", &[base.clone(), app2], &["/app/main"]);
    // The corrupt image: a big victim file whose member gets a flipped byte.
    let victim = noise(21, 2 << 20);
    let bad_layer = tar_of(&[
        dir("app"),
        file("app/victim.bin", &victim, 0o644),
        file("app/ok.txt", b"fine\n", 0o644),
    ]);
    let bad_blob = starlight_layer(&bad_layer, Compression::Gzip);
    let bad = push(
        &reg,
        "e2e/bad",
        "v1",
        &[base.clone(), bad_layer],
        &["/bin/cat", "/app/ok.txt"],
    );
    // The slow image: small files first, a large last file (last in the
    // body: no ranks yet, so layer then offset order).
    let slow_layer = |seed: u64| {
        tar_of(&[
            dir("app"),
            file("app/small-1", b"one\n", 0o644),
            file("app/small-2", &noise(seed, 10_000), 0o644),
            file("app/zz-large.bin", &noise(seed + 1, 8 << 20), 0o644),
        ])
    };
    let slow = push(
        &reg,
        "e2e/slow",
        "v1",
        &[base.clone(), slow_layer(31)],
        &["/bin/true"],
    );
    let slow2 = push(
        &reg,
        "e2e/slow",
        "v2",
        &[base.clone(), slow_layer(41)],
        &["/bin/true"],
    );

    let mut proxy = Proxy::start(&reg, ServeOptions::default());
    let dir = tempfile::Builder::new()
        .prefix("starlight-daemon-e2e.")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let namespace = unique_name("starlightd-e2e");
    let plain_ns = unique_name("plain");
    // Declared before containerd: dropped after it.
    let _runc_dirs = RuncNamespaces(vec![namespace.clone(), plain_ns.clone()]);
    let snapshotter_socket = dir.path().join("run/snapshotter.sock");
    let mut ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        snapshotter_socket.display()
    ));
    ctrd.namespace = namespace.clone();
    let setup = DaemonSetup {
        dir: dir.path().to_path_buf(),
        ca,
        namespace: namespace.clone(),
        containerd_socket: ctrd.socket.clone(),
    };
    let t_daemon = Instant::now();
    let daemon = setup.start(proxy.addr, serve_support::TOKEN);
    println!("starlightd ready (READY=1) after {:?}", t_daemon.elapsed());
    let step = |s: &str| println!("[{:>8.3} s] {s}", t_daemon.elapsed().as_secs_f64());

    // (1) pull v1 with the CLI (or the API), run it to its ready line. The
    // proxy indexes an image once, at its first request: index v1 first so
    // the time measures provisioning (a header fetch, as a converter would).
    {
        let t = Instant::now();
        let client = proxy.client();
        let req = serve_support::request(&v1, &[]);
        let mut stream = rt
            .block_on(client.fetch(proxy.addr, "127.0.0.1", &req))
            .unwrap();
        let first = rt.block_on(stream.next_event()).unwrap();
        assert!(matches!(first, Some(transport_quic::Event::Header(_))));
        println!("the proxy indexed v1 in {:.0} ms", ms(t.elapsed()));
    }
    let t0 = Instant::now();
    let report = match starlight_cli() {
        Some(cli) => {
            let out = Command::new("timeout")
                .arg("120")
                .arg(cli)
                .arg("pull")
                .arg("--api")
                .arg(&daemon.api)
                .arg(&v1)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "starlight pull: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.starts_with(&format!("registered {v1} (sha256:")),
                "{stdout}"
            );
            assert!(stdout.contains("payloads ("), "{stdout}");
            println!("starlight pull: {}", stdout.trim());
            None
        }
        None => {
            println!("(the starlight CLI is not built: pulling through the API)");
            Some(daemon.pull(&rt, &v1, false))
        }
    };
    let pulled = t0.elapsed();
    let (line, ready_at) = run_to_ready(&ctrd, &namespace, &v1, "starlight");
    let starlight_total = ready_at - t0;
    assert_eq!(line, "READY v1");
    step(&format!(
        "v1: pull {:.0} ms, ready line {:.0} ms after the pull began",
        ms(pulled),
        ms(starlight_total)
    ));
    drop(report);

    // Writes land in the container's layer, not in the image.
    let id = unique_name("c");
    let out = ctr(
        &ctrd,
        &namespace,
        &[
            "run",
            "--snapshotter",
            "starlight",
            &v1,
            &id,
            "sh",
            "-c",
            "echo written > /app/by-container; cat /app/by-container /app/version",
        ],
    );
    assert_eq!(out, "written\nv1\n");
    let images = daemon.images(&rt);
    let v1_info = images.iter().find(|i| i.name == v1).unwrap().clone();
    let image_dir = PathBuf::from(&v1_info.mountpoint);
    assert!(image_dir.join("app/version").exists());
    assert!(!image_dir.join("app/by-container").exists());
    let uppers: Vec<PathBuf> = std::fs::read_dir(dir.path().join("state/snapshotter/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path().join("fs/app/by-container"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(
        uppers.len(),
        1,
        "the write should be in exactly one snapshot"
    );
    assert_eq!(std::fs::read(&uppers[0]).unwrap(), b"written\n");
    ctr(&ctrd, &namespace, &["containers", "rm", &id]);
    step("a write landed in the container's own layer");

    // Reference: containerd's own pull and run (overlayfs), another namespace.
    let t0 = Instant::now();
    ctr(&ctrd, &plain_ns, &["images", "pull", "--plain-http", &v1]);
    let ctr_pulled = t0.elapsed();
    let (line, ready_at) = run_to_ready(&ctrd, &plain_ns, &v1, "overlayfs");
    let ctr_total = ready_at - t0;
    assert_eq!(line, "READY v1");
    println!(
        "NUMBERS pull-to-ready v1 ({} files): starlight {:.0} ms, ctr pull + ctr run {:.0} ms (pull {:.0} ms)",
        v1_info.files,
        ms(starlight_total),
        ms(ctr_total),
        ms(ctr_pulled)
    );
    ctr(&ctrd, &plain_ns, &["images", "rm", &v1]);

    // Wait for v1's body to complete (it is small).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon
        .images(&rt)
        .iter()
        .any(|i| i.name == v1 && i.complete)
    {
        assert!(
            Instant::now() < deadline,
            "v1 never completed:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // (2) Update: only what v1 lacks travels.
    let r2 = daemon.pull(&rt, &v2, true);
    let changed: Vec<&(String, Vec<u8>)> = files2
        .iter()
        .filter(|(p, d)| files1.iter().find(|(q, _)| q == p).map(|(_, e)| e) != Some(d))
        .collect();
    assert_eq!(changed.len(), 2, "version and b.txt change");
    let changed_bytes: u64 = changed.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(r2.payloads, 2, "{r2:?}");
    assert_eq!(r2.content_bytes, changed_bytes, "{r2:?}");
    assert_eq!(r2.complete, Some(true));
    let received = r2.bytes_received.unwrap();
    assert!(received >= r2.payload_bytes, "{r2:?}");
    // The header (TOC, manifest, config) plus framing, never the base layer.
    assert!(
        received < 200_000,
        "{received} bytes received for a two-file update"
    );
    step(&format!(
        "v2 update: {} payloads, {} content bytes, {} bytes on the wire",
        r2.payloads, r2.content_bytes, received
    ));
    let (line, _) = run_to_ready(&ctrd, &namespace, &v2, "starlight");
    assert_eq!(line, "READY v2");

    // Remove v1 (its two own contents go) and pull it again: exactly those
    // two travel back, and it runs.
    let v1_only: u64 = changed
        .iter()
        .map(|(p, _)| files1.iter().find(|(q, _)| q == p).unwrap().1.len() as u64)
        .sum();
    let removed = remove_when_released(&daemon, &rt, &v1);
    assert!(
        matches!(removed, Response::Removed { contents_freed: 2, bytes_freed, .. } if bytes_freed == v1_only),
        "{removed:?}"
    );
    let again = daemon.pull(&rt, &v1, true);
    assert_eq!(
        (again.payloads, again.content_bytes),
        (2, v1_only),
        "{again:?}"
    );
    assert_eq!(again.complete, Some(true));
    let (line, _) = run_to_ready(&ctrd, &namespace, &v1, "starlight");
    assert_eq!(line, "READY v1");
    step("v1 removed and pulled again: only its own two contents travelled");

    // (3) Corrupt payload: index first (a fetch of the bundle through the
    // proxy), then flip bytes of the victim's member in the registry.
    {
        let client = proxy.client();
        let req = serve_support::request(&bad, &[]);
        rt.block_on(serve_support::fetch(&client, proxy.addr, &req))
            .unwrap();
        let blob = reg.blob_path(&common::layout::digest_of(&bad_blob.blob));
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0xa5;
        }
        std::fs::write(&blob, &bytes).unwrap();
    }
    let rb = daemon.pull(&rt, &bad, true);
    assert_eq!(rb.complete, Some(false), "{rb:?}");
    let id = unique_name("c");
    let mut run = Run::start(
        &ctrd,
        &namespace,
        &[
            "--rm",
            "--snapshotter",
            "starlight",
            &bad,
            &id,
            "sh",
            "-c",
            "cat /app/ok.txt; if sha256sum /app/victim.bin; then echo READ; else echo FAILED; fi",
        ],
    );
    let _ = run.line(Duration::from_secs(120));
    let (_, lines, stderr) = run.finish();
    assert_eq!(
        lines,
        ["FAILED"],
        "the corrupt file must not be readable; stderr: {stderr}"
    );
    assert!(!dir
        .path()
        .join("state/content/sha256")
        .join(&hex::encode(serve_support::sha(&victim))[..2])
        .join(hex::encode(serve_support::sha(&victim)))
        .exists());
    step(&format!(
        "corrupt payload refused; the container saw: {}",
        stderr.trim()
    ));

    // (4) Restart without the proxy: v1 and v2 run again.
    rt.block_on(proxy.stop());
    let rss_kb = daemon.peak_rss_kb();
    assert!(daemon.stop(), "starlightd did not stop cleanly");
    let daemon = setup.start(proxy.addr, serve_support::TOKEN);
    let restarted = Instant::now();
    wait_for_snapshotter(&ctrd, &namespace);
    let reconnect = restarted.elapsed();
    let t = Instant::now();
    let (line, ready_at) = run_to_ready(&ctrd, &namespace, &v1, "starlight");
    let t = ready_at - t;
    assert_eq!(line, "READY v1");
    let (line, _) = run_to_ready(&ctrd, &namespace, &v2, "starlight");
    assert_eq!(line, "READY v2");
    step(&format!(
        "after a restart with the proxy gone, v1 ran to ready in {:.0} ms (containerd reconnected to the snapshotter after {:.0} ms)",
        ms(t),
        ms(reconnect)
    ));
    // A pull with the proxy gone still provisions a complete image, from
    // local state (after the connection attempt times out).
    let t = Instant::now();
    let offline = daemon.pull(&rt, &v2, false);
    assert_eq!(
        (offline.payloads, offline.complete),
        (0, Some(true)),
        "{offline:?}"
    );
    step(&format!(
        "pull of v2 with the proxy gone: served from local state in {:.0} ms",
        ms(t.elapsed())
    ));
    let log = daemon.log_text();
    assert!(log.contains("using the complete local image"));
    assert!(
        log.contains("image restored incomplete"),
        "the corrupt image is reported as incomplete"
    );

    // (5) Listing and removal: removing v1 frees only what v2 does not use.
    if let Some(cli) = starlight_cli() {
        let out = Command::new("timeout")
            .arg("60")
            .arg(cli)
            .args(["images", "--api"])
            .arg(&daemon.api)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        println!("starlight images:\n{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(&v1) && l.contains("complete")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(&bad) && l.contains("partial")),
            "{listing}"
        );
    }
    let images = daemon.images(&rt);
    assert_eq!(images.len(), 3, "{images:?}");
    let v2_info = images.iter().find(|i| i.name == v2).unwrap();
    assert!(v2_info.complete && v2_info.contents_held == v2_info.contents);
    let removed = remove_when_released(&daemon, &rt, &v1);
    let Response::Removed {
        contents_freed,
        bytes_freed,
        ..
    } = removed
    else {
        panic!("{removed:?}");
    };
    assert_eq!(contents_freed, 2, "v1's own version and b.txt");
    assert_eq!(
        bytes_freed,
        changed
            .iter()
            .map(|(p, _)| files1.iter().find(|(q, _)| q == p).unwrap().1.len() as u64)
            .sum::<u64>()
    );
    assert!(!ctr(&ctrd, &namespace, &["images", "ls", "-q"])
        .lines()
        .any(|l| l == v1));
    let (line, _) = run_to_ready(&ctrd, &namespace, &v2, "starlight");
    assert_eq!(line, "READY v2");
    step("v1 removed; v2 still runs");
    assert!(daemon.stop());

    // (6) Early start with the proxy paced at 2 MB/s (the body: base layer
    // plus 8 MB, several seconds).
    let mut slow_proxy = match proxy_binary() {
        Some(bin) => {
            println!(
                "early start through a starlight-proxy serve process, rate_limit = \"16mbit\""
            );
            PacedProxy::Process(ProxyProcess::start(
                &bin,
                &reg,
                &dir.path().join("proxy"),
                "16mbit",
            ))
        }
        None => {
            println!("(starlight-proxy is not built: the paced proxy runs in-process)");
            PacedProxy::InProcess(Proxy::start(
                &reg,
                ServeOptions {
                    rate_limit: Some(2_000_000),
                    ..ServeOptions::default()
                },
            ))
        }
    };
    std::fs::write(&setup.ca, slow_proxy.cert_pem()).unwrap();
    let daemon = setup.start(slow_proxy.addr(), serve_support::TOKEN);
    wait_for_snapshotter(&ctrd, &namespace);
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    let (api, slow_ref) = (daemon.api.clone(), slow.clone());
    let pulling = rt.spawn(async move {
        let req = Request::Pull {
            image: slow_ref,
            from: vec![],
            wait: true,
            trace: true,
            unordered: false,
        };
        call(&api, &req, |p| {
            if let Response::Registered(_) = p {
                let _ = tx.send(Instant::now());
            }
        })
        .await
    });
    let Ok(registered) = rx.recv_timeout(Duration::from_secs(60)) else {
        panic!(
            "the slow image was never registered: {:?}\n{}",
            rt.block_on(pulling),
            daemon.log_text()
        );
    };
    let id = unique_name("c");
    let mut run = Run::start(&ctrd, &namespace, &[
        "--rm", "--snapshotter", "starlight", &slow, &id, "sh", "-c",
        "stat -c '%n %s' /app/small-1 /app/small-2 /app/zz-large.bin > /dev/null && echo started && cat /app/small-1 > /dev/null && echo small-read && sha256sum /app/zz-large.bin > /dev/null && echo large-read",
    ]);
    let (started, l1) = run.line(Duration::from_secs(60));
    assert_eq!(l1, "started");
    let (small_read, l2) = run.line(Duration::from_secs(60));
    assert_eq!(l2, "small-read");
    let (large_read, l3) = run.line(Duration::from_secs(120));
    assert_eq!(l3, "large-read");
    let (status, _, stderr) = run.finish();
    assert!(status.success(), "{stderr}");
    let done = rt.block_on(pulling).unwrap().unwrap();
    let Response::Pulled(report) = done else {
        panic!("{done:?}")
    };
    assert_eq!(report.complete, Some(true));
    let body_end = t0 + Duration::from_secs_f64(report.complete_secs.unwrap());
    let at = |i: Instant| ms(i.saturating_duration_since(t0));
    println!(
        "TIMELINE early start (proxy paced at 2 MB/s, {} payload bytes):",
        report.payload_bytes
    );
    println!("  {:>8.0} ms  header, image registered", at(registered));
    println!(
        "  {:>8.0} ms  container: stat of every file done, started",
        at(started)
    );
    println!("  {:>8.0} ms  container: small file read", at(small_read));
    println!("  {:>8.0} ms  body complete", at(body_end));
    println!(
        "  {:>8.0} ms  container: large (last) file read",
        at(large_read)
    );
    assert!(
        body_end - registered > Duration::from_secs(2),
        "the body should take seconds"
    );
    assert!(
        started < body_end - Duration::from_secs(1),
        "the container must start well before the body ends"
    );
    // The large file is last in the body: its open waited for (nearly) the
    // whole body. (body_end also counts the store's final sync, so compare
    // with the start instead.)
    assert!(
        large_read > started + Duration::from_secs(2),
        "the large file cannot be read before it arrives"
    );

    // The trace (pulled with trace = true): the first open of each file,
    // with how long it waited; taking it clears it.
    let Response::Trace(trace) = daemon.call(
        &rt,
        Request::TakeTrace {
            image: slow.clone(),
        },
    ) else {
        panic!("no trace");
    };
    for r in &trace {
        println!(
            "  trace: {:>7.0} ms  waited {:>7.0} ms  layer {}  {}",
            r.at_ms, r.wait_ms, r.layer, r.path
        );
    }
    let small = trace
        .iter()
        .find(|r| r.path.ends_with("app/small-1"))
        .expect("small-1 traced");
    let large = trace
        .iter()
        .find(|r| r.path.ends_with("app/zz-large.bin"))
        .expect("large traced");
    assert_eq!((small.layer, large.layer), (1, 1));
    assert!(trace
        .iter()
        .any(|r| r.path.ends_with("bin/busybox") && r.layer == 0));
    assert!(
        large.wait_ms > 1000.0,
        "the large file's open waited for its content: {large:?}"
    );
    assert!(small.at_ms < large.at_ms);
    assert_eq!(
        trace
            .iter()
            .filter(|r| r.path.ends_with("app/zz-large.bin"))
            .count(),
        1
    );
    let Response::Trace(again) = daemon.call(
        &rt,
        Request::TakeTrace {
            image: slow.clone(),
        },
    ) else {
        panic!("no trace");
    };
    assert!(again.is_empty());

    // (7) Kill the proxy mid-body: the waiting open fails with EIO within
    // the grace time.
    let (tx, rx) = mpsc::channel();
    let (api, slow_ref) = (daemon.api.clone(), slow2.clone());
    let pulling = rt.spawn(async move {
        let req = Request::Pull {
            image: slow_ref,
            from: vec![],
            wait: true,
            trace: false,
            unordered: false,
        };
        call(&api, &req, |p| {
            if let Response::Registered(_) = p {
                let _ = tx.send(());
            }
        })
        .await
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "slow v2 was never registered: {:?}\n{}",
            rt.block_on(pulling),
            daemon.log_text()
        );
    }
    let id = unique_name("c");
    let mut run = Run::start(&ctrd, &namespace, &[
        "--rm", "--snapshotter", "starlight", &slow2, &id, "sh", "-c",
        "echo started; if cat /app/zz-large.bin > /dev/null; then echo READ; else echo FAILED; fi",
    ]);
    let (_, l) = run.line(Duration::from_secs(60));
    assert_eq!(l, "started");
    let killed = Instant::now();
    slow_proxy.kill(&rt);
    let (t_fail, l) = run.line(Duration::from_secs(GRACE_SECS + 60));
    assert_eq!(l, "FAILED");
    let waited = t_fail - killed;
    let (_, _, stderr) = run.finish();
    assert!(
        stderr.contains("Input/output error"),
        "the open must fail with EIO: {stderr}"
    );
    // Bound: the dead proxy is noticed within DEAD_PROXY, then the grace.
    let bound = starlight_worker::manager::DEAD_PROXY + Duration::from_secs(GRACE_SECS + 10);
    assert!(waited < bound, "{waited:?} (bound {bound:?})");
    println!(
        "proxy killed mid-body: the waiting open failed with EIO after {:.0} ms (grace {GRACE_SECS} s, dead-proxy detection {:?})",
        ms(waited),
        starlight_worker::manager::DEAD_PROXY
    );
    let done = rt.block_on(pulling).unwrap().unwrap();
    let Response::Pulled(report) = done else {
        panic!("{done:?}")
    };
    assert_eq!(report.complete, Some(false));
    assert!(daemon.log_text().contains("waiting opens get EIO"));

    let rss2 = daemon.peak_rss_kb();
    println!(
        "NUMBERS starlightd peak RSS: {} kB (first run, 3 images), {} kB (early-start run)",
        rss_kb, rss2
    );
    assert!(daemon.stop());
    drop(ctrd);
}

/// Numbers on a larger image (2,200 files, about 16 MB): time from the
/// pull to the ready line through starlightd and through containerd's own
/// pull and run (overlayfs), and starlightd's peak RSS.
#[test]
#[ignore = "needs root: containerd, runc and /dev/fuse"]
fn provisioning_numbers_for_a_larger_image() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): the starlightd numbers test: {reason}");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let reg = TestRegistry::start();
    let mut entries = vec![dir("app"), dir("app/text"), dir("app/blobs")];
    entries.push(file(
        "app/main",
        b"#!/bin/sh\nfor i in 0 7 99 1500; do cat /app/text/t$i.txt > /dev/null || exit 1; done\ncat /app/blobs/b3.bin /app/blobs/b150.bin > /dev/null || exit 1\necho READY\n",
        0o755,
    ));
    for i in 0..2000u64 {
        let text = format!("line {i} of a text file with some repetition\n").repeat(100);
        entries.push(file(&format!("app/text/t{i}.txt"), text.as_bytes(), 0o644));
    }
    for i in 0..200u64 {
        entries.push(file(
            &format!("app/blobs/b{i}.bin"),
            &noise(1000 + i, 64 << 10),
            0o644,
        ));
    }
    let image = push(
        &reg,
        "numbers/app",
        "v1",
        &[base_layer(), tar_of(&entries)],
        &["/app/main"],
    );
    let proxy = Proxy::start(&reg, ServeOptions::default());
    {
        // The proxy indexes an image once, ahead of workers' pulls.
        let client = proxy.client();
        let req = serve_support::request(&image, &[]);
        let mut stream = rt
            .block_on(client.fetch(proxy.addr, "127.0.0.1", &req))
            .unwrap();
        let first = rt.block_on(stream.next_event()).unwrap();
        assert!(matches!(first, Some(transport_quic::Event::Header(_))));
    }
    let dir = tempfile::Builder::new()
        .prefix("starlight-daemon-numbers.")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let namespace = unique_name("starlightd-numbers");
    let plain_ns = unique_name("plain");
    let _runc_dirs = RuncNamespaces(vec![namespace.clone(), plain_ns.clone()]);
    let mut ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        dir.path().join("run/snapshotter.sock").display()
    ));
    ctrd.namespace = namespace.clone();
    let setup = DaemonSetup {
        dir: dir.path().to_path_buf(),
        ca,
        namespace: namespace.clone(),
        containerd_socket: ctrd.socket.clone(),
    };
    let daemon = setup.start(proxy.addr, serve_support::TOKEN);

    let t0 = Instant::now();
    let report = daemon.pull(&rt, &image, false);
    let (line, ready_at) = run_to_ready(&ctrd, &namespace, &image, "starlight");
    assert_eq!(line, "READY");
    let starlight = ready_at - t0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let info = loop {
        let images = daemon.images(&rt);
        if let Some(i) = images.into_iter().find(|i| i.name == image && i.complete) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "never completed:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let complete = t0.elapsed();
    let rss = daemon.peak_rss_kb();

    let t0 = Instant::now();
    ctr(
        &ctrd,
        &plain_ns,
        &["images", "pull", "--plain-http", &image],
    );
    let pulled = t0.elapsed();
    let (line, ready_at) = run_to_ready(&ctrd, &plain_ns, &image, "overlayfs");
    assert_eq!(line, "READY");
    let plain = ready_at - t0;
    println!(
        "NUMBERS larger image ({} files, {} contents, {:.1} MB of payloads): pull to ready line: starlight {:.0} ms (registered {:.0} ms, body complete ~{:.0} ms), ctr pull + ctr run {:.0} ms (pull {:.0} ms); starlightd peak RSS {} kB",
        info.files,
        info.contents,
        report.payload_bytes as f64 / 1e6,
        ms(starlight),
        report.registered_secs * 1e3,
        ms(complete),
        ms(plain),
        ms(pulled),
        rss
    );
    ctr(&ctrd, &plain_ns, &["images", "rm", &image]);
    assert!(daemon.stop());
    drop(ctrd);
}

// ---------------------------------------------------------------------------
// Issue 12: the image commits to its file tables; hard links.

/// A layer entry with hard links and whiteouts: path, content (none: a
/// directory), hard-link target, mode.
type LinkEntry<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>, u32);

/// An uncompressed tar with directories, files and hard links.
fn link_tar(entries: &[LinkEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, link, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        match (data, link) {
            (_, Some(target)) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            (Some(d), None) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, *d).unwrap();
            }
            (None, None) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// What the hard-link image's container prints: each path's size, mode,
/// owner, link count and content, and which names share an inode.
const LINK_SCRIPT: &str = r#"cd /data
for f in a b b2 c d e f; do
  if [ -e $f ]; then echo "$f $(stat -c '%s %a %u %g %h' $f) $(cat $f)"; else echo "$f missing"; fi
done
for p in "a b" "b b2" "e f" "b d"; do
  set -- $p
  if [ "$(stat -c %i $1)" = "$(stat -c %i $2)" ]; then echo "$1=$2 same inode"; else echo "$1,$2 distinct"; fi
done
"#;

/// Issue 12 (MEDIUM): a hard link whose target a later layer replaces
/// (`b`, `b2` → `a`) or deletes (`d` → `c`) keeps its own layer's content,
/// exactly as overlayfs on containerd shows it. The image is converted by
/// `convert_image` (so its manifest carries the table-of-contents
/// annotations), served by a real proxy, pulled by starlightd (which
/// verifies the header against the manifest) and run with the starlight
/// snapshotter; the output must equal the original's and the converted
/// image's under containerd's own overlayfs snapshotter.
#[test]
#[ignore = "needs root: containerd, runc, FUSE (starlightd)"]
fn hard_links_to_replaced_or_deleted_targets_match_overlayfs() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run: {reason}");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let reg = TestRegistry::start();
    let lower = link_tar(&[
        ("data", None, None, 0o755),
        ("data/a", Some(b"original A\n"), None, 0o640),
        ("data/b", None, Some("data/a"), 0o640),
        ("data/b2", None, Some("data/a"), 0o640),
        ("data/c", Some(b"original C\n"), None, 0o600),
        ("data/d", None, Some("data/c"), 0o600),
        ("data/e", Some(b"intact E\n"), None, 0o644),
        ("data/f", None, Some("data/e"), 0o644),
    ]);
    let upper = link_tar(&[
        ("data", None, None, 0o755),
        ("data/a", Some(b"replaced A, longer\n"), None, 0o644),
        ("data/.wh.c", Some(b""), None, 0o644),
    ]);
    let mut layout = OciLayout::new();
    let layers = [base_layer(), lower, upper].map(|t| common::layout::Layer::gzip(&t));
    let desc = layout.add_image("linux", "amd64", &layers, &["/bin/sh"]);
    layout.tag("orig", &desc);
    let original = format!("{}/e2e/links:orig", reg.addr);
    let converted = format!("{}/e2e/links:conv", reg.addr);
    layout.push("orig", &original, false);
    let client = starlight_proxy::registry::RegistryClient::new(true);
    let report = rt
        .block_on(starlight_proxy::convert::convert_image(
            &client,
            &original,
            &converted,
            &starlight_proxy::convert::ConvertImageOptions::default(),
        ))
        .unwrap();
    println!("converted: {}", report.tagged_digest);

    let proxy = Proxy::start(&reg, ServeOptions::default());
    let dir = tempfile::Builder::new()
        .prefix("starlight-links-e2e.")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let namespace = unique_name("links-starlight");
    let plain_ns = unique_name("links-plain");
    let _runc_dirs = RuncNamespaces(vec![namespace.clone(), plain_ns.clone()]);
    let snapshotter_socket = dir.path().join("run/snapshotter.sock");
    let mut ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        snapshotter_socket.display()
    ));
    ctrd.namespace = namespace.clone();
    let setup = DaemonSetup {
        dir: dir.path().to_path_buf(),
        ca,
        namespace: namespace.clone(),
        containerd_socket: ctrd.socket.clone(),
    };
    let daemon = setup.start(proxy.addr, serve_support::TOKEN);

    let run = |ns: &str, image: &str, snapshotter: &str| {
        let id = unique_name("c");
        ctr(
            &ctrd,
            ns,
            &[
                "run",
                "--rm",
                "--snapshotter",
                snapshotter,
                image,
                &id,
                "sh",
                "-c",
                LINK_SCRIPT,
            ],
        )
    };
    ctr(
        &ctrd,
        &plain_ns,
        &["images", "pull", "--plain-http", &original],
    );
    let overlay_original = run(&plain_ns, &original, "overlayfs");
    ctr(
        &ctrd,
        &plain_ns,
        &["images", "pull", "--plain-http", &converted],
    );
    let overlay_converted = run(&plain_ns, &converted, "overlayfs");
    let pulled = daemon.pull(&rt, &converted, true);
    assert_eq!(pulled.complete, Some(true), "{pulled:?}");
    let starlight = run(&namespace, &converted, "starlight");
    println!("overlayfs (original image):\n{overlay_original}");
    println!("starlight snapshotter (converted image):\n{starlight}");
    assert_eq!(overlay_original, overlay_converted);
    assert_eq!(
        starlight, overlay_original,
        "the starlight snapshotter differs from overlayfs"
    );
    // And what overlayfs shows is what the issue demands: the links keep
    // their own layer's content.
    for want in [
        "a 19 644 0 0 1 replaced A, longer",
        "b 11 640 0 0 3 original A",
        "b2 11 640 0 0 3 original A",
        "c missing",
        "d 11 600 0 0 2 original C",
        "f 9 644 0 0 2 intact E",
        "a,b distinct",
        "b=b2 same inode",
        "e=f same inode",
        "b,d distinct",
    ] {
        assert!(
            starlight.lines().any(|l| l == want),
            "missing {want:?} in:\n{starlight}"
        );
    }
    assert!(daemon.stop(), "starlightd did not stop cleanly");
}

/// A bundle as relayed: its header and each payload's compressed bytes.
type Bundle = (transport_quic::Header, Vec<Vec<u8>>);

/// A bundle server that relays an honest bundle (fetched once from the
/// real proxy) with its header changed by the current tamper function.
struct TamperingServer {
    bundles: std::sync::Mutex<std::collections::HashMap<String, Bundle>>,
    tamper: std::sync::Mutex<fn(&mut transport_quic::Header)>,
}

impl TamperingServer {
    async fn serve(
        &self,
        request: transport_quic::Request,
        out: &mut transport_quic::quic::BundleWriter,
    ) -> Result<(), transport_quic::quic::HandlerError> {
        let bundle = self.bundles.lock().unwrap().get(&request.image).cloned();
        let Some((mut header, bodies)) = bundle else {
            return Err(transport_quic::quic::HandlerError::new(
                transport_quic::ErrorCode::NotFound,
                "no such image",
            ));
        };
        let tamper = *self.tamper.lock().unwrap();
        tamper(&mut header);
        out.send_header(&header).await?;
        for (i, body) in bodies.iter().enumerate() {
            out.begin_payload(i as u32).await?;
            out.send_data(body).await?;
            out.end_payload().await?;
        }
        let totals = out.totals();
        out.finish(totals).await?;
        Ok(())
    }
}

impl transport_quic::quic::BundleHandler for TamperingServer {
    fn handle<'a>(
        &'a self,
        request: transport_quic::Request,
        out: &'a mut transport_quic::quic::BundleWriter,
    ) -> transport_quic::quic::HandlerFuture<'a> {
        Box::pin(self.serve(request, out))
    }
}

/// The honest bundle of `image` from the real proxy: header and payloads.
fn honest_bundle(rt: &tokio::runtime::Runtime, proxy: &Proxy, image: &str) -> Bundle {
    rt.block_on(async {
        let client = proxy.client();
        let req = serve_support::request(image, &[]);
        let mut stream = client.fetch(proxy.addr, "127.0.0.1", &req).await.unwrap();
        let mut header = None;
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        while let Some(event) = stream.next_event().await.unwrap() {
            match event {
                transport_quic::Event::Header(h) => header = Some(h),
                transport_quic::Event::PayloadBegin { .. } => bodies.push(Vec::new()),
                transport_quic::Event::PayloadData { data, .. } => {
                    bodies.last_mut().unwrap().extend_from_slice(&data)
                }
                transport_quic::Event::Error(e) => panic!("{image}: {e}"),
                _ => {}
            }
        }
        (header.unwrap(), bodies)
    })
}

/// Files below `dir` (recursively).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Mount points below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let base = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&base))
        .map(str::to_string)
        .collect()
}

/// Issue 12 (HIGH): a server with a valid certificate sends the real
/// starlightd a header whose table of contents, layer tables or manifest do
/// not follow from the image: each pull is refused with a clear error, and
/// nothing is recorded, stored or mounted. The same server relaying the
/// honest header is accepted (the control).
#[test]
#[ignore = "needs root: containerd, FUSE (starlightd)"]
fn starlightd_refuses_headers_that_do_not_follow_from_the_manifest() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run: {reason}");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let reg = TestRegistry::start();
    let (app1, _) = app_layer(1);
    let (app2, _) = app_layer(2);
    let v1 = push(
        &reg,
        "e2e/tamper",
        "v1",
        &[base_layer(), app1],
        &["/app/main"],
    );
    let v2 = push(
        &reg,
        "e2e/tamper",
        "v2",
        &[base_layer(), app2],
        &["/app/main"],
    );
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let (h1, b1) = honest_bundle(&rt, &proxy, &v1);
    let (h2, b2) = honest_bundle(&rt, &proxy, &v2);
    let by_digest = format!("{}@{}", v1.rsplit_once(':').unwrap().0, h1.manifest_digest);
    let header_bytes = postcard::to_stdvec(&h1).unwrap().len();
    let tables_bytes = postcard::to_stdvec(&h1.layer_tocs).unwrap().len();
    println!(
        "honest header of v1: {header_bytes} bytes, {} merged entries; the per-layer tables take {tables_bytes} bytes ({} entries)",
        h1.toc.len(),
        h1.layer_tocs.iter().map(Vec::len).sum::<usize>()
    );

    let server = std::sync::Arc::new(TamperingServer {
        bundles: std::sync::Mutex::new(
            [
                (v1.clone(), (h1.clone(), b1.clone())),
                (by_digest.clone(), (h2.clone(), b2.clone())),
            ]
            .into_iter()
            .collect(),
        ),
        tamper: std::sync::Mutex::new(|_| {}),
    });
    let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
    let quic = transport_quic::quic::Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        transport_quic::quic::ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.into_bytes(),
        },
        [serve_support::TOKEN],
        server.clone(),
    )
    .unwrap();

    let dir = tempfile::Builder::new()
        .prefix("starlight-tamper-e2e.")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let namespace = unique_name("tamper");
    let _runc_dirs = RuncNamespaces(vec![namespace.clone()]);
    let snapshotter_socket = dir.path().join("run/snapshotter.sock");
    let mut ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        snapshotter_socket.display()
    ));
    ctrd.namespace = namespace.clone();
    let setup = DaemonSetup {
        dir: dir.path().to_path_buf(),
        ca,
        namespace: namespace.clone(),
        containerd_socket: ctrd.socket.clone(),
    };
    let daemon = setup.start(quic.local_addr(), serve_support::TOKEN);
    let state = dir.path().join("state");

    fn index(h: &transport_quic::Header, path: &str) -> usize {
        h.toc.iter().position(|e| e.path == path).unwrap()
    }
    type Tamper = fn(&mut transport_quic::Header);
    let cases: [(&str, &str, Tamper); 6] = [
        ("setuid on a merged entry", "mode does not follow", |h| {
            let i = index(h, "app/main");
            h.toc[i].mode |= 0o4000;
        }),
        ("a file owned by another uid", "uid does not follow", |h| {
            let i = index(h, "app/version");
            h.toc[i].uid = 4242;
        }),
        (
            "an entry added to the merged table and its layer table",
            "commits to",
            |h| {
                let mut e = h.layer_tocs[1][0].clone();
                e.path = "app/evil".into();
                h.layer_tocs[1].push(e);
                let i = index(h, "app");
                let mut t = h.toc[i].clone();
                t.path = "app/evil".into();
                h.toc.insert(i + 1, t);
            },
        ),
        ("the layer tables swapped", "commits to", |h| {
            h.layer_tocs.swap(0, 1)
        }),
        ("a payload's hash", "payload", |h| {
            h.payloads[0].sha256[0] ^= 1
        }),
        (
            "the manifest's annotations dropped",
            "has no io.starlight.toc.digest",
            |h| {
                let text = String::from_utf8(h.manifest.clone()).unwrap();
                let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
                for l in m["layers"].as_array_mut().unwrap() {
                    l.as_object_mut().unwrap().remove("annotations");
                }
                h.manifest = serde_json::to_vec(&m).unwrap();
                h.manifest_digest =
                    format!("sha256:{}", hex::encode(serve_support::sha(&h.manifest)));
            },
        ),
    ];
    let refused = |image: &str, what: &str, want: &str| {
        let req = Request::Pull {
            image: image.into(),
            from: vec![],
            wait: true,
            trace: false,
            unordered: false,
        };
        match daemon.call(&rt, req) {
            Response::Error(e) => {
                println!("{what}: refused: {e}");
                assert!(
                    e.contains("does not follow from the image's manifest"),
                    "{what}: {e}"
                );
                assert!(e.contains(want), "{what}: {e}");
            }
            other => panic!("{what}: not refused: {other:?}"),
        }
        assert!(
            daemon.images(&rt).is_empty(),
            "{what}: an image was recorded"
        );
        assert_eq!(
            mounts_below(&state),
            Vec::<String>::new(),
            "{what}: mounted"
        );
        let stored: Vec<_> = files_below(&state.join("content"));
        assert!(stored.is_empty(), "{what}: contents stored: {stored:?}");
        assert!(!state.join("mnt").exists() || files_below(&state.join("mnt")).is_empty());
    };
    for (what, want, tamper) in cases {
        *server.tamper.lock().unwrap() = tamper;
        refused(&v1, what, want);
    }
    // A pull by digest answered with another (genuine) manifest.
    *server.tamper.lock().unwrap() = |_| {};
    refused(
        &by_digest,
        "a pull by digest answered with v2",
        "but the proxy sent",
    );

    // The control: the same server relaying the honest header is accepted.
    let report = daemon.pull(&rt, &v1, true);
    assert_eq!(report.complete, Some(true), "{report:?}");
    assert_eq!(daemon.images(&rt).len(), 1);
    assert!(
        !mounts_below(&state).is_empty(),
        "the honest image is mounted"
    );
    let (line, _) = run_to_ready(&ctrd, &namespace, &v1, "starlight");
    assert_eq!(line, "READY v1");
    assert!(daemon.stop(), "starlightd did not stop cleanly");
    rt.block_on(quic.shutdown());
}
