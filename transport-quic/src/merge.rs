//! The merge of an image's layer tables into the view a container sees (an
//! overlay of the extracted layers): one implementation for the proxy, which
//! builds the header's merged table with it, and the worker, which
//! recomputes that table from the per-layer tables to check it.
//!
//! Rules, applied bottom to top:
//! - `dir/.wh.name` removes `dir/name` and everything below it from the
//!   lower layers; `dir/.wh..wh..opq` hides every lower-layer child of `dir`.
//!   Whiteouts never affect entries of their own layer and never appear in
//!   the output. A bare `.wh.` names nothing.
//! - A non-directory replacing a directory removes the lower subtree; a
//!   directory over a directory keeps the lower children (upper metadata
//!   wins); a directory over a non-directory replaces it.
//! - Hard links stay hard links: each carries its target path and its own
//!   content and metadata, as its layer had them (the scanner fills them in
//!   from the target of the same layer). A later layer that deletes or
//!   replaces the target leaves the link as it was, as overlayfs does (the
//!   link is a name of the lower layer's inode).
//! - Parent directories missing from the layers are synthesized (mode
//!   `0o755`, owner 0:0, attributed to the layer that needed them); an
//!   ancestor that is a non-directory in a lower layer is replaced the same
//!   way. The root `""` appears exactly once.
//!
//! The output is sorted by path (bytewise).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::codec::EntryKind;
use crate::commit::LayerEntry;

/// Prefix of whiteout file names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What the merge needs to know of an entry.
pub trait MergeEntry: Clone {
    /// Normalized path (`""`: the root).
    fn path(&self) -> &str;
    /// Whether the entry is a directory.
    fn is_dir(&self) -> bool;
    /// A directory entry for a parent missing from the layers (mode
    /// `0o755`, owner 0:0, every other field zero).
    fn synthesized_dir(path: &str) -> Self;
}

impl MergeEntry for LayerEntry {
    fn path(&self) -> &str {
        &self.path
    }
    fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
    fn synthesized_dir(path: &str) -> Self {
        LayerEntry::new(path, EntryKind::Dir, 0o755)
    }
}

/// One entry of the merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged<E> {
    /// The entry as its layer supplies it (or a synthesized directory).
    pub entry: E,
    /// Index (bottom = 0) of the layer that supplies it.
    pub layer: u32,
}

/// What a whiteout entry does to the lower layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout {
    /// `dir/.wh.name`: removes `dir/name` (the returned path) and everything below it.
    Remove(String),
    /// `dir/.wh..wh..opq`: hides every lower-layer child of `dir` (the returned path).
    Opaque(String),
}

/// The final component of `path` (empty for the root).
pub fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// The parent directory of `path` (`""` for top-level entries and the root).
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// What the entry at `path` does as a whiteout, if it is one.
pub fn whiteout_of(path: &str) -> Option<Whiteout> {
    let name = name_of(path);
    let parent = parent_of(path);
    if name == OPAQUE_MARKER {
        return Some(Whiteout::Opaque(parent.to_string()));
    }
    let target = name.strip_prefix(WHITEOUT_PREFIX)?;
    Some(Whiteout::Remove(if parent.is_empty() {
        target.to_string()
    } else {
        format!("{parent}/{target}")
    }))
}

/// Merges `layers` (bottom first, each in tar order) into a view sorted by
/// path.
pub fn merge_layers<E: MergeEntry>(layers: &[Vec<E>]) -> Vec<Merged<E>> {
    let mut tree: BTreeMap<String, Merged<E>> = BTreeMap::new();
    for (index, entries) in layers.iter().enumerate() {
        let layer = u32::try_from(index).unwrap_or(u32::MAX);
        // Whiteouts first: they only act on the layers below.
        for e in entries {
            match whiteout_of(e.path()) {
                Some(Whiteout::Remove(path)) if name_of(e.path()) != WHITEOUT_PREFIX => {
                    tree.remove(&path);
                    remove_subtree(&mut tree, &path);
                }
                Some(Whiteout::Opaque(dir)) => remove_subtree(&mut tree, &dir),
                _ => {}
            }
        }
        for e in entries {
            let path = e.path();
            if whiteout_of(path).is_some() {
                // The directory holding a whiteout exists in this layer.
                ensure_parents(&mut tree, parent_of(path), layer, false);
                continue;
            }
            let replaced_dir = tree.get(path).is_some_and(|t| t.entry.is_dir());
            if replaced_dir && !e.is_dir() {
                remove_subtree(&mut tree, path);
            }
            if !path.is_empty() {
                ensure_parents(&mut tree, parent_of(path), layer, true);
            }
            tree.insert(
                path.to_string(),
                Merged {
                    entry: e.clone(),
                    layer,
                },
            );
        }
    }
    if !tree.contains_key("") {
        tree.insert(
            String::new(),
            Merged {
                entry: E::synthesized_dir(""),
                layer: 0,
            },
        );
    }
    tree.into_values().collect()
}

/// Removes every entry strictly below directory `dir` (`""`: everything but
/// the root).
fn remove_subtree<E>(tree: &mut BTreeMap<String, Merged<E>>, dir: &str) {
    let below: Vec<String> = if dir.is_empty() {
        tree.range::<str, _>((Bound::Excluded(""), Bound::Unbounded))
            .map(|(k, _)| k.clone())
            .collect()
    } else {
        // Paths under `dir/` sort between `dir/` and `dir0` ('0' follows '/').
        let start = format!("{dir}/");
        let end = format!("{dir}0");
        tree.range::<str, _>((
            Bound::Included(start.as_str()),
            Bound::Excluded(end.as_str()),
        ))
        .map(|(k, _)| k.clone())
        .collect()
    };
    for k in below {
        tree.remove(&k);
    }
}

