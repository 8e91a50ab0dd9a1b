//! End-to-end checks of the observability surface: in process (`tricommit-load`), a
//! scrape of the running engine agrees with the run's JSON summary, and an OTLP export
//! holds one trace per batch with all three phases; in a cluster (`tricommit cluster
//! up`), a node's scrape has every metric the dashboard and the alert rules use, and
//! one batch is one trace across the replica and participant processes.
//!
//! Every child runs under a guard that kills and waits for it on every path, every
//! wait is bounded in time, and the network stays on 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

/// The longest any one test waits for the load generator.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest OTLP request body the sink keeps.
const SINK_BODY_BYTES_MAX: usize = 16 << 20;
/// Requests the sink accepts before it stops listening.
const SINK_REQUESTS_MAX: usize = 10_000;

/// Kills and reaps the child on drop, whatever happened.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small, fast run of the load generator in `dir`.
fn load_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tricommit-load"));
    command.current_dir(dir).args([
        "--accounts",
        "1000",
        "--segment-mib",
        "4",
        "--clients",
        "2",
        "--window",
        "256",
    ]);
    command
}

/// Waits for the child to exit within the run timeout; panics (and the guard kills it)
/// otherwise.
fn wait_exit(child: &mut ChildGuard) -> std::process::ExitStatus {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tricommit-load did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET, answered in full (the server closes the connection).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// The value of the sample whose line starts with `series ` in a text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series}"))
        .parse()
        .expect("a number")
}

