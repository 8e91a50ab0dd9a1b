//! The exact bank check of a chaos run, on the stopped cluster's logs.
//!
//! It reads every ledger as `ledger dump --cluster DIR [--postings]` does (the same
//! recovery, read-only) twice: before the run (the baseline: what earlier runs left) and
//! after it. Against the run's history it then checks:
//! 1. nothing is left in doubt (every leg decided once the faults were healed);
//! 2. per-transaction atomicity from the postings: each transaction of the run is
//!    applied on all its ledgers, exactly as sent, or on none;
//! 3. every acknowledged commit is present;
//! 4. no acknowledged abort is applied;
//! 5. nothing the run never sent is applied;
//! 6. the balances: baseline + the history's committed transfers (and the `unknown`
//!    ones that the postings show applied) equal every account's balance, every
//!    ledger's own invariants hold, and the total equals the genesis total.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tricommit_engine::client::ClusterConfig;
use tricommit_engine::ledger::PostingSink;
use tricommit_engine::runtime::recover_ledgers;

use super::probe::{Learned, Record};
use super::ChaosError;

/// Violation messages kept for the report (all are counted).
const MESSAGES_MAX: usize = 20;

/// One posting: ledger, account, delta.
type Leg = (u8, u64, i64);

/// The ledgers of a stopped cluster.
pub struct Snapshot {
    balances: Vec<Vec<i64>>,
    postings: HashMap<u64, Vec<Leg>>,
    in_doubt: usize,
    invariant_errors: Vec<String>,
}

impl Snapshot {
    /// Reads every ledger of the stopped cluster in `dir`. A cluster whose nodes never
    /// ran has no logs yet: its ledgers are the genesis.
    pub fn read(dir: &Path, config: &ClusterConfig) -> Result<Snapshot, ChaosError> {
        if never_ran(dir, config) {
            return Ok(Snapshot::genesis(config));
        }
        let postings: Arc<Mutex<HashMap<u64, Vec<Leg>>>> = Arc::default();
        let sink = |index: usize| -> Option<PostingSink> {
            let postings = postings.clone();
            Some(Box::new(
                move |batch: &[tricommit_engine::ledger::Posting]| {
                    let mut postings = postings.lock().expect("postings lock");
                    for posting in batch {
                        postings.entry(posting.txn.0).or_default().push((
                            index as u8,
                            posting.account,
                            posting.delta,
                        ));
                    }
                },
            ))
        };
        let ledgers = recover_ledgers(dir, sink).map_err(|error| match error {
            // A log is never read under its writer: the cluster runs elsewhere.
            tricommit_engine::runtime::DumpError::Wal {
                index,
                source: tricommit_wal::WalError::Locked { .. },
            } => ChaosError::Usage(format!(
                "participant-{index} of {} is running: stop the cluster first (the runner \
                 starts its own nodes)",
                dir.display()
            )),
            error => ChaosError::Check(error.to_string()),
        })?;
        let mut snapshot = Snapshot {
            balances: Vec::new(),
            postings: std::mem::take(&mut *postings.lock().expect("postings lock")),
            in_doubt: 0,
            invariant_errors: Vec::new(),
        };
        for recovered in &ledgers {
            if let Some(number) = recovered.checkpoint {
                return Err(ChaosError::Check(format!(
                    "ledger {} starts at checkpoint {number}: its postings are compacted, and \
                     the chaos check needs the whole audit trail (leave compact_postings off)",
                    recovered.index
                )));
            }
            snapshot.in_doubt += recovered.in_doubt().len();
            let ledger = recovered.ledger();
            if let Err(error) = ledger.check_invariants() {
                snapshot
                    .invariant_errors
                    .push(format!("ledger {}: {error}", recovered.index));
            }
            snapshot.balances.push(ledger.balances().collect());
        }
        Ok(snapshot)
    }

    fn genesis(config: &ClusterConfig) -> Snapshot {
        let accounts = vec![config.ledger.initial_balance; config.ledger.accounts as usize];
        Snapshot {
            balances: vec![accounts; config.participants as usize],
            postings: HashMap::new(),
            in_doubt: 0,
            invariant_errors: Vec::new(),
        }
    }

