//! Ledger reserve + post cost per operation: `prepare` then `commit` of whole batches of
//! random debits and credits over 100,000 accounts, the load-generator default.
//!
//! Criterion reports the time per batch and operations per second; ns per operation is
//! the time per batch divided by the batch size. The `held_*` variants keep 65,536
//! other reservations held throughout (half the default bound, as with several batches
//! in flight), so the reservation table is measured at a realistic load.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tricommit_engine::ledger::{Ledger, LedgerConfig, LedgerOp};
use tricommit_engine::proto::{Op, ResourceManager, TxnId};

const ACCOUNTS: u64 = 100_000;
const BATCH_SIZES: [usize; 2] = [1024, 8192];
const HELD_BACKGROUND_TXNS: u64 = 65_536;
/// Background transaction ids start here, far from the measured ones.
const HELD_TXN_FIRST: u64 = 1 << 40;

/// A small deterministic generator, so every run measures the same operations.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn ledger() -> Ledger {
    let config = LedgerConfig {
        balance_initial: 1 << 40,
        ..LedgerConfig::new(ACCOUNTS)
    };
    Ledger::new(config).expect("the benchmark configuration is valid")
}

/// `count` operations on random accounts, alternating debit and credit, ids from `first`.
fn ops(count: usize, first: u64, seed: u64) -> Vec<Op> {
    let mut state = seed;
    (0..count as u64)
        .map(|index| {
            let account = next_random(&mut state) % ACCOUNTS;
            let amount = 1 + next_random(&mut state) % 100;
            let op = if index % 2 == 0 {
                LedgerOp::debit(account, amount)
            } else {
                LedgerOp::credit(account, amount)
            };
            Op {
                txn: TxnId(first + index),
                payload: op.expect("small amounts are valid").encode(),
            }
        })
        .collect()
}

fn reserve_post(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger_reserve_post");
    for held in [false, true] {
        for batch in BATCH_SIZES {
            let mut ledger = ledger();
            if held {
                let background = ops(HELD_BACKGROUND_TXNS as usize, HELD_TXN_FIRST, 7);
                ledger.prepare(&background, &mut Vec::new());
            }
            let ops = ops(batch, 0, 0x9e37_79b9_7f4a_7c15);
            let txns: Vec<TxnId> = ops.iter().map(|op| op.txn).collect();
            let mut votes = Vec::with_capacity(batch);
            let name = if held { "held_65536" } else { "empty_table" };
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter(|| {
                    votes.clear();
                    ledger.prepare(black_box(&ops), &mut votes);
                    ledger.commit(black_box(&txns));
                })
            });
            assert_eq!(
                ledger.reservations_len(),
                if held { HELD_BACKGROUND_TXNS } else { 0 }
            );
        }
    }
    group.finish();
}

criterion_group!(benches, reserve_post);
criterion_main!(benches);
