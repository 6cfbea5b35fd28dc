//! Helpers for collectors that read a daemon's own counters at scrape time
//! (instead of keeping a second copy of every counter).

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Writes counter `name` (the `_total` suffix is added) with `value`.
pub fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes gauge `name` with `value`.
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes counter `name` with one series per `(label value, count)`, under
/// label `key`.
pub fn counter_by(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    key: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let probe = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (label, value) in values {
        let labels = [(key, *label)];
        let labels: &[(&str, &str)] = &labels;
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
