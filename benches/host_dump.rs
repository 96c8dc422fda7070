//! Host-side dump benchmark: how long the vCPUs stop, how long the whole dump takes, the
//! throughput and the file size, for 256 MiB and 1 GiB guests in ELF and kdump-zstd — next to
//! QEMU's `dump-guest-memory` of the same guest kernel (`-M microvm`, QEMU from Debian).
//!
//!     cargo build --release --workspace && cargo bench -p crashvisor-benches --bench host_dump
//!
//! Each run boots a fresh 2-vCPU guest to its shell, then asks for a dump (`{"cmd":"dump"}` on
//! the control socket; QMP's `dump-guest-memory` for QEMU) and times it from the request to the
//! committed crash directory (`vmcore_ready`; QEMU: the command's return). The guest is idle
//! and most of its RAM untouched, as in a small test VM: zero pages dominate, which the ELF
//! writer leaves as holes and kdump formats leave out. QEMU keeps the vCPUs stopped for its
//! whole dump (its pause = its total); QEMU 7.2 has no kdump-zstd, so its kdump-zlib is shown.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crashvisor_benches::{median, release_binary};
use crashvisor_tests::kdump::extract_guest_kernel;
use crashvisor_tests::{Event, TempDir, Vm, BOOT_TIMEOUT};
use serde_json::{json, Value};

const RUNS: usize = 3;
const SIZES_MIB: [u64; 2] = [256, 1024];
const DUMP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy)]
struct Sample {
    pause: Duration,
    total: Duration,
    apparent: u64,
    on_disk: u64,
}

fn crashvisor_dump(memory_mib: u64, format: &str) -> Sample {
    let store = TempDir::new("bench-host-dump");
    let memory = memory_mib.to_string();
    let mut vm = Vm::start_controlled(&[
        "--vcpus",
        "2",
        "--memory",
        &memory,
        "--crash-dir",
        store.arg(),
        "--dump-format",
        format,
    ]);
    vm.wait_event(|e: &Event| e.is("booted"), "booted", BOOT_TIMEOUT);
    let asked = vm.request_stamped(json!({"cmd": "dump"}));
    let taken = vm.wait_event(|e: &Event| e.is("snapshot_taken"), "snapshot_taken", DUMP_TIMEOUT);
    let ready = vm.wait_event(|e: &Event| e.is("vmcore_ready"), "vmcore_ready", DUMP_TIMEOUT);
    let path = Path::new(ready.str("path").expect("a path")).join("vmcore");
    let meta = std::fs::metadata(&path).expect("the vmcore exists");
    Sample {
        pause: Duration::from_micros(taken.u64("pause_us").unwrap_or(0)),
        total: ready.at - asked.at,
        apparent: meta.len(),
        on_disk: meta.blocks() * 512,
    }
}

/// A QEMU microvm running the guest kernel, with a QMP socket.
struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
    _dir: TempDir,
}

impl Qemu {
    fn start(kernel: &Path, memory_mib: u64) -> Self {
        let dir = TempDir::new("bench-qemu");
        let socket = dir.path().join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-smp", "2", "-nographic"])
            .args(["-m", &memory_mib.to_string(), "-kernel"])
            .arg(kernel)
            .args(["-append", "console=ttyS0", "-qmp"])
            .arg(format!("unix:{},server,nowait", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs (apt-get install qemu-system-x86)");
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("QEMU's QMP socket: {e}"),
            }
        };
        let mut qemu = Self { child, qmp: BufReader::new(stream), _dir: dir };
        let mut greeting = String::new();
        qemu.qmp.read_line(&mut greeting).expect("the QMP greeting");
        qemu.execute(json!({"execute": "qmp_capabilities"}));
        // Let the guest reach its shell, as the crashvisor runs do.
        std::thread::sleep(Duration::from_secs(2));
        qemu
    }

    fn execute(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.qmp.get_mut().write_all(line.as_bytes()).expect("QMP write");
        loop {
            let mut reply = String::new();
            self.qmp.read_line(&mut reply).expect("QMP read");
            let reply: Value = serde_json::from_str(&reply).expect("QMP speaks JSON");
            if reply.get("return").is_some() || reply.get("error").is_some() {
                assert!(reply.get("error").is_none(), "QMP {command}: {reply}");
                return reply;
            }
        }
    }

    fn dump(&mut self, format: &str, path: &Path) -> Sample {
        let started = Instant::now();
        let arguments = json!({"paging": false, "protocol": format!("file:{}", path.display()), "format": format});
        self.execute(json!({"execute": "dump-guest-memory", "arguments": arguments}));
        let total = started.elapsed();
        let meta = std::fs::metadata(path).expect("QEMU wrote the dump");
        Sample { pause: total, total, apparent: meta.len(), on_disk: meta.blocks() * 512 }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_dump(kernel: &Path, memory_mib: u64, format: &str) -> Sample {
    let mut qemu = Qemu::start(kernel, memory_mib);
    let out = TempDir::new("bench-qemu-dump");
    qemu.dump(format, &out.path().join("vmcore"))
}

fn summary(samples: &[Sample], memory_mib: u64) -> (f64, f64, f64, Sample) {
    let mut pause: Vec<f64> = samples.iter().map(|s| s.pause.as_secs_f64() * 1000.0).collect();
    let mut total: Vec<f64> = samples.iter().map(|s| s.total.as_secs_f64() * 1000.0).collect();
    let (pause, total) = (median(&mut pause), median(&mut total));
    let mb_per_s = memory_mib as f64 * 1.048_576 / (total / 1000.0);
    (pause, total, mb_per_s, samples[samples.len() - 1])
}

fn print_row(who: &str, format: &str, memory_mib: u64, samples: &[Sample]) -> f64 {
    let (pause, total, mb_per_s, last) = summary(samples, memory_mib);
    println!(
        "{who:>10} {format:>10} {memory_mib:>6}M | {pause:>10.3} {total:>10.1} {mb_per_s:>9.0} | {:>10.1} {:>10.1}",
        last.apparent as f64 / (1 << 20) as f64,
        last.on_disk as f64 / (1 << 20) as f64,
    );
    total
}

fn main() {
    release_binary("vmm"); // exits with instructions if it has not been built
    let kernel = extract_guest_kernel();
    println!("host-side dump of an idle 2-vCPU guest; medians of {RUNS} runs");
    println!(
        "{:>10} {:>10} {:>7} | {:>10} {:>10} {:>9} | {:>10} {:>10}",
        "", "format", "memory", "pause ms", "total ms", "MB/s", "file MiB", "disk MiB"
    );
    for memory_mib in SIZES_MIB {
        let ours: Vec<Sample> = (0..RUNS).map(|_| crashvisor_dump(memory_mib, "elf")).collect();
        let ours_elf = print_row("crashvisor", "elf", memory_mib, &ours);
        let ours: Vec<Sample> = (0..RUNS).map(|_| crashvisor_dump(memory_mib, "kdump-zstd")).collect();
        print_row("crashvisor", "kdump-zstd", memory_mib, &ours);
        let qemu: Vec<Sample> = (0..RUNS).map(|_| qemu_dump(kernel.path(), memory_mib, "elf")).collect();
        let qemu_elf = print_row("qemu", "elf", memory_mib, &qemu);
        let qemu: Vec<Sample> = (0..RUNS).map(|_| qemu_dump(kernel.path(), memory_mib, "kdump-zlib")).collect();
        print_row("qemu", "kdump-zlib", memory_mib, &qemu);
        println!("{:>29} elf: QEMU takes {:.1}x as long", "", qemu_elf / ours_elf);
    }
}
