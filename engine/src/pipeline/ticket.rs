//! Tickets: how a client waits for the outcome of one submitted transaction.
//!
//! # Why a slab of slots
//!
//! The obvious ticket is an `Arc<oneshot>` per transaction: one allocation and one free
//! per payment, on the hot path, from many client threads at once. Instead, the engine
//! owns a fixed slab of completion slots ([`Completions`], sized by
//! [`COMPLETION_SLOTS_MAX`]) and a lock-free free list of their indices. A ticket is an
//! `Arc` clone of the slab plus a `(index, generation)` pair: no allocation. The engine
//! carries only the plain, `Copy` [`CompletionId`] through its batches.
//!
//! # Slot lifecycle and its invariants
//!
//! A slot has two holders: the client's [`Ticket`] and the engine (through the
//! [`CompletionId`]). It returns to the free list only when both have let go: the engine
//! by completing it, the ticket by consuming the outcome or being dropped. Each return
//! bumps the slot's generation, so a stale or duplicated `CompletionId` is refused with
//! [`TicketError::Stale`] instead of completing somebody else's ticket.
//!
//! Every slot is guarded by its own `Mutex`. Correctness first: the state is four small
//! fields that change together (outcome, waiter, two holder flags), and an uncontended
//! futex lock costs tens of nanoseconds, small beside a WAL sync. Wakers are called
//! after the lock is released.
//!
//! # Waiting
//!
//! [`Ticket::wait`] parks the calling thread (no spinning: a client may wait for
//! milliseconds). `Ticket` is also a `Future`; it stores the task's `Waker` and needs no
//! runtime. Both register a waiter in the slot under its lock, and the engine takes it
//! under the same lock when it completes, so a completion can never slip between the
//! check and the registration.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::bounds::COMPLETION_SLOTS_MAX;
use crate::proto::Reason;

/// The outcome of one transaction, as the client learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Committed on every participant, durably.
    Committed,
    /// Aborted on every participant.
    Aborted(AbortReason),
    /// The engine stopped before this process learned the outcome (for example, it shut
    /// down after a fatal I/O error with the transaction prepared). The transaction may
    /// still commit during recovery: ask again, by id, after reopening.
    InDoubt,
}

/// Why a transaction aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// A participant voted no, for this reason (a timeout becomes `Reason::TIMEOUT`).
    Rejected(Reason),
    /// The E3PC termination protocol decided abort after a failure.
    Terminated,
    /// The engine shut down before the transaction entered the protocol.
    Shutdown,
}

/// Misuse of the completion slab, reported instead of corrupting another ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("completion slot count {slots} is outside 1..={COMPLETION_SLOTS_MAX}")]
    SlotCount { slots: usize },
    #[error("completion {0:?} is stale: it was already completed, or never issued here")]
    Stale(CompletionId),
}

/// The engine's handle on one ticket's slot: plain data, carried through the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompletionId {
    index: u32,
    generation: u32,
}

/// Who waits on a slot.
#[derive(Debug)]
enum Waiter {
    Nobody,
    Thread(Thread),
    Task(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Nobody => {}
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Task(waker) => waker.wake(),
        }
    }
}

/// One slot. Invariants: `outcome.is_some()` implies `!engine_holds`; a slot is on the
/// free list exactly when neither flag is set.
#[derive(Debug)]
struct SlotState {
    generation: u32,
    outcome: Option<Outcome>,
    waiter: Waiter,
    ticket_holds: bool,
    engine_holds: bool,
}

/// The slab of completion slots, shared by the engine and every ticket.
#[derive(Debug)]
pub struct Completions {
    slots: Box<[Mutex<SlotState>]>,
    /// Indices of the slots that neither a ticket nor the engine holds.
    free: ArrayQueue<u32>,
}

