//! QUIC transport settings: flow-control windows sized from the path, the congestion
//! controller and its initial window.
//!
//! # Why these defaults
//!
//! A bundle is one long stream. Its windows must cover the path's bandwidth-delay
//! product (BDP) or the stream is window-limited, but they must not be far larger:
//! quinn (0.11.15+) closes the connection with "too many gaps in stream buffer" once
//! more than 1024 out-of-order pieces of one stream are buffered, and the number of
//! holes a receiver holds is about `loss × window / packet size`. The windows are
//! therefore twice the BDP of a configured path, clamped to
//! [[`MIN_WINDOW`], [`MAX_STREAM_WINDOW`]]: at the upper bound and 2% loss of
//! 1200-byte packets that is ≈ 700 holes, below quinn's limit.
//!
//! The congestion controller is BBR by default: it models the path's rate and RTT
//! instead of reading every loss as congestion, so random loss (0.5–2% on a WAN) does
//! not collapse its rate the way it collapses NewReno's or CUBIC's (their throughput
//! falls as `1/(RTT·√loss)`: at 300 ms and 2% loss, well under 1 Mbit/s). Its startup
//! is paced and its congestion window stays near 2–3 BDP, so it does not overshoot a
//! BDP-sized bottleneck queue by a whole window as a loss-based slow start can, which
//! would drop every other packet and leave thousands of holes. CUBIC and NewReno stay
//! selectable.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::{IdleTimeout, VarInt};

const MIB: u64 = 1024 * 1024;

/// Smallest flow-control window the path sizing gives.
pub const MIN_WINDOW: u64 = 4 * MIB;
/// Largest stream window the path sizing gives (see the module documentation).
pub const MAX_STREAM_WINDOW: u64 = 40 * MIB;
/// Largest connection window (two bundles at full rate on one connection).
pub const MAX_CONNECTION_WINDOW: u64 = 2 * MAX_STREAM_WINDOW;
/// Round-trip time of the default path.
pub const DEFAULT_PATH_RTT: Duration = Duration::from_millis(150);
/// Rate of the default path, bits per second.
pub const DEFAULT_PATH_RATE_BPS: u64 = 1_000_000_000;
/// Default initial congestion window in bytes (paced over the first RTT): 512 KiB, so
/// that the compressed header of an image of a few thousand files (≈ 0.3 MB) leaves in
/// the first flight instead of over several round trips of a slow start. Paced over a
/// 50 ms RTT it is ≈ 84 Mbit/s, over 150 ms ≈ 28 Mbit/s: a burst a WAN path of
/// 100 Mbit/s absorbs. Lower it for slow links (`[serve] initial_window`).
pub const DEFAULT_INITIAL_WINDOW: u64 = 512 * 1024;
/// Smallest accepted initial window (two minimum-size QUIC datagrams).
pub const MIN_INITIAL_WINDOW: u64 = 2 * 1200;
/// Largest accepted initial window.
pub const MAX_INITIAL_WINDOW: u64 = 4 * MIB;

/// The congestion controller of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBR: rate- and RTT-based, tolerant of random loss (the default).
    #[default]
    Bbr,
    /// CUBIC: loss-based (quinn's own default).
    Cubic,
    /// NewReno: loss-based, the most conservative.
    NewReno,
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
        })
    }
}

/// An unknown congestion controller name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown congestion controller {0:?} (expected bbr, cubic or newreno)")]
pub struct UnknownCongestion(pub String);

impl FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "new_reno" | "reno" => Ok(Congestion::NewReno),
            _ => Err(UnknownCongestion(s.to_string())),
        }
    }
}

/// The path a connection is expected to run over, for sizing its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathProfile {
    /// Round-trip time.
    pub rtt: Duration,
    /// Bottleneck rate in bits per second.
    pub rate_bps: u64,
}

impl Default for PathProfile {
    fn default() -> Self {
        PathProfile {
            rtt: DEFAULT_PATH_RTT,
            rate_bps: DEFAULT_PATH_RATE_BPS,
        }
    }
}

impl PathProfile {
    /// Bandwidth-delay product in bytes.
    pub fn bdp_bytes(&self) -> u64 {
        let bdp = u128::from(self.rate_bps).saturating_mul(self.rtt.as_nanos()) / 8 / 1_000_000_000;
        u64::try_from(bdp).unwrap_or(u64::MAX)
    }

    /// The stream window for this path: 2 × BDP within [`MIN_WINDOW`],
    /// [`MAX_STREAM_WINDOW`].
    pub fn stream_window(&self) -> u64 {
        self.bdp_bytes()
            .saturating_mul(2)
            .clamp(MIN_WINDOW, MAX_STREAM_WINDOW)
    }

    /// The connection window for this path: two streams' worth, at most
    /// [`MAX_CONNECTION_WINDOW`].
    pub fn connection_window(&self) -> u64 {
        self.stream_window()
            .saturating_mul(2)
            .min(MAX_CONNECTION_WINDOW)
    }
}

/// Flow-control windows, congestion control and timers of a QUIC connection.
///
/// The windows bound memory too: a receiver never buffers more than `receive_window`
/// per connection, a sender never more than `send_window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// Bytes one stream may have in flight unread by the receiver.
    pub stream_receive_window: u64,
    /// Bytes all streams of a connection may have in flight unread.
    pub receive_window: u64,
    /// Bytes a sender buffers unacknowledged, over all streams.
    pub send_window: u64,
    /// The congestion controller.
    pub congestion: Congestion,
    /// Initial congestion window in bytes (paced, clamped to
    /// [[`MIN_INITIAL_WINDOW`], [`MAX_INITIAL_WINDOW`]]).
    pub initial_window: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval (clients keep their cached connection open with it).
    pub keep_alive: Option<Duration>,
    /// Most concurrent bidirectional streams the peer may open (server side).
    pub max_concurrent_streams: u32,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self::for_path(PathProfile::default())
    }
}

