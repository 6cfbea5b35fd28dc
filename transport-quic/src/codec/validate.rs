//! Checks decoded messages against the [`Limits`] and their internal references.

use super::trace::{RanksQuery, RanksReply, TraceAck, TraceUpload};
use std::collections::HashSet;

use super::error::EntryProblem;
use super::types::{EntryKind, ErrorFrame, Header, Request, Source, TocEntry};
use super::{Limits, ProtocolError};

/// Longest path component (and extended attribute name) a header may carry, as
/// Linux's `NAME_MAX` and `XATTR_NAME_MAX`.
pub const MAX_NAME: usize = 255;
/// Longest symbolic link target a header may carry (Linux's `PATH_MAX` less the NUL).
pub const MAX_LINK_TARGET: usize = 4095;

fn count(what: &'static str, n: usize, limit: u32) -> Result<(), ProtocolError> {
    if n as u64 > u64::from(limit) {
        return Err(ProtocolError::LimitExceeded {
            what,
            count: n as u64,
            limit: u64::from(limit),
        });
    }
    Ok(())
}

fn string(what: &'static str, s: &str, limits: &Limits) -> Result<(), ProtocolError> {
    count(what, s.len(), limits.max_string)
}

/// Checks a request's counts and string lengths.
pub fn validate_request(req: &Request, limits: &Limits) -> Result<(), ProtocolError> {
    string("token length", &req.token, limits)?;
    string("image reference length", &req.image, limits)?;
    if let Some(p) = &req.platform {
        string("platform length", p, limits)?;
    }
    count("held images", req.held_images.len(), limits.max_held_images)?;
    for d in &req.held_images {
        string("held image digest length", d, limits)?;
    }
    count(
        "held payloads",
        req.held_payloads.len(),
        limits.max_held_payloads,
    )?;
    Ok(())
}

/// Checks an error frame's message length.
pub fn validate_error(frame: &ErrorFrame, limits: &Limits) -> Result<(), ProtocolError> {
    string("error message length", &frame.message, limits)
}

/// Checks a header's counts, string lengths and that every index it holds points inside
/// the table it refers to.
pub fn validate_header(h: &Header, limits: &Limits) -> Result<(), ProtocolError> {
    string("manifest digest length", &h.manifest_digest, limits)?;
    string("manifest media type length", &h.manifest_media_type, limits)?;
    count("manifest size", h.manifest.len(), limits.max_document)?;
    count("config size", h.config.len(), limits.max_document)?;
    count("layers", h.layers.len(), limits.max_layers)?;
    for l in &h.layers {
        string("layer digest length", l, limits)?;
    }
    count("image layers", h.image_layers.len(), limits.max_layers)?;
    let n_layers = h.layers.len();
    for &i in &h.image_layers {
        if i as usize >= n_layers {
            return Err(ProtocolError::InvalidHeader(format!(
                "image layer index {i} is outside the layer table ({n_layers} layers)"
            )));
        }
    }
    count("payloads", h.payloads.len(), limits.max_payloads)?;
    count(
        "table of contents entries",
        h.toc.len(),
        limits.max_toc_entries,
    )?;
    let n_payloads = h.payloads.len();
    for (index, e) in h.toc.iter().enumerate() {
        entry_strings(&e.path, e.link.as_deref(), &e.xattrs, limits)?;
        check_entry_names(e).map_err(|problem| bad_entry(index, e, problem))?;
        if e.layer as usize >= n_layers {
            return Err(ProtocolError::InvalidHeader(format!(
                "entry {:?} names layer {} outside the layer table ({n_layers} layers)",
                e.path, e.layer
            )));
        }
        if let Source::Payload(p) = e.source {
            if p as usize >= n_payloads {
                return Err(ProtocolError::InvalidHeader(format!(
                    "entry {:?} names payload {p} outside the payload table ({n_payloads} payloads)",
                    e.path
                )));
            }
        }
        if e.kind == EntryKind::File && e.size > 0 && e.sha256.is_none() {
            return Err(bad_entry(index, e, EntryProblem::MissingHash(e.size)));
        }
    }
    check_unique_paths(&h.toc)?;
    check_sums(h)?;
    validate_layer_tables(h, limits)
}

