//! The Delta Bundle Protocol over real QUIC on 127.0.0.1.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use transport_quic::quic::{Client, ClientError, ClientOptions, ClientTls, TransportTuning};
use transport_quic::quic::{Server, ServerOptions, ServerTls};
use transport_quic::{ErrorCode, Event};

fn handler(bundles: Vec<(&str, Synthetic)>, mode: Mode) -> Arc<SyntheticHandler> {
    Arc::new(SyntheticHandler {
        bundles: bundles
            .into_iter()
            .map(|(name, b)| (name.to_string(), Arc::new(b)))
            .collect::<HashMap<_, _>>(),
        mode,
        write_size: 100 * 1024,
    })
}

/// 200 payloads of random sizes: most small, one in ten up to 3 MiB, some empty.
fn mixed_sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| match i % 10 {
            0 => rng.below(3 * 1024 * 1024) as usize,
            1 if i % 20 == 1 => 0,
            _ => rng.below(64 * 1024) as usize,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_bundle_of_200_payloads_arrives_intact() {
    let bundle = synthetic(1, &mixed_sizes(1, 200));
    let expected_header = bundle.header.clone();
    let expected_bodies = bundle.bodies.clone();
    let (server, cert) = start_server(handler(vec![("app:v1", bundle)], Mode::Complete));
    let client = client_trusting(&cert);
    let started = std::time::Instant::now();
    let (header, bodies) = fetch_verified(&client, server.local_addr(), &request("app:v1", TOKEN))
        .await
        .unwrap();
    let total: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "200 payloads, {:.1} MiB in {:?}",
        total as f64 / 1048576.0,
        started.elapsed()
    );
    assert_eq!(header, expected_header);
    assert_eq!(bodies, expected_bodies);
    // The same client fetches again over its cached connection.
    fetch_verified(
        &client,
        server.local_addr(),
        &request("app:v1", "another-token"),
    )
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_token_is_refused_clearly() {
    let (server, cert) = start_server(handler(vec![("app", synthetic(2, &[10]))], Mode::Complete));
    let client = client_trusting(&cert);
    let err = fetch_verified(&client, server.local_addr(), &request("app", "guess"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");
    assert!(
        err.to_string().starts_with("proxy refused the token"),
        "{err}"
    );
    // The connection stays usable for a good request.
    fetch_verified(&client, server.local_addr(), &request("app", TOKEN))
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_image_is_a_clear_proxy_error() {
    let (server, cert) = start_server(handler(vec![], Mode::Complete));
    let client = client_trusting(&cert);
    let err = fetch_verified(&client, server.local_addr(), &request("nope", TOKEN))
        .await
        .unwrap_err();
    match &err {
        ClientError::Proxy(frame) => assert_eq!(frame.code, ErrorCode::NotFound),
        other => panic!("expected a NotFound error, got {other}"),
    }
    assert_eq!(err.to_string(), "proxy error: not found: no image nope");
    server.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificates_are_refused_clearly() {
    let (server, cert) = start_server(handler(
        vec![("app", synthetic(3, &[5, 6]))],
        Mode::Complete,
    ));
    let addr = server.local_addr();
    let (other_cert, _) = transport_quic::tls::self_signed(&["localhost"]).unwrap();

    // A CA that did not sign the proxy's certificate.
    let client = client_trusting(&other_cert);
    let err = fetch_verified(&client, addr, &request("app", TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateNotTrusted(_)),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("certificate not trusted: "),
        "{err}"
    );
    eprintln!("untrusted CA: {err}");

    // The wrong pinned certificate.
    let other_der = transport_quic::tls::certs_from_pem(other_cert.as_bytes(), "other").unwrap();
    let client = Client::new(ClientTls::PinnedCert(other_der[0].to_vec())).unwrap();
    let err = fetch_verified(&client, addr, &request("app", TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateNotTrusted(_)),
        "{err}"
    );
    assert!(err.to_string().contains("pinned"), "{err}");
    eprintln!("wrong pin: {err}");

    // The right pinned certificate, under any server name.
    let der = transport_quic::tls::certs_from_pem(cert.as_bytes(), "cert").unwrap();
    let client = Client::new(ClientTls::PinnedCert(der[0].to_vec())).unwrap();
    let mut stream = client
        .fetch(addr, "proxy.example", &request("app", TOKEN))
        .await
        .unwrap();
    while stream.next_event().await.unwrap().is_some() {}

    // The right CA from a file, but a name the certificate does not cover.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let client = Client::new(ClientTls::CaFile(ca.clone())).unwrap();
    let err = client
        .fetch(addr, "elsewhere.example", &request("app", TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateNotTrusted(_)),
        "{err}"
    );
    fetch_verified(&client, addr, &request("app", TOKEN))
        .await
        .unwrap();

    // A CA file that is missing or holds no certificate.
    let err = Client::new(ClientTls::CaFile(dir.path().join("missing.pem"))).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    std::fs::write(dir.path().join("empty.pem"), "nothing here").unwrap();
    assert!(Client::new(ClientTls::CaFile(dir.path().join("empty.pem"))).is_err());
    server.shutdown().await;
}

async fn expect_truncated(mode: Mode) -> ClientError {
    let sizes = vec![200 * 1024; 10];
    let (server, cert) = start_server(handler(vec![("app", synthetic(4, &sizes))], mode));
    let client = client_trusting(&cert);
    let err = fetch_verified(&client, server.local_addr(), &request("app", TOKEN))
        .await
        .unwrap_err();
    server.shutdown().await;
    err
}

#[tokio::test]
async fn handler_stopping_mid_body_is_truncation_never_success() {
    let err = expect_truncated(Mode::StopMidBody).await;
    assert!(matches!(err, ClientError::Truncated(_)), "{err}");
    assert!(err.to_string().starts_with("bundle truncated"), "{err}");
    eprintln!("handler stopped: {err}");
    let err = expect_truncated(Mode::AbortMidBody).await;
    assert!(matches!(err, ClientError::Truncated(_)), "{err}");
}

#[tokio::test]
async fn handler_failing_mid_body_sends_its_error() {
    let err = expect_truncated(Mode::FailMidBody).await;
    match err {
        ClientError::Proxy(frame) => {
            assert_eq!(frame.code, ErrorCode::Upstream);
            assert_eq!(frame.message, "the registry went away");
        }
        other => panic!("expected the handler's error, got {other}"),
    }
}

#[tokio::test]
async fn server_shutdown_mid_bundle_is_truncation() {
    let sizes = vec![1024 * 1024; 64];
    let (server, cert) = start_server(handler(vec![("big", synthetic(5, &sizes))], Mode::Complete));
    // The CONNECTION_CLOSE may be lost while the client's socket is flooded; then only
    // the idle timeout tells the client: keep it short here.
    let options = ClientOptions {
        transport: TransportTuning {
            idle_timeout: std::time::Duration::from_secs(2),
            keep_alive: None,
            ..TransportTuning::default()
        },
        ..ClientOptions::default()
    };
    let client = Client::with_options(ClientTls::CaPem(cert.into_bytes()), options).unwrap();
    let mut stream = client
        .fetch(server.local_addr(), "localhost", &request("big", TOKEN))
        .await
        .unwrap();
    // Read the header, then cut the server off.
    assert!(matches!(
        stream.next_event().await.unwrap(),
        Some(transport_quic::Event::Header(_))
    ));
    let t = std::time::Instant::now();
    server.shutdown().await;
    eprintln!("shutdown took {:?}", t.elapsed());
    let err = loop {
        match stream.next_event().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a cut-off bundle was reported complete"),
            Err(e) => break e,
        }
    };
    eprintln!("after {:?}: {err}", t.elapsed());
    assert!(matches!(err, ClientError::Truncated(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_fetches_all_complete() {
    let bundles: Vec<(String, Synthetic)> = (0..20u64)
        .map(|i| {
            (
                format!("img{i}"),
                synthetic(100 + i, &mixed_sizes(100 + i, 20)),
            )
        })
        .collect();
    let expected: HashMap<String, Vec<Vec<u8>>> = bundles
        .iter()
        .map(|(n, b)| (n.clone(), b.bodies.clone()))
        .collect();
    let named = bundles.into_iter().map(|(n, b)| (n, Arc::new(b))).collect();
    let (server, cert) = start_server(Arc::new(SyntheticHandler {
        bundles: named,
        mode: Mode::Complete,
        write_size: 64 * 1024,
    }));
    let addr = server.local_addr();
    let client = Arc::new(client_trusting(&cert));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("img{i}");
            let (_, bodies) = fetch_verified(&client, addr, &request(&name, TOKEN))
                .await
                .unwrap();
            (name, bodies)
        }));
    }
    for t in tasks {
        let (name, bodies) = t.await.unwrap();
        assert_eq!(bodies, expected[&name], "{name}");
    }
    server.shutdown().await;
}

/// A raw quinn connection (no `Client`), to send what a well-behaved client never would.
async fn raw_connection(addr: std::net::SocketAddr, cert_pem: &str) -> quinn::Connection {
    let mut roots = rustls::RootCertStore::empty();
    for c in transport_quic::tls::certs_from_pem(cert_pem.as_bytes(), "cert").unwrap() {
        roots.add(c).unwrap();
    }
    let mut crypto =
        rustls::ClientConfig::builder_with_provider(transport_quic::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    crypto.alpn_protocols = vec![transport_quic::quic::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    // The connection's first stream carries the token.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let auth = transport_quic::codec::encode_auth(
        &transport_quic::codec::Auth {
            token: TOKEN.into(),
        },
        &transport_quic::Limits::default(),
    )
    .unwrap();
    send.write_all(&auth).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(4096).await.unwrap();
    let mut dec = transport_quic::codec::AuthReplyDecoder::default();
    dec.feed(&answer);
    assert_eq!(
        dec.next_frame_message().unwrap(),
        Some(transport_quic::codec::AuthReply::Accepted)
    );
    conn
}

/// Sends `bytes` on a new stream (finishing it if asked) and decodes the answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Vec<Event> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    let mut dec = transport_quic::codec::ResponseDecoder::default();
    dec.feed(&answer);
    let mut events = Vec::new();
    while let Some(ev) = dec.next_event().unwrap() {
        events.push(ev);
    }
    dec.finish().unwrap();
    events
}

fn bad_request_message(events: &[Event]) -> String {
    match events {
        [Event::Error(e)] => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            e.message.clone()
        }
        other => panic!("expected one BadRequest error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let (cert, key) = transport_quic::tls::self_signed(&["localhost"]).unwrap();
    let options = ServerOptions {
        request_timeout: std::time::Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let server = Server::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.into_bytes(),
        },
        [TOKEN],
        handler(vec![("app", synthetic(6, &[1]))], Mode::Complete),
        options,
    )
    .unwrap();
    let conn = raw_connection(server.local_addr(), &cert).await;

    let msg = bad_request_message(&raw_exchange(&conn, b"SLDB\x07\x00", true).await);
    assert_eq!(
        msg,
        "protocol version 7 is not supported (this build speaks 2 to 4)"
    );
    // What a client falls back on (asking again in an older version) against a
    // proxy that predates its version.
    let refused = |message: &str| {
        transport_quic::quic::ClientError::Proxy(transport_quic::ErrorFrame {
            code: ErrorCode::BadRequest,
            message: message.to_string(),
        })
    };
    assert!(refused(&msg).is_unsupported_version());
    let msg = bad_request_message(&raw_exchange(&conn, b"GET / HTTP/1.1\r\n", true).await);
    assert!(
        msg.starts_with("not a Delta Bundle Protocol stream"),
        "{msg}"
    );
    assert!(!refused(&msg).is_unsupported_version());

    // A request frame announcing 17 MiB is refused from its header.
    let mut big = transport_quic::codec::preamble().to_vec();
    big.push(transport_quic::codec::FrameKind::Request.code());
    big.extend_from_slice(&(17u32 << 20).to_le_bytes());
    let msg = bad_request_message(&raw_exchange(&conn, &big, false).await);
    assert!(msg.contains("exceeds the limit"), "{msg}");

    // A request that never completes is cut off by the timeout.
    let msg = bad_request_message(&raw_exchange(&conn, b"SLDB", false).await);
    assert!(msg.contains("did not arrive within"), "{msg}");

    // Bytes after the request.
    let mut extra = transport_quic::codec::RequestEncoder::default()
        .encode(&request("app", TOKEN))
        .unwrap()
        .to_vec();
    extra.push(0);
    let msg = bad_request_message(&raw_exchange(&conn, &extra, true).await);
    assert!(msg.contains("garbage"), "{msg}");

    // And a good request on the same connection still works.
    let good = transport_quic::codec::RequestEncoder::default()
        .encode(&request("app", TOKEN))
        .unwrap();
    let events = raw_exchange(&conn, &good, true).await;
    assert!(matches!(events.last(), Some(Event::End(_))));
    server.shutdown().await;
}

#[tokio::test]
async fn server_refuses_to_start_without_tokens() {
    let (cert, key) = transport_quic::tls::self_signed(&["localhost"]).unwrap();
    let tls = ServerTls {
        cert_chain_pem: cert.into_bytes(),
        key_pem: key.into_bytes(),
    };
    let err = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls.clone(),
        Vec::<String>::new(),
        handler(vec![], Mode::Complete),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no token"), "{err}");
    let bad = ServerTls {
        key_pem: b"not a key".to_vec(),
        ..tls
    };
    let err = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        bad,
        [TOKEN],
        handler(vec![], Mode::Complete),
    )
    .unwrap_err();
    assert!(err.to_string().contains("server key"), "{err}");
}

#[tokio::test]
async fn certificate_for_an_ip_address_verifies_by_ip() {
    let (cert, key) = transport_quic::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.into_bytes(),
        },
        [TOKEN],
        handler(vec![("app", synthetic(7, &[3, 4]))], Mode::Complete),
    )
    .unwrap();
    let client = client_trusting(&cert);
    let mut stream = client
        .fetch(server.local_addr(), "127.0.0.1", &request("app", TOKEN))
        .await
        .unwrap();
    let mut events = 0;
    while stream.next_event().await.unwrap().is_some() {
        events += 1;
    }
    // Header, 2 × (begin, data, end), End.
    assert_eq!(events, 8);
    let err = client
        .fetch(server.local_addr(), "127.0.0.2", &request("app", TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateNotTrusted(_)),
        "{err}"
    );
    server.shutdown().await;
}
