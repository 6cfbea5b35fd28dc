//! `starlight convert`: converts an image to the Starlight layer format.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use starlight_proxy::convert::{convert_image, ConvertImageOptions, PlatformSelection};
use starlight_proxy::format::Compression;
use starlight_proxy::registry::RegistryClient;

/// Compression of the converted layers.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    /// `tar+gzip` (readable by every runtime).
    Gzip,
    /// `tar+zstd` (smaller, faster to decompress).
    Zstd,
}

/// Arguments of `starlight convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Talk HTTP instead of HTTPS to the registries.
    #[arg(long)]
    pub plain_http: bool,
    /// Compression of the converted layers.
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionArg,
    /// Compression level (the format's default when omitted).
    #[arg(long)]
    pub level: Option<i32>,
    /// Platforms to convert: `all`, or one `os/arch[/variant]`.
    #[arg(long, default_value = "all")]
    pub platform: String,
    /// Layers converted at once (0: one per CPU, at most 4).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Never draw progress bars, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// After pushing, ask this Starlight proxy (QUIC `HOST:PORT`) to index
    /// the converted image now, so the first worker does not wait for it.
    #[arg(long, value_name = "PROXY", requires = "ca")]
    pub notify: Option<String>,
    /// With --notify: PEM file of the CA (or self-signed certificate) to trust.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// With --notify: bearer token presented to the proxy. Prefer
    /// STARLIGHT_TOKEN or --token-file: a token on the command line is
    /// visible to every local user in /proc.
    #[arg(long, env = "STARLIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --notify: a file holding the bearer token.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// With --notify: name the proxy's certificate must be valid for
    /// (default: the host of --notify).
    #[arg(long)]
    pub server_name: Option<String>,
    /// The image to convert, e.g. `registry:5000/app:v1`.
    pub src: String,
    /// Where to push the converted image, e.g. `registry:5000/app:v1-starlight`.
    pub dst: String,
}

/// Runs `starlight convert`: prints the report on stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let platforms = PlatformSelection::parse(&args.platform).context("--platform")?;
    let token = super::token_from(args.token.as_ref(), args.token_file.as_ref())?;
    if args.notify.is_some() && token.is_none() {
        anyhow::bail!("--notify needs a token: set STARLIGHT_TOKEN or pass --token-file");
    }
    let opts = ConvertImageOptions {
        compression: match args.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        },
        level: args.level,
        platforms,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        work_dir: None,
        jobs: args.jobs,
    };
    // The user's own docker login (config.json and credential helpers).
    let credentials = starlight_proxy::credentials::Credentials::load(&[], None)
        .context("cannot load registry credentials")?;
    let client = RegistryClient::new(args.plain_http).with_credentials(credentials);
    let report = convert_image(&client, &args.src, &args.dst, &opts)
        .await
        .with_context(|| format!("converting {} to {}", args.src, args.dst))?;
    println!("{report}");
    if let (Some(proxy), Some(ca), Some(token)) = (&args.notify, &args.ca, &token) {
        let started = Instant::now();
        let entries = notify(proxy, ca, token, args.server_name.as_deref(), &args.dst)
            .await
            .with_context(|| {
                format!(
                    "{} was converted and pushed, but proxy {proxy} could not index it",
                    args.dst
                )
            })?;
        println!(
            "proxy {proxy} indexed {} ({entries} entries) in {:.1} ms",
            args.dst,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Has the proxy index `image`: first asks it to resolve the tag again now (a
/// retagged image is served at once, not after the proxy's tag TTL), then asks
/// it for the image's bundle and hangs up
/// as soon as the header arrives (the proxy builds a header only from an
/// indexed image, indexing it first when needed). Returns the number of
/// table-of-contents entries.
async fn notify(
    proxy: &str,
    ca: &std::path::Path,
    token: &str,
    server_name: Option<&str>,
    image: &str,
) -> anyhow::Result<usize> {
    use transport_quic::quic::{Client, ClientTls};
    use transport_quic::{Event, RanksQuery, Request};
    let (addr, host) = super::fetch::resolve_proxy(proxy).await?;
    let client = Client::new(ClientTls::CaFile(ca.to_path_buf()))?;
    let name = server_name.unwrap_or(&host);
    let refreshed = client
        .refresh(
            addr,
            name,
            &RanksQuery {
                token: token.to_string(),
                image: image.to_string(),
            },
        )
        .await?;
    tracing::debug!(image, manifest = %refreshed.manifest_digest, "proxy re-resolved the tag");
    let request = Request {
        token: token.to_string(),
        image: image.to_string(),
        platform: None,
        held_images: vec![],
        held_payloads: vec![],
        unordered: false,
    };
    let mut stream = client.fetch(addr, name, &request).await?;
    loop {
        match stream.next_event().await? {
            Some(Event::Header(h)) => return Ok(h.toc.len()),
            Some(Event::Error(e)) => anyhow::bail!("proxy error: {}", e.message),
            Some(_) => {}
            None => anyhow::bail!("the proxy closed the stream before sending a header"),
        }
    }
}
