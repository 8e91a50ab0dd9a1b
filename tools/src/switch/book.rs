//! The idempotency book: which ISO 8583 identities the switch has seen and what became
//! of them. It decides, under one lock, whether a request is new (submit it), a
//! retransmission (answer what the first one got), or must wait for an outcome.
//!
//! Rules (docs/switch.md, "Idempotency and reversals"):
//! - A payment's transaction id is [`payment_id`] of its key; a reversal's is
//!   [`reversal_id`] of the *original's* key, so two reversals of one payment can never
//!   both post, even at the engine.
//! - Two different keys with one id (a 64-bit hash collision) never share a posting:
//!   the second is declined `96` and nothing is submitted.
//! - A reversal whose original never arrived leaves a tombstone on the original's id;
//!   the original, arriving late, is declined `94` (its identity is used up) and never
//!   posts.
//! - The book holds at most [`BOOK_ENTRIES_MAX`] entries; the oldest decided ones are
//!   forgotten first. After a restart the committed payments and reversals are known
//!   again from the ledgers' postings ([`Book::with_history`]).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tricommit_engine::proto::TxnId;

use super::rules::{code, Key, Payment};

/// The most entries the book keeps (about 100 bytes each).
pub const BOOK_ENTRIES_MAX: usize = 1 << 22;
/// The top bit of a transaction id marks a reversal.
pub const REVERSAL_ID_BIT: u64 = 1 << 63;

/// The transaction id of the payment with key `key`: a stable 64-bit hash (FNV-1a over
/// the key's 24 bytes, then the SplitMix64 finaliser), top bit clear, never 0.
pub fn payment_id(key: &Key) -> TxnId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = key.terminal.iter().chain(&key.stan).chain(&key.transmitted);
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    TxnId((hash & !REVERSAL_ID_BIT).max(1))
}

/// The transaction id of the reversal of the payment with key `original`.
pub fn reversal_id(original: &Key) -> TxnId {
    TxnId(payment_id(original).0 | REVERSAL_ID_BIT)
}

/// What became of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Submitted; the outcome is not known yet.
    Pending,
    /// Committed (`00`).
    Approved,
    /// Aborted or refused with this code; nothing was posted.
    Declined(&'static [u8; 2]),
    /// The switch stopped waiting before the engine answered (`91` was sent); the
    /// payment may still commit, so a reversal of it is refused with `91` until known.
    Unknown,
}

/// Whether a payment was reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reversed {
    No,
    /// A compensating transaction is in flight.
    InFlight,
    /// Compensated, or nothing needed compensating.
    Yes,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    /// `None` for a tombstone: a reversal arrived first and used up this identity.
    payment: Option<Payment>,
    status: Status,
    reversed: Reversed,
}

/// What to do with a 0200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStep {
    /// New: submit it with this id; report the outcome with [`Book::decide`].
    Submit(TxnId),
    /// Already decided: answer this code (with this id for field 38).
    Answer(&'static [u8; 2], TxnId),
    /// The first transmission is in flight: wait, then ask again.
    Wait,
}

/// What to do with a 0420.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalStep {
    /// Post the compensating transaction of this payment with this id; report with
    /// [`Book::reversal_done`].
    Compensate(TxnId, Payment),
    /// Answer this code; nothing (more) to post.
    Answer(&'static [u8; 2]),
    /// The original, or another reversal of it, is in flight: wait, then ask again.
    Wait,
}

/// What a 0200 gets when its id is already in the book.
fn existing(entry: &Entry, payment: &Payment, id: TxnId) -> PaymentStep {
    if entry.key != payment.key {
        return PaymentStep::Answer(code::MALFUNCTION, id);
    }
    match (entry.payment, entry.status) {
        (None, _) => PaymentStep::Answer(code::DUPLICATE, id),
        (Some(first), _) if first != *payment => PaymentStep::Answer(code::DUPLICATE, id),
        (_, Status::Pending) => PaymentStep::Wait,
        (_, Status::Approved) => PaymentStep::Answer(code::APPROVED, id),
        (_, Status::Declined(code)) => PaymentStep::Answer(code, id),
        (_, Status::Unknown) => PaymentStep::Answer(code::UNAVAILABLE, id),
    }
}

/// Payments and reversals the ledgers already hold, read from their postings at start.
#[derive(Debug, Default)]
pub struct History {
    /// Committed payments by id, as the ledgers saw them (accounts, not PAN/merchant).
    pub payments: HashMap<u64, Payment>,
    /// Ids of payments whose reversal committed.
    pub reversed: HashSet<u64>,
}

struct State {
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    history: History,
    waiters: usize,
}

/// The book, shared by every connection.
pub struct Book {
    state: Mutex<State>,
    decided: Condvar,
}

