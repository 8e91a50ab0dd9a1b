//! `tricommit-load`: the load generator.
//!
//! With no arguments it runs the embedded default (DESIGN §5): an in-process engine with
//! 4 ledger participants of 100,000 accounts each, two-ledger transfers at full speed for
//! 10 s, in a fresh temporary data directory. It prints a summary and checks the bank
//! invariant, exiting 1 if it fails. Bad input exits 2 with a one-line error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tricommit_engine::metrics::EngineMetrics;
use tricommit_engine::{Engine, EngineConfig, Protocol};
use tricommit_wal::SyncBackend;

mod breakdown;
mod cluster;
#[path = "../metrics_http.rs"]
mod metrics_http;
#[path = "../metrics_trace.rs"]
mod metrics_trace;

mod driver;
mod iso8583;
#[cfg(feature = "pg")]
mod pg;
mod progress;
mod report;
mod scenario;
mod summary;

/// Bounds on the flags, so that a typo cannot ask for an absurd run.
const CLIENTS_MAX: u64 = 256;
const LEDGERS_MAX: u64 = 32;
const WINDOW_MAX: u64 = 65_536;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncFlag {
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

/// Which commit protocol the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum ProtocolFlag {
    /// Three-phase commit with E3PC termination (the product).
    #[value(name = "3pc")]
    #[serde(rename = "3pc")]
    ThreePc,
    /// Two-phase commit with presumed abort: a baseline that blocks on coordinator failure.
    #[value(name = "2pc")]
    #[serde(rename = "2pc")]
    TwoPc,
}

