//! Indexes a converted image from the registry into the directory database:
//! per layer every entry (metadata, content SHA-256 and the byte range of
//! its compressed member), per image the merged table of contents.
//!
//! Each new layer blob is streamed to a temporary file, then scanned from
//! that file: memory holds entry metadata only, never a layer. A layer
//! already in the database (shared with another image) is neither
//! downloaded nor scanned again. Everything for one image is written in one
//! batch at the end; on any error nothing is written.
//!
//! A layer descriptor's `io.starlight.toc.digest` annotation (written by
//! `starlight convert`, see [`transport_quic::commit`]) must be the digest
//! of the table scanned from the blob (or stored for it): a manifest that
//! commits to another table is refused. A layer without the annotation is
//! indexed with a warning; workers refuse to pull such an image.

use crate::config::IndexConfig;
use crate::db::{Db, DbError, ImageRecord, ImageWrite, LayerRecord, LayerRef, TocEntry};
use crate::format::budget::{layer_cost, BudgetExceeded, BudgetKind, Budgets, LayerMeter};
use crate::format::commit::{check_toc_annotation, AnnotationCheck};
use crate::format::{self, Compression, Entry, EntryKind, FormatError};
use crate::merge::merge_layers;
use crate::registry::{RegistryClient, RegistryError};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod gate;
pub use gate::{GateFull, JobGate};
use transport_quic::commit::TOC_DIGEST_ANNOTATION;

/// Errors of indexing; each names the image, and the layer when one is concerned.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The registry failed to resolve the image.
    #[error("image {image}: {source}")]
    Resolve {
        /// The image reference.
        image: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The manifest or config is unusable.
    #[error("image {image}: {message}")]
    Image {
        /// The image reference.
        image: String,
        /// What is wrong.
        message: String,
    },
    /// A layer is unusable (media type, digest, size, diff ID).
    #[error("image {image} layer {layer}: {message}")]
    Layer {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: String,
        /// What is wrong.
        message: String,
    },
    /// The layer blob could not be downloaded (or failed verification).
    #[error("image {image} layer {layer}: download failed: {source}")]
    Download {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The blob is a valid layer but not in the Starlight format.
    #[error("image {image} layer {layer}: {source}; convert it with `starlight convert`")]
    NotStarlight {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: String,
        /// Why the blob does not qualify.
        source: FormatError,
    },
    /// The blob is not a readable layer (truncated, corrupt, unsafe paths...).
    #[error("image {image} layer {layer}: {source}")]
    Format {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: String,
        /// The format error.
        source: FormatError,
    },
    /// A temporary file could not be created.
    #[error("image {image}: temporary file in {dir}: {source}")]
    TempFile {
        /// The image reference.
        image: String,
        /// The temporary directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Indexing the image would exceed a budget (`[index]` in the config).
    #[error("image {image} layer {layer}: refused: {source}")]
    Budget {
        /// The image reference.
        image: String,
        /// The layer being indexed when the budget ran out.
        layer: String,
        /// The budget, its limit and what was used.
        source: BudgetExceeded,
    },
    /// Too many indexing jobs run and wait already.
    #[error("image {image}: not indexed now: {source}")]
    Busy {
        /// The image reference.
        image: String,
        /// The gate's limits.
        source: GateFull,
    },
    /// The database failed.
    #[error("image {image}: {source}")]
    Db {
        /// The image reference.
        image: String,
        /// The database error.
        source: DbError,
    },
}

/// Counts over a merged table of contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TocSummary {
    /// Entries in the merged table of contents (the root included).
    pub entries: usize,
    /// Directories.
    pub dirs: usize,
    /// Regular files (hard links excluded).
    pub files: usize,
    /// Regular files with no content.
    pub empty_files: usize,
    /// Symbolic links.
    pub symlinks: usize,
    /// Hard links.
    pub hardlinks: usize,
    /// Character and block devices.
    pub devices: usize,
    /// Named pipes.
    pub fifos: usize,
    /// Sum of the sizes of regular files (hard links excluded).
    pub file_bytes: u64,
    /// Distinct contents (by SHA-256) among files and hard links.
    pub distinct_contents: usize,
    /// Sum of the sizes of the distinct contents.
    pub distinct_content_bytes: u64,
    /// Layers of the image.
    pub layers: usize,
    /// Sum of the compressed layer sizes.
    pub compressed_bytes: u64,
}

impl TocSummary {
    /// Summarizes a merged table of contents over `layers`.
    pub fn new(toc: &[TocEntry], layers: &[LayerRef]) -> TocSummary {
        let mut s = TocSummary {
            entries: toc.len(),
            layers: layers.len(),
            compressed_bytes: layers.iter().map(|l| l.size).sum(),
            ..TocSummary::default()
        };
        let mut contents = BTreeSet::new();
        for t in toc {
            let e = &t.entry;
            match e.kind {
                EntryKind::Dir => s.dirs += 1,
                EntryKind::File => {
                    s.files += 1;
                    s.file_bytes += e.size;
                    if e.size == 0 {
                        s.empty_files += 1;
                    }
                }
                EntryKind::Symlink => s.symlinks += 1,
                EntryKind::Hardlink => s.hardlinks += 1,
                EntryKind::CharDev | EntryKind::BlockDev => s.devices += 1,
                EntryKind::Fifo => s.fifos += 1,
            }
            if let Some(c) = e.content {
                if contents.insert(c.sha256) {
                    s.distinct_content_bytes += e.size;
                }
            }
        }
        s.distinct_contents = contents.len();
        s
    }
}

impl fmt::Display for TocSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "entries            {}", self.entries)?;
        writeln!(
            f,
            "  by kind          {} dirs, {} files ({} empty), {} symlinks, {} hard links, {} devices, {} fifos",
            self.dirs, self.files, self.empty_files, self.symlinks, self.hardlinks, self.devices, self.fifos
        )?;
        writeln!(
            f,
            "regular files      {} ({} bytes)",
            self.files, self.file_bytes
        )?;
        writeln!(
            f,
            "distinct contents  {} ({} bytes)",
            self.distinct_contents, self.distinct_content_bytes
        )?;
        write!(
            f,
            "layers             {} ({} bytes compressed)",
            self.layers, self.compressed_bytes
        )
    }
}

