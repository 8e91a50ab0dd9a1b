//! The recovery scan: check every header, record, CRC and LSN, and find the end.
//!
//! The scan is pure: it reads byte slices and never writes, so `Wal::open` (which then
//! repairs the tail) and the read-only `scan` used by the tools share it.

use std::path::PathBuf;

use crate::error::WalError;
use crate::format::{
    decode_item, decode_sync_mark, HeaderProblem, Item, Lsn, RecordProblem, SegmentHeader,
    SyncMark, SEGMENT_HEADER_BYTES, SYNC_MARK_TAG,
};

/// One segment handed to the scan, in log order.
pub(crate) struct SegmentInput<'a> {
    pub(crate) path: PathBuf,
    /// The number in the file name; the header must agree.
    pub(crate) number: u64,
    pub(crate) bytes: &'a [u8],
}

/// What the scan found in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment file.
    pub path: PathBuf,
    /// Its number in the log.
    pub number: u64,
    /// LSN of its first record.
    pub first_lsn: Lsn,
    /// Valid records it holds.
    pub records: u64,
    /// Byte offset just past its last valid item (record or sync mark).
    pub end_offset: u64,
    /// Byte offset just past its last valid record (`SEGMENT_HEADER_BYTES` when none).
    pub records_end_offset: u64,
    /// Bytes before this offset are vouched durable by a valid sync mark in this segment
    /// (`SEGMENT_HEADER_BYTES` when no mark vouches for any).
    pub proven_offset: u64,
}

/// Bytes after the last valid record of the last segment that are not zero: the torn
/// remains of writes that were never synced. Opening the log drops (zeroes) them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment file.
    pub path: PathBuf,
    /// Byte offset where the log ends and the torn bytes begin.
    pub offset: u64,
    /// From `offset` to the last non-zero byte of the segment.
    pub bytes_dropped: u64,
    /// What was found at `offset`.
    pub reason: &'static str,
}

/// The result of a successful scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// Every segment, oldest first.
    pub segments: Vec<SegmentSummary>,
    /// LSN of the oldest record held (equals `next_lsn` when the log holds none).
    pub first_lsn: Lsn,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// The torn tail, if the last segment has one.
    pub tail: Option<TornTail>,
}

impl ScanReport {
    /// Number of valid records in the log.
    pub fn records(&self) -> u64 {
        self.next_lsn - self.first_lsn
    }
}

