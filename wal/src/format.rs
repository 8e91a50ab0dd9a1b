//! The on-disk format: segment header and record framing.
//!
//! `docs/wal-format.md` is the specification; this module is its only implementation.
//! Every integer is fixed-width little-endian. Nothing here does I/O: the functions take
//! and return byte slices, so the recovery scan, the reader and the tools share them.

/// Log sequence number. LSNs start at 1 and are dense: record n+1 follows record n.
pub type Lsn = u64;

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TRICWAL\0";
/// Format version written in every segment header; readers reject any other value.
/// Version 2 added sync marks (version 1 logs have none and are refused).
pub const FORMAT_VERSION: u32 = 2;
/// The header occupies a whole page, so appends never share a page with it and a torn
/// append can never damage it.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
/// Bytes of the header covered by the header CRC (magic through segment size).
const HEADER_CRC_COVERED_BYTES: usize = 40;
/// `len u32 | crc32c u32 | lsn u64 | kind u8`.
pub const RECORD_HEADER_BYTES: u64 = 17;
/// Smallest segment accepted: the header page plus one page of records.
pub const SEGMENT_BYTES_MIN: u64 = 2 * SEGMENT_HEADER_BYTES;
/// Largest segment accepted: io_uring writes carry a `u32` length, and a sync window
/// never spans more than one segment.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// The first four bytes of a sync mark, where a record has its length: `"SYNC"`. Read as
/// a length it exceeds any segment, so no record can begin with it.
pub const SYNC_MARK_TAG: u32 = u32::from_le_bytes(*b"SYNC");
/// `tag u32 | crc32c u32 | lsn u64 | durable offset u64`.
pub const SYNC_MARK_BYTES: u64 = 24;

const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SYNC_MARK_TAG as u64 > SEGMENT_BYTES_MAX);
const _: () = assert!(HEADER_CRC_COVERED_BYTES + 4 <= SEGMENT_HEADER_BYTES as usize);

/// The decoded header of one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; file names carry the same number.
    pub segment_number: u64,
    /// LSN of the first record this segment holds (or will hold, if it is empty).
    pub first_lsn: Lsn,
    /// Size of the file in bytes, fixed when the segment was created.
    pub segment_bytes: u64,
}

/// Why a header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The magic bytes are wrong: this is not a tricommit WAL segment at all.
    NotAWal,
    /// Magic is right but the header is damaged or from another format version.
    Corrupt(&'static str),
}

impl SegmentHeader {
    /// Encodes the header into the first `SEGMENT_HEADER_BYTES` of a page; the rest is zero.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut page = [0u8; SEGMENT_HEADER_BYTES as usize];
        page[0..8].copy_from_slice(&SEGMENT_MAGIC);
        page[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Bytes 12..16 are reserved and stay zero.
        page[16..24].copy_from_slice(&self.segment_number.to_le_bytes());
        page[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        page[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&page[..HEADER_CRC_COVERED_BYTES]);
        page[40..44].copy_from_slice(&crc.to_le_bytes());
        page
    }

    /// Decodes and checks a header: magic, CRC, version and field ranges.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        if bytes.len() < SEGMENT_HEADER_BYTES as usize {
            return Err(HeaderProblem::NotAWal);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderProblem::NotAWal);
        }
        let stored_crc = read_u32(bytes, 40);
        if crc32c::crc32c(&bytes[..HEADER_CRC_COVERED_BYTES]) != stored_crc {
            return Err(HeaderProblem::Corrupt("segment header CRC mismatch"));
        }
        if read_u32(bytes, 8) != FORMAT_VERSION {
            return Err(HeaderProblem::Corrupt(
                "unsupported format version (this build reads version 2 only)",
            ));
        }
        let header = SegmentHeader {
            segment_number: read_u64(bytes, 16),
            first_lsn: read_u64(bytes, 24),
            segment_bytes: read_u64(bytes, 32),
        };
        if header.first_lsn == 0 {
            return Err(HeaderProblem::Corrupt("segment header has first LSN 0"));
        }
        Ok(header)
    }
}

/// One record as stored in the log. `payload` borrows from the segment mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's log sequence number.
    pub lsn: Lsn,
    /// Caller-defined record type.
    pub kind: u8,
    /// Caller bytes, exactly as appended.
    pub payload: &'a [u8],
}

