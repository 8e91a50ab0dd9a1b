//! Where a transaction's latency goes (issue 14): the engine's per-stage histograms read
//! back after an in-process run, and a probe of the machine's own floor measured in the
//! same run, so that a tail can be told apart from what the platform imposes.
//!
//! The stages, in the order a transaction meets them:
//! - `batching` (per transaction): `Engine::submit` to its batch's close;
//! - `queued` (per batch): the batch's close to PREPARE leaving the coordinator;
//! - `prepare` (per batch): PREPARE out to the last participant's votes in (each
//!   participant's vote sync included; `votes_by_participant` splits it);
//! - `pre_commit` (per batch): votes in to every outcome known (3PC: the backups'
//!   synced PRE-COMMIT acknowledgements; 2PC: the decision's own sync);
//! - `completion` (per transaction): the outcome leaving the coordinator to the
//!   ticket's completion;
//! - `engine` (per transaction): `Engine::submit` to the ticket's completion;
//! - `client` (per transaction): the load's own figure, from the intended send time to
//!   the client seeing the outcome (coordinated omission corrected in open loop).
//!
//! The engine's figures come from its fixed-bucket histograms, so they are estimates
//! within one bucket (see `HistogramSnapshot::quantile`); `client` is exact.
//!
//! The probe runs beside the load on two threads of its own: every
//! `SYNC_PROBE_PERIOD_MS` a 4 KiB write and `fdatasync` to a file in the run's
//! directory (the disk's floor for one synced write), and every `WAKEUP_PROBE_PERIOD_US`
//! an unpark of a parked thread timed until it runs (the scheduler's floor for one
//! thread hop, under the same CPU load).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tricommit_engine::metrics::{EngineMetrics, HistogramSnapshot, Phase, Stage};

/// How often the sync probe writes and syncs 4 KiB: light next to the engine's
/// thousands of syncs per second.
pub const SYNC_PROBE_PERIOD_MS: u64 = 5;
/// How often the wake-up probe unparks its sleeper.
pub const WAKEUP_PROBE_PERIOD_US: u64 = 1_000;
/// The probe file's size: the 4 KiB writes cycle through it.
const PROBE_FILE_BYTES: u64 = 1 << 20;
const PROBE_WRITE_BYTES: usize = 4096;
/// Longest a wake-up is waited for before the sample counts as lost (the sleeper
/// re-parks in steps of this, so a missed unpark cannot hang the probe).
const WAKEUP_WAIT_MS_MAX: u64 = 100;

/// One stage's quantiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StageUs {
    pub stage: String,
    /// What one observation is: `txn`, `batch`, `sync` or `sample`.
    pub per: &'static str,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

/// `latency_breakdown_us` of the `--json` summary.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub stages: Vec<StageUs>,
    /// Each site's WAL sync, submission to completion.
    pub wal_sync_by_site: Vec<StageUs>,
    /// Each participant's votes: PREPARE out at the coordinator to its votes in.
    pub votes_by_participant: Vec<StageUs>,
    /// The machine's floor measured during the run: `sync_4k` and `wakeup`.
    pub probe: Vec<StageUs>,
}

