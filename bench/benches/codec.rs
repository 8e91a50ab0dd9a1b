//! The WAL record codec in the hot path: `Record::encode` and `Record::decode` of the
//! records a batch writes, a participant's `Prepared` (descriptor, operations and votes)
//! at 1024 and 8192 transactions, a `Transition` (a bit set over the batch), and a
//! replica's `Begin` (the descriptor alone) of transfers between two of four ledgers,
//! whose participant masks vary from one transaction to the next as the load's do.
//!
//! Throughput is in transactions, so criterion's time per iteration divided by the batch
//! size is the codec's cost per transaction; the record sizes are printed once, so bytes
//! per second follow from the same figures.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tricommit_bench::LEDGERS;
use tricommit_engine::ledger::LedgerOp;
use tricommit_engine::proto::{
    BatchId, Descriptor, Op, Reason, Record, State, TxnId, TxnSet, Vote,
};

const BATCH_SIZES: [usize; 2] = [1024, 8192];
/// Coordinator replicas: the ledgers are the sites after them.
const REPLICAS: u64 = 3;
/// Participant mask of a two-ledger transfer (the first two ledgers).
const TRANSFER_MEMBERS_MASK: u64 = 0b11 << REPLICAS;
/// One vote in this many is a no, so the codec sees both vote encodings.
const NO_VOTE_EVERY: usize = 50;

/// A `Prepared` record of `txns` transfers' debit legs, as a ledger participant logs it.
fn prepared(txns: usize) -> Record {
    let ids: Vec<TxnId> = (0..txns as u64).map(|index| TxnId(1 + index)).collect();
    let desc = Descriptor {
        batch: BatchId(7),
        txns: ids.clone(),
        members: vec![TRANSFER_MEMBERS_MASK; txns],
    };
    let ops: Vec<Op> = ids
        .iter()
        .map(|&txn| Op {
            txn,
            payload: LedgerOp::debit(txn.0 % 100_000, 1 + txn.0 % 100)
                .expect("small amounts are valid")
                .encode(),
        })
        .collect();
    let votes = (0..txns)
        .map(|index| match index % NO_VOTE_EVERY {
            0 => Vote::No(Reason::INSUFFICIENT_FUNDS),
            _ => Vote::Yes,
        })
        .collect();
    Record::Prepared {
        desc: Arc::new(desc),
        ops: ops.into(),
        votes,
    }
}

/// A `Begin` record of `txns` transfers, each between two of the harness's [`LEDGERS`]
/// ledgers picked by a fixed pseudo-random sequence: six masks in no particular order,
/// as a replica logs a batch of the load generator's transfers.
fn begin(txns: usize) -> Record {
    let ledgers = LEDGERS as u64;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let members = (0..txns)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let from = state % ledgers;
            let to = (from + 1 + (state >> 8) % (ledgers - 1)) % ledgers;
            (1u64 << (REPLICAS + from)) | (1u64 << (REPLICAS + to))
        })
        .collect();
    Record::Begin {
        desc: Arc::new(Descriptor {
            batch: BatchId(7),
            txns: (0..txns as u64).map(|index| TxnId(1 + index)).collect(),
            members,
        }),
    }
}

/// A `Transition` to PC of every transaction of a batch of `txns`.
fn transition(txns: usize) -> Record {
    Record::Transition {
        batch: BatchId(7),
        state: State::PreCommit,
        attempt: 1,
        elected: 0,
        txns: TxnSet::full(txns as u32),
    }
}

fn encoded(record: &Record) -> Vec<u8> {
    let mut buf = Vec::new();
    record.encode(&mut buf);
    buf
}

fn bench_record(criterion: &mut Criterion, group_name: &str, build: fn(usize) -> Record) {
    let mut group = criterion.benchmark_group(group_name);
    for txns in BATCH_SIZES {
        let record = build(txns);
        let bytes = encoded(&record);
        eprintln!("{group_name}/{txns}: record payload {} bytes", bytes.len());
        assert_eq!(
            Record::decode(record.kind(), &bytes).as_ref(),
            Ok(&record),
            "the codec must round-trip what it measures"
        );
        group.throughput(Throughput::Elements(txns as u64));
        let mut buf = Vec::with_capacity(bytes.len());
        group.bench_with_input(
            BenchmarkId::new("encode", txns),
            &record,
            |bench, record| {
                bench.iter(|| {
                    buf.clear();
                    black_box(record).encode(&mut buf);
                    black_box(buf.len())
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("decode", txns), &bytes, |bench, bytes| {
            bench.iter(|| Record::decode(black_box(record.kind()), black_box(bytes)))
        });
    }
    group.finish();
}

fn codec(criterion: &mut Criterion) {
    bench_record(criterion, "codec_prepared", prepared);
    bench_record(criterion, "codec_transition", transition);
    bench_record(criterion, "codec_begin", begin);
}

criterion_group!(benches, codec);
criterion_main!(benches);