/// A sync mark: written at the end of each synced batch, it records how far the segment
/// was durable *before* that batch, so recovery can tell a bit flip in synced bytes
/// (followed by a mark that vouches for them) from a torn unsynced tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMark {
    /// LSN of the last record before the mark (the next record gets `lsn + 1`).
    pub lsn: Lsn,
    /// Every byte of this segment before this offset was durable when the mark was written.
    pub durable_offset: u64,
}

/// One decoded item of a segment: a caller's record or a sync mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A record appended by the caller.
    Record(Record<'a>),
    /// A sync mark written by the log itself.
    Mark(SyncMark),
}

/// Why no record could be decoded at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordProblem {
    /// The bytes are all zero: never written (or zeroed), the clean end of a log.
    Zero,
    /// The length field runs past the end of the segment.
    Length,
    /// The LSN is not the one that must come next.
    Lsn,
    /// The CRC does not match the LSN, kind and payload.
    Crc,
    /// A sync mark whose CRC, LSN or durable offset does not fit its place.
    Mark,
}

impl RecordProblem {
    /// A sentence fragment for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            RecordProblem::Zero => "zeroed bytes where a record was expected",
            RecordProblem::Length => "record length runs past the end of the segment",
            RecordProblem::Lsn => "record LSN out of sequence",
            RecordProblem::Crc => "record CRC mismatch",
            RecordProblem::Mark => "damaged or misplaced sync mark",
        }
    }
}

/// Total bytes one record occupies on disk.
pub fn record_bytes(payload_bytes: usize) -> u64 {
    RECORD_HEADER_BYTES + payload_bytes as u64
}

