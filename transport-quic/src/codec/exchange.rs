//! The one-message exchanges besides bundles: a client stream carries the preamble and
//! exactly one of Request, TraceUpload or RanksQuery; the answer to a TraceUpload or a
//! RanksQuery is the preamble and exactly one TraceAck, Ranks or Error frame.

use bytes::{BufMut, Bytes, BytesMut};

use super::decode::{decode_message, poison, FrameBuffer};
use super::encode::put_message;
use super::frame::{preamble, FrameKind};
use super::trace::{RanksQuery, RanksReply, TraceAck, TraceUpload};
use super::types::{ErrorFrame, Request};
use super::validate::{
    validate_ack, validate_error, validate_ranks_query, validate_ranks_reply, validate_request,
    validate_trace_upload,
};
use super::{Limits, ProtocolError};

/// What a client may send on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Ask for a bundle.
    Bundle(Request),
    /// Upload a trace.
    Trace(TraceUpload),
    /// Ask for an image's ranks.
    Ranks(RanksQuery),
    /// Ask the proxy to resolve a tag again now (after a retag); answered like a
    /// ranks query, for the image the tag now names.
    Refresh(RanksQuery),
}

impl ClientMessage {
    /// The bearer token the message carries.
    pub fn token(&self) -> &str {
        match self {
            ClientMessage::Bundle(r) => &r.token,
            ClientMessage::Trace(t) => &t.token,
            ClientMessage::Ranks(q) | ClientMessage::Refresh(q) => &q.token,
        }
    }

    /// The image the message is about.
    pub fn image(&self) -> &str {
        match self {
            ClientMessage::Bundle(r) => &r.image,
            ClientMessage::Trace(t) => &t.trace.image,
            ClientMessage::Ranks(q) | ClientMessage::Refresh(q) => &q.image,
        }
    }
}

/// The whole client→server stream for `msg`: the preamble and one frame. Refuses a
/// message the peer's `limits` would refuse.
pub fn encode_message(msg: &ClientMessage, limits: &Limits) -> Result<Bytes, ProtocolError> {
    let mut out = BytesMut::new();
    out.put_slice(&preamble());
    match msg {
        ClientMessage::Bundle(r) => {
            validate_request(r, limits)?;
            put_message(FrameKind::Request, r, limits, &mut out)?;
        }
        ClientMessage::Trace(t) => {
            validate_trace_upload(t, limits)?;
            put_message(FrameKind::TraceUpload, t, limits, &mut out)?;
        }
        ClientMessage::Ranks(q) => {
            validate_ranks_query(q, limits)?;
            put_message(FrameKind::RanksQuery, q, limits, &mut out)?;
        }
        ClientMessage::Refresh(q) => {
            validate_ranks_query(q, limits)?;
            put_message(FrameKind::Refresh, q, limits, &mut out)?;
        }
    }
    Ok(out.freeze())
}

/// The server's one-frame answer to a TraceUpload or a RanksQuery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The trace is committed.
    TraceAck(TraceAck),
    /// The image's ranks.
    Ranks(RanksReply),
    /// The request failed.
    Error(ErrorFrame),
}

/// The whole server→client stream for `reply`: the preamble and one frame.
pub fn encode_reply(reply: &Reply, limits: &Limits) -> Result<Bytes, ProtocolError> {
    let mut out = BytesMut::new();
    out.put_slice(&preamble());
    match reply {
        Reply::TraceAck(a) => {
            validate_ack(a, limits)?;
            put_message(FrameKind::TraceAck, a, limits, &mut out)?;
        }
        Reply::Ranks(r) => {
            validate_ranks_reply(r, limits)?;
            put_message(FrameKind::Ranks, r, limits, &mut out)?;
        }
        Reply::Error(e) => {
            validate_error(e, limits)?;
            put_message(FrameKind::Error, e, limits, &mut out)?;
        }
    }
    Ok(out.freeze())
}

