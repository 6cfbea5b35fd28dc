//! The worker's boundary for bundle headers: [`CheckedHeader::new`] turns a header
//! received from the proxy (or read back from the image database) into a checked
//! value, and nothing is announced, stored, recorded or mounted from a header that did
//! not pass it.
//!
//! It checks, on top of the codec's bounds ([`transport_quic::codec::validate_header`]:
//! counts, string lengths, plain relative paths without NUL or over-long components,
//! no duplicate path, a hash for every non-empty file, sums within `u64`):
//! - the manifest digest is a typed [`Digest`] (`sha256:` + 64 lowercase hex), and
//!   the manifest's bytes hash to it;
//! - every layer digest is a typed [`Digest`];
//! - the manifest media type is a short printable MIME type.

use std::ops::Deref;

use transport_quic::codec::validate_header;
use transport_quic::{Digest, DigestError, Header, Limits, ProtocolError};

/// Longest manifest media type accepted.
const MAX_MEDIA_TYPE: usize = 255;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header breaks a bound or a rule of the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The manifest digest is not a typed SHA-256 digest.
    #[error("the header's manifest digest is refused: {0}")]
    ManifestDigest(DigestError),
    /// The manifest's bytes do not hash to the manifest digest.
    #[error("the manifest does not match its digest: the header names {named}, its bytes hash to {actual}")]
    ManifestMismatch {
        /// The digest the header names.
        named: Digest,
        /// The SHA-256 of the manifest's bytes.
        actual: Digest,
    },
    /// A layer digest is not a typed SHA-256 digest.
    #[error("layer {index} of the header is refused: {source}")]
    LayerDigest {
        /// Index in the layer table.
        index: usize,
        /// Why.
        source: DigestError,
    },
    /// The manifest media type is empty, long or not printable ASCII.
    #[error("the manifest media type is refused (empty, over 255 bytes or not printable ASCII)")]
    MediaType,
}

/// A header that passed every check of this module. It derefs to the wire
/// [`Header`]; its digests are typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedHeader {
    digest: Digest,
    layers: Vec<Digest>,
    header: Header,
}

impl CheckedHeader {
    /// Checks `header` with the default protocol limits.
    pub fn new(header: Header) -> Result<CheckedHeader, HeaderError> {
        Self::with_limits(header, &Limits::default())
    }

    /// Checks `header` against `limits`.
    pub fn with_limits(header: Header, limits: &Limits) -> Result<CheckedHeader, HeaderError> {
        validate_header(&header, limits)?;
        let digest = Digest::parse(&header.manifest_digest).map_err(HeaderError::ManifestDigest)?;
        let actual = Digest::of(&header.manifest);
        if actual != digest {
            return Err(HeaderError::ManifestMismatch {
                named: digest,
                actual,
            });
        }
        let media = &header.manifest_media_type;
        if media.is_empty()
            || media.len() > MAX_MEDIA_TYPE
            || !media.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(HeaderError::MediaType);
        }
        let layers = header
            .layers
            .iter()
            .enumerate()
            .map(|(index, l)| {
                Digest::parse(l).map_err(|source| HeaderError::LayerDigest { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CheckedHeader {
            digest,
            layers,
            header,
        })
    }

    /// The manifest digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The layer digests, in the header's table order.
    pub fn layers(&self) -> &[Digest] {
        &self.layers
    }

    /// The wire header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The wire header, by value.
    pub fn into_header(self) -> Header {
        self.header
    }
}

impl Deref for CheckedHeader {
    type Target = Header;

    fn deref(&self) -> &Header {
        &self.header
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(manifest: &[u8]) -> Header {
        Header {
            manifest_digest: Digest::of(manifest).to_string(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: manifest.to_vec(),
            layers: vec![Digest::of(b"layer").to_string()],
            image_layers: vec![0],
            ..Header::default()
        }
    }

    #[test]
    fn a_sound_header_passes_with_typed_digests() {
        let h = header(b"{}");
        let c = CheckedHeader::new(h.clone()).unwrap();
        assert_eq!(c.digest(), Digest::of(b"{}"));
        assert_eq!(c.layers(), &[Digest::of(b"layer")]);
        assert_eq!(c.into_header(), h);
    }

    #[test]
    fn hostile_digests_and_mismatches_are_refused() {
        for bad in ["sha256:../../../etc", "/root/.ssh", "sha256:ABC"] {
            let mut h = header(b"{}");
            h.manifest_digest = bad.into();
            assert!(matches!(
                CheckedHeader::new(h),
                Err(HeaderError::ManifestDigest(_))
            ));
        }
        let mut h = header(b"{}");
        h.manifest = b"{ }".to_vec();
        assert!(matches!(
            CheckedHeader::new(h),
            Err(HeaderError::ManifestMismatch { .. })
        ));
        let mut h = header(b"{}");
        h.layers = vec!["sha256:..".into()];
        assert!(matches!(
            CheckedHeader::new(h),
            Err(HeaderError::LayerDigest { index: 0, .. })
        ));
        let mut h = header(b"{}");
        h.manifest_media_type = "a\nb".into();
        assert_eq!(CheckedHeader::new(h), Err(HeaderError::MediaType));
    }
}
