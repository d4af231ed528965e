//! One archive object: its key and its content.
//!
//! ```text
//! <prefix>/<log_id>/<yyyy>/<mm>/<dd>/<first_seq>-<last_seq>.ndjson.gz
//! <prefix>/<log_id>/<yyyy>/<mm>/<dd>/<first_seq>-<last_seq>.ocsf.ndjson.gz   (format = "ocsf")
//! ```
//!
//! The date is the UTC day of the object's first entry; sequence numbers are zero-padded to 12
//! digits so that a listing sorts in log order. The content, gzipped, is an export with proofs
//! ([`crate::export::proofs`]): one line per entry with its leaf hash, leaf index and audit path,
//! then the signed head every proof leads to and the signed manifest of the lines — plus
//! `checkpoint`, the same head as a C2SP signed note. Gunzipped, an object is an export that
//! `auditgate verify-export` checks on its own; `auditgate verify-archive` checks every object
//! and the gaps, repeats and order between them. The OCSF copy is for SIEMs and carries no
//! proofs.

use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::entry::AuditEntry;
use crate::export::proofs::{entry_proof, ProofEncoder, ProofError};
use crate::log::head::{LogSigner, SignedTreeHead};
use crate::store::Store;

/// The end of a verifiable object's key.
pub const NDJSON_SUFFIX: &str = ".ndjson.gz";
/// The end of an OCSF copy's key.
pub const OCSF_SUFFIX: &str = ".ocsf.ndjson.gz";
/// Digits of the zero-padded sequence numbers in a key.
const SEQ_DIGITS: usize = 12;

/// The folder of one log's objects: `<prefix>/<log_id>/` (or `<log_id>/` without a prefix).
pub fn log_folder(prefix: &str, log_id: &str) -> String {
    if prefix.is_empty() {
        format!("{log_id}/")
    } else {
        format!("{prefix}/{log_id}/")
    }
}

/// The key of the object holding `first_seq..=last_seq`, the first created at `first_created`.
pub fn object_key(
    prefix: &str,
    log_id: &str,
    first_created: DateTime<Utc>,
    first_seq: u64,
    last_seq: u64,
    suffix: &str,
) -> String {
    format!(
        "{}{}/{first_seq:0width$}-{last_seq:0width$}{suffix}",
        log_folder(prefix, log_id),
        first_created.format("%Y/%m/%d"),
        width = SEQ_DIGITS
    )
}

/// What a verifiable object's key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    /// Everything before `<yyyy>/<mm>/<dd>/`: the log's folder.
    pub folder: String,
    /// The log id (the folder's last part).
    pub log_id: String,
    /// `yyyy/mm/dd`.
    pub date: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Reads a key of the layout; `None` for any other key (an OCSF copy, a stray file).
pub fn parse_object_key(key: &str) -> Option<ObjectName> {
    let name_start = key.rfind('/').map_or(0, |slash| slash + 1);
    let file = &key[name_start..];
    let stem = file.strip_suffix(NDJSON_SUFFIX)?;
    if file.ends_with(OCSF_SUFFIX) {
        return None;
    }
    let (first, last) = stem.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    let (first_seq, last_seq) = (first.parse().ok()?, last.parse().ok()?);
    let parts: Vec<&str> = key[..name_start].trim_end_matches('/').split('/').collect();
    if parts.len() < 4 {
        return None;
    }
    let [log_id, year, month, day] = parts[parts.len() - 4..] else {
        return None;
    };
    let date_ok = year.len() == 4
        && month.len() == 2
        && day.len() == 2
        && [year, month, day].iter().all(|part| digits(part));
    if !date_ok || log_id.is_empty() {
        return None;
    }
    let folder_parts = &parts[..parts.len() - 3];
    Some(ObjectName {
        folder: format!("{}/", folder_parts.join("/")),
        log_id: log_id.to_string(),
        date: format!("{year}/{month}/{day}"),
        first_seq,
        last_seq,
    })
}

/// A built object, ready to upload (and to upload again, unchanged, after a failure).
#[derive(Debug, Clone)]
pub struct BuiltObject {
    pub key: String,
    pub body: Vec<u8>,
    /// The OCSF copy's key and body, when the archive's format asks for one.
    pub ocsf: Option<(String, Vec<u8>)>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub entries: u64,
}

