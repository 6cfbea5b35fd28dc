//! One measured run: a provisioning method applied to one image in one
//! scenario, timed from the provisioning command to the ready line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use starlight_bench::netem::Link;

use crate::daemon::{interrupted, run_bounded, Place};
use crate::imagebuild::CorpusImage;
use crate::sweep::cloud::Cloud;
use crate::sweep::worker::{children_cpu, proc_usage, reset_peak, Binaries, Worker};

/// A provisioning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `ctr pull` (overlayfs snapshotter), then `ctr run`.
    Containerd,
    /// `starlight pull` through starlightd and the proxy, then `ctr run
    /// --snapshotter starlight`.
    Starlight,
    /// `starlight fetch` of the delta bundle (download and verify only).
    Wget,
}

impl Method {
    /// Parses a method name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "containerd" => Method::Containerd,
            "starlight" => Method::Starlight,
            "wget" => Method::Wget,
            other => bail!("unknown method {other:?} (containerd, starlight, wget, estargz)"),
        })
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Containerd => "containerd",
            Method::Starlight => "starlight",
            Method::Wget => "wget",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A provisioning scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Empty worker; provision v2.
    Fresh,
    /// v1 present (pulled and run once); provision v2.
    Update,
}

impl Scenario {
    /// Parses a scenario name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fresh" => Scenario::Fresh,
            "update" => Scenario::Update,
            other => bail!("unknown scenario {other:?} (fresh, update)"),
        })
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fresh => "fresh",
            Scenario::Update => "update",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Image name.
    pub image: String,
    /// Method.
    pub method: Method,
    /// Scenario.
    pub scenario: Scenario,
    /// Configured round-trip time (ms); `None` on loopback.
    pub rtt_ms: Option<f64>,
    /// Configured rate (bit/s); `None` on loopback.
    pub rate_bps: Option<u64>,
    /// Run number (1-based).
    pub run: usize,
    /// Whether the run reached the ready line (or, for wget, completed).
    pub ok: bool,
    /// The error, when not ok.
    pub error: Option<String>,
    /// Seconds from the provisioning command to the ready line (NaN, which
    /// JSON writes as null, when the run failed).
    #[serde(deserialize_with = "nan_if_null")]
    pub time_s: f64,
    /// Seconds until the pull/fetch command returned.
    #[serde(deserialize_with = "nan_if_null")]
    pub pull_s: f64,
    /// Bytes that crossed the link towards the worker (IP packets).
    pub bytes_down: Option<u64>,
    /// Bytes that crossed the link towards the cloud.
    pub bytes_up: Option<u64>,
    /// CPU seconds of the worker daemons (containerd, starlightd) during
    /// the timed part.
    pub daemon_cpu_s: f64,
    /// CPU seconds of the worker's client commands (ctr, starlight).
    pub client_cpu_s: f64,
    /// Sum of the daemons' peak resident sets during the timed part, bytes.
    pub peak_rss: u64,
}

/// Reads a number, or null as NaN (serde_json writes NaN as null).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What a run needs from the sweep.
pub struct RunContext<'a> {
    /// Where worker processes run.
    pub worker: Place,
    /// Directory for worker state.
    pub work_dir: PathBuf,
    /// Binaries.
    pub bins: &'a Binaries,
    /// The cloud services.
    pub cloud: &'a Cloud,
    /// The emulated link, if any.
    pub link: Option<&'a Link>,
    /// Bound on each step.
    pub timeout: Duration,
}

struct Meter {
    start: Instant,
    link0: Option<(u64, u64)>,
    daemons0: Vec<(u32, f64)>,
    client0: f64,
}

impl Meter {
    fn start(ctx: &RunContext<'_>, daemons: &[u32]) -> Self {
        let daemons0 = daemons
            .iter()
            .map(|&pid| {
                reset_peak(pid);
                (pid, proc_usage(pid).map_or(0.0, |u| u.0))
            })
            .collect();
        Self {
            link0: ctx.link.map(|l| {
                let s = l.stats();
                (s.cloud_to_worker.bytes, s.worker_to_cloud.bytes)
            }),
            daemons0,
            client0: children_cpu(),
            start: Instant::now(),
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Reads the counters (call before stopping anything).
    fn finish(&self, ctx: &RunContext<'_>, result: &mut RunResult) {
        if let (Some(link), Some((down0, up0))) = (ctx.link, self.link0) {
            let s = link.stats();
            result.bytes_down = Some(s.cloud_to_worker.bytes - down0);
            result.bytes_up = Some(s.worker_to_cloud.bytes - up0);
        }
        for &(pid, cpu0) in &self.daemons0 {
            if let Some((cpu, peak)) = proc_usage(pid) {
                result.daemon_cpu_s += cpu - cpu0;
                result.peak_rss += peak;
            }
        }
    }
}

/// Unshapes the link while alive.
struct Bypass<'a>(Option<&'a Link>);

impl<'a> Bypass<'a> {
    fn on(link: Option<&'a Link>) -> Self {
        if let Some(l) = link {
            l.set_bypass(true);
        }
        Self(link)
    }
}

impl Drop for Bypass<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.0 {
            l.set_bypass(false);
        }
    }
}

