//! Offline proofs of one entry in the C2SP tlog-proof form (c2sp.org/tlog-proof): a file an
//! auditor keeps and checks later, without the database and without auditgate.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the entry's canonical bytes>
//! index 41
//! <base64 of the leaf's sibling hash>
//! ...
//! <base64 of the root's child hash>
//!
//! audit.example.com/orders
//! 42
//! PAb5plclr2BSYfY2ZyyWINQJcx2JpFHXRV/pxK4WeCk=
//!
//! — audit.example.com/orders <base64 signature>
//! ```
//!
//! The spec leaves the meaning of `extra` and the leaf hash to the application. auditgate's
//! choice: `extra` is the entry's canonical bytes ([`AuditEntry::canonical_bytes`]), the very
//! bytes whose `SHA-256(0x00 || bytes)` is the entry's Merkle leaf, so the file is
//! self-contained: the leaf is computed from `extra`, and the inclusion proof then authenticates
//! `extra` (the spec's "do not trust extra implicitly" holds: nothing in it is believed before the
//! proof leads from its hash to the signed root). `index` is the zero-based leaf index, the
//! entry's `seq - 1`. The inclusion proof is RFC 6962/9162's audit path, leaf's sibling first.
//! The checkpoint is the log's signed checkpoint ([`super::checkpoint`]) of the tree the proof
//! leads to, with any cosignature lines it carries.
//!
//! Verification ([`TlogProof::verify`], [`verify_entry_proof`]) follows the spec's steps: the
//! leaf hash from `extra`; the checkpoint signed by the verifier key and its origin the key's
//! name; the inclusion proof from the leaf at `index` to the checkpoint's root. Witness
//! cosignatures are ignored here (a note's unknown signatures are ignored, as the signed-note spec
//! asks).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::checkpoint::{Checkpoint, CheckpointError, VerifierKey};
use super::merkle::{leaf_hash, verify_inclusion, Hash};
use crate::entry::AuditEntry;

/// The first line of every tlog proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// The file extension the spec recommends.
pub const FILE_EXTENSION: &str = "tlog-proof";

/// The longest proof read: an entry's canonical bytes (bounded by the store's limits on what an
/// entry holds), 64 hashes and a checkpoint with its cosignatures fit many times over.
pub const MAX_PROOF_BYTES: usize = 8 * 1024 * 1024;

/// An inclusion proof in a tree of at most 2^64 leaves has at most 64 hashes.
const MAX_PROOF_HASHES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlogProofError {
    #[error("not a tlog proof: the first line is not {HEADER}")]
    NotAProof,
    #[error("malformed tlog proof, line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("longer than {} MiB", MAX_PROOF_BYTES / (1024 * 1024))]
    TooLong,
    #[error("the checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint's origin {found:?} is not the verifier key's name {expected:?}")]
    WrongOrigin { expected: String, found: String },
    #[error("index {index} is outside the checkpoint's tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error(
        "the inclusion proof does not lead from the leaf at index {index} to the checkpoint's \
         root (tree size {size}): the entry, the index or the proof was changed"
    )]
    NotIncluded { index: u64, size: u64 },
    #[error("the proof has no extra line, so it carries no entry to check")]
    NoEntry,
    #[error("the extra data is not an auditgate entry in canonical form: {0}")]
    NotAnEntry(String),
    #[error("the entry's seq {seq} is not index {index} + 1")]
    SeqMismatch { seq: u64, index: u64 },
}

/// One proof: the spec's four parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// The opaque extra data; for auditgate, the entry's canonical bytes.
    pub extra: Option<Vec<u8>>,
    /// The zero-based leaf index.
    pub index: u64,
    /// The audit path, from the leaf's sibling up to the root's child.
    pub inclusion: Vec<Hash>,
    /// The signed checkpoint note, verbatim (ending in a newline).
    pub checkpoint: String,
}

