//! Unit tests for the ledger's vote rules, postings, setup and snapshot errors.

use super::*;
use std::sync::{Arc, Mutex};

fn op(txn: u64, ledger_op: LedgerOp) -> Op {
    Op {
        txn: TxnId(txn),
        payload: ledger_op.encode(),
    }
}

fn debit(txn: u64, account: u64, amount: u64) -> Op {
    op(txn, LedgerOp::debit(account, amount).unwrap())
}

fn credit(txn: u64, account: u64, amount: u64) -> Op {
    op(txn, LedgerOp::credit(account, amount).unwrap())
}

fn ledger(accounts: u64, balance_initial: i64, reservations_max: u64) -> Ledger {
    Ledger::new(LedgerConfig {
        accounts,
        balance_initial,
        reservations_max,
    })
    .unwrap()
}

fn prepare(ledger: &mut Ledger, ops: &[Op]) -> Vec<Vote> {
    let mut votes = Vec::new();
    ledger.prepare(ops, &mut votes);
    votes
}

// Proves that two debits of one batch on one account are checked in order: the second
// sees the first's reservation and votes no when both together would overdraw.
#[test]
fn same_account_in_one_batch_sees_earlier_reservation() {
    let mut ledger = ledger(2, 100, 16);
    let votes = prepare(
        &mut ledger,
        &[debit(1, 0, 60), debit(2, 0, 60), debit(3, 0, 40)],
    );
    assert_eq!(
        votes,
        [Vote::Yes, Vote::No(Reason::INSUFFICIENT_FUNDS), Vote::Yes]
    );
    assert_eq!(ledger.account(0).unwrap().debits_pending, 100);
    ledger.commit(&[TxnId(1), TxnId(2), TxnId(3)]);
    assert_eq!(ledger.account(0).unwrap().balance, 0);
}

// Proves that a held credit is not spendable until it is posted.
#[test]
fn pending_credit_is_not_spendable() {
    let mut ledger = ledger(1, 0, 16);
    let votes = prepare(&mut ledger, &[credit(1, 0, 50), debit(2, 0, 50)]);
    assert_eq!(votes, [Vote::Yes, Vote::No(Reason::INSUFFICIENT_FUNDS)]);
    ledger.commit(&[TxnId(1)]);
    assert_eq!(prepare(&mut ledger, &[debit(3, 0, 50)]), [Vote::Yes]);
}

// Proves that a transaction id already holding a reservation votes DUPLICATE, in the
// same batch or a later one, and that the duplicate leaves the first hold untouched.
#[test]
fn duplicate_txn_votes_no() {
    let mut ledger = ledger(2, 100, 16);
    let votes = prepare(&mut ledger, &[debit(7, 0, 10), credit(7, 1, 10)]);
    assert_eq!(votes, [Vote::Yes, Vote::No(Reason::DUPLICATE)]);
    assert_eq!(
        prepare(&mut ledger, &[debit(7, 0, 1)]),
        [Vote::No(Reason::DUPLICATE)]
    );
    assert_eq!(ledger.account(0).unwrap().debits_pending, 10);
    assert_eq!(ledger.account(1).unwrap().credits_pending, 0);
}

// Proves that commit and abort are idempotent and ignore unknown ids, so that a
// replayed or duplicated decision changes nothing.
#[test]
fn commit_and_abort_are_idempotent() {
    let mut ledger = ledger(2, 100, 16);
    prepare(&mut ledger, &[debit(1, 0, 30), credit(2, 1, 30)]);
    ledger.commit(&[TxnId(1), TxnId(99)]);
    ledger.commit(&[TxnId(1)]);
    ledger.abort(&[TxnId(1), TxnId(2), TxnId(98)]);
    ledger.abort(&[TxnId(2)]);
    ledger.commit(&[TxnId(2)]);
    assert_eq!(ledger.account(0).unwrap(), Account::new(70, 0));
    assert_eq!(ledger.account(1).unwrap(), Account::new(100, 0));
    assert_eq!(ledger.reservations_len(), 0);
}

// Proves that a full reservation table votes REASON_RESERVATIONS_FULL without holding
// anything, and that room freed by a decision is usable again.
#[test]
fn full_reservation_table_votes_no_and_recovers() {
    let mut ledger = ledger(1, 1000, 2);
    let votes = prepare(
        &mut ledger,
        &[debit(1, 0, 1), debit(2, 0, 1), debit(3, 0, 1)],
    );
    assert_eq!(
        votes,
        [Vote::Yes, Vote::Yes, Vote::No(REASON_RESERVATIONS_FULL)]
    );
    assert_eq!(ledger.account(0).unwrap().debits_pending, 2);
    assert_eq!(ledger.reservations_len(), ledger.reservations_max());
    ledger.abort(&[TxnId(1)]);
    assert_eq!(prepare(&mut ledger, &[debit(3, 0, 1)]), [Vote::Yes]);
}

