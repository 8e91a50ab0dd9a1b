//! A lock-free histogram with fixed buckets, and a local one that batches observations.
//!
//! Why not a library histogram: the hot path must cost one relaxed `fetch_add` per
//! bucket touched, with no lock and no registry lookup, and the exposition reads the
//! same atomics at scrape time. [`LocalHistogram`] goes further for per-transaction
//! values: a stage counts a whole chunk into plain integers and folds it into the shared
//! atomics once, so the shared cache lines are touched per chunk, not per transaction.

use std::sync::atomic::{AtomicU64, Ordering};

/// Most buckets a histogram may have (the `+Inf` bucket included); bounds the exposition.
pub const HISTOGRAM_BUCKETS_MAX: usize = 32;

/// Upper bounds, in microseconds, for latencies: 25 µs to 10 s. Finer below 25 ms,
/// where the engine's stages live, so that a quantile read from the buckets
/// ([`HistogramSnapshot::quantile`]) is within about a third of its true value; every
/// bound the alert rules name (10, 50, 100, 250, 500 ms) is kept.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    25, 50, 75, 100, 150, 200, 250, 350, 500, 750, 1_000, 1_500, 2_000, 2_500, 3_500, 5_000, 7_500,
    10_000, 15_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];
/// Upper bounds, in bytes, for WAL sync sizes: 512 B to 64 MiB, powers of four.
pub const BYTES_BOUNDS: &[u64] = &[
    512,
    2 << 10,
    8 << 10,
    32 << 10,
    128 << 10,
    512 << 10,
    2 << 20,
    8 << 20,
    32 << 20,
    64 << 20,
];
/// Upper bounds, in transactions, for batch sizes: powers of two up to 8192.
pub const BATCH_TXNS_BOUNDS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192,
];

const _: () = assert!(LATENCY_BOUNDS_US.len() < HISTOGRAM_BUCKETS_MAX);
const _: () = assert!(BYTES_BOUNDS.len() < HISTOGRAM_BUCKETS_MAX);
const _: () = assert!(BATCH_TXNS_BOUNDS.len() < HISTOGRAM_BUCKETS_MAX);

/// A histogram whose buckets are atomics. Any thread may observe; one relaxed
/// `fetch_add` on the bucket, the sum and the count each. A scrape that races with an
/// observation may see the count without the bucket (or the other way round) for one
/// sample; every counter only grows, so the next scrape is consistent again.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Strictly increasing upper bounds (inclusive); a value above the last lands in the
    /// `+Inf` bucket, `buckets[bounds.len()]`.
    bounds: &'static [u64],
    /// Per-bucket (not cumulative) counts; `bounds.len() + 1` of them.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// What a scrape reads from a histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// Per-bucket counts, the last one being `+Inf`.
    pub buckets: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl HistogramSnapshot {
    /// The value below which a fraction `q` (0..=1) of the observations lie, estimated
    /// from the buckets: linear within the bucket that holds it (from the previous
    /// bound, or 0, to its own). An estimate within one bucket's width; the `+Inf`
    /// bucket answers its lower bound, the last finite one. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let counted: u64 = self.buckets.iter().sum();
        let rank = (q.clamp(0.0, 1.0) * counted as f64).ceil().max(1.0);
        let mut below = 0u64;
        for (index, &in_bucket) in self.buckets.iter().enumerate() {
            if in_bucket == 0 || ((below + in_bucket) as f64) < rank {
                below += in_bucket;
                continue;
            }
            let lower = if index == 0 {
                0
            } else {
                self.bounds[index - 1]
            };
            let Some(&upper) = self.bounds.get(index) else {
                return Some(lower);
            };
            let within = (rank - below as f64) / in_bucket as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        self.bounds.last().copied()
    }
}

