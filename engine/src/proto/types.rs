//! The small value types every role shares: site and batch ids, the per-transaction
//! state, the batch descriptor and the transaction bit set.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::rm::TxnId;

/// The most sites (participants plus coordinator replicas) one deployment may have.
///
/// Site sets are `u64` bit masks, so that "who acknowledged transaction i" is one word
/// and a quorum test is one `count_ones`.
pub const SITES_MAX: usize = 64;

/// The most transactions one batch may hold: it bounds every allocation a decoder makes
/// from a length field it read from the wire or the log.
pub const BATCH_TXNS_MAX: usize = 1 << 16;

/// The map from batch to per-batch state a role keeps. Its hasher has fixed keys, so
/// that iteration order (timeouts, retirement) depends only on the inputs: the
/// simulator must replay a seed exactly, and std's `RandomState` differs per map.
pub(crate) type BatchMap<V> = HashMap<BatchId, V, BuildHasherDefault<DefaultHasher>>;

/// A site: a coordinator replica or a participant. Ids are below [`SITES_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SiteId(pub u8);

impl SiteId {
    /// This site's bit in a site mask.
    pub fn bit(self) -> u64 {
        1u64 << (self.0 as u32 % SITES_MAX as u32)
    }
}

/// A batch: `rank << 56 | incarnation << 32 | counter`, named by the coordinator
/// replica that opened it.
///
/// Invariant: two batches opened anywhere in a deployment never share an id. The rank
/// (the opener's index in `ProtoConfig::replicas`, below [`BATCH_OPENER_RANKS_MAX`])
/// keeps concurrent openers apart; the incarnation (24 bits, durable per replica,
/// raised and forced before the replica opens anything after a start) keeps a
/// restarted replica from reusing an id that participants may still hold; the counter
/// (32 bits) numbers the batches of one incarnation. No field may wrap: the opener
/// refuses to open past [`BATCH_INCARNATION_MAX`] or `u32::MAX` batches instead.
/// Any replica may therefore open batches without an election: each batch is its own
/// E3PC instance, and its opener drives election 1 (`BatchId::opener_rank`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BatchId(pub u64);

/// Ranks a batch id can name: 8 bits. `ProtoConfig::validate` keeps the replica count
/// within it (and within `SITES_MAX`).
pub const BATCH_OPENER_RANKS_MAX: usize = 1 << 8;
/// The largest incarnation a batch id can carry (24 bits).
pub const BATCH_INCARNATION_MAX: u32 = (1 << 24) - 1;

const _: () = assert!(SITES_MAX <= BATCH_OPENER_RANKS_MAX);

impl BatchId {
    /// The id of batch `counter` of incarnation `incarnation` of the replica at
    /// `rank`; `None` if the rank or incarnation does not fit its field.
    pub fn compose(rank: u32, incarnation: u32, counter: u32) -> Option<BatchId> {
        if rank as usize >= BATCH_OPENER_RANKS_MAX || incarnation > BATCH_INCARNATION_MAX {
            return None;
        }
        Some(BatchId(
            (rank as u64) << 56 | (incarnation as u64) << 32 | counter as u64,
        ))
    }

    /// The rank (index in `ProtoConfig::replicas`) of the replica that opened it.
    pub fn opener_rank(self) -> u32 {
        (self.0 >> 56) as u32
    }

    /// The opener's incarnation when it opened the batch.
    pub fn incarnation(self) -> u32 {
        ((self.0 >> 32) as u32) & BATCH_INCARNATION_MAX
    }

    /// The batch's number within its opener's incarnation.
    pub fn counter(self) -> u32 {
        self.0 as u32
    }
}

/// The site-local sequence number of an append action: dense, starting at 1 for each
/// state machine instance (a recovered instance starts again at 1).
///
/// The driver reports durability as "every append up to this sequence number is
/// synced". With a log that holds only this machine's records, `lsn = base + seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AppendSeq(pub u64);

/// A site's durable state for one transaction (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum State {
    /// Nothing known or not voted yes (read-only voters and witnesses start here).
    #[default]
    Q = 0,
    /// Voted yes: prepared, waiting.
    W = 1,
    /// Pre-committed at some attempt.
    PreCommit = 2,
    /// Pre-aborted at some attempt.
    PreAbort = 3,
    /// Committed: final.
    Commit = 4,
    /// Aborted: final.
    Abort = 5,
}

