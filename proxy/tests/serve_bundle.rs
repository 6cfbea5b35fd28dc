//! End-to-end: Starlight images in a real `docker-registry`, the bundle server
//! on real QUIC on 127.0.0.1, payloads read by HTTP range requests. Checks
//! what delta bundles carry, on-the-fly indexing, errors, concurrency,
//! truncation and corruption, and the plan cache.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::layout::Layer;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use transport_quic::quic::{Client, ClientError, ClientTls};
use transport_quic::{ErrorCode, Event, Source};

/// Small ranges so that coalescing and splitting both happen.
fn options() -> ServeOptions {
    ServeOptions {
        in_flight: 4,
        max_range: 16 << 10,
        max_gap: 4 << 10,
        retry_backoff: Duration::from_millis(10),
        ..ServeOptions::default()
    }
}

type Files = Vec<(String, Vec<u8>)>;

/// The base layer's files; `changed` files get new contents.
fn base_files(changed: &[usize]) -> Files {
    let mut files: Files = (0..40)
        .map(|i| {
            let body = if changed.contains(&i) {
                format!("file {i} CHANGED in v2\n").repeat(i * 30 + 1)
            } else {
                format!("file {i}\n").repeat(i * 50 + 1)
            };
            (format!("base/f{i:02}.txt"), body.into_bytes())
        })
        .collect();
    // A copy of another file: one payload for both.
    files.push(("base/copy-of-f01.txt".into(), files[1].1.clone()));
    // Larger than a range request: fetched in pieces.
    files.push(("base/blob.bin".into(), noise(1, 100_000)));
    files
}

fn app_files(version: u32) -> Files {
    vec![
        (
            "app/main".into(),
            format!("main program v{version}\n")
                .repeat(500)
                .into_bytes(),
        ),
        (
            "app/new.txt".into(),
            format!("new in v{version}\n").into_bytes(),
        ),
        // Same content as a base file of both versions.
        ("app/extra".into(), base_files(&[])[5].1.clone()),
    ]
}

/// Distinct contents of a set of file lists.
fn contents(lists: &[&Files]) -> BTreeSet<[u8; 32]> {
    lists
        .iter()
        .flat_map(|l| l.iter().map(|(_, d)| sha(d)))
        .collect()
}

