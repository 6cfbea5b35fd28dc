//! Registers Starlight images in containerd over its gRPC API, from the
//! bundle header alone: the manifest and config go into containerd's content
//! store, the image record points at the manifest, and each layer chain gets
//! an (empty) committed snapshot in the Starlight snapshotter, labelled with
//! the image's manifest digest so the snapshotter mounts the image's FUSE view
//! beneath it. No layer blob is ever written: `ctr run --snapshotter
//! starlight IMAGE` finds the image unpacked and starts at once.
//!
//! Snapshots are shared by chain id: an image whose layers another image
//! already has reuses its snapshots, and its top snapshot is marked as its
//! top too ([`top_of_label`]); images with the same top chain id have the
//! same files, so the snapshotter may mount either's view.
//!
//! Garbage collection: the manifest references the config
//! (`containerd.io/gc.ref.content.config`), the config references the top
//! snapshot (`containerd.io/gc.ref.snapshot.<snapshotter>`), each snapshot its
//! parent; so removing the image record lets containerd's GC drop it all.
//! While registering, a lease keeps half-registered objects alive.

pub mod image;
pub mod list;
mod rpull;

pub use rpull::{remote_pull, RemotePull, RemotePullReport};

use containerd_client::services::v1::{
    content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::CommitSnapshotRequest,
    snapshots::Info as SnapshotInfo, snapshots::PrepareSnapshotRequest,
    snapshots::RemoveSnapshotRequest, snapshots::StatSnapshotRequest,
    snapshots::UpdateSnapshotRequest, AddResourceRequest, CreateImageRequest, DeleteImageRequest,
    GetImageRequest, Image, InfoRequest, Resource, UpdateImageRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::Descriptor;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub use image::{chain_ids, ImagePlan, PlanError};

pub use crate::snapshotter::{top_of_label, LABEL_IMAGE, LABEL_LAYER, LABEL_TOP_OF_PREFIX};
/// Content label by which a manifest references its config.
const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// Content label prefix by which a config references a snapshot.
const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Lease label: when containerd may drop the lease (if we never do).
const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// How long a registration lease lives at most.
const LEASE_TTL: Duration = Duration::from_secs(600);
/// Bound on every gRPC call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Content written per message.
const WRITE_CHUNK: usize = 1 << 20;

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be reached.
    #[error("connect to containerd at {path}: {source}")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// The cause.
        source: containerd_client::tonic::transport::Error,
    },
    /// The namespace cannot be sent as gRPC metadata.
    #[error("invalid containerd namespace {0:?}")]
    Namespace(String),
    /// The header's manifest or config cannot be registered.
    #[error("image {name}: {source}")]
    Image {
        /// The image name.
        name: String,
        /// What is wrong.
        source: PlanError,
    },
    /// A containerd call failed.
    #[error("containerd {op}: {status}")]
    Call {
        /// The call.
        op: &'static str,
        /// containerd's answer.
        status: Status,
    },
    /// A layer was not answered as a remote snapshot (no Starlight image).
    #[error("image {name}: layer {layer} is no remote snapshot (not a Starlight image?): pull it with `ctr images pull --snapshotter starlight`")]
    NotRemote {
        /// The image name.
        name: String,
        /// The layer's digest.
        layer: String,
    },
    /// A containerd call did not answer in time.
    #[error("containerd {0}: no answer within {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
}

impl ContainerdError {
    /// The gRPC code of a failed call, if this is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// Runs one gRPC call, bounded, naming it in errors.
async fn call<T>(
    op: &'static str,
    f: impl Future<Output = Result<containerd_client::tonic::Response<T>, Status>>,
) -> Result<T, ContainerdError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(ContainerdError::Call { op, status }),
        Err(_) => Err(ContainerdError::Timeout(op)),
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// A connection to containerd's gRPC socket, in one namespace.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    ns_header: MetadataValue<Ascii>,
}

