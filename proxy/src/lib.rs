//! Starlight proxy: the seekable layer format, the registry client, the
//! indexer and the directory database.
//!
//! Without the default `server` feature only the format, the registry
//! client, the converter and credentials are built (no RocksDB): what the
//! `starlight` CLI needs.
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod config;
pub mod convert;
pub mod credentials;
#[cfg(feature = "server")]
pub mod db;
pub mod format;
#[cfg(feature = "server")]
pub mod index;
#[cfg(feature = "server")]
pub mod merge;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod optimize;
pub mod registry;
pub mod registry_stats;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod startup;
