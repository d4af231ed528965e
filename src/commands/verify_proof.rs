//! `auditgate verify-proof FILE... --vkey VKEY`: checks offline proofs of single entries, the C2SP
//! tlog-proof files of `GET /api/v1/entries/{id}/tlog-proof` and `auditgate export --bundle`,
//! against the log's verifier key, without the database, and, with `--witness`, that enough of
//! the given witnesses cosigned each proof's checkpoint (C2SP tlog-cosignature).

use std::io::Read as _;
use std::path::Path;

use crate::commands::cli::VerifyProofArgs;
use crate::log::checkpoint::VerifierKey;
use crate::log::tlog_proof::{verify_entry_proof, TlogProof, TlogProofError, MAX_PROOF_BYTES};
use crate::log::witness::WitnessKey;
use crate::verify::{EXIT_TAMPERED, EXIT_UNREADABLE, EXIT_USAGE};

/// The witnesses whose cosignatures each proof's checkpoint must carry, and how many of them.
struct WitnessPolicy {
    keys: Vec<WitnessKey>,
    required: usize,
}

impl WitnessPolicy {
    /// `Ok(())` when at least `required` of the keys made a valid cosignature of `checkpoint`;
    /// else the reason. A cosignature line by one of the keys that does not verify is a reason
    /// too: the signed-note spec makes such a note malformed.
    fn check(&self, checkpoint: &str) -> Result<String, String> {
        let mut cosigned = Vec::new();
        let mut missing = Vec::new();
        for key in &self.keys {
            match key.cosignatures_in_note(checkpoint) {
                Ok(found) if !found.is_empty() => cosigned.push(key.name().to_string()),
                Ok(_) => missing.push(key.name().to_string()),
                Err(error) => return Err(format!("witness {}: {error}", key.name())),
            }
        }
        if cosigned.len() >= self.required {
            Ok(format!(
                ", cosigned by {} of {} witnesses ({})",
                cosigned.len(),
                self.keys.len(),
                cosigned.join(", ")
            ))
        } else {
            Err(format!(
                "the checkpoint is cosigned by {} of the {} witnesses given, {} required (no \
                 valid cosignature by {})",
                cosigned.len(),
                self.keys.len(),
                self.required,
                missing.join(", ")
            ))
        }
    }
}

/// Reads the `--witness` keys; an error is the message and the exit code.
fn witness_policy(args: &VerifyProofArgs) -> Result<Option<WitnessPolicy>, (String, u8)> {
    if args.witnesses.is_empty() {
        return Ok(None);
    }
    let keys = args
        .witnesses
        .iter()
        .map(|path| {
            WitnessKey::load(path).map_err(|error| {
                (
                    format!("--witness {}: {error}", path.display()),
                    EXIT_UNREADABLE,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    Ok(Some(WitnessPolicy { keys, required }))
}

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
    let policy = match witness_policy(args) {
        Ok(policy) => policy,
        Err((message, code)) => {
            eprintln!("auditgate verify-proof: {message}");
            return code;
        }
    };
    let mut invalid = false;
    let mut unreadable = false;
    let mut report = String::new();
    for path in &args.files {
        let shown = path.display();
        match check_file(path, &vkey, policy.as_ref()) {
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

fn check_file(path: &Path, vkey: &VerifierKey, policy: Option<&WitnessPolicy>) -> FileResult {
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
    let verified = match verify_entry_proof(&proof, vkey) {
        Ok(verified) => verified,
        Err(error) => return FileResult::Invalid(error.to_string()),
    };
    // The witnesses are asked only of a checkpoint the log's key signed: a cosignature of a
    // checkpoint the log never made proves nothing about the log.
    let witnessed = match policy.map(|policy| policy.check(&proof.checkpoint)) {
        None => String::new(),
        Some(Ok(witnessed)) => witnessed,
        Some(Err(reason)) => return FileResult::Invalid(reason),
    };
    FileResult::Ok(format!(
        "ok seq {} action {} in {} at size {}{witnessed}",
        verified.entry.seq,
        verified.entry.action.escape_debug(),
        verified.checkpoint.origin,
        verified.checkpoint.size
    ))
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
