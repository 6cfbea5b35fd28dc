//! End-to-end: layers with every entry kind, converted to the Starlight
//! format, pushed to a real `docker-registry`, indexed into RocksDB. Checks
//! the merged table of contents against hand-written expectations, fetches
//! every file's member by HTTP range request and decompresses it alone, and
//! checks that re-indexing is idempotent and that bad images write nothing.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::layout::{digest_of, Layer, OciLayout};
use common::registry::TestRegistry;
use sha2::{Digest, Sha256};
use starlight_proxy::db::{Db, TocEntry};
use starlight_proxy::format::{self, Compression, ConvertOptions, EntryKind};
use starlight_proxy::index::{index_image, IndexError};
use starlight_proxy::registry::RegistryClient;
use std::process::Command;

const MTIME: u64 = 1_700_000_000;

/// Builds an uncompressed tar with the tar crate.
struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    fn new() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
    fn header(
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        size: u64,
    ) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }
    fn append(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(
            Self::header(
                &format!("{path}/"),
                tar::EntryType::Directory,
                mode,
                0,
                0,
                0,
            ),
            &[],
        )
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.file_owned(path, mode, 0, 0, data)
    }
    fn file_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        self.append(
            Self::header(
                path,
                tar::EntryType::Regular,
                mode,
                uid,
                gid,
                data.len() as u64,
            ),
            data,
        )
    }
    fn file_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut pax = Vec::new();
        for (k, v) in xattrs {
            let key = format!("SCHILY.xattr.{k}");
            let body_len = 1 + key.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            pax.extend_from_slice(format!("{len} {key}=").as_bytes());
            pax.extend_from_slice(v);
            pax.push(b'\n');
        }
        let h = Self::header(
            "PaxHeaders/x",
            tar::EntryType::XHeader,
            0o644,
            0,
            0,
            pax.len() as u64,
        );
        self.append(h, &pax);
        self.file(path, mode, data)
    }
    /// A symlink (mode 0o777) or hard link (the target's mode, as tar
    /// writers record the shared inode's metadata).
    fn link(&mut self, path: &str, kind: tar::EntryType, target: &str) -> &mut Self {
        let mode = if kind == tar::EntryType::Link {
            0o755
        } else {
            0o777
        };
        let mut h = Self::header(path, kind, mode, 0, 0, 0);
        h.set_link_name(target).unwrap();
        self.append(h, &[])
    }
    fn fifo(&mut self, path: &str) -> &mut Self {
        self.append(
            Self::header(path, tar::EntryType::Fifo, 0o600, 0, 0, 0),
            &[],
        )
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// ~200 KiB of compressible but varied content.
fn big_content() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 16 + b'a')
        .collect()
}

/// A valid `security.capability` value (VFS_CAP_REVISION_2, effective,
/// permitted CAP_NET_RAW), so that a real unpacker can set it.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

const PASSWD_OLD: &[u8] = b"root:x:0:0::/root:/bin/sh\n";
const PASSWD_NEW: &[u8] = b"root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n";

fn layer0() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/passwd", 0o644, PASSWD_OLD)
        .file("etc/hosts", 0o644, b"127.0.0.1 localhost\n")
        .file_owned("etc/empty", 0o600, 1000, 1000, b"")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", 0o755, &big_content())
        .link("usr/bin/tool-link", tar::EntryType::Link, "usr/bin/tool")
        .link("usr/bin/sh", tar::EntryType::Symlink, "tool")
        .file_xattrs(
            "usr/bin/ping",
            0o4755,
            b"ping",
            &[("security.capability", &CAP_NET_RAW), ("user.note", b"hi")],
        )
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .dir("var/lib/old", 0o755)
        .file("var/lib/old/a", 0o644, b"a")
        .file("var/lib/old/b", 0o644, b"b")
        .dir("opt/gone", 0o755)
        .file("opt/gone/x", 0o644, b"x")
        .fifo("run/fifo")
        .dir("data", 0o700)
        .file("data/inner", 0o644, b"inner");
    t.finish()
}

fn layer1() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/.wh.hosts", 0o644, b"")
        .file("etc/passwd", 0o644, PASSWD_NEW)
        .file("usr/bin/tool", 0o755, b"new tool")
        .dir("var/lib/old", 0o750)
        .file("var/lib/old/.wh..wh..opq", 0o644, b"")
        .file("var/lib/old/c", 0o644, b"c")
        .file(".wh.opt", 0o644, b"")
        .file("data", 0o644, b"now a file")
        .dir("srv/www", 0o755)
        .file("srv/www/index.html", 0o644, b"<html>");
    t.finish()
}