/// Bounds one entry's path, link target and extended attributes (of the
/// merged table or of a layer's table alike).
fn entry_strings(
    path: &str,
    link: Option<&str>,
    xattrs: &[(String, Vec<u8>)],
    limits: &Limits,
) -> Result<(), ProtocolError> {
    string("path length", path, limits)?;
    if let Some(link) = link {
        string("link target length", link, limits)?;
    }
    count(
        "extended attributes on one entry",
        xattrs.len(),
        limits.max_xattrs,
    )?;
    for (name, value) in xattrs {
        string("extended attribute name length", name, limits)?;
        count(
            "extended attribute value size",
            value.len(),
            limits.max_xattr_value,
        )?;
    }
    Ok(())
}

fn bad_entry(index: usize, e: &TocEntry, problem: EntryProblem) -> ProtocolError {
    const SHOWN: usize = 200;
    let mut path = e.path.clone();
    if path.len() > SHOWN {
        let mut end = SHOWN;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
        path.push('…');
    }
    ProtocolError::BadEntry {
        index,
        path,
        problem,
    }
}

/// Checks a relative path: components separated by single `/`, none empty, `.` or
/// `..`, none longer than [`MAX_NAME`], no NUL, no leading `/`. The empty path is the
/// root (allowed only where `root_ok`).
fn check_relative_path(what: &'static str, path: &str, root_ok: bool) -> Result<(), EntryProblem> {
    if path.as_bytes().contains(&0) {
        return Err(EntryProblem::Nul(what));
    }
    if path.is_empty() {
        return if root_ok {
            Ok(())
        } else {
            Err(EntryProblem::NotRelative(what))
        };
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(EntryProblem::NotRelative(what));
        }
        if c.len() > MAX_NAME {
            return Err(EntryProblem::ComponentTooLong { what, len: c.len() });
        }
    }
    Ok(())
}

// ---- Per-layer tables (the image's commitment; see `crate::commit`). ----

/// Bounds the header's per-layer tables: at most `max_layers` tables and
/// `max_toc_entries` entries in all (counted without overflow), every string
/// and extended attribute within the same bounds as the merged table. That
/// they match the image (one per wanted layer, each as its annotation
/// commits) is the worker's check, not the codec's.
pub fn validate_layer_tables(h: &Header, limits: &Limits) -> Result<(), ProtocolError> {
    count("per-layer tables", h.layer_tocs.len(), limits.max_layers)?;
    let total = h
        .layer_tocs
        .iter()
        .fold(0usize, |n, t| n.saturating_add(t.len()));
    count("per-layer table entries", total, limits.max_toc_entries)?;
    for e in h.layer_tocs.iter().flatten() {
        entry_strings(&e.path, e.link.as_deref(), &e.xattrs, limits)?;
    }
    Ok(())
}

/// The per-entry name rules: path, link target, extended attribute names.
fn check_entry_names(e: &TocEntry) -> Result<(), EntryProblem> {
    check_relative_path("path", &e.path, true)?;
    match (e.kind, &e.link) {
        (EntryKind::Hardlink, Some(target)) => {
            check_relative_path("hard link target", target, false)?
        }
        (EntryKind::Symlink, Some(target)) => {
            if target.as_bytes().contains(&0) {
                return Err(EntryProblem::Nul("symbolic link target"));
            }
            if target.is_empty() || target.len() > MAX_LINK_TARGET {
                return Err(EntryProblem::BadLink);
            }
        }
        (EntryKind::Hardlink | EntryKind::Symlink, None) => return Err(EntryProblem::BadLink),
        (_, Some(target)) if target.as_bytes().contains(&0) => {
            return Err(EntryProblem::Nul("link target"))
        }
        _ => {}
    }
    for (name, _) in &e.xattrs {
        if name.as_bytes().contains(&0) {
            return Err(EntryProblem::Nul("extended attribute name"));
        }
        if name.is_empty() {
            return Err(EntryProblem::NotRelative("extended attribute name"));
        }
        if name.len() > MAX_NAME {
            return Err(EntryProblem::ComponentTooLong {
                what: "extended attribute name",
                len: name.len(),
            });
        }
    }
    Ok(())
}

