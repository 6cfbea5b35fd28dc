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
use crate::sweep::estargz;
use crate::sweep::worker::{children_cpu, proc_usage, reset_peak, Binaries, Worker, WorkerOptions};

/// A provisioning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `ctr pull` (overlayfs snapshotter), then `ctr run`.
    Containerd,
    /// `starlight pull` through starlightd and the never-traced proxy, then
    /// `ctr run --snapshotter starlight` (the same as `starlight-never`;
    /// the name of sweeps before the three orders).
    Starlight,
    /// Starlight, the image never traced: the proxy's static start-up
    /// order, computed at index time.
    StarlightNever,
    /// The containerd-native path: `starlight rpull` (a containerd-client
    /// pull whose layer Prepares carry CRI's image labels, answered by
    /// starlightd's remote snapshots from one bundle of the never-traced
    /// proxy), then `ctr run --snapshotter starlight`.
    StarlightRpull,
    /// Starlight ordered by production traces: N warm-up starts (`ctr run`
    /// on other workers, whose starlightd uploads the trace of each real
    /// start), then a fresh worker is measured.
    StarlightProd,
    /// Starlight ordered by `starlight trace --runs N`.
    StarlightTrace,
    /// `starlight fetch` of the delta bundle from the never-traced proxy
    /// (download and verify only).
    Wget,
    /// eStargz without workload (`ctr-remote image convert --estargz`),
    /// `ctr-remote images rpull` through the stargz snapshotter, `ctr run`.
    Estargz,
    /// Workload-optimized eStargz (`ctr-remote image optimize`, which runs
    /// the image once at conversion: prioritized files first).
    EstargzOpt,
}

/// Every method, in report order.
pub const ALL_METHODS: &[Method] = &[
    Method::Containerd,
    Method::Starlight,
    Method::StarlightNever,
    Method::StarlightRpull,
    Method::StarlightProd,
    Method::StarlightTrace,
    Method::Wget,
    Method::Estargz,
    Method::EstargzOpt,
];

impl Method {
    /// Parses a method name.
    pub fn parse(s: &str) -> Result<Self> {
        match ALL_METHODS.iter().find(|m| m.name() == s) {
            Some(m) => Ok(*m),
            None => {
                let known: Vec<&str> = ALL_METHODS.iter().map(|m| m.name()).collect();
                bail!("unknown method {s:?} ({})", known.join(", "))
            }
        }
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Containerd => "containerd",
            Method::Starlight => "starlight",
            Method::StarlightNever => "starlight-never",
            Method::StarlightRpull => "starlight-rpull",
            Method::StarlightProd => "starlight-prod",
            Method::StarlightTrace => "starlight-trace",
            Method::Wget => "wget",
            Method::Estargz => "estargz",
            Method::EstargzOpt => "estargz-opt",
        }
    }

    /// The proxy (bundle order) the method talks to, if any.
    pub fn order(self) -> Option<Order> {
        match self {
            Method::Starlight | Method::StarlightNever | Method::StarlightRpull | Method::Wget => {
                Some(Order::Never)
            }
            Method::StarlightProd => Some(Order::Prod),
            Method::StarlightTrace => Some(Order::Trace),
            Method::Containerd | Method::Estargz | Method::EstargzOpt => None,
        }
    }

    /// Whether the method runs the stargz snapshotter.
    pub fn is_estargz(self) -> bool {
        matches!(self, Method::Estargz | Method::EstargzOpt)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the proxy a Starlight method talks to orders bundles; each order
/// has a proxy (and database) of its own in the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Order {
    /// No trace ever: the static start-up order.
    Never,
    /// Traces of N warm-up starts on other workers (production traces).
    Prod,
    /// `starlight trace --runs N`.
    Trace,
}

impl Order {
    /// The name (used in directory names).
    pub fn name(self) -> &'static str {
        match self {
            Order::Never => "never",
            Order::Prod => "prod",
            Order::Trace => "trace",
        }
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
    /// Seconds to the image's header: Starlight, the daemon's request to
    /// the bundle header (starlightd's metrics); `wget`, `starlight fetch`'s
    /// own; eStargz, `ctr-remote images rpull` (layer tables of contents).
    #[serde(default)]
    pub header_s: Option<f64>,
    /// Seconds to the last byte of the image: Starlight, the daemon's
    /// request to its last payload stored (starlightd's metrics, waited for
    /// after the ready line); `wget`, `starlight fetch`'s own; containerd,
    /// `ctr pull` returned (download and unpack).
    #[serde(default)]
    pub last_byte_s: Option<f64>,
}

