//! The TCP transport: the sites of a cluster as separate processes.
//!
//! The protocol does not change for the network (DESIGN §7): a site loop pushes
//! [`Frame`]s into the [`Links`] it is given, and reads the frames that arrive from its
//! inbox, exactly as in-process. [`Transport`] makes the links: the entry for the local
//! site is its own inbox, every other entry is a bounded queue that one mio event-loop
//! thread drains onto that peer's TCP connection.
//!
//! - [`codec`]: the bodies (every [`Part`](crate::proto::Part), and the client
//!   messages), pure and bounded;
//! - [`frame`]: the fixed header, the MAC, the defensive reader and the
//!   [`RejectReason`]s, pure;
//! - [`auth`]: the keys (hello key, per-direction session keys from both nonces) and
//!   the MAC (HMAC-SHA256, truncated to 128 bits);
//! - `tcp`: the only module with sockets: the event loop, [`Transport`], and the
//!   blocking [`ClientConnection`] a network client uses.
//!
//! `docs/wire-format.md` is the byte-level spec.

pub mod auth;
pub mod balances;
pub mod codec;
pub mod frame;
mod stats;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::trace::BatchSpans;
use crate::proto::{SiteId, SITES_MAX};

pub use crate::runtime::{Frame, Links};
pub use auth::{MacKey, SECRET_BYTES};
pub use codec::{BusyReply, ClientReply, CodecError, Outcomes, Submit};
pub use frame::{RejectReason, FRAME_BODY_BYTES_MAX};
pub use stats::{PeerStats, TransportStats};
pub use tcp::{
    BalancesRequest, ClientConnection, ClientId, ClientReceiver, ClientRequest, ClientResponder,
    ClientSender, Transport, MINORITY_HOLD_MS,
};

/// Frames the queue toward one peer holds; a full queue refuses the site loop's push,
/// which drops the frame and counts it (the protocol retransmits what matters, as with
/// the in-process inbox).
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;
/// Bytes waiting in one peer connection's write buffer above which the event loop stops
/// taking frames from that peer's queue: a slow peer fills its queue, not our memory.
pub const PEER_WRITE_BYTES_MAX: usize = 8 << 20;
/// Requests from network clients waiting for the node; when full, the event loop
/// answers `Busy` itself.
pub const CLIENT_REQUESTS_MAX: usize = 4096;
/// Replies waiting for the event loop to write them to their clients.
pub const CLIENT_REPLIES_MAX: usize = 16384;
/// Bytes waiting in one client connection's write buffer above which the client is
/// too slow: its connection is closed (it learns its in-flight outcomes are unknown).
pub const CLIENT_WRITE_BYTES_MAX: usize = 16 << 20;
/// Balance queries waiting for the site thread; when full, the event loop answers
/// `Busy` (with no ids) and the client asks again later.
pub const BALANCE_QUERIES_MAX: usize = 64;
/// Client connections one node serves at once.
pub const CLIENTS_MAX: usize = 1024;
/// Connections that have not finished their handshake, at once.
pub const HANDSHAKES_MAX: usize = 256;
/// The bounds on the configured times, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 60_000;
pub const PEER_SILENT_MS_MAX_MAX: u64 = 600_000;
pub const RECONNECT_BACKOFF_MS_MAX_MAX: u64 = 600_000;

/// What a node hands its transport beyond the configuration, for observability.
#[derive(Clone, Debug, Default)]
pub struct TransportObservers {
    /// The sites' names by id (`replica-0`, …) for the link up/down log lines;
    /// `site-N` where one is missing.
    pub site_names: Vec<String>,
    /// The process's batch root spans (the site's `SiteObserver` shares them). With
    /// tracing on, a TRACE part follows every phase-starting part of a traced batch,
    /// and the TRACE parts that arrive join their traces here. `None`: no TRACE part
    /// is ever sent, and those that arrive are checked and dropped.
    pub spans: Option<Arc<BatchSpans>>,
}

