//! LKDTM's `bugs.c`: panics, `BUG()` and `WARN()`, the NULL write, lockups, integer overflow and
//! array bounds (UBSAN), and corrupted lists. (The stack types are `stack.rs`'s.)

use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

use super::{expected_without, lkdtm_err, lkdtm_info};
use crate::arch::{cpu, percpu};
use crate::list::{self, ListHead};
use crate::sched::task::TASK_UNINTERRUPTIBLE;
use crate::sync::{irq, preempt, SpinLock};
use crate::{mm, sched, smp, time, ubsan, ubsan_here};

/// `panic("dumptest")`.
pub fn lkdtm_PANIC() {
    crate::panic::panic(format_args!("dumptest"));
}

/// CPUs that reached `panic_stop_irqoff_fn`.
static STOPPED: AtomicUsize = AtomicUsize::new(0);

/// Run on every CPU with interrupts off (Linux runs it under `stop_machine`): the last CPU to
/// arrive panics, so the others can only be stopped by NMI.
fn panic_stop_irqoff_fn(_: usize) {
    if STOPPED.fetch_add(1, Ordering::SeqCst) + 1 == percpu::online_count() {
        crate::panic::panic(format_args!("panic stop irqoff test"));
    }
    loop {
        cpu::pause();
    }
}

/// Every CPU spins with interrupts off; the last one panics.
pub fn lkdtm_PANIC_STOP_IRQOFF() {
    STOPPED.store(0, Ordering::SeqCst);
    let me = percpu::cpu_id();
    for other in (0..smp::possible_cpus()).filter(|&c| c != me && percpu::of(c).online.load(Ordering::Relaxed)) {
        smp::call_on_cpu(other, panic_stop_irqoff_fn, 0);
    }
    irq::disable();
    panic_stop_irqoff_fn(0);
}

/// Arms `callback` as a timer callback 100 µs from now, to panic or `BUG()` in hard-interrupt
/// context, and waits for it with this task (LKDTM's hrtimer and `wait_for_panic` loop).
fn wait_for_hardirq(waiting: &AtomicBool, callback: fn(usize)) {
    waiting.store(true, Ordering::SeqCst);
    let timer = time::add_timer_ns(100_000, callback, 0);
    while timer.is_some() && waiting.load(Ordering::SeqCst) {
        cpu::pause();
    }
    if let Some(timer) = timer {
        time::cancel(timer);
    }
}

static WAIT_FOR_PANIC: AtomicBool = AtomicBool::new(false);

fn panic_in_hardirq(_: usize) {
    crate::panic::panic(format_args!("from hard IRQ context"));
}

/// A timer callback panics in hard-interrupt context while this task waits.
pub fn lkdtm_PANIC_IN_HARDIRQ() {
    wait_for_hardirq(&WAIT_FOR_PANIC, panic_in_hardirq);
}

/// `BUG()`.
pub fn lkdtm_BUG() {
    crate::bug!();
}

static WAIT_FOR_BUG: AtomicBool = AtomicBool::new(false);

fn bug_in_hardirq(_: usize) {
    crate::bug!();
}

/// A timer callback hits `BUG()` in hard-interrupt context while this task waits.
pub fn lkdtm_BUG_IN_HARDIRQ() {
    wait_for_hardirq(&WAIT_FOR_BUG, bug_in_hardirq);
}

static WARN_COUNTER: AtomicI32 = AtomicI32::new(0);

/// `WARN_ON(++warn_counter)`.
pub fn lkdtm_WARNING() {
    crate::warn_on!(WARN_COUNTER.fetch_add(1, Ordering::Relaxed) + 1 != 0);
}

/// `WARN(1, "Warning message trigger count: %d\n", ++warn_counter)`.
pub fn lkdtm_WARNING_MESSAGE() {
    let count = WARN_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    crate::warn!(true, "Warning message trigger count: {}", count);
}

/// `*((volatile int *) 0) = 0`.
pub fn lkdtm_EXCEPTION() {
    // SAFETY: deliberately faults; the page-fault handler reports the oops and ends this task
    // (or panics), so the store never completes.
    unsafe { core::arch::asm!("mov dword ptr [0], 0", options(nostack)) };
}

/// `for (;;) ;`
pub fn lkdtm_LOOP() {
    loop {
        core::hint::spin_loop();
    }
}

