//! The proxy's Prometheus metrics, read at scrape time from the bundle
//! server's, the registry client's and the QUIC server's own counters.
//!
//! Names (all prefixed `starlight_proxy_`): `bundles_total{outcome}`,
//! `bundles_active`, `payload_bytes_total`, `bundle_requests_total`,
//! `images_indexed_total`, `traces_folded_total`, `plan_cache_hits_total`,
//! `plan_cache_misses_total`, `plan_cache_evictions_total`, `plan_cache_entries`,
//! `registry_range_requests_total`, `registry_range_bytes_total`,
//! `registry_errors_total`, `connections_open`, `connections_unauthenticated`,
//! `connections_refused_total{reason}`, `handshakes_total`,
//! `authentications_total{outcome}`, `bundles_refused_total`,
//! `held_images_indexed_total`, `payload_cache_lookups_total{result}`,
//! `payload_cache_bytes_total{source}`, `payload_cache_dropped_files_total`,
//! `payload_cache_memory_used_bytes`, `payload_cache_disk_used_bytes`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use starlight_metrics::collect::{counter, counter_by, gauge};
use transport_quic::quic::StatsSource;

use crate::serve::BundleServer;

/// Reads the proxy's counters on each scrape.
pub struct ProxyCollector {
    bundles: Arc<BundleServer>,
    server: StatsSource,
}

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl ProxyCollector {
    /// A registry holding the proxy's metrics.
    pub fn registry(bundles: Arc<BundleServer>, server: StatsSource) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(ProxyCollector { bundles, server }));
        r
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.bundles.stats();
        let r = self.bundles.registry_stats();
        let q = self.server.get();
        let p = "starlight_proxy_";
        let n = |name: &str| format!("{p}{name}");
        counter(
            &mut e,
            &n("bundle_requests"),
            "Bundle requests handled",
            s.requests,
        )?;
        counter_by(
            &mut e,
            &n("bundles"),
            "Bundles finished, by outcome (failed: refused, errored or cut off)",
            "outcome",
            &[("completed", s.completed), ("failed", s.failed)],
        )?;
        let active = s.requests.saturating_sub(s.completed + s.failed);
        gauge(
            &mut e,
            &n("bundles_active"),
            "Bundles being served",
            active as i64,
        )?;
        counter(
            &mut e,
            &n("payload_bytes"),
            "Payload bytes sent in bundles (streams cut off midway included)",
            s.payload_bytes,
        )?;
        counter(
            &mut e,
            &n("images_indexed"),
            "Images indexed on demand",
            s.indexed,
        )?;
        counter(
            &mut e,
            &n("traces_folded"),
            "Traces folded into ranks",
            s.traces,
        )?;
        counter(
            &mut e,
            &n("plan_cache_hits"),
            "Plan cache hits",
            s.plan_cache.hits,
        )?;
        counter(
            &mut e,
            &n("plan_cache_misses"),
            "Plan cache misses",
            s.plan_cache.misses,
        )?;
        counter(
            &mut e,
            &n("plan_cache_evictions"),
            "Plans evicted from the cache",
            s.plan_cache.evictions,
        )?;
        gauge(
            &mut e,
            &n("plan_cache_entries"),
            "Plans in the cache",
            s.plan_cache.entries as i64,
        )?;
        counter(
            &mut e,
            &n("registry_range_requests"),
            "HTTP range requests sent to the registry",
            r.range_requests,
        )?;
        counter(
            &mut e,
            &n("registry_range_bytes"),
            "Bytes asked for by range requests",
            r.range_bytes,
        )?;
        counter(
            &mut e,
            &n("registry_errors"),
            "Failed registry requests",
            r.errors,
        )?;
        gauge(
            &mut e,
            &n("connections_open"),
            "QUIC connections open",
            q.open as i64,
        )?;
        gauge(
            &mut e,
            &n("connections_unauthenticated"),
            "Connections that have not presented an accepted token yet",
            q.unauthenticated as i64,
        )?;
        counter(
            &mut e,
            &n("handshakes"),
            "QUIC handshakes completed",
            q.handshakes,
        )?;
        counter(&mut e, &n("retries"), "QUIC Retry packets sent", q.retries)?;
        counter_by(
            &mut e,
            &n("connections_refused"),
            "Connections refused or closed by the admission limits",
            "reason",
            &[
                ("per_address", q.refused_address),
                ("full", q.refused_full),
                ("evicted", q.evicted),
            ],
        )?;
        counter_by(
            &mut e,
            &n("authentications"),
            "Token checks, by outcome",
            "outcome",
            &[("accepted", q.authenticated), ("refused", q.auth_failed)],
        )?;
        counter_by(
            &mut e,
            &n("requests_refused"),
            "Requests refused by the per-connection and per-token limits",
            "kind",
            &[("bundle", q.bundles_refused), ("trace", q.traces_refused)],
        )?;
        counter(
            &mut e,
            &n("held_images_indexed"),
            "Held images indexed on demand",
            s.held_indexed,
        )?;
        if let Some(c) = self.bundles.payload_cache_stats() {
            crate::serve::cache::metrics::encode(&mut e, p, &c)?;
        }
        Ok(())
    }
}
