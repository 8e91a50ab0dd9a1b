//! The replica's vote guard: no vote reaches a coordinator unless its participant
//! signed it, and two different signed votes of one participant for one batch become
//! evidence.
//!
//! A site driver runs every frame it receives through [`VoteGuard::admit`] before the
//! state machine sees it:
//! - a `SignedVotes` part (tag 13) is verified with the sender's public key; a good one
//!   becomes the plain `Votes` part the coordinator counts, and its compact proof is
//!   forwarded to every other replica (tag 14), once per batch and participant;
//! - a plain `Votes` part, a bad signature, a vote signed by another site than its
//!   sender, and any vote of a participant with evidence in force are dropped and
//!   counted: to the coordinator they are a missing vote, which aborts at the vote
//!   timeout and tells the silent participant so (safe). Turning a blocked vote into
//!   a no would abort sooner, but the coordinator sends no decision to a no voter
//!   (presumed abort) while the participant really holds the transaction prepared;
//!   it would stay in doubt until its own recovery asked;
//! - a forwarded proof is compared with what this replica holds for that batch and
//!   participant. Only a *different* digest costs a signature check (forwarded proofs
//!   with the same digest are the common case and cost a map lookup).
//!
//! A conflict whose two signatures verify is an equivocation: both proofs go to every
//! other replica (the opener may hold only the vote it was told), the evidence is written
//! to `evidence/` next to the replica's log, counted, and the participant's votes are
//! refused from then on, until an operator clears it (`tricommit evidence clear`
//! moves the file away; the guard notices within [`FLAG_RECHECK_MS`]). The flag is
//! durable: a restarted replica reads its evidence directory.
//!
//! Memory is bounded: the guard remembers at most [`SEEN_VOTES_MAX`] (batch,
//! participant) proofs, dropping the lowest batch ids first; an equivocation on a batch
//! older than that window goes unseen by this replica (the window covers many seconds of
//! batches at full load, far longer than a batch stays open).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use super::evidence::{in_force, Evidence};
use super::VoteProof;
use crate::proto::{BatchId, Part, SiteId};

/// (batch, participant) proofs a guard remembers.
pub const SEEN_VOTES_MAX: usize = 1 << 16;
/// How often a guard looks whether an operator cleared the evidence that blocks a
/// participant, at most (only while that participant's votes keep arriving).
pub const FLAG_RECHECK_MS: u64 = 200;

/// What a guard counted; shared, so a node or an engine can report it (the metrics
/// exporter reads these).
#[derive(Debug, Default)]
pub struct VoteStats {
    /// Signed votes that verified and went on to the coordinator.
    pub votes_verified: AtomicU64,
    /// Votes dropped: bad signature, unknown key, or signed by another site.
    pub votes_refused_signature: AtomicU64,
    /// Plain votes dropped (this replica counts signed votes only).
    pub votes_refused_unsigned: AtomicU64,
    /// Votes dropped because evidence against their participant is in force.
    pub votes_refused_flagged: AtomicU64,
    /// Proofs sent to the other replicas.
    pub proofs_forwarded: AtomicU64,
    /// Equivocations found (two different valid signatures, one batch, one participant).
    pub equivocations: AtomicU64,
    /// Evidence files written.
    pub evidence_files: AtomicU64,
    /// Evidence files that could not be written (the participant is still blocked).
    pub evidence_write_errors: AtomicU64,
}

impl VoteStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One remembered proof.
struct Seen {
    proof: VoteProof,
    /// Whether its signature was checked (forwarded proofs are checked only on conflict).
    verified: bool,
    /// Whether this replica forwarded a proof for this batch and participant.
    forwarded: bool,
    /// Whether this slot already produced an equivocation (counted once).
    conflicted: bool,
}

/// Evidence in force against one participant.
struct Flag {
    file: PathBuf,
    checked: Instant,
}

