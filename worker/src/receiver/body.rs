//! The receive itself: the first stream, its header and gate, then the
//! body, resumed on a new stream as often as it breaks until every content
//! arrived or [`ReceiveOptions::grace`] passed without progress.

use crate::proxy_addr::ProxyAddr;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};
use transport_quic::quic::{BundleStream, Client, ClientError};
use transport_quic::{Event, PayloadInfo, Request};

use super::{
    announce, check_resumed, pinned_image, Admit, AttemptReport, HeaderTx, PayloadError,
    PayloadWriter, ReceiveError, ReceiveOptions, ReceiveReport,
};
use crate::header_check::CheckedHeader;
use crate::store::Store;
use crate::waiters::{ContentState, ContentWaiters};

enum Msg {
    Begin(u32),
    Data(bytes::Bytes),
    End,
}

/// What the writer thread did with one stream's payloads.
struct Written {
    stored: usize,
    stored_bytes: u64,
    failed: Vec<[u8; 32]>,
    last_stored: Option<Instant>,
}

/// One writer thread: its payloads, one at a time, into the store.
fn write_payloads(
    mut rx: mpsc::Receiver<Msg>,
    payloads: &[PayloadInfo],
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
) -> Written {
    let (mut stored, mut failed, mut last_stored) = (0, Vec::new(), None);
    let mut stored_bytes = 0u64;
    let mut current: Option<Result<PayloadWriter, PayloadError>> = None;
    let mut fail = |err: PayloadError, sha: [u8; 32]| {
        error!(sha256 = %hex::encode(sha), "content refused, it will not be served: {err}");
        if !store.has(&sha) {
            waiters.set(sha, ContentState::Failed);
            failed.push(sha);
        }
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Begin(index) => {
                let Some(info) = payloads.get(index as usize) else {
                    continue;
                };
                current = Some(PayloadWriter::new(&store, index, info));
            }
            Msg::Data(data) => {
                if let Some(Ok(w)) = &mut current {
                    if let Err(e) = w.feed(&data) {
                        current = Some(Err(e));
                    }
                }
            }
            Msg::End => match current.take() {
                Some(Ok(w)) => {
                    let (sha, len) = (w.info().sha256, w.info().compressed_len);
                    match w.finish(&store) {
                        Ok(path) => {
                            debug!(path = %path.display(), "content stored");
                            waiters.set(sha, ContentState::Ready);
                            stored += 1;
                            stored_bytes += len;
                            last_stored = Some(Instant::now());
                        }
                        Err(e) => fail(e, sha),
                    }
                }
                Some(Err(e)) => {
                    let sha = payloads.get(e.index() as usize).map(|p| p.sha256);
                    if let Some(sha) = sha {
                        fail(e, sha);
                    }
                }
                None => {}
            },
        }
    }
    // A payload cut off mid-way is dropped with its temporary file.
    Written {
        stored,
        stored_bytes,
        failed,
        last_stored,
    }
}

/// Writer threads for one stream: payload `i` goes to thread `i % n`, so
/// decompression, hashing and file writes of consecutive payloads run on
/// every core while the stream is received (a single writer falls behind
/// the link on small cores, and a reader that waits on it lets the QUIC
/// receive window close).
struct Writers {
    threads: Vec<(mpsc::Sender<Msg>, tokio::task::JoinHandle<Written>)>,
    current: usize,
}

/// Messages that may wait in each writer thread's channel.
const WRITER_DEPTH: usize = 256;

