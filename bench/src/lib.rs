//! Shared helpers for the tricommit benchmarks and the comparison harness.
//!
//! The harness (`src/bin/compare.rs`) runs the engine under the same closed-loop
//! workload in several configurations. This module holds what one run needs: the named
//! configurations ([`engine_config`]), the load shape each gets ([`load_shape`]), and the
//! measurement of one configuration ([`measure`]).
//!
//! The workload is the one the performance targets name: in-process, four ledgers,
//! two-ledger transfers over 100,000 accounts, durable. A run measures only the window
//! after a short warm-up, so engine start-up and the final drain stay out of the figures.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::EngineCounters;
use tricommit_engine::{Engine, EngineConfig, EngineError, Outcome, Protocol, Ticket, Txn};
use tricommit_wal::SyncBackend;

#[cfg(feature = "pg")]
pub mod pg;

/// Every configuration the harness knows, in the order its table lists them.
pub const CONFIG_NAMES: [&str; 9] = [
    "unbatched",
    "batched",
    "pipelined",
    "overlap",
    "overlap-signed",
    "2pc",
    "pipelined-msync",
    "pipelined-fdatasync",
    "pipelined-io-uring",
];
/// The baseline every ratio is taken against.
pub const BASELINE_NAME: &str = "unbatched";

/// Ledger participants of the workload.
pub const LEDGERS: usize = 4;
/// Accounts per ledger.
pub const ACCOUNTS: u64 = 100_000;
/// Balance every account starts with: large enough that few transfers abort.
pub const BALANCE_INITIAL: i64 = 1_000_000;
/// Transfer amounts are uniform in `1..=AMOUNT_MAX`.
pub const AMOUNT_MAX: u64 = 100;

/// Client threads for the configurations that batch. Two leave the machine's two cores
/// mostly to the engine's stages while still keeping the intake full.
pub const BATCHED_CLIENTS: usize = 2;
/// Transactions each batching client keeps outstanding: together four full default
/// batches, enough to keep every pipeline slot busy.
pub const BATCHED_WINDOW_TXNS: usize = 8_192;
/// Client threads for the unbatched baseline.
pub const UNBATCHED_CLIENTS: usize = 1;
/// Outstanding transactions of the unbatched client. The engine commits one
/// transaction per sync round there, so a larger window only adds queueing latency and
/// drain time; two keep the next transaction ready while one commits.
pub const UNBATCHED_WINDOW_TXNS: usize = 2;
/// The most outstanding transactions any shape may ask for. The engine's intake sheds
/// normal-priority load above its high-water mark, so the harness stays below it.
pub const OUTSTANDING_TXNS_MAX: usize = 32_768;

const _: () = assert!(BATCHED_CLIENTS * BATCHED_WINDOW_TXNS <= OUTSTANDING_TXNS_MAX);
const _: () = assert!(UNBATCHED_CLIENTS * UNBATCHED_WINDOW_TXNS <= OUTSTANDING_TXNS_MAX);
const _: () =
    assert!(OUTSTANDING_TXNS_MAX <= tricommit_engine::pipeline::bounds::INTAKE_HIGH_WATER_TXNS);

/// The warm-up before a measured window is this fraction of the window...
const WARM_UP_SHARE: f64 = 0.2;
/// ...but never longer than this.
const WARM_UP_MS_MAX: u64 = 1_000;
/// How long a client waits on its oldest ticket before it checks the drain deadline.
const TICKET_WAIT_MS: u64 = 50;
/// The longest the clients may take to collect their outstanding outcomes after the
/// window closes. A healthy engine drains in milliseconds; past this, it is stuck.
pub const DRAIN_MS_MAX: u64 = 30_000;
/// Latencies above this are clamped into the histogram's top bucket.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant figures of the latency histograms.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Bits of a transaction id taken by the client's sequence number.
const CLIENT_SEQUENCE_BITS: u32 = 40;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("a client thread panicked")]
    ClientPanicked,
    #[error("outstanding transactions did not complete within {DRAIN_MS_MAX} ms of the end")]
    DrainTimeout,
    #[error("bank invariant broken: ledgers hold {actual} in total, expected {expected}")]
    Bank { actual: i128, expected: i128 },
    #[error("PostgreSQL: {0}")]
    Pg(String),
}

