//! A test helper, not a tool: runs a bank workload on an engine until it is killed,
//! reporting every acknowledged outcome on stdout, one line each:
//!
//! ```text
//! id from_ledger from_account to_ledger to_account amount committed|aborted|in-doubt
//! ```
//!
//! `engine/tests/engine_crash.rs` starts it, kills it with SIGKILL at a random moment,
//! recovers the data directory, and checks that every reported commit survived and no
//! reported abort was applied. A line is written only after its ticket completed, so
//! every complete line the parent reads is an acknowledgement the engine gave.
//!
//! Usage: `tricommit-crash-child DATA_DIR SEED ID_FIRST LEDGERS ACCOUNTS BALANCE AMOUNT_MAX
//! BATCHING PIPELINING OVERLAP PROTOCOL`, the switches `0` (off) or `1` (on), the protocol
//! `3pc` or `2pc`.
//! It also stops by itself (cleanly) after `RUN_SECONDS_MAX` or when stdout closes, so
//! an abandoned child never runs on.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::Timeouts;
use tricommit_engine::{Engine, EngineConfig, Outcome, Protocol, Ticket, Txn};
use tricommit_wal::WalConfig;

/// Client threads submitting at once.
const CLIENT_THREADS: u64 = 3;
/// Tickets a client holds before it waits for the oldest.
const CLIENT_WINDOW_TICKETS: usize = 64;
/// Ids each client thread may use, from its own offset.
const IDS_PER_THREAD: u64 = 1 << 40;
/// The child stops by itself after this long.
const RUN_SECONDS_MAX: u64 = 120;
/// Log segments: tiny, so that a fresh directory is quick to create and the sites
/// checkpoint every few hundred transfers, which puts many kills around checkpoints.
/// The parent test (engine_crash.rs) reopens with the same values.
const SEGMENT_BYTES: u64 = 32 << 10;
/// A full prepared record of a `BATCH_TXNS_MAX` batch (about 13 KiB) fits.
const RECORD_BYTES_MAX: u32 = 16 << 10;
/// Checkpoint once a log spans more than this many segments.
const LOG_SEGMENTS_MAX: u32 = 2;
const _: () = assert!((RECORD_BYTES_MAX as u64) < SEGMENT_BYTES);
/// Smaller batches than the default, so that a kill lands between many batches.
const BATCH_TXNS_MAX: usize = 256;

/// The bank the child runs, from its command line.
struct Args {
    data_dir: PathBuf,
    seed: u64,
    id_first: u64,
    ledgers: u64,
    accounts: u64,
    balance: i64,
    amount_max: u64,
    batching: bool,
    pipelining: bool,
    overlap: bool,
    protocol: Protocol,
}

fn parse_args() -> Result<Args, String> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let [dir, seed, id_first, ledgers, accounts, balance, amount_max, batching, pipelining, overlap, protocol] =
        words.as_slice()
    else {
        return Err(format!("expected 11 arguments, got {}", words.len()));
    };
    let switch = |name: &str, text: &str| -> Result<bool, String> {
        match text {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("{name}: `{text}` is neither 0 nor 1")),
        }
    };
    let number = |name: &str, text: &str| -> Result<u64, String> {
        text.parse()
            .map_err(|_| format!("{name}: `{text}` is not a count"))
    };
    let args = Args {
        data_dir: PathBuf::from(dir),
        seed: number("SEED", seed)?,
        id_first: number("ID_FIRST", id_first)?,
        ledgers: number("LEDGERS", ledgers)?,
        accounts: number("ACCOUNTS", accounts)?,
        balance: balance
            .parse()
            .map_err(|_| format!("BALANCE: `{balance}` is not a balance"))?,
        amount_max: number("AMOUNT_MAX", amount_max)?,
        batching: switch("BATCHING", batching)?,
        pipelining: switch("PIPELINING", pipelining)?,
        overlap: switch("OVERLAP", overlap)?,
        protocol: match protocol.as_str() {
            "3pc" => Protocol::ThreePhase,
            "2pc" => Protocol::TwoPhase,
            _ => return Err(format!("PROTOCOL: `{protocol}` is neither 3pc nor 2pc")),
        },
    };
    if args.ledgers < 2 || args.ledgers > u64::from(u8::MAX) {
        return Err("LEDGERS must be 2..=255".into());
    }
    if args.accounts == 0 || args.amount_max == 0 {
        return Err("ACCOUNTS and AMOUNT_MAX must be positive".into());
    }
    Ok(args)
}

