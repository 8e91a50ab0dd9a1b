//! What every site does for a batch it is a member of, whatever its role: keep the
//! per-transaction E3PC state (`state`, `last_attempt`, the batch's `last_elected`),
//! join elections, take part in PRE-COMMIT / PRE-ABORT rounds and learn decisions,
//! logging each change before any message that depends on it leaves.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::msg::{Part, ELECTED_INITIAL};
use super::record::Record;
use super::rm::Reason;
use super::types::{AppendSeq, BatchId, DescriptorRef, SiteId, State, TxnSet};
use super::{Completion, Outgoing, Output, Termination};

/// The site's append sequence and the messages waiting for durability.
#[derive(Debug, Clone)]
pub(crate) struct Log {
    next_seq: u64,
    durable_seq: u64,
    /// Parts that may leave once `durable_seq >= seq`. Short: one entry per
    /// destination per batch step, released on every `on_durable`.
    held: Vec<(u64, Outgoing)>,
    /// Client outcomes that may be reported once `durable_seq >= seq` (two-phase
    /// commit: a commit is answered only once its record is durable). At most one per
    /// batch in flight.
    held_completions: Vec<(u64, Completion)>,
}

/// When a site's PRE-COMMIT / PRE-ABORT record reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundSync {
    /// At once: the acknowledgement leaves after one sync of its own. The coordinator
    /// replicas, and everyone in a recovery round.
    Forced,
    /// A participant at election 1: with the site's next sync. The replicas alone
    /// form the round's quorum (the active one and its two backups are three of a
    /// two-party transfer's five), so the participants' acknowledgements are only a
    /// fallback when a backup is slow or gone; forcing them cost each participant
    /// about one sync per batch more than two-phase commit. Safety does not depend
    /// on it: an acknowledgement still leaves only once its record is durable.
    Lazy,
}

impl Log {
    pub(crate) fn new() -> Log {
        Log {
            next_seq: 1,
            durable_seq: 0,
            held: Vec::new(),
            held_completions: Vec::new(),
        }
    }

    /// The highest append sequence number known durable.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Queues a record for the WAL and returns its sequence number.
    pub(crate) fn append(&mut self, record: Record, out: &mut Output) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        out.appends.push((AppendSeq(seq), record));
        seq
    }

    /// Asks the driver to sync everything appended so far.
    pub(crate) fn force(&mut self, out: &mut Output) {
        if self.next_seq - 1 > self.durable_seq {
            out.sync_upto = Some(AppendSeq(self.next_seq - 1));
        }
    }

    /// Sends `part` now if `seq` is durable, else when it becomes durable.
    pub(crate) fn send_after(&mut self, seq: u64, to: SiteId, part: Part, out: &mut Output) {
        if seq <= self.durable_seq {
            out.send(to, part);
        } else {
            self.held.push((seq, Outgoing { to, part }));
        }
    }

    /// Reports `completion` now if `seq` is durable, else when it becomes durable.
    pub(crate) fn complete_after(&mut self, seq: u64, completion: Completion, out: &mut Output) {
        if seq <= self.durable_seq {
            out.completions.push(completion);
        } else {
            self.held_completions.push((seq, completion));
        }
    }

    /// Drops held parts about `batch` stamped with an election older than `elected`:
    /// a site that joined a newer election must not answer an older one late.
    pub(crate) fn discard_stale(&mut self, batch: BatchId, elected: u32) {
        self.held.retain(|(_, outgoing)| {
            let stamp = match &outgoing.part {
                Part::Round { elected, .. }
                | Part::RoundAck { elected, .. }
                | Part::ElectAck { elected, .. } => *elected,
                Part::Votes { .. } | Part::Prepare { .. } => ELECTED_INITIAL,
                _ => return true,
            };
            outgoing.part.batch() != batch || stamp >= elected
        });
    }

    /// Drops held rounds and round acknowledgements about transactions of `batch`
    /// that are now decided here: they would announce a state this site left.
    pub(crate) fn discard_decided(&mut self, batch: BatchId, decided: &TxnSet) {
        let overlaps = |set: &TxnSet| set.intersects(decided);
        self.held.retain(|(_, outgoing)| match &outgoing.part {
            Part::Round {
                batch: b,
                pre_commit,
                pre_abort,
                ..
            }
            | Part::RoundAck {
                batch: b,
                pre_commit,
                pre_abort,
                ..
            } => *b != batch || !(overlaps(pre_commit) || overlaps(pre_abort)),
            _ => true,
        });
    }

    /// Records that every append up to `upto` is durable and releases what waited.
    pub(crate) fn on_durable(&mut self, upto: AppendSeq, out: &mut Output) {
        let upto = upto.0.min(self.next_seq - 1);
        if upto <= self.durable_seq {
            return;
        }
        self.durable_seq = upto;
        let mut index = 0;
        while index < self.held.len() {
            if self.held[index].0 <= upto {
                let (_, outgoing) = self.held.remove(index);
                out.sends.push(outgoing);
            } else {
                index += 1;
            }
        }
        if !self.held_completions.is_empty() {
            let (ready, waiting) = std::mem::take(&mut self.held_completions)
                .into_iter()
                .partition(|(seq, _)| *seq <= upto);
            self.held_completions = waiting;
            let ready: Vec<(u64, Completion)> = ready;
            out.completions
                .extend(ready.into_iter().map(|(_, completion)| completion));
        }
    }
}

