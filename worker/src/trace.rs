//! Trace recording: the first open of every file of an image, for the
//! proxy's ranking (paper §4.4). An [`OpenTrace`] is attached to an
//! [`crate::imagefs::ImageFs`]; it records nothing until enabled, then for
//! each file its first open: path, source layer, time since the first open
//! it saw, and how long that open waited for the content.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use transport_quic::Header;

/// The first open of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The file's path in the image (as the table of contents names it).
    pub path: String,
    /// The index of the layer the file comes from.
    pub layer: u32,
    /// Milliseconds since the first open of the trace.
    pub at_ms: f64,
    /// Milliseconds the open waited for the file's content.
    pub wait_ms: f64,
}

#[derive(Debug, Default)]
struct State {
    start: Option<Instant>,
    seen: HashSet<u32>,
    records: Vec<TraceRecord>,
}

/// The open trace of one image: what each TOC entry is, and the records.
#[derive(Debug)]
pub struct OpenTrace {
    /// Path and layer of each TOC entry, by TOC index.
    entries: Vec<(String, u32)>,
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl OpenTrace {
    /// A disabled trace for the image of `header`.
    pub fn new(header: &Header) -> OpenTrace {
        OpenTrace {
            entries: header
                .toc
                .iter()
                .map(|e| (e.path.clone(), e.layer))
                .collect(),
            enabled: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of TOC entry `index`.
    pub fn path(&self, index: u32) -> Option<&str> {
        self.entries.get(index as usize).map(|(p, _)| p.as_str())
    }

    /// Starts recording afresh (earlier records are dropped).
    pub fn enable(&self) {
        *self.lock() = State::default();
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether opens are being recorded.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Records an open of TOC entry `index` that began at `began` and
    /// waited `waited` for its content; only the first open of an entry counts.
    pub fn record(&self, index: u32, began: Instant, waited: Duration) {
        if !self.is_enabled() {
            return;
        }
        let Some((path, layer)) = self.entries.get(index as usize) else {
            return;
        };
        let mut state = self.lock();
        if !state.seen.insert(index) {
            return;
        }
        let start = *state.start.get_or_insert(began);
        state.records.push(TraceRecord {
            path: path.clone(),
            layer: *layer,
            at_ms: began.saturating_duration_since(start).as_secs_f64() * 1e3,
            wait_ms: waited.as_secs_f64() * 1e3,
        });
    }

    /// Returns the records so far (in order of first open) and stops recording.
    pub fn take(&self) -> Vec<TraceRecord> {
        self.enabled.store(false, Ordering::Release);
        std::mem::take(&mut *self.lock()).records
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use transport_quic::{EntryKind, Source, TocEntry};

    fn entry(path: &str, layer: u32) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 1,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            sha256: Some([1; 32]),
            layer,
            source: Source::Payload(0),
        }
    }

    #[test]
    fn first_opens_only_while_enabled() {
        let header = Header {
            toc: vec![entry("a", 0), entry("b", 2)],
            ..Header::default()
        };
        let t = OpenTrace::new(&header);
        let t0 = Instant::now();
        t.record(0, t0, Duration::ZERO);
        assert!(t.take().is_empty());
        t.enable();
        t.record(1, t0, Duration::from_millis(5));
        t.record(1, t0 + Duration::from_millis(1), Duration::ZERO);
        t.record(0, t0 + Duration::from_millis(20), Duration::ZERO);
        t.record(7, t0, Duration::ZERO);
        let records = t.take();
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].path.as_str(), records[0].layer), ("b", 2));
        assert_eq!(records[0].at_ms, 0.0);
        assert_eq!(records[0].wait_ms, 5.0);
        assert_eq!(records[1].path, "a");
        assert!((records[1].at_ms - 20.0).abs() < 1e-6);
        // Taking stops and clears.
        assert!(!t.is_enabled());
        t.record(0, t0, Duration::ZERO);
        assert!(t.take().is_empty());
    }
}
