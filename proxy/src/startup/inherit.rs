//! Ranks inherited from an older version of an image, carried over to the
//! new version's paths so that inheritance never makes the order worse
//! than the static order alone.
//!
//! A path of the old version that the new one still has keeps its rank. A
//! path that is gone is mapped through a version change when exactly one
//! new path (absent from the old ranks) differs from it only in its digits
//! (`numpy-1.26.3.dist-info/METADATA` becomes
//! `numpy-1.26.4.dist-info/METADATA`, `postgresql/15/bin` becomes
//! `postgresql/16/bin`). If fewer than [`MIN_KEPT_PERCENT`] of the old
//! paths are found either way, the versions differ too much for the old
//! ranks to mean anything: nothing is inherited.

use std::collections::{HashMap, HashSet};

/// Least share (percent) of inherited paths that must exist in the new
/// version (as is or mapped) for the inherited ranks to be used.
pub const MIN_KEPT_PERCENT: usize = 50;

/// What [`carry_over`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CarryOver {
    /// Old paths the new version has as they are.
    pub kept: usize,
    /// Old paths mapped to a new path through a version change.
    pub mapped: usize,
    /// Old paths with no counterpart.
    pub dropped: usize,
}

impl CarryOver {
    /// Whether enough old paths were found for the ranks to be inherited.
    pub fn usable(&self) -> bool {
        let total = self.kept + self.mapped + self.dropped;
        total > 0 && (self.kept + self.mapped) * 100 >= total * MIN_KEPT_PERCENT
    }
}

/// `path` with every run of ASCII digits replaced by `#`.
fn version_key(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Carries the ranks `old` of an older version over to the paths
/// `new_paths` of the new one (see the module docs). Returns the ranks by
/// new path (only when [`CarryOver::usable`]) and what was done.
pub fn carry_over<R>(
    old: impl IntoIterator<Item = (String, R)>,
    new_paths: &HashSet<&str>,
) -> (Option<Vec<(String, R)>>, CarryOver) {
    let old: Vec<(String, R)> = old.into_iter().collect();
    let old_paths: HashSet<&str> = old.iter().map(|(p, _)| p.as_str()).collect();
    // New paths the old ranks do not name, by version key; `None` when
    // the key is ambiguous.
    let mut by_key: HashMap<String, Option<&str>> = HashMap::new();
    for p in new_paths.iter().filter(|p| !old_paths.contains(*p)) {
        by_key
            .entry(version_key(p))
            .and_modify(|v| *v = None)
            .or_insert(Some(p));
    }
    let mut stats = CarryOver::default();
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(old.len());
    for (path, rank) in old {
        if new_paths.contains(path.as_str()) {
            stats.kept += 1;
            out.push((path, rank));
            continue;
        }
        match by_key.get(&version_key(&path)).copied().flatten() {
            Some(new) if taken.insert(new.to_string()) => {
                stats.mapped += 1;
                out.push((new.to_string(), rank));
            }
            _ => stats.dropped += 1,
        }
    }
    (stats.usable().then_some(out), stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_kept_mapped_through_version_changes_or_dropped() {
        let old = vec![
            ("usr/bin/app".to_string(), 1),
            ("site/numpy-1.26.3.dist-info/METADATA".to_string(), 2),
            ("usr/lib/pg/15/bin/postgres".to_string(), 3),
            ("gone/entirely".to_string(), 4),
        ];
        let new: HashSet<&str> = [
            "usr/bin/app",
            "site/numpy-1.26.4.dist-info/METADATA",
            "usr/lib/pg/16/bin/postgres",
            "other",
        ]
        .into_iter()
        .collect();
        let (ranks, stats) = carry_over(old, &new);
        assert_eq!(
            stats,
            CarryOver {
                kept: 1,
                mapped: 2,
                dropped: 1
            }
        );
        let ranks = ranks.unwrap();
        assert!(ranks.contains(&("usr/lib/pg/16/bin/postgres".to_string(), 3)));
        assert!(ranks.contains(&("site/numpy-1.26.4.dist-info/METADATA".to_string(), 2)));
        assert_eq!(ranks.len(), 3);
    }

    #[test]
    fn ambiguous_mappings_are_dropped_and_too_few_paths_disable_inheritance() {
        let old = vec![("lib/libx.so.1".to_string(), 0)];
        let new: HashSet<&str> = ["lib/libx.so.2", "lib/libx.so.3"].into_iter().collect();
        let (ranks, stats) = carry_over(old, &new);
        assert_eq!(stats.dropped, 1);
        assert!(ranks.is_none());
        let old: Vec<(String, u8)> = (0..10).map(|i| (format!("old/{i}"), 0)).collect();
        let mut new: HashSet<&str> = HashSet::new();
        new.insert("old/0");
        new.insert("old/1");
        let (ranks, stats) = carry_over(old, &new);
        assert_eq!((stats.kept, stats.dropped), (2, 8));
        assert!(ranks.is_none(), "20% found: not inherited");
        let (ranks, _) = carry_over(Vec::<(String, u8)>::new(), &new);
        assert!(ranks.is_none());
    }
}
