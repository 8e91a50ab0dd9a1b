//! One site of a cluster, as its own process: `tricommit node --cluster DIR --site NAME`.
//!
//! A node is the in-process runtime cut to one site. It opens and recovers that site's
//! log with the engine's own functions, and runs the engine's own site loop
//! (`run_passive` on a participant, `run_active` on every coordinator replica) with
//! links that lead to the other processes instead of to in-process inboxes. Every
//! replica opens batches (their ids name it, so openers never collide): each runs the
//! engine's intake, batcher and completion stages, and a gateway that takes network
//! clients' transactions through the engine's submission path (`submit_to`) and
//! answers their outcomes, so that a client can fail over to any replica. Nothing of the protocol or the site loop is forked: the transport is one
//! more set of links.
//!
//! Lifecycle: [`Node::open`] recovers the site (nothing runs yet), [`OpenedNode::run`]
//! starts it on the given links, [`Node::shutdown`] drains and stops it (a stopping site
//! waits, within the engine's drain bound, for the transactions it holds undecided).

pub mod gateway;
pub mod ledger_query;

pub use super::site::SiteStats;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::client::config::{load_key, ClusterConfig, ConfigError, SiteEntry, SyncName};
use crate::ledger::LedgerConfig;
use crate::pipeline::bounds::{BATCH_TXNS_MAX, INTAKE_QUEUE_TXNS_CAPACITY};
use crate::pipeline::mpsc::{self, MpscReceiver, MpscSender};
use crate::pipeline::{
    spsc, Admission, AdmissionLimits, BatchPolicy, Batcher, Busy, Doorbell, MonotonicClock,
    Outcome, Ticket, WaitConfig,
};
use crate::proto::{Coordinator, Output, Participant, SiteId};
use crate::transport::codec::{BusyReply, ClientReply, Outcomes, REPLY_ITEMS_MAX};
use crate::transport::{
    ClientId, ClientRequest, ClientResponder, Transport, TransportConfig, TransportError,
    TransportObservers, BALANCE_QUERIES_MAX,
};

use super::config::{EngineConfig, ParticipantRm, ParticipantSpec};
use super::dedup::Dedup;
use super::engine::{drain_max, open_log, recover_participant, submit_to, validate, EngineError};
use super::site::{
    run_passive, DrainBoard, Frame, Links, SiteError, SiteIo, SyncInFlight, VoteIo,
    INBOX_FRAMES_CAPACITY,
};
use super::stages::{
    participant_site, run_active, run_batcher, run_completion, ActiveStage, BatcherStage,
    EngineStats, Pending, BATCHES_QUEUED_MAX, COMPLETION_CHUNKS_CAPACITY,
};
use super::txn::Txn;
use crate::metrics::observe::SiteObserver;
use crate::metrics::trace::BatchSpans;
use crate::metrics::EngineMetrics;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: super::meta::MetaError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("vote key: {0}")]
    VoteKey(#[from] crate::sign::keys::KeyError),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

impl NodeError {
    /// Whether the error is the user's input (a configuration, a directory), as
    /// opposed to a failure while running: the CLI exits 2 for these.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            NodeError::Config(_)
                | NodeError::DataDir { .. }
                | NodeError::VoteKey(_)
                | NodeError::Engine(EngineError::Config(_))
                | NodeError::Transport(TransportError::Bind { .. })
                | NodeError::Transport(TransportError::Config { .. })
        )
    }
}