    /// Legs left in doubt.
    pub fn in_doubt(&self) -> usize {
        self.in_doubt
    }
}

/// Whether no participant of the cluster ever wrote a log (fresh from `cluster init`).
fn never_ran(dir: &Path, config: &ClusterConfig) -> bool {
    (0..config.participants).all(|index| {
        std::fs::read_dir(dir.join(format!("participant-{index}")))
            .map_or(true, |mut entries| entries.next().is_none())
    })
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub checked: usize,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub unknown_applied: usize,
    pub violations: usize,
    pub messages: Vec<String>,
}

impl Verdict {
    fn violation(&mut self, message: String) {
        self.violations += 1;
        if self.messages.len() < MESSAGES_MAX {
            self.messages.push(message);
        }
    }
}

/// Checks the run's `history` between `before` and `after` (see the module comment).
pub fn check(
    config: &ClusterConfig,
    before: &Snapshot,
    after: &Snapshot,
    history: &[Record],
) -> Verdict {
    let mut verdict = Verdict {
        checked: history.len(),
        ..Verdict::default()
    };
    if after.in_doubt > 0 {
        verdict.violation(format!(
            "{} legs still in doubt after the faults were healed",
            after.in_doubt
        ));
    }
    for error in &after.invariant_errors {
        verdict.violation(error.clone());
    }
    let mut expected = before.balances.clone();
    let mut sent: HashSet<u64> = HashSet::with_capacity(history.len());
    for record in history {
        sent.insert(record.id);
        let applied = after.postings.get(&record.id);
        let applied_before = before.postings.contains_key(&record.id);
        if applied_before {
            verdict.violation(format!(
                "txn {}: its id was already applied before this run",
                record.id
            ));
            continue;
        }
        let mut legs = vec![
            (record.from.0, record.from.1, -(record.amount as i64)),
            (record.to.0, record.to.1, record.amount as i64),
        ];
        legs.sort_unstable();
        let exact = applied.is_some_and(|applied| {
            let mut applied = applied.clone();
            applied.sort_unstable();
            applied == legs
        });
        if let (Some(applied), false) = (applied, exact) {
            verdict.violation(format!(
                "txn {}: applied as {applied:?}, sent as {legs:?} (not atomic)",
                record.id
            ));
            continue;
        }
        match record.learned {
            Learned::Committed => {
                verdict.committed += 1;
                if !exact {
                    verdict.violation(format!("txn {}: acknowledged commit missing", record.id));
                    continue;
                }
            }
            Learned::Aborted => {
                verdict.aborted += 1;
                if exact {
                    verdict.violation(format!("txn {}: acknowledged abort applied", record.id));
                }
                continue;
            }
            Learned::Unknown => {
                verdict.unknown += 1;
                if !exact {
                    continue;
                }
                verdict.unknown_applied += 1;
            }
        }
        for (ledger, account, delta) in legs {
            expected[ledger as usize][account as usize] += delta;
        }
    }
    for id in after.postings.keys() {
        if !sent.contains(id) && !before.postings.contains_key(id) {
            verdict.violation(format!("txn {id}: applied, but this run never sent it"));
        }
    }
    check_balances(config, &expected, after, &mut verdict);
    verdict
}

