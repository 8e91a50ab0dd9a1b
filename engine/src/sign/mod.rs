//! Signed votes (DESIGN §7, issue 11): each participant signs its votes once per batch
//! with its ed25519 key, so that a replica counts only votes the participant provably
//! cast, and two different signed votes for one batch (an equivocation) are evidence
//! anyone can check offline.
//!
//! What is signed (`docs/wire-format.md`, "Signed votes"):
//!
//! ```text
//! digest  = SHA-256("tricommit-votes-v1" | batch u64 | participant u8
//!                   | yes set | read_only set | no count u32 | no × (index u32, reason u16))
//! message = "tricommit-vote-sig-v1" | cluster_id u64 | batch u64 | participant u8 | digest
//! signature = ed25519(participant's key, message)       (64 bytes, RFC 8032)
//! ```
//!
//! Sets are encoded as everywhere on the wire (`universe u32 | words u64…`). The
//! signature covers the cluster id, so a vote of one cluster is never evidence in
//! another. Everything here is pure: no I/O, no clock; [`keys`] reads and writes key
//! files, [`evidence`] the evidence files, [`guard`] is the replica's verifier.

pub mod evidence;
pub mod guard;
pub mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer as _};
use sha2::{Digest as _, Sha256};

use crate::proto::record::{put_set, put_u32, put_u64};
use crate::proto::{BatchId, Part, Reason, SiteId, State, TxnSet};

pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use guard::{VoteGuard, VoteStats};

/// Bytes of a vote digest (SHA-256).
pub const DIGEST_BYTES: usize = 32;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Bytes of an ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes of an ed25519 secret key (the seed written to `vote.key`).
pub const SECRET_KEY_BYTES: usize = 32;

const DIGEST_DOMAIN: &[u8] = b"tricommit-votes-v1";
const SIGNATURE_DOMAIN: &[u8] = b"tricommit-vote-sig-v1";
/// Bytes of the signed message.
const MESSAGE_BYTES: usize = 21 + 8 + 8 + 1 + DIGEST_BYTES;
const _: () = assert!(SIGNATURE_DOMAIN.len() == 21);

/// Why a signature or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signature does not verify with {participant}'s public key")]
    BadSignature { participant: u8 },
    #[error("the signed digest is not the digest of the votes it came with")]
    DigestMismatch,
    #[error("no public key is known for site {0}")]
    NoKey(u8),
    #[error("`{0}` is not a public key: 64 hexadecimal digits of a valid ed25519 point")]
    BadPublicKey(String),
}

/// A participant's votes for one batch with its signature: what a signing participant
/// sends instead of a plain `Part::Votes` (part tag 13).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignedVotes {
    pub batch: BatchId,
    pub participant: SiteId,
    pub yes: TxnSet,
    pub read_only: TxnSet,
    pub no: Vec<(u32, Reason)>,
    pub signature: [u8; SIGNATURE_BYTES],
    /// For each no vote `HELD_BY_BATCH`, the batch that holds the id and its state
    /// there (as in `Part::Votes`). Not covered by the signature: it is a hint that
    /// tells the opener whose outcome to report, never a vote.
    pub held: Vec<(u32, BatchId, State)>,
}

impl SignedVotes {
    /// The digest of these votes (what the signature covers).
    pub fn digest(&self) -> [u8; DIGEST_BYTES] {
        votes_digest(
            self.batch,
            self.participant,
            &self.yes,
            &self.read_only,
            &self.no,
        )
    }

    /// The compact proof a replica forwards to the other replicas.
    pub fn proof(&self) -> VoteProof {
        VoteProof {
            batch: self.batch,
            participant: self.participant,
            digest: self.digest(),
            signature: self.signature,
        }
    }

    /// The plain votes part a state machine counts.
    pub fn to_votes(&self) -> Part {
        Part::Votes {
            batch: self.batch,
            yes: self.yes.clone(),
            read_only: self.read_only.clone(),
            no: self.no.clone(),
            held: self.held.clone(),
        }
    }
}

/// A signed statement "participant voted `digest` for `batch`" without the votes: what
/// replicas forward to each other (part tag 14) and what evidence holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VoteProof {
    pub batch: BatchId,
    pub participant: SiteId,
    pub digest: [u8; DIGEST_BYTES],
    pub signature: [u8; SIGNATURE_BYTES],
}

