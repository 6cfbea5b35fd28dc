//! The QUIC server: accepts connections and streams, reads requests, checks tokens and
//! hands each request to a [`BundleHandler`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, RecvStream, SendStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::admission::{Admission, Counters, ServerStats, Slot, CLOSE_UNAUTHENTICATED};
use super::auth::TokenSet;
use super::rate::PerTokenRate;
use super::transport::TransportTuning;
use super::writer::BundleWriter;
use super::ALPN;
use crate::codec::{
    encode_auth_reply, encode_reply, Auth, AuthDecoder, AuthReply, ClientMessage, ErrorCode,
    ErrorFrame, Limits, MessageDecoder, ProtocolError, RanksQuery, RanksReply, Reply, Request,
    Trace, TraceAck, FRAME_HEADER_LEN, MAX_AUTH_FRAME, MIN_PROTOCOL_VERSION, PREAMBLE_LEN,
};
use crate::tls::{self, TlsError};

/// The proxy's certificate chain and private key, PEM.
#[derive(Clone)]
pub struct ServerTls {
    /// Certificate chain, leaf first, PEM.
    pub cert_chain_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Server settings beyond TLS and tokens.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Codec limits (the request's size, the frames the handler may send).
    pub limits: Limits,
    /// QUIC windows and timers.
    pub transport: TransportTuning,
    /// Most connections at once (handshaking, unauthenticated or authenticated); more
    /// are refused.
    pub max_connections: usize,
    /// Most connections at once from one source IP address; more are refused.
    pub max_connections_per_address: usize,
    /// Most connections that completed the handshake but sent no accepted token yet;
    /// when a new one arrives, the oldest is closed to make room.
    pub max_unauthenticated: usize,
    /// Validate each client's address with a QUIC Retry before the connection counts
    /// (one extra round trip; a spoofed source address never gets a slot).
    pub require_retry: bool,
    /// How long a connection may take to present its token (its first stream).
    pub auth_timeout: Duration,
    /// How long a client may take to send its whole request.
    pub request_timeout: Duration,
    /// Bytes of requests buffered at once per authenticated connection (over all its
    /// streams); a stream waits for room.
    pub max_request_bytes_per_connection: u32,
    /// Bundles served at once per connection; more are refused with Unavailable.
    pub max_bundles_per_connection: usize,
    /// Bundles served at once by the whole server; more are refused with Unavailable.
    pub max_bundles: usize,
    /// A bundle whose client reads nothing for this long is cancelled (its buffers
    /// freed, its stream reset).
    pub stall_timeout: Duration,
    /// Trace uploads accepted per token in each `trace_window`; more are refused.
    pub max_traces_per_token: u32,
    /// The window of `max_traces_per_token`.
    pub trace_window: Duration,
    /// Refreshes (tag re-resolutions against the registry) accepted per token per
    /// minute; more are refused.
    pub max_refreshes_per_minute: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            transport: TransportTuning::default(),
            max_connections: 1024,
            max_connections_per_address: 64,
            max_unauthenticated: 256,
            require_retry: true,
            auth_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_request_bytes_per_connection: 32 << 20,
            max_bundles_per_connection: 8,
            max_bundles: 32,
            stall_timeout: Duration::from_secs(30),
            max_traces_per_token: 120,
            trace_window: Duration::from_secs(3600),
            max_refreshes_per_minute: 60,
        }
    }
}

/// Why a request could not be served; sent to the client as an Error frame.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Explanation for the client.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
        }
    }
}

impl From<super::writer::WriteError> for HandlerError {
    fn from(e: super::writer::WriteError) -> Self {
        HandlerError::new(ErrorCode::Internal, e.to_string())
    }
}

