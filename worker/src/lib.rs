//! starlight_worker: the worker half of Starlight (starlightd).
//!
//! - [`store`]: the content store, keyed by SHA-256, shared by all images.
//! - [`receiver`]: receives a bundle into the store, header first.
//! - [`waiters`]: where each content stands; opens park on it.
//! - [`imagefs`]: the FUSE filesystem of one image, from its TOC.
//! - [`meta`]: the RocksDB database of pulled images.
//! - [`config`]: starlightd's TOML configuration and flag overrides.

pub mod config;
pub mod imagefs;
pub mod meta;
pub mod receiver;
pub mod snapshotter;
pub mod store;
pub mod waiters;
