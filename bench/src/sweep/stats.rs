//! Summary statistics of a sweep, as in the paper's §5.2: per image mean
//! times, normalized times (to containerd's fresh time at the lowest RTT)
//! aggregated with the geometric mean, speedups over containerd aggregated
//! with the harmonic mean, and 95% confidence intervals (Student's t over
//! images).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sweep::methods::{Method, RunResult, Scenario};

/// Two-sided 95% quantiles of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The t quantile for `df` degrees of freedom (normal beyond 30).
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => 1.96,
    }
}

/// Arithmetic mean.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (0 for fewer than two values).
pub fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Mean with its 95% confidence interval `(mean, low, high)`; the interval
/// collapses to the mean for a single value.
pub fn mean_ci(v: &[f64]) -> (f64, f64, f64) {
    let m = mean(v);
    if v.len() < 2 {
        return (m, m, m);
    }
    let half = t975(v.len() - 1) * stddev(v) / (v.len() as f64).sqrt();
    (m, m - half, m + half)
}

/// Geometric mean with a 95% interval (computed on logarithms).
pub fn geomean_ci(v: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = v.iter().map(|x| x.ln()).collect();
    let (m, lo, hi) = mean_ci(&logs);
    (m.exp(), lo.exp(), hi.exp())
}

/// Harmonic mean with a 95% interval (computed on reciprocals).
pub fn harmonic_ci(v: &[f64]) -> (f64, f64, f64) {
    let recips: Vec<f64> = v.iter().map(|x| 1.0 / x).collect();
    let (m, lo, hi) = mean_ci(&recips);
    // The reciprocal swaps the bounds; a non-positive bound means unbounded.
    let inv = |x: f64| if x > 0.0 { 1.0 / x } else { f64::INFINITY };
    (inv(m), inv(hi), inv(lo))
}

/// Key of a cell of the grid: scenario, RTT (ms, rounded), method.
pub type CellKey = (Scenario, i64, Method);

/// Mean times per image for each cell.
pub fn image_means(runs: &[RunResult]) -> BTreeMap<CellKey, BTreeMap<String, Vec<f64>>> {
    let mut cells: BTreeMap<CellKey, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.ok) {
        let key = (r.scenario, rtt_key(r.rtt_ms), r.method);
        cells
            .entry(key)
            .or_default()
            .entry(r.image.clone())
            .or_default()
            .push(r.time_s);
    }
    cells
}

/// RTT in whole milliseconds (0 on loopback).
pub fn rtt_key(rtt: Option<f64>) -> i64 {
    rtt.map_or(0, |r| r.round() as i64)
}

/// One row of the summary table.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// Scenario.
    pub scenario: Scenario,
    /// RTT in ms.
    pub rtt_ms: i64,
    /// Method.
    pub method: Method,
    /// Images with results in this cell and the baseline.
    pub images: usize,
    /// Geometric mean of normalized times, with its 95% interval.
    pub norm_time: (f64, f64, f64),
    /// Harmonic mean of speedups over containerd (same scenario and RTT),
    /// with its 95% interval; `None` where containerd has no result.
    pub speedup: Option<(f64, f64, f64)>,
    /// Smallest and largest per-image speedup.
    pub speedup_range: Option<(f64, f64)>,
    /// Mean seconds to ready across images (arithmetic).
    pub mean_time_s: f64,
    /// Mean seconds to header across images with one (per-image means).
    pub mean_header_s: Option<f64>,
    /// Mean seconds to the last byte across images with one.
    pub mean_last_byte_s: Option<f64>,
}

/// Mean over images of each image's mean of `f` in a cell (runs without a
/// value are left out); `None` when no run has one.
fn image_mean_of(
    runs: &[RunResult],
    key: CellKey,
    f: fn(&RunResult) -> Option<f64>,
) -> Option<f64> {
    let mut per_image: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| r.ok && (r.scenario, rtt_key(r.rtt_ms), r.method) == key)
    {
        if let Some(v) = f(r) {
            per_image.entry(&r.image).or_default().push(v);
        }
    }
    let means: Vec<f64> = per_image.values().map(|v| mean(v)).collect();
    (!means.is_empty()).then(|| mean(&means))
}