/// One site's view of one batch.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub desc: DescriptorRef,
    /// Private: written only through `set_word`, which keeps `pending`; read through
    /// `states`.
    state: Vec<State>,
    pub attempt: Vec<u32>,
    /// `last_elected` for the whole batch: recovery runs per batch.
    pub elected: u32,
    /// Who runs election `elected`: a repeated ELECT from it is a duplicate.
    pub elected_by: SiteId,
    /// The latest record about this batch: acknowledgements wait for it.
    pub last_seq: u64,
    /// When this site next chases the batch (`u64::MAX`: not armed).
    pub deadline_us: u64,
    /// Doubling factor (as a shift) of the chase period.
    pub backoff_shift: u32,
    /// The decided count this site last reported to the batch's opener in a DONE.
    pub done_reported: u32,
    /// A participant's no votes with their reasons, to repeat VOTES faithfully.
    pub no_reasons: Vec<(u32, Reason)>,
    /// How many entries of `state` are pending (W, PC or PA): `has_pending` is asked
    /// after every message, and scanning a batch of 8192 states each time showed in
    /// profiles. Kept by `set_word`, the only writer of `state`.
    pending: u32,
    /// How many of the transactions this site is in are final here (C or A), and how
    /// many it is in: `all_final` and `decided_count` are asked for every batch at
    /// every settle and DONE, and scanning the batch each time showed in profiles.
    /// Kept by `set_word`.
    decided: u32,
    member_txns: u32,
    /// `state` as bit planes, kept by every writer of `state` beside it: the
    /// transactions in W, PC or PA, in C, and in A. The normal path's rounds and
    /// decisions over a batch of thousands classify and count a word of 64
    /// transactions at a time with them, instead of one state at a time (one state
    /// at a time, it was more than half of a backup replica's CPU time under
    /// three-phase commit: README, issue 14 goal 3).
    pendings: TxnSet,
    commits: TxnSet,
    aborts: TxnSet,
    /// A participant's transactions (`None` for a replica: all of them).
    members: Option<TxnSet>,
    /// Replicas witness every transaction; a participant only its own.
    replica: bool,
    me: SiteId,
    /// A participant's cached answer to whether the replicas alone are a quorum of
    /// every commit group of the batch (`None` until its first ROUND asks): fixed by
    /// the descriptor and the configuration, and asked at every ROUND, where scanning
    /// the batch each time was a third of what three-phase commit added to a
    /// participant's CPU time (README, issue 14 goal 3). Derived, so not in `digest`.
    pub replicas_quorate: Option<bool>,
}

/// The transactions a DECIDE newly settled at this site.
pub(crate) struct Settled {
    pub committed: TxnSet,
    pub aborted: TxnSet,
}

