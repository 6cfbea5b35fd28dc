//! `starlight-bench gc-corpus`: issue 14's GC acceptance on the real corpus.
//!
//! With the registry serving the corpus, the never-traced proxy and a
//! worker (containerd + starlightd) on loopback:
//!
//! 1. an unbounded worker pulls every corpus image (`starlight pull --wait`
//!    of v1 and v2 of each); the store's size then is the corpus's total
//!    content bytes (distinct contents, as the store counts them);
//! 2. a fresh worker with `max_store_bytes` at half that pulls the same
//!    images in turn. The first `--keep-running` images get a container
//!    (`ctr run`, until its ready line) that runs to the end; right after
//!    its start every regular file of its root filesystem is hashed inside
//!    it (`find / -xdev -type f | sha256sum`). After each pull, `starlight
//!    gc`; the store's size (the files under `content/`) is read after the
//!    collection and sampled every 50 ms during the pull, and every running
//!    container hashes its files again: any file unreadable or changed, or
//!    a store above the bound (sampled during a pull or after a
//!    collection), fails the run.
//!
//! Writes a Markdown report with the command line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::daemon::{interrupted, run_bounded, Place};
use crate::imagebuild::{load_corpus, sibling_binary, CorpusImage, REGISTRY_DIR};
use crate::sweep::cloud::Cloud;
use crate::sweep::methods::{wait_pull_complete, Order};
use crate::sweep::worker::{unique, Binaries, Worker, WorkerOptions};

/// Arguments of `starlight-bench gc-corpus`.
#[derive(Debug, clap::Args)]
pub struct GcCorpusArgs {
    /// The built corpus (`corpus build --cache DIR`).
    #[arg(long, default_value = "/var/tmp/corpus")]
    pub corpus: PathBuf,
    /// Images to pull, in order (default: the whole corpus).
    #[arg(long, value_delimiter = ',')]
    pub images: Option<Vec<String>>,
    /// How many of the first pulled images keep a container running.
    #[arg(long, default_value_t = 1)]
    pub keep_running: usize,
    /// Directory of starlight, starlightd and starlight-proxy (default:
    /// beside this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Directory for the workers' and the cloud's state.
    #[arg(long, default_value = "/var/tmp/starlight-gc-corpus")]
    pub work_dir: PathBuf,
    /// The Markdown report.
    #[arg(long, default_value = "bench/results/gc-corpus.md")]
    pub out: PathBuf,
    /// The corpus's total content bytes, measured by an earlier run's first
    /// pass (skips it).
    #[arg(long)]
    pub corpus_bytes: Option<u64>,
    /// Bound on each pull, start and hash pass, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// One pull of the bounded pass.
struct Step {
    image: String,
    /// Store bytes after the collection.
    after_gc: u64,
    /// Highest store bytes sampled during the pull (before the collection).
    peak_during_pull: u64,
    /// The collection's report (`starlight gc`).
    gc_line: String,
    /// Files checked in running containers.
    files_checked: usize,
}

/// Runs the acceptance; fails when the store ends a collection above the
/// bound or a running container lost a file.
pub fn run(args: GcCorpusArgs) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (corpus, images) = select(&args)?;
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        sibling_binary("starlight")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let bins = Binaries {
        starlightd: bin_dir.join("starlightd"),
        starlight: bin_dir.join("starlight"),
    };
    fs::create_dir_all(&args.work_dir)?;
    let work = tempfile::Builder::new()
        .prefix("gc.")
        .tempdir_in(&args.work_dir)?;
    let place = Place::host();
    let cloud = start_cloud(&place, &corpus, work.path(), &bin_dir)?;
    let proxy = cloud.proxy(Order::Never)?;
    let timeout = Duration::from_secs(args.timeout);
    // v1 and v2 of each image, image after image; the ready line of each.
    let refs: Vec<(String, String)> = images
        .iter()
        .flat_map(|i| {
            [&i.v1_starlight, &i.v2_starlight]
                .map(|tag| (cloud.reference(&i.name, tag), i.ready.clone()))
        })
        .collect();

