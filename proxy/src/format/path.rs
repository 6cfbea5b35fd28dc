//! Normalization and safety checks of entry paths and link targets.

use super::error::FormatError;
use super::limits::MAX_PATH_LEN;

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Normalizes a path read from a tar header: strips a leading `./` and a
/// trailing `/`, collapses `.` and empty components; the root (`.`, `./`)
/// becomes `""`. Rejects absolute paths, `..` components, NUL bytes,
/// non-UTF-8 and over-long paths.
pub fn normalize_path(raw: &[u8]) -> Result<String, FormatError> {
    let bad = |reason: &str| FormatError::BadPath {
        path: lossy(raw),
        reason: reason.to_string(),
    };
    if raw.len() > MAX_PATH_LEN {
        return Err(bad(&format!("longer than {MAX_PATH_LEN} bytes")));
    }
    if raw.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    let text = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8"))?;
    if text.starts_with('/') {
        return Err(bad("absolute path"));
    }
    let mut out = String::with_capacity(text.len());
    for comp in text.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(bad("contains a `..` component")),
            c => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

/// Checks a symlink target: kept verbatim, but it must be valid UTF-8
/// without NUL, not empty, not over-long, and a relative target must not
/// climb above the root when resolved lexically from the link's directory.
pub fn check_symlink_target(link_path: &str, raw: &[u8]) -> Result<String, FormatError> {
    let bad = |reason: &str| FormatError::BadLink {
        path: link_path.to_string(),
        target: lossy(raw),
        reason: reason.to_string(),
    };
    if raw.is_empty() {
        return Err(bad("empty symlink target"));
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(bad(&format!("longer than {MAX_PATH_LEN} bytes")));
    }
    if raw.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    let target = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8"))?;
    if !target.starts_with('/') {
        // Depth of the directory holding the link.
        let mut depth: usize = link_path.split('/').filter(|c| !c.is_empty()).count();
        depth = depth.saturating_sub(1);
        for comp in target.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| bad("relative target climbs above the root"))?;
                }
                _ => depth += 1,
            }
        }
    }
    Ok(target.to_string())
}

/// Normalizes a hard-link target like an entry path (it must also name an
/// earlier entry; the caller checks that). Errors name the link.
pub fn normalize_hardlink_target(link_path: &str, raw: &[u8]) -> Result<String, FormatError> {
    let target = normalize_path(raw).map_err(|e| FormatError::BadLink {
        path: link_path.to_string(),
        target: lossy(raw),
        reason: match e {
            FormatError::BadPath { reason, .. } => reason,
            other => other.to_string(),
        },
    })?;
    if target.is_empty() {
        return Err(FormatError::BadLink {
            path: link_path.to_string(),
            target: lossy(raw),
            reason: "hard link to the root directory".into(),
        });
    }
    Ok(target)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path(b"./etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize_path(b"etc/").unwrap(), "etc");
        assert_eq!(normalize_path(b"a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(normalize_path(b".").unwrap(), "");
        assert_eq!(normalize_path(b"./").unwrap(), "");
        assert_eq!(normalize_path("é/ü".as_bytes()).unwrap(), "é/ü");
    }

    #[test]
    fn bad_paths_are_rejected() {
        for (raw, why) in [
            (&b"../x"[..], "`..`"),
            (b"a/../../x", "`..`"),
            (b"/abs", "absolute"),
            (b"a\0b", "NUL"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            match normalize_path(raw) {
                Err(FormatError::BadPath { reason, .. }) => {
                    assert!(reason.contains(why), "{reason}")
                }
                other => panic!("{raw:?}: {other:?}"),
            }
        }
        let long = vec![b'a'; MAX_PATH_LEN + 1];
        assert!(matches!(
            normalize_path(&long),
            Err(FormatError::BadPath { .. })
        ));
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        assert_eq!(check_symlink_target("a/b", b"../x").unwrap(), "../x");
        assert_eq!(
            check_symlink_target("a/b/c", b"../../x").unwrap(),
            "../../x"
        );
        assert_eq!(
            check_symlink_target("a/b", b"/etc/passwd").unwrap(),
            "/etc/passwd"
        );
        assert_eq!(
            check_symlink_target("a/b", b"./c/../d").unwrap(),
            "./c/../d"
        );
        for (path, target) in [
            ("a/b", &b"../../x"[..]),
            ("l", b".."),
            ("a/b", b"c/../../../x"),
        ] {
            assert!(
                matches!(check_symlink_target(path, target), Err(FormatError::BadLink { ref reason, .. }) if reason.contains("climbs")),
                "{path} -> {target:?}"
            );
        }
        assert!(check_symlink_target("l", b"").is_err());
        assert!(check_symlink_target("l", b"a\0").is_err());
    }

    #[test]
    fn hardlink_targets_are_normalized() {
        assert_eq!(normalize_hardlink_target("l", b"./a/b").unwrap(), "a/b");
        assert!(matches!(
            normalize_hardlink_target("l", b"../a"),
            Err(FormatError::BadLink { .. })
        ));
        assert!(normalize_hardlink_target("l", b"./").is_err());
    }
}
