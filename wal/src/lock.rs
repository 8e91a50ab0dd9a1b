//! Advisory locking of a log directory, so that one process at a time owns it.
//!
//! The mappings of a log assume a single owner (see `Wal`): a second writer, or a reader
//! mapping segments that a writer is changing, would see (or cause) torn bytes. Every
//! `Wal::open` takes an exclusive `flock` on `LOCK_FILE` in the directory, and every
//! read-only `scan` a shared one. Both ask without blocking (`LOCK_NB`): a directory in
//! use is refused at once with `WalError::Locked`, never waited for silently. The lock
//! belongs to the open file description, so it is released when the `Wal` or `LogView`
//! holding it is dropped, and by the kernel when its process dies (`kill -9` included).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::WalError;

/// The lock file's name inside a log directory. It holds no data.
pub const LOCK_FILE: &str = "LOCK";

/// Which kind of lock a `DirLock` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// One writer (`Wal::open`): excludes every other lock.
    Exclusive,
    /// Readers (`scan`): exclude a writer, not each other.
    Shared,
}

/// A held `flock` on a log directory's lock file; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    /// Kept open: closing the descriptor releases the lock.
    _file: Option<File>,
}

impl DirLock {
    /// Takes the lock on `dir` without waiting.
    ///
    /// A writer creates the lock file. A reader creates it too when it can, so that a
    /// writer starting later is excluded; on a directory it may not write to (a
    /// read-only mount, another user's log) and without a lock file, no writer can
    /// hold one, and the reader goes on unlocked.
    pub(crate) fn acquire(dir: &Path, mode: LockMode) -> Result<DirLock, WalError> {
        let path = dir.join(LOCK_FILE);
        let opened = match mode {
            LockMode::Exclusive => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path),
            LockMode::Shared => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .or_else(|_| File::open(&path)),
        };
        let file = match opened {
            Ok(file) => file,
            Err(error)
                if mode == LockMode::Shared && error.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(DirLock { _file: None });
            }
            Err(error) => return Err(WalError::io(&path, "open lock file", error)),
        };
        let operation = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        } | libc::LOCK_NB;
        // SAFETY: flock only reads its integer arguments; the descriptor is open for as
        // long as `file` lives.
        let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(WalError::Locked {
                    path: dir.to_owned(),
                    wanted: mode,
                });
            }
            return Err(WalError::io(&path, "flock", error));
        }
        Ok(DirLock { _file: Some(file) })
    }
}
