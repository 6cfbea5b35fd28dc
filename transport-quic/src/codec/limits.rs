//! Bounds on every length and count read from the wire.

/// Bounds the decoders check before allocating anything.
///
/// Frame lengths are checked from the 5-byte frame header, before the frame's bytes are
/// buffered. Vector counts (layers, entries, payloads, extended attributes, held
/// images and payloads) are checked while decoding, from the length postcard reads
/// before the elements, so a header that declares too many is refused before one is
/// decoded. String lengths, and the name, duplicate and size rules of a header, are
/// checked once the frame is decoded (a string's memory is its bytes in the frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest Request frame, in bytes.
    pub max_request: u32,
    /// Largest Header frame, in bytes.
    pub max_header: u32,
    /// Largest PayloadData frame, in bytes.
    pub max_data_frame: u32,
    /// Most payloads in one bundle.
    pub max_payloads: u32,
    /// Most table-of-contents entries in one header.
    pub max_toc_entries: u32,
    /// Most layers in the layer table.
    pub max_layers: u32,
    /// Most held image digests in a request.
    pub max_held_images: u32,
    /// Most held payload digests in a request.
    pub max_held_payloads: u32,
    /// Longest string (path, link target, digest, token, message...), in bytes.
    pub max_string: u32,
    /// Most extended attributes on one entry.
    pub max_xattrs: u32,
    /// Largest extended attribute value, in bytes.
    pub max_xattr_value: u32,
    /// Largest manifest or config document, in bytes.
    pub max_document: u32,
}

const MIB: u32 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 16 * MIB,
            max_header: 512 * MIB,
            max_data_frame: MIB,
            max_payloads: 10_000_000,
            max_toc_entries: 10_000_000,
            max_layers: 65_536,
            max_held_images: 65_536,
            max_held_payloads: 10_000_000,
            max_string: 64 * 1024,
            max_xattrs: 4096,
            max_xattr_value: 64 * 1024,
            max_document: 16 * MIB,
        }
    }
}
