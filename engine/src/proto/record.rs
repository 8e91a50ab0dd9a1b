//! The write-ahead-log records of every role, and their codec.
//!
//! A record is a `kind` byte plus a payload, matching the WAL's
//! `append(kind, payload)`. All integers are fixed-width little-endian. Decoding checks
//! every length against the bytes left and against [`BATCH_TXNS_MAX`] before it
//! allocates, and returns a typed [`RecordError`]; no byte string makes it panic.
//!
//! | kind | record | written by | forced |
//! | --- | --- | --- | --- |
//! | 1 | `Incarnation { number u32 }` | coordinator replica at start | yes, before any PREPARE |
//! | 2 | `Begin { desc }` | read only (logs written before kind 10) | — |
//! | 3 | `Prepared { desc, ops, votes }` | read only (logs written before kind 11) | — |
//! | 4 | `Elected { batch u64, elected u32, by u8 }` | any site joining an election | yes |
//! | 5 | `Transition { batch u64, state u8, attempt u32, elected u32, txns }` | any site | PC/PA yes, C/A no |
//! | 6 | `Checkpoint { number u64, incarnation u32, records u32 }` | any site at a checkpoint | yes, with its carried records |
//! | 7 | `CarriedBatch { desc, elected u32, by u8, n u32, n × (state u8, attempt u32), reasons }` | after a `Checkpoint` | yes |
//! | 8 | `CarriedRetired { n u32, n × (start u64, end u64) }` | after a `Checkpoint` | yes |
//! | 9 | `CarriedIds { n u32, n × (txn u64, batch u64, digest u64, state u8) }` | after a participant's `Checkpoint` | yes |
//! | 10 | `Begin { desc_compact }` | a site learning a batch without voting | no: the next forced record covers it |
//! | 11 | `Prepared { desc_compact, ops, votes }` | participant on PREPARE | yes if any vote is yes |
//!
//! Shared encodings: `desc = batch u64 | n u32 | n × (txn u64 | members u64)`;
//! `desc_compact = batch u64 | n u32 | form u8 | n × txn u64 | (form 1) n × class u8 | c u8
//! | c × members u64 | (form 0) n × members u64` (see `put_desc_compact`);
//! `txns = n u32 | ceil(n/64) × word u64`; a vote is `tag u8 (0 yes, 1 no, 2 read-only) |
//! reason u16`; `ops = m u32 | m × (txn u64 | payload [u8; 24] | vote)`;
//! `reasons = r u32 | r × (index u32 | reason u16)`.
//!
//! A checkpoint group is a `Checkpoint` marker followed at once by exactly `records`
//! carried records (kinds 7, 8 and 9): together they summarise everything recovery needs
//! from the records before the marker (see `proto::checkpoint`). A group cut short by a
//! crash is incomplete and recovery ignores it.

use std::sync::Arc;

use super::ids::Held;
use super::rm::{Op, Reason, TxnId, Vote, OP_PAYLOAD_BYTES};
use super::types::{
    BatchId, Descriptor, DescriptorRef, MaskClasses, SiteId, State, TxnSet, BATCH_TXNS_MAX,
};

/// Record kind bytes (the WAL's `kind`). Kind 0 is never used, so a zeroed page never
/// decodes as a record.
pub mod kind {
    pub const INCARNATION: u8 = 1;
    pub const BEGIN: u8 = 2;
    pub const PREPARED: u8 = 3;
    pub const ELECTED: u8 = 4;
    pub const TRANSITION: u8 = 5;
    pub const CHECKPOINT: u8 = 6;
    pub const CARRIED_BATCH: u8 = 7;
    pub const CARRIED_RETIRED: u8 = 8;
    pub const CARRIED_IDS: u8 = 9;
    /// `Begin` with its descriptor in the compact encoding (`desc_compact`).
    pub const BEGIN_COMPACT: u8 = 10;
    /// `Prepared` with its descriptor in the compact encoding (`desc_compact`).
    pub const PREPARED_COMPACT: u8 = 11;
}

/// `desc_compact`'s form byte: the participant masks follow the ids, one per
/// transaction.
const DESC_FORM_MASKS: u8 = 0;
/// `desc_compact`'s form byte: a class index per transaction follows the ids, then the
/// table of distinct masks.
const DESC_FORM_CLASSES: u8 = 1;
/// The most distinct participant masks a compact descriptor's table holds (its indices
/// are one byte). A batch with more is written in the masks form.
pub const DESC_CLASSES_MAX: usize = 255;

