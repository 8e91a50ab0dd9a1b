//! End-to-end checks of the observability surface of `tricommit-load`: a scrape of the
//! running engine agrees with the run's JSON summary, and an OTLP export holds one
//! trace per batch with all three phases.
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
