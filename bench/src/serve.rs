//! `starlight-bench serve`: bundle serving throughput on loopback for 1, 10 and
//! 50 concurrent bundles of one image, beside `docker-registry` blob GETs of the
//! same bytes (curl, the static-server baseline), with the proxy's CPU per GB and
//! the registry bytes it read per bundle.
//!
//! Topology (all on 127.0.0.1): a real `docker-registry` holding one synthetic
//! Starlight image; the real `starlight-proxy serve` process (default settings,
//! its payload cache in a fresh directory for each round); in-process QUIC clients,
//! one connection each, reading whole bundles (framing checked, payloads not
//! verified). For each concurrency the proxy is restarted with an empty payload
//! cache (its database kept, so indexing is not measured): the first round is
//! "cold" (ranges read from the registry), the second "warm" (from the cache).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use starlight_bench::synth;
use starlight_proxy::format::{self, Compression, ConvertOptions};
use starlight_proxy::registry::RegistryClient;
use transport_quic::quic::{Client, ClientTls};
use transport_quic::{Event, Request};

use crate::cputime::parse_stat_cpu_secs;
use crate::daemon::{Daemon, Place};
use crate::registry::{free_port, Registry};

const TOKEN: &str = "starlight-bench-serve";
const REPO: &str = "bench/serve";

/// Flags of `starlight-bench serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Files in each of the image's two layers (synthetic source files).
    #[arg(long, default_value_t = 3000)]
    pub files: usize,
    /// Concurrent bundles per round.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub concurrency: Vec<usize>,
    /// Scratch directory (registry storage, proxy database and cache).
    #[arg(long, default_value = "/var/tmp/starlight-bench-serve")]
    pub work_dir: PathBuf,
    /// The `starlight-proxy` binary (default: next to this binary).
    #[arg(long)]
    pub proxy: Option<PathBuf>,
    /// Output prefix: writes PREFIX.tsv and PREFIX.txt.
    #[arg(long, default_value = "bench/results/serve")]
    pub out: PathBuf,
}

/// One measured round.
#[derive(Debug, Clone)]
struct Row {
    what: &'static str,
    concurrency: usize,
    bytes: u64,
    secs: f64,
    proxy_cpu: Option<f64>,
    registry_bytes: Option<u64>,
}

impl Row {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
}

/// The pushed image: its blobs' digests and sizes.
struct Image {
    blobs: Vec<(String, u64)>,
}

