//! Issue 13's "link cut" acceptance, with real parts on loopback: a real
//! `docker-registry`, real `starlight-proxy serve` processes (paced with
//! `[serve] rate_limit` so a bundle takes seconds), the real `starlightd
//! run` binary registering into a private real containerd.
//!
//! For each cut point (10%, 50% and 90% of the image's content bytes
//! verified by starlightd), the link is cut, then restored, in three ways:
//! the proxy process is stopped for 5 s (SIGSTOP, then SIGCONT: the QUIC
//! connection may survive, its dead-proxy time being 5 s too), stopped for
//! 8 s (the stream surely breaks), or killed (SIGKILL) and a new one
//! started on the same address after 5 s. At the cut a plain
//! reader process opens the image's last file (still missing) through the
//! FUSE mount. Checked: the pull completes with no command; the record is
//! complete and every file reads back through the mount with its SHA-256;
//! the reader blocked over the cut and got the right bytes (no EIO); the
//! bytes sent again stay within what was in flight at the cut, from the
//! worker's counters and the proxy's (`ServeStats::payload_bytes`, logged
//! when it stops). The numbers are printed.
//!
//! A second test pulls an image whose receive gave up (proxy gone longer
//! than the grace time): `starlight pull --wait` names the contents already
//! present as held and only the rest is sent.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::layout::OciLayout;
use common::registry::TestRegistry;
use serve_support::{noise, starlight_layer};
use sha2::{Digest as _, Sha256};
use starlight_proxy::format::Compression;
use starlight_worker::api::{call, ImageInfo, PullReport, Request, Response};
use support::containerd::{is_root, unique_name, Containerd};

/// Seconds without progress before a receive gives up (the cut is 5 s or
/// 8 s, noticed after the 5 s dead-proxy time: within).
const GRACE_SECS: u64 = 15;
/// How long the link stays cut.
const CUT: Duration = Duration::from_secs(5);
/// A cut longer than the dead-proxy time (5 s): the stream surely breaks.
const LONG_CUT: Duration = Duration::from_secs(8);
/// The proxy's pace: the ~13 MiB bundle takes about 3.5 s.
const RATE: &str = "32mbit";

// ---------------------------------------------------------------------------
// The image.

