//! Prometheus metrics and health endpoints of `starlightd` and `starlight-proxy`.
//!
//! Each daemon builds a [`prometheus_client::registry::Registry`] of its own
//! metrics (names in Prometheus style, prefixed `starlight_` or
//! `starlight_proxy_`) and, when an address is configured, serves it with
//! [`MetricsServer::start`] over plain HTTP/1:
//!
//! - `GET /metrics`: the registry in the OpenMetrics text format;
//! - `GET /healthz`: `200 ok` while the daemon's event loop runs (liveness);
//! - `GET /readyz`: `200 ready`, or `503` and the reason, from the daemon's own
//!   readiness check (for example: the proxy cannot be reached).
//!
//! The endpoint is off by default and meant for a loopback or cluster-internal
//! address: it serves no secret, but it reveals image names. It bounds what a
//! client can make it do: at most [`MAX_CONNECTIONS`] connections at once, the
//! request head read within [`HEADER_TIMEOUT`], no request bodies, GET and HEAD
//! only.

pub mod buckets;
mod http;

pub use http::{MetricsError, MetricsServer, ReadyCheck};
pub use prometheus_client;

use std::time::Duration;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

pub mod collect;
