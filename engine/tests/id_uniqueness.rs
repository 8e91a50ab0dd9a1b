//! Durable transaction-id uniqueness at the participants (DESIGN §7): a resend of an id
//! in another batch is refused by every participant that holds it, named with the
//! holding batch, answered with that batch's outcome, and never applied twice: through
//! the protocol core directly, in the simulator with faults, and through the in-process
//! engine reopened on its logs (whose in-memory window no longer knows the id), with
//! and without checkpoints in between.

mod engine_support;

use std::collections::VecDeque;
use std::sync::Arc;

use engine_support::{Acked, Bank as TestBank, Clients};
use tricommit_engine::proto::ids::HeldOutcome;
use tricommit_engine::proto::{
    BatchId, BatchInput, Completion, Coordinator, Descriptor, Op, Outcome, Output, Part,
    Participant, ProtoConfig, Reason, Record, SiteId, State, TxnId, TxnSet,
};
use tricommit_engine::sim::{bank_op, Bank, Sim, SimConfig};
use tricommit_engine::{AbortReason, Engine, Outcome as TicketOutcome, Txn};

const R0: SiteId = SiteId(0);
const P1: SiteId = SiteId(1);
const P2: SiteId = SiteId(2);
/// Parts one harness run may deliver before it is declared a livelock.
const DELIVERIES_MAX: usize = 10_000;

fn config() -> ProtoConfig {
    ProtoConfig::new(vec![R0])
}

/// Which parts `(from, to, part)` the harness holds back.
type Hold = Box<dyn Fn(SiteId, SiteId, &Part) -> bool>;

/// A coordinator and two bank participants wired with instant, in-order delivery and
/// instant syncs; parts `hold` matches wait in `held` until released.
struct Net {
    now_us: u64,
    coordinator: Coordinator,
    participants: Vec<Participant<Bank>>,
    /// Every record each participant appended, in order (its whole log).
    logs: Vec<Vec<Record>>,
    queue: VecDeque<(SiteId, SiteId, Part)>,
    held: Vec<(SiteId, SiteId, Part)>,
    hold: Hold,
    completions: Vec<Completion>,
}

impl Net {
    fn new() -> Net {
        let mut out = Output::default();
        let coordinator = Coordinator::new(config(), R0, &mut out).expect("coordinator");
        let participants = [P1, P2]
            .iter()
            .map(|&site| Participant::new(config(), site, Bank::new(2, 100)).expect("p"))
            .collect();
        let mut net = Net {
            now_us: 0,
            coordinator,
            participants,
            logs: vec![Vec::new(), Vec::new()],
            queue: VecDeque::new(),
            held: Vec::new(),
            hold: Box::new(|_, _, _| false),
            completions: Vec::new(),
        };
        net.drain(R0, out);
        net
    }

    /// Performs a site's output: logs, syncs at once, queues the sends.
    fn drain(&mut self, site: SiteId, mut out: Output) {
        loop {
            if site != R0 {
                let log = &mut self.logs[site.0 as usize - 1];
                log.extend(out.appends.drain(..).map(|(_, record)| record));
            }
            for sent in out.sends.drain(..) {
                self.queue.push_back((site, sent.to, sent.part));
            }
            self.completions.append(&mut out.completions);
            let Some(upto) = out.sync_upto.take() else {
                return;
            };
            out.clear();
            match site {
                R0 => self.coordinator.handle_durable(self.now_us, upto, &mut out),
                _ => self.participants[site.0 as usize - 1].handle_durable(
                    self.now_us,
                    upto,
                    &mut out,
                ),
            }
        }
    }

    fn run(&mut self) {
        for _ in 0..DELIVERIES_MAX {
            let Some((from, to, part)) = self.queue.pop_front() else {
                return;
            };
            if (self.hold)(from, to, &part) {
                self.held.push((from, to, part));
                continue;
            }
            self.deliver(from, to, part);
        }
        panic!("no quiescence after {DELIVERIES_MAX} deliveries");
    }

    fn deliver(&mut self, from: SiteId, to: SiteId, part: Part) {
        let mut out = Output::default();
        match to {
            R0 => self
                .coordinator
                .handle_message(self.now_us, from, part, &mut out),
            _ => self.participants[to.0 as usize - 1].handle_message(
                self.now_us,
                from,
                part,
                &mut out,
            ),
        }
        self.drain(to, out);
    }

