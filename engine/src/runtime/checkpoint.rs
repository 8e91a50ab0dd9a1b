//! Online checkpoints of a site's log, and the snapshot files they rely on.
//!
//! A site checkpoints when its log holds more than `EngineConfig::log_segments_max`
//! segments. It runs on the site's own thread, between two turns of its loop, in this
//! order (see `proto::checkpoint` for why the state machine's part is safe):
//!
//! 1. A participant takes its resource manager's snapshot and writes it durably as
//!    `snapshot-<number>.snap` in its log directory: temporary file, fsync, rename,
//!    fsync of the directory. The previous snapshot stays.
//! 2. The state machine appends the checkpoint group (marker `number` and its carried
//!    records); the site writes and syncs it like any forced record.
//! 3. Snapshots older than `number` are removed.
//! 4. The log recycles the segments wholly before the marker, a bounded part per turn of
//!    the site (`Wal::checkpoint_step_bounded`, `RECYCLE_ZERO_BYTES_PER_TURN`): a recycled
//!    segment leaves the log at once and is zero-filled over several turns before it
//!    becomes a spare, so no turn pauses for a whole segment's fill.
//!
//! A crash before the group is durable leaves the previous checkpoint in charge, with
//! its snapshot still on disk; a crash after it leaves the new one in charge. Leftover
//! snapshot files that no complete group names are removed at the next open.
//!
//! A participant whose resource manager takes no snapshots never checkpoints: its log
//! keeps everything its state depends on.
//!
//! Snapshot file format (integers little-endian): `magic b"TRISNAP1" | number u64 |
//! length u64 | length bytes of the resource manager's snapshot | crc32c u32` of every
//! byte before it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::proto::checkpoint::plan;
use crate::proto::{Participant, ProtoConfig, Record, ResourceManager, SiteId};

const SNAPSHOT_MAGIC: [u8; 8] = *b"TRISNAP1";
const SNAPSHOT_HEADER_BYTES: usize = 24;
const SNAPSHOT_CHECKSUM_BYTES: usize = 4;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMPORARY_SUFFIX: &str = ".partial";
/// Digits in a snapshot file's number, so lexical order is numeric order.
const NUMBER_DIGITS: usize = 20;
/// A snapshot file larger than this is refused before it is read (16 GiB: a ledger at
/// `ACCOUNTS_MAX` accounts and the largest reservation table stays far below it).
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 16 << 30;

/// Problems with checkpoints and snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a snapshot of checkpoint {number}: {reason}")]
    Corrupt {
        path: PathBuf,
        number: u64,
        reason: &'static str,
    },
    #[error("{0}")]
    Proto(#[from] crate::proto::ProtoError),
}

/// The file name of checkpoint `number`'s snapshot.
pub fn snapshot_name(number: u64) -> String {
    format!(
        "{SNAPSHOT_PREFIX}{number:0width$}{SNAPSHOT_SUFFIX}",
        width = NUMBER_DIGITS
    )
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != NUMBER_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Wraps a resource manager's snapshot in the file format.
pub fn encode_snapshot_file(number: u64, snapshot: &[u8]) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(SNAPSHOT_HEADER_BYTES + snapshot.len() + SNAPSHOT_CHECKSUM_BYTES);
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    bytes.extend_from_slice(snapshot);
    let checksum = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Checks a snapshot file's bytes (magic, number, length, checksum) and returns the
/// resource manager's snapshot inside.
pub fn decode_snapshot_file(number: u64, bytes: &[u8]) -> Result<&[u8], &'static str> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES + SNAPSHOT_CHECKSUM_BYTES {
        return Err("shorter than a header");
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic");
    }
    let word = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    if word(8) != number {
        return Err("it names another checkpoint");
    }
    let body = bytes.len() - SNAPSHOT_HEADER_BYTES - SNAPSHOT_CHECKSUM_BYTES;
    if word(16) != body as u64 {
        return Err("its length does not match the file");
    }
    let (covered, checksum) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_BYTES);
    let mut raw = [0u8; 4];
    raw.copy_from_slice(checksum);
    if crc32c::crc32c(covered) != u32::from_le_bytes(raw) {
        return Err("checksum mismatch");
    }
    Ok(&covered[SNAPSHOT_HEADER_BYTES..])
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes checkpoint `number`'s snapshot durably: a crash leaves the whole file or no
/// file under its name (at most a stale temporary one, removed at the next open).
pub fn write_snapshot(dir: &Path, number: u64, snapshot: &[u8]) -> Result<(), CheckpointError> {
    let name = snapshot_name(number);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}{TEMPORARY_SUFFIX}"));
    let bytes = encode_snapshot_file(number, snapshot);
    let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(dir))
}

