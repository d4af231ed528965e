//! `auditgate verify` and `auditgate verify-export`: check a store or an export against its
//! signed heads and print the report.

use std::path::PathBuf;

use crate::log::head::LogVerifier;
use crate::log::witness::WitnessKey;
use crate::verify::check::VerifyReport;
use crate::verify::{
    check_database_witnesses, check_witnesses, describe, exit_code, report_json, verify_database,
    verify_export, verify_log, VerifyError, WitnessOutcome, WitnessPolicy, EXIT_TAMPERED,
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

/// The witness policy of the command line: `--witness` keys (or, with `--config` and none
/// given, the config's witnesses) and `--witnesses-required`; `Ok(None)` when neither flag is
/// given. An error is the message and the exit code.
fn witness_policy(
    args: &crate::commands::cli::VerifyArgs,
    config_witnesses: &[WitnessKey],
    config_origin: Option<String>,
) -> Result<Option<WitnessPolicy>, (String, u8)> {
    if args.witnesses.is_empty() && args.witnesses_required.is_none() {
        return Ok(None);
    }
    let keys = if args.witnesses.is_empty() {
        config_witnesses.to_vec()
    } else {
        args.witnesses
            .iter()
            .map(|path| {
                WitnessKey::load(path).map_err(|error| (error.to_string(), EXIT_UNREADABLE))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if keys.is_empty() {
        return Err((
            "--witnesses-required needs witness keys: give --witness VKEY_FILE, or --config \
             with [[log.witnesses]]"
                .into(),
            EXIT_USAGE,
        ));
    }
    let required = args.witnesses_required.unwrap_or(keys.len());
    if required == 0 || required > keys.len() {
        return Err((
            format!(
                "--witnesses-required {required} must be between 1 and the {} witnesses given",
                keys.len()
            ),
            EXIT_USAGE,
        ));
    }
    Ok(Some(WitnessPolicy {
        keys,
        required,
        origin: args.origin.clone().or(config_origin),
    }))
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
    let policy = match witness_policy(
        args,
        &located.config_witnesses,
        located.config_origin.clone(),
    ) {
        Ok(policy) => policy,
        Err((message, code)) => {
            eprintln!("auditgate verify: {message}");
            return code;
        }
    };
    let mut witnessed: Option<Result<WitnessOutcome, VerifyError>> = None;
    let (what, verified) = match &located.location {
        StoreLocation::Sqlite(path) => {
            witnessed = policy
                .as_ref()
                .map(|policy| check_database_witnesses(path, policy));
            (
                path.display().to_string(),
                verify_database(path, args.heads.as_deref(), &keys),
            )
        }
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
                .and_then(|opened| {
                    witnessed = policy
                        .as_ref()
                        .map(|policy| check_witnesses(opened.store.as_ref(), policy));
                    verify_log(opened.store.as_ref(), args.heads.as_deref(), &keys)
                });
            (format!("log {log_id}"), verified)
        }
    };
    let report = match verified {
        Ok(report) => report,
        Err(error) => {
            eprintln!("auditgate verify: cannot read the log: {error}");
            return EXIT_UNREADABLE;
        }
    };
    let outcome = match witnessed.transpose() {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("auditgate verify: cannot read the witness cosignatures: {error}");
            return EXIT_UNREADABLE;
        }
    };
    let Some(outcome) = outcome else {
        return print_report(&report, &what, args.json);
    };
    let text = if args.json {
        let mut json = report_json(&report);
        json["witnesses"] = outcome.to_json();
        format!("{json}\n")
    } else {
        format!("{}{}", describe(&report, &what), outcome.describe())
    };
    if let Err(error) = crate::commands::cli::print_stdout(&text) {
        eprintln!("auditgate: cannot write the report: {error}");
    }
    // A log that checks out but whose latest head lacks the cosignatures asked for fails the
    // check like a tampered one: the policy is what the caller relies on.
    if outcome.met() {
        exit_code(&report)
    } else {
        EXIT_TAMPERED
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
