//! The invariant checker. It watches what every site appends, makes durable and sends,
//! and what the coordinator tells clients, and checks invariants 1–6 of DESIGN §2 at
//! every step; the simulator adds the end-of-run checks (3, 6, 7, 8).
//!
//! It builds its own view of each site's state from the records the site appends (every
//! state change of the protocol is a record), once for what was appended ("live") and
//! once for what was synced ("durable"), so it can tell a message that depends on
//! an unsynced state from one that does not.

use std::collections::{HashMap, HashSet};

use crate::proto::{
    is_quorum, BatchId, Completion, DescriptorRef, Outcome, Part, Record, SiteId, State,
    Termination, TxnSet, Vote, ELECTED_INITIAL,
};

/// A broken invariant: its number in DESIGN §2 and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: u8,
    pub message: String,
}

/// One site's view of one batch, rebuilt from its records.
#[derive(Clone, Debug, Default)]
struct View {
    state: Vec<State>,
    attempt: Vec<u32>,
    elected: u32,
    yes: Vec<bool>,
}

impl View {
    fn new(len: usize) -> View {
        View {
            state: vec![State::Q; len],
            attempt: vec![0; len],
            elected: 1,
            yes: vec![false; len],
        }
    }
}

type TxnKey = (BatchId, u32);

/// The checker's whole state for one run.
pub struct Checker {
    termination: Termination,
    replica_mask: u64,
    /// Two-phase commit: the coordinator whose durable commit record alone fixes an
    /// outcome (there is no PC quorum to check an acknowledgement against).
    two_phase_coordinator: Option<SiteId>,
    descs: HashMap<BatchId, DescriptorRef>,
    live: HashMap<(u8, BatchId), View>,
    durable: HashMap<(u8, BatchId), View>,
    /// The first vote each participant sent on each transaction.
    first_vote: HashMap<(BatchId, u32, u8), Vote>,
    ever_commit: HashSet<TxnKey>,
    ever_abort: HashSet<TxnKey>,
    acked: HashMap<TxnKey, Outcome>,
    /// Batches some site sent a message about.
    exposed: HashSet<BatchId>,
    violation: Option<Violation>,
}

impl Checker {
    pub fn new(termination: Termination, replica_mask: u64) -> Checker {
        Checker {
            termination,
            replica_mask,
            two_phase_coordinator: None,
            descs: HashMap::new(),
            live: HashMap::new(),
            durable: HashMap::new(),
            first_vote: HashMap::new(),
            ever_commit: HashSet::new(),
            ever_abort: HashSet::new(),
            acked: HashMap::new(),
            exposed: HashSet::new(),
            violation: None,
        }
    }

    /// Checks a two-phase run: a client commit needs `coordinator`'s durable commit
    /// record instead of a durable PC quorum.
    pub fn two_phase(mut self, coordinator: SiteId) -> Checker {
        self.two_phase_coordinator = Some(coordinator);
        self
    }

