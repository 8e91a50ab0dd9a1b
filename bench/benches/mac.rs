//! The frame MAC candidates on vote-sized frames: HMAC-SHA256 (what the transport
//! uses, `MacKey::mac`, truncated to 128 bits) against keyed BLAKE3 (truncated alike),
//! each keyed once outside the loop as a connection would be, over the exact
//! bytes the transport MACs: a frame's 32-byte header and a body carrying one VOTES
//! part for a batch of 1, 64, 1024 and 4096 transactions (all yes, one bit set each).
//!
//! The frame sizes are printed once, so bytes per second follow from the times.
//!
//! Before criterion's groups, the bench prints an interleaved minimum for each size:
//! rounds of `MIN_ROUND_MACS` MACs, alternating the two candidates, keeping each one's
//! fastest round. On a machine shared with other work the minimum is the figure least
//! disturbed by it, and alternating puts both candidates under the same load.

use std::hint::black_box;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tricommit_engine::proto::{BatchId, Part, TxnSet};
use tricommit_engine::transport::auth::{MacKey, SessionIds, MAC_BYTES};
use tricommit_engine::transport::codec::encode_parts;
use tricommit_engine::transport::frame::{kind, Header, HEADER_BYTES};

const BATCH_SIZES: [u32; 4] = [1, 64, 1024, 4096];
/// MACs per timed round of the interleaved minimum.
const MIN_ROUND_MACS: u32 = 2000;
/// Rounds per candidate and size of the interleaved minimum.
const MIN_ROUNDS: u32 = 300;

/// Header and body of a frame that carries one batch's votes, as the MAC sees them.
fn vote_frame(txns: u32) -> Vec<u8> {
    let part = Part::Votes {
        batch: BatchId(7 << 32 | 1),
        yes: TxnSet::full(txns),
        read_only: TxnSet::empty(txns),
        no: Vec::new(),
        held: Vec::new(),
    };
    let mut body = Vec::new();
    encode_parts(&[part], &mut body);
    let mut raw = [0u8; HEADER_BYTES];
    Header {
        kind: kind::SITE,
        body_len: body.len() as u32,
        sender: 3,
        receiver: 0,
        cluster_id: 1,
        sequence: 42,
    }
    .encode(&mut raw);
    let mut frame = raw.to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn hmac_key(secret: &[u8; 32]) -> MacKey {
    MacKey::session(
        secret,
        1,
        &SessionIds {
            dialer: 0,
            acceptor: 3,
            dialer_nonce: [1; 32],
            acceptor_nonce: [2; 32],
            sender: 3,
        },
    )
}

fn blake3_mac(key: &[u8; 32], frame: &[u8]) -> [u8; MAC_BYTES] {
    let hash = blake3::keyed_hash(key, frame);
    let mut truncated = [0u8; MAC_BYTES];
    truncated.copy_from_slice(&hash.as_bytes()[..MAC_BYTES]);
    truncated
}

/// The fastest round's time per MAC, in nanoseconds.
fn round_ns(best: &mut f64, mut mac_once: impl FnMut()) {
    let start = std::time::Instant::now();
    for _ in 0..MIN_ROUND_MACS {
        mac_once();
    }
    let per_mac = start.elapsed().as_nanos() as f64 / f64::from(MIN_ROUND_MACS);
    *best = best.min(per_mac);
}

fn interleaved_minimums() {
    let secret = [0x42u8; 32];
    let hmac_key = hmac_key(&secret);
    for txns in BATCH_SIZES {
        let frame = vote_frame(txns);
        let (mut blake3_best, mut hmac_best) = (f64::MAX, f64::MAX);
        for _ in 0..MIN_ROUNDS {
            round_ns(&mut blake3_best, || {
                black_box(blake3_mac(&secret, black_box(&frame)));
            });
            round_ns(&mut hmac_best, || {
                black_box(hmac_key.mac(black_box(&frame)));
            });
        }
        println!(
            "interleaved minimum, vote frame for {txns} txns ({} bytes): \
             blake3_keyed {blake3_best:.0} ns, hmac_sha256 {hmac_best:.0} ns",
            frame.len()
        );
    }
}

fn mac(criterion: &mut Criterion) {
    let secret = [0x42u8; 32];
    let hmac_key = hmac_key(&secret);
    let blake3_key = secret;
    let mut group = criterion.benchmark_group("frame_mac");
    for txns in BATCH_SIZES {
        let frame = vote_frame(txns);
        println!("vote frame for {txns} txns: {} bytes MACed", frame.len());
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("blake3_keyed", txns), &frame, |b, f| {
            b.iter(|| black_box(blake3_mac(&blake3_key, black_box(f))))
        });
        group.bench_with_input(BenchmarkId::new("hmac_sha256", txns), &frame, |b, f| {
            b.iter(|| black_box(hmac_key.mac(black_box(f))))
        });
    }
    group.finish();
}

criterion_group!(benches, mac);

fn main() {
    interleaved_minimums();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
