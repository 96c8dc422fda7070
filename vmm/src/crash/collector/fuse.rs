//! A read-only FUSE filesystem holding one file whose bytes the VMM computes on demand: how a
//! core collector on the host reads the crashed kernel's `/proc/vmcore` straight from guest
//! memory, nothing copied first. Speaks the kernel's FUSE protocol on `/dev/fuse` itself
//! (`include/uapi/linux/fuse.h`, protocol 7.x) — no libfuse, no `fusermount`; mounting needs
//! `CAP_SYS_ADMIN`.
//!
//! The directory holds one regular file (inode 2), read-only for the mounting user; the kernel
//! caches what it read (`FOPEN_KEEP_CACHE`) so `mmap` works, as makedumpfile uses it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The file's contents, read by offset.
pub trait ServedFile {
    /// The file's size.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset` (the caller keeps `offset + buf.len()` within
    /// the size).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// `FUSE_ROOT_ID` and the one file's inode.
const ROOT: u64 = 1;
const FILE: u64 = 2;

/// Opcodes answered (`enum fuse_opcode`).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;

/// The protocol major version spoken, and the minor version the replies are laid out for
/// (`fuse_init_out` is 64 bytes from 7.23 on).
const KERNEL_VERSION: u32 = 7;
const MINOR_VERSION: u32 = 31;
/// `FUSE_ASYNC_READ` and `FUSE_MAX_PAGES` (then `max_pages` says how large a read may be).
const INIT_FLAGS: u32 = 1 | 1 << 22;
/// Largest read the kernel sends: 256 pages.
const MAX_PAGES: u16 = 256;
const MAX_READ: usize = MAX_PAGES as usize * 4096;
/// A request buffer: the largest read's header room, as the kernel requires at least
/// `max_write` + a page.
const REQUEST_BUFFER: usize = MAX_READ + 4096;
/// `FOPEN_KEEP_CACHE`: keep the page cache between opens (the contents never change).
const FOPEN_KEEP_CACHE: u32 = 2;
/// How long attributes and the name may be cached: the whole life of the mount.
const CACHE_SECS: u64 = 3600;
/// `fuse_in_header` and `fuse_out_header` sizes.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// How often the server looks at its stop flag while no request comes.
const POLL_MS: i32 = 100;

/// A mounted one-file filesystem; unmounted when dropped.
#[derive(Debug)]
pub struct FuseMount {
    device: File,
    dir: PathBuf,
    name: String,
}

impl FuseMount {
    /// Mounts an empty filesystem on `dir` (an existing directory) whose one file will be
    /// `name`. Requests wait in the kernel until [`serve`](Self::serve) answers them.
    pub fn mount(dir: &Path, name: &str) -> io::Result<Self> {
        let device = OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let options =
            format!("fd={},rootmode=40000,user_id={uid},group_id={gid},max_read={MAX_READ}", device.as_raw_fd());
        let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let (source, target, fstype, data) =
            (c(b"crashvisor")?, c(dir.as_os_str().as_bytes())?, c(b"fuse")?, c(options.as_bytes())?);
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { device, dir: dir.to_path_buf(), name: name.to_owned() })
    }

    /// The file's path.
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Answers requests with `file`'s bytes until `stop` is set and no request is waiting, or
    /// the filesystem goes away.
    pub fn serve(&self, file: &dyn ServedFile, stop: &AtomicBool) -> io::Result<()> {
        let mut buf = vec![0u8; REQUEST_BUFFER];
        loop {
            let mut poll = libc::pollfd { fd: self.device.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, POLL_MS) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                continue;
            }
            let len = match (&self.device).read(&mut buf) {
                Ok(len) => len,
                // ENOENT: the request was interrupted before it was read.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR | libc::EAGAIN)) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(request) = Request::parse(&buf[..len]) else { continue };
            match self.answer(&request, file) {
                Answer::None => {}
                Answer::Done => return Ok(()),
                Answer::Reply(reply) => self.send(request.unique, reply)?,
            }
        }
    }

