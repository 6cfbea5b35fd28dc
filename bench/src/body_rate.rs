//! `starlight-bench body-rate`: from the bundle header to the last payload,
//! starlightd beside `starlight fetch` of the same bundle, through the same
//! emulated link, side by side in one run.
//!
//! For each RTT a site like the sweep's comes up (link, registry, the
//! never-traced proxy, the image indexed and its bundle built once). Each
//! run then measures, in alternating order so neither always goes first:
//! - `fetch`: `starlight fetch IMAGE` (download, decompress and verify every
//!   payload into one file); its own report gives the times to header and to
//!   last byte;
//! - `daemon`: a fresh worker's `starlight pull --wait IMAGE` (every payload
//!   verified and stored, the store synced, the image recorded complete);
//!   starlightd's metrics give the times to header and to complete, its log
//!   the end of the stream (last payload stored, before the sync).
//!
//! The body is the last minus the header time, each from the same request.
//! The ratio is daemon body / fetch body (1.00: the daemon keeps up).
//!
//! Each daemon run's worker files are moved aside, not deleted, until the
//! end: on ext4 without a journal, deleting a store of thousands of files
//! just before the next run makes every file that run creates scan past the
//! freed inodes (ext4 skips inodes deleted in the last 30 s), which costs the
//! daemon seconds of CPU that no real worker pays after a fresh boot.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use starlight_bench::netem::{self, calibrate, parse_duration, parse_rate, LinkConfig};

use crate::daemon::interrupted;
use crate::imagebuild::{load_corpus, sibling_binary, CorpusImage};
use crate::sweep::methods::{
    run_one, wait_pull_complete, Bypass, Meter, Method, Order, PullMetrics, RunContext, RunResult,
    Scenario,
};
use crate::sweep::site::{self, Plan, Site};
use crate::sweep::stats;
use crate::sweep::worker::{Binaries, Worker, WorkerOptions};

/// Flags of `starlight-bench body-rate`.
#[derive(Args, Debug)]
pub struct BodyRateArgs {
    /// Corpus directory (registry storage and images.json from `corpus build`).
    #[arg(long, default_value = "/var/tmp/corpus")]
    pub corpus: PathBuf,
    /// The corpus image measured.
    #[arg(long, default_value = "redis")]
    pub image: String,
    /// Round-trip times (ms unless suffixed).
    #[arg(long, value_delimiter = ',', default_value = "0,50,150,300")]
    pub rtt: Vec<String>,
    /// Link rate.
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    /// Runs per RTT (each a fetch and a daemon pull).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the link calibration.
    #[arg(long)]
    pub skip_calibration: bool,
    /// Directory of starlight, starlightd and starlight-proxy (default:
    /// this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Directory for worker and cloud state.
    #[arg(long, default_value = "/var/tmp/starlight-bench-body")]
    pub work_dir: PathBuf,
    /// Bound on each step, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Output prefix: writes PREFIX.tsv and PREFIX.md.
    #[arg(long, default_value = "bench/results/body-rate")]
    pub out: PathBuf,
}

/// Who received the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Fetch,
    Daemon,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Fetch => "fetch",
            Who::Daemon => "daemon",
        }
    }
}

/// One measured receive.
#[derive(Debug, Clone)]
struct Sample {
    rtt_ms: u64,
    run: usize,
    who: Who,
    /// Request to header, seconds.
    header_s: f64,
    /// Request to last byte (fetch) or to complete (daemon), seconds.
    last_s: f64,
    /// Daemon: request to the end of the stream (last payload stored,
    /// before the store's sync), seconds.
    stream_end_s: Option<f64>,
    /// Wall time of the command, seconds.
    wall_s: f64,
    /// CPU seconds of starlightd (daemon) or of `starlight fetch`.
    cpu_s: f64,
}

impl Sample {
    fn body_s(&self) -> f64 {
        self.last_s - self.header_s
    }
}

