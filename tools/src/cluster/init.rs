//! `tricommit cluster init DIR`: a new cluster's configuration and key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tricommit_engine::client::config::{
    random_key, write_atomically, ClusterConfig, ConfigError, InitOptions, CLUSTER_FILE, KEY_FILE,
};
use tricommit_engine::runtime::node::prepare_cluster_dir;
use tricommit_engine::sign::{keys, public_key_hex};

#[derive(clap::Args)]
pub struct InitArgs {
    /// The cluster directory: new or empty.
    dir: PathBuf,
    /// Coordinator replicas (any of them opens batches; clients prefer replica-0).
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Ledger participants.
    #[arg(long, default_value_t = 4)]
    participants: u64,
    /// Accounts per ledger.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Balance every account starts with.
    #[arg(long, default_value_t = 1_000_000)]
    initial_balance: i64,
    /// The host every site listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Site i (replicas first, then participants) listens on base-port + i.
    #[arg(long, default_value_t = tricommit_engine::client::config::BASE_PORT_DEFAULT)]
    base_port: u16,
}

pub fn run(args: InitArgs) -> ExitCode {
    match init(&args) {
        Ok(config) => {
            println!(
                "initialised cluster {} in {}: {} replicas, {} participants of {} accounts, \
                 sites on {}..",
                config.cluster_id,
                args.dir.display(),
                config.replicas,
                config.participants,
                config.ledger.accounts,
                config.sites["replica-0"],
            );
            println!("start it with: tricommit cluster up {}", args.dir.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tricommit: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn init(args: &InitArgs) -> Result<ClusterConfig, String> {
    let options = InitOptions {
        replicas: args.replicas,
        participants: args.participants,
        accounts: args.accounts,
        initial_balance: args.initial_balance,
        host: args.host.clone(),
        base_port: args.base_port,
    };
    let key = random_key().map_err(|error| format!("reading /dev/urandom: {error}"))?;
    // The id comes from other random bytes than the key: no key bits are published.
    let id_bytes = random_key().map_err(|error| format!("reading /dev/urandom: {error}"))?;
    let cluster_id = u64::from_le_bytes(id_bytes[..8].try_into().expect("8 bytes"));
    let config = ClusterConfig::from_init(&options, cluster_id)?;
    create(&args.dir, config, &key)
}

/// Writes a new cluster into `dir` (new or empty): its data directory's identity, one
/// directory per site, the key and `config`. `tricommit chaos` calls it too.
pub(crate) fn create(
    dir: &Path,
    mut config: ClusterConfig,
    key: &[u8],
) -> Result<ClusterConfig, String> {
    refuse_used(dir).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    // The data directory's identity first (it needs the empty directory), then the key,
    // then the configuration: a directory holding cluster.toml is a complete cluster.
    prepare_cluster_dir(&config, dir).map_err(|error| error.to_string())?;
    for site in config.site_entries() {
        let site_dir = dir.join(&site.name);
        std::fs::create_dir(&site_dir)
            .map_err(|error| format!("creating {}: {error}", site_dir.display()))?;
    }
    write_atomically(dir, KEY_FILE, key, 0o600).map_err(|error| error.to_string())?;
    add_vote_keys(&mut config, dir)?;
    write_atomically(dir, CLUSTER_FILE, config.render().as_bytes(), 0o644)
        .map_err(|error| error.to_string())?;
    Ok(config)
}

/// Writes a fresh `DIR/<participant>/vote.key` (mode 0600, OS randomness) for every
/// participant and lists the public keys in `config.vote_keys`.
pub(super) fn add_vote_keys(config: &mut ClusterConfig, dir: &Path) -> Result<(), String> {
    for site in config
        .site_entries()
        .into_iter()
        .skip(config.replicas as usize)
    {
        let site_dir = dir.join(&site.name);
        std::fs::create_dir_all(&site_dir)
            .map_err(|error| format!("creating {}: {error}", site_dir.display()))?;
        let key = keys::write_new(&site_dir).map_err(|error| error.to_string())?;
        config
            .vote_keys
            .insert(site.name, public_key_hex(&key.verifying_key()));
    }
    Ok(())
}

/// Refuses a directory that holds anything (a cluster, or other files).
fn refuse_used(dir: &Path) -> Result<(), ConfigError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(ConfigError::AlreadyInitialised(dir.to_owned())),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ConfigError::Read {
            path: dir.to_owned(),
            source,
        }),
    }
}
