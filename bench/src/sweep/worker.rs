//! One fresh worker per run: a private containerd (own root, state, socket
//! and containerd namespace) and, for the Starlight methods, a starlightd
//! with its own state (for eStargz, the stargz snapshotter), all in the
//! worker's network namespace. Dropping it
//! kills what it started, unmounts what is mounted below its directory and
//! removes its files.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::{run_bounded, Daemon, Place};

/// How starlightd reaches the proxy.
#[derive(Debug, Clone)]
pub struct ProxyAccess {
    /// QUIC `HOST:PORT`.
    pub addr: String,
    /// Name the proxy certificate is valid for.
    pub server_name: String,
    /// CA (self-signed certificate) file.
    pub ca_file: PathBuf,
    /// Bearer token.
    pub token: String,
}

/// Paths of the binaries a worker runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `starlightd`.
    pub starlightd: PathBuf,
    /// `starlight` (CLI: pull, fetch).
    pub starlight: PathBuf,
}

/// The eStargz snapshotter of a worker.
#[derive(Debug, Clone)]
pub struct StargzSetup {
    /// `containerd-stargz-grpc` (bench/estargz/build.sh).
    pub daemon: PathBuf,
    /// The registry (`HOST:PORT`) it reads layers from, over plain HTTP.
    pub registry: String,
}

/// What a worker runs besides containerd.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerOptions<'a> {
    /// starlightd, talking to this proxy.
    pub proxy: Option<&'a ProxyAccess>,
    /// starlightd records and uploads traces of real starts, each lasting
    /// this many seconds (`[traces] window_secs`); `None`: switched off.
    pub trace_window_secs: Option<u64>,
    /// The stargz snapshotter.
    pub stargz: Option<&'a StargzSetup>,
    /// starlightd's `max_store_bytes` (default: unbounded).
    pub max_store_bytes: Option<u64>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running worker.
pub struct Worker {
    place: Place,
    dir: tempfile::TempDir,
    /// containerd's socket.
    pub socket: PathBuf,
    /// containerd namespace of this worker.
    pub namespace: String,
    /// starlightd's API socket (Starlight workers only).
    pub api_socket: Option<PathBuf>,
    /// starlightd's configuration file (Starlight workers only).
    pub starlightd_config: Option<PathBuf>,
    /// starlightd's metrics address inside the worker's namespace.
    metrics_addr: Option<String>,
    starlightd: Option<Daemon>,
    stargz: Option<Daemon>,
    containerd: Option<Daemon>,
    containers: Vec<RunningContainer>,
}

/// A container started with `ctr run`, its stdout being read.
pub struct RunningContainer {
    /// Container id.
    pub id: String,
    child: Child,
}

