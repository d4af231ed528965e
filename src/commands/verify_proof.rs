//! `auditgate verify-proof FILE... --vkey VKEY`: checks offline proofs of single entries, the C2SP
//! tlog-proof files of `GET /api/v1/entries/{id}/tlog-proof` and `auditgate export --bundle`,
//! against the log's verifier key, without the database.

use std::io::Read as _;
use std::path::Path;

use crate::commands::cli::VerifyProofArgs;
use crate::log::checkpoint::VerifierKey;
use crate::log::tlog_proof::{verify_entry_proof, TlogProof, TlogProofError, MAX_PROOF_BYTES};
use crate::verify::{EXIT_TAMPERED, EXIT_UNREADABLE};

/// What became of one file.
#[derive(Debug)]
enum FileResult {
    Ok(String),
    Invalid(String),
    Unreadable(String),
}

/// Runs the command; returns the exit code: 0 when every proof verifies, 1 when any does not
/// (a changed entry, index, proof or checkpoint is tampering, the louder finding), else 2 when
/// any file or the key could not be read or is not a tlog proof at all.
pub fn run_verify_proof(args: &VerifyProofArgs) -> u8 {
    let vkey = match VerifierKey::load(&args.vkey) {
        Ok(vkey) => vkey,
        Err(error) => {
            eprintln!("auditgate verify-proof: --vkey: {error}");
            return EXIT_UNREADABLE;
        }
    };
    let mut invalid = false;
    let mut unreadable = false;
    let mut report = String::new();
    for path in &args.files {
        let shown = path.display();
        match check_file(path, &vkey) {
            FileResult::Ok(line) => report.push_str(&format!("{shown}: {line}\n")),
            FileResult::Invalid(reason) => {
                invalid = true;
                report.push_str(&format!("{shown}: INVALID: {reason}\n"));
            }
            FileResult::Unreadable(reason) => {
                unreadable = true;
                report.push_str(&format!("{shown}: cannot check: {reason}\n"));
            }
        }
    }
    if let Err(error) = crate::commands::cli::print_stdout(&report) {
        eprintln!("auditgate verify-proof: cannot write the report: {error}");
    }
    if invalid {
        EXIT_TAMPERED
    } else if unreadable {
        EXIT_UNREADABLE
    } else {
        0
    }
}

fn check_file(path: &Path, vkey: &VerifierKey) -> FileResult {
    let text = match read_bounded(path) {
        Ok(text) => text,
        Err(reason) => return FileResult::Unreadable(reason),
    };
    let proof = match TlogProof::parse(&text) {
        Ok(proof) => proof,
        Err(error @ (TlogProofError::NotAProof | TlogProofError::TooLong)) => {
            return FileResult::Unreadable(error.to_string())
        }
        Err(error) => return FileResult::Invalid(error.to_string()),
    };
    match verify_entry_proof(&proof, vkey) {
        Ok(verified) => FileResult::Ok(format!(
            "ok seq {} action {} in {} at size {}",
            verified.entry.seq,
            verified.entry.action.escape_debug(),
            verified.checkpoint.origin,
            verified.checkpoint.size
        )),
        Err(error) => FileResult::Invalid(error.to_string()),
    }
}

/// The file as text, refusing one longer than any proof can be before reading it all.
fn read_bounded(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_PROOF_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() > MAX_PROOF_BYTES {
        return Err(TlogProofError::TooLong.to_string());
    }
    String::from_utf8(bytes).map_err(|_| "not a tlog proof: not UTF-8 text".to_string())
}
