//! Trace recording: the first open of every file of an image, for the
//! proxy's ranking (paper §4.4). An [`OpenTrace`] is attached to an
//! [`crate::imagefs::ImageFs`]; it records nothing until enabled, then for
//! each file its first open: path, source layer, time since the first open
//! it saw, and how long that open waited for the content.
//!
//! Production traces ([`WindowLimits`]): with windows on, every container
//! start on the image ([`OpenTrace::arm`], from the snapshotter) and every
//! first open after a quiet period opens a window of its own; it records the
//! first opens from its first open on, for the window's duration and up to
//! its caps on records and path bytes. Closed windows are collected by
//! [`OpenTrace::take_finished`] for the spool ([`crate::trace_spool`]).
//! Only paths, layers and times are kept: never any content. While the
//! manual trace is enabled (`starlight trace`), no window opens: that start
//! is traced once, by the manual trace.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use transport_quic::Header;

pub use starlight_api::trace::TraceRecord;

#[derive(Debug, Default)]
struct State {
    start: Option<Instant>,
    seen: HashSet<u32>,
    records: Vec<TraceRecord>,
}

/// The bounds of one production trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// How long a trace lasts after its first open.
    pub window: Duration,
    /// Time without opens after which an open starts a new trace.
    pub quiet: Duration,
    /// First opens kept at most.
    pub max_records: usize,
    /// Bytes of paths kept at most.
    pub max_bytes: usize,
}

/// One production trace being recorded.
#[derive(Debug)]
struct Window {
    start: Instant,
    seen: HashSet<u32>,
    records: Vec<TraceRecord>,
    bytes: usize,
    full: bool,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            seen: HashSet::new(),
            records: Vec::new(),
            bytes: 0,
            full: false,
        }
    }
}

#[derive(Debug, Default)]
struct Windows {
    /// A start was announced: the next open opens a window.
    armed: bool,
    open: Option<Window>,
    last_open: Option<Instant>,
    /// Closed windows with records, not yet taken.
    done: Vec<Vec<TraceRecord>>,
}

/// Closed windows kept at most between two collections (older ones are
/// dropped first): a bound on memory if nothing collects.
const MAX_DONE: usize = 16;

impl Windows {
    fn close(&mut self) {
        if let Some(w) = self.open.take() {
            if !w.records.is_empty() {
                if self.done.len() >= MAX_DONE {
                    self.done.remove(0);
                }
                self.done.push(w.records);
            }
        }
    }
}