impl VoteProof {
    /// Checks the signature with `key` for cluster `cluster_id`.
    pub fn verify(&self, cluster_id: u64, key: &VerifyingKey) -> Result<(), SignError> {
        let message = signed_message(cluster_id, self.batch, self.participant, &self.digest);
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&message, &signature)
            .map_err(|_| SignError::BadSignature {
                participant: self.participant.0,
            })
    }
}

/// The digest of one participant's votes for one batch.
pub fn votes_digest(
    batch: BatchId,
    participant: SiteId,
    yes: &TxnSet,
    read_only: &TxnSet,
    no: &[(u32, Reason)],
) -> [u8; DIGEST_BYTES] {
    let mut bytes = Vec::with_capacity(64 + 8 * (yes.words().len() + read_only.words().len()));
    bytes.extend_from_slice(DIGEST_DOMAIN);
    put_u64(&mut bytes, batch.0);
    bytes.push(participant.0);
    put_set(&mut bytes, yes);
    put_set(&mut bytes, read_only);
    put_u32(&mut bytes, no.len() as u32);
    for (index, reason) in no {
        put_u32(&mut bytes, *index);
        bytes.extend_from_slice(&reason.0.to_le_bytes());
    }
    Sha256::digest(&bytes).into()
}

/// The bytes a signature covers.
pub fn signed_message(
    cluster_id: u64,
    batch: BatchId,
    participant: SiteId,
    digest: &[u8; DIGEST_BYTES],
) -> [u8; MESSAGE_BYTES] {
    let mut message = [0u8; MESSAGE_BYTES];
    message[..21].copy_from_slice(SIGNATURE_DOMAIN);
    message[21..29].copy_from_slice(&cluster_id.to_le_bytes());
    message[29..37].copy_from_slice(&batch.0.to_le_bytes());
    message[37] = participant.0;
    message[38..].copy_from_slice(digest);
    message
}

/// A public key as `cluster.toml` and evidence files write it: 64 lowercase hex digits.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    to_hex(key.as_bytes())
}

/// Parses a public key written by [`public_key_hex`].
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SignError> {
    let bad = || SignError::BadPublicKey(text.to_owned());
    let bytes: [u8; PUBLIC_KEY_BYTES] = from_hex(text).ok_or_else(bad)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Lowercase hexadecimal.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 15) as usize] as char);
    }
    text
}

/// Exactly `N` bytes of hexadecimal (either case), or `None`.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut bytes = [0u8; N];
    for (index, pair) in text.chunks_exact(2).enumerate() {
        bytes[index] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

/// The public side of a signing deployment, by site id: every site's name and every
/// participant's public key (replicas have none: they do not vote).
#[derive(Clone, Debug)]
pub struct VoteKeys {
    pub cluster_id: u64,
    pub names: Vec<String>,
    pub keys: Vec<Option<VerifyingKey>>,
    pub replicas: Vec<SiteId>,
}

impl VoteKeys {
    /// The vote guard of replica `me`, keeping evidence in `evidence_dir`.
    pub fn guard(
        &self,
        me: SiteId,
        evidence_dir: std::path::PathBuf,
        stats: Arc<VoteStats>,
    ) -> VoteGuard {
        VoteGuard::new(
            self.cluster_id,
            me,
            self.names.clone(),
            self.keys.clone(),
            self.replicas.clone(),
            evidence_dir,
            stats,
        )
    }

    /// The signer of participant `me`.
    pub fn signer(&self, me: SiteId, key: SigningKey, byzantine: Option<Byzantine>) -> Signer {
        Signer::new(self.cluster_id, me, key, self.replicas.clone(), byzantine)
    }
}

/// How a participant misbehaves, in tests only (`tricommit node --test-byzantine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byzantine {
    /// Signs its true votes for the replica that asked, and signs contradicting votes
    /// (every yes turned into a no, every no into a yes) for the next replica.
    Equivocate,
}

/// A participant's signing side: turns every `Part::Votes` it sends into a
/// [`SignedVotes`] (one signature per batch; ed25519 is deterministic, so a repeated
/// vote carries the same signature).
pub struct Signer {
    cluster_id: u64,
    me: SiteId,
    key: SigningKey,
    replicas: Vec<SiteId>,
    byzantine: Option<Byzantine>,
}

