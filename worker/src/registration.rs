//! Registers pulled images in containerd ([`crate::containerd`]) for the
//! image manager: a connection per call, so starlightd neither needs
//! containerd at start nor minds containerd restarting.

use std::path::PathBuf;

use transport_quic::Header;

use crate::containerd::list::NamedImage;
use crate::containerd::Containerd;
use crate::manager::{BoxFuture, ImageRegistry};

/// The snapshotter name containerd knows starlightd's snapshotter by.
pub const SNAPSHOTTER: &str = "starlight";

/// containerd at a socket, in a namespace.
#[derive(Debug, Clone)]
pub struct ContainerdRegistry {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The namespace images are registered in.
    pub namespace: String,
}

impl ContainerdRegistry {
    async fn connect(&self) -> Result<Containerd, String> {
        Containerd::connect(&self.socket, &self.namespace)
            .await
            .map_err(|e| e.to_string())
    }
}

impl ImageRegistry for ContainerdRegistry {
    fn register<'a>(
        &'a self,
        name: &'a str,
        header: &'a Header,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.connect()
                .await?
                .register_image(name, header, SNAPSHOTTER)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn images(&self) -> BoxFuture<'_, Result<Option<Vec<NamedImage>>, String>> {
        Box::pin(async move {
            self.connect()
                .await?
                .list_images_everywhere()
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        })
    }

    fn remove_listed<'a>(&'a self, image: &'a NamedImage) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.connect()
                .await?
                .in_namespace(&image.namespace)
                .map_err(|e| e.to_string())?
                .remove_image(&image.name)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.connect()
                .await?
                .remove_image(name)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
