//! `starlight gc`: runs starlightd's garbage collection now and prints what
//! it freed (or, with `--dry-run`, what it would free).

use anyhow::bail;
use starlight_worker::api::{GcReport, Request, Response};

use super::api::{human_bytes, request, ApiArgs};

/// Arguments of `starlight gc`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Images no container uses are evicted: first those removed from containerd
(`ctr images rm`), then those unused for `gc_unused_secs`, then, while the
store is above `max_store_bytes`, the least recently used. Contents another
image still names are kept. starlightd also collects after each pull and
every `gc_interval_secs`.

Examples:
  starlight gc --dry-run     # what would go, changing nothing
  starlight gc               # evict now")]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// Print what would be freed; evict nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The report as printed.
pub fn render(r: &GcReport) -> String {
    let verb = if r.dry_run { "would evict" } else { "evicted" };
    let mut out = String::new();
    for e in &r.evicted {
        let short = e.digest.get(..19).unwrap_or(&e.digest);
        out.push_str(&format!(
            "{verb} {} ({short}, {}): {} contents, {}\n",
            e.image,
            e.reason,
            e.contents,
            human_bytes(e.bytes)
        ));
    }
    let bound = r
        .max_store_bytes
        .map_or_else(|| "unbounded".to_string(), human_bytes);
    out.push_str(&format!(
        "{} images, {} contents, {} {}; store {} -> {} (max {bound}); {} in use kept\n",
        r.evicted.len(),
        r.contents_freed,
        human_bytes(r.bytes_freed),
        if r.dry_run { "would be freed" } else { "freed" },
        human_bytes(r.store_bytes_before),
        human_bytes(r.store_bytes_after),
        r.in_use
    ));
    out
}

/// Runs `starlight gc`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let req = Request::Gc {
        dry_run: args.dry_run,
    };
    let response = request(&args.api, &req, |_| {}).await?;
    let Response::Gc(report) = response else {
        bail!("starlightd answered a collection with {response:?}");
    };
    print!("{}", render(&report));
    Ok(())
}
