//! uring-fs benchmarks (issue 4), side by side in one run:
//! - sequential read of a large local file and random 4 KiB reads: native vs
//!   `/dev/fuse` (spliced replies) vs FUSE-over-io_uring vs passthrough;
//! - a metadata walk (readdir + lstat of every entry) over N files: native
//!   overlayfs vs a uring-fs mount of the same tree;
//! - getattr requests per second per transport (attribute timeout 0, so
//!   every `fstat` is a request; the server's state is warm).
//!
//! Needs root (mounts, `drop_caches`, toggling `enable_uring`). Results go to
//! `<out>/fuse.txt` and `<out>/fuse.json`.
//!
//! `cargo run --release -p starlight-bench --bin fuse_bench -- --size-mib 1024`

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use uring_fs::memfs::{Content, MemFs, ROOT};
use uring_fs::{MountOptions, Session, TransportChoice};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

#[derive(Parser, Debug)]
#[command(about = "uring-fs benchmarks: transports, splice, passthrough, metadata walk")]
struct Args {
    /// Size of the sequentially read file, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Number of random 4 KiB reads.
    #[arg(long, default_value_t = 20_000)]
    random_reads: u64,
    /// Files in the metadata walk.
    #[arg(long, default_value_t = 50_000)]
    files: u64,
    /// Seconds of getattr per transport.
    #[arg(long, default_value_t = 3)]
    getattr_secs: u64,
    /// Working directory (on a local disk filesystem).
    #[arg(long, default_value = "target/fuse-bench")]
    work: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// One way of reaching the file.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
enum Via {
    Native,
    DevFuseSplice,
    DevFusePread,
    IoUring,
    Passthrough,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Native => "native",
            Via::DevFuseSplice => "/dev/fuse+splice",
            Via::DevFusePread => "/dev/fuse+pread",
            Via::IoUring => "io_uring",
            Via::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Serialize)]
struct ReadResult {
    path: &'static str,
    transport: String,
    seq_cold_mib_s: f64,
    seq_warm_backing_mib_s: f64,
    rand4k_iops: f64,
    seq_cold_ratio: f64,
    seq_warm_ratio: f64,
    rand4k_ratio: f64,
}

#[derive(Debug, Serialize)]
struct GetattrResult {
    transport: String,
    requests_per_s: f64,
}

#[derive(Debug, Serialize)]
struct WalkResult {
    files: u64,
    overlayfs_cold_s: f64,
    uringfs_cold_s: f64,
    uringfs_warm_s: f64,
    ratio_cold: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    size_mib: u64,
    random_reads: u64,
    reads: Vec<ReadResult>,
    getattr: Vec<GetattrResult>,
    walk: WalkResult,
}

/// Runs per measurement; the median is reported.
const REPEAT: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").context("drop_caches (needs root)")
}

fn seq_read(path: &Path) -> Result<f64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

fn rand_reads(path: &Path, size: u64, count: u64) -> Result<f64> {
    let f = File::open(path)?;
    // SAFETY: advice on our own fd.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let blocks = size / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(&mut buf, (x % blocks) * 4096)?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn set_uring(on: bool) -> Result<String> {
    let before = fs::read_to_string(ENABLE_URING).unwrap_or_else(|_| "N".into());
    if Path::new(ENABLE_URING).exists() {
        fs::write(ENABLE_URING, if on { "Y" } else { "N" })?;
    }
    Ok(before.trim().to_owned())
}

