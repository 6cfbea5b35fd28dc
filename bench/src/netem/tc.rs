//! The kernel backend of the link emulator: a veth pair between the two
//! namespaces, shaped on each end's egress by `tc qdisc … netem` (delay,
//! rate, loss, reordering, and a `limit` sized like the userspace queue).
//! Used where the kernel has `sch_netem`; the command lines are built here
//! and covered by tests, and [`probe`] tells whether the kernel takes them.

use std::process::Command;
use std::sync::OnceLock;

use super::calibrate::MTU;
use super::{ns, DirectionStats, LinkConfig, NetemError, NS_PREFIX};

/// Name of the veth device in each namespace.
pub const VETH_NAME: &str = "sl0";

/// Packets netem holds at most for `config`: its queue limit in bytes
/// (delay line included, as in the userspace emulator) in full-size packets.
pub fn limit_packets(config: &LinkConfig) -> u64 {
    config.queue_limit().div_ceil(MTU).max(2)
}

fn percent(p: f64) -> String {
    let text = format!("{:.4}", p * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// `ip` arguments creating the veth pair, one end in each namespace.
pub fn veth_args(worker_ns: &str, cloud_ns: &str) -> Vec<String> {
    [
        "-n", worker_ns, "link", "add", "name", VETH_NAME, "type", "veth", "peer", "name",
        VETH_NAME, "netns", cloud_ns,
    ]
    .map(String::from)
    .to_vec()
}

/// `tc` arguments installing (`verb` = `replace`) or changing (`change`) the
/// netem qdisc of `dev` in namespace `ns` for one direction of `config`.
pub fn netem_args(ns: &str, dev: &str, verb: &str, config: &LinkConfig) -> Vec<String> {
    let mut a: Vec<String> = ["-n", ns, "qdisc", verb, "dev", dev, "root", "netem"]
        .map(String::from)
        .to_vec();
    a.push("limit".into());
    a.push(limit_packets(config).to_string());
    let one_way = config.rtt / 2;
    a.push("delay".into());
    a.push(format!("{}us", one_way.as_micros()));
    if config.reorder > 0.0 && !one_way.is_zero() {
        // netem sends this fraction of the packets without the delay.
        a.push("reorder".into());
        a.push(percent(config.reorder));
    }
    if config.rate_bps > 0 {
        a.push("rate".into());
        a.push(format!("{}bit", config.rate_bps));
    }
    if config.loss > 0.0 {
        a.push("loss".into());
        a.push("random".into());
        a.push(percent(config.loss));
    }
    a
}

fn run(program: &str, args: &[String]) -> Result<String, NetemError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetemError::Command(format!("{program} {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetemError::Command(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Creates the veth pair, addresses it and installs netem on both ends.
pub fn up(
    worker_ns: &str,
    cloud_ns: &str,
    addrs: [std::net::Ipv4Addr; 2],
    config: &LinkConfig,
) -> Result<(), NetemError> {
    run("ip", &veth_args(worker_ns, cloud_ns))?;
    for (ns, addr) in [(worker_ns, addrs[0]), (cloud_ns, addrs[1])] {
        ns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ns::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            VETH_NAME,
        ])?;
        ns::ip(&["-n", ns, "link", "set", VETH_NAME, "up"])?;
        run("tc", &netem_args(ns, VETH_NAME, "replace", config))?;
    }
    Ok(())
}

/// Changes the netem parameters of both ends.
pub fn change(worker_ns: &str, cloud_ns: &str, config: &LinkConfig) -> Result<(), NetemError> {
    for ns in [worker_ns, cloud_ns] {
        run("tc", &netem_args(ns, VETH_NAME, "change", config))?;
    }
    Ok(())
}

/// Counters of the direction that arrives at `ns`'s veth end (its rx) and of
/// the netem qdisc sending towards it from `peer_ns` (drops).
pub fn direction_stats(ns: &str, peer_ns: &str) -> DirectionStats {
    let link = run(
        "ip",
        &["-n", ns, "-s", "-j", "link", "show", "dev", VETH_NAME].map(String::from),
    )
    .ok();
    let qdisc = run(
        "tc",
        &["-n", peer_ns, "-s", "-j", "qdisc", "show", "dev", VETH_NAME].map(String::from),
    )
    .ok();
    parse_stats(link.as_deref(), qdisc.as_deref())
}

/// Reads `ip -s -j link` (rx packets and bytes) and `tc -s -j qdisc`
/// (drops, which for netem include its random loss) output.
pub fn parse_stats(link_json: Option<&str>, qdisc_json: Option<&str>) -> DirectionStats {
    let parse = |t: Option<&str>| t.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    let mut s = DirectionStats::default();
    if let Some(v) = parse(link_json) {
        let rx = &v[0]["stats64"]["rx"];
        s.packets = rx["packets"].as_u64().unwrap_or(0);
        s.bytes = rx["bytes"].as_u64().unwrap_or(0);
    }
    if let Some(v) = parse(qdisc_json) {
        s.drops = v
            .as_array()
            .map(|a| a.iter().filter_map(|q| q["drops"].as_u64()).sum())
            .unwrap_or(0);
    }
    s
}

/// Whether the kernel takes a netem qdisc (checked once per process, in a
/// scratch namespace): `Err` carries the reason it does not.
pub fn probe() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let name = format!("{NS_PREFIX}{}-{}-w", std::process::id(), u32::MAX);
            let attempt = (|| {
                ns::add(&name)?;
                run(
                    "ip",
                    &[
                        "-n", &name, "link", "add", "name", "p0", "type", "veth", "peer", "name",
                        "p1",
                    ]
                    .map(String::from),
                )?;
                let config = LinkConfig::new(std::time::Duration::from_millis(2), 1_000_000);
                run("tc", &netem_args(&name, "p0", "replace", &config)).map(|_| ())
            })();
            let _ = ns::del(&name);
            attempt.map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(a: &[String]) -> String {
        a.join(" ")
    }

    #[test]
    fn a_lossy_link_gets_delay_rate_loss_and_a_bdp_limit() {
        let c = LinkConfig {
            loss: 0.02,
            ..LinkConfig::new(Duration::from_millis(300), 100_000_000)
        };
        // Queue: 2 BDP (7.5 MB) + 64 KiB + 5 ms at the rate (62.5 kB).
        let limit = (7_500_000u64 + 65_536 + 62_500).div_ceil(1500);
        assert_eq!(limit_packets(&c), limit);
        assert_eq!(
            args(&netem_args("sl-1-0-c", "sl0", "replace", &c)),
            format!("-n sl-1-0-c qdisc replace dev sl0 root netem limit {limit} delay 150000us rate 100000000bit loss random 2%")
        );
    }

    #[test]
    fn half_a_percent_loss_and_reordering_are_written_exactly() {
        let c = LinkConfig {
            loss: 0.005,
            reorder: 0.01,
            ..LinkConfig::new(Duration::from_millis(50), 1_000_000_000)
        };
        let a = args(&netem_args("w", "sl0", "change", &c));
        assert!(
            a.starts_with("-n w qdisc change dev sl0 root netem limit "),
            "{a}"
        );
        assert!(
            a.ends_with("delay 25000us reorder 1% rate 1000000000bit loss random 0.5%"),
            "{a}"
        );
    }

    #[test]
    fn no_rate_no_loss_and_no_reordering_without_a_delay() {
        let c = LinkConfig {
            reorder: 0.05,
            ..LinkConfig::new(Duration::ZERO, 0)
        };
        let a = args(&netem_args("w", "sl0", "replace", &c));
        assert!(a.ends_with("delay 0us"), "{a}");
        // The unlimited rate keeps the userspace emulator's 64 MiB queue.
        assert_eq!(limit_packets(&c), (64u64 << 20).div_ceil(1500));
    }

    #[test]
    fn veth_pair_spans_both_namespaces() {
        assert_eq!(
            args(&veth_args("sl-1-0-w", "sl-1-0-c")),
            "-n sl-1-0-w link add name sl0 type veth peer name sl0 netns sl-1-0-c"
        );
    }

    #[test]
    fn stats_parse_from_ip_and_tc_json() {
        let link = r#"[{"ifname":"sl0","stats64":{"rx":{"bytes":1234,"packets":5},"tx":{"bytes":9,"packets":1}}}]"#;
        let qdisc = r#"[{"kind":"netem","handle":"8001:","bytes":100,"packets":2,"drops":7}]"#;
        let s = parse_stats(Some(link), Some(qdisc));
        assert_eq!((s.packets, s.bytes, s.drops), (5, 1234, 7));
        assert_eq!(
            parse_stats(Some("not json"), None),
            DirectionStats::default()
        );
    }
}