/// One WAL record of the protocol.
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum Record {
    /// A coordinator replica (re)started; batch ids it opens carry this number.
    Incarnation { number: u32 },
    /// This site learned a batch it did not vote on (replica, or participant in Q).
    Begin { desc: DescriptorRef },
    /// A participant prepared the batch: its operations in batch order and its votes,
    /// so that recovery can replay the resource manager and check that it votes alike.
    Prepared {
        desc: DescriptorRef,
        ops: Arc<[Op]>,
        votes: Vec<Vote>,
    },
    /// The site joined election `elected` for the batch, run by `by`.
    Elected {
        batch: BatchId,
        elected: u32,
        by: SiteId,
    },
    /// The transactions `txns` moved to `state` at `attempt`, under election `elected`.
    Transition {
        batch: BatchId,
        state: State,
        attempt: u32,
        elected: u32,
        txns: TxnSet,
    },
    /// A checkpoint begins: the `records` records right after this one carry forward
    /// what recovery needs from every record before it. `number` names the checkpoint
    /// (a participant's resource-manager snapshot carries the same number);
    /// `incarnation` is a coordinator replica's current one (0 at a participant).
    Checkpoint {
        number: u64,
        incarnation: u32,
        records: u32,
    },
    /// One batch as the site held it in memory at a checkpoint: its descriptor, its
    /// `last_elected` and who runs that election, every transaction's state and
    /// `last_attempt`, and a participant's no votes with their reasons.
    CarriedBatch {
        desc: DescriptorRef,
        elected: u32,
        by: SiteId,
        states: Vec<(State, u32)>,
        no_reasons: Vec<(u32, Reason)>,
    },
    /// Ranges `[start, end)` of batch ids the site had retired at a checkpoint, so that
    /// late messages about them stay ignored once their records are gone.
    CarriedRetired { ranges: Vec<(u64, u64)> },
    /// Part of a participant's transaction-id index at a checkpoint (see
    /// `proto::ids`): decided entries in eviction order, then pending ones.
    CarriedIds { entries: Vec<(TxnId, Held)> },
}

/// Why a record did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: needed {needed} bytes at offset {offset}, payload is {len}")]
    Truncated {
        needed: usize,
        offset: usize,
        len: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("bad state byte {0}")]
    BadState(u8),
    #[error("bad vote tag {0}")]
    BadVote(u8),
    #[error("{field} is {value}, above the limit {limit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    #[error("inconsistent record: {0}")]
    Inconsistent(&'static str),
}

