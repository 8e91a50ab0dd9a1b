//! `PgLedger` as a resource manager, call by call: votes, idempotence, and recovery of
//! what a crash left in the database (orphans, reconciliation to the logged votes).

mod pg_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tricommit_engine::ledger::LedgerOp;
use tricommit_engine::pg::{self, PgLedger, PgLedgerStats};
use tricommit_engine::proto::{Op, Reason, ResourceManager, TxnId, Vote};

const ACCOUNTS: u64 = 10;
const BALANCE: i64 = 100;

fn debit(txn: u64, account: u64, amount: u64) -> Op {
    Op {
        txn: TxnId(txn),
        payload: LedgerOp::debit(account, amount)
            .expect("small amount")
            .encode(),
    }
}

fn credit(txn: u64, account: u64, amount: u64) -> Op {
    Op {
        txn: TxnId(txn),
        payload: LedgerOp::credit(account, amount)
            .expect("small amount")
            .encode(),
    }
}

/// A fresh one-shard bank named `name`; `None` when no server is configured.
fn shard(test: &str, name: &str) -> Option<String> {
    let server = pg_support::server(test)?;
    let template = pg_support::fresh_shards(&server, name, 1, ACCOUNTS, BALANCE);
    Some(pg_support::urls(&template, 1).remove(0))
}

/// A ledger as a freshly started participant would get it.
fn ledger(url: &str) -> (PgLedger, Arc<PgLedgerStats>) {
    let stats = Arc::new(PgLedgerStats::default());
    (
        PgLedger::new(url, Arc::clone(&stats)).expect("a valid URL"),
        stats,
    )
}

/// One shard with one-legged operations is not a balanced bank, so of the audit only
/// the per-shard checks apply: balances equal their postings, held sums equal their
/// reservations, nothing overdrawn; and, here, nothing left pending.
fn assert_shard_consistent(url: &str) -> pg::BankAudit {
    let report = pg::audit(&[url.to_owned()]).expect("read the shard");
    let local: Vec<_> = report
        .violations
        .iter()
        .filter(|violation| violation.contains("disagree") || violation.contains("overdrawn"))
        .collect();
    assert!(local.is_empty(), "{local:?}");
    assert_eq!(report.pending_rows, 0, "reservations left pending");
    report
}

fn prepare(ledger: &mut PgLedger, ops: &[Op]) -> Vec<Vote> {
    let mut votes = Vec::new();
    ledger.prepare(ops, &mut votes);
    votes
}

#[test]
fn votes_follow_the_funds_in_batch_order() {
    // Proves that one batch mixes yes and no votes: an unknown account, a malformed
    // operation, and a debit that the earlier debits of the same batch leave uncovered
    // vote no, without sinking the others; a repeated id in a later batch is a duplicate.
    let Some(url) = shard("votes_follow_the_funds_in_batch_order", "tc_test_rm_votes") else {
        return;
    };
    let (mut ledger, _) = ledger(&url);
    ledger.recovered();
    let mut malformed = debit(4, 0, 1);
    malformed.payload[16] = 9;
    let ops = [
        debit(1, 0, 60),
        debit(2, 0, 60),
        credit(3, 1, 5),
        malformed,
        debit(5, ACCOUNTS, 1),
    ];
    let votes = prepare(&mut ledger, &ops);
    assert_eq!(
        votes,
        [
            Vote::Yes,
            Vote::No(Reason::INSUFFICIENT_FUNDS),
            Vote::Yes,
            Vote::No(Reason::MALFORMED),
            Vote::No(Reason::UNKNOWN_ACCOUNT),
        ]
    );
    assert_eq!(
        prepare(&mut ledger, &[debit(1, 0, 1)]),
        [Vote::No(Reason::DUPLICATE)]
    );
    ledger.commit(&[TxnId(1), TxnId(3)]);
    ledger.commit(&[TxnId(1), TxnId(3)]);
    let report = assert_shard_consistent(&url);
    assert_eq!(report.postings, 2, "a repeated commit posts nothing twice");
    assert_eq!(report.total, report.opening_total - 60 + 5);
}

