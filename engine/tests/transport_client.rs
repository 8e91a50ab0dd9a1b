//! Network clients through a live transport: submit and outcomes round trip, and the
//! event loop's own `Busy` when the node's request queue is full.

mod transport_support;

use std::time::Duration;

use transport_support::*;
use tricommit_engine::pipeline::{AbortReason, BusyReason, Outcome, Priority};
use tricommit_engine::proto::{Reason, TxnId};
use tricommit_engine::runtime::Txn;
use tricommit_engine::transport::{
    ClientConnection, ClientReply, Outcomes, Submit, Transport, CLIENT_REQUESTS_MAX,
};

fn transfers(first: u64, count: u64) -> Vec<Txn> {
    (first..first + count)
        .map(|id| {
            let txn = Txn::transfer(TxnId(id), (0, id), (1 + (id % 3) as u8, id * 7), id)
                .expect("valid transfer");
            if id % 5 == 0 {
                txn.with_priority(Priority::High)
            } else {
                txn
            }
        })
        .collect()
}

fn outcome_for(id: TxnId) -> Outcome {
    match id.0 % 4 {
        0 => Outcome::Committed,
        1 => Outcome::Aborted(AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS)),
        2 => Outcome::Aborted(AbortReason::Terminated),
        _ => Outcome::InDoubt,
    }
}

// Proves that a client's batched submit reaches the node's request queue with every
// field of every transaction intact, and that the node's outcomes come back to that
// client, every one of them, in order.
#[test]
fn submit_and_outcomes_round_trip() {
    let addrs = [free_addr()];
    let mut node_config = config(0, &addrs);
    node_config.accept_clients = true;
    let (inbox0, _receiver0) = inbox();
    let mut node = Transport::start(node_config, inbox0).expect("start the node");
    let mut requests = node.take_client_requests().expect("accepts clients");
    assert!(node.take_client_requests().is_none(), "handed out once");
    let responder = node.client_responder();
    let mut client = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET).expect("connect");
    assert_eq!(client.node().0, 0);
    let sent = transfers(1, 1000);
    client
        .send(&Submit { txns: sent.clone() })
        .expect("send the submit");
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let request = loop {
        if let Some(request) = requests.pop() {
            break request;
        }
        assert!(std::time::Instant::now() < deadline, "no request arrived");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        request.submit.txns, sent,
        "every field of every txn survived"
    );
    let items: Vec<_> = sent
        .iter()
        .map(|txn| (txn.id, outcome_for(txn.id)))
        .collect();
    responder
        .send(
            request.client,
            Outcomes {
                items: items.clone(),
            },
        )
        .expect("room for the reply");
    let mut got = Vec::new();
    while got.len() < items.len() {
        match client.recv_timeout(WAIT_MAX).expect("a reply") {
            Some(ClientReply::Outcomes(outcomes)) => got.extend(outcomes.items),
            other => panic!("expected outcomes, got {other:?}"),
        }
    }
    assert_eq!(got, items);
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(100))
            .expect("no error"),
        None,
        "nothing else arrives (heartbeats are skipped)"
    );
    node.shutdown().expect("clean shutdown");
}

// Proves that when the node does not take requests and its queue fills up, the event
// loop answers the extra submits with Busy naming exactly their transactions.
#[test]
fn full_request_queue_answers_busy() {
    let addrs = [free_addr()];
    let mut node_config = config(0, &addrs);
    node_config.accept_clients = true;
    let (inbox0, _receiver0) = inbox();
    let mut node = Transport::start(node_config, inbox0).expect("start the node");
    let _requests = node.take_client_requests().expect("accepts clients");
    let (mut sender, mut receiver) = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET)
        .expect("connect")
        .split();
    let extra = 3u64;
    for index in 0..CLIENT_REQUESTS_MAX as u64 + extra {
        sender
            .send(&Submit {
                txns: transfers(index * 2 + 1, 2),
            })
            .expect("send");
    }
    let mut busy_ids = Vec::new();
    while busy_ids.len() < (extra * 2) as usize {
        match receiver.recv_timeout(WAIT_MAX).expect("a reply") {
            Some(ClientReply::Busy(busy)) => {
                assert_eq!(busy.reason, BusyReason::Capacity);
                busy_ids.extend(busy.ids);
            }
            other => panic!("expected busy, got {other:?}"),
        }
    }
    let first = CLIENT_REQUESTS_MAX as u64 * 2 + 1;
    let expected: Vec<TxnId> = (first..first + extra * 2).map(TxnId).collect();
    assert_eq!(busy_ids, expected);
    assert_eq!(
        node.stats()
            .client_txns_busy_total
            .load(std::sync::atomic::Ordering::Relaxed),
        extra * 2
    );
    node.shutdown().expect("clean shutdown");
}