impl Record {
    /// The WAL kind byte of this record.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Incarnation { .. } => kind::INCARNATION,
            Record::Begin { .. } => kind::BEGIN_COMPACT,
            Record::Prepared { .. } => kind::PREPARED_COMPACT,
            Record::Elected { .. } => kind::ELECTED,
            Record::Transition { .. } => kind::TRANSITION,
            Record::Checkpoint { .. } => kind::CHECKPOINT,
            Record::CarriedBatch { .. } => kind::CARRIED_BATCH,
            Record::CarriedRetired { .. } => kind::CARRIED_RETIRED,
            Record::CarriedIds { .. } => kind::CARRIED_IDS,
        }
    }

    /// The batch a record concerns (`None` for `Incarnation`).
    pub fn batch(&self) -> Option<BatchId> {
        match self {
            Record::Incarnation { .. }
            | Record::Checkpoint { .. }
            | Record::CarriedRetired { .. }
            | Record::CarriedIds { .. } => None,
            Record::Begin { desc }
            | Record::Prepared { desc, .. }
            | Record::CarriedBatch { desc, .. } => Some(desc.batch),
            Record::Elected { batch, .. } | Record::Transition { batch, .. } => Some(*batch),
        }
    }

    /// Appends the payload (not the kind) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Record::Incarnation { number } => put_u32(buf, *number),
            Record::Begin { desc } => put_desc_compact(buf, desc),
            Record::Prepared { desc, ops, votes } => {
                put_desc_compact(buf, desc);
                put_u32(buf, ops.len() as u32);
                for (op, vote) in ops.iter().zip(votes) {
                    put_u64(buf, op.txn.0);
                    buf.extend_from_slice(&op.payload);
                    put_vote(buf, *vote);
                }
            }
            Record::Elected { batch, elected, by } => {
                put_u64(buf, batch.0);
                put_u32(buf, *elected);
                buf.push(by.0);
            }
            Record::Transition {
                batch,
                state,
                attempt,
                elected,
                txns,
            } => {
                put_u64(buf, batch.0);
                buf.push(*state as u8);
                put_u32(buf, *attempt);
                put_u32(buf, *elected);
                put_set(buf, txns);
            }
            Record::Checkpoint {
                number,
                incarnation,
                records,
            } => {
                put_u64(buf, *number);
                put_u32(buf, *incarnation);
                put_u32(buf, *records);
            }
            Record::CarriedBatch {
                desc,
                elected,
                by,
                states,
                no_reasons,
            } => {
                put_desc(buf, desc);
                put_u32(buf, *elected);
                buf.push(by.0);
                put_u32(buf, states.len() as u32);
                for (state, attempt) in states {
                    buf.push(*state as u8);
                    put_u32(buf, *attempt);
                }
                put_u32(buf, no_reasons.len() as u32);
                for (index, reason) in no_reasons {
                    put_u32(buf, *index);
                    buf.extend_from_slice(&reason.0.to_le_bytes());
                }
            }
            Record::CarriedRetired { ranges } => {
                put_u32(buf, ranges.len() as u32);
                for (start, end) in ranges {
                    put_u64(buf, *start);
                    put_u64(buf, *end);
                }
            }
            Record::CarriedIds { entries } => {
                put_u32(buf, entries.len() as u32);
                for (txn, held) in entries {
                    put_u64(buf, txn.0);
                    put_u64(buf, held.batch.0);
                    put_u64(buf, held.digest);
                    buf.push(held.state as u8);
                }
            }
        }
    }

    /// Decodes a payload of the given kind; the whole payload must be consumed.
    pub fn decode(kind_byte: u8, payload: &[u8]) -> Result<Record, RecordError> {
        let mut reader = Reader {
            bytes: payload,
            offset: 0,
        };
        let record = match kind_byte {
            kind::INCARNATION => Record::Incarnation {
                number: reader.u32()?,
            },
            kind::BEGIN => Record::Begin {
                desc: Arc::new(reader.desc()?),
            },
            kind::BEGIN_COMPACT => Record::Begin {
                desc: Arc::new(reader.desc_compact()?),
            },
            kind::PREPARED => {
                let desc = reader.desc()?;
                decode_prepared(desc, &mut reader)?
            }
            kind::PREPARED_COMPACT => {
                let desc = reader.desc_compact()?;
                decode_prepared(desc, &mut reader)?
            }
            kind::ELECTED => Record::Elected {
                batch: BatchId(reader.u64()?),
                elected: reader.u32()?,
                by: SiteId(reader.u8()?),
            },
            kind::TRANSITION => Record::Transition {
                batch: BatchId(reader.u64()?),
                state: reader.state()?,
                attempt: reader.u32()?,
                elected: reader.u32()?,
                txns: reader.set()?,
            },
            kind::CHECKPOINT => Record::Checkpoint {
                number: reader.u64()?,
                incarnation: reader.u32()?,
                records: reader.u32()?,
            },
            kind::CARRIED_BATCH => decode_carried_batch(&mut reader)?,
            kind::CARRIED_RETIRED => decode_carried_retired(&mut reader)?,
            kind::CARRIED_IDS => decode_carried_ids(&mut reader)?,
            other => return Err(RecordError::UnknownKind(other)),
        };
        reader.finish()?;
        Ok(record)
    }
}

fn decode_prepared(desc: Descriptor, reader: &mut Reader<'_>) -> Result<Record, RecordError> {
    let count = reader.len_field("ops", 8 + OP_PAYLOAD_BYTES + 3)?;
    let mut ops = Vec::with_capacity(count);
    let mut votes = Vec::with_capacity(count);
    for _ in 0..count {
        let txn = TxnId(reader.u64()?);
        let mut payload = [0u8; OP_PAYLOAD_BYTES];
        payload.copy_from_slice(reader.take(OP_PAYLOAD_BYTES)?);
        ops.push(Op { txn, payload });
        votes.push(reader.vote()?);
    }
    if ops.len() > desc.txns.len() {
        return Err(RecordError::Inconsistent(
            "more operations than transactions",
        ));
    }
    Ok(Record::Prepared {
        desc: Arc::new(desc),
        ops: ops.into(),
        votes,
    })
}

