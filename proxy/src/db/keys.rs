//! Key layouts of the directory database's column families.
//!
//! Digests and references never contain a NUL byte, so `0x00` separates a key's
//! prefix from its suffix and bytewise key order groups every key of one
//! prefix together, sorted by suffix.

/// Separator between a key's prefix (a digest) and its suffix.
pub const SEP: u8 = 0;

/// The prefix shared by every key of `digest` (`digest` + `0x00`).
pub fn prefix(digest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(digest.len() + 1);
    k.extend_from_slice(digest.as_bytes());
    k.push(SEP);
    k
}

/// `entries` key: layer digest, `0x00`, big-endian tar sequence number.
pub fn entry(layer_digest: &str, seq: u32) -> Vec<u8> {
    let mut k = prefix(layer_digest);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `toc` and `ranks` key: manifest digest, `0x00`, path.
pub fn path(manifest_digest: &str, path: &str) -> Vec<u8> {
    let mut k = prefix(manifest_digest);
    k.extend_from_slice(path.as_bytes());
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_in_tar_order() {
        let keys: Vec<_> = [0u32, 1, 255, 256, 70000]
            .iter()
            .map(|s| entry("sha256:aa", *s))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(entry("sha256:aa", u32::MAX).starts_with(&prefix("sha256:aa")));
        assert!(!entry("sha256:aab", 0).starts_with(&prefix("sha256:aa")));
    }

    #[test]
    fn path_keys_sort_by_path() {
        let paths = ["", "a", "a b", "a-b", "a/b", "a/b/c", "ab", "b"];
        let mut keys: Vec<_> = paths.iter().map(|p| path("sha256:x", p)).collect();
        keys.sort();
        let back: Vec<_> = keys
            .iter()
            .map(|k| {
                std::str::from_utf8(&k[prefix("sha256:x").len()..])
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut expected: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        expected.sort();
        assert_eq!(back, expected);
    }
}
