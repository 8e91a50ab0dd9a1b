//! Counters of the transport, shared with whoever reports them (metrics, tests).
//!
//! Every counter only rises; `up` is the link's state now. Relaxed atomics: each is an
//! independent tally, read for reporting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::frame::RejectReason;
use crate::proto::SiteId;

/// The counters of the link to one peer site.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Whether the link is connected and handshaken now.
    pub up: AtomicBool,
    /// Handshakes completed (the first connection and every reconnect).
    pub connects_total: AtomicU64,
    /// Dials started toward this peer (by the lower id of the two).
    pub dials_total: AtomicU64,
    /// Times the link went down (closed, refused, or silent).
    pub downs_total: AtomicU64,
    /// Times the link was closed because the peer was silent for too long.
    pub silent_downs_total: AtomicU64,
    pub frames_in_total: AtomicU64,
    pub frames_out_total: AtomicU64,
    pub bytes_in_total: AtomicU64,
    pub bytes_out_total: AtomicU64,
    /// Site frames taken from the queue while the link was down, and dropped.
    pub frames_dropped_down_total: AtomicU64,
    /// Site frames that arrived from this peer and found the local inbox full.
    pub frames_dropped_inbox_total: AtomicU64,
    /// Parts too large for one frame, dropped (a bug or a misconfiguration).
    pub parts_dropped_oversized_total: AtomicU64,
}

/// Every counter of one transport.
#[derive(Debug)]
pub struct TransportStats {
    /// By site id; the entry for the local site stays at zero.
    peers: Vec<PeerStats>,
    rejects: [AtomicU64; RejectReason::COUNT],
    /// Client connections handshaken now.
    pub clients_connected: AtomicU64,
    pub client_connects_total: AtomicU64,
    /// Transactions that arrived in `Submit` frames.
    pub client_txns_in_total: AtomicU64,
    /// Transactions answered `Busy` by the event loop because the request queue was full.
    pub client_txns_busy_total: AtomicU64,
    /// Replies for a client that was gone, dropped.
    pub client_replies_dropped_total: AtomicU64,
    /// Client connections closed because they did not read their replies.
    pub clients_closed_slow_total: AtomicU64,
    /// Heartbeat frames sent on every link.
    pub heartbeats_out_total: AtomicU64,
    /// Times the event loop woke up (poll returned).
    pub polls_total: AtomicU64,
    /// The sites whose link went down after it had been up, and is not up again: bit
    /// `i` for site `i`. A link never up yet is not in it (a starting cluster is not a
    /// failing one). The replica's site loop reads it (`Coordinator::set_links_down`).
    links_down: AtomicU64,
}

impl TransportStats {
    pub(crate) fn new(sites: usize) -> TransportStats {
        TransportStats {
            peers: (0..sites).map(|_| PeerStats::default()).collect(),
            rejects: std::array::from_fn(|_| AtomicU64::new(0)),
            clients_connected: AtomicU64::new(0),
            client_connects_total: AtomicU64::new(0),
            client_txns_in_total: AtomicU64::new(0),
            client_txns_busy_total: AtomicU64::new(0),
            client_replies_dropped_total: AtomicU64::new(0),
            clients_closed_slow_total: AtomicU64::new(0),
            heartbeats_out_total: AtomicU64::new(0),
            polls_total: AtomicU64::new(0),
            links_down: AtomicU64::new(0),
        }
    }

    /// [`TransportStats::links_down`]'s mask now.
    pub fn links_down(&self) -> u64 {
        self.links_down.load(Ordering::Acquire)
    }

    pub(crate) fn set_link_down(&self, site: SiteId, down: bool) {
        let bit = 1u64 << (site.0 as u32 % 64);
        if down {
            self.links_down.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.links_down.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// The link to `site`, if it is a site of the cluster.
    pub fn peer(&self, site: SiteId) -> Option<&PeerStats> {
        self.peers.get(site.0 as usize)
    }

    /// Whether the link to `site` is up now.
    pub fn link_up(&self, site: SiteId) -> bool {
        self.peer(site)
            .is_some_and(|peer| peer.up.load(Ordering::Relaxed))
    }

    /// Frames refused for `reason` so far.
    pub fn rejects(&self, reason: RejectReason) -> u64 {
        self.rejects[reason as usize].load(Ordering::Relaxed)
    }

    /// Frames refused for any reason so far.
    pub fn rejects_total(&self) -> u64 {
        self.rejects
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn count_reject(&self, reason: RejectReason) {
        self.rejects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}
