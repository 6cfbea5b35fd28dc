//! starlightd's garbage collection: which images go, and their removal.
//!
//! An image is *in use* while a container's snapshot (an active or view
//! snapshot of our snapshotter) stands on it, or while its bundle is still
//! arriving; such an image is never evicted. Of the others, a collection
//! evicts, in this order:
//!
//! 1. images containerd no longer holds (no image record in any of its
//!    namespaces -- ours, CRI's `k8s.io`, any other -- names their reference
//!    or targets their manifest): `ctr images rm` releases the image here;
//! 2. images unused for `gc_unused_secs`;
//! 3. while the store is above `max_store_bytes`, the least recently used.
//!
//! The store's size counts every distinct content of every image (those of
//! an image still arriving as if they had arrived); evicting an image frees
//! only the contents no remaining image names, so shared contents stay.
//!
//! Removal order, so that a crash anywhere leaves nothing pointing at a
//! missing content: containerd's image record first (what starts
//! containers), then our record (a synced write), then the mount, and only
//! then the contents. A crash after containerd's record went leaves our
//! record, which the next collection evicts as removed from containerd; a
//! crash after our record went leaves contents no record names, which the
//! next collection (and recovery at start) deletes. Contents first would
//! leave a record that vouches for contents that are gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use transport_quic::Digest;

use super::{contents_of, ImageManager, ImageTrace, ManagerError};
use crate::api::{GcEviction, GcReport};
use crate::containerd::list::NamedImage;
use crate::meta::ImageRecord;
use crate::snapshotter::image_candidates;
use crate::snapshotter::store::{Kind, Record};

/// Seconds since the Unix epoch, now.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why an image is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// containerd no longer holds it.
    Removed,
    /// Unused for longer than `gc_unused_secs`.
    Unused,
    /// The store is above `max_store_bytes`.
    Bound,
}

impl Reason {
    /// The reason's name in reports and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Removed => "removed",
            Reason::Unused => "unused",
            Reason::Bound => "bound",
        }
    }
}

/// What the planner knows of one image.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its manifest digest.
    pub digest: Digest,
    /// Its distinct contents and their sizes (those counted in the store).
    pub contents: HashMap<[u8; 32], u64>,
    /// Last use, Unix seconds.
    pub last_used: u64,
    /// In use (a container's snapshot, a bundle arriving): never evicted.
    pub in_use: bool,
    /// Whether containerd still holds it (`None`: unknown).
    pub in_containerd: Option<bool>,
}

/// One planned eviction: the candidate's index, why, and what it frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index into the candidates.
    pub index: usize,
    /// Why.
    pub reason: Reason,
    /// Contents no remaining image names once it is gone.
    pub contents: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The evictions a collection makes, in order, and the store's size
/// before and after them.
pub fn plan(
    images: &[Candidate],
    max_store_bytes: Option<u64>,
    unused_before: Option<u64>,
) -> (Vec<Planned>, u64, u64) {
    let mut refs: HashMap<[u8; 32], (usize, u64)> = HashMap::new();
    for c in images {
        for (sha, size) in &c.contents {
            refs.entry(*sha).or_insert((0, *size)).0 += 1;
        }
    }
    let before: u64 = refs.values().map(|(_, size)| size).sum();
    let mut order: Vec<usize> = (0..images.len()).filter(|&i| !images[i].in_use).collect();
    order.sort_by_key(|&i| (images[i].last_used, images[i].digest.to_string()));
    let mut state = PlanState {
        refs,
        total: before,
        out: Vec::new(),
        gone: HashSet::new(),
    };
    for &i in &order {
        if images[i].in_containerd == Some(false) {
            state.evict(images, i, Reason::Removed);
        }
    }
    if let Some(before) = unused_before {
        for &i in &order {
            if !state.gone.contains(&i) && images[i].last_used < before {
                state.evict(images, i, Reason::Unused);
            }
        }
    }
    if let Some(max) = max_store_bytes {
        for &i in &order {
            if state.total <= max {
                break;
            }
            if !state.gone.contains(&i) {
                state.evict(images, i, Reason::Bound);
            }
        }
    }
    (state.out, before, state.total)
}

/// A plan being made: content reference counts, the store's size left.
struct PlanState {
    refs: HashMap<[u8; 32], (usize, u64)>,
    total: u64,
    out: Vec<Planned>,
    gone: HashSet<usize>,
}

impl PlanState {
    fn evict(&mut self, images: &[Candidate], i: usize, reason: Reason) {
        self.gone.insert(i);
        let (mut contents, mut bytes) = (0, 0);
        for sha in images[i].contents.keys() {
            if let Some((n, size)) = self.refs.get_mut(sha) {
                *n -= 1;
                if *n == 0 {
                    contents += 1;
                    bytes += *size;
                }
            }
        }
        self.total -= bytes;
        self.out.push(Planned {
            index: i,
            reason,
            contents,
            bytes,
        });
    }
}

