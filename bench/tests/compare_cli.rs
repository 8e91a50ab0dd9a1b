//! The `compare` binary end to end: a short run writes the JSON contract, and bad flags
//! exit with code 2 and one line of error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn compare(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the compare binary runs")
}

/// A scratch directory on the target dir's disk (never a tmpfs, so syncs are real).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("compare-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("the target tmp dir is writable")
}

fn number(config: &Value, field: &str) -> f64 {
    config[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is a number in {config}"))
}

// Proves a one-second run of the baseline and the three protocol rows of interest
// writes every contract field, with real throughput for every row, and leaves no data
// behind.
#[test]
fn short_run_writes_the_json_contract() {
    let dir = scratch();
    let json_path: PathBuf = dir.path().join("compare.json");
    let output = compare(
        &[
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--configs",
            "unbatched,pipelined,overlap,2pc",
            "--json",
            json_path.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "compare failed: {stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).expect("JSON written"))
        .expect("valid JSON");
    assert_eq!(report["rounds"], Value::from(1));
    assert!(
        report["started_unix_s"].as_u64().is_some_and(|at| at > 0),
        "{report}"
    );
    let configs = report["configs"].as_array().expect("configs is an array");
    let names: Vec<&str> = configs.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["unbatched", "pipelined", "overlap", "2pc"]);
    for config in configs {
        assert_eq!(config["available"], Value::Bool(true), "{config}");
        assert!(number(config, "committed_per_s") > 0.0, "{config}");
        assert!(
            number(config, "p50_us") <= number(config, "p99_us"),
            "{config}"
        );
        assert!(number(config, "ratio_to_unbatched") > 0.0, "{config}");
        assert_eq!(
            config["rounds"].as_array().map(Vec::len),
            Some(1),
            "{config}"
        );
    }
    assert_eq!(number(&configs[0], "ratio_to_unbatched"), 1.0);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("scratch dir readable")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name() != "compare.json")
        .collect();
    assert!(left.is_empty(), "data directories left behind: {left:?}");
}

// Proves every kind of bad flag ends with exit code 2 and a single line on stderr,
// before any engine starts.
#[test]
fn bad_flags_exit_2_with_one_line() {
    let dir = scratch();
    let cases: [&[&str]; 6] = [
        &["--no-such-flag"],
        &["--rounds", "0"],
        &["--seconds", "-1"],
        &["--configs", "unbatched,warp-drive"],
        &["--json", "/nonexistent-dir/compare.json"],
        &["--dir", "/nonexistent-dir"],
    ];
    for args in cases {
        let output = compare(args, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("compare: "), "{args:?}: {stderr}");
    }
}
