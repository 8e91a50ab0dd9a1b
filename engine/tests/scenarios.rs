//! Scripted failure scenarios on the simulator: coordinator crashes in each phase,
//! participant crashes in each state, both counterexamples of DESIGN §2, split brain
//! after a partition heals, the seed's T1–T4 mix in one batch, and the two-phase
//! baseline blocking while its coordinator is down.
//!
//! Sites: coordinator replicas R0 (active), R1, R2; participants A, B, C (and D).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tricommit_engine::proto::{BatchId, Outcome, Part, Protocol, State, Termination};
use tricommit_engine::sim::{Fault, Sim, SimConfig, Transfer};

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const A: u8 = 3;
const B: u8 = 4;
const C: u8 = 5;
const D: u8 = 6;
/// Granularity at which a script polls for the moment to inject its fault.
const STEP_US: u64 = 10;
/// How long a script waits for the moment it needs before giving up.
const WAIT_US_MAX: u64 = 500_000;

fn world(participants: u8, termination: Termination) -> Sim {
    let mut config = SimConfig::quiet(11);
    config.batches = 0;
    config.participants = participants;
    config.termination = termination;
    Sim::new(config)
}

/// Runs in small steps until `ready` holds; false if it never does.
fn run_until(sim: &mut Sim, ready: impl Fn(&Sim) -> bool) -> bool {
    let limit = sim.now_us() + WAIT_US_MAX;
    while !ready(sim) {
        if sim.now_us() > limit || sim.violation().is_some() {
            return false;
        }
        let next = sim.now_us() + STEP_US;
        sim.run_until(next);
    }
    true
}

fn state(sim: &Sim, site: u8, batch: BatchId, index: u32) -> Option<State> {
    sim.txn_state(site, batch, index).map(|(state, _)| state)
}

/// Finishes the run and asserts that every invariant held.
fn finish_clean(sim: &mut Sim) {
    if let Err(failure) = sim.finish() {
        panic!("{failure}");
    }
}

fn decided(sim: &Sim, batch: BatchId, index: u32, outcome: Outcome) -> bool {
    sim.checker().ever((batch, index), outcome)
}

fn assert_only(sim: &Sim, batch: BatchId, index: u32, outcome: Outcome) {
    let other = if outcome == Outcome::Commit {
        Outcome::Abort
    } else {
        Outcome::Commit
    };
    assert!(
        decided(sim, batch, index, outcome),
        "txn {index} was not decided {outcome:?}"
    );
    assert!(
        !decided(sim, batch, index, other),
        "txn {index} was also decided {other:?}"
    );
}

/// Partition groups for `sites` sites: `isolated` on one side, the rest on the other.
fn cut_off(sites: u8, isolated: &[u8]) -> Vec<u8> {
    (0..sites)
        .map(|site| isolated.contains(&site) as u8)
        .collect()
}

/// A flag that a filter sets when it sees a part, and a filter that keeps it.
fn flag() -> Rc<Cell<bool>> {
    Rc::new(Cell::new(false))
}

// Proves that a coordinator crash during PREPARE (after PREPARE left, before any vote
// came back) ends in a clean abort decided by a backup's recovery.
#[test]
fn coordinator_crash_during_prepare() {
    let mut sim = world(3, Termination::E3pc);
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| state(s, A, batch, 0) == Some(State::W)));
    sim.crash(R0);
    sim.run_until(sim.now_us() + 300_000);
    assert_only(&sim, batch, 0, Outcome::Abort);
    assert!(sim.stats.elections > 0, "a backup must have run recovery");
    finish_clean(&mut sim);
}