/// An unaligned 32-bit store, which x86 simply does.
pub fn lkdtm_UNALIGNED_LOAD_STORE_WRITE() {
    let mut data = [1u8, 2, 3, 4, 5];
    let p = core::hint::black_box(data.as_mut_ptr().wrapping_add(1)).cast::<u32>();
    // SAFETY: bytes 1..5 of a 5-byte local array; unaligned access is explicit.
    unsafe {
        let value = if p.read_unaligned() == 0 { 0x8765_4321 } else { 0x1234_5678 };
        p.write_unaligned(value);
    }
    core::hint::black_box(data);
    lkdtm_err!("XFAIL: arch has CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS");
}

/// `preempt_disable(); for (;;) cpu_relax();`
pub fn lkdtm_SOFTLOCKUP() {
    preempt::disable();
    loop {
        cpu::pause();
    }
}

/// `local_irq_disable(); for (;;) cpu_relax();`
pub fn lkdtm_HARDLOCKUP() {
    irq::disable();
    loop {
        cpu::pause();
    }
}

/// Set by `__lkdtm_SMP_CALL_LOCKUP` if it ever returned.
static SMP_CALL_DONE: AtomicBool = AtomicBool::new(false);

fn __lkdtm_SMP_CALL_LOCKUP(_: usize) {
    loop {
        cpu::pause();
    }
}

/// `smp_call_function_single(target, spin, wait=1)` with preemption off: the target spins in
/// its call-function interrupt, this CPU waits for it for ever.
pub fn lkdtm_SMP_CALL_LOCKUP() {
    preempt::disable();
    let me = percpu::cpu_id();
    let target = (0..smp::possible_cpus()).find(|&c| c != me && percpu::of(c).online.load(Ordering::Relaxed));
    let Some(target) = target else {
        lkdtm_err!("FAIL: no other online CPUs");
        return preempt::enable();
    };
    SMP_CALL_DONE.store(false, Ordering::SeqCst);
    smp::call_on_cpu(target, __lkdtm_SMP_CALL_LOCKUP, 0);
    while !SMP_CALL_DONE.load(Ordering::SeqCst) {
        cpu::pause();
    }
    lkdtm_err!("FAIL: did not hang");
    preempt::enable();
}

static LOCK_ME_UP: SpinLock<()> = SpinLock::new(());

/// Takes `lock_me_up` and keeps it: the second run spins on it with preemption off.
pub fn lkdtm_SPINLOCKUP() {
    core::mem::forget(LOCK_ME_UP.lock());
}

/// `set_current_state(TASK_UNINTERRUPTIBLE); schedule(); BUG();`
pub fn lkdtm_HUNG_TASK() {
    sched::set_current_state(TASK_UNINTERRUPTIBLE);
    sched::schedule();
    crate::bug!();
}

/// `INT_MAX - 2`, read as C's `volatile unsigned int huge`.
static HUGE: AtomicU32 = AtomicU32::new(i32::MAX as u32 - 2);
static IGNORED: AtomicU32 = AtomicU32::new(0);

/// Two additions to an `int` holding `INT_MAX - 2`; the second overflows.
pub fn lkdtm_OVERFLOW_SIGNED() {
    let mut value = HUGE.load(Ordering::Relaxed) as i32;
    lkdtm_info!("Normal signed addition ...");
    value = ubsan::add_i32(value, 1, ubsan_here!());
    IGNORED.store(value as u32, Ordering::Relaxed);
    lkdtm_info!("Overflowing signed addition ...");
    value = ubsan::add_i32(value, 4, ubsan_here!());
    IGNORED.store(value as u32, Ordering::Relaxed);
}

/// The same in an `unsigned int`, where it fits.
pub fn lkdtm_OVERFLOW_UNSIGNED() {
    let mut value = HUGE.load(Ordering::Relaxed);
    lkdtm_info!("Normal unsigned addition ...");
    value = ubsan::add_u32(value, 1, ubsan_here!());
    IGNORED.store(value, Ordering::Relaxed);
    lkdtm_info!("Overflowing unsigned addition ...");
    value = ubsan::add_u32(value, 4, ubsan_here!());
    IGNORED.store(value, Ordering::Relaxed);
}

/// Linux's `struct array_bounds_flex_array`: the trailing array is unchecked.
#[repr(C)]
struct ArrayBoundsFlexArray {
    one: i32,
    two: i32,
    data: [u8; 0],
}

