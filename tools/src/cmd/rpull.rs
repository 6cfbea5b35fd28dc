//! `starlight rpull`: a containerd-client pull through starlightd's remote
//! snapshots (as `ctr-remote image rpull` does for other snapshotters). The
//! manifest and config are read from the registry; each layer is prepared
//! in the `starlight` snapshotter with the image labels containerd's CRI
//! plugin sets, which starlightd answers from one Starlight bundle; the
//! image record is written. No layer blob is downloaded. Stock `ctr images
//! pull` (containerd 1.6) downloads every blob before it unpacks and passes
//! no image reference to the snapshotter.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use starlight_proxy::registry::RegistryClient;
use starlight_worker::containerd::{remote_pull, Containerd};

/// Arguments of `starlight rpull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// The containerd namespace the image goes into.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
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
    let pull = remote_pull(
        &args.image,
        &resolved.manifest_digest,
        &resolved.manifest_media_type,
        &resolved.manifest_raw,
        &resolved.config_raw,
    )?;
    let containerd = Containerd::connect(&args.containerd_socket, &args.namespace).await?;
    let report = containerd.pull_remote(&pull, &args.snapshotter).await?;
    println!(
        "pulled {} ({}) into containerd namespace {} in {:.3} s: {} layers as remote snapshots, {} present",
        args.image,
        resolved.manifest_digest,
        args.namespace,
        t0.elapsed().as_secs_f64(),
        report.remote,
        report.present
    );
    Ok(())
}
