//! A fleet's burst against one proxy, end to end: a real `docker-registry`,
//! the bundle server on real QUIC on 127.0.0.1, 50 clients at once. With the
//! shared payload cache, the registry's access log shows each range of the
//! image read about once (not once per client); a restarted proxy answers
//! from its disk tier; and a held image the proxy has never indexed is
//! indexed on demand, so the worker still gets a delta.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use common::layout::Layer;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::{CacheConfig, PayloadCache, ServeOptions};
use transport_quic::quic::{Client, ClientOptions, ClientTls, ServerOptions};
use transport_quic::Source;

const CLIENTS: usize = 50;

fn options() -> ServeOptions {
    ServeOptions {
        in_flight: 4,
        max_range: 256 << 10,
        max_gap: 4 << 10,
        retry_backoff: Duration::from_millis(10),
        ..ServeOptions::default()
    }
}

fn server_options() -> ServerOptions {
    ServerOptions {
        max_bundles: 2 * CLIENTS,
        max_connections_per_address: 2 * CLIENTS,
        ..ServerOptions::default()
    }
}

type Files = Vec<(String, Vec<u8>)>;

/// About 3 MB of incompressible files of varied sizes in two layers.
fn image_files(seed: u64) -> (Files, Files) {
    let file = |i: u64| {
        (
            format!("data/f{i:03}.bin"),
            noise(seed + i, 1_000 + (i as usize * 37_000) % 200_000),
        )
    };
    let base = (0..24).map(file).collect();
    let app = (100..112).map(file).collect();
    (base, app)
}

fn layer(files: &Files) -> Layer {
    starlight_layer(&tar_of(files, 1_700_000_000), Compression::Gzip)
}