/// Makes `dir` and its ancestors directories. With `replace_non_dirs`, a
/// non-directory in the way is replaced by a synthesized directory (as an
/// overlay shows an upper directory over a lower file).
fn ensure_parents<E: MergeEntry>(
    tree: &mut BTreeMap<String, Merged<E>>,
    dir: &str,
    layer: u32,
    replace_non_dirs: bool,
) {
    let mut end = 0;
    loop {
        let next = dir[end..].find('/').map(|i| end + i).unwrap_or(dir.len());
        let ancestor = &dir[..next];
        match tree.get(ancestor) {
            Some(t) if t.entry.is_dir() => {}
            Some(_) if !replace_non_dirs => return,
            _ => {
                tree.insert(
                    ancestor.to_string(),
                    Merged {
                        entry: E::synthesized_dir(ancestor),
                        layer,
                    },
                );
            }
        }
        if next >= dir.len() {
            break;
        }
        end = next + 1;
    }
    if !tree.contains_key("") {
        tree.insert(
            String::new(),
            Merged {
                entry: E::synthesized_dir(""),
                layer,
            },
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(path: &str, tag: u8) -> LayerEntry {
        LayerEntry {
            size: 1,
            sha256: Some([tag; 32]),
            ..LayerEntry::new(path, EntryKind::File, 0o644)
        }
    }
    fn dir(path: &str) -> LayerEntry {
        LayerEntry::new(path, EntryKind::Dir, 0o700)
    }
    fn hardlink(path: &str, target: &str, tag: u8) -> LayerEntry {
        LayerEntry {
            link: Some(target.into()),
            ..file(path, tag)
        }
        .with_kind(EntryKind::Hardlink)
    }
    trait WithKind {
        fn with_kind(self, k: EntryKind) -> Self;
    }
    impl WithKind for LayerEntry {
        fn with_kind(mut self, k: EntryKind) -> Self {
            self.kind = k;
            self
        }
    }
    fn paths(m: &[Merged<LayerEntry>]) -> Vec<(&str, u32)> {
        m.iter().map(|t| (t.entry.path.as_str(), t.layer)).collect()
    }
    fn get<'a>(m: &'a [Merged<LayerEntry>], path: &str) -> &'a Merged<LayerEntry> {
        m.iter().find(|t| t.entry.path == path).unwrap()
    }

    #[test]
    fn whiteouts_opaque_dirs_and_replacements() {
        let m = merge_layers(&[
            vec![
                dir("etc"),
                file("etc/a", 1),
                dir("etc/d"),
                file("etc/d/x", 2),
                dir("v"),
                file("v/old", 3),
            ],
            vec![
                LayerEntry::new("etc/.wh.a", EntryKind::File, 0),
                file("etc/d", 4),
                dir("v"),
                LayerEntry::new("v/.wh..wh..opq", EntryKind::File, 0),
                file("v/new", 5),
                file("n/deep", 6),
            ],
        ]);
        assert_eq!(
            paths(&m),
            vec![
                ("", 0),
                ("etc", 0),
                ("etc/d", 1),
                ("n", 1),
                ("n/deep", 1),
                ("v", 1),
                ("v/new", 1)
            ]
        );
        assert_eq!(get(&m, "n").entry, LayerEntry::synthesized_dir("n"));
    }

    /// The MEDIUM hard-link case: the link keeps the content (and layer) it
    /// had in its own layer when a later layer deletes or replaces its
    /// target.
    #[test]
    fn hard_link_survives_its_target_being_deleted_or_replaced() {
        let base = vec![dir("bin"), file("bin/a", 1), hardlink("bin/b", "bin/a", 1)];
        let replaced = merge_layers(&[base.clone(), vec![file("bin/a", 2)]]);
        assert_eq!(get(&replaced, "bin/b").entry, hardlink("bin/b", "bin/a", 1));
        assert_eq!(get(&replaced, "bin/b").layer, 0);
        assert_eq!(get(&replaced, "bin/a").entry.sha256, Some([2; 32]));

        let deleted = merge_layers(&[base, vec![LayerEntry::new("bin/.wh.a", EntryKind::File, 0)]]);
        assert_eq!(paths(&deleted), vec![("", 0), ("bin", 0), ("bin/b", 0)]);
        assert_eq!(get(&deleted, "bin/b").entry, hardlink("bin/b", "bin/a", 1));
    }

    #[test]
    fn whiteout_keeps_its_own_layer_and_bare_prefix_is_inert() {
        let m = merge_layers(&[
            vec![file("a", 1), file("b", 1)],
            vec![file("a", 2), LayerEntry::new(".wh.a", EntryKind::File, 0)],
            vec![LayerEntry::new(".wh.", EntryKind::File, 0)],
        ]);
        assert_eq!(paths(&m), vec![("", 0), ("a", 1), ("b", 0)]);
    }

    #[test]
    fn whiteout_helpers() {
        assert_eq!(whiteout_of("d/.wh.x"), Some(Whiteout::Remove("d/x".into())));
        assert_eq!(whiteout_of(".wh.x"), Some(Whiteout::Remove("x".into())));
        assert_eq!(
            whiteout_of("d/.wh..wh..opq"),
            Some(Whiteout::Opaque("d".into()))
        );
        assert_eq!(whiteout_of("d/x.wh.y"), None);
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(name_of(""), "");
    }

    #[test]
    fn empty_image_has_a_root() {
        assert_eq!(paths(&merge_layers::<LayerEntry>(&[])), vec![("", 0)]);
    }
}