/// A message that travels alone on a stream: the preamble, then exactly one frame
/// of the kinds it admits.
pub trait OneFrame: Sized {
    /// The frame kinds, for error messages (`"a X, Y or Z frame"`).
    const EXPECTED: &'static str;
    /// The kind named in trailing-data errors.
    const FIRST: FrameKind;
    /// Whether a frame of `kind` may carry this message.
    fn admits(kind: FrameKind) -> bool;
    /// Decodes and validates the body of an admitted frame.
    fn decode(kind: FrameKind, body: &[u8], limits: &Limits) -> Result<Self, ProtocolError>;
}

impl OneFrame for ClientMessage {
    const EXPECTED: &'static str = "a Request, TraceUpload or RanksQuery frame";
    const FIRST: FrameKind = FrameKind::Request;

    fn admits(kind: FrameKind) -> bool {
        matches!(
            kind,
            FrameKind::Request
                | FrameKind::TraceUpload
                | FrameKind::RanksQuery
                | FrameKind::Refresh
        )
    }

    fn decode(kind: FrameKind, body: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Ok(match kind {
            FrameKind::TraceUpload => {
                let t: TraceUpload = decode_message(kind, body)?;
                validate_trace_upload(&t, limits)?;
                ClientMessage::Trace(t)
            }
            FrameKind::RanksQuery => {
                let q: RanksQuery = decode_message(kind, body)?;
                validate_ranks_query(&q, limits)?;
                ClientMessage::Ranks(q)
            }
            FrameKind::Refresh => {
                let q: RanksQuery = decode_message(kind, body)?;
                validate_ranks_query(&q, limits)?;
                ClientMessage::Refresh(q)
            }
            _ => {
                let r: Request = decode_message(kind, body)?;
                validate_request(&r, limits)?;
                ClientMessage::Bundle(r)
            }
        })
    }
}

impl OneFrame for Reply {
    const EXPECTED: &'static str = "a TraceAck, Ranks or Error frame";
    const FIRST: FrameKind = FrameKind::TraceAck;

    fn admits(kind: FrameKind) -> bool {
        matches!(
            kind,
            FrameKind::TraceAck | FrameKind::Ranks | FrameKind::Error
        )
    }

    fn decode(kind: FrameKind, body: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Ok(match kind {
            FrameKind::TraceAck => {
                let a: TraceAck = decode_message(kind, body)?;
                validate_ack(&a, limits)?;
                Reply::TraceAck(a)
            }
            FrameKind::Ranks => {
                let r: RanksReply = decode_message(kind, body)?;
                validate_ranks_reply(&r, limits)?;
                Reply::Ranks(r)
            }
            _ => {
                let e: ErrorFrame = decode_message(kind, body)?;
                validate_error(&e, limits)?;
                Reply::Error(e)
            }
        })
    }
}

/// Decodes a one-frame stream of `T`, fed in any chunking.
#[derive(Debug)]
pub struct OneFrameDecoder<T> {
    limits: Limits,
    frames: FrameBuffer,
    done: bool,
    failed: Option<ProtocolError>,
    _message: std::marker::PhantomData<fn() -> T>,
}

/// Decodes the client→server stream of any kind (what the server receives): the
/// preamble, then exactly one Request, TraceUpload or RanksQuery frame.
pub type MessageDecoder = OneFrameDecoder<ClientMessage>;

/// Decodes a one-frame answer (what a client uploading a trace or asking for ranks
/// receives).
pub type ReplyDecoder = OneFrameDecoder<Reply>;

impl<T: OneFrame> Default for OneFrameDecoder<T> {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl<T: OneFrame> OneFrameDecoder<T> {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        OneFrameDecoder {
            limits,
            frames: FrameBuffer::default(),
            done: false,
            failed: None,
            _message: std::marker::PhantomData,
        }
    }

