//! `RemoteClient`: the embedded engine's `submit(txn) -> Ticket` surface, over TCP.
//!
//! ```text
//! submit ──admission──▶ queue ──▶ sender thread ──Submit{many txns}──▶ preferred replica
//!   ▲ ticket                          │ failover                              │
//!   │                                 ▼ (same ids)                            │
//!   │                              next replica in ring order                 │
//!   └──────────── completion ◀── receiver thread ◀──Outcomes / Busy───────────┘
//! ```
//!
//! `submit` admits the transaction locally (the client's own bound on what it keeps in
//! flight, with the engine's tickets) and queues it; the sender thread takes whatever
//! is queued, up to a frame's worth, and sends it as one `Submit` frame, so that many
//! transactions share a round trip. The receiver thread completes tickets from the
//! node's `Outcomes`.
//!
//! **Failover.** Any replica opens batches (DESIGN §7). The client sends to its
//! preferred replica (`[client] preferred_replica` in `cluster.toml`). When that
//! connection closes (a `kill -9` closes the socket) or no reply comes within an
//! adaptive timeout (`srtt + 4·rttvar` over observed outcome latencies, RFC 6298
//! style, clamped to `[REPLY_TIMEOUT_MS_MIN, REPLY_TIMEOUT_MS_MAX]`: a paused process
//! or a partition closes nothing), it connects to the next replica in ring order and
//! resends every transaction still in flight, with the same ids. It tries at most
//! `FAILOVER_ROUNDS_MAX` rounds over all replicas; if every attempt fails, the
//! transactions still in flight complete `InDoubt` and [`RemoteClient::failure`]
//! says why ([`ClientError::AllReplicasFailed`]).
//!
//! A resent id is safe to resend because ids are unique at the participants: a
//! participant that still holds the first instance refuses the second, and the
//! second's opener reports the first instance's outcome (`Reason::HELD_BY_BATCH`).
//! So a resent id may exist as several instances, of which at most one commits. An
//! abort that the older connection reports after the resend is only the older
//! instance's (its participants may never have seen it, and the newer instance may
//! commit): the client waits for the newer connection's outcome, and takes a commit
//! from either. From the newer connection, the client takes an abort of a resent id
//! as its outcome only when a participant is known to hold the id for an aborted
//! instance (its own no vote, `TIMEOUT` after another participant voted yes,
//! `HELD_BY_BATCH`); an abort that shows no such holder (`UNANSWERED`, `DUPLICATE`,
//! `Terminated`) completes `InDoubt`, and a checker settles it from the ledgers'
//! postings. An id the client sent once exists once: every abort is its outcome.
//!
//! Backpressure: a node whose intake is full answers `Busy` for the transactions it did
//! not take. They were never submitted, so the client resends them after
//! `BUSY_BACKOFF_US`; meanwhile, and until then, `submit` hands new transactions back
//! in [`Busy`] so that the caller sheds load as it would in-process.
//!
//! A transaction whose outcome never arrives completes `InDoubt`: it may have
//! committed. One that never left the client completes `Aborted(Shutdown)`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pipeline::bounds::INTAKE_TXNS_MAX;
use crate::pipeline::mpsc::{self, MpscReceiver, MpscSender};
use crate::pipeline::{
    AbortReason, Admission, AdmissionLimits, Busy, BusyReason, CompletionId, Doorbell,
    MonotonicClock, Outcome, Received, Ticket, WaitConfig,
};
use crate::proto::{Reason, TxnId};
use crate::runtime::Txn;
use crate::transport::codec::{ClientReply, Submit as SubmitFrame, SUBMIT_TXNS_MAX};
use crate::transport::{ClientConnection, ClientReceiver, ClientSender, TransportError};

use super::config::{load_key, replica_name, ClusterConfig, ConfigError};
use super::Submit;

/// How long the client holds new submissions back after its node said `Busy`, and
/// waits before resending what the node refused.
pub const BUSY_BACKOFF_US: u64 = 1_000;
/// How long the receiver waits for a reply before it looks at its stop flag.
pub const RECEIVE_POLL_MS: u64 = 50;
/// Transactions the client keeps in flight at most (admitted, not yet answered).
pub const CLIENT_IN_FLIGHT_TXNS_MAX: usize = INTAKE_TXNS_MAX;
/// How long [`RemoteClient::shutdown`] waits for the outcomes still outstanding.
pub const SHUTDOWN_WAIT_MS_MAX: u64 = 30_000;
/// The reply timeout's floor: below it, a burst of slow syncs would fail over a
/// healthy replica.
pub const REPLY_TIMEOUT_MS_MIN: u64 = 500;
/// The reply timeout's ceiling, and its value before the first sample.
pub const REPLY_TIMEOUT_MS_MAX: u64 = 5_000;
/// Rounds over every replica a failover tries before it gives up.
pub const FAILOVER_ROUNDS_MAX: u32 = 3;
/// The pause between two failover rounds (a replica may be restarting).
pub const FAILOVER_ROUND_PAUSE_MS: u64 = 200;

