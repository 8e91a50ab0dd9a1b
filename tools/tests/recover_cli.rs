//! After a crash: `tricommit ledger dump` refuses to present transactions in doubt as
//! balances, `tricommit recover` decides them, and every reader refuses a directory a
//! running engine holds (issue 13, items 1 and 2).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tricommit_engine::proto::TxnId;
use tricommit_engine::runtime::recover_ledgers;
use tricommit_engine::{Engine, EngineConfig, Txn};

const LEDGERS: usize = 2;
const ACCOUNTS: u64 = 64;
const BALANCE: i64 = 1_000_000;
/// Transfers in flight when the engine is crashed.
const CRASH_TXNS: u64 = 40_000;
/// Crash points tried until one leaves transactions in doubt.
const CRASH_ATTEMPTS_MAX: u64 = 8;
/// No command here may take longer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A refusal for a directory in use must come at once.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::ledgers(dir, LEDGERS, ACCOUNTS, BALANCE);
    config.wal.segment_bytes = 8 << 20;
    config
}

/// Runs `tricommit` with `args`; kills it (and fails) past `timeout`. The output is
/// collected on another thread, so a child that writes more than a pipe holds never
/// blocks on it.
fn tricommit(args: &[&str], timeout: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_tricommit"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tricommit");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.expect("collect output"),
        Err(_) => {
            // SAFETY: kill only reads its integer arguments; the child is not reaped
            // yet (its waiting thread still holds it), so the pid is still its own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("tricommit {args:?} ran past {timeout:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Transactions held in doubt by any ledger of `dir`.
fn in_doubt(dir: &Path) -> usize {
    recover_ledgers(dir, |_| None)
        .expect("recover read-only")
        .iter()
        .map(|ledger| ledger.in_doubt().len())
        .sum()
}

/// A data directory left by a crash with transactions in doubt: transfers crashed in
/// flight at growing delays until one crash leaves some.
fn crashed_dir() -> tempfile::TempDir {
    for attempt in 0..CRASH_ATTEMPTS_MAX {
        let dir = temp_dir();
        let engine = Engine::open(config(dir.path())).expect("engine opens");
        let mut tickets = Vec::new();
        for id in 1..=CRASH_TXNS {
            let from = (0, id % ACCOUNTS);
            let to = (1, (id * 7) % ACCOUNTS);
            let txn = Txn::transfer(TxnId(id), from, to, 1 + id % 100).expect("transfer");
            match engine.submit(txn) {
                Ok(ticket) => tickets.push(ticket),
                Err(_) => std::thread::yield_now(),
            }
        }
        std::thread::sleep(Duration::from_millis(20 * attempt));
        engine.crash();
        drop(tickets);
        if in_doubt(dir.path()) > 0 {
            return dir;
        }
    }
    panic!("no crash out of {CRASH_ATTEMPTS_MAX} left a transaction in doubt");
}

/// `txn -> postings` from `ledger dump --postings`.
fn postings_by_txn(dir: &str) -> HashMap<u64, Vec<i64>> {
    let output = tricommit(
        &["ledger", "dump", "--data-dir", dir, "--postings"],
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut by_txn: HashMap<u64, Vec<i64>> = HashMap::new();
    for line in text(&output.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let txn = fields[0].parse().expect("txn id");
        by_txn
            .entry(txn)
            .or_default()
            .push(fields[3].parse().expect("delta"));
    }
    by_txn
}

// Proves the whole walk-through of docs/ops.md "After a crash": ledger dump refuses a
// directory with transactions in doubt (exit 3, naming `tricommit recover`) or lists
// them with --include-in-doubt; recover decides every one of them and says how; then
// ledger dump prints balances whose total is exact and postings that put every
// transaction on both its ledgers or on none.
#[test]
fn recover_finishes_what_a_crash_left_in_doubt() {
    let dir = crashed_dir();
    let path = dir.path().to_str().expect("utf-8 path");
    let before = in_doubt(dir.path());

    let refused = tricommit(&["ledger", "dump", "--data-dir", path], COMMAND_TIMEOUT);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(refused.stdout.is_empty(), "no balances may be printed");
    assert!(
        text(&refused.stderr).contains("tricommit recover --data-dir"),
        "{}",
        text(&refused.stderr)
    );
    let listed = tricommit(
        &["ledger", "dump", "--data-dir", path, "--include-in-doubt"],
        COMMAND_TIMEOUT,
    );
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed_legs = text(&listed.stderr)
        .lines()
        .filter(|line| line.starts_with("in-doubt "))
        .count();
    assert_eq!(listed_legs, before);

    let recovered = tricommit(&["recover", "--data-dir", path], COMMAND_TIMEOUT);
    let stdout = text(&recovered.stdout);
    assert!(
        recovered.status.success(),
        "{stdout}{}",
        text(&recovered.stderr)
    );
    let decided = stdout
        .lines()
        .find_map(|line| line.strip_prefix("decided: "))
        .expect("a `decided:` line");
    let counts: Vec<usize> = decided
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .map(|word| word.parse().expect("count"))
        .collect();
    assert_eq!(counts.len(), 2, "{decided}");
    assert!(counts[0] + counts[1] > 0, "{decided}");
    assert!(stdout.contains("nothing is in doubt"), "{stdout}");
    assert_eq!(in_doubt(dir.path()), 0);

    let balances = tricommit(&["ledger", "dump", "--data-dir", path], COMMAND_TIMEOUT);
    assert!(balances.status.success(), "{}", text(&balances.stderr));
    let total: i64 = text(&balances.stdout)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .nth(2)
                .expect("balance")
                .parse::<i64>()
                .expect("number")
        })
        .sum();
    assert_eq!(total, LEDGERS as i64 * ACCOUNTS as i64 * BALANCE);
    for (txn, deltas) in postings_by_txn(path) {
        assert_eq!(deltas.len(), 2, "txn {txn} is on {} ledgers", deltas.len());
        assert_eq!(deltas.iter().sum::<i64>(), 0, "txn {txn}");
    }
}

