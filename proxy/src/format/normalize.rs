//! Turns a raw tar entry into a normalized, checked [`Entry`].

use super::entry::{Entry, EntryKind};
use super::error::FormatError;
use super::limits::MAX_XATTR_TOTAL;
use super::path::{check_symlink_target, normalize_hardlink_target, normalize_path};
use super::tar_read::RawEntry;

fn text_field(path: &str, what: &str, raw: &[u8]) -> Result<String, FormatError> {
    match std::str::from_utf8(raw) {
        Ok(s) if !s.contains('\0') => Ok(s.to_string()),
        _ => Err(FormatError::Unsupported {
            path: path.to_string(),
            what: format!(
                "{what} {:?} is not valid UTF-8 text",
                String::from_utf8_lossy(raw)
            ),
        }),
    }
}

/// Normalizes and checks `raw`: path, link target, names and xattrs.
/// Hard-link targets are only normalized here; callers check that they name
/// an earlier entry.
pub fn to_entry(raw: &RawEntry) -> Result<Entry, FormatError> {
    let path = normalize_path(&raw.path)?;
    let kind = match raw.typeflag {
        b'0' | b'7' | b'S' => EntryKind::File,
        b'1' => EntryKind::Hardlink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::CharDev,
        b'4' => EntryKind::BlockDev,
        b'5' => EntryKind::Dir,
        b'6' => EntryKind::Fifo,
        other => {
            return Err(FormatError::Unsupported {
                path,
                what: format!("tar entry type {:?}", char::from(other)),
            })
        }
    };
    if path.is_empty() && kind != EntryKind::Dir {
        return Err(FormatError::BadPath {
            path: raw.display_path(),
            reason: "the root is not a directory".into(),
        });
    }
    let link = match kind {
        EntryKind::Symlink => Some(check_symlink_target(&path, &raw.link)?),
        EntryKind::Hardlink => {
            let target = normalize_hardlink_target(&path, &raw.link)?;
            if target == path {
                return Err(FormatError::BadLink {
                    path: path.clone(),
                    target,
                    reason: "hard link to itself".into(),
                });
            }
            Some(target)
        }
        _ => None,
    };
    let uname = text_field(&path, "user name", &raw.uname)?;
    let gname = text_field(&path, "group name", &raw.gname)?;
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::with_capacity(raw.xattrs.len());
    let mut total = 0usize;
    for (name, value) in &raw.xattrs {
        let name = text_field(&path, "xattr name", name)?;
        if name.is_empty() {
            return Err(FormatError::Unsupported {
                path,
                what: "empty xattr name".into(),
            });
        }
        total += name.len() + value.len();
        if total > MAX_XATTR_TOTAL {
            return Err(FormatError::Limit {
                path,
                what: format!("xattrs exceed {MAX_XATTR_TOTAL} bytes"),
            });
        }
        // A later record for the same name wins.
        xattrs.retain(|(n, _)| *n != name);
        xattrs.push((name, value.clone()));
    }
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    let is_dev = matches!(kind, EntryKind::CharDev | EntryKind::BlockDev);
    Ok(Entry {
        path,
        kind,
        mode: raw.mode & 0o7777,
        uid: raw.uid,
        gid: raw.gid,
        uname,
        gname,
        mtime: raw.mtime,
        mtime_nsec: raw.mtime_nsec,
        size: if kind == EntryKind::File { raw.size } else { 0 },
        link,
        devmajor: if is_dev { raw.devmajor } else { 0 },
        devminor: if is_dev { raw.devminor } else { 0 },
        xattrs,
        content: None,
    })
}

/// The error for a hard link whose target is not an earlier non-directory entry.
pub fn missing_hardlink_target(entry: &Entry, is_dir: bool) -> FormatError {
    FormatError::BadLink {
        path: entry.path.clone(),
        target: entry.link.clone().unwrap_or_default(),
        reason: if is_dir {
            "hard link to a directory".into()
        } else {
            "hard link target is not an earlier entry of the layer".into()
        },
    }
}
