//! Crash test with real processes: a child process runs the engine under load and
//! reports every acknowledged outcome on a pipe; the test kills it with SIGKILL at a
//! seeded random moment, recovers the data directory, and checks that nothing
//! acknowledged was lost or reversed (DESIGN §2, invariants 6 and 8). Twenty kills hit
//! the same directory, so recovery also runs over the leftovers of earlier crashes. The
//! logs use tiny segments, so every site checkpoints every few hundred transfers and
//! kills land around checkpoints too.

mod engine_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine_support::{check_bank, short_timeouts, Acked, Bank, SplitMix, Transfer};
use tricommit_engine::runtime::Shutdown;
use tricommit_engine::{Engine, EngineConfig, Protocol};

const CHILD: &str = env!("CARGO_BIN_EXE_tricommit-crash-child");
const BANK: Bank = Bank {
    ledgers: 4,
    accounts: 64,
    balance_initial: 500,
    amount_max: 400,
};
const SEED: u64 = 0x7C0_FFEE;
/// Kills, all on one data directory (`TRICOMMIT_CRASH_RUNS` overrides it).
const REPETITIONS: u64 = 20;
/// Kills of the two-phase baseline's directory (it shares the recovery code; fewer).
/// Enough that its logs always outgrow `LOG_SEGMENTS_MAX` segments: with eight, how
/// much work the seed's kills let in depended on timing, and about one run in eight
/// ended with no ledger checkpointed (the check at the end).
const REPETITIONS_TWO_PHASE: u64 = 12;
/// A kill under load comes after this many reports at most.
const KILL_AFTER_REPORTS_MAX: u64 = 400;
/// One run in this many (after the first) is killed early instead...
const EARLY_KILL_ONE_IN: u64 = 4;
/// ...within this many milliseconds of its start.
const KILL_EARLY_DELAY_MS_MAX: u64 = 150;
/// One run in this many draws its batching and pipelining switches at random.
const TOGGLES_OTHER_ONE_IN: u64 = 4;
/// Each run's ids start at `run << RUN_ID_SHIFT`, past every id of earlier runs.
const RUN_ID_SHIFT: u32 = 44;
/// Recovery gets this long per reopen to finish the batches a kill left open...
const SETTLE_ROUND: Duration = Duration::from_millis(250);
/// ...and this many reopens in all before the test declares it blocked.
const SETTLE_ROUNDS_MAX: usize = 40;
/// A shutdown still running after this long is hung (a clean one takes milliseconds).
const SHUTDOWN_HANG: Duration = Duration::from_secs(120);

/// A numeric setting from the environment, for reproducing or extending a run.
fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// The child's log settings (see tricommit-crash-child.rs): tiny segments, so that
/// every site checkpoints often and kills land before, during and after checkpoints.
const SEGMENT_BYTES: u64 = 32 << 10;
const RECORD_BYTES_MAX: u32 = 16 << 10;
const BATCH_TXNS_MAX: usize = 256;
const LOG_SEGMENTS_MAX: u32 = 2;

fn config(dir: &Path, protocol: Protocol) -> EngineConfig {
    let mut config = BANK.config(dir);
    config.timeouts = short_timeouts();
    config.wal = tricommit_wal::WalConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        ..tricommit_wal::WalConfig::default()
    };
    config.batch_txns_max = BATCH_TXNS_MAX;
    config.log_segments_max = Some(LOG_SEGMENTS_MAX);
    config.compact_postings = true;
    config.protocol = protocol;
    config
}

/// Whether some ledger's log was checkpointed (it holds a snapshot): the kills then
/// also hit logs that start at a checkpoint.
fn checkpointed_ledgers(dir: &Path) -> usize {
    (0..BANK.ledgers)
        .filter(|index| {
            std::fs::read_dir(dir.join(format!("participant-{index}")))
                .map(|entries| {
                    entries.filter_map(Result::ok).any(|entry| {
                        entry
                            .file_name()
                            .to_str()
                            .is_some_and(|name| name.starts_with("snapshot-"))
                    })
                })
                .unwrap_or(false)
        })
        .count()
}

