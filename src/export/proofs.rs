//! Exports with proofs (`proofs=true`): NDJSON an auditor verifies offline with
//! `auditgate verify-export FILE --key PUBKEY`, without the database.
//!
//! Each entry line is the entry's API JSON (as [`crate::export`] writes it) with three more keys,
//! and the last line is the signed head every proof leads to (format in [`crate::log`]):
//!
//! ```text
//! {...entry..., "leafHash": "<hex>", "leafIndex": 41, "auditPath": ["<hex>", ...]}
//! {"treeHead": {"logId": ..., "size": ..., "rootHash": ..., ...}, "entries": 1,
//!  "firstSeq": 42, "lastSeq": 42, "digest": "<hex>", "signature": "<base64>"}
//! ```
//!
//! Entry lines are in increasing `seq` order, each `seq` once. The last line's manifest
//! ([`ExportManifest`]) says how many entry lines there are, the first and last `seq`, and a
//! digest of every line's `(seq, leaf hash)` in order; its `signature`, made with the log's key
//! over a text that also names the head, is present when the exporter has the signing key. So a
//! removed, repeated, reordered or added line is found by `verify-export` — and, with the
//! signature, even by someone who also edits the manifest.
//!
//! The head is chosen before the first entry is written (the latest signed head), so only
//! entries it covers (`seq <= size`) can be exported with proofs; an exporter filters on that.

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::entry::AuditEntry;
use crate::export::ExportError;
use crate::log::head::{LogSigner, SignedTreeHead};
use crate::log::merkle::{leaf_hash, to_hex, Hash};
use crate::log::tlog_proof::TlogProof;
use crate::store::query::{Cursor, Filter, Order, PageRequest, MAX_LIMIT};
use crate::store::{Store, StoreError};

