//! Blob downloads, each verified (SHA-256 and size) as it streams.

use super::*;

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

impl RegistryClient {
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

    pub(super) async fn fetch_blob_bytes_ref(
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
}
