//! Export encoders: entries to CSV, JSON, NDJSON or OCSF bytes, batch by batch.
//!
//! The encoder holds only what it needs between batches (whether a JSON element came before), so
//! an export of any size streams with flat memory: the admin API and the CLI read a batch from
//! the store with [`ExportReader`], encode it, write the bytes out, and repeat. The encoders do
//! no I/O; the reader's every chunk is its own short store read.
//!
//! CSV follows RFC 4180 (comma, CRLF, double quotes) and neutralises spreadsheet formulas; JSON
//! and NDJSON carry each entry as [`AuditEntry::to_api_json`], the same object the admin API
//! returns; OCSF is NDJSON of [`crate::entry::ocsf::to_ocsf`] events, one per line.

pub mod proofs;
pub mod tiles;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::entry::{format_timestamp, AuditEntry};
use crate::store::query::{Cursor, Filter, Order, PageRequest, MAX_LIMIT};
use crate::store::{Store, StoreError};

/// The file formats an export can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    /// One JSON array of entries.
    Json,
    /// One JSON entry per line, for log shippers and `jq`.
    Ndjson,
    /// One OCSF API Activity event per line, for SIEMs that ingest OCSF.
    Ocsf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown export format {0:?}; expected csv, json, ndjson or ocsf")]
pub struct UnknownExportFormat(pub String);

impl FromStr for ExportFormat {
    type Err = UnknownExportFormat;

    fn from_str(text: &str) -> Result<ExportFormat, UnknownExportFormat> {
        match text {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            "ndjson" => Ok(ExportFormat::Ndjson),
            "ocsf" => Ok(ExportFormat::Ocsf),
            _ => Err(UnknownExportFormat(text.chars().take(64).collect())),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl ExportFormat {
    /// The name `--format` and `format=` take.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Ocsf => "ocsf",
        }
    }

    /// The `Content-Type` of an export in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            // RFC 4180 registers text/csv; the charset is explicit because entries hold UTF-8.
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::Ndjson | ExportFormat::Ocsf => "application/x-ndjson",
        }
    }

    pub fn file_extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Ndjson => "ndjson",
            // Still NDJSON to every tool; the name says which schema the lines follow.
            ExportFormat::Ocsf => "ocsf.ndjson",
        }
    }
}

/// The name to save an export under: `auditgate-export-20261126T101500Z.csv`. Basic ISO 8601
/// (no colons) so the name is valid on every file system and sorts by time.
pub fn export_file_name(format: ExportFormat, now: DateTime<Utc>) -> String {
    format!(
        "auditgate-export-{}.{}",
        now.format("%Y%m%dT%H%M%SZ"),
        format.file_extension()
    )
}

/// The CSV header: the entry's API names in entry order.
pub const CSV_COLUMNS: [&str; 25] = [
    "id",
    "seq",
    "createdAt",
    "logId",
    "actorId",
    "actorEmail",
    "actorName",
    "actorSource",
    "actorVerified",
    "tenant",
    "action",
    "resourceType",
    "resourceId",
    "outcome",
    "status",
    "method",
    "path",
    "route",
    "rule",
    "ip",
    "userAgent",
    "requestId",
    "durationMs",
    "error",
    "metadata",
];

