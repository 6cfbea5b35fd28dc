//! `starlight-proxy serve`: the QUIC bundle server, configured from the
//! `[serve]` section of the TOML config and overridden by flags.

use anyhow::{bail, Context, Result};
use clap::Args;
use starlight_metrics::MetricsServer;
use starlight_proxy::config::Config;
use starlight_proxy::credentials::Credentials;
use starlight_proxy::db::Db;
use starlight_proxy::metrics::ProxyCollector;
use starlight_proxy::optimize::PlanCache;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::{BundleServer, PayloadCache, ResolvePolicy, ServeOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;
use transport_quic::quic::{Server, ServerOptions, ServerTls};

/// Flags of `starlight-proxy serve` (each overrides the config file).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "STARLIGHT_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on, e.g. 0.0.0.0:4433 (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Registry host prefixed to bare image names (`HOST[:PORT]`; an
    /// `http://` prefix implies --plain-http).
    #[arg(long)]
    registry: Option<String>,
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    plain_http: bool,
    /// Database directory.
    #[arg(long)]
    db: Option<PathBuf>,
    /// PEM certificate chain of the server.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of the server.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Use (or create) a self-signed cert.pem/key.pem in this directory
    /// (demos; clients trust DIR/cert.pem with --ca).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    self_signed: Option<PathBuf>,
    /// A bearer token accepted from workers (repeatable; adds to the config's).
    /// Prefer `[serve] tokens` in the config file or the environment
    /// (STARLIGHT_PROXY_TOKENS, comma-separated): a token on the command line
    /// is visible to every local user in /proc.
    #[arg(
        long = "token",
        env = "STARLIGHT_PROXY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Range requests to the registry in flight per bundle.
    #[arg(long)]
    in_flight: Option<usize>,
    /// Largest range request in bytes.
    #[arg(long)]
    max_range: Option<u64>,
    /// Largest gap in bytes between coalesced members.
    #[arg(long)]
    max_gap: Option<u64>,
    /// Most plans in the plan cache.
    #[arg(long)]
    plan_cache_entries: Option<usize>,
    /// Seconds after which a tag is resolved again against the registry (0: on every
    /// request; overrides `[serve] tag_ttl_secs`, default 300).
    #[arg(long)]
    tag_ttl_secs: Option<u64>,
    /// A registry host (`HOST[:PORT]`) images may be indexed from (repeatable; adds to
    /// `[registry] allow`; with neither, only the configured registry).
    #[arg(long = "allow-registry")]
    allow_registries: Vec<String>,
    /// TCP address of the Prometheus `/metrics` and `/healthz`, `/readyz`
    /// endpoint (overrides `[metrics] listen`; default: none).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// Writes a self-signed pair for `names` to `dir/cert.pem` and `dir/key.pem`.
pub fn write_self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (cert, key) = transport_quic::tls::self_signed(&names)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes())?;
    Ok((cert_path, key_path))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The certificate and key files to use.
