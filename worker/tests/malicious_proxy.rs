//! Issue 12, "malicious proxy": a hostile bundle server with a valid
//! certificate (a compromised edge node) sends crafted headers to a real
//! `starlightd run`. The server here is in-process and speaks raw frames
//! over QUIC (quinn, the protocol's ALPN), so it can send what the
//! protocol's own encoder would refuse.
//!
//! Every crafted header must be refused with a clear error, and after each
//! one: no new file or directory in the state directory (mounts, content
//! store, snapshotter), no new image in the daemon's records (the `images`
//! API call), no new mount in `/proc/self/mountinfo`, and the daemon alive
//! and answering.
//!
//! Cases: manifest digests that are paths (`sha256:../../../etc`,
//! `/root/.ssh`), uppercase or short hex, a digest the manifest does not
//! hash to, a layer digest that is a path; entry names with NUL, an over-long
//! component, `..`/`.`/empty components, absolute paths, a hard link out of
//! the tree; duplicate paths, a file with content but no hash, sizes whose
//! sum overflows, a count over a limit; and a header for a digest already
//! held that differs from the recorded one (the recorded image is kept).
//!
//! containerd is not needed: the daemon points at a socket nobody serves,
//! so a sound header is recorded and mounted and only its registration
//! fails (what the held-digest case uses to hold an image).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starlight_worker::api::{call, ImageInfo, Request, Response};
use tokio::runtime::Runtime;
use transport_quic::codec::{preamble, FrameKind};
use transport_quic::commit::{toc_digest_string, LayerEntry, TOC_DIGEST_ANNOTATION};
use transport_quic::merge::merge_layers;
use transport_quic::{Digest, End, EntryKind, Header, Source, TocEntry};

// ---------------------------------------------------------------------------
// The hostile server.

/// A QUIC server with a valid certificate that answers every request with
/// the bytes last given to [`HostileProxy::answer_with`].
struct HostileProxy {
    addr: SocketAddr,
    response: Arc<Mutex<Vec<u8>>>,
    endpoint: quinn::Endpoint,
}