/// Reads and checks checkpoint `number`'s snapshot.
pub fn read_snapshot(dir: &Path, number: u64) -> Result<Vec<u8>, CheckpointError> {
    let path = dir.join(snapshot_name(number));
    let corrupt = |reason| CheckpointError::Corrupt {
        path: path.clone(),
        number,
        reason,
    };
    let length = std::fs::metadata(&path).map_err(io_error(&path))?.len();
    if length > SNAPSHOT_FILE_BYTES_MAX {
        return Err(corrupt("larger than any snapshot"));
    }
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let snapshot = decode_snapshot_file(number, &bytes).map_err(corrupt)?;
    Ok(snapshot.to_vec())
}

/// The snapshot a participant's recovered log starts from: `(number, bytes)` of its
/// last complete checkpoint, or `None` when the log has none.
pub fn snapshot_for<'a>(
    dir: &Path,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<Option<(u64, Vec<u8>)>, CheckpointError> {
    let Some(view) = plan(records)?.checkpoint else {
        return Ok(None);
    };
    Ok(Some((view.number, read_snapshot(dir, view.number)?)))
}

/// Rebuilds a participant from its recovered log and, when the log starts at a
/// checkpoint, that checkpoint's snapshot in `dir`. Returns the machine and the number
/// of the checkpoint in charge. With `clean`, removes the snapshot files that no
/// complete checkpoint names (leftovers of a crash part-way through one); read-only
/// recovery passes `false`.
pub fn recover_participant<R: ResourceManager>(
    dir: &Path,
    config: ProtoConfig,
    me: SiteId,
    rm: R,
    records: &[Record],
    now_us: u64,
    clean: bool,
) -> Result<(Participant<R>, Option<u64>), CheckpointError> {
    let snapshot = snapshot_for(dir, records)?;
    let number = snapshot.as_ref().map(|(number, _)| *number);
    let bytes = snapshot.as_ref().map(|(_, bytes)| bytes.as_slice());
    let participant = Participant::recover_checkpointed(config, me, rm, bytes, records, now_us)?;
    if clean {
        remove_snapshots_except(dir, number)?;
    }
    Ok((participant, number))
}

