//! printk: Linux's 3.5–5.9 record log (so `vmcore-dmesg` reads it from our vmcores) and the
//! console, where each record appears as `[    0.123456] text`.

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use crashvisor_klib::bytefmt::ByteWriter;
use crashvisor_klib::printk::{format_timestamp, LogIndex, Record, LOG_LINE_MAX, TIMESTAMP_MAX_LEN};

use crate::sync::owner::OwnerLock;
use crate::{console, time};

/// `KERN_EMERG`.
pub const KERN_EMERG: u8 = 0;
/// `KERN_ALERT`.
pub const KERN_ALERT: u8 = 1;
/// `KERN_ERR`.
pub const KERN_ERR: u8 = 3;
/// `KERN_WARNING`.
pub const KERN_WARNING: u8 = 4;
/// `KERN_NOTICE`.
pub const KERN_NOTICE: u8 = 5;
/// `KERN_INFO`.
pub const KERN_INFO: u8 = 6;

/// Size of the log buffer (Linux's `CONFIG_LOG_BUF_SHIFT` = 17).
pub const LOG_BUF_LEN: usize = 1 << 17;

/// Records below this level reach the console (Linux's `console_loglevel`, default 7).
static CONSOLE_LOGLEVEL: AtomicU8 = AtomicU8::new(7);

#[repr(C, align(8))]
struct LogBuffer(UnsafeCell<[u8; LOG_BUF_LEN]>);

/// The log state: the index and buffer, guarded by an owner-CPU lock so that a print from an
/// NMI that interrupted a print on the same CPU is dropped instead of deadlocking.
struct Log {
    lock: OwnerLock,
    index: UnsafeCell<LogIndex>,
}

// SAFETY: `index` and `LOG_BUF` are only accessed while `lock` is held (see `with_log`).
unsafe impl Sync for Log {}
// SAFETY: as above.
unsafe impl Sync for LogBuffer {}

static LOG: Log = Log { lock: OwnerLock::new(), index: UnsafeCell::new(LogIndex::new()) };
static LOG_BUF: LogBuffer = LogBuffer(UnsafeCell::new([0; LOG_BUF_LEN]));

fn with_log<R>(f: impl FnOnce(&mut LogIndex, &mut [u8; LOG_BUF_LEN]) -> R) -> Option<R> {
    // SAFETY: the owner lock is held inside `with`, so this is the only access to the index
    // and the buffer.
    LOG.lock.with(|| unsafe { f(&mut *LOG.index.get(), &mut *LOG_BUF.0.get()) })
}

/// Lets a panicking CPU log even if another CPU stopped while holding the log.
pub fn bust_lock() {
    LOG.lock.bust();
    console::bust_lock();
}

/// Raises the console level so every record is printed (Linux's `console_verbose`).
pub fn console_verbose() {
    CONSOLE_LOGLEVEL.store(15, Ordering::Relaxed);
}

/// Sets the console level (`loglevel=`, `quiet`).
pub fn set_console_loglevel(level: u8) {
    CONSOLE_LOGLEVEL.store(level, Ordering::Relaxed);
}

/// Logs formatted text at `level`; each line becomes one record.
pub fn printk(level: u8, args: fmt::Arguments<'_>) {
    // Like Linux's vsnprintf into a fixed line buffer: longer text is cut.
    let mut buf = [0u8; LOG_LINE_MAX];
    let mut line = ByteWriter::new(&mut buf);
    let _ = line.write_fmt(args);
    let mut text = line.into_bytes();
    if let Some(stripped) = text.strip_suffix(b"\n") {
        text = stripped;
    }
    for part in text.split(|&b| b == b'\n') {
        log_line(level, part);
    }
}

/// Stores one record and echoes it to the console if its level is shown.
pub fn log_line(level: u8, text: &[u8]) {
    let ts = time::now_ns();
    with_log(|index, buf| index.append(buf, ts, 0, level, text));
    if level < CONSOLE_LOGLEVEL.load(Ordering::Relaxed) {
        let mut stamp = [0u8; TIMESTAMP_MAX_LEN];
        let stamp = format_timestamp(ts, &mut stamp);
        console::with_output(|emit| {
            emit(stamp);
            emit(text);
            emit(b"\r\n");
        });
    }
}