/// Load generator for tricommit: transfers between ledgers through an in-process engine.
#[derive(Parser, Clone, Debug, Serialize)]
#[command(name = "tricommit-load", version)]
pub struct Args {
    /// What to do to the load over time (see the README).
    #[arg(long, value_enum, default_value_t = scenario::Scenario::Steady)]
    pub scenario: scenario::Scenario,
    /// How long to send load, in seconds (not used by `ramp`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Target rate in transactions per second over all clients (open loop, latency from
    /// the intended send time); 0 = closed loop, as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Client threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX))]
    pub clients: u64,
    /// Transactions each client keeps outstanding in closed loop.
    #[arg(long, default_value_t = 8_192, value_parser = clap::value_parser!(u64).range(1..=WINDOW_MAX))]
    pub window: u64,
    /// Ledger participants.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=LEDGERS_MAX))]
    pub ledgers: u64,
    /// Accounts per ledger.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=tricommit_engine::ledger::ACCOUNTS_MAX))]
    pub accounts: u64,
    /// Zipf exponent for picking accounts (hot accounts); 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    pub skew: f64,
    /// Largest transfer amount; amounts are uniform in 1..=amount-max.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub amount_max: u64,
    /// Balance every account starts with.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    pub initial_balance: i64,
    /// Largest batch, in transactions.
    #[arg(long, default_value_t = 8_192, value_parser = clap::value_parser!(u64).range(1..=8_192))]
    pub batch_txns_max: u64,
    /// Longest a batch waits for more transactions while the coordinator is busy, in µs.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub batch_delay_us: u64,
    /// Every transaction is a batch of its own.
    #[arg(long)]
    pub no_batching: bool,
    /// One batch in flight at a time.
    #[arg(long)]
    pub no_pipelining: bool,
    /// No phase overlap: the coordinator's PRE-COMMIT waits for its own sync, and vote
    /// timeouts stay fixed.
    #[arg(long)]
    pub no_overlap: bool,
    /// Commit protocol: 3pc (E3PC, non-blocking) or 2pc (baseline; blocks while the
    /// coordinator is down).
    #[arg(long, value_enum, default_value = "3pc")]
    pub protocol: ProtocolFlag,
    /// Pin the engine's stage threads to cores, round robin.
    #[arg(long)]
    pub pin_threads: bool,
    /// Size of each WAL segment file, in MiB (every site preallocates and zeroes one
    /// active and one spare segment at open).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    pub segment_mib: u64,
    /// Checkpoint a site's log once it spans more than this many segments, so that
    /// disk use stays bounded; 0 never checkpoints. Ledger logs follow it only with
    /// --compact-postings.
    #[arg(long, default_value_t = u64::from(tricommit_engine::runtime::LOG_SEGMENTS_MAX_DEFAULT), value_parser = clap::value_parser!(u64).range(0..=1_024))]
    pub log_segments_max: u64,
    /// Let the ledgers checkpoint too, dropping the postings before each checkpoint from
    /// their logs (balances stay exact). Off: the ledger logs keep every posting as the
    /// audit trail and grow.
    #[arg(long)]
    pub compact_postings: bool,
    /// WAL sync backend (the WAL's measured-fastest default when not given).
    #[arg(long, value_enum)]
    pub sync: Option<SyncFlag>,
    /// Drive the running cluster of this directory (`tricommit cluster up`) as a network
    /// client instead of an embedded engine. The ledgers, accounts and initial balance,
    /// and every engine setting, come from its cluster.toml.
    #[arg(long, conflicts_with = "data_dir")]
    pub cluster: Option<PathBuf>,
    /// Data directory: must be empty or absent, and is kept. A fresh temporary one under
    /// the working directory (removed afterwards) when not given.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the summary as JSON to this path.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one line per acknowledged outcome to this path:
    /// `id from_ledger from_account to_ledger to_account amount outcome`.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Write a self-contained HTML report with charts to this path.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Most ledgers one transaction touches (2 = transfers; up to 4 = split payments).
    /// The `mixed` scenario uses 4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=4))]
    pub ledgers_per_txn: u64,
    /// `ramp`: seconds per rate step.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub step_seconds: u64,
    /// `ramp`: a step is stable while its p99 latency stays at or below this, in µs.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub p99_target_us: u64,
    /// `burst`: seconds at ten times the baseline rate.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub burst_seconds: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve `GET /metrics` (OpenMetrics) and `GET /healthz` on this HOST:PORT while
    /// the run lasts.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// With --metrics-addr: keep serving this many seconds after the run, so that a
    /// scraper's last scrape sees the final counters (the summary is written first).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub metrics_linger_s: u64,
    /// Export a trace per batch (a span per phase and site) over OTLP/HTTP to this
    /// http:// URL (`/v1/traces` is added when it has no path). Off when not given.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: trace one batch in N (1: every batch).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(tricommit_engine::metrics::trace::SAMPLE_EVERY_MAX)))]
    pub trace_sample_every: u32,
    /// How log lines (recovery, torn tails, termination; never per transaction) are
    /// written to stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: metrics_trace::LogFormat,
    /// Drive a running `tricommit-switch` at HOST:PORT with ISO 8583 purchases instead
    /// of an in-process engine (uses --clients as connections, --window, --duration,
    /// --amount-max, --seed, --json).
    #[arg(long, value_name = "HOST:PORT")]
    pub iso8583: Option<String>,
    /// Run the ledgers on PostgreSQL: one database per ledger, named by this URL with
    /// `{ledger}` replaced by the ledger's index (create each with `tricommit pg init`).
    /// The bank check then reads the databases.
    #[cfg(feature = "pg")]
    #[arg(long, value_name = "URL_TEMPLATE")]
    #[serde(serialize_with = "serialize_redacted")]
    pub pg: Option<String>,
}

/// Writes a URL template into the JSON summary without its password.
#[cfg(feature = "pg")]
fn serialize_redacted<S: serde::Serializer>(
    template: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let redacted = template.as_deref().map(tricommit_engine::pg::redact);
    serde::Serialize::serialize(&redacted, serializer)
}

