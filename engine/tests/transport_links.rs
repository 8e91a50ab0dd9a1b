//! Two transports on loopback: site frames both ways, reconnects, and heartbeats.

mod transport_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use transport_support::*;
use tricommit_engine::proto::{Part, SiteId};
use tricommit_engine::transport::auth::{fresh_nonce, MacKey};
use tricommit_engine::transport::frame::{kind, role, seal_frame, Header, Hello};
use tricommit_engine::transport::{Frame, Transport};

/// Sends `parts` from `links` (a site loop's view) to `to`, retrying while the link is
/// still coming up (frames toward a down link are dropped, as on a network).
fn send_until_received(
    transport: &Transport,
    to: SiteId,
    from: SiteId,
    inbox: &mut tricommit_engine::pipeline::mpsc::MpscReceiver<Frame>,
    part: Part,
) -> Frame {
    let links = transport.links();
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let _ = links[to.0 as usize].push(Frame {
            from,
            parts: vec![part.clone()],
        });
        std::thread::sleep(Duration::from_millis(5));
        if let Some(frame) = inbox.pop() {
            return frame;
        }
        assert!(Instant::now() < deadline, "no frame crossed the link");
    }
}

// Proves that site frames cross both ways between two transports, with their sender
// and every part intact, and that many queued frames are combined into fewer frames.
#[test]
fn frames_cross_both_ways() {
    let addrs = [free_addr(), free_addr()];
    let (inbox0, mut receiver0) = inbox();
    let (inbox1, mut receiver1) = inbox();
    let zero = Transport::start(config(0, &addrs), inbox0).expect("start site 0");
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    let frame = send_until_received(&zero, SiteId(1), SiteId(0), &mut receiver1, forget(7));
    assert_eq!(frame.from, SiteId(0));
    assert_eq!(frame.parts, vec![forget(7)]);
    let frame = send_until_received(&one, SiteId(0), SiteId(1), &mut receiver0, forget(8));
    assert_eq!(frame.from, SiteId(1));
    assert_eq!(frame.parts, vec![forget(8)]);
    while receiver1.pop().is_some() {}
    let sent_before = zero
        .stats()
        .peer(SiteId(1))
        .unwrap()
        .frames_out_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let links = zero.links();
    for batch in 0..500u64 {
        links[1]
            .push(Frame {
                from: SiteId(0),
                parts: vec![forget(1000 + batch)],
            })
            .expect("room in the peer queue");
    }
    let mut got = Vec::new();
    while got.len() < 500 {
        got.extend(recv_frame(&mut receiver1).parts);
    }
    let expected: Vec<Part> = (0..500u64).map(|batch| forget(1000 + batch)).collect();
    assert_eq!(got, expected, "parts arrive complete and in order");
    let sent = zero
        .stats()
        .peer(SiteId(1))
        .unwrap()
        .frames_out_total
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent_before;
    assert!(
        sent < 500,
        "500 queued frames went out as {sent} wire frames"
    );
    zero.shutdown().expect("clean shutdown");
    one.shutdown().expect("clean shutdown");
}

