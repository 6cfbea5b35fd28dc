//! The proxy's TOML configuration file.
//!
//! ```toml
//! db = "/var/lib/starlight-proxy/db"
//!
//! [registry]
//! url = "127.0.0.1:5000"   # prefixed to image names without a registry host
//! plain_http = true
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
}

/// Registry settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registry host (`HOST[:PORT]`) prefixed to image names that name none.
    pub url: Option<String>,
    /// Talk plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db: PathBuf::from(DEFAULT_DB),
            registry: RegistryConfig::default(),
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