// Proves that a credit whose posting could overflow the balance votes OVERFLOW, counting
// credits already held.
#[test]
fn credit_overflow_votes_no() {
    let mut ledger = ledger(1, i64::MAX - 10, 16);
    let votes = prepare(
        &mut ledger,
        &[credit(1, 0, 6), credit(2, 0, 5), credit(3, 0, 4)],
    );
    assert_eq!(votes, [Vote::Yes, Vote::No(Reason::OVERFLOW), Vote::Yes]);
    ledger.commit(&[TxnId(1), TxnId(3)]);
    assert_eq!(ledger.account(0).unwrap().balance, i64::MAX);
}

// Proves that debits against the most negative limit cannot wrap: the i128 check lets
// the account reach i64::MIN exactly and refuses one unit more.
#[test]
fn extreme_limit_does_not_wrap() {
    let mut ledger = ledger(1, 0, 16);
    ledger.set_limit(0, i64::MIN).unwrap();
    let votes = prepare(
        &mut ledger,
        &[debit(1, 0, OP_AMOUNT_MAX), debit(2, 0, 1), debit(3, 0, 1)],
    );
    assert_eq!(
        votes,
        [Vote::Yes, Vote::Yes, Vote::No(Reason::INSUFFICIENT_FUNDS)]
    );
    ledger.commit(&[TxnId(1), TxnId(2)]);
    assert_eq!(ledger.account(0).unwrap().balance, i64::MIN);
}

// Proves the read-only rules: zero amounts and checks vote ReadOnly and hold nothing, a
// check that cannot be covered votes no, and bad input votes MALFORMED or
// UNKNOWN_ACCOUNT without panicking.
#[test]
fn read_only_malformed_and_unknown_account() {
    let mut ledger = ledger(1, 10, 16);
    let mut garbage = debit(5, 0, 1);
    garbage.payload[16] = 0xff;
    let ops = [
        debit(1, 0, 0),
        op(2, LedgerOp::check(0, 10).unwrap()),
        op(3, LedgerOp::check(0, 11).unwrap()),
        debit(4, 1, 1),
        debit(6, u64::MAX, 1),
        garbage,
    ];
    let votes = prepare(&mut ledger, &ops);
    assert_eq!(
        votes,
        [
            Vote::ReadOnly,
            Vote::ReadOnly,
            Vote::No(Reason::INSUFFICIENT_FUNDS),
            Vote::No(Reason::UNKNOWN_ACCOUNT),
            Vote::No(Reason::UNKNOWN_ACCOUNT),
            Vote::No(Reason::MALFORMED),
        ]
    );
    assert_eq!(ledger.reservations_len(), 0);
}

// Proves that commit records one posting per posted reservation, in order, readable
// afterwards and delivered once to the sink, and that abort posts nothing.
#[test]
fn commit_produces_postings() {
    let mut ledger = ledger(2, 100, 16);
    let received: Arc<Mutex<Vec<Posting>>> = Arc::default();
    let sink_copy = Arc::clone(&received);
    ledger.set_posting_sink(Some(Box::new(move |postings: &[Posting]| {
        sink_copy.lock().unwrap().extend_from_slice(postings);
    })));
    prepare(
        &mut ledger,
        &[debit(1, 0, 30), credit(2, 1, 30), debit(3, 1, 5)],
    );
    ledger.abort(&[TxnId(3)]);
    ledger.commit(&[TxnId(2), TxnId(1), TxnId(3)]);
    let expected = [
        Posting {
            txn: TxnId(2),
            account: 1,
            delta: 30,
        },
        Posting {
            txn: TxnId(1),
            account: 0,
            delta: -30,
        },
    ];
    assert_eq!(ledger.last_postings(), expected);
    assert_eq!(*received.lock().unwrap(), expected);
    for posting in expected {
        assert_eq!(Posting::decode(&posting.encode()), posting);
    }
    ledger.commit(&[TxnId(1)]);
    assert!(ledger.last_postings().is_empty());
    assert_eq!(received.lock().unwrap().len(), 2);
}

// Proves that setup refuses what would break the invariants: a limit above the balance,
// a balance below the limit, an account holding reservations, bad configurations.
#[test]
fn setup_refuses_invalid_changes() {
    let mut ledger = ledger(2, 10, 16);
    assert!(matches!(
        ledger.set_limit(0, 11),
        Err(LedgerError::BalanceBelowLimit { .. })
    ));
    ledger.set_limit(0, -5).unwrap();
    assert!(matches!(
        ledger.set_balance(0, -6),
        Err(LedgerError::BalanceBelowLimit { .. })
    ));
    assert_eq!(
        ledger.set_balance(2, 0),
        Err(LedgerError::AccountUnknown(2))
    );
    prepare(&mut ledger, &[debit(1, 1, 1)]);
    assert_eq!(
        ledger.set_balance(1, 50),
        Err(LedgerError::AccountReserved(1))
    );
    let too_many = LedgerConfig::new(ACCOUNTS_MAX + 1);
    assert!(matches!(
        Ledger::new(too_many),
        Err(LedgerError::AccountsTooMany { .. })
    ));
    let no_room = LedgerConfig {
        reservations_max: 0,
        ..LedgerConfig::new(1)
    };
    assert!(matches!(
        Ledger::new(no_room),
        Err(LedgerError::ReservationsMaxInvalid { .. })
    ));
}

