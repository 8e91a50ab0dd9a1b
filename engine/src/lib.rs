//! tricommit-engine: batched, pipelined three-phase commit with E3PC termination.
//!
//! `proto` is the I/O-free protocol core; everything else drives it with real I/O.

pub mod client;
pub mod ledger;
pub mod metrics;
#[cfg(feature = "pg")]
pub mod pg;
pub mod pipeline;
pub mod proto;
pub mod runtime;
pub mod sign;
pub mod sim;
pub mod transport;

pub use pipeline::{AbortReason, Busy, Outcome, Priority, Ticket};
pub use proto::Protocol;
pub use runtime::{Engine, EngineConfig, EngineError, ParticipantSpec, Txn};
