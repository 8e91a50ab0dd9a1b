//! The bodies of the frames: protocol [`Part`]s between sites, and the client
//! messages ([`Submit`], [`Outcomes`], [`BusyReply`]) between a network client and a node.
//!
//! Every integer is fixed-width little-endian. The shared pieces (descriptor, transaction
//! set, the bounds-checked reader) are the WAL record codec's (`proto::record`), so a
//! descriptor has the same bytes on the wire and in the log. Decoding checks every count
//! against its bound and against the bytes left before it allocates, consumes the whole
//! body, and returns a typed [`CodecError`]; no byte string makes it panic.
//! `docs/wire-format.md` lists every layout.

use std::sync::Arc;

use crate::metrics::trace::{TraceContext, TRACE_CONTEXT_BYTES};
use crate::pipeline::{AbortReason, BusyReason, Outcome, Priority};
use crate::proto::record::{put_desc, put_set, put_u32, put_u64, Reader};
use crate::proto::SiteId;
use crate::proto::{
    BatchId, DescriptorRef, Op, Part, Reason, RecordError, TxnId, BATCH_TXNS_MAX, OP_PAYLOAD_BYTES,
};
use crate::runtime::{Txn, TxnError, TXN_LEGS_MAX};
use crate::sign::{SignedVotes, VoteProof};

/// The most parts one site frame carries. The event loop starts a new frame when a
/// write-combined frame would hold more.
pub const FRAME_PARTS_MAX: usize = 4096;
/// The most transactions one `Submit` carries (a client batches up to this many per
/// frame; the intake admits or refuses each).
pub const SUBMIT_TXNS_MAX: usize = 8192;
/// The most items one `Outcomes` or `Busy` reply carries.
pub const REPLY_ITEMS_MAX: usize = 8192;

/// Part tags (the first byte of every encoded part).
pub mod part_tag {
    pub const PREPARE: u8 = 1;
    pub const VOTES: u8 = 2;
    pub const ANNOUNCE: u8 = 3;
    pub const ROUND: u8 = 4;
    pub const ROUND_ACK: u8 = 5;
    pub const DECIDE: u8 = 6;
    pub const ELECT: u8 = 7;
    pub const ELECT_ACK: u8 = 8;
    pub const REJECT: u8 = 9;
    pub const HELP: u8 = 10;
    pub const DONE: u8 = 11;
    pub const FORGET: u8 = 12;
    /// Not a protocol part: the trace context of the part before it (tracing only).
    /// Tags 13.. are the protocol's to take; wire-only parts start at 64.
    pub const TRACE: u8 = 64;
    /// A participant's votes with its ed25519 signature (`crate::sign`).
    pub const SIGNED_VOTES: u8 = 13;
    /// A signed vote's proof, forwarded from one replica to the others.
    pub const VOTE_PROOF: u8 = 14;
}

/// Bytes of one encoded operation (`txn u64 | payload`).
const OP_BYTES: usize = 8 + OP_PAYLOAD_BYTES;
/// Bytes of one encoded no vote (`index u32 | reason u16`).
const NO_VOTE_BYTES: usize = 6;
/// Bytes of one encoded holder of a refused id (`index u32 | batch u64 | state u8`).
const HELD_BYTES: usize = 13;
/// Bytes of one encoded `(state u8, attempt u32)`.
const STATE_BYTES: usize = 5;
/// Bytes of one encoded transaction at least (`id u64 | priority u8 | legs u8`).
const TXN_BYTES_MIN: usize = 10;
/// Bytes of one encoded leg (`participant u8 | payload`).
const LEG_BYTES: usize = 1 + OP_PAYLOAD_BYTES;
/// Bytes of one encoded outcome (`txn u64 | tag u8 | reason u16`).
const OUTCOME_BYTES: usize = 11;

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Field(#[from] RecordError),
    #[error("unknown part tag {0}")]
    PartTag(u8),
    #[error("{field} count {count} is above the limit {limit}")]
    Count {
        field: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("bad {field} byte {value}")]
    BadByte { field: &'static str, value: u8 },
    #[error("inconsistent body: {0}")]
    Inconsistent(&'static str),
    #[error("bad transaction: {0}")]
    Txn(#[from] TxnError),
}

/// A network client's request: many transactions in one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    pub txns: Vec<Txn>,
}

/// The node's answer for transactions whose outcome is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcomes {
    pub items: Vec<(TxnId, Outcome)>,
}

/// The node refused these transactions (its intake is full): they were not submitted,
/// the client may resend them later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusyReply {
    pub ids: Vec<TxnId>,
    pub reason: BusyReason,
}

