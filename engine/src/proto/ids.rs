//! Durable transaction-id uniqueness at a participant (DESIGN §7, "Ids are unique at
//! the participants, durably").
//!
//! Any coordinator replica may open batches, and a client that fails over resends its
//! in-flight ids to another replica, which puts them into a batch of its own. The
//! gateways' in-memory windows (`runtime::dedup`) cannot catch that: only the
//! participants see every instance of an id. So each participant keeps a [`HeldIds`]
//! index `id → (holding batch, legs digest, state)` of the transactions it prepared,
//! and a PREPARE that carries an id held by *another* batch gets a no vote for it
//! before the resource manager sees it:
//!
//! - the same legs (a resend): [`Reason::HELD_BY_BATCH`], and the VOTES part names
//!   the holding batch and the state the participant holds for it there, so that the
//!   opener reports the first instance's outcome instead of an abort;
//! - other legs: [`Reason::EXISTS_WITH_DIFFERENT_LEGS`] (not a retry).
//!
//! The duplicate instance itself aborts in its batch like any transaction with a no
//! vote: its operation never reaches the resource manager, so it is applied at most
//! once, whatever the duplicate's batch does.
//!
//! # Durability
//! The index is a function of the participant's log: `Prepared` records add ids (their
//! replay runs the same check, so refusals replay alike), `Transition` records settle
//! them, and a checkpoint carries the whole index forward in
//! [`Record::CarriedIds`] records, in eviction order, so that a recovered index is the
//! one the participant held, evictions included.
//!
//! # The bound
//! Pending ids (held by a batch this participant has not seen decided) are never
//! evicted: they are bounded by the batches in flight. Decided ids are kept in the order
//! they were decided; once more than `ProtoConfig::held_ids_decided_max` (by default
//! [`HELD_IDS_DECIDED_MAX`]) are held, the oldest is forgotten. An id resent after that
//! many later decisions at the participant is no longer recognised: that is the
//! guarantee's bound (at 100 000 decisions per second on a participant, about 2.6 s of
//! history; far above the 300 ms failover budget). Replay does not depend on the
//! bound: the logged `No(HELD_BY_BATCH)` and `No(EXISTS_WITH_DIFFERENT_LEGS)` votes say
//! what the live site refused.

use std::collections::VecDeque;
use std::hash::Hasher;

use super::record::Record;
use super::rm::{Op, Reason, TxnId};
use super::table::{Probe, Table, TableSlot};
use super::types::{BatchId, Outcome, State, TxnSet};
use super::Completion;

/// Decided ids a participant remembers at least (and at most: eviction is exact), by
/// default (`ProtoConfig::held_ids_decided_max`). About 80 bytes each in memory (a
/// 32-byte slot in a table about half full, 16 bytes in the eviction queue), and
/// [`CARRIED_ID_BYTES`] each in every checkpoint group.
pub const HELD_IDS_DECIDED_MAX: usize = 1 << 18;
/// Bytes of one carried id in a checkpoint record.
pub const CARRIED_ID_BYTES: usize = 25;

/// The most entries one [`Record::CarriedIds`] holds (25 bytes each), so that a
/// carried record stays far below the smallest record bound a test configures.
pub const CARRIED_IDS_PER_RECORD_MAX: usize = 512;

const _: () = assert!(CARRIED_IDS_PER_RECORD_MAX * CARRIED_ID_BYTES < 16 << 10);
const _: () = assert!(CARRIED_IDS_PER_RECORD_MAX <= super::types::BATCH_TXNS_MAX);

/// The splitmix64 finalizer: every output bit depends on the id, and it costs a few
/// multiplications where SipHash cost a quarter of the engine's CPU (`runtime::dedup`).
/// Fixed keys: iteration order depends only on the inputs (the simulator replays
/// seeds exactly).
#[derive(Default)]
pub struct SplitMix(u64);

impl Hasher for SplitMix {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mut z = (self.0 ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }
}

/// A 64-bit digest of one transaction's leg at this participant: its participant set
/// (so a resend to other participants differs) and its operation bytes. A resend with
/// other legs elsewhere is caught by the participants whose legs differ.
pub fn leg_digest(members: u64, op: &Op) -> u64 {
    let mut hasher = SplitMix(members);
    for word in op.payload.chunks(8) {
        let mut bytes = [0u8; 8];
        bytes[..word.len()].copy_from_slice(word);
        hasher.write_u64(u64::from_le_bytes(bytes));
    }
    hasher.finish()
}

