//! Round-trip and bad-input tests of the whole format.

use std::collections::HashMap;
use std::io::Cursor;

use sha2::{Digest, Sha256};

use super::testkit::{compress, data, decompress, entry, every_kind, read_with_tar_crate, SrcTar};
use super::*;

const SOURCES: [Compression; 3] = [Compression::Gzip, Compression::Zstd, Compression::None];
const TARGETS: [Compression; 2] = [Compression::Gzip, Compression::Zstd];

fn convert(src: &[u8], compression: Compression) -> Result<(Vec<u8>, ConvertedLayer), FormatError> {
    let mut out = Vec::new();
    let opts = ConvertOptions {
        compression,
        level: None,
    };
    let converted = convert_layer(src, &mut out, &opts)?;
    Ok((out, converted))
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What `scan_layer` should report: last entry per path, hard links resolved.
fn scan_view(expected: &[(Entry, Vec<u8>)]) -> Vec<(Entry, Vec<u8>)> {
    let mut out: Vec<Option<(Entry, Vec<u8>)>> = Vec::new();
    let mut by_path: HashMap<String, usize> = HashMap::new();
    for (e, c) in expected {
        let mut e = e.clone();
        let mut c = c.clone();
        if e.kind == EntryKind::Hardlink {
            // A hard link shows its target's inode: metadata and content.
            let (t, tc) = out[by_path[e.link.as_ref().unwrap()]].clone().unwrap();
            if matches!(t.kind, EntryKind::File | EntryKind::Hardlink) {
                e = Entry {
                    path: e.path,
                    kind: EntryKind::Hardlink,
                    link: if t.kind == EntryKind::Hardlink {
                        t.link.clone()
                    } else {
                        e.link
                    },
                    ..t
                };
            } else {
                e = Entry { path: e.path, ..t };
            }
            c = tc;
        }
        if let Some(old) = by_path.insert(e.path.clone(), out.len()) {
            out[old] = None;
        }
        out.push(Some((e, c)));
    }
    out.into_iter().flatten().collect()
}

/// Every check of a converted blob against the entries it should hold.
fn check_converted(
    blob: &[u8],
    conv: &ConvertedLayer,
    compression: Compression,
    expected: &[(Entry, Vec<u8>)],
) {
    // (d) digest, size, diff_id.
    let tar_bytes = decompress(compression, blob);
    assert_eq!(conv.digest, sha(blob));
    assert_eq!(conv.size, blob.len() as u64);
    assert_eq!(conv.diff_id, sha(&tar_bytes));
    assert_eq!(conv.entries, expected.len() as u64);
    assert_eq!(
        conv.files,
        expected
            .iter()
            .filter(|(e, _)| e.kind == EntryKind::File && e.size > 0)
            .count() as u64
    );
    // (a) an independent reader sees the same entries.
    let back = read_with_tar_crate(&tar_bytes);
    assert_eq!(back.len(), expected.len());
    for ((got, got_content), (want, want_content)) in back.iter().zip(expected) {
        assert_eq!(got, want);
        assert!(
            got_content == want_content,
            "{}: content differs",
            want.path
        );
    }
    // (c) the index: content by byte range alone.
    let scanned = scan_layer(blob).unwrap();
    assert_eq!(scanned.compression, compression);
    assert_eq!(scanned.digest, conv.digest);
    assert_eq!(scanned.size, conv.size);
    assert_eq!(scanned.diff_id, conv.diff_id);
    let want = scan_view(expected);
    assert_eq!(scanned.entries.len(), want.len());
    for (got, (want, content)) in scanned.entries.iter().zip(&want) {
        let mut got_meta = got.clone();
        got_meta.content = None;
        assert_eq!(&got_meta, want);
        match got.content {
            None => assert!(content.is_empty(), "{}: no content", want.path),
            Some(c) => {
                assert_eq!(c.sha256, <[u8; 32]>::from(Sha256::digest(content)));
                let range = &blob[c.offset as usize..(c.offset + c.compressed_len) as usize];
                let plain = decompress_member(compression, range, got.size).unwrap();
                assert!(plain == *content, "{}: member content differs", got.path);
                let mut out = Vec::new();
                extract_content(compression, &blob[c.offset as usize..], got, &mut out).unwrap();
                assert!(out == *content);
            }
        }
    }
}

#[test]
fn every_entry_kind_round_trips_from_every_source() {
    let (tar_bytes, expected) = every_kind();
    for target in TARGETS {
        let mut outputs = Vec::new();
        for source in SOURCES {
            let src = compress(source, &tar_bytes);
            let (blob, conv) = convert(&src, target).unwrap();
            assert_eq!(conv.source_size, src.len() as u64);
            assert_eq!(conv.source_diff_id, sha(&tar_bytes));
            check_converted(&blob, &conv, target, &expected);
            outputs.push(blob);
        }
        // (e) deterministic, whatever the source compression.
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        let (again, _) = convert(&compress(Compression::Gzip, &tar_bytes), target).unwrap();
        assert!(again == outputs[0]);
        // Converting a converted layer changes nothing.
        let (twice, _) = convert(&outputs[0], target).unwrap();
        assert!(twice == outputs[0]);
    }
}

#[test]
fn content_members_hold_exactly_the_content() {
    let (tar_bytes, _) = every_kind();
    let (blob, _) = convert(&tar_bytes, Compression::Gzip).unwrap();
    let scanned = scan_layer(&blob[..]).unwrap();
    // Content members never overlap and all lie inside the blob.
    let mut ranges: Vec<(u64, u64)> = scanned
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| e.content.map(|c| (c.offset, c.offset + c.compressed_len)))
        .collect();
    ranges.sort();
    assert!(
        ranges.windows(2).all(|w| w[0].1 < w[1].0),
        "header members sit between contents"
    );
    assert!(ranges.last().unwrap().1 < blob.len() as u64);
    // Each member is a complete gzip member: plain gzip decodes it alone.
    let big = scanned
        .entries
        .iter()
        .find(|e| e.path == "big.bin")
        .unwrap();
    let c = big.content.unwrap();
    let plain = decompress(
        Compression::Gzip,
        &blob[c.offset as usize..(c.offset + c.compressed_len) as usize],
    );
    assert_eq!(plain, data(super::testkit::BIG, 3));
}