/// Writes one record into `out`, which must be exactly `record_bytes(payload.len())` long.
///
/// The caller has checked the size against the configured maximum, which is below
/// `u32::MAX`, so the length cast cannot truncate.
pub fn encode_record(out: &mut [u8], lsn: Lsn, kind: u8, payload: &[u8]) {
    debug_assert_eq!(out.len() as u64, record_bytes(payload.len()));
    debug_assert!(payload.len() <= u32::MAX as usize);
    let header = RECORD_HEADER_BYTES as usize;
    out[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    out[16] = kind;
    out[header..].copy_from_slice(payload);
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `bytes` and checks that it carries `lsn_expected`.
///
/// `bytes` runs from the record's offset to the end of the written part of the segment.
/// Returns the record and the number of bytes it occupies.
pub fn decode_record(
    bytes: &[u8],
    lsn_expected: Lsn,
) -> Result<(Record<'_>, usize), RecordProblem> {
    let header = RECORD_HEADER_BYTES as usize;
    if bytes.len() < header {
        return Err(zero_or(bytes, RecordProblem::Length));
    }
    let payload_bytes = read_u32(bytes, 0) as usize;
    let lsn = read_u64(bytes, 8);
    if lsn != lsn_expected {
        return Err(zero_or(&bytes[..header], RecordProblem::Lsn));
    }
    let total = header + payload_bytes;
    if total > bytes.len() {
        return Err(RecordProblem::Length);
    }
    if crc32c::crc32c(&bytes[8..total]) != read_u32(bytes, 4) {
        return Err(RecordProblem::Crc);
    }
    let record = Record {
        lsn,
        kind: bytes[16],
        payload: &bytes[header..total],
    };
    Ok((record, total))
}

/// Writes a sync mark into `out`, which must be exactly `SYNC_MARK_BYTES` long.
pub fn encode_sync_mark(out: &mut [u8], mark: SyncMark) {
    debug_assert_eq!(out.len() as u64, SYNC_MARK_BYTES);
    out[0..4].copy_from_slice(&SYNC_MARK_TAG.to_le_bytes());
    out[8..16].copy_from_slice(&mark.lsn.to_le_bytes());
    out[16..24].copy_from_slice(&mark.durable_offset.to_le_bytes());
    let crc = crc32c::crc32c(&out[8..SYNC_MARK_BYTES as usize]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a sync mark at the start of `bytes` when its tag and CRC are right; its
/// place in the log is not checked here.
pub fn decode_sync_mark(bytes: &[u8]) -> Option<SyncMark> {
    let mark_bytes = SYNC_MARK_BYTES as usize;
    if bytes.len() < mark_bytes || read_u32(bytes, 0) != SYNC_MARK_TAG {
        return None;
    }
    if crc32c::crc32c(&bytes[8..mark_bytes]) != read_u32(bytes, 4) {
        return None;
    }
    Some(SyncMark {
        lsn: read_u64(bytes, 8),
        durable_offset: read_u64(bytes, 16),
    })
}

/// Decodes the record or sync mark at `offset` of a segment's bytes, where the next
/// record must carry `lsn_expected`. A mark is accepted only where it fits: right after
/// LSN `lsn_expected - 1`, vouching for no byte past its own offset.
/// Returns the item and the number of bytes it occupies.
pub fn decode_item(
    segment: &[u8],
    offset: usize,
    lsn_expected: Lsn,
) -> Result<(Item<'_>, usize), RecordProblem> {
    let bytes = &segment[offset..];
    if bytes.len() < 4 || read_u32(bytes, 0) != SYNC_MARK_TAG {
        let (record, used) = decode_record(bytes, lsn_expected)?;
        return Ok((Item::Record(record), used));
    }
    let mark = decode_sync_mark(bytes).ok_or(RecordProblem::Mark)?;
    let place_fits = mark.lsn.wrapping_add(1) == lsn_expected
        && (SEGMENT_HEADER_BYTES..=offset as u64).contains(&mark.durable_offset);
    if !place_fits {
        return Err(RecordProblem::Mark);
    }
    Ok((Item::Mark(mark), SYNC_MARK_BYTES as usize))
}

/// Classifies a failed decode as `Zero` when the bytes are all zero.
fn zero_or(bytes: &[u8], problem: RecordProblem) -> RecordProblem {
    if bytes.iter().all(|&byte| byte == 0) {
        RecordProblem::Zero
    } else {
        problem
    }
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a record decodes to exactly what was encoded, and that one flipped bit in
    // any byte covered by the CRC or the LSN check is detected.
    #[test]
    fn record_round_trip_and_every_bit_flip_detected() {
        let payload = b"debit 42 from account 7";
        let mut buf = vec![0u8; record_bytes(payload.len()) as usize];
        encode_record(&mut buf, 9, 3, payload);
        let (record, used) = decode_record(&buf, 9).expect("fresh record decodes");
        assert_eq!(
            record,
            Record {
                lsn: 9,
                kind: 3,
                payload
            }
        );
        assert_eq!(used, buf.len());
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&damaged, 9).is_err(),
                "bit {bit} flip went unnoticed"
            );
        }
    }

    // Proves the header round-trips and that wrong magic and damaged fields are told apart.
    #[test]
    fn header_round_trip_and_rejections() {
        let header = SegmentHeader {
            segment_number: 5,
            first_lsn: 77,
            segment_bytes: 1 << 20,
        };
        let page = header.encode();
        assert_eq!(SegmentHeader::decode(&page), Ok(header));
        let mut not_wal = page;
        not_wal[0] = b'X';
        assert_eq!(SegmentHeader::decode(&not_wal), Err(HeaderProblem::NotAWal));
        let mut damaged = page;
        damaged[20] ^= 0x10;
        assert!(matches!(
            SegmentHeader::decode(&damaged),
            Err(HeaderProblem::Corrupt(_))
        ));
    }

    // Proves a sync mark round-trips, is accepted only at its place (right LSN, durable
    // offset not past itself), and that every flipped bit in it is detected.
    #[test]
    fn sync_mark_round_trip_placement_and_bit_flips() {
        let offset = 5000usize;
        let mut segment = vec![0u8; offset + SYNC_MARK_BYTES as usize];
        let mark = SyncMark {
            lsn: 41,
            durable_offset: 4500,
        };
        encode_sync_mark(&mut segment[offset..], mark);
        assert_eq!(
            decode_item(&segment, offset, 42),
            Ok((Item::Mark(mark), SYNC_MARK_BYTES as usize))
        );
        assert_eq!(decode_item(&segment, offset, 43), Err(RecordProblem::Mark));
        let mut beyond = segment.clone();
        encode_sync_mark(
            &mut beyond[offset..],
            SyncMark {
                lsn: 41,
                durable_offset: offset as u64 + 1,
            },
        );
        assert_eq!(decode_item(&beyond, offset, 42), Err(RecordProblem::Mark));
        for bit in 0..SYNC_MARK_BYTES as usize * 8 {
            let mut damaged = segment.clone();
            damaged[offset + bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_item(&damaged, offset, 42).is_err(),
                "bit {bit} flip went unnoticed"
            );
        }
    }

    // Proves an all-zero region reads as the clean end, not as corruption.
    #[test]
    fn zeroes_are_classified_as_end() {
        let zeros = [0u8; 64];
        assert_eq!(decode_record(&zeros, 1), Err(RecordProblem::Zero));
        assert_eq!(decode_record(&zeros[..5], 1), Err(RecordProblem::Zero));
    }
}
