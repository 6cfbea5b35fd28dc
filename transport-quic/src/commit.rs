//! How a converted image commits to its file tables.
//!
//! `starlight convert` writes, on every layer descriptor of the converted
//! manifest, the annotation [`TOC_DIGEST_ANNOTATION`] =
//! `sha256:<hex>`: the SHA-256 of the canonical encoding of that layer's
//! table of contents ([`toc_digest`]). The table is what scanning the blob
//! yields, so the proxy's indexer recomputes it from the blob and refuses an
//! image whose annotation disagrees, and the worker recomputes it from the
//! per-layer tables a bundle header carries ([`crate::Header::layer_tocs`]).
//! Since the manifest's digest covers its annotations, a worker that checked
//! the manifest digest, then each layer table against its annotation, then
//! the merged view against [`crate::merge::merge_layers`] of those tables,
//! knows the tree it mounts is the one the image's author converted.
//!
//! # Canonical encoding (version 1)
//!
//! All integers are little-endian and of fixed width; a string or byte
//! string is `u32 length ‖ bytes`; an optional value is `u8 0`, or `u8 1 ‖
//! value`.
//!
//! ```text
//! toc      = "starlight-toc-v1\0" ‖ u64 entry count ‖ entry*      (tar order)
//! entry    = str path ‖ u8 kind ‖ u32 mode ‖ u64 uid ‖ u64 gid
//!            ‖ i64 mtime ‖ u32 mtime_nsec ‖ u64 size ‖ opt(str link)
//!            ‖ u32 devmajor ‖ u32 devminor
//!            ‖ u32 xattr count ‖ (str name ‖ str value)*   (sorted by name, then value)
//!            ‖ opt(32 bytes content sha256)
//! kind     = 0 dir, 1 file, 2 symlink, 3 hard link, 4 char device,
//!            5 block device, 6 fifo
//! ```
//!
//! Every field is written, zero or empty ones included. Whiteouts
//! (`dir/.wh.name`) and opaque markers (`dir/.wh..wh..opq`) are ordinary
//! entries of the table, as they appear in the layer. Byte offsets inside the
//! blob are not part of it (they are the proxy's business, and the worker
//! checks every content by its SHA-256).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{EntryKind, Source, TocEntry};

/// Layer annotation holding the digest of the layer's canonical table of
/// contents (`sha256:<64 hex>`).
pub const TOC_DIGEST_ANNOTATION: &str = "io.starlight.toc.digest";

/// Domain tag that starts every encoded table (names the encoding version).
pub const TOC_ENCODING_TAG: &[u8] = b"starlight-toc-v1\0";

/// One entry of a layer's table of contents, as the layer supplies it (tar
/// order, whiteouts included, later duplicates already replacing earlier
/// ones as the scanner resolves them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// Normalized path relative to the layer root (`""`: the root).
    pub path: String,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits and set-id/sticky bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u64,
    /// Owner group id.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Uncompressed content size in bytes.
    pub size: u64,
    /// Symlink target or hard-link target path.
    pub link: Option<String>,
    /// Device major number.
    pub devmajor: u32,
    /// Device minor number.
    pub devminor: u32,
    /// Extended attributes (name, value).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// SHA-256 of the uncompressed content (files and hard links with content).
    pub sha256: Option<[u8; 32]>,
}

impl LayerEntry {
    /// An entry of `kind` at `path` owned by root with `mode`, every other
    /// field zero or empty.
    pub fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: Vec::new(),
            sha256: None,
        }
    }
}

impl TocEntry {
    /// The merged-table entry for layer entry `e`, supplied by layer `layer`
    /// (an index into the header's layer table) with its content from
    /// `source`.
    pub fn from_layer_entry(e: LayerEntry, layer: u32, source: Source) -> TocEntry {
        TocEntry {
            path: e.path,
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            size: e.size,
            link: e.link,
            devmajor: e.devmajor,
            devminor: e.devminor,
            xattrs: e.xattrs,
            sha256: e.sha256,
            layer,
            source,
        }
    }
}

/// The one-byte code of `kind` in the canonical encoding.
pub fn kind_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Dir => 0,
        EntryKind::File => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
        EntryKind::CharDev => 4,
        EntryKind::BlockDev => 5,
        EntryKind::Fifo => 6,
    }
}

/// A sink for the canonical bytes (a hasher, or a buffer in tests).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn put_bytes(out: &mut impl Sink, b: &[u8]) {
    // Lengths above u32::MAX cannot come from a bounded layer or header;
    // saturating keeps the function total (and such an entry unmatchable).
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.put(&len.to_le_bytes());
    out.put(b);
}

