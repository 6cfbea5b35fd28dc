//! Bearer tokens, compared in constant time.

use sha2::{Digest, Sha256};

/// The set of tokens a server accepts.
///
/// Tokens are kept as SHA-256 digests and a presented token is compared with every one
/// of them without early exit, so the time taken reveals neither which token nearly
/// matched nor their lengths.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl TokenSet {
    /// The set of `tokens`.
    pub fn new<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        TokenSet {
            digests: tokens.into_iter().map(|t| digest(t.as_ref())).collect(),
        }
    }

    /// Whether no token is accepted at all.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is one of the set.
    pub fn contains(&self, token: &str) -> bool {
        self.position(token).is_some()
    }

    /// Which of the set `token` is (its index), comparing with every token.
    pub fn position(&self, token: &str) -> Option<usize> {
        let presented = digest(token);
        self.digests.iter().enumerate().fold(None, |found, (i, d)| {
            let hit = ct_eq(d, &presented);
            if hit && found.is_none() {
                Some(i)
            } else {
                found
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let set = TokenSet::new(["alpha", "beta"]);
        assert!(set.contains("alpha"));
        assert!(set.contains("beta"));
        assert_eq!(set.position("beta"), Some(1));
        assert_eq!(set.position("gamma"), None);
        assert!(!set.contains("alph"));
        assert!(!set.contains(""));
        assert!(!set.contains("alphaa"));
        assert!(TokenSet::new(Vec::<String>::new()).is_empty());
        assert!(!format!("{set:?}").contains("alpha"));
    }
}