impl HostileProxy {
    fn start(rt: &Runtime, cert_pem: &str, key_pem: &str) -> HostileProxy {
        let _guard = rt.enter();
        let certs = transport_quic::tls::certs_from_pem(cert_pem.as_bytes(), "cert").unwrap();
        let key = transport_quic::tls::key_from_pem(key_pem.as_bytes(), "key").unwrap();
        let mut crypto =
            rustls::ServerConfig::builder_with_provider(transport_quic::tls::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        crypto.alpn_protocols = vec![transport_quic::quic::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let response = Arc::new(Mutex::new(Vec::new()));
        rt.spawn(serve(endpoint.clone(), response.clone()));
        HostileProxy {
            addr,
            response,
            endpoint,
        }
    }

    fn answer_with(&self, bytes: Vec<u8>) {
        *self.response.lock().unwrap() = bytes;
    }
}

impl Drop for HostileProxy {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

async fn serve(endpoint: quinn::Endpoint, response: Arc<Mutex<Vec<u8>>>) {
    while let Some(incoming) = endpoint.accept().await {
        let response = response.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            // The connection's first stream is the token's: accepted at once.
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let _ = recv.read_to_end(1 << 14).await;
            let accepted = transport_quic::codec::encode_auth_reply(
                &transport_quic::codec::AuthReply::Accepted,
                &transport_quic::codec::Limits::default(),
            )
            .unwrap();
            let _ = send.write_all(&accepted).await;
            let _ = send.finish();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let bytes = response.lock().unwrap().clone();
                tokio::spawn(async move {
                    // The request is read and ignored: the answer is crafted.
                    let _ = recv.read_to_end(1 << 24).await;
                    let _ = send.write_all(&bytes).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind.code()];
    v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// A whole bundle stream: the header as given (postcard, unchecked), then an
/// End frame for a body without payloads.
fn bundle(header: &Header) -> Vec<u8> {
    let mut v = preamble().to_vec();
    v.extend(frame(
        FrameKind::Header,
        &postcard::to_stdvec(header).unwrap(),
    ));
    let end = End {
        payloads: 0,
        bytes: 0,
    };
    v.extend(frame(FrameKind::End, &postcard::to_stdvec(&end).unwrap()));
    v
}

// ---------------------------------------------------------------------------
// Headers.

fn entry(path: &str, kind: EntryKind, size: u64) -> TocEntry {
    TocEntry {
        path: path.into(),
        kind,
        mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        size,
        link: None,
        devmajor: 0,
        devminor: 0,
        xattrs: vec![],
        sha256: (size > 0).then(|| *Digest::of(path.as_bytes()).bytes()),
        layer: 0,
        source: if size > 0 {
            Source::Held
        } else {
            Source::NoContent
        },
    }
}

/// A sound header of a tiny image (no payloads); `tag` makes its manifest,
/// hence its digest, unique. It passes every check of the worker: the
/// manifest commits to the one layer's table (its TOC digest annotation),
/// and the merged table of contents is that table's merge.
fn sound(tag: &str) -> Header {
    let table = vec![
        LayerEntry::new("etc", EntryKind::Dir, 0o755),
        LayerEntry::new("etc/empty", EntryKind::File, 0o644),
    ];
    let config = b"{}".to_vec();
    let layer = Digest::of(b"layer 0").to_string();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer,
            "size": 100,
            "annotations": { TOC_DIGEST_ANNOTATION: toc_digest_string(&table) },
        }],
        "annotations": { "tag": tag },
    }))
    .unwrap();
    let toc = merge_layers(std::slice::from_ref(&table))
        .into_iter()
        .map(|m| TocEntry::from_layer_entry(m.entry, m.layer, Source::NoContent))
        .collect();
    Header {
        manifest_digest: Digest::of(&manifest).to_string(),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest,
        config,
        layers: vec![layer],
        image_layers: vec![0],
        toc,
        payloads: vec![],
        layer_tocs: vec![table],
    }
}

/// A sound header with `toc` entries added (its digest stays right: only the
/// table of contents is hostile).
fn with_entries(tag: &str, extra: Vec<TocEntry>) -> Header {
    let mut h = sound(tag);
    h.toc.extend(extra);
    h
}

/// One crafted header and what the refusal must say.
struct Case {
    name: &'static str,
    header: Header,
    says: &'static str,
}

fn digest_cases() -> Vec<Case> {
    let with_digest = |tag: &str, digest: String| {
        let mut h = sound(tag);
        h.manifest_digest = digest;
        h
    };
    let real = sound("upper").manifest_digest;
    let mut bad_layer = sound("layer");
    bad_layer.layers = vec!["sha256:../../../../var/lib".into()];
    vec![
        Case {
            name: "digest-dotdot",
            header: with_digest("dotdot", "sha256:../../../etc".into()),
            says: "manifest digest is refused",
        },
        Case {
            name: "digest-absolute",
            header: with_digest("abs", "/root/.ssh".into()),
            says: "manifest digest is refused",
        },
        Case {
            name: "digest-uppercase",
            header: with_digest("upper", real.to_uppercase().replace("SHA256", "sha256")),
            says: "manifest digest is refused",
        },
        Case {
            name: "digest-short",
            header: with_digest("short", "sha256:abcdef".into()),
            says: "manifest digest is refused",
        },
        Case {
            name: "digest-mismatch",
            header: with_digest("mismatch", Digest::of(b"another manifest").to_string()),
            says: "does not match its digest",
        },
        Case {
            name: "layer-digest-path",
            header: bad_layer,
            says: "layer 0 of the header is refused",
        },
    ]
}

fn name_cases() -> Vec<Case> {
    let file = |p: &str| entry(p, EntryKind::File, 0);
    let mut hardlink = entry("etc/link", EntryKind::Hardlink, 0);
    hardlink.link = Some("../../etc/shadow".into());
    let mut xattr = file("etc/x");
    xattr.xattrs = vec![("user.a\0b".into(), b"v".to_vec())];
    let long = format!("etc/{}", "n".repeat(256));
    let mut cases = vec![
        Case {
            name: "nul-in-path",
            header: with_entries("nul", vec![file("etc/a\0b")]),
            says: "holds a NUL byte",
        },
        Case {
            name: "nul-in-xattr-name",
            header: with_entries("nulx", vec![xattr]),
            says: "holds a NUL byte",
        },
        Case {
            name: "component-256-bytes",
            header: with_entries("long", vec![file(&long)]),
            says: "component of 256 bytes",
        },
        Case {
            name: "hardlink-out-of-tree",
            header: with_entries("hl", vec![hardlink]),
            says: "hard link target is not a plain relative path",
        },
    ];
    for (name, path) in [
        ("dotdot-path", "../../etc/passwd"),
        ("absolute-path", "/etc/shadow"),
        ("dot-component", "etc/./x"),
        ("empty-component", "etc//x"),
        ("dot-path", "."),
        ("trailing-slash", "etc/x/"),
    ] {
        cases.push(Case {
            name,
            header: with_entries(name, vec![file(path)]),
            says: "is not a plain relative path",
        });
    }
    cases
}

fn table_cases() -> Vec<Case> {
    let mut unhashed = entry("etc/big", EntryKind::File, 4096);
    unhashed.sha256 = None;
    let half = u64::MAX / 2 + 1;
    let mut many_xattrs = entry("etc/x", EntryKind::File, 0);
    many_xattrs.xattrs = (0..4097).map(|i| (format!("user.{i}"), vec![])).collect();
    vec![
        Case {
            name: "duplicate-path",
            header: with_entries("dup", vec![entry("etc/empty", EntryKind::File, 0)]),
            says: "appears twice",
        },
        Case {
            name: "size-without-hash",
            header: with_entries("nohash", vec![unhashed]),
            says: "has no SHA-256",
        },
        Case {
            name: "sizes-overflow",
            header: with_entries(
                "overflow",
                vec![
                    entry("etc/h1", EntryKind::File, half),
                    entry("etc/h2", EntryKind::File, half),
                ],
            ),
            says: "overflows 64 bits",
        },
        Case {
            name: "count-over-limit",
            header: with_entries("count", vec![many_xattrs]),
            says: "extended attributes on one entry: 4097 exceeds the limit of 4096",
        },
    ]
}

// ---------------------------------------------------------------------------
// starlightd.

/// A running `starlightd run` in a temporary directory; stopped on drop, its
/// mounts detached.
struct Daemon {
    child: Child,
    dir: PathBuf,
    state: PathBuf,
    api: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, proxy: SocketAddr, ca: &Path) -> Daemon {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let config = dir.join("starlightd.toml");
        std::fs::write(
            &config,
            format!(
                "proxy = \"{proxy}\"\nca_file = \"{}\"\ntoken = \"t\"\nstate_dir = \"{}\"\n\
                 grace_secs = 1\ncontainerd_socket = \"{}\"\nnamespace = \"malicious\"\n\
                 snapshotter_socket = \"{}\"\napi_socket = \"{}\"\n",
                ca.display(),
                dir.join("state").display(),
                dir.join("run/no-containerd.sock").display(),
                dir.join("run/snapshotter.sock").display(),
                dir.join("run/api.sock").display(),
            ),
        )
        .unwrap();
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let log = dir.join("starlightd.log");
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
            dir: dir.to_path_buf(),
            state: dir.join("state"),
            api: dir.join("run/api.sock"),
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, rt: &Runtime, req: Request) -> Response {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), call(&self.api, &req, |_| {})).await
        })
        .expect("API call timed out")
        .unwrap()
    }

    fn pull(&self, rt: &Runtime, image: &str) -> Response {
        self.call(
            rt,
            Request::Pull {
                image: image.into(),
                from: vec![],
                wait: false,
                trace: false,
                unordered: false,
            },
        )
    }

    fn images(&self, rt: &Runtime) -> Vec<ImageInfo> {
        match self.call(rt, Request::Images) {
            Response::Images(i) => i,
            other => panic!("images: {other:?}"),
        }
    }

    fn assert_alive(&mut self, rt: &Runtime) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "starlightd died:\n{}",
            self.log_text()
        );
        self.images(rt);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in mounts_below(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// Mount points (from `/proc/self/mountinfo`) below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// What a refusal must leave unchanged.

/// Every file and directory below the state directory, except the RocksDB
/// databases (whose contents the API reports) and the inside of mounts.
fn state_files(state: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![state.to_path_buf()];
    let skip = [state.join("images"), state.join("snapshotter/meta")];
    let mounted: BTreeSet<String> = mounts_below(state).into_iter().collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if skip.contains(&p) {
                continue;
            }
            out.insert(p.display().to_string());
            let is_dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
            if is_dir && !mounted.contains(&p.display().to_string()) {
                stack.push(p);
            }
        }
    }
    out
}

