//! The map from a prepared transaction to the amount it holds: a fixed-capacity
//! open-addressing table with linear probing and backward-shift deletion.
//!
//! Why hand-written rather than `std::collections::HashMap` or `hashbrown`: the key is a
//! `u64` and the value fits one 24-byte slot, the capacity is fixed when the ledger is
//! built (the reservation bound), so the table never rehashes or allocates on the hot
//! path; and `prepare` needs one probe that answers both "is this id already held?" and
//! "where would it go?", which the entry API of a general map gives only with more work
//! per operation. Backward-shift deletion keeps probe sequences short without
//! tombstones, so a long-running ledger does not degrade.
//!
//! Invariant: `len <= len_max` and `slots.len() >= 2 * len_max` (a power of two), so at
//! least half the slots are empty and every probe sequence reaches an empty slot.

/// What a held reservation does when it is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum HoldKind {
    /// Held against the available balance; posting subtracts it.
    Debit = 1,
    /// Held as pending; posting adds it.
    Credit = 2,
}

/// One held reservation, as the ledger reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reservation {
    pub txn: u64,
    pub account: u64,
    pub amount: u64,
    pub kind: HoldKind,
}

/// One slot of the table. `state` 0 marks an empty slot, otherwise it is a `HoldKind`.
/// The account is a `u32` so that the slot packs into 24 bytes (see `ACCOUNTS_MAX`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    txn: u64,
    amount: u64,
    account: u32,
    state: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 24);
const SLOT_EMPTY: u8 = 0;

impl Slot {
    pub(crate) fn new(txn: u64, account: u32, amount: u64, kind: HoldKind) -> Slot {
        Slot {
            txn,
            amount,
            account,
            state: kind as u8,
        }
    }

    fn is_empty(&self) -> bool {
        self.state == SLOT_EMPTY
    }

    pub(crate) fn account(&self) -> usize {
        self.account as usize
    }

    pub(crate) fn amount(&self) -> u64 {
        self.amount
    }

    pub(crate) fn kind(&self) -> HoldKind {
        if self.state == HoldKind::Debit as u8 {
            HoldKind::Debit
        } else {
            debug_assert_eq!(self.state, HoldKind::Credit as u8);
            HoldKind::Credit
        }
    }

    fn reservation(&self) -> Reservation {
        Reservation {
            txn: self.txn,
            account: u64::from(self.account),
            amount: self.amount,
            kind: self.kind(),
        }
    }
}

/// The index of the slot where a transaction id's probe starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Home(usize);

/// Where a transaction id is, or where it would be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Found(usize),
    Vacant(usize),
}

pub(crate) struct ReservationTable {
    slots: Box<[Slot]>,
    /// A random key mixed into every hash, so that client-chosen transaction ids cannot
    /// be picked to pile into one probe run (the finalizer alone is invertible). It
    /// changes only where entries sit, never what the ledger votes or posts, so replay
    /// stays deterministic.
    key: u64,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    len: usize,
    len_max: usize,
}