fn layer(files: &Files, mtime: u64) -> Layer {
    starlight_layer(&tar_of(files, mtime), Compression::Gzip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_bundles_carry_each_needed_content_once() {
    let reg = TestRegistry::start();
    let (base1, app1) = (base_files(&[]), app_files(1));
    let (base2, app2) = (base_files(&[3, 7]), app_files(2));
    let v1 = push_image(
        &reg,
        "serve/app",
        "v1",
        &[layer(&base1, 1_700_000_000), layer(&app1, 1_700_000_000)],
    );
    // v2's base is rebuilt (other mtimes): no layer digest is shared.
    let (l2b, l2a) = (layer(&base2, 1_700_100_000), layer(&app2, 1_700_100_000));
    let v2 = push_image(&reg, "serve/app", "v2", &[l2b.clone(), l2a]);
    let proxy = Proxy::start(&reg, options());
    let client = proxy.client();

    // (c) v1 is not indexed yet: the first request indexes it.
    assert_eq!(proxy.handler.stats().indexed, 0);
    let b1 = fetch(&client, proxy.addr, &request("serve/app:v1", &[]))
        .await
        .unwrap();
    verify(&b1).unwrap();
    assert_eq!(b1.header.manifest_digest, v1);
    assert_eq!(proxy.handler.stats().indexed, 1);

    // (a) v2 alone: every distinct content exactly once.
    let b2 = fetch(&client, proxy.addr, &request("serve/app:v2", &[]))
        .await
        .unwrap();
    verify(&b2).unwrap();
    assert_eq!(b2.header.manifest_digest, v2);
    let sent: Vec<[u8; 32]> = b2.header.payloads.iter().map(|p| p.sha256).collect();
    let sent_set: BTreeSet<[u8; 32]> = sent.iter().copied().collect();
    assert_eq!(sent.len(), sent_set.len(), "a content was sent twice");
    assert_eq!(sent_set, contents(&[&base2, &app2]));
    assert!(b2.header.layers.iter().all(|l| l != &v1));
    assert!(b2.header.toc.iter().all(|e| e.source != Source::Held));
    assert_eq!(proxy.handler.stats().indexed, 2);

    // (b) v2 given v1: only the changed contents, each once; the rest Held.
    let before = proxy.handler.stats().plan_cache;
    let d = fetch(&client, proxy.addr, &request("serve/app:v2", &[&v1]))
        .await
        .unwrap();
    verify(&d).unwrap();
    let held_contents = contents(&[&base1, &app1]);
    let expected: BTreeSet<[u8; 32]> = contents(&[&base2, &app2])
        .difference(&held_contents)
        .copied()
        .collect();
    let delta: Vec<[u8; 32]> = d.header.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(delta.len(), expected.len(), "a content was sent twice");
    assert_eq!(delta.iter().copied().collect::<BTreeSet<_>>(), expected);
    assert_eq!(expected.len(), 4, "f03, f07, app/main, app/new.txt");
    for e in &d.header.toc {
        if let Some(s) = e.sha256 {
            if held_contents.contains(&s) {
                assert_eq!(e.source, Source::Held, "{}", e.path);
            } else {
                assert!(matches!(e.source, Source::Payload(_)), "{}", e.path);
            }
        }
    }
    let delta_bytes: u64 = d.payloads.iter().map(|p| p.len() as u64).sum();
    let full_bytes: u64 = b2.payloads.iter().map(|p| p.len() as u64).sum();
    assert!(
        delta_bytes * 5 < full_bytes,
        "{delta_bytes} vs {full_bytes}"
    );
    assert_eq!(proxy.handler.stats().plan_cache.misses, before.misses + 1);

    // (g) the same request again (held given by reference): a plan cache hit.
    let before = proxy.handler.stats().plan_cache;
    let again = fetch(
        &client,
        proxy.addr,
        &request("serve/app:v2", &["serve/app:v1"]),
    )
    .await
    .unwrap();
    verify(&again).unwrap();
    assert_eq!(again.header, d.header);
    let after = proxy.handler.stats().plan_cache;
    assert_eq!(after.hits, before.hits + 1);
    assert_eq!(after.misses, before.misses);

    // Asking by digest works once indexed; an unknown held image is ignored.
    let by_digest = fetch(&client, proxy.addr, &request(&v2, &["sha256:0000"]))
        .await
        .unwrap();
    assert_eq!(by_digest.header.payloads, b2.header.payloads);
    let stats = proxy.handler.stats();
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.completed, 5);
    assert!(stats.payload_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear() {
    let reg = TestRegistry::start();
    // A plain image: an ordinary gzip layer, not converted.
    let tar = tar_of(&base_files(&[]), 1);
    push_image(&reg, "serve/plain", "v1", &[Layer::gzip(&tar)]);
    push_image(&reg, "serve/ok", "v1", &[layer(&app_files(1), 1)]);
    let proxy = Proxy::start(&reg, options());
    let client = proxy.client();

    let err = fetch(&client, proxy.addr, &request("serve/plain:v1", &[]))
        .await
        .err()
        .unwrap();
    match &err {
        ClientError::Proxy(f) => assert_eq!(f.code, ErrorCode::NotStarlight, "{err}"),
        e => panic!("expected NotStarlight, got {e}"),
    }
    assert!(err.to_string().contains("not a Starlight image"), "{err}");

    let err = fetch(&client, proxy.addr, &request("serve/none:v1", &[]))
        .await
        .err()
        .unwrap();
    match &err {
        ClientError::Proxy(f) => assert_eq!(f.code, ErrorCode::NotFound, "{err}"),
        e => panic!("expected NotFound, got {e}"),
    }
    let err = fetch(&client, proxy.addr, &request("sha256:abcd", &[]))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClientError::Proxy(f) if f.code == ErrorCode::NotFound),
        "{err}"
    );
    let mut bad_platform = request("serve/ok:v1", &[]);
    bad_platform.platform = Some("linux".into());
    let err = fetch(&client, proxy.addr, &bad_platform)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClientError::Proxy(f) if f.code == ErrorCode::BadRequest),
        "{err}"
    );

    // (e) a wrong token.
    let mut wrong = request("serve/ok:v1", &[]);
    wrong.token = "guess".into();
    let err = fetch(&client, proxy.addr, &wrong).await.err().unwrap();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("refused the token"), "{err}");

    // (e) a certificate the client does not trust.
    let (other_ca, _) = transport_quic::tls::self_signed(&["127.0.0.1"]).unwrap();
    let stranger = Client::new(ClientTls::CaPem(other_ca.into_bytes())).unwrap();
    let err = fetch(&stranger, proxy.addr, &request("serve/ok:v1", &[]))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::CertificateNotTrusted(_)),
        "{err}"
    );

    // And the good request still works.
    verify(
        &fetch(&client, proxy.addr, &request("serve/ok:v1", &[]))
            .await
            .unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_fetches_complete_and_verify() {
    let reg = TestRegistry::start();
    // 20 images sharing a base, each with its own app layer. Pushed one at a
    // time: docker-registry answers 500 to concurrent pushes sharing a blob.
    let base = layer(&base_files(&[]), 1);
    for i in 0..20u32 {
        let mut app = app_files(i);
        app.push((format!("app/own-{i}"), noise(u64::from(i) + 10, 30_000)));
        let compression = if i % 2 == 0 {
            Compression::Zstd
        } else {
            Compression::Gzip
        };
        let l = starlight_layer(&tar_of(&app, 1), compression);
        push_image(&reg, "serve/many", &format!("t{i}"), &[base.clone(), l]);
    }
    let proxy = Proxy::start(&reg, options());
    let client = std::sync::Arc::new(proxy.client());
    let mut tasks = Vec::new();
    // Five more requests for t0 at the same time share its indexing job.
    for i in (0..20u32).chain([0; 5]) {
        let (client, addr) = (client.clone(), proxy.addr);
        tasks.push(tokio::spawn(async move {
            let b = fetch(&client, addr, &request(&format!("serve/many:t{i}"), &[]))
                .await
                .unwrap();
            verify(&b).unwrap();
            let own = sha(&noise(u64::from(i) + 10, 30_000));
            assert!(b.header.payloads.iter().any(|p| p.sha256 == own));
            b.header.manifest_digest
        }));
    }
    let mut digests = HashSet::new();
    for t in tasks {
        digests.insert(t.await.unwrap());
    }
    assert_eq!(digests.len(), 20);
    let stats = proxy.handler.stats();
    assert_eq!((stats.completed, stats.failed, stats.indexed), (25, 0, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncation_and_corruption_are_never_success() {
    let reg = TestRegistry::start();
    // (f) truncation: a large image, the server stopped mid-body.
    let big: Files = (0..5)
        .map(|i| (format!("big/{i}.bin"), noise(100 + i, 8 << 20)))
        .collect();
    push_image(&reg, "serve/big", "v1", &[layer(&big, 1)]);
    let small = app_files(7);
    let digest = push_image(&reg, "serve/small", "v1", &[layer(&small, 1)]);
    let mut proxy = Proxy::start(
        &reg,
        ServeOptions {
            in_flight: 1,
            max_range: 64 << 10,
            ..options()
        },
    );
    let client = proxy.client();
    let mut stream = client
        .fetch(proxy.addr, "127.0.0.1", &request("serve/big:v1", &[]))
        .await
        .unwrap();
    let mut data_events = 0;
    let err = loop {
        match stream.next_event().await {
            Ok(Some(Event::PayloadData { .. })) => {
                data_events += 1;
                if data_events == 3 {
                    proxy.stop().await;
                }
            }
            Ok(Some(Event::End(_))) => panic!("the bundle completed despite the shutdown"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("a cut-off bundle was reported complete"),
            Err(e) => break e,
        }
    };
    assert!(data_events >= 3);
    assert!(matches!(err, ClientError::Truncated(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // (f) corruption: flip bytes inside one file's member in the stored blob.
    let mut proxy = Proxy::start(&reg, options());
    let client = proxy.client();
    verify(
        &fetch(&client, proxy.addr, &request("serve/small:v1", &[]))
            .await
            .unwrap(),
    )
    .unwrap();
    let record = proxy.db.image(&digest).unwrap().unwrap();
    let toc = proxy.db.merged_toc(&digest).unwrap();
    let target = toc.iter().find(|t| t.entry.path == "app/main").unwrap();
    let c = target.entry.content.unwrap();
    let blob = reg.blob_path(&record.layers[target.layer as usize].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = (c.offset + c.compressed_len / 2) as usize;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&blob, &bytes).unwrap();
    let bundle = fetch(&client, proxy.addr, &request("serve/small:v1", &[]))
        .await
        .unwrap();
    let err = verify(&bundle).unwrap_err();
    assert!(err.contains("app/main"), "{err}");
    proxy.stop().await;
}

/// A TCP front for the registry that answers `503` to the first `fail`
/// range requests and forwards everything else, one request per connection.
struct FlakyFront {
    addr: String,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn flaky_front(registry: &str, fail: u64) -> FlakyFront {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (registry, counter) = (registry.to_string(), failed.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            let (registry, counter) = (registry.clone(), counter.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("\r\nrange:")
                    && counter
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n < fail).then_some(n + 1)
                        })
                        .is_ok()
                {
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                // One request per connection, so that every request is seen here.
                head.truncate(head.len() - 2);
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                let Ok(mut upstream) = std::net::TcpStream::connect(&registry) else {
                    return;
                };
                if upstream.write_all(&head).is_err() {
                    return;
                }
                let _ = std::io::copy(&mut upstream, &mut client);
            });
        }
    });
    FlakyFront { addr, failed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_registry_errors_are_retried_then_reported() {
    let reg = TestRegistry::start();
    push_image(&reg, "serve/flaky", "v1", &[layer(&base_files(&[]), 1)]);
    let through = |front: &FlakyFront| {
        Proxy::start(
            &reg,
            ServeOptions {
                registry_host: Some(front.addr.clone()),
                ..options()
            },
        )
    };

    // Three range requests fail with 503: retried, the bundle completes.
    let front = flaky_front(&reg.addr, 3);
    let proxy = through(&front);
    let b = fetch(&proxy.client(), proxy.addr, &request("serve/flaky:v1", &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    assert_eq!(front.failed.load(std::sync::atomic::Ordering::SeqCst), 3);

    // Every range request fails: after the header, the bundle ends with an
    // Upstream error, never with success.
    let broken = flaky_front(&reg.addr, u64::MAX);
    let proxy = through(&broken);
    let client = proxy.client();
    let mut stream = client
        .fetch(proxy.addr, "127.0.0.1", &request("serve/flaky:v1", &[]))
        .await
        .unwrap();
    let mut got_header = false;
    let err = loop {
        match stream.next_event().await {
            Ok(Some(Event::Header(_))) => got_header = true,
            Ok(Some(Event::End(_))) | Ok(None) => panic!("completed despite the registry"),
            Ok(Some(_)) => {}
            Err(e) => break e,
        }
    };
    assert!(got_header);
    match &err {
        ClientError::Proxy(f) => assert_eq!(f.code, ErrorCode::Upstream, "{err}"),
        e => panic!("expected an Upstream error, got {e}"),
    }
    assert!(err.to_string().contains("503"), "{err}");
    // The first attempt and `retries` more, for the one failing request.
    let attempts = broken.failed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(attempts >= 4, "{attempts}");
}