async fn push_image(registry_addr: &str, files: usize) -> Result<Image> {
    let client = RegistryClient::new(true);
    let reference = format!("{registry_addr}/{REPO}:v1");
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for seed in [1u64, 2] {
        let layer = synth::generate(files, seed)?;
        let mut blob = Vec::new();
        let converted = format::convert_layer(
            &layer.tar[..],
            &mut blob,
            &ConvertOptions {
                compression: Compression::Gzip,
                level: Some(1),
            },
        )?;
        let toc = format::commit::toc_annotation_of_blob(&blob)
            .ok_or_else(|| anyhow!("the converted layer has no table of contents"))?;
        let size = blob.len() as u64;
        let digest = client.push_blob_bytes(&reference, blob).await?;
        diff_ids.push(converted.diff_id);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
            "annotations": { starlight_proxy::convert::TOC_DIGEST_ANNOTATION: toc },
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_size = config.len();
    let config_digest = client.push_blob_bytes(&reference, config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    client
        .push_manifest(
            &reference,
            serde_json::to_vec(&manifest)?,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await?;
    let blobs = layers
        .iter()
        .filter_map(|l| Some((l["digest"].as_str()?.to_string(), l["size"].as_u64()?)))
        .collect();
    Ok(Image { blobs })
}

/// A `starlight-proxy serve` process with its metrics endpoint.
struct ProxyProcess {
    daemon: Daemon,
    addr: SocketAddr,
    metrics: String,
    cert: Vec<u8>,
}

impl ProxyProcess {
    fn start(bin: &Path, work: &Path, registry: &str, round: &str) -> Result<Self> {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let cache = work.join(format!("cache-{round}"));
        let _ = std::fs::remove_dir_all(&cache);
        let config = work.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "db = \"{}\"\n[registry]\nurl = \"{registry}\"\nplain_http = true\n[serve]\ntokens = [\"{TOKEN}\"]\nmax_bundles = 128\nmax_bundles_per_connection = 8\nmax_connections_per_address = 256\nrequire_retry = false\n[cache]\ndir = \"{}\"\n",
                work.join("db").display(),
                cache.display()
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--self-signed")
            .arg(work.join("tls"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "warn");
        let mut daemon = Daemon::spawn(
            "starlight-proxy",
            cmd,
            &work.join(format!("proxy-{round}.log")),
        )?;
        let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        daemon.wait_until(Duration::from_secs(30), || scrape(&metrics).is_ok())?;
        let cert = std::fs::read(work.join("tls/cert.pem"))?;
        Ok(ProxyProcess {
            daemon,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics,
            cert,
        })
    }

    fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.daemon.pid())).ok()?;
        parse_stat_cpu_secs(&stat)
    }

    fn registry_bytes(&self) -> Result<u64> {
        let text = scrape(&self.metrics)?;
        metric(&text, "starlight_proxy_registry_range_bytes_total")
            .ok_or_else(|| anyhow!("no registry_range_bytes metric"))
    }
}

fn scrape(url: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()?;
    if !out.status.success() {
        bail!("curl {url} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// `n` clients, one connection each, fetch the whole bundle at once; the payload
/// bytes received in all.
async fn bundles(proxy: &ProxyProcess, n: usize) -> Result<u64> {
    let request = Request {
        token: TOKEN.into(),
        image: format!("{REPO}:v1"),
        platform: None,
        held_images: vec![],
        held_payloads: vec![],
        unordered: false,
    };
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = Client::new(ClientTls::CaPem(proxy.cert.clone()))?;
        let (addr, request) = (proxy.addr, request.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client.fetch(addr, "localhost", &request).await?;
            let mut bytes = 0u64;
            while let Some(ev) = stream.next_event().await? {
                if let Event::PayloadData { data, .. } = ev {
                    bytes += data.len() as u64;
                }
            }
            Ok::<u64, anyhow::Error>(bytes)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// `n` curl processes at once, each GETting every blob of the image.
fn static_gets(registry: &str, image: &Image, n: usize) -> Result<u64> {
    let urls: Vec<String> = image
        .blobs
        .iter()
        .map(|(d, _)| format!("http://{registry}/v2/{REPO}/blobs/{d}"))
        .collect();
    let children = (0..n)
        .map(|_| {
            let mut cmd = Command::new("curl");
            cmd.args(["-fsS", "-L"]);
            for u in &urls {
                cmd.args(["-o", "/dev/null", u]);
            }
            cmd.spawn().context("curl")
        })
        .collect::<Result<Vec<_>>>()?;
    for mut c in children {
        if !c.wait()?.success() {
            bail!("a blob GET failed");
        }
    }
    Ok(image.blobs.iter().map(|(_, s)| s).sum::<u64>() * n as u64)
}

/// Measures one round of bundles on `proxy`.
fn bundle_round(
    rt: &tokio::runtime::Runtime,
    proxy: &ProxyProcess,
    what: &'static str,
    n: usize,
) -> Result<Row> {
    let (cpu0, reg0) = (proxy.cpu_secs(), proxy.registry_bytes()?);
    let started = Instant::now();
    let bytes = rt.block_on(bundles(proxy, n))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = proxy.cpu_secs().zip(cpu0).map(|(b, a)| b - a);
    let reg = proxy.registry_bytes()?.saturating_sub(reg0);
    Ok(Row {
        what,
        concurrency: n,
        bytes,
        secs,
        proxy_cpu: cpu,
        registry_bytes: Some(reg),
    })
}

/// Runs the benchmark.
pub fn run(args: ServeArgs) -> Result<()> {
    let work = args.work_dir.clone();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let bin = match &args.proxy {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory of this binary"))?
            .join("starlight-proxy"),
    };
    let port = free_port()?;
    let reg_addr = format!("127.0.0.1:{port}");
    let registry = Registry::start(
        &work.join("registry"),
        &reg_addr,
        &reg_addr,
        &Place::host(),
        &work,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let image = rt.block_on(push_image(&reg_addr, args.files))?;
    let blob_bytes: u64 = image.blobs.iter().map(|(_, s)| s).sum();
    eprintln!("image: {} blobs, {blob_bytes} bytes", image.blobs.len());
    let mut rows = Vec::new();
    for (i, &n) in args.concurrency.iter().enumerate() {
        let started = Instant::now();
        let bytes = static_gets(&reg_addr, &image, n)?;
        rows.push(Row {
            what: "registry-get",
            concurrency: n,
            bytes,
            secs: started.elapsed().as_secs_f64(),
            proxy_cpu: None,
            registry_bytes: Some(bytes),
        });
        if i == 0 {
            // Index once (not measured); later rounds reuse the database.
            let proxy = ProxyProcess::start(&bin, &work, &reg_addr, "index")?;
            rt.block_on(bundles(&proxy, 1))?;
        }
        // A fresh payload cache for each concurrency.
        let proxy = ProxyProcess::start(&bin, &work, &reg_addr, &format!("c{n}"))?;
        rows.push(bundle_round(&rt, &proxy, "bundle-cold", n)?);
        rows.push(bundle_round(&rt, &proxy, "bundle-warm", n)?);
        eprintln!("{:?}", &rows[rows.len() - 3..]);
    }
    registry.stop();
    write_report(&args, blob_bytes, &rows)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn write_report(args: &ServeArgs, blob_bytes: u64, rows: &[Row]) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut tsv = String::from(
        "what\tconcurrency\tbytes\tsecs\tmb_per_s\tproxy_cpu_s_per_gb\tregistry_bytes_per_bundle\n",
    );
    let mut txt = format!(
        "# starlight-bench serve\ncommand: {command}\nimage: {blob_bytes} bytes of layer blobs ({} files per layer, gzip level 1)\nall on 127.0.0.1, one machine (2 cores shared by client, proxy, registry)\n\n{:<13} {:>4} {:>10} {:>9} {:>13} {:>17}\n",
        args.files, "what", "n", "MB/s", "vs GET", "proxy CPU s/GB", "registry B/bundle"
    );
    for r in rows {
        let per_gb = r.proxy_cpu.map(|c| c / (r.bytes as f64 / 1e9));
        let per_bundle = r.registry_bytes.map(|b| b / r.concurrency.max(1) as u64);
        let base = rows
            .iter()
            .find(|b| b.what == "registry-get" && b.concurrency == r.concurrency)
            .map_or(f64::NAN, Row::mb_per_s);
        let _ = writeln!(
            tsv,
            "{}\t{}\t{}\t{:.3}\t{:.1}\t{}\t{}",
            r.what,
            r.concurrency,
            r.bytes,
            r.secs,
            r.mb_per_s(),
            per_gb.map_or("-".into(), |v| format!("{v:.2}")),
            per_bundle.map_or("-".into(), |v| v.to_string())
        );
        let _ = writeln!(
            txt,
            "{:<13} {:>4} {:>10.1} {:>8.0}% {:>13} {:>17}",
            r.what,
            r.concurrency,
            r.mb_per_s(),
            100.0 * r.mb_per_s() / base,
            per_gb.map_or("-".into(), |v| format!("{v:.2}")),
            per_bundle.map_or("-".into(), |v| v.to_string())
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(args.out.with_extension("tsv"), tsv)?;
    std::fs::write(args.out.with_extension("txt"), &txt)?;
    print!("{txt}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_metrics() {
        let text = "# HELP x\nstarlight_proxy_registry_range_bytes_total 12345\nstarlight_proxy_registry_range_bytes_total_other 1\n";
        assert_eq!(
            metric(text, "starlight_proxy_registry_range_bytes_total"),
            Some(12345)
        );
        assert_eq!(metric(text, "missing"), None);
    }
}