/// What a participant holds for one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    /// The batch whose instance of the id this participant prepared.
    pub batch: BatchId,
    /// [`leg_digest`] of that instance.
    pub digest: u64,
    /// `W` while undecided here, `Commit` or `Abort` once decided (never anything else).
    pub state: State,
}

/// Why a PREPARE's operation is refused before the resource manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A resend of an id `held.batch` holds.
    Held(Held),
    /// The id is held with other legs.
    DifferentLegs,
}

impl Refusal {
    /// The no vote's reason.
    pub fn reason(self) -> Reason {
        match self {
            Refusal::Held(_) => Reason::HELD_BY_BATCH,
            Refusal::DifferentLegs => Reason::EXISTS_WITH_DIFFERENT_LEGS,
        }
    }
}

/// What [`HeldIds::check_and_hold`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not held: now held for the batch asking, pending.
    New,
    /// Already held by the batch asking (the same id twice in one batch): left to the
    /// resource manager, which votes `DUPLICATE`.
    SameBatch,
    /// Held by another batch.
    Refused(Refusal),
}

/// How many ids ahead the batch loops over a [`HeldIds`] prefetch the slots they will
/// probe: enough to overlap the cache misses of a table of several MiB, few enough that
/// the lines are still in cache when their turn comes.
pub const PREFETCH_IDS_AHEAD: usize = 16;

/// The table starts this small (the simulator makes thousands of short-lived
/// participants); the runtime sizes it once with [`HeldIds::reserve_decided_max`].
const TABLE_LEN_MAX_INITIAL: usize = 16;

/// One slot of the index's table: an id and what is held for it. A held state is never
/// `Q` (the table's empty marker).
#[derive(Clone, Copy)]
struct HeldSlot {
    txn: TxnId,
    held: Held,
}

// SAFETY: `HeldSlot` is integers (`TxnId`, `BatchId`, `u64`) and a `#[repr(u8)]`
// `State` whose discriminant 0 is `State::Q`, so all-zero bytes are a valid value, and
// an empty slot: no held entry is ever `Q`.
unsafe impl TableSlot for HeldSlot {
    #[inline]
    fn key(&self) -> u64 {
        self.txn.0
    }
    #[inline]
    fn is_empty(&self) -> bool {
        self.held.state == State::Q
    }
}

const _: () = assert!(std::mem::size_of::<HeldSlot>() == 32);

/// The id index of a participant (see the module docs).
///
/// Invariants: `decided` lists every entry of `map` whose state is final, each once, in
/// the order they became final, as `(id, batch)`; it may also hold stale pairs whose
/// batch no longer matches the map (only after [`HeldIds::replace`], on replay), which
/// eviction skips. At most `decided_max` final entries between calls. An entry's `batch`
/// never changes while it is in the map, except through `replace`.
///
/// `map` is an open-addressing table (`proto::table`) rather than a `HashMap`: a
/// participant probes it three times per operation (hold at PREPARE, settle at the
/// decision, evict the oldest decided id), each a cache miss in a table of 16 MiB; a
/// probe reads one cache line instead of a SwissTable's control group and bucket, and
/// the batch loops prefetch the slots [`PREFETCH_IDS_AHEAD`] ids ahead, so the misses
/// overlap. In `tricommit-load`'s closed loop (`perf record`, 2026-12-07) the index cost
/// 0.81 µs of participant CPU per transaction as a `HashMap` (a third of it) and 0.55 µs
/// as this table.
#[derive(Clone)]
pub struct HeldIds {
    map: Table<HeldSlot>,
    decided: VecDeque<(TxnId, BatchId)>,
    decided_max: usize,
}

impl std::fmt::Debug for HeldIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldIds")
            .field("held", &self.map.len())
            .field("decided", &self.decided.len())
            .field("decided_max", &self.decided_max)
            .finish()
    }
}

impl Default for HeldIds {
    fn default() -> HeldIds {
        HeldIds::with_max(HELD_IDS_DECIDED_MAX)
    }
}

impl HeldIds {
    /// An empty index that keeps at most `decided_max` decided ids (at least 1).
    pub fn with_max(decided_max: usize) -> HeldIds {
        HeldIds {
            map: Table::dense(TABLE_LEN_MAX_INITIAL),
            decided: VecDeque::new(),
            decided_max: decided_max.max(1),
        }
    }

