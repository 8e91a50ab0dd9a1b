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
//! - `pg-ceiling`: PostgreSQL alone doing pg-batched's database work, without tricommit:
//!   one connection per shard (as `PgLedger` has), each in a loop of `tc_prepare` of a
//!   batch of `CEILING_BATCH_LEGS` legs and `tc_decide` committing it, the very
//!   statements `PgLedger` sends. No engine, no participant log, no round trips between
//!   sites: what the server can commit of this work on this machine, the most pg-batched
//!   could reach. Each transfer is a debit and a credit, both on the shard of its
//!   thread (so each shard's batch stays balanced); a leg costs the server the same
//!   wherever its other half lives.
//!
//! - `pg-floor`: the least database work any design of this schema needs, as a bound on
//!   every design: per transfer, the debit's reservation at PREPARE and both legs'
//!   postings at COMMIT, three row updates (set-based, one statement per phase per
//!   batch of `FLOOR_BATCH_TRANSFERS`, each its own synchronous commit), with nothing
//!   else: no votes, pending rows, postings rows or engine. `FLOOR_CONNECTIONS_PER_SHARD`
//!   connections per shard on disjoint accounts.
//!
//! Each starts from freshly initialized shards. All but pg-floor end with the bank
//! audit; pg-floor writes no postings, so it checks each shard's total and that nothing
//! is reserved, then re-initializes the shards.

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
pub const PG_CONFIG_NAMES: [&str; 4] = ["pg-batched", "pg-2pc", "pg-ceiling", "pg-floor"];
/// Legs per prepare statement in pg-ceiling: about what pg-batched's shards see per
/// batch under the harness's closed loop (docs/pg.md), and a power of two.
pub const CEILING_BATCH_LEGS: usize = 2_048;
/// Transfers per pg-floor batch (a reservation statement, then a posting statement).
pub const FLOOR_BATCH_TRANSFERS: usize = 1_024;
/// pg-floor's connections per shard: two per shard keep the two cores busy while a
/// connection waits for its commit's flush (pgbench, docs/pg.md: one per shard 69,903
/// transfers/s, two 80,317–86,091, four 68,022).
pub const FLOOR_CONNECTIONS_PER_SHARD: usize = 2;
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
        "pg-ceiling" => measure_ceiling(urls, window)?,
        "pg-floor" => {
            let measurement = measure_floor(urls, window)?;
            // It wrote balances without postings: leave the shards as a fresh init.
            reset(urls)?;
            return Ok(measurement);
        }
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

/// Runs pg-ceiling: one thread and connection per shard, each preparing and committing
/// batches of `CEILING_BATCH_LEGS` legs back to back, for a warm-up and then `window`.
fn measure_ceiling(urls: &[String], window: Duration) -> Result<Measurement, CompareError> {
    let workers: Vec<(&str, usize)> = urls
        .iter()
        .enumerate()
        .map(|(index, url)| (url.as_str(), index))
        .collect();
    drive_batches(&workers, window, CEILING_BATCH_LEGS / 2, ceiling_shard)
}

/// Runs pg-floor: `FLOOR_CONNECTIONS_PER_SHARD` threads and connections per shard, each
/// doing the least row work any design of the schema needs, back to back.
fn measure_floor(urls: &[String], window: Duration) -> Result<Measurement, CompareError> {
    let workers: Vec<(&str, usize)> = urls
        .iter()
        .enumerate()
        .flat_map(|(shard, url)| {
            (0..FLOOR_CONNECTIONS_PER_SHARD).map(move |connection| {
                (
                    url.as_str(),
                    shard * FLOOR_CONNECTIONS_PER_SHARD + connection,
                )
            })
        })
        .collect();
    let measurement = drive_batches(&workers, window, FLOOR_BATCH_TRANSFERS, floor_worker)?;
    for url in urls {
        check_floor_totals(url)?;
    }
    Ok(measurement)
}

/// A worker of [`drive_batches`]: loops over batches of transfers on `url` until
/// `shared.stop`, counting them in `shared.committed` and `batches`, and returns the
/// latency of the batches that started inside the window.
type BatchWorker = fn(&str, usize, &RunShared, &AtomicU64) -> Result<Histogram<u64>, CompareError>;