fn layer2() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.file("etc/motd", 0o644, b"hello")
        .file("srv/www/index.html", 0o644, b"<html>v2")
        .file("srv/.wh.nothing", 0o644, b"");
    t.finish()
}

/// What one merged entry must look like.
struct Expect {
    path: &'static str,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    content: Option<Vec<u8>>,
    link: Option<&'static str>,
    layer: u32,
    synthesized: bool,
}

fn ex(path: &'static str, kind: EntryKind, mode: u32, layer: u32) -> Expect {
    Expect {
        path,
        kind,
        mode,
        uid: 0,
        content: None,
        link: None,
        layer,
        synthesized: false,
    }
}
fn exf(path: &'static str, mode: u32, content: &[u8], layer: u32) -> Expect {
    Expect {
        content: Some(content.to_vec()),
        ..ex(path, EntryKind::File, mode, layer)
    }
}
fn synth(path: &'static str, layer: u32) -> Expect {
    Expect {
        synthesized: true,
        ..ex(path, EntryKind::Dir, 0o755, layer)
    }
}

/// The tree a container sees after layers 0, 1, 2, sorted by path.
fn expected_tree() -> Vec<Expect> {
    vec![
        synth("", 0),
        exf("data", 0o644, b"now a file", 1),
        ex("etc", EntryKind::Dir, 0o755, 1),
        Expect {
            uid: 1000,
            ..exf("etc/empty", 0o600, b"", 0)
        },
        exf("etc/motd", 0o644, b"hello", 2),
        exf("etc/passwd", 0o644, PASSWD_NEW, 1),
        synth("run", 0),
        ex("run/fifo", EntryKind::Fifo, 0o600, 0),
        synth("srv", 1),
        ex("srv/www", EntryKind::Dir, 0o755, 1),
        exf("srv/www/index.html", 0o644, b"<html>v2", 2),
        ex("usr", EntryKind::Dir, 0o755, 0),
        ex("usr/bin", EntryKind::Dir, 0o755, 0),
        exf("usr/bin/ping", 0o4755, b"ping", 0),
        Expect {
            link: Some("tool"),
            ..ex("usr/bin/sh", EntryKind::Symlink, 0o777, 0)
        },
        exf("usr/bin/tool", 0o755, b"new tool", 1),
        Expect {
            link: Some("usr/bin/tool"),
            content: Some(big_content()),
            ..ex("usr/bin/tool-link", EntryKind::Hardlink, 0o755, 0)
        },
        ex("var", EntryKind::Dir, 0o755, 0),
        ex("var/lib", EntryKind::Dir, 0o755, 0),
        ex("var/lib/old", EntryKind::Dir, 0o750, 1),
        exf("var/lib/old/c", 0o644, b"c", 1),
    ]
}

fn check_tree(toc: &[TocEntry]) {
    let expected = expected_tree();
    let got: Vec<&str> = toc.iter().map(|t| t.entry.path.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e.path).collect();
    assert_eq!(got, want, "merged paths");
    for (t, x) in toc.iter().zip(&expected) {
        let e = &t.entry;
        let at = x.path;
        assert_eq!(e.kind, x.kind, "{at}: kind");
        assert_eq!(t.layer, x.layer, "{at}: layer");
        if e.kind != EntryKind::Symlink {
            assert_eq!(e.mode, x.mode, "{at}: mode");
        }
        assert_eq!((e.uid, e.gid), (x.uid, x.uid), "{at}: owner");
        assert_eq!(
            e.mtime,
            if x.synthesized { 0 } else { MTIME as i64 },
            "{at}: mtime"
        );
        assert_eq!(e.link.as_deref(), x.link, "{at}: link");
        match &x.content {
            Some(c) => {
                assert_eq!(e.size, c.len() as u64, "{at}: size");
                if c.is_empty() {
                    assert!(e.content.is_none(), "{at}: empty file has no member");
                } else {
                    assert_eq!(
                        e.sha256_hex(),
                        Some(hex::encode(Sha256::digest(c))),
                        "{at}: sha256"
                    );
                }
            }
            None => assert!(e.content.is_none() && e.size == 0, "{at}: no content"),
        }
        let xattrs: Vec<(&str, &[u8])> = e
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        if at == "usr/bin/ping" {
            assert_eq!(
                xattrs,
                vec![
                    ("security.capability", &CAP_NET_RAW[..]),
                    ("user.note", &b"hi"[..])
                ]
            );
        } else {
            assert!(xattrs.is_empty(), "{at}: xattrs");
        }
    }
}

