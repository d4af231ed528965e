//! `auditgate verify` and `auditgate verify-export`: the file-reading side of verification.
//!
//! The checks themselves are [`crate::verify::check::LogCheck`] (a database) and
//! [`check_export_line`] (an export); this module opens the files, reads published heads, and
//! turns the outcome into the report and exit code the CLI prints: 0 intact, 1 tampered, 2 could
//! not read.

pub mod check;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::Value;

use crate::entry::AuditEntry;
use crate::log::checkpoint::Checkpoint;
use crate::log::head::{LogVerifier, SignedTreeHead};
use crate::log::merkle::{from_hex, leaf_hash, verify_inclusion, Hash};
use crate::log::witness::WitnessKey;
use crate::store::sqlite::SqliteLogReader;
use crate::store::{LogReader, StoreError};
use crate::verify::check::{
    missing_from_published, HeadOrigin, HeadToCheck, LogCheck, Problem, VerifyReport,
};

/// Exit code: everything checked out.
pub const EXIT_INTACT: u8 = 0;
/// Exit code: something was changed, removed or forged.
pub const EXIT_TAMPERED: u8 = 1;
/// Exit code: the input could not be read.
pub const EXIT_UNREADABLE: u8 = 2;
/// Exit code: the command line or the configuration file is invalid (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Verification could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{path}: {error}", path = .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An export without proofs (CSV, JSON, or NDJSON made without `proofs`): nothing in it can
    /// be checked, which is not the same as finding it tampered.
    #[error(
        "this export carries no proofs: make one with `auditgate export --format ndjson --proofs` \
         or GET /api/v1/export?format=ndjson&proofs=true"
    )]
    NoProofs,
}

/// The exit code for a finished verification.
pub fn exit_code(report: &VerifyReport) -> u8 {
    if report.ok() {
        EXIT_INTACT
    } else {
        EXIT_TAMPERED
    }
}

/// Every stored head, oldest first.
pub fn stored_heads<R: LogReader + ?Sized>(reader: &R) -> Result<Vec<HeadToCheck>, StoreError> {
    let mut heads = Vec::new();
    let mut after = 0;
    loop {
        let page = reader.heads_after(after, 1000)?;
        let Some(last) = page.last() else {
            return Ok(heads);
        };
        after = last.id;
        heads.extend(page.into_iter().map(|stored| HeadToCheck {
            head: stored.head,
            origin: HeadOrigin::Store(stored.id),
        }));
    }
}

/// The heads of a published heads file (one JSON head per line; blank lines are skipped). A line
/// that is not a signed head is a problem (the file was edited or cut mid-line), not an error.
pub fn read_heads_file(path: &Path) -> Result<(Vec<HeadToCheck>, Vec<Problem>), VerifyError> {
    let io_error = |error| VerifyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io_error)?;
    let mut heads = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error)?;
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<SignedTreeHead>(&line) {
            Ok(head) => heads.push(HeadToCheck {
                head,
                origin: HeadOrigin::File(number),
            }),
            Err(error) => problems.push(Problem {
                seq: None,
                message: format!(
                    "heads file line {number} is not a signed tree head ({error}): the file was \
                     edited or cut"
                ),
            }),
        }
    }
    Ok((heads, problems))
}

/// The newest heads of one log in a published heads file, read incrementally: each
/// [`PublishedHeads::refresh`] reads only the complete lines appended since the one before, so a
/// long file costs one full read (at start) and then only its new lines.
///
/// Only heads of the log (`log_id`) are kept, and, when keys are given, only heads one of them
/// signed: a line someone else wrote into the file cannot stop the sidecar (`auditgate verify
/// --heads` reports such lines).
#[derive(Debug)]
pub struct PublishedHeads {
    pub path: PathBuf,
    log_id: String,
    keys: Vec<LogVerifier>,
    /// Bytes of the file read so far (complete lines only).
    offset: u64,
    /// Lines read so far, for line numbers.
    lines: u64,
    /// The heads of the largest size read so far.
    latest: Vec<HeadToCheck>,
}

