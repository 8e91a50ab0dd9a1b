//! `tricommit-load --cluster DIR`: the load generator as a network client of a running
//! cluster.
//!
//! The workload, scenarios, `--json` and `--history` are the in-process ones; only the
//! engine is replaced by a [`RemoteClient`]. The cluster's shape (ledgers, accounts,
//! initial balance) comes from its cluster.toml, as do its engine settings.
//!
//! # The bank check
//! The run checks the bank exactly, on the running cluster, through the participants'
//! balance queries ([`BalanceReader`]; a running node's log is never read):
//! 1. before the first transfer, the opening balances of every ledger are read, settled
//!    (no transaction undecided anywhere, everything synced);
//! 2. every outcome acknowledged to the clients is recorded: a commit adds its amounts
//!    to the per-account effects (`driver::Effects`);
//! 3. a transaction whose outcome the client never learned is resubmitted with the same
//!    id and legs: the cluster's id dedup answers with the first submission's outcome
//!    (or, if it never arrived, runs it now), until every outcome is known or
//!    `UNKNOWN_WAIT_MS_MAX` passes (`driver::resolve_unknown`);
//! 4. the closing balances are read, settled, and every account must hold exactly its
//!    opening balance plus its committed effects.
//!
//! So the check needs this run to be the only one moving money on the cluster: another
//! load at the same time is money the check did not see, and it fails (exit 1), which
//! `tools/tests/cluster_bank_check.rs` shows.

use std::path::Path;
use std::time::Duration;

use tricommit_engine::client::{BalanceReader, ClusterConfig, RemoteClient};

use super::driver::{self, Effects};
use super::{scenario::Scenario, Args, LoadError};

/// How long a settled read of all the ledgers may take (at the start and at the end):
/// a transaction whose COMMIT was lost is only finished by the participant's pending
/// timeout and the termination protocol (seconds).
pub const SETTLE_WAIT_MS_MAX: u64 = 30_000;
/// How long the unknown outcomes are resubmitted before the check gives up on them.
pub const UNKNOWN_WAIT_MS_MAX: u64 = 30_000;
/// The most accounts over all ledgers the check holds in memory (three `i64` each:
/// opening, effects, closing), 384 MiB at most.
pub const BANK_CHECK_ACCOUNTS_MAX: u64 = 1 << 24;
/// Mismatching accounts the verdict names at most.
const MISMATCHES_SHOWN_MAX: usize = 5;
/// Bits of the random run prefix (`Workload::id_base`) below the top bit. Two runs
/// against one cluster collide with probability 2^-15; a collision shows as
/// transactions answered with an earlier run's outcome.
const RUN_PREFIX_BITS: u32 = 63 - super::driver::RUN_PREFIX_SHIFT;

