//! End-to-end tests of `tricommit-load` and `tricommit ledger dump`: the invariant is
//! checked from outside the engine, from the files the tools write.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const LOAD: &str = env!("CARGO_BIN_EXE_tricommit-load");
const TRICOMMIT: &str = env!("CARGO_BIN_EXE_tricommit");

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses `ledger dump` lines into (ledger, account) → balance.
fn balances(text: &str) -> HashMap<(u64, u64), i64> {
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "dump line `{line}`");
            (
                (fields[0].parse().unwrap(), fields[1].parse().unwrap()),
                fields[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Checks `latency_breakdown_us`: every stage in order, quantiles in order, the
/// per-transaction stages counting every outcome, and both floor probes sampled.
fn assert_breakdown(summary: &serde_json::Value, outcomes: u64) {
    let breakdown = &summary["latency_breakdown_us"];
    let stages = breakdown["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages
        .iter()
        .map(|stage| stage["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "batching",
            "queued",
            "prepare",
            "pre_commit",
            "completion",
            "engine",
            "client"
        ]
    );
    let all = stages
        .iter()
        .chain(breakdown["wal_sync_by_site"].as_array().unwrap())
        .chain(breakdown["votes_by_participant"].as_array().unwrap())
        .chain(breakdown["probe"].as_array().unwrap());
    for row in all {
        let at = |field: &str| row[field].as_u64().unwrap();
        assert!(at("count") > 0, "nothing measured: {row}");
        assert!(at("p50") <= at("p99") && at("p99") <= at("p999"), "{row}");
    }
    for stage in stages {
        if stage["per"] == "txn" {
            assert_eq!(stage["count"].as_u64().unwrap(), outcomes, "{stage}");
        }
    }
    assert_eq!(
        breakdown["wal_sync_by_site"].as_array().unwrap().len(),
        3 + 4
    );
    assert_eq!(
        breakdown["votes_by_participant"].as_array().unwrap().len(),
        4
    );
}

#[test]
fn history_and_dump_agree_with_the_bank_invariant() {
    // Proves that what the engine acknowledged is exactly what the ledgers hold after
    // shutdown: every balance recomputed from the history matches the dump, the total
    // is unchanged, and committed transfers appear on both ledgers, aborted on neither.
    let dir = scratch();
    let data = dir.path().join("data");
    let json = dir.path().join("summary.json");
    let history = dir.path().join("history.txt");
    let report = dir.path().join("report.html");
    let (ledgers, accounts, initial) = (4u64, 500u64, 1_000i64);
    let output = run(
        LOAD,
        &[
            "--duration",
            "2",
            "--accounts",
            "500",
            "--initial-balance",
            "1000",
            "--amount-max",
            "400",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--history",
            history.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "load failed: {}", stderr(&output));

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["invariant_ok"], true);
    for field in [
        "committed",
        "aborted",
        "duration_s",
        "committed_per_s",
        "batches",
        "syncs",
        "config",
    ] {
        assert!(!summary[field].is_null(), "JSON lacks {field}");
    }
    for field in ["p50", "p99", "p999", "max"] {
        assert!(
            summary["latency_us"][field].is_u64(),
            "JSON lacks latency_us.{field}"
        );
    }
    let committed = summary["committed"].as_u64().unwrap();
    assert!(committed > 0, "nothing committed");
    assert_breakdown(&summary, committed + summary["aborted"].as_u64().unwrap());
    assert!(
        !data.join("floor-probe").exists(),
        "the floor probe's file was left in the data directory"
    );

    let dump = run(
        TRICOMMIT,
        &["ledger", "dump", "--data-dir", data.to_str().unwrap()],
    );
    assert!(dump.status.success(), "dump failed: {}", stderr(&dump));
    let dumped = balances(&String::from_utf8(dump.stdout).unwrap());
    assert_eq!(dumped.len() as u64, ledgers * accounts);
    let total: i64 = dumped.values().sum();
    assert_eq!(total, ledgers as i64 * accounts as i64 * initial);

    let mut expected: HashMap<(u64, u64), i64> = HashMap::new();
    let mut outcomes: HashMap<u64, bool> = HashMap::new();
    let history_text = std::fs::read_to_string(&history).unwrap();
    for line in history_text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 7, "history line `{line}`");
        let number = |index: usize| fields[index].parse::<u64>().unwrap();
        let committed = match fields[6] {
            "committed" => true,
            "aborted" => false,
            other => panic!("outcome `{other}` in a run without failures"),
        };
        assert!(
            outcomes.insert(number(0), committed).is_none(),
            "id {} twice",
            number(0)
        );
        if committed {
            let amount = number(5) as i64;
            *expected.entry((number(1), number(2))).or_insert(initial) -= amount;
            *expected.entry((number(3), number(4))).or_insert(initial) += amount;
        }
    }
    assert_eq!(outcomes.values().filter(|&&c| c).count() as u64, committed);
    for (key, balance) in &dumped {
        assert_eq!(
            expected.get(key).copied().unwrap_or(initial),
            *balance,
            "account {key:?}"
        );
    }

    let postings = run(
        TRICOMMIT,
        &[
            "ledger",
            "dump",
            "--postings",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        postings.status.success(),
        "postings dump failed: {}",
        stderr(&postings)
    );
    let mut legs: HashMap<u64, u32> = HashMap::new();
    for line in String::from_utf8(postings.stdout).unwrap().lines() {
        let id: u64 = line.split(' ').next().unwrap().parse().unwrap();
        *legs.entry(id).or_default() += 1;
    }
    for (id, committed) in &outcomes {
        let count = legs.get(id).copied().unwrap_or(0);
        assert_eq!(count, if *committed { 2 } else { 0 }, "transaction {id}");
    }

    let page = std::fs::read_to_string(&report).unwrap();
    assert_eq!(
        page.matches("<svg").count(),
        3,
        "one chart each for throughput, latency, batch size"
    );
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
    assert!(page.contains("bank invariant"));
}

fn assert_bad_input(args: &[&str], needle: &str) {
    let output = run(LOAD, args);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?}: {}",
        stderr(&output)
    );
    let text = stderr(&output);
    assert!(
        text.contains(needle),
        "{args:?}: stderr `{text}` lacks `{needle}`"
    );
    assert!(!text.contains("panicked"), "{args:?} panicked");
}

