//! Registry client: resolves image references, streams blobs to and from an
//! OCI distribution registry, and pushes manifests. Wraps `oci-client`;
//! credentials come from the usual docker `config.json` (anonymous access
//! when there are none).
//!
//! Every digest the registry hands back is checked here: manifests fetched
//! by digest, config blobs, and every downloaded blob (SHA-256 and size).

use std::fmt;
use std::path::Path;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (the Docker form of an index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifest media types this client asks for and understands.
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Largest manifest or config blob held in memory (they are small JSON).
pub const MAX_JSON_BLOB: u64 = 16 << 20;

/// Chunk size used when streaming a blob from a file to the registry.
const PUSH_CHUNK: usize = 4 << 20;

/// Platform picked from an index when the caller names none.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

/// Errors from the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Any failure, with a message naming the image (and blob) concerned.
    #[error("{0}")]
    Other(String),
    /// The reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A request to the registry failed.
    #[error("{what} of {image}: {detail}")]
    Request {
        /// The image concerned.
        image: String,
        /// What was being done (e.g. `fetching manifest`).
        what: String,
        /// The client's error with its causes (may quote the registry's answer: for
        /// logs, never for workers; see [`RegistryError::public_message`]).
        detail: String,
        /// The HTTP status the registry answered with, when it answered.
        status: Option<u16>,
    },
    /// Content did not match its digest.
    #[error("{what} of {image}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        /// The image concerned.
        image: String,
        /// What was checked (e.g. `blob sha256:...`).
        what: String,
        /// Digest the descriptor or reference promised.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// Content did not have the size its descriptor promised.
    #[error("{what} of {image}: size mismatch: expected {expected} bytes, got {actual}")]
    Size {
        /// The image concerned.
        image: String,
        /// What was checked.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Size of what arrived (so far).
        actual: u64,
    },
    /// A manifest, index or config was malformed or unsupported.
    #[error("{what} of {image}: {reason}")]
    Invalid {
        /// The image concerned.
        image: String,
        /// What was malformed.
        what: String,
        /// Why.
        reason: String,
    },
    /// No manifest of an index matches the requested platform.
    #[error("{image} has no manifest for platform {platform} (available: {available})")]
    NoSuchPlatform {
        /// The image concerned.
        image: String,
        /// The platform asked for.
        platform: String,
        /// Platforms the index offers, comma separated.
        available: String,
    },
    /// Local file I/O failed.
    #[error("{what} of {image}: {error}")]
    Io {
        /// The image concerned.
        image: String,
        /// What was being done.
        what: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

impl RegistryError {
    /// The error as told to a worker: never the registry's response body or the HTTP
    /// client's text (both can carry whatever a registry, or a host it redirects to,
    /// answers). The full error goes to the proxy's log instead.
    pub fn public_message(&self) -> String {
        match self {
            RegistryError::Request {
                image,
                what,
                detail,
                status,
            } => {
                let d = detail.to_ascii_lowercase();
                let kind = if status == &Some(404)
                    || ["manifest_unknown", "blob_unknown", "not found"]
                        .iter()
                        .any(|w| d.contains(w))
                {
                    "not found in the registry"
                } else if matches!(status, Some(401 | 403))
                    || ["unauthorized", "denied"].iter().any(|w| d.contains(w))
                {
                    "refused by the registry"
                } else {
                    "the registry request failed"
                };
                match status {
                    Some(code) => format!(
                        "{what} of {image}: {kind} (HTTP {code}; details in the proxy's log)"
                    ),
                    None => format!("{what} of {image}: {kind} (details in the proxy's log)"),
                }
            }
            RegistryError::Other(_) => {
                "the registry request failed (details in the proxy's log)".to_string()
            }
            RegistryError::Io { image, what, .. } => {
                format!("{what} of {image}: local I/O error (details in the proxy's log)")
            }
            // Our own checks: no upstream text in them beyond digests and sizes.
            e => e.to_string(),
        }
    }
}

/// One platform's image, resolved from a reference.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as given (e.g. `127.0.0.1:5000/app:v1`).
    pub reference: String,
    /// Digest of the image manifest (`sha256:...`), not of an index.
    pub manifest_digest: String,
    /// Media type of the manifest (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// Raw manifest bytes, exactly as stored in the registry.
    pub manifest_raw: Vec<u8>,
    /// Parsed manifest.
    pub manifest: oci_spec::image::ImageManifest,
    /// Raw config bytes, exactly as stored in the registry.
    pub config_raw: Vec<u8>,
    /// Platform string such as `linux/amd64` (from the index or the config).
    pub platform: String,
}

/// A manifest or index exactly as the registry returned it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Raw bytes.
    pub raw: Vec<u8>,
    /// `sha256:` of `raw` (verified against the reference when it names a digest).
    pub digest: String,
    /// Media type (from the document's `mediaType`, else inferred).
    pub media_type: String,
}