const _: () = assert!(REPLY_TIMEOUT_MS_MIN <= REPLY_TIMEOUT_MS_MAX);
const _: () = assert!(FAILOVER_ROUNDS_MAX >= 1);

/// Why a client could not connect, or gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("connecting to {site} at {addr}: {source}")]
    Connect {
        site: String,
        addr: std::net::SocketAddr,
        source: TransportError,
    },
    #[error("cannot start the client: {0}")]
    Start(String),
    #[error(
        "every replica failed: {attempts} connection attempts over {rounds} rounds, the last: {last}"
    )]
    AllReplicasFailed {
        rounds: u32,
        attempts: u32,
        last: String,
    },
}

/// A transaction sent (or about to be) and the tickets waiting for it.
struct Waiting {
    txn: Txn,
    completions: Vec<CompletionId>,
    /// When it was last sent (clock µs; 0: not yet).
    sent_us: u64,
    /// It was resent after a failover, so other instances of it may exist: only an
    /// abort that shows a participant holding the id is its outcome
    /// (`abort_settles_id`).
    resent: bool,
    /// The connection (epoch) it was last sent on: an abort that an older connection
    /// reports after the resend is the abort of an older instance only.
    sent_epoch: u64,
}

/// The adaptive reply timeout: RFC 6298's smoothed round trip and its variation, over
/// the latency from sending a transaction to its outcome.
#[derive(Debug, Default, Clone, Copy)]
struct RttEstimator {
    srtt_us: u64,
    rttvar_us: u64,
}

impl RttEstimator {
    fn observe(&mut self, sample_us: u64) {
        if self.srtt_us == 0 {
            self.srtt_us = sample_us.max(1);
            self.rttvar_us = sample_us / 2;
        } else {
            let delta = self.srtt_us.abs_diff(sample_us);
            self.rttvar_us = (3 * self.rttvar_us + delta) / 4;
            self.srtt_us = ((7 * self.srtt_us + sample_us) / 8).max(1);
        }
    }

    /// `srtt + 4·rttvar`, clamped; the ceiling before any sample.
    fn timeout_us(&self) -> u64 {
        if self.srtt_us == 0 {
            return REPLY_TIMEOUT_MS_MAX * 1_000;
        }
        (self.srtt_us + 4 * self.rttvar_us)
            .clamp(REPLY_TIMEOUT_MS_MIN * 1_000, REPLY_TIMEOUT_MS_MAX * 1_000)
    }
}

/// A replica the client may use.
#[derive(Clone, Debug)]
struct Replica {
    name: String,
    addr: SocketAddr,
}

/// What the client's threads share.
struct Shared {
    admission: Admission,
    clock: MonotonicClock,
    /// Sent, unanswered transactions by id.
    waiting: Mutex<HashMap<TxnId, Waiting>>,
    /// Ids the node refused, to resend after the back-off.
    refused: Mutex<Vec<TxnId>>,
    /// `submit` refuses new transactions until this time (clock µs).
    busy_until_us: AtomicU64,
    /// Every replica failed (or the client stops): nothing more is sent.
    closed: AtomicBool,
    /// `close` began: no new submissions; the sender leaves once its queue is empty.
    closing: AtomicBool,
    stopping: AtomicBool,
    /// The generation of the current connection: a receiver of an older one leaves.
    epoch: AtomicU64,
    /// The newest connection found lost, as its epoch + 1 (0: none): the current one
    /// is lost when this is `epoch + 1`. An epoch, not a flag, so that a receiver of an
    /// older connection that notices its loss late cannot mark the new one lost (it
    /// would fail over again for nothing).
    lost_epoch: AtomicU64,
    /// When the current connection last brought a reply, or was opened (clock µs).
    last_reply_us: AtomicU64,
    rtt: Mutex<RttEstimator>,
    /// The replicas in ring order, and the index of the one in use.
    replicas: Vec<Replica>,
    current: AtomicUsize,
    /// Why the client gave up, once it has.
    failure: Mutex<Option<ClientError>>,
    /// Rings the sender (the queue's doorbell) when the connection is lost.
    sender_doorbell: Arc<Doorbell>,
    counters: ClientCounters,
}

