//! Tests of the batcher's closing rules, with time passed in.

use proptest::prelude::*;
use tricommit_engine::pipeline::batcher::{BatchFull, BatchPolicyError};
use tricommit_engine::pipeline::bounds::{BATCH_DELAY_US_LIMIT, BATCH_TXNS_MAX};
use tricommit_engine::pipeline::{BatchPolicy, BatchPoll, Batcher, CloseReason, MonotonicClock};

const DELAY_US: u64 = 200;

fn batcher(batch_txns_max: usize, batching: bool) -> Batcher<u32> {
    Batcher::new(BatchPolicy::new(batch_txns_max, DELAY_US, batching).expect("valid policy"))
}

#[test]
fn a_batch_closes_when_it_reaches_batch_txns_max() {
    // The batch closes by size at exactly `batch_txns_max`, even with the next stage
    // busy and no time passed, and refuses a further item until it is closed.
    let mut batcher = batcher(3, true);
    for txn in 0..3 {
        batcher.offer(txn, 0).expect("room");
    }
    assert_eq!(batcher.offer(99, 0), Err(BatchFull(99)));
    let mut out = Vec::new();
    assert_eq!(
        batcher.poll(0, false, &mut out),
        BatchPoll::Closed {
            reason: CloseReason::Full,
            txns: 3
        }
    );
    assert_eq!(out, [0, 1, 2]);
    assert!(batcher.is_empty());
    batcher.offer(99, 0).expect("room after closing");
}

#[test]
fn a_batch_closes_when_its_oldest_txn_waited_the_delay() {
    // With the next stage busy, the batch stays open until its *oldest* transaction has
    // waited `batch_delay_us_max`, and says when to wake up.
    let mut batcher = batcher(100, true);
    let mut out = Vec::new();
    batcher.offer(1, 1_000).expect("room");
    batcher.offer(2, 1_150).expect("room");
    assert_eq!(batcher.deadline_us(), Some(1_000 + DELAY_US));
    assert_eq!(
        batcher.poll(1_199, false, &mut out),
        BatchPoll::WakeAt { deadline_us: 1_200 }
    );
    assert!(out.is_empty());
    assert_eq!(
        batcher.poll(1_200, false, &mut out),
        BatchPoll::Closed {
            reason: CloseReason::Delay,
            txns: 2
        }
    );
    assert_eq!(out, [1, 2]);
    assert_eq!(batcher.deadline_us(), None);
}

#[test]
fn a_lone_txn_leaves_at_once_when_the_next_stage_is_idle() {
    // A single transaction does not wait for a timer when the next stage is idle.
    let mut batcher = batcher(100, true);
    let mut out = Vec::new();
    batcher.offer(7, 50).expect("room");
    assert_eq!(batcher.should_close(50, false), None);
    assert_eq!(
        batcher.poll(50, true, &mut out),
        BatchPoll::Closed {
            reason: CloseReason::NextStageIdle,
            txns: 1
        }
    );
    assert_eq!(out, [7]);
}

#[test]
fn without_batching_every_txn_is_a_batch_of_one() {
    // With batching off, each transaction closes alone at once, whatever the size bound
    // and the next stage say, and a second one is refused until the first has left.
    let mut batcher = batcher(100, false);
    let mut out = Vec::new();
    batcher.offer(1, 0).expect("room");
    assert_eq!(batcher.offer(2, 0), Err(BatchFull(2)));
    assert_eq!(
        batcher.poll(0, false, &mut out),
        BatchPoll::Closed {
            reason: CloseReason::Unbatched,
            txns: 1
        }
    );
    batcher.offer(2, 0).expect("room");
    assert_eq!(
        batcher.poll(0, false, &mut out),
        BatchPoll::Closed {
            reason: CloseReason::Unbatched,
            txns: 1
        }
    );
    assert_eq!(out, [1, 2]);
}

#[test]
fn an_empty_batcher_asks_only_for_input() {
    // With nothing open there is nothing to close and no deadline, even when the next
    // stage is idle and time has passed.
    let mut batcher = batcher(4, true);
    let mut out = Vec::new();
    assert_eq!(batcher.poll(u64::MAX, true, &mut out), BatchPoll::Empty);
    assert_eq!(batcher.deadline_us(), None);
    assert!(out.is_empty());
}

#[test]
fn closing_reuses_both_buffers() {
    // Closing moves the batch into the caller's buffer without reallocating it, batch
    // after batch.
    let mut batcher = batcher(8, true);
    let mut out: Vec<u32> = Vec::with_capacity(8);
    let buffer = out.as_ptr();
    for round in 0..100 {
        for txn in 0..8 {
            batcher.offer(round * 8 + txn, 0).expect("room");
        }
        assert_eq!(batcher.close_into(&mut out), 8);
        assert_eq!(out.first(), Some(&(round * 8)));
        assert_eq!(out.as_ptr(), buffer, "the caller's buffer was reallocated");
        out.clear();
    }
}

