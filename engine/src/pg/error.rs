//! `PgError`: what can go wrong talking to a PostgreSQL shard, as one readable line.

/// Why a PostgreSQL shard could not be set up, opened or read.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL URL {url}: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url} has no tricommit schema; create it with `tricommit pg init --url URL`")]
    SchemaMissing { url: String },
    #[error(
        "{url} holds tricommit schema version {found}; this build reads version {expected}: \
         recreate it with `tricommit pg init --reset` (drops every balance and posting)"
    )]
    SchemaVersion {
        url: String,
        found: i32,
        expected: i32,
    },
    #[error("{url} already holds a tricommit schema; give --reset to drop it and start over")]
    SchemaExists { url: String },
    #[error("--accounts {accounts} is out of range 1..={accounts_max}")]
    AccountsOutOfRange { accounts: u64, accounts_max: u64 },
    #[error("--initial-balance {balance} is out of range 0..={balance_max}")]
    BalanceOutOfRange { balance: i64, balance_max: i64 },
    #[error("account {account} is out of range: {url} has accounts 0..{accounts}")]
    AccountOutOfRange {
        url: String,
        account: u64,
        accounts: u64,
    },
    #[error(
        "URL template {template} has no {{ledger}} placeholder, so all {ledgers} ledgers would share one database"
    )]
    TemplatePlaceholder { template: String, ledgers: usize },
    #[error("{url}: {detail}")]
    Query { url: String, detail: String },
}

/// The most useful one-line description of a client error: the server's message when
/// there is one (postgres::Error's own Display says only "db error").
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// The URL with its password replaced by `***`, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        // Proves that a URL's password is hidden and that other URLs are unchanged.
        assert_eq!(
            redact("postgres://bank:secret@127.0.0.1:5432/shard0"),
            "postgres://bank:***@127.0.0.1:5432/shard0"
        );
        assert_eq!(redact("postgres://bank@host/db"), "postgres://bank@host/db");
        assert_eq!(redact("host=/tmp dbname=x"), "host=/tmp dbname=x");
    }
}
