//! Crash consistency on the simulated disk, in the style of redb's crash tests.
//!
//! proptest drives random appends, batches, syncs, checkpoints, clean reopens and power
//! failures, some of them while a sync is in flight. A power failure keeps the synced
//! bytes and damages any subset of the other pages (old, new, torn, zeroed or garbage).
//! After each reopen the recovered log must hold exactly the synced records, optionally
//! followed by a prefix of the unsynced ones, and nothing that was never written in the
//! current history. Some power failures also flip a bit in a record that a sync mark
//! vouches for: then the open must fail, naming the segment and the record's offset.

use std::path::PathBuf;

use proptest::prelude::*;
use tricommit_wal::storage::{SimDisk, SimStorage};
use tricommit_wal::{
    Lsn, SyncBackend, Wal, WalConfig, WalError, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    SYNC_MARK_BYTES, SYNC_MARK_TAG,
};

/// Small segments so that runs cross many segment boundaries.
const SEGMENT_BYTES: u64 = 16 * 1024;
const RECORD_BYTES_MAX: u32 = 4096;
/// Few distinct payload sizes, so a record written after a crash often has the same
/// length as the abandoned one at its offset: the case where stale records could line up.
const PAYLOAD_SIZES: [usize; 5] = [0, 13, 64, 300, 700];
const BATCH_RECORDS_MAX: usize = 24;
const OPS_MAX: usize = 80;

#[derive(Clone, Debug)]
enum Op {
    Append {
        kind: u8,
        payload_bytes: usize,
    },
    Batch {
        records: usize,
        payload_bytes: usize,
    },
    Sync,
    Submit,
    Wait,
    Checkpoint {
        fraction: u8,
    },
    /// `checkpoint_step_bounded` with a small fill per call, so crashes land in the
    /// middle of a recycled segment's zero-fill.
    CheckpointStep {
        fraction: u8,
        zero_bytes_max: u64,
    },
    Reopen,
    Crash {
        seed: u64,
        /// Flip a bit in a vouched-for record before reopening: (record pick, byte
        /// pick, bit).
        flip: Option<(u64, u64, u8)>,
    },
    /// Submit a sync, then lose power before it completes.
    CrashDuringSync {
        seed: u64,
    },
}

fn payload_size() -> impl Strategy<Value = usize> {
    proptest::sample::select(&PAYLOAD_SIZES[..])
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), payload_size()).prop_map(|(kind, payload_bytes)| Op::Append { kind, payload_bytes }),
        3 => (1..BATCH_RECORDS_MAX, payload_size()).prop_map(|(records, payload_bytes)| Op::Batch { records, payload_bytes }),
        3 => Just(Op::Sync),
        1 => Just(Op::Submit),
        1 => Just(Op::Wait),
        1 => any::<u8>().prop_map(|fraction| Op::Checkpoint { fraction }),
        2 => (any::<u8>(), 1..SEGMENT_BYTES).prop_map(|(fraction, zero_bytes_max)| Op::CheckpointStep { fraction, zero_bytes_max }),
        1 => Just(Op::Reopen),
        2 => (any::<u64>(), proptest::option::of(any::<(u64, u64, u8)>()))
            .prop_map(|(seed, flip)| Op::Crash { seed, flip }),
        1 => any::<u64>().prop_map(|seed| Op::CrashDuringSync { seed }),
    ]
}

/// Payload bytes that differ between histories, so a record abandoned by a crash can
/// never pass for the record that later takes its LSN.
fn payload(history: u64, lsn: Lsn, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|index| (history.wrapping_mul(31) ^ lsn.wrapping_mul(7) ^ index as u64) as u8)
        .collect()
}

/// What the test knows the log must contain.
struct Model {
    /// Every record of the current history, by LSN order, starting at `first_lsn`.
    records: Vec<(u8, Vec<u8>)>,
    first_lsn: Lsn,
    history: u64,
}

impl Model {
    fn last_lsn(&self) -> Lsn {
        self.first_lsn + self.records.len() as u64 - 1
    }

    fn get(&self, lsn: Lsn) -> &(u8, Vec<u8>) {
        &self.records[(lsn - self.first_lsn) as usize]
    }
}

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        sync: SyncBackend::Fdatasync,
        sync_fallback: true,
        segments_spare: 1,
    }
}

