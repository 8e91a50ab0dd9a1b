//! Tests of tickets (blocking and as a `Future`) and of priority admission.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use tricommit_engine::pipeline::admission::AdmissionError;
use tricommit_engine::pipeline::{
    AbortReason, Admission, AdmissionLimits, BusyReason, Completions, Outcome, Priority,
    Reservation, Ticket, TicketError,
};
use tricommit_engine::proto::Reason;

/// A waker that unparks the thread that runs the executor.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// The smallest executor: polls one future, parking the thread between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn rejected(code: u16) -> Outcome {
    Outcome::Aborted(AbortReason::Rejected(Reason(code)))
}

#[test]
fn wait_blocks_until_another_thread_completes_the_ticket() {
    // A client blocked in `wait` gets the outcome the engine completes from another
    // thread, and the slot goes back to the free list.
    let slab = Completions::new(4).expect("slab");
    let (ticket, id) = slab.issue().expect("free slot");
    let (started_sender, started_receiver) = std_mpsc::channel();
    let client = thread::spawn(move || {
        started_sender.send(()).expect("main thread alive");
        ticket.wait()
    });
    started_receiver.recv().expect("client started");
    slab.complete(id, Outcome::Committed).expect("fresh id");
    assert_eq!(client.join().expect("client panicked"), Outcome::Committed);
    assert_eq!(slab.slots_free(), 4);
}

#[test]
fn a_ticket_completed_before_it_is_awaited_is_ready_at_once() {
    // An outcome that arrives before anyone waits is kept, for `wait` and for `.await`.
    let slab = Completions::new(2).expect("slab");
    let (ticket, id) = slab.issue().expect("free slot");
    slab.complete(id, rejected(3)).expect("fresh id");
    assert_eq!(ticket.wait(), rejected(3));
    let (ticket, id) = slab.issue().expect("free slot");
    slab.complete(id, Outcome::Committed).expect("fresh id");
    assert_eq!(block_on(ticket), Outcome::Committed);
    assert_eq!(slab.slots_free(), 2);
}

#[test]
fn a_ticket_is_a_future_any_executor_can_drive() {
    // Awaited by a hand-written executor with a thread-park waker, two tickets in one
    // async block resolve to the outcomes another thread completes later.
    let slab = Completions::new(2).expect("slab");
    let (first, first_id) = slab.issue().expect("free slot");
    let (second, second_id) = slab.issue().expect("free slot");
    let engine = {
        let slab = slab.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            slab.complete(first_id, Outcome::InDoubt).expect("fresh id");
            thread::sleep(Duration::from_millis(5));
            slab.complete(second_id, Outcome::Committed)
                .expect("fresh id");
        })
    };
    let outcomes = block_on(async { (first.await, second.await) });
    assert_eq!(outcomes, (Outcome::InDoubt, Outcome::Committed));
    engine.join().expect("engine panicked");
}

#[test]
fn the_latest_waker_is_the_one_woken() {
    // A pending ticket stores the waker of its latest poll; completion wakes that one
    // exactly once and not the earlier one, and a poll after `Ready` repeats the outcome.
    let slab = Completions::new(1).expect("slab");
    let (ticket, id) = slab.issue().expect("free slot");
    let mut ticket = pin!(ticket);
    let (first, second) = (
        Arc::new(CountingWaker::default()),
        Arc::new(CountingWaker::default()),
    );
    let (first_waker, second_waker) = (Waker::from(first.clone()), Waker::from(second.clone()));
    let pending = ticket.as_mut().poll(&mut Context::from_waker(&first_waker));
    assert_eq!(pending, Poll::Pending);
    let pending = ticket
        .as_mut()
        .poll(&mut Context::from_waker(&second_waker));
    assert_eq!(pending, Poll::Pending);
    slab.complete(id, Outcome::Committed).expect("fresh id");
    assert_eq!(first.0.load(Ordering::SeqCst), 0);
    assert_eq!(second.0.load(Ordering::SeqCst), 1);
    let mut context = Context::from_waker(&second_waker);
    assert_eq!(
        ticket.as_mut().poll(&mut context),
        Poll::Ready(Outcome::Committed)
    );
    assert_eq!(
        ticket.as_mut().poll(&mut context),
        Poll::Ready(Outcome::Committed)
    );
}

