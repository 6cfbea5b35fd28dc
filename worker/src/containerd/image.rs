//! What registering an image needs from its bundle header: the manifest
//! and config checked against their digests, and the layer chain ids
//! computed from the config's `rootfs.diff_ids` the way containerd does.

use sha2::{Digest, Sha256};
use transport_quic::Header;

/// The OCI manifest media type, used when the header names none.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI config media type, used when the manifest names none.
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Most layers an image may have (containerd's own limit is far below).
const MAX_LAYERS: usize = 1024;

/// A blob to put in containerd's content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The media type its descriptor carries.
    pub media_type: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// An image as containerd will know it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// The manifest (its digest is the header's manifest digest).
    pub manifest: Blob,
    /// The config (its digest is the one the manifest names).
    pub config: Blob,
    /// Chain id of each layer, bottom first; the last is the image's top
    /// snapshot.
    pub chain_ids: Vec<String>,
}

/// Why a header cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A digest does not match the bytes.
    #[error("{what}: digest {actual} does not match {expected}")]
    Digest {
        /// Which blob.
        what: &'static str,
        /// The digest named.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// The manifest or config is not the JSON expected.
    #[error("{0}")]
    Malformed(String),
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Chain ids of layers with these diff ids, bottom first:
/// chain(0) = diff(0), chain(i) = sha256(chain(i-1) + " " + diff(i)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The pieces of a header [`plan_of`] reads.
struct Blobs<'a> {
    manifest_digest: &'a str,
    manifest: &'a [u8],
    manifest_media_type: &'a str,
    config: &'a [u8],
}

/// Checks the header's manifest and config and computes the chain ids.
pub fn plan(header: &Header) -> Result<ImagePlan, PlanError> {
    plan_of(
        &header.manifest_digest,
        &header.manifest,
        &header.manifest_media_type,
        &header.config,
    )
}

/// [`plan`] of a manifest (named by `manifest_digest`, of media type
/// `manifest_media_type`, empty: the document's own) and its config.
pub fn plan_of(
    manifest_digest: &str,
    manifest_raw: &[u8],
    manifest_media_type: &str,
    config_raw: &[u8],
) -> Result<ImagePlan, PlanError> {
    let header = Blobs {
        manifest_digest,
        manifest: manifest_raw,
        manifest_media_type,
        config: config_raw,
    };
    let actual = sha256_digest(header.manifest);
    if actual != header.manifest_digest {
        return Err(PlanError::Digest {
            what: "manifest",
            expected: header.manifest_digest.to_string(),
            actual,
        });
    }
    let manifest: serde_json::Value = serde_json::from_slice(header.manifest)
        .map_err(|e| PlanError::Malformed(format!("manifest is not JSON: {e}")))?;
    let config_desc = manifest
        .get("config")
        .ok_or_else(|| PlanError::Malformed("manifest has no config".into()))?;
    let config_digest = config_desc
        .get("digest")
        .and_then(|d| d.as_str())
        .filter(|d| is_sha256_digest(d))
        .ok_or_else(|| PlanError::Malformed("manifest config has no sha256 digest".into()))?;
    let actual = sha256_digest(header.config);
    if actual != config_digest {
        return Err(PlanError::Digest {
            what: "config",
            expected: config_digest.to_string(),
            actual,
        });
    }
    let config_media_type = config_desc
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(OCI_CONFIG)
        .to_string();
    let manifest_media_type = if !header.manifest_media_type.is_empty() {
        header.manifest_media_type.to_string()
    } else {
        manifest
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or(OCI_MANIFEST)
            .to_string()
    };
    let config: serde_json::Value = serde_json::from_slice(header.config)
        .map_err(|e| PlanError::Malformed(format!("config is not JSON: {e}")))?;
    let diff_ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or_else(|| PlanError::Malformed("config has no rootfs.diff_ids".into()))?;
    if diff_ids.is_empty() || diff_ids.len() > MAX_LAYERS {
        return Err(PlanError::Malformed(format!(
            "config has {} layers (1 to {MAX_LAYERS} supported)",
            diff_ids.len()
        )));
    }
    let diff_ids: Vec<String> = diff_ids
        .iter()
        .map(|d| {
            d.as_str()
                .filter(|d| is_sha256_digest(d))
                .map(str::to_string)
                .ok_or_else(|| PlanError::Malformed(format!("bad diff id {d}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ImagePlan {
        manifest: Blob {
            digest: header.manifest_digest.to_string(),
            media_type: manifest_media_type,
            data: header.manifest.to_vec(),
        },
        config: Blob {
            digest: config_digest.to_string(),
            media_type: config_media_type,
            data: header.config.to_vec(),
        },
        chain_ids: chain_ids(&diff_ids),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(manifest: &[u8], config: &[u8]) -> Header {
        Header {
            manifest_digest: sha256_digest(manifest),
            manifest_media_type: String::new(),
            manifest: manifest.to_vec(),
            config: config.to_vec(),
            layers: vec![],
            image_layers: vec![],
            toc: vec![],
            payloads: vec![],
            layer_tocs: vec![],
        }
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn chain_ids_match_containerd() {
        let diffs = [d('a'), d('b'), d('c')];
        let ids = chain_ids(&diffs);
        assert_eq!(ids[0], diffs[0]);
        let c1 = sha256_digest(format!("{} {}", diffs[0], diffs[1]).as_bytes());
        assert_eq!(ids[1], c1);
        assert_eq!(
            ids[2],
            sha256_digest(format!("{c1} {}", diffs[2]).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn plan_checks_digests_and_reads_diff_ids() {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d('1'),
            d('2')
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            sha256_digest(config.as_bytes()),
            config.len()
        );
        let h = header(manifest.as_bytes(), config.as_bytes());
        let p = plan(&h).unwrap();
        assert_eq!(p.manifest.digest, h.manifest_digest);
        assert_eq!(p.manifest.media_type, OCI_MANIFEST);
        assert_eq!(p.config.digest, sha256_digest(config.as_bytes()));
        assert_eq!(p.config.media_type, OCI_CONFIG);
        assert_eq!(p.chain_ids, chain_ids(&[d('1'), d('2')]));

        // Wrong manifest digest.
        let mut bad = h.clone();
        bad.manifest_digest = d('f');
        assert!(matches!(
            plan(&bad),
            Err(PlanError::Digest {
                what: "manifest",
                ..
            })
        ));
        // Config bytes that do not match the manifest.
        let mut bad = h.clone();
        bad.config.push(b' ');
        assert!(matches!(
            plan(&bad),
            Err(PlanError::Digest { what: "config", .. })
        ));
        // No layers.
        let empty = r#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let m = format!(
            r#"{{"config":{{"digest":"{}"}}}}"#,
            sha256_digest(empty.as_bytes())
        );
        assert!(matches!(
            plan(&header(m.as_bytes(), empty.as_bytes())),
            Err(PlanError::Malformed(_))
        ));
        // Not JSON.
        assert!(matches!(
            plan(&header(b"nope", b"{}")),
            Err(PlanError::Malformed(_))
        ));
    }
}