fn open(disk: &SimDisk) -> Wal<SimStorage> {
    let (wal, _recovery) =
        Wal::open_with_storage(disk.storage(), config()).expect("reopen after crash must succeed");
    wal
}

/// Checks the recovered log against the model: records below `durable` exactly, then a
/// prefix of the rest. Then makes the model the recovered history.
fn check_recovered(
    wal: &Wal<SimStorage>,
    model: &mut Model,
    durable: Lsn,
) -> Result<(), TestCaseError> {
    let first = wal.first_lsn();
    prop_assert!(
        first >= model.first_lsn,
        "log starts at {first}, before the model's {}",
        model.first_lsn
    );
    prop_assert!(
        wal.last_lsn() >= durable,
        "durable LSN {durable} lost: log ends at {}",
        wal.last_lsn()
    );
    prop_assert!(
        wal.last_lsn() <= model.last_lsn(),
        "log ends at {}, past the last written {}",
        wal.last_lsn(),
        model.last_lsn()
    );
    let mut expected = first;
    for record in wal.read_from(first) {
        let record = record.map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(record.lsn, expected);
        let (kind, payload) = model.get(record.lsn);
        prop_assert_eq!(record.kind, *kind, "kind of LSN {}", record.lsn);
        prop_assert_eq!(
            record.payload,
            &payload[..],
            "payload of LSN {}",
            record.lsn
        );
        expected += 1;
    }
    prop_assert_eq!(expected, wal.last_lsn() + 1);
    model.records.drain(..(first - model.first_lsn) as usize);
    model.first_lsn = first;
    model
        .records
        .truncate((wal.last_lsn() + 1 - first) as usize);
    prop_assert_eq!(
        wal.durable_lsn(),
        wal.last_lsn(),
        "open must leave the recovered log durable"
    );
    Ok(())
}

fn append(
    wal: &mut Wal<SimStorage>,
    model: &mut Model,
    kind: u8,
    payload_bytes: usize,
) -> Result<(), TestCaseError> {
    let lsn = wal.last_lsn() + 1;
    let bytes = payload(model.history, lsn, payload_bytes);
    let appended = wal
        .append(kind, &bytes)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(appended, lsn);
    model.records.push((kind, bytes));
    Ok(())
}

/// Where a record lies on the simulated disk: segment name, byte offset, bytes.
fn locate_record(disk: &SimDisk, lsn_wanted: Lsn) -> Option<(String, u64, u64)> {
    let mut segments: Vec<String> = disk
        .file_names()
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    segments.sort();
    for name in segments.into_iter().rev() {
        let bytes = disk.durable_bytes(&name).ok()?;
        let first_lsn = u64::from_le_bytes(bytes[24..32].try_into().ok()?);
        if first_lsn > lsn_wanted {
            continue;
        }
        return record_in_segment(&bytes, first_lsn, lsn_wanted)
            .map(|(offset, size)| (name, offset, size));
    }
    None
}

/// Walks one segment's items per `docs/wal-format.md` to the record with `lsn_wanted`.
fn record_in_segment(bytes: &[u8], first_lsn: Lsn, lsn_wanted: Lsn) -> Option<(u64, u64)> {
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let mut lsn_next = first_lsn;
    while offset + RECORD_HEADER_BYTES as usize <= bytes.len() {
        let tag = u32::from_le_bytes(bytes[offset..offset + 4].try_into().ok()?);
        if tag == SYNC_MARK_TAG {
            offset += SYNC_MARK_BYTES as usize;
            continue;
        }
        let size = RECORD_HEADER_BYTES + u64::from(tag);
        let lsn = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().ok()?);
        if lsn != lsn_next {
            return None;
        }
        if lsn == lsn_wanted {
            return Some((offset as u64, size));
        }
        offset += size as usize;
        lsn_next += 1;
    }
    None
}

