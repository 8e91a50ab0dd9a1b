//! PostgreSQL restarted (fast shutdown) under load: the PostgreSQL ledgers report the
//! lost connections, vote no or retry as they must, and nothing is applied twice.

mod pg_support;

use std::collections::VecDeque;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pg_support::below;
use tricommit_engine::pg;
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Engine, Outcome, Ticket, Txn};

/// A shell command that restarts the test server, e.g.
/// `su postgres -c 'pg_ctl -D DIR restart -m fast'` (`.ci/pg.sh` sets it).
const RESTART_VARIABLE: &str = "TRICOMMIT_PG_RESTART";
const LEDGERS: usize = 4;
const ACCOUNTS: u64 = 1_000;
const BALANCE: i64 = 1_000_000;
const WINDOW_TICKETS: usize = 1_024;
/// Load before the restart, and after it.
const BEFORE_MS: u64 = 1_500;
const AFTER_MS: u64 = 5_000;
const SETTLE_PASSES_MAX: u32 = 5;

#[test]
fn server_restart_under_load_applies_nothing_twice() {
    // Proves that a fast restart of PostgreSQL under load is seen (connection losses
    // counted), that load commits again afterwards, that every acknowledged commit is
    // posted exactly once (balances equal their postings), and that nothing is left
    // pending once termination finished.
    let test = "server_restart_under_load_applies_nothing_twice";
    let Some(server) = pg_support::server(test) else {
        return;
    };
    let Ok(restart) = std::env::var(RESTART_VARIABLE) else {
        eprintln!("SKIPPED {test}: set {RESTART_VARIABLE} to a command that restarts the server");
        return;
    };
    let template = pg_support::fresh_shards(&server, "tc_test_restart", LEDGERS, ACCOUNTS, BALANCE);
    let urls = pg_support::urls(&template, LEDGERS);
    let stats = pg_support::stats(LEDGERS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = pg::engine_config(dir.path(), &urls, &stats).expect("valid URLs");
    config.wal.segment_bytes = 4 << 20;
    config.wal.record_bytes_max = 2 << 20;
    let engine = Engine::open(config.clone()).expect("open the engine");
    let started = Instant::now();
    let mut restarted = false;
    let mut rng = 11u64;
    let mut id = 0u64;
    let mut outstanding: VecDeque<(u64, Instant, Ticket)> = VecDeque::new();
    let mut committed = Vec::new();
    let mut committed_after_restart = 0;
    let restart_done = std::cell::Cell::new(None::<Instant>);
    let mut settle = |(id, submitted, ticket): (u64, Instant, Ticket)| {
        if ticket.wait() == Outcome::Committed {
            committed.push(id as i64);
            if restart_done.get().is_some_and(|done| submitted > done) {
                committed_after_restart += 1;
            }
        }
    };
    while started.elapsed() < Duration::from_millis(BEFORE_MS + AFTER_MS) {
        if !restarted && started.elapsed() > Duration::from_millis(BEFORE_MS) {
            let status = Command::new("sh")
                .args(["-c", &restart])
                .status()
                .expect("run the restart command");
            assert!(status.success(), "the restart command failed: {status}");
            restarted = true;
            restart_done.set(Some(Instant::now()));
        }
        if outstanding.len() >= WINDOW_TICKETS {
            settle(outstanding.pop_front().expect("full window"));
        }
        id += 1;
        let from_ledger = below(&mut rng, LEDGERS as u64);
        let to_ledger = (from_ledger + 1 + below(&mut rng, LEDGERS as u64 - 1)) % LEDGERS as u64;
        let txn = Txn::transfer(
            TxnId(id),
            (from_ledger as u8, below(&mut rng, ACCOUNTS)),
            (to_ledger as u8, below(&mut rng, ACCOUNTS)),
            1 + below(&mut rng, 100),
        )
        .expect("a valid transfer");
        match engine.submit(txn) {
            Ok(ticket) => outstanding.push_back((id, Instant::now(), ticket)),
            Err(_busy) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    outstanding.into_iter().for_each(&mut settle);
    engine.shutdown().expect("clean shutdown");
    let losses: u64 = stats
        .iter()
        .map(|stats| stats.connection_losses.load(Ordering::Relaxed))
        .sum();
    assert!(losses > 0, "no ledger reported the lost connection");
    assert!(
        committed_after_restart > 0,
        "nothing committed after the restart"
    );
    let passes = pg_support::settle(&config, &urls, SETTLE_PASSES_MAX);
    assert!(passes < SETTLE_PASSES_MAX, "termination did not finish");
    let report = pg::audit(&urls).expect("read the shards");
    report
        .verdict(true)
        .expect("the bank invariant holds after the restart");
    for id in &committed {
        assert!(
            report.posted.contains(id),
            "acknowledged commit {id} is not posted"
        );
    }
}
