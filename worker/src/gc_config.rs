//! The settings of starlightd's garbage collection: the content store's
//! bound, the age after which an unused image goes, and how often a
//! collection runs besides after each pull.

use std::time::Duration;

use crate::config::ConfigError;

/// The default time between periodic collections.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);

/// The resolved garbage-collection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// The content store's bound in bytes (none: unbounded).
    pub max_store_bytes: Option<u64>,
    /// Images unused for this long are evicted (none: never for age alone).
    pub unused: Option<Duration>,
    /// Time between periodic collections.
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            max_store_bytes: None,
            unused: None,
            interval: DEFAULT_GC_INTERVAL,
        }
    }
}

impl GcConfig {
    /// Checks the settings: a bound of at least 1 MiB, an age of at least a
    /// second, an interval of 1 s to a day.
    pub fn resolve(
        max_store_bytes: Option<u64>,
        unused_secs: Option<u64>,
        interval_secs: Option<u64>,
    ) -> Result<GcConfig, ConfigError> {
        if let Some(max) = max_store_bytes {
            if max < 1 << 20 {
                return Err(ConfigError::Gc(format!(
                    "max_store_bytes = {max} is below 1 MiB (1048576)"
                )));
            }
        }
        if unused_secs == Some(0) {
            return Err(ConfigError::Gc("gc_unused_secs must be at least 1".into()));
        }
        let interval = interval_secs.unwrap_or(DEFAULT_GC_INTERVAL.as_secs());
        if !(1..=86_400).contains(&interval) {
            return Err(ConfigError::Gc(format!(
                "gc_interval_secs = {interval} is outside 1..=86400"
            )));
        }
        Ok(GcConfig {
            max_store_bytes,
            unused: unused_secs.map(Duration::from_secs),
            interval: Duration::from_secs(interval),
        })
    }
}
