//! The fixed-size structures of a kdump-compressed file, x86_64 layout, little-endian: field
//! offsets follow `diskdump_mod.h` as gcc lays it out (see linux-semantics.md §8).

use crashvisor_klib::le::{put_u32, put_u64, u32_at, u64_at};

use super::{DISK_DUMP_HEADER_SIZE, KDUMP_SIGNATURE, KDUMP_SUB_HEADER_SIZE, PAGE_DESC_SIZE};

/// Length of one `new_utsname` field, NUL included.
pub const UTS_FIELD_LEN: usize = 65;
/// Size of `struct new_utsname`: six fields.
pub const UTSNAME_LEN: usize = 6 * UTS_FIELD_LEN;

/// `struct new_utsname`: the crashed kernel's `uname`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UtsName {
    /// `sysname` (`Linux`).
    pub sysname: String,
    /// `nodename` (the host name).
    pub nodename: String,
    /// `release` (`6.1.0-...`).
    pub release: String,
    /// `version` (`#1 SMP ...`).
    pub version: String,
    /// `machine` (`x86_64`).
    pub machine: String,
    /// `domainname`.
    pub domainname: String,
}

impl UtsName {
    /// Decodes the 390 bytes of a `new_utsname`: each field up to its first NUL, lossy UTF-8.
    pub fn decode(bytes: &[u8; UTSNAME_LEN]) -> Self {
        let field = |i: usize| {
            let raw = &bytes[i * UTS_FIELD_LEN..(i + 1) * UTS_FIELD_LEN];
            let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..len]).into_owned()
        };
        Self {
            sysname: field(0),
            nodename: field(1),
            release: field(2),
            version: field(3),
            machine: field(4),
            domainname: field(5),
        }
    }

    /// Encodes as a `new_utsname`; each field is cut to 64 bytes so a NUL always ends it.
    pub fn encode(&self) -> [u8; UTSNAME_LEN] {
        let mut out = [0u8; UTSNAME_LEN];
        let fields = [&self.sysname, &self.nodename, &self.release, &self.version, &self.machine, &self.domainname];
        for (i, value) in fields.into_iter().enumerate() {
            let bytes = &value.as_bytes()[..value.len().min(UTS_FIELD_LEN - 1)];
            out[i * UTS_FIELD_LEN..i * UTS_FIELD_LEN + bytes.len()].copy_from_slice(bytes);
        }
        out
    }
}

/// `struct disk_dump_header`, block 0. Signed C fields are kept as the unsigned values of
/// their bits; the reader checks their ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDumpHeader {
    /// `signature[8]` @0: `"KDUMP   "`.
    pub signature: [u8; 8],
    /// `header_version` @8.
    pub header_version: u32,
    /// `utsname` @12.
    pub utsname: UtsName,
    /// `timestamp.tv_sec` @408.
    pub timestamp_sec: u64,
    /// `timestamp.tv_usec` @416.
    pub timestamp_usec: u64,
    /// `status` @424: compression and incomplete flags.
    pub status: u32,
    /// `block_size` @428.
    pub block_size: u32,
    /// `sub_hdr_size` @432, in blocks: the sub-header and the notes.
    pub sub_hdr_size: u32,
    /// `bitmap_blocks` @436: both bitmaps, in blocks.
    pub bitmap_blocks: u32,
    /// `max_mapnr` @440 (truncated to 32 bits; the sub-header has all 64).
    pub max_mapnr: u32,
    /// `total_ram_blocks` @444 (0, as makedumpfile writes).
    pub total_ram_blocks: u32,
    /// `device_blocks` @448 (0).
    pub device_blocks: u32,
    /// `written_blocks` @452 (0).
    pub written_blocks: u32,
    /// `current_cpu` @456 (0).
    pub current_cpu: u32,
    /// `nr_cpus` @460: the number of `NT_PRSTATUS` notes.
    pub nr_cpus: u32,
}

impl DiskDumpHeader {
    /// A header with the signature, the given fields and zeros elsewhere.
    pub fn new(header_version: u32, block_size: u32) -> Self {
        Self {
            signature: KDUMP_SIGNATURE,
            header_version,
            utsname: UtsName::default(),
            timestamp_sec: 0,
            timestamp_usec: 0,
            status: 0,
            block_size,
            sub_hdr_size: 0,
            bitmap_blocks: 0,
            max_mapnr: 0,
            total_ram_blocks: 0,
            device_blocks: 0,
            written_blocks: 0,
            current_cpu: 0,
            nr_cpus: 0,
        }
    }

