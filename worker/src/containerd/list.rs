//! The images containerd holds, in every namespace: how starlightd notices
//! an image removed with `ctr images rm` (or by containerd's own garbage
//! collection) and releases it. Every namespace counts, so an image pulled
//! through CRI (namespace `k8s.io`) or by another client is held while any
//! namespace names it.

use containerd_client::services::v1::{
    images_client::ImagesClient, namespaces_client::NamespacesClient, ListImagesRequest,
    ListNamespacesRequest,
};

use containerd_client::tonic::Code;

use super::{call, Containerd, ContainerdError};

/// One image record of containerd: its namespace, name and the digest it
/// targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// The namespace the record is in.
    pub namespace: String,
    /// The image's name (a reference).
    pub name: String,
    /// The digest of its target (a manifest or an index).
    pub target: String,
}

impl Containerd {
    /// Every image record in this connection's namespace.
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
                namespace: self.namespace.clone(),
                name: i.name,
                target: i.target.map(|t| t.digest).unwrap_or_default(),
            })
            .collect())
    }

    /// containerd's namespaces, sorted by name.
    pub async fn list_namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let reply = call(
            "list namespaces",
            NamespacesClient::new(self.channel.clone()).list(self.request(
                ListNamespacesRequest {
                    filter: String::new(),
                },
                None,
            )),
        )
        .await?;
        let mut names: Vec<String> = reply.namespaces.into_iter().map(|n| n.name).collect();
        names.sort();
        Ok(names)
    }

    /// Every image record of every namespace (this connection's namespace
    /// included even when containerd lists no such namespace yet).
    pub async fn list_images_everywhere(&self) -> Result<Vec<NamedImage>, ContainerdError> {
        let mut namespaces = self.list_namespaces().await?;
        if !namespaces.contains(&self.namespace) {
            namespaces.push(self.namespace.clone());
        }
        let mut out = Vec::new();
        for ns in namespaces {
            match self.in_namespace(&ns)?.list_images().await {
                Ok(images) => out.extend(images),
                // Removed between the two calls: it holds nothing.
                Err(e) if e.code() == Some(Code::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
