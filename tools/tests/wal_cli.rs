//! `tricommit wal dump|verify` run as the built binary.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use std::time::{Duration, Instant};

use tricommit_wal::{LogView, SyncBackend, Wal, WalConfig, WalError, SEGMENT_HEADER_BYTES};

const RECORDS: u64 = 300;
const PAYLOAD_BYTES: usize = 200;
/// Small segments so the log spans several files.
const SEGMENT_BYTES: u64 = 16 * 1024;

fn tricommit(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tricommit"))
        .args(args)
        .arg(dir)
        .output()
        .expect("run tricommit")
}

/// How long a lock left by a sibling test's child process may last (see `retry_locked`).
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Runs `attempt` until it is not refused with `WalError::Locked`, for at most
/// `LOCK_RELEASE_WAIT`. The directory lock is a `flock` on an open file description:
/// when another test of this binary forks a child (`Command::output`) while this test
/// holds the lock, the child shares the description until its `exec` closes it, so the
/// lock can outlive this test's `drop` by a moment (CI saw `scan` refused once right
/// after `write_log`). Only the test process forks while holding locks; the CLI does not.
fn retry_locked<T>(mut attempt: impl FnMut() -> Result<T, WalError>) -> Result<T, WalError> {
    let deadline = Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match attempt() {
            Err(WalError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|index| (lsn as usize + index) as u8)
        .collect()
}

/// Segments of `segment_bytes`, fdatasync, records up to 4 KiB.
fn wal_config(segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        record_bytes_max: 4096,
        sync: SyncBackend::Fdatasync,
        sync_fallback: true,
        segments_spare: 1,
    }
}

