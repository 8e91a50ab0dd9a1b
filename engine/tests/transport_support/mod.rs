//! Shared by the transport tests: free loopback ports, configurations, inboxes, and a
//! bounded wait.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tricommit_engine::pipeline::mpsc::{channel, MpscReceiver, MpscSender};
use tricommit_engine::pipeline::Doorbell;
use tricommit_engine::proto::{BatchId, Part, SiteId};
use tricommit_engine::runtime::INBOX_FRAMES_CAPACITY;
use tricommit_engine::transport::{Frame, TransportConfig};

/// The cluster id every test transport uses.
pub const CLUSTER_ID: u64 = 0x7e57;
/// The secret every test transport uses.
pub const SECRET: [u8; 32] = [0x5a; 32];
/// How long a test waits for something that should happen in milliseconds.
pub const WAIT_MAX: Duration = Duration::from_secs(10);

/// A loopback address whose port was free a moment ago (bound to port 0, then
/// released). Another process could take it in between; the tests accept that race.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// The configuration of site `me` among `addrs` (indexed by site id), with short timers.
pub fn config(me: u8, addrs: &[SocketAddr]) -> TransportConfig {
    TransportConfig {
        cluster_id: CLUSTER_ID,
        me: SiteId(me),
        listen: addrs[me as usize],
        peers: addrs
            .iter()
            .enumerate()
            .filter(|(id, _)| *id != me as usize)
            .map(|(id, addr)| (SiteId(id as u8), *addr))
            .collect(),
        secret: SECRET,
        heartbeat_interval_ms: 20,
        peer_silent_ms_max: 200,
        reconnect_backoff_ms_min: 10,
        reconnect_backoff_ms_max: 100,
        accept_clients: false,
    }
}

/// A site inbox, as the runtime builds it.
pub fn inbox() -> (MpscSender<Frame>, MpscReceiver<Frame>) {
    channel(INBOX_FRAMES_CAPACITY, Arc::new(Doorbell::default())).expect("inbox capacity")
}

/// Polls `condition` every millisecond until it holds or [`WAIT_MAX`] passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for one frame in `inbox`.
pub fn recv_frame(inbox: &mut MpscReceiver<Frame>) -> Frame {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(frame) = inbox.pop() {
            return frame;
        }
        assert!(Instant::now() < deadline, "timed out waiting for a frame");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A small part that names `batch`.
pub fn forget(batch: u64) -> Part {
    Part::Forget {
        batch: BatchId(batch),
    }
}
