//! The subcommands of the `auditgate` binary, one module each; [`cli`] defines the command line.

pub mod backup;
pub mod check;
pub mod cli;
pub mod demo;
pub mod explain;
pub mod openapi_rules;
pub mod prune;
pub mod run;
pub mod store_location;
pub mod verify;
pub mod verify_archive;
