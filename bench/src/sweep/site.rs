//! One site of a sweep: an emulated link (or loopback) with its cloud
//! (registry and one proxy per bundle order), every image indexed and
//! every order prepared before the timed runs.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use starlight_bench::netem::{Link, LinkConfig};

use crate::daemon::{interrupted, Place};
use crate::imagebuild::{CorpusImage, REGISTRY_DIR};
use crate::sweep::cloud::Cloud;
use crate::sweep::coverage::{self, Coverage};
use crate::sweep::estargz;
use crate::sweep::methods::{Method, Order};
use crate::sweep::orders::{self, Prep};
use crate::sweep::worker::Binaries;

/// What every site shares.
pub struct Plan<'a> {
    /// Images.
    pub images: &'a [CorpusImage],
    /// Methods.
    pub methods: &'a [Method],
    /// Binaries.
    pub bins: &'a Binaries,
    /// `starlight-proxy`.
    pub proxy_bin: Option<&'a Path>,
    /// The corpus directory.
    pub corpus_dir: &'a Path,
    /// The sweep's scratch directory.
    pub work: &'a Path,
    /// How the traced orders are prepared.
    pub prep: Prep,
    /// The eStargz tools, when an eStargz method runs.
    pub estargz: Option<&'a estargz::Tools>,
    /// No emulated link.
    pub loopback: bool,
    /// Link rate.
    pub rate_bps: u64,
}

impl Plan<'_> {
    /// The orders the methods need, each once.
    pub fn orders(&self) -> Vec<Order> {
        let mut o: Vec<Order> = self.methods.iter().filter_map(|m| m.order()).collect();
        o.sort();
        o.dedup();
        o
    }
}

/// A prepared site.
pub struct Site {
    /// Its RTT.
    pub rtt: Duration,
    /// Its link (none on loopback).
    pub link: Option<Link>,
    /// Its cloud.
    pub cloud: Cloud,
    /// Where its workers run.
    pub worker: Place,
}

/// Brings up the site of `rtt` and prepares it: indexing, traced orders,
/// eStargz conversions. The first site (`coverage` some) also computes the
/// static coverage of each image.
pub fn setup(
    plan: &Plan<'_>,
    rtt: Duration,
    pb: &ProgressBar,
    coverage: Option<&mut Vec<Coverage>>,
) -> Result<Site> {
    let link = if plan.loopback {
        None
    } else {
        Some(Link::up(LinkConfig::new(rtt, plan.rate_bps))?)
    };
    let (worker, cloud_place, host) = match &link {
        Some(l) => (
            Place::netns(l.worker_ns()),
            Place::netns(l.cloud_ns()),
            l.cloud_addr().to_string(),
        ),
        None => (Place::host(), Place::host(), "127.0.0.1".to_string()),
    };
    let storage = plan.corpus_dir.join(REGISTRY_DIR);
    let cloud_dir = plan.work.join(format!("cloud-{}", rtt.as_millis()));
    let orders = plan.orders();
    let cloud = Cloud::start(
        &cloud_place,
        &host,
        &storage,
        &cloud_dir,
        plan.proxy_bin.unwrap_or(Path::new("starlight-proxy")),
        &orders,
        super::proxy_send_window(rtt, plan.rate_bps),
    )?;
    let workers = plan.work.join("workers");
    for image in plan.images {
        let mut tags = Vec::new();
        if plan.methods.contains(&Method::Containerd) || plan.estargz.is_some() {
            tags.extend([&image.v1, &image.v2]);
        }
        if !orders.is_empty() {
            tags.extend([&image.v1_starlight, &image.v2_starlight]);
        }
        for tag in tags {
            if !cloud.has(&image.name, tag) {
                bail!("{}:{tag} is missing from the corpus registry", image.name);
            }
        }
        for proxy in cloud.proxies() {
            if interrupted() {
                bail!("interrupted");
            }
            pb.set_message(format!(
                "rtt {}ms: indexing {} ({})",
                rtt.as_millis(),
                image.name,
                proxy.order.name()
            ));
            let scratch = cloud_dir.join("warm.bundle");
            let v1 = cloud.reference(&image.name, &image.v1_starlight);
            cloud.warm(&proxy.access, &plan.bins.starlight, &v1, None, &scratch)?;
            pb.set_message(format!(
                "rtt {}ms: preparing {} ({})",
                rtt.as_millis(),
                image.name,
                proxy.order.name()
            ));
            orders::prepare(
                &worker,
                &workers,
                plan.bins,
                &cloud,
                link.as_ref(),
                image,
                proxy.order,
                &plan.prep,
            )?;
        }
        if let Some(tools) = plan.estargz {
            pb.set_message(format!("converting {} to eStargz", image.name));
            estargz::prepare(
                &worker,
                &workers,
                plan.bins,
                tools,
                &cloud,
                link.as_ref(),
                image,
                plan.methods,
            )?;
        }
    }
    if let Some(rows) = coverage {
        static_coverage(plan, &cloud, &worker, rows);
    }
    Ok(Site {
        rtt,
        link,
        cloud,
        worker,
    })
}

/// Fills `rows` with each image's static coverage against the traced
/// orders' ranks (trace first, else prod); failures are logged, not fatal.
fn static_coverage(plan: &Plan<'_>, cloud: &Cloud, worker: &Place, rows: &mut Vec<Coverage>) {
    let source = [Order::Trace, Order::Prod]
        .into_iter()
        .find_map(|o| cloud.proxy(o).ok());
    let Some(source) = source else {
        return;
    };
    let storage = plan.corpus_dir.join(REGISTRY_DIR);
    for image in plan.images {
        let v2s = cloud.reference(&image.name, &image.v2_starlight);
        let scratch = plan.work.join(format!("coverage-{}", image.name));
        let got = orders::ranks(worker, plan.bins, source, &v2s).and_then(|ranks| {
            let (order, sizes) =
                coverage::static_order(&storage, &scratch, &image.name, &image.v2_starlight)?;
            let needed: Vec<String> = ranks
                .paths
                .into_iter()
                .filter(|(_, hits)| *hits > 0)
                .map(|(p, _)| p)
                .collect();
            Ok(Coverage::compute(
                &image.name,
                &format!("{} ({} traces)", source.order.name(), ranks.traces),
                &order,
                &needed,
                &sizes,
            ))
        });
        let _ = std::fs::remove_dir_all(&scratch);
        match got {
            Ok(c) => rows.push(c),
            Err(e) => tracing::warn!(image = image.name, "static coverage: {e:#}"),
        }
    }
}