fn spawn_child(dir: &Path, seed: u64, run: u64, toggles: Toggles) -> Child {
    let id_first = (run << RUN_ID_SHIFT) + 1;
    let bank = [
        BANK.ledgers.to_string(),
        BANK.accounts.to_string(),
        BANK.balance_initial.to_string(),
        BANK.amount_max.to_string(),
    ];
    Command::new(CHILD)
        .arg(dir)
        .arg((seed ^ run).to_string())
        .arg(id_first.to_string())
        .args(bank)
        .arg(u8::from(toggles.batching).to_string())
        .arg(u8::from(toggles.pipelining).to_string())
        .arg(u8::from(toggles.overlap).to_string())
        .arg(match toggles.protocol {
            Protocol::ThreePhase => "3pc",
            Protocol::TwoPhase => "2pc",
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child")
}

/// Parses one complete report line of the child.
fn parse_report(line: &str) -> Option<(Transfer, Acked)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [id, from_ledger, from_account, to_ledger, to_account, amount, outcome] = words.as_slice()
    else {
        panic!("malformed report line {line:?}");
    };
    let number = |text: &str| -> u64 { text.parse().expect("a number in a report line") };
    let transfer = Transfer {
        id: number(id),
        from: (number(from_ledger) as u8, number(from_account)),
        to: (number(to_ledger) as u8, number(to_account)),
        amount: number(amount),
    };
    let acked = match *outcome {
        "committed" => Acked::Committed,
        "aborted" => Acked::Aborted,
        // Not an acknowledgement: the outcome is for recovery to settle.
        "in-doubt" => return None,
        other => panic!("unknown outcome {other:?}"),
    };
    Some((transfer, acked))
}

/// Runs one child as `plan` says, kills it, and returns every report it completed
/// before it died.
fn run_and_kill(dir: &Path, seed: u64, run: u64, plan: Plan) -> Vec<(Transfer, Acked)> {
    let mut child = spawn_child(dir, seed, run, plan.toggles);
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let kill_after = match plan.kill {
        Kill::Early(delay) => {
            std::thread::sleep(delay);
            child.kill().expect("SIGKILL the child");
            None
        }
        Kill::AfterReports(count) => Some(count),
    };
    let mut reports = Vec::new();
    let mut killed = kill_after.is_none();
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .expect("read the child's reports");
        // A line cut short by the kill was never completely reported: ignore it.
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        reports.extend(parse_report(&line));
        if !killed && kill_after.is_some_and(|count| reports.len() as u64 >= count) {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    let status = child.wait().expect("reap the child");
    assert!(
        killed,
        "run {run}: the child ended by itself ({status}) after {} reports",
        reports.len()
    );
    reports
}

/// Shuts the engine down on another thread, and fails the test if that never returns:
/// a hang is a bug to report, not a reason to block the whole suite.
fn shutdown_watched(engine: Engine) -> Shutdown {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(engine.shutdown());
    });
    match result.recv_timeout(SHUTDOWN_HANG) {
        Ok(shutdown) => shutdown.expect("clean shutdown after recovery"),
        Err(_) => panic!("Engine::shutdown after recovery did not return in {SHUTDOWN_HANG:?}"),
    }
}

/// Reopens the directory until recovery has decided every transaction a kill left open
/// (no ledger holds a reservation), shutting down cleanly after each round. Returns the
/// rounds it took.
fn settle(dir: &Path, protocol: Protocol) -> usize {
    for round in 1..=SETTLE_ROUNDS_MAX {
        let engine = Engine::open(config(dir, protocol)).expect("reopen after the kill");
        std::thread::sleep(SETTLE_ROUND);
        let shutdown = shutdown_watched(engine);
        let held: u64 = shutdown
            .participants
            .iter()
            .map(|participant| {
                participant
                    .rm()
                    .ledger()
                    .expect("a ledger")
                    .reservations_len()
            })
            .sum();
        if held == 0 {
            return round;
        }
    }
    panic!("recovery left transactions undecided after {SETTLE_ROUNDS_MAX} reopens");
}

/// The child's comparison toggles, and the directory's protocol.
#[derive(Clone, Copy, Debug)]
struct Toggles {
    batching: bool,
    pipelining: bool,
    overlap: bool,
    protocol: Protocol,
}

/// How one run ends.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// After this many reports (at least 1): the engine is under load.
    AfterReports(u64),
    /// This long after the start, while the child opens and recovers what the previous
    /// kill left open.
    Early(Duration),
}