    fn release(&mut self) {
        self.hold = Box::new(|_, _, _| false);
        for (from, to, part) in std::mem::take(&mut self.held) {
            self.queue.push_back((from, to, part));
        }
        self.run();
    }

    /// Submits transfers `(id, amount)` from account 0 of P1 to account 0 of P2.
    fn submit(&mut self, transfers: &[(u64, i64)]) -> BatchId {
        let mut input = BatchInput::default();
        let (mut debits, mut credits) = (Vec::new(), Vec::new());
        for &(id, amount) in transfers {
            input.txns.push(TxnId(id));
            input.members.push(P1.bit() | P2.bit());
            debits.push(bank_op(TxnId(id), 0, -amount, false));
            credits.push(bank_op(TxnId(id), 0, amount, false));
        }
        input.ops = vec![(P1, debits), (P2, credits)];
        let mut out = Output::default();
        let batch = self
            .coordinator
            .submit(self.now_us, input, &mut out)
            .expect("a well-formed batch");
        self.drain(R0, out);
        self.run();
        batch
    }

    /// The client-visible completions of `batch`: `(index, outcome, reason, held)`.
    fn outcomes(&self, batch: BatchId) -> Vec<(u32, Outcome, Option<Reason>, Option<HeldOutcome>)> {
        let mut found = Vec::new();
        for completion in self.completions.iter().filter(|c| c.batch == batch) {
            for index in completion.txns.iter() {
                let reason = completion.reasons.iter().find(|r| r.0 == index);
                let held = completion.held.iter().find(|h| h.0 == index);
                found.push((
                    index,
                    completion.outcome,
                    reason.map(|r| r.1),
                    held.map(|h| h.2),
                ));
            }
        }
        found.sort_unstable_by_key(|entry| entry.0);
        found
    }

    fn balances(&self) -> Vec<i64> {
        self.participants
            .iter()
            .map(|participant| participant.rm().balances()[0])
            .collect()
    }
}

// Proves that a resend of a committed id in a later batch (as another opener would
// make it) is refused by both participants with the holding batch, reported to the
// client as the first instance's commit, and applied once; and that the same id with
// another amount is rejected as different legs.
#[test]
fn a_resend_of_a_decided_id_gets_the_first_outcome_and_is_applied_once() {
    let mut net = Net::new();
    let first = net.submit(&[(7, 30), (8, 500)]);
    assert_eq!(net.balances(), [70, 130]);
    let resend = net.submit(&[(7, 30), (9, 5), (8, 500)]);
    assert_eq!(net.balances(), [65, 135], "only the new id 9 moved money");
    let commit = Some(HeldOutcome::Known(Outcome::Commit));
    let abort = Some(HeldOutcome::Known(Outcome::Abort));
    let held = Some(Reason::HELD_BY_BATCH);
    assert_eq!(
        net.outcomes(resend),
        [
            (0, Outcome::Abort, held, commit),
            (1, Outcome::Commit, None, None),
            (2, Outcome::Abort, held, abort),
        ]
    );
    for participant in &net.participants {
        let holder = participant.held(TxnId(7)).expect("id 7 is held");
        assert_eq!((holder.batch, holder.state), (first, State::Commit));
    }
    let other_legs = net.submit(&[(7, 31)]);
    let different = Some(Reason::EXISTS_WITH_DIFFERENT_LEGS);
    assert_eq!(
        net.outcomes(other_legs),
        [(0, Outcome::Abort, different, None)]
    );
    assert_eq!(net.balances(), [65, 135]);
}

