//! Every refusal of [`super::verify_header`], each from a header that passes
//! before the one tampering it names.

use super::*;
use crate::{EntryKind, PayloadCompression, PayloadInfo};
use serde_json::json;

fn file(path: &str, data: &[u8]) -> LayerEntry {
    LayerEntry {
        size: data.len() as u64,
        sha256: Some(Sha256::digest(data).into()),
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
        ..LayerEntry::new(path, EntryKind::File, 0o644)
    }
}

fn dir(path: &str) -> LayerEntry {
    LayerEntry::new(path, EntryKind::Dir, 0o755)
}

fn layers() -> Vec<Vec<LayerEntry>> {
    vec![
        vec![
            dir("etc"),
            file("etc/passwd", b"root:x:0:0\n"),
            file("etc/hosts", b"127.0.0.1 localhost\n"),
            LayerEntry {
                link: Some("etc/passwd".into()),
                ..file("etc/passwd-", b"root:x:0:0\n")
            }
            .hardlink(),
            LayerEntry {
                link: Some("/etc/hosts".into()),
                ..LayerEntry::new("hosts", EntryKind::Symlink, 0o777)
            },
        ],
        vec![
            file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n"),
            LayerEntry::new("etc/.wh.hosts", EntryKind::File, 0),
            file("app/main", b"\x7fELF"),
        ],
    ]
}

trait Hardlink {
    fn hardlink(self) -> Self;
}
impl Hardlink for LayerEntry {
    fn hardlink(mut self) -> Self {
        self.kind = EntryKind::Hardlink;
        self
    }
}

const LAYER_DIGESTS: [&str; 2] = [
    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
];

fn manifest_of(tables: &[Vec<LayerEntry>], config: &[u8], annotate: bool) -> Vec<u8> {
    let layers: Vec<_> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut d = json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": LAYER_DIGESTS[i],
                "size": 100,
            });
            if annotate {
                d["annotations"] = json!({
                    TOC_DIGEST_ANNOTATION: crate::commit::toc_digest_string(t),
                    "org.starlight.layer.format": "v1",
                });
            }
            d
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_str(config),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap()
}

/// A header exactly as an honest proxy builds it for `tables`: every
/// content as a payload except those in `held`, which the worker holds (a
/// held image's layer, index 2, is listed after the wanted ones).
fn header_of(tables: Vec<Vec<LayerEntry>>, held: &[&str]) -> Header {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let manifest = manifest_of(&tables, &config, true);
    let mut payloads: Vec<PayloadInfo> = Vec::new();
    let toc = merge_layers(&tables)
        .into_iter()
        .map(|m| {
            let e = m.entry;
            let source = match e.sha256 {
                None => Source::NoContent,
                Some(_) if held.contains(&e.path.as_str()) => Source::Held,
                Some(sha) => {
                    let i = payloads
                        .iter()
                        .position(|p| p.sha256 == sha)
                        .unwrap_or_else(|| {
                            payloads.push(PayloadInfo {
                                sha256: sha,
                                compression: PayloadCompression::Zstd,
                                compressed_len: 7,
                                size: e.size,
                            });
                            payloads.len() - 1
                        });
                    Source::Payload(i as u32)
                }
            };
            let layer = if source == Source::Held { 2 } else { m.layer };
            TocEntry::from_layer_entry(e, layer, source)
        })
        .collect();
    Header {
        manifest_digest: sha256_str(&manifest),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest,
        config,
        layers: vec![
            LAYER_DIGESTS[0].into(),
            LAYER_DIGESTS[1].into(),
            format!("sha256:{}", "3".repeat(64)),
        ],
        image_layers: (0..tables.len() as u32).collect(),
        toc,
        payloads,
        layer_tocs: tables,
    }
}

fn good() -> Header {
    header_of(layers(), &["etc/passwd-"])
}

/// Re-hashes the manifest after a change to it, as a proxy would to pass
/// step 1.
fn with_manifest(mut h: Header, manifest: Vec<u8>) -> Header {
    h.manifest_digest = sha256_str(&manifest);
    h.manifest = manifest;
    h
}

fn index_of(h: &Header, path: &str) -> usize {
    h.toc.iter().position(|e| e.path == path).unwrap()
}

fn refused(h: &Header) -> VerifyError {
    verify_header(h, "registry.test/app:1").unwrap_err()
}

#[test]
fn an_honest_header_passes_by_tag_and_by_digest() {
    let h = good();
    verify_header(&h, "registry.test/app:1").unwrap();
    verify_header(&h, &format!("registry.test/app@{}", h.manifest_digest)).unwrap();
    verify_header(&h, &h.manifest_digest).unwrap();
    // The hard link keeps its own layer's content although its target was
    // replaced above it; the deleted hosts file is gone.
    let link = &h.toc[index_of(&h, "etc/passwd-")];
    assert_eq!(link.sha256, Some(Sha256::digest(b"root:x:0:0\n").into()));
    assert!(h.toc.iter().all(|e| e.path != "etc/hosts"));
}

