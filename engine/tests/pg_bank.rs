//! The bank test on four PostgreSQL ledgers: concurrent transfers through the engine,
//! then everything checked from the databases alone.

mod pg_support;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pg_support::below;
use tricommit_engine::pg;
use tricommit_engine::proto::TxnId;
use tricommit_engine::{Engine, Outcome, Ticket, Txn};

const LEDGERS: usize = 4;
/// Few accounts with small balances, so that many debits are refused and the batches
/// mix yes and no votes.
const ACCOUNTS: u64 = 200;
const BALANCE: i64 = 500;
const AMOUNT_MAX: u64 = 200;
const TRANSFERS: u64 = 20_000;
const WINDOW_TICKETS: usize = 2_048;
/// The whole run must end well within this.
const RUN_SECONDS_MAX: u64 = 240;

#[test]
fn four_pg_ledgers_keep_the_bank_invariant() {
    // Proves that after a clean stop the shards hold no reservation, every balance
    // equals its opening balance plus its postings, every committed transfer is posted
    // on both its ledgers, no aborted one is posted anywhere, and the total is unchanged.
    let Some(server) = pg_support::server("four_pg_ledgers_keep_the_bank_invariant") else {
        return;
    };
    let template = pg_support::fresh_shards(&server, "tc_test_bank", LEDGERS, ACCOUNTS, BALANCE);
    let urls = pg_support::urls(&template, LEDGERS);
    let stats = pg_support::stats(LEDGERS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = pg::engine_config(dir.path(), &urls, &stats).expect("valid URLs");
    config.wal.segment_bytes = 4 << 20;
    config.wal.record_bytes_max = 2 << 20;
    let engine = Engine::open(config).expect("open the engine");
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    let mut rng = 7u64;
    let mut outstanding: VecDeque<(u64, Ticket)> = VecDeque::new();
    let mut committed = Vec::new();
    let mut aborted = Vec::new();
    let mut settle = |(id, ticket): (u64, Ticket)| match ticket.wait() {
        Outcome::Committed => committed.push(id as i64),
        Outcome::Aborted(_) => aborted.push(id as i64),
        Outcome::InDoubt => panic!("transfer {id} in doubt without any failure"),
    };
    let mut id = 0;
    while id < TRANSFERS {
        assert!(Instant::now() < deadline, "the run took too long");
        if outstanding.len() >= WINDOW_TICKETS {
            settle(outstanding.pop_front().expect("full window"));
        }
        let from_ledger = below(&mut rng, LEDGERS as u64);
        let to_ledger = (from_ledger + 1 + below(&mut rng, LEDGERS as u64 - 1)) % LEDGERS as u64;
        let txn = Txn::transfer(
            TxnId(id + 1),
            (from_ledger as u8, below(&mut rng, ACCOUNTS)),
            (to_ledger as u8, below(&mut rng, ACCOUNTS)),
            1 + below(&mut rng, AMOUNT_MAX),
        )
        .expect("a valid transfer");
        match engine.submit(txn) {
            Ok(ticket) => {
                id += 1;
                outstanding.push_back((id, ticket));
            }
            Err(_busy) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    outstanding.into_iter().for_each(&mut settle);
    engine.shutdown().expect("clean shutdown");
    assert!(!committed.is_empty(), "some transfers must commit");
    assert!(
        !aborted.is_empty(),
        "small balances must refuse some debits"
    );
    let report = pg::audit(&urls).expect("read the shards");
    report.verdict(true).expect("the bank invariant holds");
    assert_eq!(report.total, report.opening_total);
    assert_eq!(report.postings, 2 * committed.len() as u64);
    for id in &committed {
        assert!(
            report.posted.contains(id),
            "committed transfer {id} is not posted"
        );
    }
    for id in &aborted {
        assert!(
            !report.posted.contains(id),
            "aborted transfer {id} is posted"
        );
    }
}
