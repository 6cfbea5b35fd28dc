//! starlightd: the Starlight worker daemon.
//!
//! Configured by a TOML file (`/etc/starlight/starlightd.toml` unless
//! `--config` says otherwise) whose settings the flags override. For now it
//! offers `mount`: pull one image from the proxy and mount it as soon as the
//! bundle's header arrives, serving each file once its content is verified
//! and stored, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use starlight_worker::config::{Settings, DEFAULT_CONFIG_PATH};
use starlight_worker::imagefs::ImageFs;
use starlight_worker::meta::{ImageRecord, MetaDb};
use starlight_worker::receiver::{self, ReceiveError, ReceiveOptions, ReceiveReport};
use starlight_worker::store::Store;
use starlight_worker::waiters::ContentWaiters;
use tokio::task::JoinHandle;
use transport_quic::quic::{Client, ClientTls};
use transport_quic::{Header, Request};
use uring_fs::{MountOptions, Session};

#[derive(Parser, Debug)]
#[command(name = "starlightd", version, about = "The Starlight worker daemon")]
struct Cli {
    /// The configuration file (required to exist when given explicitly).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The proxy's QUIC address (overrides `proxy`).
    #[arg(long, global = true)]
    proxy: Option<std::net::SocketAddr>,
    /// The name the proxy's certificate is checked for (overrides `server_name`).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// PEM file of the CAs trusted for the proxy (overrides `ca_file`).
    #[arg(long = "ca", global = true)]
    ca_file: Option<PathBuf>,
    /// The proxy's bearer token (overrides `token`).
    #[arg(long, global = true, env = "STARLIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The state directory (overrides `state_dir`).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Seconds opens still wait after the stream broke (overrides `grace_secs`).
    #[arg(long, global = true)]
    grace_secs: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pull IMAGE and mount its filesystem at MOUNTPOINT as soon as the
    /// header arrives; serve until SIGINT or SIGTERM, then unmount.
    Mount {
        /// Manifest digests of images whose contents are already in the
        /// store (default: every complete image starlightd holds).
        #[arg(long = "from")]
        from: Vec<String>,
        /// Ask the proxy even if the image was fully pulled before (by
        /// default such an image is mounted from local state, no network).
        #[arg(long)]
        refresh: bool,
        /// The image (`repo:tag`, with the registry the proxy defaults to, or
        /// `host/repo:tag`).
        image: String,
        /// An existing directory.
        mountpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starlightd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starlightd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let flags = Settings {
        proxy: cli.proxy,
        server_name: cli.server_name,
        ca_file: cli.ca_file,
        token: cli.token,
        state_dir: cli.state_dir,
        grace_secs: cli.grace_secs,
    };
    let config = Settings::load(&path, required)?
        .overridden_by(flags)
        .resolve()?;
    match cli.command {
        Command::Mount {
            from,
            refresh,
            image,
            mountpoint,
        } => mount(config, from, refresh, image, mountpoint).await,
    }
}

async fn mount(
    config: starlight_worker::config::Config,
    from: Vec<String>,
    refresh: bool,
    image: String,
    mountpoint: PathBuf,
) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(config.store_dir())?);
    let meta = MetaDb::open(&config.state_dir.join("images"))?;
    let waiters = Arc::new(ContentWaiters::new());
    let t0 = Instant::now();
    if !refresh {
        if let Some(record) = meta.by_reference(&image)? {
            if record.complete && record.contents_present(&store) {
                let header = Arc::new(record.header);
                let session = mount_header(&image, &header, store, waiters, &mountpoint).await?;
                println!(
                    "mounted {image} ({}) at {} from local state after {:?}: {} entries",
                    header.manifest_digest,
                    mountpoint.display(),
                    t0.elapsed(),
                    header.toc.len()
                );
                return serve(&image, &mountpoint, session, None, &meta).await;
            }
        }
    }
    let held_images = if from.is_empty() {
        meta.images()?
            .into_iter()
            .filter(|r| r.complete && r.contents_present(&store))
            .map(|r| r.header.manifest_digest)
            .collect()
    } else {
        from
    };
    let client = Arc::new(Client::new(ClientTls::CaFile(config.ca_file.clone()))?);
    let receiving = receiver::start(
        client,
        config.proxy,
        Request {
            token: config.token.clone(),
            image: image.clone(),
            platform: None,
            held_images,
            held_payloads: vec![],
            unordered: false,
        },
        store.clone(),
        waiters.clone(),
        ReceiveOptions {
            server_name: config.server_name.clone(),
            grace: config.grace,
        },
    );
    let done = receiving.done;
    let header = match receiving.header.await {
        Ok(h) => h,
        Err(_) => {
            // The receive ended before a header: its error says why.
            let err = match done.await {
                Ok(Err(e)) => anyhow::Error::new(e),
                Ok(Ok(_)) => anyhow::anyhow!("the bundle ended without a header"),
                Err(e) => anyhow::Error::new(e),
            };
            return Err(err.context(format!("pulling {image}")));
        }
    };
    let record = ImageRecord {
        reference: image.clone(),
        header: Header::clone(&header),
        complete: false,
    };
    meta.put(&record)?;
    let session = mount_header(&image, &header, store, waiters, &mountpoint).await?;
    println!(
        "mounted {image} ({}) at {} after {:?}: {} entries, {} payloads to receive",
        header.manifest_digest,
        mountpoint.display(),
        t0.elapsed(),
        header.toc.len(),
        header.payloads.len()
    );
    serve(&image, &mountpoint, session, Some((done, record)), &meta).await
}

async fn mount_header(
    image: &str,
    header: &Header,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    mountpoint: &std::path::Path,
) -> anyhow::Result<Session> {
    let fs = ImageFs::new(header, store, waiters, Duration::from_secs(3600))
        .with_context(|| format!("the table of contents of {image}"))?;
    Session::mount(
        mountpoint,
        fs,
        MountOptions::default()
            .fs_name(format!("starlight:{image}"))
            .allow_other(true),
    )
    .await
    .with_context(|| format!("mounting {image} at {}", mountpoint.display()))
}

type Receive = JoinHandle<Result<ReceiveReport, ReceiveError>>;

/// Serves the mount until SIGINT or SIGTERM; meanwhile reports the end of
/// the receive (if any) and records a complete image as such.
async fn serve(
    image: &str,
    mountpoint: &std::path::Path,
    session: Session,
    receive: Option<(Receive, ImageRecord)>,
    meta: &MetaDb,
) -> anyhow::Result<()> {
    let serve = session.shutdown_on_signal()?;
    tokio::pin!(serve);
    let (mut done, mut record, mut receiving) = match receive {
        Some((done, record)) => (Some(done), Some(record), true),
        None => (None, None, false),
    };
    loop {
        tokio::select! {
            () = &mut serve => break,
            r = async {
                match done.as_mut() {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            }, if receiving => {
                receiving = false;
                match r {
                    Ok(Ok(report)) if report.stream_error.is_none() && report.failed.is_empty() => {
                        if let Some(mut record) = record.take() {
                            record.complete = true;
                            meta.put(&record)?;
                        }
                        println!(
                            "received {image}: {} contents stored, last byte after {:?}",
                            report.stored, report.time_to_end
                        );
                    }
                    Ok(Ok(report)) => println!(
                        "received {image} incomplete: {} contents stored, {} failed ({})",
                        report.stored,
                        report.failed.len(),
                        report.stream_error.as_deref().unwrap_or("corrupt payloads")
                    ),
                    Ok(Err(e)) => println!("receiving {image} failed: {e}"),
                    Err(e) => println!("receiving {image} failed: {e}"),
                }
            }
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
