//! `starlight-bench`: the evaluation harness.
//!
//! - `corpus-layers` builds the layers of real images from Debian packages;
//! - `overhead` converts them to the Starlight format and reports the size
//!   overhead and the conversion and scan throughputs;
//! - `link up|down|calibrate` runs the emulated WAN link (see
//!   `starlight_bench::netem`);
//! - `transport-matrix` fetches bundles over the link across RTT × rate ×
//!   loss, beside TCP;
//! - `header-rtt` measures time to header, cold and warm, through the link.

mod apt;
mod body_rate;
mod corpus;
mod cputime;
mod daemon;
mod header_rtt;
mod imagebuild;
mod images;
mod matrix;
mod overhead;
mod registry;
mod report;
mod run;
mod serve;
mod suite;
mod sweep;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use starlight_proxy::format::{DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL};

use crate::corpus::Corpus;
use crate::images::{layer_names, ImageSpec};
use crate::report::{ImageReport, Summary};

#[derive(Parser)]
#[command(
    name = "starlight-bench",
    version,
    about = "Starlight's evaluation harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or reuse) the original layer blobs of the corpus images.
    CorpusLayers(CorpusArgs),
    /// Measure the Starlight format's size overhead and throughput on the corpus.
    Overhead(OverheadArgs),
    /// The runnable image corpus of the provisioning benchmark.
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Provisioning-time sweep: images x methods x scenarios x RTTs x runs.
    Sweep(sweep::SweepArgs),
    /// Merge the results of several sweeps into one summary and plots.
    Report(sweep::ReportArgs),
    /// The emulated WAN link between a worker and a cloud namespace.
    #[command(subcommand)]
    Link(LinkCommand),
    /// Bundles over an emulated link across RTT x rate x loss, beside TCP.
    TransportMatrix(matrix::MatrixArgs),
    /// Time to header through the emulated link, cold and warm, beside 3 RTT + bytes/rate.
    HeaderRtt(header_rtt::HeaderRttArgs),
    /// Bundle serving throughput for 1-50 concurrent bundles beside registry blob GETs.
    Serve(serve::ServeArgs),
    /// GC acceptance: pull every corpus image in turn with `max_store_bytes`
    /// at half the corpus; the store stays bounded, running containers keep
    /// every file.
    GcCorpus(sweep::gc_corpus::GcCorpusArgs),
    /// Header to last payload: starlightd beside `starlight fetch`, side by side per RTT.
    BodyRate(body_rate::BodyRateArgs),
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Build (or reuse) v1 and v2 of the images, push them to the corpus
    /// registry in original and Starlight formats.
    Build {
        /// Cache directory (layers, registry storage, images.json).
        #[arg(long, default_value = "target/bench-corpus")]
        cache: PathBuf,
        /// Images to build (comma-separated); all by default.
        #[arg(long, value_delimiter = ',')]
        images: Option<Vec<String>>,
        /// The `starlight` CLI used to convert (default: next to this binary).
        #[arg(long)]
        starlight: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Bring a link up and hold it until Ctrl-C or SIGTERM.
    Up(LinkArgs),
    /// Remove links left by processes that are gone.
    Down,
    /// Measure RTT, TCP and UDP goodput against the targets; fails if off by more than 5%.
    Calibrate {
        /// Round-trip times to calibrate (comma-separated, ms unless suffixed).
        #[arg(long, value_delimiter = ',', default_value = "0,50,150,300")]
        rtt: Vec<String>,
        /// Rate, for example 100mbit or 1gbit.
        #[arg(long, default_value = "100mbit")]
        rate: String,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Emulator: auto (netem where the kernel has it), netem or userspace.
        #[arg(long, default_value = "auto")]
        emulator: String,
    },
}

#[derive(Args)]
struct LinkArgs {
    /// Round-trip time (ms unless suffixed).
    #[arg(long, default_value = "50ms")]
    rtt: String,
    /// Rate, for example 100mbit or 1gbit (0: unlimited).
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Random loss probability per direction, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability per direction, in [0, 1), that a packet skips the delay
    /// (reordering it ahead of earlier packets).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Emulator: auto (netem where the kernel has it), netem or userspace.
    #[arg(long, default_value = "auto")]
    emulator: String,
    /// Queue limit in bytes per direction (default: 2 BDP + 64 KiB).
    #[arg(long)]
    queue_bytes: Option<u64>,
}

#[derive(Args)]
struct CorpusArgs {
    /// Cache directory for the base rootfs, packages and layer blobs.
    #[arg(long, default_value = "target/bench-corpus")]
    cache: PathBuf,
    /// Images to build (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    images: Option<Vec<String>>,
}