/// The open trace of one image: what each TOC entry is, and the records.
#[derive(Debug)]
pub struct OpenTrace {
    /// Path and layer of each TOC entry, by TOC index.
    entries: Vec<(String, u32)>,
    enabled: AtomicBool,
    state: Mutex<State>,
    /// Production traces, when on.
    limits: Option<WindowLimits>,
    windows: Mutex<Windows>,
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
            limits: None,
            windows: Mutex::default(),
        }
    }

    /// Also records production traces within `limits` (see the module
    /// documentation).
    pub fn with_windows(mut self, limits: WindowLimits) -> OpenTrace {
        self.limits = Some(limits);
        self
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A container is starting on the image: the next open opens a new
    /// window, unless one is open already (concurrent starts share it).
    pub fn arm(&self) {
        self.arm_at(Instant::now());
    }

    fn arm_at(&self, now: Instant) {
        if let Some(limits) = self.limits {
            let mut w = self.windows();
            if w.open
                .as_ref()
                .is_some_and(|o| now.saturating_duration_since(o.start) >= limits.window)
            {
                w.close();
            }
            if w.open.is_none() {
                w.armed = true;
            }
        }
    }

    /// Closes the window if its time is over at `now`; returns the closed
    /// windows' records, each a trace in order of first open.
    pub fn take_finished(&self, now: Instant) -> Vec<Vec<TraceRecord>> {
        let Some(limits) = self.limits else {
            return Vec::new();
        };
        let mut w = self.windows();
        if w.open
            .as_ref()
            .is_some_and(|o| now.saturating_duration_since(o.start) >= limits.window)
        {
            w.close();
        }
        std::mem::take(&mut w.done)
    }

    /// Closes the window whatever its time (at shutdown, at unmount);
    /// returns every trace not taken yet.
    pub fn flush(&self) -> Vec<Vec<TraceRecord>> {
        let mut w = self.windows();
        w.close();
        std::mem::take(&mut w.done)
    }

    fn record_window(&self, limits: WindowLimits, index: u32, began: Instant, waited: Duration) {
        let mut w = self.windows();
        if w.open
            .as_ref()
            .is_some_and(|o| began.saturating_duration_since(o.start) >= limits.window)
        {
            w.close();
        }
        let quiet = w
            .last_open
            .is_none_or(|t| began.saturating_duration_since(t) >= limits.quiet);
        w.last_open = Some(w.last_open.map_or(began, |t| t.max(began)));
        if self.is_enabled() {
            // A start traced by `starlight trace` is not traced twice.
            w.armed = false;
            return;
        }
        if w.open.is_none() && (w.armed || quiet) {
            w.armed = false;
            w.open = Some(Window::new(began));
        }
        let Some(open) = w.open.as_mut() else {
            return;
        };
        let Some((path, layer)) = self.entries.get(index as usize) else {
            return;
        };
        if open.full || !open.seen.insert(index) {
            return;
        }
        if open.records.len() >= limits.max_records
            || open.bytes.saturating_add(path.len()) > limits.max_bytes
        {
            // Capped: the trace keeps its prefix, the earliest opens.
            open.full = true;
            return;
        }
        open.bytes += path.len();
        open.records.push(TraceRecord {
            path: path.clone(),
            layer: *layer,
            at_ms: began.saturating_duration_since(open.start).as_secs_f64() * 1e3,
            wait_ms: waited.as_secs_f64() * 1e3,
        });
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
        if let Some(limits) = self.limits {
            self.record_window(limits, index, began, waited);
        }
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

    fn image(n: u32) -> Header {
        Header {
            toc: (0..n).map(|i| entry(&format!("f{i:03}"), i % 3)).collect(),
            ..Header::default()
        }
    }

    fn limits() -> WindowLimits {
        WindowLimits {
            window: Duration::from_secs(30),
            quiet: Duration::from_secs(300),
            max_records: 4096,
            max_bytes: 1 << 20,
        }
    }

    fn paths(t: &[TraceRecord]) -> Vec<&str> {
        t.iter().map(|r| r.path.as_str()).collect()
    }

    #[test]
    fn a_window_lasts_its_time_after_the_first_open() {
        let t = OpenTrace::new(&image(10)).with_windows(limits());
        let t0 = Instant::now();
        t.arm();
        assert!(t.take_finished(t0 + Duration::from_secs(100)).is_empty());
        t.record(3, t0, Duration::ZERO);
        t.record(3, t0 + Duration::from_secs(1), Duration::ZERO);
        t.record(1, t0 + Duration::from_secs(29), Duration::from_millis(7));
        // Not over yet.
        assert!(t.take_finished(t0 + Duration::from_secs(29)).is_empty());
        // An open after the window's end is not in it (and opens no new
        // window: no start was announced, the image was not quiet).
        t.record(2, t0 + Duration::from_secs(31), Duration::ZERO);
        let done = t.take_finished(t0 + Duration::from_secs(31));
        assert_eq!(done.len(), 1);
        assert_eq!(paths(&done[0]), ["f003", "f001"]);
        assert_eq!(done[0][1].at_ms, 29_000.0);
        assert_eq!(done[0][1].wait_ms, 7.0);
        assert!(t.take_finished(t0 + Duration::from_secs(300)).is_empty());
        // The manual trace is independent and stays off.
        assert!(t.take().is_empty());
    }

    #[test]
    fn each_start_and_each_open_after_a_quiet_period_opens_a_trace() {
        let t = OpenTrace::new(&image(10)).with_windows(limits());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // The very first open of the image starts a trace.
        t.record(0, t0, Duration::ZERO);
        // A second start while it is open shares it.
        t.arm();
        t.record(1, t0 + s(2), Duration::ZERO);
        // A start after the window closed: the next open opens a new trace.
        t.record(9, t0 + s(40), Duration::ZERO);
        t.arm_at(t0 + s(45));
        t.record(0, t0 + s(50), Duration::ZERO);
        t.record(4, t0 + s(51), Duration::ZERO);
        // Quiet for longer than the quiet period: a new trace without a start.
        t.record(5, t0 + s(51 + 300), Duration::ZERO);
        let done = t.take_finished(t0 + s(1000));
        let got: Vec<Vec<&str>> = done.iter().map(|d| paths(d)).collect();
        assert_eq!(
            got,
            vec![vec!["f000", "f001"], vec!["f000", "f004"], vec!["f005"]]
        );
    }

    #[test]
    fn caps_keep_the_earliest_opens() {
        let t = OpenTrace::new(&image(100)).with_windows(WindowLimits {
            max_records: 5,
            ..limits()
        });
        let t0 = Instant::now();
        for i in 0..100 {
            t.record(i, t0 + Duration::from_millis(u64::from(i)), Duration::ZERO);
        }
        let done = t.flush();
        assert_eq!(paths(&done[0]), ["f000", "f001", "f002", "f003", "f004"]);

        // Path bytes: each path is 4 bytes; 10 bytes hold two of them.
        let t = OpenTrace::new(&image(100)).with_windows(WindowLimits {
            max_bytes: 10,
            ..limits()
        });
        for i in 0..100 {
            t.record(i, t0, Duration::ZERO);
        }
        assert_eq!(paths(&t.flush()[0]), ["f000", "f001"]);
        // Unknown entries never count.
        let t = OpenTrace::new(&image(2)).with_windows(limits());
        t.record(77, t0, Duration::ZERO);
        t.record(1, t0, Duration::ZERO);
        assert_eq!(paths(&t.flush()[0]), ["f001"]);
    }

    #[test]
    fn a_manually_traced_start_is_not_traced_twice() {
        let t = OpenTrace::new(&image(3)).with_windows(limits());
        let t0 = Instant::now();
        t.enable();
        t.arm();
        t.record(0, t0, Duration::ZERO);
        t.record(1, t0, Duration::ZERO);
        assert_eq!(paths(&t.take()), ["f000", "f001"]);
        assert!(t.flush().is_empty());
        // Once the manual trace is taken, starts are traced again.
        t.arm();
        t.record(2, t0 + Duration::from_secs(1), Duration::ZERO);
        assert_eq!(paths(&t.flush()[0]), ["f002"]);
    }

    #[test]
    fn without_windows_nothing_is_recorded_for_production() {
        let t = OpenTrace::new(&image(3));
        let t0 = Instant::now();
        t.arm();
        t.record(0, t0, Duration::ZERO);
        assert!(t.take_finished(t0 + Duration::from_secs(60)).is_empty());
        assert!(t.flush().is_empty());
    }

    #[test]
    fn uncollected_windows_are_bounded() {
        let t = OpenTrace::new(&image(3)).with_windows(limits());
        let t0 = Instant::now();
        for k in 0..(MAX_DONE as u64 + 10) {
            t.arm_at(t0 + Duration::from_secs(k * 31));
            t.record(0, t0 + Duration::from_secs(k * 31), Duration::ZERO);
        }
        assert_eq!(t.flush().len(), MAX_DONE);
    }
}