    /// Makes room for `decided_max` decided ids and half as many pending ones up front,
    /// so that the index never grows while it fills (a rehash of a few hundred thousand
    /// ids paused a participant for milliseconds in the engine's first seconds). The
    /// runtime calls it; the simulator's thousands of short-lived participants do not.
    /// The table's pages are written once here (`Table::dense`): left to the first
    /// writes, the page faults came scattered by the hash over the first second under
    /// load.
    pub fn reserve_decided_max(&mut self) {
        self.map
            .grow(self.decided_max.saturating_add(self.decided_max / 2));
        self.decided
            .reserve(self.decided_max.saturating_sub(self.decided.len()));
    }

    /// Hints the CPU to fetch the slot where `txn` is looked up: batch loops call it
    /// [`PREFETCH_IDS_AHEAD`] ids before they hold or settle that id.
    #[inline]
    pub fn prefetch(&self, txn: TxnId) {
        self.map.prefetch(txn.0);
    }

    /// What is held for `txn`, if anything.
    pub fn get(&self, txn: TxnId) -> Option<Held> {
        match self.map.probe(txn.0) {
            Probe::Found(index) => Some(self.map.at(index).held),
            Probe::Vacant(_) => None,
        }
    }

    /// Puts `held` for `txn` into the empty slot `index` found by a probe just now,
    /// growing the table first when it is at its bound (pending ids beyond the
    /// reserved half: a participant with far more batches in flight than usual).
    fn insert_vacant(&mut self, index: usize, txn: TxnId, held: Held) {
        let mut index = index;
        if self.map.is_full() {
            self.map.grow(self.map.len_max().saturating_mul(2));
            let Probe::Vacant(vacant) = self.map.probe(txn.0) else {
                unreachable!("growing keeps the entries and adds none");
            };
            index = vacant;
        }
        self.map.insert_at(index, HeldSlot { txn, held });
    }

    /// The number of ids held (pending and decided).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no id is held.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Checks `txn` (digest `digest`) for `batch`, and holds it for `batch` as pending
    /// if it is new: one hash probe.
    pub fn check_and_hold(&mut self, txn: TxnId, batch: BatchId, digest: u64) -> Check {
        match self.map.probe(txn.0) {
            Probe::Vacant(index) => {
                let held = Held {
                    batch,
                    digest,
                    state: State::W,
                };
                self.insert_vacant(index, txn, held);
                Check::New
            }
            Probe::Found(index) => {
                let held = self.map.at(index).held;
                if held.batch == batch {
                    Check::SameBatch
                } else if held.digest == digest {
                    Check::Refused(Refusal::Held(held))
                } else {
                    Check::Refused(Refusal::DifferentLegs)
                }
            }
        }
    }

    /// The instance of `txn` in `batch` is now `state` here: final states settle the
    /// entry (and may evict the oldest decided one); `Q` (a read-only vote, which
    /// leaves the protocol and is never decided here) drops a pending entry, so that
    /// nothing stays pending for ever. Entries of other batches are left alone.
    ///
    /// Returns whether `batch` held `txn` pending and now no longer does: for a final
    /// state, whether the decision is this batch's to apply to the resource manager.
    pub fn settle(&mut self, txn: TxnId, batch: BatchId, state: State) -> bool {
        let Probe::Found(index) = self.map.probe(txn.0) else {
            return false;
        };
        let held = &mut self.map.at_mut(index).held;
        if held.batch != batch || held.state != State::W {
            return false;
        }
        match state {
            State::Commit | State::Abort => {
                held.state = state;
                self.decided.push_back((txn, batch));
                self.evict();
                true
            }
            State::Q => {
                self.map.remove_at(index);
                true
            }
            State::W | State::PreCommit | State::PreAbort => false,
        }
    }

    /// Replay only: the log shows that `batch` prepared `txn` although this index holds
    /// it for another batch (the live site had evicted it under a smaller bound, so it
    /// took the id as new). Follow the log: `batch` holds it now, pending.
    pub fn replace(&mut self, txn: TxnId, batch: BatchId, digest: u64) {
        let held = Held {
            batch,
            digest,
            state: State::W,
        };
        match self.map.probe(txn.0) {
            Probe::Found(index) => self.map.at_mut(index).held = held,
            Probe::Vacant(index) => self.insert_vacant(index, txn, held),
        }
    }