/// Mounts `fs` with `transport`, turning `enable_uring` on for io_uring
/// mounts only while mounting.
async fn mount(dir: &Path, fs: MemFs, options: MountOptions, uring: bool) -> Result<Session> {
    let choice = if uring {
        TransportChoice::IoUring
    } else {
        TransportChoice::DevFuse
    };
    let before = if uring { Some(set_uring(true)?) } else { None };
    let session = Session::mount(dir, fs, options.transport(choice)).await;
    if let Some(before) = before {
        fs::write(ENABLE_URING, before)?;
    }
    Ok(session?)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Mounts the file for `which` (nothing for native); the path to read.
async fn mount_for(
    args: &Args,
    blob: &Path,
    which: Via,
) -> Result<(Option<(Session, tempfile::TempDir)>, PathBuf, String)> {
    if which == Via::Native {
        return Ok((None, blob.to_owned(), "ext4".into()));
    }
    let size = fs::metadata(blob)?.len();
    let mnt = tempfile::tempdir_in(&args.work)?;
    let fs = MemFs::new(Duration::from_secs(60));
    fs.set_passthrough(which == Via::Passthrough);
    let ino = fs.add_file(ROOT, "blob", size)?;
    fs.fulfil(ino, Content::File(Arc::new(File::open(blob)?)))?;
    let options = MountOptions::default()
        .splice(which != Via::DevFusePread)
        .passthrough(which == Via::Passthrough);
    let s = mount(mnt.path(), fs, options, which == Via::IoUring).await?;
    let target = s.mountpoint().join("blob");
    let transport = format!(
        "{}{}",
        s.transport(),
        if s.passthrough() {
            ", passthrough negotiated"
        } else {
            ""
        }
    );
    Ok((Some((s, mnt)), target, transport))
}

/// Every path mounted at once and measured in turn, `REPEAT` rounds, so
/// that each round compares them under the same machine load; medians of
/// the values and of the per-round ratios to native.
async fn bench_reads(args: &Args, blob: &Path, paths: &[Via]) -> Result<Vec<ReadResult>> {
    let size = fs::metadata(blob)?.len();
    let mut mounts = Vec::new();
    let mut targets = Vec::new();
    for &which in paths {
        let (m, target, transport) = mount_for(args, blob, which).await?;
        mounts.extend(m);
        targets.push((which, target, transport));
    }
    let b = blob.to_owned();
    let count = args.random_reads;
    let t = targets
        .iter()
        .map(|(_, p, _)| p.clone())
        .collect::<Vec<_>>();
    // samples[path][metric] = values per round
    let samples = blocking(move || {
        let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; t.len()];
        for round in 0..REPEAT {
            eprintln!("reads: round {} of {REPEAT}", round + 1);
            for (k, target) in t.iter().enumerate() {
                drop_caches()?;
                samples[k][0].push(seq_read(target)?);
                drop_caches()?;
                seq_read(&b)?; // backing file in the page cache, mount's cache cold
                samples[k][1].push(seq_read(target)?);
                drop_caches()?;
                seq_read(&b)?;
                samples[k][2].push(rand_reads(target, size, count)?);
            }
        }
        Ok(samples)
    })
    .await?;
    for (s, _dir) in mounts {
        s.shutdown().await;
    }
    let native = targets.iter().position(|(w, _, _)| *w == Via::Native);
    let ratio = |k: usize, metric: usize| -> f64 {
        let Some(n) = native else { return f64::NAN };
        median(
            samples[k][metric]
                .iter()
                .zip(&samples[n][metric])
                .map(|(v, base)| v / base)
                .collect(),
        )
    };
    Ok(targets
        .into_iter()
        .enumerate()
        .map(|(k, (which, _, transport))| ReadResult {
            path: which.name(),
            transport,
            seq_cold_mib_s: median(samples[k][0].clone()),
            seq_warm_backing_mib_s: median(samples[k][1].clone()),
            rand4k_iops: median(samples[k][2].clone()),
            seq_cold_ratio: ratio(k, 0),
            seq_warm_ratio: ratio(k, 1),
            rand4k_ratio: ratio(k, 2),
        })
        .collect())
}