/// The future a [`BundleHandler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// Serves bundles: the proxy implements this.
pub trait BundleHandler: Send + Sync + 'static {
    /// Answers one authenticated request by writing a bundle to `out`: `send_header`,
    /// then for each payload `begin_payload`, `send_data`..., `end_payload`, then
    /// `finish`; or `send_error` at any point.
    ///
    /// Returning `Err` before the bundle is complete sends the error to the client as an
    /// Error frame. Returning `Ok` without finishing resets the stream: the client sees a
    /// truncated bundle.
    fn handle<'a>(&'a self, request: Request, out: &'a mut BundleWriter) -> HandlerFuture<'a>;

    /// Folds an authenticated trace upload into the access ranks; the answer is sent
    /// only after the trace is stored durably. Must be idempotent per trace id: a
    /// retried upload answers with `duplicate` set and counts nothing.
    ///
    /// The default refuses: a server that does not collect traces.
    fn upload_trace(&self, trace: Trace) -> ReplyFuture<'_, TraceAck> {
        let _ = trace;
        Box::pin(async {
            Err(HandlerError::new(
                ErrorCode::BadRequest,
                "this server does not collect traces",
            ))
        })
    }

    /// Answers an authenticated ranks query.
    ///
    /// The default refuses: a server that keeps no ranks.
    fn ranks(&self, query: RanksQuery) -> ReplyFuture<'_, RanksReply> {
        let _ = query;
        Box::pin(async {
            Err(HandlerError::new(
                ErrorCode::BadRequest,
                "this server keeps no ranks",
            ))
        })
    }

    /// Resolves the tag `query.image` names again now (after a retag) and answers with
    /// the ranks of the image it names.
    ///
    /// The default answers like [`ranks`](Self::ranks).
    fn refresh(&self, query: RanksQuery) -> ReplyFuture<'_, RanksReply> {
        self.ranks(query)
    }
}

/// The future [`BundleHandler::upload_trace`] and [`BundleHandler::ranks`] return.
pub type ReplyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HandlerError>> + Send + 'a>>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Certificates or key refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server must be started inside a tokio runtime.
    #[error("Server::bind must be called inside a tokio runtime")]
    NoRuntime,
    /// No token configured: every worker would be refused.
    #[error("no token configured: the server would refuse every worker")]
    NoTokens,
}

struct Context {
    tokens: TokenSet,
    handler: Arc<dyn BundleHandler>,
    options: ServerOptions,
    admission: Arc<Admission>,
    bundles: Arc<Semaphore>,
    traces: PerTokenRate,
    refreshes: PerTokenRate,
}

/// A running server. Dropping it does not stop it; call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    admission: Arc<Admission>,
}

fn quinn_server_config(
    tls: &ServerTls,
    options: &ServerOptions,
) -> Result<quinn::ServerConfig, TlsError> {
    let certs = tls::certs_from_pem(&tls.cert_chain_pem, "the server certificate")?;
    let key = tls::key_from_pem(&tls.key_pem, "the server key")?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    crypto.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!("not usable for QUIC: {e}")))
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(options.transport.to_quinn_server_unauthenticated());
    // Retry tokens are checked for the address they were issued to.
    config.retry_token_lifetime(Duration::from_secs(15));
    Ok(config)
}

impl Server {
    /// Starts serving on `addr` with default [`ServerOptions`]. Must be called inside a
    /// tokio runtime; connections are served on spawned tasks.
    pub fn bind<I, S>(
        addr: SocketAddr,
        tls: ServerTls,
        tokens: I,
        handler: Arc<dyn BundleHandler>,
    ) -> Result<Server, ServerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::bind_with(addr, tls, tokens, handler, ServerOptions::default())
    }

    /// Starts serving on `addr` with `options`.
    pub fn bind_with<I, S>(
        addr: SocketAddr,
        tls: ServerTls,
        tokens: I,
        handler: Arc<dyn BundleHandler>,
        options: ServerOptions,
    ) -> Result<Server, ServerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ServerError::NoRuntime);
        }
        let tokens = TokenSet::new(tokens);
        if tokens.is_empty() {
            return Err(ServerError::NoTokens);
        }
        let config = quinn_server_config(&tls, &options)?;
        let endpoint =
            Endpoint::server(config, addr).map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let admission = Arc::new(Admission::new(
            options.max_connections_per_address,
            options.max_connections,
            options.max_unauthenticated,
        ));
        let ctx = Arc::new(Context {
            tokens,
            handler,
            bundles: Arc::new(Semaphore::new(options.max_bundles.max(1))),
            traces: PerTokenRate::new(options.max_traces_per_token, options.trace_window),
            refreshes: PerTokenRate::new(options.max_refreshes_per_minute, Duration::from_secs(60)),
            admission: admission.clone(),
            options,
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx));
        info!(%local_addr, "delta bundle server listening");
        Ok(Server {
            endpoint,
            local_addr,
            accept,
            admission,
        })
    }

    /// The address the server listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Admission counters (retries, refusals, evictions, authentications).
    pub fn stats(&self) -> ServerStats {
        self.admission.stats()
    }

    /// A handle that reads [`Server::stats`] from elsewhere (a metrics
    /// collector), also after the server was moved.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource(self.admission.clone())
    }

    /// Stops accepting, closes every connection (bundles in flight are cut off) and
    /// waits, at most 5 s, for the peers to be told.
    pub async fn shutdown(self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
        self.accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.endpoint.wait_idle()).await;
    }
}