/// A replica's verifier (see the module documentation).
pub struct VoteGuard {
    cluster_id: u64,
    me: SiteId,
    /// Site names by id (evidence names the participant and the finder).
    names: Vec<String>,
    /// Public keys by site id; `None` for sites that do not vote (replicas).
    keys: Vec<Option<VerifyingKey>>,
    replicas: Vec<SiteId>,
    seen: BTreeMap<(BatchId, SiteId), Seen>,
    flagged: BTreeMap<SiteId, Flag>,
    evidence_dir: PathBuf,
    stats: Arc<VoteStats>,
    /// Called for every equivocation found: `(batch, participant)`.
    on_equivocation: Option<Box<dyn Fn(BatchId, SiteId) + Send>>,
    /// Proofs to send every other replica at the end of this `admit`.
    to_forward: Vec<VoteProof>,
}

impl VoteGuard {
    /// The guard of replica `me`: `names` and `keys` are indexed by site id, and
    /// `evidence_dir` is `<replica data dir>/evidence` (read now for evidence in force).
    pub fn new(
        cluster_id: u64,
        me: SiteId,
        names: Vec<String>,
        keys: Vec<Option<VerifyingKey>>,
        replicas: Vec<SiteId>,
        evidence_dir: PathBuf,
        stats: Arc<VoteStats>,
    ) -> VoteGuard {
        let mut guard = VoteGuard {
            cluster_id,
            me,
            names,
            keys,
            replicas,
            seen: BTreeMap::new(),
            flagged: BTreeMap::new(),
            evidence_dir,
            stats,
            on_equivocation: None,
            to_forward: Vec::new(),
        };
        for (name, file) in in_force(&guard.evidence_dir) {
            if let Some(site) = guard.names.iter().position(|known| *known == name) {
                let checked = Instant::now();
                guard
                    .flagged
                    .insert(SiteId(site as u8), Flag { file, checked });
            }
        }
        guard
    }

    /// Calls `hook(batch, participant)` for every equivocation found (for a metrics
    /// registry).
    pub fn on_equivocation(&mut self, hook: Box<dyn Fn(BatchId, SiteId) + Send>) {
        self.on_equivocation = Some(hook);
    }

