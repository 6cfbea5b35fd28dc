//! `starlight-bench transport-matrix`: bundles over an emulated link across
//! RTT × rate × loss, each cell beside TCP through the same link.
//!
//! Topology: one link (netem where the kernel has it, else the userspace
//! emulator), the registry and a real `starlight-proxy` (default transport
//! settings) in the cloud namespace, the real `starlight fetch` (default
//! client settings, every payload verified) in the worker namespace. The
//! link is reconfigured between cells. Each cell fetches a whole bundle of a
//! synthetic image converted to the Starlight format (a smaller one on slow
//! cells), bounded by a time cap, then sends the same number of bytes over
//! TCP, bounded by the same cap.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use starlight_bench::netem::{
    self, calibrate, parse_duration, parse_rate, Backend, Link, LinkConfig, LinkStats,
};
use starlight_proxy::format::{convert_layer, Compression, ConvertOptions};

use crate::daemon::{interrupted, run_bounded, Daemon, Place, INTERRUPTED};
use crate::imagebuild::sibling_binary;
use crate::registry::Registry;

/// Bearer token of the matrix's proxy.
const TOKEN: &str = "starlight-matrix";
/// Registry port in the cloud namespace.
const REGISTRY_PORT: u16 = 5000;
/// Proxy port in the cloud namespace.
const PROXY_PORT: u16 = 4433;

/// Flags of `starlight-bench transport-matrix`.
#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Round-trip times (ms unless suffixed).
    #[arg(long, value_delimiter = ',', default_value = "0,50,150,300")]
    pub rtt: Vec<String>,
    /// Rates.
    #[arg(long, value_delimiter = ',', default_value = "10mbit,100mbit,1gbit")]
    pub rate: Vec<String>,
    /// Random loss probabilities per direction.
    #[arg(long, value_delimiter = ',', default_value = "0,0.005,0.02")]
    pub loss: Vec<f64>,
    /// Reordering probability per direction (netem's `reorder`), every cell.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Explicit cells `RTT:RATE:LOSS` (e.g. `300ms:100mbit:0.02`), instead of
    /// the product of --rtt, --rate and --loss.
    #[arg(long, value_delimiter = ',')]
    pub cells: Option<Vec<String>>,
    /// Emulator: auto (netem where the kernel has it), netem or userspace.
    #[arg(long, default_value = "auto")]
    pub emulator: String,
    /// Bundle size in MB on cells of at least 50 Mbit/s.
    #[arg(long, default_value_t = 24)]
    pub large_mb: u64,
    /// Bundle size in MB on slower cells.
    #[arg(long, default_value_t = 6)]
    pub small_mb: u64,
    /// Time cap of each cell's bundle fetch and of its TCP transfer, seconds.
    #[arg(long, default_value_t = 60)]
    pub cell_timeout: u64,
    /// Output prefix: writes PREFIX.tsv and PREFIX.json.
    #[arg(long, default_value = "bench/results/transport-matrix")]
    pub out: PathBuf,
    /// Directory of the starlight and starlight-proxy binaries (default: this
    /// executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The proxy's congestion controller (default: the proxy's default, with
    /// no configuration file at all).
    #[arg(long)]
    pub congestion: Option<String>,
    /// Directory for registry, proxy and bundle files during the run.
    #[arg(long, default_value = "/var/tmp/starlight-matrix")]
    pub work_dir: PathBuf,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// Round-trip time.
    pub rtt: Duration,
    /// Rate in bits/s.
    pub rate_bps: u64,
    /// Random loss per direction.
    pub loss: f64,
}

