//! Crafted images against the indexer's budgets (issue 12), end to end: each
//! image is pushed to a real `docker-registry` and indexed, by the
//! `starlight-proxy index` binary (to measure its peak memory) or in
//! process. Each must be refused as soon as it crosses its budget, with an
//! error naming the budget, bounded time, memory and bytes decompressed,
//! and nothing recorded in the directory database.
//!
//! - the xattr bomb: 20,000 empty files with 1 MiB of xattrs each (20 GiB
//!   of metadata) in a 22 MB blob;
//! - the gzip bomb: one file of 4 GiB of zeros, a few MB compressed;
//! - an image whose layers each fit their budget but not together, and one
//!   that repeats a layer to multiply it in memory;
//! - more concurrent jobs than the gate lets run and wait.
//!
//! The bombs' configs carry a made-up diff ID: hashing 20 GiB would make
//! the test slow, and the scan (which is what the budgets bound) runs
//! before the diff ID is checked, so an attacker needs no valid one either.
//! A small image from the same generator with its true diff ID is indexed
//! fine, so the refusals are the budgets' doing.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::layout::{digest_of, Layer, OciLayout};
use common::registry::TestRegistry;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use starlight_proxy::config::{ByteSize, Config, IndexConfig};
use starlight_proxy::db::Db;
use starlight_proxy::format::budget::BudgetKind;
use starlight_proxy::index::{IndexError, Indexer};
use starlight_proxy::registry::RegistryClient;

const GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// xattrs per bomb entry, and the length of each value: 16 x 65,000 bytes
/// (just under the per-entry bounds of 64 KiB per value and 1 MiB per entry).
const XATTRS: usize = 16;
const XATTR_VALUE: usize = 65_000;

fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A ustar header block with a valid checksum.
fn header_block(path: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// One PAX record `LEN KEY=VALUE\n`.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn padding(len: usize) -> usize {
    (512 - len % 512) % 512
}

/// A Starlight layer of `files` empty files `bomb/fNNNNN`, each with 16
/// xattrs of 65,000 bytes, streamed as gzip members: the part shared by
/// every entry (PAX header block and xattr records) is compressed once and
/// repeated, so making it costs no more than its compressed size. With
/// `with_diff_id`, the config gets the true digest of the tar stream.
fn xattr_bomb(files: usize, with_diff_id: bool) -> Layer {
    let mut xattrs = Vec::new();
    for i in 0..XATTRS {
        let value = vec![b'a' + i as u8; XATTR_VALUE];
        xattrs.extend(pax_record(&format!("SCHILY.xattr.user.bomb{i:02}"), &value));
    }
    let path_len = pax_record("path", b"bomb/f00000").len();
    let pax_size = xattrs.len() + path_len;
    let mut shared = header_block("PaxHeaders/bomb", tar::EntryType::XHeader, pax_size as u64);
    shared.extend_from_slice(&xattrs);
    let shared_member = gzip_member(&shared, 9);
    let mut hasher = Sha256::new();
    let mut blob = Vec::new();
    for i in 0..files {
        let path = format!("bomb/f{i:05}");
        let mut unique = pax_record("path", path.as_bytes());
        unique.resize(unique.len() + padding(pax_size), 0);
        unique.extend(header_block(&path, tar::EntryType::Regular, 0));
        blob.extend_from_slice(&shared_member);
        blob.extend(gzip_member(&unique, 6));
        if with_diff_id {
            hasher.update(&shared);
            hasher.update(&unique);
        }
    }
    let end = vec![0u8; 1024];
    blob.extend(gzip_member(&end, 6));
    hasher.update(&end);
    Layer {
        blob,
        media_type: GZIP_MEDIA_TYPE.into(),
        diff_id: if with_diff_id {
            format!("sha256:{}", hex::encode(hasher.finalize()))
        } else {
            digest_of(b"not computed: see the module documentation")
        },
    }
}

/// A gzip member of `mib` MiB of zeros, made in time proportional to its
/// compressed size: one MiB is deflated with a full flush (byte-aligned
/// blocks that refer to nothing before them) and that output is repeated;
/// the trailer's CRC-32 is combined from the one MiB's.
fn zeros_member(mib: u64) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut chunk = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut chunk, flate2::FlushCompress::Full)
        .unwrap();
    assert_eq!(c.total_in(), 1 << 20, "one call deflates the whole MiB");
    let mut last = Vec::with_capacity(64);
    c.compress_vec(&[], &mut last, flate2::FlushCompress::Finish)
        .unwrap();
    let mut one = flate2::Crc::new();
    one.update(&zeros);
    let mut crc = flate2::Crc::new();
    let mut member = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    for _ in 0..mib {
        member.extend_from_slice(&chunk);
        crc.combine(&one);
    }
    member.extend(last);
    member.extend(crc.sum().to_le_bytes());
    member.extend(((mib << 20) as u32).to_le_bytes());
    member
}

