//! The `starlight` containerd snapshotter: an overlayfs snapshotter served
//! as a containerd proxy plugin over gRPC on a unix socket
//! (`[proxy_plugins.starlight] type = "snapshot"`), with its metadata in
//! RocksDB under the state directory.

mod service;
pub mod store;

pub use service::{InfoStream, OverlaySnapshotter, SnapshotError};

use containerd_snapshots::tonic::transport::Server;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::UnixListenerStream;

/// How long a shutdown waits for open gRPC connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state could not be opened.
    #[error(transparent)]
    Open(#[from] SnapshotError),
    /// The socket could not be bound.
    #[error("bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] containerd_snapshots::tonic::transport::Error),
}

/// Opens the snapshotter state in `state_dir` and serves it on `socket`
/// until `shutdown` completes; the database is closed when this returns.
pub async fn serve(
    socket: &Path,
    state_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let snapshotter = OverlaySnapshotter::open(state_dir)?;
    serve_snapshotter(snapshotter, socket, shutdown).await
}

/// Serves an opened snapshotter on `socket` (a stale socket file is
/// replaced) until `shutdown` completes, then waits at most 5 s for open
/// connections, removes the socket and closes the snapshotter.
pub async fn serve_snapshotter(
    snapshotter: Arc<OverlaySnapshotter>,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let result = run(snapshotter.clone(), socket, shutdown).await;
    snapshotter.close();
    let _ = std::fs::remove_file(socket);
    result
}

async fn run(
    snapshotter: Arc<OverlaySnapshotter>,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: socket.to_path_buf(),
        source,
    };
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_err(e)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(bind_err)?;
    tracing::info!(socket = %socket.display(), "snapshotter serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(containerd_snapshots::server(snapshotter))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut server => return Ok(r?),
        () = &mut shutdown => {}
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => r?,
        Err(_) => {
            tracing::warn!("snapshotter connections still open after shutdown grace; closing")
        }
    }
    tracing::info!("snapshotter stopped");
    Ok(())
}
