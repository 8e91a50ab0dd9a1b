//! WAL append + sync throughput per backend and batch size.

use criterion::{criterion_group, criterion_main, Criterion};

fn wal_append_sync(_c: &mut Criterion) {}

criterion_group!(benches, wal_append_sync);
criterion_main!(benches);
