//! What the cluster tests share: free ports, a cluster directory, child processes that
//! are killed on every path, bounded waits, and the outside checks of the ledgers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const LOAD: &str = env!("CARGO_BIN_EXE_tricommit-load");
pub const TRICOMMIT: &str = env!("CARGO_BIN_EXE_tricommit");

/// How long a cluster may take to become ready.
pub const READY_WAIT: Duration = Duration::from_secs(60);
/// How long a stopping process may take before the test fails it.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// Port ranges probed for a free block, at most.
const PORT_PROBES_MAX: u32 = 200;

pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

pub fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A first port of `count` consecutive ports on 127.0.0.1 that were all free just now.
pub fn free_ports(count: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |time| time.as_nanos() as u64);
    for probe in 0..PORT_PROBES_MAX {
        // Below the usual ephemeral range (32768..), where outgoing connections pick
        // their source ports and could take a probed port before a node binds it.
        let base =
            10_000 + ((seed.wrapping_mul(2654435761) + u64::from(probe) * 97) % 22_000) as u16;
        let all_free =
            (0..count).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no block of {count} free ports found");
}

/// `cluster init DIR` with small ledgers and segments, on free ports.
pub fn init_cluster(dir: &Path, accounts: u64, initial_balance: i64) {
    let base = free_ports(7);
    let output = run(
        TRICOMMIT,
        &[
            "cluster",
            "init",
            dir.to_str().unwrap(),
            "--accounts",
            &accounts.to_string(),
            "--initial-balance",
            &initial_balance.to_string(),
            "--base-port",
            &base.to_string(),
        ],
    );
    assert!(output.status.success(), "init: {}", text(&output.stderr));
    // Small segments: seven sites preallocate their logs on a shared disk.
    let path = dir.join("cluster.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace("segment_mib = 64", "segment_mib = 8")).unwrap();
}

/// A child process with its stdout lines on a channel; killed (SIGKILL) and reaped on
/// drop unless it was stopped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(name: &str, binary: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines,
        }
    }

    /// Waits (bounded) for a stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return,
                Ok(_) => {}
                Err(_) => panic!("{}: no `{prefix}` line within {wait:?}", self.name),
            }
        }
    }

    fn signal(&self, number: i32) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args([format!("-{number}"), child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM without waiting (stop several processes at once, then `wait` each).
    pub fn terminate(&self) {
        self.signal(15);
    }

    /// SIGTERM, then a bounded wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(15);
        self.wait(STOP_WAIT)
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, wait: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + wait;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {wait:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tricommit node` for one site.
pub fn node(dir: &Path, site: &str) -> Proc {
    Proc::spawn(
        site,
        TRICOMMIT,
        &["node", "--cluster", dir.to_str().unwrap(), "--site", site],
    )
}

/// The sites of the default cluster.
pub fn sites() -> Vec<String> {
    (0..3)
        .map(|index| format!("replica-{index}"))
        .chain((0..4).map(|index| format!("participant-{index}")))
        .collect()
}

/// One line of a `--history` file.
pub struct HistoryLine {
    pub id: u64,
    pub from: (u64, u64),
    pub to: (u64, u64),
    pub amount: i64,
    pub outcome: String,
}

pub fn read_history(path: &Path) -> Vec<HistoryLine> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 7, "history line `{line}`");
            let number = |index: usize| fields[index].parse::<u64>().unwrap();
            HistoryLine {
                id: number(0),
                from: (number(1), number(2)),
                to: (number(3), number(4)),
                amount: fields[5].parse().unwrap(),
                outcome: fields[6].to_owned(),
            }
        })
        .collect()
}

/// `ledger dump --cluster` as (ledger, account) → balance.
pub fn dump_balances(dir: &Path) -> HashMap<(u64, u64), i64> {
    let output = run(
        TRICOMMIT,
        &["ledger", "dump", "--cluster", dir.to_str().unwrap()],
    );
    assert!(output.status.success(), "dump: {}", text(&output.stderr));
    text(&output.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "dump line `{line}`");
            (
                (fields[0].parse().unwrap(), fields[1].parse().unwrap()),
                fields[2].parse().unwrap(),
            )
        })
        .collect()
}

/// `ledger dump --cluster --postings` as txn id → the ledgers it is posted on.
pub fn dump_postings(dir: &Path) -> HashMap<u64, Vec<u64>> {
    let output = run(
        TRICOMMIT,
        &[
            "ledger",
            "dump",
            "--cluster",
            dir.to_str().unwrap(),
            "--postings",
        ],
    );
    assert!(output.status.success(), "dump: {}", text(&output.stderr));
    let mut postings: HashMap<u64, Vec<u64>> = HashMap::new();
    for line in text(&output.stdout).lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "posting line `{line}`");
        postings
            .entry(fields[0].parse().unwrap())
            .or_default()
            .push(fields[1].parse().unwrap());
    }
    postings
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
