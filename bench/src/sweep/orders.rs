//! Preparing the bundle orders of a site before its timed runs:
//! - `prod`: N warm-up starts, each on a fresh worker whose starlightd
//!   records and uploads the trace of the real start (`[traces]` on), each
//!   waited for until the proxy counts it;
//! - `trace`: `starlight trace --runs N` on a fresh worker;
//! - `never`: nothing (its proxy never receives a trace: measured workers
//!   record none).
//!
//! Each order's proxy then builds its v2 plans once, untimed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::{interrupted, run_bounded, Place};
use crate::imagebuild::CorpusImage;
use crate::sweep::cloud::{Cloud, CloudProxy};
use crate::sweep::methods::{Bypass, Order};
use crate::sweep::worker::{Binaries, Worker, WorkerOptions};

/// How the traced orders are prepared.
#[derive(Debug, Clone, Copy)]
pub struct Prep {
    /// Warm-up starts before `prod` runs.
    pub warmups: u32,
    /// `starlight trace --runs` before `trace` runs.
    pub trace_runs: u32,
    /// `[traces] window_secs` of the warm-up workers.
    pub window_secs: u64,
    /// Bound on each step.
    pub timeout: Duration,
}

/// What a proxy answers to `starlight ranks`: the trace count and the
/// ranked paths with their hits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranks {
    /// Traces folded in.
    pub traces: u64,
    /// Paths by ascending average rank, with the traces that opened them.
    pub paths: Vec<(String, u64)>,
}

/// Parses the output of `starlight ranks`.
pub fn parse_ranks(text: &str) -> Result<Ranks> {
    let mut lines = text.lines();
    let first = lines.next().context("empty `starlight ranks` output")?;
    let traces = first
        .rsplit_once(": ")
        .and_then(|(_, t)| t.strip_suffix(" trace(s)"))
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("no trace count in {first:?}"))?;
    let mut paths = Vec::new();
    let mut in_table = false;
    for line in lines {
        if line.trim_start().starts_with("order") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        // "{order:>5}  {avg:>10}  {hits:>5}  {path}"
        let mut rest = line.trim_start();
        let mut fields = Vec::new();
        for _ in 0..3 {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        let hits = fields[2]
            .parse()
            .with_context(|| format!("bad ranks line {line:?}"))?;
        if !rest.is_empty() {
            paths.push((rest.to_string(), hits));
        }
    }
    Ok(Ranks { traces, paths })
}

/// `starlight ranks IMAGE` against `proxy`, from `place`.
pub fn ranks(place: &Place, bins: &Binaries, proxy: &CloudProxy, image: &str) -> Result<Ranks> {
    let mut cmd = place.command(&bins.starlight);
    cmd.arg("ranks")
        .arg("--config")
        .arg(&proxy.client_config)
        .arg(image);
    let out = run_bounded(&mut cmd, Duration::from_secs(60)).context("starlight ranks")?;
    parse_ranks(&out)
}

/// Prepares `order` for `image` on the site of `cloud`, then has its proxy
/// build the v2 plans (fresh and from v1).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    place: &Place,
    work_dir: &std::path::Path,
    bins: &Binaries,
    cloud: &Cloud,
    link: Option<&starlight_bench::netem::Link>,
    image: &CorpusImage,
    order: Order,
    prep: &Prep,
) -> Result<()> {
    let proxy = cloud.proxy(order)?;
    let v1s = cloud.reference(&image.name, &image.v1_starlight);
    let v2s = cloud.reference(&image.name, &image.v2_starlight);
    let _fast = Bypass::on(link);
    match order {
        Order::Never => {}
        Order::Trace => {
            let w = Worker::start(
                place,
                work_dir,
                bins,
                WorkerOptions {
                    proxy: Some(&proxy.access),
                    ..WorkerOptions::default()
                },
            )?;
            let config = w.starlightd_config.clone().context("no starlightd")?;
            let api = w.api_socket.clone().context("no starlightd")?;
            let mut cmd = place.command(&bins.starlight);
            cmd.arg("trace")
                .arg("--config")
                .arg(&config)
                .arg("--api")
                .arg(&api)
                .arg("--runs")
                .arg(prep.trace_runs.to_string())
                .arg("--ready")
                .arg(format!("^{}$", image.ready))
                .arg("--timeout")
                .arg(prep.timeout.as_secs().to_string())
                .arg("--net-host")
                .arg("--pending-dir")
                .arg(w.dir().join("pending"))
                .arg(&v2s);
            let out = run_bounded(&mut cmd, prep.timeout * (prep.trace_runs + 1))
                .with_context(|| format!("starlight trace {v2s}"))?;
            tracing::info!(image = image.name, "starlight trace:\n{}", out.trim());
            w.shutdown();
        }
        Order::Prod => {
            for k in 1..=prep.warmups {
                if interrupted() {
                    bail!("interrupted");
                }
                warmup(place, work_dir, bins, cloud, proxy, image, &v2s, k, prep)
                    .with_context(|| format!("warm-up start {k} of {}", image.name))?;
            }
        }
    }
    std::fs::create_dir_all(work_dir)?;
    let scratch = work_dir.join(format!("warm-{}.bundle", order.name()));
    cloud.warm(&proxy.access, &bins.starlight, &v2s, None, &scratch)?;
    cloud.warm(&proxy.access, &bins.starlight, &v2s, Some(&v1s), &scratch)?;
    Ok(())
}

/// One warm-up start: pull, `ctr run` until ready on a fresh worker with
/// production traces on, then wait until the proxy counts `k` traces.
#[allow(clippy::too_many_arguments)]
fn warmup(
    place: &Place,
    work_dir: &std::path::Path,
    bins: &Binaries,
    cloud: &Cloud,
    proxy: &CloudProxy,
    image: &CorpusImage,
    v2s: &str,
    k: u32,
    prep: &Prep,
) -> Result<()> {
    let _ = cloud;
    let mut w = Worker::start(
        place,
        work_dir,
        bins,
        WorkerOptions {
            proxy: Some(&proxy.access),
            trace_window_secs: Some(prep.window_secs),
            ..WorkerOptions::default()
        },
    )?;
    w.starlight_pull(bins, v2s, prep.timeout)?;
    w.run_until_ready(
        v2s,
        Some("starlight"),
        &image.ready,
        prep.timeout,
        &interrupted,
    )?;
    let deadline = Instant::now() + Duration::from_secs(prep.window_secs + 60);
    loop {
        let r = ranks(place, bins, proxy, v2s)?;
        if r.traces >= u64::from(k) {
            break;
        }
        if Instant::now() > deadline || interrupted() {
            bail!(
                "the proxy counts {} trace(s) of {v2s}, expected {k}",
                r.traces
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    w.stop_containers();
    w.shutdown();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranks_output_is_parsed() {
        let text = "10.77.0.2:5000/nginx:v2-starlight (sha256:84): 3 trace(s)\n order    avg rank   hits  path\n    1        0.00      3  etc/group\n    2        1.00      2  usr/share/my file\n";
        let r = parse_ranks(text).unwrap();
        assert_eq!(r.traces, 3);
        assert_eq!(
            r.paths,
            vec![
                ("etc/group".to_string(), 3),
                ("usr/share/my file".to_string(), 2)
            ]
        );
        let none =
            parse_ranks("x (sha256:1): 0 trace(s)\nno ranks: payloads are sent in layer order\n")
                .unwrap();
        assert_eq!(none, Ranks::default());
        assert!(parse_ranks("garbage").is_err());
    }
}
