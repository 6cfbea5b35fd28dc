//! One direction of the emulated link: reads IP packets from one TUN device,
//! holds each for the one-way delay after pacing it to the rate through a
//! bounded FIFO, and writes it to the other TUN device.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// One-way delay.
    pub delay: Duration,
    /// Rate in bits per second; 0 means unlimited.
    pub rate_bps: u64,
    /// Probability of dropping a packet at random.
    pub loss: f64,
    /// Bytes the queue holds at most (delay line included).
    pub limit: u64,
    /// Counters to update.
    pub counters: Arc<Counters>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
    /// While set, packets pass at once (no delay, no rate, no loss): for
    /// untimed setup phases of a benchmark.
    pub bypass: Arc<AtomicBool>,
    /// Seed of the loss generator.
    pub seed: u64,
}

impl Pump {
    /// Moves packets until the stop flag is set.
    pub fn run(self) {
        // Wake up on time: the default 50 µs timer slack is several packets at 1 Gbit/s.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        let mut rng = XorShift(self.seed | 1);
        let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut queued: u64 = 0;
        let mut last_departure = Instant::now();
        let mut scratch = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while queue.front().is_some_and(|(t, _)| *t <= now + EARLY) {
                if let Some((_, packet)) = queue.pop_front() {
                    queued -= packet.len() as u64;
                    self.send(&packet);
                }
            }
            let wait = queue
                .front()
                .map_or(MAX_WAIT, |(t, _)| t.saturating_duration_since(now))
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
                let len = n as usize;
                if self.bypass.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    last_departure = last_departure.max(now);
                    queued += len as u64;
                    queue.push_back((now, scratch[..len].to_vec()));
                    continue;
                }
                if self.loss > 0.0 && rng.next_f64() < self.loss {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if queued + len as u64 > self.limit {
                    self.counters.drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let arrival = Instant::now();
                let departure = arrival.max(last_departure) + self.serialization(len);
                last_departure = departure;
                queued += len as u64;
                queue.push_back((departure + self.delay, scratch[..len].to_vec()));
            }
        }
    }

    fn serialization(&self, len: usize) -> Duration {
        if self.rate_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((len as u64 * 8 * 1_000_000_000) / self.rate_bps)
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

/// A small xorshift64* generator for the random loss.
struct XorShift(u64);

impl XorShift {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_generator_is_uniform_enough() {
        let mut rng = XorShift(12345);
        let n = 100_000;
        let below = (0..n).filter(|_| rng.next_f64() < 0.1).count();
        assert!((9_000..11_000).contains(&below), "{below}");
    }
}
