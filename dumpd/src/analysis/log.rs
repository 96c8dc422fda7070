//! The crashed kernel's log: Linux's 3.5–5.9 variable-length record buffer (linux-semantics.md
//! §7 (a)), found through `SYMBOL(log_buf)` (a pointer variable), `SYMBOL(log_buf_len)`,
//! `SYMBOL(log_first_idx)`, `SYMBOL(log_next_idx)`, `SIZE(printk_log)` and
//! `OFFSET(printk_log.ts_nsec|len|text_len)`, and printed as `dmesg` and `vmcore-dmesg` do:
//! `[    1.234567] text`, bytes that are neither printable nor space as `\xNN`.
//!
//! The walk follows `vmcore-dmesg` (from `log_first_idx` to `log_next_idx`; a zero `len` wraps to
//! offset 0) but never reads outside the buffer and never loops: a record that does not fit,
//! a second wrap or too many records end it, keeping the records read so far and saying why in
//! [`KernelLog::problem`].

use std::fmt::{self, Write};

use crashvisor_klib::le::{get_u16, get_u64};
use serde::Serialize;

use super::{AnalysisError, Dump};

/// Largest log buffer read (Linux's `LOG_BUF_LEN_MAX` is 2 GiB; real ones are far smaller).
pub const MAX_LOG_BUF_LEN: u64 = 256 << 20;
/// Offset of the byte holding `flags:5` and `level:3` in Linux's `struct printk_log`.
const FLAGS_LEVEL_OFFSET: usize = 15;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Timestamp in nanoseconds since boot.
    pub ts_nsec: u64,
    /// Log level, 0 (`KERN_EMERG`) to 7 (`KERN_DEBUG`).
    pub level: u8,
    /// The text, with bytes that are neither printable nor space written `\xNN`.
    pub text: String,
}

impl fmt::Display for LogRecord {
    /// `[%5llu.%06llu] text`, as `dmesg` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.ts_nsec / 1_000_000_000;
        let micros = self.ts_nsec % 1_000_000_000 / 1000;
        write!(f, "[{secs:5}.{micros:06}] {}", self.text)
    }
}

/// The kernel log read from a dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelLog {
    /// The records, oldest first.
    pub records: Vec<LogRecord>,
    /// Why the log may be incomplete (a damaged record ended the walk).
    pub problem: Option<String>,
}

impl fmt::Display for KernelLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for record in &self.records {
            writeln!(f, "{record}")?;
        }
        if let Some(problem) = &self.problem {
            writeln!(f, "log: {problem}")?;
        }
        Ok(())
    }
}

/// Where the fields of a record header are, from `VMCOREINFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayout {
    /// `SIZE(printk_log)`.
    pub header_size: usize,
    /// `OFFSET(printk_log.ts_nsec)`.
    pub ts_nsec: usize,
    /// `OFFSET(printk_log.len)`.
    pub len: usize,
    /// `OFFSET(printk_log.text_len)`.
    pub text_len: usize,
}

impl RecordLayout {
    /// Linux's 16-byte `struct printk_log`.
    pub const LINUX: Self = Self { header_size: 16, ts_nsec: 0, len: 8, text_len: 10 };
}

/// Reads the log from the dump.
pub fn read_log(dump: &Dump<'_>) -> Result<KernelLog, AnalysisError> {
    let info = dump.info();
    let layout = RecordLayout {
        header_size: info.size("printk_log")? as usize,
        ts_nsec: info.offset("printk_log.ts_nsec")? as usize,
        len: info.offset("printk_log.len")? as usize,
        text_len: info.offset("printk_log.text_len")? as usize,
    };
    let fits = |offset: usize, len: usize| offset.checked_add(len).is_some_and(|end| end <= layout.header_size);
    if layout.header_size > 4096 || !fits(layout.ts_nsec, 8) || !fits(layout.len, 2) || !fits(layout.text_len, 2) {
        return Err(AnalysisError::Corrupt(format!(
            "SIZE(printk_log) and OFFSET(printk_log.*) are inconsistent: {layout:?}"
        )));
    }
    let buf_addr = dump.read_u64("the log buffer pointer (log_buf)", info.symbol("log_buf")?)?;
    let buf_len = dump.read_u32("the log buffer length (log_buf_len)", info.symbol("log_buf_len")?)?;
    let first_idx = dump.read_u32("log_first_idx", info.symbol("log_first_idx")?)?;
    let next_idx = dump.read_u32("log_next_idx", info.symbol("log_next_idx")?)?;
    if u64::from(buf_len) > MAX_LOG_BUF_LEN {
        return Err(AnalysisError::Corrupt(format!(
            "log_buf_len is {buf_len}, more than the {MAX_LOG_BUF_LEN} bytes this reader accepts"
        )));
    }
    let buf = dump.read_vec("the log buffer", buf_addr, buf_len as usize)?;
    Ok(parse_records(&buf, first_idx, next_idx, &layout))
}

