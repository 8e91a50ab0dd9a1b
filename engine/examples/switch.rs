//! A payment switch that embeds tricommit.
//!
//! Every card payment touches three participants and must land on all of them or on
//! none: it debits the cardholder at the issuer's ledger, credits the merchant at the
//! acquirer's ledger (less the fee), and books the fee at a fee ledger. The two ledgers
//! are the engine's built-in ones; the fee ledger is this program's own
//! [`ResourceManager`], which also enforces a business rule (blocked merchants).
//!
//! Tellers submit payments from several threads and wait for each outcome blocking
//! (`Ticket::wait`); one more thread awaits its outcomes as `Future`s, driven by the
//! small `block_on` below (no async runtime needed). At the end the program prints a
//! summary and checks that no cent was created or lost.
//!
//! ```sh
//! cargo run --release -p tricommit-engine --example switch
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use tricommit_engine::ledger::{LedgerConfig, LedgerOp};
use tricommit_engine::proto::{Op, Reason, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};
use tricommit_engine::runtime::Shutdown;
use tricommit_engine::{Engine, EngineConfig, Outcome, ParticipantSpec, Priority, Ticket, Txn};
use tricommit_wal::WalConfig;

/// Participant indexes, in the order of `EngineConfig::participants`.
const ISSUER: u8 = 0;
const ACQUIRER: u8 = 1;
const FEES: u8 = 2;

const CARDHOLDERS: u64 = 1_000;
const MERCHANTS: u64 = 50;
/// Every cardholder starts with 100.00 (amounts are in cents).
const CARDHOLDER_BALANCE_CENTS: i64 = 10_000;
/// Payments are 1..=PAYMENT_CENTS_MAX cents.
const PAYMENT_CENTS_MAX: u64 = 1_000;
/// The fee: 1.5% of the payment, at least one cent.
const FEE_BASIS_POINTS: u64 = 150;
/// Merchants the risk team blocked: the fee ledger refuses their payments.
const BLOCKED_MERCHANT_EVERY: u64 = 17;

/// Threads that submit and wait blocking, and the payments each makes.
const TELLERS: u64 = 3;
const PAYMENTS_PER_TELLER: u64 = 1_000;
/// The thread that awaits futures, its payments, and how many it keeps in flight.
const ASYNC_PAYMENTS: u64 = 4_000;
const ASYNC_WINDOW_PAYMENTS: usize = 500;
/// Small log segments: a fresh directory is ready in milliseconds, not after
/// zero-filling the default 64 MiB per site.
const SEGMENT_BYTES: u64 = 8 << 20;

/// The fee ledger's vote when the merchant is blocked. Codes from 256 up belong to
/// applications (below are tricommit's).
const REASON_MERCHANT_BLOCKED: Reason = Reason(300);

/// A fee operation: `merchant u64 | fee_cents u64 | 8 reserved zero bytes`, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FeeOp {
    merchant: u64,
    fee_cents: u64,
}

impl FeeOp {
    fn encode(&self) -> [u8; OP_PAYLOAD_BYTES] {
        let mut payload = [0; OP_PAYLOAD_BYTES];
        payload[0..8].copy_from_slice(&self.merchant.to_le_bytes());
        payload[8..16].copy_from_slice(&self.fee_cents.to_le_bytes());
        payload
    }

