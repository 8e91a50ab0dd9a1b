//! The load and the probe of a chaos run: one network client that keeps a window of
//! random two-ledger transfers in flight, and records, for every transaction, what it
//! was, when it was sent, when its outcome came back and what that outcome was.
//!
//! That record is both the history the bank check reads (`load --history`'s format) and
//! the clock of the recovery figures: "the first commit after the fault" is the first
//! transaction *sent* after the fault whose commit came back. When the client's
//! connection closes (its replica was killed), every transaction in flight completes
//! `unknown` (the client cannot know) and the driver reconnects, every
//! `RECONNECT_PAUSE_MS`, to whatever address `cluster.toml` names.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tricommit_engine::client::{ClusterConfig, RemoteClient};
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Outcome, Ticket, Txn};

/// Transactions in flight at most (the default window).
pub const WINDOW_DEFAULT: usize = 64;
/// The largest window the runner accepts.
pub const WINDOW_MAX: usize = 4096;
/// Largest transfer amount (amounts are uniform in 1..=this).
const AMOUNT_MAX: u64 = 100;
/// Pause between two attempts to reach the cluster.
const RECONNECT_PAUSE_MS: u64 = 20;
/// Pause when nothing completed and the window is full.
const IDLE_PAUSE_US: u64 = 200;
/// How long the driver waits, at stop, for outcomes still in flight before it writes
/// them down as `unknown`.
const DRAIN_WAIT_MS_MAX: u64 = 15_000;

/// What the client learned about one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    Committed,
    Aborted,
    Unknown,
}

impl Learned {
    pub fn word(self) -> &'static str {
        match self {
            Learned::Committed => "committed",
            Learned::Aborted => "aborted",
            Learned::Unknown => "unknown",
        }
    }
}

/// One transaction of the run.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub id: u64,
    pub from: (u8, u64),
    pub to: (u8, u64),
    pub amount: u64,
    pub sent: Instant,
    pub done: Instant,
    pub learned: Learned,
}

/// What the driver saw.
#[derive(Default)]
pub struct LoadRecord {
    pub records: Vec<Record>,
    pub connects: u64,
    pub busy: u64,
    /// The clients' failovers to another replica, the transactions they resent, and
    /// the aborts of older instances they set aside (`ClientCounters`), summed over
    /// every client the driver connected.
    pub failovers: u64,
    pub txns_resent: u64,
    pub stale_outcomes: u64,
}

impl LoadRecord {
    /// The first commit of a transaction sent at or after `at`: when it came back.
    pub fn first_commit_sent_after(&self, at: Instant) -> Option<Instant> {
        self.records
            .iter()
            .filter(|record| record.learned == Learned::Committed && record.sent >= at)
            .map(|record| record.done)
            .min()
    }

    /// Commits that came back in `[from, to)`.
    pub fn commits_between(&self, from: Instant, to: Instant) -> usize {
        self.records
            .iter()
            .filter(|record| {
                record.learned == Learned::Committed && record.done >= from && record.done < to
            })
            .count()
    }

    /// The latency quantile `q` (0..=1) of the commits that came back in `[from, to)`,
    /// in microseconds.
    pub fn latency_us_quantile(&self, from: Instant, to: Instant, q: f64) -> Option<u64> {
        let mut latencies: Vec<u64> = self
            .records
            .iter()
            .filter(|record| {
                record.learned == Learned::Committed && record.done >= from && record.done < to
            })
            .map(|record| record.done.duration_since(record.sent).as_micros() as u64)
            .collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let index = ((latencies.len() - 1) as f64 * q).round() as usize;
        Some(latencies[index])
    }

    /// Adds what `client` counted to the record's client figures.
    fn add_counters(&mut self, client: &RemoteClient) {
        let counters = client.counters();
        self.failovers += counters.failovers.load(Ordering::Relaxed);
        self.txns_resent += counters.txns_resent.load(Ordering::Relaxed);
        self.stale_outcomes += counters.stale_outcomes.load(Ordering::Relaxed);
    }

    /// The history in `load --history`'s format.
    pub fn write_history(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for record in &self.records {
            writeln!(
                out,
                "{} {} {} {} {} {} {}",
                record.id,
                record.from.0,
                record.from.1,
                record.to.0,
                record.to.1,
                record.amount,
                record.learned.word()
            )?;
        }
        out.flush()
    }
}

/// The running driver.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Asked by the scenario: the driver takes its client back to the preferred
    /// replica (it drains, then connects again) and clears the flag once there.
    homeward: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    /// When the latest-sent transaction that committed so far was sent.
    newest_commit_sent: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<LoadRecord>>,
}

impl Load {
    /// Starts driving the cluster in `dir` with `window` transactions in flight.
    pub fn start(dir: &Path, config: &ClusterConfig, window: usize, id_base: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let homeward = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let newest_commit_sent = Arc::new(Mutex::new(None));
        let driver = Driver {
            homeward: homeward.clone(),
            preferred: config.client.preferred_replica as usize,
            newest_commit_sent: newest_commit_sent.clone(),
            dir: dir.to_owned(),
            ledgers: config.participants as u8,
            accounts: config.ledger.accounts,
            window: window.clamp(1, WINDOW_MAX),
            next_id: id_base,
            random: id_base | 1,
            stop: stop.clone(),
            committed: committed.clone(),
        };
        Load {
            stop,
            homeward,
            committed,
            newest_commit_sent,
            thread: Some(std::thread::spawn(move || driver.run())),
        }
    }

