//! Queue hops between two threads: one-item latency and batched throughput.
//!
//! Latency is a ping-pong: the bench thread pushes one item onto a hop, an echo thread
//! waiting on it (spin briefly, then park) pushes it back on a second hop, and the bench
//! thread waits for it the same way. Criterion's time per iteration is one round trip,
//! that is two hops; half of it is the one-item hop latency. The `park_only` variant
//! spins zero rounds, so every hop pays a park/unpark: the cost the short spin avoids.
//!
//! Throughput moves items from a producer thread to a consumer that pops up to
//! `POP_ITEMS_MAX` at a time; criterion reports items per second.
//!
//! Run: `cargo bench -p tricommit-bench --bench queue_hop`

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tricommit_engine::pipeline::bounds::SPIN_ROUNDS_DEFAULT;
use tricommit_engine::pipeline::{mpsc, spsc, Doorbell, PushError, Received, WaitConfig};

const MEASUREMENT_TIME: Duration = Duration::from_secs(3);
const WARM_UP_TIME: Duration = Duration::from_millis(500);
const SAMPLE_SIZE: usize = 20;
/// Capacity of the hops under test, in items.
const HOP_CAPACITY: usize = 4096;
/// Items a consumer takes per batch pop in the throughput benches.
const POP_ITEMS_MAX: usize = 1024;
/// Items the producer hands over per `push_from` in the batched SPSC bench.
const PUSH_RUN_ITEMS: usize = 256;

fn doorbell(spin_rounds: u32) -> Arc<Doorbell> {
    let config = WaitConfig::new(spin_rounds, 100_000).expect("valid wait config");
    Arc::new(Doorbell::new(config))
}

/// `iters` SPSC round trips with an echo thread; returns the time they took.
fn spsc_round_trips(iters: u64, spin_rounds: u32) -> Duration {
    let (mut ping, mut ping_receiver) =
        spsc::channel::<u64>(HOP_CAPACITY, doorbell(spin_rounds)).expect("hop");
    let (mut pong_sender, mut pong) =
        spsc::channel::<u64>(HOP_CAPACITY, doorbell(spin_rounds)).expect("hop");
    let echo = thread::spawn(move || {
        let mut batch = Vec::with_capacity(1);
        while let Received::Items(_) = ping_receiver.wait_batch(&mut batch, 1, None) {
            for item in batch.drain(..) {
                let _ = pong_sender.push(item);
            }
        }
    });
    let mut batch = Vec::with_capacity(1);
    let start = Instant::now();
    for item in 0..iters {
        let _ = ping.push(item);
        let _ = pong.wait_batch(&mut batch, 1, None);
        black_box(batch.pop());
    }
    let elapsed = start.elapsed();
    drop(ping);
    let _ = echo.join();
    elapsed
}

/// `iters` MPSC round trips with an echo thread; returns the time they took.
fn mpsc_round_trips(iters: u64) -> Duration {
    let (ping, mut ping_receiver) =
        mpsc::channel::<u64>(HOP_CAPACITY, doorbell(SPIN_ROUNDS_DEFAULT)).expect("hop");
    let (pong_sender, mut pong) =
        mpsc::channel::<u64>(HOP_CAPACITY, doorbell(SPIN_ROUNDS_DEFAULT)).expect("hop");
    let echo = thread::spawn(move || {
        let mut batch = Vec::with_capacity(1);
        while let Received::Items(_) = ping_receiver.wait_batch(&mut batch, 1, None) {
            for item in batch.drain(..) {
                let _ = pong_sender.push(item);
            }
        }
    });
    let mut batch = Vec::with_capacity(1);
    let start = Instant::now();
    for item in 0..iters {
        let _ = ping.push(item);
        let _ = pong.wait_batch(&mut batch, 1, None);
        black_box(batch.pop());
    }
    let elapsed = start.elapsed();
    drop(ping);
    let _ = echo.join();
    elapsed
}

fn hop_latency(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("hop_round_trip");
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    group.bench_function("spsc", |bencher| {
        bencher.iter_custom(|iters| spsc_round_trips(iters, SPIN_ROUNDS_DEFAULT))
    });
    group.bench_function("spsc_park_only", |bencher| {
        bencher.iter_custom(|iters| spsc_round_trips(iters, 0))
    });
    group.bench_function("mpsc", |bencher| bencher.iter_custom(mpsc_round_trips));
    group.finish();
}

/// Moves `items` through an SPSC hop, pushed in runs of `PUSH_RUN_ITEMS`.
fn spsc_stream(items: u64) -> Duration {
    let (mut sender, mut receiver) =
        spsc::channel::<u64>(HOP_CAPACITY, doorbell(SPIN_ROUNDS_DEFAULT)).expect("hop");
    let start = Instant::now();
    let producer = thread::spawn(move || {
        let mut run = Vec::with_capacity(PUSH_RUN_ITEMS);
        let mut next = 0;
        while next < items || !run.is_empty() {
            while run.len() < PUSH_RUN_ITEMS && next < items {
                run.push(next);
                next += 1;
            }
            if sender.push_from(&mut run).unwrap_or(0) == 0 {
                thread::yield_now();
            }
        }
    });
    drain(|batch| receiver.wait_batch(batch, POP_ITEMS_MAX, None));
    let _ = producer.join();
    start.elapsed()
}

/// Moves `items` through an MPSC hop from one producer, one push at a time.
fn mpsc_stream(items: u64) -> Duration {
    let (sender, mut receiver) =
        mpsc::channel::<u64>(HOP_CAPACITY, doorbell(SPIN_ROUNDS_DEFAULT)).expect("hop");
    let start = Instant::now();
    let producer = thread::spawn(move || {
        for mut item in 0..items {
            while let Err(PushError::Full(back)) = sender.push(item) {
                item = back;
                thread::yield_now();
            }
        }
    });
    drain(|batch| receiver.wait_batch(batch, POP_ITEMS_MAX, None));
    let _ = producer.join();
    start.elapsed()
}

/// Pops batches until the hop closes.
fn drain(mut wait_batch: impl FnMut(&mut Vec<u64>) -> Received) {
    let mut batch = Vec::with_capacity(POP_ITEMS_MAX);
    while let Received::Items(_) | Received::TimedOut = wait_batch(&mut batch) {
        black_box(&batch);
        batch.clear();
    }
}

fn hop_throughput(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("hop_throughput");
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    group.throughput(Throughput::Elements(1));
    group.bench_function("spsc_batched", |bencher| bencher.iter_custom(spsc_stream));
    group.bench_function("mpsc_batched_pop", |bencher| {
        bencher.iter_custom(mpsc_stream)
    });
    group.finish();
}

criterion_group!(benches, hop_latency, hop_throughput);
criterion_main!(benches);
