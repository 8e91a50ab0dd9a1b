//! Online checkpoints of the engine's logs: under a steady load with tiny segments,
//! every site's log stays within its bound, and reopening (from snapshots and short
//! tails) gives back exactly the balances the engine ended with.

mod engine_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use engine_support::{check_bank, recovered_balances, Acked, Bank, Clients};
use tricommit_engine::Engine;
use tricommit_wal::WalConfig;

const BANK: Bank = Bank {
    ledgers: 4,
    accounts: 64,
    balance_initial: 500,
    amount_max: 400,
};
/// Tiny segments, so that a few thousand transfers fill many of them.
const SEGMENT_BYTES: u64 = 128 << 10;
const RECORD_BYTES_MAX: u32 = 32 << 10;
/// Batches small enough that a full prepared record fits `RECORD_BYTES_MAX`.
const BATCH_TXNS_MAX: usize = 256;
const LOG_SEGMENTS_MAX: u32 = 2;
/// A site checkpoints after the turn that rolled its log past the bound, so between
/// that roll and the checkpoint it may hold one segment more (and a turn never appends
/// a whole tiny segment's worth on top).
const LOG_SEGMENTS_SEEN_MAX: usize = LOG_SEGMENTS_MAX as usize + 2;

fn config(dir: &Path) -> tricommit_engine::EngineConfig {
    let mut config = BANK.config(dir);
    config.wal = WalConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        ..WalConfig::default()
    };
    config.batch_txns_max = BATCH_TXNS_MAX;
    config.log_segments_max = Some(LOG_SEGMENTS_MAX);
    config.compact_postings = true;
    config
}

/// Each site's log directory.
fn site_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .expect("data directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn segments_in(dir: &Path) -> usize {
    names(dir)
        .iter()
        .filter(|name| name.ends_with(".wal"))
        .count()
}

#[test]
fn logs_stay_bounded_under_steady_load_and_reopen_to_the_same_balances() {
    // Proves that checkpoints keep every site's segment count within the bound while
    // the load runs, that they really happen (the first segment of every log is gone,
    // every ledger holds one snapshot), that the bank invariant holds on the
    // checkpointed logs, and that a reopen recovers exactly the balances of the close.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let engine = Engine::open(config(dir.path())).expect("open");
    let done = AtomicBool::new(false);
    let (acked, seen_max) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut seen_max = 0;
            while !done.load(Ordering::Acquire) {
                for site in site_dirs(dir.path()) {
                    seen_max = seen_max.max(segments_in(&site));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            seen_max
        });
        let clients = Clients {
            threads: 2,
            txns_per_thread: 40_000,
            id_first: 1,
            seed: 11,
        };
        let acked = engine_support::run_clients(&engine, &BANK, clients);
        done.store(true, Ordering::Release);
        (acked, sampler.join().expect("sampler"))
    });
    let shutdown = engine.shutdown().expect("shutdown");
    assert!(
        seen_max <= LOG_SEGMENTS_SEEN_MAX,
        "a log held {seen_max} segments, above {LOG_SEGMENTS_SEEN_MAX}"
    );
    let committed = acked
        .iter()
        .filter(|(_, outcome)| *outcome == Acked::Committed)
        .count();
    assert!(committed > 0, "nothing committed");
    for site in site_dirs(dir.path()) {
        let names = names(&site);
        assert!(
            !names.contains(&"00000000000000000001.wal".to_owned()),
            "{} was never checkpointed: {names:?}",
            site.display()
        );
        assert!(segments_in(&site) <= LOG_SEGMENTS_SEEN_MAX);
        let snapshots = names
            .iter()
            .filter(|name| name.starts_with("snapshot-"))
            .count();
        let is_participant = site
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("participant-"));
        assert_eq!(snapshots, usize::from(is_participant), "{names:?}");
    }

    check_bank(dir.path(), &BANK, &acked);
    // Every transfer was acknowledged, so the balances follow from the commits alone.
    let mut expected = vec![vec![BANK.balance_initial; BANK.accounts as usize]; BANK.ledgers];
    for (transfer, outcome) in &acked {
        if *outcome == Acked::Committed {
            expected[transfer.from.0 as usize][transfer.from.1 as usize] -= transfer.amount as i64;
            expected[transfer.to.0 as usize][transfer.to.1 as usize] += transfer.amount as i64;
        }
    }
    let closed: Vec<Vec<i64>> = shutdown
        .participants
        .iter()
        .map(|participant| {
            participant
                .rm()
                .ledger()
                .expect("ledger")
                .balances()
                .collect()
        })
        .collect();
    assert_eq!(
        closed, expected,
        "the engine's balances differ from the commits"
    );
    assert_eq!(
        recovered_balances(dir.path(), &BANK),
        expected,
        "read-only recovery from the snapshots differs"
    );
    let reopened = Engine::open(config(dir.path()))
        .expect("reopen")
        .shutdown()
        .expect("second shutdown");
    let reopened: Vec<Vec<i64>> = reopened
        .participants
        .iter()
        .map(|participant| {
            participant
                .rm()
                .ledger()
                .expect("ledger")
                .balances()
                .collect()
        })
        .collect();
    assert_eq!(reopened, expected, "reopening changed a balance");
    // Reopening an idle, checkpointed directory neither checkpoints it again nor
    // grows it: every site keeps at most its bound of segments plus capped spares.
    let files = |dir: &Path| {
        names(dir)
            .iter()
            .filter(|name| name.ends_with(".wal") || name.ends_with(".spare"))
            .count()
    };
    let files_max = LOG_SEGMENTS_SEEN_MAX + (LOG_SEGMENTS_MAX + 1) as usize;
    for _ in 0..3 {
        Engine::open(config(dir.path()))
            .expect("idle reopen")
            .shutdown()
            .expect("idle shutdown");
        for site in site_dirs(dir.path()) {
            assert!(
                files(&site) <= files_max,
                "{} holds {:?}",
                site.display(),
                names(&site)
            );
        }
    }
    assert_eq!(recovered_balances(dir.path(), &BANK), expected);
}
