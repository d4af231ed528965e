//! auditgate: a reverse-proxy sidecar that gives any unmodified HTTP application a
//! compliance-grade, tamper-evident audit log.
//!
//! The data flow, and the module for each step: a request arrives at [`proxy`], which makes its
//! path and method canonical with [`normalize`], asks [`rules`] for candidate rules and [`actor`] / [`client_ip`] who sent it; when the response
//! ends the [`entry`] is finished from the rule's [`template`]s and handed to the [`writer`],
//! which appends batches to the [`store`]; the [`admin`] listener serves health, queries and the
//! viewer. [`config`] turns the TOML file into all of the above; [`server`] wires them together.
#![forbid(unsafe_code)]

pub mod actor;
pub mod admin;
pub mod backup;
pub mod check;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod config_env;
pub mod demo;
pub mod entry;
pub mod explain;
pub mod export;
pub mod export_proofs;
pub mod hints;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod normalize;
pub mod ocsf;
pub mod openapi_rules;
pub mod proxy;
pub mod redact;
pub mod retention;
pub mod rules;
pub mod run;
pub mod server;
pub mod signer;
pub mod store;
pub mod store_location;
pub mod stream;
pub mod template;
pub mod tls;
pub mod units;
pub mod verify;
pub mod writer;
