//! Addresses to `function+0xoffset`, from the crashed kernel's ELF (crashvisor's guest kernel:
//! `vmm --extract-kernel guest.elf` writes the one a `vmm` binary embeds). Rust names are
//! demangled without their hash (`guest_kernel::inject::softlockup`).
//!
//! [`KernelSymbols::verify`] checks that the ELF is the kernel that crashed: its `_stext` must
//! be the dump's `SYMBOL(_stext)` and its `.text` must equal the dump's kernel text, byte for
//! byte, so a backtrace is never symbolised with another build's symbols.

use std::path::{Path, PathBuf};

use goblin::elf::{section_header::SHT_NOBITS, sym::STT_FUNC, Elf};

use super::vmcoreinfo::optional;
use super::{error_chain, AnalysisError, Dump};

/// Largest kernel ELF read (debug info included).
const MAX_ELF_BYTES: u64 = 1 << 30;
/// Bytes of `.text` compared per read.
const VERIFY_CHUNK: usize = 64 << 10;

/// Why the kernel's symbols cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The file cannot be read.
    #[error("cannot read the kernel ELF {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than a kernel can be.
    #[error("{} is {len} bytes, too large for a kernel ELF", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// Not an ELF file.
    #[error("the kernel {} is not an ELF file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: goblin::error::Error,
    },
    /// An ELF without function symbols.
    #[error("the kernel {} has no function symbols (is it stripped?)", path.display())]
    NoSymbols {
        /// The file.
        path: PathBuf,
    },
    /// The ELF is another build than the kernel that crashed.
    #[error("the kernel ELF is not the kernel that crashed: {0}")]
    Mismatch(String),
    /// The dump's kernel text could not be read to compare.
    #[error("cannot check the kernel ELF against the dump: {0}")]
    Unverifiable(String),
}

/// A function symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Function {
    address: u64,
    size: u64,
    name: String,
}

/// A symbolised address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbolised<'a> {
    /// The function's name.
    pub name: &'a str,
    /// The address's offset from the function's start.
    pub offset: u64,
}

/// The kernel's function symbols and its `.text`.
#[derive(Debug, Clone)]
pub struct KernelSymbols {
    functions: Vec<Function>,
    stext: Option<u64>,
    text_address: u64,
    text: Vec<u8>,
}

impl KernelSymbols {
    /// Reads the kernel ELF at `path`.
    pub fn load(path: &Path) -> Result<Self, SymbolsError> {
        let io = |source| SymbolsError::Io { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_ELF_BYTES {
            return Err(SymbolsError::TooLarge { path: path.to_owned(), len });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::parse(&bytes).map_err(|e| match e {
            ParseError::Elf(source) => SymbolsError::Parse { path: path.to_owned(), source },
            ParseError::NoSymbols => SymbolsError::NoSymbols { path: path.to_owned() },
        })
    }

    /// Reads a kernel ELF from memory.
    fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let elf = Elf::parse(bytes).map_err(ParseError::Elf)?;
        let mut functions: Vec<Function> = elf
            .syms
            .iter()
            .filter(|s| s.st_type() == STT_FUNC && s.st_value != 0)
            .filter_map(|s| {
                let name = elf.strtab.get_at(s.st_name)?;
                Some(Function { address: s.st_value, size: s.st_size, name: demangle(name) })
            })
            .collect();
        if functions.is_empty() {
            return Err(ParseError::NoSymbols);
        }
        functions.sort_by_key(|f| (f.address, std::cmp::Reverse(f.size)));
        functions.dedup_by_key(|f| f.address);
        let stext = elf.syms.iter().find(|s| elf.strtab.get_at(s.st_name) == Some("_stext")).map(|s| s.st_value);
        let text = elf
            .section_headers
            .iter()
            .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".text") && s.sh_type != SHT_NOBITS)
            .and_then(|s| {
                let start = usize::try_from(s.sh_offset).ok()?;
                let bytes = bytes.get(start..start.checked_add(usize::try_from(s.sh_size).ok()?)?)?;
                Some((s.sh_addr, bytes.to_vec()))
            });
        let (text_address, text) = text.unwrap_or_default();
        Ok(Self { functions, stext, text_address, text })
    }

    /// The function holding `address`, and the offset into it. An address past a function's
    /// size (or of a function without one) belongs to no symbol.
    pub fn lookup(&self, address: u64) -> Option<Symbolised<'_>> {
        let index = self.functions.partition_point(|f| f.address <= address).checked_sub(1)?;
        let function = &self.functions[index];
        let offset = address - function.address;
        (offset < function.size).then_some(Symbolised { name: &function.name, offset })
    }

    /// `function+0xoff` for a return address: looked up at `address - 1`, since a call that is
    /// the last instruction of a function returns past its end.
    pub fn lookup_return(&self, address: u64) -> Option<Symbolised<'_>> {
        let found = self.lookup(address.checked_sub(1)?)?;
        Some(Symbolised { offset: found.offset + 1, ..found })
    }

    /// Checks that this ELF is the kernel that crashed (see the module's documentation).
    pub fn verify(&self, dump: &Dump<'_>) -> Result<(), SymbolsError> {
        let dump_stext =
            optional(dump.info().symbol("_stext")).map_err(|e| SymbolsError::Unverifiable(e.to_string()))?;
        if let (Some(dump_stext), Some(stext)) = (dump_stext, self.stext) {
            if dump_stext != stext {
                return Err(SymbolsError::Mismatch(format!(
                    "its _stext is {stext:#x}, the dump's SYMBOL(_stext) is {dump_stext:#x}"
                )));
            }
        }
        let mut from_dump = vec![0u8; VERIFY_CHUNK];
        for (index, chunk) in self.text.chunks(VERIFY_CHUNK).enumerate() {
            let address = self.text_address + (index * VERIFY_CHUNK) as u64;
            let from_dump = &mut from_dump[..chunk.len()];
            dump.read("the kernel text", address, from_dump)
                .map_err(|e: AnalysisError| SymbolsError::Unverifiable(error_chain(&e)))?;
            if let Some(at) = chunk.iter().zip(from_dump.iter()).position(|(a, b)| a != b) {
                return Err(SymbolsError::Mismatch(format!(
                    "its .text differs from the dump's kernel text at {:#x}",
                    address + at as u64
                )));
            }
        }
        Ok(())
    }
}

