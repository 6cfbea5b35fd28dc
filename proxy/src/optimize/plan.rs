//! The optimizer's phases: difference, consolidation, selection and sort.

use super::{
    BundlePlan, OptimizeError, OptimizeInput, PlannedEntry, PlannedPayload, PlannedSource, Rank,
};
use crate::db::{ImageRecord, TocEntry};
use crate::format::{Compression, ContentRef, Entry, EntryKind};
use std::cmp::Ordering;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Builds the plan of the bundle that brings `input.wanted` to a worker
/// holding `input.held` and `input.held_payloads`.
///
/// Pure and deterministic: the result depends only on the records, not on the
/// order of `held` nor on hash-map iteration order. `O(n log n)` time and
/// `O(n)` space in the number of entries.
///
/// # Errors
/// [`OptimizeError::LayerOutOfRange`] if a table-of-contents entry (wanted or
/// held) names a layer its image does not have, and
/// [`OptimizeError::TooMany`] if a `u32` index would overflow.
pub fn optimize(input: &OptimizeInput<'_>) -> Result<BundlePlan, OptimizeError> {
    let mut table = LayerTable::default();
    let image_layers = table.intern_image(input.wanted)?;

    // Held images in digest order, each once: the plan must not depend on
    // the order the worker listed them in (the cache key does not).
    let mut held: Vec<Held<'_>> = Vec::with_capacity(input.held.len());
    let mut listed: Vec<&(&ImageRecord, &[TocEntry])> = input.held.iter().collect();
    listed.sort_by(|a, b| a.0.manifest_digest.cmp(&b.0.manifest_digest));
    listed.dedup_by(|a, b| a.0.manifest_digest == b.0.manifest_digest);
    for &&(image, toc) in &listed {
        held.push(Held {
            image,
            toc,
            layers: table.intern_image(image)?,
        });
    }

    let wanted_order = path_order(input.wanted_toc);
    let by_sha = held_contents(&held)?;
    let same_path = same_path_layers(input.wanted_toc, &wanted_order, &held)?;
    let entry_rank = entry_ranks(input.wanted_toc, &wanted_order, input.ranks);
    // Each entry's position in path order: the sort's tie-breaker, compared
    // as an integer instead of a string.
    let mut path_pos = vec![0usize; input.wanted_toc.len()];
    for (position, &i) in wanted_order.iter().enumerate() {
        path_pos[i] = position;
    }

    // Difference, consolidation and selection in one pass over the wanted
    // table of contents.
    let mut toc = Vec::with_capacity(input.wanted_toc.len());
    let mut drafts: Vec<Draft> = Vec::new();
    let mut consolidated: ShaMap<u32> =
        ShaMap::with_capacity_and_hasher(input.wanted_toc.len(), Default::default());
    for (((t, same_path), path_pos), rank) in input
        .wanted_toc
        .iter()
        .zip(same_path)
        .zip(path_pos)
        .zip(entry_rank)
    {
        let own_layer = layer_index(input.wanted, &image_layers, t)?;
        let (layer, source) = match content_of(&t.entry) {
            None => (own_layer, PlannedSource::NoContent),
            Some(content) => {
                let sha = content.sha256;
                if let Some(layer) = same_path {
                    (layer, PlannedSource::Held)
                } else if let Some(&layer) = by_sha.get(&sha) {
                    (layer, PlannedSource::Held)
                } else if input.held_payloads.contains(&sha) {
                    (own_layer, PlannedSource::Held)
                } else {
                    let index = match consolidated.entry(sha) {
                        MapEntry::Occupied(slot) => {
                            let index = *slot.get();
                            if let Some(draft) =
                                usize::try_from(index).ok().and_then(|i| drafts.get_mut(i))
                            {
                                draft.rank = lowest(draft.rank, rank);
                            }
                            index
                        }
                        MapEntry::Vacant(slot) => {
                            let index = u32::try_from(drafts.len())
                                .map_err(|_| OptimizeError::TooMany { what: "payloads" })?;
                            drafts.push(Draft {
                                path_pos,
                                layer: own_layer,
                                content: *content,
                                size: t.entry.size,
                                rank,
                            });
                            slot.insert(index);
                            index
                        }
                    };
                    (own_layer, PlannedSource::Payload(index))
                }
            }
        };
        toc.push(PlannedEntry {
            entry: t.entry.clone(),
            layer,
            source,
        });
    }

    let payloads = into_send_order(drafts, &table, &mut toc)?;
    Ok(BundlePlan {
        layers: table.digests,
        image_layers,
        toc,
        payloads,
    })
}

