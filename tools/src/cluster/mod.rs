//! `tricommit cluster init DIR …` and `tricommit cluster up DIR` (DESIGN §5).

pub(crate) mod init;
mod up;

pub(crate) use up::signal;

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Write DIR/cluster.toml (sites, addresses, ledgers, timeouts) and DIR/cluster.key
    /// (32 random bytes, mode 0600) for a new cluster. Refuses a DIR that is not empty.
    Init(init::InitArgs),
    /// Start every site of the cluster in DIR as a child process (`tricommit node`),
    /// print `ready` once every node has all its links up, and stop them all on
    /// SIGINT or SIGTERM. Exits non-zero, naming it, if a node dies.
    Up {
        /// The cluster directory.
        dir: PathBuf,
    },
}

pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Init(args) => init::run(args),
        ClusterCommand::Up { dir } => up::run(&dir),
    }
}