/// What the client counted.
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub frames_sent: AtomicU64,
    pub txns_sent: AtomicU64,
    pub busy_replies: AtomicU64,
    pub txns_in_doubt: AtomicU64,
    /// Failovers to another replica, and the transactions they resent.
    pub failovers: AtomicU64,
    pub txns_resent: AtomicU64,
    /// Aborts that an older connection reported for ids resent since: not taken as
    /// the ids' outcomes (see `on_outcomes`).
    pub stale_outcomes: AtomicU64,
}

impl Shared {
    /// Connection epoch 0, nothing in flight, `current` the replica connected first.
    fn new(
        admission: Admission,
        replicas: Vec<Replica>,
        current: usize,
        sender_doorbell: Arc<Doorbell>,
    ) -> Shared {
        let clock = MonotonicClock::new();
        Shared {
            admission,
            last_reply_us: AtomicU64::new(clock.now_us()),
            clock,
            waiting: Mutex::new(HashMap::new()),
            refused: Mutex::new(Vec::new()),
            busy_until_us: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            lost_epoch: AtomicU64::new(0),
            rtt: Mutex::new(RttEstimator::default()),
            replicas,
            current: AtomicUsize::new(current),
            failure: Mutex::new(None),
            sender_doorbell,
            counters: ClientCounters::default(),
        }
    }

    /// Notes that connection `epoch` is lost; an older epoch than one already noted
    /// changes nothing.
    fn mark_lost(&self, epoch: u64) {
        self.lost_epoch.fetch_max(epoch + 1, Ordering::AcqRel);
    }

    /// Whether the current connection is lost.
    fn connection_lost(&self) -> bool {
        self.lost_epoch.load(Ordering::Acquire) == self.epoch.load(Ordering::Acquire) + 1
    }

    fn complete(&self, completions: &[CompletionId], outcome: Outcome) {
        self.admission.complete_chunk(completions, outcome);
    }

    /// Completes every transaction still waiting as `InDoubt` (the connection is gone).
    fn fail_waiting(&self) {
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        for (_, entry) in waiting {
            self.counters
                .txns_in_doubt
                .fetch_add(entry.completions.len() as u64, Ordering::Relaxed);
            self.complete(&entry.completions, Outcome::InDoubt);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client of a running cluster: submits to its preferred replica, and fails over to
/// the others in ring order (see the module documentation).
pub struct RemoteClient {
    shared: Arc<Shared>,
    queue: MpscSender<(Txn, CompletionId)>,
    sender: Mutex<Option<JoinHandle<()>>>,
    /// One receiver per connection the client opened; older ones leave on their own.
    receivers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl RemoteClient {
    /// Connects to the cluster described in `dir` (`cluster.toml`, `cluster.key`).
    pub fn connect(dir: &Path) -> Result<RemoteClient, ClientError> {
        let cluster = ClusterConfig::load(dir)?;
        let secret = load_key(dir)?;
        RemoteClient::connect_to(&cluster, &secret)
    }

    /// Connects to `cluster` with its secret, preferring the replica its `[client]`
    /// section names.
    pub fn connect_to(
        cluster: &ClusterConfig,
        secret: &[u8; 32],
    ) -> Result<RemoteClient, ClientError> {
        RemoteClient::connect_preferring(cluster, secret, cluster.client.preferred_replica as usize)
    }

    /// Connects to `cluster`, sending to replica `preferred` first. If it cannot be
    /// reached, the next replicas in ring order are tried (one round); the error names
    /// the preferred one if none answers.
    pub fn connect_preferring(
        cluster: &ClusterConfig,
        secret: &[u8; 32],
        preferred: usize,
    ) -> Result<RemoteClient, ClientError> {
        let replicas: Vec<Replica> = (0..cluster.replicas as usize)
            .map(|index| {
                cluster.site(&replica_name(index)).map(|site| Replica {
                    name: site.name,
                    addr: site.addr,
                })
            })
            .collect::<Result<_, _>>()?;
        let preferred = preferred % replicas.len().max(1);
        let (connection, current) =
            connect_first(&replicas, preferred, cluster.cluster_id, secret)?;
        let start_error = |error: &dyn std::fmt::Display| ClientError::Start(error.to_string());
        let limits = AdmissionLimits::new(CLIENT_IN_FLIGHT_TXNS_MAX, CLIENT_IN_FLIGHT_TXNS_MAX)
            .map_err(|error| start_error(&error))?;
        let doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let admission = Admission::new(limits).map_err(|error| start_error(&error))?;
        let shared = Arc::new(Shared::new(admission, replicas, current, doorbell.clone()));
        let (queue, queued) = mpsc::channel(CLIENT_IN_FLIGHT_TXNS_MAX, doorbell)
            .map_err(|error| start_error(&error))?;
        let (sending, receiving) = connection.split();
        let receivers = Arc::new(Mutex::new(Vec::new()));
        spawn_receiver(receiving, &shared, 0, &receivers).map_err(|error| start_error(&error))?;
        let sender = {
            let shared = shared.clone();
            let receivers = receivers.clone();
            let (cluster_id, secret) = (cluster.cluster_id, *secret);
            std::thread::Builder::new()
                .name("tc-client-send".into())
                .spawn(move || {
                    let mut link = Link {
                        sender: sending,
                        cluster_id,
                        secret,
                        receivers,
                    };
                    run_sender(&mut link, queued, &shared)
                })
                .map_err(|error| start_error(&error))?
        };
        Ok(RemoteClient {
            shared,
            queue,
            sender: Mutex::new(Some(sender)),
            receivers,
        })
    }

    /// Submits a transaction: see [`Submit::submit`]. Hands it back in [`Busy`] while
    /// the node sheds load or the client holds `CLIENT_IN_FLIGHT_TXNS_MAX` already.
    pub fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) || shared.closing.load(Ordering::Acquire) {
            return Ok(Ticket::ready(Outcome::Aborted(AbortReason::Shutdown)));
        }
        if shared.clock.now_us() < shared.busy_until_us.load(Ordering::Relaxed) {
            return Err(Busy::new(txn, BusyReason::HighWater));
        }
        let admitted = shared.admission.admit(txn, txn.priority)?;
        if let Err(error) = self.queue.push((admitted.txn, admitted.completion)) {
            // The queue holds as many as admission admits: only a stopped sender
            // lands here, and the transaction never left.
            let (_, completion) = error.into_inner();
            shared.complete(&[completion], Outcome::Aborted(AbortReason::Shutdown));
        }
        Ok(admitted.ticket)
    }

    /// Transactions submitted and not yet answered.
    pub fn in_flight_txns(&self) -> usize {
        self.shared.admission.in_flight_txns()
    }

    /// What the client counted.
    pub fn counters(&self) -> &ClientCounters {
        &self.shared.counters
    }

    /// Whether the client gave up (every replica failed) or stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The replica the client sends to now (its index).
    pub fn current_replica(&self) -> usize {
        self.shared.current.load(Ordering::Acquire)
    }

    /// The reply timeout the client uses now, in milliseconds (adaptive).
    pub fn reply_timeout_ms(&self) -> u64 {
        lock(&self.shared.rtt).timeout_us() / 1_000
    }

    /// Why the client gave up, if it did: [`ClientError::AllReplicasFailed`].
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure)
            .as_ref()
            .map(|error| error.to_string())
    }

