//! Checks decoded messages against the [`Limits`] and their internal references.

use super::trace::{RanksQuery, RanksReply, TraceAck, TraceUpload};
use super::types::{ErrorFrame, Header, Request, Source};
use super::{Limits, ProtocolError};

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
    for e in &h.toc {
        string("path length", &e.path, limits)?;
        if let Some(link) = &e.link {
            string("link target length", link, limits)?;
        }
        count(
            "extended attributes on one entry",
            e.xattrs.len(),
            limits.max_xattrs,
        )?;
        for (name, value) in &e.xattrs {
            string("extended attribute name length", name, limits)?;
            count(
                "extended attribute value size",
                value.len(),
                limits.max_xattr_value,
            )?;
        }
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
    }
    validate_layer_tables(h, limits)
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
        string("layer entry path length", &e.path, limits)?;
        if let Some(link) = &e.link {
            string("layer entry link target length", link, limits)?;
        }
        count(
            "extended attributes on one layer entry",
            e.xattrs.len(),
            limits.max_xattrs,
        )?;
        for (name, value) in &e.xattrs {
            string("extended attribute name length", name, limits)?;
            count(
                "extended attribute value size",
                value.len(),
                limits.max_xattr_value,
            )?;
        }
    }
    Ok(())
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