    // Pass 1: the corpus's total content bytes.
    let opts = WorkerOptions {
        proxy: Some(&proxy.access),
        ..WorkerOptions::default()
    };
    let total = match args.corpus_bytes {
        Some(total) => total,
        None => {
            let w = Worker::start(&place, &work.path().join("unbounded"), &bins, opts)?;
            refs.iter()
                .try_for_each(|(r, _)| pull(&w, &bins, r, timeout))?;
            let total = store_bytes(w.dir());
            w.shutdown();
            total
        }
    };
    let bound = total / 2;
    eprintln!(
        "corpus: {} image versions, {total} content bytes; bound {bound}",
        refs.len()
    );

    // Pass 2: bounded.
    let opts = WorkerOptions {
        proxy: Some(&proxy.access),
        max_store_bytes: Some(bound),
        ..WorkerOptions::default()
    };
    let mut w = Worker::start(&place, &work.path().join("bounded"), &bins, opts)?;
    let mut baselines: Vec<Baseline> = Vec::new();
    let mut steps = Vec::new();
    let mut failures = Vec::new();
    for (i, (r, ready)) in refs.iter().enumerate() {
        if interrupted() {
            bail!("interrupted");
        }
        let sampler = Sampler::start(w.dir().to_path_buf());
        pull(&w, &bins, r, timeout)?;
        let peak_during_pull = sampler.stop();
        if i < args.keep_running {
            w.run_until_ready(r, Some("starlight"), ready, timeout, &interrupted)?;
            let id = w.container_ids().pop().context("no container started")?;
            let files = hash_files(&w, &id, timeout)?;
            eprintln!("{r}: container {id} runs; {} files hashed", files.len());
            baselines.push((r.clone(), id, files));
        }
        let (gc_line, after_gc, files_checked) =
            collect_and_check(&w, &bins, r, &baselines, timeout, &mut failures)?;
        if after_gc > bound {
            failures.push(format!("after {r}: store {after_gc} > bound {bound}"));
        }
        if peak_during_pull > bound {
            failures.push(format!(
                "while pulling {r}: store sampled at {peak_during_pull} > bound {bound}"
            ));
        }
        eprintln!("{r}: store {after_gc} (peak {peak_during_pull}) of {bound}; {gc_line}");
        steps.push(Step {
            image: r.clone(),
            after_gc,
            peak_during_pull,
            gc_line,
            files_checked,
        });
    }
    w.stop_containers();
    w.shutdown();
    let report = markdown(&command, total, bound, &steps, &failures);
    fs::create_dir_all(args.out.parent().unwrap_or(Path::new(".")))?;
    fs::write(&args.out, &report)?;
    print!("{report}");
    if !failures.is_empty() {
        bail!("{} failures (see {})", failures.len(), args.out.display());
    }
    Ok(())
}

/// The registry serving the corpus and the never-traced proxy, on loopback.
fn start_cloud(place: &Place, corpus: &Path, work: &Path, bin_dir: &Path) -> Result<Cloud> {
    Cloud::start(
        place,
        "127.0.0.1",
        &corpus.join(REGISTRY_DIR),
        &work.join("cloud"),
        &bin_dir.join("starlight-proxy"),
        &[Order::Never],
        2 << 20,
    )
}

/// The corpus directory and its images `args` selects, in order; an error
/// when the corpus is missing or nothing is selected.
fn select(args: &GcCorpusArgs) -> Result<(PathBuf, Vec<CorpusImage>)> {
    let corpus = fs::canonicalize(&args.corpus).with_context(|| {
        format!(
            "corpus {} (build it: starlight-bench corpus build --cache DIR)",
            args.corpus.display()
        )
    })?;
    let mut images = load_corpus(&corpus)?;
    if let Some(names) = &args.images {
        images.retain(|i| names.contains(&i.name));
        images.sort_by_key(|i| names.iter().position(|n| n == &i.name));
    }
    if images.is_empty() {
        bail!("no corpus images selected");
    }
    Ok((corpus, images))
}

/// A running container's baseline: image, container id, path -> SHA-256.
type Baseline = (String, String, BTreeMap<String, String>);

