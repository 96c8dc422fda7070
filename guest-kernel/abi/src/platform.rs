//! The crashvisor platform device and pvpanic.
//!
//! The platform device is a small port-I/O register file. The guest writes a 64-bit argument as
//! two 32-bit halves (`ARG_LO`, `ARG_HI`) and then a command number to `COMMAND`; the host acts
//! on the command with the argument. Reads of `COMMAND` return the status of the last command
//! (`STATUS_OK` or an error code). The argument latch and the status are per vCPU.
//!
//! Two registers need no latch, so NMI handlers may use them: `EVENT` (one 32-bit `out` reports
//! one event, see [`encode_event`]) and `NMI_REASON` (read-to-clear: why the host injected the
//! NMI this vCPU is handling). Everything the guest writes is untrusted by the host.

/// pvpanic I/O port (QEMU's `pvpanic` ISA device).
pub const PVPANIC_PORT: u16 = 0x505;
/// pvpanic event: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event: a capture kernel has been loaded (the guest booted into kdump).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// First port of the platform device.
pub const PLATFORM_PORT_BASE: u16 = 0x510;
/// Number of ports the platform device decodes.
pub const PLATFORM_PORT_COUNT: u16 = 32;
/// Low 32 bits of the argument (write, 32-bit).
pub const PLATFORM_ARG_LO: u16 = PLATFORM_PORT_BASE;
/// High 32 bits of the argument (write, 32-bit).
pub const PLATFORM_ARG_HI: u16 = PLATFORM_PORT_BASE + 4;
/// Command register (write: run a command; read: status of the last one).
pub const PLATFORM_COMMAND: u16 = PLATFORM_PORT_BASE + 8;
/// Boot-progress register (write, 8-bit): one of the `PROGRESS_*` milestones.
pub const PLATFORM_PROGRESS: u16 = PLATFORM_PORT_BASE + 12;
/// Event register (write, 32-bit): one `out` reports one event, encoded by [`encode_event`].
/// It has no latch and no status, so it is safe in NMI context; undecodable values are ignored.
pub const PLATFORM_EVENT: u16 = PLATFORM_PORT_BASE + 16;
/// NMI-reason register (read, 32-bit, per vCPU, read-to-clear): the `NMI_REASON_*` bits of the
/// NMIs the host injected into this vCPU since the last read. 0 means the host knows no reason
/// (for instance an NMI IPI from another guest CPU).
pub const PLATFORM_NMI_REASON: u16 = PLATFORM_PORT_BASE + 20;

/// NMI reason: a tick of the host's periodic NMI watchdog (`Command::SetNmiWatchdog`).
pub const NMI_REASON_WATCHDOG: u32 = 1 << 0;
/// NMI reason: an operator asked the host to send an NMI (like `virsh inject-nmi`).
pub const NMI_REASON_OPERATOR: u32 = 1 << 1;

/// Status: the command was carried out.
pub const STATUS_OK: u32 = 0;
/// Status: unknown command.
pub const STATUS_UNKNOWN_COMMAND: u32 = 1;
/// Status: the argument was invalid.
pub const STATUS_INVALID_ARGUMENT: u32 = 2;
/// Status: the host does not offer this feature (for `SetNmiWatchdog`: the VMM runs with its NMI
/// watchdog off, so the guest falls back to its buddy detector).
pub const STATUS_UNSUPPORTED: u32 = 3;
/// Status: the host failed to write what the command asked for (disk full, ...).
pub const STATUS_IO_ERROR: u32 = 4;

/// Shortest period `Command::SetNmiWatchdog` accepts, in milliseconds.
pub const NMI_WATCHDOG_MIN_PERIOD_MS: u64 = 10;
/// Longest period `Command::SetNmiWatchdog` accepts, in milliseconds (one hour).
pub const NMI_WATCHDOG_MAX_PERIOD_MS: u64 = 3_600_000;

