//! The runtime primitives the pipelined engine is assembled from.
//!
//! The engine (`runtime::Engine`) runs R + P + 2 threads, joined by bounded lock-free
//! queues: `tc-batcher` (intake, closing batches), `tc-replica-0` (the site of the
//! active coordinator replica: PREPARE, PRE-COMMIT and COMMIT of every batch, its log
//! and syncs), `tc-completion` (answering tickets), one `tc-replica-N` per backup
//! replica and one `tc-participant-N` per participant. The three protocol phases are
//! stages of each batch on `tc-replica-0`, not threads of their own; docs/ops.md
//! ("Stages and threads") argues why. This module holds the generic, separately tested
//! pieces:
//!
//! - [`bounds`]: every capacity as a named constant, their relations checked at compile
//!   time;
//! - [`wait`]: the spin-briefly-then-park wait with a no-lost-wakeup protocol;
//! - [`spsc`] and [`mpsc`]: bounded hops (rtrb, crossbeam `ArrayQueue`) with batch pops,
//!   push that hands the value back when full, and a consumer-idle hint;
//! - [`batcher`]: the pure rule for closing batches, with time passed in;
//! - [`ticket`] and [`admission`]: what a client holds for a submitted transaction, and
//!   load shedding by priority;
//! - [`cores`]: the one path that pins a thread to a core (the engine's threads and
//!   [`CoreMap`] both use it), and `CoreMap`, a stage-to-core placement for a pipeline
//!   split into per-phase threads (DESIGN §3's fallback; the engine does not run one);
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

pub use admission::{
    Admission, AdmissionLimits, Admitted, Busy, BusyReason, Priority, Reservation,
};
pub use batcher::{BatchPolicy, BatchPoll, Batcher, CloseReason};
pub use clock::MonotonicClock;
pub use cores::{CoreMap, Stage, StageError, StageThread};
pub use hop::{HopError, PushError, Received};
pub use ticket::{AbortReason, CompletionId, Completions, Outcome, Ticket, TicketError};
pub use wait::{Doorbell, WaitConfig, WakeHook};