// Proves that the opener waits for a holding batch that is still undecided: the
// resend's completion leaves only once the holder commits, with the holder's outcome.
#[test]
fn the_opener_waits_for_a_pending_holder() {
    let mut net = Net::new();
    // Hold the first batch's votes: both participants hold id 7 prepared (W).
    net.hold = Box::new(|_, to, part| to == R0 && matches!(part, Part::Votes { .. }));
    let first = net.submit(&[(7, 30)]);
    net.hold =
        Box::new(move |_, _, part| matches!(part, Part::Votes { batch, .. } if *batch == first));
    let resend = net.submit(&[(7, 30)]);
    assert!(
        net.outcomes(resend).is_empty(),
        "the resend completed before its holder decided: {:?}",
        net.outcomes(resend)
    );
    // The resend's batch is decided although its completion waits: it must not hold a
    // slot of the opener's in-flight window (`runtime::stages::has_room`), or a replica
    // whose resends wait for a killed replica's in-doubt batches stops opening batches
    // until their termination, and the ids it then prepares may be past the index.
    assert!(net.coordinator.is_decided(resend));
    assert!(!net.coordinator.is_decided(first));
    net.release();
    assert_eq!(net.outcomes(first), [(0, Outcome::Commit, None, None)]);
    let commit = Some(HeldOutcome::Known(Outcome::Commit));
    assert_eq!(
        net.outcomes(resend),
        [(0, Outcome::Abort, Some(Reason::HELD_BY_BATCH), commit)]
    );
    assert_eq!(net.balances(), [70, 130]);
}

// Proves that a holder the opener never learns about is waited for a bounded time
// only: the resend then completes as unknown (the client may ask again).
#[test]
fn an_unknown_holder_is_waited_for_a_bounded_time() {
    let mut out = Output::default();
    let mut coordinator = Coordinator::new(config(), R0, &mut out).expect("coordinator");
    let upto = out.sync_upto.expect("the incarnation is forced");
    out.clear();
    coordinator.handle_durable(0, upto, &mut out);
    out.clear();
    let input = BatchInput {
        txns: vec![TxnId(7)],
        members: vec![P1.bit()],
        ops: vec![(P1, vec![bank_op(TxnId(7), 0, -1, false)])],
    };
    let batch = coordinator.submit(0, input, &mut out).expect("batch");
    out.clear();
    let votes = Part::Votes {
        batch,
        yes: TxnSet::empty(1),
        read_only: TxnSet::empty(1),
        no: vec![(0, Reason::HELD_BY_BATCH)],
        held: vec![(0, BatchId(99 << 32), State::W)],
    };
    coordinator.handle_message(10, P1, votes, &mut out);
    assert!(out.completions.is_empty(), "{:?}", out.completions);
    assert!(
        coordinator.is_decided(batch),
        "decided, though its completion waits"
    );
    let deadline = coordinator.poll_timeout().expect("the wait is a timeout");
    assert!(deadline <= 10 + config().undecided_wait_us());
    out.clear();
    coordinator.handle_timeout(deadline, &mut out);
    let held: Vec<_> = out
        .completions
        .iter()
        .flat_map(|c| c.held.clone())
        .collect();
    assert_eq!(held, [(0, BatchId(99 << 32), HeldOutcome::Unknown)]);
}

/// Participant `index`'s log as a restart sees it: from its last checkpoint marker on
/// (its records before it recycled) with a snapshot, else up to that marker (the
/// checkpoint never happened).
fn log_of(net: &Net, index: usize, checkpointed: bool) -> Vec<Record> {
    let records = &net.logs[index];
    let marker = records
        .iter()
        .rposition(|record| matches!(record, Record::Checkpoint { .. }))
        .unwrap_or(records.len());
    match checkpointed {
        true => records[marker..].to_vec(),
        false => records[..marker].to_vec(),
    }
}

