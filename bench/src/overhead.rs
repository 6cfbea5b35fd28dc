//! `starlight-bench overhead`: converts every corpus layer to the Starlight
//! format (gzip and zstd), scans the converted blobs back, and times both.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use starlight_bench::hashing::HashingWriter;
use starlight_bench::layer_tar::LayerBlob;
use starlight_proxy::format::{convert_layer, scan_layer, Compression, ConvertOptions, Entry};

use crate::corpus::Corpus;
use crate::cputime::{Stopwatch, Timing};

/// One conversion of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct Conversion {
    /// Size of the converted blob in bytes.
    pub size: u64,
    /// Bytes of the blob in file-content members (each counted once); the
    /// rest are the members holding tar headers and padding.
    pub content_bytes: u64,
    /// Best conversion time over the runs.
    pub convert: Timing,
    /// Best scan time of the converted blob over the runs.
    pub scan: Timing,
}

/// Measurements of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// Layer name.
    pub layer: String,
    /// Uncompressed tar size in bytes.
    pub tar_size: u64,
    /// Entries in the layer.
    pub entries: u64,
    /// Regular files with content of their own.
    pub files: u64,
    /// Size of the original (Docker-style gzip) blob.
    pub original_size: u64,
    /// Best time to gunzip and hash the original blob (the cost any pull pays).
    pub gunzip: Timing,
    /// Starlight gzip conversion.
    pub gzip: Conversion,
    /// Starlight zstd conversion.
    pub zstd: Conversion,
}

/// Compression levels of the conversions; `None` takes the converter's default.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Levels {
    /// gzip level.
    pub gzip: Option<i32>,
    /// zstd level.
    pub zstd: Option<i32>,
}

/// Measures `layer`, keeping the converted blobs under the corpus's
/// `converted/` directory. Times are the best of `runs` runs.
pub fn measure(corpus: &Corpus, layer: &str, levels: Levels, runs: usize) -> Result<LayerResult> {
    let blob = corpus.load(layer)?;
    let src = corpus.blob_path(layer);
    let out_dir = corpus.scratch_dir("converted");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let runs = runs.max(1);
    let gunzip = best_of(runs, || gunzip(&src, &blob))?;
    let gzip = ConvertOptions {
        compression: Compression::Gzip,
        level: levels.gzip,
    };
    let gzip = convert(
        &src,
        &out_dir.join(format!("{layer}.gzip")),
        &gzip,
        &blob,
        runs,
    )
    .with_context(|| format!("layer {layer}, gzip"))?;
    let zstd = ConvertOptions {
        compression: Compression::Zstd,
        level: levels.zstd,
    };
    let zstd = convert(
        &src,
        &out_dir.join(format!("{layer}.zstd")),
        &zstd,
        &blob,
        runs,
    )
    .with_context(|| format!("layer {layer}, zstd"))?;
    Ok(LayerResult {
        layer: layer.to_string(),
        tar_size: blob.tar_size,
        entries: blob.stats.entries,
        files: blob.stats.files,
        original_size: blob.size,
        gunzip,
        gzip,
        zstd,
    })
}

fn best_of(runs: usize, mut f: impl FnMut() -> Result<Timing>) -> Result<Timing> {
    let mut best = f()?;
    for _ in 1..runs {
        best = best.min(f()?);
    }
    Ok(best)
}

/// Decompresses and hashes the original blob; checks its diff id.
fn gunzip(src: &Path, blob: &LayerBlob) -> Result<Timing> {
    let watch = Stopwatch::start();
    let file = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
    let mut sink = HashingWriter::new(io::sink());
    io::copy(&mut gz, &mut sink).context("decompressing the original blob")?;
    let secs = watch.stop();
    let (_, size, diff_id) = sink.finish();
    if size != blob.tar_size || diff_id != blob.diff_id {
        bail!("{}: the blob does not match its description", src.display());
    }
    Ok(secs)
}

/// Converts `src` to `dst` with `compression`, then scans `dst`; checks the
/// results agree with each other and with the original's description.
fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    blob: &LayerBlob,
    runs: usize,
) -> Result<Conversion> {
    let compression = opts.compression;
    let mut converted = None;
    let convert = best_of(runs, || {
        let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let output = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
        let watch = Stopwatch::start();
        let mut writer = BufWriter::new(output);
        let layer = convert_layer(BufReader::new(input), &mut writer, opts)?;
        writer.flush()?;
        let secs = watch.stop();
        converted = Some(layer);
        Ok(secs)
    })?;
    let Some(converted) = converted else {
        bail!("no conversion ran");
    };
    if converted.source_diff_id != blob.diff_id {
        bail!(
            "the converter read a different source (diff id {}) than the blob's ({})",
            converted.source_diff_id,
            blob.diff_id
        );
    }
    let size = fs::metadata(dst)?.len();
    if size != converted.size {
        bail!(
            "converted blob is {size} bytes, the converter reported {}",
            converted.size
        );
    }
    let mut scanned_entries = 0;
    let mut content_bytes = 0;
    let scan = best_of(runs, || {
        let input = File::open(dst).with_context(|| format!("opening {}", dst.display()))?;
        let watch = Stopwatch::start();
        let scanned = scan_layer(BufReader::new(input))?;
        let secs = watch.stop();
        if scanned.digest != converted.digest || scanned.diff_id != converted.diff_id {
            bail!("scanning the converted blob gives other digests than converting it");
        }
        if scanned.compression != compression {
            bail!(
                "scanned compression {:?}, expected {compression:?}",
                scanned.compression
            );
        }
        scanned_entries = scanned.entries.len() as u64;
        content_bytes = content_member_bytes(&scanned.entries);
        Ok(secs)
    })?;
    if scanned_entries != converted.entries {
        bail!(
            "scan found {scanned_entries} entries, the converter wrote {}",
            converted.entries
        );
    }
    Ok(Conversion {
        size,
        content_bytes,
        convert,
        scan,
    })
}