/// Platform commands.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Power the machine off; the argument is ignored.
    PowerOff = 1,
    /// Start the host's periodic NMI watchdog: every `argument` milliseconds the host injects
    /// an NMI into every vCPU with `NMI_REASON_WATCHDOG` set. 0 stops it. The period must lie in
    /// `NMI_WATCHDOG_MIN_PERIOD_MS..=NMI_WATCHDOG_MAX_PERIOD_MS` (else `STATUS_INVALID_ARGUMENT`);
    /// `STATUS_UNSUPPORTED` when the VMM runs with NMIs off. The ticks stop while the VM is
    /// paused (the first after a resume comes a full period later) and at reboot.
    SetNmiWatchdog = 2,
    /// Tell the host why the guest is about to panic: the argument is the guest-physical address
    /// of a [`CrashReason`], which the host reads and validates at once (`STATUS_INVALID_ARGUMENT`
    /// if it is out of RAM or malformed) and reports with the next panic event. 0 forgets it.
    SetCrashReason = 3,
    /// A capture kernel hands over its vmcore: the argument is the guest-physical address of a
    /// [`crate::dump::DumpDescriptor`]. The host validates it, writes the vmcore and its logs
    /// into the crash store straight from guest memory, and answers `STATUS_OK`,
    /// `STATUS_INVALID_ARGUMENT` (the descriptor broke a rule) or `STATUS_IO_ERROR`.
    Dump = 4,
    /// A capture kernel could not produce a vmcore: the argument is the guest-physical address
    /// of a [`crate::dump::DumpFailure`] saying why. The host records it (an event, and a
    /// failed entry in the crash store's log); the guest then runs its failure action.
    DumpFailed = 5,
    /// Where the guest keeps its VMCOREINFO ELF note (`/sys/kernel/vmcoreinfo`): the argument is
    /// its guest-physical address (at most `VMCOREINFO_NOTE_SIZE` bytes: header, name, text).
    /// Host-side dumps copy the note from there at the moment of the dump. 0 forgets it;
    /// `STATUS_INVALID_ARGUMENT` if the note would not lie in RAM.
    SetVmcoreinfo = 6,
}

impl Command {
    /// Decodes a command number written by the guest.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::PowerOff),
            2 => Some(Self::SetNmiWatchdog),
            3 => Some(Self::SetCrashReason),
            4 => Some(Self::Dump),
            5 => Some(Self::DumpFailed),
            6 => Some(Self::SetVmcoreinfo),
            _ => None,
        }
    }
}

/// Boot milestones the guest reports through `PLATFORM_PROGRESS`, so the host can time boot.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The first instruction of the PVH entry ran.
    FirstInstruction = 1,
    /// Every CPU is online ("smp: Brought up ...").
    AllCpusOnline = 2,
    /// The console shell printed its first prompt.
    ShellReady = 3,
}

impl Progress {
    /// Decodes a milestone written by the guest.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::FirstInstruction),
            2 => Some(Self::AllCpusOnline),
            3 => Some(Self::ShellReady),
            _ => None,
        }
    }
}

/// What the guest reports through `PLATFORM_EVENT`. Each event carries a CPU and a 16-bit
/// argument whose meaning depends on the kind (documented per variant).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A soft lockup was reported: `cpu` is the stuck CPU, `arg` how long it has been stuck, in
    /// seconds (saturated at `u16::MAX`).
    SoftLockup = 1,
    /// A hard lockup was reported: `cpu` is always the locked-up CPU and `arg` the CPU that
    /// detected it (the same CPU for the NMI-watchdog detector, its neighbour for the buddy).
    HardLockup = 2,
    /// A hung task was reported: `cpu` is the CPU the detector ran on, `arg` the task's pid
    /// (saturated at `u16::MAX`).
    HungTask = 3,
    /// An oops was printed: `cpu` is the CPU that oopsed, `arg` the pid of the current task (0
    /// for idle or interrupt context; saturated at `u16::MAX`).
    Oops = 4,
    /// The kernel is panicking: `cpu` is the panicking CPU, `arg` is 0. Sent after
    /// `Command::SetCrashReason` (if any) and before the other CPUs are stopped, so it also
    /// reaches the host when a capture kernel takes over (no pvpanic then).
    Panic = 5,
    /// An NMI nobody claimed ("Uhhuh. NMI received for unknown reason"): `cpu` took it, `arg` is
    /// the reason byte read from port 0x61.
    UnknownNmi = 6,
    /// The control thread is serving requests on COM2 (it also sends its hello line there):
    /// `cpu` is the CPU it runs on, `arg` is `control::PROTOCOL_VERSION`.
    ControlReady = 7,
}

