//! Shared by the PostgreSQL tests: the server they use, and fresh shards on it.
//!
//! The tests run against the server named by `TRICOMMIT_PG_URL` (a `postgres://` URL of
//! any database there, for a role that may create databases, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`); `.ci/pg.sh` starts one and sets it.
//! Without it each test prints that it was skipped and passes: the workspace's tests
//! must pass on a machine without PostgreSQL.

#![allow(dead_code)]

use std::sync::Arc;

use tricommit_engine::pg::{self, schema, PgLedgerStats};

/// The variable naming the test server.
pub const URL_VARIABLE: &str = "TRICOMMIT_PG_URL";

/// The test server's URL, or `None` (after saying so) when the tests are to be skipped.
pub fn server(test: &str) -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED {test}: set {URL_VARIABLE} to a PostgreSQL server to run it");
            None
        }
    }
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let scheme_end = base.find("://").map_or(0, |at| at + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    format!("{}/{database}{query}", &base[..host_end])
}

/// Creates (dropping any earlier copy) `count` databases `{prefix}_{i}` on the server
/// and initializes each with `accounts` accounts of `balance`; returns their URL template.
pub fn fresh_shards(
    server: &str,
    prefix: &str,
    count: usize,
    accounts: u64,
    balance: i64,
) -> String {
    let mut admin = schema::connect(server).expect("the test server accepts connections");
    for index in 0..count {
        let name = format!("{prefix}_{index}");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .expect("drop the test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        schema::init(&with_database(server, &name), accounts, balance, false)
            .expect("initialize the test shard");
    }
    with_database(server, &format!("{prefix}_{{ledger}}"))
}

/// One counter set per shard.
pub fn stats(count: usize) -> Vec<Arc<PgLedgerStats>> {
    (0..count)
        .map(|_| Arc::new(PgLedgerStats::default()))
        .collect()
}

/// The shards' URLs from a template.
pub fn urls(template: &str, count: usize) -> Vec<String> {
    pg::shard_urls(template, count).expect("the template names one database per ledger")
}

/// Opens and cleanly shuts the engine of `config` until the shards hold no reservation
/// (the termination protocol finished every transaction a failure left in doubt), at
/// most `passes_max` times; returns the passes made.
pub fn settle(config: &tricommit_engine::EngineConfig, urls: &[String], passes_max: u32) -> u32 {
    for pass in 0..passes_max {
        let report = pg::audit(urls).expect("read the shards");
        if report.pending_rows == 0 {
            return pass;
        }
        let engine = tricommit_engine::Engine::open(config.clone()).expect("reopen the engine");
        engine.shutdown().expect("clean shutdown after recovery");
    }
    passes_max
}

/// splitmix64, uniform in `0..bound`.
pub fn below(state: &mut u64, bound: u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % bound
}
