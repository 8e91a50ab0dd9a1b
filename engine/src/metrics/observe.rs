//! What one site stage records as parts go in and out: phase durations and vote
//! latencies (active coordinator), termination rounds (any replica), WAL syncs, the
//! in-doubt gauge, and, when tracing is on, a span per phase of each batch.
//!
//! The protocol core stays clock-free: the runtime calls these hooks with the
//! `now_us` it already read for the turn. Every hook works per part (one part per
//! batch and peer), never per transaction, and every map here is bounded.
//!
//! Phases of a batch at the active coordinator (docs/ops.md explains why these cuts):
//! - prepare: from the batch's submission to the coordinator until the last expected
//!   VOTES part arrives (or, when a vote never comes, until the batch is decided);
//! - pre-commit: from then until every transaction of the batch is decided and handed
//!   to the clients (the PRE-COMMIT round's quorum, or the commit record in 2PC);
//! - commit: from then until every site reported the batch durable and done (FORGET).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::pipeline::MonotonicClock;
use crate::proto::{BatchId, Part, SiteId, ELECTED_INITIAL};

use super::trace::{self, BatchSpans};
use super::{EngineMetrics, Phase, SiteMetrics, TerminationResult};

/// Batches the active coordinator tracks at once; a batch opened past this is not
/// timed (the window is far smaller; the bound only matters if FORGETs stop).
pub const BATCHES_TRACKED_MAX: usize = 4_096;
/// A tracked batch older than this is dropped without a commit-phase sample: some site
/// never reported it done (it is down), and the in-doubt gauge already shows it.
pub const BATCH_TRACKED_US_MAX: u64 = 60_000_000;
/// Termination rounds a replica tracks at once.
pub const TERMINATIONS_TRACKED_MAX: usize = 1_024;
/// Phase spans a site holds open at once (tracing on).
pub const SITE_SPANS_MAX: usize = 4_096;
/// How often the active coordinator recomputes the in-doubt gauge and sweeps old batches.
pub const IN_DOUBT_REFRESH_US: u64 = 10_000;

/// One batch as the active coordinator times it.
#[derive(Debug)]
struct BatchTrack {
    opened_us: u64,
    txns: u32,
    /// Participants sent a PREPARE, and those whose votes arrived.
    expected: u64,
    voted: u64,
    votes_done_us: Option<u64>,
    decided_us: Option<u64>,
    root: Option<tracing::Span>,
    phase: Option<tracing::Span>,
}

/// A termination round this replica drives.
#[derive(Debug)]
struct Termination {
    elected: u32,
    round_counted: bool,
    txns: u32,
}

/// The recording half of one site stage.
#[derive(Debug)]
pub struct SiteObserver {
    metrics: Arc<EngineMetrics>,
    me: SiteId,
    /// Transactions undecided for longer than this are in doubt.
    in_doubt_after_us: u64,
    batches: HashMap<BatchId, BatchTrack>,
    terminations: HashMap<BatchId, Termination>,
    spans: Arc<BatchSpans>,
    clock: Arc<MonotonicClock>,
    /// This site's open phase spans (tracing on), by batch and phase.
    site_spans: HashMap<(BatchId, u8), tracing::Span>,
    in_doubt_refreshed_us: u64,
    /// Batches this coordinator opened while tracing was on (for sampling).
    traced_candidates: u64,
    sync_started_us: Option<u64>,
    bytes_since_sync: u64,
}

impl SiteObserver {
    pub fn new(
        metrics: Arc<EngineMetrics>,
        me: SiteId,
        in_doubt_after_us: u64,
        spans: Arc<BatchSpans>,
        clock: Arc<MonotonicClock>,
    ) -> SiteObserver {
        SiteObserver {
            metrics,
            me,
            in_doubt_after_us,
            batches: HashMap::new(),
            terminations: HashMap::new(),
            spans,
            clock,
            site_spans: HashMap::new(),
            in_doubt_refreshed_us: 0,
            traced_candidates: 0,
            sync_started_us: None,
            bytes_since_sync: 0,
        }
    }

    /// The site's clock, for the hooks that have no `now_us` at hand.
    pub fn clock_us(&self) -> u64 {
        self.clock.now_us()
    }

