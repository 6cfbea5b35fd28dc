//! The eStargz peer: the stargz snapshotter (built by
//! `bench/estargz/build.sh`) beside containerd, images converted with
//! Debian's `ctr-remote`, plain (`image convert --estargz`) and
//! workload-optimized (`image optimize`, which runs the image once and puts
//! the files it read first, with a prefetch landmark).
//!
//! Conversion happens once per image, on the first site of a sweep that
//! needs it, from inside the worker's namespace with the link unshaped; the
//! converted images are pushed to the corpus registry (tags
//! `v1-estargz`, `v2-estargz`, `v1-estargz-opt`, `v2-estargz-opt`) and
//! reused by later sweeps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::daemon::{interrupted, run_bounded, Place};
use crate::imagebuild::CorpusImage;
use crate::sweep::cloud::Cloud;
use crate::sweep::methods::{Bypass, Meter, Method, RunContext, RunResult, Scenario};
use crate::sweep::worker::{children_cpu, Binaries, StargzSetup, Worker, WorkerOptions};

/// Seconds `ctr-remote image optimize` watches the sample run.
pub const OPTIMIZE_PERIOD_SECS: u64 = 15;

/// The eStargz tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `containerd-stargz-grpc`.
    pub daemon: PathBuf,
    /// `ctr-remote`.
    pub ctr_remote: PathBuf,
}

impl Tools {
    /// Finds the tools in `dir`, else on `PATH`; the error says how to
    /// build them.
    pub fn find(dir: Option<&Path>) -> Result<Tools> {
        let look = |name: &str| -> Option<PathBuf> {
            if let Some(d) = dir {
                let p = d.join(name);
                return p.exists().then_some(p);
            }
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        };
        let hint = "build them with bench/estargz/build.sh and pass --estargz-dir target/estargz";
        Ok(Tools {
            daemon: look("containerd-stargz-grpc")
                .with_context(|| format!("containerd-stargz-grpc not found ({hint})"))?,
            ctr_remote: look("ctr-remote")
                .with_context(|| format!("ctr-remote not found ({hint})"))?,
        })
    }
}

/// The tag of `base` (`v1` or `v2`) converted for `method`.
pub fn tag(base: &str, method: Method) -> String {
    match method {
        Method::EstargzOpt => format!("{base}-estargz-opt"),
        _ => format!("{base}-estargz"),
    }
}

/// `ctr-remote` talking to `w`'s containerd.
fn ctr_remote(w: &Worker, tools: &Tools) -> Command {
    let mut cmd = w.place().command(&tools.ctr_remote);
    cmd.arg("--address")
        .arg(&w.socket)
        .arg("--namespace")
        .arg(&w.namespace);
    cmd
}

fn run_remote(w: &Worker, tools: &Tools, args: &[&str], timeout: Duration) -> Result<String> {
    let mut cmd = ctr_remote(w, tools);
    cmd.args(args);
    run_bounded(&mut cmd, timeout).with_context(|| format!("ctr-remote {}", args.join(" ")))
}

/// Converts and pushes what `methods` need of `image` (v1 and v2) unless the
/// registry has it already.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    place: &Place,
    work_dir: &Path,
    bins: &Binaries,
    tools: &Tools,
    cloud: &Cloud,
    link: Option<&starlight_bench::netem::Link>,
    image: &CorpusImage,
    methods: &[Method],
) -> Result<()> {
    let wanted: Vec<(String, String, Method)> = methods
        .iter()
        .filter(|m| m.is_estargz())
        .flat_map(|m| {
            [(&image.v1, "v1"), (&image.v2, "v2")]
                .map(|(src, base)| (src.clone(), tag(base, *m), *m))
        })
        .filter(|(_, dst, _)| !cloud.has(&image.name, dst))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let _fast = Bypass::on(link);
    let w = Worker::start(place, work_dir, bins, WorkerOptions::default())?;
    let long = Duration::from_secs(1800);
    for (src, dst, method) in wanted {
        if interrupted() {
            bail!("interrupted");
        }
        let src = cloud.reference(&image.name, &src);
        let dst = cloud.reference(&image.name, &dst);
        tracing::info!(%src, %dst, "converting to eStargz");
        run_remote(&w, tools, &["images", "pull", "--plain-http", &src], long)?;
        if method == Method::EstargzOpt {
            let period = OPTIMIZE_PERIOD_SECS.to_string();
            run_remote(
                &w,
                tools,
                &[
                    "image",
                    "optimize",
                    "--oci",
                    "--net-host",
                    "--period",
                    &period,
                    &src,
                    &dst,
                ],
                long,
            )?;
        } else {
            run_remote(
                &w,
                tools,
                &["image", "convert", "--estargz", "--oci", &src, &dst],
                long,
            )?;
        }
        run_remote(&w, tools, &["images", "push", "--plain-http", &dst], long)?;
    }
    w.shutdown();
    Ok(())
}

/// One eStargz run: `ctr-remote images rpull` (lazy: the layers' tables of
/// contents), then `ctr run --snapshotter stargz` until the ready line.
pub fn run(
    ctx: &RunContext<'_>,
    tools: &Tools,
    image: &CorpusImage,
    method: Method,
    scenario: Scenario,
    result: &mut RunResult,
) -> Result<()> {
    let c = ctx.cloud;
    let t = ctx.timeout;
    let v1 = c.reference(&image.name, &tag("v1", method));
    let v2 = c.reference(&image.name, &tag("v2", method));
    let setup = StargzSetup {
        daemon: tools.daemon.clone(),
        registry: format!("{}:{}", c.addrs.host, c.addrs.registry_port),
    };
    let opts = WorkerOptions {
        stargz: Some(&setup),
        ..WorkerOptions::default()
    };
    let mut w = Worker::start(&ctx.worker, &ctx.work_dir, ctx.bins, opts)?;
    let rpull = |w: &Worker, r: &str| {
        run_remote(
            w,
            tools,
            &[
                "images",
                "rpull",
                "--plain-http",
                "--snapshotter",
                "stargz",
                r,
            ],
            t,
        )
    };
    if scenario == Scenario::Update {
        let _fast = Bypass::on(ctx.link);
        rpull(&w, &v1)?;
        w.run_until_ready(&v1, Some("stargz"), &image.ready, t, &interrupted)?;
        w.stop_containers();
    }
    let meter = Meter::start(ctx, &w.daemon_pids());
    rpull(&w, &v2)?;
    result.pull_s = meter.elapsed();
    result.header_s = Some(result.pull_s);
    w.run_until_ready(&v2, Some("stargz"), &image.ready, t, &interrupted)?;
    result.time_s = meter.elapsed();
    meter.finish(ctx, result);
    w.stop_containers();
    result.client_cpu_s = children_cpu() - meter.client0;
    w.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_variant() {
        assert_eq!(tag("v2", Method::Estargz), "v2-estargz");
        assert_eq!(tag("v1", Method::EstargzOpt), "v1-estargz-opt");
    }
}
