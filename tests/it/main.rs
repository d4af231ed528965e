//! The one integration-test binary: real servers on 127.0.0.1:0, one module per area.

mod pg;
mod support;

mod admin;
mod archive;
mod checkpoint;
mod configs;
mod deploy;
mod discover;
mod durability;
mod evasion;
mod events;
mod faults;
mod fleet;
mod hints;
mod hostile;
mod identity;
mod jwks;
mod openapi;
mod ops;
mod otlp;
mod pg_partitions;
mod pg_tls;
mod proofs;
mod proxy;
mod running;
mod siem;
mod siem_ocsf;
mod store;
mod tamper;
mod tiles;
mod viewer;
mod witness;
