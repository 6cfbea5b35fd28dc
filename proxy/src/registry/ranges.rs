//! HTTP range reads of blobs, with errors that say whether a retry may
//! help.

use super::*;

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