/// A synced log of `RECORDS` records of `PAYLOAD_BYTES` bytes each.
fn write_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let config = wal_config(SEGMENT_BYTES);
    let (mut wal, _) = Wal::open(dir.path(), config).expect("open");
    for lsn in 1..=RECORDS {
        wal.append((lsn % 5) as u8, &payload(lsn)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    // The binary's own read-only scans must find the directory free (`retry_locked`).
    let view: LogView = retry_locked(|| tricommit_wal::scan(dir.path())).expect("scan");
    drop(view);
    dir
}

fn first_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    segments.sort();
    assert!(segments.len() > 2, "the log should span several segments");
    segments.swap_remove(0)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// Proves verify accepts a clean log with exit 0 and a one-line summary of its records.
#[test]
fn verify_clean_log() {
    let dir = write_log();
    let output = tricommit(&["wal", "verify"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.starts_with(&format!("ok: {RECORDS} records (LSN 1..={RECORDS})")),
        "{stdout}"
    );
}

// Proves dump prints one line per record: lsn, kind, length and the payload's first
// bytes in hex.
#[test]
fn dump_prints_every_record() {
    let dir = write_log();
    let output = tricommit(&["wal", "dump"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len() as u64, RECORDS);
    let hex: String = payload(7)[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(lines[6], format!("7 2 {PAYLOAD_BYTES} {hex}.."));
}

// Proves verify reports a bit flipped by hand in the middle of the first segment with
// exit 1, naming the file and the byte offset of the damaged record.
#[test]
fn verify_reports_a_hand_made_bit_flip() {
    let dir = write_log();
    let segment = first_segment(dir.path());
    let record_bytes = 17 + PAYLOAD_BYTES as u64;
    let damaged_record_offset = SEGMENT_HEADER_BYTES + 20 * record_bytes;
    let mut bytes = fs::read(&segment).expect("read");
    bytes[(damaged_record_offset + 17 + 100) as usize] ^= 0x20;
    fs::write(&segment, bytes).expect("write");
    let output = tricommit(&["wal", "verify"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("byte offset {damaged_record_offset}")),
        "{stderr}"
    );
}

// Proves the reported weakness is fixed end to end: one segment holding 1,000 synced
// records, one bit flipped in record 500, and `wal verify` exits 1 naming the segment and
// the record's byte offset instead of calling records 500..=1000 a torn tail.
#[test]
fn verify_reports_a_bit_flip_in_the_last_segment() {
    const ONE_SEGMENT_BYTES: u64 = 1 << 20;
    const SYNCED_RECORDS: u64 = 1000;
    const DAMAGED_LSN: u64 = 500;
    const _: () = assert!(
        SEGMENT_HEADER_BYTES + SYNCED_RECORDS * (17 + PAYLOAD_BYTES as u64) + 48
            < ONE_SEGMENT_BYTES
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let config = wal_config(ONE_SEGMENT_BYTES);
    let (mut wal, _) = Wal::open(dir.path(), config).expect("open");
    for lsn in 1..=SYNCED_RECORDS {
        wal.append((lsn % 5) as u8, &payload(lsn)).expect("append");
    }
    assert_eq!(wal.sync().expect("sync"), SYNCED_RECORDS);
    drop(wal);
    let segment = dir.path().join("00000000000000000001.wal");
    // One sync, so the records lie packed from the header on (docs/wal-format.md §2).
    let damaged_offset = SEGMENT_HEADER_BYTES + (DAMAGED_LSN - 1) * (17 + PAYLOAD_BYTES as u64);
    let mut bytes = fs::read(&segment).expect("read");
    bytes[(damaged_offset + 17 + 40) as usize] ^= 0x01;
    fs::write(&segment, bytes).expect("write");
    let output = tricommit(&["wal", "verify"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: corrupt at byte offset {damaged_offset}",
            segment.display()
        )),
        "{stderr}"
    );
}

// Proves a missing directory is a one-line error with exit 2.
#[test]
fn missing_directory_exits_2() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let missing = dir.path().join("no-such-log");
    for command in ["verify", "dump"] {
        let output = tricommit(&["wal", command], &missing);
        assert_eq!(output.status.code(), Some(2));
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no-such-log"), "{stderr}");
    }
}

// Proves non-WAL input (a regular file as DIR, a directory without segments, a segment
// file with foreign bytes) is a one-line error with exit 2.
#[test]
fn non_wal_input_exits_2() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let plain_file = dir.path().join("notes.txt");
    fs::write(&plain_file, "not a log").expect("write");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    fs::write(foreign.join("00000000000000000001.wal"), vec![b'x'; 8192]).expect("write");
    for input in [&plain_file, &empty, &foreign] {
        let output = tricommit(&["wal", "verify"], input);
        assert_eq!(output.status.code(), Some(2), "{}", input.display());
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("not a tricommit WAL"), "{stderr}");
    }
}

// Proves an unreadable segment (here a directory in a segment's place, which cannot be
// mapped even by root) is a one-line error with exit 2.
#[test]
fn unreadable_segment_exits_2() {
    let dir = write_log();
    let segment = first_segment(dir.path());
    fs::remove_file(&segment).expect("remove");
    fs::create_dir(&segment).expect("mkdir in its place");
    let output = tricommit(&["wal", "verify"], dir.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
}

// Proves verify reports garbage after the last record of the last segment (a torn tail)
// with exit 1 and its offset, without modifying the file, and that opening the log then
// drops exactly those bytes.
#[test]
fn verify_reports_a_torn_tail_read_only() {
    let dir = write_log();
    let view = retry_locked(|| tricommit_wal::scan(dir.path())).expect("scan");
    let last = view.report().segments.last().expect("segments").clone();
    drop(view);
    let mut bytes = fs::read(&last.path).expect("read");
    let garbage = b"torn write remains";
    let start = last.end_offset as usize;
    bytes[start..start + garbage.len()].copy_from_slice(garbage);
    fs::write(&last.path, &bytes).expect("write");
    let output = tricommit(&["wal", "verify"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: torn tail at byte offset {start}",
            last.path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        fs::read(&last.path).expect("read again"),
        bytes,
        "verify modified the log"
    );
    let config = wal_config(SEGMENT_BYTES);
    let (_wal, recovery) = retry_locked(|| Wal::open(dir.path(), config.clone())).expect("open");
    assert_eq!(recovery.tail_bytes_dropped, garbage.len() as u64);
    assert_eq!(recovery.last_lsn, RECORDS);
}

// Proves `dump --decode` prints each protocol record decoded (`lsn kind Record`), and
// a record that is not one as `undecodable` with its reason, without failing.
#[test]
fn dump_decode_prints_protocol_records() {
    use tricommit_engine::proto::{BatchId, Record, SiteId};

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let config = wal_config(SEGMENT_BYTES);
    let records = [
        Record::Incarnation { number: 3 },
        Record::Elected {
            batch: BatchId(7),
            elected: 2,
            by: SiteId(1),
        },
    ];
    let (mut wal, _) = Wal::open(dir.path(), config).expect("open");
    for record in &records {
        let mut payload = Vec::new();
        record.encode(&mut payload);
        wal.append(record.kind(), &payload).expect("append");
    }
    wal.append(200, &[1, 2, 3]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    retry_locked(|| tricommit_wal::scan(dir.path())).expect("scan");
    let output = tricommit(&["wal", "dump", "--decode"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        format!("1 {} {:?}", records[0].kind(), records[0])
    );
    assert_eq!(
        lines[1],
        format!("2 {} {:?}", records[1].kind(), records[1])
    );
    assert!(lines[2].starts_with("3 200 undecodable: "), "{stdout}");
}
