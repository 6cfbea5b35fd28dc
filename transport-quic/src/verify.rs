//! Checks that a bundle header follows from the image it names.
//!
//! TLS authenticates the proxy, not the image: a compromised proxy could send
//! any tree. [`verify_header`] accepts a header only if everything the worker
//! will record and mount follows from the manifest's bytes:
//!
//! 1. the manifest bytes hash to the header's manifest digest, and a pull by
//!    digest (`repo@sha256:…` or a bare `sha256:…`) gets exactly that digest;
//! 2. the manifest's declared media type is the header's, and the config
//!    bytes hash to the manifest's config digest;
//! 3. the header's image layers are the manifest's layers, in order;
//! 4. each layer's [`TOC_DIGEST_ANNOTATION`] equals the digest of the
//!    per-layer table the header carries (no annotation: refused);
//! 5. the merged table of contents is exactly the shared merge of those
//!    tables ([`crate::merge::merge_layers`]), field by field,
//!    including the layer supplying each entry;
//! 6. every entry's content source agrees with its hash and size: a payload
//!    has the hash and size of every entry that uses it, entries without
//!    content have no source, and no payload is sent for nothing.
//!
//! The payload bytes themselves are checked against their hash as they are
//! written to the store (starlightd's receiver).

use std::collections::BTreeMap;

