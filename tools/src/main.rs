//! `tricommit`: the node, WAL, ledger and simulator tools.

use std::process::ExitCode;

use clap::Parser;

mod chaos;
mod cluster;
mod evidence_cmd;
mod ledger_cmd;
mod metrics_http;
mod metrics_trace;
mod node_cmd;
#[cfg(feature = "pg")]
mod pg_cmd;
mod recover_cmd;
mod sim_cmd;
mod wal_cmd;

/// tricommit: batched, pipelined three-phase commit.
#[derive(Parser)]
#[command(name = "tricommit", version)]
enum Cli {
    /// Inspect and check a write-ahead log directory.
    #[command(subcommand)]
    Wal(wal_cmd::WalCommand),
    /// Run the seeded deterministic simulator over many seeds.
    Sim(sim_cmd::SimArgs),
    /// Inspect the ledgers of an engine's data directory.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// Finish what a crash left in doubt: open the data directory, let the termination
    /// protocol decide every transaction in doubt, shut down cleanly, print the counts.
    Recover(recover_cmd::RecoverArgs),
    /// Create and run a local cluster: one process per site.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run one site of a cluster in the foreground (see `cluster up`).
    Node(node_cmd::NodeArgs),
    /// Equivocation evidence: verify a file offline, clear a participant.
    #[command(subcommand)]
    Evidence(evidence_cmd::EvidenceCommand),
    /// Run a chaos scenario on a cluster of real processes (kill -9, SIGSTOP, link
    /// cuts, delays and drops) and check the bank exactly; `--list` lists them.
    Chaos(chaos::ChaosArgs),
    /// PostgreSQL shards as ledgers: create the schema, read a balance, audit.
    #[cfg(feature = "pg")]
    #[command(subcommand)]
    Pg(pg_cmd::PgCommand),
}

fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Wal(command) => wal_cmd::run(command),
        Cli::Sim(args) => sim_cmd::run(args),
        Cli::Ledger(command) => ledger_cmd::run(command),
        Cli::Recover(args) => recover_cmd::run(args),
        Cli::Cluster(command) => cluster::run(command),
        Cli::Node(args) => node_cmd::run(args),
        Cli::Evidence(command) => evidence_cmd::run(command),
        Cli::Chaos(args) => chaos::run(args),
        #[cfg(feature = "pg")]
        Cli::Pg(command) => pg_cmd::run(command),
    }
}
