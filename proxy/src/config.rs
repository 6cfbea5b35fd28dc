//! The proxy's TOML configuration file.
//!
//! ```toml
//! db = "/var/lib/starlight-proxy/db"
//!
//! [registry]
//! url = "127.0.0.1:5000"   # prefixed to image names without a registry host
//! plain_http = true
//! allow = ["127.0.0.1:5000"] # hosts images may be indexed from (default: url only)
//! docker_config = "/etc/starlight/docker-config.json" # auths, credHelpers, credsStore
//!                          # (default: $DOCKER_CONFIG/config.json, ~/.docker/config.json)
//!
//! [[registry.auth]]        # credentials of one private registry (first match wins)
//! host = "registry.example:5000"
//! username = "starlight"
//! password_file = "/etc/starlight/registry.password"  # or token_file = "…" alone
//!
//! [serve]                  # `starlight-proxy serve`
//! listen = "0.0.0.0:4433"  # UDP address of the QUIC server
//! cert = "/etc/starlight/proxy.crt"
//! key = "/etc/starlight/proxy.key"
//! tokens = ["worker-secret"]
//! in_flight = 8            # range requests to the registry in flight per bundle
//! max_range = 8388608      # largest range request, bytes
//! max_gap = 65536          # largest gap between coalesced ranges, bytes
//! retries = 3              # retries of a failed range request (transient errors)
//! plan_cache_entries = 256
//! plan_cache_bytes = 268435456
//! path_rtt_ms = 150        # expected worker round-trip time: windows are 2 x BDP of this path
//! path_rate = "1gbit"      # expected bottleneck rate (same units as rate_limit)
//! send_window = 16777216   # QUIC send window per connection, bytes (default: from the path)
//! congestion = "bbr"       # QUIC congestion controller: bbr, cubic or newreno
//! initial_window = 524288  # initial congestion window, bytes (paced; 2400..4194304)
//! rate_limit = "100mbit"   # pace each bundle's body (bytes/s, or "kbit", "mbit", "gbit", "kb", "mb", "gb")
//! tag_ttl_secs = 300       # re-resolve a tag against the registry after this long (0: every request)
//! max_held_images = 64     # distinct held images looked at per request (duplicates dropped)
//! max_connections = 1024   # connections at once
//! max_connections_per_address = 64
//! max_unauthenticated = 256  # connections without an accepted token; the oldest is closed for a new one
//! require_retry = true     # validate client addresses with a QUIC Retry first
//! auth_timeout_secs = 5    # time to present the token
//! max_bundles = 32         # bundles served at once (each holds up to (in_flight + 1) × max_range)
//! max_bundles_per_connection = 8
//! stall_timeout_secs = 30  # a bundle whose client reads nothing this long is cancelled
//! max_traces_per_token = 120 # trace uploads per token per trace_window_secs
//! trace_window_secs = 3600
//! max_stored_traces = 256  # trace bodies kept per image (oldest dropped)
//! max_refreshes_per_minute = 60 # tag refreshes (convert --notify) per token per minute
//!
//! [index]                  # budgets of indexing (a crafted image is refused past them)
//! max_jobs = 2             # index jobs running at once
//! max_waiting = 256        # more jobs wait for a slot (a waiting job holds no memory); beyond, refused at once
//! layer_metadata_bytes = "128mib"
//! image_metadata_bytes = "256mib"
//! layer_uncompressed_bytes = "16gib"
//! image_uncompressed_bytes = "32gib"
//!
//! [cache]                  # ranges read from the registry, shared by all bundles (LRU)
//! memory_bytes = "256mib"  # 0: no memory tier
//! disk_bytes = "4gib"      # 0: no disk tier
//! dir = "/var/lib/starlight-proxy/payload-cache" # default: beside the database
//!
//! [metrics]                # Prometheus /metrics, /healthz, /readyz (off without listen)
//! listen = "127.0.0.1:9464"
//! ```
//!
//! Every key is optional; command-line flags override the file.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default database directory.
pub const DEFAULT_DB: &str = "/var/lib/starlight-proxy/db";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error (with line and column).
        source: toml::de::Error,
    },
}

