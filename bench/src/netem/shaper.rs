//! The queueing discipline of one direction of the userspace emulator, free of
//! I/O so that it can be tested: random loss, a rate through a bounded
//! tail-drop FIFO, the one-way delay, and reordering (a packet chosen at
//! random skips the delay and so overtakes the packets queued before it,
//! as `netem reorder` does).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The shaping parameters of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// One-way delay.
    pub delay: Duration,
    /// Rate in bits per second; 0 means unlimited.
    pub rate_bps: u64,
    /// Probability of dropping a packet at random.
    pub loss: f64,
    /// Probability of sending a packet without the delay (reordering it).
    pub reorder: f64,
    /// Bytes the queue holds at most (delay line included).
    pub limit: u64,
}

/// What became of an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped by the random loss.
    Lost,
    /// Dropped because the queue was full.
    TailDropped,
    /// Queued for delivery in order.
    Queued,
    /// Queued to skip the delay (delivered ahead of earlier packets).
    Reordered,
}

/// One direction's queue.
pub struct Shaper {
    shape: Shape,
    /// Packets in delivery order with their release times.
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Packets that skip the delay, with their release times.
    early: VecDeque<(Instant, Vec<u8>)>,
    queued: u64,
    last_departure: Instant,
    rng: XorShift,
}

impl Shaper {
    /// A shaper with `shape`, its random choices seeded with `seed`.
    pub fn new(shape: Shape, seed: u64, now: Instant) -> Self {
        Shaper {
            shape,
            queue: VecDeque::new(),
            early: VecDeque::new(),
            queued: 0,
            last_departure: now,
            rng: XorShift(seed | 1),
        }
    }

    /// Changes the parameters; packets already queued keep their times.
    pub fn set_shape(&mut self, shape: Shape) {
        self.shape = shape;
    }

    /// The current parameters.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Bytes held now.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    fn serialization(&self, len: usize) -> Duration {
        if self.shape.rate_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(
            ((len as u128 * 8 * 1_000_000_000) / u128::from(self.shape.rate_bps)) as u64,
        )
    }

    /// Offers a packet arriving at `now`.
    pub fn offer(&mut self, now: Instant, packet: Vec<u8>) -> Verdict {
        if self.shape.loss > 0.0 && self.rng.next_f64() < self.shape.loss {
            return Verdict::Lost;
        }
        let len = packet.len() as u64;
        if self.queued + len > self.shape.limit {
            return Verdict::TailDropped;
        }
        let departure = now.max(self.last_departure) + self.serialization(packet.len());
        self.last_departure = departure;
        self.queued += len;
        if self.shape.reorder > 0.0 && self.rng.next_f64() < self.shape.reorder {
            self.early.push_back((departure, packet));
            Verdict::Reordered
        } else {
            self.queue.push_back((departure + self.shape.delay, packet));
            Verdict::Queued
        }
    }

    /// Queues a packet for release at `now`, unshaped (the bypass of setup phases).
    pub fn pass(&mut self, now: Instant, packet: Vec<u8>) {
        self.last_departure = self.last_departure.max(now);
        self.queued += packet.len() as u64;
        self.early.push_back((now, packet));
    }

    /// When the next packet is due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.queue.front(), self.early.front()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (Some(a), None) => Some(a.0),
            (None, Some(b)) => Some(b.0),
            (None, None) => None,
        }
    }

    /// Takes the next packet due by `now`, earliest release first.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let from_early = match (self.queue.front(), self.early.front()) {
            (Some(a), Some(b)) => b.0 <= a.0,
            (None, Some(_)) => true,
            _ => false,
        };
        let q = if from_early {
            &mut self.early
        } else {
            &mut self.queue
        };
        if q.front().is_some_and(|(t, _)| *t <= now) {
            let (_, packet) = q.pop_front()?;
            self.queued -= packet.len() as u64;
            Some(packet)
        } else {
            None
        }
    }
}

/// A small xorshift64* generator for the random choices.
pub struct XorShift(pub u64);

impl XorShift {
    /// A uniform number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
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

    fn shape() -> Shape {
        Shape {
            delay: Duration::from_millis(25),
            rate_bps: 8_000_000, // 1000-byte packets: 1 ms each
            loss: 0.0,
            reorder: 0.0,
            limit: 1 << 30,
        }
    }