/// The engine configuration every site of `cluster` (in directory `dir`) runs with.
pub fn engine_config(cluster: &ClusterConfig, dir: &Path) -> EngineConfig {
    let mut ledger = LedgerConfig::new(cluster.ledger.accounts);
    ledger.balance_initial = cluster.ledger.initial_balance;
    ledger.reservations_max = cluster.ledger.reservations_max;
    let mut config = EngineConfig::ledgers(dir, cluster.participants as usize, 1, 0);
    config.participants = vec![ParticipantSpec::Ledger(ledger); cluster.participants as usize];
    config.replicas = cluster.replicas as usize;
    config.batch_txns_max = cluster.engine.batch_txns_max as usize;
    config.batch_delay_us_max = cluster.engine.batch_delay_us_max;
    config.timeouts = cluster.timeouts;
    // `ClusterConfig::validate` bounds both by INTAKE_TXNS_MAX, so they fit a usize.
    config.intake_high_water_txns = cluster.engine.intake_high_water_txns as usize;
    config.intake_capacity_txns = cluster.engine.intake_capacity_txns as usize;
    config.pipelining = cluster.engine.pipelining;
    config.protocol = match cluster.engine.protocol {
        crate::client::config::ProtocolName::ThreePhase => crate::proto::Protocol::ThreePhase,
        crate::client::config::ProtocolName::TwoPhase => crate::proto::Protocol::TwoPhase,
    };
    config.wal.sync = match cluster.engine.sync {
        SyncName::Msync => tricommit_wal::SyncBackend::Msync,
        SyncName::Fdatasync => tricommit_wal::SyncBackend::Fdatasync,
        SyncName::IoUring => tricommit_wal::SyncBackend::IoUring,
    };
    config.wal.segment_bytes = cluster.engine.segment_mib << 20;
    config.wal.record_bytes_max = config
        .wal
        .record_bytes_max
        .min((config.wal.segment_bytes / 2) as u32);
    config.log_segments_max = match cluster.engine.log_segments_max {
        0 => None,
        segments => Some(segments as u32),
    };
    config
}

/// Marks `dir` as the data directory of `cluster` (its `tricommit.meta`, as an
/// engine's data directory has): `cluster init` calls it on the empty directory, and
/// every node checks it at start, so a node never replays a log against another
/// genesis. It also lets `ledger dump` read the cluster's ledgers.
pub fn prepare_cluster_dir(cluster: &ClusterConfig, dir: &Path) -> Result<(), NodeError> {
    let config = engine_config(cluster, dir);
    validate(&config)?;
    super::meta::prepare_data_dir(&config).map_err(|source| NodeError::DataDir {
        dir: dir.to_owned(),
        source,
    })
}

/// The state machine a node drives.
enum Role {
    Participant(Box<Participant<ParticipantRm>>),
    Replica(Box<Coordinator>),
}

/// A site recovered from its log, not running yet.
pub struct OpenedNode {
    site: SiteEntry,
    config: EngineConfig,
    role: Role,
    io: SiteIo,
    inbox: MpscSender<Frame>,
    /// The inbox end, until `run` hands it to the site loop.
    inbox_receiver: Option<MpscReceiver<Frame>>,
    /// What this site's stages record into (served by `node --metrics-addr`).
    metrics: Arc<EngineMetrics>,
    /// What this replica's vote guard counts (zero elsewhere).
    vote_stats: Arc<crate::sign::VoteStats>,
}

/// The signed-vote side of site `site` of a cluster that signs: a participant's signer
/// (its key from `DIR/<site>/vote.key`, which must match `cluster.toml`), or a replica's
/// guard (evidence in `DIR/<replica>/evidence/`). Nothing for a cluster that does not.
fn vote_io(
    cluster: &ClusterConfig,
    dir: &Path,
    site: &SiteEntry,
    byzantine: Option<crate::sign::Byzantine>,
) -> Result<VoteIo, NodeError> {
    let Some(keys) = cluster.vote_keys() else {
        return Ok(VoteIo::default());
    };
    let site_dir = dir.join(&site.name);
    let mut votes = VoteIo::default();
    if keys.replicas.contains(&site.id) {
        let evidence = site_dir.join(crate::sign::evidence::EVIDENCE_DIR);
        votes.guard = Some(keys.guard(site.id, evidence, Arc::default()));
        return Ok(votes);
    }
    let secret = crate::sign::keys::load(&site_dir)?;
    if keys.keys.get(site.id.0 as usize).copied().flatten() != Some(secret.verifying_key()) {
        return Err(crate::sign::keys::KeyError::NotListed {
            path: site_dir.join(crate::sign::keys::VOTE_KEY_FILE),
            site: site.name.clone(),
        }
        .into());
    }
    votes.signer = Some(keys.signer(site.id, secret, byzantine));
    Ok(votes)
}

