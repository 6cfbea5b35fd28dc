//! QUIC transport settings, tuned for high bandwidth-delay-product links.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};

const MIB: u64 = 1024 * 1024;

/// Flow-control windows and timers of a QUIC connection.
///
/// quinn's defaults (a 1.25 MB stream window) cap one stream at about 100 Mbit/s on a
/// 100 ms path; a bundle is one long stream, so the defaults here allow 32 MiB in flight
/// per stream and 64 MiB per connection (≈ 2.6 Gbit/s at 100 ms RTT). The windows bound
/// memory too: a receiver never buffers more than `receive_window` per connection, a
/// sender never more than `send_window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// Bytes one stream may have in flight unread by the receiver.
    pub stream_receive_window: u64,
    /// Bytes all streams of a connection may have in flight unread.
    pub receive_window: u64,
    /// Bytes a sender buffers unacknowledged, over all streams.
    pub send_window: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval (clients keep their cached connection open with it).
    pub keep_alive: Option<Duration>,
    /// Most concurrent bidirectional streams the peer may open (server side).
    pub max_concurrent_streams: u32,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning {
            stream_receive_window: 32 * MIB,
            receive_window: 64 * MIB,
            send_window: 64 * MIB,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            max_concurrent_streams: 64,
        }
    }
}

/// Connection receive window of a server connection before its token is accepted.
pub(crate) const UNAUTHENTICATED_WINDOW: u32 = 16 * 1024;

impl TransportTuning {
    /// The server's configuration until a connection authenticates: one stream, and a
    /// connection receive window of a few KiB (the server raises both on its accepted
    /// Auth).
    pub(crate) fn to_quinn_server_unauthenticated(&self) -> Arc<quinn::TransportConfig> {
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        let mut c = quinn::TransportConfig::default();
        c.stream_receive_window(varint(self.stream_receive_window))
            .receive_window(VarInt::from_u32(UNAUTHENTICATED_WINDOW))
            .send_window(self.send_window)
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .datagram_receive_buffer_size(None);
        Arc::new(c)
    }

    /// The quinn configuration for these settings.
    pub(crate) fn to_quinn(&self, accept_streams: bool) -> Arc<quinn::TransportConfig> {
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        let mut c = quinn::TransportConfig::default();
        c.stream_receive_window(varint(self.stream_receive_window))
            .receive_window(varint(self.receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(if accept_streams {
                self.max_concurrent_streams
            } else {
                0
            }))
            .datagram_receive_buffer_size(None);
        Arc::new(c)
    }
}
