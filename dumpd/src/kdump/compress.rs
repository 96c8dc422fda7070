//! Per-page compression as makedumpfile does it: each page on its own, zlib (`-c`, level
//! `Z_BEST_SPEED`, zlib wrapper) or zstd (`-z`, level 1); a page that does not shrink is stored
//! raw with flags 0.

use std::io;

use super::{
    DUMP_DH_COMPRESSED_LZO, DUMP_DH_COMPRESSED_SNAPPY, DUMP_DH_COMPRESSED_ZLIB, DUMP_DH_COMPRESSED_ZSTD, PAGE_SIZE,
};

/// zstd level makedumpfile uses (`ZSTD_compressCCtx(..., 1)`): fast, and pages are small.
const ZSTD_LEVEL: i32 = 1;

/// How pages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Pages stored raw (`status` 0).
    None,
    /// zlib, as `makedumpfile -c`.
    Zlib,
    /// zstd, as `makedumpfile -z`.
    Zstd,
}

impl Compression {
    /// The `status`/page flag for this compression (0 for none).
    pub fn flag(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Zlib => DUMP_DH_COMPRESSED_ZLIB,
            Self::Zstd => DUMP_DH_COMPRESSED_ZSTD,
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

/// Why a page's data does not decode to one page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// A compression this crate does not read, or an unknown flag.
    #[error("its flags {flags:#x} name a compression this reader does not support (zlib 0x1, lzo 0x2 and zstd 0x20 only); rewrite the file with makedumpfile -c, -l or -z")]
    Unsupported {
        /// The page's flags.
        flags: u32,
    },
    /// The decompressor rejected the data.
    #[error("its {method} data does not decompress: {reason}")]
    Failed {
        /// `zlib`, `lzo` or `zstd`.
        method: &'static str,
        /// The decompressor's message.
        reason: String,
    },
    /// The data decoded to less than a page.
    #[error("its {method} data decompresses to {size} bytes instead of one {PAGE_SIZE}-byte page")]
    WrongSize {
        /// `zlib`, `lzo` or `zstd`.
        method: &'static str,
        /// Bytes produced.
        size: u64,
    },
    /// The data decodes to more than a page.
    #[error("its {method} data decompresses to more than one {PAGE_SIZE}-byte page")]
    TooLarge {
        /// `zlib`, `lzo` or `zstd`.
        method: &'static str,
    },
}

/// Compresses pages one at a time, reusing its contexts and output buffer.
pub struct PageCompressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    zlib: Option<flate2::Compress>,
    out: Vec<u8>,
}

impl std::fmt::Debug for PageCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCompressor")
            .field("zstd", &self.zstd.is_some())
            .field("zlib", &self.zlib.is_some())
            .finish()
    }
}

impl PageCompressor {
    /// A compressor for `compression`.
    pub fn new(compression: Compression) -> io::Result<Self> {
        let page = PAGE_SIZE as usize;
        let (zstd, zlib, bound) = match compression {
            Compression::None => (None, None, 0),
            Compression::Zstd => {
                (Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?), None, zstd::zstd_safe::compress_bound(page))
            }
            // Above zlib's compressBound(4096) = 4110.
            Compression::Zlib => {
                (None, Some(flate2::Compress::new(flate2::Compression::fast(), true)), page + page / 8 + 64)
            }
        };
        Ok(Self { zstd, zlib, out: vec![0; bound] })
    }

    /// Compresses one page: `Some(data)` if it came out smaller than the page, `None` to store
    /// it raw (also always with [`Compression::None`]).
    pub fn compress(&mut self, page: &[u8]) -> io::Result<Option<&[u8]>> {
        let len = if let Some(zstd) = &mut self.zstd {
            zstd.compress_to_buffer(page, &mut self.out[..])?
        } else if let Some(zlib) = &mut self.zlib {
            zlib.reset();
            match zlib.compress(page, &mut self.out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => zlib.total_out() as usize,
                Ok(status) => return Err(io::Error::other(format!("zlib stopped early ({status:?})"))),
                Err(e) => return Err(io::Error::other(e)),
            }
        } else {
            return Ok(None);
        };
        Ok((len < page.len()).then(|| &self.out[..len]))
    }
}

