//! `starlight-bench header-rtt`: time to header through the emulated link, cold
//! (a new connection: Retry, handshake, the token and the request pipelined) and warm
//! (the request on an authenticated connection kept open), in protocol version 3
//! (zstd-compressed header) and 2 (uncompressed), beside the bound
//! `3 × RTT + header bytes / rate`.
//!
//! Topology: one link (netem where the kernel has it, else the userspace emulator);
//! the real QUIC server of the proxy (`transport_quic::quic::Server`, default proxy
//! settings: Retry required, BBR, the default initial window) in the cloud namespace
//! serving a synthetic image; the real client in the worker namespace. The image has
//! `--entries` files in a package-like tree, each with its own digest and payload,
//! and its per-layer table, like a converted image's header.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use sha2::{Digest, Sha256};
use starlight_bench::netem::{self, parse_duration, parse_rate, Link, LinkConfig};
use transport_quic::commit::LayerEntry;
use transport_quic::quic::{
    BundleHandler, BundleWriter, Client, ClientOptions, ClientTls, HandlerError, HandlerFuture,
    Server, ServerOptions, ServerTls,
};
use transport_quic::{
    EntryKind, Event, Header, PayloadCompression, PayloadInfo, Request, Source, TocEntry,
};

/// Bearer token of the bench's server.
const TOKEN: &str = "starlight-header-rtt";
/// Server port in the cloud namespace.
const PORT: u16 = 4433;
/// Compressed bytes of each synthetic payload.
const PAYLOAD_BYTES: usize = 16;

/// Flags of `starlight-bench header-rtt`.
#[derive(Args, Debug)]
pub struct HeaderRttArgs {
    /// Round-trip times (ms unless suffixed).
    #[arg(long, value_delimiter = ',', default_value = "50,150")]
    pub rtt: Vec<String>,
    /// Link rate.
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    /// Files in the synthetic image's header.
    #[arg(long, default_value_t = 6000)]
    pub entries: usize,
    /// Measured fetches per cell (cold, warm) × version.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Emulator: auto (netem where the kernel has it), netem or userspace.
    #[arg(long, default_value = "auto")]
    pub emulator: String,
    /// Output prefix: writes PREFIX.tsv and PREFIX.txt.
    #[arg(long, default_value = "bench/results/header-rtt")]
    pub out: PathBuf,
}

/// One measured fetch.
#[derive(Debug, Clone)]
struct Sample {
    rtt_ms: u64,
    version: u16,
    warm: bool,
    run: usize,
    header_bytes: u64,
    seconds: f64,
}

const WORDS: &[&str] = &[
    "numpy", "pandas", "core", "util", "tests", "io", "compat", "linalg", "random", "fft", "_libs",
    "tslibs", "plotting", "arrays", "dtypes", "indexes", "reshape", "window",
];

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A header like a converted image's: directories, then `files` files, each with
/// its digest, its payload, and the image's single per-layer table.
fn synthetic_header(files: usize) -> Header {
    let mut layer = vec![
        LayerEntry::new("usr", EntryKind::Dir, 0o755),
        LayerEntry::new("usr/lib", EntryKind::Dir, 0o755),
        LayerEntry::new("usr/lib/python3", EntryKind::Dir, 0o755),
        LayerEntry::new("usr/lib/python3/dist-packages", EntryKind::Dir, 0o755),
    ];
    let mut payloads = Vec::with_capacity(files);
    let mut sources = vec![Source::NoContent; layer.len()];
    let mut dir = String::new();
    for i in 0..files {
        let pkg = WORDS[(i / 120) % WORDS.len()];
        let sub = WORDS[(i / 12) % WORDS.len()];
        let d = format!("usr/lib/python3/dist-packages/{pkg}{}/{sub}", i / 120);
        if d != dir {
            let parent = d
                .rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default();
            if !layer.iter().any(|e| e.path == parent) {
                layer.push(LayerEntry::new(parent, EntryKind::Dir, 0o755));
                sources.push(Source::NoContent);
            }
            layer.push(LayerEntry::new(d.clone(), EntryKind::Dir, 0o755));
            sources.push(Source::NoContent);
            dir = d;
        }
        let path = format!("{dir}/{}_{i}.py", WORDS[i % WORDS.len()]);
        let size = 200 + (sha(path.as_bytes())[0] as u64) * 97;
        let digest = sha(path.as_bytes());
        let mut e = LayerEntry::new(path, EntryKind::File, 0o644);
        e.size = size;
        e.mtime = 1_700_000_000 + (i as i64 % 7);
        e.sha256 = Some(digest);
        layer.push(e);
        sources.push(Source::Payload(payloads.len() as u32));
        payloads.push(PayloadInfo {
            sha256: digest,
            compression: PayloadCompression::Zstd,
            compressed_len: PAYLOAD_BYTES as u64,
            size,
        });
    }
    let toc = layer
        .iter()
        .cloned()
        .zip(sources)
        .map(|(e, s)| TocEntry::from_layer_entry(e, 0, s))
        .collect();
    Header {
        manifest_digest: format!("sha256:{}", hex::encode(sha(b"manifest"))),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest: vec![b'{'; 600],
        config: vec![b'{'; 1500],
        layers: vec![format!("sha256:{}", hex::encode(sha(b"layer")))],
        image_layers: vec![0],
        toc,
        payloads,
        layer_tocs: vec![layer],
    }
}

