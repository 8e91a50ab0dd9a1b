//! kill -9 of an engine on PostgreSQL ledgers under load, then reopen: nothing an
//! acknowledgement promised is lost, and the shards end consistent.

mod pg_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tricommit_engine::pg;

const LEDGERS: usize = 4;
const ACCOUNTS: u64 = 1_000;
const BALANCE: i64 = 1_000_000;
/// Small log segments, so that opening a directory is quick.
const SEGMENT_KIB: u64 = 4 << 10;
/// Kills, each after a different number of acknowledged outcomes.
const KILL_AFTER_OUTCOMES: [usize; 3] = [500, 3_000, 1_500];
/// How long one child may take to acknowledge enough outcomes.
const CHILD_SECONDS_MAX: u64 = 90;
const SETTLE_PASSES_MAX: u32 = 5;

/// Kills and reaps the child on every path, so that a failed assertion leaves no
/// engine running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a child on the shards and SIGKILLs it once it acknowledged `outcomes`
/// outcomes; returns the lines it reported (`id committed|aborted|in-doubt`).
fn run_and_kill(dir: &std::path::Path, template: &str, seed: u64, outcomes: usize) -> Vec<String> {
    let child = Command::new(env!("CARGO_BIN_EXE_tricommit-pg-crash-child"))
        .args([
            dir.to_str().expect("a UTF-8 path"),
            template,
            &LEDGERS.to_string(),
            &ACCOUNTS.to_string(),
            &SEGMENT_KIB.to_string(),
            &seed.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("piped stdout");
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("reader lock").push(line);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(CHILD_SECONDS_MAX);
    while lines.lock().expect("lock").len() < outcomes {
        assert!(
            Instant::now() < deadline,
            "the child acknowledged too little in time"
        );
        assert!(
            guard.0.try_wait().expect("poll the child").is_none(),
            "the child exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    reader.join().expect("the reader thread");
    let lines = lines.lock().expect("lock").clone();
    lines
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_commit() {
    // Proves that after three kill -9s under load and a reopen, every commit a child
    // acknowledged is posted on the shards, no acknowledged abort is, every transfer is
    // posted on all its ledgers or none, the total is unchanged, and once termination
    // finished no reservation is left.
    let Some(server) = pg_support::server("sigkill_under_load_loses_no_acknowledged_commit") else {
        return;
    };
    let template = pg_support::fresh_shards(&server, "tc_test_crash", LEDGERS, ACCOUNTS, BALANCE);
    let urls = pg_support::urls(&template, LEDGERS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut reported = Vec::new();
    for (round, outcomes) in KILL_AFTER_OUTCOMES.into_iter().enumerate() {
        reported.extend(run_and_kill(
            dir.path(),
            &template,
            round as u64 + 1,
            outcomes,
        ));
    }
    let stats = pg_support::stats(LEDGERS);
    let mut config = pg::engine_config(dir.path(), &urls, &stats).expect("valid URLs");
    config.wal.segment_bytes = SEGMENT_KIB << 10;
    config.wal.record_bytes_max = (config.wal.segment_bytes / 2) as u32;
    let passes = pg_support::settle(&config, &urls, SETTLE_PASSES_MAX);
    assert!(
        passes < SETTLE_PASSES_MAX,
        "termination did not finish in {passes} passes"
    );
    let report = pg::audit(&urls).expect("read the shards");
    report
        .verdict(true)
        .expect("the bank invariant holds after the kills");
    let mut committed = 0;
    for line in &reported {
        let (id, word) = line.split_once(' ').expect("`id outcome` lines");
        let id: i64 = id.parse::<u64>().expect("a numeric id") as i64;
        match word {
            "committed" => {
                committed += 1;
                assert!(
                    report.posted.contains(&id),
                    "acknowledged commit {id} is lost"
                );
            }
            "aborted" => assert!(!report.posted.contains(&id), "aborted {id} is posted"),
            _ => {}
        }
    }
    assert!(committed > 0, "the children acknowledged no commit");
}
