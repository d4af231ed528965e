//! The SIEM stream: every entry, once committed to the store, as one JSON line on standard
//! output or in a file that Vector, Fluent Bit or Filebeat tails (`[stream] ndjson`). A line is
//! the entry as the admin API returns it, or with `format = "ocsf"` the entry as an OCSF API
//! Activity event ([`crate::entry::ocsf`]).
//!
//! The writer thread writes the lines right after each group commit, so a line never describes
//! an entry the store does not have, and the proxy path never waits on the stream. Each batch is
//! one `write` call. A file is rotated by size the way log shippers expect (`PATH` is renamed to
//! `PATH.1`, `PATH.1` to `PATH.2`, ... and the oldest beyond `keep` removed; a fresh `PATH` is
//! started), so a shipper following `PATH` by name reads on without gaps. Lines are not fsynced:
//! the store is the record, the stream a copy for other systems.
//!
//! A failed write is counted (`auditgate_stream_errors_total`) and logged, never retried into
//! the writer's critical path; the entries stay in the store and can be re-exported.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::units::parse_size;
use crate::base::{resolve, ConfigError};
use crate::entry::AuditEntry;

/// Where stream lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    Stdout,
    File(PathBuf),
}

/// What each stream line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFormat {
    /// The entry as the admin API returns it.
    #[default]
    Ndjson,
    /// The entry as an OCSF API Activity event.
    Ocsf,
}

/// `[stream]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub target: StreamTarget,
    /// A file is rotated before it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` ... `PATH.keep`).
    pub keep: usize,
    pub format: StreamFormat,
}

/// An open stream.
pub struct NdjsonStream {
    config: StreamConfig,
    file: Option<File>,
    /// Bytes in the current file.
    written: u64,
}

impl NdjsonStream {
    /// Opens (appending to) the file, creating its directory, or takes standard output.
    pub fn open(config: StreamConfig) -> std::io::Result<NdjsonStream> {
        let (file, written) = match &config.target {
            StreamTarget::Stdout => (None, 0),
            StreamTarget::File(path) => {
                let file = open_append(path)?;
                let written = file.metadata()?.len();
                (Some(file), written)
            }
        };
        Ok(NdjsonStream {
            config,
            file,
            written,
        })
    }

    /// Writes one line per entry (the admin API's JSON form, or its OCSF event), rotating first
    /// when the batch would take the file past `max_bytes`.
    pub fn write_entries(&mut self, entries: &[AuditEntry]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(entries.len() * 512);
        for entry in entries {
            // serde_json escapes control characters, so an entry is always exactly one line.
            match self.config.format {
                StreamFormat::Ndjson => entry.write_api_json(&mut lines)?,
                StreamFormat::Ocsf => {
                    serde_json::to_writer(&mut lines, &crate::entry::ocsf::to_ocsf(entry))?
                }
            }
            lines.push(b'\n');
        }
        match &self.config.target {
            StreamTarget::Stdout => {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                out.write_all(&lines)?;
                out.flush()
            }
            StreamTarget::File(path) => {
                let path = path.clone();
                if self.written > 0 && self.written + lines.len() as u64 > self.config.max_bytes {
                    self.rotate(&path)?;
                }
                let file = match &mut self.file {
                    Some(file) => file,
                    None => self.file.insert(open_append(&path)?),
                };
                file.write_all(&lines)?;
                self.written += lines.len() as u64;
                Ok(())
            }
        }
    }

