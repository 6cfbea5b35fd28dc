//! `starlight-bench sweep`: provisioning time over images × methods ×
//! scenarios × emulated links × runs (paper §5.2).
//!
//! Topology: the worker (containerd, starlightd, ctr, starlight) in the
//! worker network namespace of an emulated link ([`starlight_bench::netem`]),
//! the registry and the proxy in the cloud namespace. Each link setting is
//! calibrated before the sweep (it refuses to run if off by more than 5%).
//! Every run gets a fresh containerd and starlightd. With `--loopback`,
//! everything runs in the host namespace on 127.0.0.1 (no emulation).

pub mod cloud;
pub mod coverage;
pub mod estargz;
pub mod gc_corpus;
pub mod methods;
pub mod orders;
pub mod plot;
pub mod report;
pub mod site;
pub mod stats;
pub mod worker;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use starlight_bench::netem::{self, calibrate, parse_duration, parse_rate, LinkConfig};

use crate::daemon::{interrupted, INTERRUPTED};
use crate::imagebuild::{load_corpus, sibling_binary};
use coverage::Coverage;
use methods::{run_one, Method, RunContext, RunResult, Scenario};
use worker::Binaries;

/// Flags of `starlight-bench sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Corpus directory (registry storage and images.json from `corpus build`).
    #[arg(long, default_value = "target/bench-corpus")]
    pub corpus: PathBuf,
    /// Images (comma-separated); all of the corpus by default.
    #[arg(long, value_delimiter = ',')]
    pub images: Option<Vec<String>>,
    /// Methods: containerd, starlight-never, starlight-rpull (the
    /// containerd-native pull: `starlight rpull`, remote snapshots),
    /// starlight-prod, starlight-trace, wget, estargz, estargz-opt (and
    /// starlight, the same as starlight-never).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "containerd,starlight-never,starlight-prod,starlight-trace,wget"
    )]
    pub methods: Vec<String>,
    /// Scenarios: fresh, update.
    #[arg(long, value_delimiter = ',', default_value = "fresh,update")]
    pub scenarios: Vec<String>,
    /// Round-trip times (ms unless suffixed).
    #[arg(long, value_delimiter = ',', default_value = "0,50,150")]
    pub rtt: Vec<String>,
    /// Link rate, e.g. 100mbit.
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    /// Runs per cell.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Output directory (default: bench/results/sweep-<UTC date and time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No emulated link: everything on 127.0.0.1 in the host namespace.
    #[arg(long)]
    pub loopback: bool,
    /// Skip the link calibration (results are marked uncalibrated).
    #[arg(long)]
    pub skip_calibration: bool,
    /// Directory of the starlight, starlight-proxy and starlightd binaries
    /// (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Directory for worker and cloud state during the sweep.
    #[arg(long, default_value = "/var/tmp/starlight-bench")]
    pub work_dir: PathBuf,
    /// Bound on each step of a run (pull, ready line), seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Warm-up starts (other workers, production traces on) before the
    /// starlight-prod runs of each image and RTT.
    #[arg(long, default_value_t = 2)]
    pub warmups: u32,
    /// `starlight trace --runs` before the starlight-trace runs.
    #[arg(long, default_value_t = 2)]
    pub trace_runs: u32,
    /// `[traces] window_secs` of the warm-up workers.
    #[arg(long, default_value_t = 10)]
    pub prod_window: u64,
    /// Directory of containerd-stargz-grpc and ctr-remote
    /// (bench/estargz/build.sh; default: target/estargz, else PATH).
    #[arg(long)]
    pub estargz_dir: Option<PathBuf>,
}

/// Installs the interrupt handling: SIGINT, SIGTERM and SIGHUP set
/// [`INTERRUPTED`]; every wait gives up, and the sweep unwinds, stopping
/// and removing everything it started.
fn install_signals() -> Result<()> {
    netem::block_signals()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            while let Ok(sig) = netem::wait_for_signal() {
                tracing::warn!(signal = sig, "interrupted: stopping everything started");
                INTERRUPTED.store(true, Ordering::Relaxed);
            }
        })?;
    Ok(())
}

fn utc_stamp() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    out.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "now".into())
}

