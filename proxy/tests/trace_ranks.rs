//! End-to-end trace collection on the proxy side (paper §4.4): Starlight
//! images in a real `docker-registry`, the proxy on real QUIC on 127.0.0.1
//! with a real RocksDB. Traces are uploaded over QUIC, folded into ranks, and
//! the bundle body follows them; a never-traced newer version inherits them;
//! `unordered` requests get layer order.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::sync::{Arc, Mutex, OnceLock};

use common::layout::Layer;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use transport_quic::quic::{Client, ClientError};
use transport_quic::{ErrorCode, RanksQuery, Request, Source, Trace, TraceOpen, TraceUpload};

type Files = Vec<(String, Vec<u8>)>;

/// Everything the proxy logs in this test binary (a global subscriber: the
/// server logs from tokio's worker threads).
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bottom layer: `lib/f00..f09`; top layer: `app/x0..x4`. Distinct contents.
fn files(version: u32) -> (Files, Files) {
    let lib = (0..10)
        .map(|i| {
            (
                format!("lib/f{i:02}"),
                format!("lib {i} v{version}\n").repeat(200 + i).into_bytes(),
            )
        })
        .collect();
    let app = (0..5)
        .map(|i| {
            (
                format!("app/x{i}"),
                format!("app {i} v{version}\n").repeat(100 + i).into_bytes(),
            )
        })
        .collect();
    (lib, app)
}

fn layer(files: &Files, mtime: u64) -> Layer {
    starlight_layer(&tar_of(files, mtime), Compression::Gzip)
}

fn push(reg: &TestRegistry, tag: &str, version: u32) -> String {
    let (lib, app) = files(version);
    let mtime = 1_700_000_000 + u64::from(version) * 1000;
    push_image(
        reg,
        "trace/app",
        tag,
        &[layer(&lib, mtime), layer(&app, mtime)],
    )
}

/// Every path in layer order (bottom layer first, then tar order).
fn layer_order() -> Vec<String> {
    let (lib, app) = files(1);
    lib.iter().chain(&app).map(|(p, _)| p.clone()).collect()
}

/// The path of each payload, in body order.
fn body_order(bundle: &Bundle) -> Vec<String> {
    (0..bundle.header.payloads.len())
        .map(|i| {
            bundle
                .header
                .toc
                .iter()
                .find(|e| e.source == Source::Payload(i as u32))
                .unwrap()
                .path
                .clone()
        })
        .collect()
}

fn trace(id: &str, image: &str, digest: &str, order: &[&str]) -> TraceUpload {
    TraceUpload {
        token: TOKEN.into(),
        trace: Trace {
            id: id.into(),
            image: image.into(),
            manifest_digest: digest.into(),
            opens: order
                .iter()
                .enumerate()
                .map(|(i, p)| TraceOpen {
                    path: p.to_string(),
                    layer: u32::from(p.starts_with("app/")),
                    rank: i as u32,
                    ms_since_start: 10 * i as u64,
                    ms_waited: 3,
                })
                .collect(),
        },
    }
}

async fn bundle(client: &Client, proxy: &Proxy, image: &str, unordered: bool) -> Bundle {
    let req = Request {
        unordered,
        ..request(image, &[])
    };
    let b = fetch(client, proxy.addr, &req).await.unwrap();
    verify(&b).unwrap();
    b
}

