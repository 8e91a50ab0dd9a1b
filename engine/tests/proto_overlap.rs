//! The active coordinator's overlap, driven by hand through the I/O-free API: the
//! PRE-COMMIT leaves before the coordinator's own record is durable but the coordinator
//! counts itself only once it is; the vote timeout adapts to the votes it has timed;
//! and without overlap both stay as they were.

use tricommit_engine::proto::{
    AppendSeq, BatchId, BatchInput, Coordinator, Op, Output, Part, ProtoConfig, SiteId, TxnId,
    TxnSet, OP_PAYLOAD_BYTES,
};

const REPLICAS: [SiteId; 3] = [SiteId(0), SiteId(1), SiteId(2)];
const PARTICIPANTS: [SiteId; 2] = [SiteId(3), SiteId(4)];
/// Every vote in the warm-up arrives this long after its PREPARE.
const VOTE_LATENCY_US: u64 = 2_000;

fn config(overlap: bool) -> ProtoConfig {
    let mut config = ProtoConfig::new(REPLICAS.to_vec());
    config.overlap = overlap;
    config.vote_timeout_us = 1_000_000;
    config.vote_timeout_min_us = 5_000;
    config.vote_timeout_max_us = 5_000_000;
    config
}

/// A replica at site 0 whose incarnation record is durable.
fn coordinator(overlap: bool) -> (Coordinator, Output) {
    let mut out = Output::default();
    let mut coordinator = Coordinator::new(config(overlap), REPLICAS[0], &mut out).expect("valid");
    let upto = out.appends.last().expect("incarnation appended").0;
    out.clear();
    coordinator.handle_durable(0, upto, &mut out);
    out.clear();
    (coordinator, out)
}

/// One transfer between the two participants.
fn one_transfer(id: u64) -> BatchInput {
    let members = PARTICIPANTS.iter().fold(0, |mask, site| mask | site.bit());
    let op = Op {
        txn: TxnId(id),
        payload: [0; OP_PAYLOAD_BYTES],
    };
    BatchInput {
        txns: vec![TxnId(id)],
        members: vec![members],
        ops: PARTICIPANTS.iter().map(|&site| (site, vec![op])).collect(),
    }
}

fn yes_votes(batch: BatchId) -> Part {
    let mut yes = TxnSet::empty(1);
    yes.insert(0);
    Part::Votes {
        batch,
        yes,
        read_only: TxnSet::empty(1),
        no: Vec::new(),
    }
}

fn round_ack(batch: BatchId) -> Part {
    let mut pre_commit = TxnSet::empty(1);
    pre_commit.insert(0);
    Part::RoundAck {
        batch,
        elected: 1,
        pre_commit,
        pre_abort: TxnSet::empty(1),
    }
}

fn highest_append(out: &Output) -> Option<AppendSeq> {
    out.appends.last().map(|(seq, _)| *seq)
}

/// Opens a batch at `now_us`, lets both participants vote yes `VOTE_LATENCY_US` later,
/// and returns what the coordinator emitted for the votes.
fn batch_voted_yes(
    coordinator: &mut Coordinator,
    out: &mut Output,
    id: u64,
    now_us: u64,
) -> BatchId {
    let batch = coordinator
        .submit(now_us, one_transfer(id), out)
        .expect("batch accepted");
    out.clear();
    for site in PARTICIPANTS {
        coordinator.handle_message(now_us + VOTE_LATENCY_US, site, yes_votes(batch), out);
    }
    batch
}

