//! End-to-end tests of `convert_image` against a real `docker-registry` on
//! loopback: OCI and Docker sources, gzip/zstd/plain layers, indexes, and
//! failures that must leave the destination tag absent.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use common::layout::{Layer, OciLayout};
use common::registry::TestRegistry;
use sha2::{Digest, Sha256};
use starlight_proxy::convert::{
    convert_image, ConvertError, ConvertImageOptions, ConvertReport, PlatformSelection,
    LAYER_FORMAT_ANNOTATION,
};
use starlight_proxy::format::{scan_layer, Compression};
use starlight_proxy::registry::{RegistryClient, ResolvedImage};

/// One tar entry to build.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// An uncompressed tar of `entries`.
fn make_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            E::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Pseudo-random but compressible bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            b"abcdefghij0123 \n"[(x >> 60) as usize]
        })
        .collect()
}

fn base_tar() -> Vec<u8> {
    make_tar(&[
        E::Dir("etc"),
        E::File("etc/hostname", b"starlight\n".to_vec()),
        E::File("etc/empty", vec![]),
        E::Dir("usr"),
        E::Dir("usr/bin"),
        E::File("usr/bin/tool", data(1, 200_000)),
        E::Hardlink("usr/bin/tool-link", "usr/bin/tool"),
        E::Symlink("usr/bin/sym", "tool"),
        E::File("old.txt", b"to be deleted".to_vec()),
    ])
}

fn second_tar() -> Vec<u8> {
    let long = format!("deep/{}/file.txt", "d".repeat(120));
    make_tar(&[
        E::Dir("deep"),
        E::File(Box::leak(long.into_boxed_str()), data(2, 5000)),
        E::File(".wh.old.txt", vec![]),
        E::File("etc/hostname", b"replaced\n".to_vec()),
    ])
}

fn third_tar() -> Vec<u8> {
    make_tar(&[
        E::Dir("var"),
        E::File("var/big", data(3, 1_500_000)),
        E::File("var/small", b"x".to_vec()),
    ])
}

/// (kind, mode, uid, gid, content or link target) per normalized path.
type Tree = BTreeMap<String, (u8, u32, u64, u64, Vec<u8>)>;

fn norm(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p).to_string();
    s.trim_start_matches("./").trim_end_matches('/').to_string()
}

fn tree_of(tar_bytes: &[u8]) -> Tree {
    let mut out = Tree::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path_bytes());
        let h = e.header();
        let kind = h.entry_type().as_byte();
        let (mode, uid, gid) = (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap());
        let body = match e.link_name_bytes() {
            Some(l) if matches!(kind, b'1' | b'2') => {
                let l = l.to_vec();
                if kind == b'1' {
                    norm(&l).into_bytes()
                } else {
                    l
                }
            }
            _ => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                v
            }
        };
        // Old-style regular files ('\0') and ustar ones ('0') are the same.
        let kind = if kind == 0 { b'0' } else { kind };
        out.insert(path, (kind, mode & 0o7777, uid, gid, body));
    }
    out
}

fn sha256(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(d)))
}

/// Decompresses a converted blob (multi-member gzip or multi-frame zstd).
fn decompress(blob: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
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
        Compression::None => out = blob.to_vec(),
    }
    out
}

fn client() -> RegistryClient {
    RegistryClient::new(true)
}

fn opts(compression: Compression, platforms: PlatformSelection) -> ConvertImageOptions {
    ConvertImageOptions {
        compression,
        platforms,
        ..Default::default()
    }
}

