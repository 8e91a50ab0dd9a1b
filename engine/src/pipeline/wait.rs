//! Waiting without burning a core: spin briefly, then park until a producer rings.
//!
//! Why: on this 2-core VM several stages share a core. Two spinners on one vCPU cost
//! about 4 ms per hop, because each burns its whole time slice before the other runs,
//! while a park/unpark costs about 5 µs. So a stage with nothing to do spins for a short,
//! bounded number of rounds (enough to catch an item that is already on its way) and
//! then parks. Nothing spins without a bound.
//!
//! # The wakeup protocol
//!
//! One consumer thread waits on a [`Doorbell`]; any number of producers ring it after
//! they publish an item. A lost wakeup would be: the consumer finds its queues empty,
//! a producer publishes and sees the consumer "not parked", and the consumer then parks
//! with an item waiting. The protocol is Dekker's, with one `SeqCst` fence on each side:
//!
//! ```text
//! consumer (wait_until)                 producer (publish, then ring)
//! C1 register the current thread       P1 publish the item (the queue's own store)
//! C2 state := PARKED                   P2 fence(SeqCst)
//! C3 fence(SeqCst)                     P3 if state == PARKED: unpark the consumer
//! C4 check the queues (ready())
//! C5 park, then go back to C4
//! ```
//!
//! `SeqCst` fences are totally ordered. If C3 precedes P2, then P3 sees `PARKED` (C2 is
//! sequenced before C3) and unparks. If P2 precedes C3, then C4 sees the item (P1 is
//! sequenced before P2). An unpark that lands between C4 and C5 is not lost either:
//! `Thread::unpark` leaves a token that makes the next `park` return at once, and
//! `unpark` synchronizes-with the `park` that consumes its token, so the item is visible
//! after it. The state stays `PARKED` across the whole loop, so the argument holds for
//! every iteration. Spurious wakeups and stale tokens cost one extra check, never
//! correctness. The park timeout ([`PARK_TIMEOUT_US_MAX`]) is defence in depth only;
//! the tests turn it off to prove the protocol alone.
//!
//! C2 is a `Release` store and P3 an `Acquire` load, so a producer that sees `PARKED`
//! also sees the thread registered in C1.

use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam::utils::{Backoff, CachePadded};

use super::bounds::{PARK_TIMEOUT_US_MAX, SPIN_ROUNDS_DEFAULT, SPIN_ROUNDS_MAX};

/// The consumer is working: it has not run out of items.
const STATE_RUNNING: u8 = 0;
/// The consumer found nothing and is spinning: it is idle but not asleep.
const STATE_SPINNING: u8 = 1;
/// The consumer is parked or about to park: producers must unpark it.
const STATE_PARKED: u8 = 2;

/// A [`WaitConfig`] that is out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitConfigError {
    #[error("spin_rounds {spin_rounds} is above the bound SPIN_ROUNDS_MAX = {SPIN_ROUNDS_MAX}")]
    SpinRounds { spin_rounds: u32 },
    #[error("park_timeout_us {park_timeout_us} is outside 1..={PARK_TIMEOUT_US_MAX}")]
    ParkTimeout { park_timeout_us: u64 },
}

/// How a waiting consumer spends its time: spin rounds first, then park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitConfig {
    spin_rounds: u32,
    park_timeout: Option<Duration>,
}

impl WaitConfig {
    /// Spins `spin_rounds` rounds of `Backoff::spin`, then parks for at most
    /// `park_timeout_us` at a time before re-checking.
    pub fn new(spin_rounds: u32, park_timeout_us: u64) -> Result<Self, WaitConfigError> {
        if spin_rounds > SPIN_ROUNDS_MAX {
            return Err(WaitConfigError::SpinRounds { spin_rounds });
        }
        if park_timeout_us == 0 || park_timeout_us > PARK_TIMEOUT_US_MAX {
            return Err(WaitConfigError::ParkTimeout { park_timeout_us });
        }
        let park_timeout = Some(Duration::from_micros(park_timeout_us));
        Ok(Self {
            spin_rounds,
            park_timeout,
        })
    }

    /// Parks with no timeout at all, relying on the wakeup protocol alone.
    ///
    /// Tests use it: a lost wakeup then hangs instead of being hidden by a timeout.
    pub fn without_park_timeout(self) -> Self {
        Self {
            park_timeout: None,
            ..self
        }
    }

    /// The number of spin rounds before parking.
    pub fn spin_rounds(&self) -> u32 {
        self.spin_rounds
    }
}

impl Default for WaitConfig {
    fn default() -> Self {
        Self {
            spin_rounds: SPIN_ROUNDS_DEFAULT,
            park_timeout: Some(Duration::from_micros(PARK_TIMEOUT_US_MAX)),
        }
    }
}

/// The meeting point of one waiting consumer thread and the producers that feed it.
///
/// Share it (in an `Arc`) between every queue a stage consumes from, so that a stage
/// listening to several queues sleeps on one doorbell and any of them wakes it. Only one
/// thread may wait on a doorbell at a time; that is the stage that owns it.
#[derive(Debug)]
pub struct Doorbell {
    /// `STATE_*`: what the consumer is doing. Padded because every producer reads it.
    state: CachePadded<AtomicU8>,
    /// The consumer thread, registered before it first parks. Only locked on the slow
    /// paths: a consumer about to park, a producer that must unpark.
    consumer: Mutex<Option<Thread>>,
    config: WaitConfig,
    /// How many times the consumer returned from `park`; for tests and diagnostics.
    parks_total: AtomicU64,
    /// How many times a producer had to unpark the consumer.
    unparks_total: AtomicU64,
    /// Wakes a consumer that sleeps outside `thread::park` (see [`WakeHook`]).
    wake_hook: Option<WakeHook>,
}

