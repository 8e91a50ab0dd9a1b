//! The client threads: generate transfers, submit them, await outcomes, measure.
//!
//! Closed loop (`rate == 0`): each client keeps up to `window` transactions outstanding
//! and submits the next as soon as one completes. Open loop (`rate > 0`): each client
//! sends on a fixed schedule, and latency is measured from the *intended* send time, so
//! that a stalled engine shows up as latency instead of as fewer samples (coordinated
//! omission).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tricommit_engine::client::{RemoteClient, Submit};
use tricommit_engine::ledger::LedgerOp;
use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::{EngineCounters, Shutdown, TXN_LEGS_MAX};
use tricommit_engine::{
    AbortReason, Busy, Engine, EngineConfig, EngineError, Outcome, Priority, Ticket, Txn,
};

/// Upper bound of every latency histogram; slower outcomes are clamped into it.
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant figures of the latency histograms.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How long a client waits for its oldest ticket before it checks whether to stop.
const TICKET_WAIT_MS: u64 = 50;
/// Most transactions a closed-loop client submits in one `submit_many`: what it may
/// send after a run of outcomes, up to this (TigerBeetle's clients send up to 8,189
/// transfers per request; smaller groups keep the first of a group from waiting long
/// on the last to be built).
const SUBMIT_GROUP_TXNS_MAX: usize = 1024;
/// Bits of a transaction id taken by the client's sequence number.
const CLIENT_SEQUENCE_BITS: u32 = 40;

/// A fresh latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("static bounds are valid")
}

/// How transfers are generated.
#[derive(Clone, Debug)]
pub struct Workload {
    pub ledgers: u8,
    pub amount_max: u64,
    /// Share of transactions sent with `Priority::High`, in percent.
    pub high_priority_percent: u8,
    /// Most ledgers one transaction touches: 2 is a plain transfer; more is a split
    /// payment (one debit, credits shared among the other ledgers).
    pub ledgers_per_txn_max: u8,
    /// Keep the id of every acknowledged commit (the failure scenario checks them all).
    pub record_committed: bool,
    /// ORed into every id: 0 in-process (a fresh engine each run); a random run prefix
    /// against a cluster, whose nodes remember the ids of earlier runs (a repeated id
    /// would be answered with the earlier outcome, not run again).
    pub id_base: u64,
    /// Keep the transactions whose outcome the client never learned, to resubmit them
    /// at the end (a cluster run's bank check); their history lines are written once
    /// the outcome is known (`resolve_unknown`). Off: they are written `unknown` at once.
    pub keep_unknown: bool,
}

/// Bits of an id below the run prefix of `Workload::id_base` (client index and sequence).
pub const RUN_PREFIX_SHIFT: u32 = CLIENT_SEQUENCE_BITS + 8;

/// A payment as the history file records it: one debit, up to three credits.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    id: u64,
    from: (u8, u64),
    to: [(u8, u64, u64); TXN_LEGS_MAX - 1],
    credits: u8,
    priority: Priority,
}

/// splitmix64: small, fast, and good enough to pick accounts.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks accounts: uniform, or Zipf-distributed through a cumulative table.
pub struct AccountPicker {
    accounts: u64,
    cumulative: Option<Arc<Vec<f64>>>,
}

impl AccountPicker {
    /// Builds the table once (it is shared by every client).
    pub fn new(accounts: u64, skew: f64) -> AccountPicker {
        if skew <= 0.0 {
            return AccountPicker {
                accounts,
                cumulative: None,
            };
        }
        let mut cumulative = Vec::with_capacity(accounts as usize);
        let mut total = 0.0;
        for rank in 1..=accounts {
            total += 1.0 / (rank as f64).powf(skew);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        AccountPicker {
            accounts,
            cumulative: Some(Arc::new(cumulative)),
        }
    }

    fn share(&self) -> AccountPicker {
        AccountPicker {
            accounts: self.accounts,
            cumulative: self.cumulative.clone(),
        }
    }

    fn pick(&self, rng: &mut Rng) -> u64 {
        match &self.cumulative {
            None => rng.below(self.accounts),
            Some(table) => {
                let target = rng.unit();
                table
                    .partition_point(|&value| value < target)
                    .min(table.len() - 1) as u64
            }
        }
    }
}

/// The committed effects of a run, per ledger and account: the sum of the amounts of
/// every transfer acknowledged committed (a cluster run's bank check compares them with
/// the balances the ledgers moved by).
pub struct Effects {
    ledgers: Vec<Vec<AtomicI64>>,
}

impl Effects {
    /// Zero effects for ledgers of these account counts.
    pub fn new(accounts: Vec<usize>) -> Effects {
        Effects {
            ledgers: accounts
                .into_iter()
                .map(|count| (0..count).map(|_| AtomicI64::new(0)).collect())
                .collect(),
        }
    }

