//! `EngineConfig`: what an engine runs, where it keeps its logs, and its limits.

use std::path::PathBuf;
use std::sync::Arc;

use tricommit_wal::WalConfig;

use crate::ledger::{Ledger, LedgerConfig, LedgerError};
use crate::pipeline::bounds::{
    BATCHES_IN_FLIGHT_MAX, BATCH_DELAY_US_DEFAULT, BATCH_TXNS_DEFAULT, INTAKE_HIGH_WATER_TXNS,
    INTAKE_TXNS_MAX,
};
use crate::proto::{Op, Protocol, ResourceManager, RestoreError, TxnId, Vote, SITES_MAX};

/// The most coordinator replicas a deployment may have.
pub const REPLICAS_MAX: usize = 7;
/// The most participants an engine may have; replicas and participants share the
/// protocol's site ids.
pub const PARTICIPANTS_MAX: usize = SITES_MAX - REPLICAS_MAX;
/// The default number of coordinator replicas (DESIGN §2: survives any single failure
/// even for a two-participant transfer).
pub const REPLICAS_DEFAULT: usize = 3;

const _: () = assert!(REPLICAS_MAX + PARTICIPANTS_MAX <= SITES_MAX);
const _: () = assert!(REPLICAS_DEFAULT <= REPLICAS_MAX);

/// Builds a fresh custom resource manager; called at open (then replayed from the log).
pub type RmFactory = Arc<dyn Fn() -> Box<dyn ResourceManager + Send> + Send + Sync>;

/// One participant of the engine.
#[derive(Clone)]
pub enum ParticipantSpec {
    /// The built-in ledger, starting from this genesis configuration.
    Ledger(LedgerConfig),
    /// A custom resource manager, with a name for its log directory and for errors.
    Custom { name: String, factory: RmFactory },
}

impl std::fmt::Debug for ParticipantSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParticipantSpec::Ledger(config) => {
                formatter.debug_tuple("Ledger").field(config).finish()
            }
            ParticipantSpec::Custom { name, .. } => formatter
                .debug_struct("Custom")
                .field("name", name)
                .finish(),
        }
    }
}

/// The resource manager a participant stage drives: the built-in ledger without dynamic
/// dispatch, or a custom one behind a box.
pub enum ParticipantRm {
    Ledger(Box<Ledger>),
    Custom(Box<dyn ResourceManager + Send>),
}

impl ParticipantRm {
    pub(crate) fn genesis(spec: &ParticipantSpec) -> Result<ParticipantRm, LedgerError> {
        Ok(match spec {
            ParticipantSpec::Ledger(config) => {
                ParticipantRm::Ledger(Box::new(Ledger::new(*config)?))
            }
            ParticipantSpec::Custom { factory, .. } => ParticipantRm::Custom(factory()),
        })
    }

    /// The ledger, when this participant is one.
    pub fn ledger(&self) -> Option<&Ledger> {
        match self {
            ParticipantRm::Ledger(ledger) => Some(ledger),
            ParticipantRm::Custom(_) => None,
        }
    }
}

impl ResourceManager for ParticipantRm {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.prepare(ops, votes),
            ParticipantRm::Custom(rm) => rm.prepare(ops, votes),
        }
    }

    fn replay_prepare(&mut self, ops: &[Op], logged: &[Vote], votes: &mut Vec<Vote>) {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.replay_prepare(ops, logged, votes),
            ParticipantRm::Custom(rm) => rm.replay_prepare(ops, logged, votes),
        }
    }

    fn recovered(&mut self) {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.recovered(),
            ParticipantRm::Custom(rm) => rm.recovered(),
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.commit(txns),
            ParticipantRm::Custom(rm) => rm.commit(txns),
        }
    }

    fn abort(&mut self, txns: &[TxnId]) {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.abort(txns),
            ParticipantRm::Custom(rm) => rm.abort(txns),
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.snapshot(),
            ParticipantRm::Custom(rm) => rm.snapshot(),
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        match self {
            ParticipantRm::Ledger(ledger) => ledger.restore(snapshot),
            ParticipantRm::Custom(rm) => rm.restore(snapshot),
        }
    }
}

