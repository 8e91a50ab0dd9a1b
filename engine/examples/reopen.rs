//! Times a reopen of an existing data directory: `Engine::open` (every site's log
//! read back, recovery from snapshots and tails) and a clean shutdown, then prints the
//! figures and the directory's disk use.
//!
//! ```text
//! cargo run --release -p tricommit-engine --example reopen -- DATA_DIR [SEGMENT_MIB [LOG_SEGMENTS_MAX]]
//! ```
//! `SEGMENT_MIB` must be what the directory was written with (64 by default, as in
//! `tricommit-load`); `LOG_SEGMENTS_MAX` 0 opens without checkpoints (the default bound
//! otherwise).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use tricommit_engine::ledger::LedgerConfig;
use tricommit_engine::runtime::read_meta;
use tricommit_engine::{Engine, EngineConfig, ParticipantSpec};

fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: reopen DATA_DIR [SEGMENT_MIB]");
        return ExitCode::from(2);
    };
    let segment_mib: u64 = match args.next().map(|text| text.parse()) {
        None => 64,
        Some(Ok(mib)) => mib,
        Some(Err(_)) => {
            eprintln!("SEGMENT_MIB must be a number");
            return ExitCode::from(2);
        }
    };
    let log_segments_max = match args.next().map(|text| text.parse::<u32>()) {
        None => Some(tricommit_engine::runtime::LOG_SEGMENTS_MAX_DEFAULT),
        Some(Ok(0)) => None,
        Some(Ok(segments)) => Some(segments),
        Some(Err(_)) => {
            eprintln!("LOG_SEGMENTS_MAX must be a number");
            return ExitCode::from(2);
        }
    };
    let meta = match read_meta(&dir) {
        Ok(meta) => meta,
        Err(error) => {
            eprintln!("reopen: {error}");
            return ExitCode::from(2);
        }
    };
    let ledgers: Vec<LedgerConfig> = meta.participants.iter().filter_map(|p| *p).collect();
    let Some(first) = ledgers.first() else {
        eprintln!("reopen: the directory holds no ledger");
        return ExitCode::from(2);
    };
    let mut config = EngineConfig::ledgers(&dir, ledgers.len(), first.accounts, 0);
    config.participants = ledgers
        .iter()
        .copied()
        .map(ParticipantSpec::Ledger)
        .collect();
    config.replicas = meta.replicas;
    config.wal.segment_bytes = segment_mib << 20;
    config.log_segments_max = log_segments_max;
    config.compact_postings = log_segments_max.is_some();
    config.wal.record_bytes_max = config
        .wal
        .record_bytes_max
        .min((config.wal.segment_bytes / 2) as u32);
    let before = disk_bytes(&dir);
    let started = Instant::now();
    let engine = match Engine::open(config) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("reopen: {error}");
            return ExitCode::from(1);
        }
    };
    let opened = started.elapsed();
    if let Err(error) = engine.shutdown() {
        eprintln!("reopen: shutdown: {error}");
        return ExitCode::from(1);
    }
    println!(
        "open {:.3} s, open+shutdown {:.3} s, disk before {:.1} MiB, after {:.1} MiB",
        opened.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        before as f64 / (1 << 20) as f64,
        disk_bytes(&dir) as f64 / (1 << 20) as f64
    );
    ExitCode::SUCCESS
}
