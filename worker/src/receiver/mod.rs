//! Receives one bundle from the proxy into the content store.
//!
//! [`start`] sends the request and returns at once with a [`Receiving`]:
//! its `header` resolves as soon as the bundle's header arrived (so the
//! caller can mount the image before any content), its `done` when the
//! bundle is over. Payloads are decompressed, hashed and written on a
//! blocking thread, overlapping with receiving; each verified content is
//! renamed into the store and its waiters woken ([`ContentWaiters`]). A
//! corrupt payload fails at once; if the stream breaks, every content still
//! pending fails after [`ReceiveOptions::grace`].

mod payload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info};
use transport_quic::quic::{Client, ClientError};
use transport_quic::{Event, Header, PayloadInfo, Request, Source};

pub use payload::{PayloadError, PayloadWriter};

use crate::header_check::{CheckedHeader, HeaderError};
use crate::store::Store;
use crate::waiters::{ContentState, ContentWaiters};

/// How to receive a bundle.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The name the proxy's certificate must be valid for.
    pub server_name: String,
    /// How long contents still pending wait after the stream broke before
    /// they fail (and the opens waiting on them with `EIO`).
    pub grace: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            server_name: "localhost".into(),
            grace: Duration::from_secs(30),
        }
    }
}

/// Why a bundle could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The request failed before the header arrived.
    #[error("fetching the bundle failed before its header: {0}")]
    Fetch(ClientError),
    /// The stream ended without a header.
    #[error("the bundle ended without a header")]
    NoHeader,
    /// The header does not follow from the image's manifest.
    #[error("the bundle header does not follow from the image's manifest: {0}")]
    Verify(crate::verify::VerifyError),
    /// The header failed the worker's checks: nothing was stored.
    #[error("the bundle's header is refused: {0}")]
    Refused(HeaderError),
    /// The caller did not admit the header ([`start_gated`]): nothing was stored.
    #[error("the bundle's header was not admitted")]
    NotAdmitted,
    /// The writer thread died.
    #[error("the payload writer failed: {0}")]
    Writer(String),
}

/// What a finished receive did.
#[derive(Debug, Clone)]
pub struct ReceiveReport {
    /// The header of the bundle.
    pub header: Arc<CheckedHeader>,
    /// From the request to the header.
    pub time_to_header: Duration,
    /// From the request to the end of the stream (complete or broken).
    pub time_to_end: Duration,
    /// Payloads verified and stored.
    pub stored: usize,
    /// SHA-256 of the contents that failed (corrupt, or never arrived).
    pub failed: Vec<[u8; 32]>,
    /// Bytes received on the stream (framing included).
    pub bytes_received: u64,
    /// Why the stream broke, if it did (`None`: the bundle arrived whole).
    pub stream_error: Option<String>,
}

/// A bundle being received.
pub struct Receiving {
    /// Resolves with the header as soon as it arrived (and its contents were
    /// announced to the waiters); dropped if the fetch failed before or the
    /// header was refused.
    pub header: oneshot::Receiver<Arc<CheckedHeader>>,
    /// Resolves when the bundle is over and every content is settled.
    pub done: JoinHandle<Result<ReceiveReport, ReceiveError>>,
}

/// Starts receiving the bundle for `request` from the proxy at `addr`.
pub fn start(
    client: Arc<Client>,
    addr: SocketAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
) -> Receiving {
    let (header_tx, header_rx) = oneshot::channel();
    let done = tokio::spawn(run(
        client,
        addr,
        request,
        store,
        waiters,
        options,
        HeaderTx::Plain(header_tx),
    ));
    Receiving {
        header: header_rx,
        done,
    }
}

/// Lets a gated receive ([`start_gated`]) go on past its header.
#[derive(Debug)]
pub struct Admit(oneshot::Sender<()>);

impl Admit {
    /// The header is accepted: announce and store its contents. Dropping the
    /// `Admit` instead ends the receive with [`ReceiveError::NotAdmitted`].
    pub fn admit(self) {
        let _ = self.0.send(());
    }
}

/// A bundle being received that waits, after its (checked) header, for the
/// caller's [`Admit`] before it announces or stores anything.
pub struct GatedReceiving {
    /// Resolves with the checked header and its gate.
    pub header: oneshot::Receiver<(Arc<CheckedHeader>, Admit)>,
    /// Resolves when the bundle is over.
    pub done: JoinHandle<Result<ReceiveReport, ReceiveError>>,
}

/// Like [`start`], but nothing is announced or stored until the caller
/// admits the header (after checking it against what it holds).
pub fn start_gated(
    client: Arc<Client>,
    addr: SocketAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
) -> GatedReceiving {
    let (header_tx, header_rx) = oneshot::channel();
    let done = tokio::spawn(run(
        client,
        addr,
        request,
        store,
        waiters,
        options,
        HeaderTx::Gated(header_tx),
    ));
    GatedReceiving {
        header: header_rx,
        done,
    }
}

