//! The ring-3 program: read the boot data, fill RAM, report on COM1, spin.

use core::arch::asm;
use core::fmt::{self, Write};

use crate::serial::Com1;
use crate::{cmdline, fill, pvh};

extern "C" {
    /// The page-aligned end of everything the kernel owns (linker.ld).
    static fill_image_end: u8;
}

/// The ring-3 entry point: boot.rs `iretq`s here with the PVH start info's address.
#[no_mangle]
extern "C" fn fill_main(start_info_gpa: u64) -> ! {
    // SAFETY: the PVH entry got this address; boot.rs identity-maps `[0, 65 GiB)`, where VMMs
    // put the boot data (ours and QEMU's below 1 MiB), and nothing writes it before the fill,
    // which starts after the last use of `boot.cmdline` below.
    let boot = unsafe { pvh::read(start_info_gpa) }.unwrap_or_else(|e| shut_down(format_args!("error: {e}")));
    let config = cmdline::parse(boot.cmdline).unwrap_or_else(|e| shut_down(format_args!("error: {e}")));
    let (ram, mode, seed) = (boot.ram, config.mode, config.seed);
    let from_gpa = (&raw const fill_image_end) as u64;
    say(format_args!("start ram={} mode={} seed={seed} from={from_gpa:#x}", ram.total_bytes(), mode.as_str()));
    // SAFETY: `fill` writes only pages of the memory map's RAM at or above the end of the
    // image, which boot.rs maps writable and nothing of this program uses.
    let stats = unsafe { fill::fill(&ram, from_gpa, mode, seed) };
    say(format_args!("done mode={} bytes={} pages={} seed={seed}", mode.as_str(), stats.bytes, stats.pages));
    loop {
        core::hint::spin_loop();
    }
}

/// Prints `fill: <line>` on COM1.
fn say(line: fmt::Arguments<'_>) {
    writeln!(Com1, "fill: {line}").expect("COM1 writes cannot fail");
}

/// Prints `fill: <why>` and ends the VM.
fn shut_down(why: fmt::Arguments<'_>) -> ! {
    say(why);
    // SAFETY: #UD with the empty IDT of boot.rs is a triple fault: the VM stops here, nothing
    // after this instruction runs.
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    shut_down(format_args!("BUG: {info}"))
}
