//! Trace uploads from one token cannot dominate an image's ranks, and stored
//! traces are capped per image. Real in-process bundle server and RocksDB,
//! real `docker-registry`, loopback only.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod abuse_support;
mod common;
mod serve_support;

use std::time::Duration;

use abuse_support::*;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use transport_quic::quic::{ClientError, ServerOptions};
use transport_quic::{ErrorCode, RanksQuery, Trace, TraceOpen, TraceUpload};

fn upload(token: &str, id: &str, image: &str, digest: &str) -> TraceUpload {
    TraceUpload {
        token: token.into(),
        trace: Trace {
            id: id.into(),
            image: image.into(),
            manifest_digest: digest.into(),
            opens: ["app/b", "app/a"]
                .iter()
                .enumerate()
                .map(|(i, p)| TraceOpen {
                    path: p.to_string(),
                    layer: 0,
                    rank: i as u32,
                    ms_since_start: i as u64,
                    ms_waited: 0,
                })
                .collect(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_uploads_are_bounded_per_token_and_in_storage() {
    let reg = TestRegistry::start();
    let files = vec![
        ("app/a".to_string(), b"a\n".repeat(100)),
        ("app/b".to_string(), b"b\n".repeat(100)),
    ];
    let digest = push_image(
        &reg,
        "traces/app",
        "v1",
        &[starlight_layer(&tar_of(&files, 1), Compression::Zstd)],
    );
    let proxy = AbuseProxy::start(
        &reg,
        ServeOptions {
            max_stored_traces: 2,
            ..ServeOptions::default()
        },
        ServerOptions {
            max_traces_per_token: 3,
            trace_window: Duration::from_secs(3600),
            ..ServerOptions::default()
        },
    );
    let image = "traces/app:v1";
    let b = fetch(&proxy.client(), proxy.addr, &request(image, &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    let client = proxy.client();

    // One token: 3 uploads accepted, the rest refused.
    let mut refused = 0;
    for i in 0..6 {
        let u = upload(TOKEN, &format!("a-{i}"), image, &digest);
        match client.upload_trace(proxy.addr, "127.0.0.1", &u).await {
            Ok(ack) => assert!(!ack.duplicate && ack.folded == 2, "{ack:?}"),
            Err(ClientError::Proxy(f)) => {
                assert_eq!(f.code, ErrorCode::Unavailable, "{f}");
                assert!(f.message.contains("too many trace uploads"), "{f}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(proxy.db.trace_count(&digest).unwrap(), 3);
    // The token's weight in the ranks: 3 traces, not 6.
    let ranks = client
        .ranks(
            proxy.addr,
            "127.0.0.1",
            &RanksQuery {
                token: OTHER_TOKEN.into(),
                image: image.into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ranks.traces, 3);
    assert!(ranks.ranks.iter().all(|r| r.hits == 3), "{:?}", ranks.ranks);
    // Storage: at most 2 trace bodies for the image, the oldest dropped...
    assert_eq!(proxy.db.stored_traces(&digest).unwrap(), 2);
    assert!(proxy.db.trace("a-0").unwrap().is_none());
    assert!(proxy.db.trace("a-2").unwrap().is_some());
    // ...but still known: a retried upload of it counts nothing.
    let again = client
        .upload_trace(
            proxy.addr,
            "127.0.0.1",
            &upload(OTHER_TOKEN, "a-0", image, &digest),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    // Another token has its own allowance; storage stays capped.
    for i in 0..2 {
        let ack = client
            .upload_trace(
                proxy.addr,
                "127.0.0.1",
                &upload(OTHER_TOKEN, &format!("b-{i}"), image, &digest),
            )
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }
    assert_eq!(proxy.db.trace_count(&digest).unwrap(), 5);
    assert_eq!(proxy.db.stored_traces(&digest).unwrap(), 2);
    assert!(proxy.db.trace("a-2").unwrap().is_none());
    assert!(proxy.db.trace("b-1").unwrap().is_some());
    assert_eq!(proxy.stats().traces_refused, 3);
}