impl State {
    /// Decodes a state byte; `None` for a value no encoder writes.
    pub fn from_u8(byte: u8) -> Option<State> {
        Some(match byte {
            0 => State::Q,
            1 => State::W,
            2 => State::PreCommit,
            3 => State::PreAbort,
            4 => State::Commit,
            5 => State::Abort,
            _ => return None,
        })
    }

    /// Commit and abort never change (invariant 4).
    pub fn is_final(self) -> bool {
        matches!(self, State::Commit | State::Abort)
    }

    /// States that hold a transaction open: the site must chase a decision.
    pub fn is_pending(self) -> bool {
        matches!(self, State::W | State::PreCommit | State::PreAbort)
    }
}

/// What a transaction finally did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Commit,
    Abort,
}

/// A batch's membership: the transactions, in order, and each one's participants.
///
/// Index `i` into `txns` is the transaction's name inside the batch: every message,
/// record and per-transaction vector uses it, so the hot path never hashes a `TxnId`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    pub batch: BatchId,
    pub txns: Vec<TxnId>,
    /// Participant site mask per transaction (coordinator replicas are implicit).
    pub members: Vec<u64>,
}

impl Descriptor {
    /// The number of transactions, as the `u32` every set and record uses.
    pub fn len(&self) -> u32 {
        self.txns.len() as u32
    }

    /// True for a batch without transactions (never submitted, but decodable).
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The union of all participants of the batch.
    pub fn participants(&self) -> u64 {
        self.members.iter().fold(0, |acc, mask| acc | mask)
    }

    /// How many transactions `site` is a participant of.
    pub fn member_txns(&self, site: SiteId) -> u32 {
        let bit = site.bit();
        self.members
            .iter()
            .filter(|&&members| members & bit != 0)
            .count() as u32
    }

    /// Checks the shape a decoder or a peer could get wrong: equal lengths, bounded
    /// size, and no transaction without participants.
    pub fn is_well_formed(&self) -> bool {
        self.txns.len() == self.members.len()
            && self.txns.len() <= BATCH_TXNS_MAX
            && self.members.iter().all(|&mask| mask != 0)
    }
}

/// A shared, immutable descriptor: messages and records refer to one allocation.
pub type DescriptorRef = Arc<Descriptor>;

/// A set of transaction indices within one batch, as a bit set.
///
/// Bits at or above `len` are always zero; every constructor keeps that true, so
/// `count` and equality need no masking.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TxnSet {
    len: u32,
    words: Vec<u64>,
}

impl TxnSet {
    /// An empty set for a batch of `len` transactions.
    pub fn empty(len: u32) -> TxnSet {
        TxnSet {
            len,
            words: vec![0; words_for(len)],
        }
    }

    /// The set of all `len` transactions.
    pub fn full(len: u32) -> TxnSet {
        let mut set = TxnSet {
            len,
            words: vec![u64::MAX; words_for(len)],
        };
        set.trim();
        set
    }

    /// Builds a set from raw words, rejecting a wrong word count or bits past `len`.
    pub fn from_words(len: u32, words: Vec<u64>) -> Option<TxnSet> {
        let set = TxnSet { len, words };
        if set.words.len() != words_for(len) {
            return None;
        }
        let mut trimmed = set.clone();
        trimmed.trim();
        (trimmed == set).then_some(set)
    }

