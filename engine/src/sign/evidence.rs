//! Equivocation evidence: two different signed votes of one participant for one batch,
//! kept as a text file next to the replica's log (`DIR/<replica>/evidence/`), and
//! checked offline by `tricommit evidence verify FILE` with `cluster.toml`'s keys.
//!
//! The format (`docs/ops.md`, "Evidence files"): one `key value` pair a line, every key
//! exactly once, in any order; lines starting with `#` are comments.
//!
//! ```text
//! format tricommit-evidence-v1
//! cluster_id 4242
//! batch 12884901893
//! participant participant-1
//! site 4
//! public_key <64 hex digits>
//! digest_a <64 hex digits>
//! signature_a <128 hex digits>
//! digest_b <64 hex digits>
//! signature_b <128 hex digits>
//! seen_by replica-0
//! ```
//!
//! It is evidence when `digest_a != digest_b` and both signatures verify over
//! `signed_message(cluster_id, batch, site, digest)` with the participant's key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use super::{from_hex, public_key_hex, to_hex, SignError, VoteProof};
use crate::proto::{BatchId, SiteId};

/// The first line's value: the format this build reads and writes.
pub const EVIDENCE_FORMAT: &str = "tricommit-evidence-v1";
/// The directory below a replica's data directory that holds its evidence.
pub const EVIDENCE_DIR: &str = "evidence";
/// Where `tricommit evidence clear` moves a cleared participant's evidence (kept for
/// the audit trail, no longer in force).
pub const CLEARED_DIR: &str = "cleared";
/// An evidence file's extension.
pub const EVIDENCE_EXTENSION: &str = "evidence";
/// An evidence file larger than this is not one.
pub const EVIDENCE_FILE_BYTES_MAX: u64 = 64 << 10;

/// Why evidence could not be read, or does not prove an equivocation.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Format { line: usize, reason: String },
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("the evidence is of cluster {found}, this cluster is {expected}")]
    Cluster { expected: u64, found: u64 },
    #[error("the public key in the evidence is not {participant}'s key in cluster.toml")]
    KeyMismatch { participant: String },
    #[error("both statements sign the same digest: that is no equivocation")]
    SameDigest,
    #[error("statement {which}: {source}")]
    Signature {
        which: &'static str,
        source: SignError,
    },
}

/// Two signed, different votes of one participant for one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub cluster_id: u64,
    /// The participant's site name (`participant-N`).
    pub participant: String,
    pub public_key: VerifyingKey,
    pub first: VoteProof,
    pub second: VoteProof,
    /// The replica that found it.
    pub seen_by: String,
}