/// The seeded plan of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    kill: Kill,
    toggles: Toggles,
    /// Settle and check the directory afterwards, or let the next child recover it
    /// under load.
    check: bool,
}

/// The seeded plan of run `run`.
fn plan(rng: &mut SplitMix, run: u64, repetitions: u64, protocol: Protocol) -> Plan {
    // The first run creates the directory and is killed under load: an early kill of a
    // directory being created is the subject of its own test in engine_reopen.rs.
    let early = run > 0 && rng.below(EARLY_KILL_ONE_IN) == 0;
    let kill = if early {
        Kill::Early(Duration::from_millis(
            rng.below(KILL_EARLY_DELAY_MS_MAX + 1),
        ))
    } else {
        Kill::AfterReports(1 + rng.below(KILL_AFTER_REPORTS_MAX))
    };
    let check = run + 1 == repetitions || rng.below(3) != 0;
    // Mostly the fast path; sometimes one transaction per batch or one batch in flight,
    // which moves the kill to other points of the protocol.
    let toggles = match rng.below(TOGGLES_OTHER_ONE_IN) {
        0 => Toggles {
            batching: rng.below(2) == 0,
            pipelining: rng.below(2) == 0,
            overlap: rng.below(2) == 0,
            protocol,
        },
        _ => Toggles {
            batching: true,
            pipelining: true,
            overlap: true,
            protocol,
        },
    };
    Plan {
        kill,
        toggles,
        check,
    }
}

#[test]
fn twenty_sigkills_lose_no_acknowledged_outcome() {
    // Proves durability and atomicity across real crashes, including crashes during
    // the recovery of an earlier crash: after recovery, the bank total is unchanged,
    // nothing is left undecided, every commit a child reported is posted on both
    // ledgers and every reported abort on neither.
    sigkills(Protocol::ThreePhase, REPETITIONS);
}

#[test]
fn two_phase_sigkills_lose_no_acknowledged_outcome() {
    // Proves the same of the two-phase baseline: its commits are acknowledged only once
    // the coordinator's record is durable, and a reopened coordinator aborts the rest.
    sigkills(Protocol::TwoPhase, REPETITIONS_TWO_PHASE);
}

fn sigkills(protocol: Protocol, repetitions_default: u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let seed = env_or("TRICOMMIT_CRASH_SEED", SEED);
    let repetitions = env_or("TRICOMMIT_CRASH_RUNS", repetitions_default);
    eprintln!("seed {seed}, {repetitions} runs (TRICOMMIT_CRASH_SEED, TRICOMMIT_CRASH_RUNS)");
    let mut rng = SplitMix(seed);
    let mut history: Vec<(Transfer, Acked)> = Vec::new();
    let (mut killed_under_load, mut checks, mut legs_verified) = (0, 0, 0);
    for run in 0..repetitions {
        let plan = plan(&mut rng, run, repetitions, protocol);
        let reports = run_and_kill(dir.path(), seed, run, plan);
        killed_under_load += usize::from(!reports.is_empty());
        history.extend(reports);
        if !plan.check {
            eprintln!("run {run}: {plan:?}: left for the next run to recover");
            continue;
        }
        let rounds = settle(dir.path(), protocol);
        let verdict = check_bank(dir.path(), &BANK, &history);
        checks += 1;
        legs_verified += verdict.legs_verified;
        eprintln!("run {run}: {plan:?}: settled in {rounds} reopen(s), {verdict:?}");
    }
    assert!(
        killed_under_load >= repetitions as usize / 2,
        "most kills must hit a loaded engine"
    );
    assert!(checks >= 2, "the seed must check more than once");
    // With compact_postings a checkpoint may drop postings; if every acknowledged leg
    // had been compacted away, the checker would have compared nothing.
    assert!(
        legs_verified > 0,
        "no acknowledged leg was verified against its posting"
    );
    let committed = history
        .iter()
        .filter(|(_, acked)| *acked == Acked::Committed)
        .count();
    assert!(committed > 0, "no commit was ever acknowledged");
    let checkpointed = checkpointed_ledgers(dir.path());
    eprintln!("{checkpointed} of {} ledgers checkpointed", BANK.ledgers);
    assert!(
        checkpointed > 0,
        "no ledger ever checkpointed: the kills never met a checkpointed log"
    );
}