impl PublishedHeads {
    pub fn new(path: PathBuf, log_id: &str, keys: Vec<LogVerifier>) -> PublishedHeads {
        PublishedHeads {
            path,
            log_id: log_id.to_string(),
            keys,
            offset: 0,
            lines: 0,
            latest: Vec::new(),
        }
    }

    /// The same file, to be read again from its start.
    pub fn restarted(self) -> PublishedHeads {
        PublishedHeads::new(self.path, &self.log_id, self.keys)
    }

    /// Reads what was appended since the last call and returns the heads of the largest size
    /// published so far (every line with that size). A missing file holds no heads yet. A file
    /// shorter than what was already read was truncated: that is returned as a problem, and the
    /// file is read again from its start.
    pub fn refresh(&mut self) -> Result<(&[HeadToCheck], Option<Problem>), VerifyError> {
        let io_error = |error| VerifyError::Io {
            path: self.path.clone(),
            error,
        };
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((&self.latest, None));
            }
            Err(error) => return Err(io_error(error)),
        };
        let length = file.metadata().map_err(io_error)?.len();
        let mut problem = None;
        if length < self.offset {
            problem = Some(Problem {
                seq: None,
                message: format!(
                    "{}: the heads file is shorter than when it was last read ({length} bytes, \
                     was {}): it was truncated or replaced",
                    self.path.display(),
                    self.offset
                ),
            });
            self.offset = 0;
            self.lines = 0;
            self.latest.clear();
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io_error)?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(io_error)?;
            // A line without its newline is still being written: it is read next time.
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            self.offset += read as u64;
            self.lines += 1;
            let Ok(head) = serde_json::from_slice::<SignedTreeHead>(&line) else {
                continue;
            };
            if head.head.log_id != self.log_id
                || (!self.keys.is_empty() && !self.keys.iter().any(|key| key.verify(&head).is_ok()))
            {
                continue;
            }
            let largest = self.latest.first().map(|head| head.head.head.size);
            if largest.is_some_and(|largest| head.head.size < largest) {
                continue;
            }
            if largest.is_some_and(|largest| head.head.size > largest) {
                self.latest.clear();
            }
            // Heartbeats repeat a size with the same root: one of them stands for all, so a
            // quiet log does not pile them up; a second root for the size is kept (a fork).
            self.latest
                .retain(|kept| kept.head.head.root_hash != head.head.root_hash);
            self.latest.push(HeadToCheck {
                head,
                origin: HeadOrigin::File(self.lines),
            });
        }
        Ok((&self.latest, problem))
    }
}

/// `auditgate verify`: checks a database file, read-only, against its stored heads and, when
/// given, a published heads file; signatures are checked when `keys` are given.
pub fn verify_database(
    db: &Path,
    heads_file: Option<&Path>,
    keys: &[LogVerifier],
) -> Result<VerifyReport, VerifyError> {
    verify_database_on(db, heads_file, keys, check::default_page_threads())
}

/// [`verify_database`] reading and hashing the log's pages on `page_threads` threads (0 or 1:
/// one thread reads while another hashes).
pub fn verify_database_on(
    db: &Path,
    heads_file: Option<&Path>,
    keys: &[LogVerifier],
    page_threads: usize,
) -> Result<VerifyReport, VerifyError> {
    let connections = if page_threads >= 2 { page_threads } else { 0 };
    let reader = SqliteLogReader::open(db)?.with_page_readers(connections)?;
    let check = LogCheck::new(keys.to_vec()).with_page_threads(page_threads);
    let report = verify_log_with(&reader, heads_file, check)?;
    reader.check_unchanged()?;
    Ok(report)
}

/// [`verify_database`] over any log.
pub fn verify_log<R: LogReader + ?Sized>(
    reader: &R,
    heads_file: Option<&Path>,
    keys: &[LogVerifier],
) -> Result<VerifyReport, VerifyError> {
    verify_log_with(reader, heads_file, LogCheck::new(keys.to_vec()))
}