fn put_entry(out: &mut impl Sink, e: &LayerEntry) {
    put_bytes(out, e.path.as_bytes());
    out.put(&[kind_code(e.kind)]);
    out.put(&e.mode.to_le_bytes());
    out.put(&e.uid.to_le_bytes());
    out.put(&e.gid.to_le_bytes());
    out.put(&e.mtime.to_le_bytes());
    out.put(&e.mtime_nsec.to_le_bytes());
    out.put(&e.size.to_le_bytes());
    match &e.link {
        None => out.put(&[0]),
        Some(l) => {
            out.put(&[1]);
            put_bytes(out, l.as_bytes());
        }
    }
    out.put(&e.devmajor.to_le_bytes());
    out.put(&e.devminor.to_le_bytes());
    let mut xattrs: Vec<&(String, Vec<u8>)> = e.xattrs.iter().collect();
    xattrs.sort();
    let n = u32::try_from(xattrs.len()).unwrap_or(u32::MAX);
    out.put(&n.to_le_bytes());
    for (name, value) in xattrs {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
    match &e.sha256 {
        None => out.put(&[0]),
        Some(h) => {
            out.put(&[1]);
            out.put(h);
        }
    }
}

fn put_toc<'a>(out: &mut impl Sink, count: u64, entries: impl IntoIterator<Item = &'a LayerEntry>) {
    out.put(TOC_ENCODING_TAG);
    out.put(&count.to_le_bytes());
    for e in entries {
        put_entry(out, e);
    }
}

