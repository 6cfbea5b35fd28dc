//! Runs a container of the traced image with `ctr` on the starlight
//! snapshotter until its ready line (or its exit, or a timeout), then stops
//! it and removes it. Every `ctr` call is bounded in time.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{debug, warn};

/// Where containers run: containerd's socket and namespace.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// Run containers in the host's network namespace (`ctr run
    /// --net-host`), for applications that need a network, even loopback.
    pub net_host: bool,
}

/// How a traced run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Time from starting `ctr run` to the ready line (or to a clean exit
    /// when no ready pattern was given); `None` if never ready.
    pub ready: Option<Duration>,
    /// Why it was not ready, if it was not.
    pub problem: Option<String>,
}

impl Ctr {
    fn command(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        c
    }

    /// Runs `ctr ARGS` to completion within `limit`; failures are logged.
    async fn quietly(&self, args: &[&str], limit: Duration) {
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(limit, c.output()).await {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => debug!(
                ?args,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "ctr failed"
            ),
            Ok(Err(e)) => warn!(?args, error = %e, "cannot run ctr"),
            Err(_) => warn!(?args, "ctr did not finish within {limit:?}"),
        }
    }

    /// Starts `ctr run --rm --snapshotter starlight IMAGE ID ARGS`, waits for
    /// `ready` on its stdout (or for its exit without a pattern) at most
    /// `timeout`, and calls `on_ready` at that moment (before the container
    /// is stopped). Then kills and removes the container.
    pub async fn run_until_ready<F: std::future::Future<Output = ()>>(
        &self,
        image: &str,
        id: &str,
        args: &[String],
        ready: Option<&Regex>,
        timeout: Duration,
        on_ready: impl FnOnce() -> F,
    ) -> anyhow::Result<RunOutcome> {
        let mut c = self.command();
        c.args(["run", "--rm", "--snapshotter", "starlight"]);
        if self.net_host {
            c.arg("--net-host");
        }
        c.args([image, id])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = c.spawn().context("starting `ctr run`")?;
        let outcome = watch(&mut child, ready, started, timeout).await;
        if outcome.ready.is_some() {
            on_ready().await;
        }
        self.stop(&mut child, id).await;
        Ok(outcome)
    }

    async fn stop(&self, child: &mut Child, id: &str) {
        let limit = Duration::from_secs(20);
        self.quietly(&["task", "kill", "-s", "SIGKILL", id], limit)
            .await;
        if tokio::time::timeout(limit, child.wait()).await.is_err() {
            warn!(
                container = id,
                "`ctr run` did not exit after SIGKILL: killing it"
            );
            let _ = child.kill().await;
        }
        // `--rm` removes the container when ctr exits normally; make sure.
        self.quietly(&["task", "rm", "-f", id], limit).await;
        self.quietly(&["containers", "rm", id], limit).await;
    }
}

/// Reads the child's stdout until the ready line, its exit or the deadline.
async fn watch(
    child: &mut Child,
    ready: Option<&Regex>,
    started: Instant,
    timeout: Duration,
) -> RunOutcome {
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let Some(stdout) = child.stdout.take() else {
        return RunOutcome {
            ready: None,
            problem: Some("no stdout".into()),
        };
    };
    let mut stderr = child.stderr.take();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                return RunOutcome {
                    ready: None,
                    problem: Some(format!("not ready within {timeout:?}")),
                }
            }
            Ok(Ok(Some(line))) => {
                debug!(%line, "container output");
                if ready.is_some_and(|r| r.is_match(&line)) {
                    return RunOutcome {
                        ready: Some(started.elapsed()),
                        problem: None,
                    };
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    // stdout closed: the container exited (or ctr failed).
    let status = tokio::time::timeout_at(deadline, child.wait()).await;
    let at = started.elapsed();
    let mut err_text = String::new();
    if let Some(e) = stderr.as_mut() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            e.take(64 * 1024).read_to_string(&mut err_text),
        )
        .await;
    }
    match status {
        Ok(Ok(s)) if s.success() && ready.is_none() => RunOutcome {
            ready: Some(at),
            problem: None,
        },
        Ok(Ok(s)) => RunOutcome {
            ready: None,
            problem: Some(format!(
                "the container exited ({s}) before its ready line: {}",
                err_text.trim()
            )),
        },
        Ok(Err(e)) => RunOutcome {
            ready: None,
            problem: Some(format!("waiting for ctr: {e}")),
        },
        Err(_) => RunOutcome {
            ready: None,
            problem: Some(format!("not ready within {timeout:?}")),
        },
    }
}