impl Book {
    pub fn with_history(history: History) -> Book {
        Book {
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: VecDeque::new(),
                history,
                waiters: 0,
            }),
            decided: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent entries (each
        // update is one assignment), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Decides what a 0200 with this payment becomes.
    pub fn payment(&self, payment: &Payment) -> PaymentStep {
        let id = payment_id(&payment.key);
        let mut guard = self.lock();
        let state = &mut *guard;
        // One probe of the map for the common case, a new identity.
        let vacant = match state.entries.entry(id.0) {
            MapEntry::Occupied(occupied) => return existing(occupied.get(), payment, id),
            MapEntry::Vacant(vacant) => vacant,
        };
        let (status, step) = match state.history.payments.contains_key(&id.0) {
            true => (Status::Approved, PaymentStep::Answer(code::APPROVED, id)),
            false => (Status::Pending, PaymentStep::Submit(id)),
        };
        let reversed = match state.history.reversed.contains(&id.0) {
            true => Reversed::Yes,
            false => Reversed::No,
        };
        vacant.insert(Entry {
            key: payment.key,
            payment: Some(*payment),
            status,
            reversed,
        });
        state.remember(id.0);
        step
    }

    /// Records a submitted payment's outcome (or `forget` it: it was never submitted,
    /// so a retransmission may try again).
    pub fn decide(&self, id: TxnId, status: Status, forget: bool) {
        let mut state = self.lock();
        if forget {
            state.entries.remove(&id.0);
        } else if let Some(entry) = state.entries.get_mut(&id.0) {
            entry.status = status;
        }
        if state.waiters > 0 {
            self.decided.notify_all();
        }
    }

    /// Decides what a 0420 reversing the payment with key `original` becomes.
    pub fn reversal(&self, original: &Key) -> ReversalStep {
        let id = payment_id(original);
        let mut state = self.lock();
        let known = state.history.payments.get(&id.0).copied();
        let reversed_before = state.history.reversed.contains(&id.0);
        let fresh = !state.entries.contains_key(&id.0);
        let entry = state.entries.entry(id.0).or_insert_with(|| Entry {
            key: *original,
            payment: known,
            status: if known.is_some() {
                Status::Approved
            } else {
                Status::Declined(code::DUPLICATE)
            },
            reversed: if known.is_none() || reversed_before {
                Reversed::Yes
            } else {
                Reversed::No
            },
        });
        if entry.key != *original {
            return ReversalStep::Answer(code::MALFUNCTION);
        }
        let step = match (entry.status, entry.reversed, entry.payment) {
            (_, Reversed::Yes, _) => ReversalStep::Answer(code::APPROVED),
            (Status::Pending, _, _) | (_, Reversed::InFlight, _) => ReversalStep::Wait,
            (Status::Unknown, _, _) => ReversalStep::Answer(code::UNAVAILABLE),
            (Status::Declined(_), _, _) | (_, _, None) => {
                entry.reversed = Reversed::Yes;
                ReversalStep::Answer(code::APPROVED)
            }
            (Status::Approved, Reversed::No, Some(payment)) => {
                entry.reversed = Reversed::InFlight;
                ReversalStep::Compensate(reversal_id(original), payment)
            }
        };
        if fresh {
            state.remember(id.0);
        }
        step
    }

    /// Records whether the compensating transaction of `original` committed.
    pub fn reversal_done(&self, original: &Key, committed: bool) {
        let id = payment_id(original);
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(&id.0) {
            entry.reversed = if committed {
                Reversed::Yes
            } else {
                Reversed::No
            };
        }
        if state.waiters > 0 {
            self.decided.notify_all();
        }
    }

    /// Waits until some outcome is recorded, or `deadline` passes (then `false`).
    pub fn wait(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        state.waiters += 1;
        let (mut state, result) = self
            .decided
            .wait_timeout(state, left.min(WAIT_SLICE))
            .unwrap_or_else(|poison| poison.into_inner());
        state.waiters -= 1;
        !result.timed_out() || Instant::now() < deadline
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// One wait on the condition variable: short, so that a missed wake-up costs little.
const WAIT_SLICE: Duration = Duration::from_millis(50);

impl State {
    /// Adds `id` to the age order and forgets the oldest decided entries over the bound.
    fn remember(&mut self, id: u64) {
        self.order.push_back(id);
        while self.entries.len() > BOOK_ENTRIES_MAX {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            let busy = self.entries.get(&oldest).is_some_and(|entry| {
                entry.status == Status::Pending || entry.reversed == Reversed::InFlight
            });
            if busy {
                // Still in flight: keep it and stop; the bound is exceeded only by the
                // requests in flight, which the connection limits bound.
                self.order.push_front(oldest);
                break;
            }
            self.entries.remove(&oldest);
        }
        // `order` may hold ids already forgotten by `decide(.., forget)`; it is trimmed
        // with the entries, so it stays within twice the bound.
        while self.order.len() > 2 * BOOK_ENTRIES_MAX {
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stan: &[u8; 6]) -> Key {
        Key {
            terminal: *b"TERM0001",
            stan: *stan,
            transmitted: *b"1204161500",
        }
    }

    fn payment(stan: &[u8; 6], amount: u64) -> Payment {
        Payment {
            key: key(stan),
            pan: 4111111111111111,
            merchant: 42,
            amount,
            fee: 0,
            processing: *b"000000",
        }
    }

    // A new payment is submitted once; while it is pending a retransmission waits, and
    // after it is decided a retransmission gets the same code, a changed one gets 94.
    #[test]
    fn retransmissions() {
        let book = Book::with_history(History::default());
        let first = payment(b"000001", 100);
        let PaymentStep::Submit(id) = book.payment(&first) else {
            panic!("a new payment is submitted");
        };
        assert_eq!(id, payment_id(&first.key));
        assert_eq!(book.payment(&first), PaymentStep::Wait);
        book.decide(id, Status::Approved, false);
        assert_eq!(
            book.payment(&first),
            PaymentStep::Answer(code::APPROVED, id)
        );
        let changed = payment(b"000001", 101);
        assert_eq!(
            book.payment(&changed),
            PaymentStep::Answer(code::DUPLICATE, id)
        );
    }

    // A payment the engine never took is forgotten, so its retransmission is submitted.
    #[test]
    fn busy_payment_is_forgotten() {
        let book = Book::with_history(History::default());
        let first = payment(b"000002", 100);
        let PaymentStep::Submit(id) = book.payment(&first) else {
            panic!("submitted");
        };
        book.decide(id, Status::Declined(code::UNAVAILABLE), true);
        assert_eq!(book.payment(&first), PaymentStep::Submit(id));
    }

    // Two keys with one transaction id (a hash collision) never share a posting: the
    // second is answered 96 and not submitted, for a payment and for a reversal.
    #[test]
    fn collision_is_refused() {
        let book = Book::with_history(History::default());
        let victim = payment(b"000003", 100);
        let id = payment_id(&victim.key);
        let other = key(b"999999");
        book.lock().entries.insert(
            id.0,
            Entry {
                key: other,
                payment: Some(payment(b"999999", 5)),
                status: Status::Approved,
                reversed: Reversed::No,
            },
        );
        assert_eq!(
            book.payment(&victim),
            PaymentStep::Answer(code::MALFUNCTION, id)
        );
        assert_eq!(
            book.reversal(&victim.key),
            ReversalStep::Answer(code::MALFUNCTION)
        );
    }

    // A reversal before its original leaves a tombstone: the late original is declined
    // 94 and never submitted; a second reversal is accepted without posting.
    #[test]
    fn reversal_before_original() {
        let book = Book::with_history(History::default());
        let late = payment(b"000004", 100);
        assert_eq!(
            book.reversal(&late.key),
            ReversalStep::Answer(code::APPROVED)
        );
        let id = payment_id(&late.key);
        assert_eq!(
            book.payment(&late),
            PaymentStep::Answer(code::DUPLICATE, id)
        );
        assert_eq!(
            book.reversal(&late.key),
            ReversalStep::Answer(code::APPROVED)
        );
    }

    // An approved payment is compensated once: while the compensation is in flight a
    // second reversal waits; after it commits, reversals are answered without posting;
    // after it fails, the next reversal compensates again.
    #[test]
    fn reversal_compensates_once() {
        let book = Book::with_history(History::default());
        let paid = payment(b"000005", 100);
        let PaymentStep::Submit(id) = book.payment(&paid) else {
            panic!("submitted");
        };
        assert_eq!(book.reversal(&paid.key), ReversalStep::Wait);
        book.decide(id, Status::Approved, false);
        let compensate = ReversalStep::Compensate(reversal_id(&paid.key), paid);
        assert_eq!(book.reversal(&paid.key), compensate);
        assert_eq!(book.reversal(&paid.key), ReversalStep::Wait);
        book.reversal_done(&paid.key, false);
        assert_eq!(book.reversal(&paid.key), compensate);
        book.reversal_done(&paid.key, true);
        assert_eq!(
            book.reversal(&paid.key),
            ReversalStep::Answer(code::APPROVED)
        );
        assert_ne!(reversal_id(&paid.key), id);
    }

    // After a restart, a payment the ledgers hold is answered 00 without a new
    // posting, and its reversal compensates it from the recorded legs.
    #[test]
    fn history_survives_restart() {
        let paid = payment(b"000006", 100);
        let id = payment_id(&paid.key);
        let mut history = History::default();
        history.payments.insert(id.0, paid);
        let book = Book::with_history(history);
        assert_eq!(book.payment(&paid), PaymentStep::Answer(code::APPROVED, id));
        let other = Book::with_history(History {
            payments: [(id.0, paid)].into(),
            reversed: HashSet::new(),
        });
        assert_eq!(
            other.reversal(&paid.key),
            ReversalStep::Compensate(reversal_id(&paid.key), paid)
        );
    }

    // The id is stable (a restart computes the same one) and keys differing in any
    // part get different ids.
    #[test]
    fn ids_are_stable_and_spread() {
        let base = key(b"000001");
        assert_eq!(payment_id(&base), payment_id(&key(b"000001")));
        let mut other = base;
        other.terminal[7] = b'2';
        assert_ne!(payment_id(&base), payment_id(&other));
        let mut later = base;
        later.transmitted[9] = b'1';
        assert_ne!(payment_id(&base), payment_id(&later));
        assert_eq!(payment_id(&base).0 & REVERSAL_ID_BIT, 0);
        assert_ne!(reversal_id(&base).0 & REVERSAL_ID_BIT, 0);
    }
}
