//! Backtraces like `crash`'s `bt`, by frame pointers (the guest is built with
//! `-C force-frame-pointers=yes`):
//!
//! - a CPU's: frame #0 is the `NT_PRSTATUS` RIP at RSP, then the `rbp` chain;
//! - a switched-out task's: frame #0 is `switch_context`'s return address, found with the
//!   task's saved stack pointer and `OFFSET(inactive_task_frame.bp|ret_addr)`, then its chain.
//!
//! Each frame is `[saved rbp, return address]` at `rbp`; the walk reads the stack through
//! [`Dump::read`] (vmap'd stacks are translated by the page-table walk). Frames grow upwards on
//! one stack; a frame pointer elsewhere is a switch to another stack (an interrupt or NMI that
//! ran on its own stack saved the interrupted code's `rbp`), allowed up to
//! [`MAX_STACK_SWITCHES`] times and marked in the output. The walk stops at a zero frame
//! pointer or return address (a task's first frame), or early — with the reason in
//! [`Backtrace::end`] — at an unreadable or misaligned frame, a frame seen before, too many
//! stack switches, or after [`MAX_FRAMES`].

use std::collections::HashSet;
use std::fmt;

use crashvisor_klib::le::get_u64;
use serde::Serialize;

use super::registers::Registers;
use super::symbols::KernelSymbols;
use super::tasks::{Task, TaskList};
use super::{error_chain, hex, AnalysisError, Dump};

/// Most frames a backtrace shows.
pub const MAX_FRAMES: usize = 64;
/// Most switches to another stack a backtrace follows (a task's stack, an interrupt's, an
/// NMI's, with room to spare).
pub const MAX_STACK_SWITCHES: usize = 3;
/// Largest distance between consecutive frames on one stack (the guest's stacks are 16 KiB).
const MAX_FRAME_SIZE: u64 = 64 << 10;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The frame's number, from 0 (the innermost).
    pub level: usize,
    /// The stack address of the frame: RSP for frame #0 of a CPU, else where the return
    /// address was found.
    #[serde(serialize_with = "hex")]
    pub sp: u64,
    /// The instruction address (a return address except for frame #0 of a CPU).
    #[serde(serialize_with = "hex")]
    pub pc: u64,
    /// The function holding it, when the kernel's symbols are known.
    pub function: Option<String>,
    /// The offset of `pc` from the function's start.
    pub offset: Option<u64>,
    /// Whether the frame is on another stack than the one before it.
    pub stack_switch: bool,
}

/// A backtrace of a CPU or a task.
#[derive(Debug, Clone, Serialize)]
pub struct Backtrace {
    /// The CPU, for a CPU's backtrace or a running task's.
    pub cpu: Option<u32>,
    /// The task it belongs to (the CPU's running task), if known.
    pub task: Option<Task>,
    /// The CPU's registers from its crash note.
    pub registers: Option<Registers>,
    /// The frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the walk stopped before a task's first frame, if it did.
    pub end: Option<String>,
}

/// The backtrace of `cpu`, from its crash note. `tasks` names the task it was running.
pub fn cpu_backtrace(
    dump: &Dump<'_>,
    tasks: &TaskList,
    cpu: u32,
    symbols: Option<&KernelSymbols>,
) -> Result<Backtrace, AnalysisError> {
    let cpus = dump.cpus();
    let Some(regs) = cpus.iter().find(|c| c.cpu == cpu).map(|c| c.regs) else {
        let have: Vec<String> = cpus.iter().map(|c| c.cpu.to_string()).collect();
        return Err(AnalysisError::NotFound(format!(
            "the dump has no registers for CPU {cpu} (it has CPUs {})",
            if have.is_empty() { "none".to_owned() } else { have.join(", ") }
        )));
    };
    let task = tasks.running_on(cpu).cloned();
    let mut frames = vec![frame(0, regs.rsp(), regs.rip(), false, symbols)];
    let end = if regs.is_empty() {
        Some("the CPU did not save its registers".to_owned())
    } else {
        walk(dump, regs.rbp(), regs.rsp(), &mut frames, symbols)
    };
    Ok(Backtrace { cpu: Some(cpu), task, registers: Some(regs), frames, end })
}

/// The backtrace of a task: its CPU's if it was running at the crash, else from where it was
/// switched out.
pub fn task_backtrace(
    dump: &Dump<'_>,
    tasks: &TaskList,
    task: &Task,
    symbols: Option<&KernelSymbols>,
) -> Result<Backtrace, AnalysisError> {
    if let Some(cpu) = task.running_on {
        return cpu_backtrace(dump, tasks, cpu, symbols);
    }
    let bp_offset = dump.info().offset("inactive_task_frame.bp")?;
    let ret_offset = dump.info().offset("inactive_task_frame.ret_addr")?;
    let rsp = task.saved_rsp;
    let what = format!("pid {}'s saved frame", task.pid);
    let rbp = dump.read_u64(&what, rsp.wrapping_add(bp_offset))?;
    let ret_sp = rsp.wrapping_add(ret_offset);
    let ret = dump.read_u64(&what, ret_sp)?;
    let mut frames = vec![frame(0, ret_sp, ret, true, symbols)];
    let end = walk(dump, rbp, ret_sp, &mut frames, symbols);
    Ok(Backtrace { cpu: None, task: Some(task.clone()), registers: None, frames, end })
}

