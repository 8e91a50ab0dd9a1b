//! The client-facing stages: intake and batcher, the active coordinator, completion.
//!
//! ```text
//! submit ──MPSC──▶ batcher ──SPSC──▶ active coordinator ◀──frames──▶ replicas, participants
//!                                         │
//!                                         └──SPSC──▶ completion ──▶ tickets
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::{EngineMetrics, LocalHistogram, Stage, LATENCY_BOUNDS_US};
use crate::pipeline::mpsc::MpscReceiver;
use crate::pipeline::spsc::{SpscReceiver, SpscSender};
use crate::pipeline::{
    AbortReason, Admission, BatchPoll, Batcher, CompletionId, MonotonicClock, Outcome, Received,
};
use crate::proto::{self, BatchId, BatchInput, Coordinator, Op, SiteId, TxnId};

use super::site::{Drain, SiteError, SiteIo};
use super::txn::Txn;

/// Client batches waiting between the batcher and the coordinator. Small: the
/// coordinator only takes a batch when its in-flight window has room, and a batch that
/// waits here is a batch that could still grow.
pub const BATCHES_QUEUED_MAX: usize = 2;
/// Completion chunks between the coordinator and the completion stage.
pub const COMPLETION_CHUNKS_CAPACITY: usize = 1024;

/// An admitted transaction on its way to a batch.
pub struct Pending {
    pub txn: Txn,
    pub completion: CompletionId,
    /// When `Engine::submit` took it, on the engine's clock (for the latency metric).
    pub submitted_us: u64,
}

/// A closed batch: the protocol's input plus the tickets, in batch order.
pub struct ClientBatch {
    pub input: BatchInput,
    pub completions: Vec<CompletionId>,
    /// Each transaction's submission time, in batch order.
    pub submitted_us: Vec<u64>,
    /// When the batcher closed it, on the engine's clock.
    pub closed_us: u64,
}

/// Outcomes for some transactions of one batch, for the completion stage.
pub struct CompletionChunk {
    pub completions: Vec<CompletionId>,
    /// The transaction of each completion, in the same order.
    pub txns: Vec<TxnId>,
    pub outcome: Outcome,
    /// Each completion's submission time, in the same order.
    pub submitted_us: Vec<u64>,
    /// When the coordinator handed the outcomes on, on the engine's clock.
    pub routed_us: u64,
}

/// Engine-wide counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub batches: AtomicU64,
    pub batch_txns_total: AtomicU64,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
}

/// Maps a participant index to its site id: replicas take the ids below.
pub fn participant_site(replicas: usize, participant: u8) -> SiteId {
    SiteId(replicas as u8 + participant)
}

/// The batcher's inputs and outputs.
pub struct BatcherStage {
    pub intake: MpscReceiver<Pending>,
    pub batcher: Batcher<Pending>,
    pub to_coordinator: SpscSender<ClientBatch>,
    pub clock: Arc<MonotonicClock>,
    pub replicas: usize,
    pub participants: usize,
    pub stats: Arc<EngineStats>,
    pub metrics: Arc<EngineMetrics>,
}

/// Takes admitted transactions, closes batches by size, time or an idle coordinator,
/// and hands them on. Returns when every submitter is gone and the intake is drained.
pub fn run_batcher(mut stage: BatcherStage) {
    let mut taken: Vec<Pending> = Vec::new();
    let mut closed: Vec<Pending> = Vec::new();
    let mut batching_us = LocalHistogram::new(LATENCY_BOUNDS_US);
    let mut intake_closed = false;
    while !(intake_closed && stage.batcher.is_empty()) {
        let deadline_us = stage.batcher.deadline_us();
        let deadline = deadline_us.and_then(|at| stage.clock.instant_at(at));
        let room = stage.batcher.policy().batch_txns_limit() - stage.batcher.len();
        taken.clear();
        match stage.intake.wait_batch(&mut taken, room.max(1), deadline) {
            Received::Closed => intake_closed = true,
            Received::Items(_) | Received::TimedOut => {}
        }
        let now_us = stage.clock.now_us();
        for pending in taken.drain(..) {
            // `room` guarantees the batch has space for everything taken.
            if stage.batcher.offer(pending, now_us).is_err() {
                unreachable!("took no more than the room left in the open batch");
            }
        }
        let idle = stage.to_coordinator.consumer_idle()
            && stage.to_coordinator.slots_free() == BATCHES_QUEUED_MAX;
        let force = intake_closed;
        closed.clear();
        let closed_now = match stage.batcher.poll(now_us, idle || force, &mut closed) {
            BatchPoll::Closed { .. } => true,
            BatchPoll::WakeAt { .. } | BatchPoll::Empty => false,
        };
        if closed_now {
            let batch = build_batch(
                &mut closed,
                stage.replicas,
                stage.participants,
                now_us,
                &mut batching_us,
            );
            batching_us.flush_into(&stage.metrics.stage_us[Stage::Batching as usize]);
            stage.stats.batches.fetch_add(1, Ordering::Relaxed);
            stage
                .stats
                .batch_txns_total
                .fetch_add(batch.completions.len() as u64, Ordering::Relaxed);
            stage.metrics.batches.fetch_add(1, Ordering::Relaxed);
            stage
                .metrics
                .batch_txns
                .observe(batch.completions.len() as u64);
            push_blocking(&mut stage.to_coordinator, batch);
        }
    }
}

