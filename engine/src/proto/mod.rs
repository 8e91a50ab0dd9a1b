//! The I/O-free protocol core: events in, actions out, time passed in explicitly.
//!
//! Nothing in this module touches files, sockets, clocks or threads. Two roles exist,
//! [`Coordinator`] (a coordinator replica: any one opens batches, every replica
//! witnesses the others' batches and runs E3PC recovery) and [`Participant`] (wraps a [`ResourceManager`]).
//! Both follow the same driving contract, in the style of quinn-proto:
//!
//! 1. Feed events: [`Coordinator::submit`] (a client batch, on any replica),
//!    `handle_message(now_us, from, part, out)`, `handle_durable(now_us, upto, out)`
//!    (the driver synced every append up to `upto`), and `handle_timeout(now_us, out)`
//!    when `now_us >= poll_timeout()`.
//! 2. After each event (or a group of them), drain the [`Output`]: write
//!    `out.appends` to the WAL in order; if `out.sync_upto` is set, sync and later
//!    report it with `handle_durable`; transmit `out.sends` (use [`Output::frames`] to
//!    put every part for one site into one frame); complete `out.completions`.
//!    Sends never depend on the appends of the same output: a message that needs a
//!    durable state is held inside the machine until `handle_durable` covers it.
//! 3. Call `poll_timeout()` again and arm one timer for the returned instant.
//! 4. After a crash, rebuild with `Coordinator::recover` / `Participant::recover` from
//!    the records that survived, in log order (a participant whose log starts at a
//!    checkpoint also needs that checkpoint's snapshot:
//!    `Participant::recover_checkpointed`).
//! 5. To bound the log, call `Coordinator::checkpoint` / `Participant::checkpoint`
//!    between events (see [`checkpoint`]).

pub mod checkpoint;
mod coordinator;
pub mod ids;
mod member;
pub mod msg;
mod participant;
pub mod predict;
pub mod record;
pub mod rm;
pub(crate) mod table;
pub mod types;

use std::collections::BTreeMap;

pub use coordinator::Coordinator;
pub use msg::{Outgoing, Part, ELECTED_INITIAL};
pub use participant::Participant;

pub use record::{Record, RecordError};
pub use rm::{Op, Reason, ResourceManager, RestoreError, TxnId, Vote, OP_PAYLOAD_BYTES};
pub use types::{
    is_quorum, AppendSeq, BatchId, Descriptor, DescriptorRef, Outcome, SiteId, State, TxnSet,
    BATCH_INCARNATION_MAX, BATCH_OPENER_RANKS_MAX, BATCH_TXNS_MAX, SITES_MAX,
};

/// How a recovery coordinator decides. Only [`Termination::E3pc`] is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Termination {
    /// Keidar and Dolev's E3PC: quorums, elections and attempts (DESIGN §2).
    #[default]
    E3pc,
    /// The seed's rule, kept only to show that the checkers bite: ask the participants
    /// that answer, any PC → commit, all prepared → abort; no quorum, no fencing, and
    /// the normal path waits for every participant's PRE-COMMIT acknowledgement.
    #[doc(hidden)]
    NaiveUnsafe,
}

/// Which commit protocol the sites run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Three-phase commit with E3PC termination: never blocks a connected quorum.
    #[default]
    ThreePhase,
    /// Two-phase commit with presumed abort, for comparison benchmarks. No PRE-COMMIT
    /// round: once every vote is yes, the batch's opener forces its commit record, then
    /// answers the client and sends COMMIT. The other replicas take no part and nobody
    /// runs E3PC: a participant that voted yes waits for the opener (it asks it again
    /// every pending timeout), so a coordinator failure **blocks** the transactions it
    /// had in flight until it comes back. When it does, a transaction without a commit
    /// record is aborted (presumed abort: a commit is durable before anyone hears of it).
    TwoPhase,
}

