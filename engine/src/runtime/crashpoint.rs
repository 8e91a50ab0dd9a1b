//! Test-only crash points: `tricommit node --test-crash-at POINT[:N]` aborts the process
//! (as `kill -9` would: nothing is synced or flushed on the way out) at the N-th time the
//! site reaches POINT. The chaos runner (`tricommit chaos`) uses them to kill a
//! coordinator or a participant in a chosen phase of the protocol.
//!
//! Nothing is armed unless a node was started with the flag: an unarmed check is one
//! relaxed atomic load. The hooks are one line each in the site loop (`site.rs`), and
//! they only look at what the state machine already decided to send, so the protocol
//! itself knows nothing of them.
//!
//! The points, for each role:
//! - `after-prepare-sent`: a coordinator handed a PREPARE to its links; a participant its
//!   votes (its PREPARED record is durable before votes leave).
//! - `after-precommit-logged`: a coordinator's PRE-COMMIT round left and its own record of
//!   it is durable (the next completed sync); a participant acknowledged a PRE-COMMIT
//!   (sent only once its PC record is durable).
//! - `after-decision`: a site sent a commit decision (the coordinator's COMMIT; a
//!   participant's DONE after applying one).
//!
//! "Sent" means handed to the transport: the process sleeps `FLUSH_GRACE_MS` before it
//! aborts, so that the transport thread has put the frames on the wire, as a process
//! that dies just after a send would have.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::proto::{Outgoing, Part};

/// How long a crash point waits for the transport to write what was just sent.
pub const FLUSH_GRACE_MS: u64 = 20;
/// The largest N of `POINT:N`.
pub const HITS_MAX: u64 = 1_000_000;

/// Where a node may be told to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CrashPoint {
    AfterPrepareSent = 1,
    AfterPrecommitLogged = 2,
    AfterDecision = 3,
}

impl CrashPoint {
    /// Every point, with its name on the command line.
    pub const ALL: [(CrashPoint, &'static str); 3] = [
        (CrashPoint::AfterPrepareSent, "after-prepare-sent"),
        (CrashPoint::AfterPrecommitLogged, "after-precommit-logged"),
        (CrashPoint::AfterDecision, "after-decision"),
    ];

    /// The point's name on the command line.
    pub fn name(self) -> &'static str {
        CrashPoint::ALL
            .iter()
            .find(|(point, _)| *point == self)
            .map(|(_, name)| *name)
            .expect("every point is listed")
    }
}

/// Parses `POINT` or `POINT:N` (N in 1..=HITS_MAX, default 1).
pub fn parse(text: &str) -> Result<(CrashPoint, u64), String> {
    let (name, hits) = match text.split_once(':') {
        Some((name, hits)) => {
            let hits: u64 = hits
                .parse()
                .map_err(|_| format!("`{hits}` is not a count"))?;
            if !(1..=HITS_MAX).contains(&hits) {
                return Err(format!("the count must be 1..={HITS_MAX}"));
            }
            (name, hits)
        }
        None => (text, 1),
    };
    let names: Vec<&str> = CrashPoint::ALL.iter().map(|(_, name)| *name).collect();
    CrashPoint::ALL
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(point, _)| (*point, hits))
        .ok_or_else(|| format!("unknown crash point `{name}`; known: {}", names.join(", ")))
}

/// The armed point (0: none), the hits left before it fires, and whether a
/// coordinator's PRE-COMMIT left and waits for its sync.
static ARMED: AtomicU8 = AtomicU8::new(0);
static HITS_LEFT: AtomicU64 = AtomicU64::new(0);
static PRECOMMIT_AWAITING_SYNC: AtomicBool = AtomicBool::new(false);

/// Arms `point` to fire at its `hits`-th occurrence (test builds and the chaos runner
/// only: the process aborts there).
pub fn arm(point: CrashPoint, hits: u64) {
    HITS_LEFT.store(hits.max(1), Ordering::Relaxed);
    ARMED.store(point as u8, Ordering::Release);
}

fn armed(point: CrashPoint) -> bool {
    ARMED.load(Ordering::Relaxed) == point as u8
}

/// Counts one occurrence of the armed point; says whether it was the last one.
fn hit() -> bool {
    HITS_LEFT.fetch_sub(1, Ordering::AcqRel) == 1
}

/// Aborts the process once the transport had `FLUSH_GRACE_MS` to write what the site
/// just handed it.
pub fn fire() -> ! {
    std::thread::sleep(std::time::Duration::from_millis(FLUSH_GRACE_MS));
    eprintln!("tricommit: test crash point reached: aborting (--test-crash-at)");
    std::process::abort();
}

/// The site loop calls this with the parts it is about to hand to its links; when it
/// says so, the loop calls [`fire`] once they are handed over.
pub fn due_after(sends: &[Outgoing]) -> bool {
    if ARMED.load(Ordering::Relaxed) == 0 {
        return false;
    }
    for outgoing in sends {
        match &outgoing.part {
            Part::Prepare { .. } | Part::Votes { .. } if armed(CrashPoint::AfterPrepareSent) => {
                return hit();
            }
            Part::Round { pre_commit, .. }
                if armed(CrashPoint::AfterPrecommitLogged) && !pre_commit.is_empty() =>
            {
                PRECOMMIT_AWAITING_SYNC.store(true, Ordering::Relaxed);
            }
            Part::RoundAck { pre_commit, .. }
                if armed(CrashPoint::AfterPrecommitLogged) && !pre_commit.is_empty() =>
            {
                return hit();
            }
            Part::Decide { commit, .. }
                if armed(CrashPoint::AfterDecision) && !commit.is_empty() =>
            {
                return hit();
            }
            Part::Done { decided, .. } if armed(CrashPoint::AfterDecision) && *decided > 0 => {
                return hit();
            }
            _ => {}
        }
    }
    false
}

/// The site loop calls this after a sync of its log completed.
pub fn on_synced() {
    if PRECOMMIT_AWAITING_SYNC.swap(false, Ordering::Relaxed) && hit() {
        fire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts_parse_and_bad_ones_are_refused() {
        // Proves that the flag's syntax is POINT[:N] over the listed names only.
        assert_eq!(
            parse("after-decision").unwrap(),
            (CrashPoint::AfterDecision, 1)
        );
        assert_eq!(
            parse("after-prepare-sent:7").unwrap(),
            (CrashPoint::AfterPrepareSent, 7)
        );
        assert!(parse("after-lunch").unwrap_err().contains("after-decision"));
        assert!(parse("after-decision:0").is_err());
        assert!(parse("after-decision:x").is_err());
        for (point, name) in CrashPoint::ALL {
            assert_eq!(point.name(), name);
        }
    }
}
