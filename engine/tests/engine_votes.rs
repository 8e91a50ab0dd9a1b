//! Slow and refusing participants: a no vote that arrives late aborts exactly the
//! transactions it names, and a vote that arrives after the vote timeout is ignored.
//! Either way nothing of those transactions is posted on any ledger (DESIGN §2: no
//! PRE-COMMIT leaves before every participant voted yes).
//!
//! The slow participant is a custom "referee" beside the two ledgers. Each transaction
//! tells it, in the first byte of its operation, how to vote.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::{check_bank, submit_retrying, Acked, Bank, SplitMix, Transfer};
use tricommit_engine::proto::{Op, Reason, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};
use tricommit_engine::runtime::Timeouts;
use tricommit_engine::{AbortReason, Engine, EngineConfig, Outcome, ParticipantSpec, Ticket};

const BANK: Bank = Bank {
    ledgers: 2,
    accounts: 256,
    balance_initial: 100_000,
    amount_max: 100,
};
const REFEREE: u8 = 2;
/// Referee instructions (first payload byte).
const VOTE_YES: u8 = 0;
const VOTE_NO_LATE: u8 = 1;
const VOTE_YES_AFTER_TIMEOUT: u8 = 2;
/// The referee's own reason for a no.
const REASON_REFEREE: Reason = Reason(400);
/// How long the referee takes over a batch holding a late no.
const LATE_NO_DELAY: Duration = Duration::from_millis(30);
/// The vote timeout of the timeout test, and how long the referee sleeps past it.
const VOTE_TIMEOUT_US: u64 = 200_000;
const PAST_TIMEOUT_DELAY: Duration = Duration::from_millis(800);
/// Vote and pending timeouts far beyond the test's length.
const PATIENT_US: u64 = 60_000_000;
/// Transfers submitted after the slow vote until one commits: the engine recovers
/// once the referee answers again.
const AFTER_TIMEOUT_ATTEMPTS_MAX: u64 = 50;

/// Votes as each operation says, sleeping once per batch before a late vote.
struct Referee;

impl ResourceManager for Referee {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        let slowest = ops.iter().map(|op| op.payload[0]).max();
        match slowest {
            Some(VOTE_NO_LATE) => std::thread::sleep(LATE_NO_DELAY),
            Some(VOTE_YES_AFTER_TIMEOUT) => std::thread::sleep(PAST_TIMEOUT_DELAY),
            _ => {}
        }
        votes.extend(ops.iter().map(|op| match op.payload[0] {
            VOTE_NO_LATE => Vote::No(REASON_REFEREE),
            _ => Vote::Yes,
        }));
    }
    fn commit(&mut self, _txns: &[TxnId]) {}
    fn abort(&mut self, _txns: &[TxnId]) {}
}

fn config(dir: &std::path::Path, timeouts: Timeouts) -> EngineConfig {
    let mut config = BANK.config(dir);
    config.participants.push(ParticipantSpec::Custom {
        name: "referee".into(),
        factory: Arc::new(|| Box::new(Referee)),
    });
    config.timeouts = timeouts;
    config
}

/// Timeouts that never fire during a test: only votes decide.
fn patient() -> Timeouts {
    Timeouts {
        vote_us: PATIENT_US,
        vote_min_us: PATIENT_US,
        vote_max_us: PATIENT_US,
        pending_us: PATIENT_US,
        ..Timeouts::default()
    }
}

fn submit_refereed(engine: &Engine, transfer: &Transfer, instruction: u8) -> Ticket {
    let mut payload = [0; OP_PAYLOAD_BYTES];
    payload[0] = instruction;
    let txn = transfer
        .txn()
        .with_leg(REFEREE, payload)
        .expect("a third participant");
    submit_retrying(engine, txn)
}

#[test]
fn a_late_no_vote_aborts_exactly_its_transactions() {
    // Proves that a no arriving after the ledgers voted yes cancels only the
    // transactions it names: each of them aborts and is posted nowhere, while the
    // others of the same batches commit.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let engine = Engine::open(config(dir.path(), patient())).expect("engine opens");
    let mut rng = SplitMix(31);
    let tickets: Vec<_> = (1..=600)
        .map(|id| {
            let transfer = BANK.transfer(&mut rng, id);
            let refused = id % 7 == 0;
            let instruction = if refused { VOTE_NO_LATE } else { VOTE_YES };
            let ticket = submit_refereed(&engine, &transfer, instruction);
            (transfer, refused, ticket)
        })
        .collect();
    let mut acked = Vec::new();
    for (transfer, refused, ticket) in tickets {
        let outcome = ticket.wait();
        if refused {
            // The referee's own reason, not a timeout or a termination.
            assert_eq!(
                outcome,
                Outcome::Aborted(AbortReason::Rejected(REASON_REFEREE)),
                "{transfer:?} was refused by the referee"
            );
        } else {
            // Balances are ample and no timeout fires: only a refusal aborts.
            assert_eq!(outcome, Outcome::Committed, "{transfer:?}");
        }
        acked.push((transfer, Acked::of(outcome)));
    }
    engine.shutdown().expect("clean shutdown");
    check_bank(dir.path(), &BANK, &acked);
}

#[test]
fn a_vote_after_the_timeout_is_ignored_and_the_engine_carries_on() {
    // Proves that the vote timeout aborts a transaction whose participant answers too
    // late, that the late yes then changes nothing (no posting, no reservation left),
    // and that transactions submitted afterwards commit again.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let engine = Engine::open(config(
        dir.path(),
        Timeouts {
            vote_us: VOTE_TIMEOUT_US,
            ..Timeouts::default()
        },
    ))
    .expect("engine opens");
    let mut rng = SplitMix(37);
    let slow = BANK.transfer(&mut rng, 1);
    let slow_outcome = submit_refereed(&engine, &slow, VOTE_YES_AFTER_TIMEOUT).wait();
    assert_eq!(
        slow_outcome,
        Outcome::Aborted(AbortReason::Rejected(Reason::TIMEOUT)),
        "a vote past the timeout must abort for the timeout"
    );
    let mut acked = vec![(slow, Acked::of(slow_outcome))];
    let mut committed_after = false;
    for id in 2..2 + AFTER_TIMEOUT_ATTEMPTS_MAX {
        let transfer = BANK.transfer(&mut rng, id);
        let outcome = submit_refereed(&engine, &transfer, VOTE_YES).wait();
        acked.push((transfer, Acked::of(outcome)));
        if outcome == Outcome::Committed {
            committed_after = true;
            break;
        }
    }
    engine.shutdown().expect("clean shutdown");
    assert!(committed_after, "nothing committed after the slow vote");
    check_bank(dir.path(), &BANK, &acked);
}
