//! Authentication on a live transport: a wrong MAC, a frame replayed from an earlier
//! connection, and a peer without the key are each refused and counted by reason.

mod transport_support;

use transport_support::*;
use tricommit_engine::proto::SiteId;
use tricommit_engine::transport::{RejectReason, Transport};

// Proves that a frame whose MAC does not verify closes the connection and counts as
// bad_mac, while the same frame with its MAC intact is delivered.
#[test]
fn wrong_mac_is_rejected() {
    let addrs = [free_addr(), free_addr()];
    let (inbox1, mut receiver1) = inbox();
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    let stats = one.stats();
    let mut fake = FakeSite::handshake(addrs[1], 0, 1, &SECRET);
    let valid = fake.site_frame(&[forget(3)]);
    fake.write(&valid);
    assert_eq!(recv_frame(&mut receiver1).parts, vec![forget(3)]);
    let mut forged = fake.site_frame(&[forget(4)]);
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    fake.write(&forged);
    assert!(fake.closed_by_peer(), "a bad MAC closes the connection");
    wait_until("the bad_mac counter", || {
        stats.rejects(RejectReason::BadMac) == 1
    });
    assert_eq!(stats.rejects_total(), 1, "no other reason was counted");
    assert!(
        receiver1.pop().is_none(),
        "the forged frame was not delivered"
    );
    one.shutdown().expect("clean shutdown");
}

// Proves that a frame recorded on one connection fails on the next (the session keys
// come from fresh nonces), and that a replay within a connection fails its sequence.
#[test]
fn replayed_frames_are_rejected() {
    let addrs = [free_addr(), free_addr()];
    let (inbox1, mut receiver1) = inbox();
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    let stats = one.stats();
    let mut first = FakeSite::handshake(addrs[1], 0, 1, &SECRET);
    let recorded = first.site_frame(&[forget(5)]);
    first.write(&recorded);
    assert_eq!(recv_frame(&mut receiver1).parts, vec![forget(5)]);
    // Within the connection: the same frame again carries an old sequence number.
    first.write(&recorded);
    assert!(first.closed_by_peer());
    wait_until("the bad_sequence counter", || {
        stats.rejects(RejectReason::BadSequence) == 1
    });
    // On a new connection the recorded frame has the right sequence (1) but the old
    // connection's key.
    let mut second = FakeSite::handshake(addrs[1], 0, 1, &SECRET);
    second.write(&recorded);
    assert!(second.closed_by_peer());
    wait_until("the bad_mac counter", || {
        stats.rejects(RejectReason::BadMac) == 1
    });
    assert!(receiver1.pop().is_none(), "no replay was delivered");
    assert_eq!(stats.rejects_total(), 2);
    one.shutdown().expect("clean shutdown");
}

// Proves that a site configured with another secret is refused at its first frame (its
// hello), and that the link never comes up on either side.
#[test]
fn peer_without_the_key_is_refused_at_its_first_frame() {
    let addrs = [free_addr(), free_addr()];
    let (inbox0, _receiver0) = inbox();
    let (inbox1, _receiver1) = inbox();
    let mut wrong = config(0, &addrs);
    wrong.secret = [0xa5; 32];
    let zero = Transport::start(wrong, inbox0).expect("start site 0");
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    let stats = one.stats();
    wait_until("two refused hellos", || {
        stats.rejects(RejectReason::BadMac) >= 2
    });
    assert_eq!(
        stats.rejects_total(),
        stats.rejects(RejectReason::BadMac),
        "every refusal was the MAC of the first frame"
    );
    assert!(!stats.link_up(SiteId(0)));
    assert!(!zero.stats().link_up(SiteId(1)));
    let dials = zero
        .stats()
        .peer(SiteId(1))
        .unwrap()
        .dials_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dials >= 2, "the refused site keeps redialing with backoff");
    zero.shutdown().expect("clean shutdown");
    one.shutdown().expect("clean shutdown");
}
