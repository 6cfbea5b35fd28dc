//! Where the dynamic loader looks for libraries: `ld.so.conf` (with its
//! `include` lines), musl's path file, and the standard directories.

use super::tree::Tree;
use super::{ContentReader, StartupLimits, StartupOrder};
use crate::format::EntryKind;

/// Largest configuration file read.
const MAX_CONF: u64 = 64 << 10;
/// Most configuration files read (`ld.so.conf` and its includes).
const MAX_CONF_FILES: usize = 64;

/// Standard directories, after the configured ones (glibc's defaults for
/// 64-bit x86, then the 32-bit/generic ones, and Debian's multiarch ones in
/// case `ld.so.conf` is absent).
const STANDARD: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
    "usr/local/lib",
];

/// musl's loader reads its search path from this file.
const MUSL_PATH: &str = "etc/ld-musl-x86_64.path";

async fn read_text(
    tree: &Tree<'_>,
    reader: &dyn ContentReader,
    order: &mut StartupOrder,
    limits: StartupLimits,
    path: &str,
) -> Option<String> {
    let (_, entry) = tree.resolve(path)?;
    if !matches!(entry.entry.kind, EntryKind::File | EntryKind::Hardlink) {
        return None;
    }
    if order.files_read >= limits.max_files || order.bytes_read >= limits.max_bytes {
        return None;
    }
    let bytes = reader.read(entry, MAX_CONF).await.ok()?;
    order.files_read += 1;
    order.bytes_read += bytes.len() as u64;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether file name `name` matches glob `pattern` (`*` and `?` only).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Expands an `include` pattern of `ld.so.conf` (relative to `/etc`).
fn expand_include(tree: &Tree<'_>, pattern: &str) -> Vec<String> {
    let pattern = if pattern.starts_with('/') {
        pattern.trim_start_matches('/').to_string()
    } else {
        format!("etc/{pattern}")
    };
    let (dir, file) = pattern.rsplit_once('/').unwrap_or(("", pattern.as_str()));
    if !file.contains(['*', '?']) {
        return vec![pattern.clone()];
    }
    let Some((real_dir, _)) = tree.resolve(dir) else {
        return Vec::new();
    };
    tree.children(&real_dir)
        .into_iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            glob_match(file.as_bytes(), name.as_bytes())
        })
        .map(str::to_string)
        .collect()
}

/// The directories searched after the object's own paths: those of
/// `ld.so.conf` (includes followed, bounded), musl's path file, then the
/// standard ones.
pub async fn system_dirs(
    tree: &Tree<'_>,
    reader: &dyn ContentReader,
    order: &mut StartupOrder,
    limits: StartupLimits,
) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    let mut files = vec!["etc/ld.so.conf".to_string()];
    let mut read = 0usize;
    while let Some(file) = files.pop() {
        if read >= MAX_CONF_FILES {
            break;
        }
        read += 1;
        let Some(text) = read_text(tree, reader, order, limits, &file).await else {
            continue;
        };
        let mut included = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() || line.starts_with("hwcap") {
                continue;
            }
            if let Some(pattern) = line.strip_prefix("include") {
                for p in pattern.split_whitespace() {
                    included.extend(expand_include(tree, p));
                }
                continue;
            }
            dirs.extend(
                line.split([':', ',', ' ', '\t'])
                    .filter(|d| d.starts_with('/'))
                    .map(str::to_string),
            );
        }
        // Included files are read in order (the stack pops from the end).
        files.extend(included.into_iter().rev());
    }
    if let Some(text) = read_text(tree, reader, order, limits, MUSL_PATH).await {
        dirs.extend(
            text.split([':', '\n'])
                .map(str::trim)
                .filter(|d| d.starts_with('/'))
                .map(str::to_string),
        );
    }
    dirs.extend(STANDARD.iter().map(|d| format!("/{d}")));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Expands `$ORIGIN` (the directory of the loading object) in a search path.
fn expand(dir: &str, origin: &str) -> String {
    let origin = format!("/{origin}");
    dir.replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin)
}

/// Finds library `name` loaded by the object in directory `origin`, in the
/// loader's order: `DT_RPATH`, `LD_LIBRARY_PATH`, `DT_RUNPATH`, then the
/// system directories. Returns its real path.
pub fn find_library(
    tree: &Tree<'_>,
    name: &str,
    origin: &str,
    rpath: &[String],
    env: &[String],
    runpath: &[String],
    system: &[String],
) -> Option<String> {
    let file = |p: &str| {
        tree.resolve(p)
            .filter(|(_, e)| matches!(e.entry.kind, EntryKind::File | EntryKind::Hardlink))
            .map(|(real, _)| real)
    };
    if name.contains('/') {
        return file(name);
    }
    rpath
        .iter()
        .map(|d| expand(d, origin))
        .chain(env.iter().cloned())
        .chain(runpath.iter().map(|d| expand(d, origin)))
        .chain(system.iter().cloned())
        .find_map(|d| file(&format!("{}/{name}", d.trim_end_matches('/'))))
}
