//! `tricommit evidence verify FILE` and `tricommit evidence clear --cluster DIR --site P`:
//! check equivocation evidence offline, and lift the block it puts on a participant.
//!
//! Exit codes of `verify`: 0 the file proves that the participant signed two different
//! votes for one batch; 1 it does not (damaged, forged, another cluster's, another
//! key); 2 misuse (no such file, no cluster found, bad flags).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tricommit_engine::client::config::{ClusterConfig, CLUSTER_FILE};
use tricommit_engine::sign::evidence::{
    Evidence, EvidenceError, CLEARED_DIR, EVIDENCE_DIR, EVIDENCE_EXTENSION,
};
use tricommit_engine::sign::parse_public_key;

/// How many directories above an evidence file `verify` looks for `cluster.toml`
/// (`DIR/<replica>/evidence/FILE` is three).
const CLUSTER_SEARCH_DEPTH_MAX: usize = 4;

#[derive(clap::Subcommand)]
pub enum EvidenceCommand {
    /// Check an evidence file offline with the public keys in cluster.toml: exit 0 if it
    /// proves an equivocation, 1 if it does not, 2 on misuse.
    Verify {
        /// The evidence file (DIR/<replica>/evidence/<participant>-batch-<id>.evidence).
        file: PathBuf,
        /// The cluster directory (default: the nearest directory above FILE that holds
        /// cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
    },
    /// Lift the block evidence puts on a participant: moves its evidence files on every
    /// replica to evidence/cleared/ (kept for the audit trail). Running replicas count
    /// its votes again within a fraction of a second.
    Clear {
        /// The cluster directory.
        #[arg(long)]
        cluster: PathBuf,
        /// The participant (participant-N).
        #[arg(long)]
        site: String,
    },
}

pub fn run(command: EvidenceCommand) -> ExitCode {
    match command {
        EvidenceCommand::Verify { file, cluster } => verify(&file, cluster.as_deref()),
        EvidenceCommand::Clear { cluster, site } => match clear(&cluster, &site) {
            Ok(moved) => {
                println!("cleared {site}: {moved} evidence file(s) moved to {EVIDENCE_DIR}/{CLEARED_DIR}/");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("tricommit: error: {message}");
                ExitCode::from(2)
            }
        },
    }
}

fn verify(file: &Path, cluster: Option<&Path>) -> ExitCode {
    let misuse = |message: String| {
        eprintln!("tricommit: error: {message}");
        ExitCode::from(2)
    };
    let Some(dir) = cluster.map(Path::to_owned).or_else(|| find_cluster(file)) else {
        return misuse(format!(
            "no {CLUSTER_FILE} above {}; name the cluster with --cluster DIR",
            file.display()
        ));
    };
    let config = match ClusterConfig::load(&dir) {
        Ok(config) => config,
        Err(error) => return misuse(error.to_string()),
    };
    match check(file, &dir, &config) {
        Ok(valid) => {
            println!("valid: {valid}");
            ExitCode::SUCCESS
        }
        Err(Verdict::Misuse(message)) => misuse(message),
        Err(Verdict::Invalid(reason)) => invalid(file, &reason),
    }
}

/// Why [`check`] did not accept an evidence file.
pub enum Verdict {
    /// The file could not be read (`verify` exits 2).
    Misuse(String),
    /// It does not prove an equivocation in this cluster (`verify` exits 1).
    Invalid(String),
}

/// Checks one evidence file of the cluster in `dir` (`config`, its `cluster.toml`)
/// with the participant's public vote key: what `tricommit evidence verify` prints
/// after `valid: `, or why the file proves nothing. The chaos runner's
/// `byzantine-participant` uses it too.
pub fn check(file: &Path, dir: &Path, config: &ClusterConfig) -> Result<String, Verdict> {
    let evidence = match Evidence::read(file) {
        Ok(evidence) => evidence,
        Err(error @ EvidenceError::Read { .. }) => return Err(Verdict::Misuse(error.to_string())),
        Err(error) => return Err(Verdict::Invalid(error.to_string())),
    };
    let Some(key_text) = config.vote_keys.get(&evidence.participant) else {
        return Err(Verdict::Invalid(format!(
            "{} has no vote key in {}",
            evidence.participant,
            dir.join(CLUSTER_FILE).display()
        )));
    };
    let key = parse_public_key(key_text).expect("checked when cluster.toml was read");
    evidence
        .verify(config.cluster_id, &key)
        .map_err(|error| Verdict::Invalid(error.to_string()))?;
    Ok(format!(
        "{} signed two different votes for batch {} (found by {})",
        evidence.participant, evidence.first.batch.0, evidence.seen_by
    ))
}

