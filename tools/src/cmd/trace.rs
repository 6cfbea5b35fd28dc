//! `starlight trace`: collects startup traces of an image (paper §4.4,
//! Trace Collection) and uploads them to the proxy, which ranks the image's
//! files by them.
//!
//! Each run: remove the image from starlightd (so its contents arrive again),
//! pull it with tracing on and ranks ignored (payloads in layer order, so the
//! order favours no file), run it with `ctr` until its ready line, take the
//! trace (the first open of each file, and how long each open waited), stop
//! the container, store the trace in the pending directory, upload it, and
//! delete it once the proxy acknowledged it. `--upload-pending` retries the
//! traces a failed upload left behind.

mod container;
mod pending;
pub mod proxy;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use regex::Regex;
use sha2::{Digest, Sha256};
use starlight_api::settings::{Settings, DEFAULT_CONTAINERD_SOCKET};
use starlight_api::TraceRecord;
use starlight_api::{call, Request, Response};
use tracing::{info, warn};
use transport_quic::{Trace, TraceOpen};

use super::api::{request, ApiArgs};
use container::Ctr;
use pending::PendingDir;
use proxy::ProxyArgs;

/// Where traces wait for the proxy by default.
pub const DEFAULT_PENDING_DIR: &str = "/var/lib/starlight/traces/pending";

/// Arguments of `starlight trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Traced runs, each from an empty store for the image.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// The application is ready when a line of its stdout matches this
    /// pattern (default: when it exits successfully).
    #[arg(long)]
    ready: Option<String>,
    /// Seconds a run may take to become ready.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// containerd's socket (default: starlightd's `containerd_socket`, or
    /// /run/containerd/containerd.sock).
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace images are registered in (default: starlightd's
    /// `namespace`, or `default`).
    #[arg(long)]
    namespace: Option<String>,
    /// Run the container in the host's network namespace (`ctr run
    /// --net-host`): without it the container has no network, not even a
    /// loopback that is up, so servers binding 127.0.0.1 fail.
    #[arg(long)]
    net_host: bool,
    /// Where traces wait until the proxy acknowledged them.
    #[arg(long, default_value = DEFAULT_PENDING_DIR)]
    pending_dir: PathBuf,
    /// Only upload the traces left in the pending directory.
    #[arg(long, conflicts_with_all = ["image", "args"])]
    upload_pending: bool,
    /// The image to trace.
    #[arg(required_unless_present = "upload_pending")]
    image: Option<String>,
    /// Arguments for the container's command.
    #[arg(last = true)]
    args: Vec<String>,
}

