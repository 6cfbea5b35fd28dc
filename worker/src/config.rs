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
use std::path::PathBuf;
use std::time::Duration;

pub use crate::gc_config::GcConfig;
use crate::receiver::Backoff;
pub use starlight_api::proxy_addr::ProxyAddr;
pub use starlight_api::settings::{
    read_token_file, Settings, SettingsError, TraceSettings, DEFAULT_API_SOCKET,
    DEFAULT_CONFIG_PATH, DEFAULT_CONTAINERD_SOCKET,
};

/// The snapshotter's gRPC socket by default.
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/starlight/snapshotter.sock";
/// The longest reconnect backoff that may be configured (ms).
pub const MAX_RECONNECT_MS: u64 = 60_000;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, or the token file it names, is unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A required setting is missing from both the file and the flags.
    #[error("no {0} configured (set it in the configuration file or with its flag)")]
    Missing(&'static str),
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

/// The resolution of [`Settings`] into starlightd's [`Config`].
pub trait ResolveSettings {
    /// The complete configuration, with defaults for what may default.
    fn resolve(self) -> Result<Config, ConfigError>;
}

/// The reconnect backoff: 1 ms ≤ initial ≤ max ≤ [`MAX_RECONNECT_MS`].
fn backoff(settings: &Settings) -> Result<Backoff, ConfigError> {
    let default = Backoff::default();
    let ms = |d: Duration| d.as_millis() as u64;
    let initial = settings.reconnect_initial_ms.unwrap_or(ms(default.initial));
    let max = settings
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

impl ResolveSettings for Settings {
    fn resolve(self) -> Result<Config, ConfigError> {
        let proxy = self
            .proxy
            .clone()
            .ok_or(ConfigError::Missing("proxy address"))?;
        let ca_file = self
            .ca_file
            .clone()
            .ok_or(ConfigError::Missing("CA file"))?;
        let token = self.resolve_token()?.ok_or(ConfigError::Missing("token"))?;
        let backoff = backoff(&self)?;
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
            traces: TraceConfig::from_settings(self.traces.unwrap_or_default())?,
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

impl TraceConfig {
    /// The `[traces]` settings checked against their bounds, with defaults.
    pub fn from_settings(settings: TraceSettings) -> Result<TraceConfig, ConfigError> {
        let d = TraceConfig::default();
        Ok(TraceConfig {
            enabled: settings.enabled.unwrap_or(d.enabled),
            window: Duration::from_secs(bounded(
                "window_secs",
                settings.window_secs,
                d.window.as_secs(),
                1,
                3600,
            )?),
            quiet: Duration::from_secs(bounded(
                "quiet_secs",
                settings.quiet_secs,
                d.quiet.as_secs(),
                1,
                86_400,
            )?),
            max_records: bounded(
                "max_records",
                settings.max_records,
                d.max_records,
                1,
                65_536,
            )?,
            max_bytes: bounded("max_bytes", settings.max_bytes, d.max_bytes, 1, 16 << 20)?,
            upload_interval: Duration::from_millis(bounded(
                "upload_interval_ms",
                settings.upload_interval_ms,
                1000,
                10,
                3_600_000,
            )?),
            retry_max: Duration::from_secs(bounded(
                "retry_max_secs",
                settings.retry_max_secs,
                d.retry_max.as_secs(),
                1,
                86_400,
            )?),
            max_spooled: bounded(
                "max_spooled",
                settings.max_spooled,
                d.max_spooled,
                1,
                100_000,
            )?,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