// Proves that the index survives a restart, from the log alone and from a checkpoint
// whose log no longer holds the holding batch's records: a resend PREPARE after either
// is refused with the holding batch and its outcome, and never reaches the bank.
#[test]
fn the_index_survives_restarts_and_checkpoints() {
    use tricommit_engine::proto::ResourceManager;
    let mut net = Net::new();
    let first = net.submit(&[(7, 30), (8, 500)]);
    let mut out = Output::default();
    let snapshot = net.participants[0].rm().snapshot().expect("bank snapshots");
    net.participants[0].checkpoint(1, &mut out);
    net.drain(P1, out);
    let carried = net.logs[0]
        .iter()
        .filter(|record| matches!(record, Record::CarriedIds { .. }))
        .count();
    assert_eq!(carried, 1, "the index is carried by the checkpoint");
    let desc = Arc::new(Descriptor {
        batch: BatchId(5 << 32),
        txns: vec![TxnId(7), TxnId(8), TxnId(7)],
        members: vec![P1.bit() | P2.bit(); 3],
    });
    let ops: Arc<[Op]> = vec![
        bank_op(TxnId(7), 0, -30, false),
        bank_op(TxnId(8), 0, -500, false),
        bank_op(TxnId(7), 0, -31, false),
    ]
    .into();
    for from_checkpoint in [false, true] {
        let snapshot = from_checkpoint.then_some(snapshot.as_slice());
        let log = log_of(&net, 0, from_checkpoint);
        let mut participant =
            Participant::recover_checkpointed(config(), P1, Bank::new(2, 100), snapshot, &log, 0)
                .expect("recovery");
        assert_eq!(participant.rm().balances()[0], 70);
        let mut out = Output::default();
        let prepare = Part::Prepare {
            desc: Arc::clone(&desc),
            ops: Arc::clone(&ops),
        };
        participant.handle_message(0, R0, prepare, &mut out);
        let votes = out.sends.iter().find_map(|sent| match &sent.part {
            Part::Votes { no, held, .. } => Some((no.clone(), held.clone())),
            _ => None,
        });
        let (no, held) = votes.expect("no votes leave at once");
        assert_eq!(
            no,
            [
                (0, Reason::HELD_BY_BATCH),
                (1, Reason::HELD_BY_BATCH),
                (2, Reason::EXISTS_WITH_DIFFERENT_LEGS)
            ],
            "from checkpoint: {from_checkpoint}"
        );
        assert_eq!(held, [(0, first, State::Commit), (1, first, State::Abort)]);
        assert_eq!(participant.rm().balances()[0], 70, "nothing was reserved");
        assert!(!participant.rm().holds(TxnId(7)));
        // The refusals replay alike: the log with the resend's record recovers too.
        let mut records = log;
        records.extend(out.appends.drain(..).map(|(_, record)| record));
        let again = Participant::recover_checkpointed(
            config(),
            P1,
            Bank::new(2, 100),
            snapshot,
            &records,
            0,
        )
        .expect("a log with refusals replays");
        assert_eq!(again.held(TxnId(7)).map(|h| h.batch), Some(first));
    }
}

// Proves, over seeds with every fault the simulator injects, that workloads resending
// ids (with the same and with other legs) keep every invariant, each id commits in at
// most one batch, and resends are answered with their holding batch's outcome.
#[test]
fn simulated_resends_keep_every_invariant() {
    let (mut resends, mut known) = (0, 0);
    for seed in 0..120u64 {
        let mut config = SimConfig::random(seed, Default::default());
        config.resend_per_mille = 300;
        let mut sim = Sim::new(config);
        if let Err(failure) = sim.run() {
            panic!("seed {seed}: {failure}");
        }
        resends += sim.stats.resends;
        known += sim.stats.held_known;
    }
    assert!(resends > 100, "only {resends} resends");
    assert!(
        known > 20,
        "only {known} resends answered with their holder's outcome"
    );
}

// ---------------------------------------------------------------------------------
// The in-process engine, reopened on its logs.

const BANK: TestBank = TestBank {
    ledgers: 2,
    accounts: 4,
    balance_initial: 100,
    amount_max: 10,
};

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

fn transfer(id: u64, amount: u64) -> Txn {
    Txn::transfer(TxnId(id), (0, 0), (1, 0), amount).expect("a transfer")
}

fn outcome(engine: &Engine, txn: Txn) -> TicketOutcome {
    engine_support::submit_retrying(engine, txn).wait()
}

fn balances(report: &tricommit_engine::runtime::Shutdown) -> Vec<Vec<i64>> {
    report
        .participants
        .iter()
        .map(|p| p.rm().ledger().expect("ledger").balances().collect())
        .collect()
}

