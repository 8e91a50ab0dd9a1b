//! The simulated world: sites running the real state machines, a WAL model per site
//! that keeps synced records apart from unsynced ones, a lossy network, a clock, and a
//! fault schedule. Everything random comes from one seeded [`Rng`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;

use super::bank::{bank_op, Bank};
use super::check::{Checker, Violation};
use super::rng::Rng;
use crate::proto::{
    AppendSeq, BatchId, BatchInput, Coordinator, Op, Outcome, Output, Part, Participant,
    ProtoConfig, Protocol, Record, SiteId, Termination, TxnId, Vote,
};

/// Events a run may process before it is declared a livelock.
pub const EVENTS_MAX: u64 = 2_000_000;
/// Trace entries kept for a failure report.
pub const TRACE_ENTRIES_MAX: usize = 60;

/// A fault the schedule (or a scenario test) injects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The site loses its memory and every record not synced (a random prefix of the
    /// unsynced tail may survive, as on a real disk).
    Crash(u8),
    /// The site recovers from its log.
    Restart(u8),
    /// Sites in different groups cannot talk; `groups[site]` is the site's group.
    Partition(Vec<u8>),
    /// Everyone can talk again.
    Heal,
}

/// What a run does, derived from a seed by [`SimConfig::random`] or set by a test.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: u8,
    pub participants: u8,
    pub accounts: u32,
    pub balance: i64,
    pub batches: u32,
    pub batch_txns_max: u32,
    pub batch_interval_us: u64,
    pub delay_us_min: u64,
    pub delay_us_max: u64,
    pub sync_us_min: u64,
    pub sync_us_max: u64,
    pub loss_per_mille: u32,
    pub dup_per_mille: u32,
    /// Transactions with a third, read-only participant.
    pub read_only_per_mille: u32,
    /// Transactions one participant is told to vote no on.
    pub no_vote_per_mille: u32,
    /// Per transfer of the workload: instead of a new transfer, resend a recent one
    /// (a client failing over): its id with the same legs, or, one time in four, with
    /// other legs. Participants must refuse every second instance of an id.
    pub resend_per_mille: u32,
    /// Probability that a site crashes at the end of a step, after appending its
    /// records and before its messages leave.
    pub step_crash_per_mille: u32,
    /// A participant whose messages take this much longer, until faults stop.
    pub slow_site: Option<(u8, u64)>,
    pub faults: Vec<(u64, Fault)>,
    /// After this instant: no loss, no duplication, no slow site, everyone healed and
    /// restarted. The non-blocking check starts here.
    pub faults_until_us: u64,
    /// The bound within which every transaction must be decided once faults stop.
    pub settle_us: u64,
    /// Crash and restart every site at the end and check again (invariant 6).
    pub final_crash: bool,
    pub termination: Termination,
    /// Timeouts and retry bounds (its `replicas` and `termination` are overwritten
    /// from the fields above).
    pub proto: ProtoConfig,
    /// Checkpoint a site once its log holds more records than this (`None`: never).
    /// The group is durable only after its sync; the log is cut at its marker then,
    /// and crashes in between lose the unsynced part of it like any record.
    pub checkpoint_records_max: Option<usize>,
    /// How many replicas (the first ones) open batches: 1, or 2 (a client alternates
    /// between them, and resends the transactions a crashed opener left in flight to
    /// the other one). Two openers need the three-phase protocol.
    pub openers: u8,
    /// Sites get the link hints a transport gives ([`Coordinator::set_links_down`],
    /// [`Participant::set_links_down`]): shortly after each crash, restart, partition
    /// and heal, every live site learns which sites it cannot reach, and now and then a
    /// wrong site besides (a link down while its site runs).
    pub link_hints: bool,
}

/// How long the simulated client waits after its opener crashed before it resends
/// that opener's transactions to another opener.
const CLIENT_RESEND_DELAY_US: u64 = 2_000;
/// How often the client retries a resend while no other opener is up.
const CLIENT_RESEND_TRIES_MAX: u32 = 20;
/// How long after a fault the replicas' link hints arrive, at most (a transport sees
/// a closed socket at once, a silent peer only after its silence bound).
const LINK_HINT_DELAY_US_MAX: u64 = 3_000;
/// How often, per replica and hint, a site that is up is reported down anyway.
const LINK_HINT_WRONG_PER_MILLE: u32 = 100;

/// The checkpoint bounds seeds draw from (by seed bits, so that the rest of a seed's
/// configuration stays what it was): often tiny, so that runs checkpoint many times
/// and crashes land around checkpoints.
const CHECKPOINT_RECORDS_MAX_CHOICES: [Option<usize>; 4] = [None, Some(6), Some(12), Some(24)];

impl SimConfig {
    /// A fault-free configuration with 3 replicas and 3 participants.
    pub fn quiet(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            replicas: 3,
            participants: 3,
            accounts: 4,
            balance: 1_000,
            batches: 4,
            batch_txns_max: 4,
            batch_interval_us: 2_000,
            delay_us_min: 100,
            delay_us_max: 800,
            sync_us_min: 50,
            sync_us_max: 300,
            loss_per_mille: 0,
            dup_per_mille: 0,
            read_only_per_mille: 100,
            no_vote_per_mille: 100,
            resend_per_mille: 0,
            slow_site: None,
            step_crash_per_mille: 0,
            faults: Vec::new(),
            faults_until_us: 50_000,
            settle_us: 4_000_000,
            final_crash: true,
            termination: Termination::E3pc,
            proto: ProtoConfig::new(Vec::new()),
            checkpoint_records_max: None,
            openers: 1,
            link_hints: false,
        }
    }

    /// The configuration of seed `seed`: one in ten seeds is fault-free (and checks
    /// non-triviality); the others draw loss, duplication, delays, crashes, restarts,
    /// partitions (coordinator isolated, participant majority isolated, a region cut
    /// off) and a slow participant.
    pub fn random(seed: u64, termination: Termination) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x0005_1A7E_C0FF_EE00);
        let mut config = SimConfig::quiet(seed);
        config.termination = termination;
        config.checkpoint_records_max = CHECKPOINT_RECORDS_MAX_CHOICES
            [((seed >> 4) % CHECKPOINT_RECORDS_MAX_CHOICES.len() as u64) as usize];
        // Half the seeds run two openers, by a seed bit, so that the rest of a seed's
        // configuration stays what it was.
        config.openers = 1 + ((seed >> 7) & 1) as u8;
        // Half the seeds give the replicas link hints, by another seed bit.
        config.link_hints = (seed >> 8) & 1 == 1;
        config.participants = 3 + rng.below(2) as u8;
        config.batches = rng.range(3, 8) as u32;
        config.batch_txns_max = rng.range(1, 6) as u32;
        config.batch_interval_us = rng.range(500, 6_000);
        config.delay_us_max = rng.range(300, 3_000);
        config.sync_us_max = rng.range(100, 1_500);
        config.faults_until_us =
            config.batches as u64 * config.batch_interval_us + rng.range(5_000, 120_000);
        if seed % 10 == 0 {
            return config;
        }
        config.loss_per_mille = [0, 20, 60, 200][rng.below(4) as usize];
        config.dup_per_mille = [0, 20, 100][rng.below(3) as usize];
        config.step_crash_per_mille = [0, 0, 3, 15][rng.below(4) as usize];
        let sites = config.replicas + config.participants;
        if rng.chance(250) {
            config.slow_site = Some((
                config.replicas + rng.below(config.participants as u64) as u8,
                rng.range(2_000, 15_000),
            ));
        }
        let until = config.faults_until_us;
        for _ in 0..rng.below(4) {
            let site = rng.below(sites as u64) as u8;
            let at = rng.below(until);
            config.faults.push((at, Fault::Crash(site)));
            if rng.chance(700) {
                config
                    .faults
                    .push((at + rng.range(500, 60_000), Fault::Restart(site)));
            }
        }
        for _ in 0..rng.below(3) {
            let groups = random_partition(&mut rng, config.replicas, config.participants);
            let at = rng.below(until);
            config.faults.push((at, Fault::Partition(groups)));
            config
                .faults
                .push((at + rng.range(2_000, 80_000), Fault::Heal));
        }
        config.faults.sort_by_key(|(at, _)| *at);
        config
    }

    /// The protocol configuration every site of this run uses.
    pub fn proto(&self) -> ProtoConfig {
        let mut proto = self.proto.clone();
        proto.replicas = (0..self.replicas).map(SiteId).collect();
        proto.termination = self.termination;
        proto
    }
}

