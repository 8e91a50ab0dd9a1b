//! The end-of-run summary: printed as a table, written as JSON (DESIGN §5), and shown
//! in the HTML report.

use std::time::Duration;

use hdrhistogram::Histogram;

use serde::Serialize;
use tricommit_engine::metrics::EngineMetrics;
use tricommit_engine::runtime::{EngineCounters, Shutdown};

use crate::driver::{self, Shared};
use crate::report::Sample;
use crate::{Args, RunOutcome};

#[derive(Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The JSON document `--json` writes; field names are a contract (DESIGN §5).
#[derive(Serialize)]
pub struct Summary {
    pub committed: u64,
    pub aborted: u64,
    pub aborted_by_reason: Vec<(String, u64)>,
    pub in_doubt: u64,
    pub duration_s: f64,
    pub committed_per_s: f64,
    pub latency_us: LatencyUs,
    pub batches: u64,
    pub batch_txns_avg: f64,
    pub syncs: u64,
    pub syncs_per_s: f64,
    pub busy_rejections: u64,
    pub cpu_percent: f64,
    /// The bank invariant was checked and held.
    pub invariant_ok: bool,
    pub invariant_error: Option<String>,
    /// A cluster run's bank check: what it compared (opening balances plus acknowledged
    /// commits against the closing balances, read live from the participants).
    pub bank_check: Option<String>,
    pub scenario: crate::scenario::Scenario,
    /// The scenario's own figures (see `scenario.rs`).
    pub scenario_figures: serde_json::Value,
    /// Acknowledged commits missing from the ledgers after the run (failure scenario).
    pub lost: Option<u64>,
    /// Acknowledged commits still prepared, not yet posted, at shutdown (failure
    /// scenario): durable, and finished by the next open.
    pub undecided_at_shutdown: Option<u64>,
    /// Extra open-and-shutdown passes until everything was decided (failure scenario).
    pub settle_passes: Option<u32>,
    /// Acknowledged commits whose postings a checkpoint compacted away, so that only
    /// the balances hold them (failure scenario; see `Durability::compacted`).
    pub compacted_commits: Option<u64>,
    /// Log checkpoints over every site, and the longest time one held up its site.
    pub checkpoints: u64,
    pub checkpoint_pause_us_max: u64,
    /// The longest time recycling one segment below a checkpoint held up its site.
    pub recycle_pause_us_max: u64,
    /// The longest WAL sync of the run, and the age of the oldest sync still in flight
    /// when the clients stopped: a stalled disk shows here (issue 13).
    pub sync_us_max: u64,
    pub sync_in_flight_us_at_end: u64,
    /// Whether a stopping site gave up waiting at its drain bound (`drain_us_max`),
    /// leaving transactions in doubt for the next open.
    pub drain_bound_hit: bool,
    pub drain_us_max: u64,
    /// Why transactions were decided by the termination protocol, when some were.
    pub terminated_why: Option<String>,
    /// The share of the transactions built with high priority, in percent.
    pub high_priority_percent_built: f64,
    /// Where the latency went, stage by stage, and the machine's floor measured in the
    /// same run (`breakdown.rs`); absent for a cluster run.
    pub latency_breakdown_us: Option<crate::breakdown::Breakdown>,
    pub config: Args,
}

/// Why `terminated` transactions were terminated, in words, from the run's counters;
/// `None` when none were.
fn terminated_why(terminated: u64, counters: &EngineCounters) -> Option<String> {
    if terminated == 0 {
        return None;
    }
    let disk = if counters.sync_us_max >= crate::progress::SYNC_STALL_US {
        format!(
            "the disk stalled (the longest WAL sync took {} ms), so batches waited past \
             their timeouts and the E3PC termination protocol decided them",
            counters.sync_us_max / 1_000
        )
    } else {
        format!(
            "their batches waited past a protocol timeout (vote, pending) and the E3PC \
             termination protocol decided them (the longest WAL sync took {} ms)",
            counters.sync_us_max / 1_000
        )
    };
    let drain = if counters.drain_bound_hit {
        format!(
            "; at shutdown the drain bound of {} ms was hit, and what was still \
             undecided stays in doubt until the next open (`tricommit recover`)",
            counters.drain_us_max / 1_000
        )
    } else {
        "; the shutdown drain finished within its bound".to_owned()
    };
    Some(format!("{terminated} transactions: {disk}{drain}"))
}