#[test]
fn five_mib_file_round_trips() {
    let mut t = SrcTar::default();
    t.add(entry("small", EntryKind::File), b"before");
    t.add(entry("five", EntryKind::File), &data(5 << 20, 9));
    t.add(entry("after", EntryKind::File), b"after");
    let (tar_bytes, expected) = t.finish();
    for target in TARGETS {
        let (blob, conv) = convert(&tar_bytes, target).unwrap();
        check_converted(&blob, &conv, target, &expected);
    }
}

fn system_tar_lists(blob: &[u8], compression: Compression) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer");
    std::fs::write(&file, blob).unwrap();
    let mut listing = Vec::new();
    for verbose in [true, false] {
        let mut cmd = std::process::Command::new("tar");
        cmd.arg("--quoting-style=literal");
        cmd.arg(if compression == Compression::Gzip {
            "-z"
        } else {
            "--zstd"
        });
        cmd.arg(if verbose { "-tvf" } else { "-tf" }).arg(&file);
        let out = match cmd.output() {
            Ok(out) => out,
            Err(_) => return None,
        };
        if compression == Compression::Zstd
            && String::from_utf8_lossy(&out.stderr).contains("zstd: Cannot exec")
        {
            return None;
        }
        assert!(
            out.status.success(),
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "tar complained: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !verbose {
            listing = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
        }
    }
    Some(listing)
}

#[test]
fn system_tar_reads_converted_layers() {
    let (tar_bytes, expected) = every_kind();
    for target in TARGETS {
        let (blob, _) = convert(&tar_bytes, target).unwrap();
        let Some(listing) = system_tar_lists(&blob, target) else {
            eprintln!("system tar (or zstd) not available: skipped");
            continue;
        };
        let names: Vec<String> = listing
            .iter()
            .map(|l| {
                let p = l.trim_end_matches('/');
                if p == "." {
                    String::new()
                } else {
                    p.to_string()
                }
            })
            .collect();
        let want: Vec<String> = expected.iter().map(|(e, _)| e.path.clone()).collect();
        assert_eq!(names, want);
    }
}

