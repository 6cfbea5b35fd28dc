//! `starlight gc`: runs starlightd's garbage collection now and prints what
//! it freed (or, with `--dry-run`, what it would free).

use anyhow::bail;
use starlight_api::{GcReport, Request, Response};

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

#[cfg(test)]
mod tests {
    use super::*;
    use starlight_api::GcEviction;

    #[test]
    fn a_dry_run_says_what_would_go() {
        let r = GcReport {
            dry_run: true,
            store_bytes_before: 9_000_000,
            store_bytes_after: 4_000_000,
            max_store_bytes: Some(5_000_000),
            evicted: vec![GcEviction {
                image: "reg/app:v1".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                reason: "bound".into(),
                contents: 3,
                bytes: 5_000_000,
            }],
            contents_freed: 3,
            bytes_freed: 5_000_000,
            in_use: 1,
        };
        let text = render(&r);
        assert!(
            text.starts_with(
                "would evict reg/app:v1 (sha256:aaaaaaaaaaaa, bound): 3 contents, 5.0 MB\n"
            ),
            "{text}"
        );
        assert!(text.contains("1 images, 3 contents, 5.0 MB would be freed; store 9.0 MB -> 4.0 MB (max 5.0 MB); 1 in use kept"), "{text}");
        let done = render(&GcReport {
            dry_run: false,
            ..r
        });
        assert!(done.starts_with("evicted reg/app:v1"), "{done}");
    }
}
