//! The `dumpd` command line on a crash store and a vmcore made with the library.

use std::path::{Path, PathBuf};

use crashvisor_klib::elfnote::{NT_PRSTATUS, PRSTATUS_SIZE};
use dumpd::elf::build::{layout, LoadSpec, NoteSpec};
use dumpd::store::{CrashReasonMeta, CrashStore, Trigger, FILE_META, FILE_VMCORE};
use dumpd::writer::write_vmcore;

mod common;
use common::{dumpd, text, Ram, TestDir};

/// Commits one kdump crash of VM `web-1` into `store` and returns the vmcore's path.
fn make_crash(store: &Path) -> PathBuf {
    let prstatus = [0u8; PRSTATUS_SIZE];
    let notes = [
        NoteSpec { name: b"CORE", n_type: NT_PRSTATUS, desc: &prstatus },
        NoteSpec { name: b"VMCOREINFO", n_type: 0, desc: b"PAGESIZE=4096\n" },
    ];
    let core = layout(&notes, &[LoadSpec { vaddr: 0xffff_8880_0010_0000, paddr: 0x10_0000, len: 0x10_0000 }]).unwrap();
    let mut ram = Ram::zeroed(0x10_0000, 0x10_0000);
    ram.put(0x10_5000, &[1]);
    let store = CrashStore::open(store).unwrap();
    let pending = store.begin("web-1").unwrap();
    let file = pending.create_file(FILE_VMCORE).unwrap();
    let stats = write_vmcore(&file, &core.headers, &core.runs, core.file_size, &ram).unwrap();
    let mut meta = dumpd::store::CrashMeta::new(Trigger::Kdump, "web-1", pending.created());
    meta.sizes.vmcore_apparent_bytes = stats.apparent_bytes;
    meta.reason = Some(CrashReasonMeta {
        detector: "softlockup".into(),
        cpu: 1,
        pid: 42,
        comm: "spin".into(),
        message: "softlockup: hung tasks".into(),
    });
    pending.write_meta(&meta).unwrap();
    pending.commit().unwrap().path.join(FILE_VMCORE)
}

#[test]
fn list_shows_committed_crashes_only() {
    let dir = TestDir::new("list");
    let vmcore = make_crash(&dir.0);
    std::fs::create_dir(dir.0.join(".tmp-web-1-1-0")).unwrap();
    let out = dumpd(&["list", "--crash-dir", dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let id = vmcore.parent().unwrap().file_name().unwrap().to_str().unwrap();
    assert!(lines[1].starts_with(id), "{stdout}");
    assert!(lines[1].contains("kdump") && lines[1].contains("softlockup"), "{stdout}");
    assert!(lines[1].contains("1.0 MiB"), "{stdout}");
    // Without meta.json a crash is still listed, marked unreadable.
    std::fs::remove_file(vmcore.with_file_name(FILE_META)).unwrap();
    assert!(text(&dumpd(&["list", "--crash-dir", dir.0.to_str().unwrap()]).stdout).contains("no readable meta.json"));
}

#[test]
fn list_of_a_missing_store_is_a_clear_error() {
    let out = dumpd(&["list", "--crash-dir", "/nonexistent/crash-store"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/crash-store is not a crash store"), "{}", text(&out.stderr));
    let empty = TestDir::new("empty");
    std::fs::create_dir_all(&empty.0).unwrap();
    let out = dumpd(&["list", "--crash-dir", empty.0.to_str().unwrap()]);
    assert!(text(&out.stdout).starts_with("no crashes in"), "{}", text(&out.stdout));
}

#[test]
fn check_prints_notes_and_loads() {
    let dir = TestDir::new("check");
    let vmcore = make_crash(&dir.0);
    let out = dumpd(&["check", vmcore.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("notes: 2"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("CORE") && l.contains("NT_PRSTATUS") && l.contains("336 bytes")));
    assert!(stdout.lines().any(|l| l.contains("VMCOREINFO") && l.contains("14 bytes")), "{stdout}");
    assert!(stdout.contains("PT_LOAD: 1 segments, 1.0 MiB of memory"), "{stdout}");
    assert!(stdout.contains("file offsets 0x2000-0x102000"), "{stdout}");
}

#[test]
fn check_rejects_damaged_files_clearly() {
    let dir = TestDir::new("damaged");
    let vmcore = make_crash(&dir.0);
    let bytes = std::fs::read(&vmcore).unwrap();
    let cut = dir.0.join("cut");
    std::fs::write(&cut, &bytes[..0x1800]).unwrap();
    let out = dumpd(&["check", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is truncated"), "{}", text(&out.stderr));
    std::fs::write(&cut, &bytes[..100]).unwrap();
    let out = dumpd(&["check", cut.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("is not a vmcore"), "{}", text(&out.stderr));
    let mut exec = bytes.clone();
    exec[16] = 2;
    std::fs::write(&cut, &exec).unwrap();
    let out = dumpd(&["check", cut.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("e_type is 0x2, expected 4 (ET_CORE)"), "{}", text(&out.stderr));
    let out = dumpd(&["check", "/nonexistent/vmcore"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open /nonexistent/vmcore"), "{}", text(&out.stderr));
}

#[test]
fn help_and_usage() {
    let out = dumpd(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    for word in ["list", "check", "--print-crash-dir"] {
        assert!(text(&out.stdout).contains(word), "{}", text(&out.stdout));
    }
    assert_eq!(dumpd(&[]).status.code(), Some(2));
    assert_eq!(dumpd(&["frobnicate"]).status.code(), Some(2));
}
