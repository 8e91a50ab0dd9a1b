//! The coordinator replica role. Any replica opens batches and drives their normal
//! path (PREPARE, PRE-COMMIT at election 1, COMMIT once a quorum of each transaction's
//! commit group is durably PC); the batch id names its opener (see [`BatchId`]), so
//! concurrent openers never collide and need no leader. Every replica also witnesses
//! the rounds of batches the others opened, and runs E3PC
//! recovery for a batch whose decision is late: collect under a raised `last_elected`,
//! decide by the rule of DESIGN §2, run a PRE-COMMIT or PRE-ABORT round, decide on a
//! quorum of acknowledgements.

use std::sync::Arc;

use super::ids::{HeldOutcome, HeldWaits};
use super::member::{desc_of, Log, Member, RoundSync};
use super::msg::{Part, ELECTED_INITIAL};
use super::predict::Predictor;
use super::record::Record;
use super::rm::Reason;
use super::types::{
    is_quorum, sites_of, AppendSeq, BatchId, BatchMap, Descriptor, MaskClasses, Outcome,
    RetiredSet, SiteId, State, TxnSet, BATCH_TXNS_MAX, SITES_MAX,
};
use super::{BatchInput, Completion, Output, ProtoConfig, ProtoError, Protocol, Termination};

/// A VOTES part's no votes with their reasons, and the holders of its `HELD_BY_BATCH`
/// refusals.
type NoVotes<'a> = (&'a [(u32, Reason)], &'a [(u32, BatchId, State)]);
/// Why aborts happened, for the clients: reasons, and resends' holding batches.
type AbortCauses = (Vec<(u32, Reason)>, Vec<(u32, BatchId, HeldOutcome)>);

/// A coordinator replica.
#[derive(Clone)]
pub struct Coordinator {
    config: ProtoConfig,
    me: SiteId,
    /// Index in `config.replicas`: recovery priority and the stagger of its timers.
    rank: u32,
    replica_mask: u64,
    log: Log,
    incarnation: u32,
    /// PREPAREs wait for the `Incarnation` record, so that no batch id is reused.
    incarnation_seq: u64,
    next_counter: u32,
    batches: BatchMap<CoordBatch>,
    /// Batches forgotten after every site was done: anything about them is ignored.
    retired: RetiredSet,
    /// Batches that may be settled here: DONE (or, at the batch's opener, FORGET)
    /// waits for durability and for the other sites.
    awaiting_done: Vec<BatchId>,
    /// Overlap: batches whose PRE-COMMIT round left before this replica's own PC
    /// record was durable; their quorums are checked again once it is. At most one
    /// entry per batch in the normal path.
    awaiting_own_pc: Vec<BatchId>,
    /// Overlap: the participants' vote latencies, which set each batch's vote timeout.
    predictor: Predictor,
    /// Resends refused as `HELD_BY_BATCH` whose holding batch's outcome is not known
    /// here yet: their completions wait (see [`super::ids`]).
    held_waits: HeldWaits,
    /// Sites whose link the driver reported down (see [`Coordinator::set_links_down`]):
    /// a hint for liveness only. Recovery starts early for batches such a site drives,
    /// and a collect stops waiting for its answer. Safety never reads it: every
    /// decision still needs the quorums of DESIGN §2, and a wrong hint costs only an
    /// election.
    links_down: u64,
}

/// What this replica drives for one batch, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// The normal path at election 1: votes come in, PRE-COMMIT goes out per txn.
    Normal,
    /// Recovery: collecting states under a raised election.
    Collect,
    /// Recovery: a PRE-COMMIT / PRE-ABORT round at attempt `elected`.
    Round,
}

#[derive(Debug, Clone)]
struct Drive {
    elected: u32,
    phase: Phase,
    deadline_us: u64,
    vote_deadline_us: u64,
    /// Normal path: when PREPARE left (the start of every vote-latency sample).
    opened_us: u64,
    /// Normal path: the other replicas got ANNOUNCE with the PREPAREs (speculation),
    /// so the round to them need not carry the descriptor.
    announced: bool,
    retransmits: u32,
    /// The latest PC / PA record of the current round: retransmissions wait for it.
    round_seq: u64,
    /// Normal path: participants (bit mask) whose vote on txn i is missing.
    vote_pending: Vec<u64>,
    /// Normal path: read-only voters per txn (they leave the protocol).
    read_only: Vec<u64>,
    /// Normal path: the yes votes of each participant.
    yes_by: Vec<(SiteId, TxnSet)>,
    /// Normal path: how many no votes each participant of `yes_by` sent, same order.
    no_count: Vec<u32>,
    /// Collect: who answered for txn i, and the aggregate of their answers.
    responded: Vec<u64>,
    responders: u64,
    max_attempt: Vec<u32>,
    max_all_pc: TxnSet,
    any_pc: TxnSet,
    any_commit: TxnSet,
    any_abort: TxnSet,
    /// Round: what it proposes, and what each site acknowledged (one set per site
    /// that acknowledged anything, this replica's own PC / PA record included; at most
    /// `SITES_MAX` entries, as `dispatch_message` drops any other sender).
    round_pc: TxnSet,
    round_pa: TxnSet,
    acked: Vec<(SiteId, TxnSet)>,
    /// Round: the batch's transactions by commit group, for the quorum check.
    groups: Groups,
}

/// How a round's quorums are checked.
#[derive(Debug, Clone)]
enum Groups {
    /// Not worked out yet (no round started).
    Unknown,
    /// A word of 64 transactions at a time, per commit group: counting each
    /// transaction's acknowledgements one by one was the active replica's largest
    /// cost under three-phase commit (README, issue 14 goal 3).
    Classes(Vec<GroupClass>),
    /// One transaction at a time: more distinct groups than [`GROUP_CLASSES_MAX`], or
    /// naive termination, whose groups leave out each transaction's read-only voters.
    PerTxn,
}

/// The transactions of a batch that share one commit group.
#[derive(Debug, Clone)]
struct GroupClass {
    group: u64,
    txns: TxnSet,
}

/// The most distinct commit groups a batch's rounds check a word at a time (a
/// transfer between two of four ledgers has one of six). A batch with more is checked
/// one transaction at a time.
const GROUP_CLASSES_MAX: usize = 16;

impl Groups {
    fn of(desc: &Descriptor, termination: Termination, replica_mask: u64) -> Groups {
        if termination != Termination::E3pc {
            return Groups::PerTxn;
        }
        let mut found = MaskClasses::<GROUP_CLASSES_MAX>::new();
        let mut classes: Vec<GroupClass> = Vec::new();
        for (index, &members) in desc.members.iter().enumerate() {
            let group = members | replica_mask;
            let Some(class) = found.class_of(group) else {
                return Groups::PerTxn;
            };
            if class == classes.len() {
                classes.push(GroupClass {
                    group,
                    txns: TxnSet::empty(desc.len()),
                });
            }
            classes[class].txns.insert(index as u32);
        }
        Groups::Classes(classes)
    }
}

/// The transactions of `open` whose commit group's quorum acknowledged them, counting
/// only the sites `counts` accepts: per class and per word, `at_least[j]` holds the
/// transactions at least `j` of the group's sites acknowledged.
fn quorate_by_class(
    classes: &[GroupClass],
    acked: &[(SiteId, TxnSet)],
    open: &TxnSet,
    counts: impl Fn(SiteId) -> bool,
) -> TxnSet {
    let mut quorate = TxnSet::empty(open.universe());
    let mut at_least = [0u64; SITES_MAX + 1];
    for class in classes {
        // `is_quorum`: more than half of the group.
        let need = (class.group.count_ones() / 2 + 1) as usize;
        for (word_index, (&class_word, &open_word)) in
            class.txns.words().iter().zip(open.words()).enumerate()
        {
            let word = class_word & open_word;
            if word == 0 {
                continue;
            }
            at_least[0] = u64::MAX;
            at_least[1..=need].fill(0);
            for (site, set) in acked {
                if class.group & site.bit() == 0 || !counts(*site) {
                    continue;
                }
                let acks = set.words()[word_index];
                for j in (1..=need).rev() {
                    at_least[j] |= at_least[j - 1] & acks;
                }
            }
            quorate.assign_word(word_index, word & at_least[need], true);
        }
    }
    quorate
}

impl Drive {
    fn new(elected: u32, phase: Phase, len: u32, deadline_us: u64) -> Drive {
        let n = len as usize;
        Drive {
            elected,
            phase,
            deadline_us,
            vote_deadline_us: deadline_us,
            opened_us: 0,
            announced: false,
            retransmits: 0,
            round_seq: 0,
            vote_pending: Vec::new(),
            read_only: Vec::new(),
            yes_by: Vec::new(),
            no_count: Vec::new(),
            responded: vec![0; if phase == Phase::Collect { n } else { 0 }],
            responders: 0,
            max_attempt: vec![0; if phase == Phase::Collect { n } else { 0 }],
            max_all_pc: TxnSet::empty(len),
            any_pc: TxnSet::empty(len),
            any_commit: TxnSet::empty(len),
            any_abort: TxnSet::empty(len),
            round_pc: TxnSet::empty(len),
            round_pa: TxnSet::empty(len),
            acked: Vec::new(),
            groups: Groups::Unknown,
        }
    }

    /// Records that `site` acknowledged `txns` of the round.
    fn ack(&mut self, site: SiteId, txns: &TxnSet) {
        match self.acked.iter_mut().find(|(acker, _)| *acker == site) {
            Some((_, set)) => set.union_with(txns),
            None => self.acked.push((site, txns.clone())),
        }
    }

