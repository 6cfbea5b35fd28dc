//! Test helpers: hand-built source layers with every entry kind, and an
//! independent reader (the `tar` crate) for converted layers.

use std::io::{Read, Write};

use tar::{EntryType, Header};

use super::entry::{Entry, EntryKind};
use super::pax::push_record;
use super::Compression;

/// A source tar built entry by entry, with the entries expected back.
#[derive(Default)]
pub struct SrcTar {
    pub buf: Vec<u8>,
    /// Expected normalized entries (as written by the converter) with content.
    pub expected: Vec<(Entry, Vec<u8>)>,
}

pub fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        mtime: 1_600_000_000,
        ..Entry::new(
            path,
            kind,
            if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        )
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

fn typeflag(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => b'0',
        EntryKind::Dir => b'5',
        EntryKind::Symlink => b'2',
        EntryKind::Hardlink => b'1',
        EntryKind::CharDev => b'3',
        EntryKind::BlockDev => b'4',
        EntryKind::Fifo => b'6',
    }
}

impl SrcTar {
    fn pad(&mut self) {
        let pad = (512 - self.buf.len() % 512) % 512;
        self.buf.resize(self.buf.len() + pad, 0);
    }

    /// A header with raw name/link bytes (truncated to the field).
    pub fn header(gnu: bool, name: &[u8], flag: u8, size: u64, e: &Entry, link: &[u8]) -> Header {
        let mut h = if gnu {
            Header::new_gnu()
        } else {
            Header::new_ustar()
        };
        {
            let old = h.as_old_mut();
            let n = name.len().min(100);
            old.name[..n].copy_from_slice(&name[..n]);
            let l = link.len().min(100);
            old.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_entry_type(EntryType::new(flag));
        h.set_size(size);
        h.set_mode(e.mode);
        h.set_uid(e.uid.min(0o7777777));
        h.set_gid(e.gid.min(0o7777777));
        h.set_mtime(e.mtime.max(0) as u64);
        if e.uname.len() < 32 {
            h.set_username(&e.uname).unwrap();
        }
        if e.gname.len() < 32 {
            h.set_groupname(&e.gname).unwrap();
        }
        if matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev) {
            h.set_device_major(e.devmajor).unwrap();
            h.set_device_minor(e.devminor).unwrap();
        }
        h
    }

    pub fn raw(&mut self, mut h: Header, data: &[u8]) {
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn pax(&mut self, flag: u8, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            push_record(&mut data, k, v);
        }
        let h = Self::header(
            false,
            b"PaxHeaders/x",
            flag,
            data.len() as u64,
            &entry("", EntryKind::File),
            b"",
        );
        self.raw(h, &data);
    }

    pub fn gnu_long(&mut self, flag: u8, value: &[u8]) {
        let mut data = value.to_vec();
        data.push(0);
        let h = Self::header(
            true,
            b"././@LongLink",
            flag,
            data.len() as u64,
            &entry("", EntryKind::File),
            b"",
        );
        self.raw(h, &data);
    }

    /// Adds `e` under the raw tar name `name` (PAX records for what does not
    /// fit the header are the caller's job), with `content` for files.
    pub fn add_raw(&mut self, name: &[u8], e: Entry, content: &[u8]) {
        let link = e.link.clone().unwrap_or_default();
        let size = if e.kind == EntryKind::File {
            content.len() as u64
        } else {
            0
        };
        let h = Self::header(false, name, typeflag(e.kind), size, &e, link.as_bytes());
        self.raw(h, content);
        self.expect(e, content);
    }

    pub fn expect(&mut self, mut e: Entry, content: &[u8]) {
        e.size = if e.kind == EntryKind::File {
            content.len() as u64
        } else {
            0
        };
        self.expected.push((e, content.to_vec()));
    }