/// The opening replica's client-facing stages.
struct Front {
    intake: Option<MpscSender<Pending>>,
    admission: Arc<Admission>,
    dedup: Arc<Dedup>,
    stats: Arc<EngineStats>,
    metrics: Arc<EngineMetrics>,
    clock: Arc<MonotonicClock>,
    participants: usize,
    batcher: Option<JoinHandle<()>>,
    completion: Option<JoinHandle<()>>,
}

/// A running site.
pub struct Node {
    site: SiteEntry,
    /// What this replica's vote guard counts (zero elsewhere).
    vote_stats: Arc<crate::sign::VoteStats>,
    /// What this site's stages record into (served by `node --metrics-addr`).
    metrics: Arc<EngineMetrics>,
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    stats: Arc<SiteStats>,
    site_thread: Option<JoinHandle<Result<(), SiteError>>>,
    front: Option<Front>,
    /// Network clients' gateway (a networked replica).
    gateway: Option<GatewayThread>,
    transport: Option<Transport>,
}

/// The gateway's thread and how to stop it.
struct GatewayThread {
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    thread: JoinHandle<()>,
}

impl Node {
    /// Starts site `name` of the cluster in `dir` as a networked node: recovers it,
    /// starts its transport (listening on its address, dialling its peers), runs it,
    /// and on a coordinator replica serves network clients.
    pub fn start(dir: &Path, name: &str) -> Result<Node, NodeError> {
        Node::start_with(dir, name, None)
    }

    /// [`Node::start`], with a participant that misbehaves on purpose (tests only:
    /// `tricommit node --test-byzantine`).
    #[doc(hidden)]
    pub fn start_with(
        dir: &Path,
        name: &str,
        byzantine: Option<crate::sign::Byzantine>,
    ) -> Result<Node, NodeError> {
        let cluster = ClusterConfig::load(dir)?;
        let site = cluster.site(name)?;
        let secret = load_key(dir)?;
        prepare_cluster_dir(&cluster, dir)?;
        let mut votes = vote_io(&cluster, dir, &site, byzantine)?;
        let mut opened = OpenedNode::open(site.clone(), engine_config(&cluster, dir))?;
        if let Some(guard) = &mut votes.guard {
            guard.count_into(opened.metrics.clone());
            opened.vote_stats = guard.stats().clone();
        }
        opened.io.votes = votes;
        // A participant answers balance queries from its site thread (`ledger_query`).
        let balance_queries = match opened.role {
            Role::Participant(_) => Some(
                mpsc::channel(BALANCE_QUERIES_MAX, opened.io.doorbell.clone())
                    .map_err(|error| EngineError::Config(error.to_string()))?,
            ),
            Role::Replica(_) => None,
        };
        let (query_sender, query_receiver) = match balance_queries {
            Some((sender, receiver)) => (Some(sender), Some(receiver)),
            None => (None, None),
        };
        let transport_config = TransportConfig {
            cluster_id: cluster.cluster_id,
            me: site.id,
            listen: cluster.listen_addr(&site),
            peers: cluster
                .site_entries()
                .into_iter()
                .filter(|peer| peer.id != site.id)
                .map(|peer| (peer.id, peer.addr))
                .collect(),
            secret,
            heartbeat_interval_ms: cluster.transport.heartbeat_interval_ms,
            peer_silent_ms_max: cluster.transport.peer_silent_ms_max,
            reconnect_backoff_ms_min: cluster.transport.reconnect_backoff_ms_min,
            reconnect_backoff_ms_max: cluster.transport.reconnect_backoff_ms_max,
            // Any replica opens batches, so any replica serves clients.
            accept_clients: u64::from(site.id.0) < cluster.replicas,
            replicas: replica_mask(cluster.replicas),
            balance_queries: query_sender,
        };
        let observers = TransportObservers {
            site_names: cluster
                .site_entries()
                .into_iter()
                .map(|entry| entry.name)
                .collect(),
            spans: Some(opened.io.observe.spans().clone()),
        };
        let mut transport = Transport::start_observed(transport_config, opened.inbox(), observers)?;
        // The scrape reads the transport's own counters: links, traffic, rejects.
        opened.metrics.attach_transport(transport.stats(), site.id);
        // Every site reads its link states: a replica gone starts recovery of what it
        // drove (a replica's recovery; a participant's early HELP).
        opened.io.transport = Some(transport.stats());
        opened.io.ledger_queries = query_receiver.map(|receiver| {
            ledger_query::LedgerQueries::new(receiver, transport.client_responder())
        });
        let requests = transport.take_client_requests();
        let mut node = opened.run(transport.links())?;
        if let (Some(requests), Some(front)) = (requests, &node.front) {
            node.gateway = Some(start_gateway(
                front,
                requests,
                transport.client_responder(),
            )?);
        }
        node.transport = Some(transport);
        Ok(node)
    }