impl Containerd {
    /// Connects to containerd's socket; calls are made in `namespace`.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let ns_header: MetadataValue<Ascii> = namespace
            .parse()
            .map_err(|_| ContainerdError::Namespace(namespace.to_string()))?;
        if namespace.is_empty() {
            return Err(ContainerdError::Namespace(String::new()));
        }
        let channel = match tokio::time::timeout(
            CALL_TIMEOUT,
            containerd_client::connect(socket.to_path_buf()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(ContainerdError::Connect {
                    path: socket.to_path_buf(),
                    source,
                })
            }
            Err(_) => return Err(ContainerdError::Timeout("connect")),
        };
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            ns_header,
        })
    }

    /// The namespace calls are made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The same connection, its calls made in `namespace`.
    #[allow(clippy::result_large_err)] // the module's one error type, as its async calls return
    pub fn in_namespace(&self, namespace: &str) -> Result<Self, ContainerdError> {
        if namespace.is_empty() {
            return Err(ContainerdError::Namespace(String::new()));
        }
        let ns_header: MetadataValue<Ascii> = namespace
            .parse()
            .map_err(|_| ContainerdError::Namespace(namespace.to_string()))?;
        Ok(Containerd {
            channel: self.channel.clone(),
            namespace: namespace.to_string(),
            ns_header,
        })
    }

    /// A request in this namespace, under `lease` if given.
    fn request<T>(&self, msg: T, lease: Option<&MetadataValue<Ascii>>) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns_header.clone());
        if let Some(l) = lease {
            r.metadata_mut().insert("containerd-lease", l.clone());
        }
        r
    }

    /// Registers image `name` from its bundle header (idempotent): the
    /// manifest and config (digests checked) in the content store, a
    /// committed snapshot per layer chain in `snapshotter` (new ones empty and
    /// labelled [`LABEL_IMAGE`] and [`LABEL_LAYER`]; the top one also
    /// [`top_of_label`]), and the image record `name` → manifest (an existing
    /// record of that name is pointed at it). All under a lease, dropped at
    /// the end.
    pub async fn register_image(
        &self,
        name: &str,
        header: &transport_quic::Header,
        snapshotter: &str,
    ) -> Result<(), ContainerdError> {
        let plan = image::plan(header).map_err(|source| ContainerdError::Image {
            name: name.to_string(),
            source,
        })?;
        let (lease_id, lease) = self.create_lease("starlight-register").await?;
        let result = self
            .register_under_lease(name, &plan, snapshotter, &lease_id, &lease)
            .await;
        // The lease goes whatever happened: on success the image record now
        // holds everything; on failure GC takes the pieces.
        self.delete_lease(&lease_id).await;
        result?;
        tracing::info!(
            image = name,
            digest = %plan.manifest.digest,
            layers = plan.chain_ids.len(),
            snapshotter,
            "image registered in containerd"
        );
        Ok(())
    }

    async fn register_under_lease(
        &self,
        name: &str,
        plan: &ImagePlan,
        snapshotter: &str,
        lease_id: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<(), ContainerdError> {
        let top = plan
            .chain_ids
            .last()
            .ok_or_else(|| ContainerdError::Image {
                name: name.to_string(),
                source: PlanError::Malformed("no layers".into()),
            })?;
        self.put_manifest_and_config(plan, snapshotter, top, lease_id, lease)
            .await?;
        for (i, chain) in plan.chain_ids.iter().enumerate() {
            let parent = if i == 0 { "" } else { &plan.chain_ids[i - 1] };
            let is_top = i + 1 == plan.chain_ids.len();
            self.ensure_snapshot(
                snapshotter,
                chain,
                parent,
                &plan.manifest.digest,
                i,
                is_top,
                lease_id,
                lease,
            )
            .await?;
        }
        self.put_image(name, plan, lease).await
    }

    /// Writes `blob` into the content store with `labels`; if it is there
    /// already, adds it to the lease and sets the labels it lacks.
    pub(super) async fn put_content(
        &self,
        blob: &image::Blob,
        labels: HashMap<String, String>,
        lease_id: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<(), ContainerdError> {
        let mut content = ContentClient::new(self.channel.clone());
        let info = call(
            "content info",
            content.info(self.request(
                InfoRequest {
                    digest: blob.digest.clone(),
                },
                None,
            )),
        )
        .await;
        match info {
            Ok(found) => {
                let have = found.info.map(|i| i.labels).unwrap_or_default();
                return self
                    .label_present_content(&mut content, blob, labels, have, lease_id)
                    .await;
            }
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(e),
        }
        let write_ref = format!("starlight-{}-{}", blob.digest, unique_suffix());
        let total = blob.data.len() as i64;
        let mut messages = vec![];
        let chunks: Vec<&[u8]> = if blob.data.is_empty() {
            vec![&[][..]]
        } else {
            blob.data.chunks(WRITE_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        let mut offset = 0i64;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let commit = i == last;
            messages.push(WriteContentRequest {
                action: if commit {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                r#ref: write_ref.clone(),
                total,
                expected: blob.digest.clone(),
                offset,
                data: chunk.to_vec(),
                labels: if commit {
                    labels.clone()
                } else {
                    HashMap::new()
                },
            });
            offset += chunk.len() as i64;
        }
        let written = async {
            let mut responses = call(
                "write content",
                content.write(self.request(futures_util::stream::iter(messages), Some(lease))),
            )
            .await?;
            let mut digest = String::new();
            loop {
                match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
                    Ok(Ok(Some(r))) => digest = r.digest,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        return Err(ContainerdError::Call {
                            op: "write content",
                            status,
                        })
                    }
                    Err(_) => return Err(ContainerdError::Timeout("write content")),
                }
            }
            if digest != blob.digest {
                return Err(ContainerdError::Call {
                    op: "write content",
                    status: Status::data_loss(format!(
                        "committed {digest:?}, expected {}",
                        blob.digest
                    )),
                });
            }
            Ok(())
        }
        .await;
        match written {
            Ok(()) => {
                tracing::debug!(digest = %blob.digest, "content written");
                Ok(())
            }
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                // Written by someone else since the info call.
                self.label_present_content(&mut content, blob, labels, HashMap::new(), lease_id)
                    .await
            }
            Err(e) => {
                // Drop a half-written ingest; it may not exist.
                let _ = content
                    .abort(self.request(
                        containerd_client::services::v1::AbortRequest {
                            r#ref: write_ref.clone(),
                        },
                        None,
                    ))
                    .await;
                Err(e)
            }
        }
    }

    /// Content already present: into the lease, and the labels of `labels`
    /// that `have` lacks set.
    async fn label_present_content(
        &self,
        content: &mut ContentClient<Channel>,
        blob: &image::Blob,
        labels: HashMap<String, String>,
        have: HashMap<String, String>,
        lease_id: &str,
    ) -> Result<(), ContainerdError> {
        self.add_to_lease(lease_id, "content", &blob.digest).await?;
        let paths: Vec<String> = labels
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(v))
            .map(|(k, _)| format!("labels.{k}"))
            .collect();
        if paths.is_empty() {
            tracing::debug!(digest = %blob.digest, "content present");
            return Ok(());
        }
        call(
            "update content labels",
            content.update(self.request(
                UpdateContentRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: blob.digest.clone(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                None,
            )),
        )
        .await?;
        tracing::debug!(digest = %blob.digest, "content present; labels set");
        Ok(())
    }

    async fn add_to_lease(
        &self,
        lease_id: &str,
        kind: &str,
        id: &str,
    ) -> Result<(), ContainerdError> {
        call(
            "add lease resource",
            LeasesClient::new(self.channel.clone()).add_resource(self.request(
                AddResourceRequest {
                    id: lease_id.to_string(),
                    resource: Some(Resource {
                        id: id.to_string(),
                        r#type: kind.to_string(),
                    }),
                },
                None,
            )),
        )
        .await
        .map(|_| ())
    }

    /// Makes sure committed snapshot `chain` (parent `parent`) exists in
    /// `snapshotter` and is in the lease: a missing one is prepared and
    /// committed empty, labelled as layer `layer` of this image; the image's
    /// top (`is_top`) also carries [`top_of_label`] of this image, added to
    /// an existing Starlight snapshot that lacks it.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_snapshot(
        &self,
        snapshotter: &str,
        chain: &str,
        parent: &str,
        manifest_digest: &str,
        layer: usize,
        is_top: bool,
        lease_id: &str,
        lease: &MetadataValue<Ascii>,
    ) -> Result<(), ContainerdError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let stat = self.stat_snapshot(snapshotter, chain).await;
        match stat {
            Ok(found) => {
                self.add_to_lease(lease_id, &format!("snapshots/{snapshotter}"), chain)
                    .await?;
                if is_top {
                    self.label_top(snapshotter, chain, manifest_digest, &found)
                        .await?;
                }
                tracing::debug!(chain, "snapshot present");
                return Ok(());
            }
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(e),
        }
        let layer_s = layer.to_string();
        let mut snap_labels = labels(&[(LABEL_IMAGE, manifest_digest), (LABEL_LAYER, &layer_s)]);
        if is_top {
            snap_labels.insert(top_of_label(manifest_digest), "1".into());
        }
        let key = format!("starlight-register-{chain}-{}", unique_suffix());
        call(
            "prepare snapshot",
            snapshots.prepare(self.request(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent: parent.to_string(),
                    labels: snap_labels.clone(),
                },
                Some(lease),
            )),
        )
        .await?;
        let committed = call(
            "commit snapshot",
            snapshots.commit(self.request(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    name: chain.to_string(),
                    key: key.clone(),
                    labels: snap_labels,
                },
                Some(lease),
            )),
        )
        .await;
        match committed {
            Ok(_) => {
                tracing::debug!(chain, parent, layer, "snapshot committed");
                Ok(())
            }
            Err(e) => {
                // Someone else committed it first (AlreadyExists), or it
                // failed: the prepared key is not needed either way.
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
                if e.code() != Some(Code::AlreadyExists) {
                    return Err(e);
                }
                self.add_to_lease(lease_id, &format!("snapshots/{snapshotter}"), chain)
                    .await?;
                if is_top {
                    let found = self.stat_snapshot(snapshotter, chain).await?;
                    self.label_top(snapshotter, chain, manifest_digest, &found)
                        .await?;
                }
                Ok(())
            }
        }
    }

    async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<SnapshotInfo, ContainerdError> {
        let found = call(
            "stat snapshot",
            SnapshotsClient::new(self.channel.clone()).stat(self.request(
                StatSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                },
                None,
            )),
        )
        .await?;
        Ok(found.info.unwrap_or_default())
    }

    /// Marks Starlight snapshot `chain` (as `found`) as the top of the image
    /// `manifest_digest`, unless it is marked already or is no Starlight
    /// snapshot (an ordinary layer has its files itself).
    async fn label_top(
        &self,
        snapshotter: &str,
        chain: &str,
        manifest_digest: &str,
        found: &SnapshotInfo,
    ) -> Result<(), ContainerdError> {
        let key = top_of_label(manifest_digest);
        if !found.labels.contains_key(LABEL_IMAGE) || found.labels.contains_key(&key) {
            return Ok(());
        }
        call(
            "update snapshot labels",
            SnapshotsClient::new(self.channel.clone()).update(self.request(
                UpdateSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    info: Some(SnapshotInfo {
                        name: chain.to_string(),
                        labels: labels(&[(&key, "1")]),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{key}")],
                    }),
                },
                None,
            )),
        )
        .await?;
        tracing::debug!(
            chain,
            image = manifest_digest,
            "snapshot marked as the image's top"
        );
        Ok(())
    }

    /// Creates the image record `name` → manifest, or points an existing one
    /// at it.
    async fn put_image(
        &self,
        name: &str,
        plan: &ImagePlan,
        lease: &MetadataValue<Ascii>,
    ) -> Result<(), ContainerdError> {
        let target = Descriptor {
            media_type: plan.manifest.media_type.clone(),
            digest: plan.manifest.digest.clone(),
            size: plan.manifest.data.len() as i64,
            annotations: HashMap::new(),
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let existing = call(
            "get image",
            images.get(self.request(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            )),
        )
        .await;
        let image = Image {
            name: name.to_string(),
            target: Some(target.clone()),
            ..Default::default()
        };
        match existing {
            Ok(r) => {
                if r.image.and_then(|i| i.target).map(|t| t.digest) == Some(target.digest) {
                    tracing::debug!(image = name, "image record up to date");
                    return Ok(());
                }
                call(
                    "update image",
                    images.update(self.request(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                        },
                        Some(lease),
                    )),
                )
                .await?;
            }
            Err(e) if e.code() == Some(Code::NotFound) => {
                call(
                    "create image",
                    images.create(
                        self.request(CreateImageRequest { image: Some(image) }, Some(lease)),
                    ),
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Removes the image record `name` (a missing one is fine) and waits for
    /// containerd's garbage collection, which drops its content and
    /// snapshots unless something else still uses them.
    pub async fn remove_image(&self, name: &str) -> Result<(), ContainerdError> {
        let deleted = call(
            "delete image",
            ImagesClient::new(self.channel.clone()).delete(self.request(
                DeleteImageRequest {
                    name: name.to_string(),
                    sync: true,
                },
                None,
            )),
        )
        .await;
        match deleted {
            Ok(_) => {
                tracing::info!(image = name, "image removed from containerd");
                Ok(())
            }
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