/// How to wake a consumer that sleeps somewhere other than `thread::park`: the
/// transport's event loop sleeps in `epoll_wait`, and `mio::Waker::wake` wakes it.
///
/// Such a consumer brackets its sleep with [`Doorbell::begin_external_wait`] and
/// [`Doorbell::end_external_wait`] (steps C2–C3 and the return to running); a producer
/// that rings while it is marked parked calls the hook instead of `unpark`.
#[derive(Clone)]
pub struct WakeHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for WakeHook {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("WakeHook(..)")
    }
}

impl Doorbell {
    /// A doorbell whose consumer waits as `config` says.
    pub fn new(config: WaitConfig) -> Self {
        Self {
            state: CachePadded::new(AtomicU8::new(STATE_RUNNING)),
            consumer: Mutex::new(None),
            config,
            parks_total: AtomicU64::new(0),
            unparks_total: AtomicU64::new(0),
            wake_hook: None,
        }
    }

    /// A doorbell whose consumer sleeps outside [`wait_until`](Self::wait_until) and is
    /// woken by `hook`.
    pub fn with_wake_hook(hook: WakeHook) -> Self {
        Self {
            wake_hook: Some(hook),
            ..Self::new(WaitConfig::default())
        }
    }

    /// Consumer side, for a consumer that sleeps outside `wait_until`: steps C2–C3 of
    /// the protocol. Call it, then check the queues, and sleep only if they are empty;
    /// a producer that publishes after this call runs the wake hook.
    pub fn begin_external_wait(&self) {
        self.state.store(STATE_PARKED, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Consumer side: the external sleep is over, producers need not wake it.
    pub fn end_external_wait(&self) {
        self.state.store(STATE_RUNNING, Ordering::Relaxed);
    }

    /// Producer side: call after publishing an item, so that a parked consumer wakes.
    ///
    /// Costs one fence and one load when the consumer is awake.
    #[inline]
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Acquire) == STATE_PARKED {
            self.unpark_consumer();
        }
    }

    #[cold]
    fn unpark_consumer(&self) {
        if let Some(hook) = &self.wake_hook {
            (hook.0)();
            self.unparks_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = consumer.as_ref() {
            thread.unpark();
            self.unparks_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Producer side: whether the consumer has run out of work (it spins or sleeps).
    ///
    /// A hint, true at the moment it was read: the batcher uses it to close a batch at
    /// once when the next stage would otherwise sit idle.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.state.load(Ordering::Relaxed) != STATE_RUNNING
    }

    /// Whether the consumer is parked (or about to park). For tests and diagnostics.
    pub fn is_parked(&self) -> bool {
        self.state.load(Ordering::Relaxed) == STATE_PARKED
    }

    /// How many times the consumer returned from `park` so far.
    pub fn parks_total(&self) -> u64 {
        self.parks_total.load(Ordering::Relaxed)
    }

    /// How many times a producer unparked the consumer so far.
    pub fn unparks_total(&self) -> u64 {
        self.unparks_total.load(Ordering::Relaxed)
    }

    /// Consumer side: waits until `ready()` is true or `deadline` passes.
    ///
    /// Returns whether `ready()` became true. `ready` must read the shared state the
    /// producers publish (a queue's indices), never a cached copy, or the protocol in the
    /// module documentation does not hold. Call it from the one thread that consumes.
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool, deadline: Option<Instant>) -> bool {
        if ready() {
            return true;
        }
        self.state.store(STATE_SPINNING, Ordering::Relaxed);
        let found = self.spin(&mut ready) || self.park_until(&mut ready, deadline);
        self.state.store(STATE_RUNNING, Ordering::Relaxed);
        found
    }

    /// Spins at most `spin_rounds` rounds, checking `ready` after each.
    fn spin(&self, ready: &mut impl FnMut() -> bool) -> bool {
        let backoff = Backoff::new();
        for _ in 0..self.config.spin_rounds {
            backoff.spin();
            if ready() {
                return true;
            }
        }
        false
    }

    /// Steps C1 to C5 of the protocol: parks until `ready` or the deadline.
    fn park_until(&self, ready: &mut impl FnMut() -> bool, deadline: Option<Instant>) -> bool {
        self.register_current_thread();
        self.state.store(STATE_PARKED, Ordering::Release);
        fence(Ordering::SeqCst);
        loop {
            if ready() {
                return true;
            }
            match self.park_duration(deadline) {
                ParkFor::Expired => return false,
                ParkFor::Forever => thread::park(),
                ParkFor::AtMost(duration) => thread::park_timeout(duration),
            }
            self.parks_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How long the next park may last: the nearer of the deadline and the timeout.
    fn park_duration(&self, deadline: Option<Instant>) -> ParkFor {
        let until_deadline = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                None => return ParkFor::Expired,
                Some(left) if left.is_zero() => return ParkFor::Expired,
                Some(left) => Some(left),
            },
        };
        match (until_deadline, self.config.park_timeout) {
            (None, None) => ParkFor::Forever,
            (Some(a), None) | (None, Some(a)) => ParkFor::AtMost(a),
            (Some(a), Some(b)) => ParkFor::AtMost(a.min(b)),
        }
    }

    /// Step C1: makes sure producers unpark this thread, even if the consumer moved.
    fn register_current_thread(&self) {
        let mut consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        let current_id = thread::current().id();
        if consumer.as_ref().map(Thread::id) != Some(current_id) {
            *consumer = Some(thread::current());
        }
    }
}

impl Default for Doorbell {
    fn default() -> Self {
        Self::new(WaitConfig::default())
    }
}

/// The outcome of [`Doorbell::park_duration`].
enum ParkFor {
    Expired,
    Forever,
    AtMost(Duration),
}
