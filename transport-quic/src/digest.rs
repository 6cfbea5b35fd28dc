//! Typed content digests and image references: what the network says is parsed into
//! these before any use, so that no digest or name from a peer ever becomes a path
//! component, a database key or a containerd name unchecked.
//!
//! - [`Digest`]: `sha256:` followed by exactly 64 lowercase hex digits; the only
//!   algorithm Starlight uses.
//! - [`ImageReference`]: a bounded image reference (`registry/repo:tag`,
//!   `repo@sha256:…`) or a bare manifest digest, in a conservative character set.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The algorithm prefix of every digest Starlight accepts.
pub const SHA256_PREFIX: &str = "sha256:";

/// Why a digest or a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string does not start with `sha256:`.
    #[error("digest {0:?} does not start with \"sha256:\"")]
    Algorithm(String),
    /// The part after the algorithm is not 64 lowercase hex digits.
    #[error("digest {0:?} is not \"sha256:\" followed by 64 lowercase hex digits")]
    Hex(String),
    /// An image reference that is empty, too long or holds a refused character.
    #[error("image reference {reference:?}: {reason}")]
    Reference {
        /// The reference, cut to a printable length.
        reference: String,
        /// Why.
        reason: &'static str,
    },
}

/// Cuts `s` for an error message (so that a megabyte of garbage is not echoed back).
fn shown(s: &str) -> String {
    const SHOWN: usize = 100;
    if s.len() <= SHOWN {
        return s.to_string();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A SHA-256 digest, written `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest with these 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }

    /// The 32 bytes.
    pub const fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm: the only form of a
    /// digest that may name a file or directory.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses `sha256:` + 64 lowercase hex digits; anything else is refused.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let hex_part = s
            .strip_prefix(SHA256_PREFIX)
            .ok_or_else(|| DigestError::Algorithm(shown(s)))?;
        Self::parse_hex(hex_part).map_err(|_| DigestError::Hex(shown(s)))
    }

    /// Parses exactly 64 lowercase hex digits (no algorithm prefix).
    pub fn parse_hex(hex_part: &str) -> Result<Digest, DigestError> {
        let ok = hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::Hex(shown(hex_part)));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| DigestError::Hex(shown(hex_part)))?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Longest image reference accepted, in bytes (a 255-byte name, a 128-byte tag and a
/// digest fit).
pub const MAX_REFERENCE_LEN: usize = 512;

/// An image reference as the worker records it and names it in containerd: 1 to
/// [`MAX_REFERENCE_LEN`] bytes of `[A-Za-z0-9._:/@+-]`, not starting with `-`, `.` or
/// `/`, without empty or `.`/`..` path segments. A bare manifest digest is one too.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ImageReference(String);

impl ImageReference {
    /// Parses and bounds `s`.
    pub fn parse(s: &str) -> Result<ImageReference, DigestError> {
        let refuse = |reason| DigestError::Reference {
            reference: shown(s),
            reason,
        };
        if s.is_empty() {
            return Err(refuse("it is empty"));
        }
        if s.len() > MAX_REFERENCE_LEN {
            return Err(refuse("it is longer than 512 bytes"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b);
        if !s.bytes().all(allowed) {
            return Err(refuse(
                "it holds a character outside [A-Za-z0-9._:/@+-] (control, space, NUL...)",
            ));
        }
        if s.starts_with(['-', '.', '/']) {
            return Err(refuse("it starts with '-', '.' or '/'"));
        }
        if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(refuse("it has an empty, '.' or '..' path segment"));
        }
        Ok(ImageReference(s.to_string()))
    }

    /// The reference as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The manifest digest, if the reference is a bare digest (`sha256:…`).
    pub fn as_digest(&self) -> Option<Digest> {
        Digest::parse(&self.0).ok()
    }

    /// The digest a `repo@sha256:…` (or bare `sha256:…`) reference pins, if any.
    pub fn pinned_digest(&self) -> Option<Digest> {
        match self.0.rsplit_once('@') {
            Some((_, d)) => Digest::parse(d).ok(),
            None => self.as_digest(),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageReference({:?})", self.0)
    }
}

impl FromStr for ImageReference {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<ImageReference, DigestError> {
        ImageReference::parse(s)
    }
}

impl<'de> Deserialize<'de> for ImageReference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ImageReference, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ImageReference::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_round_trip_and_name_only_hex() {
        let s = format!("sha256:{HEX}");
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), HEX);
        assert_eq!(Digest::parse_hex(HEX).unwrap(), d);
        let json = postcard::to_stdvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Digest>(&json).unwrap(), d);
        assert_eq!(Digest::of(b"").to_string().len(), 71);
    }

    #[test]
    fn hostile_digests_are_refused() {
        let upper = format!("sha256:{}", HEX.to_uppercase());
        let long = format!("sha256:{HEX}0");
        let slash = format!("sha256:{}/", &HEX[..63]);
        for bad in [
            "sha256:../../../etc",
            "/root/.ssh",
            "",
            "sha256:",
            "sha256:abc",
            upper.as_str(),
            long.as_str(),
            slash.as_str(),
            HEX,
            "sha512:00",
            "sha256:\0",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        let garbage = "x".repeat(1 << 20);
        let msg = Digest::parse(&garbage).unwrap_err().to_string();
        assert!(msg.len() < 300, "the error echoes the whole input");
        assert!(
            postcard::from_bytes::<Digest>(&postcard::to_stdvec("sha256:..").unwrap()).is_err()
        );
    }

    #[test]
    fn references_are_bounded_and_plain() {
        for good in [
            "docker.io/library/alpine:3.19",
            "127.0.0.1:5000/app:v1",
            "app@sha256:0123",
            "localhost/a/b-c_d.e:1.2+3",
        ] {
            assert_eq!(ImageReference::parse(good).unwrap().as_str(), good);
        }
        let pinned = ImageReference::parse(&format!("r/app@sha256:{HEX}")).unwrap();
        assert_eq!(pinned.pinned_digest().unwrap().hex(), HEX);
        let bare = ImageReference::parse(&format!("sha256:{HEX}")).unwrap();
        assert!(bare.as_digest().is_some());
        let long = "a".repeat(513);
        for bad in [
            "",
            "../etc",
            "a/../b",
            "a//b",
            "/abs",
            "-flag",
            "a b",
            "a\0b",
            "a\nb",
            "a/./b",
            "ä",
            long.as_str(),
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
