//! The bank check on PostgreSQL shards, read from the databases themselves.

use std::collections::{HashMap, HashSet};

use super::error::{describe, redact, PgError};
use super::schema;

/// What the shards of one bank hold, and every way they break the bank invariant.
#[derive(Debug, Default)]
pub struct BankAudit {
    /// The sum of all balances over all shards.
    pub total: i128,
    /// The sum of all opening balances (what `total` must equal).
    pub opening_total: i128,
    /// Reservations still held, one per leg (0 once every transaction is decided).
    pub pending_rows: u64,
    /// Posted legs over all shards.
    pub postings: u64,
    /// Every transaction id with a posting on some shard.
    pub posted: HashSet<i64>,
    /// Every transaction id still holding a reservation on some shard.
    pub pending: HashSet<i64>,
    /// Broken invariants, one sentence each.
    pub violations: Vec<String>,
}

impl BankAudit {
    /// The verdict: `Ok` when nothing is broken and, if `settled`, nothing is pending.
    pub fn verdict(&self, settled: bool) -> Result<(), String> {
        let mut problems = self.violations.clone();
        if settled && self.pending_rows > 0 {
            problems.push(format!(
                "{} reservation rows left pending",
                self.pending_rows
            ));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }
}

/// Reads every shard and checks: the total equals the opening total; no balance minus
/// its held debits is negative; every balance equals its opening balance plus its
/// postings (recomputed from the audit trail); every account's held sums equal its
/// reservation rows; and each transaction's postings over all shards sum to zero (a
/// transfer posted on some of its ledgers but not all breaks that).
pub fn audit(urls: &[String]) -> Result<BankAudit, PgError> {
    let mut report = BankAudit::default();
    let mut per_txn: HashMap<i64, i128> = HashMap::new();
    for url in urls {
        audit_shard(url, &mut report, &mut per_txn)?;
    }
    let unbalanced = per_txn.values().filter(|&&sum| sum != 0).count();
    if unbalanced > 0 {
        report.violations.push(format!(
            "{unbalanced} transactions are posted on some of their ledgers but not all"
        ));
    }
    if report.total != report.opening_total {
        report.violations.push(format!(
            "total balance is {}, expected {}",
            report.total, report.opening_total
        ));
    }
    report.posted = per_txn.into_keys().collect();
    Ok(report)
}

fn audit_shard(
    url: &str,
    report: &mut BankAudit,
    per_txn: &mut HashMap<i64, i128>,
) -> Result<(), PgError> {
    let mut client = schema::connect(url)?;
    schema::inspect(&mut client, url)?;
    let error = |error: postgres::Error| PgError::Query {
        url: redact(url),
        detail: describe(&error),
    };
    // Sums are numeric in SQL and text here, so no width limits them.
    let row = client
        .query_one(
            "SELECT coalesce(sum(balance), 0)::text, coalesce(sum(opening), 0)::text,
                    count(*) FILTER (WHERE balance - debits_pending < 0),
                    (SELECT coalesce(sum(cardinality(txns)), 0)::bigint FROM tc_pending),
                    (SELECT coalesce(sum(cardinality(txns)), 0)::bigint FROM tc_postings)
               FROM tc_accounts",
            &[],
        )
        .map_err(error)?;
    let number = |text: String| text.parse::<i128>().unwrap_or(i128::MAX);
    report.total += number(row.get(0));
    report.opening_total += number(row.get(1));
    let overdrawn: i64 = row.get(2);
    report.pending_rows += row.get::<_, i64>(3) as u64;
    report.postings += row.get::<_, i64>(4) as u64;
    if overdrawn > 0 {
        report
            .violations
            .push(format!("{}: {overdrawn} accounts overdrawn", redact(url)));
    }
    let mismatched: i64 = client
        .query_one(
            "SELECT count(*) FROM tc_accounts a
               LEFT JOIN (SELECT l.account_id, sum(l.delta) AS net
                            FROM tc_postings, unnest(accounts, deltas) AS l(account_id, delta)
                           GROUP BY l.account_id) p ON p.account_id = a.id
               LEFT JOIN (SELECT l.account_id,
                                 sum(CASE WHEN l.delta < 0 THEN -l.delta ELSE 0 END) AS debits,
                                 sum(CASE WHEN l.delta > 0 THEN l.delta ELSE 0 END) AS credits
                            FROM tc_pending, unnest(accounts, deltas) AS l(account_id, delta)
                           GROUP BY l.account_id) r ON r.account_id = a.id
              WHERE a.balance <> a.opening + coalesce(p.net, 0)
                 OR a.debits_pending <> coalesce(r.debits, 0)
                 OR a.credits_pending <> coalesce(r.credits, 0)",
            &[],
        )
        .map_err(error)?
        .get(0);
    if mismatched > 0 {
        report.violations.push(format!(
            "{}: {mismatched} accounts disagree with their postings or reservations",
            redact(url)
        ));
    }
    for row in client
        .query("SELECT unnest(txns) FROM tc_pending", &[])
        .map_err(error)?
    {
        report.pending.insert(row.get(0));
    }
    for row in client
        .query("SELECT unnest(txns), unnest(deltas) FROM tc_postings", &[])
        .map_err(error)?
    {
        *per_txn.entry(row.get(0)).or_default() += i128::from(row.get::<_, i64>(1));
    }
    Ok(())
}
