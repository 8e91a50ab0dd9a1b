//! In-process bank tests of the whole engine: random transfers among four ledgers from
//! several client threads, then the bank invariant (DESIGN §2, invariant 8) checked
//! transaction by transaction on the ledgers rebuilt from their logs.

mod engine_support;

use engine_support::{check_bank, Acked, Bank, Clients};
use tricommit_engine::proto::Reason;
use tricommit_engine::runtime::{recover_ledgers, Shutdown};
use tricommit_engine::{AbortReason, Engine, Outcome, Protocol};

/// Few accounts with small balances, so that transfers contend for the same accounts
/// and many are refused for insufficient funds: both outcomes get checked.
const BANK: Bank = Bank {
    ledgers: 4,
    accounts: 64,
    balance_initial: 500,
    amount_max: 400,
};

/// A reservation table far smaller than one batch, so that it fills.
const RESERVATIONS_TINY: u64 = 8;

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

/// Every account balance of every ledger the engine handed back at shutdown.
fn live_balances(shutdown: &Shutdown) -> Vec<Vec<i64>> {
    shutdown
        .participants
        .iter()
        .map(|participant| {
            let ledger = participant
                .rm()
                .ledger()
                .expect("every participant is a ledger");
            ledger.balances().collect()
        })
        .collect()
}

/// Every account balance of every ledger, rebuilt read-only from the logs.
fn recovered_balances(dir: &std::path::Path) -> Vec<Vec<i64>> {
    recover_ledgers(dir, |_| None)
        .expect("ledgers recover")
        .iter()
        .map(|recovered| recovered.ledger().balances().collect())
        .collect()
}

#[test]
fn concurrent_transfers_land_on_both_ledgers_or_neither() {
    // Proves invariant 8 under concurrent clients: the total is unchanged, no account is
    // below its limit, every acknowledged commit is posted on both of its ledgers and
    // every acknowledged abort on neither, and the logs rebuild exactly the live state.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let clients = Clients {
        threads: 4,
        txns_per_thread: 3_000,
        id_first: 1,
        seed: 7,
    };
    let acked = run(&engine, clients);
    let shutdown = engine.shutdown().expect("clean shutdown");
    assert_eq!(acked.len(), 12_000, "every submission got an outcome");
    let verdict = check_bank(dir.path(), &BANK, &acked);
    assert!(
        verdict.acked_committed > 0,
        "nothing committed: {verdict:?}"
    );
    assert!(verdict.acked_aborted > 0, "nothing aborted: {verdict:?}");
    assert_eq!(
        verdict.applied_txns, verdict.acked_committed,
        "the logs hold commits nobody was told about"
    );
    assert_eq!(live_balances(&shutdown), recovered_balances(dir.path()));
}

fn run(engine: &Engine, clients: Clients) -> Vec<(engine_support::Transfer, Acked)> {
    engine_support::run_clients(engine, &BANK, clients)
}

#[test]
fn every_toggle_combination_and_both_protocols_keep_the_bank_invariant() {
    // Proves that the comparison toggles only change speed: each combination of
    // batching, pipelining and overlap on or off, under three-phase and two-phase
    // commit, runs a small workload to the same invariant.
    for mask in 0..16u8 {
        let (batching, pipelining, overlap) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
        let protocol = if mask & 8 != 0 {
            Protocol::TwoPhase
        } else {
            Protocol::ThreePhase
        };
        let dir = temp_dir();
        let mut config = BANK.config(dir.path());
        config.batching = batching;
        config.pipelining = pipelining;
        config.overlap = overlap;
        config.protocol = protocol;
        let engine = Engine::open(config).expect("engine opens");
        let clients = Clients {
            threads: 2,
            txns_per_thread: 150,
            id_first: 1,
            seed: 11,
        };
        let acked = run(&engine, clients);
        let shutdown = engine.shutdown().expect("clean shutdown");
        let verdict = check_bank(dir.path(), &BANK, &acked);
        let label = format!(
            "batching {batching}, pipelining {pipelining}, overlap {overlap}, {protocol:?}"
        );
        assert_eq!(acked.len(), 300, "{label}: every submission got an outcome");
        assert!(verdict.acked_committed > 0, "{label}: nothing committed");
        assert_eq!(
            live_balances(&shutdown),
            recovered_balances(dir.path()),
            "{label}"
        );
    }
}

