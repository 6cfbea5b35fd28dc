//! Counters of the registry client: range requests and errors (for the metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters, bumped by [`crate::registry::RegistryClient`].
#[derive(Debug, Default)]
pub(crate) struct RegistryCounters {
    ranges: AtomicU64,
    range_bytes: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of the registry client's request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// HTTP range requests sent.
    pub range_requests: u64,
    /// Bytes those requests asked for.
    pub range_bytes: u64,
    /// Requests to the registry that failed (any kind: manifests, blobs, ranges).
    pub errors: u64,
}

impl RegistryCounters {
    pub(crate) fn range_request(&self, len: u64) {
        self.ranges.fetch_add(1, Ordering::Relaxed);
        self.range_bytes.fetch_add(len, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RegistryStats {
        RegistryStats {
            range_requests: self.ranges.load(Ordering::Relaxed),
            range_bytes: self.range_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}
