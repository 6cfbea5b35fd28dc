//! End-to-end tests of the userspace link emulator: namespaces, TUN devices,
//! delay, pacing, loss and cleanup. They need root, `/dev/net/tun` and
//! `ip netns`; without them they print why and pass without checking.
//! They run one at a time (a lock) so that throughput is not shared.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use starlight_bench::netem::calibrate::{self, measure_rtt, measure_tcp, measure_udp};
use starlight_bench::netem::{self, Link, LinkConfig};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock, or returns None (after saying why) when the emulator cannot run here.
fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = netem::available() {
        panic!("cannot run (an ignored test, run as root with --include-ignored): {test}: {e}");
    }
    netem::cleanup_stale().unwrap();
    Some(guard)
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MBIT: u64 = 1_000_000;

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn rtt_and_tcp_match_the_configured_link() {
    let Some(_guard) = setup("rtt_and_tcp_match_the_configured_link") else {
        return;
    };
    let link = Link::up(LinkConfig::new(Duration::from_millis(50), 100 * MBIT)).unwrap();

    let rtt = measure_rtt(&link, 20, Duration::from_millis(10)).unwrap();
    assert_eq!(rtt.samples.len(), 20, "{rtt:?}");
    assert!(rtt.min() >= 0.050, "faster than the link: {rtt:?}");
    assert!(
        (rtt.median() - 0.050).abs() <= 0.0025,
        "median off by >5%: {rtt:?}"
    );

    let bytes = 20_000_000;
    let tcp = measure_tcp(&link, bytes, 0.3).unwrap();
    eprintln!("rtt median {:.3} ms, tcp {tcp:?}", rtt.median() * 1e3);
    let target = calibrate::tcp_target_bps(100 * MBIT);
    let ideal = bytes as f64 * 8.0 / target;
    // Never faster than the rate; slow start (~6 RTTs) and the loss
    // of its overshoot cost ~0.25 s (measured: 1.90 s for an ideal 1.66 s).
    assert!(
        tcp.seconds >= ideal * 0.98,
        "faster than the link: {tcp:?}, ideal {ideal}"
    );
    assert!(
        tcp.seconds <= ideal * 1.10 + 0.3,
        "too slow: {tcp:?}, ideal {ideal}"
    );
    assert!(
        (tcp.steady_bps - target).abs() <= target * 0.05,
        "steady goodput off by >5%: {tcp:?}"
    );
    let stats = link.down().unwrap();
    assert!(stats.cloud_to_worker.bytes >= bytes, "{stats:?}");
    assert!(stats.worker_to_cloud.packets > 0, "{stats:?}");
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn udp_is_paced_to_the_rate_and_excess_is_tail_dropped() {
    let Some(_guard) = setup("udp_is_paced_to_the_rate_and_excess_is_tail_dropped") else {
        return;
    };
    let link = Link::up(LinkConfig::new(Duration::from_millis(20), 50 * MBIT)).unwrap();
    let payload = calibrate::UDP_PAYLOAD;
    // 1.5 s at 1.3 times the rate.
    let offered = 65 * MBIT;
    let count = offered * 3 / 2 / (1500 * 8);
    let udp = measure_udp(&link, count, payload, offered).unwrap();
    let target = calibrate::udp_target_bps(50 * MBIT);
    assert!(
        (udp.goodput_bps - target).abs() <= target * 0.05,
        "goodput {} vs {target}: {udp:?}",
        udp.goodput_bps
    );
    let stats = link.down().unwrap();
    assert!(udp.received < udp.sent, "{udp:?}");
    assert!(stats.cloud_to_worker.drops > 0, "{stats:?}");
    assert_eq!(stats.cloud_to_worker.lost, 0, "{stats:?}");
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn loss_drops_about_the_configured_fraction() {
    let Some(_guard) = setup("loss_drops_about_the_configured_fraction") else {
        return;
    };
    let config = LinkConfig {
        loss: 0.1,
        ..LinkConfig::new(Duration::from_millis(10), 100 * MBIT)
    };
    let link = Link::up(config).unwrap();
    // Far below the rate, so the only drops are the random ones.
    let udp = measure_udp(&link, 2000, 200, 10 * MBIT).unwrap();
    let stats = link.down().unwrap();
    assert_eq!(udp.sent, 2000, "{udp:?}");
    // Expected 1800 received, standard deviation 13.4: +-110 is over 8 sigma.
    assert!((1690..=1910).contains(&udp.received), "{udp:?}");
    let lost = stats.cloud_to_worker.lost;
    // Every datagram that did not arrive was lost by the emulator (a stray
    // packet of the kernel's own may be lost too).
    assert!(
        (2000..2010).contains(&(lost + udp.received)),
        "{stats:?} {udp:?}"
    );
    assert_eq!(stats.cloud_to_worker.drops, 0, "{stats:?}");
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn drop_removes_namespaces_and_devices_even_on_panic() {
    let Some(_guard) = setup("drop_removes_namespaces_and_devices_even_on_panic") else {
        return;
    };
    let link = Link::up(LinkConfig::new(Duration::ZERO, 0)).unwrap();
    let (w, c) = (link.worker_ns().to_string(), link.cloud_ns().to_string());
    let listed = namespaces();
    assert!(listed.contains(&w) && listed.contains(&c), "{listed}");
    let out = link
        .exec_in_worker("ip")
        .args(["-4", "addr", "show", "dev", netem::TUN_NAME])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.77.0.1/24") && text.contains("UP"),
        "{text}"
    );
    let out = link
        .exec_in_cloud("ip")
        .args(["-4", "addr"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.2/24"));
    drop(link);
    let listed = namespaces();
    assert!(!listed.contains(&w) && !listed.contains(&c), "{listed}");

    let names = std::panic::catch_unwind(|| {
        let link = Link::up(LinkConfig::new(Duration::ZERO, 0)).unwrap();
        let names = (link.worker_ns().to_string(), link.cloud_ns().to_string());
        // resume_unwind unwinds without calling the panic hook (no noise in logs).
        std::panic::resume_unwind(Box::new(names));
    })
    .unwrap_err();
    let (w, c) = names.downcast_ref::<(String, String)>().unwrap();
    let listed = namespaces();
    assert!(
        !listed.contains(w.as_str()) && !listed.contains(c.as_str()),
        "{listed}"
    );
}

/// Deletes a namespace on drop, so a failed assertion leaves nothing behind.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn cleanup_stale_removes_only_dead_runs() {
    let Some(_guard) = setup("cleanup_stale_removes_only_dead_runs") else {
        return;
    };
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!netem::pid_alive(dead));
    let stale = NsGuard(format!("sl-{dead}-0-w"));
    let st = Command::new("ip")
        .args(["netns", "add", &stale.0])
        .status()
        .unwrap();
    assert!(st.success());
    let live = Link::up(LinkConfig::new(Duration::ZERO, 0)).unwrap();

    let removed = netem::cleanup_stale().unwrap();
    assert!(removed.contains(&stale.0), "{removed:?}");
    let listed = namespaces();
    assert!(!listed.contains(&stale.0), "{listed}");
    assert!(listed.contains(live.worker_ns()), "{listed}");
    live.down().unwrap();
}

#[test]
fn link_subcommands_are_listed() {
    let out = Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
        .args(["link", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["up", "down", "calibrate"] {
        assert!(text.contains(sub), "{text}");
    }
}

/// Kills and reaps a child on drop, then removes what it may have left.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = netem::cleanup_stale();
    }
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn link_up_holds_the_link_until_sigterm() {
    use std::io::BufRead;
    let Some(_guard) = setup("link_up_holds_the_link_until_sigterm") else {
        return;
    };
    let child = Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
        .args(["link", "up", "--rtt", "10ms", "--rate", "10mbit"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{line}");
    let (w, c) = (words[1].to_string(), words[4].to_string());
    let listed = namespaces();
    assert!(listed.contains(&w) && listed.contains(&c), "{listed}");

    // SAFETY: signals our own child, which is still running.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let stats = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(stats.contains("cloud_to_worker"), "{stats}");
    let listed = namespaces();
    assert!(!listed.contains(&w) && !listed.contains(&c), "{listed}");
}

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn interrupted_calibration_leaves_nothing_behind() {
    let Some(_guard) = setup("interrupted_calibration_leaves_nothing_behind") else {
        return;
    };
    let child = Command::new(env!("CARGO_BIN_EXE_starlight-bench"))
        .args(["link", "calibrate", "--rtt", "300", "--rate", "10mbit"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let ours = format!("sl-{}-", child.0.id());
    let (w, c) = (format!("{ours}0-w"), format!("{ours}0-c"));
    let start = std::time::Instant::now();
    while !(namespaces().contains(&w) && namespaces().contains(&c)) {
        assert!(start.elapsed() < Duration::from_secs(20), "no link came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it finish configuring the link and start measuring.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signals our own child, which is still running.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) }, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    let listed = namespaces();
    assert!(!listed.contains(&ours), "{listed}");
}
