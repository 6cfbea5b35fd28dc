//! One module per `starlight` subcommand.

pub mod api;
pub mod convert;
pub mod fetch;
pub mod images;
pub mod pull;
pub mod ranks;
pub mod rm;
pub mod trace;
