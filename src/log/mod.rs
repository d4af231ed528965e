//! Tamper evidence: the Merkle tree over the log's entries and the signed heads that commit to it.
pub mod merkle;
