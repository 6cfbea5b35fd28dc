//! Streams a bundle's payloads from the registry to the client: range
//! requests run several at a time, but payloads go out strictly in plan
//! order. Each request's bytes are held in memory until sent, so memory is
//! bounded by `(in_flight + 1) × max_range` whatever the image size (the
//! requests in flight, or done and waiting for their turn, plus the one
//! being sent).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tracing::{debug, warn};
use transport_quic::quic::{BundleWriter, HandlerError};
use transport_quic::ErrorCode;

use super::pieces::Piece;
use crate::registry::{RangeError, RegistryClient};

/// How range requests are run.
#[derive(Debug, Clone, Copy)]
pub struct FetchPolicy {
    /// Requests in flight at once (at least 1).
    pub in_flight: usize,
    /// Retries after a transient error.
    pub retries: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
}

/// Reads one piece whole, retrying transient failures.
async fn fetch_piece(
    registry: &RegistryClient,
    reference: &str,
    piece: &Piece,
    policy: FetchPolicy,
) -> Result<Vec<u8>, RangeError> {
    if piece.len == 0 {
        return Ok(Vec::new());
    }
    let mut attempt = 0u32;
    loop {
        match fetch_once(registry, reference, piece).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.transient && attempt < policy.retries => {
                let wait = policy.backoff.saturating_mul(1u32 << attempt.min(16));
                warn!(
                    blob = %piece.layer_digest,
                    offset = piece.offset,
                    len = piece.len,
                    attempt = attempt + 1,
                    error = %e,
                    "range request failed: retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn fetch_once(
    registry: &RegistryClient,
    reference: &str,
    piece: &Piece,
) -> Result<Vec<u8>, RangeError> {
    let mut body = registry
        .open_range(reference, &piece.layer_digest, piece.offset, piece.len)
        .await?;
    // The range stream refuses more than `len` bytes, so this never grows.
    let mut buf = Vec::with_capacity(usize::try_from(piece.len).unwrap_or(0));
    while let Some(chunk) = body.next_chunk().await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Sends every payload of `pieces` (fetched from `reference`'s repository)
/// to `out`, in order. Returns the payload bytes sent.
pub async fn stream_payloads(
    registry: Arc<RegistryClient>,
    reference: String,
    pieces: Vec<Piece>,
    policy: FetchPolicy,
    out: &mut BundleWriter,
) -> Result<u64, HandlerError> {
    let registry = &registry;
    let reference = reference.as_str();
    let total_pieces = pieces.len();
    let mut fetched = stream::iter(pieces.into_iter().map(|piece| async move {
        let bytes = fetch_piece(registry, reference, &piece, policy).await;
        (piece, bytes)
    }))
    .buffered(policy.in_flight.max(1));
    let mut sent = 0u64;
    let mut done = 0usize;
    while let Some((piece, bytes)) = fetched.next().await {
        let bytes = bytes.map_err(|e| {
            HandlerError::new(
                ErrorCode::Upstream,
                format!("reading payloads from the registry: {e}"),
            )
        })?;
        for s in &piece.slices {
            // Slices lie within the piece (by construction, and the range
            // stream delivered exactly `piece.len` bytes); check anyway.
            let data = usize::try_from(s.start)
                .ok()
                .zip(usize::try_from(s.start + s.len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| {
                    HandlerError::new(
                        ErrorCode::Internal,
                        format!("payload {} lies outside its range request", s.payload),
                    )
                })?;
            if s.begin {
                out.begin_payload(s.payload).await?;
            }
            out.send_data(data).await?;
            sent += s.len;
            if s.end {
                out.end_payload().await?;
            }
        }
        done += 1;
    }
    debug!(
        pieces = done,
        of = total_pieces,
        bytes = sent,
        "payloads sent"
    );
    Ok(sent)
}
