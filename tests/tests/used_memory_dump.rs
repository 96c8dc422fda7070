//! Host-side vmcores of a guest that uses its memory (the host-dump benchmark's workload): the
//! fill kernel (`benches/fill-kernel`) fills its RAM with noise — every page, or every even page
//! with the odd ones left untouched — and spins; the VMM dumps it while it runs, in each format,
//! and sampled pages of every vmcore are checked byte for byte against guest memory read back
//! over the control socket.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crashvisor_tests::{fill_kernel, TempDir, Vm, BOOT_TIMEOUT};
use serde_json::json;

/// Guest RAM: one range from 0, 32 of the dump writer's 1 MiB chunks.
const MEMORY_MIB: u64 = 32;
const PAGE: u64 = 4096;
/// Upper bound for a dump of this small guest to be committed.
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages sampled at random (besides the edges of RAM, of the fill and of 1 MiB chunks).
const RANDOM_SAMPLES: usize = 48;

fn fill_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| fill_kernel::build().unwrap_or_else(|e| panic!("{e:#}")))
}

/// Boots the fill kernel with `fill=<mode>`, dumps it in `format` and compares the samples.
fn dump_and_compare(mode: &str, format: &str) {
    let store = TempDir::new("used-memory-dump");
    let kernel = fill_kernel().to_str().expect("the fill kernel's path is UTF-8");
    let memory = MEMORY_MIB.to_string();
    let cmdline = format!("fill={mode} seed=12");
    let mut vm = Vm::start_controlled(&[
        "--kernel",
        kernel,
        "--vcpus",
        "1",
        "--memory",
        &memory,
        "--cmdline",
        &cmdline,
        "--dump-format",
        format,
        "--crash-dir",
        store.arg(),
        "--no-reboot",
    ]);
    let start = vm.expect(|l: &str| l.starts_with("fill: start "), BOOT_TIMEOUT);
    vm.expect(|l: &str| l.starts_with("fill: done "), BOOT_TIMEOUT);
    let from = field(&start, "from=").and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok());
    let from = from.unwrap_or_else(|| panic!("no from= in {start:?}"));

    vm.request_ok(json!({"cmd": "dump"}));
    let ready = vm.wait_event(|e| e.is("vmcore_ready") || e.is("dump_failed"), "vmcore_ready", DUMP_TIMEOUT);
    assert!(ready.is("vmcore_ready"), "{mode}/{format}: {}", ready.body);
    let path = PathBuf::from(ready.str("path").expect("vmcore_ready has a path")).join("vmcore");
    let image = dumpd::image::open(&path).unwrap_or_else(|e| panic!("{mode}/{format}: {}", dumpd::error_chain(&e)));
    assert!(image.phys_end() >= MEMORY_MIB << 20, "{mode}/{format}: memory ends at {:#x}", image.phys_end());

    let (mut filled, mut zero) = (0, 0);
    for gpa in samples(from) {
        let in_guest = read_guest(&mut vm, gpa);
        let mut in_dump = vec![0u8; PAGE as usize];
        if let Err(e) = image.read_phys(gpa, &mut in_dump) {
            panic!("{mode}/{format}: page {gpa:#x} of the vmcore: {e}");
        }
        assert!(in_dump == in_guest, "{mode}/{format}: page {gpa:#x} differs from guest memory");
        if gpa >= from {
            let noise = mode == "full" || (gpa / PAGE).is_multiple_of(2);
            assert_eq!(in_guest.iter().any(|&b| b != 0), noise, "{mode}: page {gpa:#x} is not as the fill left it");
            if noise {
                filled += 1
            } else {
                zero += 1
            }
        }
    }
    assert!(filled > 10 && (mode == "full" || zero > 10), "{mode}: {filled} filled and {zero} zero pages sampled");
}

/// The value after `key` in a `fill:` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key))
}

/// Page addresses to compare: the first pages of RAM and of the fill, the pages on both sides
/// of every 1 MiB boundary (the writer's windows), the last page, and pseudo-random pages.
fn samples(from: u64) -> Vec<u64> {
    let last = (MEMORY_MIB << 20) - PAGE;
    let mut pages = vec![0, from, from + PAGE, last];
    for mib in 1..MEMORY_MIB {
        pages.extend([(mib << 20) - PAGE, mib << 20]);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..RANDOM_SAMPLES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pages.push((x % (MEMORY_MIB << 20)) & !(PAGE - 1));
    }
    pages
}

/// One page of guest memory, over the control socket (16 KiB per request at most).
fn read_guest(vm: &mut Vm, gpa: u64) -> Vec<u8> {
    let reply = vm.request_ok(json!({"cmd": "read_memory", "gpa": gpa, "len": PAGE}));
    let hex = reply["data_hex"].as_str().unwrap_or_else(|| panic!("read_memory at {gpa:#x}: {reply}"));
    assert_eq!(hex.len(), 2 * PAGE as usize, "read_memory at {gpa:#x}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|e| panic!("read_memory at {gpa:#x}: {e}")))
        .collect()
}

#[test]
fn half_filled_guest_dumps_hold_its_memory_in_every_format() {
    for format in ["elf", "kdump-zstd", "kdump-zlib"] {
        dump_and_compare("half", format);
    }
}

#[test]
fn fully_filled_guest_dumps_hold_its_memory_in_every_format() {
    for format in ["elf", "kdump-zstd", "kdump-zlib"] {
        dump_and_compare("full", format);
    }
}
