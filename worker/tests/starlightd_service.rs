//! starlightd as a service: `starlightd run` sends `READY=1` to the
//! datagram socket named by `NOTIFY_SOCKET` once its snapshotter and API
//! sockets serve (both a path and an abstract name), answers the API, and
//! stops cleanly on SIGTERM; the shipped systemd unit passes
//! `systemd-analyze verify`, and the shipped containerd snippet points at
//! the default snapshotter socket.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starlight_worker::api::{call, Request, Response};

/// A `starlightd run` child, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("starlightd.toml");
    std::fs::write(
        &config,
        format!(
            "proxy = \"127.0.0.1:9\"\nca_file = \"{ca}\"\ntoken = \"t\"\nstate_dir = \"{state}\"\n\
             containerd_socket = \"{d}/no-containerd.sock\"\nnamespace = \"svc-test\"\n\
             snapshotter_socket = \"{d}/run/snapshotter.sock\"\napi_socket = \"{d}/run/api.sock\"\n",
            ca = dir.join("ca.pem").display(),
            state = dir.join("state").display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

fn start(config: &Path, notify: &str, log: &Path) -> Daemon {
    let log = std::fs::File::create(log).unwrap();
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("NOTIFY_SOCKET", notify)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits (bounded) for one datagram.
fn receive(sock: &UnixDatagram, log: &Path) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 256];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification within 30 s ({e}); starlightd's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[test]
fn run_notifies_systemd_serves_the_api_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let log = dir.path().join("starlightd.log");

    // A path socket.
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let started = Instant::now();
    let mut daemon = start(&config, path.to_str().unwrap(), &log);
    assert_eq!(receive(&sock, &log), "READY=1");
    println!("READY=1 after {:?}", started.elapsed());
    // Both sockets serve by then.
    assert!(dir.path().join("run/snapshotter.sock").exists());
    let api = dir.path().join("run/api.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let images = rt.block_on(call(&api, &Request::Images, |_| {})).unwrap();
    assert_eq!(images, Response::Images(vec![]));
    let refused = rt
        .block_on(call(
            &api,
            &Request::Remove {
                image: "nothing:here".into(),
                force: false,
            },
            |_| {},
        ))
        .unwrap();
    assert!(
        matches!(&refused, Response::Error(m) if m.contains("nothing:here")),
        "{refused:?}"
    );
    // A line that is not a request gets an error line back.
    {
        use std::io::{BufRead, Write};
        let mut conn = std::os::unix::net::UnixStream::connect(&api).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"{\"Pull\": 3}\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(conn).read_line(&mut line).unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert!(
            matches!(&resp, Response::Error(m) if m.starts_with("bad request")),
            "{resp:?}"
        );
    }
    // SIGTERM: STOPPING=1, exit 0, sockets gone.
    // SAFETY: kill with our child's pid and a valid signal.
    assert_eq!(
        unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) },
        0
    );
    assert_eq!(receive(&sock, &log), "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "starlightd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!api.exists());
    assert!(!dir.path().join("run/snapshotter.sock").exists());
    drop(daemon);

    // An abstract socket (how systemd names it: a leading '@').
    let name = format!("starlight-notify-test-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    let _daemon = start(&config, &format!("@{name}"), &log);
    assert_eq!(receive(&sock, &log), "READY=1");
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing (scripts/setup.sh installs systemd)");
    }
    let unit = include_str!("../dist/starlightd.service");
    for line in [
        "Type=notify",
        "KillMode=process",
        "ExecStart=/usr/local/bin/starlightd run",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // The fd store: systemd before 254 does not export $FDSTORE, so the
    // unit sets it, to the size it asks systemd for.
    let value = |prefix: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("the unit lacks {prefix}"))
            .to_owned()
    };
    let max = value("FileDescriptorStoreMax=");
    assert!(max.parse::<u32>().is_ok_and(|n| n > 0), "{max}");
    assert_eq!(value("Environment=FDSTORE="), max);
    // PID 1 is not systemd here and the binary is not installed: verify a
    // copy whose ExecStart names the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("starlightd.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/starlightd",
            env!("CARGO_BIN_EXE_starlightd"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    // Warnings about the unit itself (unknown keys, bad values) name it.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("starlightd.service"))
        .collect();
    assert!(about_unit.is_empty(), "verify complained:\n{stderr}");

    // A broken copy is caught (the check is not vacuous).
    std::fs::write(&copy, unit.replace("Type=notify", "Type=notifyy")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("starlightd.service"));
}

#[test]
fn the_containerd_snippet_names_the_default_snapshotter_socket() {
    let snippet: toml::Value =
        toml::from_str(include_str!("../dist/containerd-starlight.toml")).unwrap();
    let plugin = &snippet["proxy_plugins"]["starlight"];
    assert_eq!(plugin["type"].as_str(), Some("snapshot"));
    assert_eq!(
        plugin["address"].as_str(),
        Some(starlight_worker::config::DEFAULT_SNAPSHOTTER_SOCKET)
    );
}
