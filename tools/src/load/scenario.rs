//! The scenarios: what the main thread does to the load while the clients send it.
//!
//! - `steady`: a fixed rate (`--rate`, or closed loop) for `--duration`.
//! - `sustained`: the same, judged on how stable throughput and p99 stay.
//! - `ramp`: open loop at 100, 1k, 10k, ... transactions per second, `--step-seconds`
//!   each, until p99 exceeds `--p99-target-us` or the engine falls behind the rate;
//!   reports the highest stable rate. Ignores `--duration`.
//! - `burst`: a baseline rate, 10× that rate for `--burst-seconds`, the baseline again;
//!   reports the peak, the latency spike and the time until p99 recovers.
//! - `mixed`: 2 to 4 ledgers per transaction and 10% high-priority payments.
//! - `failure`: halfway through, the engine is crashed (dropped without shutdown,
//!   nothing more synced) and reopened; reports the recovery time, the time to the first
//!   new commit and how many acknowledged commits were lost (it must be 0).

use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tricommit_engine::runtime::EngineCounters;
use tricommit_engine::EngineConfig;

use crate::driver::{self, Shared};
use crate::progress::Progress;
use crate::report::Sample;
use crate::{summary, Args, LoadError};

/// How often the display and the report's time series are sampled.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;
// A sample and a plain progress line fall due at the same whole intervals (see
// `Sampler::next_sample_at`).
const _: () = assert!(SAMPLE_INTERVAL_MS == crate::progress::PLAIN_LINE_INTERVAL_MS);
/// How often the main thread wakes to refresh the display.
const PROGRESS_TICK_MS: u64 = 100;
/// Ramp steps go 1, 2, 5, 10, 20, 50, ... times the first rate, up to the last one.
const RAMP_RATE_MAX: u64 = 100_000_000;
const RAMP_RATE_FIRST: u64 = 100;
const RAMP_FACTORS_PER_DECADE: [u64; 3] = [1, 2, 5];
/// A ramp step is stable while the engine commits at least this share of the rate.
const RAMP_KEEP_UP_PERCENT: u64 = 90;
/// The burst multiplies the baseline rate by this.
const BURST_FACTOR: u64 = 10;
/// The baseline rate of `burst` when `--rate` is not given.
const BURST_BASELINE_DEFAULT: u64 = 10_000;
/// After a burst, p99 counts as recovered within this factor of the baseline p99.
const BURST_RECOVERED_FACTOR: u64 = 2;
/// How long the failure scenario waits for the reopened engine's first commit.
const FIRST_COMMIT_WAIT_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Steady,
    Sustained,
    Ramp,
    Burst,
    Mixed,
    Failure,
}

/// Samples the counters once per interval and keeps the display current.
pub struct Sampler {
    progress: Progress,
    started: Instant,
    last: EngineCounters,
    last_at: Instant,
    /// When the next sample is due, counted from `started`: a whole number of sample
    /// intervals, the same boundaries at which a plain progress line is printed, so that
    /// every line shows the second that just ended (a sample timed from the previous one
    /// drifts late, and the line at the end of a run repeated the second before).
    next_sample_at: Duration,
    status: String,
    pub samples: Vec<Sample>,
    /// Latencies since the last `mark`, for judging one ramp step or burst phase.
    pub window: Histogram<u64>,
}

impl Sampler {
    pub fn new(shared: &Shared, expected: Duration) -> Sampler {
        let now = Instant::now();
        Sampler {
            progress: Progress::new(expected),
            started: now,
            last: shared.counters(),
            last_at: now,
            next_sample_at: Duration::from_millis(SAMPLE_INTERVAL_MS),
            status: String::from("starting"),
            samples: Vec::new(),
            window: driver::histogram(),
        }
    }

