//! `Engine`: opens (and recovers) every site, runs the stages, takes submissions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tricommit_wal::{Wal, WalError};

use crate::pipeline::bounds::{BATCH_TXNS_MAX, INTAKE_QUEUE_TXNS_CAPACITY};
use crate::pipeline::mpsc::{self, MpscSender};
use crate::pipeline::{
    spsc, AbortReason, Admission, AdmissionLimits, BatchPolicy, Batcher, Busy, Doorbell,
    MonotonicClock, Outcome, Ticket, WaitConfig,
};
use crate::proto::{Coordinator, Output, Participant, Record, SiteId};

use crate::metrics::observe::SiteObserver;
use crate::metrics::trace::BatchSpans;
use crate::metrics::EngineMetrics;

use super::checkpoint::Checkpointer;
use super::config::{EngineConfig, ParticipantRm, PARTICIPANTS_MAX, REPLICAS_MAX};
use super::dedup::{Dedup, Seen};
use super::site::{
    run_passive, DrainBoard, Links, SiteError, SiteIo, SiteStats, SyncInFlight,
    INBOX_FRAMES_CAPACITY,
};
use super::stages::{
    participant_site, run_active, run_batcher, run_completion, ActiveStage, BatcherStage,
    EngineStats, Pending, BATCHES_QUEUED_MAX, COMPLETION_CHUNKS_CAPACITY,
};
use super::txn::Txn;

