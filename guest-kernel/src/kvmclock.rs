//! KVM paravirtual clock pages, used for what the host tells the guest about lost time:
//! - the `PVCLOCK_GUEST_STOPPED` flag the host sets (`KVM_KVMCLOCK_CTRL`) when it paused the
//!   VM, which the lockup detectors check and clear, exactly as Linux's
//!   `kvm_check_and_clear_guest_paused()`;
//! - per-CPU steal time: how long the host kept this vCPU from running, which the detectors
//!   do not count as time the CPU was stuck.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::arch::cpu;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::mm;

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;
const ENABLE: u64 = 1;

/// `struct pvclock_vcpu_time_info` (32 bytes); only `flags` is used here.
#[repr(C, align(64))]
struct PvclockPage {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: AtomicU8,
    pad: [u8; 2],
}

/// `struct kvm_steal_time` (64 bytes).
#[repr(C, align(64))]
struct StealTime {
    steal: UnsafeCell<u64>,
    version: UnsafeCell<u32>,
    flags: u32,
    preempted: u8,
    pad: [u8; 47],
}

struct PerCpuPages {
    clock: [PvclockPage; MAX_CPUS],
    steal: [StealTime; MAX_CPUS],
}

struct Shared(UnsafeCell<PerCpuPages>);
// SAFETY: the host writes these pages; each CPU reads and clears only its own entry.
unsafe impl Sync for Shared {}

#[allow(clippy::declare_interior_mutable_const)] // array initialiser: each element is its own
const CLOCK: PvclockPage = PvclockPage {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: AtomicU8::new(0),
    pad: [0; 2],
};
#[allow(clippy::declare_interior_mutable_const)] // array initialiser: each element is its own
const STEAL: StealTime =
    StealTime { steal: UnsafeCell::new(0), version: UnsafeCell::new(0), flags: 0, preempted: 0, pad: [0; 47] };
static PAGES: Shared = Shared(UnsafeCell::new(PerCpuPages { clock: [CLOCK; MAX_CPUS], steal: [STEAL; MAX_CPUS] }));
static STEAL_ENABLED: AtomicBool = AtomicBool::new(false);

fn pages() -> &'static PerCpuPages {
    // SAFETY: shared references only; mutation happens through atomics and volatile reads.
    unsafe { &*PAGES.0.get() }
}

/// Registers this CPU's kvmclock and steal-time areas with the host, if it offers them.
pub fn init_cpu() {
    let max_leaf = cpu::cpuid(0x4000_0000, 0).eax;
    if max_leaf < 0x4000_0001 {
        return;
    }
    let features = cpu::cpuid(0x4000_0001, 0).eax;
    let id = percpu::cpu_id();
    if features & KVM_FEATURE_CLOCKSOURCE2 != 0 {
        let pa = mm::kernel_virt_to_phys(&pages().clock[id] as *const PvclockPage as u64);
        // SAFETY: points the host at this CPU's own 64-byte-aligned static page, which lives
        // forever; the host only writes the pvclock structure there.
        unsafe { cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pa | ENABLE) };
    }
    if features & KVM_FEATURE_STEAL_TIME != 0 {
        let pa = mm::kernel_virt_to_phys(&pages().steal[id] as *const StealTime as u64);
        // SAFETY: as above for the 64-byte steal-time structure.
        unsafe { cpu::wrmsr(MSR_KVM_STEAL_TIME, pa | ENABLE) };
        STEAL_ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Whether the host paused this CPU since the last call (Linux's
/// `kvm_check_and_clear_guest_paused`).
pub fn check_and_clear_guest_paused() -> bool {
    let flags = &pages().clock[percpu::cpu_id()].flags;
    if flags.load(Ordering::Acquire) & PVCLOCK_GUEST_STOPPED == 0 {
        return false;
    }
    flags.fetch_and(!PVCLOCK_GUEST_STOPPED, Ordering::AcqRel);
    true
}

/// Nanoseconds the host has kept `cpu` from running (0 without steal time).
pub fn steal_ns(cpu: usize) -> u64 {
    if !STEAL_ENABLED.load(Ordering::Relaxed) {
        return 0;
    }
    let area = &pages().steal[cpu];
    loop {
        // SAFETY: volatile reads of host-written words in a static; the version field is the
        // host's seqcount (odd while it writes).
        let (v1, steal, v2) = unsafe {
            let v1 = area.version.get().read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let steal = area.steal.get().read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            (v1, steal, area.version.get().read_volatile())
        };
        if v1 == v2 && v1 % 2 == 0 {
            return steal;
        }
        cpu::pause();
    }
}

/// `struct pvclock_wall_clock`: the host's wall-clock time when the guest booted.
#[repr(C, align(16))]
struct WallClock {
    version: UnsafeCell<u32>,
    sec: UnsafeCell<u32>,
    nsec: UnsafeCell<u32>,
}

struct WallClockCell(WallClock);
// SAFETY: written by the host on the MSR write; read with volatile loads afterwards.
unsafe impl Sync for WallClockCell {}
static WALL_CLOCK: WallClockCell =
    WallClockCell(WallClock { version: UnsafeCell::new(0), sec: UnsafeCell::new(0), nsec: UnsafeCell::new(0) });

/// Unix seconds at boot, from KVM's wall clock (0 if the host does not offer it).
pub fn boot_wall_clock_secs() -> u64 {
    let max_leaf = cpu::cpuid(0x4000_0000, 0).eax;
    if max_leaf < 0x4000_0001 || cpu::cpuid(0x4000_0001, 0).eax & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return 0;
    }
    let wall = &WALL_CLOCK.0;
    let pa = mm::kernel_virt_to_phys(wall as *const WallClock as u64);
    // SAFETY: asks the host to write the wall clock into this static, which lives forever.
    unsafe { cpu::wrmsr(MSR_KVM_WALL_CLOCK_NEW, pa) };
    // SAFETY: volatile read of a host-written word in a static.
    u64::from(unsafe { wall.sec.get().read_volatile() })
}
