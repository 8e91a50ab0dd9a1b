//! A site stage: one thread that drives one protocol state machine with real I/O.
//!
//! The loop is the driving contract of [`crate::proto`] made concrete: take the frames
//! that arrived (and, on the active coordinator, new batches), feed them in, write the
//! requested records to this site's WAL, sync once for everything that asked to be
//! forced, report the sync back, and deliver the messages. Frames that arrive while a
//! sync runs wait in the inbox and are handled together on the next turn, which is
//! what makes one sync serve many batches (group commit).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tricommit_wal::{Lsn, Wal, WalError};

use crate::pipeline::mpsc::{MpscReceiver, MpscSender};
use crate::pipeline::{Doorbell, MonotonicClock};
use crate::proto::{
    AppendSeq, BatchId, Coordinator, Output, Part, Participant, ResourceManager, SiteId, State,
};

use super::checkpoint::{
    remove_snapshots_except, write_snapshot, CheckpointError, Checkpointer, PauseTimer,
};
use super::config::ParticipantRm;
use super::node::ledger_query::LedgerQueries;
use crate::ledger::Ledger;

/// Frames one turn takes from the inbox before it flushes, so that a flood of messages
/// cannot delay the sync (and the replies) without bound.
pub const FRAMES_PER_TURN_MAX: usize = 256;
/// Rounds of "report durable, flush what that released" in one turn; each round can
/// only release messages held for the sync just made, so two are enough and the bound
/// catches a state machine that keeps asking.
pub const FLUSH_ROUNDS_MAX: usize = 4;
/// Bytes of a recycled segment a site zero-fills per turn (`Wal::checkpoint_step_bounded`):
/// a few milliseconds of writes, so a checkpoint's recycling never stalls a turn for
/// long; a 64 MiB segment takes 64 turns, well under a second under load.
pub const RECYCLE_ZERO_BYTES_PER_TURN: u64 = 1 << 20;
/// Bytes of a new spare segment a site zero-fills per turn (`Wal::spare_step`). Smaller
/// than a recycling step because it runs on every roll, not only after checkpoints: a
/// quarter of a millisecond of writes per turn; a 64 MiB segment takes 256 turns, well
/// within the seconds that filling the active segment takes at full speed.
pub const SPARE_ZERO_BYTES_PER_TURN: u64 = 256 << 10;
/// Turns a site goes on taking frames while its io_uring sync is in flight before it
/// waits for that sync: the records of the next batch fill the log meanwhile, and the
/// bound keeps the replies that wait for the sync from waiting long.
pub const TURNS_OVERLAPPING_SYNC_MAX: u32 = 4;
/// Frames an inbox holds. In-process links drop a frame that finds the inbox full, as a
/// network would; the protocol retransmits what matters.
pub const INBOX_FRAMES_CAPACITY: usize = 8192;
/// How long a site that appended records without a sync (decisions: COMMIT needs none)
/// stays idle before it syncs them anyway. Without it, an idle site kept its last
/// decisions unsynced, and the messages held for them unsent, until the next batch's
/// traffic: an idle cluster's ledgers showed the last batch undecided indefinitely.
pub const IDLE_SYNC_DELAY_US: u64 = 5_000;

/// A frame on an in-process link: every part one site sends another in one turn.
pub struct Frame {
    pub from: SiteId,
    pub parts: Vec<Part>,
}

/// The links of one deployment: a sender into every site's inbox, by site id.
pub type Links = Arc<Vec<MpscSender<Frame>>>;

/// The protocol roles a site stage can drive.
pub trait Machine {
    fn handle_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output);
    fn handle_durable(&mut self, now_us: u64, upto: AppendSeq, out: &mut Output);
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_timeout(&mut self, now_us: u64, out: &mut Output);
    /// The transport reports the sites whose link is down now: a hint for liveness
    /// (`Coordinator::set_links_down`, `Participant::set_links_down`).
    fn set_links_down(&mut self, now_us: u64, links_down: u64, out: &mut Output);
    /// True when no transaction this site knows is undecided here (W, PC or PA):
    /// nothing it holds needs the protocol any more, even if some decided batches are
    /// not retired yet.
    fn settled(&self) -> bool;
    /// The snapshot a checkpoint needs before its records (see `runtime::checkpoint`).
    fn checkpoint_snapshot(&self) -> CheckpointSnapshot;
    /// Appends a checkpoint group numbered `number`; returns the marker's sequence.
    fn checkpoint(&mut self, number: u64, out: &mut Output) -> AppendSeq;
    /// The built-in ledger this site holds, for balance queries (`None`: it holds none).
    fn ledger(&self) -> Option<&Ledger> {
        None
    }
}

