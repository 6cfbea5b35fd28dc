//! Budgets on what indexing may cost, charged while a layer streams by:
//! metadata bytes kept in memory and uncompressed bytes read, per layer and
//! per image. The per-entry bounds of [`super::limits`] keep one entry
//! small; these keep the sum small, so that a crafted image (thousands of
//! entries with megabytes of xattrs each, or a gzip bomb) is refused as soon
//! as it crosses a budget instead of after exhausting memory or a thread.
//!
//! Metadata bytes of an entry ([`entry_cost`]): [`ENTRY_OVERHEAD`] + its
//! path + its link target + its user and group names + for each xattr
//! [`XATTR_OVERHEAD`] + name + value. A directory that a path implies but
//! the layer does not list (the merged tree creates it) costs
//! [`ENTRY_OVERHEAD`] + its path, once per layer.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, Read};

use super::entry::Entry;

/// Metadata bytes charged per entry on top of its strings (the in-memory
/// record, its index slot and its database row).
pub const ENTRY_OVERHEAD: u64 = 256;
/// Metadata bytes charged per extended attribute on top of name and value.
pub const XATTR_OVERHEAD: u64 = 32;

/// Which budget an indexing job ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    /// Metadata bytes of one layer.
    LayerMetadata,
    /// Metadata bytes of all the layers of one image.
    ImageMetadata,
    /// Uncompressed bytes of one layer.
    LayerUncompressed,
    /// Uncompressed bytes decompressed while indexing one image.
    ImageUncompressed,
}

impl BudgetKind {
    /// The key of the proxy configuration's `[index]` section that sets it.
    pub fn config_key(self) -> &'static str {
        match self {
            BudgetKind::LayerMetadata => "layer_metadata_bytes",
            BudgetKind::ImageMetadata => "image_metadata_bytes",
            BudgetKind::LayerUncompressed => "layer_uncompressed_bytes",
            BudgetKind::ImageUncompressed => "image_uncompressed_bytes",
        }
    }
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetKind::LayerMetadata => "per-layer metadata",
            BudgetKind::ImageMetadata => "per-image metadata",
            BudgetKind::LayerUncompressed => "per-layer uncompressed size",
            BudgetKind::ImageUncompressed => "per-image uncompressed size",
        })
    }
}

/// A budget was exceeded: the work stopped when `used` crossed `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} budget exceeded: {used} bytes, the limit is {limit} bytes (`{}` in the proxy's [index] config)",
    kind.config_key()
)]
pub struct BudgetExceeded {
    /// The budget.
    pub kind: BudgetKind,
    /// Its limit in bytes.
    pub limit: u64,
    /// Bytes counted when the work stopped (at most one entry or one read
    /// buffer above the limit).
    pub used: u64,
}

/// The limits of one image's indexing, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Metadata bytes of one layer.
    pub layer_metadata: u64,
    /// Metadata bytes of all the layers of one image (reused layers count).
    pub image_metadata: u64,
    /// Uncompressed bytes of one layer.
    pub layer_uncompressed: u64,
    /// Bytes decompressed while indexing one image (reused layers cost nothing).
    pub image_uncompressed: u64,
}

impl Budgets {
    /// No limit at all (tests, and scans of trusted input).
    pub const UNLIMITED: Budgets = Budgets {
        layer_metadata: u64::MAX,
        image_metadata: u64::MAX,
        layer_uncompressed: u64::MAX,
        image_uncompressed: u64::MAX,
    };
}

/// Metadata bytes of one entry (see the module documentation).
pub fn entry_cost(e: &Entry) -> u64 {
    let strings =
        e.path.len() + e.link.as_ref().map_or(0, String::len) + e.uname.len() + e.gname.len();
    let xattrs: u64 = e
        .xattrs
        .iter()
        .map(|(n, v)| XATTR_OVERHEAD + (n.len() + v.len()) as u64)
        .sum();
    ENTRY_OVERHEAD + strings as u64 + xattrs
}

