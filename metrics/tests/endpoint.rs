//! The metrics endpoint over real TCP on loopback.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starlight_metrics::prometheus_client::metrics::counter::Counter;
use starlight_metrics::prometheus_client::registry::Registry;
use starlight_metrics::{MetricsServer, HEADER_TIMEOUT, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` and reads the whole response (the server closes after one).
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let mut registry = Registry::default();
    let pulls = Counter::<u64>::default();
    registry.register("starlight_test_pulls", "Pulls", pulls.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let server = MetricsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        Arc::new(move || {
            if r.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the proxy cannot be reached".into())
            }
        }),
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let m = get(addr, "/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("application/openmetrics-text"), "{m}");
    assert!(m.contains("starlight_test_pulls_total 0\n"), "{m}");
    pulls.inc_by(3);
    let m = get(addr, "/metrics").await;
    assert!(m.contains("starlight_test_pulls_total 3\n"), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");

    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    let r = get(addr, "/readyz").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("the proxy cannot be reached"), "{r}");
    ready.store(true, Ordering::SeqCst);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

    let r = get(addr, "/nope").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = exchange(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("allow: GET, HEAD"), "{r}");
    // Garbage is refused, not served.
    let r = exchange(addr, "\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(!r.contains("200 OK"), "{r}");

    // Dropping the server stops it.
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn idle_clients_are_bounded_and_time_out() {
    let server = MetricsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Registry::default(),
        Arc::new(|| Ok(())),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // MAX_CONNECTIONS clients that never send a request hold every slot...
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so one more is closed at once, without an answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?} {buf:?}");
    // The idle ones are closed after the header timeout, which frees the slots.
    for s in &mut idle {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(HEADER_TIMEOUT * 3, s.read_to_end(&mut buf))
            .await
            .unwrap();
    }
    let waited = started.elapsed();
    assert!(waited >= HEADER_TIMEOUT, "{waited:?}");
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
}
