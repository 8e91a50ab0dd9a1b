//! The log itself: append, group commit, recovery on open, checkpoints, reading.

use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{
    encode_record, encode_sync_mark, record_bytes, Lsn, SegmentHeader, SyncMark,
    SEGMENT_HEADER_BYTES, SYNC_MARK_BYTES,
};
use crate::reader::{RecordIter, Span};
use crate::scan::{scan, SegmentInput};
use crate::storage::{FileStorage, SegmentFile, Storage};
use crate::{SyncBackend, WalConfig, SYNC_MARKS_RESERVED_BYTES};

const SEGMENT_SUFFIX: &str = ".wal";
const SPARE_SUFFIX: &str = ".spare";
/// Files being zeroed or created; never part of the log, removed at open.
const TEMPORARY_SUFFIX: &str = ".tmp";
/// Digits in segment and spare file names, so lexical order is numeric order.
const NAME_DIGITS: usize = 20;

/// What `open` found and did. Recovery never drops durable records silently: damage
/// outside the torn tail of the last segment makes `open` fail instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records in the log after recovery.
    pub records: u64,
    /// Oldest LSN held; equals `last_lsn + 1` when the log holds no record.
    pub first_lsn: Lsn,
    /// Newest LSN held (0 for a log that never held a record).
    pub last_lsn: Lsn,
    /// Segment files in the log.
    pub segments: u32,
    /// Non-zero bytes after the last valid record that were dropped (zeroed): the remains
    /// of writes that were never synced.
    pub tail_bytes_dropped: u64,
    /// Where the dropped tail began, when there was one.
    pub tail_position: Option<(PathBuf, u64)>,
    /// The sync backend in use.
    pub backend: SyncBackend,
    /// Why the configured backend was replaced (io_uring unavailable), if it was.
    pub backend_fallback_reason: Option<String>,
}

/// A segment of the open log.
struct LiveSegment<F> {
    number: u64,
    first_lsn: Lsn,
    name: String,
    path: PathBuf,
    /// Offset just past the last record; for the active segment `Wal::write_offset` rules.
    end_offset: u64,
    file: F,
}

/// The sync submitted and not yet waited for.
#[derive(Clone, Copy)]
struct InFlight {
    offset_end: u64,
    lsn: Lsn,
    /// The durable offset claimed by the sync mark this sync carries, if it carries one.
    mark_durable_offset: Option<u64>,
}

/// A write-ahead log over a directory of segments.
///
/// The directory belongs to one `Wal` at a time: another process (or a second `Wal`)
/// writing or truncating its files while they are mapped is undefined behaviour, as for
/// any memory-mapped file. `open` enforces this with an exclusive `flock` on the
/// directory's lock file (`lock.rs`), and `scan` takes a shared one, so a tool never
/// maps a log that a writer is changing.
pub struct Wal<S: Storage = FileStorage> {
    /// Declared before `segments` so it drops first: an io_uring write in flight is
    /// reaped before the segment buffer it reads from is freed.
    storage: S,
    config: WalConfig,
    backend: SyncBackend,
    /// Oldest first; the last one is the active segment. Never empty after `open`.
    segments: Vec<LiveSegment<S::Segment>>,
    /// End of the appended bytes in the active segment.
    write_offset: u64,
    /// End of the durable bytes in the active segment; `synced_offset <= write_offset`.
    synced_offset: u64,
    /// End of the last record in the active segment (sync marks may follow it).
    records_end_offset: u64,
    /// Bytes of the active segment below this offset are vouched for by a durable sync
    /// mark; `proven_offset <= synced_offset`.
    proven_offset: u64,
    in_flight: Option<InFlight>,
    lsn_next: Lsn,
    durable_lsn: Lsn,
    /// Zeroed files ready to become segments, oldest first.
    spares: Vec<String>,
    spare_id_next: u64,
    /// A recycled segment or a new file being zero-filled over several
    /// `checkpoint_step_bounded` or `spare_step` calls (under its temporary name); it
    /// becomes a spare when the fill ends.
    recycling: Option<Recycling>,
    /// Recycled segments are kept as spares while fewer than this many spares exist;
    /// further ones are removed (`SEGMENTS_SPARE_MAX` unless the owner lowers it).
    recycled_spares_max: u32,
    /// Set by the first write-path I/O failure; every later call returns `PreviousIo`.
    failure: Option<String>,
}

/// A recycled segment, or a new spare, whose zero-fill is spread over several calls.
struct Recycling {
    temporary: String,
    spare: String,
    /// Zeros are written below this offset.
    zeroed_bytes: u64,
}

