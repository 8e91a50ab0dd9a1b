//! Idempotent transaction ids: a resubmitted id gets the first submission's outcome and
//! is never applied twice.
//!
//! Only a resubmission of the same transaction is a retry. Every id is remembered with a
//! 64-bit digest of its legs (`legs_digest`); an id that comes back with other legs is
//! reported as `Seen::DifferentLegs`, and the engine rejects it with
//! `Reason::EXISTS_WITH_DIFFERENT_LEGS` (TigerBeetle's `exists_with_different_*`).
//! Two different leg sets share a digest with probability 2^-64 per pair; such a
//! collision would hand back the first outcome, as before digests existed.
//!
//! The table remembers every id in flight and the outcomes of recently decided ids, in
//! memory, for the life of the engine: the ids are spread over `DEDUP_SHARDS` shards,
//! and each shard remembers at least its last `DEDUP_DECIDED_MAX / DEDUP_SHARDS` decided
//! ids (about `DEDUP_DECIDED_MAX` in all; at most twice that are held). A duplicate of an id in flight gets a ticket of its own that completes
//! with the original's outcome; a duplicate of a remembered decided id gets a ready
//! ticket. Beyond that window (or after a restart) ids must be unique: that is the
//! client's contract, as with TigerBeetle's transfer ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::pipeline::{AbortReason, CompletionId, Outcome};
use crate::proto::ids::PREFETCH_IDS_AHEAD;
use crate::proto::table::{prefetch_read, Probe, Table, TableSlot};
use crate::proto::{Reason, TxnId};

use super::txn::Leg;

/// Decided outcomes remembered at least, over all shards (each shard remembers at
/// least its last `DEDUP_DECIDED_MAX / DEDUP_SHARDS`, and at most twice that).
pub const DEDUP_DECIDED_MAX: usize = 1 << 20;
/// Shards of the table, so that client threads rarely contend on one lock.
const DEDUP_SHARDS: usize = 16;
/// Decided ids per generation of a shard.
const GENERATION_IDS: usize = DEDUP_DECIDED_MAX / DEDUP_SHARDS;

const _: () = assert!(DEDUP_SHARDS.is_power_of_two());
const _: () = assert!(GENERATION_IDS > 0);

/// Hashes a transaction id with the splitmix64 finalizer. SipHash, the default, cost a
/// quarter of the engine's CPU in a profile of the default load. Every output bit must
/// depend on the id: the table uses the top bits as tags and the low bits as the slot,
/// and the shard is picked by another hash of the top bits, so a plain multiplication
/// left the tags of one shard nearly equal and made every probe scan. Ids come from the
/// engine's clients; one that picks colliding ids only slows its own shard.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mut z = self.0 ^ value;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }
}

type IdMap<V> = HashMap<TxnId, V, BuildHasherDefault<IdHasher>>;

/// A 64-bit digest of a transaction's legs (participant and operation bytes, in order),
/// to tell a retry from a different transaction under the same id. Eight bytes at a
/// time through the splitmix64 finalizer: no allocation, a few dozen multiplications.
pub fn legs_digest(legs: &[Leg]) -> u64 {
    let mut hasher = IdHasher(legs.len() as u64);
    for leg in legs {
        hasher.write_u64(u64::from(leg.participant));
        let mut words = leg.payload.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            hasher.write_u64(u64::from_le_bytes(bytes));
        }
        let mut rest = [0u8; 8];
        rest[..words.remainder().len()].copy_from_slice(words.remainder());
        hasher.write_u64(u64::from_le_bytes(rest));
    }
    hasher.finish()
}

/// The splitmix64 hash of an id, as the maps compute it (the Bloom filters reuse it).
fn id_hash(id: TxnId) -> u64 {
    let mut hasher = IdHasher::default();
    hasher.write_u64(id.0);
    hasher.finish()
}

/// Bits of Bloom filter per remembered id. With `BLOOM_PROBES` probes in one 512-bit
/// block this gives about 1% false positives; a false positive costs one lookup in a
/// large map, never a wrong answer.
const BLOOM_BITS_PER_ID: usize = 16;
const BLOOM_PROBES: u32 = 6;
/// Bits per Bloom block: one cache line, so a probe touches one line.
const BLOOM_BLOCK_BITS: usize = 512;
const BLOOM_BLOCKS: usize = GENERATION_IDS * BLOOM_BITS_PER_ID / BLOOM_BLOCK_BITS;