    fn answer(&self, request: &Request<'_>, file: &dyn ServedFile) -> Answer {
        let reply = match (request.opcode, request.node) {
            (INIT, _) => init(request.body),
            (LOOKUP, ROOT) if request.body.split(|&b| b == 0).next() == Some(self.name.as_bytes()) => {
                Ok(entry(file.size()))
            }
            (LOOKUP, _) => Err(libc::ENOENT),
            (GETATTR, ROOT) => Ok(attr_out(&attr(ROOT, 0))),
            (GETATTR, FILE) => Ok(attr_out(&attr(FILE, file.size()))),
            (OPEN, FILE) if request.u32_at(0) & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 => Err(libc::EACCES),
            (OPEN, FILE) => Ok(open_out(FOPEN_KEEP_CACHE)),
            (OPENDIR, ROOT) => Ok(open_out(0)),
            (READDIR, ROOT) => Ok(readdir(request.u64_at(8), &self.name)),
            (READ, FILE) => read(file, request.u64_at(8), request.u32_at(16)),
            (RELEASE | RELEASEDIR | FLUSH, _) => Ok(Vec::new()),
            (FORGET | BATCH_FORGET | INTERRUPT, _) => return Answer::None,
            (DESTROY, _) => return Answer::Done,
            (GETATTR | OPEN | OPENDIR | READDIR | READ, _) => Err(libc::ENOENT),
            _ => Err(libc::ENOSYS),
        };
        Answer::Reply(reply)
    }

    fn send(&self, unique: u64, reply: Result<Vec<u8>, i32>) -> io::Result<()> {
        let (error, body) = match reply {
            Ok(body) => (0, body),
            Err(errno) => (-errno, Vec::new()),
        };
        let mut message = Vec::with_capacity(OUT_HEADER + body.len());
        message.extend_from_slice(&((OUT_HEADER + body.len()) as u32).to_le_bytes());
        message.extend_from_slice(&error.to_le_bytes());
        message.extend_from_slice(&unique.to_le_bytes());
        message.extend_from_slice(&body);
        match (&self.device).write(&message) {
            // The request was interrupted meanwhile: nobody waits for the answer.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

/// Unmounts the filesystem on `dir`, lazily: a reader still holding a file gets errors once the
/// device closes, never a hang. Nothing mounted there is fine.
pub fn unmount(dir: &Path) {
    let Ok(target) = CString::new(dir.as_os_str().as_bytes()) else { return };
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            tracing::warn!("cannot unmount {}: {error}", dir.display());
        }
    }
}

enum Answer {
    /// No reply (FORGET, INTERRUPT).
    None,
    /// The kernel is done with the filesystem.
    Done,
    /// The reply body, or an errno.
    Reply(Result<Vec<u8>, i32>),
}

/// One request: its header's fields and its body.
struct Request<'a> {
    opcode: u32,
    unique: u64,
    node: u64,
    body: &'a [u8],
}

