//! Compression codecs: per-member encoders that reuse one compressor
//! context for the whole layer, and decoders for whole blobs and for single
//! members.

use std::io::{self, BufRead, Read, Write};

use flate2::{Compress, Crc, FlushCompress, Status};
use zstd::stream::raw::{CParameter, InBuffer, Operation, OutBuffer};

use super::error::FormatError;
use super::Compression;

/// Default deflate level: the best ratio (converted gzip layers stay close
/// to the size of the usual level-6 originals).
pub const DEFAULT_GZIP_LEVEL: i32 = 9;
/// Default zstd level: a balance of ratio and conversion speed.
pub const DEFAULT_ZSTD_LEVEL: i32 = 12;

const SCRATCH: usize = 128 << 10;

/// Magic bytes of a gzip member.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Magic bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

enum Inner {
    Gzip {
        compress: Compress,
        crc: Crc,
        xfl: u8,
    },
    Zstd {
        encoder: zstd::stream::raw::Encoder<'static>,
    },
}

/// Writes a sequence of independent members (gzip members or zstd frames).
pub struct MemberEncoder {
    inner: Inner,
    scratch: Vec<u8>,
}

fn zstd_err(e: io::Error) -> io::Error {
    io::Error::other(format!("zstd: {e}"))
}

impl MemberEncoder {
    /// An encoder for `compression` at `level` (`None`: our default).
    pub fn new(compression: Compression, level: Option<i32>) -> Result<Self, FormatError> {
        let inner = match compression {
            Compression::None => {
                return Err(FormatError::BadOptions(
                    "the converted layer must be compressed (gzip or zstd)".into(),
                ))
            }
            Compression::Gzip => {
                let level = level.unwrap_or(DEFAULT_GZIP_LEVEL);
                if !(1..=9).contains(&level) {
                    return Err(FormatError::BadOptions(format!(
                        "gzip level {level} is not in 1..=9"
                    )));
                }
                Inner::Gzip {
                    compress: Compress::new(flate2::Compression::new(level as u32), false),
                    crc: Crc::new(),
                    xfl: match level {
                        9 => 2,
                        1 => 4,
                        _ => 0,
                    },
                }
            }
            Compression::Zstd => {
                let level = level.unwrap_or(DEFAULT_ZSTD_LEVEL);
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(FormatError::BadOptions(format!(
                        "zstd level {level} is not in {range:?}"
                    )));
                }
                let mut encoder = zstd::stream::raw::Encoder::new(level)?;
                // A 4-byte check sum per frame: corruption is reported as such.
                encoder.set_parameter(CParameter::ChecksumFlag(true))?;
                encoder.set_parameter(CParameter::ContentSizeFlag(true))?;
                Inner::Zstd { encoder }
            }
        };
        Ok(Self {
            inner,
            scratch: vec![0u8; SCRATCH],
        })
    }

    /// Starts a member; `size` is the exact number of bytes it will hold, if known.
    pub fn begin<W: Write>(&mut self, out: &mut W, size: Option<u64>) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip { compress, crc, xfl } => {
                compress.reset();
                crc.reset();
                // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS=255 (unknown).
                out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, *xfl, 255])
            }
            Inner::Zstd { encoder } => {
                encoder.reinit().map_err(zstd_err)?;
                encoder.set_pledged_src_size(size).map_err(zstd_err)
            }
        }
    }

    /// Compresses `data` into the current member.
    pub fn write<W: Write>(&mut self, mut data: &[u8], out: &mut W) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip { compress, crc, .. } => {
                crc.update(data);
                while !data.is_empty() {
                    let (in0, out0) = (compress.total_in(), compress.total_out());
                    compress
                        .compress(data, &mut self.scratch, FlushCompress::None)
                        .map_err(io::Error::other)?;
                    let consumed = (compress.total_in() - in0) as usize;
                    let produced = (compress.total_out() - out0) as usize;
                    out.write_all(&self.scratch[..produced])?;
                    data = &data[consumed..];
                }
                Ok(())
            }
            Inner::Zstd { encoder } => {
                let mut input = InBuffer::around(data);
                while input.pos() < data.len() {
                    let mut output = OutBuffer::around(&mut self.scratch[..]);
                    encoder.run(&mut input, &mut output).map_err(zstd_err)?;
                    let produced = output.pos();
                    out.write_all(&self.scratch[..produced])?;
                }
                Ok(())
            }
        }
    }

    /// Ends the current member.
    pub fn end<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip { compress, crc, .. } => {
                loop {
                    let out0 = compress.total_out();
                    let status = compress
                        .compress(&[], &mut self.scratch, FlushCompress::Finish)
                        .map_err(io::Error::other)?;
                    let produced = (compress.total_out() - out0) as usize;
                    out.write_all(&self.scratch[..produced])?;
                    if status == Status::StreamEnd {
                        break;
                    }
                }
                out.write_all(&crc.sum().to_le_bytes())?;
                out.write_all(&crc.amount().to_le_bytes())
            }
            Inner::Zstd { encoder } => loop {
                let mut output = OutBuffer::around(&mut self.scratch[..]);
                let remaining = encoder.finish(&mut output, true).map_err(zstd_err)?;
                let produced = output.pos();
                out.write_all(&self.scratch[..produced])?;
                if remaining == 0 {
                    return Ok(());
                }
            },
        }
    }
}