// Proves what the two-phase baseline gives up: with its coordinator down after both
// participants voted yes, nobody decides (no backup runs recovery, and the yes voters
// may not guess), where three-phase's backups decide at once (the test above). Once the
// coordinator restarts it finishes the transaction, and every invariant holds.
#[test]
fn two_phase_blocks_while_its_coordinator_is_down() {
    let mut config = SimConfig::quiet(11);
    config.batches = 0;
    config.participants = 3;
    config.proto.protocol = Protocol::TwoPhase;
    let mut sim = Sim::new(config);
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| {
        state(s, A, batch, 0) == Some(State::W) && state(s, B, batch, 0) == Some(State::W)
    }));
    sim.crash(R0);
    // Ten pending timeouts of the participants, with their backoff.
    sim.run_until(sim.now_us() + 300_000);
    assert!(!decided(&sim, batch, 0, Outcome::Commit) && !decided(&sim, batch, 0, Outcome::Abort));
    assert_eq!(
        state(&sim, A, batch, 0),
        Some(State::W),
        "A is blocked in W"
    );
    assert_eq!(
        state(&sim, B, batch, 0),
        Some(State::W),
        "B is blocked in W"
    );
    assert_eq!(sim.stats.elections, 0, "nobody ran E3PC");
    sim.restart(R0);
    assert!(run_until(&mut sim, |s| {
        [A, B]
            .iter()
            .all(|&site| matches!(state(s, site, batch, 0), Some(State::Commit | State::Abort)))
    }));
    let committed = decided(&sim, batch, 0, Outcome::Commit);
    assert_only(
        &sim,
        batch,
        0,
        if committed {
            Outcome::Commit
        } else {
            Outcome::Abort
        },
    );
    finish_clean(&mut sim);
}

