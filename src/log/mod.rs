//! Tamper evidence: the Merkle tree over a log's entries and the signed heads that commit to it.
//!
//! Every entry's canonical form ([`crate::entry::AuditEntry::canonical_bytes`]) is a leaf of an
//! RFC 9162 (Certificate Transparency v2) Merkle tree, one tree per log, in log order: leaf index
//! = `seq - 1`. The store keeps the hash of every *complete* subtree, which never changes once
//! complete, and the writer keeps only the tree's right edge in memory ([`merkle::Frontier`]): an
//! append hashes O(log n) nodes and stores them in the same transaction as the entry, and every
//! root or proof the RFC defines is folded from O(log n) stored nodes, never from all the leaves.
//! A tree head (log id, size, root, time) signed with the log's Ed25519 key ([`head`]) is
//! published outside auditgate; from then on, an inclusion proof shows that an entry is in the
//! tree that head covers, a consistency proof shows that a later head extends an earlier one, and
//! any change to or removal of a covered entry changes the root and breaks both.
//!
//! The files: [`merkle`] (hashing, frontier, proofs, proof verification), [`head`] (signed heads
//! and key files), [`checkpoint`] (heads as C2SP checkpoints, verifier keys), [`witness`] (witness
//! cosignatures and the tlog-witness request), [`pruned`] (what an `audit.pruned` entry claims), [`verify`] (the resumable
//! check of a stored log). They do no I/O of their own except key files: [`verify`] reads through
//! the [`crate::store::LogReader`] it is given. The signer task is [`crate::signer`], retention
//! [`crate::store::retention`], the file-level commands [`crate::verify`]. [`tlog_proof`] writes
//! and checks one entry's offline proof in the C2SP tlog-proof form.
//!
//! # What `auditgate verify` proves
//!
//! For every position of the log: the entry row hashes to the stored leaf, or the position is
//! marked as pruned by an `audit.pruned` entry whose claim matches the marks exactly; every stored
//! tree node equals the hash of the leaves below it; every signed head (stored in the database,
//! and in the heads file when given) has the root recomputed from the leaves and, given the public
//! key, a valid signature; no head has a smaller size than one signed before it; no head covers
//! more entries than the log holds; and every head in the database is also in the heads file. It
//! names the first bad sequence number and what is wrong.
//!
//! What it cannot prove on its own: someone who can rewrite the whole database *and* has the
//! signing key can make a consistent forgery, and someone who can rewrite the database without
//! the key can replace it with an older copy whose own heads still check out. Both are why heads
//! are published outside the database (`publish_heads`) and the key is kept apart from it: the
//! published heads catch a restored older copy, a cut tail and a rewritten history.
//!
//! # The heads file
//!
//! `publish_heads = ["file:PATH"]` appends one line per signed head, in the JSON form of
//! [`head::SignedTreeHead`], and fsyncs it:
//!
//! ```text
//! {"logId":"orders","size":42,"rootHash":"<64 hex>","timestamp":"2026-01-02T03:04:05.678Z","keyId":"<16 hex>","signature":"<base64>"}
//! ```
//!
//! A URL target receives the same JSON as the body of a `POST` (`Content-Type:
//! application/json`), or, written `{ target = "...", format = "checkpoint" }`, the head as a C2SP
//! checkpoint ([`checkpoint`]; `text/plain`). Each head is written to file targets before it is stored, so every stored
//! head is in the file; `auditgate verify --heads PATH` reports a stored head missing from the
//! file as a truncated or edited file.
//!
//! # Exports with proofs
//!
//! An NDJSON export made with `proofs=true` ([`crate::export::proofs`]) is checked offline by
//! `auditgate verify-export FILE --key PUBKEY`. Each entry line is the entry's API JSON plus its
//! place in the tree; the last line is the signed head every proof leads to, and how many entry
//! lines precede it:
//!
//! ```text
//! {"id":"01J...","seq":42,...,"metadata":{...},"leafHash":"<hex>","leafIndex":41,"auditPath":["<hex>",...]}
//! ...
//! {"treeHead":{"logId":"orders","size":1000,"rootHash":"<hex>","timestamp":"...","keyId":"...","signature":"..."},"entries":1}
//! ```
//!
//! The verifier recomputes each leaf from the entry's fields (so an edited line fails), checks
//! `leafIndex == seq - 1`, folds the audit path to the head's root (RFC 9162 2.1.3.2), checks the
//! head's signature, and compares the line count with `entries`.

pub mod checkpoint;
pub mod config;
pub mod head;
pub mod merkle;
pub mod pruned;
pub mod tiles;
pub mod tlog_proof;
pub mod witness;