/// The access order the traces record: neither layer order nor its reverse.
const ACCESS: [&str; 5] = ["app/x3", "lib/f07", "app/x0", "lib/f01", "lib/f09"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_traces_order_the_body_and_unordered_keeps_layer_order() {
    let reg = TestRegistry::start();
    let v1 = push(&reg, "v1", 1);
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();

    // Before any trace: layer order, ordered or not.
    let plain = bundle(&client, &proxy, "trace/app:v1", false).await;
    assert_eq!(body_order(&plain), layer_order());

    // A trace, acknowledged after its commit; the same trace again counts nothing.
    let t1 = trace("trace-1", "trace/app:v1", &v1, &ACCESS);
    let ack = client
        .upload_trace(proxy.addr, "127.0.0.1", &t1)
        .await
        .unwrap();
    assert_eq!((ack.duplicate, ack.folded, ack.ignored), (false, 5, 0));
    assert_eq!(proxy.db.trace_count(&v1).unwrap(), 1);
    let again = client
        .upload_trace(proxy.addr, "127.0.0.1", &t1)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(proxy.db.trace_count(&v1).unwrap(), 1);
    // A second run, same order, plus a path the image lacks and a repeat.
    let mut second: Vec<&str> = ACCESS.to_vec();
    second.extend(["etc/not-in-image", "app/x3"]);
    let ack = client
        .upload_trace(
            proxy.addr,
            "127.0.0.1",
            &trace("trace-2", "trace/app:v1", &v1, &second),
        )
        .await
        .unwrap();
    assert_eq!((ack.folded, ack.ignored), (5, 2));
    assert_eq!(proxy.handler.stats().traces, 2);

    // Ranks: the access order, 2 hits each, rank sums 2 × position.
    let ranks = client
        .ranks(
            proxy.addr,
            "127.0.0.1",
            &RanksQuery {
                token: TOKEN.into(),
                image: "trace/app:v1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ranks.manifest_digest, v1);
    assert_eq!(ranks.traces, 2);
    assert_eq!(ranks.inherited_from, None);
    let listed: Vec<(&str, u64, u64)> = ranks
        .ranks
        .iter()
        .map(|r| (r.path.as_str(), r.rank_sum, r.hits))
        .collect();
    let expected: Vec<(&str, u64, u64)> = ACCESS
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 2 * i as u64, 2))
        .collect();
    assert_eq!(listed, expected);

    // The body now starts with the traced files in access order, then the
    // rest in layer order.
    let ordered = bundle(&client, &proxy, "trace/app:v1", false).await;
    let order = body_order(&ordered);
    assert_eq!(&order[..ACCESS.len()], &ACCESS);
    let rest: Vec<String> = layer_order()
        .into_iter()
        .filter(|p| !ACCESS.contains(&p.as_str()))
        .collect();
    assert_eq!(&order[ACCESS.len()..], rest.as_slice());

    // Unordered (trace collection) still gets layer order, right after an
    // ordered plan of the same image was cached.
    let unordered = bundle(&client, &proxy, "trace/app:v1", true).await;
    assert_eq!(body_order(&unordered), layer_order());
    assert_eq!(unordered.header.toc.len(), ordered.header.toc.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_traced_newer_version_inherits_the_older_order() {
    let logs = captured_logs();
    let reg = TestRegistry::start();
    let v1 = push(&reg, "v1", 1);
    let v2 = push(&reg, "v2", 2);
    assert_ne!(v1, v2);
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();
    // v1 is indexed first, then v2: v1 is the older version.
    bundle(&client, &proxy, "trace/app:v1", true).await;
    bundle(&client, &proxy, "trace/app:v2", true).await;
    client
        .upload_trace(
            proxy.addr,
            "127.0.0.1",
            &trace("v1-run", "trace/app:v1", &v1, &ACCESS),
        )
        .await
        .unwrap();

    let b2 = bundle(&client, &proxy, "trace/app:v2", false).await;
    assert_eq!(b2.header.manifest_digest, v2);
    assert_eq!(&body_order(&b2)[..ACCESS.len()], &ACCESS);
    let ranks = client
        .ranks(
            proxy.addr,
            "127.0.0.1",
            &RanksQuery {
                token: TOKEN.into(),
                image: "trace/app:v2".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ranks.traces, 0);
    let from = ranks.inherited_from.unwrap();
    assert!(from.contains(&v1), "{from}");
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = format!(
        "ranks of {}/trace/app:v2 ({v2}) inherited from {}/trace/app:v1 ({v1})",
        reg.addr, reg.addr
    );
    assert!(text.contains(&line), "no {line:?} in the logs:\n{text}");
    assert_eq!(ranks.ranks.len(), ACCESS.len());

    // The older version never inherits from the newer one.
    let v2_order = ["lib/f02", "app/x4"];
    client
        .upload_trace(
            proxy.addr,
            "127.0.0.1",
            &trace("v2-run", "trace/app:v2", &v2, &v2_order),
        )
        .await
        .unwrap();
    // v2 now has ranks of its own and uses them alone.
    let b2 = bundle(&client, &proxy, "trace/app:v2", false).await;
    assert_eq!(&body_order(&b2)[..2], &v2_order);
    assert_eq!(
        proxy
            .db
            .older_traced_version(&proxy.db.image(&v1).unwrap().unwrap())
            .unwrap(),
        None
    );
    let b1 = bundle(&client, &proxy, "trace/app:v1", false).await;
    assert_eq!(&body_order(&b1)[..ACCESS.len()], &ACCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_uploads_are_checked() {
    let reg = TestRegistry::start();
    let v1 = push(&reg, "v1", 1);
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();
    bundle(&client, &proxy, "trace/app:v1", true).await;

    let mut bad_token = trace("t-bad", "trace/app:v1", &v1, &ACCESS);
    bad_token.token = "wrong".into();
    let err = client
        .upload_trace(proxy.addr, "127.0.0.1", &bad_token)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");

    let unknown = trace("t-unknown", "trace/app:v9", "sha256:0123", &ACCESS);
    let err = client
        .upload_trace(proxy.addr, "127.0.0.1", &unknown)
        .await
        .unwrap_err();
    match &err {
        ClientError::Proxy(f) => assert_eq!(f.code, ErrorCode::NotFound, "{err}"),
        e => panic!("expected NotFound, got {e}"),
    }
    assert_eq!(proxy.db.trace("t-bad").unwrap(), None);
    assert_eq!(proxy.db.trace("t-unknown").unwrap(), None);
    assert_eq!(proxy.db.trace_count(&v1).unwrap(), 0);
    assert_eq!(proxy.handler.stats().traces, 0);
}