/// The first characters that make a spreadsheet treat a cell as a formula (OWASP's list). Such a
/// cell gets a leading `'`, so opening an export cannot run `=HYPERLINK(...)` or `=cmd|...`
/// planted in a path or user agent by whoever sent the request.
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Encoding an export batch failed. Writing into memory does not fail in practice; the error
/// exists so that an impossible failure stops the export loudly instead of dropping entries.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("csv encoding failed: {0}")]
    Csv(#[from] csv::Error),
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// Turns batches of entries into the bytes of one export.
///
/// Call [`begin`](ExportEncoder::begin) once, [`encode`](ExportEncoder::encode) for each batch,
/// and [`finish`](ExportEncoder::finish) once; the concatenation of what they return is the file.
#[derive(Debug)]
pub struct ExportEncoder {
    format: ExportFormat,
    /// Whether a JSON array element has been written, so the next one needs a comma.
    wrote_element: bool,
}

impl ExportEncoder {
    pub fn new(format: ExportFormat) -> ExportEncoder {
        ExportEncoder {
            format,
            wrote_element: false,
        }
    }

    pub fn format(&self) -> ExportFormat {
        self.format
    }

    /// The bytes before the first entry: the CSV header row, or `[` for JSON.
    pub fn begin(&mut self) -> Vec<u8> {
        match self.format {
            ExportFormat::Csv => {
                // The names are plain ASCII words, so no quoting is ever needed.
                let mut header = CSV_COLUMNS.join(",");
                header.push_str("\r\n");
                header.into_bytes()
            }
            ExportFormat::Json => b"[".to_vec(),
            ExportFormat::Ndjson | ExportFormat::Ocsf => Vec::new(),
        }
    }

    /// The bytes of one batch of entries.
    pub fn encode(&mut self, entries: &[AuditEntry]) -> Result<Vec<u8>, ExportError> {
        match self.format {
            ExportFormat::Csv => encode_csv(entries),
            ExportFormat::Json => {
                let mut bytes = Vec::new();
                for entry in entries {
                    // One entry a line keeps a large export readable and diffable.
                    bytes.extend_from_slice(if self.wrote_element { b",\n" } else { b"\n" });
                    entry.write_api_json(&mut bytes)?;
                    self.wrote_element = true;
                }
                Ok(bytes)
            }
            ExportFormat::Ndjson => {
                let mut bytes = Vec::new();
                for entry in entries {
                    // serde_json escapes control characters inside strings, so an entry is
                    // always exactly one line.
                    entry.write_api_json(&mut bytes)?;
                    bytes.push(b'\n');
                }
                Ok(bytes)
            }
            ExportFormat::Ocsf => {
                let mut bytes = Vec::new();
                for entry in entries {
                    serde_json::to_writer(&mut bytes, &crate::entry::ocsf::to_ocsf(entry))?;
                    bytes.push(b'\n');
                }
                Ok(bytes)
            }
        }
    }

    /// The bytes after the last entry: `]` and a newline for JSON.
    pub fn finish(&mut self) -> Vec<u8> {
        match self.format {
            ExportFormat::Csv | ExportFormat::Ndjson | ExportFormat::Ocsf => Vec::new(),
            ExportFormat::Json if self.wrote_element => b"\n]\n".to_vec(),
            ExportFormat::Json => b"]\n".to_vec(),
        }
    }
}

fn encode_csv(entries: &[AuditEntry]) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .has_headers(false)
        .from_writer(Vec::new());
    for entry in entries {
        let mut record = csv_record(entry)?;
        for cell in &mut record {
            neutralize_formula(cell);
        }
        writer.write_record(record.iter().map(|cell| cell.as_bytes()))?;
    }
    writer
        .into_inner()
        .map_err(|error| ExportError::Csv(csv::Error::from(error.into_error())))
}

/// One entry as CSV cells, in [`CSV_COLUMNS`] order, borrowed from the entry where a cell is a
/// field as it is (an export writes hundreds of thousands of rows a second; a copy per cell was
/// a fifth of its time). An absent value is an empty cell, which CSV cannot tell apart from an
/// empty string; JSON and NDJSON keep the difference.
fn csv_record(entry: &AuditEntry) -> Result<[Cow<'_, str>; 25], serde_json::Error> {
    Ok([
        Cow::Borrowed(&entry.id),
        Cow::Owned(entry.seq.to_string()),
        Cow::Owned(format_timestamp(&entry.created_at)),
        Cow::Borrowed(&entry.log_id),
        optional(&entry.actor_id),
        optional(&entry.actor_email),
        optional(&entry.actor_name),
        optional(&entry.actor_source),
        Cow::Borrowed(if entry.actor_verified {
            "true"
        } else {
            "false"
        }),
        optional(&entry.tenant),
        Cow::Borrowed(&entry.action),
        optional(&entry.resource_type),
        optional(&entry.resource_id),
        Cow::Borrowed(entry.outcome.as_str()),
        entry
            .status
            .map_or(Cow::Borrowed(""), |status| Cow::Owned(status.to_string())),
        optional(&entry.method),
        optional(&entry.path),
        optional(&entry.route),
        optional(&entry.rule),
        optional(&entry.ip),
        optional(&entry.user_agent),
        optional(&entry.request_id),
        // The same number the JSON carries, so both exports agree.
        entry.duration_us.map_or(Cow::Borrowed(""), |us| {
            Cow::Owned(((us as f64) / 1000.0).to_string())
        }),
        optional(&entry.error),
        Cow::Owned(serde_json::to_string(&entry.metadata)?),
    ])
}

