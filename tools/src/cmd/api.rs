//! What `pull`, `images` and `rm` share: the API socket flag and a call
//! that turns starlightd's refusals into errors.

use std::path::PathBuf;

use anyhow::bail;
use starlight_api::settings::DEFAULT_API_SOCKET;
use starlight_api::{call, Request, Response};

/// The API socket flag.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// starlightd's API socket.
    #[arg(long = "api", default_value = DEFAULT_API_SOCKET)]
    pub socket: PathBuf,
}

/// Sends `request`; progress lines go to `progress`; a
/// [`Response::Error`] becomes an error.
pub async fn request(
    api: &ApiArgs,
    request: &Request,
    progress: impl FnMut(&Response),
) -> anyhow::Result<Response> {
    match call(&api.socket, request, progress).await? {
        Response::Error(message) => bail!("starlightd: {message}"),
        r => Ok(r),
    }
}

/// `bytes` in a short human form (decimal units).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(45_100_000), "45.1 MB");
        assert_eq!(human_bytes(2_500_000_000), "2.50 GB");
    }
}
