//! The data directory's identity file, and read-only recovery of the ledgers from it.
//!
//! `data_dir/tricommit.meta` records what the directory was created for: the number of
//! coordinator replicas and each participant's genesis (a ledger's accounts and initial
//! balance, or a custom resource manager's name). Recovery replays each participant's
//! log from that genesis, so reopening with another configuration would silently
//! compute other balances: `Engine::open` refuses it instead. A non-empty directory
//! without the file is refused too, so that the engine never writes into a directory
//! that holds something else.
//!
//! Format (text, one item per line):
//! ```text
//! tricommit-data 1
//! replicas 3
//! participant ledger 100000 1000000 131072
//! participant custom fees
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ledger::{Ledger, LedgerConfig, PostingSink};
use crate::proto::{Participant, Protocol, Record};

use super::config::{EngineConfig, ParticipantRm, ParticipantSpec};
use super::stages::participant_site;

/// The file name, in the data directory.
pub const META_FILE: &str = "tricommit.meta";
const META_HEADER: &str = "tricommit-data 1";
/// A meta file larger than this is not one.
const META_BYTES_MAX: u64 = 64 * 1024;

/// Problems with the data directory itself.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not empty and holds no {META_FILE}: it is not a tricommit data directory")]
    Foreign(PathBuf),
    #[error("{path}: not a tricommit meta file ({reason})")]
    Malformed { path: PathBuf, reason: String },
    #[error("{dir} was created for another configuration: it holds {found}, the configuration asks for {wanted}")]
    Mismatch {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
}

fn spec_line(spec: &ParticipantSpec) -> String {
    match spec {
        ParticipantSpec::Ledger(config) => format!(
            "participant ledger {} {} {}",
            config.accounts, config.balance_initial, config.reservations_max
        ),
        ParticipantSpec::Custom { name, .. } => format!("participant custom {name}"),
    }
}

fn render(config: &EngineConfig) -> String {
    let mut text = format!("{META_HEADER}\nreplicas {}\n", config.replicas);
    // A directory is tied to its protocol: a two-phase log holds commits that only its
    // coordinator knows, which E3PC termination must not be asked to guess. (No line
    // means three-phase, so older directories keep opening.)
    if config.protocol == Protocol::TwoPhase {
        text.push_str("protocol two-phase\n");
    }
    for spec in &config.participants {
        text.push_str(&spec_line(spec));
        text.push('\n');
    }
    text
}

/// Makes sure `config.data_dir` is this configuration's directory: creates it with its
/// meta file when it is new or empty, checks the meta file otherwise.
pub fn prepare_data_dir(config: &EngineConfig) -> Result<(), MetaError> {
    let dir = &config.data_dir;
    let io = |source| MetaError::Io {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(META_FILE);
    let wanted = render(config);
    if path.exists() {
        let found = read_meta_text(&path)?;
        if found != wanted {
            return Err(MetaError::Mismatch {
                dir: dir.clone(),
                found: found.lines().skip(1).collect::<Vec<_>>().join("; "),
                wanted: wanted.lines().skip(1).collect::<Vec<_>>().join("; "),
            });
        }
        return Ok(());
    }
    let temporary = dir.join(format!("{META_FILE}.tmp"));
    // A crash between creating the temporary file and the rename leaves it alone in the
    // directory: that is this engine's unfinished creation, not someone else's data.
    let others = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|entry| entry.path() != temporary)
        .count();
    if others > 0 {
        return Err(MetaError::Foreign(dir.clone()));
    }
    // Write, sync, rename, sync the directory: a crash leaves either no meta file (and
    // at most a stale temporary one, which the next open overwrites) or a whole one.
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(wanted.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io)
}

fn read_meta_text(path: &Path) -> Result<String, MetaError> {
    let malformed = |reason: String| MetaError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let length = std::fs::metadata(path)
        .map_err(|error| malformed(error.to_string()))?
        .len();
    if length > META_BYTES_MAX {
        return Err(malformed(format!("{length} bytes is too large")));
    }
    let text = std::fs::read_to_string(path).map_err(|error| malformed(error.to_string()))?;
    if text.lines().next() != Some(META_HEADER) {
        return Err(malformed(format!("the first line is not `{META_HEADER}`")));
    }
    Ok(text)
}

/// What a data directory was created for, read back from its meta file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirMeta {
    pub replicas: usize,
    /// Each participant's ledger genesis, or `None` for a custom resource manager.
    pub participants: Vec<Option<LedgerConfig>>,
    pub protocol: Protocol,
}

/// Reads `data_dir/tricommit.meta`.
pub fn read_meta(data_dir: &Path) -> Result<DataDirMeta, MetaError> {
    let path = data_dir.join(META_FILE);
    if !path.exists() {
        return Err(MetaError::Malformed {
            path,
            reason: "the file does not exist".into(),
        });
    }
    let text = read_meta_text(&path)?;
    let malformed = |reason: &str| MetaError::Malformed {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let mut replicas = None;
    let mut participants = Vec::new();
    let mut protocol = Protocol::ThreePhase;
    for line in text.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["replicas", count] => {
                replicas = Some(count.parse().map_err(|_| malformed("bad replica count"))?)
            }
            ["participant", "ledger", accounts, balance, reservations] => {
                let mut config = LedgerConfig::new(
                    accounts
                        .parse()
                        .map_err(|_| malformed("bad account count"))?,
                );
                config.balance_initial = balance
                    .parse()
                    .map_err(|_| malformed("bad initial balance"))?;
                config.reservations_max = reservations
                    .parse()
                    .map_err(|_| malformed("bad reservation bound"))?;
                participants.push(Some(config));
            }
            ["participant", "custom", _name] => participants.push(None),
            ["protocol", "two-phase"] => protocol = Protocol::TwoPhase,
            [] => {}
            _ => return Err(malformed("unknown line")),
        }
    }
    let replicas = replicas.ok_or_else(|| malformed("no replicas line"))?;
    Ok(DataDirMeta {
        replicas,
        participants,
        protocol,
    })
}