/// Errors of opening, running or shutting down an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("log of {site} in {dir}: {source}")]
    Wal {
        site: String,
        dir: PathBuf,
        source: WalError,
    },
    #[error("log of {site}: record at lsn {lsn} does not decode: {source}")]
    Record {
        site: String,
        lsn: u64,
        source: crate::proto::RecordError,
    },
    #[error("recovering {site}: {source}")]
    Recover {
        site: String,
        source: crate::proto::ProtoError,
    },
    #[error("recovering {site}: {source}")]
    Checkpoint {
        site: String,
        source: super::checkpoint::CheckpointError,
    },
    #[error("{0}")]
    Site(#[from] SiteError),
    #[error("cannot start stage {stage}: {source}")]
    Spawn {
        stage: String,
        source: std::io::Error,
    },
    #[error("stage {0} panicked")]
    Panicked(String),
    #[error("data directory: {0}")]
    DataDir(#[from] super::meta::MetaError),
}

/// What `Engine::shutdown` hands back: the participants' state machines, so that a
/// caller can check their resource managers (the bank invariant, for one).
pub struct Shutdown {
    pub participants: Vec<Participant<ParticipantRm>>,
}

/// The embedded commit engine.
pub struct Engine {
    intake: Option<MpscSender<Pending>>,
    admission: Arc<Admission>,
    dedup: Arc<Dedup>,
    stats: Arc<EngineStats>,
    site_stats: Vec<Arc<SiteStats>>,
    participants: usize,
    /// Asks every site to drain and stop (the active replica first).
    stop: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
    batcher: Option<JoinHandle<()>>,
    active: Option<JoinHandle<Result<Coordinator, SiteError>>>,
    completion: Option<JoinHandle<()>>,
    passive_replicas: Vec<JoinHandle<Result<Coordinator, SiteError>>>,
    participant_threads: Vec<JoinHandle<Result<Participant<ParticipantRm>, SiteError>>>,
    doorbells: Vec<Arc<Doorbell>>,
    /// What the stages record into, for a scraper (`Engine::metrics`).
    metrics: Arc<EngineMetrics>,
    /// The stages' clock, for the submission timestamps of the latency metric.
    clock: Arc<MonotonicClock>,
}

fn validate(config: &EngineConfig) -> Result<(), EngineError> {
    let bad = |text: String| Err(EngineError::Config(text));
    if !(1..=REPLICAS_MAX).contains(&config.replicas) {
        return bad(format!(
            "replicas must be 1..={REPLICAS_MAX}, not {}",
            config.replicas
        ));
    }
    if !(1..=PARTICIPANTS_MAX).contains(&config.participants.len()) {
        return bad(format!(
            "participants must be 1..={PARTICIPANTS_MAX}, not {}",
            config.participants.len()
        ));
    }
    if !(1..=BATCH_TXNS_MAX).contains(&config.batch_txns_max) {
        return bad(format!(
            "batch_txns_max must be 1..={BATCH_TXNS_MAX}, not {}",
            config.batch_txns_max
        ));
    }
    config
        .wal
        .validate()
        .map_err(|error| EngineError::Config(error.to_string()))?;
    if config
        .log_segments_max
        .is_some_and(|max| max < super::config::LOG_SEGMENTS_MAX_MIN)
    {
        return bad(format!(
            "log_segments_max must be at least {}",
            super::config::LOG_SEGMENTS_MAX_MIN
        ));
    }
    let needed = prepared_record_bytes_max(config.batch_txns_max);
    if needed > u64::from(config.wal.record_bytes_max) {
        return bad(format!(
            "a batch of {} transactions needs records of up to {needed} bytes, above the WAL's \
             record_bytes_max {}",
            config.batch_txns_max, config.wal.record_bytes_max
        ));
    }
    Ok(())
}

/// The largest record a site appends for a batch of `batch_txns` transactions: a
/// participant's `Prepared` record when it is in every transaction (see
/// `proto::record`: a descriptor of 12 + 16 bytes per transaction, then 4 + 35 bytes per
/// operation), plus the WAL's record header.
fn prepared_record_bytes_max(batch_txns: usize) -> u64 {
    const DESCRIPTOR_FIXED_BYTES: u64 = 12;
    const DESCRIPTOR_TXN_BYTES: u64 = 16;
    const OPS_FIXED_BYTES: u64 = 4;
    const OP_BYTES: u64 = 8 + crate::proto::OP_PAYLOAD_BYTES as u64 + 3;
    let txns = batch_txns as u64;
    tricommit_wal::RECORD_HEADER_BYTES
        + DESCRIPTOR_FIXED_BYTES
        + DESCRIPTOR_TXN_BYTES * txns
        + OPS_FIXED_BYTES
        + OP_BYTES * txns
}

/// A site's log, opened and read back, with the checkpoint policy its site runs.
struct OpenedLog {
    wal: Wal,
    records: Vec<Record>,
    checkpointer: Checkpointer,
}

/// Opens one site's log; `log_segments_max` is its checkpoint bound (`None`: never).
fn open_log(
    dir: &Path,
    site: &str,
    config: &EngineConfig,
    log_segments_max: Option<u32>,
) -> Result<OpenedLog, EngineError> {
    let wal_error = |source| EngineError::Wal {
        site: site.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let (mut wal, recovery) = Wal::open(dir, config.wal.clone()).map_err(wal_error)?;
    log_recovery(site, &recovery);
    if let Some(max) = log_segments_max {
        // Recycled segments serve the rolls until the next checkpoint; more would only
        // hold disk.
        wal.set_recycled_spares_max(max.saturating_add(config.wal.segments_spare))
            .map_err(wal_error)?;
    }
    let mut records = Vec::new();
    for record in wal.read_from(wal.first_lsn()) {
        let record = record.map_err(wal_error)?;
        let decoded =
            Record::decode(record.kind, record.payload).map_err(|source| EngineError::Record {
                site: site.to_owned(),
                lsn: record.lsn,
                source,
            })?;
        records.push(decoded);
    }
    let checkpointer = Checkpointer::for_recovered_log(dir, log_segments_max, &wal, &records)
        .map_err(|source| EngineError::Checkpoint {
            site: site.to_owned(),
            source,
        })?;
    Ok(OpenedLog {
        wal,
        records,
        checkpointer,
    })
}

/// One structured log line per site for what recovery found, and one for each notable
/// thing it did (a torn tail dropped, a sync backend replaced).
fn log_recovery(site: &str, recovery: &tricommit_wal::Recovery) {
    tracing::info!(
        site,
        records = recovery.records,
        first_lsn = recovery.first_lsn,
        last_lsn = recovery.last_lsn,
        segments = recovery.segments,
        backend = ?recovery.backend,
        "wal recovered"
    );
    if recovery.tail_bytes_dropped > 0 {
        let (segment, offset) = recovery
            .tail_position
            .as_ref()
            .map(|(path, offset)| (path.display().to_string(), *offset))
            .unwrap_or_default();
        tracing::warn!(
            site,
            bytes = recovery.tail_bytes_dropped,
            segment,
            offset,
            "torn wal tail dropped"
        );
    }
    if let Some(reason) = &recovery.backend_fallback_reason {
        tracing::warn!(site, backend = ?recovery.backend, reason, "wal sync backend fallback");
    }
}

/// Rebuilds participant `me` from its opened log and the snapshot its log starts at.
fn recover_participant(
    dir: &Path,
    site: &str,
    me: SiteId,
    proto_config: &crate::proto::ProtoConfig,
    rm: ParticipantRm,
    log: &OpenedLog,
    now_us: u64,
) -> Result<Participant<ParticipantRm>, EngineError> {
    let (machine, _number) = super::checkpoint::recover_participant(
        dir,
        proto_config.clone(),
        me,
        rm,
        &log.records,
        now_us,
        true,
    )
    .map_err(|source| EngineError::Checkpoint {
        site: site.to_owned(),
        source,
    })?;
    Ok(machine)
}

/// Everything the sites share, built before any thread starts.
struct Wiring {
    clock: Arc<MonotonicClock>,
    links: Links,
    inboxes: Vec<Option<mpsc::MpscReceiver<super::site::Frame>>>,
    doorbells: Vec<Arc<Doorbell>>,
    metrics: Arc<EngineMetrics>,
    spans: Arc<BatchSpans>,
    /// Undecided past this, a transaction counts as in doubt (the pending timeout).
    in_doubt_after_us: u64,
}

fn wire(
    sites: usize,
    metrics: Arc<EngineMetrics>,
    in_doubt_after_us: u64,
) -> Result<Wiring, EngineError> {
    let mut senders = Vec::with_capacity(sites);
    let mut inboxes = Vec::with_capacity(sites);
    let mut doorbells = Vec::with_capacity(sites);
    for _ in 0..sites {
        let doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let (sender, receiver) = mpsc::channel(INBOX_FRAMES_CAPACITY, doorbell.clone())
            .map_err(|error| EngineError::Config(error.to_string()))?;
        senders.push(sender);
        inboxes.push(Some(receiver));
        doorbells.push(doorbell);
    }
    Ok(Wiring {
        clock: Arc::new(MonotonicClock::new()),
        links: Arc::new(senders),
        inboxes,
        doorbells,
        metrics,
        spans: Arc::new(BatchSpans::new()),
        in_doubt_after_us,
    })
}

/// The flags a site stage watches to know when to stop.
struct StopFlags {
    stop: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
    board: Arc<DrainBoard>,
    drain_max: std::time::Duration,
    /// Let the site take frames while its io_uring sync is in flight (`overlap`).
    overlap_syncs: bool,
}

/// How long a stopping site waits for undecided batches: long enough for a recovery to
/// start (pending timeout plus every replica's stagger), collect, and run its round with
/// a few retransmissions, twice.
fn drain_max(config: &EngineConfig) -> std::time::Duration {
    const RETRANSMITS_BUDGETED: u64 = 4;
    const ATTEMPTS_BUDGETED: u64 = 2;
    let timeouts = &config.timeouts;
    let one_recovery_us = timeouts.pending_us
        + timeouts.recovery_stagger_us * config.replicas as u64
        + timeouts.collect_us
        + timeouts.retransmit_us * RETRANSMITS_BUDGETED;
    std::time::Duration::from_micros(one_recovery_us * ATTEMPTS_BUDGETED)
}

impl Wiring {
    /// The I/O half of site `me`: its log, its inbox, and links to every other site.
    fn site_io(&mut self, me: SiteId, wal: Wal, out: Output, flags: StopFlags) -> SiteIo {
        let index = me.0 as usize;
        // Only io_uring returns before the sync ends; the other backends sync in
        // `sync_submit`, so overlapping would only delay the release.
        let overlap_syncs =
            flags.overlap_syncs && wal.backend() == tricommit_wal::SyncBackend::IoUring;
        SiteIo {
            me,
            // Nothing is appended yet: the state machine's first append gets seq 1.
            lsn_base: wal.last_lsn(),
            wal,
            inbox: self.inboxes[index]
                .take()
                .expect("each site's inbox is taken once"),
            doorbell: self.doorbells[index].clone(),
            links: self.links.clone(),
            clock: self.clock.clone(),
            stop: flags.stop,
            halt: flags.halt,
            board: flags.board,
            drain_max: flags.drain_max,
            sync: SyncInFlight::new(overlap_syncs),
            stats: Arc::new(SiteStats::default()),
            out,
            frames: Vec::new(),
            encode: Vec::new(),
            appended: crate::proto::AppendSeq(0),
            checkpoint: Checkpointer::disabled(),
            observe: SiteObserver::new(
                self.metrics.clone(),
                me,
                self.in_doubt_after_us,
                self.spans.clone(),
                self.clock.clone(),
            ),
        }
    }
}

/// Starts the stage threads, pinning each to a core in turn when the configuration
/// asks for it. Stages are dealt round-robin over the cores this process may use, in
/// pipeline order, so that neighbouring stages land on different cores; on a machine
/// with fewer cores than stages they share. Pinning is best effort: a thread the kernel
/// refuses to pin runs unpinned.
struct Spawner {
    cores: Vec<usize>,
    next: usize,
}

impl Spawner {
    fn new(pin_threads: bool) -> Spawner {
        let cores = if pin_threads {
            crate::pipeline::cores::cores_of_this_machine()
        } else {
            Vec::new()
        };
        Spawner { cores, next: 0 }
    }

    fn spawn<R: Send + 'static>(
        &mut self,
        name: String,
        run: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<R>, EngineError> {
        let core = (!self.cores.is_empty()).then(|| self.cores[self.next % self.cores.len()]);
        self.next += 1;
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(id) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                run()
            })
            .map_err(|source| EngineError::Spawn {
                stage: name,
                source,
            })
    }
}

