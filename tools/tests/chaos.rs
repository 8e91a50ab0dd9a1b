//! The chaos runner, end to end: a short version of every scenario on a fresh cluster of
//! real processes (loopback only), each checked exactly by the runner's bank check.
//!
//! Every run is a `tricommit chaos` child process, waited for within `RUN_WAIT` and
//! killed on every path out of the test (Drop); the runner itself kills its nodes when
//! it dies (PR_SET_PDEATHSIG). Node ports come from 25000..27000, one block of ten
//! per test; the proxy binds ephemeral ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const TRICOMMIT: &str = env!("CARGO_BIN_EXE_tricommit");
/// How long one short scenario may take, setup and check included.
const RUN_WAIT: Duration = Duration::from_secs(240);
/// Seconds of load of a short scenario.
const SECONDS: &str = "3";
/// Port blocks handed out so far (each test takes the next free block of ten).
static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);
const PORT_FIRST: u16 = 25_000;
const BLOCKS: u16 = 200;

/// A child killed on every path.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_block() -> u16 {
    for _ in 0..BLOCKS {
        let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) % BLOCKS;
        let base = PORT_FIRST + block * 10;
        if (0..7).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of ports in 25000..27000");
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

/// Runs `tricommit chaos` with `args`; returns its exit code, stdout and stderr.
fn chaos(args: &[&str]) -> (Option<i32>, String, String) {
    let out_dir = scratch();
    let (stdout, stderr) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let child = Command::new(TRICOMMIT)
        .arg("chaos")
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("tricommit runs");
    let mut guard = Guard(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > RUN_WAIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let (out, err) = (read(&stdout), read(&stderr));
    assert!(
        status.is_some(),
        "chaos {args:?} ran past {RUN_WAIT:?}\n{out}\n{err}"
    );
    (status.and_then(|status| status.code()), out, err)
}

/// Runs scenario `name` on a fresh cluster; asserts it passed and returns its JSON.
fn scenario(name: &str) -> serde_json::Value {
    let dir = scratch();
    let cluster: PathBuf = dir.path().join("cluster");
    let json = dir.path().join("figures.json");
    let base = free_block().to_string();
    let (code, out, err) = chaos(&[
        "--cluster",
        cluster.to_str().expect("utf-8 path"),
        "--scenario",
        name,
        "--seconds",
        SECONDS,
        "--json",
        json.to_str().expect("utf-8 path"),
        "--base-port",
        &base,
    ]);
    assert_eq!(code, Some(0), "chaos {name} failed\n{out}\n{err}");
    assert!(out.contains(&format!("chaos {name}: ok")), "{out}");
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON exists"))
            .expect("the JSON parses");
    assert_eq!(figures["violations"], 0, "{figures}");
    assert!(figures["committed"].as_u64().unwrap() > 0, "{figures}");
    assert!(
        figures["transactions_checked"].as_u64().unwrap() >= figures["committed"].as_u64().unwrap(),
        "{figures}"
    );
    // The runner gave cluster.toml back as it found it: no proxy addresses left.
    let toml = std::fs::read_to_string(cluster.join("cluster.toml")).unwrap();
    assert!(!toml.contains("[listen]"), "{toml}");
    figures
}

#[test]
fn list_names_every_scenario_and_bad_input_exits_2() {
    // Proves that --list shows the scenarios and that misuse is exit 2, not a panic.
    let (code, out, _) = chaos(&["--list"]);
    assert_eq!(code, Some(0));
    for name in [
        "participant-kill",
        "split-brain",
        "regions",
        "two-pc-coordinator-kill",
        "byzantine-participant",
    ] {
        assert!(out.contains(name), "{out}");
    }
    let dir = scratch();
    let cluster = dir.path().join("c");
    let (code, _, err) = chaos(&[
        "--cluster",
        cluster.to_str().unwrap(),
        "--scenario",
        "meteor-strike",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--list"), "{err}");
    let (code, _, _) = chaos(&["--scenario", "regions"]);
    assert_eq!(code, Some(2));
}

#[test]
fn participant_kill() {
    // Proves that a participant killed with -9 and restarted loses nothing acknowledged.
    let figures = scenario("participant-kill");
    assert!(figures["recovery_ms"].as_f64().is_some(), "{figures}");
}

#[test]
fn replica_kill() {
    // Proves that killing a backup replica under load breaks no transaction.
    scenario("replica-kill");
}

#[test]
fn replica_kill_preferred() {
    // Proves that ten kills of the clients' replica each lead back to commits, exactly.
    let figures = scenario("replica-kill-preferred");
    assert_eq!(figures["figures"]["kills"], 10, "{figures}");
    assert!(figures["figures"]["kill_to_first_commit_ms_max"]
        .as_f64()
        .is_some());
}

#[test]
fn sigstop_preferred() {
    // Proves that a 2 s gray failure of the clients' replica heals without a violation.
    scenario("sigstop-preferred");
}

#[test]
fn partition_minority() {
    // Proves that a minority partition neither blocks the majority nor breaks atomicity.
    let figures = scenario("partition-minority");
    assert!(
        figures["figures"]["commits_during_fault"].as_u64().unwrap() > 0,
        "{figures}"
    );
}

#[test]
fn partition_majority() {
    // Proves that cutting the clients' side off from the majority breaks no transaction.
    scenario("partition-majority");
}

#[test]
fn participant_isolated() {
    // Proves that an isolated participant only delays its own transactions.
    let figures = scenario("participant-isolated");
    assert!(
        figures["figures"]["commits_during_fault"].as_u64().unwrap() > 0,
        "{figures}"
    );
}

#[test]
fn asymmetric_cut() {
    // Proves that a one-way cut (replica-0 -> participant-1) heals without a violation.
    scenario("asymmetric-cut");
}

#[test]
fn split_brain() {
    // Proves fencing: the old coordinator, cut off and frozen with its rounds open while
    // the others recover its batches (elections, E3PC), wakes up after the heal with
    // stale rounds that the other sites refuse (REJECT), and cannot undo their
    // decisions: the check holds.
    let figures = scenario("split-brain");
    assert!(
        figures["figures"]["elect_parts"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert!(
        figures["figures"]["rejects_to_replica_0"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert!(
        figures["figures"]["rejects"].as_u64().unwrap()
            >= figures["figures"]["rejects_to_replica_0"].as_u64().unwrap(),
        "{figures}"
    );
}

#[test]
fn regions() {
    // Proves that the regions topology runs with pipelining on and off, exactly.
    let figures = scenario("regions");
    for phase in ["pipelining-on", "pipelining-off"] {
        let rate = &figures["figures"][format!("{phase}_committed_per_s")];
        assert!(rate.as_f64().unwrap() > 0.0, "{figures}");
    }
}

#[test]
fn region_cut() {
    // Proves that the two regions left decide what they hold when the third goes dark.
    let figures = scenario("region-cut");
    assert!(
        figures["figures"]["commits_during_fault"].as_u64().unwrap() > 0,
        "{figures}"
    );
}

#[test]
fn frame_drop() {
    // Proves that dropped frames (link resets on sequence gaps) break no transaction.
    scenario("frame-drop");
}

#[test]
fn two_pc_coordinator_kill() {
    // Proves 2PC's block: with its coordinator down, participants hold prepared legs in
    // doubt; once it returns, every one is decided and the bank checks out.
    let figures = scenario("two-pc-coordinator-kill");
    let held = figures["figures"]["in_doubt_legs_while_coordinator_down"]
        .as_u64()
        .unwrap();
    assert!(held > 0, "{figures}");
}

#[test]
fn coordinator_crashes_in_each_phase() {
    // Proves that the clients' replica aborting after PREPARE, after its PRE-COMMIT is
    // logged, and after COMMIT breaks no transaction.
    for point in [
        "after-prepare-sent",
        "after-precommit-logged",
        "after-decision",
    ] {
        scenario(&format!("coordinator-crash-{point}"));
    }
}

#[test]
fn participant_crashes_in_each_phase() {
    // Proves the same for a participant aborting after its votes, its PRE-COMMIT
    // acknowledgement and a COMMIT.
    for point in [
        "after-prepare-sent",
        "after-precommit-logged",
        "after-decision",
    ] {
        scenario(&format!("participant-crash-{point}"));
    }
}

#[test]
fn byzantine_participant() {
    // Proves that a participant signing contradicting votes is caught: the replicas keep
    // evidence that `tricommit evidence verify` accepts, one file each at least, and the
    // bank stays exact although the liar's transactions abort once its votes are refused.
    let figures = scenario("byzantine-participant");
    let files = figures["figures"]["evidence_files"].as_u64().unwrap();
    assert!(files > 0, "{figures}");
    assert_eq!(figures["figures"]["evidence_verified"], files, "{figures}");
    assert_eq!(figures["figures"]["evidence_cleared"], files, "{figures}");
    assert!(
        figures["figures"]["equivocations"].as_u64().unwrap() > 0,
        "{figures}"
    );
}