#[test]
fn empty_layer_converts() {
    let src = vec![0u8; 1024];
    for target in TARGETS {
        let (blob, conv) = convert(&src, target).unwrap();
        assert_eq!(conv.entries, 0);
        check_converted(&blob, &conv, target, &[]);
        assert_eq!(decompress(target, &blob), vec![0u8; 1024]);
    }
}

#[test]
fn tar_crate_builder_layers_convert() {
    // A layer as a typical image builder writes it (tar crate Builder, GNU headers).
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    b.append_data(&mut h, "usr/", &[][..]).unwrap();
    for i in 0..50u32 {
        let content = data(i as usize * 97, i);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        h.set_uid(1);
        h.set_gid(2);
        h.set_mtime(3);
        b.append_data(&mut h, format!("usr/file{i}"), &content[..])
            .unwrap();
    }
    let long = format!("usr/{}", "n".repeat(200));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_size(3);
    h.set_uid(1);
    h.set_gid(2);
    h.set_mtime(3);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();
    let original = read_with_tar_crate(&tar_bytes);
    for target in TARGETS {
        let (blob, conv) = convert(&compress(Compression::Gzip, &tar_bytes), target).unwrap();
        check_converted(&blob, &conv, target, &original);
    }
}

// ---- bad input ----

fn one_entry_layer(name: &[u8], kind: EntryKind, link: &[u8]) -> Vec<u8> {
    let mut t = SrcTar::default();
    t.add(entry("a", EntryKind::Dir), b"");
    t.add(entry("a/t", EntryKind::File), b"target");
    let e = entry("x", kind);
    let flag = match kind {
        EntryKind::Symlink => b'2',
        EntryKind::Hardlink => b'1',
        _ => b'0',
    };
    let h = SrcTar::header(false, name, flag, 0, &e, link);
    t.raw(h, b"");
    t.finish().0
}

fn convert_err(src: &[u8]) -> FormatError {
    convert(src, Compression::Gzip).expect_err("conversion should fail")
}

#[test]
fn unsafe_paths_and_links_are_rejected() {
    let cases: [(&[u8], EntryKind, &[u8], &str); 8] = [
        (b"../x", EntryKind::File, b"", "`..`"),
        (b"a/../../x", EntryKind::File, b"", "`..`"),
        (b"/abs", EntryKind::File, b"", "absolute"),
        (b"a/\xff", EntryKind::File, b"", "UTF-8"),
        (b"a/b", EntryKind::Symlink, b"../../x", "climbs"),
        (
            b"a/h",
            EntryKind::Hardlink,
            b"a/missing",
            "not an earlier entry",
        ),
        (b"a/h", EntryKind::Hardlink, b"a", "directory"),
        (b"a/h", EntryKind::Hardlink, b"../etc/shadow", "`..`"),
    ];
    for (name, kind, link, why) in cases {
        let src = one_entry_layer(name, kind, link);
        for source in [Compression::None, Compression::Gzip] {
            let err = convert_err(&compress(source, &src));
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    FormatError::BadPath { .. } | FormatError::BadLink { .. }
                ),
                "{msg}"
            );
            assert!(msg.contains(why), "{name:?}: {msg}");
        }
    }
    // Absolute symlink targets and in-tree relative ones are fine.
    for link in [&b"/etc/passwd"[..], b"../a/t", b"t"] {
        let src = one_entry_layer(b"a/s", EntryKind::Symlink, link);
        convert(&src, Compression::Gzip).unwrap();
    }
}