impl Signer {
    /// The signer of participant `me` in cluster `cluster_id`; `replicas` are the
    /// coordinator replicas (a Byzantine signer lies to one of them).
    pub fn new(
        cluster_id: u64,
        me: SiteId,
        key: SigningKey,
        replicas: Vec<SiteId>,
        byzantine: Option<Byzantine>,
    ) -> Signer {
        Signer {
            cluster_id,
            me,
            key,
            replicas,
            byzantine,
        }
    }

    /// This participant's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs one batch's votes.
    pub fn sign(
        &self,
        batch: BatchId,
        yes: TxnSet,
        read_only: TxnSet,
        no: Vec<(u32, Reason)>,
    ) -> SignedVotes {
        let digest = votes_digest(batch, self.me, &yes, &read_only, &no);
        let message = signed_message(self.cluster_id, batch, self.me, &digest);
        SignedVotes {
            batch,
            participant: self.me,
            yes,
            read_only,
            no,
            signature: self.key.sign(&message).to_bytes(),
            held: Vec::new(),
        }
    }

    /// Replaces every `Part::Votes` of the outgoing frames with its signed form. A
    /// Byzantine signer also adds contradicting signed votes for another replica.
    pub fn seal(&self, frames: &mut BTreeMap<SiteId, Vec<Part>>) {
        let mut lies: Vec<(SiteId, Part)> = Vec::new();
        for (to, parts) in frames.iter_mut() {
            for part in parts.iter_mut() {
                let Part::Votes {
                    batch,
                    yes,
                    read_only,
                    no,
                    held,
                } = part
                else {
                    continue;
                };
                let (batch, yes, read_only, no, held) = (
                    *batch,
                    std::mem::take(yes),
                    std::mem::take(read_only),
                    std::mem::take(no),
                    std::mem::take(held),
                );
                if let (Some(Byzantine::Equivocate), Some(other)) =
                    (self.byzantine, self.other_replica(*to))
                {
                    let (lie_yes, lie_no) = contradict(&yes, &no);
                    let lie = self.sign(batch, lie_yes, read_only.clone(), lie_no);
                    lies.push((other, Part::SignedVotes(Arc::new(lie))));
                }
                let mut signed = self.sign(batch, yes, read_only, no);
                signed.held = held;
                *part = Part::SignedVotes(Arc::new(signed));
            }
        }
        for (to, part) in lies {
            frames.entry(to).or_default().push(part);
        }
    }

    /// The replica after `to` in the replica list (wrapping), if there is another.
    fn other_replica(&self, to: SiteId) -> Option<SiteId> {
        let at = self.replicas.iter().position(|&replica| replica == to)?;
        let other = self.replicas[(at + 1) % self.replicas.len()];
        (other != to).then_some(other)
    }
}

/// The reason a Byzantine signer gives for the no votes it invents.
pub const BYZANTINE_REASON: Reason = Reason(0xbad);

