//! A read-only view of a log directory, for tools that must not modify it.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::WalError;
use crate::format::Lsn;
use crate::lock::{DirLock, LockMode};
use crate::reader::{RecordIter, Span};
use crate::scan::{scan as scan_segments, ScanReport, SegmentInput};
use crate::storage::file::{list_names, map_read_only};
use crate::wal::parse_segment_name;

/// A log directory mapped read-only and scanned. Unlike `Wal::open` it never writes:
/// a torn tail is reported in `report().tail`, not zeroed.
pub struct LogView {
    maps: Vec<(PathBuf, Mmap)>,
    report: ScanReport,
    /// The directory's shared lock: no writer opens the log while the view maps it.
    _lock: DirLock,
}

/// Maps and scans every segment in `dir` without modifying anything (beyond creating
/// the empty lock file, where it may).
///
/// Takes a shared lock on the directory first: a log that a `Wal` holds open fails at
/// once with `WalError::Locked`. Fails with `WalError::Io` when the directory or a segment cannot be read,
/// `WalError::NotAWal` when `dir` holds no segment or a segment has the wrong magic, and
/// `WalError::Corrupt` (file and byte offset) for damage that is not a torn tail.
pub fn scan(dir: &Path) -> Result<LogView, WalError> {
    if !dir.is_dir() {
        if dir.exists() {
            return Err(WalError::NotAWal {
                path: dir.to_owned(),
                reason: "not a directory",
            });
        }
        return Err(WalError::io(
            dir,
            "open directory",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    let lock = DirLock::acquire(dir, LockMode::Shared)?;
    let mut numbered: Vec<(u64, PathBuf)> = list_names(dir)?
        .iter()
        .filter_map(|name| parse_segment_name(name).map(|number| (number, dir.join(name))))
        .collect();
    if numbered.is_empty() {
        return Err(WalError::NotAWal {
            path: dir.to_owned(),
            reason: "the directory holds no WAL segment files",
        });
    }
    numbered.sort_unstable();
    let mut maps = Vec::with_capacity(numbered.len());
    for (_, path) in &numbered {
        let map = map_read_only(path)?;
        maps.push((path.clone(), map));
    }
    let inputs: Vec<SegmentInput<'_>> = numbered
        .iter()
        .zip(&maps)
        .map(|((number, path), (_, map))| SegmentInput {
            path: path.clone(),
            number: *number,
            bytes: &map[..],
        })
        .collect();
    let report = scan_segments(&inputs)?;
    Ok(LogView {
        maps,
        report,
        _lock: lock,
    })
}

/// Whether `dir` holds any segment file. A directory that does not exist, or holds only
/// a lock file, spares or temporary files, is a log whose creation never finished (a
/// crash in its first moments): `Wal::open` starts it empty, and readers should treat
/// it as a log without records rather than as something foreign.
///
/// Like `scan`, it refuses (`WalError::Locked`) a directory that a writer holds: a log
/// still being created by a live engine is not an interrupted one.
pub fn holds_segments(dir: &Path) -> Result<bool, WalError> {
    if !dir.exists() {
        return Ok(false);
    }
    let _lock = DirLock::acquire(dir, LockMode::Shared)?;
    Ok(list_names(dir)?
        .iter()
        .any(|name| parse_segment_name(name).is_some()))
}

impl LogView {
    /// What the scan found.
    pub fn report(&self) -> &ScanReport {
        &self.report
    }

    /// The valid records from `from` on, oldest first.
    pub fn read_from(&self, from: Lsn) -> RecordIter<'_> {
        let spans = self
            .maps
            .iter()
            .zip(&self.report.segments)
            .map(|((path, map), summary)| Span {
                path: path.as_path(),
                bytes: &map[..summary.end_offset as usize],
                first_lsn: summary.first_lsn,
            })
            .collect();
        RecordIter::new(spans, from, self.report.next_lsn - 1)
    }
}
