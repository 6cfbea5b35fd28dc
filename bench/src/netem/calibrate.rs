//! Measurements across an emulated link: round-trip time (a UDP echo), TCP
//! goodput (a bulk transfer, cloud to worker) and UDP goodput (a paced blast,
//! cloud to worker), and the calibration check against the configured link.
//!
//! Every endpoint is a thread of this process that joined the worker's or the
//! cloud's namespace, so nothing outside the namespaces is contacted; every
//! wait is bounded by a timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    ns, Backend, BackendChoice, Link, LinkConfig, LinkStats, NetemError, CLOUD_ADDR, WORKER_ADDR,
};

/// IPv4 + TCP headers with timestamps, per segment.
pub const TCP_OVERHEAD: u64 = 20 + 20 + 12;
/// IPv4 + UDP headers, per datagram.
pub const UDP_OVERHEAD: u64 = 20 + 8;
/// The TUN devices' MTU.
pub const MTU: u64 = 1500;
/// UDP payload that fills one MTU.
pub const UDP_PAYLOAD: usize = (MTU - UDP_OVERHEAD) as usize;
/// Relative tolerance of the calibration checks.
pub const TOLERANCE: f64 = 0.05;
/// Absolute RTT slack (for RTTs near 0).
pub const RTT_SLACK: Duration = Duration::from_millis(1);

/// Round-trip times of the echo probes that came back.
#[derive(Debug, Clone, Serialize)]
pub struct RttStats {
    /// Probes sent.
    pub sent: usize,
    /// Sorted round-trip times of the answered probes, in seconds.
    pub samples: Vec<f64>,
}

impl RttStats {
    /// Median round-trip time in seconds (0 if nothing came back).
    pub fn median(&self) -> f64 {
        self.samples
            .get(self.samples.len() / 2)
            .copied()
            .unwrap_or(0.0)
    }

    /// Smallest round-trip time in seconds.
    pub fn min(&self) -> f64 {
        self.samples.first().copied().unwrap_or(0.0)
    }

    /// Largest round-trip time in seconds.
    pub fn max(&self) -> f64 {
        self.samples.last().copied().unwrap_or(0.0)
    }
}

/// A bulk TCP transfer, cloud to worker.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TcpResult {
    /// Bytes transferred.
    pub bytes: u64,
    /// Seconds from the first to the last byte received.
    pub seconds: f64,
    /// Goodput in bits/s after the warm-up part (slow start) of the transfer.
    pub steady_bps: f64,
}

/// A paced UDP blast, cloud to worker.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UdpResult {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Payload goodput in bits/s between the first and the last datagram.
    pub goodput_bps: f64,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// Measures the round-trip time from worker to cloud with `probes` UDP echo
