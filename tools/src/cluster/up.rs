//! `tricommit cluster up DIR`: every site as a child process, until a signal.
//!
//! Readiness: each node prints `ready <site>` on its stdout once its transport has a
//! link up to every other site (and, on a replica, takes clients); `cluster up`
//! prints `ready` once every node has. Other lines of the nodes' stdout are passed on
//! prefixed with the site's name; their stderr is passed through.
//!
//! Observability options are passed on to every node: `--metrics-base-port P` gives
//! site i (replicas first, in site-id order) `--metrics-addr HOST:P+i`,
//! `--otlp-endpoint` and `--log-format` go to every node as they are.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tricommit_engine::client::config::{load_key, ClusterConfig};

use crate::metrics_trace::LogFormat;

#[derive(clap::Args)]
pub struct UpArgs {
    /// The cluster directory.
    dir: PathBuf,
    /// Serve every node's `/metrics` and `/healthz`: site i (replicas first, in
    /// site-id order) on `--metrics-host`:P+i.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    metrics_base_port: Option<u16>,
    /// The host the nodes' metrics servers bind.
    #[arg(long, default_value = "127.0.0.1", requires = "metrics_base_port")]
    metrics_host: String,
    /// Every node exports its batch spans to this OTLP/HTTP collector.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: trace one batch in N (1: every batch).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "otlp_endpoint",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(tricommit_engine::metrics::trace::SAMPLE_EVERY_MAX)))]
    trace_sample_every: u32,
    /// How the nodes write their log lines (to the shared stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// What every node is started with besides its site.
struct NodeOptions<'a> {
    args: &'a UpArgs,
}

impl NodeOptions<'_> {
    /// The node's observability flags; `index` is its site id.
    fn flags(&self, index: usize) -> Vec<String> {
        let mut flags = vec![
            "--log-format".to_owned(),
            match self.args.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .to_owned(),
        ];
        if let Some(base) = self.args.metrics_base_port {
            flags.push("--metrics-addr".to_owned());
            flags.push(format!(
                "{}:{}",
                self.args.metrics_host,
                usize::from(base) + index
            ));
        }
        if let Some(endpoint) = &self.args.otlp_endpoint {
            flags.push("--otlp-endpoint".to_owned());
            flags.push(endpoint.clone());
            flags.push("--trace-sample-every".to_owned());
            flags.push(self.args.trace_sample_every.to_string());
        }
        flags
    }
}

/// How often the supervisor looks at signals and children.
const POLL_MS: u64 = 20;
/// Node output lines passed on per turn, so that a chatty node cannot hold off the
/// checks for signals and dead nodes.
const LINES_PER_TURN_MAX: usize = 1024;
/// Node output lines waiting for the supervisor; a full queue makes the node's stdout
/// pipe wait rather than this process's memory grow.
const LINES_QUEUED_MAX: usize = 4 * LINES_PER_TURN_MAX;
/// How long the nodes have to become ready before `up` gives up on them.
const READY_WAIT_MS_MAX: u64 = 60_000;
/// How long a stopping node may take (its drain bound is a few seconds) before it is
/// killed.
const STOP_GRACE_MS: u64 = 30_000;

/// The children, killed on every path out of `run` (Drop).
struct Children {
    sites: Vec<(String, Child)>,
}

impl Children {
    /// Stops the participants, then the replicas: SIGTERM to every child of a wave
    /// still running, then a wait up to `STOP_GRACE_MS`, then SIGKILL for the rest.
    /// Participants go first because a stopping participant drains what it holds
    /// undecided, and only a running replica can tell it the outcome. Returns whether
    /// every child exited 0.
    fn stop(&mut self) -> bool {
        let mut clean = true;
        for participants in [true, false] {
            clean &= self.stop_wave(|name| name.starts_with("participant-") == participants);
        }
        self.sites.clear();
        clean
    }