fn optional(value: &Option<String>) -> Cow<'_, str> {
    Cow::Borrowed(value.as_deref().unwrap_or_default())
}

fn neutralize_formula(cell: &mut Cow<'_, str>) {
    if cell.starts_with(FORMULA_TRIGGERS) {
        *cell = Cow::Owned(format!("'{cell}"));
    }
}

/// Entries read from the store per chunk of an export.
pub const EXPORT_CHUNK: u32 = MAX_LIMIT;

/// Reads the entries of one export from the store, chunk by chunk, by keyset.
///
/// Each chunk is its own short read, so an export of any size never holds a read transaction
/// open (which would stop SQLite's WAL checkpoints for as long as the download takes) and never
/// holds more than one chunk in memory. The export is a snapshot of the log as it was when it
/// began: entries appended meanwhile are left out, so an export taken under load ends, and two
/// exports started at the same moment agree.
#[derive(Debug, Clone)]
pub struct ExportReader {
    filter: Filter,
    order: Order,
    /// Where the next chunk starts (exclusive).
    cursor: Option<Cursor>,
    /// The newest entry of the store when the export began: nothing after it is exported.
    through: Option<Cursor>,
    finished: bool,
}

impl ExportReader {
    /// Starts an export of the entries matching `filter`, in `order`, after `after` if given
    /// (a cursor from a listing or an interrupted export).
    pub fn start(
        store: &dyn Store,
        filter: Filter,
        order: Order,
        after: Option<Cursor>,
    ) -> Result<ExportReader, StoreError> {
        // Positions only grow, so the newest position now bounds the snapshot in either order.
        let through = store.newest_position()?;
        Ok(ExportReader {
            filter,
            order,
            cursor: after,
            through,
            finished: through.is_none(),
        })
    }

    /// The next chunk of entries, or `None` when the export is complete.
    pub fn next_chunk(&mut self, store: &dyn Store) -> Result<Option<Vec<AuditEntry>>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        let page = store.list(
            &self.filter,
            &PageRequest {
                limit: EXPORT_CHUNK,
                cursor: self.cursor,
                order: self.order,
                count: false,
                through: self.through,
            },
        )?;
        self.cursor = page.next_cursor;
        if self.cursor.is_none() {
            self.finished = true;
        }
        if page.entries.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        Ok(Some(page.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Outcome;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 10, 15, 0)
            .single()
            .expect("valid time")
    }

    fn plain(seq: u64) -> AuditEntry {
        let mut entry = AuditEntry::new("log-a", "user.deleted");
        entry.id = format!("01JEXPORT{seq:017}");
        entry.seq = seq;
        entry.created_at = time();
        entry.outcome = Outcome::Success;
        entry.status = Some(204);
        entry.actor_id = Some("u1".into());
        entry.duration_us = Some(1500);
        entry
    }

    /// Values that break naive CSV and JSON writers, or attack whoever opens the file.
    fn hostile() -> AuditEntry {
        let mut entry = plain(2);
        entry.actor_email = Some("=HYPERLINK(\"http://evil\",\"click\")".into());
        entry.actor_name = Some("O'Brien, \"Bob\"".into());
        entry.tenant = Some(String::new());
        entry.action = "+cmd|' /C calc'!A0".into();
        entry.resource_type = Some("-2+3".into());
        entry.resource_id = Some("@SUM(A1)".into());
        entry.path = Some("/a,b\r\nc\nd\re".into());
        entry.route = Some("\tindented".into());
        entry.rule = Some("\rcarriage".into());
        entry.user_agent = Some("\u{1b}[31mred\u{1b}[0m Zürich 東京 🙂".into());
        entry.error = Some("\"quoted\"".into());
        entry
            .metadata
            .insert("note".into(), json!("line1\nline2,\"x\""));
        entry
    }

