//! The `audit.pruned` entry: the log's own record of a prune, and what verification checks
//! against it.
//!
//! Retention deletes entry rows but keeps their leaf hashes, and marks each deleted position
//! with the sequence number of the `audit.pruned` entry appended in the same transaction. That
//! entry is an ordinary leaf of the tree, covered by every later signed head, and its metadata
//! says exactly which positions it pruned:
//!
//! ```text
//! {"firstSeq": 1, "lastSeq": 5000, "count": 4200, "seqsSha256": "<64 hex>",
//!  "cutoff": "2025-01-01T00:00:00.000000Z" | null,
//!  "rules": [{"actionPrefix": "auth.", "cutoff": "..."}]}
//! ```
//!
//! `seqsSha256` is SHA-256 over the pruned sequence numbers in ascending order, each as 8 bytes
//! big-endian. A position whose row is gone is accepted by verification only when it is marked,
//! and the marks naming a record add up to exactly the record's count, range and digest; so
//! deleting a row and marking it as pruned after the fact is found as surely as deleting it.
//! `audit.pruned` entries themselves are never pruned.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::merkle::{from_hex, to_hex, Hash};
use crate::entry::AuditEntry;

/// The action of the entry that records a prune.
pub const PRUNED_ACTION: &str = "audit.pruned";

/// What an `audit.pruned` entry says it pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneClaim {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    pub seqs_sha256: Hash,
}

impl PruneClaim {
    /// The claim for these pruned positions (ascending, not empty).
    pub fn for_seqs(seqs: &[u64]) -> Option<PruneClaim> {
        Some(PruneClaim {
            first_seq: *seqs.first()?,
            last_seq: *seqs.last()?,
            count: seqs.len() as u64,
            seqs_sha256: seqs_digest(seqs.iter().copied()),
        })
    }

    /// Writes the claim's keys into an entry's metadata.
    pub fn write_metadata(&self, metadata: &mut Map<String, Value>) {
        metadata.insert("firstSeq".into(), Value::from(self.first_seq));
        metadata.insert("lastSeq".into(), Value::from(self.last_seq));
        metadata.insert("count".into(), Value::from(self.count));
        metadata.insert("seqsSha256".into(), Value::from(to_hex(&self.seqs_sha256)));
    }

    /// Reads the claim of an `audit.pruned` entry; `Err` says what is malformed.
    pub fn from_entry(entry: &AuditEntry) -> Result<PruneClaim, String> {
        let number = |key: &str| {
            entry
                .metadata
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("metadata.{key} is not a number"))
        };
        let seqs_sha256 = entry
            .metadata
            .get("seqsSha256")
            .and_then(Value::as_str)
            .and_then(from_hex)
            .ok_or_else(|| "metadata.seqsSha256 is not 64 hex digits".to_string())?;
        Ok(PruneClaim {
            first_seq: number("firstSeq")?,
            last_seq: number("lastSeq")?,
            count: number("count")?,
            seqs_sha256,
        })
    }

    /// Whether the positions actually marked (ascending) are the ones claimed.
    pub fn matches(&self, marked: &[u64]) -> bool {
        PruneClaim::for_seqs(marked).as_ref() == Some(self)
    }
}

/// SHA-256 over the sequence numbers, each as 8 bytes big-endian, in the order given.
pub fn seqs_digest(seqs: impl IntoIterator<Item = u64>) -> Hash {
    let mut hasher = Sha256::new();
    for seq in seqs {
        hasher.update(seq.to_be_bytes());
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_round_trips_through_metadata() {
        let claim = PruneClaim::for_seqs(&[2, 3, 9]).expect("not empty");
        assert_eq!((claim.first_seq, claim.last_seq, claim.count), (2, 9, 3));
        let mut entry = AuditEntry::new("t", PRUNED_ACTION);
        claim.write_metadata(&mut entry.metadata);
        assert_eq!(PruneClaim::from_entry(&entry), Ok(claim.clone()));
        assert!(claim.matches(&[2, 3, 9]));
        assert!(
            !claim.matches(&[2, 4, 9]),
            "same range and count, other positions"
        );
        assert!(!claim.matches(&[2, 3, 9, 10]));
        assert!(!claim.matches(&[]));
    }

    #[test]
    fn digest_is_of_big_endian_seqs() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&256u64.to_be_bytes());
        let expected: Hash = Sha256::digest(&bytes).into();
        assert_eq!(seqs_digest([1, 256]), expected);
        assert_ne!(seqs_digest([256, 1]), expected);
    }

    #[test]
    fn malformed_claims_say_what_is_wrong() {
        let mut entry = AuditEntry::new("t", PRUNED_ACTION);
        entry.metadata.insert("firstSeq".into(), Value::from(1));
        let error = PruneClaim::from_entry(&entry).expect_err("incomplete");
        assert!(error.contains("seqsSha256"), "{error}");
    }
}
