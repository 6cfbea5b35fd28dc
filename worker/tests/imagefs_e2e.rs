//! The worker's data path end to end: a real `docker-registry`, the proxy
//! served in-process over real QUIC on 127.0.0.1, the bundle received into
//! the content store, and the image mounted with real FUSE as soon as its
//! header arrived. Skipped (with a message) when not root or without
//! /dev/fuse. Every wait is bounded; every mount is dropped at the end.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::imagefs::ImageFs;
use starlight_worker::receiver::{self, ReceiveOptions, ReceiveReport};
use starlight_worker::store::Store;
use starlight_worker::waiters::ContentWaiters;
use transport_quic::quic::Client;
use transport_quic::{Header, Source};
use uring_fs::{MountOptions, Session};

type Files = BTreeMap<String, Vec<u8>>;

const MTIME: u64 = 1_700_000_000;
const BOUND: Duration = Duration::from_secs(60);

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

fn v1_files() -> Files {
    let mut f = Files::new();
    f.insert("opt/big.bin".into(), noise(1, 8 << 20));
    for i in 0..8 {
        f.insert(
            format!("etc/conf/f{i}"),
            format!("small file {i}\n").repeat(i * 50 + 1).into_bytes(),
        );
    }
    f.insert("bin/app".into(), b"app v1\n".repeat(500));
    f
}

fn v2_files() -> Files {
    let mut f = v1_files();
    f.insert("bin/app".into(), b"app v2\n".repeat(500));
    f.insert("etc/conf/new".into(), noise(2, 20_000));
    f
}

fn push(reg: &TestRegistry, tag: &str, files: &Files) -> String {
    let list: Vec<(String, Vec<u8>)> = files.clone().into_iter().collect();
    let layer = starlight_layer(&tar_of(&list, MTIME), Compression::Gzip);
    push_image(reg, "worker/app", tag, &[layer])
}

/// The worker's side: one store and one waiter map for every image.
struct Worker {
    client: Arc<Client>,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Worker {
    fn new(proxy: &Proxy) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Worker {
            client: Arc::new(proxy.client()),
            store: Arc::new(Store::open(root.join("store")).unwrap()),
            waiters: Arc::new(ContentWaiters::new()),
            _dir: dir,
            root,
        }
    }

    /// Starts receiving `image` (holding `held`); once its header arrived,
    /// mounts it and returns the mount, the header, the time to header and
    /// the receive in flight.
    /// With `stop_at_header`, the proxy is stopped the moment the header
    /// arrived (before mounting), cutting the body off.
    async fn pull_and_mount(
        &self,
        proxy: &mut Proxy,
        image: &str,
        held: &[&str],
        grace: Duration,
        stop_at_header: bool,
    ) -> Pulled {
        let t0 = Instant::now();
        let receiving = receiver::start(
            self.client.clone(),
            proxy.addr.into(),
            request(image, held),
            self.store.clone(),
            self.waiters.clone(),
            ReceiveOptions {
                server_name: "127.0.0.1".into(),
                grace,
                ..ReceiveOptions::default()
            },
        );
        let header = tokio::time::timeout(BOUND, receiving.header)
            .await
            .expect("header within the bound")
            .expect("a header");
        let to_header = t0.elapsed();
        if stop_at_header {
            proxy.stop().await;
        }
        let fs = ImageFs::new(
            &header,
            self.store.clone(),
            self.waiters.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        let dir = self
            .root
            .join(format!("mnt-{}", image.replace([':', '/'], "-")));
        std::fs::create_dir_all(&dir).unwrap();
        let session = Session::mount(&dir, fs, MountOptions::default().fs_name("starlight-test"))
            .await
            .unwrap();
        Pulled {
            session,
            dir,
            header,
            t0,
            to_header,
            done: receiving.done,
        }
    }
}

struct Pulled {
    session: Session,
    dir: PathBuf,
    header: Arc<starlight_worker::header_check::CheckedHeader>,
    t0: Instant,
    to_header: Duration,
    done: tokio::task::JoinHandle<Result<ReceiveReport, receiver::ReceiveError>>,
}

impl Pulled {
    async fn finish(&mut self) -> ReceiveReport {
        tokio::time::timeout(BOUND, &mut self.done)
            .await
            .expect("the receive ends within the bound")
            .unwrap()
            .unwrap()
    }
}

/// Runs blocking file-system calls off the runtime (the FUSE server runs on
/// it), bounded.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(BOUND, tokio::task::spawn_blocking(f))
        .await
        .expect("file-system call within the bound")
        .unwrap()
}

/// Checks stat of every path and the listing of every directory.
async fn check_metadata(dir: &Path, files: &Files) {
    let (dir, files) = (dir.to_path_buf(), files.clone());
    blocking(move || {
        let mut dirs: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (path, data) in &files {
            let m = std::fs::symlink_metadata(dir.join(path)).unwrap();
            assert!(m.is_file(), "{path}");
            assert_eq!(m.len(), data.len() as u64, "{path}");
            assert_eq!(m.mode() & 0o7777, 0o644, "{path}");
            assert_eq!(m.mtime() as u64, MTIME, "{path}");
            let p = Path::new(path);
            let parent = dir.join(p.parent().unwrap());
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            dirs.entry(parent).or_default().push(name);
        }
        for (parent, mut want) in dirs {
            let mut got: Vec<String> = std::fs::read_dir(&parent)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| !std::fs::symlink_metadata(parent.join(n)).unwrap().is_dir())
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{}", parent.display());
        }
    })
    .await
}

