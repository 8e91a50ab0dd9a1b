//! Signed votes per batch (issue 11): what a participant pays to sign one batch's
//! votes (digest + ed25519 signature) and what a replica pays to check them (digest +
//! verification), for batches of 1, 64, 1024 and 4096 transactions (all yes). The
//! digest grows with the batch (one bit per transaction); the signature does not.
//!
//! The engine does one of each per participant per batch, so the cost per
//! transaction is these times divided by the batch size.

use std::hint::black_box;

use criterion::{criterion_group, BenchmarkId, Criterion};
use tricommit_engine::proto::{BatchId, SiteId, TxnSet};
use tricommit_engine::sign::{Signer, SigningKey};

const BATCH_SIZES: [u32; 4] = [1, 64, 1024, 4096];

fn sign(criterion: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let signer = Signer::new(42, SiteId(3), key, vec![SiteId(0)], None);
    let mut group = criterion.benchmark_group("signed_votes");
    for txns in BATCH_SIZES {
        let batch = BatchId(7 << 32 | 1);
        let yes = TxnSet::full(txns);
        let empty = TxnSet::empty(txns);
        group.bench_with_input(BenchmarkId::new("sign", txns), &txns, |b, _| {
            b.iter(|| {
                black_box(signer.sign(batch, black_box(yes.clone()), empty.clone(), Vec::new()))
            })
        });
        let signed = signer.sign(batch, yes.clone(), empty.clone(), Vec::new());
        group.bench_with_input(BenchmarkId::new("verify", txns), &signed, |b, signed| {
            b.iter(|| {
                let proof = black_box(signed).proof();
                proof.verify(42, &public).expect("a good signature");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sign);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
