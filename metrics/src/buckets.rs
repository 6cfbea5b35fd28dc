//! Histogram buckets shared by both daemons.

/// Buckets for durations from 1 ms to about 2 minutes, in seconds: time to
/// header, time to ready, waits of blocked opens.
pub fn seconds() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ]
    .into_iter()
}

/// Buckets for sizes from 4 KiB to 4 GiB, in bytes (bundles, headers).
pub fn bytes() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(4096.0, 4.0, 11)
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_increase() {
        for b in [
            super::seconds().collect::<Vec<_>>(),
            super::bytes().collect::<Vec<_>>(),
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        assert!(super::bytes().last().unwrap_or(0.0) >= 4.0 * (1u64 << 30) as f64);
    }
}