/// The engine configuration of a named harness configuration, with its logs below
/// `data_dir`; `None` for a name the engine cannot run yet (or does not know).
pub fn engine_config(name: &str, data_dir: &Path) -> Option<EngineConfig> {
    let mut config = EngineConfig::ledgers(data_dir, LEDGERS, ACCOUNTS, BALANCE_INITIAL);
    match name {
        // The ladder adds one feature per step: batching, pipelining, overlap.
        "unbatched" => {
            config.batching = false;
            config.pipelining = false;
            config.overlap = false;
        }
        "batched" => {
            config.pipelining = false;
            config.overlap = false;
        }
        "pipelined" => config.overlap = false,
        "overlap" => {}
        // Everything on, and the participants sign their votes (the cost of issue 11's
        // Byzantine evidence: one ed25519 signature and one verification per
        // participant per batch).
        "overlap-signed" => config.sign_votes = true,
        // The baseline for "3PC ≥ 0.85× 2PC": everything on, minus the PRE-COMMIT round.
        "2pc" => config.protocol = Protocol::TwoPhase,
        // The backends, with everything on.
        "pipelined-msync" => config.wal.sync = SyncBackend::Msync,
        "pipelined-fdatasync" => config.wal.sync = SyncBackend::Fdatasync,
        // The row is io_uring or an error: no silent fallback to fdatasync.
        "pipelined-io-uring" => {
            config.wal.sync = SyncBackend::IoUring;
            config.wal.sync_fallback = false;
        }
        _ => return None,
    }
    Some(config)
}

/// How a configuration is loaded: client threads, each with a window of outstanding
/// transactions (closed loop: a new one as soon as the oldest completes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadShape {
    pub clients: usize,
    pub window_txns: usize,
}

/// The load shape for `config`: a small window where there is no batching (one sync
/// round per transaction), full pipelines otherwise.
pub fn load_shape(config: &EngineConfig) -> LoadShape {
    if config.batching {
        LoadShape {
            clients: BATCHED_CLIENTS,
            window_txns: BATCHED_WINDOW_TXNS,
        }
    } else {
        LoadShape {
            clients: UNBATCHED_CLIENTS,
            window_txns: UNBATCHED_WINDOW_TXNS,
        }
    }
}

/// What one measured window of one configuration showed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Transactions committed during the window (engine counter).
    pub committed: u64,
    /// Transactions aborted during the window (engine counter).
    pub aborted: u64,
    /// The window's real length.
    pub window_s: f64,
    pub committed_per_s: f64,
    /// Latency from submission to outcome of the transactions submitted in the window.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Average transactions per batch during the window.
    pub batch_txns_avg: f64,
    /// WAL syncs per second over every site during the window.
    pub syncs_per_s: f64,
}

/// Opens a fresh engine with `config`, loads it with `shape` for a warm-up and then a
/// measured window of `window`, drains it, shuts it down and checks the bank total.
pub fn measure(
    config: EngineConfig,
    shape: LoadShape,
    window: Duration,
) -> Result<Measurement, CompareError> {
    let expected_total = LEDGERS as i128 * ACCOUNTS as i128 * BALANCE_INITIAL as i128;
    measure_checked(config, shape, window, |shutdown| {
        check_bank(shutdown, expected_total)
    })
}

/// [`measure`] with the caller's bank check, run after the clean shutdown (for ledgers
/// whose state lives outside the engine, such as PostgreSQL shards).
pub fn measure_checked(
    config: EngineConfig,
    shape: LoadShape,
    window: Duration,
    check: impl FnOnce(&tricommit_engine::runtime::Shutdown) -> Result<(), CompareError>,
) -> Result<Measurement, CompareError> {
    let engine = Engine::open(config)?;
    let warm_up = window
        .mul_f64(WARM_UP_SHARE)
        .min(Duration::from_millis(WARM_UP_MS_MAX));
    let started = Instant::now();
    let shared = Shared {
        engine,
        stop: AtomicBool::new(false),
        window_start: started + warm_up,
        window_end: started + warm_up + window,
    };
    let (clients, before, after) = drive(&shared, shape, warm_up, window);
    let mut latency = histogram();
    for client in clients {
        let client = client?;
        latency.add(&client).expect("histograms share their bounds");
    }
    let shutdown = shared.engine.shutdown()?;
    check(&shutdown)?;
    Ok(summarize(&before, &after, window, &latency))
}