/// [`verify_log`] with a new check (`LogCheck::new`, its threads set or not).
fn verify_log_with<R: LogReader + ?Sized>(
    reader: &R,
    heads_file: Option<&Path>,
    mut check: LogCheck,
) -> Result<VerifyReport, VerifyError> {
    let stored = stored_heads(reader)?;
    let mut heads = stored.clone();
    if let Some(path) = heads_file {
        let (published, problems) = read_heads_file(path)?;
        check.add_problems(problems);
        check.add_problems(missing_from_published(&stored, &published));
        // A head both stored and published is checked once.
        let seen: HashSet<(Vec<u8>, [u8; 64])> = stored
            .iter()
            .map(|head| (head.head.head.signing_bytes(), head.head.signature))
            .collect();
        heads.extend(
            published.into_iter().filter(|head| {
                !seen.contains(&(head.head.head.signing_bytes(), head.head.signature))
            }),
        );
    }
    check.add_heads(reader, heads)?;
    Ok(check.finish(reader)?)
}

/// What `auditgate verify --witness` asks of the latest signed head: cosignatures by at least
/// `required` of `keys` over its checkpoint under `origin`.
#[derive(Debug, Clone)]
pub struct WitnessPolicy {
    pub keys: Vec<WitnessKey>,
    pub required: usize,
    /// The checkpoints' origin; `None` means the head's log id (the default origin).
    pub origin: Option<String>,
}

/// How the latest signed head fares against a [`WitnessPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessOutcome {
    /// The latest signed head's size; `None` when the log has no signed head.
    pub size: Option<u64>,
    pub required: usize,
    /// The names of the policy's witnesses whose stored cosignature verifies.
    pub cosigned_by: Vec<String>,
    /// The names of the others.
    pub missing: Vec<String>,
}

impl WitnessOutcome {
    pub fn met(&self) -> bool {
        self.size.is_some() && self.cosigned_by.len() >= self.required
    }

    /// One line for the terminal report.
    pub fn describe(&self) -> String {
        let Some(size) = self.size else {
            return format!(
                "  witnesses: NOT MET: the log has no signed head to be cosigned ({} required)\n",
                self.required
            );
        };
        let given = self.cosigned_by.len() + self.missing.len();
        let mut line = format!(
            "  witnesses: {}the latest signed head (size {size}) is cosigned by {} of the {given} \
             witnesses given, {} required",
            if self.met() { "" } else { "NOT MET: " },
            self.cosigned_by.len(),
            self.required
        );
        if !self.cosigned_by.is_empty() {
            let _ = write!(line, "; cosigned by {}", self.cosigned_by.join(", "));
        }
        if !self.missing.is_empty() {
            let _ = write!(
                line,
                "; no valid cosignature by {}",
                self.missing.join(", ")
            );
        }
        line.push('\n');
        line
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "met": self.met(),
            "size": self.size,
            "required": self.required,
            "cosignedBy": self.cosigned_by,
            "missing": self.missing,
        })
    }
}

/// Checks the latest stored head against `policy`: which of its witnesses have a stored
/// cosignature that verifies, under their key, over the head's checkpoint.
pub fn check_witnesses<R: LogReader + ?Sized>(
    reader: &R,
    policy: &WitnessPolicy,
) -> Result<WitnessOutcome, VerifyError> {
    let latest = stored_heads(reader)?.pop();
    let names = |keys: &[&WitnessKey]| keys.iter().map(|key| key.name().to_string()).collect();
    let Some(latest) = latest else {
        return Ok(WitnessOutcome {
            size: None,
            required: policy.required,
            cosigned_by: Vec::new(),
            missing: names(&policy.keys.iter().collect::<Vec<_>>()),
        });
    };
    let head = latest.head.head;
    let origin = policy.origin.clone().unwrap_or_else(|| head.log_id.clone());
    let text = Checkpoint::of_head(&origin, &head)
        .map_err(|error| StoreError::Other(error.to_string()))?
        .text();
    let stored = reader.cosignatures(&origin, head.size, &head.root_hash)?;
    let (cosigned, missing): (Vec<&WitnessKey>, Vec<&WitnessKey>) =
        policy.keys.iter().partition(|key| {
            stored
                .iter()
                .any(|row| matches!(key.verify_line(&row.line, &text), Ok(Some(_))))
        });
    Ok(WitnessOutcome {
        size: Some(head.size),
        required: policy.required,
        cosigned_by: names(&cosigned),
        missing: names(&missing),
    })
}

