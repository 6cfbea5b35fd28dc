//! Acceptance test of issue 2 with real tools: a multi-layer image holding
//! every entry kind (and a later layer deleting, replacing and hiding files
//! of an earlier one) is pushed to a real `docker-registry`, converted with
//! the `starlight` binary (gzip and zstd), pulled and run by a private real
//! containerd. The tree the container sees (type, mode, owner, size,
//! content SHA-256, link target, device numbers, mtime, link count), plus
//! the xattrs of the image as containerd mounts it, must be identical for
//! the original and both converted images; and the merged table of contents
//! the proxy indexes must equal that tree.
//!
//! Needs root (containerd); skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
mod support;

use common::layout::{Layer, OciLayout};
use common::registry::TestRegistry;
use sha2::{Digest, Sha256};
use starlight_proxy::db::{Db, ImageRecord, TocEntry};
use starlight_proxy::format::{Compression, EntryKind};
use starlight_proxy::registry::RegistryClient;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use support::containerd::{is_root, Containerd};

// ---------------------------------------------------------------------------
// Building the test image's layers with the tar crate.

/// What a tar entry is.
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

/// One tar entry to write.
struct Spec {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
    /// Written with a GNU header: long names in `././@LongLink` entries
    /// instead of PAX records (as GNU tar does).
    gnu: bool,
}

fn spec(path: &str, kind: Kind, mode: u32) -> Spec {
    Spec {
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        xattrs: vec![],
        gnu: false,
    }
}

fn dir(path: &str, mode: u32) -> Spec {
    spec(path, Kind::Dir, mode)
}

fn file(path: &str, mode: u32, content: &[u8]) -> Spec {
    spec(path, Kind::File(content.to_vec()), mode)
}

fn symlink(path: &str, target: &str) -> Spec {
    spec(path, Kind::Symlink(target.to_string()), 0o777)
}

/// A hard link; its header carries the target's mode, as Docker writes it.
fn hardlink(path: &str, target: &str, mode: u32) -> Spec {
    spec(path, Kind::Hardlink(target.to_string()), mode)
}