impl EventKind {
    /// Every kind, in numeric order.
    pub const ALL: [Self; 7] = [
        Self::SoftLockup,
        Self::HardLockup,
        Self::HungTask,
        Self::Oops,
        Self::Panic,
        Self::UnknownNmi,
        Self::ControlReady,
    ];

    /// Decodes a kind number.
    pub fn from_raw(raw: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == raw)
    }

    /// The kind's stable name, as the host reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoftLockup => "softlockup",
            Self::HardLockup => "hardlockup",
            Self::HungTask => "hung_task",
            Self::Oops => "oops",
            Self::Panic => "panic",
            Self::UnknownNmi => "unknown_nmi",
            Self::ControlReady => "control_ready",
        }
    }
}

/// The 32-bit value the guest writes to `PLATFORM_EVENT`: `kind | cpu << 8 | arg << 16`.
pub const fn encode_event(kind: EventKind, cpu: u8, arg: u16) -> u32 {
    kind as u32 | (cpu as u32) << 8 | (arg as u32) << 16
}

/// Splits a `PLATFORM_EVENT` value into kind, CPU and argument; `None` for an unknown kind.
pub fn decode_event(raw: u32) -> Option<(EventKind, u8, u16)> {
    let kind = EventKind::from_raw(raw as u8)?;
    Some((kind, (raw >> 8) as u8, (raw >> 16) as u16))
}

/// `CrashReason::magic`: "CRAS" as the value's big-endian bytes (in memory, little-endian: "SARC").
pub const CRASH_REASON_MAGIC: u32 = 0x4352_4153;
/// `CrashReason::version` of the layout below.
pub const CRASH_REASON_VERSION: u32 = 1;
/// Size of `CrashReason::comm` (Linux's `TASK_COMM_LEN`).
pub const CRASH_REASON_COMM_LEN: usize = 16;
/// Size of `CrashReason::message`.
pub const CRASH_REASON_MESSAGE_LEN: usize = 256;

/// Which detector or path made the kernel panic (`CrashReason::detector`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    /// A direct `panic()` call with no detector behind it.
    None = 0,
    /// The soft-lockup detector (`softlockup_panic`).
    SoftLockup = 1,
    /// The hard-lockup detector (`hardlockup_panic`).
    HardLockup = 2,
    /// The hung-task detector (`hung_task_panic`).
    HungTask = 3,
    /// An oops with `panic_on_oops`, or in interrupt context.
    Oops = 4,
    /// A `BUG()` (invalid opcode from `ud2`).
    Bug = 5,
    /// `echo c > /proc/sysrq-trigger`.
    Sysrq = 6,
    /// An unknown NMI with `unknown_nmi_panic` or `panic_on_unrecovered_nmi`.
    UnknownNmi = 7,
    /// A kernel stack overflow (double fault on the guard page).
    StackOverflow = 8,
    /// A `WARN()` or a UBSAN report with `kernel.panic_on_warn`.
    Warn = 9,
}

impl Detector {
    /// Every detector, in numeric order.
    pub const ALL: [Self; 10] = [
        Self::None,
        Self::SoftLockup,
        Self::HardLockup,
        Self::HungTask,
        Self::Oops,
        Self::Bug,
        Self::Sysrq,
        Self::UnknownNmi,
        Self::StackOverflow,
        Self::Warn,
    ];

