//! The settings of starlightd's configuration file (by default
//! [`DEFAULT_CONFIG_PATH`]), as the file and the flags give them, all
//! optional. starlightd resolves them into its complete configuration
//! (with defaults and bounds); the `starlight` CLI reads the same file for
//! the proxy, CA, token and containerd settings it shares with the daemon.
//!
//! ```toml
//! proxy = "proxy.example:8443"   # the proxy's QUIC address (HOST:PORT; a name is resolved at each connect)
//! server_name = "proxy.example"   # the name its certificate is checked for (default: the host)
//! ca_file = "/etc/starlight/ca.pem"
//! token = "secret"                # or token_file = "/etc/starlight/token"
//! state_dir = "/var/lib/starlight"
//! grace_secs = 30                 # how long a receive goes on without progress
//! reconnect_initial_ms = 200      # first wait before reconnecting a broken stream
//! reconnect_max_ms = 5000         # the wait doubles up to this
//! containerd_socket = "/run/containerd/containerd.sock"
//! namespace = "default"           # containerd namespace images are registered in
//! snapshotter_socket = "/run/starlight/snapshotter.sock"
//! api_socket = "/run/starlight/starlightd.sock"
//! api_group = "starlight"         # may use the API socket besides root (default: root only)
//! metrics_listen = "127.0.0.1:9465" # Prometheus /metrics, /healthz, /readyz (default: off)
//! max_store_bytes = 10_000_000_000  # evict unused images LRU-first above this (default: unbounded)
//! gc_unused_secs = 604800         # evict images unused this long (default: never)
//! gc_interval_secs = 60           # how often the collection runs besides after each pull
//! ```
//!
//! The token is best given here (or in `token_file`, or the environment
//! variable `STARLIGHT_TOKEN`): a token on the command line is visible to
//! every local user in `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::proxy_addr::ProxyAddr;

/// Where starlightd looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/starlight/starlightd.toml";
/// containerd's gRPC socket by default.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The snapshotter's gRPC socket by default.
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/starlight/snapshotter.sock";
/// starlightd's API socket by default (the `starlight` CLI's default too).
pub const DEFAULT_API_SOCKET: &str = "/run/starlight/starlightd.sock";

/// Why the settings file (or the token file it names) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: toml::de::Error,
    },
    /// Both `token` and `token_file` are set.
    #[error("both token and token_file are set: set one")]
    TwoTokens,
    /// The token file cannot be used.
    #[error("token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The settings as the file (or the flags) give them; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The proxy's QUIC address: `HOST:PORT`, the host a DNS name
    /// (resolved at each connect) or an IP address.
    pub proxy: Option<ProxyAddr>,
    /// The name the proxy's certificate must be valid for (default: its IP).
    pub server_name: Option<String>,
    /// PEM file of the CA certificates trusted for the proxy.
    pub ca_file: Option<PathBuf>,
    /// The bearer token sent to the proxy.
    pub token: Option<String>,
    /// A file holding the bearer token (instead of `token`).
    pub token_file: Option<PathBuf>,
    /// Where the content store and mounts live.
    pub state_dir: Option<PathBuf>,
    /// Seconds a receive goes on without progress (no payload verified, no
    /// reconnect accepted) before the contents still missing fail.
    pub grace_secs: Option<u64>,
    /// Milliseconds before the first reconnect of a broken stream.
    pub reconnect_initial_ms: Option<u64>,
    /// The longest wait between reconnects, in milliseconds.
    pub reconnect_max_ms: Option<u64>,
    /// containerd's gRPC socket.
    pub containerd_socket: Option<PathBuf>,
    /// The containerd namespace images are registered in.
    pub namespace: Option<String>,
    /// Where the snapshotter serves containerd (the proxy plugin's address).
    pub snapshotter_socket: Option<PathBuf>,
    /// Where starlightd serves its API (the `starlight` CLI).
    pub api_socket: Option<PathBuf>,
    /// A group (name or number) whose members may use the API socket
    /// besides root.
    pub api_group: Option<String>,
    /// Traces of real container starts (the `[traces]` table).
    pub traces: Option<TraceSettings>,
    /// TCP address of the Prometheus `/metrics`, `/healthz` and `/readyz`
    /// endpoint (none: no endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// The content store's bound in bytes: after each pull and
    /// periodically, images not in use are evicted least recently used
    /// first until the store fits (none: unbounded).
    pub max_store_bytes: Option<u64>,
    /// Images not used for this many seconds are evicted (none: never for
    /// age alone).
    pub gc_unused_secs: Option<u64>,
    /// Seconds between periodic collections (default 60).
    pub gc_interval_secs: Option<u64>,
    /// Keep an authenticated QUIC connection to the proxy open from daemon start
    /// and reuse it for every pull (default true).
    pub warm_connection: Option<bool>,
}

