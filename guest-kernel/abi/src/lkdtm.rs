//! LKDTM, Linux's kernel dump test module (`drivers/misc/lkdtm/`), as the guest implements it:
//! every crash type and crash point under LKDTM's names, which ones this kernel supports (and
//! why not the others), and for each supported type the outcome a harness can assert on — the
//! line Linux prints for it, what catches it, and when it panics.
//!
//! The guest runs the types (`/sys/kernel/debug/provoke-crash/<CPOINT>`, the boot parameters
//! `lkdtm.cpoint_name= lkdtm.cpoint_type= lkdtm.cpoint_count=`, and the control channel's
//! `inject lkdtm=<TYPE>`); the host serves this table. The outcomes describe a type run in task
//! context (the `DIRECT` crash point) under the default sysctls; [`Outcome::panics_in`] gives
//! the rule for interrupt context, where every oops panics.
//!
//! ```
//! use crashvisor_abi::lkdtm::{Catcher, Context, CrashPoint, CrashType, Panics, Support};
//!
//! let bug = CrashType::from_name("BUG").unwrap();
//! let Support::Supported(outcome) = bug.support() else { unreachable!() };
//! assert_eq!(outcome.caught_by, Catcher::Bug);
//! assert_eq!(outcome.panics, Panics::OnOops);
//! assert_eq!(outcome.panics_in(Context::Hardirq), Panics::Always);
//! assert!(matches!(CrashType::from_name("USERCOPY_KERNEL").unwrap().support(), Support::Unsupported(_)));
//! assert_eq!(CrashPoint::from_name("INT_HARDWARE_ENTRY").unwrap().context(), Some(Context::Hardirq));
//! ```

use crate::platform::Detector;

/// LKDTM's `DEFAULT_COUNT`: a crash point fires on its 10th hit unless `cpoint_count` says
/// otherwise.
pub const DEFAULT_CPOINT_COUNT: i32 = 10;

/// The directory of the crash-point files (`echo TYPE > .../DIRECT`).
pub const DEBUGFS_DIR: &str = "/sys/kernel/debug/provoke-crash";

/// The source file of LKDTM a crash type comes from (its `crashtype_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// `bugs.c`: panics, BUG/WARN, lockups, stacks, lists, UBSAN.
    Bugs,
    /// `heap.c`: slab and page allocator misuse.
    Heap,
    /// `perms.c`: memory permissions (W^X, read-only data, NULL).
    Perms,
    /// `refcount.c`: `refcount_t` saturation.
    Refcount,
    /// `usercopy.c`: hardened user copies.
    Usercopy,
    /// `kstack_erase.c`: stack erasing on return to user space.
    Stackleak,
    /// `cfi.c`: control-flow integrity.
    Cfi,
    /// `fortify.c`: `FORTIFY_SOURCE` string functions.
    Fortify,
    /// `powerpc.c`.
    Powerpc,
}

impl Category {
    /// The category's name (the source file without `.c`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bugs => "bugs",
            Self::Heap => "heap",
            Self::Perms => "perms",
            Self::Refcount => "refcount",
            Self::Usercopy => "usercopy",
            Self::Stackleak => "kstack_erase",
            Self::Cfi => "cfi",
            Self::Fortify => "fortify",
            Self::Powerpc => "powerpc",
        }
    }
}

/// What catches a crash type (the kernel mechanism that reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Catcher {
    /// A direct `panic()` call.
    Panic,
    /// `BUG()`: an invalid-opcode oops naming the source line.
    Bug,
    /// `WARN()`: a warning with a backtrace; the task carries on.
    Warn,
    /// The page-fault handler's oops (`BUG: unable to handle page fault ...`).
    PageFault,
    /// The guard page below a task's stack (`BUG: TASK stack guard page was hit ...`).
    StackGuard,
    /// The double-fault handler.
    DoubleFault,
    /// The stack protector's canary check (`__stack_chk_fail`).
    StackProtector,
    /// UBSAN's overflow and bounds checks.
    Ubsan,
    /// The linked-list integrity checks (`CONFIG_LIST_HARDENED` with
    /// `CONFIG_BUG_ON_DATA_CORRUPTION`).
    ListDebug,
    /// The slab allocator's always-on hardening (`CONFIG_SLAB_FREELIST_HARDENED`).
    SlabHardened,
    /// The slab allocator's debug checks (`slab_debug=`).
    SlabDebug,
    /// The soft-lockup detector.
    Softlockup,
    /// The hard-lockup detector.
    Hardlockup,
    /// The hung-task detector.
    HungTask,
    /// Nothing: the type runs and LKDTM says so (an `XFAIL`, a `FAIL`, or plain information).
    Nothing,
}

