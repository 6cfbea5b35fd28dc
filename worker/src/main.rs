//! starlightd: the Starlight worker daemon.
//!
//! Configured by a TOML file (`/etc/starlight/starlightd.toml` unless
//! `--config` says otherwise) whose settings the flags override.
//!
//! - `run`: the daemon. Serves containerd's snapshotter plugin and the API
//!   socket the `starlight` CLI talks to (pull, images, rm), mounts every
//!   image it holds, and tells systemd it is ready (`READY=1`).
//!
//! Every pull goes through the image manager (`starlight pull`, containerd's
//! own pulls through the snapshotter, `starlight rpull`): there is no second
//! pull path.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use starlight_worker::api::peer::PeerPolicy;
use starlight_worker::api::server as api_server;
use starlight_worker::config::{ResolveSettings, Settings, DEFAULT_CONFIG_PATH};
use starlight_worker::handover;
use starlight_worker::lock::StateLock;
use starlight_worker::manager::ImageManager;
use starlight_worker::notify;
use starlight_worker::registration::ContainerdRegistry;
use starlight_worker::snapshotter::{serve_snapshotter, OverlaySnapshotter};
use std::os::fd::OwnedFd;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "starlightd",
    version,
    about = "The Starlight worker daemon",
    after_long_help = "\
Settings come from the configuration file (default
/etc/starlight/starlightd.toml; sample in worker/dist/starlightd.toml);
every flag overrides the setting of the same name. The token is best kept
in the file or token_file: a token on the command line shows in /proc.

Examples:
  starlightd run
  starlightd --config /etc/starlight/starlightd.toml run
  starlightd --proxy proxy.example:8443 --ca ca.pem --token-file token run"
)]
struct Cli {
    /// The configuration file (required to exist when given explicitly).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The proxy's QUIC address, HOST:PORT (overrides `proxy`); a DNS name
    /// is resolved at every connect.
    #[arg(long, global = true, env = "STARLIGHT_PROXY")]
    proxy: Option<starlight_worker::config::ProxyAddr>,
    /// The name the proxy's certificate is checked for (overrides `server_name`).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// PEM file of the CAs trusted for the proxy (overrides `ca_file`).
    #[arg(long = "ca", global = true)]
    ca_file: Option<PathBuf>,
    /// The proxy's bearer token (overrides `token`). Prefer `token` or
    /// `token_file` in the configuration file, or the STARLIGHT_TOKEN
    /// environment variable: a token on the command line is visible to every
    /// local user in /proc.
    #[arg(long, global = true, env = "STARLIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the proxy's bearer token (overrides `token_file`).
    #[arg(long, global = true, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The state directory (overrides `state_dir`).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Seconds opens still wait after the stream broke (overrides `grace_secs`).
    #[arg(long, global = true)]
    grace_secs: Option<u64>,
    /// containerd's gRPC socket (overrides `containerd_socket`).
    #[arg(long, global = true)]
    containerd_socket: Option<PathBuf>,
    /// The containerd namespace (overrides `namespace`).
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// The snapshotter's socket (overrides `snapshotter_socket`).
    #[arg(long, global = true)]
    snapshotter_socket: Option<PathBuf>,
    /// The API socket (overrides `api_socket`).
    #[arg(long, global = true)]
    api_socket: Option<PathBuf>,
    /// A group whose members may use the API socket besides root
    /// (overrides `api_group`).
    #[arg(long, global = true)]
    api_group: Option<String>,
    /// TCP address of the Prometheus metrics endpoint (overrides
    /// `metrics_listen`).
    #[arg(long, global = true, env = "STARLIGHT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The content store's bound in bytes: unused images are evicted least
    /// recently used first above it (overrides `max_store_bytes`).
    #[arg(long, global = true, env = "STARLIGHT_MAX_STORE_BYTES")]
    max_store_bytes: Option<u64>,
    /// Evict images unused this many seconds (overrides `gc_unused_secs`).
    #[arg(long, global = true, env = "STARLIGHT_GC_UNUSED_SECS")]
    gc_unused_secs: Option<u64>,
    /// Seconds between periodic collections (overrides `gc_interval_secs`).
    #[arg(long, global = true, env = "STARLIGHT_GC_INTERVAL_SECS")]
    gc_interval_secs: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: the containerd snapshotter and the API socket, until
    /// SIGINT or SIGTERM (or until a new daemon takes its mounts over).
    #[command(after_long_help = "\
Serves containerd's snapshotter plugin ([proxy_plugins.starlight]) and the
API socket the `starlight` CLI uses, mounts every image it holds, evicts
unused images (max_store_bytes, gc_unused_secs) and tells systemd it is
ready (READY=1). With --take-over, a new daemon takes the mounts of the
running one (no systemd needed) and the old one exits without unmounting.

Examples:
  starlightd run
  starlightd run --take-over
  starlightd --config ./starlightd.toml --metrics-listen 127.0.0.1:9465 run")]
    Run {
        /// Take the mounts over from the starlightd running on the same
        /// state directory, through its hand-over socket
        /// (`<state>/handover.sock`): it hands every mount's connection
        /// over and exits without unmounting; this one then serves them.
        #[arg(long)]
        take_over: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli).await {
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
        token_file: cli.token_file,
        state_dir: cli.state_dir,
        grace_secs: cli.grace_secs,
        containerd_socket: cli.containerd_socket,
        namespace: cli.namespace,
        snapshotter_socket: cli.snapshotter_socket,
        api_socket: cli.api_socket,
        api_group: cli.api_group,
        metrics_listen: cli.metrics_listen,
        max_store_bytes: cli.max_store_bytes,
        gc_unused_secs: cli.gc_unused_secs,
        gc_interval_secs: cli.gc_interval_secs,
        ..Settings::default()
    };
    let config = Settings::load(&path, required)?
        .overridden_by(flags)
        .resolve()?;
    match cli.command {
        Command::Run { take_over } => daemon(config, take_over).await,
    }
}

