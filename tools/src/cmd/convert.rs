//! `starlight convert`: converts an image to the Starlight layer format.

use std::io::IsTerminal;

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
    /// The image to convert, e.g. `registry:5000/app:v1`.
    pub src: String,
    /// Where to push the converted image, e.g. `registry:5000/app:v1-starlight`.
    pub dst: String,
}

/// Runs `starlight convert`: prints the report on stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let platforms = PlatformSelection::parse(&args.platform).context("--platform")?;
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
    let client = RegistryClient::new(args.plain_http);
    let report = convert_image(&client, &args.src, &args.dst, &opts)
        .await
        .with_context(|| format!("converting {} to {}", args.src, args.dst))?;
    println!("{report}");
    Ok(())
}
