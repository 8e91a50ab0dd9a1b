//! Microseconds since a stage started: the `now_us` the pure pieces take as input.
//!
//! Why: the batcher and the protocol core take time as a plain `u64` so that tests and
//! the simulator can drive them. The runtime reads the monotonic clock once per loop
//! turn and converts deadlines back to `Instant`s for parking.

use std::time::{Duration, Instant};

/// A monotonic clock that counts microseconds from its creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Microseconds since the clock's zero. Saturates after 584,000 years.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant that is `time_us` after the clock's zero, for parking until then.
    /// `None` if it cannot be represented, which a caller treats as "no deadline".
    pub fn instant_at(&self, time_us: u64) -> Option<Instant> {
        self.origin.checked_add(Duration::from_micros(time_us))
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}
