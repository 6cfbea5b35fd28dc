//! Platforms (`os/arch[/variant]`), manifests' media types, and the
//! platform entries of an index or a config.

use super::*;

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

/// Media type of a manifest document: its `mediaType`, else inferred from
/// its shape (`manifests` → OCI index, `layers` → OCI manifest).
pub(super) fn manifest_media_type(raw: &[u8]) -> Result<String, String> {
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
