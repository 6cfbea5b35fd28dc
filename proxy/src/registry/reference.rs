//! Image references and digests, and resolving a reference to its
//! manifest (an index resolved to one platform's image).

use super::*;

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

impl RegistryClient {
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
}
