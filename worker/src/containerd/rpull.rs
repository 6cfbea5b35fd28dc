//! A containerd-client pull through remote snapshots, as containerd's own
//! pull does it with CRI's labels (and as `ctr-remote image rpull` does for
//! other snapshotters): the manifest and config go into the content store,
//! each layer is prepared in the snapshotter with the target and image
//! labels ([`crate::snapshotter::remote`]), which starlightd answers
//! `AlreadyExists` from one Starlight bundle, and the image record points at
//! the manifest. No layer blob is fetched. Stock `ctr images pull` (1.6)
//! fetches every blob before it unpacks and passes no image reference to
//! the snapshotter, so it cannot do this.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    leases_client::LeasesClient, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::Code;
use std::time::SystemTime;

use super::image::ImagePlan;
use super::{
    call, labels, unique_suffix, Containerd, ContainerdError, GC_EXPIRE, GC_REF_CONFIG,
    GC_REF_SNAPSHOT, LEASE_TTL,
};
use crate::snapshotter::remote::{
    LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER, LABEL_CRI_LAYERS, LABEL_CRI_MANIFEST, LABEL_TARGET,
};

/// An image to pull through remote snapshots.
#[derive(Debug, Clone)]
pub struct RemotePull {
    /// The image name (its reference).
    pub name: String,
    /// The manifest, config and chain ids (see [`super::image::plan_of`]).
    pub plan: ImagePlan,
    /// The layers' blob digests, bottom first (one per chain id).
    pub layers: Vec<String>,
}

/// What [`Containerd::pull_remote`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemotePullReport {
    /// Layers answered as remote snapshots.
    pub remote: usize,
    /// Layers whose snapshot containerd had already.
    pub present: usize,
}

impl Containerd {
    /// Creates a lease named `<prefix>-<unique>` that containerd drops by
    /// itself after a while; returns its id and header value.
    pub(super) async fn create_lease(
        &self,
        prefix: &str,
    ) -> Result<(String, MetadataValue<Ascii>), ContainerdError> {
        let lease_id = format!("{prefix}-{}", unique_suffix());
        let expire = humantime::format_rfc3339_seconds(SystemTime::now() + LEASE_TTL).to_string();
        call(
            "create lease",
            LeasesClient::new(self.channel.clone()).create(self.request(
                CreateLeaseRequest {
                    id: lease_id.clone(),
                    labels: labels(&[(GC_EXPIRE, &expire)]),
                },
                None,
            )),
        )
        .await?;
        let lease = lease_id
            .parse()
            .map_err(|_| ContainerdError::Namespace(lease_id.clone()))?;
        Ok((lease_id, lease))
    }

    /// Deletes lease `lease_id` (a failure is logged: it expires anyway).
    pub(super) async fn delete_lease(&self, lease_id: &str) {
        let deleted = call(
            "delete lease",
            LeasesClient::new(self.channel.clone()).delete(self.request(
                DeleteLeaseRequest {
                    id: lease_id.to_string(),
                    sync: false,
                },
                None,
            )),
        )
        .await;
        if let Err(e) = deleted {
            tracing::warn!(lease = %lease_id, "cannot delete lease: {e}");
        }
    }

    /// Pulls `image` into containerd with `snapshotter` answering every
    /// layer as a remote snapshot (see the module documentation). A layer
    /// the snapshotter prepares as an ordinary snapshot (no Starlight image)
    /// fails the pull with [`ContainerdError::NotRemote`], leaving nothing
    /// behind once the lease is gone.
    pub async fn pull_remote(
        &self,
        image: &RemotePull,
        snapshotter: &str,
    ) -> Result<RemotePullReport, ContainerdError> {
        let (lease_id, lease) = self.create_lease("starlight-rpull").await?;
        let result = self
            .pull_under_lease(image, snapshotter, &lease_id, &lease)
            .await;
        self.delete_lease(&lease_id).await;
        let report = result?;
        tracing::info!(
            image = %image.name,
            digest = %image.plan.manifest.digest,
            remote = report.remote,
            present = report.present,
            "image pulled into containerd through remote snapshots"
        );
        Ok(report)
    }