impl Wal<FileStorage> {
    /// Opens (creating if needed) the log in `dir`, locks it exclusively and recovers it.
    /// A directory that another `Wal` or `LogView` holds is refused at once with
    /// `WalError::Locked`; an io_uring backend the kernel refuses, with
    /// `WalError::BackendUnavailable` when `config.sync_fallback` is off.
    ///
    /// Recovery checks every header, record, CRC and LSN. A torn or zeroed tail in the
    /// last segment ends the log; its bytes are zeroed and counted in
    /// `Recovery::tail_bytes_dropped`. Damage anywhere else fails with
    /// `WalError::Corrupt` naming the file and byte offset. The recovered records are
    /// synced before `open` returns, so `durable_lsn() == last_lsn()` afterwards.
    pub fn open(dir: &Path, config: WalConfig) -> Result<(Wal, Recovery), WalError> {
        config.validate()?;
        let (storage, fallback_reason) = FileStorage::open(dir, config.sync)?;
        if let (Some(reason), false) = (&fallback_reason, config.sync_fallback) {
            return Err(WalError::BackendUnavailable {
                backend: config.sync,
                reason: reason.clone(),
            });
        }
        let backend = storage.backend();
        Wal::open_on(storage, config, backend, fallback_reason)
    }
}

impl<S: Storage> Wal<S> {
    /// Opens the log on any storage (the crash simulator, for instance); see `open`.
    pub fn open_with_storage(
        storage: S,
        config: WalConfig,
    ) -> Result<(Wal<S>, Recovery), WalError> {
        config.validate()?;
        let backend = config.sync;
        Wal::open_on(storage, config, backend, None)
    }

    fn open_on(
        mut storage: S,
        config: WalConfig,
        backend: SyncBackend,
        backend_fallback_reason: Option<String>,
    ) -> Result<(Wal<S>, Recovery), WalError> {
        let names = storage.list()?;
        let (segment_numbers, spares, spare_id_next) =
            sort_names(&mut storage, &names, config.segment_bytes)?;
        let mut wal = Wal {
            storage,
            config,
            backend,
            segments: Vec::with_capacity(segment_numbers.len() + 1),
            write_offset: SEGMENT_HEADER_BYTES,
            synced_offset: SEGMENT_HEADER_BYTES,
            records_end_offset: SEGMENT_HEADER_BYTES,
            proven_offset: SEGMENT_HEADER_BYTES,
            in_flight: None,
            lsn_next: 1,
            durable_lsn: 0,
            spares,
            spare_id_next,
            recycling: None,
            recycled_spares_max: crate::SEGMENTS_SPARE_MAX,
            failure: None,
        };
        let tail = wal.recover_segments(&segment_numbers)?;
        if wal.segments.is_empty() {
            wal.activate_segment(1)?;
        }
        // Everything recovered is durable now; vouch for it, so a bit flip in it later
        // is corruption rather than a torn tail.
        wal.mark_all_durable()?;
        wal.replenish_spares()?;
        let recovery = Recovery {
            records: wal.lsn_next - wal.first_lsn(),
            first_lsn: wal.first_lsn(),
            last_lsn: wal.last_lsn(),
            segments: wal.segments.len() as u32,
            tail_bytes_dropped: tail.as_ref().map_or(0, |(_, _, bytes)| *bytes),
            tail_position: tail.map(|(path, offset, _)| (path, offset)),
            backend,
            backend_fallback_reason,
        };
        Ok((wal, recovery))
    }

    /// Opens and scans the existing segments, then repairs and syncs the tail.
    /// Returns the dropped tail as (file, offset, bytes).
    fn recover_segments(
        &mut self,
        numbers: &[u64],
    ) -> Result<Option<(PathBuf, u64, u64)>, WalError> {
        if numbers.is_empty() {
            return Ok(None);
        }
        let mut files = Vec::with_capacity(numbers.len());
        for &number in numbers {
            let name = segment_name(number);
            files.push((self.storage.path_of(&name), self.storage.open(&name)?, name));
        }
        self.restore_truncated_last(&mut files)?;
        let inputs: Vec<SegmentInput<'_>> = files
            .iter()
            .zip(numbers)
            .map(|((path, file, _), &number)| SegmentInput {
                path: path.clone(),
                number,
                bytes: file.bytes(),
            })
            .collect();
        let report = scan(&inputs)?;
        drop(inputs);
        for ((path, file, name), summary) in files.into_iter().zip(&report.segments) {
            let segment = LiveSegment {
                number: summary.number,
                first_lsn: summary.first_lsn,
                name,
                path,
                end_offset: summary.end_offset,
                file,
            };
            self.segments.push(segment);
        }
        self.lsn_next = report.next_lsn;
        if let Some(last) = report.segments.last() {
            self.records_end_offset = last.records_end_offset;
            self.proven_offset = last.proven_offset;
        }
        let tail = report
            .tail
            .map(|tail| (tail.path, tail.offset, tail.bytes_dropped));
        self.repair_tail(tail.as_ref().map_or(0, |(_, _, bytes)| *bytes))?;
        Ok(tail)
    }

