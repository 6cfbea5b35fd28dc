//! One token holder against the proxy's memory, measured on a real
//! `starlight-proxy serve` process (VmRSS from /proc) with a real
//! `docker-registry` on loopback: a 65,536-entry held list, and 64 bundle
//! streams that are never read.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod abuse_support;
mod common;
mod serve_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abuse_support::*;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use transport_quic::quic::{Client, ClientError, ClientOptions, ClientTls, TransportTuning};
use transport_quic::ErrorCode;

const MIB: u64 = 1 << 20;

/// Samples a process's RSS every 20 ms; the peak, KiB.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// A client that reads (almost) nothing: tiny receive windows, as an attacker
/// who wants the proxy to keep its buffers full would choose.
fn stingy_client(cert_pem: &[u8]) -> Client {
    Client::with_options(
        ClientTls::CaPem(cert_pem.to_vec()),
        ClientOptions {
            transport: TransportTuning {
                stream_receive_window: 64 << 10,
                receive_window: 256 << 10,
                ..TransportTuning::default()
            },
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_under_held_list_and_unread_streams() {
    let reg = TestRegistry::start();
    // 48 MiB of incompressible payloads.
    let big: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("big/f{i:02}.bin"), noise(100 + i, 4 << 20)))
        .collect();
    push_image(
        &reg,
        "abuse/big",
        "v1",
        &[starlight_layer(&tar_of(&big, 1), Compression::Zstd)],
    );
    // 10,000 entries: a large table of contents.
    let many: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| {
            (
                format!("many/d{:03}/file-{i:05}.txt", i % 100),
                format!("{i}\n").into_bytes(),
            )
        })
        .collect();
    push_image(
        &reg,
        "abuse/toc",
        "v1",
        &[starlight_layer(&tar_of(&many, 1), Compression::Gzip)],
    );

    let dir = tempfile::tempdir().unwrap();
    // Per bundle: (in_flight + 1) × max_range = 5 × 4 MiB = 20 MiB of payload
    // buffers, at most 8 bundles at once, stalled ones cancelled after 3 s.
    let (in_flight, max_range, max_bundles, per_conn, send_window) =
        (4u64, 4 * MIB, 8u64, 8, 16 * MIB);
    let proxy = ProxyProcess::start(
        &reg,
        dir.path(),
        &format!(
            "in_flight = {in_flight}\nmax_range = {max_range}\nmax_bundles = {max_bundles}\n\
             max_bundles_per_connection = {per_conn}\nstall_timeout_secs = 3\nsend_window = {send_window}\n"
        ),
    );
    let pid = proxy.child.id();
    let idle_rss = proxy.rss_kib();

    // Warm up: index both images and fetch each once.
    let client = proxy.client();
    for image in ["abuse/big:v1", "abuse/toc:v1"] {
        let b = fetch(&client, proxy.addr, &request(image, &[]))
            .await
            .unwrap();
        verify(&b).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = proxy.rss_kib();

    // (1) The held list: 65,536 names, the 10,000-entry image 32,768 times and
    // 32,768 distinct names. Deduplicated and capped (64 distinct names), the
    // bundle is served and the TOC is loaded once.
    let mut held: Vec<String> = vec!["abuse/toc:v1".to_string(); 32_768];
    held.extend((0..32_768).map(|i| format!("abuse/nothing-{i}:v1")));
    let mut req = request("abuse/toc:v1", &[]);
    req.held_images = held;
    assert_eq!(req.held_images.len(), 65_536);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let b = fetch(&client, proxy.addr, &req).await.unwrap();
    let held_time = started.elapsed();
    let held_peak = sampler.finish();
    // Held, so nothing to send: the image is its own held image.
    assert!(b.payloads.is_empty(), "{} payloads", b.payloads.len());
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    assert!(
        log.contains("held list deduplicated and capped") && log.contains("distinct=32769"),
        "no dedupe logged:\n{log}"
    );

    // (2) 64 bundle streams of the 48 MiB image that are never read, over 8
    // connections (8 each).
    let sampler = Sampler::start(pid);
    let mut streams = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let c = stingy_client(&proxy.cert_pem);
        for _ in 0..8 {
            streams.push(
                c.fetch(proxy.addr, "127.0.0.1", &request("abuse/big:v1", &[]))
                    .await
                    .unwrap(),
            );
        }
        clients.push(c);
    }
    // Let the proxy fill every buffer it will, then wait past the stall timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unread_rss = proxy.rss_kib();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let unread_peak = sampler.finish();
    // Each stream ends refused (over the caps), cancelled (served, then stalled past
    // the timeout), or complete (served, and its stall timer had not run out by the
    // time this loop got to reading it).
    let (mut refused, mut cancelled, mut completed, mut other) = (0, 0, 0, Vec::new());
    for mut s in streams {
        let r = loop {
            match tokio::time::timeout(Duration::from_secs(20), s.next_event()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(r) => break r.map(|_| ()),
                Err(_) => panic!("a stream neither ended nor failed"),
            }
        };
        match r {
            Err(ClientError::Proxy(f)) if f.code == ErrorCode::Unavailable => refused += 1,
            Err(ClientError::Truncated(m)) if m.contains("reset") => cancelled += 1,
            Ok(()) => completed += 1,
            r => other.push(format!("{r:?}")),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_rss = proxy.rss_kib();

    // The slots were freed: a fresh fetch completes.
    let started = Instant::now();
    let b = fetch(&proxy.client(), proxy.addr, &request("abuse/big:v1", &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    let fresh_time = started.elapsed();

    // Documented bound on what bundles may pin: max_bundles × (in_flight + 1) ×
    // max_range of payload buffers, plus each connection's send window, plus
    // 64 MiB for everything else (plans, TOCs, QUIC state).
    let bound_kib = (max_bundles * (in_flight + 1) * max_range + 9 * send_window + 64 * MIB) / 1024;
    println!(
        "RSS KiB: idle {idle_rss}, after warm-up {baseline}; held list of 65,536: peak {held_peak} \
         (+{} MiB) in {held_time:?}; 64 unread streams: {unread_rss} after 2 s, peak {unread_peak} \
         (+{} MiB), {after_rss} after the stall timeout; bound +{} MiB; streams: {refused} refused \
         (Unavailable), {cancelled} cancelled as stalled, {completed} completed when read, other {other:?}; fresh fetch after: {fresh_time:?}",
        held_peak.saturating_sub(baseline) / 1024,
        unread_peak.saturating_sub(baseline) / 1024,
        bound_kib / 1024,
    );
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(refused + cancelled + completed, 64);
    // At most max_bundles were served at once; the rest were refused.
    assert!(refused >= 64 - max_bundles as usize, "{refused}");
    assert!(cancelled + completed <= max_bundles as usize);
    assert!(cancelled >= 1, "no bundle was served and cancelled");
    assert!(
        held_peak.saturating_sub(baseline) < 64 * 1024,
        "held list: +{} KiB",
        held_peak.saturating_sub(baseline)
    );
    assert!(
        unread_peak.saturating_sub(baseline) < bound_kib,
        "unread streams: +{} KiB over a bound of {bound_kib} KiB",
        unread_peak.saturating_sub(baseline)
    );
    drop(clients);
}
