//! kdump support: waiting for a capture to reach the crash store, the crash's files, the
//! vmcore's notes (parsed by hand, reading only the file's first pages: the vmcore is as large
//! as the guest's RAM), the guest kernel ELF for symbols, the external tools that read vmcores
//! (`readelf`, `gdb`, `vmcore-dmesg`, `makedumpfile`) and what a host core collector needs.
//!
//! ```no_run
//! use crashvisor_tests::kdump::{self, Vmcore};
//! use crashvisor_tests::{TempDir, Vm};
//!
//! let store = TempDir::new("crash");
//! let mut vm = Vm::start_controlled(&["--vcpus", "2", "--crash-dir", store.arg(), "--cmdline", "crashkernel=64M kdump=1"]);
//! vm.wait_booted();
//! vm.expect_kdump_loaded();
//! vm.inject("panic", 1, None);
//! let crash = vm.expect_vmcore(kdump::CAPTURE_TIMEOUT);
//! let vmcore = Vmcore::read(&crash.vmcore()).unwrap();
//! assert_eq!(vmcore.prstatus().len(), 2);
//! vm.expect_reboot_after_dump(2);
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crashvisor_klib::le::{u16_at, u32_at, u64_at};
use serde_json::Value;

use crate::control::Event;
use crate::{kernel_text, vmm_binary, KernelLine, TempFile, Vm, BOOT_TIMEOUT, DETECT_TIMEOUT};

/// Upper bound from an injected fault to its `vmcore_ready`: a detector's bound, then the
/// capture kernel's boot and hand-off (seconds; well under a second idle).
pub const CAPTURE_TIMEOUT: Duration = DETECT_TIMEOUT.saturating_add(Duration::from_secs(60));
/// The guest's line once `kdump=1` has loaded the capture kernel.
pub const KDUMP_LOADED: &str = "kdump: capture kernel loaded";
/// The files every committed crash holds.
pub const CRASH_FILES: [&str; 4] = ["vmcore", "vmcore-dmesg.txt", "kexec-dmesg.log", "meta.json"];
/// Linux's `NT_PRSTATUS`.
pub const NT_PRSTATUS: u32 = 1;
/// The size of x86_64 Linux's `struct elf_prstatus`, an `NT_PRSTATUS` note's descriptor.
pub const PRSTATUS_SIZE: usize = 336;
/// The name (owner) of the `VMCOREINFO` note.
pub const VMCOREINFO: &str = "VMCOREINFO";
/// The debian packages that provide the tools (`.ci/run` installs them).
pub const TOOL_PACKAGES: &str = "kexec-tools gdb binutils makedumpfile";

/// `elf_prstatus.pr_pid`.
const PR_PID_OFFSET: usize = 32;
/// `elf_prstatus.pr_reg`: `struct user_regs_struct`, 27 u64s.
const PR_REG_OFFSET: usize = 112;
/// `rip` in `user_regs_struct` (r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
/// orig_rax rip ...).
const RIP_INDEX: usize = 16;
/// More program headers than a vmcore of the tests' guests can have: a corrupt header.
const MAX_PROGRAM_HEADERS: u16 = 4096;
/// More note bytes than a vmcore of 16 vCPUs can have: a corrupt header.
const MAX_NOTES_SIZE: u64 = 1 << 20;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// One committed crash: its `vmcore_ready` event, directory and parsed `meta.json`.
#[derive(Clone, Debug)]
pub struct Crash {
    /// The `vmcore_ready` event.
    pub event: Event,
    /// The crash's id (its directory's name).
    pub id: String,
    /// The crash's directory.
    pub dir: PathBuf,
    /// `meta.json`, parsed.
    pub meta: Value,
}

impl Crash {
    /// The vmcore's path.
    pub fn vmcore(&self) -> PathBuf {
        self.dir.join("vmcore")
    }

    /// `vmcore-dmesg.txt`: the crashed kernel's log.
    pub fn vmcore_dmesg(&self) -> String {
        read_text(&self.dir.join("vmcore-dmesg.txt"))
    }

