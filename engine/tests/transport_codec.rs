//! The codec and the frame reader under proptest: every message round-trips, and no
//! byte string (random, truncated, oversized, bit-flipped) makes the decoder panic or
//! accept a damaged frame.
//!
//! `TRANSPORT_FUZZ_CASES` raises the case count of the decoder properties (the README
//! records a run with 1,000,000 cases each).

mod transport_support;

use std::sync::Arc;

use proptest::array::uniform32;
use proptest::collection::vec;
use proptest::prelude::*;
use tricommit_engine::pipeline::{AbortReason, BusyReason, Outcome, Priority};
use tricommit_engine::proto::{
    BatchId, Descriptor, DescriptorRef, Op, Part, Reason, State, TxnId, TxnSet, OP_PAYLOAD_BYTES,
};
use tricommit_engine::runtime::Txn;
use tricommit_engine::sign::{SignedVotes, VoteProof};
use tricommit_engine::transport::auth::{MacKey, SessionIds, MAC_BYTES};
use tricommit_engine::transport::codec::{
    decode_busy, decode_outcomes, decode_parts, decode_submit, encode_busy, encode_outcomes,
    encode_parts, encode_submit,
};
use tricommit_engine::transport::frame::{
    kind, seal_frame, Expect, FrameReader, Header, HEADER_BYTES,
};
use tricommit_engine::transport::{BusyReply, Outcomes, RejectReason, Submit};

/// Cases of the decoder properties: a few thousand in `cargo test`, more on request.
fn fuzz_cases() -> u32 {
    std::env::var("TRANSPORT_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2000)
}

fn arb_desc() -> impl Strategy<Value = DescriptorRef> {
    (any::<u64>(), vec((any::<u64>(), 1u64..), 0..12)).prop_map(|(batch, txns)| {
        Arc::new(Descriptor {
            batch: BatchId(batch),
            txns: txns.iter().map(|(txn, _)| TxnId(*txn)).collect(),
            members: txns.iter().map(|(_, members)| *members).collect(),
        })
    })
}

fn arb_set() -> impl Strategy<Value = TxnSet> {
    (0u32..150).prop_flat_map(|len| {
        vec(any::<bool>(), len as usize).prop_map(move |bits| {
            let mut set = TxnSet::empty(len);
            for (index, bit) in bits.iter().enumerate() {
                if *bit {
                    set.insert(index as u32);
                }
            }
            set
        })
    })
}

fn arb_state() -> impl Strategy<Value = State> {
    (0u8..6).prop_map(|byte| State::from_u8(byte).expect("0..6 are states"))
}

fn arb_part() -> impl Strategy<Value = Part> {
    let batch = any::<u64>().prop_map(BatchId);
    prop_oneof![
        arb_desc().prop_flat_map(|desc| {
            let len = desc.txns.len();
            vec((any::<u64>(), any::<[u8; OP_PAYLOAD_BYTES]>()), 0..=len).prop_map(move |ops| {
                Part::Prepare {
                    desc: desc.clone(),
                    ops: ops
                        .into_iter()
                        .map(|(txn, payload)| Op {
                            txn: TxnId(txn),
                            payload,
                        })
                        .collect::<Vec<_>>()
                        .into(),
                }
            })
        }),
        (
            batch.clone(),
            arb_set(),
            arb_set(),
            vec((any::<u32>(), any::<u16>()), 0..8),
            vec((any::<u32>(), any::<u64>(), 0u8..6), 0..4),
        )
            .prop_map(|(batch, yes, read_only, no, held)| Part::Votes {
                batch,
                yes,
                read_only,
                no: no.into_iter().map(|(i, r)| (i, Reason(r))).collect(),
                held: held
                    .into_iter()
                    .map(|(i, b, s)| (i, BatchId(b), State::from_u8(s).expect("below 6")))
                    .collect(),
            }),
        arb_desc().prop_map(|desc| Part::Announce { desc }),
        (
            batch.clone(),
            any::<u32>(),
            arb_set(),
            arb_set(),
            proptest::option::of(arb_desc())
        )
            .prop_map(
                |(batch, elected, pre_commit, pre_abort, desc)| Part::Round {
                    batch,
                    elected,
                    pre_commit,
                    pre_abort,
                    desc,
                }
            ),
        (batch.clone(), any::<u32>(), arb_set(), arb_set()).prop_map(
            |(batch, elected, pre_commit, pre_abort)| Part::RoundAck {
                batch,
                elected,
                pre_commit,
                pre_abort,
            }
        ),
        (
            batch.clone(),
            arb_set(),
            arb_set(),
            proptest::option::of(arb_desc())
        )
            .prop_map(|(batch, commit, abort, desc)| Part::Decide {
                batch,
                commit,
                abort,
                desc,
            }),
        (arb_desc(), any::<u32>()).prop_map(|(desc, elected)| Part::Elect { desc, elected }),
        (
            batch.clone(),
            any::<u32>(),
            vec((arb_state(), any::<u32>()), 0..12)
        )
            .prop_map(|(batch, elected, states)| Part::ElectAck {
                batch,
                elected,
                states,
            }),
        (batch.clone(), any::<u32>()).prop_map(|(batch, elected)| Part::Reject { batch, elected }),
        arb_desc().prop_map(|desc| Part::Help { desc }),
        (batch.clone(), any::<u32>()).prop_map(|(batch, decided)| Part::Done { batch, decided }),
        batch.clone().prop_map(|batch| Part::Forget { batch }),
        (
            batch.clone(),
            any::<u8>(),
            arb_set(),
            arb_set(),
            vec((any::<u32>(), any::<u16>()), 0..8),
            uniform32(any::<u8>()),
            uniform32(any::<u8>()),
            vec((any::<u32>(), any::<u64>(), 0u8..6), 0..4),
        )
            .prop_map(|(batch, site, yes, read_only, no, low, high, held)| {
                Part::SignedVotes(std::sync::Arc::new(SignedVotes {
                    batch,
                    participant: tricommit_engine::proto::SiteId(site),
                    yes,
                    read_only,
                    no: no.into_iter().map(|(i, r)| (i, Reason(r))).collect(),
                    signature: signature_of(low, high),
                    held: held
                        .into_iter()
                        .map(|(i, b, s)| (i, BatchId(b), State::from_u8(s).expect("below 6")))
                        .collect(),
                }))
            }),
        (
            batch,
            any::<u8>(),
            uniform32(any::<u8>()),
            uniform32(any::<u8>()),
            uniform32(any::<u8>()),
        )
            .prop_map(|(batch, site, digest, low, high)| {
                Part::VoteProof(std::sync::Arc::new(VoteProof {
                    batch,
                    participant: tricommit_engine::proto::SiteId(site),
                    digest,
                    signature: signature_of(low, high),
                }))
            }),
    ]
}

fn signature_of(low: [u8; 32], high: [u8; 32]) -> [u8; 64] {
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&low);
    signature[32..].copy_from_slice(&high);
    signature
}

