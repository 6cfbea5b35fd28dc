//! Runs the real `starlight convert` binary against a real `docker-registry`
//! on loopback.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::layout::{Layer, OciLayout};
use common::registry::{TestRegistry, AUTH_PASSWORD, AUTH_USER};

/// A small tar: a directory and two files.
fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "app", std::io::empty()).unwrap();
    for (name, body) in [
        ("app/hello.txt", &b"hello starlight\n"[..]),
        ("app/data.bin", &[7u8; 100_000][..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap()
}

fn starlight() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starlight"));
    c.env("RUST_LOG", "info");
    c
}

#[test]
fn convert_succeeds_and_prints_the_report() {
    let reg = TestRegistry::start();
    let mut layout = OciLayout::new();
    let tar = small_tar();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &[Layer::gzip(&tar), Layer::plain(&tar)],
        &["/bin/sh"],
    );
    layout.tag("v1", &desc);
    let src = format!("{}/cli/app:v1", reg.addr);
    layout.push("v1", &src, false);

    for (compression, tag) in [("gzip", "gz"), ("zstd", "zst")] {
        let dst = format!("{}/cli/app:{tag}", reg.addr);
        let out = starlight()
            .args([
                "convert",
                "--plain-http",
                "--compression",
                compression,
                &src,
                &dst,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains("linux/amd64"), "{stdout}");
        assert!(stdout.contains("total:"), "{stdout}");
        assert!(stdout.contains(&format!("tagged {dst}")), "{stdout}");
        // Not a terminal: plain log lines per layer on stderr.
        assert!(stderr.contains("converted"), "{stderr}");
        assert!(reg.has_manifest("cli/app", tag));
    }
}

#[test]
fn convert_failure_exits_non_zero_with_a_message() {
    let reg = TestRegistry::start();
    let src = format!("{}/cli/missing:v1", reg.addr);
    let dst = format!("{}/cli/out:v1", reg.addr);
    let out = starlight()
        .args(["convert", "--plain-http", &src, &dst])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: converting") && stderr.contains("cli/missing"),
        "{stderr}"
    );
    assert!(!reg.has_manifest("cli/out", "v1"));

    // A bad platform is refused before anything is contacted.
    let out = starlight()
        .args(["convert", "--plain-http", "--platform", "linux", &src, &dst])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("os/arch"), "{stderr}");
}

#[test]
fn convert_uses_credentials_from_docker_config() {
    let reg = TestRegistry::start_basic_auth();
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[Layer::gzip(&small_tar())], &["/bin/sh"]);
    layout.tag("v1", &desc);
    let src = format!("{}/auth/app:v1", reg.addr);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{AUTH_USER}:{AUTH_PASSWORD}"),
        ])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{src}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dst = format!("{}/auth/app:starlight", reg.addr);

    // No credentials: refused, with a message.
    let empty = tempfile::tempdir().unwrap();
    let out = starlight()
        .env("DOCKER_CONFIG", empty.path())
        .args(["convert", "--plain-http", &src, &dst])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("auth/app"), "{stderr}");

    // Credentials in $DOCKER_CONFIG/config.json: accepted.
    let conf = tempfile::tempdir().unwrap();
    let auth = "dGVzdGVyOnN0YXJsaWdodC1wdw=="; // base64("tester:starlight-pw")
    std::fs::write(
        conf.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let out = starlight()
        .env("DOCKER_CONFIG", conf.path())
        .args(["convert", "--plain-http", &src, &dst])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("tagged {dst}")), "{stdout}");
}
