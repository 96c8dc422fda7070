//! A vmcore opened for reading, whatever its format: the crashed machine's notes and its
//! physical memory. Analysis and conversion work through [`DumpImage`]
//! only, so they behave the same on capture-kernel ELF vmcores, host-side ELF vmcores and
//! kdump-compressed files.
//!
//! [`open`] sniffs the format and returns the image; [`open_vmcore`] also tells the format
//! and the memory layout, which conversion needs.
//!
//! ```no_run
//! let image = dumpd::image::open("vmcore".as_ref())?;
//! let mut page = [0u8; 4096];
//! image.read_phys(0x10_0000, &mut page)?;
//! println!("{} notes, memory up to {:#x}", image.notes().len(), image.phys_end());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crashvisor_klib::elfnote::{Note, CORE_NOTE_NAME, NT_PRSTATUS, VMCOREINFO_NOTE_NAME};

use crate::elf::build::LoadSpec;
use crate::elf::image::{ElfImage, ElfImageError};
use crate::kdump::flattened::{self, Flattened, FlattenedError, ReadAt};
use crate::kdump::{Compression, KdumpError, KdumpImage, KDUMP_SIGNATURE};

/// One ELF note of the dump, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNote {
    /// The name without its NUL terminator.
    pub name: Vec<u8>,
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor.
    pub desc: Vec<u8>,
}

impl OwnedNote {
    /// Whether this is a Linux `CORE`/`NT_PRSTATUS` note.
    pub fn is_prstatus(&self) -> bool {
        self.name == CORE_NOTE_NAME && self.n_type == NT_PRSTATUS
    }

    /// Whether this is the `VMCOREINFO` note.
    pub fn is_vmcoreinfo(&self) -> bool {
        self.name == VMCOREINFO_NOTE_NAME
    }
}

impl From<Note<'_>> for OwnedNote {
    fn from(note: Note<'_>) -> Self {
        Self { name: note.name.to_vec(), n_type: note.n_type, desc: note.desc.to_vec() }
    }
}

/// Why memory could not be read from a dump.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No segment (ELF) or no bit in the first bitmap (kdump) covers the address.
    #[error("physical address {paddr:#x} is not in the dump")]
    NotInDump {
        /// The first address missing.
        paddr: u64,
    },
    /// The page was excluded by the dump level (a zero page reads as zeros, never this).
    #[error("page at physical address {paddr:#x} was excluded from the dump (free page)")]
    Excluded {
        /// The page's address.
        paddr: u64,
    },
    /// The file is shorter than its headers say, or a compressed page does not decode.
    #[error("the dump is corrupt at physical address {paddr:#x}: {reason}")]
    Corrupt {
        /// The page's address.
        paddr: u64,
        /// What was wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read the dump file: {0}")]
    Io(#[from] std::io::Error),
}

/// A dump's notes and physical memory.
pub trait DumpImage {
    /// Every note, in file order (one `NT_PRSTATUS` per CPU, the `VMCOREINFO` note, ...).
    fn notes(&self) -> &[OwnedNote];

    /// Fills the start of `buf` with physical memory at `paddr`, as far as one contiguous piece
    /// of the dump reaches (a segment, a page), and returns how many bytes it filled: at least
    /// one, since `buf` is never empty. Pages the dump left out as zero read as zeros.
    fn read_piece(&self, paddr: u64, buf: &mut [u8]) -> Result<usize, ReadError>;

    /// Fills `buf` with physical memory at `paddr..paddr + buf.len()`; the range may span
    /// pages and segments. Pages the dump left out as zero read as zeros.
    fn read_phys(&self, paddr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0;
        while done < buf.len() {
            let addr = paddr.checked_add(done as u64).ok_or(ReadError::NotInDump { paddr: u64::MAX })?;
            match self.read_piece(addr, &mut buf[done..])? {
                0 => return Err(ReadError::NotInDump { paddr: addr }),
                filled => done += filled,
            }
        }
        Ok(())
    }

    /// The highest physical address the dump describes, plus one.
    fn phys_end(&self) -> u64;

    /// The `VMCOREINFO` text, if the dump has the note.
    fn vmcoreinfo(&self) -> Option<&str> {
        let note = self.notes().iter().find(|n| n.is_vmcoreinfo())?;
        std::str::from_utf8(&note.desc).ok()
    }
}

/// A vmcore file format: what `dumpd convert` writes, and what a VMM writes its host-side
/// vmcores in. Its names (`elf`, `kdump-zstd`, `kdump-zlib`, `kdump-raw`) are the command
/// line's and `meta.json`'s `vmcore_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DumpFormat {
    /// ELF64 core file (`/proc/vmcore` layout), sparse: zero pages are holes.
    #[default]
    Elf,
    /// makedumpfile's kdump-compressed format with this per-page compression.
    Kdump(Compression),
}

impl DumpFormat {
    /// Every format, in the order the command line lists them.
    pub const ALL: [Self; 4] =
        [Self::Elf, Self::Kdump(Compression::Zstd), Self::Kdump(Compression::Zlib), Self::Kdump(Compression::None)];

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Elf => "elf",
            Self::Kdump(Compression::Zstd) => "kdump-zstd",
            Self::Kdump(Compression::Zlib) => "kdump-zlib",
            Self::Kdump(Compression::None) => "kdump-raw",
        }
    }
}