/// Total length of the distinct content members the entries point at (a
/// hard link points at its target's member).
fn content_member_bytes(entries: &[Entry]) -> u64 {
    let members: BTreeSet<(u64, u64)> = entries
        .iter()
        .filter_map(|e| e.content.map(|c| (c.offset, c.compressed_len)))
        .collect();
    members.iter().map(|(_, len)| len).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tar_paths(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            // The converter writes directories Docker-style, with a trailing `/`.
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path.trim_end_matches('/').to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, data));
        }
        out
    }

    #[test]
    fn measures_a_local_layer_and_keeps_valid_converted_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = Corpus::new(&dir.path().join("cache")).unwrap();
        let src = dir.path().join("tree");
        fs::create_dir_all(src.join("usr/lib")).unwrap();
        for i in 0..20 {
            let body = format!("line {i}\n").repeat(i * 50);
            fs::write(src.join(format!("usr/lib/f{i:02}.txt")), body).unwrap();
        }
        std::os::unix::fs::symlink("f01.txt", src.join("usr/lib/link")).unwrap();
        fs::hard_link(src.join("usr/lib/f02.txt"), src.join("usr/lib/hard")).unwrap();
        fs::create_dir_all(dir.path().join("cache/layers")).unwrap();
        let blob = corpus.write_layer("tiny", &src).unwrap();

        let levels = Levels {
            gzip: Some(6),
            zstd: Some(3),
        };
        let r = measure(&corpus, "tiny", levels, 2).unwrap();
        assert_eq!(r.layer, "tiny");
        assert_eq!((r.tar_size, r.original_size), (blob.tar_size, blob.size));
        assert_eq!((r.entries, r.files), (blob.stats.entries, blob.stats.files));
        assert!(r.gzip.size > 0 && r.zstd.size > 0);
        assert!(r.gzip.content_bytes > 0 && r.gzip.content_bytes < r.gzip.size);
        assert!(r.zstd.content_bytes > 0 && r.zstd.content_bytes < r.zstd.size);
        assert!(r.gzip.convert.wall > 0.0 && r.zstd.scan.wall > 0.0);

        // The converted gzip blob is still a plain tar+gzip with the same files.
        let original = fs::read(corpus.blob_path("tiny")).unwrap();
        let converted = fs::read(corpus.scratch_dir("converted").join("tiny.gzip")).unwrap();
        assert_eq!(converted.len() as u64, r.gzip.size);
        assert_eq!(tar_paths(&converted), tar_paths(&original));
        let zstd = fs::read(corpus.scratch_dir("converted").join("tiny.zstd")).unwrap();
        assert_eq!(&zstd[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    }

    #[test]
    fn content_members_are_counted_once() {
        let file = |path: &str, offset: u64, len: u64| Entry {
            path: path.into(),
            kind: starlight_proxy::format::EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: 0,
            mtime_nsec: 0,
            size: 10,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: Vec::new(),
            content: Some(starlight_proxy::format::ContentRef {
                sha256: [0; 32],
                offset,
                compressed_len: len,
            }),
        };
        let mut dir = file("d", 0, 0);
        dir.content = None;
        // "b" is a hard link to "a": same member.
        let entries = [
            dir,
            file("a", 100, 30),
            file("b", 100, 30),
            file("c", 200, 12),
        ];
        assert_eq!(content_member_bytes(&entries), 42);
    }

    #[test]
    fn a_corrupt_original_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = Corpus::new(dir.path()).unwrap();
        let src = dir.path().join("tree");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), vec![b'a'; 10_000]).unwrap();
        fs::create_dir_all(dir.path().join("layers")).unwrap();
        let blob = corpus.write_layer("bad", &src).unwrap();
        // Same size, flipped bytes in the middle of the deflate stream.
        let path = corpus.blob_path("bad");
        let mut data = fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        data[mid + 1] ^= 0xff;
        fs::write(&path, &data).unwrap();
        assert_eq!(data.len() as u64, blob.size);
        assert!(measure(&corpus, "bad", Levels::default(), 1).is_err());
    }
}