#[test]
fn absurd_sizes_are_rejected() {
    // A file claiming 2 TiB via PAX.
    let mut t = SrcTar::default();
    t.pax(b'x', &[("size", b"2199023255552")]);
    let h = SrcTar::header(
        false,
        b"huge",
        b'0',
        0,
        &entry("huge", EntryKind::File),
        b"",
    );
    t.raw(h, b"");
    let err = convert_err(&t.finish().0);
    assert!(
        matches!(err, FormatError::Limit { ref path, .. } if path == "huge"),
        "{err}"
    );
    // A PAX header claiming 2 MiB.
    let mut t = SrcTar::default();
    let h = SrcTar::header(
        false,
        b"pax",
        b'x',
        2 << 20,
        &entry("", EntryKind::File),
        b"",
    );
    t.raw(h, b"");
    let err = convert_err(&t.finish().0);
    assert!(
        matches!(err, FormatError::Limit { ref what, .. } if what.contains("PAX header")),
        "{err}"
    );
    // A GNU long name claiming 1 MiB.
    let mut t = SrcTar::default();
    let h = SrcTar::header(
        true,
        b"././@LongLink",
        b'L',
        1 << 20,
        &entry("", EntryKind::File),
        b"",
    );
    t.raw(h, b"");
    assert!(matches!(
        convert_err(&t.finish().0),
        FormatError::Limit { .. }
    ));
    // An xattr value of 100 KiB.
    let mut t = SrcTar::default();
    let big = vec![7u8; 100 << 10];
    t.pax(b'x', &[("SCHILY.xattr.user.big", &big)]);
    t.add(entry("f", EntryKind::File), b"x");
    assert!(matches!(
        convert_err(&t.finish().0),
        FormatError::Limit { .. }
    ));
}

#[test]
fn malformed_tar_is_rejected() {
    let (tar_bytes, _) = every_kind();
    // Bad header checksum.
    let mut bad = tar_bytes.clone();
    bad[512 * 3 + 10] ^= 0x55;
    assert!(matches!(convert_err(&bad), FormatError::BadTar { .. }));
    // Trailing garbage after the end-of-archive marker.
    let mut trailing = tar_bytes.clone();
    trailing.extend_from_slice(&[0u8; 512]);
    trailing.extend_from_slice(b"garbage");
    let err = convert_err(&trailing);
    assert!(matches!(err, FormatError::TrailingData { .. }), "{err}");
    // Zero padding after the end is fine (tar records).
    let mut padded = tar_bytes.clone();
    padded.extend_from_slice(&[0u8; 9216]);
    convert(&padded, Compression::Gzip).unwrap();
    // Truncated tar (no end marker; cut inside data).
    let err = convert_err(&tar_bytes[..tar_bytes.len() - 1024]);
    assert!(matches!(err, FormatError::Truncated(_)), "{err}");
    let err = convert_err(&tar_bytes[..tar_bytes.len() / 2 + 7]);
    assert!(matches!(err, FormatError::Truncated(_)), "{err}");
    // Unsupported entry type.
    let mut t = SrcTar::default();
    let h = SrcTar::header(false, b"vol", b'M', 0, &entry("vol", EntryKind::File), b"");
    t.raw(h, b"");
    assert!(matches!(
        convert_err(&t.finish().0),
        FormatError::Unsupported { .. }
    ));
    // Compression None is not a target.
    let mut out = Vec::new();
    let opts = ConvertOptions {
        compression: Compression::None,
        level: None,
    };
    assert!(matches!(
        convert_layer(&tar_bytes[..], &mut out, &opts),
        Err(FormatError::BadOptions(_))
    ));
}