/// Calls `f` for every record from sequence number `from_seq` on (the log is held meanwhile,
/// so `f` must not print).
pub fn for_each_record(from_seq: u64, mut f: impl FnMut(&Record<'_>)) {
    with_log(|index, buf| {
        for record in index.records(&buf[..], from_seq) {
            f(&record);
        }
    });
}

/// Appends `record` to `text` as the line `vmcore-dmesg` and `dmesg` print:
/// `[    1.234567] text\n`.
pub fn push_line(text: &mut alloc::string::String, record: &Record<'_>) {
    let mut stamp = [0u8; TIMESTAMP_MAX_LEN];
    text.push_str(core::str::from_utf8(format_timestamp(record.ts_nsec, &mut stamp)).unwrap_or(""));
    text.push_str(&alloc::string::String::from_utf8_lossy(record.text));
    text.push('\n');
}

/// This kernel's log from sequence number `from_seq` on, as text lines, and the sequence
/// number that follows the last one.
pub fn text_since(from_seq: u64) -> (alloc::string::String, u64) {
    let mut text = alloc::string::String::new();
    let mut next = from_seq;
    for_each_record(from_seq, |record| {
        push_line(&mut text, record);
        next = record.seq + 1;
    });
    (text, next)
}

/// `SYMBOL(log_buf)` names a pointer variable holding the buffer's address, as in Linux.
static LOG_BUF_PTR: core::sync::atomic::AtomicPtr<u8> = core::sync::atomic::AtomicPtr::new(LOG_BUF.0.get().cast());
/// `SYMBOL(log_buf_len)` names a 32-bit variable holding the buffer's size.
static LOG_BUF_LEN_VAR: u32 = LOG_BUF_LEN as u32;

/// The VMCOREINFO keys of the 3.5–5.9 record log (linux-semantics.md §7 (a)), so unmodified
/// `vmcore-dmesg` reads this kernel's log from a vmcore.
pub fn write_vmcoreinfo(w: &mut dyn Write) -> fmt::Result {
    use crashvisor_klib::printk::{OFFSET_DICT_LEN, OFFSET_LEN, OFFSET_TEXT_LEN, OFFSET_TS_NSEC};
    let index = LOG.index.get() as u64;
    writeln!(w, "SYMBOL(log_buf)={:x}", &LOG_BUF_PTR as *const _ as u64)?;
    writeln!(w, "SYMBOL(log_buf_len)={:x}", &LOG_BUF_LEN_VAR as *const u32 as u64)?;
    writeln!(w, "SYMBOL(log_first_idx)={:x}", index + LogIndex::OFFSET_FIRST_IDX as u64)?;
    writeln!(w, "SYMBOL(log_next_idx)={:x}", index + LogIndex::OFFSET_NEXT_IDX as u64)?;
    writeln!(w, "SIZE(printk_log)={}", crashvisor_klib::printk::HEADER_SIZE)?;
    writeln!(w, "OFFSET(printk_log.ts_nsec)={OFFSET_TS_NSEC}")?;
    writeln!(w, "OFFSET(printk_log.len)={OFFSET_LEN}")?;
    writeln!(w, "OFFSET(printk_log.text_len)={OFFSET_TEXT_LEN}")?;
    writeln!(w, "OFFSET(printk_log.dict_len)={OFFSET_DICT_LEN}")
}

/// `printk!(level, "fmt", args)`.
#[macro_export]
macro_rules! printk {
    ($level:expr, $($arg:tt)*) => { $crate::printk::printk($level, format_args!($($arg)*)) };
}

/// `pr_info!("fmt", args)`.
#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_INFO, $($arg)*) };
}

/// `pr_err!("fmt", args)`.
#[macro_export]
macro_rules! pr_err {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_ERR, $($arg)*) };
}

/// `pr_warn!("fmt", args)`.
#[macro_export]
macro_rules! pr_warn {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_WARNING, $($arg)*) };
}

/// `pr_emerg!("fmt", args)`.
#[macro_export]
macro_rules! pr_emerg {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_EMERG, $($arg)*) };
}

/// `pr_alert!("fmt", args)`.
#[macro_export]
macro_rules! pr_alert {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_ALERT, $($arg)*) };
}

/// `pr_notice!("fmt", args)`.
#[macro_export]
macro_rules! pr_notice {
    ($($arg:tt)*) => { $crate::printk!($crate::printk::KERN_NOTICE, $($arg)*) };
}