    fn trim(&mut self) {
        let tail_bits = self.len % 64;
        if tail_bits != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail_bits) - 1;
            }
        }
    }

    /// The batch size this set is over (not the number of members).
    pub fn universe(&self) -> u32 {
        self.len
    }

    /// The raw words, little-endian bit order within each word.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The set whose word `k` is `word(k)`, bits past `len` cleared: how the
    /// word-at-a-time paths build a result from other sets' words without a per-bit loop.
    pub fn from_word_fn(len: u32, word: impl FnMut(usize) -> u64) -> TxnSet {
        let mut set = TxnSet {
            len,
            words: (0..words_for(len)).map(word).collect(),
        };
        set.trim();
        set
    }

    /// Adds (`on`) or removes the transactions of `bits` in word `word_index`; bits
    /// past `len`, and a word past the end, are ignored.
    pub fn assign_word(&mut self, word_index: usize, bits: u64, on: bool) {
        let tail_bits = self.len % 64;
        let Some(word) = self.words.get_mut(word_index) else {
            return;
        };
        let bits = if tail_bits != 0 && word_index + 1 == words_for(self.len) {
            bits & ((1u64 << tail_bits) - 1)
        } else {
            bits
        };
        if on {
            *word |= bits;
        } else {
            *word &= !bits;
        }
    }

    /// Adds transaction `index`; an index outside the batch is ignored.
    pub fn insert(&mut self, index: u32) {
        if index < self.len {
            self.words[(index / 64) as usize] |= 1u64 << (index % 64);
        }
    }

    /// Removes transaction `index`.
    pub fn remove(&mut self, index: u32) {
        if index < self.len {
            self.words[(index / 64) as usize] &= !(1u64 << (index % 64));
        }
    }

    /// True if transaction `index` is in the set.
    pub fn contains(&self, index: u32) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1u64 << (index % 64)) != 0
    }

    /// True if no transaction is in the set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// The number of transactions in the set.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|word| word.count_ones()).sum()
    }

    /// Empties the set, keeping its universe.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|word| *word = 0);
    }

    /// True if the sets share a transaction (word by word, no per-bit loop).
    pub fn intersects(&self, other: &TxnSet) -> bool {
        self.len == other.len && self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// `self ∪= other` (sets over different universes are left unchanged).
    pub fn union_with(&mut self, other: &TxnSet) {
        if self.len == other.len {
            self.words
                .iter_mut()
                .zip(&other.words)
                .for_each(|(a, b)| *a |= b);
        }
    }

    /// `self ∩= other`; a set over a different universe empties `self`.
    pub fn intersect_with(&mut self, other: &TxnSet) {
        if self.len == other.len {
            self.words
                .iter_mut()
                .zip(&other.words)
                .for_each(|(a, b)| *a &= b);
        } else {
            self.clear();
        }
    }

    /// `self \= other`.
    pub fn subtract(&mut self, other: &TxnSet) {
        if self.len == other.len {
            self.words
                .iter_mut()
                .zip(&other.words)
                .for_each(|(a, b)| *a &= !b);
        }
    }

    /// The indices in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(word_index, &word)| {
                BitIter { word }.map(move |bit| word_index as u32 * 64 + bit)
            })
    }
}

fn words_for(len: u32) -> usize {
    len.div_ceil(64) as usize
}

struct BitIter {
    word: u64,
}

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.word == 0 {
            return None;
        }
        let bit = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(bit)
    }
}

/// The number of sites in a mask.
pub fn site_count(mask: u64) -> u32 {
    mask.count_ones()
}

/// True if `acked` holds a strict majority of `group`.
pub fn is_quorum(acked: u64, group: u64) -> bool {
    (acked & group).count_ones() * 2 > group.count_ones()
}

/// Batch ids a site has retired (forgotten after every site durably decided them), as
/// disjoint half-open ranges: batches retire almost in order, so it stays a few ranges.
#[derive(Clone, Debug, Hash, Default)]
pub struct RetiredSet {
    ranges: std::collections::BTreeMap<u64, u64>,
}

impl RetiredSet {
    /// True if `batch` was retired.
    pub fn contains(&self, batch: BatchId) -> bool {
        self.ranges
            .range(..=batch.0)
            .next_back()
            .is_some_and(|(_, &end)| batch.0 < end)
    }

    /// Adds `batch`, merging it with the ranges it touches.
    pub fn insert(&mut self, batch: BatchId) {
        if self.contains(batch) || batch.0 == u64::MAX {
            return;
        }
        let mut start = batch.0;
        let mut end = batch.0 + 1;
        if let Some((&before, &before_end)) = self.ranges.range(..start).next_back() {
            if before_end == start {
                start = before;
                self.ranges.remove(&before);
            }
        }
        if let Some(after_end) = self.ranges.remove(&end) {
            end = after_end;
        }
        self.ranges.insert(start, end);
    }

    /// The number of disjoint ranges (a measure of its memory).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// The retired ranges `[start, end)` of batch ids, in increasing order (what a
    /// checkpoint carries forward).
    pub fn range_list(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }

    /// Adds every batch of `[start, end)`; an empty or inverted range adds nothing.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Merge with every range it touches or overlaps.
        let mut start = start;
        let mut end = end;
        if let Some((&before, &before_end)) = self.ranges.range(..=start).next_back() {
            if before_end >= start {
                start = before;
                end = end.max(before_end);
                self.ranges.remove(&before);
            }
        }
        while let Some((&next, &next_end)) = self.ranges.range(start..=end).next() {
            end = end.max(next_end);
            self.ranges.remove(&next);
        }
        self.ranges.insert(start, end);
    }
}

