//! makedumpfile's flattened format (`makedumpfile -F`, made to stream a dump through a pipe,
//! e.g. over ssh), read in place: the file is a log of the writes that would have made the
//! dump, which `makedumpfile -R` replays. Reading it indexes the writes once and then serves
//! any byte range of the dump they make, so `dumpd` opens `-F` output without rebuilding it.
//!
//! ```text
//! 4096 bytes   "makedumpfile" padded to 16, int64 type = 1, int64 version = 1 (big-endian)
//! records      int64 offset, int64 size (big-endian), then size bytes to write at offset
//! end          offset = size = -1
//! ```
//!
//! Later writes win where they overlap earlier ones; bytes no write covers read as zeros (the
//! holes `-R` leaves in the file it makes).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Size of the flattened header.
const HEADER_SIZE: u64 = 4096;
/// The header's signature, NUL-padded to 16 bytes.
pub const SIGNATURE: &[u8; 16] = b"makedumpfile\0\0\0\0";
/// `TYPE_FLAT_HEADER` and `VERSION_FLAT_HEADER`.
const TYPE_AND_VERSION: u64 = 1;
/// Size of a record header (`struct makedumpfile_data_header`).
const RECORD_HEADER_SIZE: u64 = 16;
/// Most records indexed (a dump written in 4 KiB pieces up to 64 GiB).
const MAX_RECORDS: usize = 1 << 24;