#[test]
fn a_decided_id_submitted_again_gets_its_outcome_and_is_applied_once() {
    // Proves the idempotent ids of the client API (issue 4, Client API) for a decided
    // transaction: submitting its id again returns its outcome and never applies the
    // transfer a second time.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let transfer = engine_support::Transfer {
        id: 1,
        from: (0, 1),
        to: (1, 2),
        amount: 10,
    };
    let first = engine_support::submit_retrying(&engine, transfer.txn()).wait();
    assert_eq!(first, Outcome::Committed);
    let mut ticket_again = engine_support::submit_retrying(&engine, transfer.txn());
    // The decided path answers at once, from the table, without a batch.
    let again = ticket_again.try_outcome();
    assert_eq!(
        engine.counters().batch_txns_total,
        1,
        "the retry was batched"
    );
    engine.shutdown().expect("clean shutdown");
    check_bank(dir.path(), &BANK, &[(transfer, Acked::Committed)]);
    assert_eq!(
        again,
        Some(first),
        "a decided id must return its outcome at once"
    );
}

#[test]
fn an_id_resubmitted_with_other_legs_is_rejected_with_its_own_reason() {
    // Proves that idempotency compares the payload: an id already decided, or in
    // flight, that comes back with another amount or other accounts is rejected with
    // EXISTS_WITH_DIFFERENT_LEGS at once, is never batched, and never changes the
    // first transfer's outcome or balances.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let transfer = engine_support::Transfer {
        id: 1,
        from: (0, 1),
        to: (1, 2),
        amount: 10,
    };
    let first = engine_support::submit_retrying(&engine, transfer.txn()).wait();
    assert_eq!(first, Outcome::Committed);
    let different = [
        engine_support::Transfer {
            amount: 11,
            ..transfer
        },
        engine_support::Transfer {
            to: (1, 3),
            ..transfer
        },
        engine_support::Transfer {
            from: (2, 1),
            ..transfer
        },
    ];
    let rejected = Outcome::Aborted(AbortReason::Rejected(Reason::EXISTS_WITH_DIFFERENT_LEGS));
    for other in different {
        let mut ticket = engine_support::submit_retrying(&engine, other.txn());
        assert_eq!(ticket.try_outcome(), Some(rejected), "{other:?}");
    }
    // The same id in flight: a second submission with other legs is refused too.
    let in_flight = engine_support::Transfer { id: 2, ..transfer };
    let ticket = engine_support::submit_retrying(&engine, in_flight.txn());
    let mut clash = engine_support::submit_retrying(
        &engine,
        engine_support::Transfer {
            amount: 12,
            ..in_flight
        }
        .txn(),
    );
    assert_eq!(clash.try_outcome(), Some(rejected));
    let second = ticket.wait();
    assert_eq!(
        engine.counters().batch_txns_total,
        2,
        "a rejected clash was batched"
    );
    engine.shutdown().expect("clean shutdown");
    check_bank(
        dir.path(),
        &BANK,
        &[(transfer, Acked::Committed), (in_flight, Acked::of(second))],
    );
}

#[test]
fn an_id_submitted_twice_in_flight_is_applied_once_with_one_outcome() {
    // Proves the idempotent ids of the client API for a transaction in flight: two
    // submissions of one id get the same outcome, and a commit is posted exactly once.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let transfer = engine_support::Transfer {
        id: 1,
        from: (0, 1),
        to: (1, 2),
        amount: 10,
    };
    let ticket_first = engine_support::submit_retrying(&engine, transfer.txn());
    let ticket_again = engine_support::submit_retrying(&engine, transfer.txn());
    let (first, again) = (ticket_first.wait(), ticket_again.wait());
    // Had the second submission missed the in-flight path it would have been batched
    // as a transaction of its own (and refused by the ledgers as a duplicate).
    assert_eq!(
        engine.counters().batch_txns_total,
        1,
        "the duplicate in flight was submitted again"
    );
    engine.shutdown().expect("clean shutdown");
    let acked: Vec<_> = [first, again]
        .into_iter()
        .filter(|outcome| *outcome == Outcome::Committed)
        .map(|_| (transfer, Acked::Committed))
        .collect();
    check_bank(dir.path(), &BANK, &acked);
    assert_eq!(again, first, "an id in flight must get the same outcome");
}