impl Writers {
    fn start(header: &CheckedHeader, store: &Arc<Store>, waiters: &Arc<ContentWaiters>) -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        let payloads = Arc::new(header.payloads.clone());
        let threads = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel(WRITER_DEPTH);
                let (payloads, store, waiters) = (payloads.clone(), store.clone(), waiters.clone());
                let handle = tokio::task::spawn_blocking(move || {
                    write_payloads(rx, &payloads, store, waiters)
                });
                (tx, handle)
            })
            .collect();
        Writers {
            threads,
            current: 0,
        }
    }

    /// Sends `msg` to the thread of the current payload; `false` if it stopped.
    async fn send(&mut self, msg: Msg) -> bool {
        if let Msg::Begin(index) = msg {
            self.current = usize::try_from(index).unwrap_or(0) % self.threads.len().max(1);
        }
        match self.threads.get(self.current) {
            Some((tx, _)) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }

    /// Waits for every thread; what they did, summed.
    async fn finish(self) -> Result<Written, ReceiveError> {
        let mut all = Written {
            stored: 0,
            stored_bytes: 0,
            failed: Vec::new(),
            last_stored: None,
        };
        for (tx, handle) in self.threads {
            drop(tx);
            let w = handle
                .await
                .map_err(|e| ReceiveError::Writer(e.to_string()))?;
            all.stored += w.stored;
            all.stored_bytes += w.stored_bytes;
            all.failed.extend(w.failed);
            all.last_stored = all.last_stored.max(w.last_stored);
        }
        Ok(all)
    }
}

/// Receives the body of one stream; returns what it carried and what the
/// writers did with it.
async fn receive_body(
    stream: &mut BundleStream,
    header: &CheckedHeader,
    store: &Arc<Store>,
    waiters: &Arc<ContentWaiters>,
    options: &ReceiveOptions,
) -> Result<(AttemptReport, Written), ReceiveError> {
    let mut writers = Writers::start(header, store, waiters);
    let mut attempt = AttemptReport {
        payloads_announced: header.payloads.len(),
        ..AttemptReport::default()
    };
    loop {
        // A live stream that stays silent for the grace time counts as broken.
        let event = match tokio::time::timeout(options.grace, stream.next_event()).await {
            Ok(e) => e,
            Err(_) => {
                attempt.error = Some(format!("nothing received for {:?}", options.grace));
                break;
            }
        };
        let msg = match event {
            Ok(None) => break,
            Ok(Some(Event::PayloadBegin { index })) => Msg::Begin(index),
            Ok(Some(Event::PayloadData { data, .. })) => {
                attempt.payload_bytes += data.len() as u64;
                Msg::Data(data)
            }
            Ok(Some(Event::PayloadEnd { .. })) => Msg::End,
            Ok(Some(Event::End(_) | Event::Header(_))) => continue,
            Ok(Some(Event::Error(e))) => {
                attempt.error = Some(e.to_string());
                break;
            }
            Err(e) => {
                attempt.error = Some(e.to_string());
                break;
            }
        };
        if !writers.send(msg).await {
            attempt.error = Some("the payload writer stopped".into());
            break;
        }
    }
    let written = writers.finish().await?;
    attempt.bytes_received = stream.bytes_received();
    attempt.payloads_stored = written.stored;
    attempt.payload_bytes_stored = written.stored_bytes;
    Ok((attempt, written))
}

/// The stream's first event, waiting at most `header_wait` when given.
async fn first_event(
    stream: &mut BundleStream,
    header_wait: Option<std::time::Duration>,
) -> Result<Result<Option<Event>, ClientError>, (ReceiveError, bool)> {
    Ok(match header_wait {
        None => stream.next_event().await,
        Some(wait) => tokio::time::timeout(wait, stream.next_event())
            .await
            .map_err(|_| (ReceiveError::NoHeader, true))?,
    })
}

