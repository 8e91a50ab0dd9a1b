//! A minimal HTTP/1.1 server for `GET /metrics` (OpenMetrics text) and `GET /healthz`.
//!
//! Hand-written on `std::net` rather than a server crate: two read-only endpoints need
//! a request line, bounded reads and a response, not a framework. Every input is
//! bounded: the request head (`REQUEST_HEAD_BYTES_MAX`), the time a client may take
//! (`CLIENT_TIMEOUT`), and the connections served at once (one: a scrape every few
//! seconds needs no more, and a slow client is cut off by the timeout). A bad request
//! gets a 4xx and the connection is closed; nothing a client sends can stop the server.
//!
//! A node mounts it in two lines:
//! `let server = MetricsServer::start(addr, metrics.clone(), health)?;` and keep
//! `server` alive for as long as the node runs (dropping it stops the thread).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tricommit_engine::metrics::{encode_prometheus_text, encode_text, EngineMetrics};

/// Longest request head (request line and headers) the server reads.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long one client may take to send its request and read the response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The content type of the exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format, for clients that do not ask for
/// OpenMetrics.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Says whether the process is healthy (`/healthz` answers 200 or 503).
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsHttpError {
    #[error("--metrics-addr {addr}: not a HOST:PORT address: {source}")]
    Address {
        addr: String,
        source: std::io::Error,
    },
    #[error("--metrics-addr {addr}: cannot listen: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the metrics server thread: {0}")]
    Spawn(std::io::Error),
}

/// A running metrics server; dropping it stops the server and joins its thread.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (HOST:PORT; port 0 picks a free one) and serves in a thread.
    pub fn start(
        addr: &str,
        metrics: Arc<EngineMetrics>,
        health: HealthCheck,
    ) -> Result<MetricsServer, MetricsHttpError> {
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| MetricsHttpError::Address {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
        let listener =
            TcpListener::bind(&resolved[..]).map_err(|source| MetricsHttpError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MetricsHttpError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tc-metrics-http".into())
                .spawn(move || serve(listener, &metrics, &health, &stop))
                .map_err(MetricsHttpError::Spawn)?
        };
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, CLIENT_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    metrics: &Arc<EngineMetrics>,
    health: &HealthCheck,
    stop: &AtomicBool,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // An accept error (a connection reset before it was accepted, descriptors
        // exhausted) concerns one client: go on serving the others.
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = handle(stream, metrics, health);
    }
}

/// A response: status line, content type and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

fn handle(
    mut stream: TcpStream,
    metrics: &Arc<EngineMetrics>,
    health: &HealthCheck,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let (response, head_only) = match read_head(&mut stream) {
        Ok(head) => respond(&head, metrics, health),
        Err(HeadError::TooLarge) => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large",
            ),
            false,
        ),
        Err(HeadError::Malformed) => (
            Response::text("400 Bad Request", "malformed request"),
            false,
        ),
        Err(HeadError::Io(error)) => return Err(error),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(response.body.as_bytes())?;
    }
    stream.flush()
}

/// Routes a parsed request; the flag says a HEAD request wants no body.
fn respond(
    head: &RequestHead,
    metrics: &Arc<EngineMetrics>,
    health: &HealthCheck,
) -> (Response, bool) {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return (
            Response::text("405 Method Not Allowed", "only GET and HEAD"),
            false,
        );
    }
    let path = head.target.split('?').next().unwrap_or_default();
    let response = match path {
        "/metrics" => {
            // Content negotiation as Prometheus does it: OpenMetrics for a scraper that
            // asks for it (Prometheus does), the 0.0.4 text format otherwise.
            let (encoded, content_type) = if head.accepts_openmetrics {
                (encode_text(metrics), OPENMETRICS_CONTENT_TYPE)
            } else {
                (
                    encode_prometheus_text(metrics),
                    PROMETHEUS_TEXT_CONTENT_TYPE,
                )
            };
            match encoded {
                Ok(body) => Response {
                    status: "200 OK",
                    content_type,
                    body,
                },
                Err(_) => Response::text("500 Internal Server Error", "encoding failed"),
            }
        }
        "/healthz" => {
            if health() {
                Response::text("200 OK", "ok")
            } else {
                Response::text("503 Service Unavailable", "unhealthy")
            }
        }
        _ => Response::text("404 Not Found", "try /metrics or /healthz"),
    };
    (response, head_only)
}