    fn all_bytes(format: ExportFormat, batches: &[&[AuditEntry]]) -> Vec<u8> {
        let mut encoder = ExportEncoder::new(format);
        let mut bytes = encoder.begin();
        for batch in batches {
            bytes.extend(encoder.encode(batch).expect("encode"));
        }
        bytes.extend(encoder.finish());
        bytes
    }

    fn read_csv(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
        let mut reader = csv::Reader::from_reader(bytes);
        let header = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        let rows = reader
            .records()
            .map(|record| record.expect("record").iter().map(str::to_string).collect())
            .collect();
        (header, rows)
    }

    fn cell<'a>(header: &[String], row: &'a [String], name: &str) -> &'a str {
        let index = header
            .iter()
            .position(|column| column == name)
            .expect("column");
        &row[index]
    }

    #[test]
    fn formats_parse_and_describe_themselves() {
        assert_eq!("csv".parse(), Ok(ExportFormat::Csv));
        assert_eq!("json".parse(), Ok(ExportFormat::Json));
        assert_eq!("ndjson".parse(), Ok(ExportFormat::Ndjson));
        assert_eq!(
            "xlsx".parse::<ExportFormat>(),
            Err(UnknownExportFormat("xlsx".into()))
        );
        assert!("CSV".parse::<ExportFormat>().is_err());
        assert_eq!(ExportFormat::Csv.content_type(), "text/csv; charset=utf-8");
        assert_eq!(ExportFormat::Json.content_type(), "application/json");
        assert_eq!(ExportFormat::Ndjson.content_type(), "application/x-ndjson");
        assert_eq!(ExportFormat::Ndjson.file_extension(), "ndjson");
    }

    #[test]
    fn file_name_carries_the_time_and_extension() {
        assert_eq!(
            export_file_name(ExportFormat::Csv, time()),
            "auditgate-export-20261126T101500Z.csv"
        );
        assert_eq!(
            export_file_name(ExportFormat::Ndjson, time()),
            "auditgate-export-20261126T101500Z.ndjson"
        );
    }

    #[test]
    fn csv_header_names_every_api_field_in_entry_order() {
        let bytes = all_bytes(ExportFormat::Csv, &[]);
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "id,seq,createdAt,logId,actorId,actorEmail,actorName,actorSource,actorVerified,\
             tenant,action,resourceType,resourceId,outcome,status,method,path,route,rule,ip,\
             userAgent,requestId,durationMs,error,metadata\r\n"
        );
        // Every CSV column is a key of the API JSON, so the two exports describe the same thing.
        let json = plain(1).to_api_json();
        for column in CSV_COLUMNS {
            assert!(json.get(column).is_some(), "{column} is not an API field");
        }
    }

    #[test]
    fn csv_round_trips_hostile_values_with_formulas_neutralized() {
        let bytes = all_bytes(ExportFormat::Csv, &[&[plain(1)], &[hostile(), plain(3)]]);
        let (header, rows) = read_csv(&bytes);
        assert_eq!(header, CSV_COLUMNS);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|row| row.len() == CSV_COLUMNS.len()));

        let row = &rows[1];
        let get = |name| cell(&header, row, name);
        assert_eq!(get("seq"), "2");
        assert_eq!(get("createdAt"), "2026-11-26T10:15:00.000000Z");
        assert_eq!(get("actorEmail"), "'=HYPERLINK(\"http://evil\",\"click\")");
        assert_eq!(get("actorName"), "O'Brien, \"Bob\"");
        assert_eq!(get("action"), "'+cmd|' /C calc'!A0");
        assert_eq!(get("resourceType"), "'-2+3");
        assert_eq!(get("resourceId"), "'@SUM(A1)");
        assert_eq!(
            get("path"),
            "/a,b\r\nc\nd\re",
            "embedded line breaks survive"
        );
        assert_eq!(get("route"), "'\tindented");
        assert_eq!(get("rule"), "'\rcarriage");
        assert_eq!(get("userAgent"), "\u{1b}[31mred\u{1b}[0m Zürich 東京 🙂");
        assert_eq!(get("error"), "\"quoted\"");
        assert_eq!(get("status"), "204");
        assert_eq!(get("durationMs"), "1.5");
        assert_eq!(get("actorVerified"), "false");
        assert_eq!(get("outcome"), "success");
        let metadata: Value = serde_json::from_str(get("metadata")).expect("metadata is JSON");
        assert_eq!(metadata, json!({"note": "line1\nline2,\"x\""}));
        // CSV has no null: an absent value and an empty string are both an empty cell.
        assert_eq!(get("tenant"), "");
        assert_eq!(get("method"), "");
        assert_eq!(get("requestId"), "");

        assert_eq!(cell(&header, &rows[0], "actorId"), "u1");
        assert_eq!(cell(&header, &rows[2], "metadata"), "{}");
    }

    #[test]
    fn csv_rows_end_in_crlf_and_bare_newlines_only_appear_inside_quotes() {
        let bytes = all_bytes(ExportFormat::Csv, &[&[plain(1), hostile()]]);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with("\r\n"));
        // Outside quoted fields, every line break is CRLF.
        let mut in_quotes = false;
        let mut previous = '\0';
        for character in text.chars() {
            if character == '"' {
                in_quotes = !in_quotes;
            }
            if character == '\n' && !in_quotes {
                assert_eq!(previous, '\r', "bare LF outside quotes");
            }
            previous = character;
        }
        assert!(!in_quotes);
    }

    #[test]
    fn csv_leaves_negative_looking_data_only_when_it_cannot_be_a_formula() {
        let mut entry = plain(1);
        entry.path = Some("/x=-1".into());
        entry.resource_id = Some("'already".into());
        let (header, rows) = read_csv(&all_bytes(ExportFormat::Csv, &[&[entry]]));
        assert_eq!(cell(&header, &rows[0], "path"), "/x=-1");
        assert_eq!(cell(&header, &rows[0], "resourceId"), "'already");
    }

    #[test]
    fn json_is_one_array_across_batches() {
        let entries = [plain(1), hostile(), plain(3)];
        let bytes = all_bytes(
            ExportFormat::Json,
            &[&entries[..1], &[], &entries[1..2], &entries[2..]],
        );
        let parsed: Value = serde_json::from_slice(&bytes).expect("one JSON document");
        let expected: Vec<Value> = entries.iter().map(AuditEntry::to_api_json).collect();
        assert_eq!(parsed, Value::Array(expected));
        assert!(bytes.ends_with(b"]\n"));
        // Null and empty string stay distinct in JSON.
        assert_eq!(parsed[1]["tenant"], json!(""));
        assert_eq!(parsed[1]["method"], Value::Null);
        assert_eq!(parsed[0]["durationMs"], json!(1.5));
    }

    #[test]
    fn empty_json_export_is_an_empty_array() {
        let bytes = all_bytes(ExportFormat::Json, &[&[], &[]]);
        assert_eq!(bytes, b"[]\n");
        let parsed: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(parsed, json!([]));
    }

    #[test]
    fn ndjson_is_one_object_per_line_even_with_newlines_in_values() {
        let entries = [plain(1), hostile(), plain(3)];
        let bytes = all_bytes(ExportFormat::Ndjson, &[&entries[..2], &entries[2..]]);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, entry) in lines.iter().zip(&entries) {
            assert!(!line.contains('\r'));
            let parsed: Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(parsed, entry.to_api_json());
            let back: AuditEntry = serde_json::from_value(parsed).expect("an entry");
            assert_eq!(&back, entry);
        }
        assert!(all_bytes(ExportFormat::Ndjson, &[&[]]).is_empty());
    }

    #[test]
    fn ocsf_is_one_event_per_line_in_entry_order() {
        let entries = [plain(1), hostile(), plain(3)];
        let bytes = all_bytes(ExportFormat::Ocsf, &[&entries[..2], &entries[2..]]);
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, entry) in lines.iter().zip(&entries) {
            let parsed: Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(parsed, crate::entry::ocsf::to_ocsf(entry));
            assert_eq!(parsed["class_uid"], 6003);
            assert_eq!(parsed["metadata"]["sequence"], entry.seq);
        }
        assert_eq!("ocsf".parse(), Ok(ExportFormat::Ocsf));
        assert_eq!(ExportFormat::Ocsf.to_string(), "ocsf");
        assert_eq!(ExportFormat::Ocsf.content_type(), "application/x-ndjson");
        assert_eq!(
            export_file_name(ExportFormat::Ocsf, time()),
            "auditgate-export-20261126T101500Z.ocsf.ndjson"
        );
    }

    fn seeded_store(count: usize) -> (std::path::PathBuf, crate::store::sqlite::SqliteStore) {
        let dir = std::env::temp_dir().join(format!("auditgate-export-{}", ulid::Ulid::new()));
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.join("audit.db"),
            crate::store::config::SyncMode::Normal,
        )
        .expect("opens");
        let mut batch: Vec<AuditEntry> = (0..count)
            .map(|index| {
                AuditEntry::new(
                    "log-a",
                    if index % 2 == 0 {
                        "even.thing"
                    } else {
                        "odd.thing"
                    },
                )
            })
            .collect();
        store.append(&mut batch).expect("appends");
        (dir, store)
    }

    fn read_all(store: &dyn Store, reader: &mut ExportReader) -> (Vec<u64>, usize) {
        let mut seqs = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = reader.next_chunk(store).expect("reads") {
            assert!(!chunk.is_empty() && chunk.len() <= EXPORT_CHUNK as usize);
            chunks += 1;
            seqs.extend(chunk.iter().map(|entry| entry.seq));
        }
        assert!(
            reader.next_chunk(store).expect("reads").is_none(),
            "stays done"
        );
        (seqs, chunks)
    }

    #[test]
    fn the_reader_walks_every_matching_entry_in_chunks_either_way() {
        let (dir, store) = seeded_store(2500);
        let mut reader =
            ExportReader::start(&store, Filter::default(), Order::Desc, None).expect("starts");
        let (seqs, chunks) = read_all(&store, &mut reader);
        assert_eq!(seqs, (1..=2500).rev().collect::<Vec<u64>>());
        assert_eq!(chunks, 3);

        let mut reader =
            ExportReader::start(&store, Filter::default(), Order::Asc, None).expect("starts");
        assert_eq!(
            read_all(&store, &mut reader).0,
            (1..=2500).collect::<Vec<u64>>()
        );

        let odd = Filter {
            action: Some("odd.thing".into()),
            ..Filter::default()
        };
        let mut reader = ExportReader::start(&store, odd, Order::Asc, None).expect("starts");
        let (seqs, _) = read_all(&store, &mut reader);
        assert_eq!(seqs.len(), 1250);
        assert!(
            seqs.iter().all(|seq| seq % 2 == 0),
            "odd indexes have even seqs"
        );

        let mut reader = ExportReader::start(
            &store,
            Filter::default(),
            Order::Desc,
            Some(Cursor::after_seq(11)),
        )
        .expect("starts");
        assert_eq!(
            read_all(&store, &mut reader).0,
            (1..=10).rev().collect::<Vec<u64>>()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_reader_is_a_snapshot_of_the_log_when_it_began() {
        let (dir, store) = seeded_store(1500);
        let mut ascending =
            ExportReader::start(&store, Filter::default(), Order::Asc, None).expect("starts");
        let mut descending =
            ExportReader::start(&store, Filter::default(), Order::Desc, None).expect("starts");
        let first = ascending.next_chunk(&store).expect("reads").expect("chunk");
        assert_eq!(first.len(), 1000);
        let mut later: Vec<AuditEntry> = (0..700)
            .map(|_| AuditEntry::new("log-a", "later"))
            .collect();
        store.append(&mut later).expect("appends");
        let rest = read_all(&store, &mut ascending).0;
        assert_eq!(rest, (1001..=1500).collect::<Vec<u64>>());
        assert_eq!(read_all(&store, &mut descending).0.len(), 1500);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_empty_log_exports_nothing() {
        let (dir, store) = seeded_store(0);
        let mut reader =
            ExportReader::start(&store, Filter::default(), Order::Asc, None).expect("starts");
        assert!(reader.next_chunk(&store).expect("reads").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
