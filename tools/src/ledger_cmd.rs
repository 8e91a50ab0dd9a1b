//! `tricommit ledger dump --data-dir DIR [--postings] [--include-in-doubt]`.
//!
//! Exit codes: 0 printed; 2 the directory cannot be read (missing, not a tricommit
//! data directory, in use by a running engine, damaged log); 3 transactions are in
//! doubt (a crash interrupted them): the balances would show some of them on one ledger
//! and not yet on another, so nothing is printed unless `--include-in-doubt` asks for
//! it. `tricommit recover --data-dir DIR` decides them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tricommit_engine::ledger::Posting;
use tricommit_engine::runtime::{recover_ledgers, RecoveredLedger};

/// Exit code: transactions are in doubt and `--include-in-doubt` was not given.
const EXIT_IN_DOUBT: u8 = 3;
const EXIT_ERROR: u8 = 2;

#[derive(clap::Subcommand)]
pub enum LedgerCommand {
    /// Recover every ledger from its log, read-only, and print one line per account:
    /// `ledger account balance`. With --postings, print every posting instead:
    /// `txn_id ledger account delta` (for a checkpointed ledger, only those after its
    /// last checkpoint: a note on stderr names it). Refuses (exit 3) while a crash left
    /// transactions in doubt, naming `tricommit recover`; refuses (exit 2) a directory
    /// a running engine holds.
    Dump {
        /// The engine's data directory.
        #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
        data_dir: Option<PathBuf>,
        /// A stopped cluster's directory (`tricommit cluster init`): every
        /// participant's data directory in it.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Print the postings (the audit trail) instead of the balances.
        #[arg(long)]
        postings: bool,
        /// Print even when transactions are in doubt: the output then holds what each
        /// ledger alone knows, and every transaction in doubt is listed on stderr as
        /// `in-doubt ledger txn_id state`.
        #[arg(long)]
        include_in_doubt: bool,
    },
}

pub fn run(command: LedgerCommand) -> ExitCode {
    let LedgerCommand::Dump {
        data_dir,
        cluster,
        postings,
        include_in_doubt,
    } = command;
    let data_dir = match (data_dir, cluster) {
        (Some(data_dir), _) => data_dir,
        (None, Some(cluster)) => {
            // A cluster directory is its participants' data directory (`cluster init`
            // marks it as one); its configuration is checked first so that a damaged
            // cluster says so.
            if let Err(error) = tricommit_engine::client::ClusterConfig::load(&cluster) {
                eprintln!("tricommit: error: {error}");
                return ExitCode::from(2);
            }
            cluster
        }
        (None, None) => unreachable!("clap requires --data-dir or --cluster"),
    };
    if !data_dir.is_dir() {
        eprintln!(
            "tricommit: error: {} is not a directory",
            data_dir.display()
        );
        return ExitCode::from(EXIT_ERROR);
    }
    // First the balances and what is in doubt, without printing anything.
    let ledgers = match recover_ledgers(&data_dir, |_| None) {
        Ok(ledgers) => ledgers,
        Err(error) => return error_exit(&data_dir, &error),
    };
    let in_doubt: usize = ledgers.iter().map(|ledger| ledger.in_doubt().len()).sum();
    if in_doubt > 0 {
        if !include_in_doubt {
            eprintln!(
                "tricommit: error: {dir} holds {in_doubt} transaction legs in doubt: a crash \
                 interrupted them, and their balances may be applied on one ledger and not \
                 yet on another. Run `tricommit recover --data-dir {dir}` to decide them, or \
                 pass --include-in-doubt to print anyway with the legs in doubt listed on \
                 stderr.",
                dir = data_dir.display()
            );
            return ExitCode::from(EXIT_IN_DOUBT);
        }
        report_in_doubt(&ledgers, in_doubt);
    }
    if postings {
        return dump_postings(&data_dir);
    }
    dump_balances(&ledgers)
}

fn error_exit(data_dir: &Path, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tricommit: error: {}: {error}", data_dir.display());
    ExitCode::from(EXIT_ERROR)
}

/// Lists every leg in doubt on stderr, and a warning that the output is not settled.
fn report_in_doubt(ledgers: &[RecoveredLedger], in_doubt: usize) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "tricommit: warning: {in_doubt} transaction legs are in doubt; the output below is \
         what each ledger alone holds, not a settled state (run `tricommit recover`)"
    );
    for ledger in ledgers {
        for (txn, state) in ledger.in_doubt() {
            let _ = writeln!(err, "in-doubt {} {} {state:?}", ledger.index, txn.0);
        }
    }
}

/// `txn_id ledger account delta` per posting, replayed once more with a sink.
fn dump_postings(data_dir: &Path) -> ExitCode {
    let sink = |index: usize| -> Option<tricommit_engine::ledger::PostingSink> {
        Some(Box::new(move |batch: &[Posting]| {
            let mut out = std::io::stdout().lock();
            for posting in batch {
                // A closed stdout (a pipe into `head`) ends the output, not the program.
                let _ = writeln!(
                    out,
                    "{} {} {} {}",
                    posting.txn.0, index, posting.account, posting.delta
                );
            }
        }))
    };
    let ledgers = match recover_ledgers(data_dir, sink) {
        Ok(ledgers) => ledgers,
        Err(error) => return error_exit(data_dir, &error),
    };
    for recovered in &ledgers {
        if let Some(number) = recovered.checkpoint {
            eprintln!(
                "tricommit: note: ledger {} starts at checkpoint {number}: its postings \
                 before it are compacted (its balances hold them)",
                recovered.index
            );
        }
    }
    ExitCode::SUCCESS
}

/// `ledger account balance` per account.
fn dump_balances(ledgers: &[RecoveredLedger]) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for recovered in ledgers {
        for (account, balance) in recovered.ledger().balances().enumerate() {
            if writeln!(out, "{} {account} {balance}", recovered.index).is_err() {
                return ExitCode::SUCCESS;
            }
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}