    /// `txns` start a round here: only this replica's own record acknowledges them.
    fn restart_acks(&mut self, me: SiteId, txns: &TxnSet) {
        for (_, set) in &mut self.acked {
            set.subtract(txns);
        }
        self.ack(me, txns);
    }

    /// The sites that acknowledged transaction `index` (bit mask).
    fn acked_mask(&self, index: u32) -> u64 {
        self.acked
            .iter()
            .filter(|(_, set)| set.contains(index))
            .fold(0, |mask, (site, _)| mask | site.bit())
    }
}

#[derive(Debug, Clone)]
struct CoordBatch {
    m: Member,
    drive: Option<Drive>,
    /// This instance opened the batch and holds its client tickets.
    clients: bool,
    /// The highest election any site told us about (from REJECT).
    max_seen_elected: u32,
    /// The batch's opener only: how many decided transactions each site must report in
    /// DONE before the batch can be forgotten. Set when the normal path ends with
    /// every transaction decided; `None` (never forget) if recovery touched the batch.
    expected: Option<Vec<(SiteId, u32)>>,
    /// The highest decided count each site reported in DONE.
    done: Vec<(SiteId, u32)>,
}

/// The parts of a coordinator every per-batch step needs, borrowed apart from the
/// batch map.
struct Ctx<'a> {
    config: &'a ProtoConfig,
    me: SiteId,
    rank: u32,
    replica_mask: u64,
    /// [`Coordinator::links_down`].
    links_down: u64,
    log: &'a mut Log,
    predictor: &'a mut Predictor,
}

/// Borrows a coordinator's [`Ctx`] field by field, so that its batch map stays free to
/// borrow beside it (a method would borrow the whole coordinator).
macro_rules! ctx {
    ($coordinator:expr) => {
        Ctx {
            config: &$coordinator.config,
            me: $coordinator.me,
            rank: $coordinator.rank,
            replica_mask: $coordinator.replica_mask,
            links_down: $coordinator.links_down,
            log: &mut $coordinator.log,
            predictor: &mut $coordinator.predictor,
        }
    };
}

impl Coordinator {
    /// A fresh replica with an empty log. It appends its first `Incarnation` record
    /// into `out` (forced); PREPAREs wait for it.
    pub fn new(config: ProtoConfig, me: SiteId, out: &mut Output) -> Result<Self, ProtoError> {
        Coordinator::with_incarnation(config, me, 1, out)
    }

    fn with_incarnation(
        config: ProtoConfig,
        me: SiteId,
        incarnation: u32,
        out: &mut Output,
    ) -> Result<Self, ProtoError> {
        config.validate()?;
        let rank = config
            .replicas
            .iter()
            .position(|&site| site == me)
            .ok_or(ProtoError::Config("this site is not a coordinator replica"))?
            as u32;
        if incarnation > super::types::BATCH_INCARNATION_MAX {
            // A batch id has 24 bits for it: wrapping would reuse old ids.
            return Err(ProtoError::BadLog("incarnation exhausted (24 bits)"));
        }
        let replica_mask = config.replica_mask();
        let mut log = Log::new();
        let incarnation_seq = log.append(
            Record::Incarnation {
                number: incarnation,
            },
            out,
        );
        log.force(out);
        Ok(Coordinator {
            config,
            me,
            rank,
            replica_mask,
            log,
            incarnation,
            incarnation_seq,
            next_counter: 0,
            batches: BatchMap::default(),
            retired: RetiredSet::default(),
            awaiting_done: Vec::new(),
            awaiting_own_pc: Vec::new(),
            predictor: Predictor::default(),
            held_waits: HeldWaits::default(),
            links_down: 0,
        })
    }

