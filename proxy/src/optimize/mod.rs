//! The delta-bundle optimizer (paper §4.4): given the image a worker wants and
//! the images (and payloads) it already holds, decide which compressed file
//! contents the bundle carries and in which order, and where every entry of
//! the table of contents takes its content from.
//!
//! It works on the directory database's records only (merged tables of
//! contents and image records); it never touches a layer blob.
//!
//! Phases, all in `O(n log n)` for `n` entries:
//! 1. **Merge**: the inputs are merged tables of contents ([`TocEntry`]).
//! 2. **Difference**: an entry of the wanted image whose content the worker
//!    already has is [`PlannedSource::Held`]. If a held image has the same
//!    path with the same content, the entry points at that image's layer
//!    (the paper's rule); going further, any content whose SHA-256 appears
//!    anywhere in a held image, or among the payloads the worker reports for a
//!    resume, is held too, because the worker's content store is keyed by
//!    hash.
//! 3. **Consolidate**: identical contents become one payload; the first entry
//!    (in table-of-contents order) supplying it picks the layer and offset.
//! 4. **Select**: held contents are not payloads.
//! 5. **Sort**: payloads by ascending average rank (rank sum / hit count; a
//!    payload shared by several paths takes the lowest), ties broken by path;
//!    unranked payloads follow all ranked ones, in layer order (layer index,
//!    then the member's offset in its blob, i.e. the layer's tar order, so
//!    the proxy reads each blob front to back in few coalesced range
//!    requests). The order is total, so the plan is deterministic.
//!
//! [`PlanCache`] keeps built plans so a second worker asking for the same
//! thing gets the same [`Arc<BundlePlan>`](std::sync::Arc) at once.

mod cache;
mod plan;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use cache::{CacheStats, PlanCache, PlanKey};
pub use plan::optimize;

use crate::db::{ImageRecord, TocEntry};
use crate::format::{Compression, Entry};
use std::collections::{HashMap, HashSet};

/// How often, and how early, a path was opened in the startup traces of an
/// image: the rank sum over all traces and the number of traces that opened
/// it. The average rank is `sum / hits`; smaller is earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rank {
    /// Sum of the ranks (positions in the trace) over all traces.
    pub sum: u64,
    /// Number of traces that opened the path.
    pub hits: u64,
}

impl Rank {
    /// The average rank, or `None` if the path was never hit (a zero hit
    /// count carries no order information).
    pub fn average(&self) -> Option<f64> {
        if self.hits == 0 {
            return None;
        }
        // Precision loss beyond 2^53 is irrelevant for ordering trace ranks.
        #[allow(clippy::cast_precision_loss)]
        Some(self.sum as f64 / self.hits as f64)
    }
}

/// What the optimizer needs to know about one request.
#[derive(Debug, Clone)]
pub struct OptimizeInput<'a> {
    /// The image the worker wants.
    pub wanted: &'a ImageRecord,
    /// The wanted image's merged table of contents, sorted by path.
    pub wanted_toc: &'a [TocEntry],
    /// The images the worker already holds, each with its merged table of
    /// contents. Their order does not matter; duplicates are ignored.
    pub held: Vec<(&'a ImageRecord, &'a [TocEntry])>,
    /// SHA-256 of the contents the worker already has besides its held images
    /// (a resumed bundle).
    pub held_payloads: &'a HashSet<[u8; 32]>,
    /// Ranks of the wanted image's paths. Paths absent here are unranked.
    pub ranks: &'a HashMap<String, Rank>,
}

/// Where an entry of the plan takes its content from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlannedSource {
    /// The entry has no content to transfer (directory, symlink, device,
    /// empty file, or a hard link resolved by its target).
    NoContent,
    /// The content is payload number `n` of [`BundlePlan::payloads`].
    Payload(u32),
    /// The worker already has the content (see [`PlannedEntry::layer`]).
    Held,
}

/// One entry of the bundle's table of contents.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEntry {
    /// The entry's metadata, exactly as the wanted image has it.
    pub entry: Entry,
    /// Index into [`BundlePlan::layers`]. For an entry whose content is held
    /// through a held image, that image's layer holding it; otherwise the
    /// wanted image's layer supplying the entry.
    pub layer: u32,
    /// Where the content comes from.
    pub source: PlannedSource,
}

/// One compressed content the bundle body carries, and where the proxy reads
/// it from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPayload {
    /// SHA-256 of the uncompressed content.
    pub sha256: [u8; 32],
    /// Index into [`BundlePlan::layers`] of the blob to read it from.
    pub layer: u32,
    /// Digest of that blob (`sha256:...`).
    pub layer_digest: String,
    /// Compression of that blob (and so of the member).
    pub compression: Compression,
    /// Byte offset of the compressed member in the blob.
    pub offset: u64,
    /// Length of the compressed member in bytes.
    pub compressed_len: u64,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// The lowest average rank among the paths sharing this content, or
    /// `None` if none of them was ever traced.
    pub rank: Option<f64>,
}

/// The optimizer's answer: everything the bundle header needs, and the body's
/// payloads in send order.
#[derive(Debug, Clone, PartialEq)]
pub struct BundlePlan {
    /// The layer digest table: the wanted image's layers (bottom first), then
    /// the held images' layers not already listed (held images in digest
    /// order). Each digest appears once.
    pub layers: Vec<String>,
    /// The wanted image's layers, bottom first, as indices into
    /// [`Self::layers`].
    pub image_layers: Vec<u32>,
    /// One entry per entry of the wanted table of contents, in the same order.
    pub toc: Vec<PlannedEntry>,
    /// The payloads, in send order.
    pub payloads: Vec<PlannedPayload>,
}

impl BundlePlan {
    /// Total compressed bytes of the body's payloads.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.iter().map(|p| p.compressed_len).sum()
    }

    /// An estimate of the plan's memory footprint in bytes (used to bound the
    /// [`PlanCache`]).
    pub fn approx_bytes(&self) -> usize {
        let strings: usize = self.layers.iter().map(String::len).sum();
        let entries: usize = self
            .toc
            .iter()
            .map(|t| {
                let e = &t.entry;
                e.path.len()
                    + e.uname.len()
                    + e.gname.len()
                    + e.link.as_ref().map_or(0, String::len)
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + std::mem::size_of::<(String, Vec<u8>)>())
                        .sum::<usize>()
            })
            .sum();
        let payloads: usize = self.payloads.iter().map(|p| p.layer_digest.len()).sum();
        std::mem::size_of::<Self>()
            + strings
            + self.layers.len() * std::mem::size_of::<String>()
            + self.image_layers.len() * std::mem::size_of::<u32>()
            + entries
            + self.toc.len() * std::mem::size_of::<PlannedEntry>()
            + payloads
            + self.payloads.len() * std::mem::size_of::<PlannedPayload>()
    }
}

/// Why a plan cannot be built: the records are inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptimizeError {
    /// A table-of-contents entry names a layer its image does not have.
    #[error(
        "image {image}: entry {path:?} names layer {layer}, but the image has {layers} layers"
    )]
    LayerOutOfRange {
        /// Manifest digest of the image.
        image: String,
        /// Path of the entry.
        path: String,
        /// The layer index it names.
        layer: u32,
        /// How many layers the image has.
        layers: usize,
    },
    /// More layers, entries or payloads than a `u32` index can address.
    #[error("too many {what} for one bundle")]
    TooMany {
        /// What overflowed (`layers`, `payloads`).
        what: &'static str,
    },
}
