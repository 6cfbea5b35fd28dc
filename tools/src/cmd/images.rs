//! `starlight images`: lists the images starlightd holds.

use anyhow::bail;
use starlight_api::{Request, Response};

use super::api::{human_bytes, request, ApiArgs};

/// Arguments of `starlight images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `starlight images`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let response = request(&args.api, &Request::Images, |_| {}).await?;
    let Response::Images(images) = response else {
        bail!("starlightd answered a listing with {response:?}");
    };
    println!(
        "{:<40} {:<20} {:<10} {:>7} {:>15} {:>10}",
        "IMAGE", "DIGEST", "STATE", "FILES", "CONTENTS", "SIZE"
    );
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        println!(
            "{:<40} {:<20} {:<10} {:>7} {:>15} {:>10}",
            i.name,
            short,
            if i.complete { "complete" } else { "partial" },
            i.files,
            format!("{}/{}", i.contents_held, i.contents),
            human_bytes(i.bytes)
        );
    }
    Ok(())
}
