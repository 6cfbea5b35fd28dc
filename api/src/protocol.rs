//! The wire protocol: a unix socket speaking JSON lines. The client writes
//! one [`Request`] line; the daemon answers with zero or more progress
//! lines ([`Response::Registered`]) and then one final line (any other
//! [`Response`]), and closes the connection.

use serde::{Deserialize, Serialize};

use crate::report::{GcReport, StatusReport};
use crate::trace::TraceRecord;

/// The longest request or response line accepted, in bytes.
pub const MAX_LINE: usize = 64 << 20;

/// What the client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Pull an image from the proxy and register it in containerd.
    Pull {
        /// The image reference (`repo:tag` or `host/repo:tag`).
        image: String,
        /// Manifest digests (or references) of held images the proxy may
        /// assume present; empty: every complete image starlightd holds.
        from: Vec<String>,
        /// Answer only once the whole body arrived (otherwise: once registered).
        wait: bool,
        /// Record the first open of every file (see [`Request::TakeTrace`]).
        trace: bool,
        /// Ask for payloads in layer order, ignoring ranks.
        unordered: bool,
    },
    /// List the images starlightd holds.
    Images,
    /// Remove an image (by reference or manifest digest) and the contents
    /// no other image uses. Refused while snapshots (containers' root
    /// filesystems) stand on it, unless `force`.
    Remove {
        /// The image.
        image: String,
        /// Remove it even if containers use it (they lose its files).
        #[serde(default)]
        force: bool,
    },
    /// Return and clear the trace recorded for an image pulled with `trace`.
    TakeTrace {
        /// The image (reference or manifest digest).
        image: String,
    },
    /// Run a garbage collection now (or only plan it).
    Gc {
        /// Report what would be freed, change nothing.
        dry_run: bool,
    },
    /// The daemon's version, proxy reachability, store use and images.
    Status,
    /// Pull an image into containerd through starlightd's remote snapshots
    /// (`starlight rpull`): the client resolved the image in the registry;
    /// starlightd prepares each layer in its snapshotter with the labels
    /// containerd's CRI plugin sets and writes the image record, over its
    /// own containerd socket.
    RemotePull {
        /// The image reference (`host/repo:tag`).
        image: String,
        /// Its manifest digest.
        manifest_digest: String,
        /// The manifest's media type.
        manifest_media_type: String,
        /// The manifest, as the registry serves it (JSON).
        manifest: String,
        /// The image config, as the registry serves it (JSON).
        config: String,
        /// The containerd namespace (`None`: starlightd's own).
        namespace: Option<String>,
        /// The snapshotter containerd knows starlightd by.
        snapshotter: String,
    },
}

/// Timings and sizes of a pull.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullReport {
    /// The reference pulled.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// Entries of its table of contents.
    pub entries: usize,
    /// Payloads the bundle carries.
    pub payloads: usize,
    /// Compressed bytes of those payloads.
    pub payload_bytes: u64,
    /// Uncompressed bytes of those payloads.
    pub content_bytes: u64,
    /// Seconds from the request to the bundle's header.
    pub header_secs: f64,
    /// Seconds from the request to the image being mounted and registered.
    pub registered_secs: f64,
    /// Seconds from the request to the end of the body (only with `wait`).
    pub complete_secs: Option<f64>,
    /// Bytes received on the stream, framing included (only with `wait`).
    pub bytes_received: Option<u64>,
    /// Whether every content arrived and was verified (only with `wait`).
    pub complete: Option<bool>,
    /// Contents named held in the request (already verified in the store).
    #[serde(default)]
    pub held_payloads: usize,
    /// Payloads verified and stored, over every stream (only with `wait`).
    #[serde(default)]
    pub payloads_received: Option<usize>,
    /// Payload bytes received, whole or cut off, over every stream (only
    /// with `wait`); beyond `payload_bytes` is what a break made resend.
    #[serde(default)]
    pub payload_bytes_received: Option<u64>,
    /// Each stream of the receive: the first, then each resumed one (only
    /// with `wait`).
    #[serde(default)]
    pub attempts: Option<Vec<PullAttempt>>,
}

/// What one stream of a pull carried (see [`PullReport::attempts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullAttempt {
    /// Bytes received on the stream (framing included).
    pub bytes_received: u64,
    /// Payload bytes received (whole or cut off).
    pub payload_bytes: u64,
    /// Payloads its header announced.
    pub payloads_announced: usize,
    /// Payloads verified and stored from it.
    pub payloads_stored: usize,
    /// Their payload bytes (compressed, as sent).
    #[serde(default)]
    pub payload_bytes_stored: u64,
    /// Why it broke (`None`: it ended whole).
    pub error: Option<String>,
}

/// One image starlightd holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The reference it was pulled by.
    pub name: String,
    /// Its manifest digest.
    pub digest: String,
    /// Whether every content arrived.
    pub complete: bool,
    /// Entries of its table of contents.
    pub files: usize,
    /// Distinct contents the image needs.
    pub contents: usize,
    /// Of those, the ones in the content store.
    pub contents_held: usize,
    /// Bytes of the contents held.
    pub bytes: u64,
    /// Where its filesystem is mounted.
    pub mountpoint: String,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Progress of a pull with `wait`: the image is registered, the body
    /// still arriving.
    Registered(PullReport),
    /// A pull finished (registered, or complete with `wait`).
    Pulled(PullReport),
    /// The images held.
    Images(Vec<ImageInfo>),
    /// An image was removed.
    Removed {
        /// Its manifest digest.
        digest: String,
        /// Contents deleted from the store.
        contents_freed: usize,
        /// Their bytes.
        bytes_freed: u64,
    },
    /// The trace of an image, in order of first open.
    Trace(Vec<TraceRecord>),
    /// What a collection freed (or would free).
    Gc(GcReport),
    /// The daemon's state.
    Status(StatusReport),
    /// A remote pull into containerd finished.
    RemotePulled {
        /// The containerd namespace the image went into.
        namespace: String,
        /// Layers answered as remote snapshots.
        remote: usize,
        /// Layers whose snapshot containerd had already.
        present: usize,
    },
    /// The request failed.
    Error(String),
}

impl Response {
    /// Whether this is the last line of an answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Registered(_))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_json_lines() {
        let req = Request::Pull {
            image: "app:v1".into(),
            from: vec!["sha256:aa".into()],
            wait: true,
            trace: false,
            unordered: true,
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        let resp = Response::Removed {
            digest: "sha256:aa".into(),
            contents_freed: 0,
            bytes_freed: 0,
        };
        let line = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), resp);
        assert!(resp.is_final());
        let report = PullReport {
            image: "a".into(),
            digest: "d".into(),
            entries: 0,
            payloads: 0,
            payload_bytes: 0,
            content_bytes: 0,
            header_secs: 0.0,
            registered_secs: 0.0,
            complete_secs: None,
            bytes_received: None,
            complete: None,
            held_payloads: 2,
            payloads_received: Some(1),
            payload_bytes_received: Some(10),
            attempts: Some(vec![PullAttempt {
                bytes_received: 12,
                payload_bytes: 10,
                payloads_announced: 1,
                payloads_stored: 1,
                payload_bytes_stored: 10,
                error: Some("cut".into()),
            }]),
        };
        let line = serde_json::to_string(&Response::Pulled(report.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&line).unwrap(),
            Response::Pulled(report.clone())
        );
        assert!(!Response::Registered(report).is_final());
    }
}
