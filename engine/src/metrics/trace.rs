//! Tracing: one trace per batch, with a span per phase at every site.
//!
//! Off by default and free when off: every hook first reads one relaxed atomic
//! ([`enabled`]) and returns. A binary turns it on when it installs an exporter
//! (`tricommit-load --otlp-endpoint URL`, `tricommit node --otlp-endpoint URL`).
//!
//! In-process, the sites find their batch's root span in a shared [`BatchSpans`] map
//! (locked once per batch and phase, never per transaction). Across processes, the
//! same parent travels in the frames as a [`TraceContext`]: the W3C trace id (16 bytes)
//! and the parent span id (8 bytes), in a TRACE part (tag 64, `docs/wire-format.md`)
//! right after the part that starts a phase at the receiver (PREPARE, ROUND, DECIDE),
//! and only when the sender traces that batch. The receiving transport joins the trace
//! ([`BatchSpans::join_remote`]): the site's phase spans then hang under a local span
//! whose parent is the remote one. The binary that owns the exporter converts between
//! a span and a `TraceContext` and installs the conversion with [`set_bridge`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::proto::BatchId;

/// Bytes a trace context takes on the wire: trace id, then parent span id.
pub const TRACE_CONTEXT_BYTES: usize = 16 + 8;

/// Batches whose root span the registry holds at once; a batch past it is not traced
/// at the other sites (the bound keeps a stuck pipeline from growing the map).
pub const BATCH_SPANS_MAX: usize = 4_096;

/// The largest sampling interval (`--trace-sample-every`).
pub const SAMPLE_EVERY_MAX: u32 = 1_000_000;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SAMPLE_EVERY: AtomicU32 = AtomicU32::new(1);

/// Traces one batch in `every` opened at each coordinator (1, the default: every
/// batch). The other sites follow the coordinator's choice: they trace a batch only
/// when its root span exists (in process) or a TRACE part came with it (cluster).
/// Clamped to `1..=SAMPLE_EVERY_MAX`.
pub fn set_sample_every(every: u32) {
    SAMPLE_EVERY.store(every.clamp(1, SAMPLE_EVERY_MAX), Ordering::Relaxed);
}

/// One batch in how many is traced.
pub fn sample_every() -> u32 {
    SAMPLE_EVERY.load(Ordering::Relaxed)
}

/// Whether batch spans are recorded at all.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns batch spans on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How spans and wire contexts convert into each other. The engine does not link the
/// OpenTelemetry crates; the binary that installs the exporter does and hands these in.
#[derive(Debug, Clone, Copy)]
pub struct SpanBridge {
    /// The context of an exported span; `None` when the span is not exported.
    pub context_of: fn(&tracing::Span) -> Option<TraceContext>,
    /// Makes a span (not yet entered) a child of a remote parent.
    pub attach_parent: fn(&tracing::Span, TraceContext),
}

static BRIDGE: OnceLock<SpanBridge> = OnceLock::new();

/// Installs the conversion for the whole process (the first call wins).
pub fn set_bridge(bridge: SpanBridge) {
    let _ = BRIDGE.set(bridge);
}

fn bridge() -> Option<&'static SpanBridge> {
    BRIDGE.get()
}

/// A batch's trace identity as it travels between processes: the W3C trace id and the
/// span id of the parent (the batch's root span at its coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// A trace context that cannot be valid (W3C: all-zero ids are invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("trace context has an all-zero trace or span id")]
pub struct InvalidTraceContext;

impl TraceContext {
    /// The 24 wire bytes: trace id, then span id, in W3C (big-endian) byte order.
    pub fn encode(&self) -> [u8; TRACE_CONTEXT_BYTES] {
        let mut bytes = [0u8; TRACE_CONTEXT_BYTES];
        bytes[..16].copy_from_slice(&self.trace_id);
        bytes[16..].copy_from_slice(&self.span_id);
        bytes
    }

    /// Reads the 24 wire bytes; all-zero ids are refused, as W3C requires.
    pub fn decode(bytes: &[u8; TRACE_CONTEXT_BYTES]) -> Result<TraceContext, InvalidTraceContext> {
        let mut context = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        context.trace_id.copy_from_slice(&bytes[..16]);
        context.span_id.copy_from_slice(&bytes[16..]);
        if context.trace_id == [0; 16] || context.span_id == [0; 8] {
            return Err(InvalidTraceContext);
        }
        Ok(context)
    }
}

/// The root span of every batch being traced, by batch, for the other sites of the
/// same process and for the transport.
#[derive(Debug, Default)]
pub struct BatchSpans {
    roots: Mutex<HashMap<BatchId, Root>>,
}

/// A batch's root span in this process.
#[derive(Debug)]
struct Root {
    span: tracing::Span,
    /// Joined from a context another process sent (a participant or backup replica of
    /// a cluster), rather than opened here by the active coordinator.
    remote: bool,
    /// The span's wire context, computed on first use (the transport asks once per
    /// batch and peer).
    context: Option<TraceContext>,
}