impl FetchedManifest {
    /// Whether this is an OCI index or a Docker manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

/// One entry of an index: an image manifest for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformManifest {
    /// Platform as `os/arch[/variant]` (`unknown/unknown` when absent).
    pub platform: String,
    /// Digest of the image manifest.
    pub digest: String,
    /// Size of the image manifest.
    pub size: u64,
    /// Media type of the image manifest.
    pub media_type: String,
}

/// A platform as `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Optional variant, e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, RegistryError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            RegistryError::Other(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            ))
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(bad()),
        }
    }

    /// Whether an index entry's platform string satisfies this request. A
    /// request without variant matches any variant; `arm64/v8` matches an
    /// entry without variant.
    pub fn matches(&self, entry: &str) -> bool {
        let Ok(e) = Platform::parse(entry) else {
            return false;
        };
        if e.os != self.os || e.arch != self.arch {
            return false;
        }
        match (&self.variant, &e.variant) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(a), None) => self.arch == "arm64" && a == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Parses an image reference such as `127.0.0.1:5000/app:v1` or
/// `host/app@sha256:...`.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    reference
        .parse::<Reference>()
        .map_err(|e| RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

/// The same repository as `reference`, addressed by `digest`.
pub fn with_digest(reference: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        reference.registry().to_string(),
        reference.repository().to_string(),
        digest.to_string(),
    )
}

/// The same repository as `reference`, addressed by `tag`.
pub fn with_tag(reference: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        reference.registry().to_string(),
        reference.repository().to_string(),
        tag.to_string(),
    )
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn check_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Media type of a manifest document: its `mediaType`, else inferred from
/// its shape (`manifests` → OCI index, `layers` → OCI manifest).
fn manifest_media_type(raw: &[u8]) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    if obj.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
        return Err("unsupported schemaVersion (only 2 is supported)".into());
    }
    let mt = match obj.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if obj.contains_key("manifests") => OCI_INDEX.to_string(),
        None if obj.contains_key("layers") => OCI_MANIFEST.to_string(),
        None => return Err("cannot tell the manifest's media type".into()),
    };
    if !ACCEPTED_MANIFESTS.contains(&mt.as_str()) {
        return Err(format!("unsupported manifest media type {mt}"));
    }
    Ok(mt)
}

/// Platform string of an index entry descriptor.
fn descriptor_platform(d: &oci_spec::image::Descriptor) -> String {
    match d.platform() {
        Some(p) => {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                if !v.is_empty() {
                    s.push('/');
                    s.push_str(v);
                }
            }
            s
        }
        None => "unknown/unknown".to_string(),
    }
}

/// Platform string from an image config (`os`, `architecture`, `variant`).
pub fn config_platform(config_raw: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(config_raw).ok()?;
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    let mut s = format!("{os}/{arch}");
    if let Some(var) = v
        .get("variant")
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
    {
        s.push('/');
        s.push_str(var);
    }
    Some(s)
}

