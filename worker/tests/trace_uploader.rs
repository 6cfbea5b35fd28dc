//! starlightd's trace uploader against a real QUIC server on loopback (no
//! root needed): spooled traces are sent oldest first, at most one per
//! `upload_interval_ms`, each deleted once acknowledged; a trace the proxy
//! refuses for good is deleted, files that are no trace are deleted unsent,
//! and with `[traces] enabled = false` nothing is sent at all.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starlight_worker::config::{Config, ResolveSettings, Settings, TraceSettings};
use starlight_worker::manager::{BoxFuture, ImageManager, ImageRegistry};
use starlight_worker::registration::RegistryError;
use starlight_worker::trace_spool::{new_id, Spool};
use starlight_worker::trace_upload;
use transport_quic::quic::{
    BundleHandler, BundleWriter, HandlerError, HandlerFuture, ReplyFuture, Server, ServerTls,
};
use transport_quic::{ErrorCode, Header, Request, Trace, TraceAck, TraceOpen};

const TOKEN: &str = "uploader-test-token";

/// A proxy that keeps the traces it is sent; the image "gone" is unknown.
#[derive(Default)]
struct Collector {
    received: Mutex<Vec<(String, Instant)>>,
}

impl BundleHandler for Collector {
    fn handle<'a>(&'a self, _: Request, _: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(async { Err(HandlerError::new(ErrorCode::BadRequest, "no bundles")) })
    }

    fn upload_trace(&self, trace: Trace) -> ReplyFuture<'_, TraceAck> {
        let mut got = self.received.lock().unwrap();
        let duplicate = got.iter().any(|(id, _)| *id == trace.id);
        got.push((trace.id.clone(), Instant::now()));
        let reply = if trace.image == "gone" {
            Err(HandlerError::new(
                ErrorCode::NotFound,
                "image gone is not indexed",
            ))
        } else {
            Ok(TraceAck {
                id: trace.id,
                duplicate,
                folded: 1,
                ignored: 0,
            })
        };
        Box::pin(async move { reply })
    }
}

struct NoRegistry;

impl ImageRegistry for NoRegistry {
    fn register<'a>(
        &'a self,
        _: &'a str,
        _: &'a Header,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async { Ok(()) })
    }
}

fn trace(id: &str, image: &str) -> Trace {
    Trace {
        id: id.into(),
        image: image.into(),
        manifest_digest: format!("sha256:{}", "b".repeat(64)),
        opens: vec![TraceOpen {
            path: "bin/app".into(),
            layer: 0,
            rank: 0,
            ms_since_start: 0,
            ms_waited: 0,
        }],
    }
}

struct World {
    _dir: tempfile::TempDir,
    _server: Server,
    collector: Arc<Collector>,
    config: Config,
}

fn world(enabled: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1"]).unwrap();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.into_bytes(),
        },
        [TOKEN],
        collector.clone(),
    )
    .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).unwrap();
    let config = Settings {
        proxy: Some(server.local_addr().into()),
        ca_file: Some(ca),
        token: Some(TOKEN.into()),
        state_dir: Some(dir.path().join("state")),
        traces: Some(TraceSettings {
            enabled: Some(enabled),
            upload_interval_ms: Some(300),
            ..TraceSettings::default()
        }),
        ..Settings::default()
    }
    .resolve()
    .unwrap();
    World {
        _dir: dir,
        _server: server,
        collector,
        config,
    }
}

fn files(spool: &Spool) -> usize {
    std::fs::read_dir(spool.dir()).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_traces_are_sent_oldest_first_rate_limited_and_deleted_once_acknowledged() {
    let w = world(true);
    let spool = Spool::open(w.config.traces_dir(), 100).unwrap();
    let mut ids = vec![];
    for _ in 0..4 {
        let id = new_id("sha256:x");
        spool.write(&trace(&id, "r/app:v1")).unwrap();
        ids.push(id);
        std::thread::sleep(Duration::from_millis(2));
    }
    let gone = new_id("sha256:x");
    spool.write(&trace(&gone, "gone")).unwrap();
    std::fs::write(spool.dir().join("junk.json"), b"{").unwrap();

    let manager = ImageManager::open(w.config.clone(), Arc::new(NoRegistry)).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = trace_upload::spawn(manager, &w.config, stop_rx).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while files(&spool) > 0 {
        assert!(Instant::now() < deadline, "the spool did not empty");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();

    let got = w.collector.received.lock().unwrap().clone();
    let order: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.push(&gone);
    // Each once, oldest first; the junk file was never sent.
    assert_eq!(order, expected);
    // At most one upload per interval (300 ms; a little slack for timers).
    for pair in got.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= Duration::from_millis(250), "uploads {gap:?} apart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_nothing_is_sent() {
    let w = world(false);
    let spool = Spool::open(w.config.traces_dir(), 100).unwrap();
    spool
        .write(&trace(&new_id("sha256:x"), "r/app:v1"))
        .unwrap();
    let manager = ImageManager::open(w.config.clone(), Arc::new(NoRegistry)).unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    assert!(trace_upload::spawn(manager, &w.config, stop_rx).is_none());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(w.collector.received.lock().unwrap().is_empty());
    assert_eq!(files(&spool), 1);
}
