//! The CPU cost of the protocol state machines alone, per transaction (issue 3).
//!
//! One iteration runs one batch through every phase on in-memory sites: the active
//! replica submits it, PREPARE reaches each participant, the votes come back, the
//! PRE-COMMIT round reaches the participants and the witness replicas, the
//! acknowledgements come back, and the decision (plus whatever the protocol sends
//! after it) is delivered until no message is left. I/O is stubbed: appends are
//! dropped, a requested sync is reported durable at once, messages are handed over
//! in FIFO order, and no timer ever fires. Participants wrap a resource manager that
//! votes yes on everything and does nothing else, so the figure is the protocol's own.
//!
//! Each transaction spans every participant (2 or 4), with 3 coordinator replicas as
//! in DESIGN §2. The sites live across iterations, as in the runtime; building the
//! client's `BatchInput` is setup and not timed. Criterion reports elements (client
//! transactions) per second: ns per transaction is its inverse.
//!
//! Run: `cargo bench -p tricommit-bench --bench proto_batch`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tricommit_engine::proto::{
    AppendSeq, BatchInput, Coordinator, Op, Output, Part, Participant, ProtoConfig,
    ResourceManager, SiteId, TxnId, Vote, OP_PAYLOAD_BYTES,
};

const MEASUREMENT_TIME: Duration = Duration::from_secs(3);
const WARM_UP_TIME: Duration = Duration::from_millis(500);
const SAMPLE_SIZE: usize = 20;
/// Batch sizes, in transactions.
const BATCH_TXNS: [usize; 4] = [1, 64, 1024, 8192];
/// Participants per transaction.
const PARTICIPANTS: [u8; 2] = [2, 4];
/// Coordinator replicas (DESIGN §2 default); site ids `0..REPLICAS`.
const REPLICAS: u8 = 3;
/// A batch that delivers more parts than this is a protocol livelock, not a bench.
const PARTS_PER_BATCH_MAX: usize = 10_000;

/// Votes yes on every operation and keeps nothing.
struct AlwaysYes;

impl ResourceManager for AlwaysYes {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        votes.extend(ops.iter().map(|_| Vote::Yes));
    }

    fn commit(&mut self, txns: &[TxnId]) {
        black_box(txns);
    }

    fn abort(&mut self, txns: &[TxnId]) {
        black_box(txns);
    }
}

enum Node {
    Coordinator(Box<Coordinator>),
    Participant(Box<Participant<AlwaysYes>>),
}

/// Every site of one commit group, with instant durability and a FIFO network.
struct Cluster {
    nodes: Vec<Node>,
    participants: u8,
    next_txn: u64,
    out: Output,
    network: VecDeque<(SiteId, SiteId, Part)>,
    committed: u64,
}

impl Cluster {
    fn new(participants: u8) -> Cluster {
        let config = ProtoConfig::new((0..REPLICAS).map(SiteId).collect());
        let mut out = Output::default();
        let mut nodes = Vec::new();
        for id in 0..REPLICAS {
            let coordinator =
                Coordinator::new(config.clone(), SiteId(id), &mut out).expect("valid config");
            nodes.push(Node::Coordinator(Box::new(coordinator)));
        }
        for id in REPLICAS..REPLICAS + participants {
            let participant =
                Participant::new(config.clone(), SiteId(id), AlwaysYes).expect("valid config");
            nodes.push(Node::Participant(Box::new(participant)));
        }
        let mut cluster = Cluster {
            nodes,
            participants,
            next_txn: 1,
            out: Output::default(),
            network: VecDeque::new(),
            committed: 0,
        };
        // The replicas' first Incarnation records are durable before any batch.
        if let Some(upto) = out.sync_upto {
            for id in 0..REPLICAS {
                cluster.report_durable(SiteId(id), upto);
                cluster.drain(SiteId(id));
            }
        }
        cluster
    }

    /// The client's batch: `txns` transactions over every participant.
    fn input(&mut self, txns: usize) -> BatchInput {
        let all =
            (REPLICAS..REPLICAS + self.participants).fold(0u64, |acc, id| acc | SiteId(id).bit());
        let ids: Vec<TxnId> = (0..txns as u64).map(|i| TxnId(self.next_txn + i)).collect();
        self.next_txn += txns as u64;
        let ops = (REPLICAS..REPLICAS + self.participants)
            .map(|id| {
                let ops = ids
                    .iter()
                    .map(|&txn| Op {
                        txn,
                        payload: [0; OP_PAYLOAD_BYTES],
                    })
                    .collect();
                (SiteId(id), ops)
            })
            .collect();
        BatchInput {
            members: vec![all; txns],
            txns: ids,
            ops,
        }
    }

    /// Runs one batch to the end of its message exchange.
    fn run_batch(&mut self, input: BatchInput) {
        let active = SiteId(0);
        if let Node::Coordinator(coordinator) = &mut self.nodes[0] {
            coordinator
                .submit(0, input, &mut self.out)
                .expect("valid batch");
        }
        self.drain(active);
        let mut parts = 0;
        while let Some((from, to, part)) = self.network.pop_front() {
            parts += 1;
            assert!(parts <= PARTS_PER_BATCH_MAX, "protocol livelock");
            match &mut self.nodes[to.0 as usize] {
                Node::Coordinator(node) => node.handle_message(0, from, part, &mut self.out),
                Node::Participant(node) => node.handle_message(0, from, part, &mut self.out),
            }
            self.drain(to);
        }
    }

    /// Takes a site's output: drops the appends, reports a requested sync durable at
    /// once, queues the sends, counts the completions.
    fn drain(&mut self, site: SiteId) {
        loop {
            let sync = self.out.sync_upto.take();
            for outgoing in self.out.sends.drain(..) {
                self.network.push_back((site, outgoing.to, outgoing.part));
            }
            for completion in self.out.completions.drain(..) {
                self.committed += completion.txns.count() as u64;
            }
            black_box(&self.out.appends);
            self.out.appends.clear();
            let Some(upto) = sync else {
                return;
            };
            self.report_durable(site, upto);
        }
    }

    fn report_durable(&mut self, site: SiteId, upto: AppendSeq) {
        match &mut self.nodes[site.0 as usize] {
            Node::Coordinator(node) => node.handle_durable(0, upto, &mut self.out),
            Node::Participant(node) => node.handle_durable(0, upto, &mut self.out),
        }
    }
}

fn proto_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto_batch");
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    for participants in PARTICIPANTS {
        for txns in BATCH_TXNS {
            group.throughput(Throughput::Elements(txns as u64));
            let id = BenchmarkId::new(format!("participants_{participants}"), txns);
            group.bench_function(id, |b| {
                let mut cluster = Cluster::new(participants);
                let before = cluster.committed;
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let input = cluster.input(txns);
                        let started = Instant::now();
                        cluster.run_batch(input);
                        timed += started.elapsed();
                    }
                    timed
                });
                assert!(cluster.committed > before, "no transaction committed");
            });
        }
    }
    group.finish();
}

criterion_group!(benches, proto_batch);
criterion_main!(benches);