impl Member {
    pub(crate) fn new(desc: DescriptorRef, me: SiteId, replica: bool, first: SiteId) -> Member {
        let len = desc.txns.len();
        let members = (!replica).then(|| {
            let bit = me.bit();
            TxnSet::from_word_fn(desc.len(), |word_index| {
                desc.members
                    .iter()
                    .skip(word_index * 64)
                    .take(64)
                    .enumerate()
                    .fold(0, |word, (bit_index, &mask)| {
                        word | (u64::from(mask & bit != 0) << bit_index)
                    })
            })
        });
        let member_txns = members.as_ref().map_or(desc.len(), TxnSet::count);
        Member {
            pendings: TxnSet::empty(desc.len()),
            commits: TxnSet::empty(desc.len()),
            aborts: TxnSet::empty(desc.len()),
            members,
            desc,
            state: vec![State::Q; len],
            pending: 0,
            decided: 0,
            member_txns,
            attempt: vec![0; len],
            elected: ELECTED_INITIAL,
            elected_by: first,
            last_seq: 0,
            deadline_us: u64::MAX,
            backoff_shift: 0,
            no_reasons: Vec::new(),
            done_reported: 0,
            replica,
            me,
            replicas_quorate: None,
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.desc.len()
    }

    /// True if this site is in transaction `index`'s commit group.
    pub(crate) fn is_member(&self, index: u32) -> bool {
        self.replica || self.desc.members[index as usize] & self.me.bit() != 0
    }

    /// True if some transaction is still open here (W, PC or PA).
    pub(crate) fn has_pending(&self) -> bool {
        debug_assert_eq!(
            self.pending as usize,
            self.state.iter().filter(|state| state.is_pending()).count()
        );
        debug_assert!(self.planes_match_states());
        self.pending > 0
    }

    /// Every transaction's state, in batch order.
    pub(crate) fn states(&self) -> &[State] {
        &self.state
    }

    /// Sets transaction `index`'s state, keeping the pending and decided counts.
    pub(crate) fn set_state(&mut self, index: u32, state: State) {
        self.set_word((index / 64) as usize, 1 << (index % 64), state, None);
    }

    /// Sets the state of every transaction of `txns` (and its attempt, if given),
    /// keeping the counts and the bit planes: a word of 64 transactions at a time for
    /// both, and one store per transaction.
    fn set_states(&mut self, txns: &TxnSet, state: State, attempt: Option<u32>) {
        if txns.universe() != self.len() {
            debug_assert!(false, "a transition over another batch size");
            return;
        }
        for (word_index, &word) in txns.words().iter().enumerate() {
            if word != 0 {
                self.set_word(word_index, word, state, attempt);
            }
        }
    }

    /// [`Member::set_states`] for the transactions `word` of word `word_index`: the
    /// one writer of `state`, its planes and its counts.
    fn set_word(&mut self, word_index: usize, word: u64, state: State, attempt: Option<u32>) {
        let pending_new = state.is_pending();
        let (commit_new, abort_new) = (state == State::Commit, state == State::Abort);
        let members = self.member_word(word_index);
        let pending_old = self.pendings.words()[word_index] & word;
        let final_old = self.final_word(word_index) & word & members;
        self.pending = self.pending - pending_old.count_ones()
            + if pending_new { word.count_ones() } else { 0 };
        self.decided = self.decided - final_old.count_ones()
            + if commit_new || abort_new {
                (word & members).count_ones()
            } else {
                0
            };
        self.pendings.assign_word(word_index, word, pending_new);
        self.commits.assign_word(word_index, word, commit_new);
        self.aborts.assign_word(word_index, word, abort_new);
        let base = word_index * 64;
        let mut bits = word;
        while bits != 0 {
            let index = base + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            self.state[index] = state;
            if let Some(attempt) = attempt {
                self.attempt[index] = attempt;
            }
        }
    }

    /// True if the bit planes say what `state` says (debug builds check it).
    fn planes_match_states(&self) -> bool {
        self.state.iter().enumerate().all(|(index, &state)| {
            let index = index as u32;
            self.pendings.contains(index) == state.is_pending()
                && self.commits.contains(index) == (state == State::Commit)
                && self.aborts.contains(index) == (state == State::Abort)
        }) && self.pendings.count() == self.pending
    }

    /// This site's transactions among word `word_index`'s 64.
    fn member_word(&self, word_index: usize) -> u64 {
        self.members
            .as_ref()
            .map_or(u64::MAX, |members| members.words()[word_index])
    }

    /// The decided (C or A) transactions among word `word_index`'s 64.
    pub(crate) fn final_word(&self, word_index: usize) -> u64 {
        self.commits.words()[word_index] | self.aborts.words()[word_index]
    }

    /// True if every transaction this site is in is decided here.
    pub(crate) fn all_final(&self) -> bool {
        self.decided_count() == self.member_txns
    }

    /// True once nothing about the batch can change here any more without a new
    /// election that nobody needs: nothing open, and every record durable.
    pub(crate) fn is_settled(&self, log: &Log) -> bool {
        self.last_seq <= log.durable_seq() && !self.has_pending()
    }

    /// How many transactions this site is in are decided here.
    pub(crate) fn decided_count(&self) -> u32 {
        debug_assert_eq!(
            self.decided as usize,
            (0..self.len())
                .filter(|&i| self.is_member(i) && self.state[i as usize].is_final())
                .count()
        );
        self.decided
    }

    /// A DONE to send if the batch is settled here and more is decided than last
    /// reported (a site that became pending again reports again).
    pub(crate) fn done_part(&mut self, log: &Log) -> Option<Part> {
        if !self.is_settled(log) {
            return None;
        }
        let decided = self.decided_count();
        if decided <= self.done_reported {
            return None;
        }
        self.done_reported = decided;
        Some(Part::Done {
            batch: self.desc.batch,
            decided,
        })
    }

    /// Arms the chase timer unless it is armed earlier already.
    pub(crate) fn arm(&mut self, at_us: u64) {
        self.deadline_us = self.deadline_us.min(at_us);
    }

    /// Moves `txns` to `state` at `attempt` and logs it (forced for PC/PA).
    pub(crate) fn transition(
        &mut self,
        log: &mut Log,
        state: State,
        attempt: u32,
        txns: TxnSet,
        out: &mut Output,
    ) {
        let changed = !txns.is_empty();
        self.record_transition(log, state, attempt, txns, out);
        if changed && !state.is_final() {
            log.force(out);
        }
    }

    /// [`Member::transition`] without the force: the caller forces (or, for a lazy
    /// round, leaves the record to the site's next sync; its acknowledgement waits).
    fn record_transition(
        &mut self,
        log: &mut Log,
        state: State,
        attempt: u32,
        txns: TxnSet,
        out: &mut Output,
    ) {
        if txns.is_empty() {
            return;
        }
        self.set_states(&txns, state, (!state.is_final()).then_some(attempt));
        if state.is_final() {
            log.discard_decided(self.desc.batch, &txns);
        }
        let record = Record::Transition {
            batch: self.desc.batch,
            state,
            attempt,
            elected: self.elected,
            txns,
        };
        self.last_seq = log.append(record, out);
    }

    /// ELECT from a recovery coordinator: join if the election is newer, then report
    /// the states once the raised `last_elected` is durable; else reject (fencing).
    pub(crate) fn on_elect(
        &mut self,
        log: &mut Log,
        termination: Termination,
        from: SiteId,
        elected: u32,
        out: &mut Output,
    ) {
        let duplicate = elected == self.elected && from == self.elected_by;
        let fenced = termination == Termination::E3pc;
        if elected < self.elected || (elected == self.elected && !duplicate && fenced) {
            if self.all_final() {
                // Every transaction of ours is decided here, and a decision is final:
                // tell it instead of fencing the election. A replica restarted with the
                // batch still open (the others decided it by recovery while it was
                // down) learns the outcome at once, where a REJECT would send it into
                // newer elections that only time settles. (A newer election is joined
                // as before: its ELECT-ACK carries the decided states.)
                self.send_decisions(from, out);
                return;
            }
            let part = Part::Reject {
                batch: self.desc.batch,
                elected: self.elected,
            };
            out.send(from, part);
            return;
        }
        self.join_election(log, from, elected, out);
        let states = self
            .state
            .iter()
            .copied()
            .zip(self.attempt.iter().copied())
            .collect();
        let part = Part::ElectAck {
            batch: self.desc.batch,
            elected,
            states,
        };
        log.send_after(self.last_seq, from, part, out);
    }

    /// Sends `to` this site's decisions of the batch at once, as [`Member::on_round`]
    /// does: a decision is final wherever it was taken (a commit only after a
    /// PRE-COMMIT quorum), so relaying it does not wait for this site's own record of
    /// it, which is logged unforced and may wait for the next sync.
    fn send_decisions(&self, to: SiteId, out: &mut Output) {
        let len = self.desc.len();
        let mut decided = [TxnSet::empty(len), TxnSet::empty(len)];
        for index in (0..len).filter(|&index| self.is_member(index)) {
            match self.state[index as usize] {
                State::Commit => decided[0].insert(index),
                State::Abort => decided[1].insert(index),
                _ => {}
            }
        }
        let [commit, abort] = decided;
        if commit.is_empty() && abort.is_empty() {
            return;
        }
        let part = Part::Decide {
            batch: self.desc.batch,
            commit,
            abort,
            desc: None,
        };
        out.send(to, part);
    }

    /// Joins election `elected` run by `from` if it is newer than this site's. Raising
    /// the counter is itself durable (a forced `Elected` record) before anything that
    /// depends on it is sent, even if no transaction changes state afterwards.
    fn join_election(&mut self, log: &mut Log, from: SiteId, elected: u32, out: &mut Output) {
        if elected <= self.elected {
            return;
        }
        self.elected = elected;
        self.elected_by = from;
        log.discard_stale(self.desc.batch, elected);
        let record = Record::Elected {
            batch: self.desc.batch,
            elected,
            by: from,
        };
        self.last_seq = log.append(record, out);
        log.force(out);
    }

    /// A PRE-COMMIT / PRE-ABORT round at attempt `elected`. Decided transactions are
    /// answered with their decision instead of an acknowledgement.
    ///
    /// With [`RoundSync::Lazy`] at election 1 (a participant, see there) the new record
    /// is not forced: it becomes durable with this site's next sync (the next batch's
    /// votes, or the driver's idle sync), and the acknowledgement waits for that as
    /// every acknowledgement waits for its record. A repeated round forces whatever its
    /// acknowledgement still waits for, so a coordinator short of its quorum is never
    /// left waiting on a site with nothing else to sync.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_round(
        &mut self,
        log: &mut Log,
        termination: Termination,
        from: SiteId,
        elected: u32,
        pre_commit: &TxnSet,
        pre_abort: &TxnSet,
        now_us: u64,
        pending_timeout_us: u64,
        sync: RoundSync,
        out: &mut Output,
    ) {
        let len = self.len();
        if pre_commit.universe() != len || pre_abort.universe() != len {
            return;
        }
        if elected < self.elected && termination == Termination::E3pc {
            let part = Part::Reject {
                batch: self.desc.batch,
                elected: self.elected,
            };
            out.send(from, part);
            return;
        }
        self.join_election(log, from, elected, out);
        let mut acked = [TxnSet::empty(len), TxnSet::empty(len)];
        let mut changed = [TxnSet::empty(len), TxnSet::empty(len)];
        let mut decided = [TxnSet::empty(len), TxnSet::empty(len)];
        for (slot, (set, state)) in [(pre_commit, State::PreCommit), (pre_abort, State::PreAbort)]
            .into_iter()
            .enumerate()
        {
            // A word at a time: decided members are answered with their decision, open
            // ones acknowledged, and only open ones already pending (W, PC or PA) can
            // be in the round's state at its attempt already, so only those are
            // looked at one by one.
            for (word_index, &word) in set.words().iter().enumerate() {
                let word = word & self.member_word(word_index);
                if word == 0 {
                    continue;
                }
                decided[0].assign_word(word_index, word & self.commits.words()[word_index], true);
                decided[1].assign_word(word_index, word & self.aborts.words()[word_index], true);
                let open = word & !self.final_word(word_index);
                acked[slot].assign_word(word_index, open, true);
                let pending = open & self.pendings.words()[word_index];
                let mut same = 0;
                let mut bits = pending;
                while bits != 0 {
                    let bit = bits.trailing_zeros();
                    bits &= bits - 1;
                    let index = word_index * 64 + bit as usize;
                    if self.state[index] == state && self.attempt[index] == elected {
                        same |= 1 << bit;
                    }
                }
                changed[slot].assign_word(word_index, open & !same, true);
            }
        }
        let [changed_pc, changed_pa] = changed;
        let changed = !changed_pc.is_empty() || !changed_pa.is_empty();
        let lazy = sync == RoundSync::Lazy && elected == ELECTED_INITIAL;
        self.record_transition(log, State::PreCommit, elected, changed_pc, out);
        self.record_transition(log, State::PreAbort, elected, changed_pa, out);
        if changed && !lazy {
            log.force(out);
        } else if !changed && lazy && self.last_seq > log.durable_seq() {
            // The round came again: the coordinator still waits for this site.
            log.force(out);
        }
        if self.has_pending() {
            self.arm(now_us + pending_timeout_us);
        }
        let [commit, abort] = decided;
        if !commit.is_empty() || !abort.is_empty() {
            out.send(
                from,
                Part::Decide {
                    batch: self.desc.batch,
                    commit,
                    abort,
                    desc: None,
                },
            );
        }
        let [pre_commit, pre_abort] = acked;
        if !pre_commit.is_empty() || !pre_abort.is_empty() {
            let part = Part::RoundAck {
                batch: self.desc.batch,
                elected,
                pre_commit,
                pre_abort,
            };
            log.send_after(self.last_seq, from, part, out);
        }
    }