/// Serves the synthetic image: its header, then every payload.
struct Synthetic {
    header: Header,
}

impl Synthetic {
    async fn serve(&self, out: &mut BundleWriter) -> Result<(), HandlerError> {
        out.send_header(&self.header).await?;
        let body = [0u8; PAYLOAD_BYTES];
        for i in 0..self.header.payloads.len() {
            out.begin_payload(i as u32).await?;
            out.send_data(&body).await?;
            out.end_payload().await?;
        }
        let totals = out.totals();
        out.finish(totals).await?;
        Ok(())
    }
}

impl BundleHandler for Synthetic {
    fn handle<'a>(&'a self, _request: Request, out: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(self.serve(out))
    }
}

fn request() -> Request {
    Request {
        token: TOKEN.into(),
        image: "bench/synthetic:v1".into(),
        platform: None,
        held_images: Vec::new(),
        held_payloads: Vec::new(),
        unordered: false,
    }
}

/// Fetches the bundle; the time to its header and the stream bytes up to it.
async fn time_to_header(client: &Client, addr: SocketAddr) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut stream = client.fetch(addr, "localhost", &request()).await?;
    let mut at_header = None;
    while let Some(ev) = stream.next_event().await? {
        if let Event::Header(_) = ev {
            at_header = Some((started.elapsed().as_secs_f64(), stream.bytes_received()));
        }
    }
    at_header.ok_or_else(|| anyhow!("the bundle had no header"))
}

fn client(cert: &str, version: u16) -> Result<Client> {
    let options = ClientOptions {
        protocol_version: version,
        ..ClientOptions::default()
    };
    Ok(Client::with_options(
        ClientTls::CaPem(cert.as_bytes().to_vec()),
        options,
    )?)
}

/// Runs the cold and warm fetches of one cell in the worker namespace.
fn measure(cert: &str, addr: SocketAddr, rtt_ms: u64, runs: usize) -> Result<Vec<Sample>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = Vec::new();
        let pause = Duration::from_millis(200 + 2 * rtt_ms);
        for version in [3u16, 2] {
            // Warm-up: the first fetch of a cell (caches, code paths), not recorded.
            time_to_header(&client(cert, version)?, addr).await?;
            for run in 0..runs {
                // Cold: a new client (new UDP port), so Retry, handshake and token.
                let c = client(cert, version)?;
                let (seconds, header_bytes) = time_to_header(&c, addr).await?;
                out.push(Sample {
                    rtt_ms,
                    version,
                    warm: false,
                    run,
                    header_bytes,
                    seconds,
                });
                drop(c);
                tokio::time::sleep(pause).await;
            }
            let c = client(cert, version)?;
            c.warm(addr, "localhost", TOKEN).await?;
            tokio::time::sleep(pause).await;
            for run in 0..runs {
                let (seconds, header_bytes) = time_to_header(&c, addr).await?;
                out.push(Sample {
                    rtt_ms,
                    version,
                    warm: true,
                    run,
                    header_bytes,
                    seconds,
                });
                tokio::time::sleep(pause).await;
            }
            anyhow::ensure!(
                c.connections_opened() == 1,
                "the warm connection was not reused"
            );
        }
        Ok(out)
    })
}

/// Serves in the cloud namespace until `stop` fires.
fn serve(
    link: &Link,
    tls: ServerTls,
    header: Header,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let addr = SocketAddr::from((link.cloud_addr(), PORT));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = link.spawn_in_cloud(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let handler = Arc::new(Synthetic { header });
            let server = Server::bind_with(addr, tls, [TOKEN], handler, ServerOptions::default())
                .map_err(std::io::Error::other)?;
            let _ = ready_tx.send(());
            let _ = stop.await;
            server.shutdown().await;
            Ok(())
        })
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the server did not start"))?;
    Ok(handle)
}