// Proves the overlap's safety rule at the coordinator: the PRE-COMMIT round leaves with
// the coordinator's own PC record still unsynced, and two participant acknowledgements
// (2 of a 5-site commit group) do not decide until that record is durable makes three.
#[test]
fn overlap_sends_the_round_early_but_counts_itself_only_once_durable() {
    let (mut coordinator, mut out) = coordinator(true);
    let batch = batch_voted_yes(&mut coordinator, &mut out, 1, 0);
    let rounds = out
        .sends
        .iter()
        .filter(|sent| matches!(sent.part, Part::Round { .. }))
        .count();
    assert_eq!(rounds, 4, "the round left for 2 participants and 2 backups");
    let own_pc = highest_append(&out).expect("the PC record was appended");
    assert!(out.sync_upto.is_some(), "the PC record is forced");
    out.clear();
    for site in PARTICIPANTS {
        coordinator.handle_message(3_000, site, round_ack(batch), &mut out);
    }
    assert!(
        out.completions.is_empty(),
        "decided with the coordinator's own PC record not yet durable"
    );
    coordinator.handle_durable(3_500, own_pc, &mut out);
    assert_eq!(out.completions.len(), 1, "a durable self makes the quorum");
}

// Proves that without overlap the round waits for the coordinator's own sync.
#[test]
fn without_overlap_the_round_waits_for_the_own_sync() {
    let (mut coordinator, mut out) = coordinator(false);
    batch_voted_yes(&mut coordinator, &mut out, 1, 0);
    assert!(
        !out.sends
            .iter()
            .any(|sent| matches!(sent.part, Part::Round { .. })),
        "a round left before the coordinator's PC record was durable"
    );
    let own_pc = highest_append(&out).expect("the PC record was appended");
    out.clear();
    coordinator.handle_durable(2_500, own_pc, &mut out);
    assert!(out
        .sends
        .iter()
        .any(|sent| matches!(sent.part, Part::Round { .. })));
}

/// Makes the coordinator's records durable and lets both participants acknowledge the
/// round, which decides the batch and retires its timers.
fn finish_batch(coordinator: &mut Coordinator, out: &mut Output, batch: BatchId, now_us: u64) {
    if let Some(upto) = highest_append(out) {
        coordinator.handle_durable(now_us, upto, out);
    }
    for site in PARTICIPANTS {
        coordinator.handle_message(now_us, site, round_ack(batch), out);
    }
    assert_eq!(out.completions.len(), 1, "the warm-up batch committed");
    out.clear();
}

/// Warms the predictor with `batches` batches whose votes all take `VOTE_LATENCY_US`,
/// then opens one more batch and returns how long it waits for votes.
fn vote_wait_after_warm_up(overlap: bool, batches: u64) -> u64 {
    let (mut coordinator, mut out) = coordinator(overlap);
    let mut now_us = 0;
    for id in 1..=batches {
        let batch = batch_voted_yes(&mut coordinator, &mut out, id, now_us);
        finish_batch(
            &mut coordinator,
            &mut out,
            batch,
            now_us + 2 * VOTE_LATENCY_US,
        );
        now_us += 10_000;
    }
    assert_eq!(coordinator.poll_timeout(), None, "no timer left armed");
    coordinator
        .submit(now_us, one_transfer(batches + 1), &mut out)
        .expect("batch accepted");
    let deadline_us = coordinator.poll_timeout().expect("the vote timer is armed");
    deadline_us - now_us
}

// Proves the adaptive vote timeout: after fast votes have been timed, a new batch waits
// for votes about the Jacobson/Karels timeout (clamped to the floor), not the configured
// one-second default; without overlap it waits the configured timeout.
#[test]
fn the_vote_timeout_adapts_to_timed_votes() {
    let fixed = config(false);
    assert_eq!(vote_wait_after_warm_up(false, 0), fixed.vote_timeout_us);
    assert_eq!(vote_wait_after_warm_up(true, 0), fixed.vote_timeout_us);
    let adapted = vote_wait_after_warm_up(true, 20);
    assert!(
        adapted < fixed.vote_timeout_us / 10,
        "the timeout did not adapt: {adapted} µs"
    );
    assert!(adapted >= fixed.vote_timeout_min_us, "{adapted} µs");
    assert_eq!(vote_wait_after_warm_up(false, 20), fixed.vote_timeout_us);
}
