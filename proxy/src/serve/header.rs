//! Maps an optimizer plan and the wanted image's record to the wire header.

use crate::db::{Db, DbError, ImageRecord};
use crate::format::commit::{layer_entry, layer_toc};
use crate::format::Compression;
use crate::optimize::{BundlePlan, PlannedEntry, PlannedSource};
use transport_quic::codec::{Header, PayloadCompression, PayloadInfo, Source, TocEntry};
use transport_quic::commit::LayerEntry;

/// Why a plan cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A payload's blob is not compressed (the format requires gzip or zstd).
    #[error("payload {index} comes from an uncompressed blob {layer}")]
    Uncompressed {
        /// Payload index.
        index: usize,
        /// Blob digest.
        layer: String,
    },
}

fn wire_entry(p: &PlannedEntry) -> TocEntry {
    let source = match p.source {
        PlannedSource::NoContent => Source::NoContent,
        PlannedSource::Payload(i) => Source::Payload(i),
        PlannedSource::Held => Source::Held,
    };
    TocEntry::from_layer_entry(layer_entry(&p.entry), p.layer, source)
}

/// The per-layer tables of `wanted` (bottom first) in canonical form, as the
/// header carries them for the worker to check against the manifest.
pub fn layer_tables(db: &Db, wanted: &ImageRecord) -> Result<Vec<Vec<LayerEntry>>, DbError> {
    wanted
        .layers
        .iter()
        .map(|l| db.layer_entries(&l.digest).map(|e| layer_toc(&e)))
        .collect()
}

/// The header of the bundle that carries `plan` for the image `wanted`,
/// whose per-layer tables are `layer_tocs` (as `layer_tables` reads them).
pub fn build_header(
    wanted: &ImageRecord,
    plan: &BundlePlan,
    layer_tocs: Vec<Vec<LayerEntry>>,
) -> Result<Header, HeaderError> {
    let payloads = plan
        .payloads
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let compression = match p.compression {
                Compression::Gzip => PayloadCompression::Gzip,
                Compression::Zstd => PayloadCompression::Zstd,
                Compression::None => {
                    return Err(HeaderError::Uncompressed {
                        index,
                        layer: p.layer_digest.clone(),
                    })
                }
            };
            Ok(PayloadInfo {
                sha256: p.sha256,
                compression,
                compressed_len: p.compressed_len,
                size: p.size,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        manifest_digest: wanted.manifest_digest.clone(),
        manifest_media_type: wanted.manifest_media_type.clone(),
        manifest: wanted.manifest_raw.clone(),
        config: wanted.config_raw.clone(),
        layers: plan.layers.clone(),
        image_layers: plan.image_layers.clone(),
        toc: plan.toc.iter().map(wire_entry).collect(),
        payloads,
        layer_tocs,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::{ContentRef, Entry, EntryKind};
    use crate::optimize::PlannedPayload;
    use transport_quic::EntryKind as WireKind;

    fn entry(path: &str, kind: EntryKind, content: Option<ContentRef>) -> Entry {
        Entry {
            uid: 1,
            gid: 2,
            mtime: 3,
            mtime_nsec: 4,
            size: content.map_or(0, |_| 9),
            xattrs: vec![("user.a".into(), b"v".to_vec())],
            content,
            ..Entry::new(path, kind, 0o644)
        }
    }

    #[test]
    fn plan_maps_to_a_valid_header() {
        let c = ContentRef {
            sha256: [7; 32],
            offset: 10,
            compressed_len: 5,
        };
        let record = ImageRecord {
            manifest_digest: "sha256:m".into(),
            references: vec![],
            manifest_media_type: "mt".into(),
            manifest_raw: b"{m}".to_vec(),
            config_raw: b"{c}".to_vec(),
            platform: "linux/amd64".into(),
            layers: vec![],
            toc_entries: 3,
        };
        let plan = BundlePlan {
            layers: vec!["sha256:l0".into(), "sha256:h0".into()],
            image_layers: vec![0],
            toc: vec![
                PlannedEntry {
                    entry: entry("d", EntryKind::Dir, None),
                    layer: 0,
                    source: PlannedSource::NoContent,
                },
                PlannedEntry {
                    entry: entry("d/f", EntryKind::File, Some(c)),
                    layer: 0,
                    source: PlannedSource::Payload(0),
                },
                PlannedEntry {
                    entry: entry("d/g", EntryKind::File, Some(c)),
                    layer: 1,
                    source: PlannedSource::Held,
                },
            ],
            payloads: vec![PlannedPayload {
                sha256: [7; 32],
                layer: 0,
                layer_digest: "sha256:l0".into(),
                compression: Compression::Zstd,
                offset: 10,
                compressed_len: 5,
                size: 9,
                rank: None,
            }],
        };
        let h = build_header(&record, &plan, vec![vec![]]).unwrap();
        assert_eq!(h.layer_tocs, vec![vec![]]);
        transport_quic::codec::validate_header(&h, &Default::default()).unwrap();
        assert_eq!(h.manifest, b"{m}");
        assert_eq!(h.toc[1].source, Source::Payload(0));
        assert_eq!(h.toc[2].source, Source::Held);
        assert_eq!(h.toc[2].layer, 1);
        assert_eq!(h.toc[1].sha256, Some([7; 32]));
        assert_eq!(h.toc[0].kind, WireKind::Dir);
        assert_eq!(h.payloads[0].compression, PayloadCompression::Zstd);

        let mut bad = plan.clone();
        bad.payloads[0].compression = Compression::None;
        assert!(build_header(&record, &bad, vec![]).is_err());
    }
}
