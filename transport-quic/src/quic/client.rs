//! The QUIC client: fetches bundles from a proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream};
use rustls::pki_types::CertificateDer;
use tracing::debug;

use super::stream::{BundleStream, Drain, MAX_DRAIN_BUDGET, MIN_DRAIN_BUDGET};
use super::transport::TransportTuning;
use super::verify::PinnedCertVerifier;
use super::ALPN;
use crate::codec::{
    encode_auth, encode_message, Auth, AuthReply, AuthReplyDecoder, ClientMessage, ErrorCode,
    ErrorFrame, FrameKind, Limits, ProtocolError, RanksQuery, RanksReply, Reply, ReplyDecoder,
    Request, RequestEncoder, ResponseDecoder, TraceAck, TraceUpload, PROTOCOL_VERSION,
};
use crate::tls::{self, TlsError};

/// How the client checks the proxy's certificate.
#[derive(Debug, Clone)]
pub enum ClientTls {
    /// Trust the CA certificates in this PEM file (the usual name checks apply).
    CaFile(PathBuf),
    /// Trust the CA certificates in this PEM text.
    CaPem(Vec<u8>),
    /// Accept exactly this certificate (DER), whatever the name.
    PinnedCert(Vec<u8>),
}

/// Client settings beyond TLS.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Codec limits for what the proxy sends.
    pub limits: Limits,
    /// QUIC windows and timers.
    pub transport: TransportTuning,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Largest chunk read from the stream at once.
    pub read_chunk: usize,
    /// The protocol version bundle requests announce (the proxy answers in it): 3,
    /// the default, gets a zstd-compressed header; 2 an uncompressed one.
    pub protocol_version: u16,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            limits: Limits::default(),
            transport: TransportTuning::default(),
            connect_timeout: Duration::from_secs(10),
            read_chunk: 256 * 1024,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's TLS settings could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The proxy's certificate failed verification.
    #[error("certificate not trusted: {0}")]
    CertificateNotTrusted(String),
    /// The proxy answered Unauthorized.
    #[error("proxy refused the token: {0}")]
    Unauthorized(String),
    /// The proxy answered another Error frame.
    #[error("proxy error: {0}")]
    Proxy(ErrorFrame),
    /// The bundle stream ended (or was reset, or the connection lost) before its End.
    #[error("bundle truncated: {0}")]
    Truncated(String),
    /// The proxy sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The proxy could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The proxy's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection failed after it was established.
    #[error("connection to the proxy failed: {0}")]
    Connection(ConnectionError),
    /// The request could not be sent.
    #[error("cannot send the request: {0}")]
    Send(String),
}

impl ClientError {
    /// Whether the proxy refused the request's protocol version (a proxy older
    /// than this client): the same request announcing an older version (see
    /// [`Client::fetch_in`]) may succeed.
    pub fn is_unsupported_version(&self) -> bool {
        matches!(self, ClientError::Proxy(f) if f.code == ErrorCode::BadRequest
            && f.message.contains("protocol version")
            && f.message.contains("is not supported"))
    }

    pub(crate) fn from_error_frame(frame: ErrorFrame) -> Self {
        match frame.code {
            ErrorCode::Unauthorized => ClientError::Unauthorized(frame.message),
            _ => ClientError::Proxy(frame),
        }
    }
}

/// Whether a connection failure is the local TLS stack refusing the server's
/// certificate.
pub(crate) fn certificate_failure(e: &ConnectionError) -> Option<String> {
    if let ConnectionError::TransportError(t) = e {
        let code = u64::from(t.code);
        let tls_alert = (0x100..0x200).contains(&code);
        if tls_alert && t.reason.contains("certificate") {
            return Some(t.reason.clone());
        }
    }
    None
}

fn connect_error(addr: SocketAddr, e: ConnectionError, pinned: bool) -> ClientError {
    match certificate_failure(&e) {
        Some(reason) if pinned => ClientError::CertificateNotTrusted(format!(
            "the proxy's certificate is not the pinned certificate ({reason})"
        )),
        Some(reason) => ClientError::CertificateNotTrusted(reason),
        None => ClientError::Connect {
            addr,
            reason: e.to_string(),
        },
    }
}