/// References of an image in both formats.
fn refs(cloud: &Cloud, image: &CorpusImage) -> [String; 4] {
    [
        cloud.reference(&image.name, &image.v1),
        cloud.reference(&image.name, &image.v2),
        cloud.reference(&image.name, &image.v1_starlight),
        cloud.reference(&image.name, &image.v2_starlight),
    ]
}

/// Runs `method` for `image` in `scenario`; `result` is filled in place
/// (an error leaves `ok` false).
pub fn run_one(
    ctx: &RunContext<'_>,
    image: &CorpusImage,
    method: Method,
    scenario: Scenario,
    result: &mut RunResult,
) -> Result<()> {
    let [v1, v2, v1s, v2s] = refs(ctx.cloud, image);
    let t = ctx.timeout;
    match method {
        Method::Containerd => {
            let mut w = Worker::start(&ctx.worker, &ctx.work_dir, ctx.bins, None)?;
            if scenario == Scenario::Update {
                // Untimed setup at full speed: ctr is a new process (new
                // connections) for v2, so nothing learnt here carries over.
                let _fast = Bypass::on(ctx.link);
                w.ctr_ok(&["images", "pull", "--plain-http", &v1], t)?;
                w.run_until_ready(&v1, None, &image.ready, t, &interrupted)?;
                w.stop_containers();
            }
            let meter = Meter::start(ctx, &w.daemon_pids());
            w.ctr_ok(&["images", "pull", "--plain-http", &v2], t)?;
            result.pull_s = meter.elapsed();
            w.run_until_ready(&v2, None, &image.ready, t, &interrupted)?;
            result.time_s = meter.elapsed();
            meter.finish(ctx, result);
            w.stop_containers();
            result.client_cpu_s = children_cpu() - meter.client0;
            w.shutdown();
        }
        Method::Starlight => {
            let mut w =
                Worker::start(&ctx.worker, &ctx.work_dir, ctx.bins, Some(&ctx.cloud.proxy))?;
            if scenario == Scenario::Update {
                // v1 wholly present (every content in the store), deployed once.
                wait_pull_complete(&w, ctx.bins, &v1s, t)?;
                w.run_until_ready(&v1s, Some("starlight"), &image.ready, t, &interrupted)?;
                w.stop_containers();
            }
            let meter = Meter::start(ctx, &w.daemon_pids());
            w.starlight_pull(ctx.bins, &v2s, t)?;
            result.pull_s = meter.elapsed();
            w.run_until_ready(&v2s, Some("starlight"), &image.ready, t, &interrupted)?;
            result.time_s = meter.elapsed();
            meter.finish(ctx, result);
            w.stop_containers();
            result.client_cpu_s = children_cpu() - meter.client0;
            w.shutdown();
        }
        Method::Wget => {
            let scratch = tempfile::Builder::new()
                .prefix("wget.")
                .tempdir_in(&ctx.work_dir)
                .context("creating a scratch dir")?;
            let out = scratch.path().join("bundle");
            let meter = Meter::start(ctx, &[]);
            fetch(
                ctx,
                &v2s,
                (scenario == Scenario::Update).then_some(v1s.as_str()),
                &out,
            )?;
            result.time_s = meter.elapsed();
            result.pull_s = result.time_s;
            meter.finish(ctx, result);
            result.client_cpu_s = children_cpu() - meter.client0;
        }
    }
    result.ok = true;
    Ok(())
}

/// `starlight fetch IMAGE [--from FROM] -o OUT` from the worker.
fn fetch(ctx: &RunContext<'_>, image: &str, from: Option<&str>, out: &Path) -> Result<()> {
    let p = &ctx.cloud.proxy;
    let mut cmd = ctx.worker.command(&ctx.bins.starlight);
    cmd.arg("fetch")
        .arg("--proxy")
        .arg(&p.addr)
        .arg("--ca")
        .arg(&p.ca_file)
        .arg("--token")
        .arg(&p.token);
    if let Some(from) = from {
        cmd.arg("--from").arg(from);
    }
    cmd.arg("-o").arg(out).arg(image);
    run_bounded(&mut cmd, ctx.timeout)?;
    Ok(())
}

/// `starlight pull --wait`: returns once every content of the image is in
/// the store (the update scenario's v1 must be wholly present).
fn wait_pull_complete(w: &Worker, bins: &Binaries, image: &str, timeout: Duration) -> Result<()> {
    let api = w.api_socket.as_ref().context("no starlightd")?;
    let mut cmd = std::process::Command::new(&bins.starlight);
    cmd.arg("pull")
        .arg("--api")
        .arg(api)
        .arg("--wait")
        .arg(image);
    run_bounded(&mut cmd, timeout).context("starlight pull --wait (v1 complete)")?;
    Ok(())
}
