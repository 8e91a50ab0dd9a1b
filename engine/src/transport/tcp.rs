//! The sockets: one mio event loop per process, and the blocking client connection.
//!
//! This is the only module of the transport that makes syscalls. It reads bytes into
//! each connection's [`FrameReader`], which checks every frame in a fixed order before
//! anything is decoded, and writes whatever is queued for a connection with one `write`
//! of its contiguous buffer (write-combining: every frame the site loop queued for a peer
//! since the last turn goes into one wire frame, every reply for a client into one send).
//!
//! # Connections
//! Site *i* dials only sites *j > i*; site *j* accepts only hellos from sites below it,
//! so two sites never dial each other at once. A dial that fails or a link that drops
//! is retried after an exponential backoff with jitter (`reconnect_backoff_ms_min`,
//! doubling up to `reconnect_backoff_ms_max`, each wait drawn uniformly from its upper
//! half). A link sends a heartbeat when it sent nothing for `heartbeat_interval_ms`; a
//! link that heard nothing for `peer_silent_ms_max` is closed and marked down, because a
//! paused process or a partition closes no socket.
//!
//! # Waking the loop
//! The loop sleeps in `epoll_wait`. Every queue it consumes (the queues toward peers,
//! the client replies) shares one [`Doorbell`] whose [`WakeHook`] calls
//! `mio::Waker::wake`. Before it sleeps the loop marks itself parked, then checks the
//! queues (the doorbell's Dekker protocol): a frame pushed after that check finds the
//! loop parked and wakes it, a frame pushed before it is seen by the check.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::auth::{fresh_nonce, random_seed, MacKey, SessionIds, NONCE_BYTES, SECRET_BYTES};
use super::balances::{self, BalancesQuery};
use super::codec::{
    self, BusyReply, ClientReply, Outcomes, Submit, FRAME_PARTS_MAX, REPLY_ITEMS_MAX,
};
use super::frame::{
    kind, role, seal_frame, Expect, FrameReader, Header, Hello, OpenFrame, RejectReason,
    ANY_RECEIVER, CLIENT_ID, FRAME_BODY_BYTES_MAX, HELLO_BODY_BYTES,
};
use super::stats::TransportStats;
use super::{
    TransportConfig, TransportError, TransportObservers, CLIENTS_MAX, CLIENT_REPLIES_MAX,
    CLIENT_REQUESTS_MAX, CLIENT_WRITE_BYTES_MAX, HANDSHAKES_MAX, PEER_QUEUE_FRAMES_MAX,
    PEER_WRITE_BYTES_MAX,
};
use crate::metrics::trace::{BatchSpans, TraceContext};
use crate::pipeline::mpsc::{channel, MpscReceiver, MpscSender};
use crate::pipeline::{BusyReason, Doorbell, PushError, WakeHook};
use crate::proto::{is_quorum, BatchId, SiteId};
use crate::runtime::{Frame, Links};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// The first token handed to a connection.
const FIRST_CONNECTION_TOKEN: usize = 2;
/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;
/// Bytes one `read` asks for.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Frames taken from one peer's queue per turn, so that one busy peer cannot starve
/// the rest of the loop.
const PEER_FRAMES_PER_TURN_MAX: usize = 1024;
/// Sent bytes at the front of a write buffer above which a partial write compacts it.
const WRITE_COMPACT_BYTES_MIN: usize = 1 << 20;
/// Replies taken from the reply queue per turn.
const REPLIES_PER_TURN_MAX: usize = 4096;
/// The longest the loop sleeps without looking at its timers.
const TICK_MS_MAX: u64 = 50;
/// How long a replica must have been in a minority before it sends its clients away
/// (`TransportConfig::replicas`): a cut that resets the links, redialed at once, is a
/// flap, not a partition, and moving the clients would cost more than it saves.
pub const MINORITY_HOLD_MS: u64 = 500;
/// The blocking client's bound on connecting and on the handshake.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A network client's connection to this node: unique for the transport's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Transactions a network client submitted, for the node's intake.
#[derive(Debug)]
pub struct ClientRequest {
    pub client: ClientId,
    pub submit: Submit,
}

/// A network client's balance query, for the site thread that holds the ledger.
#[derive(Debug)]
pub struct BalancesRequest {
    pub client: ClientId,
    pub query: BalancesQuery,
}

/// The way back to network clients: queue a reply for the event loop to send.
#[derive(Clone)]
pub struct ClientResponder {
    replies: MpscSender<(ClientId, ClientReply)>,
}

impl ClientResponder {
    /// Queues `reply` for `client`. A full queue hands the reply back (retry, or let the
    /// client time out); a reply for a client that is gone is dropped by the loop.
    pub fn send(
        &self,
        client: ClientId,
        reply: impl Into<ClientReply>,
    ) -> Result<(), PushError<(ClientId, ClientReply)>> {
        self.replies.push((client, reply.into()))
    }
}

/// The transport of one site: its links, its client side, its counters.
pub struct Transport {
    links: Links,
    stats: Arc<TransportStats>,
    client_requests: Option<MpscReceiver<ClientRequest>>,
    responder: ClientResponder,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), TransportError>>>,
    local_addr: SocketAddr,
}

impl Transport {
    /// Binds `listen` and starts the event-loop thread. Site frames that arrive are
    /// pushed into `inbox` (the local site's inbox, as in-process); a full inbox drops
    /// the frame and counts it.
    pub fn start(
        config: TransportConfig,
        inbox: MpscSender<Frame>,
    ) -> Result<Transport, TransportError> {
        Transport::start_observed(config, inbox, TransportObservers::default())
    }

    /// [`Transport::start`], with the names its log lines give the sites and the
    /// batch spans it carries across processes (see [`TransportObservers`]).
    pub fn start_observed(
        config: TransportConfig,
        inbox: MpscSender<Frame>,
        observers: TransportObservers,
    ) -> Result<Transport, TransportError> {
        let sites = config.validate()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let hook_waker = waker.clone();
        let doorbell = Arc::new(Doorbell::with_wake_hook(WakeHook(Arc::new(move || {
            // A failed wake leaves the loop to its next tick (at most TICK_MS_MAX).
            let _ = hook_waker.wake();
        }))));
        let mut links = Vec::with_capacity(sites);
        let mut peers = Vec::with_capacity(sites);
        for index in 0..sites {
            let id = SiteId(index as u8);
            if id == config.me {
                links.push(inbox.clone());
                peers.push(None);
                continue;
            }
            let (sender, receiver) = channel(PEER_QUEUE_FRAMES_MAX, doorbell.clone())?;
            let addr = config
                .peers
                .iter()
                .find(|(peer, _)| *peer == id)
                .map(|(_, addr)| *addr)
                .expect("validate() checked that every id below `sites` is a peer or me");
            links.push(sender);
            peers.push(Some(Peer::new(id, addr, receiver, &config)));
        }
        let (replies_sender, replies) = channel(CLIENT_REPLIES_MAX, doorbell.clone())?;
        let (requests_sender, requests) =
            channel(CLIENT_REQUESTS_MAX, Arc::new(Doorbell::default()))?;
        let mut listener =
            TcpListener::bind(config.listen).map_err(|source| TransportError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let stats = Arc::new(TransportStats::new(sites));
        let stop = Arc::new(AtomicBool::new(false));
        let accept_clients = config.accept_clients;
        let event_loop = EventLoop {
            hello_key: MacKey::hello(&config.secret, config.cluster_id),
            config,
            poll,
            listener,
            conns: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
            peers,
            inbox,
            requests: accept_clients.then_some(requests_sender),
            replies,
            clients: HashMap::new(),
            next_client: 1,
            doorbell,
            stats: stats.clone(),
            stop: stop.clone(),
            jitter: Jitter::new(random_seed()?),
            parts_body: Vec::new(),
            part_scratch: Vec::new(),
            popped: Vec::new(),
            reply_batch: Vec::new(),
            flush_tokens: Vec::new(),
            names: (0..sites)
                .map(|index| {
                    observers
                        .site_names
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| format!("site-{index}"))
                })
                .collect(),
            spans: observers.spans,
            traces: Vec::new(),
            fenced: false,
            minority_since: None,
        };
        let thread = std::thread::Builder::new()
            .name("tricommit-transport".into())
            .spawn(move || event_loop.run())?;
        Ok(Transport {
            links: Arc::new(links),
            stats,
            client_requests: accept_clients.then_some(requests),
            responder: ClientResponder {
                replies: replies_sender,
            },
            waker,
            stop,
            thread: Some(thread),
            local_addr,
        })
    }