    /// Appends received bytes (any chunking).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// The message once it is complete, `None` if more bytes are needed (or it was
    /// already returned). After an error, every call fails.
    pub fn next_frame_message(&mut self) -> Result<Option<T>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        let r = self.decode_next();
        poison(&mut self.failed, r)
    }

    fn decode_next(&mut self) -> Result<Option<T>, ProtocolError> {
        if self.done {
            return match self.frames.len() {
                0 => Ok(None),
                len => Err(ProtocolError::TrailingData {
                    after: T::FIRST,
                    len,
                }),
            };
        }
        let admit = |kind, _len| {
            if T::admits(kind) {
                Ok(())
            } else {
                Err(ProtocolError::UnexpectedFrame {
                    got: kind,
                    expected: T::EXPECTED,
                })
            }
        };
        let Some((kind, body)) = self.frames.next_frame(&self.limits, admit)? else {
            return Ok(None);
        };
        let msg = T::decode(kind, &body, &self.limits)?;
        self.done = true;
        Ok(Some(msg))
    }

    /// Call once the transport reports the end of the stream: fails unless exactly one
    /// complete message arrived and nothing followed it.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(ProtocolError::Failed(Box::new(e.clone())));
        }
        if !self.done {
            return Err(ProtocolError::Truncated {
                expected: T::EXPECTED,
            });
        }
        if !self.frames.is_empty() {
            return Err(ProtocolError::TrailingData {
                after: T::FIRST,
                len: self.frames.len(),
            });
        }
        Ok(())
    }
}

impl<T: OneFrame> OneFrameDecoder<T> {
    /// The protocol version the stream announced, once its preamble arrived.
    pub fn version(&self) -> Option<u16> {
        self.frames.version()
    }
}

impl MessageDecoder {
    /// The client's message once complete (see [`OneFrameDecoder::next_frame_message`]).
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>, ProtocolError> {
        self.next_frame_message()
    }
}

impl ReplyDecoder {
    /// The server's reply once complete (see [`OneFrameDecoder::next_frame_message`]).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        self.next_frame_message()
    }
}

/// The first message of a connection: the bearer token, in one Auth frame of at most
/// [`MAX_AUTH_FRAME`](super::MAX_AUTH_FRAME) bytes. The server reads nothing larger before accepting it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Auth {
    /// The bearer token.
    pub token: String,
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        write!(f, "Auth({} bytes)", self.token.len())
    }
}

/// The server's answer to an [`Auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// The token is accepted: the connection may send requests.
    Accepted,
    /// Refused (Unauthorized, or Unavailable when the server is full).
    Refused(ErrorFrame),
}

/// The client's auth stream: the preamble and one Auth frame.
pub fn encode_auth(auth: &Auth, limits: &Limits) -> Result<Bytes, ProtocolError> {
    let mut out = BytesMut::new();
    out.put_slice(&preamble());
    put_message(FrameKind::Auth, auth, limits, &mut out)?;
    Ok(out.freeze())
}

/// The server's answer on the auth stream: the preamble and one AuthOk or Error frame.
pub fn encode_auth_reply(reply: &AuthReply, limits: &Limits) -> Result<Bytes, ProtocolError> {
    let mut out = BytesMut::new();
    out.put_slice(&preamble());
    match reply {
        AuthReply::Accepted => put_message(FrameKind::AuthOk, &(), limits, &mut out)?,
        AuthReply::Refused(e) => {
            validate_error(e, limits)?;
            put_message(FrameKind::Error, e, limits, &mut out)?;
        }
    }
    Ok(out.freeze())
}

impl OneFrame for Auth {
    const EXPECTED: &'static str = "an Auth frame";
    const FIRST: FrameKind = FrameKind::Auth;

    fn admits(kind: FrameKind) -> bool {
        kind == FrameKind::Auth
    }

    fn decode(kind: FrameKind, body: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        // The frame's length (≤ MAX_AUTH_FRAME) already bounds the token.
        decode_message(kind, body)
    }
}

impl OneFrame for AuthReply {
    const EXPECTED: &'static str = "an AuthOk or Error frame";
    const FIRST: FrameKind = FrameKind::AuthOk;

