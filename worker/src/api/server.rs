//! The API server: one task per connection, one request per connection.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::peer::PeerPolicy;
use super::remote::{remote_pull_into_containerd, RemotePullRequest};
use super::{Request, Response, MAX_LINE};
use crate::manager::{ImageManager, PullOptions, PullProgress};

/// Binds the API socket at `path` (a stale socket file is replaced; the
/// parent directory is created) and gives it the mode (and group) of
/// `policy`.
pub fn bind(path: &Path, policy: &PeerPolicy) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    policy.apply(path)?;
    Ok(listener)
}

/// Serves `listener` until `shutdown` completes; connections from peers
/// `policy` refuses get one error line and are closed.
pub async fn serve(
    listener: UnixListener,
    policy: PeerPolicy,
    manager: Arc<ImageManager>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match policy.check(&stream, "API socket") {
                    Ok(_) => {
                        tokio::spawn(connection(stream, manager.clone()));
                    }
                    Err(refusal) => {
                        tokio::spawn(refuse(stream, refusal));
                    }
                },
                Err(e) => {
                    warn!("API socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Tells a refused peer why, and closes.
async fn refuse(stream: UnixStream, why: String) {
    let (_read, mut write) = stream.into_split();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        write_line(&mut write, &Response::Error(why)),
    )
    .await;
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn connection(stream: UnixStream, manager: Arc<ImageManager>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read)
        .take(MAX_LINE as u64)
        .read_line(&mut line)
        .await;
    let request = match read {
        Ok(0) => return,
        Ok(_) => serde_json::from_str::<Request>(line.trim_end()),
        Err(e) => {
            debug!("API connection: {e}");
            return;
        }
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let _ = write_line(&mut write, &Response::Error(format!("bad request: {e}"))).await;
            return;
        }
    };
    debug!(?request, "API request");
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The operation runs on its own: a client that goes away does not
    // cancel a pull half-way.
    let op = tokio::spawn(handle(request, manager, tx));
    let mut client_gone = false;
    while let Some(progress) = rx.recv().await {
        if !client_gone
            && write_line(&mut write, &wire_progress(progress))
                .await
                .is_err()
        {
            client_gone = true;
        }
    }
    let response = op
        .await
        .unwrap_or_else(|e| Response::Error(format!("internal error: {e}")));
    if !client_gone {
        let _ = write_line(&mut write, &response).await;
    }
}

/// The progress line of a manager's progress report.
fn wire_progress(progress: PullProgress) -> Response {
    match progress {
        PullProgress::Registered(report) => Response::Registered(report),
    }
}

async fn handle(
    request: Request,
    manager: Arc<ImageManager>,
    progress: mpsc::UnboundedSender<PullProgress>,
) -> Response {
    let result = match request {
        Request::Pull {
            image,
            from,
            wait,
            trace,
            unordered,
        } => manager
            .pull(
                &image,
                PullOptions {
                    from,
                    wait,
                    trace,
                    unordered,
                    skip_registration: false,
                },
                progress,
            )
            .await
            .inspect_err(|_| {
                let failed = crate::metrics::PullOutcome::Failed;
                crate::metrics::global().pull_finished(failed, 0, None);
            })
            .map(Response::Pulled),
        Request::Images => manager.images().map(Response::Images),
        Request::Remove { image, force } => {
            manager
                .remove(&image, force)
                .await
                .map(|(digest, contents_freed, bytes_freed)| Response::Removed {
                    digest,
                    contents_freed,
                    bytes_freed,
                })
        }
        Request::TakeTrace { image } => manager.take_trace(&image).await.map(Response::Trace),
        Request::Gc { dry_run } => manager.collect(dry_run).await.map(Response::Gc),
        Request::Status => manager.status().await.map(Response::Status),
        Request::RemotePull {
            image,
            manifest_digest,
            manifest_media_type,
            manifest,
            config,
            namespace,
            snapshotter,
        } => {
            let request = RemotePullRequest {
                image,
                manifest_digest,
                manifest_media_type,
                manifest,
                config,
                namespace,
                snapshotter,
            };
            return remote_pull_into_containerd(&manager, request)
                .await
                .unwrap_or_else(|e| Response::Error(e.to_string()));
        }
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