    fn evict(&mut self) {
        while self.decided.len() > self.decided_max {
            let Some((oldest, batch)) = self.decided.pop_front() else {
                return;
            };
            // Eviction follows the queue, one id per settle in the steady state: the
            // slot needed a few settles from now is fetched while this one is probed.
            if let Some((ahead, _)) = self.decided.get(PREFETCH_IDS_AHEAD) {
                self.map.prefetch_run(ahead.0);
            }
            if let Probe::Found(index) = self.map.probe(oldest.0) {
                let held = self.map.at(index).held;
                if held.batch == batch && held.state.is_final() {
                    self.map.remove_at(index);
                }
            }
        }
    }

    /// The index as checkpoint records: decided entries in decision order, then the
    /// pending ones in id order, at most [`CARRIED_IDS_PER_RECORD_MAX`] per record.
    pub fn carried(&self) -> Vec<Record> {
        let mut entries: Vec<(TxnId, Held)> = Vec::with_capacity(self.map.len());
        for (txn, batch) in &self.decided {
            match self.get(*txn) {
                Some(held) if held.batch == *batch && held.state.is_final() => {
                    entries.push((*txn, held));
                }
                _ => {}
            }
        }
        let mut pending: Vec<(TxnId, Held)> = self
            .map
            .iter()
            .filter(|slot| slot.held.state == State::W)
            .map(|slot| (slot.txn, slot.held))
            .collect();
        pending.sort_unstable_by_key(|(txn, _)| *txn);
        entries.extend(pending);
        entries
            .chunks(CARRIED_IDS_PER_RECORD_MAX)
            .map(|chunk| Record::CarriedIds {
                entries: chunk.to_vec(),
            })
            .collect()
    }

    /// Restores entries of a carried record, in order (see [`HeldIds::carried`]).
    pub fn restore(&mut self, entries: &[(TxnId, Held)]) -> Result<(), &'static str> {
        for &(txn, held) in entries {
            if !matches!(held.state, State::W | State::Commit | State::Abort) {
                return Err("carried id in a state the index never holds");
            }
            match self.map.probe(txn.0) {
                Probe::Found(_) => return Err("id carried twice"),
                Probe::Vacant(index) => self.insert_vacant(index, txn, held),
            }
            if held.state.is_final() {
                self.decided.push_back((txn, held.batch));
            }
        }
        self.evict();
        Ok(())
    }

    /// Hashes the index canonically (entries in id order, then the eviction order),
    /// for the model checker's state digest.
    pub fn digest<H: std::hash::Hasher>(&self, state: &mut H) {
        use std::hash::Hash;
        self.entries_sorted().hash(state);
        self.decided.hash(state);
    }

    /// Every entry, in id order.
    fn entries_sorted(&self) -> Vec<(TxnId, Held)> {
        let mut entries: Vec<(TxnId, Held)> =
            self.map.iter().map(|slot| (slot.txn, slot.held)).collect();
        entries.sort_unstable_by_key(|(txn, _)| *txn);
        entries
    }
}

/// The most resends one coordinator replica waits on at once (each waits for its
/// holding batch's outcome, at most `ProtoConfig::undecided_wait_us`). A resend past
/// the bound is answered [`HeldOutcome::Unknown`] at once.
pub const HELD_WAITS_MAX: usize = 4096;

/// The outcome of a refused resend's id, as its opener reports it (see
/// [`Completion::held`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeldOutcome {
    /// The holding batch decided the id: the client gets this outcome.
    Known(Outcome),
    /// Not decided where the opener could see it yet (only inside the machine: the
    /// coordinator waits for it before the completion leaves).
    Pending,
    /// Still undecided after the wait: the client may ask again, by id, later.
    Unknown,
}

impl HeldOutcome {
    /// What a participant's state for the id in its holding batch tells.
    pub fn from_state(state: State) -> HeldOutcome {
        match state {
            State::Commit => HeldOutcome::Known(Outcome::Commit),
            State::Abort => HeldOutcome::Known(Outcome::Abort),
            _ => HeldOutcome::Pending,
        }
    }
}

/// One resend whose completion waits for its holding batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Wait {
    batch: BatchId,
    /// The batch's size (the universe of its transaction sets).
    len: u32,
    index: u32,
    holder: BatchId,
    deadline_us: u64,
}