/// The seed's partition scenarios: the coordinator alone, a majority of participants
/// alone, or a random region (a mix of replicas and participants) cut off.
fn random_partition(rng: &mut Rng, replicas: u8, participants: u8) -> Vec<u8> {
    let sites = (replicas + participants) as usize;
    let mut groups = vec![0u8; sites];
    match rng.below(3) {
        0 => groups[0] = 1,
        1 => {
            let majority = participants / 2 + 1;
            let first = rng.below(participants as u64) as u8;
            for k in 0..majority {
                groups[(replicas + (first + k) % participants) as usize] = 1;
            }
        }
        _ => {
            for group in groups.iter_mut() {
                *group = rng.below(2) as u8;
            }
        }
    }
    groups
}

enum Node {
    Coordinator(Box<Coordinator>),
    Participant(Box<Participant<Bank>>),
    Down,
}

struct SiteSim {
    node: Node,
    /// The WAL image: encoded records, and the same records decoded, in order.
    wal: Vec<(u8, Vec<u8>)>,
    records: Vec<Record>,
    durable_len: usize,
    /// `wal.len()` when the current instance started: `seq s` is `wal[base + s - 1]`
    /// (negative once a checkpoint cut more records than the instance found).
    seq_base: i64,
    epoch: u32,
    timer_us: Option<u64>,
    /// Participant snapshots by checkpoint number; written durably before the group.
    snapshots: Vec<(u64, Vec<u8>)>,
    checkpoint_next: u64,
    /// The group appended last, until durable: (marker index, end index, number).
    pending_cut: Option<(usize, usize, u64)>,
    /// Records of the last group the log was cut at: the bound counts records beyond
    /// it, so a group larger than the bound does not set off the next checkpoint.
    carried_len: usize,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: u8,
        to: u8,
        part: Part,
    },
    Durable {
        site: u8,
        epoch: u32,
        upto: u64,
    },
    Submit,
    Fault(Fault),
    /// The client resends what opener `from` left in flight (`tries` so far).
    Resend {
        from: u8,
        tries: u32,
    },
    /// Every replica that is up learns which links are down (`link_hints`).
    LinkHints,
}

/// The simulated client: which opener holds each transaction whose outcome it has
/// not heard yet, so that it can resend those (same ids) when that opener crashes.
#[derive(Default)]
struct SimClient {
    /// Unanswered transactions: the opener they were last sent to, and the transfer.
    in_flight: BTreeMap<TxnId, (u8, Transfer)>,
    /// Each opened batch's transaction ids, in batch order (completions name indices).
    batches: HashMap<BatchId, Vec<TxnId>>,
}

/// One line of the trace kept for failure reports.
#[derive(Clone, Debug)]
struct TraceEntry {
    at_us: u64,
    site: u8,
    what: &'static str,
    peer: Option<u8>,
    batch: Option<BatchId>,
    detail: String,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9}us site {:>2} {:<10}",
            self.at_us, self.site, self.what
        )?;
        if let Some(peer) = self.peer {
            write!(f, " peer {peer:>2}")?;
        }
        if let Some(batch) = self.batch {
            write!(
                f,
                " batch {}.{}.{}",
                batch.opener_rank(),
                batch.incarnation(),
                batch.counter()
            )?;
        }
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

/// A failed run: the seed that reproduces it, the invariant, and the last events.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} broke invariant {}: {}",
            self.seed, self.violation.invariant, self.violation.message
        )?;
        writeln!(
            f,
            "reproduce with: tricommit sim --seeds 1 --from {}",
            self.seed
        )?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Counts of what a run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub events: u64,
    pub txns: u64,
    pub committed: u64,
    pub aborted: u64,
    pub crashes: u64,
    /// Recovery elections started (an `Elected` record a replica wrote for itself).
    pub elections: u64,
    /// FORGET parts sent: batches retired once every site durably decided them.
    pub forgets: u64,
    /// Checkpoint groups appended, and logs cut at one once it was durable.
    pub checkpoints: u64,
    pub log_cuts: u64,
    /// Transfers the workload resent under an earlier id.
    pub resends: u64,
    /// Resends a participant refused as held by another batch, answered with that
    /// batch's outcome (known) or unknown after the wait.
    pub held_known: u64,
    pub held_unknown: u64,
    /// Crashes of a site whose last checkpoint group was not durable yet.
    pub crashes_mid_checkpoint: u64,
    /// Batches opened by a replica other than `replicas[0]`.
    pub batches_second_opener: u64,
    /// Link hints given to a replica that reported at least one site down.
    pub link_hints_down: u64,
    /// Transactions the client resent to another opener after a crash.
    pub txns_resent: u64,
}

/// A message filter for scenario tests, called as `filter(from, to, part)` for every
/// part sent: `None` drops it, `Some(extra_us)` delivers it `extra_us` later than the
/// network would.
pub type Filter = Box<dyn FnMut(u8, u8, &Part) -> Option<u64>>;

/// The simulator.
pub struct Sim {
    pub config: SimConfig,
    proto: ProtoConfig,
    rng: Rng,
    /// Draws of the link hints, apart from `rng` so that they change no other draw.
    hint_rng: Rng,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    sites: Vec<SiteSim>,
    checker: Checker,
    groups: Vec<u8>,
    faults_active: bool,
    /// Some fault happened (crash, partition, loss, filtered part): invariant 3
    /// (non-triviality) only binds undisturbed runs.
    disturbed: bool,
    trace: VecDeque<TraceEntry>,
    filter: Option<Filter>,
    out: Output,
    next_txn: u64,
    /// The workload's recent transfers, for resends (at most `RESEND_HISTORY_MAX`).
    sent: VecDeque<(TxnId, Transfer)>,
    batches_left: u32,
    client: SimClient,
    pub stats: RunStats,
}