/// A file read by offset, as the vmcore readers read theirs.
pub trait ReadAt: std::fmt::Debug + Send + Sync {
    /// The file's length.
    fn file_len(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A plain file and its length.
#[derive(Debug)]
pub struct PlainFile {
    file: File,
    len: u64,
}

impl PlainFile {
    /// `file`, whose length is read now.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl ReadAt for PlainFile {
    fn file_len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// The dump a flattened file makes, read in place.
#[derive(Debug)]
pub struct Flattened {
    file: File,
    /// Dump offset of each piece → (its end, where its bytes are in the flattened file).
    pieces: BTreeMap<u64, (u64, u64)>,
    len: u64,
}

/// Why a flattened file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FlattenedError {
    /// Reading the file failed.
    #[error("cannot read the flattened file")]
    Io(#[from] io::Error),
    /// Not makedumpfile's flattened format, version 1.
    #[error("not a flattened dump: the header is not makedumpfile's, type 1, version 1")]
    Header,
    /// A record is damaged or the file ends before the end record.
    #[error("the flattened dump is damaged at byte {at}: {what}")]
    Record {
        /// Offset of the record in the flattened file.
        at: u64,
        /// What is wrong.
        what: &'static str,
    },
}

impl Flattened {
    /// Indexes the records of the flattened file `file`.
    pub fn open(file: File) -> Result<Self, FlattenedError> {
        let file_len = file.metadata()?.len();
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0).map_err(|_| FlattenedError::Header)?;
        let be = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        if &header[..16] != SIGNATURE
            || be(&header[16..24]) != TYPE_AND_VERSION
            || be(&header[24..32]) != TYPE_AND_VERSION
        {
            return Err(FlattenedError::Header);
        }
        let mut flat = Self { file, pieces: BTreeMap::new(), len: 0 };
        let mut at = HEADER_SIZE;
        let mut records = 0;
        loop {
            let damaged = |what| FlattenedError::Record { at, what };
            let mut raw = [0u8; RECORD_HEADER_SIZE as usize];
            if at + RECORD_HEADER_SIZE > file_len {
                return Err(damaged("the file ends before the end record"));
            }
            flat.file.read_exact_at(&mut raw, at)?;
            let (offset, size) = (be(&raw[..8]) as i64, be(&raw[8..]) as i64);
            if offset == -1 && size == -1 {
                return Ok(flat);
            }
            let data = at + RECORD_HEADER_SIZE;
            let (Ok(offset), Ok(size)) = (u64::try_from(offset), u64::try_from(size)) else {
                return Err(damaged("a negative offset or size"));
            };
            let end = offset.checked_add(size).filter(|&e| i64::try_from(e).is_ok());
            let (Some(end), true) = (end, data.checked_add(size).is_some_and(|e| e <= file_len)) else {
                return Err(damaged("a record runs past the end of the file"));
            };
            records += 1;
            if records > MAX_RECORDS {
                return Err(damaged("more records than any dump needs"));
            }
            flat.write(offset, end, data);
            at = data + size;
        }
    }

    /// Records that dump bytes `[start, end)` are at `data` in the flattened file, over
    /// whatever earlier pieces said.
    fn write(&mut self, start: u64, end: u64, data: u64) {
        if start == end {
            return;
        }
        let overlapping: Vec<(u64, (u64, u64))> =
            self.pieces.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(&s, &v)| (s, v)).collect();
        for (s, (e, d)) in overlapping {
            self.pieces.remove(&s);
            if s < start {
                self.pieces.insert(s, (start, d));
            }
            if e > end {
                self.pieces.insert(end, (e, d + (end - s)));
            }
        }
        self.pieces.insert(start, (end, data));
        self.len = self.len.max(end);
    }
}

impl ReadAt for Flattened {
    fn file_len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len);
        let end = end.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the dump"))?;
        buf.fill(0);
        let first = self.pieces.range(..=offset).next_back().map_or(offset, |(&s, _)| s);
        for (&start, &(piece_end, data)) in self.pieces.range(first..end) {
            let (from, to) = (start.max(offset), piece_end.min(end));
            if from < to {
                let out = &mut buf[(from - offset) as usize..(to - offset) as usize];
                self.file.read_exact_at(out, data + (from - start))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn flattened(records: &[(i64, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_SIZE as usize];
        out[..16].copy_from_slice(SIGNATURE);
        out[16..24].copy_from_slice(&1u64.to_be_bytes());
        out[24..32].copy_from_slice(&1u64.to_be_bytes());
        for (offset, data) in records {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&(data.len() as i64).to_be_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&(-1i64).to_be_bytes());
        out.extend_from_slice(&(-1i64).to_be_bytes());
        out
    }

    fn open(dir: &TestDir, bytes: &[u8]) -> Result<Flattened, FlattenedError> {
        let path = dir.path().join("flat");
        std::fs::write(&path, bytes).unwrap();
        Flattened::open(File::open(&path).unwrap())
    }

    #[test]
    fn replays_writes_later_ones_winning_holes_zero() {
        let dir = TestDir::new("flattened");
        let flat = open(&dir, &flattened(&[(0, b"KDUMP   header"), (20, b"abcdef"), (22, b"XY"), (6, b"!!")])).unwrap();
        assert_eq!(flat.file_len(), 26);
        let mut all = [0xffu8; 26];
        flat.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all, b"KDUMP !!header\0\0\0\0\0\0abXYef");
        let mut mid = [0u8; 5];
        flat.read_exact_at(&mut mid, 19).unwrap();
        assert_eq!(&mid, b"\0abXY");
        assert!(flat.read_exact_at(&mut mid, 22).is_err(), "past the end");
    }

    #[test]
    fn damage_is_an_error() {
        let dir = TestDir::new("flattened-bad");
        let good = flattened(&[(0, b"data")]);
        assert!(matches!(open(&dir, &good[..20]), Err(FlattenedError::Header)));
        assert!(matches!(open(&dir, &good[..100]), Err(FlattenedError::Record { .. })));
        let mut wrong_version = good.clone();
        wrong_version[31] = 2;
        assert!(matches!(open(&dir, &wrong_version), Err(FlattenedError::Header)));
        assert!(matches!(open(&dir, &good[..good.len() - 16]), Err(FlattenedError::Record { .. })));
        let mut long = good.clone();
        long[4096 + 8..4096 + 16].copy_from_slice(&1000i64.to_be_bytes());
        assert!(matches!(
            open(&dir, &long),
            Err(FlattenedError::Record { what: "a record runs past the end of the file", .. })
        ));
        let mut negative = good;
        negative[4096..4096 + 8].copy_from_slice(&(-5i64).to_be_bytes());
        assert!(matches!(open(&dir, &negative), Err(FlattenedError::Record { what: "a negative offset or size", .. })));
    }
}
