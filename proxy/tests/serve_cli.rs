//! Runs the real `starlight-proxy serve` binary (flags, TOML config,
//! self-signed certificate, request logs, clean shutdown on SIGTERM) against
//! a real `docker-registry`, and fetches from it over QUIC.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use transport_quic::quic::{Client, ClientTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_serves_logs_and_stops_on_sigterm() {
    let reg = TestRegistry::start();
    let files = vec![
        ("a/one".to_string(), b"one\n".repeat(100)),
        ("a/two".to_string(), noise(3, 50_000)),
    ];
    let digest = push_image(
        &reg,
        "cli/served",
        "v1",
        &[starlight_layer(&tar_of(&files, 1), Compression::Zstd)],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "db = \"{}\"\n[registry]\nurl = \"{}\"\nplain_http = true\n[serve]\ntokens = [\"from-config\"]\nin_flight = 2\nmax_range = 65536\n",
            dir.path().join("db").display(),
            reg.addr
        ),
    )
    .unwrap();
    let certs = dir.path().join("certs");
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_starlight-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "from-flag",
            "--self-signed",
        ])
        .arg(&certs)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let client = Client::new(ClientTls::CaFile(certs.join("cert.pem"))).unwrap();
    for token in ["from-config", "from-flag"] {
        let mut req = request("cli/served:v1", &[]);
        req.token = token.into();
        let b = fetch(&client, addr, &req).await.unwrap();
        verify(&b).unwrap();
        assert_eq!(b.header.manifest_digest, digest);
        assert_eq!(b.payloads.len(), 2);
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("bundle sent"), "{log}");
    assert!(log.contains("plan_cache=\"hit\""), "{log}");
    assert!(log.contains("stopped"), "{log}");

    // gen-cert writes a usable pair.
    let out = Command::new(env!("CARGO_BIN_EXE_starlight-proxy"))
        .args(["gen-cert", "--out"])
        .arg(dir.path().join("gen"))
        .args(["--name", "proxy.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pem = std::fs::read(dir.path().join("gen/cert.pem")).unwrap();
    assert_eq!(
        transport_quic::tls::certs_from_pem(&pem, "gen")
            .unwrap()
            .len(),
        1
    );
}
