//! Acceptance test of issue 6 on real containerd: a busybox image whose
//! entrypoint reads data files in a fixed order that differs from layer
//! order is pushed to a real `docker-registry`, served by the proxy over
//! QUIC (its body paced so that waiting is visible), pulled by a real
//! `starlightd` and run by real containerd and runc on the `starlight`
//! snapshotter.
//!
//! 1. Untraced: `starlight pull --trace` (ranks on, but none recorded yet:
//!    layer order), run to the ready line; starlightd's trace says how long
//!    each first open waited for its content.
//! 2. `starlight trace --runs 2 --ready READY` collects and uploads traces.
//! 3. The bundle body now follows the access order.
//! 4. Traced: the same pull and run; the time opens spent blocked drops.
//!
//! Needs root, /dev/fuse and /bin/busybox; skipped with a message otherwise.
//! Needs the `starlightd` binary built beside this test (`cargo build
//! --workspace`, as scripts/test.sh does). Every wait is bounded; the
//! daemon, containerd and the registry are stopped by guards.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::layout::OciLayout;
use common::registry::TestRegistry;
use serve_support::{fetch, noise, request, starlight_layer, Proxy, TOKEN};
use starlight_api::TraceRecord;
use starlight_api::{call, Request as ApiRequest, Response};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use support::containerd::{is_root, unique_name, Containerd};
use tokio::io::{AsyncBufReadExt, BufReader};
use transport_quic::Source;

/// Files the entrypoint reads, in this order (layer order would be a0..a15,
/// then b0..b15).
const ACCESS: [&str; 6] = [
    "data/b6", "data/a1", "data/b2", "data/a7", "data/b0", "data/a4",
];
/// Size of each data file (incompressible).
const DATA_LEN: usize = 192 * 1024;
/// Traced runs `starlight trace` makes (each removes the image first, then
/// pulls it again into starlightd).
const TRACE_RUNS: u64 = 2;
/// The proxy's pace for bundle bodies, bytes per second.
const RATE: u64 = 2_000_000;

fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    for p in ["/dev/fuse", "/bin/busybox"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing"));
        }
    }
    None
}

/// `starlightd`, built beside this test's binary.
fn starlightd_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("starlightd");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
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

fn entrypoint() -> Vec<u8> {
    let mut s = String::from("#!/bin/sh\n");
    // The names are put together at run time, so the proxy's static
    // analysis of the script cannot know them: only a trace can.
    s.push_str("for f in");
    for f in ACCESS {
        s.push_str(&format!(" {}", f.trim_start_matches("data/")));
    }
    s.push_str("; do cat \"/data/$f\" > /dev/null || exit 1; done\n");
    s.push_str("echo READY\n");
    s.into_bytes()
}

