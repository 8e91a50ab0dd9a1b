//! Metrics: the engine's own atomics, recorded per batch and per stage, and exported in
//! the OpenMetrics text format at scrape time.
//!
//! The hot path never looks anything up in a registry and never takes a lock: every
//! stage holds an `Arc<EngineMetrics>` (or a `&SiteMetrics` inside it) and bumps plain
//! atomics, per batch, per sync or per chunk of completions. [`collect`] turns a
//! snapshot of those atomics into the exposition when a scraper asks, through
//! `prometheus-client`'s custom-collector interface, so a node mounts the whole engine
//! with one `Registry::register_collector` call (see [`collect::EngineCollector`]).
//!
//! Every family, its labels and its meaning is listed in docs/ops.md ("Metrics").
//! The link and frame-rejection families are the cluster transport's own counters
//! ([`TransportStats`]), read at scrape time once a node attaches its transport
//! ([`EngineMetrics::attach_transport`]); an in-process engine declares them without
//! samples. Equivocation evidence and failovers are engine-wide counters (0
//! in-process).

pub mod collect;
pub mod histogram;
pub mod observe;
pub mod trace;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::pipeline::{AbortReason, Admission, BusyReason, Outcome, Priority};
use crate::proto::{BatchId, Reason, SiteId, SITES_MAX};
use crate::transport::TransportStats;

pub use collect::{encode_prometheus_text, encode_text, EngineCollector};
pub use histogram::{
    AtomicHistogram, HistogramSnapshot, LocalHistogram, BATCH_TXNS_BOUNDS, BYTES_BOUNDS,
    LATENCY_BOUNDS_US,
};
pub use trace::{TraceContext, TRACE_CONTEXT_BYTES};

/// The phases of a batch, as the active coordinator sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    PreCommit,
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Prepare, Phase::PreCommit, Phase::Commit];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::PreCommit => "pre_commit",
            Phase::Commit => "commit",
        }
    }
}

/// Where a transaction waits outside the protocol's phases, in the in-process engine.
/// With [`Phase`] and the per-site sync and vote histograms these make the latency
/// breakdown (`tricommit-load --json`'s `latency_breakdown_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Per transaction: from `Engine::submit` to its batch's close at the batcher.
    Batching,
    /// Per batch: from its close to its opening (PREPARE out) at the coordinator.
    Queued,
    /// Per transaction: from its outcome at the coordinator to its ticket's
    /// completion (the completion hop, the dedup record, the ticket wake-up).
    Completion,
}

impl Stage {
    /// Every stage: the series of `tricommit_stage_wait_seconds`.
    pub const ALL: [Stage; 3] = [Stage::Batching, Stage::Queued, Stage::Completion];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Batching => "batching",
            Stage::Queued => "queued",
            Stage::Completion => "completion",
        }
    }
}

/// Why a transaction aborted, as a label value; the index is the counter's slot.
pub const ABORT_REASON_LABELS: [&str; 9] = [
    "malformed",
    "unknown_account",
    "insufficient_funds",
    "vote_timeout",
    "overflow",
    "duplicate",
    "other_no_vote",
    "terminated",
    "shutdown",
];

/// The counter slot of an abort reason.
fn abort_slot(reason: AbortReason) -> usize {
    match reason {
        AbortReason::Rejected(Reason::MALFORMED) => 0,
        AbortReason::Rejected(Reason::UNKNOWN_ACCOUNT) => 1,
        AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS) => 2,
        AbortReason::Rejected(Reason::TIMEOUT | Reason::UNANSWERED) => 3,
        AbortReason::Rejected(Reason::OVERFLOW) => 4,
        AbortReason::Rejected(Reason::DUPLICATE) => 5,
        AbortReason::Rejected(_) => 6,
        AbortReason::Terminated => 7,
        AbortReason::Shutdown => 8,
    }
}

/// Admission refusals: priority label values and reason label values, by slot.
pub const PRIORITY_LABELS: [&str; 2] = ["high", "normal"];
pub const BUSY_REASON_LABELS: [&str; 3] = ["high_water", "capacity", "tickets"];

/// What a termination round ended in, as a label value; the index is the slot.
pub const TERMINATION_RESULT_LABELS: [&str; 4] =
    ["commit", "abort", "pre_commit_round", "pre_abort_round"];

/// How a termination round ended (or what it moved on to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationResult {
    Commit = 0,
    Abort = 1,
    PreCommitRound = 2,
    PreAbortRound = 3,
}

