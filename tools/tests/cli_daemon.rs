//! `starlight pull`, `images` and `rm` without a running starlightd: each
//! exits non-zero and says that starlightd is not reachable. (With a
//! running starlightd they are exercised by the worker's
//! `daemon_e2e` test, which runs this binary.)
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Command;

#[test]
fn commands_fail_clearly_when_starlightd_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    for args in [vec!["pull", "app:v1"], vec!["images"], vec!["rm", "app:v1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_starlight"))
            .args(&args)
            .arg("--api")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is starlightd running?") && stderr.contains("absent.sock"),
            "{args:?}: {stderr}"
        );
    }
}