/// Everything `Engine::open` needs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Each site keeps its log in its own directory below this one.
    pub data_dir: PathBuf,
    /// The participants, in order: a transaction's legs name them by index.
    pub participants: Vec<ParticipantSpec>,
    /// Coordinator replicas (1..=REPLICAS_MAX); the first opens every batch.
    pub replicas: usize,
    /// The log configuration of every site (segment size, sync backend).
    pub wal: WalConfig,
    /// A batch closes at this many transactions...
    pub batch_txns_max: usize,
    /// ...or when its oldest transaction waited this long, or at once when the
    /// coordinator is idle.
    pub batch_delay_us_max: u64,
    /// Off: every transaction is a batch of its own (for the comparison benchmarks).
    pub batching: bool,
    /// Off: one batch in flight at a time (for the comparison benchmarks).
    pub pipelining: bool,
    /// Phase overlap (see [`ProtoConfig::overlap`](crate::proto::ProtoConfig::overlap)):
    /// the coordinator's PRE-COMMIT leaves while its own record syncs, and vote
    /// timeouts adapt to the participants. Off for the comparison benchmarks.
    pub overlap: bool,
    /// Normal-priority submissions get `Busy` above this many unfinished transactions.
    pub intake_high_water_txns: usize,
    /// No submission is admitted above this many unfinished transactions.
    pub intake_capacity_txns: usize,
    /// Pin stage threads to cores (round robin over the cores this process may use).
    pub pin_threads: bool,
    /// Three-phase commit (the product), or two-phase commit as a baseline for the
    /// comparison benchmarks. Two-phase **blocks** on a coordinator failure: see
    /// [`Protocol::TwoPhase`]. A data directory keeps the protocol it was created with.
    pub protocol: Protocol,
    /// The protocol's timeouts, in microseconds.
    pub timeouts: Timeouts,
    /// Checkpoint a site once its log holds more than this many segments: the site
    /// writes a snapshot (participants) and a checkpoint group, then recycles every
    /// segment before it, so each log stays within about `log_segments_max + 1`
    /// segments under any steady load. `None` never checkpoints: the logs grow without
    /// bound. Participants (whose logs are the postings audit trail) follow it only
    /// with `compact_postings`.
    pub log_segments_max: Option<u32>,
    /// Let participants checkpoint too, dropping the postings before each checkpoint
    /// from their logs (balances stay exact; `ledger dump --postings` then shows the
    /// postings since the last checkpoint). Off by default: a payment ledger keeps its
    /// postings as an audit trail, and compacting them away is an explicit choice
    /// (DESIGN §5). The coordinator replicas' logs hold no postings and always follow
    /// `log_segments_max`.
    pub compact_postings: bool,
    /// Participants sign their votes (ed25519, one signature per participant per
    /// batch) and the replicas count only votes that verify (`crate::sign`). In-process
    /// the keys are fresh at every open and live in memory only; a cluster keeps them
    /// in `DIR/<site>/vote.key` and `cluster.toml`. Off by default in-process (the
    /// sites share one address space); the compare harness's `overlap-signed`
    /// measures its cost.
    pub sign_votes: bool,
}

/// The default of [`EngineConfig::log_segments_max`]: checkpoint once a log spans more
/// than two segments (with the default 64 MiB segments, at most about 192 MiB a site).
pub const LOG_SEGMENTS_MAX_DEFAULT: u32 = 2;
/// The smallest bound: a checkpoint needs at least one whole segment before the active
/// one to recycle.
pub const LOG_SEGMENTS_MAX_MIN: u32 = 1;

/// The default floor of the adaptive vote timeout ([`Timeouts::vote_min_us`]).
///
/// Half the first timeout: a participant that stops answering costs a client about
/// half a second instead of a second once votes have been timed, while the floor
/// stays twice above the 250 ms that aborted 2% of a saturated closed-loop run
/// (`--scenario sustained`) on the shared project machine, where queueing behind
/// four full batches makes votes late in bursts that the estimate lags (an abort for
/// a vote that was merely slow declines a good payment). Until issue 13 the floor was
/// the first timeout itself (1 s), so the timeout could only ever rise.
pub const VOTE_MIN_US_DEFAULT: u64 = 500_000;

