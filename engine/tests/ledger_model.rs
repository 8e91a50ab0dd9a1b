//! Model-based property tests of the ledger participant against a plain reference
//! implementation, a two-ledger bank test, and snapshot decoding of arbitrary bytes.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tricommit_engine::ledger::{
    HoldKind, Ledger, LedgerConfig, LedgerError, LedgerOp, Posting, Reservation,
    REASON_RESERVATIONS_FULL,
};
use tricommit_engine::proto::{Op, Reason, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};

/// Transaction ids are drawn from a small range so that duplicates and decisions on
/// held, decided and unknown ids all happen often.
const TXN_IDS_MAX: u64 = 24;
/// One more than the accounts a test ledger can have, so unknown accounts appear.
const ACCOUNT_IDS_MAX: u64 = 6;

/// The reference: the rules of the ledger written as plainly as possible, in `i128`.
#[derive(Debug)]
struct Model {
    /// Per account: balance, limit, held debits, held credits.
    accounts: Vec<[i128; 4]>,
    held: BTreeMap<u64, (u64, HoldKind, u64)>,
    reservations_max: usize,
}

impl Model {
    fn vote(&mut self, txn: u64, payload: &[u8; OP_PAYLOAD_BYTES]) -> Vote {
        let Ok(op) = LedgerOp::decode(payload) else {
            return Vote::No(Reason::MALFORMED);
        };
        if self.held.contains_key(&txn) {
            return Vote::No(Reason::DUPLICATE);
        }
        if op.account >= self.accounts.len() as u64 {
            return Vote::No(Reason::UNKNOWN_ACCOUNT);
        }
        let [balance, limit, debits, credits] = self.accounts[op.account as usize];
        let amount = i128::from(op.amount);
        let fundable = balance - debits - amount >= limit;
        let kind = match op.kind {
            tricommit_engine::ledger::OpKind::Check if fundable => return Vote::ReadOnly,
            tricommit_engine::ledger::OpKind::Check => return Vote::No(Reason::INSUFFICIENT_FUNDS),
            _ if amount == 0 => return Vote::ReadOnly,
            tricommit_engine::ledger::OpKind::Debit => HoldKind::Debit,
            tricommit_engine::ledger::OpKind::Credit => HoldKind::Credit,
        };
        if self.held.len() >= self.reservations_max {
            return Vote::No(REASON_RESERVATIONS_FULL);
        }
        let slot = match kind {
            HoldKind::Debit if !fundable => return Vote::No(Reason::INSUFFICIENT_FUNDS),
            HoldKind::Credit if balance + credits + amount > i128::from(i64::MAX) => {
                return Vote::No(Reason::OVERFLOW)
            }
            HoldKind::Debit => 2,
            HoldKind::Credit => 3,
        };
        self.accounts[op.account as usize][slot] += amount;
        self.held.insert(txn, (op.account, kind, op.amount));
        Vote::Yes
    }

    fn decide(&mut self, txns: &[TxnId], post: bool) -> Vec<Posting> {
        let mut postings = Vec::new();
        for txn in txns {
            let Some((account, kind, amount)) = self.held.remove(&txn.0) else {
                continue;
            };
            let state = &mut self.accounts[account as usize];
            let (slot, delta) = match kind {
                HoldKind::Debit => (2, -i128::from(amount)),
                HoldKind::Credit => (3, i128::from(amount)),
            };
            state[slot] -= i128::from(amount);
            if post {
                state[0] += delta;
                postings.push(Posting {
                    txn: *txn,
                    account,
                    delta: delta as i64,
                });
            }
        }
        postings
    }