    /// A DECIDE: settle every open member transaction it names (unforced: presumed
    /// abort, and a committed site that forgets learns the commit again).
    pub(crate) fn on_decide(
        &mut self,
        log: &mut Log,
        commit: &TxnSet,
        abort: &TxnSet,
        out: &mut Output,
    ) -> Option<Settled> {
        let len = self.len();
        if commit.universe() != len || abort.universe() != len {
            return None;
        }
        let open = |word_index: usize| self.member_word(word_index) & !self.final_word(word_index);
        let committed = TxnSet::from_word_fn(len, |word_index| {
            commit.words()[word_index] & open(word_index)
        });
        let aborted = TxnSet::from_word_fn(len, |word_index| {
            abort.words()[word_index] & open(word_index) & !committed.words()[word_index]
        });
        let settled = Settled { committed, aborted };
        self.transition(log, State::Commit, 0, settled.committed.clone(), out);
        self.transition(log, State::Abort, 0, settled.aborted.clone(), out);
        if !self.has_pending() {
            self.deadline_us = u64::MAX;
        }
        Some(settled)
    }

    /// The decided transactions, for answering HELP.
    pub(crate) fn decided_sets(&self) -> (TxnSet, TxnSet) {
        let len = self.len();
        let mut commit = TxnSet::empty(len);
        let mut abort = TxnSet::empty(len);
        for (index, state) in self.state.iter().enumerate() {
            match state {
                State::Commit => commit.insert(index as u32),
                State::Abort => abort.insert(index as u32),
                _ => {}
            }
        }
        (commit, abort)
    }

