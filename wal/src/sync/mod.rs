//! Sync backends that need their own system-call plumbing.

pub(crate) mod uring;