fn frame(level: usize, sp: u64, pc: u64, is_return: bool, symbols: Option<&KernelSymbols>) -> Frame {
    let found = symbols.and_then(|s| if is_return { s.lookup_return(pc) } else { s.lookup(pc) });
    Frame {
        level,
        sp,
        pc,
        function: found.map(|f| f.name.to_owned()),
        offset: found.map(|f| f.offset),
        stack_switch: false,
    }
}

/// Follows the frame-pointer chain from `rbp`, appending frames; returns why it stopped early.
/// `floor` is the lowest address the first frame may have (the stack pointer).
fn walk(
    dump: &Dump<'_>,
    mut rbp: u64,
    mut floor: u64,
    frames: &mut Vec<Frame>,
    symbols: Option<&KernelSymbols>,
) -> Option<String> {
    let mut seen = HashSet::new();
    let mut switches = 0;
    while frames.len() < MAX_FRAMES {
        if rbp == 0 {
            return None;
        }
        if !rbp.is_multiple_of(8) {
            return Some(format!("the frame pointer {rbp:#x} is misaligned"));
        }
        if !seen.insert(rbp) {
            return Some(format!("the frame pointer chain loops back to {rbp:#x}"));
        }
        let stack_switch = rbp < floor || rbp - floor > MAX_FRAME_SIZE;
        if stack_switch {
            switches += 1;
            if switches > MAX_STACK_SWITCHES {
                return Some(format!("more than {MAX_STACK_SWITCHES} stack switches (at frame pointer {rbp:#x})"));
            }
        }
        let mut words = [0u8; 16];
        if let Err(e) = dump.read("a stack frame", rbp, &mut words) {
            return Some(error_chain(&e));
        }
        let (next, ret) = (get_u64(&words, 0).unwrap_or_default(), get_u64(&words, 8).unwrap_or_default());
        if ret == 0 {
            return None;
        }
        frames.push(Frame { stack_switch, ..frame(frames.len(), rbp + 8, ret, true, symbols) });
        floor = rbp + 16;
        rbp = next;
    }
    Some(format!("more than {MAX_FRAMES} frames; the rest are left out"))
}