/// Seconds of a `Duration`'s `Debug` text (`1.5s`, `812.3ms`, `950µs`, `12ns`).
pub fn parse_debug_duration(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("µs").or_else(|| t.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (t.strip_suffix('s')?, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Removes ANSI escape sequences (colored log output).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `time_to_end` of the last "bundle received" line of a starlightd log.
pub fn stream_end_from_log(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .map(strip_ansi)
        .filter(|l| l.contains("bundle received"))
        .find_map(|l| {
            let rest = l.split("time_to_end=").nth(1)?;
            parse_debug_duration(rest.split_whitespace().next()?)
        })
}

/// One fetch: `starlight fetch` of the image from the never-traced proxy.
fn fetch_once(
    ctx: &RunContext<'_>,
    image: &CorpusImage,
    rtt_ms: u64,
    run: usize,
) -> Result<Sample> {
    let mut r = RunResult::pending(&image.name, Method::Wget, Scenario::Fresh, None, None, run);
    run_one(ctx, image, Method::Wget, Scenario::Fresh, &mut r)?;
    Ok(Sample {
        rtt_ms,
        run,
        who: Who::Fetch,
        header_s: r.header_s.context("fetch reported no time to header")?,
        last_s: r
            .last_byte_s
            .context("fetch reported no time to last byte")?,
        stream_end_s: None,
        wall_s: r.time_s,
        cpu_s: r.client_cpu_s,
    })
}

/// One daemon pull: a fresh worker's `starlight pull --wait`.
fn daemon_once(
    ctx: &RunContext<'_>,
    image: &CorpusImage,
    rtt_ms: u64,
    run: usize,
) -> Result<Sample> {
    let proxy = ctx.cloud.proxy(Order::Never)?;
    let opts = WorkerOptions {
        proxy: Some(&proxy.access),
        ..WorkerOptions::default()
    };
    let w = Worker::start(&ctx.worker, &ctx.work_dir, ctx.bins, opts)?;
    let v2s = ctx.cloud.reference(&image.name, &image.v2_starlight);
    let m0 = PullMetrics::parse(&w.metrics()?);
    let mut r = RunResult::pending(
        &image.name,
        Method::Starlight,
        Scenario::Fresh,
        None,
        None,
        run,
    );
    let meter = Meter::start(ctx, &w.daemon_pids());
    let t0 = Instant::now();
    wait_pull_complete(&w, ctx.bins, &v2s, ctx.timeout)?;
    let wall_s = t0.elapsed().as_secs_f64();
    meter.finish(ctx, &mut r);
    let m1 = PullMetrics::parse(&w.metrics()?);
    let log = fs::read_to_string(w.dir().join("starlightd.log")).unwrap_or_default();
    w.shutdown_keeping_files(&ctx.work_dir.join("kept"))?;
    if m1.header.1 <= m0.header.1 || m1.complete.1 <= m0.complete.1 {
        bail!("starlightd's metrics show no complete pull");
    }
    Ok(Sample {
        rtt_ms,
        run,
        who: Who::Daemon,
        header_s: m1.header.0 - m0.header.0,
        last_s: m1.complete.0 - m0.complete.0,
        stream_end_s: stream_end_from_log(&log),
        wall_s,
        // containerd idles: what the daemons used is starlightd's.
        cpu_s: r.daemon_cpu_s,
    })
}

/// Brings up the site of `rtt`, with the image's bundle built once.
fn site_for(plan: &Plan<'_>, rtt: Duration, image: &CorpusImage) -> Result<Site> {
    let site = site::setup(plan, rtt, &ProgressBar::hidden(), None)?;
    {
        // The bundle of v2 (the one measured) built and cached once, at full speed.
        let _fast = Bypass::on(site.link.as_ref());
        let proxy = site.cloud.proxy(Order::Never)?;
        let v2s = site.cloud.reference(&image.name, &image.v2_starlight);
        let scratch = plan.work.join("warm-v2.bundle");
        site.cloud
            .warm(&proxy.access, &plan.bins.starlight, &v2s, None, &scratch)?;
    }
    Ok(site)
}

fn binaries(args: &BodyRateArgs, work: &Path) -> Result<(Binaries, PathBuf)> {
    let src = args.bin_dir.clone().unwrap_or_else(|| {
        sibling_binary("starlight")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let dir = work.join("bin");
    fs::create_dir_all(&dir)?;
    let mut copied = Vec::new();
    for name in ["starlight", "starlightd", "starlight-proxy"] {
        let from = src.join(name);
        if !from.exists() {
            bail!("{} is missing (cargo build --release)", from.display());
        }
        let to = dir.join(name);
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        copied.push(to);
    }
    let proxy = copied.pop().unwrap_or_default();
    let starlightd = copied.pop().unwrap_or_default();
    let starlight = copied.pop().unwrap_or_default();
    Ok((
        Binaries {
            starlightd,
            starlight,
        },
        proxy,
    ))
}

/// Runs `starlight-bench body-rate`.
pub fn run(args: BodyRateArgs) -> Result<()> {
    netem::cleanup_stale()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let rate_bps = parse_rate(&args.rate)?;
    let rtts: Vec<Duration> = args
        .rtt
        .iter()
        .map(|r| parse_duration(r).map_err(Into::into))
        .collect::<Result<_>>()?;
    let corpus_dir = fs::canonicalize(&args.corpus)
        .with_context(|| format!("corpus directory {}", args.corpus.display()))?;
    let images = load_corpus(&corpus_dir)?;
    let image = images
        .iter()
        .find(|i| i.name == args.image)
        .with_context(|| format!("image {:?} is not in the corpus", args.image))?;
    fs::create_dir_all(&args.work_dir)?;
    let work = tempfile::Builder::new()
        .prefix("body-rate.")
        .tempdir_in(&args.work_dir)?;
    let (bins, proxy_bin) = binaries(&args, work.path())?;

    let mut calibration = String::new();
    if !args.skip_calibration {
        let mut rows = Vec::new();
        for rtt in &rtts {
            rows.push(calibrate::calibrate(LinkConfig::new(*rtt, rate_bps))?);
        }
        calibration = calibrate::table(&rows);
        eprint!("{calibration}");
        if !rows.iter().all(|c| c.ok()) {
            bail!("calibration off by more than 5%: refusing to run");
        }
    }
    let methods = [Method::Wget, Method::StarlightNever];
    let plan = Plan {
        images: std::slice::from_ref(image),
        methods: &methods,
        bins: &bins,
        proxy_bin: Some(&proxy_bin),
        corpus_dir: &corpus_dir,
        work: work.path(),
        prep: crate::sweep::orders::Prep {
            warmups: 0,
            trace_runs: 0,
            window_secs: 0,
            timeout: Duration::from_secs(args.timeout),
        },
        estargz: None,
        loopback: false,
        rate_bps,
    };
    let mut samples = Vec::new();
    let result = measure(&args, &plan, image, &rtts, &mut samples);
    write(&args, &command, image, rate_bps, &calibration, &samples)?;
    result?;
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn measure(
    args: &BodyRateArgs,
    plan: &Plan<'_>,
    image: &CorpusImage,
    rtts: &[Duration],
    samples: &mut Vec<Sample>,
) -> Result<()> {
    for rtt in rtts {
        let site = site_for(plan, *rtt, image)?;
        let ctx = RunContext {
            worker: site.worker.clone(),
            work_dir: plan.work.join("workers"),
            bins: plan.bins,
            cloud: &site.cloud,
            link: site.link.as_ref(),
            timeout: Duration::from_secs(args.timeout),
            estargz: None,
        };
        let rtt_ms = rtt.as_millis() as u64;
        for run in 1..=args.runs {
            let order = if run % 2 == 1 {
                [Who::Fetch, Who::Daemon]
            } else {
                [Who::Daemon, Who::Fetch]
            };
            for who in order {
                if interrupted() {
                    return Ok(());
                }
                let s = match who {
                    Who::Fetch => fetch_once(&ctx, image, rtt_ms, run),
                    Who::Daemon => daemon_once(&ctx, image, rtt_ms, run),
                }
                .with_context(|| format!("rtt {rtt_ms} ms run {run} {}", who.name()))?;
                eprintln!(
                    "rtt {rtt_ms:>3} ms run {run} {:<6} header {:.3} s  last {:.3} s  body {:.3} s{}",
                    who.name(),
                    s.header_s,
                    s.last_s,
                    s.body_s(),
                    s.stream_end_s
                        .map(|e| format!("  (stream end {:.3} s)", e))
                        .unwrap_or_default()
                );
                samples.push(s);
            }
        }
        drop(site.cloud);
        if let Some(link) = site.link {
            link.down()?;
        }
    }
    let _ = fs::remove_dir_all(plan.work.join("workers").join("kept"));
    Ok(())
}

fn tsv(command: &str, samples: &[Sample]) -> String {
    let mut out = format!("# {command}\n");
    out.push_str("rtt_ms\trun\twho\theader_s\tlast_s\tbody_s\tstream_end_s\twall_s\tcpu_s\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}\t{:.3}\t{:.2}",
            s.rtt_ms,
            s.run,
            s.who.name(),
            s.header_s,
            s.last_s,
            s.body_s(),
            s.stream_end_s.map_or("-".into(), |e| format!("{e:.3}")),
            s.wall_s,
            s.cpu_s
        );
    }
    out
}

fn markdown(
    command: &str,
    image: &CorpusImage,
    rate_bps: u64,
    calibration: &str,
    samples: &[Sample],
) -> String {
    let mut out = format!(
        "# Body rate: starlightd beside `starlight fetch`\n\n`{command}`\n\n\
         Image {} (v2, fresh), {} Mbit/s. Body = last payload (daemon: image \
         complete, store synced) minus header, each from its own request; \
         ratio = daemon / fetch (mean of the runs).\n\n\
         | RTT ms | runs | fetch body s | daemon body s | ratio | daemon stream end - header s | fetch CPU s | daemon CPU s |\n\
         |---|---|---|---|---|---|---|---|\n",
        image.name,
        rate_bps / 1_000_000
    );
    let mut rtts: Vec<u64> = samples.iter().map(|s| s.rtt_ms).collect();
    rtts.dedup();
    for rtt in rtts {
        let of = |who: Who| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| s.rtt_ms == rtt && s.who == who)
                .collect()
        };
        let (f, d) = (of(Who::Fetch), of(Who::Daemon));
        let body = |v: &[&Sample]| stats::mean(&v.iter().map(|s| s.body_s()).collect::<Vec<_>>());
        let cpu = |v: &[&Sample]| stats::mean(&v.iter().map(|s| s.cpu_s).collect::<Vec<_>>());
        let stream: Vec<f64> = d
            .iter()
            .filter_map(|s| s.stream_end_s.map(|e| e - s.header_s))
            .collect();
        let _ = writeln!(
            out,
            "| {rtt} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            f.len().min(d.len()),
            body(&f),
            body(&d),
            body(&d) / body(&f),
            stats::mean(&stream),
            cpu(&f),
            cpu(&d)
        );
    }
    if !calibration.is_empty() {
        let _ = write!(out, "\nLink calibration:\n\n```\n{calibration}```\n");
    }
    out
}

fn write(
    args: &BodyRateArgs,
    command: &str,
    image: &CorpusImage,
    rate_bps: u64,
    calibration: &str,
    samples: &[Sample],
) -> Result<()> {
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir)?;
    }
    let md = markdown(command, image, rate_bps, calibration, samples);
    fs::write(args.out.with_extension("tsv"), tsv(command, samples))?;
    fs::write(args.out.with_extension("md"), &md)?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_and_log_lines_are_read() {
        assert_eq!(parse_debug_duration("1.5s"), Some(1.5));
        assert!((parse_debug_duration("812.5ms").unwrap() - 0.8125).abs() < 1e-12);
        assert!((parse_debug_duration("950µs").unwrap() - 0.00095).abs() < 1e-12);
        assert_eq!(parse_debug_duration("fast"), None);
        let log = "2026 INFO starlight_worker::receiver::body: bundle received \
                   image=x stored=3 time_to_end=2.25s\n\
                   \u{1b}[2m2026\u{1b}[0m INFO bundle received \u{1b}[3mtime_to_end\u{1b}[0m\u{1b}[2m=\u{1b}[0m4.5s\n";
        assert_eq!(stream_end_from_log(log), Some(4.5));
        assert_eq!(stream_end_from_log("nothing here"), None);
    }
}