    /// `kexec-dmesg.log`: the capture kernel's own log.
    pub fn kexec_dmesg(&self) -> String {
        read_text(&self.dir.join("kexec-dmesg.log"))
    }
}

#[track_caller]
fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// kdump on a [`Vm`] started with [`Vm::start_controlled`].
impl Vm {
    /// Waits for the console's `kdump: capture kernel loaded` (the guest loads its capture
    /// kernel after its control thread said hello, so a fault injected right after `booted`
    /// could come before it).
    #[track_caller]
    pub fn expect_kdump_loaded(&mut self) {
        self.expect(KernelLine::exactly(KDUMP_LOADED), BOOT_TIMEOUT);
    }

    /// Waits for a kdump capture to be committed to the crash store: the `crash_loaded`,
    /// `capture_started` and `vmcore_ready` events, in that order, and the capture kernel's
    /// banner with `elfcorehdr=` on the console. Checks that the crash's directory holds
    /// [`CRASH_FILES`] and parses its `meta.json`. Fails at once on `dump_failed`, or if the VM
    /// resets or stops before the vmcore is ready.
    #[track_caller]
    pub fn expect_vmcore(&mut self, timeout: Duration) -> Crash {
        let outcome = self.wait_event(
            |e| ["vmcore_ready", "dump_failed", "rebooting", "stopped", "powered_off"].contains(&e.name()),
            "vmcore_ready (or an event that rules it out)",
            timeout,
        );
        if !outcome.is("vmcore_ready") {
            self.fail(&format!("expected a kdump capture to end with vmcore_ready, got {}", outcome.body));
        }
        let started = self.wait_event(|e| e.is("capture_started"), "capture_started", Duration::ZERO);
        let loaded = self.wait_event(|e| e.is("crash_loaded"), "crash_loaded", Duration::ZERO);
        if !(loaded.at <= started.at && started.at <= outcome.at) {
            self.fail("expected crash_loaded, capture_started, vmcore_ready in that order");
        }
        // Everything the capture kernel printed has arrived by now.
        self.expect(
            |l: &str| {
                kernel_text(l).starts_with("Command line: ")
                    && l.split_whitespace().any(|w| w.starts_with("elfcorehdr="))
            },
            BOOT_TIMEOUT,
        );
        let (Some(id), Some(path)) = (outcome.str("id"), outcome.str("path")) else {
            self.fail(&format!("a vmcore_ready event without id and path: {}", outcome.body));
        };
        let (id, dir) = (id.to_string(), PathBuf::from(path));
        if dir.file_name().and_then(|n| n.to_str()) != Some(id.as_str()) {
            self.fail(&format!("the crash directory {} is not named after the id {id}", dir.display()));
        }
        for file in CRASH_FILES {
            if !dir.join(file).is_file() {
                self.fail(&format!("{} has no {file}", dir.display()));
            }
        }
        let meta = std::fs::read_to_string(dir.join("meta.json"))
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| format!("{e} in {text}")));
        let meta = meta.unwrap_or_else(|e| self.fail(&format!("{}/meta.json does not parse: {e}", dir.display())));
        // A core collector writes a file of its own size; the built-in writer the one announced.
        if meta["core_collector"]["collected"] != true && outcome.u64("size") != started.u64("size") {
            self.fail(&format!(
                "capture_started {} and vmcore_ready {} disagree on the size",
                started.body, outcome.body
            ));
        }
        Crash { event: outcome, id, dir, meta }
    }

    /// After a capture: the capture kernel resets the machine (`rebooting`), the fresh kernel
    /// says hello (`booted` with `boot`), and reloads its capture kernel (`kdump=1`).
    #[track_caller]
    pub fn expect_reboot_after_dump(&mut self, boot: u64) {
        let reset = self.wait_event(|e| e.is("rebooting"), "the rebooting event", BOOT_TIMEOUT);
        if reset.str("cause") != Some("reset_control") {
            self.fail(&format!("the capture kernel should reset through the reset control: {}", reset.body));
        }
        // The capture kernel's own hello was a `booted` event too, before the reset.
        let booted = self.wait_event(|e| e.is("booted") && e.at >= reset.at, "booted after the reset", BOOT_TIMEOUT);
        if booted.u64("boot") != Some(boot) {
            self.fail(&format!("expected boot {boot} after the dump, got {}", booted.body));
        }
    }
}