fn decode_carried_batch(reader: &mut Reader<'_>) -> Result<Record, RecordError> {
    let desc = reader.desc()?;
    let elected = reader.u32()?;
    let by = SiteId(reader.u8()?);
    let count = reader.len_field("carried states", 5)?;
    if count != desc.txns.len() {
        return Err(RecordError::Inconsistent(
            "carried states do not match the descriptor",
        ));
    }
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        let state = reader.state()?;
        states.push((state, reader.u32()?));
    }
    let reasons = reader.len_field("carried reasons", 6)?;
    let mut no_reasons = Vec::with_capacity(reasons);
    for _ in 0..reasons {
        let index = reader.u32()?;
        if index as usize >= count {
            return Err(RecordError::Inconsistent("no vote outside the batch"));
        }
        no_reasons.push((index, Reason(reader.u16()?)));
    }
    Ok(Record::CarriedBatch {
        desc: Arc::new(desc),
        elected,
        by,
        states,
        no_reasons,
    })
}

fn decode_carried_retired(reader: &mut Reader<'_>) -> Result<Record, RecordError> {
    let count = reader.len_field("retired ranges", 16)?;
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let start = reader.u64()?;
        let end = reader.u64()?;
        if start >= end {
            return Err(RecordError::Inconsistent("empty retired range"));
        }
        ranges.push((start, end));
    }
    Ok(Record::CarriedRetired { ranges })
}

fn decode_carried_ids(reader: &mut Reader<'_>) -> Result<Record, RecordError> {
    let count = reader.len_field("carried ids", 25)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let txn = TxnId(reader.u64()?);
        let batch = BatchId(reader.u64()?);
        let digest = reader.u64()?;
        let state = reader.state()?;
        if !matches!(state, State::W | State::Commit | State::Abort) {
            return Err(RecordError::Inconsistent("carried id in a pre-state"));
        }
        entries.push((
            txn,
            Held {
                batch,
                digest,
                state,
            },
        ));
    }
    Ok(Record::CarriedIds { entries })
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_desc(buf: &mut Vec<u8>, desc: &Descriptor) {
    put_u64(buf, desc.batch.0);
    put_u32(buf, desc.len());
    for (txn, members) in desc.txns.iter().zip(&desc.members) {
        put_u64(buf, txn.0);
        put_u64(buf, *members);
    }
}

/// The compact descriptor encoding of the `Begin` and `Prepared` records (kinds 10 and
/// 11): `batch u64 | n u32 | form u8 | n × txn u64`, then either (form 1, classes) `n ×
/// class u8 | c u8 | c × members u64`, the distinct participant masks in the order they
/// first appear, or (form 0, masks) `n × members u64`. A batch's transactions share a
/// few masks (a transfer between two of four ledgers has one of six), so the classes
/// form spends 9 bytes per transaction where the masks form spends 16: the descriptor
/// is in every participant's and every replica's record of every batch (README, issue
/// 14 goal 4). The classes form is used exactly when its table fits
/// ([`DESC_CLASSES_MAX`]) and it is the shorter form, so every descriptor has one
/// encoding, and the decoder accepts no other.
pub(crate) fn put_desc_compact(buf: &mut Vec<u8>, desc: &Descriptor) {
    put_u64(buf, desc.batch.0);
    put_u32(buf, desc.len());
    let form_at = buf.len();
    buf.push(DESC_FORM_CLASSES);
    // The ids and the class indices are written into slices sized up front: no
    // capacity check per transaction.
    let txns = desc.txns.len();
    let ids_at = buf.len();
    let indices_at = ids_at + 8 * txns;
    buf.resize(indices_at + txns, 0);
    let (ids, indices) = buf[ids_at..].split_at_mut(8 * txns);
    for (slot, txn) in ids.chunks_exact_mut(8).zip(&desc.txns) {
        slot.copy_from_slice(&txn.0.to_le_bytes());
    }
    let mut classes = MaskClasses::<DESC_CLASSES_MAX>::new();
    let mut fits = true;
    for (slot, &members) in indices.iter_mut().zip(&desc.members) {
        let Some(class) = classes.class_of(members) else {
            fits = false;
            break;
        };
        *slot = class as u8;
    }
    if fits && classes_form_shorter(classes.masks().len(), txns) {
        buf.push(classes.masks().len() as u8);
        for &class in classes.masks() {
            put_u64(buf, class);
        }
    } else {
        buf.truncate(indices_at);
        buf[form_at] = DESC_FORM_MASKS;
        for &members in &desc.members {
            put_u64(buf, members);
        }
    }
}

