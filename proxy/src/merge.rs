//! Merges the layers of an image into one table of contents, the way an
//! overlay of the extracted layers looks to a container. The rules live in
//! [`transport_quic::merge`], shared with the worker (which recomputes the
//! merge to check a bundle header); this module applies them to the
//! indexer's entries.
//!
//! Rules, applied bottom to top:
//! - `dir/.wh.name` removes `dir/name` and everything below it from the
//!   lower layers; `dir/.wh..wh..opq` hides every lower-layer child of `dir`.
//!   Whiteouts never affect entries of their own layer and never appear in
//!   the output.
//! - A non-directory replacing a directory removes the lower subtree; a
//!   directory over a directory keeps the lower children (upper metadata
//!   wins); a directory over a non-directory replaces it.
//! - Hard links stay hard links: they carry their target path and their own
//!   content reference (filled in by the scanner), whatever happens to the
//!   target later.
//! - Parent directories missing from the layers are synthesized (mode
//!   `0o755`, owner 0:0, attributed to the layer that needed them); an
//!   ancestor that is a non-directory in a lower layer is replaced the same
//!   way. The root `""` appears exactly once.
//!
//! The output is sorted by path (bytewise, as [`String`]'s order).

use crate::db::TocEntry;
use crate::format::{Entry, EntryKind};
use transport_quic::merge::{self, MergeEntry};

impl MergeEntry for Entry {
    fn path(&self) -> &str {
        &self.path
    }
    fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
    fn synthesized_dir(path: &str) -> Self {
        synthesized_dir(path)
    }
}

/// Merges `layers` (bottom first, each in tar order) into a table of
/// contents sorted by path, with the shared merge the worker recomputes
/// ([`transport_quic::merge::merge_layers`]).
pub fn merge_layers(layers: &[Vec<Entry>]) -> Vec<TocEntry> {
    merge::merge_layers(layers)
        .into_iter()
        .map(|m| TocEntry {
            entry: m.entry,
            layer: m.layer,
        })
        .collect()
}

