//! The static start-up order of images nothing has run yet (see
//! [`crate::startup`]): computed once per image from the registry (range
//! reads of the few files the analysis looks at) and kept in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::db::{Db, ImageRecord, TocEntry};
use crate::format::{decompress_member, decompress_prefix};
use crate::registry::RegistryClient;
use crate::startup::{analyze, BoxFuture, ContentReader, StartupError, StartupLimits};

/// Most images whose order is kept (the cache is cleared past it).
const MAX_IMAGES: usize = 4096;

/// Compressed bytes fetched first to sniff a large file's first bytes.
const SNIFF_COMPRESSED: u64 = 64 << 10;

/// One image's order, computed by the first request that needs it.
type OrderCell = Arc<OnceCell<Arc<Vec<String>>>>;

/// Start-up orders by manifest digest, each computed once.
#[derive(Default)]
pub struct StartupOrders {
    orders: Mutex<HashMap<String, OrderCell>>,
}

impl std::fmt::Debug for StartupOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupOrders").finish_non_exhaustive()
    }
}

/// Reads contents of one image from the registry by range.
struct RegistryReader<'a> {
    registry: &'a RegistryClient,
    image: &'a ImageRecord,
    reference: &'a str,
}

impl RegistryReader<'_> {
    /// The compressed member of `entry`, or its first `len` bytes.
    async fn member(&self, entry: &TocEntry, len: u64) -> Result<Vec<u8>, String> {
        let content = entry.entry.content.ok_or("the entry has no content")?;
        let layer = self
            .image
            .layers
            .get(entry.layer as usize)
            .ok_or("the entry's layer is not in the image")?;
        let mut stream = self
            .registry
            .open_range(self.reference, &layer.digest, content.offset, len)
            .await
            .map_err(|e| e.to_string())?;
        let mut compressed = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(64 << 20));
        while let Some(chunk) = stream.next_chunk().await.map_err(|e| e.to_string())? {
            compressed.extend_from_slice(&chunk);
        }
        Ok(compressed)
    }

    async fn fetch(&self, entry: &TocEntry, limit: u64) -> Result<Vec<u8>, String> {
        let (Some(content), Some(layer)) = (
            entry.entry.content,
            self.image.layers.get(entry.layer as usize),
        ) else {
            return Ok(Vec::new());
        };
        let compression = layer.compression;
        if limit < entry.entry.size && content.compressed_len > SNIFF_COMPRESSED {
            // A prefix of the member decodes to a prefix of the file, unless
            // the encoder's first block is larger than the prefix (zstd
            // emits nothing before a whole block): then read it all.
            let prefix = self.member(entry, SNIFF_COMPRESSED).await?;
            let out = decompress_prefix(compression, &prefix, limit).map_err(|e| e.to_string())?;
            if out.len() as u64 >= limit {
                return Ok(out);
            }
        }
        let member = self.member(entry, content.compressed_len).await?;
        let mut out =
            decompress_member(compression, &member, entry.entry.size).map_err(|e| e.to_string())?;
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX).min(out.len()));
        Ok(out)
    }
}

impl ContentReader for RegistryReader<'_> {
    fn read<'a>(
        &'a self,
        entry: &'a TocEntry,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, StartupError>> {
        Box::pin(async move {
            self.fetch(entry, limit)
                .await
                .map_err(|reason| StartupError::Read {
                    path: entry.entry.path.clone(),
                    reason,
                })
        })
    }
}

impl StartupOrders {
    /// The start-up order of `image` (paths, first needed first); empty when
    /// it cannot be computed (logged: a bundle is never refused for it).
    pub async fn order(
        &self,
        db: &Arc<Db>,
        registry: &RegistryClient,
        image: &ImageRecord,
        reference: &str,
    ) -> Arc<Vec<String>> {
        let cell = {
            let mut orders = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
            if orders.len() >= MAX_IMAGES && !orders.contains_key(&image.manifest_digest) {
                orders.clear();
            }
            orders
                .entry(image.manifest_digest.clone())
                .or_default()
                .clone()
        };
        cell.get_or_init(|| async {
            let started = Instant::now();
            let db = db.clone();
            let digest = image.manifest_digest.clone();
            let toc = match tokio::task::spawn_blocking(move || db.merged_toc(&digest)).await {
                Ok(Ok(toc)) => toc,
                Ok(Err(e)) => {
                    warn!(image = %image.manifest_digest, "start-up order: {e}");
                    return Arc::new(Vec::new());
                }
                Err(e) => {
                    warn!(image = %image.manifest_digest, "start-up order: {e}");
                    return Arc::new(Vec::new());
                }
            };
            let reader = RegistryReader {
                registry,
                image,
                reference,
            };
            match analyze(&image.config_raw, &toc, &reader, StartupLimits::default()).await {
                Ok(order) => {
                    info!(
                        image = %image.manifest_digest,
                        executable = order.executable.as_deref().unwrap_or("-"),
                        paths = order.paths.len(),
                        unresolved = ?order.unresolved,
                        files_read = order.files_read,
                        bytes_read = order.bytes_read,
                        ms = started.elapsed().as_millis() as u64,
                        "static start-up order"
                    );
                    Arc::new(order.paths)
                }
                Err(e) => {
                    warn!(image = %image.manifest_digest, "start-up order: {e}");
                    Arc::new(Vec::new())
                }
            }
        })
        .await
        .clone()
    }
}
