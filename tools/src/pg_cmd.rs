//! `tricommit pg init|balance|audit`: PostgreSQL shards as ledgers (docs/pg.md).
//!
//! Bad input (a wrong URL, a database without the schema, an account out of range)
//! prints one line and exits 2; a failed audit exits 1.

use std::process::ExitCode;

use tricommit_engine::pg::{self, schema, PgError};

/// The most shards one command reads.
const LEDGERS_MAX: usize = 32;

#[derive(clap::Subcommand)]
pub enum PgCommand {
    /// Create the schema (accounts, pending reservations, votes, postings) on one
    /// database, with every account at the same initial balance.
    Init {
        /// The database, e.g. postgres://user@127.0.0.1:5432/shard0.
        #[arg(long)]
        url: String,
        /// Accounts to create: ids 0..N.
        #[arg(long)]
        accounts: u64,
        /// The balance every account opens with.
        #[arg(long, allow_negative_numbers = true)]
        initial_balance: i64,
        /// Drop an existing tricommit schema first (every balance and posting is lost).
        #[arg(long)]
        reset: bool,
    },
    /// Print one account's balance and held reservations:
    /// `account balance debits_pending credits_pending`.
    Balance {
        #[arg(long)]
        url: String,
        #[arg(long)]
        account: u64,
    },
    /// Check the bank invariant over shards: totals, balances recomputed from the
    /// postings, postings atomic across shards, and (with --settled) no reservation left.
    Audit {
        /// A URL, with `{ledger}` standing for the ledger's index when --ledgers > 1.
        #[arg(long)]
        url_template: String,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=LEDGERS_MAX as u64))]
        ledgers: u64,
        /// Also fail if any reservation is still pending.
        #[arg(long)]
        settled: bool,
    },
}

pub fn run(command: PgCommand) -> ExitCode {
    match execute(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tricommit: error: {error}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: PgCommand) -> Result<ExitCode, PgError> {
    match command {
        PgCommand::Init {
            url,
            accounts,
            initial_balance,
            reset,
        } => {
            let info = schema::init(&url, accounts, initial_balance, reset)?;
            println!(
                "initialized {}: {} accounts of {}",
                pg::redact(&url),
                info.accounts,
                info.initial_balance
            );
            Ok(ExitCode::SUCCESS)
        }
        PgCommand::Balance { url, account } => {
            let row = balance(&url, account)?;
            println!("{account} {} {} {}", row.0, row.1, row.2);
            Ok(ExitCode::SUCCESS)
        }
        PgCommand::Audit {
            url_template,
            ledgers,
            settled,
        } => {
            let urls = pg::shard_urls(&url_template, ledgers as usize)?;
            let report = pg::audit(&urls)?;
            println!(
                "total {} (opening {}), {} postings, {} pending",
                report.total, report.opening_total, report.postings, report.pending_rows
            );
            match report.verdict(settled) {
                Ok(()) => {
                    println!("bank invariant: ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    println!("bank invariant: FAILED: {problems}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn balance(url: &str, account: u64) -> Result<(i64, i64, i64), PgError> {
    let mut client = schema::connect(url)?;
    let info = schema::inspect(&mut client, url)?;
    if account >= info.accounts {
        return Err(PgError::AccountOutOfRange {
            url: pg::redact(url),
            account,
            accounts: info.accounts,
        });
    }
    let row = client
        .query_one(
            "SELECT balance, debits_pending, credits_pending FROM tc_accounts WHERE id = $1",
            &[&(account as i64)],
        )
        .map_err(|error| PgError::Query {
            url: pg::redact(url),
            detail: pg::describe(&error),
        })?;
    Ok((row.get(0), row.get(1), row.get(2)))
}
