//! Runs the real `starlightd mount` binary against a real `docker-registry`
//! and the proxy served in-process over QUIC: configuration file plus flag
//! overrides, the mount at the header, every byte through FUSE, a clean
//! unmount on SIGTERM, an update that reuses the held image's contents, and
//! a restart that mounts a fully pulled image with the proxy gone. Skipped when not root or without /dev/fuse.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use tokio::io::{AsyncBufReadExt, BufReader};

const BOUND: Duration = Duration::from_secs(60);

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

fn mounted(dir: &Path) -> bool {
    let needle = format!(" {} ", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse"]
async fn starlightd_mounts_updates_and_restarts_offline() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): the starlightd FUSE test: {reason}");
    }
    let reg = TestRegistry::start();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("usr/lib/big.so".into(), noise(7, 3 << 20)),
        ("etc/motd".into(), b"hello from starlight\n".to_vec()),
        ("etc/app/conf".into(), b"key = value\n".repeat(40)),
    ];
    let layer = starlight_layer(&tar_of(&files, 1_700_000_000), Compression::Zstd);
    push_image(&reg, "worker/cli", "v1", &[layer]);
    let mut files_v2 = files.clone();
    files_v2[1].1 = b"hello from starlight, version 2\n".to_vec();
    let layer = starlight_layer(&tar_of(&files_v2, 1_700_000_000), Compression::Zstd);
    push_image(&reg, "worker/cli", "v2", &[layer]);
    let proxy = Proxy::start(&reg, ServeOptions::default());

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let config = dir.path().join("starlightd.toml");
    // A wrong token in the file: the flag must override it.
    std::fs::write(
        &config,
        format!(
            "proxy = \"{}\"\nca_file = \"{}\"\ntoken = \"wrong\"\nstate_dir = \"{}\"\ngrace_secs = 2\n",
            proxy.addr,
            ca.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    // With the file's token the proxy refuses, and starlightd says so.
    let out = tokio::time::timeout(
        BOUND,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(&config)
            .args(["mount", "worker/cli:v1"])
            .arg(&mnt)
            .env("RUST_LOG", "error")
            .env_remove("STARLIGHT_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token"), "{stderr}");
    assert!(!mounted(&mnt));

    // (1) v1 from the proxy: mounted at the header, every byte right, the
    // contents land in the store under the state directory.
    let mut d = Daemon::start(&config, &["--token", TOKEN, "mount", "worker/cli:v1"], &mnt);
    let first = d.line().await;
    assert!(
        first.starts_with("mounted worker/cli:v1 (sha256:"),
        "{first}"
    );
    assert!(first.ends_with("3 payloads to receive"), "{first}");
    assert!(mounted(&mnt));
    check_files(&mnt, &files).await;
    let second = d.line().await;
    assert!(
        second.starts_with("received worker/cli:v1: 3 contents stored"),
        "{second}"
    );
    for (_, data) in &files {
        let hex = hex::encode(sha(data));
        let path = dir
            .path()
            .join("state/content/sha256")
            .join(&hex[..2])
            .join(&hex);
        assert!(path.is_file(), "{}", path.display());
    }
    d.stop(&mnt).await;

    // (2) v2 with no --from: starlightd names v1 itself, so only the
    // changed file travels.
    let mut d = Daemon::start(&config, &["--token", TOKEN, "mount", "worker/cli:v2"], &mnt);
    let first = d.line().await;
    assert!(first.starts_with("mounted worker/cli:v2"), "{first}");
    assert!(first.ends_with("1 payloads to receive"), "{first}");
    check_files(&mnt, &files_v2).await;
    let second = d.line().await;
    assert!(
        second.starts_with("received worker/cli:v2: 1 contents stored"),
        "{second}"
    );
    d.stop(&mnt).await;

    // (3) restart without the proxy: v1 is mounted from local state.
    let mut proxy = proxy;
    proxy.stop().await;
    let mut d = Daemon::start(&config, &["--token", TOKEN, "mount", "worker/cli:v1"], &mnt);
    let first = d.line().await;
    assert!(
        first.starts_with("mounted worker/cli:v1") && first.contains("from local state"),
        "{first}"
    );
    check_files(&mnt, &files).await;
    d.stop(&mnt).await;
}

/// A running `starlightd` and its stdout lines.
struct Daemon {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Daemon {
    fn start(config: &Path, args: &[&str], mnt: &Path) -> Daemon {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(config)
            .args(args)
            .arg(mnt)
            .env("RUST_LOG", "warn,polyfuse=error")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Daemon { child, lines }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(BOUND, self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    /// SIGTERM; the daemon unmounts and exits 0.
    async fn stop(mut self, mnt: &Path) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: kill with the pid of our own child and a valid signal.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
        let last = self.line().await;
        assert!(last.starts_with("unmounted"), "{last}");
        assert!(!mounted(mnt));
    }
}

/// Reads every file through the mount and compares.
async fn check_files(mnt: &Path, files: &[(String, Vec<u8>)]) {
    let (mnt, files) = (mnt.to_path_buf(), files.to_vec());
    tokio::time::timeout(
        BOUND,
        tokio::task::spawn_blocking(move || {
            for (path, data) in &files {
                let got = std::fs::read(mnt.join(path)).unwrap();
                assert!(got == *data, "{path}: wrong bytes");
            }
        }),
    )
    .await
    .unwrap()
    .unwrap();
}
