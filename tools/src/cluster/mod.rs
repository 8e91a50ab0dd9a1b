//! `tricommit cluster init DIR …` and `tricommit cluster up DIR` (DESIGN §5).

pub(crate) mod init;
mod up;

pub(crate) use up::signal;

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Write DIR/cluster.toml (sites, addresses, ledgers, timeouts) and DIR/cluster.key
    /// (32 random bytes, mode 0600) for a new cluster. Refuses a DIR that is not empty.
    Init(init::InitArgs),
    /// Start every site of the cluster in DIR as a child process (`tricommit node`),
    /// print `ready` once every node has all its links up, and stop them all on
    /// SIGINT or SIGTERM. Exits non-zero, naming it, if a node dies.
    Up(up::UpArgs),
    /// Give the participants of a cluster made before signed votes their vote keys:
    /// writes DIR/<participant>/vote.key (mode 0600) for each and lists the public keys
    /// in cluster.toml's [vote_keys]. Run it while the cluster is stopped; from then on
    /// every participant signs its votes and the replicas count only signed ones.
    VoteKeys {
        /// The cluster directory.
        dir: std::path::PathBuf,
    },
}

pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Init(args) => init::run(args),
        ClusterCommand::Up(args) => up::run(&args),
        ClusterCommand::VoteKeys { dir } => vote_keys(&dir),
    }
}

fn vote_keys(dir: &std::path::Path) -> ExitCode {
    use tricommit_engine::client::config::{write_atomically, ClusterConfig, CLUSTER_FILE};
    let result = ClusterConfig::load(dir)
        .map_err(|error| error.to_string())
        .and_then(|mut config| {
            if !config.vote_keys.is_empty() {
                return Err(format!(
                    "{} already has vote keys ([vote_keys] in {CLUSTER_FILE})",
                    dir.display()
                ));
            }
            init::add_vote_keys(&mut config, dir)?;
            write_atomically(dir, CLUSTER_FILE, config.render().as_bytes(), 0o644)
                .map_err(|error| error.to_string())?;
            Ok(config.participants)
        });
    match result {
        Ok(participants) => {
            println!(
                "wrote vote keys for {participants} participants of {}; they sign their \
                 votes from their next start",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tricommit: error: {message}");
            ExitCode::from(2)
        }
    }
}
