//! What the two kinds of hop (SPSC and MPSC) have in common: their errors and what a
//! waiting receive returns.

use std::fmt;

use super::bounds::HOP_CAPACITY_MAX;

/// A push that did not happen. It hands the value back, as crossbeam's
/// `TrySendError::Full(T)` does, so that the caller can retry, shed or return it.
#[derive(PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue is at its capacity: backpressure.
    Full(T),
    /// The receiving stage is gone; the value can never be delivered.
    Closed(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(value) | PushError::Closed(value) => value,
        }
    }

    /// Whether the push failed for lack of room (and may succeed later).
    pub fn is_full(&self) -> bool {
        matches!(self, PushError::Full(_))
    }
}

// Written by hand so that `T` needs no `Debug`: the value is the caller's business.
impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => formatter.write_str("Full(..)"),
            PushError::Closed(_) => formatter.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => formatter.write_str("the queue is full"),
            PushError::Closed(_) => formatter.write_str("the receiving stage is gone"),
        }
    }
}

impl<T> std::error::Error for PushError<T> {}

/// What a waiting receive ([`SpscReceiver::wait_batch`](super::spsc::SpscReceiver::wait_batch),
/// [`MpscReceiver::wait_batch`](super::mpsc::MpscReceiver::wait_batch)) got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// This many items (at least one) were appended to the caller's buffer.
    Items(usize),
    /// The deadline passed with the queue empty.
    TimedOut,
    /// The queue is empty and every sender is gone: nothing will ever arrive.
    Closed,
}

/// A hop that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    #[error("hop capacity {capacity} is outside 1..={HOP_CAPACITY_MAX}")]
    Capacity { capacity: usize },
}

/// Checks a requested capacity against [`HOP_CAPACITY_MAX`].
pub(super) fn check_capacity(capacity: usize) -> Result<(), HopError> {
    if capacity == 0 || capacity > HOP_CAPACITY_MAX {
        return Err(HopError::Capacity { capacity });
    }
    Ok(())
}
