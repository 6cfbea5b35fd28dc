//! Serializes an [`Entry`]'s tar headers: POSIX ustar, preceded by a PAX
//! extended header when a field does not fit.

use super::entry::{Entry, EntryKind};
use super::error::FormatError;
use super::pax::{format_time, push_record};

const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// Name of the PAX extended header entries we write.
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

fn put_octal(block: &mut [u8; 512], start: usize, len: usize, value: u64) {
    let text = format!("{:0width$o}", value, width = len - 1);
    block[start..start + len - 1].copy_from_slice(text.as_bytes());
    block[start + len - 1] = 0;
}

fn put_bytes(block: &mut [u8; 512], start: usize, value: &[u8]) {
    block[start..start + value.len()].copy_from_slice(value);
}

/// Builds one ustar header block (checksum included).
#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    prefix: &[u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &[u8],
    uname: &[u8],
    gname: &[u8],
    dev: (u32, u32),
) -> [u8; 512] {
    let mut b = [0u8; 512];
    put_bytes(&mut b, 0, name);
    put_octal(&mut b, 100, 8, u64::from(mode & 0o7777));
    put_octal(&mut b, 108, 8, uid);
    put_octal(&mut b, 116, 8, gid);
    put_octal(&mut b, 124, 12, size);
    put_octal(&mut b, 136, 12, mtime);
    b[156] = typeflag;
    put_bytes(&mut b, 157, link);
    put_bytes(&mut b, 257, b"ustar\x0000");
    put_bytes(&mut b, 265, uname);
    put_bytes(&mut b, 297, gname);
    put_octal(&mut b, 329, 8, u64::from(dev.0));
    put_octal(&mut b, 337, 8, u64::from(dev.1));
    put_bytes(&mut b, 345, prefix);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|x| u64::from(*x)).sum();
    let text = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(text.as_bytes());
    b
}

/// Splits an ASCII path into ustar (prefix, name), if it fits.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if !path.is_ascii() {
        return None;
    }
    if path.len() <= NAME_LEN {
        return Some((&[], path));
    }
    // The prefix is everything before a '/', the name everything after it.
    let start = path.len().saturating_sub(NAME_LEN + 1);
    (start..path.len().min(PREFIX_LEN + 1))
        .find(|&i| path[i] == b'/' && i > 0 && i + 1 < path.len())
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// Truncates to at most `max` bytes (a placeholder when PAX holds the value).
fn truncate(value: &[u8], max: usize) -> &[u8] {
    &value[..value.len().min(max)]
}

fn fits_name_field(value: &[u8], max: usize) -> bool {
    value.is_ascii() && value.len() <= max && !value.contains(&0)
}