fn client_crypto(tls: &ClientTls) -> Result<rustls::ClientConfig, TlsError> {
    let provider = tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match tls {
        ClientTls::CaFile(_) | ClientTls::CaPem(_) => {
            let (pem, what) = match tls {
                ClientTls::CaFile(path) => (tls::read_file(path)?, path.display().to_string()),
                ClientTls::CaPem(pem) => (pem.clone(), "the CA PEM".to_string()),
                ClientTls::PinnedCert(_) => unreachable!("matched above"),
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in tls::certs_from_pem(&pem, &what)? {
                roots.add(cert).map_err(|e| TlsError::Certificates {
                    what: what.clone(),
                    reason: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ClientTls::PinnedCert(der) => {
            let verifier = PinnedCertVerifier::new(CertificateDer::from(der.clone()), provider);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A cached connection: the proxy's address and name, and the token it authenticated
/// with.
type ConnKey = (SocketAddr, String, String);

/// A client for one or more proxies. Connections are cached per (address, name) and
/// shared by concurrent fetches (one stream each).
pub struct Client {
    config: quinn::ClientConfig,
    options: ClientOptions,
    pinned: bool,
    endpoints: Mutex<(Option<Endpoint>, Option<Endpoint>)>,
    connections: Mutex<HashMap<ConnKey, Connection>>,
    opened: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with default [`ClientOptions`].
    pub fn new(tls: ClientTls) -> Result<Client, ClientError> {
        Self::with_options(tls, ClientOptions::default())
    }

    /// A client with `options`.
    pub fn with_options(tls: ClientTls, options: ClientOptions) -> Result<Client, ClientError> {
        let crypto = client_crypto(&tls)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| {
            TlsError::Rustls(rustls::Error::General(format!("not usable for QUIC: {e}")))
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(options.transport.to_quinn(false));
        Ok(Client {
            config,
            options,
            pinned: matches!(tls, ClientTls::PinnedCert(_)),
            endpoints: Mutex::new((None, None)),
            connections: Mutex::new(HashMap::new()),
            opened: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The local endpoint for the address family of `addr` (bound on first use).
    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, ClientError> {
        let mut guard = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let slot = if addr.is_ipv4() {
            &mut guard.0
        } else {
            &mut guard.1
        };
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr,
            reason: format!("cannot bind a local UDP socket: {e}"),
        })?;
        endpoint.set_default_client_config(self.config.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, ClientError> {
        let endpoint = self.endpoint(addr)?;
        let connecting = endpoint
            .connect(addr, server_name)
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(self.options.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_error(addr, e, self.pinned)),
            Err(_) => {
                return Err(ClientError::Connect {
                    addr,
                    reason: format!("no answer within {:?}", self.options.connect_timeout),
                })
            }
        };
        debug!(%addr, server_name, "connected");
        Ok(conn)
    }

    fn cached(&self, key: &ConnKey) -> Option<Connection> {
        let map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Sends `request` to the proxy at `addr` (its certificate must be valid for
    /// `server_name`, unless pinned) and returns the bundle's stream of events.
    pub async fn fetch(
        &self,
        addr: SocketAddr,
        server_name: &str,
        request: &Request,
    ) -> Result<BundleStream, ClientError> {
        self.fetch_in(addr, server_name, request, self.options.protocol_version)
            .await
    }

    /// [`Client::fetch`] announcing protocol `version` (clamped to the versions
    /// this build speaks): to talk to a proxy older than this client.
    pub async fn fetch_in(
        &self,
        addr: SocketAddr,
        server_name: &str,
        request: &Request,
        version: u16,
    ) -> Result<BundleStream, ClientError> {
        let bytes = RequestEncoder::new(self.options.limits)
            .with_version(version)
            .encode(request)?;
        let (recv, conn) = self
            .send_message(addr, server_name, &request.token, &bytes)
            .await?;
        let budget = self
            .options
            .transport
            .stream_receive_window
            .clamp(MIN_DRAIN_BUDGET, MAX_DRAIN_BUDGET) as usize;
        Ok(BundleStream {
            drain: Drain::spawn(recv, self.options.read_chunk.max(1), budget),
            decoder: ResponseDecoder::new(self.options.limits),
            eof: false,
            failed: false,
            bytes_received: 0,
            _conn: conn,
        })
    }

    /// Opens a stream to the proxy, writes `bytes` and finishes the send side.
    ///
    /// On a cached connection that is one stream. Otherwise the connection is opened
    /// and the Auth stream and this stream are sent in the same flight (pipelined): the
    /// proxy reads the request only once it has accepted the token, so the request
    /// costs no round trip of its own. A refused token is reported as such.
    async fn send_message(
        &self,
        addr: SocketAddr,
        server_name: &str,
        token: &str,
        bytes: &[u8],
    ) -> Result<(RecvStream, Connection), ClientError> {
        let key = (addr, server_name.to_string(), token.to_string());
        if let Some(conn) = self.cached(&key) {
            match open_and_send(&conn, bytes).await {
                Ok(recv) => return Ok((recv, conn)),
                // The cached connection died since: connect again, once.
                Err(e) => debug!(%addr, error = %e, "cached connection unusable: reconnecting"),
            }
        }
        let conn = self.connect(addr, server_name).await?;
        // The Auth stream first (stream 0, the one the proxy reads the token from),
        // then the request behind it; then both answers.
        let (auth, sent) = match self.send_auth(&conn, token).await {
            Ok(recv) => {
                tokio::join!(
                    self.auth_reply_in_time(recv, &key),
                    open_and_send(&conn, bytes)
                )
            }
            Err(e) => (Err(e), Err(ClientError::Send("no Auth stream".into()))),
        };
        if let Err(e) = auth {
            conn.close(quinn::VarInt::from_u32(0), b"authentication failed");
            return Err(e);
        }
        let recv = sent?;
        self.remember(&key, &conn);
        Ok((recv, conn))
    }

    /// Sends one message and reads the proxy's one-frame reply.
    async fn exchange(
        &self,
        addr: SocketAddr,
        server_name: &str,
        message: &ClientMessage,
    ) -> Result<Reply, ClientError> {
        let bytes = encode_message(message, &self.options.limits)?;
        let (mut recv, _conn) = self
            .send_message(addr, server_name, message.token(), &bytes)
            .await?;
        let mut decoder = ReplyDecoder::new(self.options.limits);
        let mut reply = None;
        loop {
            match recv.read_chunk(self.options.read_chunk, true).await {
                Ok(Some(chunk)) => {
                    decoder.feed(&chunk.bytes);
                    if let Some(r) = decoder.next_reply()? {
                        reply = Some(r);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(ClientError::Truncated(format!("reply stream: {e}"))),
            }
        }
        match decoder.finish() {
            Ok(()) => {}
            Err(e @ ProtocolError::Truncated { .. }) => {
                return Err(ClientError::Truncated(e.to_string()))
            }
            Err(e) => return Err(ClientError::Protocol(e)),
        }
        match reply {
            Some(Reply::Error(frame)) => Err(ClientError::from_error_frame(frame)),
            Some(r) => Ok(r),
            None => Err(ClientError::Truncated("no reply".into())),
        }
    }

    /// Uploads a trace to the proxy at `addr`; returns its acknowledgement, which the
    /// proxy sends only once the trace is committed to its database.
    pub async fn upload_trace(
        &self,
        addr: SocketAddr,
        server_name: &str,
        upload: &TraceUpload,
    ) -> Result<TraceAck, ClientError> {
        match self
            .exchange(addr, server_name, &ClientMessage::Trace(upload.clone()))
            .await?
        {
            Reply::TraceAck(ack) if ack.id == upload.trace.id => Ok(ack),
            Reply::TraceAck(ack) => Err(ClientError::Protocol(ProtocolError::Malformed {
                kind: FrameKind::TraceAck,
                reason: format!("acknowledges trace {:?}, not {:?}", ack.id, upload.trace.id),
            })),
            _ => Err(ClientError::Protocol(ProtocolError::UnexpectedFrame {
                got: FrameKind::Ranks,
                expected: "a TraceAck frame",
            })),
        }
    }

    /// Asks the proxy at `addr` for the ranks of an image.
    pub async fn ranks(
        &self,
        addr: SocketAddr,
        server_name: &str,
        query: &RanksQuery,
    ) -> Result<RanksReply, ClientError> {
        match self
            .exchange(addr, server_name, &ClientMessage::Ranks(query.clone()))
            .await?
        {
            Reply::Ranks(r) => Ok(r),
            _ => Err(ClientError::Protocol(ProtocolError::UnexpectedFrame {
                got: FrameKind::TraceAck,
                expected: "a Ranks frame",
            })),
        }
    }

    /// Connects and authenticates (the connection's first stream carries the token).
    /// Asks the proxy at `addr` to resolve the tag `query.image` names again now (after
    /// a retag); answers with the ranks of the image it now names.
    pub async fn refresh(
        &self,
        addr: SocketAddr,
        server_name: &str,
        query: &RanksQuery,
    ) -> Result<RanksReply, ClientError> {
        match self
            .exchange(addr, server_name, &ClientMessage::Refresh(query.clone()))
            .await?
        {
            Reply::Ranks(r) => Ok(r),
            _ => Err(ClientError::Protocol(ProtocolError::UnexpectedFrame {
                got: FrameKind::TraceAck,
                expected: "a Ranks frame",
            })),
        }
    }

    /// Waits for the answer to the Auth stream `recv` of `key`, within the connect
    /// timeout.
    async fn auth_reply_in_time(&self, recv: RecvStream, key: &ConnKey) -> Result<(), ClientError> {
        tokio::time::timeout(self.options.connect_timeout, self.auth_reply(recv))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connect {
                    addr: key.0,
                    reason: format!(
                        "the token was not answered within {:?}",
                        self.options.connect_timeout
                    ),
                })
            })
    }

    fn remember(&self, key: &ConnKey, conn: &Connection) {
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.clone(), conn.clone());
    }

    async fn new_connection(&self, key: &ConnKey) -> Result<Connection, ClientError> {
        let conn = self.connect(key.0, &key.1).await?;
        let auth = match self.send_auth(&conn, &key.2).await {
            Ok(recv) => self.auth_reply_in_time(recv, key).await,
            Err(e) => Err(e),
        };
        if let Err(e) = auth {
            conn.close(quinn::VarInt::from_u32(0), b"authentication failed");
            return Err(e);
        }
        self.remember(key, &conn);
        Ok(conn)
    }

    /// Connections this client opened and authenticated so far (a warm connection
    /// reused by a fetch counts once).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The authenticated connection to the proxy at `addr` for `token`: the cached one
    /// if it is alive, else a new one (connected and authenticated now). Fetches with
    /// the same address, name and token then reuse it: no handshake, no Retry, no
    /// token round trip before their request.
    pub async fn warm(
        &self,
        addr: SocketAddr,
        server_name: &str,
        token: &str,
    ) -> Result<Connection, ClientError> {
        let key = (addr, server_name.to_string(), token.to_string());
        match self.cached(&key) {
            Some(c) => Ok(c),
            None => self.new_connection(&key).await,
        }
    }

    /// Keeps a warm connection to the proxy for as long as the returned task runs:
    /// opens it now, and whenever it closes (proxy restart, network failure, idle
    /// timeout) opens a new one, waiting `retry` after a failure, doubling up to
    /// `max_retry`. Keep-alives ([`TransportTuning::keep_alive`]) hold it open while
    /// idle. Abort the task to stop.
    pub fn keep_warm(
        self: &Arc<Self>,
        addr: SocketAddr,
        server_name: String,
        token: String,
        retry: Duration,
        max_retry: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.clone();
        tokio::spawn(async move {
            let mut wait = retry;
            loop {
                match client.warm(addr, &server_name, &token).await {
                    Ok(conn) => {
                        wait = retry;
                        debug!(%addr, "warm connection to the proxy ready");
                        let why = conn.closed().await;
                        debug!(%addr, reason = %why, "warm connection closed: reopening");
                    }
                    Err(e) => {
                        debug!(%addr, error = %e, ?wait, "cannot open the warm connection");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(max_retry.max(retry));
                    }
                }
            }
        })
    }
}

/// Opens a stream on `conn`, writes `bytes` and finishes the send side.
async fn open_and_send(conn: &Connection, bytes: &[u8]) -> Result<RecvStream, ClientError> {
    let (mut send, recv) = conn.open_bi().await.map_err(ClientError::Connection)?;
    send.write_all(bytes)
        .await
        .map_err(|e| ClientError::Send(e.to_string()))?;
    send.finish()
        .map_err(|e| ClientError::Send(e.to_string()))?;
    Ok(recv)
}

impl Client {
    /// Sends the Auth stream (the connection's first stream); its receive side.
    async fn send_auth(&self, conn: &Connection, token: &str) -> Result<RecvStream, ClientError> {
        let bytes = encode_auth(
            &Auth {
                token: token.to_string(),
            },
            &self.options.limits,
        )?;
        open_and_send(conn, &bytes).await
    }

    /// Reads the proxy's answer to the Auth stream.
    async fn auth_reply(&self, mut recv: RecvStream) -> Result<(), ClientError> {
        let mut decoder = AuthReplyDecoder::new(self.options.limits);
        let mut reply = None;
        loop {
            match recv.read_chunk(4096, true).await {
                Ok(Some(chunk)) => {
                    decoder.feed(&chunk.bytes);
                    if let Some(r) = decoder.next_frame_message()? {
                        reply = Some(r);
                    }
                }
                Ok(None) => break,
                Err(quinn::ReadError::ConnectionLost(e)) if reply.is_none() => {
                    if let Some(reason) = certificate_failure(&e) {
                        return Err(ClientError::CertificateNotTrusted(reason));
                    }
                    return Err(ClientError::Connection(e));
                }
                Err(e) if reply.is_none() => {
                    return Err(ClientError::Truncated(format!("auth stream: {e}")))
                }
                Err(_) => break,
            }
        }
        match reply {
            Some(AuthReply::Accepted) => Ok(()),
            Some(AuthReply::Refused(frame)) => Err(ClientError::from_error_frame(frame)),
            None => Err(ClientError::Truncated("no answer to the token".into())),
        }
    }
}
