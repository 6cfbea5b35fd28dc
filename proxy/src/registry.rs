//! Registry client: resolves image references, streams blobs to and from an
//! OCI distribution registry, and pushes manifests. Wraps `oci-client`;
//! credentials come from the usual docker `config.json`.
//!
//! INTERFACE CONTRACT (filled in by the registry work; signatures are fixed).

use std::path::Path;

/// Errors from the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Any failure, with a message naming the image (and blob) concerned.
    #[error("{0}")]
    Other(String),
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

/// A client for one or more registries.
pub struct RegistryClient {
    _private: (),
}

impl RegistryClient {
    /// A client; `plain_http` selects HTTP instead of HTTPS for every registry.
    pub fn new(plain_http: bool) -> Self {
        let _ = plain_http;
        todo!()
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
        let _ = (reference, platform);
        todo!()
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
        let _ = (reference, digest, size, dest);
        todo!()
    }
}