#[test]
fn a_stale_completion_is_refused_and_changes_nothing() {
    // Completing twice, or completing an id whose slot was reused, fails with `Stale`
    // and does not touch the ticket that now owns the slot.
    let slab = Completions::new(1).expect("slab");
    let (ticket, old_id) = slab.issue().expect("free slot");
    slab.complete(old_id, Outcome::Committed).expect("fresh id");
    assert_eq!(
        slab.complete(old_id, rejected(1)),
        Err(TicketError::Stale(old_id))
    );
    assert_eq!(ticket.wait(), Outcome::Committed);
    let (mut ticket, new_id) = slab.issue().expect("the slot is free again");
    assert_ne!(new_id, old_id);
    assert_eq!(
        slab.complete(old_id, rejected(2)),
        Err(TicketError::Stale(old_id))
    );
    assert_eq!(ticket.try_outcome(), None);
    slab.complete(new_id, rejected(9)).expect("fresh id");
    assert_eq!(ticket.try_outcome(), Some(rejected(9)));
}

#[test]
fn a_dropped_ticket_frees_its_slot_once_completed() {
    // A ticket dropped before its outcome keeps the slot until the engine completes it,
    // then the slot is free; a full slab issues nothing.
    let slab = Completions::new(2).expect("slab");
    let (first, first_id) = slab.issue().expect("free slot");
    let (_second, _) = slab.issue().expect("free slot");
    assert!(slab.issue().is_none(), "a full slab issued a ticket");
    drop(first);
    assert_eq!(
        slab.slots_free(),
        0,
        "the engine still holds the dropped ticket's slot"
    );
    slab.complete(first_id, Outcome::Committed)
        .expect("fresh id");
    assert_eq!(slab.slots_free(), 1);
}

#[test]
fn wait_timeout_hands_the_ticket_back_and_shutdown_completes_the_rest() {
    // A timed wait returns the ticket when nothing happened; at shutdown every pending
    // ticket is completed, so no client waits forever.
    let slab = Completions::new(3).expect("slab");
    let (ticket, _) = slab.issue().expect("free slot");
    let (other, _) = slab.issue().expect("free slot");
    let ticket = ticket
        .wait_timeout(Duration::from_millis(1))
        .expect_err("nothing completed");
    let client = thread::spawn(move || other.wait());
    assert_eq!(slab.complete_all_pending(Outcome::InDoubt), 2);
    assert_eq!(client.join().expect("client panicked"), Outcome::InDoubt);
    assert_eq!(
        ticket.wait_timeout(Duration::from_secs(1)).ok(),
        Some(Outcome::InDoubt)
    );
    assert_eq!(slab.complete_all_pending(Outcome::Committed), 0);
    assert_eq!(slab.slots_free(), 3);
}

#[test]
fn many_clients_each_get_their_own_outcome() {
    // Four client threads wait on 10,000 tickets each while an engine thread completes
    // them in another order; every ticket gets exactly the outcome meant for it.
    const CLIENTS: usize = 4;
    const TICKETS_PER_CLIENT: usize = 10_000;
    let slab = Completions::new(CLIENTS * TICKETS_PER_CLIENT).expect("slab");
    let (id_sender, id_receiver) = std_mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (slab, id_sender) = (slab.clone(), id_sender.clone());
            thread::spawn(move || {
                let mut tickets = Vec::with_capacity(TICKETS_PER_CLIENT);
                for number in 0..TICKETS_PER_CLIENT {
                    let (ticket, id) = slab.issue().expect("free slot");
                    let code = (client * TICKETS_PER_CLIENT + number) as u16;
                    id_sender.send((id, code)).expect("engine alive");
                    tickets.push((ticket, code));
                }
                // The engine completes once every client has issued all its tickets.
                drop(id_sender);
                tickets
                    .into_iter()
                    .rev()
                    .all(|(ticket, code)| ticket.wait() == rejected(code))
            })
        })
        .collect();
    drop(id_sender);
    let engine = thread::spawn(move || {
        let mut ids: Vec<_> = id_receiver.iter().collect();
        ids.reverse();
        for (id, code) in ids {
            slab.complete(id, rejected(code)).expect("fresh id");
        }
        slab
    });
    for client in clients {
        assert!(
            client.join().expect("client panicked"),
            "a ticket got another's outcome"
        );
    }
    let slab = engine.join().expect("engine panicked");
    assert_eq!(slab.slots_free(), CLIENTS * TICKETS_PER_CLIENT);
}