    /// The links for the site loop, by site id: the entry for `me` is the inbox, every
    /// other entry is the bounded queue toward that peer.
    pub fn links(&self) -> Links {
        self.links.clone()
    }

    /// The address the transport listens on (useful when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The requests of network clients. `Some` once, to the first caller, when the
    /// configuration accepts clients; the receiver's doorbell is its own (the consumer
    /// waits on it with `wait_batch`).
    pub fn take_client_requests(&mut self) -> Option<MpscReceiver<ClientRequest>> {
        self.client_requests.take()
    }

    /// The way to answer network clients; clone it for every thread that answers.
    pub fn client_responder(&self) -> ClientResponder {
        self.responder.clone()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// Stops the event loop, closes every connection and the listener, and returns the
    /// loop's error if it failed.
    pub fn shutdown(mut self) -> Result<(), TransportError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), TransportError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        self.waker.wake()?;
        thread
            .join()
            .map_err(|_| TransportError::EventLoopPanicked)?
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // A transport dropped without `shutdown` still stops its thread; its error, if
        // any, has nobody to go to.
        let _ = self.stop_and_join();
    }
}

/// Draws each reconnect wait uniformly from the upper half of the current backoff
/// (xorshift64*, seeded from the OS), so that sites that lost each other at the same
/// moment do not redial in lockstep.
struct Jitter {
    state: u64,
}

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter { state: seed | 1 }
    }

    fn wait_ms(&mut self, backoff_ms: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let random = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let half = backoff_ms / 2;
        half + random % (backoff_ms - half + 1)
    }
}

/// One peer site, seen from the event loop.
struct Peer {
    id: SiteId,
    addr: SocketAddr,
    queue: MpscReceiver<Frame>,
    /// The connection carrying the link, once handshaken (or, for a dialer, dialed).
    conn: Option<Token>,
    /// Whether this end dials the peer (this site's id is the lower).
    dials: bool,
    backoff_ms: u64,
    next_dial: Instant,
}

impl Peer {
    fn new(
        id: SiteId,
        addr: SocketAddr,
        queue: MpscReceiver<Frame>,
        config: &TransportConfig,
    ) -> Peer {
        Peer {
            id,
            addr,
            queue,
            conn: None,
            dials: config.me < id,
            backoff_ms: config.reconnect_backoff_ms_min,
            next_dial: Instant::now(),
        }
    }
}

/// Who is at the other end of a connection, once its hello said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Site(SiteId),
    Client(ClientId),
}

/// The keys and counters of a handshaken connection.
struct Session {
    send_key: MacKey,
    recv_key: MacKey,
    send_sequence: u64,
    recv_sequence: u64,
}

/// One TCP connection.
struct Conn {
    stream: TcpStream,
    /// For a dialed connection: the site dialed. For an accepted one: `None` until the
    /// hello names the sender.
    dialed: Option<SiteId>,
    nonce: [u8; NONCE_BYTES],
    role: Option<Role>,
    session: Option<Session>,
    reader: FrameReader,
    /// Bytes to write; `written` of them are gone already.
    write: Vec<u8>,
    written: usize,
    opened: Instant,
    last_heard: Instant,
    last_sent: Instant,
}

impl Conn {
    fn new(stream: TcpStream, dialed: Option<SiteId>, nonce: [u8; NONCE_BYTES]) -> Conn {
        let now = Instant::now();
        Conn {
            stream,
            dialed,
            nonce,
            role: None,
            session: None,
            reader: FrameReader::new(),
            write: Vec::new(),
            written: 0,
            opened: now,
            last_heard: now,
            last_sent: now,
        }
    }

    fn pending_write_bytes(&self) -> usize {
        self.write.len() - self.written
    }

    /// Seals one frame of `kind` with the next send sequence; the body is written in
    /// place by `encode_body`. Returns the frame's bytes, or `None` if the body is above
    /// the frame limit (nothing is written then).
    fn seal(
        &mut self,
        me: u16,
        cluster_id: u64,
        kind: u8,
        encode_body: impl FnOnce(&mut Vec<u8>),
    ) -> Option<usize> {
        let session = self.session.as_mut()?;
        let receiver = match self.role? {
            Role::Site(site) => site.0 as u16,
            Role::Client(_) => CLIENT_ID,
        };
        let header = Header {
            kind,
            body_len: 0,
            sender: me,
            receiver,
            cluster_id,
            sequence: session.send_sequence,
        };
        let bytes = seal_frame(&mut self.write, &session.send_key, header, encode_body)?;
        session.send_sequence += 1;
        Some(bytes)
    }
}

/// Why a connection is being closed.
#[derive(Clone, Copy)]
enum CloseCause {
    Rejected(RejectReason),
    PeerClosed,
    Io,
    Silent,
    Replaced,
    SlowClient,
    /// This replica found itself in a minority (`TransportConfig::replicas`).
    Minority,
    Shutdown,
}

impl CloseCause {
    /// A stable name for log lines.
    fn name(self) -> &'static str {
        match self {
            CloseCause::Rejected(reason) => reason.name(),
            CloseCause::PeerClosed => "peer_closed",
            CloseCause::Io => "io_error",
            CloseCause::Silent => "silent",
            CloseCause::Replaced => "replaced",
            CloseCause::SlowClient => "slow_client",
            CloseCause::Minority => "minority",
            CloseCause::Shutdown => "shutdown",
        }
    }
}