/// What a site must store before its checkpoint records.
pub enum CheckpointSnapshot {
    /// A coordinator replica: its records carry everything.
    NotNeeded,
    /// A participant's resource-manager snapshot.
    Bytes(Vec<u8>),
    /// A participant whose resource manager takes no snapshots: no checkpoint.
    Unsupported,
}

/// Whether every transaction of every batch `txn_state` knows is final or never voted.
/// Linear in the transactions held; called only while a stopping site drains.
fn none_pending(
    batches: impl Iterator<Item = BatchId>,
    txn_state: impl Fn(BatchId, u32) -> Option<(State, u32)>,
) -> bool {
    for batch in batches {
        for index in 0.. {
            match txn_state(batch, index) {
                None => break,
                Some((state, _)) if state.is_pending() => return false,
                Some(_) => {}
            }
        }
    }
    true
}

impl Machine for Coordinator {
    fn handle_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        Coordinator::handle_message(self, now_us, from, part, out)
    }
    fn handle_durable(&mut self, now_us: u64, upto: AppendSeq, out: &mut Output) {
        Coordinator::handle_durable(self, now_us, upto, out)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Coordinator::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now_us: u64, out: &mut Output) {
        Coordinator::handle_timeout(self, now_us, out)
    }
    fn set_links_down(&mut self, now_us: u64, links_down: u64, out: &mut Output) {
        Coordinator::set_links_down(self, now_us, links_down, out)
    }
    fn settled(&self) -> bool {
        none_pending(self.batch_ids(), |batch, index| {
            self.txn_state(batch, index)
        })
    }
    fn checkpoint_snapshot(&self) -> CheckpointSnapshot {
        CheckpointSnapshot::NotNeeded
    }
    fn checkpoint(&mut self, number: u64, out: &mut Output) -> AppendSeq {
        Coordinator::checkpoint(self, number, out)
    }
}

impl Machine for Participant<ParticipantRm> {
    fn handle_message(&mut self, now_us: u64, from: SiteId, part: Part, out: &mut Output) {
        Participant::handle_message(self, now_us, from, part, out)
    }
    fn handle_durable(&mut self, now_us: u64, upto: AppendSeq, out: &mut Output) {
        Participant::handle_durable(self, now_us, upto, out)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Participant::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now_us: u64, out: &mut Output) {
        Participant::handle_timeout(self, now_us, out)
    }
    fn set_links_down(&mut self, now_us: u64, links_down: u64, _out: &mut Output) {
        Participant::set_links_down(self, now_us, links_down)
    }
    fn settled(&self) -> bool {
        none_pending(self.batch_ids(), |batch, index| {
            self.txn_state(batch, index)
        })
    }
    fn checkpoint_snapshot(&self) -> CheckpointSnapshot {
        match self.rm().snapshot() {
            Some(bytes) => CheckpointSnapshot::Bytes(bytes),
            None => CheckpointSnapshot::Unsupported,
        }
    }
    fn checkpoint(&mut self, number: u64, out: &mut Output) -> AppendSeq {
        Participant::checkpoint(self, number, out)
    }
    fn ledger(&self) -> Option<&Ledger> {
        self.rm().ledger()
    }
}

