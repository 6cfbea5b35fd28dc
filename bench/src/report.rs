//! Sums, ratios and rendering (text table, TSV) of overhead measurements.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cputime::Timing;
use crate::overhead::LayerResult;

/// Percentage by which `converted` exceeds `original` (negative when smaller).
pub fn overhead_pct(converted: u64, original: u64) -> f64 {
    if original == 0 {
        return 0.0;
    }
    (converted as f64 / original as f64 - 1.0) * 100.0
}

/// Throughput in MB/s (10^6 bytes per second); 0 when no time was measured.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 || !secs.is_finite() {
        return 0.0;
    }
    bytes as f64 / 1e6 / secs
}

/// Totals over a set of layers, with the derived ratios and throughputs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// What is summed: a layer, an image, or all layers.
    pub label: String,
    /// Number of layers.
    pub layers: usize,
    /// Entries.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Uncompressed tar bytes.
    pub tar_bytes: u64,
    /// Original gzip blob bytes.
    pub original_bytes: u64,
    /// Starlight gzip blob bytes.
    pub gzip_bytes: u64,
    /// Starlight zstd blob bytes.
    pub zstd_bytes: u64,
    /// Bytes of the Starlight gzip blobs in header members (not file content).
    pub gzip_header_bytes: u64,
    /// Bytes of the Starlight zstd blobs in header members (not file content).
    pub zstd_header_bytes: u64,
    /// Starlight gzip size over the original, as a percentage overhead.
    pub gzip_overhead_pct: f64,
    /// Starlight zstd size over the original gzip, as a percentage (negative: smaller).
    pub zstd_vs_original_pct: f64,
    /// Conversion to gzip, MB/s of uncompressed tar.
    pub gzip_convert_mbps: f64,
    /// Conversion to zstd, MB/s of uncompressed tar.
    pub zstd_convert_mbps: f64,
    /// Scan of the gzip blob, MB/s of uncompressed tar.
    pub gzip_scan_mbps: f64,
    /// Scan of the zstd blob, MB/s of uncompressed tar.
    pub zstd_scan_mbps: f64,
    /// gunzip and SHA-256 of the original blob, MB/s of uncompressed tar (reference).
    pub gunzip_mbps: f64,
    /// Conversion to gzip, MB of uncompressed tar per CPU second.
    pub gzip_convert_cpu_mbps: f64,
    /// Conversion to zstd, MB of uncompressed tar per CPU second.
    pub zstd_convert_cpu_mbps: f64,
    /// Scan of the gzip blob, MB of uncompressed tar per CPU second.
    pub gzip_scan_cpu_mbps: f64,
    /// Scan of the zstd blob, MB of uncompressed tar per CPU second.
    pub zstd_scan_cpu_mbps: f64,
    /// gunzip and SHA-256 of the original blob, MB per CPU second.
    pub gunzip_cpu_mbps: f64,
}

/// Sums of the timings of a set of layers.
#[derive(Default)]
struct Times {
    gunzip: Timing,
    gz_conv: Timing,
    zst_conv: Timing,
    gz_scan: Timing,
    zst_scan: Timing,
}

fn add(a: &mut Timing, b: Timing) {
    a.wall += b.wall;
    a.cpu += b.cpu;
}

impl Summary {
    /// Sums `results` under `label`; throughputs are total bytes over total time.
    pub fn of<'a>(label: &str, results: impl IntoIterator<Item = &'a LayerResult>) -> Self {
        let mut s = Summary {
            label: label.to_string(),
            ..Summary::default()
        };
        let mut t = Times::default();
        for r in results {
            s.layers += 1;
            s.entries += r.entries;
            s.files += r.files;
            s.tar_bytes += r.tar_size;
            s.original_bytes += r.original_size;
            s.gzip_bytes += r.gzip.size;
            s.zstd_bytes += r.zstd.size;
            s.gzip_header_bytes += r.gzip.size.saturating_sub(r.gzip.content_bytes);
            s.zstd_header_bytes += r.zstd.size.saturating_sub(r.zstd.content_bytes);
            add(&mut t.gunzip, r.gunzip);
            add(&mut t.gz_conv, r.gzip.convert);
            add(&mut t.zst_conv, r.zstd.convert);
            add(&mut t.gz_scan, r.gzip.scan);
            add(&mut t.zst_scan, r.zstd.scan);
        }
        s.gzip_overhead_pct = overhead_pct(s.gzip_bytes, s.original_bytes);
        s.zstd_vs_original_pct = overhead_pct(s.zstd_bytes, s.original_bytes);
        let rate = |t: Timing| (mb_per_s(s.tar_bytes, t.wall), mb_per_s(s.tar_bytes, t.cpu));
        (s.gzip_convert_mbps, s.gzip_convert_cpu_mbps) = rate(t.gz_conv);
        (s.zstd_convert_mbps, s.zstd_convert_cpu_mbps) = rate(t.zst_conv);
        (s.gzip_scan_mbps, s.gzip_scan_cpu_mbps) = rate(t.gz_scan);
        (s.zstd_scan_mbps, s.zstd_scan_cpu_mbps) = rate(t.zst_scan);
        (s.gunzip_mbps, s.gunzip_cpu_mbps) = rate(t.gunzip);
        s
    }
}

