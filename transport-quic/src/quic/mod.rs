//! The Delta Bundle Protocol over QUIC (quinn + rustls with the ring provider).
//!
//! A connection first proves its client's address (QUIC Retry), then sends its bearer
//! token on its first stream in one Auth frame of at most 4 KiB; until the server
//! accepts it, the connection may open one other stream (a request pipelined behind
//! the token in the same flight, read only once the token is accepted) and send only a
//! few KiB over both. The client sends its Auth and its first request together, so a
//! new connection costs Retry + handshake + one round trip to the header, and a warm
//! (cached, authenticated) connection one round trip. No 0-RTT: the server accepts no
//! early data, so no request can be replayed. Then:
//! one bidirectional stream per request: the client writes the preamble and its Request
//! and finishes its send side; the server reads the request (bounded in size and time),
//! checks the bearer token, and answers with a Header and the body, or an Error frame.
//! The same stream may instead carry a trace upload or a ranks query, answered with one
//! frame ([`crate::codec::exchange`]). ALPN is [`ALPN`]; TLS 1.3 only.

mod admission;
mod auth;
mod client;
mod rate;
mod server;
mod stream;
pub mod transport;
mod verify;
mod writer;

pub use admission::ServerStats;
pub use auth::TokenSet;
pub use client::{Client, ClientError, ClientOptions, ClientTls};
pub use server::{
    BundleHandler, HandlerError, HandlerFuture, ReplyFuture, Server, ServerError, ServerOptions,
    ServerTls, StatsSource,
};
pub use stream::BundleStream;
pub use transport::{Congestion, PathProfile, TransportTuning, UnknownCongestion};
pub use writer::{BundleWriter, WriteError};

/// The ALPN protocol identifier of the Delta Bundle Protocol.
pub const ALPN: &[u8] = b"starlight-dbp/1";
