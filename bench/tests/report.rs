//! The report plumbing of `starlight-bench`: `report --from` reads sweeps'
//! `runs.json` (every method of issue 11, times to header and last byte,
//! static coverage) and writes the tables; the numbers are checked against
//! values computed by hand. No root, no network.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn run(image: &str, method: &str, time: f64, header: Option<f64>, last: Option<f64>) -> Value {
    json!({
        "image": image, "method": method, "scenario": "fresh",
        "rtt_ms": 50.0, "rate_bps": 100_000_000u64, "run": 1, "ok": true,
        "error": null, "time_s": time, "pull_s": time / 2.0,
        "bytes_down": 1000, "bytes_up": 10, "daemon_cpu_s": 0.5,
        "client_cpu_s": 0.1, "peak_rss": 1_000_000,
        "header_s": header, "last_byte_s": last
    })
}

fn write_sweep(dir: &Path, runs: Vec<Value>, coverage: Value) {
    std::fs::create_dir_all(dir).unwrap();
    let doc = json!({
        "command": "starlight-bench sweep (test)",
        "started": "20261206-1700",
        "calibration": [],
        "runs": runs,
        "summary": [],
        "static_coverage": coverage,
    });
    std::fs::write(dir.join("runs.json"), doc.to_string()).unwrap();
}

fn report(from: &[&Path], out: &Path) -> std::process::Output {
    let from: Vec<String> = from.iter().map(|p| p.display().to_string()).collect();
    Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
        .arg("report")
        .arg("--from")
        .arg(from.join(","))
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn report_gives_speedups_times_and_static_coverage() {
    let dir = tempfile::tempdir().unwrap();
    // Two sweeps merged, as one per method group would be.
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write_sweep(
        &a,
        vec![
            run("x", "containerd", 10.0, None, Some(8.0)),
            run("y", "containerd", 20.0, None, Some(16.0)),
            run("x", "starlight-never", 5.0, Some(0.5), Some(9.0)),
            run("y", "starlight-never", 10.0, Some(0.7), Some(18.0)),
            run("x", "starlight-prod", 2.5, Some(0.5), Some(9.0)),
            run("y", "starlight-prod", 10.0, Some(0.7), Some(18.0)),
        ],
        json!([{
            "image": "x", "source": "trace (2 traces)", "static_files": 10,
            "static_bytes": 4_000_000u64, "needed_files": 40, "needed_bytes": 8_000_000u64,
            "covered_files": 10, "covered_bytes": 2_000_000u64
        }]),
    );
    write_sweep(
        &b,
        vec![
            run("x", "estargz-opt", 5.0, Some(1.0), None),
            run("y", "estargz-opt", 20.0, Some(1.0), None),
        ],
        Value::Null,
    );
    let out = dir.path().join("merged");
    let o = report(&[&a, &b], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    // Harmonic means of the per-image speedups over containerd:
    // never 2 and 2 -> 2; prod 4 and 2 -> 2.67; estargz-opt 2 and 1 -> 1.33.
    assert!(
        md.contains("| RTT ms | starlight-never | starlight-prod | estargz-opt |"),
        "{md}"
    );
    assert!(
        md.contains("| 50 | 2.00× (2.00–2.00) | 2.67× (2.00–4.00) | 1.33× (1.00–2.00) |"),
        "{md}"
    );
    // Mean time to header (0.5, 0.7 -> 0.60) and to last byte (9, 18 -> 13.50).
    assert!(
        md.contains("| fresh | 50 | starlight-never | 2 | 7.50 | 0.60 | 13.50 |"),
        "{md}"
    );
    // Containerd has no header; estargz-opt no last byte.
    assert!(
        md.contains("| fresh | 50 | containerd | 2 | 15.00 | - | 12.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| fresh | 50 | estargz-opt | 2 | 12.50 | 1.00 | - |"),
        "{md}"
    );
    // Static coverage: 10 of 40 files, 2 of 8 MB.
    assert!(
        md.contains("| x | trace (2 traces) | 10 | 4.00 | 40 | 10 | 8.00 | 2.00 | 25.0% | 25.0% |"),
        "{md}"
    );
    let cov = std::fs::read_to_string(out.join("static-coverage.tsv")).unwrap();
    assert_eq!(cov.lines().count(), 2, "{cov}");
    // runs.tsv keeps the old columns in place and adds header and last byte.
    let tsv = std::fs::read_to_string(out.join("runs.tsv")).unwrap();
    let header: Vec<&str> = tsv.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(header[9], "bytes_down");
    assert_eq!(&header[14..16], ["header_s", "last_byte_s"]);
    let never_x = tsv
        .lines()
        .find(|l| l.starts_with("x\tstarlight-never"))
        .unwrap();
    let cols: Vec<&str> = never_x.split('\t').collect();
    assert_eq!((cols[14], cols[15]), ("0.500", "9.000"), "{never_x}");
    let summary = std::fs::read_to_string(out.join("summary.tsv")).unwrap();
    assert!(
        summary.starts_with(
            "scenario\trtt_ms\tmethod\timages\tmean_time_s\tmean_header_s\tmean_last_byte_s"
        ),
        "{summary}"
    );
}

#[test]
fn report_refuses_unknown_methods() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_sweep(&a, vec![run("x", "teleport", 1.0, None, None)], Value::Null);
    let o = report(&[&a], &dir.path().join("out"));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs of"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sweep_refuses_unknown_methods_and_names_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
        .args(["sweep", "--methods", "containerd,teleport", "--corpus"])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for m in [
        "starlight-never",
        "starlight-prod",
        "starlight-trace",
        "estargz",
        "estargz-opt",
    ] {
        assert!(err.contains(m), "{m} missing from: {err}");
    }
}