#[test]
fn a_ready_ticket_holds_its_outcome() {
    // A ticket made for an already decided transaction resolves at once, both ways.
    assert_eq!(Ticket::ready(Outcome::Committed).wait(), Outcome::Committed);
    assert_eq!(block_on(Ticket::ready(rejected(4))), rejected(4));
}

#[test]
fn over_the_high_water_mark_normal_is_busy_and_high_still_enters() {
    // Above the high-water mark a Normal submission comes back in `Busy` while a High
    // one enters, until the hard capacity refuses both; completing makes room again.
    let admission = Admission::new(AdmissionLimits::new(2, 4).expect("limits")).expect("admission");
    let first = admission
        .admit("n1", Priority::Normal)
        .expect("under high water");
    let _second = admission
        .admit("n2", Priority::Normal)
        .expect("under high water");
    let busy = admission
        .admit("n3", Priority::Normal)
        .expect_err("over high water");
    assert_eq!(busy.reason(), BusyReason::HighWater);
    assert_eq!(busy.into_inner(), "n3");
    let _third = admission
        .admit("h1", Priority::High)
        .expect("under capacity");
    let _fourth = admission
        .admit("h2", Priority::High)
        .expect("under capacity");
    let busy = admission
        .admit("h3", Priority::High)
        .expect_err("at capacity");
    assert_eq!(
        (busy.reason(), busy.into_inner()),
        (BusyReason::Capacity, "h3")
    );
    assert_eq!(admission.in_flight_txns(), 4);
    admission
        .complete(first.completion, Outcome::Committed)
        .expect("fresh id");
    assert_eq!(first.ticket.wait(), Outcome::Committed);
    assert_eq!(admission.in_flight_txns(), 3);
    admission.admit("h3", Priority::High).expect("room again");
}