/// Converts an uncompressed tar into a Starlight layer.
fn convert(tar: &[u8], compression: Compression) -> Layer {
    let mut blob = Vec::new();
    let opts = ConvertOptions {
        compression,
        level: None,
    };
    let converted = format::convert_layer(tar, &mut blob, &opts).unwrap();
    assert_eq!(converted.digest, digest_of(&blob));
    Layer {
        blob,
        media_type: match compression {
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            _ => "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        },
        diff_id: converted.diff_id,
    }
}

/// Pushes an image made of `layers` as `name:tag`; returns the reference.
fn push(reg: &TestRegistry, name: &str, tag: &str, layers: &[Layer]) -> String {
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", layers, &["/bin/sh"]);
    layout.tag(tag, &desc);
    let reference = format!("{}/{name}:{tag}", reg.addr);
    layout.push(tag, &reference, false);
    reference
}

/// Bytes `start..start+len` of a blob, by HTTP range request.
fn fetch_range(reg: &TestRegistry, name: &str, digest: &str, start: u64, len: u64) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSfL", "-r", &format!("{start}-{}", start + len - 1)])
        .arg(format!("http://{}/v2/{name}/blobs/{digest}", reg.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout.len() as u64,
        len,
        "range {start}+{len} of {digest}"
    );
    out.stdout
}

/// Every file's member, fetched alone by range and decompressed alone, has
/// the indexed size and SHA-256. Returns how many members were checked.
fn check_members(reg: &TestRegistry, db: &Db, name: &str, manifest: &str) -> usize {
    let image = db.image(manifest).unwrap().unwrap();
    let mut checked = 0;
    for t in db.merged_toc(manifest).unwrap() {
        let Some(c) = t.entry.content else { continue };
        let layer = &image.layers[t.layer as usize];
        let member = fetch_range(reg, name, &layer.digest, c.offset, c.compressed_len);
        let content = format::decompress_member(layer.compression, &member, t.entry.size).unwrap();
        assert_eq!(content.len() as u64, t.entry.size, "{}", t.entry.path);
        assert_eq!(
            Sha256::digest(&content)[..],
            c.sha256[..],
            "{}",
            t.entry.path
        );
        checked += 1;
    }
    checked
}

fn starlight_layers(compression: Compression) -> Vec<Layer> {
    [layer0(), layer1(), layer2()]
        .iter()
        .map(|t| convert(t, compression))
        .collect()
}

#[tokio::test]
async fn index_merge_ranges_and_idempotence() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("db")).unwrap();
    let client = RegistryClient::new(true);

    let gz = push(&reg, "app", "v1", &starlight_layers(Compression::Gzip));
    let report = index_image(&client, &db, &gz, None).await.unwrap();
    println!("{report}");
    assert_eq!((report.layers_indexed, report.layers_reused), (3, 0));
    assert_eq!(report.entries, expected_tree().len());
    let toc = db.merged_toc(&report.manifest_digest).unwrap();
    check_tree(&toc);
    let image = db.image_by_reference(&gz).unwrap().unwrap();
    assert_eq!(image.manifest_digest, report.manifest_digest);
    assert_eq!(image.references, vec![gz.clone()]);
    assert_eq!(image.platform, "linux/amd64");
    assert_eq!(image.layers.len(), 3);
    for l in &image.layers {
        let rec = db.layer(&l.digest).unwrap().unwrap();
        assert_eq!(
            rec.entries as usize,
            db.layer_entries(&l.digest).unwrap().len()
        );
        assert_eq!(rec.compression, Compression::Gzip);
    }
    // 7 distinct regular-file contents plus the hard link's.
    assert_eq!(check_members(&reg, &db, "app", &report.manifest_digest), 8);

    // Re-indexing changes nothing and downloads nothing.
    let before = db.dump().unwrap();
    let again = index_image(&client, &db, &gz, None).await.unwrap();
    assert_eq!((again.layers_indexed, again.layers_reused), (0, 3));
    assert_eq!(again.manifest_digest, report.manifest_digest);
    assert_eq!(db.dump().unwrap(), before);

    // The same image under another tag only adds the tag.
    let mut layout_layers = starlight_layers(Compression::Gzip);
    let latest = push(&reg, "app", "latest", &layout_layers);
    let r = index_image(&client, &db, &latest, None).await.unwrap();
    assert_eq!(
        (r.manifest_digest.as_str(), r.layers_reused),
        (report.manifest_digest.as_str(), 3)
    );
    let refs = db
        .image(&report.manifest_digest)
        .unwrap()
        .unwrap()
        .references;
    assert_eq!(refs, {
        let mut v = vec![gz.clone(), latest.clone()];
        v.sort();
        v
    });

    // An image sharing the bottom layer reuses it.
    layout_layers.truncate(1);
    let mut extra = TarBuilder::new();
    extra.file("extra", 0o644, b"extra");
    layout_layers.push(convert(&extra.finish(), Compression::Gzip));
    let v2 = push(&reg, "app", "v2", &layout_layers);
    let r = index_image(&client, &db, &v2, None).await.unwrap();
    assert_eq!((r.layers_indexed, r.layers_reused), (1, 1));
    assert!(db.toc_entry(&r.manifest_digest, "extra").unwrap().is_some());
    assert!(db
        .toc_entry(&r.manifest_digest, "etc/hosts")
        .unwrap()
        .is_some());

    // The same layers under a Docker schema 2 manifest: same blobs, reused.
    let mut layout = OciLayout::new();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &starlight_layers(Compression::Gzip),
        &["/bin/sh"],
    );
    layout.tag("v1", &desc);
    let docker = format!("{}/docker:v1", reg.addr);
    layout.push("v1", &docker, true);
    let rd = index_image(&client, &db, &docker, None).await.unwrap();
    assert_eq!((rd.layers_indexed, rd.layers_reused), (0, 3));
    assert_ne!(rd.manifest_digest, report.manifest_digest);
    let record = db.image(&rd.manifest_digest).unwrap().unwrap();
    assert_eq!(
        record.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(db.merged_toc(&rd.manifest_digest).unwrap(), toc);

    // The zstd image has the same tree, and its members decompress alone too.
    let zs = push(&reg, "appz", "v1", &starlight_layers(Compression::Zstd));
    let rz = index_image(&client, &db, &zs, None).await.unwrap();
    let tocz = db.merged_toc(&rz.manifest_digest).unwrap();
    check_tree(&tocz);
    assert_eq!(
        db.image(&rz.manifest_digest).unwrap().unwrap().layers[0].compression,
        Compression::Zstd
    );
    assert_eq!(check_members(&reg, &db, "appz", &rz.manifest_digest), 8);
}

