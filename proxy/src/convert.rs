//! Image-level conversion: reads an image (one manifest or every platform of
//! an index) from a registry, converts each layer to the Starlight format
//! and pushes the converted image to another reference.
//!
//! Every converted layer descriptor carries two annotations:
//! `org.starlight.layer.format` = `v1`, and `io.starlight.toc.digest` =
//! `sha256:<hex>`, the digest of the layer's canonical table of contents
//! ([`transport_quic::commit`]) computed by scanning the converted blob as
//! the proxy's indexer will. Since the manifest digest covers them, the
//! image commits to its file tables, and workers check every bundle header
//! against them.
//!
//! Layers go through temporary files (download → convert → push), so memory
//! stays bounded whatever the layer size. Everything is pushed by digest
//! first; the destination tag is pushed last, only once everything else
//! succeeded, so a failure never leaves a half-pushed tag.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::format::{self, Compression, ConvertOptions, ConvertedLayer, FormatError};
use crate::registry::{
    self, parse_reference, FetchedManifest, Platform, PlatformManifest, RegistryClient,
    RegistryError, ResolvedImage, OCI_INDEX, OCI_MANIFEST,
};

/// Annotation put on every converted layer descriptor.
pub const LAYER_FORMAT_ANNOTATION: &str = "org.starlight.layer.format";
/// Value of [`LAYER_FORMAT_ANNOTATION`] for this version of the format.
pub const LAYER_FORMAT_VERSION: &str = "v1";
pub use transport_quic::commit::TOC_DIGEST_ANNOTATION;
/// Media type of the converted image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a converted gzip layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a converted zstd layer.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Layer media types accepted as conversion input.
const SOURCE_LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// Which platforms of a source index to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformSelection {
    /// Every image manifest of the index (a single manifest is converted as is).
    All,
    /// Only this platform, `os/arch[/variant]`.
    One(String),
}

impl PlatformSelection {
    /// Parses `all` or `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s == "all" {
            return Ok(PlatformSelection::All);
        }
        Platform::parse(s).map(|p| PlatformSelection::One(p.to_string()))
    }
}

/// Options of [`convert_image`].
#[derive(Debug, Clone)]
pub struct ConvertImageOptions {
    /// Compression of the converted layers (gzip or zstd).
    pub compression: Compression,
    /// Compression level (the format's default when `None`).
    pub level: Option<i32>,
    /// Platforms to convert.
    pub platforms: PlatformSelection,
    /// Draw a progress bar per layer (on stderr) instead of log lines.
    pub progress: bool,
    /// Directory for temporary files (the system's when `None`).
    pub work_dir: Option<PathBuf>,
    /// Layers converted at once (0: the number of CPUs, at most 4). Each
    /// one in flight holds its source and output in `work_dir`.
    pub jobs: usize,
}

impl ConvertImageOptions {
    /// The number of layers to convert at once.
    pub fn effective_jobs(&self) -> usize {
        match self.jobs {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            n => n,
        }
    }
}

impl Default for ConvertImageOptions {
    fn default() -> Self {
        ConvertImageOptions {
            compression: Compression::Gzip,
            level: None,
            platforms: PlatformSelection::All,
            progress: false,
            work_dir: None,
            jobs: 0,
        }
    }
}

/// Errors of [`convert_image`].
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A registry operation failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A layer could not be converted.
    #[error("layer {index}/{count} {digest} of {image} ({platform}): {error}")]
    Layer {
        /// The source image.
        image: String,
        /// Its platform.
        platform: String,
        /// 1-based position of the layer.
        index: usize,
        /// Number of layers.
        count: usize,
        /// Digest of the source layer.
        digest: String,
        /// What went wrong.
        error: FormatError,
    },
    /// The source image cannot be converted as it is.
    #[error("{image}: {reason}")]
    Invalid {
        /// The image concerned.
        image: String,
        /// Why.
        reason: String,
    },
    /// Local file I/O failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// One converted layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// Digest of the source blob.
    pub source_digest: String,
    /// Media type of the source blob.
    pub source_media_type: String,
    /// Size of the source blob.
    pub source_size: u64,
    /// Digest of the converted blob.
    pub digest: String,
    /// Size of the converted blob.
    pub size: u64,
    /// `sha256:` of the converted layer's uncompressed tar.
    pub diff_id: String,
    /// Tar entries in the layer.
    pub entries: u64,
    /// Regular files with content.
    pub files: u64,
    /// Whether the blob was uploaded (false: the registry already had it).
    pub uploaded: bool,
    /// Digest of the layer's canonical table of contents, written as the
    /// layer's [`TOC_DIGEST_ANNOTATION`] (`sha256:<hex>`).
    pub toc_digest: String,
}