/// The proxy's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the RocksDB directory database.
    pub db: PathBuf,
    /// The registry images are indexed from.
    pub registry: RegistryConfig,
    /// The bundle server (`starlight-proxy serve`).
    pub serve: ServeConfig,
    /// Budgets and concurrency of indexing.
    pub index: IndexConfig,
    /// The Prometheus metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// The shared payload cache (`[cache]`).
    pub cache: crate::serve::CacheConfig,
}

/// The `[metrics]` section: off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address of the `/metrics`, `/healthz` and `/readyz` endpoint
    /// (for example `127.0.0.1:9464`); none: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Settings of the bundle server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// UDP address the QUIC server listens on.
    pub listen: String,
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// Bearer tokens accepted from workers.
    pub tokens: Vec<String>,
    /// Range requests to the registry in flight per bundle.
    pub in_flight: usize,
    /// Largest range request in bytes (a larger payload is fetched in pieces).
    pub max_range: u64,
    /// Largest gap in bytes between two members fetched by one range request.
    pub max_gap: u64,
    /// Retries of a range request after a transient error.
    pub retries: u32,
    /// Most plans kept in the plan cache.
    pub plan_cache_entries: usize,
    /// Approximate bytes of plans kept in the plan cache.
    pub plan_cache_bytes: usize,
    /// Round-trip time of the expected worker path in milliseconds (sizes the windows).
    pub path_rtt_ms: u64,
    /// Bottleneck rate of the expected worker path (sizes the windows).
    pub path_rate: Rate,
    /// QUIC send window per connection in bytes (bytes buffered unacknowledged);
    /// default: from the path (see [`ServeConfig::transport`]).
    pub send_window: Option<u64>,
    /// QUIC congestion controller.
    pub congestion: CongestionName,
    /// Initial congestion window in bytes.
    pub initial_window: InitialWindow,
    /// Pace each bundle's body to this rate (none: as fast as it goes).
    pub rate_limit: Option<Rate>,
    /// Seconds after which a tag is resolved again against the registry (0: on every
    /// request).
    pub tag_ttl_secs: u64,
    /// Distinct held images looked at per request.
    pub max_held_images: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one source address.
    pub max_connections_per_address: usize,
    /// Connections without an accepted token at once (the oldest is closed for a new one).
    pub max_unauthenticated: usize,
    /// Validate client addresses with a QUIC Retry before a connection counts.
    pub require_retry: bool,
    /// Seconds a connection has to present its token.
    pub auth_timeout_secs: u64,
    /// Bundles served at once.
    pub max_bundles: usize,
    /// Bundles served at once per connection.
    pub max_bundles_per_connection: usize,
    /// Seconds a bundle may wait on a client that reads nothing before it is cancelled.
    pub stall_timeout_secs: u64,
    /// Trace uploads accepted per token per `trace_window_secs`.
    pub max_traces_per_token: u32,
    /// The window of `max_traces_per_token`, seconds.
    pub trace_window_secs: u64,
    /// Trace bodies kept per image (the oldest is dropped; its ranks stay folded).
    pub max_stored_traces: u64,
    /// Tag refreshes (`starlight convert --notify`) accepted per token per minute.
    pub max_refreshes_per_minute: u32,
}

impl ServeConfig {
    /// The QUIC transport settings of the server: windows sized for the configured
    /// path (2 x BDP, bounded), `send_window` if set, the congestion controller and
    /// initial window.
    pub fn transport(&self) -> transport_quic::quic::TransportTuning {
        let path = transport_quic::quic::PathProfile {
            rtt: std::time::Duration::from_millis(self.path_rtt_ms.min(60_000)),
            rate_bps: self.path_rate.0.saturating_mul(8),
        };
        let mut t = transport_quic::quic::TransportTuning::for_path(path);
        if let Some(w) = self.send_window {
            t.send_window = w;
        }
        t.congestion = self.congestion.0;
        t.initial_window = self.initial_window.0;
        t
    }
}

/// A congestion controller name in TOML: `"bbr"`, `"cubic"` or `"newreno"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct CongestionName(pub transport_quic::quic::Congestion);

impl TryFrom<String> for CongestionName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(CongestionName).map_err(|e| format!("{e}"))
    }
}

/// An initial congestion window in bytes, within the transport's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct InitialWindow(pub u64);

