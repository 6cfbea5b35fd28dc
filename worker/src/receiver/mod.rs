//! Receives one bundle from the proxy into the content store.
//!
//! [`start`] sends the request and returns at once with a [`Receiving`]:
//! its `header` resolves as soon as the bundle's header arrived (so the
//! caller can mount the image before any content), its `done` when the
//! bundle is over. Payloads are decompressed, hashed and written on a
//! blocking thread, overlapping with receiving; each verified content is
//! renamed into the store and its waiters woken ([`ContentWaiters`]). A
//! corrupt payload fails at once.
//!
//! If the stream breaks (transport error, proxy gone, link cut), the
//! receive reconnects with bounded exponential backoff
//! ([`ReceiveOptions::backoff`]) and asks for the same image pinned to the
//! manifest digest it verified, naming in `held_payloads` every content of
//! the image the store holds (each verified when stored). The resumed
//! header must pass the same checks and describe the same image
//! ([`check_resumed`]). Opens keep waiting meanwhile; only after
//! [`ReceiveOptions::grace`] without any progress (no payload verified, no
//! reconnect accepted) does the receive give up, failing the contents it
//! still expects that no other live receive expects.

mod payload;
mod resume;

use crate::proxy_addr::ProxyAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::error;
use transport_quic::quic::{Client, ClientError};
use transport_quic::{Header, Request, Source};

pub use payload::{PayloadError, PayloadWriter};
pub use resume::{check_resumed, pinned_image, Backoff, ResumeMismatch};

use crate::header_check::{CheckedHeader, HeaderError};
use crate::store::Store;
use crate::waiters::{ContentState, ContentWaiters};

/// How to receive a bundle.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The name the proxy's certificate must be valid for.
    pub server_name: String,
    /// How long the receive goes on without any progress (no payload
    /// verified, no reconnect accepted, no event on a live stream) before
    /// the contents still pending fail (and the opens waiting on them with
    /// `EIO`).
    pub grace: Duration,
    /// The wait between reconnects after the stream broke.
    pub backoff: Backoff,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            server_name: "localhost".into(),
            grace: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

/// Why a bundle could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The request failed before the header arrived.
    #[error("fetching the bundle failed before its header: {0}")]
    Fetch(ClientError),
    /// The proxy's host name did not resolve.
    #[error("cannot resolve the proxy's address: {0}")]
    Resolve(String),
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

/// What one stream of a receive (the first, or a resumed one) carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptReport {
    /// Bytes received on the stream (framing included).
    pub bytes_received: u64,
    /// Payload bytes (compressed, as sent) received, whole or cut off.
    pub payload_bytes: u64,
    /// Payloads the header of this stream announced.
    pub payloads_announced: usize,
    /// Payloads verified and stored from this stream.
    pub payloads_stored: usize,
    /// Their payload bytes (compressed, as sent).
    pub payload_bytes_stored: u64,
    /// Why the stream broke (`None`: it ended whole).
    pub error: Option<String>,
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
    /// Bytes received on every stream (framing included).
    pub bytes_received: u64,
    /// Payload bytes received on every stream (whole or cut off).
    pub payload_bytes: u64,
    /// Each stream, the first then the resumed ones.
    pub attempts: Vec<AttemptReport>,
    /// Why the receive gave up, if it did (`None`: every content expected
    /// arrived, on one stream or several).
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

/// Starts receiving the bundle for `request` from the proxy at `addr`
/// (resolved again at every connect).
pub fn start(
    client: Arc<Client>,
    addr: ProxyAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
) -> Receiving {
    let (header_tx, header_rx) = oneshot::channel();
    let done = tokio::spawn(body::run(
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
    addr: ProxyAddr,
    request: Request,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    options: ReceiveOptions,
) -> GatedReceiving {
    let (header_tx, header_rx) = oneshot::channel();
    let done = tokio::spawn(body::run(
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

/// Announces the header's contents: payloads pending (or ready if already
/// stored), held contents ready if stored and failed otherwise. Returns the
/// contents announced pending (to release when the receive ends).
fn announce(header: &Header, store: &Store, waiters: &ContentWaiters) -> Vec<[u8; 32]> {
    let mut expected = Vec::new();
    for p in &header.payloads {
        if store.has(&p.sha256) {
            waiters.set(p.sha256, ContentState::Ready);
        } else {
            waiters.announce(p.sha256);
            expected.push(p.sha256);
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
    expected
}

mod body;