// Proves that a coordinator crash during PRE-COMMIT (PC logged and sent, no ack
// back yet) ends in commit: the PC sites hold the highest attempt, so recovery
// re-runs the PRE-COMMIT round.
#[test]
fn coordinator_crash_during_pre_commit() {
    let mut sim = world(3, Termination::E3pc);
    let sent = flag();
    let seen = sent.clone();
    sim.set_filter(Some(Box::new(move |from, _, part| {
        if from == R0 && matches!(part, Part::Round { .. }) {
            seen.set(true);
        }
        Some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |_| sent.get()));
    sim.crash(R0);
    sim.run_until(sim.now_us() + 300_000);
    assert_only(&sim, batch, 0, Outcome::Commit);
    finish_clean(&mut sim);
}

// Proves that a coordinator crash during COMMIT (client told "commit", no COMMIT
// delivered) keeps the acknowledged commit: recovery finds the PC quorum.
#[test]
fn coordinator_crash_during_commit() {
    let mut sim = world(3, Termination::E3pc);
    let sent = flag();
    let seen = sent.clone();
    sim.set_filter(Some(Box::new(move |from, _, part| {
        if from == R0 && matches!(part, Part::Decide { .. }) {
            seen.set(true);
            return None;
        }
        Some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |_| sent.get()));
    assert_eq!(
        sim.checker().acked().get(&(batch, 0)),
        Some(&Outcome::Commit)
    );
    sim.crash(R0);
    sim.set_filter(None);
    sim.run_until(sim.now_us() + 300_000);
    assert_eq!(state(&sim, A, batch, 0), Some(State::Commit));
    assert_eq!(state(&sim, B, batch, 0), Some(State::Commit));
    finish_clean(&mut sim);
}

/// Crashes participant B as soon as it holds `target` for the batch's only
/// transaction, restarts it 20 ms later, and checks the run.
fn participant_crash_in(target: State, no_at_b: bool) {
    let mut sim = world(3, Termination::E3pc);
    let mut transfer = Transfer::simple(A, B, 10);
    if no_at_b {
        transfer = transfer.with_no_at(B);
    }
    let batch = sim.submit(&[transfer]).expect("R0 is up");
    assert!(
        run_until(&mut sim, |s| state(s, B, batch, 0) == Some(target)),
        "B never reached {target:?}"
    );
    sim.crash(B);
    sim.run_until(sim.now_us() + 20_000);
    sim.restart(B);
    finish_clean(&mut sim);
    let expected = if target == State::Abort {
        Outcome::Abort
    } else {
        Outcome::Commit
    };
    if target != State::W {
        assert_only(&sim, batch, 0, expected);
    }
    assert!(
        sim.checker().ever((batch, 0), Outcome::Commit)
            || sim.checker().ever((batch, 0), Outcome::Abort)
    );
}

// Proves that a participant crashing in Q (prepared in memory, its yes vote not yet
// durable, so never sent) comes back knowing nothing and the transaction aborts.
#[test]
fn participant_crash_in_q_before_its_vote_is_durable() {
    let mut sim = world(3, Termination::E3pc);
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    let unsynced_yes = |s: &Sim| {
        state(s, B, batch, 0) == Some(State::W)
            && !s
                .checker()
                .durable_yes(tricommit_engine::proto::SiteId(B), batch, 0)
    };
    assert!(
        run_until(&mut sim, unsynced_yes),
        "B's vote was never caught before its sync"
    );
    sim.crash(B);
    sim.run_until(sim.now_us() + 20_000);
    sim.restart(B);
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Abort);
}

// Proves that a participant crashing while prepared (W, yes vote durable or not)
// recovers without breaking any invariant.
#[test]
fn participant_crash_in_w() {
    participant_crash_in(State::W, false);
}

// Proves that a participant crashing in PC recovers its PC and ends committed.
#[test]
fn participant_crash_in_pre_commit() {
    participant_crash_in(State::PreCommit, false);
}

// Proves that a participant crashing in C (its C record unforced and maybe lost)
// learns the commit again and its bank is replayed exactly.
#[test]
fn participant_crash_in_commit() {
    participant_crash_in(State::Commit, false);
}

// Proves that a participant crashing after voting no (A, nothing forced) stays
// aborted and never applies the transaction.
#[test]
fn participant_crash_in_abort() {
    participant_crash_in(State::Abort, true);
}

// Proves that a participant crashing in PA (a recovery round pre-aborted the
// transaction) ends aborted: R0 dies before PRE-COMMIT, R1 pre-aborts, B crashes.
#[test]
fn participant_crash_in_pre_abort() {
    let mut sim = world(3, Termination::E3pc);
    sim.set_filter(Some(Box::new(|from, _, part| {
        (!(from == R0 && matches!(part, Part::Round { .. }))).then_some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| state(s, B, batch, 0) == Some(State::W)));
    sim.crash(R0);
    assert!(
        run_until(&mut sim, |s| state(s, B, batch, 0) == Some(State::PreAbort)),
        "no PRE-ABORT round"
    );
    sim.crash(B);
    sim.run_until(sim.now_us() + 20_000);
    sim.restart(B);
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Abort);
}

/// DESIGN §2, counterexample 1: A, B, C vote yes; PRE-COMMIT reaches only C; the
/// coordinator crashes; the network splits {A, B, R1} | {C, R2}. Returns the sim
/// after 1 s of partition.
fn counterexample_partition(termination: Termination) -> (Sim, BatchId) {
    let mut sim = world(3, termination);
    let reached_c = flag();
    let seen = reached_c.clone();
    sim.set_filter(Some(Box::new(move |from, to, part| match part {
        Part::Round { elected: 1, .. } if from == R0 => {
            if to == C {
                seen.set(true);
                Some(0)
            } else {
                None
            }
        }
        _ => Some(0),
    })));
    let transfer = Transfer::of(&[(A, -10), (B, 4), (C, 6)]);
    let batch = sim.submit(&[transfer]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| reached_c.get()
        && state(s, C, batch, 0) == Some(State::PreCommit)));
    sim.crash(R0);
    sim.inject(Fault::Partition(cut_off(6, &[C, R2])));
    sim.run_until(sim.now_us() + 1_000_000);
    (sim, batch)
}

// Proves that the naive rule breaks atomicity in counterexample 1: {A, B} abort
// while {C} commits.
#[test]
fn counterexample_partition_breaks_the_naive_rule() {
    let (mut sim, _) = counterexample_partition(Termination::NaiveUnsafe);
    let failure = sim
        .finish()
        .expect_err("the naive rule must break atomicity here");
    assert_eq!(failure.violation.invariant, 1, "{failure}");
}

// Proves that E3PC blocks both minorities in counterexample 1 (neither side holds
// a quorum of the 6-site commit group) and commits once the partition heals.
#[test]
fn counterexample_partition_is_safe_with_e3pc() {
    let (mut sim, batch) = counterexample_partition(Termination::E3pc);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    assert!(
        !decided(&sim, batch, 0, Outcome::Commit) && !decided(&sim, batch, 0, Outcome::Abort),
        "a minority decided"
    );
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Commit);
}

/// DESIGN §2, counterexample 2: R1 sees C = PC and A = B = W and tells only C
/// (a COMMIT under the naive rule, a PRE-COMMIT round under E3PC); then R1 and C
/// crash, and R2 recovers from A, B and itself.
fn counterexample_sequential(termination: Termination) -> (Sim, BatchId) {
    let mut sim = world(3, termination);
    let r1_reached_c = flag();
    let seen = r1_reached_c.clone();
    sim.set_filter(Some(Box::new(move |from, to, part| match part {
        Part::Round { elected: 1, .. } if from == R0 => (to == C).then_some(0),
        Part::Round { .. } | Part::Decide { .. } if from == R1 => {
            seen.set(seen.get() || to == C);
            (to == C).then_some(0)
        }
        _ => Some(0),
    })));
    let transfer = Transfer::of(&[(A, -10), (B, 4), (C, 6)]);
    let batch = sim.submit(&[transfer]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| state(s, C, batch, 0)
        == Some(State::PreCommit)));
    sim.crash(R0);
    let c_moved = |s: &Sim| {
        matches!(
            s.txn_state(C, batch, 0),
            Some((State::Commit, _)) | Some((State::PreCommit, 2..))
        )
    };
    assert!(
        run_until(&mut sim, |s| r1_reached_c.get() && c_moved(s)),
        "R1 never reached C"
    );
    sim.crash(R1);
    sim.crash(C);
    sim.run_until(sim.now_us() + 1_000_000);
    (sim, batch)
}

// Proves that the naive rule breaks atomicity in counterexample 2 without any
// partition: C committed, then R2 aborts from A = B = W.
#[test]
fn counterexample_sequential_breaks_the_naive_rule() {
    let (mut sim, _) = counterexample_sequential(Termination::NaiveUnsafe);
    let failure = match sim.violation() {
        Some(_) => sim.failure().expect("a violation makes a failure"),
        None => sim
            .finish()
            .expect_err("the naive rule must break atomicity here"),
    };
    assert_eq!(failure.violation.invariant, 1, "{failure}");
}

// Proves that E3PC is safe in counterexample 2: R2 with A and B is no quorum and
// blocks; once R1 and C are back, the PC at the highest attempt wins and it commits.
#[test]
fn counterexample_sequential_is_safe_with_e3pc() {
    let (mut sim, batch) = counterexample_sequential(Termination::E3pc);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    assert!(
        !decided(&sim, batch, 0, Outcome::Abort),
        "R2 aborted without a quorum"
    );
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Commit);
}

