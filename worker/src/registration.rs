//! Registers pulled images in containerd ([`crate::containerd`]) for the
//! image manager: a connection per call, so starlightd neither needs
//! containerd at start nor minds containerd restarting.

use std::path::PathBuf;

use transport_quic::Header;

use crate::containerd::list::NamedImage;
use crate::containerd::{Containerd, ContainerdError};
use crate::manager::{BoxFuture, ImageRegistry};

/// The snapshotter name containerd knows starlightd's snapshotter by.
pub const SNAPSHOTTER: &str = "starlight";

/// Why an [`ImageRegistry`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// containerd could not be reached, or refused (boxed: gRPC statuses
    /// are large).
    #[error(transparent)]
    Containerd(Box<ContainerdError>),
}

impl From<ContainerdError> for RegistryError {
    fn from(e: ContainerdError) -> Self {
        RegistryError::Containerd(Box::new(e))
    }
}

impl RegistryError {
    /// Whether containerd answered `Unavailable`, itself or for a call it
    /// made (its connection to our snapshotter socket is in gRPC's
    /// reconnect backoff, e.g. right after starlightd started).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Containerd(e) => match e.as_ref() {
                ContainerdError::Call { status, .. } => {
                    status.code() == containerd_client::tonic::Code::Unavailable
                        || status.message().contains("Unavailable")
                }
                _ => false,
            },
        }
    }
}

/// containerd at a socket, in a namespace.
#[derive(Debug, Clone)]
pub struct ContainerdRegistry {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The namespace images are registered in.
    pub namespace: String,
}

impl ContainerdRegistry {
    async fn connect(&self) -> Result<Containerd, ContainerdError> {
        Containerd::connect(&self.socket, &self.namespace).await
    }
}

impl ImageRegistry for ContainerdRegistry {
    fn register<'a>(
        &'a self,
        name: &'a str,
        header: &'a Header,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            self.connect()
                .await?
                .register_image(name, header, SNAPSHOTTER)
                .await
                .map_err(RegistryError::from)
        })
    }

    fn images(&self) -> BoxFuture<'_, Result<Option<Vec<NamedImage>>, RegistryError>> {
        Box::pin(async move {
            self.connect()
                .await?
                .list_images_everywhere()
                .await
                .map(Some)
                .map_err(RegistryError::from)
        })
    }

    fn remove_listed<'a>(
        &'a self,
        image: &'a NamedImage,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            self.connect()
                .await?
                .in_namespace(&image.namespace)?
                .remove_image(&image.name)
                .await
                .map_err(RegistryError::from)
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            self.connect()
                .await?
                .remove_image(name)
                .await
                .map_err(RegistryError::from)
        })
    }
}
