//! `tricommit chaos --cluster DIR --scenario NAME [--seconds S] [--json PATH]`: faults
//! from real mechanisms on a cluster of real processes, and an exact bank check.
//!
//! The runner starts every site of the cluster as a child process behind the link proxy
//! (`proxy.rs`), drives load through the network client while recording every
//! transaction (`probe.rs`), injects the scenario's fault (`scenario.rs`: `kill -9`
//! and restart, `SIGSTOP`/`SIGCONT`, cuts, delays, frame drops, crash points), heals
//! it, stops the nodes, and checks the ledgers against the history (`check.rs`). It
//! prints one summary line; `--json` writes the figures. docs/chaos.md describes every
//! scenario.
//!
//! A `DIR` that does not exist (or is empty) gets a new cluster made for the scenario
//! (3 replicas, 4 participants, `--accounts` accounts, sites from `--base-port`, 2PC for
//! `two-pc-coordinator-kill`); an existing cluster is used as it is, and its
//! `cluster.toml` is restored when the run ends.
//!
//! Exit codes: 0 the scenario ran and the check found no violation; 1 a violation, or the
//! scenario failed (no progress, no recovery); 2 bad input (flags, directory).

pub mod check;
pub mod cluster;
pub mod evidence;
pub mod probe;
pub mod proxy;
pub mod scenario;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use tricommit_engine::client::config::{random_key, InitOptions, ProtocolName, CLUSTER_FILE};
use tricommit_engine::client::ClusterConfig;

use self::check::Snapshot;
use self::cluster::ChaosCluster;
use self::probe::{Load, LoadRecord};
use self::proxy::Proxy;
use self::scenario::Phase;

/// The longest run a scenario may ask for.
pub const SECONDS_MAX: u64 = 3_600;
/// How long the runner waits, after the heal, for a commit of a transaction sent after
/// it, before it says the cluster did not recover.
const RECOVERY_WAIT_MS_MAX: u64 = 30_000;
/// Accounts per ledger of a cluster the runner creates.
const ACCOUNTS_DEFAULT: u64 = 1_000;
/// The segment size of a cluster the runner creates: small, so that a restarted node
/// preallocates quickly.
const SEGMENT_MIB_CHAOS: u64 = 8;

/// Why a chaos run could not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("setting up the cluster: {0}")]
    Setup(String),
    #[error("reading the ledgers: {0}")]
    Check(String),
    #[error("the scenario failed: {0}")]
    Scenario(String),
}

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// The cluster directory: an existing cluster, or a new (absent or empty) directory
    /// for one made for the scenario.
    #[arg(long, required_unless_present = "list")]
    cluster: Option<PathBuf>,
    /// The scenario (see --list).
    #[arg(long, required_unless_present = "list")]
    scenario: Option<String>,
    /// Seconds of load per phase; the fault comes at a quarter of it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=SECONDS_MAX))]
    seconds: u64,
    /// Write the figures as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// List the scenarios and what each injects.
    #[arg(long)]
    list: bool,
    /// Transactions the load keeps in flight.
    #[arg(long, default_value_t = probe::WINDOW_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=probe::WINDOW_MAX as u64))]
    window: u64,
    /// For a new cluster: accounts per ledger.
    #[arg(long, default_value_t = ACCOUNTS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=tricommit_engine::ledger::ACCOUNTS_MAX))]
    accounts: u64,
    /// For a new cluster: site i (replicas first) binds base-port + i.
    #[arg(long, default_value_t = 25_000)]
    base_port: u16,
}

pub fn run(args: ChaosArgs) -> ExitCode {
    if args.list {
        for (name, description) in scenario::SCENARIOS {
            println!("{name:42} {description}");
        }
        return ExitCode::SUCCESS;
    }
    let name = args.scenario.clone().expect("clap requires --scenario");
    match run_scenario(&args, &name) {
        Ok(summary) => {
            println!("{}", summary.line());
            if let Some(path) = &args.json {
                let text =
                    serde_json::to_string_pretty(&summary.json()).expect("the summary serializes");
                if let Err(error) = std::fs::write(path, text + "\n") {
                    eprintln!("tricommit: error: writing {}: {error}", path.display());
                    return ExitCode::from(1);
                }
            }
            for message in &summary.verdict.messages {
                eprintln!("tricommit: violation: {message}");
            }
            if let Some(failure) = &summary.failure {
                eprintln!("tricommit: error: {name}: {failure}");
            }
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tricommit: error: chaos {name}: {error}");
            ExitCode::from(match error {
                ChaosError::Usage(_) => 2,
                _ => 1,
            })
        }
    }
}

