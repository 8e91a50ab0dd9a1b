//! Every capacity of the pipeline, as a named constant, with the relations between them
//! checked at compile time.
//!
//! Why one file: the bounds only make sense together. The intake may hold no more
//! transactions than the completion slab can track, the in-flight window must fit in the
//! intake, and so on. Keeping them side by side makes each relation an `assert!` that the
//! compiler checks, instead of a comment that drifts (TigerBeetle's TIGER_STYLE).

/// The largest batch the batcher ever closes, in transactions.
///
/// A configured `batch_txns_max` may be smaller, never larger. 8192 is where the WAL's
/// group commit reaches its throughput target, so larger batches buy nothing but latency.
pub const BATCH_TXNS_MAX: usize = 8192;

/// The default `batch_txns_max` of a [`BatchPolicy`](super::batcher::BatchPolicy).
pub const BATCH_TXNS_DEFAULT: usize = 4096;

/// The ceiling for a configured `batch_delay_us_max`, in microseconds.
///
/// A batch that waits longer than this for company is a misconfiguration: the timer
/// would dominate the latency of every lone transaction.
pub const BATCH_DELAY_US_LIMIT: u64 = 100_000;

/// The default `batch_delay_us_max`: how long the oldest transaction of an open batch may
/// wait for more to arrive while the next stage is busy.
pub const BATCH_DELAY_US_DEFAULT: u64 = 500;

/// How many batches may be in flight between the batcher and the completion stage.
///
/// Three are enough for the steady-state overlap of DESIGN §2 (PREPARE n+2, PRE-COMMIT
/// n+1, COMMIT n); the fourth is the one being filled.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;

/// The hard capacity of the intake: transactions admitted and not yet completed.
///
/// Over this, every submission gets `Busy`, whatever its priority.
pub const INTAKE_TXNS_MAX: usize = 65_536;

/// The intake high-water mark: over it, `Normal` submissions get `Busy` while `High`
/// ones still enter, until [`INTAKE_TXNS_MAX`].
pub const INTAKE_HIGH_WATER_TXNS: usize = 49_152;

/// The capacity of the many-to-one queue from the clients into the batcher.
///
/// At least [`INTAKE_TXNS_MAX`], so that a submission that passed admission always finds
/// room in the queue: admission, not the queue, is where load is shed.
pub const INTAKE_QUEUE_TXNS_CAPACITY: usize = INTAKE_TXNS_MAX;

/// Completion slots per admitted transaction.
///
/// A slot stays taken until the engine has completed it *and* the client has consumed
/// or dropped its ticket. Two per admitted transaction leave room for clients that are
/// slow to read outcomes without making admission fail on the slab first.
pub const COMPLETION_SLOTS_PER_TXN: usize = 2;

/// The size of the completion slab, in ticket slots.
pub const COMPLETION_SLOTS_MAX: usize = INTAKE_TXNS_MAX * COMPLETION_SLOTS_PER_TXN;

/// The capacity of a queue between two stages, in batches.
///
/// At least [`BATCHES_IN_FLIGHT_MAX`], so that a hop is never full while the pipeline
/// respects its in-flight window.
pub const STAGE_QUEUE_BATCHES_CAPACITY: usize = 8;

/// The largest capacity any hop accepts, in items: a guard against a configuration that
/// would allocate gigabytes up front.
pub const HOP_CAPACITY_MAX: usize = 1 << 20;

/// The default number of `Backoff::spin` rounds a waiting stage spins before it parks.
///
/// crossbeam's `Backoff::spin` doubles its pause count each round (up to 64
/// `spin_loop` hints), so 6 rounds are 1+2+4+8+16+32 = 63 hints: about 1 µs measured on
/// this VM, well under what a park/unpark costs here (≈5 µs). 10 rounds measured 11 µs,
/// and spinning that long is what made two spinners on one vCPU cost 4 ms per hop.
pub const SPIN_ROUNDS_DEFAULT: u32 = 6;

/// The most spin rounds a [`WaitConfig`](super::wait::WaitConfig) accepts.
pub const SPIN_ROUNDS_MAX: u32 = 64;

/// The longest a parked stage sleeps before it re-checks its queues, in microseconds.
///
/// The wakeup protocol never loses a wakeup, so this is defence in depth, not part of
/// correctness. At 100 ms an idle stage wakes 10 times a second, which costs nothing
/// measurable.
pub const PARK_TIMEOUT_US_MAX: u64 = 100_000;

const _: () = assert!(BATCH_TXNS_DEFAULT >= 1 && BATCH_TXNS_DEFAULT <= BATCH_TXNS_MAX);
const _: () = assert!(BATCH_DELAY_US_DEFAULT <= BATCH_DELAY_US_LIMIT);
// The in-flight window, full of the largest batches, fits in the intake.
const _: () = assert!(BATCH_TXNS_MAX * BATCHES_IN_FLIGHT_MAX <= INTAKE_TXNS_MAX);
// Normal traffic can fill at least one whole batch before it is shed.
const _: () = assert!(INTAKE_HIGH_WATER_TXNS >= BATCH_TXNS_MAX);
// High priority keeps headroom above the high-water mark.
const _: () = assert!(INTAKE_HIGH_WATER_TXNS < INTAKE_TXNS_MAX);
// An admitted transaction always finds room in the intake queue.
const _: () = assert!(INTAKE_QUEUE_TXNS_CAPACITY >= INTAKE_TXNS_MAX);
// Every admitted transaction has a completion slot, and slot indices fit in a u32.
const _: () = assert!(COMPLETION_SLOTS_MAX >= INTAKE_TXNS_MAX);
const _: () = assert!(COMPLETION_SLOTS_MAX <= u32::MAX as usize);
// A stage hop holds the whole in-flight window.
const _: () = assert!(STAGE_QUEUE_BATCHES_CAPACITY >= BATCHES_IN_FLIGHT_MAX);
// Every named queue is within the hop guard.
const _: () = assert!(INTAKE_QUEUE_TXNS_CAPACITY <= HOP_CAPACITY_MAX);
const _: () = assert!(STAGE_QUEUE_BATCHES_CAPACITY <= HOP_CAPACITY_MAX);
const _: () = assert!(COMPLETION_SLOTS_MAX <= HOP_CAPACITY_MAX);
const _: () = assert!(SPIN_ROUNDS_DEFAULT <= SPIN_ROUNDS_MAX);
const _: () = assert!(PARK_TIMEOUT_US_MAX > 0);
