//! `compare`: runs the engine's configurations side by side, interleaved and repeated,
//! and prints a table of medians (committed/s, p50 and p99 latency, ratio to unbatched).
//!
//! Interleaving (every configuration once per round, round after round) spreads slow
//! moments of a shared machine over all configurations instead of one; the median over
//! rounds then discards the outliers. Each run gets a fresh data directory below
//! `--dir` (the working directory by default): a tmpfs would make syncs free.
//!
//! Exit codes: 0 after a full run, 1 when a measurement failed, 2 for bad flags.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tricommit_bench::{
    engine_config, load_shape, measure, median, CompareError, Measurement, BASELINE_NAME,
    CONFIG_NAMES,
};

/// The most rounds a run may ask for.
const ROUNDS_MAX: u64 = 100;
/// The longest window per configuration and round, in seconds.
const SECONDS_MAX: u64 = 3_600;

/// Runs tricommit's engine configurations side by side and compares their throughput.
#[derive(Parser, Debug)]
#[command(name = "compare", about)]
struct Args {
    /// Measured seconds per configuration per round (after a short warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=SECONDS_MAX))]
    seconds: u64,
    /// Rounds; every configuration runs once per round, and the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=ROUNDS_MAX))]
    rounds: u64,
    /// Write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Comma-separated configurations to run, from: unbatched, batched, pipelined,
    /// overlap, overlap-signed, 2pc, pipelined-msync, pipelined-fdatasync,
    /// pipelined-io-uring; with --pg also pg-batched, pg-2pc, pg-ceiling, pg-floor.
    #[arg(long, value_delimiter = ',', value_parser = parse_config_name)]
    configs: Option<Vec<String>>,
    /// Directory below which each run's fresh data directory is made (not a tmpfs).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// PostgreSQL shards for pg-batched, pg-2pc, pg-ceiling and pg-floor: one database
    /// per ledger, `{ledger}` standing for its index. Every run drops and recreates their
    /// tricommit schema. Without --configs, runs every pg-* configuration.
    #[cfg(feature = "pg")]
    #[arg(long, value_name = "URL_TEMPLATE")]
    pg: Option<String>,
    /// Client threads of pg-2pc, each with one connection per shard.
    #[cfg(feature = "pg")]
    #[arg(long, default_value_t = tricommit_bench::pg::TWO_PC_CLIENTS_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=tricommit_bench::pg::TWO_PC_CLIENTS_MAX as u64))]
    pg_clients: u64,
}

/// Every configuration name this build knows, engine ones first.
fn known_names() -> Vec<&'static str> {
    let names = CONFIG_NAMES.to_vec();
    #[cfg(feature = "pg")]
    let names = [names, tricommit_bench::pg::PG_CONFIG_NAMES.to_vec()].concat();
    names
}

fn parse_config_name(name: &str) -> Result<String, String> {
    let known = known_names();
    if known.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown configuration (known: {})",
            known.join(", ")
        ))
    }
}

/// One configuration's row: medians over rounds, plus the per-round values.
#[derive(Serialize)]
struct ConfigReport {
    name: String,
    available: bool,
    committed_per_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    ratio_to_unbatched: Option<f64>,
    batch_txns_avg: Option<f64>,
    syncs_per_s: Option<f64>,
    rounds: Vec<RoundReport>,
}

#[derive(Serialize)]
struct RoundReport {
    committed: u64,
    aborted: u64,
    window_s: f64,
    committed_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    batch_txns_avg: f64,
    syncs_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    seconds: u64,
    rounds: u64,
    /// When the run started, in seconds since the Unix epoch.
    started_unix_s: u64,
    /// `/proc/loadavg` before and after the run: on a shared machine, other work
    /// competes for the cores and the figures say so.
    load_average_start: Option<String>,
    load_average_end: Option<String>,
    /// The configuration every ratio is taken against (`ratio_to_unbatched` keeps its
    /// name for the engine-only runs): unbatched, or pg-2pc in a PostgreSQL run.
    baseline: String,
    configs: Vec<ConfigReport>,
}