    /// Rebuilds a replica from the records that survived a crash, in log order. Its
    /// client tickets are gone: open batches are finished by recovery, and their
    /// outcomes reach the participants, not the clients. Appends the next
    /// `Incarnation` into `out`.
    ///
    /// Open batches start recovery after the rank's stagger only, not after
    /// `pending_timeout_us`: after a crash of every site no driver is left for them,
    /// and the other sites may be stopped as soon as they are settled.
    pub fn recover<'a>(
        config: ProtoConfig,
        me: SiteId,
        records: impl IntoIterator<Item = &'a Record>,
        now_us: u64,
        out: &mut Output,
    ) -> Result<Self, ProtoError> {
        config.validate()?;
        let plan = super::checkpoint::plan(records)?;
        let (mut incarnation, mut batches, retired) =
            Coordinator::restore_carried(plan.checkpoint.as_ref(), me, &config)?;
        for record in plan.tail {
            match record {
                Record::Incarnation { number } => incarnation = incarnation.max(*number),
                Record::Checkpoint { .. }
                | Record::CarriedBatch { .. }
                | Record::CarriedRetired { .. }
                | Record::CarriedIds { .. } => {
                    return Err(ProtoError::BadLog("checkpoint record outside its group"));
                }
                Record::Begin { desc } | Record::Prepared { desc, .. }
                    if !desc.is_well_formed() =>
                {
                    return Err(ProtoError::BadLog("malformed batch descriptor"));
                }
                Record::Begin { desc } | Record::Prepared { desc, .. } => {
                    let opener = config.opener_or_first(desc.batch);
                    batches.entry(desc.batch).or_insert_with(|| {
                        CoordBatch::witness(Member::new(Arc::clone(desc), me, true, opener))
                    });
                }
                Record::Elected { batch, .. } | Record::Transition { batch, .. } => {
                    let batch = batches
                        .get_mut(batch)
                        .ok_or(ProtoError::BadLog("record before its batch"))?;
                    batch.m.replay(record).map_err(ProtoError::BadLog)?;
                }
            }
        }
        let next = incarnation
            .checked_add(1)
            .ok_or(ProtoError::BadLog("incarnation overflow"))?;
        let mut coordinator = Coordinator::with_incarnation(config, me, next, out)?;
        let delay = coordinator.stagger_us();
        let e3pc = coordinator.config.termination == Termination::E3pc;
        let undecided_wait_us = coordinator.config.undecided_wait_us();
        for batch in batches.values_mut() {
            if batch.m.has_pending() {
                batch.m.arm(now_us + delay);
            } else {
                if !batch.m.all_final() {
                    // Known here but undecided and not pending (Q only: an ANNOUNCE, a
                    // PREPARE that was never answered, or a decision that was not yet
                    // durable). If no decision arrives in time, recovery learns or
                    // makes one, so that the batch is not held here for good.
                    batch.m.arm(now_us + undecided_wait_us + delay);
                }
                coordinator.awaiting_done.push(batch.m.desc.batch);
            }
            let opened_here = coordinator.config.opener(batch.m.desc.batch) == Some(me);
            if e3pc && opened_here && batch.m.all_final() {
                // The other sites report DONE again after their own restart, or when
                // they next settle something: a decided batch is not kept for good.
                batch.expected = Some(expected_everyone(&batch.m.desc, &coordinator.config, me));
            }
        }
        coordinator.batches = batches;
        coordinator.retired = retired;
        Ok(coordinator)
    }

    /// This site's id.
    pub fn id(&self) -> SiteId {
        self.me
    }

    /// The incarnation number in the ids of the batches this instance opens.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The site's state for transaction `index` of `batch`, if it knows the batch.
    pub fn txn_state(&self, batch: BatchId, index: u32) -> Option<(State, u32)> {
        let member = &self.batches.get(&batch)?.m;
        let i = index as usize;
        Some((*member.states().get(i)?, member.attempt[i]))
    }

    /// True once every transaction of `batch` is decided here (or the batch is no
    /// longer held here at all). A batch whose client completions still wait for the
    /// holders of resent ids (`HeldWaits`) is decided: it no longer needs a slot of the
    /// opener's in-flight window.
    pub fn is_decided(&self, batch: BatchId) -> bool {
        self.batches
            .get(&batch)
            .is_none_or(|entry| entry.m.all_final())
    }

    /// How many batches this replica holds in memory (retired ones are not counted).
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// The batches this replica knows.
    pub fn batch_ids(&self) -> impl Iterator<Item = BatchId> + '_ {
        self.batches.keys().copied()
    }

    fn stagger_us(&self) -> u64 {
        self.config.recovery_stagger_us * self.rank as u64
    }

    /// The vote timeout a batch on `participants` (a site mask) gets when it opens now:
    /// adaptive with `overlap` (see [`super::predict`]), `vote_timeout_us` without.
    pub fn vote_timeout_us(&self, participants: u64) -> u64 {
        if self.config.overlap {
            self.predictor
                .vote_timeout_us(participants, self.config.vote_timeouts())
        } else {
            self.config.vote_timeout_us
        }
    }

    /// Opens a batch and sends PREPARE to its participants. Any replica may open
    /// batches, concurrently with the others: the id names this replica's rank and
    /// incarnation (see [`BatchId`]).
    ///
    /// Every transaction's outcome is later reported once in `out.completions`.
    pub fn submit(
        &mut self,
        now_us: u64,
        input: BatchInput,
        out: &mut Output,
    ) -> Result<BatchId, ProtoError> {
        validate_input(&input, self.replica_mask)?;
        let ops = input.ops;
        let counter = self.next_counter;
        self.next_counter = counter
            .checked_add(1)
            .ok_or(ProtoError::BadBatch("batch counter exhausted"))?;
        let batch = BatchId::compose(self.rank, self.incarnation, counter).ok_or(
            ProtoError::Config("rank or incarnation outside its batch id field"),
        )?;
        let desc = Arc::new(Descriptor {
            batch,
            txns: input.txns,
            members: input.members,
        });
        let len = desc.len();
        let vote_timeout_us = self.vote_timeout_us(desc.participants());
        let mut m = Member::new(Arc::clone(&desc), self.me, true, self.me);
        m.last_seq = self.log.append(
            Record::Begin {
                desc: Arc::clone(&desc),
            },
            out,
        );
        let mut drive = Drive::new(
            ELECTED_INITIAL,
            Phase::Normal,
            len,
            now_us + vote_timeout_us,
        );
        drive.opened_us = now_us;
        // Speculation: the other replicas log the descriptor while the votes come in,
        // if the predictor expects enough of the batch to reach PRE-COMMIT. Cancelling
        // it needs nothing more: whatever aborts reaches them as DECIDE, as it would
        // without the announcement.
        drive.announced = self.config.overlap
            && self.config.protocol == Protocol::ThreePhase
            && self.config.termination == Termination::E3pc
            && self.replica_mask & !self.me.bit() != 0
            && self.predictor.speculate(desc.participants(), &desc.members);
        if drive.announced {
            for site in sites_of(self.replica_mask & !self.me.bit()) {
                let part = Part::Announce {
                    desc: Arc::clone(&desc),
                };
                self.log.send_after(self.incarnation_seq, site, part, out);
            }
        }
        drive.vote_pending = desc.members.clone();
        drive.read_only = vec![0; len as usize];
        for (site, site_ops) in ops {
            drive.yes_by.push((site, TxnSet::empty(len)));
            drive.no_count.push(0);
            let part = Part::Prepare {
                desc: Arc::clone(&desc),
                ops: site_ops.into(),
            };
            self.log.send_after(self.incarnation_seq, site, part, out);
        }
        let entry = CoordBatch {
            drive: Some(drive),
            clients: true,
            ..CoordBatch::witness(m)
        };
        self.batches.insert(batch, entry);
        Ok(batch)
    }

    /// Call when a message part arrives from `from`.
    pub fn handle_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        self.dispatch_message(now_us, from, part, out);
        self.resolve_held(now_us, out);
    }

    /// Completes the resends this event refused as held by another batch with that
    /// batch's outcome, once it is known here (see [`HeldWaits::resolve`]).
    fn resolve_held(&mut self, now_us: u64, out: &mut Output) {
        if self.held_waits.is_empty() && out.completions.iter().all(|c| c.held.is_empty()) {
            return;
        }
        let batches = &self.batches;
        let outcome_of = |holder: BatchId, batch: BatchId, index: u32| {
            let txn = *batches.get(&batch)?.m.desc.txns.get(index as usize)?;
            let holder = batches.get(&holder)?;
            let at = holder.m.desc.txns.iter().position(|&t| t == txn)?;
            match holder.m.states()[at] {
                State::Commit => Some(Outcome::Commit),
                State::Abort => Some(Outcome::Abort),
                _ => None,
            }
        };
        let wait_us = self.config.undecided_wait_us();
        self.held_waits
            .resolve(now_us, wait_us, &mut out.completions, outcome_of);
    }

    fn dispatch_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        if from.0 as usize >= SITES_MAX || from == self.me {
            return;
        }
        if matches!(part, Part::SignedVotes(_) | Part::VoteProof(_)) {
            // The driver's vote guard handles these; a machine counts plain votes only.
            return;
        }
        let batch_id = part.batch();
        let Some(opener) = self.config.opener(batch_id) else {
            // No replica opened it: a malformed peer's id.
            return;
        };
        if self.config.protocol == Protocol::TwoPhase && opener != self.me {
            // Two-phase commit: only the opener takes part (nobody else is sent
            // anything about the batch).
            return;
        }
        if self.retired.contains(batch_id) {
            return;
        }
        if let Part::Forget { .. } = part {
            self.on_forget(from, batch_id);
            return;
        }
        let desc = match &part {
            Part::Round {
                desc: Some(desc), ..
            }
            | Part::Decide {
                desc: Some(desc), ..
            }
            | Part::Elect { desc, .. }
            | Part::Announce { desc }
            | Part::Help { desc } => Some(desc),
            _ => None,
        };
        if !self.batches.contains_key(&batch_id) {
            let Some(desc) = desc else { return };
            if !desc.is_well_formed() || desc.batch != batch_id {
                return;
            }
            let mut m = Member::new(Arc::clone(desc), self.me, true, opener);
            m.last_seq = self.log.append(
                Record::Begin {
                    desc: Arc::clone(desc),
                },
                out,
            );
            self.batches.insert(batch_id, CoordBatch::witness(m));
        }
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return;
        };
        let mut ctx = ctx!(self);
        batch.on_part(&mut ctx, now_us, from, part, out);
        if !batch.m.has_pending() {
            self.awaiting_done.push(batch_id);
        }
        let own_pc_syncing = batch
            .drive
            .as_ref()
            .is_some_and(|drive| drive.round_seq > self.log.durable_seq());
        if own_pc_syncing && self.awaiting_own_pc.last() != Some(&batch_id) {
            self.awaiting_own_pc.push(batch_id);
        }
        self.flush_done(out);
    }

    /// Retirement. A replica reports DONE to the batch's opener whenever a batch
    /// becomes settled here. The opener forgets a batch, and tells the others to, once the
    /// normal path decided all of it without any recovery, it is settled here, and
    /// every site reported at least as many decided transactions as it was sent
    /// decisions for: then every site holds a durable decision for everything it is
    /// in, nobody is open, and no later message can need the batch.
    fn flush_done(&mut self, out: &mut Output) {
        let (batches, log, retired) = (&mut self.batches, &self.log, &mut self.retired);
        let (config, me) = (&self.config, self.me);
        self.awaiting_done.retain(|batch_id| {
            let Some(batch) = batches.get_mut(batch_id) else {
                return false;
            };
            if batch.m.has_pending() || batch.drive.is_some() {
                return false;
            }
            let opener = config.opener_or_first(*batch_id);
            if opener != me {
                // A replica reports only once it knows every decision of the batch.
                if !batch.m.all_final() {
                    return false;
                }
                return match batch.m.done_part(log) {
                    Some(part) => {
                        out.send(opener, part);
                        false
                    }
                    None => !batch.m.is_settled(log),
                };
            }
            if !batch.m.is_settled(log) {
                return true;
            }
            let Some(expected) = batch.expected.as_ref() else {
                return false;
            };
            let reported = |site: SiteId| {
                batch
                    .done
                    .iter()
                    .find(|(s, _)| *s == site)
                    .map_or(0, |(_, n)| *n)
            };
            if expected.iter().any(|&(site, count)| reported(site) < count) {
                return false;
            }
            for &(site, _) in expected {
                out.send(site, Part::Forget { batch: *batch_id });
            }
            batches.remove(batch_id);
            retired.insert(*batch_id);
            false
        });
    }

    fn on_forget(&mut self, from: SiteId, batch_id: BatchId) {
        let settled = self
            .batches
            .get(&batch_id)
            .is_some_and(|batch| !batch.m.has_pending() && batch.drive.is_none());
        if Some(from) == self.config.opener(batch_id) && settled {
            self.batches.remove(&batch_id);
            self.retired.insert(batch_id);
        }
    }

    /// Call when the WAL is durable up to `upto`.
    pub fn handle_durable(&mut self, now_us: u64, upto: AppendSeq, out: &mut Output) {
        self.log.on_durable(upto, out);
        if !self.awaiting_own_pc.is_empty() {
            self.recheck_own_pc(out);
        }
        self.flush_done(out);
        self.resolve_held(now_us, out);
    }

    /// Overlap: this replica's own PC records became durable, so it now counts in the
    /// quorums of the rounds that left before them.
    fn recheck_own_pc(&mut self, out: &mut Output) {
        let mut ctx = ctx!(self);
        let durable_seq = ctx.log.durable_seq();
        let batches = &mut self.batches;
        let awaiting_done = &mut self.awaiting_done;
        self.awaiting_own_pc.retain(|batch_id| {
            let Some(batch) = batches.get_mut(batch_id) else {
                return false;
            };
            let Some(drive) = batch.drive.as_ref() else {
                return false;
            };
            if drive.round_seq > durable_seq {
                return true;
            }
            let mut candidates = drive.round_pc.clone();
            candidates.union_with(&drive.round_pa);
            batch.check_round(&mut ctx, &candidates, out);
            if !batch.m.has_pending() {
                awaiting_done.push(*batch_id);
            }
            false
        });
    }

    /// The instant at which [`Coordinator::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.batches
            .values()
            .map(|batch| {
                let drive = batch
                    .drive
                    .as_ref()
                    .map_or(u64::MAX, |drive| drive.deadline_us);
                drive.min(batch.m.deadline_us)
            })
            .chain(self.held_waits.deadline_us())
            .min()
            .filter(|&at| at != u64::MAX)
    }

    /// Call when the instant returned by `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Output) {
        let mut ctx = ctx!(self);
        for batch in self.batches.values_mut() {
            batch.on_timeout(&mut ctx, now_us, out);
        }
        self.resolve_held(now_us, out);
    }

    /// The sites whose link is down now, as a site mask (the driver's transport saw
    /// the connection close, or heard nothing for its silence bound). A hint for
    /// liveness, never for safety:
    /// - every undecided batch whose driver (its opener at election 1, else the
    ///   replica that ran its latest election) is newly down starts recovery now,
    ///   after this replica's stagger among the replicas still up, instead of after
    ///   the pending timeout: a replica killed under load leaves batches whose
    ///   resends the clients wait for;
    /// - a collect stops waiting for the answers of sites that are down.
    ///
    /// A wrong hint (a link down while its site runs) costs an election that the
    /// driver's REJECTs or the quorum rules settle; the simulator feeds wrong hints on
    /// purpose.
    pub fn set_links_down(&mut self, now_us: u64, links_down: u64, out: &mut Output) {
        let links_down = links_down & !self.me.bit();
        let newly = links_down & !self.links_down;
        self.links_down = links_down;
        let up_below = self
            .config
            .replicas
            .iter()
            .take(self.rank as usize)
            .filter(|site| links_down & site.bit() == 0)
            .count() as u64;
        let start_us = now_us + self.config.recovery_stagger_us * up_below;
        let mut ctx = ctx!(self);
        for batch in self.batches.values_mut() {
            batch.on_links_down(&mut ctx, now_us, start_us, newly, out);
        }
    }
}

