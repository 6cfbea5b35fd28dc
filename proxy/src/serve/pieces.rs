//! Turns a plan's payloads (in send order) into HTTP range requests
//! ("pieces"): members adjacent in the same blob are coalesced into one
//! request, and a member larger than the largest request is split. Pure: no
//! I/O, unit-tested here.

use crate::optimize::PlannedPayload;

/// How pieces are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceLimits {
    /// Largest range request in bytes (at least 1).
    pub max_range: u64,
    /// Largest gap in bytes between two coalesced members.
    pub max_gap: u64,
}

/// A part of one payload carried by a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// Index of the payload in the plan.
    pub payload: u32,
    /// Start of the part within the piece's bytes.
    pub start: u64,
    /// Length of the part.
    pub len: u64,
    /// The part is the payload's first.
    pub begin: bool,
    /// The part is the payload's last.
    pub end: bool,
}

/// One range request: bytes `offset..offset + len` of a blob, and the
/// payload parts they carry, in send order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Digest of the blob.
    pub layer_digest: String,
    /// First byte of the range in the blob.
    pub offset: u64,
    /// Length of the range (0 only for a piece carrying empty payloads).
    pub len: u64,
    /// The payload parts, in send order.
    pub slices: Vec<Slice>,
}

impl Piece {
    fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether `p` (the next payload in send order) can join this piece:
    /// same blob, right after the current span or right before it (within
    /// `max_gap`), and the span stays within `max_range`.
    fn accepts(&self, p: &PlannedPayload, limits: &PieceLimits) -> bool {
        if p.layer_digest != self.layer_digest || self.len == 0 || p.compressed_len == 0 {
            return false;
        }
        let Some(p_end) = p.offset.checked_add(p.compressed_len) else {
            return false;
        };
        let (lo, hi) = if p.offset >= self.end() {
            if p.offset - self.end() > limits.max_gap {
                return false;
            }
            (self.offset, p_end)
        } else if p_end <= self.offset {
            if self.offset - p_end > limits.max_gap {
                return false;
            }
            (p.offset, self.end())
        } else {
            // Overlapping members never happen in a valid layer; keep apart.
            return false;
        };
        hi - lo <= limits.max_range
    }

    /// Adds `p` (accepted by [`Self::accepts`]) as one whole slice.
    fn push(&mut self, index: u32, p: &PlannedPayload) {
        let p_end = p.offset + p.compressed_len;
        if p.offset < self.offset {
            let shift = self.offset - p.offset;
            for s in &mut self.slices {
                s.start += shift;
            }
            self.len += shift;
            self.offset = p.offset;
        } else if p_end > self.end() {
            self.len = p_end - self.offset;
        }
        self.slices.push(Slice {
            payload: index,
            start: p.offset - self.offset,
            len: p.compressed_len,
            begin: true,
            end: true,
        });
    }
}

/// The pieces that carry `payloads` in order. Concatenating the slices of
/// every piece, in order, yields every payload's bytes in send order.
pub fn plan_pieces(payloads: &[PlannedPayload], limits: PieceLimits) -> Vec<Piece> {
    let max_range = limits.max_range.max(1);
    let limits = PieceLimits {
        max_range,
        ..limits
    };
    let mut pieces: Vec<Piece> = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        // Payload indices fit in u32: the optimizer guarantees it.
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(last) = pieces.last_mut() {
            if last.accepts(p, &limits) {
                last.push(index, p);
                continue;
            }
        }
        if p.compressed_len <= max_range {
            pieces.push(Piece {
                layer_digest: p.layer_digest.clone(),
                offset: p.offset,
                len: p.compressed_len,
                slices: vec![Slice {
                    payload: index,
                    start: 0,
                    len: p.compressed_len,
                    begin: true,
                    end: true,
                }],
            });
            continue;
        }
        // Too large for one request: split it.
        let mut done = 0;
        while done < p.compressed_len {
            let len = (p.compressed_len - done).min(max_range);
            pieces.push(Piece {
                layer_digest: p.layer_digest.clone(),
                offset: p.offset + done,
                len,
                slices: vec![Slice {
                    payload: index,
                    start: 0,
                    len,
                    begin: done == 0,
                    end: done + len == p.compressed_len,
                }],
            });
            done += len;
        }
    }
    pieces
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::Compression;

    fn payload(layer: &str, offset: u64, len: u64) -> PlannedPayload {
        PlannedPayload {
            sha256: [0; 32],
            layer: 0,
            layer_digest: layer.to_string(),
            compression: Compression::Gzip,
            offset,
            compressed_len: len,
            size: len,
            rank: None,
        }
    }

    const LIMITS: PieceLimits = PieceLimits {
        max_range: 1000,
        max_gap: 10,
    };

    /// Reassembles each payload's (offset, len) list from the pieces.
    fn covered(pieces: &[Piece]) -> Vec<(u32, Vec<(u64, u64)>)> {
        let mut out: Vec<(u32, Vec<(u64, u64)>)> = Vec::new();
        for piece in pieces {
            assert!(piece.len <= LIMITS.max_range);
            for s in &piece.slices {
                assert!(s.start + s.len <= piece.len);
                if s.begin {
                    out.push((s.payload, vec![]));
                }
                let last = out.last_mut().unwrap();
                assert_eq!(last.0, s.payload);
                last.1.push((piece.offset + s.start, s.len));
            }
        }
        out
    }

    #[test]
    fn adjacent_members_coalesce_in_order() {
        let ps = vec![
            payload("a", 0, 100),
            payload("a", 105, 50),
            payload("a", 155, 10),
        ];
        let pieces = plan_pieces(&ps, LIMITS);
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].offset, pieces[0].len), (0, 165));
        assert_eq!(
            covered(&pieces),
            vec![
                (0, vec![(0, 100)]),
                (1, vec![(105, 50)]),
                (2, vec![(155, 10)])
            ]
        );
    }

    #[test]
    fn gaps_layers_and_size_split_pieces() {
        let ps = vec![
            payload("a", 0, 100),
            payload("a", 200, 50),  // gap 100 > 10
            payload("b", 250, 50),  // other blob
            payload("b", 300, 980), // span would exceed 1000
        ];
        let pieces = plan_pieces(&ps, LIMITS);
        assert_eq!(pieces.len(), 4);
        assert_eq!(covered(&pieces).len(), 4);
    }

    #[test]
    fn backward_neighbour_joins_and_shifts_slices() {
        let ps = vec![payload("a", 100, 50), payload("a", 40, 60)];
        let pieces = plan_pieces(&ps, LIMITS);
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].offset, pieces[0].len), (40, 110));
        assert_eq!(
            covered(&pieces),
            vec![(0, vec![(100, 50)]), (1, vec![(40, 60)])]
        );
    }

    #[test]
    fn large_member_is_split_and_not_coalesced() {
        let ps = vec![
            payload("a", 0, 10),
            payload("a", 10, 2500),
            payload("a", 2510, 5),
        ];
        let pieces = plan_pieces(&ps, LIMITS);
        let c = covered(&pieces);
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].1, vec![(10, 1000), (1010, 1000), (2010, 500)]);
        let total: u64 = pieces.iter().map(|p| p.len).sum();
        assert_eq!(total, 2515);
    }
}
