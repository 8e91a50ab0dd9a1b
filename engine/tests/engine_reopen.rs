//! Reopening a data directory: a bank continues across a clean shutdown, and a
//! directory that holds something else, or was made for another configuration, is
//! refused with a typed error before anything is written to it.

mod engine_support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine_support::{check_bank, Bank, Clients};
use tricommit_engine::proto::{Op, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};
use tricommit_engine::runtime::{MetaError, META_FILE};
use tricommit_engine::{Engine, EngineConfig, EngineError, Outcome, ParticipantSpec, Protocol};

const BANK: Bank = Bank {
    ledgers: 4,
    accounts: 64,
    balance_initial: 500,
    amount_max: 400,
};
/// Ids of the second run start here, past every id of the first.
const SECOND_RUN_ID_FIRST: u64 = 1_000_000;

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

fn clients(id_first: u64, seed: u64) -> Clients {
    Clients {
        threads: 2,
        txns_per_thread: 1_500,
        id_first,
        seed,
    }
}

#[test]
fn a_bank_continues_across_a_clean_shutdown_and_reopen() {
    // Proves that reopening recovers every ledger from its log and keeps going: the
    // invariant holds over both runs, and a third open with no work recovers the same
    // balances the second run ended with.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("first open");
    let mut acked = engine_support::run_clients(&engine, &BANK, clients(1, 3));
    engine.shutdown().expect("first shutdown");

    let engine = Engine::open(BANK.config(dir.path())).expect("reopen");
    acked.extend(engine_support::run_clients(
        &engine,
        &BANK,
        clients(SECOND_RUN_ID_FIRST, 5),
    ));
    let second = engine.shutdown().expect("second shutdown");
    let verdict = check_bank(dir.path(), &BANK, &acked);
    let committed_second = acked
        .iter()
        .filter(|(transfer, outcome)| {
            transfer.id >= SECOND_RUN_ID_FIRST && *outcome == engine_support::Acked::Committed
        })
        .count();
    assert!(
        committed_second > 0,
        "the reopened engine committed nothing"
    );
    assert_eq!(verdict.applied_txns, verdict.acked_committed);

    let third = Engine::open(BANK.config(dir.path()))
        .expect("third open")
        .shutdown()
        .expect("third shutdown");
    for (ended, reopened) in second.participants.iter().zip(&third.participants) {
        let ended: Vec<i64> = ended.rm().ledger().expect("ledger").balances().collect();
        let reopened: Vec<i64> = reopened.rm().ledger().expect("ledger").balances().collect();
        assert_eq!(ended, reopened, "reopening changed a balance");
    }
}

/// Every entry name in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_non_empty_foreign_directory_is_refused_untouched() {
    // Proves that the engine never writes into a directory that is not its own: open
    // fails with `MetaError::Foreign` and the directory is left exactly as it was.
    let dir = temp_dir();
    std::fs::write(dir.path().join("payroll.csv"), b"alice,100\n").expect("foreign file");
    let result = Engine::open(BANK.config(dir.path()));
    assert!(
        matches!(result, Err(EngineError::DataDir(MetaError::Foreign(_)))),
        "got {:?}",
        result.err()
    );
    assert_eq!(entries(dir.path()), ["payroll.csv"]);
}

/// Opens `config` and expects it to be refused as made for another configuration.
fn assert_mismatch(config: EngineConfig, what: &str) {
    let result = Engine::open(config);
    assert!(
        matches!(
            result,
            Err(EngineError::DataDir(MetaError::Mismatch { .. }))
        ),
        "{what}: got {:?}",
        result.err()
    );
}

#[test]
fn a_directory_of_another_configuration_is_refused_and_stays_usable() {
    // Proves that a directory made for one bank is refused, with a typed error, to an
    // engine configured otherwise (other account count, balance, ledger count, replica
    // count, a custom participant instead of a ledger, or the two-phase protocol), or
    // with a damaged meta file,
    // and that none of these attempts harms it for its own configuration.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("first open");
    let acked = engine_support::run_clients(&engine, &BANK, clients(1, 9));
    engine.shutdown().expect("shutdown");
    let before = entries(dir.path());

    let other_accounts = Bank {
        accounts: BANK.accounts + 1,
        ..BANK
    };
    assert_mismatch(other_accounts.config(dir.path()), "accounts");
    let other_balance = Bank {
        balance_initial: BANK.balance_initial + 1,
        ..BANK
    };
    assert_mismatch(other_balance.config(dir.path()), "balance");
    let fewer_ledgers = Bank { ledgers: 3, ..BANK };
    assert_mismatch(fewer_ledgers.config(dir.path()), "ledgers");
    let mut one_replica = BANK.config(dir.path());
    one_replica.replicas = 1;
    assert_mismatch(one_replica, "replicas");
    let mut custom = BANK.config(dir.path());
    custom.participants[3] = ParticipantSpec::Custom {
        name: "fees".into(),
        factory: Arc::new(|| unreachable!("a refused open builds nothing")),
    };
    assert_mismatch(custom, "custom participant");
    let mut two_phase = BANK.config(dir.path());
    two_phase.protocol = Protocol::TwoPhase;
    assert_mismatch(two_phase, "protocol");
    assert_eq!(
        entries(dir.path()),
        before,
        "a refused open changed the directory"
    );

    let meta = dir.path().join(META_FILE);
    let original = std::fs::read(&meta).expect("meta file");
    std::fs::write(&meta, b"not a meta file\n").expect("damage meta");
    let result = Engine::open(BANK.config(dir.path()));
    assert!(
        matches!(
            result,
            Err(EngineError::DataDir(MetaError::Malformed { .. }))
        ),
        "damaged meta: got {:?}",
        result.err()
    );
    std::fs::write(&meta, original).expect("restore meta");
    Engine::open(BANK.config(dir.path()))
        .expect("its own configuration still opens")
        .shutdown()
        .expect("shutdown");
    check_bank(dir.path(), &BANK, &acked);
}

