//! One direction of the userspace emulator: reads IP packets from one TUN
//! device, shapes them with a [`Shaper`], and writes them to the other TUN
//! device when due.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::shaper::{Shape, Shaper, Verdict};

/// Counters of one direction, updated by its pump thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets delivered.
    pub packets: AtomicU64,
    /// Bytes (IP packet sizes) delivered.
    pub bytes: AtomicU64,
    /// Packets tail-dropped because the queue was full.
    pub drops: AtomicU64,
    /// Packets dropped by the random loss.
    pub lost: AtomicU64,
    /// Packets sent ahead of earlier ones (reordering).
    pub reordered: AtomicU64,
}

/// Shaping parameters shared with the [`super::Link`], changeable while running.
#[derive(Debug)]
pub struct SharedShape {
    shape: Mutex<Shape>,
    generation: AtomicU64,
}

impl SharedShape {
    /// Parameters `shape`.
    pub fn new(shape: Shape) -> Self {
        SharedShape {
            shape: Mutex::new(shape),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the parameters (the pump picks them up at its next wake-up).
    pub fn set(&self, shape: Shape) {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = shape;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn get(&self) -> Shape {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Longest sleep between checks of the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Packets due this soon are released now: sleeping for less costs more
/// than it is worth (at 1 Gbit/s, 50 µs is four full-size packets).
const EARLY: Duration = Duration::from_micros(50);
/// Packets read per wake-up at most, so releases are not starved.
const READ_BATCH: usize = 64;

/// Parameters of one direction.
pub struct Pump {
    /// TUN fd packets are read from.
    pub src: RawFd,
    /// TUN fd packets are written to.
    pub dst: RawFd,
    /// The shaping parameters.
    pub shape: Arc<SharedShape>,
    /// Counters to update.
    pub counters: Arc<Counters>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
    /// While set, packets pass at once (no delay, no rate, no loss): for
    /// untimed setup phases of a benchmark.
    pub bypass: Arc<AtomicBool>,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Pump {
    /// Moves packets until the stop flag is set.
    pub fn run(self) {
        // Wake up on time: the default 50 µs timer slack is several packets at 1 Gbit/s.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        let mut generation = self.shape.generation.load(Ordering::Acquire);
        let mut shaper = Shaper::new(self.shape.get(), self.seed, Instant::now());
        let mut scratch = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            let g = self.shape.generation.load(Ordering::Acquire);
            if g != generation {
                generation = g;
                shaper.set_shape(self.shape.get());
            }
            let now = Instant::now();
            while let Some(packet) = shaper.pop_due(now + EARLY) {
                self.send(&packet);
            }
            let wait = shaper
                .next_due()
                .map_or(MAX_WAIT, |t| t.saturating_duration_since(now))
                .min(MAX_WAIT);
            if !wait_readable(self.src, wait) {
                continue;
            }
            for _ in 0..READ_BATCH {
                // SAFETY: scratch is a valid buffer of the given length.
                let n = unsafe { libc::read(self.src, scratch.as_mut_ptr().cast(), scratch.len()) };
                if n <= 0 {
                    break;
                }
                let packet = scratch[..n as usize].to_vec();
                let now = Instant::now();
                if self.bypass.load(Ordering::Relaxed) {
                    shaper.pass(now, packet);
                    continue;
                }
                let counter = match shaper.offer(now, packet) {
                    Verdict::Queued => continue,
                    Verdict::Lost => &self.counters.lost,
                    Verdict::TailDropped => &self.counters.drops,
                    Verdict::Reordered => &self.counters.reordered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send(&self, packet: &[u8]) {
        // SAFETY: packet is a valid buffer of the given length.
        let n = unsafe { libc::write(self.dst, packet.as_ptr().cast(), packet.len()) };
        if n == packet.len() as isize {
            self.counters.packets.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(packet.len() as u64, Ordering::Relaxed);
        } else {
            tracing::trace!(err = %io::Error::last_os_error(), "TUN write failed");
            self.counters.drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits up to `wait` for `fd` to become readable.
fn wait_readable(fd: RawFd, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    r > 0 && pfd.revents & libc::POLLIN != 0
}
