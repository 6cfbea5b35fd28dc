//! Starlight proxy: the seekable layer format, the registry client, the
//! indexer and the directory database.

pub mod format;
pub mod registry;