/// Checks one converted platform image: manifest shape, annotations,
/// diff_ids, Starlight format of every layer, and content equal to `tars`.
async fn verify_image(
    c: &RegistryClient,
    image: &ResolvedImage,
    compression: Compression,
    tars: &[Vec<u8>],
) {
    assert_eq!(
        image.manifest_media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: serde_json::Value = serde_json::from_slice(&image.config_raw).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = image.manifest.layers();
    assert_eq!(layers.len(), tars.len());
    assert_eq!(diff_ids.len(), tars.len());
    let want_type = match compression {
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    let dir = tempfile::tempdir().unwrap();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer.media_type().to_string(), want_type);
        assert_eq!(
            layer
                .annotations()
                .as_ref()
                .unwrap()
                .get(LAYER_FORMAT_ANNOTATION)
                .map(String::as_str),
            Some("v1")
        );
        let path = dir.path().join(format!("l{i}"));
        let digest = layer.digest().to_string();
        c.download_blob(&image.reference, &digest, Some(layer.size()), &path)
            .await
            .unwrap();
        let blob = std::fs::read(&path).unwrap();
        let tar = decompress(&blob, compression);
        assert_eq!(
            diff_ids[i].as_str().unwrap(),
            sha256(&tar),
            "diff_id of layer {i}"
        );
        let scanned = scan_layer(std::fs::File::open(&path).unwrap())
            .unwrap_or_else(|e| panic!("layer {i} is not Starlight: {e}"));
        // The manifest commits to the layer's table of contents.
        assert_eq!(
            layer
                .annotations()
                .as_ref()
                .unwrap()
                .get(starlight_proxy::convert::TOC_DIGEST_ANNOTATION),
            Some(&starlight_proxy::format::commit::toc_annotation(
                &scanned.entries
            )),
            "toc digest annotation of layer {i}"
        );
        assert_eq!(tree_of(&tar), tree_of(&tars[i]), "content of layer {i}");
    }
}

fn check_report(report: &ConvertReport, platforms: usize, layers: usize) {
    assert_eq!(report.platforms.len(), platforms);
    for p in &report.platforms {
        assert_eq!(p.layers.len(), layers);
        for l in &p.layers {
            assert!(l.size > 0 && l.source_size > 0);
            assert!(l.entries > 0);
        }
    }
    let text = report.to_string();
    assert!(text.contains("total:"), "{text}");
}

