//! An in-memory disk that keeps what was synced apart from what was only written.
//!
//! Modelled on redb's crash-consistency backend. Each file has a `durable` image (what
//! survives a crash for certain) and a `live` image (what the log wrote). `crash` keeps
//! every synced byte and, for every page holding unsynced bytes, picks one outcome: the
//! old bytes, the new bytes, a sector-wise tear of the two, zeros, or garbage. A sync
//! takes effect when it is waited for, so power can be cut while one is in flight
//! (`cut_power`): its bytes then count as unsynced. Sync failures can be injected to test
//! the fsyncgate discipline. The engine's simulator can run its WALs on this too.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;

use super::{SegmentFile, Storage};
use crate::error::WalError;

/// Granularity at which a crash damages unsynced data, as the page cache writes back.
pub const SIM_PAGE_BYTES: usize = 4096;
/// Granularity of a torn page: each sector is either old or new.
pub const SIM_SECTOR_BYTES: usize = 512;

const _: () = assert!(SIM_PAGE_BYTES % SIM_SECTOR_BYTES == 0);

/// Why a simulated-disk request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    /// A crash was requested while a `Wal` still had segments open; drop it first.
    #[error("drop every Wal on this disk before crashing it ({0} segments still open)")]
    SegmentsOpen(usize),
    /// No file with that name.
    #[error("no file named {0}")]
    NoSuchFile(String),
}

struct SimFile {
    durable: Vec<u8>,
    /// What the log wrote; while a segment is open, its own copy is the current one.
    live: Vec<u8>,
    /// `synced[i]` holds when `live[i]` is known to be in `durable[i]`. Kept here (not in
    /// the open segment) so a sync completing in `sync_wait` can set it.
    synced: Vec<bool>,
}

/// A submitted sync: the file, where, and the bytes it writes.
struct PendingSync {
    id: usize,
    start: usize,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct SimImage {
    names: BTreeMap<String, usize>,
    files: Vec<SimFile>,
    segments_open: usize,
    /// Syncs still allowed to succeed; `None` means no fault is armed.
    syncs_left_before_failure: Option<u64>,
    /// The sync submitted and not yet waited for (one at a time, as `Storage` says).
    pending: Option<PendingSync>,
    /// Set by `cut_power`: no sync completes any more until the next `crash`.
    power_cut: bool,
}

/// A shared handle to one simulated disk. Clone it to keep a handle for crashing while a
/// `Wal` runs on `storage()`.
#[derive(Clone, Default)]
pub struct SimDisk(Rc<RefCell<SimImage>>);

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A storage view to open a `Wal` on.
    pub fn storage(&self) -> SimStorage {
        SimStorage { disk: self.clone() }
    }

    /// Makes the next `successes` syncs succeed and every later one fail with EIO.
    pub fn fail_syncs_after(&self, successes: u64) {
        self.0.borrow_mut().syncs_left_before_failure = Some(successes);
    }

    /// Cuts the power while the log still runs: a sync in flight never completes, and
    /// every later sync fails with EIO, until `crash` (drop the `Wal` in between).
    pub fn cut_power(&self) {
        let mut image = self.0.borrow_mut();
        image.power_cut = true;
        image.pending = None;
    }

    /// Loses power: keeps synced bytes, and for each page with unsynced bytes picks an
    /// outcome from `seed` (old, new, torn, zeroed or garbage). Afterwards every file's
    /// live image equals its durable image and the power is back.
    pub fn crash(&self, seed: u64) -> Result<(), SimError> {
        let mut image = self.0.borrow_mut();
        if image.segments_open > 0 {
            return Err(SimError::SegmentsOpen(image.segments_open));
        }
        image.pending = None;
        image.power_cut = false;
        let mut random = SplitMix64(seed);
        for file in &mut image.files {
            crash_file(file, &mut random);
        }
        Ok(())
    }

    /// Flips one bit of a file's durable and live images, as media corruption would.
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) -> Result<(), SimError> {
        let mut image = self.0.borrow_mut();
        let id = *image
            .names
            .get(name)
            .ok_or_else(|| SimError::NoSuchFile(name.to_owned()))?;
        let file = &mut image.files[id];
        let length = file.durable.len();
        if offset >= length {
            return Err(SimError::NoSuchFile(format!(
                "{name} (offset {offset} past {length} bytes)"
            )));
        }
        file.durable[offset] ^= 1 << (bit % 8);
        file.live[offset] = file.durable[offset];
        Ok(())
    }

    /// The durable image of a file: what would survive a crash for certain.
    pub fn durable_bytes(&self, name: &str) -> Result<Vec<u8>, SimError> {
        let image = self.0.borrow();
        let id = *image
            .names
            .get(name)
            .ok_or_else(|| SimError::NoSuchFile(name.to_owned()))?;
        Ok(image.files[id].durable.clone())
    }

    /// The names of all files, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.0.borrow().names.keys().cloned().collect()
    }
}

fn crash_file(file: &mut SimFile, random: &mut SplitMix64) {
    for page_start in (0..file.live.len()).step_by(SIM_PAGE_BYTES) {
        let page = page_start..(page_start + SIM_PAGE_BYTES).min(file.live.len());
        if file.synced[page.clone()].iter().all(|&synced| synced) {
            continue;
        }
        let outcome = random.next() % 5;
        for sector_start in page.clone().step_by(SIM_SECTOR_BYTES) {
            let sector = sector_start..(sector_start + SIM_SECTOR_BYTES).min(page.end);
            let take_new = match outcome {
                0 => false,
                1 => true,
                _ => random.next() % 2 == 0,
            };
            for index in sector {
                if file.synced[index] {
                    continue;
                }
                // Outcomes: 0 old bytes, 1 new bytes, 2 torn by sector, 3 zeros, 4 garbage.
                file.durable[index] = match outcome {
                    0..=2 if take_new => file.live[index],
                    0..=2 => file.durable[index],
                    3 => 0,
                    _ => random.next() as u8,
                };
            }
        }
    }
    file.live.clone_from(&file.durable);
    file.synced.fill(true);
}