    /// Decodes a detector number.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|d| *d as u32 == raw)
    }

    /// The detector's stable name, as the host reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "panic",
            Self::SoftLockup => "softlockup",
            Self::HardLockup => "hardlockup",
            Self::HungTask => "hung_task",
            Self::Oops => "oops",
            Self::Bug => "bug",
            Self::Sysrq => "sysrq",
            Self::UnknownNmi => "unknown_nmi",
            Self::StackOverflow => "stack_overflow",
            Self::Warn => "warn",
        }
    }
}

/// Why the guest panics, handed to the host by `Command::SetCrashReason` (304 bytes, all
/// little-endian integers and byte arrays, no padding). The host reads it from guest memory as
/// raw bytes and checks every field: the magic and version must match, `detector` must be a
/// [`Detector`], `message_len` must not exceed `CRASH_REASON_MESSAGE_LEN`; text that is not
/// UTF-8 is reported lossily.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashReason {
    /// `CRASH_REASON_MAGIC`.
    pub magic: u32,
    /// `CRASH_REASON_VERSION`.
    pub version: u32,
    /// A [`Detector`] number.
    pub detector: u32,
    /// The CPU that panics.
    pub cpu: u32,
    /// Pid of the task current on that CPU (0 for idle or interrupt context).
    pub pid: u32,
    /// Zero.
    pub reserved: u32,
    /// That task's name, NUL-padded (it may fill all 16 bytes without a NUL).
    pub comm: [u8; CRASH_REASON_COMM_LEN],
    /// Bytes of `message` in use.
    pub message_len: u32,
    /// Zero.
    pub reserved2: u32,
    /// The panic message (what follows "Kernel panic - not syncing: "), `message_len` bytes.
    pub message: [u8; CRASH_REASON_MESSAGE_LEN],
}

const _: () = assert!(core::mem::size_of::<CrashReason>() == 304);
const _: () = assert!(core::mem::align_of::<CrashReason>() == 4);

impl CrashReason {
    /// Size of the structure in guest memory.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// A reason with the given detector, CPU and pid, and an empty name and message.
    pub const fn new(detector: Detector, cpu: u32, pid: u32) -> Self {
        Self {
            magic: CRASH_REASON_MAGIC,
            version: CRASH_REASON_VERSION,
            detector: detector as u32,
            cpu,
            pid,
            reserved: 0,
            comm: [0; CRASH_REASON_COMM_LEN],
            message_len: 0,
            reserved2: 0,
            message: [0; CRASH_REASON_MESSAGE_LEN],
        }
    }

    /// Sets `comm`, truncated to 16 bytes and NUL-padded.
    pub fn set_comm(&mut self, comm: &[u8]) {
        let n = comm.len().min(CRASH_REASON_COMM_LEN);
        self.comm = [0; CRASH_REASON_COMM_LEN];
        self.comm[..n].copy_from_slice(&comm[..n]);
    }

    /// Appends `text` to the message, truncating at `CRASH_REASON_MESSAGE_LEN` bytes (possibly
    /// inside a UTF-8 sequence; the host copes). Returns how many bytes were taken, so it also
    /// serves as the sink of a `core::fmt::Write` adapter.
    pub fn push_message(&mut self, text: &[u8]) -> usize {
        let used = (self.message_len as usize).min(CRASH_REASON_MESSAGE_LEN);
        let n = text.len().min(CRASH_REASON_MESSAGE_LEN - used);
        self.message[used..used + n].copy_from_slice(&text[..n]);
        self.message_len = (used + n) as u32;
        n
    }

    /// The `comm` bytes before the first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(CRASH_REASON_COMM_LEN);
        &self.comm[..end]
    }

    /// The message bytes in use (`message_len`, clamped to the array).
    pub fn message_bytes(&self) -> &[u8] {
        &self.message[..(self.message_len as usize).min(CRASH_REASON_MESSAGE_LEN)]
    }
}

