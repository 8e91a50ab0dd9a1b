//! The I/O-free protocol core: events in, actions out, time passed in explicitly.
//!
//! Nothing in this module touches files, sockets, clocks or threads.

pub mod rm;

pub use rm::{Op, Reason, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};