/// Blob range reads (`206` answers) of `repo` in the registry's access log
/// since byte `from`: how many, and their bytes.
fn range_reads(reg: &TestRegistry, from: usize, repo: &str) -> (usize, u64) {
    let log = reg.log();
    let needle = format!("\"GET /v2/{repo}/blobs/sha256:");
    let mut count = 0;
    let mut bytes = 0;
    for line in log.get(from..).unwrap_or_default().lines() {
        let Some(at) = line.find(&needle) else {
            continue;
        };
        // `"GET ... HTTP/1.1" 206 262144 ...`
        let rest = &line[at + 1..];
        let Some(close) = rest.find('"') else {
            continue;
        };
        let mut fields = rest[close + 1..].split_whitespace();
        if fields.next() != Some("206") {
            continue;
        }
        count += 1;
        bytes += fields
            .next()
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (count, bytes)
}

/// Waits until the registry's log has an access line for a blob of `repo`
/// (the access log is written as requests finish).
fn wait_for_log(reg: &TestRegistry, repo: &str) {
    for _ in 0..100 {
        if reg.log().contains(&format!("/v2/{repo}/blobs/")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the registry logs no access line: is its access log on?\n{}",
        reg.log()
    );
}

/// `CLIENTS` clients, each on its own connection, fetch `image` at once; all verify.
async fn burst(proxy: &Proxy, image: &str) -> Vec<Bundle> {
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            // 50 handshakes at once on a loaded 2-core machine: the connect
            // and token bound is generous (this test counts registry reads,
            // it does not time anything).
            let options = ClientOptions {
                connect_timeout: Duration::from_secs(60),
                ..ClientOptions::default()
            };
            let client =
                Client::with_options(ClientTls::CaPem(proxy.cert_pem.clone()), options).unwrap();
            let (addr, barrier) = (proxy.addr, barrier.clone());
            let req = request(image, &[]);
            tokio::spawn(async move {
                barrier.wait().await;
                fetch(&client, addr, &req).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let bundle = t.await.unwrap().unwrap();
        verify(&bundle).unwrap();
        out.push(bundle);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_50_reads_each_range_about_once() {
    let reg = TestRegistry::start();
    let (base, app) = image_files(1);
    let layers = [layer(&base), layer(&app)];
    let blob_bytes: u64 = layers.iter().map(|l| l.blob.len() as u64).sum();
    push_image(&reg, "burst/app", "v1", &layers);
    let cache_dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: Some(cache_dir.path().to_path_buf()),
        ..CacheConfig::default()
    };
    let cache = Arc::new(PayloadCache::open(&config, cache_dir.path()).unwrap());
    let mut proxy = Proxy::start_full(
        &reg,
        options(),
        RegistryClient::new(true),
        Some(cache.clone()),
        server_options(),
    );

    let from = reg.log().len();
    let bundles = burst(&proxy, "burst/app:v1").await;
    wait_for_log(&reg, "burst/app");
    let payload_bytes: u64 = bundles[0]
        .header
        .payloads
        .iter()
        .map(|p| p.compressed_len)
        .sum();
    let (reads, read_bytes) = range_reads(&reg, from, "burst/app");
    let stats = cache.stats();
    eprintln!(
        "blobs {blob_bytes} B, payloads {payload_bytes} B; registry: {reads} range reads, {read_bytes} B; {stats:?}"
    );
    // Every client got the whole image...
    assert_eq!(proxy.handler.stats().completed, CLIENTS as u64);
    assert!(payload_bytes > 2_000_000, "{payload_bytes}");
    // ...but the registry served each range once: the bytes read are those
    // of one bundle (plus coalescing gaps), not 50 times that.
    assert!(reads > 0, "no range read in the access log:\n{}", reg.log());
    assert_eq!(
        reads as u64, stats.misses,
        "one registry read per cache miss"
    );
    assert_eq!(read_bytes, stats.registry_bytes);
    assert!(
        read_bytes >= payload_bytes,
        "{read_bytes} < {payload_bytes}"
    );
    assert!(
        read_bytes <= blob_bytes,
        "{read_bytes} > {blob_bytes}: ranges read twice"
    );
    assert!(stats.memory_hits + stats.coalesced >= (CLIENTS as u64 - 1) * stats.misses);

    // Successive workers: a restarted proxy (new database, same cache
    // directory) answers from the disk tier, reading no range.
    proxy.stop().await;
    drop(proxy);
    for _ in 0..200 {
        if cache.stats().disk_used >= stats.registry_bytes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(cache);
    let cache = Arc::new(PayloadCache::open(&config, cache_dir.path()).unwrap());
    let proxy = Proxy::start_full(
        &reg,
        options(),
        RegistryClient::new(true),
        Some(cache.clone()),
        server_options(),
    );
    let from = reg.log().len();
    let again = fetch(&proxy.client(), proxy.addr, &request("burst/app:v1", &[]))
        .await
        .unwrap();
    verify(&again).unwrap();
    // The index job logs its blob reads; give the access log a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(range_reads(&reg, from, "burst/app"), (0, 0));
    let s = cache.stats();
    assert!(s.disk_hits > 0 && s.misses == 0, "{s:?}");
}

type Pair = (Files, Files);

/// v1 and v2 of an app: v2 changes two files of the base (rebuilt: no shared layer).
fn versions() -> (Pair, Pair) {
    let v1 = image_files(1);
    let mut v2 = image_files(1);
    v2.0[3].1 = noise(999, 5_000);
    v2.0[7].1 = noise(998, 7_000);
    (v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_proxy_indexes_the_held_image_on_demand_and_sends_a_delta() {
    let reg = TestRegistry::start();
    let ((b1, a1), (b2, a2)) = versions();
    push_image(&reg, "held/app", "v1", &[layer(&b1), layer(&a1)]);
    let v2_layers = [
        starlight_layer(&tar_of(&b2, 1_700_100_000), Compression::Gzip),
        starlight_layer(&tar_of(&a2, 1_700_100_000), Compression::Gzip),
    ];
    push_image(&reg, "held/app", "v2", &v2_layers);

    // A fresh proxy: its database has neither image.
    let proxy = Proxy::start(&reg, options());
    let client = proxy.client();
    let delta = fetch(
        &client,
        proxy.addr,
        &request("held/app:v2", &["held/app:v1"]),
    )
    .await
    .unwrap();
    verify(&delta).unwrap();
    // The header says which held image was used.
    assert_eq!(delta.held_used, Some(vec!["held/app:v1".to_string()]));
    let stats = proxy.handler.stats();
    assert_eq!(stats.held_indexed, 1, "{stats:?}");
    assert_eq!(stats.indexed, 2, "{stats:?}");
    let held = delta
        .header
        .toc
        .iter()
        .filter(|e| e.source == Source::Held)
        .count();
    assert!(held >= 30, "only {held} entries held");
    // Only the two changed contents travel.
    assert_eq!(
        delta.header.payloads.len(),
        2,
        "{:?}",
        delta.header.payloads.len()
    );
    let full = fetch(&client, proxy.addr, &request("held/app:v2", &[]))
        .await
        .unwrap();
    let size = |b: &Bundle| -> u64 { b.header.payloads.iter().map(|p| p.compressed_len).sum() };
    assert!(
        size(&delta) * 100 < size(&full),
        "{} vs {}",
        size(&delta),
        size(&full)
    );

    // A held image the proxy may not index (another registry) is ignored,
    // and so is one that does not exist: the bundle is then complete.
    let other = fetch(
        &client,
        proxy.addr,
        &request(
            "held/app:v2",
            &["elsewhere.example:5000/app:v1", "held/app:nope"],
        ),
    )
    .await
    .unwrap();
    verify(&other).unwrap();
    assert_eq!(other.held_used, Some(vec![]));
    assert_eq!(other.header.payloads.len(), full.header.payloads.len());
    assert_eq!(proxy.handler.stats().held_indexed, 1);
}
