//! Issue 14, items 3 and 5: the bounded store and `starlight status`, with
//! the real `starlightd run`, a real registry, the proxy over QUIC (named
//! `localhost:PORT`, resolved by starlightd), containerd and runc.
//!
//! Six images of one layer each (busybox, shared by all, and 3 MB of their
//! own) are pulled in turn with `max_store_bytes` at half their total. A
//! container of the first runs all along (`ctr run -d`). After each pull
//! the store (the files under `content/`, sampled every 5 ms all along)
//! never exceeds the bound, because room is made before a body is admitted; the
//! running container then reads every file of its image with the right
//! SHA-256. `ctr images rm` of the last image: `starlight gc --dry-run`
//! names it (reason `removed`) and changes nothing; `starlight gc` releases
//! it.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
mod harness;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;
use harness::*;

use std::path::Path;
use std::time::Duration;

use serve_support::{noise, starlight_layer};
use sha2::{Digest, Sha256};
use starlight_proxy::format::Compression;
use starlight_worker::api::{GcReport, Request, Response};
use support::containerd::unique_name;

const IMAGES: u64 = 6;
const OWN_BYTES: usize = 3 << 20;

/// Pushes image `i`: busybox (as /bin/busybox and /bin/sh) and its own data.
fn push_image(w: &World, busybox: &[u8], i: u64) -> (String, Files) {
    let own = noise(1000 + i, OWN_BYTES);
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in [
        ("bin/busybox", busybox, 0o755),
        ("bin/sh", busybox, 0o755),
        ("app/own.bin", own.as_slice(), 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    let layer = starlight_layer(&b.into_inner().unwrap(), Compression::Gzip);
    let mut layout = common::layout::OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/bin/sh"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/gc-{i}:v1", w.reg.addr);
    layout.push("v1", &reference, false);
    let mut files = Files::new();
    files.insert("app/own.bin".into(), own);
    files.insert("bin/busybox".into(), busybox.to_vec());
    (reference, files)
}

/// Bytes of the content store's files.
fn store_bytes(state: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![state.join("content/sha256")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            // A content removed between the listing and here counts nothing.
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn content_files(state: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(state.join("content/sha256"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

fn gc(d: &Daemon, w: &World, dry_run: bool) -> GcReport {
    match d.call(&w.rt, Request::Gc { dry_run }) {
        Response::Gc(r) => r,
        other => panic!("gc: {other:?}\n{}", d.log_text()),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
#[ignore = "needs root: containerd, runc and FUSE"]
fn the_store_stays_bounded_and_running_containers_keep_their_files() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run: {reason}");
    }
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt install busybox-static)");
    let w = World::new();
    let proxy = w.proxy(None);
    let images: Vec<(String, Files)> = (0..IMAGES).map(|i| push_image(&w, &busybox, i)).collect();
    let total = busybox.len() as u64 + IMAGES * OWN_BYTES as u64;
    let max = total / 2;
    let mut setup = w.setup(w.dir.path().join("state"));
    setup.env = vec![
        ("STARLIGHT_MAX_STORE_BYTES", leak(max.to_string())),
        ("STARLIGHT_GC_INTERVAL_SECS", "3600"),
        (
            "STARLIGHT_PROXY",
            leak(format!("localhost:{}", proxy.addr.port())),
        ),
    ];
    let d = setup.start(proxy.addr, "starlightd.log");

    // `starlight status`: the proxy by name, reachable with the token.
    let Response::Status(status) = d.call(&w.rt, Request::Status) else {
        panic!("status:\n{}", d.log_text());
    };
    assert!(
        status.proxy.reachable,
        "{:?}\n{}",
        status.proxy,
        d.log_text()
    );
    assert_eq!(
        status.proxy.address,
        format!("localhost:{}", proxy.addr.port())
    );
    assert_eq!(status.proxy.server_name, "localhost");
    assert_eq!(status.max_store_bytes, Some(max));
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.images.is_empty());

    // Image 0 runs all along.
    let (first, first_files) = &images[0];
    d.pull(&w.rt, first, true);
    let cid = unique_name("gc");
    w.ctrd.ctr_ok(&[
        "run",
        "-d",
        "--snapshotter",
        "starlight",
        first,
        &cid,
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    // The store is sampled all along: room is made before each body is
    // admitted, so it never exceeds the bound, not even while a bundle
    // arrives.
    let state = w.dir.path().join("state");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(store_bytes(&state));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let mut highest = 0;
    for (reference, _) in &images[1..] {
        d.pull(&w.rt, reference, true);
        let now = store_bytes(&state);
        assert!(
            now <= max,
            "store {now} B above the bound {max} B after pulling {reference}\n{}",
            d.log_text()
        );
        highest = highest.max(now);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(
        peak <= max,
        "store sampled at {peak} B above the bound {max} B while bundles arrived"
    );
    eprintln!(
        "store bound {max} B (total {total} B): highest after a pull {highest} B, sampled peak {peak} B"
    );
    let held = d.images(&w.rt);
    assert!(held.iter().any(|i| &i.name == first), "{held:?}");
    assert!(
        held.len() < IMAGES as usize,
        "nothing was evicted: {held:?}"
    );
    assert!(d.log_text().contains("image evicted"));

    // The running container reads every file of its image, exactly.
    for (k, (path, data)) in first_files.iter().enumerate() {
        let out = w.ctrd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            &format!("read{k}"),
            &cid,
            "/bin/busybox",
            "sha256sum",
            &format!("/{path}"),
        ]);
        let want = hex::encode(Sha256::digest(data));
        assert!(out.starts_with(&want), "{path}: {out} (want {want})");
    }

    // containerd's removal releases the image here; a dry run changes nothing.
    let (last, _) = &images[IMAGES as usize - 1];
    assert!(d.images(&w.rt).iter().any(|i| &i.name == last));
    w.ctrd.ctr_ok(&["images", "rm", last]);
    let state = w.dir.path().join("state");
    let before = (content_files(&state), d.images(&w.rt));
    let dry = gc(&d, &w, true);
    assert!(dry.dry_run);
    let planned = dry.evicted.iter().find(|e| &e.image == last);
    let planned = planned.unwrap_or_else(|| panic!("{last} not planned: {dry:?}"));
    assert_eq!(planned.reason, "removed");
    assert!(planned.bytes >= OWN_BYTES as u64, "{dry:?}");
    assert!(dry.in_use >= 1, "{dry:?}");
    assert_eq!((content_files(&state), d.images(&w.rt)), before);
    let done = gc(&d, &w, false);
    assert!(done.evicted.iter().any(|e| &e.image == last), "{done:?}");
    assert!(done.bytes_freed >= OWN_BYTES as u64, "{done:?}");
    assert!(!d.images(&w.rt).iter().any(|i| &i.name == last));
    // The container's image is still held, in use.
    assert!(d.images(&w.rt).iter().any(|i| &i.name == first));

    let _ = w.ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &cid]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = w.ctrd.ctr(&["task", "rm", "-f", &cid]);
    let _ = w.ctrd.ctr(&["containers", "rm", &cid]);
}