/// Where an object goes and what signs it.
pub struct ObjectContext<'a> {
    pub prefix: &'a str,
    pub log_id: &'a str,
    pub signer: &'a Arc<LogSigner>,
    /// The checkpoint origin of the log.
    pub origin: &'a str,
    pub ocsf: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Proof(#[from] ProofError),
    #[error("cannot sign the checkpoint: {0}")]
    Checkpoint(#[from] crate::log::checkpoint::CheckpointError),
    #[error("cannot encode the object: {0}")]
    Encode(String),
}

/// Builds the object of `entries` (consecutive in `seq`, non-empty), each with its proof against
/// `head`, which must cover the last.
pub fn build_object(
    store: &dyn Store,
    entries: &[AuditEntry],
    head: &SignedTreeHead,
    context: &ObjectContext<'_>,
) -> Result<BuiltObject, BuildError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(BuildError::Encode("an object needs entries".into()));
    };
    let encode_error = |error: std::io::Error| BuildError::Encode(error.to_string());
    let mut encoder = ProofEncoder::new(head.clone()).with_signer(context.signer.clone());
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    for entry in entries {
        let proof = entry_proof(store, entry, head)?;
        let line = encoder
            .encode(entry, &proof)
            .map_err(|error| BuildError::Encode(error.to_string()))?;
        gzip.write_all(&line).map_err(encode_error)?;
    }
    let trailer = encoder
        .finish()
        .map_err(|error| BuildError::Encode(error.to_string()))?;
    let mut trailer: serde_json::Value =
        serde_json::from_slice(&trailer).map_err(|error| BuildError::Encode(error.to_string()))?;
    trailer["checkpoint"] =
        serde_json::Value::from(context.signer.sign_checkpoint(context.origin, &head.head)?);
    let mut trailer =
        serde_json::to_vec(&trailer).map_err(|error| BuildError::Encode(error.to_string()))?;
    trailer.push(b'\n');
    gzip.write_all(&trailer).map_err(encode_error)?;
    let body = gzip.finish().map_err(encode_error)?;
    let ocsf = if context.ocsf {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        for entry in entries {
            let mut line = serde_json::to_vec(&crate::entry::ocsf::to_ocsf(entry))
                .map_err(|error| BuildError::Encode(error.to_string()))?;
            line.push(b'\n');
            gzip.write_all(&line).map_err(encode_error)?;
        }
        Some((
            object_key(
                context.prefix,
                context.log_id,
                first.created_at,
                first.seq,
                last.seq,
                OCSF_SUFFIX,
            ),
            gzip.finish().map_err(encode_error)?,
        ))
    } else {
        None
    };
    Ok(BuiltObject {
        key: object_key(
            context.prefix,
            context.log_id,
            first.created_at,
            first.seq,
            last.seq,
            NDJSON_SUFFIX,
        ),
        body,
        ocsf,
        first_seq: first.seq,
        last_seq: last.seq,
        entries: entries.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_read_back() {
        let created = DateTime::parse_from_rfc3339("2026-03-07T23:59:58Z")
            .expect("time")
            .with_timezone(&Utc);
        let key = object_key("audit/prod", "orders", created, 1, 250, NDJSON_SUFFIX);
        assert_eq!(
            key,
            "audit/prod/orders/2026/03/07/000000000001-000000000250.ndjson.gz"
        );
        assert_eq!(
            parse_object_key(&key),
            Some(ObjectName {
                folder: "audit/prod/orders/".into(),
                log_id: "orders".into(),
                date: "2026/03/07".into(),
                first_seq: 1,
                last_seq: 250,
            })
        );
        let bare = object_key("", "orders", created, 7, 7, NDJSON_SUFFIX);
        assert_eq!(
            bare,
            "orders/2026/03/07/000000000007-000000000007.ndjson.gz"
        );
        assert_eq!(
            parse_object_key(&bare).map(|name| name.folder),
            Some("orders/".into())
        );
        let ocsf = object_key("p", "orders", created, 1, 2, OCSF_SUFFIX);
        assert_eq!(
            parse_object_key(&ocsf),
            None,
            "an OCSF copy is not a log object"
        );
        for stray in [
            "p/orders/2026/03/07/notes.ndjson.gz",
            "p/orders/2026/3/07/1-2.ndjson.gz",
            "p/orders/1-2.ndjson.gz",
            "p/orders/2026/03/07/1-2.ndjson",
            "p/orders/2026/03/07/-2.ndjson.gz",
        ] {
            assert_eq!(parse_object_key(stray), None, "{stray}");
        }
    }
}
