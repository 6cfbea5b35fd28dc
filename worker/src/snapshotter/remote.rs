//! Remote snapshots: containerd's own pull (CRI `PullImage`, or a client
//! pull that sets the same labels, such as `starlight rpull`) hands each
//! layer to the snapshotter with `Prepare(key, parent, labels)`, where the
//! labels name the chain id the layer will be committed as
//! ([`LABEL_TARGET`], `containerd.io/snapshot.ref`) and the image
//! ([`LABEL_CRI_IMAGE_REF`], [`LABEL_CRI_MANIFEST`]).
//!
//! For a Starlight image the snapshotter then has the image provided by
//! [`RemoteImages`] (one bundle for the whole image: the first layer's
//! Prepare pulls it, the later ones find it held), commits the layer and
//! every layer above it as empty Starlight snapshots (labelled as those
//! [`crate::containerd`] registers, plus the target label), and answers
//! `AlreadyExists`: containerd then finds the committed snapshot by its
//! target label and parent, records it under the chain id, and never fetches
//! the layer blob. An image that is no Starlight image (the proxy says so,
//! or cannot be asked) gets an ordinary active snapshot, which containerd
//! fills by unpacking the layer.
//!
//! The committed snapshots are named after the target and the parent they
//! were prepared on ([`remote_name`]), so a later Prepare of the same layer
//! on the same parent (another namespace, a pull after containerd's GC)
//! finds them at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::service::{OverlaySnapshotter, SnapshotError};
use super::store::{Kind, StoreError};
use super::{top_of_label, LABEL_IMAGE, LABEL_LAYER};
use crate::manager::BoxFuture;

/// The label naming the chain id a prepared layer is committed as.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// The label (set by containerd's CRI plugin) naming the image reference.
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The label (set by containerd's CRI plugin) naming the manifest digest.
pub const LABEL_CRI_MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The label (set by containerd's CRI plugin) naming the layer's digest.
pub const LABEL_CRI_LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
/// The label (set by containerd's CRI plugin) listing the image's layers.
pub const LABEL_CRI_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// Prefix of the names of the snapshots committed for remote Prepares.
const NAME_PREFIX: &str = "starlight-remote/";

/// A Starlight image held by starlightd, as the snapshotter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// Its manifest digest (`sha256:<hex>`).
    pub manifest_digest: String,
    /// The chain id of each layer, bottom first.
    pub chain_ids: Vec<String>,
}

/// Where the snapshotter gets the images of remote Prepares (the image
/// manager; see `crate::remote_pull`).
pub trait RemoteImages: Send + Sync + 'static {
    /// Makes image `reference` (manifest `manifest_digest` when containerd
    /// said which) held and mounted, pulling it through one bundle unless it
    /// is held already; `Ok(None)`: no Starlight image (or none to be had
    /// now), containerd should unpack it itself.
    fn provide<'a>(
        &'a self,
        reference: &'a str,
        manifest_digest: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<RemoteImage>, String>>;

    /// Whether the image with this manifest digest is held (its view can be
    /// mounted).
    fn holds(&self, manifest_digest: &str) -> bool;
}

/// What a remote Prepare asks for, from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// The chain id the layer will be committed as.
    pub target: String,
    /// The image reference.
    pub reference: String,
    /// The image's manifest digest, when given.
    pub manifest_digest: Option<String>,
}

impl RemoteRequest {
    /// The request of a Prepare with these labels: `None` unless it names
    /// both a target and an image reference.
    pub fn of(labels: &HashMap<String, String>) -> Option<RemoteRequest> {
        let target = labels.get(LABEL_TARGET).filter(|v| !v.is_empty())?;
        let reference = labels.get(LABEL_CRI_IMAGE_REF).filter(|v| !v.is_empty())?;
        Some(RemoteRequest {
            target: target.clone(),
            reference: reference.clone(),
            manifest_digest: labels
                .get(LABEL_CRI_MANIFEST)
                .filter(|v| !v.is_empty())
                .cloned(),
        })
    }
}

/// The name of the committed remote snapshot of chain id `target` on
/// parent snapshot `parent`.
pub fn remote_name(target: &str, parent: &str) -> String {
    let p = hex::encode(Sha256::digest(parent.as_bytes()));
    format!("{NAME_PREFIX}{target}/{}", &p[..16])
}

