//! Finds the wanted and held images in the directory database, indexing the
//! wanted image first when it is not there yet (one indexing job per image,
//! shared by concurrent requests).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::{info, warn};
use transport_quic::quic::HandlerError;
use transport_quic::ErrorCode;

use crate::config::{Config, RegistryConfig};
use crate::db::{Db, ImageRecord};
use crate::index::{index_image, IndexError};
use crate::registry::{parse_reference, Platform, RegistryClient, RegistryError};

/// What the resolver may do on behalf of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvePolicy {
    /// Registry hosts (`HOST[:PORT]`) images may be indexed from. Empty: only the
    /// configured registry host (none configured: no host at all).
    pub allowed_registries: Vec<String>,
    /// Most distinct held images looked at per request (duplicates are dropped first;
    /// names past the cap are ignored, so the bundle just carries more).
    pub max_held_images: usize,
    /// Tags older than this are resolved again against the registry (none: never).
    pub tag_ttl: Option<Duration>,
}

impl Default for ResolvePolicy {
    fn default() -> Self {
        ResolvePolicy {
            allowed_registries: Vec::new(),
            max_held_images: 64,
            tag_ttl: Some(Duration::from_secs(300)),
        }
    }
}

/// The held images a bundle is planned against.
#[derive(Debug, Clone, Default)]
pub struct HeldImages {
    /// Their records, deduplicated by digest.
    pub records: Vec<ImageRecord>,
    /// The worker's name for each record, in the same order.
    pub used: Vec<String>,
}

/// When [`Resolver::index_once`] indexes a reference already in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reindex {
    /// Never: only a reference not indexed yet.
    IfMissing,
    /// When it was resolved longer than the tag TTL ago.
    IfStale,
    /// Always (a Refresh).
    Now,
}

/// Most tags whose resolution time is remembered (the map is cleared when full: the
/// tags are then simply resolved again).
const MAX_REMEMBERED_TAGS: usize = 65_536;

/// `HOST[:PORT]` of a registry setting, lowercased, without scheme or slash.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

/// The outcome of one indexing job, shared by every request waiting on it.
type JobResult = Result<(), HandlerError>;

/// Resolves image names against the database; indexes on demand.
pub struct Resolver {
    db: Arc<Db>,
    registry: Arc<RegistryClient>,
    qualifier: Config,
    jobs: Mutex<HashMap<String, Arc<OnceCell<JobResult>>>>,
    indexed: std::sync::atomic::AtomicU64,
    held_indexed: std::sync::atomic::AtomicU64,
    allowed: Vec<String>,
    policy: ResolvePolicy,
    /// When each tag was last resolved against the registry by this process.
    resolved_at: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// The error sent for a failed indexing job.
pub fn index_error(e: &IndexError) -> HandlerError {
    let code = match e {
        IndexError::NotStarlight { .. } | IndexError::Format { .. } => ErrorCode::NotStarlight,
        IndexError::Layer { message, .. } if message.contains("not in Starlight format") => {
            ErrorCode::NotStarlight
        }
        IndexError::Resolve { source, .. } => match source {
            RegistryError::InvalidReference { .. } => ErrorCode::BadRequest,
            RegistryError::NoSuchPlatform { .. } => ErrorCode::NotFound,
            RegistryError::Request {
                status: Some(status),
                ..
            } => {
                if *status == 404 {
                    ErrorCode::NotFound
                } else {
                    ErrorCode::Upstream
                }
            }
            RegistryError::Request { detail, .. }
                if ["unknown", "not found", "404"]
                    .iter()
                    .any(|w| detail.to_ascii_lowercase().contains(w)) =>
            {
                ErrorCode::NotFound
            }
            _ => ErrorCode::Upstream,
        },
        IndexError::Download { .. } => ErrorCode::Upstream,
        IndexError::Image { .. } | IndexError::Layer { .. } => ErrorCode::NotStarlight,
        IndexError::Budget { .. } => ErrorCode::BadRequest,
        IndexError::Busy { .. } => ErrorCode::Unavailable,
        IndexError::TempFile { .. } | IndexError::Db { .. } => ErrorCode::Internal,
    };
    let message = match e {
        IndexError::Resolve { source, .. } | IndexError::Download { source, .. } => {
            source.public_message()
        }
        e => e.to_string(),
    };
    HandlerError::new(code, format!("cannot index: {message}"))
}

fn db_error(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(ErrorCode::Internal, format!("directory database: {e}"))
}

impl Resolver {
    /// A resolver; bare names are qualified with `registry_host` (`HOST[:PORT]`).
    pub fn new(db: Arc<Db>, registry: Arc<RegistryClient>, registry_host: Option<String>) -> Self {
        Self::with_policy(db, registry, registry_host, ResolvePolicy::default())
    }

