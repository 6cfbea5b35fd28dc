//! End-to-end test of `starlight-bench sweep`: a tiny two-version busybox
//! corpus (umoci + skopeo into a real docker-registry's storage), swept
//! through the emulated link with real containerd (and starlightd when it
//! is built), then checked for results and for leftovers: no namespace,
//! mount or process of the sweep may survive it.
//!
//! Needs root, containerd, runc, docker-registry, umoci, skopeo and
//! busybox-static; without them it says why and passes without checking.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The sweeps calibrate the link: one at a time, or they share the CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "docker-registry",
        "umoci",
        "skopeo",
        "nsenter",
        "ip",
    ] {
        if !have(tool) {
            return Some(format!("{tool} not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("busybox-static not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

fn sh(script: &str) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "script failed:\n{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry on a free loopback port serving `storage`; killed on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path, storage: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("curl")
            .args([
                "-fs",
                "-o",
                "/dev/null",
                &format!("http://{}/v2/", reg.addr),
            ])
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds `tiny:v1` and `tiny:v2` (busybox base, app layer; v2 rebuilds
/// the base and changes the app) into the corpus registry storage, and the
/// Starlight-format tags when a `starlight` binary is given.
fn build_corpus(dir: &Path, starlight: Option<&Path>) -> PathBuf {
    let corpus = dir.join("corpus");
    let storage = corpus.join("registry");
    std::fs::create_dir_all(&storage).unwrap();
    let reg = Registry::start(dir, &storage);
    let oci = dir.join("oci");
    let b = dir.join("bundle");
    for (tag, note) in [("v1", "one"), ("v2", "two")] {
        sh(&format!(
            r#"
umoci init --layout {oci}-{tag}
umoci new --image {oci}-{tag}:{tag}
umoci unpack --image {oci}-{tag}:{tag} {b} >/dev/null
R={b}/rootfs
mkdir -p $R/bin $R/etc $R/tmp $R/app
cp /bin/busybox $R/bin/busybox
for a in sh echo sleep cat; do ln -s busybox $R/bin/$a; done
echo "base {note}" > $R/etc/build
umoci repack --image {oci}-{tag}:{tag} {b}
rm -rf {b}
umoci unpack --image {oci}-{tag}:{tag} {b} >/dev/null
R={b}/rootfs
printf '#!/bin/sh\ncat /app/version >/dev/null\necho READY\nexec sleep 600\n' > $R/app/start
chmod 755 $R/app/start
echo "app {note}" > $R/app/version
umoci repack --image {oci}-{tag}:{tag} {b}
rm -rf {b}
umoci config --image {oci}-{tag}:{tag} --config.entrypoint /app/start --config.env PATH=/bin
skopeo copy -q --dest-tls-verify=false oci:{oci}-{tag}:{tag} docker://{addr}/tiny:{tag}
"#,
            oci = oci.display(),
            b = b.display(),
            addr = reg.addr,
        ));
        if let Some(starlight) = starlight {
            let out = Command::new(starlight)
                .args(["convert", "--plain-http", "--no-progress"])
                .arg(format!("{}/tiny:{tag}", reg.addr))
                .arg(format!("{}/tiny:{tag}-starlight", reg.addr))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "convert: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::write(
        corpus.join("images.json"),
        r#"[{"name":"tiny","ready":"READY","v1":"v1","v2":"v2","v1_starlight":"v1-starlight","v2_starlight":"v2-starlight","sizes":[0,0],"layers":[2,2],"files":[0,0]}]"#,
    )
    .unwrap();
    corpus
}

/// The workspace's binaries next to the test's `starlight-bench`.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_starlight-bench"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}

/// Runs the sweep; a refusal because the calibration was off (the machine
/// busy with other work) is retried twice.
fn sweep(corpus: &Path, work: &Path, out: &Path, methods: &str) -> std::process::Output {
    let mut attempt = 0;
    loop {
        let output = sweep_once(corpus, work, out, methods);
        let refused = String::from_utf8_lossy(&output.stderr).contains("calibration off");
        attempt += 1;
        if !refused || attempt == 3 {
            return output;
        }
        eprintln!("calibration off (busy machine?): retrying");
    }
}

fn sweep_once(corpus: &Path, work: &Path, out: &Path, methods: &str) -> std::process::Output {
    Command::new("timeout")
        .arg("240")
        .arg(env!("CARGO_BIN_EXE_starlight-bench"))
        .arg("sweep")
        .arg("--corpus")
        .arg(corpus)
        .args(["--images", "tiny", "--methods", methods])
        .args([
            "--scenarios",
            "fresh,update",
            "--rtt",
            "50",
            "--rate",
            "100mbit",
        ])
        .args(["--runs", "1", "--timeout", "60"])
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--work-dir")
        .arg(work)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn check_results_and_leftovers(
    out_dir: &Path,
    work: &Path,
    output: &std::process::Output,
    methods: &[&str],
) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "sweep failed:\n{stderr}");
    let tsv = std::fs::read_to_string(out_dir.join("runs.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .skip(2)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 2 * methods.len(), "{tsv}");
    for row in &rows {
        assert!(methods.contains(&row[1]), "{row:?}");
        assert_eq!(row[6], "true", "run failed: {row:?}");
        let time: f64 = row[7].parse().unwrap();
        assert!(time > 0.0 && time < 60.0, "{row:?}");
        let down: u64 = row[9].parse().unwrap();
        assert!(down > 0, "nothing crossed the link: {row:?}");
    }
    let calibration = std::fs::read_to_string(out_dir.join("calibration.json")).unwrap();
    assert!(calibration.contains("rtt"), "{calibration}");
    for f in ["runs.json", "summary.md", "summary.tsv", "command.txt"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        for f in [
            "time-vs-rtt-fresh.svg",
            "time-vs-rtt-update.png",
            "normalized-time.svg",
        ] {
            assert!(out_dir.join(f).exists(), "{f} missing");
        }
    }
    // Nothing left: namespaces of the emulated link, mounts, processes.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let work_s = work.to_string_lossy().into_owned();
    assert!(
        !mounts.contains(&work_s),
        "mounts left below {work_s}:\n{mounts}"
    );
    assert!(
        processes_mentioning(&work_s).is_empty(),
        "{:?}",
        processes_mentioning(&work_s)
    );
    let leftovers: Vec<&str> = netns
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(starlight_bench::netem::owner_pid)
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    assert!(leftovers.is_empty(), "namespaces left: {leftovers:?}");
    let entries: Vec<_> = std::fs::read_dir(work).unwrap().flatten().collect();
    assert!(entries.is_empty(), "files left in {work_s}: {entries:?}");
}

#[test]
#[ignore = "needs root: network namespaces, containerd"]
fn containerd_sweep_through_the_emulated_link_leaves_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = build_corpus(dir.path(), None);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out_dir = dir.path().join("out");
    let output = sweep(&corpus, &work, &out_dir, "containerd");
    check_results_and_leftovers(&out_dir, &work, &output, &["containerd"]);
    // eStargz is never skipped silently: without its tools the sweep stops
    // before measuring anything, saying how to build them.
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/estargz");
    let in_path = Command::new("sh")
        .args(["-c", "command -v containerd-stargz-grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !tools.join("containerd-stargz-grpc").exists() && !in_path {
        let out2 = dir.path().join("out2");
        let output = sweep_once(&corpus, &work, &out2, "containerd,estargz");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("bench/estargz/build.sh"), "{stderr}");
        assert!(!out2.join("runs.tsv").exists());
    }
}

#[test]
#[ignore = "needs root: network namespaces, containerd"]
fn starlight_and_wget_sweep_through_the_emulated_link() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): {why}");
    }
    let bins = bin_dir();
    let starlight = bins.join("starlight");
    if !starlight.exists() || !bins.join("starlight-proxy").exists() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): build the workspace first (starlight, starlight-proxy)");
    }
    // The Starlight method needs starlightd with `run` and the CLI's `pull`.
    let pull_ok = Command::new(&starlight)
        .args(["pull", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
        && bins.join("starlightd").exists();
    let methods: &[&str] = if pull_ok {
        &["starlight", "wget"]
    } else {
        &["wget"]
    };
    let dir = tempfile::tempdir().unwrap();
    let corpus = build_corpus(dir.path(), Some(&starlight));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out_dir = dir.path().join("out");
    let output = sweep(&corpus, &work, &out_dir, &methods.join(","));
    check_results_and_leftovers(&out_dir, &work, &output, methods);
}
