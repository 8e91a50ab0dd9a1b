//! Admission: whether a submission enters the engine, with priority classes.
//!
//! Why here and not at the intake queue: a full queue can only say "no" to everybody.
//! Counting admitted-and-unfinished transactions lets load be shed by class: over the
//! high-water mark [`Priority::Normal`] submissions get [`Busy`] first, while
//! [`Priority::High`] ones still enter until the hard capacity. An admitted transaction
//! always finds room in the intake queue, because that queue is at least as large as
//! the hard capacity (checked at compile time in [`bounds`](super::bounds)).
//!
//! The count is one atomic: `fetch_add`, and `fetch_sub` again when over the limit. There
//! is no retry loop. Two racing submitters at the boundary can both see the count over
//! the limit for an instant and both get `Busy`; none is ever admitted over the limit.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::bounds::{COMPLETION_SLOTS_PER_TXN, INTAKE_HIGH_WATER_TXNS, INTAKE_TXNS_MAX};
use super::ticket::{AbortReason, CompletionId, Completions, Outcome, Ticket, TicketError};

/// A submission's class when the engine is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// Still admitted above the high-water mark, until the hard capacity.
    High,
    /// Refused with `Busy` above the high-water mark.
    #[default]
    Normal,
}

/// Why a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusyReason {
    /// A `Normal` submission found the intake above its high-water mark.
    HighWater,
    /// The intake is at its hard capacity.
    Capacity,
    /// Every completion slot is held (clients are slow to consume their tickets).
    Tickets,
}

/// The engine is too loaded to take this transaction now. It comes back untouched, as
/// with crossbeam's `TrySendError::Full(T)`: retry later, or shed it.
pub struct Busy<T> {
    txn: T,
    reason: BusyReason,
}

impl<T> Busy<T> {
    /// Refuses `txn` for `reason` (a network client relaying its node's refusal).
    pub fn new(txn: T, reason: BusyReason) -> Busy<T> {
        Busy { txn, reason }
    }

    /// The transaction that was not submitted.
    pub fn into_inner(self) -> T {
        self.txn
    }

    /// Why it was refused.
    pub fn reason(&self) -> BusyReason {
        self.reason
    }
}

// By hand, so that `T` needs no `Debug`.
impl<T> fmt::Debug for Busy<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Busy")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Busy<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            BusyReason::HighWater => {
                formatter.write_str("engine busy: intake over its high-water mark")
            }
            BusyReason::Capacity => formatter.write_str("engine busy: intake at capacity"),
            BusyReason::Tickets => {
                formatter.write_str("engine busy: every completion slot is held")
            }
        }
    }
}

impl<T> std::error::Error for Busy<T> {}

/// Limits that are out of their bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "intake limits: need 1 <= high_water_txns ({high_water_txns}) <= capacity_txns \
         ({capacity_txns}) <= {INTAKE_TXNS_MAX}"
    )]
    Limits {
        high_water_txns: usize,
        capacity_txns: usize,
    },
    #[error(transparent)]
    Ticket(#[from] TicketError),
}

/// The intake limits: the high-water mark for `Normal` and the hard capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    high_water_txns: usize,
    capacity_txns: usize,
}

impl AdmissionLimits {
    /// Checks `1 <= high_water_txns <= capacity_txns <= INTAKE_TXNS_MAX`.
    pub fn new(high_water_txns: usize, capacity_txns: usize) -> Result<Self, AdmissionError> {
        let ordered = 1 <= high_water_txns && high_water_txns <= capacity_txns;
        if !ordered || capacity_txns > INTAKE_TXNS_MAX {
            return Err(AdmissionError::Limits {
                high_water_txns,
                capacity_txns,
            });
        }
        Ok(Self {
            high_water_txns,
            capacity_txns,
        })
    }

    fn limit_for(&self, priority: Priority) -> (usize, BusyReason) {
        match priority {
            Priority::High => (self.capacity_txns, BusyReason::Capacity),
            Priority::Normal => (self.high_water_txns, BusyReason::HighWater),
        }
    }
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            high_water_txns: INTAKE_HIGH_WATER_TXNS,
            capacity_txns: INTAKE_TXNS_MAX,
        }
    }
}

/// A transaction that passed admission, with the client's ticket and the engine's id.
#[derive(Debug)]
pub struct Admitted<T> {
    pub txn: T,
    pub ticket: Ticket,
    pub completion: CompletionId,
}

/// Places reserved in the count by [`Admission::reserve`], taken one by one.
#[derive(Debug)]
#[must_use = "release the places that were not taken"]
pub struct Reservation {
    /// The count the reservation found.
    before: usize,
    places: usize,
    taken: usize,
}

impl Reservation {
    /// A reservation of no places, spent from the start.
    pub fn none() -> Reservation {
        Reservation {
            before: 0,
            places: 0,
            taken: 0,
        }
    }

    /// Whether every place was taken.
    pub fn is_spent(&self) -> bool {
        self.taken == self.places
    }
}

/// Counts admitted, unfinished transactions and issues their tickets.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    in_flight_txns: AtomicUsize,
    completions: Arc<Completions>,
}

impl Admission {
    /// An admission gate with `limits` and a completion slab sized for them.
    pub fn new(limits: AdmissionLimits) -> Result<Self, AdmissionError> {
        let completions = Completions::new(limits.capacity_txns * COMPLETION_SLOTS_PER_TXN)?;
        Ok(Self {
            limits,
            in_flight_txns: AtomicUsize::new(0),
            completions,
        })
    }