    /// Counts every equivocation found into `metrics` too
    /// (`tricommit_equivocation_evidence`).
    pub fn count_into(&mut self, metrics: Arc<crate::metrics::EngineMetrics>) {
        self.on_equivocation(Box::new(move |batch, participant| {
            metrics.record_equivocation_evidence(batch, participant);
        }));
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<VoteStats> {
        &self.stats
    }

    /// Whether evidence against `participant` is in force here.
    pub fn is_flagged(&self, participant: SiteId) -> bool {
        self.flagged.contains_key(&participant)
    }

    /// Filters one frame from `from` in place (see the module documentation); proofs
    /// to forward are appended to `forward` as `(replica, part)`.
    pub fn admit(
        &mut self,
        from: SiteId,
        parts: &mut Vec<Part>,
        forward: &mut Vec<(SiteId, Part)>,
    ) {
        if !parts.iter().any(|part| {
            matches!(
                part,
                Part::Votes { .. } | Part::SignedVotes(_) | Part::VoteProof(_)
            )
        }) {
            return;
        }
        let taken = std::mem::take(parts);
        for part in taken {
            match part {
                Part::Votes { .. } => VoteStats::bump(&self.stats.votes_refused_unsigned),
                Part::SignedVotes(signed) => {
                    if let Some(votes) = self.admit_signed(from, &signed) {
                        parts.push(votes);
                    }
                }
                Part::VoteProof(proof) => self.admit_forwarded(from, *proof),
                other => parts.push(other),
            }
        }
        for proof in self.to_forward.drain(..) {
            for &replica in &self.replicas {
                if replica != self.me {
                    forward.push((replica, Part::VoteProof(Arc::new(proof))));
                    VoteStats::bump(&self.stats.proofs_forwarded);
                }
            }
        }
    }

    fn key_of(&self, site: SiteId) -> Option<VerifyingKey> {
        self.keys.get(site.0 as usize).copied().flatten()
    }

    fn admit_signed(&mut self, from: SiteId, signed: &super::SignedVotes) -> Option<Part> {
        let key = self.key_of(from).filter(|_| signed.participant == from);
        let Some(key) = key else {
            VoteStats::bump(&self.stats.votes_refused_signature);
            return None;
        };
        let proof = signed.proof();
        if proof.verify(self.cluster_id, &key).is_err() {
            VoteStats::bump(&self.stats.votes_refused_signature);
            return None;
        }
        if self.still_flagged(from) {
            VoteStats::bump(&self.stats.votes_refused_flagged);
            return None;
        }
        let first_direct = self.record(proof, true, &key);
        if self.is_flagged(from) {
            // This very vote contradicts one this replica held.
            VoteStats::bump(&self.stats.votes_refused_flagged);
            return None;
        }
        if first_direct {
            self.to_forward.push(proof);
        }
        VoteStats::bump(&self.stats.votes_verified);
        Some(signed.to_votes())
    }

    fn admit_forwarded(&mut self, from: SiteId, proof: VoteProof) {
        if !self.replicas.contains(&from) {
            return;
        }
        let Some(key) = self.key_of(proof.participant) else {
            return;
        };
        self.record(proof, false, &key);
    }

    /// Remembers `proof` (already verified when `verified`), and turns a conflict with
    /// a valid remembered proof into evidence. Returns whether this was the first
    /// direct (verified, from the participant) proof for its batch and participant.
    fn record(&mut self, proof: VoteProof, verified: bool, key: &VerifyingKey) -> bool {
        let slot = (proof.batch, proof.participant);
        let cluster_id = self.cluster_id;
        let Some(held) = self.seen.get_mut(&slot) else {
            self.seen.insert(
                slot,
                Seen {
                    proof,
                    verified,
                    forwarded: verified,
                    conflicted: false,
                },
            );
            while self.seen.len() > SEEN_VOTES_MAX {
                self.seen.pop_first();
            }
            return verified;
        };
        if held.conflicted {
            // Evidence for this slot exists already (ours, or both proofs came back
            // from a replica we sent them to): nothing new.
            return false;
        }
        if held.proof.digest == proof.digest {
            held.verified |= verified;
            let first_direct = verified && !held.forwarded;
            held.forwarded |= verified;
            return first_direct;
        }
        // A conflict: both statements must verify to be evidence.
        let held_valid = held.verified || held.proof.verify(cluster_id, key).is_ok();
        let new_valid = verified || proof.verify(cluster_id, key).is_ok();
        match (held_valid, new_valid) {
            (true, true) => {
                held.conflicted = true;
                let held_proof = held.proof;
                self.equivocation(held_proof, proof, key);
                false
            }
            (false, true) => {
                // The remembered one was a forgery someone forwarded: replace it.
                *held = Seen {
                    proof,
                    verified: true,
                    forwarded: verified,
                    conflicted: false,
                };
                verified
            }
            _ => false,
        }
    }

    fn equivocation(&mut self, first: VoteProof, second: VoteProof, key: &VerifyingKey) {
        VoteStats::bump(&self.stats.equivocations);
        if let Some(hook) = &self.on_equivocation {
            hook(first.batch, first.participant);
        }
        let participant = first.participant;
        if self.flagged.contains_key(&participant) {
            // Evidence against it is in force already: one file per clearing is enough.
            return;
        }
        // Every other replica must see both statements too: the one that opened the
        // batch may hold only the vote it was told (once flagged here, this replica
        // forwards nothing more of this participant's votes).
        self.to_forward.push(first);
        self.to_forward.push(second);
        let evidence = Evidence {
            cluster_id: self.cluster_id,
            participant: self.name_of(participant),
            public_key: *key,
            first,
            second,
            seen_by: self.name_of(self.me),
        };
        let file = match evidence.write_into(&self.evidence_dir) {
            Ok(file) => {
                VoteStats::bump(&self.stats.evidence_files);
                file
            }
            Err(_) => {
                // Still refuse its votes: the proof is in memory until a restart.
                VoteStats::bump(&self.stats.evidence_write_errors);
                self.evidence_dir.join(evidence.file_name())
            }
        };
        let checked = Instant::now();
        self.flagged.insert(participant, Flag { file, checked });
    }

    fn name_of(&self, site: SiteId) -> String {
        self.names
            .get(site.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("site-{}", site.0))
    }

    /// Whether evidence against `participant` is still in force, looking at the
    /// evidence directory again once [`FLAG_RECHECK_MS`] have passed since the last look.
    fn still_flagged(&mut self, participant: SiteId) -> bool {
        let Some(flag) = self.flagged.get_mut(&participant) else {
            return false;
        };
        if flag.checked.elapsed() < Duration::from_millis(FLAG_RECHECK_MS) {
            return true;
        }
        flag.checked = Instant::now();
        if flag.file.exists() {
            return true;
        }
        let name = self.name_of(participant);
        match in_force(&self.evidence_dir)
            .into_iter()
            .find(|(flagged, _)| *flagged == name)
        {
            Some((_, file)) => {
                if let Some(flag) = self.flagged.get_mut(&participant) {
                    flag.file = file;
                }
                true
            }
            None => {
                self.flagged.remove(&participant);
                // Votes it cast while blocked may be remembered: a vote that agrees
                // with them is no conflict, and one that differs is evidence again.
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Reason, TxnSet};
    use crate::sign::{Byzantine, Signer};
    use ed25519_dalek::SigningKey;
    use std::collections::BTreeMap as Map;

    const CLUSTER: u64 = 5;
    const P: SiteId = SiteId(2);

    fn guard(me: SiteId, dir: &std::path::Path, key: VerifyingKey) -> VoteGuard {
        let names = vec![
            "replica-0".into(),
            "replica-1".into(),
            "participant-0".into(),
        ];
        VoteGuard::new(
            CLUSTER,
            me,
            names,
            vec![None, None, Some(key)],
            vec![SiteId(0), SiteId(1)],
            dir.to_owned(),
            Arc::default(),
        )
    }

    fn frames_from(signer: &Signer, batch: u64) -> Map<SiteId, Vec<Part>> {
        let part = Part::Votes {
            batch: BatchId(batch),
            yes: TxnSet::full(2),
            read_only: TxnSet::empty(2),
            no: Vec::new(),
            held: Vec::new(),
        };
        let mut frames = Map::from([(SiteId(0), vec![part])]);
        signer.seal(&mut frames);
        frames
    }

    #[test]
    fn only_signed_votes_of_their_sender_are_counted() {
        // Proves that a guard passes a verified vote on as plain votes and forwards its
        // proof, and drops unsigned votes, votes relayed by another site and votes
        // signed with another key.
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let signer = Signer::new(CLUSTER, P, key.clone(), vec![SiteId(0)], None);
        let mut guard = guard(SiteId(0), dir.path(), key.verifying_key());
        let mut parts = frames_from(&signer, 1).remove(&SiteId(0)).unwrap();
        let mut forward = Vec::new();
        guard.admit(P, &mut parts, &mut forward);
        assert!(
            matches!(parts.as_slice(), [Part::Votes { .. }]),
            "{parts:?}"
        );
        assert_eq!(forward.len(), 1);
        assert_eq!(forward[0].0, SiteId(1));

        let mut relayed = frames_from(&signer, 2).remove(&SiteId(0)).unwrap();
        guard.admit(SiteId(1), &mut relayed, &mut forward);
        assert!(relayed.is_empty());
        let impostor = Signer::new(CLUSTER, P, SigningKey::from_bytes(&[4; 32]), vec![], None);
        let mut forged = frames_from(&impostor, 3).remove(&SiteId(0)).unwrap();
        guard.admit(P, &mut forged, &mut forward);
        assert!(forged.is_empty());
        let mut plain = vec![Part::Votes {
            batch: BatchId(4),
            yes: TxnSet::full(1),
            read_only: TxnSet::empty(1),
            no: vec![(0, Reason(1))],
            held: Vec::new(),
        }];
        guard.admit(P, &mut plain, &mut forward);
        assert!(plain.is_empty());
        let stats = guard.stats();
        assert_eq!(stats.votes_verified.load(Ordering::Relaxed), 1);
        assert_eq!(stats.votes_refused_signature.load(Ordering::Relaxed), 2);
        assert_eq!(stats.votes_refused_unsigned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_equivocation_becomes_evidence_and_blocks_until_cleared() {
        // Proves the whole path: a Byzantine participant's two votes meet through a
        // forwarded proof, the evidence file verifies, the participant's next votes are
        // refused, a restarted guard still refuses them, and clearing lifts the block.
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let liar = Signer::new(
            CLUSTER,
            P,
            key.clone(),
            vec![SiteId(0), SiteId(1)],
            Some(Byzantine::Equivocate),
        );
        let public = key.verifying_key();
        let mut frames = frames_from(&liar, 7);
        let (dir0, dir1) = (dir.path().join("r0"), dir.path().join("r1"));
        let mut guard0 = guard(SiteId(0), &dir0, public);
        let mut guard1 = guard(SiteId(1), &dir1, public);
        let (mut to_1, mut to_0) = (Vec::new(), Vec::new());
        let mut parts0 = frames.remove(&SiteId(0)).unwrap();
        let mut parts1 = frames.remove(&SiteId(1)).unwrap();
        guard0.admit(P, &mut parts0, &mut to_1);
        guard1.admit(P, &mut parts1, &mut to_0);
        assert_eq!(parts0.len() + parts1.len(), 2, "each alone looks honest");
        let mut forwarded: Vec<Part> = to_1.into_iter().map(|(_, part)| part).collect();
        let mut back = Vec::new();
        guard1.admit(SiteId(0), &mut forwarded, &mut back);
        assert!(forwarded.is_empty(), "proofs never reach the machine");
        assert!(guard1.is_flagged(P));
        // Replica 1 sends both statements on; replica 0 (which counted the yes) and
        // the proof it got from replica 1 before (to_0) agree: it is blocked too.
        let mut to_replica_0: Vec<Part> = to_0
            .into_iter()
            .chain(back)
            .filter(|(to, _)| *to == SiteId(0))
            .map(|(_, part)| part)
            .collect();
        assert_eq!(to_replica_0.len(), 1 + 2);
        let mut echo = Vec::new();
        guard0.admit(SiteId(1), &mut to_replica_0, &mut echo);
        assert!(guard0.is_flagged(P), "the opener is blocked too");
        assert_eq!(guard0.stats().equivocations.load(Ordering::Relaxed), 1);
        let mut echoed: Vec<Part> = echo.into_iter().map(|(_, part)| part).collect();
        guard1.admit(SiteId(0), &mut echoed, &mut Vec::new());
        assert_eq!(
            guard1.stats().equivocations.load(Ordering::Relaxed),
            1,
            "an echo of the same pair is not a second equivocation"
        );
        let files = in_force(&dir1);
        assert_eq!(files.len(), 1);
        Evidence::read(&files[0].1)
            .unwrap()
            .verify(CLUSTER, &public)
            .unwrap();
        assert_eq!(guard1.stats().equivocations.load(Ordering::Relaxed), 1);

        let honest = Signer::new(CLUSTER, P, key, vec![SiteId(1)], None);
        let mut next = frames_from(&honest, 8).remove(&SiteId(0)).unwrap();
        guard1.admit(P, &mut next, &mut Vec::new());
        assert!(next.is_empty(), "blocked while the evidence is in force");
        let mut restarted = guard(SiteId(1), &dir1, public);
        assert!(restarted.is_flagged(P), "the block survives a restart");

        std::fs::remove_file(&files[0].1).unwrap();
        restarted.flagged.get_mut(&P).unwrap().checked -= Duration::from_secs(1);
        let mut again = frames_from(&honest, 9).remove(&SiteId(0)).unwrap();
        restarted.admit(P, &mut again, &mut Vec::new());
        assert!(
            matches!(again.as_slice(), [Part::Votes { yes, .. }] if !yes.is_empty()),
            "cleared: votes count again: {again:?}"
        );
    }
}
