//! Exhaustive model check of the protocol core with stateright (issue 3, DESIGN §2).
//!
//! The model drives the *same* `Coordinator` and `Participant` state machines that the
//! runtime and the simulator drive: 2 coordinator replicas (sites 0 and 1, site 0 opens
//! the batch), 3 participants (sites 2, 3 and 4) wrapping a tiny bank, and one batch of
//! 1 or 2 transactions. The environment is adversarial within named bounds: messages
//! are a multiset in flight that is delivered in any order, dropped or duplicated;
//! sites crash, losing every WAL record not yet synced, and restart through the
//! `recover` entry points; one partition comes and heals; timers fire whenever they
//! are armed (time is abstract: a site's clock jumps to the deadline it fires).
//!
//! **How a state is represented.** The machines are neither `Clone` nor `Hash`, and
//! they hold private state (held messages, drives) that no accessor shows. So a model
//! state does not hold them. It holds, per site, the *inputs* the machine received
//! since it last (re)started: the synced records it recovered from, then its events
//! (messages, durability reports, timeouts). The machines are deterministic (no clock,
//! no randomness), so replaying the inputs rebuilds exactly the machine, and an action
//! rebuilds only the one site it touches. Two states are the same state when every
//! site has the same inputs (or, if down, the same synced log), the same vote script,
//! the network holds the same multiset, and the budgets and ghosts agree. This is
//! sound (no two distinct machine states are merged) but not minimal: two input orders
//! that lead to the same machine are counted twice.
//!
//! **Durability.** Each site's WAL is `synced` records plus `unsynced` ones. With
//! [`SyncMode::Action`] a sync is its own action, enabled whenever a site holds
//! unsynced records (requested or not, as another batch's sync would also flush
//! them), so a crash can fall between any append and its sync. With
//! [`SyncMode::InStep`] the driver syncs right after a step that asked for it
//! (`Output::sync_upto`), in the same atomic step; unforced records (decisions,
//! `Begin`) still stay unsynced until a later forced sync, and a crash loses them.
//!
//! **Vote choice.** A participant's resource manager must be deterministic (recovery
//! replays it and checks the votes). So the *choice* is made by the environment when a
//! PREPARE is delivered for a transaction the participant has no script for yet: both
//! "yes" and "no" are explored, and the choice is then fixed for that site (it is the
//! business data, and survives crashes).
//!
//! Invariants checked as `always` properties (DESIGN §2): 1 atomicity, 2 validity,
//! 3 non-triviality (on failure-free paths), 4 finality, 5 counters (monotone,
//! `last_attempt ≤ last_elected`, durable before any message that depends on them),
//! 8 the bank, plus "every recovery succeeds". See `docs/model-check.md`.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model, Path, Property};
use tricommit_engine::proto::{
    AppendSeq, BatchId, BatchInput, Coordinator, Op, Outcome, Output, Part, Participant,
    ProtoConfig, Reason, Record, ResourceManager, SiteId, State, Termination, TxnId, Vote,
    ELECTED_INITIAL, OP_PAYLOAD_BYTES,
};

/// Coordinator replicas, in recovery priority order (site 0 opens the batch).
const REPLICA_IDS: [u8; 2] = [0, 1];
/// Participant sites.
const PARTICIPANT_IDS: [u8; 3] = [2, 3, 4];
/// Every site of the model: ids `0..SITES_COUNT`, so a site mask fits a `u8`.
const SITES_COUNT: usize = REPLICA_IDS.len() + PARTICIPANT_IDS.len();
/// The most transactions the batch may hold (the issue asks for 1–2).
const TXNS_MAX: usize = 2;
/// Client transaction ids are `TXN_ID_BASE + index in the batch`.
const TXN_ID_BASE: u64 = 100;
/// Every participant's one account starts with this balance (limit 0).
const BALANCE_INITIAL: i64 = 10;
/// Per transaction: its participants and each one's balance change (they sum to 0).
/// Transaction 0 spans all three participants (a payment with a fee); transaction 1
/// only two, so that its commit group (4 sites, quorum 3) differs.
const TXN_DELTAS: [&[(u8, i64)]; TXNS_MAX] = [&[(2, -10), (3, 6), (4, 4)], &[(3, -5), (2, 5)]];
/// Shortest-path depth bound for printing: the counterexample print stops here.
const PRINT_STEPS_MAX: usize = 200;
/// Checker threads: the machine has two cores.
const CHECKER_THREADS: usize = 2;

const _: () = assert!(SITES_COUNT <= 8, "site masks are u8");
const _: () = assert!(TXNS_MAX <= 8, "transaction masks are u8");

/// When a site's WAL syncs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncMode {
    /// A sync is a separate action, enabled whenever unsynced records exist.
    Action,
    /// The driver syncs inside the step that asked for it.
    InStep,
}

/// The bounds that make the state space finite; every fault is counted against one.
#[derive(Clone, Debug)]
struct Bounds {
    /// Transactions in the batch (1 or 2).
    txns: usize,
    crashes_max: u8,
    partitions_max: u8,
    /// Messages the network may drop.
    losses_max: u8,
    /// Messages the network may deliver twice.
    duplicates_max: u8,
    /// Timer firings, over all sites (each is a suspicion of failure).
    timeouts_max: u8,
    /// Start where the PRE-COMMIT round is in flight (reached without faults, every
    /// vote yes) instead of where the PREPAREs are: the checker then spends its
    /// budget on the termination protocol.
    from_round: bool,
    /// Whether participants may vote no (else the environment always chooses yes).
    no_votes: bool,
    /// The sites that may crash (a site mask).
    crash_sites: u8,
    /// The sites whose timers may fire (a site mask); the others never time out.
    timer_sites: u8,
    /// The partitions that may happen: the site mask of one side.
    cuts: &'static [u8],
    sync: SyncMode,
    /// Retransmissions of a round before its driver hands the batch to recovery.
    retransmits_max: u32,
}

/// Partitions from DESIGN §2 and issue 3: the coordinator isolated; the coordinator
/// with one participant against the rest (the first naive counterexample's cut); a
/// majority of the participants isolated.
const CUTS_ALL: &[u8] = &[0b00001, 0b10001, 0b01100];
/// Every site, as a mask.
const ALL_SITES: u8 = (1 << SITES_COUNT) - 1;

impl Bounds {
    /// The configuration `cargo test --release` checks exhaustively (under 60 s here).
    fn bounded() -> Bounds {
        Bounds {
            txns: 1,
            crashes_max: 1,
            partitions_max: 1,
            losses_max: 0,
            duplicates_max: 0,
            timeouts_max: 0,
            from_round: false,
            no_votes: true,
            crash_sites: ALL_SITES,
            timer_sites: ALL_SITES,
            cuts: &CUTS_ALL[..1],
            sync: SyncMode::InStep,
            retransmits_max: 1,
        }
    }