#[test]
fn damaged_blobs_are_rejected() {
    let (tar_bytes, _) = every_kind();
    for target in TARGETS {
        let (blob, _) = convert(&tar_bytes, target).unwrap();
        let scanned = scan_layer(&blob[..]).unwrap();
        let big = scanned
            .entries
            .iter()
            .find(|e| e.path == "big.bin")
            .unwrap();
        let c = big.content.unwrap();
        // Truncated anywhere: inside a content member, inside the last member.
        for cut in [c.offset + c.compressed_len / 2, blob.len() as u64 - 5, 5] {
            let err = scan_layer(&blob[..cut as usize]).expect_err("truncated blob");
            assert!(
                matches!(err, FormatError::Truncated(_)),
                "{target:?} cut {cut}: {err}"
            );
            let err = convert(&blob[..cut as usize], target).expect_err("truncated source");
            assert!(
                matches!(err, FormatError::Truncated(_)),
                "{target:?} cut {cut}: {err}"
            );
        }
        // Flipped bytes inside compressed data.
        let mut flipped = blob.clone();
        let at = (c.offset + c.compressed_len / 2) as usize;
        flipped[at] ^= 0xff;
        flipped[at + 1] ^= 0x5a;
        let err = scan_layer(&flipped[..]).expect_err("corrupt blob");
        assert!(matches!(err, FormatError::Corrupt(_)), "{target:?}: {err}");
        let member = &flipped[c.offset as usize..(c.offset + c.compressed_len) as usize];
        let err = decompress_member(target, member, big.size).expect_err("corrupt member");
        assert!(
            matches!(
                err,
                FormatError::Corrupt(_) | FormatError::SizeMismatch { .. }
            ),
            "{err}"
        );
        // Garbage after the last member.
        let mut trailing = blob.clone();
        trailing.extend_from_slice(b"not a member at all");
        let err = scan_layer(&trailing[..]).expect_err("trailing garbage");
        assert!(
            matches!(err, FormatError::Corrupt(_) | FormatError::Truncated(_)),
            "{target:?}: {err}"
        );
        // A member taken with a wrong size or checked against a wrong digest.
        let member = &blob[c.offset as usize..(c.offset + c.compressed_len) as usize];
        let err = decompress_member(target, member, big.size - 1).expect_err("too long");
        assert!(matches!(err, FormatError::SizeMismatch { .. }));
        let err = decompress_member(target, &blob[c.offset as usize..], big.size)
            .expect_err("extra bytes");
        assert!(matches!(err, FormatError::Corrupt(_)));
        let mut wrong = big.clone();
        wrong.content.as_mut().unwrap().sha256[0] ^= 1;
        let err = extract_content(target, member, &wrong, std::io::sink()).expect_err("digest");
        assert!(matches!(err, FormatError::DigestMismatch { ref path, .. } if path == "big.bin"));
        let mut short = big.clone();
        short.size -= 10;
        let err = extract_content(target, member, &short, std::io::sink()).expect_err("size");
        assert!(matches!(err, FormatError::SizeMismatch { .. }));
    }
}

#[test]
fn plain_layers_are_not_starlight() {
    let (tar_bytes, _) = every_kind();
    for source in [Compression::Gzip, Compression::Zstd] {
        let err = scan_layer(&compress(source, &tar_bytes)[..]).expect_err("plain layer");
        match err {
            FormatError::NotStarlight { path, .. } => assert_eq!(path, "etc/passwd"),
            other => panic!("{other}"),
        }
    }
    let err = scan_layer(&tar_bytes[..]).expect_err("uncompressed");
    assert!(matches!(err, FormatError::NotStarlight { .. }));
    // A layer whose content shares a member with the next header.
    let mut t = SrcTar::default();
    t.add(entry("f", EntryKind::File), b"hello");
    let (tar_bytes, _) = t.finish();
    let mut enc = super::codec::MemberEncoder::new(Compression::Gzip, None).unwrap();
    let mut blob = Vec::new();
    enc.begin(&mut blob, None).unwrap();
    enc.write(&tar_bytes[..512], &mut blob).unwrap();
    enc.end(&mut blob).unwrap();
    enc.begin(&mut blob, None).unwrap();
    enc.write(&tar_bytes[512..], &mut blob).unwrap();
    enc.end(&mut blob).unwrap();
    let err = scan_layer(&blob[..]).expect_err("content and padding in one member");
    assert!(
        matches!(err, FormatError::NotStarlight { ref path, .. } if path == "f"),
        "{err}"
    );
}

