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

use super::auth::TokenSet;
use super::transport::TransportTuning;
use super::writer::BundleWriter;
use super::ALPN;
use crate::codec::{
    encode_reply, ClientMessage, ErrorCode, ErrorFrame, Limits, MessageDecoder, ProtocolError,
    RanksQuery, RanksReply, Reply, Request, Trace, TraceAck,
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
    /// Most connections served at once; more are refused.
    pub max_connections: usize,
    /// How long a client may take to send its whole request.
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            transport: TransportTuning::default(),
            max_connections: 1024,
            request_timeout: Duration::from_secs(10),
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
}

/// A running server. Dropping it does not stop it; call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
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
    config.transport_config(options.transport.to_quinn(true));
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
        let ctx = Arc::new(Context {
            tokens,
            handler,
            options,
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx));
        info!(%local_addr, "delta bundle server listening");
        Ok(Server {
            endpoint,
            local_addr,
            accept,
        })
    }

    /// The address the server listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (bundles in flight are cut off) and
    /// waits, at most 5 s, for the peers to be told.
    pub async fn shutdown(self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
        self.accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.endpoint.wait_idle()).await;
    }
}

/// Connection close code sent on shutdown.
const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(0);

async fn accept_loop(endpoint: Endpoint, ctx: Arc<Context>) {
    let slots = Arc::new(Semaphore::new(ctx.options.max_connections));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "connection limit reached: refusing");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, ctx).await,
                Err(e) => debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<Context>) {
    let remote = conn.remote_address();
    debug!(%remote, "connection established");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { serve_stream(send, recv, ctx, remote).await });
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

async fn read_message(
    recv: &mut RecvStream,
    limits: &Limits,
) -> Result<ClientMessage, ReadRequestError> {
    let mut dec = MessageDecoder::new(*limits);
    let mut message = None;
    while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
        dec.feed(&chunk.bytes);
        if let Some(m) = dec.next_message()? {
            message = Some(m);
        }
    }
    dec.finish()?;
    message.ok_or(ReadRequestError::Protocol(ProtocolError::Truncated {
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
    remote: SocketAddr,
) {
    let timeout = ctx.options.request_timeout;
    let read = tokio::time::timeout(timeout, read_message(&mut recv, &ctx.options.limits)).await;
    let message = match read.unwrap_or(Err(ReadRequestError::Timeout(timeout))) {
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
    if !ctx.tokens.contains(message.token()) {
        warn!(%remote, image = %message.image(), "token refused");
        let mut out = BundleWriter::new(send, ctx.options.limits);
        let _ = out
            .send_error(ErrorFrame {
                code: ErrorCode::Unauthorized,
                message: "the token is not accepted by this proxy".into(),
            })
            .await;
        return;
    }
    let limits = ctx.options.limits;
    let request = match message {
        ClientMessage::Bundle(request) => request,
        ClientMessage::Trace(upload) => {
            let id = upload.trace.id.clone();
            debug!(%remote, %id, "trace upload");
            let reply = match ctx.handler.upload_trace(upload.trace).await {
                Ok(ack) => Reply::TraceAck(ack),
                Err(e) => {
                    warn!(%remote, %id, error = %e, "trace upload failed");
                    Reply::Error(ErrorFrame {
                        code: e.code,
                        message: e.message,
                    })
                }
            };
            send_reply(send, reply, &limits, remote).await;
            return;
        }
        ClientMessage::Ranks(query) => {
            let reply = match ctx.handler.ranks(query).await {
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
    let mut out = BundleWriter::new(send, ctx.options.limits);
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