// Proves a directory a running engine holds is refused at once, with a message saying
// it is in use and a non-zero exit, by every reader: wal verify, wal dump, ledger dump,
// recover; and that all of them work once the engine is gone.
#[test]
fn readers_refuse_a_directory_in_use() {
    let dir = temp_dir();
    let engine = Engine::open(config(dir.path())).expect("engine opens");
    let path = dir.path().to_str().expect("utf-8 path");
    let site = dir.path().join("participant-0");
    let site = site.to_str().expect("utf-8 path");
    let commands: [&[&str]; 4] = [
        &["wal", "verify", site],
        &["wal", "dump", site],
        &["ledger", "dump", "--data-dir", path],
        &["recover", "--data-dir", path],
    ];
    for args in commands {
        let output = tricommit(args, REFUSAL_TIMEOUT);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("in use"), "{args:?}: {stderr}");
    }
    engine.shutdown().expect("clean shutdown");
    for args in commands {
        let output = tricommit(args, COMMAND_TIMEOUT);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
}

// Proves the tools agree with Engine::open on a directory whose creation a crash
// interrupted: a participant log with no segment file yet (only a half-made temporary
// file) dumps as an empty log at genesis balances instead of failing as "not a WAL",
// and the engine opens the same directory.
#[test]
fn an_interrupted_creation_dumps_as_genesis() {
    let dir = temp_dir();
    Engine::open(config(dir.path()))
        .expect("engine opens")
        .crash();
    let site = dir.path().join("participant-1");
    for entry in std::fs::read_dir(&site).expect("read site") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "wal" || extension == "spare")
        {
            std::fs::remove_file(&path).expect("remove segment");
        }
    }
    std::fs::write(site.join("00000000000000000001.tmp"), [0u8; 4096]).expect("temporary file");
    let path = dir.path().to_str().expect("utf-8 path");
    let output = tricommit(&["ledger", "dump", "--data-dir", path], COMMAND_TIMEOUT);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<String> = text(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), LEDGERS * ACCOUNTS as usize);
    assert!(lines
        .iter()
        .all(|line| line.ends_with(&format!(" {BALANCE}"))));
    Engine::open(config(dir.path()))
        .expect("the engine opens it too")
        .shutdown()
        .expect("clean shutdown");
}
