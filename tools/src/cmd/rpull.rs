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
use starlight_proxy::credentials::Credentials;
use starlight_proxy::registry::{parse_reference, RegistryClient};

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
    /// Registry credentials, `USER[:PASSWORD]`, for reading the manifest and
    /// config (as `ctr images pull --user`); without `:PASSWORD` the password
    /// is the first line of standard input (prefer it: a password on the
    /// command line is visible to every local user in /proc). Default:
    /// docker's `config.json`
    /// and credential helpers, else anonymous. The layers come through
    /// starlightd's proxy, which uses its own registry credentials.
    #[arg(long, short = 'u', value_name = "USER[:PASSWORD]")]
    user: Option<String>,
    /// The image (`host/repo:tag`), as starlightd's proxy can resolve it.
    image: String,
}

/// Runs `starlight rpull`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let registry = RegistryClient::new(args.plain_http).with_credentials(credentials(&args)?);
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

/// The registry credentials of `args`: `--user` for the image's registry
/// over the user's docker login.
fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    let docker = Credentials::load(&[], None).context("cannot load registry credentials")?;
    let Some(user) = &args.user else {
        return Ok(docker);
    };
    let (name, password) = match user.split_once(':') {
        Some((name, password)) => (name, password.to_string()),
        None => (user.as_str(), password_from_stdin()?),
    };
    if name.is_empty() {
        anyhow::bail!("--user needs a user name (USER[:PASSWORD])");
    }
    let reference = parse_reference(&args.image)?;
    Ok(docker.with_basic(reference.registry(), name, &password))
}

/// The password: the first line of standard input.
fn password_from_stdin() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .context("reading the registry password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!(
            "--user USER without :PASSWORD reads the password from standard input, which gave none"
        );
    }
    Ok(password.to_string())
}
