//! `WalError`: every way the log can refuse a request, as a sentence a user can act on.

use std::io;
use std::path::PathBuf;

use crate::format::Lsn;

/// Errors returned by the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A system call failed on the named file or directory.
    #[error("{path}: {operation} failed: {source}")]
    Io {
        /// File or directory the call was made on.
        path: PathBuf,
        /// What the log was doing, e.g. "fdatasync".
        operation: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An earlier sync (or another write-path I/O) failed, so this `Wal` no longer knows
    /// what is on disk. Since a failed fsync may have dropped dirty pages (fsyncgate), a
    /// retry could report success for data that is gone; the only safe way on is to drop
    /// the `Wal` and reopen it, which recovers from what the disk really holds.
    #[error("the log is unusable after an earlier I/O failure ({cause}); reopen it to recover")]
    PreviousIo {
        /// The first failure, as text.
        cause: String,
    },
    /// The record would exceed `WalConfig::record_bytes_max`.
    #[error("record of {record_bytes} bytes exceeds the maximum of {record_bytes_max} bytes")]
    RecordTooLarge {
        /// Encoded size of the rejected record, header included.
        record_bytes: u64,
        /// The configured maximum.
        record_bytes_max: u32,
    },
    /// Damaged or inconsistent log contents at a known place. Nothing is skipped silently.
    #[error("{path}: corrupt at byte offset {offset}: {reason}")]
    Corrupt {
        /// Segment file holding the damage (or the missing segment).
        path: PathBuf,
        /// Byte offset of the first bad byte range within that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A file in the log's place is not a tricommit WAL segment at all.
    #[error("{path}: not a tricommit WAL: {reason}")]
    NotAWal {
        /// The offending file or directory.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The configuration is inconsistent.
    #[error("invalid WAL configuration: {0}")]
    Config(&'static str),
    /// Another process (or another `Wal` or `LogView` in this one) holds the directory's
    /// lock in a mode that excludes the one asked for (`lock.rs`).
    #[error("{path} is in use by another process (its LOCK file is locked); {}", locked_advice(*wanted))]
    Locked {
        /// The log directory.
        path: PathBuf,
        /// The lock that was refused.
        wanted: crate::lock::LockMode,
    },
    /// `WalConfig::sync_fallback` is off and the configured backend is unavailable.
    #[error("the {backend:?} sync backend was asked for and is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: crate::SyncBackend,
        /// Why the kernel refused it.
        reason: String,
    },
    /// `read_from` asked for records that a checkpoint has already recycled.
    #[error("LSN {lsn} is no longer in the log, which now starts at LSN {first_lsn}")]
    LsnUnavailable {
        /// The LSN asked for.
        lsn: Lsn,
        /// The oldest LSN still held.
        first_lsn: Lsn,
    },
}

/// What to do about a refused lock, by the lock that was asked for.
fn locked_advice(wanted: crate::lock::LockMode) -> &'static str {
    match wanted {
        crate::lock::LockMode::Exclusive => {
            "only one engine may open a log directory: stop the other one first"
        }
        crate::lock::LockMode::Shared => {
            "a running engine writes it: stop it before reading the log, which is never read under a writer"
        }
    }
}

impl WalError {
    /// Wraps an I/O error with the file and the operation it came from.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        operation: &'static str,
        source: io::Error,
    ) -> WalError {
        WalError::Io {
            path: path.into(),
            operation,
            source,
        }
    }
}