    /// `MODEL_BOUNDS=txns,crashes,partitions,losses,duplicates,timeouts[,action]`
    /// overrides the budgets, for exploring how the state space grows.
    fn with_env_overrides(self) -> Bounds {
        let Ok(text) = std::env::var("MODEL_BOUNDS") else {
            return self;
        };
        let fields: Vec<&str> = text.split(',').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u8>().ok());
        Bounds {
            txns: number(0).map_or(self.txns, usize::from),
            crashes_max: number(1).unwrap_or(self.crashes_max),
            partitions_max: number(2).unwrap_or(self.partitions_max),
            losses_max: number(3).unwrap_or(self.losses_max),
            duplicates_max: number(4).unwrap_or(self.duplicates_max),
            timeouts_max: number(5).unwrap_or(self.timeouts_max),
            sync: match fields.get(6) {
                Some(&"action") => SyncMode::Action,
                Some(_) => SyncMode::InStep,
                None => self.sync,
            },
            crash_sites: number(7).unwrap_or(self.crash_sites),
            timer_sites: number(8).unwrap_or(self.timer_sites),
            from_round: fields.get(9).map_or(self.from_round, |f| *f == "round"),
            ..self
        }
    }

    /// The configuration in which the naive rule must fail: the timers that drive
    /// its recovery (a participant's HELP, the backup replica's election).
    fn naive() -> Bounds {
        Bounds {
            crashes_max: 0,
            partitions_max: 0,
            losses_max: 0,
            duplicates_max: 0,
            timeouts_max: 3,
            no_votes: false,
            from_round: true,
            timer_sites: 1 << PARTICIPANT_IDS[0] | 1 << REPLICA_IDS[1],
            ..Bounds::bounded()
        }
    }

    /// The larger configuration behind `--ignored`.
    fn larger() -> Bounds {
        Bounds {
            losses_max: 1,
            duplicates_max: 1,
            cuts: CUTS_ALL,
            ..Bounds::bounded()
        }
    }
}

// ---------------------------------------------------------------------------------
// The tiny bank: the participants' resource manager.
// ---------------------------------------------------------------------------------

/// One account per participant. A debit is held until commit or abort; a credit is
/// not spendable before commit. Votes follow the site's script (the environment's
/// choice), then the funds check.
#[derive(Debug)]
struct TinyBank {
    script: [Option<bool>; TXNS_MAX],
    balance: i64,
    held_debits: i64,
    /// Prepared and not settled: `(transaction index, delta)`.
    holds: Vec<(usize, i64)>,
    /// Transactions posted (committed) and voided (aborted after a yes), as masks.
    posted: u8,
    voided: u8,
}

impl TinyBank {
    fn new(script: [Option<bool>; TXNS_MAX]) -> TinyBank {
        TinyBank {
            script,
            balance: BALANCE_INITIAL,
            held_debits: 0,
            holds: Vec::new(),
            posted: 0,
            voided: 0,
        }
    }

    fn vote(&mut self, op: &Op) -> Vote {
        let Some(index) = txn_index(op.txn) else {
            return Vote::No(Reason::MALFORMED);
        };
        let delta = op_delta(op);
        let settled = (self.posted | self.voided) & (1 << index) != 0;
        if self.holds.iter().any(|(held, _)| *held == index) || settled {
            return Vote::No(Reason::DUPLICATE);
        }
        // A site without a script was never asked by the environment: a model bug,
        // which the validity property would then report.
        if self.script[index] != Some(true) {
            return Vote::No(Reason::INSUFFICIENT_FUNDS);
        }
        let debit = (-delta).max(0);
        if self.balance - self.held_debits - debit < 0 {
            return Vote::No(Reason::INSUFFICIENT_FUNDS);
        }
        self.held_debits += debit;
        self.holds.push((index, delta));
        Vote::Yes
    }

    fn settle(&mut self, txns: &[TxnId], post: bool) {
        for index in txns.iter().filter_map(|&txn| txn_index(txn)) {
            let Some(position) = self.holds.iter().position(|(held, _)| *held == index) else {
                continue;
            };
            let (_, delta) = self.holds.swap_remove(position);
            self.held_debits -= (-delta).max(0);
            if post {
                self.balance += delta;
                self.posted |= 1 << index;
            } else {
                self.voided |= 1 << index;
            }
        }
    }
}

impl ResourceManager for TinyBank {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        for op in ops {
            let vote = self.vote(op);
            votes.push(vote);
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        self.settle(txns, true);
    }

    fn abort(&mut self, txns: &[TxnId]) {
        self.settle(txns, false);
    }
}

fn txn_index(txn: TxnId) -> Option<usize> {
    let index = txn.0.checked_sub(TXN_ID_BASE)? as usize;
    (index < TXNS_MAX).then_some(index)
}

fn op_delta(op: &Op) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&op.payload[..8]);
    i64::from_le_bytes(raw)
}

fn bank_op(index: usize, delta: i64) -> Op {
    let mut payload = [0u8; OP_PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&delta.to_le_bytes());
    Op {
        txn: TxnId(TXN_ID_BASE + index as u64),
        payload,
    }
}

// ---------------------------------------------------------------------------------
// Sites: the machine, its inputs, its WAL and what the properties observe.
// ---------------------------------------------------------------------------------

/// A state machine rebuilt from a site's inputs.
enum Machine {
    Coordinator(Box<Coordinator>),
    Participant(Box<Participant<TinyBank>>),
}

/// One input of a site since it last (re)started.
#[derive(Clone, Debug)]
enum Event {
    /// The client batch (site 0 only, in the initial state).
    Submit,
    Message {
        from: SiteId,
        part: Part,
    },
    /// The driver synced every append so far (up to this sequence number).
    Durable {
        upto: u64,
    },
    /// The armed timer fired; the site's clock is now `now_us`.
    Timeout {
        now_us: u64,
    },
}

/// What the properties read of a site after each of its steps.
#[derive(Clone, Debug, Default, PartialEq)]
struct Observed {
    /// `(state, last_attempt)` per transaction, if the site knows the batch.
    txns: [Option<(State, u32)>; TXNS_MAX],
    /// `last_elected` for the batch, read from the site's log (every raise is logged).
    elected: u32,
    deadline_us: Option<u64>,
    bank: Option<BankView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct BankView {
    balance: i64,
    held_debits: i64,
    posted: u8,
    voided: u8,
}

#[derive(Clone)]
struct Site {
    id: u8,
    up: bool,
    /// The synced log this incarnation recovered from; `None` for the first one.
    base: Option<Arc<Vec<Record>>>,
    restart_now_us: u64,
    events: Arc<Vec<Event>>,
    /// Hash chain over `base`, `restart_now_us` and `events`: the site's identity while up.
    inputs_fp: u64,
    synced: Arc<Vec<Record>>,
    /// Hash chain over `synced`: the site's identity while down.
    synced_fp: u64,
    unsynced: Vec<(u64, Record)>,
    script: [Option<bool>; TXNS_MAX],
    clock_us: u64,
    observed: Observed,
}

impl Site {
    fn fresh(id: u8) -> Site {
        let mut site = Site {
            id,
            up: true,
            base: None,
            restart_now_us: 0,
            events: Arc::new(Vec::new()),
            inputs_fp: 0,
            synced: Arc::new(Vec::new()),
            synced_fp: 0,
            unsynced: Vec::new(),
            script: [None; TXNS_MAX],
            clock_us: 0,
            observed: Observed::default(),
        };
        site.inputs_fp = site.start_fp();
        site
    }