    fn packet(seq: u32) -> Vec<u8> {
        let mut p = vec![0u8; 1000];
        p[..4].copy_from_slice(&seq.to_le_bytes());
        p
    }

    fn seq(p: &[u8]) -> u32 {
        u32::from_le_bytes([p[0], p[1], p[2], p[3]])
    }

    /// Offers `n` packets at `t0` and drains them; returns (seq, release offset).
    fn run(s: &mut Shaper, t0: Instant, n: u32) -> (Vec<Verdict>, Vec<(u32, Duration)>) {
        let verdicts = (0..n).map(|i| s.offer(t0, packet(i))).collect();
        let mut out = Vec::new();
        while let Some(due) = s.next_due() {
            let p = s.pop_due(due).expect("due packet");
            out.push((seq(&p), due - t0));
        }
        (verdicts, out)
    }

    #[test]
    fn paces_to_the_rate_and_adds_the_delay_in_order() {
        let t0 = Instant::now();
        let mut s = Shaper::new(shape(), 7, t0);
        let (_, out) = run(&mut s, t0, 10);
        for (i, (seq, at)) in out.iter().enumerate() {
            assert_eq!(*seq, i as u32);
            assert_eq!(*at, Duration::from_millis(25 + 1 + i as u64));
        }
        assert_eq!(s.queued(), 0);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn nothing_is_released_before_its_time() {
        let t0 = Instant::now();
        let mut s = Shaper::new(shape(), 7, t0);
        s.offer(t0, packet(0));
        assert_eq!(s.pop_due(t0 + Duration::from_millis(25)), None);
        assert!(s.pop_due(t0 + Duration::from_millis(26)).is_some());
    }

    #[test]
    fn tail_drops_beyond_the_limit() {
        let t0 = Instant::now();
        let mut s = Shaper::new(
            Shape {
                limit: 3500,
                ..shape()
            },
            7,
            t0,
        );
        let (verdicts, out) = run(&mut s, t0, 5);
        assert_eq!(
            verdicts,
            [
                Verdict::Queued,
                Verdict::Queued,
                Verdict::Queued,
                Verdict::TailDropped,
                Verdict::TailDropped
            ]
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn random_loss_drops_the_configured_fraction() {
        let t0 = Instant::now();
        let mut s = Shaper::new(
            Shape {
                loss: 0.02,
                ..shape()
            },
            12345,
            t0,
        );
        let (verdicts, out) = run(&mut s, t0, 50_000);
        let lost = verdicts.iter().filter(|v| **v == Verdict::Lost).count();
        assert!((800..1200).contains(&lost), "{lost} of 50000 lost at 2%");
        assert_eq!(out.len(), 50_000 - lost);
        // Survivors stay in order without reordering.
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn reordered_packets_overtake_earlier_ones() {
        let t0 = Instant::now();
        let mut s = Shaper::new(
            Shape {
                reorder: 0.1,
                ..shape()
            },
            99,
            t0,
        );
        let (verdicts, out) = run(&mut s, t0, 1000);
        let reordered = verdicts
            .iter()
            .filter(|v| **v == Verdict::Reordered)
            .count();
        assert!((60..140).contains(&reordered), "{reordered}");
        assert_eq!(out.len(), 1000, "reordering loses nothing");
        let inversions = out.windows(2).filter(|w| w[0].0 > w[1].0).count();
        assert!(inversions > 0, "some packets arrive ahead of earlier ones");
        // A reordered packet still waits for its serialization: never before it.
        for (seq, at) in &out {
            assert!(
                *at >= Duration::from_millis(1 + u64::from(*seq)),
                "{seq} {at:?}"
            );
        }
        let mut seqs: Vec<u32> = out.iter().map(|o| o.0).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_new_shape_applies_to_later_packets() {
        let t0 = Instant::now();
        let mut s = Shaper::new(shape(), 7, t0);
        s.set_shape(Shape {
            delay: Duration::ZERO,
            rate_bps: 0,
            ..shape()
        });
        let (_, out) = run(&mut s, t0, 3);
        assert!(out.iter().all(|(_, at)| at.is_zero()));
    }

    #[test]
    fn loss_generator_is_uniform_enough() {
        let mut rng = XorShift(12345);
        let n = 100_000;
        let below = (0..n).filter(|_| rng.next_f64() < 0.1).count();
        assert!((9_000..11_000).contains(&below), "{below}");
    }
}