impl Settings {
    /// Reads `path`. A missing file gives empty settings unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Settings::default())
            }
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| SettingsError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// These settings with every setting of `flags` taking precedence.
    pub fn overridden_by(self, flags: Settings) -> Settings {
        // The token and its file go together: either source wins whole.
        let (token, token_file) = if flags.token.is_some() || flags.token_file.is_some() {
            (flags.token, flags.token_file)
        } else {
            (self.token, self.token_file)
        };
        Settings {
            proxy: flags.proxy.or(self.proxy),
            server_name: flags.server_name.or(self.server_name),
            ca_file: flags.ca_file.or(self.ca_file),
            token,
            token_file,
            state_dir: flags.state_dir.or(self.state_dir),
            grace_secs: flags.grace_secs.or(self.grace_secs),
            reconnect_initial_ms: flags.reconnect_initial_ms.or(self.reconnect_initial_ms),
            reconnect_max_ms: flags.reconnect_max_ms.or(self.reconnect_max_ms),
            containerd_socket: flags.containerd_socket.or(self.containerd_socket),
            namespace: flags.namespace.or(self.namespace),
            snapshotter_socket: flags.snapshotter_socket.or(self.snapshotter_socket),
            api_socket: flags.api_socket.or(self.api_socket),
            api_group: flags.api_group.or(self.api_group),
            traces: flags.traces.or(self.traces),
            metrics_listen: flags.metrics_listen.or(self.metrics_listen),
            max_store_bytes: flags.max_store_bytes.or(self.max_store_bytes),
            gc_unused_secs: flags.gc_unused_secs.or(self.gc_unused_secs),
            gc_interval_secs: flags.gc_interval_secs.or(self.gc_interval_secs),
            warm_connection: flags.warm_connection.or(self.warm_connection),
        }
    }

    /// The token: `token`, or the content of `token_file` (setting both is
    /// an error).
    pub fn resolve_token(&self) -> Result<Option<String>, SettingsError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(SettingsError::TwoTokens),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a token file: its content without surrounding white space (a
/// warning is logged if other users may read it).
pub fn read_token_file(path: &Path) -> Result<String, SettingsError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| SettingsError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err(std::io::Error::other("the file is empty")));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the token file is readable by other users: chmod 600 it"
            );
        }
    }
    Ok(token.to_string())
}

/// The `[traces]` table as the file gives it; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSettings {
    /// Record and upload traces of every container start (default true).
    pub enabled: Option<bool>,
    /// Seconds a trace lasts after the start's first open (default 30).
    pub window_secs: Option<u64>,
    /// Seconds without any open after which the next open starts a new
    /// trace even with no container prepared (default 300).
    pub quiet_secs: Option<u64>,
    /// First opens a trace keeps at most (default 4096).
    pub max_records: Option<usize>,
    /// Bytes of paths a trace keeps at most (default 512 KiB).
    pub max_bytes: Option<usize>,
    /// Milliseconds at least between two uploads (default 1000).
    pub upload_interval_ms: Option<u64>,
    /// Longest wait, in seconds, between retries while the proxy is
    /// unreachable (default 300; the wait doubles from the interval).
    pub retry_max_secs: Option<u64>,
    /// Traces the spool holds at most; newer ones are dropped when it is
    /// full (default 256).
    pub max_spooled: Option<usize>,
}
