//! Tamper evidence: the Merkle tree over a log's entries and the signed heads that commit to it.
//!
//! Every entry's canonical form is a leaf of an RFC 9162 (Certificate Transparency v2) Merkle tree,
//! one tree per log, in log order. The store keeps the hash of every *complete* subtree, which
//! never changes once complete, and the writer keeps only the tree's right edge in memory
//! ([`merkle::Frontier`]): an append hashes O(log n) nodes and stores them in the same transaction
//! as the entry, and every root or proof the RFC defines is folded from O(log n) stored nodes, never
//! from all the leaves. A tree head (log id, size, root, time) signed with the log's Ed25519 key
//! ([`head`]) is published outside auditgate; from then on, an inclusion proof shows that an entry
//! is in the tree that head covers, a consistency proof shows that a later head extends an earlier
//! one, and any change to or removal of a covered entry changes the root and breaks both. This
//! module is pure: no I/O except reading and writing key files, no clock, no store.

pub mod head;
pub mod merkle;
pub mod pruned;
pub mod verify;