/// A coordinator replica's resends waiting for their holding batches' outcomes.
///
/// Invariant: at most [`HELD_WAITS_MAX`] waits; each (batch, index) is in no
/// completion that left the machine while it waits here, and leaves in exactly one
/// completion, resolved or [`HeldOutcome::Unknown`], by its deadline.
#[derive(Clone, Debug, Default, Hash)]
pub struct HeldWaits {
    waits: Vec<Wait>,
}

impl HeldWaits {
    /// The earliest deadline, if any resend waits.
    pub fn deadline_us(&self) -> Option<u64> {
        self.waits.iter().map(|wait| wait.deadline_us).min()
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Call after every event with the completions it produced: fills in the
    /// outcome of every pending resend that `outcome_of(holder, batch, index)` knows,
    /// takes the others out of their completions to wait (until `now_us + wait_us`),
    /// and completes the waits that resolved or expired.
    pub fn resolve(
        &mut self,
        now_us: u64,
        wait_us: u64,
        completions: &mut Vec<Completion>,
        outcome_of: impl Fn(BatchId, BatchId, u32) -> Option<Outcome>,
    ) {
        for completion in completions.iter_mut() {
            for entry in &mut completion.held {
                let (index, holder, outcome) = entry;
                if *outcome != HeldOutcome::Pending {
                    continue;
                }
                if let Some(known) = outcome_of(*holder, completion.batch, *index) {
                    *outcome = HeldOutcome::Known(known);
                } else if self.waits.len() < HELD_WAITS_MAX {
                    self.waits.push(Wait {
                        batch: completion.batch,
                        len: completion.txns.universe(),
                        index: *index,
                        holder: *holder,
                        deadline_us: now_us.saturating_add(wait_us),
                    });
                    completion.txns.remove(*index);
                } else {
                    *outcome = HeldOutcome::Unknown;
                }
            }
            let txns = &completion.txns;
            completion.held.retain(|(index, ..)| txns.contains(*index));
            completion
                .reasons
                .retain(|(index, _)| txns.contains(*index));
        }
        completions.retain(|completion| !completion.txns.is_empty());
        if self.waits.is_empty() {
            return;
        }
        let mut released = Vec::new();
        self.waits.retain(|wait| {
            let known = outcome_of(wait.holder, wait.batch, wait.index);
            let outcome = match known {
                Some(outcome) => HeldOutcome::Known(outcome),
                None if wait.deadline_us <= now_us => HeldOutcome::Unknown,
                None => return true,
            };
            released.push((wait.clone(), outcome));
            false
        });
        for (wait, outcome) in released {
            completions.push(held_completion(wait, outcome));
        }
    }

    /// Hashes the waits canonically (deadlines relative to `now_us`, in order of
    /// batch and index), for the model checker's state digest.
    pub fn digest<H: std::hash::Hasher>(&self, now_us: u64, state: &mut H) {
        use std::hash::Hash;
        let mut waits: Vec<(BatchId, u32, BatchId, u64)> = self
            .waits
            .iter()
            .map(|w| {
                (
                    w.batch,
                    w.index,
                    w.holder,
                    w.deadline_us.saturating_sub(now_us),
                )
            })
            .collect();
        waits.sort_unstable();
        waits.hash(state);
    }
}

/// The completion of one resend that waited: aborted in its own batch (it was refused
/// there), with its holding batch's outcome for the client.
fn held_completion(wait: Wait, outcome: HeldOutcome) -> Completion {
    let mut txns = TxnSet::empty(wait.len);
    txns.insert(wait.index);
    Completion {
        batch: wait.batch,
        outcome: Outcome::Abort,
        txns,
        reasons: vec![(wait.index, Reason::HELD_BY_BATCH)],
        held: vec![(wait.index, wait.holder, outcome)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(txn: u64, byte: u8) -> Op {
        Op {
            txn: TxnId(txn),
            payload: [byte; super::super::rm::OP_PAYLOAD_BYTES],
        }
    }

    // Proves the life of an id: new, then refused for another batch while pending and
    // once decided (with its holder and state), refused as different legs with another
    // payload or participant set, and left to the resource manager within its batch;
    // only its holding batch's decision settles it (and so reaches the resource
    // manager), once.
    #[test]
    fn an_id_is_refused_for_every_other_batch() {
        let mut ids = HeldIds::default();
        let digest = leg_digest(0b110, &op(7, 1));
        assert_eq!(ids.check_and_hold(TxnId(7), BatchId(1), digest), Check::New);
        assert_eq!(
            ids.check_and_hold(TxnId(7), BatchId(1), digest),
            Check::SameBatch
        );
        let pending = Held {
            batch: BatchId(1),
            digest,
            state: State::W,
        };
        assert_eq!(
            ids.check_and_hold(TxnId(7), BatchId(2), digest),
            Check::Refused(Refusal::Held(pending))
        );
        assert!(!ids.settle(TxnId(7), BatchId(2), State::Abort));
        assert_eq!(
            ids.get(TxnId(7)),
            Some(pending),
            "another batch settles nothing"
        );
        assert!(
            ids.settle(TxnId(7), BatchId(1), State::Commit),
            "its holder's"
        );
        let committed = Held {
            state: State::Commit,
            ..pending
        };
        assert_eq!(
            ids.check_and_hold(TxnId(7), BatchId(3), digest),
            Check::Refused(Refusal::Held(committed))
        );
        assert!(!ids.settle(TxnId(7), BatchId(1), State::Abort));
        assert_eq!(
            ids.get(TxnId(7)),
            Some(committed),
            "final states never change"
        );
        for other in [leg_digest(0b110, &op(7, 2)), leg_digest(0b1010, &op(7, 1))] {
            assert_ne!(other, digest);
            assert_eq!(
                ids.check_and_hold(TxnId(7), BatchId(3), other),
                Check::Refused(Refusal::DifferentLegs)
            );
        }
    }

    // Proves the bound: at most HELD_IDS_DECIDED_MAX decided ids stay, the oldest go
    // first, pending ids are never evicted, and a read-only id is dropped.
    #[test]
    fn decided_ids_are_evicted_oldest_first() {
        let mut ids = HeldIds::default();
        assert_eq!(
            ids.check_and_hold(TxnId(u64::MAX), BatchId(9), 1),
            Check::New
        );
        assert_eq!(
            ids.check_and_hold(TxnId(u64::MAX - 1), BatchId(9), 1),
            Check::New
        );
        ids.settle(TxnId(u64::MAX - 1), BatchId(9), State::Q);
        assert_eq!(ids.get(TxnId(u64::MAX - 1)), None);
        let total = HELD_IDS_DECIDED_MAX as u64 + 10;
        for id in 0..total {
            ids.check_and_hold(TxnId(id), BatchId(id / 100), 5);
            ids.settle(TxnId(id), BatchId(id / 100), State::Commit);
        }
        assert_eq!(ids.len(), HELD_IDS_DECIDED_MAX + 1);
        assert!((0..10).all(|id| ids.get(TxnId(id)).is_none()));
        assert!((10..total).all(|id| ids.get(TxnId(id)).is_some()));
        assert_eq!(
            ids.get(TxnId(u64::MAX)).map(|held| held.state),
            Some(State::W)
        );
    }

    // Proves that the carried records rebuild the same index, eviction order included,
    // and that a damaged carried list is refused.
    #[test]
    fn carried_records_rebuild_the_index() {
        let mut ids = HeldIds::default();
        for id in 0..1_500u64 {
            ids.check_and_hold(TxnId(id), BatchId(id / 10), id);
            if id % 3 != 0 {
                let state = if id % 2 == 0 {
                    State::Commit
                } else {
                    State::Abort
                };
                ids.settle(TxnId(id), BatchId(id / 10), state);
            }
        }
        let records = ids.carried();
        assert_eq!(
            records.len(),
            1_500usize.div_ceil(CARRIED_IDS_PER_RECORD_MAX)
        );
        let mut rebuilt = HeldIds::default();
        for record in &records {
            let Record::CarriedIds { entries } = record else {
                panic!("not a carried-ids record");
            };
            rebuilt.restore(entries).expect("well-formed");
        }
        assert_eq!(rebuilt.entries_sorted(), ids.entries_sorted());
        assert_eq!(rebuilt.decided, ids.decided);
        let Record::CarriedIds { entries } = &records[0] else {
            unreachable!()
        };
        assert!(rebuilt.restore(&entries[..1]).is_err(), "an id twice");
    }
}
