//! The io_uring sync path: one `WRITE` linked to one `FSYNC(DATASYNC)`.
//!
//! The log submits the pair and returns to the caller, who keeps appending into later
//! bytes of the segment while the kernel writes and syncs the earlier ones. `wait` reaps
//! both completions. The link makes the kernel start the fdatasync only after the write
//! has completed, and cancel it if the write failed or came up short.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// Submission queue size. Only one write+fsync pair is ever in flight.
const RING_ENTRIES: u32 = 8;
/// Bound on retries of a wait interrupted by a signal before giving up.
const WAIT_INTERRUPTED_RETRIES_MAX: u32 = 1024;
/// Attempts to reap a pair in flight when the ring is dropped.
const DROP_WAIT_ATTEMPTS_MAX: u32 = 3;
const USER_DATA_WRITE: u64 = 1;
const USER_DATA_FSYNC: u64 = 2;

/// A ring with at most one write+fdatasync pair in flight.
pub(crate) struct UringSync {
    ring: IoUring,
    /// Completions still owed by the kernel for the pair in flight (0, 1 or 2).
    completions_pending: u32,
    /// Bytes the write in flight must report, to catch short writes.
    write_bytes_expected: u32,
}

impl UringSync {
    /// Creates a ring and checks that the kernel supports both opcodes.
    /// On failure returns the reason, which the log reports when it falls back.
    pub(crate) fn probe() -> Result<UringSync, String> {
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|error| format!("io_uring_setup failed: {error}"))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|error| format!("io_uring probe failed: {error}"))?;
        if !probe.is_supported(opcode::Write::CODE) || !probe.is_supported(opcode::Fsync::CODE) {
            return Err("io_uring lacks WRITE or FSYNC".to_owned());
        }
        Ok(UringSync {
            ring,
            completions_pending: 0,
            write_bytes_expected: 0,
        })
    }

    /// Submits `write(fd, buf, len, offset)` linked to `fdatasync(fd)`; `len` may be 0,
    /// in which case only the fdatasync is submitted.
    ///
    /// # Safety
    /// `buf..buf+len` must stay allocated and unmodified until `wait` has returned.
    pub(crate) unsafe fn submit(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    ) -> io::Result<()> {
        debug_assert_eq!(self.completions_pending, 0, "one sync in flight at a time");
        let fsync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_FSYNC);
        let mut submission = self.ring.submission();
        if len > 0 {
            let write = opcode::Write::new(types::Fd(fd), buf, len)
                .offset(offset)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(USER_DATA_WRITE);
            // SAFETY: the caller keeps the buffer alive and unchanged until `wait`
            // returns, which reaps this entry's completion.
            unsafe { submission.push(&write) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        // SAFETY: an fsync entry references no memory.
        unsafe { submission.push(&fsync) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        drop(submission);
        self.completions_pending = if len > 0 { 2 } else { 1 };
        self.write_bytes_expected = len;
        self.ring.submit()?;
        Ok(())
    }

    /// Waits for the pair in flight, if any, and reports the first failure.
    pub(crate) fn wait(&mut self) -> io::Result<()> {
        let mut outcome = Ok(());
        let mut interrupted_retries = 0;
        while self.completions_pending > 0 {
            match self.ring.submit_and_wait(self.completions_pending as usize) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    interrupted_retries += 1;
                    if interrupted_retries > WAIT_INTERRUPTED_RETRIES_MAX {
                        return Err(error);
                    }
                    continue;
                }
                Err(error) => return Err(error),
            }
            for entry in self.ring.completion() {
                self.completions_pending -= 1;
                let result =
                    check_completion(entry.user_data(), entry.result(), self.write_bytes_expected);
                if outcome.is_ok() {
                    outcome = result;
                }
            }
        }
        outcome
    }
}

impl UringSync {
    /// Whether the kernel still owes completions for the pair in flight: then it may
    /// still read the write's buffer, which must stay allocated (`Wal`'s `Drop` leaks
    /// its segments when this holds after a failed wait).
    pub(crate) fn pending(&self) -> bool {
        self.completions_pending > 0
    }
}

impl Drop for UringSync {
    /// The kernel may still read the buffer of a pair in flight; reap it before the
    /// buffer's owner can free it (`Wal` drops its storage before its segments). A wait
    /// that keeps failing is retried a bounded number of times; if completions are
    /// still owed after that, `Wal` has already kept its segments' buffers alive (see
    /// `pending`), and closing the ring makes the kernel cancel the pair.
    fn drop(&mut self) {
        for _ in 0..DROP_WAIT_ATTEMPTS_MAX {
            if self.completions_pending == 0 || self.wait().is_ok() {
                return;
            }
        }
    }
}

/// Turns one completion into a result: negative is an errno, a short write is an error.
fn check_completion(user_data: u64, result: i32, write_bytes_expected: u32) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    if user_data == USER_DATA_WRITE && result as u32 != write_bytes_expected {
        return Err(io::Error::other(format!(
            "short write: {result} of {write_bytes_expected} bytes"
        )));
    }
    Ok(())
}