/// The outcome of one scenario.
struct Summary {
    name: String,
    fault: &'static str,
    verdict: check::Verdict,
    /// Heal -> the first commit of a transaction sent after the heal, per phase.
    recovery_ms: Option<f64>,
    figures: Map<String, Value>,
    /// Why the scenario failed although the check may have passed.
    failure: Option<String>,
    unclean_stops: Vec<String>,
}

impl Summary {
    fn passed(&self) -> bool {
        self.verdict.violations == 0 && self.failure.is_none()
    }

    fn line(&self) -> String {
        let mut line = format!(
            "chaos {}: {} checked={} committed={} aborted={} unknown={} (applied {}) violations={} recovery_ms={}",
            self.name,
            if self.passed() { "ok" } else { "FAILED" },
            self.verdict.checked,
            self.verdict.committed,
            self.verdict.aborted,
            self.verdict.unknown,
            self.verdict.unknown_applied,
            self.verdict.violations,
            self.recovery_ms
                .map_or("none".to_owned(), |ms| format!("{ms:.0}")),
        );
        for (key, value) in &self.figures {
            line.push_str(&format!(" {key}={value}"));
        }
        line
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.name,
            "fault": self.fault,
            "passed": self.passed(),
            "transactions_checked": self.verdict.checked,
            "committed": self.verdict.committed,
            "aborted": self.verdict.aborted,
            "unknown": self.verdict.unknown,
            "unknown_applied": self.verdict.unknown_applied,
            "violations": self.verdict.violations,
            "violation_messages": self.verdict.messages,
            "recovery_ms": self.recovery_ms,
            "failure": self.failure,
            "unclean_stops": self.unclean_stops,
            "figures": self.figures,
        })
    }
}

fn run_scenario(args: &ChaosArgs, name: &str) -> Result<Summary, ChaosError> {
    let fault = scenario::describe(name).ok_or_else(|| {
        ChaosError::Usage(format!(
            "unknown scenario `{name}`; `tricommit chaos --list` lists them"
        ))
    })?;
    let dir = args.cluster.as_deref().expect("clap requires --cluster");
    let config = open_or_create(dir, name, args)?;
    evidence::refuse_if_in_force(dir, &config)?;
    let before = Snapshot::read(dir, &config)?;
    if before.in_doubt() > 0 {
        return Err(ChaosError::Usage(format!(
            "{} holds {} legs in doubt from an earlier run; start the cluster once (`tricommit \
             cluster up`) to let it decide them",
            dir.display(),
            before.in_doubt()
        )));
    }
    let mut summary = Summary {
        name: name.to_owned(),
        fault,
        verdict: check::Verdict::default(),
        recovery_ms: None,
        figures: Map::new(),
        failure: None,
        unclean_stops: Vec::new(),
    };
    let id_base = run_prefix()?;
    let mut history = Vec::new();
    for (index, (phase_name, phase_config)) in
        scenario::phases(name, &config).into_iter().enumerate()
    {
        // Each phase's ids are distinct: the prefix names the run, the phase a bit below.
        let phase_base = id_base | ((index as u64) << 40);
        let outcome = run_phase(dir, name, &phase_config, args, phase_base)?;
        let prefix = if phase_name.is_empty() {
            String::new()
        } else {
            format!("{phase_name}_")
        };
        for (key, value) in outcome.figures {
            summary.figures.insert(format!("{prefix}{key}"), value);
        }
        if let Some(ms) = outcome.recovery_ms {
            summary.recovery_ms = Some(summary.recovery_ms.map_or(ms, |known: f64| known.max(ms)));
        }
        if summary.failure.is_none() {
            summary.failure = outcome.failure;
        }
        summary.unclean_stops.extend(outcome.unclean_stops);
        history.extend(outcome.record.records);
    }
    let history_path = dir.join(cluster::LOG_DIR).join(format!("{name}.history"));
    if let Err(source) = write_history(&history, &history_path) {
        return Err(ChaosError::Io {
            what: format!("writing {}", history_path.display()),
            source,
        });
    }
    let after = Snapshot::read(dir, &config)?;
    summary.verdict = check::check(&config, &before, &after, &history);
    if summary.verdict.committed == 0 && summary.failure.is_none() {
        summary.failure = Some("no transaction committed".into());
    }
    Ok(summary)
}

