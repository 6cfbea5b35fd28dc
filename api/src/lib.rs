//! starlight_api: what the `starlight` CLI and starlightd share, without the
//! daemon (no RocksDB, containerd client, io_uring or FUSE).
//!
//! - [`protocol`]: the API socket's JSON-lines requests and responses.
//! - [`report`]: the answers of `starlight gc` and `starlight status`.
//! - [`client`]: [`call`], one request per connection.
//! - [`trace`]: the trace record (the first open of one file).
//! - [`settings`]: starlightd's configuration file as given, its default
//!   paths and the token file ([`proxy_addr`]: the proxy's `HOST:PORT`).
//!
//! starlightd serves the protocol (`starlight_worker::api::server`) and
//! resolves the settings into its complete configuration
//! (`starlight_worker::config`).

pub mod client;
pub mod protocol;
pub mod proxy_addr;
pub mod report;
pub mod settings;
pub mod trace;

pub use client::{call, ApiError};
pub use protocol::{ImageInfo, PullAttempt, PullReport, Request, Response, MAX_LINE};
pub use proxy_addr::{ProxyAddr, ProxyAddrError};
pub use report::{GcEviction, GcReport, ProxyStatus, StatusReport};
pub use settings::{Settings, SettingsError, TraceSettings};
pub use trace::TraceRecord;