impl Engine {
    /// Opens every site's log below `config.data_dir`, recovers each state machine from
    /// what survived, and starts the stages. Open batches left by a crash are finished
    /// by the E3PC termination protocol once the stages run.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::open_observed(config, Arc::new(EngineMetrics::new()))
    }

    /// [`Engine::open`], recording into `metrics`: a process creates its metrics once
    /// and serves them (`metrics::encode_text`), and they outlive engine restarts.
    pub fn open_observed(
        config: EngineConfig,
        metrics: Arc<EngineMetrics>,
    ) -> Result<Engine, EngineError> {
        validate(&config)?;
        super::meta::prepare_data_dir(&config)?;
        let replicas: Vec<SiteId> = (0..config.replicas as u8).map(SiteId).collect();
        let mut proto_config = config.timeouts.proto_config(replicas.clone());
        proto_config.protocol = config.protocol;
        proto_config.overlap = config.overlap;
        let sites = config.replicas + config.participants.len();
        metrics.set_topology(config.replicas, config.participants.len());
        let mut wiring = wire(sites, metrics.clone(), config.timeouts.pending_us)?;
        let stop = Arc::new(AtomicBool::new(false));
        let board = Arc::new(DrainBoard::new(wiring.doorbells.clone()));
        let drain_max = drain_max(&config);
        let halt = Arc::new(AtomicBool::new(false));
        let mut site_stats = Vec::new();

        let mut replica_machines = Vec::new();
        for &me in &replicas {
            let name = format!("replica-{}", me.0);
            let bound = config.log_segments_max;
            let log = open_log(&config.data_dir.join(&name), &name, &config, bound)?;
            let mut out = Output::default();
            let now_us = wiring.clock.now_us();
            let machine = if log.records.is_empty() {
                Coordinator::new(proto_config.clone(), me, &mut out)
            } else {
                Coordinator::recover(proto_config.clone(), me, &log.records, now_us, &mut out)
            }
            .map_err(|source| EngineError::Recover {
                site: name.clone(),
                source,
            })?;
            replica_machines.push((me, machine, log, out));
        }
        let mut participant_machines = Vec::new();
        for (index, spec) in config.participants.iter().enumerate() {
            let me = participant_site(config.replicas, index as u8);
            let name = format!("participant-{index}");
            // A participant's log is its postings audit trail (DESIGN §5): it is
            // checkpointed, and the postings before the checkpoint dropped, only when
            // the configuration says so.
            let bound = config.log_segments_max.filter(|_| config.compact_postings);
            let log = open_log(&config.data_dir.join(&name), &name, &config, bound)?;
            let rm = ParticipantRm::genesis(spec)
                .map_err(|error| EngineError::Config(format!("{name}: {error}")))?;
            let now_us = wiring.clock.now_us();
            let dir = config.data_dir.join(&name);
            let machine = recover_participant(&dir, &name, me, &proto_config, rm, &log, now_us)?;
            participant_machines.push((me, machine, log));
        }

        let limits =
            AdmissionLimits::new(config.intake_high_water_txns, config.intake_capacity_txns)
                .map_err(|error| EngineError::Config(error.to_string()))?;
        let admission = Arc::new(
            Admission::new(limits).map_err(|error| EngineError::Config(error.to_string()))?,
        );
        let stats = Arc::new(EngineStats::default());
        metrics.set_admission(&admission);

        // The active replica listens to its inbox and to the batcher on one doorbell.
        let active_doorbell = wiring.doorbells[0].clone();
        let (to_coordinator, from_batcher) = spsc::channel(BATCHES_QUEUED_MAX, active_doorbell)
            .map_err(|error| EngineError::Config(error.to_string()))?;
        let completion_doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let (to_completion, from_coordinator) =
            spsc::channel(COMPLETION_CHUNKS_CAPACITY, completion_doorbell)
                .map_err(|error| EngineError::Config(error.to_string()))?;
        let (mut from_batcher, mut to_completion) = (Some(from_batcher), Some(to_completion));
        let intake_doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let (intake, intake_receiver) = mpsc::channel(INTAKE_QUEUE_TXNS_CAPACITY, intake_doorbell)
            .map_err(|error| EngineError::Config(error.to_string()))?;

        let flags = || StopFlags {
            stop: stop.clone(),
            halt: halt.clone(),
            board: board.clone(),
            drain_max,
            overlap_syncs: config.overlap,
        };
        let mut spawner = Spawner::new(config.pin_threads);
        let mut passive_replicas = Vec::new();
        let mut active = None;
        for (me, machine, log, out) in replica_machines {
            let mut io = wiring.site_io(me, log.wal, out, flags());
            io.checkpoint = log.checkpointer;
            site_stats.push(io.stats.clone());
            let name = format!("tc-replica-{}", me.0);
            if me.0 == 0 {
                let stage = ActiveStage {
                    batches: from_batcher.take().expect("one active replica"),
                    to_completion: to_completion.take().expect("one active replica"),
                    window_batches: config.batches_in_flight_max(),
                };
                active = Some(spawner.spawn(name, move || run_active(machine, io, stage))?);
            } else {
                passive_replicas.push(spawner.spawn(name, move || run_passive(machine, io))?);
            }
        }
        let mut participant_threads = Vec::new();
        for (me, machine, log) in participant_machines {
            let mut io = wiring.site_io(me, log.wal, Output::default(), flags());
            io.checkpoint = log.checkpointer;
            site_stats.push(io.stats.clone());
            let name = format!("tc-participant-{}", me.0 as usize - config.replicas);
            participant_threads.push(spawner.spawn(name, move || run_passive(machine, io))?);
        }
        let dedup = Arc::new(Dedup::new());
        let completion = {
            let (admission, stats, dedup) = (admission.clone(), stats.clone(), dedup.clone());
            let (metrics, clock) = (metrics.clone(), wiring.clock.clone());
            spawner.spawn("tc-completion".into(), move || {
                run_completion(from_coordinator, admission, stats, dedup, metrics, clock)
            })?
        };
        let policy = BatchPolicy::new(
            config.batch_txns_max,
            config.batch_delay_us_max,
            config.batching,
        )
        .map_err(|error| EngineError::Config(error.to_string()))?;
        let batcher_stage = BatcherStage {
            intake: intake_receiver,
            batcher: Batcher::new(policy),
            to_coordinator,
            clock: wiring.clock.clone(),
            replicas: config.replicas,
            participants: config.participants.len(),
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        let batcher = spawner.spawn("tc-batcher".into(), move || run_batcher(batcher_stage))?;
        Ok(Engine {
            intake: Some(intake),
            admission,
            dedup,
            stats,
            site_stats,
            participants: config.participants.len(),
            stop,
            halt,
            batcher: Some(batcher),
            active,
            completion: Some(completion),
            passive_replicas,
            participant_threads,
            doorbells: wiring.doorbells,
            metrics,
            clock: wiring.clock,
        })
    }
}

