//! The images containerd holds in our namespace: how starlightd notices an
//! image removed with `ctr images rm` (or by containerd's own garbage
//! collection) and releases it.

use containerd_client::services::v1::{images_client::ImagesClient, ListImagesRequest};

use super::{call, Containerd, ContainerdError};

/// One image record of containerd: its name and the digest it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// The image's name (a reference).
    pub name: String,
    /// The digest of its target (a manifest or an index).
    pub target: String,
}

impl Containerd {
    /// Every image record in the namespace.
    pub async fn list_images(&self) -> Result<Vec<NamedImage>, ContainerdError> {
        let reply = call(
            "list images",
            ImagesClient::new(self.channel.clone())
                .list(self.request(ListImagesRequest { filters: vec![] }, None)),
        )
        .await?;
        Ok(reply
            .images
            .into_iter()
            .map(|i| NamedImage {
                name: i.name,
                target: i.target.map(|t| t.digest).unwrap_or_default(),
            })
            .collect())
    }
}