/// Decompresses one page's data stored with `flags` into `page` (one page long); the data must
/// decode to exactly one page. Raw pages (flags without a compression bit) are not handled here.
pub fn decompress(flags: u32, data: &[u8], page: &mut [u8]) -> Result<(), DecompressError> {
    let methods = flags & (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_ZSTD);
    if flags & DUMP_DH_COMPRESSED_SNAPPY != 0 || !methods.is_power_of_two() {
        return Err(DecompressError::Unsupported { flags });
    }
    if flags & DUMP_DH_COMPRESSED_LZO != 0 {
        // makedumpfile's `-l`: one LZO1X-1 block per page (kdump's default core_collector).
        return match lzo::decompress_into(data, page) {
            Ok(size) if size == page.len() => Ok(()),
            Ok(size) => Err(DecompressError::WrongSize { method: "lzo", size: size as u64 }),
            Err(lzo::Error::OutputOverrun) => Err(DecompressError::TooLarge { method: "lzo" }),
            Err(e) => Err(DecompressError::Failed { method: "lzo", reason: e.to_string() }),
        };
    }
    if flags & DUMP_DH_COMPRESSED_ZSTD != 0 {
        let failed = |e: io::Error| DecompressError::Failed { method: "zstd", reason: e.to_string() };
        // A frame that decodes to more than the buffer is an error, never a larger allocation.
        let size = zstd::bulk::decompress_to_buffer(data, page).map_err(failed)?;
        if size != page.len() {
            return Err(DecompressError::WrongSize { method: "zstd", size: size as u64 });
        }
        return Ok(());
    }
    if flags & DUMP_DH_COMPRESSED_ZLIB != 0 {
        let mut zlib = flate2::Decompress::new(true);
        let status = zlib
            .decompress(data, page, flate2::FlushDecompress::Finish)
            .map_err(|e| DecompressError::Failed { method: "zlib", reason: e.to_string() })?;
        let size = zlib.total_out();
        return match status {
            flate2::Status::StreamEnd if size == page.len() as u64 => Ok(()),
            flate2::Status::StreamEnd => Err(DecompressError::WrongSize { method: "zlib", size }),
            // The page is full but the stream goes on.
            _ if size == page.len() as u64 => Err(DecompressError::TooLarge { method: "zlib" }),
            _ => Err(DecompressError::Failed { method: "zlib", reason: "the stream ends early".into() }),
        };
    }
    Err(DecompressError::Unsupported { flags })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn text_page() -> Vec<u8> {
        (0..PAGE_SIZE as usize).map(|i| b"crashvisor "[i % 11]).collect()
    }

    /// Pseudo-random bytes (xorshift): incompressible.
    pub(crate) fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn compressible_pages_round_trip_and_noise_stays_raw() {
        for compression in [Compression::Zstd, Compression::Zlib] {
            let mut c = PageCompressor::new(compression).unwrap();
            for page in [text_page(), vec![0; 4096]] {
                let data = c.compress(&page).unwrap().expect("compressible").to_vec();
                assert!(data.len() < 200, "{compression:?}: {}", data.len());
                let mut out = vec![0xaa; 4096];
                decompress(compression.flag(), &data, &mut out).unwrap();
                assert_eq!(out, page);
            }
            assert!(c.compress(&noise(7)).unwrap().is_none(), "{compression:?}: noise does not shrink");
        }
        assert!(PageCompressor::new(Compression::None).unwrap().compress(&text_page()).unwrap().is_none());
    }

    #[test]
    fn bad_data_is_an_error() {
        let mut page = vec![0u8; 4096];
        let mut zstd = PageCompressor::new(Compression::Zstd).unwrap();
        let good = zstd.compress(&text_page()).unwrap().unwrap().to_vec();
        assert!(matches!(decompress(0x20, &good[..good.len() - 3], &mut page), Err(DecompressError::Failed { .. })));
        assert!(matches!(decompress(0x20, b"garbage", &mut page), Err(DecompressError::Failed { .. })));
        // A valid frame of half a page, and one of two pages.
        let half = zstd::bulk::compress(&text_page()[..2048], 1).unwrap();
        assert!(matches!(decompress(0x20, &half, &mut page), Err(DecompressError::WrongSize { .. })));
        let double = zstd::bulk::compress(&[1u8; 8192], 1).unwrap();
        assert!(decompress(0x20, &double, &mut page).is_err());

        let mut zlib = PageCompressor::new(Compression::Zlib).unwrap();
        let good = zlib.compress(&text_page()).unwrap().unwrap().to_vec();
        assert!(decompress(0x1, &good[..good.len() / 2], &mut page).is_err());
        assert!(matches!(decompress(0x1, b"\x78\x9c garbage", &mut page), Err(DecompressError::Failed { .. })));
        let mut big = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut out = vec![0u8; 1000];
        big.compress(&[5u8; 9000], &mut out, flate2::FlushCompress::Finish).unwrap();
        let big = &out[..big.total_out() as usize];
        assert!(matches!(decompress(0x1, big, &mut page), Err(DecompressError::TooLarge { .. })));

        assert!(matches!(decompress(0x2, &good, &mut page), Err(DecompressError::Failed { method: "lzo", .. })));
        for flags in [0x3, 0x4, 0x21, 0x40] {
            assert!(
                matches!(decompress(flags, &good, &mut page), Err(DecompressError::Unsupported { .. })),
                "{flags:#x}"
            );
        }
    }
}
