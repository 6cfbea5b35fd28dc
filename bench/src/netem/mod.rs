//! The emulated WAN link: two network namespaces, `worker` and `cloud`,
//! joined by a link with a delay, a rate, a bounded tail-drop queue, random
//! loss and reordering.
//!
//! Two backends: where the kernel has `sch_netem`, a veth pair shaped by
//! `tc qdisc … netem` on each end ([`tc`]); elsewhere (or on request) the
//! userspace emulator, a TUN device in each namespace and one thread per
//! direction in this process that moves IP packets between them through a
//! [`shaper::Shaper`]. Both take the same [`LinkConfig`] and are calibrated
//! the same way ([`calibrate`]).
//!
//! Namespaces are named `sl-<pid>-<n>-w` and `sl-<pid>-<n>-c`; [`cleanup_stale`]
//! removes those whose process is gone.

pub mod calibrate;
mod ns;
mod pump;
pub mod shaper;
pub mod tc;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

pub use ns::pid_alive;

/// Prefix of the namespaces this module creates.
pub const NS_PREFIX: &str = "sl-";
/// Name of the TUN device inside each namespace.
pub const TUN_NAME: &str = "sl0";
/// Address of the worker end.
pub const WORKER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Address of the cloud end.
pub const CLOUD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Extra queue room beyond the delay line, as in "BDP + 64 KiB".
pub const QUEUE_SLACK: u64 = 64 * 1024;

/// Errors of the link emulator.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// Not root, or `/dev/net/tun` or `ip netns` missing.
    #[error("link emulation unavailable: {0}")]
    Unavailable(String),
    /// An `ip` command failed.
    #[error("command failed: {0}")]
    Command(String),
    /// Creating or configuring a TUN device failed.
    #[error("TUN device: {0}")]
    Tun(String),
    /// A configuration value is out of range.
    #[error("invalid link configuration: {0}")]
    Config(String),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Time at the rate of extra default queue room, for the bursts a TCP sender
/// emits when a batch of ACKs arrives (tail drops would otherwise cost
/// throughput at small RTTs).
pub const QUEUE_BURST_TIME: Duration = Duration::from_millis(5);

/// The emulated link's parameters (both directions alike).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkConfig {
    /// Round-trip time; each direction delays packets by half of it.
    pub rtt: Duration,
    /// Rate in bits per second (IP bytes); 0 means unlimited.
    pub rate_bps: u64,
    /// Probability in [0, 1) of dropping a packet, per direction.
    pub loss: f64,
    /// Probability in [0, 1) that a packet skips the delay, overtaking the
    /// packets sent before it (netem's `reorder`), per direction.
    pub reorder: f64,
    /// Bytes each direction holds at most, delay line included; `None` means
    /// twice the bandwidth-delay product plus [`QUEUE_SLACK`] plus
    /// [`QUEUE_BURST_TIME`] at the rate, so that one bandwidth-delay product
    /// of buffer, and room for bursts, sits beyond the delay line.
    pub queue_bytes: Option<u64>,
}

impl LinkConfig {
    /// A loss-free link with the default queue.
    pub fn new(rtt: Duration, rate_bps: u64) -> Self {
        Self {
            rtt,
            rate_bps,
            loss: 0.0,
            reorder: 0.0,
            queue_bytes: None,
        }
    }

    /// Bandwidth-delay product in bytes (0 for an unlimited rate).
    pub fn bdp_bytes(&self) -> u64 {
        (self.rate_bps as u128 * self.rtt.as_nanos() / 8 / 1_000_000_000) as u64
    }

    /// The queue limit in bytes actually used.
    pub fn queue_limit(&self) -> u64 {
        match self.queue_bytes {
            Some(q) => q,
            None if self.rate_bps == 0 => 64 * 1024 * 1024,
            None => {
                let burst = LinkConfig::new(QUEUE_BURST_TIME, self.rate_bps).bdp_bytes();
                2 * self.bdp_bytes() + QUEUE_SLACK + burst
            }
        }
    }

    fn validate(&self) -> Result<(), NetemError> {
        if !(0.0..1.0).contains(&self.loss) {
            return Err(NetemError::Config(format!(
                "loss {} not in [0, 1)",
                self.loss
            )));
        }
        if !(0.0..1.0).contains(&self.reorder) {
            return Err(NetemError::Config(format!(
                "reorder {} not in [0, 1)",
                self.reorder
            )));
        }
        if self.queue_limit() < 2048 {
            return Err(NetemError::Config("queue smaller than 2048 bytes".into()));
        }
        Ok(())
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets delivered.
    pub packets: u64,
    /// Bytes (IP) delivered.
    pub bytes: u64,
    /// Packets tail-dropped by the full queue.
    pub drops: u64,
    /// Packets dropped by the random loss (the netem backend counts them
    /// in `drops`).
    pub lost: u64,
    /// Packets sent ahead of earlier ones.
    pub reordered: u64,
}

/// Which emulator runs a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A veth pair shaped by the kernel's `sch_netem`.
    Netem,
    /// TUN devices and this process's pump threads.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Netem => "netem",
            Backend::Userspace => "userspace",
        })
    }
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// netem where the kernel has it, else the userspace emulator.
    #[default]
    Auto,
    /// netem or fail.
    Netem,
    /// The userspace emulator.
    Userspace,
}

