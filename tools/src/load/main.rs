//! `tricommit-load`: the load generator.
//!
//! Until the engine runtime lands, the embedded default drives the part of the engine
//! that exists: one write-ahead log per participant site, each appending batches of
//! records and group-committing them with one sync per batch, as a participant does for
//! PREPARE and PRE-COMMIT. It reports what that costs on this machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tricommit_wal::{SyncBackend, Wal, WalConfig};

mod progress;

/// Upper bound of the sync latency histogram: anything slower is clamped and counted.
const SYNC_LATENCY_US_MAX: u64 = 60_000_000;
/// Bounds on the flags, so that a typo cannot ask for an absurd run.
const SITES_MAX: u32 = 64;
const BATCH_RECORDS_MAX: u32 = 65_536;
const RECORD_BYTES_MAX: u32 = 4_096;
/// How often the main thread refreshes the progress display.
const PROGRESS_TICK_MS: u64 = 100;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum SyncFlag {
    Msync,
    Fdatasync,
    IoUring,
}

impl SyncFlag {
    fn backend(self) -> SyncBackend {
        match self {
            SyncFlag::Msync => SyncBackend::Msync,
            SyncFlag::Fdatasync => SyncBackend::Fdatasync,
            SyncFlag::IoUring => SyncBackend::IoUring,
        }
    }
}

/// Load generator for tricommit (interim: the group-commit WAL workload).
#[derive(Parser, Clone, Debug, Serialize)]
#[command(name = "tricommit-load", version, about)]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Number of participant sites, each with its own log and thread.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=SITES_MAX as i64))]
    sites: u32,
    /// Records appended per batch (one sync per batch).
    #[arg(long, default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(1..=BATCH_RECORDS_MAX as i64))]
    batch_records: u32,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=RECORD_BYTES_MAX as i64))]
    record_bytes: u32,
    /// Sync backend; the WAL's default when not given.
    #[arg(long, value_enum)]
    sync: Option<SyncFlag>,
    /// Data directory (must be empty or absent). A fresh temporary one when not given.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the summary as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("data directory {0} is not empty; give an empty or new directory")]
    DataDirNotEmpty(PathBuf),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead log of site {site}: {source}")]
    Wal {
        site: u32,
        source: tricommit_wal::WalError,
    },
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

/// Counters the workers publish for the live display.
#[derive(Default)]
struct Live {
    records: AtomicU64,
    syncs: AtomicU64,
}

