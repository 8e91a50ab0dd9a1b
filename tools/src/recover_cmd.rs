//! `tricommit recover --data-dir DIR`: finish what a crash left in doubt.
//!
//! Opens the engine on the directory with the configuration its meta file records,
//! lets the E3PC termination protocol decide every transaction a crash left prepared
//! or pre-decided, shuts down cleanly (so every decision is durable) and says what was
//! decided. Afterwards `tricommit ledger dump` shows each transaction on all its
//! ledgers or on none.
//!
//! Exit codes: 0 everything in doubt was decided; 2 the directory cannot be opened
//! (missing, not a tricommit data directory, in use, damaged log); 3 some transactions
//! are still in doubt after the drain bound (a site's log could not take part): run it
//! again, and read the message.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::{read_meta, recover_ledgers, Timeouts};
use tricommit_engine::{Engine, EngineConfig, ParticipantSpec};

/// Exit code: transactions are still in doubt.
pub const EXIT_IN_DOUBT: u8 = 3;
const EXIT_ERROR: u8 = 2;

/// Timers for a recovery with no client load: termination starts soon after the open
/// and retries quickly, so a recovery takes about a second, not the seconds the
/// loaded defaults allow for a slow disk.
fn recovery_timeouts() -> Timeouts {
    Timeouts {
        pending_us: 200_000,
        recovery_stagger_us: 50_000,
        collect_us: 100_000,
        retransmit_us: 50_000,
        ..Timeouts::default()
    }
}

#[derive(clap::Args)]
pub struct RecoverArgs {
    /// The engine's data directory (the one `tricommit-load --data-dir` or an embedding
    /// application wrote).
    #[arg(long)]
    data_dir: PathBuf,
}

/// The distinct transactions held in doubt by any ledger of `data_dir`, read-only.
fn in_doubt(data_dir: &Path) -> Result<HashSet<TxnId>, String> {
    let ledgers = recover_ledgers(data_dir, |_| None).map_err(|error| error.to_string())?;
    Ok(ledgers
        .iter()
        .flat_map(|ledger| ledger.in_doubt())
        .map(|(txn, _)| txn)
        .collect())
}

/// The transactions with at least one posting on some ledger, read-only.
fn posted(data_dir: &Path) -> Result<HashSet<TxnId>, String> {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let sink = |_| -> Option<tricommit_engine::ledger::PostingSink> {
        let seen = seen.clone();
        Some(Box::new(
            move |batch: &[tricommit_engine::ledger::Posting]| {
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.extend(batch.iter().map(|posting| posting.txn));
            },
        ))
    };
    recover_ledgers(data_dir, sink).map_err(|error| error.to_string())?;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(seen.clone())
}

/// The engine configuration the directory was created for.
fn config_of(data_dir: &Path) -> Result<EngineConfig, String> {
    let meta = read_meta(data_dir).map_err(|error| error.to_string())?;
    let mut participants = Vec::with_capacity(meta.participants.len());
    for (index, genesis) in meta.participants.iter().enumerate() {
        match genesis {
            Some(ledger) => participants.push(ParticipantSpec::Ledger(*ledger)),
            None => {
                return Err(format!(
                    "participant {index} is a custom resource manager, which only its \
                     application can rebuild: reopen the engine there (Engine::open \
                     recovers it the same way)"
                ))
            }
        }
    }
    let mut config = EngineConfig::ledgers(data_dir, 0, 0, 0);
    config.participants = participants;
    config.replicas = meta.replicas;
    config.protocol = meta.protocol;
    config.timeouts = recovery_timeouts();
    // Recovery decides and stops; it leaves checkpointing to the next real run.
    config.log_segments_max = None;
    Ok(config)
}

pub fn run(args: RecoverArgs) -> ExitCode {
    match recover(&args.data_dir) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tricommit: error: {}: {message}", args.data_dir.display());
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn recover(data_dir: &Path) -> Result<ExitCode, String> {
    if !data_dir.is_dir() {
        return Err("not a directory".into());
    }
    let config = config_of(data_dir)?;
    let before = in_doubt(data_dir)?;
    println!("in doubt before recovery: {} transactions", before.len());
    let engine = Engine::open(config).map_err(|error| error.to_string())?;
    println!("{}", engine.recovery_report());
    let shutdown = engine.shutdown().map_err(|error| error.to_string())?;
    drop(shutdown.participants);
    let after = in_doubt(data_dir)?;
    let posted = posted(data_dir)?;
    let decided: Vec<&TxnId> = before.iter().filter(|txn| !after.contains(txn)).collect();
    let committed = decided.iter().filter(|txn| posted.contains(txn)).count();
    let aborted = decided.len() - committed;
    println!("decided: {committed} committed, {aborted} aborted");
    if after.is_empty() {
        println!("nothing is in doubt: every transaction is on all its ledgers or on none");
        return Ok(ExitCode::SUCCESS);
    }
    let drain = if shutdown.counters.drain_bound_hit {
        format!(
            " (the sites stopped at their drain bound of {} ms)",
            shutdown.counters.drain_us_max / 1_000
        )
    } else {
        String::new()
    };
    eprintln!(
        "tricommit: error: {} transactions are still in doubt{drain}: the termination \
         protocol could not decide them; run `tricommit recover --data-dir {}` again",
        after.len(),
        data_dir.display()
    );
    Ok(ExitCode::from(EXIT_IN_DOUBT))
}
