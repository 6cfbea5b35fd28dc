//! starlightd's API: a unix socket speaking JSON lines. The protocol and
//! its client live in the `starlight-api` crate (re-exported here, so the
//! CLI needs none of the daemon); this module is the daemon's side: the
//! [`server`] and its [`peer`] policy.

pub mod peer;
mod remote;
pub mod server;

pub use starlight_api::client::{call, ApiError};
pub use starlight_api::protocol::*;
pub use starlight_api::report::{GcEviction, GcReport, ProxyStatus, StatusReport};