impl Catcher {
    /// The catcher's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Bug => "bug",
            Self::Warn => "warn",
            Self::PageFault => "page_fault",
            Self::StackGuard => "stack_guard",
            Self::DoubleFault => "double_fault",
            Self::StackProtector => "stack_protector",
            Self::Ubsan => "ubsan",
            Self::ListDebug => "list_debug",
            Self::SlabHardened => "slab_freelist_hardened",
            Self::SlabDebug => "slab_debug",
            Self::Softlockup => "softlockup",
            Self::Hardlockup => "hardlockup",
            Self::HungTask => "hung_task",
            Self::Nothing => "none",
        }
    }
}

/// When a crash type panics the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Panics {
    /// Always.
    Always,
    /// With `kernel.panic_on_oops=1` (an oops in task context otherwise kills the task).
    OnOops,
    /// With `kernel.panic_on_warn=1`.
    OnWarn,
    /// With `kernel.softlockup_panic=1`.
    OnSoftlockup,
    /// With `kernel.hardlockup_panic=1`.
    OnHardlockup,
    /// With `kernel.hung_task_panic=1`.
    OnHungTask,
    /// Never.
    Never,
}

impl Panics {
    /// The stable name: `always`, `never`, or the sysctl that makes it panic.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnOops => "panic_on_oops",
            Self::OnWarn => "panic_on_warn",
            Self::OnSoftlockup => "softlockup_panic",
            Self::OnHardlockup => "hardlockup_panic",
            Self::OnHungTask => "hung_task_panic",
            Self::Never => "never",
        }
    }
}

/// Where a crash type runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// A task (`DIRECT`, `TIMERADD` from a task).
    Task,
    /// A hardware interrupt handler, interrupts off.
    Hardirq,
}

impl Context {
    /// `task` or `hardirq`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Hardirq => "hardirq",
        }
    }
}

/// What a supported crash type leads to, run in task context with the default sysctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Text of the kernel log line that shows it was caught, as Linux prints it: the line
    /// (after its timestamp) contains it, and for most types starts with it.
    pub message: &'static str,
    /// What catches it.
    pub caught_by: Catcher,
    /// When it panics.
    pub panics: Panics,
    /// The crash reason's detector when it panics.
    pub detector: Option<Detector>,
    /// Boot parameters the catch needs (as in Linux, where they are off by default).
    pub requires: Option<&'static str>,
}

impl Outcome {
    /// When the type panics if run in `context`: in a hardware interrupt every oops is fatal
    /// (Linux's `oops_end`: `Fatal exception in interrupt`).
    pub fn panics_in(&self, context: Context) -> Panics {
        match (context, self.panics) {
            (Context::Hardirq, Panics::OnOops) => Panics::Always,
            (_, panics) => panics,
        }
    }
}

/// Whether this kernel runs a crash type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// It runs, with this outcome.
    Supported(Outcome),
    /// It means nothing in this kernel, for this reason.
    Unsupported(&'static str),
}

const fn caught(message: &'static str, caught_by: Catcher, panics: Panics, detector: Option<Detector>) -> Support {
    Support::Supported(Outcome { message, caught_by, panics, detector, requires: None })
}

const fn needs(
    message: &'static str,
    caught_by: Catcher,
    panics: Panics,
    detector: Option<Detector>,
    requires: &'static str,
) -> Support {
    Support::Supported(Outcome { message, caught_by, panics, detector, requires: Some(requires) })
}

const fn runs(message: &'static str) -> Support {
    Support::Supported(Outcome {
        message,
        caught_by: Catcher::Nothing,
        panics: Panics::Never,
        detector: None,
        requires: None,
    })
}

const fn oops(message: &'static str, caught_by: Catcher, detector: Detector) -> Support {
    caught(message, caught_by, Panics::OnOops, Some(detector))
}

const NULL_DEREFERENCE: &str = "BUG: kernel NULL pointer dereference, address: 0000000000000000";
const PAGE_FAULT: &str = "BUG: unable to handle page fault for address: ";
const KERNEL_BUG: &str = "kernel BUG at ";
const SOFT_LOCKUP: &str = "watchdog: BUG: soft lockup - CPU#";
const GUARD_PAGE: &str = "BUG: TASK stack guard page was hit at ";
const STACK_PROTECTOR: &str = "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: ";
const NO_USER_SPACE: &str = "there is no user space: every task is a kernel thread";
const NO_REFCOUNT: &str = "the kernel has no refcount_t";
const NO_FORTIFY: &str = "no FORTIFY_SOURCE: the kernel has no C string functions to fortify";
const NO_INIT_ON: &str = "no init_on_alloc/init_on_free: the guest never fills memory it hands out or frees \
                          (every instruction may be emulated, DESIGN.md)";
const NO_PAGE_POISON: &str = "freed pages are not poisoned (no page_poison=/init_on_free=): the write would \
                              corrupt the page's next owner undetected";