/// [`check_witnesses`] on a database file, read-only.
pub fn check_database_witnesses(
    db: &Path,
    policy: &WitnessPolicy,
) -> Result<WitnessOutcome, VerifyError> {
    let reader = SqliteLogReader::open(db)?;
    let outcome = check_witnesses(&reader, policy)?;
    reader.check_unchanged()?;
    Ok(outcome)
}

/// A human report for the terminal.
pub fn describe(report: &VerifyReport, what: &str) -> String {
    let mut out = String::new();
    if report.ok() {
        let _ = writeln!(out, "{what}: intact");
    } else {
        let _ = writeln!(out, "{what}: TAMPERED");
        if let Some(seq) = report.first_bad_seq() {
            let _ = writeln!(out, "  first bad entry: {seq}");
        }
        if let Some(problem) = report.first_problem() {
            let _ = writeln!(out, "  problem: {}", problem.message);
        }
        if report.problem_count > 1 {
            let _ = writeln!(out, "  {} problems in all:", report.problem_count);
            for problem in &report.problems {
                let _ = writeln!(out, "  - {}", problem.message);
            }
            if report.problem_count > report.problems.len() as u64 {
                let _ = writeln!(
                    out,
                    "  - ... and {} more",
                    report.problem_count - report.problems.len() as u64
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "  checked {} positions: {} entries matched their leaf, {} pruned; {} signed heads; \
         signatures {}",
        report.size,
        report.entries,
        report.pruned,
        report.heads,
        if report.signatures_checked {
            "checked"
        } else {
            "NOT checked (pass --key)"
        }
    );
    out
}

/// The report as JSON, the shape of `GET /api/v1/verify`.
pub fn report_json(report: &VerifyReport) -> Value {
    serde_json::json!({
        "ok": report.ok(),
        "size": report.size,
        "checkedAt": report.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "firstBadSeq": report.first_bad_seq(),
        "problem": report.first_problem().map(|problem| problem.message.clone()),
        "problems": report.problems.iter().map(|problem| serde_json::json!({
            "seq": problem.seq,
            "message": problem.message,
        })).collect::<Vec<_>>(),
        "problemCount": report.problem_count,
        "entries": report.entries,
        "pruned": report.pruned,
        "heads": report.heads,
        "signaturesChecked": report.signatures_checked,
    })
}

/// The last line of an export with proofs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExportTrailer {
    tree_head: SignedTreeHead,
    entries: u64,
    /// The manifest ([`crate::export::proofs::ExportManifest`]); absent in exports made before
    /// it existed, which are checked by their count only.
    #[serde(default)]
    first_seq: Option<u64>,
    #[serde(default)]
    last_seq: Option<u64>,
    #[serde(default)]
    digest: Option<String>,
    /// Base64 of the manifest's signature, when the exporter had the signing key.
    #[serde(default)]
    signature: Option<String>,
    /// The head as a C2SP checkpoint (a signed note); archive objects carry it.
    #[serde(default)]
    checkpoint: Option<String>,
}

/// The proof fields of an exported entry line.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineProof {
    leaf_hash: String,
    leaf_index: u64,
    audit_path: Vec<String>,
}

/// Checks one entry line of an export against the export's (already verified) head. `Err` is
/// the problem with it.
pub fn check_export_line(line: &str, head: &SignedTreeHead) -> Result<u64, Problem> {
    check_export_line_leaf(line, head).map(|(seq, _)| seq)
}

/// [`check_export_line`], also returning the entry's leaf hash.
fn check_export_line_leaf(line: &str, head: &SignedTreeHead) -> Result<(u64, Hash), Problem> {
    let unreadable = |message: String| Problem {
        seq: None,
        message: format!("not an entry of this export: {message}"),
    };
    let value: Value =
        serde_json::from_str(line).map_err(|error| unreadable(format!("not JSON ({error})")))?;
    let entry: AuditEntry = serde_json::from_value(value.clone())
        .map_err(|error| unreadable(format!("not an entry ({error})")))?;
    let seq = entry.seq;
    let problem = |message: String| Problem {
        seq: Some(seq),
        message,
    };
    let proof: LineProof = serde_json::from_value(value)
        .map_err(|error| problem(format!("entry {seq} has no proof fields ({error})")))?;
    let stated: Option<Hash> = from_hex(&proof.leaf_hash);
    let path: Option<Vec<Hash>> = proof.audit_path.iter().map(|hash| from_hex(hash)).collect();
    let (Some(stated), Some(path)) = (stated, path) else {
        return Err(problem(format!(
            "entry {seq} has a malformed leaf hash or audit path"
        )));
    };
    let recomputed = leaf_hash(&entry.canonical_bytes());
    if recomputed != stated {
        return Err(problem(format!(
            "entry {seq} was changed: its content no longer hashes to its leaf"
        )));
    }
    if seq == 0 || proof.leaf_index != seq - 1 {
        return Err(problem(format!(
            "entry {seq} states leaf index {}, not {}",
            proof.leaf_index,
            seq.saturating_sub(1)
        )));
    }
    if seq > head.head.size {
        return Err(problem(format!(
            "entry {seq} is not covered by the export's head (size {})",
            head.head.size
        )));
    }
    if !verify_inclusion(
        &recomputed,
        seq - 1,
        head.head.size,
        &path,
        &head.head.root_hash,
    ) {
        return Err(problem(format!(
            "entry {seq}'s inclusion proof does not lead to the head's root: the entry or its \
             proof was changed"
        )));
    }
    Ok((seq, recomputed))
}

/// The last non-empty line of a file, read from the end.
fn last_line(path: &Path) -> Result<Option<String>, VerifyError> {
    let io_error = |error| VerifyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let length = file.seek(SeekFrom::End(0)).map_err(io_error)?;
    let mut tail = Vec::new();
    let mut position = length;
    // Read backwards in blocks until a newline that ends a non-empty line is found.
    loop {
        let block = position.min(64 * 1024);
        position -= block;
        file.seek(SeekFrom::Start(position)).map_err(io_error)?;
        let mut chunk = vec![0; block as usize];
        file.read_exact(&mut chunk).map_err(io_error)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let trimmed_end = tail
            .iter()
            .rposition(|byte| !byte.is_ascii_whitespace())
            .map(|end| end + 1);
        if let Some(end) = trimmed_end {
            if let Some(start) = tail[..end].iter().rposition(|byte| *byte == b'\n') {
                return Ok(Some(
                    String::from_utf8_lossy(&tail[start + 1..end]).into_owned(),
                ));
            }
            if position == 0 {
                return Ok(Some(String::from_utf8_lossy(&tail[..end]).into_owned()));
            }
        } else if position == 0 {
            return Ok(None);
        }
    }
}

/// `auditgate verify-export`: checks an NDJSON export with proofs (format in [`crate::log`])
/// without the database: the head's signature, and each entry's leaf and inclusion proof.
pub fn verify_export(path: &Path, keys: &[LogVerifier]) -> Result<VerifyReport, VerifyError> {
    let trailer = last_line(path)?;
    let io_error = |error| VerifyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io_error)?;
    check_export(
        trailer,
        BufReader::new(file),
        keys,
        || first_line_has_proof_fields(path),
        path,
    )
    .map(|checked| checked.report)
}