impl<'a> Request<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        let header = bytes.get(..IN_HEADER)?;
        let le32 = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let le64 = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let len = (le32(0) as usize).min(bytes.len());
        Some(Self { opcode: le32(4), unique: le64(8), node: le64(16), body: bytes.get(IN_HEADER..len)? })
    }

    /// A little-endian field of the body (0 past its end: a shorter struct of an older kernel).
    fn u32_at(&self, at: usize) -> u32 {
        self.body.get(at..at + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64_at(&self, at: usize) -> u64 {
        self.body.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Little-endian writer for reply structs.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// `fuse_init_out` for the kernel's `fuse_init_in`.
fn init(body: &[u8]) -> Result<Vec<u8>, i32> {
    let field = |at: usize| body.get(at..at + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let (major, minor, max_readahead, flags) = (field(0), field(4), field(8), field(12));
    if major != KERNEL_VERSION {
        return Err(libc::EPROTO);
    }
    let out = Out::default()
        .u32(KERNEL_VERSION)
        .u32(minor.min(MINOR_VERSION))
        .u32(max_readahead)
        .u32(flags & INIT_FLAGS)
        .u16(16) // max_background
        .u16(12) // congestion_threshold
        .u32(MAX_READ as u32) // max_write (nothing is written)
        .u32(1) // time_gran
        .u16(MAX_PAGES)
        .u16(0) // map_alignment
        .bytes(&[0; 32]); // flags2, unused
    Ok(out.0)
}

/// `fuse_attr` of the root directory (`size` 0) or the file.
fn attr(node: u64, size: u64) -> Vec<u8> {
    let mode = if node == ROOT { libc::S_IFDIR | 0o500 } else { libc::S_IFREG | 0o400 };
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Out::default()
        .u64(node)
        .u64(size)
        .u64(size.div_ceil(512))
        .bytes(&[0; 36]) // atime, mtime, ctime and their nanoseconds
        .u32(mode)
        .u32(if node == ROOT { 2 } else { 1 })
        .u32(uid)
        .u32(gid)
        .u32(0) // rdev
        .u32(4096) // blksize
        .u32(0) // flags
        .0
}

/// `fuse_entry_out` for the file.
fn entry(size: u64) -> Vec<u8> {
    Out::default().u64(FILE).u64(0).u64(CACHE_SECS).u64(CACHE_SECS).u32(0).u32(0).bytes(&attr(FILE, size)).0
}

/// `fuse_attr_out`.
fn attr_out(attr: &[u8]) -> Vec<u8> {
    Out::default().u64(CACHE_SECS).u32(0).u32(0).bytes(attr).0
}

/// `fuse_open_out`.
fn open_out(open_flags: u32) -> Vec<u8> {
    Out::default().u64(0).u32(open_flags).u32(0).0
}

/// The directory's entries from `offset`: the one file (`fuse_dirent`, padded to 8 bytes).
fn readdir(offset: u64, name: &str) -> Vec<u8> {
    if offset > 0 {
        return Vec::new();
    }
    let mut out =
        Out::default().u64(FILE).u64(1).u32(name.len() as u32).u32(u32::from(libc::DT_REG)).bytes(name.as_bytes());
    out.0.resize(out.0.len().next_multiple_of(8), 0);
    out.0
}

/// The file's bytes for `fuse_read_in` (`offset`, `size`): fewer at its end.
fn read(file: &dyn ServedFile, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
    let end = offset.saturating_add(u64::from(size).min(MAX_READ as u64)).min(file.size());
    let mut data = vec![0u8; end.saturating_sub(offset) as usize];
    match file.read_at(offset, &mut data) {
        Ok(()) => Ok(data),
        Err(e) => {
            tracing::warn!("cannot serve {} bytes of the vmcore at {offset:#x}: {e}", data.len());
            Err(libc::EIO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pattern(u64);

    impl ServedFile for Pattern {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((offset + i as u64) % 251) as u8;
            }
            Ok(())
        }
    }

    #[test]
    fn replies_are_laid_out_as_fuse_h_says() {
        let mut init_in = Vec::new();
        for v in [7u32, 38, 128 << 10, u32::MAX] {
            init_in.extend_from_slice(&v.to_le_bytes());
        }
        let out = init(&init_in).unwrap();
        assert_eq!(out.len(), 64, "fuse_init_out");
        assert_eq!(&out[..16], [7u32, 31, 128 << 10, INIT_FLAGS].map(u32::to_le_bytes).concat());
        assert_eq!(init(&[6, 0, 0, 0]), Err(libc::EPROTO));
        assert_eq!(attr(FILE, 5000).len(), 88, "fuse_attr");
        assert_eq!(entry(5000).len(), 128, "fuse_entry_out");
        assert_eq!(attr_out(&attr(FILE, 1)).len(), 104, "fuse_attr_out");
        assert_eq!(open_out(0).len(), 16, "fuse_open_out");
        let dirent = readdir(0, "vmcore");
        assert_eq!(dirent.len(), 32);
        assert_eq!(&dirent[24..30], b"vmcore");
        assert!(readdir(1, "vmcore").is_empty());
    }

    #[test]
    fn reads_stop_at_the_end_of_the_file() {
        let file = Pattern(10_000);
        assert_eq!(read(&file, 9_990, 4096).unwrap(), (9_990..10_000).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        assert!(read(&file, 20_000, 4096).unwrap().is_empty());
        assert_eq!(read(&file, 0, u32::MAX).unwrap().len(), 10_000);
    }

    /// Mounts a real FUSE filesystem and reads the file through the kernel. Needs what the VMM
    /// needs to run a core collector (root, /dev/fuse): fails, never skips, without them.
    #[test]
    fn serves_a_file_through_the_kernel() {
        let dir = std::env::temp_dir().join(format!("vmm-fuse-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mount = FuseMount::mount(&dir, "vmcore").unwrap_or_else(|e| {
            panic!(
                "cannot mount FUSE at {} ({e}): the core collector serves /proc/vmcore through \
                 /dev/fuse and needs CAP_SYS_ADMIN; run as root, and load the fuse module \
                 (`modprobe fuse`) or pass the device to the container (.ci/run checks this)",
                dir.display()
            )
        });
        let file = Pattern(3 << 20);
        let stop = AtomicBool::new(false);
        let path = mount.file_path();
        let contents = std::thread::scope(|s| {
            let server = s.spawn(|| mount.serve(&file, &stop));
            let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["vmcore"]);
            assert!(std::fs::read(dir.join("other")).is_err());
            assert!(std::fs::OpenOptions::new().write(true).open(&path).is_err(), "read-only");
            let contents = std::fs::read(&path).unwrap();
            stop.store(true, Ordering::Release);
            server.join().unwrap().unwrap();
            contents
        });
        let mut expected = vec![0u8; 3 << 20];
        file.read_at(0, &mut expected).unwrap();
        assert!(contents == expected);
        drop(mount);
        std::fs::remove_dir(&dir).unwrap();
    }
}
