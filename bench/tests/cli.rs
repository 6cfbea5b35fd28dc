//! The `starlight-bench` command line: subcommands and clear errors. (The
//! corpus itself needs the Debian mirror, so it is built by hand, not here.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
}

#[test]
fn help_lists_the_subcommands() {
    let out = bench().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("corpus-layers") && text.contains("overhead"),
        "{text}"
    );
    let out = bench().args(["overhead", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--images",
        "--cache",
        "--out",
        "--runs",
        "--gzip-level",
        "--zstd-level",
    ] {
        assert!(text.contains(flag), "missing {flag}: {text}");
    }
}

#[test]
fn unknown_image_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["corpus-layers", "overhead"] {
        let out = bench()
            .args([sub, "--images", "python,nosuch", "--cache"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown image \"nosuch\""), "{err}");
        assert!(err.contains("python, nginx, redis, node"), "{err}");
    }
}
