//! One module per `starlight` subcommand.

pub mod convert;
