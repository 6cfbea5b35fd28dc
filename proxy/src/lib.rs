//! Starlight proxy: the seekable layer format, the registry client, the
//! indexer and the directory database.
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod credentials;
pub mod db;
pub mod format;
pub mod index;
pub mod merge;
pub mod metrics;
pub mod optimize;
pub mod registry;
pub mod registry_stats;
pub mod serve;
pub mod startup;
