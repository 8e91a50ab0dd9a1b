//! Shared helpers for the tricommit benchmarks and the comparison harness.