const _: () = assert!(BLOOM_BLOCKS.is_power_of_two());
const _: () = assert!(
    BLOOM_PROBES * 9 <= 64,
    "each probe takes 9 bits of one hash"
);

/// A decided id in a generation's table: its legs digest and its outcome, coded so
/// that all-zero bytes are the empty slot (code 0 is no outcome).
#[derive(Clone, Copy)]
struct DecidedSlot {
    id: TxnId,
    digest: u64,
    outcome: u32,
}

/// Outcome codes of a [`DecidedSlot`]; a rejection carries its reason in the low bits.
const OUTCOME_COMMITTED: u32 = 1;
const OUTCOME_IN_DOUBT: u32 = 2;
const OUTCOME_TERMINATED: u32 = 3;
const OUTCOME_SHUTDOWN: u32 = 4;
const OUTCOME_REJECTED: u32 = 1 << 16;

fn outcome_code(outcome: Outcome) -> u32 {
    match outcome {
        Outcome::Committed => OUTCOME_COMMITTED,
        Outcome::InDoubt => OUTCOME_IN_DOUBT,
        Outcome::Aborted(AbortReason::Terminated) => OUTCOME_TERMINATED,
        Outcome::Aborted(AbortReason::Shutdown) => OUTCOME_SHUTDOWN,
        Outcome::Aborted(AbortReason::Rejected(reason)) => OUTCOME_REJECTED | u32::from(reason.0),
    }
}

fn outcome_of(code: u32) -> Outcome {
    match code {
        OUTCOME_COMMITTED => Outcome::Committed,
        OUTCOME_TERMINATED => Outcome::Aborted(AbortReason::Terminated),
        OUTCOME_SHUTDOWN => Outcome::Aborted(AbortReason::Shutdown),
        code if code & OUTCOME_REJECTED != 0 => {
            Outcome::Aborted(AbortReason::Rejected(Reason(code as u16)))
        }
        // `OUTCOME_IN_DOUBT`; no other code is ever written.
        _ => Outcome::InDoubt,
    }
}

// SAFETY: `DecidedSlot` is three integers, so all-zero bytes are a valid value, and an
// empty slot: every stored slot has a nonzero outcome code.
unsafe impl TableSlot for DecidedSlot {
    #[inline]
    fn key(&self) -> u64 {
        self.id.0
    }
    #[inline]
    fn is_empty(&self) -> bool {
        self.outcome == 0
    }
}

const _: () = assert!(std::mem::size_of::<DecidedSlot>() == 24);

/// One generation of decided ids: their outcomes, and a Bloom filter over them that
/// answers "never decided here" without touching the (cache-cold) table.
///
/// The outcomes sit in the open-addressing table of `proto::table` rather than a
/// `HashMap`: one cache line per probe instead of a control group and then a bucket,
/// and a home slot known ahead, so that the completion stage prefetches the slots and
/// filter blocks of a chunk's ids before it inserts them (`Dedup::decide_all`). The
/// `HashMap`'s inserts were 6% of a closed-loop run's samples (README issue 14). The
/// table's slots are written once when it is made, so the first inserts take no page
/// faults (the engine's first seconds).
struct Generation {
    /// Each decided id's outcome and legs digest.
    outcomes: Table<DecidedSlot>,
    bloom: Box<[[u64; BLOOM_BLOCK_BITS / 64]]>,
}

impl Generation {
    fn new() -> Generation {
        Generation {
            outcomes: Table::new(GENERATION_IDS),
            bloom: vec![[0u64; BLOOM_BLOCK_BITS / 64]; BLOOM_BLOCKS].into_boxed_slice(),
        }
    }

    /// The block and the bit positions in it of a hash.
    fn probes(hash: u64) -> (usize, impl Iterator<Item = usize>) {
        let block = Self::block(hash);
        let bits = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let positions = (0..BLOOM_PROBES).map(move |k| ((bits >> (9 * k)) & 511) as usize);
        (block, positions)
    }