/// No two entries share a path. A table sorted by path (as the proxy sends it) is
/// checked in one pass without memory; any other order through a set.
fn check_unique_paths(toc: &[TocEntry]) -> Result<(), ProtocolError> {
    let sorted = toc.windows(2).all(|w| w[0].path < w[1].path);
    if sorted {
        return Ok(());
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(toc.len());
    for (index, e) in toc.iter().enumerate() {
        if !seen.insert(e.path.as_str()) {
            return Err(bad_entry(index, e, EntryProblem::Duplicate));
        }
    }
    Ok(())
}

/// The file sizes, payload sizes and compressed lengths each add up within `u64`.
fn check_sums(h: &Header) -> Result<(), ProtocolError> {
    fn sum(what: &'static str, sizes: impl Iterator<Item = u64>) -> Result<(), ProtocolError> {
        let mut sizes = sizes;
        sizes
            .try_fold(0u64, u64::checked_add)
            .map(|_| ())
            .ok_or(ProtocolError::SizeOverflow { what })
    }
    let files = h.toc.iter().filter(|e| e.kind == EntryKind::File);
    sum("file sizes", files.map(|e| e.size))?;
    sum("payload sizes", h.payloads.iter().map(|p| p.size))?;
    sum(
        "payload compressed lengths",
        h.payloads.iter().map(|p| p.compressed_len),
    )
}

/// Checks a trace upload's counts and string lengths.
pub fn validate_trace_upload(t: &TraceUpload, limits: &Limits) -> Result<(), ProtocolError> {
    string("token length", &t.token, limits)?;
    let trace = &t.trace;
    string("trace id length", &trace.id, limits)?;
    if trace.id.is_empty() {
        return Err(ProtocolError::InvalidHeader("the trace has no id".into()));
    }
    string("image reference length", &trace.image, limits)?;
    string("manifest digest length", &trace.manifest_digest, limits)?;
    count("trace opens", trace.opens.len(), limits.max_toc_entries)?;
    for o in &trace.opens {
        string("path length", &o.path, limits)?;
    }
    Ok(())
}

/// Checks a ranks query's string lengths.
pub fn validate_ranks_query(q: &RanksQuery, limits: &Limits) -> Result<(), ProtocolError> {
    string("token length", &q.token, limits)?;
    string("image reference length", &q.image, limits)
}

/// Checks a trace acknowledgement's id length.
pub fn validate_ack(a: &TraceAck, limits: &Limits) -> Result<(), ProtocolError> {
    string("trace id length", &a.id, limits)
}

/// Checks a ranks reply's counts and string lengths.
pub fn validate_ranks_reply(r: &RanksReply, limits: &Limits) -> Result<(), ProtocolError> {
    string("manifest digest length", &r.manifest_digest, limits)?;
    if let Some(from) = &r.inherited_from {
        string("inherited image length", from, limits)?;
    }
    count("ranked paths", r.ranks.len(), limits.max_toc_entries)?;
    for p in &r.ranks {
        string("path length", &p.path, limits)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::{PayloadCompression, PayloadInfo};

    fn file(path: &str, size: u64) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            sha256: (size > 0).then_some([7; 32]),
            layer: 0,
            source: Source::Held,
        }
    }

    fn header(toc: Vec<TocEntry>) -> Header {
        Header {
            layers: vec!["l".into()],
            image_layers: vec![0],
            toc,
            ..Header::default()
        }
    }

    fn problem(h: &Header) -> EntryProblem {
        match validate_header(h, &Limits::default()) {
            Err(ProtocolError::BadEntry { problem, .. }) => problem,
            other => panic!("expected a bad entry, got {other:?}"),
        }
    }

    #[test]
    fn plain_paths_pass() {
        let mut root = file("", 0);
        root.kind = EntryKind::Dir;
        let h = header(vec![
            root,
            file("a", 1),
            file("a.b/c d/é", 0),
            file(&"n".repeat(255), 3),
        ]);
        validate_header(&h, &Limits::default()).unwrap();
    }

    #[test]
    fn nul_bytes_are_refused_in_every_name() {
        assert_eq!(
            problem(&header(vec![file("a\0b", 0)])),
            EntryProblem::Nul("path")
        );
        let mut link = file("l", 0);
        link.kind = EntryKind::Symlink;
        link.link = Some("x\0".into());
        assert_eq!(
            problem(&header(vec![link])),
            EntryProblem::Nul("symbolic link target")
        );
        let mut x = file("x", 0);
        x.xattrs = vec![("user.\0".into(), vec![])];
        assert_eq!(
            problem(&header(vec![x])),
            EntryProblem::Nul("extended attribute name")
        );
    }

    #[test]
    fn long_components_are_refused() {
        let long = format!("a/{}/b", "n".repeat(256));
        assert_eq!(
            problem(&header(vec![file(&long, 0)])),
            EntryProblem::ComponentTooLong {
                what: "path",
                len: 256
            }
        );
        let mut x = file("x", 0);
        x.xattrs = vec![("u".repeat(256), vec![])];
        assert!(matches!(
            problem(&header(vec![x])),
            EntryProblem::ComponentTooLong { len: 256, .. }
        ));
    }

    #[test]
    fn dot_empty_and_absolute_components_are_refused() {
        for bad in [
            "..", "a/..", "../etc", ".", "./a", "a/./b", "a//b", "a/", "/etc", "/",
        ] {
            assert_eq!(
                problem(&header(vec![file(bad, 0)])),
                EntryProblem::NotRelative("path"),
                "{bad:?}"
            );
        }
        for bad in ["../../etc/shadow", "/etc/shadow", ""] {
            let mut l = file("l", 0);
            l.kind = EntryKind::Hardlink;
            l.link = Some(bad.into());
            assert_eq!(
                problem(&header(vec![l])),
                EntryProblem::NotRelative("hard link target"),
                "{bad:?}"
            );
        }
        let mut l = file("l", 0);
        l.kind = EntryKind::Symlink;
        assert_eq!(problem(&header(vec![l])), EntryProblem::BadLink);
    }

    #[test]
    fn duplicate_paths_are_refused_sorted_or_not() {
        let h = header(vec![file("a", 0), file("b", 0), file("b", 0)]);
        assert_eq!(problem(&h), EntryProblem::Duplicate);
        let h = header(vec![file("b", 0), file("a", 0), file("b", 0)]);
        match validate_header(&h, &Limits::default()) {
            Err(ProtocolError::BadEntry { index, problem, .. }) => {
                assert_eq!((index, problem), (2, EntryProblem::Duplicate));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_with_content_need_a_hash() {
        let mut f = file("f", 10);
        f.sha256 = None;
        assert_eq!(problem(&header(vec![f])), EntryProblem::MissingHash(10));
        // An empty file needs none.
        validate_header(&header(vec![file("e", 0)]), &Limits::default()).unwrap();
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let h = header(vec![
            file("a", u64::MAX / 2 + 1),
            file("b", u64::MAX / 2 + 1),
        ]);
        assert_eq!(
            validate_header(&h, &Limits::default()),
            Err(ProtocolError::SizeOverflow { what: "file sizes" })
        );
        let p = PayloadInfo {
            sha256: [0; 32],
            compression: PayloadCompression::Zstd,
            compressed_len: 1,
            size: u64::MAX,
        };
        let mut h = header(vec![]);
        h.payloads = vec![p.clone(), p.clone()];
        assert_eq!(
            validate_header(&h, &Limits::default()),
            Err(ProtocolError::SizeOverflow {
                what: "payload sizes"
            })
        );
        h.payloads = vec![
            PayloadInfo {
                compressed_len: u64::MAX,
                size: 1,
                ..p.clone()
            },
            PayloadInfo {
                compressed_len: 1,
                size: 1,
                ..p
            },
        ];
        assert_eq!(
            validate_header(&h, &Limits::default()),
            Err(ProtocolError::SizeOverflow {
                what: "payload compressed lengths"
            })
        );
    }

    #[test]
    fn errors_name_the_entry_without_echoing_megabytes() {
        let long = format!("{}\0", "p/".repeat(20_000));
        let err = validate_header(&header(vec![file(&long, 0)]), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("NUL"), "{err}");
        assert!(err.len() < 500, "{} bytes", err.len());
    }
}
