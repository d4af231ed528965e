//! `auditgate verify-archive`: checks an archive on its own, in its bucket or in a local copy
//! of it (the same key layout under a directory).
//!
//! Every object is checked as the export it is ([`crate::verify::verify_export_bytes`]: each
//! line's leaf hash and inclusion proof, the head's signature, the signed manifest), its name
//! against its manifest (`first_seq`, `last_seq`), its head against its log, and its checkpoint
//! against its head and the key. Between the objects of one log, in `seq` order: the first
//! starts at entry 1, each starts right after the one before (a gap means an object was
//! deleted or entries were never archived), none repeats another's entries (a duplicated or
//! overlapping object), and no two heads of one size have different roots (a forked log).
//!
//! An archive cannot show that objects were removed from its end: compare its last `seq` with
//! the log's own head (`auditgate verify`, `GET /api/v1/log/head`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::archive::object::{parse_object_key, ObjectName, NDJSON_SUFFIX, OCSF_SUFFIX};
use crate::archive::s3::{S3Client, S3Error};
use crate::log::checkpoint::VerifierKey;
use crate::log::head::LogVerifier;
use crate::log::merkle::Hash;

/// The most bytes an object may hold once gunzipped.
const MAX_OBJECT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Where an archive is.
pub enum ArchiveSource {
    /// A bucket and the prefix under which to look (without slashes at its ends).
    Bucket {
        client: Box<S3Client>,
        prefix: String,
    },
    /// A local copy: the bucket's keys as paths under this directory.
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Bucket(#[from] S3Error),
    #[error("{path}: {error}", path = .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no archive objects (<log>/<yyyy>/<mm>/<dd>/<first>-<last>.ndjson.gz) under {0}")]
    Empty(String),
}

/// What verification found.
#[derive(Debug, Default)]
pub struct ArchiveReport {
    pub logs: Vec<LogSummary>,
    /// Every problem, in the order found (objects in `seq` order).
    pub problems: Vec<String>,
}

/// One log's objects.
#[derive(Debug, Clone)]
pub struct LogSummary {
    pub folder: String,
    pub log_id: String,
    pub objects: u64,
    pub entries: u64,
    /// The highest `seq` in an object.
    pub last_seq: u64,
    /// The largest head any object carries.
    pub newest_head: u64,
}

impl ArchiveReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report for a terminal.
    pub fn describe(&self, what: &str) -> String {
        let mut out = String::new();
        if self.ok() {
            let _ = writeln!(out, "{what}: intact");
        } else {
            let _ = writeln!(out, "{what}: TAMPERED");
            if let Some(first) = self.problems.first() {
                let _ = writeln!(out, "  problem: {first}");
            }
            if self.problems.len() > 1 {
                let _ = writeln!(out, "  {} problems in all:", self.problems.len());
                for problem in self.problems.iter().take(100) {
                    let _ = writeln!(out, "  - {problem}");
                }
                if self.problems.len() > 100 {
                    let _ = writeln!(out, "  - ... and {} more", self.problems.len() - 100);
                }
            }
        }
        for log in &self.logs {
            let _ = writeln!(
                out,
                "  log {}: {} objects, {} entries, up to entry {}; the newest head in them covers \
                 {} entries; signatures and checkpoints checked",
                log.log_id, log.objects, log.entries, log.last_seq, log.newest_head
            );
        }
        out
    }
}

impl ArchiveSource {
    fn describe(&self) -> String {
        match self {
            ArchiveSource::Bucket { prefix, .. } => format!("prefix `{prefix}`"),
            ArchiveSource::Directory(path) => path.display().to_string(),
        }
    }

    /// Every key under the source, relative to its root (the bucket, or the directory).
    async fn keys(&self) -> Result<Vec<String>, ArchiveError> {
        match self {
            ArchiveSource::Bucket { client, prefix } => {
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                Ok(client.list(&prefix, None).await?.keys)
            }
            ArchiveSource::Directory(root) => {
                let mut keys = Vec::new();
                let mut folders = vec![root.clone()];
                while let Some(folder) = folders.pop() {
                    let io_error = |error| ArchiveError::Io {
                        path: folder.clone(),
                        error,
                    };
                    for item in std::fs::read_dir(&folder).map_err(io_error)? {
                        let item = item.map_err(io_error)?;
                        let path = item.path();
                        if item.file_type().map_err(io_error)?.is_dir() {
                            folders.push(path);
                        } else if let Ok(relative) = path.strip_prefix(root) {
                            let parts: Vec<String> = relative
                                .components()
                                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                                .collect();
                            keys.push(parts.join("/"));
                        }
                    }
                }
                keys.sort();
                Ok(keys)
            }
        }
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        match self {
            ArchiveSource::Bucket { client, .. } => Ok(client.get_object(key).await?.to_vec()),
            ArchiveSource::Directory(root) => {
                let path = key
                    .split('/')
                    .fold(root.clone(), |path, part| path.join(part));
                std::fs::read(&path).map_err(|error| ArchiveError::Io { path, error })
            }
        }
    }
}