    /// Whether this node's transport has a link up to every other site.
    pub fn links_up(&self) -> bool {
        let Some(transport) = &self.transport else {
            return false;
        };
        let stats = transport.stats();
        (0..=u8::MAX)
            .map(SiteId)
            .take_while(|&id| stats.peer(id).is_some())
            .filter(|&id| id != self.site.id)
            .all(|id| stats.link_up(id))
    }

    /// The transport's counters (a networked node).
    pub fn transport_stats(&self) -> Option<Arc<crate::transport::TransportStats>> {
        self.transport.as_ref().map(|transport| transport.stats())
    }

    /// Reads the cluster in `dir`, opens site `name`'s log in `dir/<name>/` and
    /// recovers its state machine. Nothing runs until [`OpenedNode::run`].
    pub fn open(dir: &Path, name: &str) -> Result<OpenedNode, NodeError> {
        let cluster = ClusterConfig::load(dir)?;
        let site = cluster.site(name)?;
        prepare_cluster_dir(&cluster, dir)?;
        let config = engine_config(&cluster, dir);
        OpenedNode::open(site, config)
    }

    /// What this site's stages record into: serve it with `metrics::encode_text`.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// This node's site.
    pub fn site(&self) -> &SiteEntry {
        &self.site
    }

    /// What this replica's vote guard counted (all zero on a participant, or when the
    /// cluster does not sign).
    pub fn vote_stats(&self) -> &Arc<crate::sign::VoteStats> {
        &self.vote_stats
    }

    /// The site's counters.
    pub fn stats(&self) -> &Arc<SiteStats> {
        &self.stats
    }

    /// Submits a transaction on this replica, which opens its batch, exactly as
    /// [`Engine::submit`](super::Engine::submit) does. Participants open no batches:
    /// their tickets are ready at once with `Aborted(Shutdown)`.
    pub fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        match &self.front {
            Some(front) => submit_to(
                front.intake.as_ref(),
                &front.admission,
                &front.dedup,
                front.participants,
                &front.metrics,
                front.clock.now_us(),
                txn,
            ),
            None => Ok(Ticket::ready(Outcome::Aborted(
                crate::pipeline::AbortReason::Shutdown,
            ))),
        }
    }

    /// Whether this node opens batches (and so takes clients).
    pub fn takes_clients(&self) -> bool {
        self.front.is_some()
    }

    /// Committed and aborted transactions so far (of the batches this replica opened).
    pub fn outcomes(&self) -> (u64, u64) {
        self.front.as_ref().map_or((0, 0), |front| {
            (
                front.stats.committed.load(Ordering::Relaxed),
                front.stats.aborted.load(Ordering::Relaxed),
            )
        })
    }

    /// Batches this replica opened so far.
    pub fn batches(&self) -> u64 {
        self.front
            .as_ref()
            .map_or(0, |front| front.stats.batches.load(Ordering::Relaxed))
    }

    /// Whether the site loop ended (an error, or a stop).
    pub fn site_finished(&self) -> bool {
        self.site_thread
            .as_ref()
            .is_none_or(|thread| thread.is_finished())
    }

    /// Stops taking transactions, lets the site finish what it holds (within the
    /// engine's drain bound), syncs its log and stops every stage.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<(), NodeError> {
        let mut first: Option<NodeError> = None;
        // No new client transactions: the gateway goes first (it holds intake senders).
        if let Some(gateway) = self.gateway.take() {
            gateway.stop.store(true, Ordering::Release);
            gateway.doorbell.ring();
            if gateway.thread.join().is_err() {
                first.get_or_insert(NodeError::Panicked("gateway"));
            }
        }
        if let Some(front) = &mut self.front {
            // Closing the intake lets the batcher drain it and exit.
            front.intake = None;
            if let Some(batcher) = front.batcher.take() {
                if batcher.join().is_err() {
                    first.get_or_insert(NodeError::Panicked("batcher"));
                }
            }
        }
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
        if let Some(thread) = self.site_thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    first.get_or_insert(error.into());
                }
                Err(_) => {
                    first.get_or_insert(NodeError::Panicked("site loop"));
                }
            }
        }
        if let Some(front) = &mut self.front {
            if let Some(completion) = front.completion.take() {
                if completion.join().is_err() {
                    first.get_or_insert(NodeError::Panicked("completion"));
                }
            }
            // Whatever the site left undecided is in doubt for its clients.
            front.admission.complete_all_pending(Outcome::InDoubt);
        }
        // Last: the site loop needed its links to drain.
        if let Some(transport) = self.transport.take() {
            if let Err(error) = transport.shutdown() {
                first.get_or_insert(error.into());
            }
        }
        match first {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.site_thread.is_some() || self.transport.is_some() {
            let _ = self.stop_all();
        }
    }
}

