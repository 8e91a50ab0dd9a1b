//! `PgLedger`: a participant's resource manager over one PostgreSQL database.
//!
//! Every call is one statement that is its own transaction (autocommit, synchronous
//! commit): PREPARE of a whole batch is one `tc_prepare` call, COMMIT and ABORT one
//! `tc_decide` each. The statements live in schema.sql; docs/pg.md argues the order of
//! writes (the database first, then the participant's log).
//!
//! The ledger keeps in memory which batch holds each reservation (`pending`): the
//! database keeps one row per batch, so a decision names its (batch, transaction)
//! pairs, and a transaction that already holds a reservation is refused as a duplicate
//! before anything is sent. Replay rebuilds the map from the participant's log, and
//! `recovered` releases every reservation the map does not claim, so the map and the
//! database agree from then on.
//!
//! The `ResourceManager` contract has no error path: a shard that cannot be reached
//! after `ATTEMPTS_MAX` tries votes `No(UNAVAILABLE)` on the batch, and a decision that
//! cannot be applied is kept and applied before the next call. A vote whose commit may
//! have landed although the client saw an error is reconciled the same way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, NoTls, Statement};

use super::error::{describe, redact, PgError};
use super::schema;
use crate::ledger::{LedgerOp, OpKind};
use crate::proto::{Op, Reason, ResourceManager, TxnId, Vote};

/// Tries of one call (the first included) before the shard counts as unavailable.
pub const ATTEMPTS_MAX: u32 = 4;
/// Pause after the first failed try; it doubles after each further one, so that one
/// call blocks its site at most about 350 ms plus the connect timeouts.
pub const RETRY_DELAY_MS_FIRST: u64 = 50;
/// The most calls a ledger keeps owed while its shard is down. Past it the oldest owed
/// decision is dropped: the participant's log holds it and replays it at the next open.
/// (The protocol bounds them anyway: while the shard is down every prepare votes no, so
/// only the transactions prepared before the outage can be decided during it.)
pub const OWED_CALLS_MAX: usize = 65_536;
/// How many of the latest batches keep their votes in `tc_batches` once decided, so
/// that a replay after a crash can still compare them with the votes logged.
pub const BATCH_VOTES_KEPT: i64 = 64;
/// Every this many prepared batches, the votes of older decided batches are pruned
/// (one `tc_prune` statement), so `tc_batches` stays about `BATCH_VOTES_KEPT` rows
/// plus the batches still in doubt.
pub const PRUNE_EVERY_BATCHES: i64 = 16;
const _: () = assert!(PRUNE_EVERY_BATCHES > 0 && PRUNE_EVERY_BATCHES <= BATCH_VOTES_KEPT);

/// A vote as schema.sql encodes it: 0 yes, -1 read-only, else the no's reason.
const VOTE_YES: i16 = 0;
const VOTE_READ_ONLY: i16 = -1;

/// What a ledger counts, shared with whoever built it (the load tool, the tests).
#[derive(Debug, Default)]
pub struct PgLedgerStats {
    /// Calls that failed on an open connection, or connection attempts that failed.
    pub connection_losses: AtomicU64,
    /// Connections opened (the first one included).
    pub connects: AtomicU64,
    /// Batches prepared live (not replayed).
    pub batches_prepared: AtomicU64,
    /// Statements sent (each one a PostgreSQL transaction).
    pub statements: AtomicU64,
    /// Transactions voted `No(UNAVAILABLE)` because the shard could not be reached.
    pub unavailable_votes: AtomicU64,
    /// Reservations released at recovery because the participant never logged them.
    pub orphans_released: AtomicU64,
    /// Logged yes votes the shard does not hold at replay (0 unless it lost data).
    pub replay_missing: AtomicU64,
    /// Legs sent to the shard in prepare statements (rows per statement = this divided
    /// by `batches_prepared`).
    pub legs_prepared: AtomicU64,
    /// Decided batches whose votes were pruned from `tc_batches`.
    pub batches_pruned: AtomicU64,
}

/// A call the shard still owes: applied, in order, before any later call.
#[derive(Debug)]
enum Owed {
    Decide {
        batches: Vec<i64>,
        txns: Vec<i64>,
        post: bool,
    },
    Reconcile {
        seq: i64,
        txns: Vec<i64>,
        logged: Vec<i16>,
    },
    ReleaseOrphans {
        keep_batches: Vec<i64>,
        keep_txns: Vec<i64>,
        replayed: i64,
    },
}

