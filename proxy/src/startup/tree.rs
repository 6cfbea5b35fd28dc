//! Path lookup in a merged table of contents, following symbolic links as
//! the kernel would inside the image's root.

use std::collections::HashMap;

use crate::db::TocEntry;
use crate::format::EntryKind;

/// Most symbolic links followed in one lookup (the kernel's limit is 40).
const MAX_LINKS: usize = 40;

/// A merged table of contents indexed by path.
#[derive(Debug)]
pub struct Tree<'a> {
    by_path: HashMap<&'a str, &'a TocEntry>,
}

impl<'a> Tree<'a> {
    /// Indexes `toc` (paths relative to the root, no leading `/`).
    pub fn new(toc: &'a [TocEntry]) -> Self {
        Tree {
            by_path: toc.iter().map(|e| (e.entry.path.as_str(), e)).collect(),
        }
    }

    /// The entry at exactly `path` (no link followed).
    pub fn get(&self, path: &str) -> Option<&'a TocEntry> {
        self.by_path.get(path).copied()
    }

    /// The paths of the direct children of directory `dir` (`""`: the root).
    pub fn children(&self, dir: &str) -> Vec<&'a str> {
        let mut out: Vec<&'a str> = self
            .by_path
            .keys()
            .copied()
            .filter(|p| match p.rsplit_once('/') {
                Some((parent, _)) => parent == dir,
                None => dir.is_empty() && !p.is_empty(),
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Resolves `path` (absolute or relative to the root) following every
    /// symbolic link, in any component, inside the image: `..` never goes
    /// above the root. Returns the real path and its entry.
    pub fn resolve(&self, path: &str) -> Option<(String, &'a TocEntry)> {
        let mut pending: Vec<String> = components(path).rev().map(str::to_string).collect();
        let mut current: Vec<String> = Vec::new();
        let mut links = 0usize;
        let mut last: Option<&'a TocEntry> = None;
        while let Some(name) = pending.pop() {
            match name.as_str() {
                "." => continue,
                ".." => {
                    current.pop();
                    last = None;
                    continue;
                }
                _ => {}
            }
            current.push(name);
            let joined = current.join("/");
            let entry = self.get(&joined)?;
            if entry.entry.kind == EntryKind::Symlink {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = entry.entry.link.as_deref()?;
                current.pop();
                if target.starts_with('/') {
                    current.clear();
                }
                pending.extend(components(target).rev().map(str::to_string));
                last = None;
                continue;
            }
            last = Some(entry);
        }
        match last {
            Some(e) => Some((current.join("/"), e)),
            // The root itself, or a path ending in `..`/a link to a directory.
            None => {
                let joined = current.join("/");
                self.get(&joined).map(|e| (joined, e))
            }
        }
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}
