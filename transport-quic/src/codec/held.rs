//! Protocol version 4: the proxy tells the worker which of its held images the
//! bundle was planned against. The Header frame's body (before compression) is
//! the postcard [`super::Header`] followed by the postcard list of the held
//! images' names as the request gave them. Nothing else changes; a client that
//! announces version 3 or older gets the version 3 frame, without the list.

use super::decode::decode_bounded_prefix;
use super::frame::FrameKind;
use super::{Header, Limits, ProtocolError};

/// The first version whose Header frame carries the held images used.
pub const HELD_USED_VERSION: u16 = 4;
/// Most names in the list (the proxy looks at 64 held images by default).
pub const MAX_HELD_USED: usize = 4096;
/// Longest name in the list, bytes.
pub const MAX_HELD_NAME: usize = 4096;

/// Appends the postcard list `held_used` to a Header frame's body.
pub(crate) fn append(held_used: &[String], body: &mut Vec<u8>) -> Result<(), ProtocolError> {
    check(held_used)?;
    let list = postcard::to_stdvec(held_used).map_err(|e| ProtocolError::Malformed {
        kind: FrameKind::Header,
        reason: e.to_string(),
    })?;
    body.extend_from_slice(&list);
    Ok(())
}

fn check(held_used: &[String]) -> Result<(), ProtocolError> {
    if held_used.len() > MAX_HELD_USED || held_used.iter().any(|n| n.len() > MAX_HELD_NAME) {
        return Err(ProtocolError::Malformed {
            kind: FrameKind::Header,
            reason: format!(
                "the held images used exceed {MAX_HELD_USED} names of at most {MAX_HELD_NAME} bytes"
            ),
        });
    }
    Ok(())
}

/// Splits a version-4 Header frame body into the header and the held images used.
pub(crate) fn split(body: &[u8], limits: &Limits) -> Result<(Header, Vec<String>), ProtocolError> {
    let (header, rest) = decode_bounded_prefix::<Header>(FrameKind::Header, body, limits)?;
    let (list, rest) =
        postcard::take_from_bytes::<Vec<String>>(rest).map_err(|e| ProtocolError::Malformed {
            kind: FrameKind::Header,
            reason: format!("the held images used: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed {
            kind: FrameKind::Header,
            reason: format!("{} unexpected bytes after the held images used", rest.len()),
        });
    }
    check(&list)?;
    Ok((header, list))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::BytesMut;

    use super::super::{
        Event, Header, PayloadCompression, PayloadInfo, ResponseDecoder, ResponseEncoder,
    };

    fn header() -> Header {
        Header {
            layers: vec!["sha256:l0".into()],
            image_layers: vec![0],
            payloads: vec![PayloadInfo {
                sha256: [0; 32],
                compression: PayloadCompression::Zstd,
                compressed_len: 3,
                size: 9,
            }],
            ..Header::default()
        }
    }

    /// Encodes a header naming `used` in `version`; what the client decodes.
    fn round_trip(version: u16, used: &[String]) -> (Header, Option<Vec<String>>) {
        let mut enc = ResponseEncoder::default().with_version(version);
        let mut wire = BytesMut::new();
        enc.header_with_held(&header(), used, &mut wire).unwrap();
        let mut dec = ResponseDecoder::default();
        dec.feed(&wire);
        let Some(Event::Header(h)) = dec.next_event().unwrap() else {
            panic!("no header");
        };
        (h, dec.held_used().map(<[String]>::to_vec))
    }

    #[test]
    fn version_4_names_the_held_images_and_older_versions_do_not() {
        let used = vec!["app:v1".to_string(), "base@sha256:00".to_string()];
        assert_eq!(round_trip(4, &used), (header(), Some(used.clone())));
        assert_eq!(round_trip(4, &[]), (header(), Some(vec![])));
        // Clients of versions 2 and 3 get the frame they always did.
        assert_eq!(round_trip(3, &used), (header(), None));
        assert_eq!(round_trip(2, &used), (header(), None));
    }

    #[test]
    fn oversized_lists_are_refused_by_the_encoder() {
        let mut enc = ResponseEncoder::default().with_version(4);
        let long = vec!["x".repeat(super::MAX_HELD_NAME + 1)];
        assert!(enc
            .header_with_held(&header(), &long, &mut BytesMut::new())
            .is_err());
    }
}
