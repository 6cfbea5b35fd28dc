//! Issue 14, item 4: the Prometheus endpoints of starlightd (the real
//! `starlightd run` binary, `--metrics-listen` through its environment) and of
//! the proxy (its collector over the in-process bundle server), scraped before,
//! during and after a pull from a real `docker-registry` through a paced proxy,
//! with a real containerd. The counters must move the way the pull went.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
mod harness;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;
use harness::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starlight_metrics::MetricsServer;
use starlight_proxy::metrics::ProxyCollector;

/// A free loopback port (bound then released).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` on `addr`: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of series `series` (name with labels, exactly as exposed) in a
/// scrape; 0 when absent (a labelled counter appears at its first increment).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    body
}

#[test]
#[ignore = "needs root: containerd, FUSE mounts"]
fn both_endpoints_count_a_pull_while_it_happens() {
    if let Some(why) = skip_reason() {
        panic!("this test needs root and /dev/fuse: {why}");
    }
    let world = World::new();
    // 1.5 MB/s: the 8 MB body takes several seconds, time to scrape in between.
    let proxy = world.proxy(Some(1_500_000));
    let (_, files) = images();
    let reference = push(&world.reg, "metrics/app", &files);

    let proxy_metrics = {
        let _guard = world.rt.enter();
        let source = proxy.server.as_ref().unwrap().stats_source();
        world
            .rt
            .block_on(MetricsServer::start(
                free_addr(),
                ProxyCollector::registry(proxy.handler.clone(), source),
                Arc::new(|| Ok(())),
            ))
            .unwrap()
    };
    let proxy_addr = proxy_metrics.local_addr();

    let worker_addr = free_addr();
    let mut setup = world.setup(world.dir.path().join("state"));
    let listen: &'static str = Box::leak(worker_addr.to_string().into_boxed_str());
    setup.env.push(("STARLIGHT_METRICS_LISTEN", listen));
    let daemon = setup.start(proxy.addr, "starlightd.log");
    // containerd's proxy plugin may still be in its reconnect backoff: a pull
    // now would fail to register (and count as failed).
    world.wait_for_snapshotter();

    for addr in [worker_addr, proxy_addr] {
        let (status, body) = get(addr, "/healthz");
        assert!(status.contains("200") && body == "ok\n", "{status} {body}");
        let (status, _) = get(addr, "/readyz");
        assert!(status.contains("200"), "{status}");
    }
    let w0 = scrape(worker_addr);
    let p0 = scrape(proxy_addr);
    assert_eq!(value(&w0, "starlight_time_to_header_seconds_count"), 0.0);
    assert_eq!(
        value(&p0, "starlight_proxy_bundles_total{outcome=\"completed\"}"),
        0.0
    );
    assert!(value(&w0, "starlight_store_bytes") >= 0.0);
    assert!(w0.contains("# TYPE starlight_store_bytes gauge"), "{w0}");

    // The pull answers once the image is registered; the body goes on.
    let report = daemon.pull(&world.rt, &reference, false);
    assert!(report.complete.is_none(), "{report:?}");
    assert_eq!(
        value(
            &scrape(worker_addr),
            "starlight_pulls_total{outcome=\"failed\"}"
        ),
        0.0
    );
    let mount = mount_of(find(&daemon.images(&world.rt), &reference));

    // During the body: header and ready observed, a bundle in flight.
    let w1 = scrape(worker_addr);
    let p1 = scrape(proxy_addr);
    assert_eq!(
        value(&w1, "starlight_time_to_header_seconds_count"),
        1.0,
        "{w1}"
    );
    assert_eq!(
        value(&w1, "starlight_time_to_ready_seconds_count"),
        1.0,
        "{w1}"
    );
    assert_eq!(
        value(&w1, "starlight_pulls_total{outcome=\"complete\"}"),
        0.0
    );
    assert_eq!(value(&p1, "starlight_proxy_bundles_active"), 1.0, "{p1}");
    assert!(
        value(&p1, "starlight_proxy_handshakes_total") >= 1.0,
        "{p1}"
    );
    assert!(
        value(
            &p1,
            "starlight_proxy_authentications_total{outcome=\"accepted\"}"
        ) >= 1.0,
        "{p1}"
    );
    assert!(
        value(&p1, "starlight_proxy_connections_open") >= 1.0,
        "{p1}"
    );

    // An open of a file still on its way parks until it arrives.
    let last = files.keys().rev().find(|p| p.contains("large")).unwrap();
    let t = Instant::now();
    let got = std::fs::read(mount.join(last)).unwrap();
    assert_eq!(&got, &files[last]);
    let blocked_for = t.elapsed();

    // Then the pull completes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !find(&daemon.images(&world.rt), &reference).complete {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pull is counted just after it is recorded complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    let w2 = loop {
        let w = scrape(worker_addr);
        if value(&w, "starlight_pulls_total{outcome=\"complete\"}") >= 1.0
            || Instant::now() > deadline
        {
            break w;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let p2 = scrape(proxy_addr);
    println!("blocked open took {blocked_for:?}\n--- worker\n{w2}\n--- proxy\n{p2}");

    assert_eq!(
        value(&w2, "starlight_pulls_total{outcome=\"complete\"}"),
        1.0,
        "{w2}"
    );
    let bytes = value(&w2, "starlight_bundle_bytes_total{outcome=\"complete\"}");
    let content: usize = files.values().map(Vec::len).sum();
    assert!(
        bytes > 0.0 && bytes < 2.0 * content as f64,
        "{bytes} {content}"
    );
    assert_eq!(value(&w2, "starlight_time_to_complete_seconds_count"), 1.0);
    assert!(value(&w2, "starlight_payloads_stored_total") >= files.len() as f64 - 1.0);
    // The file is the last payload of a paced bundle: its open waited.
    assert!(blocked_for > Duration::from_millis(200), "{blocked_for:?}");
    assert_eq!(
        value(&w2, "starlight_blocked_opens_total{outcome=\"ready\"}"),
        1.0,
        "{w2}"
    );
    let waited = value(&w2, "starlight_blocked_open_wait_seconds_sum");
    assert!(
        waited >= blocked_for.as_secs_f64() * 0.5,
        "{waited} {blocked_for:?}"
    );
    assert_eq!(
        value(&w2, "starlight_blocked_opens_total{outcome=\"failed\"}"),
        0.0
    );
    // The store's size is measured at most every 10 s: wait for a fresh one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while value(&scrape(worker_addr), "starlight_store_bytes") < content as f64 * 0.9 {
        assert!(
            Instant::now() < deadline,
            "store bytes never reached the image's size"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    assert_eq!(
        value(&p2, "starlight_proxy_bundles_total{outcome=\"completed\"}"),
        1.0,
        "{p2}"
    );
    assert_eq!(value(&p2, "starlight_proxy_bundles_active"), 0.0);
    assert!(value(&p2, "starlight_proxy_payload_bytes_total") > 0.0);
    assert!(
        value(&p2, "starlight_proxy_registry_range_requests_total") >= 1.0,
        "{p2}"
    );
    assert!(value(&p2, "starlight_proxy_registry_range_bytes_total") > 0.0);
    assert_eq!(value(&p2, "starlight_proxy_registry_errors_total"), 0.0);
    assert!(value(&p2, "starlight_proxy_plan_cache_misses_total") >= 1.0);
    drop(daemon);
}