    /// Sends what is queued, waits (up to `SHUTDOWN_WAIT_MS_MAX`) for the outcomes still
    /// outstanding, and closes the connection. What is still unanswered then completes
    /// `InDoubt`.
    pub fn shutdown(self) {
        self.close();
    }

    /// [`shutdown`](Self::shutdown) through a shared reference: later submissions
    /// complete `Aborted(Shutdown)` at once.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_WAIT_MS_MAX);
        // The sender stays while outcomes are outstanding: it is the one that fails
        // over if the replica dies during the wait.
        while self.shared.admission.in_flight_txns() > 0
            && !self.shared.closed.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.sender_doorbell.ring();
        if let Some(sender) = lock(&self.sender).take() {
            let _ = sender.join();
        }
        let receivers = std::mem::take(&mut *lock(&self.receivers));
        for receiver in receivers {
            let _ = receiver.join();
        }
        self.shared.fail_waiting();
    }
}

impl Drop for RemoteClient {
    fn drop(&mut self) {
        self.close();
    }
}

impl Submit for RemoteClient {
    fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        RemoteClient::submit(self, txn)
    }
}

/// Connects to `preferred`, or else to the next replicas in ring order (one round).
fn connect_first(
    replicas: &[Replica],
    preferred: usize,
    cluster_id: u64,
    secret: &[u8; 32],
) -> Result<(ClientConnection, usize), ClientError> {
    let mut first_error = None;
    for step in 0..replicas.len() {
        let index = (preferred + step) % replicas.len();
        let replica = &replicas[index];
        match ClientConnection::connect(replica.addr, cluster_id, secret) {
            Ok(connection) => return Ok((connection, index)),
            Err(source) => {
                first_error.get_or_insert(ClientError::Connect {
                    site: replica.name.clone(),
                    addr: replica.addr,
                    source,
                });
            }
        }
    }
    Err(first_error.unwrap_or_else(|| ClientError::Start("the cluster has no replica".into())))
}

