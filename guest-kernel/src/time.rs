//! Time: the TSC as the clock (frequency from the hypervisor timing leaf), and per-CPU one-shot
//! timers on the local APIC timer (TSC-deadline mode when available). There is no periodic
//! tick: a CPU's timer is armed only for its next deadline, so an idle guest costs nothing.

use core::sync::atomic::{AtomicU64, Ordering};

use crashvisor_abi::lkdtm::CrashPoint;

use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{apic, cpu};
use crate::sync::SpinLock;

/// Hypervisor timing leaf: EAX = TSC kHz, EBX = APIC bus kHz.
const CPUID_TIMING_LEAF: u32 = 0x4000_0010;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static APIC_KHZ: AtomicU64 = AtomicU64::new(0);
/// ns = (tsc - BOOT_TSC) * NS_MULT >> 32.
static NS_MULT: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// Reads the TSC frequency. Boot CPU, before the first timestamp.
pub fn init() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    let max_hv_leaf = cpu::cpuid(0x4000_0000, 0).eax;
    let (tsc_khz, apic_khz) = if max_hv_leaf >= CPUID_TIMING_LEAF {
        let r = cpu::cpuid(CPUID_TIMING_LEAF, 0);
        (u64::from(r.eax), u64::from(r.ebx))
    } else {
        // Processor base frequency (MHz) as a fallback; KVM's APIC counts at 1 GHz.
        (u64::from(cpu::cpuid(0x16, 0).eax) * 1000, 1_000_000)
    };
    let tsc_khz = if tsc_khz == 0 { 1_000_000 } else { tsc_khz };
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
    APIC_KHZ.store(apic_khz.max(1), Ordering::Relaxed);
    NS_MULT.store((1_000_000u64 << 32) / tsc_khz, Ordering::Relaxed);
}

/// TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot (0 until `init`).
pub fn now_ns() -> u64 {
    tsc_to_ns(cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed)))
}

/// Converts a TSC delta to nanoseconds.
pub fn tsc_to_ns(delta: u64) -> u64 {
    ((u128::from(delta) * u128::from(NS_MULT.load(Ordering::Relaxed))) >> 32) as u64
}

/// Converts nanoseconds to a TSC delta.
pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(tsc_khz()) / 1_000_000) as u64
}

/// A timer callback, run in interrupt context on the timer's CPU.
pub type TimerFn = fn(arg: usize);

#[derive(Clone, Copy)]
struct Timer {
    deadline_tsc: u64,
    id: u64,
    func: TimerFn,
    arg: usize,
}

const TIMERS_PER_CPU: usize = 64;

/// A CPU's pending timers, sorted by deadline.
struct TimerQueue {
    timers: [Option<Timer>; TIMERS_PER_CPU],
    len: usize,
}

impl TimerQueue {
    const fn new() -> Self {
        Self { timers: [None; TIMERS_PER_CPU], len: 0 }
    }

    fn insert(&mut self, timer: Timer) -> bool {
        if self.len == TIMERS_PER_CPU {
            return false;
        }
        let pos = self.timers[..self.len]
            .iter()
            .position(|t| t.is_some_and(|t| t.deadline_tsc > timer.deadline_tsc))
            .unwrap_or(self.len);
        self.timers.copy_within(pos..self.len, pos + 1);
        self.timers[pos] = Some(timer);
        self.len += 1;
        true
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(pos) = self.timers[..self.len].iter().position(|t| t.is_some_and(|t| t.id == id)) else {
            return false;
        };
        self.timers.copy_within(pos + 1..self.len, pos);
        self.len -= 1;
        self.timers[self.len] = None;
        true
    }

    fn pop_expired(&mut self, now: u64) -> Option<Timer> {
        let first = self.timers[0]?;
        if first.deadline_tsc > now {
            return None;
        }
        self.remove(first.id);
        Some(first)
    }

    fn next_deadline(&self) -> Option<u64> {
        self.timers[0].map(|t| t.deadline_tsc)
    }
}

static QUEUES: [SpinLock<TimerQueue>; MAX_CPUS] = [const { SpinLock::new(TimerQueue::new()) }; MAX_CPUS];
static NEXT_TIMER_ID: AtomicU64 = AtomicU64::new(1);

/// Identifies an armed timer for `cancel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(u64);

fn program(deadline: Option<u64>) {
    let khz = APIC_KHZ.load(Ordering::Relaxed);
    // APIC ticks per TSC tick, as a 32.32 fixed-point factor.
    let factor = ((khz << 32) / tsc_khz().max(1), 32);
    apic::set_timer_deadline(deadline.unwrap_or(0), cpu::rdtsc(), factor);
}

/// Arms a timer on this CPU that calls `func(arg)` once the TSC reaches `deadline_tsc`.
pub fn add_timer(deadline_tsc: u64, func: TimerFn, arg: usize) -> Option<TimerId> {
    crate::lkdtm::hit(CrashPoint::Timeradd);
    let id = NEXT_TIMER_ID.fetch_add(1, Ordering::Relaxed);
    let mut queue = QUEUES[percpu::cpu_id()].lock_irqsave();
    if !queue.insert(Timer { deadline_tsc, id, func, arg }) {
        return None;
    }
    if queue.next_deadline() == Some(deadline_tsc) {
        program(Some(deadline_tsc));
    }
    Some(TimerId(id))
}

/// Arms a timer `ns` from now on this CPU.
pub fn add_timer_ns(ns: u64, func: TimerFn, arg: usize) -> Option<TimerId> {
    add_timer(cpu::rdtsc() + ns_to_tsc(ns), func, arg)
}

/// Cancels a timer of this CPU; false if it already ran.
pub fn cancel(id: TimerId) -> bool {
    QUEUES[percpu::cpu_id()].lock_irqsave().remove(id.0)
}

/// The local APIC timer interrupt: run every expired timer, re-arm for the next one.
pub fn interrupt() {
    let queue = &QUEUES[percpu::cpu_id()];
    loop {
        let expired = queue.lock_irqsave().pop_expired(cpu::rdtsc());
        match expired {
            Some(timer) => {
                crate::lkdtm::hit(CrashPoint::IntTaskletEntry);
                (timer.func)(timer.arg);
            }
            None => break,
        }
    }
    program(queue.lock_irqsave().next_deadline());
}

/// Busy-waits for `ns` nanoseconds (for the panic path, where nothing else may run).
pub fn delay_ns(ns: u64) {
    let end = cpu::rdtsc() + ns_to_tsc(ns);
    while cpu::rdtsc() < end {
        cpu::pause();
    }
}