enum ParseError {
    Elf(goblin::error::Error),
    NoSymbols,
}

/// A Rust symbol's path without its hash; other names unchanged.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A kernel of three functions: `a` at 0x1000 (0x10 bytes), `b` at 0x1010 (0x20 bytes) and
    /// a Rust one at 0x1100 (0x40 bytes).
    pub(crate) fn symbols() -> KernelSymbols {
        let function = |address, size, name: &str| Function { address, size, name: demangle(name) };
        KernelSymbols {
            functions: vec![
                function(0x1000, 0x10, "a"),
                function(0x1010, 0x20, "b"),
                function(0x1100, 0x40, "_ZN12guest_kernel6inject10softlockup17h80616c02163abf3eE"),
            ],
            stext: Some(0x1000),
            text_address: 0x1000,
            text: vec![0xcc; 0x140],
        }
    }

    #[test]
    fn addresses_resolve_inside_functions_only() {
        let s = symbols();
        assert_eq!(s.lookup(0x1000), Some(Symbolised { name: "a", offset: 0 }));
        assert_eq!(s.lookup(0x101f), Some(Symbolised { name: "b", offset: 0xf }));
        assert_eq!(s.lookup(0x1030), None, "past b's end");
        assert_eq!(s.lookup(0xfff), None);
        assert_eq!(s.lookup(0x1105).map(|f| f.name), Some("guest_kernel::inject::softlockup"));
        assert_eq!(s.lookup(u64::MAX), None);
        // A return address just past `a` belongs to `a`'s last call.
        assert_eq!(s.lookup_return(0x1010), Some(Symbolised { name: "a", offset: 0x10 }));
        assert_eq!(s.lookup_return(0), None);
    }

    #[test]
    fn non_elf_bytes_are_refused() {
        assert!(matches!(KernelSymbols::parse(b"not an elf at all, just text"), Err(ParseError::Elf(_))));
        assert!(KernelSymbols::parse(&[]).is_err());
    }

    #[test]
    fn a_real_elf_parses_and_symbolises_its_own_code() {
        // The test executable itself is an ELF with function symbols.
        let exe = std::env::current_exe().unwrap();
        let symbols = KernelSymbols::load(&exe).unwrap();
        let f = symbols.functions.iter().find(|f| f.size > 1 && f.name.contains("analysis::")).unwrap();
        assert_eq!(symbols.lookup(f.address + 1), Some(Symbolised { name: &f.name, offset: 1 }));
        let missing = KernelSymbols::load(Path::new("/nonexistent/guest.elf")).unwrap_err();
        assert_eq!(missing.to_string(), "cannot read the kernel ELF /nonexistent/guest.elf");
    }
}