fn tls_files(args: &ServeArgs, config: &Config, listen: &SocketAddr) -> Result<(PathBuf, PathBuf)> {
    if let Some(dir) = &args.self_signed {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        names.dedup();
        info!(dir = %dir.display(), "generating a self-signed certificate");
        return write_self_signed(dir, &names);
    }
    match (
        args.cert.clone().or_else(|| config.serve.cert.clone()),
        args.key.clone().or_else(|| config.serve.key.clone()),
    ) {
        (Some(c), Some(k)) => Ok((c, k)),
        _ => bail!("no TLS certificate: give --cert FILE --key FILE, set [serve] cert and key in the config, or use --self-signed DIR"),
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(url) = &args.registry {
        config.registry.url = Some(url.clone());
    }
    let plain_http = args.plain_http
        || config.registry.plain_http
        || config
            .registry
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://"));
    let db_path = args.db.clone().unwrap_or_else(|| config.db.clone());
    let listen_text = args.listen.clone().unwrap_or(config.serve.listen.clone());
    let listen: SocketAddr = listen_text
        .parse()
        .with_context(|| format!("invalid listen address {listen_text:?} (expected IP:PORT)"))?;
    let mut tokens = config.serve.tokens.clone();
    tokens.extend(args.tokens.iter().cloned());
    if tokens.is_empty() {
        bail!("no token configured: give --token T or set [serve] tokens in the config");
    }
    let (cert, key) = tls_files(&args, &config, &listen)?;
    let tls = ServerTls {
        cert_chain_pem: std::fs::read(&cert)
            .with_context(|| format!("cannot read the certificate {}", cert.display()))?,
        key_pem: std::fs::read(&key)
            .with_context(|| format!("cannot read the key {}", key.display()))?,
    };
    starlight_proxy::index::configure(&config.index);
    let s = &config.serve;
    let mut allowed = config.registry.allow.clone();
    allowed.extend(args.allow_registries.iter().cloned());
    let tag_ttl = Duration::from_secs(args.tag_ttl_secs.unwrap_or(s.tag_ttl_secs));
    let options = ServeOptions {
        registry_host: config.registry.url.clone(),
        in_flight: args.in_flight.unwrap_or(s.in_flight).max(1),
        max_range: args.max_range.unwrap_or(s.max_range).max(1),
        max_gap: args.max_gap.unwrap_or(s.max_gap),
        retries: s.retries,
        rate_limit: s.rate_limit.map(|r| r.0),
        resolve: ResolvePolicy {
            allowed_registries: allowed.clone(),
            max_held_images: s.max_held_images.max(1),
            tag_ttl: Some(tag_ttl),
        },
        max_stored_traces: s.max_stored_traces.max(1),
        ..ServeOptions::default()
    };
    let cache = Arc::new(PlanCache::new(
        args.plan_cache_entries.unwrap_or(s.plan_cache_entries),
        s.plan_cache_bytes,
    ));
    let db = Arc::new(
        Db::open(&db_path)
            .with_context(|| format!("cannot open the database {}", db_path.display()))?,
    );
    let credentials =
        Credentials::load(&config.registry.auth, config.registry.docker_config.clone())
            .context("cannot load registry credentials")?;
    let registry = Arc::new(RegistryClient::new(plain_http).with_credentials(credentials));
    let memory_bound = options.memory_bound();
    let cache_dir = config.cache.dir_for(&db_path);
    let payload_cache = Arc::new(
        PayloadCache::open(&config.cache, &cache_dir)
            .with_context(|| format!("cannot open the payload cache {}", cache_dir.display()))?,
    );
    let handler =
        Arc::new(BundleServer::new(db, registry, cache, options).with_payload_cache(payload_cache));
    let transport = s.transport();
    let server_options = ServerOptions {
        transport: transport.clone(),
        max_connections: s.max_connections.max(1),
        max_connections_per_address: s.max_connections_per_address.max(1),
        max_unauthenticated: s.max_unauthenticated.max(1),
        require_retry: s.require_retry,
        auth_timeout: Duration::from_secs(s.auth_timeout_secs.max(1)),
        max_bundles: s.max_bundles.max(1),
        max_bundles_per_connection: s.max_bundles_per_connection.max(1),
        stall_timeout: Duration::from_secs(s.stall_timeout_secs.max(1)),
        max_traces_per_token: s.max_traces_per_token,
        trace_window: Duration::from_secs(s.trace_window_secs.max(1)),
        max_refreshes_per_minute: s.max_refreshes_per_minute,
        ..ServerOptions::default()
    };
    let server = Server::bind_with(
        listen,
        tls,
        tokens,
        handler.clone() as Arc<dyn transport_quic::quic::BundleHandler>,
        server_options,
    )?;
    info!(
        listen = %server.local_addr(),
        db = %db_path.display(),
        registry = config.registry.url.as_deref().unwrap_or("-"),
        plain_http,
        payload_memory_bound = memory_bound,
        bundles_memory_bound = memory_bound.saturating_mul(s.max_bundles.max(1) as u64),
        payload_cache_memory = config.cache.memory_bytes.0,
        payload_cache_disk = config.cache.disk_bytes.0,
        payload_cache_dir = %cache_dir.display(),
        send_window = transport.send_window,
        stream_window = transport.stream_receive_window,
        congestion = %transport.congestion,
        initial_window = transport.initial_window,
        allowed_registries = ?allowed,
        tag_ttl_secs = tag_ttl.as_secs(),
        "serving bundles"
    );
    let metrics = match args.metrics_listen.or(config.metrics.listen) {
        Some(addr) => {
            let source = server.stats_source();
            let metrics_registry = ProxyCollector::registry(handler.clone(), source);
            let endpoint = MetricsServer::start(addr, metrics_registry, Arc::new(|| Ok(())))
                .await
                .context("cannot start the metrics endpoint")?;
            println!("metrics on http://{}/metrics", endpoint.local_addr());
            Some(endpoint)
        }
        None => None,
    };
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for SIGINT")?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    drop(metrics);
    server.shutdown().await;
    let stats = handler.stats();
    info!(
        requests = stats.requests,
        completed = stats.completed,
        failed = stats.failed,
        payload_bytes = stats.payload_bytes,
        indexed = stats.indexed,
        plan_cache_hits = stats.plan_cache.hits,
        plan_cache_misses = stats.plan_cache.misses,
        "stopped"
    );
    Ok(())
}