    /// A resolver with `policy` (allowed registries, held-image cap, tag TTL).
    pub fn with_policy(
        db: Arc<Db>,
        registry: Arc<RegistryClient>,
        registry_host: Option<String>,
        policy: ResolvePolicy,
    ) -> Self {
        let allowed = if policy.allowed_registries.is_empty() {
            registry_host.iter().map(|h| normalize_host(h)).collect()
        } else {
            policy
                .allowed_registries
                .iter()
                .map(|h| normalize_host(h))
                .collect()
        };
        Resolver {
            allowed,
            policy,
            resolved_at: Mutex::default(),
            db,
            registry,
            qualifier: Config {
                registry: RegistryConfig {
                    url: registry_host,
                    ..RegistryConfig::default()
                },
                ..Config::default()
            },
            jobs: Mutex::new(HashMap::new()),
            indexed: Default::default(),
            held_indexed: Default::default(),
        }
    }

    /// Images indexed on demand so far.
    pub fn indexed(&self) -> u64 {
        self.indexed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `image` with the registry host prefixed when it names none.
    pub fn qualify(&self, image: &str) -> String {
        self.qualifier.qualify(image)
    }

    /// Refuses, before any network access, a reference whose registry is not allowed.
    pub fn check_allowed(&self, reference: &str) -> Result<(), HandlerError> {
        let r = parse_reference(reference)
            .map_err(|e| HandlerError::new(ErrorCode::BadRequest, e.to_string()))?;
        let host = normalize_host(r.registry());
        if self.allowed.contains(&host) {
            return Ok(());
        }
        warn!(image = reference, registry = %host, "registry not allowed: refused");
        Err(HandlerError::new(
            ErrorCode::BadRequest,
            format!(
                "registry {host} is not allowed by this proxy (allowed: {})",
                if self.allowed.is_empty() {
                    "none".to_string()
                } else {
                    self.allowed.join(", ")
                }
            ),
        ))
    }

    /// The tag `image` names, qualified, and its record, when it is indexed.
    fn lookup_tag(&self, image: &str) -> Result<Option<(String, ImageRecord)>, HandlerError> {
        if image.starts_with("sha256:") || image.contains('@') {
            return Ok(None);
        }
        for reference in [image.to_string(), self.qualify(image)] {
            if let Some(r) = self.db.image_by_reference(&reference).map_err(db_error)? {
                return Ok(Some((reference, r)));
            }
        }
        Ok(None)
    }

    /// Whether `reference` was resolved against the registry less than the TTL ago.
    fn fresh(&self, reference: &str) -> bool {
        let Some(ttl) = self.policy.tag_ttl else {
            return true;
        };
        let seen = self
            .resolved_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(reference).is_some_and(|t| t.elapsed() < ttl)
    }

    fn mark_resolved(&self, reference: &str) {
        let mut seen = self
            .resolved_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_REMEMBERED_TAGS && !seen.contains_key(reference) {
            seen.clear();
        }
        seen.insert(reference.to_string(), Instant::now());
    }

    /// Resolves the tag `image` against the registry now (re-indexing it if it moved)
    /// and returns its record: `starlight convert --notify` after a retag.
    pub async fn refresh(&self, image: &str) -> Result<ImageRecord, HandlerError> {
        let reference = match self.lookup_tag(image)? {
            Some((reference, _)) => reference,
            None => self.qualify(image),
        };
        self.check_allowed(&reference)?;
        self.index_once(&reference, None, Reindex::Now).await?;
        self.lookup(&reference)?.ok_or_else(|| {
            HandlerError::new(
                ErrorCode::Internal,
                format!("{reference} was indexed but is not in the database"),
            )
        })
    }

    /// An indexed image by digest (`sha256:...`, or `repo@sha256:...`) or by
    /// reference (as given, then qualified).
    pub fn lookup(&self, image: &str) -> Result<Option<ImageRecord>, HandlerError> {
        if image.starts_with("sha256:") {
            return self.db.image(image).map_err(db_error);
        }
        for reference in [image.to_string(), self.qualify(image)] {
            if let Some(r) = self.db.image_by_reference(&reference).map_err(db_error)? {
                return Ok(Some(r));
            }
        }
        if let Some((_, digest)) = image.rsplit_once('@') {
            if digest.starts_with("sha256:") {
                return self.db.image(digest).map_err(db_error);
            }
        }
        Ok(None)
    }

    /// The wanted image's record, indexing it from the registry first when
    /// needed. `platform` (already validated) must match the record's.
    pub async fn wanted(
        &self,
        image: &str,
        platform: Option<&Platform>,
    ) -> Result<ImageRecord, HandlerError> {
        let stale = match self.lookup_tag(image)? {
            Some((reference, _)) if !self.fresh(&reference) => Some(reference),
            _ => None,
        };
        if let Some(reference) = stale {
            // The tag may have moved since it was indexed: resolve it again. On
            // failure the indexed digest is served (and the error logged).
            if self.check_allowed(&reference).is_ok() {
                if let Err(e) = self
                    .index_once(&reference, platform, Reindex::IfStale)
                    .await
                {
                    warn!(image = %reference, error = %e, "re-resolving the tag failed: serving the indexed digest");
                }
            }
        }
        let record = match self.lookup(image)? {
            Some(r) => r,
            None if image.starts_with("sha256:") => {
                return Err(HandlerError::new(
                    ErrorCode::NotFound,
                    format!(
                    "image {image} is not indexed; ask for it by reference (repository:tag) first"
                ),
                ))
            }
            None => {
                let reference = self.qualify(image);
                self.check_allowed(&reference)?;
                self.index_once(&reference, platform, Reindex::IfMissing)
                    .await?;
                self.lookup(&reference)?.ok_or_else(|| {
                    HandlerError::new(
                        ErrorCode::Internal,
                        format!("{reference} was indexed but is not in the database"),
                    )
                })?
            }
        };
        if let Some(p) = platform {
            if !p.matches(&record.platform) {
                return Err(HandlerError::new(
                    ErrorCode::NotFound,
                    format!(
                        "image {image} is indexed for platform {}, not {p}",
                        record.platform
                    ),
                ));
            }
        }
        Ok(record)
    }

    /// Indexes `reference`, sharing the job with concurrent callers.
    async fn index_once(
        &self,
        reference: &str,
        platform: Option<&Platform>,
        mode: Reindex,
    ) -> Result<(), HandlerError> {
        let cell = {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            jobs.entry(reference.to_string()).or_default().clone()
        };
        let platform = platform.map(ToString::to_string);
        let result = cell
            .get_or_init(|| async {
                // Someone may have finished indexing (or re-resolving) since our lookup.
                let done = match mode {
                    Reindex::IfMissing => true,
                    Reindex::IfStale => self.fresh(reference),
                    Reindex::Now => false,
                };
                if done {
                    if let Ok(Some(_)) = self.db.image_by_reference(reference) {
                        return Ok(());
                    }
                }
                info!(image = reference, ?mode, "indexing");
                let started = std::time::Instant::now();
                match index_image(&self.registry, &self.db, reference, platform.as_deref()).await {
                    Ok(report) => {
                        self.mark_resolved(reference);
                        self.indexed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        info!(
                            image = reference,
                            manifest = %report.manifest_digest,
                            entries = report.entries,
                            ms = started.elapsed().as_millis() as u64,
                            "indexed"
                        );
                        Ok(())
                    }
                    Err(e) => {
                        warn!(image = reference, error = %e, "indexing failed");
                        Err(index_error(&e))
                    }
                }
            })
            .await
            .clone();
        // The job is over: later requests look at the database again (and
        // retry a failed job).
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.get(reference).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            jobs.remove(reference);
        }
        result
    }

