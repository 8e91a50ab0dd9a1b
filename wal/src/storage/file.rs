//! Real segment files: preallocated, zeroed with 4 KiB writes, mapped with memmap2.

use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use super::{SegmentFile, Storage};
use crate::error::WalError;
use crate::lock::{DirLock, LockMode};
use crate::sync::uring::UringSync;
use crate::SyncBackend;

/// The page size the zero-fill and the shadow's prefault assume.
const PAGE_BYTES: usize = 4096;

/// Zero-fill write size. It must stay one page: zero-filling with large writes makes the
/// page cache use large folios, and every later 4 KiB msync then wrote about 1 MB
/// (567 µs instead of 71 µs, measured on this project's VM).
pub const ZERO_FILL_WRITE_BYTES: usize = PAGE_BYTES;

/// A directory of real segment files with one of the three sync backends.
pub struct FileStorage {
    dir: PathBuf,
    backend: SyncBackend,
    /// Present exactly when `backend` is `IoUring`.
    uring: Option<UringSync>,
    /// The shadow of the last sealed segment, kept for the next one (io_uring only).
    shadow_spare: Option<Box<[u8]>>,
    /// The directory's exclusive lock, held while the storage lives (`lock.rs`).
    _lock: DirLock,
}

impl FileStorage {
    /// Opens an existing segment for writing (and reading, when `read`), with its
    /// length; errors name the file.
    fn open_existing(&self, name: &str, read: bool) -> Result<(PathBuf, File, u64), WalError> {
        let path = self.path_of(name);
        let file = OpenOptions::new()
            .read(read)
            .write(true)
            .open(&path)
            .map_err(|error| WalError::io(&path, "open", error))?;
        let length = file
            .metadata()
            .map_err(|error| WalError::io(&path, "stat", error))?
            .len();
        Ok((path, file, length))
    }

    /// Opens (creating it if needed) the log directory and locks it exclusively; a
    /// directory another process has open fails with `WalError::Locked`. For `IoUring`
    /// the ring is probed here; if that fails the storage uses `Fdatasync` and the
    /// reason is returned.
    pub fn open(
        dir: &Path,
        requested: SyncBackend,
    ) -> Result<(FileStorage, Option<String>), WalError> {
        fs::create_dir_all(dir).map_err(|error| WalError::io(dir, "create directory", error))?;
        if !dir.is_dir() {
            return Err(WalError::NotAWal {
                path: dir.to_owned(),
                reason: "not a directory",
            });
        }
        let lock = DirLock::acquire(dir, LockMode::Exclusive)?;
        let (backend, uring, fallback_reason) = choose_backend(requested, UringSync::probe);
        Ok((
            FileStorage {
                dir: dir.to_owned(),
                backend,
                uring,
                shadow_spare: None,
                _lock: lock,
            },
            fallback_reason,
        ))
    }

    /// The backend in use after the io_uring probe.
    pub fn backend(&self) -> SyncBackend {
        self.backend
    }

    fn sync_directory(&self) -> Result<(), WalError> {
        let directory = File::open(&self.dir)
            .map_err(|error| WalError::io(&self.dir, "open directory", error))?;
        directory
            .sync_all()
            .map_err(|error| WalError::io(&self.dir, "fsync directory", error))
    }
}

impl Storage for FileStorage {
    type Segment = FileSegment;

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn list(&mut self) -> Result<Vec<String>, WalError> {
        list_names(&self.dir)
    }

    fn create_zeroed(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        let path = self.path_of(name);
        let file = create_preallocated(&path, bytes)?;
        zero_fill(&file, bytes).map_err(|error| WalError::io(&path, "zero-fill", error))?;
        file.sync_all()
            .map_err(|error| WalError::io(&path, "fsync", error))?;
        self.sync_directory()
    }

    fn create_allocated(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        create_preallocated(&self.path_of(name), bytes).map(drop)
    }