/// A Starlight layer holding one file `zeros` of `mib` MiB of zeros (its
/// own gzip member) and nothing else.
fn gzip_bomb(mib: u64) -> Layer {
    let size = mib << 20;
    let mut blob = gzip_member(&header_block("zeros", tar::EntryType::Regular, size), 6);
    blob.extend(zeros_member(mib));
    blob.extend(gzip_member(&[0u8; 1024], 6));
    Layer {
        blob,
        media_type: GZIP_MEDIA_TYPE.into(),
        diff_id: digest_of(b"not computed: see the module documentation"),
    }
}

/// A small plain Starlight layer of `n` files `dir/fN`.
fn small_layer(dir: &str, n: usize) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        let data = format!("{dir} {i}\n").into_bytes();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("{dir}/f{i}"), &data[..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut blob = Vec::new();
    let converted = starlight_proxy::format::convert_layer(
        &tar[..],
        &mut blob,
        &starlight_proxy::format::ConvertOptions {
            compression: starlight_proxy::format::Compression::Gzip,
            level: Some(1),
        },
    )
    .unwrap();
    Layer {
        blob,
        media_type: GZIP_MEDIA_TYPE.into(),
        diff_id: converted.diff_id,
    }
}

/// The layers carry no table-of-contents annotation: computing one would
/// scan the bombs in this process (the indexer refuses them by budget
/// before it ever compares an annotation).
fn push(reg: &TestRegistry, name: &str, layers: &[Layer]) -> String {
    let mut layout = OciLayout::new();
    let none = vec![None; layers.len()];
    let desc = layout.add_image_annotated("linux", "amd64", layers, &["/bin/sh"], &none);
    layout.tag("v1", &desc);
    let reference = format!("{}/{name}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

/// What one run of `starlight-proxy index` did.
struct Run {
    ok: bool,
    stderr: String,
    elapsed: Duration,
    /// Peak resident memory of the indexer process, bytes (see
    /// [`index_with_binary`]).
    max_rss: u64,
    /// This test process's resident memory when it spawned the indexer.
    parent_rss: u64,
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn own_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Runs `starlight-proxy index --config CONFIG IMAGE` and measures its peak
/// resident memory: the child's own `VmHWM` (its high-water mark, kept by
/// the kernel for the address space `exec` gave it), sampled every 2 ms
/// until it exits. `ru_maxrss` cannot serve: a forked child inherits this
/// process's counters, so it would count the test process (and the other
/// tests running in it) too. The mark is monotonic, so a sample misses at
/// most the growth of the last 2 ms.
#[allow(clippy::zombie_processes)] // reaped by wait4, for its rusage
fn index_with_binary(config: &Path, reference: &str) -> Run {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let parent_rss = own_status_bytes("VmHWM:");
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_starlight-proxy"))
        .args(["index", "--config"])
        .arg(config)
        .arg(reference)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        // The status file lasts until the child is reaped (by wait4, below).
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                break; // a zombie has no memory lines
            };
            peak = peak.max(kb * 1024);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps our own child (not waited for elsewhere); both
    // pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let max_rss = sampler.join().unwrap();
    assert!(max_rss > 0, "no memory sample of the indexer");
    Run {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stderr,
        elapsed: t0.elapsed(),
        max_rss,
        parent_rss,
    }
}

/// The indexer's resident memory when it does nothing (the registry
/// refuses the connection at once), measured as [`index_with_binary`] does:
/// the bombs' peaks are compared with it.
fn idle_indexer_rss(dir: &Path) -> u64 {
    let config = dir.join("idle.toml");
    write_config(&config, &dir.join("idle-db"), "");
    let run = index_with_binary(&config, "127.0.0.1:1/nothing:here");
    assert!(!run.ok, "nothing listens on port 1");
    run.max_rss
}

/// The number in `… budget exceeded: N bytes` of an error message.
fn used_bytes(message: &str) -> u64 {
    let after = message
        .split("budget exceeded: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no budget in {message}"));
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {message}"))
}

fn write_config(path: &Path, db: &Path, index: &str) {
    std::fs::write(
        path,
        format!("db = {:?}\n[registry]\nplain_http = true\n{index}", db),
    )
    .unwrap();
}

/// The database at `db` holds no more than a new, empty one (the refused
/// image was the only one indexed).
fn assert_empty(db: &Path) {
    let fresh = tempfile::tempdir().unwrap();
    let empty = Db::open(fresh.path()).unwrap().dump().unwrap();
    let db = Db::open(db).unwrap();
    assert_eq!(db.dump().unwrap(), empty, "a refused image left records");
}

#[test]
fn the_xattr_bomb_is_refused_within_the_default_metadata_budget() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();

    // The generator makes valid images: three bomb entries with their true
    // diff ID index fine, xattrs and all.
    let control = push(&reg, "xattr-control", &[xattr_bomb(3, true)]);
    let db_path = dir.path().join("control-db");
    let config = dir.path().join("control.toml");
    write_config(&config, &db_path, "");
    let run = index_with_binary(&config, &control);
    assert!(run.ok, "the control image: {}", run.stderr);
    let db = Db::open(&db_path).unwrap();
    let image = db.image_by_reference(&control).unwrap().unwrap();
    let toc = db.merged_toc(&image.manifest_digest).unwrap();
    let file = toc.iter().find(|t| t.entry.path == "bomb/f00002").unwrap();
    assert_eq!(file.entry.xattrs.len(), XATTRS);
    assert!(file
        .entry
        .xattrs
        .iter()
        .all(|(_, v)| v.len() == XATTR_VALUE));
    drop(db);

    // 20,000 entries: 20 GiB of metadata in a blob of about 22 MB.
    let t0 = Instant::now();
    let bomb = xattr_bomb(20_000, false);
    let blob_len = bomb.blob.len();
    let reference = push(&reg, "xattr-bomb", &[bomb]);
    println!(
        "xattr bomb: {blob_len} bytes compressed, about {} GiB of metadata, built and pushed in {:?}",
        (20_000 * XATTRS * XATTR_VALUE) >> 30,
        t0.elapsed()
    );
    assert!(blob_len < 64 << 20, "{blob_len}");

    let db_path = dir.path().join("db");
    let config = dir.path().join("proxy.toml");
    write_config(&config, &db_path, ""); // the default budgets
    let run = index_with_binary(&config, &reference);
    println!(
        "refused in {:?}, peak RSS {} MiB (test process {} MiB): {}",
        run.elapsed,
        run.max_rss >> 20,
        run.parent_rss >> 20,
        run.stderr.trim()
    );
    assert!(!run.ok, "the bomb was indexed");
    let limit = IndexConfig::default().layer_metadata_bytes.0;
    assert!(
        run.stderr.contains("per-layer metadata budget exceeded")
            && run.stderr.contains("layer_metadata_bytes")
            && run.stderr.contains(&reference),
        "{}",
        run.stderr
    );
    // Stopped at the entry that crossed the budget (about 1 MiB each).
    let used = used_bytes(&run.stderr);
    assert!(used > limit && used <= limit + (2 << 20), "{used}");
    // Memory stays near the budget, far from the 20 GiB the image asks for.
    assert!(
        run.max_rss < 2 * limit + (160 << 20),
        "peak RSS {} MiB",
        run.max_rss >> 20
    );
    assert!(run.elapsed < Duration::from_secs(120), "{:?}", run.elapsed);
    assert_empty(&db_path);
}

