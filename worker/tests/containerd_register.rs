//! An image registered in a real containerd from its Starlight bundle header
//! alone, run by real runc on the `starlight` snapshotter over the image's
//! real FUSE mount: a two-layer busybox image is converted to the Starlight
//! format, pushed to a real `docker-registry`, served by the in-process proxy
//! over QUIC, its bundle header received, the image mounted with `ImageFs`,
//! and registered with `starlight_worker::containerd::Containerd`. Then
//! `ctr run --snapshotter starlight` runs it with no layer blob in
//! containerd's content store; a file the container writes lands in its
//! active snapshot's upper dir, never in the image; a second registration
//! changes nothing; removing the image lets containerd's GC drop its
//! snapshots and blobs.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise. Every wait is
//! bounded; mounts, containerd and the registry are torn down by guards.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;
#[path = "support/tar.rs"]
mod tar_support;
use tar_support::{tar_of, TarEntry};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::layout::{digest_of, Layer, OciLayout};
use common::registry::TestRegistry;
use serve_support::{request, starlight_layer, Proxy};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::containerd::{top_of_label, Containerd as Client, LABEL_IMAGE};
use starlight_worker::imagefs::ImageFs;
use starlight_worker::manager::BoxFuture;
use starlight_worker::receiver::{self, ReceiveOptions, ReceiveReport};
use starlight_worker::snapshotter::store::Kind;
use starlight_worker::snapshotter::{
    serve_snapshotter, ImageMounts, LowerDirError, OverlaySnapshotter,
};
use starlight_worker::store::Store;
use starlight_worker::waiters::ContentWaiters;
use support::containerd::{is_root, unique_name, Containerd};
use transport_quic::Header;
use uring_fs::{MountOptions, Session};

const BOUND: Duration = Duration::from_secs(60);
const GREETING: &[u8] = b"hello from the second layer\n";

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

/// A temporary directory; anything still mounted below it is unmounted
/// (lazily, deepest first) before it is removed.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in mounts_under(self.0.path()).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

// ---------------------------------------------------------------------------
// The image.

/// The busybox layer (with a few applets, and the mount points runc wants)
/// and a layer holding `/etc/greeting`, both in the Starlight format.
fn layers() -> [Layer; 2] {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut lower: Vec<TarEntry<'_>> = vec![
        ("bin", None, None, 0o755),
        ("bin/busybox", Some(&busybox), None, 0o755),
        ("tmp", None, None, 0o1777),
        ("etc", None, None, 0o755),
        ("dev", None, None, 0o755),
        ("proc", None, None, 0o755),
        ("sys", None, None, 0o755),
    ];
    for applet in ["bin/sh", "bin/cat", "bin/echo", "bin/ls", "bin/test"] {
        lower.push((applet, None, Some("busybox"), 0o777));
    }
    let upper = tar_of(&[
        ("etc", None, None, 0o755),
        ("etc/greeting", Some(GREETING), None, 0o644),
    ]);
    [
        starlight_layer(&tar_of(&lower), Compression::Gzip),
        starlight_layer(&upper, Compression::Gzip),
    ]
}

/// Pushes an image of `layers` running `cmd` as `REGISTRY/name:v1`;
/// returns its reference.
fn push(reg: &TestRegistry, name: &str, layers: &[Layer], cmd: &[&str]) -> String {
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", layers, cmd);
    layout.tag("v1", &desc);
    let reference = format!("{}/{name}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

// ---------------------------------------------------------------------------
// The worker's pieces.

/// Image views for the snapshotter: the test mounts each image itself.
#[derive(Default)]
struct TestMounts {
    dirs: Mutex<HashMap<String, PathBuf>>,
    asked: Mutex<Vec<String>>,
}

impl ImageMounts for TestMounts {
    fn lower_dir<'a>(
        &'a self,
        manifest_digest: &'a str,
    ) -> BoxFuture<'a, Result<PathBuf, LowerDirError>> {
        self.asked.lock().unwrap().push(manifest_digest.to_string());
        let answer = self
            .dirs
            .lock()
            .unwrap()
            .get(manifest_digest)
            .cloned()
            .ok_or_else(|| LowerDirError::Unknown(manifest_digest.to_string()));
        Box::pin(async move { answer })
    }
}