/// Reads a [`Server`]'s admission counters; see [`Server::stats_source`].
#[derive(Clone)]
pub struct StatsSource(Arc<Admission>);

impl StatsSource {
    /// The counters and gauges now.
    pub fn get(&self) -> ServerStats {
        self.0.stats()
    }
}

impl std::fmt::Debug for StatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsSource").field(&self.get()).finish()
    }
}

/// Connection close code sent on shutdown.
const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(0);

async fn accept_loop(endpoint: Endpoint, ctx: Arc<Context>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        if ctx.options.require_retry && !incoming.remote_address_validated() {
            // Stateless: nothing is kept until the client proves it owns the address.
            Counters::bump(&ctx.admission.counters.retries);
            if let Err(e) = incoming.retry() {
                debug!(%remote, error = %e, "cannot send a Retry");
            }
            continue;
        }
        let slot = match ctx.admission.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%remote, ?why, "connection refused");
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    Counters::bump(&ctx.admission.counters.handshakes);
                    serve_connection(conn, slot, ctx).await;
                }
                Err(e) => debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}

/// Waits for the connection's Auth stream and checks the token; the token's index in
/// the set when accepted. The connection may open one stream and send a few KiB until
/// then.
async fn authenticate(conn: &quinn::Connection, ctx: &Context) -> Result<usize, String> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| format!("no Auth stream: {e}"))?;
    let mut dec = AuthDecoder::new(ctx.options.limits);
    let mut auth = None;
    let mut read = 0usize;
    let cap = AUTH_STREAM_MAX;
    while let Some(chunk) = recv
        .read_chunk(cap, true)
        .await
        .map_err(|e| format!("the Auth stream failed: {e}"))?
    {
        read += chunk.bytes.len();
        if read > cap {
            return Err(format!("the Auth stream is longer than {cap} bytes"));
        }
        dec.feed(&chunk.bytes);
        if let Some(a) = dec.next_frame_message().map_err(|e| e.to_string())? {
            auth = Some(a);
        }
    }
    dec.finish().map_err(|e| e.to_string())?;
    let auth: Auth = auth.ok_or("no Auth frame")?;
    let reply = match ctx.tokens.position(&auth.token) {
        Some(i) => Ok(i),
        None => Err("the token is not accepted by this proxy".to_string()),
    };
    let frame = match &reply {
        Ok(_) => AuthReply::Accepted,
        Err(message) => AuthReply::Refused(ErrorFrame {
            code: ErrorCode::Unauthorized,
            message: message.clone(),
        }),
    };
    if let Ok(bytes) = encode_auth_reply(&frame, &ctx.options.limits) {
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
            if reply.is_err() {
                // Let the refusal reach the client before the connection closes.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            }
        }
    }
    reply
}

/// Most bytes read from the Auth stream: the preamble and one Auth frame.
const AUTH_STREAM_MAX: usize = PREAMBLE_LEN + FRAME_HEADER_LEN + MAX_AUTH_FRAME as usize;

/// Per-connection state shared by its streams.
struct ConnState {
    token: usize,
    request_bytes: Arc<Semaphore>,
    bundles: Arc<Semaphore>,
}

