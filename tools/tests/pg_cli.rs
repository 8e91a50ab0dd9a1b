//! The PostgreSQL commands on bad input and on a short real run: clear errors and exit
//! code 2, never a panic. The tests that need a server run when `TRICOMMIT_PG_URL` names
//! one (see engine/tests/pg_support) and print SKIPPED otherwise.
#![cfg(feature = "pg")]

use std::process::{Command, Output};

use tricommit_engine::pg::schema;

const URL_VARIABLE: &str = "TRICOMMIT_PG_URL";

fn tricommit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tricommit"))
        .args(args)
        .output()
        .expect("run tricommit")
}

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tricommit-load"))
        .args(args)
        .output()
        .expect("run tricommit-load")
}

/// Asserts exit code 2 and a one-line error containing `needle`, without a panic.
fn assert_bad_input(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

/// A loopback URL on which nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    format!("postgres://nobody@127.0.0.1:{port}/nothing")
}

fn server(test: &str) -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED {test}: set {URL_VARIABLE} to a PostgreSQL server to run it");
            None
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |at| at + 3);
    let host_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |at| scheme_end + at);
    format!("{}/{database}", &url[..host_end])
}

/// Creates (dropping any earlier copy) an empty database; returns its URL.
fn empty_database(server: &str, name: &str) -> String {
    let mut admin = schema::connect(server).expect("the test server accepts connections");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .expect("drop");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    with_database(server, name)
}

#[test]
fn unreachable_and_malformed_urls_exit_2() {
    // Proves that a URL nobody answers and a URL that does not parse are reported in
    // one line with exit code 2, by every command that takes one.
    let dead = dead_url();
    assert_bad_input(
        &tricommit(&[
            "pg",
            "init",
            "--url",
            &dead,
            "--accounts",
            "10",
            "--initial-balance",
            "1",
        ]),
        "cannot connect",
    );
    assert_bad_input(
        &tricommit(&["pg", "balance", "--url", &dead, "--account", "0"]),
        "cannot connect",
    );
    assert_bad_input(
        &tricommit(&[
            "pg",
            "balance",
            "--url",
            "postgres://a:b:c@[::",
            "--account",
            "0",
        ]),
        "invalid PostgreSQL URL",
    );
    let template = format!("{dead}{{ledger}}");
    assert_bad_input(
        &load(&["--pg", &template, "--duration", "1"]),
        "cannot connect",
    );
}

#[test]
fn a_template_without_placeholder_is_refused() {
    // Proves that four ledgers on one database (no `{ledger}` in the template) are
    // refused before anything connects.
    assert_bad_input(
        &load(&["--pg", &dead_url(), "--duration", "1"]),
        "no {ledger} placeholder",
    );
}

#[test]
fn missing_schema_and_out_of_range_accounts_exit_2() {
    // Proves that a database without the schema, an account beyond the shard's, a
    // load asking for more accounts than a shard has, a shard of an older schema
    // version, and a second init are refused
    // with exit code 2 and a sentence naming the problem.
    let Some(server) = server("missing_schema_and_out_of_range_accounts_exit_2") else {
        return;
    };
    let bare = empty_database(&server, "tc_test_cli_bare");
    assert_bad_input(
        &tricommit(&["pg", "balance", "--url", &bare, "--account", "0"]),
        "has no tricommit schema",
    );
    let shard = empty_database(&server, "tc_test_cli_shard");
    let init = tricommit(&[
        "pg",
        "init",
        "--url",
        &shard,
        "--accounts",
        "10",
        "--initial-balance",
        "5",
    ]);
    assert_eq!(init.status.code(), Some(0), "{init:?}");
    assert_bad_input(
        &tricommit(&[
            "pg",
            "init",
            "--url",
            &shard,
            "--accounts",
            "10",
            "--initial-balance",
            "5",
        ]),
        "already holds a tricommit schema",
    );
    assert_bad_input(
        &tricommit(&["pg", "balance", "--url", &shard, "--account", "10"]),
        "out of range",
    );
    assert_bad_input(
        &tricommit(&[
            "pg",
            "init",
            "--url",
            &shard,
            "--accounts",
            "0",
            "--initial-balance",
            "5",
        ]),
        "--accounts 0 is out of range",
    );
    let balance = tricommit(&["pg", "balance", "--url", &shard, "--account", "9"]);
    assert_eq!(String::from_utf8_lossy(&balance.stdout), "9 5 0 0\n");
    // A shard of an older schema version is refused, naming the way out.
    let mut client = schema::connect(&shard).expect("connect");
    client
        .batch_execute("UPDATE tc_meta SET schema_version = 1")
        .expect("mark the shard as version 1");
    assert_bad_input(
        &tricommit(&["pg", "balance", "--url", &shard, "--account", "9"]),
        "holds tricommit schema version 1; this build reads version 2: recreate it with \
         `tricommit pg init --reset`",
    );
    let one_ledger = with_database(&server, "tc_test_cli_{ledger}");
    let _ = empty_database(&server, "tc_test_cli_0");
    assert_bad_input(
        &load(&["--pg", &one_ledger, "--ledgers", "2", "--duration", "1"]),
        "has no tricommit schema",
    );
    schema::init(&with_database(&server, "tc_test_cli_0"), 10, 5, true).expect("init");
    let _ = empty_database(&server, "tc_test_cli_1");
    schema::init(&with_database(&server, "tc_test_cli_1"), 10, 5, true).expect("init");
    assert_bad_input(
        &load(&[
            "--pg",
            &one_ledger,
            "--ledgers",
            "2",
            "--accounts",
            "11",
            "--duration",
            "1",
        ]),
        "out of range",
    );
}

#[test]
fn a_short_load_on_pg_keeps_the_bank_invariant() {
    // Proves that `tricommit-load --pg` commits transfers on four shards, checks the
    // bank invariant from the databases, and leaves them auditable and settled.
    let Some(server) = server("a_short_load_on_pg_keeps_the_bank_invariant") else {
        return;
    };
    for index in 0..4 {
        let url = empty_database(&server, &format!("tc_test_load_{index}"));
        let init = tricommit(&[
            "pg",
            "init",
            "--url",
            &url,
            "--accounts",
            "1000",
            "--initial-balance",
            "1000",
        ]);
        assert_eq!(init.status.code(), Some(0), "{init:?}");
    }
    let template = with_database(&server, "tc_test_load_{ledger}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("summary.json");
    let run = load(&[
        "--pg",
        &template,
        "--accounts",
        "1000",
        "--duration",
        "2",
        "--segment-mib",
        "4",
        "--json",
        json.to_str().expect("UTF-8"),
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the summary")).expect("JSON");
    assert_eq!(summary["invariant_ok"], true);
    assert!(summary["committed"].as_u64().expect("a count") > 0);
    assert!(
        summary["scenario_figures"]["pg"]["statements"]
            .as_u64()
            .expect("a count")
            > 0
    );
    let audit = tricommit(&[
        "pg",
        "audit",
        "--url-template",
        &template,
        "--ledgers",
        "4",
        "--settled",
    ]);
    assert_eq!(audit.status.code(), Some(0), "{audit:?}");
}