    /// `PATH.(keep-1)` -> `PATH.keep`, ..., `PATH` -> `PATH.1`, and a new empty `PATH`.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        self.file = None;
        let numbered = |index: usize| {
            let mut name = path.as_os_str().to_os_string();
            name.push(format!(".{index}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(numbered(self.config.keep));
        for index in (1..self.config.keep).rev() {
            let from = numbered(index);
            if from.exists() {
                std::fs::rename(&from, numbered(index + 1))?;
            }
        }
        std::fs::rename(path, numbered(1))?;
        self.file = Some(open_append(path)?);
        self.written = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// `[stream]`: every committed entry as one JSON line, for SIEM shippers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFile {
    /// "stdout", or a file path that Vector, Fluent Bit or Filebeat tails.
    pub ndjson: Option<String>,
    /// A file is rotated before it grows past this (default "100MiB").
    pub max_bytes: Option<String>,
    /// Rotated files kept: PATH.1 ... PATH.N (default 5).
    pub keep: Option<usize>,
    /// What each line is: "ndjson" (the default: the entry as the admin API returns it) or
    /// "ocsf" (an OCSF API Activity event).
    pub format: Option<String>,
}

pub(crate) fn validate_stream(
    file: &StreamFile,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::writer::stream::StreamConfig> {
    use crate::writer::stream::{StreamConfig, StreamFormat, StreamTarget};
    let format = match file.format.as_deref() {
        None | Some("ndjson") => StreamFormat::Ndjson,
        Some("ocsf") => StreamFormat::Ocsf,
        Some(other) => {
            errors.push(ConfigError::new(
                "stream.format",
                format!(
                    "`{}` is not a stream format: \"ndjson\" or \"ocsf\"",
                    other.chars().take(64).collect::<String>()
                ),
            ));
            StreamFormat::Ndjson
        }
    };
    let target = match file.ndjson.as_deref() {
        None | Some("") => {
            errors.push(ConfigError::new(
                "stream.ndjson",
                "missing: \"stdout\" or the path of a file to write",
            ));
            None
        }
        Some("stdout") => Some(StreamTarget::Stdout),
        Some(path) => Some(StreamTarget::File(resolve(base, path))),
    };
    let max_bytes = match file.max_bytes.as_deref() {
        None => 100 * 1024 * 1024,
        Some(text) => match parse_size(text) {
            Ok(bytes) if bytes >= 4096 => bytes,
            Ok(_) => {
                errors.push(ConfigError::new(
                    "stream.max_bytes",
                    "must be at least 4KiB",
                ));
                0
            }
            Err(message) => {
                errors.push(ConfigError::new("stream.max_bytes", message));
                0
            }
        },
    };
    let keep = file.keep.unwrap_or(5);
    if keep == 0 {
        errors.push(ConfigError::new("stream.keep", "must be at least 1"));
    }
    if target == Some(StreamTarget::Stdout) && (file.max_bytes.is_some() || file.keep.is_some()) {
        errors.push(ConfigError::new(
            "stream.max_bytes",
            "rotation applies to a file, not to stdout",
        ));
    }
    Some(StreamConfig {
        target: target?,
        max_bytes,
        keep,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize, action: &str) -> Vec<AuditEntry> {
        entries_from(1, count, action)
    }

    /// `count` entries numbered from `first_seq` on.
    fn entries_from(first_seq: u64, count: usize, action: &str) -> Vec<AuditEntry> {
        (0..count)
            .map(|index| {
                let mut entry = AuditEntry::new("log-a", action);
                entry.seq = first_seq + index as u64;
                entry.path = Some("/line\nbreak".into());
                entry
            })
            .collect()
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn every_entry_is_one_json_line_and_files_rotate_by_size() {
        let dir = std::env::temp_dir().join(format!("auditgate-stream-{}", ulid::Ulid::new()));
        let path = dir.join("nested/audit.ndjson");
        let config = StreamConfig {
            target: StreamTarget::File(path.clone()),
            max_bytes: 4096,
            keep: 2,
            format: StreamFormat::Ndjson,
        };
        let mut stream = NdjsonStream::open(config.clone()).expect("opens");
        stream.write_entries(&entries(3, "first")).expect("writes");
        let written = lines(&path);
        assert_eq!(written.len(), 3);
        assert_eq!(written[0]["action"], "first");
        assert_eq!(written[0]["path"], "/line\nbreak");
        assert_eq!(written[2]["seq"], 3);
        // Enough batches to rotate several times: the live file stays under the limit, two
        // rotated files are kept, and no line is split or lost between the files kept.
        for round in 0..20 {
            stream
                .write_entries(&entries_from(4 + round * 5, 5, &format!("round{round}")))
                .expect("writes");
        }
        let last_seq = 3 + 20 * 5;
        let rotated: Vec<PathBuf> = (1..=3)
            .map(|index| dir.join(format!("nested/audit.ndjson.{index}")))
            .collect();
        assert!(rotated[0].exists() && rotated[1].exists());
        assert!(!rotated[2].exists(), "only `keep` rotated files remain");
        // Oldest file first: every file is within the limit and holds whole lines, and together
        // they hold one unbroken run of entries that ends with the last one written.
        let mut seqs = Vec::new();
        for file in [&rotated[1], &rotated[0], &path] {
            let size = std::fs::metadata(file).expect("file").len();
            assert!(size <= 4096, "{} is {size} bytes", file.display());
            let text = std::fs::read_to_string(file).expect("read");
            assert!(text.ends_with('\n'), "{} ends mid-line", file.display());
            let file_lines = lines(file);
            assert!(!file_lines.is_empty(), "{} is empty", file.display());
            for line in file_lines {
                assert_eq!(line["path"], "/line\nbreak");
                seqs.push(line["seq"].as_u64().expect("seq"));
            }
        }
        let first = seqs[0];
        assert!(first > 1, "the oldest lines were rotated away");
        assert_eq!(
            seqs,
            (first..=last_seq).collect::<Vec<u64>>(),
            "no line lost or repeated between the files kept"
        );
        let newest = lines(&path);
        assert_eq!(newest.last().expect("a line")["action"], "round19");
        // Reopening appends where it left off.
        let before = lines(&path).len();
        let mut reopened = NdjsonStream::open(config).expect("reopens");
        reopened
            .write_entries(&entries(1, "again"))
            .expect("writes");
        assert_eq!(lines(&path).len(), before + 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_ocsf_format_writes_one_event_per_entry() {
        let dir = std::env::temp_dir().join(format!("auditgate-stream-{}", ulid::Ulid::new()));
        let path = dir.join("audit.ocsf.ndjson");
        let mut stream = NdjsonStream::open(StreamConfig {
            target: StreamTarget::File(path.clone()),
            max_bytes: 1 << 20,
            keep: 1,
            format: StreamFormat::Ocsf,
        })
        .expect("opens");
        let batch = entries(2, "user.deleted");
        stream.write_entries(&batch).expect("writes");
        let written = lines(&path);
        assert_eq!(written.len(), 2);
        for (line, entry) in written.iter().zip(&batch) {
            assert_eq!(line, &crate::entry::ocsf::to_ocsf(entry));
            assert_eq!(line["class_uid"], 6003);
            assert_eq!(line["activity_id"], 4);
            assert_eq!(line["http_request"]["url"]["path"], "/line\nbreak");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
