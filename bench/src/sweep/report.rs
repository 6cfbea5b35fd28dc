//! Writing a sweep's results: every run as TSV and JSON, the summary table
//! (Markdown and TSV) and per-image means.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::sweep::methods::{Method, RunResult, Scenario};
use crate::sweep::stats::{image_means, mean, stddev, SummaryRow};

/// Header of `runs.tsv`.
pub const RUNS_HEADER: &str = "image\tmethod\tscenario\trtt_ms\trate_bps\trun\tok\ttime_s\tpull_s\tbytes_down\tbytes_up\tdaemon_cpu_s\tclient_cpu_s\tpeak_rss_bytes\theader_s\tlast_byte_s\terror";

/// One TSV line of a run.
pub fn run_line(r: &RunResult) -> String {
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let secs = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{:.2}\t{:.2}\t{}\t{}\t{}\t{}",
        r.image,
        r.method,
        r.scenario,
        r.rtt_ms.map_or(String::new(), |v| format!("{v}")),
        opt(r.rate_bps),
        r.run,
        r.ok,
        r.time_s,
        r.pull_s,
        opt(r.bytes_down),
        opt(r.bytes_up),
        r.daemon_cpu_s,
        r.client_cpu_s,
        r.peak_rss,
        secs(r.header_s),
        secs(r.last_byte_s),
        r.error
            .as_deref()
            .unwrap_or("")
            .replace(['\t', '\n'], " ")
            .chars()
            .take(300)
            .collect::<String>()
    )
}

/// The runs as TSV (first line: `# COMMAND`).
pub fn runs_tsv(command: &str, runs: &[RunResult]) -> String {
    let mut out = format!("# {command}\n{RUNS_HEADER}\n");
    for r in runs {
        out.push_str(&run_line(r));
        out.push('\n');
    }
    out
}

fn fmt_ci(v: (f64, f64, f64)) -> String {
    if v.0.is_nan() {
        return "-".into();
    }
    if (v.1 - v.2).abs() < 1e-12 {
        return format!("{:.2}", v.0);
    }
    format!("{:.2} [{:.2}, {:.2}]", v.0, v.1, v.2)
}

/// The line printed as each run ends.
pub fn progress_line(r: &RunResult) -> String {
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    format!(
        "{:>4}ms run {} {:<10} {:<7} {:<15} {}",
        r.rtt_ms.map_or(0, |v| v.round() as i64),
        r.run,
        r.image,
        r.scenario.name(),
        r.method.name(),
        if r.ok {
            format!(
                "ready {:>7.2} s  header {} s  last byte {} s  ({:.1} MB down)",
                r.time_s,
                secs(r.header_s),
                secs(r.last_byte_s),
                r.bytes_down.unwrap_or(0) as f64 / 1e6
            )
        } else {
            format!(
                "FAILED: {}",
                r.error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            )
        }
    )
}