/// The snapshotter served in-process; stops on drop.
struct Served {
    sn: Arc<OverlaySnapshotter>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    fn start(rt: &tokio::runtime::Runtime, sn: Arc<OverlaySnapshotter>, socket: &Path) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (sn2, socket2) = (sn.clone(), socket.to_path_buf());
        let task = rt.spawn(async move {
            serve_snapshotter(sn2, &socket2, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        wait_for(10, "the snapshotter socket", || socket.exists());
        Served {
            sn,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

impl Drop for Served {
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

/// Polls `cond` every 100 ms for at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An image pulled by the test's worker: its header and its FUSE mount.
struct Pulled {
    header: Arc<starlight_worker::header_check::CheckedHeader>,
    dir: PathBuf,
    session: Session,
    done: tokio::task::JoinHandle<Result<ReceiveReport, receiver::ReceiveError>>,
}

/// Receives `image`'s bundle into the store; once its header arrived,
/// mounts the image on `dir` and makes it known to `mounts`.
fn pull_and_mount(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    store: &Arc<Store>,
    waiters: &Arc<ContentWaiters>,
    mounts: &TestMounts,
    image: &str,
    dir: PathBuf,
) -> Pulled {
    let receiving = receiver::start(
        Arc::new(proxy.client()),
        proxy.addr.into(),
        request(image, &[]),
        store.clone(),
        waiters.clone(),
        ReceiveOptions {
            server_name: "127.0.0.1".into(),
            grace: Duration::from_secs(5),
            ..ReceiveOptions::default()
        },
    );
    let header = rt
        .block_on(tokio::time::timeout(BOUND, receiving.header))
        .expect("header within the bound")
        .expect("a header");
    let session = mount_image(rt, store, waiters, mounts, &header, &dir);
    Pulled {
        header,
        dir,
        session,
        done: receiving.done,
    }
}

/// Mounts the image of `header` on `dir` and makes it known to `mounts`.
fn mount_image(
    rt: &tokio::runtime::Runtime,
    store: &Arc<Store>,
    waiters: &Arc<ContentWaiters>,
    mounts: &TestMounts,
    header: &Header,
    dir: &Path,
) -> Session {
    std::fs::create_dir_all(dir).unwrap();
    let fs = ImageFs::new(
        header,
        store.clone(),
        waiters.clone(),
        Duration::from_secs(1),
    )
    .unwrap();
    let session = rt
        .block_on(tokio::time::timeout(
            BOUND,
            Session::mount(
                dir,
                fs,
                MountOptions::default().fs_name("starlight-register-test"),
            ),
        ))
        .expect("mounted within the bound")
        .unwrap();
    mounts
        .dirs
        .lock()
        .unwrap()
        .insert(header.manifest_digest.clone(), dir.to_path_buf());
    session
}

/// The header of an image with `h`'s layers and a config padded past
/// `pad` bytes (so it is written to containerd in several messages).
fn with_big_config(h: &Header, pad: usize) -> Header {
    let mut config: serde_json::Value = serde_json::from_slice(&h.config).unwrap();
    config["starlight_test_padding"] = serde_json::Value::String("x".repeat(pad));
    let config_raw = serde_json::to_vec(&config).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&h.manifest).unwrap();
    manifest["config"]["digest"] = digest_of(&config_raw).into();
    manifest["config"]["size"] = config_raw.len().into();
    let manifest_raw = serde_json::to_vec(&manifest).unwrap();
    let mut out = h.clone();
    out.manifest_digest = digest_of(&manifest_raw);
    out.manifest = manifest_raw;
    out.config = config_raw;
    out
}

impl Pulled {
    /// Waits for the whole body, then unmounts.
    fn finish(self, rt: &tokio::runtime::Runtime) {
        let report = rt
            .block_on(tokio::time::timeout(BOUND, self.done))
            .expect("the body arrived within the bound")
            .unwrap()
            .unwrap();
        assert!(report.stream_error.is_none() && report.failed.is_empty());
        rt.block_on(tokio::time::timeout(BOUND, self.session.shutdown()))
            .expect("unmounted within the bound");
    }
}

/// Each blob's digest and labels, as `ctr content ls` shows them (its age
/// column left out).
fn content_labels(ctrd: &Containerd) -> Vec<(String, String)> {
    ctrd.ctr_ok(&["content", "ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[0].to_string(), fields[fields.len() - 1].to_string())
        })
        .collect()
}

fn starlight_records(sn: &OverlaySnapshotter) -> Vec<starlight_worker::snapshotter::store::Record> {
    sn.records()
        .unwrap()
        .into_iter()
        .filter(|r| r.labels.contains_key(LABEL_IMAGE))
        .collect()
}

#[test]
#[ignore = "needs root: containerd and /dev/fuse"]
fn registered_image_runs_on_the_starlight_snapshotter_without_layer_blobs() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): the containerd registration test: {reason}");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("starlight_worker=debug")
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // Futures built here (timeouts, the proxy's server) need the runtime's
    // context; `block_on` runs them.
    let _context = rt.enter();
    let scratch = Scratch(
        tempfile::Builder::new()
            .prefix("starlight-register.")
            .tempdir()
            .unwrap(),
    );

    // The image, converted and pushed; the proxy in front of the registry.
    let reg = TestRegistry::start();
    let layers = layers();
    let layer_digests: Vec<String> = layers.iter().map(|l| digest_of(&l.blob)).collect();
    let reference = push(
        &reg,
        "register/busybox",
        &layers,
        &["/bin/cat", "/etc/greeting"],
    );
    // A second image made of the first one's bottom layer only.
    let base_ref = push(&reg, "register/base", &layers[..1], &["/bin/ls", "/etc"]);
    let proxy = Proxy::start(&reg, ServeOptions::default());
    step("images pushed, proxy started");

    // The worker: receive the bundle header, mount the image's view.
    let store = Arc::new(Store::open(scratch.path().join("store")).unwrap());
    let waiters = Arc::new(ContentWaiters::new());
    let mounts = Arc::new(TestMounts::default());
    let pulled = pull_and_mount(
        &rt,
        &proxy,
        &store,
        &waiters,
        &mounts,
        "register/busybox:v1",
        scratch.path().join("image"),
    );
    let (header, image_dir) = (pulled.header.clone(), pulled.dir.clone());
    step("bundle header received, image mounted");

    // The snapshotter, then containerd with it as a proxy plugin.
    let socket = scratch.path().join("snapshotter.sock");
    let sn = OverlaySnapshotter::open(&scratch.path().join("state")).unwrap();
    sn.set_image_mounts(mounts.clone());
    let served = Served::start(&rt, sn.clone(), &socket);
    let ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        socket.display()
    ));
    step("snapshotter and containerd started");

    // Register from the header alone.
    let client = rt
        .block_on(Client::connect(&ctrd.socket, &ctrd.namespace))
        .unwrap();
    let registered = Instant::now();
    rt.block_on(tokio::time::timeout(
        BOUND,
        client.register_image(&reference, &header, "starlight"),
    ))
    .expect("registered within the bound")
    .unwrap();
    step(&format!("image registered in {:?}", registered.elapsed()));
    let images = ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert_eq!(images.lines().collect::<Vec<_>>(), [reference.as_str()]);
    let content = ctrd.ctr_ok(&["content", "ls", "-q"]);
    assert!(content.contains(&header.manifest_digest), "{content}");
    assert_eq!(
        content.lines().count(),
        2,
        "manifest and config only:\n{content}"
    );
    for d in &layer_digests {
        assert!(!content.contains(d.as_str()), "layer blob {d} in the store");
    }
    let labels = ctrd.ctr_ok(&["content", "ls"]);
    assert!(
        labels.contains("containerd.io/gc.ref.snapshot.starlight="),
        "{labels}"
    );
    assert!(
        labels.contains("containerd.io/gc.ref.content.config="),
        "{labels}"
    );
    let image_snaps = starlight_records(&sn);
    assert_eq!(image_snaps.len(), 2, "{image_snaps:#?}");
    assert!(image_snaps
        .iter()
        .all(|r| r.kind == Kind::Committed && r.labels[LABEL_IMAGE] == header.manifest_digest));
    let listed = ctrd.ctr_ok(&["snapshots", "--snapshotter", "starlight", "ls"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // containerd holds no lease of ours any more.
    let leases = ctrd.ctr_ok(&["leases", "ls", "-q"]);
    assert!(!leases.contains("starlight-register"), "{leases}");

    // Run it: the image's command prints the file of the second layer.
    let started = Instant::now();
    let out = ctrd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "starlight",
        &reference,
        &unique_name("c"),
    ]);
    assert_eq!(out.as_bytes(), GREETING);
    step(&format!(
        "ctr run --rm printed the file in {:?}",
        started.elapsed()
    ));
    assert!(
        mounts
            .asked
            .lock()
            .unwrap()
            .iter()
            .all(|d| *d == header.manifest_digest),
        "the snapshotter asked for another image's view"
    );

    // containerd's GC removes the --rm container's snapshot soon after.
    wait_for(30, "the --rm container's snapshot to go", || {
        sn.records().unwrap().iter().all(|r| r.kind != Kind::Active)
    });

    // A write lands in the container's upper dir, not in the image.
    let id = unique_name("c");
    let out = ctrd.ctr_ok(&[
        "run",
        "--snapshotter",
        "starlight",
        &reference,
        &id,
        "sh",
        "-c",
        "echo written > /tmp/by-container; cat /tmp/by-container /etc/greeting",
    ]);
    assert_eq!(
        out,
        format!("written\n{}", String::from_utf8_lossy(GREETING))
    );
    let records = sn.records().unwrap();
    let active: Vec<_> = records.iter().filter(|r| r.kind == Kind::Active).collect();
    assert_eq!(active.len(), 1, "{records:#?}");
    assert!(active[0].key.ends_with(&format!("/{id}")));
    let top = image_snaps.iter().find(|r| !r.parent.is_empty()).unwrap();
    assert_eq!(active[0].parent, top.key);
    assert_eq!(
        std::fs::read(sn.fs_dir(active[0].id).join("tmp/by-container")).unwrap(),
        b"written\n"
    );
    assert!(!image_dir.join("tmp/by-container").exists());
    for r in &image_snaps {
        let files: Vec<_> = std::fs::read_dir(sn.fs_dir(r.id)).unwrap().collect();
        assert!(files.is_empty(), "image snapshot {} has files", r.key);
    }
    assert_eq!(
        std::fs::read(image_dir.join("etc/greeting")).unwrap(),
        GREETING
    );
    ctrd.ctr_ok(&["containers", "rm", &id]);
    wait_for(30, "the container's snapshot to go", || {
        sn.records().unwrap().iter().all(|r| r.kind != Kind::Active)
    });
    step("a write landed in the container's layer only");

    // A second registration changes nothing.
    let before = (
        sn.records().unwrap(),
        content_labels(&ctrd),
        ctrd.ctr_ok(&["images", "ls"]),
    );
    rt.block_on(tokio::time::timeout(
        BOUND,
        client.register_image(&reference, &header, "starlight"),
    ))
    .expect("registered within the bound")
    .unwrap();
    let after = (
        sn.records().unwrap(),
        content_labels(&ctrd),
        ctrd.ctr_ok(&["images", "ls"]),
    );
    assert_eq!(before, after);
    step("second registration was a no-op");

    // An image with the same layers and another config (3 MiB: written in
    // several messages): the top snapshot becomes the top of both, and
    // either image's view serves containers of either.
    let big = with_big_config(&header, 3 << 20);
    let big_ref = format!("{reference}-big");
    let big_session = mount_image(
        &rt,
        &store,
        &waiters,
        &mounts,
        &big,
        &scratch.path().join("big"),
    );
    rt.block_on(tokio::time::timeout(
        BOUND,
        client.register_image(&big_ref, &big, "starlight"),
    ))
    .expect("registered within the bound")
    .unwrap();
    let config_digest = digest_of(&big.config);
    let stored = ctrd.ctr_ok(&["content", "get", &config_digest]);
    assert!(
        stored.as_bytes() == big.config.as_slice(),
        "config changed in the store"
    );
    let records = starlight_records(&sn);
    assert_eq!(records.len(), 2, "{records:#?}");
    let top = records.iter().find(|r| !r.parent.is_empty()).unwrap();
    assert!(top
        .labels
        .contains_key(&top_of_label(&header.manifest_digest)));
    assert!(top.labels.contains_key(&top_of_label(&big.manifest_digest)));
    // The first image's view goes away: both still run, on the other view.
    let first_dir = mounts
        .dirs
        .lock()
        .unwrap()
        .remove(&header.manifest_digest)
        .unwrap();
    for image in [&big_ref, &reference] {
        let out = ctrd.ctr_ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "starlight",
            image,
            &unique_name("c"),
        ]);
        assert_eq!(out.as_bytes(), GREETING);
    }
    mounts
        .dirs
        .lock()
        .unwrap()
        .insert(header.manifest_digest.clone(), first_dir);
    wait_for(30, "the containers' snapshots to go", || {
        sn.records().unwrap().iter().all(|r| r.kind != Kind::Active)
    });
    // Removing it drops its manifest and config only.
    rt.block_on(tokio::time::timeout(BOUND, client.remove_image(&big_ref)))
        .expect("removed within the bound")
        .unwrap();
    let content = ctrd.ctr_ok(&["content", "ls", "-q"]);
    assert_eq!(content.lines().count(), 2, "{content}");
    assert!(!content.contains(&config_digest), "{content}");
    assert_eq!(starlight_records(&sn).len(), 2);
    // (starlightd forgets an image's view when it unmounts it.)
    mounts.dirs.lock().unwrap().remove(&big.manifest_digest);
    rt.block_on(tokio::time::timeout(BOUND, big_session.shutdown()))
        .expect("unmounted within the bound");
    step("an image with the same layers shares the snapshots, and either view serves both");

    // An image whose layers are a prefix of the first one's: its top is
    // the first image's bottom snapshot, which now stands for its own view;
    // the first image's top still stands for the first image's view.
    let base = pull_and_mount(
        &rt,
        &proxy,
        &store,
        &waiters,
        &mounts,
        "register/base:v1",
        scratch.path().join("base"),
    );
    rt.block_on(tokio::time::timeout(
        BOUND,
        client.register_image(&base_ref, &base.header, "starlight"),
    ))
    .expect("registered within the bound")
    .unwrap();
    let records = starlight_records(&sn);
    assert_eq!(records.len(), 2, "{records:#?}");
    let bottom = records.iter().find(|r| r.parent.is_empty()).unwrap();
    let top = records.iter().find(|r| !r.parent.is_empty()).unwrap();
    // Created by the first image, now also the second one's top.
    assert_eq!(bottom.labels[LABEL_IMAGE], header.manifest_digest);
    assert!(bottom
        .labels
        .contains_key(&top_of_label(&base.header.manifest_digest)));
    assert_eq!(top.labels[LABEL_IMAGE], header.manifest_digest);
    let probe = "test -e /etc/greeting && echo greeting || echo none";
    let run_probe = |image: &str| {
        ctrd.ctr_ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "starlight",
            image,
            &unique_name("c"),
            "sh",
            "-c",
            probe,
        ])
    };
    assert_eq!(run_probe(&base_ref), "none\n");
    assert_eq!(run_probe(&reference), "greeting\n");
    wait_for(30, "the probes' snapshots to go", || {
        sn.records().unwrap().iter().all(|r| r.kind != Kind::Active)
    });
    // Removing the first image keeps the bottom snapshot (the second
    // image's top) and drops the rest.
    rt.block_on(tokio::time::timeout(BOUND, client.remove_image(&reference)))
        .expect("removed within the bound")
        .unwrap();
    wait_for(30, "the first image's top snapshot to be collected", || {
        sn.records().unwrap().len() == 1
    });
    assert_eq!(sn.records().unwrap()[0].key, bottom.key);
    assert_eq!(run_probe(&base_ref), "none\n");
    step("a prefix image shares the bottom snapshot and runs its own view");

    // Removing the last image: containerd's GC drops its snapshots and blobs.
    rt.block_on(tokio::time::timeout(BOUND, client.remove_image(&base_ref)))
        .expect("removed within the bound")
        .unwrap();
    wait_for(30, "the snapshots to be collected", || {
        sn.records().unwrap().is_empty()
    });
    assert_eq!(ctrd.ctr_ok(&["images", "ls", "-q"]), "");
    assert_eq!(ctrd.ctr_ok(&["content", "ls", "-q"]), "");
    let listed = ctrd.ctr_ok(&["snapshots", "--snapshotter", "starlight", "ls"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    // Removing it again is fine.
    rt.block_on(client.remove_image(&base_ref)).unwrap();
    step("images removed; snapshots and blobs collected");

    drop(ctrd);
    drop(served);
    pulled.finish(&rt);
    base.finish(&rt);
    drop(proxy);
    assert_eq!(mounts_under(scratch.path()), Vec::<String>::new());
    step("done");
}
