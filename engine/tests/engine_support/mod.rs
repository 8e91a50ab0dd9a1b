//! Shared by the engine's integration tests: a seeded generator, random transfers,
//! client threads that submit them, and the bank checker, which rebuilds every ledger
//! read-only from its log and checks DESIGN §2 invariant 8 transaction by transaction.
//!
//! The checker trusts nothing the engine reports: it replays the logs with a posting
//! sink and compares each posting with what the clients were told.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tricommit_engine::ledger::Posting;
use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::{recover_ledgers, Timeouts};
use tricommit_engine::{Engine, EngineConfig, Outcome, Txn};
use tricommit_wal::WalConfig;

/// Segment size of the test logs: large enough for any batch record, small enough that
/// creating seven logs (three replicas, four ledgers) zero-fills little.
pub const TEST_SEGMENT_BYTES: u64 = 8 << 20;
/// Largest record of the test logs: a prepare record of a full default batch fits.
pub const TEST_RECORD_BYTES_MAX: u32 = 1 << 20;
const _: () = assert!((TEST_RECORD_BYTES_MAX as u64) < TEST_SEGMENT_BYTES);

/// Tickets one client thread holds before it waits for the oldest, so that clients
/// keep several batches busy without flooding the intake.
pub const CLIENT_WINDOW_TICKETS: usize = 256;

/// A tiny deterministic generator (SplitMix64), so that a failure reproduces.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The shape of a test bank: how many ledgers, accounts per ledger, opening balance.
#[derive(Clone, Copy, Debug)]
pub struct Bank {
    pub ledgers: usize,
    pub accounts: u64,
    pub balance_initial: i64,
    /// Transfers move `1..=amount_max`.
    pub amount_max: u64,
}

impl Bank {
    /// The money in the bank: it never changes.
    pub fn total(&self) -> i128 {
        self.ledgers as i128 * self.accounts as i128 * i128::from(self.balance_initial)
    }

    /// An engine configuration for this bank in `dir`, with test-sized logs.
    pub fn config(&self, dir: &Path) -> EngineConfig {
        let mut config =
            EngineConfig::ledgers(dir, self.ledgers, self.accounts, self.balance_initial);
        config.wal = test_wal();
        config
    }

    /// A random transfer between two different ledgers.
    pub fn transfer(&self, rng: &mut SplitMix, id: u64) -> Transfer {
        let ledgers = self.ledgers as u64;
        let from_ledger = rng.below(ledgers);
        let to_ledger = (from_ledger + 1 + rng.below(ledgers - 1)) % ledgers;
        Transfer {
            id,
            from: (from_ledger as u8, rng.below(self.accounts)),
            to: (to_ledger as u8, rng.below(self.accounts)),
            amount: 1 + rng.below(self.amount_max),
        }
    }
}

/// The log configuration of the tests: the default backend, small segments.
pub fn test_wal() -> WalConfig {
    WalConfig {
        segment_bytes: TEST_SEGMENT_BYTES,
        record_bytes_max: TEST_RECORD_BYTES_MAX,
        ..WalConfig::default()
    }
}

/// Timeouts short enough that recovery after a crash finishes in a fraction of a
/// second, long enough that a sync on the loaded test machine rarely trips them (a
/// tripped vote timeout only aborts, which the checker accepts).
pub fn short_timeouts() -> Timeouts {
    Timeouts {
        vote_us: 500_000,
        retransmit_us: 20_000,
        pending_us: 60_000,
        recovery_stagger_us: 20_000,
        collect_us: 20_000,
        ..Timeouts::default()
    }
}

/// One transfer as a client submitted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub id: u64,
    pub from: (u8, u64),
    pub to: (u8, u64),
    pub amount: u64,
}

impl Transfer {
    pub fn txn(&self) -> Txn {
        Txn::transfer(TxnId(self.id), self.from, self.to, self.amount)
            .expect("two distinct ledgers and a small amount")
    }