/// Removes every snapshot file (and temporary one) in `dir` except `keep`'s.
pub fn remove_snapshots_except(dir: &Path, keep: Option<u64>) -> Result<(), CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let stale = match name.strip_suffix(TEMPORARY_SUFFIX) {
            Some(base) => parse_snapshot_name(base).is_some(),
            None => parse_snapshot_name(&name).is_some_and(|number| Some(number) != keep),
        };
        if stale {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// A site's checkpoint policy and bookkeeping.
#[derive(Debug)]
pub struct Checkpointer {
    /// The site's log directory, where its snapshots live.
    pub dir: PathBuf,
    /// Checkpoint once the log holds more segments than this; `None`: never.
    pub log_segments_max: Option<u32>,
    /// The number the next checkpoint uses.
    pub number_next: u64,
    /// The number of the checkpoint in charge, whose snapshot must stay.
    pub number_current: Option<u64>,
    /// Set once a checkpoint found the resource manager without snapshots: never retry.
    pub unsupported: bool,
    /// The LSN of the last record of the last complete checkpoint group, if any.
    pub group_end_lsn: Option<tricommit_wal::Lsn>,
    /// The marker LSN of the last durable group while segments below it remain to be
    /// recycled (one per turn); no new checkpoint starts meanwhile.
    pub recycle_below: Option<tricommit_wal::Lsn>,
}

impl Checkpointer {
    /// A policy that never checkpoints (the state before `Engine::open` sets one).
    pub fn disabled() -> Checkpointer {
        Checkpointer {
            dir: PathBuf::new(),
            log_segments_max: None,
            number_next: 1,
            number_current: None,
            unsupported: false,
            group_end_lsn: None,
            recycle_below: None,
        }
    }

    /// The policy of a site whose log `wal` was just opened and read back as
    /// `records`. A log that starts at a checkpoint resumes where the last site
    /// instance stopped: segments still below its marker (a shutdown does not wait for
    /// the recycling) are recycled over the first turns, and the bound counts from the
    /// end of its group.
    pub fn for_recovered_log(
        dir: &Path,
        log_segments_max: Option<u32>,
        wal: &tricommit_wal::Wal,
        records: &[Record],
    ) -> Result<Checkpointer, CheckpointError> {
        let view = plan(records)?.checkpoint;
        let lsn_of = |index: usize| wal.first_lsn() + index as u64;
        let checkpoint = view.as_ref();
        Ok(Checkpointer {
            dir: dir.to_owned(),
            log_segments_max,
            number_next: crate::proto::checkpoint::number_next(records),
            number_current: checkpoint.map(|view| view.number),
            unsupported: false,
            group_end_lsn: checkpoint.map(|view| lsn_of(view.end_index)),
            recycle_below: checkpoint
                .filter(|_| log_segments_max.is_some())
                .map(|view| lsn_of(view.marker_index)),
        })
    }

    /// Whether `wal` must be checkpointed now: it holds more segments than the bound,
    /// and, after a checkpoint, at least the bound's worth of segments begin after that
    /// checkpoint's group. The second condition only matters when a group itself spans
    /// segments (a site holding very many batches, or tiny segments): the log is then
    /// bounded by the group plus the bound, rather than checkpointing after every turn,
    /// and a reopen does not checkpoint again a log it just checkpointed.
    pub fn due(&self, wal: &tricommit_wal::Wal) -> bool {
        if self.unsupported || self.recycle_below.is_some() {
            return false;
        }
        let Some(max) = self.log_segments_max else {
            return false;
        };
        let grown = match self.group_end_lsn {
            Some(end) => wal.segments_starting_after(end) >= max,
            None => true,
        };
        wal.segment_count() > max && grown
    }
}

/// How long one checkpoint held up its site, for the counters.
pub struct PauseTimer(Instant);

impl PauseTimer {
    pub fn start() -> PauseTimer {
        PauseTimer(Instant::now())
    }

    pub fn elapsed_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that a snapshot file round-trips and that every single-byte change, every
    // cut and a wrong number are refused.
    #[test]
    fn snapshot_files_round_trip_and_refuse_damage() {
        let snapshot: Vec<u8> = (0..100u8).collect();
        let bytes = encode_snapshot_file(7, &snapshot);
        assert_eq!(decode_snapshot_file(7, &bytes), Ok(&snapshot[..]));
        assert!(decode_snapshot_file(8, &bytes).is_err());
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(
                decode_snapshot_file(7, &damaged).is_err(),
                "flip at {index}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(decode_snapshot_file(7, &bytes[..cut]).is_err(), "cut {cut}");
        }
    }

    // Proves that written snapshots read back, that a damaged file is a typed error
    // naming the file, and that cleaning keeps only the snapshot in charge.
    #[test]
    fn snapshot_files_on_disk() {
        let dir = tempfile::tempdir().expect("temporary directory");
        write_snapshot(dir.path(), 1, b"one").expect("write 1");
        write_snapshot(dir.path(), 2, b"two").expect("write 2");
        let partial = format!("{}{TEMPORARY_SUFFIX}", snapshot_name(3));
        std::fs::write(dir.path().join(partial), b"x").expect("write");
        assert_eq!(read_snapshot(dir.path(), 2).expect("read 2"), b"two");
        let path = dir.path().join(snapshot_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[SNAPSHOT_HEADER_BYTES] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        assert!(matches!(
            read_snapshot(dir.path(), 1),
            Err(CheckpointError::Corrupt { number: 1, .. })
        ));
        remove_snapshots_except(dir.path(), Some(2)).expect("clean");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        assert_eq!(names, vec![snapshot_name(2)]);
    }
}