/// Compression of a blob, from its first bytes.
pub fn detect_compression(first_bytes: &[u8]) -> Compression {
    if first_bytes.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if first_bytes.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A decoder of a whole blob (all members, as one stream).
pub fn stream_decoder<'a, R: BufRead + 'a>(
    compression: Compression,
    src: R,
) -> Result<Box<dyn Read + 'a>, FormatError> {
    Ok(match compression {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(src)?),
    })
}

/// One member being decoded; it stops at the member's end and gives the
/// reader back, positioned right after the member.
// One decoder lives at a time and is moved rarely: the size difference
// between the variants (zlib-rs state is inline) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum MemberDecoder<R: BufRead> {
    /// A gzip member.
    Gzip(flate2::bufread::GzDecoder<R>),
    /// A zstd frame.
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> MemberDecoder<R> {
    /// Starts decoding the member at the reader's position.
    pub fn new(compression: Compression, src: R) -> Result<Self, FormatError> {
        match compression {
            Compression::Gzip => Ok(Self::Gzip(flate2::bufread::GzDecoder::new(src))),
            Compression::Zstd => Ok(Self::Zstd(
                zstd::stream::read::Decoder::with_buffer(src)?.single_frame(),
            )),
            Compression::None => Err(FormatError::NotStarlight {
                path: String::new(),
                reason: "the blob is not compressed".into(),
            }),
        }
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        match self {
            Self::Gzip(d) => d.into_inner(),
            Self::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for MemberDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(d) => d.read(buf),
            Self::Zstd(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn members(compression: Compression, parts: &[&[u8]]) -> Vec<u8> {
        let mut enc = MemberEncoder::new(compression, None).unwrap();
        let mut out = Vec::new();
        for p in parts {
            enc.begin(&mut out, Some(p.len() as u64)).unwrap();
            enc.write(p, &mut out).unwrap();
            enc.end(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn members_concatenate_and_stop_exactly() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let big: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let parts: [&[u8]; 4] = [b"hello", b"", &big, b"world"];
            let blob = members(compression, &parts);
            let mut all = Vec::new();
            stream_decoder(compression, &blob[..])
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, [&b"hello"[..], &big, b"world"].concat());
            // Member by member, each decoder stops at its member's end.
            let mut rest: &[u8] = &blob;
            for p in parts {
                let mut dec = MemberDecoder::new(compression, rest).unwrap();
                let mut got = Vec::new();
                dec.read_to_end(&mut got).unwrap();
                assert_eq!(got, p);
                rest = dec.into_inner();
            }
            assert!(rest.is_empty());
            assert_eq!(detect_compression(&blob), compression);
        }
        assert_eq!(detect_compression(b"abc"), Compression::None);
    }

    #[test]
    fn gzip_members_are_deterministic_and_standard() {
        let a = members(Compression::Gzip, &[b"same input"]);
        let b = members(Compression::Gzip, &[b"same input"]);
        assert_eq!(a, b);
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "same input");
    }

    #[test]
    fn bad_levels_are_refused() {
        assert!(matches!(
            MemberEncoder::new(Compression::Gzip, Some(12)),
            Err(FormatError::BadOptions(_))
        ));
        assert!(matches!(
            MemberEncoder::new(Compression::None, None),
            Err(FormatError::BadOptions(_))
        ));
    }
}