/// Whether a collect has every answer it can get: from every site of the batch but
/// this one and those whose link is down.
fn collected_all_live(drive: &Drive, ctx: &Ctx<'_>, all_sites: u64) -> bool {
    (drive.responders | ctx.me.bit() | ctx.links_down) & all_sites == all_sites
}

/// Checks a client batch and returns each participant's operations.
fn validate_input(input: &BatchInput, replica_mask: u64) -> Result<(), ProtoError> {
    let len = input.txns.len();
    if len == 0 || len > BATCH_TXNS_MAX {
        return Err(ProtoError::BadBatch(
            "a batch holds 1 to BATCH_TXNS_MAX transactions",
        ));
    }
    if input.members.len() != len {
        return Err(ProtoError::BadBatch("one member mask per transaction"));
    }
    let mut participants = 0u64;
    for &mask in &input.members {
        if mask == 0 || mask & replica_mask != 0 {
            return Err(ProtoError::BadBatch(
                "members must be participants, at least one",
            ));
        }
        participants |= mask;
    }
    let mut covered = 0u64;
    for (site, ops) in &input.ops {
        if participants & site.bit() == 0
            || covered & site.bit() != 0
            || site.0 as usize >= SITES_MAX
        {
            return Err(ProtoError::BadBatch(
                "operations for a site that is not a participant, or twice",
            ));
        }
        covered |= site.bit();
        let mut expected = input
            .txns
            .iter()
            .zip(&input.members)
            .filter(|(_, mask)| *mask & site.bit() != 0);
        let ok = ops
            .iter()
            .all(|op| expected.next().is_some_and(|(txn, _)| *txn == op.txn));
        if !ok || expected.next().is_some() {
            return Err(ProtoError::BadBatch(
                "a participant's operations must follow the batch order",
            ));
        }
    }
    if covered != participants {
        return Err(ProtoError::BadBatch("a participant has no operations"));
    }
    Ok(())
}

impl CoordBatch {
    /// A batch this replica holds without driving it or holding its clients: learned
    /// from another site, or rebuilt by recovery.
    fn witness(m: Member) -> CoordBatch {
        CoordBatch {
            m,
            drive: None,
            clients: false,
            max_seen_elected: 0,
            expected: None,
            done: Vec::new(),
        }
    }

    fn len(&self) -> u32 {
        self.m.len()
    }

    /// Every site of the batch: its participants and the replicas (two-phase commit:
    /// the participants and this coordinator only).
    fn sites(&self, ctx: &Ctx<'_>) -> u64 {
        match ctx.config.protocol {
            Protocol::ThreePhase => self.m.desc.participants() | ctx.replica_mask,
            Protocol::TwoPhase => self.m.desc.participants() | ctx.me.bit(),
        }
    }

    /// The commit group of transaction `index` whose quorum fixes its outcome.
    fn group(&self, ctx: &Ctx<'_>, index: u32) -> u64 {
        let members = self.m.desc.members[index as usize];
        match ctx.config.termination {
            Termination::E3pc => members | ctx.replica_mask,
            Termination::NaiveUnsafe => {
                let read_only = self
                    .drive
                    .as_ref()
                    .and_then(|d| d.read_only.get(index as usize))
                    .copied()
                    .unwrap_or(0);
                members & !read_only
            }
        }
    }

    fn enough(&self, ctx: &Ctx<'_>, acked: u64, index: u32) -> bool {
        let group = self.group(ctx, index);
        match ctx.config.termination {
            Termination::E3pc => is_quorum(acked, group),
            Termination::NaiveUnsafe => acked & group == group,
        }
    }

    fn on_part(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        from: SiteId,
        part: Part,
        out: &mut Output,
    ) {
        match part {
            Part::Votes {
                yes,
                read_only,
                no,
                held,
                ..
            } => self.on_votes(ctx, now_us, from, &yes, &read_only, (&no, &held), out),
            Part::RoundAck {
                elected,
                pre_commit,
                pre_abort,
                ..
            } => self.on_round_ack(ctx, from, elected, &pre_commit, &pre_abort, out),
            Part::ElectAck {
                elected, states, ..
            } => self.on_elect_ack(ctx, now_us, from, elected, &states, out),
            Part::Reject { elected, .. } => self.on_reject(ctx, now_us, elected),
            Part::Decide { commit, abort, .. } => self.settle(ctx, &commit, &abort, out),
            Part::Help { .. } => self.on_help(ctx, now_us, from, out),
            Part::Round {
                elected,
                pre_commit,
                pre_abort,
                ..
            } => {
                let timeout = ctx.config.pending_timeout_us
                    + ctx.config.recovery_stagger_us * ctx.rank as u64;
                let (log, termination) = (&mut *ctx.log, ctx.config.termination);
                self.m.on_round(
                    log,
                    termination,
                    from,
                    elected,
                    &pre_commit,
                    &pre_abort,
                    now_us,
                    timeout,
                    RoundSync::Forced,
                    out,
                );
                self.defer_to_other_driver(ctx, now_us);
            }
            Part::Elect { elected, .. } => {
                self.m
                    .on_elect(ctx.log, ctx.config.termination, from, elected, out);
                self.defer_to_other_driver(ctx, now_us);
            }
            Part::Done { decided, .. } => {
                if let Some(entry) = self.done.iter_mut().find(|(site, _)| *site == from) {
                    entry.1 = entry.1.max(decided);
                } else if self.done.len() < SITES_MAX {
                    self.done.push((from, decided));
                }
            }
            Part::Announce { .. } => {
                // Known only from the announcement, the batch is Q here. Should the
                // announcer fail before any round or decision arrives, recover it
                // once the longest vote wait and a pending timeout have passed.
                if !self.m.all_final() {
                    self.m.arm(
                        now_us
                            + ctx.config.undecided_wait_us()
                            + ctx.config.recovery_stagger_us * ctx.rank as u64,
                    );
                }
            }
            Part::Prepare { .. }
            | Part::Forget { .. }
            | Part::SignedVotes(_)
            | Part::VoteProof(_) => {}
        }
    }

