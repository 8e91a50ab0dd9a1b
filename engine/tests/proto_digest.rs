//! The canonical digest of the proto state machines, which the model checker uses as
//! a state's identity: a clone digests alike, event orders that reach the same state
//! digest alike, a shift in time changes nothing, and a real change shows.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use tricommit_engine::proto::{
    AppendSeq, BatchId, BatchInput, Coordinator, Op, Output, Part, Participant, ProtoConfig,
    ResourceManager, SiteId, TxnId, TxnSet, Vote, OP_PAYLOAD_BYTES,
};

/// The opening replica, the backup, and the two participants of the one transaction.
const OPENER: SiteId = SiteId(0);
const BACKUP: SiteId = SiteId(1);
const PARTICIPANTS: [SiteId; 2] = [SiteId(2), SiteId(3)];

fn config() -> ProtoConfig {
    ProtoConfig::new(vec![OPENER, BACKUP])
}

fn coordinator_digest(coordinator: &Coordinator, now_us: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    coordinator.digest(now_us, &mut hasher);
    hasher.finish()
}

/// An opener whose incarnation is durable and which submitted one transaction over
/// both participants at `now_us`, with the output of the submission (its PREPAREs).
fn opener_with_batch_output(now_us: u64) -> (Coordinator, BatchId, Output) {
    let mut out = Output::default();
    let mut coordinator = Coordinator::new(config(), OPENER, &mut out).expect("valid config");
    coordinator.handle_durable(now_us, AppendSeq(1), &mut out);
    let op = Op {
        txn: TxnId(7),
        payload: [0; OP_PAYLOAD_BYTES],
    };
    let input = BatchInput {
        txns: vec![TxnId(7)],
        members: vec![PARTICIPANTS[0].bit() | PARTICIPANTS[1].bit()],
        ops: PARTICIPANTS.iter().map(|&site| (site, vec![op])).collect(),
    };
    out.clear();
    let batch = coordinator
        .submit(now_us, input, &mut out)
        .expect("valid batch");
    (coordinator, batch, out)
}

fn opener_with_batch(now_us: u64) -> (Coordinator, BatchId) {
    let (coordinator, batch, _) = opener_with_batch_output(now_us);
    (coordinator, batch)
}

fn yes_votes(batch: BatchId) -> Part {
    Part::Votes {
        batch,
        yes: TxnSet::full(1),
        read_only: TxnSet::empty(1),
        no: Vec::new(),
        held: Vec::new(),
    }
}

/// Feeds the yes votes of `order`, syncing after each step as a driver would.
fn deliver_votes(coordinator: &mut Coordinator, batch: BatchId, order: [SiteId; 2]) {
    let mut out = Output::default();
    for site in order {
        out.clear();
        coordinator.handle_message(0, site, yes_votes(batch), &mut out);
        if let Some(upto) = out.sync_upto {
            coordinator.handle_durable(0, upto, &mut out);
        }
    }
}

// Proves that a clone digests like its original, and that a step on the clone (the
// votes, which start the PRE-COMMIT round) changes its digest.
#[test]
fn a_clone_digests_alike_until_it_steps() {
    let (original, batch) = opener_with_batch(0);
    let mut clone = original.clone();
    assert_eq!(
        coordinator_digest(&original, 0),
        coordinator_digest(&clone, 0)
    );
    deliver_votes(&mut clone, batch, PARTICIPANTS);
    assert_ne!(
        coordinator_digest(&original, 0),
        coordinator_digest(&clone, 0)
    );
}

// Proves that the order in which the votes arrive does not show in the digest once
// both are in: the two orders reach one state.
#[test]
fn vote_orders_that_reach_one_state_digest_alike() {
    let (mut first, batch) = opener_with_batch(0);
    let mut second = first.clone();
    deliver_votes(&mut first, batch, PARTICIPANTS);
    deliver_votes(&mut second, batch, [PARTICIPANTS[1], PARTICIPANTS[0]]);
    assert_eq!(
        coordinator_digest(&first, 0),
        coordinator_digest(&second, 0)
    );
}

// Proves that instants are hashed relative to the driver's clock: a batch opened at
// 0 and one opened at 5 s digest alike at their own clocks, and differently at one.
#[test]
fn a_shift_in_time_does_not_show_in_the_digest() {
    let shift_us = 5_000_000;
    let (early, _) = opener_with_batch(0);
    let (late, _) = opener_with_batch(shift_us);
    assert!(early.poll_timeout().is_some(), "the vote timer is armed");
    assert_eq!(
        coordinator_digest(&early, 0),
        coordinator_digest(&late, shift_us)
    );
    assert_ne!(coordinator_digest(&early, 0), coordinator_digest(&late, 0));
}

/// A resource manager that votes yes and remembers what it settled.
#[derive(Clone, Hash, Default)]
struct Recorder {
    prepared: Vec<TxnId>,
    committed: Vec<TxnId>,
}

impl ResourceManager for Recorder {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        for op in ops {
            self.prepared.push(op.txn);
            votes.push(Vote::Yes);
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        self.committed.extend_from_slice(txns);
    }

    fn abort(&mut self, _txns: &[TxnId]) {}
}

fn participant_digest(participant: &Participant<Recorder>) -> u64 {
    let mut hasher = DefaultHasher::new();
    participant.digest(0, &mut hasher);
    hasher.finish()
}

// Proves that a participant's digest covers its resource manager and its batches: a
// clone digests alike, and preparing a batch changes the digest.
#[test]
fn a_participant_digest_covers_its_resource_manager() {
    let participant =
        Participant::new(config(), PARTICIPANTS[0], Recorder::default()).expect("valid config");
    let mut clone = participant.clone();
    assert_eq!(participant_digest(&participant), participant_digest(&clone));
    let (_, _, mut out) = opener_with_batch_output(0);
    let prepare = out
        .sends
        .iter()
        .find(|outgoing| outgoing.to == PARTICIPANTS[0])
        .map(|outgoing| outgoing.part.clone())
        .expect("the opener sends PREPARE once its incarnation is durable");
    out.clear();
    clone.handle_message(0, OPENER, prepare, &mut out);
    assert_eq!(clone.rm().prepared, vec![TxnId(7)]);
    assert_ne!(participant_digest(&participant), participant_digest(&clone));
}