impl Default for InitialWindow {
    fn default() -> Self {
        InitialWindow(transport_quic::quic::transport::DEFAULT_INITIAL_WINDOW)
    }
}

impl TryFrom<u64> for InitialWindow {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        use transport_quic::quic::transport::{MAX_INITIAL_WINDOW, MIN_INITIAL_WINDOW};
        if (MIN_INITIAL_WINDOW..=MAX_INITIAL_WINDOW).contains(&n) {
            Ok(InitialWindow(n))
        } else {
            Err(format!(
                "initial_window {n} not in {MIN_INITIAL_WINDOW}..={MAX_INITIAL_WINDOW} bytes"
            ))
        }
    }
}

/// A transfer rate in bytes per second. In TOML: an integer (bytes/s) or a
/// string with a unit: `"100mbit"`, `"512kbit"`, `"1gbit"` (bits, decimal
/// prefixes), `"10mb"`, `"64kb"` (bytes, decimal), `"4mib"`, `"64kib"`
/// (bytes, binary), or a plain number of bytes/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RateRepr")]
pub struct Rate(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum RateRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<RateRepr> for Rate {
    type Error = String;
    fn try_from(r: RateRepr) -> Result<Rate, String> {
        match r {
            RateRepr::Bytes(0) => Err("rate_limit must be positive".into()),
            RateRepr::Bytes(n) => Ok(Rate(n)),
            RateRepr::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Rate, String> {
        let t = text.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid rate {text:?} (e.g. \"100mbit\", \"10mb\" or bytes/s)");
        let value: f64 = num.parse().map_err(|_| bad())?;
        let factor: f64 = match unit.trim().trim_end_matches("/s").trim_end_matches("ps") {
            "" | "b" => 1.0,
            "bit" => 1.0 / 8.0,
            "kbit" => 1e3 / 8.0,
            "mbit" => 1e6 / 8.0,
            "gbit" => 1e9 / 8.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        let bytes = (value * factor).round();
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("rate {text:?} is out of range"));
        }
        Ok(Rate(bytes as u64))
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: DEFAULT_LISTEN.to_string(),
            cert: None,
            key: None,
            tokens: Vec::new(),
            in_flight: 8,
            max_range: 8 << 20,
            max_gap: 64 << 10,
            retries: 3,
            plan_cache_entries: 256,
            plan_cache_bytes: 256 << 20,
            path_rtt_ms: transport_quic::quic::transport::DEFAULT_PATH_RTT.as_millis() as u64,
            path_rate: Rate(transport_quic::quic::transport::DEFAULT_PATH_RATE_BPS / 8),
            send_window: None,
            congestion: CongestionName::default(),
            initial_window: InitialWindow::default(),
            rate_limit: None,
            tag_ttl_secs: 300,
            max_held_images: 64,
            max_connections: 1024,
            max_connections_per_address: 64,
            max_unauthenticated: 256,
            require_retry: true,
            auth_timeout_secs: 5,
            max_bundles: 32,
            max_bundles_per_connection: 8,
            stall_timeout_secs: 30,
            max_traces_per_token: 120,
            trace_window_secs: 3600,
            max_stored_traces: 256,
            max_refreshes_per_minute: 60,
        }
    }
}

/// Registry settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registry host (`HOST[:PORT]`) prefixed to image names that name none.
    pub url: Option<String>,
    /// Talk plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Registry hosts (`HOST[:PORT]`) the proxy may index images from on a worker's
    /// behalf. Empty: only `url`'s host.
    pub allow: Vec<String>,
    /// Docker's `config.json` to take credentials from (default:
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// Credentials per registry host (`[[registry.auth]]`).
    pub auth: Vec<crate::credentials::AuthEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db: PathBuf::from(DEFAULT_DB),
            registry: RegistryConfig::default(),
            serve: ServeConfig::default(),
            index: IndexConfig::default(),
            metrics: MetricsConfig::default(),
            cache: crate::serve::CacheConfig::default(),
        }
    }
}

impl Config {
    /// Loads a TOML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// `reference` with the configured registry host prefixed when its first
    /// component names no host (no `.` or `:` and not `localhost`).
    pub fn qualify(&self, reference: &str) -> String {
        let Some(url) = self.registry.url.as_deref() else {
            return reference.to_string();
        };
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        match reference.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                reference.to_string()
            }
            _ => format!("{host}/{reference}"),
        }
    }
}

