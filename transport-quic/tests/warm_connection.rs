//! Time to header over real QUIC on 127.0.0.1: the compressed header of protocol
//! version 3 (and version 2 still served to old clients), the token and the first
//! request pipelined on a new connection, and a warm connection reused across fetches
//! and reopened after the proxy went away.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use transport_quic::codec::{
    encode_auth, preamble_for, Auth, AuthReply, AuthReplyDecoder, RequestEncoder, ResponseDecoder,
};
use transport_quic::quic::{Client, Server, ServerTls};
use transport_quic::{ErrorCode, Event, Limits};

/// A bundle whose header lists `files` entries (and one byte of payload each).
fn many_files(files: usize) -> Synthetic {
    synthetic(7, &vec![1; files])
}

fn handler(bundle: Synthetic) -> Arc<SyntheticHandler> {
    Arc::new(SyntheticHandler {
        bundles: HashMap::from([("app:v1".to_string(), Arc::new(bundle))]),
        mode: Mode::Complete,
        write_size: 64 * 1024,
    })
}

fn bind(addr: SocketAddr, cert: &str, key: &str, h: Arc<SyntheticHandler>) -> Server {
    Server::bind(
        addr,
        ServerTls {
            cert_chain_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
        },
        [TOKEN],
        h,
    )
    .unwrap()
}

/// A raw quinn connection, authenticated, to speak a chosen protocol version.
async fn raw_connection(addr: SocketAddr, cert_pem: &str) -> quinn::Connection {
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
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let auth = encode_auth(
        &Auth {
            token: TOKEN.into(),
        },
        &Limits::default(),
    )
    .unwrap();
    send.write_all(&auth).await.unwrap();
    send.finish().unwrap();
    let mut dec = AuthReplyDecoder::default();
    dec.feed(&recv.read_to_end(4096).await.unwrap());
    assert_eq!(dec.next_frame_message().unwrap(), Some(AuthReply::Accepted));
    conn
}

/// Sends `wire` on a new stream; the answer's bytes up to and including the header
/// frame, the protocol version it announced and its first event.
async fn first_event(conn: &quinn::Connection, wire: &[u8]) -> (usize, Option<u16>, Event) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(wire).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(64 << 20).await.unwrap();
    let mut dec = ResponseDecoder::default();
    // Feed byte by byte until the first event: the header frame's end.
    for (i, b) in answer.iter().enumerate() {
        dec.feed(std::slice::from_ref(b));
        if let Some(ev) = dec.next_event().unwrap() {
            return (i + 1, dec.version(), ev);
        }
    }
    panic!("no event in {} bytes", answer.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_3_compresses_the_header_and_version_2_clients_still_work() {
    let bundle = many_files(4000);
    let expected = bundle.header.clone();
    let (server, cert) = start_server(handler(bundle));
    let conn = raw_connection(server.local_addr(), &cert).await;
    let req = request("app:v1", TOKEN);

    let v2 = RequestEncoder::default()
        .with_version(2)
        .encode(&req)
        .unwrap();
    assert_eq!(v2[..6], preamble_for(2));
    let (old_bytes, old_version, old) = first_event(&conn, &v2).await;
    assert_eq!(
        old_version,
        Some(2),
        "an old client is answered in its version"
    );
    assert_eq!(old, Event::Header(expected.clone()));

    let v3 = RequestEncoder::default()
        .with_version(3)
        .encode(&req)
        .unwrap();
    assert_eq!(v3[..6], preamble_for(3));
    let (new_bytes, new_version, new) = first_event(&conn, &v3).await;
    assert_eq!(new_version, Some(3));
    assert_eq!(new, Event::Header(expected.clone()));
    // Version 4 (the default) carries the same header (and the held images used).
    let v4 = RequestEncoder::default().encode(&req).unwrap();
    assert_eq!(v4[..6], preamble_for(4));
    let (_, v4_version, v4_header) = first_event(&conn, &v4).await;
    assert_eq!(v4_version, Some(4));
    assert_eq!(v4_header, Event::Header(expected));
    eprintln!("4000-entry header: {old_bytes} bytes in version 2, {new_bytes} in version 3");
    assert!(new_bytes * 3 < old_bytes, "{new_bytes} vs {old_bytes}");

    // A version this build does not speak: a clear error, not a hang or a reset.
    let mut v9 = v3.to_vec();
    v9[..6].copy_from_slice(&preamble_for(9));
    let (_, _, answer) = first_event(&conn, &v9).await;
    match answer {
        Event::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message
                    .contains("protocol version 9 is not supported (this build speaks 2 to 4)"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_reuse_the_warm_connection() {
    let (server, cert) = start_server(handler(many_files(500)));
    let addr = server.local_addr();
    let client = client_trusting(&cert);
    client.warm(addr, "localhost", TOKEN).await.unwrap();
    assert_eq!(server.stats().handshakes, 1);
    assert_eq!(server.stats().authenticated, 1);
    for _ in 0..3 {
        fetch_verified(&client, addr, &request("app:v1", TOKEN))
            .await
            .unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats.handshakes, 1, "{stats:?}");
    assert_eq!(stats.authenticated, 1, "{stats:?}");
    assert_eq!(client.connections_opened(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_fetch_pipelines_its_request_behind_the_token() {
    let (server, cert) = start_server(handler(many_files(100)));
    let client = client_trusting(&cert);
    // No warm connection: the fetch connects, authenticates and requests at once.
    fetch_verified(&client, server.local_addr(), &request("app:v1", TOKEN))
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!((stats.handshakes, stats.authenticated), (1, 1), "{stats:?}");
    // A refused token is still reported as such, not as a lost connection.
    let err = fetch_verified(&client, server.local_addr(), &request("app:v1", "guess"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, transport_quic::quic::ClientError::Unauthorized(_)),
        "{err}"
    );
    server.shutdown().await;
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_connection_is_reopened_after_the_proxy_restarts() {
    let (cert, key) = transport_quic::tls::self_signed(&["localhost"]).unwrap();
    let server = bind(
        "127.0.0.1:0".parse().unwrap(),
        &cert,
        &key,
        handler(many_files(50)),
    );
    let addr = server.local_addr();
    let client = Arc::new(
        Client::new(transport_quic::quic::ClientTls::CaPem(
            cert.clone().into_bytes(),
        ))
        .unwrap(),
    );
    let task = client.keep_warm(
        addr,
        "localhost".into(),
        TOKEN.into(),
        Duration::from_millis(50),
        Duration::from_millis(400),
    );
    wait_for("the warm connection", || server.stats().authenticated == 1).await;
    fetch_verified(&client, addr, &request("app:v1", TOKEN))
        .await
        .unwrap();
    assert_eq!(server.stats().handshakes, 1);

    // The proxy goes away (its connections closed) and comes back on the same port.
    server.shutdown().await;
    // The old endpoint's socket may linger a moment after shutdown.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let server = loop {
        let tls = ServerTls {
            cert_chain_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
        };
        match Server::bind(addr, tls, [TOKEN], handler(many_files(50))) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    };
    // Reopened by the keep-warm task, before any fetch asks for it (the
    // server counts the token before the client has counted the
    // connection: wait for both).
    wait_for("the warm connection to be reopened", || {
        server.stats().authenticated == 1 && client.connections_opened() >= 2
    })
    .await;
    assert_eq!(client.connections_opened(), 2);
    fetch_verified(&client, addr, &request("app:v1", TOKEN))
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!((stats.handshakes, stats.authenticated), (1, 1), "{stats:?}");
    assert_eq!(client.connections_opened(), 2);

    task.abort();
    server.shutdown().await;
}
