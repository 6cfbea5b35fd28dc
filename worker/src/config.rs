//! starlightd's configuration: a TOML file (by default
//! [`DEFAULT_CONFIG_PATH`]) whose settings command-line flags override.
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
use std::time::Duration;

use serde::Deserialize;

pub use crate::gc_config::GcConfig;
pub use crate::proxy_addr::ProxyAddr;
use crate::receiver::Backoff;

/// Where starlightd looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/starlight/starlightd.toml";
/// containerd's gRPC socket by default.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The snapshotter's gRPC socket by default.
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/starlight/snapshotter.sock";
/// The longest reconnect backoff that may be configured (ms).
pub const MAX_RECONNECT_MS: u64 = 60_000;
/// starlightd's API socket by default (the `starlight` CLI's default too).
pub const DEFAULT_API_SOCKET: &str = "/run/starlight/starlightd.sock";

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: toml::de::Error,
    },
    /// A required setting is missing from both the file and the flags.
    #[error("no {0} configured (set it in the configuration file or with its flag)")]
    Missing(&'static str),
    /// Both `token` and `token_file` are set.
    #[error("both token and token_file are set: set one")]
    TwoTokens,
    /// The token file cannot be used.
    #[error("token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The reconnect backoff is out of bounds.
    #[error("reconnect_initial_ms and reconnect_max_ms: {0}")]
    Reconnect(String),
    /// `api_group` names no group.
    #[error("api_group: {0}")]
    ApiGroup(String),
    /// A garbage-collection setting out of its bounds.
    #[error("{0}")]
    Gc(String),
    /// A `[traces]` setting out of its bounds.
    #[error("[traces] {0}")]
    Traces(String),
    /// The state directory cannot be made private.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
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
    pub fn load(path: &Path, required: bool) -> Result<Settings, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Settings::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
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
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ConfigError::TwoTokens),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The reconnect backoff: 1 ms ≤ initial ≤ max ≤ [`MAX_RECONNECT_MS`].
    fn backoff(&self) -> Result<Backoff, ConfigError> {
        let default = Backoff::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let initial = self.reconnect_initial_ms.unwrap_or(ms(default.initial));
        let max = self
            .reconnect_max_ms
            .unwrap_or(ms(default.max).max(initial));
        if initial == 0 || initial > max || max > MAX_RECONNECT_MS {
            return Err(ConfigError::Reconnect(format!(
                "need 1 <= initial ({initial}) <= max ({max}) <= {MAX_RECONNECT_MS}"
            )));
        }
        Ok(Backoff {
            initial: Duration::from_millis(initial),
            max: Duration::from_millis(max),
        })
    }

    /// The complete configuration, with defaults for what may default.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let proxy = self
            .proxy
            .clone()
            .ok_or(ConfigError::Missing("proxy address"))?;
        let ca_file = self
            .ca_file
            .clone()
            .ok_or(ConfigError::Missing("CA file"))?;
        let token = self.resolve_token()?.ok_or(ConfigError::Missing("token"))?;
        let backoff = self.backoff()?;
        Ok(Config {
            server_name: self.server_name.unwrap_or_else(|| proxy.host().to_string()),
            proxy,
            ca_file,
            token,
            state_dir: self
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/starlight")),
            grace: Duration::from_secs(self.grace_secs.unwrap_or(30)),
            backoff,
            containerd_socket: self
                .containerd_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_SOCKET)),
            namespace: self.namespace.unwrap_or_else(|| "default".into()),
            snapshotter_socket: self
                .snapshotter_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SNAPSHOTTER_SOCKET)),
            api_socket: self
                .api_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET)),
            api_group: self.api_group,
            traces: self.traces.unwrap_or_default().resolve()?,
            metrics_listen: self.metrics_listen,
            gc: GcConfig::resolve(
                self.max_store_bytes,
                self.gc_unused_secs,
                self.gc_interval_secs,
            )?,
            warm_connection: self.warm_connection.unwrap_or(true),
        })
    }
}

/// Reads a token file: its content without surrounding white space (a
/// warning is logged if other users may read it).
pub fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ConfigError::TokenFile {
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

/// starlightd's complete configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The proxy's QUIC address (a name is resolved at each connect).
    pub proxy: ProxyAddr,
    /// The name the proxy's certificate must be valid for.
    pub server_name: String,
    /// PEM file of the CA certificates trusted for the proxy.
    pub ca_file: PathBuf,
    /// The bearer token sent to the proxy.
    pub token: String,
    /// Where the content store and mounts live.
    pub state_dir: PathBuf,
    /// How long a receive goes on without progress before the contents it
    /// still expects fail.
    pub grace: Duration,
    /// The wait between reconnects of a broken stream.
    pub backoff: Backoff,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace images are registered in.
    pub namespace: String,
    /// Where the snapshotter serves containerd.
    pub snapshotter_socket: PathBuf,
    /// Where starlightd serves its API.
    pub api_socket: PathBuf,
    /// The group (name or number) whose members may use the API socket
    /// besides root; `None`: root only.
    pub api_group: Option<String>,
    /// Traces of real container starts.
    pub traces: TraceConfig,
    /// Address of the metrics endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The store's bound and the eviction of unused images.
    pub gc: GcConfig,
    /// Whether a warm, authenticated connection to the proxy is opened at daemon
    /// start, kept alive and reopened when it fails, so a pull's request goes out
    /// at once (one round trip to the header instead of Retry, handshake and token).
    pub warm_connection: bool,
}