/// A held image and its layers' indices in the digest table.
struct Held<'a> {
    image: &'a ImageRecord,
    toc: &'a [TocEntry],
    layers: Vec<u32>,
}

/// Difference by content: every content of the held images, with the
/// digest-table layer holding it (the first held image in digest order, then
/// the first entry in table order, wins).
fn held_contents(held: &[Held<'_>]) -> Result<ShaMap<u32>, OptimizeError> {
    let entries: usize = held.iter().map(|h| h.toc.len()).sum();
    let mut by_sha: ShaMap<u32> = ShaMap::with_capacity_and_hasher(entries, Default::default());
    for h in held {
        for t in h.toc {
            if let Some(content) = content_of(&t.entry) {
                let layer = layer_index(h.image, &h.layers, t)?;
                by_sha.entry(content.sha256).or_insert(layer);
            }
        }
    }
    Ok(by_sha)
}

/// Difference by path and content (the paper's rule): for each wanted entry,
/// the digest-table layer of the first held image (in digest order) having
/// the same path with the same content. A merge join of the tables of
/// contents in path order: `O(|wanted| + |held|)` when they are sorted, as
/// merged tables of contents are.
fn same_path_layers(
    wanted_toc: &[TocEntry],
    wanted_order: &[usize],
    held: &[Held<'_>],
) -> Result<Vec<Option<u32>>, OptimizeError> {
    let mut same_path: Vec<Option<u32>> = vec![None; wanted_toc.len()];
    for h in held {
        let held_order = path_order(h.toc);
        let (mut i, mut j) = (0, 0);
        while let (Some(&wi), Some(&hj)) = (wanted_order.get(i), held_order.get(j)) {
            let (w, t) = (&wanted_toc[wi], &h.toc[hj]);
            match w.entry.path.cmp(&t.entry.path) {
                Ordering::Less => i += 1,
                Ordering::Greater => j += 1,
                Ordering::Equal => {
                    let same = matches!(
                        (content_of(&w.entry), content_of(&t.entry)),
                        (Some(a), Some(b)) if a.sha256 == b.sha256
                    );
                    if same && same_path[wi].is_none() {
                        same_path[wi] = Some(layer_index(h.image, &h.layers, t)?);
                    }
                    i += 1;
                }
            }
        }
    }
    Ok(same_path)
}

/// Each wanted entry's average rank: one binary search per ranked path, so
/// the cost follows the (few) ranked paths, not the entries. Ranked paths
/// the image does not have are ignored.
fn entry_ranks(
    wanted_toc: &[TocEntry],
    wanted_order: &[usize],
    ranks: &HashMap<String, Rank>,
) -> Vec<Option<f64>> {
    let mut entry_rank: Vec<Option<f64>> = vec![None; wanted_toc.len()];
    for (path, rank) in ranks {
        let found = wanted_order.binary_search_by(|&i| wanted_toc[i].entry.path.as_str().cmp(path));
        if let Ok(position) = found {
            entry_rank[wanted_order[position]] = rank.average();
        }
    }
    entry_rank
}

/// Sorts the payloads into send order and renumbers the table of contents'
/// references to them. The sort keys are distinct (no two payloads share a
/// first entry), so the order is total and does not depend on the input
/// order.
fn into_send_order(
    drafts: Vec<Draft>,
    table: &LayerTable,
    toc: &mut [PlannedEntry],
) -> Result<Vec<PlannedPayload>, OptimizeError> {
    let mut order: Vec<usize> = (0..drafts.len()).collect();
    order.sort_by_key(|&i| drafts[i].send_key());
    let mut renumber = vec![0u32; drafts.len()];
    let mut payloads = Vec::with_capacity(drafts.len());
    for (position, &old) in order.iter().enumerate() {
        renumber[old] =
            u32::try_from(position).map_err(|_| OptimizeError::TooMany { what: "payloads" })?;
        let d = &drafts[old];
        let (layer_digest, compression) = table.describe(d.layer);
        payloads.push(PlannedPayload {
            sha256: d.content.sha256,
            layer: d.layer,
            layer_digest: layer_digest.to_string(),
            compression,
            offset: d.content.offset,
            compressed_len: d.content.compressed_len,
            size: d.size,
            rank: d.rank,
        });
    }
    for t in toc {
        if let PlannedSource::Payload(old) = t.source {
            if let Some(&new) = usize::try_from(old).ok().and_then(|i| renumber.get(i)) {
                t.source = PlannedSource::Payload(new);
            }
        }
    }
    Ok(payloads)
}

/// A payload before sorting.
struct Draft {
    /// Position in path order of the first entry supplying the content.
    path_pos: usize,
    /// Index into the digest table of the blob to read it from.
    layer: u32,
    /// Where the member lies in that blob.
    content: ContentRef,
    /// Uncompressed size.
    size: u64,
    /// Lowest average rank of the paths sharing it.
    rank: Option<f64>,
}

impl Draft {
    /// The send order: ranked payloads by ascending average rank then path;
    /// then unranked ones in layer order: by layer, then by where the member
    /// lies in its blob (the layer's own tar order), so that the proxy reads
    /// each blob front to back with few, coalesced range requests. An
    /// average rank is a quotient of unsigned integers, so finite and
    /// non-negative, and the bits of such floats order as the floats do.
    fn send_key(&self) -> (bool, u64, u32, u64, usize) {
        match self.rank {
            Some(rank) => (false, rank.to_bits(), 0, 0, self.path_pos),
            None => (true, 0, self.layer, self.content.offset, self.path_pos),
        }
    }
}

/// The smaller of two optional ranks, `None` meaning "never traced".
fn lowest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.total_cmp(&x) == Ordering::Less {
            y
        } else {
            x
        }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The indices of `toc` in path order (the identity if it is sorted, as
/// merged tables of contents are).
fn path_order(toc: &[TocEntry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..toc.len()).collect();
    if !toc.windows(2).all(|w| w[0].entry.path <= w[1].entry.path) {
        order.sort_by(|&a, &b| toc[a].entry.path.cmp(&toc[b].entry.path));
    }
    order
}

/// The content an entry needs transferred: regular files and hard links that
/// carry a content reference (empty files and unresolved hard links do not).
fn content_of(entry: &Entry) -> Option<&ContentRef> {
    match entry.kind {
        EntryKind::File | EntryKind::Hardlink => entry.content.as_ref(),
        _ => None,
    }
}

/// The digest-table index of the layer supplying `t` in `image`.
fn layer_index(image: &ImageRecord, layers: &[u32], t: &TocEntry) -> Result<u32, OptimizeError> {
    usize::try_from(t.layer)
        .ok()
        .and_then(|i| layers.get(i))
        .copied()
        .ok_or_else(|| OptimizeError::LayerOutOfRange {
            image: image.manifest_digest.clone(),
            path: t.entry.path.clone(),
            layer: t.layer,
            layers: layers.len(),
        })
}

/// The bundle's layer digest table, each digest once, in first-seen order.
#[derive(Default)]
struct LayerTable {
    digests: Vec<String>,
    compressions: Vec<Compression>,
    index: HashMap<String, u32>,
}

impl LayerTable {
    /// Adds the layers of `image` not yet listed; returns the index of each
    /// of its layers, bottom first.
    fn intern_image(&mut self, image: &ImageRecord) -> Result<Vec<u32>, OptimizeError> {
        image
            .layers
            .iter()
            .map(|l| {
                if let Some(&i) = self.index.get(&l.digest) {
                    return Ok(i);
                }
                let i = u32::try_from(self.digests.len())
                    .map_err(|_| OptimizeError::TooMany { what: "layers" })?;
                self.digests.push(l.digest.clone());
                self.compressions.push(l.compression);
                self.index.insert(l.digest.clone(), i);
                Ok(i)
            })
            .collect()
    }

    /// Digest and compression of layer `i` (an index this table handed out).
    fn describe(&self, i: u32) -> (&str, Compression) {
        let i = usize::try_from(i).unwrap_or(usize::MAX);
        match (self.digests.get(i), self.compressions.get(i)) {
            (Some(d), Some(&c)) => (d, c),
            // Unreachable: every index comes from `intern_image`.
            _ => ("", Compression::None),
        }
    }
}

/// A hash map keyed by SHA-256 digests, hashed by their first eight bytes:
/// the keys are already uniformly distributed, so SipHash would only cost
/// time. (A crafted collision can only slow a lookup down, never change its
/// answer.)
type ShaMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<ShaHasher>>;

/// See [`ShaMap`].
#[derive(Default)]
struct ShaHasher(u64);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` arrives as one write of its 32 bytes (possibly after a
        // length prefix): shifting in the first eight bytes of each write
        // leaves the digest's first eight, whatever came before.
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
}