/// Per RTT (rows) and method (columns): the harmonic mean over images of
/// the speedup of time to ready over containerd, fresh scenario, with the
/// per-image range.
pub fn speedup_markdown(rows: &[SummaryRow]) -> String {
    let fresh: Vec<&SummaryRow> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Fresh && r.method != Method::Containerd)
        .collect();
    let mut methods: Vec<Method> = fresh.iter().map(|r| r.method).collect();
    methods.sort();
    methods.dedup();
    let mut rtts: Vec<i64> = fresh.iter().map(|r| r.rtt_ms).collect();
    rtts.sort();
    rtts.dedup();
    let mut out = String::from("| RTT ms |");
    for m in &methods {
        let _ = write!(out, " {m} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(methods.len()));
    out.push('\n');
    for rtt in rtts {
        let _ = write!(out, "| {rtt} |");
        for m in &methods {
            let cell = fresh
                .iter()
                .find(|r| r.rtt_ms == rtt && r.method == *m)
                .and_then(|r| r.speedup.map(|s| (s.0, r.speedup_range)));
            match cell {
                Some((s, Some((lo, hi)))) => {
                    let _ = write!(out, " {s:.2}× ({lo:.2}–{hi:.2}) |");
                }
                Some((s, None)) => {
                    let _ = write!(out, " {s:.2}× |");
                }
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The summary table in Markdown.
pub fn summary_markdown(rows: &[SummaryRow]) -> String {
    let mut out = String::from(
        "| scenario | RTT ms | method | images | mean time to ready s | mean time to header s | mean time to last byte s | normalized time (geo. mean [95% CI]) | speedup over containerd (harm. mean [95% CI]) | speedup min–max |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.rtt_ms,
            r.method,
            r.images,
            r.mean_time_s,
            secs(r.mean_header_s),
            secs(r.mean_last_byte_s),
            fmt_ci(r.norm_time),
            r.speedup.map_or("-".into(), fmt_ci),
            r.speedup_range
                .map_or("-".into(), |(a, b)| format!("{a:.2}–{b:.2}")),
        );
    }
    out
}

/// The summary table as TSV.
pub fn summary_tsv(rows: &[SummaryRow]) -> String {
    let mut out = String::from("scenario\trtt_ms\tmethod\timages\tmean_time_s\tmean_header_s\tmean_last_byte_s\tnorm_gmean\tnorm_lo\tnorm_hi\tspeedup_hmean\tspeedup_lo\tspeedup_hi\tspeedup_min\tspeedup_max\n");
    for r in rows {
        let (s, slo, shi) = r.speedup.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let (mn, mx) = r.speedup_range.unwrap_or((f64::NAN, f64::NAN));
        let secs = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{:.3}\t{}\t{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}",
            r.scenario,
            r.rtt_ms,
            r.method,
            r.images,
            r.mean_time_s,
            secs(r.mean_header_s),
            secs(r.mean_last_byte_s),
            r.norm_time.0,
            r.norm_time.1,
            r.norm_time.2,
            s,
            slo,
            shi,
            mn,
            mx
        );
    }
    out
}

/// Per image, cell: mean ± sd seconds and run count, as Markdown.
pub fn per_image_markdown(runs: &[RunResult]) -> String {
    let mut out = String::from("| image | scenario | RTT ms | method | runs ok | time to ready s (mean ± sd) | time to header s | time to last byte s | MB down (mean) | daemon CPU s | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let cells = image_means(runs);
    for ((scenario, rtt, method), images) in &cells {
        for (image, times) in images {
            let matching: Vec<&RunResult> = runs
                .iter()
                .filter(|r| {
                    r.ok && &r.image == image
                        && r.scenario == *scenario
                        && r.method == *method
                        && crate::sweep::stats::rtt_key(r.rtt_ms) == *rtt
                })
                .collect();
            let mb: Vec<f64> = matching
                .iter()
                .filter_map(|r| r.bytes_down.map(|b| b as f64 / 1e6))
                .collect();
            let cpu: Vec<f64> = matching.iter().map(|r| r.daemon_cpu_s).collect();
            let rss: Vec<f64> = matching.iter().map(|r| r.peak_rss as f64 / 1e6).collect();
            let opt_mean = |f: fn(&RunResult) -> Option<f64>| {
                let v: Vec<f64> = matching.iter().filter_map(|r| f(r)).collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}", mean(&v))
                }
            };
            let _ = writeln!(
                out,
                "| {image} | {scenario} | {rtt} | {method} | {} | {:.2} ± {:.2} | {} | {} | {} | {:.2} | {:.0} |",
                times.len(),
                mean(times),
                stddev(times),
                opt_mean(|r| r.header_s),
                opt_mean(|r| r.last_byte_s),
                if mb.is_empty() { "-".into() } else { format!("{:.1}", mean(&mb)) },
                mean(&cpu),
                mean(&rss),
            );
        }
    }
    let failed: Vec<&RunResult> = runs.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nFailed runs: {}", failed.len());
        for r in failed {
            let _ = writeln!(
                out,
                "- {} {} {} rtt {:?} run {}: {}",
                r.image,
                r.method,
                r.scenario,
                r.rtt_ms,
                r.run,
                r.error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
    }
    out
}

/// The JSON document of a sweep.
#[derive(Serialize)]
pub struct SweepJson<'a, C: Serialize> {
    /// The command line.
    pub command: &'a str,
    /// Start time (RFC 3339, UTC).
    pub started: &'a str,
    /// The calibration results.
    pub calibration: &'a C,
    /// Every run.
    pub runs: &'a [RunResult],
    /// The summary.
    pub summary: &'a [SummaryRow],
    /// Static coverage per image (sweeps with a traced order).
    pub static_coverage: &'a [crate::sweep::coverage::Coverage],
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
