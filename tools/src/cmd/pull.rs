//! `starlight pull`: asks starlightd to pull an image through the proxy and
//! register it in containerd. Returns as soon as the image can run (its
//! bundle header arrived), or with `--wait` once every content arrived.

use anyhow::bail;
use starlight_api::{PullReport, Request, Response};

use super::api::{human_bytes, request, ApiArgs};

/// Arguments of `starlight pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// An image starlightd holds whose files the proxy may skip (reference
    /// or manifest digest); repeatable. Default: every complete image held.
    #[arg(long = "from")]
    from: Vec<String>,
    /// Return only once the whole image arrived.
    #[arg(long)]
    wait: bool,
    /// Record the first open of each file (trace collection).
    #[arg(long)]
    trace: bool,
    /// Ask for the payloads in layer order rather than by rank.
    #[arg(long)]
    unordered: bool,
    /// The image (`repo:tag`, with the proxy's default registry, or `host/repo:tag`).
    image: String,
}

fn registered_line(r: &PullReport) -> String {
    format!(
        "registered {} ({}) in {:.3} s; {} payloads ({}) to receive",
        r.image,
        r.digest,
        r.registered_secs,
        r.payloads,
        human_bytes(r.payload_bytes)
    )
}

/// One line per stream when the pull was resumed (or named held contents),
/// then the totals: what a break cost is visible.
fn attempt_lines(r: &PullReport) -> Vec<String> {
    let attempts = r.attempts.as_deref().unwrap_or_default();
    if attempts.len() <= 1 && r.held_payloads == 0 {
        return Vec::new();
    }
    let mut lines = Vec::new();
    if r.held_payloads > 0 {
        lines.push(format!(
            "{} contents already held were not sent again",
            r.held_payloads
        ));
    }
    for (i, a) in attempts.iter().enumerate() {
        lines.push(format!(
            "stream {}: {} payloads stored of {} announced, {} of payloads ({} on the wire){}",
            i + 1,
            a.payloads_stored,
            a.payloads_announced,
            human_bytes(a.payload_bytes),
            human_bytes(a.bytes_received),
            a.error
                .as_deref()
                .map(|e| format!("; broke: {e}"))
                .unwrap_or_default()
        ));
    }
    if let (Some(n), Some(bytes)) = (r.payloads_received, r.payload_bytes_received) {
        lines.push(format!(
            "in total {n} payloads, {} of payloads received ({} sent again after breaks)",
            human_bytes(bytes),
            human_bytes(bytes.saturating_sub(r.payload_bytes))
        ));
    }
    lines
}

/// Runs `starlight pull`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let req = Request::Pull {
        image: args.image.clone(),
        from: args.from,
        wait: args.wait,
        trace: args.trace,
        unordered: args.unordered,
    };
    let response = request(&args.api, &req, |progress| {
        if let Response::Registered(r) = progress {
            println!("{}", registered_line(r));
        }
    })
    .await?;
    let Response::Pulled(r) = response else {
        bail!("starlightd answered a pull with {response:?}");
    };
    if !args.wait {
        println!("{}", registered_line(&r));
        return Ok(());
    }
    let received = r.bytes_received.unwrap_or(0);
    let secs = r.complete_secs.unwrap_or(0.0);
    for line in attempt_lines(&r) {
        println!("{line}");
    }
    if r.complete == Some(true) {
        println!(
            "complete {} in {secs:.3} s; {} received",
            r.image,
            human_bytes(received)
        );
        Ok(())
    } else {
        bail!(
            "{} is incomplete after {secs:.3} s ({} received): see starlightd's log",
            r.image,
            human_bytes(received)
        )
    }
}