/// Runs the clients through the warm-up and the window, then stops and joins them.
/// Returns each client's latency histogram and the engine counters at the window's ends.
fn drive(
    shared: &Shared,
    shape: LoadShape,
    warm_up: Duration,
    window: Duration,
) -> (
    Vec<Result<Histogram<u64>, CompareError>>,
    EngineCounters,
    EngineCounters,
) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shape.clients)
            .map(|index| scope.spawn(move || run_client(shared, index, shape.window_txns)))
            .collect();
        std::thread::sleep(warm_up);
        let before = shared.engine.counters();
        std::thread::sleep(window);
        let after = shared.engine.counters();
        shared.stop.store(true, Ordering::Relaxed);
        let clients = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err(CompareError::ClientPanicked)))
            .collect();
        (clients, before, after)
    })
}

fn summarize(
    before: &EngineCounters,
    after: &EngineCounters,
    window: Duration,
    latency: &Histogram<u64>,
) -> Measurement {
    let window_s = window.as_secs_f64();
    let committed = after.committed - before.committed;
    let batches = after.batches - before.batches;
    let batch_txns = after.batch_txns_total - before.batch_txns_total;
    Measurement {
        committed,
        aborted: after.aborted - before.aborted,
        window_s,
        committed_per_s: committed as f64 / window_s,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        batch_txns_avg: if batches == 0 {
            0.0
        } else {
            batch_txns as f64 / batches as f64
        },
        syncs_per_s: (after.syncs - before.syncs) as f64 / window_s,
    }
}

/// Money is only moved, never made: the ledgers' total must equal the genesis total.
fn check_bank(
    shutdown: &tricommit_engine::runtime::Shutdown,
    expected: i128,
) -> Result<(), CompareError> {
    let actual: i128 = shutdown
        .participants
        .iter()
        .filter_map(|participant| participant.rm().ledger())
        .map(|ledger| ledger.total_balance())
        .sum();
    if actual == expected {
        Ok(())
    } else {
        Err(CompareError::Bank { actual, expected })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("static bounds are valid")
}

/// What the clients share with the thread that times the window.
struct Shared {
    engine: Engine,
    stop: AtomicBool,
    /// Only transactions submitted inside the window count towards the latency.
    window_start: Instant,
    window_end: Instant,
}

struct InFlight {
    ticket: Ticket,
    submitted: Instant,
}

/// One closed-loop client: keeps `window_txns` transfers outstanding until `stop`, then
/// collects what is outstanding. Returns the latencies of the window's transactions.
fn run_client(
    shared: &Shared,
    index: usize,
    window_txns: usize,
) -> Result<Histogram<u64>, CompareError> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ index as u64);
    let mut latency = histogram();
    let mut outstanding: VecDeque<InFlight> = VecDeque::with_capacity(window_txns);
    let mut sequence: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        while outstanding.len() >= window_txns {
            reap_oldest(shared, &mut outstanding, &mut latency, None)?;
        }
        sequence += 1;
        let id = ((index as u64) << CLIENT_SEQUENCE_BITS) | sequence;
        submit(
            shared,
            transfer(&mut rng, id),
            &mut outstanding,
            &mut latency,
        )?;
    }
    let drain_deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
    while !outstanding.is_empty() {
        reap_oldest(shared, &mut outstanding, &mut latency, Some(drain_deadline))?;
    }
    Ok(latency)
}

/// A transfer between two different ledgers, uniform over the accounts.
fn transfer(rng: &mut Rng, id: u64) -> Txn {
    let ledgers = LEDGERS as u64;
    let from_ledger = rng.below(ledgers);
    let to_ledger = (from_ledger + 1 + rng.below(ledgers - 1)) % ledgers;
    let from = (from_ledger as u8, rng.below(ACCOUNTS));
    let to = (to_ledger as u8, rng.below(ACCOUNTS));
    Txn::transfer(TxnId(id), from, to, 1 + rng.below(AMOUNT_MAX))
        .expect("the workload only builds transfers between two ledgers with small amounts")
}

