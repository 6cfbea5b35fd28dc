//! `starlight pull`: asks starlightd to pull an image through the proxy and
//! register it in containerd. Returns as soon as the image can run (its
//! bundle header arrived), or with `--wait` once every content arrived.

use anyhow::bail;
use starlight_worker::api::{PullReport, Request, Response};

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