/// Made in the state directory before a restart that keeps the mounts.
const KEEP_MOUNTS: &str = "keep-mounts";
/// How long a taking-over daemon waits for each hand-over message, and
/// then for the old daemon to release the state lock.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The state lock, and (with `take_over`) the mount connections the
/// running daemon handed over first (it holds the lock until it exits).
async fn lock_state(
    config: &starlight_worker::config::Config,
    take_over: bool,
) -> anyhow::Result<(StateLock, Vec<(String, OwnedFd)>)> {
    if !take_over {
        return Ok((StateLock::acquire(&config.state_dir)?, Vec::new()));
    }
    let path = config.state_dir.join(handover::SOCKET);
    let fds = tokio::task::spawn_blocking(move || handover::take_over(&path, HANDOVER_TIMEOUT))
        .await?
        .context("taking the mounts over from the running starlightd")?;
    info!(
        connections = fds.len(),
        "mount connections handed over by the running starlightd"
    );
    let dir = config.state_dir.clone();
    let lock =
        tokio::task::spawn_blocking(move || StateLock::acquire_within(&dir, HANDOVER_TIMEOUT))
            .await??;
    Ok((lock, fds))
}

/// The next hand-over request, or never (no socket).
async fn next_hand_over(
    rx: &mut Option<tokio::sync::mpsc::Receiver<handover::Request>>,
) -> handover::Request {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Sends every mount's connection to the new daemon behind `request`;
/// their names once it acknowledged, `None` (keep serving) on failure.
async fn hand_over_to(manager: &ImageManager, request: handover::Request) -> Option<Vec<String>> {
    let fds = manager.connections().await;
    let names: Vec<String> = fds.iter().map(|(n, _)| n.clone()).collect();
    match tokio::task::spawn_blocking(move || request.send(&fds)).await {
        Ok(Ok(())) => {
            info!(
                mounts = names.len(),
                "handed the mounts over to a new starlightd: stopping"
            );
            Some(names)
        }
        Ok(Err(e)) => {
            warn!("the hand-over failed, serving on: {e}");
            None
        }
        Err(e) => {
            warn!("the hand-over task failed, serving on: {e}");
            None
        }
    }
}

/// The daemon: restores the images, serves the snapshotter and the API,
/// notifies systemd, and on SIGINT/SIGTERM stops serving and unmounts.
async fn daemon(config: starlight_worker::config::Config, take_over: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // Before anything touches the state: a second daemon stops here.
    let (_lock, handed) = lock_state(&config, take_over).await?;
    config.prepare_state_dir()?;
    let mut handover_rx = if handover::enabled() {
        Some(handover::Listener::bind(&config.state_dir.join(handover::SOCKET))?.spawn())
    } else {
        None
    };
    let api_policy = PeerPolicy::root_or_group(config.api_gid()?);
    let registry = Arc::new(ContainerdRegistry {
        socket: config.containerd_socket.clone(),
        namespace: config.namespace.clone(),
    });
    let manager = ImageManager::open(config.clone(), registry)
        .with_context(|| format!("opening the state in {}", config.state_dir.display()))?;
    // Mount connections kept in systemd's fd store across a restart or a
    // crash: served again instead of mounted anew.
    let mut inherited = match starlight_worker::fdstore::take_inherited() {
        Ok(fds) => fds,
        Err(e) => {
            warn!("ignoring the inherited fds: {e}");
            Vec::new()
        }
    };
    // Or handed over through the socket.
    inherited.extend(handed);
    if !inherited.is_empty() {
        let n = manager.adopt_inherited(inherited);
        info!(connections = n, "mount connections inherited");
    }
    let restored = manager.restore().await?;
    // Opened before the first pull needs it; aborted when the daemon stops.
    let warm = manager.keep_warm();
    let snapshotter = OverlaySnapshotter::open(&config.snapshotter_dir())
        .with_context(|| "opening the snapshotter state")?;
    snapshotter.set_image_mounts(manager.clone());
    manager.set_snapshotter(snapshotter.clone());
    manager.set_image_users(snapshotter.clone());
    // containerd's own pulls (CRI) of Starlight images: one bundle each.
    snapshotter.set_remote_images(Arc::new(starlight_worker::remote_pull::RemotePuller::new(
        manager.clone(),
    )));
    let api = api_server::bind(&config.api_socket, &api_policy)
        .with_context(|| format!("binding the API socket {}", config.api_socket.display()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(dir) = config.snapshotter_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let snap_socket = config.snapshotter_socket.clone();
    let mut snap_task = tokio::spawn({
        let shutdown = stopped(stop_rx.clone());
        async move { serve_snapshotter(snapshotter, &snap_socket, shutdown).await }
    });
    let trace_task =
        starlight_worker::trace_upload::spawn(manager.clone(), &config, stop_rx.clone());
    // Evicts after each pull and every gc_interval_secs (see `starlight gc`).
    let gc_task = manager.spawn_gc(stop_rx.clone());
    let api_task = tokio::spawn(api_server::serve(
        api,
        api_policy,
        manager.clone(),
        stopped(stop_rx.clone()),
    ));
    // The snapshotter binds its socket inside its task: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !config.snapshotter_socket.exists() {
        if snap_task.is_finished() || Instant::now() > deadline {
            let _ = stop_tx.send(true);
            return match (&mut snap_task).await {
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("serving the snapshotter")),
                _ => Err(anyhow::anyhow!(
                    "the snapshotter socket {} did not appear",
                    config.snapshotter_socket.display()
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Started last: ready means the snapshotter and the API serve.
    let _metrics = match config.metrics_listen {
        Some(addr) => Some(
            starlight_metrics::MetricsServer::start(
                addr,
                starlight_worker::metrics::registry(config.store_dir()),
                Arc::new(|| Ok(())),
            )
            .await
            .context("starting the metrics endpoint")?,
        ),
        None => None,
    };
    match notify::notify("READY=1") {
        Ok(true) => info!("told systemd we are ready"),
        Ok(false) => {}
        Err(e) => warn!("cannot notify systemd: {e}"),
    }
    info!(
        images = restored,
        api = %config.api_socket.display(),
        snapshotter = %config.snapshotter_socket.display(),
        "starlightd ready"
    );
    let handed_over = loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT: stopping"); break None; }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break None; }
            request = next_hand_over(&mut handover_rx) => {
                if let Some(names) = hand_over_to(&manager, request).await {
                    break Some(names);
                }
            }
            r = &mut snap_task => {
                let _ = stop_tx.send(true);
                manager.unmount_all().await;
                return match r {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the snapshotter stopped")),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("serving the snapshotter")),
                    Err(e) => Err(anyhow::Error::new(e).context("the snapshotter task")),
                };
            }
        }
    };
    let _ = notify::notify("STOPPING=1");
    if let Some(w) = &warm {
        w.abort();
    }
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    let _ = gc_task.await;
    if let Ok(Err(e)) = snap_task.await {
        warn!("snapshotter: {e}");
    }
    let _ = std::fs::remove_file(&config.api_socket);
    if let Some(t) = trace_task {
        // It spools the traces still being recorded, then stops.
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    if let Some(names) = handed_over {
        // The new daemon holds every connection: stop serving, unmount nothing.
        manager.finish_hand_over(&names).await;
        info!("starlightd stopped; mounts handed over to the new starlightd");
        return Ok(());
    }
    // A restart that keeps the mounts: systemd's fd store holds their fds
    // and `<state>/keep-mounts` was made for this stop. Any other stop
    // unmounts.
    let marker = config.state_dir.join(KEEP_MOUNTS);
    if starlight_worker::fdstore::available() && std::fs::remove_file(&marker).is_ok() {
        manager.hand_over_all().await;
        info!("starlightd stopped; mounts kept for the next start");
        return Ok(());
    }
    manager.unmount_all().await;
    info!("starlightd stopped");
    Ok(())
}