impl AtomicHistogram {
    /// An empty histogram over `bounds`, which must be strictly increasing and shorter
    /// than [`HISTOGRAM_BUCKETS_MAX`] (checked: the bounds are the crate's constants).
    pub fn new(bounds: &'static [u64]) -> AtomicHistogram {
        assert!(bounds.len() < HISTOGRAM_BUCKETS_MAX, "too many buckets");
        assert!(
            bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "bounds must increase"
        );
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// The bucket a value falls in: the first bound at or above it.
    fn bucket_of(&self, value: u64) -> usize {
        self.bounds.partition_point(|&bound| bound < value)
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    /// Records `times` observations of one value (a whole chunk that shares it).
    pub fn observe_n(&self, value: u64, times: u64) {
        if times == 0 {
            return;
        }
        let bucket = self.bucket_of(value);
        self.buckets[bucket].fetch_add(times, Ordering::Relaxed);
        self.sum
            .fetch_add(value.saturating_mul(times), Ordering::Relaxed);
        self.count.fetch_add(times, Ordering::Relaxed);
    }

    /// Reads every bucket, for the exposition.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram of plain integers that one thread fills and then folds into an
/// [`AtomicHistogram`] with the same bounds, touching each non-empty bucket once.
#[derive(Debug)]
pub struct LocalHistogram {
    bounds: &'static [u64],
    buckets: [u64; HISTOGRAM_BUCKETS_MAX],
    sum: u64,
    count: u64,
}

impl LocalHistogram {
    pub fn new(bounds: &'static [u64]) -> LocalHistogram {
        assert!(bounds.len() < HISTOGRAM_BUCKETS_MAX, "too many buckets");
        LocalHistogram {
            bounds,
            buckets: [0; HISTOGRAM_BUCKETS_MAX],
            sum: 0,
            count: 0,
        }
    }

    /// Records one value locally.
    pub fn observe(&mut self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// Adds everything recorded to `into` and starts over.
    pub fn flush_into(&mut self, into: &AtomicHistogram) {
        // By value: a `const` slice need not have one address (debug builds give each
        // codegen unit its own copy), so comparing pointers failed on equal bounds.
        debug_assert!(
            self.bounds == into.bounds,
            "bounds of a local and a shared histogram differ"
        );
        if self.count == 0 {
            return;
        }
        for (local, shared) in self.buckets[..=self.bounds.len()]
            .iter_mut()
            .zip(into.buckets.iter())
        {
            if *local != 0 {
                shared.fetch_add(*local, Ordering::Relaxed);
                *local = 0;
            }
        }
        into.sum.fetch_add(self.sum, Ordering::Relaxed);
        into.count.fetch_add(self.count, Ordering::Relaxed);
        self.sum = 0;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        // Proves the estimate lands inside the bucket that holds the rank, moves
        // linearly through it, and that the `+Inf` bucket answers the last bound.
        let histogram = AtomicHistogram::new(&[10, 20, 30]);
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        for value in [5, 15, 15, 15] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.quantile(0.25), Some(10));
        assert_eq!(snapshot.quantile(0.5), Some(13));
        assert_eq!(snapshot.quantile(1.0), Some(20));
        histogram.observe(1_000);
        assert_eq!(histogram.snapshot().quantile(1.0), Some(30));
        assert_eq!(histogram.snapshot().quantile(0.0), Some(10));
    }

    #[test]
    fn values_land_in_the_first_bucket_at_or_above_them() {
        // Proves that bounds are inclusive upper bounds and that values above the last
        // bound land in `+Inf`, as the Prometheus `le` label promises.
        let histogram = AtomicHistogram::new(&[10, 20, 30]);
        for value in [0, 10, 11, 20, 30, 31, 1_000] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![2, 2, 1, 2]);
        assert_eq!(snapshot.count, 7);
        assert_eq!(snapshot.sum, 10 + 11 + 20 + 30 + 31 + 1_000);
    }

    #[test]
    fn a_local_histogram_folds_into_the_same_counts_as_direct_observations() {
        // Proves that batching observations locally loses nothing and that a flushed
        // local histogram starts over (a second flush adds nothing).
        let direct = AtomicHistogram::new(LATENCY_BOUNDS_US);
        let folded = AtomicHistogram::new(LATENCY_BOUNDS_US);
        let mut local = LocalHistogram::new(LATENCY_BOUNDS_US);
        for value in (0..5_000u64).map(|i| i * i % 12_000_000) {
            direct.observe(value);
            local.observe(value);
        }
        local.flush_into(&folded);
        local.flush_into(&folded);
        assert_eq!(direct.snapshot(), folded.snapshot());
    }

    #[test]
    fn concurrent_observers_lose_no_count() {
        // Proves that the histogram is safe to share: four threads observing at once
        // leave exactly the sum of their counts.
        let histogram = std::sync::Arc::new(AtomicHistogram::new(BATCH_TXNS_BOUNDS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for value in 0..10_000u64 {
                        histogram.observe_n(value % 9_000, 2);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("observer thread");
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 80_000);
        assert_eq!(snapshot.buckets.iter().sum::<u64>(), 80_000);
    }
}