/// An entry's place in the tree a head covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProof {
    /// `seq - 1`.
    pub leaf_index: u64,
    /// SHA-256 of 0x00 and the entry's canonical form.
    pub leaf_hash: Hash,
    /// RFC 9162 audit path from the leaf to the head's root.
    pub audit_path: Vec<Hash>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("entry {seq} is not covered by the signed head (size {size}); wait for the next head")]
    NotCovered { seq: u64, size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Encode(#[from] ExportError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}

/// The leaf hash (recomputed from the entry itself, so an entry changed in the store fails
/// verification) and the inclusion proof of `entry` against `head`.
pub fn entry_proof(
    store: &dyn Store,
    entry: &AuditEntry,
    head: &SignedTreeHead,
) -> Result<EntryProof, ProofError> {
    let size = head.head.size;
    if entry.seq == 0 || entry.seq > size {
        return Err(ProofError::NotCovered {
            seq: entry.seq,
            size,
        });
    }
    Ok(EntryProof {
        leaf_index: entry.seq - 1,
        leaf_hash: leaf_hash(&entry.canonical_bytes()),
        audit_path: store.inclusion_proof(entry.seq, size)?,
    })
}

/// The C2SP tlog proof of `entry` against `head`, whose signed checkpoint note is `checkpoint`
/// (see [`crate::log::tlog_proof`]): the entry's canonical bytes, its leaf index and audit path,
/// and the checkpoint.
pub fn entry_tlog_proof(
    store: &dyn Store,
    entry: &AuditEntry,
    head: &SignedTreeHead,
    checkpoint: String,
) -> Result<TlogProof, ProofError> {
    let proof = entry_proof(store, entry, head)?;
    Ok(TlogProof::for_entry(entry, proof.audit_path, checkpoint))
}

/// Adds `leafHash`, `leafIndex` and `auditPath` to an entry's JSON object.
pub fn add_proof_fields(entry_json: &mut Value, proof: &EntryProof) {
    if let Value::Object(object) = entry_json {
        object.insert("leafHash".into(), Value::from(to_hex(&proof.leaf_hash)));
        object.insert("leafIndex".into(), Value::from(proof.leaf_index));
        object.insert(
            "auditPath".into(),
            Value::Array(
                proof
                    .audit_path
                    .iter()
                    .map(|hash| Value::from(to_hex(hash)))
                    .collect(),
            ),
        );
    }
}

/// First line of the text an export manifest's signature covers.
const MANIFEST_FORMAT: &str = "auditgate-export-v1";

/// What the entry lines of an export with proofs are: how many, the first and last `seq`, and
/// SHA-256 over every line's `seq` (8 bytes, big-endian) and leaf hash, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportManifest {
    pub count: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub digest: Hash,
}

impl ExportManifest {
    /// The text the manifest's signature covers: a versioned UTF-8 text of nine lines, each
    /// ending in `\n` — the format name, the head's log id, size, root (hex) and timestamp
    /// (milliseconds), then count, first seq, last seq (`-` for none) and digest (hex). Naming
    /// the head ties the manifest to it: it cannot be moved onto another export.
    pub fn signing_bytes(&self, head: &SignedTreeHead) -> Vec<u8> {
        let seq = |seq: Option<u64>| seq.map_or_else(|| "-".to_string(), |seq| seq.to_string());
        format!(
            "{MANIFEST_FORMAT}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            head.head.log_id,
            head.head.size,
            to_hex(&head.head.root_hash),
            head.head.timestamp.timestamp_millis(),
            self.count,
            seq(self.first_seq),
            seq(self.last_seq),
            to_hex(&self.digest),
        )
        .into_bytes()
    }
}

/// Builds an [`ExportManifest`] line by line (the writer's and the verifier's sides).
#[derive(Debug, Clone, Default)]
pub struct ManifestBuilder {
    hasher: Sha256,
    count: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl ManifestBuilder {
    pub fn add(&mut self, seq: u64, leaf_hash: &Hash) {
        self.hasher.update(seq.to_be_bytes());
        self.hasher.update(leaf_hash);
        self.count += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
    }

    pub fn manifest(&self) -> ExportManifest {
        ExportManifest {
            count: self.count,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            digest: self.hasher.clone().finalize().into(),
        }
    }
}

/// NDJSON with proofs, line by line: [`Self::encode`] per entry, [`Self::finish`] once.
#[derive(Debug)]
pub struct ProofEncoder {
    head: SignedTreeHead,
    entries: u64,
    manifest: ManifestBuilder,
    signer: Option<std::sync::Arc<LogSigner>>,
}

impl ProofEncoder {
    pub fn new(head: SignedTreeHead) -> ProofEncoder {
        ProofEncoder {
            head,
            entries: 0,
            manifest: ManifestBuilder::default(),
            signer: None,
        }
    }

    /// Signs the manifest with the log's key (the key that signed the head), so that nobody
    /// without it can remove or add lines and fix the manifest up.
    pub fn with_signer(mut self, signer: std::sync::Arc<LogSigner>) -> ProofEncoder {
        self.signer = Some(signer);
        self
    }

    pub fn head(&self) -> &SignedTreeHead {
        &self.head
    }

    /// One entry line with its proof.
    pub fn encode(
        &mut self,
        entry: &AuditEntry,
        proof: &EntryProof,
    ) -> Result<Vec<u8>, ExportError> {
        let mut json = entry.to_api_json();
        add_proof_fields(&mut json, proof);
        let mut line = serde_json::to_vec(&json)?;
        line.push(b'\n');
        self.entries += 1;
        self.manifest.add(entry.seq, &proof.leaf_hash);
        Ok(line)
    }

    /// The last line: the head and the manifest of the entry lines before it (signed when the
    /// encoder has the key).
    pub fn finish(&self) -> Result<Vec<u8>, ExportError> {
        let manifest = self.manifest.manifest();
        let mut trailer = serde_json::json!({
            "treeHead": self.head,
            "entries": self.entries,
            "firstSeq": manifest.first_seq,
            "lastSeq": manifest.last_seq,
            "digest": to_hex(&manifest.digest),
        });
        if let Some(signer) = &self.signer {
            let signature = signer.sign_export_manifest(&manifest.signing_bytes(&self.head));
            trailer["signature"] =
                Value::from(base64::engine::general_purpose::STANDARD.encode(signature));
        }
        let mut line = serde_json::to_vec(&trailer)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Writes every entry matching `filter` that `head` covers, oldest first, with proofs, then the
/// head line with an unsigned manifest. Returns the number of entries written. Memory stays
/// flat: one page at a time. [`write_signed_export_with_proofs`] also signs the manifest.
pub fn write_export_with_proofs(
    store: &dyn Store,
    filter: &Filter,
    head: &SignedTreeHead,
    out: &mut dyn std::io::Write,
) -> Result<u64, ProofError> {
    write_encoded(store, filter, ProofEncoder::new(head.clone()), out)
}

/// [`write_export_with_proofs`] with the manifest signed by `signer`, the log's key.
pub fn write_signed_export_with_proofs(
    store: &dyn Store,
    filter: &Filter,
    head: &SignedTreeHead,
    signer: std::sync::Arc<LogSigner>,
    out: &mut dyn std::io::Write,
) -> Result<u64, ProofError> {
    write_encoded(
        store,
        filter,
        ProofEncoder::new(head.clone()).with_signer(signer),
        out,
    )
}

/// [`write_signed_export_with_proofs`] that also hands each entry written, with its proof, to
/// `each` (an export bundle writes each entry's tlog proof beside the NDJSON from it).
pub fn write_signed_export_with_each_proof(
    store: &dyn Store,
    filter: &Filter,
    head: &SignedTreeHead,
    signer: std::sync::Arc<LogSigner>,
    out: &mut dyn std::io::Write,
    each: &mut dyn FnMut(&AuditEntry, &EntryProof) -> Result<(), ProofError>,
) -> Result<u64, ProofError> {
    write_encoded_each(
        store,
        filter,
        ProofEncoder::new(head.clone()).with_signer(signer),
        out,
        each,
    )
}

fn write_encoded(
    store: &dyn Store,
    filter: &Filter,
    encoder: ProofEncoder,
    out: &mut dyn std::io::Write,
) -> Result<u64, ProofError> {
    write_encoded_each(store, filter, encoder, out, &mut |_, _| Ok(()))
}

fn write_encoded_each(
    store: &dyn Store,
    filter: &Filter,
    mut encoder: ProofEncoder,
    out: &mut dyn std::io::Write,
    each: &mut dyn FnMut(&AuditEntry, &EntryProof) -> Result<(), ProofError>,
) -> Result<u64, ProofError> {
    let head = encoder.head().clone();
    let head = &head;
    let mut cursor: Option<Cursor> = None;
    // A store shared by several logs lists them all; only this log's entries have proofs here.
    let mut filter = filter.clone();
    if let Some(own) = store.log_scope() {
        if filter.log_id.as_deref().is_some_and(|wanted| wanted != own) {
            out.write_all(&encoder.finish()?)?;
            return Ok(0);
        }
        filter.log_id = Some(own.to_string());
    }
    'pages: loop {
        let page = store.list(
            &filter,
            &PageRequest {
                limit: MAX_LIMIT,
                cursor,
                order: Order::Asc,
                ..PageRequest::default()
            },
        )?;
        for entry in &page.entries {
            if entry.seq > head.head.size {
                break 'pages;
            }
            let proof = entry_proof(store, entry, head)?;
            out.write_all(&encoder.encode(entry, &proof)?)?;
            each(entry, &proof)?;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.write_all(&encoder.finish()?)?;
    Ok(encoder.entries)
}
