//! The network client as a library: the same `Submit` surface as the embedded engine,
//! and no ticket left hanging when its node dies.

mod cluster_support;

use std::time::Duration;

use cluster_support::*;
use tricommit_engine::client::{RemoteClient, Submit};
use tricommit_engine::proto::TxnId;
use tricommit_engine::{AbortReason, Outcome, Txn};

/// Submits `count` transfers through any `Submit` and returns their tickets.
fn submit_transfers(
    engine: &dyn Submit,
    first_id: u64,
    count: u64,
) -> Vec<tricommit_engine::Ticket> {
    (0..count)
        .map(|index| {
            let txn = Txn::transfer(TxnId(first_id + index), (0, index % 10), (1, index % 10), 1)
                .unwrap();
            engine.submit(txn).expect("not busy at this rate")
        })
        .collect()
}

#[test]
fn a_remote_client_commits_through_the_submit_trait_and_completes_every_ticket_when_its_node_dies()
{
    // Proves that code written against `Submit` runs unchanged over the network, that
    // a duplicate id is answered with the original's outcome, that after kill -9 of
    // replica-0 every ticket completes (committed, aborted or in doubt: never hangs)
    // and the client fails over to another replica that commits new transactions, and
    // that once every replica is gone the client gives up with a typed error and
    // refuses later submissions at once.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    init_cluster(&cluster, 100, 1_000);
    let mut nodes: Vec<Proc> = sites().iter().map(|site| node(&cluster, site)).collect();
    for proc in &nodes {
        proc.wait_line("ready", READY_WAIT);
    }
    let client = RemoteClient::connect(&cluster).expect("connects");
    let tickets = submit_transfers(&client, 1, 200);
    for ticket in tickets {
        let outcome = ticket
            .wait_timeout(Duration::from_secs(30))
            .expect("answered");
        assert_eq!(outcome, Outcome::Committed);
    }
    let again = submit_transfers(&client, 1, 1).pop().unwrap();
    assert_eq!(
        again.wait_timeout(Duration::from_secs(30)).unwrap(),
        Outcome::Committed
    );

    let in_flight = submit_transfers(&client, 1_000, 5_000);
    nodes[0].kill9();
    for ticket in in_flight {
        let outcome = ticket
            .wait_timeout(Duration::from_secs(30))
            .expect("a ticket hung after its node died");
        assert!(
            matches!(
                outcome,
                Outcome::Committed | Outcome::Aborted(_) | Outcome::InDoubt
            ),
            "{outcome:?}"
        );
    }
    assert_ne!(client.current_replica(), 0, "the client did not fail over");
    let after = submit_transfers(&client, 50_000, 20);
    for ticket in after {
        assert_eq!(
            ticket.wait_timeout(Duration::from_secs(30)).unwrap(),
            Outcome::Committed,
            "a new transaction after the failover"
        );
    }
    nodes[1].kill9();
    nodes[2].kill9();
    // Something in flight makes the client notice and fail over, until it gives up.
    let last = submit_transfers(&client, 60_000, 1).pop().unwrap();
    let outcome = last.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        matches!(outcome, Outcome::InDoubt | Outcome::Aborted(_)),
        "{outcome:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost replicas were not noticed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let failure = client.failure().expect("the client says why it gave up");
    assert!(failure.contains("every replica failed"), "{failure}");
    let late = submit_transfers(&client, 100_000, 1).pop().unwrap();
    assert_eq!(
        late.wait_timeout(Duration::from_secs(1)).unwrap(),
        Outcome::Aborted(AbortReason::Shutdown)
    );
    client.shutdown();
}