/// Opens a stream for `request` and checks its header; `Err` with the
/// reason and whether it is worth retrying.
async fn open(
    client: &Client,
    addr: &ProxyAddr,
    request: &Request,
    options: &ReceiveOptions,
    header_wait: Option<std::time::Duration>,
) -> Result<(BundleStream, CheckedHeader), (ReceiveError, bool)> {
    // Resolved at each connect: a reconnect follows a proxy that moved.
    let sock = addr
        .resolve()
        .await
        .map_err(|e| (ReceiveError::Resolve(format!("{addr}: {e}")), true))?;
    let mut stream = client
        .fetch(sock, &options.server_name, request)
        .await
        .map_err(|e| (ReceiveError::Fetch(e), true))?;
    // A first request may wait for the proxy to index the image: no bound
    // but the connection's. A resumed one is bounded by the grace time.
    let mut event = first_event(&mut stream, header_wait).await?;
    if event
        .as_ref()
        .is_err_and(ClientError::is_unsupported_version)
    {
        // A proxy older than protocol version 4: ask again in version 3 (the
        // header then does not say which held images were used).
        warn!(image = %request.image, "the proxy predates protocol version 4: asking in version 3");
        stream = client
            .fetch_in(sock, &options.server_name, request, 3)
            .await
            .map_err(|e| (ReceiveError::Fetch(e), true))?;
        event = first_event(&mut stream, header_wait).await?;
    }
    let header = match event {
        Ok(Some(Event::Header(h))) => {
            CheckedHeader::new(h).map_err(|e| (ReceiveError::Refused(e), false))?
        }
        Ok(_) => return Err((ReceiveError::NoHeader, true)),
        Err(e) => return Err((ReceiveError::Fetch(e), true)),
    };
    // Nothing of a header that does not follow from its image's manifest is
    // used: no content announced or written, no header handed on (so the
    // caller records and mounts nothing).
    if let Err(e) = crate::verify::verify_header(&header, &request.image) {
        error!(image = %request.image, manifest = %header.manifest_digest, "bundle header refused: {e}");
        return Err((ReceiveError::Verify(e), false));
    }
    // Which held images the proxy planned against (protocol version 4; an
    // older proxy does not say): a held image it could not use means a
    // bigger bundle.
    match stream.held_used() {
        Some(used) => tracing::info!(
            image = %request.image,
            held_named = request.held_images.len(),
            held_used = ?used,
            "bundle header: held images used"
        ),
        None => {
            tracing::debug!(image = %request.image, "the proxy does not say which held images it used")
        }
    }
    Ok((stream, header))
}

/// The contents of `header` the store holds (each verified when stored).
fn held_contents(header: &CheckedHeader, store: &Store) -> Vec<[u8; 32]> {
    let mut seen = HashSet::new();
    header
        .toc
        .iter()
        .filter_map(|e| e.sha256)
        .filter(|sha| seen.insert(*sha) && store.has(sha))
        .collect()
}

/// Reconnects with backoff until a resumed stream's header is accepted;
/// `None` once `grace` passed since `last_progress` (or on a header that
/// does not continue `first`), with the reason.
async fn reconnect(
    client: &Client,
    addr: &ProxyAddr,
    request: &Request,
    first: &CheckedHeader,
    (store, options): (&Store, &ReceiveOptions),
    last_progress: Instant,
) -> Result<(BundleStream, CheckedHeader), String> {
    let mut n = 0u32;
    loop {
        let left = options.grace.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            return Err(format!("no progress for {:?}", options.grace));
        }
        tokio::time::sleep(options.backoff.delay(n).min(left)).await;
        n += 1;
        if last_progress.elapsed() >= options.grace {
            return Err(format!("no progress for {:?}", options.grace));
        }
        let held = held_contents(first, store);
        let resumed = Request {
            image: pinned_image(&request.image, &first.manifest_digest),
            held_payloads: held,
            ..request.clone()
        };
        let held_n = resumed.held_payloads.len();
        // A connect to a dead address may hang for the handshake timeout:
        // each attempt is bounded by the grace time left.
        let left = options.grace.saturating_sub(last_progress.elapsed());
        let attempt = tokio::time::timeout(left, open(client, addr, &resumed, options, Some(left)));
        let Ok(opened) = attempt.await else {
            return Err(format!("no progress for {:?}", options.grace));
        };
        match opened {
            Ok((stream, header)) => {
                if let Err(e) = check_resumed(first, &header) {
                    error!(image = %request.image, "resumed bundle refused: {e}");
                    return Err(e.to_string());
                }
                info!(
                    image = %request.image,
                    reconnect = n,
                    held = held_n,
                    payloads = header.payloads.len(),
                    "bundle resumed"
                );
                return Ok((stream, header));
            }
            Err((e, true)) => {
                warn!(image = %request.image, reconnect = n, "reconnecting failed: {e}");
            }
            Err((e, false)) => return Err(e.to_string()),
        }
    }
}

