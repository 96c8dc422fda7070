//! `dumpd convert`, `dumpd check` on kdump files, `dumpd list --json` and `dumpd prune`.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
use dumpd::image::open;
use dumpd::store::{CrashMeta, CrashStore, Trigger, FILE_VMCORE};
use dumpd::writer::write_vmcore;

mod common;
use common::{dumpd, text, Ram, TestDir};

/// 2 MiB of memory at 0 with a marked byte in every 5th page.
fn ram() -> Ram {
    let mut ram = Ram::zeroed(0, 2 << 20);
    for page in (0..512u64).step_by(5) {
        ram.put(page * 4096 + 99, &[page as u8 | 1]);
    }
    ram
}

fn write_elf(path: &Path) {
    let prstatus = [0u8; PRSTATUS_SIZE];
    let notes = [
        NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
        NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"OSRELEASE=6.1.0-cv\nPAGESIZE=4096\n" },
    ];
    let core = layout(&notes, &[LoadSpec { vaddr: 0xffff_8880_0000_0000, paddr: 0, len: 2 << 20 }]).unwrap();
    write_vmcore(&File::create(path).unwrap(), &core.headers, &core.runs, core.file_size, &ram()).unwrap();
}

#[test]
fn convert_round_trips_and_check_reads_kdump_files() {
    let dir = TestDir::new("convert");
    let (elf, kdump, back) = (dir.join("vmcore"), dir.join("vmcore.kdump"), dir.join("vmcore.elf"));
    write_elf(Path::new(&elf));
    let out = dumpd(&["convert", &elf, &kdump, "--format", "kdump-zstd", "--progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2.0 MiB of memory"), "{}", text(&out.stdout));
    // One pass: every page is read once, the 103 non-zero ones compressed.
    let stderr = text(&out.stderr);
    assert!(stderr.lines().last().is_some_and(|l| l == "converting: 2.0 MiB of 2.0 MiB (100%)"), "{stderr}");
    let out = dumpd(&["convert", &kdump, &back, "--format", "elf"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "no progress when stderr is not a terminal: {}", text(&out.stderr));

    let (a, b) = (open(Path::new(&elf)).unwrap(), open(Path::new(&back)).unwrap());
    assert_eq!(a.notes(), b.notes());
    let (mut pa, mut pb) = ([0u8; 4096], [0u8; 4096]);
    for addr in (0..2 << 20).step_by(4096) {
        a.read_phys(addr, &mut pa).unwrap();
        b.read_phys(addr, &mut pb).unwrap();
        assert_eq!(pa, pb, "page {addr:#x}");
    }

    let out = dumpd(&["check", &kdump]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("kdump-compressed (header version 6), zstd, dump level 1"), "{stdout}");
    assert!(stdout.contains("pages: 512 pfns, 512 present, 512 in the file"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("VMCOREINFO") && l.contains("33 bytes")), "{stdout}");
    assert!(stdout.contains("every page decodes"), "{stdout}");
    assert!(stdout.contains("6.1.0-cv"), "{stdout}");
}

#[test]
fn convert_failures_are_clear_and_leave_nothing() {
    let dir = TestDir::new("convert-fail");
    let (elf, out_path) = (dir.join("vmcore"), dir.join("out"));
    write_elf(Path::new(&elf));
    let out = dumpd(&["convert", &elf, &out_path, "--format", "kdump-lzo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("use elf, kdump-zstd, kdump-zlib or kdump-raw"), "{}", text(&out.stderr));
    let out = dumpd(&["convert", &elf, &out_path, "--format", "elf", "--dump-level", "31"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("levels above 1 are for kdump-compressed outputs"), "{}", text(&out.stderr));
    let out = dumpd(&["convert", &elf, &out_path, "--format", "kdump-zstd", "--dump-level", "17"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("its VMCOREINFO locates the free pages"), "{}", text(&out.stderr));
    std::fs::write(dir.0.join("junk"), b"not a vmcore at all").unwrap();
    let out = dumpd(&["convert", &dir.join("junk"), &out_path, "--format", "elf"]);
    assert!(text(&out.stderr).contains("is not a vmcore"), "{}", text(&out.stderr));
    assert!(!Path::new(&out_path).exists());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 2, "no temporary files left");
}

/// Commits a crash of `vm` at `secs` whose vmcore holds `kib` KiB of data.
fn crash(store: &CrashStore, vm: &str, secs: u64, kib: usize) -> String {
    let pending = store.begin(vm).unwrap();
    pending.write_file(FILE_VMCORE, &vec![7u8; kib << 10]).unwrap();
    pending.write_meta(&CrashMeta::new(Trigger::OnDemand, vm, UNIX_EPOCH + Duration::from_secs(secs))).unwrap();
    pending.commit().unwrap().id
}

#[test]
fn list_json_and_prune() {
    let dir = TestDir::new("prune");
    let store = CrashStore::open(&dir.0).unwrap();
    let ids: Vec<String> = (0..3).map(|i| crash(&store, "web-1", 1000 + i, 64)).collect();
    let other = crash(&store, "db", 5000, 64);
    let out = dumpd(&["list", "--json", "--crash-dir", &dir.join("")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0]["vm"], "web-1");
    assert_eq!(list[3]["id"], other.as_str());
    assert_eq!(list[3]["meta"]["trigger"], "on_demand");
    assert!(list[0]["disk_bytes"].as_u64().unwrap() >= 64 << 10);

    let out = dumpd(&["prune", "--crash-dir", &dir.join("")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("give --max-per-vm N and/or --max-total-bytes BYTES"));
    let out = dumpd(&["prune", "--crash-dir", &dir.join(""), "--max-per-vm", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("removed {}", ids[0])), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("1 crashes removed"), "{}", text(&out.stdout));
    let out = dumpd(&["prune", "--crash-dir", &dir.join(""), "--max-total-bytes", "100K"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let left: Vec<String> = store.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(left, [other], "only the newest fits in 100 KiB");
    let out = dumpd(&["list", "--json", "--crash-dir", &dir.join("empty")]);
    assert_eq!(out.status.code(), Some(1));
}
