//! The storage under the log: a directory of fixed-size segment files.
//!
//! The log talks to its files only through [`Storage`], so the same log code runs on
//! real files ([`FileStorage`]) and on the crash-simulating image ([`SimStorage`]) that
//! the crash tests and the engine's simulator use. `Wal` is generic over it, so the real
//! path pays no dynamic dispatch.

pub(crate) mod file;
pub mod sim;

use std::ops::Range;
use std::path::PathBuf;

pub use file::FileStorage;
pub use sim::{SimDisk, SimStorage};

use crate::error::WalError;

/// A directory of segment files with the durability operations the log needs.
///
/// Contract: `create_zeroed`, `rename` and `remove` are durable when they return (the
/// file and its directory are synced). Bytes written through a segment are durable only
/// after a successful `sync` (or `sync_submit` then `sync_wait`) covering them.
pub trait Storage {
    /// An open, mapped segment file.
    type Segment: SegmentFile;

    /// The path to show in errors for a file name in this storage.
    fn path_of(&self, name: &str) -> PathBuf;
    /// File names in the directory, in no particular order.
    fn list(&mut self) -> Result<Vec<String>, WalError>;
    /// Creates a file of `bytes` bytes, preallocated and zeroed, durably.
    fn create_zeroed(&mut self, name: &str, bytes: u64) -> Result<(), WalError>;
    /// Creates a file of `bytes` bytes, preallocated but neither zeroed nor durable:
    /// the start of a zero-fill spread over `zero_part` calls, whose last call makes
    /// it durable.
    fn create_allocated(&mut self, name: &str, bytes: u64) -> Result<(), WalError>;
    /// Overwrites at most `bytes_max` bytes of an existing, unopened file with zeros,
    /// from `offset` on, and returns the offset after them, or `None` once the call
    /// reached the end of the file. The zeros are not durable until that last call: it
    /// makes the whole file durable before it returns. Lets a caller spread a long
    /// zero-fill over several short calls; one call with `bytes_max` of `u64::MAX`
    /// zeroes the file durably.
    fn zero_part(
        &mut self,
        name: &str,
        offset: u64,
        bytes_max: u64,
    ) -> Result<Option<u64>, WalError>;
    /// Grows an existing, unopened file to `bytes` bytes: preallocated, the new bytes
    /// zeroed, durably. Recovery uses it on a last segment found shorter than its header.
    fn extend(&mut self, name: &str, bytes: u64) -> Result<(), WalError>;
    /// Opens and maps an existing file for reading and writing.
    fn open(&mut self, name: &str) -> Result<Self::Segment, WalError>;
    /// Renames a file, durably.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), WalError>;
    /// Removes a file, durably.
    fn remove(&mut self, name: &str) -> Result<(), WalError>;
    /// Starts making `range` of `segment` durable. At most one sync is in flight.
    fn sync_submit(
        &mut self,
        segment: &mut Self::Segment,
        range: Range<u64>,
    ) -> Result<(), WalError>;
    /// Waits for the sync started by `sync_submit`; returns at once if none is in flight.
    fn sync_wait(&mut self) -> Result<(), WalError>;
    /// Whether a submitted sync may still be using a segment's memory: true only after
    /// `sync_wait` failed before the kernel returned every completion. The log then
    /// never frees a segment's buffer (see `Wal`'s `Drop`).
    fn sync_pending(&self) -> bool {
        false
    }
    /// Makes every byte already written to `segment`'s file durable (recovery uses it:
    /// after a process crash, records may sit only in the page cache).
    fn sync_all(&mut self, segment: &mut Self::Segment) -> Result<(), WalError>;
    /// Called once before the log starts appending to `segment` at `written_bytes`.
    fn begin_appends(&mut self, _segment: &mut Self::Segment, _written_bytes: u64) {}
    /// Called once `segment` is full and durable; it is only read from then on.
    fn seal(&mut self, _segment: &mut Self::Segment) {}
    /// Makes `range` of `segment` durable before returning.
    fn sync(&mut self, segment: &mut Self::Segment, range: Range<u64>) -> Result<(), WalError> {
        self.sync_submit(segment, range)?;
        self.sync_wait()
    }
}

/// One open segment file: a byte image the log reads and appends into.
pub trait SegmentFile {
    /// The whole segment as the log sees it, including bytes not yet durable.
    fn bytes(&self) -> &[u8];
    /// A writable window of the segment. Writes become durable only through a sync.
    fn bytes_mut(&mut self, range: Range<u64>) -> &mut [u8];
}