    fn site(&self) -> &SiteMetrics {
        self.metrics.site(self.me.0 as usize)
    }

    /// The batch root spans this site shares with its process (the cluster's transport
    /// reads and joins them to carry traces across processes).
    pub fn spans(&self) -> &Arc<BatchSpans> {
        &self.spans
    }

    /// The engine-wide metrics, for the stages that share this site's thread.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// A record of `bytes` (header included) was appended.
    pub fn appended(&mut self, bytes: u64) {
        self.bytes_since_sync += bytes;
        let site = self.site();
        site.wal_records.fetch_add(1, Ordering::Relaxed);
        site.wal_appended_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A sync was submitted.
    pub fn sync_started(&mut self, now_us: u64) {
        self.sync_started_us = Some(now_us);
        let bytes = std::mem::take(&mut self.bytes_since_sync);
        self.site().wal_sync_bytes.observe(bytes);
    }

    /// The sync in flight completed.
    pub fn sync_finished(&mut self, now_us: u64) {
        if let Some(started) = self.sync_started_us.take() {
            let site = self.site();
            site.wal_sync_duration_us
                .observe(now_us.saturating_sub(started));
        }
    }

    pub fn checkpoint_paused(&self, pause_us: u64) {
        self.site().checkpoint_pause_us.observe(pause_us);
    }

    /// One batch or transaction waited `waited_us` in `stage`.
    pub fn stage_waited(&self, stage: super::Stage, waited_us: u64) {
        self.metrics.stage_us[stage as usize].observe(waited_us);
    }

    pub fn frame_dropped(&self) {
        self.site().frames_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The active coordinator accepted a batch of `txns` transactions whose
    /// participants are `participants` (a site mask).
    pub fn batch_opened(&mut self, batch: BatchId, now_us: u64, txns: u32, participants: u64) {
        if self.batches.len() >= BATCHES_TRACKED_MAX {
            return;
        }
        let (root, phase) = if trace::enabled() && self.sampled() {
            let root =
                tracing::info_span!(target: "tricommit::batch", "batch", batch = batch.0, txns);
            let phase = tracing::info_span!(target: "tricommit::batch", parent: &root, "prepare", batch = batch.0, site = self.me.0);
            self.spans.insert(batch, root.clone());
            (Some(root), Some(phase))
        } else {
            (None, None)
        };
        self.batches.insert(
            batch,
            BatchTrack {
                opened_us: now_us,
                txns,
                expected: participants,
                voted: 0,
                votes_done_us: None,
                decided_us: None,
                root,
                phase,
            },
        );
    }

    /// Whether the batch being opened is traced: one in `trace::sample_every()`.
    fn sampled(&mut self) -> bool {
        let candidate = self.traced_candidates;
        self.traced_candidates += 1;
        candidate % u64::from(trace::sample_every()) == 0
    }

    /// Every transaction of `batch` is decided and on its way to the clients.
    pub fn batch_decided(&mut self, batch: BatchId, now_us: u64) {
        let Some(track) = self.batches.get_mut(&batch) else {
            return;
        };
        if track.decided_us.is_some() {
            return;
        }
        let missing = track.expected & !track.voted;
        for site in crate::proto::types::sites_of(missing) {
            self.metrics
                .site(site.0 as usize)
                .vote_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        let votes_done_us = *track.votes_done_us.get_or_insert_with(|| {
            let prepare_us = now_us.saturating_sub(track.opened_us);
            self.metrics.phase_us[Phase::Prepare as usize].observe(prepare_us);
            now_us
        });
        self.metrics.phase_us[Phase::PreCommit as usize]
            .observe(now_us.saturating_sub(votes_done_us));
        track.decided_us = Some(now_us);
        if let Some(root) = &track.root {
            track.phase = Some(
                tracing::info_span!(target: "tricommit::batch", parent: root, "commit", batch = batch.0, site = self.me.0),
            );
        }
    }

    /// Before a part leaves this site.
    pub fn on_send(&mut self, now_us: u64, to: SiteId, part: &Part) {
        let _ = to;
        match part {
            Part::Forget { batch } => self.batch_forgotten(*batch, now_us),
            Part::Elect { desc, elected } => {
                self.termination_started(desc.batch, *elected, desc.txns.len() as u32);
            }
            Part::Round {
                batch,
                elected,
                pre_commit,
                ..
            } if *elected > ELECTED_INITIAL => {
                self.termination_round(*batch, *elected, !pre_commit.is_empty());
            }
            Part::Decide {
                batch,
                commit,
                abort,
                ..
            } => self.termination_decided(*batch, commit.count(), abort.count()),
            _ => {}
        }
        if trace::enabled() {
            self.close_site_span(part);
        }
    }

    /// Before a part that arrived is handed to the state machine.
    pub fn on_receive(&mut self, now_us: u64, from: SiteId, part: &Part) {
        if let Part::Votes { batch, .. } = part {
            self.votes_arrived(*batch, from, now_us);
        }
        if trace::enabled() {
            self.open_site_span(part);
        }
    }

    fn votes_arrived(&mut self, batch: BatchId, from: SiteId, now_us: u64) {
        let Some(track) = self.batches.get_mut(&batch) else {
            return;
        };
        let bit = from.bit();
        if track.expected & bit == 0 || track.voted & bit != 0 || track.decided_us.is_some() {
            return;
        }
        track.voted |= bit;
        self.metrics
            .site(from.0 as usize)
            .vote_latency_us
            .observe(now_us.saturating_sub(track.opened_us));
        if track.voted == track.expected {
            self.metrics.phase_us[Phase::Prepare as usize]
                .observe(now_us.saturating_sub(track.opened_us));
            track.votes_done_us = Some(now_us);
            if let Some(root) = &track.root {
                track.phase = Some(
                    tracing::info_span!(target: "tricommit::batch", parent: root, "pre_commit", batch = batch.0, site = self.me.0),
                );
            }
        }
    }

    fn batch_forgotten(&mut self, batch: BatchId, now_us: u64) {
        let Some(track) = self.batches.remove(&batch) else {
            return;
        };
        if let Some(decided_us) = track.decided_us {
            self.metrics.phase_us[Phase::Commit as usize]
                .observe(now_us.saturating_sub(decided_us));
        }
        if track.root.is_some() {
            self.spans.remove(batch);
        }
    }

    /// Publishes how many transactions the terminations in progress hold (on each
    /// start and decision only: both are rare).
    fn publish_terminations(&self) {
        let pending: u64 = self
            .terminations
            .values()
            .map(|termination| u64::from(termination.txns))
            .sum();
        self.site()
            .termination_pending_txns
            .store(pending, Ordering::Relaxed);
    }

    fn termination_started(&mut self, batch: BatchId, elected: u32, txns: u32) {
        if self
            .terminations
            .get(&batch)
            .is_some_and(|known| known.elected >= elected)
        {
            return;
        }
        if !self.terminations.contains_key(&batch)
            && self.terminations.len() >= TERMINATIONS_TRACKED_MAX
        {
            return;
        }
        self.terminations.insert(
            batch,
            Termination {
                elected,
                round_counted: false,
                txns,
            },
        );
        self.publish_terminations();
        self.site()
            .termination_started
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            site = %self.metrics.site_label(self.me.0 as usize),
            batch = batch.0,
            elected,
            "termination started"
        );
    }

    fn termination_round(&mut self, batch: BatchId, elected: u32, pre_commit: bool) {
        let Some(termination) = self.terminations.get_mut(&batch) else {
            return;
        };
        if termination.elected != elected || termination.round_counted {
            return;
        }
        termination.round_counted = true;
        let result = if pre_commit {
            TerminationResult::PreCommitRound
        } else {
            TerminationResult::PreAbortRound
        };
        self.site().record_termination(result);
    }

    fn termination_decided(&mut self, batch: BatchId, committed: u32, aborted: u32) {
        if self.terminations.remove(&batch).is_none() {
            return;
        }
        self.publish_terminations();
        let site = self.site();
        if committed > 0 {
            site.record_termination(TerminationResult::Commit);
        }
        if aborted > 0 {
            site.record_termination(TerminationResult::Abort);
        }
        tracing::info!(
            site = %self.metrics.site_label(self.me.0 as usize),
            batch = batch.0,
            committed,
            aborted,
            "termination decided"
        );
    }

    /// Recomputes the in-doubt gauge (active coordinator) at most every
    /// [`IN_DOUBT_REFRESH_US`], and drops batches tracked for too long.
    pub fn refresh(&mut self, now_us: u64) {
        if now_us.saturating_sub(self.in_doubt_refreshed_us) < IN_DOUBT_REFRESH_US {
            return;
        }
        self.in_doubt_refreshed_us = now_us;
        let mut in_doubt = 0u64;
        let spans = &self.spans;
        self.batches.retain(|batch, track| {
            let age_us = now_us.saturating_sub(track.opened_us);
            if track.decided_us.is_none() && age_us > self.in_doubt_after_us {
                in_doubt += u64::from(track.txns);
            }
            let keep = age_us <= BATCH_TRACKED_US_MAX;
            if !keep && track.root.is_some() {
                spans.remove(*batch);
            }
            keep
        });
        self.metrics
            .in_doubt_txns
            .store(in_doubt, Ordering::Relaxed);
    }

    /// Participant or backup replica: a part that starts a phase here opens its span.
    fn open_site_span(&mut self, part: &Part) {
        let (batch, phase) = match part {
            Part::Prepare { desc, .. } => (desc.batch, Phase::Prepare),
            Part::Round { batch, elected, .. } if *elected == ELECTED_INITIAL => {
                (*batch, Phase::PreCommit)
            }
            Part::Decide { batch, .. } => (*batch, Phase::Commit),
            _ => return,
        };
        let key = (batch, phase as u8);
        if self.site_spans.contains_key(&key) {
            return;
        }
        if self.site_spans.len() >= SITE_SPANS_MAX {
            // Replies that never left (a batch finished by recovery elsewhere) would
            // otherwise fill the map for good: close every open span and start over.
            self.site_spans.clear();
        }
        let Some(root) = self.spans.get(batch) else {
            return;
        };
        let span = tracing::info_span!(target: "tricommit::batch", parent: &root, "site_phase", phase = phase.label(), batch = batch.0, site = self.me.0);
        self.site_spans.insert(key, span);
    }

    /// The reply that ends a phase here closes its span.
    fn close_site_span(&mut self, part: &Part) {
        let key = match part {
            Part::Votes { batch, .. } => (*batch, Phase::Prepare as u8),
            Part::RoundAck { batch, elected, .. } if *elected == ELECTED_INITIAL => {
                (*batch, Phase::PreCommit as u8)
            }
            Part::Done { batch, .. } => {
                // The last phase here: a root joined from another process closes too.
                self.spans.remove_remote(*batch);
                (*batch, Phase::Commit as u8)
            }
            _ => return,
        };
        self.site_spans.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Descriptor, TxnId, TxnSet};

    const COORDINATOR: SiteId = SiteId(0);
    const P0: SiteId = SiteId(2);
    const P1: SiteId = SiteId(3);

    fn observer(me: SiteId) -> (Arc<EngineMetrics>, SiteObserver) {
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(2, 2);
        let observer = SiteObserver::new(
            metrics.clone(),
            me,
            1_000,
            Arc::new(BatchSpans::new()),
            Arc::new(MonotonicClock::new()),
        );
        (metrics, observer)
    }

    fn votes(batch: BatchId) -> Part {
        Part::Votes {
            batch,
            yes: TxnSet::full(2),
            read_only: TxnSet::empty(2),
            no: Vec::new(),
            held: Vec::new(),
        }
    }

    fn counts(metrics: &EngineMetrics) -> Vec<u64> {
        Phase::ALL
            .iter()
            .map(|phase| metrics.phase_us[*phase as usize].snapshot().count)
            .collect()
    }

    #[test]
    fn a_batch_is_timed_through_its_three_phases() {
        // Proves the phase cuts: prepare ends with the last expected vote, pre-commit
        // with the decision, commit with FORGET; each vote's latency is counted for
        // its participant, and a duplicate vote is not counted twice.
        let (metrics, mut observer) = observer(COORDINATOR);
        let batch = BatchId(7);
        observer.batch_opened(batch, 100, 2, P0.bit() | P1.bit());
        observer.on_receive(300, P0, &votes(batch));
        observer.on_receive(350, P0, &votes(batch));
        assert_eq!(counts(&metrics), vec![0, 0, 0]);
        observer.on_receive(600, P1, &votes(batch));
        observer.batch_decided(batch, 1_000);
        observer.on_send(5_000, P0, &Part::Forget { batch });
        observer.on_send(5_000, P1, &Part::Forget { batch });
        assert_eq!(counts(&metrics), vec![1, 1, 1]);
        let sums: Vec<u64> = Phase::ALL
            .iter()
            .map(|phase| metrics.phase_us[*phase as usize].snapshot().sum)
            .collect();
        assert_eq!(sums, vec![500, 400, 4_000]);
        assert_eq!(metrics.site(2).vote_latency_us.snapshot().sum, 200);
        assert_eq!(metrics.site(3).vote_latency_us.snapshot().count, 1);
        assert_eq!(metrics.site(3).vote_timeouts.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_vote_missing_at_the_decision_is_a_timeout_and_the_batch_in_doubt_until_then() {
        // Proves that a participant whose votes never came is charged a vote timeout,
        // that prepare then ends at the decision, and that the in-doubt gauge counts
        // the batch's transactions only while it is undecided past the timeout.
        let (metrics, mut observer) = observer(COORDINATOR);
        let batch = BatchId(8);
        observer.batch_opened(batch, 0, 2, P0.bit() | P1.bit());
        observer.on_receive(200, P0, &votes(batch));
        observer.refresh(IN_DOUBT_REFRESH_US);
        assert_eq!(metrics.in_doubt_txns.load(Ordering::Relaxed), 2);
        observer.batch_decided(batch, IN_DOUBT_REFRESH_US + 1);
        observer.refresh(3 * IN_DOUBT_REFRESH_US);
        assert_eq!(metrics.in_doubt_txns.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.site(3).vote_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.site(2).vote_timeouts.load(Ordering::Relaxed), 0);
        assert_eq!(counts(&metrics), vec![1, 1, 0]);
    }

    #[test]
    fn a_termination_round_is_counted_once_with_its_results() {
        // Proves that an election sent to several sites counts one round, that its
        // PRE-COMMIT round and its decision are recorded once, and that a normal-path
        // decision of another batch is not mistaken for a termination.
        let (metrics, mut observer) = observer(SiteId(1));
        let batch = BatchId(9);
        let desc = Arc::new(Descriptor {
            batch,
            txns: vec![TxnId(1), TxnId(2)],
            members: vec![P0.bit() | P1.bit(); 2],
        });
        for to in [P0, P1, COORDINATOR] {
            observer.on_send(
                0,
                to,
                &Part::Elect {
                    desc: desc.clone(),
                    elected: 2,
                },
            );
        }
        let pending = || {
            metrics
                .site(1)
                .termination_pending_txns
                .load(Ordering::Relaxed)
        };
        assert_eq!(pending(), 2);
        let round = Part::Round {
            batch,
            elected: 2,
            pre_commit: TxnSet::full(2),
            pre_abort: TxnSet::empty(2),
            desc: None,
        };
        observer.on_send(0, P0, &round);
        observer.on_send(0, P1, &round);
        let decide = |batch| Part::Decide {
            batch,
            commit: TxnSet::full(2),
            abort: TxnSet::empty(2),
            desc: None,
        };
        observer.on_send(0, P0, &decide(batch));
        observer.on_send(0, P1, &decide(batch));
        observer.on_send(0, P0, &decide(BatchId(10)));
        let site = metrics.site(1);
        assert_eq!(site.termination_started.load(Ordering::Relaxed), 1);
        let results: Vec<u64> = site
            .termination_results
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        assert_eq!(results, vec![1, 0, 1, 0]);
        assert_eq!(pending(), 0);
    }

    #[test]
    fn one_batch_in_every_n_is_sampled_for_tracing() {
        // Proves the sampling rule of `--trace-sample-every`: the first batch and then
        // every n-th one the coordinator opens is traced, and n = 1 traces them all.
        let (_, mut observer) = observer(COORDINATOR);
        trace::set_sample_every(4);
        let picks: Vec<bool> = (0..8).map(|_| observer.sampled()).collect();
        trace::set_sample_every(1);
        assert_eq!(
            picks,
            vec![true, false, false, false, true, false, false, false]
        );
        assert!((0..3).all(|_| observer.sampled()));
        trace::set_sample_every(0);
        assert_eq!(trace::sample_every(), 1);
    }
}