/// One image's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Image name.
    pub image: String,
    /// Its layers, bottom first.
    pub layers: Vec<LayerResult>,
    /// Their sum.
    pub total: Summary,
}

const HEADER: [&str; 13] = [
    "files",
    "tar MB",
    "orig gz MB",
    "SL gz MB",
    "gz ovh",
    "gz hdr MB",
    "SL zst MB",
    "zst/orig",
    "conv gz",
    "conv zst",
    "scan gz",
    "scan zst",
    "gunzip",
];

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

fn pct(v: f64) -> String {
    format!("{v:+.2}%")
}

fn rate(v: f64) -> String {
    format!("{v:.1}")
}

fn cells(s: &Summary) -> [String; 13] {
    [
        s.files.to_string(),
        mb(s.tar_bytes),
        mb(s.original_bytes),
        mb(s.gzip_bytes),
        pct(s.gzip_overhead_pct),
        mb(s.gzip_header_bytes),
        mb(s.zstd_bytes),
        pct(s.zstd_vs_original_pct),
        rate(s.gzip_convert_cpu_mbps),
        rate(s.zstd_convert_cpu_mbps),
        rate(s.gzip_scan_cpu_mbps),
        rate(s.zstd_scan_cpu_mbps),
        rate(s.gunzip_cpu_mbps),
    ]
}

fn table_line(out: &mut String, label: &str, values: &[String]) {
    let _ = write!(out, "{label:<26}");
    for (i, v) in values.iter().enumerate() {
        let width = if i == 0 { 7 } else { 10 };
        let _ = write!(out, " {v:>width$}");
    }
    out.push('\n');
}

/// A text table: per image, one line per layer and the image total, then
/// the total over the distinct layers. Throughputs in MB/s of uncompressed tar.
pub fn table(images: &[ImageReport], total: &Summary) -> String {
    let mut out = String::new();
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    for image in images {
        let _ = writeln!(out, "image {}", image.image);
        table_line(&mut out, "  layer", &header);
        for layer in &image.layers {
            let s = Summary::of(&layer.layer, [layer]);
            table_line(&mut out, &format!("  {}", s.label), &cells(&s));
        }
        table_line(&mut out, "  = image total", &cells(&image.total));
        out.push('\n');
    }
    table_line(&mut out, &total.label, &header);
    table_line(&mut out, "  = all", &cells(total));
    out.push_str(
        "(MB = 10^6 bytes; ovh = converted/original - 1; hdr = bytes in tar-header members; \
         rates: MB of uncompressed tar per CPU second of this process, wall-clock rates in the \
         TSV/JSON)\n",
    );
    out
}

const TSV_COLUMNS: &str = "image\tlayer\tlayers\tentries\tfiles\ttar_bytes\toriginal_bytes\tgzip_bytes\tgzip_overhead_pct\tzstd_bytes\tzstd_vs_original_pct\tgzip_header_bytes\tzstd_header_bytes\tgzip_convert_mbps\tzstd_convert_mbps\tgzip_scan_mbps\tzstd_scan_mbps\tgunzip_mbps\tgzip_convert_cpu_mbps\tzstd_convert_cpu_mbps\tgzip_scan_cpu_mbps\tzstd_scan_cpu_mbps\tgunzip_cpu_mbps";

fn tsv_row(out: &mut String, image: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "{image}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{}\t{:.3}\t{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        s.label,
        s.layers,
        s.entries,
        s.files,
        s.tar_bytes,
        s.original_bytes,
        s.gzip_bytes,
        s.gzip_overhead_pct,
        s.zstd_bytes,
        s.zstd_vs_original_pct,
        s.gzip_header_bytes,
        s.zstd_header_bytes,
        s.gzip_convert_mbps,
        s.zstd_convert_mbps,
        s.gzip_scan_mbps,
        s.zstd_scan_mbps,
        s.gunzip_mbps,
        s.gzip_convert_cpu_mbps,
        s.zstd_convert_cpu_mbps,
        s.gzip_scan_cpu_mbps,
        s.zstd_scan_cpu_mbps,
        s.gunzip_cpu_mbps
    );
}