/// One open connection and its prepared statements.
struct Conn {
    client: Client,
    prepare: Statement,
    decide: Statement,
    reconcile: Statement,
    release: Statement,
    prune: Statement,
}

impl Conn {
    fn open(config: &postgres::Config, url: &str) -> Result<Conn, String> {
        let mut client = config
            .connect(NoTls)
            .map_err(|error| format!("cannot connect to {}: {}", redact(url), describe(&error)))?;
        // A shard of another schema version would fail every statement: say why, once
        // per connection, instead of a missing function's error.
        schema::inspect(&mut client, url).map_err(|error| error.to_string())?;
        let mut prepare = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|error| format!("{}: {}", redact(url), describe(&error)))
        };
        Ok(Conn {
            prepare: prepare("SELECT tc_prepare($1, $2, $3, $4, $5, $6)")?,
            decide: prepare("SELECT tc_decide($1, $2, $3)")?,
            reconcile: prepare("SELECT tc_reconcile($1, $2, $3)")?,
            release: prepare("SELECT tc_release_orphans($1, $2, $3)")?,
            prune: prepare("SELECT tc_prune($1)")?,
            client,
        })
    }
}

/// The ops of one batch that go to the database, as the arrays `tc_prepare` takes.
#[derive(Default)]
struct BatchArrays {
    /// Index in the batch of each op sent.
    index: Vec<usize>,
    txns: Vec<i64>,
    accounts: Vec<i64>,
    amounts: Vec<i64>,
    kinds: Vec<i16>,
    /// What the earlier legs of the batch on the same account ask of it: earlier debits
    /// for a debit or a check, earlier credits for a credit (saturating).
    prior: Vec<i64>,
    /// Scratch: each transaction sent so far (a repeat in the batch is a duplicate).
    seen: HashSet<i64>,
    /// Scratch: each account's debits and credits so far in the batch.
    running: HashMap<i64, (i64, i64)>,
}

impl BatchArrays {
    fn clear(&mut self) {
        self.index.clear();
        self.txns.clear();
        self.accounts.clear();
        self.amounts.clear();
        self.kinds.clear();
        self.prior.clear();
        self.seen.clear();
        self.running.clear();
    }
}

/// A `ResourceManager` whose balances, reservations and postings live in one
/// PostgreSQL database (one shard; schema.sql).
pub struct PgLedger {
    url: String,
    config: postgres::Config,
    conn: Option<Conn>,
    /// Prepare calls so far, replayed ones included: the participant's log replays them
    /// in the same order, so a batch has the same number in every incarnation.
    batch_seq: i64,
    /// Each transaction holding a reservation (voted yes, not yet decided) and the
    /// batch that holds it. Bounded by the transactions the participant holds
    /// undecided, which the engine bounds (in-flight batches times batch size).
    pending: HashMap<i64, i64>,
    owed: VecDeque<Owed>,
    arrays: BatchArrays,
    stats: Arc<PgLedgerStats>,
    /// Whether the last call failed, so a loss is reported once, not once per retry.
    lost: bool,
}

impl PgLedger {
    /// A ledger for the shard at `url`. It connects on its first call (and again after a
    /// lost connection); use [`schema::check`] first to fail early on a bad URL or a
    /// database without the schema.
    pub fn new(url: &str, stats: Arc<PgLedgerStats>) -> Result<PgLedger, PgError> {
        Ok(PgLedger {
            url: url.to_owned(),
            config: schema::config(url)?,
            conn: None,
            batch_seq: 0,
            pending: HashMap::new(),
            owed: VecDeque::new(),
            arrays: BatchArrays::default(),
            stats,
            lost: false,
        })
    }

    /// The engine's participant for the shard at `url`: `name` names its log directory.
    pub fn spec(
        name: &str,
        url: &str,
        stats: Arc<PgLedgerStats>,
    ) -> Result<crate::ParticipantSpec, PgError> {
        // Parse once here so that the factory cannot fail.
        PgLedger::new(url, Arc::clone(&stats))?;
        let url = url.to_owned();
        Ok(crate::ParticipantSpec::Custom {
            name: name.to_owned(),
            factory: Arc::new(move || {
                let ledger = PgLedger::new(&url, Arc::clone(&stats)).expect("checked in spec");
                Box::new(ledger)
            }),
        })
    }