// ---------------------------------------------------------------------------
// [index]: budgets and concurrency of the indexer (issue 12, crafted images).
// ---------------------------------------------------------------------------

/// Budgets and concurrency of indexing (the `[index]` section). A budget is
/// charged while a layer streams by; the image is refused as soon as one is
/// exceeded, and nothing is recorded. One job's memory peaks at about three
/// times `image_metadata_bytes` (layers, merged table, database batch).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Index jobs running at once (at least 1).
    pub max_jobs: std::num::NonZeroUsize,
    /// Index jobs waiting for a slot; more are refused at once.
    pub max_waiting: usize,
    /// Metadata bytes of one layer (paths, link targets, owner names,
    /// xattrs, 256 bytes per entry and per implied directory).
    pub layer_metadata_bytes: ByteSize,
    /// Metadata bytes of all the layers of one image.
    pub image_metadata_bytes: ByteSize,
    /// Uncompressed bytes of one layer.
    pub layer_uncompressed_bytes: ByteSize,
    /// Bytes decompressed while indexing one image (layers indexed before cost nothing).
    pub image_uncompressed_bytes: ByteSize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            max_jobs: std::num::NonZeroUsize::MIN.saturating_add(1),
            max_waiting: 256,
            layer_metadata_bytes: ByteSize(128 << 20),
            image_metadata_bytes: ByteSize(256 << 20),
            layer_uncompressed_bytes: ByteSize(16 << 30),
            image_uncompressed_bytes: ByteSize(32 << 30),
        }
    }
}