#[test]
fn a_reservation_judges_each_place_by_the_class_that_takes_it() {
    // The group path: `reserve` counts several places in one step, never above the
    // limit of the highest class it reserves for (the excess goes back at once), and
    // each place is admitted or refused when it is taken, by the taker's class, exactly
    // as a run of `admit`s would be; `release` leaves the count exact.
    use Priority::{High, Normal};
    let admission = Admission::new(AdmissionLimits::new(2, 4).expect("limits")).expect("admission");
    let mut reservation = admission.reserve(3, Normal);
    assert_eq!(
        admission.in_flight_txns(),
        2,
        "Normal places stop at high water"
    );
    assert_eq!(admission.take(&mut reservation, Normal), Ok(()));
    assert_eq!(admission.take(&mut reservation, Normal), Ok(()));
    assert!(reservation.is_spent());
    assert_eq!(
        admission.take(&mut reservation, Normal),
        Err(BusyReason::HighWater)
    );
    admission.release(reservation);
    assert_eq!(admission.in_flight_txns(), 2);
    // Places for a group with a High member reach up to the capacity; a Normal taker
    // is still refused above the high-water mark.
    let mut reservation = admission.reserve(3, High);
    assert_eq!(admission.in_flight_txns(), 4);
    assert_eq!(
        admission.take(&mut reservation, Normal),
        Err(BusyReason::HighWater)
    );
    assert_eq!(admission.take(&mut reservation, High), Ok(()));
    assert_eq!(admission.take(&mut reservation, High), Ok(()));
    assert_eq!(
        admission.take(&mut reservation, High),
        Err(BusyReason::Capacity)
    );
    admission.release(reservation);
    assert_eq!(admission.in_flight_txns(), 4);
    // At the capacity nothing is reserved, and the count stays exact.
    let mut full = admission.reserve(10, High);
    assert!(full.is_spent());
    assert_eq!(admission.in_flight_txns(), 4);
    assert_eq!(admission.take(&mut full, High), Err(BusyReason::Capacity));
    admission.release(full);
    assert_eq!(admission.in_flight_txns(), 4);
    // Places taken, one given back (its ticket could not be issued): only the place
    // with a ticket stays counted, until its transaction completes.
    let admission = Admission::new(AdmissionLimits::new(2, 4).expect("limits")).expect("admission");
    let mut reservation = admission.reserve(2, Normal);
    assert_eq!(admission.take(&mut reservation, Normal), Ok(()));
    let (ticket, completion) = admission.issue().expect("a free slot");
    assert_eq!(admission.take(&mut reservation, Normal), Ok(()));
    admission.untake(&mut reservation);
    admission.release(reservation);
    assert_eq!(admission.in_flight_txns(), 1);
    admission
        .complete(completion, Outcome::Committed)
        .expect("fresh id");
    assert_eq!(ticket.wait(), Outcome::Committed);
    assert_eq!(admission.in_flight_txns(), 0);
    assert!(Reservation::none().is_spent());
}

#[test]
fn a_cancelled_admission_returns_the_txn_and_its_place() {
    // Undoing an admission gives the transaction back and frees its place and slot.
    let admission = Admission::new(AdmissionLimits::new(1, 1).expect("limits")).expect("admission");
    let admitted = admission.admit(42u64, Priority::Normal).expect("room");
    assert!(admission.admit(43u64, Priority::High).is_err());
    assert_eq!(admission.cancel(admitted), 42);
    assert_eq!(admission.in_flight_txns(), 0);
    assert_eq!(
        admission.ticket_slots_free(),
        admission.ticket_slots_total()
    );
    admission
        .admit(43u64, Priority::Normal)
        .expect("room again");
}

#[test]
fn shutdown_completes_every_admitted_txn_once() {
    // Completing all pending at shutdown reaches every admitted transaction once and
    // leaves the count at zero, even after some were completed normally.
    let admission = Admission::new(AdmissionLimits::default()).expect("admission");
    let admitted: Vec<_> = (0..100)
        .map(|txn| admission.admit(txn, Priority::Normal).expect("room"))
        .collect();
    for entry in &admitted[..10] {
        admission
            .complete(entry.completion, Outcome::Committed)
            .expect("fresh id");
    }
    assert_eq!(admission.complete_all_pending(Outcome::InDoubt), 90);
    assert_eq!(admission.in_flight_txns(), 0);
    let outcomes: Vec<_> = admitted
        .into_iter()
        .map(|entry| entry.ticket.wait())
        .collect();
    assert!(outcomes[..10]
        .iter()
        .all(|outcome| *outcome == Outcome::Committed));
    assert!(outcomes[10..]
        .iter()
        .all(|outcome| *outcome == Outcome::InDoubt));
}

#[test]
fn admission_limits_out_of_order_are_typed_errors() {
    // Limits must satisfy 1 <= high water <= capacity <= INTAKE_TXNS_MAX.
    let error = AdmissionError::Limits {
        high_water_txns: 5,
        capacity_txns: 4,
    };
    assert_eq!(AdmissionLimits::new(5, 4), Err(error));
    assert!(AdmissionLimits::new(0, 4).is_err());
    assert!(AdmissionLimits::new(1, usize::MAX).is_err());
    assert_eq!(
        Completions::new(0).err(),
        Some(TicketError::SlotCount { slots: 0 })
    );
}
