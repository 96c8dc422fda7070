//! The crashvisor platform device and pvpanic.
//!
//! The platform device is a small port-I/O register file. The guest writes a 64-bit argument as
//! two 32-bit halves (`ARG_LO`, `ARG_HI`) and then a command number to `COMMAND`; the host acts
//! on the command with the argument. Reads of `COMMAND` return the status of the last command
//! (`STATUS_OK` or an error code). Everything the guest writes is untrusted by the host.

/// pvpanic I/O port (QEMU's `pvpanic` ISA device).
pub const PVPANIC_PORT: u16 = 0x505;
/// pvpanic event: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event: a capture kernel has been loaded (the guest booted into kdump).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// First port of the platform device.
pub const PLATFORM_PORT_BASE: u16 = 0x510;
/// Number of ports the platform device decodes.
pub const PLATFORM_PORT_COUNT: u16 = 16;
/// Low 32 bits of the argument (write, 32-bit).
pub const PLATFORM_ARG_LO: u16 = PLATFORM_PORT_BASE;
/// High 32 bits of the argument (write, 32-bit).
pub const PLATFORM_ARG_HI: u16 = PLATFORM_PORT_BASE + 4;
/// Command register (write: run a command; read: status of the last one).
pub const PLATFORM_COMMAND: u16 = PLATFORM_PORT_BASE + 8;
/// Boot-progress register (write, 8-bit): one of the `PROGRESS_*` milestones.
pub const PLATFORM_PROGRESS: u16 = PLATFORM_PORT_BASE + 12;

/// Status: the command was carried out.
pub const STATUS_OK: u32 = 0;
/// Status: unknown command.
pub const STATUS_UNKNOWN_COMMAND: u32 = 1;
/// Status: the argument was invalid.
pub const STATUS_INVALID_ARGUMENT: u32 = 2;

/// Platform commands.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Power the machine off; the argument is ignored.
    PowerOff = 1,
}

impl Command {
    /// Decodes a command number written by the guest.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::PowerOff),
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

/// I/O port of the reset control register (write 0x06 or 0x0e resets).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// I/O port of the i8042 command register (write 0xfe pulses the reset line).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 command that pulses the CPU reset line.
pub const I8042_RESET_COMMAND: u8 = 0xfe;
/// NMI status and control port (Linux reads the NMI reason here).
pub const NMI_REASON_PORT: u16 = 0x61;