    /// A last segment shorter than its header says was truncated (by hand or by a tool);
    /// grow it back to full size with zeros, so the missing end reads as a zero tail.
    fn restore_truncated_last(
        &mut self,
        files: &mut Vec<(PathBuf, S::Segment, String)>,
    ) -> Result<(), WalError> {
        let Some((_, file, _)) = files.last() else {
            return Ok(());
        };
        let Ok(header) = SegmentHeader::decode(file.bytes()) else {
            return Ok(()); // The scan reports the bad header.
        };
        let length = file.bytes().len() as u64;
        if length >= header.segment_bytes || header.segment_bytes > crate::SEGMENT_BYTES_MAX {
            return Ok(());
        }
        // Unmap before growing the file, then map it again at full size.
        let Some((path, file, name)) = files.pop() else {
            return Ok(());
        };
        drop(file);
        self.storage.extend(&name, header.segment_bytes)?;
        let file = self.storage.open(&name)?;
        files.push((path, file, name));
        Ok(())
    }

    /// Zeroes the torn tail of the active segment, so no remains of an abandoned history
    /// can reappear behind future records, and syncs the recovered records: after a
    /// process crash they may still sit only in the page cache.
    fn repair_tail(&mut self, tail_bytes: u64) -> Result<(), WalError> {
        let Some(active) = self.segments.last_mut() else {
            return Ok(());
        };
        let end = active.end_offset;
        self.storage.begin_appends(&mut active.file, end);
        if tail_bytes > 0 {
            active.file.bytes_mut(end..end + tail_bytes).fill(0);
            self.storage.sync(&mut active.file, end..end + tail_bytes)?;
        }
        self.storage.sync_all(&mut active.file)?;
        self.write_offset = end;
        self.synced_offset = end;
        self.durable_lsn = self.lsn_next - 1;
        Ok(())
    }