#[test]
fn bad_input_gets_a_one_line_error_and_exit_code_2() {
    // Proves that every kind of bad input is refused before any load runs, with exit 2.
    let dir = scratch();
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("something"), b"else").unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_bad_input(&["--no-such-flag"], "unexpected argument");
    assert_bad_input(&["--clients", "0"], "--clients");
    assert_bad_input(&["--duration", "0"], "--duration");
    assert_bad_input(&["--duration", "-3"], "-3");
    assert_bad_input(&["--ledgers", "1"], "--ledgers");
    assert_bad_input(&["--accounts", "0"], "--accounts");
    assert_bad_input(&["--skew=-1"], "--skew");
    assert_bad_input(&["--protocol", "4pc"], "--protocol");
    assert_bad_input(
        &["--json", "/nonexistent-dir/summary.json"],
        "/nonexistent-dir/summary.json",
    );
    assert_bad_input(
        &["--history", "/nonexistent-dir/history.txt"],
        "/nonexistent-dir/history.txt",
    );
    assert_bad_input(&["--data-dir", occupied.to_str().unwrap()], "not empty");
    assert_bad_input(&["--data-dir", file.to_str().unwrap()], "not a directory");
}

#[test]
fn ledger_dump_refuses_what_is_not_a_data_directory() {
    // Proves that the dump names the problem and exits 2 instead of printing nothing.
    let dir = scratch();
    let missing = dir.path().join("missing");
    let output = run(
        TRICOMMIT,
        &["ledger", "dump", "--data-dir", missing.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(2));
    let output = run(
        TRICOMMIT,
        &["ledger", "dump", "--data-dir", dir.path().to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("tricommit.meta"),
        "{}",
        stderr(&output)
    );
    assert!(Path::new(dir.path()).exists());
}
