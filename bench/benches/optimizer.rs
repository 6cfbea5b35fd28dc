//! Criterion benchmarks of the delta-bundle optimizer on synthetic images of
//! 1K, 30K and 84K files: a fresh bundle (nothing held) and an update (the
//! worker holds v1, which shares 90% of v2's contents under rebuilt layers),
//! plus a plan-cache hit. About 70% of the contents are distinct and 10% of
//! the files are ranked. The goal is at most 0.3 s for 84K files, growing
//! linearly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use starlight_proxy::db::{ImageRecord, LayerRef, TocEntry};
use starlight_proxy::format::{Compression, ContentRef, Entry, EntryKind};
use starlight_proxy::optimize::{optimize, OptimizeInput, PlanCache, PlanKey, Rank};

/// Image sizes, in regular files.
const SIZES: [usize; 3] = [1_000, 30_000, 84_000];
/// Layers per image.
const LAYERS: usize = 4;

/// Where the synthetic files live, as in a Debian + Python + Node image.
const TOPS: [&str; 6] = [
    "usr/lib/python3/dist-packages",
    "usr/lib/x86_64-linux-gnu",
    "usr/share/doc",
    "usr/share/locale",
    "opt/app/node_modules",
    "usr/include",
];
const EXTS: [&str; 6] = ["py", "so", "gz", "mo", "js", "h"];

/// A deterministic 64-bit mixer (splitmix64).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fake SHA-256 for content number `id`.
fn sha(id: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(id.wrapping_mul(4).wrapping_add(i as u64)).to_le_bytes());
    }
    out
}

fn entry(path: String, kind: EntryKind) -> Entry {
    Entry {
        path,
        kind,
        mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        uname: "root".into(),
        gname: "root".into(),
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        size: 0,
        link: None,
        devmajor: 0,
        devminor: 0,
        xattrs: vec![],
        content: None,
    }
}

fn image(tag: &str) -> ImageRecord {
    ImageRecord {
        manifest_digest: format!("sha256:{}", hex::encode(sha(u64::from(tag.as_bytes()[0])))),
        references: vec![format!("synthetic:{tag}")],
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest_raw: vec![],
        config_raw: vec![],
        platform: "linux/amd64".into(),
        layers: (0..LAYERS)
            .map(|l| LayerRef {
                digest: format!(
                    "sha256:{}",
                    hex::encode(sha(1_000_000 + l as u64 * 7 + u64::from(tag.as_bytes()[0])))
                ),
                size: 50 << 20,
                compression: Compression::Gzip,
            })
            .collect(),
        toc_entries: 0,
    }
}

/// The content number of file `i`: about 30% of the files repeat an earlier
/// file's content. In v1 (`old`), 10% of the contents differ.
fn content_id(i: usize, old: bool) -> u64 {
    let i = i as u64;
    let h = mix(i ^ 0xC0FF_EE00);
    let base = if h % 10 < 3 && i > 0 { mix(i) % i } else { i };
    // One content in ten (`< 1` rather than `== 0`: MSRV 1.85 lacks
    // `is_multiple_of`).
    if old && mix(base ^ 0xAB) % 10 < 1 {
        base + (1 << 40)
    } else {
        base
    }
}

/// A merged table of contents of `files` regular files plus their parent
/// directories, sorted by path.
fn toc(files: usize, old: bool) -> Vec<TocEntry> {
    let mut out = Vec::with_capacity(files + files / 8);
    let mut dirs = BTreeSet::new();
    for i in 0..files {
        let h = mix(i as u64);
        let top = (h % TOPS.len() as u64) as usize;
        let path = format!(
            "{}/pkg{:04}/sub{:02}/file_{i:06}.{}",
            TOPS[top],
            (h >> 8) % 400,
            (h >> 20) % 12,
            EXTS[top]
        );
        let mut p = path.as_str();
        while let Some(cut) = p.rfind('/') {
            p = &p[..cut];
            if !dirs.insert(p.to_string()) {
                break;
            }
        }
        let id = content_id(i, old);
        let mut e = entry(path, EntryKind::File);
        e.size = 512 + mix(id) % 65_536;
        e.content = Some(ContentRef {
            sha256: sha(id),
            offset: i as u64 * 4096,
            compressed_len: e.size / 3 + 30,
        });
        out.push(TocEntry {
            entry: e,
            layer: (i * LAYERS / files) as u32,
        });
    }
    out.push(TocEntry {
        entry: entry(String::new(), EntryKind::Dir),
        layer: 0,
    });
    for d in dirs {
        out.push(TocEntry {
            entry: entry(d, EntryKind::Dir),
            layer: 0,
        });
    }
    out.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    out
}

/// Ranks for every tenth file.
fn ranks(toc: &[TocEntry]) -> HashMap<String, Rank> {
    toc.iter()
        .filter(|t| t.entry.kind == EntryKind::File)
        .enumerate()
        .step_by(10)
        .map(|(i, t)| {
            let hits = 1 + mix(i as u64) % 10;
            let rank = Rank {
                sum: hits * (mix(i as u64 ^ 0x77) % 5_000),
                hits,
            };
            (t.entry.path.clone(), rank)
        })
        .collect()
}

fn bench_optimizer(c: &mut Criterion) {
    let mut group = c.benchmark_group("optimizer");
    group.sample_size(10);
    let v1 = image("1");
    let v2 = image("2");
    let none = HashSet::new();
    for files in SIZES {
        let v1_toc = toc(files, true);
        let v2_toc = toc(files, false);
        let ranks = ranks(&v2_toc);
        let fresh = OptimizeInput {
            wanted: &v2,
            wanted_toc: &v2_toc,
            held: vec![],
            held_payloads: &none,
            ranks: &ranks,
        };
        let update = OptimizeInput {
            held: vec![(&v1, v1_toc.as_slice())],
            ..fresh.clone()
        };
        match (optimize(&fresh), optimize(&update)) {
            (Ok(f), Ok(u)) => eprintln!(
                "{files} files: {} entries, {} ranked paths; fresh: {} payloads; update: {} payloads",
                v2_toc.len(),
                ranks.len(),
                f.payloads.len(),
                u.payloads.len()
            ),
            (Err(e), _) | (_, Err(e)) => panic!("optimizing the synthetic image: {e}"),
        }
        group.throughput(Throughput::Elements(v2_toc.len() as u64));
        group.bench_with_input(BenchmarkId::new("fresh", files), &fresh, |b, input| {
            b.iter(|| black_box(optimize(input).map(|p| p.payloads.len())))
        });
        group.bench_with_input(BenchmarkId::new("update", files), &update, |b, input| {
            b.iter(|| black_box(optimize(input).map(|p| p.payloads.len())))
        });
        // The floor: copying the table of contents, which any plan that owns
        // its entries pays.
        group.bench_with_input(BenchmarkId::new("clone_toc", files), &v2_toc, |b, toc| {
            b.iter(|| black_box(toc.clone()).len())
        });
        let cache = PlanCache::new(16, usize::MAX);
        if let Err(e) = cache.plan(&update, 1) {
            panic!("optimizing the synthetic image: {e}");
        }
        group.bench_with_input(BenchmarkId::new("cache_hit", files), &update, |b, input| {
            b.iter(|| {
                let key = PlanKey::for_input(input, 1);
                black_box(cache.get(&key).map(|p| p.payloads.len()))
            })
        });
    }
    group.finish();
}

/// The group, in a private module so its generated function needs no docs.
mod group {
    criterion::criterion_group!(benches, super::bench_optimizer);
}
criterion_main!(group::benches);
