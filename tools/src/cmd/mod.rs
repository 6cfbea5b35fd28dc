//! One module per `starlight` subcommand.

pub mod convert;
pub mod fetch;
