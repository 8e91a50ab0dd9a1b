//! An open-addressing table keyed by transaction id: linear probing, backward-shift
//! deletion, a power-of-two capacity at least twice the entries it may hold, and the
//! address of each id's home slot exposed for prefetching.
//!
//! Three hot paths use it: the built-in ledger's reservations (`ledger::table`, a fixed
//! bound), a participant's id index ([`super::ids::HeldIds`], which grows it when
//! needed) and the engine's table of recently decided ids (`runtime::dedup`, one table
//! per generation, cleared whole when the generation is dropped). Why hand-written rather than `std::collections::HashMap` or `hashbrown`:
//! the key is a `u64` and the value fits one small slot, so a probe reads one cache line
//! where a SwissTable reads a control group and then a bucket, two dependent misses in a
//! table of several MiB; batch loops compute the home slots of the ids a few operations
//! ahead and prefetch them, which a general map does not let them do; and one probe
//! answers both "is this id here?" and "where would it go?". Backward-shift deletion
//! keeps probe sequences short without tombstones, so a long-running table does not
//! degrade.
//!
//! Invariant: `len <= len_max` and `slots.len() >= len_max * 4 / 3` (a power of two),
//! so at least a quarter of the slots are empty and every probe sequence reaches an
//! empty slot. [`Table::new`] leaves at least half of them empty (short probes at any
//! fill); [`Table::dense`] a quarter, for a table whose usual fill is well below its
//! bound.

