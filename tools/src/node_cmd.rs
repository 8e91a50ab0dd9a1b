//! `tricommit node --cluster DIR --site NAME`: one site of a cluster, in the foreground.
//!
//! It recovers the site from `DIR/<site>/`, starts its transport and serves until
//! SIGTERM or SIGINT, then drains and exits 0. It prints `ready <site>` on stdout once
//! its links to every other site are up (what `cluster up` waits for). Bad input (the
//! cluster files, the site name, a port in use, a bad `--otlp-endpoint`) exits 2; a
//! failure while running exits 1.
//!
//! Logs go to stderr through `tracing-subscriber` (`--log-format text|json`), one line
//! per event: recovery, termination rounds, link up and down, rejected frames,
//! equivocation evidence; never one per transaction. `--otlp-endpoint` exports the
//! site's batch spans; the transport carries each batch's trace context between the
//! processes, so that one batch is one trace across the cluster.

use crate::metrics_http::{HealthCheck, MetricsServer};
use crate::metrics_trace::{self, LogFormat};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tricommit_engine::runtime::node::Node;

/// The counters a node reports when it stops (for the README's measurements: bytes on
/// the wire per transaction, syncs and frames per batch).
struct StatsLine {
    transport: Option<std::sync::Arc<tricommit_engine::transport::TransportStats>>,
    site: std::sync::Arc<tricommit_engine::runtime::node::SiteStats>,
    batches: u64,
    committed: u64,
    votes: std::sync::Arc<tricommit_engine::sign::VoteStats>,
}

impl StatsLine {
    fn of(node: &Node) -> StatsLine {
        StatsLine {
            transport: node.transport_stats(),
            site: node.stats().clone(),
            batches: node.batches(),
            committed: node.outcomes().0,
            votes: node.vote_stats().clone(),
        }
    }

    fn render(&self) -> String {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let (mut frames_out, mut bytes_out, mut bytes_in) = (0, 0, 0);
        if let Some(transport) = &self.transport {
            for id in 0..=u8::MAX {
                let Some(peer) = transport.peer(tricommit_engine::proto::SiteId(id)) else {
                    break;
                };
                frames_out += load(&peer.frames_out_total);
                bytes_out += load(&peer.bytes_out_total);
                bytes_in += load(&peer.bytes_in_total);
            }
        }
        format!(
            "site_frames_out={frames_out} site_bytes_out={bytes_out} site_bytes_in={bytes_in} \
             syncs={} records={} batches={} committed={} votes_verified={} \
             votes_refused={} equivocations={}",
            load(&self.site.syncs),
            load(&self.site.records),
            self.batches,
            self.committed,
            load(&self.votes.votes_verified),
            load(&self.votes.votes_refused_signature)
                + load(&self.votes.votes_refused_unsigned)
                + load(&self.votes.votes_refused_flagged),
            load(&self.votes.equivocations),
        )
    }
}

/// How often the node looks at signals, its links and its site loop.
const POLL_MS: u64 = 20;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The cluster directory (`tricommit cluster init`).
    #[arg(long)]
    cluster: PathBuf,
    /// This node's site: replica-N or participant-N.
    #[arg(long)]
    site: String,
    /// Serve `GET /metrics` (OpenMetrics) and `GET /healthz` (200 once this site's
    /// links are up) on HOST:PORT while the node runs.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Export this site's batch spans over OTLP/HTTP (protobuf) to this collector,
    /// e.g. http://127.0.0.1:4318 (`/v1/traces` is added when the URL has no path).
    /// Off by default, and free when off.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// With --otlp-endpoint on the opening replica: trace one batch in N (1: every
    /// batch); the other sites follow its choice.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(tricommit_engine::metrics::trace::SAMPLE_EVERY_MAX)))]
    trace_sample_every: u32,
    /// How log lines are written to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Tests only: a participant that misbehaves. `equivocate` signs its true votes for
    /// the replica that asked and contradicting votes for another replica.
    #[arg(long, hide = true, value_enum)]
    test_byzantine: Option<ByzantineMode>,
    /// Test only (the chaos runner): abort the process, as `kill -9` would, the N-th
    /// time this site reaches POINT (after-prepare-sent, after-precommit-logged,
    /// after-decision; N defaults to 1). See engine/src/runtime/crashpoint.rs.
    #[arg(long, value_name = "POINT[:N]", hide = true, value_parser = crash_point)]
    test_crash_at: Option<(tricommit_engine::runtime::crashpoint::CrashPoint, u64)>,
}

fn crash_point(
    text: &str,
) -> Result<(tricommit_engine::runtime::crashpoint::CrashPoint, u64), String> {
    tricommit_engine::runtime::crashpoint::parse(text)
}

/// The misbehaviours `--test-byzantine` knows.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ByzantineMode {
    Equivocate,
}

pub fn run(args: NodeArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for number in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(error) = signal_hook::flag::register(number, stop.clone()) {
            eprintln!("tricommit: error: cannot handle signal {number}: {error}");
            return ExitCode::from(1);
        }
    }
    tricommit_engine::metrics::trace::set_sample_every(args.trace_sample_every);
    // Dropped last, after the node stopped: it flushes the spans still buffered.
    let _telemetry = match metrics_trace::init(
        args.log_format,
        args.otlp_endpoint.as_deref(),
        "tricommit-node",
        Some(&args.site),
    ) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("tricommit: error: {}: {error}", args.site);
            return ExitCode::from(2);
        }
    };
    if let Some((point, hits)) = args.test_crash_at {
        tricommit_engine::runtime::crashpoint::arm(point, hits);
    }
    let byzantine = args.test_byzantine.map(|mode| match mode {
        ByzantineMode::Equivocate => tricommit_engine::sign::Byzantine::Equivocate,
    });
    let node = match Node::start_with(&args.cluster, &args.site, byzantine) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("tricommit: error: {}: {error}", args.site);
            return ExitCode::from(if error.is_input() { 2 } else { 1 });
        }
    };
    // Healthy from the moment every link is up until the node stops.
    let healthy = Arc::new(AtomicBool::new(false));
    let _metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let healthy = healthy.clone();
            let health: HealthCheck = Arc::new(move || healthy.load(Ordering::Relaxed));
            match MetricsServer::start(addr, node.metrics().clone(), health) {
                Ok(server) => {
                    eprintln!(
                        "tricommit: {}: metrics on http://{}/metrics",
                        args.site,
                        server.local_addr()
                    );
                    Some(server)
                }
                Err(error) => {
                    eprintln!("tricommit: error: {}: {error}", args.site);
                    let _ = node.shutdown();
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let mut announced = false;
    while !stop.load(Ordering::Relaxed) && !node.site_finished() {
        if !announced && node.links_up() {
            announced = true;
            healthy.store(true, Ordering::Relaxed);
            println!("ready {}", args.site);
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    healthy.store(false, Ordering::Relaxed);
    let summary = StatsLine::of(&node);
    let result = node.shutdown();
    // On stderr, so that stdout stays the readiness protocol of `cluster up`.
    eprintln!("tricommit: {} stopped: {}", args.site, summary.render());
    match result {
        Ok(()) if stop.load(Ordering::Relaxed) => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("tricommit: error: {}: the site stopped", args.site);
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("tricommit: error: {}: {error}", args.site);
            ExitCode::from(1)
        }
    }
}
