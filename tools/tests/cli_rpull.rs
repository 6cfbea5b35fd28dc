//! `starlight rpull --user`: the real binary reads a private image's
//! manifest and config from a real `docker-registry` with htpasswd basic
//! authentication. With the right user (password after the colon, or on
//! standard input) it gets past the registry and stops at starlightd's API
//! socket (none here); with a wrong password or none the registry refuses it.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::registry::{TestRegistry, AUTH_PASSWORD, AUTH_USER};
use serve_support::*;
use starlight_proxy::format::Compression;

fn rpull(args: &[&str], stdin: Option<&str>, home: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starlight"))
        .arg("rpull")
        .args(["--plain-http", "--api"])
        .arg(home.join("no-starlightd.sock"))
        .args(args)
        // No docker login of the machine's user may answer for us.
        .env("HOME", home)
        .env("DOCKER_CONFIG", home.join("docker"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out: Output = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rpull_user_reaches_a_private_registry() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = {
        let _guard = rt.enter();
        TestRegistry::start_basic_auth()
    };
    let files = vec![("app/f".to_string(), noise(7, 5000))];
    let layer = starlight_layer(&tar_of(&files, 1_700_000_000), Compression::Gzip);
    let creds = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    push_image_as(&reg, "private/app", "v1", &[layer], Some(&creds));
    let image = format!("{}/private/app:v1", reg.addr);
    let home = tempfile::tempdir().unwrap();

    // Past the registry: the only failure left is starlightd's API socket.
    let past_registry = |(ok, err): (bool, String)| {
        assert!(!ok);
        assert!(err.contains("no-starlightd.sock"), "{err}");
        assert!(!err.contains("resolving"), "{err}");
    };
    past_registry(rpull(&["--user", &creds, &image], None, home.path()));
    let line = format!("{AUTH_PASSWORD}\n");
    past_registry(rpull(&["-u", AUTH_USER, &image], Some(&line), home.path()));

    // Refused by the registry: anonymous, a wrong password, no password.
    for (args, stdin) in [
        (vec![image.as_str()], None),
        (vec!["--user", "tester:wrong", image.as_str()], None),
    ] {
        let (ok, err) = rpull(&args, stdin, home.path());
        assert!(!ok);
        assert!(err.contains("resolving"), "{err}");
    }
    let (ok, err) = rpull(&["--user", AUTH_USER, &image], Some(""), home.path());
    assert!(!ok);
    assert!(err.contains("standard input"), "{err}");
}