// Proves that when the peer's transport restarts, the link comes back by itself and
// frames flow again, and that the reconnect is counted.
#[test]
fn link_recovers_after_peer_restart() {
    let addrs = [free_addr(), free_addr()];
    let (inbox0, _receiver0) = inbox();
    let (inbox1, mut receiver1) = inbox();
    let zero = Transport::start(config(0, &addrs), inbox0).expect("start site 0");
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    send_until_received(&zero, SiteId(1), SiteId(0), &mut receiver1, forget(1));
    one.shutdown().expect("clean shutdown");
    let stats = zero.stats();
    wait_until("the link to go down", || !stats.link_up(SiteId(1)));
    let (inbox1, mut receiver1) = inbox();
    let one = Transport::start(config(1, &addrs), inbox1).expect("restart site 1");
    let frame = send_until_received(&zero, SiteId(1), SiteId(0), &mut receiver1, forget(2));
    assert_eq!(frame.parts, vec![forget(2)]);
    let peer = stats.peer(SiteId(1)).unwrap();
    assert!(
        peer.connects_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(peer.downs_total.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    zero.shutdown().expect("clean shutdown");
    one.shutdown().expect("clean shutdown");
}

// Proves that a peer that handshakes and then goes silent (as a paused process or a
// partition would: the socket stays open) is marked down within the bounded time.
#[test]
fn silent_peer_is_marked_down() {
    let addrs = [free_addr(), free_addr()];
    let (inbox1, _receiver1) = inbox();
    let one = Transport::start(config(1, &addrs), inbox1).expect("start site 1");
    // Play site 0 by hand: dial, say hello, read the answer, then say nothing more.
    let mut stream = TcpStream::connect(addrs[1]).expect("dial site 1");
    let hello_key = MacKey::hello(&SECRET, CLUSTER_ID);
    let mut bytes = Vec::new();
    let header = Header {
        kind: kind::HELLO,
        body_len: 0,
        sender: 0,
        receiver: 1,
        cluster_id: CLUSTER_ID,
        sequence: 0,
    };
    let hello = Hello {
        role: role::SITE,
        nonce: fresh_nonce().expect("nonce"),
    };
    seal_frame(&mut bytes, &hello_key, header, |body| hello.encode(body)).expect("hello");
    stream.write_all(&bytes).expect("send hello");
    let stats = one.stats();
    wait_until("the link to come up", || stats.link_up(SiteId(0)));
    let up_at = Instant::now();
    wait_until("the silent peer to be marked down", || {
        !stats.link_up(SiteId(0))
    });
    let took = up_at.elapsed();
    let silent = Duration::from_millis(config(1, &addrs).peer_silent_ms_max);
    assert!(took >= silent / 2, "marked down after {took:?}, too early");
    assert!(took < silent * 5, "marked down after {took:?}, too late");
    let peer = stats.peer(SiteId(0)).unwrap();
    assert_eq!(
        peer.silent_downs_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The transport closed its end: reading reaches the end of the stream.
    stream
        .set_read_timeout(Some(WAIT_MAX))
        .expect("read timeout");
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    one.shutdown().expect("clean shutdown");
}

// Proves that three transports form a full mesh by themselves (each pair connected
// once, by the lower id dialing), and that every site reaches every other.
#[test]
fn three_sites_form_a_full_mesh() {
    let addrs = [free_addr(), free_addr(), free_addr()];
    let mut transports = Vec::new();
    let mut receivers = Vec::new();
    for me in 0..3u8 {
        let (sender, receiver) = inbox();
        transports.push(Transport::start(config(me, &addrs), sender).expect("start"));
        receivers.push(receiver);
    }
    for from in 0..3u8 {
        for to in 0..3u8 {
            if from == to {
                continue;
            }
            let part = forget(u64::from(from) * 10 + u64::from(to));
            let frame = send_until_received(
                &transports[from as usize],
                SiteId(to),
                SiteId(from),
                &mut receivers[to as usize],
                part.clone(),
            );
            assert_eq!(frame.from, SiteId(from));
            assert!(frame.parts.contains(&part));
            while receivers[to as usize].pop().is_some() {}
        }
    }
    for (me, transport) in transports.iter().enumerate() {
        let stats = transport.stats();
        for peer in 0..3usize {
            if peer == me {
                continue;
            }
            let link = stats.peer(SiteId(peer as u8)).unwrap();
            let dials = link.dials_total.load(std::sync::atomic::Ordering::Relaxed);
            if me < peer {
                assert!(dials >= 1, "site {me} dials site {peer}");
            } else {
                assert_eq!(dials, 0, "site {me} never dials the lower site {peer}");
            }
        }
    }
    for transport in transports {
        transport.shutdown().expect("clean shutdown");
    }
}

// Proves backpressure: toward a peer that stops reading, the transport buffers a
// bounded amount and then the peer's queue refuses the site loop's pushes (Full),
// instead of growing without limit.
#[test]
fn a_peer_that_does_not_read_fills_its_queue_not_memory() {
    use std::sync::Arc;
    use tricommit_engine::proto::{BatchId, Descriptor, Op, TxnId, OP_PAYLOAD_BYTES};
    use tricommit_engine::transport::PEER_QUEUE_FRAMES_MAX;
    let addrs = [free_addr(), free_addr()];
    let mut one_config = config(1, &addrs);
    one_config.peer_silent_ms_max = 60_000;
    let (inbox1, _receiver1) = inbox();
    let one = Transport::start(one_config, inbox1).expect("start site 1");
    let stats = one.stats();
    // Site 0 handshakes and then never reads.
    let _fake = FakeSite::handshake(addrs[1], 0, 1, &SECRET);
    wait_until("the link", || stats.link_up(SiteId(0)));
    let txns = 100u64;
    let desc = Arc::new(Descriptor {
        batch: BatchId(1),
        txns: (0..txns).map(TxnId).collect(),
        members: vec![1; txns as usize],
    });
    let ops: Arc<[Op]> = (0..txns)
        .map(|txn| Op {
            txn: TxnId(txn),
            payload: [7; OP_PAYLOAD_BYTES],
        })
        .collect::<Vec<_>>()
        .into();
    let prepare = Part::Prepare { desc, ops };
    let links = one.links();
    let pushes_max = 200_000usize;
    let mut pushed = 0usize;
    let mut refused = false;
    let deadline = Instant::now() + WAIT_MAX;
    while pushed < pushes_max && Instant::now() < deadline {
        let frame = Frame {
            from: SiteId(1),
            parts: vec![prepare.clone()],
        };
        match links[0].push(frame) {
            Ok(()) => pushed += 1,
            Err(error) => {
                assert!(error.is_full(), "the queue is full, not closed");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "{pushed} pushes and the queue never pushed back");
    assert!(
        pushed >= PEER_QUEUE_FRAMES_MAX,
        "the queue holds its bound first"
    );
    let sent = stats
        .peer(SiteId(0))
        .unwrap()
        .bytes_out_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < pushed as u64 * 4800,
        "{sent} bytes cannot have left for {pushed} frames of ~4.8 kB"
    );
    one.shutdown().expect("clean shutdown");
}