    fn admits(kind: FrameKind) -> bool {
        matches!(kind, FrameKind::AuthOk | FrameKind::Error)
    }

    fn decode(kind: FrameKind, body: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Ok(match kind {
            FrameKind::AuthOk => {
                decode_message::<()>(kind, body)?;
                AuthReply::Accepted
            }
            _ => {
                let e: ErrorFrame = decode_message(kind, body)?;
                validate_error(&e, limits)?;
                AuthReply::Refused(e)
            }
        })
    }
}

/// Decodes the client's auth stream (server side).
pub type AuthDecoder = OneFrameDecoder<Auth>;

/// Decodes the server's answer on the auth stream (client side).
pub type AuthReplyDecoder = OneFrameDecoder<AuthReply>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::frame::MAX_AUTH_FRAME;
    use super::super::trace::{RankedPath, Trace, TraceOpen};
    use super::*;

    fn upload() -> TraceUpload {
        TraceUpload {
            token: "t".into(),
            trace: Trace {
                id: "id-1".into(),
                image: "r/app:v1".into(),
                manifest_digest: "sha256:m".into(),
                opens: vec![
                    TraceOpen {
                        path: "app/a".into(),
                        layer: 0,
                        rank: 0,
                        ms_since_start: 0,
                        ms_waited: 0,
                    },
                    TraceOpen {
                        path: "app/b".into(),
                        layer: 1,
                        rank: 1,
                        ms_since_start: 12,
                        ms_waited: 7,
                    },
                ],
            },
        }
    }

    fn decode_all(wire: &[u8], chunk: usize) -> Result<ClientMessage, ProtocolError> {
        let mut dec = MessageDecoder::default();
        let mut got = None;
        for piece in wire.chunks(chunk) {
            dec.feed(piece);
            if let Some(m) = dec.next_message()? {
                got = Some(m);
            }
        }
        dec.finish()?;
        Ok(got.unwrap())
    }

    #[test]
    fn every_client_message_round_trips_in_pieces() {
        let limits = Limits::default();
        let msgs = [
            ClientMessage::Trace(upload()),
            ClientMessage::Ranks(RanksQuery {
                token: "t".into(),
                image: "r/app:v1".into(),
            }),
            ClientMessage::Refresh(RanksQuery {
                token: "t".into(),
                image: "r/app:v1".into(),
            }),
            ClientMessage::Bundle(Request {
                token: "t".into(),
                image: "r/app:v1".into(),
                unordered: true,
                ..Request::default()
            }),
        ];
        for msg in msgs {
            let wire = encode_message(&msg, &limits).unwrap();
            for chunk in [1, 3, 1000] {
                assert_eq!(decode_all(&wire, chunk).unwrap(), msg);
            }
            assert_eq!(msg.token(), "t");
            assert_eq!(msg.image(), "r/app:v1");
        }
    }

    #[test]
    fn zero_ranks_and_layers_survive() {
        let wire = encode_message(&ClientMessage::Trace(upload()), &Limits::default()).unwrap();
        let ClientMessage::Trace(t) = decode_all(&wire, 5).unwrap() else {
            panic!("not a trace")
        };
        assert_eq!(t.trace.opens[0].rank, 0);
        assert_eq!(t.trace.opens[0].layer, 0);
        assert_eq!(t.trace.opens[1].ms_waited, 7);
    }

    #[test]
    fn the_old_request_decoder_refuses_a_trace_clearly() {
        let wire = encode_message(&ClientMessage::Trace(upload()), &Limits::default()).unwrap();
        let mut dec = super::super::RequestDecoder::default();
        dec.feed(&wire);
        let err = dec.next_request().unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::UnexpectedFrame {
                    got: FrameKind::TraceUpload,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn limits_apply_to_traces() {
        let limits = Limits {
            max_toc_entries: 1,
            ..Limits::default()
        };
        let err = encode_message(&ClientMessage::Trace(upload()), &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::LimitExceeded { .. }), "{err}");
        let wire = encode_message(&ClientMessage::Trace(upload()), &Limits::default()).unwrap();
        let mut dec = MessageDecoder::new(limits);
        dec.feed(&wire);
        assert!(dec.next_message().is_err());
        assert!(dec.finish().is_err());
    }

    #[test]
    fn replies_round_trip_and_nothing_may_follow() {
        let limits = Limits::default();
        let replies = [
            Reply::TraceAck(TraceAck {
                id: "id-1".into(),
                duplicate: false,
                folded: 2,
                ignored: 0,
            }),
            Reply::Ranks(RanksReply {
                manifest_digest: "sha256:m".into(),
                traces: 0,
                inherited_from: Some("sha256:old".into()),
                ranks: vec![RankedPath {
                    path: "a".into(),
                    rank_sum: 0,
                    hits: 3,
                }],
            }),
            Reply::Error(ErrorFrame {
                code: super::super::ErrorCode::NotFound,
                message: "no".into(),
            }),
        ];
        for reply in replies {
            let wire = encode_reply(&reply, &limits).unwrap();
            let mut dec = ReplyDecoder::default();
            for piece in wire.chunks(2) {
                dec.feed(piece);
            }
            assert_eq!(dec.next_reply().unwrap(), Some(reply.clone()));
            dec.finish().unwrap();
            let mut extra = wire.to_vec();
            extra.push(0);
            let mut dec = ReplyDecoder::default();
            dec.feed(&extra);
            dec.next_reply().unwrap();
            assert!(dec.next_reply().is_err());
        }
        // A bundle frame is not a reply.
        let mut dec = ReplyDecoder::default();
        let wire = super::super::RequestEncoder::default()
            .encode(&Request::default())
            .unwrap();
        dec.feed(&wire);
        assert!(dec.next_reply().is_err());
    }
    #[test]
    fn auth_round_trips_and_is_bounded_before_buffering() {
        let limits = Limits::default();
        let auth = Auth {
            token: "secret".into(),
        };
        let wire = encode_auth(&auth, &limits).unwrap();
        let mut dec = AuthDecoder::new(limits);
        dec.feed(&wire);
        assert_eq!(dec.next_frame_message().unwrap(), Some(auth.clone()));
        dec.finish().unwrap();
        assert!(!auth.to_string().contains("secret"));

        // A token too long for the Auth frame is refused by the encoder...
        let big = Auth {
            token: "x".repeat(MAX_AUTH_FRAME as usize),
        };
        assert!(encode_auth(&big, &limits).is_err());
        // ...and a frame header announcing more is refused from its 5 bytes.
        let mut wire = preamble().to_vec();
        wire.extend_from_slice(&super::super::frame::frame_header(
            FrameKind::Auth,
            MAX_AUTH_FRAME + 1,
        ));
        let mut dec = AuthDecoder::new(limits);
        dec.feed(&wire);
        let err = dec.next_frame_message().unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");

        // A Request where the Auth belongs is refused, not buffered.
        let req = encode_message(
            &ClientMessage::Bundle(Request {
                token: "t".into(),
                image: "a".into(),
                ..Request::default()
            }),
            &limits,
        )
        .unwrap();
        let mut dec = AuthDecoder::new(limits);
        dec.feed(&req);
        assert!(dec.next_frame_message().is_err());
    }

    #[test]
    fn auth_replies_round_trip() {
        let limits = Limits::default();
        for reply in [
            AuthReply::Accepted,
            AuthReply::Refused(ErrorFrame {
                code: super::super::ErrorCode::Unauthorized,
                message: "no".into(),
            }),
        ] {
            let wire = encode_auth_reply(&reply, &limits).unwrap();
            let mut dec = AuthReplyDecoder::new(limits);
            dec.feed(&wire);
            assert_eq!(dec.next_frame_message().unwrap(), Some(reply));
            dec.finish().unwrap();
        }
    }
}