impl OpenedNode {
    fn open(site: SiteEntry, config: EngineConfig) -> Result<OpenedNode, NodeError> {
        validate(&config)?;
        let replicas: Vec<SiteId> = (0..config.replicas as u8).map(SiteId).collect();
        let mut proto_config = config.timeouts.proto_config(replicas);
        proto_config.protocol = config.protocol;
        proto_config.overlap = config.overlap;
        proto_config.held_ids_decided_max = config.held_ids_decided_max();
        let clock = Arc::new(MonotonicClock::new());
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(config.replicas, config.participants.len());
        let dir = config.data_dir.join(&site.name);
        let mut out = Output::default();
        let is_replica = (site.id.0 as usize) < config.replicas;
        let (role, log) = if is_replica {
            let log = open_log(&dir, &site.name, &config, config.log_segments_max)?;
            let now_us = clock.now_us();
            let machine = if log.records.is_empty() {
                Coordinator::new(proto_config, site.id, &mut out)
            } else {
                Coordinator::recover(proto_config, site.id, &log.records, now_us, &mut out)
            }
            .map_err(|source| EngineError::Recover {
                site: site.name.clone(),
                source,
            })?;
            (Role::Replica(Box::new(machine)), log)
        } else {
            let index = site.id.0 as usize - config.replicas;
            debug_assert_eq!(participant_site(config.replicas, index as u8), site.id);
            // A participant's log is its postings audit trail: checkpointed only when
            // the configuration says so (as in-process).
            let bound = config.log_segments_max.filter(|_| config.compact_postings);
            let log = open_log(&dir, &site.name, &config, bound)?;
            let rm = ParticipantRm::genesis(&config.participants[index])
                .map_err(|error| EngineError::Config(format!("{}: {error}", site.name)))?;
            let now_us = clock.now_us();
            let machine =
                recover_participant(&dir, &site.name, site.id, &proto_config, rm, &log, now_us)?;
            (Role::Participant(Box::new(machine)), log)
        };
        let doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let (inbox, inbox_receiver) = mpsc::channel(INBOX_FRAMES_CAPACITY, doorbell.clone())
            .map_err(|error| EngineError::Config(error.to_string()))?;
        let overlap_syncs =
            config.overlap && log.wal.backend() == tricommit_wal::SyncBackend::IoUring;
        let io = SiteIo {
            me: site.id,
            lsn_base: log.wal.last_lsn(),
            wal: log.wal,
            inbox: placeholder_inbox()?,
            doorbell: doorbell.clone(),
            links: Arc::new(Vec::new()),
            clock: clock.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            halt: Arc::new(AtomicBool::new(false)),
            board: Arc::new(DrainBoard::for_one_site(site.id, doorbell)),
            drain_max: drain_max(&config),
            sync: SyncInFlight::new(overlap_syncs),
            stats: Arc::new(SiteStats::default()),
            out,
            frames: Vec::new(),
            encode: Vec::new(),
            appended: crate::proto::AppendSeq(0),
            checkpoint: log.checkpointer,
            observe: SiteObserver::new(
                metrics.clone(),
                site.id,
                config.timeouts.pending_us,
                Arc::new(BatchSpans::new()),
                clock.clone(),
            ),
            ledger_queries: None,
            votes: VoteIo::default(),
            transport: None,
            links_down_seen: 0,
        };
        Ok(OpenedNode {
            site,
            config,
            role,
            io,
            inbox,
            inbox_receiver: Some(inbox_receiver),
            metrics,
            vote_stats: Arc::default(),
        })
    }