impl Completions {
    /// A slab of `slots` completion slots, all free.
    pub fn new(slots: usize) -> Result<Arc<Self>, TicketError> {
        if slots == 0 || slots > COMPLETION_SLOTS_MAX {
            return Err(TicketError::SlotCount { slots });
        }
        let free = ArrayQueue::new(slots);
        let states = (0..slots)
            .map(|_| {
                Mutex::new(SlotState {
                    generation: 0,
                    outcome: None,
                    waiter: Waiter::Nobody,
                    ticket_holds: false,
                    engine_holds: false,
                })
            })
            .collect();
        for index in 0..slots {
            // `slots <= COMPLETION_SLOTS_MAX <= u32::MAX` (checked above and in bounds)
            // and the queue has room for every index.
            let _ = free.push(index as u32);
        }
        Ok(Arc::new(Self {
            slots: states,
            free,
        }))
    }

    /// Takes a free slot: a ticket for the client and its id for the engine. `None` when
    /// every slot is held (the caller answers `Busy`).
    pub fn issue(self: &Arc<Self>) -> Option<(Ticket, CompletionId)> {
        let index = self.free.pop()?;
        let mut slot = self.lock(index)?;
        debug_assert!(!slot.ticket_holds && !slot.engine_holds && slot.outcome.is_none());
        slot.ticket_holds = true;
        slot.engine_holds = true;
        let id = CompletionId {
            index,
            generation: slot.generation,
        };
        drop(slot);
        let ticket = Ticket {
            state: TicketState::Pending {
                slab: self.clone(),
                id,
            },
        };
        Some((ticket, id))
    }

    /// Completes the ticket behind `id` with `outcome` and wakes its waiter. Refuses a
    /// stale id (already completed, or from another slab) with [`TicketError::Stale`].
    pub fn complete(&self, id: CompletionId, outcome: Outcome) -> Result<(), TicketError> {
        let mut slot = self.lock(id.index).ok_or(TicketError::Stale(id))?;
        if slot.generation != id.generation || !slot.engine_holds {
            return Err(TicketError::Stale(id));
        }
        slot.engine_holds = false;
        slot.outcome = Some(outcome);
        let waiter = std::mem::replace(&mut slot.waiter, Waiter::Nobody);
        let free = !slot.ticket_holds;
        if free {
            Self::recycle(&mut slot);
        }
        drop(slot);
        if free {
            let _ = self.free.push(id.index);
        }
        waiter.wake();
        Ok(())
    }

    /// Completes every ticket the engine still holds with `outcome`, and returns how
    /// many. For shutdown: no client is left waiting forever.
    pub fn complete_all_pending(&self, outcome: Outcome) -> usize {
        let mut completed = 0;
        for index in 0..self.slots.len() {
            let Some(slot) = self.lock_index(index) else {
                continue;
            };
            let generation = slot.generation;
            let pending = slot.engine_holds;
            drop(slot);
            if pending {
                let index = index as u32;
                let id = CompletionId { index, generation };
                completed += usize::from(self.complete(id, outcome).is_ok());
            }
        }
        completed
    }

    /// Slots neither a ticket nor the engine holds.
    pub fn slots_free(&self) -> usize {
        self.free.len()
    }

    /// Total slots.
    pub fn slots_total(&self) -> usize {
        self.slots.len()
    }

    /// The ticket side: takes the outcome if there is one (releasing the ticket's hold),
    /// otherwise lets `register` install a waiter. Called under the slot's lock.
    fn take_or_register(
        &self,
        id: CompletionId,
        register: impl FnOnce(&mut Waiter),
    ) -> Option<Outcome> {
        let Some(mut slot) = self.lock(id.index) else {
            return Some(Outcome::InDoubt);
        };
        if slot.generation != id.generation || !slot.ticket_holds {
            // A ticket holds its slot until it lets go, so this is never seen.
            debug_assert!(false, "ticket {id:?} lost its slot");
            return Some(Outcome::InDoubt);
        }
        let Some(outcome) = slot.outcome else {
            register(&mut slot.waiter);
            return None;
        };
        self.release_ticket_hold(id, slot);
        Some(outcome)
    }

    /// The ticket lets go of its slot (it consumed the outcome, or was dropped).
    fn release_ticket(&self, id: CompletionId) {
        let Some(slot) = self.lock(id.index) else {
            return;
        };
        if slot.generation == id.generation && slot.ticket_holds {
            self.release_ticket_hold(id, slot);
        }
    }

