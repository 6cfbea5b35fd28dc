//! `starlight rm`: removes an image from starlightd (and containerd), and
//! frees the contents no other image uses.

use anyhow::bail;
use starlight_api::{Request, Response};

use super::api::{human_bytes, request, ApiArgs};

/// Arguments of `starlight rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// Remove the image even if containers use it (their root filesystems
    /// lose its files); without it, an image in use is refused.
    #[arg(long)]
    force: bool,
    /// The image (reference or manifest digest).
    image: String,
}

/// Runs `starlight rm`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let req = Request::Remove {
        image: args.image.clone(),
        force: args.force,
    };
    let response = request(&args.api, &req, |_| {}).await?;
    let Response::Removed {
        digest,
        contents_freed,
        bytes_freed,
    } = response
    else {
        bail!("starlightd answered a removal with {response:?}");
    };
    println!(
        "removed {} ({digest}); {contents_freed} contents freed ({})",
        args.image,
        human_bytes(bytes_freed)
    );
    Ok(())
}