/// The labels of layer `layer` (chain id `chain`) of `image`.
fn layer_labels(image: &RemoteImage, layer: usize) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_TARGET.to_string(), image.chain_ids[layer].clone()),
        (LABEL_IMAGE.to_string(), image.manifest_digest.clone()),
        (LABEL_LAYER.to_string(), layer.to_string()),
    ]);
    if layer + 1 == image.chain_ids.len() {
        labels.insert(top_of_label(&image.manifest_digest), "1".into());
    }
    labels
}

impl OverlaySnapshotter {
    /// Answers a remote Prepare on `parent`: `Ok(true)` once the target's
    /// committed snapshot exists (the caller answers `AlreadyExists`),
    /// `Ok(false)` when containerd should unpack the layer itself.
    pub(super) async fn prepare_remote(
        &self,
        parent: &str,
        req: &RemoteRequest,
    ) -> Result<bool, SnapshotError> {
        let Some(remote) = self.remote_images() else {
            return Ok(false);
        };
        // One remote Prepare at a time: the layers of one image wait for
        // its pull instead of starting their own.
        let _serial = self.remote_lock.lock().await;
        let name = remote_name(&req.target, parent);
        if let Ok(r) = self.record(&name) {
            let held = r.labels.get(LABEL_IMAGE).is_some_and(|d| remote.holds(d));
            if r.kind == Kind::Committed && held {
                tracing::debug!(target = %req.target, name, "remote snapshot present");
                return Ok(true);
            }
        }
        let image = match remote
            .provide(&req.reference, req.manifest_digest.as_deref())
            .await
        {
            Ok(Some(image)) => image,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(image = %req.reference, "remote snapshot: {e}; containerd unpacks the layer");
                return Ok(false);
            }
        };
        let Some(layer) = image.chain_ids.iter().position(|c| *c == req.target) else {
            tracing::warn!(
                image = %req.reference,
                target = %req.target,
                digest = %image.manifest_digest,
                "the layer is not one of the Starlight image's; containerd unpacks it"
            );
            return Ok(false);
        };
        let mut below = parent.to_string();
        for i in layer..image.chain_ids.len() {
            let name = remote_name(&image.chain_ids[i], &below);
            self.commit_remote(&name, &below, layer_labels(&image, i))?;
            below = name;
        }
        tracing::info!(
            image = %req.reference,
            digest = %image.manifest_digest,
            from_layer = layer,
            layers = image.chain_ids.len(),
            "remote snapshots committed"
        );
        Ok(true)
    }

    /// Commits an empty snapshot `name` on `parent` with `labels`; one
    /// already there is relabelled (it may name an image no longer held).
    fn commit_remote(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.with_store(|s| {
            if let Ok(r) = s.get(name) {
                if r.kind == Kind::Committed {
                    s.update_labels(name, labels, &[])?;
                    return Ok(());
                }
            }
            let tmp = format!("{name}/prepare");
            let r = match s.create(&tmp, parent, Kind::Active, labels.clone()) {
                Ok(r) => r,
                Err(StoreError::AlreadyExists(_)) => {
                    // Left by a crash between create and commit.
                    s.remove(&tmp)?;
                    s.create(&tmp, parent, Kind::Active, labels.clone())?
                }
                Err(e) => return Err(e.into()),
            };
            let fs = self.fs_dir(r.id);
            if let Err(e) = std::fs::create_dir_all(&fs) {
                let _ = s.remove(&tmp);
                return Err(SnapshotError::Io {
                    what: "create",
                    path: fs,
                    source: e,
                });
            }
            s.commit(name, &tmp, labels)?;
            tracing::debug!(name, parent, id = r.id, "remote snapshot committed");
            Ok(())
        })
    }

    /// Sets where remote Prepares get their images; without it every
    /// Prepare is an ordinary one.
    pub fn set_remote_images(&self, remote: Arc<dyn RemoteImages>) {
        if let Ok(mut guard) = self.remote.write() {
            *guard = Some(remote);
        }
    }

    fn remote_images(&self) -> Option<Arc<dyn RemoteImages>> {
        self.remote.read().ok().and_then(|g| g.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use containerd_snapshots::Snapshotter;
    use std::sync::Mutex;

    /// One image held after its first `provide`; counts the pulls.
    struct OneImage {
        image: RemoteImage,
        pulls: Mutex<usize>,
        starlight: bool,
    }

    impl RemoteImages for OneImage {
        fn provide<'a>(
            &'a self,
            _reference: &'a str,
            _digest: Option<&'a str>,
        ) -> BoxFuture<'a, Result<Option<RemoteImage>, String>> {
            Box::pin(async move {
                *self.pulls.lock().unwrap() += 1;
                Ok(self.starlight.then(|| self.image.clone()))
            })
        }

        fn holds(&self, digest: &str) -> bool {
            *self.pulls.lock().unwrap() > 0 && digest == self.image.manifest_digest
        }
    }

    fn labels(target: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_TARGET.to_string(), target.to_string()),
            (LABEL_CRI_IMAGE_REF.to_string(), "reg/app:v1".to_string()),
            (LABEL_CRI_LAYER.to_string(), "sha256:layer".to_string()),
        ])
    }

    fn image() -> RemoteImage {
        RemoteImage {
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            chain_ids: vec!["sha256:c0".into(), "sha256:c1".into()],
        }
    }

    #[test]
    fn requests_need_a_target_and_a_reference() {
        let r = RemoteRequest::of(&labels("sha256:c0")).unwrap();
        assert_eq!((r.target.as_str(), r.manifest_digest), ("sha256:c0", None));
        let mut l = labels("sha256:c0");
        l.remove(LABEL_CRI_IMAGE_REF);
        assert!(RemoteRequest::of(&l).is_none());
        assert!(RemoteRequest::of(&HashMap::new()).is_none());
        assert_ne!(remote_name("sha256:c1", ""), remote_name("sha256:c1", "x"));
    }

    #[tokio::test]
    async fn a_starlight_image_is_committed_once_for_all_its_layers() {
        use containerd_snapshots::tonic::{Code, Status};
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::open(dir.path()).unwrap();
        let remote = Arc::new(OneImage {
            image: image(),
            pulls: Mutex::new(0),
            starlight: true,
        });
        sn.set_remote_images(remote.clone());
        let err = sn
            .prepare("ns/1/extract c0".into(), String::new(), labels("sha256:c0"))
            .await
            .unwrap_err();
        assert_eq!(Status::from(err).code(), Code::AlreadyExists);
        let c0 = remote_name("sha256:c0", "");
        let r0 = sn.record(&c0).unwrap();
        assert_eq!(r0.kind, Kind::Committed);
        assert_eq!(r0.labels[LABEL_TARGET], "sha256:c0");
        assert!(sn.record("ns/1/extract c0").is_err());
        // The next layer, on the snapshot containerd found: no second pull.
        let err = sn
            .prepare("ns/2/extract c1".into(), c0.clone(), labels("sha256:c1"))
            .await
            .unwrap_err();
        assert_eq!(Status::from(err).code(), Code::AlreadyExists);
        assert_eq!(*remote.pulls.lock().unwrap(), 1);
        let r1 = sn.record(&remote_name("sha256:c1", &c0)).unwrap();
        assert_eq!(r1.parent, c0);
        assert!(r1
            .labels
            .contains_key(&top_of_label(&image().manifest_digest)));
        // A layer that is not the image's: an ordinary snapshot.
        sn.prepare("ns/3/x".into(), String::new(), labels("sha256:other"))
            .await
            .unwrap();
        assert_eq!(sn.record("ns/3/x").unwrap().kind, Kind::Active);
    }

    #[tokio::test]
    async fn a_plain_image_gets_ordinary_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::open(dir.path()).unwrap();
        sn.set_remote_images(Arc::new(OneImage {
            image: image(),
            pulls: Mutex::new(0),
            starlight: false,
        }));
        let m = sn
            .prepare("ns/1/extract c0".into(), String::new(), labels("sha256:c0"))
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(sn.record("ns/1/extract c0").unwrap().kind, Kind::Active);
    }
}
