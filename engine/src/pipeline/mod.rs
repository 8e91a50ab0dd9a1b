//! The runtime primitives the pipelined engine is assembled from.
//!
//! The engine runs each stage (intake/batcher → prepare → pre-commit → commit →
//! completion, plus one per participant) on its own thread, joined by bounded lock-free
//! queues. This module holds the generic, separately tested pieces:
//!
//! - [`bounds`]: every capacity as a named constant, their relations checked at compile
//!   time;
//! - [`wait`]: the spin-briefly-then-park wait with a no-lost-wakeup protocol;
//! - [`spsc`] and [`mpsc`]: bounded hops (rtrb, crossbeam `ArrayQueue`) with batch pops,
//!   push that hands the value back when full, and a consumer-idle hint;
//! - [`batcher`]: the pure rule for closing batches, with time passed in;
//! - [`ticket`] and [`admission`]: what a client holds for a submitted transaction, and
//!   load shedding by priority;
//! - [`cores`]: stage-to-core pinning that fits the machine;
//! - [`clock`]: the `now_us` the pure pieces take.

pub mod admission;
pub mod batcher;
pub mod bounds;
pub mod clock;
pub mod cores;
pub mod hop;
pub mod mpsc;
pub mod spsc;
pub mod ticket;
pub mod wait;

pub use admission::{Admission, AdmissionLimits, Admitted, Busy, BusyReason, Priority};
pub use batcher::{BatchPolicy, BatchPoll, Batcher, CloseReason};
pub use clock::MonotonicClock;
pub use cores::{CoreMap, Stage, StageError, StageThread};
pub use hop::{HopError, PushError, Received};
pub use ticket::{AbortReason, CompletionId, Completions, Outcome, Ticket, TicketError};
pub use wait::{Doorbell, WaitConfig, WakeHook};
