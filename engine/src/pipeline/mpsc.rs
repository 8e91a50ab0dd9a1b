//! A many-producer, one-consumer hop, around crossbeam's `ArrayQueue`.
//!
//! Why `ArrayQueue`: a bounded, preallocated, lock-free MPMC ring (Vyukov's design) that
//! never allocates after construction. The intake (many client threads into the batcher)
//! and the reply paths (many participants into a coordinator stage) need exactly that.
//! This module adds the pieces a stage needs: the spin-then-park wait of
//! [`wait`](super::wait), batch pops into a reusable buffer, closure detection when the
//! last sender goes, and the consumer-idle hint.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::queue::ArrayQueue;

use super::hop::{check_capacity, HopError, PushError, Received};
use super::wait::Doorbell;

/// Builds a hop of `capacity` items whose consumer waits on `doorbell`.
pub fn channel<T>(
    capacity: usize,
    doorbell: Arc<Doorbell>,
) -> Result<(MpscSender<T>, MpscReceiver<T>), HopError> {
    check_capacity(capacity)?;
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity),
        doorbell,
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
    });
    Ok((
        MpscSender {
            shared: shared.clone(),
        },
        MpscReceiver { shared },
    ))
}

struct Shared<T> {
    queue: ArrayQueue<T>,
    doorbell: Arc<Doorbell>,
    /// Live `MpscSender`s. When it reaches zero the hop is closed for the receiver.
    senders: AtomicUsize,
    /// False once the receiver is dropped: pushes then fail with `Closed`.
    receiver_alive: AtomicBool,
}

/// A producing end of an MPSC hop. Clone it for each producer thread.
pub struct MpscSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> MpscSender<T> {
    /// Pushes one item and wakes the consumer if it sleeps. On a full or closed hop the
    /// item comes back in the error.
    pub fn push(&self, value: T) -> Result<(), PushError<T>> {
        if !self.shared.receiver_alive.load(Ordering::Relaxed) {
            return Err(PushError::Closed(value));
        }
        self.shared.queue.push(value).map_err(PushError::Full)?;
        self.shared.doorbell.ring();
        Ok(())
    }

    /// Pushes one item without waking the consumer: for a run of pushes that ends with
    /// one [`ring`](Self::ring) (each ring costs a full fence). A consumer that is
    /// awake takes the item anyway; a parked one sleeps until that ring.
    pub fn push_unrung(&self, value: T) -> Result<(), PushError<T>> {
        if !self.shared.receiver_alive.load(Ordering::Relaxed) {
            return Err(PushError::Closed(value));
        }
        self.shared.queue.push(value).map_err(PushError::Full)
    }

    /// Wakes the consumer without an item: for state it reads beside the hop, which
    /// the caller published before (its wait condition must read that state).
    pub fn ring(&self) {
        self.shared.doorbell.ring();
    }

    /// Whether the consumer has run out of work (see [`Doorbell::is_idle`]).
    pub fn consumer_idle(&self) -> bool {
        self.shared.doorbell.is_idle()
    }

    /// Items waiting right now.
    pub fn len(&self) -> usize {
        self.shared.queue.len()
    }

    /// Whether no item is waiting right now.
    pub fn is_empty(&self) -> bool {
        self.shared.queue.is_empty()
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.receiver_alive.load(Ordering::Relaxed)
    }
}

impl<T> Clone for MpscSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for MpscSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: wake a parked consumer so that it sees the hop closed.
            self.shared.doorbell.ring();
        }
    }
}

/// The consuming end of an MPSC hop.
pub struct MpscReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> MpscReceiver<T> {
    /// Pops one item, if any.
    pub fn pop(&mut self) -> Option<T> {
        self.shared.queue.pop()
    }

    /// Appends up to `items_max` items to `out`, and returns how many. `out` keeps its
    /// capacity between calls, so a stage allocates nothing.
    pub fn pop_batch(&mut self, out: &mut Vec<T>, items_max: usize) -> usize {
        let mut count = 0;
        while count < items_max {
            match self.shared.queue.pop() {
                Some(item) => out.push(item),
                None => break,
            }
            count += 1;
        }
        count
    }

    /// Like [`pop_batch`](Self::pop_batch), but when the hop is empty it spins, then
    /// parks until an item arrives, every sender is gone, or `deadline` passes.
    pub fn wait_batch(
        &mut self,
        out: &mut Vec<T>,
        items_max: usize,
        deadline: Option<Instant>,
    ) -> Received {
        self.wait_batch_or(out, items_max, deadline, || false)
    }

    /// [`MpscReceiver::wait_batch`], also returning (`TimedOut`, with no item) once
    /// `also_ready` holds: for state published beside the hop before a
    /// [`MpscSender::ring`].
    pub fn wait_batch_or(
        &mut self,
        out: &mut Vec<T>,
        items_max: usize,
        deadline: Option<Instant>,
        also_ready: impl Fn() -> bool,
    ) -> Received {
        let count = self.pop_batch(out, items_max);
        if count > 0 {
            return Received::Items(count);
        }
        let shared = &self.shared;
        let ready = || {
            !shared.queue.is_empty() || shared.senders.load(Ordering::Acquire) == 0 || also_ready()
        };
        if !shared.doorbell.wait_until(ready, deadline) {
            return Received::TimedOut;
        }
        match self.pop_batch(out, items_max) {
            0 if self.is_closed() => Received::Closed,
            0 => Received::TimedOut,
            count => Received::Items(count),
        }
    }

    /// Whether an item is waiting; reads the shared indices, so it may serve as (part
    /// of) the `ready` check of [`Doorbell::wait_until`].
    pub fn has_items(&self) -> bool {
        !self.shared.queue.is_empty()
    }

    /// Whether every sender is gone. Items they pushed before may still be waiting.
    pub fn is_closed(&self) -> bool {
        self.shared.senders.load(Ordering::Acquire) == 0
    }

    /// The doorbell this receiver's stage waits on.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.shared.doorbell
    }
}

impl<T> Drop for MpscReceiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Relaxed);
    }
}