fn arb_txn() -> impl Strategy<Value = Txn> {
    (
        any::<u64>(),
        any::<bool>(),
        proptest::sample::subsequence((0u8..=255).collect::<Vec<_>>(), 0..=4),
        vec(any::<[u8; OP_PAYLOAD_BYTES]>(), 4),
    )
        .prop_map(|(id, high, participants, payloads)| {
            let priority = if high {
                Priority::High
            } else {
                Priority::Normal
            };
            participants.iter().zip(payloads).fold(
                Txn::new(TxnId(id), priority),
                |txn, (participant, payload)| {
                    txn.with_leg(*participant, payload)
                        .expect("distinct, at most four")
                },
            )
        })
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Committed),
        any::<u16>().prop_map(|r| Outcome::Aborted(AbortReason::Rejected(Reason(r)))),
        Just(Outcome::Aborted(AbortReason::Terminated)),
        Just(Outcome::Aborted(AbortReason::Shutdown)),
        Just(Outcome::InDoubt),
    ]
}

/// The session of the decoder properties: site 0 sends to site 1.
fn key() -> MacKey {
    MacKey::session(
        &transport_support::SECRET,
        transport_support::CLUSTER_ID,
        &SessionIds {
            dialer: 0,
            acceptor: 1,
            dialer_nonce: [1; 32],
            acceptor_nonce: [2; 32],
            sender: 0,
        },
    )
}

fn expect(sequence: u64) -> Expect {
    Expect {
        cluster_id: transport_support::CLUSTER_ID,
        receiver: 1,
        receiver_any_ok: false,
        sender: Some(0),
        sequence,
        body_bytes_max: tricommit_engine::transport::FRAME_BODY_BYTES_MAX,
    }
}

/// A valid SITE frame with sequence 1 carrying `parts`.
fn site_frame(parts: &[Part]) -> Vec<u8> {
    let header = Header {
        kind: kind::SITE,
        body_len: 0,
        sender: 0,
        receiver: 1,
        cluster_id: transport_support::CLUSTER_ID,
        sequence: 1,
    };
    let mut bytes = Vec::new();
    seal_frame(&mut bytes, &key(), header, |body| encode_parts(parts, body)).expect("fits");
    bytes
}