/// An export checked by [`verify_export_bytes`]: the report, and what its last line states.
#[derive(Debug)]
pub struct CheckedExport {
    pub report: VerifyReport,
    /// The head the proofs lead to, when the last line is one.
    pub head: Option<SignedTreeHead>,
    /// The manifest's first and last `seq`, as stated.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The head as a C2SP checkpoint (archive objects carry one), unchecked.
    pub checkpoint: Option<String>,
}

/// [`verify_export`] over an export in memory (an archive object, gunzipped); `name` is what
/// read errors call it.
pub fn verify_export_bytes(
    bytes: &[u8],
    keys: &[LogVerifier],
    name: &Path,
) -> Result<CheckedExport, VerifyError> {
    let trailer = bytes
        .split(|byte| *byte == b'\n')
        .rev()
        .find(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| String::from_utf8_lossy(line).trim().to_string());
    let first_has_proofs = || {
        Ok(bytes
            .split(|byte| *byte == b'\n')
            .find(|line| !line.iter().all(u8::is_ascii_whitespace))
            .is_some_and(|line| {
                serde_json::from_slice::<Value>(line).is_ok_and(|value| {
                    value.get("leafHash").is_some() || value.get("treeHead").is_some()
                })
            }))
    };
    check_export(trailer, bytes, keys, first_has_proofs, name)
}

