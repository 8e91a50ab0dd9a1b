//! Structured logs and trace export: `--log-format json|text` and `--otlp-endpoint URL`.
//!
//! Logs go to stderr through `tracing-subscriber`, one line per notable event (a site's
//! recovery report, a torn WAL tail dropped, a sync backend fallback, a termination
//! round started or decided), never per transaction. Batch spans (target
//! `tricommit::batch`) never reach the log; they go only to the OTLP exporter, and only
//! when `--otlp-endpoint` is given: otherwise the engine does not even create them
//! (`metrics::trace::set_enabled`).
//!
//! The exporter speaks OTLP over HTTP with protobuf bodies (`opentelemetry-otlp`'s
//! `http-proto`), through [`BlockingHttpClient`], a small HTTP/1.1 client on
//! `std::net`: the batch span processor runs on its own thread, so a blocking client is
//! all it needs, and it keeps tokio, hyper and a TLS stack out of the build. It speaks
//! plain `http://` only (a collector next to the process); `https://` is refused at
//! startup with a clear error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Serialize;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use tricommit_engine::metrics::TraceContext;

/// The target of the engine's batch spans.
pub const BATCH_SPAN_TARGET: &str = "tricommit::batch";
/// Longest OTLP response the client reads (collectors answer with a few bytes).
pub const OTLP_RESPONSE_BYTES_MAX: u64 = 1 << 20;
/// How long one export may take (connect, send, read the answer).
pub const OTLP_TIMEOUT: Duration = Duration::from_secs(5);
/// The path OTLP/HTTP collectors take traces on.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Errors of setting up logs and trace export.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {0}: only http:// URLs are supported (run a collector nearby)")]
    Scheme(String),
    #[error("--otlp-endpoint {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Keeps the exporter alive; dropping it flushes every span still buffered.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            tricommit_engine::metrics::trace::set_enabled(false);
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// The traces URL for an endpoint: as given, or with `/v1/traces` when it has no path.
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let uri: http::Uri =
        endpoint
            .parse()
            .map_err(|error: http::uri::InvalidUri| TelemetryError::Url {
                url: endpoint.to_owned(),
                reason: error.to_string(),
            })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(TelemetryError::Scheme(endpoint.to_owned())),
        None => {
            return Err(TelemetryError::Url {
                url: endpoint.to_owned(),
                reason: "not an absolute http:// URL".into(),
            })
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(TelemetryError::Url {
            url: endpoint.to_owned(),
            reason: "no host".into(),
        });
    }
    let path = uri.path();
    if path.is_empty() || path == "/" {
        return Ok(format!(
            "{}{OTLP_TRACES_PATH}",
            endpoint.trim_end_matches('/')
        ));
    }
    Ok(endpoint.to_owned())
}

/// Installs the log subscriber and, with an endpoint, the OTLP span exporter. Spans
/// carry `service.name` and, when given, `service.instance.id` (a node's site name),
/// so that a collector tells the processes of one trace apart.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service_name: &'static str,
    instance: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    // Batch spans never reach the log; everything else at INFO and above does.
    let log_filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target(BATCH_SPAN_TARGET, LevelFilter::OFF);
    // Colours only for a person at a terminal, never into a file or a pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry()
            .with(log_layer)
            .try_init()
            .map_err(|error| TelemetryError::Install(error.to_string()))?;
        return Ok(TelemetryGuard { provider: None });
    };
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttpClient)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(OTLP_TIMEOUT)
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name);
    if let Some(instance) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ));
    }
    let resource = resource.build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service_name);
    let span_filter = Targets::new().with_target(BATCH_SPAN_TARGET, LevelFilter::INFO);
    let span_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(span_filter);
    tracing_subscriber::registry()
        .with(log_layer)
        .with(span_layer)
        .try_init()
        .map_err(|error| TelemetryError::Install(error.to_string()))?;
    // The cluster's transport converts spans to and from the contexts its frames carry.
    tricommit_engine::metrics::trace::set_bridge(tricommit_engine::metrics::trace::SpanBridge {
        context_of,
        attach_parent,
    });
    tricommit_engine::metrics::trace::set_enabled(true);
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The trace context of `span`, to carry in a frame, when it is exported (tracing on
/// and an OTLP layer installed); `None` otherwise. The node's transport puts a traced
/// batch's context after each part that starts a phase at its receiver.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    Some(TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
    })
}