/// One converted platform image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformReport {
    /// Platform, `os/arch[/variant]`.
    pub platform: String,
    /// Digest of the source image manifest.
    pub source_manifest: String,
    /// Digest of the converted image manifest.
    pub manifest_digest: String,
    /// Size of the converted image manifest.
    pub manifest_size: u64,
    /// Digest of the converted config.
    pub config_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerReport>,
}

impl PlatformReport {
    /// Total size of the source layers.
    pub fn source_size(&self) -> u64 {
        self.layers.iter().map(|l| l.source_size).sum()
    }

    /// Total size of the converted layers.
    pub fn converted_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What [`convert_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// The source reference.
    pub source: String,
    /// The destination reference (tagged).
    pub destination: String,
    /// Compression of the converted layers.
    pub compression: Compression,
    /// The converted platform images.
    pub platforms: Vec<PlatformReport>,
    /// Digest of the converted index when one was pushed.
    pub index_digest: Option<String>,
    /// Digest the destination tag points to (index or manifest).
    pub tagged_digest: String,
}

impl ConvertReport {
    /// Total size of all source layers.
    pub fn source_size(&self) -> u64 {
        self.platforms.iter().map(|p| p.source_size()).sum()
    }

    /// Total size of all converted layers.
    pub fn converted_size(&self) -> u64 {
        self.platforms.iter().map(|p| p.converted_size()).sum()
    }

    /// Converted size / source size (1.0 for an image without layers).
    pub fn ratio(&self) -> f64 {
        ratio(self.converted_size(), self.source_size())
    }
}

fn ratio(converted: u64, source: u64) -> f64 {
    if source == 0 {
        1.0
    } else {
        converted as f64 / source as f64
    }
}

fn overhead(converted: u64, source: u64) -> String {
    format!("{:+.2}%", (ratio(converted, source) - 1.0) * 100.0)
}

fn short(digest: &str) -> &str {
    let end = digest.len().min("sha256:".len() + 12);
    &digest[..end]
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "converted {} -> {} ({})",
            self.source,
            self.destination,
            compression_name(self.compression)
        )?;
        for p in &self.platforms {
            writeln!(f, "platform {}  manifest {}", p.platform, p.manifest_digest)?;
            writeln!(
                f,
                "  {:>3}  {:<19}  {:>12}  {:<19}  {:>12}  {:>8}  {:>7}  {:>7}",
                "#",
                "source layer",
                "source B",
                "converted layer",
                "converted B",
                "overhead",
                "entries",
                "files"
            )?;
            for (i, l) in p.layers.iter().enumerate() {
                writeln!(
                    f,
                    "  {:>3}  {:<19}  {:>12}  {:<19}  {:>12}  {:>8}  {:>7}  {:>7}",
                    i + 1,
                    short(&l.source_digest),
                    l.source_size,
                    short(&l.digest),
                    l.size,
                    overhead(l.size, l.source_size),
                    l.entries,
                    l.files
                )?;
            }
            writeln!(
                f,
                "  {:>3}  {:<19}  {:>12}  {:<19}  {:>12}  {:>8}  {:>7}  {:>7}",
                "",
                "total",
                p.source_size(),
                "",
                p.converted_size(),
                overhead(p.converted_size(), p.source_size()),
                p.layers.iter().map(|l| l.entries).sum::<u64>(),
                p.layers.iter().map(|l| l.files).sum::<u64>()
            )?;
        }
        writeln!(
            f,
            "total: {} -> {} bytes, ratio {:.4} ({} overhead)",
            self.source_size(),
            self.converted_size(),
            self.ratio(),
            overhead(self.converted_size(), self.source_size())
        )?;
        write!(f, "tagged {} -> {}", self.destination, self.tagged_digest)
    }
}

/// Progress display: one bar per layer on a terminal, log lines otherwise.
struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    fn layer_bar(&self, prefix: String, len: u64) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(len).with_style(style).with_prefix(prefix));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    fn enabled(&self) -> bool {
        self.multi.is_some()
    }

    /// Runs `log` (a log statement) without tearing the bars.
    fn note(&self, log: impl FnOnce()) {
        match &self.multi {
            Some(multi) => multi.suspend(log),
            None => log(),
        }
    }
}

/// Converts `src` (a single image or an index) into the Starlight format and
/// pushes the result as `dst` (`registry/repository:tag`). See the module
/// documentation for the guarantees.
pub async fn convert_image(
    client: &RegistryClient,
    src: &str,
    dst: &str,
    opts: &ConvertImageOptions,
) -> Result<ConvertReport, ConvertError> {
    if opts.compression == Compression::None {
        return Err(ConvertError::Invalid {
            image: dst.into(),
            reason: "converted layers must be compressed (gzip or zstd)".into(),
        });
    }
    parse_reference(src)?;
    let dst_ref = parse_reference(dst)?;
    if dst_ref.digest().is_some() {
        return Err(ConvertError::Invalid {
            image: dst.into(),
            reason: "the destination must name a tag, not a digest".into(),
        });
    }
    let dst_tag = dst_ref.tag().unwrap_or("latest").to_string();
    let dst_tagged = registry::with_tag(&dst_ref, &dst_tag).whole();
    let progress = Progress {
        multi: opts.progress.then(MultiProgress::new),
    };

    let top = client.fetch_manifest(src).await?;
    let (platforms, index_digest, tagged_digest) = if top.is_index() {
        convert_index(client, src, dst, &dst_tagged, &top, opts, &progress).await?
    } else {
        let image = resolved_from_top(client, src, top).await?;
        if let PlatformSelection::One(want) = &opts.platforms {
            let want_p = Platform::parse(want)?;
            if !want_p.matches(&image.platform) {
                return Err(ConvertError::Invalid {
                    image: src.into(),
                    reason: format!("the image is for {} only, not {want}", image.platform),
                });
            }
        }
        let mut done = LayerCache::new();
        let (report, manifest) =
            convert_platform(client, &image, dst, opts, &progress, &mut done).await?;
        progress.note(|| tracing::info!(destination = %dst_tagged, digest = %report.manifest_digest, "tagging"));
        client
            .push_manifest(&dst_tagged, manifest, OCI_MANIFEST)
            .await?;
        let digest = report.manifest_digest.clone();
        (vec![report], None, digest)
    };
    Ok(ConvertReport {
        source: src.into(),
        destination: dst_tagged,
        compression: opts.compression,
        platforms,
        index_digest,
        tagged_digest,
    })
}

/// A [`ResolvedImage`] from an already fetched single manifest.
async fn resolved_from_top(
    client: &RegistryClient,
    src: &str,
    top: FetchedManifest,
) -> Result<ResolvedImage, ConvertError> {
    // resolve_image re-fetches by digest so that what we convert is exactly
    // the manifest we looked at, even if the tag moves meanwhile.
    let src_ref = parse_reference(src)?;
    let by_digest = registry::with_digest(&src_ref, &top.digest).whole();
    let mut image = client.resolve_image(&by_digest, None).await?;
    image.reference = src.into();
    Ok(image)
}

/// Converts the selected platforms of index `top`; pushes and tags the new
/// index (all platforms) or tags the one converted manifest.
async fn convert_index(
    client: &RegistryClient,
    src: &str,
    dst: &str,
    dst_tagged: &str,
    top: &FetchedManifest,
    opts: &ConvertImageOptions,
    progress: &Progress,
) -> Result<(Vec<PlatformReport>, Option<String>, String), ConvertError> {
    let entries = registry::index_platforms(src, &top.raw)?;
    let index_json: Value =
        serde_json::from_slice(&top.raw).map_err(|e| ConvertError::Invalid {
            image: src.into(),
            reason: format!("index: {e}"),
        })?;
    let selected: Vec<(usize, &PlatformManifest)> = match &opts.platforms {
        PlatformSelection::All => entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let keep = e.platform != "unknown/unknown";
                if !keep {
                    tracing::info!(image = src, digest = %e.digest, "skipping index entry without platform (not an image)");
                }
                keep
            })
            .collect(),
        PlatformSelection::One(want) => {
            let want_p = Platform::parse(want)?;
            let found = entries.iter().enumerate().find(|(_, e)| want_p.matches(&e.platform));
            match found {
                Some(f) => vec![f],
                None => {
                    return Err(RegistryError::NoSuchPlatform {
                        image: src.into(),
                        platform: want.clone(),
                        available: entries.iter().map(|e| e.platform.as_str()).collect::<Vec<_>>().join(", "),
                    }
                    .into())
                }
            }
        }
    };
    if selected.is_empty() {
        return Err(ConvertError::Invalid {
            image: src.into(),
            reason: "the index holds no image manifest with a platform".into(),
        });
    }
    let mut done = LayerCache::new();
    let mut reports = Vec::new();
    let mut raws = Vec::new();
    let mut descriptors = Vec::new();
    for (pos, entry) in selected {
        let image = client.resolve_platform(src, entry).await?;
        let (report, raw) =
            convert_platform(client, &image, dst, opts, progress, &mut done).await?;
        raws.push(raw);
        let mut desc = json!({
            "mediaType": OCI_MANIFEST,
            "digest": report.manifest_digest,
            "size": report.manifest_size,
        });
        if let Some(platform) = index_json
            .get("manifests")
            .and_then(|m| m.get(pos))
            .and_then(|d| d.get("platform"))
        {
            desc["platform"] = platform.clone();
        }
        descriptors.push(desc);
        reports.push(report);
    }
    if let ([only], [raw]) = (reports.as_slice(), raws.as_slice()) {
        if matches!(opts.platforms, PlatformSelection::One(_)) {
            progress.note(|| tracing::info!(destination = %dst_tagged, digest = %only.manifest_digest, "tagging"));
            client
                .push_manifest(dst_tagged, raw.clone(), OCI_MANIFEST)
                .await?;
            let digest = only.manifest_digest.clone();
            return Ok((reports, None, digest));
        }
    }
    let mut index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    });
    if let Some(ann) = index_json.get("annotations").filter(|a| a.is_object()) {
        index["annotations"] = ann.clone();
    }
    let raw = serde_json::to_vec(&index).map_err(|e| ConvertError::Invalid {
        image: dst.into(),
        reason: format!("serializing index: {e}"),
    })?;
    progress.note(|| tracing::info!(destination = %dst_tagged, digest = %registry::sha256_digest(&raw), "tagging index"));
    let digest = client.push_manifest(dst_tagged, raw, OCI_INDEX).await?;
    Ok((reports, Some(digest.clone()), digest))
}

/// Converts one platform image: every layer, the config and the manifest
/// (pushed by digest, not tagged). Returns the report and the manifest.
async fn convert_platform(
    client: &RegistryClient,
    image: &ResolvedImage,
    dst: &str,
    opts: &ConvertImageOptions,
    progress: &Progress,
    done: &mut LayerCache,
) -> Result<(PlatformReport, Vec<u8>), ConvertError> {
    let src = image.reference.as_str();
    let layers = image.manifest.layers();
    let mut config: Value =
        serde_json::from_slice(&image.config_raw).map_err(|e| ConvertError::Invalid {
            image: src.into(),
            reason: format!("config: {e}"),
        })?;
    let source_diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if source_diff_ids.len() != layers.len() {
        return Err(ConvertError::Invalid {
            image: src.into(),
            reason: format!(
                "config lists {} diff_ids for {} layers",
                source_diff_ids.len(),
                layers.len()
            ),
        });
    }
    let work = match &opts.work_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("starlight-convert")
            .tempdir_in(dir),
        None => tempfile::Builder::new()
            .prefix("starlight-convert")
            .tempdir(),
    }
    .map_err(|error| ConvertError::Io {
        what: "creating a temporary directory".into(),
        error,
    })?;

    progress.note(|| tracing::info!(image = src, platform = %image.platform, layers = layers.len(), "converting"));
    let count = layers.len();
    let mut ctxs = Vec::with_capacity(count);
    for (i, desc) in layers.iter().enumerate() {
        let media_type = desc.media_type().to_string();
        if !SOURCE_LAYER_TYPES.contains(&media_type.as_str()) {
            return Err(ConvertError::Invalid {
                image: src.into(),
                reason: format!(
                    "layer {}/{count} {}: unsupported media type {media_type}",
                    i + 1,
                    desc.digest()
                ),
            });
        }
        ctxs.push(LayerCtx {
            image: src,
            platform: &image.platform,
            index: i + 1,
            count,
            digest: desc.digest().to_string(),
            diff_id: &source_diff_ids[i],
            size: desc.size(),
            media_type,
        });
    }

    // Convert each distinct layer not converted yet (a layer shared by
    // several platforms is converted once), a few at a time.
    let mut todo: Vec<&LayerCtx> = Vec::new();
    for ctx in &ctxs {
        if !done.contains_key(&ctx.digest) && !todo.iter().any(|t| t.digest == ctx.digest) {
            todo.push(ctx);
        }
    }
    let jobs = opts.effective_jobs();
    let work_path = work.path();
    // Boxed so that the future of `convert_image` stays `Send`.
    let mut tasks: Vec<LayerTask<'_>> = Vec::with_capacity(todo.len());
    for ctx in todo {
        tasks.push(Box::pin(async move {
            convert_one_layer(client, ctx, dst, opts, progress, work_path)
                .await
                .map(|r| (ctx.digest.clone(), r))
        }));
    }
    let converted: Vec<(String, (LayerReport, String))> = futures_util::stream::iter(tasks)
        .buffer_unordered(jobs)
        .try_collect()
        .await?;
    let fresh: Vec<String> = converted.iter().map(|(d, _)| d.clone()).collect();
    done.extend(converted);

    let mut reports = Vec::with_capacity(count);
    for ctx in &ctxs {
        let Some((report, source_diff_id)) = done.get(&ctx.digest) else {
            return Err(ConvertError::Invalid {
                image: src.into(),
                reason: format!("{}: not converted", ctx.name()),
            });
        };
        if source_diff_id != ctx.diff_id {
            return Err(ConvertError::Invalid {
                image: src.into(),
                reason: format!(
                    "{}: uncompressed digest {source_diff_id} does not match the config's diff_id {}",
                    ctx.name(),
                    ctx.diff_id
                ),
            });
        }
        // Only the first use of a freshly converted layer counts as uploaded.
        let first_use = fresh.contains(&ctx.digest)
            && !reports
                .iter()
                .any(|r: &LayerReport| r.source_digest == ctx.digest);
        reports.push(LayerReport {
            uploaded: report.uploaded && first_use,
            ..report.clone()
        });
    }

    // Config: the same JSON with only rootfs.diff_ids replaced.
    let new_diff_ids: Vec<Value> = reports
        .iter()
        .map(|l| Value::String(l.diff_id.clone()))
        .collect();
    match config.pointer_mut("/rootfs/diff_ids") {
        Some(d) => *d = Value::Array(new_diff_ids),
        None => {
            return Err(ConvertError::Invalid {
                image: src.into(),
                reason: "config has no rootfs.diff_ids".into(),
            })
        }
    }
    let config_raw = serde_json::to_vec(&config).map_err(|e| ConvertError::Invalid {
        image: src.into(),
        reason: format!("serializing config: {e}"),
    })?;
    let config_size = config_raw.len() as u64;
    let config_digest = client.push_blob_bytes(dst, config_raw).await?;

    // Manifest: OCI, annotated layers, the source's annotations kept.
    let layer_type = match opts.compression {
        Compression::Zstd => LAYER_ZSTD,
        _ => LAYER_GZIP,
    };
    let layer_descs: Vec<Value> = reports
        .iter()
        .map(|l| {
            json!({
                "mediaType": layer_type,
                "digest": l.digest,
                "size": l.size,
                "annotations": {
                    LAYER_FORMAT_ANNOTATION: LAYER_FORMAT_VERSION,
                    TOC_DIGEST_ANNOTATION: l.toc_digest,
                },
            })
        })
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size },
        "layers": layer_descs,
    });
    let source_manifest: Value =
        serde_json::from_slice(&image.manifest_raw).map_err(|e| ConvertError::Invalid {
            image: src.into(),
            reason: format!("manifest: {e}"),
        })?;
    if let Some(ann) = source_manifest.get("annotations").filter(|a| a.is_object()) {
        manifest["annotations"] = ann.clone();
    }
    let manifest_raw = serde_json::to_vec(&manifest).map_err(|e| ConvertError::Invalid {
        image: src.into(),
        reason: format!("serializing manifest: {e}"),
    })?;
    let manifest_size = manifest_raw.len() as u64;
    let dst_ref = parse_reference(dst)?;
    let by_digest =
        registry::with_digest(&dst_ref, &registry::sha256_digest(&manifest_raw)).whole();
    let manifest_digest = client
        .push_manifest(&by_digest, manifest_raw.clone(), OCI_MANIFEST)
        .await?;
    progress.note(|| tracing::info!(image = src, platform = %image.platform, manifest = %manifest_digest, "converted manifest pushed"));
    let report = PlatformReport {
        platform: image.platform.clone(),
        source_manifest: image.manifest_digest.clone(),
        manifest_digest,
        manifest_size,
        config_digest,
        layers: reports,
    };
    Ok((report, manifest_raw))
}

/// One layer's conversion in flight: its source digest, report and the
/// source's diff_id.
type LayerTask<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(String, (LayerReport, String)), ConvertError>>
            + Send
            + 'a,
    >,
>;

/// Layers converted during one run: source digest → report and the
/// source's diff_id.
type LayerCache = std::collections::HashMap<String, (LayerReport, String)>;

/// Names a layer in errors.
struct LayerCtx<'a> {
    image: &'a str,
    platform: &'a str,
    index: usize,
    count: usize,
    digest: String,
    /// The config's diff_id for this layer.
    diff_id: &'a str,
    /// Size of the source blob.
    size: u64,
    /// Media type of the source blob.
    media_type: String,
}

impl LayerCtx<'_> {
    fn error(&self, error: FormatError) -> ConvertError {
        ConvertError::Layer {
            image: self.image.into(),
            platform: self.platform.into(),
            index: self.index,
            count: self.count,
            digest: self.digest.clone(),
            error,
        }
    }

    /// Short form for progress bars and logs.
    fn label(&self) -> String {
        format!(
            "layer {}/{} {}",
            self.index,
            self.count,
            short(&self.digest)
        )
    }

    /// Full form for errors.
    fn name(&self) -> String {
        format!(
            "layer {}/{} {} ({})",
            self.index, self.count, self.digest, self.platform
        )
    }
}

/// Download → convert → push for one layer, through files in `work`.
/// Returns the report and the source's diff_id.
async fn convert_one_layer(
    client: &RegistryClient,
    ctx: &LayerCtx<'_>,
    dst: &str,
    opts: &ConvertImageOptions,
    progress: &Progress,
    work: &Path,
) -> Result<(LayerReport, String), ConvertError> {
    let (size, media_type) = (ctx.size, ctx.media_type.as_str());
    let src_path = work.join(format!("source-{}", ctx.index));
    let out_path = work.join(format!("converted-{}", ctx.index));
    let bar = progress.layer_bar(ctx.label(), size);

    // Download (verified: size and sha256).
    bar.set_message("downloading");
    download_with_progress(client, ctx, size, &src_path, &bar).await?;
    if !progress.enabled() {
        tracing::info!(image = ctx.image, layer = %ctx.label(), bytes = size, "downloaded");
    }

    // Convert in a blocking thread, file to file.
    bar.set_message("converting");
    bar.set_position(0);
    let conv_opts = ConvertOptions {
        compression: opts.compression,
        level: opts.level,
    };
    let (inp, outp, conv_bar) = (src_path.clone(), out_path.clone(), bar.clone());
    let (converted, toc_digest): (ConvertedLayer, String) =
        tokio::task::spawn_blocking(move || -> Result<_, FormatError> {
            let src = BufReader::with_capacity(1 << 20, conv_bar.wrap_read(File::open(&inp)?));
            let out = BufWriter::with_capacity(1 << 20, File::create(&outp)?);
            let converted = format::convert_layer(src, out, &conv_opts)?;
            // The commitment is computed from the blob as written, by the
            // same scanner the proxy's indexer runs: they cannot disagree.
            let scanned =
                format::scan_layer(BufReader::with_capacity(1 << 20, File::open(&outp)?))?;
            Ok((converted, format::commit::toc_annotation(&scanned.entries)))
        })
        .await
        .map_err(|e| ConvertError::Invalid {
            image: ctx.image.into(),
            reason: format!("{}: conversion task failed: {e}", ctx.name()),
        })?
        .map_err(|e| ctx.error(e))?;
    // The source is no longer needed: keep disk use to one layer pair.
    let _ = std::fs::remove_file(&src_path);
    if !progress.enabled() {
        tracing::info!(
            image = ctx.image,
            layer = %ctx.label(),
            source_bytes = size,
            converted_bytes = converted.size,
            entries = converted.entries,
            files = converted.files,
            "converted"
        );
    }

    // The config promises what the layer's tar is: hold it to that.
    if converted.source_diff_id != ctx.diff_id {
        return Err(ConvertError::Invalid {
            image: ctx.image.into(),
            reason: format!(
                "{}: uncompressed digest {} does not match the config's diff_id {}",
                ctx.name(),
                converted.source_diff_id,
                ctx.diff_id
            ),
        });
    }

    // Push (skipped when present).
    bar.set_message("pushing");
    let uploaded = client
        .push_blob_file(dst, &out_path, &converted.digest, converted.size)
        .await?;
    let _ = std::fs::remove_file(&out_path);
    bar.finish_with_message(format!(
        "{} -> {} bytes ({}){}",
        size,
        converted.size,
        overhead(converted.size, size),
        if uploaded { "" } else { ", already present" }
    ));
    if !progress.enabled() {
        tracing::info!(image = ctx.image, layer = %ctx.label(), digest = %converted.digest, uploaded, "pushed");
    }
    let report = LayerReport {
        source_digest: ctx.digest.clone(),
        source_media_type: media_type.into(),
        source_size: size,
        digest: converted.digest,
        size: converted.size,
        diff_id: converted.diff_id,
        entries: converted.entries,
        files: converted.files,
        uploaded,
        toc_digest,
    };
    Ok((report, converted.source_diff_id))
}

/// Streams a layer blob to `dest`, advancing `bar`.
async fn download_with_progress(
    client: &RegistryClient,
    ctx: &LayerCtx<'_>,
    size: u64,
    dest: &Path,
    bar: &ProgressBar,
) -> Result<(), ConvertError> {
    let io_err = |error| ConvertError::Io {
        what: format!(
            "{} of {}: writing {}",
            ctx.name(),
            ctx.image,
            dest.display()
        ),
        error,
    };
    let mut blob = client
        .open_blob_as(ctx.image, &ctx.digest, Some(size), &ctx.name())
        .await?;
    let file = tokio::fs::File::create(dest).await.map_err(io_err)?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = blob.next_chunk().await? {
        file.write_all(&chunk).await.map_err(io_err)?;
        bar.inc(chunk.len() as u64);
    }
    file.flush().await.map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report() -> ConvertReport {
        let layer = |s, c| LayerReport {
            source_digest: format!("sha256:{}", "1".repeat(64)),
            source_media_type: LAYER_GZIP.into(),
            source_size: s,
            digest: format!("sha256:{}", "2".repeat(64)),
            size: c,
            diff_id: format!("sha256:{}", "3".repeat(64)),
            entries: 10,
            files: 7,
            uploaded: true,
            toc_digest: format!("sha256:{}", "4".repeat(64)),
        };
        ConvertReport {
            source: "r/src:1".into(),
            destination: "r/dst:1".into(),
            compression: Compression::Gzip,
            platforms: vec![PlatformReport {
                platform: "linux/amd64".into(),
                source_manifest: "sha256:aa".into(),
                manifest_digest: "sha256:bb".into(),
                manifest_size: 500,
                config_digest: "sha256:cc".into(),
                layers: vec![layer(1000, 1020), layer(3000, 3060)],
            }],
            index_digest: None,
            tagged_digest: "sha256:bb".into(),
        }
    }

    #[test]
    fn totals_and_ratio() {
        let r = report();
        assert_eq!(r.source_size(), 4000);
        assert_eq!(r.converted_size(), 4080);
        assert!((r.ratio() - 1.02).abs() < 1e-9);
        let text = r.to_string();
        assert!(text.contains("+2.00%"), "{text}");
        assert!(text.contains("linux/amd64"), "{text}");
        assert!(text.contains("sha256:111111111111 "), "{text}");
        assert!(text.contains("tagged r/dst:1 -> sha256:bb"), "{text}");
    }

    #[test]
    fn platform_selection_parses() {
        assert_eq!(
            PlatformSelection::parse("all").unwrap(),
            PlatformSelection::All
        );
        assert_eq!(
            PlatformSelection::parse("linux/arm64").unwrap(),
            PlatformSelection::One("linux/arm64".into())
        );
        assert!(PlatformSelection::parse("linux").is_err());
    }

    /// Compile-time check: conversion can run in a spawned task.
    #[allow(dead_code)]
    fn convert_future_is_send(client: &RegistryClient, opts: &ConvertImageOptions) {
        fn is_send<T: Send>(_: T) {}
        is_send(convert_image(client, "a/b:c", "a/b:d", opts));
    }

    #[test]
    fn ratio_of_nothing_is_one() {
        assert_eq!(ratio(0, 0), 1.0);
        assert_eq!(overhead(100, 100), "+0.00%");
        assert_eq!(short("sha256:abc"), "sha256:abc");
    }
}