impl std::str::FromStr for BackendChoice {
    type Err = NetemError;
    fn from_str(s: &str) -> Result<Self, NetemError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "netem" => Ok(BackendChoice::Netem),
            "userspace" => Ok(BackendChoice::Userspace),
            _ => Err(NetemError::Config(format!(
                "emulator {s:?}: expected auto, netem or userspace"
            ))),
        }
    }
}

impl BackendChoice {
    /// The backend this choice gives on this kernel.
    pub fn resolve(self) -> Result<Backend, NetemError> {
        match self {
            BackendChoice::Userspace => Ok(Backend::Userspace),
            BackendChoice::Netem => tc::probe()
                .map(|()| Backend::Netem)
                .map_err(|e| NetemError::Unavailable(format!("sch_netem: {e}"))),
            BackendChoice::Auto => Ok(match tc::probe() {
                Ok(()) => Backend::Netem,
                Err(e) => {
                    tracing::info!(reason = %e, "no sch_netem here: using the userspace emulator");
                    Backend::Userspace
                }
            }),
        }
    }
}

fn shape_of(config: &LinkConfig) -> shaper::Shape {
    shaper::Shape {
        delay: config.rtt / 2,
        rate_bps: config.rate_bps,
        loss: config.loss,
        reorder: config.reorder,
        limit: config.queue_limit(),
    }
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Worker to cloud (uploads).
    pub worker_to_cloud: DirectionStats,
    /// Cloud to worker (downloads).
    pub cloud_to_worker: DirectionStats,
}

/// A running emulated link; dropping it removes everything it created.
pub struct Link {
    config: LinkConfig,
    backend: Backend,
    shape: Arc<pump::SharedShape>,
    worker_ns: String,
    cloud_ns: String,
    stop: Arc<AtomicBool>,
    bypass: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counters: [Arc<pump::Counters>; 2],
    tuns: Vec<OwnedFd>,
    down: bool,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(0);

/// Checks that link emulation can run here: root, `/dev/net/tun` and `ip`.
pub fn available() -> Result<(), NetemError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetemError::Unavailable("not running as root".into()));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(NetemError::Unavailable("/dev/net/tun is missing".into()));
    }
    ns::ip(&["netns", "list"])
        .map_err(|e| NetemError::Unavailable(format!("`ip netns` unusable: {e}")))
}

