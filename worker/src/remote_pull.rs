//! The image manager as the source of the snapshotter's remote snapshots
//! ([`crate::snapshotter::remote`]): a layer Prepare of an image containerd
//! is pulling makes starlightd pull the image through one bundle (mounted,
//! not registered in containerd: containerd's own pull records it), or use
//! it as held. An image the proxy refuses as no Starlight image, or one that
//! cannot be pulled now, is remembered for a while so its other layers
//! do not ask again: containerd unpacks them itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use transport_quic::{Digest, ErrorCode};

use crate::containerd::image;
use crate::manager::{BoxFuture, ImageManager, ManagerError, PullOptions};
use crate::meta::ImageRecord;
use crate::snapshotter::{RemoteImage, RemoteImages};

/// How long an image that could not be provided is not asked for again.
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// Most refused images remembered.
const MAX_REFUSED: usize = 1024;

/// Provides remote snapshots' images from an [`ImageManager`].
pub struct RemotePuller {
    manager: Arc<ImageManager>,
    /// Manifest digests pulled by this process (their receive may still run).
    pulled: Mutex<HashSet<Digest>>,
    /// Images (by manifest digest, or reference) recently refused.
    refused: Mutex<HashMap<String, Instant>>,
}

impl RemotePuller {
    /// A puller over `manager`.
    pub fn new(manager: Arc<ImageManager>) -> Self {
        RemotePuller {
            manager,
            pulled: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// The image of `record` as the snapshotter needs it.
    fn remote_image(record: &ImageRecord) -> Result<RemoteImage, String> {
        let plan = image::plan(&record.header).map_err(|e| e.to_string())?;
        Ok(RemoteImage {
            manifest_digest: record.digest().to_string(),
            chain_ids: plan.chain_ids,
        })
    }

    /// The record of `digest` if it needs no pull: complete, or pulled by
    /// this process.
    fn held(&self, digest: &Digest) -> Option<ImageRecord> {
        let record = self.manager.record(digest).ok().flatten()?;
        let pulled = self
            .pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest);
        (record.complete || pulled).then_some(record)
    }

    fn refused_recently(&self, key: &str) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.retain(|_, at| at.elapsed() < REFUSED_FOR);
        refused.contains_key(key)
    }

    fn refuse(&self, key: &str) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= MAX_REFUSED {
            refused.clear();
        }
        refused.insert(key.to_string(), Instant::now());
    }

    async fn provide_now(
        &self,
        reference: &str,
        manifest_digest: Option<&str>,
    ) -> Result<Option<RemoteImage>, String> {
        let wanted = manifest_digest.and_then(|d| Digest::parse(d).ok());
        if let Some(record) = wanted.as_ref().and_then(|d| self.held(d)) {
            return Self::remote_image(&record).map(Some);
        }
        let key = manifest_digest.unwrap_or(reference).to_string();
        if self.refused_recently(&key) {
            return Ok(None);
        }
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let options = PullOptions {
            skip_registration: true,
            ..PullOptions::default()
        };
        let report = match self.manager.pull(reference, options, tx).await {
            Ok(r) => r,
            Err(e) => {
                self.refuse(&key);
                let not_starlight = matches!(&e, ManagerError::Pull { reason, .. }
                    if reason.contains(&ErrorCode::NotStarlight.to_string()));
                if not_starlight {
                    info!(
                        image = reference,
                        "not a Starlight image: containerd unpacks it"
                    );
                } else {
                    warn!(
                        image = reference,
                        "cannot pull through Starlight ({e}): containerd unpacks it"
                    );
                }
                return Ok(None);
            }
        };
        let digest = Digest::parse(&report.digest).map_err(|e| e.to_string())?;
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest);
        if wanted.as_ref().is_some_and(|w| *w != digest) {
            warn!(
                image = reference,
                pulled = %digest,
                wanted = manifest_digest.unwrap_or_default(),
                "the proxy resolved another manifest than containerd (a moved tag?)"
            );
        }
        let record = self
            .manager
            .record(&digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{digest} was removed meanwhile"))?;
        info!(image = reference, %digest, header_s = report.header_secs, "pulled for containerd");
        Self::remote_image(&record).map(Some)
    }
}

impl RemoteImages for RemotePuller {
    fn provide<'a>(
        &'a self,
        reference: &'a str,
        manifest_digest: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<RemoteImage>, String>> {
        Box::pin(self.provide_now(reference, manifest_digest))
    }

    fn holds(&self, manifest_digest: &str) -> bool {
        Digest::parse(manifest_digest)
            .ok()
            .and_then(|d| self.manager.record(&d).ok().flatten())
            .is_some()
    }
}