    /// Admits `txn` if its class is under its limit and a ticket slot is free; otherwise
    /// hands it back in [`Busy`].
    pub fn admit<T>(&self, txn: T, priority: Priority) -> Result<Admitted<T>, Busy<T>> {
        // One place reserved and taken: judged exactly as a place of a group is.
        let mut reservation = self.reserve(1, priority);
        if let Err(reason) = self.take(&mut reservation, priority) {
            self.release(reservation);
            return Err(Busy { txn, reason });
        }
        let issued = self.issue();
        if issued.is_none() {
            self.untake(&mut reservation);
        }
        self.release(reservation);
        match issued {
            Some((ticket, completion)) => Ok(Admitted {
                txn,
                ticket,
                completion,
            }),
            None => Err(Busy {
                txn,
                reason: BusyReason::Tickets,
            }),
        }
    }

    /// Reserves up to `places` places in one update of the count (the group path of
    /// `Engine::submit_many`), for submissions of class `highest` at most: places over
    /// that class's limit are given back at once, as [`admit`](Self::admit) gives back
    /// a refused one, so the count passes a limit only for that instant. Each place is
    /// judged again when it is taken ([`take`](Self::take)), by the class of the
    /// submission taking it; give back what was not taken with
    /// [`release`](Self::release). While the places are held, a racing submitter of a
    /// lower class may be refused although the group will not use them all.
    pub fn reserve(&self, places: usize, highest: Priority) -> Reservation {
        let (limit, _) = self.limits.limit_for(highest);
        let wanted = places.min(limit);
        if wanted == 0 {
            return Reservation::none();
        }
        let before = self.in_flight_txns.fetch_add(wanted, Ordering::AcqRel);
        let usable = wanted.min(limit.saturating_sub(before));
        if usable < wanted {
            self.in_flight_txns
                .fetch_sub(wanted - usable, Ordering::AcqRel);
        }
        Reservation {
            before,
            places: usable,
            taken: 0,
        }
    }

    /// Takes the next place of `reservation` for a submission of class `priority`, as
    /// [`admit`](Self::admit) would admit one: the `m`th place of a reservation that
    /// found the count at `before` is only admitted under its class's limit when
    /// `before + m` is, so nothing is ever admitted over a limit. With no place left it
    /// refuses for the class's reason; a caller with more to submit reserves again
    /// first ([`Reservation::is_spent`]).
    pub fn take(
        &self,
        reservation: &mut Reservation,
        priority: Priority,
    ) -> Result<(), BusyReason> {
        let (limit, reason) = self.limits.limit_for(priority);
        if reservation.is_spent() || reservation.before + reservation.taken >= limit {
            return Err(reason);
        }
        reservation.taken += 1;
        Ok(())
    }

    /// A ticket for a place taken from a reservation; `None` when every completion slot
    /// is held (then give the place back with [`untake`](Self::untake)).
    pub fn issue(&self) -> Option<(Ticket, CompletionId)> {
        self.completions.issue()
    }

    /// Gives back the place last taken from `reservation`, which got no ticket.
    pub fn untake(&self, reservation: &mut Reservation) {
        reservation.taken = reservation.taken.saturating_sub(1);
    }

    /// Gives back the places of `reservation` that were not taken.
    pub fn release(&self, reservation: Reservation) {
        let unused = reservation.places - reservation.taken;
        if unused > 0 {
            self.in_flight_txns.fetch_sub(unused, Ordering::AcqRel);
        }
    }

    /// Completes an admitted transaction: wakes its ticket and frees its place in the
    /// intake. A stale id changes nothing and is reported.
    pub fn complete(&self, completion: CompletionId, outcome: Outcome) -> Result<(), TicketError> {
        self.completions.complete(completion, outcome)?;
        self.in_flight_txns.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }

    /// Completes a chunk of tickets with one outcome and returns how many were still
    /// pending. The in-flight count drops once for the chunk: the completion stage
    /// completes whole chunks, and a contended decrement per ticket showed in profiles.
    pub fn complete_chunk(&self, completions: &[CompletionId], outcome: Outcome) -> usize {
        let completed = completions
            .iter()
            .filter(|&&completion| self.completions.complete(completion, outcome).is_ok())
            .count();
        self.in_flight_txns.fetch_sub(completed, Ordering::AcqRel);
        completed
    }

    /// Undoes an admission whose transaction never entered the pipeline (the intake
    /// queue refused it) and returns the transaction.
    pub fn cancel<T>(&self, admitted: Admitted<T>) -> T {
        let Admitted {
            txn,
            ticket,
            completion,
        } = admitted;
        drop(ticket);
        // Nobody listens any more; the outcome only releases the slot and the count.
        let _ = self.complete(completion, Outcome::Aborted(AbortReason::Shutdown));
        txn
    }

    /// Completes every admitted, unfinished transaction with `outcome` (at shutdown) and
    /// returns how many there were.
    pub fn complete_all_pending(&self, outcome: Outcome) -> usize {
        let completed = self.completions.complete_all_pending(outcome);
        self.in_flight_txns.fetch_sub(completed, Ordering::AcqRel);
        completed
    }

    /// Admitted transactions not yet completed.
    pub fn in_flight_txns(&self) -> usize {
        self.in_flight_txns.load(Ordering::Relaxed)
    }

    /// The limits in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Ticket slots that neither a client nor the engine holds.
    pub fn ticket_slots_free(&self) -> usize {
        self.completions.slots_free()
    }

    /// Ticket slots in all.
    pub fn ticket_slots_total(&self) -> usize {
        self.completions.slots_total()
    }
}