#[test]
fn the_gzip_bomb_is_refused_within_the_uncompressed_budget() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    // The generator makes valid gzip: a small one decompresses to its zeros.
    let mut small = Vec::new();
    flate2::read::GzDecoder::new(&zeros_member(3)[..])
        .read_to_end(&mut small)
        .unwrap();
    assert!(small.len() == 3 << 20 && small.iter().all(|b| *b == 0));

    let t0 = Instant::now();
    let bomb = gzip_bomb(4 << 10);
    let blob_len = bomb.blob.len();
    let reference = push(&reg, "gzip-bomb", &[bomb]);
    println!(
        "gzip bomb: 4 GiB of zeros in {blob_len} bytes, built and pushed in {:?}",
        t0.elapsed()
    );
    assert!(blob_len < 16 << 20, "{blob_len}");

    let db_path = dir.path().join("db");
    let config = dir.path().join("proxy.toml");
    let limit: u64 = 256 << 20;
    write_config(
        &config,
        &db_path,
        "[index]\nlayer_uncompressed_bytes = \"256mib\"\n",
    );
    let run = index_with_binary(&config, &reference);
    println!(
        "refused in {:?}, peak RSS {} MiB (test process {} MiB): {}",
        run.elapsed,
        run.max_rss >> 20,
        run.parent_rss >> 20,
        run.stderr.trim()
    );
    assert!(!run.ok, "the bomb was indexed");
    assert!(
        run.stderr
            .contains("per-layer uncompressed size budget exceeded")
            && run.stderr.contains("layer_uncompressed_bytes"),
        "{}",
        run.stderr
    );
    // Decompression stopped within one read (128 KiB) of the budget.
    let used = used_bytes(&run.stderr);
    assert!(used > limit && used <= limit + (128 << 10), "{used}");
    // Streaming decompression: the bomb costs the indexer at most 64 MiB
    // above what it uses doing nothing.
    let idle = idle_indexer_rss(dir.path());
    assert!(
        run.max_rss < idle + (64 << 20),
        "peak RSS {} MiB, idle indexer {} MiB",
        run.max_rss >> 20,
        idle >> 20
    );
    assert!(run.elapsed < Duration::from_secs(120), "{:?}", run.elapsed);
    assert_empty(&db_path);
}

