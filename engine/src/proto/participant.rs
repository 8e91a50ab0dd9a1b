//! The participant role: prepares batches on its resource manager, votes once the
//! votes are durable, takes part in rounds and elections, applies decisions, and asks
//! the coordinator replicas for help when a decision is late.

use std::sync::Arc;

use super::ids::{leg_digest, Check, Held, HeldIds, Refusal, PREFETCH_IDS_AHEAD};
use super::member::{desc_of, Log, Member, RoundSync};
use super::msg::{Part, ELECTED_INITIAL};
use super::record::Record;
use super::rm::{Op, Reason, ResourceManager, TxnId, Vote};
use super::types::{
    is_quorum, AppendSeq, BatchId, BatchMap, Descriptor, DescriptorRef, RetiredSet, SiteId, State,
    TxnSet,
};
use super::{Output, ProtoConfig, ProtoError, Protocol, Termination};

/// A participant site wrapping a resource manager `R`.
#[derive(Clone)]
pub struct Participant<R> {
    config: ProtoConfig,
    me: SiteId,
    rm: R,
    log: Log,
    batches: BatchMap<Member>,
    /// Batches forgotten on their opener's FORGET: anything about them is ignored.
    retired: RetiredSet,
    /// Batches that may be settled, waiting for durability before DONE.
    awaiting_done: Vec<BatchId>,
    /// Every transaction id this site prepared, with its batch and state: a PREPARE
    /// of a held id in another batch is refused (see [`super::ids`]). A function of
    /// the log: rebuilt by replay, carried by checkpoints.
    ///
    /// It also says which batch holds each reservation this site voted yes on: the
    /// one that holds the id pending (`W`). With several openers a client resends an
    /// id in a new batch, so one id may appear in two batches here; the resource
    /// manager knows ids, not batches, so a decision reaches it only for the batch
    /// that holds the id. Without this, the abort of a batch this site never prepared
    /// (learned from an election) would void the reservation another batch holds.
    ids: HeldIds,
    /// Reused buffers: the hot path allocates per batch, never per transaction.
    votes: Vec<Vote>,
    txn_ids: Vec<TxnId>,
    /// Each operation's id check in the PREPARE being handled.
    checks: Vec<Check>,
    /// Sites whose link the driver reported down (see [`Participant::set_links_down`]).
    links_down: u64,
}

impl<R: ResourceManager> Participant<R> {
    /// Sizes the id index for its bound now rather than growing it under load
    /// ([`HeldIds::reserve_decided_max`]).
    pub fn reserve_ids(&mut self) {
        self.ids.reserve_decided_max();
    }

    /// A fresh participant with an empty log.
    pub fn new(config: ProtoConfig, me: SiteId, rm: R) -> Result<Self, ProtoError> {
        config.validate()?;
        if config.replica_mask() & me.bit() != 0 {
            return Err(ProtoError::Config("a participant id is also a replica id"));
        }
        let ids = HeldIds::with_max(config.held_ids_decided_max);
        Ok(Participant {
            config,
            me,
            rm,
            log: Log::new(),
            batches: BatchMap::default(),
            retired: RetiredSet::default(),
            awaiting_done: Vec::new(),
            ids,
            votes: Vec::new(),
            txn_ids: Vec::new(),
            checks: Vec::new(),
            links_down: 0,
        })
    }

