//! `tricommit-load --cluster DIR`: the load generator as a network client of a running
//! cluster.
//!
//! The workload, scenarios, `--json` and `--history` are the in-process ones; only the
//! engine is replaced by a [`RemoteClient`]. The cluster's shape (ledgers, accounts,
//! initial balance) comes from its cluster.toml, as do its engine settings.
//!
//! The bank invariant is checked on the nodes' logs: once every outcome is in, the
//! participants' ledgers are recovered read-only from their data directories
//! (`DIR/participant-N/`, as `ledger dump --cluster` does) while the cluster keeps
//! running, and their total must equal the genesis total.
//!
//! Two things make a live read lag: a participant logs COMMIT without a sync (the
//! records of the last batches may still be in its buffers), and a batch's COMMIT
//! reaches the participants with later traffic (measured: the last batch of a run
//! stayed unposted on both its ledgers until the next run or a stop). So the check
//! sends probe transfers of 1 from each ledger's account 0 to the next ledger's, then
//! back: committing batches that carry the earlier COMMITs and make every ledger sync
//! its log. They are real transfers and are written to the history like any other
//! (ids with the top bit set, which no workload id has); forward and back, they leave
//! the balances as they were. Probes and read are repeated, within `BANK_CHECK_WAIT_MS_MAX`,
//! while a commit may still be in flight; a real violation never settles. (The
//! stopped cluster's `ledger dump --cluster` is the check that needs no waiting: a
//! node syncs everything when it stops.)

use std::path::Path;
use std::time::{Duration, Instant};

use tricommit_engine::client::{ClusterConfig, RemoteClient};
use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::recover_ledgers;
use tricommit_engine::runtime::DumpError;
use tricommit_engine::{Outcome, Txn};

use super::{scenario::Scenario, Args, LoadError};

/// Read-only recoveries of the ledgers before the bank check gives its verdict, and
/// the time they may take: a COMMIT lost to a full queue is only re-learned by the
/// participant's pending timeout and termination (seconds), so a verdict of failure
/// waits that long.
const BANK_CHECK_ATTEMPTS_MAX: u32 = 100;
const BANK_CHECK_WAIT_MS_MAX: u64 = 20_000;
/// Pause between two of them.
const BANK_CHECK_PAUSE_MS: u64 = 200;
/// Rounds of probes, one after the other, per attempt: forward, then back. A
/// batch's COMMIT travels with a later batch's messages, so it takes committing
/// traffic after it to reach (and be synced by) every ledger.
const PROBE_ROUNDS: u64 = 2;
/// A probe moves this much from one ledger's account 0 to the next's, and back.
const PROBE_AMOUNT: u64 = 1;
/// How long a probe may take to be answered.
const PROBE_WAIT_MS_MAX: u64 = 30_000;
/// The id bit of the probes; workload ids stay below it.
const PROBE_ID_BIT: u64 = 1 << 63;
/// Bits of the random run prefix (`Workload::id_base`), between the workload's own id
/// bits and the probe bit. Two runs against one cluster collide with probability
/// 2^-15; a collision shows as transactions answered with an earlier run's outcome.
const RUN_PREFIX_BITS: u32 = 63 - super::driver::RUN_PREFIX_SHIFT;

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

/// A random, non-zero run prefix for the ids of a cluster run.
pub fn run_prefix() -> Result<u64, LoadError> {
    let bytes = tricommit_engine::client::config::random_key()
        .map_err(|error| LoadError::Cluster(format!("reading /dev/urandom: {error}")))?;
    let random = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let prefix = (random % ((1 << RUN_PREFIX_BITS) - 1)) + 1;
    Ok(prefix << super::driver::RUN_PREFIX_SHIFT)
}

/// Sends one round of probes (see the module comment) and waits for their outcomes;
/// appends one history line per probe to `history`. `reverse` sends each probe back
/// the way the previous round sent it, so that two rounds leave every balance as it
/// was.
fn probe_ledgers(
    client: &RemoteClient,
    ledgers: u64,
    id_base: u64,
    reverse: bool,
    history: &mut Vec<String>,
) -> Result<(), LoadError> {
    let mut sent = Vec::new();
    for ledger in 0..ledgers {
        let id = TxnId(PROBE_ID_BIT | id_base | ledger);
        let (mut from, mut to) = (ledger as u8, ((ledger + 1) % ledgers) as u8);
        if reverse {
            std::mem::swap(&mut from, &mut to);
        }
        let txn = Txn::transfer(id, (from, 0), (to, 0), PROBE_AMOUNT)
            .map_err(|error| LoadError::Cluster(format!("probe: {error}")))?;
        let ticket = client
            .submit(txn)
            .map_err(|busy| LoadError::Cluster(format!("probe: {busy}")))?;
        sent.push((id, from, to, ticket));
    }
    for (id, from, to, ticket) in sent {
        let outcome = ticket
            .wait_timeout(Duration::from_millis(PROBE_WAIT_MS_MAX))
            .map_err(|_| LoadError::Cluster("a probe was not answered".into()))?;
        let word = match outcome {
            Outcome::Committed => "committed",
            Outcome::Aborted(_) => "aborted",
            Outcome::InDoubt => "unknown",
        };
        history.push(format!("{} {from} 0 {to} 0 {PROBE_AMOUNT} {word}", id.0));
    }
    Ok(())
}

/// The bank invariant over the running cluster's ledgers (see the module comment).
pub fn check_bank(
    dir: &Path,
    client: &RemoteClient,
    ledgers: u64,
    id_base: u64,
    expected_total: i128,
    history: &mut Vec<String>,
) -> Result<BankVerdict, LoadError> {
    let deadline = Instant::now() + Duration::from_millis(BANK_CHECK_WAIT_MS_MAX);
    let mut verdict = Err("no attempt".to_owned());
    for attempt in 0..BANK_CHECK_ATTEMPTS_MAX {
        for round in 0..PROBE_ROUNDS {
            let round_id = (u64::from(attempt) * PROBE_ROUNDS + round) << 16;
            probe_ledgers(client, ledgers, id_base | round_id, round % 2 == 1, history)?;
        }
        let last = attempt + 1 == BANK_CHECK_ATTEMPTS_MAX || Instant::now() >= deadline;
        verdict = match recover_ledgers(dir, |_| None) {
            Ok(ledgers) => total_of(&ledgers, expected_total),
            // A running node holds its log's lock, and a log is never read under its
            // writer (the reader could map a segment mid-append): the ledgers can be
            // read only once the cluster is stopped.
            Err(DumpError::Wal {
                index,
                source: tricommit_wal::WalError::Locked { .. },
            }) => {
                return Ok(BankVerdict::Deferred(format!(
                    "participant-{index} is running, and a log is never read under its \
                     writer: stop the cluster, then check it with `tricommit ledger dump \
                     --cluster {}` against the history",
                    dir.display()
                )))
            }
            Err(error) if !last => Err(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        if verdict.is_ok() || last {
            break;
        }
        std::thread::sleep(Duration::from_millis(BANK_CHECK_PAUSE_MS));
    }
    Ok(BankVerdict::Checked(verdict))
}

/// What the cluster bank check could say.
pub enum BankVerdict {
    /// The ledgers were read: the invariant held, or why not.
    Checked(Result<(), String>),
    /// The ledgers could not be read while the cluster runs (why, and how to check).
    Deferred(String),
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