/// Why a run could not be made. Every variant is bad input or the environment, and
/// exits 2; a failed invariant is not an error but a verdict, and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--skew must be a finite number >= 0, not {0}")]
    Skew(f64),
    #[error("--rate {rate} is below one transaction per second per client ({clients} clients)")]
    Rate { rate: u64, clients: u64 },
    #[error("--ledgers-per-txn {per_txn} is more than --ledgers {ledgers}")]
    LedgersPerTxn { per_txn: u64, ledgers: u64 },
    #[error("data directory {0} is not empty; give an empty or new directory")]
    DataDirNotEmpty(PathBuf),
    #[error("data directory {0} is not a directory")]
    DataDirNotDirectory(PathBuf),
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
    #[error("engine: {0}")]
    Engine(#[from] tricommit_engine::EngineError),
    #[error("a client thread failed: {0}")]
    Client(std::io::Error),
    #[error("a client thread panicked")]
    ClientPanicked,
    #[error("cannot start the floor probe's threads: {0}")]
    Probe(std::io::Error),
    #[error("reading the ledgers back: {0}")]
    Dump(#[from] tricommit_engine::runtime::DumpError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("--scenario failure crashes the engine in-process; it needs the embedded engine (run it without --cluster)")]
    FailureNeedsEmbedded,
    #[error("{0}")]
    Metrics(#[from] metrics_http::MetricsHttpError),
    #[error("{0}")]
    Telemetry(#[from] metrics_trace::TelemetryError),
    #[error("iso8583: {0}")]
    Iso8583(#[from] iso8583::Iso8583Error),
    #[error("PostgreSQL: {0}")]
    Pg(String),
    #[error("PostgreSQL: {0}")]
    PgState(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tricommit-load: the bank invariant FAILED");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("tricommit-load: error: {error}");
            ExitCode::from(2)
        }
    }
}

/// `--iso8583 HOST:PORT`: the switch's load; every response is a verdict, so it
/// always "passes" once the run completes (the switch checks nothing here).
fn run_iso8583(address: &str, args: &Args) -> Result<bool, LoadError> {
    let summary = iso8583::run(
        address,
        args.clients,
        args.window,
        Duration::from_secs(args.duration),
        args.amount_max,
        args.seed,
    )?;
    iso8583::print(&summary);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
        std::fs::write(path, text).map_err(|source| LoadError::Output {
            path: path.clone(),
            source,
        })?;
    }
    Ok(true)
}

/// Checks every output path can be written before the run, not after it.
fn check_outputs(args: &Args) -> Result<(), LoadError> {
    for path in [&args.json, &args.history, &args.report]
        .into_iter()
        .flatten()
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LoadError::Output {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

fn validate(args: &Args) -> Result<(), LoadError> {
    if !args.skew.is_finite() || args.skew < 0.0 {
        return Err(LoadError::Skew(args.skew));
    }
    if args.rate > 0 && args.rate < args.clients {
        return Err(LoadError::Rate {
            rate: args.rate,
            clients: args.clients,
        });
    }
    Ok(())
}

/// Runs the load and returns the invariant's verdict.
fn run(args: &Args) -> Result<bool, LoadError> {
    let cluster_args;
    let args = match &args.cluster {
        Some(dir) => {
            cluster_args = cluster::args_for(args, dir)?;
            &cluster_args
        }
        None => args,
    };
    validate(args)?;
    check_outputs(args)?;
    if let Some(address) = &args.iso8583 {
        return run_iso8583(address, args);
    }
    tricommit_engine::metrics::trace::set_sample_every(args.trace_sample_every);
    let _telemetry = metrics_trace::init(
        args.log_format,
        args.otlp_endpoint.as_deref(),
        "tricommit-load",
        None,
    )?;
    let metrics = Arc::new(EngineMetrics::new());
    let metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let served = metrics.clone();
            // Healthy while an engine is open (not during the failure scenario's reopen).
            let health = Arc::new(move || served.in_flight_txns().is_some());
            let server = metrics_http::MetricsServer::start(addr, metrics.clone(), health)?;
            eprintln!(
                "tricommit-load: metrics on http://{}/metrics",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    // A cluster keeps its own data; the embedded engine's directory is not used.
    let (root, temporary) = match &args.cluster {
        Some(dir) => (dir.clone(), None),
        None => data_root(args.data_dir.as_deref())?,
    };
    let mut config = EngineConfig::ledgers(
        &root,
        args.ledgers as usize,
        args.accounts,
        args.initial_balance,
    );
    config.batch_txns_max = args.batch_txns_max as usize;
    config.batch_delay_us_max = args.batch_delay_us;
    config.batching = !args.no_batching;
    config.pipelining = !args.no_pipelining;
    config.overlap = !args.no_overlap;
    config.protocol = match args.protocol {
        ProtocolFlag::ThreePc => Protocol::ThreePhase,
        ProtocolFlag::TwoPc => Protocol::TwoPhase,
    };
    config.pin_threads = args.pin_threads;
    if let Some(flag) = args.sync {
        config.wal.sync = flag.backend();
        // A backend asked for by name is that backend or an error, never a fallback.
        config.wal.sync_fallback = false;
    }
    config.wal.segment_bytes = args.segment_mib << 20;
    config.log_segments_max = match args.log_segments_max {
        0 => None,
        segments => Some(segments as u32),
    };
    config.compact_postings = args.compact_postings;
    config.wal.record_bytes_max = config
        .wal
        .record_bytes_max
        .min((config.wal.segment_bytes / 2) as u32);
    #[cfg(feature = "pg")]
    let shards = match &args.pg {
        Some(template) => Some(pg::PgShards::setup(template, args, &mut config)?),
        None => None,
    };
    #[cfg(not(feature = "pg"))]
    let shards: Option<NoShards> = None;
    let outcome = drive(args, config, metrics.clone(), shards.as_ref())?;
    let summary = summary::Summary::new(args, &outcome, &metrics);
    summary.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
        std::fs::write(path, text).map_err(|source| LoadError::Output {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &args.history {
        concatenate_history(path, &outcome.history_parts, &outcome.resolved_history)?;
    }
    if let Some(path) = &args.report {
        let rows = summary.rows();
        let title = format!(
            "tricommit-load: {} scenario, {} ledgers, {} clients",
            format!("{:?}", args.scenario).to_lowercase(),
            args.ledgers,
            args.clients
        );
        let page = report::render_html(&report::Report {
            title: &title,
            generated: "",
            samples: &outcome.samples,
            summary: &rows,
        });
        std::fs::write(path, page).map_err(|source| LoadError::Output {
            path: path.clone(),
            source,
        })?;
    }
    drop(temporary);
    if metrics_server.is_some() && args.metrics_linger_s > 0 {
        std::thread::sleep(Duration::from_secs(args.metrics_linger_s));
    }
    Ok(summary.invariant_ok)
}

/// Everything a run measured.
pub struct RunOutcome {
    pub clients: Vec<driver::ClientResult>,
    pub samples: Vec<report::Sample>,
    pub elapsed: Duration,
    pub counters: tricommit_engine::runtime::EngineCounters,
    pub busy: u64,
    pub cpu_s: f64,
    pub invariant: Result<(), String>,
    /// What a cluster run's bank check compared, in words.
    pub bank_check: Option<String>,
    pub scenario_figures: serde_json::Value,
    pub durability: Option<summary::Durability>,
    /// Extra open-and-shutdown passes the failure scenario needed before every
    /// transaction was decided everywhere.
    pub settle_passes: Option<u32>,
    pub history_parts: Vec<PathBuf>,
    /// History lines of the outcomes a cluster run learned by resubmission at the end.
    pub resolved_history: Vec<String>,
    /// The floor probe's figures (in-process runs; a cluster's stages run elsewhere).
    pub probe: Option<breakdown::ProbeResult>,
}

/// Stands in for the PostgreSQL shards in a build without them.
#[cfg(not(feature = "pg"))]
enum NoShards {}

#[cfg(feature = "pg")]
use pg::PgShards as Shards;
#[cfg(not(feature = "pg"))]
use NoShards as Shards;

fn drive(
    args: &Args,
    config: EngineConfig,
    metrics: Arc<EngineMetrics>,
    shards: Option<&Shards>,
) -> Result<RunOutcome, LoadError> {
    let mixed = args.scenario == scenario::Scenario::Mixed;
    let failure = args.scenario == scenario::Scenario::Failure;
    let workload = driver::Workload {
        ledgers: args.ledgers as u8,
        amount_max: args.amount_max,
        high_priority_percent: if mixed { 10 } else { 0 },
        ledgers_per_txn_max: if mixed { 4 } else { args.ledgers_per_txn as u8 },
        record_committed: failure,
        id_base: match &args.cluster {
            Some(_) => cluster::run_prefix()?,
            None => 0,
        },
        keep_unknown: args.cluster.is_some(),
    };
    let picker = driver::AccountPicker::new(args.accounts, args.skew);
    let initial_rate = match args.scenario {
        scenario::Scenario::Ramp | scenario::Scenario::Burst => 0,
        _ => args.rate,
    };
    // A cluster run reads the opening balances before its first transfer.
    let opening = match &args.cluster {
        Some(dir) => Some(cluster::read_opening(dir)?),
        None => None,
    };
    let shared = match &args.cluster {
        Some(dir) => {
            let mut shared =
                driver::Shared::remote(cluster::connect(dir)?, args.clients as usize, initial_rate);
            shared.effects = opening.as_ref().map(cluster::Opening::effects);
            shared
        }
        None => {
            let engine = Engine::open_observed(config.clone(), metrics)?;
            // What opening the logs found: records, torn tails, and the sync backend
            // really in use (with the reason, where io_uring fell back).
            eprintln!("tricommit-load: {}", engine.recovery_report());
            driver::Shared::new(engine, args.clients as usize, initial_rate)
        }
    };
    let history_parts: Vec<PathBuf> = match &args.history {
        Some(path) => (0..args.clients)
            .map(|index| part_path(path, index))
            .collect(),
        None => Vec::new(),
    };
    // The machine's floor, measured beside the load (in-process runs only).
    let probe = match &args.cluster {
        Some(_) => None,
        None => Some(breakdown::FloorProbe::start(&config.data_dir).map_err(LoadError::Probe)?),
    };
    let cpu_before = summary::cpu_seconds();
    let started = Instant::now();
    let mut sampler = scenario::Sampler::new(&shared, Duration::from_secs(args.duration));
    let (results, figures) = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for index in 0..args.clients as usize {
            let plan = driver::ClientPlan {
                index,
                clients: args.clients as usize,
                seed: args
                    .seed
                    .wrapping_mul(0x9E37_79B9)
                    .wrapping_add(index as u64),
                window: args.window as usize,
                history: history_parts.get(index).cloned(),
            };
            let (shared, workload, picker) = (&shared, &workload, &picker);
            handles.push(scope.spawn(move || driver::run_client(shared, workload, picker, plan)));
        }
        let figures = scenario::control(args, &shared, &config, &mut sampler);
        shared.stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = handles.into_iter().map(|handle| handle.join()).collect();
        (results, figures)
    });
    let probe = probe.map(breakdown::FloorProbe::stop);
    let samples = sampler.finish();
    let scenario_figures = figures?;
    let elapsed = started.elapsed();
    let mut clients: Vec<driver::ClientResult> = Vec::new();
    for result in results {
        clients.push(
            result
                .map_err(|_| LoadError::ClientPanicked)?
                .map_err(LoadError::Client)?,
        );
    }
    let mut counters = shared.counters();
    let busy = shared.busy.load(Ordering::Relaxed);
    let mut resolved_history = Vec::new();
    let mut bank_check_described = None;
    let expected_total =
        args.ledgers as i128 * args.accounts as i128 * args.initial_balance as i128;
    let (cpu_s, mut invariant) = match (&args.cluster, &opening, &shared.effects) {
        (Some(dir), Some(opening), Some(effects)) => {
            // Every outcome the clients were waiting for is in (or known unknown).
            shared.close_remote();
            let unknown = clients
                .iter_mut()
                .flat_map(|client| std::mem::take(&mut client.unknown))
                .collect();
            let check = cluster::check_bank(dir, opening, effects, unknown)?;
            resolved_history = check.history;
            bank_check_described = Some(check.described);
            (summary::cpu_seconds() - cpu_before, check.verdict)
        }
        _ => {
            let shutdown = shared.shutdown()?;
            // The drain happens during shutdown: only its final counters know how it
            // ended.
            counters.drain_bound_hit |= shutdown.counters.drain_bound_hit;
            counters.sync_us_max = counters.sync_us_max.max(shutdown.counters.sync_us_max);
            let cpu_s = summary::cpu_seconds() - cpu_before;
            (cpu_s, bank_check(shards, &shutdown, expected_total))
        }
    };
    let (durability, settle_passes) = if failure {
        let (durability, passes) =
            settle_after_failure(&config, shards, &clients, expected_total, &mut invariant)?;
        (Some(durability), Some(passes))
    } else {
        (None, None)
    };
    #[cfg(feature = "pg")]
    let scenario_figures = match shards {
        Some(shards) => with_pg_figures(scenario_figures, shards.figures()),
        None => scenario_figures,
    };
    Ok(RunOutcome {
        clients,
        samples,
        elapsed,
        counters,
        busy,
        cpu_s,
        invariant,
        bank_check: bank_check_described,
        scenario_figures,
        durability,
        settle_passes,
        history_parts,
        resolved_history,
        probe,
    })
}

/// The most extra open-and-shutdown passes the failure scenario makes to let the
/// termination protocol finish what the crash left undecided.
const SETTLE_PASSES_MAX: u32 = 5;

/// After the failure scenario, checks durability and the bank invariant; while some
/// transaction is still undecided somewhere (the invariant sees it half-posted), opens
/// and shuts the engine again so that recovery finishes it, up to a bound.
fn settle_after_failure(
    config: &EngineConfig,
    shards: Option<&Shards>,
    clients: &[driver::ClientResult],
    expected_total: i128,
    invariant: &mut Result<(), String>,
) -> Result<(summary::Durability, u32), LoadError> {
    let mut passes = 0;
    loop {
        let durability = match shards {
            #[cfg(feature = "pg")]
            Some(shards) => shards.check_durability(clients)?,
            _ => summary::check_durability(&config.data_dir, clients)?,
        };
        let settled = invariant.is_ok() && durability.undecided == 0;
        if settled || passes == SETTLE_PASSES_MAX {
            return Ok((durability, passes));
        }
        let shutdown = Engine::open(config.clone())?.shutdown()?;
        *invariant = bank_check(shards, &shutdown, expected_total);
        passes += 1;
    }
}

/// The bank invariant: read from the PostgreSQL shards when there are some, else from
/// the built-in ledgers the shutdown handed back.
fn bank_check(
    shards: Option<&Shards>,
    shutdown: &tricommit_engine::runtime::Shutdown,
    expected_total: i128,
) -> Result<(), String> {
    match shards {
        #[cfg(feature = "pg")]
        Some(shards) => shards.check_bank(),
        _ => summary::check_bank(shutdown, expected_total),
    }
}

/// Adds the PostgreSQL ledgers' counters to the scenario's figures, under `pg`.
#[cfg(feature = "pg")]
fn with_pg_figures(figures: serde_json::Value, pg: serde_json::Value) -> serde_json::Value {
    match figures {
        serde_json::Value::Object(mut map) => {
            map.insert("pg".to_owned(), pg);
            serde_json::Value::Object(map)
        }
        serde_json::Value::Null => serde_json::json!({ "pg": pg }),
        other => serde_json::json!({ "scenario": other, "pg": pg }),
    }
}

fn part_path(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".part-{index}"));
    PathBuf::from(name)
}

/// Joins the clients' history files into one, then removes the parts.
fn concatenate_history(
    path: &Path,
    parts: &[PathBuf],
    extra_lines: &[String],
) -> Result<(), LoadError> {
    let output_error = |source| LoadError::Output {
        path: path.to_owned(),
        source,
    };
    let mut output = std::io::BufWriter::new(std::fs::File::create(path).map_err(output_error)?);
    for part in parts {
        let mut input = std::fs::File::open(part).map_err(output_error)?;
        std::io::copy(&mut input, &mut output).map_err(output_error)?;
        std::fs::remove_file(part).map_err(output_error)?;
    }
    for line in extra_lines {
        std::io::Write::write_all(&mut output, format!("{line}\n").as_bytes())
            .map_err(output_error)?;
    }
    std::io::Write::flush(&mut output).map_err(output_error)
}

/// Returns the directory to run in, and the temporary directory guard if one was made.
fn data_root(requested: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>), LoadError> {
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
        Err(error) if path.exists() && !path.is_dir() => {
            let _ = error;
            return Err(LoadError::DataDirNotDirectory(path.to_path_buf()));
        }
        Err(error) => return Err(io_error(error)),
    }
    Ok((path.to_path_buf(), None))
}
