//! Recovery scan speed over a 1 GiB log of 64-byte records.
//!
//! The log is written once (untimed) in a temporary directory under the working
//! directory. Each iteration maps and scans every segment, checking every header,
//! record CRC and LSN, exactly as `Wal::open` does before it repairs the tail.
//! `open_1GiB` runs the whole `Wal::open` on the same log. Throughput is in bytes of
//! segment files scanned. The page cache is warm after the
//! first pass, so this measures the CPU side of recovery; a cold start adds the disk.
//!
//! Run: `cargo bench -p tricommit-bench --bench wal_recovery`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tricommit_wal::{
    scan, SyncBackend, Wal, WalConfig, RECORD_HEADER_BYTES, SEGMENT_BYTES_DEFAULT,
    SEGMENT_HEADER_BYTES,
};

const LOG_BYTES: u64 = 1 << 30;
const PAYLOAD_BYTES: usize = 64;
const BATCH_RECORDS: usize = 8192;
const MEASUREMENT_TIME: Duration = Duration::from_secs(8);
const SAMPLE_SIZE: usize = 10;

/// Fills whole segments until the log's files total `LOG_BYTES`.
fn write_log(dir: &std::path::Path) -> u64 {
    let config = WalConfig {
        sync: SyncBackend::Fdatasync,
        ..WalConfig::default()
    };
    let (mut wal, _) = Wal::open(dir, config).expect("open");
    let segments = LOG_BYTES / SEGMENT_BYTES_DEFAULT;
    let records_per_segment = (SEGMENT_BYTES_DEFAULT - SEGMENT_HEADER_BYTES)
        / (RECORD_HEADER_BYTES + PAYLOAD_BYTES as u64);
    let payload = [0x3Cu8; PAYLOAD_BYTES];
    let mut records_left = segments * records_per_segment;
    while records_left > 0 {
        let batch = records_left.min(BATCH_RECORDS as u64) as usize;
        wal.append_batch(std::iter::repeat_n((7u8, &payload[..]), batch))
            .expect("append");
        wal.sync().expect("sync");
        records_left -= batch as u64;
    }
    segments * SEGMENT_BYTES_DEFAULT
}

fn recovery_scan(criterion: &mut Criterion) {
    let here = std::env::current_dir().expect("working directory");
    let dir = tempfile::tempdir_in(here).expect("temporary directory under the working directory");
    let log_bytes = write_log(dir.path());
    let records = scan(dir.path()).expect("scan").report().records();
    eprintln!("log: {log_bytes} bytes in segment files, {records} records");
    let mut group = criterion.benchmark_group("wal_recovery");
    group.throughput(Throughput::Bytes(log_bytes));
    group.bench_function("scan_1GiB", |bencher| {
        bencher.iter(|| {
            let view = scan(dir.path()).expect("scan");
            assert_eq!(view.report().records(), records);
        });
    });
    // The whole `Wal::open`: the same scan, plus the tail sync and spare check.
    group.bench_function("open_1GiB", |bencher| {
        bencher.iter(|| {
            let config = WalConfig {
                sync: SyncBackend::Fdatasync,
                ..WalConfig::default()
            };
            let (_wal, recovery) = Wal::open(dir.path(), config).expect("open");
            assert_eq!(recovery.records, records);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(MEASUREMENT_TIME).sample_size(SAMPLE_SIZE);
    targets = recovery_scan
}
criterion_main!(benches);