impl Spec {
    fn owner(mut self, uid: u64, gid: u64) -> Spec {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn xattr(mut self, name: &str, value: &[u8]) -> Spec {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    fn gnu(mut self) -> Spec {
        self.gnu = true;
        self
    }
}

/// Writes `entries` as a POSIX (ustar + PAX) tar: names and link targets
/// longer than the ustar fields and xattrs go in PAX extended headers.
fn build_tar(entries: &[Spec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = vec![];
        let (ty, data, link): (tar::EntryType, &[u8], Option<&str>) = match &e.kind {
            Kind::Dir => (tar::EntryType::Directory, &[], None),
            Kind::File(d) => (tar::EntryType::Regular, d, None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, &[], Some(t)),
            Kind::Hardlink(t) => (tar::EntryType::Link, &[], Some(t)),
            Kind::Fifo => (tar::EntryType::Fifo, &[], None),
            Kind::Char(..) => (tar::EntryType::Char, &[], None),
            Kind::Block(..) => (tar::EntryType::Block, &[], None),
        };
        let name = if matches!(e.kind, Kind::Dir) {
            format!("{}/", e.path)
        } else {
            e.path.clone()
        };
        if e.gnu {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_size(data.len() as u64);
            match link {
                Some(t) => b.append_link(&mut h, &name, t).unwrap(),
                None => b.append_data(&mut h, &name, data).unwrap(),
            }
            continue;
        }
        if name.len() > 100 {
            pax.push(("path".into(), name.as_bytes().to_vec()));
            h.as_old_mut().name.copy_from_slice(&name.as_bytes()[..100]);
        } else {
            h.set_path(&name).unwrap();
        }
        if let Some(t) = link {
            if t.len() > 100 {
                pax.push(("linkpath".into(), t.as_bytes().to_vec()));
                h.as_old_mut()
                    .linkname
                    .copy_from_slice(&t.as_bytes()[..100]);
            } else {
                h.set_link_name(t).unwrap();
            }
        }
        for (k, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        h.set_entry_type(ty);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(data.len() as u64);
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = e.kind {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Deterministic, poorly compressible bytes.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A valid `security.capability` value (VFS_CAP_REVISION_2, effective,
/// permitted = CAP_NET_RAW).
fn capability_xattr() -> Vec<u8> {
    let mut v = vec![];
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

const LONG_DIR: &str = "data/long-paths/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// The lower layer: busybox, directories, every entry kind, and the files
/// the upper layer deletes, replaces or hides.
fn layer1() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt install busybox-static)");
    let long_dir2 = format!("{LONG_DIR}/{}", "b".repeat(120));
    let long_file = format!("{long_dir2}/{}.txt", "c".repeat(70));
    assert!(long_file.len() > 255 && LONG_DIR.len() > 100);
    let long_target = format!("../{}", "x/".repeat(150).trim_end_matches('/'));
    let mut v = vec![
        dir("bin", 0o755),
        spec("bin/busybox", Kind::File(busybox), 0o755),
    ];
    for applet in [
        "sh",
        "find",
        "stat",
        "sha256sum",
        "readlink",
        "cat",
        "ls",
        "echo",
    ] {
        v.push(symlink(&format!("bin/{applet}"), "busybox"));
    }
    v.extend([
        dir("etc", 0o755),
        file(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
        ),
        file("etc/group", 0o644, b"root:x:0:\nuser:x:1000:\n"),
        file("etc/motd", 0o644, b"original motd\n"),
        dir("tmp", 0o1777),
        dir("data", 0o750).owner(1000, 1000),
        dir("data/sub", 0o755).xattr("user.dir-attr", b"on a directory"),
        file("data/sub/file", 0o644, b"in a subdirectory\n"),
        file("data/private", 0o600, b"secret\n").owner(1000, 1000),
        file("data/group-only", 0o040, b"group\n").owner(0, 50),
        file("data/setuid", 0o4755, b"#!/bin/sh\n"),
        dir("data/setgid-dir", 0o2775).owner(0, 100),
        dir("data/sticky-dir", 0o1755),
        file("data/empty", 0o644, b""),
        file("data/big.bin", 0o640, &noise(3 << 20, 0x5eed)).owner(1000, 1000),
        file("data/hardlink-target", 0o644, b"shared by two names\n"),
        hardlink("data/hardlink", "data/hardlink-target", 0o644),
        file("data/empty-link-target", 0o600, b""),
        hardlink("data/empty-hardlink", "data/empty-link-target", 0o600),
        symlink("data/rel-link", "sub/file"),
        symlink("data/abs-link", "/etc/passwd"),
        symlink("data/dangling", "does/not/exist"),
        symlink("data/long-link", &long_target),
        symlink("data/owned-link", "empty").owner(1000, 1000),
        spec("data/fifo", Kind::Fifo, 0o640),
        spec("data/null-device", Kind::Char(1, 3), 0o666),
        spec("data/loop-device", Kind::Block(7, 0), 0o660),
        file("data/xattrs", 0o644, b"with attributes\n")
            .xattr("user.starlight", b"hello")
            .xattr("user.binary", &[0, 1, 2, 255]),
        file("data/capable", 0o755, b"#!/bin/sh\n")
            .xattr("security.capability", &capability_xattr()),
        dir("data/long-paths", 0o755),
        dir(LONG_DIR, 0o755),
        dir(&long_dir2, 0o755),
        file(&long_file, 0o644, b"at the end of a long path\n"),
        file(
            &format!("{long_dir2}/{}", "g".repeat(90)),
            0o644,
            b"GNU long name\n",
        )
        .gnu(),
        symlink("data/gnu-long-link", &long_target).gnu(),
        file("data/delete-me", 0o644, b"deleted by the upper layer\n"),
        file("data/kind-change", 0o644, b"a file, then a symlink\n"),
        dir("data/dir-to-file", 0o755),
        file(
            "data/dir-to-file/child",
            0o644,
            b"gone with its directory\n",
        ),
        dir("srv", 0o755),
        dir("srv/gone", 0o755),
        file("srv/gone/a", 0o644, b"a\n"),
        dir("srv/gone/deeper", 0o755),
        file("srv/gone/deeper/b", 0o644, b"b\n"),
        file("srv/kept", 0o644, b"kept\n"),
        dir("opaque", 0o755),
        file("opaque/hidden-1", 0o644, b"hidden by the opaque marker\n"),
        dir("opaque/hidden-dir", 0o755),
        file("opaque/hidden-dir/x", 0o644, b"x\n"),
    ]);
    build_tar(&v)
}

/// The upper layer: deletes, replaces and hides entries of the lower one.
fn layer2() -> Vec<u8> {
    build_tar(&[
        dir("etc", 0o755),
        file("etc/motd", 0o600, b"replaced by the upper layer\n"),
        dir("data", 0o750).owner(1000, 1000),
        file("data/.wh.delete-me", 0o644, b""),
        symlink("data/kind-change", "big.bin"),
        file("data/dir-to-file", 0o644, b"now a file\n"),
        file("data/big-copy", 0o644, &noise(1 << 20, 0x5eed)),
        dir("srv", 0o755),
        file("srv/.wh.gone", 0o644, b""),
        dir("opaque", 0o700),
        file("opaque/.wh..wh..opq", 0o644, b""),
        file("opaque/visible", 0o644, b"the only child left\n"),
        dir("new", 0o755),
        file("new/file", 0o664, b"added by the upper layer\n").owner(1000, 1000),
    ])
}

// ---------------------------------------------------------------------------
// What a container sees.

/// One path as seen inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Node {
    /// `d`, `f`, `l`, `c`, `b`, `p` or `s`.
    kind: char,
    /// Permission bits with setuid, setgid and sticky.
    mode: u32,
    uid: u64,
    gid: u64,
    /// Size (0 for directories, whose size depends on the file system).
    size: u64,
    /// Link count (0 for directories).
    nlink: u64,
    /// Modification time (0 for directories, which unpacking touches).
    mtime: i64,
    /// Device numbers (devices only).
    rdev: (u32, u32),
    sha256: Option<String>,
    link: Option<String>,
    /// Extended attributes, hex values (from the image mounted by containerd).
    xattrs: BTreeMap<String, String>,
}

/// Path (relative, the root is `""`) to what is there.
type Tree = BTreeMap<String, Node>;

/// Lists the tree with busybox. Paths runc mounts over or creates at run
/// time are pruned.
const LIST_SCRIPT: &str = r#"set -e
walk() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run \
        -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname \) -prune -o "$@"
}
echo '#stat'
walk -exec stat -c '%n|%f|%u|%g|%s|%t|%T|%h|%Y' {} +
echo '#sha256'
walk -type f -exec sha256sum {} +
echo '#link'
walk -type l -exec sh -c 'for f; do echo "$f|$(readlink "$f")"; done' sh {} +
echo '#end'
"#;

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

/// Parses [`LIST_SCRIPT`]'s output.
fn parse_listing(out: &str) -> Tree {
    let mut tree = Tree::new();
    let mut section = "";
    let mut ended = false;
    for line in out.lines() {
        if let Some(s) = line.strip_prefix('#') {
            section = match s {
                "stat" | "sha256" | "link" => s,
                "end" => {
                    ended = true;
                    ""
                }
                other => panic!("unexpected section {other:?}"),
            };
            continue;
        }
        match section {
            "stat" => {
                let f: Vec<&str> = line.rsplitn(9, '|').collect();
                assert_eq!(f.len(), 9, "bad stat line {line:?}");
                let (name, raw_mode) = (f[8], u32::from_str_radix(f[7], 16).unwrap());
                let kind = match raw_mode & 0o170000 {
                    0o040000 => 'd',
                    0o100000 => 'f',
                    0o120000 => 'l',
                    0o020000 => 'c',
                    0o060000 => 'b',
                    0o010000 => 'p',
                    0o140000 => 's',
                    t => panic!("unknown file type {t:o} in {line:?}"),
                };
                let dir = kind == 'd';
                let device = kind == 'c' || kind == 'b';
                let node = Node {
                    kind,
                    mode: raw_mode & 0o7777,
                    uid: f[6].parse().unwrap(),
                    gid: f[5].parse().unwrap(),
                    size: if dir { 0 } else { f[4].parse().unwrap() },
                    rdev: if device {
                        (
                            u32::from_str_radix(f[3], 16).unwrap(),
                            u32::from_str_radix(f[2], 16).unwrap(),
                        )
                    } else {
                        (0, 0)
                    },
                    nlink: if dir { 0 } else { f[1].parse().unwrap() },
                    mtime: if dir { 0 } else { f[0].parse().unwrap() },
                    ..Node::default()
                };
                assert!(
                    tree.insert(rel(name), node).is_none(),
                    "{name} listed twice"
                );
            }
            "sha256" => {
                let (sum, name) = line.split_once("  ").expect("sha256sum line");
                tree.get_mut(&rel(name))
                    .expect("hashed path was listed")
                    .sha256 = Some(sum.to_string());
            }
            "link" => {
                let (name, target) = line.split_once('|').expect("link line");
                tree.get_mut(&rel(name)).expect("link was listed").link = Some(target.to_string());
            }
            _ => panic!("output outside a section: {line:?}"),
        }
    }
    assert!(ended, "listing is incomplete:\n{out}");
    tree
}

/// Reads every xattr below `root` (without following symlinks) with getfattr.
fn xattrs_below(root: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = Command::new("getfattr")
        .args([
            "--recursive",
            "--physical",
            "--no-dereference",
            "--dump",
            "--match=-",
            "--encoding=hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .expect("run getfattr (apt install attr)");
    assert!(
        out.status.success(),
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = root.to_str().unwrap();
    let mut all = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            let p = p.strip_prefix(root).expect("path below the mount");
            current = Some(rel(p));
        } else if let Some((name, value)) = line.split_once('=') {
            let path = current.clone().expect("attribute before a file line");
            let value = value.trim_start_matches("0x").to_string();
            all.entry(path)
                .or_insert_with(BTreeMap::new)
                .insert(name.to_string(), value);
        } else if !line.is_empty() {
            // An attribute with an empty value is printed without `=`.
            let path = current.clone().expect("attribute before a file line");
            all.entry(path)
                .or_insert_with(BTreeMap::new)
                .insert(line.to_string(), String::new());
        }
    }
    all
}

/// Pulls `image`, lists its tree from inside a container, and adds the
/// xattrs of the image mounted by containerd.
fn container_tree(ctrd: &Containerd, image: &str) -> Tree {
    ctrd.pull(image);
    let out = ctrd.run(image, &["/bin/sh", "-c", LIST_SCRIPT]);
    let mut tree = parse_listing(&out);
    let mount = ctrd.mount_image(image);
    for (path, attrs) in xattrs_below(mount.path()) {
        if let Some(node) = tree.get_mut(&path) {
            node.xattrs = attrs;
        }
    }
    tree
}

/// Differences between two trees, one line each (empty if equal).
fn diff_trees(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Vec<String> {
    let mut d = vec![];
    for (p, n) in a {
        match b.get(p) {
            None => d.push(format!("/{p}: only in {a_name}: {n:?}")),
            Some(m) if m != n => d.push(format!("/{p}:\n  {a_name}: {n:?}\n  {b_name}: {m:?}")),
            _ => {}
        }
    }
    for (p, m) in b {
        if !a.contains_key(p) {
            d.push(format!("/{p}: only in {b_name}: {m:?}"));
        }
    }
    d
}

fn assert_same(a_name: &str, a: &Tree, b_name: &str, b: &Tree) {
    let d = diff_trees(a_name, a, b_name, b);
    assert!(
        d.is_empty(),
        "{} differences between {a_name} and {b_name}:\n{}",
        d.len(),
        d.join("\n")
    );
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks that the original image's tree is what the layers describe, so
/// that equality with the converted images means something.
fn check_original(t: &Tree) {
    let get = |p: &str| {
        t.get(p)
            .unwrap_or_else(|| panic!("/{p} missing from the original image"))
    };
    for gone in [
        "data/delete-me",
        "srv/gone",
        "srv/gone/a",
        "opaque/hidden-1",
        "opaque/hidden-dir",
        "data/dir-to-file/child",
    ] {
        assert!(
            !t.contains_key(gone),
            "/{gone} should be deleted by the upper layer"
        );
    }
    assert!(
        t.contains_key("srv/kept")
            && t.contains_key("opaque/visible")
            && t.contains_key("new/file")
    );
    let motd = get("etc/motd");
    assert_eq!(
        (motd.mode, motd.sha256.clone()),
        (0o600, Some(sha_hex(b"replaced by the upper layer\n")))
    );
    assert_eq!(get("opaque").mode, 0o700);
    assert_eq!(get("data/kind-change").link.as_deref(), Some("big.bin"));
    assert_eq!(get("data/dir-to-file").kind, 'f');
    assert_eq!(get("data/hardlink").nlink, 2);
    assert_eq!(
        get("data/hardlink").sha256,
        get("data/hardlink-target").sha256
    );
    assert_eq!(get("data/empty").sha256, Some(sha_hex(b"")));
    assert_eq!(get("data/big.bin").size, 3 << 20);
    assert_eq!(
        (get("data/private").uid, get("data/private").mode),
        (1000, 0o600)
    );
    assert_eq!(get("data/setuid").mode, 0o4755);
    assert_eq!(get("data/setgid-dir").mode, 0o2775);
    assert_eq!(
        (get("data/null-device").kind, get("data/null-device").rdev),
        ('c', (1, 3))
    );
    assert_eq!(
        (get("data/loop-device").kind, get("data/loop-device").rdev),
        ('b', (7, 0))
    );
    assert_eq!(get("data/fifo").kind, 'p');
    assert!(get("data/long-link").link.as_ref().unwrap().len() > 255);
    assert!(
        t.keys().any(|p| p.len() > 255),
        "no path longer than 255 bytes"
    );
    assert_eq!(get("data/gnu-long-link").link, get("data/long-link").link);
    assert!(
        t.keys().any(|p| p.ends_with(&"g".repeat(90))),
        "GNU long name missing"
    );
    assert_eq!(
        get("data/xattrs").xattrs.get("user.starlight"),
        Some(&hex::encode("hello"))
    );
    assert_eq!(
        get("data/sub").xattrs.get("user.dir-attr"),
        Some(&hex::encode("on a directory"))
    );
    assert_eq!(
        get("data/capable").xattrs.get("security.capability"),
        Some(&hex::encode(capability_xattr()))
    );
}

// ---------------------------------------------------------------------------
// The merged table of contents against the container's tree.

/// The tree a merged table of contents describes, in [`Node`] terms.
/// Directory sizes, link counts and directory mtimes are not compared.
fn toc_tree(toc: &[TocEntry], container: &Tree) -> Tree {
    let mut t = Tree::new();
    for te in toc {
        let e = &te.entry;
        let kind = match e.kind {
            EntryKind::Dir => 'd',
            EntryKind::File | EntryKind::Hardlink => 'f',
            EntryKind::Symlink => 'l',
            EntryKind::CharDev => 'c',
            EntryKind::BlockDev => 'b',
            EntryKind::Fifo => 'p',
        };
        let sha256 = (kind == 'f').then(|| e.sha256_hex().unwrap_or_else(|| sha_hex(b"")));
        let size = match e.kind {
            EntryKind::Dir => 0,
            EntryKind::Symlink => e.link.as_ref().map_or(0, |l| l.len() as u64),
            _ => e.size,
        };
        let node = Node {
            kind,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size,
            // Link counts are not in the table of contents: take them from
            // the container (hard links are checked through their content).
            nlink: container.get(&e.path).map_or(0, |n| n.nlink),
            mtime: if kind == 'd' { 0 } else { e.mtime },
            rdev: if matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev) {
                (e.devmajor, e.devminor)
            } else {
                (0, 0)
            },
            sha256,
            link: if e.kind == EntryKind::Symlink {
                e.link.clone()
            } else {
                None
            },
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), hex::encode(v)))
                .collect(),
        };
        t.insert(e.path.clone(), node);
    }
    t
}

/// Every file's content, decompressed from its indexed byte range of the
/// blob alone, has the indexed size and SHA-256.
fn check_byte_ranges(registry: &TestRegistry, record: &ImageRecord, toc: &[TocEntry]) -> usize {
    let mut blobs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut checked = 0;
    for te in toc {
        let Some(c) = te.entry.content else { continue };
        let layer = &record.layers[te.layer as usize];
        let blob = blobs
            .entry(te.layer)
            .or_insert_with(|| std::fs::read(registry.blob_path(&layer.digest)).unwrap());
        let member = &blob[c.offset as usize..(c.offset + c.compressed_len) as usize];
        let data = match layer.compression {
            Compression::Gzip => {
                let mut out = vec![];
                flate2::read::GzDecoder::new(member)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(member).unwrap(),
            Compression::None => member.to_vec(),
        };
        assert_eq!(
            data.len() as u64,
            te.entry.size,
            "size of /{}",
            te.entry.path
        );
        assert_eq!(
            Sha256::digest(&data).as_slice(),
            c.sha256,
            "content of /{}",
            te.entry.path
        );
        checked += 1;
    }
    checked
}

fn index_and_compare(
    registry: &TestRegistry,
    image: &str,
    compression: Compression,
    container: &Tree,
) {
    let db_dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let toc = rt.block_on(async {
        let client = RegistryClient::new(true);
        let db = Db::open(db_dir.path()).unwrap();
        starlight_proxy::index::index_image(&client, &db, image, None)
            .await
            .unwrap_or_else(|e| panic!("indexing {image}: {e}\nregistry log:\n{}", registry.log()));
        let record = db
            .image_by_reference(image)
            .unwrap()
            .unwrap_or_else(|| panic!("{image} not in the database after indexing"));
        let toc = db.merged_toc(&record.manifest_digest).unwrap();
        (record, toc)
    });
    let (record, toc) = toc;
    assert!(
        record.layers.iter().all(|l| l.compression == compression),
        "{image}: layers {:?}, expected {compression:?}",
        record.layers
    );
    let checked = check_byte_ranges(registry, &record, &toc);
    let non_empty = container
        .values()
        .filter(|n| n.kind == 'f' && n.size > 0)
        .count();
    assert_eq!(
        checked, non_empty,
        "files whose content was checked by byte range"
    );
    assert!(
        toc.iter().all(|te| te.entry.whiteout().is_none()),
        "whiteout markers in the merged table of contents"
    );
    let mut from_toc = toc_tree(&toc, container);
    let mut seen = container.clone();
    // The root's metadata comes from the snapshot directory, not the layers.
    from_toc.remove("");
    seen.remove("");
    assert_same("merged TOC", &from_toc, "container", &seen);
}

// ---------------------------------------------------------------------------

fn starlight(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_starlight"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run starlight");
    eprintln!(
        "starlight {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "starlight {} failed: {}",
        args.join(" "),
        out.status
    );
}

#[test]
#[ignore = "needs root: containerd and runc"]
fn converted_images_run_in_containerd_like_the_original() {
    assert!(
        is_root(),
        "needs root to run containerd (an ignored test: run as root with --include-ignored, e.g. scripts/test.sh)"
    );
    let started = std::time::Instant::now();
    let registry = TestRegistry::start();
    let mut layout = OciLayout::new();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &[Layer::gzip(&layer1()), Layer::gzip(&layer2())],
        &["/bin/sh"],
    );
    layout.tag("orig", &desc);
    let original = format!("{}/e2e/every-kind:orig", registry.addr);
    let gzip = format!("{}/e2e/every-kind:gzip", registry.addr);
    let zstd = format!("{}/e2e/every-kind:zstd", registry.addr);
    layout.push("orig", &original, false);

    starlight(&["convert", "--plain-http", &original, &gzip]);
    starlight(&[
        "convert",
        "--plain-http",
        "--compression",
        "zstd",
        &original,
        &zstd,
    ]);

    let ctrd = Containerd::start();
    let orig_tree = container_tree(&ctrd, &original);
    check_original(&orig_tree);
    let gzip_tree = container_tree(&ctrd, &gzip);
    assert_same("original", &orig_tree, "gzip", &gzip_tree);
    let zstd_tree = container_tree(&ctrd, &zstd);
    assert_same("original", &orig_tree, "zstd", &zstd_tree);

    index_and_compare(&registry, &gzip, Compression::Gzip, &gzip_tree);
    index_and_compare(&registry, &zstd, Compression::Zstd, &zstd_tree);
    eprintln!(
        "{} paths identical in the original, gzip and zstd images and their tables of contents ({:.1}s)",
        orig_tree.len(),
        started.elapsed().as_secs_f64()
    );
}