/// Counters every site publishes, for the load generator and the tests.
#[derive(Debug, Default)]
pub struct SiteStats {
    pub syncs: AtomicU64,
    pub records: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Checkpoints taken, and the longest and total time they held up the site
    /// (snapshot written, group appended and synced).
    pub checkpoints: AtomicU64,
    pub checkpoint_pause_us_max: AtomicU64,
    pub checkpoint_pause_us_total: AtomicU64,
    /// The longest time one step of zero-filling a segment (recycled after a
    /// checkpoint, or a new spare) held it up.
    pub recycle_pause_us_max: AtomicU64,
    /// When the sync in flight began (the engine clock's microseconds, at least 1), or
    /// 0 when none is: a stalled disk shows as an old sync here (`Engine::counters`).
    pub sync_started_us: AtomicU64,
    /// The longest sync so far, submit to completion, in microseconds.
    pub sync_us_max: AtomicU64,
    /// Whether this site stopped because its drain bound ran out while transactions
    /// it or another site holds were still undecided (they are left in doubt, for
    /// recovery at the next open).
    pub drain_bound_hit: AtomicBool,
    /// The vote timeout the active replica gave its last batch, in microseconds (0 on
    /// other sites): with `overlap` it follows the measured vote latency.
    pub vote_timeout_us: AtomicU64,
}

impl SiteStats {
    /// Notes that a sync begins at `now_us`.
    fn sync_began(&self, now_us: u64) {
        self.sync_started_us.store(now_us.max(1), Ordering::Relaxed);
    }

    /// Notes that the sync in flight ended at `now_us`.
    fn sync_ended(&self, now_us: u64) {
        let started_us = self.sync_started_us.swap(0, Ordering::Relaxed);
        if started_us > 0 {
            self.sync_us_max
                .fetch_max(now_us.saturating_sub(started_us), Ordering::Relaxed);
        }
    }
}

/// What a site stage owns besides its state machine.
pub struct SiteIo {
    pub me: SiteId,
    pub wal: Wal,
    /// `lsn = lsn_base + seq` for every append of this state machine instance.
    pub lsn_base: Lsn,
    pub inbox: MpscReceiver<Frame>,
    pub doorbell: Arc<Doorbell>,
    pub links: Links,
    pub clock: Arc<MonotonicClock>,
    pub stop: Arc<AtomicBool>,
    /// Set by `Engine::crash`: return at once, syncing nothing, as a crash would.
    pub halt: Arc<AtomicBool>,
    /// Which sites still hold undecided transactions while the engine stops: no site
    /// leaves while another may still need it.
    pub board: Arc<DrainBoard>,
    /// How long a stopping site waits for its undecided transactions to be decided
    /// (recovered ones included) before it leaves them to the next open.
    pub drain_max: Duration,
    /// The sync in flight, when syncs overlap the next turns.
    pub sync: SyncInFlight,
    pub stats: Arc<SiteStats>,
    /// Reused buffers.
    pub out: Output,
    pub frames: Vec<Frame>,
    pub encode: Vec<u8>,
    pub appended: AppendSeq,
    /// When and where this site checkpoints its log.
    pub checkpoint: Checkpointer,
    /// Metrics and spans of this site (see `metrics::observe`).
    pub observe: crate::metrics::observe::SiteObserver,
    /// Balance queries of network clients (a participant node's; `None` elsewhere).
    pub ledger_queries: Option<LedgerQueries>,
    /// Signed votes at this site (`VoteIo::default()` when the deployment does not sign).
    pub votes: VoteIo,
    /// A networked site's transport, whose link states hint which peers are gone
    /// (`None` in process, where no link goes down). A loop that sets it must call
    /// [`SiteIo::links_down_changed`] every turn: `wait` wakes while the mask differs
    /// from the one last taken.
    pub transport: Option<Arc<crate::transport::TransportStats>>,
    /// The links-down mask last handed to the machine.
    pub links_down_seen: u64,
}

/// Signed votes at one site (see [`crate::sign`]): a participant signs the votes it
/// sends; a replica runs what it receives through its vote guard before its machine
/// sees it, and forwards the guard's proofs to the other replicas. Both run on the
/// site thread: one signature (participant) or one verification per participant
/// (opening replica) per batch, which the README's "Signed votes" section measures.
#[derive(Default)]
pub struct VoteIo {
    pub signer: Option<crate::sign::Signer>,
    pub guard: Option<crate::sign::VoteGuard>,
    /// Proofs the guard asked to forward this turn, as `(replica, part)`.
    forward: Vec<(SiteId, Part)>,
}