// Proves split-brain fencing: R0 is cut off with A while still driving its
// PRE-COMMIT round; R1 recovers the batch with B, C, R2 under election 2 and aborts
// it; when the partition heals, R0's stale round is rejected and nothing diverges.
#[test]
fn split_brain_stale_coordinator_is_fenced() {
    let mut config = SimConfig::quiet(11);
    config.batches = 0;
    config.proto.retransmits_max = 200;
    let mut sim = Sim::new(config);
    let partitioned = Rc::new(Cell::new(false));
    let rejects = Rc::new(RefCell::new(0u32));
    let (cut, counted) = (partitioned.clone(), rejects.clone());
    sim.set_filter(Some(Box::new(move |from, to, part| {
        if to == R0 && matches!(part, Part::Reject { .. }) {
            *counted.borrow_mut() += 1;
        }
        let stale_round = from == R0 && matches!(part, Part::Round { elected: 1, .. });
        (!(stale_round && cut.get())).then_some(0)
    })));
    partitioned.set(true);
    let batch = sim
        .submit(&[Transfer::of(&[(A, -10), (B, 4), (C, 6)])])
        .expect("R0 is up");
    assert!(run_until(&mut sim, |s| state(s, R0, batch, 0)
        == Some(State::PreCommit)));
    sim.inject(Fault::Partition(cut_off(6, &[R1, R2, B, C])));
    assert!(
        run_until(&mut sim, |s| state(s, B, batch, 0) == Some(State::Abort)),
        "the majority never decided"
    );
    // Let the majority's DECIDE to R0 die in the partition, so R0 stays stale.
    sim.run_until(sim.now_us() + 5_000);
    partitioned.set(false);
    sim.inject(Fault::Heal);
    sim.run_until(sim.now_us() + 200_000);
    assert!(
        *rejects.borrow() > 0,
        "the stale coordinator was never fenced:\n{}",
        sim.trace().join("\n")
    );
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Abort);
}

