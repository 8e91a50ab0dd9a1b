//! In-process bank tests of the whole engine: random transfers among ledgers, then the
//! bank invariant (DESIGN §2, invariant 8) checked on what the ledgers hold.

use tricommit_engine::proto::TxnId;
use tricommit_engine::{Engine, EngineConfig, Outcome, Txn};

const LEDGERS: usize = 4;
const ACCOUNTS: u64 = 1_000;
const BALANCE_INITIAL: i64 = 1_000;

/// A tiny deterministic generator, so a failure reproduces.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn random_transfer(rng: &mut SplitMix, id: u64) -> Txn {
    let from_ledger = (rng.next() % LEDGERS as u64) as u8;
    let to_ledger =
        ((from_ledger as u64 + 1 + rng.next() % (LEDGERS as u64 - 1)) % LEDGERS as u64) as u8;
    let amount = 1 + rng.next() % 300;
    Txn::transfer(
        TxnId(id),
        (from_ledger, rng.next() % ACCOUNTS),
        (to_ledger, rng.next() % ACCOUNTS),
        amount,
    )
    .expect("distinct ledgers and a small amount")
}

/// Runs `txns` random transfers with `config` and checks the bank invariant at the end:
/// the total is unchanged, no balance is below its limit, and every submission got a
/// definite outcome.
fn run_bank(config: EngineConfig, txns: u64) -> (u64, u64) {
    let engine = Engine::open(config).expect("engine opens");
    let mut rng = SplitMix(7);
    let mut tickets = Vec::new();
    for id in 1..=txns {
        let mut txn = random_transfer(&mut rng, id);
        let ticket = loop {
            match engine.submit(txn) {
                Ok(ticket) => break ticket,
                Err(busy) => {
                    txn = busy.into_inner();
                    std::thread::yield_now();
                }
            }
        };
        tickets.push(ticket);
    }
    let (mut committed, mut aborted) = (0, 0);
    for ticket in tickets {
        match ticket.wait() {
            Outcome::Committed => committed += 1,
            Outcome::Aborted(_) => aborted += 1,
            Outcome::InDoubt => panic!("no failure was injected, yet an outcome is in doubt"),
        }
    }
    let shutdown = engine.shutdown().expect("clean shutdown");
    let mut total: i128 = 0;
    for participant in &shutdown.participants {
        let ledger = participant
            .rm()
            .ledger()
            .expect("every participant is a ledger");
        ledger
            .check_invariants()
            .expect("no balance below its limit");
        total += ledger.total_balance();
    }
    assert_eq!(
        total,
        (LEDGERS as i128) * (ACCOUNTS as i128) * BALANCE_INITIAL as i128
    );
    (committed, aborted)
}

#[test]
fn bank_total_is_unchanged_and_most_transfers_commit() {
    // Proves that transfers flow through every stage and land on both ledgers or none.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = EngineConfig::ledgers(dir.path(), LEDGERS, ACCOUNTS, BALANCE_INITIAL);
    let (committed, aborted) = run_bank(config, 20_000);
    assert_eq!(committed + aborted, 20_000);
    assert!(committed > 10_000, "only {committed} of 20000 committed");
}