/// The canonical encoding of a layer table (see the module documentation).
pub fn encode_toc(entries: &[LayerEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    put_toc(&mut out, entries.len() as u64, entries);
    out
}

/// SHA-256 of the canonical encoding of `entries`, computed without
/// building the encoding in memory.
pub fn toc_digest(entries: &[LayerEntry]) -> [u8; 32] {
    let mut h = Sha256::new();
    put_toc(&mut h, entries.len() as u64, entries);
    h.finalize().into()
}

/// [`toc_digest`] as the annotation value: `sha256:<64 lower-case hex>`.
pub fn toc_digest_string(entries: &[LayerEntry]) -> String {
    format!("sha256:{}", hex::encode(toc_digest(entries)))
}

/// Parses an annotation value (`sha256:<64 lower-case hex>`) into the
/// digest bytes; `None` if it is not exactly that.
pub fn parse_toc_digest(value: &str) -> Option<[u8; 32]> {
    parse_sha256_digest(value)
}

/// Parses an OCI `sha256:<64 lower-case hex>` digest into its bytes; `None`
/// if the string is anything else.
pub fn parse_sha256_digest(value: &str) -> Option<[u8; 32]> {
    let hex_part = value.strip_prefix("sha256:")?;
    if hex_part.len() != 64
        || !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn full() -> LayerEntry {
        LayerEntry {
            path: "usr/bin/x".into(),
            kind: EntryKind::File,
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
            mtime_nsec: 123,
            size: 42,
            link: Some("t".into()),
            devmajor: 8,
            devminor: 1,
            xattrs: vec![
                ("user.b".into(), b"2".to_vec()),
                ("user.a".into(), b"1".to_vec()),
            ],
            sha256: Some([7; 32]),
        }
    }

    #[test]
    fn encoding_is_deterministic_and_sorts_xattrs() {
        let a = full();
        let mut b = full();
        b.xattrs.reverse();
        let one = std::slice::from_ref(&a);
        assert_eq!(encode_toc(one), encode_toc(one));
        assert_eq!(toc_digest(one), toc_digest(&[b]));
        // The streamed digest is the digest of the encoding.
        let direct: [u8; 32] = Sha256::digest(encode_toc(one)).into();
        assert_eq!(toc_digest(one), direct);
    }

    #[test]
    fn exact_bytes_of_a_minimal_entry() {
        let e = LayerEntry::new("a", EntryKind::Dir, 0o755);
        let mut want = TOC_ENCODING_TAG.to_vec();
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.push(b'a');
        want.push(0); // dir
        want.extend_from_slice(&0o755u32.to_le_bytes());
        want.extend_from_slice(&[0; 8 + 8 + 8 + 4 + 8]); // uid gid mtime nsec size
        want.push(0); // no link
        want.extend_from_slice(&[0; 4 + 4 + 4]); // dev, no xattrs
        want.push(0); // no hash
        assert_eq!(encode_toc(&[e]), want);
    }

    /// Every field changes the digest, including a change from a zero or
    /// empty value to a present one (nothing is skipped for being default).
    #[test]
    fn every_field_is_covered() {
        let base = full();
        let d = toc_digest(std::slice::from_ref(&base));
        let zero = LayerEntry::new("usr/bin/x", EntryKind::File, 0);
        let dz = toc_digest(std::slice::from_ref(&zero));
        type Change = Box<dyn Fn(&mut LayerEntry)>;
        let variants: Vec<(&str, Change)> = vec![
            ("path", Box::new(|e| e.path.push('y'))),
            ("kind", Box::new(|e| e.kind = EntryKind::Hardlink)),
            ("mode", Box::new(|e| e.mode ^= 1)),
            ("uid", Box::new(|e| e.uid += 1)),
            ("gid", Box::new(|e| e.gid += 1)),
            ("mtime", Box::new(|e| e.mtime += 1)),
            ("mtime_nsec", Box::new(|e| e.mtime_nsec += 1)),
            ("size", Box::new(|e| e.size += 1)),
            ("link", Box::new(|e| e.link = Some("u".into()))),
            ("link none", Box::new(|e| e.link = None)),
            ("link empty", Box::new(|e| e.link = Some(String::new()))),
            ("devmajor", Box::new(|e| e.devmajor += 1)),
            ("devminor", Box::new(|e| e.devminor += 1)),
            (
                "xattr value",
                Box::new(|e| {
                    if let Some(x) = e.xattrs.first_mut() {
                        x.1.push(0);
                    }
                }),
            ),
            (
                "xattr name",
                Box::new(|e| {
                    if let Some(x) = e.xattrs.first_mut() {
                        x.0.push('c');
                    }
                }),
            ),
            (
                "empty xattr added",
                Box::new(|e| e.xattrs.push(("user.z".into(), Vec::new()))),
            ),
            (
                "xattr dropped",
                Box::new(|e| {
                    e.xattrs.pop();
                }),
            ),
            ("sha256", Box::new(|e| e.sha256 = Some([8; 32]))),
            ("sha256 none", Box::new(|e| e.sha256 = None)),
        ];
        for (what, change) in &variants {
            let mut e = base.clone();
            change(&mut e);
            assert_ne!(toc_digest(&[e]), d, "{what} is not covered");
            let mut z = zero.clone();
            change(&mut z);
            if z != zero {
                assert_ne!(toc_digest(&[z]), dz, "{what} from zero is not covered");
            }
        }
        // A zero-valued optional differs from an absent one.
        let mut empty_link = zero.clone();
        empty_link.link = Some(String::new());
        assert_ne!(toc_digest(&[empty_link]), dz);
        let mut zero_hash = zero.clone();
        zero_hash.sha256 = Some([0; 32]);
        assert_ne!(toc_digest(&[zero_hash]), dz);
    }

    #[test]
    fn order_count_and_boundaries_are_covered() {
        let a = LayerEntry::new("a", EntryKind::File, 0o644);
        let b = LayerEntry::new("b", EntryKind::File, 0o644);
        let ab = toc_digest(&[a.clone(), b.clone()]);
        assert_ne!(ab, toc_digest(&[b.clone(), a.clone()]), "order");
        assert_ne!(ab, toc_digest(std::slice::from_ref(&a)), "dropped entry");
        assert_ne!(
            ab,
            toc_digest(&[a.clone(), b.clone(), b.clone()]),
            "added entry"
        );
        assert_ne!(toc_digest(&[]), toc_digest(std::slice::from_ref(&a)));
        // Length prefixes keep string boundaries apart.
        let mut x1 = a.clone();
        x1.xattrs = vec![("user.ab".into(), b"c".to_vec())];
        let mut x2 = a.clone();
        x2.xattrs = vec![("user.a".into(), b"bc".to_vec())];
        assert_ne!(toc_digest(&[x1]), toc_digest(&[x2]));
    }

    #[test]
    fn digest_strings_round_trip_and_bad_ones_are_refused() {
        let e = [full()];
        let s = toc_digest_string(&e);
        assert_eq!(parse_toc_digest(&s), Some(toc_digest(&e)));
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            &s[..s.len() - 1],
            &format!("{s}0"),
            &s.to_uppercase(),
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert_eq!(parse_toc_digest(bad), None, "{bad:?}");
        }
    }
}