/// Every yes turned into a no and every no into a yes (the Byzantine lie).
fn contradict(yes: &TxnSet, no: &[(u32, Reason)]) -> (TxnSet, Vec<(u32, Reason)>) {
    let mut lie_yes = TxnSet::empty(yes.universe());
    for &(index, _) in no {
        lie_yes.insert(index);
    }
    let lie_no = yes.iter().map(|index| (index, BYZANTINE_REASON)).collect();
    (lie_yes, lie_no)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u64 = 4242;
    const ME: SiteId = SiteId(3);

    fn signer(seed: u8) -> Signer {
        let key = SigningKey::from_bytes(&[seed; SECRET_KEY_BYTES]);
        Signer::new(CLUSTER, ME, key, vec![SiteId(0), SiteId(1)], None)
    }

    fn votes(signer: &Signer, batch: u64) -> SignedVotes {
        let mut yes = TxnSet::empty(10);
        yes.insert(1);
        yes.insert(4);
        signer.sign(BatchId(batch), yes, TxnSet::empty(10), vec![(2, Reason(7))])
    }

    #[test]
    fn a_signed_vote_verifies_with_its_key() {
        // Proves the round trip: what a participant signs verifies with its public key,
        // and the proof carries the digest of exactly those votes.
        let signer = signer(1);
        let signed = votes(&signer, 9);
        let proof = signed.proof();
        assert_eq!(proof.digest, signed.digest());
        proof.verify(CLUSTER, &signer.public_key()).unwrap();
    }

    #[test]
    fn a_tampered_digest_is_rejected() {
        // Proves that changing the votes (so their digest) breaks the signature.
        let signer = signer(1);
        let mut signed = votes(&signer, 9);
        signed.yes.insert(5);
        let proof = VoteProof {
            digest: signed.digest(),
            ..votes(&signer, 9).proof()
        };
        assert_eq!(
            proof.verify(CLUSTER, &signer.public_key()),
            Err(SignError::BadSignature { participant: 3 })
        );
        let mut flipped = votes(&signer, 9).proof();
        flipped.digest[0] ^= 1;
        assert!(flipped.verify(CLUSTER, &signer.public_key()).is_err());
    }

    #[test]
    fn a_wrong_key_is_rejected() {
        // Proves that another participant's key does not verify this one's vote.
        let proof = votes(&signer(1), 9).proof();
        assert!(proof.verify(CLUSTER, &signer(2).public_key()).is_err());
    }

    #[test]
    fn a_wrong_batch_or_cluster_is_rejected() {
        // Proves that a signature is bound to its batch and its cluster: replaying it
        // for another batch, or in another cluster, fails.
        let signer = signer(1);
        let proof = votes(&signer, 9).proof();
        let moved = VoteProof {
            batch: BatchId(10),
            ..proof
        };
        assert!(moved.verify(CLUSTER, &signer.public_key()).is_err());
        assert!(proof.verify(CLUSTER + 1, &signer.public_key()).is_err());
        let other_site = VoteProof {
            participant: SiteId(4),
            ..proof
        };
        assert!(other_site.verify(CLUSTER, &signer.public_key()).is_err());
    }

    #[test]
    fn seal_signs_votes_and_a_byzantine_signer_contradicts_itself() {
        // Proves that sealing replaces plain votes with signed ones, that an honest
        // signer sends nothing else, and that the Byzantine one sends the next replica
        // a validly signed, different vote for the same batch.
        let mut yes = TxnSet::empty(3);
        yes.insert(0);
        let part = Part::Votes {
            batch: BatchId(5),
            yes,
            read_only: TxnSet::empty(3),
            no: vec![(1, Reason(2))],
            held: Vec::new(),
        };
        let mut frames = BTreeMap::from([(SiteId(0), vec![part.clone()])]);
        let honest = signer(1);
        honest.seal(&mut frames);
        assert_eq!(frames.len(), 1);
        let Part::SignedVotes(signed) = &frames[&SiteId(0)][0] else {
            panic!("not signed: {frames:?}");
        };
        assert_eq!(signed.to_votes(), part);

        let key = SigningKey::from_bytes(&[1; SECRET_KEY_BYTES]);
        let liar = Signer::new(
            CLUSTER,
            ME,
            key,
            vec![SiteId(0), SiteId(1)],
            Some(Byzantine::Equivocate),
        );
        let mut frames = BTreeMap::from([(SiteId(0), vec![part])]);
        liar.seal(&mut frames);
        let proof_of = |site: SiteId| match &frames[&site][0] {
            Part::SignedVotes(signed) => signed.proof(),
            other => panic!("not signed: {other:?}"),
        };
        let (told_0, told_1) = (proof_of(SiteId(0)), proof_of(SiteId(1)));
        assert_ne!(told_0.digest, told_1.digest);
        told_0.verify(CLUSTER, &liar.public_key()).unwrap();
        told_1.verify(CLUSTER, &liar.public_key()).unwrap();
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        // Proves that public keys survive the text form and that bad text is refused.
        let key = signer(7).public_key();
        assert_eq!(parse_public_key(&public_key_hex(&key)).unwrap(), key);
        assert!(parse_public_key("00").is_err());
        assert!(parse_public_key(&"zz".repeat(32)).is_err());
        assert_eq!(from_hex::<2>("0aFf"), Some([0x0a, 0xff]));
    }
}
