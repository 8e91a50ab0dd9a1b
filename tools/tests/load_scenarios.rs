//! Every `tricommit-load` scenario runs end to end, keeps the bank invariant, and writes
//! its own figures into the JSON summary.

use std::process::Command;

const LOAD: &str = env!("CARGO_BIN_EXE_tricommit-load");

/// Runs one scenario briefly with small segments and returns its JSON summary.
fn run_scenario(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory");
    let json = dir.path().join("summary.json");
    let data = dir.path().join("data");
    let mut args = vec![
        "--scenario",
        scenario,
        "--accounts",
        "2000",
        "--segment-mib",
        "4",
        "--json",
        json.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = Command::new(LOAD)
        .args(&args)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{scenario} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        summary["invariant_ok"], true,
        "{scenario}: {}",
        summary["invariant_error"]
    );
    assert_eq!(summary["scenario"], scenario);
    summary
}

#[test]
fn steady_runs_open_loop_at_the_given_rate() {
    // Proves the open loop sends at the asked rate: it commits about rate × duration.
    let summary = run_scenario("steady", &["--duration", "2", "--rate", "2000"]);
    let committed = summary["committed"].as_u64().unwrap();
    assert!(
        (2_000..=6_000).contains(&committed),
        "committed {committed} at 2000/s for 2 s"
    );
}

#[test]
fn sustained_reports_its_throughput_range() {
    // Proves the sustained figures are computed from the per-second samples.
    let summary = run_scenario("sustained", &["--duration", "3"]);
    let figures = &summary["scenario_figures"];
    let (min, max) = (
        figures["committed_per_s_min"].as_f64().unwrap(),
        figures["committed_per_s_max"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= max, "min {min} max {max}");
}

#[test]
fn ramp_finds_a_highest_stable_rate() {
    // Proves the ramp climbs through its steps and stops at the first unstable one.
    let summary = run_scenario(
        "ramp",
        &["--step-seconds", "1", "--p99-target-us", "2000000"],
    );
    let figures = &summary["scenario_figures"];
    let steps = figures["steps"].as_array().unwrap();
    assert!(steps.len() >= 2, "{figures}");
    assert!(
        figures["highest_stable_rate_per_s"].as_u64().unwrap() >= 100,
        "{figures}"
    );
    let stable: Vec<bool> = steps
        .iter()
        .map(|step| step["stable"].as_bool().unwrap())
        .collect();
    assert!(
        stable[..stable.len() - 1].iter().all(|&ok| ok),
        "only the last step may be unstable"
    );
}

#[test]
fn burst_reports_peak_and_spike() {
    // Proves the burst raises the rate tenfold and measures what that did.
    let summary = run_scenario(
        "burst",
        &["--duration", "4", "--rate", "1000", "--burst-seconds", "1"],
    );
    let figures = &summary["scenario_figures"];
    assert_eq!(figures["burst_rate_per_s"], 10_000);
    assert!(
        figures["peak_committed_per_s"].as_f64().unwrap() > 1_500.0,
        "{figures}"
    );
    // The spike is a p99 of latencies the run recorded: above zero, and never above
    // the run's largest latency (a unit or window mistake would break one of these).
    let spike = figures["p99_spike_us"].as_u64().unwrap();
    let max = summary["latency_us"]["max"].as_u64().unwrap();
    assert!(
        0 < spike && spike <= max,
        "spike {spike} max {max}: {figures}"
    );
}

#[test]
fn mixed_runs_split_payments_over_up_to_four_ledgers() {
    // Proves the mixed workload is what it says: payments of 2, 3 and 4 legs (never
    // fewer or more), about 10% of them high priority, committed atomically (the
    // invariant holds over them).
    let history_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch");
    let history = history_dir.path().join("history");
    let summary = run_scenario(
        "mixed",
        &["--duration", "2", "--history", history.to_str().unwrap()],
    );
    assert!(summary["committed"].as_u64().unwrap() > 0);
    // One history line per credit: a payment's legs are its lines plus its debit.
    let mut credits: std::collections::HashMap<u64, u64> = Default::default();
    for line in std::fs::read_to_string(&history).unwrap().lines() {
        let id = line.split_whitespace().next().unwrap().parse().unwrap();
        *credits.entry(id).or_default() += 1;
    }
    let mut legs_seen = [0u64; 6];
    for count in credits.values() {
        legs_seen[(*count as usize + 1).min(5)] += 1;
    }
    assert_eq!(
        (legs_seen[0], legs_seen[1], legs_seen[5]),
        (0, 0, 0),
        "{legs_seen:?}"
    );
    assert!(
        legs_seen[2..=4].iter().all(|&count| count > 0),
        "{legs_seen:?}"
    );
    let high = summary["high_priority_percent_built"].as_f64().unwrap();
    assert!((7.0..=13.0).contains(&high), "{high}% high priority");
}

#[test]
fn failure_loses_no_acknowledged_commit() {
    // Proves durability across an in-process crash: every commit acknowledged before or
    // after the crash is posted, or still held prepared, on its ledgers afterwards, and
    // the reopened engine commits again.
    let summary = run_scenario("failure", &["--duration", "3"]);
    assert_eq!(summary["lost"], 0, "{summary}");
    let figures = &summary["scenario_figures"];
    assert!(
        figures["time_to_first_commit_ms"].as_f64().is_some(),
        "{figures}"
    );
}

#[test]
fn failure_settles_every_transaction_and_keeps_the_bank_invariant() {
    // Proves liveness after a crash: by the end of the run's own shutdown every
    // transaction is decided everywhere (no extra open needed), so the bank balances.
    let summary = run_scenario("failure", &["--duration", "3"]);
    assert_eq!(summary["undecided_at_shutdown"], 0, "{summary}");
    assert_eq!(summary["settle_passes"], 0, "{summary}");
}