    /// Rebuilds a participant from the records that survived a crash, in log order,
    /// replaying `rm` (which must start empty) exactly as it was driven before.
    ///
    /// Batches still open are chased at once (HELP on the first timeout, at `now_us`),
    /// not after `pending_timeout_us`: a COMMIT or ABORT is logged unforced, so a crash
    /// may have taken a decision the replicas still hold, and nothing else will bring it
    /// back. A replica that holds nothing open need not stay up for long (a shutting
    /// down engine stops it as soon as it is settled), so waiting a pending timeout
    /// could leave this site undecided for good.
    ///
    /// A log that starts at a checkpoint needs its snapshot: use
    /// [`Participant::recover_checkpointed`].
    pub fn recover<'a>(
        config: ProtoConfig,
        me: SiteId,
        rm: R,
        records: impl IntoIterator<Item = &'a Record>,
        now_us: u64,
    ) -> Result<Self, ProtoError> {
        Participant::recover_checkpointed(config, me, rm, None, records, now_us)
    }

    fn replay(&mut self, record: &Record) -> Result<(), ProtoError> {
        match record {
            Record::Incarnation { .. } => {
                Err(ProtoError::BadLog("incarnation in a participant log"))
            }
            Record::Checkpoint { .. }
            | Record::CarriedBatch { .. }
            | Record::CarriedRetired { .. }
            | Record::CarriedIds { .. } => {
                Err(ProtoError::BadLog("checkpoint record outside its group"))
            }
            Record::Begin { desc } | Record::Prepared { desc, .. } if !desc.is_well_formed() => {
                Err(ProtoError::BadLog("malformed batch descriptor"))
            }
            Record::Begin { desc } => {
                self.member_for(desc);
                Ok(())
            }
            Record::Prepared { desc, ops, votes } => self.replay_prepared(desc, ops, votes),
            Record::Elected { batch, .. } | Record::Transition { batch, .. } => {
                let member = self
                    .batches
                    .get_mut(batch)
                    .ok_or(ProtoError::BadLog("record before its batch"))?;
                let settled = member.replay(record).map_err(ProtoError::BadLog)?;
                if let Some((state, txns)) = settled {
                    let (rm, scratch, ids) = (&mut self.rm, &mut self.txn_ids, &mut self.ids);
                    settle(rm, scratch, ids, member, state, &txns);
                }
                Ok(())
            }
        }
    }

    fn replay_prepared(
        &mut self,
        desc: &DescriptorRef,
        ops: &[Op],
        votes: &[Vote],
    ) -> Result<(), ProtoError> {
        if self.batches.contains_key(&desc.batch) {
            return Err(ProtoError::BadLog("batch prepared twice"));
        }
        let mine = self.my_indices(desc);
        if mine.len() != ops.len() || votes.len() != ops.len() {
            return Err(ProtoError::BadLog(
                "prepared record does not match its descriptor",
            ));
        }
        self.prepare_ops(desc, ops, Some(votes));
        if self.votes.as_slice() != votes {
            return Err(ProtoError::ReplayDiverged { batch: desc.batch });
        }
        let opener = self.config.opener_or_first(desc.batch);
        let mut member = Member::new(Arc::clone(desc), self.me, false, opener);
        for (&index, vote) in mine.iter().zip(votes) {
            member.set_state(index, vote_state(*vote));
            if let Vote::No(reason) = vote {
                member.no_reasons.push((index, *reason));
            }
        }
        self.batches.insert(desc.batch, member);
        Ok(())
    }

    /// The resource manager (read access, e.g. for checks and dumps).
    pub fn rm(&self) -> &R {
        &self.rm
    }

    /// What this site holds for transaction id `txn` (see [`super::ids`]).
    pub fn held(&self, txn: TxnId) -> Option<Held> {
        self.ids.get(txn)
    }

    /// How many transaction ids this site's index holds, pending and decided.
    pub fn held_count(&self) -> usize {
        self.ids.len()
    }

    /// This site's id.
    pub fn id(&self) -> SiteId {
        self.me
    }

    /// The site's state for transaction `index` of `batch`, if it knows the batch.
    pub fn txn_state(&self, batch: BatchId, index: u32) -> Option<(State, u32)> {
        let member = self.batches.get(&batch)?;
        let i = index as usize;
        Some((*member.states().get(i)?, member.attempt[i]))
    }

    /// The transactions this site holds undecided (W, PC or PA) with their states, in
    /// no particular order: after a crash, those whose outcome only the termination
    /// protocol can settle (`tricommit recover`). Linear in the transactions held.
    pub fn undecided(&self) -> Vec<(TxnId, State)> {
        let mut undecided = Vec::new();
        for member in self.batches.values() {
            for (index, state) in member.states().iter().enumerate() {
                if state.is_pending() {
                    undecided.push((member.desc.txns[index], *state));
                }
            }
        }
        undecided
    }

    /// How many batches this site holds in memory (retired ones are not counted).
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// The batches this site knows, in no particular order.
    pub fn batch_ids(&self) -> impl Iterator<Item = BatchId> + '_ {
        self.batches.keys().copied()
    }

    /// Call when a message part arrives from `from`.
    pub fn handle_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        let batch = part.batch();
        if self.retired.contains(batch) {
            return;
        }
        self.dispatch(now_us, from, part, out);
        if self
            .batches
            .get(&batch)
            .is_some_and(|member| !member.has_pending())
        {
            self.awaiting_done.push(batch);
        }
        self.flush_done(out);
    }

    /// Sends DONE for every settled batch, and forgets the batches FORGET named.
    fn flush_done(&mut self, out: &mut Output) {
        let config = &self.config;
        let (batches, log) = (&mut self.batches, &self.log);
        self.awaiting_done.retain(|batch| {
            let Some(member) = batches.get_mut(batch) else {
                return false;
            };
            if member.has_pending() {
                return false;
            }
            match member.done_part(log) {
                Some(part) => {
                    // DONE goes to the batch's opener, which forgets it.
                    out.send(config.opener_or_first(*batch), part);
                    false
                }
                None => !member.is_settled(log),
            }
        });
    }

    fn dispatch(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        match part {
            Part::Prepare { desc, ops } => self.on_prepare(now_us, from, desc, ops, out),
            Part::Round {
                batch,
                elected,
                pre_commit,
                pre_abort,
                desc,
            } => {
                if !self.known_or_adopt(batch, desc.as_ref(), out) {
                    return;
                }
                let Some(member) = self.batches.get_mut(&batch) else {
                    return;
                };
                let timeout = self.config.pending_timeout_us;
                let termination = self.config.termination;
                let replica_mask = self.config.replica_mask();
                // Lazy only where the replicas alone are a quorum of every commit
                // group of the batch (three replicas and two-party transfers): with
                // fewer, the coordinator needs this acknowledgement to decide at all.
                // And not while a replica's link is down (a hint): the coordinator
                // then needs it too, and should not wait for this site's next sync.
                let sync = if termination == Termination::E3pc
                    && self.links_down & replica_mask == 0
                    && *member.replicas_quorate.get_or_insert_with(|| {
                        member
                            .desc
                            .members
                            .iter()
                            .all(|&members| is_quorum(replica_mask, members | replica_mask))
                    }) {
                    RoundSync::Lazy
                } else {
                    RoundSync::Forced
                };
                member.on_round(
                    &mut self.log,
                    termination,
                    from,
                    elected,
                    &pre_commit,
                    &pre_abort,
                    now_us,
                    timeout,
                    sync,
                    out,
                );
            }
            Part::Decide {
                batch,
                commit,
                abort,
                ..
            } => self.on_decide(batch, &commit, &abort, out),
            Part::Elect { desc, elected } => {
                let batch = desc.batch;
                if !self.known_or_adopt(batch, Some(&desc), out) {
                    return;
                }
                let Some(member) = self.batches.get_mut(&batch) else {
                    return;
                };
                member.on_elect(&mut self.log, self.config.termination, from, elected, out);
            }
            Part::Forget { batch } => {
                if Some(from) == self.config.opener(batch)
                    && self.batches.get(&batch).is_some_and(|m| !m.has_pending())
                {
                    self.batches.remove(&batch);
                    self.retired.insert(batch);
                }
            }
            Part::Votes { .. }
            | Part::Announce { .. }
            | Part::Done { .. }
            | Part::RoundAck { .. }
            | Part::ElectAck { .. }
            | Part::Reject { .. }
            | Part::Help { .. }
            | Part::SignedVotes(_)
            | Part::VoteProof(_) => {}
        }
    }

    /// Call when the WAL is durable up to `upto` (see [`AppendSeq`]).
    pub fn handle_durable(&mut self, _now_us: u64, upto: AppendSeq, out: &mut Output) {
        self.log.on_durable(upto, out);
        self.flush_done(out);
    }

    /// The instant at which [`Participant::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.batches
            .values()
            .map(|member| member.deadline_us)
            .min()
            .filter(|&at| at != u64::MAX)
    }

    /// The driver reports the sites whose link is down now (see
    /// [`Coordinator::set_links_down`](super::Coordinator::set_links_down)). A hint for
    /// liveness, never for safety: every batch still pending here whose driver (its
    /// opener at election 1, else the replica that ran the latest election this site
    /// joined) is newly down asks the replicas for help at the next timeout poll,
    /// instead of after the pending timeout. A replica may not know the batch at all
    /// (its opener died before telling anyone but the participants), and then only
    /// this HELP starts its recovery. A wrong hint costs an early HELP, which the
    /// replicas' elections and fencing settle.
    pub fn set_links_down(&mut self, now_us: u64, links_down: u64) {
        let links_down = links_down & !self.me.bit();
        let newly = links_down & !self.links_down;
        self.links_down = links_down;
        if newly == 0 || self.config.protocol != Protocol::ThreePhase {
            return;
        }
        for member in self.batches.values_mut() {
            if member.has_pending() && newly & member.elected_by.bit() != 0 {
                member.deadline_us = member.deadline_us.min(now_us);
            }
        }
    }

    /// Call when the instant returned by `poll_timeout` has passed: asks the
    /// replicas to finish every batch whose decision is late.
    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Output) {
        let config = &self.config;
        for member in self.batches.values_mut() {
            if member.deadline_us > now_us {
                continue;
            }
            if !member.has_pending() {
                member.deadline_us = u64::MAX;
                continue;
            }
            // Two-phase commit has no termination protocol: only the opener can answer.
            let opener = config.opener_or_first(member.desc.batch);
            for &replica in &config.replicas {
                if config.protocol == Protocol::TwoPhase && replica != opener {
                    continue;
                }
                out.send(
                    replica,
                    Part::Help {
                        desc: desc_of(member),
                    },
                );
            }
            member.backoff_shift = (member.backoff_shift + 1).min(self.config.backoff_shift_max);
            member.deadline_us = now_us + (self.config.pending_timeout_us << member.backoff_shift);
        }
    }

    fn my_indices(&self, desc: &DescriptorRef) -> Vec<u32> {
        let bit = self.me.bit();
        (0..desc.len())
            .filter(|&i| desc.members[i as usize] & bit != 0)
            .collect()
    }

    fn on_prepare(
        &mut self,
        now_us: u64,
        from: SiteId,
        desc: DescriptorRef,
        ops: Arc<[Op]>,
        out: &mut Output,
    ) {
        if let Some(member) = self.batches.get(&desc.batch) {
            // A repeated PREPARE: repeat the votes if this site is still at election 1
            // and prepared the batch; otherwise the newer election fences it.
            if member.elected > ELECTED_INITIAL {
                let part = Part::Reject {
                    batch: desc.batch,
                    elected: member.elected,
                };
                out.send(from, part);
            } else if let Some(part) = self.votes_part(member) {
                let seq = member.last_seq;
                self.log.send_after(seq, from, part, out);
            }
            return;
        }
        if !desc.is_well_formed() || !self.ops_match(&desc, &ops) {
            return;
        }
        self.prepare_ops(&desc, &ops, None);
        let mut member = Member::new(
            Arc::clone(&desc),
            self.me,
            false,
            self.config.opener_or_first(desc.batch),
        );
        let mut any_yes = false;
        for (index, vote) in self.my_indices(&desc).into_iter().zip(&self.votes) {
            member.set_state(index, vote_state(*vote));
            any_yes |= *vote == Vote::Yes;
            if let Vote::No(reason) = vote {
                member.no_reasons.push((index, *reason));
            }
        }
        let record = Record::Prepared {
            desc: Arc::clone(&desc),
            ops: Arc::clone(&ops),
            votes: self.votes.clone(),
        };
        member.last_seq = self.log.append(record, out);
        if any_yes {
            self.log.force(out);
            member.arm(now_us + self.config.pending_timeout_us);
        }
        let part = self.votes_part(&member);
        // Only a yes promises something: no and read-only votes may leave at once.
        let seq = if any_yes { member.last_seq } else { 0 };
        self.batches.insert(desc.batch, member);
        if let Some(part) = part {
            self.log.send_after(seq, from, part, out);
        }
    }

    /// Checks every operation's id against the index (holding the new ones for this
    /// batch), prepares the others on the resource manager, and leaves exactly one vote
    /// per operation in `self.votes`: a refused id never reaches the resource manager,
    /// so a resend is applied at most once. With `logged` (replay of a `Prepared`
    /// record), the resource manager replays those votes; the index, rebuilt in log
    /// order, refuses the same operations it refused then. `ops` must match `desc`
    /// (`ops_match`).
    fn prepare_ops(&mut self, desc: &Descriptor, ops: &[Op], logged: Option<&[Vote]>) {
        let bit = self.me.bit();
        let mine = desc.txns.iter().zip(&desc.members);
        let mine = mine.filter(|(_, members)| *members & bit != 0);
        self.checks.clear();
        let mut refused = false;
        for op in ops.iter().take(PREFETCH_IDS_AHEAD) {
            self.ids.prefetch(op.txn);
        }
        for (index, (op, (_, &members))) in ops.iter().zip(mine).enumerate() {
            if let Some(ahead) = ops.get(index + PREFETCH_IDS_AHEAD) {
                self.ids.prefetch(ahead.txn);
            }
            let digest = leg_digest(members, op);
            let check = match logged.map(|logged| logged.get(index)) {
                None => self.ids.check_and_hold(op.txn, desc.batch, digest),
                Some(vote) => self.replay_check(op.txn, desc.batch, digest, vote.copied()),
            };
            refused |= matches!(check, Check::Refused(_));
            self.checks.push(check);
        }
        self.votes.clear();
        if refused {
            self.prepare_unrefused(ops, logged);
        } else {
            match logged {
                None => self.rm.prepare(ops, &mut self.votes),
                Some(logged) => self.rm.replay_prepare(ops, logged, &mut self.votes),
            }
        }
        if self.votes.len() != ops.len() {
            // A resource manager that breaks its contract gets no yes from us.
            self.votes.resize(ops.len(), Vote::No(Reason::MALFORMED));
            self.votes.truncate(ops.len());
        }
        for ((op, check), vote) in ops.iter().zip(&self.checks).zip(&self.votes) {
            // Only the instance this batch holds settles on its vote: a no or a
            // read-only vote never leaves it pending.
            let settled = match (check, vote) {
                (Check::New, Vote::No(_)) => State::Abort,
                (Check::New, Vote::ReadOnly) => State::Q,
                _ => continue,
            };
            // A no or read-only vote took no reservation: nothing for the resource
            // manager to release.
            self.ids.settle(op.txn, desc.batch, settled);
        }
    }

    /// Replay's id check: the logged vote, not the rebuilt index, says whether the live
    /// site refused the id (the index bound may differ between the two, e.g. for a
    /// read-only recovery), so replay refuses exactly what the live run refused.
    fn replay_check(
        &mut self,
        txn: TxnId,
        batch: BatchId,
        digest: u64,
        vote: Option<Vote>,
    ) -> Check {
        match vote {
            Some(Vote::No(Reason::HELD_BY_BATCH)) => {
                // Only the reason goes into the replayed vote; the holder is not needed.
                let holder = Held {
                    batch,
                    digest,
                    state: State::W,
                };
                return Check::Refused(Refusal::Held(holder));
            }
            Some(Vote::No(Reason::EXISTS_WITH_DIFFERENT_LEGS)) => {
                return Check::Refused(Refusal::DifferentLegs);
            }
            _ => {}
        }
        match self.ids.check_and_hold(txn, batch, digest) {
            Check::Refused(_) => {
                self.ids.replace(txn, batch, digest);
                Check::New
            }
            check => check,
        }
    }

    /// The rare path of [`Participant::prepare_ops`]: some ids are refused, so only
    /// the other operations go to the resource manager, and the votes are merged back
    /// in batch order.
    fn prepare_unrefused(&mut self, ops: &[Op], logged: Option<&[Vote]>) {
        let checks = &self.checks;
        let kept = |index: &usize| !matches!(checks[*index], Check::Refused(_));
        let kept_ops: Vec<Op> = (0..ops.len()).filter(kept).map(|i| ops[i]).collect();
        let mut kept_votes = Vec::with_capacity(kept_ops.len());
        match logged {
            None => self.rm.prepare(&kept_ops, &mut kept_votes),
            Some(logged) => {
                let kept_logged: Vec<Vote> = (0..ops.len())
                    .filter(kept)
                    .map(|i| {
                        logged
                            .get(i)
                            .copied()
                            .unwrap_or(Vote::No(Reason::MALFORMED))
                    })
                    .collect();
                self.rm
                    .replay_prepare(&kept_ops, &kept_logged, &mut kept_votes);
            }
        }
        if kept_votes.len() != kept_ops.len() {
            kept_votes.resize(kept_ops.len(), Vote::No(Reason::MALFORMED));
        }
        let mut kept_votes = kept_votes.into_iter();
        for check in checks {
            let vote = match check {
                Check::Refused(refusal) => Vote::No(refusal.reason()),
                _ => kept_votes.next().unwrap_or(Vote::No(Reason::MALFORMED)),
            };
            self.votes.push(vote);
        }
    }

    fn ops_match(&self, desc: &DescriptorRef, ops: &[Op]) -> bool {
        let bit = self.me.bit();
        let mut mine = desc
            .txns
            .iter()
            .zip(&desc.members)
            .filter(|(_, mask)| *mask & bit != 0);
        let all_match = ops
            .iter()
            .all(|op| mine.next().is_some_and(|(txn, _)| *txn == op.txn));
        all_match && mine.next().is_none()
    }

    /// The VOTES part for a batch this site prepared (`None` if it holds no vote).
    fn votes_part(&self, member: &Member) -> Option<Part> {
        let len = member.len();
        let mut yes = TxnSet::empty(len);
        let mut read_only = TxnSet::empty(len);
        let no = member.no_reasons.clone();
        let mut voted_no = TxnSet::empty(len);
        let mut held = Vec::new();
        for &(index, reason) in &no {
            voted_no.insert(index);
            let txn = member.desc.txns.get(index as usize).copied();
            let holder = txn.and_then(|txn| self.ids.get(txn));
            if let (Reason::HELD_BY_BATCH, Some(holder)) = (reason, holder) {
                held.push((index, holder.batch, holder.state));
            }
        }
        for index in 0..len {
            if !member.is_member(index) || voted_no.contains(index) {
                continue;
            }
            match member.states()[index as usize] {
                State::Q => read_only.insert(index),
                // Aborted since by a decision: the vote was yes.
                _ => yes.insert(index),
            }
        }
        Some(Part::Votes {
            batch: member.desc.batch,
            yes,
            read_only,
            no,
            held,
        })
    }

    /// Makes sure the batch is known, adopting (and logging) the descriptor a round or
    /// election carries; false if the batch is unknown and cannot be adopted.
    fn known_or_adopt(
        &mut self,
        batch: BatchId,
        desc: Option<&DescriptorRef>,
        out: &mut Output,
    ) -> bool {
        if self.batches.contains_key(&batch) {
            return true;
        }
        let Some(desc) = desc.filter(|desc| desc.batch == batch && desc.is_well_formed()) else {
            return false;
        };
        self.member_for(desc);
        let seq = self.log.append(
            Record::Begin {
                desc: Arc::clone(desc),
            },
            out,
        );
        if let Some(member) = self.batches.get_mut(&batch) {
            member.last_seq = seq;
        }
        true
    }

    fn member_for(&mut self, desc: &DescriptorRef) {
        let opener = self.config.opener_or_first(desc.batch);
        let me = self.me;
        self.batches
            .entry(desc.batch)
            .or_insert_with(|| Member::new(Arc::clone(desc), me, false, opener));
    }

    fn on_decide(&mut self, batch: BatchId, commit: &TxnSet, abort: &TxnSet, out: &mut Output) {
        let Some(member) = self.batches.get_mut(&batch) else {
            return;
        };
        let Some(settled) = member.on_decide(&mut self.log, commit, abort, out) else {
            return;
        };
        let (rm, scratch, ids) = (&mut self.rm, &mut self.txn_ids, &mut self.ids);
        settle(rm, scratch, ids, member, State::Commit, &settled.committed);
        settle(rm, scratch, ids, member, State::Abort, &settled.aborted);
    }
}