#[test]
fn groups_from_concurrent_clients_land_on_both_ledgers_or_neither() {
    // Proves invariant 8 on the group path (`submit_many`): the same check as for
    // single submissions, with every client submitting groups of 97 transfers.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let clients = Clients {
        threads: 4,
        txns_per_thread: 3_000,
        id_first: 1,
        seed: 11,
    };
    let acked = engine_support::run_group_clients(&engine, &BANK, clients, 97);
    let shutdown = engine.shutdown().expect("clean shutdown");
    assert_eq!(acked.len(), 12_000, "every submission got an outcome");
    let verdict = check_bank(dir.path(), &BANK, &acked);
    assert!(verdict.acked_committed > 0, "{verdict:?}");
    assert!(verdict.acked_aborted > 0, "{verdict:?}");
    assert_eq!(verdict.applied_txns, verdict.acked_committed);
    assert_eq!(live_balances(&shutdown), recovered_balances(dir.path()));
}

#[test]
fn a_group_is_judged_as_single_submissions_are_in_order() {
    // Proves that `submit_many` judges each member as `submit` would, in order: a
    // duplicate of an earlier member gets its outcome, a malformed one and one that
    // reuses an id with other legs are rejected at once, a group never reorders
    // transfers (the third debit finds the first two reserved), and a group of decided
    // ids is answered from the table without a batch.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let first = engine_support::Transfer {
        id: 1,
        from: (0, 1),
        to: (1, 2),
        amount: 200,
    };
    let second = engine_support::Transfer { id: 2, ..first };
    let third = engine_support::Transfer { id: 3, ..first };
    let unknown_participant = tricommit_engine::Txn::new(
        tricommit_engine::proto::TxnId(4),
        tricommit_engine::Priority::Normal,
    )
    .with_leg(9, [0; tricommit_engine::proto::OP_PAYLOAD_BYTES])
    .expect("one leg");
    let clash = engine_support::Transfer {
        amount: 11,
        ..first
    };
    let group = [
        first.txn(),
        first.txn(),
        unknown_participant,
        clash.txn(),
        second.txn(),
        third.txn(),
    ];
    let mut tickets = Vec::new();
    engine
        .submit_many(&group, &mut tickets)
        .expect("room for six");
    let outcomes: Vec<Outcome> = tickets.into_iter().map(|ticket| ticket.wait()).collect();
    let rejected = |reason| Outcome::Aborted(AbortReason::Rejected(reason));
    assert_eq!(
        outcomes,
        [
            Outcome::Committed,
            Outcome::Committed,
            rejected(Reason::MALFORMED),
            rejected(Reason::EXISTS_WITH_DIFFERENT_LEGS),
            Outcome::Committed,
            rejected(Reason::INSUFFICIENT_FUNDS),
        ]
    );
    assert_eq!(engine.counters().batch_txns_total, 3, "batched: 1, 2 and 3");
    let mut again = Vec::new();
    engine
        .submit_many(&[first.txn(), third.txn()], &mut again)
        .expect("retries need no room");
    let answered: Vec<_> = again
        .iter_mut()
        .map(|ticket| ticket.try_outcome())
        .collect();
    assert_eq!(
        answered,
        [
            Some(Outcome::Committed),
            Some(rejected(Reason::INSUFFICIENT_FUNDS))
        ]
    );
    assert_eq!(engine.counters().batch_txns_total, 3, "a retry was batched");
    engine.shutdown().expect("clean shutdown");
    check_bank(
        dir.path(),
        &BANK,
        &[
            (first, Acked::Committed),
            (second, Acked::Committed),
            (third, Acked::Aborted),
        ],
    );
}

