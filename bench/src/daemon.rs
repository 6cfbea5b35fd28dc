//! Processes the harness starts: long-running daemons stopped on drop, and
//! the network namespace they run in.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Set when the user interrupts (Ctrl-C, SIGTERM): every wait of the
/// harness gives up promptly so that everything started gets stopped.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the harness was interrupted.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where a process runs: the host's network namespace, or a named one
/// (`/run/netns/NAME`, entered with `nsenter --net` so mounts stay shared
/// with the host: containerd must see starlightd's FUSE mounts).
#[derive(Debug, Clone, Default)]
pub struct Place {
    netns: Option<String>,
}

impl Place {
    /// The host's namespace.
    pub fn host() -> Self {
        Self { netns: None }
    }

    /// The named network namespace.
    pub fn netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_string()),
        }
    }

    /// A command running `program` here.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                cmd
            }
        }
    }
}

/// A running background process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_tail());
            }
        }
        Ok(())
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `ready()` holds, at most `timeout`; fails early if the
    /// process exits.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop_within(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(name = %self.name, "did not stop on SIGTERM: killing");
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }
}

/// Runs `cmd` bounded by `timeout` (and by [`interrupted`]), returning
/// stdout; fails with stderr. Both pipes are drained while it runs.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<String> {
    use std::io::Read;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_thread = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_thread = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            if interrupted() {
                bail!("{shown}: interrupted");
            }
            bail!("{shown} timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{shown} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn daemon_is_stopped_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let d = Daemon::spawn("sleep", cmd, &dir.path().join("log")).unwrap();
        let pid = d.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(d);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn bounded_run_times_out_and_reports_failures() {
        let err =
            run_bounded(Command::new("sleep").arg("5"), Duration::from_millis(100)).unwrap_err();
        assert!(format!("{err}").contains("timed out"));
        assert_eq!(
            run_bounded(Command::new("echo").arg("x"), Duration::from_secs(5)).unwrap(),
            "x\n"
        );
        assert!(run_bounded(&mut Command::new("false"), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn place_wraps_commands_in_nsenter() {
        let cmd = Place::netns("n1").command("ctr");
        assert_eq!(cmd.get_program(), "nsenter");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["--net=/run/netns/n1", "--", "ctr"]);
        assert_eq!(Place::host().command("ctr").get_program(), "ctr");
    }
}