struct EventLoop {
    config: TransportConfig,
    hello_key: MacKey,
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// By site id; `None` for this site.
    peers: Vec<Option<Peer>>,
    inbox: MpscSender<Frame>,
    requests: Option<MpscSender<ClientRequest>>,
    replies: MpscReceiver<(ClientId, ClientReply)>,
    clients: HashMap<ClientId, Token>,
    next_client: u64,
    doorbell: Arc<Doorbell>,
    stats: Arc<TransportStats>,
    stop: Arc<AtomicBool>,
    jitter: Jitter,
    /// Reused: the encoded parts of the frame being combined.
    parts_body: Vec<u8>,
    /// Reused: one part, encoded before it is known to fit the current frame.
    part_scratch: Vec<u8>,
    /// Reused: the frames taken from the queue of a down peer, to drop.
    popped: Vec<Frame>,
    /// Reused: the replies taken from the reply queue.
    reply_batch: Vec<(ClientId, ClientReply)>,
    /// Reused: the connections with bytes to write at the end of a turn.
    flush_tokens: Vec<Token>,
    /// The sites' names, by id, for log lines.
    names: Vec<String>,
    /// The process's batch root spans, when it carries traces across processes.
    spans: Option<Arc<BatchSpans>>,
    /// Reused: the trace contexts of the frame being decoded.
    traces: Vec<(BatchId, TraceContext)>,
    /// In a minority: client connections are closed and refused (`update_fence`).
    fenced: bool,
    /// Since when this replica has been in a minority, if it is.
    minority_since: Option<Instant>,
}

