//! `tricommit ledger dump --data-dir DIR [--postings]`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tricommit_engine::ledger::Posting;
use tricommit_engine::runtime::recover_ledgers;

#[derive(clap::Subcommand)]
pub enum LedgerCommand {
    /// Recover every ledger from its log, read-only, and print one line per account:
    /// `ledger account balance`. With --postings, print every posting instead:
    /// `txn_id ledger account delta` (for a checkpointed ledger, only those after its
    /// last checkpoint: a note on stderr names it).
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
    },
}

pub fn run(command: LedgerCommand) -> ExitCode {
    let LedgerCommand::Dump {
        data_dir,
        cluster,
        postings,
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
        return ExitCode::from(2);
    }
    let sink = |index: usize| -> Option<tricommit_engine::ledger::PostingSink> {
        if !postings {
            return None;
        }
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
    let ledgers = match recover_ledgers(&data_dir, sink) {
        Ok(ledgers) => ledgers,
        Err(error) => {
            eprintln!("tricommit: error: {}: {error}", data_dir.display());
            return ExitCode::from(2);
        }
    };
    if postings {
        for recovered in &ledgers {
            if let Some(number) = recovered.checkpoint {
                eprintln!(
                    "tricommit: note: ledger {} starts at checkpoint {number}: its postings \
                     before it are compacted (its balances hold them)",
                    recovered.index
                );
            }
        }
        return ExitCode::SUCCESS;
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for recovered in &ledgers {
        for (account, balance) in recovered.ledger().balances().enumerate() {
            if writeln!(out, "{} {account} {balance}", recovered.index).is_err() {
                return ExitCode::SUCCESS;
            }
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}