    /// This node's site.
    pub fn site(&self) -> &SiteEntry {
        &self.site
    }

    /// The sender into this site's inbox: the transport delivers the frames it
    /// receives here (and `links[me]` is this sender).
    pub fn inbox(&self) -> MpscSender<Frame> {
        self.inbox.clone()
    }

    /// Starts the site on `links` (index = site id): the site loop, and on a replica
    /// the client-facing stages.
    pub fn run(mut self, links: Links) -> Result<Node, NodeError> {
        self.io.links = links;
        self.io.inbox = self
            .inbox_receiver
            .take()
            .expect("an opened node runs once");
        let stop = self.io.stop.clone();
        let doorbell = self.io.doorbell.clone();
        let stats = self.io.stats.clone();
        let mut spawner = super::engine::Spawner::new(self.config.pin_threads);
        let thread_name = format!("tc-{}", self.site.name);
        let (site_thread, front) = match self.role {
            Role::Participant(machine) => {
                let io = self.io;
                let thread =
                    spawner.spawn(thread_name, move || run_passive(*machine, io).map(|_| ()))?;
                (thread, None)
            }
            Role::Replica(machine) => start_front(
                *machine,
                self.io,
                &self.config,
                &mut spawner,
                thread_name,
                self.metrics.clone(),
            )?,
        };
        Ok(Node {
            vote_stats: self.vote_stats,
            site: self.site,
            metrics: self.metrics,
            stop,
            doorbell,
            stats,
            site_thread: Some(site_thread),
            front,
            gateway: None,
            transport: None,
        })
    }
}

/// The mask of a cluster's replicas: sites `0..replicas`.
fn replica_mask(replicas: u64) -> u64 {
    (0..replicas.min(64)).fold(0, |mask, site| mask | 1 << site)
}

/// An inbox that is replaced before the site runs (`SiteIo` has no optional inbox).
fn placeholder_inbox() -> Result<MpscReceiver<Frame>, EngineError> {
    let (_, receiver) = mpsc::channel(1, Arc::new(Doorbell::default()))
        .map_err(|error| EngineError::Config(error.to_string()))?;
    Ok(receiver)
}

type SiteThread = JoinHandle<Result<(), SiteError>>;