fn write_history(history: &[probe::Record], path: &Path) -> std::io::Result<()> {
    let record = LoadRecord {
        records: history.to_vec(),
        ..LoadRecord::default()
    };
    record.write_history(path)
}

/// What one phase produced.
struct PhaseOutcome {
    record: LoadRecord,
    figures: Map<String, Value>,
    recovery_ms: Option<f64>,
    failure: Option<String>,
    unclean_stops: Vec<String>,
}

fn run_phase(
    dir: &Path,
    name: &str,
    config: &ClusterConfig,
    args: &ChaosArgs,
    id_base: u64,
) -> Result<PhaseOutcome, ChaosError> {
    let entries = config.site_entries();
    let upstreams: Vec<_> = entries
        .iter()
        .map(|entry| config.listen_addr(entry))
        .collect();
    let host: IpAddr = upstreams[0].ip();
    let proxy = Proxy::start(host, &upstreams).map_err(|source| ChaosError::Io {
        what: "starting the link proxy".into(),
        source,
    })?;
    proxy.set_faults(scenario::topology(name, config));
    let mut nodes = ChaosCluster::prepare(dir, config, &proxy)?;
    for entry in &entries {
        let extra = match scenario::node_flags(name) {
            Some((site, flags)) if site == entry.name => flags,
            _ => Vec::new(),
        };
        nodes.start(&entry.name, &extra)?;
    }
    nodes.wait_ready()?;
    let load = Load::start(dir, config, args.window as usize, id_base);
    let started = Instant::now();
    let mut phase = Phase {
        name,
        config,
        cluster: &mut nodes,
        proxy: &proxy,
        load: &load,
        seconds: args.seconds,
        started,
        fault_at: None,
        heal_at: None,
        figures: Map::new(),
        kills: Vec::new(),
    };
    let injected = phase.inject();
    let end = started + Duration::from_secs(args.seconds);
    let now = Instant::now();
    if end > now && injected.is_ok() {
        std::thread::sleep(end - now);
    }
    // Heal whatever is left (a scenario that failed midway included).
    proxy.heal();
    phase.cluster.heal()?;
    let healed = Instant::now();
    let heal_at = phase.heal_at.unwrap_or(healed);
    let (fault_at, kills, mut figures) = (
        phase.fault_at,
        phase.kills.clone(),
        std::mem::take(&mut phase.figures),
    );
    // A commit of a transaction sent after the heal: the cluster works again.
    let deadline = healed + Duration::from_millis(RECOVERY_WAIT_MS_MAX);
    while !load.committed_one_sent_after(heal_at) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let record = load.stop();
    let unclean_stops = nodes.stop_all();
    drop(nodes);
    drop(proxy);
    let mut failure = injected.err().map(|error| error.to_string());
    let checked = scenario::after_stop(name, dir, config, &mut figures)?;
    if failure.is_none() {
        failure = checked;
    }
    let recovery_ms = record
        .first_commit_sent_after(heal_at)
        .map(|at| ms(at.duration_since(heal_at)));
    if recovery_ms.is_none() && failure.is_none() {
        failure = Some(format!(
            "no commit of a transaction sent after the heal within {} s",
            RECOVERY_WAIT_MS_MAX / 1000
        ));
    }
    phase_figures(name, &record, started, end, fault_at, &kills, &mut figures);
    Ok(PhaseOutcome {
        record,
        figures,
        recovery_ms,
        failure,
        unclean_stops,
    })
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

/// The figures every phase reports, and those of the kills and the regions.
fn phase_figures(
    name: &str,
    record: &LoadRecord,
    started: Instant,
    end: Instant,
    fault_at: Option<Instant>,
    kills: &[Instant],
    figures: &mut Map<String, Value>,
) {
    if let Some(fault_at) = fault_at {
        if let Some(first) = record.first_commit_sent_after(fault_at) {
            figures.insert(
                "fault_to_first_commit_ms".into(),
                json!(ms(first.duration_since(fault_at))),
            );
        }
    }
    if !kills.is_empty() {
        let mut each: Vec<f64> = kills
            .iter()
            .filter_map(|&kill| {
                record
                    .first_commit_sent_after(kill)
                    .map(|at| ms(at.duration_since(kill)))
            })
            .collect();
        each.sort_by(f64::total_cmp);
        figures.insert("kills".into(), json!(kills.len()));
        figures.insert(
            "kill_to_first_commit_ms_median".into(),
            json!(each.get(each.len() / 2)),
        );
        figures.insert("kill_to_first_commit_ms_max".into(), json!(each.last()));
        figures.insert(
            "failover".into(),
            json!("client failover to another replica (any replica opens batches)"),
        );
    }
    if name == "regions" || name == "region-cut" {
        // The steady part of the window: after the warmup, to the end of the load.
        let from = started + Duration::from_millis(1_000);
        let seconds = end.saturating_duration_since(from).as_secs_f64().max(1e-3);
        let commits = record.commits_between(from, end);
        figures.insert(
            "committed_per_s".into(),
            json!((commits as f64 / seconds).round()),
        );
        figures.insert(
            "p99_ms".into(),
            json!(record
                .latency_us_quantile(from, end, 0.99)
                .map(|us| us as f64 / 1000.0)),
        );
    }
    figures.insert("connects".into(), json!(record.connects));
    figures.insert("client_failovers".into(), json!(record.failovers));
    figures.insert("txns_resent".into(), json!(record.txns_resent));
    figures.insert("stale_outcomes".into(), json!(record.stale_outcomes));
}

/// Opens the cluster in `dir`, or creates one for the scenario there.
fn open_or_create(dir: &Path, name: &str, args: &ChaosArgs) -> Result<ClusterConfig, ChaosError> {
    let protocol = scenario::protocol_of(name);
    let fresh = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
    let config = if fresh {
        create(dir, protocol, args)?
    } else {
        ClusterConfig::load(dir).map_err(|error| ChaosError::Usage(error.to_string()))?
    };
    tricommit_engine::client::config::load_key(dir)
        .map_err(|error| ChaosError::Usage(error.to_string()))?;
    if config.engine.protocol != protocol {
        return Err(ChaosError::Usage(format!(
            "scenario {name} needs engine.protocol = \"{}\" in {}, and a cluster keeps the \
             protocol it was created with: give it a new directory",
            if protocol == ProtocolName::TwoPhase {
                "2pc"
            } else {
                "3pc"
            },
            dir.join(CLUSTER_FILE).display()
        )));
    }
    if config.replicas < 3 || config.participants < 4 {
        return Err(ChaosError::Usage(format!(
            "the scenarios need at least 3 replicas and 4 participants; {} has {} and {}",
            dir.display(),
            config.replicas,
            config.participants
        )));
    }
    Ok(config)
}

fn create(
    dir: &Path,
    protocol: ProtocolName,
    args: &ChaosArgs,
) -> Result<ClusterConfig, ChaosError> {
    let options = InitOptions {
        accounts: args.accounts,
        base_port: args.base_port,
        ..InitOptions::default()
    };
    let key = random_key().map_err(|source| ChaosError::Io {
        what: "reading /dev/urandom".into(),
        source,
    })?;
    let id = u64::from_le_bytes(
        random_key().map_err(|source| ChaosError::Io {
            what: "reading /dev/urandom".into(),
            source,
        })?[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut config = ClusterConfig::from_init(&options, id).map_err(ChaosError::Usage)?;
    config.engine.protocol = protocol;
    config.engine.segment_mib = SEGMENT_MIB_CHAOS;
    crate::cluster::init::create(dir, config, &key).map_err(ChaosError::Usage)
}

/// A random, non-zero prefix for the run's transaction ids (bits 44..63), so that runs
/// on one cluster never share an id.
fn run_prefix() -> Result<u64, ChaosError> {
    let bytes = random_key().map_err(|source| ChaosError::Io {
        what: "reading /dev/urandom".into(),
        source,
    })?;
    let random = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok(((random % ((1 << 19) - 1)) + 1) << 44)
}