/// The murmur3 64-bit finalizer over the keyed id: spreads sequential and strided
/// transaction ids over the whole table, so that ids that count up do not form one run.
#[inline]
fn hash(txn: u64, key: u64) -> u64 {
    let mut h = txn ^ key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl ReservationTable {
    /// A table that holds at most `len_max` reservations. `len_max` must be at least 1
    /// and is bounded by the caller (`RESERVATIONS_MAX_LIMIT`).
    pub(crate) fn new(len_max: usize) -> ReservationTable {
        debug_assert!(len_max >= 1);
        let capacity = (len_max * 2).next_power_of_two();
        let mut slots = slots_zeroed(capacity);
        if std::mem::size_of_val(&*slots) <= PREFAULT_BYTES_MAX {
            prefault(&mut slots);
        }
        ReservationTable {
            slots,
            key: random_key(),
            mask: capacity - 1,
            len: 0,
            len_max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn len_max(&self) -> usize {
        self.len_max
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.len_max
    }

    /// The slot where `txn`'s probe starts. Batch loops compute it once, prefetch it,
    /// and pass it back to `probe_from` or `remove_from` a few operations later.
    #[inline]
    pub(crate) fn home(&self, txn: u64) -> Home {
        Home((hash(txn, self.key) as usize) & self.mask)
    }

    /// The address of a home slot, for prefetching.
    #[inline]
    pub(crate) fn home_ptr(&self, home: Home) -> *const Slot {
        debug_assert!(home.0 < self.slots.len());
        // SAFETY: every `Home` is masked by `mask == slots.len() - 1` and the table
        // never changes size, so the offset is in bounds.
        unsafe { self.slots.as_ptr().add(home.0) }
    }

    /// Finds `txn`, or the empty slot where it would go.
    #[inline]
    pub(crate) fn probe(&self, txn: u64) -> Probe {
        self.probe_from(txn, self.home(txn))
    }

    /// `probe` with the home slot already computed by `home(txn)`.
    #[inline]
    pub(crate) fn probe_from(&self, txn: u64, home: Home) -> Probe {
        debug_assert_eq!(home, self.home(txn));
        let mut index = home.0;
        // At least half the slots are empty, so the probe ends long before this bound.
        for _ in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.is_empty() {
                return Probe::Vacant(index);
            }
            if slot.txn == txn {
                return Probe::Found(index);
            }
            index = (index + 1) & self.mask;
        }
        unreachable!("reservation table has no empty slot: len {}", self.len)
    }

    /// Fills the empty slot that `probe` returned as `Vacant`, with no other change to
    /// the table in between. The caller checks `is_full` first.
    #[inline]
    pub(crate) fn insert_at(&mut self, index: usize, slot: Slot) {
        debug_assert!(self.slots[index].is_empty());
        debug_assert!(!slot.is_empty());
        debug_assert!(self.len < self.len_max);
        self.slots[index] = slot;
        self.len += 1;
    }

    /// Removes `txn` and returns what it held, or `None` if it holds nothing.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, txn: u64) -> Option<Slot> {
        self.remove_from(txn, self.home(txn))
    }

    /// `remove` with the home slot already computed by `home(txn)`.
    #[inline]
    pub(crate) fn remove_from(&mut self, txn: u64, home: Home) -> Option<Slot> {
        match self.probe_from(txn, home) {
            Probe::Found(index) => Some(self.remove_at(index)),
            Probe::Vacant(_) => None,
        }
    }

    /// Empties slot `index` and shifts the rest of its run back, so that every entry
    /// stays reachable from its home slot without tombstones.
    fn remove_at(&mut self, index: usize) -> Slot {
        let removed = self.slots[index];
        let mut hole = index;
        let mut next = (hole + 1) & self.mask;
        for _ in 0..self.slots.len() {
            let slot = self.slots[next];
            if slot.is_empty() {
                break;
            }
            // The entry may fill the hole only if the hole lies on its probe path, that
            // is between its home slot and where it sits now (cyclically).
            let from_home = next.wrapping_sub(self.home(slot.txn).0) & self.mask;
            let from_hole = next.wrapping_sub(hole) & self.mask;
            if from_home >= from_hole {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
        removed
    }

    /// Every held reservation, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Reservation> + '_ {
        self.slots
            .iter()
            .filter(|slot| !slot.is_empty())
            .map(Slot::reservation)
    }
}

/// `capacity` empty slots, allocated already zeroed: the allocator hands out fresh
/// zero pages, so a large table costs no time until it is used, whereas writing
/// `Slot::default()` into each slot would touch every page up front (768 MiB at
/// `RESERVATIONS_MAX_LIMIT`).
fn slots_zeroed(capacity: usize) -> Box<[Slot]> {
    use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
    debug_assert!(capacity > 0);
    // `capacity` is at most `2 * RESERVATIONS_MAX_LIMIT` slots, far from overflowing.
    let layout = Layout::array::<Slot>(capacity).expect("table size fits a Layout");
    // SAFETY: the layout has a non-zero size (`capacity >= 1`, `Slot` is 24 bytes).
    let pointer = unsafe { alloc_zeroed(layout) } as *mut Slot;
    if pointer.is_null() {
        handle_alloc_error(layout);
    }
    let slots = std::ptr::slice_from_raw_parts_mut(pointer, capacity);
    // SAFETY: the memory was allocated by the global allocator with the layout of
    // `[Slot; capacity]`, which is what `Box<[Slot]>` frees it with; `Slot` is plain
    // integers (`u64`, `u64`, `u32`, `u8` and padding), for which all-zero bytes are a
    // valid value, and all-zero is exactly `Slot::default()`, the empty slot.
    unsafe { Box::from_raw(slots) }
}

/// Tables up to this size (the default `reservations_max` makes 6 MiB) have their
/// pages written once when they are made; larger ones, up to 768 MiB at
/// `RESERVATIONS_MAX_LIMIT`, stay untouched until used.
pub(crate) const PREFAULT_BYTES_MAX: usize = 64 << 20;

/// Writes one empty slot in every page of `slots`, which are all empty already.
///
/// Why: a lookup that reads a page of the zeroed table first maps the shared zero page,
/// and the first insert into that page then takes a copy-on-write fault whose TLB
/// shootdown interrupts every other CPU running the engine. With a fresh table those
/// faults came all at once in the first 0.2 s of load, one per page per ledger, and
/// took most of a core at 100,000 transfers/s (`perf record -g`: `do_wp_page` →
/// `flush_tlb_mm_range` → `smp_call_function_many_cond` under
/// `ReservationTable::insert_at`). A write to a page nothing has mapped yet maps a
/// private page directly, with no earlier mapping to shoot down.
fn prefault(slots: &mut [Slot]) {
    const PAGE_BYTES: usize = 4096;
    // Consecutive writes are less than a page apart, so every page gets one.
    let step = (PAGE_BYTES / std::mem::size_of::<Slot>()).max(1);
    for slot in slots.iter_mut().step_by(step) {
        // SAFETY: `slot` is a valid, aligned, exclusive reference into the table. The
        // write is volatile only so that it is not elided as a store of zeros into
        // memory the allocator returned zeroed, which is exactly what makes it useful.
        unsafe { std::ptr::write_volatile(slot, Slot::default()) };
    }
}

/// A fresh random 64-bit key from the standard library's per-process random hasher
/// seed, so no random-number crate is needed for this one value.
fn random_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // Proves that prefaulting leaves a table of the default size empty in every slot,
    // and that one over `PREFAULT_BYTES_MAX` is made too (left untouched).
    #[test]
    fn prefaulted_tables_are_empty() {
        let table = ReservationTable::new(1 << 17);
        assert!(std::mem::size_of_val(&*table.slots) <= PREFAULT_BYTES_MAX);
        assert_eq!(table.len(), 0);
        assert!(table.slots.iter().all(Slot::is_empty));
        let large = ReservationTable::new(PREFAULT_BYTES_MAX / std::mem::size_of::<Slot>());
        assert!(std::mem::size_of_val(&*large.slots) > PREFAULT_BYTES_MAX);
        assert_eq!(large.len(), 0);
    }

    // Proves that the table agrees with a HashMap over a long random mix of inserts and
    // removes that keeps it near full, which exercises wrap-around and backward shifts.
    #[test]
    fn agrees_with_hashmap_under_churn() {
        let len_max = 64;
        let mut table = ReservationTable::new(len_max);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut state = 0x1234_5678_u64;
        for step in 0..200_000u64 {
            state = hash(state.wrapping_add(step), 0);
            let txn = state % 200;
            match table.probe(txn) {
                Probe::Found(_) => {
                    let slot = table.remove(txn).expect("found, so removable");
                    assert_eq!(Some(slot.amount()), model.remove(&txn));
                }
                Probe::Vacant(index) if !table.is_full() => {
                    table.insert_at(index, Slot::new(txn, 0, step, HoldKind::Debit));
                    assert_eq!(model.insert(txn, step), None);
                }
                Probe::Vacant(_) => assert_eq!(model.len(), len_max),
            }
            assert_eq!(table.len(), model.len());
        }
        let mut held: Vec<(u64, u64)> = table.iter().map(|r| (r.txn, r.amount)).collect();
        let mut expected: Vec<(u64, u64)> = model.into_iter().collect();
        held.sort_unstable();
        expected.sort_unstable();
        assert_eq!(held, expected);
    }
}