    /// The two postings a commit of this transfer makes, as `(ledger, account, delta)`.
    fn expected_postings(&self) -> [(usize, u64, i64); 2] {
        let amount = self.amount as i64;
        let mut postings = [
            (self.from.0 as usize, self.from.1, -amount),
            (self.to.0 as usize, self.to.1, amount),
        ];
        postings.sort_unstable();
        postings
    }
}

/// What a client was told about a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    Committed,
    Aborted,
}

impl Acked {
    /// The acknowledgement an outcome is; `InDoubt` is none, and no test without
    /// injected failures may see it.
    pub fn of(outcome: Outcome) -> Acked {
        match outcome {
            Outcome::Committed => Acked::Committed,
            Outcome::Aborted(_) => Acked::Aborted,
            Outcome::InDoubt => panic!("an outcome is in doubt, yet no failure was injected"),
        }
    }
}

/// Submits `txn`, retrying while the engine answers `Busy`.
pub fn submit_retrying(engine: &Engine, txn: Txn) -> tricommit_engine::Ticket {
    let mut txn = txn;
    loop {
        match engine.submit(txn) {
            Ok(ticket) => return ticket,
            Err(busy) => {
                txn = busy.into_inner();
                std::thread::yield_now();
            }
        }
    }
}

/// Submits `txns` with `submit_many`, retrying the rest of the group while the engine
/// answers `Busy`; returns one ticket per transaction, in order.
pub fn submit_many_retrying(engine: &Engine, txns: &[Txn]) -> Vec<tricommit_engine::Ticket> {
    let mut tickets = Vec::with_capacity(txns.len());
    while tickets.len() < txns.len() {
        let before = tickets.len();
        match engine.submit_many(&txns[before..], &mut tickets) {
            Ok(()) => assert_eq!(tickets.len(), txns.len(), "a ticket per transaction"),
            Err(busy) => {
                assert_eq!(before + busy.into_inner(), tickets.len(), "Busy counts");
                std::thread::yield_now();
            }
        }
    }
    tickets
}

/// Like [`run_clients`], but each thread submits its transfers in groups of `group`
/// with `submit_many`, and waits for a group's outcomes before the group after next.
pub fn run_group_clients(
    engine: &Engine,
    bank: &Bank,
    clients: Clients,
    group: u64,
) -> Vec<(Transfer, Acked)> {
    spawn_clients(clients, |id_first, seed| {
        let mut rng = SplitMix(seed);
        let mut previous: Vec<(Transfer, tricommit_engine::Ticket)> = Vec::new();
        let mut acked = Vec::new();
        let ids: Vec<u64> = (id_first..id_first + clients.txns_per_thread).collect();
        for chunk in ids.chunks(group as usize) {
            let transfers: Vec<Transfer> = chunk
                .iter()
                .map(|&id| bank.transfer(&mut rng, id))
                .collect();
            let txns: Vec<Txn> = transfers.iter().map(Transfer::txn).collect();
            let tickets = submit_many_retrying(engine, &txns);
            let done =
                std::mem::replace(&mut previous, transfers.into_iter().zip(tickets).collect());
            acked.extend(
                done.into_iter()
                    .map(|(transfer, ticket)| (transfer, Acked::of(ticket.wait()))),
            );
        }
        acked.extend(
            previous
                .into_iter()
                .map(|(transfer, ticket)| (transfer, Acked::of(ticket.wait()))),
        );
        acked
    })
}

/// How a run of client threads submits: `threads` threads of `txns_per_thread`
/// transfers each, with ids from `id_first` on (disjoint per thread).
#[derive(Clone, Copy, Debug)]
pub struct Clients {
    pub threads: u64,
    pub txns_per_thread: u64,
    pub id_first: u64,
    pub seed: u64,
}

/// Runs the clients against `engine` and returns every acknowledged outcome.
pub fn run_clients(engine: &Engine, bank: &Bank, clients: Clients) -> Vec<(Transfer, Acked)> {
    spawn_clients(clients, |id_first, seed| {
        run_client(engine, bank, id_first, clients.txns_per_thread, seed)
    })
}