/// Settles the id index for the transactions of `member`'s batch that became `state`
/// (nothing for a state that is not final), and hands the resource manager those whose
/// reservation this batch holds here (the id held pending by this batch: see
/// `Participant::ids`), in batch order, exactly as the matching `Transition` record will
/// replay them. The index's slots are prefetched [`PREFETCH_IDS_AHEAD`] ids ahead.
fn settle<R: ResourceManager>(
    rm: &mut R,
    scratch: &mut Vec<TxnId>,
    ids: &mut HeldIds,
    member: &Member,
    state: State,
    txns: &TxnSet,
) {
    if txns.is_empty() || !state.is_final() {
        return;
    }
    scratch.clear();
    let batch = member.desc.batch;
    let txn_at = |index: u32| member.desc.txns.get(index as usize).copied();
    let mut ahead = txns.iter().filter_map(txn_at);
    for txn in ahead.by_ref().take(PREFETCH_IDS_AHEAD) {
        ids.prefetch(txn);
    }
    for txn in txns.iter().filter_map(txn_at) {
        if let Some(next) = ahead.next() {
            ids.prefetch(next);
        }
        if ids.settle(txn, batch, state) {
            scratch.push(txn);
        }
    }
    if scratch.is_empty() {
        return;
    }
    match state {
        State::Commit => rm.commit(scratch),
        _ => rm.abort(scratch),
    }
}