    fn is_replica(&self) -> bool {
        REPLICA_IDS.contains(&self.id)
    }

    fn start_fp(&self) -> u64 {
        let base = self.base.as_ref().map(|_| self.synced_fp);
        fingerprint_of(&(self.id, base, self.restart_now_us))
    }

    fn identity(&self) -> u64 {
        if self.up {
            fingerprint_of(&(1u8, self.inputs_fp))
        } else {
            fingerprint_of(&(0u8, self.synced_fp))
        }
    }

    fn push_event(&mut self, event: Event) {
        let mut hasher = DefaultHasher::new();
        self.inputs_fp.hash(&mut hasher);
        hash_event(&event, &mut hasher);
        self.inputs_fp = hasher.finish();
        Arc::make_mut(&mut self.events).push(event);
    }

    /// Moves every unsynced record to the synced log; returns the last sequence number.
    fn sync_all(&mut self) -> Option<u64> {
        let upto = self.unsynced.last()?.0;
        let synced = Arc::make_mut(&mut self.synced);
        for (_, record) in self.unsynced.drain(..) {
            self.synced_fp = fingerprint_of(&(self.synced_fp, record_fp(&record)));
            synced.push(record);
        }
        Some(upto)
    }

    /// Every record of the current log, synced first.
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.synced
            .iter()
            .chain(self.unsynced.iter().map(|(_, record)| record))
    }
}

