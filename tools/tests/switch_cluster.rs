//! The ISO 8583 switch in front of a real cluster (`tricommit-switch --cluster DIR`):
//! payments go through the network client into three ledger processes, and what the
//! switch approved is exactly what the stopped cluster's ledgers hold.

mod cluster_support;

use std::collections::HashMap;

use cluster_support::*;

const SWITCH: &str = env!("CARGO_BIN_EXE_tricommit-switch");

#[test]
fn payments_approved_through_a_cluster_are_posted_on_its_ledgers_exactly_once() {
    // Proves that `--cluster` commits every approved payment on the issuer and the
    // acquirer ledgers of the cluster (each once, with legs that conserve the total),
    // and that a cluster without three ledgers is refused with exit 2.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    let (accounts, initial) = (500u64, 1_000_000_000i64);
    let base = free_ports(6);
    let output = run(
        TRICOMMIT,
        &[
            "cluster",
            "init",
            path_str(&cluster),
            "--participants",
            "3",
            "--accounts",
            &accounts.to_string(),
            "--initial-balance",
            &initial.to_string(),
            "--base-port",
            &base.to_string(),
        ],
    );
    assert!(output.status.success(), "init: {}", text(&output.stderr));
    let toml = cluster.join("cluster.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, config.replace("segment_mib = 64", "segment_mib = 8")).unwrap();

    let mut up = Proc::spawn(
        "cluster up",
        TRICOMMIT,
        &["cluster", "up", path_str(&cluster)],
    );
    up.wait_line("ready", READY_WAIT);
    let port = free_ports(1);
    let listen = format!("127.0.0.1:{port}");
    let mut switch = Proc::spawn(
        "switch",
        SWITCH,
        &["--listen", &listen, "--cluster", path_str(&cluster)],
    );
    switch.wait_line("listening on", READY_WAIT);
    let json = dir.path().join("iso.json");
    let load = run(
        LOAD,
        &[
            "--iso8583",
            &listen,
            "--duration",
            "2",
            "--clients",
            "2",
            "--json",
            path_str(&json),
        ],
    );
    assert!(load.status.success(), "load: {}", text(&load.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let approved = summary["approved"]
        .as_u64()
        .expect("approved in the summary");
    assert!(approved > 100, "only {approved} payments approved in 2 s");
    assert!(switch.stop().success(), "the switch did not stop cleanly");
    assert!(up.stop().success(), "cluster up did not stop cleanly");

    let postings = dump_postings(&cluster);
    let issuer: Vec<&u64> = postings
        .iter()
        .filter(|(_, ledgers)| ledgers.contains(&0))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(issuer.len() as u64, approved, "every approval posted once");
    for id in issuer {
        let mut on = postings[id].clone();
        on.sort_unstable();
        on.dedup();
        assert!(on.starts_with(&[0, 1]), "payment {id} is posted on {on:?}");
    }
    let balances: HashMap<(u64, u64), i64> = dump_balances(&cluster);
    let total: i64 = balances.values().sum();
    assert_eq!(total, 3 * accounts as i64 * initial, "money is conserved");

    // The switch's ledger layout needs exactly three participants.
    let four = dir.path().join("four");
    init_cluster(&four, 10, 1);
    let refused = run(
        SWITCH,
        &["--listen", "127.0.0.1:0", "--cluster", path_str(&four)],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("needs 3 ledgers"));
}