impl TlogProof {
    /// The proof of `entry` (its canonical bytes as `extra`, `seq - 1` as index) by `inclusion`
    /// in the tree `checkpoint` signs.
    pub fn for_entry(entry: &AuditEntry, inclusion: Vec<Hash>, checkpoint: String) -> TlogProof {
        TlogProof {
            extra: Some(entry.canonical_bytes()),
            index: entry.seq.saturating_sub(1),
            inclusion,
            checkpoint,
        }
    }

    /// The text form, as the spec lays it out.
    pub fn format(&self) -> String {
        let mut text = format!("{HEADER}\n");
        if let Some(extra) = &self.extra {
            text.push_str("extra ");
            text.push_str(&BASE64.encode(extra));
            text.push('\n');
        }
        text.push_str(&format!("index {}\n", self.index));
        for hash in &self.inclusion {
            text.push_str(&BASE64.encode(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.checkpoint);
        text
    }

    /// Reads the text form strictly: every line as the spec writes it, base64 canonical, the
    /// index in decimal without leading zeros, each hash 32 bytes, and a checkpoint after the
    /// empty line. Errors name the line (counted from 1).
    pub fn parse(text: &str) -> Result<TlogProof, TlogProofError> {
        if text.len() > MAX_PROOF_BYTES {
            return Err(TlogProofError::TooLong);
        }
        let malformed = |line: usize, reason: &str| TlogProofError::Malformed {
            line,
            reason: reason.to_string(),
        };
        let mut lines = text.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(TlogProofError::NotAProof);
        }
        let mut number = 2;
        let mut line = lines
            .next()
            .ok_or_else(|| malformed(number, "no index line"))?;
        let extra = match line.strip_prefix("extra ") {
            Some(encoded) => {
                let bytes = BASE64
                    .decode(encoded)
                    .ok()
                    .filter(|bytes| BASE64.encode(bytes) == encoded)
                    .ok_or_else(|| {
                        malformed(number, "the extra data is not canonical standard base64")
                    })?;
                number += 1;
                line = lines
                    .next()
                    .ok_or_else(|| malformed(number, "no index line"))?;
                Some(bytes)
            }
            None if line.starts_with("extra") => {
                return Err(malformed(number, "an extra line is `extra <base64>`"))
            }
            None => None,
        };
        let digits = line
            .strip_prefix("index ")
            .ok_or_else(|| malformed(number, "expected `index N`"))?;
        let canonical = digits == "0" || (!digits.is_empty() && !digits.starts_with('0'));
        let index = digits
            .parse::<u64>()
            .ok()
            .filter(|_| canonical && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                malformed(
                    number,
                    "the index is not a decimal number without leading zeros",
                )
            })?;
        let mut inclusion = Vec::new();
        loop {
            number += 1;
            let line = lines.next().ok_or_else(|| {
                malformed(
                    number,
                    "the proof ends before the empty line and the checkpoint",
                )
            })?;
            if line.is_empty() {
                break;
            }
            if inclusion.len() == MAX_PROOF_HASHES {
                return Err(malformed(number, "more than 64 proof hashes"));
            }
            let hash = BASE64
                .decode(line)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .filter(|hash| BASE64.encode(hash) == line)
                .ok_or_else(|| {
                    malformed(
                        number,
                        "a proof hash is not the standard base64 of 32 bytes",
                    )
                })?;
            inclusion.push(hash);
        }
        let checkpoint = lines.collect::<Vec<_>>().join("\n");
        if checkpoint.is_empty() {
            return Err(malformed(number + 1, "no checkpoint after the empty line"));
        }
        Ok(TlogProof {
            extra,
            index,
            inclusion,
            checkpoint,
        })
    }