/// Appends the headers of `entry` (an optional PAX header, then the ustar
/// header) to `out`. The content, for regular files, follows separately.
pub fn write_headers(entry: &Entry, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let mut pax = Vec::new();
    let mut tar_path = if entry.path.is_empty() {
        b"./".to_vec()
    } else {
        entry.path.as_bytes().to_vec()
    };
    if entry.kind == EntryKind::Dir && !entry.path.is_empty() {
        tar_path.push(b'/');
    }
    let (prefix, name): (&[u8], &[u8]) = match split_ustar(&tar_path) {
        Some(split) => split,
        None => {
            push_record(&mut pax, "path", &tar_path);
            (&[], truncate(&tar_path, NAME_LEN))
        }
    };

    let (typeflag, size) = match entry.kind {
        EntryKind::File => (b'0', entry.size),
        EntryKind::Dir => (b'5', 0),
        EntryKind::Symlink => (b'2', 0),
        EntryKind::Hardlink => (b'1', 0),
        EntryKind::CharDev => (b'3', 0),
        EntryKind::BlockDev => (b'4', 0),
        EntryKind::Fifo => (b'6', 0),
    };
    let link: &[u8] = match entry.kind {
        EntryKind::Symlink | EntryKind::Hardlink => {
            let link = entry.link.as_deref().unwrap_or("").as_bytes();
            if fits_name_field(link, NAME_LEN) {
                link
            } else {
                push_record(&mut pax, "linkpath", link);
                truncate(link, NAME_LEN)
            }
        }
        _ => &[],
    };
    let header_size = if size > MAX_OCTAL_11 {
        push_record(&mut pax, "size", size.to_string().as_bytes());
        0
    } else {
        size
    };
    let mut ids = [0u64; 2];
    for (i, (key, value)) in [("uid", entry.uid), ("gid", entry.gid)]
        .into_iter()
        .enumerate()
    {
        if value > MAX_OCTAL_7 {
            push_record(&mut pax, key, value.to_string().as_bytes());
        } else {
            ids[i] = value;
        }
    }
    let mut names: [&[u8]; 2] = [&[], &[]];
    for (i, (key, value)) in [("uname", &entry.uname), ("gname", &entry.gname)]
        .into_iter()
        .enumerate()
    {
        if fits_name_field(value.as_bytes(), 31) {
            names[i] = value.as_bytes();
        } else {
            push_record(&mut pax, key, value.as_bytes());
        }
    }
    let mtime = if entry.mtime_nsec != 0 || entry.mtime < 0 || entry.mtime as u64 > MAX_OCTAL_11 {
        push_record(
            &mut pax,
            "mtime",
            format_time(entry.mtime, entry.mtime_nsec).as_bytes(),
        );
        entry.mtime.clamp(0, MAX_OCTAL_11 as i64) as u64
    } else {
        entry.mtime as u64
    };
    for (key, value) in &entry.xattrs {
        push_record(&mut pax, &format!("SCHILY.xattr.{key}"), value);
    }
    let dev = match entry.kind {
        EntryKind::CharDev | EntryKind::BlockDev => {
            if u64::from(entry.devmajor) > MAX_OCTAL_7 || u64::from(entry.devminor) > MAX_OCTAL_7 {
                return Err(FormatError::Limit {
                    path: entry.path.clone(),
                    what: format!(
                        "device number {}:{} too large for a tar header",
                        entry.devmajor, entry.devminor
                    ),
                });
            }
            (entry.devmajor, entry.devminor)
        }
        _ => (0, 0),
    };

    if !pax.is_empty() {
        let block = ustar_block(
            PAX_HEADER_NAME,
            &[],
            0o644,
            0,
            0,
            pax.len() as u64,
            0,
            b'x',
            &[],
            &[],
            &[],
            (0, 0),
        );
        out.extend_from_slice(&block);
        out.extend_from_slice(&pax);
        out.resize(
            out.len() + super::tar_read::padding(pax.len() as u64) as usize,
            0,
        );
    }
    let block = ustar_block(
        name,
        prefix,
        entry.mode,
        ids[0],
        ids[1],
        header_size,
        mtime,
        typeflag,
        link,
        names[0],
        names[1],
        dev,
    );
    out.extend_from_slice(&block);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ustar_split() {
        assert_eq!(split_ustar(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let (p, n) = split_ustar(long.as_bytes()).unwrap();
        assert_eq!(p.len(), 120);
        assert_eq!(n.len(), 90);
        assert_eq!(split_ustar("x".repeat(101).as_bytes()), None);
        assert_eq!(
            split_ustar(format!("{}/a", "d".repeat(200)).as_bytes()),
            None
        );
        assert_eq!(split_ustar("é".as_bytes()), None);
    }

    #[test]
    fn headers_are_valid_for_the_tar_crate() {
        let entry = Entry {
            path: "dir/file".into(),
            kind: EntryKind::File,
            mode: 0o4755,
            uid: 3_000_000,
            gid: 7,
            uname: "a-very-long-user-name-that-does-not-fit".into(),
            gname: "g".into(),
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            size: 3,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![("user.k".into(), vec![0, 1, 2])],
            content: None,
        };
        let mut out = Vec::new();
        write_headers(&entry, &mut out).unwrap();
        out.extend_from_slice(b"abc");
        out.resize(out.len() + 509 + 1024, 0);
        let mut ar = tar::Archive::new(&out[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"dir/file");
        assert_eq!(e.header().uid().unwrap(), 3_000_000);
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        let exts: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_string())
            .collect();
        assert!(exts.contains(&"uname".to_string()));
        assert!(exts.contains(&"SCHILY.xattr.user.k".to_string()));
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        assert_eq!(s, "abc");
    }
}
