//! One owner per log directory: the exclusive lock of `Wal::open` and the shared lock of
//! `scan`, each refused at once (never waited for) while the other is held.

use std::time::{Duration, Instant};

use tricommit_wal::{scan, LockMode, SyncBackend, Wal, WalConfig, WalError, LOCK_FILE};

/// A refused lock must come back at once; anything near this means it blocked.
const REFUSAL_MS_MAX: u64 = 2_000;

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 * 1024,
        record_bytes_max: 4096,
        sync: SyncBackend::Fdatasync,
        sync_fallback: true,
        segments_spare: 0,
    }
}

fn temporary_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

/// Runs `attempt`, checks that it returned quickly, and returns its result.
fn at_once<T>(attempt: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = attempt();
    assert!(
        started.elapsed() < Duration::from_millis(REFUSAL_MS_MAX),
        "a refused lock must not wait"
    );
    result
}

// Proves a second `Wal::open` of a directory that a `Wal` holds fails at once with
// `Locked` (exclusive), and succeeds once the first is dropped.
#[test]
fn a_second_writer_is_refused_at_once() {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config()).expect("open");
    wal.append(1, b"first owner").expect("append");
    wal.sync().expect("sync");
    assert!(dir.path().join(LOCK_FILE).exists());
    match at_once(|| Wal::open(dir.path(), config())) {
        Err(WalError::Locked { path, wanted }) => {
            assert_eq!(path, dir.path());
            assert_eq!(wanted, LockMode::Exclusive);
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second writer opened a locked log"),
    }
    drop(wal);
    let (_, recovery) = Wal::open(dir.path(), config()).expect("reopen after release");
    assert_eq!(recovery.records, 1);
}

// Proves `scan` (the readers' entry point) refuses a log a writer holds, with a message
// that says the directory is in use, and that the writer is refused while a reader
// holds the log; two readers share it.
#[test]
fn readers_and_writers_exclude_each_other() {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config()).expect("open");
    wal.append(1, b"record").expect("append");
    wal.sync().expect("sync");
    let refused = at_once(|| scan(dir.path()))
        .err()
        .expect("scan under a writer must fail");
    assert!(
        matches!(
            refused,
            WalError::Locked {
                wanted: LockMode::Shared,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("in use"), "{refused}");
    drop(wal);

    let first = scan(dir.path()).expect("scan a closed log");
    let second = scan(dir.path()).expect("readers share the lock");
    assert_eq!(first.report().records(), 1);
    assert_eq!(second.report().records(), 1);
    let refused = at_once(|| Wal::open(dir.path(), config()))
        .err()
        .expect("a writer under a reader must fail");
    assert!(
        matches!(
            refused,
            WalError::Locked {
                wanted: LockMode::Exclusive,
                ..
            }
        ),
        "{refused}"
    );
    drop((first, second));
    Wal::open(dir.path(), config()).expect("open after the readers left");
}

// Proves `abandon` (the crash stand-in that replaced leaking the `Wal`) releases the
// lock and leaves the records synced before it.
#[test]
fn an_abandoned_log_can_be_reopened() {
    let dir = temporary_dir();
    let (mut wal, _) = Wal::open(dir.path(), config()).expect("open");
    wal.append(1, b"durable").expect("append");
    wal.sync().expect("sync");
    wal.append(1, b"never synced").expect("append");
    wal.abandon();
    let (_, recovery) = Wal::open(dir.path(), config()).expect("reopen");
    assert!(recovery.records >= 1);
}
