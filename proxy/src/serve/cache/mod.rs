//! The shared payload cache: byte ranges of layer blobs read from the
//! registry, kept in memory and on disk (each tier LRU, bounded in bytes) and
//! shared by every bundle the proxy serves. Keyed by blob digest and range:
//! a blob digest names its content, so a range of it is the same bytes
//! whichever repository or image it was read through.
//!
//! Concurrent misses of one range are coalesced: one registry read, every
//! bundle waiting on it gets its bytes ("single flight"). Bytes are trusted
//! exactly as the registry's are (the proxy never verifies a range; the
//! worker checks each payload against the header); the disk tier keeps a
//! SHA-256 of each file so a file damaged on disk is dropped, never served.

mod disk;
mod lru;
pub mod metrics;

pub use disk::DiskCacheError;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::config::ByteSize;
use crate::registry::RangeError;
use disk::DiskTier;
use lru::Lru;

/// The `[cache]` section of the proxy's config: sizes of the payload cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes of ranges kept in memory (0: no memory tier).
    pub memory_bytes: ByteSize,
    /// Bytes of ranges kept on disk (0: no disk tier).
    pub disk_bytes: ByteSize,
    /// Directory of the disk tier (default: `payload-cache` beside the database).
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: ByteSize(256 << 20),
            disk_bytes: ByteSize(4 << 30),
            dir: None,
        }
    }
}

impl CacheConfig {
    /// The disk tier's directory given the database's.
    pub fn dir_for(&self, db: &std::path::Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| db.with_file_name("payload-cache"))
    }
}

/// One cached range: bytes `offset..offset + len` of blob `blob`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PieceKey {
    /// Digest of the blob (`sha256:...`).
    pub blob: String,
    /// First byte of the range.
    pub offset: u64,
    /// Length of the range.
    pub len: u64,
}

/// Counters of a [`PayloadCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadCacheStats {
    /// Ranges found in memory.
    pub memory_hits: u64,
    /// Ranges found on disk.
    pub disk_hits: u64,
    /// Ranges read from the registry.
    pub misses: u64,
    /// Lookups that waited for another bundle's read of the same range.
    pub coalesced: u64,
    /// Bytes read from the registry through the cache.
    pub registry_bytes: u64,
    /// Bytes answered from memory, disk or another bundle's read.
    pub hit_bytes: u64,
    /// Disk files dropped as damaged or stray.
    pub dropped_files: u64,
    /// Bytes in the memory tier.
    pub memory_used: u64,
    /// Bytes (data and prefixes) in the disk tier.
    pub disk_used: u64,
}

/// The outcome of one read, shared by every bundle waiting on it.
type Flight = Arc<OnceCell<Result<Bytes, Arc<RangeError>>>>;

/// The payload cache; see the module documentation.
#[derive(Debug)]
pub struct PayloadCache {
    memory: Mutex<Lru<PieceKey, Bytes>>,
    disk: Option<Arc<DiskTier>>,
    flights: Mutex<HashMap<PieceKey, Flight>>,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    registry_bytes: AtomicU64,
    hit_bytes: AtomicU64,
    dropped_files: AtomicU64,
}

impl PayloadCache {
    /// A cache holding at most `memory_bytes` in memory, without a disk tier.
    pub fn memory_only(memory_bytes: u64) -> Self {
        PayloadCache {
            memory: Mutex::new(Lru::new(memory_bytes)),
            disk: None,
            flights: Mutex::default(),
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            registry_bytes: AtomicU64::new(0),
            hit_bytes: AtomicU64::new(0),
            dropped_files: AtomicU64::new(0),
        }
    }

    /// A cache per `config`, its disk tier in `dir` (rebuilt from the files
    /// there: stray and wrong-sized files are removed). Blocking.
    pub fn open(config: &CacheConfig, dir: &std::path::Path) -> Result<Self, DiskCacheError> {
        let mut cache = Self::memory_only(config.memory_bytes.0);
        if config.disk_bytes.0 > 0 {
            let (tier, dropped) = DiskTier::open(dir, config.disk_bytes.0)?;
            let (bytes, files) = tier.usage();
            info!(dir = %dir.display(), files, bytes, dropped, "payload cache opened");
            cache.dropped_files = AtomicU64::new(dropped);
            cache.disk = Some(Arc::new(tier));
        }
        Ok(cache)
    }

    /// Current counters.
    pub fn stats(&self) -> PayloadCacheStats {
        let memory_used = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size();
        let disk_used = self.disk.as_ref().map_or(0, |d| d.usage().0);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PayloadCacheStats {
            memory_hits: get(&self.memory_hits),
            disk_hits: get(&self.disk_hits),
            misses: get(&self.misses),
            coalesced: get(&self.coalesced),
            registry_bytes: get(&self.registry_bytes),
            hit_bytes: get(&self.hit_bytes),
            dropped_files: get(&self.dropped_files),
            memory_used,
            disk_used,
        }
    }

    fn in_memory(&self, key: &PieceKey) -> Option<Bytes> {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn keep_in_memory(&self, key: &PieceKey, bytes: &Bytes) {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), bytes.clone(), key.len);
    }

    fn hit(&self, counter: &AtomicU64, len: u64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.hit_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// The bytes of `key`: from memory, else from disk, else from `fetch`
    /// (a registry read of exactly `key.len` bytes), run once for all
    /// concurrent callers. A read that fails is not cached (every waiter gets
    /// its error; the next lookup tries again).
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &PieceKey,
        fetch: F,
    ) -> Result<Bytes, Arc<RangeError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, RangeError>>,
    {
        if let Some(b) = self.in_memory(key) {
            self.hit(&self.memory_hits, key.len);
            return Ok(b);
        }
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Flight::default();
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        let result = flight.get_or_init(|| self.load(key, fetch)).await.clone();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(key);
        }
        result
    }

    /// A miss in memory: the disk tier, then the registry.
    async fn load<F, Fut>(&self, key: &PieceKey, fetch: F) -> Result<Bytes, Arc<RangeError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, RangeError>>,
    {
        // Someone may have finished this range since our lookup.
        if let Some(b) = self.in_memory(key) {
            self.hit(&self.memory_hits, key.len);
            return Ok(b);
        }
        if let Some(disk) = &self.disk {
            let (disk, k) = (disk.clone(), key.clone());
            match tokio::task::spawn_blocking(move || disk.get(&k)).await {
                Ok(Ok(Some(data))) => {
                    let bytes = Bytes::from(data);
                    self.hit(&self.disk_hits, key.len);
                    self.keep_in_memory(key, &bytes);
                    return Ok(bytes);
                }
                Ok(Err(())) => {
                    self.dropped_files.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(None)) => {}
                Err(e) => warn!(error = %e, "payload cache disk read task failed"),
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = fetch().await.map_err(Arc::new)?;
        self.registry_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let bytes = Bytes::from(data);
        if bytes.len() as u64 != key.len {
            // Not what was asked for: pass it on (the caller checks), keep nothing.
            return Ok(bytes);
        }
        self.keep_in_memory(key, &bytes);
        if let Some(disk) = &self.disk {
            let (disk, k, b) = (disk.clone(), key.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || disk.put(&k, &b));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests;