/// What a node sends a network client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    Outcomes(Outcomes),
    Busy(BusyReply),
    /// A page of a participant's balances (`transport::balances`).
    Balances(super::balances::BalancesPage),
}

impl From<Outcomes> for ClientReply {
    fn from(outcomes: Outcomes) -> ClientReply {
        ClientReply::Outcomes(outcomes)
    }
}

impl From<BusyReply> for ClientReply {
    fn from(busy: BusyReply) -> ClientReply {
        ClientReply::Busy(busy)
    }
}

// ---------------------------------------------------------------------------------------
// Parts.

/// Appends `count u32 | parts` to `buf`.
pub fn encode_parts(parts: &[Part], buf: &mut Vec<u8>) {
    put_u32(buf, parts.len() as u32);
    for part in parts {
        encode_part(part, buf);
    }
}

/// Decodes a site frame's body (`count u32 | parts`), consuming all of it. TRACE parts
/// are checked and dropped (see [`decode_parts_traced`]).
pub fn decode_parts(body: &[u8]) -> Result<Vec<Part>, CodecError> {
    let mut traces = Vec::new();
    decode_parts_traced(body, &mut traces)
}

/// Decodes a site frame's body, and appends to `traces` the context of every TRACE
/// part with the batch of the part it follows. The parts returned are the protocol's
/// only. A TRACE part must follow a part that [`starts_phase`] (one TRACE each), and
/// its ids must be valid (not all zero); anything else is an error, like any bad body.
pub fn decode_parts_traced(
    body: &[u8],
    traces: &mut Vec<(BatchId, TraceContext)>,
) -> Result<Vec<Part>, CodecError> {
    let mut reader = Reader::new(body);
    let count = count_field(&mut reader, "parts", FRAME_PARTS_MAX, 9)?;
    let mut parts = Vec::with_capacity(count);
    // The batch a TRACE part may follow now: set by a phase-starting part, cleared
    // by any other part and by a TRACE (one per part).
    let mut traceable: Option<BatchId> = None;
    for _ in 0..count {
        let tag = reader.u8()?;
        if tag == part_tag::TRACE {
            let batch = traceable.take().ok_or(CodecError::Inconsistent(
                "a TRACE part that follows no phase-starting part",
            ))?;
            let mut bytes = [0u8; TRACE_CONTEXT_BYTES];
            bytes.copy_from_slice(reader.take(TRACE_CONTEXT_BYTES)?);
            let context = TraceContext::decode(&bytes)
                .map_err(|_| CodecError::Inconsistent("a trace context with an all-zero id"))?;
            traces.push((batch, context));
            continue;
        }
        let part = decode_tagged(tag, &mut reader)?;
        traceable = starts_phase(&part);
        parts.push(part);
    }
    reader.finish()?;
    Ok(parts)
}

/// The batch of a part that starts a phase at its receiver (PREPARE, ROUND, DECIDE):
/// the parts a TRACE part may follow.
pub fn starts_phase(part: &Part) -> Option<BatchId> {
    match part {
        Part::Prepare { desc, .. } => Some(desc.batch),
        Part::Round { batch, .. } | Part::Decide { batch, .. } => Some(*batch),
        _ => None,
    }
}

/// Appends a TRACE part: `tag | trace_id [16] | span_id [8]`.
pub fn encode_trace(context: &TraceContext, buf: &mut Vec<u8>) {
    buf.push(part_tag::TRACE);
    buf.extend_from_slice(&context.encode());
}