/// Makes `span` a child of the remote parent a frame carried, so that one batch is one
/// trace across processes. Call it before the span is entered or closed.
pub fn attach_parent(span: &tracing::Span, parent: TraceContext) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::SAMPLED,
        true,
        opentelemetry::trace::TraceState::default(),
    );
    // Fails only without an OpenTelemetry layer, where there is no trace to join.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// A blocking HTTP/1.1 client for the OTLP exporter: one connection per export, with
/// timeouts and a bounded response.
#[derive(Debug, Clone, Copy)]
pub struct BlockingHttpClient;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        post(&request).map_err(|error| error.into())
    }
}

/// Sends one request and reads the whole answer (the server closes the connection).
fn post(request: &http::Request<bytes::Bytes>) -> Result<http::Response<bytes::Bytes>, String> {
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(format!("{uri}: only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("{host}:{port}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, OTLP_TIMEOUT)
        .map_err(|error| format!("connect {address}: {error}"))?;
    let io = |error: std::io::Error| format!("{address}: {error}");
    stream.set_read_timeout(Some(OTLP_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(OTLP_TIMEOUT)).map_err(io)?;
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.method(),
        request.body().len()
    );
    for (name, value) in request.headers() {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        let value = value.to_str().map_err(|error| error.to_string())?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(request.body()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(OTLP_RESPONSE_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(io)?;
    parse_response(&answer)
}

/// Reads the status code and the body (after the blank line) of an HTTP/1.1 answer.
fn parse_response(answer: &[u8]) -> Result<http::Response<bytes::Bytes>, String> {
    let end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("the collector's answer has no complete head")?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| "the answer head is not UTF-8")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("no status code in {:?}", head.lines().next()))?;
    http::Response::builder()
        .status(status)
        .body(bytes::Bytes::copy_from_slice(&answer[end + 4..]))
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_only_when_the_url_has_none() {
        // Proves the endpoint rule: a bare collector address gets `/v1/traces`, a full
        // URL is kept, and https or a relative URL is refused with the flag's name.
        assert_eq!(
            traces_url("http://127.0.0.1:4318").expect("valid"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/custom/traces").expect("valid"),
            "http://collector:4318/custom/traces"
        );
        assert!(matches!(
            traces_url("https://collector:4318"),
            Err(TelemetryError::Scheme(_))
        ));
        assert!(traces_url("collector:4318")
            .expect_err("not absolute")
            .to_string()
            .contains("--otlp-endpoint"));
    }

    #[test]
    fn a_span_joins_the_trace_of_a_context_carried_from_another_process() {
        // Proves the cluster half of tracing: the 24 bytes taken from the opener's
        // batch span, decoded on the other side, make a span there part of the same
        // trace (same trace id, its own span id).
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!(target: "tricommit::batch", "batch");
            let sent = context_of(&root).expect("an exported span has a context");
            let received = TraceContext::decode(&sent.encode()).expect("valid bytes");
            let remote = tracing::info_span!(target: "tricommit::batch", "prepare");
            attach_parent(&remote, received);
            let joined = context_of(&remote).expect("context");
            assert_eq!(joined.trace_id, sent.trace_id);
            assert_ne!(joined.span_id, sent.span_id);
        });
        assert!(context_of(&tracing::Span::none()).is_none());
    }

    #[test]
    fn an_answer_is_parsed_into_status_and_body() {
        // Proves the client reads the status code and the body, and refuses a torn head.
        let response =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("parses");
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"ok");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
