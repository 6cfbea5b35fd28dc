//! Production traces in the background: every tick, the closed trace
//! windows of the mounted images ([`crate::trace::OpenTrace`]) are written
//! to the spool ([`crate::trace_spool`]), and the oldest spooled trace is
//! sent to the proxy (the protocol's trace upload), at most one per
//! `[traces] upload_interval_ms`. A trace is deleted only once the proxy
//! acknowledged it; while the proxy is unreachable the wait between tries
//! doubles up to `retry_max_secs`, and the same id is sent again, so the
//! proxy counts the trace once. A trace the proxy refuses for good (image
//! not indexed, bad request) is deleted with a warning.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use transport_quic::quic::{Client, ClientError, ClientOptions, ClientTls, TransportTuning};
use transport_quic::{ErrorCode, Trace, TraceOpen, TraceUpload};

use crate::config::{Config, TraceConfig};
use crate::manager::{ImageManager, DEAD_PROXY};
use crate::trace::{TraceRecord, WindowLimits};
use crate::trace_spool::{new_id, Spool};

/// How long one upload may take before it counts as failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The window bounds of `[traces]`.
pub fn window_limits(t: &TraceConfig) -> WindowLimits {
    WindowLimits {
        window: t.window,
        quiet: t.quiet,
        max_records: t.max_records,
        max_bytes: t.max_bytes,
    }
}

/// Milliseconds, rounded, from the recorder's fractional values.
fn ms(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let r = v.round() as u64;
        r
    } else {
        0
    }
}

/// The wire trace of one window's records (in order of first open).
pub fn to_wire(id: String, image: &str, digest: &str, records: &[TraceRecord]) -> Trace {
    Trace {
        id,
        image: image.to_string(),
        manifest_digest: digest.to_string(),
        opens: records
            .iter()
            .zip(0u32..)
            .map(|(r, rank)| TraceOpen {
                path: r.path.clone(),
                layer: r.layer,
                rank,
                ms_since_start: ms(r.at_ms),
                ms_waited: ms(r.wait_ms),
            })
            .collect(),
    }
}

/// What one upload attempt did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The spool is empty.
    Idle,
    /// A trace was acknowledged (or refused for good) and deleted.
    Sent,
    /// The proxy could not be reached or failed: try again later.
    Failed,
}

/// Whether the proxy refused the trace for good (sending it again cannot help).
fn permanent(e: &ClientError) -> bool {
    match e {
        ClientError::Proxy(frame) => matches!(
            frame.code,
            ErrorCode::NotFound | ErrorCode::NotStarlight | ErrorCode::BadRequest
        ),
        ClientError::Protocol(_) => true,
        _ => false,
    }
}

/// The background task's state.
struct Uploader {
    manager: Arc<ImageManager>,
    spool: Spool,
    client: Client,
    config: Config,
}

impl Uploader {
    /// Spools the closed windows of every mounted image (all of them with
    /// `flush`).
    async fn collect(&self, flush: bool) {
        let now = Instant::now();
        for t in self.manager.traces().await {
            let windows = if flush || t.removed {
                t.trace.flush()
            } else {
                t.trace.take_finished(now)
            };
            let image = &t.image;
            for records in windows {
                let wire = to_wire(new_id(&t.digest), image, &t.digest, &records);
                match self.spool.write(&wire) {
                    Ok(_) => info!(
                        trace = %wire.id,
                        %image,
                        opens = wire.opens.len(),
                        "trace of a container start spooled"
                    ),
                    Err(e) => warn!(%image, "{e}"),
                }
            }
        }
    }