#[test]
fn a_scrape_after_the_run_agrees_with_the_json_summary() {
    // Proves that the exported counters are the run's own: committed, aborted, batches
    // and refusals in the last scrape equal what `--json` reports for the same run.
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("summary.json");
    let child = load_command(dir.path())
        .args(["--duration", "2", "--metrics-addr", "127.0.0.1:0"])
        .args(["--metrics-linger-s", "30", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tricommit-load");
    let mut child = ChildGuard(child);
    let stderr = child.0.stderr.take().expect("stderr");
    let (found, addr_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("tricommit-load: metrics on http://") {
                let _ = found.send(rest.trim_end_matches("/metrics").to_owned());
            }
        }
    });
    let addr: SocketAddr = addr_line
        .recv_timeout(RUN_TIMEOUT)
        .expect("the metrics address is printed")
        .parse()
        .expect("an address");
    // Unhealthy (503) until the engine is open, healthy while it runs.
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !http_get(addr, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The summary is written before the server lingers: wait until it parses.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let summary: serde_json::Value = loop {
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        if let Ok(value) = serde_json::from_str(&text) {
            break value;
        }
        assert!(Instant::now() < deadline, "no summary in time");
        std::thread::sleep(Duration::from_millis(100));
    };
    let scrape = http_get(addr, "/metrics");
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let committed = summary["committed"].as_u64().expect("committed");
    assert!(committed > 0, "the run committed nothing");
    let field = |name: &str| summary[name].as_u64().expect(name) as f64;
    assert_eq!(
        sample(
            &scrape,
            "tricommit_transactions_total{outcome=\"committed\"}"
        ),
        committed as f64
    );
    assert_eq!(
        sample(&scrape, "tricommit_transactions_total{outcome=\"aborted\"}"),
        field("aborted")
    );
    assert_eq!(sample(&scrape, "tricommit_batches_total"), field("batches"));
    assert_eq!(
        sample(&scrape, "tricommit_transaction_latency_seconds_count"),
        field("committed") + field("aborted")
    );
    let refused: f64 = scrape
        .lines()
        .filter(|line| line.starts_with("tricommit_admission_rejections_total{"))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .expect("value")
                .parse::<f64>()
                .expect("number")
        })
        .sum();
    assert_eq!(refused, field("busy_rejections"));
    assert!(
        sample(
            &scrape,
            "tricommit_phase_duration_seconds_count{phase=\"commit\"}"
        ) > 0.0
    );
    // Every transaction that completed waited once in batching and once in completion.
    for stage in ["batching", "completion"] {
        let count = sample(
            &scrape,
            &format!("tricommit_stage_wait_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(count >= field("committed"), "{stage}: {count}");
    }
    assert!(
        sample(
            &scrape,
            "tricommit_stage_wait_seconds_count{stage=\"queued\"}"
        ) > 0.0
    );
}

/// A loopback OTLP/HTTP sink: keeps every request body until stopped.
struct Sink {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bodies, stop) = (bodies.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                while !stop.load(Ordering::Acquire) && served < SINK_REQUESTS_MAX {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            if let Some(body) = receive(stream) {
                                bodies.lock().expect("bodies").push(body);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Sink {
            addr,
            bodies,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes) and answers 200.
fn receive(mut stream: TcpStream) -> Option<Vec<u8>> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 || data.len() > SINK_BODY_BYTES_MAX {
            return None;
        }
        data.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    if length > SINK_BODY_BYTES_MAX {
        return None;
    }
    while data.len() < head_end + length {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..read]);
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    Some(data[head_end..head_end + length].to_vec())
}

#[test]
fn an_otlp_export_holds_one_trace_per_batch_with_every_phase() {
    // Proves that with --otlp-endpoint the batch spans reach an OTLP/HTTP collector as
    // protobuf, and that one batch is one trace holding its root, the coordinator's
    // prepare, pre-commit and commit spans, and the participants' phase spans.
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let sink = Sink::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://{}", sink.addr);
    let child = load_command(dir.path())
        .args(["--duration", "1", "--otlp-endpoint", &endpoint])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tricommit-load");
    let mut child = ChildGuard(child);
    assert!(wait_exit(&mut child).success());
    let bodies = std::mem::take(&mut *sink.bodies.lock().expect("bodies"));
    assert!(!bodies.is_empty(), "the collector received no export");
    // trace id -> span names seen in it.
    let mut traces: HashMap<Vec<u8>, HashSet<String>> = HashMap::new();
    for body in &bodies {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let name = match span.attributes.iter().find(|kv| kv.key == "phase") {
                        Some(phase) => format!("site:{:?}", phase.value),
                        None => span.name.clone(),
                    };
                    traces
                        .entry(span.trace_id.clone())
                        .or_default()
                        .insert(name);
                }
            }
        }
    }
    let complete = traces.values().find(|names| {
        ["batch", "prepare", "pre_commit", "commit"]
            .iter()
            .all(|name| names.contains(*name))
            && names
                .iter()
                .filter(|name| name.starts_with("site:"))
                .count()
                >= 3
    });
    assert!(
        complete.is_some(),
        "no trace holds a batch with all three phases at the coordinator and the sites: {traces:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The cluster: real `tricommit node` processes started by `tricommit cluster up`.

mod cluster_support;

/// Sites of the small test cluster: two coordinator replicas, two participants.
const CLUSTER_REPLICAS: u16 = 2;
const CLUSTER_PARTICIPANTS: u16 = 2;
const CLUSTER_SITES: u16 = CLUSTER_REPLICAS + CLUSTER_PARTICIPANTS;
/// This test file's port range (fixed ports are probed for a free block in it).
const PORT_RANGE: std::ops::Range<u16> = 22_000..23_000;

/// A first port of `count` consecutive ports in [`PORT_RANGE`] that were free just now.
fn free_block(count: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |time| time.as_nanos() as u64);
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start - count);
    for probe in 0..200u64 {
        let base =
            PORT_RANGE.start + ((seed.wrapping_mul(2_654_435_761) + probe * 97) % span) as u16;
        if (0..count).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {count} free ports in {PORT_RANGE:?}");
}

