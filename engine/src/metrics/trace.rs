//! Tracing: one trace per batch, with a span per phase at every site.
//!
//! Off by default and free when off: every hook first reads one relaxed atomic
//! ([`enabled`]) and returns. A binary turns it on when it installs an exporter
//! (`tricommit-load --otlp-endpoint URL`).
//!
//! In-process, the sites find their batch's root span in a shared [`BatchSpans`] map
//! (locked once per batch and phase, never per transaction). Across processes, the
//! same parent travels in the frames as a [`TraceContext`]: the W3C trace id (16 bytes)
//! and the parent span id (8 bytes), 24 bytes after the frame header, present only when
//! the sender traces that batch (a header flag says so). The binary that owns the
//! exporter converts between a span and a `TraceContext`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::proto::BatchId;

/// Bytes a trace context takes on the wire: trace id, then parent span id.
pub const TRACE_CONTEXT_BYTES: usize = 16 + 8;

/// Batches whose root span the registry holds at once; a batch past it is not traced
/// at the other sites (the bound keeps a stuck pipeline from growing the map).
pub const BATCH_SPANS_MAX: usize = 4_096;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether batch spans are recorded at all.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns batch spans on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
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
/// same process.
#[derive(Debug, Default)]
pub struct BatchSpans {
    roots: Mutex<HashMap<BatchId, tracing::Span>>,
}

impl BatchSpans {
    pub fn new() -> BatchSpans {
        BatchSpans::default()
    }

    /// Publishes a batch's root span; ignored once [`BATCH_SPANS_MAX`] are held.
    pub fn insert(&self, batch: BatchId, root: tracing::Span) {
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if roots.len() < BATCH_SPANS_MAX {
            roots.insert(batch, root);
        }
    }

    /// The root span of `batch`, if it is traced.
    pub fn get(&self, batch: BatchId) -> Option<tracing::Span> {
        let roots = self
            .roots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        roots.get(&batch).cloned()
    }

    pub fn remove(&self, batch: BatchId) {
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        roots.remove(&batch);
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
}