// Proves that a client with the wrong secret is refused at its hello: connect fails
// and the node counts a bad MAC.
#[test]
fn client_without_the_key_is_refused() {
    let addrs = [free_addr()];
    let mut node_config = config(0, &addrs);
    node_config.accept_clients = true;
    let (inbox0, _receiver0) = inbox();
    let node = Transport::start(node_config, inbox0).expect("start the node");
    let refused = ClientConnection::connect(addrs[0], CLUSTER_ID, &[1; 32]);
    assert!(refused.is_err(), "the handshake must fail");
    let stats = node.stats();
    wait_until("the bad_mac counter", || {
        stats.rejects(tricommit_engine::transport::RejectReason::BadMac) == 1
    });
    node.shutdown().expect("clean shutdown");
}

// Proves the minority fence (`TransportConfig::replicas`): a replica that loses its
// links to the other replica and to the only participant closes its clients'
// connections and refuses new ones (counted as `minority`), while with one of the two
// still reached it keeps them (itself and the participant are a strict majority of
// the participant and the replicas); once the links return it takes clients again.
#[test]
fn a_replica_in_a_minority_closes_and_refuses_clients() {
    use tricommit_engine::proto::SiteId;
    use tricommit_engine::transport::{RejectReason, MINORITY_HOLD_MS};

    let addrs = [free_addr(), free_addr(), free_addr()];
    let mut zero_config = config(0, &addrs);
    zero_config.accept_clients = true;
    zero_config.replicas = 0b011;
    let (inbox0, _receiver0) = inbox();
    let zero = Transport::start(zero_config, inbox0).expect("start replica 0");
    let start = |site: u8| {
        let (sender, receiver) = inbox();
        let transport = Transport::start(config(site, &addrs), sender).expect("start a peer");
        (transport, receiver)
    };
    let (one, _receiver1) = start(1);
    let (two, _receiver2) = start(2);
    let stats = zero.stats();
    let both_up = || stats.link_up(SiteId(1)) && stats.link_up(SiteId(2));
    wait_until("both links up", both_up);
    let mut first = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET).expect("connect");
    one.shutdown().expect("clean shutdown");
    wait_until("the link to replica 1 down", || !stats.link_up(SiteId(1)));
    // Past the hold: a minority would have closed the clients by now.
    std::thread::sleep(Duration::from_millis(MINORITY_HOLD_MS + 300));
    let mut second = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET)
        .expect("the participant and this replica are still a majority");
    assert!(
        matches!(first.recv_timeout(Duration::from_millis(50)), Ok(None)),
        "a replica with a majority keeps its clients"
    );
    two.shutdown().expect("clean shutdown");
    wait_until("the link to the participant down", || {
        !stats.link_up(SiteId(2))
    });
    for client in [&mut first, &mut second] {
        let deadline = std::time::Instant::now() + WAIT_MAX;
        let closed = loop {
            match client.recv_timeout(Duration::from_millis(10)) {
                Err(_) => break true,
                Ok(_) if std::time::Instant::now() >= deadline => break false,
                Ok(_) => {}
            }
        };
        assert!(
            closed,
            "the minority replica closed its client's connection"
        );
    }
    let refused = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET);
    assert!(refused.is_err(), "a minority replica takes no client");
    wait_until("the minority counter", || {
        stats.rejects(RejectReason::Minority) >= 1
    });
    let (one, _receiver1) = start(1);
    let (two, _receiver2) = start(2);
    wait_until("both links up again", both_up);
    let back = ClientConnection::connect(addrs[0], CLUSTER_ID, &SECRET);
    assert!(back.is_ok(), "back in a majority, it takes clients");
    zero.shutdown().expect("clean shutdown");
    one.shutdown().expect("clean shutdown");
    two.shutdown().expect("clean shutdown");
}
