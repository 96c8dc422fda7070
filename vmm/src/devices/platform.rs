//! The crashvisor platform device (argument latch + command register + boot progress) and the
//! pvpanic port. See `crashvisor_abi::platform` for the register contract.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crashvisor_abi::layout::MAX_VCPUS;
use crashvisor_abi::platform::{
    Command, Progress, PLATFORM_ARG_HI, PLATFORM_ARG_LO, PLATFORM_COMMAND, PLATFORM_PROGRESS,
    PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, STATUS_OK, STATUS_UNKNOWN_COMMAND,
};

use super::{IoAction, StopReason};

/// When each boot milestone was reached, relative to the start of the boot (the VMM process
/// start for the first boot, the reset for later ones). Shared by the machines of one VMM run.
#[derive(Debug)]
pub struct BootTimes {
    inner: Mutex<(Instant, Vec<(Progress, Duration)>)>,
    /// Print each milestone on stderr as it is reached.
    echo: bool,
}

impl BootTimes {
    /// Starts the clock at `origin` (the VMM process start); `echo` prints milestones on stderr.
    pub fn new(origin: Instant, echo: bool) -> Self {
        Self {
            inner: Mutex::new((origin, Vec::new())),
            echo,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Instant, Vec<(Progress, Duration)>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `progress` unless it was already reached in this boot.
    pub fn record(&self, progress: Progress) {
        let mut inner = self.lock();
        if inner.1.iter().any(|(p, _)| *p == progress) {
            return;
        }
        let elapsed = inner.0.elapsed();
        inner.1.push((progress, elapsed));
        drop(inner);
        if self.echo {
            eprintln!(
                "timing {progress:?} {:.3} ms monotonic_ns {}",
                elapsed.as_secs_f64() * 1e3,
                monotonic_ns()
            );
        }
    }

    /// The milestones reached so far, in order.
    pub fn milestones(&self) -> Vec<(Progress, Duration)> {
        self.lock().1.clone()
    }

    /// Forgets the milestones (a new boot starts) and restarts the clock now.
    pub fn restart(&self) {
        *self.lock() = (Instant::now(), Vec::new());
    }
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes (benchmarks time from spawn).
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Per-machine state of the platform device.
#[derive(Debug)]
pub struct Platform {
    args: [AtomicU64; MAX_VCPUS],
    status: [AtomicU32; MAX_VCPUS],
    pvpanic: AtomicU8,
    /// Boot milestones of this boot.
    pub boot_times: std::sync::Arc<BootTimes>,
}

impl Platform {
    /// pvpanic events this device supports (read from the pvpanic port).
    pub const PVPANIC_FEATURES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

    /// A fresh device for a new boot.
    pub fn new(boot_times: std::sync::Arc<BootTimes>) -> Self {
        Self {
            args: std::array::from_fn(|_| AtomicU64::new(0)),
            status: std::array::from_fn(|_| AtomicU32::new(STATUS_OK)),
            pvpanic: AtomicU8::new(0),
            boot_times,
        }
    }

    /// pvpanic events the guest has signalled in this boot.
    pub fn pvpanic_events(&self) -> u8 {
        self.pvpanic.load(Ordering::Relaxed)
    }

    /// Records a pvpanic event byte.
    pub fn pvpanic_event(&self, value: u8) {
        let value = value & Self::PVPANIC_FEATURES;
        self.pvpanic.fetch_or(value, Ordering::Relaxed);
        if value & PVPANIC_PANICKED != 0 {
            tracing::warn!("guest signalled a panic through pvpanic");
        }
        if value & PVPANIC_CRASH_LOADED != 0 {
            tracing::info!("guest booted a crash kernel (pvpanic crash-loaded)");
        }
    }

    /// A guest write to a platform port. `vcpu` is below `MAX_VCPUS` (the VMM creates no more).
    pub fn write(&self, vcpu: usize, port: u16, data: &[u8]) -> IoAction {
        let vcpu = vcpu.min(MAX_VCPUS - 1);
        let value = le_u32(data);
        match port {
            PLATFORM_ARG_LO => {
                let arg = &self.args[vcpu];
                arg.store(
                    (arg.load(Ordering::Relaxed) & !0xffff_ffff) | u64::from(value),
                    Ordering::Relaxed,
                );
            }
            PLATFORM_ARG_HI => {
                let arg = &self.args[vcpu];
                arg.store(
                    (arg.load(Ordering::Relaxed) & 0xffff_ffff) | (u64::from(value) << 32),
                    Ordering::Relaxed,
                );
            }
            PLATFORM_COMMAND => return self.command(vcpu, value),
            PLATFORM_PROGRESS => {
                if let Some(progress) = Progress::from_raw(value as u8) {
                    self.boot_times.record(progress);
                }
            }
            _ => {}
        }
        IoAction::Continue
    }

    /// A guest read from a platform port.
    pub fn read(&self, vcpu: usize, port: u16, data: &mut [u8]) {
        let vcpu = vcpu.min(MAX_VCPUS - 1);
        let value = match port {
            PLATFORM_COMMAND => self.status[vcpu].load(Ordering::Relaxed),
            _ => 0,
        };
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    fn command(&self, vcpu: usize, raw: u32) -> IoAction {
        let Some(command) = Command::from_raw(raw) else {
            self.status[vcpu].store(STATUS_UNKNOWN_COMMAND, Ordering::Relaxed);
            return IoAction::Continue;
        };
        self.status[vcpu].store(STATUS_OK, Ordering::Relaxed);
        match command {
            Command::PowerOff => IoAction::Stop(StopReason::PowerOff),
        }
    }
}

/// Little-endian value of up to 4 guest bytes (shorter accesses are zero-extended).
fn le_u32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        Platform::new(std::sync::Arc::new(BootTimes::new(Instant::now(), false)))
    }

    #[test]
    fn power_off_command_stops_the_machine() {
        let p = platform();
        assert_eq!(
            p.write(
                0,
                PLATFORM_COMMAND,
                &(Command::PowerOff as u32).to_le_bytes()
            ),
            IoAction::Stop(StopReason::PowerOff)
        );
    }

    #[test]
    fn unknown_command_sets_status_and_continues() {
        let p = platform();
        assert_eq!(
            p.write(1, PLATFORM_COMMAND, &0xdead_u32.to_le_bytes()),
            IoAction::Continue
        );
        let mut status = [0u8; 4];
        p.read(1, PLATFORM_COMMAND, &mut status);
        assert_eq!(u32::from_le_bytes(status), STATUS_UNKNOWN_COMMAND);
        p.read(0, PLATFORM_COMMAND, &mut status);
        assert_eq!(u32::from_le_bytes(status), STATUS_OK, "status is per vCPU");
    }

    #[test]
    fn hostile_sizes_and_vcpu_ids_are_harmless() {
        let p = platform();
        assert_eq!(p.write(999, PLATFORM_ARG_LO, &[]), IoAction::Continue);
        assert_eq!(
            p.write(0, PLATFORM_ARG_HI, &[1, 2, 3, 4, 5, 6, 7, 8]),
            IoAction::Continue
        );
        let mut big = [0u8; 16];
        p.read(999, PLATFORM_COMMAND, &mut big);
        p.write(0, PLATFORM_PROGRESS, &[0xff]);
        assert!(p.boot_times.milestones().is_empty());
    }

    #[test]
    fn milestones_are_recorded_once() {
        let p = platform();
        p.write(0, PLATFORM_PROGRESS, &[Progress::FirstInstruction as u8]);
        p.write(1, PLATFORM_PROGRESS, &[Progress::FirstInstruction as u8]);
        assert_eq!(p.boot_times.milestones().len(), 1);
    }

    #[test]
    fn pvpanic_records_known_bits_only() {
        let p = platform();
        p.pvpanic_event(0xff);
        assert_eq!(p.pvpanic_events(), Platform::PVPANIC_FEATURES);
    }
}
