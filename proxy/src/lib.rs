//! Starlight proxy: the seekable layer format, the registry client, the
//! indexer and the directory database.

pub mod format;
pub mod registry;
pub mod convert;
pub mod config;
pub mod db;
pub mod index;
pub mod merge;
pub mod optimize;
