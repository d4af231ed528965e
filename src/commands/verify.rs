//! `auditgate verify` and `auditgate verify-export`: check a store or an export against its
//! signed heads and print the report.

use std::path::PathBuf;

use crate::log::head::LogVerifier;
use crate::verify::check::VerifyReport;
use crate::verify::{
    describe, exit_code, report_json, verify_database, verify_export, verify_log, VerifyError,
    EXIT_UNREADABLE, EXIT_USAGE,
};

fn load_keys(paths: &[PathBuf]) -> Result<Vec<LogVerifier>, String> {
    paths
        .iter()
        .map(|path| LogVerifier::load(path).map_err(|error| error.to_string()))
        .collect()
}

fn print_report(report: &VerifyReport, what: &str, json: bool) -> u8 {
    let text = if json {
        format!("{}\n", report_json(report))
    } else {
        describe(report, what)
    };
    if let Err(error) = crate::commands::cli::print_stdout(&text) {
        eprintln!("auditgate: cannot write the report: {error}");
    }
    exit_code(report)
}

/// `auditgate verify`; returns the exit code.
pub fn run_verify(args: &crate::commands::cli::VerifyArgs) -> u8 {
    let keys = match load_keys(&args.keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("auditgate verify: {message}");
            return EXIT_UNREADABLE;
        }
    };
    use crate::commands::store_location::{locate, LocateError, StoreLocation};
    let located = match locate(args.store.db.as_deref(), args.store.config.as_deref()) {
        Ok(located) => located,
        Err(LocateError::Config(errors)) => {
            eprint!("{errors}");
            return EXIT_USAGE;
        }
    };
    let (what, verified) = match &located.location {
        StoreLocation::Sqlite(path) => (
            path.display().to_string(),
            verify_database(path, args.heads.as_deref(), &keys),
        ),
        postgres => {
            let Some(log_id) = args.log_id.clone().or(located.config_log_id) else {
                eprintln!(
                    "auditgate verify: --log-id is required with a PostgreSQL database: each \
                     sidecar's log verifies on its own"
                );
                return EXIT_UNREADABLE;
            };
            let verified = postgres
                .open_for_reading(&log_id)
                .map_err(VerifyError::from)
                .and_then(|opened| verify_log(opened.store.as_ref(), args.heads.as_deref(), &keys));
            (format!("log {log_id}"), verified)
        }
    };
    match verified {
        Ok(report) => print_report(&report, &what, args.json),
        Err(error) => {
            eprintln!("auditgate verify: cannot read the log: {error}");
            EXIT_UNREADABLE
        }
    }
}

/// `auditgate verify-export`; returns the exit code.
pub fn run_verify_export(args: &crate::commands::cli::VerifyExportArgs) -> u8 {
    let keys = match load_keys(&args.keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("auditgate verify-export: {message}");
            return EXIT_UNREADABLE;
        }
    };
    match verify_export(&args.file, &keys) {
        Ok(report) => print_report(&report, &args.file.display().to_string(), args.json),
        Err(VerifyError::NoProofs) => {
            eprintln!(
                "auditgate verify-export: {}: {}",
                args.file.display(),
                VerifyError::NoProofs
            );
            EXIT_UNREADABLE
        }
        Err(error) => {
            eprintln!("auditgate verify-export: cannot read the export: {error}");
            EXIT_UNREADABLE
        }
    }
}