/// A directory entry for a parent missing from the layers.
fn synthesized_dir(path: &str) -> Entry {
    Entry::new(path, EntryKind::Dir, 0o755)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::ContentRef;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry {
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            kind,
            ..synthesized_dir(path)
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            mode: 0o700,
            ..e(path, EntryKind::Dir)
        }
    }
    fn file(path: &str, tag: u8) -> Entry {
        Entry {
            size: 1,
            content: Some(ContentRef {
                sha256: [tag; 32],
                offset: u64::from(tag),
                compressed_len: 1,
            }),
            ..e(path, EntryKind::File)
        }
    }
    fn symlink(path: &str, target: &str) -> Entry {
        Entry {
            link: Some(target.into()),
            ..e(path, EntryKind::Symlink)
        }
    }
    fn wh(path: &str) -> Entry {
        e(path, EntryKind::File)
    }

    /// (path, layer) of every merged entry.
    fn paths(toc: &[TocEntry]) -> Vec<(String, u32)> {
        toc.iter()
            .map(|t| (t.entry.path.clone(), t.layer))
            .collect()
    }
    fn p(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(s, l)| (s.to_string(), *l)).collect()
    }
    fn get<'a>(toc: &'a [TocEntry], path: &str) -> &'a TocEntry {
        toc.iter().find(|t| t.entry.path == path).unwrap()
    }

    #[test]
    fn single_layer_is_sorted_with_root_once() {
        let toc = merge_layers(&[vec![dir(""), file("b", 1), dir("a"), file("a/x", 2)]]);
        assert_eq!(paths(&toc), p(&[("", 0), ("a", 0), ("a/x", 0), ("b", 0)]));
        assert_eq!(
            get(&toc, "").entry.mode,
            0o700,
            "the layer's root wins over a synthesized one"
        );
    }

    #[test]
    fn missing_parents_are_synthesized() {
        let toc = merge_layers(&[vec![file("usr/lib/x/y", 1)], vec![file("opt/z", 2)]]);
        assert_eq!(
            paths(&toc),
            p(&[
                ("", 0),
                ("opt", 1),
                ("opt/z", 1),
                ("usr", 0),
                ("usr/lib", 0),
                ("usr/lib/x", 0),
                ("usr/lib/x/y", 0)
            ])
        );
        let usr = &get(&toc, "usr").entry;
        assert_eq!(
            (usr.kind, usr.mode, usr.uid, usr.gid),
            (EntryKind::Dir, 0o755, 0, 0)
        );
    }

    #[test]
    fn whiteout_removes_lower_path_and_subtree() {
        let lower = vec![
            dir("etc"),
            file("etc/passwd", 1),
            dir("etc/ssl"),
            file("etc/ssl/cert", 2),
            file("etc/sslx", 3),
        ];
        let upper = vec![wh("etc/.wh.passwd"), wh("etc/.wh.ssl")];
        let toc = merge_layers(&[lower, upper]);
        assert_eq!(paths(&toc), p(&[("", 0), ("etc", 0), ("etc/sslx", 0)]));
    }

    #[test]
    fn whiteout_does_not_touch_its_own_layer() {
        let toc = merge_layers(&[vec![file("a", 1)], vec![file("a", 2), wh(".wh.a")]]);
        assert_eq!(paths(&toc), p(&[("", 0), ("a", 1)]));
        assert_eq!(get(&toc, "a").entry.content.unwrap().sha256, [2; 32]);
    }

    #[test]
    fn whiteout_then_recreate_in_a_higher_layer() {
        let toc = merge_layers(&[
            vec![dir("d"), file("d/f", 1)],
            vec![wh(".wh.d")],
            vec![dir("d"), file("d/g", 3)],
        ]);
        assert_eq!(paths(&toc), p(&[("", 0), ("d", 2), ("d/g", 2)]));
    }

    #[test]
    fn opaque_hides_lower_children_but_keeps_same_layer() {
        let lower = vec![
            dir("var"),
            dir("var/lib"),
            file("var/lib/a", 1),
            dir("var/lib/sub"),
            file("var/lib/sub/b", 2),
            file("var/lib2", 9),
        ];
        let upper = vec![
            dir("var/lib"),
            file("var/lib/new", 3),
            wh("var/lib/.wh..wh..opq"),
        ];
        let toc = merge_layers(&[lower, upper]);
        assert_eq!(
            paths(&toc),
            p(&[
                ("", 0),
                ("var", 0),
                ("var/lib", 1),
                ("var/lib/new", 1),
                ("var/lib2", 0)
            ])
        );
    }

    #[test]
    fn opaque_root_hides_everything_below() {
        let toc = merge_layers(&[
            vec![dir(""), file("a", 1), dir("b")],
            vec![wh(".wh..wh..opq"), file("c", 2)],
        ]);
        assert_eq!(paths(&toc), p(&[("", 0), ("c", 1)]));
    }

    #[test]
    fn non_directory_over_directory_removes_subtree() {
        let toc = merge_layers(&[
            vec![dir("d"), file("d/f", 1), dir("d/e")],
            vec![symlink("d", "/elsewhere")],
        ]);
        assert_eq!(paths(&toc), p(&[("", 0), ("d", 1)]));
        assert_eq!(get(&toc, "d").entry.kind, EntryKind::Symlink);
    }

    #[test]
    fn directory_over_directory_keeps_children_and_takes_upper_metadata() {
        let upper_dir = Entry {
            mode: 0o1777,
            uid: 5,
            ..dir("d")
        };
        let toc = merge_layers(&[vec![dir("d"), file("d/f", 1)], vec![upper_dir.clone()]]);
        assert_eq!(paths(&toc), p(&[("", 0), ("d", 1), ("d/f", 0)]));
        assert_eq!(get(&toc, "d").entry, upper_dir);
    }

    #[test]
    fn directory_or_child_over_non_directory_replaces_it() {
        let toc = merge_layers(&[
            vec![file("a", 1), symlink("b", "x")],
            vec![dir("a"), file("b/c", 2)],
        ]);
        assert_eq!(paths(&toc), p(&[("", 0), ("a", 1), ("b", 1), ("b/c", 1)]));
        assert_eq!(get(&toc, "b").entry.kind, EntryKind::Dir);
    }

    #[test]
    fn hard_link_keeps_its_content_when_the_target_is_replaced() {
        let link = Entry {
            link: Some("bin/a".into()),
            size: 1,
            content: Some(ContentRef {
                sha256: [1; 32],
                offset: 1,
                compressed_len: 1,
            }),
            ..e("bin/b", EntryKind::Hardlink)
        };
        let toc = merge_layers(&[
            vec![dir("bin"), file("bin/a", 1), link.clone()],
            vec![file("bin/a", 2)],
        ]);
        assert_eq!(
            paths(&toc),
            p(&[("", 0), ("bin", 0), ("bin/a", 1), ("bin/b", 0)])
        );
        assert_eq!(get(&toc, "bin/b").entry, link);
        assert_eq!(get(&toc, "bin/a").entry.content.unwrap().sha256, [2; 32]);

        let toc = merge_layers(&[
            vec![
                file("a", 1),
                Entry {
                    path: "b".into(),
                    ..link
                },
            ],
            vec![wh(".wh.a")],
        ]);
        assert_eq!(paths(&toc), p(&[("", 0), ("b", 0)]));
        assert_eq!(get(&toc, "b").entry.kind, EntryKind::Hardlink);
    }

    #[test]
    fn whiteouts_never_appear_and_their_parent_exists() {
        let toc = merge_layers(&[vec![file("x", 1)], vec![wh("new/.wh.gone"), wh("x/.wh.y")]]);
        assert!(toc.iter().all(|t| t.entry.whiteout().is_none()));
        // `new` is created like containerd does; `x` stays a file.
        assert_eq!(paths(&toc), p(&[("", 0), ("new", 1), ("x", 0)]));
    }

    #[test]
    fn bare_whiteout_prefix_removes_nothing() {
        let toc = merge_layers(&[vec![file("a", 1)], vec![wh(".wh.")]]);
        assert_eq!(paths(&toc), p(&[("", 0), ("a", 0)]));
    }

    #[test]
    fn later_duplicate_in_one_layer_wins() {
        let toc = merge_layers(&[vec![file("a", 1), file("a", 2)]]);
        assert_eq!(toc.len(), 2);
        assert_eq!(get(&toc, "a").entry.content.unwrap().sha256, [2; 32]);
    }

    #[test]
    fn empty_image_has_a_root() {
        assert_eq!(paths(&merge_layers(&[])), p(&[("", 0)]));
        assert_eq!(paths(&merge_layers(&[vec![], vec![]])), p(&[("", 0)]));
    }
}