    /// The first violation found, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    pub(crate) fn fail(&mut self, invariant: u8, message: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation { invariant, message });
        }
    }

    /// The outcomes acknowledged to clients.
    pub fn acked(&self) -> &HashMap<TxnKey, Outcome> {
        &self.acked
    }

    /// True if some site ever decided commit (resp. abort) for the transaction.
    pub fn ever(&self, key: TxnKey, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Commit => self.ever_commit.contains(&key),
            Outcome::Abort => self.ever_abort.contains(&key),
        }
    }

    /// Every batch descriptor seen.
    pub fn descs(&self) -> impl Iterator<Item = &DescriptorRef> {
        self.descs.values()
    }

    /// The first vote `site` sent on the transaction.
    pub fn first_vote(&self, batch: BatchId, index: u32, site: SiteId) -> Option<Vote> {
        self.first_vote.get(&(batch, index, site.0)).copied()
    }

    /// `site`'s live state for a transaction (records appended, crash-trimmed).
    pub fn live_state(&self, site: SiteId, batch: BatchId, index: u32) -> Option<State> {
        self.live
            .get(&(site.0, batch))
            .and_then(|view| view.state.get(index as usize).copied())
    }

    /// `site`'s durable yes vote on a transaction.
    pub fn durable_yes(&self, site: SiteId, batch: BatchId, index: u32) -> bool {
        self.durable
            .get(&(site.0, batch))
            .is_some_and(|view| view.yes.get(index as usize).copied().unwrap_or(false))
    }

    /// Every (site, batch, index, state) with an open state in the live views.
    pub fn pending(&self) -> Vec<(u8, BatchId, u32, State)> {
        let mut open = Vec::new();
        for ((site, batch), view) in &self.live {
            for (index, state) in view.state.iter().enumerate() {
                if state.is_pending() {
                    open.push((*site, *batch, index as u32, *state));
                }
            }
        }
        open.sort_by_key(|entry| (entry.1, entry.2, entry.0));
        open
    }

    /// A record the site just appended (not yet durable).
    pub fn on_append(&mut self, site: SiteId, record: &Record) {
        self.learn(record);
        let Some(batch) = record.batch() else { return };
        let Some(len) = self.descs.get(&batch).map(|desc| desc.txns.len()) else {
            self.fail(
                5,
                format!("site {} logged {record:?} for an unknown batch", site.0),
            );
            return;
        };
        let mut view = self
            .live
            .remove(&(site.0, batch))
            .unwrap_or_else(|| View::new(len));
        self.check_record(site, batch, &view, record);
        apply(&mut view, site, record);
        self.live.insert((site.0, batch), view);
    }

    /// Records that became durable at `site`, in order.
    pub fn on_durable(&mut self, site: SiteId, record: &Record) {
        let Some(batch) = record.batch() else { return };
        let Some(len) = self.descs.get(&batch).map(|desc| desc.txns.len()) else {
            return;
        };
        if let Record::Transition {
            state: State::Commit,
            txns,
            ..
        } = record
        {
            if self.two_phase_coordinator == Some(site) {
                for index in txns.iter() {
                    self.ever_commit.insert((batch, index));
                    self.check_atomicity((batch, index));
                }
            }
        }
        apply(
            self.durable
                .entry((site.0, batch))
                .or_insert_with(|| View::new(len)),
            site,
            record,
        );
    }

    /// `site` crashed and restarts from `survivors`: both views restart from them.
    pub fn on_crash(&mut self, site: SiteId, survivors: &[Record]) {
        self.live.retain(|(owner, _), _| *owner != site.0);
        self.durable.retain(|(owner, _), _| *owner != site.0);
        for record in survivors {
            self.learn(record);
            let Some(batch) = record.batch() else {
                continue;
            };
            let Some(len) = self.descs.get(&batch).map(|desc| desc.txns.len()) else {
                continue;
            };
            apply(
                self.live
                    .entry((site.0, batch))
                    .or_insert_with(|| View::new(len)),
                site,
                record,
            );
            apply(
                self.durable
                    .entry((site.0, batch))
                    .or_insert_with(|| View::new(len)),
                site,
                record,
            );
        }
    }

    fn learn(&mut self, record: &Record) {
        if let Record::Begin { desc } | Record::Prepared { desc, .. } = record {
            let known = self
                .descs
                .entry(desc.batch)
                .or_insert_with(|| desc.clone())
                .clone();
            if known != *desc {
                // A coordinator that crashed before its incarnation was durable may
                // reuse the id of a batch nobody else ever saw; anything else is a bug.
                if self.exposed.contains(&desc.batch) {
                    self.fail(
                        5,
                        format!("batch id {:?} reused for a different batch", desc.batch),
                    );
                }
                self.descs.insert(desc.batch, desc.clone());
                self.live.retain(|(_, batch), _| *batch != desc.batch);
                self.durable.retain(|(_, batch), _| *batch != desc.batch);
            }
        }
    }

    /// Invariants 1, 2, 4 and 5 on one appended record.
    fn check_record(&mut self, site: SiteId, batch: BatchId, view: &View, record: &Record) {
        match record {
            Record::Elected { elected, .. } if *elected < view.elected => {
                self.fail(
                    5,
                    format!(
                        "site {} lowered last_elected {} -> {elected} in {batch:?}",
                        site.0, view.elected
                    ),
                );
            }
            Record::Transition {
                state,
                attempt,
                elected,
                txns,
                ..
            } => {
                if !state.is_final() && attempt > elected.max(&view.elected) {
                    self.fail(
                        5,
                        format!(
                            "site {} attempt {attempt} above last_elected {elected}",
                            site.0
                        ),
                    );
                }
                for index in txns.iter() {
                    self.check_transition(site, batch, view, index, *state, *attempt);
                }
            }
            _ => {}
        }
    }

    fn check_transition(
        &mut self,
        site: SiteId,
        batch: BatchId,
        view: &View,
        index: u32,
        state: State,
        attempt: u32,
    ) {
        let i = index as usize;
        let (current, current_attempt) = (view.state[i], view.attempt[i]);
        let who = format!("site {} txn {batch:?}#{index}", site.0);
        if current.is_final() && current != state {
            self.fail(4, format!("{who} changed final {current:?} to {state:?}"));
        }
        let pre = |s: State| matches!(s, State::PreCommit | State::PreAbort);
        if pre(current)
            && pre(state)
            && !(attempt > current_attempt || (attempt == current_attempt && state == current))
        {
            self.fail(
                4,
                format!("{who} moved {current:?}@{current_attempt} to {state:?}@{attempt}"),
            );
        }
        if matches!(state, State::PreCommit | State::Commit) {
            self.check_validity(&who, batch, index);
        }
        let key = (batch, index);
        match state {
            // A two-phase coordinator decides when its commit record is durable: before
            // that, a crash loses it and presumed abort is right (see `on_durable`).
            State::Commit if self.two_phase_coordinator == Some(site) => {}
            State::Commit => {
                self.ever_commit.insert(key);
            }
            State::Abort => {
                self.ever_abort.insert(key);
            }
            _ => {}
        }
        self.check_atomicity(key);
    }

    /// Invariant 2: PC or C needs a yes (or read-only) vote from every participant.
    fn check_validity(&mut self, who: &str, batch: BatchId, index: u32) {
        let Some(members) = self
            .descs
            .get(&batch)
            .map(|desc| desc.members[index as usize])
        else {
            return;
        };
        for site in crate::proto::types::sites_of(members) {
            match self.first_vote.get(&(batch, index, site.0)) {
                Some(Vote::Yes | Vote::ReadOnly) => {}
                other => self.fail(
                    2,
                    format!(
                        "{who} reached PC/C but participant {} voted {other:?}",
                        site.0
                    ),
                ),
            }
        }
    }

    /// Invariants 1 and 6: never both outcomes, and never against a client's answer.
    fn check_atomicity(&mut self, key: TxnKey) {
        let (commit, abort) = (
            self.ever_commit.contains(&key),
            self.ever_abort.contains(&key),
        );
        if commit && abort {
            self.fail(
                1,
                format!("txn {:?}#{} was both committed and aborted", key.0, key.1),
            );
        }
        match self.acked.get(&key) {
            Some(Outcome::Commit) if abort => self.fail(
                6,
                format!("acknowledged commit of {:?}#{} was aborted", key.0, key.1),
            ),
            Some(Outcome::Abort) if commit => self.fail(
                6,
                format!("acknowledged abort of {:?}#{} was committed", key.0, key.1),
            ),
            _ => {}
        }
    }

    /// A part `site` sends: invariant 5's "durable before dependent messages".
    pub fn on_send(&mut self, site: SiteId, part: &Part) {
        self.exposed.insert(part.batch());
        match part {
            Part::Votes {
                batch,
                yes,
                read_only,
                no,
                ..
            } => self.check_votes(site, *batch, yes, read_only, no),
            // A ROUND proposes; it acknowledges nothing. Its sender's own PC / PA counts
            // toward the quorum only once durable (checked when a client hears of the
            // outcome, `check_early_ack`), so with overlap it may leave before that
            // record is durable. Its election, though, is a counter: durable first.
            Part::Round { batch, elected, .. } => {
                let durable = self
                    .durable
                    .get(&(site.0, *batch))
                    .map_or(ELECTED_INITIAL, |view| view.elected);
                if durable < *elected {
                    self.fail(
                        5,
                        format!(
                            "site {} sent ROUND@{elected} with durable last_elected {durable}",
                            site.0
                        ),
                    );
                }
            }
            Part::RoundAck {
                batch,
                elected,
                pre_commit,
                pre_abort,
            } => {
                self.check_durable_round(
                    site,
                    *batch,
                    *elected,
                    pre_commit,
                    pre_abort,
                    part.name(),
                );
            }
            Part::ElectAck { batch, elected, .. } => {
                let durable = self
                    .durable
                    .get(&(site.0, *batch))
                    .map_or(1, |view| view.elected);
                if durable < *elected {
                    self.fail(
                        5,
                        format!(
                            "site {} sent ELECT-ACK {elected} with durable last_elected {durable}",
                            site.0
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn check_votes(
        &mut self,
        site: SiteId,
        batch: BatchId,
        yes: &TxnSet,
        read_only: &TxnSet,
        no: &[(u32, crate::proto::Reason)],
    ) {
        for index in yes.iter() {
            if !self.durable_yes(site, batch, index) {
                self.fail(
                    5,
                    format!(
                        "site {} sent a yes on {batch:?}#{index} before it was durable",
                        site.0
                    ),
                );
            }
            self.first_vote
                .entry((batch, index, site.0))
                .or_insert(Vote::Yes);
        }
        for index in read_only.iter() {
            self.first_vote
                .entry((batch, index, site.0))
                .or_insert(Vote::ReadOnly);
        }
        for &(index, reason) in no {
            self.first_vote
                .entry((batch, index, site.0))
                .or_insert(Vote::No(reason));
            if self.first_vote.get(&(batch, index, site.0)) == Some(&Vote::No(reason)) {
                self.ever_abort.insert((batch, index));
                self.check_atomicity((batch, index));
            }
        }
    }

    fn check_durable_round(
        &mut self,
        site: SiteId,
        batch: BatchId,
        elected: u32,
        pc: &TxnSet,
        pa: &TxnSet,
        name: &str,
    ) {
        let view = self.durable.get(&(site.0, batch)).cloned();
        let mut bad = None;
        for (set, pre, fin) in [
            (pc, State::PreCommit, State::Commit),
            (pa, State::PreAbort, State::Abort),
        ] {
            for index in set.iter() {
                let held = view
                    .as_ref()
                    .map(|v| (v.state[index as usize], v.attempt[index as usize]));
                let ok = matches!(held, Some((s, a)) if (s == pre && a == elected) || s == fin);
                if !ok && bad.is_none() {
                    bad = Some((index, held));
                }
            }
        }
        if let Some((index, held)) = bad {
            self.fail(5, format!("site {} sent {name}@{elected} on {batch:?}#{index} while durable state was {held:?}", site.0));
        }
    }

    /// A client outcome: invariant 6, and the early-ack rule (a durable PC quorum).
    pub fn on_complete(&mut self, completion: &Completion) {
        for index in completion.txns.iter() {
            let key = (completion.batch, index);
            if let Some(previous) = self.acked.insert(key, completion.outcome) {
                if previous != completion.outcome {
                    self.fail(
                        6,
                        format!(
                            "client told {previous:?} then {:?} for {key:?}",
                            completion.outcome
                        ),
                    );
                }
            }
            if completion.outcome == Outcome::Commit && self.termination == Termination::E3pc {
                self.check_early_ack(key);
            }
            self.check_atomicity(key);
        }
    }

    fn check_early_ack(&mut self, key: TxnKey) {
        let Some(members) = self
            .descs
            .get(&key.0)
            .map(|desc| desc.members[key.1 as usize])
        else {
            return;
        };
        let group = match self.two_phase_coordinator {
            Some(coordinator) => coordinator.bit(),
            None => members | self.replica_mask,
        };
        let mut durable_pc = 0u64;
        for site in crate::proto::types::sites_of(group) {
            let state = self
                .durable
                .get(&(site.0, key.0))
                .map(|view| view.state[key.1 as usize]);
            if matches!(state, Some(State::PreCommit | State::Commit)) {
                durable_pc |= site.bit();
            }
        }
        if !is_quorum(durable_pc, group) {
            self.fail(6, format!("commit of {key:?} acknowledged without a durable PC quorum ({durable_pc:#b} of {group:#b})"));
        }
    }
}

fn apply(view: &mut View, site: SiteId, record: &Record) {
    match record {
        Record::Prepared { desc, votes, .. } => {
            let mine = (0..desc.txns.len()).filter(|&i| desc.members[i] & site.bit() != 0);
            for (index, vote) in mine.zip(votes) {
                if index >= view.state.len() {
                    return;
                }
                match vote {
                    Vote::Yes => {
                        view.state[index] = State::W;
                        view.yes[index] = true;
                    }
                    Vote::No(_) => view.state[index] = State::Abort,
                    Vote::ReadOnly => {}
                }
            }
        }
        Record::Elected { elected, .. } => view.elected = view.elected.max(*elected),
        Record::Transition {
            state,
            attempt,
            elected,
            txns,
            ..
        } => {
            view.elected = view.elected.max(*elected);
            for index in txns.iter() {
                let i = index as usize;
                if i < view.state.len() {
                    view.state[i] = *state;
                    if !state.is_final() {
                        view.attempt[i] = *attempt;
                    }
                }
            }
        }
        // A carried batch restates the state the site held at a checkpoint.
        // A site leaves Q only by voting yes or no (or, as a witness replica, by a
        // round, where `yes` does not matter), and a no vote carries its reason: the
        // yes votes a crash-rebuilt view must remember follow.
        Record::CarriedBatch {
            desc,
            elected,
            states,
            no_reasons,
            ..
        } => {
            view.elected = view.elected.max(*elected);
            for (i, &(state, attempt)) in states.iter().enumerate() {
                if i < view.state.len() {
                    view.state[i] = state;
                    view.attempt[i] = attempt;
                    let member = desc.members.get(i).is_some_and(|m| m & site.bit() != 0);
                    let voted_no = no_reasons.iter().any(|&(index, _)| index as usize == i);
                    if member && state != State::Q && !voted_no {
                        view.yes[i] = true;
                    }
                }
            }
        }
        Record::Incarnation { .. }
        | Record::Begin { .. }
        | Record::Checkpoint { .. }
        | Record::CarriedRetired { .. }
        | Record::CarriedIds { .. } => {}
    }
}
