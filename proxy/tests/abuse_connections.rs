//! Abusive clients of the proxy, at the connection level, against the real
//! in-process bundle server and a real `docker-registry` on loopback: idle
//! unauthenticated connections, requests before the token, wrong tokens.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod abuse_support;
mod common;
mod serve_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use abuse_support::*;
use common::registry::TestRegistry;
use futures_util::{stream, StreamExt};
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use transport_quic::quic::{ClientError, ServerOptions};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn push_small_image(reg: &TestRegistry, name: &str) {
    let files = vec![
        ("app/noise.bin".to_string(), noise(7, 2 << 20)),
        ("app/text".to_string(), b"hello\n".repeat(5000)),
    ];
    push_image(
        reg,
        name,
        "v1",
        &[starlight_layer(&tar_of(&files, 1), Compression::Zstd)],
    );
}

/// The application close code of a connection the server closed, if it did.
fn server_close_code(conn: &quinn::Connection) -> Option<u64> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// Opens `n` connections from each address of `plan` (256 handshakes at a time),
/// never authenticating; the client endpoints are pushed to `endpoints`.
async fn attack(
    plan: &[(IpAddr, usize)],
    proxy: &AbuseProxy,
    endpoints: &mut Vec<quinn::Endpoint>,
) -> Vec<(IpAddr, Result<quinn::Connection, String>)> {
    let mut attempts = Vec::new();
    for (ip, n) in plan {
        let endpoint = raw_endpoint(*ip, &proxy.cert_pem);
        for _ in 0..*n {
            attempts.push((endpoint.clone(), *ip));
        }
        endpoints.push(endpoint);
    }
    let addr = proxy.addr;
    stream::iter(attempts)
        .map(|(endpoint, ip)| async move {
            let connecting = match endpoint.connect(addr, "127.0.0.1") {
                Ok(c) => c,
                Err(e) => return (ip, Err(e.to_string())),
            };
            let r = match tokio::time::timeout(Duration::from_secs(20), connecting).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timeout".into()),
            };
            (ip, r)
        })
        .buffer_unordered(256)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_unauthenticated_connections_do_not_stop_a_fetch() {
    let reg = TestRegistry::start();
    push_small_image(&reg, "abuse/conn");
    // A long auth timeout: only Retry, the per-address limit and the eviction of
    // the oldest unauthenticated connection protect the server here.
    let server_options = ServerOptions {
        auth_timeout: Duration::from_secs(120),
        ..ServerOptions::default()
    };
    let (per_address, max_unauth) = (
        server_options.max_connections_per_address,
        server_options.max_unauthenticated,
    );
    let proxy = AbuseProxy::start(&reg, ServeOptions::default(), server_options);
    let image = "abuse/conn:v1";

    // Baseline (this also indexes the image).
    let started = Instant::now();
    let b = fetch(&proxy.client(), proxy.addr, &request(image, &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    let baseline = started.elapsed();

    // 2,000 connection attempts that never authenticate. First 100 from 127.0.0.2
    // alone (over the per-address limit; no eviction can free its places yet, as
    // fewer than `max_unauthenticated` are open), then 50 each from 127.0.0.3 ..=
    // 127.0.0.40 while 127.0.0.2 still holds its connections.
    let second: Vec<(IpAddr, usize)> = (3..=40).map(|i| (loopback(i), 50usize)).collect();
    let total: usize = 100 + second.iter().map(|(_, n)| n).sum::<usize>();
    assert_eq!(total, 2000);
    assert!(100 < max_unauth, "the first wave must not evict");
    let attack_started = Instant::now();
    let mut endpoints = Vec::new();
    let mut results = attack(&[(loopback(2), 100)], &proxy, &mut endpoints).await;
    results.extend(attack(&second, &proxy, &mut endpoints).await);
    let attack_time = attack_started.elapsed();
    let established: Vec<&quinn::Connection> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let refused = results.iter().filter(|(_, r)| r.is_err()).count();
    let refused_first_address = results
        .iter()
        .filter(|(ip, r)| *ip == loopback(2) && r.is_err())
        .count();
    let stats_during = proxy.stats();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (_, r) in &results {
        if let Err(e) = r {
            *kinds.entry(e.clone()).or_default() += 1;
        }
    }

    // The legitimate fetch, on a new connection, while the attackers hold theirs.
    let started = Instant::now();
    let b = fetch(&proxy.client(), proxy.addr, &request(image, &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    let under_attack = started.elapsed();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let evicted = established
        .iter()
        .filter(|c| server_close_code(c) == Some(2))
        .count();
    let still_open = established
        .iter()
        .filter(|c| c.close_reason().is_none())
        .count();
    let stats = proxy.stats();
    println!(
        "2000 idle attempts in {attack_time:?}: {} handshakes completed, {refused} refused \
         ({refused_first_address} of 100 from 127.0.0.2), {evicted} evicted, {still_open} still open; \
         server: {stats:?}; legit fetch {baseline:?} before, {under_attack:?} under attack; \
         refusals: {kinds:?}",
        established.len()
    );
    // Every attempt was first sent a Retry: no slot before the address is proven.
    assert!(stats.retries >= 2000, "{stats:?}");
    // The per-address limit refused 127.0.0.2's attempts beyond it.
    assert!(
        refused_first_address >= 100 - per_address,
        "{refused_first_address} of 100 refused with a limit of {per_address}"
    );
    assert!(
        stats.refused_address >= (100 - per_address) as u64,
        "{stats:?}"
    );
    assert!(per_address < 100);
    // At most `max_unauthenticated` idle connections survive; the rest were closed.
    assert!(
        stats_during.unauthenticated as usize <= max_unauth,
        "{stats_during:?}"
    );
    assert!(stats.unauthenticated as usize <= max_unauth, "{stats:?}");
    assert!(still_open as u64 <= stats.open, "{still_open} {stats:?}");
    assert!(
        evicted + refused + still_open >= 2000 - 5,
        "{evicted} + {refused} + {still_open}"
    );
    assert!(stats.authenticated >= 2, "{stats:?}");
    assert!(
        under_attack < Duration::from_secs(15),
        "legit fetch took {under_attack:?}"
    );
    for e in endpoints {
        e.close(0u32.into(), b"done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_large_is_read_before_the_token_and_bad_tokens_are_refused() {
    let reg = TestRegistry::start();
    push_small_image(&reg, "abuse/auth");
    let proxy = AbuseProxy::start(
        &reg,
        ServeOptions::default(),
        ServerOptions {
            auth_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    );
    let endpoint = raw_endpoint(loopback(1), &proxy.cert_pem);

    // A 16 MiB Request where the Auth frame belongs: the server reads the frame
    // header, refuses it and closes the connection; the client cannot push more
    // than the unauthenticated window (16 KiB) meanwhile.
    let conn = endpoint
        .connect(proxy.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut wire = transport_quic::codec::preamble().to_vec();
    wire.push(transport_quic::codec::FrameKind::Request.code());
    wire.extend_from_slice(&(16u32 << 20).to_le_bytes());
    wire.extend(std::iter::repeat_n(0u8, 1 << 20));
    let started = Instant::now();
    let written = tokio::time::timeout(Duration::from_secs(10), send.write_all(&wire)).await;
    assert!(
        matches!(written, Ok(Err(_))),
        "the server should close the connection, not read 1 MiB: {written:?}"
    );
    assert_eq!(
        server_close_code(&conn),
        Some(3),
        "{:?}",
        conn.close_reason()
    );
    println!("request-before-token refused in {:?}", started.elapsed());

    // Before the token: the Auth stream and one pipelined request stream open, a
    // third does not, and the two together cannot push more than the
    // unauthenticated window (16 KiB).
    let conn = endpoint
        .connect(proxy.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (_s1, _r1) = conn.open_bi().await.unwrap();
    let (mut s2, _r2) = conn.open_bi().await.unwrap();
    let third = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(third.is_err(), "a third stream opened before the token");
    let pushed = tokio::time::timeout(
        Duration::from_millis(500),
        s2.write_all(&vec![0u8; 64 * 1024]),
    )
    .await;
    // Either flow control holds the write (timeout) or the server closes
    // the connection on a stream that is no request: never accepted whole.
    assert!(
        !matches!(pushed, Ok(Ok(()))),
        "64 KiB pushed before the token: {pushed:?}"
    );

    // An idle connection is closed after the auth timeout.
    let idle = endpoint
        .connect(proxy.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.closed()).await;
    assert!(closed.is_ok(), "idle connection still open");
    assert_eq!(server_close_code(&idle), Some(3));

    // A wrong token: refused at once, as Unauthorized.
    let mut req = request("abuse/auth:v1", &[]);
    req.token = "not-a-token".into();
    match fetch(&proxy.client(), proxy.addr, &req).await {
        Err(ClientError::Unauthorized(m)) => assert!(m.contains("not accepted"), "{m}"),
        Err(e) => panic!("expected Unauthorized, got {e}"),
        Ok(_) => panic!("a wrong token was served"),
    }
    let stats = proxy.stats();
    assert!(stats.auth_failed >= 3, "{stats:?}");
    // Nothing was indexed on behalf of the refused connections.
    assert!(proxy
        .db
        .image_by_reference(&format!("{}/abuse/auth:v1", reg.addr))
        .unwrap()
        .is_none());

    // And the right token still works.
    let b = fetch(&proxy.client(), proxy.addr, &request("abuse/auth:v1", &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    endpoint.close(0u32.into(), b"done");
}