/// Parses an index (OCI index or Docker manifest list) into its platform
/// manifests.
pub fn index_platforms(image: &str, raw: &[u8]) -> Result<Vec<PlatformManifest>, RegistryError> {
    let index: ImageIndex = serde_json::from_slice(raw).map_err(|e| RegistryError::Invalid {
        image: image.to_string(),
        what: "index".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for d in index.manifests() {
        let digest = d.digest().to_string();
        if !check_sha256_digest(&digest) {
            return Err(RegistryError::Invalid {
                image: image.to_string(),
                what: "index".into(),
                reason: format!("unsupported manifest digest {digest}"),
            });
        }
        out.push(PlatformManifest {
            platform: descriptor_platform(d),
            digest,
            size: d.size(),
            media_type: d.media_type().to_string(),
        });
    }
    Ok(out)
}

/// Installs rustls' `ring` crypto provider once per process.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first: keep that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A blob being downloaded; see [`RegistryClient::open_blob`].
pub struct BlobStream {
    image: String,
    what: String,
    digest: String,
    size: Option<u64>,
    stream: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    hasher: Sha256,
    got: u64,
    done: bool,
}

impl BlobStream {
    /// The next chunk, or `None` at the end once size and digest are
    /// verified. Errors name the image and the blob.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, RegistryError> {
        if self.done {
            return Ok(None);
        }
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.got += chunk.len() as u64;
                if let Some(expected) = self.size {
                    if self.got > expected {
                        return Err(self.size_error(expected));
                    }
                }
                self.hasher.update(&chunk);
                Ok(Some(chunk))
            }
            // oci-client reports a digest mismatch at the end of the stream
            // as an I/O error: prefer our own (clearer) checks.
            Some(Err(e)) => {
                self.done = true;
                if let Some(err) = self.verify() {
                    return Err(err);
                }
                Err(RegistryError::Io {
                    image: self.image.clone(),
                    what: format!("fetching {}", self.what),
                    error: e,
                })
            }
            None => {
                self.done = true;
                match self.verify() {
                    Some(err) => Err(err),
                    None => Ok(None),
                }
            }
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    fn size_error(&self, expected: u64) -> RegistryError {
        RegistryError::Size {
            image: self.image.clone(),
            what: self.what.clone(),
            expected,
            actual: self.got,
        }
    }

    /// Checks size and digest of everything received.
    fn verify(&mut self) -> Option<RegistryError> {
        if let Some(expected) = self.size {
            if self.got != expected {
                return Some(self.size_error(expected));
            }
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.digest {
            return Some(RegistryError::Digest {
                image: self.image.clone(),
                what: self.what.clone(),
                expected: self.digest.clone(),
                actual,
            });
        }
        None
    }
}

/// A client for one or more registries.
pub struct RegistryClient {
    client: Client,
    plain_http: bool,
    /// Credentials per registry, read once from docker's `config.json`.
    auths: std::sync::Mutex<std::collections::HashMap<String, RegistryAuth>>,
    /// Requests and errors, for the metrics.
    counters: crate::registry_stats::RegistryCounters,
    /// Where credentials come from (see [`crate::credentials`]).
    credentials: crate::credentials::Credentials,
}

/// `error` and its causes joined by `: `, skipping causes whose text the
/// previous message already contains (reqwest and oci-client repeat them).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    out
}

impl RegistryClient {
    /// A client; `plain_http` selects HTTP instead of HTTPS for every registry.
    pub fn new(plain_http: bool) -> Self {
        install_crypto_provider();
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            ..Default::default()
        };
        RegistryClient {
            client: Client::new(config),
            plain_http,
            auths: Default::default(),
            counters: Default::default(),
            credentials: Default::default(),
        }
    }

    /// This client, presenting `credentials` to registries.
    pub fn with_credentials(mut self, credentials: crate::credentials::Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Range requests and errors so far.
    pub fn stats(&self) -> crate::registry_stats::RegistryStats {
        self.counters.snapshot()
    }

    /// A [`RegistryError::Request`] with the client's error and its causes,
    /// and a hint when an HTTPS client meets a plain-HTTP registry.
    fn request_error(
        &self,
        image: &str,
        what: impl Into<String>,
        error: oci_client::errors::OciDistributionError,
    ) -> RegistryError {
        use oci_client::errors::OciDistributionError as E;
        self.counters.error();
        let status = match &error {
            E::ServerError { code, .. } => Some(*code),
            E::UnauthorizedError { .. } => Some(401),
            E::ImageManifestNotFoundError(_) => Some(404),
            _ => None,
        };
        let mut detail = error_chain(&error);
        if !self.plain_http && detail.contains("InvalidContentType") {
            detail.push_str(" (the registry may speak plain HTTP: try --plain-http)");
        }
        RegistryError::Request {
            image: image.to_string(),
            what: what.into(),
            detail,
            status,
        }
    }

    /// Credentials for `reference`'s registry (looked up once).
    fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        let registry = reference.registry().to_string();
        let mut auths = match self.auths.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        auths
            .entry(registry)
            .or_insert_with_key(|r| self.credentials.for_registry(r))
            .clone()
    }

    /// Stores credentials for `reference`'s registry in the client (once).
    async fn authorize(&self, reference: &Reference) {
        let registry = reference.resolve_registry().to_string();
        let auth = self.auth_for(reference);
        self.client.store_auth_if_needed(&registry, &auth).await;
    }

    /// Fetches the manifest or index `reference` names, exactly as stored.
    /// When the reference names a digest, the content is verified against it.
    pub async fn fetch_manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let r = parse_reference(reference)?;
        self.fetch_manifest_ref(reference, &r).await
    }

    async fn fetch_manifest_ref(
        &self,
        image: &str,
        r: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let auth = self.auth_for(r);
        let (raw, _) = self
            .client
            .pull_manifest_raw(r, &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| match e {
                oci_client::errors::OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError { expected, actual },
                ) => RegistryError::Digest {
                    image: image.to_string(),
                    what: match r.digest() {
                        Some(d) => format!("manifest {d}"),
                        None => "manifest".into(),
                    },
                    expected,
                    actual,
                },
                e => self.request_error(image, "fetching manifest", e),
            })?;
        if raw.len() as u64 > MAX_JSON_BLOB {
            return Err(RegistryError::Invalid {
                image: image.to_string(),
                what: "manifest".into(),
                reason: format!("{} bytes is too large", raw.len()),
            });
        }
        let digest = sha256_digest(&raw);
        if let Some(expected) = r.digest() {
            if expected != digest {
                return Err(RegistryError::Digest {
                    image: image.to_string(),
                    what: "manifest".into(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        let media_type = manifest_media_type(&raw).map_err(|reason| RegistryError::Invalid {
            image: image.to_string(),
            what: "manifest".into(),
            reason,
        })?;
        Ok(FetchedManifest {
            raw: raw.to_vec(),
            digest,
            media_type,
        })
    }

    /// Resolves `reference` to one platform's image. If the reference names an
    /// index, `platform` (`os/arch[/variant]`, default: the host's, i.e.
    /// `linux/amd64` here) picks the manifest. Digests of manifest and config
    /// are verified.
    pub async fn resolve_image(
        &self,
        reference: &str,
        platform: Option<&str>,
    ) -> Result<ResolvedImage, RegistryError> {
        let r = parse_reference(reference)?;
        let top = self.fetch_manifest_ref(reference, &r).await?;
        if !top.is_index() {
            return self.resolve_manifest(reference, &r, top, None).await;
        }
        let wanted = Platform::parse(platform.unwrap_or(DEFAULT_PLATFORM))?;
        let entries = index_platforms(reference, &top.raw)?;
        let entry = entries
            .iter()
            .find(|e| wanted.matches(&e.platform))
            .ok_or_else(|| RegistryError::NoSuchPlatform {
                image: reference.to_string(),
                platform: wanted.to_string(),
                available: entries
                    .iter()
                    .map(|e| e.platform.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        self.resolve_platform(reference, entry).await
    }

    /// Resolves one entry of an index of `reference` (see [`index_platforms`]).
    pub async fn resolve_platform(
        &self,
        reference: &str,
        entry: &PlatformManifest,
    ) -> Result<ResolvedImage, RegistryError> {
        let r = parse_reference(reference)?;
        let child_ref = with_digest(&r, &entry.digest);
        let child = self.fetch_manifest_ref(reference, &child_ref).await?;
        if child.raw.len() as u64 != entry.size {
            return Err(RegistryError::Size {
                image: reference.to_string(),
                what: format!("manifest {}", entry.digest),
                expected: entry.size,
                actual: child.raw.len() as u64,
            });
        }
        if child.is_index() {
            return Err(RegistryError::Invalid {
                image: reference.to_string(),
                what: format!("manifest {}", entry.digest),
                reason: "nested indexes are not supported".into(),
            });
        }
        self.resolve_manifest(reference, &r, child, Some(entry.platform.clone()))
            .await
    }

    async fn resolve_manifest(
        &self,
        image: &str,
        r: &Reference,
        m: FetchedManifest,
        platform: Option<String>,
    ) -> Result<ResolvedImage, RegistryError> {
        let manifest: ImageManifest =
            serde_json::from_slice(&m.raw).map_err(|e| RegistryError::Invalid {
                image: image.to_string(),
                what: format!("manifest {}", m.digest),
                reason: e.to_string(),
            })?;
        let config = manifest.config();
        let config_digest = config.digest().to_string();
        let config_raw = self
            .fetch_blob_bytes_ref(image, r, &config_digest, config.size(), "config")
            .await?;
        let platform = match platform {
            Some(p) if p != "unknown/unknown" => p,
            _ => config_platform(&config_raw).unwrap_or_else(|| "unknown/unknown".into()),
        };
        Ok(ResolvedImage {
            reference: image.to_string(),
            manifest_digest: m.digest,
            manifest_media_type: m.media_type,
            manifest_raw: m.raw,
            manifest,
            config_raw,
            platform,
        })
    }

    /// Fetches a small blob (a config) into memory, verifying digest and size.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let r = parse_reference(reference)?;
        self.fetch_blob_bytes_ref(reference, &r, digest, size, "blob")
            .await
    }

    async fn fetch_blob_bytes_ref(
        &self,
        image: &str,
        r: &Reference,
        digest: &str,
        size: u64,
        kind: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{kind} {digest}");
        if !check_sha256_digest(digest) {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what,
                reason: "unsupported digest (expected sha256:<64 hex>)".into(),
            });
        }
        if size > MAX_JSON_BLOB {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what,
                reason: format!("{size} bytes is too large"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        let mut blob = self
            .open_blob_ref(image, r, digest, Some(size), what)
            .await?;
        while let Some(chunk) = blob.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens blob `digest` of the repository named by `reference` as a
    /// stream of chunks whose size (when given) and SHA-256 are verified:
    /// [`BlobStream::next_chunk`] returns `None` only once both check out.
    pub async fn open_blob(
        &self,
        reference: &str,
        digest: &str,
        size: Option<u64>,
    ) -> Result<BlobStream, RegistryError> {
        self.open_blob_as(reference, digest, size, &format!("blob {digest}"))
            .await
    }

    /// [`RegistryClient::open_blob`], naming the blob `what` in errors
    /// (e.g. `layer 2/3 sha256:...`).
    pub async fn open_blob_as(
        &self,
        reference: &str,
        digest: &str,
        size: Option<u64>,
        what: &str,
    ) -> Result<BlobStream, RegistryError> {
        let r = parse_reference(reference)?;
        self.open_blob_ref(reference, &r, digest, size, what.to_string())
            .await
    }

    async fn open_blob_ref(
        &self,
        image: &str,
        r: &Reference,
        digest: &str,
        size: Option<u64>,
        what: String,
    ) -> Result<BlobStream, RegistryError> {
        if !check_sha256_digest(digest) {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what,
                reason: "unsupported digest (expected sha256:<64 hex>)".into(),
            });
        }
        self.authorize(r).await;
        let stream = self
            .client
            .pull_blob_stream(r, digest)
            .await
            .map_err(|e| self.request_error(image, format!("fetching {what}"), e))?;
        Ok(BlobStream {
            image: image.into(),
            what,
            digest: digest.into(),
            size,
            stream: stream.stream,
            hasher: Sha256::new(),
            got: 0,
            done: false,
        })
    }

    /// Streams blob `digest` of the repository named by `reference` into the
    /// file `dest` (created or truncated), verifying its SHA-256 digest and
    /// its size when `size` is given. Memory stays bounded.
    pub async fn download_blob(
        &self,
        reference: &str,
        digest: &str,
        size: Option<u64>,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        let r = parse_reference(reference)?;
        let what = format!("blob {digest}");
        let io_err = |error| RegistryError::Io {
            image: reference.into(),
            what: format!("writing blob {digest} to {}", dest.display()),
            error,
        };
        let mut blob = self
            .open_blob_ref(reference, &r, digest, size, what)
            .await?;
        let file = tokio::fs::File::create(dest).await.map_err(io_err)?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(chunk) = blob.next_chunk().await? {
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        file.into_inner().sync_all().await.map_err(io_err)?;
        Ok(())
    }

    /// Whether blob `digest` exists in the repository named by `reference`.
    pub async fn blob_exists(&self, reference: &str, digest: &str) -> Result<bool, RegistryError> {
        let r = parse_reference(reference)?;
        self.authorize(&r).await;
        self.client
            .blob_exists(&r, digest)
            .await
            .map_err(|e| self.request_error(reference, format!("checking blob {digest}"), e))
    }

    /// Pushes the file at `path` as blob `digest` (of `size` bytes) to the
    /// repository named by `reference`, streaming it in chunks. Skipped when
    /// the registry already has the blob. Returns whether it was uploaded.
    pub async fn push_blob_file(
        &self,
        reference: &str,
        path: &Path,
        digest: &str,
        size: u64,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(reference, digest).await? {
            tracing::debug!(reference, digest, "blob already present; not pushed");
            return Ok(false);
        }
        let r = parse_reference(reference)?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|error| RegistryError::Io {
                image: reference.into(),
                what: format!("opening blob {digest} at {}", path.display()),
                error,
            })?;
        let len = file
            .metadata()
            .await
            .map(|m| m.len())
            .map_err(|error| RegistryError::Io {
                image: reference.into(),
                what: format!("reading blob {digest} at {}", path.display()),
                error,
            })?;
        if len != size {
            return Err(RegistryError::Size {
                image: reference.into(),
                what: format!("local blob {digest} at {}", path.display()),
                expected: size,
                actual: len,
            });
        }
        let stream = futures_util::stream::try_unfold(file, |mut file| async move {
            let mut buf = vec![0u8; PUSH_CHUNK];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..]).await.map_err(|e| {
                    oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
                })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(None);
            }
            buf.truncate(filled);
            Ok(Some((bytes::Bytes::from(buf), file)))
        });
        self.client
            .push_blob_stream(&r, stream, digest, Some(size))
            .await
            .map_err(|e| self.request_error(reference, format!("pushing blob {digest}"), e))?;
        Ok(true)
    }

    /// Pushes small in-memory blob `data` (a config) to the repository named
    /// by `reference`, unless present. Returns its digest.
    pub async fn push_blob_bytes(
        &self,
        reference: &str,
        data: Vec<u8>,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&data);
        if self.blob_exists(reference, &digest).await? {
            return Ok(digest);
        }
        let r = parse_reference(reference)?;
        self.client
            .push_blob(&r, data, &digest)
            .await
            .map_err(|e| self.request_error(reference, format!("pushing blob {digest}"), e))?;
        Ok(digest)
    }

    /// Pushes manifest (or index) `raw` of `media_type` to `reference`, which
    /// names the repository and either a tag or a digest. Returns the
    /// manifest's digest. A digest in the reference must match `raw`.
    pub async fn push_manifest(
        &self,
        reference: &str,
        raw: Vec<u8>,
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let r = parse_reference(reference)?;
        let digest = sha256_digest(&raw);
        if let Some(expected) = r.digest() {
            if expected != digest {
                return Err(RegistryError::Digest {
                    image: reference.into(),
                    what: "manifest to push".into(),
                    expected: expected.into(),
                    actual: digest,
                });
            }
        }
        self.authorize(&r).await;
        let content_type = media_type.parse().map_err(|e| RegistryError::Invalid {
            image: reference.into(),
            what: "manifest to push".into(),
            reason: format!("media type {media_type:?}: {e}"),
        })?;
        self.client
            .push_manifest_raw(&r, raw, content_type)
            .await
            .map_err(|e| self.request_error(reference, format!("pushing manifest {digest}"), e))?;
        Ok(digest)
    }
}