/// Whether `classes` distinct masks (`usize::MAX`: more than [`DESC_CLASSES_MAX`]) for
/// `txns` transactions take the classes form: `n + 1 + 8c` bytes against `8n`.
fn classes_form_shorter(classes: usize, txns: usize) -> bool {
    classes <= DESC_CLASSES_MAX && txns + 1 + 8 * classes < 8 * txns
}

/// How many distinct values `masks` holds, or `usize::MAX` past [`DESC_CLASSES_MAX`].
fn distinct_capped(masks: &[u64]) -> usize {
    let mut classes = MaskClasses::<DESC_CLASSES_MAX>::new();
    if masks.iter().all(|&mask| classes.class_of(mask).is_some()) {
        classes.masks().len()
    } else {
        usize::MAX
    }
}

pub(crate) fn put_set(buf: &mut Vec<u8>, set: &TxnSet) {
    put_u32(buf, set.universe());
    for word in set.words() {
        put_u64(buf, *word);
    }
}

fn put_vote(buf: &mut Vec<u8>, vote: Vote) {
    let (tag, reason) = match vote {
        Vote::Yes => (0u8, 0u16),
        Vote::No(reason) => (1, reason.0),
        Vote::ReadOnly => (2, 0),
    };
    buf.push(tag);
    buf.extend_from_slice(&reason.to_le_bytes());
}

