//! The seeded simulator over many seeds: invariants 1–8 under loss, duplication,
//! reordering, delay, crashes, restarts, partitions and a slow participant.

use tricommit_engine::proto::{Protocol, Termination};
use tricommit_engine::sim::{run_seed, Sim, SimConfig};

/// Seeds `cargo test` runs (the issue asks for at least 2,000).
const SEEDS_IN_TEST: u64 = 2_000;

// Proves that E3PC keeps every invariant on SEEDS_IN_TEST random seeds; a failure
// prints the seed and the trace of its last events.
#[test]
fn e3pc_passes_every_seed() {
    let from: u64 = std::env::var("SIM_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEEDS_IN_TEST);
    let mut failures = Vec::new();
    let mut events = 0;
    let mut totals = tricommit_engine::sim::RunStats::default();
    for seed in from..from + count {
        if std::env::var("SIM_VERBOSE").is_ok() {
            eprintln!("seed {seed}");
        }
        let (result, stats) = run_seed(seed, Termination::E3pc);
        events += stats.events;
        totals.txns += stats.txns;
        totals.committed += stats.committed;
        totals.aborted += stats.aborted;
        totals.crashes += stats.crashes;
        totals.elections += stats.elections;
        totals.forgets += stats.forgets;
        totals.checkpoints += stats.checkpoints;
        totals.log_cuts += stats.log_cuts;
        totals.crashes_mid_checkpoint += stats.crashes_mid_checkpoint;
        totals.batches_second_opener += stats.batches_second_opener;
        totals.txns_resent += stats.txns_resent;
        totals.link_hints_down += stats.link_hints_down;
        if let Err(failure) = result {
            failures.push(failure);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    eprintln!("{count} seeds: {events} events, {totals:?}");
    for failure in &failures {
        eprintln!("{failure}");
    }
    assert!(
        failures.is_empty(),
        "{} failing seed(s), first: {}",
        failures.len(),
        failures[0].seed
    );
    assert!(
        events > count * 50,
        "the runs did almost nothing: {events} events"
    );
    if count >= SEEDS_IN_TEST {
        // Most seeds checkpoint with tiny bounds: the logs are cut, and crashes hit
        // sites between appending a checkpoint group and its sync.
        assert!(totals.log_cuts > 0, "no seed cut a log: {totals:?}");
        assert!(
            totals.crashes_mid_checkpoint > 0,
            "no crash hit a checkpoint in progress: {totals:?}"
        );
        // Half the seeds run two openers, and crashes of an opener make the client
        // resend its transactions (same ids) to the other one.
        assert!(
            totals.batches_second_opener > 0,
            "no seed opened a batch at a second replica: {totals:?}"
        );
        assert!(
            totals.txns_resent > 0,
            "no seed resent a transaction: {totals:?}"
        );
        // Half the seeds give the replicas link hints (right and wrong ones), which
        // start recovery early and end collects without the sites reported down.
        assert!(
            totals.link_hints_down > 0,
            "no replica was told of a link down: {totals:?}"
        );
    }
}

/// Seeds over which the naive rule must break and E3PC must hold.
const NAIVE_SEEDS: u64 = 300;

// Proves the checker bites: with the seed's naive termination rule the simulator finds
// an atomicity (or durability) violation within NAIVE_SEEDS seeds, and E3PC passes
// exactly those seeds.
#[test]
fn naive_rule_breaks_where_e3pc_holds() {
    let mut broken = Vec::new();
    for seed in 0..NAIVE_SEEDS {
        let (result, _) = run_seed(seed, Termination::NaiveUnsafe);
        if let Err(failure) = result {
            broken.push(failure);
        }
    }
    let atomicity: Vec<_> = broken
        .iter()
        .filter(|f| f.violation.invariant == 1 || f.violation.invariant == 6)
        .collect();
    eprintln!(
        "naive rule: {} of {NAIVE_SEEDS} seeds fail, {} on atomicity/durability",
        broken.len(),
        atomicity.len()
    );
    if let Some(first) = atomicity.first() {
        eprintln!("{first}");
    }
    assert!(
        !atomicity.is_empty(),
        "the naive rule passed {NAIVE_SEEDS} seeds: the checker does not bite"
    );
    for failure in &broken {
        let (result, _) = run_seed(failure.seed, Termination::E3pc);
        assert!(
            result.is_ok(),
            "E3PC fails seed {}: {}",
            failure.seed,
            result.unwrap_err()
        );
    }
}

// Proves that a seed replays exactly: the same seed run twice does the same number of
// every kind of event, so the seed a failure prints is all it takes to reproduce it.
// (The protocol's batch maps once used std's randomly keyed hasher, and their
// iteration order made runs of one seed differ.)
#[test]
fn a_seed_replays_exactly() {
    for seed in 0..50 {
        let (first_result, first) = run_seed(seed, Termination::E3pc);
        let (second_result, second) = run_seed(seed, Termination::E3pc);
        assert!(
            first_result.is_ok() && second_result.is_ok(),
            "seed {seed} failed"
        );
        let counts = |stats: &tricommit_engine::sim::RunStats| {
            (
                stats.events,
                stats.txns,
                stats.committed,
                stats.aborted,
                stats.crashes,
                stats.elections,
                stats.forgets,
            )
        };
        assert_eq!(
            counts(&first),
            counts(&second),
            "seed {seed} ran differently twice"
        );
    }
}

/// Seeds run in two-phase mode.
const TWO_PHASE_SEEDS: u64 = 500;

// Proves that the two-phase baseline is safe under the same faults: every crashed
// site restarts before faults stop, so the coordinator comes back and presumed abort
// finishes what it left, and a client commit always follows the coordinator's durable
// commit record. (It blocks while the coordinator is down; that is what it is for.)
#[test]
fn two_phase_mode_passes_every_seed() {
    let mut totals = tricommit_engine::sim::RunStats::default();
    for seed in 0..TWO_PHASE_SEEDS {
        let mut config = SimConfig::random(seed, Termination::E3pc);
        config.proto.protocol = Protocol::TwoPhase;
        let mut sim = Sim::new(config);
        let result = sim.run();
        if let Err(failure) = result {
            panic!("two-phase mode fails seed {seed}: {failure}");
        }
        totals.txns += sim.stats.txns;
        totals.committed += sim.stats.committed;
        totals.aborted += sim.stats.aborted;
        totals.elections += sim.stats.elections;
        totals.crashes += sim.stats.crashes;
        totals.forgets += sim.stats.forgets;
    }
    eprintln!("two-phase: {TWO_PHASE_SEEDS} seeds, {totals:?}");
    assert!(
        totals.committed > 0 && totals.crashes > 0 && totals.forgets > 0,
        "{totals:?}"
    );
    assert_eq!(totals.elections, 0, "two-phase mode ran an E3PC election");
}