fn check_export(
    trailer: Option<String>,
    reader: impl BufRead,
    keys: &[LogVerifier],
    first_line_has_proofs: impl FnOnce() -> Result<bool, VerifyError>,
    path: &Path,
) -> Result<CheckedExport, VerifyError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut report = VerifyReport {
        size: 0,
        entries: 0,
        pruned: 0,
        heads: 0,
        signatures_checked: !keys.is_empty(),
        problems: Vec::new(),
        problem_count: 0,
        checked_at: chrono::Utc::now(),
    };
    let unchecked = |report| CheckedExport {
        report,
        head: None,
        first_seq: None,
        last_seq: None,
        checkpoint: None,
    };
    let trailer = trailer.map(|line| serde_json::from_str::<ExportTrailer>(&line));
    let trailer = match trailer {
        Some(Ok(trailer)) => trailer,
        Some(Err(error)) => {
            if !first_line_has_proofs()? {
                return Err(VerifyError::NoProofs);
            }
            problems.push(Problem {
                seq: None,
                message: format!(
                    "the last line is not the export's signed head ({error}): the export was cut \
                     short or has no proofs (export with proofs=true)"
                ),
            });
            return Ok(unchecked(finish_report(report, problems)));
        }
        None => {
            problems.push(Problem {
                seq: None,
                message: "the export is empty".to_string(),
            });
            return Ok(unchecked(finish_report(report, problems)));
        }
    };
    let head = trailer.tree_head.clone();
    report.size = head.head.size;
    report.heads = 1;
    if !keys.is_empty() && !keys.iter().any(|key| key.verify(&head).is_ok()) {
        let reason = keys
            .iter()
            .find_map(|key| key.verify(&head).err())
            .map(|error| error.to_string())
            .unwrap_or_default();
        problems.push(Problem {
            seq: None,
            message: format!("the export's head is not validly signed: {reason}"),
        });
    }
    let io_error = |error| VerifyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut lines = 0u64;
    let mut previous: Option<String> = None;
    let mut manifest = crate::export::proofs::ManifestBuilder::default();
    let mut highest: Option<u64> = None;
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        // Each line is checked once the next one is seen, so the trailer is never taken for an
        // entry. `index` (0-based, of the line just read) is the 1-based number of that line.
        let Some(entry_line) = previous.replace(line) else {
            continue;
        };
        lines += 1;
        let (seq, leaf) = match check_export_line_leaf(&entry_line, &head) {
            Ok(checked) => checked,
            Err(mut problem) => {
                problem.message = format!("line {index}: {}", problem.message);
                problems.push(problem);
                continue;
            }
        };
        report.entries += 1;
        manifest.add(seq, &leaf);
        // Entries are written in increasing seq order, each once.
        match highest {
            Some(last) if seq == last => problems.push(Problem {
                seq: Some(seq),
                message: format!("line {index}: entry {seq} appears twice (a repeated line)"),
            }),
            Some(last) if seq < last => problems.push(Problem {
                seq: Some(seq),
                message: format!(
                    "line {index}: entry {seq} comes after entry {last}: lines were reordered"
                ),
            }),
            _ => highest = Some(seq),
        }
    }
    if lines != trailer.entries {
        problems.push(Problem {
            seq: None,
            message: format!(
                "the export says it holds {} entries but has {lines}: lines were removed or added",
                trailer.entries
            ),
        });
    }
    problems.extend(check_manifest(&trailer, &manifest.manifest(), keys));
    Ok(CheckedExport {
        report: finish_report(report, problems),
        head: Some(head),
        first_seq: trailer.first_seq,
        last_seq: trailer.last_seq,
        checkpoint: trailer.checkpoint.clone(),
    })
}