/// Recent transfers a resend may pick from.
const RESEND_HISTORY_MAX: usize = 64;

impl Sim {
    /// Builds the world at time 0: every site up with an empty log, the fault schedule
    /// queued and the first batch due.
    pub fn new(config: SimConfig) -> Sim {
        let proto = config.proto();
        let sites = (config.replicas + config.participants) as usize;
        let mut sim = Sim {
            rng: Rng::new(config.seed),
            hint_rng: Rng::new(config.seed ^ 0x0011_4E5D_0A11_0000),
            checker: match proto.protocol {
                Protocol::ThreePhase => Checker::new(config.termination, proto.replica_mask()),
                Protocol::TwoPhase => {
                    Checker::new(config.termination, proto.replica_mask()).two_phase(SiteId(0))
                }
            },
            proto,
            now_us: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            sites: Vec::with_capacity(sites),
            groups: vec![0; sites],
            faults_active: true,
            disturbed: false,
            trace: VecDeque::with_capacity(TRACE_ENTRIES_MAX),
            filter: None,
            out: Output::default(),
            next_txn: 1,
            sent: VecDeque::with_capacity(RESEND_HISTORY_MAX),
            batches_left: config.batches,
            client: SimClient::default(),
            stats: RunStats::default(),
            config,
        };
        for site in 0..sites as u8 {
            sim.sites.push(SiteSim {
                node: Node::Down,
                wal: Vec::new(),
                records: Vec::new(),
                durable_len: 0,
                seq_base: 0,
                epoch: 0,
                timer_us: None,
                snapshots: Vec::new(),
                checkpoint_next: 1,
                pending_cut: None,
                carried_len: 0,
            });
            sim.start_site(site);
        }
        for (at, fault) in sim.config.faults.clone() {
            sim.schedule(at, Event::Fault(fault));
        }
        if sim.batches_left > 0 {
            sim.schedule(0, Event::Submit);
        }
        sim
    }

    /// The current simulated time.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The checker (for tests that inspect what happened).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The first violation found so far.
    pub fn violation(&self) -> Option<&Violation> {
        self.checker.violation()
    }

    /// Installs (or removes) a message filter.
    pub fn set_filter(&mut self, filter: Option<Filter>) {
        self.filter = filter;
    }

    /// Turns random loss, duplication and the slow site on or off.
    pub fn set_faults_active(&mut self, active: bool) {
        self.faults_active = active;
    }

    /// A site's state for a transaction: asked of the running state machine, or, for
    /// a batch the site has retired (forgotten once decided everywhere), the last
    /// state its records gave (with attempt 0).
    pub fn txn_state(
        &self,
        site: u8,
        batch: BatchId,
        index: u32,
    ) -> Option<(crate::proto::State, u32)> {
        let live = match &self.sites.get(site as usize)?.node {
            Node::Coordinator(coordinator) => coordinator.txn_state(batch, index),
            Node::Participant(participant) => participant.txn_state(batch, index),
            Node::Down => return None,
        };
        live.or_else(|| {
            self.checker
                .live_state(SiteId(site), batch, index)
                .map(|state| (state, 0))
        })
    }

    /// Whether a running site holds `batch` in memory (it has not forgotten it).
    pub fn holds_batch(&self, site: u8, batch: BatchId) -> Option<bool> {
        match &self.sites.get(site as usize)?.node {
            Node::Coordinator(coordinator) => Some(coordinator.batch_ids().any(|b| b == batch)),
            Node::Participant(participant) => Some(participant.batch_ids().any(|b| b == batch)),
            Node::Down => None,
        }
    }

    /// How many batches a running site holds in memory.
    pub fn batch_count(&self, site: u8) -> Option<usize> {
        match &self.sites.get(site as usize)?.node {
            Node::Coordinator(coordinator) => Some(coordinator.batch_count()),
            Node::Participant(participant) => Some(participant.batch_count()),
            Node::Down => None,
        }
    }

    /// The bank of a running participant.
    pub fn bank(&self, site: u8) -> Option<&Bank> {
        match &self.sites.get(site as usize)?.node {
            Node::Participant(participant) => Some(participant.rm()),
            _ => None,
        }
    }

