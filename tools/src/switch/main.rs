//! `tricommit-switch`: a payment switch front end. It speaks ISO 8583 (pyiso8583's
//! `default_ascii` encoding, 2-byte big-endian length framing) over TCP and commits
//! every payment into three ledgers at once with the embedded tricommit engine:
//! ledger 0 the issuer, 1 the acquirer, 2 the fees. docs/switch.md is the manual.

mod backend;
mod book;
// Shared with tricommit-load and the codec tests (`#[path]`), which use parts this binary does not.
#[allow(dead_code)]
mod codec;
mod history;
mod rules;
mod server;
mod signal;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use tricommit_engine::ledger::ACCOUNTS_MAX;

use backend::{Backend, LedgerSizes};
use book::Book;
use rules::{Tariff, FEE_BPS_MAX};
use server::Switch;
use tricommit_engine::client::{ClusterConfig, RemoteClient};

/// Serve ISO 8583 payments over TCP into tricommit ledgers (issuer 0, acquirer 1, fees 2).
#[derive(Parser, Debug)]
#[command(name = "tricommit-switch", version)]
struct Args {
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the bound address is
    /// printed as `listening on ADDR`).
    #[arg(long)]
    listen: String,
    /// The engine's data directory (created if absent; reopened and recovered if it
    /// holds a previous run). Default: a fresh temporary directory under the working
    /// directory, removed at exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Accounts in each ledger. A PAN maps to issuer account `PAN mod N`, field 42 to
    /// acquirer (and fee) account `value mod N`.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Every cardholder's opening balance at the issuer, in minor units.
    #[arg(long, default_value_t = 1_000_000)]
    initial_balance: i64,
    /// The interchange fee in basis points of the amount (rounded down), 0..=10000.
    #[arg(long, default_value_t = 150)]
    fee_bps: u64,
    /// Commit into a running cluster (`tricommit cluster init DIR --participants 3`,
    /// then `tricommit cluster up DIR`) through the network client instead of an
    /// embedded engine. The accounts and opening balances are the cluster's.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["data_dir", "accounts", "initial_balance"])]
    cluster: Option<PathBuf>,
}