/// Runs `client(id_first, seed)` on `clients.threads` threads, with disjoint ids and
/// seeds, and gathers what they acknowledged.
fn spawn_clients(
    clients: Clients,
    client: impl Fn(u64, u64) -> Vec<(Transfer, Acked)> + Sync,
) -> Vec<(Transfer, Acked)> {
    let client = &client;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients.threads)
            .map(|thread| {
                let id_first = clients.id_first + thread * clients.txns_per_thread;
                let seed = clients.seed ^ (thread + 1).wrapping_mul(0x5851_F42D_4C95_7F2D);
                scope.spawn(move || client(id_first, seed))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("client thread"))
            .collect()
    })
}

fn run_client(
    engine: &Engine,
    bank: &Bank,
    id_first: u64,
    txns: u64,
    seed: u64,
) -> Vec<(Transfer, Acked)> {
    let mut rng = SplitMix(seed);
    let mut window = std::collections::VecDeque::with_capacity(CLIENT_WINDOW_TICKETS);
    let mut acked = Vec::with_capacity(txns as usize);
    for id in id_first..id_first + txns {
        if window.len() == CLIENT_WINDOW_TICKETS {
            let (transfer, ticket): (Transfer, tricommit_engine::Ticket) =
                window.pop_front().expect("the window is full");
            acked.push((transfer, Acked::of(ticket.wait())));
        }
        let transfer = bank.transfer(&mut rng, id);
        window.push_back((transfer, submit_retrying(engine, transfer.txn())));
    }
    for (transfer, ticket) in window {
        acked.push((transfer, Acked::of(ticket.wait())));
    }
    acked
}

/// What the checker found, for tests that want to assert more.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// Transactions with postings in the logs (acknowledged or not).
    pub applied_txns: usize,
    pub acked_committed: usize,
    pub acked_aborted: usize,
    /// Legs of acknowledged commits found posted, and legs a checkpoint compacted away
    /// (their ledger's balances still hold them, but no posting shows them).
    pub legs_verified: usize,
    pub legs_compacted: usize,
}

/// What the read-only replay found: every posting still in the logs, grouped by
/// transaction as `(ledger, account, delta)`, which ledgers' logs start at a checkpoint
/// (their postings before it are compacted away), and every ledger's balances.
struct Replayed {
    by_txn: HashMap<u64, Vec<(usize, u64, i64)>>,
    checkpointed: Vec<bool>,
    balances: Vec<Vec<i64>>,
}

/// Every posting of every ledger of `dir`, replayed read-only from the logs (and the
/// snapshots of checkpointed ones), plus the recovered ledgers' checks.
fn replay(dir: &Path, bank: &Bank) -> Replayed {
    let postings: Arc<Mutex<Vec<(usize, Posting)>>> = Arc::default();
    let sink_postings = postings.clone();
    let ledgers = recover_ledgers(dir, move |index| {
        let postings = sink_postings.clone();
        Some(Box::new(move |batch: &[Posting]| {
            let mut postings = postings.lock().expect("posting sink");
            postings.extend(batch.iter().map(|posting| (index, *posting)));
        }))
    })
    .expect("the ledgers recover read-only from their logs");
    assert_eq!(ledgers.len(), bank.ledgers, "every ledger recovers");
    let mut total: i128 = 0;
    let mut checkpointed = vec![false; bank.ledgers];
    let mut balances = vec![Vec::new(); bank.ledgers];
    for recovered in &ledgers {
        checkpointed[recovered.index] = recovered.checkpoint.is_some();
        balances[recovered.index] = recovered.ledger().balances().collect();
        let ledger = recovered.ledger();
        ledger
            .check_invariants()
            .expect("recovered ledger keeps its invariants");
        let below: Vec<u64> = ledger.accounts_below_limit().collect();
        assert!(
            below.is_empty(),
            "ledger {}: accounts below their limit: {below:?}",
            recovered.index
        );
        assert_eq!(
            ledger.reservations_len(),
            0,
            "ledger {}: a clean shutdown left reservations held (undecided transactions)",
            recovered.index
        );
        total += ledger.total_balance();
    }
    assert_eq!(total, bank.total(), "the bank's total changed");
    // The ledgers own the sinks, which hold the other references.
    drop(ledgers);
    let postings = Arc::try_unwrap(postings)
        .expect("recovery dropped its sinks")
        .into_inner()
        .expect("posting sink");
    let mut by_txn: HashMap<u64, Vec<(usize, u64, i64)>> = HashMap::new();
    for (ledger, posting) in postings {
        by_txn
            .entry(posting.txn.0)
            .or_default()
            .push((ledger, posting.account, posting.delta));
    }
    Replayed {
        by_txn,
        checkpointed,
        balances,
    }
}