impl BatchSpans {
    pub fn new() -> BatchSpans {
        BatchSpans::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BatchId, Root>> {
        self.roots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Publishes a batch's root span; ignored once [`BATCH_SPANS_MAX`] are held.
    pub fn insert(&self, batch: BatchId, root: tracing::Span) {
        let mut roots = self.lock();
        if roots.len() < BATCH_SPANS_MAX {
            roots.insert(
                batch,
                Root {
                    span: root,
                    remote: false,
                    context: None,
                },
            );
        }
    }

    /// The root span of `batch`, if it is traced.
    pub fn get(&self, batch: BatchId) -> Option<tracing::Span> {
        self.lock().get(&batch).map(|root| root.span.clone())
    }

    pub fn remove(&self, batch: BatchId) {
        self.lock().remove(&batch);
    }

    /// The context to send after a part of `batch` that starts a phase at its
    /// receiver: `Some` only while tracing is on, a bridge is installed and the batch
    /// is traced here.
    pub fn wire_context(&self, batch: BatchId) -> Option<TraceContext> {
        if !enabled() {
            return None;
        }
        let bridge = bridge()?;
        let mut roots = self.lock();
        let root = roots.get_mut(&batch)?;
        if root.context.is_none() {
            root.context = (bridge.context_of)(&root.span);
        }
        root.context
    }

    /// A TRACE part arrived for `batch`: unless the batch already has a root here, a
    /// local span joins the remote trace and becomes the batch's root in this process,
    /// so that this site's phase spans land in the sender's trace. When the map is
    /// full, every joined root is closed first: batches that never finished here (a
    /// backup replica sends no DONE) must not keep later ones out for good.
    pub fn join_remote(&self, batch: BatchId, context: TraceContext) {
        if !enabled() {
            return;
        }
        let Some(bridge) = bridge() else {
            return;
        };
        let mut roots = self.lock();
        if roots.contains_key(&batch) {
            return;
        }
        if roots.len() >= BATCH_SPANS_MAX {
            roots.retain(|_, root| !root.remote);
            if roots.len() >= BATCH_SPANS_MAX {
                return;
            }
        }
        let span =
            tracing::info_span!(target: "tricommit::batch", "batch_at_site", batch = batch.0);
        (bridge.attach_parent)(&span, context);
        roots.insert(
            batch,
            Root {
                span,
                remote: true,
                context: None,
            },
        );
    }

    /// This site is done with `batch`: a root joined from another process closes (a
    /// root opened here stays until its coordinator forgets the batch).
    pub fn remove_remote(&self, batch: BatchId) {
        let mut roots = self.lock();
        if roots.get(&batch).is_some_and(|root| root.remote) {
            roots.remove(&batch);
        }
    }

    /// Roots held now (tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_round_trips_through_its_wire_bytes() {
        // Proves the 24-byte layout: trace id first, then span id, nothing lost.
        let context = TraceContext {
            trace_id: *b"0123456789abcdef",
            span_id: *b"spanid01",
        };
        let bytes = context.encode();
        assert_eq!(&bytes[..16], b"0123456789abcdef");
        assert_eq!(TraceContext::decode(&bytes), Ok(context));
    }

    #[test]
    fn an_all_zero_id_is_refused() {
        // Proves that a frame cannot smuggle in an invalid (all-zero) W3C id.
        let mut bytes = [0u8; TRACE_CONTEXT_BYTES];
        bytes[20] = 1;
        assert_eq!(TraceContext::decode(&bytes), Err(InvalidTraceContext));
        let mut bytes = [1u8; TRACE_CONTEXT_BYTES];
        bytes[16..].fill(0);
        assert_eq!(TraceContext::decode(&bytes), Err(InvalidTraceContext));
    }

    fn fixed_context(_: &tracing::Span) -> Option<TraceContext> {
        Some(TraceContext {
            trace_id: [3; 16],
            span_id: [4; 8],
        })
    }

    fn no_parent(_: &tracing::Span, _: TraceContext) {}

    #[test]
    fn joined_roots_close_when_the_site_is_done_and_local_ones_stay() {
        // Proves the cluster half of the registry: with tracing on, a local root gives
        // its wire context; a context from another process joins as a root once; the
        // site's DONE closes only joined roots; and nothing is joined or sent when
        // tracing is off.
        set_bridge(SpanBridge {
            context_of: fixed_context,
            attach_parent: no_parent,
        });
        let spans = BatchSpans::new();
        let remote = TraceContext {
            trace_id: [5; 16],
            span_id: [6; 8],
        };
        set_enabled(false);
        spans.insert(BatchId(1), tracing::Span::none());
        assert_eq!(spans.wire_context(BatchId(1)), None);
        spans.join_remote(BatchId(2), remote);
        assert_eq!(spans.len(), 1);
        set_enabled(true);
        assert!(spans.wire_context(BatchId(1)).is_some());
        assert_eq!(spans.wire_context(BatchId(9)), None);
        spans.join_remote(BatchId(2), remote);
        spans.join_remote(BatchId(2), remote);
        spans.join_remote(BatchId(1), remote);
        assert_eq!(spans.len(), 2);
        spans.remove_remote(BatchId(1));
        spans.remove_remote(BatchId(2));
        set_enabled(false);
        assert!(spans.get(BatchId(1)).is_some());
        assert!(spans.get(BatchId(2)).is_none());
    }
}