#[test]
fn reservations_the_log_never_claimed_are_released() {
    // Proves that reservations made before a crash that the participant never logged
    // are released at recovery, and that the same batch prepared again (it gets the
    // same batch number, since numbers follow the log) is judged afresh against the
    // released funds instead of getting the stale yes back: it reserves exactly once.
    let test = "reservations_the_log_never_claimed_are_released";
    let Some(url) = shard(test, "tc_test_rm_orphans") else {
        return;
    };
    let ops = [debit(1, 0, 30), credit(2, 1, 30)];
    let (mut before, _) = ledger(&url);
    before.recovered();
    assert_eq!(prepare(&mut before, &ops), [Vote::Yes, Vote::Yes]);
    drop(before);
    assert_eq!(
        pg::audit(std::slice::from_ref(&url))
            .expect("read")
            .pending_rows,
        2
    );
    let (mut after, stats) = ledger(&url);
    after.recovered();
    assert_eq!(stats.orphans_released.load(Ordering::Relaxed), 2);
    let held = Vote::No(Reason::INSUFFICIENT_FUNDS);
    assert_eq!(prepare(&mut after, &ops), [Vote::Yes, Vote::Yes]);
    assert_eq!(
        prepare(&mut after, &[debit(3, 0, BALANCE as u64 - 29)]),
        [held],
        "the fresh reservation holds 30 of account 0's funds, once"
    );
    after.abort(&[TxnId(1), TxnId(2), TxnId(3)]);
    let report = assert_shard_consistent(&url);
    assert_eq!(report.postings, 0);
    assert_eq!(report.total, report.opening_total, "balances intact");
}

#[test]
fn replay_reconciles_the_shard_to_the_logged_votes() {
    // Proves that replay returns the logged votes whatever the shard holds: a yes the
    // participant logged as no (its acknowledgement was lost) is released, a logged yes
    // stays reserved until its decision, and that decision applies exactly once.
    let test = "replay_reconciles_the_shard_to_the_logged_votes";
    let Some(url) = shard(test, "tc_test_rm_replay") else {
        return;
    };
    let first = [debit(1, 0, 40)];
    let second = [debit(2, 0, 40)];
    let (mut before, _) = ledger(&url);
    before.recovered();
    assert_eq!(prepare(&mut before, &first), [Vote::Yes]);
    assert_eq!(prepare(&mut before, &second), [Vote::Yes]);
    drop(before);
    let (mut after, stats) = ledger(&url);
    let logged_no = [Vote::No(Reason::UNAVAILABLE)];
    let mut votes = Vec::new();
    after.replay_prepare(&first, &logged_no, &mut votes);
    after.replay_prepare(&second, &[Vote::Yes], &mut votes);
    assert_eq!(votes, [logged_no[0], Vote::Yes]);
    after.recovered();
    assert_eq!(stats.orphans_released.load(Ordering::Relaxed), 0);
    assert_eq!(stats.replay_missing.load(Ordering::Relaxed), 0);
    let held = pg::audit(std::slice::from_ref(&url)).expect("read");
    assert_eq!(held.pending.iter().copied().collect::<Vec<_>>(), [2]);
    after.commit(&[TxnId(2)]);
    after.commit(&[TxnId(2)]);
    let report = assert_shard_consistent(&url);
    assert_eq!(report.postings, 1);
    assert_eq!(report.total, report.opening_total - 40);
    assert!(report.posted.contains(&2) && !report.posted.contains(&1));
}

#[test]
fn an_unreachable_shard_votes_unavailable() {
    // Proves that a ledger whose database cannot be reached votes no (UNAVAILABLE) on
    // the whole batch, counting the failures, instead of blocking or panicking.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    let (mut ledger, stats) = ledger(&format!("postgres://nobody@127.0.0.1:{port}/none"));
    let votes = prepare(&mut ledger, &[debit(1, 0, 1), credit(2, 1, 1)]);
    let unavailable = Vote::No(Reason::UNAVAILABLE);
    assert_eq!(votes, [unavailable, unavailable]);
    assert_eq!(stats.unavailable_votes.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.connection_losses.load(Ordering::Relaxed),
        u64::from(pg::ATTEMPTS_MAX)
    );
}

