//! The evidence of `byzantine-participant`: the equivocation evidence files the replicas
//! kept, each checked offline by the code behind `tricommit evidence verify`, the
//! replicas' own count of what they caught (`equivocations=` in each replica's stop
//! line), and the clearing (`tricommit evidence clear`'s) that gives the cluster back
//! with no participant blocked, as the runner gives back `cluster.toml`.

use std::path::{Path, PathBuf};

use tricommit_engine::client::ClusterConfig;

use super::cluster::LOG_DIR;
use super::ChaosError;
use crate::evidence_cmd::{self, Verdict};

/// The key of the replicas' stop line that counts the equivocations they caught.
const EQUIVOCATIONS_KEY: &str = "equivocations=";

/// The evidence files in force on every replica of the cluster in `dir`.
pub fn files(dir: &Path, config: &ClusterConfig) -> Vec<PathBuf> {
    evidence_cmd::files_in_force(dir, config)
}

/// Refuses a cluster that holds evidence in force: its participant's votes are refused
/// from the start, which every scenario would misreport as faults of its own.
pub fn refuse_if_in_force(dir: &Path, config: &ClusterConfig) -> Result<(), ChaosError> {
    let Some(file) = files(dir, config).into_iter().next() else {
        return Ok(());
    };
    let participant = file
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.split_once("-batch-"))
        .map_or("a participant", |(participant, _)| participant)
        .to_owned();
    Err(ChaosError::Usage(format!(
        "{} holds equivocation evidence against {participant} ({}): its votes are refused; \
         check it with `tricommit evidence verify`, then lift the block with `tricommit \
         evidence clear --cluster {} --site {participant}`",
        dir.display(),
        file.display(),
        dir.display()
    )))
}

/// What the evidence check found.
#[derive(Debug, Default)]
pub struct EvidenceReport {
    /// Evidence files in force after the run.
    pub files: usize,
    /// Of those, the ones `tricommit evidence verify` accepts.
    pub verified: usize,
    /// Why each of the others proves nothing.
    pub refusals: Vec<String>,
    /// The sum of `equivocations=` over the replicas' last stop lines.
    pub equivocations: u64,
    /// Files the clearing moved to `evidence/cleared/`.
    pub cleared: usize,
}

/// Verifies every evidence file in force on the stopped cluster in `dir`, reads the
/// replicas' counts, and then clears the evidence against `participant`.
pub fn check_and_clear(
    dir: &Path,
    config: &ClusterConfig,
    participant: &str,
) -> Result<EvidenceReport, ChaosError> {
    let files = files(dir, config);
    let mut report = EvidenceReport {
        files: files.len(),
        equivocations: equivocations_logged(dir, config),
        ..EvidenceReport::default()
    };
    for file in &files {
        match evidence_cmd::check(file, dir, config) {
            Ok(_) => report.verified += 1,
            Err(Verdict::Misuse(why) | Verdict::Invalid(why)) => {
                report.refusals.push(format!("{}: {why}", file.display()))
            }
        }
    }
    report.cleared = evidence_cmd::clear(dir, participant).map_err(|why| {
        ChaosError::Check(format!(
            "`tricommit evidence clear --site {participant}`: {why}"
        ))
    })?;
    Ok(report)
}

/// The sum over the replicas of `equivocations=` in each one's last stop line
/// (`DIR/chaos-logs/<replica>.log` is appended to by every run, so the last line is
/// this run's).
fn equivocations_logged(dir: &Path, config: &ClusterConfig) -> u64 {
    let mut total = 0;
    for replica in config
        .site_entries()
        .into_iter()
        .take(config.replicas as usize)
    {
        let log = dir.join(LOG_DIR).join(format!("{}.log", replica.name));
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        let stopped = format!("{} stopped:", replica.name);
        let count = text
            .lines()
            .rev()
            .find(|line| line.contains(&stopped))
            .and_then(|line| line.split_once(EQUIVOCATIONS_KEY))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|number| number.parse::<u64>().ok());
        total += count.unwrap_or(0);
    }
    total
}