    /// Appends one record and returns its LSN. The record is durable only after a
    /// `sync` (or `sync_wait`) returns an LSN at or above it.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.check_usable()?;
        let size = record_bytes(payload.len());
        if size > u64::from(self.config.record_bytes_max) {
            return Err(WalError::RecordTooLarge {
                record_bytes: size,
                record_bytes_max: self.config.record_bytes_max,
            });
        }
        // Leave room for the sync marks that may follow this record (§4.1).
        if self.write_offset + size + SYNC_MARKS_RESERVED_BYTES > self.active_capacity() {
            let result = self.roll();
            self.poison_on_error(result)?;
        }
        let lsn = self.lsn_next;
        let offset = self.write_offset;
        let Some(active) = self.segments.last_mut() else {
            return Err(WalError::Config("log has no active segment"));
        };
        encode_record(
            active.file.bytes_mut(offset..offset + size),
            lsn,
            kind,
            payload,
        );
        self.write_offset = offset + size;
        self.records_end_offset = self.write_offset;
        self.lsn_next = lsn + 1;
        Ok(lsn)
    }

    /// Appends records in order and returns the LSN of the last one (or `last_lsn()`
    /// for an empty batch). A record that is too large stops the batch with
    /// `RecordTooLarge`; the records before it stay appended.
    pub fn append_batch<'a, I: IntoIterator<Item = (u8, &'a [u8])>>(
        &mut self,
        records: I,
    ) -> Result<Lsn, WalError> {
        let mut last = self.last_lsn();
        for (kind, payload) in records {
            last = self.append(kind, payload)?;
        }
        Ok(last)
    }

    /// Makes every appended record durable and returns the durable LSN. Returns at once
    /// when nothing was appended since the last sync.
    pub fn sync(&mut self) -> Result<Lsn, WalError> {
        self.check_usable()?;
        if self.in_flight.is_none() && self.durable_lsn == self.last_lsn() {
            return Ok(self.durable_lsn);
        }
        self.sync_submit()?;
        self.sync_wait()
    }

    /// Starts making every appended record durable. With `IoUring` this returns while
    /// the kernel writes, so the caller can append the next batch meanwhile; the other
    /// backends sync before returning. A sync still in flight is waited for first.
    ///
    /// The synced bytes end with a sync mark vouching for everything that was durable
    /// before this sync: its bytes are part of the same write, so it costs no extra sync.
    pub fn sync_submit(&mut self) -> Result<(), WalError> {
        self.sync_wait()?;
        if self.durable_lsn == self.last_lsn() {
            return Ok(());
        }
        let mark_durable_offset = self.write_sync_mark(self.synced_offset);
        let range = self.synced_offset..self.write_offset;
        let Some(active) = self.segments.last_mut() else {
            return Err(WalError::Config("log has no active segment"));
        };
        let result = self.storage.sync_submit(&mut active.file, range);
        self.poison_on_error(result)?;
        self.in_flight = Some(InFlight {
            offset_end: self.write_offset,
            lsn: self.last_lsn(),
            mark_durable_offset,
        });
        Ok(())
    }

    /// Appends a sync mark claiming that the active segment was durable up to
    /// `durable_offset`, and returns that offset; `None` (no mark) when it does not fit,
    /// which the reserve left by `append` prevents. The caller syncs it.
    fn write_sync_mark(&mut self, durable_offset: u64) -> Option<u64> {
        let offset = self.write_offset;
        let fits = offset + SYNC_MARK_BYTES <= self.active_capacity();
        debug_assert!(
            fits,
            "append reserves room for the sync marks after a record"
        );
        if !fits {
            return None;
        }
        let mark = SyncMark {
            lsn: self.last_lsn(),
            durable_offset,
        };
        let active = self.segments.last_mut()?;
        encode_sync_mark(
            active.file.bytes_mut(offset..offset + SYNC_MARK_BYTES),
            mark,
        );
        self.write_offset = offset + SYNC_MARK_BYTES;
        Some(durable_offset)
    }

    /// When every appended byte is durable but some record of the active segment is not
    /// yet vouched for by a durable mark, writes and syncs a mark vouching for all of it.
    /// `open` calls it after recovery and `Drop` on a clean close, so that the last
    /// synced batch is protected too: without it, damage there would read as a torn tail.
    /// It claims only what a completed sync already made durable, never more.
    fn mark_all_durable(&mut self) -> Result<(), WalError> {
        let all_durable = self.in_flight.is_none() && self.synced_offset == self.write_offset;
        let vouched = self.records_end_offset <= self.proven_offset;
        let room = self.write_offset + SYNC_MARK_BYTES <= self.active_capacity();
        if !all_durable || vouched || !room {
            return Ok(());
        }
        let start = self.write_offset;
        let Some(durable_offset) = self.write_sync_mark(start) else {
            return Ok(());
        };
        let Some(active) = self.segments.last_mut() else {
            return Ok(());
        };
        self.storage
            .sync(&mut active.file, start..self.write_offset)?;
        self.synced_offset = self.write_offset;
        self.proven_offset = durable_offset;
        Ok(())
    }

    /// Waits for the sync started by `sync_submit` and returns the durable LSN.
    /// Returns at once when no sync is in flight.
    pub fn sync_wait(&mut self) -> Result<Lsn, WalError> {
        self.check_usable()?;
        if let Some(in_flight) = self.in_flight.take() {
            let result = self.storage.sync_wait();
            self.poison_on_error(result)?;
            self.complete_sync(in_flight);
        }
        Ok(self.durable_lsn)
    }

    /// Records what a completed sync made durable and what its mark now vouches for.
    fn complete_sync(&mut self, in_flight: InFlight) {
        self.synced_offset = in_flight.offset_end;
        self.durable_lsn = in_flight.lsn;
        if let Some(durable_offset) = in_flight.mark_durable_offset {
            self.proven_offset = self.proven_offset.max(durable_offset);
        }
    }

    /// Every record up to this LSN is durable (0 when none is).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// LSN of the last appended record (0 when the log never held one).
    pub fn last_lsn(&self) -> Lsn {
        self.lsn_next - 1
    }

    /// Oldest LSN still held (checkpoints move it up).
    pub fn first_lsn(&self) -> Lsn {
        self.segments
            .first()
            .map_or(self.lsn_next, |segment| segment.first_lsn)
    }

    /// Segment files in the log, the active one included (checkpoints bring it down).
    pub fn segment_count(&self) -> u32 {
        self.segments.len() as u32
    }

    /// Segments whose first record comes after `lsn` (the active one included when it
    /// does): how far the log has grown past a point.
    pub fn segments_starting_after(&self, lsn: Lsn) -> u32 {
        self.segments
            .iter()
            .filter(|segment| segment.first_lsn > lsn)
            .count() as u32
    }

    /// The sync backend in use (after any io_uring fallback).
    pub fn backend(&self) -> SyncBackend {
        self.backend
    }

    /// Closes the log as a crash right after the last sync would leave it: without the
    /// clean close's sync mark, and without syncing anything appended since. Crash tests
    /// use it where they once leaked the `Wal`, which now would also keep the
    /// directory's lock held. A sync in flight is still waited for, because the kernel
    /// may be reading its buffer.
    pub fn abandon(mut self) {
        self.failure
            .get_or_insert_with(|| "abandoned without a clean close".to_owned());
    }

    /// Recycles every segment whose records all have LSNs below `below`: each is renamed
    /// out of the log, zeroed and kept as a spare for reuse instead of allocating a new
    /// file. The active segment is never recycled. Call it once every transaction below
    /// `below` is final; records below `below` may remain readable until their segment goes.
    pub fn checkpoint(&mut self, below: Lsn) -> Result<(), WalError> {
        self.check_usable()?;
        let result = self.recycle_below(below, usize::MAX);
        self.poison_on_error(result)
    }

    /// Like `checkpoint`, but recycles at most the oldest segment, so that a caller
    /// can spread the zero-filling of several recycled segments over several calls.
    /// Returns whether segments wholly below `below` remain after this call.
    pub fn checkpoint_step(&mut self, below: Lsn) -> Result<bool, WalError> {
        self.check_usable()?;
        let result = self.recycle_below(below, 1);
        self.poison_on_error(result)?;
        Ok(self.recyclable_below(below) > 0)
    }

    /// Like `checkpoint_step`, but zero-fills at most `zero_bytes_max` bytes per call:
    /// a recycled segment is renamed away from the log at once, then filled over as
    /// many calls as it takes, and becomes a spare when the fill ends (durably). So a
    /// caller on a latency-critical thread pauses for `zero_bytes_max` bytes of writes
    /// at a time, not a whole segment. Returns whether anything remains to do: a fill
    /// in progress, or segments wholly below `below`.
    ///
    /// A crash in the middle leaves the segment under its temporary name; the next
    /// open removes it, as it removes any unfinished spare.
    pub fn checkpoint_step_bounded(
        &mut self,
        below: Lsn,
        zero_bytes_max: u64,
    ) -> Result<bool, WalError> {
        self.check_usable()?;
        let result = self.recycle_bounded(below, zero_bytes_max.max(1));
        self.poison_on_error(result)?;
        Ok(self.recycling.is_some() || self.recyclable_below(below) > 0)
    }

    fn recycle_bounded(&mut self, below: Lsn, zero_bytes_max: u64) -> Result<(), WalError> {
        if self.recycling.is_none() && self.recyclable_below(below) > 0 {
            self.start_recycling()?;
        }
        self.continue_recycling(zero_bytes_max)
    }

    /// Takes the oldest segment out of the log under a temporary name, to be zero-filled
    /// into a spare (`continue_recycling`), or removes it if the spares are at their
    /// bound. Oldest first, so a crash in between still leaves a contiguous log.
    fn start_recycling(&mut self) -> Result<(), WalError> {
        debug_assert!(self.recycling.is_none(), "one fill at a time");
        let LiveSegment { name, file, .. } = self.segments.remove(0);
        drop(file);
        let id = self.spare_id_next;
        self.spare_id_next += 1;
        let temporary = numbered_name(id, TEMPORARY_SUFFIX);
        self.storage.rename(&name, &temporary)?;
        if self.spares.len() >= self.recycled_spares_max as usize {
            return self.storage.remove(&temporary);
        }
        self.recycling = Some(Recycling {
            temporary,
            spare: numbered_name(id, SPARE_SUFFIX),
            zeroed_bytes: 0,
        });
        Ok(())
    }

    /// Zero-fills up to `zero_bytes_max` more bytes of the segment being recycled, and
    /// makes it a spare once it is all zeros.
    fn continue_recycling(&mut self, zero_bytes_max: u64) -> Result<(), WalError> {
        let Some(mut recycling) = self.recycling.take() else {
            return Ok(());
        };
        let next =
            self.storage
                .zero_part(&recycling.temporary, recycling.zeroed_bytes, zero_bytes_max)?;
        if let Some(zeroed_bytes) = next {
            recycling.zeroed_bytes = zeroed_bytes;
            self.recycling = Some(recycling);
            return Ok(());
        }
        if self.spares.len() >= self.recycled_spares_max as usize {
            // New spares were made meanwhile: keep within the bound.
            return self.storage.remove(&recycling.temporary);
        }
        self.storage
            .rename(&recycling.temporary, &recycling.spare)?;
        self.spares.push(recycling.spare);
        Ok(())
    }

    /// Keeps at most `count` spares from recycled segments (at least the configured
    /// `segments_spare`, at most `SEGMENTS_SPARE_MAX`): a recycled segment beyond that is
    /// removed, without zero-filling it, so that a log's disk use stays within its
    /// segments plus this many spares. Spares above the new bound are removed now
    /// (newest first).
    pub fn set_recycled_spares_max(&mut self, count: u32) -> Result<(), WalError> {
        self.check_usable()?;
        self.recycled_spares_max = count
            .max(self.config.segments_spare)
            .min(crate::SEGMENTS_SPARE_MAX);
        while self.spares.len() > self.recycled_spares_max as usize {
            let Some(spare) = self.spares.pop() else {
                break;
            };
            let result = self.storage.remove(&spare);
            self.poison_on_error(result)?;
        }
        Ok(())
    }

    /// How many of the oldest segments hold only records below `below`.
    fn recyclable_below(&self, below: Lsn) -> usize {
        self.segments
            .windows(2)
            .take_while(|pair| pair[1].first_lsn <= below)
            .count()
    }

    /// Recycles up to `segments_max` segments wholly below `below`, each zero-filled at
    /// once, after finishing a fill `checkpoint_step_bounded` left in progress.
    fn recycle_below(&mut self, below: Lsn, segments_max: usize) -> Result<(), WalError> {
        self.continue_recycling(u64::MAX)?;
        for _ in 0..self.recyclable_below(below).min(segments_max) {
            self.start_recycling()?;
            self.continue_recycling(u64::MAX)?;
        }
        Ok(())
    }

    /// Prepares zeroed spare segments until `count` are ready (bounded by
    /// `SEGMENTS_SPARE_MAX`), so later segment rolls do not stall on zero-filling. Call
    /// it off the latency-critical path, e.g. before a benchmark or at startup.
    pub fn reserve_spares(&mut self, count: u32) -> Result<(), WalError> {
        self.check_usable()?;
        let count = count.min(crate::SEGMENTS_SPARE_MAX) as usize;
        let result = self.create_spares(count);
        self.poison_on_error(result)
    }

    /// Iterates the records from LSN `from` up to `last_lsn()` at the time of the call,
    /// durable or not. Yields `LsnUnavailable` first if `from` was checkpointed away.
    pub fn read_from(&self, from: Lsn) -> RecordIter<'_> {
        let last_index = self.segments.len().saturating_sub(1);
        let spans = self
            .segments
            .iter()
            .enumerate()
            .map(|(index, segment)| {
                let end = if index == last_index {
                    self.write_offset
                } else {
                    segment.end_offset
                };
                Span {
                    path: &segment.path,
                    bytes: &segment.file.bytes()[..end as usize],
                    first_lsn: segment.first_lsn,
                }
            })
            .collect();
        RecordIter::new(spans, from, self.last_lsn())
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.failure {
            Some(cause) => Err(WalError::PreviousIo {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes any error fatal for this `Wal`: after a failed write-path I/O nobody knows
    /// what reached the disk, so nothing may pretend it worked (the fsyncgate lesson).
    fn poison_on_error<T>(&mut self, result: Result<T, WalError>) -> Result<T, WalError> {
        result.map_err(|error| {
            let cause = error.to_string();
            self.failure = Some(cause.clone());
            WalError::PreviousIo { cause }
        })
    }

    fn active_capacity(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |active| active.file.bytes().len() as u64)
    }

    /// Seals the full active segment and starts the next. The old segment is synced
    /// completely first: every segment but the last is then wholly durable, which is
    /// what lets recovery call any damage outside the last segment corruption.
    fn roll(&mut self) -> Result<(), WalError> {
        self.sync_wait()?;
        let range = self.synced_offset..self.write_offset;
        let write_offset = self.write_offset;
        let Some(active) = self.segments.last_mut() else {
            return Err(WalError::Config("log has no active segment"));
        };
        if !range.is_empty() {
            self.storage.sync(&mut active.file, range)?;
        }
        active.end_offset = write_offset;
        self.storage.seal(&mut active.file);
        let number = active.number + 1;
        self.synced_offset = write_offset;
        self.durable_lsn = self.last_lsn();
        // The next spare is not made here: zero-filling a whole segment and syncing it
        // paused the appending thread for 50-100 ms per roll (16 MiB segments, this
        // project's VM), the worst of the engine's open-loop tail. The owner makes it
        // a bounded step at a time (`spare_step`); without those steps, the next roll
        // makes it inline, as this one did before.
        self.activate_segment(number)
    }

    /// Whether `spare_step` has work: fewer zeroed spares than configured, or a fill
    /// (of a new spare or a recycled segment) under way. One comparison: cheap enough
    /// to ask on every turn.
    pub fn spare_wanted(&self) -> bool {
        self.recycling.is_some() || self.spares.len() < self.config.segments_spare as usize
    }

    /// Makes the next spare segment, zero-filling at most `zero_bytes_max` bytes per
    /// call: a new file is preallocated under a temporary name, filled over as many
    /// calls as it takes, synced by the last one and renamed into a spare (durably).
    /// A recycled segment's fill in progress is continued first (the two share one
    /// slot). Returns whether work remains ([`spare_wanted`](Self::spare_wanted)).
    ///
    /// A crash in the middle leaves the file under its temporary name; the next open
    /// removes it, as it removes any unfinished spare.
    pub fn spare_step(&mut self, zero_bytes_max: u64) -> Result<bool, WalError> {
        self.check_usable()?;
        let result = self.spare_step_bounded(zero_bytes_max.max(1));
        self.poison_on_error(result)?;
        Ok(self.spare_wanted())
    }

    fn spare_step_bounded(&mut self, zero_bytes_max: u64) -> Result<(), WalError> {
        if self.recycling.is_none() && self.spares.len() < self.config.segments_spare as usize {
            let id = self.spare_id_next;
            self.spare_id_next += 1;
            let temporary = numbered_name(id, TEMPORARY_SUFFIX);
            self.storage
                .create_allocated(&temporary, self.config.segment_bytes)?;
            self.recycling = Some(Recycling {
                temporary,
                spare: numbered_name(id, SPARE_SUFFIX),
                zeroed_bytes: 0,
            });
        }
        self.continue_recycling(zero_bytes_max)
    }

    /// Turns a spare into segment `number`, starting at `lsn_next`: header written and
    /// synced first, then the rename that makes it part of the log.
    fn activate_segment(&mut self, number: u64) -> Result<(), WalError> {
        if self.spares.is_empty() {
            // Finishing a recycled segment's fill costs no more than a new spare.
            self.continue_recycling(u64::MAX)?;
        }
        if self.spares.is_empty() {
            self.create_spares(1)?;
        }
        let spare = self.spares.remove(0);
        let name = segment_name(number);
        let mut file = self.storage.open(&spare)?;
        let segment_bytes = file.bytes().len() as u64;
        self.storage.begin_appends(&mut file, 0);
        let header = SegmentHeader {
            segment_number: number,
            first_lsn: self.lsn_next,
            segment_bytes,
        };
        file.bytes_mut(0..SEGMENT_HEADER_BYTES)
            .copy_from_slice(&header.encode());
        self.storage.sync(&mut file, 0..SEGMENT_HEADER_BYTES)?;
        self.storage.rename(&spare, &name)?;
        let path = self.storage.path_of(&name);
        self.segments.push(LiveSegment {
            number,
            first_lsn: self.lsn_next,
            name,
            path,
            end_offset: SEGMENT_HEADER_BYTES,
            file,
        });
        self.write_offset = SEGMENT_HEADER_BYTES;
        self.synced_offset = SEGMENT_HEADER_BYTES;
        self.records_end_offset = SEGMENT_HEADER_BYTES;
        self.proven_offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    fn replenish_spares(&mut self) -> Result<(), WalError> {
        self.create_spares(self.config.segments_spare as usize)
    }

    /// Creates zeroed spares (through a temporary name, so a crash never leaves a
    /// half-zeroed spare) until `count` exist.
    fn create_spares(&mut self, count: usize) -> Result<(), WalError> {
        while self.spares.len() < count {
            let id = self.spare_id_next;
            self.spare_id_next += 1;
            let temporary = numbered_name(id, TEMPORARY_SUFFIX);
            self.storage
                .create_zeroed(&temporary, self.config.segment_bytes)?;
            let spare = numbered_name(id, SPARE_SUFFIX);
            self.storage.rename(&temporary, &spare)?;
            self.spares.push(spare);
        }
        Ok(())
    }
}

impl<S: Storage> Drop for Wal<S> {
    fn drop(&mut self) {
        // The kernel may still be reading the active segment's buffer for an io_uring
        // write; it must finish before the buffer is freed.
        let mut reaped = true;
        if let Some(in_flight) = self.in_flight.take() {
            match self.storage.sync_wait() {
                Ok(()) => self.complete_sync(in_flight),
                Err(_) => reaped = false,
            }
        }
        if self.storage.sync_pending() {
            // The wait failed with completions still owed: the kernel may read a
            // segment's buffer at any time from now on, so no segment may free its
            // buffer. Leaking them (a segment's size each, once, on a log that is
            // failing anyway) is the price of never letting the kernel read freed
            // memory into the file.
            std::mem::forget(std::mem::take(&mut self.segments));
            return;
        }
        // A clean close vouches for the last synced batch (one small sync, and only when
        // everything appended is already durable: unsynced records stay unsynced).
        if reaped && self.failure.is_none() {
            let _ = self.mark_all_durable();
        }
    }
}

/// Sorts the directory: segment numbers (ascending), spares of the configured size
/// (oldest first) and the next free spare id. Removes leftover temporary files and
/// spares of another size.
fn sort_names<S: Storage>(
    storage: &mut S,
    names: &[String],
    segment_bytes: u64,
) -> Result<(Vec<u64>, Vec<String>, u64), WalError> {
    let mut segments = Vec::new();
    let mut spares = Vec::new();
    let mut id_max = 0;
    for name in names {
        if let Some(number) = parse_segment_name(name) {
            segments.push(number);
        } else if let Some(id) = parse_numbered(name, SPARE_SUFFIX) {
            id_max = id_max.max(id);
            spares.push((id, name.clone()));
        } else if let Some(id) = parse_numbered(name, TEMPORARY_SUFFIX) {
            id_max = id_max.max(id);
            storage.remove(name)?;
        }
    }
    segments.sort_unstable();
    spares.sort_unstable();
    let mut kept = Vec::with_capacity(spares.len());
    for (_, name) in spares {
        let file = storage.open(&name)?;
        let size_matches = file.bytes().len() as u64 == segment_bytes;
        drop(file);
        if size_matches {
            kept.push(name);
        } else {
            storage.remove(&name)?;
        }
    }
    Ok((segments, kept, id_max + 1))
}

/// `00000000000000000007.wal` for segment 7.
pub(crate) fn segment_name(number: u64) -> String {
    numbered_name(number, SEGMENT_SUFFIX)
}

/// The segment number in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    parse_numbered(name, SEGMENT_SUFFIX)
}

fn numbered_name(number: u64, suffix: &str) -> String {
    format!("{number:0width$}{suffix}", width = NAME_DIGITS)
}

fn parse_numbered(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The engine moves its log onto a pipeline thread, so the file-backed `Wal` must stay
/// `Send` (the simulated one shares its disk through `Rc` and is single-threaded).
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Wal<FileStorage>>();
};

#[cfg(test)]
mod drop_tests {
    use std::cell::Cell;
    use std::ops::Range;
    use std::path::PathBuf;
    use std::rc::Rc;

    use super::Wal;
    use crate::error::WalError;
    use crate::storage::sim::SimSegment;
    use crate::storage::{SegmentFile, SimDisk, SimStorage, Storage};
    use crate::{SyncBackend, WalConfig};

    /// A simulated storage whose sync never completes: `sync_wait` fails and the
    /// "kernel" still owes the completion, as after an io_uring wait that failed.
    struct StuckStorage {
        inner: SimStorage,
        stuck: bool,
        segments_freed: Rc<Cell<u32>>,
    }

    /// A segment that counts when its buffer is freed.
    struct CountedSegment {
        inner: SimSegment,
        freed: Rc<Cell<u32>>,
    }

    impl Drop for CountedSegment {
        fn drop(&mut self) {
            self.freed.set(self.freed.get() + 1);
        }
    }

    impl SegmentFile for CountedSegment {
        fn bytes(&self) -> &[u8] {
            self.inner.bytes()
        }
        fn bytes_mut(&mut self, range: Range<u64>) -> &mut [u8] {
            self.inner.bytes_mut(range)
        }
    }

    impl Storage for StuckStorage {
        type Segment = CountedSegment;
        fn path_of(&self, name: &str) -> PathBuf {
            self.inner.path_of(name)
        }
        fn list(&mut self) -> Result<Vec<String>, WalError> {
            self.inner.list()
        }
        fn create_zeroed(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
            self.inner.create_zeroed(name, bytes)
        }
        fn create_allocated(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
            self.inner.create_allocated(name, bytes)
        }
        fn zero_part(&mut self, name: &str, at: u64, max: u64) -> Result<Option<u64>, WalError> {
            self.inner.zero_part(name, at, max)
        }
        fn extend(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
            self.inner.extend(name, bytes)
        }
        fn open(&mut self, name: &str) -> Result<CountedSegment, WalError> {
            Ok(CountedSegment {
                inner: self.inner.open(name)?,
                freed: self.segments_freed.clone(),
            })
        }
        fn rename(&mut self, from: &str, to: &str) -> Result<(), WalError> {
            self.inner.rename(from, to)
        }
        fn remove(&mut self, name: &str) -> Result<(), WalError> {
            self.inner.remove(name)
        }
        fn sync_submit(
            &mut self,
            segment: &mut CountedSegment,
            r: Range<u64>,
        ) -> Result<(), WalError> {
            self.inner.sync_submit(&mut segment.inner, r)
        }
        fn sync_wait(&mut self) -> Result<(), WalError> {
            if self.stuck {
                return Err(WalError::Config(
                    "the simulated kernel still owes a completion",
                ));
            }
            self.inner.sync_wait()
        }
        fn sync_pending(&self) -> bool {
            self.stuck
        }
        fn sync_all(&mut self, segment: &mut CountedSegment) -> Result<(), WalError> {
            self.inner.sync_all(&mut segment.inner)
        }
    }

    fn config() -> WalConfig {
        WalConfig {
            segment_bytes: 64 * 1024,
            record_bytes_max: 4096,
            sync: SyncBackend::IoUring,
            sync_fallback: true,
            segments_spare: 0,
        }
    }

    // Proves that a log dropped while its storage still owes a sync completion (a
    // failed io_uring wait) frees no segment buffer the kernel might still read, and
    // that an ordinary drop frees them all.
    #[test]
    fn a_pending_sync_keeps_every_segment_buffer_alive() {
        for stuck in [false, true] {
            let disk = SimDisk::new();
            let freed = Rc::new(Cell::new(0));
            let storage = StuckStorage {
                inner: disk.storage(),
                stuck: false,
                segments_freed: freed.clone(),
            };
            let (mut wal, _) = Wal::open_with_storage(storage, config()).expect("open");
            wal.append(1, b"in flight").expect("append");
            wal.storage.stuck = stuck;
            wal.sync_submit().expect("submit");
            assert!(wal.sync_wait().is_err() == stuck);
            let live_segments = wal.segments.len() as u32;
            assert!(live_segments >= 1);
            drop(wal);
            let expected = if stuck { 0 } else { live_segments };
            assert_eq!(freed.get(), expected, "stuck: {stuck}");
        }
    }
}