async fn bench_getattr(args: &Args, uring: bool) -> Result<GetattrResult> {
    let mnt = tempfile::tempdir_in(&args.work)?;
    let fs = MemFs::new(Duration::ZERO);
    let ino = fs.add_file(ROOT, "f", 4)?;
    fs.fulfil(ino, Content::Bytes(Arc::from(&b"data"[..])))?;
    let s = mount(mnt.path(), fs, MountOptions::default(), uring).await?;
    let path = s.mountpoint().join("f");
    let secs = args.getattr_secs;
    let rate = blocking(move || {
        let f = File::open(&path)?;
        let until = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut n = 0u64;
        while Instant::now() < until {
            for _ in 0..256 {
                f.metadata()?;
            }
            n += 256;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await?;
    let transport = s.transport().to_string();
    s.shutdown().await;
    Ok(GetattrResult {
        transport,
        requests_per_s: rate,
    })
}

/// Readdir + lstat of everything under `root`; the number of entries.
fn walk(root: &Path) -> Result<u64> {
    let mut stack = vec![root.to_owned()];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let meta = fs::symlink_metadata(e.path())?;
            n += 1;
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(n)
}

async fn bench_walk(args: &Args) -> Result<WalkResult> {
    const PER_DIR: u64 = 1000;
    let tree = args.work.join(format!("tree-{}", args.files));
    if !tree.join(".done").exists() {
        for i in 0..args.files {
            let d = tree.join(format!("d{}", i / PER_DIR));
            if i % PER_DIR == 0 {
                fs::create_dir_all(&d)?;
            }
            fs::write(d.join(format!("f{i}")), b"x")?;
        }
        File::create(tree.join(".done"))?;
    }
    // Native overlayfs over the tree.
    let ovl = tempfile::tempdir_in(&args.work)?;
    let (upper, work, merged) = (
        ovl.path().join("u"),
        ovl.path().join("w"),
        ovl.path().join("m"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        tree.display(),
        upper.display(),
        work.display()
    );
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path");
    let (src, dst, ty, data) = (
        c(Path::new("overlay"))?,
        c(&merged)?,
        c(Path::new("overlay"))?,
        CString::new(opts)?,
    );
    // SAFETY: valid NUL-terminated strings for the call.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            ty.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    } != 0
    {
        bail!("overlay mount: {}", std::io::Error::last_os_error());
    }
    let m2 = merged.clone();
    let ovl_result = blocking(move || {
        drop_caches()?;
        let t = Instant::now();
        let n = walk(&m2)?;
        Ok((n, t.elapsed().as_secs_f64()))
    })
    .await;
    // SAFETY: as above.
    unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    let (n_ovl, ovl_s) = ovl_result?;

    // The same tree in a uring-fs mount.
    let fs = MemFs::new(Duration::from_secs(60));
    for d in 0..args.files.div_ceil(PER_DIR) {
        let dir = fs.mkdir(ROOT, &format!("d{d}"))?;
        for i in d * PER_DIR..((d + 1) * PER_DIR).min(args.files) {
            fs.add_file(dir, &format!("f{i}"), 1)?;
        }
    }
    fs.add_file(ROOT, ".done", 0)?;
    let mnt = tempfile::tempdir_in(&args.work)?;
    let s = mount(mnt.path(), fs, MountOptions::default(), false).await?;
    let root = s.mountpoint().to_owned();
    let (n_fuse, cold, warm) = blocking(move || {
        drop_caches()?;
        let t = Instant::now();
        let n = walk(&root)?;
        let cold = t.elapsed().as_secs_f64();
        let t = Instant::now();
        walk(&root)?;
        Ok((n, cold, t.elapsed().as_secs_f64()))
    })
    .await?;
    s.shutdown().await;
    if n_ovl != n_fuse {
        bail!("walks differ: overlay {n_ovl} entries, uring-fs {n_fuse}");
    }
    Ok(WalkResult {
        files: args.files,
        overlayfs_cold_s: ovl_s,
        uringfs_cold_s: cold,
        uringfs_warm_s: warm,
        ratio_cold: cold / ovl_s,
    })
}

fn make_blob(path: &Path, mib: u64) -> Result<()> {
    if fs::metadata(path).map(|m| m.len()).ok() == Some(mib << 20) {
        return Ok(());
    }
    let mut f = File::create(path)?;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (j as u64 ^ i.wrapping_mul(2_654_435_761)) as u8;
        }
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("fuse_bench needs root");
    }
    fs::create_dir_all(&args.work)?;
    fs::create_dir_all(&args.out)?;
    let blob = args.work.join(format!("blob-{}m", args.size_mib));
    make_blob(&blob, args.size_mib)?;
    let uring_offered = Path::new(ENABLE_URING).exists();
    let mut paths = vec![Via::Native, Via::DevFuseSplice, Via::DevFusePread];
    if uring_offered {
        paths.push(Via::IoUring);
    }
    paths.push(Via::Passthrough);
    let reads = bench_reads(&args, &blob, &paths).await?;
    let mut getattr = vec![bench_getattr(&args, false).await?];
    if uring_offered {
        getattr.push(bench_getattr(&args, true).await?);
    }
    eprintln!("metadata walk of {} files", args.files);
    let walk = bench_walk(&args).await?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let report = Report {
        kernel,
        size_mib: args.size_mib,
        random_reads: args.random_reads,
        reads,
        getattr,
        walk,
    };
    let text = render(&report);
    print!("{text}");
    fs::write(args.out.join("fuse.txt"), &text)?;
    fs::write(
        args.out.join("fuse.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}

fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "uring-fs benchmarks (kernel {}), one run", r.kernel);
    let _ = writeln!(
        s,
        "\nreads of a {} MiB local file ({} random 4 KiB reads), median of {REPEAT} rounds, all paths in each round; ratio = median of per-round ratios to native\n\
         cold: all caches dropped; warm: backing file in the page cache, the mount's cache dropped",
        r.size_mib, r.random_reads
    );
    let _ = writeln!(
        s,
        "{:<18} {:>12} {:>7} {:>14} {:>7} {:>12} {:>7}  transport",
        "path", "seq cold MiB/s", "ratio", "seq warm MiB/s", "ratio", "rand4k IOPS", "ratio"
    );
    for x in &r.reads {
        let _ = writeln!(
            s,
            "{:<18} {:>12.0} {:>7.2} {:>14.0} {:>7.2} {:>12.0} {:>7.2}  {}",
            x.path,
            x.seq_cold_mib_s,
            x.seq_cold_ratio,
            x.seq_warm_backing_mib_s,
            x.seq_warm_ratio,
            x.rand4k_iops,
            x.rand4k_ratio,
            x.transport
        );
    }
    let _ = writeln!(s, "\ngetattr (fstat, attr timeout 0), one thread");
    for g in &r.getattr {
        let _ = writeln!(
            s,
            "{:<48} {:>10.0} requests/s",
            g.transport, g.requests_per_s
        );
    }
    let w = &r.walk;
    let _ = writeln!(
        s,
        "\nmetadata walk (readdir + lstat) of {} files, caches dropped: overlayfs {:.3} s, uring-fs {:.3} s (ratio {:.2}); uring-fs warm {:.3} s",
        w.files, w.overlayfs_cold_s, w.uringfs_cold_s, w.ratio_cold, w.uringfs_warm_s
    );
    s
}
