//! The active coordinator's overlap, driven by hand through the I/O-free API: the
//! PRE-COMMIT leaves before the coordinator's own record is durable but the coordinator
//! counts itself only once it is; the vote timeout adapts to the votes it has timed;
//! speculation announces a batch to the other replicas while its votes come in, a late
//! no vote cancels it for exactly the transactions it names, and the success predictor
//! switches it off while votes fail; and without overlap all of it stays as it was. A
//! participant forces its PC record only where the replicas alone are not a quorum.

use tricommit_engine::proto::{
    AppendSeq, BatchId, BatchInput, Coordinator, Descriptor, Op, Outcome, Output, Part,
    Participant, ProtoConfig, Reason, Record, SiteId, State, TxnId, TxnSet, OP_PAYLOAD_BYTES,
};
use tricommit_engine::sim::{bank_op, Bank};

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

/// A replica at site `me` whose incarnation record is durable.
fn replica(overlap: bool, me: SiteId) -> (Coordinator, Output) {
    let mut out = Output::default();
    let mut replica = Coordinator::new(config(overlap), me, &mut out).expect("valid");
    let upto = out.appends.last().expect("incarnation appended").0;
    out.clear();
    replica.handle_durable(0, upto, &mut out);
    out.clear();
    (replica, out)
}