// Proves that one batch holding transactions in different states is recovered per
// transaction: at the coordinator's crash T1 is committed, T2 aborted (a no vote),
// T3 pre-committed at C only, T4 prepared with D's vote lost. Recovery commits T1
// and T3 and aborts T2 and T4.
#[test]
fn t1_to_t4_mix_in_one_batch() {
    let mut sim = world(4, Termination::E3pc);
    let t3_round = flag();
    let seen = t3_round.clone();
    sim.set_filter(Some(Box::new(move |from, to, part| match part {
        Part::Votes { .. } if from == D => None,
        Part::Votes { .. } if from == C => Some(5_000),
        Part::Round {
            elected: 1,
            pre_commit,
            ..
        } if from == R0 && pre_commit.contains(2) => {
            seen.set(true);
            (to == C).then_some(0)
        }
        _ => Some(0),
    })));
    let batch = sim
        .submit(&[
            Transfer::simple(A, B, 10),
            Transfer::simple(A, C, 10).with_no_at(C),
            Transfer::simple(B, C, 10),
            Transfer::simple(C, D, 10),
        ])
        .expect("R0 is up");
    assert!(run_until(&mut sim, |s| t3_round.get()
        && state(s, C, batch, 2) == Some(State::PreCommit)));
    assert_eq!(
        sim.checker().acked().get(&(batch, 0)),
        Some(&Outcome::Commit)
    );
    assert_eq!(
        sim.checker().acked().get(&(batch, 1)),
        Some(&Outcome::Abort)
    );
    assert_eq!(state(&sim, B, batch, 2), Some(State::W));
    assert_eq!(state(&sim, D, batch, 3), Some(State::W));
    sim.crash(R0);
    sim.set_filter(None);
    sim.run_until(sim.now_us() + 500_000);
    finish_clean(&mut sim);
    assert_only(&sim, batch, 0, Outcome::Commit);
    assert_only(&sim, batch, 1, Outcome::Abort);
    assert_only(&sim, batch, 2, Outcome::Commit);
    assert_only(&sim, batch, 3, Outcome::Abort);
}

// Proves that retirement bounds memory: after a fault-free run of many batches without
// read-only votes, every site has forgotten all but the last few batches (whose
// decisions are not yet durable everywhere), and nothing was lost.
#[test]
fn decided_batches_are_retired_everywhere() {
    let batches = 40u32;
    let mut sim = world(3, Termination::E3pc);
    for round in 0..batches {
        let transfers = [
            Transfer::simple(A, B, 1 + round as i64 % 7),
            Transfer::simple(B, C, 2),
            Transfer::simple(C, A, 3),
        ];
        sim.submit(&transfers).expect("R0 is up");
        sim.run_until(sim.now_us() + 3_000);
    }
    sim.run_until(sim.now_us() + 50_000);
    for site in [R0, R1, R2, A, B, C] {
        let held = sim.batch_count(site).expect("every site is up");
        assert!(
            held <= 3,
            "site {site} still holds {held} of {batches} batches"
        );
    }
    assert_eq!(sim.stats.committed, 3 * batches as u64);
    finish_clean(&mut sim);
}

// Proves that after a crash of every site at once, in which a participant lost its
// unforced COMMIT while the replicas kept theirs, the participant learns the decision
// before its pending timeout: the replicas hold nothing open, and a driver that stops
// them once they are settled (as the engine's shutdown drain does) must not strand it.
#[test]
fn crash_of_every_site_lets_a_participant_relearn_its_lost_commit_at_once() {
    let mut sim = world(3, Termination::E3pc);
    let sites = [R0, R1, R2, A, B, C];
    let first = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    let first_everywhere = |s: &Sim| committed_at(s, first, &[R0, R1, R2, A, B]);
    assert!(run_until(&mut sim, first_everywhere));
    // A second batch without A forces the replicas' logs past the first COMMIT;
    // A's COMMIT stays unsynced.
    let second = sim.submit(&[Transfer::simple(B, C, 5)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| committed_at(
        s,
        second,
        &[R0, R1, R2]
    )));
    for site in sites {
        sim.crash_losing_unsynced(site);
    }
    for site in sites {
        sim.restart(site);
    }
    // A's PRE-COMMIT record was lazy (the three replicas are the quorum of a
    // two-party transfer), so A comes back prepared (W) or pre-committed, undecided.
    let recovered = state(&sim, A, first, 0);
    assert!(
        matches!(recovered, Some(State::W | State::PreCommit)),
        "A recovered {recovered:?}"
    );
    assert!(committed_at(&sim, first, &[R0, R1, R2]));
    let pending_timeout_us = sim.config.proto().pending_timeout_us;
    sim.run_until(sim.now_us() + pending_timeout_us / 2);
    assert_eq!(state(&sim, A, first, 0), Some(State::Commit));
    finish_clean(&mut sim);
}

