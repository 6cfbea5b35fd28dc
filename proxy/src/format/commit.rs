//! The bridge from the layer format to the image's commitment
//! ([`transport_quic::commit`]): a layer's scanned entries in canonical form,
//! their digest, and the check of a manifest annotation against them.

use transport_quic::commit::{parse_toc_digest, toc_digest, LayerEntry, TOC_DIGEST_ANNOTATION};
use transport_quic::EntryKind as WireKind;

use super::{scan_layer, Entry, EntryKind};

/// The wire (and canonical) kind of an entry kind.
pub fn wire_kind(kind: EntryKind) -> WireKind {
    match kind {
        EntryKind::Dir => WireKind::Dir,
        EntryKind::File => WireKind::File,
        EntryKind::Symlink => WireKind::Symlink,
        EntryKind::Hardlink => WireKind::Hardlink,
        EntryKind::CharDev => WireKind::CharDev,
        EntryKind::BlockDev => WireKind::BlockDev,
        EntryKind::Fifo => WireKind::Fifo,
    }
}

/// An entry in canonical form: its metadata and content hash, without the
/// owner names (not part of the tree) and byte offsets (proxy-internal).
pub fn layer_entry(e: &Entry) -> LayerEntry {
    LayerEntry {
        path: e.path.clone(),
        kind: wire_kind(e.kind),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        size: e.size,
        link: e.link.clone(),
        devmajor: e.devmajor,
        devminor: e.devminor,
        xattrs: e.xattrs.clone(),
        sha256: e.content.map(|c| c.sha256),
    }
}

/// A layer's scanned entries in canonical form.
pub fn layer_toc(entries: &[Entry]) -> Vec<LayerEntry> {
    entries.iter().map(layer_entry).collect()
}

/// The annotation value for a layer whose scan gave `entries`.
pub fn toc_annotation(entries: &[Entry]) -> String {
    transport_quic::commit::toc_digest_string(&layer_toc(entries))
}

/// Scans a converted blob and returns its annotation value, or `None` if the
/// blob is not a valid Starlight layer.
pub fn toc_annotation_of_blob(blob: &[u8]) -> Option<String> {
    scan_layer(blob).ok().map(|s| toc_annotation(&s.entries))
}

/// How a layer descriptor's annotation compares with its scanned entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotationCheck {
    /// The annotation commits to exactly these entries.
    Matches,
    /// The descriptor has no [`TOC_DIGEST_ANNOTATION`].
    Missing,
}

/// Checks the value of a layer's [`TOC_DIGEST_ANNOTATION`] (if any) against
/// the entries scanned from its blob; `Err` explains a malformed or
/// mismatching annotation.
pub fn check_toc_annotation(
    annotation: Option<&str>,
    entries: &[Entry],
) -> Result<AnnotationCheck, String> {
    let Some(value) = annotation else {
        return Ok(AnnotationCheck::Missing);
    };
    let want = parse_toc_digest(value).ok_or_else(|| {
        format!("annotation {TOC_DIGEST_ANNOTATION} = {value:?} is not a sha256 digest")
    })?;
    let got = toc_digest(&layer_toc(entries));
    if got != want {
        return Err(format!(
            "the table of contents scanned from the blob has digest sha256:{}, but the manifest's annotation {TOC_DIGEST_ANNOTATION} commits to {value}: the manifest does not describe this layer",
            hex::encode(got)
        ));
    }
    Ok(AnnotationCheck::Matches)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::ContentRef;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::new("d", EntryKind::Dir, 0o755),
            Entry {
                size: 3,
                uname: "ignored".into(),
                content: Some(ContentRef {
                    sha256: [1; 32],
                    offset: 10,
                    compressed_len: 9,
                }),
                ..Entry::new("d/f", EntryKind::File, 0o644)
            },
        ]
    }

    #[test]
    fn offsets_and_names_are_not_committed_but_content_is() {
        let a = entries();
        let mut b = entries();
        b[1].content = Some(ContentRef {
            offset: 99,
            compressed_len: 1,
            ..b[1].content.unwrap()
        });
        b[1].gname = "other".into();
        assert_eq!(toc_annotation(&a), toc_annotation(&b));
        b[1].content = Some(ContentRef {
            sha256: [2; 32],
            ..b[1].content.unwrap()
        });
        assert_ne!(toc_annotation(&a), toc_annotation(&b));
    }

    #[test]
    fn annotation_check() {
        let e = entries();
        let good = toc_annotation(&e);
        assert_eq!(
            check_toc_annotation(Some(&good), &e),
            Ok(AnnotationCheck::Matches)
        );
        assert_eq!(check_toc_annotation(None, &e), Ok(AnnotationCheck::Missing));
        let err = check_toc_annotation(Some(&good), &e[..1]).unwrap_err();
        assert!(err.contains("does not describe this layer"), "{err}");
        assert!(check_toc_annotation(Some("sha256:zz"), &e).is_err());
    }
}