    fn release_ticket_hold(&self, id: CompletionId, mut slot: MutexGuard<'_, SlotState>) {
        slot.ticket_holds = false;
        slot.waiter = Waiter::Nobody;
        let free = !slot.engine_holds;
        if free {
            Self::recycle(&mut slot);
        }
        drop(slot);
        if free {
            let _ = self.free.push(id.index);
        }
    }

    /// Resets a slot that nobody holds and bumps its generation, so that old ids fail.
    fn recycle(slot: &mut SlotState) {
        slot.generation = slot.generation.wrapping_add(1);
        slot.outcome = None;
        slot.waiter = Waiter::Nobody;
    }

    fn lock(&self, index: u32) -> Option<MutexGuard<'_, SlotState>> {
        self.lock_index(usize::try_from(index).ok()?)
    }

    /// Locks a slot; a poisoned lock is still consistent (no code panics while holding
    /// it), so the guard is used as is.
    fn lock_index(&self, index: usize) -> Option<MutexGuard<'_, SlotState>> {
        let slot = self.slots.get(index)?;
        Some(slot.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A client's claim on the outcome of one submitted transaction.
///
/// Wait for it with [`wait`](Ticket::wait) (blocking) or `.await` it (any executor).
/// Dropping it is fine: the engine still decides the transaction, nobody listens.
#[derive(Debug)]
#[must_use = "a ticket is the only way to learn the transaction's outcome"]
pub struct Ticket {
    state: TicketState,
}

#[derive(Debug)]
enum TicketState {
    Pending {
        slab: Arc<Completions>,
        id: CompletionId,
    },
    Done(Outcome),
}

impl Ticket {
    /// A ticket whose outcome is already known (a duplicate submission of a decided
    /// transaction, for example). It holds no slot.
    pub fn ready(outcome: Outcome) -> Self {
        Self {
            state: TicketState::Done(outcome),
        }
    }

    /// The outcome, if it is known yet; never blocks.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        self.poll_slot(|_| {})
    }

    /// Blocks (parked, not spinning) until the outcome is known.
    pub fn wait(mut self) -> Outcome {
        let current = thread::current();
        loop {
            if let Some(outcome) = self.poll_slot(|waiter| register_thread(waiter, &current)) {
                return outcome;
            }
            thread::park();
        }
    }

    /// Blocks until the outcome is known or `timeout` passes; on timeout the ticket comes
    /// back so that the caller can wait again.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Outcome, Ticket> {
        let current = thread::current();
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(outcome) = self.poll_slot(|waiter| register_thread(waiter, &current)) {
                return Ok(outcome);
            }
            let left =
                deadline.and_then(|deadline| deadline.checked_duration_since(Instant::now()));
            match left {
                Some(left) if !left.is_zero() => thread::park_timeout(left),
                _ if deadline.is_none() => thread::park(),
                _ => return Err(self),
            }
        }
    }

    /// Takes the outcome if known (and then remembers it), else registers a waiter.
    fn poll_slot(&mut self, register: impl FnOnce(&mut Waiter)) -> Option<Outcome> {
        let outcome = match &self.state {
            TicketState::Done(outcome) => return Some(*outcome),
            TicketState::Pending { slab, id } => slab.take_or_register(*id, register)?,
        };
        // The slab already released the ticket's hold; forget the slot without
        // releasing it again.
        self.state = TicketState::Done(outcome);
        Some(outcome)
    }
}

fn register_thread(waiter: &mut Waiter, current: &Thread) {
    if !matches!(waiter, Waiter::Thread(thread) if thread.id() == current.id()) {
        *waiter = Waiter::Thread(current.clone());
    }
}

fn register_task(waiter: &mut Waiter, waker: &Waker) {
    if !matches!(waiter, Waiter::Task(registered) if registered.will_wake(waker)) {
        *waiter = Waiter::Task(waker.clone());
    }
}

impl Future for Ticket {
    type Output = Outcome;

    /// Ready with the outcome once the engine completed the ticket; otherwise stores the
    /// task's waker (replacing the previous one unless it would wake the same task).
    /// Polling again after `Ready` returns the same outcome.
    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Outcome> {
        let ticket = self.get_mut();
        match ticket.poll_slot(|waiter| register_task(waiter, context.waker())) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let TicketState::Pending { slab, id } = &self.state {
            slab.release_ticket(*id);
        }
    }
}