/// Appends one part: its tag, then its fields.
pub fn encode_part(part: &Part, buf: &mut Vec<u8>) {
    match part {
        Part::Prepare { desc, ops } => {
            buf.push(part_tag::PREPARE);
            put_desc(buf, desc);
            put_u32(buf, ops.len() as u32);
            for op in ops.iter() {
                put_u64(buf, op.txn.0);
                buf.extend_from_slice(&op.payload);
            }
        }
        Part::Votes {
            batch,
            yes,
            read_only,
            no,
            held,
        } => {
            buf.push(part_tag::VOTES);
            put_u64(buf, batch.0);
            put_set(buf, yes);
            put_set(buf, read_only);
            put_u32(buf, no.len() as u32);
            for (index, reason) in no {
                put_u32(buf, *index);
                buf.extend_from_slice(&reason.0.to_le_bytes());
            }
            put_u32(buf, held.len() as u32);
            for (index, holder, state) in held {
                put_u32(buf, *index);
                put_u64(buf, holder.0);
                buf.push(*state as u8);
            }
        }
        Part::Announce { desc } => {
            buf.push(part_tag::ANNOUNCE);
            put_desc(buf, desc);
        }
        Part::Round {
            batch,
            elected,
            pre_commit,
            pre_abort,
            desc,
        } => {
            buf.push(part_tag::ROUND);
            put_u64(buf, batch.0);
            put_u32(buf, *elected);
            put_set(buf, pre_commit);
            put_set(buf, pre_abort);
            put_optional_desc(buf, desc.as_ref());
        }
        Part::RoundAck {
            batch,
            elected,
            pre_commit,
            pre_abort,
        } => {
            buf.push(part_tag::ROUND_ACK);
            put_u64(buf, batch.0);
            put_u32(buf, *elected);
            put_set(buf, pre_commit);
            put_set(buf, pre_abort);
        }
        Part::Decide {
            batch,
            commit,
            abort,
            desc,
        } => {
            buf.push(part_tag::DECIDE);
            put_u64(buf, batch.0);
            put_set(buf, commit);
            put_set(buf, abort);
            put_optional_desc(buf, desc.as_ref());
        }
        Part::Elect { desc, elected } => {
            buf.push(part_tag::ELECT);
            put_desc(buf, desc);
            put_u32(buf, *elected);
        }
        Part::ElectAck {
            batch,
            elected,
            states,
        } => {
            buf.push(part_tag::ELECT_ACK);
            put_u64(buf, batch.0);
            put_u32(buf, *elected);
            put_u32(buf, states.len() as u32);
            for (state, attempt) in states {
                buf.push(*state as u8);
                put_u32(buf, *attempt);
            }
        }
        Part::Reject { batch, elected } => {
            buf.push(part_tag::REJECT);
            put_u64(buf, batch.0);
            put_u32(buf, *elected);
        }
        Part::Help { desc } => {
            buf.push(part_tag::HELP);
            put_desc(buf, desc);
        }
        Part::Done { batch, decided } => {
            buf.push(part_tag::DONE);
            put_u64(buf, batch.0);
            put_u32(buf, *decided);
        }
        Part::Forget { batch } => {
            buf.push(part_tag::FORGET);
            put_u64(buf, batch.0);
        }
        Part::SignedVotes(signed) => {
            buf.push(part_tag::SIGNED_VOTES);
            put_u64(buf, signed.batch.0);
            buf.push(signed.participant.0);
            put_set(buf, &signed.yes);
            put_set(buf, &signed.read_only);
            put_u32(buf, signed.no.len() as u32);
            for (index, reason) in &signed.no {
                put_u32(buf, *index);
                buf.extend_from_slice(&reason.0.to_le_bytes());
            }
            buf.extend_from_slice(&signed.signature);
            put_u32(buf, signed.held.len() as u32);
            for (index, holder, state) in &signed.held {
                put_u32(buf, *index);
                put_u64(buf, holder.0);
                buf.push(*state as u8);
            }
        }
        Part::VoteProof(proof) => {
            buf.push(part_tag::VOTE_PROOF);
            put_u64(buf, proof.batch.0);
            buf.push(proof.participant.0);
            buf.extend_from_slice(&proof.digest);
            buf.extend_from_slice(&proof.signature);
        }
    }
}