/// What [`index_image`] did.
#[derive(Debug, Clone)]
pub struct IndexReport {
    /// The reference indexed.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Platform of the image.
    pub platform: String,
    /// Layers downloaded and scanned by this run.
    pub layers_indexed: usize,
    /// Layers found already indexed (shared with another image, or re-indexing).
    pub layers_reused: usize,
    /// Entries in the merged table of contents.
    pub entries: usize,
    /// Counts over the merged table of contents.
    pub summary: TocSummary,
}

impl fmt::Display for IndexReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image              {}", self.reference)?;
        writeln!(f, "manifest           {}", self.manifest_digest)?;
        writeln!(f, "platform           {}", self.platform)?;
        writeln!(
            f,
            "layers indexed     {} new, {} already indexed",
            self.layers_indexed, self.layers_reused
        )?;
        write!(f, "{}", self.summary)
    }
}

/// The compression a layer media type announces, if Starlight can serve it.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Runs indexing jobs within budgets: at most `max_jobs` at once (more
/// wait, up to `max_waiting`), each refused as soon as it exceeds a budget.
#[derive(Debug)]
pub struct Indexer {
    budgets: Budgets,
    gate: JobGate,
}

impl Indexer {
    /// An indexer with the budgets and limits of `config`.
    pub fn new(config: &IndexConfig) -> Self {
        Indexer {
            budgets: Budgets {
                layer_metadata: config.layer_metadata_bytes.0,
                image_metadata: config.image_metadata_bytes.0,
                layer_uncompressed: config.layer_uncompressed_bytes.0,
                image_uncompressed: config.image_uncompressed_bytes.0,
            },
            gate: JobGate::new(config.max_jobs.get(), config.max_waiting),
        }
    }

    /// The budgets of each job.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// The gate jobs pass.
    pub fn gate(&self) -> &JobGate {
        &self.gate
    }

