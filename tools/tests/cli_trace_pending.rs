//! `starlight trace --upload-pending` and `starlight ranks`, the real binary
//! against a real proxy (QUIC on 127.0.0.1, RocksDB, a real
//! `docker-registry`): a trace left behind while the proxy is down stays on
//! disk, is delivered once the proxy is back, and is counted exactly once,
//! even when it is uploaded again after its acknowledgement was lost.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::db::Db;
use starlight_proxy::format::Compression;
use starlight_proxy::optimize::PlanCache;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::{BundleServer, ServeOptions};
use transport_quic::quic::{Client, ClientTls, Server, ServerTls};
use transport_quic::{Trace, TraceOpen};

const ORDER: [&str; 3] = ["etc/c", "bin/app", "etc/a"];

fn files() -> Vec<(String, Vec<u8>)> {
    ["etc/a", "etc/b", "etc/c", "bin/app"]
        .iter()
        .map(|p| (p.to_string(), format!("{p}\n").repeat(300).into_bytes()))
        .collect()
}

fn bind(addr: SocketAddr, tls: &ServerTls, handler: Arc<BundleServer>) -> Server {
    // The port was just released by the previous server: retry briefly.
    for _ in 0..50 {
        if let Ok(s) = Server::bind(addr, tls.clone(), [TOKEN], handler.clone()) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot bind {addr} again");
}

async fn cli(addr: SocketAddr, ca: &Path, pending: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starlight"));
    cmd.env("RUST_LOG", "info")
        .args(args)
        .arg("--config")
        .arg(pending.join("no-such-config.toml"))
        .arg("--proxy")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(ca)
        .arg("--token")
        .arg(TOKEN)
        .kill_on_drop(true);
    if args[0] == "trace" {
        cmd.arg("--pending-dir").arg(pending);
    }
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the CLI did not finish within 120 s")
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pending_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_keeps_the_trace_and_upload_pending_delivers_it_once() {
    let reg = TestRegistry::start();
    let layer = starlight_layer(&tar_of(&files(), 1_700_000_000), Compression::Gzip);
    let digest = push_image(&reg, "cli/traced", "v1", &[layer]);

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
    let options = ServeOptions {
        registry_host: Some(reg.addr.clone()),
        ..ServeOptions::default()
    };
    let handler = Arc::new(BundleServer::new(
        db.clone(),
        Arc::new(RegistryClient::new(true)),
        Arc::new(PlanCache::new(16, 16 << 20)),
        options,
    ));
    let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1"]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let tls = ServerTls {
        cert_chain_pem: cert.clone().into_bytes(),
        key_pem: key.into_bytes(),
    };
    let server = bind("127.0.0.1:0".parse().unwrap(), &tls, handler.clone());
    let addr = server.local_addr();
    // Index the image (an unordered bundle, as trace collection asks for).
    let client = Client::new(ClientTls::CaPem(cert.clone().into_bytes())).unwrap();
    let req = transport_quic::Request {
        unordered: true,
        ..request("cli/traced:v1", &[])
    };
    fetch(&client, addr, &req).await.unwrap();
    drop(client);

    // The proxy goes down; a run's trace is waiting in the pending directory
    // (written as `starlight trace` writes it).
    server.shutdown().await;
    let pending = dir.path().join("pending");
    std::fs::create_dir_all(&pending).unwrap();
    let trace = Trace {
        id: "run-0001".into(),
        image: format!("{}/cli/traced:v1", reg.addr),
        manifest_digest: digest.clone(),
        opens: ORDER
            .iter()
            .enumerate()
            .map(|(i, p)| TraceOpen {
                path: p.to_string(),
                layer: 0,
                rank: i as u32,
                ms_since_start: 5 * i as u64,
                ms_waited: 2,
            })
            .collect(),
    };
    let file = pending.join("run-0001.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&trace).unwrap()).unwrap();

    let down = cli(addr, &ca, &pending, &["trace", "--upload-pending"]).await;
    assert!(!down.status.success(), "{}", text(&down));
    assert!(
        text(&down).contains("still pending"),
        "the failure says the trace stays: {}",
        text(&down)
    );
    assert_eq!(pending_files(&pending), vec!["run-0001.json".to_string()]);
    assert_eq!(db.trace_count(&digest).unwrap(), 0);

    // The proxy is back on the same address: delivered, then deleted.
    let server = bind(addr, &tls, handler.clone());
    let up = cli(addr, &ca, &pending, &["trace", "--upload-pending"]).await;
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("1 pending trace(s) delivered, 0 still"),
        "{}",
        text(&up)
    );
    assert!(pending_files(&pending).is_empty());
    assert_eq!(db.trace_count(&digest).unwrap(), 1);

    // Nothing left: a second run delivers nothing.
    let again = cli(addr, &ca, &pending, &["trace", "--upload-pending"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 pending trace(s) delivered"));

    // The acknowledgement was lost and the file came back: uploaded again,
    // recognised, removed, and still counted once.
    std::fs::write(&file, serde_json::to_vec_pretty(&trace).unwrap()).unwrap();
    let retry = cli(addr, &ca, &pending, &["trace", "--upload-pending"]).await;
    assert!(retry.status.success(), "{}", text(&retry));
    assert!(
        text(&retry).contains("already had this trace"),
        "{}",
        text(&retry)
    );
    assert!(pending_files(&pending).is_empty());
    assert_eq!(db.trace_count(&digest).unwrap(), 1);

    // `starlight ranks` lists the traced order with one hit each.
    let ranks = cli(addr, &ca, &pending, &["ranks", "cli/traced:v1"]).await;
    assert!(ranks.status.success(), "{}", text(&ranks));
    let out = String::from_utf8_lossy(&ranks.stdout).into_owned();
    assert!(out.contains(&digest) && out.contains("1 trace(s)"), "{out}");
    let listed: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0].parse::<u32>().is_ok())
                .then(|| (f[3].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect();
    let expected: Vec<(String, String, String)> = ORDER
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), format!("{i}.00"), "1".to_string()))
        .collect();
    assert_eq!(listed, expected, "{out}");
    server.shutdown().await;
}