#[test]
fn an_older_schema_is_refused_with_the_way_out() {
    // Proves that a database holding schema version 1 (one row per leg) is refused
    // with an error that names its version and `pg init --reset`, that a ledger on it
    // votes no instead of sending statements, and that `--reset` replaces it with the
    // current version.
    let test = "an_older_schema_is_refused_with_the_way_out";
    let Some(server) = pg_support::server(test) else {
        return;
    };
    let template = pg_support::fresh_shards(&server, "tc_test_rm_old", 1, ACCOUNTS, BALANCE);
    let url = pg_support::urls(&template, 1).remove(0);
    let mut client = pg::schema::connect(&url).expect("connect");
    client
        .batch_execute(
            "DROP TABLE tc_meta, tc_batches, tc_pending, tc_postings CASCADE;
             CREATE TABLE tc_meta (schema_version integer NOT NULL, accounts bigint NOT NULL,
                                   initial_balance bigint NOT NULL);
             INSERT INTO tc_meta VALUES (1, 10, 100);
             CREATE TABLE tc_votes (txn_id bigint PRIMARY KEY, batch_seq bigint NOT NULL,
                                    reason smallint NOT NULL);",
        )
        .expect("turn the shard into a version-1 shard");
    let error = pg::schema::check(&url, 1).expect_err("version 1 is refused");
    let text = error.to_string();
    assert!(
        matches!(error, pg::PgError::SchemaVersion { found: 1, expected, .. }
                 if expected == pg::SCHEMA_VERSION),
        "{text}"
    );
    assert!(text.contains("pg init --reset"), "{text}");
    let (mut old, _) = ledger(&url);
    assert_eq!(
        prepare(&mut old, &[debit(1, 0, 1)]),
        [Vote::No(Reason::UNAVAILABLE)],
        "a ledger never sends statements to a shard of another version"
    );
    pg::schema::init(&url, ACCOUNTS, BALANCE, true).expect("--reset upgrades it");
    pg::schema::check(&url, ACCOUNTS).expect("the current version is accepted");
    let leftover: bool = client
        .query_one("SELECT to_regclass('tc_votes') IS NOT NULL", &[])
        .expect("query")
        .get(0);
    assert!(!leftover, "--reset drops version 1's tables too");
}

#[test]
fn decided_batches_votes_are_pruned_but_undecided_ones_are_kept() {
    // Proves that the per-batch vote rows stay bounded (about BATCH_VOTES_KEPT) over
    // many decided batches, while a batch still holding a reservation keeps its votes,
    // and that its later decision still applies once.
    let test = "decided_batches_votes_are_pruned_but_undecided_ones_are_kept";
    let Some(url) = shard(test, "tc_test_rm_prune") else {
        return;
    };
    let (mut ledger, stats) = ledger(&url);
    ledger.recovered();
    assert_eq!(prepare(&mut ledger, &[debit(1, 0, 1)]), [Vote::Yes]);
    let batches = 4 * pg::BATCH_VOTES_KEPT as u64;
    for txn in 2..2 + batches {
        assert_eq!(prepare(&mut ledger, &[credit(txn, 1, 1)]), [Vote::Yes]);
        ledger.commit(&[TxnId(txn)]);
    }
    let mut client = pg::schema::connect(&url).expect("connect");
    let (rows, first): (i64, Option<i64>) = {
        let row = client
            .query_one("SELECT count(*), min(seq) FROM tc_batches", &[])
            .expect("query");
        (row.get(0), row.get(1))
    };
    assert!(
        stats.batches_pruned.load(Ordering::Relaxed) > 0,
        "nothing pruned"
    );
    assert_eq!(first, Some(1), "the undecided batch keeps its votes");
    assert!(
        rows <= pg::BATCH_VOTES_KEPT + pg::PRUNE_EVERY_BATCHES + 1,
        "{rows} batch rows kept"
    );
    ledger.commit(&[TxnId(1)]);
    ledger.commit(&[TxnId(1)]);
    let report = assert_shard_consistent(&url);
    assert_eq!(report.postings, batches + 1);
    assert_eq!(report.total, report.opening_total - 1 + batches as i128);
}