/// The protocol's timers. The engine's defaults are generous: on a shared 2-core VM a
/// sync can take tens of milliseconds, and a vote timeout that fires early aborts
/// transactions that would have committed. It is also the `[timeouts]` section of a
/// cluster's `cluster.toml` (missing keys take these defaults, unknown keys are errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long the coordinator waits for votes before aborting the missing ones. With
    /// `overlap`, this is the wait until a participant's first vote has been timed;
    /// then the wait adapts to the participants' vote latency (Jacobson/Karels), within
    /// `[min(vote_min_us, vote_us), vote_max_us]`.
    pub vote_us: u64,
    /// The floor of the adaptive vote timeout: however quick the votes were, a batch
    /// waits at least this long for them. It is what a participant that stops
    /// answering costs a client at best (the adapted timeout, if higher, rules), so
    /// it is a setting of its own, below `vote_us`: with the floor at `vote_us` the
    /// timeout could only ever rise. See `VOTE_MIN_US_DEFAULT` for the default.
    pub vote_min_us: u64,
    /// The ceiling of the adaptive vote timeout, however slow the votes were.
    pub vote_max_us: u64,
    /// Period of retransmissions to sites that have not acknowledged a round.
    pub retransmit_us: u64,
    /// How long a site holds an undecided transaction before it chases a decision.
    pub pending_us: u64,
    /// Delay per replica rank before it starts recovery.
    pub recovery_stagger_us: u64,
    /// How long a recovery coordinator collects states.
    pub collect_us: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            vote_us: 1_000_000,
            vote_min_us: VOTE_MIN_US_DEFAULT,
            vote_max_us: 5_000_000,
            retransmit_us: 100_000,
            pending_us: 2_000_000,
            recovery_stagger_us: 200_000,
            collect_us: 200_000,
        }
    }
}

impl Timeouts {
    /// The protocol configuration for `replicas` with these timeouts.
    pub fn proto_config(&self, replicas: Vec<crate::proto::SiteId>) -> crate::proto::ProtoConfig {
        let mut config = crate::proto::ProtoConfig::new(replicas);
        config.vote_timeout_us = self.vote_us;
        config.vote_timeout_min_us = self.vote_min_us;
        config.vote_timeout_max_us = self.vote_max_us;
        config.retransmit_us = self.retransmit_us;
        config.pending_timeout_us = self.pending_us;
        config.recovery_stagger_us = self.recovery_stagger_us;
        config.collect_timeout_us = self.collect_us;
        config
    }
}

/// The share of a log segment one participant's checkpoint may spend on its carried id
/// index: one eighth, so that a checkpoint still frees segments.
const CARRIED_IDS_SEGMENT_SHARE: u64 = 8;

impl EngineConfig {
    /// How many decided ids each participant keeps in its id index (`proto::ids`):
    /// `HELD_IDS_DECIDED_MAX`, or fewer where a checkpoint carrying them all would fill
    /// more than an eighth of a segment (segments below 64 MiB).
    pub fn held_ids_decided_max(&self) -> usize {
        use crate::proto::ids::{CARRIED_ID_BYTES, HELD_IDS_DECIDED_MAX};
        let carried = self.wal.segment_bytes / CARRIED_IDS_SEGMENT_SHARE / CARRIED_ID_BYTES as u64;
        (carried as usize).clamp(1, HELD_IDS_DECIDED_MAX)
    }

    /// `ledgers` built-in ledgers of `accounts` accounts, each starting at
    /// `initial_balance`, with the default limits and a log below `data_dir`.
    pub fn ledgers(
        data_dir: impl Into<PathBuf>,
        ledgers: usize,
        accounts: u64,
        initial_balance: i64,
    ) -> EngineConfig {
        let mut ledger = LedgerConfig::new(accounts);
        ledger.balance_initial = initial_balance;
        EngineConfig {
            data_dir: data_dir.into(),
            participants: vec![ParticipantSpec::Ledger(ledger); ledgers],
            replicas: REPLICAS_DEFAULT,
            wal: WalConfig::default(),
            batch_txns_max: BATCH_TXNS_DEFAULT,
            batch_delay_us_max: BATCH_DELAY_US_DEFAULT,
            batching: true,
            pipelining: true,
            overlap: true,
            intake_high_water_txns: INTAKE_HIGH_WATER_TXNS,
            intake_capacity_txns: INTAKE_TXNS_MAX,
            pin_threads: false,
            protocol: Protocol::ThreePhase,
            timeouts: Timeouts::default(),
            log_segments_max: Some(LOG_SEGMENTS_MAX_DEFAULT),
            compact_postings: false,
            sign_votes: false,
        }
    }

    /// Batches the coordinator keeps in flight at once.
    pub fn batches_in_flight_max(&self) -> usize {
        if self.pipelining {
            BATCHES_IN_FLIGHT_MAX
        } else {
            1
        }
    }
}
