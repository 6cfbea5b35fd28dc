//! CPU time of this process, so throughputs stay meaningful on a machine
//! busy with other work (wall-clock rates are reported too).

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds consumed by all threads of this process,
/// from `/proc/self/stat` (10 ms resolution); `None` where unavailable.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_secs(&stat)
}

/// Parses `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line.
/// The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from after its last `)`.
pub fn parse_stat_cpu_secs(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Wall-clock and CPU seconds of one measured run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timing {
    /// Elapsed wall-clock seconds.
    pub wall: f64,
    /// CPU seconds of this process (0 when unavailable).
    pub cpu: f64,
}

/// Starts a measurement; [`Stopwatch::stop`] ends it.
pub struct Stopwatch {
    start: Instant,
    cpu: Option<f64>,
}

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Self {
            cpu: process_cpu_secs(),
            start: Instant::now(),
        }
    }

    /// Wall-clock and CPU time since [`Stopwatch::start`].
    pub fn stop(&self) -> Timing {
        let wall = self.start.elapsed().as_secs_f64();
        let cpu = match (self.cpu, process_cpu_secs()) {
            (Some(a), Some(b)) => (b - a).max(0.0),
            _ => 0.0,
        };
        Timing { wall, cpu }
    }
}

impl Timing {
    /// The element-wise minimum of two timings (best of several runs).
    pub fn min(self, other: Timing) -> Timing {
        Timing {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_the_command_name() {
        let stat = "1234 (my (odd) prog) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_secs(stat), Some(3.0));
        assert_eq!(parse_stat_cpu_secs("garbage"), None);
        assert_eq!(parse_stat_cpu_secs("1 (x) R 1 2"), None);
    }

    #[test]
    fn busy_loop_uses_cpu_time() {
        let watch = Stopwatch::start();
        let mut x = 0u64;
        while watch.start.elapsed().as_millis() < 200 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let t = watch.stop();
        assert!(t.wall >= 0.2);
        // The busy loop shows as CPU time (10 ms ticks, a loaded machine).
        // The clock counts the whole process, and other tests run beside this
        // one: at most every core for the whole time.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(t.cpu >= 0.05 && t.cpu <= t.wall * cores + 0.05, "{t:?}");
    }

    #[test]
    fn min_is_elementwise() {
        let a = Timing {
            wall: 1.0,
            cpu: 0.5,
        };
        let b = Timing {
            wall: 0.8,
            cpu: 0.7,
        };
        assert_eq!(
            a.min(b),
            Timing {
                wall: 0.8,
                cpu: 0.5
            }
        );
    }
}
