//! `starlight status`: the daemon's version, whether it reaches its proxy
//! (connect, TLS and token, bounded), its store use and its images.

use std::time::{Duration, Instant};

use transport_quic::quic::ClientError;
use transport_quic::RanksQuery;

use super::{ImageManager, ManagerError};
use crate::api::{ProxyStatus, StatusReport};

/// How long the proxy check may take.
pub const PROXY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The image the check asks the ranks of: a digest no image has, so the
/// proxy answers at once (an error frame) once it accepted the token.
const PROBE_IMAGE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

impl ImageManager {
    /// The daemon's state.
    pub async fn status(&self) -> Result<StatusReport, ManagerError> {
        let proxy = self.check_proxy().await;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            proxy,
            store_bytes: self.store_bytes()?,
            max_store_bytes: self.config.gc.max_store_bytes,
            images: self.images()?,
        })
    }

    /// Resolves the proxy's address, connects and presents the token, in
    /// at most [`PROXY_CHECK_TIMEOUT`].
    async fn check_proxy(&self) -> ProxyStatus {
        let t0 = Instant::now();
        let mut status = ProxyStatus {
            address: self.config.proxy.to_string(),
            server_name: self.config.server_name.clone(),
            resolved: None,
            reachable: false,
            error: None,
            millis: 0,
        };
        let outcome = tokio::time::timeout(PROXY_CHECK_TIMEOUT, async {
            let addr = self
                .config
                .proxy
                .resolve()
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.config.proxy))?;
            status.resolved = Some(addr.to_string());
            let client = self.client()?;
            let query = RanksQuery {
                token: self.config.token.clone(),
                image: PROBE_IMAGE.into(),
            };
            match client.ranks(addr, &self.config.server_name, &query).await {
                // Any answer of the proxy's own comes after the token was
                // accepted (it is checked on the connection's first stream).
                Ok(_) | Err(ClientError::Proxy(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => status.reachable = true,
            Ok(Err(e)) => status.error = Some(e),
            Err(_) => status.error = Some(format!("no answer within {PROXY_CHECK_TIMEOUT:?}")),
        }
        status.millis = t0.elapsed().as_millis() as u64;
        status
    }
}
