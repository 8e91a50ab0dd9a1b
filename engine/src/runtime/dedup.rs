//! Idempotent transaction ids: a resubmitted id gets the first submission's outcome and
//! is never applied twice.
//!
//! The table remembers every id in flight and the outcomes of the last
//! `DEDUP_DECIDED_MAX` decided ids (oldest forgotten first), in memory, for the life of
//! the engine. A duplicate of an id in flight gets a ticket of its own that completes
//! with the original's outcome; a duplicate of a remembered decided id gets a ready
//! ticket. Beyond that window (or after a restart) ids must be unique: that is the
//! client's contract, as with TigerBeetle's transfer ids.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::pipeline::{CompletionId, Outcome};
use crate::proto::TxnId;

/// Decided outcomes remembered, over all shards.
pub const DEDUP_DECIDED_MAX: usize = 1 << 20;
/// Shards of the table, so that client threads rarely contend on one lock.
const DEDUP_SHARDS: usize = 16;
const DECIDED_PER_SHARD_MAX: usize = DEDUP_DECIDED_MAX / DEDUP_SHARDS;

const _: () = assert!(DEDUP_SHARDS.is_power_of_two());
const _: () = assert!(DECIDED_PER_SHARD_MAX > 0);

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

enum Entry {
    /// Submitted, not decided; the tickets of duplicates wait here.
    InFlight(Vec<CompletionId>),
    Decided(Outcome),
}

#[derive(Default)]
pub struct Shard {
    entries: IdMap<Entry>,
    /// Decided ids, oldest first, for eviction.
    decided: VecDeque<TxnId>,
}

/// What the table knows of an id, under its shard's lock.
pub enum Seen {
    New,
    InFlight,
    Decided(Outcome),
}

pub struct Dedup {
    shards: Vec<Mutex<Shard>>,
}

/// A shard, locked: the caller decides what to do with the id while it holds it.
pub struct Locked<'a> {
    shard: MutexGuard<'a, Shard>,
    id: TxnId,
}

impl Locked<'_> {
    pub fn seen(&self) -> Seen {
        match self.shard.entries.get(&self.id) {
            None => Seen::New,
            Some(Entry::InFlight(_)) => Seen::InFlight,
            Some(Entry::Decided(outcome)) => Seen::Decided(*outcome),
        }
    }

    /// Records the id as submitted.
    pub fn start(&mut self) {
        self.shard
            .entries
            .insert(self.id, Entry::InFlight(Vec::new()));
    }

    /// Adds a duplicate's ticket to the id in flight.
    pub fn attach(&mut self, completion: CompletionId) {
        if let Some(Entry::InFlight(waiters)) = self.shard.entries.get_mut(&self.id) {
            waiters.push(completion);
        }
    }
}

impl Dedup {
    pub fn new() -> Dedup {
        Dedup {
            shards: (0..DEDUP_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, id: TxnId) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing spreads sequential ids over the shards.
        let index = (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % DEDUP_SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the shard of `id`.
    pub fn lock(&self, id: TxnId) -> Locked<'_> {
        Locked {
            shard: self.shard(id),
            id,
        }
    }

    /// Records the outcome of `id` and returns the tickets of its duplicates.
    pub fn decide(&self, id: TxnId, outcome: Outcome) -> Vec<CompletionId> {
        let mut shard = self.shard(id);
        let waiters = match shard.entries.entry(id) {
            MapEntry::Occupied(mut entry) => {
                match std::mem::replace(entry.get_mut(), Entry::Decided(outcome)) {
                    Entry::InFlight(waiters) => waiters,
                    // Decided twice (a stale completion): keep the first outcome.
                    Entry::Decided(first) => {
                        *entry.get_mut() = Entry::Decided(first);
                        return Vec::new();
                    }
                }
            }
            MapEntry::Vacant(entry) => {
                entry.insert(Entry::Decided(outcome));
                Vec::new()
            }
        };
        shard.decided.push_back(id);
        while shard.decided.len() > DECIDED_PER_SHARD_MAX {
            if let Some(oldest) = shard.decided.pop_front() {
                shard.entries.remove(&oldest);
            }
        }
        waiters
    }
}