    async fn upload_one(&self) -> Step {
        let files = match self.spool.list() {
            Ok(f) => f,
            Err(e) => {
                warn!("{e}");
                return Step::Failed;
            }
        };
        for path in files {
            let Some(trace) = self.spool.read(&path) else {
                continue;
            };
            let id = trace.id.clone();
            let upload = TraceUpload {
                token: self.config.token.clone(),
                trace,
            };
            let sent = tokio::time::timeout(UPLOAD_TIMEOUT, async {
                let addr = self.config.proxy.resolve().await.map_err(|e| {
                    transport_quic::quic::ClientError::Send(format!(
                        "cannot resolve {}: {e}",
                        self.config.proxy
                    ))
                })?;
                self.client
                    .upload_trace(addr, &self.config.server_name, &upload)
                    .await
            })
            .await;
            return match sent {
                Ok(Ok(ack)) => {
                    if let Err(e) = self.spool.remove(&id) {
                        warn!("{e}");
                    }
                    info!(
                        trace = %id,
                        duplicate = ack.duplicate,
                        folded = ack.folded,
                        ignored = ack.ignored,
                        "trace delivered to the proxy"
                    );
                    Step::Sent
                }
                Ok(Err(e)) if permanent(&e) => {
                    warn!(trace = %id, "the proxy refused the trace: {e}; deleted");
                    if let Err(e) = self.spool.remove(&id) {
                        warn!("{e}");
                    }
                    Step::Sent
                }
                Ok(Err(e)) => {
                    warn!(trace = %id, "uploading the trace: {e}; kept for a retry");
                    Step::Failed
                }
                Err(_) => {
                    warn!(trace = %id, "no acknowledgement within {UPLOAD_TIMEOUT:?}; kept for a retry");
                    Step::Failed
                }
            };
        }
        Step::Idle
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let t = &self.config.traces;
        let tick = Duration::from_millis(250).min(t.upload_interval);
        let mut next_upload = Instant::now();
        let mut backoff = t.upload_interval;
        while !*stop.borrow() {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(tick) => {}
            }
            self.collect(false).await;
            if Instant::now() < next_upload {
                continue;
            }
            let step = tokio::select! {
                _ = stop.changed() => break,
                s = self.upload_one() => s,
            };
            match step {
                Step::Idle => {}
                Step::Sent => {
                    backoff = t.upload_interval;
                    next_upload = Instant::now() + t.upload_interval;
                }
                Step::Failed => {
                    next_upload = Instant::now() + backoff;
                    backoff = (backoff * 2).min(t.retry_max);
                }
            }
        }
        // What was recorded so far stays for the next start.
        self.collect(true).await;
    }
}

/// Starts the background task (unless `[traces] enabled = false`); it stops
/// when `stop` turns true, after spooling every open window.
pub fn spawn(
    manager: Arc<ImageManager>,
    config: &Config,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.traces.enabled {
        info!("traces of container starts are off ([traces] enabled = false)");
        return None;
    }
    let spool = match Spool::open(config.traces_dir(), config.traces.max_spooled) {
        Ok(s) => s,
        Err(e) => {
            warn!("traces of container starts are off: {e}");
            return None;
        }
    };
    // A proxy that is down is noticed within DEAD_PROXY, not the upload timeout.
    let options = ClientOptions {
        transport: TransportTuning {
            idle_timeout: DEAD_PROXY,
            keep_alive: Some(DEAD_PROXY / 5),
            ..TransportTuning::default()
        },
        ..ClientOptions::default()
    };
    let client = match Client::with_options(ClientTls::CaFile(config.ca_file.clone()), options) {
        Ok(c) => c,
        Err(e) => {
            warn!("traces of container starts are off: the proxy's CA: {e}");
            return None;
        }
    };
    let uploader = Uploader {
        manager,
        spool,
        client,
        config: config.clone(),
    };
    Some(tokio::spawn(uploader.run(stop)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_ranked_opens() {
        let records = vec![
            TraceRecord {
                path: "bin/sh".into(),
                layer: 1,
                at_ms: 0.4,
                wait_ms: 12.6,
            },
            TraceRecord {
                path: "etc/passwd".into(),
                layer: 0,
                at_ms: f64::NAN,
                wait_ms: -1.0,
            },
        ];
        let t = to_wire("i".into(), "r/a:v1", "sha256:m", &records);
        assert_eq!((t.id.as_str(), t.image.as_str()), ("i", "r/a:v1"));
        assert_eq!(t.manifest_digest, "sha256:m");
        assert_eq!(t.opens[0].path, "bin/sh");
        assert_eq!((t.opens[0].rank, t.opens[0].ms_waited), (0, 13));
        assert_eq!((t.opens[1].rank, t.opens[1].ms_since_start), (1, 0));
        assert_eq!(t.opens[1].ms_waited, 0);
    }
}