    /// Indexes `reference` (one platform: `platform`, default the host's)
    /// from the registry into `db`, once a job slot is free. Re-indexing is
    /// idempotent; layers already in the database are reused. Temporary
    /// blob files go to the system temporary directory.
    pub async fn index(
        &self,
        client: &RegistryClient,
        db: &Db,
        reference: &str,
        platform: Option<&str>,
    ) -> Result<IndexReport, IndexError> {
        self.index_in(client, db, reference, platform, &std::env::temp_dir())
            .await
    }

    /// [`Indexer::index`] with the temporary blob files in `tmp_dir`.
    pub async fn index_in(
        &self,
        client: &RegistryClient,
        db: &Db,
        reference: &str,
        platform: Option<&str>,
        tmp_dir: &Path,
    ) -> Result<IndexReport, IndexError> {
        let _slot = self.gate.enter().await.map_err(|source| {
            tracing::warn!(image = reference, "indexing refused: {source}");
            IndexError::Busy {
                image: reference.to_string(),
                source,
            }
        })?;
        index_within(client, db, reference, platform, tmp_dir, self.budgets).await
    }
}

static INDEXER: OnceLock<Indexer> = OnceLock::new();

/// Sets the process's indexer (used by [`index_image`]) from `config`;
/// call once at start-up, before any indexing. Returns false (and changes
/// nothing) if the indexer was already set or used.
pub fn configure(config: &IndexConfig) -> bool {
    INDEXER.set(Indexer::new(config)).is_ok()
}

/// The process's indexer: as [`configure`]d, or with the default budgets.
pub fn indexer() -> &'static Indexer {
    INDEXER.get_or_init(|| Indexer::new(&IndexConfig::default()))
}

/// Indexes `reference` with the process's [`indexer`] (its budgets and its
/// cap on concurrent jobs); see [`Indexer::index`].
pub async fn index_image(
    client: &RegistryClient,
    db: &Db,
    reference: &str,
    platform: Option<&str>,
) -> Result<IndexReport, IndexError> {
    indexer().index(client, db, reference, platform).await
}

/// [`index_image`] with the temporary blob files in `tmp_dir`.
pub async fn index_image_in(
    client: &RegistryClient,
    db: &Db,
    reference: &str,
    platform: Option<&str>,
    tmp_dir: &Path,
) -> Result<IndexReport, IndexError> {
    indexer()
        .index_in(client, db, reference, platform, tmp_dir)
        .await
}

/// What one image's indexing has used of its budgets so far.
#[derive(Debug, Default, Clone, Copy)]
struct ImageUse {
    metadata: u64,
    uncompressed: u64,
}

impl ImageUse {
    /// Charges a layer loaded whole (from the database, or repeated in the
    /// image) before it is held in memory again.
    fn charge_loaded(
        &mut self,
        budgets: &Budgets,
        entries: &[Entry],
    ) -> Result<(), BudgetExceeded> {
        let cost = layer_cost(entries);
        let image = self.metadata.saturating_add(cost);
        for (kind, used, limit) in [
            (BudgetKind::LayerMetadata, cost, budgets.layer_metadata),
            (BudgetKind::ImageMetadata, image, budgets.image_metadata),
        ] {
            if used > limit {
                return Err(BudgetExceeded { kind, limit, used });
            }
        }
        self.metadata = image;
        Ok(())
    }
}