/// Removes the namespaces left by runs whose process is gone; returns their names.
pub fn cleanup_stale() -> Result<Vec<String>, NetemError> {
    let mut removed = Vec::new();
    for name in ns::list()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !pid_alive(pid) {
            ns::del(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The process id encoded in a namespace name of ours, if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    matches!(parts.next()?, "w" | "c").then_some(pid)
}

impl Link {
    /// Brings a link up with the default backend choice ([`BackendChoice::Auto`]).
    pub fn up(config: LinkConfig) -> Result<Link, NetemError> {
        Self::up_with(config, BackendChoice::Auto)
    }

    /// Creates the namespaces and the link with the chosen backend.
    pub fn up_with(config: LinkConfig, choice: BackendChoice) -> Result<Link, NetemError> {
        config.validate()?;
        available()?;
        let backend = choice.resolve()?;
        let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut link = Link {
            config,
            backend,
            shape: Arc::new(pump::SharedShape::new(shape_of(&config))),
            worker_ns: format!("{NS_PREFIX}{pid}-{n}-w"),
            cloud_ns: format!("{NS_PREFIX}{pid}-{n}-c"),
            stop: Arc::new(AtomicBool::new(false)),
            bypass: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counters: [Arc::default(), Arc::default()],
            tuns: Vec::new(),
            down: false,
        };
        // On error, dropping `link` removes whatever was created.
        if backend == Backend::Netem {
            for name in [&link.worker_ns, &link.cloud_ns] {
                ns::add(name)?;
                ns::tune(name)?;
            }
            tc::up(
                &link.worker_ns,
                &link.cloud_ns,
                [WORKER_ADDR, CLOUD_ADDR],
                &config,
            )?;
            tracing::debug!(worker = %link.worker_ns, cloud = %link.cloud_ns, ?config, "netem link up");
            return Ok(link);
        }
        for (name, addr) in [
            (link.worker_ns.clone(), WORKER_ADDR),
            (link.cloud_ns.clone(), CLOUD_ADDR),
        ] {
            ns::add(&name)?;
            link.tuns.push(ns::open_tun(&name, TUN_NAME)?);
            let cidr = format!("{addr}/24");
            ns::ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ns::ip(&["-n", &name, "addr", "add", &cidr, "dev", TUN_NAME])?;
            ns::ip(&[
                "-n",
                &name,
                "link",
                "set",
                TUN_NAME,
                "txqueuelen",
                "4096",
                "up",
            ])?;
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ ((pid as u64) << 32)
            ^ n;
        let fds = [link.tuns[0].as_raw_fd(), link.tuns[1].as_raw_fd()];
        for dir in 0..2 {
            let pump = pump::Pump {
                src: fds[dir],
                dst: fds[1 - dir],
                shape: link.shape.clone(),
                counters: link.counters[dir].clone(),
                stop: link.stop.clone(),
                bypass: link.bypass.clone(),
                seed: seed.rotate_left(17 * dir as u32 + 1),
            };
            let thread = std::thread::Builder::new()
                .name(format!("netem-{}", ["w2c", "c2w"][dir]))
                .spawn(move || pump.run())?;
            link.threads.push(thread);
        }
        tracing::debug!(worker = %link.worker_ns, cloud = %link.cloud_ns, ?config, "link up");
        Ok(link)
    }

    /// The configuration the link runs with.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The backend emulating this link.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Changes the delay, rate, loss, reordering and queue of a running link
    /// (packets already queued keep their times).
    pub fn reconfigure(&mut self, config: LinkConfig) -> Result<(), NetemError> {
        config.validate()?;
        match self.backend {
            Backend::Netem => tc::change(&self.worker_ns, &self.cloud_ns, &config)?,
            Backend::Userspace => self.shape.set(shape_of(&config)),
        }
        self.config = config;
        Ok(())
    }

    /// Name of the worker's namespace.
    pub fn worker_ns(&self) -> &str {
        &self.worker_ns
    }

    /// Name of the cloud's namespace.
    pub fn cloud_ns(&self) -> &str {
        &self.cloud_ns
    }

    /// Address of the worker end.
    pub fn worker_addr(&self) -> Ipv4Addr {
        WORKER_ADDR
    }

    /// Address of the cloud end.
    pub fn cloud_addr(&self) -> Ipv4Addr {
        CLOUD_ADDR
    }

    /// `ip netns exec WORKER program`: a command to run in the worker namespace.
    pub fn exec_in_worker(&self, program: &str) -> Command {
        exec_in(&self.worker_ns, program)
    }

    /// `ip netns exec CLOUD program`: a command to run in the cloud namespace.
    pub fn exec_in_cloud(&self, program: &str) -> Command {
        exec_in(&self.cloud_ns, program)
    }

    /// Runs `f` on a new thread inside the worker namespace.
    pub fn spawn_in_worker<F, T>(&self, f: F) -> std::io::Result<JoinHandle<std::io::Result<T>>>
    where
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        ns::spawn_in(&self.worker_ns, f)
    }

    /// Runs `f` on a new thread inside the cloud namespace.
    pub fn spawn_in_cloud<F, T>(&self, f: F) -> std::io::Result<JoinHandle<std::io::Result<T>>>
    where
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        ns::spawn_in(&self.cloud_ns, f)
    }

    /// While `on`, packets cross at once, unshaped (for untimed setup
    /// phases of a benchmark; packets already queued keep their times).
    pub fn set_bypass(&self, on: bool) {
        self.bypass.store(on, Ordering::Relaxed);
    }

    /// Counters of both directions so far.
    pub fn stats(&self) -> LinkStats {
        if self.backend == Backend::Netem {
            return LinkStats {
                worker_to_cloud: tc::direction_stats(&self.cloud_ns, &self.worker_ns),
                cloud_to_worker: tc::direction_stats(&self.worker_ns, &self.cloud_ns),
            };
        }
        let read = |c: &pump::Counters| DirectionStats {
            packets: c.packets.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            drops: c.drops.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
        };
        LinkStats {
            worker_to_cloud: read(&self.counters[0]),
            cloud_to_worker: read(&self.counters[1]),
        }
    }

    /// Stops the emulator and removes the TUN devices and namespaces.
    pub fn down(mut self) -> Result<LinkStats, NetemError> {
        let stats = self.stats();
        self.teardown()?;
        Ok(stats)
    }

    fn teardown(&mut self) -> Result<(), NetemError> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("link emulator thread panicked");
            }
        }
        // Closing the fds removes the (non-persistent) TUN devices.
        self.tuns.clear();
        let w = ns::del(&self.worker_ns);
        let c = ns::del(&self.cloud_ns);
        tracing::debug!(worker = %self.worker_ns, cloud = %self.cloud_ns, "link down");
        w.and(c)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "removing the emulated link");
        }
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialize and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and the threads it starts
/// afterwards, so that [`wait_for_signal`] receives them instead of the
/// process dying with its namespaces left behind. Call before [`Link::up`].
pub fn block_signals() -> Result<(), NetemError> {
    let set = signal_set();
    // SAFETY: a valid, initialized signal set.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r).into());
    }
    Ok(())
}