/// Starts a replica with the engine's intake, batcher and completion stages,
/// wired as `Engine::open` wires them.
fn start_front(
    machine: Coordinator,
    io: SiteIo,
    config: &EngineConfig,
    spawner: &mut super::engine::Spawner,
    thread_name: String,
    metrics: Arc<EngineMetrics>,
) -> Result<(SiteThread, Option<Front>), NodeError> {
    let config_error = |error: &dyn std::fmt::Display| EngineError::Config(error.to_string());
    let limits = AdmissionLimits::new(config.intake_high_water_txns, config.intake_capacity_txns)
        .map_err(|error| config_error(&error))?;
    let admission = Arc::new(Admission::new(limits).map_err(|error| config_error(&error))?);
    let stats = Arc::new(EngineStats::default());
    let (to_coordinator, from_batcher) = spsc::channel(BATCHES_QUEUED_MAX, io.doorbell.clone())
        .map_err(|error| config_error(&error))?;
    let completion_doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
    let (to_completion, from_coordinator) =
        spsc::channel(COMPLETION_CHUNKS_CAPACITY, completion_doorbell)
            .map_err(|error| config_error(&error))?;
    let intake_doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
    let (intake, intake_receiver) = mpsc::channel(INTAKE_QUEUE_TXNS_CAPACITY, intake_doorbell)
        .map_err(|error| config_error(&error))?;
    let policy = BatchPolicy::new(
        config.batch_txns_max.min(BATCH_TXNS_MAX),
        config.batch_delay_us_max,
        config.batching,
    )
    .map_err(|error| config_error(&error))?;
    let batcher_stage = BatcherStage {
        intake: intake_receiver,
        batcher: Batcher::new(policy),
        to_coordinator,
        clock: io.clock.clone(),
        replicas: config.replicas,
        participants: config.participants.len(),
        stats: stats.clone(),
        metrics: metrics.clone(),
    };
    let stage = ActiveStage {
        batches: from_batcher,
        to_completion,
        window_batches: config.batches_in_flight_max(),
    };
    let clock = io.clock.clone();
    let site_thread = spawner.spawn(thread_name, move || {
        run_active(machine, io, stage).map(|_| ())
    })?;
    let dedup = Arc::new(Dedup::new());
    let completion = {
        let (admission, stats, dedup) = (admission.clone(), stats.clone(), dedup.clone());
        let (metrics, clock) = (metrics.clone(), clock.clone());
        spawner.spawn("tc-completion".into(), move || {
            run_completion(from_coordinator, admission, stats, dedup, metrics, clock)
        })?
    };
    let batcher = spawner.spawn("tc-batcher".into(), move || run_batcher(batcher_stage))?;
    let front = Front {
        intake: Some(intake),
        admission,
        dedup,
        stats,
        metrics,
        clock,
        participants: config.participants.len(),
        batcher: Some(batcher),
        completion: Some(completion),
    };
    Ok((site_thread, Some(front)))
}

/// Client requests the gateway takes per turn.
const CLIENT_REQUESTS_PER_TURN_MAX: usize = 64;
/// The longest the gateway sleeps without looking at its stop flag.
const GATEWAY_TICK_MS: u64 = 50;
/// How long the gateway retries a reply the transport's full reply queue refused before
/// it drops it (its client's transaction then ends `InDoubt` when it gives up).
const REPLY_RETRY_MS_MAX: u64 = 5_000;