    /// Replays a recovered `Elected` or `Transition` record. The `last_seq` of a
    /// recovered batch stays 0: everything recovered is durable.
    pub(crate) fn replay(
        &mut self,
        record: &Record,
    ) -> Result<Option<(State, TxnSet)>, &'static str> {
        match record {
            Record::Elected { elected, by, .. } => {
                if *elected < self.elected {
                    return Err("last_elected decreased in the log");
                }
                self.elected = *elected;
                self.elected_by = *by;
                Ok(None)
            }
            Record::Transition {
                state,
                attempt,
                elected,
                txns,
                ..
            } => {
                if txns.universe() != self.len() {
                    return Err("transition over a different batch size");
                }
                self.elected = self.elected.max(*elected);
                self.set_states(txns, *state, (!state.is_final()).then_some(*attempt));
                Ok(Some((*state, txns.clone())))
            }
            _ => Ok(None),
        }
    }
}

/// Shares one descriptor between the batch map and the messages that carry it.
pub(crate) fn desc_of(member: &Member) -> DescriptorRef {
    Arc::clone(&member.desc)
}

impl Member {
    /// The record that carries this batch forward at a checkpoint: everything recovery
    /// would rebuild from the batch's records (see `proto::checkpoint`).
    pub(crate) fn carried(&self) -> Record {
        Record::CarriedBatch {
            desc: Arc::clone(&self.desc),
            elected: self.elected,
            by: self.elected_by,
            states: self
                .state
                .iter()
                .copied()
                .zip(self.attempt.iter().copied())
                .collect(),
            no_reasons: self.no_reasons.clone(),
        }
    }

    /// Rebuilds a batch from its carried record, as recovery of its records would.
    pub(crate) fn from_carried(
        record: &Record,
        me: SiteId,
        replica: bool,
        first: SiteId,
    ) -> Result<Member, &'static str> {
        let Record::CarriedBatch {
            desc,
            elected,
            by,
            states,
            no_reasons,
        } = record
        else {
            return Err("not a carried batch");
        };
        if !desc.is_well_formed() {
            return Err("malformed batch descriptor");
        }
        if states.len() != desc.txns.len() {
            return Err("carried states do not match the descriptor");
        }
        if no_reasons.iter().any(|&(index, _)| index >= desc.len()) {
            return Err("carried no vote outside the batch");
        }
        let mut member = Member::new(Arc::clone(desc), me, replica, first);
        member.elected = *elected;
        member.elected_by = *by;
        for (index, &(state, attempt)) in states.iter().enumerate() {
            member.set_state(index as u32, state);
            member.attempt[index] = attempt;
        }
        member.no_reasons = no_reasons.clone();
        Ok(member)
    }
}

