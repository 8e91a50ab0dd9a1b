//! Checkpoints by carry-forward: how a site's log is cut without losing what recovery
//! needs, and how recovery finds where to start.
//!
//! A site cannot wait for a low-water mark ("every batch below this LSN is final and
//! forgotten"): batches touched by recovery, with read-only votes or unknown to some
//! site are never retired, so such a mark can stay stuck forever. Instead a checkpoint
//! *carries forward* the state: the machine appends a [`Record::Checkpoint`] marker and,
//! right after it, one [`Record::CarriedBatch`] for every batch it holds in memory
//! (descriptor, `last_elected` and its runner, every transaction's state and
//! `last_attempt`, a participant's no votes) and its retired batch ranges
//! ([`Record::CarriedRetired`]). Recovery from the marker on rebuilds exactly the state
//! the machine held when it wrote the marker, so once the group is durable every
//! record before the marker may be dropped.
//!
//! # The invariant for the resource manager
//! A participant's resource-manager state comes from a snapshot taken at the same
//! instant as the carried records (the driver calls [`ResourceManager::snapshot`] and
//! `Participant::checkpoint` back to back on the site's thread, with no event in
//! between). So the snapshot holds **exactly the effects of every record before the
//! marker** (the reservations of the carried batches that are still open, and the
//! postings of everything decided before it) and **none of the records after it**.
//! Recovery therefore restores the snapshot, rebuilds the carried batches *without*
//! calling the resource manager (their `Prepared` effects are in the snapshot already:
//! replaying them would double the reservations), and then replays the records after
//! the group through the resource manager as usual. Each effect is applied once.
//!
//! # Crash safety
//! The driver writes the snapshot durably *before* it appends the marker, and recycles
//! segments only once the whole group is durable. A crash part-way leaves either an
//! incomplete group (fewer carried records than the marker announces; [`plan`] ignores
//! it, and the previous checkpoint, whose snapshot the driver keeps until then, still
//! rules) or a complete one.
//!
//! [`ResourceManager::snapshot`]: super::rm::ResourceManager::snapshot

use super::member::{Log, Member};
use super::record::Record;
use super::types::{AppendSeq, BatchId, BatchMap, RetiredSet};
use super::Output;
use super::ProtoError;

/// The most retired ranges one `CarriedRetired` record holds (16 bytes each), so that
/// a long retired history is split into records far below any WAL record bound.
pub const CARRIED_RANGES_PER_RECORD_MAX: usize = 64;

/// The last complete checkpoint group of a log.
#[derive(Debug)]
pub struct CheckpointView<'a> {
    /// The checkpoint's number (a participant's snapshot carries the same one).
    pub number: u64,
    /// A coordinator replica's incarnation when it wrote the marker.
    pub incarnation: u32,
    /// The carried records, in order.
    pub carried: Vec<&'a Record>,
    /// Where the marker and the group's last record are in the records given to
    /// [`plan`] (a driver turns them into LSNs).
    pub marker_index: usize,
    pub end_index: usize,
}

/// Where recovery starts: the last complete checkpoint, if any, and the records to
/// replay after it (the whole log if there is none), incomplete groups left out.
#[derive(Debug)]
pub struct LogPlan<'a> {
    pub checkpoint: Option<CheckpointView<'a>>,
    pub tail: Vec<&'a Record>,
}

fn is_carried(record: &Record) -> bool {
    matches!(
        record,
        Record::CarriedBatch { .. } | Record::CarriedRetired { .. } | Record::CarriedIds { .. }
    )
}

/// The number of carried records following the marker at `index` when the group is
/// complete, else `None`.
fn complete_group(records: &[&Record], index: usize) -> Option<usize> {
    let Record::Checkpoint { records: count, .. } = records[index] else {
        return None;
    };
    let count = *count as usize;
    let group = records.get(index + 1..index + 1 + count)?;
    group
        .iter()
        .all(|record| is_carried(record))
        .then_some(count)
}

/// Appends a checkpoint group into `out` and asks for it to be forced: the marker
/// numbered `number`, then one `CarriedBatch` per batch of `batches` (in id order) and
/// the retired ranges. Returns the marker's sequence number. Both roles write their
/// groups with it; `member` picks each entry's batch state.
pub(crate) fn append_group<V>(
    log: &mut Log,
    number: u64,
    incarnation: u32,
    batches: &BatchMap<V>,
    member: impl Fn(&V) -> &Member,
    retired: &RetiredSet,
    out: &mut Output,
) -> AppendSeq {
    append_group_with(
        log,
        number,
        incarnation,
        batches,
        member,
        retired,
        Vec::new(),
        out,
    )
}

/// [`append_group`], with `extra` carried records after the retired ranges (a
/// participant's transaction-id index, [`Record::CarriedIds`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_group_with<V>(
    log: &mut Log,
    number: u64,
    incarnation: u32,
    batches: &BatchMap<V>,
    member: impl Fn(&V) -> &Member,
    retired: &RetiredSet,
    extra: Vec<Record>,
    out: &mut Output,
) -> AppendSeq {
    debug_assert!(extra.iter().all(is_carried));
    let mut ids: Vec<BatchId> = batches.keys().copied().collect();
    ids.sort_unstable();
    let ranges: Vec<(u64, u64)> = retired.range_list().collect();
    let chunks = ranges.chunks(CARRIED_RANGES_PER_RECORD_MAX);
    let marker = Record::Checkpoint {
        number,
        incarnation,
        records: (ids.len() + chunks.len() + extra.len()) as u32,
    };
    let seq = log.append(marker, out);
    for id in ids {
        if let Some(entry) = batches.get(&id) {
            log.append(member(entry).carried(), out);
        }
    }
    for chunk in chunks {
        let record = Record::CarriedRetired {
            ranges: chunk.to_vec(),
        };
        log.append(record, out);
    }
    for record in extra {
        log.append(record, out);
    }
    log.force(out);
    AppendSeq(seq)
}