/// Parses `RTT:RATE:LOSS`.
pub fn parse_cell(text: &str) -> Result<Cell> {
    let parts: Vec<&str> = text.split(':').collect();
    let [rtt, rate, loss] = parts[..] else {
        bail!("cell {text:?}: expected RTT:RATE:LOSS, e.g. 300ms:100mbit:0.02");
    };
    let loss: f64 = loss
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow!("cell {text:?}: bad loss {loss:?}"))?;
    let loss = if text.ends_with('%') {
        loss / 100.0
    } else {
        loss
    };
    if !(0.0..1.0).contains(&loss) {
        bail!("cell {text:?}: loss not in [0, 1)");
    }
    Ok(Cell {
        rtt: parse_duration(rtt)?,
        rate_bps: parse_rate(rate)?,
        loss,
    })
}

/// The result of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Rate, Mbit/s.
    pub rate_mbit: f64,
    /// Random loss per direction, percent.
    pub loss_pct: f64,
    /// Reordering per direction, percent.
    pub reorder_pct: f64,
    /// The image fetched.
    pub image: String,
    /// Bundle bytes received by the fetch.
    pub bundle_bytes: u64,
    /// Whether the bundle completed and every payload verified within the cap.
    pub complete: bool,
    /// Seconds from the fetch's start (connect, token, request) to its last byte.
    pub quic_seconds: f64,
    /// Bundle goodput, Mbit/s (bytes × 8 / `quic_seconds`).
    pub quic_mbit: f64,
    /// The failure, if the fetch failed.
    pub error: Option<String>,
    /// TCP bytes received (the bundle's size, unless cut by the cap).
    pub tcp_bytes: u64,
    /// Whether TCP moved all of them within the cap.
    pub tcp_complete: bool,
    /// Seconds from TCP's connect to its last byte.
    pub tcp_seconds: f64,
    /// TCP goodput, Mbit/s.
    pub tcp_mbit: f64,
    /// Link counters during the fetch, cloud to worker.
    pub link_down: netem::DirectionStats,
}

fn delta(after: &LinkStats, before: &LinkStats) -> netem::DirectionStats {
    let (a, b) = (after.cloud_to_worker, before.cloud_to_worker);
    netem::DirectionStats {
        packets: a.packets - b.packets,
        bytes: a.bytes - b.bytes,
        drops: a.drops - b.drops,
        lost: a.lost - b.lost,
        reordered: a.reordered - b.reordered,
    }
}

/// Deterministic pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A synthetic image's layer: a tar of `mb` MB of files (mostly
/// incompressible, like binaries and compressed data; some text), converted
/// to the Starlight format. Returns (blob, diff_id).
fn synthetic_layer(mb: u64, seed: u64) -> Result<(Vec<u8>, String)> {
    let mut rng = Rng(seed | 1);
    let mut builder = tar::Builder::new(Vec::new());
    let mut left = mb * 1_000_000;
    let mut i = 0u64;
    while left > 0 {
        // Files of 4 KiB to 512 KiB.
        let size = (4096 + rng.next() % (512 * 1024)).min(left) as usize;
        let mut data = vec![0u8; size];
        if i % 5 == 4 {
            // Text: compresses about 3:1, so it counts a third.
            let line = format!("line {i} of a configuration or source file\n");
            for (d, s) in data.iter_mut().zip(line.bytes().cycle()) {
                *d = s;
            }
            left = left.saturating_sub(size as u64 / 3);
        } else {
            rng.fill(&mut data);
            left = left.saturating_sub(size as u64);
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            format!("usr/share/matrix/d{}/f{i}", i % 16),
            &data[..],
        )?;
        i += 1;
    }
    let tar = builder.into_inner()?;
    let mut blob = Vec::new();
    let converted = convert_layer(
        &tar[..],
        &mut blob,
        &ConvertOptions {
            compression: Compression::Gzip,
            level: Some(1),
        },
    )
    .context("converting the synthetic layer")?;
    Ok((blob, converted.diff_id))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an OCI layout of one image with one layer at `dir`, tagged `tag`.
fn write_layout(dir: &Path, tag: &str, blob: &[u8], diff_id: &str) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let layer_hex = sha256_hex(blob);
    fs::write(blobs.join(&layer_hex), blob)?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))?;
    let config_hex = sha256_hex(&config);
    fs::write(blobs.join(&config_hex), &config)?;
    // The layer commits to its table of contents, as `starlight convert`
    // writes it: workers refuse a layer without the annotation.
    let toc = starlight_proxy::format::commit::toc_annotation_of_blob(blob)
        .context("scanning the synthetic layer for its table of contents")?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_hex}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_hex}"),
            "size": blob.len(),
            "annotations": { transport_quic::commit::TOC_DIGEST_ANNOTATION: toc },
        }],
    }))?;
    let manifest_hex = sha256_hex(&manifest);
    fs::write(blobs.join(&manifest_hex), &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// What `starlight fetch` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FetchReport {
    seconds: f64,
    bytes: u64,
    verified: bool,
}

