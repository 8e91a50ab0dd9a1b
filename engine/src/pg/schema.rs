//! The shard's schema: creating it (`tricommit pg init`) and checking it before use.

use postgres::{Client, NoTls};

use super::error::{describe, redact, PgError};

/// The version `tc_meta.schema_version` holds; bumped on any change to schema.sql.
/// Version 2 keeps one row per batch (arrays of legs) where version 1 kept one per leg.
pub const SCHEMA_VERSION: i32 = 2;
/// The most accounts one shard may be created with (a bound on `pg init`'s work).
pub const SHARD_ACCOUNTS_MAX: u64 = 100_000_000;
/// The largest initial balance `pg init` accepts (the same bound as the load tool's).
pub const INITIAL_BALANCE_MAX: i64 = 1_000_000_000_000;
/// How long a connection attempt may take before the shard counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

const SCHEMA_SQL: &str = include_str!("schema.sql");
/// Drops every version's objects, so that `--reset` also upgrades an older schema.
const DROP_SQL: &str = "
    DROP FUNCTION IF EXISTS tc_prune(bigint);
    DROP FUNCTION IF EXISTS tc_release_orphans(bigint[], bigint[], bigint);
    DROP FUNCTION IF EXISTS tc_release_orphans(bigint[], smallint);
    DROP FUNCTION IF EXISTS tc_reconcile(bigint, bigint[], smallint[]);
    DROP FUNCTION IF EXISTS tc_decide(bigint[], bigint[], boolean);
    DROP FUNCTION IF EXISTS tc_decide(bigint[], boolean);
    DROP FUNCTION IF EXISTS tc_prepare(bigint, bigint[], bigint[], bigint[], smallint[], bigint[]);
    DROP FUNCTION IF EXISTS tc_prepare(bigint, bigint[], bigint[], bigint[], smallint[]);
    DROP TABLE IF EXISTS tc_postings, tc_pending, tc_batches, tc_votes, tc_accounts, tc_meta;
";

/// What a shard's `tc_meta` says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Account ids are `0..accounts`.
    pub accounts: u64,
    /// The balance every account opened with.
    pub initial_balance: i64,
}

/// Parses `url` (a `postgres://` URL or a `key=value` string) with tricommit's
/// connection settings.
pub fn config(url: &str) -> Result<postgres::Config, PgError> {
    let mut config: postgres::Config = url.parse().map_err(|error| PgError::Url {
        url: redact(url),
        detail: describe(&error),
    })?;
    config.connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS));
    // A vote is only as durable as the commit behind it: never trust an asynchronous one.
    config.options("-c synchronous_commit=on");
    config.application_name("tricommit");
    Ok(config)
}

/// Opens one connection to `url`.
pub fn connect(url: &str) -> Result<Client, PgError> {
    config(url)?
        .connect(NoTls)
        .map_err(|error| PgError::Connect {
            url: redact(url),
            detail: describe(&error),
        })
}

fn query_error(url: &str) -> impl Fn(postgres::Error) -> PgError + '_ {
    move |error| PgError::Query {
        url: redact(url),
        detail: describe(&error),
    }
}

/// Creates the schema on the database at `url` with `accounts` accounts of
/// `initial_balance` each, in one transaction. A database that already holds it is
/// refused unless `reset`, which drops it first (every balance and posting is lost).
pub fn init(
    url: &str,
    accounts: u64,
    initial_balance: i64,
    reset: bool,
) -> Result<ShardInfo, PgError> {
    if !(1..=SHARD_ACCOUNTS_MAX).contains(&accounts) {
        return Err(PgError::AccountsOutOfRange {
            accounts,
            accounts_max: SHARD_ACCOUNTS_MAX,
        });
    }
    if !(0..=INITIAL_BALANCE_MAX).contains(&initial_balance) {
        return Err(PgError::BalanceOutOfRange {
            balance: initial_balance,
            balance_max: INITIAL_BALANCE_MAX,
        });
    }
    let mut client = connect(url)?;
    let error = query_error(url);
    let mut transaction = client.transaction().map_err(&error)?;
    if has_schema(&mut transaction).map_err(&error)? {
        if !reset {
            return Err(PgError::SchemaExists { url: redact(url) });
        }
        transaction.batch_execute(DROP_SQL).map_err(&error)?;
    }
    transaction.batch_execute(SCHEMA_SQL).map_err(&error)?;
    let accounts_sql = accounts as i64;
    transaction
        .execute(
            "INSERT INTO tc_meta (schema_version, accounts, initial_balance) VALUES ($1, $2, $3)",
            &[&SCHEMA_VERSION, &accounts_sql, &initial_balance],
        )
        .map_err(&error)?;
    transaction
        .execute(
            "INSERT INTO tc_accounts (id, opening, balance)
             SELECT g, $2::bigint, $2::bigint FROM generate_series(0::bigint, $1::bigint - 1) g",
            &[&accounts_sql, &initial_balance],
        )
        .map_err(&error)?;
    transaction.commit().map_err(&error)?;
    // Statistics now, not when autovacuum gets round to it: the first batches would
    // otherwise be planned for empty tables.
    client
        .batch_execute("ANALYZE tc_accounts, tc_batches, tc_pending, tc_postings")
        .map_err(&error)?;
    Ok(ShardInfo {
        accounts,
        initial_balance,
    })
}

fn has_schema(client: &mut impl postgres::GenericClient) -> Result<bool, postgres::Error> {
    let row = client.query_one("SELECT to_regclass('tc_meta') IS NOT NULL", &[])?;
    row.try_get(0)
}

/// Reads and checks the schema of an open connection to `url`.
pub fn inspect(client: &mut Client, url: &str) -> Result<ShardInfo, PgError> {
    let error = query_error(url);
    if !has_schema(client).map_err(&error)? {
        return Err(PgError::SchemaMissing { url: redact(url) });
    }
    let row = client
        .query_opt(
            "SELECT schema_version, accounts, initial_balance FROM tc_meta",
            &[],
        )
        .map_err(&error)?
        .ok_or_else(|| PgError::SchemaMissing { url: redact(url) })?;
    let found: i32 = row.try_get(0).map_err(&error)?;
    if found != SCHEMA_VERSION {
        return Err(PgError::SchemaVersion {
            url: redact(url),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    let accounts: i64 = row.try_get(1).map_err(&error)?;
    Ok(ShardInfo {
        accounts: accounts.max(0) as u64,
        initial_balance: row.try_get(2).map_err(&error)?,
    })
}

/// Connects to `url` and checks that it holds the schema with at least `accounts`
/// accounts (an account the load would name must exist).
pub fn check(url: &str, accounts: u64) -> Result<ShardInfo, PgError> {
    let mut client = connect(url)?;
    let info = inspect(&mut client, url)?;
    if accounts > info.accounts {
        return Err(PgError::AccountOutOfRange {
            url: redact(url),
            account: accounts - 1,
            accounts: info.accounts,
        });
    }
    Ok(info)
}