/// One ELF note.
#[derive(Clone, Debug)]
pub struct Note {
    /// The owner, without its terminating NUL (`CORE`, `VMCOREINFO`).
    pub name: String,
    /// `n_type`.
    pub kind: u32,
    /// The descriptor.
    pub desc: Vec<u8>,
}

/// One `PT_LOAD` segment of a vmcore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// `p_paddr`: the physical address of its first byte.
    pub paddr: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_offset`: where its bytes are in the file.
    pub offset: u64,
    /// `p_filesz`: how many bytes the file holds.
    pub filesz: u64,
}

/// What a vmcore's headers say: its type, machine, notes and `PT_LOAD` segments.
#[derive(Clone, Debug)]
pub struct Vmcore {
    /// `e_type` (`ET_CORE` is 4).
    pub e_type: u16,
    /// `e_machine` (`EM_X86_64` is 62).
    pub e_machine: u16,
    /// Every note of every `PT_NOTE` segment, in order.
    pub notes: Vec<Note>,
    /// Its `PT_LOAD` segments, in order.
    pub loads: Vec<Load>,
}

impl Vmcore {
    /// Reads the ELF header, the program headers and the notes of the core file at `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut header = [0u8; 64];
        file.read_exact(&mut header).map_err(|e| format!("{}: no ELF header: {e}", path.display()))?;
        if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return Err(format!("{} is not a little-endian ELF64 file: {:02x?}", path.display(), &header[..6]));
        }
        let e_type = u16_at(&header, 16);
        let e_machine = u16_at(&header, 18);
        let e_phoff = u64_at(&header, 32);
        let e_phentsize = u16_at(&header, 54);
        let e_phnum = u16_at(&header, 56);
        if e_phentsize != 56 || e_phnum > MAX_PROGRAM_HEADERS {
            return Err(format!("{}: bad program headers ({e_phnum} of {e_phentsize} bytes)", path.display()));
        }
        let mut table = vec![0u8; usize::from(e_phnum) * 56];
        read_at(&mut file, e_phoff, &mut table).map_err(|e| format!("{}: program headers: {e}", path.display()))?;
        let mut notes = Vec::new();
        let mut loads = Vec::new();
        for phdr in table.chunks_exact(56) {
            match u32_at(phdr, 0) {
                PT_LOAD => loads.push(Load {
                    offset: u64_at(phdr, 8),
                    vaddr: u64_at(phdr, 16),
                    paddr: u64_at(phdr, 24),
                    filesz: u64_at(phdr, 32),
                }),
                PT_NOTE => {
                    let (offset, size) = (u64_at(phdr, 8), u64_at(phdr, 32));
                    if size > MAX_NOTES_SIZE {
                        return Err(format!("{}: a PT_NOTE of {size} bytes", path.display()));
                    }
                    let mut segment = vec![0u8; size as usize];
                    read_at(&mut file, offset, &mut segment).map_err(|e| format!("{}: notes: {e}", path.display()))?;
                    notes.extend(parse_notes(&segment).map_err(|e| format!("{}: {e}", path.display()))?);
                }
                _ => {}
            }
        }
        Ok(Self { e_type, e_machine, notes, loads })
    }

    /// Reads `len` bytes of physical memory at `paddr` from the vmcore at `path`, through the
    /// first `PT_LOAD` whose file bytes hold all of them.
    pub fn read_phys(&self, path: &Path, paddr: u64, len: usize) -> Result<Vec<u8>, String> {
        let end = paddr + len as u64;
        let load = self.loads.iter().find(|l| l.paddr <= paddr && end <= l.paddr + l.filesz);
        let load = load.ok_or_else(|| format!("no PT_LOAD of {} holds {len} bytes at {paddr:#x}", path.display()))?;
        let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut bytes = vec![0u8; len];
        read_at(&mut file, load.offset + (paddr - load.paddr), &mut bytes)
            .map_err(|e| format!("{}: reading {paddr:#x}: {e}", path.display()))?;
        Ok(bytes)
    }

    /// Whether it is an x86_64 `ET_CORE` file.
    pub fn is_x86_64_core(&self) -> bool {
        self.e_type == ET_CORE && self.e_machine == EM_X86_64
    }

    /// The `NT_PRSTATUS` notes, one per CPU.
    pub fn prstatus(&self) -> Vec<&Note> {
        self.notes.iter().filter(|n| n.kind == NT_PRSTATUS).collect()
    }

    /// The `VMCOREINFO` note's text.
    pub fn vmcoreinfo(&self) -> Option<String> {
        let note = self.notes.iter().find(|n| n.name == VMCOREINFO)?;
        Some(String::from_utf8_lossy(&note.desc).into_owned())
    }
}

