//! kill -9 of a participant process under load, then a restart: nothing acknowledged
//! is lost, and no transaction ends applied on some ledgers and not others.

mod cluster_support;

use std::time::Duration;

use cluster_support::*;

#[test]
fn a_participant_killed_under_load_and_restarted_loses_nothing_and_splits_nothing() {
    // Proves the durability and atomicity of the cluster across a participant crash:
    // after kill -9 of participant-1 in the middle of a load and its restart, every
    // commit the client was told of is posted on both its ledgers, every transfer is
    // posted on all its ledgers or none (so the transactions it held in doubt were
    // decided once it was back), and the balances add up to the genesis total.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    let (accounts, initial) = (200u64, 10_000i64);
    init_cluster(&cluster, accounts, initial);
    let mut nodes: Vec<Proc> = sites().iter().map(|site| node(&cluster, site)).collect();
    for proc in &nodes {
        proc.wait_line("ready", READY_WAIT);
    }
    let history = dir.path().join("history.txt");
    let mut load = Proc::spawn(
        "load",
        LOAD,
        &[
            "--cluster",
            path_str(&cluster),
            "--duration",
            "6",
            "--clients",
            "2",
            "--window",
            "256",
            "--history",
            path_str(&history),
        ],
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let victim = sites()
        .iter()
        .position(|site| site == "participant-1")
        .unwrap();
    nodes[victim].kill9();
    std::thread::sleep(Duration::from_millis(1_000));
    nodes[victim] = node(&cluster, "participant-1");
    nodes[victim].wait_line("ready", READY_WAIT);
    // The load's own bank check (on the live cluster) must hold too.
    let status = load.wait(Duration::from_secs(120));
    assert!(status.success(), "load failed: {status}");
    // Participants first: a stopping participant drains what it holds undecided, and
    // only a running replica can tell it the outcome.
    for proc in nodes.iter_mut().rev() {
        let status = proc.stop();
        assert!(status.success(), "{} stopped with {status}", proc.name);
    }

    let lines = read_history(&history);
    let committed = lines
        .iter()
        .filter(|line| line.outcome == "committed")
        .count();
    assert!(committed > 100, "only {committed} commits");
    let postings = dump_postings(&cluster);
    for line in &lines {
        let mut on = postings.get(&line.id).cloned().unwrap_or_default();
        on.sort_unstable();
        let both = vec![line.from.0.min(line.to.0), line.from.0.max(line.to.0)];
        match line.outcome.as_str() {
            "committed" => assert_eq!(on, both, "acknowledged commit {} lost", line.id),
            "aborted" => assert!(on.is_empty(), "aborted txn {} posted on {on:?}", line.id),
            // Never learned by the client: either outcome, but never half of it.
            _ => assert!(
                on.is_empty() || on == both,
                "txn {} half-applied: {on:?}",
                line.id
            ),
        }
    }
    for (id, on) in &postings {
        assert_eq!(
            on.len(),
            2,
            "txn {id} is posted on {on:?}: applied on some ledgers only"
        );
    }
    let total: i64 = dump_balances(&cluster).values().sum();
    assert_eq!(total, 4 * accounts as i64 * initial);
}