/// Waits (parked in short steps) for room in the coordinator's queue: the batcher has
/// nothing better to do, and admission already bounds what piles up behind it. The loop
/// ends when the coordinator takes the batch or is gone (a stopped or failed engine);
/// it needs no retry count because each step is a park, not a spin.
fn push_blocking(to: &mut SpscSender<ClientBatch>, mut batch: ClientBatch) {
    const FULL_PARK_US: u64 = 50;
    loop {
        match to.push(batch) {
            Ok(()) => return,
            Err(error) if error.is_full() => {
                batch = error.into_inner();
                std::thread::park_timeout(std::time::Duration::from_micros(FULL_PARK_US));
            }
            // The coordinator is gone (fatal error): the engine completes every ticket.
            Err(_) => return,
        }
    }
}

/// Turns closed transactions into the protocol's batch input: per-transaction member
/// masks and each participant's operations in batch order.
fn build_batch(
    closed: &mut Vec<Pending>,
    replicas: usize,
    participants: usize,
    closed_us: u64,
    batching_us: &mut LocalHistogram,
) -> ClientBatch {
    let len = closed.len();
    let mut input = BatchInput {
        txns: Vec::with_capacity(len),
        members: Vec::with_capacity(len),
        ops: (0..participants)
            .map(|index| (participant_site(replicas, index as u8), Vec::new()))
            .collect(),
    };
    let mut completions = Vec::with_capacity(len);
    let mut submitted_us = Vec::with_capacity(len);
    for pending in closed.drain(..) {
        batching_us.observe(closed_us.saturating_sub(pending.submitted_us));
        submitted_us.push(pending.submitted_us);
        let mut mask = 0u64;
        for leg in pending.txn.legs() {
            let site = participant_site(replicas, leg.participant);
            mask |= site.bit();
            input.ops[leg.participant as usize].1.push(Op {
                txn: pending.txn.id,
                payload: leg.payload,
            });
        }
        input.txns.push(pending.txn.id);
        input.members.push(mask);
        completions.push(pending.completion);
    }
    input.ops.retain(|(_, ops)| !ops.is_empty());
    ClientBatch {
        input,
        completions,
        submitted_us,
        closed_us,
    }
}

/// A batch the active coordinator opened whose outcomes are not all reported yet.
struct OpenBatch {
    completions: Vec<CompletionId>,
    txns: Vec<TxnId>,
    txns_left: u32,
    submitted_us: Vec<u64>,
}

/// The active coordinator's extra state.
pub struct ActiveStage {
    pub batches: SpscReceiver<ClientBatch>,
    pub to_completion: SpscSender<CompletionChunk>,
    pub window_batches: usize,
}

/// The loop of the active coordinator replica.
pub fn run_active(
    mut coordinator: Coordinator,
    mut io: SiteIo,
    mut stage: ActiveStage,
) -> Result<Coordinator, SiteError> {
    // At most `window_batches` entries: a batch is only submitted while there is room.
    let mut open: HashMap<BatchId, OpenBatch> = HashMap::new();
    // Chunks the completion hop had no room for yet. Bounded by the transactions in
    // flight, which admission caps at `intake_capacity_txns`: each appears in one chunk.
    let mut unsent: Vec<CompletionChunk> = Vec::new();
    let mut drain = Drain::new();
    io.flush(&mut coordinator)?;
    loop {
        if io.halted() {
            return Ok(coordinator);
        }
        let mut worked = take_batches(&mut coordinator, &mut io, &mut stage, &mut open);
        worked += io.take_frames(&mut coordinator);
        if let Some(down) = io.links_down_changed() {
            coordinator.set_links_down(io.clock.now_us(), down, &mut io.out);
            worked += 1;
        }
        io.fire_timer(&mut coordinator);
        let completions = std::mem::take(&mut io.out.completions);
        io.flush(&mut coordinator)?;
        route(completions, &mut open, &mut unsent, &mut io.observe);
        if !io.keep_overlapping(worked > 0) {
            io.finish_sync(&mut coordinator)?;
        }
        io.idle_sync(&mut coordinator, worked > 0)?;
        let released = std::mem::take(&mut io.out.completions);
        route(released, &mut open, &mut unsent, &mut io.observe);
        io.observe.refresh(io.clock.now_us());
        if !unsent.is_empty() {
            let _ = stage.to_completion.push_from(&mut unsent);
        }
        if worked > 0 {
            continue;
        }
        let batcher_gone = stage.batches.is_closed() && !stage.batches.has_items();
        let idle = batcher_gone && open.is_empty() && unsent.is_empty();

        if idle && io.stop_requested() && drain.may_leave(&coordinator, &io) {
            io.sync_all()?;
            return Ok(coordinator);
        }
        let batches = &stage.batches;
        let room = has_room(&coordinator, &open, stage.window_batches);
        io.wait(&coordinator, drain.deadline(io.drain_max), || {
            room && batches.has_items()
        });
    }
}