use crate::commit::{parse_sha256_digest, toc_digest, LayerEntry, TOC_DIGEST_ANNOTATION};
use crate::merge::{merge_layers, Merged};
use crate::{Header, Source, TocEntry};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a header does not follow from its image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A digest is not `sha256:<64 lower-case hex>`.
    #[error("the {what} {value:?} is not a sha256 digest")]
    BadDigest {
        /// Which digest.
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// The manifest bytes do not hash to the header's manifest digest.
    #[error("the manifest bytes hash to {actual}, not to the announced digest {announced}")]
    ManifestDigest {
        /// The header's digest.
        announced: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A pull by digest was answered with another manifest.
    #[error("the pull asked for manifest {requested} but the proxy sent {sent}")]
    PinnedDigest {
        /// The digest in the pulled reference.
        requested: String,
        /// The header's (verified) manifest digest.
        sent: String,
    },
    /// The manifest is not an image manifest this worker can read.
    #[error("the manifest is not a valid image manifest: {0}")]
    Manifest(String),
    /// The header's manifest media type is not the one the manifest declares.
    #[error("the header says the manifest is {header}, the manifest declares {manifest}")]
    MediaType {
        /// The manifest's `mediaType`.
        manifest: String,
        /// The header's.
        header: String,
    },
    /// The config bytes do not hash to the manifest's config digest.
    #[error("the config bytes hash to {actual}, but the manifest names config {manifest}")]
    ConfigDigest {
        /// The manifest's config digest.
        manifest: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// The header's image layers are not the manifest's layers.
    #[error("the header names {header} image layers, the manifest has {manifest}")]
    LayerCount {
        /// Layers in the manifest.
        manifest: usize,
        /// Image layers in the header.
        header: usize,
    },
    /// An image layer differs from the manifest's layer at the same place.
    #[error("image layer {index} is {header} in the header but {manifest} in the manifest")]
    LayerDigest {
        /// Position (bottom = 0).
        index: usize,
        /// The manifest's digest.
        manifest: String,
        /// The header's digest.
        header: String,
    },
    /// The header does not carry one table per image layer.
    #[error("the header carries {tables} per-layer tables for {layers} image layers")]
    LayerTableCount {
        /// Tables carried.
        tables: usize,
        /// Image layers.
        layers: usize,
    },
    /// A layer has no table-of-contents annotation: nothing to check against.
    #[error("layer {index} ({digest}) has no {TOC_DIGEST_ANNOTATION} annotation: its files cannot be verified; convert the image again with `starlight convert`")]
    MissingAnnotation {
        /// Position (bottom = 0).
        index: usize,
        /// Layer digest.
        digest: String,
    },
    /// A layer's annotation is not a digest.
    #[error("layer {index} ({digest}): annotation {TOC_DIGEST_ANNOTATION} = {value:?} is not a sha256 digest")]
    BadAnnotation {
        /// Position (bottom = 0).
        index: usize,
        /// Layer digest.
        digest: String,
        /// The annotation's value.
        value: String,
    },
    /// A layer table does not hash to the layer's annotation.
    #[error("layer {index} ({digest}): the header's table of contents has digest {actual}, the manifest commits to {annotation}")]
    LayerTable {
        /// Position (bottom = 0).
        index: usize,
        /// Layer digest.
        digest: String,
        /// The annotation.
        annotation: String,
        /// The digest of the header's table.
        actual: String,
    },
    /// The merged table has a different number of entries than the merge.
    #[error("the header's merged table has {header} entries, the merge of the layer tables has {merged}")]
    TocLength {
        /// Entries in the header.
        header: usize,
        /// Entries the merge gives.
        merged: usize,
    },
    /// An entry of the merged table differs from the merge.
    #[error("merged entry {index} ({path:?}): its {field} does not follow from the layer tables")]
    TocEntry {
        /// Position in the merged table.
        index: usize,
        /// The header entry's path.
        path: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// An entry's content source disagrees with its content.
    #[error("entry {path:?}: {reason}")]
    Source {
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A payload is used by no entry.
    #[error("payload {index} is used by no entry of the table of contents")]
    UnusedPayload {
        /// Payload index.
        index: usize,
    },
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn sha256_str(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest digest a pull of `image` pins, if it is a pull by digest
/// (`repo@<digest>` or a bare `sha256:…`).
pub fn pinned_digest(image: &str) -> Option<&str> {
    match image.rsplit_once('@') {
        Some((_, digest)) => Some(digest),
        None if image.starts_with("sha256:") => Some(image),
        None => None,
    }
}

/// Checks that `header`, received for a pull of `image`, follows from its
/// manifest (see the module documentation); the first failure found is
/// returned.
pub fn verify_header(header: &Header, image: &str) -> Result<(), VerifyError> {
    let manifest = verify_documents(header, image)?;
    verify_layers(header, &manifest)?;
    verify_layer_tables(header, &manifest)?;
    let merged = merge_layers(&header.layer_tocs);
    verify_merged(header, &merged)?;
    verify_sources(header)
}

/// Steps 1 and 2: the manifest's and the config's bytes.
fn verify_documents(header: &Header, image: &str) -> Result<ManifestDoc, VerifyError> {
    if parse_sha256_digest(&header.manifest_digest).is_none() {
        return Err(VerifyError::BadDigest {
            what: "manifest digest",
            value: header.manifest_digest.clone(),
        });
    }
    let actual = sha256_str(&header.manifest);
    if actual != header.manifest_digest {
        return Err(VerifyError::ManifestDigest {
            announced: header.manifest_digest.clone(),
            actual,
        });
    }
    if let Some(requested) = pinned_digest(image) {
        if requested != header.manifest_digest {
            return Err(VerifyError::PinnedDigest {
                requested: requested.to_string(),
                sent: header.manifest_digest.clone(),
            });
        }
    }
    let manifest: ManifestDoc = serde_json::from_slice(&header.manifest)
        .map_err(|e| VerifyError::Manifest(e.to_string()))?;
    if let Some(declared) = &manifest.media_type {
        if *declared != header.manifest_media_type {
            return Err(VerifyError::MediaType {
                manifest: declared.clone(),
                header: header.manifest_media_type.clone(),
            });
        }
    }
    if parse_sha256_digest(&manifest.config.digest).is_none() {
        return Err(VerifyError::BadDigest {
            what: "config digest",
            value: manifest.config.digest.clone(),
        });
    }
    let actual = sha256_str(&header.config);
    if actual != manifest.config.digest {
        return Err(VerifyError::ConfigDigest {
            manifest: manifest.config.digest.clone(),
            actual,
        });
    }
    Ok(manifest)
}

/// Step 3: the header's image layers are the manifest's.
fn verify_layers(header: &Header, manifest: &ManifestDoc) -> Result<(), VerifyError> {
    if header.image_layers.len() != manifest.layers.len() {
        return Err(VerifyError::LayerCount {
            manifest: manifest.layers.len(),
            header: header.image_layers.len(),
        });
    }
    for (index, (&i, desc)) in header.image_layers.iter().zip(&manifest.layers).enumerate() {
        let named = header
            .layers
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or("");
        if named != desc.digest {
            return Err(VerifyError::LayerDigest {
                index,
                manifest: desc.digest.clone(),
                header: named.to_string(),
            });
        }
    }
    Ok(())
}

/// Step 4: each layer table against its annotation.
fn verify_layer_tables(header: &Header, manifest: &ManifestDoc) -> Result<(), VerifyError> {
    if header.layer_tocs.len() != manifest.layers.len() {
        return Err(VerifyError::LayerTableCount {
            tables: header.layer_tocs.len(),
            layers: manifest.layers.len(),
        });
    }
    for (index, (table, desc)) in header.layer_tocs.iter().zip(&manifest.layers).enumerate() {
        let Some(value) = desc
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOC_DIGEST_ANNOTATION))
        else {
            return Err(VerifyError::MissingAnnotation {
                index,
                digest: desc.digest.clone(),
            });
        };
        let Some(want) = parse_sha256_digest(value) else {
            return Err(VerifyError::BadAnnotation {
                index,
                digest: desc.digest.clone(),
                value: value.clone(),
            });
        };
        let got = toc_digest(table);
        if got != want {
            return Err(VerifyError::LayerTable {
                index,
                digest: desc.digest.clone(),
                annotation: value.clone(),
                actual: format!("sha256:{}", hex::encode(got)),
            });
        }
    }
    Ok(())
}

/// The first field in which `e` differs from the layer entry `m`.
fn differing_field(e: &TocEntry, m: &LayerEntry) -> Option<&'static str> {
    let checks: [(&'static str, bool); 13] = [
        ("path", e.path == m.path),
        ("kind", e.kind == m.kind),
        ("mode", e.mode == m.mode),
        ("uid", e.uid == m.uid),
        ("gid", e.gid == m.gid),
        ("mtime", e.mtime == m.mtime),
        ("mtime_nsec", e.mtime_nsec == m.mtime_nsec),
        ("size", e.size == m.size),
        ("link", e.link == m.link),
        ("devmajor", e.devmajor == m.devmajor),
        ("devminor", e.devminor == m.devminor),
        ("xattrs", e.xattrs == m.xattrs),
        ("sha256", e.sha256 == m.sha256),
    ];
    checks.iter().find(|(_, same)| !same).map(|(f, _)| *f)
}

/// Step 5: the merged table is the merge of the layer tables.
fn verify_merged(header: &Header, merged: &[Merged<LayerEntry>]) -> Result<(), VerifyError> {
    if header.toc.len() != merged.len() {
        return Err(VerifyError::TocLength {
            header: header.toc.len(),
            merged: merged.len(),
        });
    }
    for (index, (e, m)) in header.toc.iter().zip(merged).enumerate() {
        let mismatch = |field| VerifyError::TocEntry {
            index,
            path: e.path.clone(),
            field,
        };
        if let Some(field) = differing_field(e, &m.entry) {
            return Err(mismatch(field));
        }
        // A held content may be named through a held image's layer (where
        // the worker has it); otherwise the entry comes from its own layer.
        if e.source != Source::Held {
            let own = header.image_layers.get(m.layer as usize).copied();
            if own != Some(e.layer) {
                return Err(mismatch("layer"));
            }
        }
    }
    Ok(())
}

/// Step 6: sources agree with the contents they deliver.
fn verify_sources(header: &Header) -> Result<(), VerifyError> {
    let mut used = vec![false; header.payloads.len()];
    for e in &header.toc {
        let fail = |reason: String| VerifyError::Source {
            path: e.path.clone(),
            reason,
        };
        match (e.source, e.sha256) {
            (Source::NoContent, None) => {}
            (Source::NoContent, Some(_)) => {
                return Err(fail("it has content but no source".into()));
            }
            (Source::Held | Source::Payload(_), None) => {
                return Err(fail("it has a content source but no content hash".into()));
            }
            (Source::Held, Some(_)) => {}
            (Source::Payload(i), Some(sha)) => {
                let Some(p) = header.payloads.get(i as usize) else {
                    return Err(fail(format!("payload {i} does not exist")));
                };
                if p.sha256 != sha {
                    return Err(fail(format!(
                        "payload {i} has hash {}, the entry {}",
                        hex::encode(p.sha256),
                        hex::encode(sha)
                    )));
                }
                if p.size != e.size {
                    return Err(fail(format!(
                        "payload {i} has size {}, the entry {}",
                        p.size, e.size
                    )));
                }
                used[i as usize] = true;
            }
        }
    }
    match used.iter().position(|u| !u) {
        Some(index) => Err(VerifyError::UnusedPayload { index }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
#[allow(clippy::unwrap_used)]
mod tests;