// ---------------------------------------------------------------------------------
// Canonical digests, for model checkers (see `Coordinator::digest`).
// ---------------------------------------------------------------------------------

/// Hashes the instant `at_us` relative to the driver's clock `now_us`.
///
/// The machines read time only as the `now_us` their driver passes in, and only add
/// durations to it and compare instants, so two machines whose instants differ by one
/// shift behave alike. An instant already passed hashes as "now": every later `now_us`
/// is at least the driver's clock, so a passed deadline fires at the next poll either
/// way, and `arm` keeps the earlier one.
pub(crate) fn hash_instant<H: Hasher>(at_us: u64, now_us: u64, state: &mut H) {
    if at_us == u64::MAX {
        u64::MAX.hash(state);
    } else {
        at_us.saturating_sub(now_us).hash(state);
    }
}

/// A fixed-key fingerprint of one element, to hash a multiset in sorted order.
pub(crate) fn fingerprint<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Hashes the batch ids of an `awaiting_done` list as a set: `flush_done` acts once
/// per batch whatever the order and however often it is listed.
/// Hashes a batch map in batch id order (not the map's), each batch by `digest`.
pub(crate) fn hash_batch_map<V, H: Hasher>(
    batches: &super::types::BatchMap<V>,
    state: &mut H,
    mut digest: impl FnMut(&V, &mut H),
) {
    let mut ids: Vec<BatchId> = batches.keys().copied().collect();
    ids.sort_unstable();
    ids.len().hash(state);
    for id in ids {
        id.hash(state);
        if let Some(batch) = batches.get(&id) {
            digest(batch, state);
        }
    }
}

pub(crate) fn hash_batch_set<H: Hasher>(batches: &[BatchId], state: &mut H) {
    let mut sorted = batches.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.hash(state);
}

impl Log {
    /// Hashes the sequence numbers and the held parts, the latter as a multiset: they
    /// leave together on one `on_durable`, and the network does not order them.
    pub(crate) fn digest<H: Hasher>(&self, state: &mut H) {
        self.next_seq.hash(state);
        self.durable_seq.hash(state);
        let mut held: Vec<u64> = self.held.iter().map(fingerprint).collect();
        held.sort_unstable();
        held.hash(state);
        // Two-phase commit's held client outcomes, in the order they were held (one
        // per decision, released in that order).
        self.held_completions.hash(state);
    }
}

