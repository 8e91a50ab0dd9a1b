//! The bank check inside `tricommit-load --cluster`: opening balances read live from the
//! participants, every acknowledged commit recorded, closing balances compared exactly.
//! It passes on an honest run and fails (exit 1) when money moved that the run did not
//! see, so the check is shown able to fail.

mod cluster_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_support::*;
use tricommit_engine::client::{BalanceReader, RemoteClient};
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Outcome, Txn};

/// How long a load run may take in all (its own duration, the settled reads, startup).
const LOAD_WAIT: Duration = Duration::from_secs(120);
/// The id of the transfer the test makes behind the load's back: above every id of a
/// load run (their top bit is clear).
const TAMPER_ID: u64 = (1 << 63) | 0x7a;

fn summary_of(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_cluster_run_checks_the_bank_itself_and_fails_when_money_moves_behind_its_back() {
    // Proves item 2 of issue 10's rest: (a) an honest `tricommit-load --cluster` run
    // reads the live balances, finds every one equal to opening + acknowledged commits,
    // says so and exits 0, and the stopped cluster's dump agrees with the history;
    // (b) a run during which one transfer is made by another client, which the run
    // never saw, fails the check with exit 1 and names the two accounts it moved.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    let (accounts, initial) = (200u64, 10_000i64);
    init_cluster(&cluster, accounts, initial);
    let mut up = Proc::spawn(
        "cluster up",
        TRICOMMIT,
        &["cluster", "up", path_str(&cluster)],
    );
    up.wait_line("ready", READY_WAIT);

    // (a) An honest run.
    let json = dir.path().join("honest.json");
    let history = dir.path().join("honest.history");
    let honest = run(
        LOAD,
        &[
            "--cluster",
            path_str(&cluster),
            "--duration",
            "2",
            "--clients",
            "2",
            "--window",
            "256",
            "--json",
            path_str(&json),
            "--history",
            path_str(&history),
        ],
    );
    let stdout = text(&honest.stdout);
    assert!(
        honest.status.success(),
        "honest run: {stdout}\n{}",
        text(&honest.stderr)
    );
    let summary = summary_of(&json);
    assert_eq!(summary["invariant_ok"], true, "{summary}");
    assert_eq!(summary["invariant_error"], serde_json::Value::Null);
    assert!(summary["committed"].as_u64().unwrap() > 100, "{summary}");
    let described = summary["bank_check"]
        .as_str()
        .expect("a cluster bank check");
    assert!(
        described.contains(&format!("{} accounts on 4 ledgers", 4 * accounts)),
        "{described}"
    );
    assert!(
        stdout.contains("every balance equals opening + acknowledged commits"),
        "{stdout}"
    );
    assert!(!stdout.contains("not checked"), "{stdout}");

    // The balances read over the network are the ones the history implies.
    let reader = BalanceReader::open(&cluster).unwrap();
    let live = reader
        .read_all_settled(Duration::from_secs(30))
        .expect("an idle cluster settles");
    let mut expected = vec![vec![initial; accounts as usize]; 4];
    for line in read_history(&history) {
        assert!(
            line.outcome == "committed" || line.outcome == "aborted",
            "txn {}: `{}` after a clean run",
            line.id,
            line.outcome
        );
        if line.outcome == "committed" {
            expected[line.from.0 as usize][line.from.1 as usize] -= line.amount;
            expected[line.to.0 as usize][line.to.1 as usize] += line.amount;
        }
    }
    assert_eq!(live, expected, "live balances against the history");

    // (b) A run during which money moves that it never sees.
    let json = dir.path().join("tampered.json");
    let mut load = Command::new(LOAD)
        .args([
            "--cluster",
            path_str(&cluster),
            "--duration",
            "4",
            "--clients",
            "1",
            "--window",
            "64",
            "--json",
            path_str(&json),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the load starts");
    let mut guard = KillOnDrop(Some(load.id()));
    let stderr = load.stderr.take().unwrap();
    let (lines, stderr_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + LOAD_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stderr_lines.recv_timeout(left) {
            Ok(line) if line.contains("opening balances read") => break,
            Ok(_) => {}
            Err(_) => panic!("the load never read its opening balances"),
        }
    }
    // The load has its opening balances: move 1 from ledger 0 account 0 to ledger 1
    // account 0 through another client.
    let client = RemoteClient::connect(&cluster).unwrap();
    let txn = Txn::transfer(TxnId(TAMPER_ID), (0, 0), (1, 0), 1).unwrap();
    let outcome = client
        .submit(txn)
        .expect("the cluster takes one more transaction")
        .wait_timeout(Duration::from_secs(30))
        .expect("answered");
    assert_eq!(outcome, Outcome::Committed);
    client.shutdown();
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the tampered load did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Reaped: its pid may be reused, so the guard must not kill it any more.
    guard.0 = None;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut load.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(1), "the check must fail: {stdout}");
    let summary = summary_of(&json);
    assert_eq!(summary["invariant_ok"], false, "{summary}");
    let error = summary["invariant_error"].as_str().expect("an error");
    assert!(
        error.contains("2 balances differ")
            && error.contains("ledger 0 account 0")
            && error.contains("ledger 1 account 0"),
        "{error}"
    );
    assert!(stdout.contains("FAILED"), "{stdout}");

    assert!(up.stop().success(), "cluster up did not stop cleanly");
}

/// Kills a process (SIGKILL) on drop unless disarmed, so no path leaves it running.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
