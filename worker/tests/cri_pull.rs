//! Issue 14, item 1: containerd's own pulls of Starlight images go through
//! the `starlight` snapshotter's remote snapshots.
//!
//! With a real containerd 1.6 whose CRI plugin uses the `starlight`
//! snapshotter (`disable_snapshot_annotations = false`), the real
//! `starlightd run`, the proxy over QUIC and a real `docker-registry`, a CRI
//! client (the `k8s-cri` bindings; crictl is not packaged) pulls a Starlight
//! image, runs a host-network pod sandbox (its pause image is a plain one:
//! the fallback) and starts a container that prints its ready line. The
//! registry's access log shows no full GET of the image's layer blobs,
//! containerd's content store holds none, and its image record and snapshot
//! chain are right. A plain image pulled the same way is unpacked by
//! containerd and runs too.
//!
//! Needs root (containerd, runc, FUSE): `#[ignore]`d otherwise; run with
//! `cargo test -p starlight-worker --test cri_pull -- --include-ignored`.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;
#[path = "support/tar.rs"]
mod tar_support;

mod cri;
mod harness;

use cri::images::{full_blob_gets, push_app, push_pause, Pushed, GREETING};
use cri::{cri_config, wait_for_line, Cri, PodGuard};
use harness::{skip_reason, Daemon, World};
use starlight_proxy::registry::RegistryClient;
use starlight_worker::api::{GcReport, Request, Response};

/// The ready line the app container prints.
const READY: &str = "READY";

/// A CRI world with `starlightd` running and the images pushed.
struct Setup {
    world: World,
    daemon: Daemon,
    _proxy: serve_support::Proxy,
}

fn setup() -> Setup {
    setup_in(None)
}

/// [`setup`] with starlightd registering its own pulls in `namespace`
/// (default: CRI's `k8s.io`).
fn setup_in(namespace: Option<String>) -> Setup {
    if let Some(why) = skip_reason() {
        panic!("this test needs root and /dev/fuse: {why}");
    }
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing (apt install busybox-static)"
    );
    let world =
        World::with_cri(|reg, dir| cri_config(reg, &format!("{reg}/pause:v1"), &dir.join("cni")));
    let proxy = world.proxy(None);
    let mut daemon_setup = world.setup(world.dir.path().join("state"));
    if let Some(ns) = namespace {
        daemon_setup.namespace = ns;
    }
    let daemon = daemon_setup.start(proxy.addr, "starlightd.log");
    world.wait_for_snapshotter();
    Setup {
        world,
        daemon,
        _proxy: proxy,
    }
}

/// Has the proxy index `image` now, so the registry's log after this point
/// shows only what the pull itself reads.
fn index(s: &Setup, image: &Pushed) {
    let client = RegistryClient::new(true);
    s.world
        .rt
        .block_on(starlight_proxy::index::index_image(
            &client,
            &s._proxy.db,
            &image.reference,
            None,
        ))
        .unwrap();
}

/// Pulls `image` over CRI, runs it in a new host-network pod and waits for
/// its ready line; returns its log messages. The pod is removed when the
/// returned guard drops.
fn pull_and_run(s: &Setup, name: &str, image: &str) -> (Vec<String>, PodGuard) {
    let rt = &s.world.rt;
    let mut cri = rt.block_on(Cri::connect(&s.world.ctrd.socket));
    let id = rt
        .block_on(cri.pull(image))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.daemon.log_text()));
    assert!(id.starts_with("sha256:"), "{id}");
    let logs = s.world.dir.path().join(format!("pods/{name}"));
    let pod = rt
        .block_on(cri.run_pod(name, &logs))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.world.ctrd.log()));
    let guard = PodGuard {
        socket: s.world.ctrd.socket.clone(),
        id: pod.id.clone(),
    };
    let script = format!("cat /etc/greeting; echo {READY}; exec sleep 3600");
    let log = rt
        .block_on(cri.start_container(&pod, "app", image, &["/bin/sh", "-c", &script]))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.world.ctrd.log()));
    let lines = wait_for_line(&log, READY, 60).unwrap_or_else(|e| {
        panic!("{e}\ncontainerd:\n{}", s.world.ctrd.log());
    });
    (lines, guard)
}

/// `ctr snapshots --snapshotter starlight info KEY` as JSON.
fn snapshot_info(s: &Setup, key: &str) -> serde_json::Value {
    let out = s
        .world
        .ctrd
        .ctr_ok(&["snapshots", "--snapshotter", "starlight", "info", key]);
    serde_json::from_str(&out).unwrap()
}

