//! The bank over TCP: a real cluster of seven processes (`cluster up`), driven by the
//! network client (`tricommit-load --cluster`, which checks the live bank itself), and
//! checked again from outside after it stops.

mod cluster_support;

use std::collections::HashMap;

use cluster_support::*;

#[test]
fn every_balance_after_a_cluster_run_equals_the_one_recomputed_from_the_history() {
    // Proves that what the cluster acknowledged to a network client is exactly what its
    // ledgers hold after a clean stop: each balance from `ledger dump --cluster` equals
    // the initial balance plus the committed transfers of the history, and each
    // committed transfer is posted on both its ledgers, every other on none.
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

    let history = dir.path().join("history.txt");
    let json = dir.path().join("summary.json");
    let load = run(
        LOAD,
        &[
            "--cluster",
            path_str(&cluster),
            "--duration",
            "3",
            "--clients",
            "2",
            "--window",
            "512",
            "--history",
            path_str(&history),
            "--json",
            path_str(&json),
        ],
    );
    assert!(
        load.status.success(),
        "load: {}\n{}",
        text(&load.stdout),
        text(&load.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // The load checked the live ledgers itself (through the participants' balance
    // queries); this test checks them again below, from outside, on the stopped
    // cluster's logs.
    assert_eq!(summary["invariant_error"], serde_json::Value::Null);
    assert_eq!(summary["invariant_ok"], true, "{summary}");
    assert!(up.stop().success(), "cluster up did not stop cleanly");

    let lines = read_history(&history);
    let committed = lines
        .iter()
        .filter(|line| line.outcome == "committed")
        .count();
    assert!(committed > 100, "only {committed} commits in 3 s");
    let mut expected: HashMap<(u64, u64), i64> = HashMap::new();
    for ledger in 0..4 {
        for account in 0..accounts {
            expected.insert((ledger, account), initial);
        }
    }
    for line in lines.iter().filter(|line| line.outcome == "committed") {
        *expected.get_mut(&line.from).unwrap() -= line.amount;
        *expected.get_mut(&line.to).unwrap() += line.amount;
    }
    assert_eq!(dump_balances(&cluster), expected);

    let postings = dump_postings(&cluster);
    for line in &lines {
        let mut on = postings.get(&line.id).cloned().unwrap_or_default();
        on.sort_unstable();
        match line.outcome.as_str() {
            "committed" => assert_eq!(
                on,
                vec![line.from.0.min(line.to.0), line.from.0.max(line.to.0)],
                "txn {}",
                line.id
            ),
            "aborted" => assert!(on.is_empty(), "aborted txn {} is posted on {on:?}", line.id),
            other => panic!("txn {}: outcome `{other}` after a clean run", line.id),
        }
    }
}