#[test]
fn manifest_bytes_must_hash_to_the_digest() {
    let mut h = good();
    h.manifest.push(b' ');
    assert!(matches!(refused(&h), VerifyError::ManifestDigest { .. }));
    let mut h = good();
    h.manifest_digest = "sha256:../../etc".into();
    assert!(matches!(refused(&h), VerifyError::BadDigest { .. }));
}

#[test]
fn a_pull_by_digest_accepts_only_that_manifest() {
    let h = good();
    let other = format!("sha256:{}", "a".repeat(64));
    for image in [format!("registry.test/app@{other}"), other.clone()] {
        let e = verify_header(&h, &image).unwrap_err();
        assert_eq!(
            e,
            VerifyError::PinnedDigest {
                requested: other.clone(),
                sent: h.manifest_digest.clone()
            }
        );
    }
}

#[test]
fn config_must_match_the_manifest() {
    let mut h = good();
    h.config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    assert!(matches!(refused(&h), VerifyError::ConfigDigest { .. }));
}

#[test]
fn media_type_must_be_the_manifests() {
    let mut h = good();
    h.manifest_media_type = "application/vnd.docker.distribution.manifest.v2+json".into();
    assert!(matches!(refused(&h), VerifyError::MediaType { .. }));
}

#[test]
fn manifest_must_be_an_image_manifest() {
    let h = with_manifest(good(), b"{\"layers\": 5}".to_vec());
    assert!(matches!(refused(&h), VerifyError::Manifest(_)));
}

#[test]
fn a_layer_without_the_annotation_is_unverifiable() {
    let h = good();
    let bare = manifest_of(&h.layer_tocs, &h.config, false);
    let h = with_manifest(h, bare);
    assert_eq!(
        refused(&h),
        VerifyError::MissingAnnotation {
            index: 0,
            digest: LAYER_DIGESTS[0].into()
        }
    );
}

#[test]
fn image_layers_must_be_the_manifests_in_order() {
    let mut h = good();
    h.image_layers.swap(0, 1);
    assert!(matches!(
        refused(&h),
        VerifyError::LayerDigest { index: 0, .. }
    ));
    let mut h = good();
    h.image_layers.pop();
    assert!(matches!(refused(&h), VerifyError::LayerCount { .. }));
    let mut h = good();
    h.layers[1] = format!("sha256:{}", "9".repeat(64));
    assert!(matches!(
        refused(&h),
        VerifyError::LayerDigest { index: 1, .. }
    ));
}

#[test]
fn swapped_or_missing_layer_tables_are_refused() {
    let mut h = good();
    h.layer_tocs.swap(0, 1);
    assert!(matches!(
        refused(&h),
        VerifyError::LayerTable { index: 0, .. }
    ));
    let mut h = good();
    h.layer_tocs.pop();
    assert!(matches!(refused(&h), VerifyError::LayerTableCount { .. }));
}

/// A proxy that tampers the layer table too (to keep the merge consistent)
/// is caught by the annotation.
#[test]
fn tampered_layer_tables_do_not_match_their_annotation() {
    type Tamper = fn(&mut Vec<LayerEntry>);
    let cases: [(&str, Tamper); 8] = [
        ("mode", |t| t[1].mode = 0o4755),
        ("uid", |t| t[1].uid = 0),
        ("size", |t| t[1].size += 1),
        ("hash", |t| t[1].sha256 = Some([0; 32])),
        ("link", |t| t[4].link = Some("/etc/shadow".into())),
        ("dropped entry", |t| {
            t.remove(2);
        }),
        ("added entry", |t| {
            t.push(file("etc/sudoers", b"ALL ALL=(ALL) ALL"))
        }),
        ("whiteout dropped", |t| {
            t.retain(|e| !e.path.contains(".wh."));
        }),
    ];
    for (what, tamper) in cases {
        let mut tables = layers();
        let layer = if what == "whiteout dropped" { 1 } else { 0 };
        tamper(&mut tables[layer]);
        // A self-consistent header over the tampered tables, with the
        // original (honest) manifest.
        let honest = good();
        let mut h = header_of(tables, &["etc/passwd-"]);
        h.manifest = honest.manifest.clone();
        h.manifest_digest = honest.manifest_digest.clone();
        let e = refused(&h);
        assert!(
            matches!(e, VerifyError::LayerTable { index, .. } if index == layer),
            "{what}: {e}"
        );
    }
}