    /// The 464 bytes at the start of the file.
    pub fn encode(&self) -> [u8; DISK_DUMP_HEADER_SIZE] {
        let mut b = [0u8; DISK_DUMP_HEADER_SIZE];
        b[..8].copy_from_slice(&self.signature);
        put_u32(&mut b, 8, self.header_version);
        b[12..12 + UTSNAME_LEN].copy_from_slice(&self.utsname.encode());
        put_u64(&mut b, 408, self.timestamp_sec);
        put_u64(&mut b, 416, self.timestamp_usec);
        let words = [
            self.status,
            self.block_size,
            self.sub_hdr_size,
            self.bitmap_blocks,
            self.max_mapnr,
            self.total_ram_blocks,
            self.device_blocks,
            self.written_blocks,
            self.current_cpu,
            self.nr_cpus,
        ];
        for (i, word) in words.into_iter().enumerate() {
            put_u32(&mut b, 424 + 4 * i, word);
        }
        b
    }

    /// Decodes the 464 bytes at the start of the file (no checks: see the reader).
    pub fn decode(b: &[u8; DISK_DUMP_HEADER_SIZE]) -> Self {
        let mut signature = [0u8; 8];
        signature.copy_from_slice(&b[..8]);
        let mut utsname = [0u8; UTSNAME_LEN];
        utsname.copy_from_slice(&b[12..12 + UTSNAME_LEN]);
        Self {
            signature,
            header_version: u32_at(b, 8),
            utsname: UtsName::decode(&utsname),
            timestamp_sec: u64_at(b, 408),
            timestamp_usec: u64_at(b, 416),
            status: u32_at(b, 424),
            block_size: u32_at(b, 428),
            sub_hdr_size: u32_at(b, 432),
            bitmap_blocks: u32_at(b, 436),
            max_mapnr: u32_at(b, 440),
            total_ram_blocks: u32_at(b, 444),
            device_blocks: u32_at(b, 448),
            written_blocks: u32_at(b, 452),
            current_cpu: u32_at(b, 456),
            nr_cpus: u32_at(b, 460),
        }
    }
}

/// `struct kdump_sub_header`, at block 1. File offsets (`off_t`) are kept unsigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KdumpSubHeader {
    /// `phys_base` @0: where the kernel was loaded relative to its link address.
    pub phys_base: u64,
    /// `dump_level` @8.
    pub dump_level: u32,
    /// `split` @12 (0: the whole dump is in this file).
    pub split: u32,
    /// `start_pfn` @16 (split dumps only).
    pub start_pfn: u64,
    /// `end_pfn` @24 (split dumps only).
    pub end_pfn: u64,
    /// `offset_vmcoreinfo` @32: file offset of the `VMCOREINFO` note's descriptor.
    pub offset_vmcoreinfo: u64,
    /// `size_vmcoreinfo` @40.
    pub size_vmcoreinfo: u64,
    /// `offset_note` @48: file offset of the copied ELF notes.
    pub offset_note: u64,
    /// `size_note` @56.
    pub size_note: u64,
    /// `offset_eraseinfo` @64 (0: none).
    pub offset_eraseinfo: u64,
    /// `size_eraseinfo` @72.
    pub size_eraseinfo: u64,
    /// `start_pfn_64` @80 (split dumps only).
    pub start_pfn_64: u64,
    /// `end_pfn_64` @88 (split dumps only).
    pub end_pfn_64: u64,
    /// `max_mapnr_64` @96: the number of pfns the bitmaps cover.
    pub max_mapnr_64: u64,
}

impl KdumpSubHeader {
    /// The 104 bytes at block 1.
    pub fn encode(&self) -> [u8; KDUMP_SUB_HEADER_SIZE] {
        let mut b = [0u8; KDUMP_SUB_HEADER_SIZE];
        put_u64(&mut b, 0, self.phys_base);
        put_u32(&mut b, 8, self.dump_level);
        put_u32(&mut b, 12, self.split);
        let rest = [
            self.start_pfn,
            self.end_pfn,
            self.offset_vmcoreinfo,
            self.size_vmcoreinfo,
            self.offset_note,
            self.size_note,
            self.offset_eraseinfo,
            self.size_eraseinfo,
            self.start_pfn_64,
            self.end_pfn_64,
            self.max_mapnr_64,
        ];
        for (i, value) in rest.into_iter().enumerate() {
            put_u64(&mut b, 16 + 8 * i, value);
        }
        b
    }