async fn index_within(
    client: &RegistryClient,
    db: &Db,
    reference: &str,
    platform: Option<&str>,
    tmp_dir: &Path,
    budgets: Budgets,
) -> Result<IndexReport, IndexError> {
    let image_err = |message: String| IndexError::Image {
        image: reference.to_string(),
        message,
    };
    let layer_err = |layer: &str, message: String| IndexError::Layer {
        image: reference.to_string(),
        layer: layer.to_string(),
        message,
    };
    let db_err = |source| IndexError::Db {
        image: reference.to_string(),
        source,
    };

    let resolved = client
        .resolve_image(reference, platform)
        .await
        .map_err(|source| IndexError::Resolve {
            image: reference.to_string(),
            source,
        })?;
    let diff_ids = config_diff_ids(&resolved.config_raw).map_err(image_err)?;
    let descriptors = resolved.manifest.layers();
    if diff_ids.len() != descriptors.len() {
        return Err(image_err(format!(
            "manifest {} has {} layers but its config lists {} diff IDs",
            resolved.manifest_digest,
            descriptors.len(),
            diff_ids.len()
        )));
    }
    if u32::try_from(descriptors.len()).is_err() {
        return Err(image_err(format!(
            "{} layers is too many",
            descriptors.len()
        )));
    }
    tracing::info!(image = reference, manifest = %resolved.manifest_digest, layers = descriptors.len(), "indexing");

    let tmp = tempfile::Builder::new()
        .prefix("starlight-index-")
        .tempdir_in(tmp_dir)
        .map_err(|source| IndexError::TempFile {
            image: reference.to_string(),
            dir: tmp_dir.to_path_buf(),
            source,
        })?;

    let mut layer_refs = Vec::with_capacity(descriptors.len());
    let mut layer_entries: Vec<Vec<Entry>> = Vec::with_capacity(descriptors.len());
    // New layers' records, with the index of their entries in `layer_entries`.
    let mut new_layers: Vec<(LayerRecord, usize)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut indexed, mut reused) = (0, 0);
    let mut used = ImageUse::default();
    let budget_err = |layer: &str, source| IndexError::Budget {
        image: reference.to_string(),
        layer: layer.to_string(),
        source,
    };

    for (desc, diff_id) in descriptors.iter().zip(&diff_ids) {
        let digest = desc.digest().to_string();
        let size = desc.size();
        let media_type = desc.media_type().to_string();
        let compression = layer_compression(&media_type).ok_or_else(|| {
            layer_err(
                &digest,
                format!(
                    "media type {media_type} is not tar+gzip or tar+zstd: not in Starlight format; convert it with `starlight convert`"
                ),
            )
        })?;
        layer_refs.push(LayerRef {
            digest: digest.clone(),
            size,
            compression,
        });

        let stored = match seen.get(&digest) {
            Some(&i) => {
                used.charge_loaded(&budgets, &layer_entries[i])
                    .map_err(|e| budget_err(&digest, e))?;
                Some(layer_entries[i].clone())
            }
            None => match db.layer(&digest).map_err(db_err)? {
                Some(rec) => {
                    check_record(&rec, size, compression, diff_id)
                        .map_err(|m| layer_err(&digest, m))?;
                    let entries = db.layer_entries(&digest).map_err(db_err)?;
                    if entries.len() as u64 != rec.entries {
                        return Err(layer_err(
                            &digest,
                            format!(
                                "database holds {} entries, its record says {}",
                                entries.len(),
                                rec.entries
                            ),
                        ));
                    }
                    used.charge_loaded(&budgets, &entries)
                        .map_err(|e| budget_err(&digest, e))?;
                    reused += 1;
                    Some(entries)
                }
                None => None,
            },
        };
        let entries = match stored {
            Some(entries) => entries,
            None => {
                let path = tmp.path().join(digest.replace(':', "-"));
                client
                    .download_blob(reference, &digest, Some(size), &path)
                    .await
                    .map_err(|source| IndexError::Download {
                        image: reference.to_string(),
                        layer: digest.clone(),
                        source,
                    })?;
                let (scanned, layer_use) = scan_file(path.clone(), budgets, used).await;
                let scanned = scanned.map_err(|e| classify(reference, &digest, e))?;
                used = layer_use;
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary blob");
                }
                if scanned.digest != digest || scanned.size != size {
                    return Err(layer_err(
                        &digest,
                        format!(
                            "blob has digest {} and size {}, the manifest says size {size}",
                            scanned.digest, scanned.size
                        ),
                    ));
                }
                if scanned.compression != compression {
                    return Err(layer_err(
                        &digest,
                        format!(
                            "blob is {:?}-compressed but its media type is {media_type}",
                            scanned.compression
                        ),
                    ));
                }
                if &scanned.diff_id != diff_id {
                    return Err(layer_err(
                        &digest,
                        format!(
                            "uncompressed digest {} differs from the config's diff ID {diff_id}",
                            scanned.diff_id
                        ),
                    ));
                }
                let record = LayerRecord {
                    digest: digest.clone(),
                    compression,
                    size,
                    diff_id: diff_id.clone(),
                    entries: scanned.entries.len() as u64,
                };
                indexed += 1;
                tracing::info!(image = reference, layer = %digest, entries = record.entries, "layer scanned");
                new_layers.push((record, layer_entries.len()));
                scanned.entries
            }
        };
        // The manifest commits to the layer's table of contents: refuse a
        // manifest whose annotation does not describe what was scanned.
        let annotation = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(TOC_DIGEST_ANNOTATION))
            .map(String::as_str);
        if check_toc_annotation(annotation, &entries).map_err(|m| layer_err(&digest, m))?
            == AnnotationCheck::Missing
        {
            tracing::warn!(image = reference, layer = %digest, "the layer has no {TOC_DIGEST_ANNOTATION} annotation: workers will refuse the image; convert it again with `starlight convert`");
        }
        seen.entry(digest).or_insert(layer_entries.len());
        layer_entries.push(entries);
    }
    drop(tmp);

    let toc = merge_layers(&layer_entries);
    let new_layers = new_layers
        .into_iter()
        .map(|(record, i)| (record, std::mem::take(&mut layer_entries[i])))
        .collect();
    drop(layer_entries);
    let summary = TocSummary::new(&toc, &layer_refs);
    let image = ImageRecord {
        manifest_digest: resolved.manifest_digest.clone(),
        references: vec![],
        manifest_media_type: resolved.manifest_media_type.clone(),
        manifest_raw: resolved.manifest_raw.clone(),
        config_raw: resolved.config_raw.clone(),
        platform: resolved.platform.clone(),
        layers: layer_refs,
        toc_entries: toc.len() as u64,
    };
    let entries = toc.len();
    db.commit_image(ImageWrite {
        reference: reference.to_string(),
        image,
        toc,
        new_layers,
    })
    .map_err(db_err)?;
    Ok(IndexReport {
        reference: reference.to_string(),
        manifest_digest: resolved.manifest_digest,
        platform: resolved.platform,
        layers_indexed: indexed,
        layers_reused: reused,
        entries,
        summary,
    })
}