impl Config {
    /// Creates the state directory and the directories starlightd keeps in
    /// it closed to other users (mode 0700, owned by us), or closes existing
    /// ones; refuses a state directory owned by another user or a symlink.
    pub fn prepare_state_dir(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let path = &self.state_dir;
        let bad = |reason: String| ConfigError::StateDir {
            path: path.clone(),
            reason,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if meta.file_type().is_symlink() || !meta.is_dir() {
                return Err(bad("not a directory".into()));
            }
            if meta.uid() != euid {
                return Err(bad(format!(
                    "owned by uid {}, starlightd runs as uid {euid}",
                    meta.uid()
                )));
            }
        }
        crate::store::private_dir(path).map_err(|e| bad(e.to_string()))?;
        // Made here (0700) rather than by their owners with the umask's mode.
        for sub in [
            self.store_dir(),
            self.images_db(),
            self.mounts_dir(),
            self.snapshotter_dir(),
            self.traces_dir(),
        ] {
            crate::store::private_dir(&sub).map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    /// The gid of [`Config::api_group`], looked up in the group database.
    pub fn api_gid(&self) -> Result<Option<u32>, ConfigError> {
        let Some(group) = &self.api_group else {
            return Ok(None);
        };
        crate::api::peer::group_id(group)
            .map(Some)
            .map_err(ConfigError::ApiGroup)
    }
    /// The content store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.state_dir.join("content")
    }

    /// The image database's directory.
    pub fn images_db(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// The directory under which each image is mounted (`<manifest hex>`).
    pub fn mounts_dir(&self) -> PathBuf {
        self.state_dir.join("mnt")
    }

    /// The snapshotter's state directory.
    pub fn snapshotter_dir(&self) -> PathBuf {
        self.state_dir.join("snapshotter")
    }

    /// The spool of traces not yet acknowledged by the proxy.
    pub fn traces_dir(&self) -> PathBuf {
        self.state_dir.join("traces")
    }
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

/// The resolved `[traces]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Whether traces are recorded and uploaded.
    pub enabled: bool,
    /// How long a trace lasts after its first open.
    pub window: Duration,
    /// The quiet period after which an open starts a new trace.
    pub quiet: Duration,
    /// First opens kept per trace.
    pub max_records: usize,
    /// Bytes of paths kept per trace.
    pub max_bytes: usize,
    /// Least time between two uploads.
    pub upload_interval: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Traces the spool holds at most.
    pub max_spooled: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            enabled: true,
            window: Duration::from_secs(30),
            quiet: Duration::from_secs(300),
            max_records: 4096,
            max_bytes: 512 * 1024,
            upload_interval: Duration::from_millis(1000),
            retry_max: Duration::from_secs(300),
            max_spooled: 256,
        }
    }
}

fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::Traces(format!(
            "{name} = {v} is outside {min}..={max}"
        )));
    }
    Ok(v)
}

impl TraceSettings {
    /// The settings checked against their bounds, with defaults.
    pub fn resolve(self) -> Result<TraceConfig, ConfigError> {
        let d = TraceConfig::default();
        Ok(TraceConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            window: Duration::from_secs(bounded(
                "window_secs",
                self.window_secs,
                d.window.as_secs(),
                1,
                3600,
            )?),
            quiet: Duration::from_secs(bounded(
                "quiet_secs",
                self.quiet_secs,
                d.quiet.as_secs(),
                1,
                86_400,
            )?),
            max_records: bounded("max_records", self.max_records, d.max_records, 1, 65_536)?,
            max_bytes: bounded("max_bytes", self.max_bytes, d.max_bytes, 1, 16 << 20)?,
            upload_interval: Duration::from_millis(bounded(
                "upload_interval_ms",
                self.upload_interval_ms,
                1000,
                10,
                3_600_000,
            )?),
            retry_max: Duration::from_secs(bounded(
                "retry_max_secs",
                self.retry_max_secs,
                d.retry_max.as_secs(),
                1,
                86_400,
            )?),
            max_spooled: bounded("max_spooled", self.max_spooled, d.max_spooled, 1, 100_000)?,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
