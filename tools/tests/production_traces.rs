//! Acceptance tests of issue 11, item 1, on real containerd + runc, a real
//! `starlightd`, the proxy over QUIC and a real `docker-registry`: traces
//! of real container starts, with no `starlight trace` run.
//!
//! 1. A normal `ctr run` of a pulled image produces a trace that reaches the
//!    proxy and puts the files the container opened first in the next
//!    bundle's payload order.
//! 2. A trace written while the proxy is down stays in starlightd's spool;
//!    once the proxy is back it is delivered and counted once (a second
//!    delivery of the same trace is acknowledged as a duplicate and not
//!    counted), and the spool is empty.
//!
//! Needs root, /dev/fuse, /bin/busybox, containerd 1.6, runc, ctr and
//! docker-registry; needs `starlightd` built beside this test (`cargo build
//! -p starlight-worker`). Every wait is bounded; the daemon, containerd and
//! the registry are stopped by guards.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::layout::OciLayout;
use common::registry::TestRegistry;
use serve_support::{fetch, noise, request, starlight_layer, Proxy, TOKEN};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use support::containerd::{is_root, unique_name, Containerd};
use tokio::io::{AsyncBufReadExt, BufReader};
use transport_quic::quic::{Client, ClientTls, Server, ServerTls};
use transport_quic::Source;

/// Files the entrypoint reads, in this order (layer order would be a0..a15,
/// then b0..b15).
const ACCESS: [&str; 6] = [
    "data/b6", "data/a1", "data/b2", "data/a7", "data/b0", "data/a4",
];
/// Size of each data file (incompressible).
const DATA_LEN: usize = 64 * 1024;

/// starlightd's `[traces]` for the tests: windows of `window_secs`, short
/// upload intervals and retries.
fn traces_toml(window_secs: u64) -> String {
    format!(
        "[traces]\nenabled = true\nwindow_secs = {window_secs}\nupload_interval_ms = 100\nretry_max_secs = 2\n"
    )
}

fn require_root() {
    assert!(is_root(), "run as root (see the ignore reason)");
    for p in ["/dev/fuse", "/bin/busybox"] {
        assert!(Path::new(p).exists(), "{p} is missing");
    }
}

/// `starlightd`, built beside this test's binary.
fn starlightd_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("starlightd");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p starlight-worker)",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------
// The image.