/// The `rootfs.diff_ids` of an image config.
fn config_diff_ids(config_raw: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(config_raw).map_err(|e| format!("config is not JSON: {e}"))?;
    let ids = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or("config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("config diff ID {d} is not a string"))
        })
        .collect()
}

/// Checks a stored layer record against the manifest and config.
fn check_record(
    rec: &LayerRecord,
    size: u64,
    compression: Compression,
    diff_id: &str,
) -> Result<(), String> {
    if rec.size != size {
        return Err(format!(
            "manifest says size {size}, the indexed blob has {}",
            rec.size
        ));
    }
    if rec.compression != compression {
        return Err(format!(
            "manifest says {compression:?}, the indexed blob is {:?}",
            rec.compression
        ));
    }
    if rec.diff_id != diff_id {
        return Err(format!(
            "config diff ID {diff_id} differs from the indexed blob's {}",
            rec.diff_id
        ));
    }
    Ok(())
}

/// Scans a downloaded blob on the blocking pool, within what the image has
/// left of its budgets; returns the image's use with this layer's added.
async fn scan_file(
    path: PathBuf,
    budgets: Budgets,
    before: ImageUse,
) -> (Result<format::ScannedLayer, FormatError>, ImageUse) {
    let task = tokio::task::spawn_blocking(move || {
        let meter = LayerMeter::new(budgets, before.metadata, before.uncompressed);
        let scanned = std::fs::File::open(&path)
            .map_err(FormatError::Io)
            .and_then(|file| {
                let blob = std::io::BufReader::with_capacity(1 << 20, file);
                format::scan_layer_metered(blob, &meter)
            });
        let after = ImageUse {
            metadata: before.metadata.saturating_add(meter.metadata()),
            uncompressed: before.uncompressed.saturating_add(meter.uncompressed()),
        };
        (scanned, after)
    });
    match task.await {
        Ok(done) => done,
        Err(e) => (
            Err(FormatError::Io(std::io::Error::other(format!(
                "scan task failed: {e}"
            )))),
            before,
        ),
    }
}

