//! [`Request::RemotePull`](super::Request::RemotePull): `starlight rpull`'s
//! containerd part, done by starlightd over its own containerd socket (the
//! CLI resolved the image in the registry).

use crate::containerd::{remote_pull, Containerd, ContainerdError, PlanError};
use crate::manager::ImageManager;

use super::Response;

/// Why a remote pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RemotePullError {
    /// The manifest and config give no plan of layers.
    #[error("planning the remote pull of {image}: {source}")]
    Plan {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: PlanError,
    },
    /// containerd refused or failed.
    #[error("remote pull of {image} into containerd: {source}")]
    Containerd {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: ContainerdError,
    },
}

/// What the client resolved, and where the image goes.
#[derive(Debug)]
pub(super) struct RemotePullRequest {
    pub image: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: String,
    pub config: String,
    pub namespace: Option<String>,
    pub snapshotter: String,
}

/// Prepares the image's layers as remote snapshots in containerd and
/// writes its image record.
pub(super) async fn remote_pull_into_containerd(
    manager: &ImageManager,
    r: RemotePullRequest,
) -> Result<Response, RemotePullError> {
    let plan = remote_pull(
        &r.image,
        &r.manifest_digest,
        &r.manifest_media_type,
        r.manifest.as_bytes(),
        r.config.as_bytes(),
    )
    .map_err(|source| RemotePullError::Plan {
        image: r.image.clone(),
        source,
    })?;
    let config = manager.config();
    let namespace = r.namespace.unwrap_or_else(|| config.namespace.clone());
    let containerd_error = |source| RemotePullError::Containerd {
        image: r.image.clone(),
        source,
    };
    let containerd = Containerd::connect(&config.containerd_socket, &namespace)
        .await
        .map_err(containerd_error)?;
    let report = containerd
        .pull_remote(&plan, &r.snapshotter)
        .await
        .map_err(containerd_error)?;
    Ok(Response::RemotePulled {
        namespace,
        remote: report.remote,
        present: report.present,
    })
}
