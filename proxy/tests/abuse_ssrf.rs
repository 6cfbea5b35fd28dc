//! SSRF through the proxy: a token holder names an image on a host the proxy
//! may not fetch from, or on an allowed host that answers with an error body.
//! Real in-process bundle server, real `docker-registry`, loopback only.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::{ResolvePolicy, ServeOptions};
use transport_quic::quic::ClientError;
use transport_quic::ErrorCode;

const SECRET: &str = "SECRET-UPSTREAM-BODY-4f1d";

/// A TCP listener on 127.0.0.1 counting connections; each is answered with
/// `answer` (if any) and closed.
fn listener(answer: Option<&'static str>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            if let Some(body) = answer {
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    (addr, count)
}

fn proxy_error(r: Result<Bundle, ClientError>) -> transport_quic::ErrorFrame {
    match r {
        Err(ClientError::Proxy(f)) => f,
        Err(e) => panic!("expected an Error frame, got {e}"),
        Ok(_) => panic!("served"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allowlist_are_refused_before_any_connection() {
    let reg = TestRegistry::start();
    let files = vec![("a/x".to_string(), b"x\n".repeat(100))];
    push_image(
        &reg,
        "ssrf/ok",
        "v1",
        &[starlight_layer(&tar_of(&files, 1), Compression::Zstd)],
    );
    let (victim, connections) = listener(None);
    // Default policy: the configured registry only.
    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();

    for image in [
        format!("{victim}/internal/app:v1"),
        format!("{victim}/internal/app@sha256:{}", "ab".repeat(32)),
        "localhost:9/x:y".to_string(),
    ] {
        let f = proxy_error(fetch(&client, proxy.addr, &request(&image, &[])).await);
        assert_eq!(f.code, ErrorCode::BadRequest, "{image}: {f}");
        assert!(
            f.message.contains("is not allowed by this proxy"),
            "{image}: {}",
            f.message
        );
        assert!(
            f.message.contains(&reg.addr),
            "names what is allowed: {}",
            f.message
        );
    }
    // Ranks queries index on demand too: the same check.
    let q = transport_quic::RanksQuery {
        token: TOKEN.into(),
        image: format!("{victim}/internal/app:v2"),
    };
    match client.ranks(proxy.addr, "127.0.0.1", &q).await {
        Err(ClientError::Proxy(f)) => assert!(f.message.contains("not allowed"), "{f}"),
        r => panic!("expected a refusal, got {r:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the proxy connected to {victim}"
    );
    assert!(
        proxy.db.images().unwrap().is_empty(),
        "something was indexed"
    );

    // The configured registry still works.
    let b = fetch(&client, proxy.addr, &request("ssrf/ok:v1", &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_bodies_stay_out_of_worker_errors() {
    let reg = TestRegistry::start();
    let body: &'static str = Box::leak(
        format!("{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\"{SECRET}\"}}]}}")
            .into_boxed_str(),
    );
    let (upstream, hits) = listener(Some(body));
    // The failing host is allowed explicitly (with the registry).
    let proxy = Proxy::start(
        &reg,
        ServeOptions {
            resolve: ResolvePolicy {
                allowed_registries: vec![reg.addr.clone(), upstream.clone()],
                ..ResolvePolicy::default()
            },
            ..ServeOptions::default()
        },
    );
    let f = proxy_error(
        fetch(
            &proxy.client(),
            proxy.addr,
            &request(&format!("{upstream}/app:v1"), &[]),
        )
        .await,
    );
    assert!(
        hits.load(Ordering::SeqCst) >= 1,
        "the allowed host was not asked"
    );
    assert_eq!(f.code, ErrorCode::Upstream, "{f}");
    assert!(
        !f.message.contains(SECRET),
        "upstream body leaked: {}",
        f.message
    );
    assert!(
        !f.message.contains("UNKNOWN"),
        "upstream body leaked: {}",
        f.message
    );
    assert!(f.message.contains("HTTP 500"), "{}", f.message);
    assert!(f.message.contains("proxy's log"), "{}", f.message);
    assert!(proxy.db.images().unwrap().is_empty());
}
