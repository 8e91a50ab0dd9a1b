//! `tricommit-load --cluster DIR`: the load generator as a network client of a running
//! cluster.
//!
//! The workload, scenarios, `--json` and `--history` are the in-process ones; only the
//! engine is replaced by a [`RemoteClient`]. The cluster's shape (ledgers, accounts,
//! initial balance) comes from its cluster.toml, as do its engine settings.
//!
//! The bank invariant is checked by asking the nodes' logs: once every outcome is in,
//! the participants' ledgers are recovered read-only from their data directories
//! (`DIR/participant-N/`, as `ledger dump --cluster` does) while the cluster keeps
//! running, and their total must equal the genesis total. A transfer acknowledged just
//! before may still be on its way to one ledger (COMMIT is sent after the client's
//! answer), so the check is repeated, up to `BANK_CHECK_ATTEMPTS_MAX` times, until the
//! ledgers agree; a real violation never settles.

use std::path::Path;
use std::time::Duration;

use tricommit_engine::client::{ClusterConfig, RemoteClient};
use tricommit_engine::runtime::recover_ledgers;

use super::{scenario::Scenario, Args, LoadError};

/// Read-only recoveries of the ledgers before the bank check gives its verdict.
const BANK_CHECK_ATTEMPTS_MAX: u32 = 50;
/// Pause between two of them.
const BANK_CHECK_PAUSE_MS: u64 = 100;

/// The arguments of a cluster run: the cluster's ledgers replace the flags'.
pub fn args_for(args: &Args, dir: &Path) -> Result<Args, LoadError> {
    if args.scenario == Scenario::Failure {
        return Err(LoadError::FailureNeedsEmbedded);
    }
    let cluster =
        ClusterConfig::load(dir).map_err(|error| LoadError::Cluster(error.to_string()))?;
    let mut args = args.clone();
    args.ledgers = cluster.participants;
    args.accounts = cluster.ledger.accounts;
    args.initial_balance = cluster.ledger.initial_balance;
    args.batch_txns_max = cluster.engine.batch_txns_max;
    args.batch_delay_us = cluster.engine.batch_delay_us_max;
    Ok(args)
}

/// Connects to the cluster's opening replica.
pub fn connect(dir: &Path) -> Result<RemoteClient, LoadError> {
    RemoteClient::connect(dir).map_err(|error| LoadError::Cluster(error.to_string()))
}

/// The bank invariant over the running cluster's ledgers (see the module comment).
pub fn check_bank(dir: &Path, expected_total: i128) -> Result<Result<(), String>, LoadError> {
    let mut verdict = Err("no attempt".to_owned());
    for attempt in 1..=BANK_CHECK_ATTEMPTS_MAX {
        verdict = match recover_ledgers(dir, |_| None) {
            Ok(ledgers) => total_of(&ledgers, expected_total),
            // A log read while its node appends may end in a record being written: the
            // next attempt reads it whole.
            Err(error) if attempt < BANK_CHECK_ATTEMPTS_MAX => Err(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        if verdict.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(BANK_CHECK_PAUSE_MS));
    }
    Ok(verdict)
}

fn total_of(
    ledgers: &[tricommit_engine::runtime::RecoveredLedger],
    expected_total: i128,
) -> Result<(), String> {
    let mut total: i128 = 0;
    for recovered in ledgers {
        let ledger = recovered.ledger();
        ledger
            .check_invariants()
            .map_err(|error| format!("ledger {}: {error}", recovered.index))?;
        total += ledger.total_balance();
    }
    if total != expected_total {
        return Err(format!(
            "total balance is {total}, expected {expected_total}"
        ));
    }
    Ok(())
}