    /// True if the site is up.
    pub fn is_up(&self, site: u8) -> bool {
        !matches!(
            self.sites.get(site as usize).map(|s| &s.node),
            Some(Node::Down) | None
        )
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at_us, id)));
    }

    fn note(
        &mut self,
        site: u8,
        what: &'static str,
        peer: Option<u8>,
        batch: Option<BatchId>,
        detail: String,
    ) {
        if self.trace.len() == TRACE_ENTRIES_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(TraceEntry {
            at_us: self.now_us,
            site,
            what,
            peer,
            batch,
            detail,
        });
    }

    /// The last events, formatted (the same lines a failure report shows).
    pub fn trace(&self) -> Vec<String> {
        self.trace.iter().map(|entry| entry.to_string()).collect()
    }

    /// The failure report for the current violation, if any.
    pub fn failure(&self) -> Option<Failure> {
        let violation = self.checker.violation()?.clone();
        Some(Failure {
            seed: self.config.seed,
            violation,
            trace: self.trace.iter().map(|entry| entry.to_string()).collect(),
        })
    }

    pub(crate) fn fail(&mut self, invariant: u8, message: String) {
        self.checker.fail(invariant, message);
    }

    /// Processes events until `until_us` (inclusive), a violation, or nothing is left.
    /// Returns false if the event budget ran out.
    pub fn run_until(&mut self, until_us: u64) -> bool {
        while self.checker.violation().is_none() {
            let next_event = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_timer = self.next_timer();
            let next = match (next_event, next_timer) {
                (Some(event), Some((timer, _))) => event.min(timer),
                (Some(event), None) => event,
                (None, Some((timer, _))) => timer,
                (None, None) => break,
            };
            if next > until_us {
                break;
            }
            self.now_us = self.now_us.max(next);
            self.stats.events += 1;
            if self.stats.events > EVENTS_MAX {
                self.fail(7, format!("more than {EVENTS_MAX} events: livelock"));
                return false;
            }
            match next_timer {
                Some((timer, site)) if timer <= next_event.unwrap_or(u64::MAX) => {
                    self.fire_timer(site)
                }
                _ => self.pop_event(),
            }
        }
        self.now_us = self.now_us.max(until_us.min(self.now_us.max(until_us)));
        true
    }

    fn next_timer(&self) -> Option<(u64, u8)> {
        self.sites
            .iter()
            .enumerate()
            .filter_map(|(index, site)| site.timer_us.map(|at| (at, index as u8)))
            .min()
    }

    fn pop_event(&mut self) {
        let Some(Reverse((_, id))) = self.queue.pop() else {
            return;
        };
        let Some(event) = self.events.remove(&id) else {
            return;
        };
        match event {
            Event::Deliver { from, to, part } => self.deliver(from, to, part),
            Event::Durable { site, epoch, upto } => self.durable(site, epoch, upto),
            Event::Submit => self.submit_random_batch(),
            Event::Fault(fault) => self.inject(fault),
            Event::Resend { from, tries } => self.resend(from, tries),
            Event::LinkHints => self.give_link_hints(),
        }
    }

    /// After a fault: the replicas' link hints arrive a little later.
    fn schedule_link_hints(&mut self) {
        if self.config.link_hints {
            let at = self.now_us + self.hint_rng.below(LINK_HINT_DELAY_US_MAX + 1);
            self.schedule(at, Event::LinkHints);
        }
    }

    /// Tells every replica that is up which sites it cannot reach now (down, or in
    /// another partition group), with a wrong site now and then.
    fn give_link_hints(&mut self) {
        let sites = self.sites.len();
        for hinted in 0..sites {
            if matches!(self.sites[hinted].node, Node::Down) {
                continue;
            }
            let mut down = 0u64;
            for site in 0..sites {
                if matches!(self.sites[site].node, Node::Down)
                    || self.groups[site] != self.groups[hinted]
                {
                    down |= 1 << site;
                }
            }
            if self.hint_rng.chance(LINK_HINT_WRONG_PER_MILLE) {
                down |= 1 << self.hint_rng.below(sites as u64);
            }
            self.hint_links_down(hinted as u8, down);
        }
    }

    /// Tells `site` (a replica or a participant, if it is up) that its links to the
    /// sites of mask `down` are down now, rightly or not
    /// ([`Coordinator::set_links_down`], [`Participant::set_links_down`]).
    pub fn hint_links_down(&mut self, site: u8, down: u64) {
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        match self.sites.get_mut(site as usize).map(|site| &mut site.node) {
            Some(Node::Coordinator(coordinator)) => coordinator.set_links_down(now, down, &mut out),
            Some(Node::Participant(participant)) => participant.set_links_down(now, down),
            Some(Node::Down) | None => {
                self.out = out;
                return;
            }
        }
        self.out = out;
        // A site reported down while it is up and reachable is a false suspicion:
        // recovery may then abort what would have committed, so invariant 3
        // (non-triviality) no longer binds the run.
        let group = self.groups[site as usize];
        let wrong = (0..self.sites.len()).any(|site| {
            down & (1 << site) != 0
                && !matches!(self.sites[site].node, Node::Down)
                && self.groups[site] == group
        });
        self.disturbed |= wrong;
        self.stats.link_hints_down += u64::from(down != 0);
        self.note(site, "links", None, None, format!("down {down:#b}"));
        self.drain(site);
    }

    fn fire_timer(&mut self, site: u8) {
        let now = self.now_us;
        self.sites[site as usize].timer_us = None;
        let mut out = std::mem::take(&mut self.out);
        match &mut self.sites[site as usize].node {
            Node::Coordinator(coordinator) => coordinator.handle_timeout(now, &mut out),
            Node::Participant(participant) => participant.handle_timeout(now, &mut out),
            Node::Down => {}
        }
        self.out = out;
        self.note(site, "timeout", None, None, String::new());
        self.drain(site);
    }

    /// Applies a fault now.
    pub fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Crash(site) => self.crash(site),
            Fault::Restart(site) => self.restart(site),
            Fault::Partition(groups) => {
                self.note(0, "partition", None, None, format!("{groups:?}"));
                if groups.len() == self.groups.len() {
                    self.disturbed |= groups.iter().any(|&group| group != groups[0]);
                    self.groups = groups;
                }
                self.schedule_link_hints();
            }
            Fault::Heal => {
                self.note(0, "heal", None, None, String::new());
                self.groups.iter_mut().for_each(|group| *group = 0);
                self.schedule_link_hints();
            }
        }
    }

    fn start_site(&mut self, site: u8) {
        let id = SiteId(site);
        let mut out = std::mem::take(&mut self.out);
        let node = if site < self.config.replicas {
            Coordinator::new(self.proto.clone(), id, &mut out)
                .map(|c| Node::Coordinator(Box::new(c)))
        } else {
            let bank = Bank::new(self.config.accounts, self.config.balance);
            Participant::new(self.proto.clone(), id, bank).map(|p| Node::Participant(Box::new(p)))
        };
        self.out = out;
        match node {
            Ok(node) => self.sites[site as usize].node = node,
            Err(error) => self.fail(5, format!("site {site} failed to start: {error}")),
        }
        self.drain(site);
    }

    /// Crashes a site: it keeps its synced records and a random prefix of the rest.
    pub fn crash(&mut self, site: u8) {
        let Some(state) = self.sites.get(site as usize) else {
            return;
        };
        if matches!(state.node, Node::Down) {
            return;
        }
        let unsynced = state.wal.len() - state.durable_len;
        let kept = self.rng.below(unsynced as u64 + 1) as usize;
        self.crash_keeping(site, kept);
    }

    /// Crashes a site as the engine's io_uring WAL loses it: only its synced records
    /// survive, every unsynced append is gone (an unforced COMMIT included).
    pub fn crash_losing_unsynced(&mut self, site: u8) {
        self.crash_keeping(site, 0);
    }

    /// Crashes a site keeping its synced records and the first `kept` unsynced ones.
    fn crash_keeping(&mut self, site: u8, kept: usize) {
        let Some(state) = self.sites.get_mut(site as usize) else {
            return;
        };
        if matches!(state.node, Node::Down) {
            return;
        }
        let unsynced = state.wal.len() - state.durable_len;
        let keep = state.durable_len + kept.min(unsynced);
        let state = &mut self.sites[site as usize];
        let durable_before = state.durable_len;
        state.wal.truncate(keep);
        state.records.truncate(keep);
        state.durable_len = keep;
        state.node = Node::Down;
        state.epoch += 1;
        state.timer_us = None;
        let mid_checkpoint = state.pending_cut.take().is_some();
        let survivors = state.records.clone();
        self.checker.on_crash(SiteId(site), &survivors);
        self.stats.crashes += 1;
        self.stats.crashes_mid_checkpoint += u64::from(mid_checkpoint);
        self.disturbed = true;
        self.schedule_link_hints();
        let lost = unsynced - (keep - durable_before);
        let opener_crashed = site < self.openers();
        if opener_crashed && self.client.in_flight.values().any(|(at, _)| *at == site) {
            let at = self.now_us + CLIENT_RESEND_DELAY_US;
            self.schedule(
                at,
                Event::Resend {
                    from: site,
                    tries: 0,
                },
            );
        }
        self.note(
            site,
            "crash",
            None,
            None,
            format!("kept {keep} records, lost {lost} unsynced"),
        );
    }

    /// Restarts a crashed site from its log (decoded from bytes, checking the codec).
    pub fn restart(&mut self, site: u8) {
        let Some(state) = self.sites.get(site as usize) else {
            return;
        };
        if !matches!(state.node, Node::Down) {
            return;
        }
        let mut decoded = Vec::with_capacity(state.wal.len());
        for (index, (kind, bytes)) in state.wal.iter().enumerate() {
            match Record::decode(*kind, bytes) {
                Ok(record) if record == state.records[index] => decoded.push(record),
                other => {
                    let message =
                        format!("site {site} record {index} does not round-trip: {other:?}");
                    self.fail(5, message);
                    return;
                }
            }
        }
        let id = SiteId(site);
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        let node = if site < self.config.replicas {
            Coordinator::recover(self.proto.clone(), id, &decoded, now, &mut out)
                .map(|c| Node::Coordinator(Box::new(c)))
        } else {
            let bank = Bank::new(self.config.accounts, self.config.balance);
            let snapshot = self.snapshot_for(site, &decoded);
            Participant::recover_checkpointed(
                self.proto.clone(),
                id,
                bank,
                snapshot.as_deref(),
                &decoded,
                now,
            )
            .map(|p| Node::Participant(Box::new(p)))
        };
        self.out = out;
        let state = &mut self.sites[site as usize];
        state.seq_base = state.wal.len() as i64;
        state.durable_len = state.wal.len();
        match node {
            Ok(node) => state.node = node,
            Err(error) => {
                self.fail(5, format!("site {site} failed to recover: {error}"));
                return;
            }
        }
        self.note(
            site,
            "restart",
            None,
            None,
            format!("{} records", decoded.len()),
        );
        self.schedule_link_hints();
        self.drain(site);
    }

    fn deliver(&mut self, from: u8, to: u8, part: Part) {
        let batch = Some(part.batch());
        if self.groups[from as usize] != self.groups[to as usize] {
            self.note(to, "cut", Some(from), batch, part.name().to_string());
            return;
        }
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        let name = part.name();
        let delivered = match &mut self.sites[to as usize].node {
            Node::Coordinator(coordinator) => {
                coordinator.handle_message(now, SiteId(from), part, &mut out);
                true
            }
            Node::Participant(participant) => {
                participant.handle_message(now, SiteId(from), part, &mut out);
                true
            }
            Node::Down => false,
        };
        self.out = out;
        self.note(
            to,
            if delivered { "recv" } else { "recv-down" },
            Some(from),
            batch,
            name.to_string(),
        );
        self.drain(to);
    }

    fn durable(&mut self, site: u8, epoch: u32, upto: u64) {
        let state = &mut self.sites[site as usize];
        if state.epoch != epoch || matches!(state.node, Node::Down) {
            return;
        }
        let new_len = ((state.seq_base + upto as i64).max(0) as usize).min(state.wal.len());
        let old_len = state.durable_len;
        if new_len > old_len {
            state.durable_len = new_len;
            let newly: Vec<Record> = state.records[old_len..new_len].to_vec();
            for record in &newly {
                self.checker.on_durable(SiteId(site), record);
            }
        }
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        match &mut self.sites[site as usize].node {
            Node::Coordinator(coordinator) => {
                coordinator.handle_durable(now, AppendSeq(upto), &mut out)
            }
            Node::Participant(participant) => {
                participant.handle_durable(now, AppendSeq(upto), &mut out)
            }
            Node::Down => {}
        }
        self.out = out;
        self.cut_at_durable_checkpoint(site);
        self.drain(site);
    }

    /// The snapshot of the checkpoint `records` start at, if they start at one.
    fn snapshot_for(&self, site: u8, records: &[Record]) -> Option<Vec<u8>> {
        let number = crate::proto::checkpoint::plan(records)
            .ok()?
            .checkpoint?
            .number;
        let state = &self.sites[site as usize];
        state
            .snapshots
            .iter()
            .find(|(taken, _)| *taken == number)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Checkpoints the site if its log outgrew the bound and no group is pending:
    /// snapshot first (durable at once, like the engine's fsynced file), then the group
    /// through `drain`, which may crash the site part-way like any step.
    fn maybe_checkpoint(&mut self, site: u8) {
        let Some(max) = self.config.checkpoint_records_max else {
            return;
        };
        let state = &mut self.sites[site as usize];
        if state.pending_cut.is_some() || state.wal.len() <= max + state.carried_len {
            return;
        }
        let number = state.checkpoint_next;
        let mut out = std::mem::take(&mut self.out);
        match &mut state.node {
            Node::Down => {
                self.out = out;
                return;
            }
            Node::Coordinator(coordinator) => {
                coordinator.checkpoint(number, &mut out);
            }
            Node::Participant(participant) => {
                if let Some(bytes) = crate::proto::ResourceManager::snapshot(participant.rm()) {
                    state.snapshots.push((number, bytes));
                }
                participant.checkpoint(number, &mut out);
            }
        }
        state.checkpoint_next += 1;
        let marker = state.wal.len();
        state.pending_cut = Some((marker, marker + out.appends.len(), number));
        self.out = out;
        self.stats.checkpoints += 1;
        self.note(site, "checkpoint", None, None, format!("number {number}"));
        self.drain(site);
    }

    /// Once the pending group is durable, drops every record before its marker and
    /// the snapshots older than it.
    fn cut_at_durable_checkpoint(&mut self, site: u8) {
        let state = &mut self.sites[site as usize];
        let Some((marker, end, number)) = state.pending_cut else {
            return;
        };
        if state.durable_len < end {
            return;
        }
        state.wal.drain(..marker);
        state.records.drain(..marker);
        state.durable_len -= marker;
        state.seq_base -= marker as i64;
        state.snapshots.retain(|(taken, _)| *taken >= number);
        state.pending_cut = None;
        state.carried_len = end - marker;
        self.stats.log_cuts += 1;
        self.note(site, "cut", None, None, format!("{marker} records"));
    }

    /// Carries out a site's output: log, sync, send, complete; then re-arms its timer.
    fn drain(&mut self, site: u8) {
        let mut out = std::mem::take(&mut self.out);
        let id = SiteId(site);
        for (seq, record) in out.appends.drain(..) {
            let state = &mut self.sites[site as usize];
            if seq.0 as i64 != state.wal.len() as i64 - state.seq_base + 1 {
                self.checker
                    .fail(5, format!("site {site} append seq {} is not dense", seq.0));
            }
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            let state = &mut self.sites[site as usize];
            state.wal.push((record.kind(), bytes));
            state.records.push(record.clone());
            self.checker.on_append(id, &record);
            if matches!(record, Record::Elected { by, .. } if by == id) {
                self.stats.elections += 1;
            }
            self.note(
                site,
                "append",
                None,
                record.batch(),
                describe_record(&record),
            );
        }
        if self.faults_active
            && self.rng.chance(self.config.step_crash_per_mille)
            && site < self.sites.len() as u8
        {
            // Crash in the middle of a step: its records are written (not synced),
            // its messages never leave.
            out.clear();
            self.out = out;
            self.crash(site);
            if self.rng.chance(800) {
                let at = self.now_us + self.rng.range(500, 40_000);
                self.schedule(at, Event::Fault(Fault::Restart(site)));
            }
            return;
        }
        if let Some(upto) = out.sync_upto.take() {
            let delay = self
                .rng
                .range(self.config.sync_us_min, self.config.sync_us_max);
            let epoch = self.sites[site as usize].epoch;
            self.schedule(
                self.now_us + delay,
                Event::Durable {
                    site,
                    epoch,
                    upto: upto.0,
                },
            );
        }
        for outgoing in std::mem::take(&mut out.sends) {
            self.checker.on_send(id, &outgoing.part);
            if matches!(outgoing.part, Part::Forget { .. }) {
                self.stats.forgets += 1;
            }
            self.transmit(site, outgoing.to.0, outgoing.part);
        }
        for completion in out.completions.drain(..) {
            self.checker.on_complete(&completion);
            for (_, _, found) in &completion.held {
                match found {
                    crate::proto::ids::HeldOutcome::Known(_) => self.stats.held_known += 1,
                    _ => self.stats.held_unknown += 1,
                }
            }
            if let Some(ids) = self.client.batches.get(&completion.batch) {
                for index in completion.txns.iter() {
                    if let Some(id) = ids.get(index as usize) {
                        self.client.in_flight.remove(id);
                    }
                }
            }
            match completion.outcome {
                Outcome::Commit => self.stats.committed += completion.txns.count() as u64,
                Outcome::Abort => self.stats.aborted += completion.txns.count() as u64,
            }
            let detail = format!(
                "{:?} {:?}",
                completion.outcome,
                completion.txns.iter().collect::<Vec<_>>()
            );
            self.note(site, "complete", None, Some(completion.batch), detail);
        }
        out.clear();
        self.out = out;
        self.sites[site as usize].timer_us = match &self.sites[site as usize].node {
            Node::Coordinator(coordinator) => coordinator.poll_timeout(),
            Node::Participant(participant) => participant.poll_timeout(),
            Node::Down => None,
        }
        .map(|at| at.max(self.now_us));
        self.maybe_checkpoint(site);
    }

    fn transmit(&mut self, from: u8, to: u8, part: Part) {
        if to as usize >= self.sites.len() || to == from {
            return;
        }
        let batch = Some(part.batch());
        let mut extra_us = 0;
        if let Some(filter) = self.filter.as_mut() {
            match filter(from, to, &part) {
                Some(extra) => extra_us = extra,
                None => {
                    self.disturbed = true;
                    self.note(from, "filtered", Some(to), batch, describe_part(&part));
                    return;
                }
            }
        }
        let mut copies = 1;
        if self.faults_active {
            if self.rng.chance(self.config.loss_per_mille) {
                self.disturbed = true;
                self.note(from, "lost", Some(to), batch, part.name().to_string());
                return;
            }
            if self.rng.chance(self.config.dup_per_mille) {
                copies = 2;
            }
        }
        self.note(from, "send", Some(to), batch, describe_part(&part));
        for copy in 0..copies {
            let mut delay = self
                .rng
                .range(self.config.delay_us_min, self.config.delay_us_max)
                + extra_us;
            if let Some((slow, extra)) = self.config.slow_site {
                if self.faults_active && (slow == from || slow == to) {
                    delay += extra;
                }
            }
            let _ = copy;
            self.schedule(
                self.now_us + delay,
                Event::Deliver {
                    from,
                    to,
                    part: part.clone(),
                },
            );
        }
    }

    /// Submits one random batch of transfers at the active coordinator (if it is up),
    /// and schedules the next.
    fn submit_random_batch(&mut self) {
        if self.batches_left > 0 {
            self.batches_left -= 1;
            if self.batches_left > 0 {
                let next = self.now_us + self.config.batch_interval_us;
                self.schedule(next, Event::Submit);
            }
        }
        let count = self.rng.range(1, self.config.batch_txns_max as u64) as usize;
        let mut txns = Vec::with_capacity(count);
        for _ in 0..count {
            let resend = self.config.resend_per_mille > 0
                && !self.sent.is_empty()
                && self.rng.chance(self.config.resend_per_mille);
            if resend {
                txns.push(self.random_resend());
            } else {
                let transfer = self.random_transfer();
                txns.push((self.fresh_txn(), transfer));
            }
        }
        // Two openers: the client alternates between them (no random draw, so a
        // one-opener seed replays as before), and uses the other while one is down.
        let openers = self.openers();
        let preferred = (self.batches_left % openers as u32) as u8;
        let opener = (0..openers)
            .map(|k| (preferred + k) % openers)
            .find(|&site| !matches!(self.sites[site as usize].node, Node::Down))
            .unwrap_or(preferred);
        if self.submit_with_ids(opener, &txns).is_some() {
            for (txn, transfer) in txns {
                if self.sent.len() == RESEND_HISTORY_MAX {
                    self.sent.pop_front();
                }
                self.sent.push_back((txn, transfer));
            }
        }
    }

    fn fresh_txn(&mut self) -> TxnId {
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        txn
    }

    /// A recent transfer again under its id: the same legs, or one time in four an
    /// amount one higher (other legs, which the participants must tell apart).
    fn random_resend(&mut self) -> (TxnId, Transfer) {
        let pick = self.rng.below(self.sent.len() as u64) as usize;
        let (txn, mut transfer) = self.sent[pick].clone();
        if self.rng.chance(250) {
            for leg in &mut transfer.legs {
                leg.delta += leg.delta.signum();
            }
        }
        self.stats.resends += 1;
        (txn, transfer)
    }

    /// How many replicas open batches in this run.
    fn openers(&self) -> u8 {
        if self.proto.protocol == Protocol::TwoPhase {
            // Two-phase commit's checker follows one coordinator.
            return 1;
        }
        self.config.openers.clamp(1, self.config.replicas.max(1))
    }

    /// The client resends (same ids) what opener `from` left in flight to the next
    /// opener that is up, or tries again later.
    fn resend(&mut self, from: u8, tries: u32) {
        let openers = self.openers();
        let target = (1..openers)
            .map(|k| (from + k) % openers)
            .find(|&site| !matches!(self.sites[site as usize].node, Node::Down));
        let txns: Vec<(TxnId, Transfer)> = self
            .client
            .in_flight
            .iter()
            .filter(|(_, (at, _))| *at == from)
            .map(|(txn, (_, transfer))| (*txn, transfer.clone()))
            .collect();
        if txns.is_empty() {
            return;
        }
        let Some(target) = target else {
            if tries < CLIENT_RESEND_TRIES_MAX {
                let at = self.now_us + CLIENT_RESEND_DELAY_US;
                let tries = tries + 1;
                self.schedule(at, Event::Resend { from, tries });
            }
            return;
        };
        self.stats.txns_resent += txns.len() as u64;
        self.note(
            target,
            "resend",
            Some(from),
            None,
            format!("{} txns", txns.len()),
        );
        self.submit_with_ids(target, &txns);
    }

    fn random_transfer(&mut self) -> Transfer {
        let participants = self.config.participants as u64;
        let replicas = self.config.replicas;
        let first = self.rng.below(participants) as u8;
        let second = (first + 1 + self.rng.below(participants - 1) as u8) % participants as u8;
        let accounts = self.config.accounts as u64;
        let amount = self.rng.range(1, (self.config.balance / 2).max(1) as u64) as i64;
        let mut legs = vec![
            Leg {
                site: replicas + first,
                account: self.rng.below(accounts) as u32,
                delta: -amount,
                force_no: false,
            },
            Leg {
                site: replicas + second,
                account: self.rng.below(accounts) as u32,
                delta: amount,
                force_no: false,
            },
        ];
        if participants > 2 && self.rng.chance(self.config.read_only_per_mille) {
            let third = (0..participants as u8)
                .find(|p| *p != first && *p != second)
                .unwrap_or(first);
            legs.push(Leg {
                site: replicas + third,
                account: 0,
                delta: 0,
                force_no: false,
            });
        }
        if self.rng.chance(self.config.no_vote_per_mille) {
            let leg = self.rng.below(legs.len() as u64) as usize;
            legs[leg].force_no = true;
        }
        Transfer { legs }
    }

    /// Submits a batch of transfers at site 0 now. Returns the batch id, or `None` if
    /// site 0 is down or refused it.
    pub fn submit(&mut self, transfers: &[Transfer]) -> Option<BatchId> {
        let txns: Vec<(TxnId, Transfer)> = transfers
            .iter()
            .map(|transfer| (self.fresh_txn(), transfer.clone()))
            .collect();
        self.submit_with_ids(0, &txns)
    }

    /// Submits a batch at site 0 now with the given ids (a resend reuses an id), as
    /// [`Sim::submit`] does.
    pub fn submit_as(&mut self, txns: &[(TxnId, Transfer)]) -> Option<BatchId> {
        self.submit_with_ids(0, txns)
    }

    /// Submits a batch of transfers with the given ids at replica `opener` now, and
    /// records them as in flight at it. Returns the batch id, or `None` if `opener` is
    /// down or refused it.
    pub fn submit_with_ids(&mut self, opener: u8, txns: &[(TxnId, Transfer)]) -> Option<BatchId> {
        let input = self.batch_input(txns);
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        let Some(site) = self.sites.get_mut(opener as usize) else {
            self.out = out;
            return None;
        };
        let result = match &mut site.node {
            Node::Coordinator(coordinator) => Some(coordinator.submit(now, input, &mut out)),
            _ => None,
        };
        self.out = out;
        let batch = match result {
            Some(Ok(batch)) => batch,
            Some(Err(error)) => {
                self.fail(5, format!("submit refused: {error}"));
                return None;
            }
            None => return None,
        };
        self.stats.txns += txns.len() as u64;
        self.stats.batches_second_opener += u64::from(opener != 0);
        self.client
            .batches
            .insert(batch, txns.iter().map(|(txn, _)| *txn).collect());
        for (txn, transfer) in txns {
            self.client
                .in_flight
                .insert(*txn, (opener, transfer.clone()));
        }
        self.note(
            opener,
            "submit",
            None,
            Some(batch),
            format!("{} txns", txns.len()),
        );
        self.drain(opener);
        Some(batch)
    }

    fn batch_input(&mut self, txns: &[(TxnId, Transfer)]) -> BatchInput {
        let mut input = BatchInput::default();
        let mut per_site: Vec<Vec<Op>> = vec![Vec::new(); self.sites.len()];
        for &(txn, ref transfer) in txns {
            let mut mask = 0u64;
            for leg in &transfer.legs {
                mask |= SiteId(leg.site).bit();
                if let Some(ops) = per_site.get_mut(leg.site as usize) {
                    ops.push(bank_op(txn, leg.account, leg.delta, leg.force_no));
                }
            }
            input.txns.push(txn);
            input.members.push(mask);
        }
        for (site, ops) in per_site.into_iter().enumerate() {
            if !ops.is_empty() {
                input.ops.push((SiteId(site as u8), ops));
            }
        }
        input
    }

    /// Runs the whole schedule, stops the faults, and checks that everything is decided
    /// within `settle_us`; then (if configured) crashes and restarts every site and
    /// checks again; finally checks the outcomes against the clients and the banks.
    pub fn run(&mut self) -> Result<(), Failure> {
        let quiet_from = self.config.faults_until_us;
        self.run_until(quiet_from);
        self.finish()
    }

    /// Ends the faults now (heal, restart, no loss, no filter), then checks
    /// non-blocking, the final crash and the outcomes, as [`Sim::run`] does after its
    /// schedule. Scenario tests call it after their script.
    pub fn finish(&mut self) -> Result<(), Failure> {
        self.filter = None;
        self.stop_faults();
        let quiet_from = self.now_us;
        let undisturbed = !self.disturbed && self.config.slow_site.is_none();
        self.settle_and_check(quiet_from);
        if self.config.final_crash && self.checker.violation().is_none() {
            for site in 0..self.sites.len() as u8 {
                self.crash(site);
            }
            for site in 0..self.sites.len() as u8 {
                self.restart(site);
            }
            let from = self.now_us;
            self.settle_and_check(from);
        }
        if self.checker.violation().is_none() {
            self.check_outcomes(undisturbed);
        }
        match self.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Ends every fault: heal, restart the crashed, no loss, no slow site.
    pub fn stop_faults(&mut self) {
        self.faults_active = false;
        self.inject(Fault::Heal);
        for site in 0..self.sites.len() as u8 {
            self.restart(site);
        }
        let pending: Vec<u64> = self.queue.iter().map(|Reverse((_, id))| *id).collect();
        for id in pending {
            if matches!(self.events.get(&id), Some(Event::Fault(_))) {
                self.events.remove(&id);
            }
        }
    }

    /// Invariant 7: from `from_us`, a connected, stable system decides every open
    /// transaction within `settle_us`.
    pub fn settle_and_check(&mut self, from_us: u64) {
        self.run_until(from_us + self.config.settle_us);
        let pending = self.checker.pending();
        if let Some((site, batch, index, state)) = pending.first() {
            let message = format!(
                "{} transaction(s) still open {}us after faults stopped, e.g. site {site} holds {batch:?}#{index} in {state:?}",
                pending.len(),
                self.config.settle_us
            );
            self.fail(7, message);
        }
    }

    /// Invariants 3, 6 and 8 at the end of a run.
    pub fn check_outcomes(&mut self, undisturbed: bool) {
        let descs: Vec<_> = self.checker.descs().cloned().collect();
        let quiet = undisturbed;
        for desc in &descs {
            for index in 0..desc.len() {
                self.check_txn_outcome(desc, index, quiet);
            }
        }
        self.check_banks(&descs);
    }

    fn check_txn_outcome(&mut self, desc: &crate::proto::DescriptorRef, index: u32, quiet: bool) {
        let key = (desc.batch, index);
        let members = desc.members[index as usize];
        let all_yes = crate::proto::types::sites_of(members).all(|site| {
            matches!(
                self.checker.first_vote(desc.batch, index, site),
                Some(Vote::Yes | Vote::ReadOnly)
            )
        });
        let committed = self.checker.ever(key, Outcome::Commit);
        if quiet && all_yes && !committed {
            self.fail(
                3,
                format!(
                    "fault-free run: {:?}#{index} got only yes votes but did not commit",
                    desc.batch
                ),
            );
        }
        if let Some(outcome) = self.checker.acked().get(&key).copied() {
            let want = if outcome == Outcome::Commit {
                crate::proto::State::Commit
            } else {
                crate::proto::State::Abort
            };
            for site in crate::proto::types::sites_of(members) {
                if !self.checker.durable_yes(site, desc.batch, index) {
                    continue;
                }
                let state = self
                    .txn_state(site.0, desc.batch, index)
                    .map(|(state, _)| state);
                if state != Some(want) {
                    self.fail(
                        6,
                        format!(
                            "acknowledged {outcome:?} of {:?}#{index} but site {} holds {state:?}",
                            desc.batch, site.0
                        ),
                    );
                }
            }
        }
    }

    /// Invariant 8: money is conserved, no balance is negative, and each transfer is
    /// applied on every bank that voted yes on it, or on none.
    fn check_banks(&mut self, descs: &[crate::proto::DescriptorRef]) {
        let participants = self.config.replicas..self.config.replicas + self.config.participants;
        let mut total = 0i64;
        let expected =
            self.config.balance * self.config.accounts as i64 * self.config.participants as i64;
        for site in participants.clone() {
            let Some(bank) = self.bank(site) else {
                self.fail(8, format!("participant {site} is down at the end"));
                return;
            };
            let negative = bank.balances().iter().find(|&&b| b < 0).copied();
            total += bank.balances().iter().sum::<i64>();
            if let Some(balance) = negative {
                self.fail(
                    8,
                    format!("participant {site} has a negative balance {balance}"),
                );
            }
        }
        if total != expected {
            self.fail(8, format!("money is not conserved: {total} != {expected}"));
        }
        // An id may be in several batches (resends): it must commit in at most one,
        // and a bank applies it exactly if that instance committed with its yes vote.
        let mut commits: BTreeMap<TxnId, u32> = BTreeMap::new();
        let mut expected: BTreeMap<(TxnId, u8), bool> = BTreeMap::new();
        for desc in descs {
            for (index, txn) in desc.txns.iter().enumerate() {
                let committed = self
                    .checker
                    .ever((desc.batch, index as u32), Outcome::Commit);
                *commits.entry(*txn).or_default() += u32::from(committed);
                for site in crate::proto::types::sites_of(desc.members[index]) {
                    let voted_yes =
                        self.checker.first_vote(desc.batch, index as u32, site) == Some(Vote::Yes);
                    *expected.entry((*txn, site.0)).or_default() |= committed && voted_yes;
                }
            }
        }
        if let Some((txn, count)) = commits.iter().find(|(_, count)| **count > 1) {
            self.fail(8, format!("{txn:?} committed in {count} batches"));
        }
        for ((txn, site), should) in expected {
            let applied = self
                .bank(site)
                .is_some_and(|bank| bank.applied().contains(&txn));
            if applied != should {
                self.fail(
                    8,
                    format!("{txn:?} applied={applied} at {site}, expected {should}"),
                );
            }
        }
    }
}

/// One leg of a transfer: an operation on one account of one participant.
#[derive(Clone, Debug)]
pub struct Leg {
    pub site: u8,
    pub account: u32,
    /// Negative debits, positive credits, zero is read-only.
    pub delta: i64,
    /// Makes the participant vote no on this leg.
    pub force_no: bool,
}

/// One transaction of the workload: legs on distinct participants whose deltas sum
/// to zero, so that committed transfers conserve money.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub legs: Vec<Leg>,
}