impl Member {
    /// Hashes every field, with the chase deadline relative to `now_us`.
    pub(crate) fn digest<H: Hasher>(&self, now_us: u64, state: &mut H) {
        self.desc.hash(state);
        self.state.hash(state);
        self.attempt.hash(state);
        self.elected.hash(state);
        self.elected_by.hash(state);
        self.last_seq.hash(state);
        hash_instant(self.deadline_us, now_us, state);
        self.backoff_shift.hash(state);
        self.done_reported.hash(state);
        self.no_reasons.hash(state);
        self.replica.hash(state);
        self.me.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::types::{Descriptor, SiteId, State};
    use crate::proto::TxnId;

    // Proves that a batch rebuilt from its carried record knows which transactions are
    // open: `has_pending` reads a count that every writer of `state` must keep, and a
    // carried batch that came back "settled" with a W inside would never chase its
    // decision (the SIGKILL test once hung on exactly that).
    #[test]
    fn a_carried_batch_keeps_its_pending_count() {
        let desc = Arc::new(Descriptor {
            batch: crate::proto::BatchId(1 << 32),
            txns: vec![TxnId(1), TxnId(2), TxnId(3)],
            members: vec![SiteId(3).bit(); 3],
        });
        let mut member = Member::new(desc, SiteId(3), false, SiteId(0));
        for (index, state) in [State::W, State::Commit, State::PreCommit]
            .into_iter()
            .enumerate()
        {
            member.set_state(index as u32, state);
        }
        let rebuilt = Member::from_carried(&member.carried(), SiteId(3), false, SiteId(0))
            .expect("a carried batch rebuilds");
        assert_eq!(rebuilt.pending, 2);
        assert!(rebuilt.has_pending());
        let mut settled = rebuilt;
        settled.set_state(0, State::Abort);
        settled.set_state(2, State::Commit);
        assert!(!settled.has_pending());
    }

    /// A participant (site 3) in two transactions, both voted yes, at election 1.
    fn prepared_member() -> (Member, Log) {
        let desc = Arc::new(Descriptor {
            batch: crate::proto::BatchId(1 << 32),
            txns: vec![TxnId(1), TxnId(2)],
            members: vec![SiteId(3).bit() | SiteId(4).bit(); 2],
        });
        let mut member = Member::new(desc, SiteId(3), false, SiteId(0));
        member.set_state(0, State::W);
        member.set_state(1, State::W);
        (member, Log::new())
    }

    fn round(member: &mut Member, log: &mut Log, elected: u32, sync: RoundSync) -> Output {
        let mut out = Output::default();
        let pre_commit = TxnSet::full(2);
        let pre_abort = TxnSet::empty(2);
        let termination = Termination::E3pc;
        let from = SiteId(0);
        member.on_round(
            log,
            termination,
            from,
            elected,
            &pre_commit,
            &pre_abort,
            0,
            1_000,
            sync,
            &mut out,
        );
        out
    }

    fn acks(out: &Output) -> usize {
        let is_ack = |o: &&Outgoing| matches!(o.part, Part::RoundAck { .. });
        out.sends.iter().filter(is_ack).count()
    }

    // Proves the lazy PRE-COMMIT round: the record is appended but not forced and the
    // acknowledgement waits for whatever sync comes next; the same round again forces
    // it (the coordinator is still short of its quorum), and the acknowledgement
    // leaves only once the record is durable. Forced rounds, and lazy ones at a later
    // election (recovery), sync at once as before.
    #[test]
    fn a_lazy_round_acknowledges_only_after_a_later_sync() {
        let (mut member, mut log) = prepared_member();
        let first = round(&mut member, &mut log, ELECTED_INITIAL, RoundSync::Lazy);
        assert_eq!(first.appends.len(), 1, "the PRE-COMMIT record is appended");
        assert_eq!(
            first.sync_upto, None,
            "a lazy round does not force its record"
        );
        assert_eq!(acks(&first), 0, "the acknowledgement waits for the record");
        assert_eq!(member.states()[0], State::PreCommit);

        let again = round(&mut member, &mut log, ELECTED_INITIAL, RoundSync::Lazy);
        assert!(
            again.appends.is_empty(),
            "nothing changed, nothing appended"
        );
        let upto = again.sync_upto.expect("a repeated round forces the record");
        assert_eq!(acks(&again), 0, "still not durable");
        let mut durable = Output::default();
        log.on_durable(upto, &mut durable);
        assert_eq!(
            acks(&durable),
            2,
            "both rounds' acknowledgements leave once durable"
        );

        let (mut member, mut log) = prepared_member();
        let forced = round(&mut member, &mut log, ELECTED_INITIAL, RoundSync::Forced);
        assert!(forced.sync_upto.is_some(), "a forced round syncs at once");
        let (mut member, mut log) = prepared_member();
        let recovery = round(&mut member, &mut log, ELECTED_INITIAL + 1, RoundSync::Lazy);
        assert!(
            recovery.sync_upto.is_some(),
            "a recovery round syncs at once, lazy or not"
        );
    }

    // Proves the word-at-a-time paths (`set_states`, `on_round`, `on_decide`) against
    // the one-transaction-at-a-time rules they replaced: after every step of a random
    // run at a participant whose transactions are a random part of the batch, the
    // states, attempts, bit planes and counts, the acknowledged and decided sets of a
    // round, and what a DECIDE settled, are what the per-transaction rules give.
    mod word_paths {
        use super::*;
        use proptest::prelude::*;

        const ME: SiteId = SiteId(3);
        const STATES: [State; 6] = [
            State::Q,
            State::W,
            State::PreCommit,
            State::PreAbort,
            State::Commit,
            State::Abort,
        ];

        #[derive(Debug, Clone)]
        enum Step {
            Set(u32, usize),
            Round(u32, Vec<bool>, Vec<bool>),
            Decide(Vec<bool>, Vec<bool>),
        }

        fn set_of(len: u32, bits: &[bool]) -> TxnSet {
            let mut set = TxnSet::empty(len);
            for (index, _) in bits.iter().enumerate().filter(|(_, &on)| on) {
                set.insert(index as u32);
            }
            set
        }

        fn step(len: u32) -> impl Strategy<Value = Step> {
            let bits = || proptest::collection::vec(any::<bool>(), len as usize);
            prop_oneof![
                (0..len, 0..STATES.len()).prop_map(|(index, state)| Step::Set(index, state)),
                (0..3u32, bits(), bits()).prop_map(|(raise, pc, pa)| Step::Round(raise, pc, pa)),
                (bits(), bits()).prop_map(|(commit, abort)| Step::Decide(commit, abort)),
            ]
        }

        fn run() -> impl Strategy<Value = (Vec<bool>, Vec<Step>)> {
            (1..150u32).prop_flat_map(|len| {
                (
                    proptest::collection::vec(any::<bool>(), len as usize),
                    proptest::collection::vec(step(len), 1..24),
                )
            })
        }

        /// The state and attempt the per-transaction rules keep.
        struct Reference {
            state: Vec<State>,
            attempt: Vec<u32>,
            member: Vec<bool>,
        }

        impl Reference {
            fn round(&mut self, elected: u32, sets: [&TxnSet; 2]) -> [TxnSet; 4] {
                let len = self.state.len() as u32;
                let mut acked = [TxnSet::empty(len), TxnSet::empty(len)];
                let mut changed = [TxnSet::empty(len), TxnSet::empty(len)];
                let mut decided = [TxnSet::empty(len), TxnSet::empty(len)];
                for (slot, state) in [State::PreCommit, State::PreAbort].into_iter().enumerate() {
                    for index in sets[slot].iter().filter(|&i| self.member[i as usize]) {
                        let i = index as usize;
                        match self.state[i] {
                            State::Commit => decided[0].insert(index),
                            State::Abort => decided[1].insert(index),
                            current => {
                                if current != state || self.attempt[i] != elected {
                                    changed[slot].insert(index);
                                }
                                acked[slot].insert(index);
                            }
                        }
                    }
                }
                for (slot, state) in [State::PreCommit, State::PreAbort].into_iter().enumerate() {
                    for index in changed[slot].iter() {
                        self.state[index as usize] = state;
                        self.attempt[index as usize] = elected;
                    }
                }
                let [pc, pa] = acked;
                let [commit, abort] = decided;
                [pc, pa, commit, abort]
            }

            fn decide(&mut self, commit: &TxnSet, abort: &TxnSet) -> (TxnSet, TxnSet) {
                let len = self.state.len() as u32;
                let (mut committed, mut aborted) = (TxnSet::empty(len), TxnSet::empty(len));
                for index in commit.iter().filter(|&i| self.member[i as usize]) {
                    if !self.state[index as usize].is_final() {
                        committed.insert(index);
                    }
                }
                for index in abort.iter().filter(|&i| self.member[i as usize]) {
                    if !self.state[index as usize].is_final() && !committed.contains(index) {
                        aborted.insert(index);
                    }
                }
                for index in committed.iter() {
                    self.state[index as usize] = State::Commit;
                }
                for index in aborted.iter() {
                    self.state[index as usize] = State::Abort;
                }
                (committed, aborted)
            }
        }

        /// A round's acknowledged (PC, PA) or decided (commit, abort) sets.
        type Pair = (TxnSet, TxnSet);

        fn sent(out: &Output) -> (Option<Pair>, Option<Pair>) {
            let (mut ack, mut decide) = (None, None);
            for outgoing in &out.sends {
                match &outgoing.part {
                    Part::RoundAck {
                        pre_commit,
                        pre_abort,
                        ..
                    } => ack = Some((pre_commit.clone(), pre_abort.clone())),
                    Part::Decide { commit, abort, .. } => {
                        decide = Some((commit.clone(), abort.clone()))
                    }
                    _ => {}
                }
            }
            (ack, decide)
        }

        proptest! {
            #[test]
            fn word_paths_agree_with_the_per_transaction_rules((member_bits, steps) in run()) {
                let len = member_bits.len() as u32;
                // Every transaction has a participant; this site is in the marked ones.
                let members = member_bits
                    .iter()
                    .map(|&mine| if mine { ME.bit() | SiteId(4).bit() } else { SiteId(4).bit() })
                    .collect();
                let desc = Arc::new(Descriptor {
                    batch: crate::proto::BatchId(1 << 32),
                    txns: (0..u64::from(len)).map(TxnId).collect(),
                    members,
                });
                let mut member = Member::new(desc, ME, false, SiteId(0));
                let mut log = Log::new();
                let mut reference = Reference {
                    state: vec![State::Q; len as usize],
                    attempt: vec![0; len as usize],
                    member: member_bits,
                };
                for step in steps {
                    match step {
                        Step::Set(index, state) => {
                            member.set_state(index, STATES[state]);
                            reference.state[index as usize] = STATES[state];
                        }
                        Step::Round(raise, pc, pa) => {
                            let elected = member.elected + raise;
                            let (pc, pa) = (set_of(len, &pc), set_of(len, &pa));
                            let mut out = Output::default();
                            member.on_round(
                                &mut log, Termination::E3pc, SiteId(0), elected, &pc, &pa,
                                0, 1_000, RoundSync::Forced, &mut out,
                            );
                            log.on_durable(AppendSeq(u64::MAX), &mut out);
                            let [ack_pc, ack_pa, commit, abort] =
                                reference.round(elected, [&pc, &pa]);
                            let (ack, decide) = sent(&out);
                            let empty = |a: &TxnSet, b: &TxnSet| a.is_empty() && b.is_empty();
                            let expected_ack = (!empty(&ack_pc, &ack_pa)).then_some((ack_pc, ack_pa));
                            prop_assert_eq!(ack, expected_ack);
                            let expected_decide = (!empty(&commit, &abort)).then_some((commit, abort));
                            prop_assert_eq!(decide, expected_decide);
                        }
                        Step::Decide(commit, abort) => {
                            let (commit, abort) = (set_of(len, &commit), set_of(len, &abort));
                            let mut out = Output::default();
                            let settled = member
                                .on_decide(&mut log, &commit, &abort, &mut out)
                                .expect("same batch size");
                            let (committed, aborted) = reference.decide(&commit, &abort);
                            prop_assert_eq!(settled.committed, committed);
                            prop_assert_eq!(settled.aborted, aborted);
                        }
                    }
                    prop_assert_eq!(member.states(), &reference.state[..]);
                    prop_assert_eq!(&member.attempt, &reference.attempt);
                    prop_assert!(member.planes_match_states());
                    let decided = (0..len)
                        .filter(|&i| reference.member[i as usize] && reference.state[i as usize].is_final())
                        .count() as u32;
                    prop_assert_eq!(member.decided, decided);
                }
            }
        }
    }
}