impl Summary {
    pub fn new(args: &Args, outcome: &RunOutcome, metrics: &EngineMetrics) -> Summary {
        let mut latency = driver::histogram();
        let mut committed = 0;
        let mut in_doubt = 0;
        let mut by_reason: Vec<(String, u64)> = Vec::new();
        for client in &outcome.clients {
            latency.add(&client.latency).expect("same bounds");
            committed += client.committed;
            in_doubt += client.in_doubt;
            for (reason, count) in &client.aborted_by_reason {
                match by_reason.iter_mut().find(|(known, _)| known == reason) {
                    Some((_, total)) => *total += count,
                    None => by_reason.push((reason.clone(), *count)),
                }
            }
        }
        by_reason.sort();
        let lost = outcome
            .durability
            .as_ref()
            .map(|durability| durability.lost);
        let duration_s = outcome.elapsed.as_secs_f64();
        let counters = &outcome.counters;
        let terminated = by_reason
            .iter()
            .find(|(reason, _)| reason == "terminated")
            .map_or(0, |(_, count)| *count);
        Summary {
            committed,
            aborted: by_reason.iter().map(|(_, count)| count).sum(),
            aborted_by_reason: by_reason,
            in_doubt,
            duration_s,
            committed_per_s: committed as f64 / duration_s,
            latency_us: LatencyUs {
                p50: latency.value_at_quantile(0.50),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
            },
            batches: counters.batches,
            batch_txns_avg: ratio(counters.batch_txns_total, counters.batches),
            syncs: counters.syncs,
            syncs_per_s: counters.syncs as f64 / duration_s,
            busy_rejections: outcome.busy,
            cpu_percent: 100.0 * outcome.cpu_s / duration_s,
            invariant_ok: outcome.invariant.is_ok() && lost.unwrap_or(0) == 0,
            bank_check: outcome.bank_check.clone(),
            invariant_error: match (&outcome.invariant, lost) {
                (Err(error), _) => Some(error.clone()),
                (Ok(()), Some(lost)) if lost > 0 => Some(format!(
                    "{lost} acknowledged commits are missing from the ledgers"
                )),
                _ => None,
            },
            scenario: args.scenario,
            scenario_figures: outcome.scenario_figures.clone(),
            lost: outcome
                .durability
                .as_ref()
                .map(|durability| durability.lost),
            undecided_at_shutdown: outcome
                .durability
                .as_ref()
                .map(|durability| durability.undecided),
            settle_passes: outcome.settle_passes,
            compacted_commits: outcome
                .durability
                .as_ref()
                .map(|durability| durability.compacted),
            checkpoints: counters.checkpoints,
            checkpoint_pause_us_max: counters.checkpoint_pause_us_max,
            recycle_pause_us_max: counters.recycle_pause_us_max,
            sync_us_max: counters.sync_us_max,
            sync_in_flight_us_at_end: counters.sync_in_flight_us_max,
            drain_bound_hit: counters.drain_bound_hit,
            drain_us_max: counters.drain_us_max,
            terminated_why: terminated_why(terminated, counters),
            high_priority_percent_built: {
                let built: u64 = outcome.clients.iter().map(|client| client.built).sum();
                let high: u64 = outcome
                    .clients
                    .iter()
                    .map(|client| client.built_high_priority)
                    .sum();
                100.0 * ratio(high, built)
            },
            latency_breakdown_us: outcome
                .probe
                .as_ref()
                .map(|probe| crate::breakdown::Breakdown::read(metrics, &latency, probe)),
            config: args.clone(),
        }
    }

