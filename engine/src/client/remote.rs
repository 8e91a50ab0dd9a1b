//! `RemoteClient`: the embedded engine's `submit(txn) -> Ticket` surface, over TCP.
//!
//! ```text
//! submit ──admission──▶ queue ──▶ sender thread ──Submit{many txns}──▶ replica-0
//!   ▲ ticket                                                               │
//!   └──────────── completion ◀── receiver thread ◀──Outcomes / Busy───────┘
//! ```
//!
//! `submit` admits the transaction locally (the client's own bound on what it keeps in
//! flight, with the engine's tickets) and queues it; the sender thread takes whatever
//! is queued, up to a frame's worth, and sends it as one `Submit` frame, so that many
//! transactions share a round trip. The receiver thread completes tickets from the
//! node's `Outcomes`.
//!
//! Backpressure: a node whose intake is full answers `Busy` for the transactions it did
//! not take. They were never submitted, so the client resends them after
//! `BUSY_BACKOFF_US`; meanwhile, and until then, `submit` hands new transactions back
//! in [`Busy`] so that the caller sheds load as it would in-process.
//!
//! A transaction whose outcome never arrives (the connection is lost) completes
//! `InDoubt`: it may have committed. One that never left the client completes
//! `Aborted(Shutdown)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pipeline::bounds::INTAKE_TXNS_MAX;
use crate::pipeline::mpsc::{self, MpscReceiver, MpscSender};
use crate::pipeline::{
    AbortReason, Admission, AdmissionLimits, Busy, BusyReason, CompletionId, Doorbell,
    MonotonicClock, Outcome, Received, Ticket, WaitConfig,
};
use crate::proto::TxnId;
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

/// Why a client could not connect.
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
}

/// A transaction sent (or about to be) and the tickets waiting for it.
struct Waiting {
    txn: Txn,
    completions: Vec<CompletionId>,
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
    /// The connection is gone (or the client stops): nothing more is sent.
    closed: AtomicBool,
    /// `close` began: no new submissions; the sender leaves once its queue is empty.
    closing: AtomicBool,
    stopping: AtomicBool,
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
}

impl Shared {
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

/// A client of a running cluster: submits to `replica-0`, which opens every batch.
pub struct RemoteClient {
    shared: Arc<Shared>,
    queue: MpscSender<(Txn, CompletionId)>,
    sender: Mutex<Option<JoinHandle<()>>>,
    receiver: Mutex<Option<JoinHandle<()>>>,
}

impl RemoteClient {
    /// Connects to the cluster described in `dir` (`cluster.toml`, `cluster.key`).
    pub fn connect(dir: &Path) -> Result<RemoteClient, ClientError> {
        let cluster = ClusterConfig::load(dir)?;
        let secret = load_key(dir)?;
        RemoteClient::connect_to(&cluster, &secret)
    }