/// What the receiving side makes of `bytes`: the frames and bodies it accepts, and the
/// reject that ends the stream (or `None` if it waits for more bytes).
fn receive(bytes: &[u8]) -> (Vec<Vec<Part>>, Option<RejectReason>) {
    let mut reader = FrameReader::new();
    reader.buffer_mut().extend_from_slice(bytes);
    let key = key();
    let mut accepted = Vec::new();
    let mut sequence = 1;
    loop {
        match reader.next_frame(&expect(sequence), &key) {
            Ok(None) => return (accepted, None),
            Err(reason) => return (accepted, Some(reason)),
            Ok(Some(frame)) => {
                sequence += 1;
                if frame.header.kind != kind::SITE {
                    return (accepted, Some(RejectReason::UnexpectedKind));
                }
                match decode_parts(&frame.body) {
                    Ok(parts) => accepted.push(parts),
                    Err(_) => return (accepted, Some(RejectReason::BadBody)),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Proves that every part decodes to exactly what was encoded, through a whole frame.
    #[test]
    fn parts_round_trip(parts in vec(arb_part(), 0..8)) {
        let mut body = Vec::new();
        encode_parts(&parts, &mut body);
        prop_assert_eq!(decode_parts(&body), Ok(parts.clone()));
        let (accepted, reject) = receive(&site_frame(&parts));
        prop_assert_eq!(reject, None);
        prop_assert_eq!(accepted, vec![parts]);
    }

    // Proves that every field of the client messages survives the trip.
    #[test]
    fn client_messages_round_trip(
        txns in vec(arb_txn(), 0..20),
        items in vec((any::<u64>(), arb_outcome()), 0..20),
        ids in vec(any::<u64>(), 0..20),
        reason in prop_oneof![Just(BusyReason::HighWater), Just(BusyReason::Capacity), Just(BusyReason::Tickets)],
    ) {
        let submit = Submit { txns };
        let mut body = Vec::new();
        encode_submit(&submit, &mut body);
        prop_assert_eq!(decode_submit(&body), Ok(submit));
        let outcomes = Outcomes { items: items.into_iter().map(|(id, o)| (TxnId(id), o)).collect() };
        body.clear();
        encode_outcomes(&outcomes, &mut body);
        prop_assert_eq!(decode_outcomes(&body), Ok(outcomes));
        let busy = BusyReply { ids: ids.into_iter().map(TxnId).collect(), reason };
        body.clear();
        encode_busy(&busy, &mut body);
        prop_assert_eq!(decode_busy(&body), Ok(busy));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    // Proves that arbitrary bytes never make the reader or any body decoder panic, and
    // that a random byte string is never accepted as a frame (it would need the MAC).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..400)) {
        let (accepted, _) = receive(&bytes);
        prop_assert!(accepted.is_empty());
        let _ = decode_parts(&bytes);
        let _ = decode_submit(&bytes);
        let _ = decode_outcomes(&bytes);
        let _ = decode_busy(&bytes);
    }

    // Proves that a valid frame with any one bit flipped is never accepted: the header
    // checks or the MAC refuse it, or (a length made longer) the reader waits for bytes
    // that a live connection's silence bound then ends.
    #[test]
    fn bit_flipped_frames_are_refused(parts in vec(arb_part(), 1..4), bit in any::<prop::sample::Index>()) {
        let mut bytes = site_frame(&parts);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let (accepted, reject) = receive(&bytes);
        prop_assert!(accepted.is_empty(), "flipped bit {} accepted", bit);
        if bit / 8 >= HEADER_BYTES {
            prop_assert_eq!(reject, Some(RejectReason::BadMac), "bit {} is in the body or MAC", bit);
        }
    }

    // Proves that every cut of a valid frame waits for more bytes instead of failing or
    // accepting, and that a length above the limit is refused before any body arrives.
    #[test]
    fn truncated_and_oversized_frames(parts in vec(arb_part(), 1..4), cut in any::<prop::sample::Index>(), length in (tricommit_engine::transport::FRAME_BODY_BYTES_MAX as u32 + 1)..) {
        let bytes = site_frame(&parts);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(receive(&bytes[..cut]), (Vec::new(), None));
        let mut oversized = bytes[..HEADER_BYTES].to_vec();
        oversized[8..12].copy_from_slice(&length.to_le_bytes());
        prop_assert_eq!(receive(&oversized), (Vec::new(), Some(RejectReason::Oversized)));
        prop_assert!(bytes.len() > HEADER_BYTES + MAC_BYTES);
    }

    // Proves that a correctly sealed frame whose body is random after a plausible start
    // (a small part count and a real part tag) reaches the body decoder and is either
    // decoded or refused as bad_body, never a panic.
    #[test]
    fn sealed_random_bodies_are_decoded_or_refused(count in 0u32..4, tag in 0u8..14, rest in vec(any::<u8>(), 0..300)) {
        let header = Header {
            kind: kind::SITE,
            body_len: 0,
            sender: 0,
            receiver: 1,
            cluster_id: transport_support::CLUSTER_ID,
            sequence: 1,
        };
        let mut bytes = Vec::new();
        seal_frame(&mut bytes, &key(), header, |body| {
            body.extend_from_slice(&count.to_le_bytes());
            body.push(tag);
            body.extend_from_slice(&rest);
        })
        .expect("fits");
        let (accepted, reject) = receive(&bytes);
        match reject {
            None => prop_assert_eq!(accepted.len(), 1),
            Some(reason) => prop_assert_eq!(reason, RejectReason::BadBody),
        }
    }
}