/// The distinct masks of a batch's transactions, numbered in the order they first
/// appear, at most `N` of them (`N` ≤ 255): a batch's transactions share a few
/// participant sets (a transfer between two of four ledgers has one of six), which the
/// coordinator's quorum check and the log's compact descriptor both use.
///
/// Finding a mask's class is on every site's hot path, once per transaction per
/// logged descriptor, and consecutive transactions rarely share a mask: a small table
/// indexed by the mask's hash points at its class, and only a miss in it scans the
/// classes (a collision just costs that scan, the table is a hint checked against
/// `masks`).
pub(crate) struct MaskClasses<const N: usize> {
    masks: [u64; N],
    count: usize,
    /// Class + 1 by hash slot; 0 is an empty slot.
    hint: [u8; MASK_HINT_SLOTS],
}

/// Slots of [`MaskClasses`]'s hint table: a power of two, several times the classes a
/// batch usually has, so that they rarely collide.
const MASK_HINT_SLOTS: usize = 64;
const MASK_HINT_BITS: u32 = MASK_HINT_SLOTS.trailing_zeros();
const _: () = assert!(MASK_HINT_SLOTS.is_power_of_two());

impl<const N: usize> MaskClasses<N> {
    pub(crate) fn new() -> Self {
        const {
            assert!(
                N <= u8::MAX as usize,
                "a class + 1 must fit the hint's byte"
            )
        };
        MaskClasses {
            masks: [0; N],
            count: 0,
            hint: [0; MASK_HINT_SLOTS],
        }
    }

    /// The class of `mask`, a new one if it is not yet known; `None` when it is new and
    /// `N` classes are taken.
    #[inline]
    pub(crate) fn class_of(&mut self, mask: u64) -> Option<usize> {
        // Fibonacci hashing: the top bits of the product mix every bit of the mask.
        let slot =
            (mask.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - MASK_HINT_BITS)) as usize;
        let hinted = self.hint[slot] as usize;
        if hinted != 0 && self.masks[hinted - 1] == mask {
            return Some(hinted - 1);
        }
        let class = match self.masks[..self.count].iter().position(|&m| m == mask) {
            Some(position) => position,
            None if self.count == N => return None,
            None => {
                self.masks[self.count] = mask;
                self.count += 1;
                self.count - 1
            }
        };
        // Invariant: a non-zero hint names a class below `count` (N ≤ 255 fits it).
        self.hint[slot] = (class + 1) as u8;
        Some(class)
    }

    /// The masks found so far, in class order.
    pub(crate) fn masks(&self) -> &[u64] {
        &self.masks[..self.count]
    }
}

