//! Runs the real `starlight fetch` binary against the bundle server (served
//! in-process on 127.0.0.1 by this test, over a real `docker-registry`):
//! its report, its output file, and its exit codes on failure.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use transport_quic::codec::ResponseDecoder;
use transport_quic::Event;

type Files = Vec<(String, Vec<u8>)>;

fn files(version: u32, changed: bool) -> Files {
    let mut f: Files = (0..20)
        .map(|i| {
            let body = if changed && i == 4 {
                "changed\n".repeat(300)
            } else {
                format!("file {i}\n").repeat(i * 40 + 1)
            };
            (format!("etc/f{i}"), body.into_bytes())
        })
        .collect();
    f.push((
        "bin/app".into(),
        format!("app v{version}\n").repeat(1000).into_bytes(),
    ));
    f
}

fn push(reg: &TestRegistry, name: &str, tag: &str, files: &Files) -> String {
    let layer = starlight_layer(&tar_of(files, 1_700_000_000), Compression::Gzip);
    push_image(reg, name, tag, &[layer])
}

/// Runs `starlight fetch` with `args` (the proxy's address and CA are added).
async fn fetch_cli(proxy: &Proxy, ca: &Path, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlight"));
    cmd.env("RUST_LOG", "warn")
        .arg("fetch")
        .arg("--proxy")
        .arg(proxy.addr.to_string())
        .arg("--ca")
        .arg(ca)
        .arg("--token")
        .arg(token)
        .args(args);
    cmd.output().await.unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Decodes a written bundle file; returns (payloads, End seen).
fn decode_file(path: &Path) -> (usize, bool) {
    let bytes = std::fs::read(path).unwrap();
    let mut dec = ResponseDecoder::default();
    dec.feed(&bytes);
    let (mut payloads, mut end) = (0, false);
    while let Some(ev) = dec.next_event().unwrap() {
        match ev {
            Event::PayloadEnd { .. } => payloads += 1,
            Event::End(_) => end = true,
            _ => {}
        }
    }
    dec.finish().unwrap();
    (payloads, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_writes_verifies_and_reports() {
    let reg = TestRegistry::start();
    push(&reg, "cli/app", "v1", &files(1, false));
    let v2 = push(&reg, "cli/app", "v2", &files(2, true));
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();

    let full = dir.path().join("v2.bundle");
    let out = fetch_cli(
        &proxy,
        &ca,
        TOKEN,
        &["cli/app:v2", "-o", full.to_str().unwrap()],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "time to header",
        "time to last byte",
        "bytes received",
        &v2,
        "every payload's SHA-256",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // 21 files, two share nothing... every distinct content once.
    assert!(stdout.contains("payloads           21 "), "{stdout}");
    assert_eq!(decode_file(&full), (21, true));
    assert!(!dir.path().join("v2.bundle.partial").exists());

    // The worker fetched v1 before (so the proxy indexed it)...
    let v1 = dir.path().join("v1.bundle");
    let out = fetch_cli(
        &proxy,
        &ca,
        TOKEN,
        &["cli/app:v1", "-o", v1.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));
    // ...and now holds it (named by reference): only f4 and bin/app travel.
    let delta = dir.path().join("delta.bundle");
    let out = fetch_cli(
        &proxy,
        &ca,
        TOKEN,
        &[
            "--from",
            "cli/app:v1",
            "cli/app:v2",
            "-o",
            delta.to_str().unwrap(),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("payloads           2 "), "{stdout}");
    assert!(stdout.contains("(19 held)"), "{stdout}");
    assert_eq!(decode_file(&delta), (2, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_failures_exit_non_zero_with_clear_messages() {
    let reg = TestRegistry::start();
    let digest = push(&reg, "cli/app", "v1", &files(1, false));
    let big: Files = (0..5)
        .map(|i| (format!("big/{i}"), noise(i + 1, 8 << 20)))
        .collect();
    push(&reg, "cli/big", "v1", &big);
    let mut proxy = Proxy::start(
        &reg,
        ServeOptions {
            in_flight: 1,
            max_range: 64 << 10,
            ..ServeOptions::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let o = dir.path().join("out.bundle");
    let o = o.to_str().unwrap();

    // Refused token: exit 3.
    let out = fetch_cli(&proxy, &ca, "guess", &["cli/app:v1", "-o", o]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("refused the token"), "{stderr}");
    assert!(!Path::new(o).exists());

    // Untrusted certificate: exit 4.
    let other = dir.path().join("other.pem");
    let (other_cert, _) = transport_quic::tls::self_signed(&["127.0.0.1"]).unwrap();
    std::fs::write(&other, other_cert).unwrap();
    let out = fetch_cli(&proxy, &other, TOKEN, &["cli/app:v1", "-o", o]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("certificate not trusted"), "{stderr}");

    // Unknown image: exit 7.
    let out = fetch_cli(&proxy, &ca, TOKEN, &["cli/none:v1", "-o", o]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

    // An image whose manifest does not commit to its file tables (no
    // table-of-contents annotation): the header cannot be verified, exit 6,
    // nothing written.
    let bare = {
        let layer = starlight_layer(&tar_of(&files(9, false), 1_700_000_000), Compression::Gzip);
        let mut layout = common::layout::OciLayout::new();
        let desc = layout.add_image_annotated("linux", "amd64", &[layer], &["/bin/app"], &[None]);
        layout.tag("bare", &desc);
        let reference = format!("{}/cli/bare:bare", reg.addr);
        layout.push("bare", &reference, false);
        reference
    };
    let out = fetch_cli(&proxy, &ca, TOKEN, &[&bare, "-o", o]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{stdout}
{stderr}"
    );
    assert!(
        stderr.contains("header verification failed")
            && stderr.contains("has no io.starlight.toc.digest annotation"),
        "{stderr}"
    );
    assert!(!Path::new(o).exists());
    assert!(!Path::new(&format!("{o}.partial")).exists());
    // A pull by digest of a committed image verifies.
    let pinned = format!("{}/cli/app@{digest}", reg.addr);
    let ok = fetch_cli(&proxy, &ca, TOKEN, &[&pinned, "-o", o]).await;
    assert!(ok.status.success(), "{:?}", text(&ok));
    std::fs::remove_file(o).unwrap();

    // Corrupted member in the registry: exit 6, naming the path.
    let ok = fetch_cli(&proxy, &ca, TOKEN, &["cli/app:v1", "-o", o]).await;
    assert!(ok.status.success(), "{:?}", text(&ok));
    std::fs::remove_file(o).unwrap();
    let record = proxy.db.image(&digest).unwrap().unwrap();
    let toc = proxy.db.merged_toc(&digest).unwrap();
    let target = toc.iter().find(|t| t.entry.path == "bin/app").unwrap();
    let c = target.entry.content.unwrap();
    let blob = reg.blob_path(&record.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = (c.offset + c.compressed_len / 2) as usize;
    bytes[at] ^= 0xff;
    bytes[at + 1] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let out = fetch_cli(&proxy, &ca, TOKEN, &["cli/app:v1", "-o", o]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("verification failed for /bin/app"),
        "{stderr}"
    );
    assert!(!Path::new(o).exists());
    assert!(!Path::new(&format!("{o}.partial")).exists());

    // Truncated: the proxy stops mid-body: exit 5.
    let partial = format!("{o}.partial");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlight"));
    cmd.args(["fetch", "--proxy", &proxy.addr.to_string(), "--ca"])
        .arg(&ca)
        .args(["--token", TOKEN, "cli/big:v1", "-o", o])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < (1 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the bundle never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.stop().await;
    let out = child.wait_with_output().await.unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(!Path::new(o).exists());
}

/// Runs `starlight convert --plain-http --notify PROXY ...` with `token`.
async fn convert_notify(proxy: &Proxy, ca: &Path, token: &str, src: &str, dst: &str) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlight"));
    cmd.env("RUST_LOG", "warn")
        .args(["convert", "--plain-http", "--no-progress", "--notify"])
        .arg(proxy.addr.to_string())
        .arg("--ca")
        .arg(ca)
        .arg("--token")
        .arg(token)
        .args([src, dst]);
    cmd.output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_notify_has_the_proxy_index_the_new_image() {
    let reg = TestRegistry::start();
    // An original (non-Starlight) image: plain gzip layer.
    let mut layout = common::layout::OciLayout::new();
    let layer = common::layout::Layer::gzip(&tar_of(&files(1, false), 1_700_000_000));
    let desc = layout.add_image("linux", "amd64", &[layer], &["/bin/app"]);
    layout.tag("v1", &desc);
    layout.push("v1", &format!("{}/notify/app:v1", reg.addr), false);
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let src = format!("{}/notify/app:v1", reg.addr);

    let dst = format!("{}/notify/app:v1-starlight", reg.addr);
    let out = convert_notify(&proxy, &ca, TOKEN, &src, &dst).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("indexed {dst} (")),
        "no notify line in:\n{stdout}"
    );
    assert_eq!(proxy.handler.stats().indexed, 1, "the proxy indexed it");
    // (The client hangs up after the header; a bundle this small may still
    // have been written out in full by then, so the count of completed
    // bundles is not asserted.)

    // A refused token: the image is converted and pushed all the same, and
    // the command says the proxy could not index it, with a non-zero exit.
    let dst2 = format!("{}/notify/app:v1-other", reg.addr);
    let out = convert_notify(&proxy, &ca, "wrong-token", &src, &dst2).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("was converted and pushed, but proxy")
            && stderr.contains("could not index it"),
        "{stderr}"
    );
    assert!(reg.has_manifest("notify/app", "v1-other"));
    assert_eq!(proxy.handler.stats().indexed, 1);

    // A retag: the same destination tag converted again from new contents.
    // The proxy's tag TTL (300 s by default) has not run out, yet --notify has
    // it serve the new digest at once.
    let served = |image: String| {
        let proxy = &proxy;
        async move {
            fetch(&proxy.client(), proxy.addr, &request(&image, &[]))
                .await
                .unwrap()
                .header
                .manifest_digest
        }
    };
    let first = served(dst.clone()).await;
    let mut layout = common::layout::OciLayout::new();
    let layer = common::layout::Layer::gzip(&tar_of(&files(2, true), 1_700_000_000));
    let desc = layout.add_image("linux", "amd64", &[layer], &["/bin/app"]);
    layout.tag("v2", &desc);
    layout.push("v2", &format!("{}/notify/app:v2", reg.addr), false);
    let src2 = format!("{}/notify/app:v2", reg.addr);
    let out = convert_notify(&proxy, &ca, TOKEN, &src2, &dst).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let second = served(dst.clone()).await;
    assert_ne!(
        first, second,
        "the proxy still serves the old digest of {dst}"
    );
}

/// The token can come from a file or the environment instead of the
/// command line (where every local user sees it in /proc), and `--help`
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_a_file_or_the_environment() {
    let reg = TestRegistry::start();
    push(&reg, "cli/tok", "v1", &files(1, false));
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.cert_pem).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let fetch = |source: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlight"));
        cmd.env("RUST_LOG", "warn")
            .env_remove("STARLIGHT_TOKEN")
            .arg("fetch")
            .arg("--proxy")
            .arg(proxy.addr.to_string())
            .arg("--ca")
            .arg(&ca);
        match source {
            "file" => {
                cmd.arg("--token-file").arg(&token_file);
            }
            "env" => {
                cmd.env("STARLIGHT_TOKEN", TOKEN);
            }
            _ => {}
        }
        let out = dir.path().join(format!("{source}.bundle"));
        cmd.args(["cli/tok:v1", "-o"]).arg(out);
        cmd
    };
    for source in ["file", "env"] {
        let out = fetch(source).output().await.unwrap();
        assert!(out.status.success(), "{source}: {:?}", text(&out));
    }
    let out = fetch("none").output().await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("token"), "{:?}", text(&out));
    for command in ["fetch", "convert", "trace", "ranks"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_starlight"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--token-file") && help.contains("/proc"),
            "starlight {command} --help:\n{help}"
        );
    }
}
