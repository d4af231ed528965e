//! Exports with proofs (`proofs=true`): NDJSON an auditor verifies offline with
//! `auditgate verify-export FILE --key PUBKEY`, without the database.
//!
//! Each entry line is the entry's API JSON (as [`crate::export`] writes it) with three more keys,
//! and the last line is the signed head every proof leads to (format in [`crate::log`]):
//!
//! ```text
//! {...entry..., "leafHash": "<hex>", "leafIndex": 41, "auditPath": ["<hex>", ...]}
//! {"treeHead": {"logId": ..., "size": ..., "rootHash": ..., ...}, "entries": 1}
//! ```
//!
//! The head is chosen before the first entry is written (the latest signed head), so only
//! entries it covers (`seq <= size`) can be exported with proofs; an exporter filters on that.

use serde_json::Value;

use crate::entry::AuditEntry;
use crate::export::ExportError;
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{leaf_hash, to_hex, Hash};
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

/// NDJSON with proofs, line by line: [`Self::encode`] per entry, [`Self::finish`] once.
#[derive(Debug)]
pub struct ProofEncoder {
    head: SignedTreeHead,
    entries: u64,
}

impl ProofEncoder {
    pub fn new(head: SignedTreeHead) -> ProofEncoder {
        ProofEncoder { head, entries: 0 }
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
        Ok(line)
    }

    /// The last line: the head and how many entry lines came before it.
    pub fn finish(&self) -> Result<Vec<u8>, ExportError> {
        let mut line = serde_json::to_vec(&serde_json::json!({
            "treeHead": self.head,
            "entries": self.entries,
        }))?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Writes every entry matching `filter` that `head` covers, oldest first, with proofs, then the
/// head line. Returns the number of entries written. Memory stays flat: one page at a time.
pub fn write_export_with_proofs(
    store: &dyn Store,
    filter: &Filter,
    head: &SignedTreeHead,
    out: &mut dyn std::io::Write,
) -> Result<u64, ProofError> {
    let mut encoder = ProofEncoder::new(head.clone());
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
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.write_all(&encoder.finish()?)?;
    Ok(encoder.entries)
}
