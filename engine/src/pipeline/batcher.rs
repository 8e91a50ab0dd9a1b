//! The batcher's decision, as pure logic: when does the open batch close?
//!
//! Why pure: the rule is where latency and throughput are traded, so it must be testable
//! without threads or clocks. Time comes in as `now_us` (quinn's `handle_timeout(now)`
//! style), and the batcher says when it next needs the caller ([`Batcher::deadline_us`]),
//! so that a stage can park until then.
//!
//! A batch closes when the first of these holds:
//! 1. it holds `batch_txns_max` transactions ([`CloseReason::Full`]);
//! 2. its oldest transaction has waited `batch_delay_us_max` ([`CloseReason::Delay`]);
//! 3. the next stage is idle ([`CloseReason::NextStageIdle`]): holding a lone transaction
//!    back for company while the stage that would process it sits idle only adds
//!    latency. While that stage is busy, the batch keeps filling, which is what makes
//!    batches grow with load on their own;
//! 4. with `batching` off, every transaction is a batch of one
//!    ([`CloseReason::Unbatched`]).

use super::bounds::{
    BATCH_DELAY_US_DEFAULT, BATCH_DELAY_US_LIMIT, BATCH_TXNS_DEFAULT, BATCH_TXNS_MAX,
};

/// A [`BatchPolicy`] out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchPolicyError {
    #[error("batch_txns_max {batch_txns_max} is outside 1..={BATCH_TXNS_MAX}")]
    BatchTxns { batch_txns_max: usize },
    #[error("batch_delay_us_max {batch_delay_us_max} is above {BATCH_DELAY_US_LIMIT}")]
    BatchDelay { batch_delay_us_max: u64 },
}

/// When batches close: a size bound, a time bound, and the switch to turn batching off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    batch_txns_max: usize,
    batch_delay_us_max: u64,
    batching: bool,
}

impl BatchPolicy {
    /// A policy within the bounds of [`bounds`](super::bounds).
    pub fn new(
        batch_txns_max: usize,
        batch_delay_us_max: u64,
        batching: bool,
    ) -> Result<Self, BatchPolicyError> {
        if batch_txns_max == 0 || batch_txns_max > BATCH_TXNS_MAX {
            return Err(BatchPolicyError::BatchTxns { batch_txns_max });
        }
        if batch_delay_us_max > BATCH_DELAY_US_LIMIT {
            return Err(BatchPolicyError::BatchDelay { batch_delay_us_max });
        }
        Ok(Self {
            batch_txns_max,
            batch_delay_us_max,
            batching,
        })
    }

    /// The most transactions one batch holds: `batch_txns_max`, or 1 without batching.
    pub fn batch_txns_limit(&self) -> usize {
        if self.batching {
            self.batch_txns_max
        } else {
            1
        }
    }

    /// The time bound on the oldest transaction of an open batch.
    pub fn batch_delay_us_max(&self) -> u64 {
        self.batch_delay_us_max
    }

    /// Whether batching is on.
    pub fn batching(&self) -> bool {
        self.batching
    }
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            batch_txns_max: BATCH_TXNS_DEFAULT,
            batch_delay_us_max: BATCH_DELAY_US_DEFAULT,
            batching: true,
        }
    }
}

/// Why a batch closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// It reached `batch_txns_max`.
    Full,
    /// Its oldest transaction waited `batch_delay_us_max`.
    Delay,
    /// The next stage had nothing to do.
    NextStageIdle,
    /// Batching is off: every transaction is its own batch.
    Unbatched,
}

/// The open batch is full: the offered item comes back; close the batch, then offer it
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the open batch is full; close it before offering more")]
pub struct BatchFull<T>(pub T);

/// What [`Batcher::poll`] tells the stage to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPoll {
    /// A batch of this many transactions was moved to the caller's buffer.
    Closed { reason: CloseReason, txns: usize },
    /// Keep the batch open; call again by this time (µs) at the latest.
    WakeAt { deadline_us: u64 },
    /// Nothing is open: wait for input only.
    Empty,
}

/// Collects transactions into the open batch and decides when it closes.
///
/// The open batch is one buffer, allocated once at `batch_txns_limit` and reused: a
/// closed batch is *moved* into a buffer the caller owns (and reuses) too.
#[derive(Debug)]
pub struct Batcher<T> {
    policy: BatchPolicy,
    open: Vec<T>,
    /// When the oldest transaction of the open batch arrived; meaningless when empty.
    oldest_us: u64,
}

impl<T> Batcher<T> {
    /// A batcher with an empty open batch.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            open: Vec::with_capacity(policy.batch_txns_limit()),
            oldest_us: 0,
        }
    }

    /// Adds `item`, arrived at `now_us`, to the open batch. When the batch is already at
    /// its limit the item comes back: close the batch first.
    pub fn offer(&mut self, item: T, now_us: u64) -> Result<(), BatchFull<T>> {
        if self.open.len() >= self.policy.batch_txns_limit() {
            return Err(BatchFull(item));
        }
        if self.open.is_empty() {
            self.oldest_us = now_us;
        }
        self.open.push(item);
        Ok(())
    }

    /// Whether the open batch must close now, and why. `next_stage_idle` is the hint of
    /// the hop to the next stage (`consumer_idle()`).
    pub fn should_close(&self, now_us: u64, next_stage_idle: bool) -> Option<CloseReason> {
        if self.open.is_empty() {
            return None;
        }
        if !self.policy.batching {
            return Some(CloseReason::Unbatched);
        }
        if self.open.len() >= self.policy.batch_txns_max {
            return Some(CloseReason::Full);
        }
        if now_us.saturating_sub(self.oldest_us) >= self.policy.batch_delay_us_max {
            return Some(CloseReason::Delay);
        }
        if next_stage_idle {
            return Some(CloseReason::NextStageIdle);
        }
        None
    }

    /// Moves the open batch to the end of `out` and returns how many transactions it
    /// held. Both buffers keep their capacity.
    pub fn close_into(&mut self, out: &mut Vec<T>) -> usize {
        let txns = self.open.len();
        out.append(&mut self.open);
        txns
    }

    /// Closes the open batch into `out` if the rules say so; otherwise says when to call
    /// again. The one call a batcher stage needs after taking in new transactions and
    /// after every wakeup.
    pub fn poll(&mut self, now_us: u64, next_stage_idle: bool, out: &mut Vec<T>) -> BatchPoll {
        match self.should_close(now_us, next_stage_idle) {
            Some(reason) => BatchPoll::Closed {
                reason,
                txns: self.close_into(out),
            },
            None => match self.deadline_us() {
                Some(deadline_us) => BatchPoll::WakeAt { deadline_us },
                None => BatchPoll::Empty,
            },
        }
    }

    /// When the open batch closes by time at the latest; `None` when nothing is open.
    pub fn deadline_us(&self) -> Option<u64> {
        if self.open.is_empty() {
            return None;
        }
        Some(
            self.oldest_us
                .saturating_add(self.policy.batch_delay_us_max),
        )
    }

    /// Transactions in the open batch.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The policy this batcher follows.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }
}