impl Evidence {
    /// The file name this evidence is kept under: `<participant>-batch-<id>.evidence`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-batch-{}.{EVIDENCE_EXTENSION}",
            self.participant, self.first.batch.0
        )
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "# tricommit equivocation evidence: {participant} signed two different votes \
             for batch {batch}.\n\
             # Check it offline: tricommit evidence verify FILE\n\
             format {EVIDENCE_FORMAT}\n\
             cluster_id {cluster}\n\
             batch {batch}\n\
             participant {participant}\n\
             site {site}\n\
             public_key {key}\n\
             digest_a {digest_a}\n\
             signature_a {signature_a}\n\
             digest_b {digest_b}\n\
             signature_b {signature_b}\n\
             seen_by {seen_by}\n",
            participant = self.participant,
            batch = self.first.batch.0,
            cluster = self.cluster_id,
            site = self.first.participant.0,
            key = public_key_hex(&self.public_key),
            digest_a = to_hex(&self.first.digest),
            signature_a = to_hex(&self.first.signature),
            digest_b = to_hex(&self.second.digest),
            signature_b = to_hex(&self.second.signature),
            seen_by = self.seen_by,
        )
    }

    /// Parses an evidence file's text.
    pub fn parse(text: &str) -> Result<Evidence, EvidenceError> {
        let mut fields: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let format_error = |reason: String| EvidenceError::Format {
                line: line_number,
                reason,
            };
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format_error(format!("`{line}` is not `key value`")))?;
            if !KEYS.contains(&key) {
                return Err(format_error(format!("unknown key `{key}`")));
            }
            if fields.insert(key, (line_number, value.trim())).is_some() {
                return Err(format_error(format!("`{key}` appears twice")));
            }
        }
        let field = |key: &'static str| fields.get(key).copied().ok_or(EvidenceError::Missing(key));
        let (line, format) = field("format")?;
        if format != EVIDENCE_FORMAT {
            return Err(EvidenceError::Format {
                line,
                reason: format!("format `{format}` is not {EVIDENCE_FORMAT}"),
            });
        }
        let number = |key: &'static str| -> Result<u64, EvidenceError> {
            let (line, value) = field(key)?;
            value.parse().map_err(|_| EvidenceError::Format {
                line,
                reason: format!("`{key}` must be a number, not `{value}`"),
            })
        };
        let hex = |key: &'static str| -> Result<(usize, &str), EvidenceError> { field(key) };
        let bytes_of = |key: &'static str| -> Result<Vec<u8>, EvidenceError> {
            let (line, value) = hex(key)?;
            let bad = || EvidenceError::Format {
                line,
                reason: format!("`{key}` is not hexadecimal of the right length"),
            };
            match key {
                "signature_a" | "signature_b" => from_hex::<64>(value).map(|b| b.to_vec()),
                _ => from_hex::<32>(value).map(|b| b.to_vec()),
            }
            .ok_or_else(bad)
        };
        let site = number("site")?;
        let site = u8::try_from(site).map_err(|_| EvidenceError::Format {
            line: field("site").map(|(line, _)| line).unwrap_or(0),
            reason: "`site` must be below 256".into(),
        })?;
        let batch = BatchId(number("batch")?);
        let (key_line, key_text) = field("public_key")?;
        let public_key =
            super::parse_public_key(key_text).map_err(|error| EvidenceError::Format {
                line: key_line,
                reason: error.to_string(),
            })?;
        let proof = |digest: &'static str, signature: &'static str| {
            Ok::<VoteProof, EvidenceError>(VoteProof {
                batch,
                participant: SiteId(site),
                digest: bytes_of(digest)?.try_into().expect("checked length"),
                signature: bytes_of(signature)?.try_into().expect("checked length"),
            })
        };
        Ok(Evidence {
            cluster_id: number("cluster_id")?,
            participant: field("participant")?.1.to_owned(),
            public_key,
            first: proof("digest_a", "signature_a")?,
            second: proof("digest_b", "signature_b")?,
            seen_by: field("seen_by")?.1.to_owned(),
        })
    }

    /// Reads and parses an evidence file.
    pub fn read(path: &Path) -> Result<Evidence, EvidenceError> {
        let read_error = |source| EvidenceError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if bytes > EVIDENCE_FILE_BYTES_MAX {
            return Err(EvidenceError::Format {
                line: 0,
                reason: format!("{bytes} bytes, more than an evidence file has"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Evidence::parse(&text)
    }

    /// Checks that this proves an equivocation in cluster `cluster_id` by the holder
    /// of `key` (the participant's key from `cluster.toml`).
    pub fn verify(&self, cluster_id: u64, key: &VerifyingKey) -> Result<(), EvidenceError> {
        if self.cluster_id != cluster_id {
            return Err(EvidenceError::Cluster {
                expected: cluster_id,
                found: self.cluster_id,
            });
        }
        if self.public_key != *key {
            return Err(EvidenceError::KeyMismatch {
                participant: self.participant.clone(),
            });
        }
        if self.first.digest == self.second.digest {
            return Err(EvidenceError::SameDigest);
        }
        let check = |which, proof: &VoteProof| {
            proof
                .verify(cluster_id, key)
                .map_err(|source| EvidenceError::Signature { which, source })
        };
        check("a", &self.first)?;
        check("b", &self.second)
    }

    /// Writes the file into `dir` (created if needed), atomically; returns its path.
    pub fn write_into(&self, dir: &Path) -> Result<PathBuf, EvidenceError> {
        let write_error = |source| EvidenceError::Write {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write_error)?;
        let name = self.file_name();
        crate::client::config::write_atomically(dir, &name, self.render().as_bytes(), 0o644)
            .map_err(|error| EvidenceError::Write {
                path: dir.join(&name),
                source: std::io::Error::other(error.to_string()),
            })?;
        Ok(dir.join(name))
    }
}

const KEYS: [&str; 11] = [
    "format",
    "cluster_id",
    "batch",
    "participant",
    "site",
    "public_key",
    "digest_a",
    "signature_a",
    "digest_b",
    "signature_b",
    "seen_by",
];

/// The participant names with evidence in force in `dir` (a replica's evidence
/// directory), with one of their files each. A missing directory holds none.
pub fn in_force(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some(EVIDENCE_EXTENSION) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if let Some((participant, _)) = name.split_once("-batch-") {
            found.entry(participant.to_owned()).or_insert(path);
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Reason, TxnSet};
    use crate::sign::Signer;
    use ed25519_dalek::SigningKey;

    fn sample() -> (Evidence, VerifyingKey) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signer = Signer::new(77, SiteId(4), key, vec![SiteId(0)], None);
        let yes = TxnSet::full(4);
        let a = signer.sign(BatchId(12), yes.clone(), TxnSet::empty(4), Vec::new());
        let b = signer.sign(
            BatchId(12),
            TxnSet::empty(4),
            TxnSet::empty(4),
            vec![(0, Reason(1))],
        );
        let evidence = Evidence {
            cluster_id: 77,
            participant: "participant-1".into(),
            public_key: signer.public_key(),
            first: a.proof(),
            second: b.proof(),
            seen_by: "replica-0".into(),
        };
        (evidence, signer.public_key())
    }

    #[test]
    fn evidence_round_trips_and_verifies() {
        // Proves that a rendered file parses back to itself and verifies offline.
        let (evidence, key) = sample();
        let parsed = Evidence::parse(&evidence.render()).unwrap();
        assert_eq!(parsed, evidence);
        parsed.verify(77, &key).unwrap();
        assert_eq!(evidence.file_name(), "participant-1-batch-12.evidence");
    }

    #[test]
    fn forged_or_foreign_evidence_is_refused() {
        // Proves that evidence against the wrong key, of another cluster, with equal
        // digests or with a tampered signature does not verify.
        let (evidence, key) = sample();
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            evidence.verify(77, &other),
            Err(EvidenceError::KeyMismatch { .. })
        ));
        assert!(matches!(
            evidence.verify(78, &key),
            Err(EvidenceError::Cluster { .. })
        ));
        let same = Evidence {
            second: evidence.first,
            ..evidence.clone()
        };
        assert!(matches!(
            same.verify(77, &key),
            Err(EvidenceError::SameDigest)
        ));
        let mut tampered = evidence.clone();
        tampered.second.signature[10] ^= 0x40;
        assert!(matches!(
            tampered.verify(77, &key),
            Err(EvidenceError::Signature { which: "b", .. })
        ));
    }

    #[test]
    fn malformed_files_name_the_line() {
        // Proves that a damaged file is an error naming the line, never a panic.
        let (evidence, _) = sample();
        let text = evidence.render();
        let error = Evidence::parse(&text.replace("batch 12", "batch twelve")).unwrap_err();
        assert!(error.to_string().contains("`batch`"), "{error}");
        let error = Evidence::parse(&format!("{text}extra 1\n")).unwrap_err();
        assert!(error.to_string().contains("unknown key"), "{error}");
        let error = Evidence::parse("format tricommit-evidence-v1\n").unwrap_err();
        assert!(matches!(error, EvidenceError::Missing(_)), "{error}");
        assert!(Evidence::parse("\u{0}\u{1}garbage").is_err());
    }
}