fn put_optional_desc(buf: &mut Vec<u8>, desc: Option<&DescriptorRef>) {
    match desc {
        None => buf.push(0),
        Some(desc) => {
            buf.push(1);
            put_desc(buf, desc);
        }
    }
}

/// Decodes the fields of a part whose tag was read. An unknown tag is an error.
fn decode_tagged(tag: u8, reader: &mut Reader<'_>) -> Result<Part, CodecError> {
    let part = match tag {
        part_tag::PREPARE => decode_prepare(reader)?,
        part_tag::VOTES => decode_votes(reader)?,
        part_tag::ANNOUNCE => Part::Announce {
            desc: Arc::new(reader.desc()?),
        },
        part_tag::ROUND => Part::Round {
            batch: BatchId(reader.u64()?),
            elected: reader.u32()?,
            pre_commit: reader.set()?,
            pre_abort: reader.set()?,
            desc: optional_desc(reader)?,
        },
        part_tag::ROUND_ACK => Part::RoundAck {
            batch: BatchId(reader.u64()?),
            elected: reader.u32()?,
            pre_commit: reader.set()?,
            pre_abort: reader.set()?,
        },
        part_tag::DECIDE => Part::Decide {
            batch: BatchId(reader.u64()?),
            commit: reader.set()?,
            abort: reader.set()?,
            desc: optional_desc(reader)?,
        },
        part_tag::ELECT => Part::Elect {
            desc: Arc::new(reader.desc()?),
            elected: reader.u32()?,
        },
        part_tag::ELECT_ACK => decode_elect_ack(reader)?,
        part_tag::REJECT => Part::Reject {
            batch: BatchId(reader.u64()?),
            elected: reader.u32()?,
        },
        part_tag::HELP => Part::Help {
            desc: Arc::new(reader.desc()?),
        },
        part_tag::DONE => Part::Done {
            batch: BatchId(reader.u64()?),
            decided: reader.u32()?,
        },
        part_tag::FORGET => Part::Forget {
            batch: BatchId(reader.u64()?),
        },
        part_tag::SIGNED_VOTES => decode_signed_votes(reader)?,
        part_tag::VOTE_PROOF => Part::VoteProof(Arc::new(VoteProof {
            batch: BatchId(reader.u64()?),
            participant: SiteId(reader.u8()?),
            digest: array(reader)?,
            signature: array(reader)?,
        })),
        other => return Err(CodecError::PartTag(other)),
    };
    Ok(part)
}

fn array<const N: usize>(reader: &mut Reader<'_>) -> Result<[u8; N], CodecError> {
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(reader.take(N)?);
    Ok(bytes)
}

fn decode_signed_votes(reader: &mut Reader<'_>) -> Result<Part, CodecError> {
    let batch = BatchId(reader.u64()?);
    let participant = SiteId(reader.u8()?);
    let yes = reader.set()?;
    let read_only = reader.set()?;
    let count = count_field(reader, "no votes", BATCH_TXNS_MAX, NO_VOTE_BYTES)?;
    let mut no = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32()?;
        no.push((index, Reason(reader.u16()?)));
    }
    let signature = array(reader)?;
    let count = count_field(reader, "held ids", BATCH_TXNS_MAX, HELD_BYTES)?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32()?;
        let holder = BatchId(reader.u64()?);
        held.push((index, holder, reader.state()?));
    }
    Ok(Part::SignedVotes(Arc::new(SignedVotes {
        batch,
        participant,
        yes,
        read_only,
        no,
        signature,
        held,
    })))
}