/// Per-site counters and histograms. One per site id, allocated up front, so that a
/// site records into its own cache lines without any lookup.
#[derive(Debug)]
pub struct SiteMetrics {
    /// From the sync's submission to its completion, in microseconds.
    pub wal_sync_duration_us: AtomicHistogram,
    /// Bytes appended since the previous sync, per sync.
    pub wal_sync_bytes: AtomicHistogram,
    pub wal_appended_bytes: AtomicU64,
    pub wal_records: AtomicU64,
    /// Frames dropped because this site's destination inbox was full.
    pub frames_dropped: AtomicU64,
    /// How long each checkpoint held the site up, in microseconds.
    pub checkpoint_pause_us: AtomicHistogram,
    /// Recovery elections this site started (as a replica), and how they ended.
    pub termination_started: AtomicU64,
    pub termination_results: [AtomicU64; TERMINATION_RESULT_LABELS.len()],
    /// Transactions of the batches this replica is terminating and has not decided:
    /// in doubt past their timeout (termination starts only after it), including
    /// batches a restarted engine recovered, which the active coordinator never opened.
    pub termination_pending_txns: AtomicU64,
    /// As a participant: from the batch's opening at the active coordinator to its
    /// votes arriving there, in microseconds; and the votes that never came in time.
    pub vote_latency_us: AtomicHistogram,
    pub vote_timeouts: AtomicU64,
}

impl SiteMetrics {
    fn new() -> SiteMetrics {
        SiteMetrics {
            wal_sync_duration_us: AtomicHistogram::new(LATENCY_BOUNDS_US),
            wal_sync_bytes: AtomicHistogram::new(BYTES_BOUNDS),
            wal_appended_bytes: AtomicU64::new(0),
            wal_records: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            checkpoint_pause_us: AtomicHistogram::new(LATENCY_BOUNDS_US),
            termination_started: AtomicU64::new(0),
            termination_results: Default::default(),
            termination_pending_txns: AtomicU64::new(0),
            vote_latency_us: AtomicHistogram::new(LATENCY_BOUNDS_US),
            vote_timeouts: AtomicU64::new(0),
        }
    }