    /// Runs `call` on a connection, opening one if needed, after every owed call.
    /// Tries `ATTEMPTS_MAX` times with doubling pauses. `Err(sent)`: every try failed;
    /// `sent` is true if some try may have reached the server.
    fn with_retries<T>(
        &mut self,
        mut call: impl FnMut(&mut Conn, &PgLedgerStats) -> Result<T, postgres::Error>,
    ) -> Result<T, bool> {
        let mut sent = false;
        let mut delay_ms = RETRY_DELAY_MS_FIRST;
        for attempt in 0..ATTEMPTS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(delay_ms));
                delay_ms *= 2;
            }
            match self.try_once(&mut call) {
                Ok(value) => {
                    if self.lost {
                        eprintln!("pg ledger {}: connection restored", redact(&self.url));
                        self.lost = false;
                    }
                    return Ok(value);
                }
                Err((reached, detail)) => {
                    sent |= reached;
                    self.stats.connection_losses.fetch_add(1, Ordering::Relaxed);
                    if !self.lost {
                        eprintln!("pg ledger {}: connection lost: {detail}", redact(&self.url));
                        self.lost = true;
                    }
                }
            }
        }
        Err(sent)
    }

    /// One try: connect if needed, settle what is owed, then `call`. On any error the
    /// connection is dropped (the next try opens a fresh one).
    fn try_once<T>(
        &mut self,
        call: &mut impl FnMut(&mut Conn, &PgLedgerStats) -> Result<T, postgres::Error>,
    ) -> Result<T, (bool, String)> {
        if self.conn.is_none() {
            let conn = Conn::open(&self.config, &self.url).map_err(|detail| (false, detail))?;
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("opened above");
        let result =
            settle(conn, &mut self.owed, &self.stats).and_then(|()| call(conn, &self.stats));
        result.map_err(|error| {
            self.conn = None;
            (true, describe(&error))
        })
    }

    fn owe(&mut self, owed: Owed) {
        if self.owed.len() >= OWED_CALLS_MAX {
            // Reconciliations and orphan releases guard the reservations: never drop one.
            if let Some(oldest) = self
                .owed
                .iter()
                .position(|call| matches!(call, Owed::Decide { .. }))
            {
                self.owed.remove(oldest);
            }
        }
        self.owed.push_back(owed);
    }

    /// Fills `arrays` with the ops that go to the database and pushes a local vote for
    /// each op: `No` for one that cannot be decoded or whose transaction already holds
    /// a reservation here (or appears earlier in the batch), a placeholder `Yes`
    /// otherwise. Also works out each sent leg's `prior` (what the earlier legs of the
    /// batch on its account ask), so that the statement needs no window sort.
    fn collect(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        self.arrays.clear();
        for (index, op) in ops.iter().enumerate() {
            let ledger_op = match LedgerOp::decode(&op.payload) {
                Ok(ledger_op) => ledger_op,
                Err(_) => {
                    votes.push(Vote::No(Reason::MALFORMED));
                    continue;
                }
            };
            let Ok(account) = i64::try_from(ledger_op.account) else {
                votes.push(Vote::No(Reason::UNKNOWN_ACCOUNT));
                continue;
            };
            // Ids are u64 on the wire and bigint in the database: a bijective cast.
            let txn = op.txn.0 as i64;
            if self.pending.contains_key(&txn) || !self.arrays.seen.insert(txn) {
                votes.push(Vote::No(Reason::DUPLICATE));
                continue;
            }
            votes.push(Vote::Yes);
            // `amount <= OP_AMOUNT_MAX == i64::MAX` (LedgerOp::decode checks it).
            let amount = ledger_op.amount as i64;
            let (debits, credits) = self.arrays.running.entry(account).or_default();
            let (kind, prior) = match ledger_op.kind {
                OpKind::Debit => {
                    let prior = *debits;
                    *debits = debits.saturating_add(amount);
                    (1, prior)
                }
                OpKind::Credit => {
                    let prior = *credits;
                    *credits = credits.saturating_add(amount);
                    (2, prior)
                }
                OpKind::Check => (3, *debits),
            };
            self.arrays.index.push(index);
            self.arrays.txns.push(txn);
            self.arrays.accounts.push(account);
            self.arrays.amounts.push(amount);
            self.arrays.kinds.push(kind);
            self.arrays.prior.push(prior);
        }
    }

    fn decide(&mut self, txns: &[TxnId], post: bool) {
        // Only transactions holding a reservation here reach the database: the others
        // voted no (or were decided already), and deciding them changes nothing.
        let mut batches = Vec::new();
        let mut ids = Vec::new();
        for txn in txns {
            let id = txn.0 as i64;
            if let Some(batch) = self.pending.remove(&id) {
                batches.push(batch);
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return;
        }
        let result = self.with_retries(|conn, stats| {
            stats.statements.fetch_add(1, Ordering::Relaxed);
            conn.client.execute(&conn.decide, &[&batches, &ids, &post])
        });
        if result.is_err() {
            self.owe(Owed::Decide {
                batches,
                txns: ids,
                post,
            });
        }
    }

    /// Every `PRUNE_EVERY_BATCHES` batches: forgets the votes of decided batches older
    /// than the latest `BATCH_VOTES_KEPT`. One try; a failure only delays it.
    fn prune(&mut self) {
        if self.batch_seq % PRUNE_EVERY_BATCHES != 0 || !self.owed.is_empty() {
            return;
        }
        let horizon = self.batch_seq - BATCH_VOTES_KEPT;
        if horizon <= 0 {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.stats.statements.fetch_add(1, Ordering::Relaxed);
        match conn.client.query_one(&conn.prune, &[&horizon]) {
            Ok(row) => {
                let pruned: i64 = row.try_get(0).unwrap_or(0);
                self.stats
                    .batches_pruned
                    .fetch_add(pruned.max(0) as u64, Ordering::Relaxed);
            }
            // The next call finds the connection gone and reconnects.
            Err(_) => self.conn = None,
        }
    }
}

/// Applies every owed call in order; stops at the first error (the rest stay owed).
fn settle(
    conn: &mut Conn,
    owed: &mut VecDeque<Owed>,
    stats: &PgLedgerStats,
) -> Result<(), postgres::Error> {
    while let Some(call) = owed.front() {
        stats.statements.fetch_add(1, Ordering::Relaxed);
        match call {
            Owed::Decide {
                batches,
                txns,
                post,
            } => {
                conn.client.execute(&conn.decide, &[batches, txns, post])?;
            }
            Owed::Reconcile { seq, txns, logged } => {
                let missing: i64 = conn
                    .client
                    .query_one(&conn.reconcile, &[seq, txns, logged])?
                    .try_get(0)?;
                stats
                    .replay_missing
                    .fetch_add(missing as u64, Ordering::Relaxed);
            }
            Owed::ReleaseOrphans {
                keep_batches,
                keep_txns,
                replayed,
            } => {
                let released: i64 = conn
                    .client
                    .query_one(&conn.release, &[keep_batches, keep_txns, replayed])?
                    .try_get(0)?;
                stats
                    .orphans_released
                    .fetch_add(released as u64, Ordering::Relaxed);
            }
        }
        owed.pop_front();
    }
    Ok(())
}

fn encode_vote(vote: Vote) -> i16 {
    match vote {
        Vote::Yes => VOTE_YES,
        Vote::ReadOnly => VOTE_READ_ONLY,
        Vote::No(reason) => i16::try_from(reason.0).unwrap_or(i16::MAX),
    }
}

fn decode_vote(code: i16) -> Vote {
    match code {
        VOTE_YES => Vote::Yes,
        VOTE_READ_ONLY => Vote::ReadOnly,
        reason => Vote::No(Reason(reason.max(1) as u16)),
    }
}

impl ResourceManager for PgLedger {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        self.batch_seq += 1;
        let first = votes.len();
        self.collect(ops, votes);
        if self.arrays.txns.is_empty() {
            return;
        }
        self.stats.batches_prepared.fetch_add(1, Ordering::Relaxed);
        self.stats
            .legs_prepared
            .fetch_add(self.arrays.txns.len() as u64, Ordering::Relaxed);
        let seq = self.batch_seq;
        let arrays = std::mem::take(&mut self.arrays);
        let result = self.with_retries(|conn, stats| {
            stats.statements.fetch_add(1, Ordering::Relaxed);
            let row = conn.client.query_one(
                &conn.prepare,
                &[
                    &seq,
                    &arrays.txns,
                    &arrays.accounts,
                    &arrays.amounts,
                    &arrays.kinds,
                    &arrays.prior,
                ],
            )?;
            row.try_get::<_, Vec<i16>>(0)
        });
        match result {
            Ok(codes) if codes.len() == arrays.index.len() => {
                for ((&index, &code), &txn) in arrays.index.iter().zip(&codes).zip(&arrays.txns) {
                    votes[first + index] = decode_vote(code);
                    if code == VOTE_YES {
                        self.pending.insert(txn, seq);
                    }
                }
                self.arrays = arrays;
                self.prune();
                return;
            }
            outcome => {
                // Unreachable, or an answer of the wrong shape: nothing may count as
                // reserved. If the call may have landed, release it before anything else.
                let sent = !matches!(outcome, Err(false));
                for &index in &arrays.index {
                    votes[first + index] = Vote::No(Reason::UNAVAILABLE);
                }
                self.stats
                    .unavailable_votes
                    .fetch_add(arrays.index.len() as u64, Ordering::Relaxed);
                if sent {
                    let logged =
                        vec![encode_vote(Vote::No(Reason::UNAVAILABLE)); arrays.txns.len()];
                    self.owe(Owed::Reconcile {
                        seq,
                        txns: arrays.txns.clone(),
                        logged,
                    });
                }
            }
        }
        self.arrays = arrays;
    }

    fn replay_prepare(&mut self, ops: &[Op], logged: &[Vote], votes: &mut Vec<Vote>) {
        self.batch_seq += 1;
        let mut scratch = Vec::with_capacity(ops.len());
        self.collect(ops, &mut scratch);
        votes.extend_from_slice(logged);
        if self.arrays.txns.is_empty() || logged.len() != ops.len() {
            return;
        }
        let codes: Vec<i16> = self
            .arrays
            .index
            .iter()
            .map(|&index| encode_vote(logged[index]))
            .collect();
        let seq = self.batch_seq;
        for (&txn, &code) in self.arrays.txns.iter().zip(&codes) {
            if code == VOTE_YES {
                self.pending.insert(txn, seq);
            }
        }
        let txns = self.arrays.txns.clone();
        let result = self.with_retries(|conn, stats| {
            stats.statements.fetch_add(1, Ordering::Relaxed);
            let missing: i64 = conn
                .client
                .query_one(&conn.reconcile, &[&seq, &txns, &codes])?
                .try_get(0)?;
            stats
                .replay_missing
                .fetch_add(missing as u64, Ordering::Relaxed);
            Ok(missing)
        });
        match result {
            Ok(0) => {}
            Ok(missing) => eprintln!(
                "pg ledger {}: {missing} logged yes votes of batch {seq} are missing from the \
                 database (was synchronous_commit off, or a backup restored?)",
                redact(&self.url)
            ),
            Err(_) => self.owe(Owed::Reconcile {
                seq,
                txns,
                logged: codes,
            }),
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        self.decide(txns, true);
    }

    fn abort(&mut self, txns: &[TxnId]) {
        self.decide(txns, false);
    }

    fn recovered(&mut self) {
        let (keep_txns, keep_batches): (Vec<i64>, Vec<i64>) = self
            .pending
            .iter()
            .map(|(&txn, &batch)| (txn, batch))
            .unzip();
        let replayed = self.batch_seq;
        let result = self.with_retries(|conn, stats| {
            stats.statements.fetch_add(1, Ordering::Relaxed);
            let released: i64 = conn
                .client
                .query_one(&conn.release, &[&keep_batches, &keep_txns, &replayed])?
                .try_get(0)?;
            stats
                .orphans_released
                .fetch_add(released as u64, Ordering::Relaxed);
            Ok(())
        });
        if result.is_err() {
            self.owe(Owed::ReleaseOrphans {
                keep_batches,
                keep_txns,
                replayed,
            });
        }
    }
}