    /// Sleeps until `deadline`, sampling and updating the display on the way.
    pub fn run_until(&mut self, shared: &Shared, deadline: Instant) {
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(PROGRESS_TICK_MS)));
            self.tick(shared);
        }
    }

    fn tick(&mut self, shared: &Shared) {
        let now = Instant::now();
        let elapsed = now - self.started;
        if elapsed >= self.next_sample_at {
            self.next_sample_at = next_boundary(elapsed, SAMPLE_INTERVAL_MS);
            let counters = shared.counters();
            let sample = summary::sample(
                shared,
                &self.last,
                &counters,
                now - self.last_at,
                now - self.started,
                &mut self.window,
            );
            self.status = format!(
                "{:.0} committed/s, p99 {} us, batch {:.0}; {}",
                sample.committed_per_s,
                sample.p99_us,
                sample.batch_txns_avg,
                crate::progress::sync_status(&counters)
            );
            self.samples.push(sample);
            (self.last, self.last_at) = (counters, now);
        }
        self.progress.update(elapsed, &self.status);
    }

    /// Starts a new judging window.
    pub fn mark(&mut self) {
        self.window.reset();
    }

    pub fn finish(self) -> Vec<Sample> {
        self.progress.finish();
        self.samples
    }
}

/// The first whole multiple of `interval_ms` after `elapsed`.
fn next_boundary(elapsed: Duration, interval_ms: u64) -> Duration {
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(
        (elapsed_ms / interval_ms)
            .saturating_add(1)
            .saturating_mul(interval_ms),
    )
}

/// Runs the scenario's schedule on the main thread and returns its own figures.
pub fn control(
    args: &Args,
    shared: &Shared,
    config: &EngineConfig,
    sampler: &mut Sampler,
) -> Result<Value, LoadError> {
    let duration = Duration::from_secs(args.duration);
    match args.scenario {
        Scenario::Steady | Scenario::Mixed => {
            sampler.run_until(shared, Instant::now() + duration);
            Ok(json!({}))
        }
        Scenario::Sustained => {
            sampler.run_until(shared, Instant::now() + duration);
            Ok(sustained_figures(&sampler.samples))
        }
        Scenario::Ramp => Ok(ramp(args, shared, sampler)),
        Scenario::Burst => Ok(burst(args, shared, sampler)),
        Scenario::Failure => failure(shared, config, sampler, duration),
    }
}

/// Throughput and p99 stability over the run, leaving out the first (warm-up) second.
fn sustained_figures(samples: &[Sample]) -> Value {
    let steady: Vec<&Sample> = samples.iter().skip(1).collect();
    if steady.is_empty() {
        return json!({ "note": "too short to judge: run at least 2 s" });
    }
    let rates: Vec<f64> = steady.iter().map(|sample| sample.committed_per_s).collect();
    let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = rates.iter().cloned().fold(0.0, f64::max);
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let p99_max = steady.iter().map(|sample| sample.p99_us).max().unwrap_or(0);
    json!({
        "committed_per_s_min": min,
        "committed_per_s_max": max,
        "committed_per_s_mean": mean,
        "p99_us_max": p99_max,
    })
}

fn ramp(args: &Args, shared: &Shared, sampler: &mut Sampler) -> Value {
    let step = Duration::from_secs(args.step_seconds);
    let mut steps = Vec::new();
    let mut highest_stable: Option<u64> = None;
    let rates = (0..)
        .map(|step: u32| {
            RAMP_RATE_FIRST * 10u64.pow(step / 3) * RAMP_FACTORS_PER_DECADE[step as usize % 3]
        })
        .take_while(|&rate| rate <= RAMP_RATE_MAX);
    for rate in rates {
        shared
            .rate_per_s
            .store(rate, std::sync::atomic::Ordering::Relaxed);
        let before = shared.counters();
        let started = Instant::now();
        sampler.mark();
        sampler.run_until(shared, started + step);
        let committed_per_s = (shared.counters().committed - before.committed) as f64
            / started.elapsed().as_secs_f64();
        let p99_us = if sampler.window.is_empty() {
            0
        } else {
            sampler.window.value_at_quantile(0.99)
        };
        let keeps_up = committed_per_s * 100.0 >= (rate * RAMP_KEEP_UP_PERCENT) as f64;
        let stable = keeps_up && p99_us <= args.p99_target_us;
        steps.push(json!({ "rate_per_s": rate, "committed_per_s": committed_per_s, "p99_us": p99_us, "stable": stable }));
        if !stable {
            break;
        }
        highest_stable = Some(rate);
    }
    json!({ "highest_stable_rate_per_s": highest_stable, "p99_target_us": args.p99_target_us, "steps": steps })
}