    fn stop_wave(&mut self, in_wave: impl Fn(&str) -> bool) -> bool {
        for (name, child) in &mut self.sites {
            if in_wave(name) && matches!(child.try_wait(), Ok(None)) {
                signal(child, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        let mut clean = true;
        for (name, child) in self.sites.iter_mut().filter(|(name, _)| in_wave(name)) {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(POLL_MS))
                    }
                    _ => {
                        eprintln!("tricommit: {name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            if !status.is_some_and(|status| status.success()) {
                clean = false;
            }
        }
        clean
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if !self.sites.is_empty() {
            self.stop();
        }
    }
}

pub(crate) fn signal(child: &Child, number: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of this process; the
    // pid is our own child, not yet reaped (try_wait said it runs), so it names it.
    unsafe {
        libc::kill(pid, number);
    }
}

pub fn run(args: &UpArgs) -> ExitCode {
    let dir = args.dir.as_path();
    let cluster = match ClusterConfig::load(dir).and_then(|cluster| {
        load_key(dir)?;
        Ok(cluster)
    }) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("tricommit: error: {error}");
            return ExitCode::from(2);
        }
    };
    let sites = cluster.site_entries().len();
    if let Some(base) = args.metrics_base_port {
        if usize::from(base) + sites > usize::from(u16::MAX) + 1 {
            eprintln!(
                "tricommit: error: --metrics-base-port {base}: {sites} sites need ports up to {}, above 65535",
                usize::from(base) + sites - 1
            );
            return ExitCode::from(2);
        }
    }
    let options = NodeOptions { args };
    let stop = Arc::new(AtomicBool::new(false));
    for number in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(error) = signal_hook::flag::register(number, stop.clone()) {
            eprintln!("tricommit: error: cannot handle signal {number}: {error}");
            return ExitCode::from(1);
        }
    }
    let (lines, receiver) = mpsc::sync_channel(LINES_QUEUED_MAX);
    let mut children = Children { sites: Vec::new() };
    for site in cluster.site_entries() {
        let index = children.sites.len();
        let flags = options.flags(index);
        match spawn_node(dir, &site.name, &flags, index, lines.clone()) {
            Ok(child) => children.sites.push((site.name, child)),
            Err(error) => {
                eprintln!("tricommit: error: cannot start {}: {error}", site.name);
                return ExitCode::from(1);
            }
        }
    }
    drop(lines);
    supervise(&mut children, &receiver, &stop)
}

/// Starts `tricommit node` for one site; a thread passes its stdout lines on.
fn spawn_node(
    dir: &Path,
    name: &str,
    flags: &[String],
    index: usize,
    lines: mpsc::SyncSender<(usize, String)>,
) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .args(["node", "--cluster"])
        .arg(dir)
        .args(["--site", name])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; prctl(2) is one, and it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // A supervisor killed without a chance to stop its nodes takes them along.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send((index, line)).is_err() {
                break;
            }
        }
    });
    Ok(child)
}

/// Waits for readiness, then for a signal or a dead node; stops every node.
fn supervise(
    children: &mut Children,
    lines: &mpsc::Receiver<(usize, String)>,
    stop: &AtomicBool,
) -> ExitCode {
    let names: Vec<String> = children
        .sites
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    let mut ready = vec![false; names.len()];
    let mut announced = false;
    let started = Instant::now();
    loop {
        let mut received = match lines.recv_timeout(Duration::from_millis(POLL_MS)) {
            Ok(first) => vec![first],
            Err(mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            // Every node's stdout closed: they are exiting, which the checks below see.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(POLL_MS));
                Vec::new()
            }
        };
        received.extend(lines.try_iter().take(LINES_PER_TURN_MAX));
        for (index, line) in received {
            if line.starts_with("ready") {
                ready[index] = true;
            } else {
                println!("[{}] {line}", names[index]);
            }
        }
        if !announced && ready.iter().all(|&ready| ready) {
            announced = true;
            println!("ready");
            let _ = std::io::stdout().flush();
        }
        if stop.load(Ordering::Relaxed) {
            eprintln!("tricommit: stopping the cluster");
            return if children.stop() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        for (name, child) in &mut children.sites {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("tricommit: error: {name} exited ({status}); stopping the others");
                children.stop();
                return ExitCode::from(1);
            }
        }
        if !announced && started.elapsed() > Duration::from_millis(READY_WAIT_MS_MAX) {
            let waiting: Vec<&str> = names
                .iter()
                .zip(&ready)
                .filter(|(_, &ready)| !ready)
                .map(|(name, _)| name.as_str())
                .collect();
            eprintln!(
                "tricommit: error: not ready after {} s: {}; stopping the cluster",
                READY_WAIT_MS_MAX / 1000,
                waiting.join(", ")
            );
            children.stop();
            return ExitCode::from(1);
        }
    }
}