/// The active replica, site 0.
fn coordinator(overlap: bool) -> (Coordinator, Output) {
    replica(overlap, REPLICAS[0])
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
        held: Vec::new(),
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

/// `len` transfers between the two participants, ids `first..`.
fn transfers(first: u64, len: u64) -> BatchInput {
    let members = PARTICIPANTS.iter().fold(0, |mask, site| mask | site.bit());
    let ops: Vec<Op> = (first..first + len)
        .map(|id| Op {
            txn: TxnId(id),
            payload: [0; OP_PAYLOAD_BYTES],
        })
        .collect();
    BatchInput {
        txns: (first..first + len).map(TxnId).collect(),
        members: vec![members; len as usize],
        ops: PARTICIPANTS
            .iter()
            .map(|&site| (site, ops.clone()))
            .collect(),
    }
}

fn votes(batch: BatchId, len: u32, yes: &[u32], no: &[u32]) -> Part {
    let mut yes_set = TxnSet::empty(len);
    for &index in yes {
        yes_set.insert(index);
    }
    Part::Votes {
        batch,
        yes: yes_set,
        read_only: TxnSet::empty(len),
        no: no
            .iter()
            .map(|&index| (index, Reason::INSUFFICIENT_FUNDS))
            .collect(),
        held: Vec::new(),
    }
}

fn announced_to(out: &Output) -> Vec<SiteId> {
    out.sends
        .iter()
        .filter(|sent| matches!(sent.part, Part::Announce { .. }))
        .map(|sent| sent.to)
        .collect()
}

/// A backup replica, site 1.
fn backup() -> (Coordinator, Output) {
    replica(true, REPLICAS[1])
}

/// Hands every part `from_out` sends to `to` over to `site`.
fn deliver(from: SiteId, from_out: &Output, to: SiteId, site: &mut Coordinator, now_us: u64) {
    let mut out = Output::default();
    for sent in from_out.sends.iter().filter(|sent| sent.to == to) {
        site.handle_message(now_us, from, sent.part.clone(), &mut out);
    }
}

// Proves speculation and its cancellation. The batch is announced to both backups with
// the PREPAREs; a backup logs its descriptor then and holds every transaction in Q. One
// participant votes no on transaction 1 after both voted yes on transaction 0: the
// round carries transaction 0 only (no descriptor: the backups have it), transaction 1
// aborts with the participant's reason, and the backup ends with 0 pre-committed and 1
// aborted. No ROUND ever names transaction 1.
#[test]
fn speculation_announces_and_a_late_no_cancels_cleanly() {
    let (mut coordinator, mut out) = coordinator(true);
    let (mut backup, mut backup_out) = backup();
    let batch = coordinator
        .submit(0, transfers(1, 2), &mut out)
        .expect("batch accepted");
    assert_eq!(announced_to(&out), vec![REPLICAS[1], REPLICAS[2]]);
    for sent in &out.sends {
        if sent.to == REPLICAS[1] {
            backup.handle_message(10, REPLICAS[0], sent.part.clone(), &mut backup_out);
        }
    }
    assert!(
        matches!(backup_out.appends.as_slice(), [(_, Record::Begin { .. })]),
        "the backup logs the descriptor at the announcement"
    );
    assert!(
        backup_out.sends.is_empty(),
        "an announcement asks for nothing"
    );
    assert_eq!(backup.txn_state(batch, 0), Some((State::Q, 0)));
    assert_eq!(backup.txn_state(batch, 1), Some((State::Q, 0)));
    backup_out.clear();
    out.clear();

    coordinator.handle_message(
        1_000,
        PARTICIPANTS[0],
        votes(batch, 2, &[0, 1], &[]),
        &mut out,
    );
    coordinator.handle_message(1_500, PARTICIPANTS[1], votes(batch, 2, &[0], &[]), &mut out);
    coordinator.handle_message(2_500, PARTICIPANTS[1], votes(batch, 2, &[], &[1]), &mut out);
    for sent in &out.sends {
        if let Part::Round {
            pre_commit, desc, ..
        } = &sent.part
        {
            assert!(pre_commit.contains(0));
            assert!(
                !pre_commit.contains(1),
                "a ROUND named the refused transaction"
            );
            if REPLICAS.contains(&sent.to) {
                assert!(desc.is_none(), "the round repeated an announced descriptor");
            }
        }
    }
    let aborted: Vec<_> = out
        .completions
        .iter()
        .filter(|done| done.outcome == Outcome::Abort)
        .collect();
    assert_eq!(aborted.len(), 1);
    assert!(aborted[0].txns.contains(1) && !aborted[0].txns.contains(0));
    assert_eq!(aborted[0].reasons, vec![(1, Reason::INSUFFICIENT_FUNDS)]);

    deliver(REPLICAS[0], &out, REPLICAS[1], &mut backup, 3_000);
    assert_eq!(backup.txn_state(batch, 0), Some((State::PreCommit, 1)));
    assert_eq!(
        backup.txn_state(batch, 1).map(|(state, _)| state),
        Some(State::Abort)
    );
}

/// Runs `batches` one-transaction batches in which participant 3 votes yes (or no,
/// with `yes` false; participant 4 always votes yes), and returns how many of them
/// were announced to the backups.
fn announced_batches(coordinator: &mut Coordinator, first_id: u64, batches: u64, yes: bool) -> u64 {
    let mut out = Output::default();
    let mut announced = 0;
    for k in 0..batches {
        let now_us = (first_id + k) * 10_000;
        let batch = coordinator
            .submit(now_us, one_transfer(first_id + k), &mut out)
            .expect("batch accepted");
        if !announced_to(&out).is_empty() {
            announced += 1;
        }
        let (p3, p4) = if yes {
            (votes(batch, 1, &[0], &[]), votes(batch, 1, &[0], &[]))
        } else {
            (votes(batch, 1, &[], &[0]), votes(batch, 1, &[0], &[]))
        };
        coordinator.handle_message(now_us + 1_000, PARTICIPANTS[0], p3, &mut out);
        coordinator.handle_message(now_us + 1_000, PARTICIPANTS[1], p4, &mut out);
        if let Some(upto) = highest_append(&out) {
            coordinator.handle_durable(now_us + 1_500, upto, &mut out);
        }
        if yes {
            for site in PARTICIPANTS {
                coordinator.handle_message(now_us + 2_000, site, round_ack(batch), &mut out);
            }
        }
        assert_eq!(out.completions.len(), 1, "batch {k} was decided");
        out.clear();
    }
    announced
}

// Proves the success predictor switches speculation: a participant that starts voting
// no turns announcements off within a few batches, they stay off while it refuses, and
// they come back once it votes yes again. Without overlap nothing is ever announced.
#[test]
fn the_success_predictor_switches_speculation_off_and_on() {
    let (mut active, _) = coordinator(true);
    assert_eq!(announced_batches(&mut active, 1, 10, true), 10);
    let refusing = announced_batches(&mut active, 11, 30, false);
    assert!(
        (1..=10).contains(&refusing),
        "{refusing} of 30 refused batches announced"
    );
    assert_eq!(announced_batches(&mut active, 41, 10, false), 0);
    let recovering = announced_batches(&mut active, 51, 30, true);
    assert!(
        (10..30).contains(&recovering),
        "{recovering} of 30 batches announced after the votes turned yes"
    );
    let (mut plain, _) = coordinator(false);
    assert_eq!(announced_batches(&mut plain, 1, 10, true), 0);
}

// Proves an announced batch is not left hanging at a backup if its announcer fails
// before any round: the backup arms a timer past the longest vote wait plus a pending
// timeout, and then starts recovery of its own (an election).
#[test]
fn a_backup_recovers_an_announced_batch_whose_announcer_failed() {
    let (mut coordinator, mut out) = coordinator(true);
    let (mut backup, mut backup_out) = backup();
    coordinator
        .submit(0, one_transfer(1), &mut out)
        .expect("batch accepted");
    deliver(REPLICAS[0], &out, REPLICAS[1], &mut backup, 10);
    let config = config(true);
    let deadline_us = backup.poll_timeout().expect("the backup armed a timer");
    assert!(deadline_us >= 10 + config.vote_timeout_max_us + config.pending_timeout_us);
    backup.handle_timeout(deadline_us - 1, &mut backup_out);
    assert!(
        backup_out.is_empty(),
        "the backup acted before its deadline"
    );
    backup.handle_timeout(deadline_us, &mut backup_out);
    let elected = backup_out.sync_upto.expect("the election is forced first");
    backup.handle_durable(deadline_us, elected, &mut backup_out);
    assert!(
        backup_out
            .sends
            .iter()
            .any(|sent| matches!(sent.part, Part::Elect { .. })),
        "the backup did not start recovery"
    );
}

/// A bank participant at site 3 that has voted yes on `txns` transfers (each between
/// sites 3 and `others`), its votes durable; returns the batch id.
fn prepared_participant(
    participant: &mut Participant<Bank>,
    counter: u32,
    txns: u64,
    others: u64,
) -> BatchId {
    let batch = BatchId::compose(0, 1, counter).expect("fits");
    let members = PARTICIPANTS[0].bit() | others;
    let desc = std::sync::Arc::new(Descriptor {
        batch,
        txns: (0..txns)
            .map(|i| TxnId(u64::from(counter) << 32 | i))
            .collect(),
        members: vec![members; txns as usize],
    });
    let ops: Vec<Op> = desc
        .txns
        .iter()
        .map(|&txn| bank_op(txn, 0, 1, false))
        .collect();
    let mut out = Output::default();
    let prepare = Part::Prepare {
        desc,
        ops: ops.into(),
    };
    participant.handle_message(0, REPLICAS[0], prepare, &mut out);
    let upto = out.sync_upto.expect("yes votes are forced");
    participant.handle_durable(0, upto, &mut Output::default());
    batch
}

/// Whether a normal-path ROUND for transaction `index` of `batch` (a first round for
/// it) makes the participant force its PC record (true) or leave it to its next sync
/// (false).
fn round_forces(participant: &mut Participant<Bank>, batch: BatchId, index: u32) -> bool {
    let txns = 3;
    let mut pre_commit = TxnSet::empty(txns);
    pre_commit.insert(index);
    let round = Part::Round {
        batch,
        elected: 1,
        pre_commit,
        pre_abort: TxnSet::empty(txns),
        desc: None,
    };
    let mut out = Output::default();
    participant.handle_message(0, REPLICAS[0], round, &mut out);
    assert!(
        out.appends.iter().any(|(_, record)| matches!(
            record,
            Record::Transition {
                state: State::PreCommit,
                ..
            }
        )),
        "the round is logged either way"
    );
    out.sync_upto.is_some()
}

// Proves the participant's choice between a lazy and a forced PC record (docs/protocol.md
// §4.2 step 4) with its per-batch cache: lazy where the three replicas alone are a
// quorum of every commit group (two-party transfers), forced where a transaction has
// three participants, and forced while a replica's link is down even in a batch whose
// answer is cached, lazy again once it is back up.
#[test]
fn a_participant_forces_its_round_only_where_the_replicas_are_not_a_quorum() {
    let mut participant =
        Participant::new(config(true), PARTICIPANTS[0], Bank::new(1, 1_000)).expect("valid");
    let two_party = prepared_participant(&mut participant, 1, 3, PARTICIPANTS[1].bit());
    let three_party = prepared_participant(
        &mut participant,
        2,
        3,
        PARTICIPANTS[1].bit() | SiteId(5).bit(),
    );
    assert!(!round_forces(&mut participant, two_party, 0));
    assert!(round_forces(&mut participant, three_party, 0));
    participant.set_links_down(0, REPLICAS[2].bit());
    assert!(round_forces(&mut participant, two_party, 1));
    participant.set_links_down(0, 0);
    assert!(!round_forces(&mut participant, two_party, 2));
}