    /// The summary as `(figure, value)` rows, for the terminal and the report.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("committed".to_owned(), self.committed.to_string()),
            (
                "committed/s".to_owned(),
                format!("{:.0}", self.committed_per_s),
            ),
            ("aborted".to_owned(), self.aborted.to_string()),
        ];
        for (reason, count) in &self.aborted_by_reason {
            rows.push((format!("  aborted: {reason}"), count.to_string()));
        }
        if self.in_doubt > 0 {
            rows.push(("in doubt".to_owned(), self.in_doubt.to_string()));
        }
        let latency = &self.latency_us;
        rows.extend([
            ("latency p50".to_owned(), format!("{} us", latency.p50)),
            ("latency p99".to_owned(), format!("{} us", latency.p99)),
            ("latency p99.9".to_owned(), format!("{} us", latency.p999)),
            ("latency max".to_owned(), format!("{} us", latency.max)),
            ("batches".to_owned(), self.batches.to_string()),
            (
                "average batch".to_owned(),
                format!("{:.1} txns", self.batch_txns_avg),
            ),
            ("syncs/s".to_owned(), format!("{:.0}", self.syncs_per_s)),
            (
                "busy rejections".to_owned(),
                self.busy_rejections.to_string(),
            ),
            (
                "cpu".to_owned(),
                format!("{:.0}% of one core", self.cpu_percent),
            ),
            ("duration".to_owned(), format!("{:.2} s", self.duration_s)),
            ("checkpoints".to_owned(), self.checkpoints.to_string()),
            (
                "checkpoint pause max".to_owned(),
                format!("{} us", self.checkpoint_pause_us_max),
            ),
            (
                "segment recycle pause max".to_owned(),
                format!("{} us", self.recycle_pause_us_max),
            ),
        ]);
        rows.push((
            "longest sync".to_owned(),
            format!("{} ms", self.sync_us_max / 1_000),
        ));
        if self.sync_in_flight_us_at_end > 0 {
            rows.push((
                "sync in flight at end".to_owned(),
                format!("{} ms", self.sync_in_flight_us_at_end / 1_000),
            ));
        }
        let drain = if self.drain_bound_hit {
            format!(
                "HIT after {} ms: undecided transactions left in doubt",
                self.drain_us_max / 1_000
            )
        } else {
            format!("not hit (bound {} ms)", self.drain_us_max / 1_000)
        };
        rows.push(("shutdown drain".to_owned(), drain));
        if let Some(why) = &self.terminated_why {
            rows.push(("why terminated".to_owned(), why.clone()));
        }
        if let Some(lost) = self.lost {
            rows.push(("lost commits".to_owned(), lost.to_string()));
        }
        if let Some(compacted) = self.compacted_commits.filter(|&count| count > 0) {
            rows.push((
                "commits checkpointed (balances only)".to_owned(),
                compacted.to_string(),
            ));
        }
        if let Some(undecided) = self.undecided_at_shutdown {
            rows.push(("undecided after settling".to_owned(), undecided.to_string()));
        }
        if let Some(passes) = self.settle_passes {
            rows.push(("settle passes".to_owned(), passes.to_string()));
        }
        if let Some(figures) = self.scenario_figures.as_object() {
            for (name, value) in figures {
                rows.push((
                    format!("{:?}: {name}", self.scenario).to_lowercase(),
                    value.to_string(),
                ));
            }
        }
        let verdict = match (&self.invariant_error, &self.bank_check) {
            (Some(error), _) => format!("FAILED: {error}"),
            (None, Some(_)) => "ok: every balance equals opening + acknowledged commits".to_owned(),
            (None, None) => "ok: total unchanged, no balance below its limit".to_owned(),
        };
        rows.push(("bank invariant".to_owned(), verdict));
        if let Some(described) = &self.bank_check {
            rows.push(("bank check".to_owned(), described.clone()));
        }
        if let Some(breakdown) = &self.latency_breakdown_us {
            rows.extend(breakdown.rows());
        }
        rows
    }

    pub fn print(&self) {
        println!("tricommit-load summary");
        let width = self
            .rows()
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, value) in self.rows() {
            println!("  {name:<width$}  {value}");
        }
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// One point of the report's time series, from the counters at both ends of an interval
/// and the latencies the clients recorded during it.
pub fn sample(
    shared: &Shared,
    before: &EngineCounters,
    after: &EngineCounters,
    interval: Duration,
    elapsed: Duration,
    window: &mut Histogram<u64>,
) -> Sample {
    let mut latency = driver::histogram();
    for client in &shared.interval {
        if let Ok(mut histogram) = client.lock() {
            let _ = latency.add(&*histogram);
            histogram.reset();
        }
    }
    let _ = window.add(&latency);
    let seconds = interval.as_secs_f64().max(1e-9);
    let quantile = |q| {
        if latency.is_empty() {
            0
        } else {
            latency.value_at_quantile(q)
        }
    };
    Sample {
        elapsed_s: elapsed.as_secs_f64(),
        committed_per_s: (after.committed - before.committed) as f64 / seconds,
        aborted_per_s: (after.aborted - before.aborted) as f64 / seconds,
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        batch_txns_avg: ratio(
            after.batch_txns_total - before.batch_txns_total,
            after.batches - before.batches,
        ),
    }
}