    fn block(hash: u64) -> usize {
        (hash >> 40) as usize & (BLOOM_BLOCKS - 1)
    }

    /// Hints the CPU to fetch what inserting `id` (hashed `hash`) will touch: its
    /// filter block and its home slot.
    fn prefetch(&self, id: TxnId, hash: u64) {
        prefetch_read(self.bloom[Self::block(hash)].as_ptr() as *const i8);
        self.outcomes.prefetch(id.0);
    }

    fn might_hold(&self, hash: u64) -> bool {
        let (block, mut positions) = Self::probes(hash);
        let words = &self.bloom[block];
        positions.all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn get(&self, id: TxnId, hash: u64) -> Option<(Outcome, u64)> {
        if !self.might_hold(hash) {
            return None;
        }
        match self.outcomes.probe(id.0) {
            Probe::Found(index) => {
                let slot = self.outcomes.at(index);
                Some((outcome_of(slot.outcome), slot.digest))
            }
            Probe::Vacant(_) => None,
        }
    }

    fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Records `id`'s outcome; the caller makes room first (`len` under
    /// `GENERATION_IDS`).
    fn insert(&mut self, id: TxnId, hash: u64, (outcome, digest): (Outcome, u64)) {
        let (block, positions) = Self::probes(hash);
        let words = &mut self.bloom[block];
        for bit in positions {
            words[bit / 64] |= 1 << (bit % 64);
        }
        let slot = DecidedSlot {
            id,
            digest,
            outcome: outcome_code(outcome),
        };
        match self.outcomes.probe(id.0) {
            Probe::Vacant(index) => self.outcomes.insert_at(index, slot),
            // Decided again within the generation (it was forgotten by the previous
            // one's drop and resubmitted): the later outcome replaces the earlier.
            Probe::Found(index) => *self.outcomes.at_mut(index) = slot,
        }
    }

    /// Forgets everything, keeping the allocations.
    fn clear(&mut self) {
        self.outcomes.clear();
        self.bloom.fill([0; BLOOM_BLOCK_BITS / 64]);
    }
}

/// One shard of the table. Its ids in flight sit in a small map (bounded by the
/// engine's intake), its decided ids in two generations: when the current one holds
/// `GENERATION_IDS`, the previous one is dropped whole and the current one becomes the
/// previous. So a shard remembers at least its last `GENERATION_IDS` decided ids (and
/// at most twice that), with no per-id eviction: a profile of the default load showed
/// the eviction's and the lookups' cache misses as 15% of the engine's CPU.
pub struct Shard {
    /// Submitted, not decided: each id's legs digest. Sixteen bytes an entry: every
    /// submission inserts, looks up and removes here, so the tickets of duplicates (rare)
    /// live apart, in `waiting`, instead of an empty `Vec` in every entry (40 bytes).
    in_flight: IdMap<u64>,
    /// The tickets of duplicates of ids in `in_flight`, for the ids that have any.
    /// Invariant: every key is also a key of `in_flight`, so it is bounded as that map
    /// is, and its tickets by the admission's ticket slots.
    waiting: IdMap<Vec<CompletionId>>,
    current: Generation,
    previous: Generation,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            in_flight: IdMap::default(),
            waiting: IdMap::default(),
            current: Generation::new(),
            previous: Generation::new(),
        }
    }

    fn decided(&self, id: TxnId, hash: u64) -> Option<(Outcome, u64)> {
        self.current
            .get(id, hash)
            .or_else(|| self.previous.get(id, hash))
    }
}

/// The shard of a hash: its top bits (the maps and filters use the others).
fn shard_index(hash: u64) -> usize {
    (hash >> 60) as usize % DEDUP_SHARDS
}

/// What the table knows of an id, under its shard's lock.
pub enum Seen {
    New,
    /// In flight with the same legs: a retry.
    InFlight,
    /// Decided with the same legs: a retry, answered with this outcome.
    Decided(Outcome),
    /// In flight or decided with other legs: not a retry (see the module docs).
    DifferentLegs,
}

pub struct Dedup {
    shards: Vec<Mutex<Shard>>,
}

/// A shard, locked: the caller decides what to do with the id while it holds it.
pub struct Locked<'a> {
    shard: MutexGuard<'a, Shard>,
    id: TxnId,
    hash: u64,
    /// The legs digest of the submission asking.
    digest: u64,
}