// Proves that a replica restarted with an open transaction, which every other site
// has decided, finishes it before a pending timeout: no other site is left to start
// recovery or to ask for it, and a settled site may be stopped at any time.
#[test]
fn replica_restarted_with_an_open_transaction_recovers_it_at_once() {
    let mut sim = world(3, Termination::E3pc);
    sim.set_filter(Some(Box::new(|from, to, part| {
        let decide_to_r1 = from == R0 && to == R1 && matches!(part, Part::Decide { .. });
        (!decide_to_r1).then_some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| committed_at(
        s,
        batch,
        &[R0, R2, A, B]
    )));
    sim.set_filter(None);
    sim.crash_losing_unsynced(R1);
    sim.restart(R1);
    assert_eq!(state(&sim, R1, batch, 0), Some(State::PreCommit));
    let pending_timeout_us = sim.config.proto().pending_timeout_us;
    sim.run_until(sim.now_us() + pending_timeout_us / 2);
    assert_eq!(state(&sim, R1, batch, 0), Some(State::Commit));
    finish_clean(&mut sim);
}

/// Whether every site of `at` holds the first transaction of `batch` committed.
fn committed_at(sim: &Sim, batch: BatchId, at: &[u8]) -> bool {
    at.iter()
        .all(|&site| state(sim, site, batch, 0) == Some(State::Commit))
}

// Proves that a replica which restarts holding a batch only from ANNOUNCE (the rounds
// and the decision never reached it) does not hold it for good: after the undecided
// wait it recovers the batch, learns the commit, reports DONE, and every site forgets
// the batch. Before, R1 kept it in Q and R0 waited for R1's DONE forever.
#[test]
fn a_replica_restarted_with_an_announced_batch_learns_it_and_everyone_forgets_it() {
    let mut sim = world(3, Termination::E3pc);
    // R1 hears nothing from R0 but ANNOUNCE.
    sim.set_filter(Some(Box::new(move |from, to, part| {
        (from != R0 || to != R1 || matches!(part, Part::Announce { .. })).then_some(0)
    })));
    let first = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| committed_at(s, first, &[R0, A, B])));
    assert_eq!(state(&sim, R1, first, 0), Some(State::Q));
    // A second batch reaches R1 whole: its forced PC record makes the first batch's
    // descriptor durable at R1 too.
    sim.set_filter(Some(Box::new(move |from, to, part| {
        (from != R0 || to != R1 || part.batch() != first).then_some(0)
    })));
    let second = sim.submit(&[Transfer::simple(B, C, 5)]).expect("R0 is up");
    assert!(run_until(&mut sim, |s| committed_at(s, second, &[R0, R1])));
    sim.crash_losing_unsynced(R1);
    sim.set_filter(None);
    sim.restart(R1);
    assert_eq!(
        state(&sim, R1, first, 0),
        Some(State::Q),
        "R1 kept the announcement"
    );
    let wait_us = sim.config.proto().undecided_wait_us();
    sim.run_until(sim.now_us() + wait_us + 200_000);
    assert_eq!(
        state(&sim, R1, first, 0),
        Some(State::Commit),
        "R1 learned the commit"
    );
    // Decisions are logged unforced: the next batch's syncs make them durable, and
    // DONE follows.
    sim.submit(&[Transfer::simple(C, A, 1)]).expect("R0 is up");
    sim.run_until(sim.now_us() + 200_000);
    for site in [R0, R1, R2, A, B] {
        assert_eq!(
            sim.holds_batch(site, first),
            Some(false),
            "site {site} still holds the announced batch"
        );
    }
    finish_clean(&mut sim);
}