fn config(args: &Args) -> EngineConfig {
    let mut config = EngineConfig::ledgers(
        &args.data_dir,
        args.ledgers as usize,
        args.accounts,
        args.balance,
    );
    config.wal = WalConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        ..WalConfig::default()
    };
    config.batch_txns_max = BATCH_TXNS_MAX;
    config.log_segments_max = Some(LOG_SEGMENTS_MAX);
    config.compact_postings = true;
    config.batching = args.batching;
    config.pipelining = args.pipelining;
    config.overlap = args.overlap;
    config.protocol = args.protocol;
    config.timeouts = Timeouts {
        vote_us: 500_000,
        retransmit_us: 20_000,
        pending_us: 60_000,
        recovery_stagger_us: 20_000,
        collect_us: 20_000,
        ..Timeouts::default()
    };
    config
}

/// SplitMix64: the transfers are reproducible from the seed.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    }
}

/// One submitted transfer, kept for its report line.
#[derive(Clone, Copy)]
struct Transfer {
    id: u64,
    from: (u8, u64),
    to: (u8, u64),
    amount: u64,
}

impl Transfer {
    fn random(rng: &mut SplitMix, args: &Args, id: u64) -> Transfer {
        let from_ledger = rng.below(args.ledgers);
        let to_ledger = (from_ledger + 1 + rng.below(args.ledgers - 1)) % args.ledgers;
        Transfer {
            id,
            from: (from_ledger as u8, rng.below(args.accounts)),
            to: (to_ledger as u8, rng.below(args.accounts)),
            amount: 1 + rng.below(args.amount_max),
        }
    }

    fn txn(&self) -> Txn {
        Txn::transfer(TxnId(self.id), self.from, self.to, self.amount)
            .expect("distinct ledgers and an amount below i64::MAX")
    }
}

/// Writes one report line; false once stdout is closed.
fn report(transfer: &Transfer, outcome: Outcome) -> bool {
    let word = match outcome {
        Outcome::Committed => "committed",
        Outcome::Aborted(_) => "aborted",
        Outcome::InDoubt => "in-doubt",
    };
    let Transfer {
        id,
        from,
        to,
        amount,
    } = transfer;
    // Stdout is line-buffered: the line reaches the pipe whole, under the lock.
    writeln!(
        std::io::stdout().lock(),
        "{id} {} {} {} {} {amount} {word}",
        from.0,
        from.1,
        to.0,
        to.1
    )
    .is_ok()
}

fn submit(engine: &Engine, transfer: &Transfer) -> Ticket {
    let mut txn = transfer.txn();
    loop {
        match engine.submit(txn) {
            Ok(ticket) => return ticket,
            Err(busy) => {
                txn = busy.into_inner();
                std::thread::yield_now();
            }
        }
    }
}

/// One client: submits transfers, waits for the oldest when its window is full, and
/// reports each outcome, until `stop` is set or stdout closes.
fn client(engine: &Engine, args: &Args, thread: u64, stop: &AtomicBool, deadline: Instant) {
    let mut rng = SplitMix(args.seed ^ (thread + 1).wrapping_mul(0x5851_F42D_4C95_7F2D));
    let id_first = args.id_first + thread * IDS_PER_THREAD;
    let mut window: VecDeque<(Transfer, Ticket)> = VecDeque::with_capacity(CLIENT_WINDOW_TICKETS);
    for id in id_first..id_first + IDS_PER_THREAD {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if window.len() == CLIENT_WINDOW_TICKETS {
            let (transfer, ticket) = window.pop_front().expect("the window is full");
            if !report(&transfer, ticket.wait()) {
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        let transfer = Transfer::random(&mut rng, args, id);
        window.push_back((transfer, submit(engine, &transfer)));
    }
    for (transfer, ticket) in window {
        let _ = report(&transfer, ticket.wait());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("tricommit-crash-child: {error}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::open(config(&args)) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("tricommit-crash-child: {error}");
            return ExitCode::from(1);
        }
    };
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    std::thread::scope(|scope| {
        for thread in 0..CLIENT_THREADS {
            let (engine, args, stop) = (&engine, &args, &stop);
            scope.spawn(move || client(engine, args, thread, stop, deadline));
        }
    });
    match engine.shutdown() {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tricommit-crash-child: shutdown: {error}");
            ExitCode::from(1)
        }
    }
}
