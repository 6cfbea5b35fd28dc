//! How `starlight trace` and `starlight ranks` reach the proxy: flags over
//! starlightd's configuration file (the same proxy, CA and token the daemon
//! uses), and a QUIC client trusting that CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use starlight_api::settings::{ProxyAddr, Settings, DEFAULT_CONFIG_PATH};
use transport_quic::quic::{Client, ClientTls};

/// Proxy flags; each defaults to starlightd's configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// starlightd's configuration file, read for the proxy, CA and token (if present).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The proxy's QUIC address, `HOST:PORT` (a DNS name or an IP).
    #[arg(long)]
    pub proxy: Option<ProxyAddr>,
    /// PEM file of the CA (or self-signed certificate) to trust.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Bearer token presented to the proxy. Prefer `token`/`token_file` in
    /// the configuration file, STARLIGHT_TOKEN or --token-file: a token on
    /// the command line is visible to every local user in /proc.
    #[arg(long, env = "STARLIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Name the proxy's certificate must be valid for (default: the proxy's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

/// A proxy ready to talk to.
#[derive(Debug)]
pub struct ProxyTarget {
    /// The QUIC client.
    pub client: Client,
    /// The proxy's address.
    pub addr: SocketAddr,
    /// The name its certificate is checked for.
    pub server_name: String,
    /// The token.
    pub token: String,
}

impl ProxyArgs {
    /// The flags over the configuration file, resolved to a client (the
    /// proxy's host name is looked up here).
    pub async fn connect(&self) -> anyhow::Result<ProxyTarget> {
        let file = Settings::load(&self.config, false)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let flags = Settings {
            proxy: self.proxy.clone(),
            server_name: self.server_name.clone(),
            ca_file: self.ca.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            ..Settings::default()
        };
        let settings = file.overridden_by(flags);
        let token = settings.resolve_token()?.context(
            "no token: set `token` or `token_file` in the configuration, STARLIGHT_TOKEN, or pass --token-file",
        )?;
        let proxy = settings
            .proxy
            .context("no proxy address: pass --proxy or set `proxy` in the configuration")?;
        let addr = proxy
            .resolve()
            .await
            .with_context(|| format!("resolving {proxy}"))?;
        let ca = settings
            .ca_file
            .context("no CA file: pass --ca or set `ca_file` in the configuration")?;

        let server_name = settings
            .server_name
            .unwrap_or_else(|| proxy.host().to_string());
        let client = Client::new(ClientTls::CaFile(ca.clone()))
            .with_context(|| format!("loading the CA {}", ca.display()))?;
        Ok(ProxyTarget {
            client,
            addr,
            server_name,
            token,
        })
    }
}
