//! Finds the wanted and held images in the directory database, indexing the
//! wanted image first when it is not there yet (one indexing job per image,
//! shared by concurrent requests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;
use tracing::{info, warn};
use transport_quic::quic::HandlerError;
use transport_quic::ErrorCode;

use crate::config::{Config, RegistryConfig};
use crate::db::{Db, ImageRecord};
use crate::index::{index_image, IndexError};
use crate::registry::{Platform, RegistryClient, RegistryError};

/// The outcome of one indexing job, shared by every request waiting on it.
type JobResult = Result<(), HandlerError>;

/// Resolves image names against the database; indexes on demand.
pub struct Resolver {
    db: Arc<Db>,
    registry: Arc<RegistryClient>,
    qualifier: Config,
    jobs: Mutex<HashMap<String, Arc<OnceCell<JobResult>>>>,
    indexed: std::sync::atomic::AtomicU64,
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
    HandlerError::new(code, format!("cannot index: {e}"))
}

fn db_error(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(ErrorCode::Internal, format!("directory database: {e}"))
}

impl Resolver {
    /// A resolver; bare names are qualified with `registry_host` (`HOST[:PORT]`).
    pub fn new(db: Arc<Db>, registry: Arc<RegistryClient>, registry_host: Option<String>) -> Self {
        Resolver {
            db,
            registry,
            qualifier: Config {
                registry: RegistryConfig {
                    url: registry_host,
                    plain_http: false,
                },
                ..Config::default()
            },
            jobs: Mutex::new(HashMap::new()),
            indexed: Default::default(),
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
                self.index_once(&reference, platform).await?;
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
    ) -> Result<(), HandlerError> {
        let cell = {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            jobs.entry(reference.to_string()).or_default().clone()
        };
        let platform = platform.map(ToString::to_string);
        let result = cell
            .get_or_init(|| async {
                // Someone may have finished indexing since our lookup.
                if let Ok(Some(_)) = self.db.image_by_reference(reference) {
                    return Ok(());
                }
                info!(image = reference, "not indexed yet: indexing");
                let started = std::time::Instant::now();
                match index_image(&self.registry, &self.db, reference, platform.as_deref()).await {
                    Ok(report) => {
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

    /// The held images' records; names not in the database are logged and
    /// ignored (the bundle then carries their contents).
    pub fn held(&self, held: &[String]) -> Result<Vec<ImageRecord>, HandlerError> {
        let mut out = Vec::with_capacity(held.len());
        for h in held {
            match self.lookup(h)? {
                Some(r) => out.push(r),
                None => warn!(held = %h, "held image is not indexed: ignored"),
            }
        }
        Ok(out)
    }
}