/// Protocol configuration shared by every site of a deployment.
#[derive(Clone, Debug)]
pub struct ProtoConfig {
    /// The coordinator replicas, in recovery priority order. Any of them may open
    /// batches (the batch id names the opener's index here). Every other site id is a
    /// participant.
    pub replicas: Vec<SiteId>,
    /// How long the active coordinator waits for votes before aborting the laggards.
    /// With `overlap`, this is the wait before a participant's first vote-latency
    /// sample; afterwards the wait adapts (see [`predict`]) within
    /// `[min(vote_timeout_min_us, vote_timeout_us), vote_timeout_max_us]`.
    pub vote_timeout_us: u64,
    pub vote_timeout_min_us: u64,
    pub vote_timeout_max_us: u64,
    /// Period of PRE-COMMIT / recovery-round retransmissions to sites that have not
    /// acknowledged yet.
    pub retransmit_us: u64,
    /// Retransmissions of one round before the driver of the round gives up and
    /// leaves the batch to recovery.
    pub retransmits_max: u32,
    /// How long a site holds an undecided transaction before it asks for (participant)
    /// or starts (replica) recovery.
    pub pending_timeout_us: u64,
    /// Delay per replica rank before it starts recovery, so that the lowest-id live
    /// replica normally runs it alone.
    pub recovery_stagger_us: u64,
    /// How long a recovery coordinator collects states before deciding with what it has.
    pub collect_timeout_us: u64,
    /// Cap on the exponential backoff (as a shift) of repeated recovery attempts.
    pub backoff_shift_max: u32,
    /// Three-phase (the product) or two-phase (a blocking baseline for benchmarks).
    pub protocol: Protocol,
    /// Phase overlap at the coordinator: the normal path's PRE-COMMIT leaves while the
    /// coordinator's own PC record is still syncing (it counts itself in the quorum
    /// only once that record is durable), and the vote timeout adapts to each
    /// participant's observed vote latency (see [`predict`]). Off: the PC record is
    /// durable before the round leaves, and the vote timeout is `vote_timeout_us`.
    pub overlap: bool,
    /// Decided transaction ids a participant keeps in its id index (see [`ids`]): a
    /// resend is refused while its id is among the last this many decided there.
    /// Every checkpoint of a participant carries its index, 25 bytes an id.
    pub held_ids_decided_max: usize,
    #[doc(hidden)]
    pub termination: Termination,
}

impl ProtoConfig {
    /// A configuration with `replicas` and timeouts fit for a LAN (and the simulator).
    pub fn new(replicas: Vec<SiteId>) -> ProtoConfig {
        ProtoConfig {
            replicas,
            vote_timeout_us: 20_000,
            // Above the simulator's slowest failure-free vote (two 3 ms hops and a
            // 1.5 ms sync), so that adaptation never aborts a failure-free run.
            vote_timeout_min_us: 10_000,
            vote_timeout_max_us: 200_000,
            retransmit_us: 5_000,
            retransmits_max: 4,
            pending_timeout_us: 30_000,
            recovery_stagger_us: 10_000,
            collect_timeout_us: 10_000,
            backoff_shift_max: 4,
            protocol: Protocol::ThreePhase,
            overlap: true,
            held_ids_decided_max: ids::HELD_IDS_DECIDED_MAX,
            termination: Termination::E3pc,
        }
    }

    /// How long a replica waits for the decisions of a batch it knows but holds in Q
    /// only (from ANNOUNCE, or after a restart) before it recovers the batch itself:
    /// the longest vote wait, then a pending timeout.
    pub fn undecided_wait_us(&self) -> u64 {
        self.vote_timeout_max_us
            .max(self.vote_timeout_us)
            .saturating_add(self.pending_timeout_us)
    }

    /// The bounds of the adaptive vote timeout.
    pub fn vote_timeouts(&self) -> predict::VoteTimeouts {
        predict::VoteTimeouts {
            initial_us: self.vote_timeout_us,
            min_us: self.vote_timeout_min_us,
            max_us: self.vote_timeout_max_us,
        }
    }

    /// The replica that opened `batch` (named by the rank in its id) and drives its
    /// election 1; `None` for an id whose rank names no replica (a malformed peer's).
    pub fn opener(&self, batch: BatchId) -> Option<SiteId> {
        self.replicas.get(batch.opener_rank() as usize).copied()
    }

    /// [`opener`](Self::opener), falling back to `replicas[0]` for an id that names no
    /// replica: such a batch is never opened by anyone, and nothing it holds can be
    /// decided by an opener that does not exist, so recovery finishes it.
    pub(crate) fn opener_or_first(&self, batch: BatchId) -> SiteId {
        self.opener(batch).unwrap_or(self.replicas[0])
    }

    /// The coordinator replicas as a site mask.
    pub fn replica_mask(&self) -> u64 {
        self.replicas.iter().fold(0, |acc, site| acc | site.bit())
    }