/// `cluster init` of the small cluster; returns the first metrics port (the block of
/// ports after the sites' own).
fn init_small_cluster(dir: &Path) -> u16 {
    let base = free_block(2 * CLUSTER_SITES);
    let output = cluster_support::run(
        cluster_support::TRICOMMIT,
        &[
            "cluster",
            "init",
            dir.to_str().expect("utf-8 path"),
            "--replicas",
            &CLUSTER_REPLICAS.to_string(),
            "--participants",
            &CLUSTER_PARTICIPANTS.to_string(),
            "--accounts",
            "200",
            "--base-port",
            &base.to_string(),
        ],
    );
    assert!(
        output.status.success(),
        "init: {}",
        cluster_support::text(&output.stderr)
    );
    let path = dir.join("cluster.toml");
    let config = std::fs::read_to_string(&path).expect("cluster.toml");
    std::fs::write(&path, config.replace("segment_mib = 64", "segment_mib = 8"))
        .expect("write cluster.toml");
    base + CLUSTER_SITES
}

/// `cluster up DIR` with `flags`, waited for until it prints `ready`.
fn cluster_up(dir: &Path, flags: &[&str]) -> cluster_support::Proc {
    let mut args = vec!["cluster", "up", dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(flags);
    let up = cluster_support::Proc::spawn("cluster up", cluster_support::TRICOMMIT, &args);
    up.wait_line("ready", cluster_support::READY_WAIT);
    up
}

/// A short network-client run against the cluster; returns its committed count.
fn drive(dir: &Path, seconds: &str) -> u64 {
    let json = dir.join("load.json");
    let output = cluster_support::run(
        LOAD_BIN,
        &[
            "--cluster",
            dir.to_str().expect("utf-8 path"),
            "--duration",
            seconds,
            "--clients",
            "1",
            "--window",
            "256",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        output.status.success(),
        "load: {}",
        cluster_support::text(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("json");
    summary["committed"].as_u64().expect("committed")
}

const LOAD_BIN: &str = env!("CARGO_BIN_EXE_tricommit-load");

/// Metric names (`tricommit_…`) in a text, as PromQL or YAML writes them.
fn metric_names_in(text: &str, names: &mut HashSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("tricommit_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
}

/// Every metric name the dashboard's queries and the alert rules use.
fn names_the_operators_use() -> HashSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("ops/grafana/tricommit.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut names = HashSet::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    metric_names_in(expr, &mut names);
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    let rules = std::fs::read_to_string(root.join("ops/prometheus/alerts.yml")).expect("rules");
    for line in rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
    {
        metric_names_in(line, &mut names);
    }
    names
}

/// The names that have at least one sample in a text exposition.
fn sampled_names(scrape: &str) -> HashSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The body of a `GET /metrics` (status 200 asserted).
fn scrape(port: u16) -> String {
    let response = http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").expect("a head").1;
    body.to_owned()
}

/// `promtool check metrics` on `scrape`, or a loud skip without promtool.
fn promtool_check_metrics(scrape: &str, site: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!(
            "SKIPPED: `promtool check metrics` of {site}'s scrape: promtool is not installed \
             (.ci/observability.sh installs it and runs this check)"
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics of {site}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_running_nodes_scrape_has_every_metric_the_dashboard_and_the_alerts_use() {
    // Proves that the dashboard and the alert rules only ask for what a real node
    // exports: a replica's and a participant's scrape, taken from `cluster up
    // --metrics-base-port` while the cluster runs, hold samples of every name they
    // use (the link families included, fed from the transport's own counters), and
    // pass `promtool check metrics` where promtool is installed.
    let dir = cluster_support::scratch();
    let cluster = dir.path().join("cluster");
    let metrics_base = init_small_cluster(&cluster);
    let mut up = cluster_up(
        &cluster,
        &["--metrics-base-port", &metrics_base.to_string()],
    );
    let committed = drive(&cluster, "1");
    assert!(committed > 0, "the cluster committed nothing");
    let used = names_the_operators_use();
    assert!(used.len() > 20, "too few names found: {used:?}");
    for (site, offset) in [("replica-0", 0), ("participant-0", CLUSTER_REPLICAS)] {
        let text = scrape(metrics_base + offset);
        let sampled = sampled_names(&text);
        let mut missing: Vec<&String> = used
            .iter()
            .filter(|name| !sampled.contains(*name))
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "{site}'s scrape lacks {missing:?}");
        promtool_check_metrics(&text, site);
    }
    // The link families are the transport's real counters, not placeholders.
    let replica = scrape(metrics_base);
    assert_eq!(
        sample(&replica, "tricommit_link_up{peer=\"participant-1\"}"),
        1.0
    );
    assert!(
        sample(
            &replica,
            "tricommit_link_frames_total{peer=\"participant-1\",direction=\"sent\"}"
        ) > 0.0
    );
    assert!(
        sample(
            &replica,
            "tricommit_link_bytes_total{peer=\"participant-0\",direction=\"received\"}"
        ) > 0.0
    );
    assert_eq!(
        sample(
            &replica,
            "tricommit_frames_rejected_total{reason=\"bad_mac\"}"
        ),
        0.0
    );
    assert!(!replica.contains("peer=\"replica-0\""), "a link to itself");
    assert!(
        sample(
            &replica,
            "tricommit_transactions_total{outcome=\"committed\"}"
        ) >= committed as f64
    );
    assert!(up.stop().success(), "cluster up did not stop cleanly");
}

/// The string value of attribute `key`, if it has one.
fn attribute(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            _ => None,
        }
    })
}

#[test]
fn one_batch_is_one_trace_across_the_replica_and_participant_processes() {
    // Proves that the trace context travels in the frames: with every node of a
    // `cluster up --otlp-endpoint` exporting to one loopback sink, some trace holds
    // the opening replica's batch span and its prepare, pre-commit and commit spans,
    // and a participant process's phase spans of all three phases, each process named
    // by its `service.instance.id`.
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let sink = Sink::start();
    let dir = cluster_support::scratch();
    let cluster = dir.path().join("cluster");
    init_small_cluster(&cluster);
    let endpoint = format!("http://{}", sink.addr);
    let mut up = cluster_up(&cluster, &["--otlp-endpoint", &endpoint]);
    assert!(drive(&cluster, "1") > 0, "the cluster committed nothing");
    // The nodes flush their spans as they stop.
    assert!(up.stop().success(), "cluster up did not stop cleanly");
    let bodies = std::mem::take(&mut *sink.bodies.lock().expect("bodies"));
    assert!(!bodies.is_empty(), "the collector received no export");
    // trace id -> (process, span) names seen in it.
    let mut traces: HashMap<Vec<u8>, HashSet<(String, String)>> = HashMap::new();
    for body in &bodies {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let process = attribute(&attributes, "service.instance.id")
                .unwrap_or_else(|| "unnamed".to_owned());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let name = match attribute(&span.attributes, "phase") {
                        Some(phase) => format!("site:{phase}"),
                        None => span.name.clone(),
                    };
                    traces
                        .entry(span.trace_id.clone())
                        .or_default()
                        .insert((process.clone(), name));
                }
            }
        }
    }
    let processes: HashSet<&String> = traces
        .values()
        .flat_map(|names| names.iter().map(|(process, _)| process))
        .collect();
    let has = |names: &HashSet<(String, String)>, process: &str, span: &str| {
        names.contains(&(process.to_owned(), span.to_owned()))
    };
    let joined = traces.values().find(|names| {
        let coordinator = ["batch", "prepare", "pre_commit", "commit"]
            .iter()
            .all(|span| has(names, "replica-0", span));
        let participant = (0..CLUSTER_PARTICIPANTS).any(|index| {
            let process = format!("participant-{index}");
            ["site:prepare", "site:pre_commit", "site:commit"]
                .iter()
                .all(|span| has(names, &process, span))
        });
        coordinator && participant
    });
    assert!(
        joined.is_some(),
        "no trace holds a batch's three phases at replica-0 and at a participant \
         process; processes seen: {processes:?}, traces: {}",
        traces.len()
    );
}