/// A world whose sites hold an undecided transaction for 2 s before they chase it (as
/// the engine's default `pending_us`), so that only a link hint can start recovery
/// sooner.
fn world_slow_pending(link_hints: bool) -> Sim {
    let mut config = SimConfig::quiet(11);
    config.batches = 0;
    config.participants = 3;
    config.proto.pending_timeout_us = 2_000_000;
    config.settle_us = 20_000_000;
    config.link_hints = link_hints;
    Sim::new(config)
}

/// Crashes R0 right after its PRE-COMMIT round left, and returns the batch and the
/// instant of the crash.
fn crash_r0_after_pre_commit(sim: &mut Sim) -> (BatchId, u64) {
    let sent = flag();
    let seen = sent.clone();
    sim.set_filter(Some(Box::new(move |from, _, part| {
        if from == R0 && matches!(part, Part::Round { .. }) {
            seen.set(true);
        }
        Some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    assert!(run_until(sim, |_| sent.get()));
    sim.crash(R0);
    sim.set_filter(None);
    (batch, sim.now_us())
}

/// How long after `from_us` the batch's transaction was decided at A, if it was within
/// `limit_us`.
fn decided_within(sim: &mut Sim, batch: BatchId, from_us: u64, limit_us: u64) -> Option<u64> {
    while sim.now_us() < from_us + limit_us {
        if matches!(state(sim, A, batch, 0), Some(State::Commit | State::Abort)) {
            return Some(sim.now_us() - from_us);
        }
        let next = sim.now_us() + 100;
        sim.run_until(next);
    }
    None
}

// Proves that a link hint starts recovery at once: with R0 killed after its PRE-COMMIT
// round and the replicas told its link is down, R1 decides the batch (commit) within
// 100 ms, twenty times sooner than the 2 s pending timeout; without hints nobody
// decides it within that time. The run then passes every invariant.
#[test]
fn a_link_down_hint_starts_recovery_before_the_pending_timeout() {
    let mut hinted = world_slow_pending(true);
    let (batch, crashed_us) = crash_r0_after_pre_commit(&mut hinted);
    let took_us = decided_within(&mut hinted, batch, crashed_us, 100_000);
    assert!(
        took_us.is_some(),
        "the hint did not start recovery:\n{}",
        hinted.trace().join("\n")
    );
    assert!(hinted.stats.link_hints_down > 0);
    assert_only(&hinted, batch, 0, Outcome::Commit);
    finish_clean(&mut hinted);

    let mut unhinted = world_slow_pending(false);
    let (batch, crashed_us) = crash_r0_after_pre_commit(&mut unhinted);
    assert_eq!(
        decided_within(&mut unhinted, batch, crashed_us, 100_000),
        None,
        "without hints the pending timeout rules"
    );
    finish_clean(&mut unhinted);
    assert_only(&unhinted, batch, 0, Outcome::Commit);
}

// Proves that a participant's link hint reaches a batch no other replica knows: R0
// prepared a batch whose announcements to R1 and R2 were lost, and was killed once
// the participants had voted. Only the participants hold the batch; told that R0's
// link is down, they ask the replicas for help at once, and R1 or R2 decides the
// batch (abort: nobody pre-committed it) within 100 ms, where the participants'
// pending timeout would take 2 s. Without hints nobody decides it within that time.
#[test]
fn a_participants_link_hint_recovers_a_batch_only_the_participants_hold() {
    let run = |link_hints: bool| {
        let mut sim = world_slow_pending(link_hints);
        sim.set_filter(Some(Box::new(|from, to, _| {
            (from != R0 || !matches!(to, R1 | R2)).then_some(0)
        })));
        let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
        let voted = |s: &Sim| {
            [A, B]
                .iter()
                .all(|&p| state(s, p, batch, 0) == Some(State::W))
        };
        assert!(run_until(&mut sim, voted), "the participants voted");
        for replica in [R1, R2] {
            assert_eq!(
                sim.holds_batch(replica, batch),
                Some(false),
                "R{replica} knows nothing"
            );
        }
        sim.crash(R0);
        sim.set_filter(None);
        let crashed_us = sim.now_us();
        let took_us = decided_within(&mut sim, batch, crashed_us, 100_000);
        (sim, batch, took_us)
    };
    let (mut hinted, batch, took_us) = run(true);
    assert!(
        took_us.is_some(),
        "the participants' hint did not start recovery:\n{}",
        hinted.trace().join("\n")
    );
    assert_only(&hinted, batch, 0, Outcome::Abort);
    finish_clean(&mut hinted);

    let (mut unhinted, batch, took_us) = run(false);
    assert_eq!(took_us, None, "without hints the pending timeout rules");
    finish_clean(&mut unhinted);
    assert_only(&unhinted, batch, 0, Outcome::Abort);
}

// Proves that a wrong hint is only a cost: R1 and R2 are told R0's link is down while
// R0 runs and drives its batch, and told again for a participant. They start an
// election and end their collects without those sites; the batch is decided once,
// the same at every site, and every invariant holds.
#[test]
fn a_wrong_link_down_hint_costs_an_election_not_safety() {
    let mut sim = world_slow_pending(false);
    let batch = sim
        .submit(&[Transfer::simple(A, B, 10), Transfer::simple(B, C, 5)])
        .expect("R0 is up");
    assert!(run_until(&mut sim, |s| state(s, A, batch, 0) == Some(State::W)));
    for replica in [R1, R2] {
        sim.hint_links_down(replica, 1 << R0);
    }
    sim.run_until(sim.now_us() + 2_000);
    for replica in [R1, R2] {
        sim.hint_links_down(replica, (1 << R0) | (1 << C));
    }
    sim.run_until(sim.now_us() + 500_000);
    let elections = sim.stats.elections;
    finish_clean(&mut sim);
    for index in 0..2 {
        let committed = decided(&sim, batch, index, Outcome::Commit);
        let aborted = decided(&sim, batch, index, Outcome::Abort);
        assert!(
            committed != aborted,
            "txn {index}: one outcome, and only one"
        );
    }
    assert!(elections > 0, "the wrong hint started no election");
}

// Proves that a replica restarted after others decided its batches by recovery learns
// their outcomes at once: R0 is killed holding its batch in PC, R1 commits the batch
// on the link hint, and R0, restarted, holds the commit within 10 ms: every site that
// decided answers its ELECT with the decision instead of fencing it.
#[test]
fn a_restarted_opener_learns_what_recovery_decided_without_it() {
    let mut sim = world_slow_pending(true);
    // R0 never hears the PRE-COMMIT acknowledgements, so it holds the batch in PC,
    // durably, when it dies.
    sim.set_filter(Some(Box::new(|_, to, part| {
        (to != R0 || !matches!(part, Part::RoundAck { .. })).then_some(0)
    })));
    let batch = sim.submit(&[Transfer::simple(A, B, 10)]).expect("R0 is up");
    let pre_committed = |s: &Sim| {
        [R0, A, B]
            .iter()
            .all(|&site| state(s, site, batch, 0) == Some(State::PreCommit))
    };
    assert!(run_until(&mut sim, pre_committed));
    sim.run_until(sim.now_us() + 5_000);
    sim.crash(R0);
    sim.set_filter(None);
    let crashed_us = sim.now_us();
    assert!(decided_within(&mut sim, batch, crashed_us, 100_000).is_some());
    sim.run_until(sim.now_us() + 50_000);
    sim.restart(R0);
    assert_eq!(
        state(&sim, R0, batch, 0),
        Some(State::PreCommit),
        "R0 holds PC"
    );
    let restarted_us = sim.now_us();
    let learned = |s: &Sim| state(s, R0, batch, 0) == Some(State::Commit);
    while !learned(&sim) && sim.now_us() < restarted_us + 10_000_000 {
        let next = sim.now_us() + 1_000;
        sim.run_until(next);
    }
    let took_us = sim.now_us() - restarted_us;
    assert!(
        learned(&sim),
        "R0 never learned the commit:\n{}",
        sim.trace().join("\n")
    );
    // The others answer its first ELECT with their decision (a round trip), where a
    // REJECT would cost it a newer election after a backoff.
    assert!(
        took_us <= 10_000,
        "R0 learned the commit only after {took_us} us"
    );
    finish_clean(&mut sim);
}
