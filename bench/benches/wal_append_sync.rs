//! WAL append + sync throughput per backend and batch size, next to a bare
//! `pwrite` + `fdatasync` loop measured in the same run.
//!
//! One iteration appends one batch of 64-byte records and syncs it once, so criterion's
//! time per iteration is the latency per sync and its throughput is records/s. The
//! `io_uring_pipelined` variant overlaps each batch's appends with the previous batch's
//! sync (`sync_submit`/`sync_wait`), so its time per iteration is the sync interval.
//! For each batch size the baseline and all backends run back to back, so they see the
//! same machine conditions: on a shared VM the sync latency swings with the neighbours.
//!
//! Each log lives in a temporary directory under the working directory (not /tmp, which
//! may be tmpfs). Zeroed spare segments are prepared before each measured run (untimed),
//! as a node keeps them ready; segment rolls themselves stay in the timing.
//!
//! Run: `cargo bench -p tricommit-bench --bench wal_append_sync`

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tricommit_wal::{
    SyncBackend, Wal, WalConfig, RECORD_HEADER_BYTES, SEGMENTS_SPARE_MAX, SEGMENT_BYTES_DEFAULT,
};

const PAYLOAD_BYTES: usize = 64;
const RECORD_BYTES: u64 = RECORD_HEADER_BYTES + PAYLOAD_BYTES as u64;
const BATCH_SIZES: [usize; 4] = [1, 64, 1024, 8192];
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
const WARM_UP_TIME: Duration = Duration::from_millis(500);
const SAMPLE_SIZE: usize = 20;
/// Size of the baseline's preallocated file; writes wrap around inside it.
const BASELINE_FILE_BYTES: u64 = 256 << 20;
const ZERO_FILL_WRITE_BYTES: usize = 4096;

fn work_dir() -> tempfile::TempDir {
    let here = std::env::current_dir().expect("working directory");
    tempfile::tempdir_in(here).expect("temporary directory under the working directory")
}

fn backend_name(backend: SyncBackend) -> &'static str {
    match backend {
        SyncBackend::Msync => "msync",
        SyncBackend::Fdatasync => "fdatasync",
        SyncBackend::IoUring => "io_uring",
    }
}

/// Prepares enough spare segments for `iters` batches, untimed.
fn reserve_for(wal: &mut Wal, batch: usize, iters: u64) {
    let segments_needed = (iters * batch as u64 * RECORD_BYTES).div_ceil(SEGMENT_BYTES_DEFAULT) + 1;
    wal.reserve_spares(segments_needed.min(u64::from(SEGMENTS_SPARE_MAX)) as u32)
        .expect("reserve spares");
}

/// Recycles the segments used, untimed, so the next run reuses them.
fn recycle(wal: &mut Wal) {
    let last = wal.last_lsn();
    wal.checkpoint(last).expect("checkpoint");
}

/// Appends and syncs `iters` batches, one sync each.
fn timed_batches(wal: &mut Wal, batch: usize, iters: u64) -> Duration {
    let payload = [0xA5u8; PAYLOAD_BYTES];
    reserve_for(wal, batch, iters);
    let start = Instant::now();
    for _ in 0..iters {
        wal.append_batch(std::iter::repeat_n((1u8, &payload[..]), batch))
            .expect("append batch");
        wal.sync().expect("sync");
    }
    let elapsed = start.elapsed();
    recycle(wal);
    elapsed
}

/// Like `timed_batches`, but keeps one io_uring sync in flight: each iteration appends a
/// batch while the previous batch's write+fdatasync runs, then waits for it and submits
/// its own. This is the overlap the engine's pipeline uses.
fn timed_batches_pipelined(wal: &mut Wal, batch: usize, iters: u64) -> Duration {
    let payload = [0xA5u8; PAYLOAD_BYTES];
    reserve_for(wal, batch, iters);
    let start = Instant::now();
    for _ in 0..iters {
        wal.append_batch(std::iter::repeat_n((1u8, &payload[..]), batch))
            .expect("append batch");
        wal.sync_wait().expect("sync wait");
        wal.sync_submit().expect("sync submit");
    }
    wal.sync_wait().expect("sync wait");
    let elapsed = start.elapsed();
    recycle(wal);
    elapsed
}

/// A preallocated file zeroed with 4 KiB writes, as the WAL prepares its segments.
fn baseline_file(dir: &Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join("baseline"))
        .expect("create baseline file");
    let zeros = [0u8; ZERO_FILL_WRITE_BYTES];
    for offset in (0..BASELINE_FILE_BYTES).step_by(ZERO_FILL_WRITE_BYTES) {
        file.write_all_at(&zeros, offset).expect("zero-fill");
    }
    file.sync_all().expect("fsync");
    file
}

/// One open log per variant, each in its own directory under the working directory.
struct Variant {
    name: &'static str,
    wal: Wal,
    pipelined: bool,
    _dir: tempfile::TempDir,
}

fn open_variants() -> Vec<Variant> {
    let variants = [
        (SyncBackend::Msync, false),
        (SyncBackend::Fdatasync, false),
        (SyncBackend::IoUring, false),
        (SyncBackend::IoUring, true),
    ];
    let mut opened = Vec::with_capacity(variants.len());
    for (backend, pipelined) in variants {
        let dir = work_dir();
        let config = WalConfig {
            sync: backend,
            ..WalConfig::default()
        };
        let (wal, recovery) = Wal::open(dir.path(), config).expect("open");
        if let Some(reason) = &recovery.backend_fallback_reason {
            eprintln!(
                "{}: fell back to {:?}: {reason}",
                backend_name(backend),
                recovery.backend
            );
        }
        let name = if pipelined {
            "io_uring_pipelined"
        } else {
            backend_name(backend)
        };
        opened.push(Variant {
            name,
            wal,
            pipelined,
            _dir: dir,
        });
    }
    opened
}

/// For each batch size: the bare baseline, then every backend, back to back.
fn wal_append_sync(criterion: &mut Criterion) {
    let baseline_dir = work_dir();
    let baseline = baseline_file(baseline_dir.path());
    let mut baseline_offset = 0u64;
    let mut variants = open_variants();
    for batch in BATCH_SIZES {
        let mut group = criterion.benchmark_group(format!("wal_append_sync/batch_{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        let batch_bytes = batch as u64 * RECORD_BYTES;
        let buffer = vec![0x5Au8; batch_bytes as usize];
        group.bench_function("bare_pwrite_fdatasync", |bencher| {
            bencher.iter(|| {
                if baseline_offset + batch_bytes > BASELINE_FILE_BYTES {
                    baseline_offset = 0;
                }
                baseline
                    .write_all_at(&buffer, baseline_offset)
                    .expect("pwrite");
                baseline.sync_data().expect("fdatasync");
                baseline_offset += batch_bytes;
            });
        });
        for variant in &mut variants {
            let (wal, pipelined) = (&mut variant.wal, variant.pipelined);
            group.bench_function(variant.name, |bencher| {
                if pipelined {
                    bencher.iter_custom(|iters| timed_batches_pipelined(wal, batch, iters));
                } else {
                    bencher.iter_custom(|iters| timed_batches(wal, batch, iters));
                }
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = wal_append_sync
}
criterion_main!(benches);
