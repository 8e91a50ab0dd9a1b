//! The PostgreSQL comparison (`compare --pg URL_TEMPLATE --configs pg-batched,pg-2pc`):
//! the same four shards, the same transfers, two ways of committing them.
//!
//! - `pg-batched`: tricommit's engine with a `PgLedger` per shard, so each shard commits
//!   one PostgreSQL transaction per *batch* per phase.
//! - `pg-2pc`: per-transaction two-phase commit as dtm, Seata or Narayana drive it:
//!   for every transfer, `BEGIN; UPDATE …; INSERT …; PREPARE TRANSACTION 'gid'` on each
//!   shard it touches (in shard order, so two transfers never wait on each other in a
//!   cycle), then `COMMIT PREPARED 'gid'` on each. Two synchronous commits per shard
//!   per transfer. Needs `max_prepared_transactions` ≥ the client count on the server.
//!
//! Both start from freshly initialized shards and both end with the bank audit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use postgres::Client;
use tricommit_engine::pg::{self, schema, PgLedger, PgLedgerStats, PG_VOTE_TIMEOUT_US};
use tricommit_engine::EngineConfig;

use crate::{
    load_shape, measure_checked, CompareError, Measurement, ACCOUNTS, AMOUNT_MAX, BALANCE_INITIAL,
    LEDGERS,
};

/// The PostgreSQL configurations, in table order.
pub const PG_CONFIG_NAMES: [&str; 2] = ["pg-batched", "pg-2pc"];
/// Client threads of the per-transaction 2PC baseline, each with one connection per
/// shard: per-transaction 2PC only goes faster with more concurrent transactions, so it
/// gets many more than the engine's two client threads.
pub const TWO_PC_CLIENTS_DEFAULT: usize = 16;
/// The most baseline clients (each holds one connection per shard).
pub const TWO_PC_CLIENTS_MAX: usize = 64;
const LATENCY_US_MAX: u64 = 600_000_000;

fn pg_error(error: pg::PgError) -> CompareError {
    CompareError::Pg(error.to_string())
}

fn client_error(url: &str) -> impl Fn(postgres::Error) -> CompareError + '_ {
    move |error| CompareError::Pg(format!("{}: {}", pg::redact(url), pg::describe(&error)))
}

/// The shards' URLs, each checked reachable (bad input fails before any run).
pub fn shard_urls(template: &str) -> Result<Vec<String>, CompareError> {
    let urls = pg::shard_urls(template, LEDGERS).map_err(pg_error)?;
    for url in &urls {
        schema::connect(url).map_err(pg_error)?;
    }
    Ok(urls)
}

/// The prefix of the baseline's prepared-transaction ids.
const TWO_PC_GID_PREFIX: &str = "tc2pc-";

/// Drops and recreates every shard's schema with the workload's accounts, after
/// rolling back any prepared transaction an interrupted baseline left behind (it would
/// hold its row locks, and the schema, forever).
fn reset(urls: &[String]) -> Result<(), CompareError> {
    for url in urls {
        let mut client = schema::connect(url).map_err(pg_error)?;
        let leftovers = client
            .query(
                "SELECT gid FROM pg_prepared_xacts
                  WHERE database = current_database() AND starts_with(gid, $1)",
                &[&TWO_PC_GID_PREFIX],
            )
            .map_err(client_error(url))?;
        for row in leftovers {
            let gid: String = row.get(0);
            client
                .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                .map_err(client_error(url))?;
        }
        schema::init(url, ACCOUNTS, BALANCE_INITIAL, true).map_err(pg_error)?;
    }
    Ok(())
}

/// The bank audit after a run: totals, postings, atomicity, nothing pending.
fn audit(urls: &[String]) -> Result<(), CompareError> {
    let report = pg::audit(urls).map_err(pg_error)?;
    report
        .verdict(true)
        .map_err(|problems| CompareError::Pg(format!("bank audit failed: {problems}")))
}

/// Measures one PostgreSQL configuration on freshly reset shards.
pub fn measure(
    name: &str,
    urls: &[String],
    data_dir: &std::path::Path,
    window: Duration,
    two_pc_clients: usize,
) -> Result<Measurement, CompareError> {
    reset(urls)?;
    let measurement = match name {
        "pg-batched" => measure_batched(urls, data_dir, window)?,
        _ => measure_two_pc(urls, window, two_pc_clients)?,
    };
    audit(urls)?;
    Ok(measurement)
}

fn measure_batched(
    urls: &[String],
    data_dir: &std::path::Path,
    window: Duration,
) -> Result<Measurement, CompareError> {
    let mut config = EngineConfig::ledgers(data_dir, LEDGERS, ACCOUNTS, BALANCE_INITIAL);
    config.participants = urls
        .iter()
        .enumerate()
        .map(|(index, url)| {
            let stats = Arc::new(PgLedgerStats::default());
            PgLedger::spec(&format!("pg-ledger-{index}"), url, stats)
        })
        .collect::<Result<_, _>>()
        .map_err(pg_error)?;
    config.timeouts.vote_us = PG_VOTE_TIMEOUT_US;
    config.timeouts.vote_min_us = PG_VOTE_TIMEOUT_US;
    config.timeouts.vote_max_us = 2 * PG_VOTE_TIMEOUT_US;
    let shape = load_shape(&config);
    measure_checked(config, shape, window, |_| Ok(()))
}

/// What the baseline's clients share.
struct TwoPcShared {
    stop: AtomicBool,
    committed: AtomicU64,
    aborted: AtomicU64,
    window_start: Instant,
}