    /// Adds `delta` to one account's effect. An account outside the ledgers is not
    /// recorded: the comparison then shows its ledger's balance as moved.
    pub fn add(&self, ledger: usize, account: usize, delta: i64) {
        if let Some(effect) = self
            .ledgers
            .get(ledger)
            .and_then(|accounts| accounts.get(account))
        {
            effect.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// One account's effect.
    pub fn get(&self, ledger: usize, account: usize) -> i128 {
        self.ledgers
            .get(ledger)
            .and_then(|accounts| accounts.get(account))
            .map_or(0, |effect| i128::from(effect.load(Ordering::Relaxed)))
    }

    /// Records a committed transfer: its debit and each credit.
    fn apply(&self, transfer: &Transfer) {
        let credits = &transfer.to[..transfer.credits as usize];
        let total: u64 = credits.iter().map(|credit| credit.2).sum();
        // Amounts are bounded by --amount-max (at most 1e9), so they fit an i64.
        self.add(
            transfer.from.0 as usize,
            transfer.from.1 as usize,
            -(total as i64),
        );
        for &(ledger, account, amount) in credits {
            self.add(ledger as usize, account as usize, amount as i64);
        }
    }
}

/// A transaction whose outcome the client never learned (a lost connection).
pub struct Unknown {
    transfer: Transfer,
}

/// What resubmitting the unknown outcomes learned.
pub struct Resolution {
    /// History lines: the learned outcome of each, or `unknown` for those still unknown.
    pub lines: Vec<String>,
    pub committed: u64,
    pub aborted: u64,
    pub still_unknown: u64,
}

/// Pause between two rounds of resubmission, and after a failed connection.
const RESUBMIT_PAUSE_MS: u64 = 100;

/// Resubmits each unknown transaction with its id and legs until its outcome is known
/// or `wait` passes: the cluster's id dedup answers a known id with its first outcome,
/// and an id it never saw is run now. A committed one is added to `effects`. What the
/// client cannot tell apart from "not run" (never sent, refused as a duplicate of an
/// id still reserved somewhere, a lost connection) is asked again in the next round.
pub fn resolve_unknown(
    connect: impl Fn() -> Result<RemoteClient, String>,
    unknown: Vec<Unknown>,
    effects: &Effects,
    wait: Duration,
) -> Resolution {
    let deadline = Instant::now() + wait;
    let mut resolution = Resolution {
        lines: Vec::new(),
        committed: 0,
        aborted: 0,
        still_unknown: 0,
    };
    let mut left = unknown;
    let mut client: Option<RemoteClient> = None;
    while !left.is_empty() && Instant::now() < deadline {
        if client.as_ref().is_none_or(RemoteClient::is_closed) {
            client = connect().ok();
        }
        let Some(connected) = client.as_ref() else {
            std::thread::sleep(Duration::from_millis(RESUBMIT_PAUSE_MS));
            continue;
        };
        let mut sent = Vec::with_capacity(left.len());
        for entry in left.drain(..) {
            let ticket = submit_until(connected, build_txn(&entry.transfer), deadline);
            sent.push((entry, ticket));
        }
        for (entry, ticket) in sent {
            let left_time = deadline.saturating_duration_since(Instant::now());
            let outcome = ticket.and_then(|ticket| ticket.wait_timeout(left_time).ok());
            let word = match outcome {
                Some(Outcome::Committed) => {
                    effects.apply(&entry.transfer);
                    resolution.committed += 1;
                    "committed"
                }
                Some(Outcome::Aborted(AbortReason::Shutdown))
                | Some(Outcome::Aborted(AbortReason::Rejected(
                    tricommit_engine::proto::Reason::DUPLICATE,
                )))
                | Some(Outcome::InDoubt)
                | None => {
                    left.push(entry);
                    continue;
                }
                Some(Outcome::Aborted(_)) => {
                    resolution.aborted += 1;
                    "aborted"
                }
            };
            resolution
                .lines
                .extend(history_lines(&entry.transfer, word));
        }
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(RESUBMIT_PAUSE_MS));
        }
    }
    for entry in left {
        resolution.still_unknown += 1;
        resolution
            .lines
            .extend(history_lines(&entry.transfer, "unknown"));
    }
    resolution
}

/// Submits `txn`, waiting out `Busy` (in short sleeps) until `deadline`.
fn submit_until(client: &RemoteClient, txn: Txn, deadline: Instant) -> Option<Ticket> {
    let mut txn = txn;
    loop {
        match client.submit(txn) {
            Ok(ticket) => return Some(ticket),
            Err(_) if Instant::now() >= deadline => return None,
            Err(busy) => {
                txn = busy.into_inner();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The history lines of a payment: one per credit, so a split payment reads as
/// transfers with one id (DESIGN §5's `id from_ledger from_account to_ledger to_account
/// amount outcome`).
fn history_lines(transfer: &Transfer, word: &str) -> Vec<String> {
    let (from_ledger, from_account) = transfer.from;
    transfer.to[..transfer.credits as usize]
        .iter()
        .map(|&(ledger, account, amount)| {
            let id = transfer.id;
            format!("{id} {from_ledger} {from_account} {ledger} {account} {amount} {word}")
        })
        .collect()
}

/// What every client shares with the main thread.
pub struct Shared {
    /// The engine; replaced (under the write lock) when the failure scenario crashes and
    /// reopens it, so that submissions wait out the outage instead of failing.
    engine: RwLock<Option<Engine>>,
    /// With `--cluster`: the network client that replaces the engine.
    remote: Option<RemoteClient>,
    /// Counters of engines that were crashed, so that totals keep growing.
    counters_base: Mutex<EngineCounters>,
    pub stop: AtomicBool,
    pub busy: AtomicU64,
    /// The target rate over all clients, in transactions per second; 0 = closed loop.
    pub rate_per_s: AtomicU64,
    /// Outcomes completed during the current sampling interval, per client.
    pub interval: Vec<Mutex<Histogram<u64>>>,
    /// A cluster run's committed effects, for its bank check (`None` in-process).
    pub effects: Option<Effects>,
}

/// Adds two counter snapshots.
pub fn add_counters(a: &EngineCounters, b: &EngineCounters) -> EngineCounters {
    EngineCounters {
        committed: a.committed + b.committed,
        aborted: a.aborted + b.aborted,
        batches: a.batches + b.batches,
        batch_txns_total: a.batch_txns_total + b.batch_txns_total,
        syncs: a.syncs + b.syncs,
        records: a.records + b.records,
        frames_dropped: a.frames_dropped + b.frames_dropped,
        checkpoints: a.checkpoints + b.checkpoints,
        checkpoint_pause_us_max: a.checkpoint_pause_us_max.max(b.checkpoint_pause_us_max),
        checkpoint_pause_us_total: a.checkpoint_pause_us_total + b.checkpoint_pause_us_total,
        recycle_pause_us_max: a.recycle_pause_us_max.max(b.recycle_pause_us_max),
        sync_us_max: a.sync_us_max.max(b.sync_us_max),
        // Point-in-time values: the later snapshot's.
        sync_in_flight_us_max: b.sync_in_flight_us_max,
        vote_timeout_us: b.vote_timeout_us,
        drain_bound_hit: a.drain_bound_hit || b.drain_bound_hit,
        drain_us_max: a.drain_us_max.max(b.drain_us_max),
        pins_failed: a.pins_failed + b.pins_failed,
    }
}

impl Shared {
    pub fn new(engine: Engine, clients: usize, rate_per_s: u64) -> Shared {
        Shared {
            engine: RwLock::new(Some(engine)),
            remote: None,
            counters_base: Mutex::new(EngineCounters::default()),
            stop: AtomicBool::new(false),
            busy: AtomicU64::new(0),
            rate_per_s: AtomicU64::new(rate_per_s),
            interval: (0..clients).map(|_| Mutex::new(histogram())).collect(),
            effects: None,
        }
    }

    /// Drives a running cluster through `client` instead of an embedded engine.
    pub fn remote(client: RemoteClient, clients: usize, rate_per_s: u64) -> Shared {
        Shared {
            engine: RwLock::new(None),
            remote: Some(client),
            counters_base: Mutex::new(EngineCounters::default()),
            stop: AtomicBool::new(false),
            busy: AtomicU64::new(0),
            rate_per_s: AtomicU64::new(rate_per_s),
            interval: (0..clients).map(|_| Mutex::new(histogram())).collect(),
            effects: None,
        }
    }

    /// Waits for the cluster's outstanding outcomes and closes the network client.
    pub fn close_remote(&self) {
        if let Some(client) = &self.remote {
            client.close();
        }
    }

    fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        if let Some(client) = &self.remote {
            return client.submit(txn);
        }
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match engine.as_ref() {
            Some(engine) => engine.submit(txn),
            None => Ok(Ticket::ready(Outcome::Aborted(AbortReason::Shutdown))),
        }
    }

    /// Submits a group in one step (see `Engine::submit_many`); on `Busy`, its value is
    /// how many were submitted.
    fn submit_many(&self, txns: &[Txn], tickets: &mut Vec<Ticket>) -> Result<(), Busy<usize>> {
        if let Some(client) = &self.remote {
            return Submit::submit_many(client, txns, tickets);
        }
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match engine.as_ref() {
            Some(engine) => engine.submit_many(txns, tickets),
            None => {
                let shutdown = Outcome::Aborted(AbortReason::Shutdown);
                tickets.extend(txns.iter().map(|_| Ticket::ready(shutdown)));
                Ok(())
            }
        }
    }

    /// Totals over every engine this run used.
    pub fn counters(&self) -> EngineCounters {
        if let Some(client) = &self.remote {
            // A network client sees outcomes, not the nodes' batches and syncs.
            let counters = client.counters();
            return EngineCounters {
                committed: counters.committed.load(Ordering::Relaxed),
                aborted: counters.aborted.load(Ordering::Relaxed),
                ..EngineCounters::default()
            };
        }
        let base = *self
            .counters_base
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match engine.as_ref() {
            Some(engine) => add_counters(&base, &engine.counters()),
            None => base,
        }
    }

    /// Crashes the engine (no shutdown, nothing more synced) and opens it again on the
    /// same data directory. Returns how long the reopening (recovery) took.
    pub fn crash_and_reopen(&self, config: EngineConfig) -> Result<Duration, EngineError> {
        let mut engine = self
            .engine
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut metrics = None;
        if let Some(old) = engine.take() {
            // The reopened engine records into the same metrics, so a scraper's
            // counters keep growing across the crash.
            metrics = Some(old.metrics().clone());
            let mut base = self
                .counters_base
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *base = add_counters(&base, &old.counters());
            old.crash();
        }
        let started = Instant::now();
        *engine = Some(match metrics {
            Some(metrics) => Engine::open_observed(config, metrics)?,
            None => Engine::open(config)?,
        });
        Ok(started.elapsed())
    }

    /// Committed so far by the engine that runs now.
    pub fn current_committed(&self) -> u64 {
        if self.remote.is_some() {
            return self.counters().committed;
        }
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        engine
            .as_ref()
            .map_or(0, |engine| engine.counters().committed)
    }

    /// Shuts the engine down cleanly and hands back its participants.
    pub fn shutdown(&self) -> Result<Shutdown, EngineError> {
        let engine = self
            .engine
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        engine.expect("the engine is shut down once").shutdown()
    }
}

/// What one client measured over the whole run.
pub struct ClientResult {
    pub latency: Histogram<u64>,
    /// Ids of acknowledged commits, when the workload asks to keep them.
    pub committed_ids: Vec<u64>,
    pub committed: u64,
    pub aborted_by_reason: Vec<(String, u64)>,
    pub in_doubt: u64,
    pub history: Option<PathBuf>,
    /// Transactions whose outcome was never learned, kept for resubmission
    /// (`Workload::keep_unknown`).
    pub unknown: Vec<Unknown>,
    /// Transactions built, and how many of them with `Priority::High`.
    pub built: u64,
    pub built_high_priority: u64,
}

/// A client's settings.
pub struct ClientPlan {
    pub index: usize,
    pub clients: usize,
    pub seed: u64,
    pub window: usize,
    pub history: Option<PathBuf>,
}

struct InFlight {
    ticket: Ticket,
    intended: Instant,
    transfer: Transfer,
}

struct Client<'a> {
    shared: &'a Shared,
    plan: ClientPlan,
    workload: &'a Workload,
    picker: AccountPicker,
    rng: Rng,
    next_sequence: u64,
    outstanding: VecDeque<InFlight>,
    result: ClientResult,
    history: Option<BufWriter<File>>,
    /// The closed loop's next group and its tickets: kept to reuse their allocations.
    group_transfers: Vec<Transfer>,
    group_txns: Vec<Txn>,
    group_tickets: Vec<Ticket>,
}

/// Runs one client until `shared.stop`, then waits for what it has outstanding.
pub fn run_client(
    shared: &Shared,
    workload: &Workload,
    picker: &AccountPicker,
    plan: ClientPlan,
) -> std::io::Result<ClientResult> {
    let history = match &plan.history {
        Some(path) => Some(BufWriter::new(File::create(path)?)),
        None => None,
    };
    let mut client = Client {
        shared,
        rng: Rng::new(plan.seed),
        result: ClientResult {
            latency: histogram(),
            committed_ids: Vec::new(),
            committed: 0,
            aborted_by_reason: Vec::new(),
            in_doubt: 0,
            history: plan.history.clone(),
            unknown: Vec::new(),
            built: 0,
            built_high_priority: 0,
        },
        plan,
        workload,
        picker: picker.share(),
        next_sequence: 0,
        outstanding: VecDeque::new(),
        history,
        group_transfers: Vec::new(),
        group_txns: Vec::new(),
        group_tickets: Vec::new(),
    };
    client.run()?;
    if let Some(history) = client.history.as_mut() {
        history.flush()?;
    }
    Ok(client.result)
}

impl Client<'_> {
    fn run(&mut self) -> std::io::Result<()> {
        let mut next_at: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let rate_per_s =
                self.shared.rate_per_s.load(Ordering::Relaxed) as f64 / self.plan.clients as f64;
            let intended = if rate_per_s > 0.0 {
                // Open loop: the schedule advances from the previous *intended* time, so
                // an engine stall makes the client late (and the latency show it), not
                // the schedule slower.
                let at = next_at.unwrap_or_else(Instant::now);
                next_at = Some(at + Duration::from_secs_f64(1.0 / rate_per_s));
                self.reap_until(at)?;
                if self.shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                at
            } else {
                next_at = None;
                // Closed loop: the send follows the reap at once, so the reap's clock
                // reading serves as the send time (one reading per reaped run of
                // outcomes instead of two per transaction), and what the reap made room
                // for goes in one group.
                let mut reaped_at = None;
                while self.outstanding.len() >= self.plan.window {
                    reaped_at = Some(self.reap_oldest()?);
                }
                self.send_group(reaped_at.unwrap_or_else(Instant::now))?;
                continue;
            };
            self.send(intended)?;
        }
        while !self.outstanding.is_empty() {
            self.reap_oldest()?;
        }
        Ok(())
    }

    fn next_transfer(&mut self) -> (Transfer, Txn) {
        let ledgers = self.workload.ledgers as u64;
        let most =
            (self.workload.ledgers_per_txn_max as u64).clamp(2, ledgers.min(TXN_LEGS_MAX as u64));
        let legs = 2 + self.rng.below(most - 1);
        // Distinct ledgers: a random start and a random step coprime with nothing in
        // particular would repeat, so walk consecutive ledgers from a random start.
        let start = self.rng.below(ledgers);
        let ledger_at = |offset: u64| ((start + offset) % ledgers) as u8;
        let credits = (legs - 1) as u8;
        let amount = (1 + self.rng.below(self.workload.amount_max)).max(credits as u64);
        let mut transfer = Transfer {
            id: self.workload.id_base
                | ((self.plan.index as u64) << CLIENT_SEQUENCE_BITS)
                | (self.next_sequence + 1),
            from: (ledger_at(0), self.picker.pick(&mut self.rng)),
            to: [(0, 0, 0); TXN_LEGS_MAX - 1],
            credits,
            priority: Priority::Normal,
        };
        for credit in 0..credits as usize {
            let share =
                amount / credits as u64 + u64::from(credit == 0) * (amount % credits as u64);
            transfer.to[credit] = (
                ledger_at(credit as u64 + 1),
                self.picker.pick(&mut self.rng),
                share,
            );
        }
        self.next_sequence += 1;
        transfer.priority = if self.rng.below(100) < self.workload.high_priority_percent as u64 {
            Priority::High
        } else {
            Priority::Normal
        };
        self.result.built += 1;
        self.result.built_high_priority += u64::from(transfer.priority == Priority::High);
        (transfer, build_txn(&transfer))
    }

    /// Submits one transfer, waiting out `Busy` by reaping outcomes first.
    fn send(&mut self, intended: Instant) -> std::io::Result<()> {
        let (transfer, mut txn) = self.next_transfer();
        loop {
            match self.shared.submit(txn) {
                Ok(ticket) => {
                    self.outstanding.push_back(InFlight {
                        ticket,
                        intended,
                        transfer,
                    });
                    return Ok(());
                }
                Err(busy) => {
                    self.shared.busy.fetch_add(1, Ordering::Relaxed);
                    txn = busy.into_inner();
                    if self.outstanding.is_empty() {
                        std::thread::sleep(Duration::from_micros(100));
                    } else {
                        self.reap_oldest()?;
                    }
                    if self.shared.stop.load(Ordering::Relaxed) && self.outstanding.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Submits as many transfers as the window has room for (at most
    /// `SUBMIT_GROUP_TXNS_MAX`) with `submit_many`, waiting out `Busy` by reaping
    /// outcomes first, as `send` does for one.
    fn send_group(&mut self, intended: Instant) -> std::io::Result<()> {
        let room = self.plan.window.saturating_sub(self.outstanding.len());
        let group = room.clamp(1, SUBMIT_GROUP_TXNS_MAX);
        let mut transfers = std::mem::take(&mut self.group_transfers);
        let mut txns = std::mem::take(&mut self.group_txns);
        let mut tickets = std::mem::take(&mut self.group_tickets);
        transfers.clear();
        txns.clear();
        for _ in 0..group {
            let (transfer, txn) = self.next_transfer();
            transfers.push(transfer);
            txns.push(txn);
        }
        let mut sent = 0;
        let result = loop {
            tickets.clear();
            let answer = self.shared.submit_many(&txns[sent..], &mut tickets);
            let submitted = tickets.len();
            for (ticket, transfer) in tickets.drain(..).zip(&transfers[sent..]) {
                self.outstanding.push_back(InFlight {
                    ticket,
                    intended,
                    transfer: *transfer,
                });
            }
            sent += submitted;
            if answer.is_ok() {
                break Ok(());
            }
            self.shared.busy.fetch_add(1, Ordering::Relaxed);
            if self.outstanding.is_empty() {
                std::thread::sleep(Duration::from_micros(100));
            } else if let Err(error) = self.reap_oldest() {
                break Err(error);
            }
            if self.shared.stop.load(Ordering::Relaxed) && self.outstanding.is_empty() {
                break Ok(());
            }
        };
        self.group_transfers = transfers;
        self.group_txns = txns;
        self.group_tickets = tickets;
        result
    }

    /// Waits for the oldest outstanding outcome, then takes every later one already in.
    /// Returns the instant they were taken at.
    fn reap_oldest(&mut self) -> std::io::Result<Instant> {
        let Some(oldest) = self.outstanding.pop_front() else {
            return Ok(Instant::now());
        };
        let InFlight {
            ticket,
            intended,
            transfer,
        } = oldest;
        let mut ticket = ticket;
        let outcome = loop {
            match ticket.wait_timeout(Duration::from_millis(TICKET_WAIT_MS)) {
                Ok(outcome) => break outcome,
                Err(pending) => ticket = pending,
            }
        };
        let now = Instant::now();
        let shared = self.shared;
        let mut interval = shared.interval[self.plan.index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.record(now, &mut interval, intended, transfer, outcome)?;
        while let Some(front) = self.outstanding.front_mut() {
            let Some(outcome) = front.ticket.try_outcome() else {
                break;
            };
            let InFlight {
                intended, transfer, ..
            } = self.outstanding.pop_front().expect("front exists");
            self.record(now, &mut interval, intended, transfer, outcome)?;
        }
        Ok(now)
    }

    /// Reaps outcomes until `deadline` (open loop: until the next intended send).
    fn reap_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline || self.shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(oldest) = self.outstanding.pop_front() else {
                std::thread::sleep((deadline - now).min(Duration::from_millis(TICKET_WAIT_MS)));
                continue;
            };
            match oldest.ticket.wait_timeout(deadline - now) {
                Ok(outcome) => {
                    let shared = self.shared;
                    let mut interval = shared.interval[self.plan.index]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    self.record(
                        now,
                        &mut interval,
                        oldest.intended,
                        oldest.transfer,
                        outcome,
                    )?;
                }
                Err(ticket) => {
                    self.outstanding.push_front(InFlight { ticket, ..oldest });
                    return Ok(());
                }
            }
        }
    }

    /// Records one outcome taken at `now` into the run's histogram and into
    /// `interval`, this client's histogram of the current progress interval (the
    /// caller holds its lock once for a run of outcomes).
    fn record(
        &mut self,
        now: Instant,
        interval: &mut Histogram<u64>,
        intended: Instant,
        transfer: Transfer,
        outcome: Outcome,
    ) -> std::io::Result<()> {
        let latency_us =
            (now.saturating_duration_since(intended).as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.result
            .latency
            .record(latency_us)
            .expect("clamped into range");
        interval.record(latency_us).expect("clamped into range");
        let word = match outcome {
            Outcome::Committed => {
                self.result.committed += 1;
                if self.workload.record_committed {
                    self.result.committed_ids.push(transfer.id);
                }
                if let Some(effects) = &self.shared.effects {
                    effects.apply(&transfer);
                }
                "committed"
            }
            Outcome::Aborted(reason) => {
                let name = abort_reason_name(reason);
                match self
                    .result
                    .aborted_by_reason
                    .iter_mut()
                    .find(|(known, _)| known == name)
                {
                    Some((_, count)) => *count += 1,
                    None => self.result.aborted_by_reason.push((name.to_owned(), 1)),
                }
                "aborted"
            }
            Outcome::InDoubt if self.workload.keep_unknown => {
                // Resubmitted at the end; its line is written once the outcome is known.
                self.result.in_doubt += 1;
                self.result.unknown.push(Unknown { transfer });
                return Ok(());
            }
            Outcome::InDoubt => {
                self.result.in_doubt += 1;
                // DESIGN §5: an outcome the client never learned.
                "unknown"
            }
        };
        if let Some(history) = self.history.as_mut() {
            for line in history_lines(&transfer, word) {
                writeln!(history, "{line}")?;
            }
        }
        Ok(())
    }
}

/// The engine transaction for a payment: a debit leg and one credit leg per credit.
fn build_txn(transfer: &Transfer) -> Txn {
    let total: u64 = transfer.to[..transfer.credits as usize]
        .iter()
        .map(|credit| credit.2)
        .sum();
    let debit =
        LedgerOp::debit(transfer.from.1, total).expect("amounts are bounded by --amount-max");
    let mut txn = Txn::new(TxnId(transfer.id), transfer.priority)
        .with_leg(transfer.from.0, debit.encode())
        .expect("the first leg always fits");
    for &(ledger, account, amount) in &transfer.to[..transfer.credits as usize] {
        let credit =
            LedgerOp::credit(account, amount).expect("amounts are bounded by --amount-max");
        txn = txn
            .with_leg(ledger, credit.encode())
            .expect("distinct ledgers, at most TXN_LEGS_MAX legs");
    }
    txn
}

/// A stable, readable name for an abort reason.
pub fn abort_reason_name(reason: AbortReason) -> &'static str {
    use tricommit_engine::proto::Reason;
    match reason {
        AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS) => "insufficient-funds",
        AbortReason::Rejected(Reason::UNKNOWN_ACCOUNT) => "unknown-account",
        AbortReason::Rejected(Reason::MALFORMED) => "malformed",
        AbortReason::Rejected(Reason::TIMEOUT) => "timeout",
        AbortReason::Rejected(Reason::UNANSWERED) => "unanswered",
        AbortReason::Rejected(Reason::OVERFLOW) => "overflow",
        AbortReason::Rejected(Reason::DUPLICATE) => "duplicate",
        AbortReason::Rejected(Reason::EXISTS_WITH_DIFFERENT_LEGS) => "exists-with-different-legs",
        AbortReason::Rejected(Reason::UNAVAILABLE) => "unavailable",
        AbortReason::Rejected(Reason::HELD_BY_BATCH) => "held-by-batch",
        AbortReason::Rejected(_) => "rejected-other",
        AbortReason::Terminated => "terminated",
        AbortReason::Shutdown => "shutdown",
    }
}
