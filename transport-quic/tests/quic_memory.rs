//! A 200 MiB bundle over loopback QUIC: memory stays flat, throughput is reported.
//!
//! Its own test binary (process), so the RSS it samples is not disturbed by other tests.
//! Run in release for meaningful throughput:
//! `cargo test --release -p transport-quic --test quic_memory -- --nocapture`.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use transport_quic::quic::{BundleHandler, BundleWriter, HandlerError, HandlerFuture};
use transport_quic::{Event, Header, PayloadCompression, PayloadInfo, Request};

const MIB: usize = 1024 * 1024;
const PAYLOAD: usize = 4 * MIB;
/// Payload count: 50 (200 MiB), or `DBP_MEMORY_TEST_MIB / 4` to try other sizes.
fn payloads() -> usize {
    std::env::var("DBP_MEMORY_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(50, |mib| (mib / 4).max(1))
}

/// Streams [`payloads()`] payloads of `PAYLOAD` bytes generated from one 1 MiB block: the
/// server holds no bundle in memory.
struct Generated {
    block: Vec<u8>,
    header: Header,
}

impl Generated {
    fn new() -> Self {
        let block = Rng::new(9).bytes(MIB);
        let mut whole = Vec::with_capacity(PAYLOAD);
        while whole.len() < PAYLOAD {
            whole.extend_from_slice(&block);
        }
        let info = PayloadInfo {
            sha256: sha256(&whole),
            compression: PayloadCompression::Zstd,
            compressed_len: PAYLOAD as u64,
            size: PAYLOAD as u64,
        };
        let mut header = synthetic(9, &[]).header;
        header.payloads = vec![info; payloads()];
        Generated { block, header }
    }

    async fn serve(&self, out: &mut BundleWriter) -> Result<(), HandlerError> {
        out.send_header(&self.header).await?;
        for i in 0..self.header.payloads.len() as u32 {
            out.begin_payload(i).await?;
            for _ in 0..PAYLOAD / MIB {
                out.send_data(&self.block).await?;
            }
            out.end_payload().await?;
        }
        let totals = out.totals();
        out.finish(totals).await?;
        Ok(())
    }
}

impl BundleHandler for Generated {
    fn handle<'a>(&'a self, _request: Request, out: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(self.serve(out))
    }
}

/// (VmRSS, VmHWM) of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_bundle_streams_in_bounded_memory() {
    let (server, cert) = start_server(Arc::new(Generated::new()));
    let client = client_trusting(&cert);
    let total = (PAYLOAD * payloads()) as u64;
    let start = Instant::now();
    let mut stream = client
        .fetch(server.local_addr(), "localhost", &request("big", TOKEN))
        .await
        .unwrap();
    let mut received = 0u64;
    let mut baseline = None;
    let mut peak_after_warmup = 0u64;
    let mut ended = false;
    let mut next_sample = 0u64;
    while let Some(ev) = stream.next_event().await.unwrap() {
        match ev {
            Event::PayloadData { data, .. } => received += data.len() as u64,
            Event::End(end) => {
                assert_eq!(end.bytes, total);
                ended = true;
            }
            _ => {}
        }
        if received >= next_sample {
            let (rss, _) = rss_kib();
            // Windows fill during the first quarter; after that RSS must stay flat.
            if received >= total / 4 {
                let base = *baseline.get_or_insert(rss);
                peak_after_warmup = peak_after_warmup.max(rss.saturating_sub(base));
            }
            next_sample += 8 * MIB as u64;
        }
    }
    let elapsed = start.elapsed();
    assert!(ended);
    assert_eq!(received, total);
    let (rss, hwm) = rss_kib();
    let mbps = total as f64 / 1e6 / elapsed.as_secs_f64();
    eprintln!(
        "THROUGHPUT: {} MiB over loopback QUIC in {:.2?}: {:.1} MB/s ({:.0} Mbit/s); \
         RSS at 1/4: {} MiB, growth after: {} MiB, final RSS {} MiB, peak RSS {} MiB \
         (client and server in one process, {} bytes on the wire)",
        total / MIB as u64,
        elapsed,
        mbps,
        mbps * 8.0,
        baseline.unwrap_or(0) / 1024,
        peak_after_warmup / 1024,
        rss / 1024,
        hwm / 1024,
        stream.bytes_received(),
    );
    // Memory does not grow with the bundle: after the first quarter (50 MiB) it stays
    // within 32 MiB of where it was, and the peak is far below the bundle's 200 MiB even
    // with both ends (and their QUIC windows) in this process.
    assert!(
        peak_after_warmup < 32 * 1024,
        "RSS grew by {} KiB",
        peak_after_warmup
    );
    assert!(hwm < 200 * 1024, "peak RSS {hwm} KiB");
    server.shutdown().await;
}