/// Checks every object under `source` and the order between them; signatures with `keys`.
pub async fn verify_archive(
    source: &ArchiveSource,
    keys: &[LogVerifier],
) -> Result<ArchiveReport, ArchiveError> {
    let mut report = ArchiveReport::default();
    let mut logs: BTreeMap<String, Vec<(String, ObjectName)>> = BTreeMap::new();
    for key in source.keys().await? {
        match parse_object_key(&key) {
            Some(name) => logs
                .entry(name.folder.clone())
                .or_default()
                .push((key, name)),
            None if key.ends_with(NDJSON_SUFFIX) && !key.ends_with(OCSF_SUFFIX) => {
                report.problems.push(format!(
                    "{key}: not a name of the archive's layout \
                     (<log>/<yyyy>/<mm>/<dd>/<first>-<last>.ndjson.gz): an object was renamed"
                ))
            }
            None => {}
        }
    }
    if logs.is_empty() {
        return Err(ArchiveError::Empty(source.describe()));
    }
    for (folder, mut objects) in logs {
        objects.sort_by_key(|(key, name)| (name.first_seq, name.last_seq, key.clone()));
        let log_id = objects
            .first()
            .map(|(_, name)| name.log_id.clone())
            .unwrap_or_default();
        let mut summary = LogSummary {
            folder,
            log_id: log_id.clone(),
            objects: 0,
            entries: 0,
            last_seq: 0,
            newest_head: 0,
        };
        let mut previous: Option<String> = None;
        let mut roots: HashMap<u64, (Hash, String)> = HashMap::new();
        for (key, name) in objects {
            summary.objects += 1;
            let expected = summary.last_seq + 1;
            if name.first_seq > expected {
                report.problems.push(match &previous {
                    Some(before) => format!(
                        "entries {expected}..={} of log {log_id} are in no object (between {before} \
                         and {key}): an object was deleted",
                        name.first_seq - 1
                    ),
                    None => format!(
                        "entries {expected}..={} of log {log_id} are in no object (before {key}): \
                         an object was deleted",
                        name.first_seq - 1
                    ),
                });
            } else if name.first_seq < expected {
                report.problems.push(format!(
                    "{key} repeats entries {}..={} that {} already holds: a duplicated or \
                     overlapping object",
                    name.first_seq,
                    name.last_seq.min(expected - 1),
                    previous.as_deref().unwrap_or("an earlier object")
                ));
            }
            if name.last_seq < name.first_seq {
                report
                    .problems
                    .push(format!("{key}: its name's range ends before it starts"));
            }
            summary.last_seq = summary.last_seq.max(name.last_seq);
            previous = Some(key.clone());
            let bytes = match source.read(&key).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    report
                        .problems
                        .push(format!("{key}: cannot be read: {error}"));
                    continue;
                }
            };
            check_object(
                &key,
                &name,
                &bytes,
                keys,
                &mut summary,
                &mut roots,
                &mut report,
            );
        }
        report.logs.push(summary);
    }
    Ok(report)
}

/// The checks of one object on its own.
fn check_object(
    key: &str,
    name: &ObjectName,
    bytes: &[u8],
    keys: &[LogVerifier],
    summary: &mut LogSummary,
    roots: &mut HashMap<u64, (Hash, String)>,
    report: &mut ArchiveReport,
) {
    let mut text = Vec::new();
    let gunzipped = flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_OBJECT_BYTES)
        .read_to_end(&mut text);
    if let Err(error) = gunzipped {
        report
            .problems
            .push(format!("{key}: not a gzip file ({error}): it was changed"));
        return;
    }
    let checked = match crate::verify::verify_export_bytes(&text, keys, Path::new(key)) {
        Ok(checked) => checked,
        Err(error) => {
            report.problems.push(format!("{key}: {error}"));
            return;
        }
    };
    summary.entries += checked.report.entries;
    for problem in &checked.report.problems {
        report.problems.push(format!("{key}: {}", problem.message));
    }
    let Some(head) = checked.head else {
        return;
    };
    if (checked.first_seq, checked.last_seq) != (Some(name.first_seq), Some(name.last_seq)) {
        let range = |first: Option<u64>, last: Option<u64>| match (first, last) {
            (Some(first), Some(last)) => format!("{first}..={last}"),
            _ => "nothing".to_string(),
        };
        report.problems.push(format!(
            "{key}: its manifest holds entries {}, its name says {}..={}: the object was \
             renamed or replaced",
            range(checked.first_seq, checked.last_seq),
            name.first_seq,
            name.last_seq
        ));
    }
    if head.head.log_id != name.log_id {
        report.problems.push(format!(
            "{key}: its head is of log `{}`, not `{}`: the object was moved from another log",
            head.head.log_id, name.log_id
        ));
    }
    summary.newest_head = summary.newest_head.max(head.head.size);
    match roots.get(&head.head.size) {
        Some((root, other)) if *root != head.head.root_hash => report.problems.push(format!(
            "{key} and {other} carry heads of size {} with different roots: the log was forked",
            head.head.size
        )),
        Some(_) => {}
        None => {
            roots.insert(head.head.size, (head.head.root_hash, key.to_string()));
        }
    }
    let Some(note) = checked.checkpoint else {
        report
            .problems
            .push(format!("{key}: carries no checkpoint: it was changed"));
        return;
    };
    let origin = note.lines().next().unwrap_or_default();
    let verified = keys.iter().find_map(|key| {
        VerifierKey::new(origin, key)
            .ok()?
            .verify_checkpoint(&note)
            .ok()
    });
    match verified {
        Some(checkpoint) if checkpoint.matches_head(&head.head) => {}
        Some(_) => report.problems.push(format!(
            "{key}: its checkpoint is of another tree than its head: it was changed"
        )),
        None => report.problems.push(format!(
            "{key}: its checkpoint is not validly signed by the log's key: it was changed"
        )),
    }
}