#[test]
#[ignore = "needs root: containerd's CRI plugin, runc and FUSE"]
fn cri_pull_of_a_starlight_image_runs_from_one_bundle() {
    let s = setup();
    let app = push_app(&s.world.reg, "app", true);
    push_pause(&s.world.reg);
    index(&s, &app);
    let log_from = s.world.reg.log().len();

    let (lines, _pod) = pull_and_run(&s, "starlight-pod", &app.reference);
    assert_eq!(lines[0], GREETING, "{lines:?}");

    // No layer blob travelled from the registry in full: the proxy's
    // ranged reads only.
    let full = full_blob_gets(&s.world.reg.log(), log_from, &app);
    assert!(full.is_empty(), "full blob GETs: {full:#?}");
    // containerd's content store has the manifest and config, no layer.
    let content = s.world.ctrd.ctr_ok(&["content", "ls", "-q"]);
    for d in &app.layer_digests {
        assert!(!content.contains(d.as_str()), "layer {d} in {content}");
    }
    // The image record, and the config's GC reference to the top snapshot.
    let images = s.world.ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == app.reference), "{images}");
    let top = app.chain_ids.last().unwrap();
    let labels = s.world.ctrd.ctr_ok(&["content", "ls"]);
    assert!(
        labels.contains(&format!("containerd.io/gc.ref.snapshot.starlight={top}")),
        "{labels}"
    );
    // The snapshot chain: chain ids, each on the one below.
    let bottom = snapshot_info(&s, &app.chain_ids[0]);
    assert_eq!(bottom["Kind"], "Committed");
    let upper = snapshot_info(&s, top);
    assert_eq!(upper["Parent"], app.chain_ids[0].as_str(), "{upper}");
    assert!(
        upper["Labels"]["containerd.io/snapshot/starlight.image"].is_string(),
        "{upper}"
    );
    // One bundle for the whole image, and starlightd holds it.
    let log = s.daemon.log_text();
    let pulls = log.matches("pulled for containerd").count();
    assert_eq!(pulls, 1, "{log}");
    let held = s.daemon.images(&s.world.rt);
    assert!(held.iter().any(|i| i.name == app.reference), "{held:?}");
    // The pause image is a plain one: containerd unpacked it itself.
    assert!(log.contains("not a Starlight image"), "{log}");
}

#[test]
#[ignore = "needs root: containerd's CRI plugin, runc and FUSE"]
fn cri_pull_of_a_plain_image_falls_back_to_unpacking() {
    let s = setup();
    let plain = push_app(&s.world.reg, "plain", false);
    push_pause(&s.world.reg);
    let log_from = s.world.reg.log().len();

    let (lines, _pod) = pull_and_run(&s, "plain-pod", &plain.reference);
    assert_eq!(lines[0], GREETING, "{lines:?}");

    // containerd downloaded and unpacked the layers into ordinary snapshots.
    // (The proxy read them too, to find they are no Starlight layers.)
    let full = full_blob_gets(&s.world.reg.log(), log_from, &plain);
    let by_containerd = full.iter().filter(|l| l.contains("\"containerd/")).count();
    assert_eq!(by_containerd, plain.layer_digests.len(), "{full:#?}");
    let top = snapshot_info(&s, plain.chain_ids.last().unwrap());
    assert!(
        top["Labels"]
            .get("containerd.io/snapshot/starlight.image")
            .is_none(),
        "{top}"
    );
    let held = s.daemon.images(&s.world.rt);
    assert!(held.iter().all(|i| i.name != plain.reference), "{held:?}");
}