async fn serve_connection(conn: quinn::Connection, mut slot: Slot, ctx: Arc<Context>) {
    let remote = conn.remote_address();
    debug!(%remote, "connection established");
    slot.pending(&conn);
    let token =
        match tokio::time::timeout(ctx.options.auth_timeout, authenticate(&conn, &ctx)).await {
            Ok(Ok(token)) => token,
            Ok(Err(reason)) => {
                Counters::bump(&ctx.admission.counters.auth_failed);
                warn!(%remote, %reason, "authentication failed: closing");
                conn.close(CLOSE_UNAUTHENTICATED, b"authentication failed");
                return;
            }
            Err(_) => {
                Counters::bump(&ctx.admission.counters.auth_failed);
                debug!(%remote, "no token within the auth timeout: closing");
                conn.close(CLOSE_UNAUTHENTICATED, b"no token in time");
                return;
            }
        };
    slot.authenticated();
    Counters::bump(&ctx.admission.counters.authenticated);
    // Now (only) the connection may open its streams and send requests.
    let tuning = &ctx.options.transport;
    conn.set_receive_window(
        quinn::VarInt::from_u64(u64::from(ctx.options.max_request_bytes_per_connection))
            .unwrap_or(quinn::VarInt::MAX),
    );
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(tuning.max_concurrent_streams));
    let state = Arc::new(ConnState {
        token,
        request_bytes: Arc::new(Semaphore::new(
            ctx.options.max_request_bytes_per_connection.max(1) as usize,
        )),
        bundles: Arc::new(Semaphore::new(
            ctx.options.max_bundles_per_connection.max(1),
        )),
    });
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = ctx.clone();
                let state = state.clone();
                tokio::spawn(async move { serve_stream(send, recv, ctx, state, remote).await });
            }
            Err(e) => {
                debug!(%remote, reason = %e, "connection closed");
                return;
            }
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadRequestError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the request stream failed: {0}")]
    Stream(#[from] quinn::ReadError),
    #[error("the request did not arrive within {0:?}")]
    Timeout(Duration),
}

/// Reads one message, holding permits of the connection's request budget for the
/// bytes buffered (released when the message is decoded); the message and the protocol
/// version its stream announced.
async fn read_message(
    recv: &mut RecvStream,
    limits: &Limits,
    budget: &Arc<Semaphore>,
) -> Result<(ClientMessage, u16), ReadRequestError> {
    let mut dec = MessageDecoder::new(*limits);
    let mut message = None;
    let mut held = Vec::new();
    while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
        let n = u32::try_from(chunk.bytes.len()).unwrap_or(u32::MAX);
        if let Ok(p) = budget.clone().acquire_many_owned(n).await {
            held.push(p);
        }
        dec.feed(&chunk.bytes);
        if let Some(m) = dec.next_message()? {
            message = Some(m);
        }
    }
    dec.finish()?;
    let version = dec.version().unwrap_or(MIN_PROTOCOL_VERSION);
    message
        .map(|m| (m, version))
        .ok_or(ReadRequestError::Protocol(ProtocolError::Truncated {
            expected: "the Request frame",
        }))
}