/// Flips a bit in a record that a durable sync mark vouches for (`first..=vouched`),
/// checks that open fails naming its segment and offset, and flips it back.
fn flip_vouched_record(
    disk: &SimDisk,
    first: Lsn,
    vouched: Lsn,
    (record_pick, byte_pick, bit): (u64, u64, u8),
) -> Result<(), TestCaseError> {
    if vouched < first {
        return Ok(());
    }
    let lsn = first + record_pick % (vouched - first + 1);
    let Some((name, offset, size)) = locate_record(disk, lsn) else {
        return Err(TestCaseError::fail(format!(
            "record {lsn} not found on disk"
        )));
    };
    let byte = (offset + byte_pick % size) as usize;
    disk.flip_bit(&name, byte, bit)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    match Wal::open_with_storage(disk.storage(), config()) {
        Err(WalError::Corrupt {
            path,
            offset: reported,
            reason,
        }) => {
            prop_assert_eq!(path, PathBuf::from(&name), "{}", reason);
            prop_assert_eq!(reported, offset, "LSN {}: {}", lsn, reason);
        }
        Err(other) => return Err(TestCaseError::fail(format!("LSN {lsn}: expected Corrupt, got {other}"))),
        Ok((_, recovery)) => {
            return Err(TestCaseError::fail(format!(
                "a flipped bit in vouched-for LSN {lsn} ({name} byte {byte}) was accepted: {recovery:?}"
            )))
        }
    }
    disk.flip_bit(&name, byte, bit)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    Ok(())
}

/// What the test knows a durable sync mark vouches for, from what it can observe: when
/// the durable LSN rises from `d` (a sync completed), the mark that sync carried vouches
/// for everything up to `d` (or a segment roll sealed it). Open and a clean close vouch
/// for everything.
struct Vouched {
    durable_seen: Lsn,
    lsn: Lsn,
}

impl Vouched {
    fn observe(&mut self, wal: &Wal<SimStorage>) {
        let durable = wal.durable_lsn();
        if durable > self.durable_seen {
            self.lsn = self.lsn.max(self.durable_seen);
            self.durable_seen = durable;
        }
    }