    /// The spec's steps 2 and 4 for a leaf computed by the caller (step 1): the checkpoint is
    /// signed by `vkey` and its origin is the key's name, and the inclusion proof leads from
    /// `leaf` at `index` to its root. Returns the checkpoint.
    pub fn verify(&self, vkey: &VerifierKey, leaf: &Hash) -> Result<Checkpoint, TlogProofError> {
        let checkpoint = vkey.verify_checkpoint(&self.checkpoint)?;
        if checkpoint.origin != vkey.name() {
            return Err(TlogProofError::WrongOrigin {
                expected: vkey.name().to_string(),
                found: checkpoint.origin,
            });
        }
        if self.index >= checkpoint.size {
            return Err(TlogProofError::IndexOutOfRange {
                index: self.index,
                size: checkpoint.size,
            });
        }
        if !verify_inclusion(
            leaf,
            self.index,
            checkpoint.size,
            &self.inclusion,
            &checkpoint.root_hash,
        ) {
            return Err(TlogProofError::NotIncluded {
                index: self.index,
                size: checkpoint.size,
            });
        }
        Ok(checkpoint)
    }
}

/// An entry whose proof verified, and the checkpoint it is in.
#[derive(Debug, Clone)]
pub struct VerifiedEntry {
    pub entry: AuditEntry,
    pub checkpoint: Checkpoint,
}