fn indexer(edit: impl FnOnce(&mut IndexConfig)) -> Indexer {
    let mut config = Config::default().index;
    edit(&mut config);
    Indexer::new(&config)
}

/// Indexes with `indexer`, expecting refusal by `kind`; checks nothing was written.
async fn refused(indexer: &Indexer, db: &Db, reference: &str, kind: BudgetKind) -> IndexError {
    let before = db.dump().unwrap();
    let err = indexer
        .index(&RegistryClient::new(true), db, reference, None)
        .await
        .unwrap_err();
    assert_eq!(db.dump().unwrap(), before, "a refused image wrote records");
    match &err {
        IndexError::Budget { source, .. } => assert_eq!(source.kind, kind, "{err}"),
        other => panic!("expected a {kind} refusal, got {other}"),
    }
    assert!(err.to_string().contains(kind.config_key()), "{err}");
    err
}

#[tokio::test]
async fn image_budgets_count_every_layer_and_repeated_layers() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let (a, b) = (small_layer("a", 400), small_layer("b", 400));
    // Each layer costs a bit over 400 x 256 bytes: 120 KB fits a layer, not two.
    let tight = indexer(|c| {
        c.layer_metadata_bytes = ByteSize(120_000);
        c.image_metadata_bytes = ByteSize(200_000);
    });
    let one = push(&reg, "one", std::slice::from_ref(&a));
    tight
        .index(&RegistryClient::new(true), &db, &one, None)
        .await
        .unwrap();

    // Layer a is reused from the database, b is new: together too much.
    let two = push(&reg, "two", &[a.clone(), b.clone()]);
    let err = refused(&tight, &db, &two, BudgetKind::ImageMetadata).await;
    assert!(err.to_string().contains(&digest_of(&b.blob)), "{err}");

    // The same (new) layer three times would be held three times.
    let fresh = small_layer("c", 400);
    let thrice = push(&reg, "thrice", &[fresh.clone(), fresh.clone(), fresh]);
    refused(&tight, &db, &thrice, BudgetKind::ImageMetadata).await;

    // A layer above the per-layer budget, and an image whose two layers
    // (about 410 KB of tar each) decompress to more than the per-image budget.
    let big = push(&reg, "big", &[small_layer("d", 600)]);
    refused(&tight, &db, &big, BudgetKind::LayerMetadata).await;
    let roomy = indexer(|c| c.image_uncompressed_bytes = ByteSize(600_000));
    let heavy = push(
        &reg,
        "heavy",
        &[small_layer("e", 400), small_layer("f", 400)],
    );
    refused(&roomy, &db, &heavy, BudgetKind::ImageUncompressed).await;

    // With the default budgets the two-layer image is fine.
    indexer(|_| {})
        .index(&RegistryClient::new(true), &db, &two, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn jobs_beyond_the_gate_are_refused_at_once() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(Db::open(dir.path()).unwrap());
    let ok = push(&reg, "gated", &[small_layer("g", 3)]);
    let gate = std::sync::Arc::new(indexer(|c| {
        c.max_jobs = std::num::NonZeroUsize::MIN;
        c.max_waiting = 0;
    }));
    // A registry that accepts connections and never answers holds the only
    // slot for as long as the job lives.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck = format!("{}/stuck:v1", silent.local_addr().unwrap());
    let job = tokio::spawn({
        let (gate, db) = (gate.clone(), db.clone());
        async move {
            gate.index(&RegistryClient::new(true), &db, &stuck, None)
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.gate().running() == 0 {
        assert!(Instant::now() < deadline, "the stuck job never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = gate
        .index(&RegistryClient::new(true), &db, &ok, None)
        .await
        .unwrap_err();
    assert!(matches!(err, IndexError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("max_jobs"), "{err}");
    assert!(db.image_by_reference(&ok).unwrap().is_none());
    // Once the stuck job is gone, its slot serves the next one.
    job.abort();
    let _ = job.await;
    assert_eq!(gate.gate().running(), 0);
    gate.index(&RegistryClient::new(true), &db, &ok, None)
        .await
        .unwrap();
    drop(silent);
}