/// Indexes `reference`, expecting an error; checks nothing was written.
async fn refused(client: &RegistryClient, db: &Db, reference: &str) -> IndexError {
    let before = db.dump().unwrap();
    let err = index_image(client, db, reference, None).await.unwrap_err();
    assert_eq!(
        db.dump().unwrap(),
        before,
        "a refused image wrote to the database"
    );
    let text = err.to_string();
    assert!(
        text.contains(reference),
        "error does not name the image: {text}"
    );
    err
}

#[tokio::test]
async fn bad_images_are_refused_and_write_nothing() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let client = RegistryClient::new(true);
    // A good bottom layer first, so that a refused image has something to reuse.
    let good = convert(&layer0(), Compression::Gzip);
    let ok = push(&reg, "ok", "v1", std::slice::from_ref(&good));
    index_image(&client, &db, &ok, None).await.unwrap();

    // (d) a plain, non-converted gzip layer on top of a good one.
    let plain = Layer::gzip(&layer1());
    let reference = push(&reg, "plain", "v1", &[good.clone(), plain.clone()]);
    let err = refused(&client, &db, &reference).await;
    println!("{err}");
    assert!(matches!(err, IndexError::NotStarlight { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&digest_of(&plain.blob)) && text.contains("starlight convert"),
        "{text}"
    );

    // An uncompressed tar layer: wrong media type.
    let reference = push(&reg, "tarred", "v1", &[Layer::plain(&layer1())]);
    let err = refused(&client, &db, &reference).await;
    assert!(err.to_string().contains("media type"), "{err}");

    // (e) a layer whose stored blob was corrupted in the registry.
    let fresh = convert(&layer2(), Compression::Gzip);
    let reference = push(&reg, "corrupt", "v1", &[good.clone(), fresh.clone()]);
    let path = reg.blob_path(&digest_of(&fresh.blob));
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let err = refused(&client, &db, &reference).await;
    println!("{err}");
    assert!(err.to_string().contains(&digest_of(&fresh.blob)), "{err}");

    // A config whose diff ID does not match the layer.
    let mut wrong = convert(&layer1(), Compression::Gzip);
    wrong.diff_id = digest_of(b"something else");
    let reference = push(&reg, "diffid", "v1", &[wrong]);
    let err = refused(&client, &db, &reference).await;
    assert!(err.to_string().contains("diff ID"), "{err}");
}