/// Walks the records of `buf` from `first_idx` to `next_idx`.
pub fn parse_records(buf: &[u8], first_idx: u32, next_idx: u32, layout: &RecordLayout) -> KernelLog {
    let mut log = KernelLog::default();
    let header = layout.header_size.max(1);
    let (mut idx, next_idx) = (first_idx as usize, next_idx as usize);
    let mut wrapped = false;
    // Each record takes at least a header, so no walk has more records than this.
    let max_records = buf.len() / header + 1;
    while idx != next_idx {
        if log.records.len() > max_records {
            log.problem = Some(format!("more records than fit in the {}-byte buffer", buf.len()));
            break;
        }
        let Some(record) = buf.get(idx..).and_then(|rest| rest.get(..header)) else {
            log.problem =
                Some(format!("the record at offset {idx} runs past the end of the {}-byte buffer", buf.len()));
            break;
        };
        let len = get_u16(record, layout.len).unwrap_or_default() as usize;
        if len == 0 {
            // The end of the used part of the buffer: the next record is at 0.
            if wrapped {
                log.problem = Some(format!("the log wraps a second time at offset {idx}"));
                break;
            }
            wrapped = true;
            idx = 0;
            continue;
        }
        let text_len = get_u16(record, layout.text_len).unwrap_or_default() as usize;
        let text = buf.get(idx + header..).and_then(|rest| rest.get(..text_len));
        let Some(text) = text.filter(|_| header + text_len <= len) else {
            log.problem = Some(format!(
                "the record at offset {idx} is corrupt (len {len}, text_len {text_len}, header {header})"
            ));
            break;
        };
        log.records.push(LogRecord {
            ts_nsec: get_u64(record, layout.ts_nsec).unwrap_or_default(),
            level: record.get(FLAGS_LEVEL_OFFSET).map_or(0, |b| b >> 5),
            text: escape(text),
        });
        idx += len;
    }
    log
}