/// What `starlight rpull` does: resolve in the registry, then have
/// starlightd pull into containerd (over its API) with the image labels on
/// every layer's Prepare. `(remote, present)` layers.
fn rpull(s: &Setup, image: &Pushed) -> Result<(usize, usize), String> {
    use starlight_worker::api::{Request, Response};
    let resolved = s
        .world
        .rt
        .block_on(RegistryClient::new(true).resolve_image(&image.reference, None))
        .map_err(|e| e.to_string())?;
    let request = Request::RemotePull {
        image: image.reference.clone(),
        manifest_digest: resolved.manifest_digest,
        manifest_media_type: resolved.manifest_media_type,
        manifest: String::from_utf8(resolved.manifest_raw).map_err(|e| e.to_string())?,
        config: String::from_utf8(resolved.config_raw).map_err(|e| e.to_string())?,
        namespace: Some(s.world.namespace.clone()),
        snapshotter: "starlight".into(),
    };
    match s.daemon.call(&s.world.rt, request) {
        Response::RemotePulled {
            namespace,
            remote,
            present,
        } => {
            assert_eq!(namespace, s.world.namespace);
            Ok((remote, present))
        }
        Response::Error(e) => Err(e),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
#[ignore = "needs root: containerd, runc and FUSE"]
fn client_pull_with_the_image_labels_runs_with_ctr_run() {
    let s = setup();
    let app = push_app(&s.world.reg, "rapp", true);
    index(&s, &app);
    let log_from = s.world.reg.log().len();

    let report = rpull(&s, &app).unwrap_or_else(|e| panic!("{e}\n{}", s.daemon.log_text()));
    assert_eq!(report, (2, 0));
    let id = support::containerd::unique_name("rpull");
    let script = format!("cat /etc/greeting; echo {READY}");
    let out = s.world.ctrd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "starlight",
        &app.reference,
        &id,
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), [GREETING, READY], "{out}");
    let full = full_blob_gets(&s.world.reg.log(), log_from, &app);
    assert!(full.is_empty(), "full blob GETs: {full:#?}");
    let images = s.world.ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == app.reference), "{images}");
    let log = s.daemon.log_text();
    assert_eq!(log.matches("pulled for containerd").count(), 1, "{log}");
    // Again: every layer is there already.
    let again = rpull(&s, &app).unwrap();
    assert_eq!(again, (0, 2));

    // A plain image is refused (it needs containerd's own unpacking), and
    // leaves no image record.
    let plain = push_app(&s.world.reg, "rplain", false);
    let err = rpull(&s, &plain).unwrap_err();
    assert!(err.contains("no remote snapshot"), "{err}");
    let images = s.world.ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert!(!images.lines().any(|l| l == plain.reference), "{images}");
}

/// A collection now (`starlight gc`, or `--dry-run`).
fn gc(s: &Setup, dry_run: bool) -> GcReport {
    match s.daemon.call(&s.world.rt, Request::Gc { dry_run }) {
        Response::Gc(r) => r,
        other => panic!("gc: {other:?}\n{}", s.daemon.log_text()),
    }
}

#[test]
#[ignore = "needs root: containerd's CRI plugin and FUSE"]
fn gc_keeps_an_image_cri_holds_in_its_own_namespace() {
    // starlightd registers its own pulls in a namespace of its own; CRI
    // pulls into k8s.io. An image only CRI holds is held all the same.
    let s = setup_in(Some(support::containerd::unique_name("own")));
    let app = push_app(&s.world.reg, "gcapp", true);
    let rt = &s.world.rt;
    let mut cri = rt.block_on(Cri::connect(&s.world.ctrd.socket));
    rt.block_on(cri.pull(&app.reference))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.daemon.log_text()));
    let held = s.daemon.images(rt);
    let digest = held
        .iter()
        .find(|i| i.name == app.reference)
        .unwrap_or_else(|| panic!("not held: {held:?}"))
        .digest
        .clone();

    // Once its bundle arrived (an image still arriving is in use), not in
    // starlightd's namespace but in k8s.io: kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !s
        .daemon
        .images(rt)
        .iter()
        .any(|i| i.digest == digest && i.complete)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            s.daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let report = gc(&s, false);
    assert!(
        report.evicted.iter().all(|e| e.digest != digest),
        "{report:?}\n{}",
        s.daemon.log_text()
    );
    assert!(s.daemon.images(rt).iter().any(|i| i.digest == digest));

    // Gone from k8s.io (every record CRI made for it): released.
    let k8s = rt
        .block_on(starlight_worker::containerd::Containerd::connect(
            &s.world.ctrd.socket,
            "k8s.io",
        ))
        .unwrap();
    let records: Vec<_> = rt
        .block_on(k8s.list_images())
        .unwrap()
        .into_iter()
        .filter(|i| i.target == digest)
        .collect();
    assert!(!records.is_empty(), "CRI recorded no image for {digest}");
    for r in &records {
        assert_eq!(r.namespace, "k8s.io");
        rt.block_on(k8s.remove_image(&r.name)).unwrap();
    }
    let dry = gc(&s, true);
    let evicted: Vec<_> = dry
        .evicted
        .iter()
        .map(|e| (e.digest.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        evicted,
        [(digest.as_str(), "removed")],
        "{dry:?}\n{}",
        s.daemon.log_text()
    );
    let report = gc(&s, false);
    assert_eq!(report.evicted.len(), 1, "{report:?}");
    assert!(s.daemon.images(rt).iter().all(|i| i.digest != digest));
}
