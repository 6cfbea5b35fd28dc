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

mod blobs;
mod platform;
mod push;
mod ranges;
mod reference;

pub use blobs::BlobStream;
use platform::manifest_media_type;
pub use platform::{config_platform, index_platforms, Platform, PlatformManifest};
pub use ranges::{RangeError, RangeStream};
pub use reference::{check_sha256_digest, parse_reference, sha256_digest, with_digest, with_tag};

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

/// Installs rustls' `ring` crypto provider once per process.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first: keep that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
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