#[test]
fn a_refused_transfer_reports_the_participants_reason() {
    // Proves that a client learns why its transfer was refused: a debit beyond the
    // balance aborts with the ledger's reason, `INSUFFICIENT_FUNDS`.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let transfer = engine_support::Transfer {
        id: 1,
        from: (0, 1),
        to: (1, 2),
        amount: BANK.balance_initial as u64 + 1,
    };
    let outcome = engine_support::submit_retrying(&engine, transfer.txn()).wait();
    engine.shutdown().expect("clean shutdown");
    assert_eq!(
        outcome,
        Outcome::Aborted(AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS))
    );
}

#[test]
fn shutdown_drains_every_submitted_transfer_to_a_definite_outcome() {
    // Proves that a clean shutdown finishes what it accepted: transfers submitted just
    // before it all get committed or aborted (none in doubt), and the logs agree.
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("engine opens");
    let mut rng = engine_support::SplitMix(17);
    let tickets: Vec<_> = (1..=5_000)
        .map(|id| {
            let transfer = BANK.transfer(&mut rng, id);
            (
                transfer,
                engine_support::submit_retrying(&engine, transfer.txn()),
            )
        })
        .collect();
    engine.shutdown().expect("clean shutdown");
    let acked: Vec<_> = tickets
        .into_iter()
        .map(|(transfer, ticket)| (transfer, Acked::of(ticket.wait())))
        .collect();
    let verdict = check_bank(dir.path(), &BANK, &acked);
    assert!(verdict.acked_committed > 0, "{verdict:?}");
    assert_eq!(verdict.applied_txns, verdict.acked_committed);
}

#[test]
fn a_full_reservation_table_refuses_transfers_without_breaking_the_bank() {
    // Proves that a ledger whose reservation table fills up votes no instead of
    // failing: with room for only a few held reservations per ledger, concurrent
    // clients still end with the bank invariant, and some transfers commit.
    let dir = temp_dir();
    let mut config = BANK.config(dir.path());
    for participant in &mut config.participants {
        if let tricommit_engine::ParticipantSpec::Ledger(ledger) = participant {
            ledger.reservations_max = RESERVATIONS_TINY;
        }
    }
    let engine = Engine::open(config).expect("engine opens");
    let clients = Clients {
        threads: 3,
        txns_per_thread: 1_000,
        id_first: 1,
        seed: 41,
    };
    let mut acked = run(&engine, clients);
    assert_eq!(acked.len(), 3_000, "every submission got an outcome");
    // A burst from one thread fills whole batches, so a batch holds far more
    // transfers per ledger than it has reservations: the refusals must name the full
    // table, not some other reason.
    let mut rng = engine_support::SplitMix(43);
    let burst: Vec<_> = (BURST_ID_FIRST..BURST_ID_FIRST + BURST_TXNS)
        .map(|id| {
            let transfer = BANK.transfer(&mut rng, id);
            (
                transfer,
                engine_support::submit_retrying(&engine, transfer.txn()),
            )
        })
        .collect();
    let mut refused_full = 0;
    for (transfer, ticket) in burst {
        let outcome = ticket.wait();
        let full = Reason(tricommit_engine::ledger::REASON_RESERVATIONS_FULL.0);
        if outcome == Outcome::Aborted(AbortReason::Rejected(full)) {
            refused_full += 1;
        }
        acked.push((transfer, Acked::of(outcome)));
    }
    engine.shutdown().expect("clean shutdown");
    let verdict = check_bank(dir.path(), &BANK, &acked);
    assert!(verdict.acked_committed > 0, "{verdict:?}");
    assert!(
        refused_full > 0,
        "no transfer was refused for a full reservation table: {verdict:?}"
    );
}

/// The one-thread burst of the reservation test: ids far above the clients' ones.
const BURST_ID_FIRST: u64 = 1_000_000;
const BURST_TXNS: u64 = 2_000;
