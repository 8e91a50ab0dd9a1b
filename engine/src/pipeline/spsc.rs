//! A one-producer, one-consumer hop between two stages, around `rtrb`.
//!
//! Why rtrb: a wait-free ring with one cache-padded index per side, and chunk reads and
//! writes, so that a batch of items moves with one index update. This module adds what a
//! stage needs on top: a bounded capacity, the spin-then-park wait of
//! [`wait`](super::wait) on the consumer side, batch pops into a reusable buffer, and a
//! way for the producer to see whether the consumer is idle.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Instant;

use super::hop::{check_capacity, HopError, PushError, Received};
use super::wait::Doorbell;

/// Builds a hop of `capacity` items whose consumer waits on `doorbell`.
///
/// Pass the doorbell of the consuming stage; a stage that reads several hops shares one
/// doorbell between them.
pub fn channel<T>(
    capacity: usize,
    doorbell: Arc<Doorbell>,
) -> Result<(SpscSender<T>, SpscReceiver<T>), HopError> {
    check_capacity(capacity)?;
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
    let sender = SpscSender {
        producer: ManuallyDrop::new(producer),
        doorbell: doorbell.clone(),
    };
    Ok((sender, SpscReceiver { consumer, doorbell }))
}

/// The producing end of an SPSC hop.
pub struct SpscSender<T> {
    /// Dropped by hand in `Drop`, *before* the doorbell rings, so that a consumer woken
    /// by that ring sees the hop abandoned.
    producer: ManuallyDrop<rtrb::Producer<T>>,
    doorbell: Arc<Doorbell>,
}

impl<T> SpscSender<T> {
    /// Pushes one item and wakes the consumer if it sleeps. On a full or closed hop the
    /// item comes back in the error.
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        if self.producer.is_abandoned() {
            return Err(PushError::Closed(value));
        }
        match self.producer.push(value) {
            Ok(()) => {
                self.doorbell.ring();
                Ok(())
            }
            Err(rtrb::PushError::Full(value)) => Err(PushError::Full(value)),
        }
    }

    /// Moves as many items as fit from the front of `source` into the hop, in order, and
    /// rings once. Returns how many moved; the rest stay in `source`.
    pub fn push_from(&mut self, source: &mut Vec<T>) -> Result<usize, PushError<()>> {
        if self.producer.is_abandoned() {
            return Err(PushError::Closed(()));
        }
        let count = self.producer.slots().min(source.len());
        if count == 0 {
            return Ok(0);
        }
        let moved = match self.producer.write_chunk_uninit(count) {
            Ok(chunk) => chunk.fill_from_iter(source.drain(..count)),
            // `slots()` promised `count` free slots and only this producer fills them.
            Err(_) => 0,
        };
        debug_assert_eq!(moved, count);
        self.doorbell.ring();
        Ok(moved)
    }

    /// Whether the consumer has run out of work (see [`Doorbell::is_idle`]).
    pub fn consumer_idle(&self) -> bool {
        self.doorbell.is_idle()
    }

    /// Free slots right now (a lower bound: the consumer may free more).
    pub fn slots_free(&self) -> usize {
        self.producer.slots()
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.producer.is_abandoned()
    }
}

impl<T> Drop for SpscSender<T> {
    fn drop(&mut self) {
        // SAFETY: `producer` is dropped exactly once, here, and never used after: `self`
        // is being dropped and no other code runs on it.
        unsafe { ManuallyDrop::drop(&mut self.producer) };
        // Wakes a parked consumer so that it sees the hop closed.
        self.doorbell.ring();
    }
}

/// The consuming end of an SPSC hop.
pub struct SpscReceiver<T> {
    consumer: rtrb::Consumer<T>,
    doorbell: Arc<Doorbell>,
}

impl<T> SpscReceiver<T> {
    /// Pops one item, if any.
    pub fn pop(&mut self) -> Option<T> {
        self.consumer.pop().ok()
    }

    /// Appends up to `items_max` items to `out` with one index update, and returns how
    /// many. `out` keeps its capacity between calls, so a stage allocates nothing.
    pub fn pop_batch(&mut self, out: &mut Vec<T>, items_max: usize) -> usize {
        let count = self.consumer.slots().min(items_max);
        if count == 0 {
            return 0;
        }
        match self.consumer.read_chunk(count) {
            Ok(chunk) => {
                out.extend(chunk);
                count
            }
            // `slots()` promised `count` items and only this consumer takes them.
            Err(_) => 0,
        }
    }

    /// Like [`pop_batch`](Self::pop_batch), but when the hop is empty it spins, then
    /// parks until an item arrives, every sender is gone, or `deadline` passes.
    pub fn wait_batch(
        &mut self,
        out: &mut Vec<T>,
        items_max: usize,
        deadline: Option<Instant>,
    ) -> Received {
        let count = self.pop_batch(out, items_max);
        if count > 0 {
            return Received::Items(count);
        }
        let consumer = &self.consumer;
        let ready = || !consumer.is_empty() || consumer.is_abandoned();
        if !self.doorbell.wait_until(ready, deadline) {
            return Received::TimedOut;
        }
        match self.pop_batch(out, items_max) {
            0 if self.consumer.is_abandoned() => Received::Closed,
            0 => Received::TimedOut,
            count => Received::Items(count),
        }
    }

    /// Whether an item is waiting; reads the shared index, so it may serve as (part of)
    /// the `ready` check of [`Doorbell::wait_until`].
    pub fn has_items(&self) -> bool {
        !self.consumer.is_empty()
    }

    /// Whether the sender is gone. Items it pushed before may still be waiting.
    pub fn is_closed(&self) -> bool {
        self.consumer.is_abandoned()
    }

    /// The doorbell this receiver's stage waits on.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }
}