fn check_balances(
    config: &ClusterConfig,
    expected: &[Vec<i64>],
    after: &Snapshot,
    verdict: &mut Verdict,
) {
    for (ledger, (expected, actual)) in expected.iter().zip(&after.balances).enumerate() {
        for (account, (expected, actual)) in expected.iter().zip(actual).enumerate() {
            if expected != actual {
                verdict.violation(format!(
                    "ledger {ledger} account {account}: balance {actual}, the history says {expected}"
                ));
            }
        }
    }
    let total: i128 = after
        .balances
        .iter()
        .flatten()
        .map(|&balance| i128::from(balance))
        .sum();
    let genesis = i128::from(config.ledger.initial_balance)
        * i128::from(config.ledger.accounts)
        * i128::from(config.participants);
    if total != genesis {
        verdict.violation(format!("total balance {total}, genesis total {genesis}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config() -> ClusterConfig {
        let options = tricommit_engine::client::InitOptions {
            accounts: 4,
            initial_balance: 100,
            ..Default::default()
        };
        ClusterConfig::from_init(&options, 1).expect("valid")
    }

    fn record(id: u64, amount: u64, learned: Learned) -> Record {
        let now = Instant::now();
        Record {
            id,
            from: (0, 1),
            to: (2, 3),
            amount,
            sent: now,
            done: now,
            learned,
        }
    }

    /// The snapshot after applying `applied` (id, amount) transfers from ledger 0
    /// account 1 to ledger 2 account 3, leg by leg (`legs` = which legs landed).
    fn after(config: &ClusterConfig, applied: &[(u64, u64, [bool; 2])]) -> Snapshot {
        let mut snapshot = Snapshot::genesis(config);
        for &(id, amount, legs) in applied {
            let amount = amount as i64;
            if legs[0] {
                snapshot.balances[0][1] -= amount;
                snapshot
                    .postings
                    .entry(id)
                    .or_default()
                    .push((0, 1, -amount));
            }
            if legs[1] {
                snapshot.balances[2][3] += amount;
                snapshot
                    .postings
                    .entry(id)
                    .or_default()
                    .push((2, 3, amount));
            }
        }
        snapshot
    }

    #[test]
    fn a_consistent_run_has_no_violation() {
        // Proves that commits applied, aborts not applied and an unknown applied or not
        // all pass, and that the counts add up.
        let config = config();
        let history = [
            record(1, 5, Learned::Committed),
            record(2, 7, Learned::Aborted),
            record(3, 9, Learned::Unknown),
            record(4, 11, Learned::Unknown),
        ];
        let after = after(&config, &[(1, 5, [true; 2]), (3, 9, [true; 2])]);
        let verdict = check(&config, &Snapshot::genesis(&config), &after, &history);
        assert_eq!(verdict.violations, 0, "{:?}", verdict.messages);
        assert_eq!((verdict.checked, verdict.unknown_applied), (4, 1));
    }

    #[test]
    fn every_kind_of_violation_is_found() {
        // Proves that the check fails a missing commit, an applied abort, a half-applied
        // transfer, a transfer never sent, a balance that disagrees and legs in doubt.
        let config = config();
        let before = Snapshot::genesis(&config);
        let missing = check(
            &config,
            &before,
            &after(&config, &[]),
            &[record(1, 5, Learned::Committed)],
        );
        assert!(
            missing.messages[0].contains("commit missing"),
            "{:?}",
            missing.messages
        );
        let abort = check(
            &config,
            &before,
            &after(&config, &[(1, 5, [true; 2])]),
            &[record(1, 5, Learned::Aborted)],
        );
        assert!(
            abort.messages[0].contains("abort applied"),
            "{:?}",
            abort.messages
        );
        let half = after(&config, &[(1, 5, [true, false])]);
        let half = check(&config, &before, &half, &[record(1, 5, Learned::Unknown)]);
        assert!(
            half.messages.iter().any(|m| m.contains("not atomic")),
            "{:?}",
            half.messages
        );
        let stray = check(&config, &before, &after(&config, &[(9, 5, [true; 2])]), &[]);
        assert!(
            stray.messages[0].contains("never sent"),
            "{:?}",
            stray.messages
        );
        let mut drifted = after(&config, &[(1, 5, [true; 2])]);
        drifted.balances[1][0] += 1;
        let drifted = check(
            &config,
            &before,
            &drifted,
            &[record(1, 5, Learned::Committed)],
        );
        assert!(
            drifted
                .messages
                .iter()
                .any(|m| m.contains("the history says")),
            "{:?}",
            drifted.messages
        );
        assert!(
            drifted.messages.iter().any(|m| m.contains("genesis total")),
            "{:?}",
            drifted.messages
        );
        let mut doubtful = after(&config, &[]);
        doubtful.in_doubt = 2;
        assert_eq!(check(&config, &before, &doubtful, &[]).violations, 1);
    }
}
