//! `dumpd show|bt|log|ps` on a small hand-made vmcore (one CPU, one task, one log record, the
//! crashvisor VMCOREINFO keys), and their errors. The real thing is tested end to end on KVM
//! in `tests/tests/analysis.rs`.

use std::fs::File;
use std::path::PathBuf;

use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
use dumpd::writer::write_vmcore;

mod common;
use common::{dumpd, text, Ram};

const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// Physical addresses of the kernel variables (in the kernel map) and of the task and log.
const TASK_LIST: u64 = 0x100;
const PER_CPU: u64 = 0x200;
const LOG_VARS: u64 = 0x300;
const REASON: u64 = 0x400;
const UTS: u64 = 0x800;
const TOP_PGT: u64 = 0x1000;
const TASK: u64 = 0x2000;
const LOG_BUF: u64 = 0x4000;

fn vmcoreinfo() -> String {
    let k = |paddr: u64| format!("{:x}", KERNEL_MAP + paddr);
    format!(
        "OSRELEASE=6.18.0-crashvisor\nSYMBOL(init_uts_ns)={}\nOFFSET(uts_namespace.name)=0\n\
         SYMBOL(log_buf)={}\nSYMBOL(log_buf_len)={}\nSYMBOL(log_first_idx)={}\nSYMBOL(log_next_idx)={}\n\
         SIZE(printk_log)=16\nOFFSET(printk_log.ts_nsec)=0\nOFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n\
         SYMBOL(crashvisor_task_list)={}\nSIZE(task_struct)=64\nOFFSET(task_struct.next)=0\nOFFSET(task_struct.pid)=8\n\
         OFFSET(task_struct.ppid)=12\nOFFSET(task_struct.comm)=16\nOFFSET(task_struct.state)=32\n\
         OFFSET(task_struct.cpu)=36\nOFFSET(task_struct.flags)=40\nOFFSET(task_struct.saved_rsp)=48\n\
         OFFSET(task_struct.stack_base)=56\nOFFSET(task_struct.stack_size)=56\n\
         SYMBOL(crashvisor_per_cpu)={}\nSIZE(per_cpu)=64\nOFFSET(per_cpu.current)=16\nNUMBER(nr_cpus)=1\n\
         SYMBOL(crashvisor_crash_reason)={}\nSIZE(crashvisor_crash_reason)=304\n\
         OFFSET(crashvisor_crash_reason.cpu)=12\nOFFSET(crashvisor_crash_reason.pid)=16\n\
         OFFSET(crashvisor_crash_reason.message_len)=40\nOFFSET(crashvisor_crash_reason.message)=48\n\
         NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)={}\nNUMBER(crashvisor_uptime_ns)=1500000000\nCRASHTIME=0\n",
        k(UTS),
        k(LOG_VARS),
        k(LOG_VARS + 8),
        k(LOG_VARS + 12),
        k(LOG_VARS + 16),
        k(TASK_LIST),
        k(PER_CPU),
        k(REASON),
        k(TOP_PGT)
    )
}