/// Metadata bytes of a whole layer's entries, implied directories included:
/// what [`LayerMeter`] charged when the layer was scanned (for layers
/// loaded from the database instead).
pub fn layer_cost(entries: &[Entry]) -> u64 {
    let mut dirs = ImpliedDirs::default();
    entries
        .iter()
        .map(|e| entry_cost(e) + dirs.charge(e))
        .fold(0u64, u64::saturating_add)
}

/// The directories a layer's paths imply, remembered by a keyed 64-bit hash
/// of their path (8 bytes each, not the path).
#[derive(Default)]
struct ImpliedDirs {
    seen: HashSet<u64>,
    hasher: RandomState,
}

impl ImpliedDirs {
    /// Metadata bytes of the directories `e`'s path implies that no earlier
    /// entry listed or implied.
    fn charge(&mut self, e: &Entry) -> u64 {
        let path = e.path.as_str();
        if e.kind == super::EntryKind::Dir {
            self.seen.insert(self.hasher.hash_one(path));
        }
        let mut cost = 0;
        let mut end = path.len();
        // Deepest parent first: once one is known, all above it are.
        while let Some(slash) = path[..end].rfind('/') {
            let parent = &path[..slash];
            if !self.seen.insert(self.hasher.hash_one(parent)) {
                break;
            }
            cost += ENTRY_OVERHEAD + parent.len() as u64;
            end = slash;
        }
        cost
    }
}

/// The meter of one layer's scan: charges metadata per entry and counts
/// uncompressed bytes through [`LayerMeter::reader`], against the layer's
/// budgets and what the image has left.
pub struct LayerMeter {
    budgets: Budgets,
    image_metadata_before: u64,
    image_uncompressed_before: u64,
    metadata: Cell<u64>,
    uncompressed: Cell<u64>,
    exceeded: Cell<Option<BudgetExceeded>>,
    dirs: RefCell<ImpliedDirs>,
}

impl LayerMeter {
    /// A meter for a layer of an image that has already used
    /// `image_metadata` and `image_uncompressed` bytes of its budgets.
    pub fn new(budgets: Budgets, image_metadata: u64, image_uncompressed: u64) -> Self {
        LayerMeter {
            budgets,
            image_metadata_before: image_metadata,
            image_uncompressed_before: image_uncompressed,
            metadata: Cell::new(0),
            uncompressed: Cell::new(0),
            exceeded: Cell::new(None),
            dirs: RefCell::new(ImpliedDirs::default()),
        }
    }

    /// A meter that never refuses.
    pub fn unlimited() -> Self {
        Self::new(Budgets::UNLIMITED, 0, 0)
    }

    /// Metadata bytes charged so far.
    pub fn metadata(&self) -> u64 {
        self.metadata.get()
    }

    /// Uncompressed bytes read so far.
    pub fn uncompressed(&self) -> u64 {
        self.uncompressed.get()
    }

    /// The budget exceeded, if one was (the scan's error may have been
    /// rewrapped on the way out).
    pub fn exceeded(&self) -> Option<BudgetExceeded> {
        self.exceeded.get()
    }

    fn check(&self, kind: BudgetKind, used: u64, limit: u64) -> Result<(), BudgetExceeded> {
        if used <= limit {
            return Ok(());
        }
        let e = BudgetExceeded { kind, limit, used };
        if self.exceeded.get().is_none() {
            self.exceeded.set(Some(e));
        }
        Err(e)
    }

    /// Charges `e` (once its metadata is final) and the directories its path
    /// implies.
    pub fn charge(&self, e: &Entry) -> Result<(), BudgetExceeded> {
        let cost = entry_cost(e) + self.dirs.borrow_mut().charge(e);
        let used = self.metadata.get().saturating_add(cost);
        self.metadata.set(used);
        self.check(BudgetKind::LayerMetadata, used, self.budgets.layer_metadata)?;
        self.check(
            BudgetKind::ImageMetadata,
            self.image_metadata_before.saturating_add(used),
            self.budgets.image_metadata,
        )
    }