    /// Connects to `cluster` with its secret.
    pub fn connect_to(
        cluster: &ClusterConfig,
        secret: &[u8; 32],
    ) -> Result<RemoteClient, ClientError> {
        let site = cluster.site(&replica_name(0))?;
        let connection =
            ClientConnection::connect(site.addr, cluster.cluster_id, secret).map_err(|source| {
                ClientError::Connect {
                    site: site.name.clone(),
                    addr: site.addr,
                    source,
                }
            })?;
        let start_error = |error: &dyn std::fmt::Display| ClientError::Start(error.to_string());
        let limits = AdmissionLimits::new(CLIENT_IN_FLIGHT_TXNS_MAX, CLIENT_IN_FLIGHT_TXNS_MAX)
            .map_err(|error| start_error(&error))?;
        let shared = Arc::new(Shared {
            admission: Admission::new(limits).map_err(|error| start_error(&error))?,
            clock: MonotonicClock::new(),
            waiting: Mutex::new(HashMap::new()),
            refused: Mutex::new(Vec::new()),
            busy_until_us: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            counters: ClientCounters::default(),
        });
        let doorbell = Arc::new(Doorbell::new(WaitConfig::default()));
        let (queue, queued) = mpsc::channel(CLIENT_IN_FLIGHT_TXNS_MAX, doorbell)
            .map_err(|error| start_error(&error))?;
        let (sending, receiving) = connection.split();
        let sender = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tc-client-send".into())
                .spawn(move || run_sender(sending, queued, &shared))
                .map_err(|error| start_error(&error))?
        };
        let receiver = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tc-client-receive".into())
                .spawn(move || run_receiver(receiving, &shared))
                .map_err(|error| start_error(&error))?
        };
        Ok(RemoteClient {
            shared,
            queue,
            sender: Mutex::new(Some(sender)),
            receiver: Mutex::new(Some(receiver)),
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

    /// Whether the connection is lost.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
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
        if let Some(sender) = lock(&self.sender).take() {
            let _ = sender.join();
        }
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_WAIT_MS_MAX);
        while self.shared.admission.in_flight_txns() > 0
            && !self.shared.closed.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(receiver) = lock(&self.receiver).take() {
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

/// Sends queued transactions, a frame's worth at a time, and resends refused ones.
/// Returns once the queue is closed and drained, or the connection is lost.
fn run_sender(
    mut connection: ClientSender,
    mut queued: MpscReceiver<(Txn, CompletionId)>,
    shared: &Shared,
) {
    let mut taken: Vec<(Txn, CompletionId)> = Vec::new();
    let mut frame = SubmitFrame { txns: Vec::new() };
    let mut queue_closed = false;
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        if shared.closed.load(Ordering::Acquire)
            || ((queue_closed || closing)
                && !queued.has_items()
                && lock(&shared.refused).is_empty())
        {
            break;
        }
        taken.clear();
        // Refused transactions wait for the back-off; otherwise the wait only bounds how
        // late a lost connection is noticed.
        let wait = if lock(&shared.refused).is_empty() {
            Duration::from_millis(RECEIVE_POLL_MS)
        } else {
            Duration::from_micros(BUSY_BACKOFF_US)
        };
        let deadline = Instant::now() + wait;
        if let Received::Closed = queued.wait_batch(&mut taken, SUBMIT_TXNS_MAX, Some(deadline)) {
            queue_closed = true;
        }
        frame.txns.clear();
        {
            let mut waiting = lock(&shared.waiting);
            for (txn, completion) in taken.drain(..) {
                // A duplicate of an id in flight waits for the same answer, unsent.
                match waiting.get_mut(&txn.id) {
                    Some(entry) => entry.completions.push(completion),
                    None => {
                        waiting.insert(
                            txn.id,
                            Waiting {
                                txn,
                                completions: vec![completion],
                            },
                        );
                        frame.txns.push(txn);
                    }
                }
            }
            let backoff_over =
                shared.clock.now_us() >= shared.busy_until_us.load(Ordering::Relaxed);
            if backoff_over {
                let mut refused = lock(&shared.refused);
                let room = SUBMIT_TXNS_MAX - frame.txns.len();
                let resend = refused.len().min(room);
                for id in refused.drain(..resend) {
                    if let Some(entry) = waiting.get(&id) {
                        frame.txns.push(entry.txn);
                    }
                }
            }
        }
        if frame.txns.is_empty() {
            continue;
        }
        if connection.send(&frame).is_err() {
            shared.closed.store(true, Ordering::Release);
            break;
        }
        shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .txns_sent
            .fetch_add(frame.txns.len() as u64, Ordering::Relaxed);
    }
    // What never left the client did not enter the protocol.
    taken.clear();
    while queued.pop_batch(&mut taken, SUBMIT_TXNS_MAX) > 0 {
        for (_, completion) in taken.drain(..) {
            shared.complete(&[completion], Outcome::Aborted(AbortReason::Shutdown));
        }
    }
}

/// Completes tickets from the node's replies until the connection is lost or the client
/// stops.
fn run_receiver(mut connection: ClientReceiver, shared: &Shared) {
    let poll = Duration::from_millis(RECEIVE_POLL_MS);
    while !shared.stopping.load(Ordering::Acquire) {
        let reply = match connection.recv_timeout(poll) {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(_) => break,
        };
        match reply {
            ClientReply::Outcomes(outcomes) => {
                let mut waiting = lock(&shared.waiting);
                for (id, outcome) in outcomes.items {
                    if let Some(entry) = waiting.remove(&id) {
                        let counter = match outcome {
                            Outcome::Committed => &shared.counters.committed,
                            _ => &shared.counters.aborted,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        shared.complete(&entry.completions, outcome);
                    }
                }
            }
            // Only a participant answers balance queries, and this client asks none.
            ClientReply::Balances(_) => {}
            ClientReply::Busy(busy) => {
                shared.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
                let until = shared.clock.now_us() + BUSY_BACKOFF_US;
                shared.busy_until_us.fetch_max(until, Ordering::Relaxed);
                lock(&shared.refused).extend(busy.ids);
            }
        }
    }
    // The connection is gone: nothing sent will be answered any more.
    shared.closed.store(true, Ordering::Release);
    // What the node refused and the client had not resent never entered the protocol.
    let refused = std::mem::take(&mut *lock(&shared.refused));
    {
        let mut waiting = lock(&shared.waiting);
        for id in refused {
            if let Some(entry) = waiting.remove(&id) {
                shared.complete(&entry.completions, Outcome::Aborted(AbortReason::Shutdown));
            }
        }
    }
    shared.fail_waiting();
}