/// A proxy that tampers only the merged table is caught by the merge.
#[test]
fn tampered_merged_entries_do_not_follow_from_the_tables() {
    type Tamper = fn(&mut TocEntry);
    let cases: [(&str, Tamper); 7] = [
        ("mode", |e| e.mode = 0o4755),
        ("uid", |e| e.uid = 0),
        ("gid", |e| e.gid = 0),
        ("size", |e| e.size = 1),
        ("sha256", |e| e.sha256 = Some([0; 32])),
        ("mtime", |e| e.mtime = 0),
        ("xattrs", |e| {
            e.xattrs = vec![("security.capability".into(), vec![1])]
        }),
    ];
    for (field, tamper) in cases {
        let mut h = good();
        let i = index_of(&h, "app/main");
        tamper(&mut h.toc[i]);
        assert_eq!(
            refused(&h),
            VerifyError::TocEntry {
                index: i,
                path: "app/main".into(),
                field
            },
            "{field}"
        );
    }
    let mut h = good();
    let i = index_of(&h, "hosts");
    h.toc[i].link = Some("/etc/shadow".into());
    assert!(matches!(
        refused(&h),
        VerifyError::TocEntry { field: "link", .. }
    ));
    let mut h = good();
    let i = index_of(&h, "hosts");
    h.toc[i].kind = EntryKind::CharDev;
    assert!(matches!(
        refused(&h),
        VerifyError::TocEntry { field: "kind", .. }
    ));
}

#[test]
fn dropped_added_or_renamed_merged_entries_are_refused() {
    let mut h = good();
    h.toc.remove(index_of(&h, "hosts"));
    assert!(matches!(refused(&h), VerifyError::TocLength { .. }));
    let mut h = good();
    let mut extra = h.toc[index_of(&h, "hosts")].clone();
    extra.path = "hosts2".into();
    h.toc.push(extra);
    assert!(matches!(refused(&h), VerifyError::TocLength { .. }));
    // The deleted file brought back in place of another entry.
    let mut h = good();
    let i = index_of(&h, "hosts");
    h.toc[i].path = "etc/hosts".into();
    assert!(matches!(
        refused(&h),
        VerifyError::TocEntry { field: "path", .. }
    ));
}

#[test]
fn an_entry_must_name_the_layer_that_supplies_it() {
    let mut h = good();
    let i = index_of(&h, "app/main");
    h.toc[i].layer = 0;
    assert_eq!(
        refused(&h),
        VerifyError::TocEntry {
            index: i,
            path: "app/main".into(),
            field: "layer"
        }
    );
}

#[test]
fn payloads_must_match_the_entries_that_use_them() {
    let mut h = good();
    h.payloads[0].sha256 = [9; 32];
    assert!(matches!(refused(&h), VerifyError::Source { .. }), "hash");
    let mut h = good();
    h.payloads[0].size += 1;
    assert!(matches!(refused(&h), VerifyError::Source { .. }), "size");
    // An entry pointed at another entry's payload.
    let mut h = good();
    let i = index_of(&h, "app/main");
    let j = index_of(&h, "etc/passwd");
    h.toc[i].source = h.toc[j].source;
    assert!(matches!(refused(&h), VerifyError::Source { .. }), "swap");
    // Content without a source, a source without content, an extra payload.
    let mut h = good();
    h.toc[i].source = Source::NoContent;
    assert!(matches!(refused(&h), VerifyError::Source { .. }));
    let mut h = good();
    let d = index_of(&h, "etc");
    h.toc[d].source = Source::Held;
    assert!(matches!(refused(&h), VerifyError::Source { .. }));
    let mut h = good();
    let extra = h.payloads[0].clone();
    h.payloads.push(extra);
    assert_eq!(refused(&h), VerifyError::UnusedPayload { index: 2 });
}

/// Verification is linear: a 50,000-entry image (two layers, the upper one
/// replacing a fifth of the files) verifies well within a pull's time, even
/// in a debug build on a loaded machine.
#[test]
fn a_large_header_verifies_quickly() {
    let lower: Vec<LayerEntry> = std::iter::once(dir("d"))
        .chain((0..40_000).map(|i| file(&format!("d/f{i:06}"), format!("{i}").as_bytes())))
        .collect();
    let upper: Vec<LayerEntry> = (0..10_000)
        .map(|i| file(&format!("d/f{:06}", i * 4), format!("new {i}").as_bytes()))
        .collect();
    let h = header_of(vec![lower, upper], &[]);
    assert_eq!(h.toc.len(), 40_002);
    let t = std::time::Instant::now();
    verify_header(&h, "registry.test/big:1").unwrap();
    let took = t.elapsed();
    println!(
        "verified {} merged entries, {} payloads in {took:?}",
        h.toc.len(),
        h.payloads.len()
    );
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
}
