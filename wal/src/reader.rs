//! Iterating records from a given LSN over already-scanned segments.

use std::path::Path;

use crate::error::WalError;
use crate::format::{decode_item, Item, Lsn, Record, SEGMENT_HEADER_BYTES};

/// The readable part of one segment.
pub(crate) struct Span<'a> {
    pub(crate) path: &'a Path,
    /// Segment bytes from offset 0 up to the end of its last record.
    pub(crate) bytes: &'a [u8],
    pub(crate) first_lsn: Lsn,
}

/// Iterator over records, oldest first, from an LSN up to the last record that existed
/// when it was made. Records are checked again as they are read (CRC and LSN) and sync
/// marks are checked and skipped; an item that fails yields one error and ends the
/// iteration.
pub struct RecordIter<'a> {
    spans: Vec<Span<'a>>,
    span_index: usize,
    offset: usize,
    lsn_next: Lsn,
    lsn_from: Lsn,
    lsn_last: Lsn,
    /// An error to yield before anything else (an LSN that was checkpointed away).
    pending_error: Option<WalError>,
}

impl<'a> RecordIter<'a> {
    /// `spans` must be in log order and chain (each starts where the previous ends).
    pub(crate) fn new(spans: Vec<Span<'a>>, from: Lsn, lsn_last: Lsn) -> RecordIter<'a> {
        let first_lsn = spans.first().map_or(lsn_last + 1, |span| span.first_lsn);
        let pending_error = (from < first_lsn).then_some(WalError::LsnUnavailable {
            lsn: from,
            first_lsn,
        });
        // Start in the last segment whose first LSN is at or below `from`.
        let span_index = spans
            .iter()
            .rposition(|span| span.first_lsn <= from)
            .unwrap_or(0);
        let lsn_next = spans
            .get(span_index)
            .map_or(first_lsn, |span| span.first_lsn);
        RecordIter {
            spans,
            span_index,
            offset: SEGMENT_HEADER_BYTES as usize,
            lsn_next,
            lsn_from: from,
            lsn_last,
            pending_error,
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.pending_error.take() {
            self.lsn_next = self.lsn_last + 1;
            return Some(Err(error));
        }
        while self.lsn_next <= self.lsn_last {
            let span = self.spans.get(self.span_index)?;
            if self.offset >= span.bytes.len() {
                self.span_index += 1;
                self.offset = SEGMENT_HEADER_BYTES as usize;
                continue;
            }
            match decode_item(span.bytes, self.offset, self.lsn_next) {
                Ok((Item::Mark(_), used)) => self.offset += used,
                Ok((Item::Record(record), used)) => {
                    self.offset += used;
                    self.lsn_next += 1;
                    if record.lsn >= self.lsn_from {
                        return Some(Ok(record));
                    }
                }
                Err(problem) => {
                    let error = WalError::Corrupt {
                        path: span.path.to_owned(),
                        offset: self.offset as u64,
                        reason: format!(
                            "{} while reading LSN {}",
                            problem.describe(),
                            self.lsn_next
                        ),
                    };
                    self.lsn_next = self.lsn_last + 1;
                    return Some(Err(error));
                }
            }
        }
        None
    }
}