/// True if fewer than `window_batches` of the open batches are undecided. A decided
/// batch stays in `open` while some of its client completions wait for the holding
/// batches of resent ids (up to `ProtoConfig::undecided_wait_us`, e.g. the in-doubt
/// batches of a killed replica until their termination): counting it would stall every
/// new batch of this replica for that long, and a resend that waited that long in the
/// intake could reach the participants after they forgot its id's first instance.
/// Linear in `open` only when the window is nominally full (`open` holds at most the
/// window plus the decided batches still waiting, bounded by the intake).
fn has_room(
    coordinator: &Coordinator,
    open: &HashMap<BatchId, OpenBatch>,
    window_batches: usize,
) -> bool {
    open.len() < window_batches
        || open
            .keys()
            .filter(|&&batch| !coordinator.is_decided(batch))
            .take(window_batches)
            .count()
            < window_batches
}

/// Submits queued client batches while the window has room.
fn take_batches(
    coordinator: &mut Coordinator,
    io: &mut SiteIo,
    stage: &mut ActiveStage,
    open: &mut HashMap<BatchId, OpenBatch>,
) -> usize {
    let mut taken = 0;
    while has_room(coordinator, open, stage.window_batches) {
        let Some(batch) = stage.batches.pop() else {
            break;
        };
        let now_us = io.clock.now_us();
        io.observe
            .stage_waited(Stage::Queued, now_us.saturating_sub(batch.closed_us));
        let txns_left = batch.completions.len() as u32;
        let txns = batch.input.txns.clone();
        let participants = batch.input.members.iter().fold(0, |mask, m| mask | m);
        match coordinator.submit(now_us, batch.input, &mut io.out) {
            Ok(id) => {
                let vote_timeout_us = coordinator.vote_timeout_us(participants);
                io.stats
                    .vote_timeout_us
                    .store(vote_timeout_us, std::sync::atomic::Ordering::Relaxed);
                io.observe.batch_opened(id, now_us, txns_left, participants);
                let open_batch = OpenBatch {
                    completions: batch.completions,
                    txns,
                    txns_left,
                    submitted_us: batch.submitted_us,
                };
                open.insert(id, open_batch);
            }
            Err(error) => {
                // The batcher only builds well-formed batches; should one slip through,
                // its clients learn that it was refused rather than hang.
                debug_assert!(false, "coordinator refused a batch: {error}");
                let _ = error;
                let aborted = Outcome::Aborted(AbortReason::Rejected(proto::Reason::MALFORMED));
                let _ = stage.to_completion.push(CompletionChunk {
                    completions: batch.completions,
                    txns,
                    outcome: aborted,
                    submitted_us: batch.submitted_us,
                    routed_us: now_us,
                });
            }
        }
        taken += 1;
    }
    taken
}