    fn count(&self, n: usize) -> Result<(), BudgetExceeded> {
        let used = self.uncompressed.get().saturating_add(n as u64);
        self.uncompressed.set(used);
        self.check(
            BudgetKind::LayerUncompressed,
            used,
            self.budgets.layer_uncompressed,
        )?;
        self.check(
            BudgetKind::ImageUncompressed,
            self.image_uncompressed_before.saturating_add(used),
            self.budgets.image_uncompressed,
        )
    }

    /// Wraps the decompressed stream: every byte read is counted, and a read
    /// that crosses a budget fails (and every read after it).
    pub fn reader<R: Read>(&self, inner: R) -> MeteredReader<'_, R> {
        MeteredReader { inner, meter: self }
    }
}

/// The decompressed stream of a layer, counted by a [`LayerMeter`].
pub struct MeteredReader<'a, R> {
    inner: R,
    meter: &'a LayerMeter,
}

impl<R> MeteredReader<'_, R> {
    /// The inner reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the inner reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.meter.exceeded() {
            return Err(io::Error::other(e));
        }
        let n = self.inner.read(buf)?;
        self.meter.count(n).map_err(io::Error::other)?;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::EntryKind;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry::new(path, kind, 0o644)
    }

    #[test]
    fn entry_cost_counts_strings_and_xattrs() {
        let mut e = entry("a/b", EntryKind::File);
        assert_eq!(entry_cost(&e), ENTRY_OVERHEAD + 3);
        e.link = Some("xy".into());
        e.uname = "u".into();
        e.gname = "gg".into();
        e.xattrs = vec![("user.k".into(), vec![0; 100])];
        assert_eq!(
            entry_cost(&e),
            ENTRY_OVERHEAD + 3 + 2 + 1 + 2 + XATTR_OVERHEAD + 6 + 100
        );
    }

    #[test]
    fn implied_directories_are_charged_once() {
        let mut dirs = ImpliedDirs::default();
        // a, a/b, a/b/c implied by the first file.
        let first = dirs.charge(&entry("a/b/c/f", EntryKind::File));
        assert_eq!(first, 3 * ENTRY_OVERHEAD + 1 + 3 + 5);
        assert_eq!(dirs.charge(&entry("a/b/c/g", EntryKind::File)), 0);
        assert_eq!(
            dirs.charge(&entry("a/x/h", EntryKind::File)),
            ENTRY_OVERHEAD + 3
        );
        // A listed directory implies nothing for its children.
        assert_eq!(dirs.charge(&entry("d", EntryKind::Dir)), 0);
        assert_eq!(dirs.charge(&entry("d/f", EntryKind::File)), 0);
        let all = [
            entry("a/b/c/f", EntryKind::File),
            entry("a/b/c/g", EntryKind::File),
        ];
        assert_eq!(
            layer_cost(&all),
            first + entry_cost(&all[0]) + entry_cost(&all[1])
        );
    }

    #[test]
    fn metadata_budgets_refuse_the_entry_that_crosses_them() {
        let budgets = Budgets {
            layer_metadata: 3 * ENTRY_OVERHEAD + 3,
            ..Budgets::UNLIMITED
        };
        let m = LayerMeter::new(budgets, 0, 0);
        for name in ["a", "b", "c"] {
            m.charge(&entry(name, EntryKind::File)).unwrap();
        }
        let e = m.charge(&entry("d", EntryKind::File)).unwrap_err();
        assert_eq!(e.kind, BudgetKind::LayerMetadata);
        assert_eq!(e.used, 4 * (ENTRY_OVERHEAD + 1));
        assert_eq!(m.exceeded(), Some(e));
        assert!(e.to_string().contains("layer_metadata_bytes"), "{e}");

        // The image budget counts what earlier layers used.
        let budgets = Budgets {
            image_metadata: 1000,
            ..Budgets::UNLIMITED
        };
        let m = LayerMeter::new(budgets, 1000 - ENTRY_OVERHEAD - 1, 0);
        m.charge(&entry("a", EntryKind::File)).unwrap();
        let e = m.charge(&entry("b", EntryKind::File)).unwrap_err();
        assert_eq!((e.kind, e.limit), (BudgetKind::ImageMetadata, 1000));
    }

    /// A converted layer: one file with 16 xattrs of 60,000 bytes, then
    /// `links` hard links to it (each would copy the xattrs).
    fn hardlink_amplifier(links: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let values: Vec<(String, Vec<u8>)> = (0..16)
            .map(|i| (format!("SCHILY.xattr.user.k{i}"), vec![b'v'; 60_000]))
            .collect();
        b.append_pax_extensions(values.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "target", &b"x"[..]).unwrap();
        for i in 0..links {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, format!("l{i}"), "target").unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut blob = Vec::new();
        let opts = crate::format::ConvertOptions {
            compression: crate::format::Compression::Gzip,
            level: Some(1),
        };
        crate::format::convert_layer(&tar[..], &mut blob, &opts).unwrap();
        blob
    }

    #[test]
    fn hard_links_are_charged_the_xattrs_they_copy() {
        use crate::format::{scan_layer, scan_layer_metered, FormatError};
        let blob = hardlink_amplifier(100);
        // Unmetered, the 100 links hold 100 copies of the ~1 MB of xattrs.
        let all = scan_layer(&blob[..]).unwrap();
        assert_eq!(all.entries.len(), 101);
        assert!(all.entries.iter().all(|e| e.xattrs.len() == 16));
        // With 8 MiB, the scan stops at the 8th copy although the tar
        // stream itself is small.
        let budgets = Budgets {
            layer_metadata: 8 << 20,
            ..Budgets::UNLIMITED
        };
        let meter = LayerMeter::new(budgets, 0, 0);
        let err = scan_layer_metered(&blob[..], &meter).unwrap_err();
        let FormatError::Budget(e) = err else {
            panic!("expected a budget error, got {err}");
        };
        assert_eq!(e.kind, BudgetKind::LayerMetadata);
        assert!(e.used > 8 << 20 && e.used < 10 << 20, "{e}");
        assert!(meter.uncompressed() < 2 << 20);
    }

    #[test]
    fn the_reader_stops_at_the_uncompressed_budgets() {
        let budgets = Budgets {
            layer_uncompressed: 10_000,
            ..Budgets::UNLIMITED
        };
        let m = LayerMeter::new(budgets, 0, 0);
        let mut r = m.reader(io::repeat(0));
        let mut buf = [0u8; 4096];
        r.read_exact(&mut buf).unwrap();
        r.read_exact(&mut buf).unwrap();
        let err = r.read_exact(&mut buf).unwrap_err();
        assert!(
            err.to_string().contains("layer_uncompressed_bytes"),
            "{err}"
        );
        assert_eq!(m.uncompressed(), 3 * 4096);
        // Every later read fails too, without reading.
        assert!(r.read(&mut buf).is_err());
        assert_eq!(m.uncompressed(), 3 * 4096);
        assert_eq!(m.exceeded().unwrap().kind, BudgetKind::LayerUncompressed);

        let budgets = Budgets {
            image_uncompressed: 5000,
            ..Budgets::UNLIMITED
        };
        let m = LayerMeter::new(budgets, 0, 4000);
        let mut r = m.reader(io::repeat(0));
        let err = r.read_exact(&mut [0u8; 2000]).unwrap_err();
        assert!(
            err.to_string().contains("image_uncompressed_bytes"),
            "{err}"
        );
    }
}
