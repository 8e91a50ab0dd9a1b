//! Checkpoints of the protocol state machines, crashed between every step: whatever
//! part of a checkpoint survived, recovery rebuilds the site exactly as it was (same
//! ledger, same transaction states), and the rebuilt site goes on exactly like the
//! live one. This is the invariant of `proto::checkpoint`: the snapshot holds the
//! effects of every record before the marker, so the carried batches' reservations
//! must not be applied a second time.

use std::sync::Arc;

use tricommit_engine::ledger::{Ledger, LedgerConfig, LedgerOp};
use tricommit_engine::proto::checkpoint::plan;
use tricommit_engine::proto::{
    BatchId, Coordinator, Descriptor, Op, Output, Part, Participant, ProtoConfig, Record,
    ResourceManager, SiteId, State, TxnId, TxnSet,
};

const REPLICAS: u8 = 3;
/// The participant under test; site 4 is the other leg of every transaction.
const ME: SiteId = SiteId(3);
const OTHER: SiteId = SiteId(4);
const ACCOUNTS: u64 = 8;
const BALANCE_INITIAL: i64 = 1_000;

fn config() -> ProtoConfig {
    ProtoConfig::new((0..REPLICAS).map(SiteId).collect())
}

fn ledger() -> Ledger {
    let mut config = LedgerConfig::new(ACCOUNTS);
    config.balance_initial = BALANCE_INITIAL;
    Ledger::new(config).expect("a valid ledger")
}

/// A batch of `txns` debits of `amount` from account `account`, each also touching OTHER.
fn prepare(batch: u64, first_txn: u64, txns: u64, account: u64, amount: u64) -> Part {
    let ids: Vec<TxnId> = (first_txn..first_txn + txns).map(TxnId).collect();
    let members = vec![ME.bit() | OTHER.bit(); ids.len()];
    let ops: Vec<Op> = ids
        .iter()
        .map(|&txn| Op {
            txn,
            payload: LedgerOp::debit(account, amount)
                .expect("a valid op")
                .encode(),
        })
        .collect();
    Part::Prepare {
        desc: Arc::new(Descriptor {
            batch: BatchId(batch),
            txns: ids,
            members,
        }),
        ops: ops.into(),
    }
}

fn decide(batch: u64, len: u32, commit: &[u32], abort: &[u32]) -> Part {
    let set = |indices: &[u32]| {
        let mut set = TxnSet::empty(len);
        indices.iter().for_each(|&index| set.insert(index));
        set
    };
    Part::Decide {
        batch: BatchId(batch),
        commit: set(commit),
        abort: set(abort),
        desc: None,
    }
}

/// Feeds `part` and moves the output's appends to `log`; every append is durable at
/// once (the crash points below cut the log by hand).
fn feed(site: &mut Participant<Ledger>, log: &mut Vec<Record>, part: Part) {
    let mut out = Output::default();
    site.handle_message(0, SiteId(0), part, &mut out);
    drain(site, log, &mut out);
}

fn drain(site: &mut Participant<Ledger>, log: &mut Vec<Record>, out: &mut Output) {
    let last = out.appends.last().map(|(seq, _)| *seq);
    log.extend(out.appends.drain(..).map(|(_, record)| record));
    if let Some(seq) = last {
        let mut more = Output::default();
        site.handle_durable(0, seq, &mut more);
        log.extend(more.appends.drain(..).map(|(_, record)| record));
    }
    out.clear();
}

/// Every state this site holds, in batch order, for comparison.
fn states(site: &Participant<Ledger>) -> Vec<(BatchId, Vec<(State, u32)>)> {
    let mut ids: Vec<BatchId> = site.batch_ids().collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|batch| {
            let states = (0..)
                .map_while(|index| site.txn_state(batch, index))
                .collect();
            (batch, states)
        })
        .collect()
}

fn recover(log: &[Record], snapshot: Option<&[u8]>) -> Participant<Ledger> {
    Participant::recover_checkpointed(config(), ME, ledger(), snapshot, log, 0)
        .expect("the surviving log recovers")
}

/// The work before and after the checkpoint: batch 1 committed, batch 2 half decided
/// (its other half and batch 3's reservations are still held at the checkpoint).
fn before(site: &mut Participant<Ledger>, log: &mut Vec<Record>) {
    feed(site, log, prepare(1, 100, 3, 0, 10));
    feed(site, log, decide(1, 3, &[0, 1, 2], &[]));
    feed(site, log, prepare(2, 200, 4, 1, 50));
    feed(site, log, decide(2, 4, &[0], &[1]));
    feed(site, log, prepare(3, 300, 2, 1, 70));
}

fn after(site: &mut Participant<Ledger>, log: &mut Vec<Record>) {
    feed(site, log, decide(2, 4, &[2], &[3]));
    feed(site, log, decide(3, 2, &[0, 1], &[]));
    feed(site, log, prepare(4, 400, 2, 2, 5));
}