#[test]
fn sparse_file_is_expanded() {
    let (tar_bytes, expected) = every_kind();
    let (blob, _) = convert(&tar_bytes, Compression::Zstd).unwrap();
    let back = read_with_tar_crate(&decompress(Compression::Zstd, &blob));
    let (e, content) = back.iter().find(|(e, _)| e.path == "sparse.img").unwrap();
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(content.len(), 1 << 20);
    assert_eq!(
        content,
        &expected
            .iter()
            .find(|(e, _)| e.path == "sparse.img")
            .unwrap()
            .1
    );
    assert!(content[..4096].iter().all(|b| *b == 0));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Node {
        Dir,
        File(usize, u32),
        Symlink(u8),
        Hardlink(u8),
        Fifo,
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            Just(Node::Dir),
            (0usize..3000, any::<u32>()).prop_map(|(n, s)| Node::File(n, s)),
            (0usize..1).prop_map(|_| Node::File(0, 0)),
            any::<u8>().prop_map(Node::Symlink),
            any::<u8>().prop_map(Node::Hardlink),
            Just(Node::Fifo),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_trees_round_trip(
            nodes in proptest::collection::vec((node(), 0u8..4, any::<u16>(), any::<bool>()), 1..40),
            metas in proptest::collection::vec(
                (0u64..4_000_000, proptest::collection::vec(any::<u8>().prop_filter("newline", |b| *b != b'\n'), 0..40)),
                40,
            ),
            zstd in any::<bool>(),
        ) {
            let mut t = SrcTar::default();
            let mut dirs = vec![String::new()];
            let mut files: Vec<String> = Vec::new();
            for (i, (node, depth, mode, long)) in nodes.into_iter().enumerate() {
                let parent = dirs[depth as usize % dirs.len()].clone();
                let base = if long { format!("n{i}-{}", "x".repeat(120)) } else { format!("n{i}") };
                let path = if parent.is_empty() { base } else { format!("{parent}/{base}") };
                let mut e = entry(&path, EntryKind::File);
                e.mode = u32::from(mode) & 0o7777;
                e.mtime = i64::from(mode) * 1000;
                let (uid, xattr) = &metas[i];
                e.uid = *uid;
                if !xattr.is_empty() {
                    e.xattrs = vec![("security.capability".into(), xattr.clone()), ("user.x".into(), vec![])];
                }
                let content = match node {
                    Node::Dir => {
                        e.kind = EntryKind::Dir;
                        dirs.push(path.clone());
                        Vec::new()
                    }
                    Node::File(n, seed) => {
                        files.push(path.clone());
                        data(n, seed)
                    }
                    Node::Symlink(k) => {
                        e.kind = EntryKind::Symlink;
                        e.link = Some(format!("/target{k}"));
                        Vec::new()
                    }
                    Node::Hardlink(k) if !files.is_empty() => {
                        e.kind = EntryKind::Hardlink;
                        e.link = Some(files[k as usize % files.len()].clone());
                        Vec::new()
                    }
                    Node::Hardlink(_) | Node::Fifo => {
                        e.kind = EntryKind::Fifo;
                        Vec::new()
                    }
                };
                t.add(e, &content);
            }
            let (tar_bytes, expected) = t.finish();
            let target = if zstd { Compression::Zstd } else { Compression::Gzip };
            let (blob, conv) = convert(&compress(Compression::Gzip, &tar_bytes), target).unwrap();
            check_converted(&blob, &conv, target, &expected);
        }
    }
}

/// Overhead on a real tree: `STARLIGHT_MEASURE=/path/layer.tar.gz cargo test
/// -p starlight-proxy --release format::tests::measure_overhead -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: needs STARLIGHT_MEASURE, prints the overhead"]
fn measure_overhead() {
    let Ok(path) = std::env::var("STARLIGHT_MEASURE") else {
        eprintln!("set STARLIGHT_MEASURE to a .tar.gz layer");
        return;
    };
    let src = std::fs::read(&path).unwrap();
    let levels: Vec<(Compression, i32)> = match std::env::var("STARLIGHT_LEVELS") {
        Ok(s) => s
            .split(',')
            .map(|l| {
                let (c, n) = l.split_once(':').unwrap();
                (
                    if c == "gzip" {
                        Compression::Gzip
                    } else {
                        Compression::Zstd
                    },
                    n.parse().unwrap(),
                )
            })
            .collect(),
        Err(_) => vec![
            (Compression::Gzip, DEFAULT_GZIP_LEVEL),
            (Compression::Zstd, DEFAULT_ZSTD_LEVEL),
        ],
    };
    for (compression, level) in levels {
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        let conv = convert_layer(
            &src[..],
            &mut out,
            &ConvertOptions {
                compression,
                level: Some(level),
            },
        )
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let tar_len = decompress(compression, &out).len() as f64;
        println!(
            "{compression:?} level {level}: original {} B, converted {} B, ratio {:.4}, {} files, {:.1} MB/s (uncompressed)",
            src.len(),
            conv.size,
            conv.size as f64 / src.len() as f64,
            conv.files,
            tar_len / secs / 1e6
        );
        scan_layer(Cursor::new(&out)).unwrap();
    }
}