/// The sites of a mask, in increasing id order.
pub fn sites_of(mask: u64) -> impl Iterator<Item = SiteId> {
    BitIter { word: mask }.map(|bit| SiteId(bit as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Proves that the hinted class finder numbers masks exactly as a scan in order
        // of first appearance does, with hint slots colliding (masks from a few bits
        // land in few of the 64 slots, wide masks in any), and that it answers `None`
        // for a new mask only once `N` classes are taken, and then for no known one.
        #[test]
        fn mask_classes_number_masks_by_first_appearance(
            masks in prop::collection::vec(
                prop_oneof![0u64..12, any::<u64>().prop_map(|mask| mask | (1 << 63))],
                0..400,
            ),
        ) {
            let mut classes = MaskClasses::<16>::new();
            let mut seen: Vec<u64> = Vec::new();
            for &mask in &masks {
                let expected = match seen.iter().position(|&known| known == mask) {
                    Some(class) => Some(class),
                    None if seen.len() == 16 => None,
                    None => {
                        seen.push(mask);
                        Some(seen.len() - 1)
                    }
                };
                prop_assert_eq!(classes.class_of(mask), expected);
            }
            prop_assert_eq!(classes.masks(), &seen[..]);
        }
    }

    // Proves that the word-at-a-time builders keep bits past the universe out: a
    // word function that sets every bit, and words assigned past the end or into the
    // tail, leave exactly the universe's transactions.
    #[test]
    fn word_builders_keep_the_universe() {
        let set = TxnSet::from_word_fn(70, |_| u64::MAX);
        assert_eq!(set, TxnSet::full(70));
        assert_eq!(set.count(), 70);
        let mut built = TxnSet::empty(70);
        built.assign_word(0, u64::MAX, true);
        built.assign_word(1, u64::MAX, true);
        built.assign_word(2, u64::MAX, true);
        assert_eq!(built, TxnSet::full(70));
        built.assign_word(1, 1 << 2, false);
        assert!(!built.contains(66) && built.contains(65) && built.contains(69));
        assert_eq!(built.count(), 69);
        assert_eq!(TxnSet::from_word_fn(128, |_| u64::MAX), TxnSet::full(128));
    }

    // Proves that set operations agree with a naive Vec<bool> model and that bits past
    // the universe never appear.
    #[test]
    fn txn_set_matches_a_bool_model() {
        let len = 130;
        let mut set = TxnSet::empty(len);
        let mut model = vec![false; len as usize];
        for index in [0u32, 5, 63, 64, 65, 127, 128, 129, 130, 500] {
            set.insert(index);
            if index < len {
                model[index as usize] = true;
            }
        }
        set.remove(64);
        model[64] = false;
        let expected: Vec<u32> = (0..len).filter(|&i| model[i as usize]).collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), expected);
        assert_eq!(set.count() as usize, expected.len());
        let full = TxnSet::full(len);
        assert_eq!(full.count(), len);
        assert!(TxnSet::from_words(len, full.words().to_vec()).is_some());
        assert!(TxnSet::from_words(len, vec![u64::MAX; 3]).is_none());
        assert!(TxnSet::from_words(len, vec![0; 2]).is_none());
        let mut other = TxnSet::empty(len);
        other.insert(64);
        assert!(!set.intersects(&other), "64 was removed from set");
        other.insert(129);
        assert!(set.intersects(&other));
        assert!(
            !set.intersects(&TxnSet::full(len + 1)),
            "different universes never intersect"
        );
    }

    // Proves that retired ids merge into ranges and that membership is exact.
    #[test]
    fn retired_set_merges_ranges() {
        let mut retired = RetiredSet::default();
        for id in [5u64, 7, 6, 1, 2, 9] {
            retired.insert(BatchId(id));
        }
        assert_eq!(retired.ranges(), 3);
        for id in 0..12u64 {
            assert_eq!(
                retired.contains(BatchId(id)),
                [1, 2, 5, 6, 7, 9].contains(&id),
                "{id}"
            );
        }
        retired.insert(BatchId(8));
        retired.insert(BatchId(3));
        retired.insert(BatchId(4));
        assert_eq!(retired.ranges(), 1);
    }

    // Proves that batch ids name their opener and incarnation, that the fields never
    // overlap (two openers or two incarnations never share an id), and that a value
    // that does not fit its field is refused instead of wrapping.
    #[test]
    fn batch_ids_name_their_opener() {
        let id = BatchId::compose(2, BATCH_INCARNATION_MAX, u32::MAX).unwrap();
        assert_eq!(id.opener_rank(), 2);
        assert_eq!(id.incarnation(), BATCH_INCARNATION_MAX);
        assert_eq!(id.counter(), u32::MAX);
        let mut seen = std::collections::HashSet::new();
        for rank in 0..3 {
            for incarnation in [1, 2, BATCH_INCARNATION_MAX] {
                for counter in [0, 1, u32::MAX] {
                    assert!(seen.insert(BatchId::compose(rank, incarnation, counter).unwrap()));
                }
            }
        }
        assert_eq!(BatchId::compose(0, BATCH_INCARNATION_MAX + 1, 0), None);
        assert_eq!(BatchId::compose(BATCH_OPENER_RANKS_MAX as u32, 1, 0), None);
        assert_eq!(BatchId(7 << 32 | 3).opener_rank(), 0, "old ids name rank 0");
    }

    // Proves the quorum test is a strict majority of the group only.
    #[test]
    fn quorum_is_a_strict_majority_of_the_group() {
        let group = 0b11111;
        assert!(!is_quorum(0b00011, group));
        assert!(is_quorum(0b00111, group));
        assert!(!is_quorum(0b1100000, group));
        assert!(is_quorum(0b11, 0b111 & !0b100 | 0b11));
        assert!(!is_quorum(0b1, 0b11));
    }
}