/// `vmcore-dmesg`'s escaping: bytes that are neither `isprint` nor `isspace` (C locale) as `\xNN`.
fn escape(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_image::TestImage;
    use crashvisor_abi::layout::{KERNEL_MAP, PAGE_OFFSET};
    use crashvisor_klib::printk::LogIndex;

    const LAYOUT: RecordLayout = RecordLayout::LINUX;

    /// A buffer written by the kernel's own log code (klib), so reader and writer agree.
    fn kernel_log(buf_len: usize, lines: &[(u64, u8, &[u8])]) -> (Vec<u8>, LogIndex) {
        let mut buf = vec![0u8; buf_len];
        let mut index = LogIndex::new();
        for &(ts, level, text) in lines {
            index.append(&mut buf, ts, 0, level, text);
        }
        (buf, index)
    }

    #[test]
    fn records_print_like_dmesg() {
        let (buf, index) =
            kernel_log(4096, &[(0, 5, b"Linux version 6.18.0"), (1_234_567_890, 0, b"tab\there\x01\xc3\xa9")]);
        let log = parse_records(&buf, index.first_idx, index.next_idx, &LAYOUT);
        assert_eq!(log.problem, None);
        assert_eq!(log.records[0].level, 5);
        assert_eq!(log.to_string(), "[    0.000000] Linux version 6.18.0\n[    1.234567] tab\there\\x01\\xc3\\xa9\n");
    }

    #[test]
    fn a_wrapped_log_reads_from_the_oldest_record() {
        let lines: Vec<(u64, u8, Vec<u8>)> =
            (0..200).map(|i| (i * 1000, 6, format!("line {i} {}", "x".repeat(i as usize % 40)).into_bytes())).collect();
        let borrowed: Vec<(u64, u8, &[u8])> = lines.iter().map(|(t, l, s)| (*t, *l, s.as_slice())).collect();
        let (buf, index) = kernel_log(4096, &borrowed);
        assert!(index.first_idx > index.next_idx, "the test needs a wrapped buffer");
        let log = parse_records(&buf, index.first_idx, index.next_idx, &LAYOUT);
        assert_eq!(log.problem, None);
        assert_eq!(log.records.len() as u64, index.len());
        assert!(log.records.last().unwrap().text.starts_with("line 199 "));
        let first = log.records[0].text.split(' ').nth(1).unwrap().parse::<u64>().unwrap();
        assert_eq!(first, index.first_seq);
    }

    #[test]
    fn damaged_logs_keep_what_was_read() {
        let (mut buf, index) = kernel_log(4096, &[(1, 6, b"one"), (2, 6, b"two"), (3, 6, b"three")]);
        // The second record's text_len runs past its len.
        let second = 16 + 4;
        buf[second + 10..second + 12].copy_from_slice(&500u16.to_le_bytes());
        let log = parse_records(&buf, index.first_idx, index.next_idx, &LAYOUT);
        assert_eq!(log.records.len(), 1);
        assert!(log.problem.unwrap().contains("record at offset 20 is corrupt"));
        // Indices outside the buffer, and a walk that never reaches next_idx.
        let log = parse_records(&buf, 10_000, 0, &LAYOUT);
        assert!(log.records.is_empty() && log.problem.unwrap().contains("past the end"));
        let (buf, _) = kernel_log(4096, &[(1, 6, b"one")]);
        let log = parse_records(&buf, 0, 4000, &LAYOUT);
        assert_eq!(log.records.len(), 2, "the one record, read again after the first wrap");
        assert!(log.problem.unwrap().contains("wraps a second time"));
    }

    #[test]
    fn random_buffers_never_panic_or_loop() {
        let mut state = 0xdead_beef_cafe_f00du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 600) as usize;
            let buf: Vec<u8> =
                (0..len).map(|_| if next() % 4 == 0 { (next() % 40) as u8 } else { next() as u8 }).collect();
            let (first, last) = ((next() % 700) as u32, (next() % 700) as u32);
            let layout = RecordLayout { header_size: (next() % 24) as usize, ..LAYOUT };
            let log = parse_records(&buf, first, last, &layout);
            assert!(log.records.len() <= buf.len() / layout.header_size.max(1) + 2);
        }
    }

    #[test]
    fn the_log_is_found_through_vmcoreinfo() {
        // Variables in the kernel image (physical 0x1000...), the buffer in the direct map.
        let (buf, index) = kernel_log(4096, &[(5_000_000, 6, b"hello"), (6_000_000, 0, b"Kernel panic")]);
        let info = format!(
            "NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)={:x}\nSYMBOL(log_buf)={:x}\nSYMBOL(log_buf_len)={:x}\n\
             SYMBOL(log_first_idx)={:x}\nSYMBOL(log_next_idx)={:x}\nSIZE(printk_log)=16\n\
             OFFSET(printk_log.ts_nsec)=0\nOFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n",
            KERNEL_MAP,
            KERNEL_MAP + 0x100,
            KERNEL_MAP + 0x108,
            KERNEL_MAP + 0x110,
            KERNEL_MAP + 0x114
        );
        let mut image = TestImage::new(0x4000, &info);
        image.write_u64(0x100, PAGE_OFFSET + 0x2000);
        image.write(0x108, &4096u32.to_le_bytes());
        image.write(0x110, &index.first_idx.to_le_bytes());
        image.write(0x114, &index.next_idx.to_le_bytes());
        image.write(0x2000, &buf);
        let dump = Dump::new(&image).unwrap();
        let log = read_log(&dump).unwrap();
        assert_eq!(log.to_string(), "[    0.005000] hello\n[    0.006000] Kernel panic\n");

        image.write(0x108, &u32::MAX.to_le_bytes());
        let dump = Dump::new(&image).unwrap();
        assert!(matches!(read_log(&dump), Err(AnalysisError::Corrupt(_))));
    }
}
