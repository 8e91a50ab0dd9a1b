//! A seeded, deterministic simulator over the real protocol state machines.
//!
//! One `u64` seed fixes everything: the configuration ([`SimConfig::random`]), the
//! workload, every message delay, loss and duplicate, every crash point and which
//! unsynced records survive it. [`run_seed`] runs one seed and returns a [`Failure`]
//! (the seed, the broken invariant and the last events) if any check fails.

pub mod bank;
pub mod check;
pub mod rng;
pub mod world;

pub use bank::{bank_op, Bank};
pub use check::{Checker, Violation};
pub use rng::Rng;
pub use world::{Failure, Fault, Filter, Leg, RunStats, Sim, SimConfig, Transfer};

use crate::proto::Termination;

/// Runs seed `seed` with the given termination rule.
pub fn run_seed(seed: u64, termination: Termination) -> (Result<(), Failure>, RunStats) {
    let mut sim = Sim::new(SimConfig::random(seed, termination));
    let result = sim.run();
    (result, sim.stats.clone())
}