/// Checks the bank invariant on the logs of `dir` after a clean shutdown: the total is
/// unchanged, no account is below its limit, nothing is left undecided, every applied
/// transaction is applied on both of its ledgers with amounts that cancel, every
/// acknowledged commit is applied exactly as submitted, and no acknowledged abort is
/// applied anywhere.
///
/// A ledger whose log starts at a checkpoint has dropped its postings before it, so
/// for such a ledger a missing posting is not evidence: a transaction may then show
/// one leg only, and an acknowledged commit's leg there need not be visible. What is
/// visible must still be right (never twice on a ledger, never a leg of an
/// acknowledged abort, the submitted delta for an acknowledged commit), and the
/// balances, which the snapshot carries, keep the total and the limits.
pub fn check_bank(dir: &Path, bank: &Bank, acked: &[(Transfer, Acked)]) -> Verdict {
    let Replayed {
        by_txn,
        checkpointed,
        ..
    } = replay(dir, bank);
    let any_checkpointed = checkpointed.iter().any(|&flag| flag);
    for (txn, postings) in &by_txn {
        let ledgers: Vec<usize> = postings.iter().map(|posting| posting.0).collect();
        let sum: i64 = postings.iter().map(|posting| posting.2).sum();
        let whole = postings.len() == 2 && ledgers[0] != ledgers[1] && sum == 0;
        let one_leg_compacted = postings.len() == 1 && any_checkpointed;
        assert!(
            whole || one_leg_compacted,
            "transaction {txn} is applied partially or twice: {postings:?}"
        );
    }
    let mut verdict = Verdict {
        applied_txns: by_txn.len(),
        ..Verdict::default()
    };
    for (transfer, outcome) in acked {
        let found = by_txn.get(&transfer.id);
        match outcome {
            Acked::Committed => {
                verdict.acked_committed += 1;
                let mut found = found.cloned().unwrap_or_default();
                found.sort_unstable();
                // The legs a log still holds (a checkpoint may have dropped the others).
                let expected: Vec<(usize, u64, i64)> = transfer
                    .expected_postings()
                    .into_iter()
                    .filter(|leg| {
                        !checkpointed[leg.0] || found.iter().any(|posting| posting.0 == leg.0)
                    })
                    .collect();
                verdict.legs_verified += expected.len();
                verdict.legs_compacted += 2 - expected.len();
                assert_eq!(
                    found, expected,
                    "acknowledged commit {transfer:?} is not applied, or with other postings"
                );
            }
            Acked::Aborted => {
                verdict.acked_aborted += 1;
                assert!(
                    found.is_none(),
                    "acknowledged abort {transfer:?} is applied: {found:?}"
                );
            }
        }
    }
    verdict
}

/// Every ledger's balances as recovered read-only from the logs of `dir` (snapshots
/// included), after the checks `check_bank` makes on the recovered ledgers.
pub fn recovered_balances(dir: &Path, bank: &Bank) -> Vec<Vec<i64>> {
    replay(dir, bank).balances
}