/// A trace id unique to this image, run, process and instant.
fn trace_id(digest: &str, run: u32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update(run.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(nanos.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Milliseconds, rounded, from the daemon's fractional values.
fn ms(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let r = v.round() as u64;
        r
    } else {
        0
    }
}

/// The wire trace of one run's records (in order of first open).
fn to_trace(id: String, image: &str, digest: &str, records: &[TraceRecord]) -> Trace {
    Trace {
        id,
        image: image.to_string(),
        manifest_digest: digest.to_string(),
        opens: records
            .iter()
            .enumerate()
            .map(|(rank, r)| TraceOpen {
                path: r.path.clone(),
                layer: r.layer,
                rank: u32::try_from(rank).unwrap_or(u32::MAX),
                ms_since_start: ms(r.at_ms),
                ms_waited: ms(r.wait_ms),
            })
            .collect(),
    }
}

/// Runs `starlight trace`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let pending = PendingDir::new(&args.pending_dir);
    let target = args.proxy.connect().await?;
    if args.upload_pending {
        let (delivered, failed) = pending.upload_all(&target).await?;
        println!(
            "{delivered} pending trace(s) delivered, {failed} still pending in {}",
            pending.path().display()
        );
        if failed > 0 {
            bail!("{failed} trace(s) could not be uploaded; they stay pending");
        }
        return Ok(());
    }
    let image = args.image.clone().context("no image given")?;
    let ready = match &args.ready {
        Some(p) => Some(Regex::new(p).with_context(|| format!("invalid --ready pattern {p:?}"))?),
        None => None,
    };
    let daemon = Settings::load(&args.proxy.config, false)
        .with_context(|| format!("reading {}", args.proxy.config.display()))?;
    let ctr = Ctr {
        address: args
            .containerd_socket
            .clone()
            .or(daemon.containerd_socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_SOCKET)),
        namespace: args
            .namespace
            .clone()
            .or(daemon.namespace)
            .unwrap_or_else(|| "default".into()),
        net_host: args.net_host,
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut kept = 0;
    let mut not_ready = 0;
    let mut ready_secs: Vec<f64> = Vec::new();
    for run in 1..=args.runs {
        // An empty store for the image: its contents arrive again.
        match call(
            &args.api.socket,
            &Request::Remove {
                image: image.clone(),
                force: false,
            },
            |_| {},
        )
        .await?
        {
            Response::Error(message) => info!(%image, "not removed ({message})"),
            _ => info!(%image, "removed from starlightd"),
        }
        let pull = Request::Pull {
            image: image.clone(),
            from: vec![],
            wait: false,
            trace: true,
            unordered: true,
        };
        let Response::Pulled(report) = request(&args.api, &pull, |_| {}).await? else {
            bail!("starlightd answered the pull of {image} with something else");
        };
        let id = trace_id(&report.digest, run);
        let container = format!("starlight-trace-{}", &id[..12]);
        let api = args.api.clone();
        let taken = std::sync::Arc::new(tokio::sync::Mutex::new(None));
        let slot = taken.clone();
        let traced = report.image.clone();
        let outcome = ctr
            .run_until_ready(
                &report.image,
                &container,
                &args.args,
                ready.as_ref(),
                timeout,
                || async move {
                    let r = request(&api, &Request::TakeTrace { image: traced }, |_| {}).await;
                    *slot.lock().await = Some(r);
                },
            )
            .await?;
        let Some(ready_after) = outcome.ready else {
            not_ready += 1;
            warn!(
                run,
                "{}; no trace kept",
                outcome.problem.unwrap_or_else(|| "not ready".into())
            );
            // Stop recording for this image.
            let _ = call(
                &args.api.socket,
                &Request::TakeTrace {
                    image: report.image.clone(),
                },
                |_| {},
            )
            .await;
            continue;
        };
        let records = match taken.lock().await.take() {
            Some(Ok(Response::Trace(records))) => records,
            Some(Ok(other)) => bail!("starlightd answered TakeTrace with {other:?}"),
            Some(Err(e)) => return Err(e.context("taking the trace")),
            None => bail!("the trace was not taken"),
        };
        let blocked = records.iter().filter(|r| r.wait_ms >= 1.0).count();
        let waited: f64 = records.iter().map(|r| r.wait_ms).sum();
        let trace = to_trace(id, &report.image, &report.digest, &records);
        let file = pending.write(&trace)?;
        ready_secs.push(ready_after.as_secs_f64());
        println!(
            "run {run}/{}: ready {:.3} s after `ctr run`; {} files opened, {blocked} opens blocked ({waited:.0} ms waiting)",
            args.runs,
            ready_after.as_secs_f64(),
            records.len()
        );
        match pending.upload(&file, &target).await {
            Ok(ack) => println!(
                "  trace {} uploaded: {} paths ranked, {} ignored{}",
                ack.id,
                ack.folded,
                ack.ignored,
                if ack.duplicate {
                    " (already known)"
                } else {
                    ""
                }
            ),
            Err(e) => {
                kept += 1;
                warn!("{e:#}; the trace stays in {}", file.display());
            }
        }
    }
    if !ready_secs.is_empty() {
        #[allow(clippy::cast_precision_loss)]
        let mean = ready_secs.iter().sum::<f64>() / ready_secs.len() as f64;
        println!(
            "{} of {} runs traced (mean {mean:.3} s from `ctr run` to ready); {} uploaded",
            ready_secs.len(),
            args.runs,
            ready_secs.len() - kept
        );
    }
    if kept > 0 {
        bail!(
            "{kept} trace(s) not uploaded; they stay in {}: run `starlight trace --upload-pending`",
            pending.path().display()
        );
    }
    if not_ready == args.runs {
        bail!("no run became ready: nothing traced");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_ranked_opens() {
        let records = vec![
            TraceRecord {
                path: "b".into(),
                layer: 1,
                at_ms: 0.0,
                wait_ms: 12.6,
            },
            TraceRecord {
                path: "a".into(),
                layer: 0,
                at_ms: 30.2,
                wait_ms: 0.0,
            },
        ];
        let t = to_trace("id".into(), "r/app:v1", "sha256:m", &records);
        let got: Vec<(&str, u32, u32, u64, u64)> = t
            .opens
            .iter()
            .map(|o| {
                (
                    o.path.as_str(),
                    o.layer,
                    o.rank,
                    o.ms_since_start,
                    o.ms_waited,
                )
            })
            .collect();
        assert_eq!(got, vec![("b", 1, 0, 0, 13), ("a", 0, 1, 30, 0)]);
        assert_ne!(trace_id("sha256:m", 1), trace_id("sha256:m", 2));
        assert_eq!(trace_id("sha256:m", 1).len(), 32);
    }
}