/// Defines `CrashType` (with `names!`) and its categories and support.
macro_rules! crash_types {
    ($($(#[$meta:meta])* $variant:ident = $name:literal, $category:ident, $support:expr;)*) => {
        names! {
            /// An LKDTM crash type (`cpoint_type`), named as in Linux.
            #[allow(non_camel_case_types)]
            CrashType { $($(#[$meta])* $variant = $name,)* }
        }

        impl CrashType {
            /// The LKDTM source file it comes from.
            pub fn category(self) -> Category {
                match self {
                    $(Self::$variant => Category::$category,)*
                }
            }

            /// Whether and how this kernel runs it.
            pub fn support(self) -> Support {
                match self {
                    $(Self::$variant => $support,)*
                }
            }
        }
    };
}

crash_types! {
    /// `panic("dumptest")`.
    PANIC = "PANIC", Bugs, caught("Kernel panic - not syncing: dumptest", Catcher::Panic, Panics::Always, Some(Detector::None));
    /// Every CPU spins with interrupts off; the last one panics, so the others can only be
    /// stopped by NMI.
    PANIC_STOP_IRQOFF = "PANIC_STOP_IRQOFF", Bugs,
        caught("Kernel panic - not syncing: panic stop irqoff test", Catcher::Panic, Panics::Always, Some(Detector::None));
    /// A timer callback panics in hard-interrupt context.
    PANIC_IN_HARDIRQ = "PANIC_IN_HARDIRQ", Bugs,
        caught("Kernel panic - not syncing: from hard IRQ context", Catcher::Panic, Panics::Always, Some(Detector::None));
    /// `BUG()`.
    BUG = "BUG", Bugs, oops(KERNEL_BUG, Catcher::Bug, Detector::Bug);
    /// `BUG()` in a timer callback: an oops in interrupt context panics.
    BUG_IN_HARDIRQ = "BUG_IN_HARDIRQ", Bugs, caught(KERNEL_BUG, Catcher::Bug, Panics::Always, Some(Detector::Bug));
    /// `WARN_ON(1)`.
    WARNING = "WARNING", Bugs, caught("WARNING: ", Catcher::Warn, Panics::OnWarn, Some(Detector::Warn));
    /// `WARN(1, "Warning message trigger count: %d\n", ...)`.
    WARNING_MESSAGE = "WARNING_MESSAGE", Bugs,
        caught("Warning message trigger count: ", Catcher::Warn, Panics::OnWarn, Some(Detector::Warn));
    /// A write to address 0.
    EXCEPTION = "EXCEPTION", Bugs, oops(NULL_DEREFERENCE, Catcher::PageFault, Detector::Oops);
    /// An endless loop. The kernel is fully preemptible (`PREEMPT(full)`), so nothing catches it.
    LOOP = "LOOP", Bugs, runs("lkdtm: Performing direct entry LOOP");
    /// Recursion with 1 KiB frames past the 16 KiB stack: the guard page below it.
    EXHAUST_STACK = "EXHAUST_STACK", Bugs,
        caught(GUARD_PAGE, Catcher::StackGuard, Panics::Always, Some(Detector::StackOverflow));
    /// A 64-byte write over an 8-byte array: the stack canary.
    CORRUPT_STACK = "CORRUPT_STACK", Bugs, caught(STACK_PROTECTOR, Catcher::StackProtector, Panics::Always, Some(Detector::None));
    /// The same over a union (a canary only with `-fstack-protector-strong`, which the kernel
    /// has for these functions).
    CORRUPT_STACK_STRONG = "CORRUPT_STACK_STRONG", Bugs,
        caught(STACK_PROTECTOR, Catcher::StackProtector, Panics::Always, Some(Detector::None));
    /// The stack offset of a local; without `randomize_kstack_offset` it is 0.
    REPORT_STACK = "REPORT_STACK", Bugs, runs("lkdtm: Stack offset: ");
    /// Locates the per-task canary next to a stack array.
    REPORT_STACK_CANARY = "REPORT_STACK_CANARY", Bugs,
        Support::Unsupported("no per-task stack canary: only CORRUPT_STACK's functions carry a (global) one");
    /// An unaligned 32-bit store; x86 handles it (`XFAIL`).
    UNALIGNED_LOAD_STORE_WRITE = "UNALIGNED_LOAD_STORE_WRITE", Bugs,
        runs("lkdtm: XFAIL: arch has CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS");
    /// A spin with preemption off.
    SOFTLOCKUP = "SOFTLOCKUP", Bugs, caught(SOFT_LOCKUP, Catcher::Softlockup, Panics::OnSoftlockup, Some(Detector::SoftLockup));
    /// A spin with interrupts off.
    HARDLOCKUP = "HARDLOCKUP", Bugs,
        caught("Watchdog detected hard LOCKUP on cpu ", Catcher::Hardlockup, Panics::OnHardlockup, Some(Detector::HardLockup));
    /// Another CPU spins forever in a function call IPI (interrupts off) while this one waits
    /// for it with preemption off.
    SMP_CALL_LOCKUP = "SMP_CALL_LOCKUP", Bugs,
        caught("Watchdog detected hard LOCKUP on cpu ", Catcher::Hardlockup, Panics::OnHardlockup, Some(Detector::HardLockup));
    /// Takes a spinlock and keeps it; the second run spins on it with preemption off.
    SPINLOCKUP = "SPINLOCKUP", Bugs, caught(SOFT_LOCKUP, Catcher::Softlockup, Panics::OnSoftlockup, Some(Detector::SoftLockup));
    /// An uninterruptible sleep nothing ends.
    HUNG_TASK = "HUNG_TASK", Bugs, caught("INFO: task ", Catcher::HungTask, Panics::OnHungTask, Some(Detector::HungTask));
    /// `INT_MAX - 2 + 1 + 4` in an `int`.
    OVERFLOW_SIGNED = "OVERFLOW_SIGNED", Bugs,
        caught("UBSAN: signed-integer-overflow in ", Catcher::Ubsan, Panics::OnWarn, Some(Detector::Warn));
    /// `INT_MAX - 2 + 1 + 4` in an `unsigned int`: it fits, so Linux's own test never overflows
    /// and nothing reports it.
    OVERFLOW_UNSIGNED = "OVERFLOW_UNSIGNED", Bugs, runs("lkdtm: Overflowing unsigned addition ...");
    /// Index 8 of a `char [8]`.
    ARRAY_BOUNDS = "ARRAY_BOUNDS", Bugs,
        caught("UBSAN: array-index-out-of-bounds in ", Catcher::Ubsan, Panics::OnWarn, Some(Detector::Warn));
    /// A flexible array member past its `__counted_by` count.
    FAM_BOUNDS = "FAM_BOUNDS", Bugs,
        Support::Unsupported("needs C's __counted_by flexible arrays; Rust has none");
    /// A pointer member past its `__counted_by_ptr` count.
    PTR_BOUNDS = "PTR_BOUNDS", Bugs,
        Support::Unsupported("needs C's __counted_by_ptr pointers; Rust has none");
    /// `list_add()` with a corrupted `next`.
    CORRUPT_LIST_ADD = "CORRUPT_LIST_ADD", Bugs,
        oops("list_add corruption. next->prev should be prev (", Catcher::ListDebug, Detector::Bug);
    /// `list_del()` of an entry with a corrupted `next`.
    CORRUPT_LIST_DEL = "CORRUPT_LIST_DEL", Bugs,
        oops("list_del corruption. next->prev should be ", Catcher::ListDebug, Detector::Bug);
    /// A read of the byte below the task's stack.
    STACK_GUARD_PAGE_LEADING = "STACK_GUARD_PAGE_LEADING", Bugs,
        oops(GUARD_PAGE, Catcher::StackGuard, Detector::StackOverflow);
    /// A read of the byte above the task's stack.
    STACK_GUARD_PAGE_TRAILING = "STACK_GUARD_PAGE_TRAILING", Bugs, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Clears CR4.SMEP and checks it is pinned.
    UNSET_SMEP = "UNSET_SMEP", Bugs,
        Support::Unsupported("there is no user space, so the kernel does not turn SMEP on or pin CR4");
    /// A double fault. Linux's way needs a 32-bit stack segment (on x86_64 it prints `XFAIL:
    /// this test is ia32-only`); here a page fault with the stack pointer on an unmapped page
    /// cannot be delivered, which is the 64-bit double fault.
    DOUBLE_FAULT = "DOUBLE_FAULT", Bugs,
        caught("PANIC: double fault, error_code: 0x0", Catcher::DoubleFault, Panics::Always, Some(Detector::Oops));
    /// arm64 pointer authentication.
    CORRUPT_PAC = "CORRUPT_PAC", Bugs, Support::Unsupported("arm64 pointer authentication; this is x86_64");
    /// A faulting EFI runtime service.
    EFI_RUNTIME_CRASH = "EFI_RUNTIME_CRASH", Bugs, Support::Unsupported("the guest boots by PVH and has no EFI runtime");

    /// A write one past a 1020-byte allocation, into the next 1 KiB slab object.
    SLAB_LINEAR_OVERFLOW = "SLAB_LINEAR_OVERFLOW", Heap,
        needs("BUG kmalloc-1k (", Catcher::SlabDebug, Panics::Never, None, "slab_debug=Z (or slub_debug=Z)");
    /// A write one past a one-page vmalloc area: its guard page.
    VMALLOC_LINEAR_OVERFLOW = "VMALLOC_LINEAR_OVERFLOW", Heap, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// A write into a freed 1 KiB object, noticed when it is allocated again.
    WRITE_AFTER_FREE = "WRITE_AFTER_FREE", Heap,
        needs("BUG kmalloc-1k (", Catcher::SlabDebug, Panics::Never, None, "slab_debug=P (or slub_debug=P)");
    /// A read from a freed 1 KiB object, which poisoning has overwritten.
    READ_AFTER_FREE = "READ_AFTER_FREE", Heap,
        needs("lkdtm: Memory correctly poisoned (", Catcher::SlabDebug, Panics::Never, None, "slab_debug=P (or slub_debug=P)");
    /// KFENCE's sampled use-after-free detection.
    KFENCE_READ_AFTER_FREE = "KFENCE_READ_AFTER_FREE", Heap, Support::Unsupported("the kernel has no KFENCE");
    /// A write into a freed page.
    WRITE_BUDDY_AFTER_FREE = "WRITE_BUDDY_AFTER_FREE", Heap, Support::Unsupported(NO_PAGE_POISON);
    /// A read from a freed page, which poisoning would have overwritten.
    READ_BUDDY_AFTER_FREE = "READ_BUDDY_AFTER_FREE", Heap, Support::Unsupported(NO_PAGE_POISON);
    /// A reallocated slab object is zeroed.
    SLAB_INIT_ON_ALLOC = "SLAB_INIT_ON_ALLOC", Heap, Support::Unsupported(NO_INIT_ON);
    /// A reallocated page is zeroed.
    BUDDY_INIT_ON_ALLOC = "BUDDY_INIT_ON_ALLOC", Heap, Support::Unsupported(NO_INIT_ON);
    /// `kmem_cache_free()` twice in a row.
    SLAB_FREE_DOUBLE = "SLAB_FREE_DOUBLE", Heap, oops(KERNEL_BUG, Catcher::SlabHardened, Detector::Bug);
    /// `kmem_cache_free()` into the wrong cache.
    SLAB_FREE_CROSS = "SLAB_FREE_CROSS", Heap,
        caught("cache_from_obj: Wrong slab cache. lkdtm-heap-b but object is from lkdtm-heap-a",
               Catcher::SlabHardened, Panics::OnWarn, Some(Detector::Warn));
    /// `kmem_cache_free()` of a page that is not a slab.
    SLAB_FREE_PAGE = "SLAB_FREE_PAGE", Heap,
        caught("virt_to_cache: Object is not a Slab page!", Catcher::SlabHardened, Panics::OnWarn, Some(Detector::Warn));

    /// A write to `.rodata`.
    WRITE_RO = "WRITE_RO", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// A write to a `__ro_after_init` variable once init is over.
    WRITE_RO_AFTER_INIT = "WRITE_RO_AFTER_INIT", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// A write to kernel text.
    WRITE_KERN = "WRITE_KERN", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// A write to a function descriptor; x86_64 has none (`XFAIL`).
    WRITE_OPD = "WRITE_OPD", Perms, runs("lkdtm: XFAIL: Platform doesn't use function descriptors.");
    /// Executes code copied into `.data`.
    EXEC_DATA = "EXEC_DATA", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Executes code copied onto the stack.
    EXEC_STACK = "EXEC_STACK", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Executes code copied into a slab object.
    EXEC_KMALLOC = "EXEC_KMALLOC", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Executes code copied into a vmalloc area.
    EXEC_VMALLOC = "EXEC_VMALLOC", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Executes a function placed in `.rodata`.
    EXEC_RODATA = "EXEC_RODATA", Perms, oops(PAGE_FAULT, Catcher::PageFault, Detector::Oops);
    /// Executes user memory.
    EXEC_USERSPACE = "EXEC_USERSPACE", Perms, Support::Unsupported(NO_USER_SPACE);
    /// Calls address 0.
    EXEC_NULL = "EXEC_NULL", Perms, oops(NULL_DEREFERENCE, Catcher::PageFault, Detector::Oops);
    /// Reads user memory.
    ACCESS_USERSPACE = "ACCESS_USERSPACE", Perms, Support::Unsupported(NO_USER_SPACE);
    /// Reads address 0.
    ACCESS_NULL = "ACCESS_NULL", Perms, oops(NULL_DEREFERENCE, Catcher::PageFault, Detector::Oops);

    /// `refcount_inc()` past `INT_MAX`.
    REFCOUNT_INC_OVERFLOW = "REFCOUNT_INC_OVERFLOW", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_add()` past `INT_MAX`.
    REFCOUNT_ADD_OVERFLOW = "REFCOUNT_ADD_OVERFLOW", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_inc_not_zero()` past `INT_MAX`.
    REFCOUNT_INC_NOT_ZERO_OVERFLOW = "REFCOUNT_INC_NOT_ZERO_OVERFLOW", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_add_not_zero()` past `INT_MAX`.
    REFCOUNT_ADD_NOT_ZERO_OVERFLOW = "REFCOUNT_ADD_NOT_ZERO_OVERFLOW", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_dec()` to zero.
    REFCOUNT_DEC_ZERO = "REFCOUNT_DEC_ZERO", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_dec()` below zero.
    REFCOUNT_DEC_NEGATIVE = "REFCOUNT_DEC_NEGATIVE", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_dec_and_test()` below zero.
    REFCOUNT_DEC_AND_TEST_NEGATIVE = "REFCOUNT_DEC_AND_TEST_NEGATIVE", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_sub_and_test()` below zero.
    REFCOUNT_SUB_AND_TEST_NEGATIVE = "REFCOUNT_SUB_AND_TEST_NEGATIVE", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_sub_and_test()` to zero.
    REFCOUNT_SUB_AND_TEST_ZERO = "REFCOUNT_SUB_AND_TEST_ZERO", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_inc()` from zero.
    REFCOUNT_INC_ZERO = "REFCOUNT_INC_ZERO", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_add()` from zero.
    REFCOUNT_ADD_ZERO = "REFCOUNT_ADD_ZERO", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_inc()` of a saturated count.
    REFCOUNT_INC_SATURATED = "REFCOUNT_INC_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_dec()` of a saturated count.
    REFCOUNT_DEC_SATURATED = "REFCOUNT_DEC_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_add()` of a saturated count.
    REFCOUNT_ADD_SATURATED = "REFCOUNT_ADD_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_inc_not_zero()` of a saturated count.
    REFCOUNT_INC_NOT_ZERO_SATURATED = "REFCOUNT_INC_NOT_ZERO_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_add_not_zero()` of a saturated count.
    REFCOUNT_ADD_NOT_ZERO_SATURATED = "REFCOUNT_ADD_NOT_ZERO_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_dec_and_test()` of a saturated count.
    REFCOUNT_DEC_AND_TEST_SATURATED = "REFCOUNT_DEC_AND_TEST_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// `refcount_sub_and_test()` of a saturated count.
    REFCOUNT_SUB_AND_TEST_SATURATED = "REFCOUNT_SUB_AND_TEST_SATURATED", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// Times `atomic_t` increments.
    ATOMIC_TIMING = "ATOMIC_TIMING", Refcount, Support::Unsupported(NO_REFCOUNT);
    /// Times `refcount_t` increments.
    REFCOUNT_TIMING = "REFCOUNT_TIMING", Refcount, Support::Unsupported(NO_REFCOUNT);

    /// Copies past a slab object to user space.
    USERCOPY_SLAB_SIZE_TO = "USERCOPY_SLAB_SIZE_TO", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies past a slab object from user space.
    USERCOPY_SLAB_SIZE_FROM = "USERCOPY_SLAB_SIZE_FROM", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies outside a slab's usercopy whitelist to user space.
    USERCOPY_SLAB_WHITELIST_TO = "USERCOPY_SLAB_WHITELIST_TO", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies outside a slab's usercopy whitelist from user space.
    USERCOPY_SLAB_WHITELIST_FROM = "USERCOPY_SLAB_WHITELIST_FROM", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies a dead stack frame to user space.
    USERCOPY_STACK_FRAME_TO = "USERCOPY_STACK_FRAME_TO", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies into a dead stack frame from user space.
    USERCOPY_STACK_FRAME_FROM = "USERCOPY_STACK_FRAME_FROM", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies past the stack to user space.
    USERCOPY_STACK_BEYOND = "USERCOPY_STACK_BEYOND", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies past a vmalloc area to user space.
    USERCOPY_VMALLOC = "USERCOPY_VMALLOC", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies past a folio to user space.
    USERCOPY_FOLIO = "USERCOPY_FOLIO", Usercopy, Support::Unsupported(NO_USER_SPACE);
    /// Copies kernel text to user space.
    USERCOPY_KERNEL = "USERCOPY_KERNEL", Usercopy, Support::Unsupported(NO_USER_SPACE);

    /// Checks the stack was erased on the way back to user space.
    KSTACK_ERASE = "KSTACK_ERASE", Stackleak, Support::Unsupported(NO_USER_SPACE);

    /// An indirect call through a mismatched prototype.
    CFI_FORWARD_PROTO = "CFI_FORWARD_PROTO", Cfi, Support::Unsupported("the kernel is built without kCFI");
    /// A corrupted return address under a shadow stack or PAC.
    CFI_BACKWARD = "CFI_BACKWARD", Cfi, Support::Unsupported("no shadow call stack or pointer authentication on x86_64");

    /// `strcpy()` past an object.
    FORTIFY_STR_OBJECT = "FORTIFY_STR_OBJECT", Fortify, Support::Unsupported(NO_FORTIFY);
    /// `strcpy()` past a member.
    FORTIFY_STR_MEMBER = "FORTIFY_STR_MEMBER", Fortify, Support::Unsupported(NO_FORTIFY);
    /// `memcpy()` past an object.
    FORTIFY_MEM_OBJECT = "FORTIFY_MEM_OBJECT", Fortify, Support::Unsupported(NO_FORTIFY);
    /// `memcpy()` past a member.
    FORTIFY_MEM_MEMBER = "FORTIFY_MEM_MEMBER", Fortify, Support::Unsupported(NO_FORTIFY);
    /// `strscpy()` past its destination.
    FORTIFY_STRSCPY = "FORTIFY_STRSCPY", Fortify, Support::Unsupported(NO_FORTIFY);

    /// A powerpc SLB multi-hit.
    PPC_SLB_MULTIHIT = "PPC_SLB_MULTIHIT", Powerpc, Support::Unsupported("powerpc only");
}

impl CrashType {
    /// Every crash type this kernel runs, in LKDTM's order (what `cat .../DIRECT` lists).
    pub fn supported() -> impl Iterator<Item = Self> {
        Self::ALL.iter().copied().filter(|t| matches!(t.support(), Support::Supported(_)))
    }

    /// The outcome of a supported type.
    pub fn outcome(self) -> Option<Outcome> {
        match self.support() {
            Support::Supported(outcome) => Some(outcome),
            Support::Unsupported(_) => None,
        }
    }
}

/// Defines `CrashPoint` (with `names!`) and its Linux functions and counterparts.
macro_rules! crash_points {
    ($($(#[$meta:meta])* $variant:ident = $name:literal, $linux:expr, $ours:expr;)*) => {
        names! {
            /// An LKDTM crash point (`cpoint_name`, a file under [`DEBUGFS_DIR`]): where a crash
            /// type runs.
            CrashPoint { $($(#[$meta])* $variant = $name,)* }
        }

        impl CrashPoint {
            /// The Linux function LKDTM puts its kprobe on (`None` for `DIRECT`).
            pub fn linux_function(self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => $linux,)*
                }
            }

            /// This kernel's counterpart, or why there is none.
            pub fn counterpart(self) -> Result<Counterpart, &'static str> {
                match self {
                    $(Self::$variant => $ours,)*
                }
            }
        }
    };
}

/// Where a supported crash point is in this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counterpart {
    /// What hits it.
    pub hit_by: &'static str,
    /// The context the crash type then runs in (`None`: the caller's, task or interrupt).
    pub context: Option<Context>,
}

const fn at(hit_by: &'static str, context: Option<Context>) -> Result<Counterpart, &'static str> {
    Ok(Counterpart { hit_by, context })
}

crash_points! {
    /// At once, in the writer's task.
    Direct = "DIRECT", None, at("the write to the file itself", Some(Context::Task));
    /// Entry of every hardware interrupt (Linux's `do_IRQ`; ours is `interrupt_dispatch`).
    IntHardwareEntry = "INT_HARDWARE_ENTRY", Some("do_IRQ"),
        at("every hardware interrupt: local timer, IPIs, the UARTs (interrupt_dispatch)", Some(Context::Hardirq));
    /// A device's interrupt handler (Linux's `handle_irq_event`).
    IntHwIrqEn = "INT_HW_IRQ_EN", Some("handle_irq_event"),
        at("the UART interrupt handlers: console input on COM1, the control channel on COM2", Some(Context::Hardirq));
    /// Deferred interrupt work (Linux's `tasklet_action`). The kernel has no softirqs; its
    /// deferred work is the timer callbacks, run from the timer interrupt.
    IntTaskletEntry = "INT_TASKLET_ENTRY", Some("tasklet_action"),
        at("every timer callback (watchdog kicks, sleeps, time slices), from the timer interrupt", Some(Context::Hardirq));
    /// Block I/O submission.
    FsSubmitBh = "FS_SUBMIT_BH", Some("submit_bh"), Err("there is no block layer");
    /// Page reclaim.
    MemSwapout = "MEM_SWAPOUT", Some("shrink_inactive_list"), Err("there is no page reclaim or swap");
    /// Arming a timer (Linux's `hrtimer_start`).
    Timeradd = "TIMERADD", Some("hrtimer_start"), at("arming a timer (time::add_timer), in the caller's context", None);
    /// SCSI command submission.
    ScsiQueueRq = "SCSI_QUEUE_RQ", Some("scsi_queue_rq"), Err("there is no SCSI layer");
}

impl CrashPoint {
    /// The context a crash type runs in at this point, when it is fixed.
    pub fn context(self) -> Option<Context> {
        self.counterpart().ok().and_then(|c| c.context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for (i, t) in CrashType::ALL.iter().enumerate() {
            assert_eq!(CrashType::from_name(t.as_str()), Some(*t));
            assert!(CrashType::ALL[..i].iter().all(|u| u.as_str() != t.as_str()), "{t} twice");
        }
        for p in CrashPoint::ALL {
            assert_eq!(CrashPoint::from_name(p.as_str()), Some(*p));
        }
        assert_eq!(CrashType::from_name("panic"), None, "names are upper case, as in Linux");
        assert_eq!(CrashPoint::from_name("direct"), None);
    }

    #[test]
    fn the_issue_list_is_supported_with_an_outcome() {
        let wanted = [
            "PANIC",
            "PANIC_STOP_IRQOFF",
            "PANIC_IN_HARDIRQ",
            "BUG",
            "BUG_IN_HARDIRQ",
            "WARNING",
            "WARNING_MESSAGE",
            "EXCEPTION",
            "LOOP",
            "EXHAUST_STACK",
            "CORRUPT_STACK",
            "CORRUPT_STACK_STRONG",
            "REPORT_STACK",
            "SOFTLOCKUP",
            "HARDLOCKUP",
            "SMP_CALL_LOCKUP",
            "SPINLOCKUP",
            "HUNG_TASK",
            "OVERFLOW_SIGNED",
            "OVERFLOW_UNSIGNED",
            "ARRAY_BOUNDS",
            "CORRUPT_LIST_ADD",
            "CORRUPT_LIST_DEL",
            "STACK_GUARD_PAGE_LEADING",
            "STACK_GUARD_PAGE_TRAILING",
            "DOUBLE_FAULT",
            "WRITE_RO",
            "WRITE_RO_AFTER_INIT",
            "WRITE_KERN",
            "EXEC_DATA",
            "EXEC_STACK",
            "EXEC_KMALLOC",
            "EXEC_VMALLOC",
            "EXEC_RODATA",
            "EXEC_NULL",
            "ACCESS_NULL",
            "READ_AFTER_FREE",
            "WRITE_AFTER_FREE",
            "SLAB_FREE_DOUBLE",
            "SLAB_FREE_CROSS",
            "SLAB_LINEAR_OVERFLOW",
        ];
        for name in wanted {
            let t = CrashType::from_name(name).unwrap_or_else(|| panic!("{name} is not a crash type"));
            let outcome = t.outcome().unwrap_or_else(|| panic!("{name} is not supported"));
            assert!(!outcome.message.is_empty(), "{name}");
            assert_eq!(
                outcome.detector.is_some(),
                outcome.panics != Panics::Never,
                "{name}: a type that can panic names its crash reason"
            );
        }
        // Beyond the issue's list: UNALIGNED_LOAD_STORE_WRITE and WRITE_OPD (XFAIL on x86_64, as in
        // Linux), VMALLOC_LINEAR_OVERFLOW and SLAB_FREE_PAGE.
        assert_eq!(CrashType::supported().count(), wanted.len() + 4);
    }

    #[test]
    fn unsupported_types_give_a_reason() {
        for t in CrashType::ALL {
            if let Support::Unsupported(reason) = t.support() {
                assert!(reason.len() > 8, "{t}: {reason:?}");
            }
        }
        for name in ["USERCOPY_KERNEL", "CFI_FORWARD_PROTO", "CORRUPT_PAC", "FORTIFY_STRSCPY", "PPC_SLB_MULTIHIT"] {
            assert!(
                matches!(CrashType::from_name(name).map(CrashType::support), Some(Support::Unsupported(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn interrupt_context_makes_every_oops_fatal() {
        let bug = CrashType::BUG.outcome().unwrap();
        assert_eq!((bug.panics_in(Context::Task), bug.panics_in(Context::Hardirq)), (Panics::OnOops, Panics::Always));
        let warn = CrashType::WARNING.outcome().unwrap();
        assert_eq!(warn.panics_in(Context::Hardirq), Panics::OnWarn);
    }

    #[test]
    fn the_docs_table_names_every_type_and_point() {
        let docs = include_str!("../../../docs/lkdtm.md");
        for t in CrashType::ALL {
            let name = t.as_str();
            let group = name.split_once('_').map(|(prefix, _)| group_name(prefix));
            let listed = docs.contains(&std::format!("`{name}`")) || group.is_some_and(|g| docs.contains(g.as_str()));
            assert!(listed, "docs/lkdtm.md does not name {name}");
        }
        for p in CrashPoint::ALL {
            assert!(docs.contains(&std::format!("| `{p}` |")), "docs/lkdtm.md has no row for {p}");
        }
    }

    /// `` `PREFIX_*` ``, how the docs name a group of types.
    fn group_name(prefix: &str) -> std::string::String {
        std::format!("`{prefix}_*`")
    }

    #[test]
    fn crash_points_have_linux_functions_and_counterparts() {
        assert_eq!(CrashPoint::Direct.linux_function(), None);
        assert_eq!(CrashPoint::Direct.context(), Some(Context::Task));
        assert_eq!(CrashPoint::IntHardwareEntry.linux_function(), Some("do_IRQ"));
        assert_eq!(CrashPoint::Timeradd.context(), None, "the caller's context");
        assert!(CrashPoint::FsSubmitBh.counterpart().is_err());
        let supported: usize = CrashPoint::ALL.iter().filter(|p| p.counterpart().is_ok()).count();
        assert_eq!(supported, 5);
    }
}
