//! The engine runtime: the protocol's state machines driven by pinned stage threads,
//! bounded lock-free queues, and one write-ahead log per site.
//!
//! Sites: coordinator replicas take site ids `0..replicas` (replica 0 opens every
//! batch), participants the ids after them. Each site is a thread with its own log in
//! `data_dir/replica-N` or `data_dir/participant-N`.

pub mod checkpoint;
mod config;
pub mod crashpoint;
mod dedup;
mod engine;
mod meta;
pub mod node;
mod recovery;
mod site;
mod stages;
mod txn;

pub use config::{
    EngineConfig, ParticipantRm, ParticipantSpec, RmFactory, Timeouts, LOG_SEGMENTS_MAX_DEFAULT,
    LOG_SEGMENTS_MAX_MIN, PARTICIPANTS_MAX, REPLICAS_DEFAULT, REPLICAS_MAX, VOTE_MIN_US_DEFAULT,
};
pub use dedup::DEDUP_DECIDED_MAX;
pub use engine::{Engine, EngineCounters, EngineError, Shutdown};
pub use meta::{
    read_meta, recover_ledgers, DataDirMeta, DumpError, MetaError, RecoveredLedger, META_FILE,
};
pub use recovery::{RecoveryReport, SiteRecovery};
pub use site::{Frame, Links, FLUSH_ROUNDS_MAX, FRAMES_PER_TURN_MAX, INBOX_FRAMES_CAPACITY};
pub use stages::{BATCHES_QUEUED_MAX, COMPLETION_CHUNKS_CAPACITY};
pub use txn::{Leg, Txn, TxnError, TXN_LEGS_MAX};