/// Joins a namespace thread, mapping a panic to an error.
fn join<T>(handle: std::thread::JoinHandle<std::io::Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
        .map_err(Into::into)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the bench and writes PREFIX.tsv and PREFIX.txt.
pub fn run(args: HeaderRttArgs) -> Result<()> {
    let rate_bps = parse_rate(&args.rate)?;
    let header = synthetic_header(args.entries);
    let (cert, key) = transport_quic::tls::self_signed(&["localhost"])?;
    netem::cleanup_stale()?;
    let mut samples = Vec::new();
    let mut backend = String::new();
    for rtt in &args.rtt {
        let rtt = parse_duration(rtt)?;
        let link = Link::up_with(LinkConfig::new(rtt, rate_bps), args.emulator.parse()?)?;
        backend = link.backend().to_string();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let tls = ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.clone().into_bytes(),
        };
        let server = serve(&link, tls, header.clone(), stop_rx)?;
        let addr = SocketAddr::from((link.cloud_addr(), PORT));
        let (c, runs, ms) = (cert.clone(), args.runs, rtt.as_millis() as u64);
        let measured = link.spawn_in_worker(move || {
            measure(&c, addr, ms, runs).map_err(|e| std::io::Error::other(format!("{e:#}")))
        })?;
        let result = join(measured);
        let _ = stop_tx.send(());
        let _ = join(server);
        link.down()?;
        samples.extend(result.with_context(|| format!("RTT {ms} ms"))?);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (tsv, txt) = report(&samples, rate_bps, args.entries, &command, &backend);
    print!("{txt}");
    crate::write_out(&args.out, "tsv", &tsv)?;
    crate::write_out(&args.out, "txt", &txt)?;
    Ok(())
}

fn bound_ms(rtt_ms: u64, bytes: u64, rate_bps: u64) -> f64 {
    3.0 * rtt_ms as f64 + bytes as f64 * 8.0 / rate_bps as f64 * 1000.0
}

fn report(
    samples: &[Sample],
    rate_bps: u64,
    entries: usize,
    command: &str,
    backend: &str,
) -> (String, String) {
    let mut tsv = format!(
        "# {command}\nrtt_ms\trate_mbit\tversion\tmode\trun\theader_bytes\ttime_ms\tbound_ms\n"
    );
    for s in samples {
        let _ = writeln!(
            tsv,
            "{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{:.1}",
            s.rtt_ms,
            rate_bps / 1_000_000,
            s.version,
            if s.warm { "warm" } else { "cold" },
            s.run,
            s.header_bytes,
            s.seconds * 1000.0,
            bound_ms(s.rtt_ms, s.header_bytes, rate_bps)
        );
    }
    let mut txt = format!(
        "Time to header, {entries}-file synthetic image, {} Mbit/s, emulator {backend}\n\
         command: {command}\n\
         bound = 3 x RTT + header bytes / rate; medians of the runs\n\n\
         {:>6} {:>7} {:>5} {:>12} {:>9} {:>9} {:>6} {:>5}\n",
        rate_bps / 1_000_000,
        "RTT ms",
        "version",
        "mode",
        "header bytes",
        "median ms",
        "bound ms",
        "RTTs",
        "meets"
    );
    let mut keys: Vec<(u64, u16, bool)> = samples
        .iter()
        .map(|s| (s.rtt_ms, s.version, s.warm))
        .collect();
    keys.dedup();
    for (rtt, version, warm) in keys {
        let cell: Vec<&Sample> = samples
            .iter()
            .filter(|s| (s.rtt_ms, s.version, s.warm) == (rtt, version, warm))
            .collect();
        let ms = median(cell.iter().map(|s| s.seconds * 1000.0).collect());
        let bytes = cell.iter().map(|s| s.header_bytes).max().unwrap_or(0);
        let bound = bound_ms(rtt, bytes, rate_bps);
        let transfer = bytes as f64 * 8.0 / rate_bps as f64 * 1000.0;
        let rtts = (ms - transfer) / rtt as f64;
        let _ = writeln!(
            txt,
            "{rtt:>6} {version:>7} {:>5} {bytes:>12} {ms:>9.1} {bound:>9.1} {rtts:>6.2} {:>5}",
            if warm { "warm" } else { "cold" },
            if ms <= bound { "yes" } else { "no" }
        );
    }
    (tsv, txt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_header_is_valid_and_compresses() {
        let h = synthetic_header(3000);
        transport_quic::codec::validate_header(&h, &transport_quic::Limits::default()).unwrap();
        assert_eq!(h.payloads.len(), 3000);
        let mut v2 = bytes::BytesMut::new();
        let mut v3 = bytes::BytesMut::new();
        transport_quic::codec::ResponseEncoder::default()
            .header(&h, &mut v2)
            .unwrap();
        transport_quic::codec::ResponseEncoder::default()
            .with_version(3)
            .header(&h, &mut v3)
            .unwrap();
        assert!(v3.len() * 2 < v2.len(), "{} of {}", v3.len(), v2.len());
    }

    #[test]
    fn the_report_compares_with_the_bound() {
        let s = |warm, ms: f64| Sample {
            rtt_ms: 50,
            version: 3,
            warm,
            run: 0,
            header_bytes: 300_000,
            seconds: ms / 1000.0,
        };
        let (tsv, txt) = report(
            &[s(false, 200.0), s(true, 80.0)],
            100_000_000,
            10,
            "cmd",
            "x",
        );
        assert!(tsv.starts_with("# cmd\n"));
        assert_eq!(bound_ms(50, 300_000, 100_000_000), 174.0);
        assert!(txt.contains("cold"), "{txt}");
        let lines: Vec<&str> = txt.lines().filter(|l| l.contains(" 300000 ")).collect();
        assert!(
            lines[0].ends_with("no") && lines[1].ends_with("yes"),
            "{txt}"
        );
    }
}
