//! Magic SysRq keys written to `/proc/sysrq-trigger` (Linux `drivers/tty/sysrq.c`).

use crashvisor_abi::platform::Detector;

use crate::{nmi, printk, reboot};

/// Runs the SysRq action for `key`.
pub fn handle(key: u8) {
    match key {
        b'c' => {
            printk::console_verbose();
            crate::pr_info!("sysrq: Trigger a crash");
            crate::panic::panic_with(Detector::Sysrq, format_args!("sysrq triggered crash\n"));
        }
        b'b' => {
            crate::pr_info!("sysrq: Resetting");
            reboot::emergency_restart();
        }
        b'o' => {
            crate::pr_info!("sysrq: Power Off");
            reboot::power_off();
        }
        b'l' => {
            crate::pr_info!("sysrq: Show backtrace of all active CPUs");
            nmi::backtrace_all_but_self();
            crate::dumpstack::dump_stack(printk::KERN_INFO);
        }
        _ => crate::pr_info!("sysrq: HELP : reboot(b) crash(c) show-backtrace-all-active-cpus(l) poweroff(o)"),
    }
}