/// A manifest whose table-of-contents annotation does not describe the
/// layer's blob is refused, for a new layer and for one already indexed,
/// and nothing is written.
#[tokio::test]
async fn a_wrong_toc_annotation_is_refused() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let client = RegistryClient::new(true);
    let l0 = convert(&layer0(), Compression::Gzip);
    let l1 = convert(&layer1(), Compression::Gzip);
    let toc0 = starlight_proxy::format::commit::toc_annotation_of_blob(&l0.blob).unwrap();
    let toc1 = starlight_proxy::format::commit::toc_annotation_of_blob(&l1.blob).unwrap();
    assert_ne!(toc0, toc1);
    let push_annotated = |name: &str, layers: &[Layer], tocs: &[Option<String>]| {
        let mut layout = OciLayout::new();
        let desc = layout.add_image_annotated("linux", "amd64", layers, &["/bin/sh"], tocs);
        layout.tag("v1", &desc);
        let reference = format!("{}/{name}:v1", reg.addr);
        layout.push("v1", &reference, false);
        reference
    };
    // New layer, another layer's table claimed.
    let reference = push_annotated("swapped", std::slice::from_ref(&l0), &[Some(toc1.clone())]);
    let err = refused(&client, &db, &reference).await;
    println!("{err}");
    let text = err.to_string();
    assert!(
        text.contains("does not describe this layer") && text.contains(&digest_of(&l0.blob)),
        "{text}"
    );
    // Not a digest at all.
    let reference = push_annotated(
        "garbage",
        std::slice::from_ref(&l0),
        &[Some("sha256:xyz".into())],
    );
    let err = refused(&client, &db, &reference).await;
    assert!(err.to_string().contains("not a sha256 digest"), "{err}");

    // Once l0 is indexed by an honest image, a reuse of it is checked too.
    let ok = push_annotated("ok", std::slice::from_ref(&l0), &[Some(toc0.clone())]);
    index_image(&client, &db, &ok, None).await.unwrap();
    let reference = push_annotated(
        "reused",
        &[l0.clone(), l1.clone()],
        &[Some(toc1.clone()), Some(toc1.clone())],
    );
    let err = refused(&client, &db, &reference).await;
    assert!(
        err.to_string().contains("does not describe this layer"),
        "{err}"
    );
    // Without annotations the proxy still indexes (the worker refuses to
    // pull it: unverifiable).
    let bare = push_annotated("bare", &[l0.clone(), l1.clone()], &[None, None]);
    index_image(&client, &db, &bare, None).await.unwrap();
}

