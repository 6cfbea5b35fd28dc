//! The transport under hard links, end to end: `starlight-bench
//! transport-matrix` runs the real proxy (default settings) in the cloud
//! namespace and the real `starlight fetch` (default settings, every payload
//! verified) in the worker namespace of an emulated link, and TCP beside it.
//! Also: the emulator backend matches the kernel (netem where `sch_netem`
//! exists, the userspace emulator elsewhere).
//!
//! Needs root, `/dev/net/tun`, `ip netns`, `docker-registry`, `skopeo`, and
//! the `starlight` and `starlight-proxy` binaries next to `starlight-bench`
//! (`cargo build -p starlight-tools -p starlight-proxy -p starlight-bench`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use starlight_bench::netem::{self, calibrate, tc, Backend, BackendChoice, Link, LinkConfig};

static SERIAL: Mutex<()> = Mutex::new(());

fn bench_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_starlight-bench"))
}

fn require_binaries() {
    let dir = bench_bin().parent().unwrap();
    for name in ["starlight", "starlight-proxy"] {
        assert!(
            dir.join(name).exists(),
            "{name} is missing next to starlight-bench: cargo build -p starlight-tools -p starlight-proxy"
        );
    }
}

fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| netem::owner_pid(n) == Some(pid))
        .map(String::from)
        .collect()
}

/// Runs the matrix with `args`, at most `limit`; returns its JSON document.
fn run_matrix(args: &[&str], limit: Duration) -> Value {
    require_binaries();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let work = dir.path().join("work");
    let mut child = Command::new(bench_bin())
        .arg("transport-matrix")
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the matrix took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    eprintln!("{err}");
    assert!(status.success(), "{status}: {err}");
    assert!(namespaces_of(pid).is_empty(), "namespaces left behind");
    assert!(!work.exists(), "work directory left behind");
    let tsv = std::fs::read_to_string(out.with_extension("tsv")).unwrap();
    eprintln!("{tsv}");
    serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap()
}

fn cells(doc: &Value) -> &Vec<Value> {
    doc["cells"].as_array().unwrap()
}

#[test]
#[ignore = "needs root: network namespaces, TUN devices, docker-registry, skopeo"]
fn hard_cells_complete_and_verify_with_default_settings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let doc = run_matrix(
        &[
            "--cells",
            "300ms:100mbit:0.02,150ms:1gbit:0",
            "--cell-timeout",
            "90",
        ],
        Duration::from_secs(420),
    );
    assert!(doc["emulator"] == "netem" || doc["emulator"] == "userspace");
    let cells = cells(&doc);
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert_eq!(c["complete"], true, "{c}");
        assert_eq!(c["error"], Value::Null, "{c}");
        // The whole 24 MB bundle arrived and verified, within the cap.
        assert!(c["bundle_bytes"].as_u64().unwrap() > 20_000_000, "{c}");
        assert!(c["quic_seconds"].as_f64().unwrap() < 90.0, "{c}");
        assert!(c["quic_mbit"].as_f64().unwrap() > 1.0, "{c}");
        assert!(c["tcp_mbit"].as_f64().unwrap() > 0.0, "{c}");
    }
    // The 2% loss really was applied (userspace counts it as lost; netem as drops).
    let lossy = &cells[0]["link_down"];
    let lost = lossy["lost"].as_u64().unwrap() + lossy["drops"].as_u64().unwrap();
    let packets = lossy["packets"].as_u64().unwrap();
    assert!(lost * 100 > packets, "{lossy}");
}

#[test]
#[ignore = "needs root: network namespaces, TUN devices, docker-registry, skopeo"]
fn reordering_and_loss_still_complete() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let doc = run_matrix(
        &[
            "--cells",
            "50ms:100mbit:0.005,0:10mbit:0.02",
            "--reorder",
            "0.01",
            "--large-mb",
            "8",
            "--small-mb",
            "2",
            "--cell-timeout",
            "60",
        ],
        Duration::from_secs(300),
    );
    let cells = cells(&doc);
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert_eq!(c["complete"], true, "{c}");
        assert_eq!(c["reorder_pct"], 1.0, "{c}");
    }
    if doc["emulator"] == "userspace" {
        // 50 ms of delay to skip: reordered packets overtook others.
        assert!(
            cells[0]["link_down"]["reordered"].as_u64().unwrap() > 0,
            "{}",
            cells[0]
        );
    }
}

#[test]
#[ignore = "needs root: network namespaces, veth pairs, tc"]
fn the_backend_matches_the_kernel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    netem::available().unwrap();
    let config = LinkConfig::new(Duration::from_millis(20), 100_000_000);
    match tc::probe() {
        Ok(()) => {
            // sch_netem: auto picks it, and it shapes like the userspace emulator.
            let link = Link::up_with(config, BackendChoice::Auto).unwrap();
            assert_eq!(link.backend(), Backend::Netem);
            let rtt = calibrate::measure_rtt(&link, 10, Duration::from_millis(10)).unwrap();
            assert!((rtt.median() - 0.020).abs() < 0.002, "{rtt:?}");
            link.down().unwrap();
        }
        Err(reason) => {
            // No sch_netem (this CI kernel): asking for netem fails cleanly,
            // leaving nothing behind, and auto falls back to userspace.
            eprintln!("no netem here: {reason}");
            assert!(reason.contains("qdisc"), "{reason}");
            let e = Link::up_with(config, BackendChoice::Netem).err().unwrap();
            assert!(e.to_string().contains("sch_netem"), "{e}");
            assert!(namespaces_of(std::process::id()).is_empty());
            let link = Link::up_with(config, BackendChoice::Auto).unwrap();
            assert_eq!(link.backend(), Backend::Userspace);
            let rtt = calibrate::measure_rtt(&link, 10, Duration::from_millis(10)).unwrap();
            assert!((rtt.median() - 0.020).abs() < 0.002, "{rtt:?}");
            link.down().unwrap();
        }
    }
    assert!(namespaces_of(std::process::id()).is_empty());
}