#[test]
fn a_participant_recovers_exactly_whatever_part_of_a_checkpoint_survived() {
    // Proves that a crash before the snapshot, after the snapshot, after each carried
    // record of the group, and after the log is cut at the marker, all recover the live
    // ledger and states, and that the recovered site then tracks the live one exactly.
    let mut live = Participant::new(config(), ME, ledger()).expect("a participant");
    let mut log = Vec::new();
    before(&mut live, &mut log);
    let held_before = live.rm().reservations_len();
    assert!(
        held_before > 0,
        "the checkpoint must carry held reservations"
    );

    // Step 1: the snapshot, then step 2: the group.
    let snapshot = live.rm().snapshot().expect("a ledger takes snapshots");
    let mut out = Output::default();
    let marker = live.checkpoint(1, &mut out);
    let prefix = log.len();
    drain(&mut live, &mut log, &mut out);
    let group = log.len() - prefix;
    assert!(
        matches!(log[prefix], Record::Checkpoint { number: 1, .. }),
        "the group starts with its marker (seq {marker:?})"
    );

    let mut crash_points: Vec<(Vec<Record>, Option<&[u8]>)> = Vec::new();
    // Crashes before the group is durable: the old log, with or without part of it.
    for kept in 0..group {
        crash_points.push((log[..prefix + kept].to_vec(), None));
    }
    // The group is durable: the log as it is, and cut at the marker (step 3).
    crash_points.push((log.clone(), Some(&snapshot)));
    crash_points.push((log[prefix..].to_vec(), Some(&snapshot)));

    let mut live_log = log.clone();
    for (cut, snapshot) in &crash_points {
        let recovered = recover(cut, *snapshot);
        assert_eq!(recovered.rm(), live.rm(), "cut at {} records", cut.len());
        assert_eq!(states(&recovered), states(&live), "cut at {}", cut.len());
    }
    after(&mut live, &mut live_log);
    for (cut, snapshot) in crash_points {
        let mut recovered = recover(&cut, snapshot);
        let mut recovered_log = cut.clone();
        after(&mut recovered, &mut recovered_log);
        assert_eq!(recovered.rm(), live.rm(), "after a cut at {}", cut.len());
        assert_eq!(states(&recovered), states(&live));
        // And the continued log recovers to the same state again.
        let again = recover(&recovered_log, snapshot);
        assert_eq!(again.rm(), live.rm(), "recovery of the continued log");
    }
}

#[test]
fn a_checkpointed_log_without_its_snapshot_is_refused() {
    // Proves that recovery never silently starts a checkpointed log from an empty
    // resource manager.
    let mut live = Participant::new(config(), ME, ledger()).expect("a participant");
    let mut log = Vec::new();
    before(&mut live, &mut log);
    let mut out = Output::default();
    live.checkpoint(1, &mut out);
    drain(&mut live, &mut log, &mut out);
    assert!(Participant::recover_checkpointed(config(), ME, ledger(), None, &log, 0).is_err());
    assert!(
        Participant::recover_checkpointed(config(), ME, ledger(), Some(b"junk"), &log, 0).is_err()
    );
}

#[test]
fn a_replica_recovers_its_batches_and_incarnation_from_a_checkpoint() {
    // Proves that a coordinator replica cut at its checkpoint marker rebuilds the
    // batches it held and moves to a newer incarnation than the one it carried.
    let replica = SiteId(1);
    let mut out = Output::default();
    let mut coordinator = Coordinator::new(config(), replica, &mut out).expect("a replica");
    let mut log: Vec<Record> = out.appends.drain(..).map(|(_, record)| record).collect();
    let desc = match prepare(7, 700, 3, 0, 1) {
        Part::Prepare { desc, .. } => desc,
        _ => unreachable!("prepare builds a PREPARE"),
    };
    let elect = Part::Elect {
        desc: desc.clone(),
        elected: 2,
    };
    coordinator.handle_message(0, SiteId(2), elect, &mut out);
    log.extend(out.appends.drain(..).map(|(_, record)| record));
    out.clear();
    coordinator.checkpoint(1, &mut out);
    let prefix = log.len();
    log.extend(out.appends.drain(..).map(|(_, record)| record));
    let cut = &log[prefix..];
    assert!(plan(cut).expect("a group").checkpoint.is_some());
    let mut out = Output::default();
    let recovered = Coordinator::recover(config(), replica, cut, 0, &mut out).expect("recovers");
    assert!(recovered.incarnation() > coordinator.incarnation());
    let ids: Vec<BatchId> = recovered.batch_ids().collect();
    assert_eq!(ids, vec![desc.batch]);
    for index in 0..desc.len() {
        assert_eq!(
            recovered.txn_state(desc.batch, index),
            coordinator.txn_state(desc.batch, index)
        );
    }
}
