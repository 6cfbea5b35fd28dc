//! starlight_worker: the worker half of Starlight (starlightd).
//!
//! - [`store`]: the content store, keyed by SHA-256, shared by all images.
//! - [`receiver`]: receives a bundle into the store, header first.
//! - [`recovery`]: what the store trusts after a start.
//! - [`waiters`]: where each content stands; opens park on it.
//! - [`imagefs`]: the FUSE filesystem of one image, from its TOC.
//! - [`lock`]: one starlightd per state directory.
//! - [`durability`]: synced RocksDB writes, torn log tails dropped.
//! - [`meta`]: the RocksDB database of pulled images.
//! - [`trace`]: the first open of each file, for the proxy's ranks.
//! - [`trace_spool`], [`trace_upload`]: traces of every container start,
//!   spooled on disk and uploaded in the background.
//! - [`manager`]: the images starlightd holds: records, mounts, pulls, removal.
//! - [`api`]: the JSON-lines API socket's server (the protocol and client
//!   are the `starlight-api` crate's, re-exported).
//! - [`notify`]: systemd readiness notification.
//! - [`containerd`]: a containerd client that registers images from bundle headers.
//! - [`registration`]: the image manager's link to [`containerd`].
//! - [`remote_pull`]: the images of the snapshotter's remote snapshots
//!   (containerd's own pulls, CRI), pulled by the image manager.
//! - [`header_check`]: the checks every bundle header passes before any use.
//! - [`config`]: starlightd's TOML configuration and flag overrides
//!   (the file's settings and [`proxy_addr`] are `starlight-api`'s;
//!   [`gc_config`]: the store's bound).
//! - [`verify`]: the header's check against the pinned manifest digest
//!   (`transport_quic::verify`, re-exported).

pub mod api;
pub mod config;
pub mod containerd;
pub mod durability;
pub mod fdstore;
pub mod gc_config;
pub mod handover;
pub mod header_check;
pub mod imagefs;
pub mod lock;
pub mod manager;
pub mod meta;
pub mod metrics;
pub mod notify;
pub use starlight_api::proxy_addr;
pub mod receiver;
pub mod recovery;
pub mod registration;
pub mod remote_pull;
pub mod snapshotter;
pub mod store;
pub mod trace;
pub mod trace_spool;
pub mod trace_upload;
pub use transport_quic::verify;
pub mod waiters;