/// The bank invariant on what the ledgers hold after shutdown: the total is unchanged
/// and no balance is below its limit.
pub fn check_bank(shutdown: &Shutdown, expected_total: i128) -> Result<(), String> {
    let mut total: i128 = 0;
    for (index, participant) in shutdown.participants.iter().enumerate() {
        let ledger = participant
            .rm()
            .ledger()
            .ok_or_else(|| format!("participant {index} is not a ledger"))?;
        ledger
            .check_invariants()
            .map_err(|error| format!("ledger {index}: {error}"))?;
        total += ledger.total_balance();
    }
    if total != expected_total {
        return Err(format!(
            "total balance is {total}, expected {expected_total}"
        ));
    }
    Ok(())
}

/// CPU time (user + system) this process used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage; getrusage only writes into it.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if status != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let usage = unsafe { usage.assume_init() };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// What became of the acknowledged commits after the run (failure scenario).
pub struct Durability {
    /// Neither posted nor held by any ledger: gone. Must be 0.
    pub lost: u64,
    /// Not posted yet but still held (prepared and durable) by their ledgers: the
    /// termination protocol had not finished them when the engine shut down; the next
    /// open finishes them.
    pub undecided: u64,
    /// Neither posted in the logs nor held, on ledgers whose logs start at a checkpoint:
    /// the checkpoint compacted their postings away (the balances hold them), so no
    /// posting can prove them. Counted apart from `lost`, which stays exact only while
    /// no ledger is checkpointed (`--log-segments-max 0`).
    pub compacted: u64,
}

/// Checks every acknowledged commit against what the ledgers' logs hold.
pub fn check_durability(
    data_dir: &std::path::Path,
    clients: &[driver::ClientResult],
) -> Result<Durability, tricommit_engine::runtime::DumpError> {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let posted: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let sink = |_index: usize| -> Option<tricommit_engine::ledger::PostingSink> {
        let posted = posted.clone();
        Some(Box::new(
            move |postings: &[tricommit_engine::ledger::Posting]| {
                let mut posted = posted
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                posted.extend(postings.iter().map(|posting| posting.txn.0));
            },
        ))
    };
    let ledgers = tricommit_engine::runtime::recover_ledgers(data_dir, sink)?;
    let held: HashSet<u64> = ledgers
        .iter()
        .flat_map(|recovered| recovered.ledger().reservations_sorted())
        .map(|reservation| reservation.txn)
        .collect();
    let posted = posted
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let checkpointed = ledgers
        .iter()
        .any(|recovered| recovered.checkpoint.is_some());
    let mut durability = Durability {
        lost: 0,
        undecided: 0,
        compacted: 0,
    };
    for id in clients.iter().flat_map(|client| &client.committed_ids) {
        if posted.contains(id) {
            continue;
        }
        if held.contains(id) {
            durability.undecided += 1;
        } else if checkpointed {
            durability.compacted += 1;
        } else {
            durability.lost += 1;
        }
    }
    Ok(durability)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the summary says why transactions were terminated: a stalled disk (the
    // longest sync) when there was one, and whether the drain bound was hit; and says
    // nothing when none were terminated.
    #[test]
    fn the_summary_explains_terminated_transactions() {
        let stalled = EngineCounters {
            sync_us_max: 2_500_000,
            drain_bound_hit: true,
            drain_us_max: 6_400_000,
            ..EngineCounters::default()
        };
        let why = terminated_why(3_517, &stalled).expect("an explanation");
        assert!(
            why.starts_with("3517 transactions: the disk stalled"),
            "{why}"
        );
        assert!(why.contains("2500 ms"), "{why}");
        assert!(why.contains("drain bound of 6400 ms was hit"), "{why}");
        let quiet = EngineCounters {
            sync_us_max: 4_000,
            drain_us_max: 6_400_000,
            ..EngineCounters::default()
        };
        let why = terminated_why(2, &quiet).expect("an explanation");
        assert!(why.contains("protocol timeout"), "{why}");
        assert!(why.contains("finished within its bound"), "{why}");
        assert_eq!(terminated_why(0, &stalled), None);
    }
}