fn invalid(file: &Path, reason: &str) -> ExitCode {
    println!("invalid: {}: {reason}", file.display());
    ExitCode::from(1)
}

/// The nearest directory above `file` that holds `cluster.toml`.
fn find_cluster(file: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(file).ok()?;
    absolute
        .ancestors()
        .skip(1)
        .take(CLUSTER_SEARCH_DEPTH_MAX)
        .find(|dir| dir.join(CLUSTER_FILE).is_file())
        .map(Path::to_owned)
}

/// The evidence files in force on every replica of the cluster in `dir`
/// (`DIR/<replica>/evidence/*.evidence`; cleared ones sit one directory further down),
/// in path order.
pub fn files_in_force(dir: &Path, config: &ClusterConfig) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for replica in config
        .site_entries()
        .into_iter()
        .take(config.replicas as usize)
    {
        let Ok(entries) = std::fs::read_dir(dir.join(&replica.name).join(EVIDENCE_DIR)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|ext| ext.to_str()) == Some(EVIDENCE_EXTENSION) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Moves `site`'s evidence files on every replica to `evidence/cleared/`; returns how
/// many it moved.
pub fn clear(dir: &Path, site: &str) -> Result<usize, String> {
    let config = ClusterConfig::load(dir).map_err(|error| error.to_string())?;
    let entry = config.site(site).map_err(|error| error.to_string())?;
    if u64::from(entry.id.0) < config.replicas {
        return Err(format!("{site} is a replica; only participants vote"));
    }
    let prefix = format!("{site}-batch-");
    let mut moved = 0;
    for path in files_in_force(dir, &config) {
        let (Some(name), Some(evidence_dir)) = (path.file_name(), path.parent()) else {
            continue;
        };
        if !name.to_str().is_some_and(|name| name.starts_with(&prefix)) {
            continue;
        }
        let cleared = evidence_dir.join(CLEARED_DIR);
        std::fs::create_dir_all(&cleared)
            .map_err(|error| format!("creating {}: {error}", cleared.display()))?;
        let target = free_name(&cleared, name)
            .ok_or_else(|| format!("{}: no free name in {}", path.display(), cleared.display()))?;
        std::fs::rename(&path, target)
            .map_err(|error| format!("moving {}: {error}", path.display()))?;
        moved += 1;
    }
    Ok(moved)
}

/// Cleared evidence files of one name (the same participant and batch, equivocating
/// again after an earlier clear) kept side by side at most.
const CLEARED_SAME_NAME_MAX: u32 = 1000;

/// `dir/name` if nothing is there, else `dir/name.1`, `dir/name.2`, …: an earlier
/// cleared file of the same name stays in the audit trail.
fn free_name(dir: &Path, name: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    let first = dir.join(name);
    if !first.exists() {
        return Some(first);
    }
    (1..=CLEARED_SAME_NAME_MAX)
        .map(|n| {
            let mut numbered = name.to_os_string();
            numbered.push(format!(".{n}"));
            dir.join(numbered)
        })
        .find(|candidate| !candidate.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that clearing the same evidence name twice keeps both files: the second
    // gets `.1`, the third `.2`, and the first is never overwritten.
    #[test]
    fn a_second_clear_of_the_same_name_keeps_the_first() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let name = std::ffi::OsStr::new("participant-1-batch-7.evidence");
        let first = free_name(dir.path(), name).expect("a free name");
        assert_eq!(first, dir.path().join(name));
        std::fs::write(&first, b"first").unwrap();
        let second = free_name(dir.path(), name).expect("a free name");
        assert_eq!(second, dir.path().join("participant-1-batch-7.evidence.1"));
        std::fs::write(&second, b"second").unwrap();
        let third = free_name(dir.path(), name).expect("a free name");
        assert_eq!(third, dir.path().join("participant-1-batch-7.evidence.2"));
        assert_eq!(std::fs::read(&first).unwrap(), b"first");
    }
}