/// Reads `path` through the mount: its bytes or the error number.
async fn read_file(dir: &Path, path: &str) -> Result<Vec<u8>, i32> {
    let p = dir.join(path);
    blocking(move || {
        let mut f = std::fs::File::open(&p).map_err(|e| e.raw_os_error().unwrap_or(0))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| e.raw_os_error().unwrap_or(0))?;
        Ok(v)
    })
    .await
}

async fn check_contents(dir: &Path, files: &Files) {
    for (path, data) in files {
        let got = read_file(dir, path).await.unwrap();
        assert!(got == *data, "{path}: wrong bytes through the mount");
    }
}

fn sha_of(header: &Header, path: &str) -> [u8; 32] {
    header
        .toc
        .iter()
        .find(|e| e.path == path)
        .unwrap()
        .sha256
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root and /dev/fuse"]
async fn mount_at_header_then_serve_verified_contents() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): the worker FUSE test: {reason}");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("starlight_worker=info")
        .with_test_writer()
        .try_init();
    let reg = TestRegistry::start();
    let (f1, f2) = (v1_files(), v2_files());
    let v1 = push(&reg, "v1", &f1);
    push(&reg, "v2", &f2);
    let mut corrupt_files = Files::new();
    corrupt_files.insert("etc/ok".into(), b"fine\n".repeat(100));
    corrupt_files.insert("etc/broken".into(), noise(3, 300_000));
    let v3 = push(&reg, "v3", &corrupt_files);
    let mut cut_files = Files::new();
    for i in 0..4 {
        cut_files.insert(format!("data/part{i}"), noise(10 + i, 8 << 20));
    }
    push(&reg, "v4", &cut_files);
    let mut proxy = Proxy::start(&reg, ServeOptions::default());
    let worker = Worker::new(&proxy);

    // (1) v1: mount at the header; metadata at once; an open of the big
    // file parks until its content is stored; every byte right.
    let mut p1 = worker
        .pull_and_mount(
            &mut proxy,
            "worker/app:v1",
            &[],
            Duration::from_secs(1),
            false,
        )
        .await;
    let mounted = p1.t0.elapsed();
    check_metadata(&p1.dir, &f1).await;
    let metadata_done = p1.t0.elapsed();
    let big_pending = worker.waiters.state(&sha(&f1["opt/big.bin"]));
    let big_path = p1.dir.join("opt/big.bin");
    let (big_file, open_waited) = blocking(move || {
        let t = Instant::now();
        let f = std::fs::File::open(big_path);
        (f, t.elapsed())
    })
    .await;
    let big = blocking(move || {
        let mut v = Vec::new();
        big_file.unwrap().read_to_end(&mut v).unwrap();
        v
    })
    .await;
    let big_read = p1.t0.elapsed();
    assert!(big == f1["opt/big.bin"]);
    check_contents(&p1.dir, &f1).await;
    let r1 = p1.finish().await;
    assert!(r1.stream_error.is_none(), "{:?}", r1.stream_error);
    assert!(r1.failed.is_empty());
    assert_eq!(r1.stored, p1.header.payloads.len());
    assert_eq!(p1.header.payloads.len(), f1.len());
    for data in f1.values() {
        assert!(worker.store.has(&sha(data)));
    }
    eprintln!(
        "v1: header after {:?}, mounted after {mounted:?}, stat+readdir of all paths done after \
         {metadata_done:?} (big content then {big_pending:?}), the open of the big file waited \
         {open_waited:?}, big file read after {big_read:?}, last byte after {:?} ({} bytes)",
        p1.to_header, r1.time_to_end, r1.bytes_received
    );

    // (2) v2 holding v1: only the two changed contents travel; the mount
    // serves the held ones from the store.
    let mut p2 = worker
        .pull_and_mount(
            &mut proxy,
            "worker/app:v2",
            &[&v1],
            Duration::from_secs(1),
            false,
        )
        .await;
    let sent: Vec<[u8; 32]> = p2.header.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.contains(&sha(&f2["bin/app"])));
    assert!(sent.contains(&sha(&f2["etc/conf/new"])));
    let payload_bytes: u64 = p2.header.payloads.iter().map(|p| p.compressed_len).sum();
    assert!(payload_bytes < 100_000, "{payload_bytes} bytes sent");
    let held = p2
        .header
        .toc
        .iter()
        .filter(|e| e.source == Source::Held)
        .count();
    assert_eq!(held, f2.len() - 2);
    check_metadata(&p2.dir, &f2).await;
    check_contents(&p2.dir, &f2).await;
    let r2 = p2.finish().await;
    assert!(r2.stream_error.is_none() && r2.failed.is_empty());
    assert_eq!(r2.stored, 2);
    eprintln!(
        "v2 (holding v1): {} payloads, {payload_bytes} compressed bytes, last byte after {:?}",
        sent.len(),
        r2.time_to_end
    );
    // v1 is still served right next to it.
    check_contents(&p1.dir, &f1).await;

    // (3) a corrupted member: the open fails with EIO, the content never
    // reaches the store, the other file is served.
    verify(
        &fetch(&proxy.client(), proxy.addr, &request("worker/app:v3", &[]))
            .await
            .unwrap(),
    )
    .unwrap();
    let record = proxy.db.image(&v3).unwrap().unwrap();
    let toc = proxy.db.merged_toc(&v3).unwrap();
    let target = toc.iter().find(|t| t.entry.path == "etc/broken").unwrap();
    let c = target.entry.content.unwrap();
    let blob = reg.blob_path(&record.layers[target.layer as usize].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = (c.offset + c.compressed_len / 2) as usize;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&blob, &bytes).unwrap();
    let mut p3 = worker
        .pull_and_mount(
            &mut proxy,
            "worker/app:v3",
            &[],
            Duration::from_secs(1),
            false,
        )
        .await;
    let broken_sha = sha_of(&p3.header, "etc/broken");
    let t = Instant::now();
    assert_eq!(read_file(&p3.dir, "etc/broken").await, Err(libc::EIO));
    let waited = t.elapsed();
    assert_eq!(
        read_file(&p3.dir, "etc/ok").await.unwrap(),
        corrupt_files["etc/ok"]
    );
    let r3 = p3.finish().await;
    assert_eq!(r3.failed, vec![broken_sha]);
    assert!(!worker.store.has(&broken_sha));
    assert_eq!(read_file(&p3.dir, "etc/broken").await, Err(libc::EIO));
    eprintln!("v3 (corrupt member): the open failed with EIO after {waited:?}");

    // (4) the proxy stops mid-body: parked opens fail with EIO within the
    // grace bound; whatever arrived before is served intact.
    let grace = Duration::from_secs(1);
    let mut p4 = worker
        .pull_and_mount(&mut proxy, "worker/app:v4", &[], grace, true)
        .await;
    let stopped = Instant::now(); // the proxy stopped just before the mount
    let mut outcomes = Vec::new();
    for (path, data) in &cut_files {
        let t = Instant::now();
        match read_file(&p4.dir, path).await {
            Ok(got) => assert!(got == *data, "{path}: wrong bytes"),
            Err(code) => {
                assert_eq!(code, libc::EIO, "{path}");
                outcomes.push((path.clone(), t.elapsed()));
            }
        }
    }
    let r4 = p4.finish().await;
    assert!(r4.stream_error.is_some());
    assert!(
        !outcomes.is_empty(),
        "the whole body arrived before the stop"
    );
    for (path, data) in &cut_files {
        let stored = worker.store.has(&sha(data));
        assert_eq!(stored, !outcomes.iter().any(|(p, _)| p == path), "{path}");
    }
    let all_failed = stopped.elapsed();
    assert!(
        all_failed < grace + Duration::from_secs(20),
        "{all_failed:?}"
    );
    eprintln!(
        "v4 (proxy stopped after the header): {} of {} files failed with EIO, \
         all settled {all_failed:?} after the stop (grace {grace:?}); stream error: {:?}",
        outcomes.len(),
        cut_files.len(),
        r4.stream_error
    );
    // No temporary file is left behind.
    let tmp = std::fs::read_dir(worker.store.root().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);

    for p in [p1, p2, p3, p4] {
        p.session.shutdown().await;
    }
}