fn snapshot_of_busy_ledger() -> (Ledger, Vec<u8>) {
    let mut ledger = ledger(4, 100, 8);
    ledger.set_limit(3, -50).unwrap();
    prepare(
        &mut ledger,
        &[debit(10, 0, 40), credit(11, 1, 40), debit(12, 3, 120)],
    );
    ledger.commit(&[TxnId(10)]);
    let mut bytes = Vec::new();
    ledger.snapshot_encode(&mut bytes);
    (ledger, bytes)
}

// Proves that a snapshot with held reservations decodes to an equal ledger that then
// behaves the same: the held amounts still count and can still be posted.
#[test]
fn snapshot_round_trip_keeps_reservations() {
    let (mut original, bytes) = snapshot_of_busy_ledger();
    let mut decoded = Ledger::snapshot_decode(&bytes).unwrap();
    assert_eq!(decoded, original);
    let mut again = Vec::new();
    decoded.snapshot_encode(&mut again);
    assert_eq!(again, bytes);
    for ledger in [&mut original, &mut decoded] {
        assert_eq!(
            prepare(ledger, &[debit(13, 3, 31)]),
            [Vote::No(Reason::INSUFFICIENT_FUNDS)]
        );
        ledger.commit(&[TxnId(11), TxnId(12)]);
    }
    assert_eq!(decoded, original);
    assert_eq!(decoded.account(3).unwrap().balance, -20);
}

// Proves that every single-bit flip and every truncation of a snapshot is refused with
// a typed error rather than decoded into a different ledger.
#[test]
fn snapshot_corruption_is_refused() {
    let (_, bytes) = snapshot_of_busy_ledger();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Ledger::snapshot_decode(&flipped).is_err(),
            "bit {bit} flip accepted"
        );
    }
    for len in 0..bytes.len() {
        assert!(
            Ledger::snapshot_decode(&bytes[..len]).is_err(),
            "truncation {len} accepted"
        );
    }
    let mut bad_magic = bytes.clone();
    bad_magic[0] ^= 1;
    assert_eq!(
        Ledger::snapshot_decode(&bad_magic),
        Err(LedgerError::SnapshotMagic)
    );
}

/// Re-encodes a snapshot body with a valid checksum, to reach the checks behind it.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body_len = bytes.len() - 4;
    let checksum = crc32c::crc32c(&bytes[..body_len]);
    bytes[body_len..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

// Proves that a well-checksummed snapshot describing an impossible state (a reservation
// larger than the funds, or a reservation on a missing account) is refused.
#[test]
fn snapshot_inconsistent_state_is_refused() {
    let (_, bytes) = snapshot_of_busy_ledger();
    let reservations_offset = 40 + 16 * 4;
    // The first reservation (txn 11, a credit of 40) becomes a debit of 40 on account 1,
    // whose balance is 100: fine. Make it 101 instead: more than the funds.
    let mut overdrawn = bytes.clone();
    overdrawn[reservations_offset + 24] = HoldKind::Debit as u8;
    overdrawn[reservations_offset + 16..reservations_offset + 24]
        .copy_from_slice(&101u64.to_le_bytes());
    assert!(matches!(
        Ledger::snapshot_decode(&reseal(overdrawn)),
        Err(LedgerError::SnapshotInconsistent(_))
    ));
    let mut no_account = bytes;
    no_account[reservations_offset + 8..reservations_offset + 16]
        .copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(
        Ledger::snapshot_decode(&reseal(no_account)),
        Err(LedgerError::SnapshotInconsistent(_))
    ));
}

// Proves that check_invariants accepts a busy ledger and notices pending sums that
// disagree with the held reservations.
#[test]
fn check_invariants_notices_drift() {
    let (mut ledger, _) = snapshot_of_busy_ledger();
    assert_eq!(ledger.check_invariants(), Ok(()));
    ledger.accounts[1].credits_pending += 1;
    assert!(matches!(
        ledger.check_invariants(),
        Err(LedgerError::InvariantBroken { account: 1, .. })
    ));
}

// Proves that the largest reservation bound builds and works (its table is allocated
// lazily, so this costs no time) and that one more is refused with a typed error.
#[test]
fn reservation_bound_limits() {
    let largest = LedgerConfig {
        reservations_max: RESERVATIONS_MAX_LIMIT,
        ..LedgerConfig::new(1)
    };
    let mut ledger = Ledger::new(largest).unwrap();
    assert_eq!(prepare(&mut ledger, &[credit(1, 0, 5)]), [Vote::Yes]);
    assert_eq!(ledger.reservations_max(), RESERVATIONS_MAX_LIMIT);
    let over = LedgerConfig {
        reservations_max: RESERVATIONS_MAX_LIMIT + 1,
        ..largest
    };
    assert!(matches!(
        Ledger::new(over),
        Err(LedgerError::ReservationsMaxInvalid { .. })
    ));
}
