//! `Engine`: opens (and recovers) every site, runs the stages, takes submissions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tricommit_wal::{Wal, WalError};

use crate::pipeline::bounds::{BATCH_TXNS_MAX, INTAKE_QUEUE_TXNS_CAPACITY};
use crate::pipeline::mpsc::{self, MpscSender};
use crate::pipeline::{
    spsc, AbortReason, Admission, AdmissionLimits, BatchPolicy, Batcher, Busy, BusyReason,
    Doorbell, MonotonicClock, Outcome, Priority, Reservation, Ticket, WaitConfig,
};
use crate::proto::{Coordinator, Output, Participant, Record, SiteId};

use crate::metrics::observe::SiteObserver;
use crate::metrics::trace::BatchSpans;
use crate::metrics::EngineMetrics;

use super::checkpoint::Checkpointer;
use super::config::{EngineConfig, ParticipantRm, PARTICIPANTS_MAX, REPLICAS_MAX};
use super::dedup::{Dedup, Seen};
use super::site::{
    run_passive, DrainBoard, Links, SiteError, SiteIo, SiteStats, SyncInFlight, VoteIo,
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
/// caller can check their resource managers (the bank invariant, for one), and the
/// counters once every stage stopped (whether draining hit its bound, for one).
pub struct Shutdown {
    pub participants: Vec<Participant<ParticipantRm>>,
    pub counters: EngineCounters,
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
    /// The clock the sites stamp their syncs with (for the age of a sync in flight).
    clock: Arc<MonotonicClock>,
    /// What opening each site's log found and did.
    recovery: super::recovery::RecoveryReport,
    /// How long a stopping site waits for undecided transactions.
    drain_max: std::time::Duration,
    /// Threads the kernel refused to pin (with `pin_threads`).
    pins_failed: Arc<std::sync::atomic::AtomicU64>,
    /// What the stages record into, for a scraper (`Engine::metrics`).
    metrics: Arc<EngineMetrics>,
    /// The replicas' vote guards' counters (all zero unless `sign_votes`).
    vote_stats: Arc<crate::sign::VoteStats>,
}

pub(crate) fn validate(config: &EngineConfig) -> Result<(), EngineError> {
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
/// `proto::record`: a compact descriptor, at most 13 + 16 bytes per transaction when
/// its transactions have too many distinct participant masks for a table, then 4 + 35
/// bytes per operation), plus the WAL's record header.
fn prepared_record_bytes_max(batch_txns: usize) -> u64 {
    const DESCRIPTOR_FIXED_BYTES: u64 = 13;
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
pub(crate) struct OpenedLog {
    pub(crate) wal: Wal,
    pub(crate) recovery: tricommit_wal::Recovery,
    pub(crate) records: Vec<Record>,
    pub(crate) checkpointer: Checkpointer,
}

/// Opens one site's log; `log_segments_max` is its checkpoint bound (`None`: never).
pub(crate) fn open_log(
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
        recovery,
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
pub(crate) fn recover_participant(
    dir: &Path,
    site: &str,
    me: SiteId,
    proto_config: &crate::proto::ProtoConfig,
    rm: ParticipantRm,
    log: &OpenedLog,
    now_us: u64,
) -> Result<Participant<ParticipantRm>, EngineError> {
    let (mut machine, _number) = super::checkpoint::recover_participant(
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
    machine.reserve_ids();
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
pub(crate) fn drain_max(config: &EngineConfig) -> std::time::Duration {
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
            ledger_queries: None,
            votes: VoteIo::default(),
            transport: None,
            links_down_seen: 0,
        }
    }
}

/// Starts the stage threads, pinning each to a core in turn when the configuration
/// asks for it. Stages are dealt round-robin over the cores this process may use, in
/// pipeline order, so that neighbouring stages land on different cores; on a machine
/// with fewer cores than stages they share. Pinning goes through the crate's one path
/// (`pipeline::cores::pin_current_thread`) and is best effort: a thread the kernel
/// refuses to pin runs unpinned, and is counted in `pins_failed`
/// (`EngineCounters::pins_failed`), so the refusal is reported, not silent.
pub(crate) struct Spawner {
    cores: Vec<usize>,
    next: usize,
    pins_failed: Arc<std::sync::atomic::AtomicU64>,
}

impl Spawner {
    pub(crate) fn new(pin_threads: bool) -> Spawner {
        let cores = if pin_threads {
            crate::pipeline::cores::cores_of_this_machine()
        } else {
            Vec::new()
        };
        Spawner {
            cores,
            next: 0,
            pins_failed: Arc::default(),
        }
    }

    pub(crate) fn spawn<R: Send + 'static>(
        &mut self,
        name: String,
        run: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<R>, EngineError> {
        let core = (!self.cores.is_empty()).then(|| self.cores[self.next % self.cores.len()]);
        self.next += 1;
        let pins_failed = self.pins_failed.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if core.is_some_and(|id| !crate::pipeline::cores::pin_current_thread(id)) {
                    pins_failed.fetch_add(1, Ordering::Relaxed);
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
        proto_config.held_ids_decided_max = config.held_ids_decided_max();
        let sites = config.replicas + config.participants.len();
        metrics.set_topology(config.replicas, config.participants.len());
        let mut wiring = wire(sites, metrics.clone(), config.timeouts.pending_us)?;
        let stop = Arc::new(AtomicBool::new(false));
        let board = Arc::new(DrainBoard::new(wiring.doorbells.clone()));
        let drain_max = drain_max(&config);
        let halt = Arc::new(AtomicBool::new(false));
        let mut site_stats = Vec::new();
        let mut recovery = super::recovery::RecoveryReport::default();

        let mut replica_machines = Vec::new();
        for &me in &replicas {
            let name = format!("replica-{}", me.0);
            let bound = config.log_segments_max;
            let log = open_log(&config.data_dir.join(&name), &name, &config, bound)?;
            recovery.sites.push(super::recovery::SiteRecovery {
                site: name.clone(),
                wal: log.recovery.clone(),
            });
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
            recovery.sites.push(super::recovery::SiteRecovery {
                site: name.clone(),
                wal: log.recovery.clone(),
            });
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
        let vote_stats = Arc::new(crate::sign::VoteStats::default());
        let mut signing = in_process_vote_keys(&config, &replicas)?;
        for (me, machine, log, out) in replica_machines {
            let mut io = wiring.site_io(me, log.wal, out, flags());
            io.checkpoint = log.checkpointer;
            if let Some((keys, _)) = &signing {
                let dir = config.data_dir.join(format!("replica-{}", me.0));
                let evidence = dir.join(crate::sign::evidence::EVIDENCE_DIR);
                let mut guard = keys.guard(me, evidence, vote_stats.clone());
                guard.count_into(metrics.clone());
                io.votes.guard = Some(guard);
            }
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
            if let Some((keys, secrets)) = &mut signing {
                let secret = secrets.remove(0);
                io.votes.signer = Some(keys.signer(me, secret, None));
            }
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
            clock: wiring.clock,
            recovery,
            drain_max,
            pins_failed: spawner.pins_failed,
            metrics,
            vote_stats,
        })
    }

    /// What the replicas' vote guards counted (all zero unless `sign_votes`).
    pub fn vote_stats(&self) -> &Arc<crate::sign::VoteStats> {
        &self.vote_stats
    }
}

/// With `sign_votes`, fresh keys for every participant (in participant order) and the
/// public keys every replica checks; `None` without.
fn in_process_vote_keys(
    config: &EngineConfig,
    replicas: &[SiteId],
) -> Result<Option<(crate::sign::VoteKeys, Vec<ed25519_dalek::SigningKey>)>, EngineError> {
    if !config.sign_votes {
        return Ok(None);
    }
    let mut names: Vec<String> = replicas
        .iter()
        .map(|r| format!("replica-{}", r.0))
        .collect();
    let mut keys = vec![None; replicas.len()];
    let mut secrets = Vec::new();
    for index in 0..config.participants.len() {
        let secret = crate::sign::keys::generate()
            .map_err(|error| EngineError::Config(error.to_string()))?;
        names.push(format!("participant-{index}"));
        keys.push(Some(secret.verifying_key()));
        secrets.push(secret);
    }
    let keys = crate::sign::VoteKeys {
        cluster_id: 0,
        names,
        keys,
        replicas: replicas.to_vec(),
    };
    Ok(Some((keys, secrets)))
}

/// The submission path of [`Engine::submit`], shared with a cluster node's gateway
/// (`runtime::node`): [`Group::submit`] with a group of one.
pub(crate) fn submit_to(
    intake: Option<&MpscSender<Pending>>,
    admission: &Admission,
    dedup: &Dedup,
    participants: usize,
    metrics: &EngineMetrics,
    submitted_us: u64,
    txn: Txn,
) -> Result<Ticket, Busy<Txn>> {
    let mut ticket = None;
    let group = Group {
        intake,
        admission,
        dedup,
        participants,
        metrics,
        submitted_us,
    };
    match group.submit(std::slice::from_ref(&txn), &mut ticket) {
        Ok(()) => Ok(ticket.expect("a group answers every member it does not refuse")),
        Err(busy) => Err(Busy::new(txn, busy.reason())),
    }
}

/// Where a group's tickets go: a `Vec` for [`Engine::submit_many`], an `Option` for a
/// group of one.
pub(crate) trait Tickets {
    fn put(&mut self, ticket: Ticket);
}

impl Tickets for Vec<Ticket> {
    fn put(&mut self, ticket: Ticket) {
        self.push(ticket);
    }
}

impl Tickets for Option<Ticket> {
    fn put(&mut self, ticket: Ticket) {
        *self = Some(ticket);
    }
}

/// Whether `txn` names no participant, or one the engine does not have.
fn malformed(txn: &Txn, participants: usize) -> bool {
    let legs = txn.legs();
    legs.is_empty()
        || legs
            .iter()
            .any(|leg| leg.participant as usize >= participants)
}

/// The ready ticket of a transaction the engine turns away at once.
fn rejected(reason: crate::proto::Reason) -> Ticket {
    Ticket::ready(Outcome::Aborted(AbortReason::Rejected(reason)))
}

/// What the submission path needs of an engine (or of a node's gateway).
pub(crate) struct Group<'a> {
    pub intake: Option<&'a MpscSender<Pending>>,
    pub admission: &'a Admission,
    pub dedup: &'a Dedup,
    pub participants: usize,
    pub metrics: &'a EngineMetrics,
    /// The group's submission time, on the engine's clock (one reading for all).
    pub submitted_us: u64,
}

impl Group<'_> {
    /// The submission path of [`Engine::submit_many`]. Each transaction, in order: one
    /// that names no participant, or one the engine lacks, is rejected at once
    /// (`MALFORMED`); after shutdown began, it is aborted at once (`Shutdown`); an id
    /// remembered with the same legs is a retry (a decided one is answered at once, one
    /// in flight gets a ticket of its own completed with the original's outcome), and
    /// with other legs it is rejected at once (`EXISTS_WITH_DIFFERENT_LEGS`); anything
    /// else takes a place in admission and enters the intake. The group shares one clock
    /// reading, one admission reservation (retries answered at once take no place) and
    /// one wake-up of the batcher. It stops at the first member admission refuses: on
    /// `Busy`, its value is how many were submitted, and their tickets are out.
    pub fn submit(&self, txns: &[Txn], tickets: &mut impl Tickets) -> Result<(), Busy<usize>> {
        let Some(intake) = self.intake else {
            for txn in txns {
                tickets.put(if malformed(txn, self.participants) {
                    rejected(crate::proto::Reason::MALFORMED)
                } else {
                    Ticket::ready(Outcome::Aborted(AbortReason::Shutdown))
                });
            }
            return Ok(());
        };
        let admission = self.admission;
        // The class places are reserved for: a group of `Normal` ones never holds places
        // above the high-water mark, even for an instant longer than `admit` would.
        let highest = if txns.iter().any(|txn| txn.priority == Priority::High) {
            Priority::High
        } else {
            Priority::Normal
        };
        let mut reservation = Reservation::none();
        let mut refused = None;
        let mut submitted = 0;
        for (index, txn) in txns.iter().enumerate() {
            if malformed(txn, self.participants) {
                tickets.put(rejected(crate::proto::Reason::MALFORMED));
                submitted += 1;
                continue;
            }
            let mut seen = self
                .dedup
                .lock(txn.id, super::dedup::legs_digest(txn.legs()));
            let duplicate = match seen.seen() {
                Seen::Decided(outcome) => {
                    tickets.put(Ticket::ready(outcome));
                    submitted += 1;
                    continue;
                }
                Seen::DifferentLegs => {
                    tickets.put(rejected(crate::proto::Reason::EXISTS_WITH_DIFFERENT_LEGS));
                    submitted += 1;
                    continue;
                }
                Seen::InFlight => true,
                Seen::New => false,
            };
            if reservation.is_spent() {
                // Places for the rest of the group, in one step (the first one, or again
                // when retries left fewer members needing one than were reserved).
                admission.release(reservation);
                reservation = admission.reserve(txns.len() - index, highest);
            }
            if let Err(reason) = admission.take(&mut reservation, txn.priority) {
                refused = Some(reason);
                break;
            }
            let Some((ticket, completion)) = admission.issue() else {
                admission.untake(&mut reservation);
                refused = Some(BusyReason::Tickets);
                break;
            };
            if duplicate {
                // A duplicate of a transaction in flight (maybe earlier in this group).
                seen.attach(completion);
                tickets.put(ticket);
                submitted += 1;
                continue;
            }
            // The shard stays locked until the transaction is in the intake, so that a
            // duplicate racing with it sees it in flight, never half-submitted.
            seen.start();
            let pending = Pending {
                txn: *txn,
                completion,
                submitted_us: self.submitted_us,
            };
            if let Err(error) = intake.push_unrung(pending) {
                // Admission keeps the intake queue from filling, so only a stopped
                // batcher lands here.
                let outcome = Outcome::Aborted(AbortReason::Shutdown);
                let _ = admission.complete(error.into_inner().completion, outcome);
                drop(seen);
                for waiter in self.dedup.decide(txn.id, outcome) {
                    let _ = admission.complete(waiter, outcome);
                }
            }
            tickets.put(ticket);
            submitted += 1;
        }
        admission.release(reservation);
        intake.ring();
        match refused {
            None => Ok(()),
            Some(reason) => {
                self.metrics.record_busy(txns[submitted].priority, reason);
                Err(Busy::new(submitted, reason))
            }
        }
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
    /// The longest time one step of zero-filling a segment (one recycled below a
    /// checkpoint, or a new spare for the next roll) held up its site.
    pub recycle_pause_us_max: u64,
    /// The longest WAL sync so far over every site (submit to completion).
    pub sync_us_max: u64,
    /// The age of the oldest WAL sync in flight now (0 when none is): a disk that
    /// stalls shows here while it stalls, before any sync completes.
    pub sync_in_flight_us_max: u64,
    /// The vote timeout the coordinator gave its last batch: with `overlap` it follows
    /// the participants' measured vote latency within the `Timeouts` bounds.
    pub vote_timeout_us: u64,
    /// Whether a site stopped because its drain bound (`drain_us_max`) ran out while
    /// transactions were still undecided; they stay in doubt until the next open.
    pub drain_bound_hit: bool,
    /// How long a stopping site waits for undecided transactions to be decided.
    pub drain_us_max: u64,
    /// Stage threads the kernel refused to pin to their core (`pin_threads`); they run
    /// unpinned.
    pub pins_failed: u64,
}

impl Engine {
    /// Submits a transaction. Returns its ticket, or hands the transaction back in
    /// [`Busy`] when the engine sheds load (`Normal` priority first).
    ///
    /// A transaction naming a participant the engine does not have, or none at all, is
    /// not submitted: its ticket is ready at once with `Rejected(MALFORMED)`. An id
    /// still remembered (in flight, or among the recently decided) is a retry when its
    /// legs are the same: it gets the first submission's outcome. With other legs it is
    /// rejected at once with `Rejected(EXISTS_WITH_DIFFERENT_LEGS)`. After
    /// shutdown began, tickets are ready at once with `Aborted(Shutdown)`.
    pub fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        submit_to(
            self.intake.as_ref(),
            &self.admission,
            &self.dedup,
            self.participants,
            &self.metrics,
            self.clock.now_us(),
            txn,
        )
    }

    /// Submits a group of transactions, in order, and appends one ticket per
    /// transaction submitted to `tickets`. Each is judged exactly as [`submit`] judges
    /// one (malformed, retry, duplicate in flight, shutdown); the group shares one clock
    /// reading, one admission step and one wake-up of the batcher, which is what makes
    /// it cheaper per transaction than a loop of `submit` (as TigerBeetle's clients
    /// send thousands of transfers per request).
    ///
    /// When the engine sheds load part way, the first ones are submitted and the rest
    /// are not: `Busy`'s value ([`Busy::into_inner`]) is how many were, and their
    /// tickets are in `tickets`. Admission holds for a group as for single submissions:
    /// never more than `intake_capacity_txns` unfinished, `Normal` ones refused above
    /// `intake_high_water_txns`.
    ///
    /// [`submit`]: Engine::submit
    pub fn submit_many(&self, txns: &[Txn], tickets: &mut Vec<Ticket>) -> Result<(), Busy<usize>> {
        let group = Group {
            intake: self.intake.as_ref(),
            admission: &self.admission,
            dedup: &self.dedup,
            participants: self.participants,
            metrics: &self.metrics,
            submitted_us: self.clock.now_us(),
        };
        group.submit(txns, tickets)
    }

    /// The engine's counters so far.
    pub fn counters(&self) -> EngineCounters {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let now_us = self.clock.now_us();
        let mut counters = EngineCounters {
            drain_us_max: self.drain_max.as_micros() as u64,
            pins_failed: load(&self.pins_failed),
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
            counters.sync_us_max = counters.sync_us_max.max(load(&site.sync_us_max));
            let started_us = load(&site.sync_started_us);
            if started_us > 0 {
                let age_us = now_us.saturating_sub(started_us);
                counters.sync_in_flight_us_max = counters.sync_in_flight_us_max.max(age_us);
            }
            counters.vote_timeout_us = counters.vote_timeout_us.max(load(&site.vote_timeout_us));
            counters.drain_bound_hit |= site.drain_bound_hit.load(Ordering::Relaxed);
        }
        counters
    }

    /// What opening each site's log found and did: records recovered, torn tails
    /// dropped (bytes and place, per site), and the sync backend in use, with the
    /// reason where io_uring fell back to fdatasync.
    pub fn recovery_report(&self) -> &super::recovery::RecoveryReport {
        &self.recovery
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
            None => Ok(Shutdown {
                participants,
                counters: self.counters(),
            }),
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
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    // Proves a pin the kernel refuses is reported, not ignored: the Spawner counts it
    // and the thread still runs (unpinned); a core the process may use pins cleanly.
    #[test]
    fn a_refused_pin_is_counted_and_the_stage_still_runs() {
        // Within a cpu_set_t, and far above any core of the machines this runs on.
        const CORE_ABSENT: usize = 1000;
        let mut spawner = super::Spawner::new(false);
        spawner.cores = vec![CORE_ABSENT];
        let ran = spawner
            .spawn("tc-test-absent".into(), || true)
            .expect("spawn")
            .join()
            .expect("join");
        assert!(ran);
        assert_eq!(spawner.pins_failed.load(Ordering::Relaxed), 1);
        // Past what a cpu_set_t holds core_affinity would panic; the pin refuses.
        assert!(!crate::pipeline::cores::pin_current_thread(1 << 20));
        let mut spawner = super::Spawner::new(true);
        if spawner.cores.is_empty() {
            return; // The OS reports no cores: nothing is pinned, nothing can fail.
        }
        spawner.cores.truncate(1);
        spawner
            .spawn("tc-test-present".into(), || ())
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(spawner.pins_failed.load(Ordering::Relaxed), 0);
    }

    use super::prepared_record_bytes_max;
    use crate::proto::{BatchId, Descriptor, Op, Record, TxnId, Vote, OP_PAYLOAD_BYTES};

    #[test]
    fn the_record_bound_is_the_size_of_a_full_prepared_record() {
        // Proves that the configuration check uses the real encoded size, so a batch that
        // passes it can never fail to append: the largest descriptor is one whose
        // transactions have more distinct participant masks than a table holds.
        let txns = crate::proto::record::DESC_CLASSES_MAX as u64 + 45;
        let desc = Descriptor {
            batch: BatchId(7),
            txns: (0..txns).map(TxnId).collect(),
            members: (0..txns).map(|i| (i + 1) << 3).collect(),
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
