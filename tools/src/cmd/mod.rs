//! One module per `starlight` subcommand.

pub mod api;
pub mod convert;
pub mod fetch;
pub mod gc;
pub mod images;
pub mod pull;
pub mod ranks;
pub mod rm;
pub mod rpull;
pub mod status;
pub mod trace;

/// The bearer token from `--token` (or `STARLIGHT_TOKEN`) or `--token-file`.
pub fn token_from(
    token: Option<&String>,
    file: Option<&std::path::PathBuf>,
) -> anyhow::Result<Option<String>> {
    match (token, file) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(f)) => Ok(Some(starlight_api::settings::read_token_file(f)?)),
        (None, None) => Ok(None),
    }
}
