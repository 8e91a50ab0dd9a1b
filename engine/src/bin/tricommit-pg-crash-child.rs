//! A test helper, not a tool: runs transfers on an engine whose ledgers are PostgreSQL
//! shards until it is killed, reporting every acknowledged outcome on stdout, one line
//! each: `id committed|aborted|in-doubt`.
//!
//! `engine/tests/pg_crash.rs` starts it, kills it with SIGKILL under load, reopens the
//! data directory on the same shards and checks every reported commit against the
//! postings. A line is written only after its ticket completed, so every complete line
//! the parent reads is an acknowledgement the engine gave.
//!
//! Usage: `tricommit-pg-crash-child DATA_DIR URL_TEMPLATE LEDGERS ACCOUNTS SEGMENT_KIB
//! SEED`. It stops by itself (cleanly) after `RUN_SECONDS_MAX` or when stdout closes.

use std::collections::VecDeque;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tricommit_engine::pg::{self, PgLedgerStats};
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Engine, Outcome, Ticket, Txn};

/// Tickets the child holds before it waits for the oldest.
const WINDOW_TICKETS: usize = 512;
/// The child stops by itself after this long.
const RUN_SECONDS_MAX: u64 = 120;
/// The largest transfer amount.
const AMOUNT_MAX: u64 = 100;
/// Smaller batches than the default, so that a kill lands between many batches.
const BATCH_TXNS_MAX: usize = 256;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tricommit-pg-crash-child: {error}");
            ExitCode::from(2)
        }
    }
}

fn number(name: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{name}: `{text}` is not a count"))
}

fn run() -> Result<(), String> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let [dir, template, ledgers, accounts, segment_kib, seed] = words.as_slice() else {
        return Err(format!("expected 6 arguments, got {}", words.len()));
    };
    let ledgers = number("LEDGERS", ledgers)?;
    let accounts = number("ACCOUNTS", accounts)?.max(1);
    if !(2..=8).contains(&ledgers) {
        return Err("LEDGERS must be 2..=8".into());
    }
    let urls = pg::shard_urls(template, ledgers as usize).map_err(|error| error.to_string())?;
    let stats: Vec<_> = urls
        .iter()
        .map(|_| Arc::new(PgLedgerStats::default()))
        .collect();
    let mut config = pg::engine_config(dir, &urls, &stats).map_err(|error| error.to_string())?;
    config.wal.segment_bytes = number("SEGMENT_KIB", segment_kib)? << 10;
    config.wal.record_bytes_max = (config.wal.segment_bytes / 2) as u32;
    config.batch_txns_max = BATCH_TXNS_MAX;
    let engine = Engine::open(config).map_err(|error| error.to_string())?;
    let mut rng = number("SEED", seed)?;
    // Ids start above every earlier incarnation's (the parent passes a fresh seed).
    let mut next_id = rng << 32;
    let mut outstanding: VecDeque<(u64, Ticket)> = VecDeque::new();
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    while Instant::now() < deadline {
        if outstanding.len() >= WINDOW_TICKETS {
            let (id, ticket) = outstanding.pop_front().expect("window is full");
            if !report(id, ticket.wait()) {
                break;
            }
        }
        next_id += 1;
        let from_ledger = below(&mut rng, ledgers);
        let to_ledger = (from_ledger + 1 + below(&mut rng, ledgers - 1)) % ledgers;
        let txn = Txn::transfer(
            TxnId(next_id),
            (from_ledger as u8, below(&mut rng, accounts)),
            (to_ledger as u8, below(&mut rng, accounts)),
            1 + below(&mut rng, AMOUNT_MAX),
        )
        .map_err(|error| error.to_string())?;
        match engine.submit(txn) {
            Ok(ticket) => outstanding.push_back((next_id, ticket)),
            Err(_busy) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    drop(engine.shutdown());
    Ok(())
}

/// splitmix64, uniform in `0..bound`.
fn below(state: &mut u64, bound: u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % bound
}

/// Writes one report line; false once stdout is closed.
fn report(id: u64, outcome: Outcome) -> bool {
    let word = match outcome {
        Outcome::Committed => "committed",
        Outcome::Aborted(_) => "aborted",
        Outcome::InDoubt => "in-doubt",
    };
    writeln!(std::io::stdout().lock(), "{id} {word}").is_ok()
}