impl Transfer {
    /// Moves `amount` from account 0 of `from` to account 0 of `to`.
    pub fn simple(from: u8, to: u8, amount: i64) -> Transfer {
        Transfer::of(&[(from, -amount), (to, amount)])
    }

    /// Legs `(site, delta)` on account 0 of each site.
    pub fn of(legs: &[(u8, i64)]) -> Transfer {
        let legs = legs
            .iter()
            .map(|&(site, delta)| Leg {
                site,
                account: 0,
                delta,
                force_no: false,
            })
            .collect();
        Transfer { legs }
    }

    /// Makes the participant `site` vote no.
    pub fn with_no_at(mut self, site: u8) -> Transfer {
        self.legs
            .iter_mut()
            .filter(|leg| leg.site == site)
            .for_each(|leg| leg.force_no = true);
        self
    }
}

fn describe_record(record: &Record) -> String {
    match record {
        Record::Incarnation { number } => format!("INCARNATION {number}"),
        Record::Begin { desc } => format!("BEGIN {} txns", desc.len()),
        Record::Prepared { votes, .. } => format!("PREPARED {votes:?}"),
        Record::Elected { elected, by, .. } => format!("ELECTED {elected} by {}", by.0),
        Record::Transition {
            state,
            attempt,
            txns,
            ..
        } => {
            format!("{state:?}@{attempt} {:?}", txns.iter().collect::<Vec<_>>())
        }
        Record::Checkpoint {
            number, records, ..
        } => format!("CHECKPOINT {number} ({records} carried)"),
        Record::CarriedBatch { states, .. } => format!("CARRIED {states:?}"),
        Record::CarriedRetired { ranges } => format!("CARRIED-RETIRED {ranges:?}"),
        Record::CarriedIds { entries } => format!("CARRIED-IDS {}", entries.len()),
    }
}