struct RequestHead {
    method: String,
    target: String,
    /// An `Accept` header names `application/openmetrics-text`.
    accepts_openmetrics: bool,
}

enum HeadError {
    TooLarge,
    Malformed,
    Io(std::io::Error),
}

/// Reads up to the blank line that ends the head, within the byte and time bounds, and
/// parses the request line. Headers are read (to find the end) but not interpreted.
fn read_head(stream: &mut TcpStream) -> Result<RequestHead, HeadError> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
        if Instant::now() >= deadline {
            return Err(HeadError::Malformed);
        }
        let read = stream.read(&mut chunk).map_err(HeadError::Io)?;
        if read == 0 {
            return Err(HeadError::Malformed);
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let text = std::str::from_utf8(&head).map_err(|_| HeadError::Malformed)?;
    let request_line = text.lines().next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(HeadError::Malformed);
    }
    let accepts_openmetrics = text.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        accepts_openmetrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends raw bytes and returns the whole response as text.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT * 2))
            .expect("timeout");
        stream.write_all(request).expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    fn server(healthy: bool) -> MetricsServer {
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(1, 2);
        metrics.committed.fetch_add(3, Ordering::Relaxed);
        MetricsServer::start("127.0.0.1:0", metrics, Arc::new(move || healthy)).expect("start")
    }

    #[test]
    fn metrics_and_healthz_answer_and_everything_else_gets_a_4xx() {
        // Proves the routes: the exposition with its content type, health as 200 or
        // 503, and 404, 405, 400 and 431 for what the server does not serve.
        let up = server(true);
        let addr = up.local_addr();
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n";
        let metrics = exchange(addr, request);
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains(OPENMETRICS_CONTENT_TYPE));
        assert!(metrics.contains("tricommit_transactions_total{outcome=\"committed\"} 3"));
        assert!(metrics.contains("# EOF"));
        let plain = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(plain.contains(PROMETHEUS_TEXT_CONTENT_TYPE), "{plain}");
        assert!(plain.contains("# TYPE tricommit_transactions_total counter"));
        assert!(exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        assert!(exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(exchange(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(exchange(addr, b"\xff\xfe / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
        let huge = vec![b'a'; REQUEST_HEAD_BYTES_MAX + 10];
        assert!(exchange(addr, &huge).starts_with("HTTP/1.1 431"));
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("tricommit_"));
        // Still serving after all of that.
        assert!(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").contains("tricommit_batches"));
        let down = server(false);
        assert!(
            exchange(down.local_addr(), b"GET /healthz HTTP/1.1\r\n\r\n")
                .starts_with("HTTP/1.1 503")
        );
    }

    #[test]
    fn a_client_that_sends_nothing_does_not_block_the_server_for_long() {
        // Proves the per-client timeout: a silent connection is dropped, and a scrape
        // behind it is answered within a few timeouts.
        let up = server(true);
        let addr = up.local_addr();
        let _silent = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let response = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(started.elapsed() < CLIENT_TIMEOUT * 3);
    }

    #[test]
    fn a_taken_port_is_a_clear_bind_error() {
        // Proves that binding an address in use fails with the address in the message.
        let up = server(true);
        let addr = up.local_addr().to_string();
        let error = MetricsServer::start(&addr, Arc::new(EngineMetrics::new()), Arc::new(|| true))
            .err()
            .expect("the port is taken");
        assert!(matches!(error, MetricsHttpError::Bind { .. }));
        assert!(error.to_string().contains(&addr));
    }
}
