//! `static-coverage`: per corpus image, how much of what traces show the
//! start needs the proxy's static start-up order (never traced) already
//! puts first, in files and bytes.
//!
//! The static order is computed here with the proxy's own analysis
//! ([`starlight_proxy::startup::analyze`]) on the image indexed from the
//! corpus registry (a private registry on loopback over the same storage,
//! a private database); the needed files are the paths the traced proxy
//! ranks (`starlight ranks`), sized from the same table of contents.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use starlight_proxy::db::{Db, ImageRecord, TocEntry};
use starlight_proxy::format::decompress_member;
use starlight_proxy::index::index_image;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::startup::{analyze, BoxFuture, ContentReader, StartupError, StartupLimits};

use crate::daemon::Place;
use crate::registry::{free_port, Registry};

/// One image's coverage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Image name.
    pub image: String,
    /// Where the needed files come from (`trace` or `prod` proxy, traces).
    pub source: String,
    /// Files of the static order.
    pub static_files: usize,
    /// Bytes of the static order's files.
    pub static_bytes: u64,
    /// Regular files the traces opened.
    pub needed_files: usize,
    /// Their bytes.
    pub needed_bytes: u64,
    /// Needed files the static order has.
    pub covered_files: usize,
    /// Their bytes.
    pub covered_bytes: u64,
}

impl Coverage {
    /// Compares the static order with the needed paths; sizes come from
    /// `sizes` (regular files of the table of contents; other paths are
    /// not counted).
    pub fn compute(
        image: &str,
        source: &str,
        static_order: &[String],
        needed: &[String],
        sizes: &HashMap<String, u64>,
    ) -> Coverage {
        let in_static: HashSet<&str> = static_order.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let mut c = Coverage {
            image: image.to_string(),
            source: source.to_string(),
            static_files: in_static.len(),
            static_bytes: in_static.iter().filter_map(|p| sizes.get(*p)).sum(),
            needed_files: 0,
            needed_bytes: 0,
            covered_files: 0,
            covered_bytes: 0,
        };
        for p in needed {
            let Some(&size) = sizes.get(p) else { continue };
            if !seen.insert(p.as_str()) {
                continue;
            }
            c.needed_files += 1;
            c.needed_bytes += size;
            if in_static.contains(p.as_str()) {
                c.covered_files += 1;
                c.covered_bytes += size;
            }
        }
        c
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * part as f64 / whole as f64)
}

/// The coverage table in Markdown.
pub fn markdown(rows: &[Coverage]) -> String {
    let mut out = String::from("| image | needed by | static files | static MB | needed files | covered files | needed MB | covered MB | files covered | bytes covered |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {} |",
            r.image,
            r.source,
            r.static_files,
            r.static_bytes as f64 / 1e6,
            r.needed_files,
            r.covered_files,
            r.needed_bytes as f64 / 1e6,
            r.covered_bytes as f64 / 1e6,
            pct(r.covered_files as u64, r.needed_files as u64),
            pct(r.covered_bytes, r.needed_bytes),
        );
    }
    out
}

/// The coverage table as TSV.
pub fn tsv(rows: &[Coverage]) -> String {
    let mut out = String::from("image\tsource\tstatic_files\tstatic_bytes\tneeded_files\tneeded_bytes\tcovered_files\tcovered_bytes\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.image,
            r.source,
            r.static_files,
            r.static_bytes,
            r.needed_files,
            r.needed_bytes,
            r.covered_files,
            r.covered_bytes
        );
    }
    out
}

/// Reads contents from the registry by range, as the proxy does.
struct RangeReader<'a> {
    client: &'a RegistryClient,
    image: &'a ImageRecord,
    reference: &'a str,
}

impl ContentReader for RangeReader<'_> {
    fn read<'a>(
        &'a self,
        entry: &'a TocEntry,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, StartupError>> {
        Box::pin(async move {
            let fail = |reason: String| StartupError::Read {
                path: entry.entry.path.clone(),
                reason,
            };
            let (Some(content), Some(layer)) = (
                entry.entry.content,
                self.image.layers.get(entry.layer as usize),
            ) else {
                return Ok(Vec::new());
            };
            let mut stream = self
                .client
                .open_range(
                    self.reference,
                    &layer.digest,
                    content.offset,
                    content.compressed_len,
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut member = Vec::new();
            while let Some(chunk) = stream.next_chunk().await.map_err(|e| fail(e.to_string()))? {
                member.extend_from_slice(&chunk);
            }
            let mut out = decompress_member(layer.compression, &member, entry.entry.size)
                .map_err(|e| fail(e.to_string()))?;
            out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            Ok(out)
        })
    }
}

/// The static start-up order of `name:tag` in the corpus registry storage
/// `storage`, and the sizes of the image's regular files.
pub fn static_order(
    storage: &Path,
    scratch: &Path,
    name: &str,
    tag: &str,
) -> Result<(Vec<String>, HashMap<String, u64>)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let registry = Registry::start(
        storage,
        &addr,
        &addr,
        &Place::host(),
        &scratch.join("registry"),
    )?;
    let reference = format!("{addr}/{name}:{tag}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let db = Db::open(&scratch.join("db")).context("opening a scratch database")?;
        let client = RegistryClient::new(true);
        let report = index_image(&client, &db, &reference, None)
            .await
            .with_context(|| format!("indexing {reference}"))?;
        let record = db
            .image(&report.manifest_digest)?
            .context("the indexed image is not in the database")?;
        let toc = db.merged_toc(&report.manifest_digest)?;
        let reader = RangeReader {
            client: &client,
            image: &record,
            reference: &reference,
        };
        let order = analyze(&record.config_raw, &toc, &reader, StartupLimits::default())
            .await
            .with_context(|| format!("static order of {reference}"))?;
        let sizes = toc
            .iter()
            .filter(|e| e.entry.kind == starlight_proxy::format::EntryKind::File)
            .map(|e| (e.entry.path.clone(), e.entry.size))
            .collect();
        anyhow::Ok((order.paths, sizes))
    });
    registry.stop();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_files_and_bytes_of_needed_paths() {
        let sizes: HashMap<String, u64> = [("a", 100), ("b", 10), ("c", 1), ("d", 1000)]
            .into_iter()
            .map(|(p, s)| (p.to_string(), s))
            .collect();
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        // "dir" is not a regular file: not counted; "a" twice counts once.
        let c = Coverage::compute(
            "img",
            "trace",
            &s(&["a", "c"]),
            &s(&["a", "b", "a", "dir", "c"]),
            &sizes,
        );
        assert_eq!((c.static_files, c.static_bytes), (2, 101));
        assert_eq!((c.needed_files, c.needed_bytes), (3, 111));
        assert_eq!((c.covered_files, c.covered_bytes), (2, 101));
        let md = markdown(&[c]);
        assert!(md.contains("| 66.7% | 91.0% |"), "{md}");
    }
}
