//! Criterion benchmarks of the Starlight layer format: conversion of a
//! synthetic gzip layer to the seekable format (gzip and zstd), and scanning
//! of converted blobs. Throughput is counted in uncompressed tar bytes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, Criterion, Throughput};
use starlight_bench::hashing::CountingSink;
use starlight_bench::synth;
use starlight_proxy::format::{convert_layer, scan_layer, Compression, ConvertOptions};

/// Files in the synthetic layer.
const FILES: usize = 2_000;

fn options(compression: Compression) -> ConvertOptions {
    ConvertOptions {
        compression,
        level: None,
    }
}

fn bench_format(c: &mut Criterion) {
    let layer = match synth::generate(FILES, 0x5eed) {
        Ok(layer) => layer,
        Err(e) => panic!("generating the synthetic layer: {e}"),
    };
    let tar_bytes = layer.tar.len() as u64;
    let mut group = c.benchmark_group("format");
    group.throughput(Throughput::Bytes(tar_bytes));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    for (name, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let opts = options(compression);
        group.bench_function(format!("convert_layer/{name}"), |b| {
            b.iter(|| {
                let mut sink = CountingSink::default();
                let converted = convert_layer(&layer.gzip[..], &mut sink, &opts);
                black_box(converted.map(|c| c.size).unwrap_or(0))
            })
        });
        let mut converted = Vec::new();
        if let Err(e) = convert_layer(&layer.gzip[..], &mut converted, &opts) {
            panic!("converting the synthetic layer ({name}): {e}");
        }
        group.bench_function(format!("scan_layer/{name}"), |b| {
            b.iter(|| {
                let scanned = scan_layer(&converted[..]);
                black_box(scanned.map(|s| s.entries.len()).unwrap_or(0))
            })
        });
    }
    group.finish();
}

/// Runs the group with the command-line configuration (`--quick`, filters...).
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_format(&mut criterion);
}

criterion_main!(benches);