fn decode_prepare(reader: &mut Reader<'_>) -> Result<Part, CodecError> {
    let desc = reader.desc()?;
    let count = count_field(reader, "operations", BATCH_TXNS_MAX, OP_BYTES)?;
    if count > desc.txns.len() {
        return Err(CodecError::Inconsistent(
            "more operations than transactions",
        ));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let txn = TxnId(reader.u64()?);
        let mut payload = [0u8; OP_PAYLOAD_BYTES];
        payload.copy_from_slice(reader.take(OP_PAYLOAD_BYTES)?);
        ops.push(Op { txn, payload });
    }
    Ok(Part::Prepare {
        desc: Arc::new(desc),
        ops: ops.into(),
    })
}

fn decode_votes(reader: &mut Reader<'_>) -> Result<Part, CodecError> {
    let batch = BatchId(reader.u64()?);
    let yes = reader.set()?;
    let read_only = reader.set()?;
    let count = count_field(reader, "no votes", BATCH_TXNS_MAX, NO_VOTE_BYTES)?;
    let mut no = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32()?;
        no.push((index, Reason(reader.u16()?)));
    }
    let count = count_field(reader, "held ids", BATCH_TXNS_MAX, HELD_BYTES)?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32()?;
        let holder = BatchId(reader.u64()?);
        held.push((index, holder, reader.state()?));
    }
    Ok(Part::Votes {
        batch,
        yes,
        read_only,
        no,
        held,
    })
}

fn decode_elect_ack(reader: &mut Reader<'_>) -> Result<Part, CodecError> {
    let batch = BatchId(reader.u64()?);
    let elected = reader.u32()?;
    let count = count_field(reader, "states", BATCH_TXNS_MAX, STATE_BYTES)?;
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        let state = reader.state()?;
        states.push((state, reader.u32()?));
    }
    Ok(Part::ElectAck {
        batch,
        elected,
        states,
    })
}

fn optional_desc(reader: &mut Reader<'_>) -> Result<Option<DescriptorRef>, CodecError> {
    match reader.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Arc::new(reader.desc()?))),
        value => Err(CodecError::BadByte {
            field: "descriptor flag",
            value,
        }),
    }
}