/// Starts the gateway of a networked replica: client requests in, through the
/// engine's submission path, outcomes back.
fn start_gateway(
    front: &Front,
    mut requests: MpscReceiver<ClientRequest>,
    responder: ClientResponder,
) -> Result<GatewayThread, NodeError> {
    let intake = front
        .intake
        .clone()
        .expect("the intake is open while the node starts");
    let (admission, dedup) = (front.admission.clone(), front.dedup.clone());
    let participants = front.participants;
    let (metrics, clock) = (front.metrics.clone(), front.clock.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let doorbell = requests.doorbell().clone();
    let held_max = admission.ticket_slots_total();
    let thread = {
        let (stop, doorbell) = (stop.clone(), doorbell.clone());
        std::thread::Builder::new()
            .name("tc-gateway".into())
            .spawn(move || {
                let mut gateway: gateway::Gateway<ClientId> =
                    gateway::Gateway::new(held_max, REPLY_ITEMS_MAX, doorbell.clone());
                let mut taken = Vec::new();
                let answer = |client: ClientId, answer: gateway::Answer| {
                    let reply: ClientReply = match answer {
                        gateway::Answer::Outcomes(items) => Outcomes { items }.into(),
                        gateway::Answer::Busy(ids, reason) => BusyReply { ids, reason }.into(),
                    };
                    send_reply(&responder, client, reply, &stop);
                };
                while !stop.load(Ordering::Acquire) {
                    let tick = std::time::Instant::now()
                        + std::time::Duration::from_millis(GATEWAY_TICK_MS);
                    doorbell.wait_until(
                        || {
                            requests.has_items()
                                || gateway.has_ready()
                                || stop.load(Ordering::Acquire)
                        },
                        Some(tick),
                    );
                    taken.clear();
                    requests.pop_batch(&mut taken, CLIENT_REQUESTS_PER_TURN_MAX);
                    for request in taken.drain(..) {
                        let ClientRequest { client, submit } = request;
                        gateway.take(
                            client,
                            submit.txns,
                            |txn| {
                                submit_to(
                                    Some(&intake),
                                    &admission,
                                    &dedup,
                                    participants,
                                    &metrics,
                                    clock.now_us(),
                                    txn,
                                )
                            },
                            answer,
                        );
                    }
                    gateway.answer_ready(answer);
                }
            })
            .map_err(|source| EngineError::Spawn {
                stage: "gateway".into(),
                source,
            })?
    };
    Ok(GatewayThread {
        stop,
        doorbell,
        thread,
    })
}

/// Queues a reply, retrying (parked in short steps) while the transport's reply queue
/// is full, up to `REPLY_RETRY_MS_MAX` or a stop.
fn send_reply(
    responder: &ClientResponder,
    client: ClientId,
    reply: ClientReply,
    stop: &AtomicBool,
) {
    const FULL_PARK_US: u64 = 100;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(REPLY_RETRY_MS_MAX);
    let mut reply = reply;
    loop {
        match responder.send(client, reply) {
            Ok(()) => return,
            Err(error)
                if error.is_full()
                    && !stop.load(Ordering::Acquire)
                    && std::time::Instant::now() < deadline =>
            {
                reply = error.into_inner().1;
                std::thread::park_timeout(std::time::Duration::from_micros(FULL_PARK_US));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::config::InitOptions;

    /// Opens every site of a small cluster in `dir` and wires them with in-process
    /// links, as the transport would with sockets.
    fn start_all(dir: &Path) -> Vec<Node> {
        let mut opened = Vec::new();
        let names: Vec<String> = ClusterConfig::load(dir)
            .unwrap()
            .site_entries()
            .into_iter()
            .map(|site| site.name)
            .collect();
        for name in &names {
            opened.push(Node::open(dir, name).unwrap());
        }
        let links: Links = Arc::new(opened.iter().map(|node| node.inbox()).collect());
        opened
            .into_iter()
            .map(|node| node.run(links.clone()).unwrap())
            .collect()
    }

    fn init(dir: &Path) {
        let options = InitOptions {
            accounts: 10,
            initial_balance: 100,
            base_port: 20_000,
            ..InitOptions::default()
        };
        let mut cluster = ClusterConfig::from_init(&options, 5).unwrap();
        cluster.engine.segment_mib = 1;
        cluster.engine.sync = SyncName::Fdatasync;
        prepare_cluster_dir(&cluster, dir).unwrap();
        std::fs::write(dir.join("cluster.toml"), cluster.render()).unwrap();
    }

    #[test]
    fn nodes_wired_by_links_commit_and_recover() {
        // Proves that the node entry point runs the engine's runtime one site at a time:
        // seven nodes linked like processes commit transfers, and a reopened cluster
        // recovers balances that add up.
        let dir = tempfile::tempdir().unwrap();
        init(dir.path());
        let nodes = start_all(dir.path());
        let mut tickets = Vec::new();
        for id in 0..50u64 {
            let txn = Txn::transfer(crate::proto::TxnId(id + 1), (0, id % 10), (1, 0), 1).unwrap();
            tickets.push(nodes[0].submit(txn).unwrap());
        }
        let outcomes: Vec<Outcome> = tickets
            .into_iter()
            .map(|ticket| {
                ticket
                    .wait_timeout(std::time::Duration::from_secs(20))
                    .unwrap()
            })
            .collect();
        assert!(outcomes
            .iter()
            .all(|outcome| *outcome == Outcome::Committed));
        for node in nodes {
            node.shutdown().unwrap();
        }
        let ledgers = super::super::recover_ledgers(dir.path(), |_| None).unwrap();
        let balance = |ledger: usize, account: usize| {
            ledgers[ledger].ledger().balances().nth(account).unwrap()
        };
        assert_eq!(balance(1, 0), 150);
        assert_eq!(balance(0, 0), 95);
    }
}