    /// Checks the configuration a driver could get wrong.
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.replicas.is_empty() {
            return Err(ProtoError::Config(
                "at least one coordinator replica is needed",
            ));
        }
        if self
            .replicas
            .iter()
            .any(|site| site.0 as usize >= SITES_MAX)
        {
            return Err(ProtoError::Config("site ids must be below SITES_MAX"));
        }
        if self.replica_mask().count_ones() as usize != self.replicas.len() {
            return Err(ProtoError::Config("replica ids must be distinct"));
        }
        if self.protocol == Protocol::TwoPhase && self.termination != Termination::E3pc {
            return Err(ProtoError::Config(
                "the two-phase protocol has no termination rule to choose",
            ));
        }
        if self.vote_timeout_min_us > self.vote_timeout_max_us {
            return Err(ProtoError::Config(
                "vote_timeout_min_us must not exceed vote_timeout_max_us",
            ));
        }
        if self.retransmit_us == 0 || self.collect_timeout_us == 0 || self.pending_timeout_us == 0 {
            return Err(ProtoError::Config("timeouts must be positive"));
        }
        Ok(())
    }
}

/// Errors of the protocol core: bad input from a caller or bad recovered state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("invalid batch: {0}")]
    BadBatch(&'static str),
    #[error("recovered log is inconsistent: {0}")]
    BadLog(&'static str),
    #[error("replay diverged: the resource manager voted differently for batch {batch:?}")]
    ReplayDiverged { batch: BatchId },
    #[error("the log starts at checkpoint {number}, but no snapshot of it was given")]
    SnapshotMissing { number: u64 },
    #[error("restoring the snapshot of checkpoint {number}: {source}")]
    Restore { number: u64, source: RestoreError },
}

/// A batch of client transactions handed to the active coordinator.
#[derive(Clone, Debug, Default)]
pub struct BatchInput {
    pub txns: Vec<TxnId>,
    /// Participant site mask per transaction.
    pub members: Vec<u64>,
    /// Each participant's operations, in batch order (one per transaction it is in).
    pub ops: Vec<(SiteId, Vec<Op>)>,
}

/// Outcomes the coordinator fixed for client transactions of one batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Completion {
    pub batch: BatchId,
    pub outcome: Outcome,
    /// Indices into the batch (the driver keeps its tickets in batch order).
    pub txns: TxnSet,
    /// For aborts this coordinator decided on the normal path, why: the participant's
    /// no vote, or for a missing vote `Reason::TIMEOUT` (another participant voted yes)
    /// or `Reason::UNANSWERED` (none did). Aborts decided by termination
    /// (or a DECIDE from another site) carry no reason. Sorted by index.
    pub reasons: Vec<(u32, Reason)>,
    /// For aborts whose reason is [`Reason::HELD_BY_BATCH`] (a resend of an id another
    /// batch holds): that batch, and the id's outcome there, which is what the client
    /// must hear (never [`ids::HeldOutcome::Pending`] outside the machine). Sorted by
    /// index.
    pub held: Vec<(u32, BatchId, ids::HeldOutcome)>,
}

/// The actions a state machine asks its driver to perform. Reused across calls: the
/// driver drains it and calls [`Output::clear`].
#[derive(Debug, Default)]
pub struct Output {
    /// Records to append to this site's WAL, in this order.
    pub appends: Vec<(AppendSeq, Record)>,
    /// Sync the WAL up to (at least) this append, then call `handle_durable`.
    pub sync_upto: Option<AppendSeq>,
    /// Message parts to send; all of them may leave at once.
    pub sends: Vec<Outgoing>,
    /// Client outcomes that are now fixed.
    pub completions: Vec<Completion>,
}

impl Output {
    /// Empties every list, keeping the allocations.
    pub fn clear(&mut self) {
        self.appends.clear();
        self.sync_upto = None;
        self.sends.clear();
        self.completions.clear();
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.sync_upto.is_none()
            && self.sends.is_empty()
            && self.completions.is_empty()
    }

    /// Drains the sends into one frame per destination, keeping their order, so that a
    /// PREPARE, a PRE-COMMIT and a COMMIT for one site travel together.
    pub fn frames(&mut self) -> BTreeMap<SiteId, Vec<Part>> {
        let mut frames: BTreeMap<SiteId, Vec<Part>> = BTreeMap::new();
        for outgoing in self.sends.drain(..) {
            frames.entry(outgoing.to).or_default().push(outgoing.part);
        }
        frames
    }

    pub(crate) fn send(&mut self, to: SiteId, part: Part) {
        self.sends.push(Outgoing { to, part });
    }
}