/// Why a range read failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RangeError {
    /// What went wrong (names the image, the blob and the range).
    pub error: RegistryError,
    /// A transient failure (connection error, 5xx, 429, body cut short):
    /// the same request may succeed if retried.
    pub transient: bool,
}

impl RangeError {
    fn fatal(error: RegistryError) -> Self {
        RangeError {
            error,
            transient: false,
        }
    }

    fn transient(error: RegistryError) -> Self {
        RangeError {
            error,
            transient: true,
        }
    }
}

/// Whether an `oci-client` error is worth retrying.
fn is_transient(error: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match error {
        E::RequestError(_) | E::IoError(_) => true,
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// The body of one HTTP range request; see [`RegistryClient::open_range`].
///
/// It yields exactly the requested number of bytes: more is an error, and
/// an end before that is a (transient) error. Nothing is verified against
/// the blob's digest (a range cannot be); callers check what they read.
pub struct RangeStream {
    image: String,
    what: String,
    len: u64,
    stream: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    got: u64,
    done: bool,
}

impl std::fmt::Debug for RangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeStream")
            .field("what", &self.what)
            .field("len", &self.len)
            .field("got", &self.got)
            .finish_non_exhaustive()
    }
}

impl RangeStream {
    /// The next chunk, or `None` once exactly the requested bytes arrived.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, RangeError> {
        if self.done {
            return Ok(None);
        }
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.got += chunk.len() as u64;
                if self.got > self.len {
                    self.done = true;
                    return Err(RangeError::fatal(RegistryError::Size {
                        image: self.image.clone(),
                        what: self.what.clone(),
                        expected: self.len,
                        actual: self.got,
                    }));
                }
                Ok(Some(chunk))
            }
            Some(Err(error)) => {
                self.done = true;
                Err(RangeError::transient(RegistryError::Io {
                    image: self.image.clone(),
                    what: format!("reading {}", self.what),
                    error,
                }))
            }
            None => {
                self.done = true;
                if self.got != self.len {
                    return Err(RangeError::transient(RegistryError::Size {
                        image: self.image.clone(),
                        what: format!("{} (body cut short)", self.what),
                        expected: self.len,
                        actual: self.got,
                    }));
                }
                Ok(None)
            }
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    /// Bytes requested.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl RegistryClient {
    /// Opens bytes `offset..offset + len` of blob `digest` in the repository
    /// named by `reference` with one HTTP range request (`len > 0`).
    ///
    /// A registry that ignores `Range` and answers `200` with the whole blob
    /// is refused (fatal error): the proxy never downloads whole layers to
    /// serve a few files.
    pub async fn open_range(
        &self,
        reference: &str,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<RangeStream, RangeError> {
        let what = format!("bytes {offset}+{len} of blob {digest}");
        let invalid = |reason: &str| {
            RangeError::fatal(RegistryError::Invalid {
                image: reference.to_string(),
                what: what.clone(),
                reason: reason.to_string(),
            })
        };
        if !check_sha256_digest(digest) {
            return Err(invalid("unsupported digest (expected sha256:<64 hex>)"));
        }
        if len == 0 || offset.checked_add(len).is_none() {
            return Err(invalid("empty or overflowing range"));
        }
        let r = parse_reference(reference).map_err(RangeError::fatal)?;
        self.authorize(&r).await;
        self.counters.range_request(len);
        let response = self
            .client
            .pull_blob_stream_partial(&r, digest, offset, Some(len))
            .await
            .map_err(|e| {
                let transient = is_transient(&e);
                RangeError {
                    error: self.request_error(reference, format!("fetching {what}"), e),
                    transient,
                }
            })?;
        let stream = match response {
            oci_client::client::BlobResponse::Partial(s) => s,
            oci_client::client::BlobResponse::Full(_) => {
                return Err(invalid(
                    "the registry ignored the Range header and answered with the whole blob",
                ))
            }
        };
        Ok(RangeStream {
            image: reference.to_string(),
            what,
            len,
            stream: stream.stream,
            got: 0,
            done: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_messages_carry_no_upstream_text() {
        let e = RegistryError::Request {
            image: "h/app:v1".into(),
            what: "fetching manifest".into(),
            detail:
                "Server error: url http://h/v2/app/manifests/v1, code: 500, message: SECRET-BODY"
                    .into(),
            status: Some(500),
        };
        let m = e.public_message();
        assert!(!m.contains("SECRET-BODY"), "{m}");
        assert!(m.contains("h/app:v1") && m.contains("proxy's log"), "{m}");
        assert!(m.contains("HTTP 500"), "{m}");
        let e = RegistryError::Request {
            image: "h/app:v1".into(),
            what: "fetching manifest".into(),
            detail: "code: 404, message: {\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]} SECRET"
                .into(),
            status: None,
        };
        let m = e.public_message();
        assert!(m.contains("not found") && !m.contains("SECRET"), "{m}");
    }

    #[test]
    fn platform_parse_and_match() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.matches("linux/arm64/v8"));
        assert!(p.matches("linux/arm64"));
        assert!(!p.matches("linux/amd64"));
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(v8.matches("linux/arm64"));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v7.matches("linux/arm/v6"));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn media_type_inference() {
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}"}}"#);
        assert_eq!(
            manifest_media_type(docker.as_bytes()).unwrap(),
            DOCKER_MANIFEST
        );
        assert!(manifest_media_type(br#"{"schemaVersion":1}"#).is_err());
        assert!(manifest_media_type(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#).is_err());
        assert!(manifest_media_type(b"nope").is_err());
    }

    #[test]
    fn references_and_digests() {
        let r = parse_reference("127.0.0.1:5000/app/x:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "app/x");
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(check_sha256_digest(&d));
        assert!(!check_sha256_digest("sha256:abc"));
        assert!(!check_sha256_digest(&format!("sha512:{}", "a".repeat(64))));
        assert_eq!(with_digest(&r, &d).digest(), Some(d.as_str()));
        assert_eq!(with_tag(&r, "v2").tag(), Some("v2"));
        assert!(parse_reference("UPPER:case:bad").is_err());
    }

    #[test]
    fn index_parsing() {
        let d = format!("sha256:{}", "b".repeat(64));
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":11}}]}}"#
        );
        let p = index_platforms("img", raw.as_bytes()).unwrap();
        assert_eq!(p[0].platform, "linux/arm/v7");
        assert_eq!(p[0].media_type, DOCKER_MANIFEST);
        assert_eq!(p[1].platform, "unknown/unknown");
        assert_eq!(p[1].size, 11);
    }

    #[test]
    fn config_platform_reads_fields() {
        assert_eq!(
            config_platform(br#"{"os":"linux","architecture":"arm64","variant":"v8"}"#).as_deref(),
            Some("linux/arm64/v8")
        );
        assert_eq!(config_platform(br#"{"os":"linux"}"#), None);
    }
}