/// Compares the trailer's manifest with the entry lines as read, and checks its signature.
fn check_manifest(
    trailer: &ExportTrailer,
    read: &crate::export::proofs::ExportManifest,
    keys: &[LogVerifier],
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let problem = |message: String| Problem { seq: None, message };
    let Some(stated_digest) = trailer.digest.as_deref() else {
        // An export from before manifests: its count was checked above, and that is all.
        return problems;
    };
    let range = |first: Option<u64>, last: Option<u64>| match (first, last) {
        (Some(first), Some(last)) => format!("entries {first}..={last}"),
        _ => "no entries".to_string(),
    };
    if (trailer.first_seq, trailer.last_seq) != (read.first_seq, read.last_seq) {
        problems.push(problem(format!(
            "the export's manifest says {}, but its lines hold {}: lines were removed or added",
            range(trailer.first_seq, trailer.last_seq),
            range(read.first_seq, read.last_seq)
        )));
    }
    let Some(digest) = from_hex(stated_digest) else {
        problems.push(problem(
            "the export's manifest digest is malformed".to_string(),
        ));
        return problems;
    };
    if digest != read.digest {
        problems.push(problem(
            "the entry lines do not match the export's manifest digest: lines were removed, \
             repeated, reordered, changed or added"
                .to_string(),
        ));
    }
    let Some(signature) = trailer.signature.as_deref() else {
        return problems;
    };
    if keys.is_empty() {
        return problems;
    }
    let stated = crate::export::proofs::ExportManifest {
        count: trailer.entries,
        first_seq: trailer.first_seq,
        last_seq: trailer.last_seq,
        digest,
    };
    let bytes = stated.signing_bytes(&trailer.tree_head);
    let signature: Option<[u8; 64]> =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature)
            .ok()
            .and_then(|bytes| bytes.try_into().ok());
    let valid = signature.is_some_and(|signature| {
        keys.iter()
            .any(|key| key.verify_export_manifest(&bytes, &signature).is_ok())
    });
    if !valid {
        problems.push(problem(
            "the export's manifest (count, seq range, digest) is not validly signed: it was \
             edited"
                .to_string(),
        ));
    }
    problems
}

/// Whether the first line of a file is a JSON object with an entry's proof fields or an export's
/// head: an export made with proofs whose last line is not its head was cut or edited, while
/// one with neither never had proofs.
fn first_line_has_proof_fields(path: &Path) -> Result<bool, VerifyError> {
    let io_error = |error| VerifyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io_error)?;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        return Ok(serde_json::from_str::<Value>(&line).is_ok_and(|value| {
            value.get("leafHash").is_some() || value.get("treeHead").is_some()
        }));
    }
    Ok(false)
}

fn finish_report(mut report: VerifyReport, mut problems: Vec<Problem>) -> VerifyReport {
    report.problem_count = problems.len() as u64;
    problems.sort_by_key(|problem| (problem.seq.is_none(), problem.seq));
    problems.truncate(100);
    report.problems = problems;
    report
}