/// Connection receive window of a server connection before its token is accepted.
pub(crate) const UNAUTHENTICATED_WINDOW: u32 = 16 * 1024;
/// Streams a server connection may open before its token is accepted: the Auth stream
/// and one pipelined request.
pub(crate) const UNAUTHENTICATED_STREAMS: u32 = 2;

impl TransportTuning {
    /// Settings with windows sized for `path` (see [`PathProfile::stream_window`]) and
    /// the default controller, initial window and timers.
    pub fn for_path(path: PathProfile) -> Self {
        TransportTuning {
            stream_receive_window: path.stream_window(),
            receive_window: path.connection_window(),
            send_window: path.connection_window(),
            congestion: Congestion::default(),
            initial_window: DEFAULT_INITIAL_WINDOW,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            max_concurrent_streams: 64,
        }
    }

    fn base(&self) -> quinn::TransportConfig {
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        let mut c = quinn::TransportConfig::default();
        let iw = self
            .initial_window
            .clamp(MIN_INITIAL_WINDOW, MAX_INITIAL_WINDOW);
        match self.congestion {
            Congestion::Bbr => {
                let mut cc = BbrConfig::default();
                cc.initial_window(iw);
                c.congestion_controller_factory(Arc::new(cc));
            }
            Congestion::Cubic => {
                let mut cc = CubicConfig::default();
                cc.initial_window(iw);
                c.congestion_controller_factory(Arc::new(cc));
            }
            Congestion::NewReno => {
                let mut cc = NewRenoConfig::default();
                cc.initial_window(iw);
                c.congestion_controller_factory(Arc::new(cc));
            }
        }
        c.stream_receive_window(varint(self.stream_receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        c
    }

    /// The server's configuration until a connection authenticates: two streams (the
    /// Auth stream and one request pipelined behind it, read only once the token is
    /// accepted), and a connection receive window of a few KiB over both (the server
    /// raises both limits on its accepted Auth).
    pub(crate) fn to_quinn_server_unauthenticated(&self) -> Arc<quinn::TransportConfig> {
        let mut c = self.base();
        c.receive_window(VarInt::from_u32(UNAUTHENTICATED_WINDOW))
            .max_concurrent_bidi_streams(VarInt::from_u32(UNAUTHENTICATED_STREAMS));
        Arc::new(c)
    }

    /// The quinn configuration for these settings.
    pub(crate) fn to_quinn(&self, accept_streams: bool) -> Arc<quinn::TransportConfig> {
        let mut c = self.base();
        c.receive_window(VarInt::from_u64(self.receive_window).unwrap_or(VarInt::MAX))
            .max_concurrent_bidi_streams(VarInt::from_u32(if accept_streams {
                self.max_concurrent_streams
            } else {
                0
            }));
        Arc::new(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(ms: u64, mbit: u64) -> PathProfile {
        PathProfile {
            rtt: Duration::from_millis(ms),
            rate_bps: mbit * 1_000_000,
        }
    }

    #[test]
    fn windows_are_twice_the_bdp_within_bounds() {
        // 100 Mbit/s × 150 ms = 1.875 MB: 2 BDP = 3.75 MB, raised to the minimum.
        assert_eq!(path(150, 100).stream_window(), MIN_WINDOW);
        // 1 Gbit/s × 150 ms = 18.75 MB: 2 BDP = 37.5 MB.
        assert_eq!(path(150, 1000).stream_window(), 37_500_000);
        assert_eq!(path(150, 1000).connection_window(), 75_000_000);
        assert_eq!(path(300, 1000).connection_window(), MAX_CONNECTION_WINDOW);
        // 1 Gbit/s × 300 ms: capped.
        assert_eq!(path(300, 1000).stream_window(), MAX_STREAM_WINDOW);
        assert_eq!(path(0, 1000).stream_window(), MIN_WINDOW);
        // Absurd paths saturate instead of overflowing.
        let huge = PathProfile {
            rtt: Duration::from_secs(u64::MAX / 4),
            rate_bps: u64::MAX,
        };
        assert_eq!(huge.stream_window(), MAX_STREAM_WINDOW);
    }

    #[test]
    fn the_cap_keeps_loss_holes_below_quinns_limit() {
        // ≈ holes at 2% loss of 1200-byte packets in a full stream window.
        let holes = MAX_STREAM_WINDOW as f64 / 1200.0 * 0.02;
        assert!(holes < 1024.0 * 0.75, "{holes}");
    }

    #[test]
    fn defaults_are_bbr_with_a_paced_wan_initial_window() {
        let t = TransportTuning::default();
        assert_eq!(t.congestion, Congestion::Bbr);
        assert_eq!(t.initial_window, DEFAULT_INITIAL_WINDOW);
        assert_eq!(t.stream_receive_window, 37_500_000);
        assert!(t.receive_window >= t.stream_receive_window);
    }

    #[test]
    fn congestion_names_round_trip() {
        for c in [Congestion::Bbr, Congestion::Cubic, Congestion::NewReno] {
            assert_eq!(c.to_string().parse::<Congestion>(), Ok(c));
        }
        assert_eq!("BBR".parse::<Congestion>(), Ok(Congestion::Bbr));
        assert!("vegas".parse::<Congestion>().is_err());
    }
}