/// A vote's state: yes waits, no is aborted at once, read-only leaves (stays Q).
fn vote_state(vote: Vote) -> State {
    match vote {
        Vote::Yes => State::W,
        Vote::No(_) => State::Abort,
        Vote::ReadOnly => State::Q,
    }
}

impl<R: ResourceManager> Participant<R> {
    /// Appends a checkpoint group into `out` and asks for it to be forced: the marker
    /// numbered `number`, then one record for every batch held in memory and the
    /// retired ranges (see [`super::checkpoint`]). Returns the marker's sequence number:
    /// once the group is durable, every record before the marker may be dropped.
    ///
    /// Call it between events, right after taking the resource manager's snapshot for
    /// the same `number` (the snapshot must hold exactly what the records before the
    /// marker did to the resource manager), and only after that snapshot is durable.
    pub fn checkpoint(&mut self, number: u64, out: &mut Output) -> AppendSeq {
        let (log, batches, retired) = (&mut self.log, &self.batches, &self.retired);
        let ids = self.ids.carried();
        super::checkpoint::append_group_with(
            log,
            number,
            0,
            batches,
            |member| member,
            retired,
            ids,
            out,
        )
    }

    /// Rebuilds a participant from the records that survived a crash, in log order, as
    /// [`Participant::recover`] does, but also from a log that starts at a checkpoint:
    /// `snapshot` must then be the resource manager's snapshot of that checkpoint
    /// (`rm` must start empty either way).
    ///
    /// The snapshot already holds the effects of every record before the checkpoint,
    /// the reservations of the carried batches included (the id index comes back from
    /// the carried ids, not from the snapshot), so the carried batches are
    /// rebuilt without the resource manager, and only the records after the checkpoint
    /// group are replayed through it (see [`super::checkpoint`]).
    pub fn recover_checkpointed<'a>(
        config: ProtoConfig,
        me: SiteId,
        rm: R,
        snapshot: Option<&[u8]>,
        records: impl IntoIterator<Item = &'a Record>,
        now_us: u64,
    ) -> Result<Self, ProtoError> {
        let plan = super::checkpoint::plan(records)?;
        let mut participant = Participant::new(config, me, rm)?;
        if let Some(view) = &plan.checkpoint {
            let number = view.number;
            let bytes = snapshot.ok_or(ProtoError::SnapshotMissing { number })?;
            participant
                .rm
                .restore(bytes)
                .map_err(|source| ProtoError::Restore { number, source })?;
            for record in &view.carried {
                participant.restore_carried(record)?;
            }
        }
        for record in plan.tail {
            participant.replay(record)?;
        }
        participant.rm.recovered();
        for member in participant.batches.values_mut() {
            if member.has_pending() {
                member.arm(now_us);
            } else {
                participant.awaiting_done.push(member.desc.batch);
            }
        }
        Ok(participant)
    }

    /// Rebuilds one carried record of a checkpoint (never through the resource manager).
    fn restore_carried(&mut self, record: &Record) -> Result<(), ProtoError> {
        match record {
            Record::CarriedRetired { ranges } => {
                for &(start, end) in ranges {
                    self.retired.insert_range(start, end);
                }
                Ok(())
            }
            Record::CarriedIds { entries } => self.ids.restore(entries).map_err(ProtoError::BadLog),
            Record::CarriedBatch { desc, .. } => {
                if self.batches.contains_key(&desc.batch) {
                    return Err(ProtoError::BadLog("batch carried twice"));
                }
                let opener = self.config.opener_or_first(desc.batch);
                let member = Member::from_carried(record, self.me, false, opener)
                    .map_err(ProtoError::BadLog)?;
                // The reservations its open transactions hold here come back with the
                // id index (`CarriedIds`): a batch holds those its ids are pending for.
                self.batches.insert(desc.batch, member);
                Ok(())
            }
            _ => Err(ProtoError::BadLog("not a carried record")),
        }
    }
}

// ---------------------------------------------------------------------------------
// Canonical digest, for model checkers. Additive: nothing above calls it.
// ---------------------------------------------------------------------------------

impl<R: ResourceManager + std::hash::Hash> Participant<R> {
    /// Hashes this participant's logical state, its resource manager's included, into
    /// `state`, canonically (see [`Coordinator::digest`](super::Coordinator::digest)):
    /// batches in id order, held parts as a multiset, batches awaiting DONE as a set,
    /// instants relative to `now_us`. The reusable buffers (`votes`, `txn_ids`) are
    /// scratch, cleared before every use, and the configuration is not hashed.
    pub fn digest<H: std::hash::Hasher>(&self, now_us: u64, state: &mut H) {
        use std::hash::Hash;
        self.me.hash(state);
        self.rm.hash(state);
        self.log.digest(state);
        super::member::hash_batch_map(&self.batches, state, |member, state| {
            member.digest(now_us, state)
        });
        self.retired.hash(state);
        self.ids.digest(state);
        super::member::hash_batch_set(&self.awaiting_done, state);
        self.links_down.hash(state);
    }
}