/// The arguments of a cluster run: the cluster's ledgers replace the flags'.
pub fn args_for(args: &Args, dir: &Path) -> Result<Args, LoadError> {
    if args.scenario == Scenario::Failure {
        return Err(LoadError::FailureNeedsEmbedded);
    }
    let cluster =
        ClusterConfig::load(dir).map_err(|error| LoadError::Cluster(error.to_string()))?;
    let accounts_total = cluster.ledger.accounts.saturating_mul(cluster.participants);
    if accounts_total > BANK_CHECK_ACCOUNTS_MAX {
        return Err(LoadError::Cluster(format!(
            "{accounts_total} accounts over all ledgers: the bank check holds at most \
             {BANK_CHECK_ACCOUNTS_MAX} in memory"
        )));
    }
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

/// A random, non-zero run prefix for the ids of a cluster run.
pub fn run_prefix() -> Result<u64, LoadError> {
    let bytes = tricommit_engine::client::config::random_key()
        .map_err(|error| LoadError::Cluster(format!("reading /dev/urandom: {error}")))?;
    let random = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let prefix = (random % ((1 << RUN_PREFIX_BITS) - 1)) + 1;
    Ok(prefix << super::driver::RUN_PREFIX_SHIFT)
}

/// The balances every account held before the run, read settled from the running
/// participants.
pub struct Opening {
    reader: BalanceReader,
    balances: Vec<Vec<i64>>,
}

/// Reads the opening balances (step 1 of the module comment). A cluster that does not
/// settle, or does not answer, is an error: the run could not be checked.
pub fn read_opening(dir: &Path) -> Result<Opening, LoadError> {
    let cluster_error = |error: tricommit_engine::client::BalanceError| {
        LoadError::Cluster(format!("reading the opening balances: {error}"))
    };
    let reader = BalanceReader::open(dir).map_err(cluster_error)?;
    let balances = reader
        .read_all_settled(Duration::from_millis(SETTLE_WAIT_MS_MAX))
        .map_err(cluster_error)?;
    let accounts: usize = balances.iter().map(Vec::len).sum();
    eprintln!(
        "tricommit-load: opening balances read: {} ledgers, {accounts} accounts",
        balances.len()
    );
    Ok(Opening { reader, balances })
}

impl Opening {
    /// Per-account effects sized like the ledgers read.
    pub fn effects(&self) -> Effects {
        Effects::new(self.balances.iter().map(Vec::len).collect())
    }
}

/// What the end of a cluster run found.
pub struct ClusterCheck {
    /// The verdict: every balance equals opening + committed effects, or why not.
    pub verdict: Result<(), String>,
    /// What was compared, in words (the summary's `bank check` row).
    pub described: String,
    /// History lines of the outcomes learned by resubmission (and of those still
    /// unknown), written after the clients' lines.
    pub history: Vec<String>,
}

/// Steps 3 and 4 of the module comment: resolves the unknown outcomes, reads the
/// closing balances and compares.
pub fn check_bank(
    dir: &Path,
    opening: &Opening,
    effects: &Effects,
    unknown: Vec<driver::Unknown>,
) -> Result<ClusterCheck, LoadError> {
    let unknown_count = unknown.len();
    let resolution = driver::resolve_unknown(
        || RemoteClient::connect(dir).map_err(|error| error.to_string()),
        unknown,
        effects,
        Duration::from_millis(UNKNOWN_WAIT_MS_MAX),
    );
    let closing = match opening
        .reader
        .read_all_settled(Duration::from_millis(SETTLE_WAIT_MS_MAX))
    {
        Ok(closing) => closing,
        Err(error) => {
            return Ok(ClusterCheck {
                verdict: Err(format!("reading the closing balances: {error}")),
                described: "closing balances not read".to_owned(),
                history: resolution.lines,
            })
        }
    };
    let mut verdict = compare(&opening.balances, effects, &closing);
    if let (Err(why), true) = (&mut verdict, resolution.still_unknown > 0) {
        why.push_str(&format!(
            " ({} outcomes stayed unknown after {UNKNOWN_WAIT_MS_MAX} ms of resubmission)",
            resolution.still_unknown
        ));
    }
    let accounts: usize = closing.iter().map(Vec::len).sum();
    let described = format!(
        "{accounts} accounts on {} ledgers read live: closing = opening + acknowledged \
         commits; {unknown_count} unknown outcomes resubmitted ({} committed, {} aborted, \
         {} still unknown)",
        closing.len(),
        resolution.committed,
        resolution.aborted,
        resolution.still_unknown
    );
    Ok(ClusterCheck {
        verdict,
        described,
        history: resolution.lines,
    })
}

/// Every closing balance must equal its opening balance plus its effects, exactly.
fn compare(opening: &[Vec<i64>], effects: &Effects, closing: &[Vec<i64>]) -> Result<(), String> {
    let mut mismatches = Vec::new();
    let mut mismatched = 0u64;
    for (ledger, (before, after)) in opening.iter().zip(closing).enumerate() {
        if before.len() != after.len() {
            return Err(format!(
                "ledger {ledger} had {} accounts at the start and {} at the end",
                before.len(),
                after.len()
            ));
        }
        for (account, (&was, &is)) in before.iter().zip(after).enumerate() {
            let expected = i128::from(was) + effects.get(ledger, account);
            if i128::from(is) != expected {
                mismatched += 1;
                if mismatches.len() < MISMATCHES_SHOWN_MAX {
                    mismatches.push(format!(
                        "ledger {ledger} account {account}: {is}, expected {expected}"
                    ));
                }
            }
        }
    }
    if opening.len() != closing.len() {
        return Err(format!(
            "{} ledgers at the start, {} at the end",
            opening.len(),
            closing.len()
        ));
    }
    if mismatched > 0 {
        return Err(format!(
            "{mismatched} balances differ from opening + acknowledged commits: {}",
            mismatches.join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that the comparison is exact: equal balances pass, one unit off anywhere
    // fails and is named, and a changed shape fails.
    #[test]
    fn the_comparison_is_exact() {
        let opening = vec![vec![10, 10], vec![10, 10]];
        let effects = Effects::new(vec![2, 2]);
        effects.add(0, 1, -3);
        effects.add(1, 0, 3);
        assert_eq!(
            compare(&opening, &effects, &[vec![10, 7], vec![13, 10]]),
            Ok(())
        );
        let off = compare(&opening, &effects, &[vec![10, 7], vec![13, 11]]).unwrap_err();
        assert!(off.contains("ledger 1 account 1: 11, expected 10"), "{off}");
        assert!(compare(&opening, &effects, &[vec![10, 7]]).is_err());
        assert!(compare(&opening, &effects, &[vec![10, 7], vec![13]]).is_err());
    }
}