fn describe_part(part: &Part) -> String {
    let set = |s: &crate::proto::TxnSet| s.iter().collect::<Vec<_>>();
    match part {
        Part::Votes {
            yes, read_only, no, ..
        } => format!(
            "VOTES yes {:?} ro {:?} no {:?}",
            set(yes),
            set(read_only),
            no.iter().map(|n| n.0).collect::<Vec<_>>()
        ),
        Part::Round {
            elected,
            pre_commit,
            pre_abort,
            ..
        } => format!(
            "ROUND@{elected} pc {:?} pa {:?}",
            set(pre_commit),
            set(pre_abort)
        ),
        Part::RoundAck {
            elected,
            pre_commit,
            pre_abort,
            ..
        } => format!(
            "ROUND-ACK@{elected} pc {:?} pa {:?}",
            set(pre_commit),
            set(pre_abort)
        ),
        Part::Decide { commit, abort, .. } => {
            format!("DECIDE commit {:?} abort {:?}", set(commit), set(abort))
        }
        Part::Elect { elected, .. } => format!("ELECT {elected}"),
        Part::ElectAck {
            elected, states, ..
        } => format!("ELECT-ACK {elected} {states:?}"),
        Part::Reject { elected, .. } => format!("REJECT {elected}"),
        other => other.name().to_string(),
    }
}