/// The summary: normalization baseline is containerd's fresh mean at the
/// lowest RTT of each image.
pub fn summarize(runs: &[RunResult]) -> Vec<SummaryRow> {
    let cells = image_means(runs);
    let Some(min_rtt) = runs.iter().map(|r| rtt_key(r.rtt_ms)).min() else {
        return Vec::new();
    };
    let baseline: BTreeMap<String, f64> = cells
        .get(&(Scenario::Fresh, min_rtt, Method::Containerd))
        .map(|m| m.iter().map(|(k, v)| (k.clone(), mean(v))).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for (&(scenario, rtt, method), per_image) in &cells {
        let means: BTreeMap<&String, f64> = per_image.iter().map(|(k, v)| (k, mean(v))).collect();
        let norm: Vec<f64> = means
            .iter()
            .filter_map(|(k, m)| baseline.get(*k).map(|b| m / b))
            .collect();
        let reference = cells.get(&(scenario, rtt, Method::Containerd));
        let speedups: Vec<f64> = reference
            .map(|refs| {
                means
                    .iter()
                    .filter_map(|(k, m)| refs.get(*k).map(|r| mean(r) / m))
                    .collect()
            })
            .unwrap_or_default();
        let range = (!speedups.is_empty()).then(|| {
            (
                speedups.iter().copied().fold(f64::INFINITY, f64::min),
                speedups.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        });
        rows.push(SummaryRow {
            scenario,
            rtt_ms: rtt,
            method,
            images: norm.len().max(speedups.len()),
            norm_time: if norm.is_empty() {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                geomean_ci(&norm)
            },
            speedup: (!speedups.is_empty()).then(|| harmonic_ci(&speedups)),
            speedup_range: range,
            mean_time_s: mean(&means.values().copied().collect::<Vec<_>>()),
            mean_header_s: image_mean_of(runs, (scenario, rtt, method), |r| r.header_s),
            mean_last_byte_s: image_mean_of(runs, (scenario, rtt, method), |r| r.last_byte_s),
        });
    }
    rows
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(image: &str, method: Method, scenario: Scenario, rtt: f64, t: f64) -> RunResult {
        RunResult {
            image: image.into(),
            method,
            scenario,
            rtt_ms: Some(rtt),
            rate_bps: Some(100_000_000),
            run: 1,
            ok: true,
            error: None,
            time_s: t,
            pull_s: t,
            bytes_down: None,
            bytes_up: None,
            daemon_cpu_s: 0.0,
            client_cpu_s: 0.0,
            peak_rss: 0,
            header_s: None,
            last_byte_s: None,
        }
    }

    #[test]
    fn means_and_intervals() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert!((stddev(&[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-12);
        let (m, lo, hi) = mean_ci(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((hi - m - 4.303 / 3f64.sqrt()).abs() < 1e-9 && (m - lo - (hi - m)).abs() < 1e-12);
        let (g, _, _) = geomean_ci(&[1.0, 4.0]);
        assert!((g - 2.0).abs() < 1e-12);
        let (h, lo, hi) = harmonic_ci(&[1.0, 3.0]);
        assert!((h - 1.5).abs() < 1e-12);
        assert!(lo <= h && h <= hi);
        assert_eq!(mean_ci(&[5.0]), (5.0, 5.0, 5.0));
        assert_eq!(t975(2), 4.303);
        assert_eq!(t975(100), 1.96);
    }

    #[test]
    fn summary_normalizes_to_containerd_fresh_at_the_lowest_rtt() {
        let runs = vec![
            run("a", Method::Containerd, Scenario::Fresh, 0.0, 10.0),
            run("a", Method::Containerd, Scenario::Fresh, 50.0, 20.0),
            run("a", Method::Starlight, Scenario::Fresh, 50.0, 5.0),
            run("b", Method::Containerd, Scenario::Fresh, 0.0, 4.0),
            run("b", Method::Containerd, Scenario::Fresh, 50.0, 8.0),
            run("b", Method::Starlight, Scenario::Fresh, 50.0, 2.0),
        ];
        let rows = summarize(&runs);
        let sl = rows
            .iter()
            .find(|r| r.method == Method::Starlight && r.rtt_ms == 50)
            .unwrap();
        assert_eq!(sl.images, 2);
        assert!((sl.norm_time.0 - 0.5).abs() < 1e-12);
        assert!((sl.speedup.unwrap().0 - 4.0).abs() < 1e-12);
        let cd = rows
            .iter()
            .find(|r| r.method == Method::Containerd && r.rtt_ms == 50)
            .unwrap();
        assert!((cd.norm_time.0 - 2.0).abs() < 1e-12);
        assert!((cd.speedup.unwrap().0 - 1.0).abs() < 1e-12);
    }
}