/// The sender's connection and what it needs to open another.
struct Link {
    sender: ClientSender,
    cluster_id: u64,
    secret: [u8; 32],
    receivers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn spawn_receiver(
    connection: ClientReceiver,
    shared: &Arc<Shared>,
    epoch: u64,
    receivers: &Mutex<Vec<JoinHandle<()>>>,
) -> std::io::Result<()> {
    let shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("tc-client-receive".into())
        .spawn(move || run_receiver(connection, &shared, epoch))?;
    let mut receivers = lock(receivers);
    // Finished receivers of older connections are reaped, so the list stays short.
    receivers.retain(|handle| !handle.is_finished());
    receivers.push(handle);
    Ok(())
}

/// True if the current connection is lost, or silent for longer than the reply
/// timeout while something waits for an answer.
fn connection_failed(shared: &Shared) -> bool {
    if shared.connection_lost() {
        return true;
    }
    let now_us = shared.clock.now_us();
    let timeout_us = lock(&shared.rtt).timeout_us();
    let quiet_since_us = shared.last_reply_us.load(Ordering::Acquire);
    if now_us.saturating_sub(quiet_since_us) <= timeout_us {
        return false;
    }
    // Rare: scan for a transaction sent longer ago than the timeout.
    lock(&shared.waiting)
        .values()
        .any(|entry| entry.sent_us != 0 && now_us.saturating_sub(entry.sent_us) > timeout_us)
}

/// Connects to the next replica in ring order (at most `FAILOVER_ROUNDS_MAX` rounds
/// over all of them) and resends every transaction in flight with the same ids. False
/// if every attempt failed: the client then gives up.
fn fail_over(link: &mut Link, shared: &Arc<Shared>) -> bool {
    link.sender.close();
    let count = shared.replicas.len();
    let from = shared.current.load(Ordering::Acquire);
    let mut attempts = 0u32;
    let mut last = String::new();
    for round in 0..FAILOVER_ROUNDS_MAX {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(FAILOVER_ROUND_PAUSE_MS));
        }
        for step in 1..=count {
            if shared.stopping.load(Ordering::Acquire) {
                return false;
            }
            let index = (from + step) % count;
            let replica = &shared.replicas[index];
            attempts += 1;
            let connection =
                match ClientConnection::connect(replica.addr, link.cluster_id, &link.secret) {
                    Ok(connection) => connection,
                    Err(error) => {
                        last = format!("{} at {}: {error}", replica.name, replica.addr);
                        continue;
                    }
                };
            let (sending, receiving) = connection.split();
            let epoch = shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            shared
                .last_reply_us
                .store(shared.clock.now_us(), Ordering::Release);
            shared.current.store(index, Ordering::Release);
            link.sender = sending;
            if let Err(error) = spawn_receiver(receiving, shared, epoch, &link.receivers) {
                last = format!("receiver thread: {error}");
                link.sender.close();
                continue;
            }
            shared.counters.failovers.fetch_add(1, Ordering::Relaxed);
            if resend_in_flight(link, shared) {
                return true;
            }
            last = format!("{} at {}: the resend failed", replica.name, replica.addr);
        }
    }
    *lock(&shared.failure) = Some(ClientError::AllReplicasFailed {
        rounds: FAILOVER_ROUNDS_MAX,
        attempts,
        last,
    });
    false
}

