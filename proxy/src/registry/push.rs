//! Pushing blobs (streamed in chunks) and manifests.

use super::*;

impl RegistryClient {
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
