//! PostgreSQL shards as participants (cargo feature `pg`; docs/pg.md).
//!
//! [`PgLedger`] is a [`ResourceManager`](crate::proto::ResourceManager) whose accounts,
//! reservations and postings live in one PostgreSQL database: one shard, one
//! participant. PREPARE of a batch is one ordinary PostgreSQL transaction (conditional
//! reservations for every leg, every vote recorded), COMMIT and ABORT one transaction
//! each. PostgreSQL's own `PREPARE TRANSACTION` is not used: the reservation rows *are*
//! the prepared state, and the protocol, not the database, decides (docs/pg.md).

mod audit;
mod error;
mod ledger;
pub mod schema;

pub use audit::{audit, BankAudit};
pub use error::{describe, redact, PgError};
pub use ledger::{
    PgLedger, PgLedgerStats, ATTEMPTS_MAX, BATCH_VOTES_KEPT, OWED_CALLS_MAX, PRUNE_EVERY_BATCHES,
    RETRY_DELAY_MS_FIRST,
};
pub use schema::{ShardInfo, SCHEMA_VERSION};

/// How long the coordinator waits for a shard's votes (the floor of its adaptive
/// wait), in µs: a batch's commit in PostgreSQL takes a round trip and the server's own
/// fsync, far longer than a local log append.
pub const PG_VOTE_TIMEOUT_US: u64 = 5_000_000;

/// An engine configuration whose participants are the shards at `urls` (ledger `i`
/// is `urls[i]`, its log directory `pg-ledger-i`), each counting into `stats[i]`, with
/// the engine's defaults otherwise and the vote timeouts raised for a database.
pub fn engine_config(
    data_dir: impl Into<std::path::PathBuf>,
    urls: &[String],
    stats: &[std::sync::Arc<PgLedgerStats>],
) -> Result<crate::EngineConfig, PgError> {
    // The ledger genesis below is replaced: only the count and the defaults matter.
    let mut config = crate::EngineConfig::ledgers(data_dir, urls.len(), 1, 0);
    config.participants = urls
        .iter()
        .zip(stats)
        .enumerate()
        .map(|(index, (url, stats))| {
            PgLedger::spec(
                &format!("pg-ledger-{index}"),
                url,
                std::sync::Arc::clone(stats),
            )
        })
        .collect::<Result<_, _>>()?;
    config.timeouts.vote_us = config.timeouts.vote_us.max(PG_VOTE_TIMEOUT_US);
    config.timeouts.vote_min_us = config.timeouts.vote_min_us.max(PG_VOTE_TIMEOUT_US);
    config.timeouts.vote_max_us = config.timeouts.vote_max_us.max(2 * PG_VOTE_TIMEOUT_US);
    Ok(config)
}

/// The placeholder a URL template holds for the ledger's index.
pub const LEDGER_PLACEHOLDER: &str = "{ledger}";

/// The URL of each of `ledgers` shards: `template` with `{ledger}` replaced by the
/// ledger's index (0-based). A template without the placeholder is refused for more
/// than one ledger, since the ledgers would then share one database's accounts.
pub fn shard_urls(template: &str, ledgers: usize) -> Result<Vec<String>, PgError> {
    if ledgers > 1 && !template.contains(LEDGER_PLACEHOLDER) {
        return Err(PgError::TemplatePlaceholder {
            template: redact(template),
            ledgers,
        });
    }
    Ok((0..ledgers)
        .map(|index| template.replace(LEDGER_PLACEHOLDER, &index.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_one_database_per_ledger() {
        // Proves that `{ledger}` expands per ledger and that a shared database is refused.
        assert_eq!(
            shard_urls("postgres://h/db{ledger}", 2).unwrap(),
            ["postgres://h/db0", "postgres://h/db1"]
        );
        assert_eq!(
            shard_urls("postgres://h/db", 1).unwrap(),
            ["postgres://h/db"]
        );
        assert!(matches!(
            shard_urls("postgres://h/db", 4),
            Err(PgError::TemplatePlaceholder { ledgers: 4, .. })
        ));
    }
}