/// A ledger rebuilt from its log, read-only: the participant's state machine, whose
/// resource manager is the ledger.
pub struct RecoveredLedger {
    pub index: usize,
    pub participant: Participant<ParticipantRm>,
    /// The checkpoint the log starts at, if it was checkpointed: the balances come from
    /// its snapshot, and only the postings made after it are replayed (the posting sink
    /// sees no earlier ones).
    pub checkpoint: Option<u64>,
}

impl RecoveredLedger {
    /// The transactions this ledger holds in doubt (prepared or pre-decided, outcome
    /// not known here), with their states. After a crash, its balances may hold some
    /// transfers on one ledger and not yet on another until `tricommit recover` (or
    /// `Engine::open`) lets the termination protocol decide them.
    pub fn in_doubt(&self) -> Vec<(crate::proto::TxnId, crate::proto::State)> {
        let mut in_doubt = self.participant.undecided();
        in_doubt.sort_unstable_by_key(|(txn, _)| txn.0);
        in_doubt
    }

    /// The rebuilt ledger.
    pub fn ledger(&self) -> &Ledger {
        self.participant
            .rm()
            .ledger()
            .expect("only ledgers are recovered")
    }
}

/// Errors of read-only recovery.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("log of participant {index}: {source}")]
    Wal {
        index: usize,
        source: tricommit_wal::WalError,
    },
    #[error("log of participant {index}, lsn {lsn}: {source}")]
    Record {
        index: usize,
        lsn: u64,
        source: crate::proto::RecordError,
    },
    #[error("participant {index}: {source}")]
    Replay {
        index: usize,
        source: crate::proto::ProtoError,
    },
    #[error("participant {index}: {source}")]
    Checkpoint {
        index: usize,
        source: super::checkpoint::CheckpointError,
    },
    #[error("participant {index}: {source}")]
    Ledger {
        index: usize,
        source: crate::ledger::LedgerError,
    },
}

/// Rebuilds every ledger of `data_dir` from its log (and, for a checkpointed log, the
/// snapshot of the checkpoint it starts at) without writing anything.
/// `posting_sink(index)` may give a sink that receives that ledger's postings in log
/// order as the replay posts them (the audit trail of `ledger dump --postings`; after a
/// checkpoint it holds only the postings made since, see `RecoveredLedger::checkpoint`).
pub fn recover_ledgers(
    data_dir: &Path,
    posting_sink: impl Fn(usize) -> Option<PostingSink>,
) -> Result<Vec<RecoveredLedger>, DumpError> {
    let meta = read_meta(data_dir)?;
    let replicas: Vec<_> = (0..meta.replicas as u8).map(crate::proto::SiteId).collect();
    let proto_config = crate::proto::ProtoConfig::new(replicas);
    let mut ledgers = Vec::new();
    for (index, genesis) in meta.participants.iter().enumerate() {
        let Some(genesis) = genesis else { continue };
        let records = read_participant_log(data_dir, index)?;
        let mut ledger =
            Ledger::new(*genesis).map_err(|source| DumpError::Ledger { index, source })?;
        ledger.set_posting_sink(posting_sink(index));
        let me = participant_site(meta.replicas, index as u8);
        let rm = ParticipantRm::Ledger(Box::new(ledger));
        let dir = data_dir.join(format!("participant-{index}"));
        let (participant, checkpoint) = super::checkpoint::recover_participant(
            &dir,
            proto_config.clone(),
            me,
            rm,
            &records,
            0,
            false,
        )
        .map_err(|source| match source {
            super::checkpoint::CheckpointError::Proto(source) => {
                DumpError::Replay { index, source }
            }
            source => DumpError::Checkpoint { index, source },
        })?;
        ledgers.push(RecoveredLedger {
            index,
            participant,
            checkpoint,
        });
    }
    Ok(ledgers)
}

fn read_participant_log(data_dir: &Path, index: usize) -> Result<Vec<Record>, DumpError> {
    let dir = data_dir.join(format!("participant-{index}"));
    // A log whose creation a crash interrupted (no directory yet, or no segment file
    // yet) holds no record: `Engine::open` starts it empty, and so does a dump.
    if !tricommit_wal::holds_segments(&dir).map_err(|source| DumpError::Wal { index, source })? {
        return Ok(Vec::new());
    }
    let view = tricommit_wal::scan(&dir).map_err(|source| DumpError::Wal { index, source })?;
    let mut records = Vec::new();
    for record in view.read_from(view.report().first_lsn) {
        let record = record.map_err(|source| DumpError::Wal { index, source })?;
        let decoded =
            Record::decode(record.kind, record.payload).map_err(|source| DumpError::Record {
                index,
                lsn: record.lsn,
                source,
            })?;
        records.push(decoded);
    }
    Ok(records)
}