/// A directory of 100,000 entries lists through a real FUSE mount with
/// every name exactly once (readdir continues at its offset: linear).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: a FUSE mount"]
async fn readdir_of_a_huge_directory_lists_every_name_once() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
    let toc = (0..N)
        .map(|i| transport_quic::TocEntry {
            path: format!("huge/entry-{i:06}"),
            kind: transport_quic::EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME as i64,
            mtime_nsec: 0,
            size: 0,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            sha256: None,
            layer: 0,
            source: Source::NoContent,
        })
        .collect();
    let header = Header {
        toc,
        ..Header::default()
    };
    let fs = ImageFs::new(
        &header,
        store,
        Arc::new(ContentWaiters::new()),
        Duration::from_secs(1),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let session = Session::mount(&mnt, fs, MountOptions::default().fs_name("starlight-test"))
        .await
        .unwrap();
    let huge = mnt.join("huge");
    let (names, took) = blocking(move || {
        let t0 = Instant::now();
        let names: Vec<String> = std::fs::read_dir(&huge)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        (names, t0.elapsed())
    })
    .await;
    println!("listed {} entries through FUSE in {took:?}", names.len());
    assert_eq!(names.len(), N, "every entry once");
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), N, "no name twice");
    for (i, name) in unique.iter().enumerate() {
        assert_eq!(**name, format!("entry-{i:06}"));
    }
    session.shutdown().await;
}
