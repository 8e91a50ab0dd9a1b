//! End-to-end tests of `tricommit-switch` as a process: bad flags, clean shutdown on
//! SIGTERM, idempotency across a restart (the engine forgets ids; the switch rebuilds
//! them from the ledgers' postings), and conservation under `tricommit-load --iso8583`.

#[path = "../src/switch/codec.rs"]
#[allow(dead_code)]
mod codec;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use codec::Message;

const SWITCH: &str = env!("CARGO_BIN_EXE_tricommit-switch");
const LOAD: &str = env!("CARGO_BIN_EXE_tricommit-load");
const TRICOMMIT: &str = env!("CARGO_BIN_EXE_tricommit");
/// Bounds on every wait, so that a broken switch fails the test instead of hanging it.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_POLLS_MAX: u32 = 600;

/// A running switch; dropping it kills and reaps the process.
struct Running {
    child: Child,
    address: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(data_dir: &Path) -> Running {
        Running::start_with(
            data_dir,
            &["--accounts", "100", "--initial-balance", "10000"],
        )
    }

    fn start_with(data_dir: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(SWITCH)
            .args(["--listen", "127.0.0.1:0", "--fee-bps", "200"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the switch starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let mut running = Running {
            child,
            address: String::new(),
        };
        let line = receiver
            .recv_timeout(STARTUP_TIMEOUT)
            .expect("a `listening on` line in time");
        running.address = line
            .strip_prefix("listening on ")
            .expect("the first line is `listening on ADDR`")
            .trim()
            .to_owned();
        running
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit code.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM delivered");
        for _ in 0..STOP_POLLS_MAX {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

fn exchange(stream: &mut TcpStream, request: &Message) -> Message {
    let mut frame = vec![0, 0];
    codec::encode(request, &mut frame).expect("encodes");
    let len = (frame.len() - 2) as u16;
    frame[..2].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&frame).expect("write");
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).expect("a response prefix");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).expect("a response body");
    codec::decode(&body).expect("the response decodes")
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connects");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream
}

fn purchase(stan: &str, amount: u64) -> Message {
    let mut message = Message::new(*b"0200");
    for (field, value) in [
        (2, "4111111111111111".to_owned()),
        (3, "000000".to_owned()),
        (4, format!("{amount:012}")),
        (7, "1204161500".to_owned()),
        (11, stan.to_owned()),
        (41, "TERM0001".to_owned()),
        (42, "000000000000042".to_owned()),
        (49, "840".to_owned()),
    ] {
        message.set(field, value);
    }
    message
}

fn reversal(stan: &str, original_stan: &str) -> Message {
    let mut message = Message::new(*b"0420");
    message.set(7, "1204161600");
    message.set(11, stan);
    message.set(41, "TERM0001");
    message.set(
        90,
        format!("0200{original_stan}1204161500{}", "0".repeat(22)),
    );
    message
}

fn postings(data_dir: &Path) -> Vec<String> {
    let output = Command::new(TRICOMMIT)
        .args(["ledger", "dump", "--postings", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("dump runs");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn retransmission_and_reversal_across_a_restart() {
    // Proves that a 0200 approved before a restart is answered 00 again after it
    // without a second posting, and that a reversal after the restart compensates it
    // exactly once: the ledgers end with one payment's and one reversal's postings.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch");
    let data = scratch.path().join("data");
    let switch = Running::start(&data);
    let mut stream = connect(&switch.address);
    let first = exchange(&mut stream, &purchase("000001", 1_000));
    assert_eq!(first.get(39), Some(&b"00"[..]));
    drop(stream);
    assert_eq!(switch.stop(), Some(0), "a clean exit on SIGTERM");
    assert_eq!(postings(&data).len(), 3, "issuer, acquirer and fee legs");

    let switch = Running::start(&data);
    let mut stream = connect(&switch.address);
    let again = exchange(&mut stream, &purchase("000001", 1_000));
    assert_eq!(again.get(39), Some(&b"00"[..]));
    assert_eq!(again.get(38), first.get(38), "the same approval code");
    for stan in ["000002", "000003"] {
        let answer = exchange(&mut stream, &reversal(stan, "000001"));
        assert_eq!(answer.get(39), Some(&b"00"[..]));
    }
    drop(stream);
    assert_eq!(switch.stop(), Some(0));
    let lines = postings(&data);
    assert_eq!(lines.len(), 6, "one payment and one reversal: {lines:?}");
    let issuer: i64 = lines
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            (words[1] == "0").then(|| words[3].parse::<i64>().expect("delta"))
        })
        .sum();
    assert_eq!(
        issuer, 0,
        "the reversal gave the cardholder back the amount"
    );
}

#[test]
fn bad_flags_exit_2() {
    // Proves that flags out of range are refused with exit code 2 and a sentence, not
    // a panic, before anything listens.
    for args in [
        &["--listen", "127.0.0.1:0", "--fee-bps", "10001"][..],
        &["--listen", "127.0.0.1:0", "--accounts", "0"],
        &["--listen", "127.0.0.1:0", "--initial-balance", "-1"],
        &["--listen", "not an address"],
    ] {
        let output = Command::new(SWITCH).args(args).output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn load_over_many_connections_conserves_money() {
    // Proves that under pipelined load on eight connections every approval the load
    // generator counted is one payment on the ledgers (and nothing else posted), and
    // that no minor unit is created or lost: the total equals the issuer's opening total.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch");
    let data = scratch.path().join("data");
    let json = scratch.path().join("load.json");
    let (accounts, initial) = (1_000i64, 1_000_000_000i64);
    let switch = Running::start_with(
        &data,
        &["--accounts", "1000", "--initial-balance", "1000000000"],
    );
    let output = Command::new(LOAD)
        .args([
            "--iso8583",
            &switch.address,
            "--clients",
            "8",
            "--window",
            "16",
        ])
        .args(["--duration", "1", "--json"])
        .arg(&json)
        .output()
        .expect("the load runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(switch.stop(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let approved = summary["approved"].as_u64().expect("approved");
    assert!(approved > 0, "{summary}");
    // On a loaded machine a participant may time out a vote: 91, nothing posted.
    let codes = summary["codes"].as_object().expect("codes");
    assert!(
        codes.keys().all(|code| code == "00" || code == "91"),
        "only approvals and timeouts: {summary}"
    );
    let lines = postings(&data);
    let issuer_postings = lines
        .iter()
        .filter(|line| line.split(' ').nth(1) == Some("0"));
    assert_eq!(issuer_postings.count() as u64, approved, "{summary}");
    let dump = Command::new(TRICOMMIT)
        .args(["ledger", "dump", "--data-dir"])
        .arg(&data)
        .output()
        .expect("dump runs");
    let total: i128 = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|line| {
            i128::from(
                line.split(' ')
                    .nth(2)
                    .expect("balance")
                    .parse::<i64>()
                    .expect("number"),
            )
        })
        .sum();
    assert_eq!(total, i128::from(accounts) * i128::from(initial));
}