/// The manifest digests (`sha256:…`) of the images containers stand on:
/// for every active or view snapshot, the images of the nearest Starlight
/// layer of its chain (itself included).
pub fn images_in_use(records: &[Record]) -> HashSet<String> {
    let by_key: HashMap<&str, &Record> = records.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut used = HashSet::new();
    for r in records.iter().filter(|r| r.kind != Kind::Committed) {
        let mut cur = Some(r);
        // A parent loop in a damaged database must not hang the collection.
        for _ in 0..4096 {
            let Some(rec) = cur else { break };
            let images = image_candidates(&rec.labels);
            if !images.is_empty() {
                used.extend(images);
                break;
            }
            cur = by_key.get(rec.parent.as_str()).copied();
        }
    }
    used
}

/// Whether containerd's `images` hold `record`: a record names its
/// reference or targets its manifest.
fn held_by(images: &[NamedImage], record: &ImageRecord) -> bool {
    let digest = record.digest().to_string();
    images
        .iter()
        .any(|i| i.target == digest || i.name == record.reference.as_str())
}

impl ImageManager {
    /// Wakes the background collection (after a pull).
    pub(super) fn gc_soon(&self) {
        self.gc_wake.notify_one();
    }

    /// Runs a collection every `gc_interval_secs` and after each pull until
    /// `stop` turns true.
    pub fn spawn_gc(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let interval = this.config.gc.interval;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(interval) => {}
                    () = this.gc_wake.notified() => {}
                }
                if let Err(e) = this.collect(false).await {
                    warn!("garbage collection: {e}");
                }
            }
        })
    }

    /// The images in use now (manifest digests), from the snapshotter's
    /// records and the receives in progress.
    fn in_use_now(&self) -> Result<HashSet<String>, ManagerError> {
        let mut used = match self.snapshots.get() {
            Some(s) => images_in_use(&s.records().map_err(|e| ManagerError::Gc(e.to_string()))?),
            None => HashSet::new(),
        };
        let receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        used.extend(receiving.iter().map(|d| d.to_string()));
        Ok(used)
    }

    /// The candidates of a collection: every recorded image, its contents
    /// in the store (or still arriving), last use, use and containerd
    /// presence. In-use images get their last use set to now.
    fn candidates(
        &self,
        records: &[ImageRecord],
        listed: Option<&[NamedImage]>,
    ) -> Result<Vec<Candidate>, ManagerError> {
        let used = self.in_use_now()?;
        let now = now_secs();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let digest = r.digest();
            let in_use = used.contains(&digest.to_string());
            if in_use {
                self.meta.touch(&digest, now)?;
            }
            let arriving = used.contains(&digest.to_string()) && !r.complete;
            let contents = contents_of(&r.header)
                .into_iter()
                .filter(|(sha, _)| arriving || self.store.has(sha))
                .collect();
            out.push(Candidate {
                last_used: self.meta.last_used(&digest)?.unwrap_or(0),
                digest,
                contents,
                in_use,
                in_containerd: listed.map(|l| held_by(l, r)),
            });
        }
        Ok(out)
    }

    /// One collection: plans the evictions and, unless `dry_run`, makes
    /// them. Pulls wait (before their header is recorded) while it runs.
    pub async fn collect(&self, dry_run: bool) -> Result<GcReport, ManagerError> {
        let _gate = self.gate.write().await;
        let listed = match self.registry.images().await {
            Ok(l) => l,
            Err(e) => {
                // containerd unreachable: nothing counts as removed from it.
                warn!("garbage collection: cannot list containerd's images: {e}");
                None
            }
        };
        let records = self.meta.images()?;
        let candidates = self.candidates(&records, listed.as_deref())?;
        let gc = &self.config.gc;
        let unused_before = gc.unused.map(|d| now_secs().saturating_sub(d.as_secs()));
        let (planned, before, after) = plan(&candidates, gc.max_store_bytes, unused_before);
        let mut report = GcReport {
            dry_run,
            store_bytes_before: before,
            store_bytes_after: after,
            max_store_bytes: gc.max_store_bytes,
            evicted: Vec::new(),
            contents_freed: 0,
            bytes_freed: 0,
            in_use: candidates.iter().filter(|c| c.in_use).count(),
        };
        for p in &planned {
            let record = &records[p.index];
            report.evicted.push(GcEviction {
                image: record.reference.to_string(),
                digest: record.digest().to_string(),
                reason: p.reason.label().to_string(),
                contents: p.contents,
                bytes: p.bytes,
            });
            report.contents_freed += p.contents;
            report.bytes_freed += p.bytes;
        }
        if dry_run || planned.is_empty() {
            return Ok(report);
        }
        for p in &planned {
            let record = &records[p.index];
            // A container may have started on it since the plan.
            if self.in_use_now()?.contains(&record.digest().to_string()) {
                info!(image = %record.reference, "in use since planned: kept");
                continue;
            }
            self.evict(record, listed.as_deref()).await?;
            crate::metrics::global().evicted(p.reason.label(), p.bytes);
            info!(image = %record.reference, digest = %record.digest(), reason = p.reason.label(),
                contents = p.contents, bytes = p.bytes, "image evicted");
        }
        let (contents, bytes) = self.sweep()?;
        report.contents_freed = contents;
        report.bytes_freed = bytes;
        Ok(report)
    }

    /// Removes `image` (a reference or digest) and the contents no other
    /// image uses; returns its digest, and the contents and bytes freed.
    /// An image that snapshots stand on (a container's root filesystem) is
    /// refused unless `force`.
    pub async fn remove(
        &self,
        image: &str,
        force: bool,
    ) -> Result<(String, usize, u64), ManagerError> {
        let _gate = self.gate.write().await;
        let record = self.find(image)?;
        self.check_unused(&record, force).await?;
        let digest = record.digest();
        // Whatever containerd names it (the reference, by definition here).
        if let Err(reason) = self.registry.remove(record.reference.as_str()).await {
            warn!(image = %record.reference, "containerd: {reason}");
        }
        // And every record in any namespace (CRI's too) that targets it.
        let listed = self.registry.images().await.ok().flatten();
        self.evict(&record, Some(listed.as_deref().unwrap_or(&[])))
            .await?;
        let (freed, bytes) = self.sweep()?;
        info!(image = %record.reference, %digest, freed, bytes, "image removed");
        Ok((digest.to_string(), freed, bytes))
    }

    /// Removes one image: containerd's records of it (those `listed` shows
    /// targeting it, in their namespaces; its reference in ours if
    /// unknown), our
    /// record, its mount. Contents are left to [`ImageManager::sweep`].
    async fn evict(
        &self,
        record: &ImageRecord,
        listed: Option<&[NamedImage]>,
    ) -> Result<(), ManagerError> {
        let digest = record.digest();
        match listed {
            Some(l) => {
                let target = digest.to_string();
                for image in l.iter().filter(|i| i.target == target) {
                    if let Err(reason) = self.registry.remove_listed(image).await {
                        warn!(image = %image.name, namespace = %image.namespace, "containerd: {reason}");
                    }
                }
            }
            None => {
                if let Err(reason) = self.registry.remove(record.reference.as_str()).await {
                    warn!(image = %record.reference, "containerd: {reason}");
                }
            }
        }
        self.meta.remove(&digest)?;
        self.unmount(&digest).await;
        Ok(())
    }

    /// Unmounts the image with manifest `digest` (its last trace is kept
    /// for upload) and removes its mount point.
    async fn unmount(&self, digest: &Digest) {
        let mut mounts = self.mounts.lock().await;
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        if let Some(m) = mounts.remove(digest) {
            m.session.shutdown().await;
            let mut removed = self
                .removed_traces
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if removed.len() < 64 {
                removed.push(ImageTrace {
                    image: m.reference,
                    digest: digest.to_string(),
                    trace: m.trace,
                    removed: true,
                });
            }
        }
        drop(mounts);
        if let Ok(dir) = self.mountpoint(digest) {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Deletes every content no recorded image names; returns how many
    /// and their bytes.
    fn sweep(&self) -> Result<(usize, u64), ManagerError> {
        let mut keep: HashSet<[u8; 32]> = HashSet::new();
        for r in self.meta.images()? {
            keep.extend(r.contents());
        }
        let (mut freed, mut bytes) = (0, 0);
        for sha in self.store.list()? {
            if !keep.contains(&sha) {
                self.waiters.forget(&sha);
                if let Some(size) = self.store.remove(&sha)? {
                    freed += 1;
                    bytes += size;
                }
            }
        }
        Ok((freed, bytes))
    }

    /// The bytes of the contents in the store that recorded images name.
    pub fn store_bytes(&self) -> Result<u64, ManagerError> {
        let mut seen: HashMap<[u8; 32], u64> = HashMap::new();
        for r in self.meta.images()? {
            seen.extend(contents_of(&r.header));
        }
        Ok(seen
            .into_iter()
            .filter(|(sha, _)| self.store.has(sha))
            .map(|(_, size)| size)
            .sum())
    }
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