#[test]
fn a_crash_while_creating_the_meta_file_leaves_a_usable_directory() {
    // Proves that creating a data directory is crash-safe: a crash after the temporary
    // meta file was created and before it was renamed (the state this test builds by
    // hand) must not stop the same configuration from opening the directory later.
    let dir = temp_dir();
    let temporary = dir.path().join(format!("{META_FILE}.tmp"));
    std::fs::write(&temporary, b"tricommit-data 1\nrepl").expect("half-written meta file");
    let result = Engine::open(BANK.config(dir.path()));
    assert!(result.is_ok(), "got {:?}", result.err());
    result.expect("opens").shutdown().expect("shutdown");
}

/// A custom participant that counts the transactions it committed, in a counter the
/// test shares; the engine builds a fresh one at every open and replays its log into it.
struct CommitCounter(Arc<AtomicU64>);

impl ResourceManager for CommitCounter {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        votes.extend(ops.iter().map(|_| Vote::Yes));
    }
    fn commit(&mut self, txns: &[TxnId]) {
        self.0.fetch_add(txns.len() as u64, Ordering::Relaxed);
    }
    fn abort(&mut self, _txns: &[TxnId]) {}
}

#[test]
fn a_custom_participant_is_rebuilt_from_its_log_on_reopen() {
    // Proves that recovery replays a custom resource manager: the counter a fresh
    // instance reaches by replay alone equals the commits acknowledged before shutdown.
    let dir = temp_dir();
    let counter = Arc::new(AtomicU64::new(0));
    let config = || {
        let mut config = BANK.config(dir.path());
        let counter = counter.clone();
        config.participants.push(ParticipantSpec::Custom {
            name: "counter".into(),
            factory: Arc::new(move || {
                counter.store(0, Ordering::Relaxed);
                Box::new(CommitCounter(counter.clone()))
            }),
        });
        config
    };
    let counter_leg = BANK.ledgers as u8;
    let engine = Engine::open(config()).expect("first open");
    let mut rng = engine_support::SplitMix(23);
    let tickets: Vec<_> = (1..=2_000)
        .map(|id| {
            let txn = BANK
                .transfer(&mut rng, id)
                .txn()
                .with_leg(counter_leg, [0; OP_PAYLOAD_BYTES])
                .expect("a third leg");
            engine_support::submit_retrying(&engine, txn)
        })
        .collect();
    let committed = tickets
        .into_iter()
        .map(|ticket| ticket.wait())
        .filter(|outcome| *outcome == Outcome::Committed)
        .count() as u64;
    engine.shutdown().expect("shutdown");
    assert!(committed > 0);
    assert_eq!(counter.load(Ordering::Relaxed), committed, "live count");

    let engine = Engine::open(config()).expect("reopen");
    // Replay happens inside `open`, before any stage runs.
    assert_eq!(
        counter.load(Ordering::Relaxed),
        committed,
        "count rebuilt by replay"
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn an_invalid_configuration_is_refused_with_a_typed_error() {
    // Proves that `Engine::open` answers every out-of-range setting with
    // `EngineError::Config` (a sentence for the operator), never a panic.
    let dir = temp_dir();
    let base = || BANK.config(dir.path());
    let mut cases: Vec<(&str, EngineConfig)> = Vec::new();
    let mut add = |what, change: &dyn Fn(&mut EngineConfig)| {
        let mut config = base();
        change(&mut config);
        cases.push((what, config));
    };
    add("no replica", &|config| config.replicas = 0);
    add("too many replicas", &|config| config.replicas = 8);
    add("no participant", &|config| config.participants.clear());
    add("empty batches", &|config| config.batch_txns_max = 0);
    add("zero high-water mark", &|config| {
        config.intake_high_water_txns = 0
    });
    add("high water above capacity", &|config| {
        config.intake_high_water_txns = config.intake_capacity_txns + 1
    });
    add("capacity above its bound", &|config| {
        config.intake_capacity_txns = usize::MAX
    });
    add("segment size", &|config| config.wal.segment_bytes = 4097);
    for (what, config) in cases {
        let result = Engine::open(config);
        assert!(
            matches!(result, Err(EngineError::Config(_))),
            "{what}: got {:?}",
            result.err()
        );
    }
}
