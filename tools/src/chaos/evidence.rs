//! The evidence of `byzantine-participant`: the equivocation evidence files the replicas
//! kept, each checked offline by the operator's own tool (`tricommit evidence verify`),
//! the replicas' own count of what they caught (`equivocations=` in each replica's stop
//! line), and the clearing (`tricommit evidence clear`) that gives the cluster back with
//! no participant blocked, as the runner gives back `cluster.toml`.
//!
//! Every tool runs as a child process of this executable, waited for within
//! `TOOL_WAIT_MS_MAX` and killed past it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tricommit_engine::client::ClusterConfig;
use tricommit_engine::sign::evidence::{EVIDENCE_DIR, EVIDENCE_EXTENSION};

use super::cluster::LOG_DIR;
use super::ChaosError;

/// How long one `tricommit evidence` command may take.
const TOOL_WAIT_MS_MAX: u64 = 10_000;
const POLL_MS: u64 = 10;
/// Where a tool's stdout goes, below the log directory (one tool runs at a time).
const TOOL_OUTPUT_FILE: &str = "evidence-tool.out";
/// The key of the replicas' stop line that counts the equivocations they caught.
const EQUIVOCATIONS_KEY: &str = "equivocations=";

/// The evidence files in force on every replica of the cluster in `dir`
/// (`DIR/<replica>/evidence/*.evidence`; cleared ones sit one directory further down).
pub fn files(dir: &Path, config: &ClusterConfig) -> Vec<PathBuf> {
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
    /// Of those, the ones `tricommit evidence verify` accepted (exit 0).
    pub verified: usize,
    /// `verify`'s word on each file it did not accept.
    pub refusals: Vec<String>,
    /// The sum of `equivocations=` over the replicas' last stop lines.
    pub equivocations: u64,
    /// Files `tricommit evidence clear` moved to `evidence/cleared/`.
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
        let path = file
            .to_str()
            .ok_or_else(|| ChaosError::Check(format!("{} is not a UTF-8 path", file.display())))?;
        let (code, stdout) = tool(dir, &["evidence", "verify", path])?;
        if code == Some(0) && stdout.starts_with("valid") {
            report.verified += 1;
        } else {
            report
                .refusals
                .push(format!("{path}: exit {code:?}: {}", stdout.trim()));
        }
    }
    let cluster = dir
        .to_str()
        .ok_or_else(|| ChaosError::Check(format!("{} is not a UTF-8 path", dir.display())))?;
    let (code, stdout) = tool(
        dir,
        &[
            "evidence",
            "clear",
            "--cluster",
            cluster,
            "--site",
            participant,
        ],
    )?;
    if code != Some(0) {
        return Err(ChaosError::Check(format!(
            "`tricommit evidence clear --site {participant}` exited {code:?}: {}",
            stdout.trim()
        )));
    }
    report.cleared = files.len().saturating_sub(self::files(dir, config).len());
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

/// Runs `tricommit ARGS` (this executable) within `TOOL_WAIT_MS_MAX`, its stdout in
/// `DIR/chaos-logs/TOOL_OUTPUT_FILE`; returns its exit code and stdout.
fn tool(dir: &Path, args: &[&str]) -> Result<(Option<i32>, String), ChaosError> {
    let exe = std::env::current_exe().map_err(|source| ChaosError::Io {
        what: "finding this executable".into(),
        source,
    })?;
    let scratch = dir.join(LOG_DIR).join(TOOL_OUTPUT_FILE);
    let stdout = std::fs::File::create(&scratch).map_err(|source| ChaosError::Io {
        what: format!("creating {}", scratch.display()),
        source,
    })?;
    let spawned = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn();
    let result = spawned
        .map_err(|source| ChaosError::Io {
            what: format!("running tricommit {}", args.join(" ")),
            source,
        })
        .and_then(|mut child| {
            let deadline = Instant::now() + Duration::from_millis(TOOL_WAIT_MS_MAX);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status.code()),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(POLL_MS))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(ChaosError::Check(format!(
                            "tricommit {} did not finish within {} s",
                            args.join(" "),
                            TOOL_WAIT_MS_MAX / 1000
                        )));
                    }
                }
            }
        });
    let text = std::fs::read_to_string(&scratch).unwrap_or_default();
    let _ = std::fs::remove_file(&scratch);
    result.map(|code| (code, text))
}
