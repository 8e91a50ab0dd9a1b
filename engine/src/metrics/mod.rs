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
//! The link, frame-rejection, equivocation and failover families are declared here for
//! the cluster's transport and client, which record into [`LinkMetrics`] and the
//! engine-wide counters; an in-process engine exports them without samples (links) or
//! at zero.

pub mod collect;
pub mod histogram;
pub mod observe;
pub mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::pipeline::{AbortReason, Admission, BusyReason, Outcome, Priority};
use crate::proto::{Reason, SITES_MAX};

pub use collect::{encode_prometheus_text, encode_text, EngineCollector};
pub use histogram::{
    AtomicHistogram, HistogramSnapshot, LocalHistogram, BATCH_TXNS_BOUNDS, BYTES_BOUNDS,
    LATENCY_BOUNDS_US,
};
pub use trace::{TraceContext, TRACE_CONTEXT_BYTES};

/// Links (peers) a node may register; bounds the exposition and the registration list.
pub const LINKS_MAX: usize = SITES_MAX;

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
        AbortReason::Rejected(Reason::TIMEOUT) => 3,
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

/// Why a transport rejected a frame, as a label value (see DESIGN §7: header first, then
/// the MAC, then the body).
pub const FRAME_REJECT_LABELS: [&str; 6] =
    ["header", "length", "mac", "body", "sequence", "handshake"];

/// Why a frame was rejected; the transport closes the connection after counting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameReject {
    Header = 0,
    Length = 1,
    Mac = 2,
    Body = 3,
    Sequence = 4,
    Handshake = 5,
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

/// One link of a node to a peer (cluster transport). Registered once per peer at
/// startup; the transport then records into it directly.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    pub up: AtomicBool,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub reconnects: AtomicU64,
    pub frames_rejected: [AtomicU64; FRAME_REJECT_LABELS.len()],
}

impl LinkMetrics {
    pub fn reject(&self, reason: FrameReject) {
        self.frames_rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
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
    /// Transactions of open batches undecided past the pending timeout.
    pub in_doubt_txns: AtomicU64,
    pub rejections: [[AtomicU64; BUSY_REASON_LABELS.len()]; PRIORITY_LABELS.len()],
    /// Clients that moved to another coordinator replica (cluster client).
    pub failovers: AtomicU64,
    /// Pairs of conflicting signed votes found (cluster).
    pub equivocation_evidence: AtomicU64,
    /// The admission of the engine that runs now, for the in-flight gauge; read (and
    /// locked) only at scrape time and when an engine opens.
    admission: Mutex<Option<Weak<Admission>>>,
    /// Registered links, in registration order; locked at registration and scrape only.
    links: Mutex<Vec<(String, Arc<LinkMetrics>)>>,
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
            in_doubt_txns: AtomicU64::new(0),
            rejections: Default::default(),
            failovers: AtomicU64::new(0),
            equivocation_evidence: AtomicU64::new(0),
            admission: Mutex::new(None),
            links: Mutex::new(Vec::new()),
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

    /// Registers the link to `peer` (once per peer, at startup) and returns what its
    /// transport records into. A peer registered twice gets the same metrics; `None`
    /// once [`LINKS_MAX`] peers are registered.
    pub fn link(&self, peer: &str) -> Option<Arc<LinkMetrics>> {
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, link)) = links.iter().find(|(name, _)| name == peer) {
            return Some(link.clone());
        }
        if links.len() >= LINKS_MAX {
            return None;
        }
        let link = Arc::new(LinkMetrics::default());
        links.push((peer.to_owned(), link.clone()));
        Some(link)
    }

    fn links_snapshot(&self) -> Vec<(String, Arc<LinkMetrics>)> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