/// `crash`'s `bt` layout: the task line, then ` #N [sp] function+0xoff at pc`.
impl fmt::Display for Backtrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpu = self.cpu.or(self.task.as_ref().map(|t| t.cpu)).map_or("-".to_owned(), |c| c.to_string());
        match &self.task {
            Some(t) => {
                writeln!(f, "PID: {:<8} TASK: {:016x}  CPU: {cpu:<4} COMMAND: \"{}\"", t.pid, t.address, t.comm)?
            }
            None => writeln!(f, "PID: -        TASK: -                 CPU: {cpu:<4} COMMAND: -")?,
        }
        for frame in &self.frames {
            if frame.stack_switch {
                writeln!(f, " --- <stack switch> ---")?;
            }
            let number = format!("#{}", frame.level);
            match (&frame.function, frame.offset) {
                (Some(name), Some(offset)) => {
                    writeln!(f, "{number:>3} [{:016x}] {name}+{offset:#x} at {:016x}", frame.sp, frame.pc)?
                }
                _ => writeln!(f, "{number:>3} [{:016x}] {:016x}", frame.sp, frame.pc)?,
            }
        }
        if let Some(end) = &self.end {
            writeln!(f, "     (backtrace stopped: {end})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::registers::tests::prstatus;
    use crate::analysis::symbols::tests::symbols;
    use crate::analysis::tasks::{task_list, tests as task_tests};
    use crate::analysis::test_image::TestImage;
    use crashvisor_abi::layout::PAGE_OFFSET;

    /// The stack of CPU 1's task, in the direct map at physical 0x8000.
    const STACK: u64 = PAGE_OFFSET + 0x8000;

    fn dump_image(frames: &[(u64, u64, u64)], regs_rbp: u64) -> TestImage {
        let mut image = task_tests::image();
        for &(at, next, ret) in frames {
            image.write_u64(at - PAGE_OFFSET, next);
            image.write_u64(at - PAGE_OFFSET + 8, ret);
        }
        image.notes.push(prstatus(1, 0x90, 0x91, 0x92));
        image.notes.push(prstatus(2, 0x1105, STACK + 0x10, regs_rbp));
        image
    }

    #[test]
    fn frames_follow_the_rbp_chain_and_are_symbolised() {
        let image = dump_image(&[(STACK + 0x40, STACK + 0x80, 0x1014), (STACK + 0x80, 0, 0x1001)], STACK + 0x40);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let bt = cpu_backtrace(&dump, &tasks, 1, Some(&symbols())).unwrap();
        assert_eq!(bt.end, None);
        assert_eq!(bt.task.as_ref().map(|t| t.comm.as_str()), Some("watchdog/1"));
        let text = bt.to_string();
        let expected = "PID: 3        TASK: ffff888000003000  CPU: 1    COMMAND: \"watchdog/1\"\n \
                        #0 [ffff888000008010] guest_kernel::inject::softlockup+0x5 at 0000000000001105\n \
                        #1 [ffff888000008048] b+0x4 at 0000000000001014\n \
                        #2 [ffff888000008088] a+0x1 at 0000000000001001\n";
        assert_eq!(text, expected);
        // Without symbols: raw addresses.
        let bt = cpu_backtrace(&dump, &tasks, 1, None).unwrap();
        assert!(bt.to_string().contains(" #1 [ffff888000008048] 0000000000001014\n"), "{bt}");
        let json = serde_json::to_value(&bt).unwrap();
        assert_eq!(json["frames"][1]["pc"], "0x1014");
        assert!(matches!(cpu_backtrace(&dump, &tasks, 7, None), Err(AnalysisError::NotFound(_))));
    }

    #[test]
    fn bad_chains_stop_with_a_reason() {
        type Frames<'a> = &'a [(u64, u64, u64)];
        let cases: [(Frames, u64, &str); 4] = [
            (&[], STACK + 0x41, "misaligned"),
            (&[(STACK + 0x40, STACK + 0x40, 0x1014)], STACK + 0x40, "loops back to 0xffff888000008040"),
            (&[], PAGE_OFFSET + 0x7fff_0000, "cannot read a stack frame at 0xffff88807fff0000"),
            (
                &[
                    (STACK + 0x400, STACK + 0x300, 0x1014),
                    (STACK + 0x300, STACK + 0x200, 0x1014),
                    (STACK + 0x200, STACK + 0x100, 0x1014),
                    (STACK + 0x100, STACK + 0x80, 0x1014),
                ],
                STACK + 0x400,
                "more than 3 stack switches",
            ),
        ];
        for (frames, rbp, reason) in cases {
            let image = dump_image(frames, rbp);
            let dump = Dump::new(&image).unwrap();
            let tasks = task_list(&dump).unwrap();
            let bt = cpu_backtrace(&dump, &tasks, 1, None).unwrap();
            assert!(bt.end.as_deref().is_some_and(|e| e.contains(reason)), "{rbp:#x}: {:?}", bt.end);
            assert!(bt.to_string().contains("(backtrace stopped: "));
        }
    }

    #[test]
    fn a_chain_may_switch_stacks() {
        // From an "interrupt stack" at STACK + 0x400 down to the interrupted frames at + 0x40.
        let frames =
            [(STACK + 0x400, STACK + 0x40, 0x1014), (STACK + 0x40, STACK + 0x80, 0x1001), (STACK + 0x80, 0, 0x1014)];
        let image = dump_image(&frames, STACK + 0x400);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let bt = cpu_backtrace(&dump, &tasks, 1, None).unwrap();
        assert_eq!(bt.end, None);
        assert_eq!(bt.frames.iter().map(|f| f.stack_switch).collect::<Vec<_>>(), [false, false, true, false]);
        let text = bt.to_string();
        assert!(text.contains("0000000000001014\n --- <stack switch> ---\n #2 [ffff888000008048]"), "{text}");
    }

    #[test]
    fn long_chains_are_cut() {
        let frames: Vec<(u64, u64, u64)> =
            (0..100).map(|i| (STACK + 0x40 + i * 16, STACK + 0x50 + i * 16, 0x1014)).collect();
        let image = dump_image(&frames, STACK + 0x40);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let bt = cpu_backtrace(&dump, &tasks, 1, None).unwrap();
        assert_eq!(bt.frames.len(), MAX_FRAMES);
        assert!(bt.end.unwrap().starts_with("more than 64 frames"));
    }

    #[test]
    fn sleeping_tasks_start_at_their_switch_frame() {
        let mut image = dump_image(&[(STACK + 0x80, 0, 0x1001)], 0);
        let info = format!(
            "{}OFFSET(inactive_task_frame.bp)=40\nOFFSET(inactive_task_frame.ret_addr)=48\n",
            task_tests::info()
        );
        image.notes[0].desc = info.into_bytes();
        // pid 2 switched out with its saved rsp at STACK + 0x20.
        image.write_u64(0x2800 + 48, STACK + 0x20);
        image.write_u64(0x8020 + 40, STACK + 0x80);
        image.write_u64(0x8020 + 48, 0x1014);
        let dump = Dump::new(&image).unwrap();
        let tasks = task_list(&dump).unwrap();
        let task = tasks.by_pid(2).unwrap();
        let bt = task_backtrace(&dump, &tasks, task, Some(&symbols())).unwrap();
        let frames: Vec<_> = bt.frames.iter().map(|f| (f.sp, f.function.as_deref())).collect();
        assert_eq!(frames, [(STACK + 0x50, Some("b")), (STACK + 0x88, Some("a"))]);
        // A running task's backtrace is its CPU's.
        let running = tasks.by_pid(3).unwrap();
        assert_eq!(task_backtrace(&dump, &tasks, running, None).unwrap().cpu, Some(1));
    }
}