impl core::fmt::Write for CrashReason {
    /// Appends to the message; text beyond its capacity is dropped, never an error, so a long
    /// panic message still reaches the host truncated.
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push_message(s.as_bytes());
        Ok(())
    }
}

/// I/O port of the reset control register (write 0x06 or 0x0e resets).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// I/O port of the i8042 command register (write 0xfe pulses the reset line).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 command that pulses the CPU reset line.
pub const I8042_RESET_COMMAND: u8 = 0xfe;
/// NMI status and control port (Linux reads the NMI reason here).
pub const NMI_REASON_PORT: u16 = 0x61;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_fit_the_device_window() {
        for port in
            [PLATFORM_ARG_LO, PLATFORM_ARG_HI, PLATFORM_COMMAND, PLATFORM_PROGRESS, PLATFORM_EVENT, PLATFORM_NMI_REASON]
        {
            assert!((PLATFORM_PORT_BASE..PLATFORM_PORT_BASE + PLATFORM_PORT_COUNT).contains(&port));
        }
        assert_eq!(PLATFORM_EVENT, 0x520);
        assert_eq!(PLATFORM_NMI_REASON, 0x524);
    }

    #[test]
    fn events_round_trip() {
        for kind in EventKind::ALL {
            let raw = encode_event(kind, 15, 0xbeef);
            assert_eq!(decode_event(raw), Some((kind, 15, 0xbeef)));
            assert_eq!(EventKind::from_raw(kind as u8), Some(kind));
        }
        assert_eq!(encode_event(EventKind::HardLockup, 1, 2), 0x0002_0102);
        assert_eq!(decode_event(0), None);
        assert_eq!(decode_event(0xffff_ff08), None);
        assert_eq!(EventKind::HungTask.as_str(), "hung_task");
    }

    #[test]
    fn commands_and_detectors_decode() {
        assert_eq!(Command::from_raw(2), Some(Command::SetNmiWatchdog));
        assert_eq!(Command::from_raw(3), Some(Command::SetCrashReason));
        assert_eq!(Command::from_raw(4), Some(Command::Dump));
        assert_eq!(Command::from_raw(5), Some(Command::DumpFailed));
        assert_eq!(Command::from_raw(6), Some(Command::SetVmcoreinfo));
        assert_eq!(Command::from_raw(7), None);
        for d in Detector::ALL {
            assert_eq!(Detector::from_raw(d as u32), Some(d));
        }
        assert_eq!(Detector::from_raw(10), None);
        assert_eq!(Detector::Warn.as_str(), "warn");
        assert_eq!(Detector::StackOverflow.as_str(), "stack_overflow");
    }

    #[test]
    fn crash_reason_layout_and_helpers() {
        assert_eq!(core::mem::offset_of!(CrashReason, comm), 24);
        assert_eq!(core::mem::offset_of!(CrashReason, message_len), 40);
        assert_eq!(core::mem::offset_of!(CrashReason, message), 48);
        assert_eq!(&CRASH_REASON_MAGIC.to_be_bytes(), b"CRAS");
        let mut r = CrashReason::new(Detector::Sysrq, 1, 42);
        r.set_comm(b"a-very-long-task-name");
        assert_eq!(r.comm_bytes(), b"a-very-long-task");
        r.set_comm(b"sh");
        assert_eq!(r.comm_bytes(), b"sh");
        core::fmt::Write::write_fmt(&mut r, format_args!("sysrq {}", 'c')).unwrap();
        assert_eq!(r.message_bytes(), b"sysrq c");
        let long = [b'x'; 300];
        assert_eq!(r.push_message(&long), CRASH_REASON_MESSAGE_LEN - 7);
        assert_eq!(r.push_message(b"more"), 0);
        assert_eq!(r.message_bytes().len(), CRASH_REASON_MESSAGE_LEN);
        r.message_len = u32::MAX; // hostile: clamped, no panic
        assert_eq!(r.message_bytes().len(), CRASH_REASON_MESSAGE_LEN);
        assert_eq!(r.push_message(b"y"), 0);
    }
}
