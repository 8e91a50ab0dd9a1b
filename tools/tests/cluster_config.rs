//! Bad cluster input: missing, unreadable or malformed files, unknown keys and sites,
//! a port in use. Each is a clear message and exit code 2, never a panic.

mod cluster_support;

use std::net::TcpListener;
use std::time::Duration;

use cluster_support::*;

/// Runs `tricommit ARGS` and checks it exits 2 with `needle` in its error, no panic.
fn refused(args: &[&str], needle: &str) {
    let output = run(TRICOMMIT, args);
    let error = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {error}");
    assert!(
        error.contains(needle),
        "{args:?}: `{needle}` not in: {error}"
    );
    assert!(!error.contains("panicked"), "{args:?} panicked: {error}");
}

fn node_args<'a>(dir: &'a str, site: &'a str) -> Vec<&'a str> {
    vec!["node", "--cluster", dir, "--site", site]
}

#[test]
fn a_missing_unreadable_or_malformed_cluster_file_exits_2() {
    // Proves that node, cluster up and ledger dump name the file and say what is wrong
    // with it, for each way a cluster.toml can be bad.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    init_cluster(&cluster, 10, 100);
    let path = cluster.join("cluster.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let c = path_str(&cluster);

    std::fs::remove_file(&path).unwrap();
    for args in [
        node_args(c, "replica-0"),
        vec!["cluster", "up", c],
        vec!["ledger", "dump", "--cluster", c],
    ] {
        refused(&args, "cluster.toml");
    }
    // A directory in its place cannot be read (root reads any mode-000 file).
    std::fs::create_dir(&path).unwrap();
    refused(&node_args(c, "replica-0"), "cannot read");
    std::fs::remove_dir(&path).unwrap();

    std::fs::write(&path, "cluster_id = [unclosed\n").unwrap();
    refused(&node_args(c, "replica-0"), "cluster.toml");
    std::fs::write(
        &path,
        good.replace("[timeouts]", "[timeouts]\nvote_timeout = 3"),
    )
    .unwrap();
    refused(&node_args(c, "replica-0"), "vote_timeout");
    std::fs::write(&path, good.replace("replicas = 3", "replicas = 0")).unwrap();
    refused(&["cluster", "up", c], "`replicas`");
    std::fs::write(&path, good.clone()).unwrap();

    refused(
        &node_args(c, "participant-9"),
        "unknown site `participant-9`",
    );
    refused(&["cluster", "init", c], "already holds a cluster");
}

#[test]
fn a_key_file_open_to_others_or_of_the_wrong_size_exits_2() {
    // Proves that the shared secret is checked before use: readable by others, or not
    // 32 bytes, is refused with the reason.
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    init_cluster(&cluster, 10, 100);
    let key = cluster.join("cluster.key");
    let c = path_str(&cluster);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&node_args(c, "replica-0"), "readable by others");
    std::fs::write(&key, [0u8; 5]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(&node_args(c, "replica-0"), "exactly 32 bytes");
}

#[test]
fn a_port_already_in_use_exits_2_naming_it() {
    // Proves that a node whose address is taken says so and exits 2 instead of running
    // without its listener.
    let dir = scratch();
    let cluster = dir.path().join("cluster");
    init_cluster(&cluster, 10, 100);
    let config = std::fs::read_to_string(cluster.join("cluster.toml")).unwrap();
    let addr = config
        .lines()
        .find_map(|line| line.strip_prefix("replica-1 = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let _taken = TcpListener::bind(&addr).expect("the port was free");
    let mut proc = node(&cluster, "replica-1");
    let status = proc.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2));
    let output = run(TRICOMMIT, &node_args(path_str(&cluster), "replica-1"));
    let error = text(&output.stderr);
    assert!(
        error.contains("cannot listen") && error.contains(&addr),
        "{error}"
    );
}