/// Resends every transaction in flight on the new connection, a frame at a time.
fn resend_in_flight(link: &mut Link, shared: &Shared) -> bool {
    lock(&shared.refused).clear();
    let now_us = shared.clock.now_us();
    let epoch = shared.epoch.load(Ordering::Acquire);
    let txns: Vec<Txn> = {
        let mut waiting = lock(&shared.waiting);
        waiting
            .values_mut()
            .map(|entry| {
                entry.sent_us = now_us;
                entry.resent = true;
                entry.sent_epoch = epoch;
                entry.txn
            })
            .collect()
    };
    let mut frame = SubmitFrame { txns: Vec::new() };
    for chunk in txns.chunks(SUBMIT_TXNS_MAX) {
        frame.txns.clear();
        frame.txns.extend_from_slice(chunk);
        if link.sender.send(&frame).is_err() {
            return false;
        }
        shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    shared
        .counters
        .txns_resent
        .fetch_add(txns.len() as u64, Ordering::Relaxed);
    true
}

/// Takes what is queued into `frame` (new ids; a duplicate of an id in flight waits
/// for the same answer, unsent) and adds the refused ids whose back-off is over.
fn fill_frame(taken: &mut Vec<(Txn, CompletionId)>, frame: &mut SubmitFrame, shared: &Shared) {
    frame.txns.clear();
    let now_us = shared.clock.now_us();
    // The sender alone fails over, so the epoch now is the connection this frame goes to.
    let epoch = shared.epoch.load(Ordering::Acquire);
    let mut waiting = lock(&shared.waiting);
    for (txn, completion) in taken.drain(..) {
        match waiting.get_mut(&txn.id) {
            Some(entry) => entry.completions.push(completion),
            None => {
                waiting.insert(
                    txn.id,
                    Waiting {
                        txn,
                        completions: vec![completion],
                        sent_us: now_us,
                        resent: false,
                        sent_epoch: epoch,
                    },
                );
                frame.txns.push(txn);
            }
        }
    }
    if now_us >= shared.busy_until_us.load(Ordering::Relaxed) {
        let mut refused = lock(&shared.refused);
        let room = SUBMIT_TXNS_MAX - frame.txns.len();
        let resend = refused.len().min(room);
        for id in refused.drain(..resend) {
            if let Some(entry) = waiting.get_mut(&id) {
                entry.sent_us = now_us;
                entry.sent_epoch = epoch;
                frame.txns.push(entry.txn);
            }
        }
    }
}

/// Sends queued transactions, a frame's worth at a time, resends refused ones, and
/// fails over when the connection fails. Returns once the client stops, or every
/// replica failed.
fn run_sender(
    link: &mut Link,
    mut queued: MpscReceiver<(Txn, CompletionId)>,
    shared: &Arc<Shared>,
) {
    let mut taken: Vec<(Txn, CompletionId)> = Vec::new();
    let mut frame = SubmitFrame { txns: Vec::new() };
    let mut queue_closed = false;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        if connection_failed(shared) && !fail_over(link, shared) {
            break;
        }
        let closing = shared.closing.load(Ordering::Acquire);
        if (queue_closed || closing) && !queued.has_items() && lock(&shared.refused).is_empty() {
            // Nothing more to send: wait for the outcomes (or a failover) only.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        taken.clear();
        // Refused transactions wait for the back-off; otherwise the wait only bounds how
        // late a silent connection is noticed.
        let wait = if lock(&shared.refused).is_empty() {
            Duration::from_millis(RECEIVE_POLL_MS)
        } else {
            Duration::from_micros(BUSY_BACKOFF_US)
        };
        let deadline = Instant::now() + wait;
        // A lost connection (the receiver saw it close, and rang) or a stop ends the
        // wait at once: with every transaction in flight, no new one would.
        let woken = || shared.connection_lost() || shared.stopping.load(Ordering::Acquire);
        if let Received::Closed =
            queued.wait_batch_or(&mut taken, SUBMIT_TXNS_MAX, Some(deadline), woken)
        {
            queue_closed = true;
        }
        fill_frame(&mut taken, &mut frame, shared);
        if frame.txns.is_empty() {
            continue;
        }
        if link.sender.send(&frame).is_err() {
            // The frame's transactions are in `waiting`: the failover resends them.
            shared.mark_lost(shared.epoch.load(Ordering::Acquire));
            continue;
        }
        shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .txns_sent
            .fetch_add(frame.txns.len() as u64, Ordering::Relaxed);
    }
    shared.closed.store(true, Ordering::Release);
    link.sender.close();
    // What never left the client did not enter the protocol.
    taken.clear();
    while queued.pop_batch(&mut taken, SUBMIT_TXNS_MAX) > 0 {
        for (_, completion) in taken.drain(..) {
            shared.complete(&[completion], Outcome::Aborted(AbortReason::Shutdown));
        }
    }
    // What the node refused and the client had not resent never entered the protocol.
    let refused = std::mem::take(&mut *lock(&shared.refused));
    let mut waiting = lock(&shared.waiting);
    for id in refused {
        if let Some(entry) = waiting.remove(&id) {
            shared.complete(&entry.completions, Outcome::Aborted(AbortReason::Shutdown));
        }
    }
    drop(waiting);
    shared.fail_waiting();
}

/// Completes tickets from the replies of connection `epoch` until it is lost, the
/// client fails over to another one, or the client stops.
fn run_receiver(mut connection: ClientReceiver, shared: &Shared, epoch: u64) {
    let poll = Duration::from_millis(RECEIVE_POLL_MS);
    let current = || shared.epoch.load(Ordering::Acquire) == epoch;
    while !shared.stopping.load(Ordering::Acquire) && current() {
        let reply = match connection.recv_timeout(poll) {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(_) => {
                shared.mark_lost(epoch);
                if current() {
                    shared.sender_doorbell.ring();
                }
                return;
            }
        };
        let now_us = shared.clock.now_us();
        if current() {
            shared.last_reply_us.store(now_us, Ordering::Release);
        }
        match reply {
            ClientReply::Outcomes(outcomes) => on_outcomes(shared, now_us, epoch, outcomes.items),
            // Only a participant answers balance queries, and this client asks none.
            ClientReply::Balances(_) => {}
            // A refusal an older connection reports came before the resend, which
            // already sent those ids again.
            ClientReply::Busy(_) if !current() => {}
            ClientReply::Busy(busy) => {
                shared.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
                let until = now_us + BUSY_BACKOFF_US;
                shared.busy_until_us.fetch_max(until, Ordering::Relaxed);
                lock(&shared.refused).extend(busy.ids);
            }
        }
    }
}

/// Completes the tickets of the outcomes that connection `epoch` reports, and takes
/// one latency sample per reply.
///
/// An id resent on a newer connection since may exist as two instances at once, and
/// at most one of them commits (ids are unique at the participants). So a commit
/// from any connection is the id's outcome, but an abort from an older connection
/// is only that instance's: the newer instance may commit (its participants never
/// saw the older one, e.g. when the older opener was cut off before its PREPAREs
/// left), and reports the id's outcome itself (a refusal as held by the older
/// instance waits for that instance's outcome at the newer opener).
fn on_outcomes(shared: &Shared, now_us: u64, epoch: u64, items: Vec<(TxnId, Outcome)>) {
    let mut waiting = lock(&shared.waiting);
    let mut sample_us = None;
    for (id, outcome) in items {
        // One probe per outcome: the entry is looked at, then taken, in place.
        let Entry::Occupied(found) = waiting.entry(id) else {
            continue;
        };
        if found.get().sent_epoch != epoch && outcome != Outcome::Committed {
            shared
                .counters
                .stale_outcomes
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let entry = found.remove();
        if sample_us.is_none() && !entry.resent && entry.sent_us != 0 {
            sample_us = Some(now_us.saturating_sub(entry.sent_us));
        }
        let outcome = match outcome {
            // Another instance of a resent id may commit: an abort that does not show
            // a participant holding the id for this instance is not the id's outcome
            // (see the module documentation).
            Outcome::Aborted(reason) if entry.resent && !abort_settles_id(reason) => {
                shared
                    .counters
                    .txns_in_doubt
                    .fetch_add(entry.completions.len() as u64, Ordering::Relaxed);
                shared.complete(&entry.completions, Outcome::InDoubt);
                continue;
            }
            outcome => outcome,
        };
        let counter = match outcome {
            Outcome::Committed => &shared.counters.committed,
            _ => &shared.counters.aborted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        shared.complete(&entry.completions, outcome);
    }
    drop(waiting);
    if let Some(sample_us) = sample_us {
        lock(&shared.rtt).observe(sample_us);
    }
}

/// Whether an abort of one instance of an id settles the id, when the client sent
/// that id more than once (a failover's resend: several instances may exist, and at
/// most one commits). It does when a participant of the transaction holds the id for
/// the aborted instance (or for an aborted older one), since that participant refuses
/// every other instance (`proto::ids`): its own no vote, a vote timeout after another
/// participant voted yes (`TIMEOUT`), a refusal as held by a batch that aborted
/// (`HELD_BY_BATCH`). It does not when nobody is known to hold it: nobody voted yes
/// before the timeout (`UNANSWERED`), the first instance still holds it
/// (`DUPLICATE`), the termination protocol aborted the batch (`Terminated`: its
/// participants may never have seen this transaction), or the node stopped before
/// the transaction entered the protocol (`Shutdown`).
fn abort_settles_id(reason: AbortReason) -> bool {
    match reason {
        AbortReason::Rejected(Reason::UNANSWERED | Reason::DUPLICATE) => false,
        AbortReason::Rejected(_) => true,
        AbortReason::Terminated | AbortReason::Shutdown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's shared state without connections, at epoch 1, for the reply
    /// handling alone.
    fn shared_alone() -> Shared {
        let limits = AdmissionLimits::new(16, 16).expect("valid limits");
        let admission = Admission::new(limits).expect("valid admission");
        let doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let shared = Shared::new(admission, Vec::new(), 0, doorbell);
        shared.epoch.store(1, Ordering::Release);
        shared
    }

    // Proves that an abort an older connection reports for an id resent since is not
    // taken as the id's outcome (the newer instance may commit: the chaos run's
    // partition-majority found exactly that), while a commit from it is, and the
    // newer connection's abort is too.
    #[test]
    fn an_older_connections_abort_of_a_resent_id_is_not_its_outcome() {
        let shared = shared_alone();
        let txn = |id| Txn::transfer(TxnId(id), (2, 1), (3, 2), 5).expect("a valid transfer");
        for id in 1..=3 {
            let entry = Waiting {
                txn: txn(id),
                completions: Vec::new(),
                sent_us: 1,
                resent: true,
                sent_epoch: 1,
            };
            lock(&shared.waiting).insert(TxnId(id), entry);
        }
        let abort = Outcome::Aborted(AbortReason::Rejected(Reason::MALFORMED));
        on_outcomes(
            &shared,
            10,
            0,
            vec![(TxnId(1), abort), (TxnId(2), Outcome::Committed)],
        );
        let waiting = |id| lock(&shared.waiting).contains_key(&TxnId(id));
        assert!(
            waiting(1),
            "the older connection's abort completed the resent id"
        );
        assert!(!waiting(2), "a commit from any connection is the outcome");
        assert_eq!(shared.counters.stale_outcomes.load(Ordering::Relaxed), 1);
        on_outcomes(&shared, 20, 1, vec![(TxnId(1), abort), (TxnId(3), abort)]);
        assert!(
            !waiting(1) && !waiting(3),
            "the newer connection's abort is the outcome"
        );
        assert_eq!(shared.counters.aborted.load(Ordering::Relaxed), 2);
        assert_eq!(shared.counters.committed.load(Ordering::Relaxed), 1);
    }

    // Proves which aborts of a resent id the client takes as its outcome: those that
    // show a participant holding the id for an aborted instance. An abort that shows
    // nobody holding it completes `InDoubt` (the chaos run's partition-majority: the
    // client failed over back to the cut-off replica, whose instance nobody had voted
    // on reported `UNANSWERED`, while the resend's instance committed). An id sent
    // once takes every abort.
    #[test]
    fn a_resent_id_takes_only_an_abort_that_shows_a_holder() {
        let shared = shared_alone();
        let settles = [
            (AbortReason::Rejected(Reason::TIMEOUT), true),
            (AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS), true),
            (AbortReason::Rejected(Reason::HELD_BY_BATCH), true),
            (AbortReason::Rejected(Reason::UNANSWERED), false),
            (AbortReason::Rejected(Reason::DUPLICATE), false),
            (AbortReason::Terminated, false),
        ];
        let mut id = 0;
        for resent in [false, true] {
            for (reason, settles_id) in settles {
                id += 1;
                let txn = Txn::transfer(TxnId(id), (0, 1), (1, 2), 5).expect("a transfer");
                let mut admitted = shared
                    .admission
                    .admit(txn, txn.priority)
                    .expect("room to admit");
                let entry = Waiting {
                    txn,
                    completions: vec![admitted.completion],
                    sent_us: 1,
                    resent,
                    sent_epoch: 1,
                };
                lock(&shared.waiting).insert(TxnId(id), entry);
                let abort = Outcome::Aborted(reason);
                on_outcomes(&shared, 10, 1, vec![(TxnId(id), abort)]);
                let expected = if resent && !settles_id {
                    Outcome::InDoubt
                } else {
                    abort
                };
                assert_eq!(
                    admitted.ticket.try_outcome(),
                    Some(expected),
                    "{reason:?}, resent: {resent}"
                );
                assert!(!lock(&shared.waiting).contains_key(&TxnId(id)));
            }
        }
        assert_eq!(shared.counters.txns_in_doubt.load(Ordering::Relaxed), 3);
        assert_eq!(shared.counters.aborted.load(Ordering::Relaxed), 9);
    }

    // Proves the reply timeout follows RFC 6298 (srtt + 4·rttvar) within its clamp:
    // the ceiling before any sample, the floor for fast replies, the ceiling for slow.
    #[test]
    fn the_reply_timeout_adapts_within_its_clamp() {
        let mut rtt = RttEstimator::default();
        assert_eq!(rtt.timeout_us(), REPLY_TIMEOUT_MS_MAX * 1_000);
        rtt.observe(2_000);
        assert_eq!((rtt.srtt_us, rtt.rttvar_us), (2_000, 1_000));
        assert_eq!(rtt.timeout_us(), REPLY_TIMEOUT_MS_MIN * 1_000);
        // Slow and jittery replies (300 ms and 900 ms alternating) lift it off the
        // floor, below the ceiling.
        for _ in 0..50 {
            rtt.observe(300_000);
            rtt.observe(900_000);
        }
        let timeout_us = rtt.timeout_us();
        assert!(
            timeout_us > REPLY_TIMEOUT_MS_MIN * 1_000 && timeout_us < REPLY_TIMEOUT_MS_MAX * 1_000,
            "{timeout_us}"
        );
        for _ in 0..50 {
            rtt.observe(60_000_000);
        }
        assert_eq!(rtt.timeout_us(), REPLY_TIMEOUT_MS_MAX * 1_000);
    }
}