/// Runs the per-transaction 2PC baseline: `clients` threads, each with one connection
/// per shard, closed loop, for a warm-up and then `window`.
fn measure_two_pc(
    urls: &[String],
    window: Duration,
    clients: usize,
) -> Result<Measurement, CompareError> {
    check_prepared_transactions(&urls[0], clients)?;
    let warm_up = window.mul_f64(0.2).min(Duration::from_secs(1));
    let shared = TwoPcShared {
        stop: AtomicBool::new(false),
        committed: AtomicU64::new(0),
        aborted: AtomicU64::new(0),
        window_start: Instant::now() + warm_up,
    };
    let (results, committed, aborted) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|index| {
                let shared = &shared;
                scope.spawn(move || two_pc_client(urls, index, shared))
            })
            .collect();
        std::thread::sleep(warm_up);
        let before = (
            shared.committed.load(Ordering::Relaxed),
            shared.aborted.load(Ordering::Relaxed),
        );
        std::thread::sleep(window);
        let after = (
            shared.committed.load(Ordering::Relaxed),
            shared.aborted.load(Ordering::Relaxed),
        );
        shared.stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err(CompareError::ClientPanicked)))
            .collect();
        (results, after.0 - before.0, after.1 - before.1)
    });
    let mut latency = histogram();
    for result in results {
        latency
            .add(&result?)
            .expect("histograms share their bounds");
    }
    let window_s = window.as_secs_f64();
    Ok(Measurement {
        committed,
        aborted,
        window_s,
        committed_per_s: committed as f64 / window_s,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        batch_txns_avg: 1.0,
        // Two synchronous commits per shard touched (PREPARE and COMMIT PREPARED).
        syncs_per_s: (committed * 4) as f64 / window_s,
    })
}

fn check_prepared_transactions(url: &str, clients: usize) -> Result<(), CompareError> {
    let mut client = schema::connect(url).map_err(pg_error)?;
    let row = client
        .query_one("SHOW max_prepared_transactions", &[])
        .map_err(client_error(url))?;
    let allowed: i64 = row.get::<_, String>(0).parse().unwrap_or(0);
    if allowed < clients as i64 {
        return Err(CompareError::Pg(format!(
            "{}: max_prepared_transactions is {allowed}; pg-2pc needs at least {clients} \
             (set it in postgresql.conf and restart the server)",
            pg::redact(url)
        )));
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds are valid")
}

/// One baseline client: transfers one at a time, each committed by 2PC over its shards.
fn two_pc_client(
    urls: &[String],
    index: usize,
    shared: &TwoPcShared,
) -> Result<Histogram<u64>, CompareError> {
    let mut connections = Vec::with_capacity(urls.len());
    for url in urls {
        connections.push(schema::connect(url).map_err(pg_error)?);
    }
    let mut latency = histogram();
    let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut sequence: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        sequence += 1;
        // Ids far above the engine's, so that the two configurations never share one.
        let id = (1u64 << 62) | ((index as u64) << 40) | sequence;
        let started = Instant::now();
        let committed = two_pc_transfer(urls, &mut connections, &mut rng, id)?;
        let counter = match committed {
            true => &shared.committed,
            false => &shared.aborted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if started >= shared.window_start {
            let elapsed_us = started.elapsed().as_micros() as u64;
            latency.saturating_record(elapsed_us.max(1));
        }
    }
    Ok(latency)
}

/// splitmix64, uniform in `0..bound`.
fn below(state: &mut u64, bound: u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (((z ^ (z >> 31)) as u128 * bound as u128) >> 64) as u64
}

/// One transfer by per-transaction 2PC; `Ok(false)` when it aborted (a debit the
/// account could not cover: the CHECK constraint fails it).
fn two_pc_transfer(
    urls: &[String],
    connections: &mut [Client],
    rng: &mut u64,
    id: u64,
) -> Result<bool, CompareError> {
    let ledgers = LEDGERS as u64;
    let from_ledger = below(rng, ledgers);
    let to_ledger = (from_ledger + 1 + below(rng, ledgers - 1)) % ledgers;
    let from_account = below(rng, ACCOUNTS);
    let to_account = below(rng, ACCOUNTS);
    let amount = 1 + below(rng, AMOUNT_MAX);
    let mut legs = [
        (from_ledger as usize, from_account, -(amount as i64)),
        (to_ledger as usize, to_account, amount as i64),
    ];
    legs.sort_unstable_by_key(|leg| leg.0);
    // A prepared transaction's id is unique over the whole server, and the shards may
    // be databases of one server: each shard's part gets its own.
    let gid_of = |shard: usize| format!("{TWO_PC_GID_PREFIX}{id}-{shard}");
    for (prepared, &(shard, account, delta)) in legs.iter().enumerate() {
        let gid = gid_of(shard);
        let sql = format!(
            "BEGIN; UPDATE tc_accounts SET balance = balance + ({delta}) WHERE id = {account}; \
             INSERT INTO tc_postings VALUES ({txn}, {account}, {delta}); \
             PREPARE TRANSACTION '{gid}'",
            txn = id as i64
        );
        if connections[shard].batch_execute(&sql).is_err() {
            // The failed statement left the transaction aborted: end it, and roll back
            // what the shards before this one prepared.
            connections[shard]
                .batch_execute("ROLLBACK")
                .map_err(client_error(&urls[shard]))?;
            for &(earlier, _, _) in &legs[..prepared] {
                connections[earlier]
                    .batch_execute(&format!("ROLLBACK PREPARED '{}'", gid_of(earlier)))
                    .map_err(client_error(&urls[earlier]))?;
            }
            return Ok(false);
        }
    }
    for &(shard, _, _) in &legs {
        connections[shard]
            .batch_execute(&format!("COMMIT PREPARED '{}'", gid_of(shard)))
            .map_err(client_error(&urls[shard]))?;
    }
    Ok(true)
}