/// Files of one image: path and bytes (the last one big and last in the body).
fn image_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| (format!("data/f{i:02}"), noise(seed + i, 512 << 10)))
        .collect();
    files.push(("data/zz-last".into(), noise(seed + 100, 1 << 20)));
    files
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, "data/", &[][..]).unwrap();
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn push(reg: &TestRegistry, repo: &str, tag: &str, files: &[(String, Vec<u8>)]) -> String {
    let layer = starlight_layer(&tar_of(files), Compression::Gzip);
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/data/f00"]);
    layout.tag(tag, &desc);
    let reference = format!("{}/{repo}:{tag}", reg.addr);
    layout.push(tag, &reference, false);
    reference
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------
// A real `starlight-proxy serve` process.

fn proxy_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_starlightd")).with_file_name("starlight-proxy");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p starlight-proxy)",
        p.display()
    );
    p
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill with our own child's pid and a valid signal.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// A `starlight-proxy serve` child; SIGKILL on drop.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    /// Starts a proxy on `listen` with its database and certificate in
    /// `dir` (kept across processes: a restarted proxy has the same CA).
    fn start(reg: &TestRegistry, dir: &Path, listen: &str, n: usize) -> ProxyProcess {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "db = \"{}\"\n[registry]\nurl = \"{}\"\nplain_http = true\n[serve]\nlisten = \"{listen}\"\ntokens = [\"{}\"]\nrate_limit = \"{RATE}\"\n",
                dir.join("db").display(),
                reg.addr,
                serve_support::TOKEN
            ),
        )
        .unwrap();
        let log = dir.join(format!("proxy-{n}.log"));
        let mut child = Command::new(proxy_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--self-signed")
            .arg(dir.join("certs"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("starlight-proxy said {line:?}"))
            .parse()
            .unwrap();
        ProxyProcess { child, addr, log }
    }

    fn ca(dir: &Path) -> PathBuf {
        dir.join("certs/cert.pem")
    }

    /// SIGKILL: no goodbye to its clients, no stats.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its `payload_bytes` counter from the "stopped" line.
    fn stop(mut self) -> u64 {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        let log = std::fs::read_to_string(&self.log).unwrap();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("stopped") && l.contains("payload_bytes="))
            .unwrap_or_else(|| panic!("no stats in the proxy's log:\n{log}"));
        let value = line.split("payload_bytes=").nth(1).unwrap();
        value
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process cannot die of SIGKILL's cleanup otherwise.
        signal(&self.child, libc::SIGCONT);
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// starlightd.

/// A running `starlightd run`; SIGTERM (then SIGKILL) on drop, and every
/// mount left below its state directory is detached.
struct Daemon {
    child: Child,
    state: PathBuf,
    api: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, ca: &Path, proxy: SocketAddr, ctrd: &Containerd, grace: u64) -> Daemon {
        let config = dir.join("starlightd.toml");
        std::fs::write(
            &config,
            format!(
                "proxy = \"{proxy}\"\nca_file = \"{}\"\ntoken = \"{}\"\nstate_dir = \"{}\"\n\
                 grace_secs = {grace}\nreconnect_initial_ms = 200\nreconnect_max_ms = 2000\n\
                 containerd_socket = \"{}\"\nnamespace = \"{}\"\n\
                 snapshotter_socket = \"{}\"\napi_socket = \"{}\"\n",
                ca.display(),
                serve_support::TOKEN,
                dir.join("state").display(),
                ctrd.socket.display(),
                ctrd.namespace,
                dir.join("run/snapshotter.sock").display(),
                dir.join("run/api.sock").display(),
            ),
        )
        .unwrap();
        let notify_path = dir.join(format!("notify-{}.sock", unique_name("n")));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let log = dir.join("starlightd.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info,polyfuse=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            state: dir.join("state"),
            api: dir.join("run/api.sock"),
            log,
        };
        let mut buf = [0u8; 64];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", d.log_text()));
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&notify_path);
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(api: &Path, req: Request) -> Response {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), call(api, &req, |_| {})).await
        })
        .expect("API call timed out")
        .unwrap()
    }

    /// `pull --wait` on another thread.
    fn pull_in_background(&self, image: &str) -> std::thread::JoinHandle<Response> {
        let (api, image) = (self.api.clone(), image.to_string());
        std::thread::spawn(move || {
            Daemon::call(
                &api,
                Request::Pull {
                    image,
                    from: vec![],
                    wait: true,
                    trace: false,
                    unordered: false,
                },
            )
        })
    }

    fn image(&self, digest_or_name: &str) -> Option<ImageInfo> {
        match Daemon::call(&self.api, Request::Images) {
            Response::Images(i) => i
                .into_iter()
                .find(|i| i.name == digest_or_name || i.digest == digest_or_name),
            other => panic!("images: {other:?}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.state);
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

fn containerd(dir: &Path) -> Containerd {
    let mut ctrd = Containerd::start_with(&format!(
        "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        dir.join("run/snapshotter.sock").display()
    ));
    ctrd.namespace = unique_name("resume");
    ctrd
}

// ---------------------------------------------------------------------------
// The checks.

/// Every file of `files` read through the mount has its SHA-256.
fn check_files(mountpoint: &str, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        let got = std::fs::read(Path::new(mountpoint).join(path))
            .unwrap_or_else(|e| panic!("reading {path} through the mount: {e}"));
        assert_eq!(hex_sha(&got), hex_sha(data), "{path} read back wrong");
    }
}

/// A reader process (`sha256sum`) blocked on a file's open.
struct Reader {
    child: Child,
    started: Instant,
}

impl Reader {
    fn start(path: &Path) -> Reader {
        Reader {
            child: Command::new("sha256sum")
                .arg(path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            started: Instant::now(),
        }
    }

    /// Waits (bounded) and returns the hash it printed and how long it took.
    fn finish(self) -> (String, Duration) {
        let (tx, rx) = mpsc::channel();
        let child = self.child;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the reader hangs")
            .unwrap();
        let took = self.started.elapsed();
        assert!(
            out.status.success(),
            "the reader failed after {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        (text.split_whitespace().next().unwrap().to_string(), took)
    }
}

/// How the link is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// SIGSTOP of the proxy for [`CUT`], then SIGCONT (the connection may
    /// outlive the cut: the dead-proxy time is 5 s too).
    Stop,
    /// SIGSTOP for [`LONG_CUT`], past the dead-proxy time: the same proxy
    /// process serves the resumed stream, its counter covers both.
    LongStop,
    /// SIGKILL of the proxy, a new one on the same address after [`CUT`].
    Restart,
}

impl Cut {
    fn duration(self) -> Duration {
        match self {
            Cut::LongStop => LONG_CUT,
            _ => CUT,
        }
    }
}

/// What one cut measured.
struct Measured {
    cut: Cut,
    percent: u64,
    at_cut_held: u64,
    report: PullReport,
    proxy_sent: u64,
    reader: Duration,
}

/// Pulls `image`, cuts the link once `percent`% of its content bytes are
/// verified, restores it after [`CUT`], and checks everything.
#[allow(clippy::too_many_arguments)]
fn cut_once(
    reg: &TestRegistry,
    proxy_dir: &Path,
    proxy: &mut Option<ProxyProcess>,
    n: &mut usize,
    daemon: &Daemon,
    image: &str,
    files: &[(String, Vec<u8>)],
    percent: u64,
    cut: Cut,
) -> Measured {
    let content_total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let pulling = daemon.pull_in_background(image);
    // Wait for the cut point (bytes verified by starlightd).
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        assert!(
            Instant::now() < deadline,
            "the pull never reached {percent}%"
        );
        if let Some(i) = daemon.image(image) {
            if i.bytes * 100 >= content_total * percent {
                break i;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let addr = proxy.as_ref().unwrap().addr;
    match cut {
        Cut::Stop | Cut::LongStop => signal(&proxy.as_ref().unwrap().child, libc::SIGSTOP),
        Cut::Restart => proxy.as_mut().unwrap().kill(),
    }
    let t_cut = Instant::now();
    assert!(
        !info.complete,
        "the image completed before the {percent}% cut"
    );
    // A reader of the last file, still missing: it blocks over the cut.
    let last = files.last().unwrap();
    let reader = Reader::start(&Path::new(&info.mountpoint).join(&last.0));
    std::thread::sleep(cut.duration().saturating_sub(t_cut.elapsed()));
    // Proxy counters over this pull: the stopped one's, or the restarted one's
    // (the killed one's died with it).
    match cut {
        Cut::Stop | Cut::LongStop => signal(&proxy.as_ref().unwrap().child, libc::SIGCONT),
        Cut::Restart => {
            *n += 1;
            *proxy = Some(ProxyProcess::start(reg, proxy_dir, &addr.to_string(), *n));
        }
    }
    let (reader_sha, reader_took) = reader.finish();
    assert_eq!(reader_sha, hex_sha(&last.1), "the reader got wrong bytes");
    assert!(
        reader_took >= cut.duration() - Duration::from_millis(500),
        "the reader did not block over the cut ({reader_took:?})"
    );
    let report = match pulling.join().unwrap() {
        Response::Pulled(r) => r,
        other => panic!("pull: {other:?}\n{}", daemon.log_text()),
    };
    assert_eq!(
        report.complete,
        Some(true),
        "the pull did not complete: {report:?}\n{}",
        daemon.log_text()
    );
    let info = daemon.image(image).unwrap();
    assert!(info.complete, "the record is not complete: {info:?}");
    assert_eq!(info.contents_held, info.contents);
    check_files(&info.mountpoint, files);
    // A fresh proxy for the next pull, its counter read from this one.
    let proxy_sent = proxy.take().unwrap().stop();
    *n += 1;
    *proxy = Some(ProxyProcess::start(reg, proxy_dir, &addr.to_string(), *n));
    Measured {
        cut,
        percent,
        at_cut_held: info_bytes_at_cut(&info, content_total, percent),
        report,
        proxy_sent,
        reader: reader_took,
    }
}

fn info_bytes_at_cut(_info: &ImageInfo, total: u64, percent: u64) -> u64 {
    total * percent / 100
}

/// Checks and prints the resend numbers of one cut.
fn account(m: &Measured) {
    let r = &m.report;
    let attempts = r.attempts.as_deref().unwrap();
    let total = r.payload_bytes;
    let received = r.payload_bytes_received.unwrap();
    let worker_resent = received.saturating_sub(total);
    let first = &attempts[0];
    // In flight at the cut, as the worker saw it: payload bytes received on
    // the broken stream but not part of a payload it verified.
    let in_flight_worker = first.payload_bytes - first.payload_bytes_stored;
    // From the proxy: it sends every payload not verified before the cut
    // (no held_payloads: it would also resend everything verified).
    let not_verified = total - first.payload_bytes_stored;
    let proxy_resent = m.proxy_sent.saturating_sub(match m.cut {
        Cut::Stop | Cut::LongStop => total,
        Cut::Restart => not_verified,
    });
    println!(
        "cut {:?} at {:>2}% (~{} content bytes verified): streams {}, payload bytes {} of bundle {}; \
         worker: received {} (resent {}, in flight at the cut {}); proxy: sent {} ({}), resent {} \
         (bound: payloads not verified at the cut {}); reader blocked {:.2} s",
        m.cut,
        m.percent,
        m.at_cut_held,
        attempts.len(),
        received,
        total,
        received,
        worker_resent,
        in_flight_worker,
        m.proxy_sent,
        match m.cut {
            Cut::Stop | Cut::LongStop => "over the whole pull",
            Cut::Restart => "by the restarted proxy",
        },
        proxy_resent,
        not_verified,
        m.reader.as_secs_f64()
    );
    for (i, a) in attempts.iter().enumerate() {
        println!(
            "    stream {}: announced {}, stored {} ({} bytes), payload bytes {}, wire {}, error {:?}",
            i + 1,
            a.payloads_announced,
            a.payloads_stored,
            a.payload_bytes_stored,
            a.payload_bytes,
            a.bytes_received,
            a.error
        );
    }
    if matches!(m.cut, Cut::Restart | Cut::LongStop) {
        assert!(attempts.len() >= 2, "{:?} must make a new stream", m.cut);
    }
    if attempts.len() >= 2 {
        // The resumed stream carried only what was not verified before.
        let resumed: u64 = attempts[1..].iter().map(|a| a.payload_bytes).sum();
        assert!(
            resumed <= not_verified,
            "the resumed streams carried {resumed} > {not_verified} not verified"
        );
    }
    assert!(
        worker_resent <= in_flight_worker,
        "worker: resent {worker_resent} > in flight {in_flight_worker}"
    );
    assert!(
        proxy_resent <= not_verified,
        "proxy: resent {proxy_resent} > not verified at the cut {not_verified}"
    );
}

/// The tests of this file run one at a time (they time things).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "needs root: containerd, FUSE mounts, real proxy processes"]
fn link_cut_at_10_50_90_percent_resumes_with_no_command() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(is_root(), "needs root");
    let reg = TestRegistry::start();
    let dir = tempfile::Builder::new()
        .prefix("starlight-resume-e2e.")
        .tempdir()
        .unwrap();
    let proxy_dir = dir.path().join("proxy");
    let mut n = 0;
    let mut proxy = Some(ProxyProcess::start(&reg, &proxy_dir, "127.0.0.1:0", n));
    let ctrd = containerd(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &ProxyProcess::ca(&proxy_dir),
        proxy.as_ref().unwrap().addr,
        &ctrd,
        GRACE_SECS,
    );
    let mut measured = Vec::new();
    let mut seed = 1000;
    for cut in [Cut::Stop, Cut::LongStop, Cut::Restart] {
        for percent in [10, 50, 90] {
            seed += 1000;
            let files = image_files(seed);
            let image = push(&reg, "resume/app", &format!("s{seed}"), &files);
            let m = cut_once(
                &reg, &proxy_dir, &mut proxy, &mut n, &daemon, &image, &files, percent, cut,
            );
            account(&m);
            measured.push(m);
        }
    }
    let log = daemon.log_text();
    assert!(
        log.contains("bundle resumed"),
        "no resume in the log:\n{log}"
    );
    assert!(!log.contains("waiting opens get EIO"), "{log}");
}

#[test]
#[ignore = "needs root: containerd, FUSE mounts, real proxy processes"]
fn a_partly_present_image_is_pulled_with_its_contents_held() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(is_root(), "needs root");
    let cli = Path::new(env!("CARGO_BIN_EXE_starlightd")).with_file_name("starlight");
    assert!(cli.is_file(), "{} is missing", cli.display());
    let reg = TestRegistry::start();
    let dir = tempfile::Builder::new()
        .prefix("starlight-resume-held.")
        .tempdir()
        .unwrap();
    let proxy_dir = dir.path().join("proxy");
    let mut proxy = ProxyProcess::start(&reg, &proxy_dir, "127.0.0.1:0", 0);
    let addr = proxy.addr;
    let ctrd = containerd(dir.path());
    // A short grace: the receive gives up while the proxy is gone (after
    // the 5 s dead-proxy time, so its connection is known dead by then).
    let daemon = Daemon::start(dir.path(), &ProxyProcess::ca(&proxy_dir), addr, &ctrd, 6);
    let files = image_files(77);
    let image = push(&reg, "resume/held", "v1", &files);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let pulling = daemon.pull_in_background(&image);
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.image(&image).is_none_or(|i| i.bytes * 2 < total) {
        assert!(Instant::now() < deadline, "the pull never reached 50%");
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.kill();
    let Response::Pulled(first) = pulling.join().unwrap() else {
        panic!("pull failed")
    };
    assert_eq!(first.complete, Some(false), "{first:?}");
    let partial = daemon.image(&image).unwrap();
    assert!(
        !partial.complete && partial.contents_held > 0,
        "{partial:?}"
    );
    println!(
        "gave up with {} of {} contents ({} bytes)",
        partial.contents_held, partial.contents, partial.bytes
    );
    let proxy = ProxyProcess::start(&reg, &proxy_dir, &addr.to_string(), 1);
    let out = Command::new(&cli)
        .args(["pull", "--wait", "--api"])
        .arg(dir.path().join("run/api.sock"))
        .arg(&image)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    assert!(
        stdout.contains(&format!(
            "{} contents already held were not sent again",
            partial.contents_held
        )),
        "{stdout}"
    );
    let sent = proxy.stop();
    let info = daemon.image(&image).unwrap();
    assert!(info.complete, "{info:?}");
    check_files(&info.mountpoint, &files);
    // Only the missing contents travelled: the bundle announced only them,
    // and the proxy's counter is about their size (gzip of this noise adds
    // a few percent), nowhere near the whole image.
    let missing = total - partial.bytes;
    println!("the proxy sent {sent} payload bytes for {missing} missing content bytes of {total}");
    assert!(
        stdout.contains(&format!(
            "; {} payloads (",
            partial.contents - partial.contents_held
        )),
        "{stdout}"
    );
    assert!(
        sent <= missing + missing / 10,
        "sent {sent} for {missing} missing"
    );
}
