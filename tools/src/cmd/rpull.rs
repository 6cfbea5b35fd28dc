//! `starlight rpull`: a containerd-client pull through starlightd's remote
//! snapshots (as `ctr-remote image rpull` does for other snapshotters). The
//! manifest and config are read from the registry; each layer is prepared
//! in the `starlight` snapshotter with the image labels containerd's CRI
//! plugin sets, which starlightd answers from one Starlight bundle; the
//! image record is written. No layer blob is downloaded. Stock `ctr images
//! pull` (containerd 1.6) downloads every blob before it unpacks and passes
//! no image reference to the snapshotter.
//!
//! The CLI resolves the image in the registry; starlightd does the
//! containerd part ([`Request::RemotePull`]), over its own containerd
//! socket, so the CLI needs no containerd client.

use std::time::Instant;

use anyhow::{bail, Context};
use starlight_api::{Request, Response};
use starlight_proxy::registry::RegistryClient;

use super::api::{request, ApiArgs};

/// Arguments of `starlight rpull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// The containerd namespace the image goes into (default: starlightd's
    /// `namespace`).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The snapshotter (starlightd's proxy plugin name).
    #[arg(long, default_value = "starlight")]
    snapshotter: String,
    /// Reach the registry over plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// The platform of an image index (`os/arch[/variant]`).
    #[arg(long)]
    platform: Option<String>,
    /// The image (`host/repo:tag`), as starlightd's proxy can resolve it.
    image: String,
}

/// Runs `starlight rpull`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let registry = RegistryClient::new(args.plain_http);
    let resolved = registry
        .resolve_image(&args.image, args.platform.as_deref())
        .await
        .with_context(|| format!("resolving {}", args.image))?;
    let pull = Request::RemotePull {
        image: args.image.clone(),
        manifest_digest: resolved.manifest_digest.clone(),
        manifest_media_type: resolved.manifest_media_type.clone(),
        manifest: String::from_utf8(resolved.manifest_raw)
            .context("the image's manifest is not UTF-8 JSON")?,
        config: String::from_utf8(resolved.config_raw)
            .context("the image's config is not UTF-8 JSON")?,
        namespace: args.namespace.clone(),
        snapshotter: args.snapshotter.clone(),
    };
    let Response::RemotePulled {
        namespace,
        remote,
        present,
    } = request(&args.api, &pull, |_| {}).await?
    else {
        bail!(
            "starlightd answered the remote pull of {} with something else",
            args.image
        );
    };
    println!(
        "pulled {} ({}) into containerd namespace {namespace} in {:.3} s: {remote} layers as remote snapshots, {present} present",
        args.image,
        resolved.manifest_digest,
        t0.elapsed().as_secs_f64(),
    );
    Ok(())
}
