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
        replicas: 0,
        balance_queries: None,
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

/// A site played by hand over a plain socket: it dials a transport, handshakes with the
/// given secret, and writes whatever bytes a test wants.
pub struct FakeSite {
    pub stream: std::net::TcpStream,
    pub me: u16,
    pub peer: u16,
    pub send_key: tricommit_engine::transport::MacKey,
    pub recv_key: tricommit_engine::transport::MacKey,
    pub send_sequence: u64,
}

impl FakeSite {
    /// Dials `addr` (site `peer`) as site `me` and completes the handshake.
    pub fn handshake(addr: SocketAddr, me: u16, peer: u16, secret: &[u8; 32]) -> FakeSite {
        use std::io::{Read, Write};
        use tricommit_engine::transport::auth::{fresh_nonce, MacKey, SessionIds};
        use tricommit_engine::transport::frame::{
            kind, role, seal_frame, Expect, FrameReader, Header, Hello,
        };
        let mut stream = std::net::TcpStream::connect(addr).expect("dial the transport");
        stream
            .set_read_timeout(Some(WAIT_MAX))
            .expect("read timeout");
        let hello_key = MacKey::hello(secret, CLUSTER_ID);
        let nonce = fresh_nonce().expect("nonce");
        let mut bytes = Vec::new();
        let header = Header {
            kind: kind::HELLO,
            body_len: 0,
            sender: me,
            receiver: peer,
            cluster_id: CLUSTER_ID,
            sequence: 0,
        };
        let hello = Hello {
            role: role::SITE,
            nonce,
        };
        seal_frame(&mut bytes, &hello_key, header, |body| hello.encode(body)).expect("hello");
        stream.write_all(&bytes).expect("send the hello");
        let mut reader = FrameReader::new();
        let expect = Expect {
            cluster_id: CLUSTER_ID,
            receiver: me,
            receiver_any_ok: false,
            sender: Some(peer),
            sequence: 0,
            body_bytes_max: tricommit_engine::transport::frame::HELLO_BODY_BYTES,
        };
        let answer = loop {
            if let Some(frame) = reader.next_frame(&expect, &hello_key).expect("valid hello") {
                break frame;
            }
            let mut chunk = [0u8; 256];
            let got = stream.read(&mut chunk).expect("read the answer");
            assert!(got > 0, "the transport closed during the handshake");
            reader.buffer_mut().extend_from_slice(&chunk[..got]);
        };
        let theirs = Hello::decode(&answer.body).expect("hello body");
        let ids = |sender| SessionIds {
            dialer: me,
            acceptor: peer,
            dialer_nonce: nonce,
            acceptor_nonce: theirs.nonce,
            sender,
        };
        FakeSite {
            stream,
            me,
            peer,
            send_key: MacKey::session(secret, CLUSTER_ID, &ids(me)),
            recv_key: MacKey::session(secret, CLUSTER_ID, &ids(peer)),
            send_sequence: 1,
        }
    }

    /// The bytes of the next SITE frame carrying `parts` (advances the sequence).
    pub fn site_frame(&mut self, parts: &[Part]) -> Vec<u8> {
        use tricommit_engine::transport::codec::encode_parts;
        use tricommit_engine::transport::frame::{kind, seal_frame, Header};
        let header = Header {
            kind: kind::SITE,
            body_len: 0,
            sender: self.me,
            receiver: self.peer,
            cluster_id: CLUSTER_ID,
            sequence: self.send_sequence,
        };
        self.send_sequence += 1;
        let mut bytes = Vec::new();
        seal_frame(&mut bytes, &self.send_key, header, |body| {
            encode_parts(parts, body)
        })
        .expect("small frame");
        bytes
    }

    /// Writes `bytes` (errors ignored: the transport may have closed already).
    pub fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let _ = self.stream.write_all(bytes);
    }

    /// Whether the transport closes the connection within [`WAIT_MAX`] (reads and
    /// discards whatever it sends first, heartbeats included).
    pub fn closed_by_peer(&mut self) -> bool {
        closed_by_peer(&mut self.stream)
    }
}

/// Whether the other end closes `stream` within [`WAIT_MAX`].
pub fn closed_by_peer(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let deadline = Instant::now() + WAIT_MAX;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