/// After pulling `image`: `starlight gc`, then the store's size, then every
/// running container hashes its files again (a file missing or changed is
/// a failure). Returns gc's first line, the store bytes, the files checked.
fn collect_and_check(
    w: &Worker,
    bins: &Binaries,
    image: &str,
    baselines: &[Baseline],
    timeout: Duration,
    failures: &mut Vec<String>,
) -> Result<(String, u64, usize)> {
    let api = w.api_socket.as_ref().context("no starlightd")?;
    let mut gc = w.place().command(&bins.starlight);
    gc.arg("gc").arg("--api").arg(api);
    let gc_line = run_bounded(&mut gc, timeout)?
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let after_gc = store_bytes(w.dir());
    let mut files_checked = 0;
    for (running, id, want) in baselines {
        let got = hash_files(w, id, timeout)?;
        files_checked += want.len();
        for (path, sha) in want {
            if got.get(path) != Some(sha) {
                failures.push(format!(
                    "after {image}: {running}'s {path} is {:?}",
                    got.get(path)
                ));
            }
        }
    }
    Ok((gc_line, after_gc, files_checked))
}

/// `starlight pull --wait`, again (at most three times) after a failure
/// such as a connection reset on a loaded machine: the acceptance is about
/// the store and the files, not about a pull's first attempt.
fn pull(w: &Worker, bins: &Binaries, image: &str, timeout: Duration) -> Result<()> {
    let mut attempt = 1;
    loop {
        match wait_pull_complete(w, bins, image, timeout) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 && !interrupted() => {
                eprintln!("{image}: pull attempt {attempt} failed, again: {e:#}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes of the files under a worker's `starlight/content`.
fn store_bytes(worker_dir: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![worker_dir.join("starlight/content")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => dirs.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Samples [`store_bytes`] every 50 ms in a thread; keeps the highest.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || loop {
            p.fetch_max(store_bytes(&dir), Ordering::Relaxed);
            if s.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// SHA-256 of every regular file of container `id`'s root filesystem, read
/// inside it: path -> hash.
fn hash_files(w: &Worker, id: &str, timeout: Duration) -> Result<BTreeMap<String, String>> {
    let exec_id = unique("hash");
    let mut cmd = w.ctr();
    cmd.args(["tasks", "exec", "--exec-id", &exec_id, id, "/bin/sh", "-c"])
        .arg("find / -xdev -type f -print0 | xargs -0 -r sha256sum");
    let out = run_bounded(&mut cmd, timeout).with_context(|| format!("hashing {id}'s files"))?;
    let mut files = BTreeMap::new();
    for line in out.lines() {
        if let Some((sha, path)) = line.split_once("  ") {
            files.insert(path.to_string(), sha.to_string());
        }
    }
    if files.is_empty() {
        bail!("no file hashed in container {id}");
    }
    Ok(files)
}

fn markdown(command: &str, total: u64, bound: u64, steps: &[Step], failures: &[String]) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let mut s = String::new();
    let _ = writeln!(s, "# GC acceptance on the corpus (issue 14)\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(
        s,
        "Corpus content (every image, distinct contents): {:.1} MB; `max_store_bytes` = {bound} ({:.1} MB).\n",
        mb(total),
        mb(bound)
    );
    let _ = writeln!(s, "| pull | image | store after gc (MB) | peak during pull (MB) | files checked in running containers | gc |");
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---|");
    for (i, st) in steps.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} | {} |",
            i + 1,
            st.image,
            mb(st.after_gc),
            mb(st.peak_during_pull),
            st.files_checked,
            st.gc_line.replace('|', "/")
        );
    }
    let highest = steps.iter().map(|s| s.after_gc).max().unwrap_or(0);
    let peak = steps.iter().map(|s| s.peak_during_pull).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "\nHighest store after a collection: {:.1} MB (bound {:.1} MB); highest sampled during a pull: {:.1} MB.\n",
        mb(highest),
        mb(bound),
        mb(peak)
    );
    if failures.is_empty() {
        let _ = writeln!(s, "Result: PASS (the store stayed under the bound while every bundle arrived and after every collection; running containers read every file back with the same SHA-256).");
    } else {
        let _ = writeln!(s, "Result: FAIL\n");
        for f in failures.iter().take(50) {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}
