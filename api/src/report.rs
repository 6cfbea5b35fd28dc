//! The answers of `starlight gc` and `starlight status`.

use serde::{Deserialize, Serialize};

use crate::protocol::ImageInfo;

/// One image a collection evicts (or would, with `dry_run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcEviction {
    /// The reference it was pulled by.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// Why: `removed` (gone from containerd), `unused` (unused too long) or
    /// `bound` (the store is above `max_store_bytes`).
    pub reason: String,
    /// Contents no remaining image names once it is gone.
    pub contents: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// What a collection did (or would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The store's size before (distinct contents of every image).
    pub store_bytes_before: u64,
    /// Its size after the evictions.
    pub store_bytes_after: u64,
    /// The configured bound.
    pub max_store_bytes: Option<u64>,
    /// The images evicted, in order.
    pub evicted: Vec<GcEviction>,
    /// Contents deleted (planned, with `dry_run`).
    pub contents_freed: usize,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Images kept because they are in use.
    pub in_use: usize,
}

/// Whether starlightd reaches its proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The configured address (`HOST:PORT`).
    pub address: String,
    /// The name its certificate is checked for.
    pub server_name: String,
    /// What the address resolved to, if it did.
    pub resolved: Option<String>,
    /// Connected, and the proxy accepted the token.
    pub reachable: bool,
    /// What went wrong otherwise.
    pub error: Option<String>,
    /// Milliseconds the check took.
    pub millis: u64,
}

/// The daemon's state, for `starlight status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// starlightd's version.
    pub version: String,
    /// The proxy check.
    pub proxy: ProxyStatus,
    /// Bytes of the contents the images name, in the store.
    pub store_bytes: u64,
    /// The configured bound.
    pub max_store_bytes: Option<u64>,
    /// The images held.
    pub images: Vec<ImageInfo>,
}
