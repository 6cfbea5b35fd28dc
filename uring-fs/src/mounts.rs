//! The mount table: is a path a FUSE mount, and detaching one.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether `path` (canonical) is the mount point of a FUSE mount in this
/// process's mount namespace, by `/proc/self/mountinfo`.
pub fn is_fuse_mounted(path: &Path) -> io::Result<bool> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.as_os_str().as_bytes();
    Ok(table.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let point = left.split(' ').nth(4).map(unescape);
        let fstype = right.split(' ').next().unwrap_or("");
        fstype.starts_with("fuse") && point.as_deref() == Some(wanted)
    }))
}

/// Detaches the mount at `path` (`umount -l`): it leaves the namespace at
/// once; the file system goes away when its last user lets go.
pub fn detach_unmount(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the whole call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape(r"/tmp/a\040b"), b"/tmp/a b".to_vec());
        assert_eq!(unescape("/plain"), b"/plain".to_vec());
        assert_eq!(unescape(r"/end\04"), br"/end\04".to_vec());
    }

    #[test]
    fn root_is_not_a_fuse_mount() {
        assert!(!is_fuse_mounted(Path::new("/")).unwrap());
    }
}
