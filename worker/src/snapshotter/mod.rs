//! The `starlight` containerd snapshotter: an overlayfs snapshotter served
//! as a containerd proxy plugin over gRPC on a unix socket
//! (`[proxy_plugins.starlight] type = "snapshot"`), with its metadata in
//! RocksDB under the state directory.

pub mod remote;
mod service;
pub mod store;
mod users;

pub use remote::{RemoteImage, RemoteImages};
pub use service::{InfoStream, OverlaySnapshotter, SnapshotError};
use transport_quic::Digest;

use crate::manager::BoxFuture;
pub use users::{image_users, ImageUsers};

/// Label of a committed snapshot that belongs to a Starlight image: its
/// value is the image's manifest digest. Such a snapshot has no files of its
/// own; snapshots above it see the image's merged view (from
/// [`ImageMounts::lower_dir`]) as their lowest layer. containerd passes it on
/// to the snapshotter because it starts with `containerd.io/snapshot/`.
pub const LABEL_IMAGE: &str = "containerd.io/snapshot/starlight.image";
/// Label with the layer index (bottom first) of a Starlight image snapshot.
pub const LABEL_LAYER: &str = "containerd.io/snapshot/starlight.layer";
/// Prefix of the labels `<prefix><manifest digest hex>` = `1` naming every
/// Starlight image whose top layer a snapshot is. Images with the same top
/// chain id have the same files, so any of them that is mounted can stand
/// for the snapshot; the first one [`ImageMounts::lower_dir`] answers is used.
pub const LABEL_TOP_OF_PREFIX: &str = "containerd.io/snapshot/starlight.top.";

/// The label marking a snapshot as the top layer of the image with this
/// manifest digest (`sha256:<hex>`).
pub fn top_of_label(manifest_digest: &str) -> String {
    let hex = manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or(manifest_digest);
    format!("{LABEL_TOP_OF_PREFIX}{hex}")
}

/// The images a snapshot with these labels can be mounted as, best first:
/// those it is the top layer of (by [`LABEL_TOP_OF_PREFIX`], in label
/// order), then the image that created it ([`LABEL_IMAGE`]). Empty for a
/// snapshot that is not a Starlight one. Labels are parsed as typed digests
/// ([`Digest`]); one that is not a `sha256:` digest names no image.
pub fn image_candidates<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    let mut tops = vec![];
    let mut creator = None;
    for (k, v) in labels {
        if let Some(hex) = k.strip_prefix(LABEL_TOP_OF_PREFIX) {
            // containerd clears a label by field path to an empty value.
            if !v.is_empty() {
                if let Ok(d) = Digest::parse_hex(hex) {
                    tops.push(d.to_string());
                }
            }
        } else if k == LABEL_IMAGE {
            creator = Some(Digest::parse(v).ok().map(|d| d.to_string()));
        }
    }
    let Some(creator) = creator else {
        // Not a Starlight image snapshot (a stray top label is ignored).
        return vec![];
    };
    let creator = creator.into_iter().next();
    tops.sort();
    if let Some(c) = creator {
        if !tops.contains(&c) {
            tops.push(c);
        }
    }
    tops
}

/// Where the snapshotter finds the mounted view of a Starlight image.
pub trait ImageMounts: Send + Sync + 'static {
    /// The directory where the image with this manifest digest is mounted
    /// (its merged view), mounting it first if needed. Never called under
    /// the snapshotter's locks.
    fn lower_dir<'a>(
        &'a self,
        manifest_digest: &'a str,
    ) -> BoxFuture<'a, Result<std::path::PathBuf, LowerDirError>>;

    /// A container's active snapshot on the image was prepared (called on a
    /// blocking thread after [`ImageMounts::lower_dir`] answered): the start
    /// of a container, for its trace. Does nothing by default.
    fn container_starting(&self, _manifest_digest: &str) {}
}

/// Why [`ImageMounts::lower_dir`] has no view of an image.
#[derive(Debug, thiserror::Error)]
pub enum LowerDirError {
    /// The digest is no `sha256:` digest.
    #[error(transparent)]
    Digest(#[from] transport_quic::DigestError),
    /// No such image is held.
    #[error("starlightd holds no image {0}")]
    Unknown(String),
    /// The image was unmounted while it was being mounted.
    #[error("{0} was unmounted meanwhile")]
    Unmounted(String),
    /// Looking the image up or mounting it failed.
    #[error("mounting {digest}: {source}")]
    Mount {
        /// The image's manifest digest.
        digest: String,
        /// The cause.
        #[source]
        source: crate::manager::ManagerError,
    },
}

use containerd_snapshots::tonic::transport::Server;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

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
    // containerd runs as root: the socket is root's alone (mode 0600), and a
    // connection from anyone else (a permissive mode, a bind race) is closed.
    let policy = crate::api::peer::PeerPolicy::root_only();
    policy.apply(socket).map_err(bind_err)?;
    let incoming = UnixListenerStream::new(listener).filter_map(move |conn| match conn {
        Ok(stream) => policy
            .check(&stream, "snapshotter socket")
            .ok()
            .map(|_| Ok(stream)),
        Err(e) => Some(Err(e)),
    });
    tracing::info!(socket = %socket.display(), "snapshotter serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(containerd_snapshots::server(snapshotter))
        .serve_with_incoming_shutdown(incoming, async {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn image_candidates_put_the_images_a_snapshot_tops_first() {
        let a = format!("sha256:{}", "a".repeat(64));
        let a = a.as_str();
        let b = format!("sha256:{}", "b".repeat(64));
        let b = b.as_str();
        assert_eq!(
            top_of_label(b),
            format!("containerd.io/snapshot/starlight.top.{}", "b".repeat(64))
        );
        // Created by image b as its bottom layer, the top of image a.
        let l = labels(&[
            (LABEL_IMAGE, b),
            (LABEL_LAYER, "0"),
            (&top_of_label(a), "1"),
        ]);
        assert_eq!(image_candidates(&l), [a, b]);
        // The top of its creator: listed once.
        let l = labels(&[(LABEL_IMAGE, a), (&top_of_label(a), "1")]);
        assert_eq!(image_candidates(&l), [a]);
        // Not a Starlight snapshot: no image, whatever stray labels it has.
        assert!(image_candidates(&labels(&[(&top_of_label(a), "1")])).is_empty());
        assert!(image_candidates(&labels(&[("other", "x")])).is_empty());
        // A cleared top label does not count.
        let l = labels(&[(LABEL_IMAGE, b), (&top_of_label(a), "")]);
        assert_eq!(image_candidates(&l), [b]);
    }

    #[test]
    fn labels_that_are_not_digests_name_no_image() {
        let a = format!("sha256:{}", "a".repeat(64));
        let a = a.as_str();
        for bad in ["sha256:../../../etc", "/root/.ssh", "sha256:AAAA"] {
            let l = labels(&[(LABEL_IMAGE, bad)]);
            assert!(image_candidates(&l).is_empty(), "{bad}");
            let l = labels(&[(LABEL_IMAGE, a), (&top_of_label(bad), "1")]);
            assert_eq!(image_candidates(&l), [a], "{bad}");
        }
    }
}