/// The fields of an `NT_PRSTATUS` descriptor the tests look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrStatus {
    /// `pr_pid`: the CPU number + 1 in a vmcore.
    pub pid: u32,
    /// `pr_reg.rip`.
    pub rip: u64,
}

impl PrStatus {
    /// Parses a descriptor of [`PRSTATUS_SIZE`] bytes (`None` for another size).
    pub fn parse(desc: &[u8]) -> Option<Self> {
        if desc.len() != PRSTATUS_SIZE {
            return None;
        }
        Some(Self { pid: u32_at(desc, PR_PID_OFFSET), rip: u64_at(desc, PR_REG_OFFSET + RIP_INDEX * 8) })
    }
}

/// The notes of a `PT_NOTE` segment: `namesz`, `descsz`, `type`, then the name and the
/// descriptor, each padded to 4 bytes. Trailing zero padding is allowed.
fn parse_notes(mut data: &[u8]) -> Result<Vec<Note>, String> {
    let mut notes = Vec::new();
    while data.len() >= 12 {
        let (namesz, descsz, kind) = (u32_at(data, 0) as usize, u32_at(data, 4) as usize, u32_at(data, 8));
        if namesz == 0 && descsz == 0 && kind == 0 {
            break; // padding
        }
        let name_end = 12 + namesz;
        let desc_start = 12 + namesz.next_multiple_of(4);
        let desc_end = desc_start + descsz;
        let next = desc_start + descsz.next_multiple_of(4);
        if desc_end > data.len() {
            return Err(format!("a note (namesz {namesz}, descsz {descsz}) runs past its PT_NOTE segment"));
        }
        let name = &data[12..name_end];
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        notes.push(Note {
            name: String::from_utf8_lossy(name).into_owned(),
            kind,
            desc: data[desc_start..desc_end].to_vec(),
        });
        data = &data[next.min(data.len())..];
    }
    Ok(notes)
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// The path of a legacy-mangled Rust symbol without its hash
/// (`_ZN12guest_kernel6inject10softlockup17h0123456789abcdefE` →
/// `guest_kernel::inject::softlockup`); other names are returned unchanged.
pub fn rust_symbol_path(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else { return name.to_string() };
    let mut parts = Vec::new();
    while !rest.starts_with('E') {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Some(len) = rest[..digits].parse::<usize>().ok().filter(|&len| digits + len <= rest.len()) else {
            return name.to_string();
        };
        parts.push(&rest[digits..digits + len]);
        rest = &rest[digits + len..];
    }
    let is_hash = |p: &&str| p.len() == 17 && p.starts_with('h') && p[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if parts.last().is_some_and(is_hash) {
        parts.pop();
    }
    parts.join("::")
}

/// Writes the guest kernel ELF embedded in `vmm` (with its symbols) to a temporary file.
///
/// # Panics
///
/// If `vmm --extract-kernel` fails.
#[track_caller]
pub fn extract_guest_kernel() -> TempFile {
    let file = TempFile::new("guest-kernel.elf");
    let output = Command::new(vmm_binary()).args(["--extract-kernel", file.arg()]).output();
    match output {
        Ok(output) if output.status.success() && file.path().is_file() => file,
        Ok(output) => panic!(
            "vmm --extract-kernel {} failed ({}): {}",
            file.arg(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("cannot run vmm --extract-kernel: {e}"),
    }
}

/// Checks that a VMM started by this test can run a core collector: it serves the crashed
/// kernel's `/proc/vmcore` through a FUSE filesystem it mounts itself on `/dev/fuse` (no libfuse,
/// no `fusermount`): it needs the device, read-write, checked here, and root (`CAP_SYS_ADMIN`),
/// which the VMM's error names when it is missing.
///
/// # Panics
///
/// If it cannot: the tests that run a collector fail rather than fall back, saying what to do.
#[track_caller]
pub fn require_fuse() {
    const FUSE: &str = "/dev/fuse";
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(FUSE) {
        panic!(
            "cannot open {FUSE} ({e}): the host's core collector serves /proc/vmcore through FUSE. \
             Load the kernel module (`modprobe fuse`, from the Debian package kmod) or give the \
             container the device (`--device /dev/fuse`), and run the tests as root; .ci/run \
             loads the module when the device is missing."
        );
    }
}

/// The path of the external tool `name`, looked up in `PATH` and then in `/usr/sbin` and
/// `/sbin` (where kexec-tools installs `vmcore-dmesg`, often not in a user's `PATH`).
///
/// # Panics
///
/// If it is not installed: the tests that use it fail rather than skip, saying how to install it.
#[track_caller]
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: the kdump tests read the vmcore with the real tools. Install the \
         Debian packages {TOOL_PACKAGES} (`apt-get install -y --no-install-recommends {TOOL_PACKAGES}`; \
         .ci/run does this when a tool is missing)."
    );
}

/// Runs the external tool `name` with `args` and returns its stdout and stderr, combined;
/// fails the test if it cannot start or exits unsuccessfully.
#[track_caller]
pub fn run_tool(name: &str, args: &[&str]) -> String {
    let tool = require_tool(name);
    let output =
        Command::new(&tool).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{name} {}` failed ({}):\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        args.join(" "),
        output.status
    );
    format!("{stdout}{stderr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_symbol_paths_lose_the_hash() {
        assert_eq!(
            rust_symbol_path("_ZN12guest_kernel6inject10softlockup17h80616c02163abf3eE"),
            "guest_kernel::inject::softlockup"
        );
        assert_eq!(rust_symbol_path("_ZN4core3fmt5write17h0000000000000000E"), "core::fmt::write");
        assert_eq!(rust_symbol_path("task_entry"), "task_entry");
        assert_eq!(rust_symbol_path("_ZN99shortE"), "_ZN99shortE");
    }

    #[test]
    fn notes_are_parsed_with_their_padding() {
        let mut segment = Vec::new();
        for (name, kind, desc) in [(&b"CORE\0"[..], 1u32, vec![7u8; 6]), (&b"VMCOREINFO\0"[..], 0, b"A=1\n".to_vec())] {
            segment.extend((name.len() as u32).to_le_bytes());
            segment.extend((desc.len() as u32).to_le_bytes());
            segment.extend(kind.to_le_bytes());
            segment.extend(name);
            segment.resize(segment.len().next_multiple_of(4), 0);
            segment.extend(&desc);
            segment.resize(segment.len().next_multiple_of(4), 0);
        }
        segment.extend([0; 12]);
        let notes = parse_notes(&segment).unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!((notes[0].name.as_str(), notes[0].kind, notes[0].desc.as_slice()), ("CORE", 1, &[7u8; 6][..]));
        assert_eq!((notes[1].name.as_str(), notes[1].kind, notes[1].desc.as_slice()), ("VMCOREINFO", 0, &b"A=1\n"[..]));
        assert!(parse_notes(&segment[..20]).is_err());
    }
}
