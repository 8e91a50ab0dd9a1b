//! The log on real files: every sync backend, segment rolls, checkpoints that recycle,
//! record limits, and corruption found on open.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tricommit_wal::{scan, Lsn, SyncBackend, Wal, WalConfig, WalError, SEGMENT_HEADER_BYTES};

/// Small segments so a few hundred records cross several of them.
const SEGMENT_BYTES: u64 = 64 * 1024;
const RECORD_BYTES_MAX: u32 = 8 * 1024;

fn config(sync: SyncBackend) -> WalConfig {
    WalConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        sync,
        // An io_uring test that ran on the fdatasync fallback would prove nothing about
        // io_uring: it must fail (or skip loudly, see `io_uring_or_skip`).
        sync_fallback: false,
        segments_spare: 1,
    }
}

fn temporary_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

/// The payload of `lsn`: its length varies and its bytes depend on the LSN.
fn payload(lsn: Lsn) -> Vec<u8> {
    let length = (lsn * 37 % 900) as usize;
    (0..length)
        .map(|index| (lsn as usize * 13 + index) as u8)
        .collect()
}

fn kind(lsn: Lsn) -> u8 {
    (lsn % 251) as u8
}

/// Checks that the log holds exactly the records `from..=last` with the expected bytes.
fn assert_records(wal: &Wal, from: Lsn, last: Lsn) {
    let mut expected = from;
    for record in wal.read_from(from) {
        let record = record.expect("readable record");
        assert_eq!(record.lsn, expected);
        assert_eq!(record.kind, kind(expected), "kind of LSN {expected}");
        assert_eq!(
            record.payload,
            &payload(expected)[..],
            "payload of LSN {expected}"
        );
        expected += 1;
    }
    assert_eq!(
        expected,
        last + 1,
        "records end at {} instead of {last}",
        expected - 1
    );
}

/// Appends the records after `last` while `more` holds, and returns the last LSN.
fn append_while(wal: &mut Wal, mut last: Lsn, more: impl Fn(&Wal) -> bool) -> Lsn {
    while more(wal) {
        last = wal
            .append(kind(last + 1), &payload(last + 1))
            .expect("append");
    }
    last
}