/// Waits for SIGINT, SIGTERM or SIGHUP (blocked by [`block_signals`]).
pub fn wait_for_signal() -> Result<i32, NetemError> {
    let set = signal_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: a valid signal set and a valid output location.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r).into());
    }
    Ok(sig)
}

/// Removes every namespace this process created (for an abrupt exit, when
/// the [`Link`]s cannot be dropped); returns their names.
pub fn remove_own() -> Result<Vec<String>, NetemError> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in ns::list()? {
        if owner_pid(&name) == Some(me) {
            ns::del(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Makes SIGINT, SIGTERM and SIGHUP remove this process's namespaces (see
/// [`remove_own`]) and exit with status 130. Call before starting threads:
/// it blocks the signals in the calling thread, and threads started
/// afterwards inherit that.
pub fn exit_on_signal() -> Result<(), NetemError> {
    block_signals()?;
    std::thread::Builder::new()
        .name("netem-signals".into())
        .spawn(|| {
            if let Ok(sig) = wait_for_signal() {
                tracing::warn!(signal = sig, "interrupted: removing the emulated links");
                if let Err(e) = remove_own() {
                    tracing::warn!(error = %e, "removing the emulated links");
                }
                std::process::exit(130);
            }
        })?;
    Ok(())
}

fn exec_in(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Parses a rate such as `100mbit`, `1gbit`, `500kbit`, `100M` or `1000000`
/// (bits per second).
pub fn parse_rate(text: &str) -> Result<u64, NetemError> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("bps")
        .or_else(|| t.strip_suffix("bit"))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| NetemError::Config(format!("bad rate {text:?}")))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(NetemError::Config(format!("bad rate {text:?}")));
    }
    Ok((value * mult).round() as u64)
}

/// Parses a duration such as `50ms`, `1.5s`, `200us` or `50` (milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, NetemError> {
    let t = text.trim();
    let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1e-3)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| NetemError::Config(format!("bad duration {text:?}")))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(NetemError::Config(format!("bad duration {text:?}")));
    }
    Ok(Duration::from_secs_f64(value * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_durations() {
        assert_eq!(parse_rate("100mbit").ok(), Some(100_000_000));
        assert_eq!(parse_rate("1gbit").ok(), Some(1_000_000_000));
        assert_eq!(parse_rate("2.5M").ok(), Some(2_500_000));
        assert_eq!(parse_rate("64000").ok(), Some(64_000));
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("50ms").ok(), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("150").ok(), Some(Duration::from_millis(150)));
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn reorder_and_backend_choices_are_checked() {
        let c = LinkConfig::new(Duration::from_millis(50), 100_000_000);
        assert!(LinkConfig { reorder: 1.0, ..c }.validate().is_err());
        assert!(LinkConfig { reorder: -0.1, ..c }.validate().is_err());
        assert!(LinkConfig { reorder: 0.01, ..c }.validate().is_ok());
        assert_eq!(
            "auto".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Auto)
        );
        assert_eq!(
            "userspace".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Userspace)
        );
        assert!("kernel".parse::<BackendChoice>().is_err());
        assert_eq!(
            BackendChoice::Userspace.resolve().ok(),
            Some(Backend::Userspace)
        );
        let s = shape_of(&LinkConfig {
            loss: 0.02,
            reorder: 0.01,
            ..c
        });
        assert_eq!(s.delay, Duration::from_millis(25));
        assert_eq!((s.loss, s.reorder, s.limit), (0.02, 0.01, c.queue_limit()));
    }

    #[test]
    fn queue_defaults_to_two_bdp_plus_slack_and_burst() {
        let c = LinkConfig::new(Duration::from_millis(50), 100_000_000);
        assert_eq!(c.bdp_bytes(), 625_000);
        assert_eq!(c.queue_limit(), 1_250_000 + QUEUE_SLACK + 62_500);
        assert!(LinkConfig { loss: 1.0, ..c }.validate().is_err());
    }

    #[test]
    fn recognizes_our_namespace_names() {
        assert_eq!(owner_pid("sl-123-0-w"), Some(123));
        assert_eq!(owner_pid("sl-123-7-c"), Some(123));
        assert_eq!(owner_pid("sl-123-7-x"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("sl-abc-0-w"), None);
    }
}