    fn reservations(&self) -> Vec<Reservation> {
        self.held
            .iter()
            .map(|(&txn, &(account, kind, amount))| Reservation {
                txn,
                account,
                amount,
                kind,
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Step {
    Prepare(Vec<(u64, [u8; OP_PAYLOAD_BYTES])>),
    Commit(Vec<u64>),
    Abort(Vec<u64>),
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..150u64,
        1 => Just(0u64),
        1 => (i64::MAX as u64 - 200)..=(i64::MAX as u64),
    ]
}

fn payload() -> impl Strategy<Value = [u8; OP_PAYLOAD_BYTES]> {
    let op = (0..ACCOUNT_IDS_MAX, amount(), 0..3u8).prop_map(|(account, amount, kind)| {
        let op = match kind {
            0 => LedgerOp::debit(account, amount),
            1 => LedgerOp::credit(account, amount),
            _ => LedgerOp::check(account, amount),
        };
        op.expect("amount is at most i64::MAX").encode()
    });
    prop_oneof![12 => op, 1 => any::<[u8; OP_PAYLOAD_BYTES]>()]
}

fn step() -> impl Strategy<Value = Step> {
    let txns = || prop::collection::vec(0..TXN_IDS_MAX, 0..8);
    prop_oneof![
        3 => prop::collection::vec((0..TXN_IDS_MAX, payload()), 0..10).prop_map(Step::Prepare),
        2 => txns().prop_map(Step::Commit),
        1 => txns().prop_map(Step::Abort),
    ]
}

/// Setup: accounts, reservation bound, initial balance and per-account limits.
fn setup() -> impl Strategy<Value = (u64, u64, i64, Vec<i64>)> {
    let balance = prop_oneof![0..500i64, Just(i64::MAX - 100)];
    let limit = prop_oneof![Just(0i64), -300..0i64, Just(i64::MIN)];
    (
        1..ACCOUNT_IDS_MAX,
        1..10u64,
        balance,
        prop::collection::vec(limit, ACCOUNT_IDS_MAX as usize),
    )
}

fn build(setup: &(u64, u64, i64, Vec<i64>)) -> (Ledger, Model) {
    let (accounts, reservations_max, balance_initial, limits) = setup;
    let config = LedgerConfig {
        accounts: *accounts,
        balance_initial: *balance_initial,
        reservations_max: *reservations_max,
    };
    let mut ledger = Ledger::new(config).unwrap();
    let mut model = Model {
        accounts: Vec::new(),
        held: BTreeMap::new(),
        reservations_max: *reservations_max as usize,
    };
    for id in 0..*accounts {
        let limit = limits[id as usize];
        ledger.set_limit(id, limit).unwrap();
        let state = [i128::from(*balance_initial), i128::from(limit), 0, 0];
        model.accounts.push(state);
    }
    (ledger, model)
}

fn assert_same_state(ledger: &Ledger, model: &Model) {
    for (id, state) in model.accounts.iter().enumerate() {
        let account = ledger.account(id as u64).unwrap();
        let actual = [
            i128::from(account.balance),
            i128::from(account.limit),
            i128::from(account.debits_pending),
            i128::from(account.credits_pending),
        ];
        assert_eq!(&actual, state, "account {id}");
        assert!(
            account.balance >= account.limit,
            "account {id} below its limit"
        );
    }
    assert_eq!(ledger.reservations_sorted(), model.reservations());
    assert_eq!(ledger.accounts_below_limit().count(), 0);
    assert_eq!(ledger.check_invariants(), Ok(()));
}

fn assert_snapshot_round_trips(ledger: &Ledger) {
    let mut bytes = Vec::new();
    ledger.snapshot_encode(&mut bytes);
    let decoded = Ledger::snapshot_decode(&bytes).expect("a fresh snapshot decodes");
    assert_eq!(&decoded, ledger);
    let mut again = Vec::new();
    decoded.snapshot_encode(&mut again);
    assert_eq!(again, bytes, "equal ledgers encode to equal bytes");
}

/// One transfer: a debit on one ledger and a credit on the other.
#[derive(Clone, Debug)]
struct Transfer {
    debit_on_first: bool,
    from: u64,
    to: u64,
    amount: u64,
    commit: bool,
}

fn transfer() -> impl Strategy<Value = Transfer> {
    (
        any::<bool>(),
        0..4u64,
        0..4u64,
        1..80u64,
        prop::bool::weighted(0.7),
    )
        .prop_map(|(debit_on_first, from, to, amount, commit)| Transfer {
            debit_on_first,
            from,
            to,
            amount,
            commit,
        })
}

/// Runs batches of transfers over two ledgers: prepares each batch on both, then
/// commits on both the transfers that got two yes votes and were chosen to commit, and
/// aborts the rest on both. Returns the postings each ledger made.
fn run_bank(batches: &[Vec<Transfer>], ledgers: &mut [Ledger; 2]) -> [Vec<Posting>; 2] {
    let mut postings: [Vec<Posting>; 2] = [Vec::new(), Vec::new()];
    let mut txn_next = 0u64;
    let mut votes = [Vec::new(), Vec::new()];
    for batch in batches {
        let mut ops: [Vec<Op>; 2] = [Vec::new(), Vec::new()];
        for transfer in batch {
            let debit = LedgerOp::debit(transfer.from, transfer.amount).unwrap();
            let credit = LedgerOp::credit(transfer.to, transfer.amount).unwrap();
            let (first, second) = if transfer.debit_on_first {
                (debit, credit)
            } else {
                (credit, debit)
            };
            let txn = TxnId(txn_next);
            txn_next += 1;
            ops[0].push(Op {
                txn,
                payload: first.encode(),
            });
            ops[1].push(Op {
                txn,
                payload: second.encode(),
            });
        }
        for side in 0..2 {
            votes[side].clear();
            ledgers[side].prepare(&ops[side], &mut votes[side]);
        }
        let (mut commits, mut aborts) = (Vec::new(), Vec::new());
        for (index, transfer) in batch.iter().enumerate() {
            let yes = votes[0][index] == Vote::Yes && votes[1][index] == Vote::Yes;
            let txn = ops[0][index].txn;
            if yes && transfer.commit {
                commits.push(txn);
            } else {
                aborts.push(txn);
            }
        }
        for side in 0..2 {
            ledgers[side].abort(&aborts);
            ledgers[side].commit(&commits);
            postings[side].extend_from_slice(ledgers[side].last_postings());
        }
    }
    postings
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // Proves that for random batches, random decisions (on held, decided and unknown
    // ids) and random bad payloads, the ledger votes, posts and holds exactly what the
    // reference does, never lets a balance below its limit, and that its snapshot
    // round-trips at every step; and that a replica fed the same calls (with its own
    // random table key) ends in a state with the same snapshot bytes, as replay needs.
    #[test]
    fn ledger_matches_reference(setup in setup(), steps in prop::collection::vec(step(), 1..30)) {
        let (mut ledger, mut model) = build(&setup);
        let (mut replica, _) = build(&setup);
        let mut votes = Vec::new();
        let mut replica_votes = Vec::new();
        for step in &steps {
            match step {
                Step::Prepare(batch) => {
                    let ops: Vec<Op> = batch
                        .iter()
                        .map(|&(txn, payload)| Op { txn: TxnId(txn), payload })
                        .collect();
                    votes.clear();
                    ledger.prepare(&ops, &mut votes);
                    replica_votes.clear();
                    replica.prepare(&ops, &mut replica_votes);
                    prop_assert_eq!(&votes, &replica_votes);
                    let expected: Vec<Vote> =
                        batch.iter().map(|(txn, payload)| model.vote(*txn, payload)).collect();
                    prop_assert_eq!(&votes, &expected);
                }
                Step::Commit(txns) => {
                    let txns: Vec<TxnId> = txns.iter().copied().map(TxnId).collect();
                    ledger.commit(&txns);
                    replica.commit(&txns);
                    let expected = model.decide(&txns, true);
                    prop_assert_eq!(ledger.last_postings(), &expected[..]);
                }
                Step::Abort(txns) => {
                    let txns: Vec<TxnId> = txns.iter().copied().map(TxnId).collect();
                    ledger.abort(&txns);
                    replica.abort(&txns);
                    model.decide(&txns, false);
                }
            }
            assert_same_state(&ledger, &model);
            assert_snapshot_round_trips(&ledger);
        }
        let (mut bytes, mut replica_bytes) = (Vec::new(), Vec::new());
        ledger.snapshot_encode(&mut bytes);
        replica.snapshot_encode(&mut replica_bytes);
        prop_assert_eq!(bytes, replica_bytes);
    }

    // Proves the bank invariant over two ledgers: the sum of all balances never
    // changes, no balance goes below its limit, nothing stays held once every transfer
    // is decided, and each transfer is posted on both ledgers (with opposite deltas) or
    // on neither.
    #[test]
    fn bank_transfers_are_all_or_nothing(
        batches in prop::collection::vec(prop::collection::vec(transfer(), 1..12), 1..12)
    ) {
        let config = LedgerConfig { balance_initial: 100, reservations_max: 64, ..LedgerConfig::new(4) };
        let mut ledgers = [Ledger::new(config).unwrap(), Ledger::new(config).unwrap()];
        ledgers[1].set_limit(3, -200).unwrap();
        let total_before: i128 = ledgers.iter().map(Ledger::total_balance).sum();
        let postings = run_bank(&batches, &mut ledgers);
        let total_after: i128 = ledgers.iter().map(Ledger::total_balance).sum();
        prop_assert_eq!(total_before, total_after);
        for ledger in &ledgers {
            prop_assert_eq!(ledger.accounts_below_limit().count(), 0);
            prop_assert_eq!(ledger.reservations_len(), 0);
            prop_assert_eq!(ledger.check_invariants(), Ok(()));
        }
        let by_txn = |postings: &[Posting]| -> BTreeMap<TxnId, i64> {
            postings.iter().map(|p| (p.txn, p.delta)).collect()
        };
        let (first, second) = (by_txn(&postings[0]), by_txn(&postings[1]));
        prop_assert_eq!(first.len(), postings[0].len(), "one posting per txn per ledger");
        prop_assert_eq!(first.keys().collect::<Vec<_>>(), second.keys().collect::<Vec<_>>());
        for (txn, delta) in &first {
            prop_assert_eq!(*delta, -second[txn]);
        }
    }

    // Proves that arbitrary bytes, with or without a valid magic and version in front,
    // and with or without a valid checksum after them, never make snapshot_decode
    // panic; and that whatever it accepts keeps the ledger's invariants. The checksum
    // matters: without it random bytes never get past the CRC check, and the decoder
    // behind it would go untested.
    #[test]
    fn snapshot_decode_never_panics(
        tail in prop::collection::vec(any::<u8>(), 0..400),
        framed in any::<bool>(),
        sealed in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        if framed {
            bytes.extend_from_slice(b"TRILEDG1");
            bytes.extend_from_slice(&1u32.to_le_bytes());
        }
        bytes.extend_from_slice(&tail);
        if sealed {
            let checksum = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&checksum.to_le_bytes());
        }
        if let Ok(decoded) = Ledger::snapshot_decode(&bytes) {
            prop_assert_eq!(decoded.accounts_below_limit().count(), 0);
        }
    }

    // Proves random snapshots reach the decoder behind the header, length and checksum
    // checks: a well-formed header with counts that match the length, random account
    // and reservation bytes, and a valid checksum is refused (if at all) only for what
    // those bytes say, and an accepted one keeps the ledger's invariants.
    #[test]
    fn sealed_random_snapshots_reach_the_body_decoder(
        accounts in 1u64..8,
        reservations_max in 1u64..16,
        reservations_len in 0u64..4,
        seed in prop::collection::vec(any::<u8>(), 16 * 8 + 25 * 4),
    ) {
        let reservations_len = reservations_len.min(reservations_max);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"TRILEDG1");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for count in [accounts, reservations_max, reservations_len] {
            bytes.extend_from_slice(&count.to_le_bytes());
        }
        let body = (16 * accounts + 25 * reservations_len) as usize;
        bytes.extend_from_slice(&seed[..body]);
        let checksum = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        match Ledger::snapshot_decode(&bytes) {
            Ok(decoded) => prop_assert_eq!(decoded.accounts_below_limit().count(), 0),
            Err(error) => prop_assert!(
                !matches!(
                    error,
                    LedgerError::SnapshotLength { .. }
                        | LedgerError::SnapshotChecksum { .. }
                        | LedgerError::SnapshotMagic
                        | LedgerError::SnapshotVersion(_)
                        | LedgerError::SnapshotTruncated { .. }
                ),
                "refused before the body: {}",
                error
            ),
        }
    }

    // Proves that a real snapshot with random bytes overwritten, even when its checksum
    // is then recomputed to match, decodes to an error or to a ledger that keeps the
    // invariants, and never panics.
    #[test]
    fn mutated_snapshot_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        reseal in any::<bool>(),
    ) {
        let config = LedgerConfig { balance_initial: 50, reservations_max: 8, ..LedgerConfig::new(3) };
        let mut ledger = Ledger::new(config).unwrap();
        let ops = [
            Op { txn: TxnId(1), payload: LedgerOp::debit(0, 20).unwrap().encode() },
            Op { txn: TxnId(2), payload: LedgerOp::credit(2, 20).unwrap().encode() },
        ];
        ledger.prepare(&ops, &mut Vec::new());
        let mut bytes = Vec::new();
        ledger.snapshot_encode(&mut bytes);
        for (index, byte) in &edits {
            let at = index.index(bytes.len());
            bytes[at] = *byte;
        }
        if reseal {
            let body = bytes.len() - 4;
            let checksum = crc32c::crc32c(&bytes[..body]);
            bytes[body..].copy_from_slice(&checksum.to_le_bytes());
        }
        if let Ok(decoded) = Ledger::snapshot_decode(&bytes) {
            prop_assert_eq!(decoded.accounts_below_limit().count(), 0);
            for id in 0..decoded.accounts_len() {
                let account = decoded.account(id).unwrap();
                prop_assert!(account.available() >= 0);
            }
        }
    }
}