#[derive(Serialize)]
struct LatencyUs {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Serialize)]
struct Summary {
    workload: &'static str,
    records: u64,
    syncs: u64,
    duration_s: f64,
    records_per_s: f64,
    syncs_per_s: f64,
    sync_latency_us: LatencyUs,
    sync_backend: String,
    config: Args,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tricommit-load: error: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), LoadError> {
    if let Some(path) = &args.json {
        // Fail before the run, not after ten seconds of work.
        std::fs::write(path, b"{}").map_err(|source| LoadError::Output {
            path: path.clone(),
            source,
        })?;
    }
    let (root, _temporary) = data_root(args.data_dir.as_deref())?;
    let mut config = WalConfig::default();
    if let Some(flag) = args.sync {
        config.sync = flag.backend();
    }
    let summary = run_sites(&args, &root, config)?;
    print_summary(&summary);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
        std::fs::write(path, text).map_err(|source| LoadError::Output {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Returns the directory to run in, and the temporary directory guard if one was made.
fn data_root(
    requested: Option<&std::path::Path>,
) -> Result<(PathBuf, Option<tempfile::TempDir>), LoadError> {
    let Some(path) = requested else {
        let base = std::env::current_dir().map_err(|source| LoadError::DataDir {
            path: ".".into(),
            source,
        })?;
        // Under the working directory rather than /tmp, which may be tmpfs and would
        // make every sync free.
        let temporary = tempfile::Builder::new()
            .prefix(".tricommit-load-")
            .tempdir_in(&base)
            .map_err(|source| LoadError::DataDir {
                path: base.clone(),
                source,
            })?;
        return Ok((temporary.path().to_path_buf(), Some(temporary)));
    };
    let io_error = |source| LoadError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(LoadError::DataDirNotEmpty(path.to_path_buf()));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(io_error)?;
        }
        Err(error) => return Err(io_error(error)),
    }
    Ok((path.to_path_buf(), None))
}

fn run_sites(args: &Args, root: &std::path::Path, config: WalConfig) -> Result<Summary, LoadError> {
    let duration = Duration::from_secs(args.duration);
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, SYNC_LATENCY_US_MAX, 3)
            .expect("static bounds are valid"),
    ));
    let mut backend_name = format!("{:?}", config.sync);
    let mut workers = Vec::new();
    for site in 0..args.sites {
        let dir = root.join(format!("site-{site}"));
        let (wal, recovery) =
            Wal::open(&dir, config.clone()).map_err(|source| LoadError::Wal { site, source })?;
        backend_name = format!("{:?}", recovery.backend);
        let (live, stop, histogram) = (live.clone(), stop.clone(), histogram.clone());
        let (batch_records, record_bytes) = (args.batch_records, args.record_bytes as usize);
        workers.push(std::thread::spawn(move || {
            site_loop(wal, batch_records, record_bytes, &live, &stop, &histogram)
                .map_err(|source| LoadError::Wal { site, source })
        }));
    }
    let started = Instant::now();
    let mut progress = progress::Progress::new(duration);
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(PROGRESS_TICK_MS));
        let elapsed = started.elapsed();
        let records = live.records.load(Ordering::Relaxed);
        let syncs = live.syncs.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let status = format!(
            "{:.0} records/s, {:.0} syncs/s",
            records as f64 / seconds,
            syncs as f64 / seconds
        );
        progress.update(elapsed, &status);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().map_err(|_| LoadError::WorkerPanicked)??;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    progress.finish();
    let histogram = histogram.lock().expect("workers have exited");
    let records = live.records.load(Ordering::Relaxed);
    let syncs = live.syncs.load(Ordering::Relaxed);
    Ok(Summary {
        workload: "wal-group-commit",
        records,
        syncs,
        duration_s: elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        syncs_per_s: syncs as f64 / elapsed_s,
        sync_latency_us: LatencyUs {
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        },
        sync_backend: backend_name,
        config: args.clone(),
    })
}

/// One site: append a batch, sync it once, recycle what is durable, repeat until told to stop.
fn site_loop(
    mut wal: Wal,
    batch_records: u32,
    record_bytes: usize,
    live: &Live,
    stop: &AtomicBool,
    histogram: &Mutex<Histogram<u64>>,
) -> Result<(), tricommit_wal::WalError> {
    let payload = vec![0xA5u8; record_bytes];
    let mut local = Histogram::<u64>::new_with_bounds(1, SYNC_LATENCY_US_MAX, 3)
        .expect("static bounds are valid");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        wal.append_batch((0..batch_records).map(|_| (1u8, payload.as_slice())))?;
        let durable = wal.sync()?;
        let latency_us = (started.elapsed().as_micros() as u64).clamp(1, SYNC_LATENCY_US_MAX);
        local
            .record(latency_us)
            .expect("clamped into the histogram's range");
        // Keep disk use bounded: everything durable is final in this workload.
        wal.checkpoint(durable)?;
        live.records
            .fetch_add(u64::from(batch_records), Ordering::Relaxed);
        live.syncs.fetch_add(1, Ordering::Relaxed);
    }
    histogram
        .lock()
        .expect("no worker panics while holding it")
        .add(&local)
        .expect("same bounds");
    Ok(())
}

fn print_summary(summary: &Summary) {
    println!(
        "tricommit-load summary ({} workload, {} backend)",
        summary.workload, summary.sync_backend
    );
    println!("  duration         {:>12.2} s", summary.duration_s);
    println!("  records          {:>12}", summary.records);
    println!("  records/s        {:>12.0}", summary.records_per_s);
    println!("  syncs/s          {:>12.0}", summary.syncs_per_s);
    let latency = &summary.sync_latency_us;
    println!(
        "  batch latency    p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        latency.p50, latency.p99, latency.p999, latency.max
    );
}