/// Reads a `u32` count, checks it against `limit` and against the bytes left (each item
/// takes at least `item_bytes`), so a forged count never drives a large allocation.
fn count_field(
    reader: &mut Reader<'_>,
    field: &'static str,
    limit: usize,
    item_bytes: usize,
) -> Result<usize, CodecError> {
    // `len_field` checks the bytes left and BATCH_TXNS_MAX; the tighter per-field
    // limit comes after it.
    let count = reader.len_field(field, item_bytes)?;
    if count > limit {
        return Err(CodecError::Count {
            field,
            count: count as u64,
            limit: limit as u64,
        });
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------
// Client messages.

/// Appends a `Submit` body: `count u32 | count × txn`, where a transaction is
/// `id u64 | priority u8 | legs u8 | legs × (participant u8 | payload)`.
pub fn encode_submit(submit: &Submit, buf: &mut Vec<u8>) {
    put_u32(buf, submit.txns.len() as u32);
    for txn in &submit.txns {
        put_u64(buf, txn.id.0);
        buf.push(priority_byte(txn.priority));
        buf.push(txn.legs().len() as u8);
        for leg in txn.legs() {
            buf.push(leg.participant);
            buf.extend_from_slice(&leg.payload);
        }
    }
}

/// Decodes a `Submit` body. A transaction that `Txn::with_leg` would refuse (too many
/// legs, a participant twice) is an error, so a decoded `Txn` is always one the
/// in-process API could have built.
pub fn decode_submit(body: &[u8]) -> Result<Submit, CodecError> {
    let mut reader = Reader::new(body);
    let count = count_field(&mut reader, "transactions", SUBMIT_TXNS_MAX, TXN_BYTES_MIN)?;
    let mut txns = Vec::with_capacity(count);
    for _ in 0..count {
        let id = TxnId(reader.u64()?);
        let priority = priority_from(reader.u8()?)?;
        let legs = reader.u8()?;
        if legs as usize > TXN_LEGS_MAX {
            return Err(CodecError::Count {
                field: "legs",
                count: legs as u64,
                limit: TXN_LEGS_MAX as u64,
            });
        }
        let mut txn = Txn::new(id, priority);
        for _ in 0..legs {
            let participant = reader.u8()?;
            let mut payload = [0u8; OP_PAYLOAD_BYTES];
            payload.copy_from_slice(reader.take(LEG_BYTES - 1)?);
            txn = txn.with_leg(participant, payload)?;
        }
        txns.push(txn);
    }
    reader.finish()?;
    Ok(Submit { txns })
}

/// Appends an `Outcomes` body: `count u32 | count × (txn u64 | tag u8 | reason u16)`.
pub fn encode_outcomes(outcomes: &Outcomes, buf: &mut Vec<u8>) {
    put_u32(buf, outcomes.items.len() as u32);
    for (txn, outcome) in &outcomes.items {
        put_u64(buf, txn.0);
        let (tag, reason) = outcome_bytes(*outcome);
        buf.push(tag);
        buf.extend_from_slice(&reason.to_le_bytes());
    }
}

/// Decodes an `Outcomes` body.
pub fn decode_outcomes(body: &[u8]) -> Result<Outcomes, CodecError> {
    let mut reader = Reader::new(body);
    let count = count_field(&mut reader, "outcomes", REPLY_ITEMS_MAX, OUTCOME_BYTES)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let txn = TxnId(reader.u64()?);
        let tag = reader.u8()?;
        let reason = reader.u16()?;
        items.push((txn, outcome_from(tag, reason)?));
    }
    reader.finish()?;
    Ok(Outcomes { items })
}

/// Appends a `Busy` body: `reason u8 | count u32 | count × txn u64`.
pub fn encode_busy(busy: &BusyReply, buf: &mut Vec<u8>) {
    buf.push(match busy.reason {
        BusyReason::HighWater => 0,
        BusyReason::Capacity => 1,
        BusyReason::Tickets => 2,
    });
    put_u32(buf, busy.ids.len() as u32);
    for id in &busy.ids {
        put_u64(buf, id.0);
    }
}

/// Decodes a `Busy` body.
pub fn decode_busy(body: &[u8]) -> Result<BusyReply, CodecError> {
    let mut reader = Reader::new(body);
    let reason = match reader.u8()? {
        0 => BusyReason::HighWater,
        1 => BusyReason::Capacity,
        2 => BusyReason::Tickets,
        value => {
            return Err(CodecError::BadByte {
                field: "busy reason",
                value,
            })
        }
    };
    let count = count_field(&mut reader, "busy ids", REPLY_ITEMS_MAX, 8)?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(TxnId(reader.u64()?));
    }
    reader.finish()?;
    Ok(BusyReply { ids, reason })
}

fn priority_byte(priority: Priority) -> u8 {
    match priority {
        Priority::Normal => 0,
        Priority::High => 1,
    }
}

fn priority_from(value: u8) -> Result<Priority, CodecError> {
    match value {
        0 => Ok(Priority::Normal),
        1 => Ok(Priority::High),
        value => Err(CodecError::BadByte {
            field: "priority",
            value,
        }),
    }
}

/// An outcome's `(tag, reason)`: 0 committed, 1 rejected with a reason, 2 terminated,
/// 3 shut down before the protocol, 4 in doubt. The reason is 0 unless the tag is 1.
fn outcome_bytes(outcome: Outcome) -> (u8, u16) {
    match outcome {
        Outcome::Committed => (0, 0),
        Outcome::Aborted(AbortReason::Rejected(reason)) => (1, reason.0),
        Outcome::Aborted(AbortReason::Terminated) => (2, 0),
        Outcome::Aborted(AbortReason::Shutdown) => (3, 0),
        Outcome::InDoubt => (4, 0),
    }
}