    /// Takes the client back to the preferred replica if it failed over (it stops
    /// sending, waits for its outcomes, and connects again); true once it is there,
    /// false if it is not within `wait`.
    pub fn return_to_preferred(&self, wait: Duration) -> bool {
        self.homeward.store(true, Ordering::Release);
        let deadline = Instant::now() + wait;
        while self.homeward.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                self.homeward.store(false, Ordering::Release);
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Commits learned so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Whether a transaction sent at or after `at` has committed.
    pub fn committed_one_sent_after(&self, at: Instant) -> bool {
        self.newest_commit_sent
            .lock()
            .expect("newest commit lock")
            .is_some_and(|sent| sent >= at)
    }

    /// Stops sending, waits (bounded) for the outcomes in flight, returns the record.
    pub fn stop(mut self) -> LoadRecord {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct InFlight {
    record: Record,
    ticket: Ticket,
}

struct Driver {
    dir: PathBuf,
    homeward: Arc<AtomicBool>,
    /// The index of `[client] preferred_replica`.
    preferred: usize,
    ledgers: u8,
    accounts: u64,
    window: usize,
    next_id: u64,
    random: u64,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    newest_commit_sent: Arc<Mutex<Option<Instant>>>,
}

impl Driver {
    fn run(mut self) -> LoadRecord {
        let mut log = LoadRecord::default();
        let mut client: Option<RemoteClient> = None;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + Duration::from_millis(DRAIN_WAIT_MS_MAX));
            }
            if stopping && in_flight.is_empty() {
                break;
            }
            if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                let now = Instant::now();
                for mut flight in in_flight.drain(..) {
                    flight.record.done = now;
                    flight.record.learned = Learned::Unknown;
                    log.records.push(flight.record);
                }
                break;
            }
            let mut away = false;
            if self.homeward.load(Ordering::Acquire) {
                match &client {
                    Some(active) if active.current_replica() != self.preferred => {
                        // Drain, then connect again: a new client tries the preferred
                        // replica first.
                        away = true;
                        if in_flight.is_empty() {
                            if let Some(moved) = client.take() {
                                log.add_counters(&moved);
                                moved.shutdown();
                            }
                        }
                    }
                    Some(_) => self.homeward.store(false, Ordering::Release),
                    None => {}
                }
            }
            if client.as_ref().is_none_or(RemoteClient::is_closed) {
                // The tickets of a closed client complete (`InDoubt`) on their own.
                if in_flight.is_empty() {
                    if let Some(closed) = client.take() {
                        log.add_counters(&closed);
                    }
                    if !stopping {
                        client = self.connect(&mut log);
                    }
                }
            }
            if let (Some(active), false, false) = (&client, stopping, away) {
                self.fill(active, &mut in_flight, &mut log);
            }
            if !self.collect(&mut in_flight, &mut log) {
                std::thread::sleep(Duration::from_micros(IDLE_PAUSE_US));
            }
        }
        if let Some(client) = client {
            log.add_counters(&client);
            client.shutdown();
        }
        log
    }

    fn connect(&mut self, log: &mut LoadRecord) -> Option<RemoteClient> {
        match RemoteClient::connect(&self.dir) {
            Ok(client) => {
                log.connects += 1;
                Some(client)
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(RECONNECT_PAUSE_MS));
                None
            }
        }
    }

    fn fill(
        &mut self,
        client: &RemoteClient,
        in_flight: &mut VecDeque<InFlight>,
        log: &mut LoadRecord,
    ) {
        while in_flight.len() < self.window && !client.is_closed() {
            let record = self.next_transfer();
            let txn = Txn::transfer(TxnId(record.id), record.from, record.to, record.amount)
                .expect("two distinct ledgers and a positive amount make a transfer");
            match client.submit(txn) {
                Ok(ticket) => in_flight.push_back(InFlight { record, ticket }),
                Err(_) => {
                    // Busy: never sent, so never applied; no history line.
                    log.busy += 1;
                    break;
                }
            }
        }
    }

    /// Moves every completed transaction into the log; says whether any completed.
    fn collect(&self, in_flight: &mut VecDeque<InFlight>, log: &mut LoadRecord) -> bool {
        let before = in_flight.len();
        let now = Instant::now();
        in_flight.retain_mut(|flight| match flight.ticket.try_outcome() {
            Some(outcome) => {
                flight.record.done = now;
                flight.record.learned = match outcome {
                    Outcome::Committed => {
                        self.committed.fetch_add(1, Ordering::Relaxed);
                        let mut newest =
                            self.newest_commit_sent.lock().expect("newest commit lock");
                        if newest.is_none_or(|sent| sent < flight.record.sent) {
                            *newest = Some(flight.record.sent);
                        }
                        Learned::Committed
                    }
                    Outcome::Aborted(_) => Learned::Aborted,
                    Outcome::InDoubt => Learned::Unknown,
                };
                log.records.push(flight.record);
                false
            }
            None => true,
        });
        in_flight.len() != before
    }

    fn next_transfer(&mut self) -> Record {
        let from_ledger = (self.next_random() % u64::from(self.ledgers)) as u8;
        let step = 1 + self.next_random() % u64::from(self.ledgers - 1);
        let to_ledger = ((u64::from(from_ledger) + step) % u64::from(self.ledgers)) as u8;
        let from_account = self.next_random() % self.accounts;
        let to_account = self.next_random() % self.accounts;
        let amount = 1 + self.next_random() % AMOUNT_MAX;
        self.next_id += 1;
        let now = Instant::now();
        Record {
            id: self.next_id,
            from: (from_ledger, from_account),
            to: (to_ledger, to_account),
            amount,
            sent: now,
            done: now,
            learned: Learned::Unknown,
        }
    }

    /// xorshift64*.
    fn next_random(&mut self) -> u64 {
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