impl std::str::FromStr for DumpFormat {
    type Err = String;

    /// `elf`, `kdump-zstd`, `kdump-zlib` or `kdump-raw`.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| format!("unknown format {s:?}: use elf, kdump-zstd, kdump-zlib or kdump-raw"))
    }
}

/// By name, as in `meta.json` and a VMM's configuration file.
impl serde::Serialize for DumpFormat {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DumpFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// `vmm --dump-format` and the service's `dump_format`: the formats of host-side vmcores.
/// Uncompressed kdump files are left to `dumpd convert`, which parses with `FromStr`.
impl clap::ValueEnum for DumpFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL[..3]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Self::Elf => "ELF core file (sparse: zero pages are holes), what gdb and vmcore-dmesg read",
            Self::Kdump(Compression::Zstd) => {
                "makedumpfile's kdump-compressed format, zstd per page, zero pages left out"
            }
            Self::Kdump(Compression::Zlib) => "The same with zlib",
            Self::Kdump(Compression::None) => return None,
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

/// Why a file could not be opened as a vmcore.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF core file nor a kdump-compressed file.
    #[error(
        "{} is not a vmcore: it starts with {magic:02x?}, neither an ELF core file (7f 45 4c 46) \
         nor a kdump-compressed file (\"KDUMP   \")",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its first bytes (up to 8).
        magic: Vec<u8>,
    },
    /// makedumpfile's flattened format (`makedumpfile -F`) of something other than a
    /// kdump-compressed dump (an ELF one, `-E -F`), or damaged.
    #[error(
        "{} is in makedumpfile's flattened format, which this reader reads only for kdump-compressed dumps; \
         rebuild it with `makedumpfile -R OUT < FILE`",
        path.display()
    )]
    Flattened {
        /// The file.
        path: PathBuf,
        /// Why it was not read.
        #[source]
        source: Option<FlattenedError>,
    },
    /// An ELF file that is not an acceptable vmcore.
    #[error("{} is not a valid ELF vmcore", path.display())]
    Elf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ElfImageError,
    },
    /// A kdump-compressed file that cannot be read.
    #[error("{} is not a valid kdump-compressed vmcore", path.display())]
    Kdump {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: KdumpError,
    },
}

/// A vmcore opened for reading, with its format known.
#[derive(Debug)]
pub enum Vmcore {
    /// An ELF vmcore.
    Elf(ElfImage),
    /// A kdump-compressed vmcore.
    Kdump(Box<KdumpImage>),
}

impl Vmcore {
    /// The memory the dump holds, as ELF `PT_LOAD`s would describe it: an ELF vmcore's own
    /// `PT_LOAD`s; for a kdump file, one per run of present pages in the direct map.
    pub fn loads(&self) -> Vec<LoadSpec> {
        match self {
            Self::Elf(elf) => elf.loads(),
            Self::Kdump(kdump) => kdump.loads(),
        }
    }

    /// The image, for reading.
    pub fn image(&self) -> &(dyn DumpImage + Send + Sync) {
        match self {
            Self::Elf(elf) => elf,
            Self::Kdump(kdump) => kdump.as_ref(),
        }
    }

    /// The image, owned.
    pub fn into_image(self) -> Box<dyn DumpImage + Send + Sync> {
        match self {
            Self::Elf(elf) => Box::new(elf),
            Self::Kdump(kdump) => kdump,
        }
    }
}

/// Opens the vmcore at `path`, whatever its format, for reading through [`DumpImage`].
pub fn open(path: &Path) -> Result<Box<dyn DumpImage + Send + Sync>, OpenError> {
    open_vmcore(path).map(Vmcore::into_image)
}

/// Opens the vmcore at `path` and tells its format: the ELF magic or the kdump signature
/// decides; only headers and notes are read now, memory on demand.
pub fn open_vmcore(path: &Path) -> Result<Vmcore, OpenError> {
    let io = |source| OpenError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let mut magic = [0u8; 16];
    let len = read_prefix(&file, &mut magic).map_err(io)?;
    let magic = &magic[..len];
    if magic.starts_with(b"\x7fELF") {
        let elf = ElfImage::open(file).map_err(|source| OpenError::Elf { path: path.to_path_buf(), source })?;
        return Ok(Vmcore::Elf(elf));
    }
    if magic.starts_with(&KDUMP_SIGNATURE) {
        let kdump = KdumpImage::open(file).map_err(|source| OpenError::Kdump { path: path.to_path_buf(), source })?;
        return Ok(Vmcore::Kdump(Box::new(kdump)));
    }
    if magic == flattened::SIGNATURE {
        let flattened = |source| OpenError::Flattened { path: path.to_path_buf(), source };
        let flat = Flattened::open(file).map_err(|e| flattened(Some(e)))?;
        let mut magic = [0u8; 8];
        if flat.read_exact_at(&mut magic, 0).is_err() || magic != KDUMP_SIGNATURE {
            return Err(flattened(None));
        }
        let kdump = KdumpImage::open_from(Box::new(flat))
            .map_err(|source| OpenError::Kdump { path: path.to_path_buf(), source })?;
        return Ok(Vmcore::Kdump(Box::new(kdump)));
    }
    Err(OpenError::UnknownFormat { path: path.to_path_buf(), magic: magic[..len.min(8)].to_vec() })
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many it could.
fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match file.read_at(&mut buf[have..], have as u64) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}