fn burst(args: &Args, shared: &Shared, sampler: &mut Sampler) -> Value {
    let baseline = if args.rate > 0 {
        args.rate
    } else {
        BURST_BASELINE_DEFAULT
    };
    let total = Duration::from_secs(args.duration);
    let burst_length = Duration::from_secs(args.burst_seconds);
    let before_length = total.saturating_sub(burst_length) / 3;
    let rate = &shared.rate_per_s;
    let started = Instant::now();
    rate.store(baseline, std::sync::atomic::Ordering::Relaxed);
    sampler.mark();
    sampler.run_until(shared, started + before_length);
    let baseline_p99_us = if sampler.window.is_empty() {
        0
    } else {
        sampler.window.value_at_quantile(0.99)
    };
    let burst_started = Instant::now();
    let first_burst_sample = sampler.samples.len();
    rate.store(
        baseline * BURST_FACTOR,
        std::sync::atomic::Ordering::Relaxed,
    );
    sampler.run_until(shared, burst_started + burst_length);
    let burst_ended_s = started.elapsed().as_secs_f64();
    rate.store(baseline, std::sync::atomic::Ordering::Relaxed);
    sampler.run_until(
        shared,
        started + total.max(before_length + burst_length + Duration::from_secs(1)),
    );
    let after_burst = &sampler.samples[first_burst_sample..];
    let peak = after_burst
        .iter()
        .map(|sample| sample.committed_per_s)
        .fold(0.0, f64::max);
    let p99_spike_us = after_burst
        .iter()
        .map(|sample| sample.p99_us)
        .max()
        .unwrap_or(0);
    let recovered_bound = baseline_p99_us.max(1) * BURST_RECOVERED_FACTOR;
    let recovery_s = after_burst
        .iter()
        .find(|sample| {
            sample.elapsed_s > burst_ended_s
                && sample.p99_us > 0
                && sample.p99_us <= recovered_bound
        })
        .map(|sample| sample.elapsed_s - burst_ended_s);
    json!({
        "baseline_rate_per_s": baseline,
        "burst_rate_per_s": baseline * BURST_FACTOR,
        "burst_seconds": args.burst_seconds,
        "baseline_p99_us": baseline_p99_us,
        "peak_committed_per_s": peak,
        "p99_spike_us": p99_spike_us,
        "recovery_s": recovery_s,
    })
}

fn failure(
    shared: &Shared,
    config: &EngineConfig,
    sampler: &mut Sampler,
    duration: Duration,
) -> Result<Value, LoadError> {
    let started = Instant::now();
    sampler.run_until(shared, started + duration / 2);
    let crashed_at = Instant::now();
    let reopen = shared.crash_and_reopen(config.clone())?;
    let deadline = Instant::now() + Duration::from_millis(FIRST_COMMIT_WAIT_MS);
    while shared.current_committed() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let first_commit = (shared.current_committed() > 0).then(|| crashed_at.elapsed());
    sampler.run_until(shared, (started + duration).max(Instant::now()));
    Ok(json!({
        "crash_at_s": (crashed_at - started).as_secs_f64(),
        "reopen_ms": reopen.as_secs_f64() * 1e3,
        "time_to_first_commit_ms": first_commit.map(|elapsed| elapsed.as_secs_f64() * 1e3),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that samples fall due on whole intervals from the start, whatever the
    // tick that took the previous one: a sample taken late (at 4.05 s) is followed by
    // one at 5 s, not at 5.05 s, where the plain progress line for 5 s is printed.
    #[test]
    fn samples_fall_due_on_whole_intervals_from_the_start() {
        let at = |ms| next_boundary(Duration::from_millis(ms), 1_000);
        assert_eq!(at(0), Duration::from_millis(1_000));
        assert_eq!(at(999), Duration::from_millis(1_000));
        assert_eq!(at(1_000), Duration::from_millis(2_000));
        assert_eq!(at(4_050), Duration::from_millis(5_000));
        assert_eq!(
            next_boundary(Duration::MAX, 1_000),
            Duration::from_millis(u64::MAX)
        );
    }
}