    fn decode(payload: &[u8; OP_PAYLOAD_BYTES]) -> Option<FeeOp> {
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&payload[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        if word(16) != 0 {
            return None;
        }
        Some(FeeOp {
            merchant: word(0),
            fee_cents: word(8),
        })
    }
}

/// What the fee ledger has booked; shared with `main` for the summary.
#[derive(Default)]
struct FeeBook {
    fees_cents: AtomicU64,
    payments: AtomicU64,
}

/// The custom resource manager: holds a payment's fee on prepare, books it on commit,
/// drops it on abort. Deterministic, as the engine requires: after a crash the engine
/// rebuilds it by replaying the same calls from its log.
struct FeeLedger {
    held: HashMap<TxnId, FeeOp>,
    book: Arc<FeeBook>,
}

impl FeeLedger {
    fn vote(&mut self, op: &Op) -> Vote {
        let Some(fee) = FeeOp::decode(&op.payload) else {
            return Vote::No(Reason::MALFORMED);
        };
        if fee.merchant >= MERCHANTS {
            return Vote::No(Reason::UNKNOWN_ACCOUNT);
        }
        if fee.merchant % BLOCKED_MERCHANT_EVERY == 0 {
            return Vote::No(REASON_MERCHANT_BLOCKED);
        }
        if self.held.insert(op.txn, fee).is_some() {
            return Vote::No(Reason::DUPLICATE);
        }
        Vote::Yes
    }
}

impl ResourceManager for FeeLedger {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        for op in ops {
            let vote = self.vote(op);
            votes.push(vote);
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        for txn in txns {
            if let Some(fee) = self.held.remove(txn) {
                self.book
                    .fees_cents
                    .fetch_add(fee.fee_cents, Ordering::Relaxed);
                self.book.payments.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn abort(&mut self, txns: &[TxnId]) {
        for txn in txns {
            self.held.remove(txn);
        }
    }
}

/// One card payment.
#[derive(Clone, Copy)]
struct Payment {
    id: u64,
    cardholder: u64,
    merchant: u64,
    amount_cents: u64,
}

impl Payment {
    /// The payment with id `id`, its details spread deterministically from the id.
    fn numbered(id: u64) -> Payment {
        let mix = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Payment {
            id,
            cardholder: mix % CARDHOLDERS,
            merchant: (mix >> 20) % MERCHANTS,
            amount_cents: 1 + (mix >> 40) % PAYMENT_CENTS_MAX,
        }
    }

    fn fee_cents(&self) -> u64 {
        (self.amount_cents * FEE_BASIS_POINTS / 10_000).max(1)
    }

    /// The transaction: three legs, one per participant.
    fn txn(&self) -> Txn {
        let fee = self.fee_cents();
        let debit = LedgerOp::debit(self.cardholder, self.amount_cents).expect("small amount");
        let credit = LedgerOp::credit(self.merchant, self.amount_cents - fee).expect("small");
        let booking = FeeOp {
            merchant: self.merchant,
            fee_cents: fee,
        };
        Txn::new(TxnId(self.id), Priority::Normal)
            .with_leg(ISSUER, debit.encode())
            .and_then(|txn| txn.with_leg(ACQUIRER, credit.encode()))
            .and_then(|txn| txn.with_leg(FEES, booking.encode()))
            .expect("three distinct participants")
    }
}

/// Submits a payment, retrying while the engine sheds load with `Busy`.
fn submit(engine: &Engine, payment: &Payment) -> Ticket {
    let mut txn = payment.txn();
    loop {
        match engine.submit(txn) {
            Ok(ticket) => return ticket,
            Err(busy) => {
                txn = busy.into_inner();
                thread::yield_now();
            }
        }
    }
}

/// Counts of outcomes.
#[derive(Default, Clone, Copy)]
struct Tally {
    committed: u64,
    aborted: u64,
    in_doubt: u64,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Committed => self.committed += 1,
            Outcome::Aborted(_) => self.aborted += 1,
            Outcome::InDoubt => self.in_doubt += 1,
        }
    }

    fn merge(self, other: Tally) -> Tally {
        Tally {
            committed: self.committed + other.committed,
            aborted: self.aborted + other.aborted,
            in_doubt: self.in_doubt + other.in_doubt,
        }
    }
}

/// A teller: one payment at a time, waiting for each outcome (blocking).
fn teller(engine: &Engine, first_id: u64) -> Tally {
    let mut tally = Tally::default();
    for id in first_id..first_id + PAYMENTS_PER_TELLER {
        tally.add(submit(engine, &Payment::numbered(id)).wait());
    }
    tally
}

/// Wakes the thread that runs `block_on`.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread: poll, park until woken, poll again.
/// Enough for tickets, which wake their waker when the engine completes them.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            // A wake between the poll and the park leaves the token set: no hang.
            Poll::Pending => thread::park(),
        }
    }
}