#[test]
fn binary_indexes_and_prints_the_toc() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reference = push(&reg, "cli", "v1", &starlight_layers(Compression::Gzip));
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "db = {:?}\n[registry]\nurl = {:?}\nplain_http = true\n",
            db, reg.addr
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_starlight-proxy");

    let out = Command::new(bin)
        .args(["index", "--config"])
        .arg(&config)
        .arg("cli:v1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&reference) && text.contains("distinct contents"),
        "{text}"
    );

    let out = Command::new(bin)
        .args(["toc", "--db"])
        .arg(&db)
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected_tree().len(), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("/usr/bin/sh -> tool")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with("/usr/bin/ping")),
        "{text}"
    );

    let out = Command::new(bin)
        .args(["toc", "--summary", "--config"])
        .arg(&config)
        .arg("cli:v1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("regular files"));

    let out = Command::new(bin)
        .args(["toc", "--db"])
        .arg(&db)
        .arg("nope:v1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not indexed"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "dbx = 1").unwrap();
    let out = Command::new(bin)
        .args(["toc", "--config"])
        .arg(&bad)
        .arg("x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

/// Every path of an unpacked root filesystem (relative, sorted), without the root.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// The merged table of contents equals the tree `umoci unpack` (an
/// independent OCI implementation of layer application) produces.
#[tokio::test]
async fn toc_equals_the_unpacked_tree() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("db")).unwrap();
    let mut layout = OciLayout::new();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &starlight_layers(Compression::Gzip),
        &["/bin/sh"],
    );
    layout.tag("v1", &desc);
    let reference = format!("{}/unpack:v1", reg.addr);
    layout.push("v1", &reference, false);
    let report = index_image(&RegistryClient::new(true), &db, &reference, None)
        .await
        .unwrap();
    let toc = db.merged_toc(&report.manifest_digest).unwrap();

    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.path().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");

    let toc_paths: Vec<String> = toc.iter().skip(1).map(|t| t.entry.path.clone()).collect();
    assert_eq!(toc[0].entry.path, "");
    assert_eq!(toc_paths, walk(&rootfs), "merged paths vs unpacked tree");
    for t in &toc[1..] {
        let e = &t.entry;
        let path = rootfs.join(&e.path);
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let at = &e.path;
        match e.kind {
            EntryKind::Dir => assert!(ft.is_dir(), "{at}"),
            EntryKind::File | EntryKind::Hardlink => {
                assert!(ft.is_file(), "{at}");
                let data = std::fs::read(&path).unwrap();
                assert_eq!(data.len() as u64, e.size, "{at}: size");
                if e.size > 0 {
                    assert_eq!(
                        Some(hex::encode(Sha256::digest(&data))),
                        e.sha256_hex(),
                        "{at}"
                    );
                }
                assert_eq!(md.mtime(), e.mtime, "{at}: mtime");
            }
            EntryKind::Symlink => {
                assert!(ft.is_symlink(), "{at}");
                let target = std::fs::read_link(&path).unwrap();
                assert_eq!(
                    Some(target.to_string_lossy().as_ref()),
                    e.link.as_deref(),
                    "{at}"
                );
            }
            EntryKind::Fifo => assert!(ft.is_fifo(), "{at}"),
            EntryKind::CharDev | EntryKind::BlockDev => {
                assert!(ft.is_char_device() || ft.is_block_device(), "{at}")
            }
        }
        assert_eq!(
            (md.uid() as u64, md.gid() as u64),
            (e.uid, e.gid),
            "{at}: owner"
        );
        let synthesized = e.kind == EntryKind::Dir && e.mtime == 0;
        if e.kind != EntryKind::Symlink && !synthesized {
            assert_eq!(md.mode() & 0o7777, e.mode, "{at}: mode");
        }
    }
}

/// A blob used twice in one image is downloaded and stored once, and the
/// table of contents attributes entries to the upper copy.
#[tokio::test]
async fn a_layer_repeated_in_one_image_is_indexed_once() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let l0 = convert(&layer0(), Compression::Gzip);
    let l1 = convert(&layer1(), Compression::Gzip);
    let reference = push(&reg, "dup", "v1", &[l0.clone(), l1, l0.clone()]);
    let report = index_image(&RegistryClient::new(true), &db, &reference, None)
        .await
        .unwrap();
    assert_eq!((report.layers_indexed, report.layers_reused), (2, 0));
    let toc = db.merged_toc(&report.manifest_digest).unwrap();
    let get = |p: &str| toc.iter().find(|t| t.entry.path == p).unwrap();
    // Layer 2 (= layer 0 again) restores what layer 1 removed or replaced.
    assert_eq!(get("etc/hosts").layer, 2);
    assert_eq!(get("usr/bin/tool").entry.size, big_content().len() as u64);
    assert_eq!(get("var/lib/old/c").layer, 1);
    assert_eq!(get("data").entry.kind, EntryKind::Dir);
    assert_eq!(db.count_keys("layers").unwrap(), 2);
    let n0 = db.layer_entries(&digest_of(&l0.blob)).unwrap().len();
    assert_eq!(
        db.layer(&digest_of(&l0.blob)).unwrap().unwrap().entries as usize,
        n0
    );
}