/// The 1-, 5- and 15-minute load averages, where the system exposes them.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            // --help and --version are not errors.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let rendered = error.to_string();
            let line = rendered.lines().next().unwrap_or("bad arguments");
            eprintln!("compare: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let json = match open_json(args.json.as_deref()) {
        Ok(json) => json,
        Err(error) => {
            eprintln!("compare: {error}");
            return ExitCode::from(2);
        }
    };
    if !args.dir.is_dir() {
        eprintln!("compare: --dir {} is not a directory", args.dir.display());
        return ExitCode::from(2);
    }
    let shards = match pg_shards(&args) {
        Ok(shards) => shards,
        Err(error) => {
            eprintln!("compare: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&args, &shards) {
        Ok(report) => finish(&report, json),
        Err(error) => {
            eprintln!("compare: {error}");
            ExitCode::from(1)
        }
    }
}

/// Creates the JSON file before the run, so an unwritable path fails at once.
fn open_json(path: Option<&Path>) -> Result<Option<File>, String> {
    path.map(|path| {
        File::create(path).map_err(|error| format!("--json {}: {error}", path.display()))
    })
    .transpose()
}

fn finish(report: &Report, json: Option<File>) -> ExitCode {
    print_table(report);
    let Some(mut file) = json else {
        return ExitCode::SUCCESS;
    };
    let written = serde_json::to_writer_pretty(&mut file, report)
        .map_err(std::io::Error::from)
        .and_then(|()| file.write_all(b"\n"));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("compare: writing the JSON: {error}");
            ExitCode::from(1)
        }
    }
}

/// The PostgreSQL shards' URLs (empty without --pg), each checked reachable; an error
/// for a pg-* configuration without --pg.
fn pg_shards(args: &Args) -> Result<Vec<String>, String> {
    #[cfg(feature = "pg")]
    if let Some(template) = &args.pg {
        return tricommit_bench::pg::shard_urls(template).map_err(|error| error.to_string());
    }
    let wants_pg = args
        .configs
        .iter()
        .flatten()
        .any(|name| name.starts_with("pg-"));
    match wants_pg {
        true => Err("the pg-* configurations need --pg URL_TEMPLATE".to_owned()),
        false => Ok(Vec::new()),
    }
}

/// Runs every selected configuration once per round, in table order within a round.
fn run(args: &Args, shards: &[String]) -> Result<Report, CompareError> {
    let names: Vec<String> = match &args.configs {
        Some(names) => known_names()
            .iter()
            .filter(|name| names.iter().any(|chosen| chosen == *name))
            .map(|name| name.to_string())
            .collect(),
        None if !shards.is_empty() => known_names()
            .iter()
            .filter(|name| name.starts_with("pg-"))
            .map(|name| name.to_string())
            .collect(),
        None => CONFIG_NAMES.iter().map(|name| name.to_string()).collect(),
    };
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let load_average_start = load_average();
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); names.len()];
    for round in 1..=args.rounds {
        for (name, result) in names.iter().zip(&mut results) {
            if let Some(measurement) = run_once(args, shards, name, round)? {
                result.push(measurement);
            }
        }
    }
    // Ratios are to unbatched when it ran, else to per-transaction 2PC on PostgreSQL.
    let baseline = [BASELINE_NAME, "pg-2pc"]
        .into_iter()
        .find(|baseline| names.iter().any(|name| name == baseline))
        .unwrap_or(BASELINE_NAME);
    let baseline_per_s = names
        .iter()
        .zip(&results)
        .find(|(name, _)| *name == baseline)
        .and_then(|(_, rounds)| median_of(rounds, |m| m.committed_per_s));
    let configs = names
        .into_iter()
        .zip(results)
        .map(|(name, rounds)| config_report(name, rounds, baseline_per_s))
        .collect();
    Ok(Report {
        seconds: args.seconds,
        rounds: args.rounds,
        started_unix_s,
        load_average_start,
        load_average_end: load_average(),
        baseline: baseline.to_owned(),
        configs,
    })
}