    fn after_open(wal: &Wal<SimStorage>) -> Vouched {
        Vouched {
            durable_seen: wal.durable_lsn(),
            lsn: wal.last_lsn(),
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let disk = SimDisk::new();
    let mut wal = open(&disk);
    let mut vouched = Vouched::after_open(&wal);
    let mut model = Model {
        records: Vec::new(),
        first_lsn: 1,
        history: 0,
    };
    for op in ops {
        let reopens = matches!(
            op,
            Op::Reopen | Op::Crash { .. } | Op::CrashDuringSync { .. }
        );
        match op {
            Op::Append {
                kind,
                payload_bytes,
            } => append(&mut wal, &mut model, kind, payload_bytes)?,
            Op::Batch {
                records,
                payload_bytes,
            } => {
                for index in 0..records {
                    append(&mut wal, &mut model, index as u8, payload_bytes)?;
                }
            }
            Op::Sync => {
                let durable = wal
                    .sync()
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert_eq!(durable, wal.last_lsn());
            }
            Op::Submit => wal
                .sync_submit()
                .map_err(|error| TestCaseError::fail(error.to_string()))?,
            Op::Wait => {
                wal.sync_wait()
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
            }
            Op::Checkpoint { fraction } => {
                let span = wal.last_lsn().saturating_sub(wal.first_lsn());
                let below = wal.first_lsn() + span * u64::from(fraction) / 255;
                wal.checkpoint(below)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert!(
                    wal.first_lsn() <= below.max(model.first_lsn),
                    "checkpoint recycled records at or above {below}"
                );
            }
            Op::CheckpointStep {
                fraction,
                zero_bytes_max,
            } => {
                let span = wal.last_lsn().saturating_sub(wal.first_lsn());
                let below = wal.first_lsn() + span * u64::from(fraction) / 255;
                wal.checkpoint_step_bounded(below, zero_bytes_max)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert!(
                    wal.first_lsn() <= below.max(model.first_lsn),
                    "checkpoint step recycled records at or above {below}"
                );
            }
            Op::Reopen => {
                let all = wal.last_lsn();
                drop(wal);
                wal = open(&disk);
                // A clean restart keeps everything written, synced or not.
                prop_assert_eq!(wal.last_lsn(), all);
                check_recovered(&wal, &mut model, all)?;
            }
            Op::Crash { seed, flip } => {
                let durable = wal.durable_lsn();
                let first = wal.first_lsn();
                // A clean close (everything durable) vouches for everything.
                let vouched_lsn = if durable == wal.last_lsn() {
                    durable
                } else {
                    vouched.lsn
                };
                drop(wal);
                disk.crash(seed)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                if let Some(flip) = flip {
                    flip_vouched_record(&disk, first, vouched_lsn, flip)?;
                }
                wal = open(&disk);
                check_recovered(&wal, &mut model, durable)?;
                model.history += 1;
            }
            Op::CrashDuringSync { seed } => {
                wal.sync_submit()
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                // Only what was durable before this sync must survive; the sync's own
                // bytes, its sync mark included, count as unsynced.
                let durable = wal.durable_lsn();
                disk.cut_power();
                drop(wal);
                disk.crash(seed)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                wal = open(&disk);
                check_recovered(&wal, &mut model, durable)?;
                model.history += 1;
            }
        }
        if reopens {
            vouched = Vouched::after_open(&wal);
        } else {
            vouched.observe(&wal);
        }
    }
    let durable = wal.durable_lsn();
    drop(wal);
    disk.crash(u64::MAX)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    let wal = open(&disk);
    check_recovered(&wal, &mut model, durable)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    // Proves that after any sequence of appends, syncs, checkpoints and power failures,
    // recovery returns exactly the synced records plus at most a prefix of the unsynced
    // ones, never a record that was not written in the surviving history.
    #[test]
    fn recovery_returns_synced_records_and_a_prefix_of_the_rest(ops in proptest::collection::vec(op_strategy(), 1..OPS_MAX)) {
        run(ops)?;
    }
}

// Proves the fsyncgate discipline: once a sync fails, that call and every later call
// return PreviousIo, and the durable LSN never moves past what really was synced.
#[test]
fn failed_sync_poisons_every_later_call() {
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open_with_storage(disk.storage(), config()).expect("open");
    wal.append(1, b"first").expect("append");
    assert_eq!(wal.sync().expect("sync"), 1);
    disk.fail_syncs_after(0);
    wal.append(1, b"second")
        .expect("append before the failing sync");
    assert!(matches!(wal.sync(), Err(WalError::PreviousIo { .. })));
    assert_eq!(wal.durable_lsn(), 1);
    assert!(matches!(
        wal.append(1, b"third"),
        Err(WalError::PreviousIo { .. })
    ));
    assert!(matches!(wal.sync(), Err(WalError::PreviousIo { .. })));
    assert!(matches!(
        wal.sync_submit(),
        Err(WalError::PreviousIo { .. })
    ));
    assert!(matches!(wal.sync_wait(), Err(WalError::PreviousIo { .. })));
    assert!(matches!(
        wal.checkpoint(2),
        Err(WalError::PreviousIo { .. })
    ));
    assert_eq!(wal.durable_lsn(), 1);
}

// Proves a failure while rolling to a new segment (its header sync) is fatal too.
#[test]
fn failed_sync_during_segment_roll_poisons() {
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open_with_storage(disk.storage(), config()).expect("open");
    disk.fail_syncs_after(0);
    let payload = vec![7u8; 1000];
    let mut outcome = Ok(0);
    for _ in 0..SEGMENT_BYTES / 1000 + 1 {
        outcome = wal.append(2, &payload);
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(outcome, Err(WalError::PreviousIo { .. })),
        "roll should have failed: {outcome:?}"
    );
    assert!(matches!(
        wal.append(2, b"x"),
        Err(WalError::PreviousIo { .. })
    ));
}

// Proves a bit flip inside a segment that is not the last one fails the open, naming
// the file and the byte offset of the damaged record.
#[test]
fn bit_flip_in_an_earlier_segment_fails_open_with_offset() {
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open_with_storage(disk.storage(), config()).expect("open");
    let payload = vec![9u8; 200];
    let mut offsets = Vec::new();
    let mut offset = 4096u64;
    while wal.last_lsn() < 100 {
        let lsn = wal.append(3, &payload).expect("append");
        if lsn <= 10 {
            offsets.push(offset);
            offset += 17 + 200;
        }
    }
    wal.sync().expect("sync");
    drop(wal);
    let first_segment = disk
        .file_names()
        .into_iter()
        .find(|name| name.ends_with(".wal"))
        .expect("a segment");
    // Damage the payload of LSN 5, in the middle of the first segment.
    disk.flip_bit(&first_segment, offsets[4] as usize + 17 + 50, 3)
        .expect("flip");
    match Wal::open_with_storage(disk.storage(), config()) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path.to_str(), Some(first_segment.as_str()));
            assert_eq!(offset, offsets[4]);
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("open accepted a corrupt segment"),
    }
}
