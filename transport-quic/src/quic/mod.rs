//! The Delta Bundle Protocol over QUIC (quinn + rustls with the ring provider).
//!
//! One bidirectional stream per request: the client writes the preamble and its Request
//! and finishes its send side; the server reads the request (bounded in size and time),
//! checks the bearer token, and answers with a Header and the body, or an Error frame.
//! The same stream may instead carry a trace upload or a ranks query, answered with one
//! frame ([`crate::codec::exchange`]). ALPN is [`ALPN`]; TLS 1.3 only.

mod auth;
mod client;
mod server;
mod transport;
mod verify;
mod writer;

pub use auth::TokenSet;
pub use client::{BundleStream, Client, ClientError, ClientOptions, ClientTls};
pub use server::{
    BundleHandler, HandlerError, HandlerFuture, ReplyFuture, Server, ServerError, ServerOptions,
    ServerTls,
};
pub use transport::TransportTuning;
pub use writer::{BundleWriter, WriteError};

/// The ALPN protocol identifier of the Delta Bundle Protocol.
pub const ALPN: &[u8] = b"starlight-dbp/1";