/// Three layers: busybox and the entrypoint; data/a*; data/b*.
fn push_image(reg: &TestRegistry) -> String {
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
    base.push(("app/start.sh".into(), Item::File(entrypoint(), 0o755)));
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
    let reference = format!("{}/trace/e2e:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

// ---------------------------------------------------------------------------
// starlightd.

/// A running starlightd; stopped (SIGTERM, then SIGKILL) and its mounts
/// removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    api: PathBuf,
    log: PathBuf,
    snap: PathBuf,
    /// The containerd namespace it registers images in.
    namespace: String,
}

impl Daemon {
    /// Starts a daemon with its own state below `dir` and its own containerd
    /// namespace: every phase of the test starts from an empty worker.
    fn start(dir: &Path, proxy: &Proxy, ca: &Path, containerd: &Containerd, snap: &Path) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(snap);
        let namespace = unique_name("sl-trace");
        let api = dir.join("api.sock");
        let log = dir.join("starlightd.log");
        let child = Command::new(starlightd_bin())
            .env("RUST_LOG", "info")
            .arg("--proxy")
            .arg(proxy.addr.to_string())
            .arg("--server-name")
            .arg("127.0.0.1")
            .arg("--ca")
            .arg(ca)
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
        // Whatever is still mounted below the daemon's directory, deepest first.
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
        // containerd 1.6 leaves runc's (empty) state directory of the namespace.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

// ---------------------------------------------------------------------------
// One measured start.

/// What one pull-and-run measured.
#[derive(Debug)]
struct Start {
    /// From the pull command to the ready line.
    to_ready: Duration,
    /// First opens recorded by starlightd, in order.
    trace: Vec<TraceRecord>,
}

impl Start {
    fn waited_ms(&self) -> f64 {
        self.trace.iter().map(|r| r.wait_ms).sum()
    }

    fn blocked(&self) -> usize {
        self.trace.iter().filter(|r| r.wait_ms >= 1.0).count()
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

/// Removes the image, pulls it with tracing on (ranks used), runs it to its
/// ready line, and takes starlightd's trace.
async fn measured_start(d: &Daemon, c: &Containerd, image: &str) -> Start {
    let api = d.api.to_str().unwrap();
    starlight(&["rm", "--api", api, image]);
    let started = Instant::now();
    let pull = starlight(&["pull", "--api", api, "--trace", image]);
    assert!(pull.status.success(), "pull failed:\n{}", d.log());
    let id = unique_name("traced");
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
    let to_ready = started.elapsed();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    if !matches!(ready, Ok(true)) {
        let _ = Command::new("timeout")
            .arg("60")
            .arg("ctr")
            .arg("--address")
            .arg(&c.socket)
            .arg("-n")
            .arg(&d.namespace)
            .args(["task", "kill", "-s", "SIGKILL", &id])
            .status();
        panic!(
            "no ready line ({ready:?}, {status:?}):\nstarlightd:\n{}\ncontainerd:\n{}",
            d.log(),
            c.log()
        );
    }
    let trace = match call(
        &d.api,
        &ApiRequest::TakeTrace {
            image: image.to_string(),
        },
        |_| {},
    )
    .await
    .unwrap()
    {
        Response::Trace(t) => t,
        other => panic!("TakeTrace answered {other:?}"),
    };
    Start { to_ready, trace }
}

fn data_order(trace: &[TraceRecord]) -> Vec<String> {
    trace
        .iter()
        .filter(|r| r.path.starts_with("data/"))
        .map(|r| r.path.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: containerd, runc and /dev/fuse"]
async fn traced_bundles_follow_the_access_order_and_block_less() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): {reason}");
    }
    let reg = TestRegistry::start();
    let image = push_image(&reg);
    let proxy = Proxy::start(
        &reg,
        ServeOptions {
            rate_limit: Some(RATE),
            ..ServeOptions::default()
        },
    );
    let dir = tempfile::Builder::new()
        .prefix("starlight-trace-e2e.")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    // Each phase: a fresh containerd and a fresh starlightd (empty store).
    let phase = |name: &str| {
        let snap = dir.path().join(format!("{name}.snapshotter.sock"));
        let containerd = Containerd::start_with(&format!(
            "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            snap.display()
        ));
        let daemon = Daemon::start(&dir.path().join(name), &proxy, &ca, &containerd, &snap);
        (daemon, containerd)
    };
    let expected: Vec<String> = ACCESS.iter().map(|s| s.to_string()).collect();

    // 1. Untraced: the body comes in layer order.
    let (daemon, containerd) = phase("untraced");
    let before = measured_start(&daemon, &containerd, &image).await;
    assert_eq!(
        data_order(&before.trace),
        expected,
        "the entrypoint's reads"
    );
    drop(daemon);
    drop(containerd);

    // 2. Trace collection with the real CLI.
    let (daemon, containerd) = phase("tracing");
    let pending = dir.path().join("pending");
    let out = starlight(&[
        "trace",
        "--runs",
        &TRACE_RUNS.to_string(),
        "--ready",
        "^READY$",
        "--timeout",
        "120",
        "--api",
        daemon.api.to_str().unwrap(),
        "--config",
        dir.path().join("none.toml").to_str().unwrap(),
        "--proxy",
        &proxy.addr.to_string(),
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        TOKEN,
        "--containerd-socket",
        containerd.socket.to_str().unwrap(),
        "--namespace",
        &daemon.namespace,
        "--pending-dir",
        pending.to_str().unwrap(),
        &image,
    ]);
    assert!(
        out.status.success(),
        "starlight trace failed:\n{}",
        daemon.log()
    );
    drop(daemon);
    drop(containerd);
    assert_eq!(
        std::fs::read_dir(&pending).unwrap().count(),
        0,
        "traces left pending"
    );
    let digest = proxy
        .db
        .image_by_reference(&image)
        .unwrap()
        .unwrap()
        .manifest_digest;
    assert_eq!(proxy.db.trace_count(&digest).unwrap(), TRACE_RUNS);

    // 3. The bundle body follows the access order: the traced files first,
    //    the data files among them exactly in the entrypoint's order.
    let client = proxy.client();
    let bundle = fetch(&client, proxy.addr, &request(&image, &[]))
        .await
        .unwrap();
    let body: Vec<String> = (0..bundle.header.payloads.len() as u32)
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
        .collect();
    let body_data: Vec<String> = body
        .iter()
        .filter(|p| p.starts_with("data/"))
        .take(ACCESS.len())
        .cloned()
        .collect();
    assert_eq!(body_data, expected, "body order: {body:?}");
    let ranked = proxy.db.own_ranks(&digest).unwrap().len();
    assert!(
        ranked > ACCESS.len(),
        "busybox, the script and the data files"
    );
    assert!(
        body[..ranked]
            .iter()
            .all(|p| !p.starts_with("data/") || ACCESS.contains(&p.as_str())),
        "an untraced data file before a traced one: {body:?}"
    );

    // 4. Traced: the same start blocks less.
    let (daemon, containerd) = phase("traced");
    let after = measured_start(&daemon, &containerd, &image).await;
    assert_eq!(data_order(&after.trace), expected);
    eprintln!(
        "time to ready: layer order {:.3} s, ranked {:.3} s; \
         blocked in open: layer order {:.0} ms over {} opens, ranked {:.0} ms over {} opens \
         ({} files opened; body paced at {} B/s)",
        before.to_ready.as_secs_f64(),
        after.to_ready.as_secs_f64(),
        before.waited_ms(),
        before.blocked(),
        after.waited_ms(),
        after.blocked(),
        after.trace.len(),
        RATE
    );
    assert!(
        after.waited_ms() < 0.75 * before.waited_ms(),
        "blocked {:.0} ms traced vs {:.0} ms untraced",
        after.waited_ms(),
        before.waited_ms()
    );
    assert!(after.to_ready < before.to_ready);

    starlight(&["rm", "--api", daemon.api.to_str().unwrap(), &image]);
    drop(daemon);
    drop(containerd);
}