/// Runs one `worker` thread per `(url, index)` for a warm-up and then `window`, and
/// measures the transfers and batches they commit inside the window. Each batch is two
/// synchronous commits (prepare, then commit) of `batch_transfers` transfers.
fn drive_batches(
    workers: &[(&str, usize)],
    window: Duration,
    batch_transfers: usize,
    worker: BatchWorker,
) -> Result<Measurement, CompareError> {
    let warm_up = window.mul_f64(0.2).min(Duration::from_secs(1));
    let shared = RunShared {
        stop: AtomicBool::new(false),
        committed: AtomicU64::new(0),
        aborted: AtomicU64::new(0),
        window_start: Instant::now() + warm_up,
    };
    let batches = AtomicU64::new(0);
    let (results, committed, aborted, batches_in_window) = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter()
            .map(|&(url, index)| {
                let (shared, batches) = (&shared, &batches);
                scope.spawn(move || worker(url, index, shared, batches))
            })
            .collect();
        std::thread::sleep(warm_up);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let before = (
            load(&shared.committed),
            load(&shared.aborted),
            load(&batches),
        );
        std::thread::sleep(window);
        let after = (
            load(&shared.committed),
            load(&shared.aborted),
            load(&batches),
        );
        shared.stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err(CompareError::ClientPanicked)))
            .collect();
        (
            results,
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
        )
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
        // The time from a batch's prepare to its commit, as a transfer in it sees it.
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        batch_txns_avg: batch_transfers as f64,
        // Two synchronous commits per batch (prepare, commit).
        syncs_per_s: (batches_in_window * 2) as f64 / window_s,
    })
}

/// One pg-ceiling shard: batches of `CEILING_BATCH_LEGS / 2` transfers, each a debit
/// and a credit on this shard, prepared and committed by `PgLedger`'s statements.
fn ceiling_shard(
    url: &str,
    index: usize,
    shared: &RunShared,
    batches: &AtomicU64,
) -> Result<Histogram<u64>, CompareError> {
    let error = client_error(url);
    let mut client = schema::connect(url).map_err(pg_error)?;
    let prepare = client
        .prepare("SELECT tc_prepare($1, $2, $3, $4, $5, $6)")
        .map_err(&error)?;
    let decide = client
        .prepare("SELECT tc_decide($1, $2, $3)")
        .map_err(&error)?;
    let mut latency = histogram();
    let mut rng = 0xD1B5_4A32_D192_ED03 ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let transfers = CEILING_BATCH_LEGS / 2;
    let mut txns = vec![0i64; CEILING_BATCH_LEGS];
    let mut accounts = vec![0i64; CEILING_BATCH_LEGS];
    let mut amounts = vec![0i64; CEILING_BATCH_LEGS];
    let kinds: Vec<i16> = (0..CEILING_BATCH_LEGS)
        .map(|leg| 1 + (leg % 2) as i16)
        .collect();
    // Amounts are far below the balances, so no leg waits on an earlier one.
    let prior = vec![0i64; CEILING_BATCH_LEGS];
    let mut seq: i64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        seq += 1;
        for transfer in 0..transfers {
            // Ids above the other configurations', unique per shard and batch.
            let id = ((3u64 << 61) | ((index as u64) << 48) | (seq as u64) << 16) as i64
                + transfer as i64;
            let amount = 1 + below(&mut rng, AMOUNT_MAX) as i64;
            for leg in [2 * transfer, 2 * transfer + 1] {
                txns[leg] = id;
                accounts[leg] = below(&mut rng, ACCOUNTS) as i64;
                amounts[leg] = amount;
            }
        }
        let started = Instant::now();
        let votes: Vec<i16> = client
            .query_one(
                &prepare,
                &[&seq, &txns, &accounts, &amounts, &kinds, &prior],
            )
            .and_then(|row| row.try_get(0))
            .map_err(&error)?;
        if votes.iter().any(|&vote| vote != 0) {
            return Err(CompareError::Pg(format!(
                "{}: pg-ceiling expected every leg to vote yes",
                pg::redact(url)
            )));
        }
        let batch_of = vec![seq; CEILING_BATCH_LEGS];
        client
            .execute(&decide, &[&batch_of, &txns, &true])
            .map_err(&error)?;
        shared.batch_committed(batches, transfers, started, &mut latency);
    }
    Ok(latency)
}

