//! auditgate: a reverse-proxy sidecar that gives any unmodified HTTP application a
//! compliance-grade, tamper-evident audit log.
#![forbid(unsafe_code)]

pub mod entry;
pub mod export;
pub mod store;