/// probes, one at a time, `interval` apart.
pub fn measure_rtt(link: &Link, probes: usize, interval: Duration) -> io::Result<RttStats> {
    let rtt = link.config().rtt;
    let reply_timeout = rtt * 2 + Duration::from_secs(1);
    let deadline = (reply_timeout + interval) * probes as u32 + Duration::from_secs(5);
    let (port_tx, port_rx) = mpsc::channel();
    let echo = link.spawn_in_cloud(move || {
        let sock = UdpSocket::bind((CLOUD_ADDR, 0))?;
        port_tx
            .send(sock.local_addr()?.port())
            .map_err(|_| io::Error::other("probe side gone"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while start.elapsed() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if n == 8 && buf[..8] == u64::MAX.to_le_bytes() {
                        break;
                    }
                    sock.send_to(&buf[..n], from)?;
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })?;
    let port = port_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| timed_out("echo server start"))?;
    let probe = link.spawn_in_worker(move || {
        let sock = UdpSocket::bind((WORKER_ADDR, 0))?;
        sock.connect((CLOUD_ADDR, port))?;
        let mut samples = Vec::new();
        let mut buf = [0u8; 64];
        for seq in 0..probes as u64 {
            let sent = Instant::now();
            sock.send(&seq.to_le_bytes())?;
            while sent.elapsed() < reply_timeout {
                sock.set_read_timeout(Some(
                    reply_timeout
                        .saturating_sub(sent.elapsed())
                        .max(Duration::from_millis(1)),
                ))?;
                match sock.recv(&mut buf) {
                    Ok(8) if buf[..8] == seq.to_le_bytes() => {
                        samples.push(sent.elapsed().as_secs_f64());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => break,
                    Err(e) => return Err(e),
                }
            }
            std::thread::sleep(interval);
        }
        for _ in 0..3 {
            sock.send(&u64::MAX.to_le_bytes())?;
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples)
    })?;
    let samples = ns::join(probe);
    let echoed = ns::join(echo);
    let samples = samples?;
    echoed?;
    Ok(RttStats {
        sent: probes,
        samples,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Transfers `bytes` over TCP from cloud to worker; the steady goodput is
/// measured over the part after the first `warmup` fraction of the bytes.
pub fn measure_tcp(link: &Link, bytes: u64, warmup: f64) -> io::Result<TcpResult> {
    let rtt = link.config().rtt;
    let idle = rtt * 4 + Duration::from_secs(5);
    let (port_tx, port_rx) = mpsc::channel();
    let sink = link.spawn_in_worker(move || {
        let listener = TcpListener::bind((WORKER_ADDR, 0))?;
        port_tx
            .send(listener.local_addr()?.port())
            .map_err(|_| io::Error::other("sender gone"))?;
        listener.set_nonblocking(true)?;
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if is_timeout(&e) && start.elapsed() < idle => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) if is_timeout(&e) => return Err(timed_out("TCP accept")),
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(idle))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let mut samples: Vec<(f64, u64)> = Vec::new();
        let mut first = None;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            got += n as u64;
            samples.push((now.duration_since(first).as_secs_f64(), got));
        }
        if got != bytes {
            return Err(io::Error::other(format!(
                "TCP sink got {got} of {bytes} bytes"
            )));
        }
        let interval = rtt.max(Duration::from_millis(200)).as_secs_f64();
        Ok(TcpResult {
            bytes: got,
            seconds: samples.last().map_or(0.0, |s| s.0),
            steady_bps: steady_rate(&samples, (bytes as f64 * warmup) as u64, interval),
        })
    })?;
    let port = port_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| timed_out("TCP sink start"));
    let source = port.map(|port| {
        link.spawn_in_cloud(move || {
            let addr = SocketAddr::from((WORKER_ADDR, port));
            let mut stream = TcpStream::connect_timeout(&addr, idle)?;
            stream.set_write_timeout(Some(idle))?;
            let chunk = vec![0x5au8; 256 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                stream.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            stream.shutdown(Shutdown::Write)?;
            Ok(())
        })
    });
    let sent = match source {
        Ok(Ok(thread)) => ns::join(thread),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let result = ns::join(sink);
    sent?;
    result
}

/// A bounded TCP transfer, cloud to worker (see [`measure_tcp_bounded`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TcpBounded {
    /// Bytes received.
    pub bytes: u64,
    /// Whether all the bytes asked for arrived before the time cap.
    pub complete: bool,
    /// Seconds from the sender's connect to the last byte received.
    pub seconds: f64,
    /// `bytes` × 8 / `seconds`.
    pub goodput_bps: f64,
}

/// Sends up to `bytes` over TCP from cloud to worker, stopping at `cap`;
/// the time runs from the connect (handshake included, as for a bundle
/// fetch) to the last byte received.
pub fn measure_tcp_bounded(link: &Link, bytes: u64, cap: Duration) -> io::Result<TcpBounded> {
    let idle = link.config().rtt * 4 + Duration::from_secs(10);
    let cap_with_slack = cap + idle;
    let (port_tx, port_rx) = mpsc::channel();
    let sink = link.spawn_in_worker(move || {
        let listener = TcpListener::bind((WORKER_ADDR, 0))?;
        port_tx
            .send(listener.local_addr()?.port())
            .map_err(|_| io::Error::other("sender gone"))?;
        listener.set_nonblocking(true)?;
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if is_timeout(&e) && start.elapsed() < idle => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) if is_timeout(&e) => return Err(timed_out("TCP accept")),
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut got, mut last) = (0u64, Instant::now());
        let accepted = Instant::now();
        loop {
            if accepted.elapsed() > cap_with_slack {
                break;
            }
            match stream.read(&mut buf) {
                Err(e) if is_timeout(&e) => continue,
                Ok(0) => break,
                Ok(n) => {
                    got += n as u64;
                    last = Instant::now();
                }
                // The sender stops at its cap with a reset or a close.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok((got, last))
    })?;
    let port = port_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| timed_out("TCP sink start"));
    let source = port.map(|port| {
        link.spawn_in_cloud(move || {
            let addr = SocketAddr::from((WORKER_ADDR, port));
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&addr, idle)?;
            stream.set_write_timeout(Some(Duration::from_millis(200)))?;
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 && start.elapsed() < cap {
                let n = left.min(chunk.len() as u64) as usize;
                match stream.write(&chunk[..n]) {
                    Ok(w) => left -= w as u64,
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            if left > 0 {
                // Cut off: whatever is still queued does not count.
                let _ = stream.shutdown(Shutdown::Both);
            } else {
                stream.shutdown(Shutdown::Write)?;
            }
            Ok((start, left == 0))
        })
    });
    let sent = match source {
        Ok(Ok(thread)) => ns::join(thread),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let received = ns::join(sink);
    let (start, all_sent) = sent?;
    let (got, last) = received?;
    let seconds = last.saturating_duration_since(start).as_secs_f64();
    Ok(TcpBounded {
        bytes: got,
        complete: all_sent && got == bytes,
        seconds,
        goodput_bps: if seconds > 0.0 {
            got as f64 * 8.0 / seconds
        } else {
            0.0
        },
    })
}

/// The median delivery rate in bits/s over consecutive intervals of
/// `interval` seconds after `mark` bytes, from (seconds, cumulative bytes)
/// samples. The median ignores the bursts that follow a filled hole (data
/// held out of order becomes readable at once) and the gaps before them.
fn steady_rate(samples: &[(f64, u64)], mark: u64, interval: f64) -> f64 {
    let at = |t: f64| {
        let i = samples.partition_point(|s| s.0 <= t);
        if i == 0 {
            0
        } else {
            samples[i - 1].1
        }
    };
    let Some(start) = samples.iter().find(|s| s.1 >= mark).map(|s| s.0) else {
        return 0.0;
    };
    let end = samples.last().map_or(0.0, |s| s.0);
    let mut rates = Vec::new();
    let mut t = start;
    while t + interval <= end {
        rates.push((at(t + interval) - at(t)) as f64 * 8.0 / interval);
        t += interval;
    }
    if rates.len() < 3 {
        return if end > start {
            (at(end) - at(start)) as f64 * 8.0 / (end - start)
        } else {
            0.0
        };
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Sends `count` UDP datagrams of `payload` bytes from cloud to worker, paced
/// at `offered_bps` (counting IP bytes), and counts what arrives.
pub fn measure_udp(
    link: &Link,
    count: u64,
    payload: usize,
    offered_bps: u64,
) -> io::Result<UdpResult> {
    let rtt = link.config().rtt;
    let quiet = rtt + Duration::from_millis(500);
    let wire_bits = (payload as u64 + UDP_OVERHEAD) * 8;
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = link.spawn_in_worker(move || {
        let sock = UdpSocket::bind((WORKER_ADDR, 0))?;
        let size: libc::c_int = 16 * 1024 * 1024;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        port_tx
            .send(sock.local_addr()?.port())
            .map_err(|_| io::Error::other("sender gone"))?;
        sock.set_read_timeout(Some(quiet + Duration::from_secs(5)))?;
        let mut buf = vec![0u8; 65536];
        let (mut received, mut bytes, mut first_len) = (0u64, 0u64, 0u64);
        let (mut first, mut last) = (None, Instant::now());
        while received < count {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let now = Instant::now();
                    if first.is_none() {
                        first = Some(now);
                        first_len = n as u64;
                        sock.set_read_timeout(Some(quiet))?;
                    }
                    last = now;
                    received += 1;
                    bytes += n as u64;
                }
                Err(e) if is_timeout(&e) => break,
                Err(e) => return Err(e),
            }
        }
        let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
        Ok((received, bytes, first_len, secs))
    })?;
    let port = port_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| timed_out("UDP receiver start"));
    let sender = port.map(|port| {
        link.spawn_in_cloud(move || {
            let sock = UdpSocket::bind((CLOUD_ADDR, 0))?;
            sock.connect((WORKER_ADDR, port))?;
            let datagram = vec![0xa5u8; payload];
            let start = Instant::now();
            let mut sent = 0u64;
            for i in 0..count {
                let due = if offered_bps == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(
                        (i as u128 * wire_bits as u128 * 1_000_000_000 / offered_bps as u128)
                            as u64,
                    )
                };
                let elapsed = start.elapsed();
                if due > elapsed {
                    std::thread::sleep((due - elapsed).max(Duration::from_micros(200)));
                }
                match sock.send(&datagram) {
                    Ok(_) => sent += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) || is_timeout(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(sent)
        })
    });
    let sent = match sender {
        Ok(Ok(thread)) => ns::join(thread),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let received = ns::join(receiver);
    let sent = sent?;
    let (received, bytes, first_len, secs) = received?;
    Ok(UdpResult {
        sent,
        received,
        bytes,
        goodput_bps: if secs > 0.0 {
            (bytes - first_len) as f64 * 8.0 / secs
        } else {
            0.0
        },
    })
}

/// One calibration check: a measured value against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was measured: `rtt`, `tcp` or `udp`.
    pub metric: &'static str,
    /// Unit of `target` and `measured` (`ms` or `Mbit/s`).
    pub unit: &'static str,
    /// The value the configured link should give.
    pub target: f64,
    /// The measured value.
    pub measured: f64,
    /// Largest accepted absolute difference.
    pub tolerance: f64,
    /// Whether `measured` is within `tolerance` of `target`.
    pub ok: bool,
}

impl Check {
    fn new(
        metric: &'static str,
        unit: &'static str,
        target: f64,
        measured: f64,
        tolerance: f64,
    ) -> Self {
        Check {
            metric,
            unit,
            target,
            measured,
            tolerance,
            ok: (measured - target).abs() <= tolerance,
        }
    }

    /// Relative error in percent (0 when the target is 0).
    pub fn error_pct(&self) -> f64 {
        if self.target == 0.0 {
            0.0
        } else {
            (self.measured - self.target) / self.target * 100.0
        }
    }
}

/// The result of calibrating one link configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The configured link.
    pub config: LinkConfig,
    /// The emulator that ran it.
    pub backend: Backend,
    /// Echo round-trip times.
    pub rtt: RttStats,
    /// The TCP transfer.
    pub tcp: TcpResult,
    /// The UDP blast.
    pub udp: UdpResult,
    /// The checks against the targets.
    pub checks: Vec<Check>,
    /// The emulator's counters after the measurements.
    pub stats: LinkStats,
}

impl Calibration {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// TCP goodput a loss-free link of `rate_bps` gives with full-size segments.
pub fn tcp_target_bps(rate_bps: u64) -> f64 {
    rate_bps as f64 * (MTU - TCP_OVERHEAD) as f64 / MTU as f64
}

/// UDP goodput a link of `rate_bps` gives with full-size datagrams.
pub fn udp_target_bps(rate_bps: u64) -> f64 {
    rate_bps as f64 * UDP_PAYLOAD as f64 / MTU as f64
}

/// Brings a link up with `config` (on the default backend), measures RTT,
/// TCP and UDP goodput, and checks them against the targets (5%, and 1 ms
/// of RTT slack). A rate of 0 (unlimited) only gets the RTT check.
pub fn calibrate(config: LinkConfig) -> Result<Calibration, NetemError> {
    calibrate_with(config, BackendChoice::Auto)
}

/// [`calibrate`] on the chosen backend: both backends are measured the same way.
pub fn calibrate_with(
    config: LinkConfig,
    choice: BackendChoice,
) -> Result<Calibration, NetemError> {
    let link = Link::up_with(config, choice)?;
    let backend = link.backend();
    let rtt_s = config.rtt.as_secs_f64();
    let rtt = measure_rtt(&link, 20, Duration::from_millis(20))?;
    // Enough data for ~4 s at full rate after slow start (~10 RTTs).
    let rate = if config.rate_bps == 0 {
        1_000_000_000
    } else {
        config.rate_bps
    };
    let tcp_bytes = ((rate as f64 / 8.0) * (4.0 + 10.0 * rtt_s)) as u64;
    let tcp = measure_tcp(&link, tcp_bytes, 0.3)?;
    let udp_secs = 2.0;
    let offered = (rate as f64 * 1.1) as u64;
    let count =
        (offered as f64 * udp_secs / ((UDP_PAYLOAD as u64 + UDP_OVERHEAD) * 8) as f64) as u64;
    let udp = measure_udp(&link, count, UDP_PAYLOAD, offered)?;
    let mut checks = vec![Check::new(
        "rtt",
        "ms",
        rtt_s * 1e3,
        rtt.median() * 1e3,
        (rtt_s * TOLERANCE).max(RTT_SLACK.as_secs_f64()) * 1e3,
    )];
    if config.rate_bps > 0 {
        let tcp_target = tcp_target_bps(config.rate_bps) / 1e6;
        let udp_target = udp_target_bps(config.rate_bps) / 1e6;
        checks.push(Check::new(
            "tcp",
            "Mbit/s",
            tcp_target,
            tcp.steady_bps / 1e6,
            tcp_target * TOLERANCE,
        ));
        checks.push(Check::new(
            "udp",
            "Mbit/s",
            udp_target,
            udp.goodput_bps / 1e6,
            udp_target * TOLERANCE,
        ));
    }
    let stats = link.stats();
    link.down()?;
    Ok(Calibration {
        config,
        backend,
        rtt,
        tcp,
        udp,
        checks,
        stats,
    })
}

/// Formats calibrations as a table, one row per check.
pub fn table(results: &[Calibration]) -> String {
    let mut out = format!(
        "{:>9} {:>8} {:>10} {:>6} {:>12} {:>12} {:>8} {:>5}\n",
        "emulator", "rtt", "rate", "metric", "target", "measured", "error", "ok"
    );
    for r in results {
        for c in &r.checks {
            out += &format!(
                "{:>9} {:>6}ms {:>5}Mbit/s {:>6} {:>9.2} {:<2} {:>9.2} {:<2} {:>7.2}% {:>5}\n",
                r.backend,
                r.config.rtt.as_millis(),
                r.config.rate_bps / 1_000_000,
                c.metric,
                c.target,
                if c.unit == "ms" { "ms" } else { "Mb" },
                c.measured,
                if c.unit == "ms" { "ms" } else { "Mb" },
                c.error_pct(),
                if c.ok { "yes" } else { "NO" }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_ignores_a_burst_after_a_hole() {
        // 1 MB/s read every 10 ms, except a 300 ms hole whose data arrives at once.
        let mut samples = Vec::new();
        let mut cum = 0;
        for i in 1..=1000u64 {
            cum += 10_000;
            let t = i as f64 * 0.01;
            if !(5.0..5.3).contains(&t) {
                samples.push((t, cum));
            }
        }
        let rate = steady_rate(&samples, 2_000_000, 0.2);
        assert!((rate - 8e6).abs() < 8e6 * 0.01, "{rate}");
    }

    #[test]
    fn steady_rate_of_a_short_transfer_is_its_average() {
        let samples = vec![(0.0, 100), (0.5, 600), (1.0, 1100)];
        assert!((steady_rate(&samples, 0, 0.5) - 8000.0).abs() < 1e-6);
    }
}