fn outcome_from(tag: u8, reason: u16) -> Result<Outcome, CodecError> {
    if tag != 1 && reason != 0 {
        return Err(CodecError::Inconsistent(
            "a reason on an outcome without one",
        ));
    }
    Ok(match tag {
        0 => Outcome::Committed,
        1 => Outcome::Aborted(AbortReason::Rejected(Reason(reason))),
        2 => Outcome::Aborted(AbortReason::Terminated),
        3 => Outcome::Aborted(AbortReason::Shutdown),
        4 => Outcome::InDoubt,
        value => {
            return Err(CodecError::BadByte {
                field: "outcome",
                value,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Descriptor, TxnSet};

    const CONTEXT: TraceContext = TraceContext {
        trace_id: [7; 16],
        span_id: [9; 8],
    };

    fn prepare(batch: u64) -> Part {
        Part::Prepare {
            desc: Arc::new(Descriptor {
                batch: BatchId(batch),
                txns: vec![TxnId(1)],
                members: vec![0b1],
            }),
            ops: Vec::<Op>::new().into(),
        }
    }

    fn votes(batch: u64) -> Part {
        Part::Votes {
            batch: BatchId(batch),
            yes: TxnSet::full(1),
            read_only: TxnSet::empty(1),
            no: Vec::new(),
            held: Vec::new(),
        }
    }

    /// A body of `count` parts from raw part bytes.
    fn body(count: u32, parts: &[u8]) -> Vec<u8> {
        let mut body = count.to_le_bytes().to_vec();
        body.extend_from_slice(parts);
        body
    }

    #[test]
    fn a_trace_part_travels_with_the_part_it_follows() {
        // Proves the TRACE layout: after a phase-starting part, it decodes into that
        // part's batch and context, is not handed on as a protocol part, and a plain
        // `decode_parts` accepts and drops it.
        let mut parts = Vec::new();
        encode_part(&prepare(3), &mut parts);
        encode_trace(&CONTEXT, &mut parts);
        encode_part(&votes(4), &mut parts);
        let decide = Part::Decide {
            batch: BatchId(5),
            commit: TxnSet::full(1),
            abort: TxnSet::empty(1),
            desc: None,
        };
        encode_part(&decide, &mut parts);
        encode_trace(&CONTEXT, &mut parts);
        let body = body(5, &parts);
        let mut traces = Vec::new();
        let decoded = decode_parts_traced(&body, &mut traces).expect("decodes");
        assert_eq!(decoded.len(), 3);
        assert_eq!(traces, vec![(BatchId(3), CONTEXT), (BatchId(5), CONTEXT)]);
        assert_eq!(decode_parts(&body).expect("decodes").len(), 3);
        assert_eq!(starts_phase(&decoded[1]), None);
    }

    #[test]
    fn a_misplaced_or_invalid_trace_part_is_a_bad_body() {
        // Proves that a TRACE part must follow a phase-starting part, once, with valid
        // ids, and that an unknown tag next to it is still refused.
        let mut trace = Vec::new();
        encode_trace(&CONTEXT, &mut trace);
        let mut prepare_bytes = Vec::new();
        encode_part(&prepare(3), &mut prepare_bytes);
        let mut votes_bytes = Vec::new();
        encode_part(&votes(3), &mut votes_bytes);
        let first = body(2, &[trace.clone(), prepare_bytes.clone()].concat());
        let after_votes = body(2, &[votes_bytes, trace.clone()].concat());
        let twice = body(
            3,
            &[prepare_bytes.clone(), trace.clone(), trace.clone()].concat(),
        );
        let mut zero = Vec::new();
        encode_trace(
            &TraceContext {
                trace_id: [0; 16],
                span_id: [1; 8],
            },
            &mut zero,
        );
        let zero = body(2, &[prepare_bytes.clone(), zero].concat());
        let short = body(2, &[prepare_bytes.clone(), trace[..10].to_vec()].concat());
        let unknown = body(2, &[prepare_bytes, vec![part_tag::TRACE + 1]].concat());
        for (name, bad) in [
            ("first", first),
            ("after votes", after_votes),
            ("twice", twice),
            ("zero id", zero),
            ("short", short),
        ] {
            let mut traces = Vec::new();
            assert!(
                decode_parts_traced(&bad, &mut traces).is_err(),
                "{name} decoded"
            );
        }
        assert!(matches!(
            decode_parts(&unknown),
            Err(CodecError::PartTag(tag)) if tag == part_tag::TRACE + 1
        ));
    }
}