/// Writes a one-CPU vmcore into the temporary directory and returns its path.
fn make_vmcore(name: &str, vmcoreinfo: Option<&str>) -> PathBuf {
    let mut ram = Ram::zeroed(0, 0x8000);
    ram.put(TASK_LIST, &(PAGE_OFFSET + TASK).to_le_bytes());
    ram.put(PER_CPU + 16, &(PAGE_OFFSET + TASK).to_le_bytes());
    // The task: pid 1, "init", running, CPU 0.
    ram.put(TASK + 8, &1u32.to_le_bytes());
    ram.put(TASK + 16, b"init");
    // The log: one record "hello" at 1.5 s, level 6.
    ram.put(LOG_VARS, &(PAGE_OFFSET + LOG_BUF).to_le_bytes());
    ram.put(LOG_VARS + 8, &4096u32.to_le_bytes());
    ram.put(LOG_VARS + 16, &24u32.to_le_bytes());
    ram.put(LOG_BUF, &1_500_000_000u64.to_le_bytes());
    ram.put(LOG_BUF + 8, &[24, 0, 5, 0, 0, 0, 0, 6 << 5]);
    ram.put(LOG_BUF + 16, b"hello");
    ram.put(REASON + 12, &0u32.to_le_bytes());
    ram.put(REASON + 16, &1u32.to_le_bytes());
    ram.put(REASON + 40, &4u32.to_le_bytes());
    ram.put(REASON + 48, b"oops");
    ram.put(UTS + 65, b"testhost");
    // CPU 0 stopped at 0xffffffff81000010 with no frame pointer.
    let mut prstatus = [0u8; PRSTATUS_SIZE];
    prstatus[32..36].copy_from_slice(&1u32.to_le_bytes());
    prstatus[112 + 16 * 8..112 + 17 * 8].copy_from_slice(&0xffff_ffff_8100_0010u64.to_le_bytes());
    let mut notes = vec![NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus }];
    if let Some(info) = vmcoreinfo {
        notes.push(NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: info.as_bytes() });
    }
    let core = layout(&notes, &[LoadSpec { vaddr: PAGE_OFFSET, paddr: 0, len: 0x8000 }]).unwrap();
    let path = std::env::temp_dir().join(format!("dumpd-cli-analysis-{name}-{}", std::process::id()));
    let file = File::create(&path).unwrap();
    write_vmcore(&file, &core.headers, &core.runs, core.file_size, &ram).unwrap();
    path
}

#[test]
fn show_bt_log_and_ps_read_a_vmcore() {
    let vmcore = make_vmcore("ok", Some(&vmcoreinfo()));
    let path = vmcore.to_str().unwrap();

    let out = dumpd(&["show", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = text(&out.stdout);
    for line in ["    NODENAME: testhost", "      UPTIME: 00:00:01", "       PANIC: \"oops\"", "     COMMAND: \"init\""]
    {
        assert!(show.lines().any(|l| l == line), "no {line:?} in:\n{show}");
    }

    let out = dumpd(&["bt", path]);
    let bt = text(&out.stdout);
    assert!(bt.starts_with("PID: 1 ") && bt.contains(" #0 [0000000000000000] ffffffff81000010\n"), "{bt}");
    assert!(text(&out.stderr).contains("vmm --extract-kernel guest.elf"), "{}", text(&out.stderr));

    assert_eq!(text(&dumpd(&["log", path]).stdout), "[    1.500000] hello\n");
    let ps: serde_json::Value = serde_json::from_slice(&dumpd(&["ps", path, "--json"]).stdout).unwrap();
    assert_eq!((&ps["tasks"][0]["comm"], &ps["tasks"][0]["running_on"]), (&"init".into(), &0.into()), "{ps}");

    let out = dumpd(&["bt", "-c", "3", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the dump has no registers for CPU 3 (it has CPUs 0)"), "{}", text(&out.stderr));
    let out = dumpd(&["bt", "--kernel", "/nonexistent/guest.elf", path]);
    assert!(text(&out.stderr).contains("cannot read the kernel ELF /nonexistent/guest.elf"), "{}", text(&out.stderr));
    std::fs::remove_file(&vmcore).unwrap();
}

#[test]
fn dumps_without_the_keys_are_clear_errors() {
    let vmcore = make_vmcore("no-info", None);
    let out = dumpd(&["ps", vmcore.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has no VMCOREINFO note"), "{}", text(&out.stderr));
    std::fs::remove_file(&vmcore).unwrap();

    let vmcore = make_vmcore("no-tasks", Some(&vmcoreinfo().replace("SYMBOL(crashvisor_task_list)", "X")));
    let out = dumpd(&["ps", vmcore.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("VMCOREINFO has no SYMBOL(crashvisor_task_list) line"), "{stderr}");
    std::fs::remove_file(&vmcore).unwrap();
}
