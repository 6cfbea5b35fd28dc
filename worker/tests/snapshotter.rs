//! The `starlight` snapshotter under a real containerd, runc and
//! docker-registry: a two-layer busybox image is pulled with
//! `--snapshotter starlight` and run; what the container writes lands in its
//! active snapshot's upper dir only; the committed snapshots survive a
//! restart of the snapshotter (metadata in RocksDB); removing the container
//! and the image leaves no record and no directory behind.
//!
//! Needs root (containerd); skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../tools/tests/support/mod.rs"]
mod support;
#[path = "support/tar.rs"]
mod tar_support;
use tar_support::{tar_of, TarEntry};

use common::layout::{Layer, OciLayout};
use common::registry::TestRegistry;
use starlight_worker::snapshotter::store::Kind;
use starlight_worker::snapshotter::{serve_snapshotter, OverlaySnapshotter};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::containerd::{is_root, unique_name, Containerd};

/// Lazily unmounts every mount point below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    for p in mounts_under(dir).into_iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// Mount points below `dir`, shortest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| p.len());
    points
}

// ---------------------------------------------------------------------------
// The snapshotter, served in-process.

struct Snapshotter {
    sn: Arc<OverlaySnapshotter>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Snapshotter {
    fn start(rt: &tokio::runtime::Runtime, socket: &Path, state: &Path) -> Self {
        let sn = OverlaySnapshotter::open(state).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (sn2, socket2) = (sn.clone(), socket.to_path_buf());
        let task = rt.spawn(async move {
            serve_snapshotter(sn2, &socket2, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "snapshotter socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Snapshotter {
            sn,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving; panics unless it stops within 20 s.
    fn stop(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await })
                .expect("snapshotter did not stop within 20 s")
                .unwrap();
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.sn.close();
    }
}

// ---------------------------------------------------------------------------
// A private containerd (the tools' test helper) with the snapshotter as a
// proxy plugin.

fn start_containerd(snapshotter_socket: &Path) -> Containerd {
    Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        snapshotter_socket.display()
    ))
}

/// The snapshotter's state directory; unmounts anything left below it
/// before it is removed.
struct StateDir(tempfile::TempDir);

impl Drop for StateDir {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

// ---------------------------------------------------------------------------
// The image.

/// Pushes a two-layer busybox image; returns its reference.
fn push_image(registry: &TestRegistry) -> String {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt install busybox-static)");
    let mut lower: Vec<TarEntry<'_>> = vec![
        ("bin", None, None, 0o755),
        ("bin/busybox", Some(&busybox), None, 0o755),
        ("tmp", None, None, 0o1777),
        ("etc", None, None, 0o755),
    ];
    for applet in ["bin/sh", "bin/echo", "bin/cat"] {
        lower.push((applet, None, Some("busybox"), 0o777));
    }
    let upper = tar_of(&[
        ("etc", None, None, 0o755),
        ("etc/layer2", Some(b"from the second layer\n"), None, 0o644),
    ]);
    let layers = [Layer::gzip(&tar_of(&lower)), Layer::gzip(&upper)];
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, &["sh"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/snapshotter/busybox:v1", registry.addr);
    layout.push("v1", &reference, false);
    reference
}

/// Polls `cond` every 100 ms for at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn snapshot_dirs(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root: containerd"]
fn containerd_pulls_and_runs_on_the_starlight_snapshotter() {
    if !is_root() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): needs root (containerd)");
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state_dir = StateDir(
        tempfile::Builder::new()
            .prefix("starlight-snap.")
            .tempdir()
            .unwrap(),
    );
    let socket = state_dir.0.path().join("snapshotter.sock");
    let state = state_dir.0.path().join("state");
    let registry = TestRegistry::start();
    let reference = push_image(&registry);
    step("image pushed");

    let mut snap = Some(Snapshotter::start(&rt, &socket, &state));
    let ctrd = start_containerd(&socket);
    step("containerd started");

    // Pull: containerd unpacks both layers into committed snapshots.
    ctrd.ctr_ok(&[
        "images",
        "pull",
        "--snapshotter",
        "starlight",
        "--plain-http",
        &reference,
    ]);
    step("pulled");
    let sn = snap.as_ref().unwrap().sn.clone();
    let committed = sn.records().unwrap();
    assert_eq!(committed.len(), 2, "{committed:#?}");
    assert!(committed.iter().all(|r| r.kind == Kind::Committed));
    let top = committed.iter().find(|r| !r.parent.is_empty()).unwrap();
    let base = committed.iter().find(|r| r.parent.is_empty()).unwrap();
    assert_eq!(top.parent, base.key);
    assert!(sn.fs_dir(base.id).join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read(sn.fs_dir(top.id).join("etc/layer2")).unwrap(),
        b"from the second layer\n"
    );
    assert!(!sn.fs_dir(top.id).join("bin").exists());
    let listed = ctrd.ctr_ok(&["snapshots", "--snapshotter", "starlight", "ls"]);
    assert_eq!(listed.lines().count(), 3, "{listed}"); // header + 2
    assert!(listed.contains("Committed"), "{listed}");