#[derive(Args)]
struct OverheadArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Output prefix: writes PREFIX.tsv and PREFIX.json.
    #[arg(long, default_value = "bench/results/overhead")]
    out: PathBuf,
    /// Runs per measurement; the best time is kept.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// gzip level of the Starlight conversion (default: the converter's).
    #[arg(long)]
    gzip_level: Option<i32>,
    /// zstd level of the Starlight conversion (default: the converter's).
    #[arg(long)]
    zstd_level: Option<i32>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CorpusLayers(args) => {
            let images = select(&args)?;
            Corpus::new(&args.cache)?.build(&images)
        }
        Command::Overhead(args) => run_overhead(&args),
        Command::Corpus(CorpusCommand::Build {
            cache,
            images,
            starlight,
        }) => {
            let images = suite::select(images.as_deref()).map_err(|e| anyhow!(e))?;
            let starlight = starlight.unwrap_or_else(|| imagebuild::sibling_binary("starlight"));
            imagebuild::require_binary(&starlight, "cargo build --release -p starlight-tools")?;
            let built = imagebuild::build(&Corpus::new(&cache)?, &images, &starlight)?;
            for image in &built {
                println!(
                    "{:<10} v1 {:>7.1} MB {} layers {:>6} files   v2 {:>7.1} MB {} layers {:>6} files",
                    image.name,
                    image.sizes[0] as f64 / 1e6,
                    image.layers[0],
                    image.files[0],
                    image.sizes[1] as f64 / 1e6,
                    image.layers[1],
                    image.files[1]
                );
            }
            Ok(())
        }
        Command::Sweep(args) => sweep::run(args),
        Command::Report(args) => sweep::report(args),
        Command::Link(cmd) => run_link(cmd),
        Command::TransportMatrix(args) => matrix::run(args),
        Command::HeaderRtt(args) => header_rtt::run(args),
        Command::Serve(args) => serve::run(args),
        Command::GcCorpus(args) => sweep::gc_corpus::run(args),
        Command::BodyRate(args) => body_rate::run(args),
    }
}

fn run_link(cmd: LinkCommand) -> Result<()> {
    use starlight_bench::netem::{self, calibrate, parse_duration, parse_rate, Link, LinkConfig};
    match cmd {
        LinkCommand::Up(args) => {
            netem::cleanup_stale()?;
            let config = LinkConfig {
                rtt: parse_duration(&args.rtt)?,
                rate_bps: parse_rate(&args.rate)?,
                loss: args.loss,
                reorder: args.reorder,
                queue_bytes: args.queue_bytes,
            };
            netem::block_signals()?;
            let link = Link::up_with(config, args.emulator.parse()?)?;
            eprintln!("emulator: {}", link.backend());
            println!(
                "worker {} {} cloud {} {}",
                link.worker_ns(),
                link.worker_addr(),
                link.cloud_ns(),
                link.cloud_addr()
            );
            netem::wait_for_signal()?;
            let stats = link.down()?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
        LinkCommand::Down => {
            for name in netem::cleanup_stale()? {
                println!("removed {name}");
            }
            Ok(())
        }
        LinkCommand::Calibrate {
            rtt,
            rate,
            out,
            emulator,
        } => {
            let choice: netem::BackendChoice = emulator.parse()?;
            netem::cleanup_stale()?;
            netem::exit_on_signal()?;
            let rate_bps = parse_rate(&rate)?;
            let mut results = Vec::new();
            for r in &rtt {
                let config = LinkConfig::new(parse_duration(r)?, rate_bps);
                tracing::info!(rtt = r, rate = rate_bps, "calibrating");
                results.push(calibrate::calibrate_with(config, choice)?);
            }
            print!("{}", calibrate::table(&results));
            if let Some(out) = out {
                fs::write(&out, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            if results.iter().all(|r| r.ok()) {
                Ok(())
            } else {
                Err(anyhow!("calibration off by more than 5%"))
            }
        }
    }
}

fn select(args: &CorpusArgs) -> Result<Vec<&'static ImageSpec>> {
    images::select(args.images.as_deref()).map_err(|e| anyhow!(e))
}

/// The JSON document written next to the TSV.
#[derive(Serialize)]
struct OverheadJson<'a> {
    command: &'a str,
    unix_time: u64,
    cpus: usize,
    levels: overhead::Levels,
    images: &'a [ImageReport],
    total: &'a Summary,
}

fn run_overhead(args: &OverheadArgs) -> Result<()> {
    let images = select(&args.corpus)?;
    let corpus = Corpus::new(&args.corpus.cache)?;
    let levels = overhead::Levels {
        gzip: Some(args.gzip_level.unwrap_or(DEFAULT_GZIP_LEVEL)),
        zstd: Some(args.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL)),
    };
    corpus.build(&images)?;

    let mut measured: Vec<overhead::LayerResult> = Vec::new();
    let mut reports = Vec::new();
    for image in &images {
        let mut layers = Vec::new();
        for name in layer_names(image) {
            let result = match measured.iter().find(|r| r.layer == name) {
                Some(done) => done.clone(),
                None => {
                    tracing::info!(image = image.name, layer = name, "measuring");
                    let r = overhead::measure(&corpus, name, levels, args.runs)
                        .with_context(|| format!("image {}, layer {name}", image.name))?;
                    measured.push(r.clone());
                    r
                }
            };
            layers.push(result);
        }
        let total = Summary::of(image.name, &layers);
        reports.push(ImageReport {
            image: image.name.to_string(),
            layers,
            total,
        });
    }
    let total = Summary::of("distinct layers", &measured);

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let level = |l: Option<i32>| l.map_or("default".to_string(), |l| l.to_string());
    let setup = format!(
        "original: gzip level 6; Starlight: gzip level {}, zstd level {}",
        level(levels.gzip),
        level(levels.zstd)
    );
    println!("{setup}");
    print!("{}", report::table(&reports, &total));
    let json = OverheadJson {
        command: &command,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        levels,
        images: &reports,
        total: &total,
    };
    write_out(
        &args.out,
        "tsv",
        &report::tsv(&format!("{command} ({setup})"), &reports, &total),
    )?;
    write_out(
        &args.out,
        "json",
        &(serde_json::to_string_pretty(&json)? + "\n"),
    )?;
    Ok(())
}

fn write_out(prefix: &Path, ext: &str, text: &str) -> Result<()> {
    let mut path = prefix.as_os_str().to_os_string();
    path.push(".");
    path.push(ext);
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "written");
    Ok(())
}
