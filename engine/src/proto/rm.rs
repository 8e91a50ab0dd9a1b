//! The resource-manager contract: the business logic a participant wraps.
//!
//! A participant hands its resource manager whole batches. The resource manager must be
//! deterministic: given the same sequence of `prepare`, `commit` and `abort` calls it
//! must reach the same state, because a participant rebuilds it after a crash by
//! replaying those calls from its write-ahead log.

/// Size of the opaque operation a transaction carries for each participant.
///
/// Fixed so that a batch of operations is one flat allocation that is reused, and so
/// that an operation has the same size on the wire, in the log and in memory.
pub const OP_PAYLOAD_BYTES: usize = 24;

/// A transaction identifier, chosen by the client and unique per engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxnId(pub u64);

/// One transaction's operation at one participant: opaque to the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub txn: TxnId,
    pub payload: [u8; OP_PAYLOAD_BYTES],
}

/// Why a participant voted no. Codes below 256 are reserved for tricommit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reason(pub u16);

impl Reason {
    /// The operation's bytes do not decode.
    pub const MALFORMED: Reason = Reason(1);
    /// The account the operation names does not exist.
    pub const UNKNOWN_ACCOUNT: Reason = Reason(2);
    /// The operation would take a balance below its limit.
    pub const INSUFFICIENT_FUNDS: Reason = Reason(3);
    /// The participant could not answer in time (timeouts are turned into this vote).
    /// Some other participant of the transaction did vote yes in this batch, so it
    /// holds the id for this batch's instance, and no other instance of the id can
    /// commit (`proto::ids`): the abort is the id's outcome.
    pub const TIMEOUT: Reason = Reason(4);
    /// No participant of the transaction voted yes in this batch before the vote
    /// timeout (none answered, or only read-only votes came). The opener then knows of
    /// nobody holding the id for this instance, so the abort is this instance's only:
    /// a client that sent the same id again elsewhere (a failover's resend) may see
    /// that other instance commit, and must not take this abort as the id's outcome.
    /// For an id sent once it is the outcome, like `TIMEOUT`.
    pub const UNANSWERED: Reason = Reason(18);
    /// The balance would overflow `i64`.
    pub const OVERFLOW: Reason = Reason(5);
    /// The transaction id was already prepared at this participant.
    pub const DUPLICATE: Reason = Reason(6);
    /// The transaction id is known (in flight or recently decided) with other legs:
    /// a resubmission that is not a retry of the same transfer. The engine rejects it
    /// at `submit` while its window remembers the id, and a participant holding the
    /// id votes no with it (`proto::ids`), as TigerBeetle answers
    /// `exists_with_different_*`, instead of handing back the first transfer's outcome
    /// as if it were this one's.
    pub const EXISTS_WITH_DIFFERENT_LEGS: Reason = Reason(16);
    /// The participant already holds this transaction id, with the same legs, in
    /// another batch (a resend after a failover, or past the gateway's window): the
    /// VOTES part names that batch. The resend aborts in its own batch and is never
    /// applied; the opener reports the holding batch's outcome for the id instead. A
    /// client sees this reason only when that outcome was an abort: the id is aborted
    /// for good (see `proto::ids`).
    pub const HELD_BY_BATCH: Reason = Reason(17);
    /// The resource manager's backing store (e.g. a PostgreSQL shard) could not be
    /// reached in time; nothing was reserved for the transaction.
    pub const UNAVAILABLE: Reason = Reason(7);
}

/// A participant's vote on one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vote {
    /// Prepared: the participant can commit and will not abort on its own.
    Yes,
    /// The transaction must abort.
    No(Reason),
    /// The participant has nothing to change; it leaves the protocol after phase 1.
    ReadOnly,
}

/// The business logic behind a participant: validates, reserves, posts and voids.
///
/// Every method works on a whole batch, in order. Two operations of one batch that touch
/// the same state are applied in the order given: the second one sees the reservation
/// of the first.
pub trait ResourceManager {
    /// Validates and reserves every operation in order, pushing exactly one vote per
    /// operation onto `votes` (which the caller clears and reuses).
    ///
    /// After a `Yes`, the resource manager must be able to commit the transaction
    /// whatever else it prepares later, until the transaction is committed or aborted.
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>);

    /// Posts the reservations of transactions that voted `Yes`. Unknown ids are ignored,
    /// so that a replayed or duplicated commit is harmless.
    fn commit(&mut self, txns: &[TxnId]);

    /// Voids the reservations of the given transactions. Unknown ids are ignored.
    fn abort(&mut self, txns: &[TxnId]);

    /// Replays a batch prepared before a crash: `logged` holds the votes the participant
    /// logged for `ops` then, and this call must push exactly those votes onto `votes`.
    ///
    /// The default prepares again and lets the participant compare (an in-memory
    /// resource manager rebuilt from its log votes the same by determinism). A resource
    /// manager whose state outlives the process (a database) overrides it: it reconciles
    /// what it holds with the logged votes, which are the truth the protocol acted on.
    fn replay_prepare(&mut self, ops: &[Op], logged: &[Vote], votes: &mut Vec<Vote>) {
        let _ = logged;
        self.prepare(ops, votes);
    }

    /// Called once when the participant has replayed its whole log, before any live
    /// call. A resource manager with durable state of its own releases here what it
    /// reserved for batches the participant never logged (it crashed in between).
    fn recovered(&mut self) {}

    /// Encodes the whole state (balances, held reservations, whatever `prepare`,
    /// `commit` and `abort` depend on) so that [`ResourceManager::restore`] rebuilds a
    /// resource manager that answers every later call exactly as this one would.
    ///
    /// Snapshots are what let a participant's log be checkpointed: the log before a
    /// checkpoint is dropped, so the state it built must come from somewhere else. The
    /// default returns `None`: a resource manager without snapshots keeps working, but
    /// its participant never checkpoints and its log grows with the load.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces the whole state with a snapshot made by [`ResourceManager::snapshot`].
    /// Called on a fresh resource manager, before any other call. The default refuses.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let _ = snapshot;
        Err(RestoreError::Unsupported)
    }
}

/// Why a resource manager could not restore a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// This resource manager takes no snapshots (the trait's default).
    #[error("this resource manager does not support snapshots")]
    Unsupported,
    /// The bytes are not a snapshot this resource manager can load.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}
