//! auditgate: a reverse-proxy sidecar that gives any unmodified HTTP application a
//! compliance-grade, tamper-evident audit log.
//!
//! The modules, from the top of the data flow down; each imports only modules below it
//! (`scripts/import-circles` fails the build on a circle):
//!
//! - [`commands`]: one module per subcommand; `run` starts a [`server`].
//! - [`server`]: wires a [`config::Config`] into the running parts and reloads them.
//! - [`config`]: reads the TOML file and assembles each component's own settings, collecting
//!   every error at once.
//! - [`archive`]: ships committed entries to S3-compatible buckets as objects that verify on
//!   their own, and `verify-archive`. It reads the [`store`] and builds on [`export`] and
//!   [`verify`].
//! - [`admin`]: the admin listener: health, metrics, the query, export and verification API,
//!   the viewer. It reads the [`store`] and the [`log`].
//! - [`proxy`]: forwards each request to the app and finishes its entry when the exchange ends.
//! - [`discover`]: learns route templates from the traffic the proxy sees (`[discover]`), for
//!   the coverage page and `auditgate rules suggest`. It imports nothing of the crate but
//!   [`base`].
//! - [`policy`]: what is recorded: the rules, their templates, redaction, response hints.
//! - [`identity`]: who sent a request: the actor sources and the client address.
//! - [`request`]: the request as the rules see it: canonical path and method, route templates.
//! - [`signer`]: signs tree heads and publishes them.
//! - [`verify`]: walks the stored log and checks it against its signed heads.
//! - [`export`]: entries out as CSV, JSON, NDJSON, OCSF, with proofs.
//! - [`writer`]: entries into the store in group commits, and the NDJSON stream after them.
//! - [`store`]: where entries are appended and queried: SQLite or PostgreSQL.
//! - [`log`]: the Merkle tree over the entries and the signed heads that commit to it.
//! - [`entry`]: the audit entry itself.
//! - [`metrics`], [`net`], [`base`]: counters, the TLS client, and the vocabulary every
//!   component's settings share (errors with where they are, units, paths).
#![forbid(unsafe_code)]

pub mod admin;
pub mod archive;
pub mod base;
pub mod commands;
pub mod config;
pub mod discover;
pub mod entry;
pub mod export;
pub mod identity;
pub mod log;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod server;
pub mod signer;
pub mod store;
pub mod verify;
pub mod writer;