/// The same numbers as TSV, after a `# command: ...` line: one row per layer
/// and per image total (layer `TOTAL`), then the total over distinct layers.
pub fn tsv(command: &str, images: &[ImageReport], total: &Summary) -> String {
    let mut out = format!("# command: {command}\n{TSV_COLUMNS}\n");
    for image in images {
        for layer in &image.layers {
            tsv_row(&mut out, &image.image, &Summary::of(&layer.layer, [layer]));
        }
        tsv_row(&mut out, &image.image, &image.total);
    }
    tsv_row(&mut out, "ALL", total);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::overhead::Conversion;

    /// A timing whose CPU time is half its wall time (a busy machine).
    fn t(wall: f64) -> Timing {
        Timing {
            wall,
            cpu: wall / 2.0,
        }
    }

    fn layer(name: &str, tar: u64, orig: u64, gz: u64, zst: u64) -> LayerResult {
        LayerResult {
            layer: name.into(),
            tar_size: tar,
            entries: 10,
            files: 8,
            original_size: orig,
            gunzip: t(0.5),
            gzip: Conversion {
                size: gz,
                content_bytes: gz - 100_000,
                convert: t(2.0),
                scan: t(1.0),
            },
            zstd: Conversion {
                size: zst,
                content_bytes: zst - 50_000,
                convert: t(1.0),
                scan: t(0.25),
            },
        }
    }

    #[test]
    fn ratios_and_rates() {
        assert!((overhead_pct(103, 100) - 3.0).abs() < 1e-9);
        assert!((overhead_pct(90, 100) + 10.0).abs() < 1e-9);
        assert_eq!(overhead_pct(5, 0), 0.0);
        assert!((mb_per_s(50_000_000, 0.5) - 100.0).abs() < 1e-9);
        assert_eq!(mb_per_s(10, 0.0), 0.0);
        assert_eq!(mb_per_s(10, f64::INFINITY), 0.0);
    }

    #[test]
    fn summary_sums_bytes_and_times() {
        let a = layer("a", 10_000_000, 4_000_000, 4_100_000, 3_600_000);
        let b = layer("b", 30_000_000, 6_000_000, 6_100_000, 5_400_000);
        let s = Summary::of("img", [&a, &b]);
        assert_eq!((s.layers, s.entries, s.files), (2, 20, 16));
        assert_eq!(s.tar_bytes, 40_000_000);
        assert_eq!(s.original_bytes, 10_000_000);
        assert_eq!(
            (s.gzip_header_bytes, s.zstd_header_bytes),
            (200_000, 100_000)
        );
        assert!((s.gzip_overhead_pct - 2.0).abs() < 1e-9);
        assert!((s.zstd_vs_original_pct + 10.0).abs() < 1e-9);
        // 40 MB over 4 s of gzip conversion, 2 s of zstd conversion.
        assert!((s.gzip_convert_mbps - 10.0).abs() < 1e-9);
        assert!((s.zstd_convert_mbps - 20.0).abs() < 1e-9);
        assert!((s.gzip_scan_mbps - 20.0).abs() < 1e-9);
        assert!((s.zstd_scan_mbps - 80.0).abs() < 1e-9);
        assert!((s.gunzip_mbps - 40.0).abs() < 1e-9);
        assert!((s.gzip_convert_cpu_mbps - 20.0).abs() < 1e-9);
        assert!((s.zstd_convert_cpu_mbps - 40.0).abs() < 1e-9);
        assert!((s.gzip_scan_cpu_mbps - 40.0).abs() < 1e-9);
        assert!((s.zstd_scan_cpu_mbps - 160.0).abs() < 1e-9);
        assert!((s.gunzip_cpu_mbps - 80.0).abs() < 1e-9);
    }

    #[test]
    fn renders_table_and_tsv() {
        let a = layer("base", 10_000_000, 4_000_000, 4_100_000, 3_600_000);
        let image = ImageReport {
            image: "demo".into(),
            total: Summary::of("demo", [&a]),
            layers: vec![a.clone()],
        };
        let total = Summary::of("distinct layers", [&a]);
        let text = table(std::slice::from_ref(&image), &total);
        assert!(text.contains("image demo"));
        let base_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("base"))
            .unwrap();
        assert!(
            base_line.contains("+2.50%") && base_line.contains("-10.00%"),
            "{base_line}"
        );
        assert!(
            base_line.contains("4.10") && base_line.contains("3.60"),
            "{base_line}"
        );

        let tsv = tsv("starlight-bench overhead", &[image], &total);
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines[0], "# command: starlight-bench overhead");
        assert_eq!(lines[1], TSV_COLUMNS);
        assert_eq!(lines.len(), 5);
        let cols = TSV_COLUMNS.split('\t').count();
        for line in &lines[2..] {
            assert_eq!(line.split('\t').count(), cols, "{line}");
        }
        assert!(lines[2].starts_with("demo\tbase\t1\t10\t8\t10000000\t4000000\t4100000\t2.500\t"));
        assert!(lines[4].starts_with("ALL\tdistinct layers\t"));
    }
}