fn copy_bin(from: &Path, to_dir: &Path, name: &str, required: bool) -> Result<Option<PathBuf>> {
    let src = from.join(name);
    if !src.exists() {
        if required {
            bail!(
                "{} is missing (cargo build --release --workspace)",
                src.display()
            );
        }
        return Ok(None);
    }
    let dest = to_dir.join(name);
    fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
    Ok(Some(dest))
}

/// Runs the sweep.
pub fn run(args: SweepArgs) -> Result<()> {
    install_signals()?;
    netem::cleanup_stale()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = utc_stamp();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/sweep-{started}")));
    fs::create_dir_all(&out)?;
    fs::write(out.join("command.txt"), format!("{command}\n"))?;

    let methods = args
        .methods
        .iter()
        .map(|m| Method::parse(m))
        .collect::<Result<Vec<_>>>()?;
    let skipped: Vec<String> = Vec::new();
    let estargz_tools = if methods.iter().any(|m| m.is_estargz()) {
        let default = PathBuf::from("target/estargz");
        let dir = args
            .estargz_dir
            .clone()
            .or_else(|| default.is_dir().then_some(default));
        Some(estargz::Tools::find(dir.as_deref())?)
    } else {
        None
    };
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let rate_bps = parse_rate(&args.rate)?;
    let rtts: Vec<Duration> = if args.loopback {
        vec![Duration::ZERO]
    } else {
        args.rtt
            .iter()
            .map(|r| parse_duration(r).map_err(Into::into))
            .collect::<Result<_>>()?
    };

    let corpus_dir = fs::canonicalize(&args.corpus)
        .with_context(|| format!("corpus directory {}", args.corpus.display()))?;
    let mut images = load_corpus(&corpus_dir)?;
    if let Some(names) = &args.images {
        for n in names {
            if !images.iter().any(|i| &i.name == n) {
                bail!(
                    "image {n:?} is not in {}",
                    corpus_dir.join("images.json").display()
                );
            }
        }
        images.retain(|i| names.contains(&i.name));
        images.sort_by_key(|i| names.iter().position(|n| n == &i.name));
    }
    if images.is_empty() {
        bail!("no images selected");
    }

    // Binaries are copied so that rebuilds during the sweep do not change them.
    fs::create_dir_all(&args.work_dir)?;
    let work = tempfile::Builder::new()
        .prefix("sweep.")
        .tempdir_in(&args.work_dir)?;
    let bin_src = args.bin_dir.clone().unwrap_or_else(|| {
        sibling_binary("starlight")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let bin_dir = work.path().join("bin");
    fs::create_dir_all(&bin_dir)?;
    let needs_proxy = methods.iter().any(|m| m.order().is_some());
    let starlight = copy_bin(&bin_src, &bin_dir, "starlight", needs_proxy)?;
    let proxy_bin = copy_bin(&bin_src, &bin_dir, "starlight-proxy", needs_proxy)?;
    let starlightd = copy_bin(
        &bin_src,
        &bin_dir,
        "starlightd",
        methods
            .iter()
            .any(|m| m.order().is_some() && *m != Method::Wget),
    )?;
    let bins = Binaries {
        starlightd: starlightd.unwrap_or_default(),
        starlight: starlight.unwrap_or_default(),
    };

    // Calibration of every link setting first.
    let mut calibrations = Vec::new();
    if !args.loopback && !args.skip_calibration {
        for rtt in &rtts {
            if interrupted() {
                bail!("interrupted");
            }
            let config = LinkConfig::new(*rtt, rate_bps);
            eprintln!("calibrating the link: RTT {rtt:?}, {} bit/s", rate_bps);
            calibrations.push(calibrate::calibrate(config)?);
        }
        let table = calibrate::table(&calibrations);
        eprint!("{table}");
        report::write(&out, "calibration.txt", &table)?;
        report::write(
            &out,
            "calibration.json",
            &serde_json::to_string_pretty(&calibrations)?,
        )?;
        if !calibrations.iter().all(|c| c.ok()) {
            bail!(
                "calibration off by more than 5%: refusing to run (see {})",
                out.display()
            );
        }
    }

    let total = rtts.len() * args.runs * images.len() * scenarios.len() * methods.len();
    let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} runs, ETA {eta_precise} {msg}",
        )?
        .progress_chars("=> "),
    );
    let plan = site::Plan {
        images: &images,
        methods: &methods,
        bins: &bins,
        proxy_bin: proxy_bin.as_deref(),
        corpus_dir: &corpus_dir,
        work: work.path(),
        prep: orders::Prep {
            warmups: args.warmups,
            trace_runs: args.trace_runs,
            window_secs: args.prod_window,
            timeout: Duration::from_secs(args.timeout),
        },
        estargz: estargz_tools.as_ref(),
        loopback: args.loopback,
        rate_bps,
    };
    let mut results: Vec<RunResult> = Vec::new();
    let mut coverage: Vec<Coverage> = Vec::new();
    let outcome = sweep_links(
        &args,
        &plan,
        &rtts,
        &scenarios,
        &pb,
        &mut results,
        &mut coverage,
        &out,
        &command,
    );
    pb.finish_and_clear();
    let rows = stats::summarize(&results);
    write_outputs(
        &out,
        &command,
        &started,
        &calibrations,
        &results,
        &rows,
        &coverage,
        &skipped,
    )?;
    outcome?;
    if interrupted() {
        bail!("interrupted: partial results in {}", out.display());
    }
    println!("{}", report::summary_markdown(&rows));
    println!("results: {}", out.display());
    Ok(())
}