/// How many files in `dir` have names ending in `suffix`.
fn names_ending(dir: &Path, suffix: &str) -> usize {
    fs::read_dir(dir)
        .expect("list")
        .filter(|entry| {
            entry
                .as_ref()
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Set this to run the io_uring tests as loud skips on a kernel (or a container's
/// seccomp profile) that refuses io_uring; without it they fail there.
const ALLOW_NO_IO_URING_VAR: &str = "TRICOMMIT_ALLOW_NO_IO_URING";

/// Whether an io_uring test should run: true where the kernel grants io_uring. Where it
/// does not, the test fails, unless `ALLOW_NO_IO_URING_VAR` is set: then this prints
/// that the test is skipped, and why, and returns false.
fn io_uring_or_skip(test: &str) -> bool {
    let dir = temporary_dir();
    let probe = WalConfig {
        sync_fallback: true,
        ..config(SyncBackend::IoUring)
    };
    let (_, recovery) = Wal::open(dir.path(), probe).expect("open a probe log");
    let Some(reason) = recovery.backend_fallback_reason else {
        assert_eq!(recovery.backend, SyncBackend::IoUring);
        return true;
    };
    if std::env::var_os(ALLOW_NO_IO_URING_VAR).is_some() {
        eprintln!("SKIPPED {test}: io_uring is unavailable here ({reason}); {ALLOW_NO_IO_URING_VAR} is set");
        return false;
    }
    panic!(
        "{test}: io_uring is unavailable here ({reason}), so this test would only exercise \
         the fdatasync fallback; set {ALLOW_NO_IO_URING_VAR}=1 to skip it"
    );
}

/// Appends, syncs (plain and overlapped), reopens and reads back on one backend.
fn exercise_backend(sync: SyncBackend) {
    let dir = temporary_dir();
    let (mut wal, recovery) = Wal::open(dir.path(), config(sync)).expect("open fresh");
    assert_eq!((recovery.records, recovery.last_lsn), (0, 0));
    // The backend asked for is the one that ran: no silent fallback.
    assert_eq!(
        (recovery.backend, recovery.backend_fallback_reason),
        (sync, None)
    );
    assert_eq!(wal.backend(), sync);
    assert_eq!(wal.sync().expect("empty sync"), 0);
    for batch in 0..40u64 {
        let records: Vec<(u8, Vec<u8>)> = (1..=10)
            .map(|index| batch * 10 + index)
            .map(|lsn| (kind(lsn), payload(lsn)))
            .collect();
        let last = wal
            .append_batch(
                records
                    .iter()
                    .map(|(kind, bytes)| (*kind, bytes.as_slice())),
            )
            .expect("append batch");
        assert_eq!(last, batch * 10 + 10);
        if batch % 2 == 0 {
            assert_eq!(wal.sync().expect("sync"), last);
        } else {
            // Split form: submit, then wait (the overlap itself is tested separately).
            wal.sync_submit().expect("submit");
            assert!(wal.durable_lsn() <= last);
            assert_eq!(wal.sync_wait().expect("wait"), last);
        }
        assert_eq!(wal.durable_lsn(), last);
    }
    assert_eq!(wal.sync().expect("sync with nothing new"), 400);
    assert_records(&wal, 1, 400);
    assert_records(&wal, 217, 400);
    drop(wal);
    assert!(
        segment_paths(dir.path()).len() >= 3,
        "400 records of ~450 bytes must span several 64 KiB segments"
    );
    let (wal, recovery) = Wal::open(dir.path(), config(sync)).expect("reopen");
    assert_eq!(
        (
            recovery.records,
            recovery.first_lsn,
            recovery.last_lsn,
            recovery.tail_bytes_dropped
        ),
        (400, 1, 400, 0)
    );
    assert_eq!(wal.durable_lsn(), 400);
    assert_records(&wal, 1, 400);
}

// Proves the Msync backend appends, syncs, rolls segments and recovers every record.
#[test]
fn msync_backend_round_trip() {
    exercise_backend(SyncBackend::Msync);
}

// Proves the Fdatasync backend appends, syncs, rolls segments and recovers every record.
#[test]
fn fdatasync_backend_round_trip() {
    exercise_backend(SyncBackend::Fdatasync);
}

// Proves the IoUring backend itself (never the fallback) appends, syncs with overlap,
// rolls segments and recovers every record.
#[test]
fn io_uring_backend_round_trip() {
    if io_uring_or_skip("io_uring_backend_round_trip") {
        exercise_backend(SyncBackend::IoUring);
    }
}

// Proves that io_uring asked for with the fallback off either runs on io_uring or fails
// with `BackendUnavailable`: it never quietly becomes fdatasync.
#[test]
fn io_uring_without_fallback_is_io_uring_or_an_error() {
    let dir = temporary_dir();
    match Wal::open(dir.path(), config(SyncBackend::IoUring)) {
        Ok((wal, recovery)) => {
            assert_eq!(wal.backend(), SyncBackend::IoUring);
            assert_eq!(recovery.backend_fallback_reason, None);
        }
        Err(WalError::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, SyncBackend::IoUring);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

// Proves that with io_uring the caller can append while a sync is in flight, that the
// in-flight sync covers only what was appended before it, and that reads see everything.
#[test]
fn io_uring_appends_during_an_inflight_sync() {
    if !io_uring_or_skip("io_uring_appends_during_an_inflight_sync") {
        return;
    }
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::IoUring)).expect("open");
    for lsn in 1..=5 {
        wal.append(kind(lsn), &payload(lsn)).expect("append");
    }
    wal.sync_submit().expect("submit");
    for lsn in 6..=8 {
        wal.append(kind(lsn), &payload(lsn))
            .expect("append while syncing");
    }
    assert_records(&wal, 1, 8);
    assert_eq!(wal.sync_wait().expect("wait"), 5);
    assert_eq!(wal.sync().expect("sync the rest"), 8);
}

// Proves a record above the limit is a typed error that leaves the log usable.
#[test]
fn oversized_record_is_rejected() {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    let too_big = vec![0u8; RECORD_BYTES_MAX as usize];
    match wal.append(1, &too_big) {
        Err(WalError::RecordTooLarge {
            record_bytes,
            record_bytes_max,
        }) => {
            assert_eq!(
                (record_bytes, record_bytes_max),
                (u64::from(RECORD_BYTES_MAX) + 17, RECORD_BYTES_MAX)
            );
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(
        wal.append(1, &too_big[..RECORD_BYTES_MAX as usize - 17])
            .expect("largest record fits"),
        1
    );
    assert_eq!(wal.sync().expect("sync"), 1);
}

// Proves checkpoint recycles the segments wholly below the LSN by renaming them (the
// same inode comes back as a later segment) and keeps every record at or above it.
#[test]
fn checkpoint_recycles_segments_by_rename() {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    for lsn in 1..=400 {
        wal.append(kind(lsn), &payload(lsn)).expect("append");
    }
    wal.sync().expect("sync");
    let before = segment_paths(dir.path());
    let first_inode = fs::metadata(&before[0]).expect("stat").ino();
    wal.checkpoint(250).expect("checkpoint");
    let after = segment_paths(dir.path());
    assert!(after.len() < before.len(), "no segment was recycled");
    assert!(
        wal.first_lsn() > 1 && wal.first_lsn() <= 250,
        "first LSN {} after checkpoint(250)",
        wal.first_lsn()
    );
    assert_records(&wal, wal.first_lsn(), 400);
    assert!(matches!(
        wal.read_from(1).next(),
        Some(Err(WalError::LsnUnavailable { lsn: 1, .. }))
    ));
    // Keep appending until new segments are needed: they must reuse the recycled files.
    let mut inodes_seen = Vec::new();
    for lsn in 401..=800 {
        wal.append(kind(lsn), &payload(lsn)).expect("append");
        inodes_seen.extend(
            segment_paths(dir.path())
                .iter()
                .map(|path| fs::metadata(path).expect("stat").ino()),
        );
    }
    assert!(
        inodes_seen.contains(&first_inode),
        "the recycled segment file was not reused"
    );
    wal.sync().expect("sync");
    let first = wal.first_lsn();
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
    assert_eq!((recovery.first_lsn, recovery.last_lsn), (first, 800));
    assert_records(&wal, first, 800);
}

/// Writes 400 records and returns the directory and the segment files.
fn filled_log() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    for lsn in 1..=400 {
        wal.append(kind(lsn), &payload(lsn)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let segments = segment_paths(dir.path());
    (dir, segments)
}

/// Offset of the record with `lsn_wanted` in a segment whose first record has `first_lsn`.
fn record_offset(first_lsn: Lsn, lsn_wanted: Lsn) -> u64 {
    SEGMENT_HEADER_BYTES
        + (first_lsn..lsn_wanted)
            .map(|lsn| 17 + payload(lsn).len() as u64)
            .sum::<u64>()
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x04;
    fs::write(path, bytes).expect("write segment");
}

// Proves one flipped bit in a record in the middle of a (non-last) segment makes open
// fail with an error naming that file and the record's byte offset, and that the
// read-only scan reports the same place.
#[test]
fn bit_flip_mid_segment_fails_open_naming_offset() {
    let (dir, segments) = filled_log();
    let offset = record_offset(1, 40);
    flip_bit(&segments[0], offset + 17 + 3);
    for error in [
        Wal::open(dir.path(), config(SyncBackend::Fdatasync)).err(),
        scan(dir.path()).err(),
    ] {
        match error {
            Some(WalError::Corrupt {
                path,
                offset: reported,
                reason,
            }) => {
                assert_eq!(path, segments[0]);
                assert_eq!(reported, offset, "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

// Proves truncating the last segment in the middle of a record leaves a log that opens,
// ends at the record before the cut, and reports the dropped tail bytes.
#[test]
fn truncated_last_segment_drops_the_tail() {
    let (dir, segments) = filled_log();
    let last = segments.last().expect("segments");
    let view = scan(dir.path()).expect("scan");
    let last_segment = view.report().segments.last().expect("segment").clone();
    drop(view);
    let cut_lsn = last_segment.first_lsn + (400 - last_segment.first_lsn) / 2;
    let cut_offset = record_offset(last_segment.first_lsn, cut_lsn) + 10;
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(cut_offset)
        .expect("truncate");
    let (wal, recovery) =
        Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open truncated");
    assert_eq!(recovery.last_lsn, cut_lsn - 1);
    assert_eq!(recovery.tail_bytes_dropped, 10);
    assert_eq!(
        recovery.tail_position,
        Some((last.clone(), cut_offset - 10))
    );
    assert_records(&wal, 1, cut_lsn - 1);
    assert_eq!(
        fs::metadata(last).expect("stat").len(),
        SEGMENT_BYTES,
        "the segment is grown back"
    );
}

// Proves a missing segment in the middle of the log is corruption, not a silent gap.
#[test]
fn missing_middle_segment_is_corruption() {
    let (dir, segments) = filled_log();
    fs::remove_file(&segments[1]).expect("remove");
    match Wal::open(dir.path(), config(SyncBackend::Fdatasync)) {
        Err(WalError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, segments[2]);
            assert!(reason.contains("missing"), "{reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("open accepted a log with a missing segment"),
    }
}

/// One segment big enough for `VOUCHED_RECORDS` records of `VOUCHED_PAYLOAD_BYTES`.
const VOUCHED_SEGMENT_BYTES: u64 = 1 << 20;
const VOUCHED_RECORDS: u64 = 1000;
const VOUCHED_PAYLOAD_BYTES: u64 = 64;
/// The record whose bit is flipped, in the middle of the only segment.
const VOUCHED_DAMAGED_LSN: Lsn = 500;
const _: () = assert!(
    SEGMENT_HEADER_BYTES + VOUCHED_RECORDS * (17 + VOUCHED_PAYLOAD_BYTES + 24)
        < VOUCHED_SEGMENT_BYTES
);

fn vouched_config(sync: SyncBackend) -> WalConfig {
    WalConfig {
        segment_bytes: VOUCHED_SEGMENT_BYTES,
        ..config(sync)
    }
}

/// Writes `VOUCHED_RECORDS` records into one segment, syncing after every `batch`
/// records; returns the directory and the Wal, still open.
fn one_segment_log(sync: SyncBackend, batch: u64) -> (tempfile::TempDir, Wal) {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), vouched_config(sync)).expect("open");
    let payload = [0x5Au8; VOUCHED_PAYLOAD_BYTES as usize];
    for lsn in 1..=VOUCHED_RECORDS {
        wal.append(7, &payload).expect("append");
        if lsn % batch == 0 {
            assert_eq!(wal.sync().expect("sync"), lsn);
        }
    }
    assert_eq!(wal.sync().expect("sync"), VOUCHED_RECORDS);
    (dir, wal)
}

/// Offset of record `lsn` when every batch of `batch` records is followed by one sync
/// mark (`docs/wal-format.md` §2.3).
fn vouched_record_offset(lsn: Lsn, batch: u64) -> u64 {
    let marks_before = (lsn - 1) / batch;
    SEGMENT_HEADER_BYTES + (lsn - 1) * (17 + VOUCHED_PAYLOAD_BYTES) + marks_before * 24
}

fn assert_corrupt_at(dir: &Path, sync: SyncBackend, offset: u64) {
    let segment = segment_paths(dir).remove(0);
    for error in [scan(dir).err(), Wal::open(dir, vouched_config(sync)).err()] {
        match error {
            Some(WalError::Corrupt {
                path,
                offset: reported,
                reason,
            }) => {
                assert_eq!(path, segment, "{sync:?}: {reason}");
                assert_eq!(reported, offset, "{sync:?}: {reason}");
            }
            other => panic!("{sync:?}: expected Corrupt, got {other:?}"),
        }
    }
}

// Proves the reported weakness is gone: in the last (here the only) segment, a bit flip
// in record 500 of 1,000 synced records fails open with the file and offset, because
// the sync marks of later batches vouch that its bytes were durable. The Wal is leaked
// rather than closed, as a crash would leave it, so no close mark helps; every backend.
#[test]
fn bit_flip_in_last_segment_before_later_syncs_fails_open() {
    const BATCH_RECORDS: u64 = 10;
    for sync in SyncBackend::ALL {
        if sync == SyncBackend::IoUring && !io_uring_or_skip("bit_flip_in_last_segment (io_uring)")
        {
            continue;
        }
        let (dir, wal) = one_segment_log(sync, BATCH_RECORDS);
        wal.abandon();
        assert_eq!(segment_paths(dir.path()).len(), 1);
        let offset = vouched_record_offset(VOUCHED_DAMAGED_LSN, BATCH_RECORDS);
        flip_bit(&segment_paths(dir.path())[0], offset + 17 + 30);
        assert_corrupt_at(dir.path(), sync, offset);
    }
}

// Proves that 1,000 records synced in one single batch are protected too once the log
// was closed cleanly: the close writes a mark vouching for them, so a flip in record 500
// fails open instead of dropping records 500 to 1,000 as a torn tail.
#[test]
fn bit_flip_after_one_sync_and_clean_close_fails_open() {
    let (dir, wal) = one_segment_log(SyncBackend::Fdatasync, VOUCHED_RECORDS);
    drop(wal);
    let offset = vouched_record_offset(VOUCHED_DAMAGED_LSN, VOUCHED_RECORDS);
    flip_bit(&segment_paths(dir.path())[0], offset + 5);
    assert_corrupt_at(dir.path(), SyncBackend::Fdatasync, offset);
}

// Proves the other side of the rule: damage in the last batch is a torn tail even when
// that batch's own sync mark reached the disk (a crash during its sync can write the
// mark's page and lose an earlier one), because that mark vouches only for what was
// durable before the batch. Open succeeds with the previous batch as the log's end.
#[test]
fn damage_in_last_batch_despite_its_own_mark_is_a_torn_tail() {
    const BATCH_RECORDS: u64 = 100;
    let (dir, wal) = one_segment_log(SyncBackend::Fdatasync, BATCH_RECORDS);
    wal.abandon();
    let last_batch_first = VOUCHED_RECORDS - BATCH_RECORDS + 1;
    let offset = vouched_record_offset(last_batch_first, BATCH_RECORDS);
    let segment = segment_paths(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read segment");
    // The lost page: the batch's first records read as zeros, its mark stays intact.
    bytes[offset as usize..offset as usize + 512].fill(0);
    fs::write(&segment, bytes).expect("write segment");
    let (wal, recovery) =
        Wal::open(dir.path(), vouched_config(SyncBackend::Fdatasync)).expect("torn tail opens");
    assert_eq!(recovery.last_lsn, last_batch_first - 1);
    assert_eq!(recovery.tail_position, Some((segment, offset)));
    assert!(recovery.tail_bytes_dropped > 512);
    drop(wal);
    assert_eq!(scan(dir.path()).expect("scan").report().tail, None);
}

#[test]
fn checkpoint_step_recycles_one_segment_per_call() {
    // Proves that `checkpoint_step` recycles the oldest segment below the bound and no
    // more, says whether more remain, never touches records at or above the bound, and
    // leaves a log that reopens with the same records.
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    let last = append_while(&mut wal, 0, |wal| wal.segment_count() < 4);
    wal.sync().expect("sync");
    let below = last;
    let mut segments = wal.segment_count();
    loop {
        let more = wal.checkpoint_step(below).expect("step");
        assert_eq!(wal.segment_count(), segments - 1, "one segment per step");
        segments -= 1;
        assert!(wal.first_lsn() <= below);
        if !more {
            break;
        }
    }
    assert_eq!(
        segments, 1,
        "everything below the bound but the active segment went"
    );
    assert!(!wal
        .checkpoint_step(below)
        .expect("a step with nothing to do"));
    assert_eq!(wal.segment_count(), 1);
    let first = wal.first_lsn();
    assert_records(&wal, first, last);
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
    assert_eq!(recovery.first_lsn, first);
    assert_records(&wal, first, last);
}

#[test]
fn checkpoint_step_bounded_spreads_the_zero_fill() {
    // Proves that `checkpoint_step_bounded` takes a recycled segment out of the log at
    // once and zero-fills it over several calls, one bounded part per call; that a
    // segment roll meanwhile finishes the fill rather than waiting; that a log dropped
    // with a fill in progress reopens with its records and without the half-filled file
    // as a spare; and that the finished spares are reused.
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    let mut last = append_while(&mut wal, 0, |wal| wal.segment_count() < 4);
    wal.sync().expect("sync");
    let below = last;
    let zero_bytes_max = SEGMENT_BYTES / 8;
    let mut calls = 0;
    while wal
        .checkpoint_step_bounded(below, zero_bytes_max)
        .expect("step")
    {
        calls += 1;
        assert!(calls < 100, "the steps never end");
        if calls == 3 {
            // Drop and reopen in the middle of the first segment's fill.
            assert!(
                names_ending(dir.path(), ".tmp") == 1,
                "a fill is in progress"
            );
            drop(wal);
            let (reopened, _) =
                Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
            wal = reopened;
            assert_eq!(
                names_ending(dir.path(), ".tmp"),
                0,
                "the half-filled file went"
            );
            assert_records(&wal, wal.first_lsn(), last);
        }
    }
    assert_eq!(wal.segment_count(), 1);
    assert!(
        calls >= 2 * 8,
        "two segments at 8 parts each take at least 16 calls, took {calls}"
    );
    let first = wal.first_lsn();
    assert_records(&wal, first, last);
    let spares = names_ending(dir.path(), ".spare");
    assert!(spares >= 2, "recycled segments became spares: {spares}");
    // Rolls reuse them.
    last = append_while(&mut wal, last, |wal| wal.segment_count() < 3);
    wal.sync().expect("sync");
    assert_records(&wal, first, last);
    // A roll in the middle of a fill finishes it and uses it.
    assert!(wal
        .checkpoint_step_bounded(wal.last_lsn(), zero_bytes_max)
        .expect("step"));
    let segments = wal.segment_count();
    last = append_while(&mut wal, last, |wal| wal.segment_count() == segments);
    wal.sync().expect("sync");
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
    assert_records(&wal, wal.first_lsn(), last);
}

#[test]
fn spare_step_makes_the_next_segment_in_bounded_parts() {
    // Proves that a roll leaves the next spare to `spare_step` instead of zero-filling
    // a whole segment inline; that the steps fill it a bounded part at a time under a
    // temporary name and then make it a spare; that the next roll uses that spare; and
    // that a log dropped in the middle of a fill reopens with its records and without
    // the half-filled file.
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    assert!(!wal.spare_wanted(), "the open made the configured spare");
    let mut last = append_while(&mut wal, 0, |wal| wal.segment_count() < 2);
    assert_eq!(
        names_ending(dir.path(), ".spare"),
        0,
        "the roll used the spare"
    );
    assert!(wal.spare_wanted());
    let zero_bytes_max = SEGMENT_BYTES / 4;
    assert!(wal.spare_step(zero_bytes_max).expect("step"), "more to do");
    assert_eq!(names_ending(dir.path(), ".tmp"), 1, "a fill is in progress");
    let mut calls = 1;
    loop {
        calls += 1;
        assert!(calls < 100, "the steps never end");
        if !wal.spare_step(zero_bytes_max).expect("step") {
            break;
        }
    }
    assert!(
        calls >= 4,
        "four parts take four calls at least, took {calls}"
    );
    assert_eq!(names_ending(dir.path(), ".tmp"), 0);
    assert_eq!(names_ending(dir.path(), ".spare"), 1);
    assert!(!wal.spare_wanted());
    last = append_while(&mut wal, last, |wal| wal.segment_count() < 3);
    assert_eq!(names_ending(dir.path(), ".spare"), 0, "the roll used it");
    wal.sync().expect("sync");
    // Dropped in the middle of the next fill.
    assert!(wal.spare_step(zero_bytes_max).expect("step"));
    drop(wal);
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
    assert_eq!(
        names_ending(dir.path(), ".tmp"),
        0,
        "the half-filled file went"
    );
    assert_records(&wal, wal.first_lsn(), last);
    last = append_while(&mut wal, last, |wal| wal.segment_count() < 5);
    wal.sync().expect("sync");
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("reopen");
    assert_records(&wal, wal.first_lsn(), last);
}

#[test]
fn recycled_spares_are_bounded() {
    // Proves that with a lowered bound, checkpoints remove the recycled segments the
    // bound has no room for, and that lowering it removes the spares above it at once.
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config(SyncBackend::Fdatasync)).expect("open");
    let mut last = append_while(&mut wal, 0, |wal| wal.segment_count() < 6);
    wal.sync().expect("sync");
    wal.checkpoint(last).expect("checkpoint");
    let spares = |dir: &Path| names_ending(dir, ".spare");
    assert_eq!(
        spares(dir.path()),
        5,
        "five recycled (the open's spare went to the first roll, and a roll makes no \
         spare inline when the next roll can)"
    );
    wal.set_recycled_spares_max(2).expect("lower the bound");
    assert_eq!(spares(dir.path()), 2);
    last = append_while(&mut wal, last, |wal| wal.segment_count() < 6);
    wal.sync().expect("sync");
    wal.checkpoint(last).expect("checkpoint");
    assert!(
        spares(dir.path()) <= 2,
        "recycling kept more spares than allowed"
    );
    assert_records(&wal, wal.first_lsn(), last);
}