/// A slot of a [`Table`]: a transaction id and what is stored with it, or empty.
///
/// # Safety
///
/// All-zero bytes must be a valid value of the type, and an empty slot
/// (`is_empty`): the table allocates its slots zeroed and writes zeros to empty them.
pub(crate) unsafe trait TableSlot: Copy {
    /// The id the slot holds (meaningless when empty).
    fn key(&self) -> u64;
    /// Whether the slot holds nothing.
    fn is_empty(&self) -> bool;
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

/// See the module docs.
pub(crate) struct Table<S: TableSlot> {
    slots: Box<[S]>,
    /// A random key mixed into every hash, so that client-chosen transaction ids cannot
    /// be picked to pile into one probe run (the finalizer alone is invertible). It
    /// changes only where entries sit, never what is stored, so replay stays
    /// deterministic: nothing reads the table in slot order without sorting.
    key: u64,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    len: usize,
    len_max: usize,
}

impl<S: TableSlot> Clone for Table<S> {
    fn clone(&self) -> Table<S> {
        Table {
            slots: self.slots.clone(),
            key: self.key,
            mask: self.mask,
            len: self.len,
            len_max: self.len_max,
        }
    }
}

/// The murmur3 64-bit finalizer over the keyed id: spreads sequential and strided
/// transaction ids over the whole table, so that ids that count up do not form one run.
#[inline]
pub(crate) fn hash(txn: u64, key: u64) -> u64 {
    let mut h = txn ^ key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl<S: TableSlot> Table<S> {
    /// A table that holds at most `len_max` entries (at least 1; bounded by the caller)
    /// in at least twice as many slots.
    pub(crate) fn new(len_max: usize) -> Table<S> {
        let len_max = len_max.max(1);
        Table::with_capacity(len_max, (len_max * 2).next_power_of_two())
    }

    /// A table that holds at most `len_max` entries (at least 1) in at least 4/3 as many
    /// slots: a participant's id index, which holds its decided bound and a few pending
    /// ids (half full), and keeps room for up to half as many pending ones again.
    pub(crate) fn dense(len_max: usize) -> Table<S> {
        let len_max = len_max.max(1);
        let capacity = len_max.saturating_add(len_max.div_ceil(3));
        Table::with_capacity(len_max, capacity.next_power_of_two())
    }

    fn with_capacity(len_max: usize, capacity: usize) -> Table<S> {
        debug_assert!(capacity.is_power_of_two() && capacity >= len_max + len_max / 3);
        let mut slots = slots_zeroed::<S>(capacity);
        if std::mem::size_of_val(&*slots) <= PREFAULT_BYTES_MAX {
            prefault(&mut slots);
        }
        Table {
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

    /// Raises the bound to `len_max` ([`Table::dense`]'s slots for it), moving every
    /// entry into a new table (one pass over both; a fixed-bound table never grows).
    /// Slot indices and `Home`s taken before are stale afterwards: probe again.
    pub(crate) fn grow(&mut self, len_max: usize) {
        if len_max <= self.len_max {
            return;
        }
        let mut grown = Table::<S>::dense(len_max);
        grown.key = self.key;
        for slot in self.slots.iter().filter(|slot| !slot.is_empty()) {
            match grown.probe(slot.key()) {
                Probe::Vacant(index) => grown.insert_at(index, *slot),
                Probe::Found(_) => unreachable!("an id is in a table once"),
            }
        }
        *self = grown;
    }

    /// The slot where `txn`'s probe starts. Batch loops get it from `prefetch` and
    /// pass it back to `probe_from` or `remove_from` a few operations later.
    #[inline]
    fn home(&self, txn: u64) -> Home {
        Home((hash(txn, self.key) as usize) & self.mask)
    }

    /// Hints the CPU to fetch the home slot of `txn`, and returns it.
    #[inline]
    pub(crate) fn prefetch(&self, txn: u64) -> Home {
        let home = self.home(txn);
        prefetch_read(self.home_ptr(home) as *const i8);
        home
    }

    /// [`Table::prefetch`], and the cache line after the home slot's too: for a
    /// removal, whose backward shift reads the slots after the removed one.
    #[inline]
    pub(crate) fn prefetch_run(&self, txn: u64) {
        let home = self.prefetch(txn);
        let line_slots = (CACHE_LINE_BYTES / std::mem::size_of::<S>()).max(1);
        prefetch_read(self.home_ptr(Home((home.0 + line_slots) & self.mask)) as *const i8);
    }

    /// The address of a home slot, for prefetching.
    #[inline]
    fn home_ptr(&self, home: Home) -> *const S {
        debug_assert!(home.0 < self.slots.len());
        // SAFETY: `home.0 & mask` is below `slots.len()` (`mask == slots.len() - 1`), so
        // the offset stays inside the allocation.
        unsafe { self.slots.as_ptr().add(home.0 & self.mask) }
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
            if slot.key() == txn {
                return Probe::Found(index);
            }
            index = (index + 1) & self.mask;
        }
        unreachable!("table has no empty slot: len {}", self.len)
    }

    /// The entry at `index`, which `probe` returned as `Found`.
    #[inline]
    pub(crate) fn at(&self, index: usize) -> &S {
        &self.slots[index]
    }

    /// The entry at `index`, which `probe` returned as `Found`, to change in place (its
    /// key must stay).
    #[inline]
    pub(crate) fn at_mut(&mut self, index: usize) -> &mut S {
        &mut self.slots[index]
    }

    /// Fills the empty slot that `probe` returned as `Vacant`, with no other change to
    /// the table in between. The caller checks `is_full` first.
    #[inline]
    pub(crate) fn insert_at(&mut self, index: usize, slot: S) {
        debug_assert!(self.slots[index].is_empty());
        debug_assert!(!slot.is_empty());
        debug_assert!(self.len < self.len_max);
        self.slots[index] = slot;
        self.len += 1;
    }

    /// Empties every slot, keeping the allocation (one pass over the slots).
    pub(crate) fn clear(&mut self) {
        self.slots.fill(empty_slot());
        self.len = 0;
    }

    /// Removes `txn` and returns what it held, or `None` if it holds nothing.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, txn: u64) -> Option<S> {
        self.remove_from(txn, self.home(txn))
    }

    /// `remove` with the home slot already computed by `home(txn)`.
    #[inline]
    pub(crate) fn remove_from(&mut self, txn: u64, home: Home) -> Option<S> {
        match self.probe_from(txn, home) {
            Probe::Found(index) => Some(self.remove_at(index)),
            Probe::Vacant(_) => None,
        }
    }

    /// Empties slot `index` and shifts the rest of its run back, so that every entry
    /// stays reachable from its home slot without tombstones.
    pub(crate) fn remove_at(&mut self, index: usize) -> S {
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
            let from_home = next.wrapping_sub(self.home(slot.key()).0) & self.mask;
            let from_hole = next.wrapping_sub(hole) & self.mask;
            if from_home >= from_hole {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = empty_slot();
        self.len -= 1;
        removed
    }

    /// Every entry, in slot order (which depends on the random key: sort before
    /// anything depends on the order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &S> + '_ {
        self.slots.iter().filter(|slot| !slot.is_empty())
    }
}

/// The empty slot: all-zero bytes.
fn empty_slot<S: TableSlot>() -> S {
    // SAFETY: `TableSlot`'s contract makes all-zero bytes a valid value of `S`.
    unsafe { std::mem::zeroed() }
}

/// `capacity` empty slots, allocated already zeroed: the allocator hands out fresh
/// zero pages, so a large table costs no time until it is used, whereas writing an
/// empty slot into each would touch every page up front (768 MiB at the ledger's
/// `RESERVATIONS_MAX_LIMIT`).
fn slots_zeroed<S: TableSlot>(capacity: usize) -> Box<[S]> {
    use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
    debug_assert!(capacity > 0);
    const { assert!(std::mem::size_of::<S>() > 0) };
    // `capacity` is at most twice the callers' bounds, far from overflowing.
    let layout = Layout::array::<S>(capacity).expect("table size fits a Layout");
    // SAFETY: the layout has a non-zero size (`capacity >= 1`, `S` is not zero-sized).
    let pointer = unsafe { alloc_zeroed(layout) } as *mut S;
    if pointer.is_null() {
        handle_alloc_error(layout);
    }
    let slots = std::ptr::slice_from_raw_parts_mut(pointer, capacity);
    // SAFETY: the memory was allocated by the global allocator with the layout of
    // `[S; capacity]`, which is what `Box<[S]>` frees it with, and all-zero bytes are a
    // valid (empty) `S` by `TableSlot`'s contract.
    unsafe { Box::from_raw(slots) }
}

/// The cache line size the prefetches assume.
const CACHE_LINE_BYTES: usize = 64;

/// Tables up to this size (the ledger's default `reservations_max` makes 6 MiB, a
/// participant's id index 16 MiB) have their pages written once when they are made;
/// larger ones, up to 768 MiB at the ledger's `RESERVATIONS_MAX_LIMIT`, stay untouched
/// until used.
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
fn prefault<S: TableSlot>(slots: &mut [S]) {
    const PAGE_BYTES: usize = 4096;
    // Consecutive writes are less than a page apart, so every page gets one.
    let step = (PAGE_BYTES / std::mem::size_of::<S>()).max(1);
    for slot in slots.iter_mut().step_by(step) {
        // SAFETY: `slot` is a valid, aligned, exclusive reference into the table. The
        // write is volatile only so that it is not elided as a store of zeros into
        // memory the allocator returned zeroed, which is exactly what makes it useful.
        unsafe { std::ptr::write_volatile(slot, empty_slot()) };
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

/// Hints the CPU to bring the cache line at `address` in; does nothing where the
/// target has no stable prefetch instruction.
#[inline(always)]
pub(crate) fn prefetch_read(address: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and never reads the memory
    // into the program, so any address is allowed; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A test slot: `value` 0 marks it empty.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Pair {
        key: u64,
        value: u64,
    }

    // SAFETY: two integers; all-zero is `value == 0`, the empty slot.
    unsafe impl TableSlot for Pair {
        fn key(&self) -> u64 {
            self.key
        }
        fn is_empty(&self) -> bool {
            self.value == 0
        }
    }

    // Proves that prefaulting leaves a table empty in every slot, and that one over
    // `PREFAULT_BYTES_MAX` is made too (left untouched).
    #[test]
    fn prefaulted_tables_are_empty() {
        let table = Table::<Pair>::new(1 << 17);
        assert!(std::mem::size_of_val(&*table.slots) <= PREFAULT_BYTES_MAX);
        assert_eq!(table.len(), 0);
        assert!(table.slots.iter().all(Pair::is_empty));
        let large = Table::<Pair>::new(PREFAULT_BYTES_MAX / std::mem::size_of::<Pair>());
        assert!(std::mem::size_of_val(&*large.slots) > PREFAULT_BYTES_MAX);
        assert_eq!(large.len(), 0);
    }

    // Proves that the table agrees with a HashMap over a long random mix of inserts and
    // removes that keeps it near full, which exercises wrap-around and backward shifts,
    // and that growing it mid-way keeps every entry.
    #[test]
    fn agrees_with_hashmap_under_churn() {
        let mut len_max = 64;
        let mut table = Table::<Pair>::new(len_max);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut state = 0x1234_5678_u64;
        for step in 1..200_000u64 {
            state = hash(state.wrapping_add(step), 0);
            let txn = state % 300;
            match table.probe(txn) {
                Probe::Found(index) => {
                    assert_eq!(table.at(index).value, model[&txn]);
                    let slot = table.remove(txn).expect("found, so removable");
                    assert_eq!(Some(slot.value), model.remove(&txn));
                }
                Probe::Vacant(index) if !table.is_full() => {
                    table.insert_at(
                        index,
                        Pair {
                            key: txn,
                            value: step,
                        },
                    );
                    assert_eq!(model.insert(txn, step), None);
                }
                Probe::Vacant(_) => assert_eq!(model.len(), len_max),
            }
            assert_eq!(table.len(), model.len());
            if step == 100_000 {
                len_max = 150;
                table.grow(len_max);
                assert_eq!(table.len_max(), len_max);
            }
        }
        let mut held: Vec<(u64, u64)> = table.iter().map(|p| (p.key, p.value)).collect();
        let mut expected: Vec<(u64, u64)> = model.into_iter().collect();
        held.sort_unstable();
        expected.sort_unstable();
        assert_eq!(held, expected);
    }
}