/// The proxy's QUIC send window for a link: twice its bandwidth-delay
/// product, at least 2 MiB (see [`cloud::Cloud::start`]).
pub fn proxy_send_window(rtt: Duration, rate_bps: u64) -> u64 {
    let bdp = (rate_bps as f64 / 8.0 * rtt.as_secs_f64()) as u64;
    (2 * bdp).max(2 << 20)
}

/// Prints a line above the progress bar, or on stderr when there is no
/// bar (not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

#[allow(clippy::too_many_arguments)]
fn sweep_links(
    args: &SweepArgs,
    plan: &site::Plan<'_>,
    rtts: &[Duration],
    scenarios: &[Scenario],
    pb: &ProgressBar,
    results: &mut Vec<RunResult>,
    coverage: &mut Vec<Coverage>,
    out: &Path,
    command: &str,
) -> Result<()> {
    // One link and cloud per RTT, all up for the whole sweep (idle links
    // cost nothing), so the grid runs run-major: an interrupted sweep has
    // every RTT measured the same number of times, give or take one.
    let mut sites = Vec::new();
    for rtt in rtts {
        if interrupted() {
            return Ok(());
        }
        let first = sites.is_empty();
        let site = site::setup(plan, *rtt, pb, first.then_some(&mut *coverage))?;
        if first && !coverage.is_empty() {
            let _ = report::write(out, "static-coverage.tsv", &coverage::tsv(coverage));
        }
        sites.push(site);
    }
    for run in 1..=args.runs {
        for site in &sites {
            let ctx = RunContext {
                worker: site.worker.clone(),
                work_dir: plan.work.join("workers"),
                bins: plan.bins,
                cloud: &site.cloud,
                link: site.link.as_ref(),
                timeout: Duration::from_secs(args.timeout),
                estargz: plan.estargz,
            };
            for image in plan.images {
                for scenario in scenarios {
                    for method in plan.methods {
                        if interrupted() {
                            break;
                        }
                        let rtt_ms = site.rtt.as_millis();
                        pb.set_message(format!(
                            "rtt {rtt_ms}ms run {run} {} {scenario} {method}",
                            image.name
                        ));
                        let mut result = RunResult::pending(
                            &image.name,
                            *method,
                            *scenario,
                            site.link.as_ref().map(|_| site.rtt.as_secs_f64() * 1e3),
                            site.link.as_ref().map(|_| plan.rate_bps),
                            run,
                        );
                        if let Err(e) = run_one(&ctx, image, *method, *scenario, &mut result) {
                            result.ok = false;
                            result.error = Some(format!("{e:#}"));
                        }
                        say(pb, report::progress_line(&result));
                        results.push(result);
                        pb.inc(1);
                        // Keep partial results on disk as the sweep goes.
                        let _ = report::write(out, "runs.tsv", &report::runs_tsv(command, results));
                    }
                }
            }
        }
    }
    for site in sites {
        drop(site.cloud);
        if let Some(link) = site.link {
            link.down()?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_outputs<C: serde::Serialize>(
    out: &Path,
    command: &str,
    started: &str,
    calibrations: &[C],
    results: &[RunResult],
    rows: &[stats::SummaryRow],
    coverage: &[Coverage],
    skipped: &[String],
) -> Result<()> {
    report::write(out, "runs.tsv", &report::runs_tsv(command, results))?;
    let json = report::SweepJson {
        command,
        started,
        calibration: &calibrations,
        runs: results,
        summary: rows,
        static_coverage: coverage,
    };
    report::write(
        out,
        "runs.json",
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    report::write(out, "summary.tsv", &report::summary_tsv(rows))?;
    let mut md =
        format!("# Provisioning sweep\n\nCommand: `{command}`\n\nStarted (UTC): {started}\n\n");
    for s in skipped {
        md.push_str(&format!("Skipped method {s}\n\n"));
    }
    md.push_str("## Speedup over containerd (fresh, harmonic mean over images)\n\n");
    md.push_str(&report::speedup_markdown(rows));
    md.push_str("\n## Summary\n\n");
    md.push_str(&report::summary_markdown(rows));
    md.push_str("\n## Per image\n\n");
    md.push_str(&report::per_image_markdown(results));
    if !coverage.is_empty() {
        md.push_str("\n## Static coverage\n\nPer image, the files (and bytes) the traces opened that the static start-up order (never traced) already puts first.\n\n");
        md.push_str(&coverage::markdown(coverage));
        report::write(out, "static-coverage.tsv", &coverage::tsv(coverage))?;
    }
    report::write(out, "summary.md", &md)?;
    if results.iter().any(|r| r.ok) {
        if let Err(e) = plot::write_all(out, results, rows) {
            tracing::warn!(error = %e, "plots not written");
        }
    }
    Ok(())
}

/// Flags of `starlight-bench report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Sweep result directories (each with runs.json) to merge.
    #[arg(long, value_delimiter = ',', required = true)]
    pub from: Vec<PathBuf>,
    /// Output directory for the merged runs, summary and plots.
    #[arg(long)]
    pub out: PathBuf,
}

/// Merges the runs of several sweeps (for example one per method, run at
/// different times) and writes the tables and plots of the union.
pub fn report(args: ReportArgs) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut runs: Vec<RunResult> = Vec::new();
    let mut coverage: Vec<Coverage> = Vec::new();
    let mut calibrations = Vec::new();
    let mut commands = Vec::new();
    for dir in &args.from {
        let path = dir.join("runs.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let part: Vec<RunResult> = serde_json::from_value(doc["runs"].clone())
            .with_context(|| format!("runs of {}", path.display()))?;
        runs.extend(part);
        if let Some(c) = doc.get("static_coverage").filter(|c| !c.is_null()) {
            let part: Vec<Coverage> = serde_json::from_value(c.clone())
                .with_context(|| format!("static coverage of {}", path.display()))?;
            for row in part {
                coverage.retain(|r| r.image != row.image);
                coverage.push(row);
            }
        }
        calibrations.push(serde_json::json!({
            "sweep": dir.display().to_string(),
            "command": doc["command"].clone(),
            "calibration": doc["calibration"].clone(),
        }));
        commands.push(doc["command"].as_str().unwrap_or("").to_string());
    }
    let rows = stats::summarize(&runs);
    let full = format!("{command}  (merging: {})", commands.join(" ; "));
    write_outputs(
        &args.out,
        &full,
        &utc_stamp(),
        &calibrations,
        &runs,
        &rows,
        &coverage,
        &[],
    )?;
    report::write(
        &args.out,
        "command.txt",
        &format!("{}\n", commands.join("\n") + "\n" + &command),
    )?;
    println!("{}", report::summary_markdown(&rows));
    println!("results: {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_window_covers_twice_the_bdp() {
        let mbit = 1_000_000;
        // 100 Mbit/s × 150 ms = 1.875 MB in flight.
        assert_eq!(
            proxy_send_window(Duration::from_millis(150), 100 * mbit),
            3_750_000
        );
        assert_eq!(proxy_send_window(Duration::ZERO, 100 * mbit), 2 << 20);
    }
}