/// The mount table lines that a hostile header could have added: anything
/// below our directory, on a host directory a digest could name, or by a
/// Starlight FUSE filesystem of a hostile reference.
fn relevant_mounts(dir: &Path) -> BTreeSet<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines()
        .filter(|l| {
            let mountpoint = l.split(' ').nth(4).unwrap_or("");
            mountpoint.starts_with(&dir)
                || mountpoint == "/etc"
                || mountpoint.starts_with("/root")
                || mountpoint.starts_with("/var/lib")
                || l.contains("starlight:hostile")
        })
        .map(str::to_string)
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    files: BTreeSet<String>,
    images: Vec<(String, String, usize)>,
    mounts: BTreeSet<String>,
}

fn observe(d: &Daemon, rt: &Runtime) -> Observed {
    Observed {
        files: state_files(&d.state),
        images: d
            .images(rt)
            .into_iter()
            .map(|i| (i.name, i.digest, i.files))
            .collect(),
        mounts: relevant_mounts(&d.dir),
    }
}

/// Sends each case to the daemon and checks it refused with its message
/// and left nothing behind.
fn refuse_all(cases: Vec<Case>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new().unwrap();
    let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let proxy = HostileProxy::start(&rt, &cert, &key);
    let mut daemon = Daemon::start(dir.path(), proxy.addr, &ca);
    for case in cases {
        let before = observe(&daemon, &rt);
        proxy.answer_with(bundle(&case.header));
        let reference = format!("hostile/{}:v1", case.name);
        match daemon.pull(&rt, &reference) {
            Response::Error(msg) => {
                println!("{}: refused: {msg}", case.name);
                assert!(
                    msg.contains(case.says),
                    "{}: the refusal does not say {:?}: {msg}",
                    case.name,
                    case.says
                );
                assert!(
                    msg.len() < 1000,
                    "{}: a {}-byte error",
                    case.name,
                    msg.len()
                );
            }
            other => panic!(
                "{}: not refused: {other:?}\n{}",
                case.name,
                daemon.log_text()
            ),
        }
        daemon.assert_alive(&rt);
        assert_eq!(
            before,
            observe(&daemon, &rt),
            "{}: something was left",
            case.name
        );
        assert!(!daemon.state.join("etc").exists());
    }
    // The refused headers were never recorded: a restart mounts nothing.
    assert!(daemon.images(&rt).is_empty());
    drop(daemon);
    let mut daemon = Daemon::start(dir.path(), proxy.addr, &ca);
    daemon.assert_alive(&rt);
    assert!(daemon.images(&rt).is_empty());
    assert!(mounts_below(dir.path()).is_empty());
}

