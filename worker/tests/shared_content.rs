//! Two concurrent receives share a content: the one whose proxy goes away
//! gives up (its own contents fail), but the shared content, still expected
//! by the other receive, stays pending and its waiter gets it ready when
//! the other stream delivers it; it never fails. Real `docker-registry`,
//! two proxies served in-process over real QUIC on 127.0.0.1 (paced), one
//! content store and waiter map. No root needed.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::receiver::{self, Backoff, ReceiveOptions};
use starlight_worker::store::Store;
use starlight_worker::waiters::{ContentState, ContentWaiters};

const BOUND: Duration = Duration::from_secs(60);

fn image(reg: &TestRegistry, tag: &str, files: &[(String, Vec<u8>)]) -> String {
    let layer = starlight_layer(&tar_of(files, 1_700_000_000), Compression::Gzip);
    push_image(reg, "worker/shared", tag, &[layer]);
    format!("worker/shared:{tag}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pull_does_not_fail_what_another_pull_still_expects() {
    let reg = TestRegistry::start();
    let shared = noise(5, 3 << 20);
    let (own_a, own_b) = (noise(6, 1 << 20), noise(7, 6 << 20));
    // A sends the shared content first; B sends its own big file first.
    let a = image(
        &reg,
        "a",
        &[
            ("a/1-shared".into(), shared.clone()),
            ("a/2-own".into(), own_a.clone()),
        ],
    );
    let b = image(
        &reg,
        "b",
        &[
            ("b/1-own".into(), own_b.clone()),
            ("b/2-shared".into(), shared.clone()),
        ],
    );
    let paced = || ServeOptions {
        rate_limit: Some(2_000_000),
        ..ServeOptions::default()
    };
    let mut proxy_a = Proxy::start(&reg, paced());
    let proxy_b = Proxy::start(&reg, paced());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
    let waiters = Arc::new(ContentWaiters::new());
    let options = ReceiveOptions {
        server_name: "127.0.0.1".into(),
        grace: Duration::from_secs(1),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    };
    let recv_b = receiver::start(
        Arc::new(proxy_b.client()),
        proxy_b.addr.into(),
        request(&b, &[]),
        store.clone(),
        waiters.clone(),
        options.clone(),
    );
    tokio::time::timeout(BOUND, recv_b.header)
        .await
        .unwrap()
        .unwrap();
    let recv_a = receiver::start(
        Arc::new(proxy_a.client()),
        proxy_a.addr.into(),
        request(&a, &[]),
        store.clone(),
        waiters.clone(),
        options,
    );
    tokio::time::timeout(BOUND, recv_a.header)
        .await
        .unwrap()
        .unwrap();
    // A's proxy goes away for good right after A's header.
    proxy_a.stop().await;
    let (shared_sha, own_a_sha) = (sha(&shared), sha(&own_a));
    assert_eq!(waiters.expecting(&shared_sha), 2);
    let w = waiters.clone();
    let waiting = tokio::spawn(async move { w.wait(&shared_sha).await });

    let report_a = tokio::time::timeout(BOUND, recv_a.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report_a.stream_error.is_some(), "A should have given up");
    assert!(report_a.failed.contains(&own_a_sha), "{report_a:?}");
    assert!(!report_a.failed.contains(&shared_sha), "{report_a:?}");
    assert_eq!(waiters.state(&own_a_sha), Some(ContentState::Failed));
    // A gave up while B still receives its first file: the shared content
    // is still pending, not failed.
    assert!(
        !store.has(&shared_sha),
        "B delivered the shared content too early for this test"
    );
    assert_eq!(waiters.state(&shared_sha), Some(ContentState::Pending));
    assert_eq!(waiters.expecting(&shared_sha), 1);

    let report_b = tokio::time::timeout(BOUND, recv_b.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report_b.stream_error.is_none(), "{report_b:?}");
    assert!(report_b.failed.is_empty());
    assert_eq!(
        tokio::time::timeout(BOUND, waiting).await.unwrap().unwrap(),
        Some(ContentState::Ready)
    );
    assert!(store.verify(&shared_sha).unwrap());
    assert_eq!(waiters.expecting(&shared_sha), 0);
    println!(
        "A gave up after {:?} ({} streams): {:?}; B completed in {:?}",
        report_a.time_to_end,
        report_a.attempts.len(),
        report_a.stream_error,
        report_b.time_to_end
    );
}