/// Where the checked header goes.
enum HeaderTx {
    Plain(oneshot::Sender<Arc<CheckedHeader>>),
    Gated(oneshot::Sender<(Arc<CheckedHeader>, Admit)>),
}

enum Msg {
    Begin(u32),
    Data(bytes::Bytes),
    End,
}

/// Announces the header's contents: payloads pending (or ready if already
/// stored), held contents ready if stored and failed otherwise.
fn announce(header: &Header, store: &Store, waiters: &ContentWaiters) {
    for p in &header.payloads {
        if store.has(&p.sha256) {
            waiters.set(p.sha256, ContentState::Ready);
        } else {
            waiters.announce(p.sha256);
        }
    }
    for entry in &header.toc {
        let (Source::Held, Some(sha)) = (entry.source, entry.sha256) else {
            continue;
        };
        if store.has(&sha) {
            waiters.set(sha, ContentState::Ready);
        } else if waiters.state(&sha) != Some(ContentState::Pending) {
            error!(
                path = %entry.path,
                sha256 = %hex::encode(sha),
                "the proxy says this content is held, but the content store lacks it"
            );
            waiters.set(sha, ContentState::Failed);
        }
    }
}

/// The writer thread: one payload at a time into the store.
fn write_payloads(
    mut rx: mpsc::Receiver<Msg>,
    payloads: Vec<PayloadInfo>,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
) -> (usize, Vec<[u8; 32]>) {
    let (mut stored, mut failed) = (0, Vec::new());
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
                    let sha = w.info().sha256;
                    match w.finish(&store) {
                        Ok(path) => {
                            debug!(path = %path.display(), "content stored");
                            waiters.set(sha, ContentState::Ready);
                            stored += 1;
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
    (stored, failed)
}

async fn run(
    client: Arc<Client>,
    addr: SocketAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
    header_tx: HeaderTx,
) -> Result<ReceiveReport, ReceiveError> {
    let t0 = Instant::now();
    let mut stream = client
        .fetch(addr, &options.server_name, &request)
        .await
        .map_err(ReceiveError::Fetch)?;
    let header = match stream.next_event().await {
        Ok(Some(Event::Header(h))) => {
            Arc::new(CheckedHeader::new(h).map_err(ReceiveError::Refused)?)
        }
        Ok(_) => return Err(ReceiveError::NoHeader),
        Err(e) => return Err(ReceiveError::Fetch(e)),
    };
    let time_to_header = t0.elapsed();
    // Nothing of a header that does not follow from its image's manifest is
    // used: no content announced or written, no header handed on (so the
    // caller records and mounts nothing).
    if let Err(e) = crate::verify::verify_header(&header, &request.image) {
        error!(image = %request.image, manifest = %header.manifest_digest, "bundle header refused: {e}");
        return Err(ReceiveError::Verify(e));
    }
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
    announce(&header, &store, &waiters);
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

    let (tx, rx) = mpsc::channel(64);
    let writer = {
        let (payloads, store, waiters) = (header.payloads.clone(), store.clone(), waiters.clone());
        tokio::task::spawn_blocking(move || write_payloads(rx, payloads, store, waiters))
    };
    let mut stream_error = None;
    loop {
        let msg = match stream.next_event().await {
            Ok(None) => break,
            Ok(Some(Event::PayloadBegin { index })) => Msg::Begin(index),
            Ok(Some(Event::PayloadData { data, .. })) => Msg::Data(data),
            Ok(Some(Event::PayloadEnd { .. })) => Msg::End,
            Ok(Some(Event::End(_) | Event::Header(_))) => continue,
            Ok(Some(Event::Error(e))) => {
                stream_error = Some(e.to_string());
                break;
            }
            Err(e) => {
                stream_error = Some(e.to_string());
                break;
            }
        };
        if tx.send(msg).await.is_err() {
            stream_error = Some("the payload writer stopped".into());
            break;
        }
    }
    drop(tx);
    let (stored, mut failed) = writer
        .await
        .map_err(|e| ReceiveError::Writer(e.to_string()))?;
    let time_to_end = t0.elapsed();
    if let Some(reason) = &stream_error {
        let pending: Vec<[u8; 32]> = header
            .payloads
            .iter()
            .map(|p| p.sha256)
            .filter(|sha| waiters.state(sha) == Some(ContentState::Pending))
            .collect();
        error!(
            image = %request.image,
            pending = pending.len(),
            grace = ?options.grace,
            "bundle stream broke: {reason}; contents still missing fail after the grace time"
        );
        tokio::time::sleep(options.grace).await;
        let mut n = 0;
        for sha in &pending {
            if waiters.fail_if_pending(sha) {
                failed.push(*sha);
                n += 1;
            }
        }
        error!(
            image = %request.image,
            failed = n,
            "bundle incomplete: {n} contents failed, waiting opens get EIO"
        );
    } else {
        info!(image = %request.image, stored, ?time_to_end, "bundle received");
    }
    Ok(ReceiveReport {
        header,
        time_to_header,
        time_to_end,
        stored,
        failed,
        bytes_received: stream.bytes_received(),
        stream_error,
    })
}