impl EventLoop {
    fn run(mut self) -> Result<(), TransportError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let result = self.turns(&mut events);
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            self.flush(token);
            self.close(token, CloseCause::Shutdown);
        }
        result
    }

    fn turns(&mut self, events: &mut Events) -> Result<(), TransportError> {
        while !self.stop.load(Ordering::Acquire) {
            self.doorbell.begin_external_wait();
            let timeout = if self.has_queued_work() {
                Duration::ZERO
            } else {
                self.sleep_bound()
            };
            let polled = self.poll.poll(events, Some(timeout));
            self.doorbell.end_external_wait();
            match polled {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            }
            self.stats.polls_total.fetch_add(1, Ordering::Relaxed);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    token => self.connection_ready(
                        token,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                    ),
                }
            }
            self.send_site_frames();
            self.send_client_replies();
            self.timers();
            let mut tokens = std::mem::take(&mut self.flush_tokens);
            tokens.extend(
                self.conns
                    .iter()
                    .filter(|(_, conn)| conn.pending_write_bytes() > 0)
                    .map(|(token, _)| *token),
            );
            for token in tokens.drain(..) {
                self.flush(token);
            }
            self.flush_tokens = tokens;
        }
        Ok(())
    }

    /// Whether a queue holds something the loop can act on now: a frame for a peer
    /// whose connection has room (or for a down peer, to drop), or a client reply.
    fn has_queued_work(&self) -> bool {
        let peer_work = self.peers.iter().flatten().any(|peer| {
            peer.queue.has_items()
                && match peer.conn.and_then(|token| self.conns.get(&token)) {
                    Some(conn) if conn.session.is_some() => {
                        conn.pending_write_bytes() < PEER_WRITE_BYTES_MAX
                    }
                    Some(_) => false,
                    None => true,
                }
        });
        peer_work || self.replies.has_items()
    }

    /// How long the loop may sleep: until the nearest dial, at most a tick.
    fn sleep_bound(&self) -> Duration {
        let tick =
            Duration::from_millis((self.config.heartbeat_interval_ms / 2).clamp(1, TICK_MS_MAX));
        let now = Instant::now();
        self.peers
            .iter()
            .flatten()
            .filter(|peer| peer.dials && peer.conn.is_none())
            .map(|peer| peer.next_dial.saturating_duration_since(now))
            .fold(tick, Duration::min)
    }

    fn register(&mut self, mut stream: TcpStream) -> io::Result<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = Conn::new(stream, None, [0; NONCE_BYTES]);
        self.conns.insert(token, conn);
        Ok(token)
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // A transient failure (a connection reset before accept, out of file
                // descriptors): the listener stays; the next readiness tries again.
                Err(_) => return,
            };
            let handshaking = self.conns.values().filter(|c| c.session.is_none()).count();
            let sites = self.peers.len();
            if handshaking >= HANDSHAKES_MAX || self.conns.len() >= sites + CLIENTS_MAX {
                self.stats.count_reject(RejectReason::ConnectionLimit);
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let nonce = match fresh_nonce() {
                Ok(nonce) => nonce,
                Err(_) => continue,
            };
            if let Ok(token) = self.register(stream) {
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.nonce = nonce;
                }
            }
        }
    }

    fn dial(&mut self, index: usize) {
        let me = self.config.me.0 as u16;
        let cluster_id = self.config.cluster_id;
        let Some(peer) = self.peers[index].as_mut() else {
            return;
        };
        self.stats.peers_dial(peer.id);
        let (id, addr) = (peer.id, peer.addr);
        let stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(_) => {
                self.schedule_redial(index);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let (nonce, token) = match fresh_nonce().map_err(io::Error::other).and_then(|nonce| {
            let token = self.register(stream)?;
            Ok((nonce, token))
        }) {
            Ok(pair) => pair,
            Err(_) => {
                self.schedule_redial(index);
                return;
            }
        };
        let hello_key = self.hello_key.clone();
        let conn = self.conns.get_mut(&token).expect("registered just now");
        conn.dialed = Some(id);
        conn.nonce = nonce;
        let header = Header {
            kind: kind::HELLO,
            body_len: 0,
            sender: me,
            receiver: id.0 as u16,
            cluster_id,
            sequence: 0,
        };
        let hello = Hello {
            role: role::SITE,
            nonce,
        };
        seal_frame(&mut conn.write, &hello_key, header, |body| {
            hello.encode(body)
        });
        if let Some(peer) = self.peers[index].as_mut() {
            peer.conn = Some(token);
        }
    }

    fn schedule_redial(&mut self, index: usize) {
        let max = self.config.reconnect_backoff_ms_max;
        let Some(peer) = self.peers[index].as_mut() else {
            return;
        };
        let wait_ms = self.jitter.wait_ms(peer.backoff_ms);
        peer.next_dial = Instant::now() + Duration::from_millis(wait_ms);
        peer.backoff_ms = (peer.backoff_ms * 2).min(max);
    }

    fn connection_ready(&mut self, token: Token, readable: bool) {
        if readable {
            self.read(token);
        }
        // A writable event (a finished connect, room in the send buffer) is served by
        // the flush at the end of the turn.
    }

    /// Reads until the socket would block, handling each complete frame as it comes, so
    /// the read buffer never holds more than one frame and one chunk.
    fn read(&mut self, token: Token) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let buffer = conn.reader.buffer_mut();
            let filled = buffer.len();
            buffer.resize(filled + READ_CHUNK_BYTES, 0);
            let result = conn.stream.read(&mut buffer[filled..]);
            let got = *result.as_ref().unwrap_or(&0);
            buffer.truncate(filled + got);
            match result {
                Ok(0) => return self.close(token, CloseCause::PeerClosed),
                Ok(bytes) => {
                    conn.last_heard = Instant::now();
                    if let Some(Role::Site(site)) = conn.role {
                        if let Some(peer) = self.stats.peer(site) {
                            peer.bytes_in_total
                                .fetch_add(bytes as u64, Ordering::Relaxed);
                        }
                    }
                    if let Err(reason) = self.handle_frames(token) {
                        self.stats.count_reject(reason);
                        return self.close(token, CloseCause::Rejected(reason));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token, CloseCause::Io),
            }
        }
    }

    /// Handles every complete frame in the connection's read buffer.
    fn handle_frames(&mut self, token: Token) -> Result<(), RejectReason> {
        loop {
            let Some(conn) = self.conns.get(&token) else {
                return Ok(());
            };
            let expect = self.expect(conn);
            let Some(conn) = self.conns.get_mut(&token) else {
                return Ok(());
            };
            let key = match &conn.session {
                Some(session) => &session.recv_key,
                None => &self.hello_key,
            };
            let Some(frame) = conn.reader.next_frame(&expect, key)? else {
                return Ok(());
            };
            if let Some(session) = conn.session.as_mut() {
                session.recv_sequence += 1;
            }
            match conn.role {
                None => self.handle_hello(token, frame)?,
                Some(Role::Site(site)) => self.handle_site_frame(site, frame)?,
                Some(Role::Client(client)) => self.handle_client_frame(token, client, frame)?,
            }
        }
    }

    /// What the next frame on `conn` must carry.
    fn expect(&self, conn: &Conn) -> Expect {
        let me = self.config.me.0 as u16;
        match (&conn.session, conn.role) {
            (Some(session), Some(role)) => Expect {
                cluster_id: self.config.cluster_id,
                receiver: me,
                receiver_any_ok: false,
                sender: Some(match role {
                    Role::Site(site) => site.0 as u16,
                    Role::Client(_) => CLIENT_ID,
                }),
                sequence: session.recv_sequence,
                body_bytes_max: FRAME_BODY_BYTES_MAX,
            },
            _ => Expect {
                cluster_id: self.config.cluster_id,
                receiver: me,
                receiver_any_ok: conn.dialed.is_none() && self.serves_clients(),
                sender: conn.dialed.map(|site| site.0 as u16),
                sequence: 0,
                body_bytes_max: HELLO_BODY_BYTES,
            },
        }
    }

    /// Whether network clients may connect: to submit, or to read balances.
    fn serves_clients(&self) -> bool {
        self.requests.is_some() || self.config.balance_queries.is_some()
    }

    /// Whether this replica is in a minority: the sites it reaches (itself and every
    /// peer whose link has not gone down since it was up) hold no strict majority of
    /// the replicas and the reached participants together. Every transaction it could
    /// open needs all its participants and a strict majority of them and the replicas
    /// (E3PC's quorum), and adding reached participants to a group only raises the
    /// reached share, so the reached participants' group is the best case. Never on a
    /// site that takes no transactions from clients, or without the replica mask.
    fn in_minority(&self) -> bool {
        let replicas = self.config.replicas;
        if replicas == 0 || self.requests.is_none() {
            return false;
        }
        let sites = self.peers.len() as u32;
        let all = u64::MAX.checked_shr(64 - sites).unwrap_or(0);
        let reached = all & !self.stats.links_down();
        let participants = reached & !replicas;
        participants == 0 || !is_quorum(reached, participants | replicas)
    }

    /// Follows the links (at every link change and every tick): a minority that has
    /// lasted `MINORITY_HOLD_MS` closes every client connection (their clients fail
    /// over to another replica at once) and refuses new ones until the links that
    /// return end it.
    fn update_fence(&mut self) {
        if !self.in_minority() {
            self.minority_since = None;
            if self.fenced {
                self.fenced = false;
                tracing::info!(
                    site = %self.name(self.config.me),
                    "out of the minority: clients accepted again"
                );
            }
            return;
        }
        let now = Instant::now();
        let since = *self.minority_since.get_or_insert(now);
        let held = now.saturating_duration_since(since) >= Duration::from_millis(MINORITY_HOLD_MS);
        if self.fenced || !held {
            return;
        }
        self.fenced = true;
        let site = self.name(self.config.me).to_owned();
        let tokens: Vec<Token> = self.clients.values().copied().collect();
        tracing::warn!(
            site = %site,
            links_down = self.stats.links_down(),
            clients_closed = tokens.len(),
            "in a minority: client connections closed and refused until links return"
        );
        for token in tokens {
            self.close(token, CloseCause::Minority);
        }
    }

    /// The first frame of a connection: checks who speaks, answers an accepted hello
    /// with ours, and derives the session keys.
    fn handle_hello(&mut self, token: Token, frame: OpenFrame) -> Result<(), RejectReason> {
        if frame.header.kind != kind::HELLO {
            return Err(RejectReason::UnexpectedKind);
        }
        let hello = Hello::decode(&frame.body)?;
        let me = self.config.me;
        let dialed = self.conns.get(&token).and_then(|conn| conn.dialed);
        let (role, dialer, acceptor, answer) = self.hello_peer(dialed, &hello, &frame.header)?;
        let conn = self.conns.get(&token).expect("the caller holds this token");
        let (dialer_nonce, acceptor_nonce) = if answer {
            (hello.nonce, conn.nonce)
        } else {
            (conn.nonce, hello.nonce)
        };
        let ids = |sender: u16| SessionIds {
            dialer,
            acceptor,
            dialer_nonce,
            acceptor_nonce,
            sender,
        };
        let peer_id = if answer { dialer } else { acceptor };
        let (secret, cluster_id) = (&self.config.secret, self.config.cluster_id);
        let session = Session {
            send_key: MacKey::session(secret, cluster_id, &ids(me.0 as u16)),
            recv_key: MacKey::session(secret, cluster_id, &ids(peer_id)),
            send_sequence: 1,
            recv_sequence: 1,
        };
        let hello_key = self.hello_key.clone();
        let cluster_id = self.config.cluster_id;
        let conn = self
            .conns
            .get_mut(&token)
            .expect("the caller holds this token");
        if answer {
            let header = Header {
                kind: kind::HELLO,
                body_len: 0,
                sender: me.0 as u16,
                receiver: peer_id,
                cluster_id,
                sequence: 0,
            };
            let ours = Hello {
                role: role::SITE,
                nonce: conn.nonce,
            };
            seal_frame(&mut conn.write, &hello_key, header, |body| {
                ours.encode(body)
            });
        }
        conn.session = Some(session);
        conn.role = Some(role);
        match role {
            Role::Site(site) => self.link_up(site, token),
            Role::Client(client) => {
                self.clients.insert(client, token);
                self.stats.clients_connected.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .client_connects_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Who says hello, and whether it may: returns the peer's role, the ids of the
    /// dialer and the acceptor, and whether this end must answer (it accepted).
    fn hello_peer(
        &mut self,
        dialed: Option<SiteId>,
        hello: &Hello,
        header: &Header,
    ) -> Result<(Role, u16, u16, bool), RejectReason> {
        let me = self.config.me.0 as u16;
        let sender = header.sender;
        match (dialed, hello.role) {
            // Our dial: the acceptor answered (the reader checked it is the site dialed).
            (Some(site), role::SITE) => Ok((Role::Site(site), me, sender, false)),
            (Some(_), _) => Err(RejectReason::BadSender),
            (None, role::SITE) => {
                // Only a lower site dials this one, and it must name this site.
                let is_lower_peer =
                    (sender as usize) < self.peers.len() && sender < me && header.receiver == me;
                if !is_lower_peer {
                    return Err(RejectReason::BadSender);
                }
                Ok((Role::Site(SiteId(sender as u8)), sender, me, true))
            }
            (None, _) => {
                if sender != CLIENT_ID || !self.serves_clients() {
                    return Err(RejectReason::BadSender);
                }
                if self.clients.len() >= CLIENTS_MAX {
                    return Err(RejectReason::ConnectionLimit);
                }
                if self.fenced {
                    return Err(RejectReason::Minority);
                }
                let client = ClientId(self.next_client);
                self.next_client += 1;
                Ok((Role::Client(client), CLIENT_ID, me, true))
            }
        }
    }

    /// A handshake finished with `site`: this connection carries the link now. An older
    /// connection of the same peer (it restarted and dialed again) is closed.
    fn link_up(&mut self, site: SiteId, token: Token) {
        let min = self.config.reconnect_backoff_ms_min;
        let index = site.0 as usize;
        let old = self.peers[index]
            .as_mut()
            .and_then(|peer| peer.conn.replace(token))
            .filter(|&old| old != token);
        if let Some(old) = old {
            self.close(old, CloseCause::Replaced);
            if let Some(peer) = self.peers[index].as_mut() {
                peer.conn = Some(token);
            }
        }
        if let Some(peer) = self.peers[index].as_mut() {
            peer.backoff_ms = min;
        }
        self.stats.set_link_down(site, false);
        self.update_fence();
        if let Some(stats) = self.stats.peer(site) {
            stats.up.store(true, Ordering::Relaxed);
            let connects = stats.connects_total.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per handshake: a link event, never a per-frame one.
            tracing::info!(
                site = %self.name(self.config.me),
                peer = %self.name(site),
                connects,
                "link up"
            );
        }
    }

    /// A site's name for log lines.
    fn name(&self, site: SiteId) -> &str {
        self.names.get(site.0 as usize).map_or("?", String::as_str)
    }

    fn handle_site_frame(&mut self, site: SiteId, frame: OpenFrame) -> Result<(), RejectReason> {
        if let Some(stats) = self.stats.peer(site) {
            stats.frames_in_total.fetch_add(1, Ordering::Relaxed);
        }
        match frame.header.kind {
            kind::HEARTBEAT if frame.body.is_empty() => Ok(()),
            kind::HEARTBEAT => Err(RejectReason::BadBody),
            kind::SITE => {
                self.traces.clear();
                let parts = codec::decode_parts_traced(&frame.body, &mut self.traces)
                    .map_err(|_| RejectReason::BadBody)?;
                // Joined before the frame reaches the site, so that its phase spans
                // find their root. Nothing to do when this process does not trace.
                if let Some(spans) = &self.spans {
                    for (batch, context) in self.traces.drain(..) {
                        spans.join_remote(batch, context);
                    }
                }
                if self.inbox.push(Frame { from: site, parts }).is_err() {
                    if let Some(stats) = self.stats.peer(site) {
                        stats
                            .frames_dropped_inbox_total
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            _ => Err(RejectReason::UnexpectedKind),
        }
    }

    fn handle_client_frame(
        &mut self,
        token: Token,
        client: ClientId,
        frame: OpenFrame,
    ) -> Result<(), RejectReason> {
        match frame.header.kind {
            kind::HEARTBEAT if frame.body.is_empty() => Ok(()),
            kind::HEARTBEAT => Err(RejectReason::BadBody),
            kind::SUBMIT => {
                let submit =
                    codec::decode_submit(&frame.body).map_err(|_| RejectReason::BadBody)?;
                let txns = submit.txns.len() as u64;
                self.stats
                    .client_txns_in_total
                    .fetch_add(txns, Ordering::Relaxed);
                let Some(requests) = &self.requests else {
                    return Err(RejectReason::UnexpectedKind);
                };
                if let Err(refused) = requests.push(ClientRequest { client, submit }) {
                    let ids = refused
                        .into_inner()
                        .submit
                        .txns
                        .iter()
                        .map(|txn| txn.id)
                        .collect();
                    self.stats
                        .client_txns_busy_total
                        .fetch_add(txns, Ordering::Relaxed);
                    let busy = ClientReply::Busy(BusyReply {
                        ids,
                        reason: BusyReason::Capacity,
                    });
                    self.queue_client_reply(token, &busy);
                }
                Ok(())
            }
            kind::BALANCES_QUERY => {
                let query =
                    balances::decode_query(&frame.body).map_err(|_| RejectReason::BadBody)?;
                let Some(queries) = &self.config.balance_queries else {
                    return Err(RejectReason::UnexpectedKind);
                };
                if queries.push(BalancesRequest { client, query }).is_err() {
                    // The site thread is behind: the client asks again after a pause.
                    let busy = ClientReply::Busy(BusyReply {
                        ids: Vec::new(),
                        reason: BusyReason::Capacity,
                    });
                    self.queue_client_reply(token, &busy);
                }
                Ok(())
            }
            _ => Err(RejectReason::UnexpectedKind),
        }
    }

    /// Takes the frames queued toward each peer and write-combines their parts into as
    /// few wire frames as the limits allow; frames toward a down peer are dropped.
    fn send_site_frames(&mut self) {
        for index in 0..self.peers.len() {
            let Some(peer) = self.peers[index].as_mut() else {
                continue;
            };
            let up_token = peer
                .conn
                .filter(|token| self.conns.get(token).is_some_and(|c| c.session.is_some()));
            let Some(token) = up_token else {
                // Down (or still handshaking): what the site loop sent is lost, as on
                // a network; the protocol retransmits.
                let dropped = peer
                    .queue
                    .pop_batch(&mut self.popped, PEER_FRAMES_PER_TURN_MAX);
                self.popped.clear();
                if let Some(stats) = self.stats.peer(peer.id) {
                    stats
                        .frames_dropped_down_total
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                }
                continue;
            };
            self.combine_and_seal(index, token);
        }
    }

    /// Takes frames from the queue toward peer `index` while the connection's unsent
    /// bytes stay below [`PEER_WRITE_BYTES_MAX`], and encodes all their parts into as
    /// few SITE frames on `token` as the limits allow. The write buffer thus holds at
    /// most the bound plus one frame; the rest waits in the bounded queue.
    fn combine_and_seal(&mut self, index: usize, token: Token) {
        let me = self.config.me.0 as u16;
        let cluster_id = self.config.cluster_id;
        let (Some(peer), Some(conn)) = (self.peers[index].as_mut(), self.conns.get_mut(&token))
        else {
            return;
        };
        let Some(stats) = self.stats.peer(peer.id) else {
            return;
        };
        let mut parts_body = std::mem::take(&mut self.parts_body);
        let mut scratch = std::mem::take(&mut self.part_scratch);
        let mut part_count = 0u32;
        let mut sealed_frames = 0u64;
        for _ in 0..PEER_FRAMES_PER_TURN_MAX {
            if conn.pending_write_bytes() + parts_body.len() >= PEER_WRITE_BYTES_MAX {
                break;
            }
            let Some(frame) = peer.queue.pop() else {
                break;
            };
            for part in &frame.parts {
                scratch.clear();
                codec::encode_part(part, &mut scratch);
                // A traced batch's phase-starting part takes its TRACE part along, in
                // the same frame. Without spans (tracing off) nothing is looked up.
                let mut scratch_parts = 1;
                let context = self.spans.as_ref().and_then(|spans| {
                    codec::starts_phase(part).and_then(|batch| spans.wire_context(batch))
                });
                if let Some(context) = context {
                    codec::encode_trace(&context, &mut scratch);
                    scratch_parts = 2;
                }
                if 4 + scratch.len() > FRAME_BODY_BYTES_MAX {
                    stats
                        .parts_dropped_oversized_total
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let full = part_count as usize + scratch_parts > FRAME_PARTS_MAX
                    || 4 + parts_body.len() + scratch.len() > FRAME_BODY_BYTES_MAX;
                if full {
                    seal_parts(conn, me, cluster_id, part_count, &parts_body);
                    sealed_frames += 1;
                    parts_body.clear();
                    part_count = 0;
                }
                parts_body.extend_from_slice(&scratch);
                part_count += scratch_parts as u32;
            }
        }
        if part_count > 0 {
            seal_parts(conn, me, cluster_id, part_count, &parts_body);
            sealed_frames += 1;
        }
        stats
            .frames_out_total
            .fetch_add(sealed_frames, Ordering::Relaxed);
        parts_body.clear();
        self.parts_body = parts_body;
        self.part_scratch = scratch;
    }

    fn send_client_replies(&mut self) {
        let mut replies = std::mem::take(&mut self.reply_batch);
        self.replies.pop_batch(&mut replies, REPLIES_PER_TURN_MAX);
        for (client, reply) in replies.drain(..) {
            match self.clients.get(&client) {
                Some(&token) => self.queue_client_reply(token, &reply),
                None => {
                    self.stats
                        .client_replies_dropped_total
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.reply_batch = replies;
    }

    fn queue_client_reply(&mut self, token: Token, reply: &ClientReply) {
        let me = self.config.me.0 as u16;
        let cluster_id = self.config.cluster_id;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.pending_write_bytes() >= CLIENT_WRITE_BYTES_MAX {
            self.stats
                .clients_closed_slow_total
                .fetch_add(1, Ordering::Relaxed);
            return self.close(token, CloseCause::SlowClient);
        }
        // A reply of more items than a frame may carry goes out in several frames.
        match reply {
            ClientReply::Outcomes(outcomes) => {
                for items in outcomes.items.chunks(REPLY_ITEMS_MAX) {
                    let chunk = Outcomes {
                        items: items.to_vec(),
                    };
                    conn.seal(me, cluster_id, kind::OUTCOMES, |body| {
                        codec::encode_outcomes(&chunk, body)
                    });
                }
            }
            ClientReply::Balances(page) => {
                // A page the site built within BALANCES_PAGE_ACCOUNTS_MAX always fits.
                conn.seal(me, cluster_id, kind::BALANCES, |body| {
                    balances::encode_page(page, body)
                });
            }
            ClientReply::Busy(busy) if busy.ids.is_empty() => {
                conn.seal(me, cluster_id, kind::BUSY, |body| {
                    codec::encode_busy(busy, body)
                });
            }
            ClientReply::Busy(busy) => {
                for ids in busy.ids.chunks(REPLY_ITEMS_MAX) {
                    let chunk = BusyReply {
                        ids: ids.to_vec(),
                        reason: busy.reason,
                    };
                    conn.seal(me, cluster_id, kind::BUSY, |body| {
                        codec::encode_busy(&chunk, body)
                    });
                }
            }
        }
    }

    /// Dials peers whose time has come, sends heartbeats, and closes silent links and
    /// handshakes that take too long.
    fn timers(&mut self) {
        self.update_fence();
        let now = Instant::now();
        for index in 0..self.peers.len() {
            let due = self.peers[index]
                .as_ref()
                .is_some_and(|peer| peer.dials && peer.conn.is_none() && peer.next_dial <= now);
            if due {
                self.dial(index);
            }
        }
        let heartbeat = Duration::from_millis(self.config.heartbeat_interval_ms);
        let silent = Duration::from_millis(self.config.peer_silent_ms_max);
        let me = self.config.me.0 as u16;
        let cluster_id = self.config.cluster_id;
        let mut to_close = Vec::new();
        for (&token, conn) in self.conns.iter_mut() {
            match conn.role {
                None if now.duration_since(conn.opened) > silent => {
                    to_close.push((token, CloseCause::Rejected(RejectReason::HandshakeTimeout)))
                }
                None => {}
                Some(role) => {
                    let is_site = matches!(role, Role::Site(_));
                    if is_site && now.duration_since(conn.last_heard) > silent {
                        to_close.push((token, CloseCause::Silent));
                        continue;
                    }
                    if now.duration_since(conn.last_sent) >= heartbeat
                        && conn.pending_write_bytes() == 0
                        && conn.seal(me, cluster_id, kind::HEARTBEAT, |_| {}).is_some()
                    {
                        self.stats
                            .heartbeats_out_total
                            .fetch_add(1, Ordering::Relaxed);
                        conn.last_sent = now;
                    }
                }
            }
        }
        for (token, cause) in to_close {
            if let CloseCause::Rejected(reason) = cause {
                self.stats.count_reject(reason);
            }
            self.close(token, cause);
        }
    }

    /// Writes what is pending on `token` until done or the socket would block.
    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut sent = 0usize;
        let mut failed = false;
        while conn.written < conn.write.len() {
            match conn.stream.write(&conn.write[conn.written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(bytes) => {
                    conn.written += bytes;
                    sent += bytes;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // A connect still in progress reports NotConnected until it finishes.
                Err(error) if error.kind() == io::ErrorKind::NotConnected => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if sent > 0 {
            conn.last_sent = Instant::now();
        }
        if conn.written == conn.write.len() {
            conn.write.clear();
            conn.written = 0;
        } else if conn.written >= WRITE_COMPACT_BYTES_MIN {
            // A slow peer: drop the sent prefix so the buffer holds only unsent bytes
            // (plus less than this), whatever the peer's pace.
            conn.write.drain(..conn.written);
            conn.written = 0;
        }
        if let Some(Role::Site(site)) = conn.role {
            if let Some(stats) = self.stats.peer(site) {
                stats
                    .bytes_out_total
                    .fetch_add(sent as u64, Ordering::Relaxed);
            }
        }
        if failed {
            self.close(token, CloseCause::Io);
        }
    }

    /// Closes a connection and updates whatever it carried: a site link goes down (and
    /// is redialed, if this end dials), a client is forgotten.
    fn close(&mut self, token: Token, cause: CloseCause) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(Shutdown::Both);
        if let CloseCause::Rejected(reason) = cause {
            // One line per refused connection (each closes it), with the reason.
            tracing::warn!(
                site = %self.name(self.config.me),
                reason = reason.name(),
                "frame rejected; connection closed"
            );
        }
        let site = match conn.role {
            Some(Role::Site(site)) => Some(site),
            Some(Role::Client(client)) => {
                self.clients.remove(&client);
                self.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
                None
            }
            None => conn.dialed,
        };
        let Some(site) = site else {
            return;
        };
        let index = site.0 as usize;
        let carried = self.peers[index]
            .as_ref()
            .is_some_and(|peer| peer.conn == Some(token));
        if !carried {
            return;
        }
        if let Some(peer) = self.peers[index].as_mut() {
            peer.conn = None;
        }
        if let Some(stats) = self.stats.peer(site) {
            if stats.up.swap(false, Ordering::Relaxed) {
                stats.downs_total.fetch_add(1, Ordering::Relaxed);
                self.stats.set_link_down(site, true);
                // The site loop waits for this mask too (`SiteIo::wait`): a replica
                // starts recovery of the batches that peer drove (see
                // `Coordinator::set_links_down`).
                self.inbox.ring();
                tracing::warn!(
                    site = %self.name(self.config.me),
                    peer = %self.name(site),
                    cause = cause.name(),
                    "link down"
                );
            }
            if matches!(cause, CloseCause::Silent) {
                stats.silent_downs_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !matches!(cause, CloseCause::Shutdown) {
            self.update_fence();
        }
        if self.peers[index].as_ref().is_some_and(|peer| peer.dials)
            && !matches!(cause, CloseCause::Shutdown)
        {
            self.schedule_redial(index);
        }
    }
}

fn seal_parts(conn: &mut Conn, me: u16, cluster_id: u64, count: u32, parts_body: &[u8]) {
    let sealed = conn.seal(me, cluster_id, kind::SITE, |body| {
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(parts_body);
    });
    debug_assert!(
        sealed.is_some(),
        "the caller keeps the body within the limit"
    );
}

impl TransportStats {
    fn peers_dial(&self, site: SiteId) {
        if let Some(peer) = self.peer(site) {
            peer.dials_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The blocking network client.

/// A network client's connection to one node, authenticated with the cluster secret
/// under the role "client". Blocking; [`split`](Self::split) it to send from one thread
/// and receive on another.
pub struct ClientConnection {
    sender: ClientSender,
    receiver: ClientReceiver,
}

/// The sending half of a [`ClientConnection`].
pub struct ClientSender {
    stream: std::net::TcpStream,
    key: MacKey,
    sequence: u64,
    node: u16,
    cluster_id: u64,
    buffer: Vec<u8>,
}

/// The receiving half of a [`ClientConnection`].
pub struct ClientReceiver {
    stream: std::net::TcpStream,
    key: MacKey,
    sequence: u64,
    node: u16,
    cluster_id: u64,
    reader: FrameReader,
}

impl ClientConnection {
    /// Connects to the node at `addr` and runs the handshake; fails if the node does not
    /// answer within a few seconds, or answers with a bad frame.
    pub fn connect(
        addr: SocketAddr,
        cluster_id: u64,
        secret: &[u8; SECRET_BYTES],
    ) -> Result<ClientConnection, TransportError> {
        let connect_error = |source| TransportError::Connect { addr, source };
        let mut stream = std::net::TcpStream::connect_timeout(&addr, CLIENT_HANDSHAKE_TIMEOUT)
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let hello_key = MacKey::hello(secret, cluster_id);
        let nonce = fresh_nonce()?;
        let mut hello_frame = Vec::new();
        let header = Header {
            kind: kind::HELLO,
            body_len: 0,
            sender: CLIENT_ID,
            receiver: ANY_RECEIVER,
            cluster_id,
            sequence: 0,
        };
        let ours = Hello {
            role: role::CLIENT,
            nonce,
        };
        seal_frame(&mut hello_frame, &hello_key, header, |body| {
            ours.encode(body)
        });
        stream.write_all(&hello_frame).map_err(connect_error)?;
        let mut reader = FrameReader::new();
        let expect = Expect {
            cluster_id,
            receiver: CLIENT_ID,
            receiver_any_ok: false,
            sender: None,
            sequence: 0,
            body_bytes_max: HELLO_BODY_BYTES,
        };
        let deadline = Instant::now() + CLIENT_HANDSHAKE_TIMEOUT;
        let frame = read_frame(
            &mut stream,
            &mut reader,
            &expect,
            &hello_key,
            Some(deadline),
        )?
        .ok_or(TransportError::HandshakeTimeout { addr })?;
        let theirs = Hello::decode(&frame.body).map_err(TransportError::Rejected)?;
        if frame.header.kind != kind::HELLO || theirs.role != role::SITE {
            return Err(TransportError::Rejected(RejectReason::UnexpectedKind));
        }
        let node = frame.header.sender;
        let ids = |sender| SessionIds {
            dialer: CLIENT_ID,
            acceptor: node,
            dialer_nonce: nonce,
            acceptor_nonce: theirs.nonce,
            sender,
        };
        let receive_stream = stream.try_clone()?;
        Ok(ClientConnection {
            sender: ClientSender {
                stream,
                key: MacKey::session(secret, cluster_id, &ids(CLIENT_ID)),
                sequence: 1,
                node,
                cluster_id,
                buffer: Vec::new(),
            },
            receiver: ClientReceiver {
                stream: receive_stream,
                key: MacKey::session(secret, cluster_id, &ids(node)),
                sequence: 1,
                node,
                cluster_id,
                reader,
            },
        })
    }

    /// The site id of the node this connection reached.
    pub fn node(&self) -> SiteId {
        SiteId(self.sender.node as u8)
    }

    /// Sends many transactions in one frame.
    pub fn send(&mut self, submit: &Submit) -> Result<(), TransportError> {
        self.sender.send(submit)
    }

    /// Asks for one page of a participant's balances (see
    /// [`ClientSender::send_balances_query`]).
    pub fn send_balances_query(&mut self, query: &BalancesQuery) -> Result<(), TransportError> {
        self.sender.send_balances_query(query)
    }

    /// Waits for the next reply.
    pub fn recv(&mut self) -> Result<ClientReply, TransportError> {
        self.receiver.recv()
    }

    /// Waits at most `timeout` for the next reply.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ClientReply>, TransportError> {
        self.receiver.recv_timeout(timeout)
    }

    /// The two halves, to send and receive on different threads.
    pub fn split(self) -> (ClientSender, ClientReceiver) {
        (self.sender, self.receiver)
    }
}

impl ClientSender {
    /// Sends many transactions in one frame (at most `SUBMIT_TXNS_MAX`).
    pub fn send(&mut self, submit: &Submit) -> Result<(), TransportError> {
        if submit.txns.len() > codec::SUBMIT_TXNS_MAX {
            return Err(TransportError::TooManyTxns {
                count: submit.txns.len(),
            });
        }
        self.send_frame(kind::SUBMIT, |body| codec::encode_submit(submit, body))
    }

    /// Asks a participant node for one page of its ledger's balances; the answer comes
    /// back as [`ClientReply::Balances`] (or `Busy` with no ids: ask again later).
    pub fn send_balances_query(&mut self, query: &BalancesQuery) -> Result<(), TransportError> {
        self.send_frame(kind::BALANCES_QUERY, |body| {
            balances::encode_query(query, body)
        })
    }

    /// Shuts the connection down both ways, so that the receiving half's reader wakes
    /// with an error (a client failing over away from a silent node).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Sends a heartbeat (the node does not require them from clients; a client that
    /// wants its idle connection to show life may send them).
    pub fn heartbeat(&mut self) -> Result<(), TransportError> {
        self.send_frame(kind::HEARTBEAT, |_| {})
    }

    fn send_frame(
        &mut self,
        kind: u8,
        encode_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), TransportError> {
        self.buffer.clear();
        let header = Header {
            kind,
            body_len: 0,
            sender: CLIENT_ID,
            receiver: self.node,
            cluster_id: self.cluster_id,
            sequence: self.sequence,
        };
        seal_frame(&mut self.buffer, &self.key, header, encode_body).ok_or(
            TransportError::TooLarge {
                bytes: self.buffer.len(),
            },
        )?;
        self.sequence += 1;
        self.stream.write_all(&self.buffer)?;
        Ok(())
    }
}

impl ClientReceiver {
    /// Waits for the next reply (heartbeats are skipped).
    pub fn recv(&mut self) -> Result<ClientReply, TransportError> {
        loop {
            if let Some(reply) = self.next(None)? {
                return Ok(reply);
            }
        }
    }

    /// Waits at most `timeout` for the next reply.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ClientReply>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(Some(deadline))? {
                Some(reply) => return Ok(Some(reply)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// One frame: a reply, or `None` for a heartbeat or a passed deadline.
    fn next(&mut self, deadline: Option<Instant>) -> Result<Option<ClientReply>, TransportError> {
        let expect = Expect {
            cluster_id: self.cluster_id,
            receiver: CLIENT_ID,
            receiver_any_ok: false,
            sender: Some(self.node),
            sequence: self.sequence,
            body_bytes_max: FRAME_BODY_BYTES_MAX,
        };
        let Some(frame) = read_frame(
            &mut self.stream,
            &mut self.reader,
            &expect,
            &self.key,
            deadline,
        )?
        else {
            return Ok(None);
        };
        self.sequence += 1;
        let bad_body = |_| TransportError::Rejected(RejectReason::BadBody);
        match frame.header.kind {
            kind::HEARTBEAT => Ok(None),
            kind::OUTCOMES => Ok(Some(ClientReply::Outcomes(
                codec::decode_outcomes(&frame.body).map_err(bad_body)?,
            ))),
            kind::BUSY => Ok(Some(ClientReply::Busy(
                codec::decode_busy(&frame.body).map_err(bad_body)?,
            ))),
            kind::BALANCES => Ok(Some(ClientReply::Balances(
                balances::decode_page(&frame.body).map_err(bad_body)?,
            ))),
            _ => Err(TransportError::Rejected(RejectReason::UnexpectedKind)),
        }
    }
}

/// Reads from a blocking stream until one frame is complete or `deadline` passes
/// (`Ok(None)`); `None` waits without a deadline.
fn read_frame(
    stream: &mut std::net::TcpStream,
    reader: &mut FrameReader,
    expect: &Expect,
    key: &MacKey,
    deadline: Option<Instant>,
) -> Result<Option<OpenFrame>, TransportError> {
    loop {
        if let Some(frame) = reader
            .next_frame(expect, key)
            .map_err(TransportError::Rejected)?
        {
            return Ok(Some(frame));
        }
        let timeout = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(None),
            },
        };
        stream.set_read_timeout(timeout)?;
        let buffer = reader.buffer_mut();
        let filled = buffer.len();
        buffer.resize(filled + READ_CHUNK_BYTES, 0);
        let result = stream.read(&mut buffer[filled..]);
        let got = *result.as_ref().unwrap_or(&0);
        buffer.truncate(filled + got);
        match result {
            Ok(0) => return Err(TransportError::Closed),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that every reconnect wait lies in the upper half of its backoff, and that
    // the waits are not all equal (the jitter that keeps sites out of lockstep).
    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut jitter = Jitter::new(12345);
        for backoff_ms in [1u64, 2, 10, 1000, 600_000] {
            let waits: Vec<u64> = (0..200).map(|_| jitter.wait_ms(backoff_ms)).collect();
            assert!(waits
                .iter()
                .all(|&wait| wait >= backoff_ms / 2 && wait <= backoff_ms));
            if backoff_ms >= 10 {
                assert!(waits.iter().any(|&wait| wait != waits[0]), "{backoff_ms}");
            }
        }
    }

    // Proves the doorbell's wake hook protocol as the event loop uses it: a push while
    // the loop is marked waiting runs the hook (wakes epoll), a push while it runs does
    // not (the loop will see the item on its next check).
    #[test]
    fn doorbell_wakes_the_event_loop_only_while_it_waits() {
        use std::sync::atomic::AtomicU64;
        let wakes = Arc::new(AtomicU64::new(0));
        let counter = wakes.clone();
        let doorbell = Arc::new(Doorbell::with_wake_hook(WakeHook(Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }))));
        let (sender, mut receiver) = channel::<u32>(8, doorbell.clone()).expect("capacity");
        sender.push(1).expect("room");
        assert_eq!(wakes.load(Ordering::Relaxed), 0, "running: no wake needed");
        doorbell.begin_external_wait();
        assert!(
            receiver.has_items(),
            "the check after begin sees the earlier item"
        );
        sender.push(2).expect("room");
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "waiting: the hook ran");
        doorbell.end_external_wait();
        sender.push(3).expect("room");
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        let mut items = Vec::new();
        receiver.pop_batch(&mut items, 8);
        assert_eq!(items, vec![1, 2, 3]);
    }

    // Proves that a configuration with gaps in the site ids, a duplicate id, or timers
    // out of their bounds is refused with a sentence, before anything binds.
    #[test]
    fn bad_configurations_are_refused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let good = TransportConfig {
            cluster_id: 1,
            me: SiteId(0),
            listen: addr,
            peers: vec![(SiteId(1), addr)],
            secret: [0; SECRET_BYTES],
            heartbeat_interval_ms: 10,
            peer_silent_ms_max: 20,
            reconnect_backoff_ms_min: 1,
            reconnect_backoff_ms_max: 1,
            accept_clients: false,
            replicas: 0,
            balance_queries: None,
        };
        assert_eq!(good.validate().expect("valid"), 2);
        let mut gap = good.clone();
        gap.peers = vec![(SiteId(2), addr)];
        let mut duplicate = good.clone();
        duplicate.peers = vec![(SiteId(1), addr), (SiteId(1), addr)];
        let mut silent = good.clone();
        silent.peer_silent_ms_max = 19;
        let mut heartbeat = good.clone();
        heartbeat.heartbeat_interval_ms = 0;
        let mut backoff = good.clone();
        backoff.reconnect_backoff_ms_max = 0;
        for bad in [gap, duplicate, silent, heartbeat, backoff] {
            let (inbox, _receiver) =
                channel::<Frame>(8, Arc::new(Doorbell::default())).expect("capacity");
            match Transport::start(bad, inbox) {
                Err(TransportError::Config { reason }) => assert!(!reason.is_empty()),
                Err(other) => panic!("expected a configuration error, got {other}"),
                Ok(_) => panic!("a bad configuration started"),
            }
        }
    }
}
