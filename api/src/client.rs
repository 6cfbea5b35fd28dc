//! The API client: one request per connection.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::protocol::{Request, Response, MAX_LINE};

/// Why an API call failed (the daemon's own refusals come back as
/// [`Response::Error`], not as this).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing listens on the socket.
    #[error("cannot reach starlightd at {path} (is starlightd running?): {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection failed mid-way.
    #[error("talking to starlightd: {0}")]
    Io(#[from] std::io::Error),
    /// starlightd answered something that is not a response.
    #[error("starlightd answered an invalid line: {0}")]
    Invalid(String),
    /// starlightd closed the connection before its final answer.
    #[error("starlightd closed the connection without an answer")]
    NoAnswer,
}

/// Sends `request` to the daemon at `socket`; calls `progress` with each
/// progress line and returns the final response.
pub async fn call(
    socket: &Path,
    request: &Request,
    mut progress: impl FnMut(&Response),
) -> Result<Response, ApiError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ApiError::Invalid(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await?;
    let mut lines = BufReader::new(read);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut buf)
            .await?;
        if n == 0 {
            return Err(ApiError::NoAnswer);
        }
        let response: Response = serde_json::from_str(buf.trim_end())
            .map_err(|e| ApiError::Invalid(format!("{e}: {:?}", truncate(&buf))))?;
        if response.is_final() {
            return Ok(response);
        }
        progress(&response);
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