    /// Adds `e` with its normalized path as the tar name, with a PAX
    /// header for a path or link target that does not fit the header.
    pub fn add(&mut self, e: Entry, content: &[u8]) {
        let mut name = e.path.clone().into_bytes();
        if e.kind == EntryKind::Dir {
            name.push(b'/');
        }
        let link = e.link.clone().unwrap_or_default().into_bytes();
        let mut records: Vec<(&str, &[u8])> = Vec::new();
        if name.len() > 100 || !name.is_ascii() {
            records.push(("path", &name));
        }
        if link.len() > 100 || !link.is_ascii() {
            records.push(("linkpath", &link));
        }
        let uid = e.uid.to_string().into_bytes();
        if e.uid > 0o7777777 {
            records.push(("uid", &uid));
        }
        let xattr_keys: Vec<String> = e
            .xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        for (key, (_, value)) in xattr_keys.iter().zip(&e.xattrs) {
            records.push((key, value));
        }
        if !records.is_empty() {
            self.pax(b'x', &records);
        }
        self.add_raw(&name.clone(), e, content);
    }

    /// A GNU sparse ('S') file whose data chunks are `chunks` (offset, bytes).
    pub fn sparse(&mut self, path: &str, chunks: &[(u64, Vec<u8>)], real_size: u64) {
        assert!(chunks.len() <= 4 + 21);
        let e = entry(path, EntryKind::File);
        let stored: Vec<u8> = chunks.iter().flat_map(|c| c.1.clone()).collect();
        let mut h = Self::header(true, path.as_bytes(), b'S', stored.len() as u64, &e, b"");
        let mut ext = [0u8; 512];
        {
            let gnu = h.as_gnu_mut().unwrap();
            for (i, (off, data)) in chunks.iter().enumerate().take(4) {
                octal(&mut gnu.sparse[i].offset, *off);
                octal(&mut gnu.sparse[i].numbytes, data.len() as u64);
            }
            octal(&mut gnu.realsize, real_size);
            if chunks.len() > 4 {
                gnu.isextended[0] = 1;
                for (i, (off, data)) in chunks.iter().enumerate().skip(4) {
                    let at = (i - 4) * 24;
                    octal(&mut ext[at..at + 12], *off);
                    octal(&mut ext[at + 12..at + 24], data.len() as u64);
                }
            }
        }
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        if chunks.len() > 4 {
            self.buf.extend_from_slice(&ext);
        }
        self.buf.extend_from_slice(&stored);
        self.pad();
        let mut content = vec![0u8; real_size as usize];
        for (off, data) in chunks {
            content[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        self.expect(e, &content);
    }

    pub fn finish(mut self) -> (Vec<u8>, Vec<(Entry, Vec<u8>)>) {
        self.buf.resize(self.buf.len() + 1024, 0);
        (self.buf, self.expected)
    }
}

/// Deterministic pseudo-random, moderately compressible bytes.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"alpha ",
        b"beta ",
        b"gamma\n",
        b"delta ",
        b"0x1f ",
        b"{}; ",
        b"epsilon ",
        b"zeta\t",
    ];
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x % 10 < 2 {
            out.push((x >> 8) as u8);
        } else {
            out.extend_from_slice(words[(x % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// Size of `big.bin` in [`every_kind`].
pub const BIG: usize = 300 << 10;

/// A layer with every entry kind the format must carry.
pub fn every_kind() -> (Vec<u8>, Vec<(Entry, Vec<u8>)>) {
    let mut t = SrcTar::default();
    t.pax(b'g', &[("comment", b"global header, ignored")]);
    t.add_raw(b"./", entry("", EntryKind::Dir), b"");
    t.add_raw(b"./etc/", entry("etc", EntryKind::Dir), b"");
    let mut passwd = entry("etc/passwd", EntryKind::File);
    passwd.uname = "root".into();
    passwd.gname = "wheel".into();
    t.add_raw(b"./etc/passwd", passwd, b"root:x:0:0:root:/root:/bin/sh\n");
    t.add(entry("etc/empty", EntryKind::File), b"");
    let mut hard = entry("etc/hard", EntryKind::Hardlink);
    hard.link = Some("etc/passwd".into());
    let h = SrcTar::header(false, b"etc/hard", b'1', 0, &hard, b"./etc/passwd");
    t.raw(h, b"");
    t.expect(hard, b"");
    t.add(entry("etc/.wh.old", EntryKind::File), b"");
    t.add(entry("var", EntryKind::Dir), b"");
    t.add(entry("var/.wh..wh..opq", EntryKind::File), b"");
    t.add(entry("bin", EntryKind::Dir), b"");
    let mut sh = entry("bin/sh", EntryKind::Symlink);
    sh.link = Some("/bin/busybox".into());
    sh.mode = 0o777;
    t.add(sh, b"");
    let mut rel = entry("bin/rel", EntryKind::Symlink);
    rel.link = Some("../etc/passwd".into());
    t.add(rel, b"");
    // xattrs (binary capability), sub-second mtime, big ids, setuid.
    let cap: Vec<u8> = vec![
        1, 0, 0, 2, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut ping = entry("bin/ping", EntryKind::File);
    ping.mode = 0o4755;
    ping.uid = 3_000_000;
    ping.gid = 70_000;
    ping.uname = "a-user-name-longer-than-thirty-two-bytes".into();
    ping.gname = "grp".into();
    ping.mtime_nsec = 123_456_789;
    ping.xattrs = vec![
        ("security.capability".into(), cap.clone()),
        ("user.note".into(), b"line1 line2=\0x\xff".to_vec()),
    ];
    t.pax(
        b'x',
        &[
            ("uid", b"3000000"),
            ("gid", b"70000"),
            ("uname", ping.uname.clone().as_bytes()),
            ("mtime", b"1600000000.123456789"),
            ("SCHILY.xattr.user.note", b"line1 line2=\0x\xff"),
            ("SCHILY.xattr.security.capability", &cap),
            ("atime", b"1600000001.5"),
        ],
    );
    t.add_raw(b"bin/ping", ping, &data(10_000, 1));
    // Negative mtime with a fraction.
    let mut old = entry("old", EntryKind::File);
    old.mtime = -2;
    old.mtime_nsec = 500_000_000;
    t.pax(b'x', &[("mtime", b"-1.5")]);
    t.add(old, b"from the past\n");
    // PAX long names (> 100 and > 255 bytes), non-ASCII.
    let deep = format!("deep/{}/file", "d".repeat(150));
    t.add(entry("deep", EntryKind::Dir), b"");
    t.add(
        entry(&format!("deep/{}", "d".repeat(150)), EntryKind::Dir),
        b"",
    );
    t.pax(b'x', &[("path", deep.as_bytes())]);
    t.add_raw(
        b"placeholder",
        entry(&deep, EntryKind::File),
        b"deep file\n",
    );
    let longest = format!("long/{}/{}", "a".repeat(120), "b".repeat(140));
    t.add(entry("long", EntryKind::Dir), b"");
    t.add(
        entry(&format!("long/{}", "a".repeat(120)), EntryKind::Dir),
        b"",
    );
    t.pax(b'x', &[("path", longest.as_bytes())]);
    t.add_raw(
        b"placeholder2",
        entry(&longest, EntryKind::File),
        &data(700, 2),
    );
    t.add(entry("ünï", EntryKind::Dir), b"");
    t.pax(b'x', &[("path", "ünï/cödé.txt".as_bytes())]);
    t.add_raw(
        b"x",
        entry("ünï/cödé.txt", EntryKind::File),
        "ünïcödé\n".as_bytes(),
    );
    // PAX long symlink target.
    let target = format!("/{}", "t".repeat(300));
    let mut ls = entry("long/pax-link", EntryKind::Symlink);
    ls.link = Some(target.clone());
    t.add(ls, b"");
    // GNU long name and long link.
    let gnu_name = format!("gnu/{}", "g".repeat(175));
    let gnu_target = format!("../{}", "k".repeat(150));
    t.add(entry("gnu", EntryKind::Dir), b"");
    t.gnu_long(b'L', gnu_name.as_bytes());
    t.add_raw(
        b"gnu/short",
        entry(&gnu_name, EntryKind::File),
        b"gnu long name\n",
    );
    let mut gl = entry("gnu/link", EntryKind::Symlink);
    gl.link = Some(gnu_target.clone());
    t.gnu_long(b'K', gnu_target.as_bytes());
    let h = SrcTar::header(true, b"gnu/link", b'2', 0, &gl, b"truncated");
    t.raw(h, b"");
    t.expect(gl, b"");
    // Devices and fifo.
    t.add(entry("dev", EntryKind::Dir), b"");
    let mut null = entry("dev/null", EntryKind::CharDev);
    (null.devmajor, null.devminor, null.mode) = (1, 3, 0o666);
    t.add(null, b"");
    let mut sda = entry("dev/sda", EntryKind::BlockDev);
    (sda.devmajor, sda.devminor) = (8, 0);
    t.add(sda, b"");
    t.add(entry("dev/fifo", EntryKind::Fifo), b"");
    // GNU sparse, with a leading hole, > 4 chunks, and a trailing hole.
    let chunks: Vec<(u64, Vec<u8>)> = (0..6)
        .map(|i| (4096 + i * 100_000, data(1000 + i as usize, 10 + i as u32)))
        .collect();
    t.sparse("sparse.img", &chunks, 1 << 20);
    // A file bigger than the copy buffers and the deflate window, then a
    // file whose size is a multiple of 512. (A 5 MiB file has its own test.)
    t.add(entry("big.bin", EntryKind::File), &data(BIG, 3));
    t.add(entry("aligned", EntryKind::File), &data(1024, 4));
    // A path written twice.
    t.add(entry("etc/dup", EntryKind::File), b"first\n");
    t.add(entry("etc/dup", EntryKind::File), b"second version\n");
    let mut hard2 = entry("etc/hard-dup", EntryKind::Hardlink);
    hard2.link = Some("etc/dup".into());
    t.add(hard2, b"");
    t.finish()
}

pub fn compress(compression: Compression, tar: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3).unwrap(),
    }
}

pub fn decompress(compression: Compression, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(blob),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

/// Reads a tar stream with the `tar` crate (independent of our reader).
pub fn read_with_tar_crate(tar_bytes: &[u8]) -> Vec<(Entry, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            EntryType::Regular => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => EntryKind::Hardlink,
            EntryType::Char => EntryKind::CharDev,
            EntryType::Block => EntryKind::BlockDev,
            EntryType::Fifo => EntryKind::Fifo,
            other => panic!("unexpected type {other:?}"),
        };
        let raw_path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let path = raw_path
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        let path = if path == "." { String::new() } else { path };
        let mut entry = entry(&path, kind);
        entry.mode = h.mode().unwrap();
        entry.uid = h.uid().unwrap();
        entry.gid = h.gid().unwrap();
        entry.uname = String::from_utf8(h.username_bytes().unwrap_or_default().to_vec()).unwrap();
        entry.gname = String::from_utf8(h.groupname_bytes().unwrap_or_default().to_vec()).unwrap();
        entry.mtime = h.mtime().unwrap() as i64;
        entry.link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.to_vec()).unwrap());
        if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) {
            entry.devmajor = h.device_major().unwrap().unwrap();
            entry.devminor = h.device_minor().unwrap().unwrap();
        }
        if let Some(exts) = e.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                let key = ext.key().unwrap();
                match key {
                    "uname" => entry.uname = ext.value().unwrap().to_string(),
                    "gname" => entry.gname = ext.value().unwrap().to_string(),
                    "mtime" => {
                        let (s, n) = super::pax::parse_time(ext.value_bytes()).unwrap();
                        (entry.mtime, entry.mtime_nsec) = (s, n);
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            entry
                                .xattrs
                                .push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        entry.xattrs.sort();
        let mut content = Vec::new();
        if kind == EntryKind::File {
            e.read_to_end(&mut content).unwrap();
            entry.size = content.len() as u64;
        }
        out.push((entry, content));
    }
    out
}