#[test]
#[ignore = "needs root: starlightd mounts FUSE images"]
fn digests_that_are_paths_or_wrong_are_refused() {
    refuse_all(digest_cases());
}

#[test]
#[ignore = "needs root: starlightd mounts FUSE images"]
fn hostile_names_and_paths_are_refused() {
    refuse_all(name_cases());
}

#[test]
#[ignore = "needs root: starlightd mounts FUSE images"]
fn duplicates_unhashed_files_overflows_and_counts_are_refused() {
    refuse_all(table_cases());
}

#[test]
#[ignore = "needs root: starlightd mounts FUSE images"]
fn a_held_digest_keeps_its_record_and_mount() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new().unwrap();
    let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let proxy = HostileProxy::start(&rt, &cert, &key);
    let mut daemon = Daemon::start(dir.path(), proxy.addr, &ca);

    // A sound image is recorded and mounted (its containerd registration
    // fails: nobody serves that socket).
    let held = sound("held");
    let digest = Digest::parse(&held.manifest_digest).unwrap();
    proxy.answer_with(bundle(&held));
    match daemon.pull(&rt, "held/app:v1") {
        Response::Error(msg) => assert!(msg.contains("containerd"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let images = daemon.images(&rt);
    assert_eq!(images.len(), 1, "{images:?}\n{}", daemon.log_text());
    assert_eq!(images[0].digest, digest.to_string());
    let mountpoint = daemon.state.join("mnt").join(digest.hex());
    assert_eq!(images[0].mountpoint, mountpoint.display().to_string());
    let listing = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        listing(&mountpoint.join("etc")),
        BTreeSet::from(["empty".into()])
    );

    // The same digest with another table of contents: refused, the record,
    // the mount and its tree stay as they were.
    let mut evil = held.clone();
    let mut setuid = entry("etc/evil", EntryKind::File, 0);
    setuid.mode = 0o4755;
    evil.toc.push(setuid);
    let before = observe(&daemon, &rt);
    proxy.answer_with(bundle(&evil));
    for reference in ["held/app:v1", "hostile/app:v2"] {
        match daemon.pull(&rt, reference) {
            Response::Error(msg) => {
                println!("{reference}: refused: {msg}");
                // The manifest commits to its tables, so a differing table
                // no longer even follows from it; a header that did (only
                // its sources differing) would meet the held record's check.
                assert!(
                    msg.contains("already held with a different header")
                        || msg.contains("does not follow from the image's manifest"),
                    "{msg}"
                );
            }
            other => panic!("not refused: {other:?}"),
        }
        daemon.assert_alive(&rt);
        assert_eq!(before, observe(&daemon, &rt));
        assert_eq!(
            listing(&mountpoint.join("etc")),
            BTreeSet::from(["empty".into()])
        );
    }

    // The same header again is no conflict (only containerd fails again).
    proxy.answer_with(bundle(&held));
    match daemon.pull(&rt, "held/app:v1") {
        Response::Error(msg) => assert!(msg.contains("containerd"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(before, observe(&daemon, &rt));
}