    // Labels under containerd.io/snapshot/ reach the snapshotter (Update);
    // usage is measured on the layer's directory.
    let base_name = base.key.splitn(3, '/').nth(2).unwrap().to_string();
    ctrd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "starlight",
        "label",
        &base_name,
        "containerd.io/snapshot/starlight.test=yes",
    ]);
    let labels = sn.record(&base.key).unwrap().labels;
    assert_eq!(
        labels
            .get("containerd.io/snapshot/starlight.test")
            .map(String::as_str),
        Some("yes"),
        "{labels:?}"
    );
    let usage = ctrd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "starlight",
        "usage",
        "-b",
        &base_name,
    ]);
    let fields: Vec<&str> = usage.lines().nth(1).unwrap().split_whitespace().collect();
    let busybox_len = std::fs::metadata("/bin/busybox").unwrap().len();
    assert!(fields[1].parse::<u64>().unwrap() >= busybox_len, "{usage}");
    assert_eq!(fields[2], "7", "{usage}"); // bin, busybox, 3 links, tmp, etc
    let committed = sn.records().unwrap();

    // Run with --rm: the ready line, a write and a read of both layers.
    let out = ctrd.ctr_ok(&[
        "run",
        "--snapshotter",
        "starlight",
        "--rm",
        &reference,
        &unique_name("c"),
        "sh",
        "-c",
        "echo ready; echo hi > /tmp/x; cat /tmp/x; cat /etc/layer2",
    ]);
    step("ran a container (--rm)");
    assert_eq!(out, "ready\nhi\nfrom the second layer\n");
    // containerd removes backend snapshots in its garbage collection, soon
    // after the metadata record.
    wait_for(30, "the --rm container's snapshot to be removed", || {
        sn.records().unwrap().len() == 2
    });

    // Run without --rm: the write is in the active snapshot's upper dir only.
    let id = unique_name("c");
    let out = ctrd.ctr_ok(&[
        "run",
        "--snapshotter",
        "starlight",
        &reference,
        &id,
        "sh",
        "-c",
        "echo hi > /tmp/x; cat /tmp/x",
    ]);
    assert_eq!(out, "hi\n");
    let records = sn.records().unwrap();
    let active: Vec<_> = records.iter().filter(|r| r.kind == Kind::Active).collect();
    assert_eq!(active.len(), 1, "{records:#?}");
    assert!(active[0].key.ends_with(&format!("/{id}")), "{records:#?}");
    assert_eq!(active[0].parent, top.key);
    assert_eq!(
        std::fs::read(sn.fs_dir(active[0].id).join("tmp/x")).unwrap(),
        b"hi\n"
    );
    for r in &committed {
        assert!(!sn.fs_dir(r.id).join("tmp/x").exists());
    }
    let active_dir = sn.snapshot_dir(active[0].id);
    ctrd.ctr_ok(&["containers", "rm", &id]);
    // The record goes first, then (before the Remove call returns) the dir.
    wait_for(
        30,
        "the container's snapshot and its dir to be removed",
        || sn.records().unwrap().len() == 2 && !active_dir.exists(),
    );
    assert_eq!(sn.records().unwrap(), committed);
    step("ran a container, inspected and removed it");

    // Unknown keys answer NotFound.
    let out = ctrd.ctr(&[
        "snapshots",
        "--snapshotter",
        "starlight",
        "info",
        "no-such-key",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("not found"), "{err}");

    // Restart: the committed snapshots come back from RocksDB.
    drop(sn);
    snap.take().unwrap().stop(&rt);
    assert!(!socket.exists());
    step("snapshotter stopped");
    snap = Some(Snapshotter::start(&rt, &socket, &state));
    let sn = snap.as_ref().unwrap().sn.clone();
    assert_eq!(sn.records().unwrap(), committed);
    // containerd reconnects to the proxy plugin with backoff.
    wait_for(60, "containerd to reach the restarted snapshotter", || {
        ctrd.ctr(&["snapshots", "--snapshotter", "starlight", "ls"])
            .status
            .success()
    });
    let out = ctrd.ctr_ok(&[
        "run",
        "--snapshotter",
        "starlight",
        "--rm",
        &reference,
        &unique_name("c"),
        "sh",
        "-c",
        "echo ready; cat /etc/layer2",
    ]);
    assert_eq!(out, "ready\nfrom the second layer\n");
    step("restarted and ran again");

    // Removing the image frees every snapshot and its directory.
    ctrd.ctr_ok(&["images", "rm", "--sync", &reference]);
    wait_for(
        30,
        "snapshots and their dirs to be garbage-collected",
        || sn.records().unwrap().is_empty() && snapshot_dirs(&state).is_empty(),
    );
    assert_eq!(mounts_under(state_dir.0.path()), Vec::<String>::new());
    step("image removed, snapshotter empty");

    drop(ctrd);
    drop(sn);
    snap.take().unwrap().stop(&rt);
    assert_eq!(mounts_under(state_dir.0.path()), Vec::<String>::new());
    step("done");
}