    /// The held images' records: names deduplicated, at most `max_held_images`
    /// distinct names looked at (the rest ignored, with a warning), records
    /// deduplicated by digest. A name not in the database is indexed on demand
    /// (as a wanted image would be: allowed registries only, one job per
    /// reference, under the indexer's budgets and concurrency cap); one that
    /// cannot be (a bare digest, a refused registry, a failed job) is logged and
    /// ignored (the bundle then carries its contents).
    pub async fn held(&self, held: &[String]) -> Result<HeldImages, HandlerError> {
        let cap = self.policy.max_held_images;
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        let mut ignored = 0usize;
        for h in held {
            if !seen.insert(h.as_str()) {
                continue;
            }
            if seen.len() > cap {
                ignored += 1;
                continue;
            }
            names.push(h.as_str());
        }
        let mut found = Vec::with_capacity(names.len());
        let mut missing = Vec::new();
        for (i, h) in names.iter().enumerate() {
            let record = self.lookup(h)?;
            if record.is_none() {
                missing.push(i);
            }
            found.push(record);
        }
        let indexed =
            futures_util::future::join_all(missing.iter().map(|&i| self.index_held(names[i])))
                .await;
        for (i, record) in missing.into_iter().zip(indexed) {
            found[i] = record;
        }
        let mut digests = HashSet::new();
        let mut out = HeldImages::default();
        for (name, record) in names.into_iter().zip(found) {
            if let Some(r) = record {
                if digests.insert(r.manifest_digest.clone()) {
                    out.used.push(name.to_string());
                    out.records.push(r);
                }
            }
        }
        if held.len() > out.records.len() {
            info!(
                named = held.len(),
                distinct = seen.len(),
                ignored_over_cap = ignored,
                used = out.records.len(),
                cap,
                "held list deduplicated and capped"
            );
        }
        Ok(out)
    }

    /// Indexes the held image `name` (not in the database) on demand; its
    /// record, or none (logged) when it cannot be indexed.
    async fn index_held(&self, name: &str) -> Option<ImageRecord> {
        if name.starts_with("sha256:") {
            warn!(held = %name, "held image is not indexed and names no repository: ignored");
            return None;
        }
        let reference = self.qualify(name);
        if self.check_allowed(&reference).is_err() {
            warn!(held = %name, "held image's registry is not allowed: ignored");
            return None;
        }
        match self.index_once(&reference, None, Reindex::IfMissing).await {
            Ok(()) => {
                let record = self.lookup(&reference).ok().flatten();
                if record.is_some() {
                    self.held_indexed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(held = %name, "held image indexed on demand");
                }
                record
            }
            Err(e) => {
                warn!(held = %name, error = %e, "held image cannot be indexed: ignored");
                None
            }
        }
    }

    /// Held images indexed on demand so far.
    pub fn held_indexed(&self) -> u64 {
        self.held_indexed.load(std::sync::atomic::Ordering::Relaxed)
    }
}
