//! `tricommit wal dump|verify`: read-only inspection of a log directory.
//!
//! Both commands use `tricommit_wal::scan`, which maps the segments read-only and never
//! modifies them, so they are safe on a log that a crashed node left behind.
//!
//! Exit codes: 0 clean; 1 the log is damaged (the message names the file and byte
//! offset); 2 the directory is missing, a file is unreadable, or it is not a WAL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tricommit_engine::proto::record::Record;
use tricommit_wal::{scan, LogView, WalError};

/// Payload bytes shown in hex per record by `dump`.
const DUMP_PAYLOAD_BYTES_MAX: usize = 16;

#[derive(clap::Subcommand)]
pub enum WalCommand {
    /// Print one line per record: lsn, kind, length and the first payload bytes in hex
    /// (or, with --decode, the protocol record it holds).
    Dump {
        dir: PathBuf,
        /// Print each record decoded as a protocol record (`lsn kind Record { .. }`),
        /// or `lsn kind undecodable: REASON`, instead of the first payload bytes.
        #[arg(long)]
        decode: bool,
    },
    /// Check every record; exit 0 when clean, 1 naming the first problem.
    Verify { dir: PathBuf },
}

/// Runs a `wal` subcommand and turns its outcome into the documented exit code.
pub fn run(command: WalCommand) -> ExitCode {
    let outcome = match command {
        WalCommand::Dump { dir, decode } => dump(&dir, decode),
        WalCommand::Verify { dir } => verify(&dir),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(exit_code_for(&error))
        }
    }
}

/// Damage is 1; everything that keeps us from reading a WAL at all is 2.
fn exit_code_for(error: &WalError) -> u8 {
    match error {
        WalError::Corrupt { .. } => 1,
        _ => 2,
    }
}

/// `lsn kind length hex` per record, oldest first (`lsn kind Record` with `decode`); a
/// torn tail is reported on stderr.
fn dump(dir: &Path, decode: bool) -> Result<ExitCode, WalError> {
    let view = scan(dir)?;
    let mut stdout = std::io::stdout().lock();
    for record in view.read_from(view.report().first_lsn) {
        let record = record?;
        if decode {
            let (lsn, kind) = (record.lsn, record.kind);
            let written = match Record::decode(kind, record.payload) {
                Ok(decoded) => writeln!(stdout, "{lsn} {kind} {decoded:?}"),
                Err(error) => writeln!(stdout, "{lsn} {kind} undecodable: {error}"),
            };
            // A closed pipe is not an error here either.
            if written.is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            continue;
        }
        let shown = &record.payload[..record.payload.len().min(DUMP_PAYLOAD_BYTES_MAX)];
        let hex: String = shown.iter().map(|byte| format!("{byte:02x}")).collect();
        let more = if record.payload.len() > shown.len() {
            ".."
        } else {
            ""
        };
        // A closed pipe (`dump | head`) is not an error: the reader has what it wanted.
        if writeln!(
            stdout,
            "{} {} {} {hex}{more}",
            record.lsn,
            record.kind,
            record.payload.len()
        )
        .is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(problem) = tail_problem(&view) {
        eprintln!("warning: {problem}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One summary line when clean; otherwise the first problem with file and offset.
fn verify(dir: &Path) -> Result<ExitCode, WalError> {
    let view = scan(dir)?;
    // The scan checked every record; reading them again re-checks each CRC and LSN.
    let mut records = 0u64;
    for record in view.read_from(view.report().first_lsn) {
        record?;
        records += 1;
    }
    if let Some(problem) = tail_problem(&view) {
        eprintln!("error: {problem}");
        return Ok(ExitCode::from(1));
    }
    let report = view.report();
    let lsn_range = if records == 0 {
        "no records".to_owned()
    } else {
        format!("LSN {}..={}", report.first_lsn, report.next_lsn - 1)
    };
    println!(
        "ok: {} records ({lsn_range}) in {} segments, {}",
        records,
        report.segments.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn tail_problem(view: &LogView) -> Option<String> {
    let tail = view.report().tail.as_ref()?;
    Some(format!(
        "{}: torn tail at byte offset {}: {} ({} bytes up to the last non-zero byte; opening the log drops them)",
        tail.path.display(),
        tail.offset,
        tail.reason,
        tail.bytes_dropped
    ))
}