enum Item {
    Dir,
    File(Vec<u8>, u32),
    Symlink(&'static str),
}

fn tar_of(items: &[(String, Item)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, item) in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Item::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Item::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Three layers: busybox and the entrypoint; data/a*; data/b*. The
/// entrypoint reads [`ACCESS`] and prints READY.
fn push_image(reg: &TestRegistry, repo: &str) -> String {
    let mut base: Vec<(String, Item)> = ["bin", "etc", "tmp", "proc", "sys", "dev", "app", "data"]
        .iter()
        .map(|d| (d.to_string(), Item::Dir))
        .collect();
    base.push((
        "bin/busybox".into(),
        Item::File(std::fs::read("/bin/busybox").unwrap(), 0o755),
    ));
    for applet in ["sh", "cat", "echo"] {
        base.push((format!("bin/{applet}"), Item::Symlink("busybox")));
    }
    let mut script = String::from("#!/bin/sh\n");
    // The names are put together at run time, so the proxy's static
    // analysis of the script cannot know them: only a trace can.
    script.push_str("for f in");
    for f in ACCESS {
        script.push_str(&format!(" {}", f.trim_start_matches("data/")));
    }
    script.push_str("; do cat \"/data/$f\" > /dev/null || exit 1; done\n");
    script.push_str("echo READY\n");
    base.push((
        "app/start.sh".into(),
        Item::File(script.into_bytes(), 0o755),
    ));
    let data = |prefix: &str, seed: u64| -> Vec<(String, Item)> {
        (0..16)
            .map(|i| {
                (
                    format!("data/{prefix}{i}"),
                    Item::File(noise(seed + i, DATA_LEN), 0o644),
                )
            })
            .collect()
    };
    let layers: Vec<_> = [base, data("a", 100), data("b", 200)]
        .iter()
        .map(|items| starlight_layer(&tar_of(items), Compression::Gzip))
        .collect();
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, &["/app/start.sh"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/{repo}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

// ---------------------------------------------------------------------------
// The proxy, on a QUIC server of the test's own that can be stopped and
// started again on the same address and certificate.

struct TestProxy {
    proxy: Proxy,
    cert: String,
    key: String,
    addr: SocketAddr,
    server: Option<Server>,
}

impl TestProxy {
    fn start(reg: &TestRegistry) -> TestProxy {
        let mut proxy = Proxy::start(reg, ServeOptions::default());
        // Its own server is replaced by one whose key the test keeps.
        let _ = proxy.server.take();
        let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
        let mut p = TestProxy {
            proxy,
            cert,
            key,
            addr: "127.0.0.1:0".parse().unwrap(),
            server: None,
        };
        p.up();
        p
    }

    fn up(&mut self) {
        let server = Server::bind(
            self.addr,
            ServerTls {
                cert_chain_pem: self.cert.clone().into_bytes(),
                key_pem: self.key.clone().into_bytes(),
            },
            [TOKEN],
            self.proxy.handler.clone(),
        )
        .unwrap();
        self.addr = server.local_addr();
        self.server = Some(server);
    }

    async fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    fn client(&self) -> Client {
        Client::new(ClientTls::CaPem(self.cert.clone().into_bytes())).unwrap()
    }

    /// The paths of the next bundle's payloads, in body order.
    async fn body_order(&self, image: &str) -> Vec<String> {
        let bundle = fetch(&self.client(), self.addr, &request(image, &[]))
            .await
            .unwrap();
        (0..bundle.header.payloads.len() as u32)
            .map(|i| {
                bundle
                    .header
                    .toc
                    .iter()
                    .find(|e| e.source == Source::Payload(i))
                    .unwrap()
                    .path
                    .clone()
            })
            .collect()
    }

    fn digest(&self, image: &str) -> String {
        self.proxy
            .db
            .image_by_reference(image)
            .unwrap()
            .unwrap()
            .manifest_digest
    }

    fn traces(&self, image: &str) -> u64 {
        self.proxy.db.trace_count(&self.digest(image)).unwrap()
    }
}

// ---------------------------------------------------------------------------
// starlightd.

/// A running starlightd with production traces on; stopped (SIGTERM, then
/// SIGKILL) and its mounts removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    api: PathBuf,
    log: PathBuf,
    snap: PathBuf,
    namespace: String,
}

impl Daemon {
    fn start(
        dir: &Path,
        proxy: &TestProxy,
        containerd: &Containerd,
        snap: &Path,
        window_secs: u64,
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(snap);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &proxy.cert).unwrap();
        let config = dir.join("starlightd.toml");
        std::fs::write(&config, traces_toml(window_secs)).unwrap();
        let namespace = unique_name("sl-prodtrace");
        let api = dir.join("api.sock");
        let log = dir.join("starlightd.log");
        let child = Command::new(starlightd_bin())
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&config)
            .arg("--proxy")
            .arg(proxy.addr.to_string())
            .arg("--server-name")
            .arg("127.0.0.1")
            .arg("--ca")
            .arg(&ca)
            .arg("--token")
            .arg(TOKEN)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--containerd-socket")
            .arg(&containerd.socket)
            .arg("--namespace")
            .arg(&namespace)
            .arg("--snapshotter-socket")
            .arg(snap)
            .arg("--api-socket")
            .arg(&api)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
            api,
            log,
            snap: snap.to_path_buf(),
            namespace,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(d.api.exists() && snap.exists()) {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("starlightd exited ({status}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "starlightd did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spool(&self) -> PathBuf {
        self.dir.join("state/traces")
    }

    /// The spooled traces' files.
    fn spooled(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.spool())
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| Path::new(p).starts_with(&self.dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = std::fs::remove_file(&self.snap);
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

fn starlight(args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("300")
        .arg(env!("CARGO_BIN_EXE_starlight"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ starlight {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A plain `ctr run --rm` of `image` to its ready line.
async fn run_to_ready(d: &Daemon, c: &Containerd, image: &str) {
    let id = unique_name("prod");
    let mut child = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(&c.socket)
        .arg("-n")
        .arg(&d.namespace)
        .args(["run", "--rm", "--snapshotter", "starlight", image, &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("READY") {
                return true;
            }
        }
        false
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    assert!(
        matches!(ready, Ok(true)),
        "no ready line ({ready:?}, {status:?}):\nstarlightd:\n{}\ncontainerd:\n{}",
        d.log(),
        c.log()
    );
}

/// Waits up to `secs` for `cond`.
async fn wait_for(secs: u64, what: &str, d: &Daemon, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\nstarlightd:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data_first(order: &[String]) -> Vec<String> {
    order
        .iter()
        .filter(|p| p.starts_with("data/"))
        .take(ACCESS.len())
        .cloned()
        .collect()
}

struct Setup {
    _reg: TestRegistry,
    image: String,
    proxy: TestProxy,
    dir: tempfile::TempDir,
    containerd: Containerd,
    snap: PathBuf,
}

fn setup(repo: &str) -> Setup {
    require_root();
    let reg = TestRegistry::start();
    let image = push_image(&reg, repo);
    let proxy = TestProxy::start(&reg);
    let dir = tempfile::Builder::new()
        .prefix("starlight-prodtrace.")
        .tempdir()
        .unwrap();
    let snap = dir.path().join("snapshotter.sock");
    let containerd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        snap.display()
    ));
    Setup {
        _reg: reg,
        image,
        proxy,
        dir,
        containerd,
        snap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: containerd, runc, FUSE, docker-registry and starlightd"]
async fn a_plain_ctr_run_traces_itself_and_reorders_the_next_bundle() {
    let s = setup("prodtrace/order");
    let before = s.proxy.body_order(&s.image).await;
    let expected: Vec<String> = ACCESS.iter().map(|p| p.to_string()).collect();
    assert_ne!(
        data_first(&before),
        expected,
        "the untraced order already follows the accesses: the test proves nothing"
    );
    assert_eq!(s.proxy.traces(&s.image), 0);

    let daemon = Daemon::start(
        &s.dir.path().join("worker"),
        &s.proxy,
        &s.containerd,
        &s.snap,
        4,
    );
    s.containerd.wait_for_snapshotter("starlight");
    let api = daemon.api.to_str().unwrap().to_string();
    let pull = starlight(&["pull", "--api", &api, &s.image]);
    assert!(
        pull.status.success(),
        "pull failed:\n{}\ncontainerd:\n{}",
        daemon.log(),
        s.containerd.log()
    );
    // A normal start: no `starlight trace`, no --trace.
    run_to_ready(&daemon, &s.containerd, &s.image).await;
    let ready = Instant::now();
    wait_for(60, "the trace reaches the proxy", &daemon, || {
        s.proxy.traces(&s.image) == 1
    })
    .await;
    eprintln!(
        "trace folded by the proxy {:.2} s after the ready line (window 4 s)",
        ready.elapsed().as_secs_f64()
    );
    wait_for(10, "the spool empties", &daemon, || {
        daemon.spooled().is_empty()
    })
    .await;

    let after = s.proxy.body_order(&s.image).await;
    eprintln!("body order before: {before:?}\nafter: {after:?}");
    assert_ne!(before, after, "the trace did not change the order");
    assert_eq!(data_first(&after), expected, "body order: {after:?}");
    // What the container opened comes first: the entrypoint, busybox and
    // the data files it read, before any data file it did not read.
    let ranked = s
        .proxy
        .proxy
        .db
        .own_ranks(&s.proxy.digest(&s.image))
        .unwrap()
        .len();
    assert!(ranked >= ACCESS.len() + 2, "{ranked} paths ranked");
    let first = &after[..ranked];
    for p in ["app/start.sh", "bin/busybox"] {
        assert!(first.iter().any(|f| f == p), "{p} not first: {after:?}");
    }
    assert!(
        first
            .iter()
            .all(|p| !p.starts_with("data/") || ACCESS.contains(&p.as_str())),
        "an unread data file among the first: {after:?}"
    );
    assert!(
        daemon.log().contains("trace delivered to the proxy"),
        "{}",
        daemon.log()
    );
    // A second start, and the image removed while its trace window is
    // still open: that trace is delivered too (without the removal hook the
    // recorder would go with the mount, and the count would stay 1).
    run_to_ready(&daemon, &s.containerd, &s.image).await;
    // The container of that start still stands on the image: forced.
    let rm = starlight(&["rm", "--force", "--api", &api, &s.image]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let removed = Instant::now();
    wait_for(
        30,
        "the removed image's trace reaches the proxy",
        &daemon,
        || s.proxy.traces(&s.image) == 2,
    )
    .await;
    eprintln!(
        "trace of the removed image folded {:.2} s after `starlight rm`",
        removed.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: containerd, runc, FUSE, docker-registry and starlightd"]
async fn a_trace_made_while_the_proxy_is_down_is_delivered_later_and_counted_once() {
    let mut s = setup("prodtrace/offline");
    let daemon = Daemon::start(
        &s.dir.path().join("worker"),
        &s.proxy,
        &s.containerd,
        &s.snap,
        2,
    );
    let api = daemon.api.to_str().unwrap().to_string();
    // The whole image, so that it runs with the proxy down.
    let pull = starlight(&["pull", "--api", &api, "--wait", &s.image]);
    assert!(
        pull.status.success(),
        "pull failed:\n{}\ncontainerd:\n{}",
        daemon.log(),
        s.containerd.log()
    );

    s.proxy.down().await;
    run_to_ready(&daemon, &s.containerd, &s.image).await;
    wait_for(30, "the trace is spooled", &daemon, || {
        daemon.spooled().len() == 1
    })
    .await;
    let file = daemon.spooled().remove(0);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&daemon.spool()), 0o700);
    // Paths only: the data files' contents (64 KiB of noise each) are not in it.
    let spooled = std::fs::read(&file).unwrap();
    let text = String::from_utf8(spooled.clone()).unwrap();
    for p in ACCESS {
        assert!(text.contains(p), "{p} not in the trace: {text}");
    }
    assert!(spooled.len() < 16 * 1024, "{} bytes", spooled.len());
    // Uploads fail meanwhile (twice at least) and are retried; the trace stays.
    wait_for(60, "two failed uploads", &daemon, || {
        daemon.log().matches("kept for a retry").count() >= 2
    })
    .await;
    assert_eq!(daemon.spooled(), vec![file.clone()]);
    assert_eq!(s.proxy.traces(&s.image), 0);

    s.proxy.up();
    let back = Instant::now();
    wait_for(90, "the trace is delivered", &daemon, || {
        daemon.spooled().is_empty()
    })
    .await;
    eprintln!(
        "spooled trace delivered {:.2} s after the proxy came back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(s.proxy.traces(&s.image), 1);

    // The same trace sent again (as after an acknowledgement lost on the
    // way back): acknowledged, not counted, deleted.
    let copy = s.dir.path().join("again.json");
    std::fs::write(&copy, &spooled).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    wait_for(30, "the repeated trace is acknowledged", &daemon, || {
        daemon.spooled().is_empty()
    })
    .await;
    wait_for(10, "the duplicate is acknowledged", &daemon, || {
        daemon.log().contains("duplicate=true")
    })
    .await;
    assert_eq!(s.proxy.traces(&s.image), 1, "counted twice");
    starlight(&["rm", "--api", &api, &s.image]);
}
