//! Protocol messages. Each part concerns one batch; a driver may put every part bound
//! for one site into one frame, so that PREPARE(n+2), PRE-COMMIT(n+1) and COMMIT(n)
//! travel together (see [`Output::frames`](super::Output::frames)).

use std::sync::Arc;

use super::rm::{Op, Reason};
use super::types::{BatchId, DescriptorRef, SiteId, State, TxnSet};

/// The `last_elected` a batch starts with: the opening coordinator is election 1, so
/// that its PRE-COMMIT is attempt 1 and outranks the attempt 0 of every waiting site.
pub const ELECTED_INITIAL: u32 = 1;

/// One message part. `elected` stamps are the sender's election for the batch: a
/// receiver that joined a higher election rejects the part (fencing).
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum Part {
    /// Phase 1, coordinator → participant, stamped [`ELECTED_INITIAL`]: the batch and
    /// this participant's operations, in batch order.
    Prepare { desc: DescriptorRef, ops: Arc<[Op]> },
    /// Phase 1 reply, sent once the votes are durable: `yes` and `read_only` sets, and
    /// the no votes with their reasons. Transactions this participant is not in are in
    /// none of them. `held` names, for each no vote [`Reason::HELD_BY_BATCH`], the
    /// batch that holds the id here and the state the participant holds it in there
    /// (`W` while undecided, `Commit` or `Abort`): see `proto::ids`.
    Votes {
        batch: BatchId,
        yes: TxnSet,
        read_only: TxnSet,
        no: Vec<(u32, Reason)>,
        held: Vec<(u32, BatchId, State)>,
    },
    /// Speculation (`overlap`), the batch's opener → the other replicas, sent with the
    /// PREPAREs: the batch, so that each replica logs its descriptor while the votes
    /// are still coming in and its PRE-COMMIT record is small. It proposes nothing: a
    /// replica that knows a batch only from it holds every transaction in Q.
    Announce { desc: DescriptorRef },
    /// Phase 2 (normal path at election 1, or a recovery round): move `pre_commit` to
    /// PC and `pre_abort` to PA at attempt `elected`. Carries the descriptor for sites
    /// that may not know the batch (coordinator replicas, recovery).
    Round {
        batch: BatchId,
        elected: u32,
        pre_commit: TxnSet,
        pre_abort: TxnSet,
        desc: Option<DescriptorRef>,
    },
    /// Phase 2 reply, sent once the states are durable: what this site now holds at
    /// attempt `elected`.
    RoundAck {
        batch: BatchId,
        elected: u32,
        pre_commit: TxnSet,
        pre_abort: TxnSet,
    },
    /// Phase 3: decided outcomes. Never rejected: a decision is a fact, not a proposal.
    /// the batch's opener attaches the descriptor for the other replicas, so that they learn
    /// every decision of a batch even if no round ever reached them.
    Decide {
        batch: BatchId,
        commit: TxnSet,
        abort: TxnSet,
        desc: Option<DescriptorRef>,
    },
    /// Recovery step 1–2: join election `elected` and report your states.
    Elect { desc: DescriptorRef, elected: u32 },
    /// Reply to `Elect`, sent once `last_elected = elected` is durable: one
    /// `(state, last_attempt)` per transaction of the batch.
    ElectAck {
        batch: BatchId,
        elected: u32,
        states: Vec<(State, u32)>,
    },
    /// Fencing: "I have joined election `elected`, yours is older".
    Reject { batch: BatchId, elected: u32 },
    /// A site holding undecided transactions asks the coordinator replicas to finish
    /// the batch (and tells them what it is, in case they never heard of it).
    Help { desc: DescriptorRef },
    /// To the batch's opener: nothing is open here for the batch, everything is durable,
    /// and `decided` of its transactions are decided here.
    Done { batch: BatchId, decided: u32 },
    /// From the batch's opener once every site sent `Done`: nobody can need the batch any
    /// more; forget it and ignore anything about it from now on.
    Forget { batch: BatchId },
    /// Driver-level, never handled by a state machine: a participant's VOTES with its
    /// ed25519 signature (`crate::sign`). A replica's vote guard verifies it and hands
    /// its machine the plain `Votes`; a machine ignores it.
    SignedVotes(Arc<crate::sign::SignedVotes>),
    /// Driver-level: a replica forwards the proof of a signed vote it verified to the
    /// other replicas, so that two different votes for one batch meet somewhere.
    VoteProof(Arc<crate::sign::VoteProof>),
}

impl Part {
    /// The batch this part concerns.
    pub fn batch(&self) -> BatchId {
        match self {
            Part::Prepare { desc, .. }
            | Part::Announce { desc }
            | Part::Elect { desc, .. }
            | Part::Help { desc } => desc.batch,
            Part::Votes { batch, .. }
            | Part::Round { batch, .. }
            | Part::RoundAck { batch, .. }
            | Part::Decide { batch, .. }
            | Part::ElectAck { batch, .. }
            | Part::Reject { batch, .. }
            | Part::Done { batch, .. }
            | Part::Forget { batch } => *batch,
            Part::SignedVotes(signed) => signed.batch,
            Part::VoteProof(proof) => proof.batch,
        }
    }

    /// A short name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            Part::Prepare { .. } => "PREPARE",
            Part::Votes { .. } => "VOTES",
            Part::Announce { .. } => "ANNOUNCE",
            Part::Round { .. } => "ROUND",
            Part::RoundAck { .. } => "ROUND-ACK",
            Part::Decide { .. } => "DECIDE",
            Part::Elect { .. } => "ELECT",
            Part::ElectAck { .. } => "ELECT-ACK",
            Part::Reject { .. } => "REJECT",
            Part::Help { .. } => "HELP",
            Part::Done { .. } => "DONE",
            Part::Forget { .. } => "FORGET",
            Part::SignedVotes(_) => "SIGNED-VOTES",
            Part::VoteProof(_) => "VOTE-PROOF",
        }
    }
}

/// A part addressed to a site.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Outgoing {
    pub to: SiteId,
    pub part: Part,
}