impl VoteIo {
    /// Sends the proofs the guard collected, one frame per replica.
    fn send_forwarded(&mut self, me: SiteId, links: &Links, stats: &SiteStats) {
        if self.forward.is_empty() {
            return;
        }
        let mut frames: std::collections::BTreeMap<SiteId, Vec<Part>> = Default::default();
        for (to, part) in self.forward.drain(..) {
            frames.entry(to).or_default().push(part);
        }
        for (to, parts) in frames {
            let Some(link) = links.get(to.0 as usize) else {
                continue;
            };
            if link.push(Frame { from: me, parts }).is_err() {
                stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Errors that end a site stage. A WAL error is fatal for the site (fsyncgate).
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site {site}: write-ahead log: {source}")]
    Wal { site: u8, source: WalError },
    #[error("site {site}: checkpoint: {source}")]
    Checkpoint { site: u8, source: CheckpointError },
}

/// A site's sync: the one in flight, and whether the next one is already wanted.
///
/// With `overlap` (io_uring only) a sync is submitted and the site goes back to its
/// inbox: the next batch's records are appended while the kernel writes (the WAL
/// allows appends during a sync). The durability report waits for [`SiteIo::finish_sync`],
/// which the loops call when the inbox is empty, after `TURNS_OVERLAPPING_SYNC_MAX`
/// busy turns, and always before they park, so no reply waits on a parked site.
#[derive(Debug)]
pub struct SyncInFlight {
    overlap: bool,
    /// The last append the sync in flight covers.
    in_flight: Option<AppendSeq>,
    /// A sync asked for while another was in flight: submitted when that one ends.
    wanted: bool,
    busy_turns: u32,
    /// The last append reported durable to the machine.
    reported: AppendSeq,
    /// Since when the site idles with appends not yet reported durable (the engine
    /// clock's microseconds): it syncs them `IDLE_SYNC_DELAY_US` later.
    idle_unsynced_since_us: Option<u64>,
}

impl SyncInFlight {
    pub fn new(overlap: bool) -> SyncInFlight {
        SyncInFlight {
            overlap,
            in_flight: None,
            wanted: false,
            busy_turns: 0,
            reported: AppendSeq(0),
            idle_unsynced_since_us: None,
        }
    }
}

impl SiteIo {
    /// Writes the output's appends, starts a sync when asked, and delivers the
    /// messages. Without overlap it also waits for the sync and reports it back,
    /// repeating while that releases more; with overlap the report comes from
    /// [`finish_sync`](Self::finish_sync).
    ///
    /// Then, between two turns, checkpoints the log if it outgrew its bound.
    pub fn flush<M: Machine>(&mut self, machine: &mut M) -> Result<(), SiteError> {
        self.flush_rounds(machine)?;
        if self.checkpoint.recycle_below.is_some() {
            self.recycle_step()?;
        } else if self.checkpoint.due(&self.wal) {
            self.run_checkpoint(machine)?;
        } else if self.wal.spare_wanted() {
            self.spare_step()?;
        }
        Ok(())
    }

    /// Makes the log's next spare segment, zero-filling at most
    /// `SPARE_ZERO_BYTES_PER_TURN` per turn, so that the roll to a new segment finds
    /// one ready instead of zero-filling a whole segment inline.
    fn spare_step(&mut self) -> Result<(), SiteError> {
        let timer = PauseTimer::start();
        self.wal
            .spare_step(SPARE_ZERO_BYTES_PER_TURN)
            .map_err(|source| SiteError::Wal {
                site: self.me.0,
                source,
            })?;
        self.stats
            .recycle_pause_us_max
            .fetch_max(timer.elapsed_us(), Ordering::Relaxed);
        Ok(())
    }

    /// Recycles the segments below the last durable checkpoint group, zero-filling at
    /// most `RECYCLE_ZERO_BYTES_PER_TURN` per turn: a whole 64 MiB segment at once
    /// paused the site for 60–230 ms.
    fn recycle_step(&mut self) -> Result<(), SiteError> {
        let Some(below) = self.checkpoint.recycle_below else {
            return Ok(());
        };
        let timer = PauseTimer::start();
        let more = self
            .wal
            .checkpoint_step_bounded(below, RECYCLE_ZERO_BYTES_PER_TURN)
            .map_err(|source| SiteError::Wal {
                site: self.me.0,
                source,
            })?;
        if !more {
            self.checkpoint.recycle_below = None;
        }
        self.stats
            .recycle_pause_us_max
            .fetch_max(timer.elapsed_us(), Ordering::Relaxed);
        Ok(())
    }

    fn record_pause(&self, pause_us: u64) {
        self.stats
            .checkpoint_pause_us_max
            .fetch_max(pause_us, Ordering::Relaxed);
        self.stats
            .checkpoint_pause_us_total
            .fetch_add(pause_us, Ordering::Relaxed);
    }

    fn flush_rounds<M: Machine>(&mut self, machine: &mut M) -> Result<(), SiteError> {
        for _ in 0..FLUSH_ROUNDS_MAX {
            let sync_upto = self.out.sync_upto.take();
            self.write_appends()?;
            self.deliver();
            if let Some(upto) = sync_upto {
                debug_assert!(upto <= self.appended, "sync asked past the last append");
                self.sync.wanted = true;
            }
            if !self.sync.wanted || self.sync.in_flight.is_some() {
                return Ok(());
            }
            self.stats.sync_began(self.clock.now_us());
            self.wal.sync_submit().map_err(|source| SiteError::Wal {
                site: self.me.0,
                source,
            })?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.observe.sync_started(self.clock.now_us());
            self.sync.in_flight = Some(self.appended);
            self.sync.wanted = false;
            if self.sync.overlap {
                return Ok(());
            }
            self.complete_sync(machine)?;
        }
        self.write_appends()?;
        self.deliver();
        Ok(())
    }

    /// Waits for the sync in flight, if any, and reports it to the machine.
    fn complete_sync<M: Machine>(&mut self, machine: &mut M) -> Result<bool, SiteError> {
        let Some(upto) = self.sync.in_flight.take() else {
            return Ok(false);
        };
        self.wal.sync_wait().map_err(|source| SiteError::Wal {
            site: self.me.0,
            source,
        })?;
        let now_us = self.clock.now_us();
        self.stats.sync_ended(now_us);
        self.observe.sync_finished(now_us);
        self.sync.reported = self.sync.reported.max(upto);
        super::crashpoint::on_synced();
        machine.handle_durable(now_us, upto, &mut self.out);
        Ok(true)
    }

    /// Syncs what an idle site appended without a sync, once it has idled for
    /// `IDLE_SYNC_DELAY_US` (see there): call it once per loop turn, after the turn's
    /// own sync, with whether the turn did work (work restarts the delay). The sync and
    /// what it releases go through the normal flush, so held messages leave with it.
    pub fn idle_sync<M: Machine>(
        &mut self,
        machine: &mut M,
        worked: bool,
    ) -> Result<(), SiteError> {
        let unsynced = self.appended > self.sync.reported;
        if worked || !unsynced || self.sync.in_flight.is_some() {
            self.sync.idle_unsynced_since_us = None;
            return Ok(());
        }
        let now_us = self.clock.now_us();
        let since_us = *self.sync.idle_unsynced_since_us.get_or_insert(now_us);
        if now_us < since_us + IDLE_SYNC_DELAY_US {
            return Ok(());
        }
        self.sync.idle_unsynced_since_us = None;
        self.sync.wanted = true;
        self.flush(machine)?;
        self.finish_sync(machine)
    }

    /// Answers the balance queries waiting (a participant node's), from the ledger as
    /// the machine holds it between two turns.
    pub fn answer_queries<M: Machine>(&mut self, machine: &M) {
        if let Some(queries) = self.ledger_queries.as_mut() {
            if queries.has_items() {
                queries.answer(
                    machine.ledger(),
                    self.wal.last_lsn(),
                    self.wal.durable_lsn(),
                );
            }
        }
    }

    /// Says whether the loop may take another turn before it finishes the sync in
    /// flight: only while it has work and within `TURNS_OVERLAPPING_SYNC_MAX` turns.
    pub fn keep_overlapping(&mut self, worked: bool) -> bool {
        if self.sync.in_flight.is_some()
            && worked
            && self.sync.busy_turns < TURNS_OVERLAPPING_SYNC_MAX
        {
            self.sync.busy_turns += 1;
            return true;
        }
        self.sync.busy_turns = 0;
        false
    }

    /// Finishes the sync in flight and flushes what its report released, until no sync
    /// is in flight (each round can only be asked for by the one before; bounded).
    pub fn finish_sync<M: Machine>(&mut self, machine: &mut M) -> Result<(), SiteError> {
        for _ in 0..FLUSH_ROUNDS_MAX {
            if !self.complete_sync(machine)? {
                return Ok(());
            }
            self.flush(machine)?;
        }
        Ok(())
    }

    /// Takes a checkpoint (the steps and their crash safety are in
    /// `runtime::checkpoint`) and records how long it held up the site.
    fn run_checkpoint<M: Machine>(&mut self, machine: &mut M) -> Result<(), SiteError> {
        let timer = PauseTimer::start();
        // The group's accounting starts from a quiet log: report the sync in flight.
        self.complete_sync(machine)?;
        let site = self.me.0;
        let checkpoint_error = |source| SiteError::Checkpoint { site, source };
        let number = self.checkpoint.number_next;
        let snapshot_written = match machine.checkpoint_snapshot() {
            CheckpointSnapshot::Unsupported => {
                self.checkpoint.unsupported = true;
                return Ok(());
            }
            CheckpointSnapshot::Bytes(bytes) => {
                write_snapshot(&self.checkpoint.dir, number, &bytes).map_err(checkpoint_error)?;
                true
            }
            CheckpointSnapshot::NotNeeded => false,
        };
        // Nothing happens between the snapshot and the records: no event is handled.
        let marker = machine.checkpoint(number, &mut self.out);
        let group_len = self.out.appends.len() as u64;
        self.checkpoint.number_next = number + 1;
        self.flush_rounds(machine)?;
        let wal_error = |source| SiteError::Wal { site, source };
        // The whole group must be durable before anything below it goes.
        self.wal.sync().map_err(wal_error)?;
        let marker_lsn = self.lsn_base + marker.0;
        debug_assert!(self.wal.durable_lsn() >= marker_lsn);
        // The segments below the marker go one per turn from now on (`recycle_step`).
        self.checkpoint.recycle_below = Some(marker_lsn);
        self.checkpoint.group_end_lsn = Some(marker_lsn + group_len - 1);
        // The new group is durable and rules recovery: older snapshots may go.
        self.checkpoint.number_current = Some(number);
        if snapshot_written {
            remove_snapshots_except(&self.checkpoint.dir, Some(number))
                .map_err(checkpoint_error)?;
        }
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        let pause_us = timer.elapsed_us();
        self.record_pause(pause_us);
        self.observe.checkpoint_paused(pause_us);
        Ok(())
    }

    fn write_appends(&mut self) -> Result<(), SiteError> {
        let site = self.me.0;
        for (seq, record) in self.out.appends.drain(..) {
            self.encode.clear();
            record.encode(&mut self.encode);
            let lsn = self
                .wal
                .append(record.kind(), &self.encode)
                .map_err(|source| SiteError::Wal { site, source })?;
            // The state machine's sequence numbers and the log's LSNs advance together;
            // anything else means another writer shares this log.
            assert_eq!(
                lsn,
                self.lsn_base + seq.0,
                "site {site}: append sequence and LSN diverged"
            );
            self.appended = seq;
            self.stats.records.fetch_add(1, Ordering::Relaxed);
            self.observe
                .appended(self.encode.len() as u64 + tricommit_wal::RECORD_HEADER_BYTES);
        }
        Ok(())
    }

    /// Sends every part to its site, one frame per destination.
    fn deliver(&mut self) {
        if self.out.sends.is_empty() {
            return;
        }
        let now_us = self.clock.now_us();
        for outgoing in &self.out.sends {
            self.observe.on_send(now_us, outgoing.to, &outgoing.part);
        }
        let crash_due = super::crashpoint::due_after(&self.out.sends);
        let mut frames = self.out.frames();
        if let Some(signer) = &self.votes.signer {
            signer.seal(&mut frames);
        }
        for (to, parts) in frames {
            let Some(link) = self.links.get(to.0 as usize) else {
                continue;
            };
            if link
                .push(Frame {
                    from: self.me,
                    parts,
                })
                .is_err()
            {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                self.observe.frame_dropped();
            }
        }
        if crash_due {
            super::crashpoint::fire();
        }
    }

    /// Whether the engine crashed on purpose: the stage must stop without syncing.
    pub fn halted(&self) -> bool {
        self.halt.load(Ordering::Acquire)
    }

    /// Syncs whatever is appended, forced or not: a clean shutdown leaves every
    /// decision durable, so the log alone tells what each ledger holds.
    pub fn sync_all(&mut self) -> Result<(), SiteError> {
        self.wal.sync().map_err(|source| SiteError::Wal {
            site: self.me.0,
            source,
        })?;
        Ok(())
    }

    /// Feeds every frame waiting in the inbox (up to a bound) into the machine. Returns
    /// how many frames there were.
    pub fn take_frames<M: Machine>(&mut self, machine: &mut M) -> usize {
        self.frames.clear();
        let count = self.inbox.pop_batch(&mut self.frames, FRAMES_PER_TURN_MAX);
        let now_us = self.clock.now_us();
        for mut frame in self.frames.drain(..) {
            if let Some(guard) = &mut self.votes.guard {
                guard.admit(frame.from, &mut frame.parts, &mut self.votes.forward);
            }
            for part in frame.parts {
                self.observe.on_receive(now_us, frame.from, &part);
                machine.handle_message(now_us, frame.from, part, &mut self.out);
            }
        }
        self.stats
            .frames_in
            .fetch_add(count as u64, Ordering::Relaxed);
        self.votes.send_forwarded(self.me, &self.links, &self.stats);
        count
    }

    /// The transport's links-down mask, if it changed since the last call.
    pub fn links_down_changed(&mut self) -> Option<u64> {
        let down = self.transport.as_ref()?.links_down();
        (down != self.links_down_seen).then(|| {
            self.links_down_seen = down;
            down
        })
    }

    /// Fires the machine's timer if it is due.
    pub fn fire_timer<M: Machine>(&mut self, machine: &mut M) {
        let now_us = self.clock.now_us();
        if machine.poll_timeout().is_some_and(|at| at <= now_us) {
            machine.handle_timeout(now_us, &mut self.out);
        }
    }

    /// Whether the engine asked the sites to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps until a frame arrives, `also_ready` holds, the machine's timer is due, the
    /// engine crashes, or, before draining began, a stop is requested; while draining,
    /// until the drain deadline at the latest. `also_ready` must read state that
    /// producers publish before they ring this site's doorbell.
    pub fn wait<M: Machine>(
        &self,
        machine: &M,
        drain_deadline: Option<Instant>,
        also_ready: impl Fn() -> bool,
    ) {
        let timer = machine
            .poll_timeout()
            .and_then(|at| self.clock.instant_at(at));
        let idle_sync = self
            .sync
            .idle_unsynced_since_us
            .and_then(|since_us| self.clock.instant_at(since_us + IDLE_SYNC_DELAY_US));
        let deadline = [timer, drain_deadline, idle_sync]
            .into_iter()
            .flatten()
            .min();
        let draining = drain_deadline.is_some();
        let inbox = &self.inbox;
        let queries = self.ledger_queries.as_ref();
        let links_moved = || {
            self.transport
                .as_ref()
                .is_some_and(|transport| transport.links_down() != self.links_down_seen)
        };
        let ready = || {
            inbox.has_items()
                || queries.is_some_and(LedgerQueries::has_items)
                || links_moved()
                || also_ready()
                || self.halted()
                || (!draining && self.stop_requested())
                || (draining && self.board.all_settled())
        };
        self.doorbell.wait_until(ready, deadline);
    }
}

/// Which sites still hold undecided transactions while the engine stops, one bit per
/// site. Every site starts unsettled, so that none leaves before all have reported.
pub struct DrainBoard {
    unsettled: AtomicU64,
    /// Every site's doorbell: rung when the last site settles or one leaves.
    doorbells: Vec<Arc<crate::pipeline::Doorbell>>,
}

impl DrainBoard {
    pub fn new(doorbells: Vec<Arc<crate::pipeline::Doorbell>>) -> DrainBoard {
        let sites = doorbells.len() as u32;
        let all = if sites >= 64 {
            u64::MAX
        } else {
            (1u64 << sites) - 1
        };
        DrainBoard {
            unsettled: AtomicU64::new(all),
            doorbells,
        }
    }

    /// The board of a site that runs alone in its process (a cluster node): only its
    /// own state decides when it may leave.
    pub fn for_one_site(site: SiteId, doorbell: Arc<crate::pipeline::Doorbell>) -> DrainBoard {
        DrainBoard {
            unsettled: AtomicU64::new(site.bit()),
            doorbells: vec![doorbell],
        }
    }

    /// Records whether `site` holds undecided transactions.
    pub fn report(&self, site: SiteId, settled: bool) {
        if !settled {
            self.unsettled.fetch_or(site.bit(), Ordering::AcqRel);
            return;
        }
        let before = self.unsettled.fetch_and(!site.bit(), Ordering::AcqRel);
        if before != 0 && before & !site.bit() == 0 {
            for doorbell in &self.doorbells {
                doorbell.ring();
            }
        }
    }

    /// A site that leaves (settled or not) can help nobody any more.
    pub fn leave(&self, site: SiteId) {
        self.report(site, true);
    }

    pub fn all_settled(&self) -> bool {
        self.unsettled.load(Ordering::Acquire) == 0
    }
}

/// When a stopping site may leave: once no site holds an undecided transaction (a
/// replica that left early could strand a participant that still needs its decision),
/// or once it has waited `drain_max` for the rest to be decided.
pub struct Drain {
    since: Option<Instant>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain { since: None }
    }

    /// When draining ends at the latest, once it has begun.
    pub fn deadline(&self, drain_max: Duration) -> Option<Instant> {
        self.since.map(|since| since + drain_max)
    }

    /// Starts draining (once), reports this site's state, and says whether it may leave.
    pub fn may_leave<M: Machine>(&mut self, machine: &M, io: &SiteIo) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        io.board.report(io.me, machine.settled());
        let settled = io.board.all_settled();
        let leave = settled || since.elapsed() >= io.drain_max;
        if leave && !settled {
            io.stats.drain_bound_hit.store(true, Ordering::Relaxed);
        }
        if leave {
            io.board.leave(io.me);
        }
        leave
    }
}

/// The loop of a participant or a backup replica: frames in, records and frames out.
pub fn run_passive<M: Machine>(mut machine: M, mut io: SiteIo) -> Result<M, SiteError> {
    io.flush(&mut machine)?;
    let mut drain = Drain::new();
    loop {
        if io.halted() {
            return Ok(machine);
        }
        let mut frames = io.take_frames(&mut machine);
        if let Some(down) = io.links_down_changed() {
            machine.set_links_down(io.clock.now_us(), down, &mut io.out);
            frames += 1;
        }
        io.fire_timer(&mut machine);
        io.flush(&mut machine)?;
        if io.keep_overlapping(frames > 0) {
            continue;
        }
        io.finish_sync(&mut machine)?;
        io.idle_sync(&mut machine, frames > 0)?;
        io.answer_queries(&machine);
        if frames == 0 {
            if io.stop_requested() && drain.may_leave(&machine, &io) {
                io.sync_all()?;
                return Ok(machine);
            }
            io.wait(&machine, drain.deadline(io.drain_max), || false);
        }
    }
}