fn from_snapshot(stage: String, per: &'static str, snapshot: &HistogramSnapshot) -> StageUs {
    let at = |q: f64| snapshot.quantile(q).unwrap_or(0);
    StageUs {
        stage,
        per,
        count: snapshot.count,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn from_hdr(stage: &str, per: &'static str, histogram: &Histogram<u64>) -> StageUs {
    StageUs {
        stage: stage.to_owned(),
        per,
        count: histogram.len(),
        p50: histogram.value_at_quantile(0.50),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
    }
}

impl Breakdown {
    /// Reads the engine's histograms after a run; `client` is the run's own latency
    /// histogram and `probe` what the floor probe measured.
    pub fn read(metrics: &EngineMetrics, client: &Histogram<u64>, probe: &ProbeResult) -> Self {
        let stage = |stage: Stage, per| {
            from_snapshot(
                stage.label().to_owned(),
                per,
                &metrics.stage_us[stage as usize].snapshot(),
            )
        };
        let phase = |phase: Phase| {
            from_snapshot(
                phase.label().to_owned(),
                "batch",
                &metrics.phase_us[phase as usize].snapshot(),
            )
        };
        let stages = vec![
            stage(Stage::Batching, "txn"),
            stage(Stage::Queued, "batch"),
            phase(Phase::Prepare),
            phase(Phase::PreCommit),
            stage(Stage::Completion, "txn"),
            from_snapshot(
                "engine".to_owned(),
                "txn",
                &metrics.txn_latency_us.snapshot(),
            ),
            from_hdr("client", "txn", client),
        ];
        let (replicas, participants) = metrics.topology();
        let site_name = |index: usize| {
            if index < replicas {
                format!("replica-{index}")
            } else {
                format!("participant-{}", index - replicas)
            }
        };
        let wal_sync_by_site = (0..replicas + participants)
            .map(|index| {
                from_snapshot(
                    site_name(index),
                    "sync",
                    &metrics.site(index).wal_sync_duration_us.snapshot(),
                )
            })
            .collect();
        let votes_by_participant = (replicas..replicas + participants)
            .map(|index| {
                from_snapshot(
                    site_name(index),
                    "batch",
                    &metrics.site(index).vote_latency_us.snapshot(),
                )
            })
            .collect();
        Breakdown {
            stages,
            wal_sync_by_site,
            votes_by_participant,
            probe: vec![
                from_hdr("sync_4k", "sample", &probe.sync_us),
                from_hdr("wakeup", "sample", &probe.wakeup_us),
            ],
        }
    }

    /// The breakdown as report rows: one per stage, site and probe.
    pub fn rows(&self) -> Vec<(String, String)> {
        let line = |row: &StageUs| {
            format!(
                "p50 {} us, p99 {} us, p99.9 {} us ({} per {})",
                row.p50, row.p99, row.p999, row.count, row.per
            )
        };
        let mut rows = Vec::new();
        for row in &self.stages {
            rows.push((format!("stage {}", row.stage), line(row)));
        }
        for row in &self.votes_by_participant {
            rows.push((format!("votes {}", row.stage), line(row)));
        }
        for row in &self.wal_sync_by_site {
            rows.push((format!("wal sync {}", row.stage), line(row)));
        }
        for row in &self.probe {
            rows.push((format!("probe {}", row.stage), line(row)));
        }
        rows
    }
}

/// What the floor probe measured.
pub struct ProbeResult {
    pub sync_us: Histogram<u64>,
    pub wakeup_us: Histogram<u64>,
}

/// The running floor probe; [`FloorProbe::stop`] ends it and returns its figures.
pub struct FloorProbe {
    stop: Arc<AtomicBool>,
    sync: Option<JoinHandle<Histogram<u64>>>,
    wakeup: Option<JoinHandle<()>>,
    sleeper: Option<JoinHandle<()>>,
    /// The sleeper's samples, folded in when it stops.
    wakeup_us: Arc<Mutex<Histogram<u64>>>,
}

impl FloorProbe {
    /// Starts both probes; the sync probe writes `dir/floor-probe`, removed at stop.
    /// A probe file that cannot be made leaves the sync probe without samples (the
    /// breakdown then shows a count of 0), never fails the run.
    pub fn start(dir: &Path) -> std::io::Result<FloorProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let measured = Arc::new(Mutex::new(crate::driver::histogram()));
        // Built first, so that a failed spawn below drops it, and its `Drop` stops the
        // threads already started.
        let mut probe = FloorProbe {
            stop: stop.clone(),
            sync: None,
            wakeup: None,
            sleeper: None,
            wakeup_us: measured.clone(),
        };
        let path = dir.join("floor-probe");
        let file = probe_file(&path);
        probe.sync = Some({
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tc-probe-sync".into())
                .spawn(move || {
                    let histogram = match file {
                        Ok(file) => sync_probe(&file, &stop),
                        Err(_) => crate::driver::histogram(),
                    };
                    let _ = std::fs::remove_file(&path);
                    histogram
                })?
        });
        // The sleeper parks; the waker stamps the time, unparks it and the sleeper
        // records how long it took to run. The stamp is the waker's `Instant` as
        // nanoseconds since `origin`, 0 when no wake-up is pending.
        let origin = Instant::now();
        let stamp = Arc::new(AtomicU64::new(0));
        let sleeper = {
            let (stop, stamp, measured) = (stop.clone(), stamp.clone(), measured.clone());
            std::thread::Builder::new()
                .name("tc-probe-sleep".into())
                .spawn(move || {
                    let mut local = crate::driver::histogram();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(Duration::from_millis(WAKEUP_WAIT_MS_MAX));
                        let sent_ns = stamp.swap(0, Ordering::AcqRel);
                        if sent_ns == 0 {
                            continue;
                        }
                        let woke_ns = origin.elapsed().as_nanos() as u64;
                        let _ = local.record(
                            (woke_ns.saturating_sub(sent_ns) / 1_000)
                                .clamp(1, crate::driver::LATENCY_US_MAX),
                        );
                    }
                    if let Ok(mut shared) = measured.lock() {
                        let _ = shared.add(&local);
                    }
                })?
        };
        let sleeper_thread = sleeper.thread().clone();
        probe.sleeper = Some(sleeper);
        probe.wakeup = Some({
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tc-probe-wake".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(WAKEUP_PROBE_PERIOD_US));
                        let now_ns = (origin.elapsed().as_nanos() as u64).max(1);
                        stamp.store(now_ns, Ordering::Release);
                        sleeper_thread.unpark();
                    }
                    sleeper_thread.unpark();
                })?
        });
        Ok(probe)
    }

    /// Stops the probes and returns what they measured.
    pub fn stop(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::Relaxed);
        let sync_us = self
            .sync
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_else(crate::driver::histogram);
        if let Some(handle) = self.wakeup.take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.sleeper.take() {
            let _ = handle.join();
        }
        let wakeup_us = self
            .wakeup_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ProbeResult { sync_us, wakeup_us }
    }
}

impl Drop for FloorProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The probe's file: preallocated and zero-filled, so that its synced writes are pure
/// data writes, as the WAL's are.
fn probe_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; PROBE_FILE_BYTES as usize];
    file.write_all_at(&zeros, 0)?;
    file.sync_all()?;
    Ok(file)
}

fn sync_probe(file: &File, stop: &AtomicBool) -> Histogram<u64> {
    let mut histogram = crate::driver::histogram();
    let page = [0x5Au8; PROBE_WRITE_BYTES];
    let mut offset = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(SYNC_PROBE_PERIOD_MS));
        let started = Instant::now();
        if file.write_all_at(&page, offset).is_err() || file.sync_data().is_err() {
            break;
        }
        let _ = histogram
            .record((started.elapsed().as_micros() as u64).clamp(1, crate::driver::LATENCY_US_MAX));
        offset = (offset + PROBE_WRITE_BYTES as u64) % PROBE_FILE_BYTES;
    }
    histogram
}