#[test]
fn policies_out_of_bounds_are_typed_errors() {
    // A zero or oversized batch and an oversized delay are refused with their values.
    assert_eq!(
        BatchPolicy::new(0, 1, true),
        Err(BatchPolicyError::BatchTxns { batch_txns_max: 0 })
    );
    let batch_txns_max = BATCH_TXNS_MAX + 1;
    assert_eq!(
        BatchPolicy::new(batch_txns_max, 1, true),
        Err(BatchPolicyError::BatchTxns { batch_txns_max })
    );
    let batch_delay_us_max = BATCH_DELAY_US_LIMIT + 1;
    assert_eq!(
        BatchPolicy::new(1, batch_delay_us_max, true),
        Err(BatchPolicyError::BatchDelay { batch_delay_us_max })
    );
    assert_eq!(
        BatchPolicy::new(1, 1, false).map(|policy| policy.batch_txns_limit()),
        Ok(1)
    );
}

#[test]
fn the_clock_converts_its_microseconds_back_to_instants() {
    // A time read from the clock maps back to an instant that has already passed, and the
    // farthest time converts without a panic (to `None` where `Instant` cannot hold it).
    let clock = MonotonicClock::new();
    let now_us = clock.now_us();
    let instant = clock.instant_at(now_us).expect("representable");
    assert!(instant <= std::time::Instant::now());
    assert!(clock.now_us() >= now_us, "the clock went backwards");
    if let Some(far) = clock.instant_at(u64::MAX) {
        assert!(far > instant);
    }
}

/// One step of a simulated batcher stage: a transaction arrives after `gap_us`, and the
/// next stage is idle or not.
fn steps() -> impl Strategy<Value = Vec<(u64, bool)>> {
    proptest::collection::vec((0u64..120, any::<bool>()), 1..400)
}

/// The downstream side of the simulated stage: checks what a close delivered at `now_us`.
struct Downstream {
    arrived_us: Vec<u64>,
    delivered: usize,
}

impl Downstream {
    fn take(&mut self, out: &mut Vec<usize>, now_us: u64) -> Result<(), TestCaseError> {
        for txn in out.drain(..) {
            prop_assert_eq!(txn, self.delivered, "batches reordered transactions");
            let waited_us = now_us - self.arrived_us[txn];
            prop_assert!(waited_us <= DELAY_US, "txn {} waited {} us", txn, waited_us);
            self.delivered += 1;
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn a_simulated_stage_keeps_every_bound(
        steps in steps(),
        batch_txns_max in 1usize..16,
        batching in any::<bool>(),
    ) {
        // Driven like a stage (offer, poll, and wake at the deadline it asked for), the
        // batcher keeps the order, never exceeds its size, closes by time no later than
        // the deadline, and closes at once whenever the next stage is idle.
        let policy = BatchPolicy::new(batch_txns_max, DELAY_US, batching).expect("valid");
        let mut batcher = Batcher::new(policy);
        let mut downstream = Downstream { arrived_us: Vec::new(), delivered: 0 };
        let mut out = Vec::new();
        let mut now_us = 0u64;
        for (txn, (gap_us, next_stage_idle)) in steps.into_iter().enumerate() {
            let arrival_us = now_us + gap_us;
            // The stage wakes at the deadline it was given if that comes first.
            if let Some(deadline_us) = batcher.deadline_us().filter(|d| *d <= arrival_us) {
                now_us = deadline_us;
                let poll = batcher.poll(now_us, false, &mut out);
                let closed_by_delay =
                    matches!(poll, BatchPoll::Closed { reason: CloseReason::Delay, .. });
                prop_assert!(closed_by_delay, "the deadline passed and the batch stayed open");
                downstream.take(&mut out, now_us)?;
            }
            now_us = arrival_us;
            if let Err(BatchFull(back)) = batcher.offer(txn, now_us) {
                prop_assert_eq!(batcher.len(), policy.batch_txns_limit());
                batcher.close_into(&mut out);
                downstream.take(&mut out, now_us)?;
                batcher.offer(back, now_us).expect("room after closing");
            }
            downstream.arrived_us.push(now_us);
            let poll = batcher.poll(now_us, next_stage_idle, &mut out);
            if next_stage_idle || !batching {
                let closed = matches!(poll, BatchPoll::Closed { .. });
                prop_assert!(closed, "the next stage is idle and the batch stayed open");
            }
            if let BatchPoll::Closed { txns, .. } = poll {
                prop_assert!(txns >= 1 && txns <= policy.batch_txns_limit());
            }
            downstream.take(&mut out, now_us)?;
        }
        batcher.close_into(&mut out);
        prop_assert_eq!(downstream.delivered + out.len(), downstream.arrived_us.len());
    }
}