/// One pg-floor connection: batches of `FLOOR_BATCH_TRANSFERS` transfers, each a debit
/// and a credit on this shard, both among the accounts of this connection alone
/// (`account % FLOOR_CONNECTIONS_PER_SHARD == connection`, so the shard's connections
/// never wait on each other's row locks). A batch is two statements, each its own
/// synchronously committed transaction: the reservation of every debit, then the
/// posting of every leg. Three row updates per transfer, and nothing else: no votes, no
/// pending or postings rows, no engine.
fn floor_worker(
    url: &str,
    index: usize,
    shared: &RunShared,
    batches: &AtomicU64,
) -> Result<Histogram<u64>, CompareError> {
    let error = client_error(url);
    let mut client = schema::connect(url).map_err(pg_error)?;
    let reserve = client
        .prepare(
            "UPDATE tc_accounts a SET debits_pending = a.debits_pending + s.debits
               FROM (SELECT account, sum(amount)::bigint AS debits
                       FROM unnest($1::bigint[], $2::bigint[]) AS l(account, amount)
                      GROUP BY account) s
              WHERE a.id = s.account",
        )
        .map_err(&error)?;
    let post = client
        .prepare(
            "UPDATE tc_accounts a SET balance = a.balance + s.net,
                                      debits_pending = a.debits_pending - s.debits
               FROM (SELECT account, sum(delta)::bigint AS net,
                            sum(CASE WHEN delta < 0 THEN -delta ELSE 0 END)::bigint AS debits
                       FROM unnest($1::bigint[], $2::bigint[]) AS l(account, delta)
                      GROUP BY account) s
              WHERE a.id = s.account",
        )
        .map_err(&error)?;
    let connections = FLOOR_CONNECTIONS_PER_SHARD as u64;
    let connection = (index % FLOOR_CONNECTIONS_PER_SHARD) as u64;
    let mut latency = histogram();
    let mut rng = 0x5851_F42D_4C95_7F2D ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut debit_accounts = vec![0i64; FLOOR_BATCH_TRANSFERS];
    let mut amounts = vec![0i64; FLOOR_BATCH_TRANSFERS];
    let mut leg_accounts = vec![0i64; 2 * FLOOR_BATCH_TRANSFERS];
    let mut deltas = vec![0i64; 2 * FLOOR_BATCH_TRANSFERS];
    while !shared.stop.load(Ordering::Relaxed) {
        for transfer in 0..FLOOR_BATCH_TRANSFERS {
            let debit = connection + connections * below(&mut rng, ACCOUNTS / connections);
            let credit = connection + connections * below(&mut rng, ACCOUNTS / connections);
            let amount = 1 + below(&mut rng, AMOUNT_MAX) as i64;
            debit_accounts[transfer] = debit as i64;
            amounts[transfer] = amount;
            leg_accounts[2 * transfer] = debit as i64;
            deltas[2 * transfer] = -amount;
            leg_accounts[2 * transfer + 1] = credit as i64;
            deltas[2 * transfer + 1] = amount;
        }
        let started = Instant::now();
        client
            .execute(&reserve, &[&debit_accounts, &amounts])
            .map_err(&error)?;
        client
            .execute(&post, &[&leg_accounts, &deltas])
            .map_err(&error)?;
        shared.batch_committed(batches, FLOOR_BATCH_TRANSFERS, started, &mut latency);
    }
    Ok(latency)
}

/// After pg-floor: the shard's total is what it started with and nothing is reserved
/// (pg-floor writes no postings, so the bank audit does not apply).
fn check_floor_totals(url: &str) -> Result<(), CompareError> {
    let mut client = schema::connect(url).map_err(pg_error)?;
    let row = client
        .query_one(
            "SELECT sum(balance)::bigint, sum(debits_pending)::bigint, count(*) FROM tc_accounts",
            &[],
        )
        .map_err(client_error(url))?;
    let (total, pending, accounts): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let expected = accounts * BALANCE_INITIAL;
    if total != expected || pending != 0 {
        return Err(CompareError::Pg(format!(
            "{}: pg-floor left a total of {total} (expected {expected}) and {pending} reserved",
            pg::redact(url)
        )));
    }
    Ok(())
}

/// What the threads of one pg-2pc, pg-ceiling or pg-floor run share.
struct RunShared {
    stop: AtomicBool,
    committed: AtomicU64,
    aborted: AtomicU64,
    window_start: Instant,
}

impl RunShared {
    /// A batch of `transfers` that started at `started` has committed: counts it, and
    /// records its latency if it started inside the window.
    fn batch_committed(
        &self,
        batches: &AtomicU64,
        transfers: usize,
        started: Instant,
        latency: &mut Histogram<u64>,
    ) {
        self.committed
            .fetch_add(transfers as u64, Ordering::Relaxed);
        batches.fetch_add(1, Ordering::Relaxed);
        if started >= self.window_start {
            latency.saturating_record((started.elapsed().as_micros() as u64).max(1));
        }
    }
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
    let shared = RunShared {
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
    shared: &RunShared,
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
             INSERT INTO tc_postings VALUES (0, ARRAY[{txn}::bigint], ARRAY[{account}::bigint], ARRAY[({delta})::bigint]); \
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