#[tokio::test]
async fn oci_multi_layer_source_gzip_and_zstd() {
    let reg = TestRegistry::start();
    let tars = vec![base_tar(), second_tar(), third_tar()];
    let mut layout = OciLayout::new();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &[
            Layer::gzip(&tars[0]),
            Layer::zstd(&tars[1]),
            Layer::plain(&tars[2]),
        ],
        &["/bin/sh"],
    );
    layout.tag("v1", &desc);
    let src = format!("{}/src/app:v1", reg.addr);
    layout.push("v1", &src, false);
    let c = client();

    for (compression, tag) in [(Compression::Gzip, "gz"), (Compression::Zstd, "zst")] {
        let dst = format!("{}/dst/app:{tag}", reg.addr);
        let report = convert_image(&c, &src, &dst, &opts(compression, PlatformSelection::All))
            .await
            .unwrap_or_else(|e| panic!("convert {tag}: {e}\n{}", reg.log()));
        check_report(&report, 1, 3);
        assert!(report.index_digest.is_none());
        let image = c.resolve_image(&dst, None).await.unwrap();
        assert_eq!(image.manifest_digest, report.tagged_digest);
        assert_eq!(image.platform, "linux/amd64");
        verify_image(&c, &image, compression, &tars).await;
        // Everything else in the config survives.
        let config: serde_json::Value = serde_json::from_slice(&image.config_raw).unwrap();
        assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
    }

    // Deterministic and idempotent: converting again (even a converted
    // image) gives the same manifest; blobs are not uploaded twice.
    let again = format!("{}/dst/app:gz-again", reg.addr);
    let r2 = convert_image(
        &c,
        &src,
        &again,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap();
    let r1 = c
        .resolve_image(&format!("{}/dst/app:gz", reg.addr), None)
        .await
        .unwrap();
    assert_eq!(r2.tagged_digest, r1.manifest_digest);
    assert!(r2.platforms[0].layers.iter().all(|l| !l.uploaded));
    let reconv = format!("{}/dst/app:gz-twice", reg.addr);
    let r3 = convert_image(
        &c,
        &format!("{}/dst/app:gz", reg.addr),
        &reconv,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap();
    assert_eq!(
        r3.tagged_digest, r1.manifest_digest,
        "converting a converted image is a no-op"
    );
}

#[tokio::test]
async fn docker_schema2_source() {
    let reg = TestRegistry::start();
    let tars = vec![base_tar(), second_tar()];
    let mut layout = OciLayout::new();
    let desc = layout.add_image(
        "linux",
        "amd64",
        &[Layer::gzip(&tars[0]), Layer::gzip(&tars[1])],
        &["/x"],
    );
    layout.tag("v1", &desc);
    let src = format!("{}/docker/app:v1", reg.addr);
    layout.push("v1", &src, true);
    let c = client();
    let source = c.fetch_manifest(&src).await.unwrap();
    assert_eq!(
        source.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let dst = format!("{}/docker/app:starlight", reg.addr);
    let report = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    check_report(&report, 1, 2);
    assert_eq!(
        report.platforms[0].layers[0].source_media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let image = c.resolve_image(&dst, None).await.unwrap();
    verify_image(&c, &image, Compression::Gzip, &tars).await;
}

fn two_platform_layout(reg: &TestRegistry) -> (String, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let amd = vec![base_tar(), third_tar()];
    let arm = vec![base_tar(), second_tar()];
    let mut layout = OciLayout::new();
    let a = layout.add_image(
        "linux",
        "amd64",
        &[Layer::gzip(&amd[0]), Layer::gzip(&amd[1])],
        &["/a"],
    );
    let b = layout.add_image(
        "linux",
        "arm64",
        &[Layer::gzip(&arm[0]), Layer::zstd(&arm[1])],
        &["/b"],
    );
    let idx = layout.add_index(&[a, b]);
    layout.tag("multi", &idx);
    let src = format!("{}/multi/app:multi", reg.addr);
    layout.push("multi", &src, false);
    (src, amd, arm)
}

#[tokio::test]
async fn two_platform_index_all_and_one() {
    let reg = TestRegistry::start();
    let (src, amd, arm) = two_platform_layout(&reg);
    let c = client();

    let dst = format!("{}/multi/app:all", reg.addr);
    let report = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Zstd, PlatformSelection::All),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    assert_eq!(report.platforms.len(), 2);
    // The base layer is shared: converted once, same result for both.
    let (amd_r, arm_r) = (&report.platforms[0], &report.platforms[1]);
    assert_eq!(amd_r.layers[0].source_digest, arm_r.layers[0].source_digest);
    assert_eq!(amd_r.layers[0].digest, arm_r.layers[0].digest);
    assert!(amd_r.layers[0].uploaded && !arm_r.layers[0].uploaded);
    assert_eq!(
        report.index_digest.as_deref(),
        Some(report.tagged_digest.as_str())
    );
    let index = c.fetch_manifest(&dst).await.unwrap();
    assert_eq!(index.media_type, "application/vnd.oci.image.index.v1+json");
    let platforms = starlight_proxy::registry::index_platforms(&dst, &index.raw).unwrap();
    let names: Vec<&str> = platforms.iter().map(|p| p.platform.as_str()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"]);
    let image = c.resolve_image(&dst, Some("linux/amd64")).await.unwrap();
    verify_image(&c, &image, Compression::Zstd, &amd).await;
    let image = c.resolve_image(&dst, Some("linux/arm64")).await.unwrap();
    assert_eq!(image.platform, "linux/arm64");
    verify_image(&c, &image, Compression::Zstd, &arm).await;

    let dst = format!("{}/multi/app:arm", reg.addr);
    let report = convert_image(
        &c,
        &src,
        &dst,
        &opts(
            Compression::Gzip,
            PlatformSelection::parse("linux/arm64").unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.platforms.len(), 1);
    assert_eq!(report.platforms[0].platform, "linux/arm64");
    assert!(report.index_digest.is_none());
    let m = c.fetch_manifest(&dst).await.unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    let image = c.resolve_image(&dst, None).await.unwrap();
    assert_eq!(image.platform, "linux/arm64");
    verify_image(&c, &image, Compression::Gzip, &arm).await;

    // A platform the index does not have.
    let dst = format!("{}/multi/app:s390x", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(
            Compression::Gzip,
            PlatformSelection::parse("linux/s390x").unwrap(),
        ),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );
    assert!(!reg.has_manifest("multi/app", "s390x"));
}

#[tokio::test]
async fn missing_source_fails_and_tags_nothing() {
    let reg = TestRegistry::start();
    let c = client();
    let src = format!("{}/nothere/app:v1", reg.addr);
    let dst = format!("{}/out/app:v1", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(msg.contains("nothere/app"), "{msg}");
    assert!(!reg.has_manifest("out/app", "v1"));
}

#[tokio::test]
async fn corrupted_source_blob_fails_with_digest_error() {
    let reg = TestRegistry::start();
    let tars = [base_tar(), third_tar()];
    let layers = [Layer::gzip(&tars[0]), Layer::gzip(&tars[1])];
    let bad_digest = sha256(&layers[1].blob);
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, &["/x"]);
    layout.tag("v1", &desc);
    let src = format!("{}/corrupt/app:v1", reg.addr);
    layout.push("v1", &src, false);

    // Flip one byte in the middle of the second layer, size unchanged.
    let path = reg.blob_path(&bad_digest);
    let mut blob = std::fs::read(&path).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0xff;
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&blob)
        .unwrap();

    let c = client();
    let dst = format!("{}/corrupt/app:starlight", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(
        msg.contains("digest mismatch") && msg.contains(&bad_digest),
        "{msg}"
    );
    assert!(msg.contains("corrupt/app"), "{msg}");
    assert!(!reg.has_manifest("corrupt/app", "starlight"));
}

/// A tar whose only entry is `../evil` (the tar crate refuses to write it).
fn evil_tar() -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    h.set_mtime(1_700_000_000);
    h.as_old_mut().name[..7].copy_from_slice(b"../evil");
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    let mut body = b"evil".to_vec();
    body.resize(512, 0);
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test]
async fn malformed_layer_fails_naming_image_and_layer() {
    let reg = TestRegistry::start();
    let good = Layer::gzip(&base_tar());
    let evil = Layer::gzip(&evil_tar());
    let evil_digest = sha256(&evil.blob);
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[good, evil], &["/x"]);
    layout.tag("v1", &desc);
    let src = format!("{}/evil/app:v1", reg.addr);
    layout.push("v1", &src, false);

    let c = client();
    let dst = format!("{}/evil/app:starlight", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConvertError::Layer { index: 2, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(msg.contains(&src) && msg.contains(&evil_digest), "{msg}");
    assert!(msg.contains("evil"), "{msg}");
    assert!(!reg.has_manifest("evil/app", "starlight"));
}

#[tokio::test]
async fn truncated_source_blob_fails_with_size_error() {
    let reg = TestRegistry::start();
    let layer = Layer::gzip(&third_tar());
    let digest = sha256(&layer.blob);
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/x"]);
    layout.tag("v1", &desc);
    let src = format!("{}/trunc/app:v1", reg.addr);
    layout.push("v1", &src, false);
    let path = reg.blob_path(&digest);
    let blob = std::fs::read(&path).unwrap();
    std::fs::write(&path, &blob[..blob.len() / 3]).unwrap();

    let c = client();
    let dst = format!("{}/trunc/app:starlight", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Zstd, PlatformSelection::All),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(msg.contains(&digest) && msg.contains("trunc/app"), "{msg}");
    assert!(
        msg.contains("size mismatch") || msg.contains("digest mismatch"),
        "{msg}"
    );
    assert!(!reg.has_manifest("trunc/app", "starlight"));
}

#[tokio::test]
async fn tampered_platform_manifest_fails_and_tags_nothing() {
    let reg = TestRegistry::start();
    let (src, _, _) = two_platform_layout(&reg);
    let c = client();
    let index = c.fetch_manifest(&src).await.unwrap();
    let arm = starlight_proxy::registry::index_platforms(&src, &index.raw).unwrap()[1].clone();
    assert_eq!(arm.platform, "linux/arm64");
    // Change one character of the stored arm64 manifest (still valid JSON).
    let path = reg.blob_path(&arm.digest);
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen("\"schemaVersion\":2", "\"schemaVersion\": 2", 1);
    assert_ne!(text, tampered);
    std::fs::write(&path, tampered).unwrap();

    let dst = format!("{}/multi/app:tampered", reg.addr);
    let err = convert_image(
        &c,
        &src,
        &dst,
        &opts(Compression::Gzip, PlatformSelection::All),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("error as reported: {msg}");
    assert!(msg.contains(&format!("manifest {}", arm.digest)), "{msg}");
    assert!(
        msg.contains("digest mismatch") && msg.contains("multi/app"),
        "{msg}"
    );
    assert!(!reg.has_manifest("multi/app", "tampered"));
}