    /// Another site drives election `m.elected`: stop driving an older one, and give
    /// the other driver time before this replica starts an election of its own.
    fn defer_to_other_driver(&mut self, ctx: &Ctx<'_>, now_us: u64) {
        if self.m.elected_by == ctx.me {
            return;
        }
        if self
            .drive
            .as_ref()
            .is_some_and(|drive| drive.elected < self.m.elected)
        {
            self.drive = None;
        }
        if self.drive.is_none() && !self.m.all_final() {
            let delay =
                ctx.config.pending_timeout_us + ctx.config.recovery_stagger_us * ctx.rank as u64;
            self.m.deadline_us = now_us + delay;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_votes(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        from: SiteId,
        yes: &TxnSet,
        read_only: &TxnSet,
        (no, held): NoVotes<'_>,
        out: &mut Output,
    ) {
        let len = self.len();
        if yes.universe() != len || read_only.universe() != len {
            return;
        }
        let Some(drive) = self
            .drive
            .as_mut()
            .filter(|d| d.phase == Phase::Normal && d.elected == self.m.elected)
        else {
            // Votes after a decision: tell a late yes voter about its aborts.
            let (_, mut abort) = self.m.decided_sets();
            abort.intersect_with(yes);
            if !abort.is_empty() {
                out.send(
                    from,
                    Part::Decide {
                        batch: self.m.desc.batch,
                        commit: TxnSet::empty(len),
                        abort,
                        desc: None,
                    },
                );
            }
            return;
        };
        let bit = from.bit();
        let Some(slot) = drive.yes_by.iter().position(|(site, _)| *site == from) else {
            return;
        };
        // Whether this part carried any vote still missing: a participant answers a
        // batch with one VOTES part, so that is its vote latency (a duplicate is not).
        let mut answered = false;
        let (mut yes_count, mut no_count) = (0u64, 0u64);
        let mut ready_pc = TxnSet::empty(len);
        let mut abort_now = TxnSet::empty(len);
        let mut abort_reasons = Vec::new();
        let mut abort_held = Vec::new();
        let mut late_aborts = TxnSet::empty(len);
        for index in yes.iter() {
            let i = index as usize;
            if drive.vote_pending[i] & bit == 0 {
                continue;
            }
            drive.vote_pending[i] &= !bit;
            answered = true;
            yes_count += 1;
            drive.yes_by[slot].1.insert(index);
            match self.m.states()[i] {
                State::Abort => late_aborts.insert(index),
                State::Q if drive.vote_pending[i] == 0 => ready_pc.insert(index),
                _ => {}
            }
        }
        for index in read_only.iter() {
            let i = index as usize;
            if drive.vote_pending[i] & bit != 0 {
                drive.vote_pending[i] &= !bit;
                answered = true;
                yes_count += 1;
                drive.read_only[i] |= bit;
                if self.m.states()[i] == State::Q && drive.vote_pending[i] == 0 {
                    ready_pc.insert(index);
                }
            }
        }
        for &(index, reason) in no {
            let i = index as usize;
            if index < len && drive.vote_pending[i] & bit != 0 {
                drive.vote_pending[i] &= !bit;
                answered = true;
                no_count += 1;
                drive.no_count[slot] += 1;
                if self.m.states()[i] == State::Q {
                    abort_now.insert(index);
                    abort_reasons.push((index, reason));
                    if reason == Reason::HELD_BY_BATCH {
                        // Without its holder (a peer that did not say) the id's outcome
                        // is unknown here: the client must not hear this abort as it.
                        let holder = held.iter().find(|entry| entry.0 == index);
                        abort_held.push(match holder {
                            Some(&(_, holder, state)) => {
                                (index, holder, HeldOutcome::from_state(state))
                            }
                            None => (index, BatchId(u64::MAX), HeldOutcome::Unknown),
                        });
                    }
                }
            }
        }
        if answered {
            ctx.predictor
                .on_vote(from, now_us.saturating_sub(drive.opened_us));
            ctx.predictor.on_outcomes(from, yes_count, no_count);
        }
        ready_pc.subtract(&abort_now);
        if !late_aborts.is_empty() {
            out.send(
                from,
                Part::Decide {
                    batch: self.m.desc.batch,
                    commit: TxnSet::empty(len),
                    abort: late_aborts,
                    desc: None,
                },
            );
        }
        let because = (abort_reasons, abort_held);
        self.decide_because(ctx, Outcome::Abort, abort_now, because, out);
        self.start_normal_round(ctx, now_us, ready_pc, out);
    }

    /// PRE-COMMIT at election 1 for transactions whose votes are all in and yes: log
    /// PC (forced), then send the round to the yes voters and the other replicas.
    fn start_normal_round(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        ready: TxnSet,
        out: &mut Output,
    ) {
        if ready.is_empty() {
            return;
        }
        if ctx.config.protocol == Protocol::TwoPhase {
            // No PRE-COMMIT round: every vote is yes, so commit (the record is forced
            // before anyone hears of it; see `decide_because`).
            self.decide(ctx, Outcome::Commit, ready, out);
            return;
        }
        self.m.transition(
            ctx.log,
            State::PreCommit,
            ELECTED_INITIAL,
            ready.clone(),
            out,
        );
        let seq = self.m.last_seq;
        let batch = self.m.desc.batch;
        let desc = desc_of(&self.m);
        let Some(drive) = self.drive.as_mut() else {
            return;
        };
        drive.restart_acks(ctx.me, &ready);
        if matches!(drive.groups, Groups::Unknown) {
            drive.groups = Groups::of(&desc, ctx.config.termination, ctx.replica_mask);
        }
        drive.round_pc.union_with(&ready);
        drive.round_seq = seq;
        let len = ready.universe();
        // Every vote on `ready` is in and yes, so the round may leave. Overlap: it
        // leaves now, while this replica's PC record syncs (`check_round` counts this
        // replica only once that record is durable); otherwise once it is durable.
        let send_seq = if ctx.config.overlap { 0 } else { seq };
        for (site, yes) in &drive.yes_by {
            let mut set = ready.clone();
            set.intersect_with(yes);
            if !set.is_empty() {
                let part = Part::Round {
                    batch,
                    elected: ELECTED_INITIAL,
                    pre_commit: set,
                    pre_abort: TxnSet::empty(len),
                    desc: None,
                };
                ctx.log.send_after(send_seq, *site, part, out);
            }
        }
        if ctx.config.termination == Termination::E3pc {
            // Announced replicas logged the descriptor already; if the announcement
            // was lost, they ignore this round and the retransmission (which always
            // carries the descriptor) brings them in.
            let desc = (!drive.announced).then_some(desc);
            for site in sites_of(ctx.replica_mask & !ctx.me.bit()) {
                let part = Part::Round {
                    batch,
                    elected: ELECTED_INITIAL,
                    pre_commit: ready.clone(),
                    pre_abort: TxnSet::empty(len),
                    desc: desc.clone(),
                };
                ctx.log.send_after(send_seq, site, part, out);
            }
        }
        drive.deadline_us = drive.deadline_us.min(now_us + ctx.config.retransmit_us);
        self.check_round(ctx, &ready, out);
    }

    fn on_round_ack(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: SiteId,
        elected: u32,
        pre_commit: &TxnSet,
        pre_abort: &TxnSet,
        out: &mut Output,
    ) {
        let len = self.len();
        if pre_commit.universe() != len || pre_abort.universe() != len {
            return;
        }
        let Some(drive) = self.drive.as_mut() else {
            return;
        };
        if drive.elected != elected || drive.phase == Phase::Collect {
            return;
        }
        let touched = TxnSet::from_word_fn(len, |word_index| {
            (pre_commit.words()[word_index] & drive.round_pc.words()[word_index])
                | (pre_abort.words()[word_index] & drive.round_pa.words()[word_index])
        });
        drive.ack(from, &touched);
        self.check_round(ctx, &touched, out);
    }

    /// Decides the transactions of `candidates` whose round reached its quorum.
    fn check_round(&mut self, ctx: &mut Ctx<'_>, candidates: &TxnSet, out: &mut Output) {
        let len = self.len();
        let Some(drive) = self.drive.as_ref() else {
            return;
        };
        // This replica's own acknowledgement is its PC / PA record of the round: it
        // counts only once durable (with overlap, the round left before it was).
        let own_durable = ctx.log.durable_seq() >= drive.round_seq;
        let me = ctx.me;
        let open = TxnSet::from_word_fn(len, |word_index| {
            candidates.words().get(word_index).copied().unwrap_or(0)
                & !self.m.final_word(word_index)
        });
        if open.is_empty() {
            return;
        }
        let quorate = match &drive.groups {
            Groups::Classes(classes) => quorate_by_class(classes, &drive.acked, &open, |site| {
                site != me || own_durable
            }),
            Groups::Unknown | Groups::PerTxn => {
                let own = if own_durable { u64::MAX } else { !me.bit() };
                let mut quorate = TxnSet::empty(len);
                for index in open.iter() {
                    if self.enough(ctx, drive.acked_mask(index) & own, index) {
                        quorate.insert(index);
                    }
                }
                quorate
            }
        };
        let commit = TxnSet::from_word_fn(len, |word_index| {
            quorate.words()[word_index] & drive.round_pc.words()[word_index]
        });
        let abort = TxnSet::from_word_fn(len, |word_index| {
            quorate.words()[word_index]
                & drive.round_pa.words()[word_index]
                & !drive.round_pc.words()[word_index]
        });
        self.decide(ctx, Outcome::Commit, commit, out);
        self.decide(ctx, Outcome::Abort, abort, out);
    }

    /// Fixes outcomes here: log them (unforced), complete the clients, tell the sites.
    fn decide(&mut self, ctx: &mut Ctx<'_>, outcome: Outcome, txns: TxnSet, out: &mut Output) {
        self.decide_because(ctx, outcome, txns, (Vec::new(), Vec::new()), out);
    }

    /// [`decide`](Self::decide), telling the clients why some aborts happened.
    fn decide_because(
        &mut self,
        ctx: &mut Ctx<'_>,
        outcome: Outcome,
        txns: TxnSet,
        (mut reasons, mut held): AbortCauses,
        out: &mut Output,
    ) {
        reasons.sort_unstable_by_key(|&(index, _)| index);
        held.sort_unstable_by_key(|&(index, ..)| index);
        if txns.is_empty() {
            return;
        }
        let len = self.len();
        let state = if outcome == Outcome::Commit {
            State::Commit
        } else {
            State::Abort
        };
        self.m.transition(ctx.log, state, 0, txns.clone(), out);
        // Three-phase commit: a decision follows a durable PC quorum, so its record is
        // not forced and it is announced at once. Two-phase commit: the coordinator's
        // commit record is the only durable trace of the outcome, so the client and the
        // participants hear of a commit only once it is durable (presumed abort: a
        // coordinator that crashes before then recovers without it and aborts).
        let after_seq = if outcome == Outcome::Commit && ctx.config.protocol == Protocol::TwoPhase {
            ctx.log.force(out);
            self.m.last_seq
        } else {
            0
        };
        if self.clients {
            let completion = Completion {
                batch: self.m.desc.batch,
                outcome,
                txns: txns.clone(),
                reasons,
                held,
            };
            ctx.log.complete_after(after_seq, completion, out);
        }
        let (commit, abort) = match outcome {
            Outcome::Commit => (txns, TxnSet::empty(len)),
            Outcome::Abort => (TxnSet::empty(len), txns),
        };
        self.broadcast_decision(ctx, commit, abort, after_seq, out);
        self.finish_if_done(ctx);
    }

    /// Sends DECIDE to every site that holds something, once append `after_seq` is
    /// durable (0: at once).
    fn broadcast_decision(
        &mut self,
        ctx: &mut Ctx<'_>,
        commit: TxnSet,
        abort: TxnSet,
        after_seq: u64,
        out: &mut Output,
    ) {
        let batch = self.m.desc.batch;
        let normal = self.drive.as_ref().filter(|d| d.phase == Phase::Normal);
        let targets = self.sites(ctx) & !ctx.me.bit();
        for site in sites_of(targets) {
            let (mut site_commit, mut site_abort) = (commit.clone(), abort.clone());
            if let Some(drive) = normal {
                // The normal path only tells the sites that hold something: yes voters
                // (read-only voters left) and the replicas that witnessed the round.
                if let Some((_, yes)) = drive.yes_by.iter().find(|(s, _)| *s == site) {
                    site_commit.intersect_with(yes);
                    site_abort.intersect_with(yes);
                } else if ctx.config.termination == Termination::NaiveUnsafe {
                    continue;
                }
            }
            if !site_commit.is_empty() || !site_abort.is_empty() {
                let part = Part::Decide {
                    batch,
                    commit: site_commit,
                    abort: site_abort,
                    desc: (ctx.replica_mask & site.bit() != 0).then(|| desc_of(&self.m)),
                };
                ctx.log.send_after(after_seq, site, part, out);
            }
        }
    }

    fn finish_if_done(&mut self, ctx: &Ctx<'_>) {
        if !self.m.all_final() {
            return;
        }
        if let Some(drive) = self.drive.take() {
            let normal = drive.phase == Phase::Normal
                && self.m.elected == ELECTED_INITIAL
                && self.m.elected_by == ctx.me;
            if normal && ctx.config.termination == Termination::E3pc {
                self.expected = expected_done(&drive, &self.m.desc, ctx);
            }
        }
        if self.expected.is_none()
            && ctx.config.opener(self.m.desc.batch) == Some(ctx.me)
            && ctx.config.termination == Termination::E3pc
        {
            self.expected = Some(expected_everyone(&self.m.desc, ctx.config, ctx.me));
        }
        self.m.deadline_us = u64::MAX;
    }

    /// A DECIDE from another site (or a recovered decision): settle and complete.
    fn settle(&mut self, ctx: &mut Ctx<'_>, commit: &TxnSet, abort: &TxnSet, out: &mut Output) {
        let Some(settled) = self.m.on_decide(ctx.log, commit, abort, out) else {
            return;
        };
        if self.clients {
            for (outcome, txns) in [
                (Outcome::Commit, settled.committed),
                (Outcome::Abort, settled.aborted),
            ] {
                if !txns.is_empty() {
                    out.completions.push(Completion {
                        batch: self.m.desc.batch,
                        outcome,
                        txns,
                        reasons: Vec::new(),
                        held: Vec::new(),
                    });
                }
            }
        }
        self.finish_if_done(ctx);
    }

    fn on_help(&mut self, ctx: &mut Ctx<'_>, now_us: u64, from: SiteId, out: &mut Output) {
        let (commit, abort) = self.m.decided_sets();
        if !commit.is_empty() || !abort.is_empty() {
            out.send(
                from,
                Part::Decide {
                    batch: self.m.desc.batch,
                    commit,
                    abort,
                    desc: None,
                },
            );
        }
        if !self.m.all_final() && self.drive.is_none() {
            self.m
                .arm(now_us + ctx.config.recovery_stagger_us * ctx.rank as u64);
        }
    }

    fn on_reject(&mut self, ctx: &Ctx<'_>, now_us: u64, elected: u32) {
        self.max_seen_elected = self.max_seen_elected.max(elected);
        if self
            .drive
            .as_ref()
            .is_some_and(|drive| drive.elected < elected)
        {
            self.drive = None;
            self.m.arm(
                now_us
                    + ctx.config.pending_timeout_us
                    + ctx.config.recovery_stagger_us * ctx.rank as u64,
            );
        }
    }

    /// See [`Coordinator::set_links_down`]: `newly` are the sites whose link just went
    /// down; recovery of this batch starts at `start_us` if one of them drives it.
    fn on_links_down(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        start_us: u64,
        newly: u64,
        out: &mut Output,
    ) {
        if self.m.all_final() || newly == 0 || ctx.config.protocol != Protocol::ThreePhase {
            return;
        }
        let all_sites = self.sites(ctx);
        match &self.drive {
            Some(drive) if drive.phase == Phase::Collect => {
                if collected_all_live(drive, ctx, all_sites) {
                    self.decide_collected(ctx, now_us, out);
                }
            }
            // This replica drives the batch: its retransmissions and quorums go on.
            Some(_) => {}
            None => {
                let driver = if self.m.elected == ELECTED_INITIAL {
                    ctx.config.opener_or_first(self.m.desc.batch)
                } else {
                    self.m.elected_by
                };
                if newly & driver.bit() != 0 && driver != ctx.me {
                    self.m.deadline_us = self.m.deadline_us.min(start_us);
                }
            }
        }
    }

    fn on_timeout(&mut self, ctx: &mut Ctx<'_>, now_us: u64, out: &mut Output) {
        if let Some(deadline) = self.drive.as_ref().map(|drive| drive.deadline_us) {
            if deadline <= now_us {
                self.on_drive_timeout(ctx, now_us, out);
            }
            return;
        }
        if self.m.deadline_us > now_us {
            return;
        }
        self.m.deadline_us = u64::MAX;
        if !self.m.all_final() {
            self.start_recovery(ctx, now_us, out);
        }
    }

    fn on_drive_timeout(&mut self, ctx: &mut Ctx<'_>, now_us: u64, out: &mut Output) {
        let Some(drive) = self.drive.as_ref() else {
            return;
        };
        match drive.phase {
            Phase::Collect => self.decide_collected(ctx, now_us, out),
            Phase::Normal | Phase::Round => {
                if drive.phase == Phase::Normal && now_us >= drive.vote_deadline_us {
                    self.abort_missing_votes(ctx, out);
                }
                self.retransmit_round(ctx, now_us, out);
            }
        }
    }

    /// The vote timeout: transactions still missing a vote abort (presumed abort: no
    /// PRE-COMMIT was sent for them, so no site can hold PC).
    fn abort_missing_votes(&mut self, ctx: &mut Ctx<'_>, out: &mut Output) {
        let len = self.len();
        let Some(drive) = self.drive.as_ref() else {
            return;
        };
        let mut late = TxnSet::empty(len);
        for (index, &pending) in drive.vote_pending.iter().enumerate() {
            if pending != 0 && self.m.states()[index] == State::Q {
                late.insert(index as u32);
            }
        }
        // A late transaction that some participant voted yes on is held there for this
        // batch: its abort is the id's. One nobody voted yes on is this instance's only.
        let reasons = late
            .iter()
            .map(|index| {
                let held = drive.yes_by.iter().any(|(_, yes)| yes.contains(index));
                let reason = if held {
                    Reason::TIMEOUT
                } else {
                    Reason::UNANSWERED
                };
                (index, reason)
            })
            .collect();
        let mut missed = 0u64;
        for index in late.iter() {
            missed |= drive.vote_pending[index as usize];
        }
        for site in sites_of(missed) {
            ctx.predictor.on_missed(site);
        }
        let because = (reasons, Vec::new());
        self.decide_because(ctx, Outcome::Abort, late.clone(), because, out);
        // Sites that have not voted may vote yes later: tell them now.
        let batch = self.m.desc.batch;
        if let Some(drive) = self.drive.as_ref() {
            for site in sites_of(self.m.desc.participants()) {
                let mut set = TxnSet::empty(len);
                for index in late.iter() {
                    if drive.vote_pending[index as usize] & site.bit() != 0 {
                        set.insert(index);
                    }
                }
                if !set.is_empty() {
                    out.send(
                        site,
                        Part::Decide {
                            batch,
                            commit: TxnSet::empty(len),
                            abort: set,
                            desc: None,
                        },
                    );
                }
            }
        }
    }

    /// Resends the current round to the sites whose acknowledgement is missing, or
    /// gives the batch up to recovery after `retransmits_max` tries.
    fn retransmit_round(&mut self, ctx: &mut Ctx<'_>, now_us: u64, out: &mut Output) {
        let sites = self.sites(ctx) & !ctx.me.bit();
        let batch = self.m.desc.batch;
        let desc = desc_of(&self.m);
        let Some(drive) = self.drive.as_mut() else {
            return;
        };
        let mut open = drive.round_pc.clone();
        open.union_with(&drive.round_pa);
        for index in open.clone().iter() {
            if self.m.states()[index as usize].is_final() {
                open.remove(index);
            }
        }
        let votes_open = drive.phase == Phase::Normal && drive.vote_pending.iter().any(|&p| p != 0);
        if open.is_empty() && !votes_open {
            // This round is done; whatever is still open needs another election.
            self.drive = None;
            if !self.m.all_final() {
                self.back_off(ctx, now_us);
            }
            return;
        }
        if drive.retransmits >= ctx.config.retransmits_max {
            self.drive = None;
            self.m.arm(
                now_us
                    + ctx.config.pending_timeout_us
                    + ctx.config.recovery_stagger_us * ctx.rank as u64,
            );
            return;
        }
        drive.retransmits += 1;
        drive.deadline_us = now_us + ctx.config.retransmit_us;
        for site in sites_of(sites) {
            let mut pre_commit = drive.round_pc.clone();
            let mut pre_abort = drive.round_pa.clone();
            pre_commit.intersect_with(&open);
            pre_abort.intersect_with(&open);
            if drive.phase == Phase::Normal {
                match drive.yes_by.iter().find(|(s, _)| *s == site) {
                    Some((_, yes)) => pre_commit.intersect_with(yes),
                    None if ctx.replica_mask & site.bit() == 0 => continue,
                    None if ctx.config.termination == Termination::NaiveUnsafe => continue,
                    None => {}
                }
            }
            let member_of = |index: u32| {
                ctx.replica_mask & site.bit() != 0
                    || self.m.desc.members[index as usize] & site.bit() != 0
            };
            let site_acked = drive
                .acked
                .iter()
                .find(|(acker, _)| *acker == site)
                .map(|(_, set)| set);
            let missing = pre_commit
                .iter()
                .chain(pre_abort.iter())
                .any(|i| member_of(i) && !site_acked.is_some_and(|acked| acked.contains(i)));
            if missing {
                let part = Part::Round {
                    batch,
                    elected: drive.elected,
                    pre_commit,
                    pre_abort,
                    desc: Some(Arc::clone(&desc)),
                };
                ctx.log.send_after(drive.round_seq, site, part, out);
            }
        }
    }

    /// Recovery steps 1–2: raise `last_elected` (durable before ELECT leaves) and
    /// collect every site's states.
    ///
    /// Two-phase commit has no such recovery: only the batch's opener ever gets here, and
    /// it aborts what it holds no commit record for (presumed abort). That is safe
    /// because a two-phase commit is durable here before anyone hears of it.
    fn start_recovery(&mut self, ctx: &mut Ctx<'_>, now_us: u64, out: &mut Output) {
        if ctx.config.protocol == Protocol::TwoPhase {
            let len = self.len();
            let mut open = TxnSet::empty(len);
            for index in 0..len {
                if !self.m.states()[index as usize].is_final() {
                    open.insert(index);
                }
            }
            self.drive = None;
            self.decide(ctx, Outcome::Abort, open, out);
            return;
        }
        let elected = self.m.elected.max(self.max_seen_elected) + 1;
        self.m.elected = elected;
        self.m.elected_by = ctx.me;
        ctx.log.discard_stale(self.m.desc.batch, elected);
        let record = Record::Elected {
            batch: self.m.desc.batch,
            elected,
            by: ctx.me,
        };
        self.m.last_seq = ctx.log.append(record, out);
        ctx.log.force(out);
        let len = self.len();
        let mut drive = Drive::new(
            elected,
            Phase::Collect,
            len,
            now_us + ctx.config.collect_timeout_us,
        );
        if ctx.config.termination == Termination::E3pc {
            for index in 0..len {
                let i = index as usize;
                aggregate(
                    &mut drive,
                    index,
                    ctx.me,
                    self.m.states()[i],
                    self.m.attempt[i],
                );
            }
        }
        self.drive = Some(drive);
        let desc = desc_of(&self.m);
        for site in sites_of(self.sites(ctx) & !ctx.me.bit()) {
            ctx.log.send_after(
                self.m.last_seq,
                site,
                Part::Elect {
                    desc: Arc::clone(&desc),
                    elected,
                },
                out,
            );
        }
    }

    fn on_elect_ack(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        from: SiteId,
        elected: u32,
        states: &[(State, u32)],
        out: &mut Output,
    ) {
        let all_sites = self.sites(ctx);
        let Some(drive) = self.drive.as_mut() else {
            return;
        };
        if drive.phase != Phase::Collect
            || drive.elected != elected
            || states.len() != self.m.states().len()
        {
            return;
        }
        if drive.responders & from.bit() != 0 || all_sites & from.bit() == 0 {
            return;
        }
        drive.responders |= from.bit();
        let replica = ctx.replica_mask & from.bit() != 0;
        if replica && ctx.config.termination == Termination::NaiveUnsafe {
            return;
        }
        for (index, &(state, attempt)) in states.iter().enumerate() {
            if replica || self.m.desc.members[index] & from.bit() != 0 {
                aggregate(drive, index as u32, from, state, attempt);
            }
        }
        if collected_all_live(drive, ctx, all_sites) {
            self.decide_collected(ctx, now_us, out);
        }
    }

    /// Recovery step 3, per transaction (DESIGN §2): any A → abort; any C → commit;
    /// a quorum whose highest attempt is all PC → PRE-COMMIT round; a quorum → PRE-ABORT
    /// round; else wait and retry. The naive rule decides without quorum or round.
    fn decide_collected(&mut self, ctx: &mut Ctx<'_>, now_us: u64, out: &mut Output) {
        let len = self.len();
        let Some(drive) = self.drive.take() else {
            return;
        };
        let mut sets = [
            TxnSet::empty(len),
            TxnSet::empty(len),
            TxnSet::empty(len),
            TxnSet::empty(len),
        ];
        let mut unresolved = false;
        for index in 0..len {
            if self.m.states()[index as usize].is_final() {
                continue;
            }
            let slot = match ctx.config.termination {
                Termination::E3pc => e3pc_rule(self, ctx, &drive, index),
                Termination::NaiveUnsafe => Some(naive_rule(&drive, index)),
            };
            match slot {
                Some(slot) => sets[slot].insert(index),
                None => unresolved = true,
            }
        }
        let [commit, abort, pre_commit, pre_abort] = sets;
        self.drive = Some(drive);
        self.decide(ctx, Outcome::Commit, commit, out);
        self.decide(ctx, Outcome::Abort, abort, out);
        if pre_commit.is_empty() && pre_abort.is_empty() {
            self.drive = None;
            if unresolved {
                self.back_off(ctx, now_us);
            }
            return;
        }
        self.start_recovery_round(ctx, now_us, pre_commit, pre_abort, out);
    }

    fn back_off(&mut self, ctx: &Ctx<'_>, now_us: u64) {
        self.m.backoff_shift = (self.m.backoff_shift + 1).min(ctx.config.backoff_shift_max);
        let delay = (ctx.config.collect_timeout_us << self.m.backoff_shift)
            + ctx.config.recovery_stagger_us * ctx.rank as u64;
        self.m.arm(now_us + delay);
    }

    /// Recovery step 4: log our own PC / PA at attempt `elected` (forced), then ask
    /// every site to do the same; decide once a quorum acknowledged.
    fn start_recovery_round(
        &mut self,
        ctx: &mut Ctx<'_>,
        now_us: u64,
        pre_commit: TxnSet,
        pre_abort: TxnSet,
        out: &mut Output,
    ) {
        let elected = self.m.elected;
        self.m
            .transition(ctx.log, State::PreCommit, elected, pre_commit.clone(), out);
        self.m
            .transition(ctx.log, State::PreAbort, elected, pre_abort.clone(), out);
        let seq = self.m.last_seq;
        let len = self.len();
        let mut drive = Drive::new(
            elected,
            Phase::Round,
            len,
            now_us + ctx.config.retransmit_us,
        );
        let mut own = pre_commit.clone();
        own.union_with(&pre_abort);
        drive.ack(ctx.me, &own);
        drive.groups = Groups::of(&self.m.desc, ctx.config.termination, ctx.replica_mask);
        drive.round_pc = pre_commit.clone();
        drive.round_pa = pre_abort.clone();
        drive.round_seq = seq;
        self.drive = Some(drive);
        let desc = desc_of(&self.m);
        let batch = self.m.desc.batch;
        for site in sites_of(self.sites(ctx) & !ctx.me.bit()) {
            let part = Part::Round {
                batch,
                elected,
                pre_commit: pre_commit.clone(),
                pre_abort: pre_abort.clone(),
                desc: Some(Arc::clone(&desc)),
            };
            ctx.log.send_after(seq, site, part, out);
        }
        let mut candidates = pre_commit;
        candidates.union_with(&pre_abort);
        self.check_round(ctx, &candidates, out);
    }
}

/// What each site must report in DONE before a normally decided batch is forgotten:
/// a participant, a decision for every transaction it is in (a lost vote counts: that
/// site was sent the abort); another replica, every transaction of the batch (DECIDE
/// carries the descriptor to replicas, so they learn every decision).
///
/// `None` (keep the batch) if anyone voted read-only: a read-only voter stays in Q and
/// a recovery round R0 never saw could still move it to PC or PA after it reported.
///
/// The participants sent PREPARE (`yes_by`) are exactly the batch's participants, so
/// this is [`expected_everyone`] once no read-only vote excludes the batch.
fn expected_done(drive: &Drive, desc: &Descriptor, ctx: &Ctx<'_>) -> Option<Vec<(SiteId, u32)>> {
    if drive.read_only.iter().any(|&voters| voters != 0) {
        return None;
    }
    debug_assert_eq!(
        drive
            .yes_by
            .iter()
            .fold(0, |mask, (site, _)| mask | site.bit()),
        desc.participants()
    );
    Some(expected_everyone(desc, ctx.config, ctx.me))
}

/// What a batch's opener waits for before it forgets a batch it did not decide on the
/// normal path (recovery touched it, or it was recovered from the log): every site of
/// the batch reports every transaction it is in as decided. That is the normal path's
/// condition with nothing left out, so the same argument holds: then every site holds
/// a durable decision for everything it is in, and no site is open. A read-only voter
/// (still in Q) or a participant that never learned the batch never reports them all,
/// so such a batch is kept.
fn expected_everyone(desc: &Descriptor, config: &ProtoConfig, me: SiteId) -> Vec<(SiteId, u32)> {
    let mut expected: Vec<(SiteId, u32)> = sites_of(desc.participants())
        .map(|site| (site, desc.member_txns(site)))
        .collect();
    if config.protocol == Protocol::ThreePhase {
        for site in sites_of(config.replica_mask() & !me.bit()) {
            expected.push((site, desc.len()));
        }
    }
    expected
}

fn aggregate(drive: &mut Drive, index: u32, from: SiteId, state: State, attempt: u32) {
    let i = index as usize;
    drive.responded[i] |= from.bit();
    match state {
        State::Commit => drive.any_commit.insert(index),
        State::Abort => drive.any_abort.insert(index),
        State::PreCommit => drive.any_pc.insert(index),
        _ => {}
    }
    let is_pc = state == State::PreCommit;
    if attempt > drive.max_attempt[i] {
        drive.max_attempt[i] = attempt;
        if is_pc {
            drive.max_all_pc.insert(index);
        } else {
            drive.max_all_pc.remove(index);
        }
    } else if attempt == drive.max_attempt[i] && !is_pc {
        drive.max_all_pc.remove(index);
    }
}

/// Slots: 0 commit, 1 abort, 2 PRE-COMMIT round, 3 PRE-ABORT round.
fn e3pc_rule(batch: &CoordBatch, ctx: &Ctx<'_>, drive: &Drive, index: u32) -> Option<usize> {
    if drive.any_abort.contains(index) {
        return Some(1);
    }
    if drive.any_commit.contains(index) {
        return Some(0);
    }
    if !is_quorum(drive.responded[index as usize], batch.group(ctx, index)) {
        return None;
    }
    let committable = drive.max_attempt[index as usize] > 0 && drive.max_all_pc.contains(index);
    Some(if committable { 2 } else { 3 })
}

/// The seed's unsafe rule: any C or PC → commit, any A or all prepared → abort.
fn naive_rule(drive: &Drive, index: u32) -> usize {
    if drive.any_abort.contains(index) {
        1
    } else if drive.any_commit.contains(index) || drive.any_pc.contains(index) {
        0
    } else {
        1
    }
}

impl Coordinator {
    /// Appends a checkpoint group into `out` and asks for it to be forced: the marker
    /// numbered `number` with this replica's incarnation, then one record for every
    /// batch held in memory and the retired ranges (see [`super::checkpoint`]). Returns
    /// the marker's sequence number: once the group is durable, every record before
    /// the marker may be dropped. Call it between events.
    ///
    /// A drive in progress is not carried: recovery never resumes one (it restarts
    /// open batches through termination), so the group rebuilds what recovery of the
    /// whole log would.
    pub fn checkpoint(&mut self, number: u64, out: &mut Output) -> AppendSeq {
        let (log, batches, retired) = (&mut self.log, &self.batches, &self.retired);
        super::checkpoint::append_group(
            log,
            number,
            self.incarnation,
            batches,
            |batch| &batch.m,
            retired,
            out,
        )
    }

    /// The state a checkpoint group carried: the incarnation, the batches (as recovery
    /// leaves them: no drive, no client tickets, never forgotten by `expected`) and the
    /// retired ranges. Empty without a checkpoint.
    #[allow(clippy::type_complexity)]
    fn restore_carried(
        view: Option<&super::checkpoint::CheckpointView<'_>>,
        me: SiteId,
        config: &ProtoConfig,
    ) -> Result<(u32, BatchMap<CoordBatch>, RetiredSet), ProtoError> {
        let mut batches: BatchMap<CoordBatch> = BatchMap::default();
        let mut retired = RetiredSet::default();
        let Some(view) = view else {
            return Ok((0, batches, retired));
        };
        for record in &view.carried {
            match record {
                Record::CarriedRetired { ranges } => {
                    for &(start, end) in ranges {
                        retired.insert_range(start, end);
                    }
                }
                Record::CarriedBatch { desc, .. } => {
                    let opener = config.opener_or_first(desc.batch);
                    let m = Member::from_carried(record, me, true, opener)
                        .map_err(ProtoError::BadLog)?;
                    if batches.insert(desc.batch, CoordBatch::witness(m)).is_some() {
                        return Err(ProtoError::BadLog("batch carried twice"));
                    }
                }
                _ => return Err(ProtoError::BadLog("not a carried record")),
            }
        }
        Ok((view.incarnation, batches, retired))
    }
}

// ---------------------------------------------------------------------------------
// Canonical digest, for model checkers. Additive: nothing above calls it.
// ---------------------------------------------------------------------------------

impl Coordinator {
    /// Hashes this replica's logical state into `state`, canonically, so that a model
    /// checker can hold the machine itself (it is `Clone`) and recognise the same
    /// state reached by different event orders.
    ///
    /// Canonical means: batches in id order (not the map's order), the held parts and
    /// the DONE reports as multisets, the batches awaiting DONE as a set, and every
    /// instant relative to `now_us`, the driver's clock (the machine only adds to and
    /// compares the instants it is given, so a shift in time changes nothing). The
    /// configuration is not hashed: compare replicas of one deployment only.
    pub fn digest<H: std::hash::Hasher>(&self, now_us: u64, state: &mut H) {
        use std::hash::Hash;
        self.me.hash(state);
        self.rank.hash(state);
        self.replica_mask.hash(state);
        self.log.digest(state);
        self.incarnation.hash(state);
        self.incarnation_seq.hash(state);
        self.next_counter.hash(state);
        super::member::hash_batch_map(&self.batches, state, |batch, state| {
            batch.digest(now_us, state)
        });
        self.retired.hash(state);
        super::member::hash_batch_set(&self.awaiting_done, state);
        super::member::hash_batch_set(&self.awaiting_own_pc, state);
        self.predictor.hash(state);
        self.held_waits.digest(now_us, state);
        self.links_down.hash(state);
    }
}

impl CoordBatch {
    fn digest<H: std::hash::Hasher>(&self, now_us: u64, state: &mut H) {
        use std::hash::Hash;
        self.m.digest(now_us, state);
        self.drive.is_some().hash(state);
        if let Some(drive) = &self.drive {
            drive.digest(now_us, state);
        }
        self.clients.hash(state);
        self.max_seen_elected.hash(state);
        self.expected.hash(state);
        // Looked up by site, never iterated in order.
        let mut done = self.done.clone();
        done.sort_unstable();
        done.hash(state);
    }
}

impl Drive {
    fn digest<H: std::hash::Hasher>(&self, now_us: u64, state: &mut H) {
        use std::hash::Hash;
        self.elected.hash(state);
        self.phase.hash(state);
        super::member::hash_instant(self.deadline_us, now_us, state);
        super::member::hash_instant(self.vote_deadline_us, now_us, state);
        // Vote latencies are measured from it: only its distance to now matters.
        now_us.saturating_sub(self.opened_us).hash(state);
        self.retransmits.hash(state);
        self.round_seq.hash(state);
        self.vote_pending.hash(state);
        self.read_only.hash(state);
        self.yes_by.hash(state);
        self.no_count.hash(state);
        self.responded.hash(state);
        self.responders.hash(state);
        self.max_attempt.hash(state);
        self.max_all_pc.hash(state);
        self.any_pc.hash(state);
        self.any_commit.hash(state);
        self.any_abort.hash(state);
        self.round_pc.hash(state);
        self.round_pa.hash(state);
        // Per transaction, as the sites' sets say it: the order in which sites first
        // acknowledged does not matter. (`groups` is derived from the descriptor.)
        for index in 0..self.round_pc.universe() {
            self.acked_mask(index).hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TxnId;
    use proptest::prelude::*;

    const REPLICAS: u64 = 0b111;

    // Proves the word-at-a-time quorum check against `is_quorum` asked one
    // transaction at a time: random commit groups (participants among sites 3–6 beside
    // three replicas), random acknowledgements from every site, some transactions
    // already out of the question, and this replica's own acknowledgement counted or
    // not (its record durable or not).
    proptest! {
        #[test]
        fn quorums_by_class_are_quorums_per_transaction(
            groups in proptest::collection::vec(1u64..16, 1..300),
            acks in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 300), 8),
            open_bits in proptest::collection::vec(any::<bool>(), 300),
            own_durable in any::<bool>(),
        ) {
            let len = groups.len() as u32;
            let desc = Descriptor {
                batch: BatchId(1 << 32),
                txns: (0..u64::from(len)).map(TxnId).collect(),
                members: groups.iter().map(|participants| participants << 3).collect(),
            };
            let Groups::Classes(classes) = Groups::of(&desc, Termination::E3pc, REPLICAS) else {
                panic!("15 groups at most, fewer than GROUP_CLASSES_MAX");
            };
            let set = |bits: &[bool]| {
                let mut set = TxnSet::empty(len);
                for index in (0..len).filter(|&i| bits[i as usize]) {
                    set.insert(index);
                }
                set
            };
            let acked: Vec<(SiteId, TxnSet)> = acks
                .iter()
                .enumerate()
                .map(|(site, bits)| (SiteId(site as u8), set(bits)))
                .collect();
            let open = set(&open_bits);
            let me = SiteId(0);
            let quorate = quorate_by_class(&classes, &acked, &open, |site| site != me || own_durable);
            for index in 0..len {
                let mask = acked
                    .iter()
                    .filter(|(site, set)| set.contains(index) && (*site != me || own_durable))
                    .fold(0, |mask, (site, _)| mask | site.bit());
                let group = desc.members[index as usize] | REPLICAS;
                let expected = open.contains(index) && is_quorum(mask, group);
                prop_assert_eq!(quorate.contains(index), expected, "transaction {}", index);
            }
        }
    }

    // Proves the fallback: a batch with more distinct commit groups than the word
    // check handles, or naive termination, is checked one transaction at a time.
    #[test]
    fn many_groups_or_naive_termination_check_per_transaction() {
        let len = GROUP_CLASSES_MAX as u64 + 1;
        let desc = Descriptor {
            batch: BatchId(1 << 32),
            txns: (0..len).map(TxnId).collect(),
            members: (0..len).map(|group| (group + 1) << 3).collect(),
        };
        assert!(matches!(
            Groups::of(&desc, Termination::E3pc, REPLICAS),
            Groups::PerTxn
        ));
        let few = Descriptor {
            batch: desc.batch,
            txns: desc.txns[..2].to_vec(),
            members: desc.members[..2].to_vec(),
        };
        assert!(matches!(
            Groups::of(&few, Termination::E3pc, REPLICAS),
            Groups::Classes(ref classes) if classes.len() == 2
        ));
        assert!(matches!(
            Groups::of(&few, Termination::NaiveUnsafe, REPLICAS),
            Groups::PerTxn
        ));
    }
}