/// A snapshot of the engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub committed: u64,
    pub aborted: u64,
    pub batches: u64,
    pub batch_txns_total: u64,
    /// WAL syncs over every site.
    pub syncs: u64,
    /// WAL records over every site.
    pub records: u64,
    /// Frames dropped because an inbox was full (retransmitted by the protocol).
    pub frames_dropped: u64,
    /// Checkpoints over every site, and the longest and total time they held up their
    /// site (snapshot written, group synced, segments recycled), in microseconds.
    pub checkpoints: u64,
    pub checkpoint_pause_us_max: u64,
    pub checkpoint_pause_us_total: u64,
    /// The longest time one step of recycling the segments below a checkpoint (one
    /// segment zero-filled, as a segment roll does) held up its site.
    pub recycle_pause_us_max: u64,
}

impl Engine {
    /// Submits a transaction. Returns its ticket, or hands the transaction back in
    /// [`Busy`] when the engine sheds load (`Normal` priority first).
    ///
    /// A transaction naming a participant the engine does not have, or none at all, is
    /// not submitted: its ticket is ready at once with `Rejected(MALFORMED)`. After
    /// shutdown began, tickets are ready at once with `Aborted(Shutdown)`.
    pub fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        let legs = txn.legs();
        if legs.is_empty()
            || legs
                .iter()
                .any(|leg| leg.participant as usize >= self.participants)
        {
            let reason = crate::proto::Reason::MALFORMED;
            return Ok(Ticket::ready(Outcome::Aborted(AbortReason::Rejected(
                reason,
            ))));
        }
        let Some(intake) = &self.intake else {
            return Ok(Ticket::ready(Outcome::Aborted(AbortReason::Shutdown)));
        };
        let mut seen = self.dedup.lock(txn.id);
        match seen.seen() {
            Seen::Decided(outcome) => return Ok(Ticket::ready(outcome)),
            Seen::InFlight => {
                // A duplicate of a transaction in flight: its own ticket, completed
                // with the original's outcome, and nothing submitted twice.
                let admitted = self.admission.admit(txn, txn.priority)?;
                seen.attach(admitted.completion);
                return Ok(admitted.ticket);
            }
            Seen::New => {}
        }
        // The shard stays locked until the transaction is in the intake, so that a
        // duplicate racing with it sees it in flight, never half-submitted.
        let priority = txn.priority;
        let admitted = self
            .admission
            .admit(txn, priority)
            .inspect_err(|busy| self.metrics.record_busy(priority, busy.reason()))?;
        seen.start();
        drop(seen);
        let pending = Pending {
            txn: admitted.txn,
            completion: admitted.completion,
            submitted_us: self.clock.now_us(),
        };
        if let Err(error) = intake.push(pending) {
            // Admission keeps the intake queue from filling, so only a stopped batcher
            // lands here.
            let outcome = Outcome::Aborted(AbortReason::Shutdown);
            let _ = self
                .admission
                .complete(error.into_inner().completion, outcome);
            for waiter in self.dedup.decide(txn.id, outcome) {
                let _ = self.admission.complete(waiter, outcome);
            }
        }
        Ok(admitted.ticket)
    }

    /// The engine's counters so far.
    pub fn counters(&self) -> EngineCounters {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let mut counters = EngineCounters {
            committed: load(&self.stats.committed),
            aborted: load(&self.stats.aborted),
            batches: load(&self.stats.batches),
            batch_txns_total: load(&self.stats.batch_txns_total),
            ..EngineCounters::default()
        };
        for site in &self.site_stats {
            counters.syncs += load(&site.syncs);
            counters.records += load(&site.records);
            counters.frames_dropped += load(&site.frames_dropped);
            counters.checkpoints += load(&site.checkpoints);
            counters.checkpoint_pause_us_max = counters
                .checkpoint_pause_us_max
                .max(load(&site.checkpoint_pause_us_max));
            counters.checkpoint_pause_us_total += load(&site.checkpoint_pause_us_total);
            counters.recycle_pause_us_max = counters
                .recycle_pause_us_max
                .max(load(&site.recycle_pause_us_max));
        }
        counters
    }

    /// The metrics the stages record into; serve them with `metrics::encode_text`.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Transactions admitted and not yet completed.
    pub fn in_flight_txns(&self) -> usize {
        self.admission.in_flight_txns()
    }

    /// Stops taking submissions, finishes every batch in flight, lets the other sites
    /// handle what was sent to them, and stops every stage. Returns the participants'
    /// resource managers (for checks), or the first error a stage met.
    pub fn shutdown(mut self) -> Result<Shutdown, EngineError> {
        self.stop()
    }

    /// Stops every stage at once without syncing anything, as a process crash would:
    /// what was appended but not synced is not made durable by the engine (with the
    /// io_uring backend it never reaches the file). Tickets still open complete as
    /// `InDoubt`. Reopen the data directory to recover. For tests and the load
    /// generator's failure scenario.
    pub fn crash(mut self) {
        self.halt.store(true, Ordering::Release);
        for doorbell in &self.doorbells {
            doorbell.ring();
        }
        let _ = self.stop();
    }

    fn stop(&mut self) -> Result<Shutdown, EngineError> {
        let mut first_error: Option<EngineError> = None;
        let mut note = |error: EngineError| {
            first_error.get_or_insert(error);
        };
        // Closing the intake lets the batcher drain it and exit, which closes the
        // coordinator's batch queue.
        self.intake = None;
        if let Some(batcher) = self.batcher.take() {
            if batcher.join().is_err() {
                note(EngineError::Panicked("batcher".into()));
            }
        }
        // Every site drains at once: none leaves while another still holds an
        // undecided transaction (or until its drain deadline).
        self.stop.store(true, Ordering::Release);
        for doorbell in &self.doorbells {
            doorbell.ring();
        }
        if let Some(active) = self.active.take() {
            match active.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => note(error.into()),
                Err(_) => note(EngineError::Panicked("replica-0".into())),
            }
        }
        if let Some(completion) = self.completion.take() {
            if completion.join().is_err() {
                note(EngineError::Panicked("completion".into()));
            }
        }
        for replica in self.passive_replicas.drain(..) {
            match replica.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => note(error.into()),
                Err(_) => note(EngineError::Panicked("replica".into())),
            }
        }
        let mut participants = Vec::new();
        for participant in self.participant_threads.drain(..) {
            match participant.join() {
                Ok(Ok(machine)) => participants.push(machine),
                Ok(Err(error)) => note(error.into()),
                Err(_) => note(EngineError::Panicked("participant".into())),
            }
        }
        // Whatever a failed stage left undecided is in doubt for its clients.
        self.admission.complete_all_pending(Outcome::InDoubt);
        match first_error {
            Some(error) => Err(error),
            None => Ok(Shutdown { participants }),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.batcher.is_some() || self.active.is_some() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::prepared_record_bytes_max;
    use crate::proto::{BatchId, Descriptor, Op, Record, TxnId, Vote, OP_PAYLOAD_BYTES};

    #[test]
    fn the_record_bound_is_the_size_of_a_full_prepared_record() {
        // Proves that the configuration check uses the real encoded size, so a batch that
        // passes it can never fail to append.
        let txns = 100;
        let desc = Descriptor {
            batch: BatchId(7),
            txns: (0..txns).map(TxnId).collect(),
            members: vec![1 << 3; txns as usize],
        };
        let ops: Vec<Op> = (0..txns)
            .map(|id| Op {
                txn: TxnId(id),
                payload: [0; OP_PAYLOAD_BYTES],
            })
            .collect();
        let record = Record::Prepared {
            desc: Arc::new(desc),
            ops: ops.into(),
            votes: vec![Vote::Yes; txns as usize],
        };
        let mut encoded = Vec::new();
        record.encode(&mut encoded);
        let expected = encoded.len() as u64 + tricommit_wal::RECORD_HEADER_BYTES;
        assert_eq!(prepared_record_bytes_max(txns as usize), expected);
    }
}
