//! tricommit-wal: a segmented, preallocated, mmap'd write-ahead log with group commit.
//!
//! The log is a directory of fixed-size segment files. Records are appended into the
//! active segment and made durable in groups: any number of `append`s, then one `sync`,
//! after which every record up to the returned LSN survives a crash. `docs/wal-format.md`
//! specifies the bytes and argues why one sync per batch is enough.
//!
//! ```no_run
//! use tricommit_wal::{Wal, WalConfig};
//! # fn main() -> Result<(), tricommit_wal::WalError> {
//! let (mut wal, recovery) = Wal::open("/var/lib/tricommit/wal".as_ref(), WalConfig::default())?;
//! for record in wal.read_from(recovery.first_lsn) {
//!     let _replay = record?;
//! }
//! wal.append(1, b"vote yes on batch 7")?;
//! wal.append(1, b"vote yes on batch 8")?;
//! let durable = wal.sync()?; // one fdatasync for both records
//! # let _ = durable; Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod format;
mod lock;
mod reader;
mod scan;
pub mod storage;
mod sync;
mod view;
mod wal;

pub use error::WalError;
pub use format::{
    Lsn, Record, SegmentHeader, SyncMark, FORMAT_VERSION, RECORD_HEADER_BYTES, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SYNC_MARK_BYTES, SYNC_MARK_TAG,
};
pub use lock::{LockMode, LOCK_FILE};
pub use reader::RecordIter;
pub use scan::{ScanReport, SegmentSummary, TornTail};
pub use view::{holds_segments, scan, LogView};
pub use wal::{Recovery, Wal};

/// How `sync` makes appended records durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncBackend {
    /// `msync(MS_SYNC)` of the dirty range of the mapping (memmap2 `flush_range`).
    Msync,
    /// `fdatasync` of the active segment; appends store into the mapping.
    Fdatasync,
    /// An io_uring `WRITE` of the dirty range linked to `FSYNC(DATASYNC)`. `sync_submit`
    /// returns while the kernel works, so the caller can fill the next batch.
    IoUring,
}

impl SyncBackend {
    /// All backends, for tests and benchmarks that cover each.
    pub const ALL: [SyncBackend; 3] = [
        SyncBackend::Msync,
        SyncBackend::Fdatasync,
        SyncBackend::IoUring,
    ];
}

/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default largest record, header included.
pub const RECORD_BYTES_MAX_DEFAULT: u32 = 1 << 20;
/// Default number of zeroed spare segments kept ready, so rolling to a new segment
/// rarely has to preallocate and zero one first.
pub const SEGMENTS_SPARE_DEFAULT: u32 = 1;
/// Upper bound on spare segments kept (configured or left by checkpoints).
pub const SEGMENTS_SPARE_MAX: u32 = 64;
/// Room every append leaves free after its record for sync marks: the one the next sync
/// writes and the one a reopen or clean close writes (`docs/wal-format.md` §4.1). At
/// most these two can follow the last record, so a mark always fits.
pub const SYNC_MARKS_RESERVED_BYTES: u64 = 2 * SYNC_MARK_BYTES;

/// Configuration of a log. Segments already on disk keep the size they were made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of each new segment file: a multiple of 4096 within
    /// `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX`.
    pub segment_bytes: u64,
    /// Largest record accepted by `append`, header included; at most
    /// `segment_bytes - SEGMENT_HEADER_BYTES - SYNC_MARKS_RESERVED_BYTES`.
    pub record_bytes_max: u32,
    /// The sync backend. `IoUring` falls back to `Fdatasync` when the kernel refuses it
    /// and `sync_fallback` allows it; `Recovery` says which backend is in use, and why.
    pub sync: SyncBackend,
    /// Whether an unavailable `IoUring` may be replaced by `Fdatasync` (the default, for
    /// a backend chosen by default). A backend a user asked for by name should set it
    /// to false: `open` then fails with `WalError::BackendUnavailable`.
    pub sync_fallback: bool,
    /// Zeroed spare segments kept ready (at most `SEGMENTS_SPARE_MAX`). Checkpoints turn
    /// recycled segments into further spares, up to `SEGMENTS_SPARE_MAX` in all.
    pub segments_spare: u32,
}

impl Default for WalConfig {
    /// 64 MiB segments, 1 MiB records, and `IoUring`, the backend that measured fastest
    /// on the project machine at batch sizes 1024 and 8192 (`wal_append_sync` bench;
    /// figures in the README); at batch 1 every backend was within run-to-run noise of a
    /// bare `pwrite` + `fdatasync`. It falls back to `Fdatasync` where io_uring is refused.
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            sync: SyncBackend::IoUring,
            sync_fallback: true,
            segments_spare: SEGMENTS_SPARE_DEFAULT,
        }
    }
}

impl WalConfig {
    /// Checks the relations between the fields.
    pub fn validate(&self) -> Result<(), WalError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(WalError::Config("segment_bytes out of range"));
        }
        if self.segment_bytes % SEGMENT_HEADER_BYTES != 0 {
            return Err(WalError::Config("segment_bytes must be a multiple of 4096"));
        }
        if u64::from(self.record_bytes_max) < RECORD_HEADER_BYTES {
            return Err(WalError::Config(
                "record_bytes_max is smaller than a record header",
            ));
        }
        let record_room_bytes =
            self.segment_bytes - SEGMENT_HEADER_BYTES - SYNC_MARKS_RESERVED_BYTES;
        if u64::from(self.record_bytes_max) > record_room_bytes {
            return Err(WalError::Config(
                "record_bytes_max does not fit in a segment",
            ));
        }
        if self.segments_spare > SEGMENTS_SPARE_MAX {
            return Err(WalError::Config("segments_spare above SEGMENTS_SPARE_MAX"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the default configuration is valid and each broken relation is refused.
    #[test]
    fn config_validation() {
        assert!(WalConfig::default().validate().is_ok());
        let broken = [
            WalConfig {
                segment_bytes: SEGMENT_BYTES_MIN - 4096,
                ..WalConfig::default()
            },
            WalConfig {
                segment_bytes: SEGMENT_BYTES_MAX * 2,
                ..WalConfig::default()
            },
            WalConfig {
                segment_bytes: SEGMENT_BYTES_DEFAULT + 1,
                ..WalConfig::default()
            },
            WalConfig {
                record_bytes_max: 16,
                ..WalConfig::default()
            },
            WalConfig {
                segment_bytes: SEGMENT_BYTES_MIN,
                record_bytes_max: 8192,
                ..WalConfig::default()
            },
            WalConfig {
                segments_spare: SEGMENTS_SPARE_MAX + 1,
                ..WalConfig::default()
            },
        ];
        for config in broken {
            assert!(
                matches!(config.validate(), Err(WalError::Config(_))),
                "{config:?} accepted"
            );
        }
    }
}