/// A tiny deterministic generator, so a crash is reproducible from its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }
}

/// The `Storage` of a `SimDisk`.
pub struct SimStorage {
    disk: SimDisk,
}

fn not_found(name: &str) -> WalError {
    WalError::io(name, "open", io::Error::from(io::ErrorKind::NotFound))
}

impl Storage for SimStorage {
    type Segment = SimSegment;

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from(name)
    }

    fn list(&mut self) -> Result<Vec<String>, WalError> {
        Ok(self.disk.file_names())
    }

    fn create_zeroed(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        if image.names.contains_key(name) {
            return Err(WalError::io(
                name,
                "create",
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let length = bytes as usize;
        let id = image.files.len();
        image.files.push(SimFile {
            durable: vec![0; length],
            live: vec![0; length],
            synced: vec![true; length],
        });
        image.names.insert(name.to_owned(), id);
        Ok(())
    }

    fn create_allocated(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        self.create_zeroed(name, bytes)?;
        let mut image = self.disk.0.borrow_mut();
        let id = image.names[name];
        // Neither the zeros nor the file are durable yet: a crash may leave anything
        // in it (the temporary name makes open remove it).
        image.files[id].synced.fill(false);
        Ok(())
    }

    fn zero_part(
        &mut self,
        name: &str,
        offset: u64,
        bytes_max: u64,
    ) -> Result<Option<u64>, WalError> {
        let mut image = self.disk.0.borrow_mut();
        let id = *image.names.get(name).ok_or_else(|| not_found(name))?;
        let file = &mut image.files[id];
        let length = file.live.len() as u64;
        let start = offset.min(length);
        let end = start.saturating_add(bytes_max).min(length);
        let range = start as usize..end as usize;
        // Not durable yet: a crash may keep old bytes, zeros, or tear the pages.
        file.live[range.clone()].fill(0);
        file.synced[range].fill(false);
        if end < length {
            return Ok(Some(end));
        }
        file.durable.clone_from(&file.live);
        file.synced.fill(true);
        Ok(None)
    }

    fn extend(&mut self, name: &str, bytes: u64) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        let id = *image.names.get(name).ok_or_else(|| not_found(name))?;
        let file = &mut image.files[id];
        let length = (bytes as usize).max(file.live.len());
        file.durable.resize(length, 0);
        file.live.resize(length, 0);
        file.synced.resize(length, true);
        Ok(())
    }

    fn open(&mut self, name: &str) -> Result<SimSegment, WalError> {
        let mut image = self.disk.0.borrow_mut();
        let id = *image.names.get(name).ok_or_else(|| not_found(name))?;
        image.segments_open += 1;
        let file = &image.files[id];
        Ok(SimSegment {
            id,
            live: file.live.clone(),
            disk: self.disk.clone(),
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        let id = image.names.remove(from).ok_or_else(|| not_found(from))?;
        image.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        image.names.remove(name).ok_or_else(|| not_found(name))?;
        Ok(())
    }

    fn sync_submit(&mut self, segment: &mut SimSegment, range: Range<u64>) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        if image.power_cut {
            return Err(sim_eio());
        }
        if let Some(left) = image.syncs_left_before_failure.as_mut() {
            if *left == 0 {
                return Err(sim_eio());
            }
            *left -= 1;
        }
        let range = range.start as usize..range.end as usize;
        image.pending = Some(PendingSync {
            id: segment.id,
            start: range.start,
            bytes: segment.live[range].to_vec(),
        });
        Ok(())
    }

    fn sync_all(&mut self, segment: &mut SimSegment) -> Result<(), WalError> {
        let length = segment.live.len() as u64;
        self.sync(segment, 0..length)
    }

    fn sync_wait(&mut self) -> Result<(), WalError> {
        let mut image = self.disk.0.borrow_mut();
        if image.power_cut {
            return Err(sim_eio());
        }
        let Some(pending) = image.pending.take() else {
            return Ok(());
        };
        let file = &mut image.files[pending.id];
        let range = pending.start..pending.start + pending.bytes.len();
        file.durable[range.clone()].copy_from_slice(&pending.bytes);
        file.synced[range].fill(true);
        Ok(())
    }
}

fn sim_eio() -> WalError {
    WalError::io("sim", "fdatasync", io::Error::from_raw_os_error(libc::EIO))
}

/// An open simulated segment. It hands its live image back to the disk when dropped,
/// which is why the disk can only crash once every segment is closed.
pub struct SimSegment {
    id: usize,
    live: Vec<u8>,
    disk: SimDisk,
}

impl SegmentFile for SimSegment {
    fn bytes(&self) -> &[u8] {
        &self.live
    }

    fn bytes_mut(&mut self, range: Range<u64>) -> &mut [u8] {
        let range = range.start as usize..range.end as usize;
        self.disk.0.borrow_mut().files[self.id].synced[range.clone()].fill(false);
        &mut self.live[range]
    }
}

impl Drop for SimSegment {
    fn drop(&mut self) {
        let mut image = self.disk.0.borrow_mut();
        image.segments_open -= 1;
        let file = &mut image.files[self.id];
        file.live = std::mem::take(&mut self.live);
    }
}