    pub fn record_termination(&self, result: TerminationResult) {
        self.termination_results[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A node's transport, attached for the scrape: its counters and the site it runs.
#[derive(Debug, Clone)]
pub struct AttachedTransport {
    pub stats: Arc<TransportStats>,
    pub me: SiteId,
}

/// Every metric of one engine (or one node). Create it once per process and hand it to
/// [`Engine::open_observed`](crate::Engine::open_observed), so that it outlives engine
/// restarts (the load generator's failure scenario reopens the engine).
#[derive(Debug)]
pub struct EngineMetrics {
    /// The deployment's shape, for the `site` and `participant` labels.
    replicas: AtomicUsize,
    participants: AtomicUsize,
    sites: Box<[SiteMetrics]>,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub aborts: [AtomicU64; ABORT_REASON_LABELS.len()],
    pub batches: AtomicU64,
    pub batch_txns: AtomicHistogram,
    /// From `Engine::submit` to the ticket's completion, in microseconds.
    pub txn_latency_us: AtomicHistogram,
    /// Per batch at the active coordinator, in microseconds, by [`Phase`].
    pub phase_us: [AtomicHistogram; 3],
    /// The waits around the phases, in microseconds, by [`Stage`] (in-process engine
    /// only; not exported to Prometheus).
    pub stage_us: [AtomicHistogram; 3],
    /// Transactions of open batches undecided past the pending timeout.
    pub in_doubt_txns: AtomicU64,
    pub rejections: [[AtomicU64; BUSY_REASON_LABELS.len()]; PRIORITY_LABELS.len()],
    /// Clients that moved to another coordinator replica (cluster client).
    pub failovers: AtomicU64,
    /// Pairs of conflicting signed votes found (cluster), by the signing participant's
    /// site id.
    pub equivocation_evidence: [AtomicU64; SITES_MAX],
    /// The admission of the engine that runs now, for the in-flight gauge; read (and
    /// locked) only at scrape time and when an engine opens.
    admission: Mutex<Option<Weak<Admission>>>,
    /// The node's transport, once attached; locked at attachment and scrape only.
    transport: Mutex<Option<AttachedTransport>>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineMetrics {
    pub fn new() -> EngineMetrics {
        EngineMetrics {
            replicas: AtomicUsize::new(0),
            participants: AtomicUsize::new(0),
            sites: (0..SITES_MAX).map(|_| SiteMetrics::new()).collect(),
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            aborts: Default::default(),
            batches: AtomicU64::new(0),
            batch_txns: AtomicHistogram::new(BATCH_TXNS_BOUNDS),
            txn_latency_us: AtomicHistogram::new(LATENCY_BOUNDS_US),
            phase_us: [
                AtomicHistogram::new(LATENCY_BOUNDS_US),
                AtomicHistogram::new(LATENCY_BOUNDS_US),
                AtomicHistogram::new(LATENCY_BOUNDS_US),
            ],
            stage_us: std::array::from_fn(|_| AtomicHistogram::new(LATENCY_BOUNDS_US)),
            in_doubt_txns: AtomicU64::new(0),
            rejections: Default::default(),
            failovers: AtomicU64::new(0),
            equivocation_evidence: std::array::from_fn(|_| AtomicU64::new(0)),
            admission: Mutex::new(None),
            transport: Mutex::new(None),
        }
    }

    /// Records the deployment's shape (an engine calls this when it opens).
    pub fn set_topology(&self, replicas: usize, participants: usize) {
        debug_assert!(replicas + participants <= SITES_MAX);
        self.replicas.store(replicas, Ordering::Relaxed);
        self.participants.store(participants, Ordering::Relaxed);
    }

    /// `(replicas, participants)`.
    pub fn topology(&self) -> (usize, usize) {
        (
            self.replicas.load(Ordering::Relaxed),
            self.participants.load(Ordering::Relaxed),
        )
    }

    /// The metrics of site `index` (site ids are below `SITES_MAX`).
    pub fn site(&self, index: usize) -> &SiteMetrics {
        &self.sites[index]
    }

    /// The label of site `index`: `replica-N` or `participant-N`.
    pub fn site_label(&self, index: usize) -> String {
        let replicas = self.replicas.load(Ordering::Relaxed);
        if index < replicas {
            format!("replica-{index}")
        } else {
            format!("participant-{}", index - replicas)
        }
    }

    pub(crate) fn set_admission(&self, admission: &Arc<Admission>) {
        let mut slot = self
            .admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(Arc::downgrade(admission));
    }

    /// Transactions admitted and not completed, if an engine runs.
    pub fn in_flight_txns(&self) -> Option<usize> {
        let slot = self
            .admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.as_ref()
            .and_then(Weak::upgrade)
            .map(|admission| admission.in_flight_txns())
    }

    /// Counts `txns` completions with one outcome (one call per completion chunk).
    pub fn record_outcomes(&self, outcome: Outcome, txns: u64) {
        match outcome {
            Outcome::Committed => {
                self.committed.fetch_add(txns, Ordering::Relaxed);
            }
            Outcome::Aborted(reason) => {
                self.aborted.fetch_add(txns, Ordering::Relaxed);
                self.aborts[abort_slot(reason)].fetch_add(txns, Ordering::Relaxed);
            }
            // Only a failed or crashed engine leaves tickets in doubt; those are not
            // completed by the completion stage.
            Outcome::InDoubt => {}
        }
    }

    /// Counts one refused submission.
    pub fn record_busy(&self, priority: Priority, reason: BusyReason) {
        let priority = match priority {
            Priority::High => 0,
            Priority::Normal => 1,
        };
        let reason = match reason {
            BusyReason::HighWater => 0,
            BusyReason::Capacity => 1,
            BusyReason::Tickets => 2,
        };
        self.rejections[priority][reason].fetch_add(1, Ordering::Relaxed);
    }

    /// Attaches a node's transport: from then on every scrape exports its link
    /// state, traffic, reconnects and rejected frames, read from the transport's own
    /// counters (nothing is recorded twice). `me` is the node's own site (it has no
    /// link to itself). A second call replaces the first.
    pub fn attach_transport(&self, stats: Arc<TransportStats>, me: SiteId) {
        let mut slot = self
            .transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(AttachedTransport { stats, me });
    }

    /// The attached transport, if any (scrape time).
    pub fn transport(&self) -> Option<AttachedTransport> {
        self.transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records that `participant` signed two different votes for `batch`: the evidence
    /// is kept by the caller; this counts it and logs it (one line per piece of
    /// evidence, a rare event that a person must look at).
    pub fn record_equivocation_evidence(&self, batch: BatchId, participant: SiteId) {
        let Some(count) = self.equivocation_evidence.get(participant.0 as usize) else {
            return;
        };
        count.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            batch = batch.0,
            participant = %self.site_label(participant.0 as usize),
            "equivocation evidence: two different signed votes for one batch"
        );
    }
}