fn classify(image: &str, layer: &str, source: FormatError) -> IndexError {
    let (image, layer) = (image.to_string(), layer.to_string());
    match source {
        FormatError::Budget(source) => {
            tracing::warn!(image, layer, "indexing refused: {source}");
            IndexError::Budget {
                image,
                layer,
                source,
            }
        }
        FormatError::NotStarlight { .. } => IndexError::NotStarlight {
            image,
            layer,
            source,
        },
        source => IndexError::Format {
            image,
            layer,
            source,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Compile-time check: indexing can run on a multi-threaded runtime
    /// (a server spawns it), so its future must be `Send`.
    #[allow(dead_code)]
    fn index_future_is_send(client: &RegistryClient, db: &Db) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&index_image(client, db, "x", None));
    }
    use crate::format::ContentRef;

    fn entry(path: &str, kind: EntryKind, size: u64, sha: Option<u8>) -> TocEntry {
        TocEntry {
            entry: Entry {
                size,
                content: sha.map(|b| ContentRef {
                    sha256: [b; 32],
                    offset: 0,
                    compressed_len: 1,
                }),
                ..Entry::new(path, kind, 0o644)
            },
            layer: 0,
        }
    }

    #[test]
    fn summary_counts_kinds_and_distinct_contents() {
        let toc = vec![
            entry("", EntryKind::Dir, 0, None),
            entry("a", EntryKind::File, 10, Some(1)),
            entry("b", EntryKind::File, 10, Some(1)),
            entry("c", EntryKind::File, 5, Some(2)),
            entry("d", EntryKind::File, 0, None),
            entry("e", EntryKind::Hardlink, 5, Some(2)),
            entry("f", EntryKind::Symlink, 0, None),
            entry("g", EntryKind::CharDev, 0, None),
            entry("h", EntryKind::Fifo, 0, None),
        ];
        let layers = vec![
            LayerRef {
                digest: "sha256:a".into(),
                size: 100,
                compression: Compression::Gzip,
            },
            LayerRef {
                digest: "sha256:b".into(),
                size: 23,
                compression: Compression::Gzip,
            },
        ];
        let s = TocSummary::new(&toc, &layers);
        assert_eq!(
            s,
            TocSummary {
                entries: 9,
                dirs: 1,
                files: 4,
                empty_files: 1,
                symlinks: 1,
                hardlinks: 1,
                devices: 1,
                fifos: 1,
                file_bytes: 25,
                distinct_contents: 2,
                distinct_content_bytes: 15,
                layers: 2,
                compressed_bytes: 123,
            }
        );
        let text = s.to_string();
        assert!(text.contains("distinct contents  2 (15 bytes)"), "{text}");
    }

    #[test]
    fn media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            None
        );
    }

    #[test]
    fn diff_ids_from_config() {
        let ids =
            config_diff_ids(br#"{"rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b"]}}"#)
                .unwrap();
        assert_eq!(ids, vec!["sha256:a", "sha256:b"]);
        assert!(config_diff_ids(b"{}").unwrap_err().contains("rootfs"));
        assert!(config_diff_ids(b"nope").unwrap_err().contains("JSON"));
        assert!(config_diff_ids(br#"{"rootfs":{"diff_ids":[1]}}"#).is_err());
    }

    #[test]
    fn stored_records_are_checked() {
        let rec = LayerRecord {
            digest: "sha256:a".into(),
            compression: Compression::Gzip,
            size: 10,
            diff_id: "sha256:d".into(),
            entries: 0,
        };
        assert!(check_record(&rec, 10, Compression::Gzip, "sha256:d").is_ok());
        assert!(check_record(&rec, 11, Compression::Gzip, "sha256:d").is_err());
        assert!(check_record(&rec, 10, Compression::Zstd, "sha256:d").is_err());
        assert!(check_record(&rec, 10, Compression::Gzip, "sha256:e")
            .unwrap_err()
            .contains("sha256:e"));
    }
}