/// Verifies an auditgate entry proof: the leaf is `SHA-256(0x00 || extra)`, [`TlogProof::verify`]
/// checks the checkpoint and the inclusion, and then `extra` (now authenticated) must read as an
/// entry in canonical form whose `seq` is `index + 1`.
pub fn verify_entry_proof(
    proof: &TlogProof,
    vkey: &VerifierKey,
) -> Result<VerifiedEntry, TlogProofError> {
    let extra = proof.extra.as_deref().ok_or(TlogProofError::NoEntry)?;
    let checkpoint = proof.verify(vkey, &leaf_hash(extra))?;
    let entry: AuditEntry = serde_json::from_slice(extra)
        .map_err(|error| TlogProofError::NotAnEntry(error.to_string()))?;
    // The bytes were logged; if they are not what this version writes for the entry they
    // describe, the fields read from them may not be what the log meant.
    if entry.canonical_bytes() != extra {
        return Err(TlogProofError::NotAnEntry(
            "its fields do not write back to the same bytes".into(),
        ));
    }
    if entry.seq != proof.index.saturating_add(1) {
        return Err(TlogProofError::SeqMismatch {
            seq: entry.seq,
            index: proof.index,
        });
    }
    Ok(VerifiedEntry { entry, checkpoint })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::head::{LogSigner, TreeHead};
    use crate::log::merkle::{inclusion_proof, MemoryNodes};
    use chrono::Utc;

    const ORIGIN: &str = "audit.example.com/orders";

    struct Fixture {
        signer: LogSigner,
        vkey: VerifierKey,
        entries: Vec<AuditEntry>,
        nodes: MemoryNodes,
    }

    fn fixture(size: u64) -> Fixture {
        let signer = LogSigner::generate();
        let vkey = signer
            .verifier_key(ORIGIN)
            .expect("the test's own input is valid");
        let entries: Vec<AuditEntry> = (1..=size)
            .map(|seq| {
                let mut entry = AuditEntry::new("orders", format!("order.{seq}"));
                entry.seq = seq;
                entry.actor_id = Some(format!("user-{seq}"));
                entry
            })
            .collect();
        let leaves: Vec<Hash> = entries
            .iter()
            .map(|entry| leaf_hash(&entry.canonical_bytes()))
            .collect();
        Fixture {
            signer,
            vkey,
            entries,
            nodes: MemoryNodes::from_leaves(&leaves),
        }
    }

    impl Fixture {
        fn checkpoint(&self, size: u64) -> String {
            let root = crate::log::merkle::root_at(&self.nodes, size)
                .expect("the test's own input is valid");
            let head = TreeHead::new("orders", size, root, Utc::now())
                .expect("the test's own input is valid");
            self.signer
                .sign_checkpoint(ORIGIN, &head)
                .expect("the test's own input is valid")
        }

        fn proof(&self, seq: u64, size: u64) -> TlogProof {
            let inclusion =
                inclusion_proof(&self.nodes, seq - 1, size).expect("the test's own input is valid");
            TlogProof::for_entry(
                &self.entries[(seq - 1) as usize],
                inclusion,
                self.checkpoint(size),
            )
        }
    }

    #[test]
    fn a_proof_round_trips_and_verifies() {
        let log = fixture(13);
        for seq in [1, 6, 13] {
            let proof = log.proof(seq, 13);
            let text = proof.format();
            assert!(text.starts_with(&format!("{HEADER}\nextra ")));
            assert!(text.contains(&format!("\nindex {}\n", seq - 1)));
            let parsed = TlogProof::parse(&text).expect("the test's own input is valid");
            assert_eq!(parsed, proof);
            let verified =
                verify_entry_proof(&parsed, &log.vkey).expect("the test's own input is valid");
            assert_eq!(
                verified.entry.canonical_bytes(),
                log.entries[(seq - 1) as usize].canonical_bytes()
            );
            assert_eq!(verified.checkpoint.size, 13);
            assert_eq!(verified.checkpoint.origin, ORIGIN);
        }
        // A tree of one leaf: no proof hashes at all.
        let single = fixture(1);
        let text = single.proof(1, 1).format();
        assert!(text.contains("\nindex 0\n\n"), "{text}");
        verify_entry_proof(
            &TlogProof::parse(&text).expect("the test's own input is valid"),
            &single.vkey,
        )
        .expect("the test's own input is valid");
    }

    #[test]
    fn tampered_proofs_are_rejected() {
        let log = fixture(13);
        let good = log.proof(6, 13);
        let check = |proof: &TlogProof| verify_entry_proof(proof, &log.vkey);

        let mut edited = good.clone();
        let mut entry = log.entries[5].clone();
        entry.actor_id = Some("someone-else".into());
        edited.extra = Some(entry.canonical_bytes());
        assert!(matches!(
            check(&edited),
            Err(TlogProofError::NotIncluded { .. })
        ));

        let mut moved = good.clone();
        moved.index = 6;
        assert!(check(&moved).is_err());
        moved.index = 13;
        assert!(matches!(
            check(&moved),
            Err(TlogProofError::IndexOutOfRange { .. })
        ));

        let mut dropped = good.clone();
        dropped.inclusion.pop();
        assert!(check(&dropped).is_err());
        let mut flipped = good.clone();
        flipped.inclusion[0][0] ^= 1;
        assert!(check(&flipped).is_err());

        let mut other_size = good.clone();
        other_size.checkpoint = log.checkpoint(12);
        assert!(check(&other_size).is_err());

        let mut other_key = good.clone();
        let intruder = LogSigner::generate();
        let head = TreeHead::new(
            "orders",
            13,
            crate::log::merkle::root_at(&log.nodes, 13).expect("the test's own input is valid"),
            Utc::now(),
        )
        .expect("the test's own input is valid");
        other_key.checkpoint = intruder
            .sign_checkpoint(ORIGIN, &head)
            .expect("the test's own input is valid");
        assert!(matches!(
            check(&other_key),
            Err(TlogProofError::Checkpoint(
                CheckpointError::NoSignatureByKey { .. }
            ))
        ));

        // The log's own key under another origin: the origin is not the one the key names.
        let mut other_origin = good.clone();
        other_origin.checkpoint = log
            .signer
            .sign_checkpoint("elsewhere.example/log", &head)
            .expect("the test's own input is valid");
        let elsewhere = log
            .signer
            .verifier_key("elsewhere.example/log")
            .expect("the test's own input is valid");
        assert!(verify_entry_proof(&other_origin, &elsewhere).is_ok());
        assert!(check(&other_origin).is_err());

        let mut no_entry = good.clone();
        no_entry.extra = None;
        assert!(matches!(check(&no_entry), Err(TlogProofError::NoEntry)));
    }

    #[test]
    fn malformed_lines_are_named() {
        let log = fixture(5);
        let text = log.proof(3, 5).format();
        let line_of = |result: Result<TlogProof, TlogProofError>| match result {
            Err(TlogProofError::Malformed { line, .. }) => Some(line),
            _ => None,
        };
        assert!(matches!(
            TlogProof::parse(&text.replacen("tlog-proof@v1", "tlog-proof@v2", 1)),
            Err(TlogProofError::NotAProof)
        ));
        assert!(matches!(
            TlogProof::parse(""),
            Err(TlogProofError::NotAProof)
        ));
        let extra_line = text.lines().nth(1).expect("the test's own input is valid");
        let cases: Vec<(String, usize)> = vec![
            (text.replacen("\nextra ", "\nextra  ", 1), 2),
            (text.replacen("\nextra ", "\nextra\t", 1), 2),
            (text.replacen(extra_line, &format!("{extra_line}!"), 1), 2),
            (text.replacen("\nindex 2\n", "\nindex 02\n", 1), 3),
            (text.replacen("\nindex 2\n", "\nindex -2\n", 1), 3),
            (text.replacen("\nindex 2\n", "\nindex +2\n", 1), 3),
            (text.replacen("\nindex 2\n", "\nindex 2 \n", 1), 3),
            (text.replacen("\nindex 2\n", "\nIndex 2\n", 1), 3),
            (text.replacen("\nindex 2\n", "\n", 1), 3),
            (format!("{HEADER}\n"), 2),
            (format!("{HEADER}\nextra AAAA\n"), 3),
            (format!("{HEADER}\nindex 0\n"), 4),
            (format!("{HEADER}\nindex 0\n\n"), 4),
            (text.replacen("\nindex 2\n", "\nindex 2\nAAAA\n", 1), 4),
            (
                text.replacen(
                    "\nindex 2\n",
                    &format!("\nindex 2\n{}\n", hex::encode([0u8; 32])),
                    1,
                ),
                4,
            ),
            (
                text.replacen(
                    "\nindex 2\n",
                    &format!("\nindex 2\n{}\r\n", BASE64.encode([0u8; 32])),
                    1,
                ),
                4,
            ),
            (
                format!(
                    "{HEADER}\nindex 0\n{}\n",
                    format!("{}\n", BASE64.encode([0u8; 32])).repeat(65)
                ),
                67,
            ),
        ];
        for (case, line) in cases {
            assert_eq!(line_of(TlogProof::parse(&case)), Some(line), "{case:?}");
        }
        // A checkpoint that is not a signed note parses as a proof but does not verify.
        let broken = text.replacen("\n\u{2014} ", "\n- ", 1);
        let parsed = TlogProof::parse(&broken).expect("the test's own input is valid");
        assert!(matches!(
            verify_entry_proof(&parsed, &log.vkey),
            Err(TlogProofError::Checkpoint(_))
        ));
        assert!(matches!(
            TlogProof::parse(&"x".repeat(MAX_PROOF_BYTES + 1)),
            Err(TlogProofError::TooLong)
        ));
    }

    #[test]
    fn extra_data_that_is_not_a_canonical_entry_is_refused_after_the_proof() {
        let log = fixture(3);
        // A leaf whose bytes are valid JSON but not this entry's canonical form (keys reordered):
        // the proof of such a leaf verifies, and the entry check still refuses it.
        let json = String::from_utf8(log.entries[0].canonical_bytes())
            .expect("the test's own input is valid");
        let reordered = json.replacen("{\"action\"", "{\"zz\":1,\"action\"", 1);
        let leaves = [leaf_hash(reordered.as_bytes())];
        let nodes = MemoryNodes::from_leaves(&leaves);
        let head = TreeHead::new(
            "orders",
            1,
            crate::log::merkle::root_at(&nodes, 1).expect("the test's own input is valid"),
            Utc::now(),
        )
        .expect("the test's own input is valid");
        let proof = TlogProof {
            extra: Some(reordered.into_bytes()),
            index: 0,
            inclusion: Vec::new(),
            checkpoint: log
                .signer
                .sign_checkpoint(ORIGIN, &head)
                .expect("the test's own input is valid"),
        };
        assert!(matches!(
            verify_entry_proof(&proof, &log.vkey),
            Err(TlogProofError::NotAnEntry(_))
        ));
    }
}