/// Turns the protocol's completions into ticket completions.
fn route(
    completions: Vec<proto::Completion>,
    open: &mut HashMap<BatchId, OpenBatch>,
    unsent: &mut Vec<CompletionChunk>,
    observe: &mut crate::metrics::observe::SiteObserver,
) {
    if completions.is_empty() {
        return;
    }
    // One clock read per call: when these outcomes leave the coordinator.
    let routed_us = observe.clock_us();
    for completion in completions {
        let Some(batch) = open.get_mut(&completion.batch) else {
            continue;
        };
        let outcome = match completion.outcome {
            proto::Outcome::Commit => Outcome::Committed,
            proto::Outcome::Abort => Outcome::Aborted(AbortReason::Terminated),
        };
        // One chunk per distinct outcome: an abort with a known reason (a no vote, a
        // vote timeout) reaches its client as `Rejected(reason)`.
        let first_chunk = unsent.len();
        let mut reasons = completion.reasons.iter().peekable();
        let mut held = completion.held.iter().peekable();
        for index in completion.txns.iter() {
            let i = index as usize;
            if i >= batch.completions.len() {
                continue;
            }
            while reasons.next_if(|(at, _)| *at < index).is_some() {}
            while held.next_if(|(at, ..)| *at < index).is_some() {}
            let outcome = match (held.peek(), reasons.peek()) {
                // A resend refused because another batch holds its id: the client
                // hears that batch's outcome for the id, never this instance's abort.
                (Some(&&(at, _, found)), _) if at == index => held_outcome(found),
                (_, Some(&&(at, reason))) if at == index => {
                    Outcome::Aborted(AbortReason::Rejected(reason))
                }
                _ => outcome,
            };
            let chunk = match unsent[first_chunk..]
                .iter_mut()
                .find(|chunk| chunk.outcome == outcome)
            {
                Some(chunk) => chunk,
                None => {
                    unsent.push(CompletionChunk {
                        completions: Vec::new(),
                        txns: Vec::new(),
                        outcome,
                        submitted_us: Vec::new(),
                        routed_us,
                    });
                    unsent.last_mut().expect("just pushed")
                }
            };
            chunk.completions.push(batch.completions[i]);
            chunk.txns.push(batch.txns[i]);
            chunk.submitted_us.push(batch.submitted_us[i]);
            batch.txns_left = batch.txns_left.saturating_sub(1);
        }
        if batch.txns_left == 0 {
            open.remove(&completion.batch);
            observe.batch_decided(completion.batch, routed_us);
        }
    }
}

/// What the client of a resend refused as held by another batch hears: that batch's
/// outcome for the id (an abort says `HELD_BY_BATCH`: the id is aborted for good), or
/// `InDoubt` if it stayed undecided past the coordinator's wait (ask again later).
fn held_outcome(found: proto::ids::HeldOutcome) -> Outcome {
    match found {
        proto::ids::HeldOutcome::Known(proto::Outcome::Commit) => Outcome::Committed,
        proto::ids::HeldOutcome::Known(proto::Outcome::Abort) => {
            Outcome::Aborted(AbortReason::Rejected(proto::Reason::HELD_BY_BATCH))
        }
        proto::ids::HeldOutcome::Pending | proto::ids::HeldOutcome::Unknown => Outcome::InDoubt,
    }
}

/// Completes tickets until the coordinator is gone and everything it sent is done.
pub fn run_completion(
    mut from: SpscReceiver<CompletionChunk>,
    admission: Arc<Admission>,
    stats: Arc<EngineStats>,
    dedup: Arc<super::dedup::Dedup>,
    metrics: Arc<EngineMetrics>,
    clock: Arc<crate::pipeline::MonotonicClock>,
) {
    let mut latency_us = LocalHistogram::new(LATENCY_BOUNDS_US);
    let mut chunks = Vec::new();
    let mut scratch = Vec::new();
    let mut duplicates = Vec::new();
    loop {
        chunks.clear();
        if let Received::Closed = from.wait_batch(&mut chunks, COMPLETION_CHUNKS_CAPACITY, None) {
            return;
        }
        // One clock read per wake-up; every transaction's latency is counted locally
        // and folded into the shared histogram once.
        let now_us = clock.now_us();
        for chunk in chunks.iter() {
            metrics.record_outcomes(chunk.outcome, chunk.completions.len() as u64);
            metrics.stage_us[Stage::Completion as usize].observe_n(
                now_us.saturating_sub(chunk.routed_us),
                chunk.completions.len() as u64,
            );
            for &submitted in &chunk.submitted_us {
                latency_us.observe(now_us.saturating_sub(submitted));
            }
        }
        latency_us.flush_into(&metrics.txn_latency_us);
        for chunk in chunks.drain(..) {
            let counter = match chunk.outcome {
                Outcome::Committed => &stats.committed,
                _ => &stats.aborted,
            };
            counter.fetch_add(chunk.completions.len() as u64, Ordering::Relaxed);
            // The decided ids are recorded before any ticket wakes: a client that
            // resubmits an id as soon as its ticket completes must find it decided
            // (a ready ticket with the outcome), never still in flight.
            duplicates.clear();
            dedup.decide_all(&chunk.txns, chunk.outcome, &mut scratch, &mut duplicates);
            // A stale id means the ticket was already completed (at a fatal error).
            admission.complete_chunk(&chunk.completions, chunk.outcome);
            // Duplicates submitted while the id was in flight wait on tickets of their
            // own, completed with the original's outcome.
            admission.complete_chunk(&duplicates, chunk.outcome);
        }
    }
}