impl RunResult {
    /// A run not done yet (`ok` false, times NaN).
    pub fn pending(
        image: &str,
        method: Method,
        scenario: Scenario,
        rtt_ms: Option<f64>,
        rate_bps: Option<u64>,
        run: usize,
    ) -> Self {
        RunResult {
            image: image.to_string(),
            method,
            scenario,
            rtt_ms,
            rate_bps,
            run,
            ok: false,
            error: None,
            time_s: f64::NAN,
            pull_s: f64::NAN,
            bytes_down: None,
            bytes_up: None,
            daemon_cpu_s: 0.0,
            client_cpu_s: 0.0,
            peak_rss: 0,
            header_s: None,
            last_byte_s: None,
        }
    }
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
    /// The eStargz peer, when an eStargz method runs.
    pub estargz: Option<&'a estargz::Tools>,
}

/// Counters read at the start of the timed part of a run.
pub struct Meter {
    start: Instant,
    link0: Option<(u64, u64)>,
    daemons0: Vec<(u32, f64)>,
    /// CPU seconds of this process's waited-for children at the start.
    pub client0: f64,
}

impl Meter {
    /// Starts timing; `daemons` are the worker daemons' pids.
    pub fn start(ctx: &RunContext<'_>, daemons: &[u32]) -> Self {
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

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Reads the counters (call before stopping anything).
    pub fn finish(&self, ctx: &RunContext<'_>, result: &mut RunResult) {
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
pub struct Bypass<'a>(Option<&'a Link>);

impl<'a> Bypass<'a> {
    /// Unshapes `link` until dropped.
    pub fn on(link: Option<&'a Link>) -> Self {
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

/// Runs `method` for `image` in `scenario`; `result` is filled in place
/// (an error leaves `ok` false).
pub fn run_one(
    ctx: &RunContext<'_>,
    image: &CorpusImage,
    method: Method,
    scenario: Scenario,
    result: &mut RunResult,
) -> Result<()> {
    let c = ctx.cloud;
    let t = ctx.timeout;
    match method {
        Method::Containerd => {
            let (v1, v2) = (
                c.reference(&image.name, &image.v1),
                c.reference(&image.name, &image.v2),
            );
            let mut w = Worker::start(
                &ctx.worker,
                &ctx.work_dir,
                ctx.bins,
                WorkerOptions::default(),
            )?;
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
            result.last_byte_s = Some(result.pull_s);
            w.run_until_ready(&v2, None, &image.ready, t, &interrupted)?;
            result.time_s = meter.elapsed();
            meter.finish(ctx, result);
            w.stop_containers();
            result.client_cpu_s = children_cpu() - meter.client0;
            w.shutdown();
        }
        Method::Starlight
        | Method::StarlightNever
        | Method::StarlightRpull
        | Method::StarlightProd
        | Method::StarlightTrace => {
            let order = method.order().context("a Starlight method has an order")?;
            let rpull = method == Method::StarlightRpull;
            run_starlight(ctx, image, order, rpull, scenario, result)?;
        }
        Method::Wget => {
            let v1s = c.reference(&image.name, &image.v1_starlight);
            let v2s = c.reference(&image.name, &image.v2_starlight);
            let scratch = tempfile::Builder::new()
                .prefix("wget.")
                .tempdir_in(&ctx.work_dir)
                .context("creating a scratch dir")?;
            let out = scratch.path().join("bundle");
            let meter = Meter::start(ctx, &[]);
            let report = fetch(
                ctx,
                &v2s,
                (scenario == Scenario::Update).then_some(v1s.as_str()),
                &out,
            )?;
            result.time_s = meter.elapsed();
            result.pull_s = result.time_s;
            result.header_s = fetch_report_ms(&report, "time to header").map(|ms| ms / 1e3);
            result.last_byte_s = fetch_report_ms(&report, "time to last byte").map(|ms| ms / 1e3);
            meter.finish(ctx, result);
            result.client_cpu_s = children_cpu() - meter.client0;
        }
        Method::Estargz | Method::EstargzOpt => {
            let tools = ctx.estargz.context("the eStargz tools are not set up")?;
            estargz::run(ctx, tools, image, method, scenario, result)?;
        }
    }
    result.ok = true;
    Ok(())
}

/// One Starlight run against the proxy of `order`, provisioning v2 with
/// `starlight pull` or, if `rpull`, containerd's native path (`starlight
/// rpull`, remote snapshots); measured workers record no traces, so the
/// proxies' orders stay what the sweep prepared.
fn run_starlight(
    ctx: &RunContext<'_>,
    image: &CorpusImage,
    order: Order,
    rpull: bool,
    scenario: Scenario,
    result: &mut RunResult,
) -> Result<()> {
    let c = ctx.cloud;
    let t = ctx.timeout;
    let v1s = c.reference(&image.name, &image.v1_starlight);
    let v2s = c.reference(&image.name, &image.v2_starlight);
    let proxy = c.proxy(order)?;
    let opts = WorkerOptions {
        proxy: Some(&proxy.access),
        ..WorkerOptions::default()
    };
    let mut w = Worker::start(&ctx.worker, &ctx.work_dir, ctx.bins, opts)?;
    if scenario == Scenario::Update {
        // v1 wholly present (every content in the store), deployed once.
        wait_pull_complete(&w, ctx.bins, &v1s, t)?;
        w.run_until_ready(&v1s, Some("starlight"), &image.ready, t, &interrupted)?;
        w.stop_containers();
    }
    let m0 = PullMetrics::parse(&w.metrics()?);
    let meter = Meter::start(ctx, &w.daemon_pids());
    if rpull {
        w.starlight_rpull(ctx.bins, &v2s, t)?;
    } else {
        w.starlight_pull(ctx.bins, &v2s, t)?;
    }
    result.pull_s = meter.elapsed();
    w.run_until_ready(&v2s, Some("starlight"), &image.ready, t, &interrupted)?;
    result.time_s = meter.elapsed();
    meter.finish(ctx, result);
    // Untimed: the rest of the bundle, for the time to the last byte.
    let deadline = Instant::now() + t;
    let m1 = loop {
        let m = PullMetrics::parse(&w.metrics()?);
        if m.complete.1 > m0.complete.1 || Instant::now() > deadline || interrupted() {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if m1.header.1 > m0.header.1 {
        result.header_s = Some(m1.header.0 - m0.header.0);
    }
    if m1.complete.1 > m0.complete.1 {
        result.last_byte_s = Some(m1.complete.0 - m0.complete.0);
    }
    w.stop_containers();
    result.client_cpu_s = children_cpu() - meter.client0;
    w.shutdown();
    Ok(())
}

/// starlightd's pull histograms: (sum of seconds, count).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PullMetrics {
    /// `starlight_time_to_header_seconds`.
    pub header: (f64, f64),
    /// `starlight_time_to_complete_seconds`.
    pub complete: (f64, f64),
}

impl PullMetrics {
    /// Reads the histograms' `_sum` and `_count` from Prometheus text
    /// (missing ones read as zero).
    pub fn parse(text: &str) -> Self {
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let (key, v) = l.rsplit_once(' ')?;
                    (key == name).then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0.0)
        };
        PullMetrics {
            header: (
                value("starlight_time_to_header_seconds_sum"),
                value("starlight_time_to_header_seconds_count"),
            ),
            complete: (
                value("starlight_time_to_complete_seconds_sum"),
                value("starlight_time_to_complete_seconds_count"),
            ),
        }
    }
}

/// A `time to ... N ms` line of `starlight fetch`'s report.
pub fn fetch_report_ms(report: &str, what: &str) -> Option<f64> {
    report.lines().find_map(|l| {
        let rest = l.strip_prefix(what)?.trim();
        rest.strip_suffix("ms")?.trim().parse().ok()
    })
}

/// `starlight fetch IMAGE [--from FROM] -o OUT` from the worker, against
/// the never-traced proxy; returns its report.
fn fetch(ctx: &RunContext<'_>, image: &str, from: Option<&str>, out: &Path) -> Result<String> {
    let p = &ctx.cloud.proxy(Order::Never)?.access;
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
    run_bounded(&mut cmd, ctx.timeout)
}

/// `starlight pull --wait`: returns once every content of the image is in
/// the store (the update scenario's v1 must be wholly present).
pub fn wait_pull_complete(
    w: &Worker,
    bins: &Binaries,
    image: &str,
    timeout: Duration,
) -> Result<()> {
    let api = w.api_socket.as_ref().context("no starlightd")?;
    let mut cmd = w.place().command(&bins.starlight);
    cmd.arg("pull")
        .arg("--api")
        .arg(api)
        .arg("--wait")
        .arg(image);
    run_bounded(&mut cmd, timeout).context("starlight pull --wait")?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_by_name_and_serde() {
        for m in ALL_METHODS {
            assert_eq!(Method::parse(m.name()).unwrap(), *m);
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
        }
        assert!(Method::parse("nope")
            .unwrap_err()
            .to_string()
            .contains("estargz-opt"));
    }

    #[test]
    fn metrics_and_fetch_reports_are_read() {
        let text = "# HELP x\nstarlight_time_to_header_seconds_sum 0.25\nstarlight_time_to_header_seconds_count 1\nstarlight_time_to_complete_seconds_sum 3.5\nstarlight_time_to_complete_seconds_count 1\n";
        let m = PullMetrics::parse(text);
        assert_eq!(m.header, (0.25, 1.0));
        assert_eq!(m.complete, (3.5, 1.0));
        assert_eq!(PullMetrics::parse(""), PullMetrics::default());
        let report = "time to header     412.5 ms\ntime to last byte  2051.0 ms\n";
        assert_eq!(fetch_report_ms(report, "time to header"), Some(412.5));
        assert_eq!(fetch_report_ms(report, "time to last byte"), Some(2051.0));
        assert_eq!(fetch_report_ms(report, "time to ready"), None);
    }
}
