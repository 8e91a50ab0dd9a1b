//! WAL append + sync throughput per backend and batch size, next to a bare
//! `pwrite` + `fdatasync` loop measured in the same run.
//!
//! One iteration appends one batch of 64-byte records and syncs it once, so criterion's
//! time per iteration is the latency per sync and its throughput is records/s. The log
//! lives in a temporary directory under the working directory (not /tmp, which may be
//! tmpfs). Zeroed spare segments are prepared before each measured run (untimed), as a
//! node would keep them ready; segment rolls themselves stay in the timing.
//!
//! Run: `cargo bench -p tricommit-bench --bench wal_append_sync`

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tricommit_wal::{SyncBackend, Wal, WalConfig, RECORD_HEADER_BYTES, SEGMENTS_SPARE_MAX, SEGMENT_BYTES_DEFAULT};

const PAYLOAD_BYTES: usize = 64;
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

/// Appends and syncs `iters` batches; spares for all of them are prepared first, untimed,
/// and the segments used are recycled afterwards, untimed.
fn timed_batches(wal: &mut Wal, batch: usize, iters: u64) -> Duration {
    let payload = [0xA5u8; PAYLOAD_BYTES];
    let batch_bytes = batch as u64 * (RECORD_HEADER_BYTES + PAYLOAD_BYTES as u64);
    let segments_needed = (iters * batch_bytes).div_ceil(SEGMENT_BYTES_DEFAULT) + 1;
    wal.reserve_spares(segments_needed.min(u64::from(SEGMENTS_SPARE_MAX)) as u32).expect("reserve spares");
    let start = Instant::now();
    for _ in 0..iters {
        wal.append_batch(std::iter::repeat_n((1u8, &payload[..]), batch)).expect("append batch");
        wal.sync().expect("sync");
    }
    let elapsed = start.elapsed();
    let last = wal.last_lsn();
    wal.checkpoint(last).expect("checkpoint");
    elapsed
}

fn wal_backends(criterion: &mut Criterion) {
    for backend in SyncBackend::ALL {
        let dir = work_dir();
        let config = WalConfig { sync: backend, ..WalConfig::default() };
        let (mut wal, recovery) = Wal::open(dir.path(), config).expect("open");
        if let Some(reason) = &recovery.backend_fallback_reason {
            eprintln!("{}: fell back to {:?}: {reason}", backend_name(backend), recovery.backend);
        }
        let mut group = criterion.benchmark_group(format!("wal_append_sync/{}", backend_name(backend)));
        for batch in BATCH_SIZES {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::from_parameter(batch), |bencher| {
                bencher.iter_custom(|iters| timed_batches(&mut wal, batch, iters));
            });
        }
        group.finish();
    }
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

/// The floor any WAL sync pays: `pwrite` of the batch's bytes, then `fdatasync`.
fn baseline_pwrite_fdatasync(criterion: &mut Criterion) {
    let dir = work_dir();
    let file = baseline_file(dir.path());
    let mut group = criterion.benchmark_group("wal_append_sync/bare_pwrite_fdatasync");
    for batch in BATCH_SIZES {
        let batch_bytes = batch * (RECORD_HEADER_BYTES as usize + PAYLOAD_BYTES);
        let buffer = vec![0x5Au8; batch_bytes];
        let mut offset = 0u64;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |bencher| {
            bencher.iter(|| {
                if offset + batch_bytes as u64 > BASELINE_FILE_BYTES {
                    offset = 0;
                }
                file.write_all_at(&buffer, offset).expect("pwrite");
                file.sync_data().expect("fdatasync");
                offset += batch_bytes as u64;
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = baseline_pwrite_fdatasync, wal_backends
}
criterion_main!(benches);