impl Machine {
    fn apply(&mut self, event: &Event, clock_us: &mut u64, input: &BatchInput, out: &mut Output) {
        let now = *clock_us;
        match (self, event) {
            (Machine::Coordinator(machine), Event::Submit) => {
                let submitted = machine.submit(now, input.clone(), out);
                assert!(submitted.is_ok(), "the model's batch is valid");
            }
            (Machine::Coordinator(machine), Event::Message { from, part }) => {
                machine.handle_message(now, *from, part.clone(), out)
            }
            (Machine::Participant(machine), Event::Message { from, part }) => {
                machine.handle_message(now, *from, part.clone(), out)
            }
            (Machine::Coordinator(machine), Event::Durable { upto }) => {
                machine.handle_durable(now, AppendSeq(*upto), out)
            }
            (Machine::Participant(machine), Event::Durable { upto }) => {
                machine.handle_durable(now, AppendSeq(*upto), out)
            }
            (machine, Event::Timeout { now_us }) => {
                *clock_us = (*clock_us).max(*now_us);
                match machine {
                    Machine::Coordinator(machine) => machine.handle_timeout(*clock_us, out),
                    Machine::Participant(machine) => machine.handle_timeout(*clock_us, out),
                }
            }
            (Machine::Participant(_), Event::Submit) => {}
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self {
            Machine::Coordinator(machine) => machine.poll_timeout(),
            Machine::Participant(machine) => machine.poll_timeout(),
        }
    }

    fn txn_state(&self, batch: BatchId, index: u32) -> Option<(State, u32)> {
        match self {
            Machine::Coordinator(machine) => machine.txn_state(batch, index),
            Machine::Participant(machine) => machine.txn_state(batch, index),
        }
    }

    fn bank(&self) -> Option<BankView> {
        match self {
            Machine::Coordinator(_) => None,
            Machine::Participant(machine) => {
                let bank = machine.rm();
                Some(BankView {
                    balance: bank.balance,
                    held_debits: bank.held_debits,
                    posted: bank.posted,
                    voided: bank.voided,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The model state.
// ---------------------------------------------------------------------------------

/// One message part in flight.
#[derive(Clone)]
struct InFlight {
    from: u8,
    to: u8,
    part: Part,
    fp: u64,
}

/// Faults used so far, each against its bound.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq)]
struct Used {
    crashes: u8,
    partitions: u8,
    losses: u8,
    duplicates: u8,
    timeouts: u8,
}

impl Used {
    fn failure_free(&self) -> bool {
        self.crashes == 0 && self.partitions == 0 && self.losses == 0 && self.timeouts == 0
    }
}

/// Violation bits set by checks made during a step (transition properties).
mod violation {
    pub const FINALITY: u8 = 1;
    pub const COUNTERS: u8 = 2;
    pub const DURABLE_BEFORE_SEND: u8 = 4;
    pub const RECOVERY: u8 = 8;
}

/// History the invariants need and no single state shows ("ever" sets are sticky
/// across crashes). Site masks per transaction.
#[derive(Clone, Debug, Default, Hash, PartialEq)]
struct Ghost {
    ever_commit: [u8; TXNS_MAX],
    ever_abort: [u8; TXNS_MAX],
    ever_pre_commit: [u8; TXNS_MAX],
    /// Participants that logged a yes vote.
    voted_yes: [u8; TXNS_MAX],
    ever_posted: [u8; TXNS_MAX],
    ever_voided: [u8; TXNS_MAX],
    /// Transactions completed to the client, per outcome (transaction masks).
    client_commit: u8,
    client_abort: u8,
    violations: u8,
}

#[derive(Clone)]
struct ModelState {
    sites: Vec<Site>,
    /// Sorted by fingerprint: a canonical multiset. Shared between states, since
    /// most of a successor's messages are its parent's.
    net: Vec<Arc<InFlight>>,
    used: Used,
    partition: Option<u8>,
    ghost: Ghost,
    /// The first violation found on this path, for the report (not hashed).
    why: Option<Arc<String>>,
}

impl Hash for ModelState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for site in &self.sites {
            site.identity().hash(state);
            site.script.hash(state);
        }
        for message in &self.net {
            message.fp.hash(state);
        }
        self.used.hash(state);
        self.partition.hash(state);
        self.ghost.hash(state);
    }
}

impl PartialEq for ModelState {
    fn eq(&self, other: &Self) -> bool {
        fingerprint_of(self) == fingerprint_of(other)
    }
}

impl fmt::Debug for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        for site in &self.sites {
            let states: Vec<String> = site
                .observed
                .txns
                .iter()
                .flatten()
                .map(|(state, attempt)| format!("{state:?}@{attempt}"))
                .collect();
            writeln!(
                f,
                "  site {} {} states [{}] elected {} clock {} wal {}+{} script {:?} bank {:?}",
                site.id,
                if site.up { "up" } else { "DOWN" },
                states.join(", "),
                site.observed.elected,
                site.clock_us,
                site.synced.len(),
                site.unsynced.len(),
                site.script,
                site.observed.bank.map(|bank| bank.balance),
            )?;
        }
        let net: Vec<String> = self
            .net
            .iter()
            .map(|m| format!("{}→{} {}", m.from, m.to, m.part.name()))
            .collect();
        writeln!(f, "  in flight: [{}]", net.join(", "))?;
        writeln!(
            f,
            "  used {:?} partition {:?} ghost {:?}",
            self.used, self.partition, self.ghost
        )?;
        if let Some(why) = &self.why {
            writeln!(f, "  violation: {why}")?;
        }
        Ok(())
    }
}

/// An environment step. The descriptive fields make a printed path readable.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    /// Deliver message `index` (`keep`: a duplicate stays in flight). `votes_yes`
    /// fixes the receiving participant's votes for transactions it has no script for.
    Deliver {
        index: usize,
        from: u8,
        to: u8,
        part: &'static str,
        votes_yes: Option<u8>,
        keep: bool,
    },
    Drop {
        index: usize,
        from: u8,
        to: u8,
        part: &'static str,
    },
    Sync {
        site: u8,
    },
    Timeout {
        site: u8,
        at_us: u64,
    },
    Crash {
        site: u8,
    },
    Restart {
        site: u8,
    },
    Partition {
        side: u8,
    },
    Heal,
}

// ---------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------

struct CommitModel {
    bounds: Bounds,
    config: ProtoConfig,
    input: BatchInput,
    batch: BatchId,
    /// Participant mask per transaction.
    members: Vec<u8>,
    initial: ModelState,
}

impl CommitModel {
    fn new(bounds: Bounds, termination: Termination) -> CommitModel {
        let mut config = ProtoConfig::new(REPLICA_IDS.iter().map(|&id| SiteId(id)).collect());
        config.retransmits_max = bounds.retransmits_max;
        config.termination = termination;
        let input = batch_input(bounds.txns);
        let members = input.members.iter().map(|&mask| mask as u8).collect();
        let mut model = CommitModel {
            bounds,
            config,
            input,
            batch: BatchId(1 << 32),
            members,
            initial: ModelState {
                sites: (0..SITES_COUNT as u8).map(Site::fresh).collect(),
                net: Vec::new(),
                used: Used::default(),
                partition: None,
                ghost: Ghost::default(),
                why: None,
            },
        };
        model.initial = model.initial_state();
        if model.bounds.from_round {
            model.initial = model.advance_to_round(model.initial.clone());
        }
        model
    }

    /// Every site started; each replica's `Incarnation` is durable; the client batch
    /// is submitted to site 0 and its PREPAREs are in flight.
    fn initial_state(&self) -> ModelState {
        let mut state = self.initial.clone();
        for site in 0..SITES_COUNT {
            let machine = self.rebuild(&state.sites[site]);
            self.observe_site(&mut state.sites[site], &machine);
        }
        for &replica in &REPLICA_IDS {
            // `new` appends the first Incarnation record and forces it.
            let mut out = Output::default();
            let started = Coordinator::new(self.config.clone(), SiteId(replica), &mut out);
            assert!(started.is_ok(), "the model's configuration is valid");
            self.absorb(&mut state, replica, &mut out);
            self.drive(&mut state, replica, Event::Durable { upto: 0 });
        }
        self.drive(&mut state, REPLICA_IDS[0], Event::Submit);
        state
    }

    /// Delivers every PREPARE and VOTES part in flight, in order, with yes votes, until
    /// only the PRE-COMMIT round (and what follows it) is left in flight.
    fn advance_to_round(&self, mut state: ModelState) -> ModelState {
        while let Some(index) = state
            .net
            .iter()
            .position(|m| matches!(m.part, Part::Prepare { .. } | Part::Votes { .. }))
        {
            let message = &state.net[index];
            let action = Action::Deliver {
                index,
                from: message.from,
                to: message.to,
                part: message.part.name(),
                votes_yes: Some(u8::MAX),
                keep: false,
            };
            state = self
                .next_state(&state, action)
                .expect("a delivery is a step");
        }
        state
    }

    /// Rebuilds a site's machine by replaying its inputs.
    fn rebuild(&self, site: &Site) -> Machine {
        let id = SiteId(site.id);
        let mut out = Output::default();
        let mut machine = match (&site.base, site.is_replica()) {
            (None, true) => Machine::Coordinator(Box::new(
                Coordinator::new(self.config.clone(), id, &mut out).expect("valid config"),
            )),
            (None, false) => Machine::Participant(Box::new(
                Participant::new(self.config.clone(), id, TinyBank::new(site.script))
                    .expect("valid config"),
            )),
            (Some(base), true) => Machine::Coordinator(Box::new(
                Coordinator::recover(
                    self.config.clone(),
                    id,
                    base.iter(),
                    site.restart_now_us,
                    &mut out,
                )
                .expect("a recovery that succeeded once succeeds again"),
            )),
            (Some(base), false) => Machine::Participant(Box::new(
                Participant::recover(
                    self.config.clone(),
                    id,
                    TinyBank::new(site.script),
                    base.iter(),
                    site.restart_now_us,
                )
                .expect("a recovery that succeeded once succeeds again"),
            )),
        };
        let mut clock = site.restart_now_us;
        for event in site.events.iter() {
            out.clear();
            machine.apply(event, &mut clock, &self.input, &mut out);
        }
        machine
    }

    /// Feeds `event` to `site` and absorbs what comes out; with [`SyncMode::InStep`]
    /// also performs the syncs the machine asks for, in the same step.
    fn drive(&self, state: &mut ModelState, site: u8, event: Event) {
        let mut machine = self.rebuild(&state.sites[site as usize]);
        let mut next = Some(event);
        while let Some(mut event) = next.take() {
            let record = &mut state.sites[site as usize];
            if let Event::Durable { upto } = &mut event {
                *upto = record.sync_all().unwrap_or(*upto);
            }
            let mut out = Output::default();
            let mut clock = record.clock_us;
            machine.apply(&event, &mut clock, &self.input, &mut out);
            record.clock_us = clock;
            record.push_event(event);
            self.absorb(state, site, &mut out);
            let record = &state.sites[site as usize];
            let wants_sync = out.sync_upto.is_some() && !record.unsynced.is_empty();
            if self.bounds.sync == SyncMode::InStep && wants_sync {
                let upto = record.unsynced.last().map_or(0, |(seq, _)| *seq);
                next = Some(Event::Durable { upto });
            }
        }
        let before = state.sites[site as usize].observed.clone();
        self.observe_site(&mut state.sites[site as usize], &machine);
        // A site may forget a batch once it is settled everywhere (FORGET): the
        // properties keep seeing its last, final, states.
        let observed = &mut state.sites[site as usize].observed;
        for index in 0..self.bounds.txns {
            if observed.txns[index].is_none()
                && before.txns[index].is_some_and(|(s, _)| s.is_final())
            {
                observed.txns[index] = before.txns[index];
            }
        }
        self.check_transition(state, site, &before);
    }

    /// Takes a step's output: appends to the WAL, sends into the network (checking
    /// that what they promise is durable), completions into the ghost.
    fn absorb(&self, state: &mut ModelState, site: u8, out: &mut Output) {
        for (seq, record) in out.appends.drain(..) {
            if let Record::Prepared { ops, votes, .. } = &record {
                for (op, vote) in ops.iter().zip(votes) {
                    if let (Some(index), Vote::Yes) = (txn_index(op.txn), vote) {
                        state.ghost.voted_yes[index] |= 1 << site;
                    }
                }
            }
            state.sites[site as usize].unsynced.push((seq.0, record));
        }
        for outgoing in out.sends.drain(..) {
            if let Err(why) = backed_by_synced(&state.sites[site as usize], &outgoing.part) {
                let message = format!("site {site} sent {}: {why}", outgoing.part.name());
                fail(state, violation::DURABLE_BEFORE_SEND, message);
            }
            let to = outgoing.to.0;
            let fp = fingerprint_of(&(site, to, part_fp(&outgoing.part)));
            let message = Arc::new(InFlight {
                from: site,
                to,
                part: outgoing.part,
                fp,
            });
            let position = state.net.partition_point(|m| m.fp < fp);
            state.net.insert(position, message);
        }
        for completion in out.completions.drain(..) {
            let mask = completion.txns.iter().fold(0u8, |acc, i| acc | 1 << i);
            match completion.outcome {
                Outcome::Commit => state.ghost.client_commit |= mask,
                Outcome::Abort => state.ghost.client_abort |= mask,
            }
        }
    }

    fn observe_site(&self, site: &mut Site, machine: &Machine) {
        let mut observed = Observed {
            elected: elected_in(site.records(), self.batch),
            deadline_us: machine.poll_timeout(),
            bank: machine.bank(),
            ..Observed::default()
        };
        for index in 0..self.bounds.txns {
            observed.txns[index] = machine.txn_state(self.batch, index as u32);
        }
        site.observed = observed;
    }

    /// Transition checks of invariants 4 and 5 for one site that stayed up.
    fn check_transition(&self, state: &mut ModelState, site: u8, before: &Observed) {
        let after = state.sites[site as usize].observed.clone();
        if after.elected < before.elected {
            let message = format!(
                "site {site}: last_elected {} → {}",
                before.elected, after.elected
            );
            fail(state, violation::COUNTERS, message);
        }
        for index in 0..self.bounds.txns {
            let (Some(old), Some(new)) = (before.txns[index], after.txns[index]) else {
                if before.txns[index].is_some() {
                    let message = format!("site {site} forgot transaction {index}");
                    fail(state, violation::FINALITY, message);
                }
                continue;
            };
            if let Some(message) = finality_break(old, new) {
                fail(
                    state,
                    violation::FINALITY,
                    format!("site {site} txn {index}: {message}"),
                );
            }
            if new.1 < old.1 || new.1 > after.elected {
                let message = format!(
                    "site {site} txn {index}: attempt {} → {}, elected {}",
                    old.1, new.1, after.elected
                );
                fail(state, violation::COUNTERS, message);
            }
        }
        self.update_ghost(state);
    }

    /// Folds every live site's observation into the sticky ghost sets.
    fn update_ghost(&self, state: &mut ModelState) {
        for site in state.sites.iter().filter(|site| site.up) {
            let bit = 1u8 << site.id;
            for index in 0..self.bounds.txns {
                match site.observed.txns[index] {
                    Some((State::Commit, _)) => state.ghost.ever_commit[index] |= bit,
                    Some((State::Abort, _)) => state.ghost.ever_abort[index] |= bit,
                    Some((State::PreCommit, _)) => state.ghost.ever_pre_commit[index] |= bit,
                    _ => {}
                }
                if let Some(bank) = site.observed.bank {
                    if bank.posted & (1 << index) != 0 {
                        state.ghost.ever_posted[index] |= bit;
                    }
                    if bank.voided & (1 << index) != 0 {
                        state.ghost.ever_voided[index] |= bit;
                    }
                }
            }
        }
    }

    fn crash(&self, state: &mut ModelState, site: u8) {
        state.used.crashes += 1;
        let record = &mut state.sites[site as usize];
        record.up = false;
        record.unsynced.clear();
        record.events = Arc::new(Vec::new());
        record.observed = Observed::default();
    }

    /// Restarts a site through `recover` from its synced log, after checking that
    /// every record survives the codec.
    fn restart(&self, state: &mut ModelState, site: u8) {
        let record = &mut state.sites[site as usize];
        for logged in record.synced.iter() {
            let mut bytes = Vec::new();
            logged.encode(&mut bytes);
            if Record::decode(logged.kind(), &bytes).as_ref() != Ok(logged) {
                let message = format!("site {site}: a record does not round-trip");
                fail(state, violation::RECOVERY, message);
                return;
            }
        }
        let record = &mut state.sites[site as usize];
        record.up = true;
        record.base = Some(Arc::clone(&record.synced));
        record.restart_now_us = record.clock_us;
        record.inputs_fp = record.start_fp();
        let mut out = Output::default();
        let id = SiteId(site);
        let result = if record.is_replica() {
            Coordinator::recover(
                self.config.clone(),
                id,
                record.synced.iter(),
                record.clock_us,
                &mut out,
            )
            .map(|_| ())
        } else {
            Participant::recover(
                self.config.clone(),
                id,
                TinyBank::new(record.script),
                record.synced.iter(),
                record.clock_us,
            )
            .map(|_| ())
        };
        if let Err(error) = result {
            fail(state, violation::RECOVERY, format!("site {site}: {error}"));
            return;
        }
        self.absorb(state, site, &mut out);
        let wants_sync = out.sync_upto.is_some() || !state.sites[site as usize].unsynced.is_empty();
        if self.bounds.sync == SyncMode::InStep && wants_sync {
            let upto = state.sites[site as usize]
                .unsynced
                .last()
                .map_or(0, |(seq, _)| *seq);
            self.drive(state, site, Event::Durable { upto });
        } else {
            let machine = self.rebuild(&state.sites[site as usize]);
            self.observe_site(&mut state.sites[site as usize], &machine);
            self.update_ghost(state);
        }
    }

    /// The vote scripts a PREPARE delivery may fix: `None` if the site has a script
    /// for every transaction the part names, else every yes/no mask over them.
    fn vote_choices(&self, site: &Site, part: &Part) -> Vec<Option<u8>> {
        let Part::Prepare { ops, .. } = part else {
            return vec![None];
        };
        if site.is_replica() {
            return vec![None];
        }
        let open: u8 = ops
            .iter()
            .filter_map(|op| txn_index(op.txn))
            .filter(|&index| site.script[index].is_none())
            .fold(0, |acc, index| acc | 1 << index);
        if open == 0 {
            return vec![None];
        }
        // Yes first, so that a depth-first search tries the committing path first.
        (0..=open)
            .rev()
            .filter(|mask| mask & !open == 0)
            .filter(|&mask| self.bounds.no_votes || mask == open)
            .map(|mask| Some(mask | !open))
            .collect()
    }

    fn crosses_cut(&self, state: &ModelState, from: u8, to: u8) -> bool {
        state
            .partition
            .is_some_and(|side| (side >> from) & 1 != (side >> to) & 1)
    }

    fn message_actions(&self, state: &ModelState, actions: &mut Vec<Action>) {
        for (index, message) in state.net.iter().enumerate() {
            let (from, to, part) = (message.from, message.to, message.part.name());
            let target = &state.sites[to as usize];
            if target.up && !self.crosses_cut(state, from, to) {
                for votes_yes in self.vote_choices(target, &message.part) {
                    for keep in [false, true] {
                        if keep && state.used.duplicates >= self.bounds.duplicates_max {
                            continue;
                        }
                        actions.push(Action::Deliver {
                            index,
                            from,
                            to,
                            part,
                            votes_yes,
                            keep,
                        });
                    }
                }
            }
            if state.used.losses < self.bounds.losses_max {
                actions.push(Action::Drop {
                    index,
                    from,
                    to,
                    part,
                });
            }
        }
    }

    fn site_actions(&self, state: &ModelState, actions: &mut Vec<Action>) {
        for site in &state.sites {
            let id = site.id;
            if !site.up {
                actions.push(Action::Restart { site: id });
                continue;
            }
            if self.bounds.sync == SyncMode::Action && !site.unsynced.is_empty() {
                actions.push(Action::Sync { site: id });
            }
            let bit = 1u8 << id;
            if let Some(at_us) = site.observed.deadline_us {
                if state.used.timeouts < self.bounds.timeouts_max
                    && self.bounds.timer_sites & bit != 0
                {
                    actions.push(Action::Timeout { site: id, at_us });
                }
            }
            if state.used.crashes < self.bounds.crashes_max && self.bounds.crash_sites & bit != 0 {
                actions.push(Action::Crash { site: id });
            }
        }
    }
}

impl Model for CommitModel {
    type State = ModelState;
    type Action = Action;

    fn init_states(&self) -> Vec<ModelState> {
        vec![self.initial.clone()]
    }

    fn actions(&self, state: &ModelState, actions: &mut Vec<Action>) {
        // A violated state is already a discovery: its successors add nothing.
        if state.ghost.violations != 0 || self.broken(state) {
            return;
        }
        self.message_actions(state, actions);
        self.site_actions(state, actions);
        match state.partition {
            Some(_) => actions.push(Action::Heal),
            None if state.used.partitions < self.bounds.partitions_max => {
                for &side in self.bounds.cuts {
                    actions.push(Action::Partition { side });
                }
            }
            None => {}
        }
    }

    fn next_state(&self, state: &ModelState, action: Action) -> Option<ModelState> {
        let mut next = state.clone();
        match action {
            Action::Deliver {
                index,
                votes_yes,
                keep,
                ..
            } => {
                let message = if keep {
                    next.used.duplicates += 1;
                    Arc::clone(&next.net[index])
                } else {
                    next.net.remove(index)
                };
                if let Some(mask) = votes_yes {
                    let script = &mut next.sites[message.to as usize].script;
                    for (index, vote) in script.iter_mut().enumerate() {
                        if vote.is_none() && mask & (1 << index) == 0 {
                            *vote = Some(false);
                        } else if vote.is_none() {
                            *vote = Some(true);
                        }
                    }
                }
                let event = Event::Message {
                    from: SiteId(message.from),
                    part: message.part.clone(),
                };
                self.drive(&mut next, message.to, event);
            }
            Action::Drop { index, .. } => {
                next.used.losses += 1;
                next.net.remove(index);
            }
            Action::Sync { site } => self.drive(&mut next, site, Event::Durable { upto: 0 }),
            Action::Timeout { site, at_us } => {
                next.used.timeouts += 1;
                self.drive(&mut next, site, Event::Timeout { now_us: at_us });
            }
            Action::Crash { site } => self.crash(&mut next, site),
            Action::Restart { site } => self.restart(&mut next, site),
            Action::Partition { side } => {
                next.used.partitions += 1;
                next.partition = Some(side);
            }
            Action::Heal => next.partition = None,
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("atomicity", |model, state| model.atomicity(state).is_ok()),
            Property::always("validity", |model, state| model.validity(state).is_ok()),
            Property::always("non-triviality", |model, state| {
                model.non_triviality(state).is_ok()
            }),
            Property::always("finality", |_, state: &ModelState| {
                state.ghost.violations & violation::FINALITY == 0
            }),
            Property::always("counters", |_, state: &ModelState| {
                let bits = violation::COUNTERS | violation::DURABLE_BEFORE_SEND;
                state.ghost.violations & bits == 0
            }),
            Property::always("recovery", |_, state: &ModelState| {
                state.ghost.violations & violation::RECOVERY == 0
            }),
            Property::always("bank", |model, state| model.bank(state).is_ok()),
            Property::sometimes("all committed", |model, state| {
                model.everywhere(state, State::Commit)
            }),
            Property::sometimes("all aborted", |model, state| {
                model.everywhere(state, State::Abort)
            }),
            Property::sometimes(
                "committed after a crash",
                |model: &Self, state: &ModelState| {
                    state.used.crashes > 0 && model.everywhere(state, State::Commit)
                },
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------
// Invariants (DESIGN §2).
// ---------------------------------------------------------------------------------

impl CommitModel {
    fn broken(&self, state: &ModelState) -> bool {
        self.atomicity(state).is_err()
            || self.validity(state).is_err()
            || self.non_triviality(state).is_err()
            || self.bank(state).is_err()
    }

    /// 1: no two sites ever hold C and A for one transaction, and the client's
    /// outcome agrees with every site.
    fn atomicity(&self, state: &ModelState) -> Result<(), String> {
        let ghost = &state.ghost;
        for index in 0..self.bounds.txns {
            let bit = 1u8 << index;
            let committed = ghost.ever_commit[index] != 0 || ghost.client_commit & bit != 0;
            let aborted = ghost.ever_abort[index] != 0 || ghost.client_abort & bit != 0;
            if committed && aborted {
                return Err(format!(
                    "txn {index}: committed at sites {:#07b} (client {}), aborted at {:#07b} (client {})",
                    ghost.ever_commit[index],
                    ghost.client_commit & bit != 0,
                    ghost.ever_abort[index],
                    ghost.client_abort & bit != 0
                ));
            }
        }
        Ok(())
    }

    /// 2: C or PC anywhere ⇒ every participant voted yes.
    fn validity(&self, state: &ModelState) -> Result<(), String> {
        let ghost = &state.ghost;
        for index in 0..self.bounds.txns {
            let bit = 1u8 << index;
            let promised = ghost.ever_commit[index] != 0
                || ghost.ever_pre_commit[index] != 0
                || ghost.client_commit & bit != 0;
            if promised && ghost.voted_yes[index] & self.members[index] != self.members[index] {
                return Err(format!(
                    "txn {index}: C/PC while yes votes are {:#07b} of {:#07b}",
                    ghost.voted_yes[index], self.members[index]
                ));
            }
        }
        Ok(())
    }

    /// 3: on a path without crash, loss, partition or timeout, a transaction every
    /// participant wants (script yes) never aborts anywhere.
    fn non_triviality(&self, state: &ModelState) -> Result<(), String> {
        if !state.used.failure_free() {
            return Ok(());
        }
        for index in 0..self.bounds.txns {
            let wanted = PARTICIPANT_IDS
                .iter()
                .filter(|&&id| self.members[index] & (1 << id) != 0)
                .all(|&id| state.sites[id as usize].script[index] != Some(false));
            let aborted =
                state.ghost.ever_abort[index] != 0 || state.ghost.client_abort & (1 << index) != 0;
            if wanted && aborted {
                return Err(format!(
                    "txn {index}: aborted without any failure or no vote"
                ));
            }
        }
        Ok(())
    }

    /// 8: no balance below its limit (0), no transfer both posted somewhere and voided
    /// elsewhere, and once every participant is up and settled, the sum is unchanged.
    fn bank(&self, state: &ModelState) -> Result<(), String> {
        let ghost = &state.ghost;
        for index in 0..self.bounds.txns {
            if ghost.ever_posted[index] != 0 && ghost.ever_voided[index] != 0 {
                return Err(format!("txn {index}: posted and voided"));
            }
        }
        let mut total = 0;
        let mut settled = true;
        for &id in &PARTICIPANT_IDS {
            let site = &state.sites[id as usize];
            let Some(bank) = site.observed.bank.filter(|_| site.up) else {
                settled = false;
                continue;
            };
            if bank.balance < 0 || bank.balance - bank.held_debits < 0 {
                return Err(format!("site {id}: balance {bank:?} below its limit"));
            }
            total += bank.balance;
            settled &= (0..self.bounds.txns).all(|index| {
                self.members[index] & (1 << id) == 0
                    || site.observed.txns[index].is_some_and(|(s, _)| s.is_final())
            });
        }
        let expected = BALANCE_INITIAL * PARTICIPANT_IDS.len() as i64;
        if settled && total != expected {
            return Err(format!("settled total {total}, expected {expected}"));
        }
        Ok(())
    }

    /// True if every participant of every transaction and the opening replica (when
    /// up) hold `wanted`. The witness replica is left out: presumed abort never tells
    /// it about an abort on the normal path.
    fn everywhere(&self, state: &ModelState, wanted: State) -> bool {
        (0..self.bounds.txns).all(|index| {
            state.sites.iter().all(|site| {
                let opener = site.id == REPLICA_IDS[0];
                let member = opener || self.members[index] & (1 << site.id) != 0;
                !member
                    || (opener && !site.up)
                    || site.observed.txns[index].is_some_and(|(s, _)| s == wanted)
            })
        })
    }

    /// The first violated invariant of `state`, by name, with its explanation.
    fn explain(&self, state: &ModelState) -> Vec<String> {
        let mut found = Vec::new();
        for (name, result) in [
            ("atomicity", self.atomicity(state)),
            ("validity", self.validity(state)),
            ("non-triviality", self.non_triviality(state)),
            ("bank", self.bank(state)),
        ] {
            if let Err(why) = result {
                found.push(format!("{name}: {why}"));
            }
        }
        if let Some(why) = &state.why {
            found.push(why.to_string());
        }
        found
    }
}

/// Invariant 4 for one site between two of its steps: C and A never change; PC and
/// PA change only to a decision or through a higher attempt; nothing falls back.
fn finality_break(old: (State, u32), new: (State, u32)) -> Option<String> {
    if old == new {
        return None;
    }
    let (old_state, old_attempt) = old;
    let (new_state, new_attempt) = new;
    let broken = match old_state {
        State::Commit | State::Abort => true,
        State::PreCommit | State::PreAbort => {
            let raised = matches!(new_state, State::PreCommit | State::PreAbort)
                && new_attempt > old_attempt;
            !(new_state.is_final() || raised)
        }
        State::W => new_state == State::Q,
        State::Q => false,
    };
    broken.then(|| format!("{old_state:?}@{old_attempt} → {new_state:?}@{new_attempt}"))
}

/// Invariant 5's durability half: a message that depends on a state leaves only once
/// the synced log holds it. A yes vote needs its `Prepared`; an ELECT-ACK needs the
/// raised `last_elected`; a ROUND-ACK needs the election and each acknowledged PC/PA
/// at that attempt. (REJECT, DECIDE and HELP promise nothing.)
fn backed_by_synced(site: &Site, part: &Part) -> Result<(), String> {
    let synced = site.synced.iter();
    match part {
        Part::Votes { yes, .. } => {
            let prepared_yes = |index: u32| {
                site.synced.iter().any(|record| match record {
                    Record::Prepared { ops, votes, .. } => {
                        ops.iter().zip(votes).any(|(op, vote)| {
                            txn_index(op.txn) == Some(index as usize) && *vote == Vote::Yes
                        })
                    }
                    _ => false,
                })
            };
            match yes.iter().find(|&index| !prepared_yes(index)) {
                Some(index) => Err(format!("yes on txn {index} before its Prepared is synced")),
                None => Ok(()),
            }
        }
        Part::ElectAck { batch, elected, .. } => {
            let durable = elected_in(synced, *batch);
            if durable < *elected {
                return Err(format!("elected {elected} acked, {durable} durable"));
            }
            Ok(())
        }
        Part::RoundAck {
            batch,
            elected,
            pre_commit,
            pre_abort,
        } => {
            let durable = elected_in(synced, *batch);
            if durable < *elected {
                return Err(format!("round {elected} acked, elected {durable} durable"));
            }
            for (set, state) in [(pre_commit, State::PreCommit), (pre_abort, State::PreAbort)] {
                if let Some(index) = set
                    .iter()
                    .find(|&index| !transition_synced(site, *batch, state, *elected, index))
                {
                    return Err(format!("{state:?}@{elected} of txn {index} not synced"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn transition_synced(site: &Site, batch: BatchId, state: State, attempt: u32, index: u32) -> bool {
    site.synced.iter().any(|record| match record {
        Record::Transition {
            batch: b,
            state: s,
            attempt: a,
            txns,
            ..
        } => *b == batch && *s == state && *a == attempt && txns.contains(index),
        _ => false,
    })
}

/// The batch's `last_elected` a log implies: every raise is logged (`Elected`), and
/// every transition carries the election it happened under.
fn elected_in<'a>(records: impl Iterator<Item = &'a Record>, batch: BatchId) -> u32 {
    records
        .filter_map(|record| match record {
            Record::Elected {
                batch: b, elected, ..
            }
            | Record::Transition {
                batch: b, elected, ..
            } if *b == batch => Some(*elected),
            _ => None,
        })
        .fold(ELECTED_INITIAL, u32::max)
}

fn fail(state: &mut ModelState, bit: u8, message: String) {
    state.ghost.violations |= bit;
    if state.why.is_none() {
        state.why = Some(Arc::new(message));
    }
}

// ---------------------------------------------------------------------------------
// Hashing: the machines' inputs have no `Hash`, so they are hashed field by field.
// ---------------------------------------------------------------------------------

fn fingerprint_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn record_fp(record: &Record) -> u64 {
    let mut bytes = Vec::new();
    record.encode(&mut bytes);
    fingerprint_of(&(record.kind(), bytes))
}

fn hash_event(event: &Event, hasher: &mut impl Hasher) {
    match event {
        Event::Submit => 0u8.hash(hasher),
        Event::Message { from, part } => {
            1u8.hash(hasher);
            from.hash(hasher);
            part_fp(part).hash(hasher);
        }
        Event::Durable { upto } => (2u8, upto).hash(hasher),
        Event::Timeout { now_us } => (3u8, now_us).hash(hasher),
    }
}

/// A part's fingerprint: its `Debug` text, which shows every field (descriptors and
/// sets included) and follows the protocol's message types as they evolve.
fn part_fp(part: &Part) -> u64 {
    fingerprint_of(&format!("{part:?}"))
}

// ---------------------------------------------------------------------------------
// Running the checker.
// ---------------------------------------------------------------------------------

/// The client batch: transaction `i` with the participants and deltas of
/// `TXN_DELTAS[i]`, each participant's operations in batch order.
fn batch_input(txns: usize) -> BatchInput {
    let mut input = BatchInput::default();
    for (index, deltas) in TXN_DELTAS.iter().enumerate().take(txns) {
        input.txns.push(TxnId(TXN_ID_BASE + index as u64));
        input.members.push(
            deltas
                .iter()
                .fold(0u64, |acc, &(site, _)| acc | SiteId(site).bit()),
        );
    }
    for &site in &PARTICIPANT_IDS {
        let ops: Vec<Op> = TXN_DELTAS
            .iter()
            .enumerate()
            .take(txns)
            .filter_map(|(index, deltas)| {
                let (_, delta) = deltas.iter().find(|(id, _)| *id == site)?;
                Some(bank_op(index, *delta))
            })
            .collect();
        if !ops.is_empty() {
            input.ops.push((SiteId(site), ops));
        }
    }
    input
}

struct Run {
    unique_states: usize,
    done: bool,
    /// Per property: its name, whether it is a `sometimes`, and the discovery's path,
    /// already rendered (a counterexample, or an example for `sometimes`).
    discoveries: Vec<(&'static str, bool, Option<String>)>,
}

/// Explores the whole space (or until `stop_on` is discovered), breadth first unless
/// `depth_first`, and reports the state count and every discovery.
fn check(model: CommitModel, stop_on: Option<&'static str>, depth_first: bool) -> Run {
    let started = Instant::now();
    let mut builder = model.checker().threads(CHECKER_THREADS);
    if let Some(name) = stop_on {
        builder = builder.finish_when(HasDiscoveries::AnyOf([name].into_iter().collect()));
    }
    if let Some(seconds) = std::env::var("MODEL_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.timeout(std::time::Duration::from_secs(seconds));
    }
    if depth_first {
        summarize(builder.spawn_dfs().join(), started)
    } else {
        summarize(builder.spawn_bfs().join(), started)
    }
}

fn summarize(checker: impl Checker<CommitModel>, started: Instant) -> Run {
    let model = checker.model();
    let discoveries = model
        .properties()
        .into_iter()
        .map(|property| {
            let sometimes = property.expectation == stateright::Expectation::Sometimes;
            let path = checker
                .discovery(property.name)
                .map(|path| render_path(model, path));
            (property.name, sometimes, path)
        })
        .collect();
    let run = Run {
        unique_states: checker.unique_state_count(),
        done: checker.is_done(),
        discoveries,
    };
    println!(
        "explored {} unique states ({} generated), max depth {}, in {:.1} s",
        run.unique_states,
        checker.state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    run
}

fn render_path(model: &CommitModel, path: Path<ModelState, Action>) -> String {
    let steps = path.into_vec();
    let mut text = format!("{} steps\n", steps.len() - 1);
    for (state, action) in steps.iter().take(PRINT_STEPS_MAX) {
        match action {
            Some(action) => text.push_str(&format!("  - {action:?}\n")),
            None => {
                text.push_str(&format!("  final state: {state:?}"));
                for why in model.explain(state) {
                    text.push_str(&format!("  violated: {why}\n"));
                }
            }
        }
    }
    text
}

/// Asserts that no `always` property has a counterexample (printing it if one does)
/// and that every `sometimes` property found its example.
fn assert_all_hold(run: &Run) {
    let mut broken = Vec::new();
    for (name, sometimes, path) in &run.discoveries {
        match (sometimes, path) {
            (true, None) => broken.push(format!("no example of \"{name}\"")),
            (false, Some(path)) => {
                println!("counterexample for {name}: {path}");
                broken.push(format!("\"{name}\" violated"));
            }
            _ => {}
        }
    }
    assert!(broken.is_empty(), "model check failed: {broken:?}");
}

// Proves that E3PC keeps invariants 1–5 and 8 in every reachable state of the bounded
// configuration (see `Bounds::bounded`), and that commit, abort and commit-after-crash
// are all reachable, so the invariants are not vacuous.
#[test]
fn e3pc_holds_every_invariant_in_the_bounded_configuration() {
    let model = CommitModel::new(Bounds::bounded().with_env_overrides(), Termination::E3pc);
    println!("bounds: {:?}", model.bounds);
    let run = check(model, None, false);
    assert!(run.done, "the checker stopped before the end");
    assert!(run.unique_states > 1_000, "suspiciously small state space");
    assert_all_hold(&run);
}

// Proves the same for the larger configuration (see `Bounds::larger`). Minutes, not
// seconds: run with `--ignored`.
#[test]
#[ignore = "larger configuration: cargo test --release -- --ignored"]
fn e3pc_holds_every_invariant_in_the_larger_configuration() {
    let model = CommitModel::new(Bounds::larger().with_env_overrides(), Termination::E3pc);
    println!("bounds: {:?}", model.bounds);
    // Depth first: its memory is the fingerprints only, where a breadth-first frontier
    // of this space outgrows the machine's memory.
    let run = check(model, None, true);
    assert!(run.done, "the checker stopped before the end");
    assert_all_hold(&run);
}

// Proves that the model check bites: the seed's naive termination rule (no quorum, no
// fencing) reaches a state where one site commits and another aborts.
#[test]
fn naive_termination_breaks_atomicity() {
    let model = CommitModel::new(
        Bounds::naive().with_env_overrides(),
        Termination::NaiveUnsafe,
    );
    println!("bounds: {:?}", model.bounds);
    let depth_first = std::env::var("MODEL_DFS").is_ok();
    let run = check(model, Some("atomicity"), depth_first);
    let found = run
        .discoveries
        .iter()
        .find(|(name, _, _)| *name == "atomicity")
        .and_then(|(_, _, path)| path.as_ref());
    assert!(found.is_some(), "the naive rule passed the model check");
    if let Some(path) = found {
        println!("counterexample for atomicity (naive rule): {path}");
    }
}
