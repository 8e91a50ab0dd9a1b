//! `tricommit sim --seeds N --from S`: runs the seeded simulator over many seeds, on
//! every core, and prints each failing seed with the trace of its last events.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tricommit_engine::proto::Termination;
use tricommit_engine::sim::{run_seed, Failure};

/// How often a long run reports progress on stderr.
const PROGRESS_PERIOD_MS: u64 = 2_000;
/// Runs shorter than this many seeds print no progress.
const PROGRESS_SEEDS_MIN: u64 = 5_000;

#[derive(clap::Args)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Terminate with the seed's unsafe naive rule instead of E3PC (to watch the
    /// checker catch it).
    #[arg(long)]
    pub naive: bool,
    /// Stop after this many failing seeds.
    #[arg(long, default_value_t = 10)]
    pub failures_max: u64,
    /// Worker threads (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// What the workers share.
struct Shared {
    next_seed: AtomicU64,
    done_seeds: AtomicU64,
    events: AtomicU64,
    txns: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<Failure>>,
}

pub fn run(args: SimArgs) -> ExitCode {
    if args.seeds == 0 {
        eprintln!("error: --seeds must be at least 1");
        return ExitCode::from(2);
    }
    let Some(end) = args.from.checked_add(args.seeds) else {
        eprintln!("error: --from + --seeds overflows u64");
        return ExitCode::from(2);
    };
    let termination = if args.naive {
        Termination::NaiveUnsafe
    } else {
        Termination::E3pc
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let shared = Shared {
        next_seed: AtomicU64::new(args.from),
        done_seeds: AtomicU64::new(0),
        events: AtomicU64::new(0),
        txns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| worker(&shared, end, termination, args.failures_max));
        }
        if args.seeds >= PROGRESS_SEEDS_MIN {
            report_progress(&shared, args.seeds, started);
        }
    });
    let mut failures = shared
        .failures
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    failures.sort_by_key(|failure| failure.seed);
    for failure in &failures {
        println!("{failure}");
    }
    println!(
        "sim: {} seeds from {} ({}), {} failures, {} events, {} transactions, {:.2}s on {threads} threads",
        shared.done_seeds.load(Ordering::Relaxed),
        args.from,
        if args.naive { "naive rule" } else { "E3PC" },
        failures.len(),
        shared.events.load(Ordering::Relaxed),
        shared.txns.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn worker(shared: &Shared, end: u64, termination: Termination, failures_max: u64) {
    while !shared.stop.load(Ordering::Relaxed) {
        let seed = shared.next_seed.fetch_add(1, Ordering::Relaxed);
        if seed >= end {
            break;
        }
        let (result, stats) = run_seed(seed, termination);
        shared.events.fetch_add(stats.events, Ordering::Relaxed);
        shared.txns.fetch_add(stats.txns, Ordering::Relaxed);
        shared.done_seeds.fetch_add(1, Ordering::Relaxed);
        if let Err(failure) = result {
            let mut failures = shared
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            eprintln!(
                "seed {} FAILED: invariant {}",
                failure.seed, failure.violation.invariant
            );
            failures.push(failure);
            if failures.len() as u64 >= failures_max {
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Prints a progress line every PROGRESS_PERIOD_MS until the workers finish.
fn report_progress(shared: &Shared, seeds: u64, started: Instant) {
    loop {
        let mut waited_ms = 0;
        while waited_ms < PROGRESS_PERIOD_MS {
            let done = shared.done_seeds.load(Ordering::Relaxed);
            if done >= seeds || shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            waited_ms += 100;
        }
        let done = shared.done_seeds.load(Ordering::Relaxed);
        let failed = shared.failures.lock().map_or(0, |failures| failures.len());
        eprintln!(
            "sim: {done}/{seeds} seeds, {failed} failures, {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
}