pub(super) async fn run(
    client: Arc<Client>,
    addr: ProxyAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
    header_tx: HeaderTx,
) -> Result<ReceiveReport, ReceiveError> {
    let t0 = Instant::now();
    let (mut stream, header) = open(&client, &addr, &request, &options, None)
        .await
        .map_err(|(e, _)| e)?;
    let header = Arc::new(header);
    let time_to_header = t0.elapsed();
    let header_tx = match header_tx {
        HeaderTx::Gated(tx) => {
            let (admit_tx, admit_rx) = oneshot::channel();
            if tx.send((header.clone(), Admit(admit_tx))).is_err() {
                return Err(ReceiveError::NotAdmitted);
            }
            admit_rx.await.map_err(|_| ReceiveError::NotAdmitted)?;
            None
        }
        HeaderTx::Plain(tx) => Some(tx),
    };
    let expected = announce(&header, &store, &waiters);
    info!(
        image = %request.image,
        manifest = %header.manifest_digest,
        entries = header.toc.len(),
        payloads = header.payloads.len(),
        ?time_to_header,
        "bundle header received"
    );
    // The caller may have stopped listening: receiving goes on regardless.
    if let Some(tx) = header_tx {
        let _ = tx.send(header.clone());
    }

    let (mut attempts, mut failed, mut stored) = (Vec::new(), Vec::new(), 0);
    let mut current = header.clone();
    let mut last_progress = Instant::now();
    let gave_up = loop {
        let result = receive_body(&mut stream, &current, &store, &waiters, &options).await;
        let (attempt, written) = match result {
            Ok(r) => r,
            Err(e) => {
                for sha in &expected {
                    waiters.release(sha, true);
                }
                return Err(e);
            }
        };
        stored += written.stored;
        failed.extend(written.failed);
        if let Some(t) = written.last_stored {
            last_progress = last_progress.max(t);
        }
        let Some(reason) = attempt.error.clone() else {
            attempts.push(attempt);
            break None;
        };
        let pending = expected
            .iter()
            .filter(|sha| waiters.state(sha) == Some(ContentState::Pending) && !store.has(sha))
            .count();
        warn!(
            image = %request.image,
            attempt = attempts.len() + 1,
            received = attempt.bytes_received,
            payload_bytes = attempt.payload_bytes,
            stored = attempt.payloads_stored,
            pending,
            "bundle stream broke: {reason}; resuming"
        );
        attempts.push(attempt);
        if pending == 0 {
            break None;
        }
        match reconnect(
            &client,
            &addr,
            &request,
            &header,
            (&store, &options),
            last_progress,
        )
        .await
        {
            Ok((s, h)) => {
                stream = s;
                current = Arc::new(h);
                last_progress = Instant::now();
            }
            Err(why) => break Some(format!("{reason}; then {why}")),
        }
    };
    let time_to_end = t0.elapsed();
    let mut n = 0;
    for sha in &expected {
        if waiters.release(sha, gave_up.is_some()) {
            failed.push(*sha);
            n += 1;
        }
    }
    let bytes_received = attempts.iter().map(|a| a.bytes_received).sum();
    let payload_bytes = attempts.iter().map(|a| a.payload_bytes).sum();
    match &gave_up {
        Some(reason) => error!(
            image = %request.image,
            failed = n,
            attempts = attempts.len(),
            "bundle incomplete ({reason}): {n} contents failed, waiting opens get EIO"
        ),
        None => info!(
            image = %request.image,
            stored,
            attempts = attempts.len(),
            bytes_received,
            payload_bytes,
            ?time_to_end,
            "bundle received"
        ),
    }
    Ok(ReceiveReport {
        header,
        time_to_header,
        time_to_end,
        stored,
        failed,
        bytes_received,
        payload_bytes,
        attempts,
        stream_error: gave_up,
    })
}
