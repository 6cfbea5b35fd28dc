//! What a resumed receive needs: the backoff between reconnects, the
//! request pinned to the verified manifest, and the check that a resumed
//! header describes the very image the first one did.

use std::time::Duration;

use transport_quic::{Header, Source, TocEntry};

/// Bounded exponential backoff between reconnects: `initial`, doubling up
/// to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first reconnect.
    pub initial: Duration,
    /// The longest wait between two reconnects.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before reconnect number `n` (0 for the first).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
            .max(Duration::from_millis(1))
    }
}

/// `image` pinned to `manifest_digest`: `repo@sha256:…` for `repo:tag` or
/// `repo@…`, the digest alone for a bare digest. A resumed request names
/// the manifest already verified, so a tag moved meanwhile cannot swap in
/// another image.
pub fn pinned_image(image: &str, manifest_digest: &str) -> String {
    if image.starts_with("sha256:") {
        return manifest_digest.to_string();
    }
    let repo = match image.rsplit_once('@') {
        Some((repo, _)) => repo,
        None => {
            let last = image.rfind('/').map_or(0, |i| i + 1);
            match image[last..].find(':') {
                Some(colon) => &image[..last + colon],
                None => image,
            }
        }
    };
    format!("{repo}@{manifest_digest}")
}

/// Why a resumed header does not continue the first one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeMismatch {
    /// Another manifest (or its bytes) than the one verified.
    #[error("the resumed bundle is for manifest {sent}, not {expected}")]
    Manifest {
        /// The manifest verified first.
        expected: String,
        /// The one the resumed header names.
        sent: String,
    },
    /// Another configuration, layer table or per-layer tables.
    #[error("the resumed bundle's {0} differ from the first header's")]
    Documents(&'static str),
    /// The tables of contents differ beyond where contents come from.
    #[error("the resumed bundle's table of contents differs at {0:?}")]
    Toc(String),
}

/// The layer digest of an entry (its index resolved in its header's table).
fn layer_of<'h>(h: &'h Header, e: &TocEntry) -> Option<&'h String> {
    h.layers.get(e.layer as usize)
}

/// The wanted image's layer digests, bottom first.
fn image_layers(h: &Header) -> Vec<Option<&String>> {
    h.image_layers
        .iter()
        .map(|i| h.layers.get(*i as usize))
        .collect()
}

/// An entry as the image defines it (not where its content comes from, nor
/// the held layer a held content is named through).
fn same_entry(first: &Header, a: &TocEntry, resumed: &Header, b: &TocEntry) -> bool {
    let content = |e: &TocEntry| matches!(e.source, Source::NoContent);
    a.path == b.path
        && a.kind == b.kind
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime == b.mtime
        && a.mtime_nsec == b.mtime_nsec
        && a.size == b.size
        && a.link == b.link
        && a.devmajor == b.devmajor
        && a.devminor == b.devminor
        && a.xattrs == b.xattrs
        && a.sha256 == b.sha256
        // A held content is named through the layer where the worker has it
        // (a held image's), which depends on the held set, not the image.
        && (a.source == Source::Held
            || b.source == Source::Held
            || layer_of(first, a) == layer_of(resumed, b))
        && content(a) == content(b)
}

/// Checks that `resumed` (already checked and verified against its
/// manifest) describes the image of `first`: same manifest and
/// configuration bytes, layers and per-layer tables, and the same entries
/// (from the same layers); only which contents are payloads and which are
/// held (and the held images' layers in the layer table) may differ.
pub fn check_resumed(first: &Header, resumed: &Header) -> Result<(), ResumeMismatch> {
    if first.manifest_digest != resumed.manifest_digest || first.manifest != resumed.manifest {
        return Err(ResumeMismatch::Manifest {
            expected: first.manifest_digest.clone(),
            sent: resumed.manifest_digest.clone(),
        });
    }
    if first.manifest_media_type != resumed.manifest_media_type || first.config != resumed.config {
        return Err(ResumeMismatch::Documents("configuration"));
    }
    if image_layers(first) != image_layers(resumed) {
        return Err(ResumeMismatch::Documents("layers"));
    }
    if first.layer_tocs != resumed.layer_tocs {
        return Err(ResumeMismatch::Documents("per-layer tables"));
    }
    if first.toc.len() != resumed.toc.len() {
        return Err(ResumeMismatch::Toc(format!(
            "{} entries instead of {}",
            resumed.toc.len(),
            first.toc.len()
        )));
    }
    for (a, b) in first.toc.iter().zip(&resumed.toc) {
        if !same_entry(first, a, resumed, b) {
            return Err(ResumeMismatch::Toc(b.path.chars().take(200).collect()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let b = Backoff::default();
        let d: Vec<u64> = (0..8).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(3), Duration::from_millis(1));
    }

    fn entry(path: &str, sha: u8, source: Source) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind: transport_quic::EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
            size: 10,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            sha256: Some([sha; 32]),
            layer: 0,
            source,
        }
    }

    fn header() -> Header {
        Header {
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: b"{}".to_vec(),
            config: b"{}".to_vec(),
            layers: vec![format!("sha256:{}", "c".repeat(64))],
            image_layers: vec![0],
            toc: vec![
                entry("a", 1, Source::Payload(0)),
                entry("b", 2, Source::Payload(1)),
            ],
            payloads: vec![],
            layer_tocs: vec![vec![]],
        }
    }

    #[test]
    fn a_resumed_header_may_only_move_contents_to_held() {
        let first = header();
        let mut resumed = header();
        resumed.toc[0].source = Source::Held;
        resumed.toc[1].source = Source::Payload(0);
        // A held image's layers appended to the table change nothing.
        resumed.layers.push(format!("sha256:{}", "d".repeat(64)));
        assert_eq!(check_resumed(&first, &resumed), Ok(()));

        let mut other = header();
        other.manifest_digest = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(
            check_resumed(&first, &other),
            Err(ResumeMismatch::Manifest { .. })
        ));
        let mut other = header();
        other.config = b"{\"x\":1}".to_vec();
        assert!(check_resumed(&first, &other).is_err());
        let mut other = header();
        other.toc[1].sha256 = Some([9; 32]);
        assert_eq!(
            check_resumed(&first, &other),
            Err(ResumeMismatch::Toc("b".into()))
        );
        let mut other = header();
        other.toc[0].mode = 0o4755;
        assert!(check_resumed(&first, &other).is_err());
        let mut other = header();
        other.toc.pop();
        assert!(check_resumed(&first, &other).is_err());
        // An entry from another layer is another image.
        let mut other = header();
        other.layers = vec![
            format!("sha256:{}", "d".repeat(64)),
            first.layers[0].clone(),
        ];
        other.image_layers = vec![1];
        other.toc[0].layer = 0;
        other.toc[1].layer = 1;
        assert!(check_resumed(&first, &other).is_err());
    }

    #[test]
    fn resumed_requests_pin_the_verified_manifest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let other = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            pinned_image("127.0.0.1:5000/app:v1", &d),
            format!("127.0.0.1:5000/app@{d}")
        );
        assert_eq!(pinned_image("app", &d), format!("app@{d}"));
        assert_eq!(
            pinned_image(&format!("app@{other}"), &d),
            format!("app@{d}")
        );
        assert_eq!(pinned_image(&other, &d), d);
        assert_eq!(
            pinned_image("host:5000/ns/app", &d),
            format!("host:5000/ns/app@{d}")
        );
    }
}