impl Worker {
    /// Starts containerd (and what `opts` asks for) in `place`, under a
    /// new directory in `base`.
    pub fn start(
        place: &Place,
        base: &Path,
        bins: &Binaries,
        opts: WorkerOptions<'_>,
    ) -> Result<Self> {
        let proxy = opts.proxy;
        fs::create_dir_all(base)?;
        let dir = tempfile::Builder::new()
            .prefix("worker.")
            .tempdir_in(base)
            .context("creating the worker directory")?;
        let socket = dir.path().join("containerd.sock");
        let snap_socket = dir.path().join("starlight-snapshotter.sock");
        let api_socket = dir.path().join("starlight-api.sock");
        let namespace = unique("bench");
        let mut worker = Worker {
            place: place.clone(),
            socket: socket.clone(),
            namespace: namespace.clone(),
            api_socket: proxy.map(|_| api_socket.clone()),
            starlightd_config: None,
            metrics_addr: None,
            dir,
            starlightd: None,
            stargz: None,
            containerd: None,
            containers: Vec::new(),
        };
        let d = worker.dir.path();
        let mut plugin = if proxy.is_some() {
            format!(
                "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                snap_socket.display()
            )
        } else {
            String::new()
        };
        let stargz_socket = d.join("stargz.sock");
        if opts.stargz.is_some() {
            plugin.push_str(&format!(
                "\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                stargz_socket.display()
            ));
        }
        let config = d.join("containerd.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
{plugin}"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                socket = socket.display(),
                opt = d.join("opt").display(),
            ),
        )?;
        // starlightd first: containerd dials its proxy snapshotter at start and
        // backs off after a refused connection, failing the first pulls.
        if let Some(stargz) = opts.stargz {
            worker.stargz = Some(start_stargz(place, stargz, d, &stargz_socket)?);
        }
        if let Some(proxy) = proxy {
            let state_dir = d.join("starlight");
            let sl_config = d.join("starlightd.toml");
            let metrics_addr = format!(
                "127.0.0.1:{}",
                20000 + NEXT.fetch_add(1, Ordering::Relaxed) % 20000
            );
            let traces = match opts.trace_window_secs {
                Some(w) => format!(
                    "[traces]\nenabled = true\nwindow_secs = {w}\nupload_interval_ms = 100\n"
                ),
                None => "[traces]\nenabled = false\n".to_string(),
            };
            let bound = opts
                .max_store_bytes
                .map(|b| format!("max_store_bytes = {b}\n"))
                .unwrap_or_default();
            fs::write(
                &sl_config,
                format!(
                    "proxy = \"{}\"\nserver_name = \"{}\"\nca_file = \"{}\"\ntoken = \"{}\"\nstate_dir = \"{}\"\ncontainerd_socket = \"{}\"\nnamespace = \"{namespace}\"\nsnapshotter_socket = \"{}\"\napi_socket = \"{}\"\nmetrics_listen = \"{metrics_addr}\"\n{bound}{traces}",
                    proxy.addr,
                    proxy.server_name,
                    proxy.ca_file.display(),
                    proxy.token,
                    state_dir.display(),
                    socket.display(),
                    snap_socket.display(),
                    api_socket.display(),
                ),
            )?;
            worker.starlightd_config = Some(sl_config.clone());
            worker.metrics_addr = Some(metrics_addr);
            let notify_path = d.join("notify.sock");
            let notify = UnixDatagram::bind(&notify_path).context("binding NOTIFY_SOCKET")?;
            notify.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut cmd = place.command(&bins.starlightd);
            cmd.arg("run")
                .arg("--config")
                .arg(&sl_config)
                .env("NOTIFY_SOCKET", &notify_path)
                .env(
                    "RUST_LOG",
                    std::env::var("STARLIGHTD_LOG").unwrap_or_else(|_| "info".into()),
                );
            let mut daemon = Daemon::spawn("starlightd", cmd, &d.join("starlightd.log"))?;
            let mut buf = [0u8; 512];
            daemon.wait_until(Duration::from_secs(30), || match notify.recv(&mut buf) {
                Ok(n) => String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l.trim() == "READY=1"),
                Err(_) => false,
            })?;
            worker.starlightd = Some(daemon);
        }

        let mut cmd = place.command("containerd");
        cmd.arg("--config").arg(&config);
        let mut containerd = Daemon::spawn("containerd", cmd, &d.join("containerd.log"))?;
        let probe_socket = socket.clone();
        containerd.wait_until(Duration::from_secs(30), || {
            probe_socket.exists()
                && Command::new("ctr")
                    .arg("--address")
                    .arg(&probe_socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        })?;
        worker.containerd = Some(containerd);

        Ok(worker)
    }

    /// The ids of the containers [`Worker::run_until_ready`] started.
    pub fn container_ids(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.id.clone()).collect()
    }

    /// Process ids of the daemons (containerd, then starlightd or the
    /// stargz snapshotter if any).
    pub fn daemon_pids(&self) -> Vec<u32> {
        self.containerd
            .iter()
            .chain(self.starlightd.iter())
            .chain(self.stargz.iter())
            .map(Daemon::pid)
            .collect()
    }

    /// The worker's place (network namespace).
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// The worker's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// starlightd's Prometheus metrics text, read from inside the worker's
    /// namespace.
    pub fn metrics(&self) -> Result<String> {
        let addr = self.metrics_addr.as_ref().context("no starlightd")?;
        let mut cmd = self.place.command("curl");
        cmd.args(["-sf", "--max-time", "5"])
            .arg(format!("http://{addr}/metrics"));
        run_bounded(&mut cmd, Duration::from_secs(10)).context("scraping starlightd's metrics")
    }

    /// A `ctr` command for this worker (in its network namespace).
    pub fn ctr(&self) -> Command {
        let mut cmd = self.place.command("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// Runs `ctr ARGS`, bounded.
    pub fn ctr_ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = self.ctr();
        cmd.args(args);
        run_bounded(&mut cmd, timeout).map_err(|e| {
            let log = self
                .containerd
                .as_ref()
                .map(Daemon::log_tail)
                .unwrap_or_default();
            e.context(format!("containerd log tail:\n{log}"))
        })
    }

    /// `starlight pull` through this worker's starlightd.
    pub fn starlight_pull(
        &self,
        bins: &Binaries,
        image: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.starlight_cli(bins, &["pull"], image, timeout)
    }

    /// Runs `starlight SUBCOMMAND --api <this worker's socket> ... IMAGE`,
    /// bounded by `timeout`; a failure carries starlightd's log tail.
    fn starlight_cli(
        &self,
        bins: &Binaries,
        subcommand: &[&str],
        image: &str,
        timeout: Duration,
    ) -> Result<String> {
        let api = self
            .api_socket
            .as_ref()
            .context("this worker has no starlightd")?;
        let mut cmd = self.place.command(&bins.starlight);
        cmd.args(&subcommand[..1])
            .arg("--api")
            .arg(api)
            .args(&subcommand[1..])
            .arg(image);
        run_bounded(&mut cmd, timeout).map_err(|e| {
            let log = self
                .starlightd
                .as_ref()
                .map(Daemon::log_tail)
                .unwrap_or_default();
            e.context(format!("starlightd log tail:\n{log}"))
        })
    }

    /// `starlight rpull` into this worker's containerd (its namespace, the
    /// `starlight` snapshotter, the registry over plain HTTP): the
    /// containerd-native pull through starlightd's remote snapshots.
    pub fn starlight_rpull(
        &self,
        bins: &Binaries,
        image: &str,
        timeout: Duration,
    ) -> Result<String> {
        let namespace = self.namespace.clone();
        self.starlight_cli(
            bins,
            &["rpull", "--namespace", &namespace, "--plain-http"],
            image,
            timeout,
        )
    }

    /// Starts `ctr run` of `image` (host network of the worker namespace)
    /// and waits until a stdout line equals `ready`, at most `timeout`.
    /// The container keeps running (stopped by [`Worker::stop_containers`]).
    pub fn run_until_ready(
        &mut self,
        image: &str,
        snapshotter: Option<&str>,
        ready: &str,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<()> {
        let id = unique("c");
        let mut cmd = self.ctr();
        cmd.arg("run").arg("--rm").arg("--net-host");
        if let Some(s) = snapshotter {
            cmd.arg("--snapshotter").arg(s);
        }
        cmd.arg(image).arg(&id);
        let log_path = self.dir.path().join(format!("{id}.stderr"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log_path)?)
            .spawn()
            .context("starting ctr run")?;
        let stdout = child.stdout.take().context("ctr run stdout")?;
        self.containers.push(RunningContainer {
            id: id.clone(),
            child,
        });
        let (tx, rx) = mpsc::channel();
        let want = ready.to_string();
        std::thread::spawn(move || {
            let mut found = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !found && line.trim() == want {
                    found = true;
                    let _ = tx.send(true);
                }
            }
            if !found {
                let _ = tx.send(false);
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    let err = fs::read_to_string(&log_path).unwrap_or_default();
                    bail!(
                        "container {id} exited before printing {ready:?}: {}",
                        err.trim()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("ctr run output lost"),
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                let err = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "no {ready:?} from {image} within {timeout:?}: {}",
                    err.trim()
                );
            }
        }
    }

    /// Kills every container started by [`Worker::run_until_ready`] and
    /// waits for their `ctr run` (which removes them).
    pub fn stop_containers(&mut self) {
        for mut c in self.containers.drain(..) {
            let mut cmd = self.place.command("ctr");
            cmd.arg("--address")
                .arg(&self.socket)
                .arg("--namespace")
                .arg(&self.namespace)
                .args(["task", "kill", "--signal", "SIGKILL", &c.id]);
            let _ = run_bounded(&mut cmd, Duration::from_secs(30));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.child.kill();
                        let _ = c.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Stops everything; also done on drop.
    pub fn shutdown(mut self) {
        self.teardown();
    }

    /// Stops everything like [`Worker::shutdown`], but moves the worker's
    /// files into `keep` (a directory on the same filesystem) instead of
    /// deleting them now. Deleting a store of thousands of files just before
    /// the next run is measured would make that run's file creations scan
    /// past the freed inodes (ext4 without a journal skips inodes deleted in
    /// the last 30 s): the caller deletes `keep` when the measuring is over.
    pub fn shutdown_keeping_files(mut self, keep: &Path) -> Result<()> {
        self.teardown();
        fs::create_dir_all(keep)?;
        let name = self.dir.path().file_name().context("worker dir name")?;
        fs::rename(self.dir.path(), keep.join(name))
            .with_context(|| format!("moving {} aside", self.dir.path().display()))
    }

    fn teardown(&mut self) {
        self.stop_containers();
        if let Some(mut d) = self.starlightd.take() {
            d.stop_within(Duration::from_secs(3));
        }
        if let Some(mut d) = self.containerd.take() {
            d.stop_within(Duration::from_secs(5));
        }
        if let Some(mut d) = self.stargz.take() {
            d.stop_within(Duration::from_secs(5));
        }
        kill_shims(&self.namespace);
        unmount_below(self.dir.path());
        if std::env::var_os("STARLIGHT_BENCH_KEEP_LOGS").is_some() {
            let keep = std::env::temp_dir().join(format!("starlight-bench-{}", self.namespace));
            let _ = fs::create_dir_all(&keep);
            for name in ["containerd.log", "starlightd.log", "stargz.log"] {
                let _ = fs::copy(self.dir.path().join(name), keep.join(name));
            }
        }
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Starts the stargz snapshotter (root and socket in `dir`) and waits for
/// its socket.
fn start_stargz(place: &Place, setup: &StargzSetup, dir: &Path, socket: &Path) -> Result<Daemon> {
    let config = dir.join("stargz.toml");
    fs::write(
        &config,
        format!(
            "[[resolver.host.\"{r}\".mirrors]]\nhost = \"{r}\"\ninsecure = true\n",
            r = setup.registry
        ),
    )?;
    let mut cmd = place.command(&setup.daemon);
    cmd.arg("-address")
        .arg(socket)
        .arg("-root")
        .arg(dir.join("stargz-root"))
        .arg("-config")
        .arg(&config)
        .arg("-log-level")
        .arg("warn");
    let mut daemon = Daemon::spawn("containerd-stargz-grpc", cmd, &dir.join("stargz.log"))?;
    let probe = socket.to_path_buf();
    daemon.wait_until(Duration::from_secs(30), || probe.exists())?;
    Ok(daemon)
}

/// Kills containerd shims (and so their containers) serving `namespace`:
/// only ours, found by the namespace in their command line.
pub fn kill_shims(namespace: &str) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"-namespace" && w[1] == namespace.as_bytes());
        if is_shim && ours {
            tracing::warn!(pid, namespace, "killing a leftover containerd shim");
            // SAFETY: kill(2) on a pid we found; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    for p in mounts_below(dir) {
        if let Ok(c) = std::ffi::CString::new(p.as_str()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &base || p.starts_with(&format!("{base}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// CPU seconds (user + system) and peak resident set (bytes) of `pid`.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu = crate::cputime::parse_stat_cpu_secs(&stat)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some((cpu, hwm * 1024))
}

/// Resets the peak resident set of `pid` (`/proc/PID/clear_refs` = 5).
pub fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU seconds of the waited-for children of this process.
pub fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_is_readable() {
        let (cpu, peak) = proc_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0);
        assert!(peak > 0);
    }

    #[test]
    fn no_mounts_below_a_fresh_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_below(dir.path()).is_empty());
        assert_eq!(
            mounts_below(Path::new("/")).last().map(String::as_str),
            Some("/")
        );
    }
}
