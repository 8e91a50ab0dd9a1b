//! `tricommit-load --pg URL_TEMPLATE`: the same load on PostgreSQL shards (docs/pg.md).
//!
//! Ledger `i` is the database at the template with `{ledger}` replaced by `i`. The
//! bank check and the durability check read the databases, not the engine.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tricommit_engine::pg::{self, schema, PgError, PgLedger, PgLedgerStats, PG_VOTE_TIMEOUT_US};
use tricommit_engine::EngineConfig;

use crate::{driver, summary, Args, LoadError};

/// The shards of one run, the total they held before it, and each ledger's counters.
pub struct PgShards {
    urls: Vec<String>,
    total_before: i128,
    stats: Vec<Arc<PgLedgerStats>>,
}

impl PgShards {
    /// Checks every shard (reachable, schema present, enough accounts, nothing left
    /// pending by an earlier run) and makes `config`'s participants PostgreSQL ledgers.
    pub fn setup(
        template: &str,
        args: &Args,
        config: &mut EngineConfig,
    ) -> Result<PgShards, LoadError> {
        let urls = pg::shard_urls(template, args.ledgers as usize)?;
        for url in &urls {
            schema::check(url, args.accounts)?;
        }
        let before = pg::audit(&urls)?;
        before.verdict(true).map_err(|problems| {
            LoadError::PgState(format!(
                "the shards are not in a clean state before the run ({problems}); \
                 reset them with `tricommit pg init --reset`"
            ))
        })?;
        let mut stats = Vec::new();
        let mut participants = Vec::new();
        for (index, url) in urls.iter().enumerate() {
            let ledger_stats = Arc::new(PgLedgerStats::default());
            participants.push(PgLedger::spec(
                &format!("pg-ledger-{index}"),
                url,
                Arc::clone(&ledger_stats),
            )?);
            stats.push(ledger_stats);
        }
        config.participants = participants;
        // A shard's commit of a batch takes a database round trip and its fsync, far
        // slower than a local log append: wait longer for votes before aborting.
        config.timeouts.vote_us = config.timeouts.vote_us.max(PG_VOTE_TIMEOUT_US);
        config.timeouts.vote_min_us = config.timeouts.vote_min_us.max(PG_VOTE_TIMEOUT_US);
        config.timeouts.vote_max_us = config.timeouts.vote_max_us.max(2 * PG_VOTE_TIMEOUT_US);
        Ok(PgShards {
            urls,
            total_before: before.total,
            stats,
        })
    }

    /// The bank invariant, read from the databases after a clean shutdown: totals
    /// unchanged, balances equal to their postings, postings atomic across shards,
    /// no reservation left.
    pub fn check_bank(&self) -> Result<(), String> {
        let report = pg::audit(&self.urls).map_err(|error| error.to_string())?;
        report.verdict(true)?;
        if report.total != self.total_before {
            return Err(format!(
                "total balance is {}, it was {} before the run",
                report.total, self.total_before
            ));
        }
        Ok(())
    }

    /// Every acknowledged commit against the postings (failure scenario).
    pub fn check_durability(
        &self,
        clients: &[driver::ClientResult],
    ) -> Result<summary::Durability, LoadError> {
        let report = pg::audit(&self.urls)?;
        let mut durability = summary::Durability {
            lost: 0,
            undecided: 0,
            compacted: 0,
        };
        for &id in clients.iter().flat_map(|client| &client.committed_ids) {
            let id = id as i64;
            if report.posted.contains(&id) {
                continue;
            }
            // A reservation still held is decided by the next open; without one, gone.
            match report.pending.contains(&id) {
                true => durability.undecided += 1,
                false => durability.lost += 1,
            }
        }
        Ok(durability)
    }

    /// The ledgers' counters summed, for the summary's scenario figures.
    pub fn figures(&self) -> serde_json::Value {
        let sum = |field: fn(&PgLedgerStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.stats
                .iter()
                .map(|stats| field(stats).load(Ordering::Relaxed))
                .sum()
        };
        serde_json::json!({
            "shards": self.urls.iter().map(|url| pg::redact(url)).collect::<Vec<_>>(),
            "statements": sum(|stats| &stats.statements),
            "batches_prepared": sum(|stats| &stats.batches_prepared),
            "legs_prepared": sum(|stats| &stats.legs_prepared),
            "batches_pruned": sum(|stats| &stats.batches_pruned),
            "connects": sum(|stats| &stats.connects),
            "connection_losses": sum(|stats| &stats.connection_losses),
            "unavailable_votes": sum(|stats| &stats.unavailable_votes),
            "orphans_released": sum(|stats| &stats.orphans_released),
            "replay_missing": sum(|stats| &stats.replay_missing),
        })
    }
}

impl From<PgError> for LoadError {
    fn from(error: PgError) -> LoadError {
        LoadError::Pg(error.to_string())
    }
}