    /// Decodes the 104 bytes at block 1 (no checks: see the reader).
    pub fn decode(b: &[u8; KDUMP_SUB_HEADER_SIZE]) -> Self {
        Self {
            phys_base: u64_at(b, 0),
            dump_level: u32_at(b, 8),
            split: u32_at(b, 12),
            start_pfn: u64_at(b, 16),
            end_pfn: u64_at(b, 24),
            offset_vmcoreinfo: u64_at(b, 32),
            size_vmcoreinfo: u64_at(b, 40),
            offset_note: u64_at(b, 48),
            size_note: u64_at(b, 56),
            offset_eraseinfo: u64_at(b, 64),
            size_eraseinfo: u64_at(b, 72),
            start_pfn_64: u64_at(b, 80),
            end_pfn_64: u64_at(b, 88),
            max_mapnr_64: u64_at(b, 96),
        }
    }
}

/// `page_desc_t`: where one dumped page's data is and how it is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageDesc {
    /// `offset` @0: file offset of the data.
    pub offset: u64,
    /// `size` @8: bytes of data.
    pub size: u32,
    /// `flags` @12: the compression flag, or 0 for a raw page.
    pub flags: u32,
    /// `page_flags` @16 (0).
    pub page_flags: u64,
}

impl PageDesc {
    /// The 24 bytes of the descriptor.
    pub fn encode(&self) -> [u8; PAGE_DESC_SIZE as usize] {
        let mut b = [0u8; PAGE_DESC_SIZE as usize];
        put_u64(&mut b, 0, self.offset);
        put_u32(&mut b, 8, self.size);
        put_u32(&mut b, 12, self.flags);
        put_u64(&mut b, 16, self.page_flags);
        b
    }

    /// Decodes 24 bytes.
    pub fn decode(b: &[u8; PAGE_DESC_SIZE as usize]) -> Self {
        Self { offset: u64_at(b, 0), size: u32_at(b, 8), flags: u32_at(b, 12), page_flags: u64_at(b, 16) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_dump_header_fields_sit_at_the_documented_offsets() {
        let mut h = DiskDumpHeader::new(6, 4096);
        h.utsname = UtsName { sysname: "Linux".into(), machine: "x86_64".into(), ..UtsName::default() };
        h.timestamp_sec = 0x1122_3344;
        h.timestamp_usec = 0x55;
        h.status = 0x20;
        h.sub_hdr_size = 2;
        h.bitmap_blocks = 4;
        h.max_mapnr = 0x1_0000;
        h.nr_cpus = 3;
        let b = h.encode();
        assert_eq!(&b[..8], b"KDUMP   ");
        assert_eq!(u32_at(&b, 8), 6);
        assert_eq!(&b[12..18], b"Linux\0");
        assert_eq!(&b[12 + 4 * 65..12 + 4 * 65 + 7], b"x86_64\0");
        assert_eq!((u64_at(&b, 408), u64_at(&b, 416)), (0x1122_3344, 0x55));
        assert_eq!((u32_at(&b, 424), u32_at(&b, 428), u32_at(&b, 432)), (0x20, 4096, 2));
        assert_eq!((u32_at(&b, 436), u32_at(&b, 440), u32_at(&b, 460)), (4, 0x1_0000, 3));
        assert_eq!(DiskDumpHeader::decode(&b), h);
    }

    #[test]
    fn sub_header_and_page_desc_round_trip() {
        let kh = KdumpSubHeader {
            phys_base: 1,
            dump_level: 31,
            offset_vmcoreinfo: 0x1234,
            size_vmcoreinfo: 99,
            offset_note: 0x1068,
            size_note: 500,
            max_mapnr_64: 0x4_0000,
            ..KdumpSubHeader::default()
        };
        let b = kh.encode();
        assert_eq!((u32_at(&b, 8), u64_at(&b, 32), u64_at(&b, 48)), (31, 0x1234, 0x1068));
        assert_eq!(u64_at(&b, 96), 0x4_0000);
        assert_eq!(KdumpSubHeader::decode(&b), kh);
        let pd = PageDesc { offset: 0xabcdef, size: 4096, flags: 0x20, page_flags: 0 };
        assert_eq!(PageDesc::decode(&pd.encode()), pd);
        assert_eq!(u32_at(&pd.encode(), 12), 0x20);
    }

    #[test]
    fn utsname_fields_are_cut_to_fit_with_a_nul() {
        let long = "x".repeat(100);
        let u = UtsName { release: long, ..UtsName::default() };
        let b = u.encode();
        assert_eq!(b[2 * 65 + 64], 0);
        assert_eq!(UtsName::decode(&b).release.len(), 64);
    }
}
