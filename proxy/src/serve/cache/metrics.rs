//! The payload cache's Prometheus metrics (see [`crate::metrics`]).

use prometheus_client::encoding::DescriptorEncoder;
use starlight_metrics::collect::{counter, counter_by, gauge};

use super::PayloadCacheStats;

/// Encodes `s` under names prefixed with `prefix`.
pub fn encode(
    e: &mut DescriptorEncoder<'_>,
    prefix: &str,
    s: &PayloadCacheStats,
) -> Result<(), std::fmt::Error> {
    let n = |name: &str| format!("{prefix}payload_cache_{name}");
    counter_by(
        e,
        &n("lookups"),
        "Range lookups in the payload cache, by result (coalesced: waited for another bundle's read)",
        "result",
        &[
            ("memory", s.memory_hits),
            ("disk", s.disk_hits),
            ("coalesced", s.coalesced),
            ("miss", s.misses),
        ],
    )?;
    counter_by(
        e,
        &n("bytes"),
        "Range bytes answered, by source",
        "source",
        &[("cache", s.hit_bytes), ("registry", s.registry_bytes)],
    )?;
    counter(
        e,
        &n("dropped_files"),
        "Damaged or stray disk cache files removed",
        s.dropped_files,
    )?;
    for (tier, used) in [("memory", s.memory_used), ("disk", s.disk_used)] {
        gauge(
            e,
            &n(&format!("{tier}_used_bytes")),
            "Bytes held by a payload cache tier",
            used as i64,
        )?;
    }
    Ok(())
}