/// A bounds-checked cursor over a payload.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes` (the transport's codec reads message bodies
    /// with the same checks as the log).
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    pub(crate) fn take(&mut self, needed: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .offset
            .checked_add(needed)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(RecordError::Truncated {
                needed,
                offset: self.offset,
                len: self.bytes.len(),
            });
        };
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, RecordError> {
        let mut raw = [0u8; 2];
        raw.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(raw))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, RecordError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(raw))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, RecordError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    /// Reads a count and checks it against the batch limit and the bytes left, so a
    /// corrupt length never drives a large allocation.
    pub(crate) fn len_field(
        &mut self,
        field: &'static str,
        item_bytes: usize,
    ) -> Result<usize, RecordError> {
        let count = self.u32()? as usize;
        if count > BATCH_TXNS_MAX {
            return Err(RecordError::TooLarge {
                field,
                value: count as u64,
                limit: BATCH_TXNS_MAX as u64,
            });
        }
        let left = self.bytes.len() - self.offset;
        if count.saturating_mul(item_bytes) > left {
            return Err(RecordError::Truncated {
                needed: count * item_bytes,
                offset: self.offset,
                len: self.bytes.len(),
            });
        }
        Ok(count)
    }

    pub(crate) fn state(&mut self) -> Result<State, RecordError> {
        let byte = self.u8()?;
        State::from_u8(byte).ok_or(RecordError::BadState(byte))
    }

    fn vote(&mut self) -> Result<Vote, RecordError> {
        let tag = self.u8()?;
        let reason = Reason(self.u16()?);
        match tag {
            0 => Ok(Vote::Yes),
            1 => Ok(Vote::No(reason)),
            2 => Ok(Vote::ReadOnly),
            other => Err(RecordError::BadVote(other)),
        }
    }

    pub(crate) fn desc(&mut self) -> Result<Descriptor, RecordError> {
        let batch = BatchId(self.u64()?);
        let count = self.len_field("transactions", 16)?;
        let mut txns = Vec::with_capacity(count);
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            txns.push(TxnId(self.u64()?));
            members.push(self.members()?);
        }
        Ok(Descriptor {
            batch,
            txns,
            members,
        })
    }

    /// Reads one transaction's participant mask, which names at least one site.
    fn members(&mut self) -> Result<u64, RecordError> {
        match self.u64()? {
            0 => Err(RecordError::Inconsistent(
                "transaction without participants",
            )),
            mask => Ok(mask),
        }
    }

    /// Reads a descriptor in the compact encoding (see [`put_desc_compact`]), and only
    /// in the form the encoder would have chosen.
    pub(crate) fn desc_compact(&mut self) -> Result<Descriptor, RecordError> {
        let batch = BatchId(self.u64()?);
        let count = self.len_field("transactions", 9)?;
        let form = self.u8()?;
        let mut txns = Vec::with_capacity(count);
        for _ in 0..count {
            txns.push(TxnId(self.u64()?));
        }
        let members = match form {
            DESC_FORM_MASKS => {
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(self.members()?);
                }
                if classes_form_shorter(distinct_capped(&members), count) {
                    return Err(RecordError::Inconsistent(
                        "descriptor in the masks form where the classes form is shorter",
                    ));
                }
                members
            }
            DESC_FORM_CLASSES => {
                let indices = self.take(count)?;
                let classes = self.u8()? as usize;
                if !classes_form_shorter(classes, count) {
                    return Err(RecordError::Inconsistent(
                        "descriptor in the classes form where the masks form is shorter",
                    ));
                }
                let mut table = Vec::with_capacity(classes);
                for _ in 0..classes {
                    let mask = self.members()?;
                    if table.contains(&mask) {
                        return Err(RecordError::Inconsistent("class listed twice"));
                    }
                    table.push(mask);
                }
                // The encoder numbers classes in the order they first appear.
                let mut seen = 0;
                let mut members = Vec::with_capacity(count);
                for &index in indices {
                    let index = index as usize;
                    if index == seen {
                        seen += 1;
                    } else if index > seen {
                        return Err(RecordError::Inconsistent("class out of order"));
                    }
                    let Some(&mask) = table.get(index) else {
                        return Err(RecordError::Inconsistent("class outside the table"));
                    };
                    members.push(mask);
                }
                if seen != classes {
                    return Err(RecordError::Inconsistent("class never used"));
                }
                members
            }
            _ => return Err(RecordError::Inconsistent("unknown descriptor form")),
        };
        Ok(Descriptor {
            batch,
            txns,
            members,
        })
    }

    pub(crate) fn set(&mut self) -> Result<TxnSet, RecordError> {
        let universe = self.u32()?;
        if universe as usize > BATCH_TXNS_MAX {
            return Err(RecordError::TooLarge {
                field: "set universe",
                value: universe as u64,
                limit: BATCH_TXNS_MAX as u64,
            });
        }
        let word_count = universe.div_ceil(64) as usize;
        let mut words = Vec::with_capacity(word_count);
        for _ in 0..word_count {
            words.push(self.u64()?);
        }
        TxnSet::from_words(universe, words)
            .ok_or(RecordError::Inconsistent("set bits past its universe"))
    }

    pub(crate) fn finish(&self) -> Result<(), RecordError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            extra => Err(RecordError::TrailingBytes(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_desc() -> DescriptorRef {
        Arc::new(Descriptor {
            batch: BatchId(7 << 32 | 3),
            txns: vec![TxnId(10), TxnId(11), TxnId(12)],
            members: vec![0b11000, 0b10000, 0b01000],
        })
    }

    fn samples() -> Vec<Record> {
        let desc = sample_desc();
        let mut txns = TxnSet::empty(3);
        txns.insert(0);
        txns.insert(2);
        let op = |txn: u64, byte: u8| Op {
            txn: TxnId(txn),
            payload: [byte; OP_PAYLOAD_BYTES],
        };
        vec![
            Record::Incarnation { number: 9 },
            Record::Begin { desc: desc.clone() },
            Record::Prepared {
                desc: desc.clone(),
                ops: vec![op(10, 1), op(11, 2)].into(),
                votes: vec![Vote::Yes, Vote::No(Reason::INSUFFICIENT_FUNDS)],
            },
            Record::Elected {
                batch: desc.batch,
                elected: 4,
                by: SiteId(2),
            },
            Record::Transition {
                batch: desc.batch,
                state: State::PreCommit,
                attempt: 4,
                elected: 4,
                txns,
            },
            Record::Checkpoint {
                number: 3,
                incarnation: 9,
                records: 2,
            },
            Record::CarriedBatch {
                desc: desc.clone(),
                elected: 5,
                by: SiteId(1),
                states: vec![(State::PreCommit, 4), (State::Abort, 0), (State::Commit, 2)],
                no_reasons: vec![(1, Reason::INSUFFICIENT_FUNDS)],
            },
            Record::CarriedRetired {
                ranges: vec![(1, 5), (7 << 32, (7 << 32) + 3)],
            },
            Record::CarriedIds {
                entries: vec![
                    (
                        TxnId(10),
                        Held {
                            batch: desc.batch,
                            digest: 0xD1,
                            state: State::Commit,
                        },
                    ),
                    (
                        TxnId(12),
                        Held {
                            batch: BatchId(2),
                            digest: 0xD2,
                            state: State::W,
                        },
                    ),
                ],
            },
        ]
    }

    // Proves that every record kind decodes to exactly what was encoded.
    #[test]
    fn records_round_trip() {
        for record in samples() {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            assert_eq!(Record::decode(record.kind(), &buf), Ok(record));
        }
    }

    // Proves that a cut payload, an extra byte and an unknown kind are typed errors.
    #[test]
    fn damaged_payloads_are_typed_errors() {
        for record in samples() {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(
                    Record::decode(record.kind(), &buf[..cut]).is_err(),
                    "{record:?} cut {cut}"
                );
            }
            buf.push(0);
            assert_eq!(
                Record::decode(record.kind(), &buf),
                Err(RecordError::TrailingBytes(1))
            );
        }
        assert_eq!(Record::decode(0, &[]), Err(RecordError::UnknownKind(0)));
        assert!(matches!(
            Record::decode(
                kind::BEGIN,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
            ),
            Err(RecordError::TooLarge { .. })
        ));
    }

    /// The bytes of `desc` in the legacy `desc` encoding (kinds 2 and 3).
    fn legacy_desc(desc: &Descriptor) -> Vec<u8> {
        let mut buf = Vec::new();
        put_desc(&mut buf, desc);
        buf
    }

    // Proves that logs written before the compact kinds still read: a legacy `Begin`
    // and `Prepared` decode to the records that are now written as kinds 10 and 11.
    #[test]
    fn legacy_begin_and_prepared_still_decode() {
        let desc = sample_desc();
        assert_eq!(
            Record::decode(kind::BEGIN, &legacy_desc(&desc)),
            Ok(Record::Begin { desc: desc.clone() })
        );
        let mut prepared = legacy_desc(&desc);
        put_u32(&mut prepared, 1);
        put_u64(&mut prepared, 11);
        prepared.extend_from_slice(&[7; OP_PAYLOAD_BYTES]);
        put_vote(&mut prepared, Vote::Yes);
        let expected = Record::Prepared {
            desc: desc.clone(),
            ops: vec![Op {
                txn: TxnId(11),
                payload: [7; OP_PAYLOAD_BYTES],
            }]
            .into(),
            votes: vec![Vote::Yes],
        };
        assert_eq!(
            Record::decode(kind::PREPARED, &prepared),
            Ok(expected.clone())
        );
        assert_eq!(expected.kind(), kind::PREPARED_COMPACT);
    }

    // Proves the saving the compact descriptor is for: a full batch of two-party
    // transfers among four ledgers takes 9 bytes per transaction, not 16.
    #[test]
    fn a_batch_of_few_groups_takes_nine_bytes_per_transaction() {
        let pairs = [0b0011, 0b0101, 0b1001, 0b0110, 0b1010, 0b1100u64];
        let txns = 4096;
        let desc = Descriptor {
            batch: BatchId(1),
            txns: (0..txns).map(|i| TxnId(i * 7919)).collect(),
            members: (0..txns as usize).map(|i| pairs[i * 5 % 6] << 3).collect(),
        };
        let mut buf = Vec::new();
        put_desc_compact(&mut buf, &desc);
        assert_eq!(buf.len(), 13 + 9 * txns as usize + 1 + 8 * pairs.len());
        assert_eq!(legacy_desc(&desc).len(), 12 + 16 * txns as usize);
    }

    // Proves that the decoder accepts only the encoder's own form: each damage below
    // is a typed error.
    #[test]
    fn non_canonical_compact_descriptors_are_refused() {
        let header = |form: u8, txns: &[u64]| {
            let mut buf = Vec::new();
            put_u64(&mut buf, 5);
            put_u32(&mut buf, txns.len() as u32);
            buf.push(form);
            for &txn in txns {
                put_u64(&mut buf, txn);
            }
            buf
        };
        let ids = [1u64, 2, 3, 4];
        let with_classes = |indices: &[u8], table: &[u64]| {
            let mut buf = header(DESC_FORM_CLASSES, &ids);
            buf.extend_from_slice(indices);
            buf.push(table.len() as u8);
            for &mask in table {
                put_u64(&mut buf, mask);
            }
            buf
        };
        let refused = |bytes: &[u8], why: &'static str| {
            assert_eq!(
                Record::decode(kind::BEGIN_COMPACT, bytes),
                Err(RecordError::Inconsistent(why)),
                "{why}"
            );
        };
        // The encoder's own bytes decode.
        let good = with_classes(&[0, 1, 0, 1], &[8, 16]);
        let desc = Record::decode(kind::BEGIN_COMPACT, &good).expect("canonical");
        let mut again = Vec::new();
        desc.encode(&mut again);
        assert_eq!(again, good);
        refused(&with_classes(&[1, 0, 1, 0], &[8, 16]), "class out of order");
        refused(&with_classes(&[0, 0, 0, 0], &[8, 16]), "class never used");
        refused(&with_classes(&[0, 1, 0, 1], &[8, 8]), "class listed twice");
        refused(
            &with_classes(&[0, 1, 2, 1], &[8, 16]),
            "class outside the table",
        );
        refused(
            &with_classes(&[0, 1, 0, 1], &[8, 0]),
            "transaction without participants",
        );
        refused(
            &with_classes(&[0, 1, 2, 3], &[8, 16, 24, 32]),
            "descriptor in the classes form where the masks form is shorter",
        );
        let mut masks = header(DESC_FORM_MASKS, &ids);
        for mask in [8u64, 16, 8, 16] {
            put_u64(&mut masks, mask);
        }
        refused(
            &masks,
            "descriptor in the masks form where the classes form is shorter",
        );
        let mut unknown = header(2, &ids);
        unknown.extend_from_slice(&[0; 4 * 8]);
        refused(&unknown, "unknown descriptor form");
    }

    proptest! {
        // Proves that a descriptor of any size and any number of distinct masks round
        // trips through the compact encoding, in the shorter of its two forms.
        #[test]
        fn compact_descriptors_round_trip(
            pool in proptest::collection::vec(1u64.., 1..300),
            picks in proptest::collection::vec((any::<u64>(), any::<prop::sample::Index>()), 0..700),
        ) {
            let desc = Arc::new(Descriptor {
                batch: BatchId(3),
                txns: picks.iter().map(|(txn, _)| TxnId(*txn)).collect(),
                members: picks.iter().map(|(_, pick)| pool[pick.index(pool.len())]).collect(),
            });
            let record = Record::Begin { desc: desc.clone() };
            let mut buf = Vec::new();
            record.encode(&mut buf);
            prop_assert_eq!(Record::decode(kind::BEGIN_COMPACT, &buf), Ok(record));
            let n = desc.txns.len();
            let classes = distinct_capped(&desc.members);
            let expected = if classes_form_shorter(classes, n) {
                13 + 9 * n + 1 + 8 * classes
            } else {
                13 + 16 * n
            };
            prop_assert_eq!(buf.len(), expected);
        }

        // Proves that random bytes of any kind never make the decoder panic, and that
        // whatever decodes re-encodes to the same bytes.
        #[test]
        fn random_bytes_never_panic(kind_byte in 0u8..13, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(record) = Record::decode(kind_byte, &bytes) {
                // Kinds 2 and 3 are read, never written: they re-encode as 10 and 11.
                if record.kind() == kind_byte {
                    let mut again = Vec::new();
                    record.encode(&mut again);
                    prop_assert_eq!(again, bytes);
                }
            }
        }
    }
}