impl Locked<'_> {
    pub fn seen(&self) -> Seen {
        let known = match self.shard.in_flight.get(&self.id) {
            Some(&digest) => Some((Seen::InFlight, digest)),
            None => self
                .shard
                .decided(self.id, self.hash)
                .map(|(outcome, digest)| (Seen::Decided(outcome), digest)),
        };
        match known {
            None => Seen::New,
            Some((_, digest)) if digest != self.digest => Seen::DifferentLegs,
            Some((seen, _)) => seen,
        }
    }

    /// Records the id as submitted, with its legs digest.
    pub fn start(&mut self) {
        self.shard.in_flight.insert(self.id, self.digest);
    }

    /// Adds a duplicate's ticket to the id in flight.
    pub fn attach(&mut self, completion: CompletionId) {
        if self.shard.in_flight.contains_key(&self.id) {
            self.shard
                .waiting
                .entry(self.id)
                .or_default()
                .push(completion);
        }
    }
}

impl Default for Dedup {
    fn default() -> Dedup {
        Dedup::new()
    }
}

impl Dedup {
    pub fn new() -> Dedup {
        Dedup {
            shards: (0..DEDUP_SHARDS)
                .map(|_| Mutex::new(Shard::new()))
                .collect(),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[shard_index(hash)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the shard of `id`, for a submission whose legs digest is `digest`
    /// (`legs_digest`).
    pub fn lock(&self, id: TxnId, digest: u64) -> Locked<'_> {
        let hash = id_hash(id);
        Locked {
            shard: self.shard(hash),
            id,
            hash,
            digest,
        }
    }

    /// Records one outcome for every id of `ids` and appends the tickets of their
    /// duplicates to `waiters`. Each shard is locked once for all its ids: the
    /// completion stage decides whole chunks, and a lock per id (whose line the client
    /// threads also take) was a fifth of this table's cost in the profile.
    pub fn decide_all(
        &self,
        ids: &[TxnId],
        outcome: Outcome,
        scratch: &mut Vec<(TxnId, u64)>,
        waiters: &mut Vec<CompletionId>,
    ) {
        let mut counts = [0usize; DEDUP_SHARDS];
        let hashed = || ids.iter().map(|&id| (id, id_hash(id)));
        for (_, hash) in hashed() {
            counts[shard_index(hash)] += 1;
        }
        // Counting sort by shard into `scratch`.
        let mut starts = [0usize; DEDUP_SHARDS];
        let mut total = 0;
        for (start, count) in starts.iter_mut().zip(counts) {
            *start = total;
            total += count;
        }
        scratch.clear();
        scratch.resize(ids.len(), (TxnId(0), 0));
        let mut next = starts;
        for (id, hash) in hashed() {
            let slot = &mut next[shard_index(hash)];
            scratch[*slot] = (id, hash);
            *slot += 1;
        }
        for (index, (&start, count)) in starts.iter().zip(counts).enumerate() {
            if count == 0 {
                continue;
            }
            let mut shard = self.shards[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ids = &scratch[start..start + count];
            for (index, &(id, hash)) in ids.iter().enumerate() {
                // Overlap the misses of the inserts a few ids ahead. A rotation in
                // between only wastes the hints.
                if let Some(&(ahead, ahead_hash)) = ids.get(index + PREFETCH_IDS_AHEAD) {
                    shard.current.prefetch(ahead, ahead_hash);
                }
                waiters.extend(shard.decide(id, hash, outcome));
            }
        }
    }

    /// Records the outcome of `id` and returns the tickets of its duplicates.
    pub fn decide(&self, id: TxnId, outcome: Outcome) -> Vec<CompletionId> {
        let hash = id_hash(id);
        self.shard(hash).decide(id, hash, outcome)
    }
}

impl Shard {
    /// Records the outcome of `id` (hashed `hash`) and returns its duplicates' tickets.
    fn decide(&mut self, id: TxnId, hash: u64, outcome: Outcome) -> Vec<CompletionId> {
        let shard = self;
        let Some(digest) = shard.in_flight.remove(&id) else {
            // Decided twice (a stale completion), or never started: keep what is known.
            return Vec::new();
        };
        // Almost always empty: no probe then.
        let waiters = if shard.waiting.is_empty() {
            Vec::new()
        } else {
            shard.waiting.remove(&id).unwrap_or_default()
        };
        if shard.current.len() >= GENERATION_IDS {
            std::mem::swap(&mut shard.current, &mut shard.previous);
            shard.current.clear();
        }
        shard.current.insert(id, hash, (outcome, digest));
        waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legs digest of the tests' submissions.
    const DIGEST: u64 = 0x5EED;

    fn decided(dedup: &Dedup, id: u64) -> Option<Outcome> {
        match dedup.lock(TxnId(id), DIGEST).seen() {
            Seen::Decided(outcome) => Some(outcome),
            _ => None,
        }
    }

    // Proves that a generation's table keeps every outcome exactly: each code is
    // nonzero (zero is the empty slot) and decodes to the outcome it was made from.
    #[test]
    fn outcome_codes_round_trip() {
        let outcomes = [
            Outcome::Committed,
            Outcome::InDoubt,
            Outcome::Aborted(AbortReason::Terminated),
            Outcome::Aborted(AbortReason::Shutdown),
            Outcome::Aborted(AbortReason::Rejected(Reason(0))),
            Outcome::Aborted(AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS)),
            Outcome::Aborted(AbortReason::Rejected(Reason(u16::MAX))),
        ];
        for outcome in outcomes {
            let code = outcome_code(outcome);
            assert_ne!(code, 0, "{outcome:?}");
            assert_eq!(outcome_of(code), outcome);
        }
    }

    // Proves the life of an id: new, in flight (a duplicate's ticket waits on it),
    // decided with the first outcome kept.
    #[test]
    fn new_in_flight_decided() {
        let dedup = Dedup::new();
        let mut locked = dedup.lock(TxnId(7), DIGEST);
        assert!(matches!(locked.seen(), Seen::New));
        locked.start();
        assert!(matches!(locked.seen(), Seen::InFlight));
        drop(locked);
        assert!(dedup.decide(TxnId(7), Outcome::Committed).is_empty());
        assert_eq!(decided(&dedup, 7), Some(Outcome::Committed));
        let shutdown = Outcome::Aborted(AbortReason::Shutdown);
        assert!(dedup.decide(TxnId(7), shutdown).is_empty());
        assert_eq!(decided(&dedup, 7), Some(Outcome::Committed));
    }

    // Proves the window: every one of the last GENERATION_IDS ids decided in a shard is
    // remembered with its outcome, ids never submitted read as new (false positives of
    // the filters never leak), and the oldest generation is forgotten eventually.
    #[test]
    fn every_recent_id_is_remembered_and_memory_is_bounded() {
        let dedup = Dedup::new();
        let total = (DEDUP_DECIDED_MAX * 3) as u64;
        for id in 0..total {
            let outcome = if id % 3 == 0 {
                Outcome::Aborted(AbortReason::Terminated)
            } else {
                Outcome::Committed
            };
            dedup.lock(TxnId(id), DIGEST).start();
            dedup.decide(TxnId(id), outcome);
        }
        for shard in &dedup.shards {
            let shard = shard.lock().unwrap();
            let held = shard.current.len() + shard.previous.len();
            assert!(held <= 2 * GENERATION_IDS, "{held}");
        }
        // Per shard at least GENERATION_IDS of the most recent ids: checking the last
        // GENERATION_IDS ids overall is a subset of that for every shard.
        for id in total - GENERATION_IDS as u64..total {
            let expected = if id % 3 == 0 {
                Outcome::Aborted(AbortReason::Terminated)
            } else {
                Outcome::Committed
            };
            assert_eq!(decided(&dedup, id), Some(expected), "id {id}");
        }
        for id in total..total + 100_000 {
            assert!(
                matches!(dedup.lock(TxnId(id), DIGEST).seen(), Seen::New),
                "id {id}"
            );
        }
        let forgotten = (0..1_000)
            .filter(|&id| decided(&dedup, id).is_none())
            .count();
        assert_eq!(forgotten, 1_000, "the oldest generation was never dropped");
    }

    // Proves deciding a chunk at once equals deciding its ids one by one: every id is
    // decided with the chunk's outcome whatever its shard, and every duplicate in
    // flight comes back exactly once.
    #[test]
    fn a_chunk_decides_like_its_ids() {
        let dedup = Dedup::new();
        let admission = crate::pipeline::Admission::new(Default::default()).unwrap();
        let ids: Vec<TxnId> = (1_000..1_300).map(TxnId).collect();
        let mut attached = Vec::new();
        for &id in &ids {
            dedup.lock(id, DIGEST).start();
            if id.0 % 7 == 0 {
                let duplicate = admission
                    .admit((), crate::pipeline::Priority::Normal)
                    .unwrap();
                dedup.lock(id, DIGEST).attach(duplicate.completion);
                attached.push(duplicate.completion);
            }
        }
        let (mut scratch, mut waiters) = (Vec::new(), Vec::new());
        dedup.decide_all(&ids, Outcome::Committed, &mut scratch, &mut waiters);
        waiters.sort_unstable_by_key(|completion| format!("{completion:?}"));
        attached.sort_unstable_by_key(|completion| format!("{completion:?}"));
        assert_eq!(waiters, attached);
        for &id in &ids {
            assert_eq!(decided(&dedup, id.0), Some(Outcome::Committed), "{id:?}");
        }
    }

    // Proves duplicates in flight get their tickets back at the decision.
    #[test]
    fn duplicates_in_flight_are_returned() {
        let dedup = Dedup::new();
        dedup.lock(TxnId(1), DIGEST).start();
        let admission = crate::pipeline::Admission::new(Default::default()).unwrap();
        let first = admission
            .admit((), crate::pipeline::Priority::Normal)
            .unwrap();
        dedup.lock(TxnId(1), DIGEST).attach(first.completion);
        let waiters = dedup.decide(TxnId(1), Outcome::Committed);
        assert_eq!(waiters, vec![first.completion]);
        // The decision takes the id's tickets out of `waiting`, and an id no longer in
        // flight takes none in (the invariant on `Shard::waiting`).
        let second = admission
            .admit((), crate::pipeline::Priority::Normal)
            .unwrap();
        dedup.lock(TxnId(1), DIGEST).attach(second.completion);
        assert!(dedup.decide(TxnId(1), Outcome::Committed).is_empty());
        for shard in &dedup.shards {
            assert!(shard.lock().unwrap().waiting.is_empty());
        }
    }

    // Proves that an id is a retry only with the same legs: another leg set under an id
    // in flight or decided is `DifferentLegs`, never the first outcome; and that the
    // digest tells apart transfers that differ in one byte, amount or direction.
    #[test]
    fn an_id_with_other_legs_is_not_a_retry() {
        use crate::proto::OP_PAYLOAD_BYTES;
        let leg = |participant: u8, byte: u8| Leg {
            participant,
            payload: [byte; OP_PAYLOAD_BYTES],
        };
        let first = legs_digest(&[leg(0, 1), leg(1, 2)]);
        let mut last_byte = [leg(0, 1), leg(1, 2)];
        last_byte[1].payload[OP_PAYLOAD_BYTES - 1] = 3;
        let others = [
            legs_digest(&[leg(1, 2), leg(0, 1)]),
            legs_digest(&[leg(0, 1), leg(1, 3)]),
            legs_digest(&[leg(0, 1)]),
            legs_digest(&last_byte),
        ];
        assert_eq!(first, legs_digest(&[leg(0, 1), leg(1, 2)]));
        for other in others {
            assert_ne!(first, other);
        }
        let dedup = Dedup::new();
        dedup.lock(TxnId(9), first).start();
        assert!(matches!(dedup.lock(TxnId(9), first).seen(), Seen::InFlight));
        assert!(matches!(
            dedup.lock(TxnId(9), others[1]).seen(),
            Seen::DifferentLegs
        ));
        dedup.decide(TxnId(9), Outcome::Committed);
        assert!(matches!(
            dedup.lock(TxnId(9), first).seen(),
            Seen::Decided(Outcome::Committed)
        ));
        assert!(matches!(
            dedup.lock(TxnId(9), others[3]).seen(),
            Seen::DifferentLegs
        ));
    }
}