/// Why the switch could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
enum SwitchError {
    #[error("--accounts {0} is outside 1..={ACCOUNTS_MAX}")]
    Accounts(u64),
    #[error("--initial-balance {0} is negative")]
    InitialBalance(i64),
    #[error("--fee-bps {0} is above {FEE_BPS_MAX} (the whole amount)")]
    FeeBps(u64),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading what the ledgers in {path} already hold: {source}")]
    History {
        path: PathBuf,
        source: tricommit_engine::runtime::DumpError,
    },
    #[error("engine: {0}")]
    Engine(#[from] tricommit_engine::EngineError),
    #[error("signals: {0}")]
    Signals(std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("a connection thread still holds the engine; it was not shut down cleanly")]
    StillShared,
    #[error("cluster {path}: {message}")]
    Cluster { path: PathBuf, message: String },
}

impl SwitchError {
    /// 2 for what the user gave (flags, addresses, directories), 1 for the rest.
    fn exit_code(&self) -> u8 {
        match self {
            SwitchError::Accounts(_)
            | SwitchError::InitialBalance(_)
            | SwitchError::FeeBps(_)
            | SwitchError::Listen { .. }
            | SwitchError::DataDir { .. }
            | SwitchError::Cluster { .. } => 2,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tricommit-switch: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(error.exit_code())
        }
    }
}

fn check(args: &Args) -> Result<(), SwitchError> {
    if args.accounts == 0 || args.accounts > ACCOUNTS_MAX {
        return Err(SwitchError::Accounts(args.accounts));
    }
    if args.initial_balance < 0 {
        return Err(SwitchError::InitialBalance(args.initial_balance));
    }
    if args.fee_bps > FEE_BPS_MAX {
        return Err(SwitchError::FeeBps(args.fee_bps));
    }
    Ok(())
}

fn run(args: Args) -> Result<(), SwitchError> {
    check(&args)?;
    // Bound first, so that a bad address fails before any directory is touched; the
    // kernel queues connections until `serve` accepts them.
    let listener = TcpListener::bind(&args.listen).map_err(|source| SwitchError::Listen {
        address: args.listen.clone(),
        source,
    })?;
    // Before any thread exists, so that every thread inherits the blocked mask.
    signal::block().map_err(SwitchError::Signals)?;
    let (backend, history, accounts, _temporary) = match &args.cluster {
        Some(dir) => open_cluster(dir)?,
        None => open_in_process(&args)?,
    };
    let known = history.payments.len();
    let address = listener.local_addr().map_err(SwitchError::Serve)?;
    let stop = Arc::new(AtomicBool::new(false));
    signal::watch(stop.clone()).map_err(SwitchError::Signals)?;
    let switch = Arc::new(Switch {
        backend,
        book: Arc::new(Book::with_history(history)),
        late_watchers: Arc::default(),
        tariff: Tariff {
            accounts,
            fee_bps: args.fee_bps,
        },
        stats: server::Stats::default(),
        stop,
    });
    eprintln!(
        "tricommit-switch: {accounts} accounts per ledger, fee {} bps, {known} committed payments known from the ledgers",
        args.fee_bps
    );
    println!("listening on {address}");
    let _ = std::io::stdout().flush();
    let served = server::serve(listener, switch.clone());
    print_stats(&switch);
    // `serve` joined every connection thread, so this is the last handle.
    let switch = Arc::into_inner(switch).ok_or(SwitchError::StillShared)?;
    switch.backend.shutdown()?;
    served.map_err(SwitchError::Serve)
}

/// What the switch commits into, what it knows of earlier payments, the accounts per
/// ledger, and the temporary data directory to remove at exit (if any).
type Opened = (Backend, book::History, u64, Option<tempfile::TempDir>);

/// The embedded engine on `--data-dir` (or a fresh temporary directory), with the
/// payments its ledgers already hold.
fn open_in_process(args: &Args) -> Result<Opened, SwitchError> {
    let data_dir_error = |path: &PathBuf| {
        let path = path.clone();
        move |source| SwitchError::DataDir { path, source }
    };
    let (data_dir, temporary) = match &args.data_dir {
        Some(path) => {
            std::fs::create_dir_all(path).map_err(data_dir_error(path))?;
            (path.clone(), None)
        }
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("tricommit-switch-")
                .tempdir_in(".")
                .map_err(data_dir_error(&PathBuf::from(".")))?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    let history = history::read(&data_dir).map_err(|source| SwitchError::History {
        path: data_dir.clone(),
        source,
    })?;
    let sizes = LedgerSizes {
        accounts: args.accounts,
        initial_balance: args.initial_balance,
    };
    eprintln!("tricommit-switch: data directory {}", data_dir.display());
    let backend = Backend::open_in_process(&data_dir, sizes)?;
    Ok((backend, history, args.accounts, temporary))
}

/// A running cluster of three ledgers (issuer, acquirer, fees) through the network
/// client. Its logs are never read under their nodes, so the switch starts with no
/// history: a retransmitted payment is still answered with its first outcome by the
/// cluster's own id deduplication, since its id is the same hash of (41, 11, 7).
fn open_cluster(dir: &Path) -> Result<Opened, SwitchError> {
    let error = |message: String| SwitchError::Cluster {
        path: dir.to_owned(),
        message,
    };
    let config = ClusterConfig::load(dir).map_err(|e| error(e.to_string()))?;
    if config.participants != 3 {
        return Err(error(format!(
            "the switch needs 3 ledgers (issuer, acquirer, fees), this cluster has {}",
            config.participants
        )));
    }
    let accounts = config.ledger.accounts;
    if accounts == 0 || accounts > ACCOUNTS_MAX {
        return Err(SwitchError::Accounts(accounts));
    }
    let client = RemoteClient::connect(dir).map_err(|e| error(e.to_string()))?;
    eprintln!("tricommit-switch: cluster {}", dir.display());
    Ok((
        Backend::Remote(client),
        book::History::default(),
        accounts,
        None,
    ))
}

fn print_stats(switch: &Switch) {
    let stats = &switch.stats;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    eprintln!(
        "tricommit-switch: stopped: {} connections ({} refused), {} requests, {} approved, {} declined, {} reversals, {} format errors, {} connections closed for bad frames, {} identities in the book",
        load(&stats.connections),
        load(&stats.connections_refused),
        load(&stats.requests),
        load(&stats.approved),
        load(&stats.declined),
        load(&stats.reversals),
        load(&stats.format_errors),
        load(&stats.closed_bad_frame),
        switch.book.len(),
    );
}