/// Where this site listens, who its peers are, and the link timing.
#[derive(Clone)]
pub struct TransportConfig {
    /// Every frame carries it; a frame of another cluster is refused.
    pub cluster_id: u64,
    /// This site.
    pub me: SiteId,
    /// The address to listen on (peers with lower ids, and clients, dial it).
    pub listen: SocketAddr,
    /// Every other site of the cluster. `me` and the peers together must be the ids
    /// `0..n`: the links are indexed by site id.
    pub peers: Vec<(SiteId, SocketAddr)>,
    /// The cluster secret (`cluster.key`).
    pub secret: [u8; SECRET_BYTES],
    /// A link that sent nothing for this long sends a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A peer heard from for no longer than this is marked down and its connection
    /// closed (at least twice the heartbeat interval). A handshake must finish within
    /// it too.
    pub peer_silent_ms_max: u64,
    /// The first reconnect waits about this long (with jitter) ...
    pub reconnect_backoff_ms_min: u64,
    /// ... and each failure doubles the wait, up to this.
    pub reconnect_backoff_ms_max: u64,
    /// Whether network clients may connect (`true` on the replica clients use).
    pub accept_clients: bool,
    /// The cluster's coordinator replicas, as a mask of site ids (0: not known, and
    /// no fence). A site that accepts clients closes its client connections, and
    /// refuses new ones (`RejectReason::Minority`), once it has been in a minority for
    /// [`MINORITY_HOLD_MS`] and until it is not: the sites it still reaches (itself and
    /// every peer whose link has not gone down since it was up) hold no strict
    /// majority of the replicas and the reached participants together, the smallest
    /// E3PC quorum any transaction it could open needs, so it could commit nothing.
    /// Its clients then fail over at once to a replica that can, instead of hearing
    /// vote timeouts until their reply timeout fires.
    pub replicas: u64,
    /// Where balance queries go (a participant node's site thread answers them): when
    /// set, clients may connect to this site to read its ledger, and only that.
    pub balance_queries: Option<crate::pipeline::mpsc::MpscSender<BalancesRequest>>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        formatter
            .debug_struct("TransportConfig")
            .field("cluster_id", &self.cluster_id)
            .field("me", &self.me)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("peer_silent_ms_max", &self.peer_silent_ms_max)
            .field("reconnect_backoff_ms_min", &self.reconnect_backoff_ms_min)
            .field("reconnect_backoff_ms_max", &self.reconnect_backoff_ms_max)
            .field("accept_clients", &self.accept_clients)
            .field("replicas", &self.replicas)
            .field("balance_queries", &self.balance_queries.is_some())
            .finish()
    }
}

impl TransportConfig {
    /// Checks the bounds and the shape of the site ids; returns the number of sites.
    pub fn validate(&self) -> Result<usize, TransportError> {
        let sites = self.peers.len() + 1;
        if sites > SITES_MAX {
            return Err(config_error(format!(
                "{sites} sites, above the limit of {SITES_MAX}"
            )));
        }
        let mut seen = [false; SITES_MAX];
        for id in std::iter::once(self.me).chain(self.peers.iter().map(|(id, _)| *id)) {
            let index = id.0 as usize;
            if index >= sites {
                return Err(config_error(format!(
                    "site id {index} is outside 0..{sites}: the ids must be dense"
                )));
            }
            if std::mem::replace(&mut seen[index], true) {
                return Err(config_error(format!("site id {index} appears twice")));
            }
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms > HEARTBEAT_INTERVAL_MS_MAX
        {
            return Err(config_error(format!(
                "heartbeat_interval_ms {} is outside 1..={HEARTBEAT_INTERVAL_MS_MAX}",
                self.heartbeat_interval_ms
            )));
        }
        let silent_min = self.heartbeat_interval_ms * 2;
        if self.peer_silent_ms_max < silent_min || self.peer_silent_ms_max > PEER_SILENT_MS_MAX_MAX
        {
            return Err(config_error(format!(
                "peer_silent_ms_max {} is outside {silent_min}..={PEER_SILENT_MS_MAX_MAX} \
                 (at least twice the heartbeat interval)",
                self.peer_silent_ms_max
            )));
        }
        if self.reconnect_backoff_ms_min == 0
            || self.reconnect_backoff_ms_max < self.reconnect_backoff_ms_min
            || self.reconnect_backoff_ms_max > RECONNECT_BACKOFF_MS_MAX_MAX
        {
            return Err(config_error(format!(
                "reconnect backoff {}..{} ms must satisfy 1 <= min <= max <= \
                 {RECONNECT_BACKOFF_MS_MAX_MAX}",
                self.reconnect_backoff_ms_min, self.reconnect_backoff_ms_max
            )));
        }
        Ok(sites)
    }
}

fn config_error(reason: String) -> TransportError {
    TransportError::Config { reason }
}

/// What went wrong in the transport, for a user to read.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {reason}")]
    Config { reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("transport I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Random(#[from] auth::RandomError),
    #[error("cannot build a queue: {0}")]
    Queue(#[from] crate::pipeline::HopError),
    #[error("the peer sent a bad frame ({}); the connection is closed", .0.name())]
    Rejected(RejectReason),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the handshake with {addr} did not finish in time")]
    HandshakeTimeout { addr: SocketAddr },
    #[error("a message of {bytes} bytes is above the frame limit of {FRAME_BODY_BYTES_MAX}")]
    TooLarge { bytes: usize },
    #[error(
        "{count} transactions in one submit, above the limit of {}",
        codec::SUBMIT_TXNS_MAX
    )]
    TooManyTxns { count: usize },
    #[error("the transport's event loop panicked")]
    EventLoopPanicked,
}