    async fn pull_under_lease(
        &self,
        image: &RemotePull,
        snapshotter: &str,
        lease_id: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<RemotePullReport, ContainerdError> {
        let plan = &image.plan;
        let (Some(top), true) = (
            plan.chain_ids.last(),
            plan.chain_ids.len() == image.layers.len(),
        ) else {
            return Err(ContainerdError::Image {
                name: image.name.clone(),
                source: super::PlanError::Malformed(
                    "the manifest's layers do not match the config's diff ids".into(),
                ),
            });
        };
        self.put_manifest_and_config(plan, snapshotter, top, lease_id, lease)
            .await?;
        let mut report = RemotePullReport::default();
        for i in 0..plan.chain_ids.len() {
            if self.remote_layer(image, i, snapshotter, lease).await? {
                report.remote += 1;
            } else {
                report.present += 1;
            }
        }
        self.put_image(&image.name, plan, lease).await?;
        Ok(report)
    }

    /// Has layer `i` of `image` committed as a remote snapshot; `false`:
    /// containerd had it already.
    async fn remote_layer(
        &self,
        image: &RemotePull,
        i: usize,
        snapshotter: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<bool, ContainerdError> {
        let chain = &image.plan.chain_ids[i];
        match self.stat_snapshot(snapshotter, chain).await {
            Ok(_) => return Ok(false),
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(e),
        }
        let parent = if i == 0 {
            String::new()
        } else {
            image.plan.chain_ids[i - 1].clone()
        };
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let key = format!("extract-{} {chain}", unique_suffix());
        let layer_labels: HashMap<String, String> = labels(&[
            (LABEL_TARGET, chain),
            (LABEL_CRI_IMAGE_REF, &image.name),
            (LABEL_CRI_MANIFEST, &image.plan.manifest.digest),
            (LABEL_CRI_LAYER, &image.layers[i]),
            (LABEL_CRI_LAYERS, &image.layers[i..].join(",")),
        ]);
        let prepared = call(
            "prepare snapshot",
            snapshots.prepare(self.request(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent,
                    labels: layer_labels,
                },
                Some(lease),
            )),
        )
        .await;
        match prepared {
            Err(e) if e.code() == Some(Code::AlreadyExists) => Ok(true),
            Err(e) => Err(e),
            Ok(_) => {
                let _ = call(
                    "remove snapshot",
                    snapshots.remove(self.request(
                        RemoveSnapshotRequest {
                            snapshotter: snapshotter.to_string(),
                            key,
                        },
                        None,
                    )),
                )
                .await;
                Err(ContainerdError::NotRemote {
                    name: image.name.clone(),
                    layer: image.layers[i].clone(),
                })
            }
        }
    }
}

/// The manifest, config and layer digests of a pull of `name`, checked.
pub fn remote_pull(
    name: &str,
    manifest_digest: &str,
    manifest_media_type: &str,
    manifest_raw: &[u8],
    config_raw: &[u8],
) -> Result<RemotePull, super::PlanError> {
    let plan = super::image::plan_of(
        manifest_digest,
        manifest_raw,
        manifest_media_type,
        config_raw,
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(manifest_raw)
        .map_err(|e| super::PlanError::Malformed(e.to_string()))?;
    let layers: Vec<String> = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|d| d.get("digest").and_then(|d| d.as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(RemotePull {
        name: name.to_string(),
        plan,
        layers,
    })
}

impl Containerd {
    /// Writes the image's config (its GC label naming the top snapshot
    /// `top` of `snapshotter`) and manifest (naming the config) under the
    /// lease.
    pub(super) async fn put_manifest_and_config(
        &self,
        plan: &ImagePlan,
        snapshotter: &str,
        top: &str,
        lease_id: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<(), ContainerdError> {
        let snapshot_ref = format!("{GC_REF_SNAPSHOT}{snapshotter}");
        self.put_content(
            &plan.config,
            labels(&[(&snapshot_ref, top)]),
            lease_id,
            lease,
        )
        .await?;
        self.put_content(
            &plan.manifest,
            labels(&[(GC_REF_CONFIG, &plan.config.digest)]),
            lease_id,
            lease,
        )
        .await?;
        Ok(())
    }
}