/// Splits recovered records (in log order) at the last complete checkpoint group.
///
/// Carried records after an incomplete marker belong to it and are skipped with it: a
/// crash cut that group, and the site wrote new records after restarting. Carried
/// records at the very start of the log are the end of an older group whose marker a
/// later checkpoint recycled with its segment (a group may span two segments); a later
/// complete group must then exist. Any other carried record that follows no marker is
/// a damaged log.
pub fn plan<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<LogPlan<'a>, ProtoError> {
    let records: Vec<&Record> = records.into_iter().collect();
    let mut skip = vec![false; records.len()];
    let mut last_complete: Option<(usize, usize)> = None;
    let orphans = records
        .iter()
        .take_while(|record| is_carried(record))
        .count();
    skip[..orphans].fill(true);
    let mut index = orphans;
    while index < records.len() {
        match records[index] {
            Record::Checkpoint { .. } => {
                skip[index] = true;
                let carried = match complete_group(&records, index) {
                    Some(count) => {
                        last_complete = Some((index, count));
                        count
                    }
                    None => records[index + 1..]
                        .iter()
                        .take_while(|record| is_carried(record))
                        .count(),
                };
                skip[index + 1..index + 1 + carried].fill(true);
                index += 1 + carried;
            }
            record if is_carried(record) => {
                return Err(ProtoError::BadLog("carried record outside a checkpoint"));
            }
            _ => index += 1,
        }
    }
    let (first_tail, checkpoint) = match last_complete {
        None if orphans > 0 => {
            return Err(ProtoError::BadLog(
                "the log starts inside a checkpoint group and holds no complete one",
            ));
        }
        None => (0, None),
        Some((at, count)) => {
            let Record::Checkpoint {
                number,
                incarnation,
                ..
            } = records[at]
            else {
                return Err(ProtoError::BadLog("checkpoint group without its marker"));
            };
            let view = CheckpointView {
                number: *number,
                incarnation: *incarnation,
                carried: records[at + 1..at + 1 + count].to_vec(),
                marker_index: at,
                end_index: at + count,
            };
            (at + 1 + count, Some(view))
        }
    };
    let tail = records[first_tail..]
        .iter()
        .zip(&skip[first_tail..])
        .filter(|(_, skipped)| !**skipped)
        .map(|(record, _)| *record)
        .collect();
    Ok(LogPlan { checkpoint, tail })
}

/// The number the next checkpoint of a site whose log holds `records` must use: above
/// every marker in the log, complete or not, so that a number never names two states.
pub fn number_next<'a>(records: impl IntoIterator<Item = &'a Record>) -> u64 {
    records
        .into_iter()
        .filter_map(|record| match record {
            Record::Checkpoint { number, .. } => Some(*number),
            _ => None,
        })
        .max()
        .map_or(1, |number| number + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(number: u64, records: u32) -> Record {
        Record::Checkpoint {
            number,
            incarnation: 2,
            records,
        }
    }

    fn retired() -> Record {
        Record::CarriedRetired {
            ranges: vec![(1, 2)],
        }
    }

    fn incarnation(number: u32) -> Record {
        Record::Incarnation { number }
    }

    // Proves that recovery starts after the last complete group, skips an incomplete
    // group wherever it lies, and numbers the next checkpoint above every marker.
    #[test]
    fn plan_starts_at_the_last_complete_group() {
        let log = [
            incarnation(1),
            marker(1, 1),
            retired(),
            incarnation(2),
            marker(2, 2),
            retired(), // Cut short: one of two carried records survived.
            incarnation(3),
        ];
        let plan = plan(&log).expect("a well-formed log");
        let view = plan.checkpoint.expect("checkpoint 1 is complete");
        assert_eq!(view.number, 1);
        assert_eq!(view.carried, vec![&log[2]]);
        assert_eq!(plan.tail, vec![&log[3], &log[6]]);
        assert_eq!(number_next(&log), 3);
    }

    // Proves that a log without a complete group is replayed whole, minus the cut one.
    #[test]
    fn plan_without_a_complete_group_replays_everything() {
        let log = [incarnation(1), incarnation(2), marker(1, 3), retired()];
        let plan = plan(&log).expect("a well-formed log");
        assert!(plan.checkpoint.is_none());
        assert_eq!(plan.tail, vec![&log[0], &log[1]]);
        assert_eq!(number_next(&[]), 1);
    }

    // Proves that a carried record with no marker before it is a damaged log, unless
    // it opens the log and a complete group follows (the rest of a group whose marker
    // was recycled with its segment by that later checkpoint).
    #[test]
    fn a_stray_carried_record_is_bad_log() {
        let log = [incarnation(1), retired()];
        assert!(matches!(plan(&log), Err(ProtoError::BadLog(_))));
        let log = [retired(), incarnation(1)];
        assert!(matches!(plan(&log), Err(ProtoError::BadLog(_))));
        let log = [
            retired(),
            retired(),
            incarnation(1),
            marker(4, 1),
            retired(),
        ];
        let plan = plan(&log).expect("orphans before a complete group");
        assert_eq!(plan.checkpoint.map(|view| view.number), Some(4));
        assert!(plan.tail.is_empty());
        assert_eq!(number_next(&log), 5);
    }
}