/// Sparse files as GNU tar writes them: old GNU ('S') and PAX 0.1 and 1.0.
#[test]
fn gnu_tar_sparse_formats_are_expanded() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("holes.img");
    let mut f = std::fs::File::create(&file).unwrap();
    let chunk_a = data(5000, 21);
    let chunk_b = data(3000, 22);
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&chunk_a).unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(&chunk_b).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    let expected = std::fs::read(&file).unwrap();
    for args in [
        &["--format=gnu"][..],
        &["--format=posix", "--sparse-version=1.0"],
        &["--format=posix", "--sparse-version=0.1"],
    ] {
        let out_tar = dir.path().join("out.tar");
        let status = std::process::Command::new("tar")
            .args(["--sparse", "-cf"])
            .arg(&out_tar)
            .args(args)
            .arg("-C")
            .arg(dir.path())
            .arg("holes.img")
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("GNU tar not available: skipped");
            return;
        }
        let tar_bytes = std::fs::read(&out_tar).unwrap();
        if tar_bytes.len() as u64 >= 4 << 20 {
            eprintln!("the file system does not report holes: skipped");
            return;
        }
        let (blob, conv) = convert(&tar_bytes, Compression::Gzip).unwrap();
        let back = read_with_tar_crate(&decompress(Compression::Gzip, &blob));
        assert_eq!(back.len(), 1, "{args:?}");
        assert_eq!(back[0].0.path, "holes.img", "{args:?}");
        assert!(back[0].1 == expected, "{args:?}: content differs");
        assert_eq!(conv.files, 1);
    }
}

/// A reader that fails after `left` bytes, like a dropped connection.
struct Failing<'a> {
    data: &'a [u8],
    left: usize,
}

impl std::io::Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("connection reset"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn source_errors_stay_io_errors() {
    let (tar_bytes, _) = every_kind();
    for source in SOURCES {
        let src = compress(source, &tar_bytes);
        let failing = Failing {
            data: &src,
            left: src.len() / 2,
        };
        let err = convert_layer(failing, std::io::sink(), &ConvertOptions::default())
            .expect_err("read error");
        assert!(matches!(err, FormatError::Io(_)), "{source:?}: {err}");
    }
    let (blob, _) = convert(&tar_bytes, Compression::Zstd).unwrap();
    let failing = Failing {
        data: &blob,
        left: blob.len() / 2,
    };
    let err = scan_layer(failing).expect_err("read error");
    assert!(matches!(err, FormatError::Io(_)), "{err}");
}

/// A real tree of this machine, archived by GNU tar, converts to the same
/// entries (as the `tar` crate reads them on both sides).
#[test]
fn real_tree_from_gnu_tar_round_trips() {
    let root = std::path::Path::new("/usr/share/perl5");
    if !root.is_dir() {
        eprintln!("{} missing: skipped", root.display());
        return;
    }
    let out = std::process::Command::new("tar")
        .args(["--format=gnu", "-C", "/usr/share", "-cf", "-", "perl5"])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("GNU tar not available: skipped");
        return;
    };
    let source = read_with_tar_crate(&out.stdout);
    assert!(source.len() > 10);
    for target in TARGETS {
        let (blob, conv) = convert(&compress(Compression::Gzip, &out.stdout), target).unwrap();
        check_converted(&blob, &conv, target, &source);
    }
}