/// A size in bytes. In TOML: an integer, or a string with a unit: `"kib"`,
/// `"mib"`, `"gib"`, `"tib"` (binary) or `"kb"`, `"mb"`, `"gb"`, `"tb"`
/// (decimal), e.g. `"128mib"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeRepr")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<ByteSize, String> {
        match r {
            SizeRepr::Bytes(n) => Ok(ByteSize(n)),
            SizeRepr::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<ByteSize, String> {
        let t = text.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size {text:?} (e.g. \"128mib\", \"16gib\" or bytes)");
        let value: u64 = num.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        value
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is out of range"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod transport_config_tests {
    use super::*;
    use transport_quic::quic::Congestion;

    #[test]
    fn transport_keys_parse_and_size_the_windows() {
        let d = Config::parse("").unwrap().serve.transport();
        assert_eq!(d.congestion, Congestion::Bbr);
        assert_eq!(d.send_window, 75_000_000); // 2 x 2 BDP of 1 Gbit/s x 150 ms
        let c = Config::parse(
            "[serve]\npath_rtt_ms = 300\npath_rate = \"100mbit\"\ncongestion = \"cubic\"\ninitial_window = 65536\n",
        )
        .unwrap();
        let t = c.serve.transport();
        assert_eq!(t.congestion, Congestion::Cubic);
        assert_eq!(t.initial_window, 65536);
        assert_eq!(t.stream_receive_window, 7_500_000);
        let c = Config::parse("[serve]\nsend_window = 2097152\n").unwrap();
        assert_eq!(c.serve.transport().send_window, 2 << 20);
        for bad in [
            "[serve]\ncongestion = \"vegas\"\n",
            "[serve]\ninitial_window = 10\n",
            "[serve]\ninitial_window = 999999999\n",
            "[serve]\npath_rate = \"fast\"\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod index_config_tests {
    use super::*;

    #[test]
    fn index_section_parses_sizes_and_defaults() {
        let c = Config::parse(
            "[index]\nmax_jobs = 1\nlayer_metadata_bytes = \"64mib\"\nimage_uncompressed_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(c.index.max_jobs.get(), 1);
        assert_eq!(c.index.layer_metadata_bytes, ByteSize(64 << 20));
        assert_eq!(c.index.image_uncompressed_bytes, ByteSize(1000));
        assert_eq!(
            c.index.image_metadata_bytes,
            IndexConfig::default().image_metadata_bytes
        );
        for (text, bytes) in [("16GiB", 16 << 30), ("2 kb", 2000), ("7", 7)] {
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{text}");
        }
        for bad in ["", "lots", "1.5gib", "-1", "99999999999tib"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        for bad in [
            "[index]\nmax_jobs = 0\n",
            "[index]\nlayer_metadata_bytes = \"big\"\n",
            "[index]\nmax_job = 3\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            "db = \"/tmp/x\"\n[registry]\nurl = \"127.0.0.1:5000\"\nplain_http = true\n",
        )
        .unwrap();
        assert_eq!(c.db, PathBuf::from("/tmp/x"));
        assert_eq!(c.registry.url.as_deref(), Some("127.0.0.1:5000"));
        assert!(c.registry.plain_http);
    }

    #[test]
    fn serve_section_parses_and_defaults() {
        let c = Config::parse(
            "[serve]\nlisten = \"127.0.0.1:9000\"\ntokens = [\"a\", \"b\"]\nin_flight = 2\ncert = \"c.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.serve.listen, "127.0.0.1:9000");
        assert_eq!(c.serve.tokens, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c.serve.in_flight, 2);
        assert_eq!(c.serve.cert, Some(PathBuf::from("c.pem")));
        assert_eq!(c.serve.max_range, ServeConfig::default().max_range);
        let e = Config::parse("[serve]\nlisen = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn rate_limits_parse_with_units() {
        let c = Config::parse("[serve]\nrate_limit = \"100mbit\"\n").unwrap();
        assert_eq!(c.serve.rate_limit, Some(Rate(12_500_000)));
        let c = Config::parse("[serve]\nrate_limit = 4096\n").unwrap();
        assert_eq!(c.serve.rate_limit, Some(Rate(4096)));
        for (text, bytes) in [
            ("512kbit", 64_000),
            ("10MB", 10_000_000),
            ("2mib", 2 << 20),
            ("1.5 mbit/s", 187_500),
            ("1000", 1000),
        ] {
            assert_eq!(text.parse::<Rate>().unwrap(), Rate(bytes), "{text}");
        }
        for bad in ["", "fast", "10 furlongs", "0", "0.01bit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let e = Config::parse("[serve]\nrate_limit = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid rate"), "{e}");
    }

    #[test]
    fn abuse_bounds_parse_and_default() {
        let c = Config::parse(
            "[registry]\nurl = \"r:5000\"\nallow = [\"r:5000\", \"mirror:443\"]\n[serve]\ntag_ttl_secs = 0\nmax_held_images = 4\nrequire_retry = false\n",
        )
        .unwrap();
        assert_eq!(
            c.registry.allow,
            vec!["r:5000".to_string(), "mirror:443".into()]
        );
        assert_eq!(c.serve.tag_ttl_secs, 0);
        assert_eq!(c.serve.max_held_images, 4);
        assert!(!c.serve.require_retry);
        let d = ServeConfig::default();
        assert_eq!((d.max_bundles, d.max_bundles_per_connection), (32, 8));
        assert!(d.require_retry);
        assert!(Config::default().registry.allow.is_empty());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::default().db, PathBuf::from(DEFAULT_DB));
    }

    #[test]
    fn unknown_or_mistyped_keys_are_clear_errors() {
        let e = Config::parse("dbb = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("dbb"), "{e}");
        let e = Config::parse("[registry]\nplain_http = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain_http") || e.contains("boolean"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(Config::load(&missing)
            .unwrap_err()
            .to_string()
            .contains("none.toml"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "db = [").unwrap();
        let e = Config::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.toml"), "{e}");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "db = \"d\"").unwrap();
        assert_eq!(Config::load(&good).unwrap().db, PathBuf::from("d"));
    }

    #[test]
    fn qualify_prefixes_bare_names_only() {
        let mut c = Config::default();
        assert_eq!(c.qualify("app:v1"), "app:v1");
        c.registry.url = Some("http://127.0.0.1:5000/".into());
        assert_eq!(c.qualify("app:v1"), "127.0.0.1:5000/app:v1");
        assert_eq!(c.qualify("library/app:v1"), "127.0.0.1:5000/library/app:v1");
        assert_eq!(c.qualify("127.0.0.1:6000/app:v1"), "127.0.0.1:6000/app:v1");
        assert_eq!(c.qualify("registry.example/app"), "registry.example/app");
        assert_eq!(c.qualify("localhost/app"), "localhost/app");
    }
}