fn parse_fetch_report(text: &str) -> Option<FetchReport> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let ms: f64 = field("time to last byte")?
        .strip_suffix("ms")?
        .trim()
        .parse()
        .ok()?;
    let bytes = field("bytes received")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let verified = field("verified")?.starts_with("every payload");
    Some(FetchReport {
        seconds: ms / 1e3,
        bytes,
        verified,
    })
}

/// The images of the matrix and the proxy serving them in the cloud namespace.
struct Cloud {
    proxy: Option<Daemon>,
    registry: Option<Registry>,
    ca: PathBuf,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.stop_within(Duration::from_secs(3));
        }
        if let Some(r) = self.registry.take() {
            r.stop();
        }
    }
}

fn start_cloud(
    link: &Link,
    work: &Path,
    proxy_bin: &Path,
    starlight: &Path,
    images: &[(String, u64)],
    congestion: Option<&str>,
) -> Result<Cloud> {
    let place = Place::netns(link.cloud_ns());
    let host = link.cloud_addr().to_string();
    let reg_addr = format!("{host}:{REGISTRY_PORT}");
    link.set_bypass(true);
    let registry = Registry::start(
        &work.join("registry-storage"),
        &format!("0.0.0.0:{REGISTRY_PORT}"),
        &reg_addr,
        &place,
        &work.join("registry"),
    )?;
    for (i, (name, mb)) in images.iter().enumerate() {
        eprintln!("building and pushing {name} ({mb} MB)");
        let (blob, diff_id) = synthetic_layer(*mb, 0x5eed + i as u64)?;
        let layout = work.join(format!("layout-{name}"));
        let _ = fs::remove_dir_all(&layout);
        write_layout(&layout, "v1", &blob, &diff_id)?;
        run_bounded(
            place
                .command("skopeo")
                .args(["copy", "-q", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:v1", layout.display()))
                .arg(format!("docker://{reg_addr}/{name}:v1")),
            Duration::from_secs(300),
        )
        .with_context(|| format!("pushing {name}"))?;
        fs::remove_dir_all(&layout)?;
    }
    let certs = work.join("certs");
    run_bounded(
        std::process::Command::new(proxy_bin)
            .args(["gen-cert", "--out"])
            .arg(&certs)
            .args(["--name", &host]),
        Duration::from_secs(30),
    )
    .context("starlight-proxy gen-cert")?;
    let ca = certs.join("cert.pem");
    let mut cmd = place.command(proxy_bin);
    // Default transport settings: no configuration file (unless a controller is chosen).
    cmd.arg("serve");
    if let Some(cc) = congestion {
        let config = work.join("proxy.toml");
        fs::write(&config, format!("[serve]\ncongestion = {cc:?}\n"))?;
        cmd.arg("--config").arg(config);
    }
    cmd.arg("--listen")
        .arg(format!("{host}:{PROXY_PORT}"))
        .arg("--registry")
        .arg(&reg_addr)
        .arg("--plain-http")
        .arg("--db")
        .arg(work.join("proxy-db"))
        .arg("--cert")
        .arg(&ca)
        .arg("--key")
        .arg(certs.join("key.pem"))
        .arg("--token")
        .arg(TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let log = work.join("proxy.log");
    let mut proxy = Daemon::spawn("starlight-proxy", cmd, &log)?;
    proxy.wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
    })?;
    let cloud = Cloud {
        proxy: Some(proxy),
        registry: Some(registry),
        ca,
    };
    // Index every image once (untimed, unshaped).
    for (name, _) in images {
        let out = work.join("warm.bundle");
        fetch_cmd(&place, starlight, &cloud.ca, &host, name, &out, true)
            .and_then(|mut c| run_bounded(&mut c, Duration::from_secs(300)))
            .with_context(|| format!("indexing {name}"))?;
        let _ = fs::remove_file(&out);
    }
    link.set_bypass(false);
    Ok(cloud)
}

fn fetch_cmd(
    place: &Place,
    starlight: &Path,
    ca: &Path,
    host: &str,
    name: &str,
    out: &Path,
    no_verify: bool,
) -> Result<std::process::Command> {
    let mut cmd = place.command(starlight);
    cmd.arg("fetch")
        .arg("--proxy")
        .arg(format!("{host}:{PROXY_PORT}"))
        .arg("--ca")
        .arg(ca)
        .env("STARLIGHT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .arg("-o")
        .arg(out);
    if no_verify {
        cmd.arg("--no-verify");
    }
    cmd.arg(format!("{host}:{REGISTRY_PORT}/{name}:v1"));
    Ok(cmd)
}

fn run_cell(
    link: &mut Link,
    cloud: &Cloud,
    args: &MatrixArgs,
    starlight: &Path,
    cell: Cell,
) -> Result<CellResult> {
    let config = LinkConfig {
        loss: cell.loss,
        reorder: args.reorder,
        ..LinkConfig::new(cell.rtt, cell.rate_bps)
    };
    link.reconfigure(config)?;
    let (name, _) = image_for(args, cell.rate_bps);
    let cap = Duration::from_secs(args.cell_timeout);
    let place = Place::netns(link.worker_ns());
    let out = args.work_dir.join("cell.bundle");
    let host = link.cloud_addr().to_string();
    let before = link.stats();
    let t0 = Instant::now();
    let fetched = fetch_cmd(&place, starlight, &cloud.ca, &host, &name, &out, false)
        .and_then(|mut c| run_bounded(&mut c, cap));
    let wall = t0.elapsed().as_secs_f64();
    let down = delta(&link.stats(), &before);
    let _ = fs::remove_file(&out);
    let (report, error) = match fetched {
        Ok(text) => match parse_fetch_report(&text) {
            Some(r) => (Some(r), None),
            None => (None, Some(format!("unreadable report: {text}"))),
        },
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let bytes = report.map_or(0, |r| r.bytes);
    let quic_seconds = report.map_or(wall, |r| r.seconds);
    // TCP moves as many bytes as the bundle had (or the large size if it failed).
    let tcp_bytes = if bytes > 0 {
        bytes
    } else {
        image_for(args, cell.rate_bps).1 * 1_000_000
    };
    let tcp = calibrate::measure_tcp_bounded(link, tcp_bytes, cap).unwrap_or_else(|e| {
        tracing::warn!(error = %e, ?cell, "TCP measurement failed");
        calibrate::TcpBounded {
            bytes: 0,
            complete: false,
            seconds: 0.0,
            goodput_bps: 0.0,
        }
    });
    Ok(CellResult {
        rtt_ms: cell.rtt.as_secs_f64() * 1e3,
        rate_mbit: cell.rate_bps as f64 / 1e6,
        loss_pct: cell.loss * 100.0,
        reorder_pct: args.reorder * 100.0,
        image: name,
        bundle_bytes: bytes,
        complete: report.is_some_and(|r| r.verified) && error.is_none(),
        quic_seconds,
        quic_mbit: if quic_seconds > 0.0 {
            bytes as f64 * 8.0 / quic_seconds / 1e6
        } else {
            0.0
        },
        error,
        tcp_bytes: tcp.bytes,
        tcp_complete: tcp.complete,
        tcp_seconds: tcp.seconds,
        tcp_mbit: tcp.goodput_bps / 1e6,
        link_down: down,
    })
}

/// The image a cell fetches: (name, MB).
fn image_for(args: &MatrixArgs, rate_bps: u64) -> (String, u64) {
    if rate_bps > 0 && rate_bps < 50_000_000 {
        ("matrix-small".into(), args.small_mb)
    } else {
        ("matrix-large".into(), args.large_mb)
    }
}

/// The cells of a run.
pub fn cells(args: &MatrixArgs) -> Result<Vec<Cell>> {
    if let Some(list) = &args.cells {
        return list.iter().map(|c| parse_cell(c)).collect();
    }
    let mut out = Vec::new();
    for rtt in &args.rtt {
        for rate in &args.rate {
            for loss in &args.loss {
                if !(0.0..1.0).contains(loss) {
                    bail!("loss {loss} not in [0, 1)");
                }
                out.push(Cell {
                    rtt: parse_duration(rtt)?,
                    rate_bps: parse_rate(rate)?,
                    loss: *loss,
                });
            }
        }
    }
    Ok(out)
}

/// The TSV table: one line per cell.
pub fn tsv(results: &[CellResult], backend: Backend, command: &str) -> String {
    let mut out = format!("# {command}\n# emulator: {backend}\n");
    out += "rtt_ms\trate_mbit\tloss_pct\tbundle_mb\tcomplete\tquic_s\tquic_mbit\ttcp_mb\ttcp_complete\ttcp_s\ttcp_mbit\tlost_pkts\tdropped_pkts\terror\n";
    for r in results {
        out += &format!(
            "{}\t{}\t{}\t{:.1}\t{}\t{:.2}\t{:.1}\t{:.1}\t{}\t{:.2}\t{:.1}\t{}\t{}\t{}\n",
            r.rtt_ms,
            r.rate_mbit,
            r.loss_pct,
            r.bundle_bytes as f64 / 1e6,
            if r.complete { "yes" } else { "NO" },
            r.quic_seconds,
            r.quic_mbit,
            r.tcp_bytes as f64 / 1e6,
            if r.tcp_complete { "yes" } else { "cut" },
            r.tcp_seconds,
            r.tcp_mbit,
            r.link_down.lost,
            r.link_down.drops,
            r.error.as_deref().unwrap_or("-").replace(['\t', '\n'], " "),
        );
    }
    out
}

fn install_signals() -> Result<()> {
    netem::block_signals()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            while let Ok(sig) = netem::wait_for_signal() {
                tracing::warn!(signal = sig, "interrupted: stopping everything started");
                INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })?;
    Ok(())
}

fn write_with_ext(prefix: &Path, ext: &str, text: &str) -> Result<()> {
    let mut path = prefix.as_os_str().to_os_string();
    path.push(".");
    path.push(ext);
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("{ext}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(())
}

/// Runs the matrix.
pub fn run(args: MatrixArgs) -> Result<()> {
    let cells = cells(&args)?;
    let Some(first) = cells.first().copied() else {
        bail!("no cells");
    };
    let bin = |name: &str| match &args.bin_dir {
        Some(dir) => dir.join(name),
        None => sibling_binary(name),
    };
    let starlight = bin("starlight");
    let proxy_bin = bin("starlight-proxy");
    for b in [&starlight, &proxy_bin] {
        if !b.exists() {
            bail!(
                "{} is missing (cargo build -p starlight-tools -p starlight-proxy)",
                b.display()
            );
        }
    }
    netem::cleanup_stale()?;
    install_signals()?;
    let _ = fs::remove_dir_all(&args.work_dir);
    fs::create_dir_all(&args.work_dir)?;
    let mut link = Link::up_with(
        LinkConfig::new(first.rtt, first.rate_bps),
        args.emulator.parse()?,
    )?;
    let backend = link.backend();
    eprintln!("emulator: {backend}");
    let mut images = Vec::new();
    for cell in &cells {
        let image = image_for(&args, cell.rate_bps);
        if !images.contains(&image) {
            images.push(image);
        }
    }
    let cloud = start_cloud(
        &link,
        &args.work_dir,
        &proxy_bin,
        &starlight,
        &images,
        args.congestion.as_deref(),
    )?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = Instant::now();
    let mut results = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        if interrupted() {
            break;
        }
        let r = run_cell(&mut link, &cloud, &args, &starlight, *cell)?;
        eprintln!(
            "[{}/{}] {:>4} ms {:>5} Mbit/s {:>4}% loss: bundle {:.1} MB {} in {:.1} s = {:.1} Mbit/s; TCP {:.1} Mbit/s{}",
            i + 1,
            cells.len(),
            r.rtt_ms,
            r.rate_mbit,
            r.loss_pct,
            r.bundle_bytes as f64 / 1e6,
            if r.complete { "complete" } else { "FAILED" },
            r.quic_seconds,
            r.quic_mbit,
            r.tcp_mbit,
            r.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        results.push(r);
        // Partial results survive an interruption.
        write_with_ext(&args.out, "tsv", &tsv(&results, backend, &command))?;
    }
    drop(cloud);
    link.down()?;
    let _ = fs::remove_dir_all(&args.work_dir);
    let json = json!({
        "command": command,
        "emulator": backend,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "seconds": started.elapsed().as_secs_f64(),
        "transport": match &args.congestion {
            None => "defaults (proxy without configuration, starlight fetch without options)".to_string(),
            Some(cc) => format!("proxy congestion = {cc:?}, otherwise defaults"),
        },
        "cells": results,
    });
    write_with_ext(
        &args.out,
        "json",
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    print!("{}", tsv(&results, backend, &command));
    if interrupted() {
        bail!("interrupted after {} cells", results.len());
    }
    let failed = results.iter().filter(|r| !r.complete).count();
    if failed > 0 {
        bail!("{failed} of {} cells did not complete", results.len());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cells_parse_with_units() {
        let c = parse_cell("300ms:100mbit:0.02").unwrap();
        assert_eq!(c.rtt, Duration::from_millis(300));
        assert_eq!(c.rate_bps, 100_000_000);
        assert_eq!(c.loss, 0.02);
        assert_eq!(parse_cell("150:1gbit:2%").unwrap().loss, 0.02);
        for bad in ["300ms:100mbit", "x:1gbit:0", "1:1gbit:1.5", "1:1gbit:lots"] {
            assert!(parse_cell(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetch_reports_parse() {
        let text = "image              x\nmanifest           sha256:ab\ntime to header     3.0 ms\ntime to last byte  1234.5 ms\nbytes received     24000000 (19.4 MB/s)\nverified           every payload's SHA-256\noutput             /tmp/x\n";
        let r = parse_fetch_report(text).unwrap();
        assert_eq!(r.bytes, 24_000_000);
        assert!((r.seconds - 1.2345).abs() < 1e-9);
        assert!(r.verified);
        assert!(parse_fetch_report("nothing").is_none());
    }

    #[test]
    fn synthetic_layers_are_about_the_asked_size() {
        let (blob, diff_id) = synthetic_layer(2, 1).unwrap();
        let mb = blob.len() as f64 / 1e6;
        assert!((1.7..2.6).contains(&mb), "{mb} MB");
        assert!(diff_id.starts_with("sha256:"));
        // Deterministic.
        assert_eq!(synthetic_layer(2, 1).unwrap().0, blob);
    }
}