/// Scans segments given in log order. Damage anywhere but the tail of the last segment
/// is an error naming the file and byte offset.
pub(crate) fn scan(inputs: &[SegmentInput<'_>]) -> Result<ScanReport, WalError> {
    let headers = decode_headers(inputs)?;
    let Some(first_header) = headers.first() else {
        return Err(WalError::Config("scan needs at least one segment"));
    };
    let mut segments = Vec::with_capacity(inputs.len());
    let mut lsn_next = first_header.first_lsn;
    let mut tail = None;
    for (index, (input, header)) in inputs.iter().zip(&headers).enumerate() {
        let successor_first_lsn = headers.get(index + 1).map(|next| next.first_lsn);
        if header.first_lsn != lsn_next {
            return Err(corrupt(
                input,
                24,
                format!(
                    "segment starts at LSN {} but LSN {lsn_next} comes next",
                    header.first_lsn
                ),
            ));
        }
        let walk = walk_records(input.bytes, header.first_lsn, successor_first_lsn);
        segments.push(SegmentSummary {
            path: input.path.clone(),
            number: input.number,
            first_lsn: header.first_lsn,
            records: walk.lsn_next - header.first_lsn,
            end_offset: walk.end_offset,
            records_end_offset: walk.records_end_offset,
            proven_offset: walk.proven_offset,
        });
        match (successor_first_lsn, walk.problem) {
            (Some(successor), Some(problem)) if walk.lsn_next != successor => {
                let reason = format!(
                    "{} (expected LSN {}; the next segment starts at {successor})",
                    problem.describe(),
                    walk.lsn_next
                );
                return Err(corrupt(input, walk.end_offset, reason));
            }
            (None, Some(problem)) => {
                tail = last_segment_end(input, walk.end_offset, walk.lsn_next, problem)?
            }
            _ => {}
        }
        lsn_next = walk.lsn_next;
    }
    Ok(ScanReport {
        segments,
        first_lsn: first_header.first_lsn,
        next_lsn: lsn_next,
        tail,
    })
}

fn decode_headers(inputs: &[SegmentInput<'_>]) -> Result<Vec<SegmentHeader>, WalError> {
    let mut headers = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let header = SegmentHeader::decode(input.bytes).map_err(|problem| match problem {
            HeaderProblem::NotAWal => WalError::NotAWal {
                path: input.path.clone(),
                reason: "bad magic or too short",
            },
            HeaderProblem::Corrupt(reason) => corrupt(input, 0, reason.to_owned()),
        })?;
        if header.segment_number != input.number {
            return Err(corrupt(
                input,
                16,
                format!(
                    "header says segment {}, file name says {}",
                    header.segment_number, input.number
                ),
            ));
        }
        // Only the last segment may be short: a truncated file whose missing end counts
        // as part of the tail. `Wal::open` extends it back before scanning.
        let is_last = index + 1 == inputs.len();
        let length = input.bytes.len() as u64;
        if header.segment_bytes != length && !(is_last && length < header.segment_bytes) {
            return Err(corrupt(
                input,
                32,
                format!(
                    "header says {} bytes, file has {}",
                    header.segment_bytes,
                    input.bytes.len()
                ),
            ));
        }
        if index > 0 && inputs[index - 1].number + 1 != input.number {
            let missing = inputs[index - 1].number + 1;
            return Err(corrupt(
                input,
                0,
                format!("segment {missing} is missing before this one"),
            ));
        }
        headers.push(header);
    }
    Ok(headers)
}

struct Walk {
    lsn_next: Lsn,
    end_offset: u64,
    records_end_offset: u64,
    proven_offset: u64,
    /// Why the walk stopped, if it stopped at bytes that are not a valid next record.
    problem: Option<RecordProblem>,
}

/// Decodes records and sync marks from the header on. Stops at the first invalid item,
/// or, in a segment that has a successor, as soon as the successor's first LSN is reached.
fn walk_records(bytes: &[u8], first_lsn: Lsn, stop_at_lsn: Option<Lsn>) -> Walk {
    let mut walk = Walk {
        lsn_next: first_lsn,
        end_offset: SEGMENT_HEADER_BYTES,
        records_end_offset: SEGMENT_HEADER_BYTES,
        proven_offset: SEGMENT_HEADER_BYTES,
        problem: None,
    };
    while Some(walk.lsn_next) != stop_at_lsn {
        match decode_item(bytes, walk.end_offset as usize, walk.lsn_next) {
            Ok((Item::Record(_), used)) => {
                walk.end_offset += used as u64;
                walk.records_end_offset = walk.end_offset;
                walk.lsn_next += 1;
            }
            Ok((Item::Mark(mark), used)) => {
                walk.end_offset += used as u64;
                walk.proven_offset = walk.proven_offset.max(mark.durable_offset);
            }
            Err(problem) => {
                walk.problem = Some(problem);
                break;
            }
        }
    }
    walk
}

/// Decides what the first bad item of the last segment is. Damage that a later sync
/// mark vouches for (its durable offset lies past the damage) hit bytes that a completed
/// sync had made durable: that is corruption, named by file and offset. Anything else is
/// the torn tail of writes that never finished syncing.
fn last_segment_end(
    input: &SegmentInput<'_>,
    offset: u64,
    lsn_expected: Lsn,
    problem: RecordProblem,
) -> Result<Option<TornTail>, WalError> {
    let rest = &input.bytes[offset as usize..];
    let nonzero_end = last_nonzero_end(rest);
    if let Some((mark_offset, mark)) = find_vouching_mark(input.bytes, offset, nonzero_end) {
        let reason = format!(
            "{} (expected LSN {lsn_expected}), yet the sync mark at byte offset {mark_offset} \
             shows this segment was durable up to byte offset {}",
            problem.describe(),
            mark.durable_offset
        );
        return Err(corrupt(input, offset, reason));
    }
    Ok((nonzero_end > 0).then(|| TornTail {
        path: input.path.clone(),
        offset,
        bytes_dropped: nonzero_end as u64,
        reason: problem.describe(),
    }))
}

/// Searches `damage_offset .. damage_offset + search_bytes` of a segment for a sync mark
/// (tag and CRC valid) that vouches for the byte at `damage_offset`. Marks sit at any
/// byte offset, so every position holding the tag is tried; the search never reads past
/// the last non-zero byte, which bounds it by the segment size.
fn find_vouching_mark(
    segment: &[u8],
    damage_offset: u64,
    search_bytes: usize,
) -> Option<(u64, SyncMark)> {
    let tag = SYNC_MARK_TAG.to_le_bytes();
    let start = damage_offset as usize;
    let end = (start + search_bytes).min(segment.len());
    let window = &segment[start..end];
    window
        .windows(tag.len())
        .enumerate()
        .filter(|(_, candidate)| *candidate == tag)
        .find_map(|(position, _)| {
            // The mark's last bytes are usually zero, so it may run past `end`.
            let mark_offset = damage_offset + position as u64;
            let mark = decode_sync_mark(&segment[mark_offset as usize..])?;
            let vouches = mark.durable_offset > damage_offset && mark.durable_offset <= mark_offset;
            vouches.then_some((mark_offset, mark))
        })
}

/// One past the index of the last non-zero byte, or 0 when all are zero.
fn last_nonzero_end(bytes: &[u8]) -> usize {
    const WORD_BYTES: usize = 8;
    let whole_words = bytes.len() / WORD_BYTES * WORD_BYTES;
    if let Some(index) = bytes[whole_words..].iter().rposition(|&byte| byte != 0) {
        return whole_words + index + 1;
    }
    let mut words = bytes[..whole_words].chunks_exact(WORD_BYTES);
    match words.rposition(|word| word.iter().any(|&byte| byte != 0)) {
        Some(word) => {
            let start = word * WORD_BYTES;
            let within = bytes[start..start + WORD_BYTES]
                .iter()
                .rposition(|&byte| byte != 0)
                .unwrap_or(0);
            start + within + 1
        }
        None => 0,
    }
}

fn corrupt(input: &SegmentInput<'_>, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        path: input.path.clone(),
        offset,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::last_nonzero_end;

    // Proves the word-wise search finds the last non-zero byte at every position.
    #[test]
    fn last_nonzero_end_finds_every_position() {
        for length in 0..40 {
            assert_eq!(last_nonzero_end(&vec![0u8; length]), 0);
            for position in 0..length {
                let mut bytes = vec![0u8; length];
                bytes[position] = 7;
                if position > 0 {
                    bytes[0] = 1;
                }
                assert_eq!(
                    last_nonzero_end(&bytes),
                    position + 1,
                    "length {length} position {position}"
                );
            }
        }
    }
}