/// One measurement of `name` in a fresh data directory; `None` when the engine cannot
/// run that configuration yet.
fn run_once(
    args: &Args,
    shards: &[String],
    name: &str,
    round: u64,
) -> Result<Option<Measurement>, CompareError> {
    let data_dir = tempfile::Builder::new()
        .prefix("tricommit-compare-")
        .tempdir_in(&args.dir)?;
    #[cfg(feature = "pg")]
    if name.starts_with("pg-") {
        eprintln!(
            "compare: round {round}/{}: {name} ({} s)",
            args.rounds, args.seconds
        );
        let window = Duration::from_secs(args.seconds);
        let clients = args.pg_clients as usize;
        let measurement =
            tricommit_bench::pg::measure(name, shards, data_dir.path(), window, clients)
                .inspect_err(|_| eprintln!("compare: {name} failed in round {round}"))?;
        report_round(args, name, round, &measurement);
        data_dir.close()?;
        return Ok(Some(measurement));
    }
    let _ = shards;
    let Some(config) = engine_config(name, data_dir.path()) else {
        if round == 1 {
            eprintln!("compare: {name}: not available yet, skipped");
        }
        return Ok(None);
    };
    let shape = load_shape(&config);
    eprintln!(
        "compare: round {round}/{}: {name} ({} clients × {} outstanding, {} s)",
        args.rounds, shape.clients, shape.window_txns, args.seconds
    );
    let measurement =
        measure(config, shape, Duration::from_secs(args.seconds)).inspect_err(|_| {
            eprintln!("compare: {name} failed in round {round}");
        })?;
    report_round(args, name, round, &measurement);
    data_dir.close()?;
    Ok(Some(measurement))
}

fn report_round(args: &Args, name: &str, round: u64, measurement: &Measurement) {
    eprintln!(
        "compare: round {round}/{}: {name}: {:.0} committed/s, p50 {} µs, p99 {} µs, \
         {:.1} txns/batch, {:.0} syncs/s",
        args.rounds,
        measurement.committed_per_s,
        measurement.p50_us,
        measurement.p99_us,
        measurement.batch_txns_avg,
        measurement.syncs_per_s
    );
}

fn median_of(rounds: &[Measurement], field: fn(&Measurement) -> f64) -> Option<f64> {
    median(&rounds.iter().map(field).collect::<Vec<_>>())
}

fn config_report(
    name: String,
    rounds: Vec<Measurement>,
    baseline_per_s: Option<f64>,
) -> ConfigReport {
    let committed_per_s = median_of(&rounds, |m| m.committed_per_s);
    let ratio_to_unbatched = match (committed_per_s, baseline_per_s) {
        (Some(value), Some(baseline)) if baseline > 0.0 => Some(value / baseline),
        _ => None,
    };
    ConfigReport {
        available: !rounds.is_empty(),
        committed_per_s,
        p50_us: median_of(&rounds, |m| m.p50_us as f64),
        p99_us: median_of(&rounds, |m| m.p99_us as f64),
        ratio_to_unbatched,
        batch_txns_avg: median_of(&rounds, |m| m.batch_txns_avg),
        syncs_per_s: median_of(&rounds, |m| m.syncs_per_s),
        rounds: rounds.iter().map(round_report).collect(),
        name,
    }
}

fn round_report(measurement: &Measurement) -> RoundReport {
    RoundReport {
        committed: measurement.committed,
        aborted: measurement.aborted,
        window_s: measurement.window_s,
        committed_per_s: measurement.committed_per_s,
        p50_us: measurement.p50_us,
        p99_us: measurement.p99_us,
        batch_txns_avg: measurement.batch_txns_avg,
        syncs_per_s: measurement.syncs_per_s,
    }
}

fn print_table(report: &Report) {
    let unknown = || "unknown".to_owned();
    println!(
        "{} s × {} rounds, medians over rounds; load average {} at start, {} at end",
        report.seconds,
        report.rounds,
        report.load_average_start.clone().unwrap_or_else(unknown),
        report.load_average_end.clone().unwrap_or_else(unknown)
    );
    println!(
        "{:<22} {:>14} {:>10} {:>10} {:>14}",
        "config",
        "committed/s",
        "p50 µs",
        "p99 µs",
        format!("× {}", report.baseline)
    );
    for config in &report.configs {
        let Some(committed_per_s) = config.committed_per_s else {
            println!("{:<22} not available yet", config.name);
            continue;
        };
        let number = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let ratio = config
            .ratio_to_unbatched
            .map_or("-".to_owned(), |ratio| format!("{ratio:.1}"));
        println!(
            "{:<22} {:>14.0} {:>10} {:>10} {:>14}",
            config.name,
            committed_per_s,
            number(config.p50_us),
            number(config.p99_us),
            ratio
        );
    }
}