/// Linux's `struct array_bounds`.
#[repr(C)]
struct ArrayBounds {
    one: i32,
    two: i32,
    data: [u8; 8],
    three: i32,
}

/// Writes `data[0..=8]` of a `char data[8]` member: index 8 is out of bounds.
pub fn lkdtm_ARRAY_BOUNDS() {
    let flex_size = core::mem::size_of::<ArrayBoundsFlexArray>() * 2;
    let checked_size = core::mem::size_of::<ArrayBounds>() * 2;
    let not_checked = mm::slab::kmalloc(flex_size);
    let checked = mm::slab::kmalloc(checked_size);
    if not_checked.is_null() || checked.is_null() {
        mm::slab::kfree(not_checked, flex_size);
        return mm::slab::kfree(checked, checked_size);
    }
    let data = core::mem::offset_of!(ArrayBounds, data);
    let flex = core::mem::offset_of!(ArrayBoundsFlexArray, data);
    lkdtm_info!("Array access within bounds ...");
    for i in 0..8 {
        ubsan::check_index(i, 8, "'char [8]'", ubsan_here!());
        // SAFETY: inside the first `ArrayBounds` of the allocation.
        unsafe { checked.add(data + i).write_volatile(b'A') };
    }
    for i in 0..2 {
        // SAFETY: the flexible array's first bytes lie inside the allocation (two structs).
        unsafe { not_checked.add(flex + i).write_volatile(b'A') };
    }
    lkdtm_info!("Array access beyond bounds ...");
    for i in 0..9 {
        ubsan::check_index(i, 8, "'char [8]'", ubsan_here!());
        // SAFETY: index 8 is past `data` but inside the struct (its `three`), as in C.
        unsafe { checked.add(data + i).write_volatile(b'B') };
    }
    mm::slab::kfree(not_checked, flex_size);
    mm::slab::kfree(checked, checked_size);
    lkdtm_err!("FAIL: survived array bounds overflow!");
    expected_without("CONFIG_UBSAN_TRAP");
}

/// `list_add()` after the head's `next` was redirected to a two-pointer target: the list
/// hardening must BUG before the write.
pub fn lkdtm_CORRUPT_LIST_ADD() {
    let mut test_head = ListHead::new();
    let mut good = ListHead::new();
    let mut bad = ListHead::new();
    let mut target: [*mut ListHead; 2] = [null_mut(); 2];
    let head = core::hint::black_box(&mut test_head as *mut ListHead);
    let redirection = core::hint::black_box(&mut target as *mut _ as *mut ListHead);
    // SAFETY: every node is a live local of this frame; the corrupted link points at `target`,
    // laid out as a node.
    unsafe {
        list::init(head);
        lkdtm_info!("attempting good list addition");
        list::list_add(&mut good, head);
        lkdtm_info!("attempting corrupted list addition");
        (*head).next = redirection;
        list::list_add(&mut bad, head);
    }
    report_overwrite(core::hint::black_box(&target), "list_add()");
}

/// `list_del()` of an entry whose `next` was redirected.
pub fn lkdtm_CORRUPT_LIST_DEL() {
    let mut test_head = ListHead::new();
    let mut item = ListHead::new();
    let mut target: [*mut ListHead; 2] = [null_mut(); 2];
    let head = core::hint::black_box(&mut test_head as *mut ListHead);
    let entry = core::hint::black_box(&mut item as *mut ListHead);
    let redirection = core::hint::black_box(&mut target as *mut _ as *mut ListHead);
    // SAFETY: as in `lkdtm_CORRUPT_LIST_ADD`.
    unsafe {
        list::init(head);
        list::list_add(entry, head);
        lkdtm_info!("attempting good list removal");
        list::list_del(entry);
        lkdtm_info!("attempting corrupted list removal");
        list::list_add(entry, head);
        (*entry).next = redirection;
        list::list_del(entry);
    }
    report_overwrite(core::hint::black_box(&target), "list_del()");
}

/// What LKDTM says when a corrupted list operation was not stopped.
fn report_overwrite(target: &[*mut ListHead; 2], operation: &str) {
    if target.iter().all(|p| p.is_null()) {
        lkdtm_err!("Overwrite did not happen, but no BUG?!");
    } else {
        lkdtm_err!("{} corruption not detected!", operation);
        lkdtm_err!("Unexpected! This {} was built with CONFIG_LIST_HARDENED=y", super::KERNEL_INFO);
    }
}