/// Writes a one-frame reply and finishes the stream.
async fn send_reply(mut send: SendStream, reply: Reply, limits: &Limits, remote: SocketAddr) {
    let bytes = match encode_reply(&reply, limits) {
        Ok(b) => b,
        Err(e) => {
            warn!(%remote, error = %e, "reply refused by the encoder");
            let error = Reply::Error(ErrorFrame {
                code: ErrorCode::Internal,
                message: format!("cannot encode the reply: {e}"),
            });
            match encode_reply(&error, limits) {
                Ok(b) => b,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = send.write_all(&bytes).await {
        debug!(%remote, error = %e, "reply not delivered");
        return;
    }
    let _ = send.finish();
}

async fn serve_stream(
    send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<Context>,
    conn: Arc<ConnState>,
    remote: SocketAddr,
) {
    let timeout = ctx.options.request_timeout;
    let read = tokio::time::timeout(
        timeout,
        read_message(&mut recv, &ctx.options.limits, &conn.request_bytes),
    )
    .await;
    let (message, version) = match read.unwrap_or(Err(ReadRequestError::Timeout(timeout))) {
        Ok(m) => m,
        Err(ReadRequestError::Stream(e)) => {
            debug!(%remote, error = %e, "request stream failed");
            return;
        }
        Err(e) => {
            warn!(%remote, error = %e, "bad request");
            let mut out = BundleWriter::new(send, ctx.options.limits);
            let _ = out
                .send_error(ErrorFrame {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                })
                .await;
            return;
        }
    };
    drop(recv);
    // The connection authenticated with a token; each message still names one.
    if ctx.tokens.position(message.token()) != Some(conn.token) {
        warn!(%remote, image = %message.image(), "token refused");
        let mut out = BundleWriter::new(send, ctx.options.limits);
        let _ = out
            .send_error(ErrorFrame {
                code: ErrorCode::Unauthorized,
                message: "the token is not the one this connection authenticated with".into(),
            })
            .await;
        return;
    }
    let limits = ctx.options.limits;
    let refresh = matches!(message, ClientMessage::Refresh(_));
    let request = match message {
        ClientMessage::Bundle(request) => request,
        ClientMessage::Trace(upload) => {
            let id = upload.trace.id.clone();
            debug!(%remote, %id, "trace upload");
            let reply = if !ctx.traces.allow(conn.token) {
                Counters::bump(&ctx.admission.counters.traces_refused);
                warn!(%remote, %id, "trace upload refused: over the per-token rate");
                Reply::Error(ErrorFrame {
                    code: ErrorCode::Unavailable,
                    message: format!(
                        "too many trace uploads for this token (at most {} per {:?})",
                        ctx.options.max_traces_per_token, ctx.options.trace_window
                    ),
                })
            } else {
                match ctx.handler.upload_trace(upload.trace).await {
                    Ok(ack) => Reply::TraceAck(ack),
                    Err(e) => {
                        warn!(%remote, %id, error = %e, "trace upload failed");
                        Reply::Error(ErrorFrame {
                            code: e.code,
                            message: e.message,
                        })
                    }
                }
            };
            send_reply(send, reply, &limits, remote).await;
            return;
        }
        ClientMessage::Ranks(query) | ClientMessage::Refresh(query) => {
            let answer = match refresh {
                true if !ctx.refreshes.allow(conn.token) => Err(HandlerError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "too many refreshes for this token (at most {} per minute)",
                        ctx.options.max_refreshes_per_minute
                    ),
                )),
                true => ctx.handler.refresh(query).await,
                false => ctx.handler.ranks(query).await,
            };
            let reply = match answer {
                Ok(r) => Reply::Ranks(r),
                Err(e) => Reply::Error(ErrorFrame {
                    code: e.code,
                    message: e.message,
                }),
            };
            send_reply(send, reply, &limits, remote).await;
            return;
        }
    };
    let mut out = BundleWriter::new(send, ctx.options.limits)
        .with_version(version)
        .with_stall_timeout(ctx.options.stall_timeout);
    let permits = (
        conn.bundles.clone().try_acquire_owned(),
        ctx.bundles.clone().try_acquire_owned(),
    );
    let _permits = match permits {
        (Ok(a), Ok(b)) => (a, b),
        (a, _) => {
            Counters::bump(&ctx.admission.counters.bundles_refused);
            let message = if a.is_err() {
                format!(
                    "too many bundles in flight on this connection (at most {})",
                    ctx.options.max_bundles_per_connection
                )
            } else {
                format!(
                    "the proxy serves {} bundles already; retry later",
                    ctx.options.max_bundles
                )
            };
            warn!(%remote, image = %request.image, %message, "bundle refused");
            let _ = out
                .send_error(ErrorFrame {
                    code: ErrorCode::Unavailable,
                    message,
                })
                .await;
            return;
        }
    };
    let image = request.image.clone();
    debug!(%remote, %image, "serving bundle");
    match ctx.handler.handle(request, &mut out).await {
        Ok(()) if out.is_done() => debug!(%remote, %image, "bundle sent"),
        Ok(()) => {
            warn!(%remote, %image, "handler returned before the bundle was complete: resetting the stream");
            out.abort();
        }
        Err(e) => {
            warn!(%remote, %image, error = %e, "bundle failed");
            if out.is_open() && !out.is_done() {
                let message = e.message.clone();
                if out
                    .send_error(ErrorFrame {
                        code: e.code,
                        message,
                    })
                    .await
                    .is_err()
                {
                    out.abort();
                }
            }
        }
    }
}
