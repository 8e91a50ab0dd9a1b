//! Backpressure over the network: a coordinator whose intake is full answers `Busy`, the
//! network client sees it, waits, resends, and recovers.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use tricommit_engine::client::RemoteClient;
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Outcome, Txn};

/// Transactions the burst submits at once, far above the tiny intake.
const BURST_TXNS: u64 = 1_000;
/// How long every ticket of the burst may take to be answered.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_tiny_intake_makes_a_remote_client_see_busy_and_the_client_recovers() {
    // Proves that `[engine] intake_capacity_txns` reaches replica-0's admission, that
    // a network client whose burst overflows it is answered `Busy` (counted by the
    // client), and that the client recovers on its own: it resends what was refused,
    // every transaction of the burst commits, and later submissions commit too.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    let accounts = 100u64;
    init_cluster(&cluster, accounts, 1_000_000);
    let path = cluster.join("cluster.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let tiny = config
        .replace(
            "intake_high_water_txns = 49152",
            "intake_high_water_txns = 4",
        )
        .replace("intake_capacity_txns = 65536", "intake_capacity_txns = 8");
    assert_ne!(tiny, config, "cluster init writes the intake limits");
    std::fs::write(&path, tiny).unwrap();
    let mut up = Proc::spawn(
        "cluster up",
        TRICOMMIT,
        &["cluster", "up", path_str(&cluster)],
    );
    up.wait_line("ready", READY_WAIT);

    let client = RemoteClient::connect(&cluster).unwrap();
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut tickets = Vec::new();
    for index in 0..BURST_TXNS {
        let mut txn = Txn::transfer(
            TxnId(index + 1),
            (0, index % accounts),
            (1, index % accounts),
            1,
        )
        .unwrap();
        // While the node sheds load the client hands new transactions back at once.
        let ticket = loop {
            match client.submit(txn) {
                Ok(ticket) => break ticket,
                Err(busy) => {
                    assert!(Instant::now() < deadline, "the client never took it");
                    txn = busy.into_inner();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        tickets.push(ticket);
    }
    for (index, ticket) in tickets.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = ticket
            .wait_timeout(left)
            .unwrap_or_else(|_| panic!("txn {} was never answered", index + 1));
        assert_eq!(outcome, Outcome::Committed, "txn {}", index + 1);
    }
    let busy_replies = client
        .counters()
        .busy_replies
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        busy_replies > 0,
        "a burst of {BURST_TXNS} into an intake of 8 must be answered Busy"
    );
    // Recovered: one at a time, later submissions commit without a refusal.
    for index in 0..10u64 {
        let id = BURST_TXNS + 1 + index;
        let txn = Txn::transfer(TxnId(id), (2, index), (3, index), 1).unwrap();
        let outcome = client
            .submit(txn)
            .expect("an idle node has room")
            .wait_timeout(Duration::from_secs(30))
            .expect("answered");
        assert_eq!(outcome, Outcome::Committed, "txn {id}");
    }
    client.shutdown();
    assert!(up.stop().success(), "cluster up did not stop cleanly");
}
