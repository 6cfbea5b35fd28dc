//! Streams a bundle's payloads from the registry to the client: range
//! requests run several at a time, but payloads go out strictly in plan
//! order. Each request's bytes are held in memory until sent, so memory is
//! bounded by `(in_flight + 1) × max_range` whatever the image size (the
//! requests in flight, or done and waiting for their turn, plus the one
//! being sent). With the shared payload cache ([`super::cache`]) a piece's
//! bytes are a shared reference to the cached range: bundles reading the same
//! range hold one copy between them, and the cache itself is bounded.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tracing::{debug, warn};
use transport_quic::quic::{BundleWriter, HandlerError};
use transport_quic::ErrorCode;

use super::cache::{PayloadCache, PieceKey};
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
    /// Pace the body to this many bytes per second (none: unpaced).
    pub rate_limit: Option<u64>,
}

/// The largest piece of payload sent at once when the body is paced.
const PACED_CHUNK: usize = 64 << 10;

/// Paces a byte stream to a rate: before each send, sleeps until the bytes
/// sent so far (this send included) are due.
struct Pacer {
    rate: u64,
    start: tokio::time::Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate: rate.max(1),
            start: tokio::time::Instant::now(),
            sent: 0,
        }
    }

    /// Waits until `len` more bytes may go.
    async fn admit(&mut self, len: usize) {
        self.sent += len as u64;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        tokio::time::sleep_until(self.start + due).await;
    }
}

/// Buffers for range requests, shared by every bundle of a server and
/// reused from request to request. Each is allocated once with room for the
/// largest request, so steady serving allocates nothing and the allocator
/// cannot fragment under churn; at most `keep` free buffers are kept.
#[derive(Debug, Clone)]
pub struct BufferPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes, keeping at most `keep` free.
    pub fn new(capacity: u64, keep: usize) -> Self {
        BufferPool {
            free: Arc::default(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            keep,
        }
    }

    fn take(&self) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// Reads one piece whole into a pooled buffer, retrying transient failures.
async fn fetch_piece(
    registry: &RegistryClient,
    reference: &str,
    piece: &Piece,
    policy: FetchPolicy,
    pool: &BufferPool,
) -> Result<Vec<u8>, RangeError> {
    let mut buf = pool.take();
    if piece.len == 0 {
        return Ok(buf);
    }
    let mut attempt = 0u32;
    loop {
        buf.clear();
        match fetch_once(registry, reference, piece, &mut buf).await {
            Ok(()) => return Ok(buf),
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
            Err(e) => {
                pool.give(buf);
                return Err(e);
            }
        }
    }
}

async fn fetch_once(
    registry: &RegistryClient,
    reference: &str,
    piece: &Piece,
    buf: &mut Vec<u8>,
) -> Result<(), RangeError> {
    let mut body = registry
        .open_range(reference, &piece.layer_digest, piece.offset, piece.len)
        .await?;
    // The range stream refuses more than `len` (≤ the pool's capacity)
    // bytes, so this never reallocates.
    while let Some(chunk) = body.next_chunk().await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(())
}

/// A piece's bytes: a pooled buffer (no cache) or a shared cached range.
enum PieceBytes {
    Pooled(Vec<u8>),
    Shared(bytes::Bytes),
}

impl PieceBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            PieceBytes::Pooled(v) => v,
            PieceBytes::Shared(b) => b,
        }
    }
}

/// Reads one piece, through `cache` when there is one (one registry read
/// per range for every bundle of the proxy).
async fn fetch_shared(
    registry: &RegistryClient,
    reference: &str,
    piece: &Piece,
    policy: FetchPolicy,
    pool: &BufferPool,
    cache: Option<&PayloadCache>,
) -> Result<PieceBytes, Arc<RangeError>> {
    let Some(cache) = cache.filter(|_| piece.len > 0) else {
        return fetch_piece(registry, reference, piece, policy, pool)
            .await
            .map(PieceBytes::Pooled)
            .map_err(Arc::new);
    };
    let key = PieceKey {
        blob: piece.layer_digest.clone(),
        offset: piece.offset,
        len: piece.len,
    };
    let unpooled = BufferPool::new(piece.len, 0);
    cache
        .get_or_fetch(&key, || async {
            fetch_piece(registry, reference, piece, policy, &unpooled).await
        })
        .await
        .map(PieceBytes::Shared)
}

/// A spawned task, aborted when dropped (a bundle abandoned mid-way stops
/// its range requests).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Sends every payload of `pieces` (fetched from `reference`'s repository)
/// to `out`, in order. Returns the payload bytes sent.
pub async fn stream_payloads(
    registry: Arc<RegistryClient>,
    reference: String,
    pieces: Vec<Piece>,
    policy: FetchPolicy,
    pool: &BufferPool,
    cache: Option<Arc<PayloadCache>>,
    out: &mut BundleWriter,
) -> Result<u64, HandlerError> {
    let total_pieces = pieces.len();
    // Each request runs as its own task, so requests keep progressing while
    // this task waits for the client's flow control; `buffered` keeps at
    // most `in_flight` of them started ahead and yields them in order.
    // Dropping the stream (client gone, error) aborts the tasks.
    let mut fetched = stream::iter(pieces.into_iter().map(|piece| {
        let (registry, reference, pool) = (registry.clone(), reference.clone(), pool.clone());
        let cache = cache.clone();
        AbortOnDrop(tokio::spawn(async move {
            let bytes = fetch_shared(
                &registry,
                &reference,
                &piece,
                policy,
                &pool,
                cache.as_deref(),
            )
            .await;
            (piece, bytes)
        }))
    }))
    .buffered(policy.in_flight.max(1));
    let mut sent = 0u64;
    let mut done = 0usize;
    let mut pacer = policy.rate_limit.map(Pacer::new);
    while let Some(joined) = fetched.next().await {
        let (piece, bytes) = joined.map_err(|e| {
            HandlerError::new(ErrorCode::Internal, format!("range request task: {e}"))
        })?;
        let bytes = bytes.map_err(|e| {
            // The full error (it may quote the registry's answer) stays in the log.
            warn!(image = %reference, error = %e, "range request failed");
            HandlerError::new(
                ErrorCode::Upstream,
                format!(
                    "reading payloads from the registry: {}",
                    e.error.public_message()
                ),
            )
        })?;
        for s in &piece.slices {
            // Slices lie within the piece (by construction, and the range
            // stream delivered exactly `piece.len` bytes); check anyway.
            let data = usize::try_from(s.start)
                .ok()
                .zip(usize::try_from(s.start + s.len).ok())
                .and_then(|(a, b)| bytes.as_slice().get(a..b))
                .ok_or_else(|| {
                    HandlerError::new(
                        ErrorCode::Internal,
                        format!("payload {} lies outside its range request", s.payload),
                    )
                })?;
            if s.begin {
                out.begin_payload(s.payload).await?;
            }
            match &mut pacer {
                None => out.send_data(data).await?,
                Some(p) => {
                    for chunk in data.chunks(PACED_CHUNK) {
                        p.admit(chunk.len()).await;
                        out.send_data(chunk).await?;
                    }
                }
            }
            sent += s.len;
            if s.end {
                out.end_payload().await?;
            }
        }
        if let PieceBytes::Pooled(buf) = bytes {
            pool.give(buf);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_keeps_the_rate() {
        let mut p = Pacer::new(10_000_000);
        let t0 = tokio::time::Instant::now();
        for _ in 0..30 {
            p.admit(100_000).await;
        }
        // 3 MB at 10 MB/s: 300 ms.
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(295) && elapsed < Duration::from_millis(1000),
            "{elapsed:?}"
        );
    }
}