/// The async client: submits a window of payments, then awaits their tickets.
fn async_client(engine: &Engine, first_id: u64) -> Tally {
    let mut tally = Tally::default();
    let ids: Vec<u64> = (first_id..first_id + ASYNC_PAYMENTS).collect();
    for window in ids.chunks(ASYNC_WINDOW_PAYMENTS) {
        let tickets: Vec<Ticket> = window
            .iter()
            .map(|&id| submit(engine, &Payment::numbered(id)))
            .collect();
        block_on(async {
            for ticket in tickets {
                tally.add(ticket.await);
            }
        });
    }
    tally
}

fn config(dir: &std::path::Path, book: &Arc<FeeBook>) -> EngineConfig {
    let mut issuer = LedgerConfig::new(CARDHOLDERS);
    issuer.balance_initial = CARDHOLDER_BALANCE_CENTS;
    let acquirer = LedgerConfig::new(MERCHANTS);
    let book = book.clone();
    let fees = ParticipantSpec::Custom {
        name: "fees".into(),
        // The engine calls the factory once per open and then replays the fee ledger's
        // log into the new instance, so the book starts again from zero.
        factory: Arc::new(move || {
            book.fees_cents.store(0, Ordering::Relaxed);
            book.payments.store(0, Ordering::Relaxed);
            Box::new(FeeLedger {
                held: HashMap::new(),
                book: book.clone(),
            })
        }),
    };
    let mut config = EngineConfig::ledgers(dir, 0, 0, 0);
    config.participants = vec![
        ParticipantSpec::Ledger(issuer),
        ParticipantSpec::Ledger(acquirer),
        fees,
    ];
    config.wal = WalConfig {
        segment_bytes: SEGMENT_BYTES,
        ..WalConfig::default()
    };
    config
}

/// The money each built-in ledger holds at the end.
fn ledger_totals(shutdown: &Shutdown) -> Vec<i128> {
    shutdown
        .participants
        .iter()
        .filter_map(|participant| participant.rm().ledger())
        .map(|ledger| ledger.total_balance())
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let book = Arc::new(FeeBook::default());
    let engine = Engine::open(config(dir.path(), &book))?;
    let started = Instant::now();
    let (blocking, futures) = thread::scope(|scope| {
        let engine = &engine;
        let tellers: Vec<_> = (0..TELLERS)
            .map(|teller_index| {
                scope.spawn(move || teller(engine, 1 + teller_index * PAYMENTS_PER_TELLER))
            })
            .collect();
        let async_first_id = 1 + TELLERS * PAYMENTS_PER_TELLER;
        let futures = scope.spawn(move || async_client(engine, async_first_id));
        let blocking = tellers
            .into_iter()
            .map(|teller| teller.join().expect("teller"))
            .fold(Tally::default(), Tally::merge);
        (blocking, futures.join().expect("async client"))
    });
    let elapsed = started.elapsed();
    let shutdown = engine.shutdown()?;
    let all = blocking.merge(futures);
    let totals = ledger_totals(&shutdown);
    let issuer_start = i128::from(CARDHOLDER_BALANCE_CENTS) * i128::from(CARDHOLDERS);
    let fees = i128::from(book.fees_cents.load(Ordering::Relaxed));
    let conserved = totals[0] + totals[1] + fees == issuer_start;
    let payments = all.committed + all.aborted + all.in_doubt;
    println!(
        "payments        {payments} in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        payments as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  blocking      {} committed, {} aborted",
        blocking.committed, blocking.aborted
    );
    println!(
        "  futures       {} committed, {} aborted",
        futures.committed, futures.aborted
    );
    println!("  in doubt      {}", all.in_doubt);
    println!(
        "issuer          {:>12} cents (started with {issuer_start})",
        totals[0]
    );
    println!("acquirer        {:>12} cents", totals[1]);
    println!(
        "fees            {fees:>12} cents over {} payments",
        book.payments.load(Ordering::Relaxed)
    );
    println!("money conserved {}", if conserved { "yes" } else { "NO" });
    if !conserved || all.in_doubt > 0 || book.payments.load(Ordering::Relaxed) != all.committed {
        return Err("the switch's books do not balance".into());
    }
    Ok(())
}