// Proves that after a reopen (the gateway's in-memory window is empty) a resend of a
// committed id is answered committed and not applied again, a resend of an aborted id
// is answered aborted with HELD_BY_BATCH, and the id with other legs gets reason 16.
#[test]
fn the_engine_refuses_resends_after_a_reopen() {
    let dir = temp_dir();
    let engine = Engine::open(BANK.config(dir.path())).expect("open");
    assert_eq!(outcome(&engine, transfer(1, 30)), TicketOutcome::Committed);
    let declined = outcome(&engine, transfer(2, 500));
    let funds = AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS);
    assert_eq!(declined, TicketOutcome::Aborted(funds));
    let before = balances(&engine.shutdown().expect("shutdown"));
    assert_eq!((before[0][0], before[1][0]), (70, 130));

    let engine = Engine::open(BANK.config(dir.path())).expect("reopen");
    assert_eq!(outcome(&engine, transfer(1, 30)), TicketOutcome::Committed);
    let held = AbortReason::Rejected(Reason::HELD_BY_BATCH);
    assert_eq!(
        outcome(&engine, transfer(2, 500)),
        TicketOutcome::Aborted(held)
    );
    let different = AbortReason::Rejected(Reason::EXISTS_WITH_DIFFERENT_LEGS);
    assert_eq!(
        outcome(&engine, transfer(1, 31)),
        TicketOutcome::Aborted(different)
    );
    assert_eq!(outcome(&engine, transfer(3, 5)), TicketOutcome::Committed);
    let after = balances(&engine.shutdown().expect("shutdown"));
    assert_eq!(
        (after[0][0], after[1][0]),
        (65, 135),
        "a resend moved money"
    );
}

// Proves that a checkpointed engine, reopened, still refuses recent ids with their
// first outcome and applies none again: after enough load that every participant
// checkpointed (tiny segments), so that its id index came back from a checkpoint group
// and the log after it. The resent transfers are the last ones decided: one client
// sends them after the load's clients are done. (Taking each load client's last
// transfers instead failed about one run in ten: the clients finish apart, and one
// client's tail could be older than the index bound by the time the other finished.)
#[test]
fn the_engine_refuses_resends_after_checkpoints() {
    const TXNS_PER_THREAD: u64 = 20_000;
    /// The transfers resent: fewer than the index bound of these tiny segments
    /// (`EngineConfig::held_ids_decided_max`), and the last ones decided.
    const RESENT_TXNS: u64 = 200;
    let dir = temp_dir();
    let bank = TestBank {
        ledgers: 4,
        accounts: 64,
        balance_initial: 500,
        amount_max: 400,
    };
    let mut config = bank.config(dir.path());
    config.wal.segment_bytes = 128 << 10;
    config.wal.record_bytes_max = 32 << 10;
    config.batch_txns_max = 256;
    config.log_segments_max = Some(2);
    config.compact_postings = true;
    assert!(config.held_ids_decided_max() as u64 > 2 * RESENT_TXNS);
    let engine = Engine::open(config.clone()).expect("open");
    let load = Clients {
        threads: 2,
        txns_per_thread: TXNS_PER_THREAD,
        id_first: 1,
        seed: 11,
    };
    let loaded = engine_support::run_clients(&engine, &bank, load);
    assert_eq!(loaded.len() as u64, 2 * TXNS_PER_THREAD);
    let tail = Clients {
        threads: 1,
        txns_per_thread: RESENT_TXNS,
        id_first: 2 * TXNS_PER_THREAD + 1,
        seed: 12,
    };
    let recent = engine_support::run_clients(&engine, &bank, tail);
    let before = balances(&engine.shutdown().expect("shutdown"));
    let participant_files: Vec<String> = std::fs::read_dir(dir.path().join("participant-0"))
        .expect("participant directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        participant_files
            .iter()
            .any(|name| name.starts_with("snapshot-"))
            && !participant_files.contains(&"00000000000000000001.wal".to_owned()),
        "participant-0 never checkpointed: {participant_files:?}"
    );

    let engine = Engine::open(config).expect("reopen");
    assert_eq!(recent.len() as u64, RESENT_TXNS);
    assert!(
        recent.iter().any(|(_, first)| *first == Acked::Committed),
        "no resent transfer had committed: the test would prove nothing about commits"
    );
    for (transfer, first) in &recent {
        let again = outcome(&engine, transfer.txn());
        match first {
            Acked::Committed => assert_eq!(again, TicketOutcome::Committed, "{transfer:?}"),
            Acked::Aborted => assert!(
                matches!(again, TicketOutcome::Aborted(_)),
                "{transfer:?}: {again:?}"
            ),
        }
    }
    let after = balances(&engine.shutdown().expect("shutdown"));
    assert_eq!(before, after, "a resend moved money");
}