    fn zero_part(
        &mut self,
        name: &str,
        offset: u64,
        bytes_max: u64,
    ) -> Result<Option<u64>, WalError> {
        let (path, file, length) = self.open_existing(name, false)?;
        let start = offset.min(length);
        let end = start.saturating_add(bytes_max).min(length);
        zero_fill_range(&file, start..end)
            .map_err(|error| WalError::io(&path, "zero-fill", error))?;
        if end < length {
            start_writeback(&file, start..end);
            return Ok(Some(end));
        }
        file.sync_data()
            .map_err(|error| WalError::io(&path, "fdatasync", error))?;
        Ok(None)
    }

    fn extend(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        let (path, file, length) = self.open_existing(name, false)?;
        if length >= bytes {
            return Ok(());
        }
        preallocate(&file, bytes).map_err(|error| WalError::io(&path, "fallocate", error))?;
        zero_fill_range(&file, length..bytes)
            .map_err(|error| WalError::io(&path, "zero-fill", error))?;
        file.sync_all()
            .map_err(|error| WalError::io(&path, "fsync", error))
    }

    fn open(&mut self, name: &str) -> Result<FileSegment, WalError> {
        let (path, file, bytes) = self.open_existing(name, true)?;
        // SAFETY: the log directory belongs to this `Wal` alone (documented on `Wal`):
        // no other process truncates or rewrites the file while it is mapped, and the
        // log never shrinks a mapped segment.
        let map = unsafe { MmapOptions::new().len(bytes as usize).map_mut(&file) }
            .map_err(|error| WalError::io(&path, "mmap", error))?;
        Ok(FileSegment {
            file,
            map,
            shadow: None,
            path,
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), WalError> {
        let from_path = self.path_of(from);
        fs::rename(&from_path, self.path_of(to))
            .map_err(|error| WalError::io(&from_path, "rename", error))?;
        self.sync_directory()
    }

    fn remove(&mut self, name: &str) -> Result<(), WalError> {
        let path = self.path_of(name);
        fs::remove_file(&path).map_err(|error| WalError::io(&path, "remove", error))?;
        self.sync_directory()
    }

    fn sync_submit(
        &mut self,
        segment: &mut FileSegment,
        range: Range<u64>,
    ) -> Result<(), WalError> {
        debug_assert!(range.start <= range.end && range.end <= segment.map.len() as u64);
        let path = &segment.path;
        match (self.backend, self.uring.as_mut()) {
            (SyncBackend::Msync, _) => segment
                .map
                .flush_range(range.start as usize, (range.end - range.start) as usize)
                .map_err(|error| WalError::io(path, "msync", error)),
            (SyncBackend::IoUring, Some(uring)) => {
                let source = segment.shadow.as_deref().unwrap_or(&segment.map[..]);
                let window = &source[range.start as usize..range.end as usize];
                // SAFETY: `window` lies in the shadow (or the mapping), which the segment
                // owns and keeps until `Wal` has called `sync_wait`: the log waits before
                // it seals, drops or rolls a segment, and in `Drop`. Appends only write
                // bytes after `range.end`, so the window stays unmodified.
                unsafe {
                    uring.submit(
                        segment.file.as_raw_fd(),
                        window.as_ptr(),
                        window.len() as u32,
                        range.start,
                    )
                }
                .map_err(|error| WalError::io(path, "io_uring submit", error))
            }
            _ => segment
                .file
                .sync_data()
                .map_err(|error| WalError::io(path, "fdatasync", error)),
        }
    }

    fn begin_appends(&mut self, segment: &mut FileSegment, written_bytes: u64) {
        if self.backend != SyncBackend::IoUring {
            return;
        }
        let length = segment.map.len();
        // Reuse the last sealed segment's shadow: its pages are already faulted in, so a
        // new segment costs no page faults. Its stale bytes lie past `written_bytes`,
        // where the log never reads or syncs before it has appended over them.
        let mut shadow = match self.shadow_spare.take() {
            Some(shadow) if shadow.len() == length => shadow,
            _ => prefaulted_zeroes(length),
        };
        let written = written_bytes as usize;
        shadow[..written].copy_from_slice(&segment.map[..written]);
        segment.shadow = Some(shadow);
    }

    fn seal(&mut self, segment: &mut FileSegment) {
        // Every shadow byte the log appended has been written to the file and synced, so
        // the mapping (the same page cache) shows the same bytes from now on.
        if let Some(shadow) = segment.shadow.take() {
            self.shadow_spare = Some(shadow);
        }
    }

    fn sync_all(&mut self, segment: &mut FileSegment) -> Result<(), WalError> {
        segment
            .file
            .sync_data()
            .map_err(|error| WalError::io(&segment.path, "fdatasync", error))
    }

    fn sync_pending(&self) -> bool {
        self.uring.as_ref().is_some_and(UringSync::pending)
    }

    fn sync_wait(&mut self) -> Result<(), WalError> {
        match self.uring.as_mut() {
            Some(uring) => uring
                .wait()
                .map_err(|error| WalError::io(&self.dir, "io_uring write+fdatasync", error)),
            None => Ok(()),
        }
    }
}

/// A mapped segment. With the io_uring backend, appends go to an anonymous shadow of the
/// active segment and reach the file through io_uring writes, so the write that is linked
/// to the fdatasync is the one that carries the data; the mapping serves sealed segments.
pub struct FileSegment {
    file: File,
    map: MmapMut,
    /// The active segment's bytes under the io_uring backend; `None` otherwise.
    shadow: Option<Box<[u8]>>,
    path: PathBuf,
}

impl SegmentFile for FileSegment {
    fn bytes(&self) -> &[u8] {
        self.shadow.as_deref().unwrap_or(&self.map[..])
    }

    fn bytes_mut(&mut self, range: Range<u64>) -> &mut [u8] {
        let range = range.start as usize..range.end as usize;
        match self.shadow.as_deref_mut() {
            Some(shadow) => &mut shadow[range],
            None => &mut self.map[range],
        }
    }
}

/// A zeroed shadow of `length` bytes with every page already faulted in. The first
/// shadow is made when the log opens (`Wal::open` activates or reopens its segment) and
/// later segments reuse it (`seal`), so without this the first segment's appends take
/// one page fault per 4 KiB, under load, until the first roll: a cost that scales with
/// the bytes a protocol logs (3PC's PRE-COMMIT records pay it too). The price: 0.3-0.5
/// s more to open seven logs of 64 MiB segments on this project's VM (README, issue 14
/// goal 4).
fn prefaulted_zeroes(length: usize) -> Box<[u8]> {
    let mut shadow = vec![0u8; length].into_boxed_slice();
    for byte in shadow.iter_mut().step_by(PAGE_BYTES) {
        // SAFETY: `byte` is a valid, exclusive reference into the shadow. The write is
        // volatile only so that it is not elided as a store of zeros into memory the
        // allocator returned zeroed, which is exactly what makes it useful.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    shadow
}

/// The backend to use: `requested`, unless it is `IoUring` and `probe` fails, in which
/// case `Fdatasync` and the probe's reason.
fn choose_backend(
    requested: SyncBackend,
    probe: impl FnOnce() -> Result<UringSync, String>,
) -> (SyncBackend, Option<UringSync>, Option<String>) {
    match requested {
        SyncBackend::IoUring => match probe() {
            Ok(uring) => (SyncBackend::IoUring, Some(uring), None),
            Err(reason) => (SyncBackend::Fdatasync, None, Some(reason)),
        },
        other => (other, None, None),
    }
}

/// File names in `dir`.
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>, WalError> {
    let entries = fs::read_dir(dir).map_err(|error| WalError::io(dir, "read directory", error))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| WalError::io(dir, "read directory", error))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Maps a file read-only, for tools that must not modify the log.
pub(crate) fn map_read_only(path: &Path) -> Result<Mmap, WalError> {
    let file = File::open(path).map_err(|error| WalError::io(path, "open", error))?;
    let bytes = file
        .metadata()
        .map_err(|error| WalError::io(path, "stat", error))?
        .len();
    // SAFETY: as for `FileStorage::open`; in addition the mapping is read-only, so this
    // process never writes through it.
    let map = unsafe { MmapOptions::new().len(bytes as usize).map(&file) }
        .map_err(|error| WalError::io(path, "mmap", error))?;
    // Recovery reads each segment once from start to end.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    let length =
        libc::off_t::try_from(bytes).map_err(|_| std::io::Error::other("segment too large"))?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a new file at `path` (never an existing one) with `bytes` preallocated.
fn create_preallocated(path: &Path, bytes: u64) -> Result<File, WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| WalError::io(path, "create", error))?;
    preallocate(&file, bytes).map_err(|error| WalError::io(path, "fallocate", error))?;
    Ok(file)
}

fn zero_fill(file: &File, bytes: u64) -> std::io::Result<()> {
    zero_fill_range(file, 0..bytes)
}

/// Asks the kernel to start writing `range` back without waiting for it, so that the
/// fdatasync at the end of a spread-out zero-fill finds little left to write. Only a
/// hint: an error is ignored (the final fdatasync reports real ones).
fn start_writeback(file: &File, range: Range<u64>) {
    let (Ok(offset), Ok(bytes)) = (
        libc::off64_t::try_from(range.start),
        libc::off64_t::try_from(range.end - range.start),
    ) else {
        return;
    };
    // SAFETY: `sync_file_range` only reads its integer arguments; the descriptor is
    // open for the whole call because `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, bytes, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes zeros over `range`, never more than one page per write.
fn zero_fill_range(file: &File, range: Range<u64>) -> std::io::Result<()> {
    let zeros = [0u8; ZERO_FILL_WRITE_BYTES];
    let page = ZERO_FILL_WRITE_BYTES as u64;
    let mut offset = range.start;
    while offset < range.end {
        // Stay page-aligned after the first write, as the page cache sees it.
        let chunk = (range.end - offset).min(page - offset % page) as usize;
        file.write_all_at(&zeros[..chunk], offset)?;
        offset += chunk as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a refused io_uring probe falls back to Fdatasync and reports why, and that
    // the other backends never probe.
    #[test]
    fn refused_io_uring_falls_back_to_fdatasync_with_reason() {
        let (backend, uring, reason) = choose_backend(SyncBackend::IoUring, || {
            Err("io_uring_setup failed: EPERM".to_owned())
        });
        assert_eq!(backend, SyncBackend::Fdatasync);
        assert!(uring.is_none());
        assert_eq!(reason.as_deref(), Some("io_uring_setup failed: EPERM"));
        for other in [SyncBackend::Msync, SyncBackend::Fdatasync] {
            let (backend, uring, reason) =
                choose_backend(other, || panic!("{other:?} must not probe io_uring"));
            assert_eq!((backend, uring.is_none(), reason), (other, true, None));
        }
    }

    /// Minor page faults this thread has taken so far.
    fn minor_faults() -> i64 {
        // SAFETY: all-zero bytes are a valid `rusage` (integers and `timeval`s).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, exclusive `rusage` for the call to fill.
        let result = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(result, 0, "getrusage(RUSAGE_THREAD)");
        usage.ru_minflt
    }

    // Proves the first shadow comes with its pages faulted in: writing one byte into
    // each of its 4,096 pages takes almost no page faults (a fresh zeroed allocation
    // takes one per page with 4 KiB pages), and it reads as zeroes.
    #[test]
    fn first_shadow_is_zeroed_and_prefaulted() {
        const BYTES: usize = 16 << 20;
        const PAGES: usize = BYTES / PAGE_BYTES;
        let mut shadow = prefaulted_zeroes(BYTES);
        assert_eq!(shadow.len(), BYTES);
        assert!(shadow.iter().all(|&byte| byte == 0));
        let before = minor_faults();
        for page in shadow.chunks_mut(PAGE_BYTES) {
            page[0] = 1;
        }
        let faults = minor_faults() - before;
        assert!(
            faults < (PAGES / 64) as i64,
            "{faults} page faults writing {PAGES} prefaulted pages"
        );
    }
}