/// Submits `txn`, reaping outcomes while the engine answers `Busy`.
fn submit(
    shared: &Shared,
    mut txn: Txn,
    outstanding: &mut VecDeque<InFlight>,
    latency: &mut Histogram<u64>,
) -> Result<(), CompareError> {
    loop {
        let submitted = Instant::now();
        match shared.engine.submit(txn) {
            Ok(ticket) => {
                outstanding.push_back(InFlight { ticket, submitted });
                return Ok(());
            }
            Err(busy) => {
                txn = busy.into_inner();
                if outstanding.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    reap_oldest(shared, outstanding, latency, None)?;
                }
            }
        }
    }
}

/// Waits for the oldest outcome (until `deadline`, if given), then takes every later
/// one that is already in.
fn reap_oldest(
    shared: &Shared,
    outstanding: &mut VecDeque<InFlight>,
    latency: &mut Histogram<u64>,
    deadline: Option<Instant>,
) -> Result<(), CompareError> {
    let Some(InFlight {
        mut ticket,
        submitted,
    }) = outstanding.pop_front()
    else {
        return Ok(());
    };
    let outcome = loop {
        match ticket.wait_timeout(Duration::from_millis(TICKET_WAIT_MS)) {
            Ok(outcome) => break outcome,
            Err(pending) => ticket = pending,
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(CompareError::DrainTimeout);
        }
    };
    record(shared, latency, submitted, outcome);
    while let Some(front) = outstanding.front_mut() {
        let Some(outcome) = front.ticket.try_outcome() else {
            break;
        };
        let submitted = front.submitted;
        outstanding.pop_front();
        record(shared, latency, submitted, outcome);
    }
    Ok(())
}

/// Records the latency of an outcome whose transaction was submitted in the window.
/// Every outcome counts (commits and aborts both end a client's wait).
fn record(shared: &Shared, latency: &mut Histogram<u64>, submitted: Instant, _: Outcome) {
    if submitted < shared.window_start || submitted >= shared.window_end {
        return;
    }
    let latency_us = (submitted.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
    latency
        .record(latency_us)
        .expect("the latency is clamped into the histogram's range");
}

/// splitmix64: small, fast, and good enough to pick accounts.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

/// The median of `values` (the mean of the two middle ones for an even count); `None`
/// when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the median picks the middle of unsorted input and averages an even count.
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    // Proves every name the table lists is runnable, that the ladder adds one feature
    // per step, and that the three sync rows really differ in their backend.
    #[test]
    fn named_configurations() {
        let dir = Path::new("unused");
        assert!(engine_config("no-such-config", dir).is_none());
        for name in CONFIG_NAMES {
            assert!(engine_config(name, dir).is_some(), "{name}");
        }
        let features = |name: &str| {
            let config = engine_config(name, dir).expect("runnable");
            (
                config.batching,
                config.pipelining,
                config.overlap,
                config.protocol,
            )
        };
        let three = Protocol::ThreePhase;
        assert_eq!(features("unbatched"), (false, false, false, three));
        assert_eq!(features("batched"), (true, false, false, three));
        assert_eq!(features("pipelined"), (true, true, false, three));
        assert_eq!(features("overlap"), (true, true, true, three));
        assert_eq!(features("overlap-signed"), (true, true, true, three));
        assert!(
            engine_config("overlap-signed", dir)
                .expect("runnable")
                .sign_votes
        );
        assert!(!engine_config("overlap", dir).expect("runnable").sign_votes);
        assert_eq!(features("2pc"), (true, true, true, Protocol::TwoPhase));
        let backends: Vec<SyncBackend> = [
            "pipelined-msync",
            "pipelined-fdatasync",
            "pipelined-io-uring",
        ]
        .iter()
        .map(|name| engine_config(name, dir).expect("runnable").wal.sync)
        .collect();
        assert_eq!(backends, SyncBackend::ALL.to_vec());
        let unbatched = engine_config("unbatched", dir).expect("runnable");
        assert_eq!(load_shape(&unbatched).window_txns, UNBATCHED_WINDOW_TXNS);
    }
}
