//! `AuditEntry`, the one record type, and its canonical form.
//!
//! An entry is built by the proxy when a request arrives, completed when the response ends, and
//! appended to the log by the writer, which gives it its sequence number. Its JSON form uses the
//! reference product's camelCase names (`actorId`, `actorEmail`, `resourceType`, ...).

pub mod ocsf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The prefix of the actions auditgate records about itself (`audit.query`, `audit.export`,
/// `audit.pruned`, ...). Nothing an app controls may produce such an action — not a rule, a
/// response hint or `POST /api/v1/events` — so an auditor can trust that an `audit.*` entry is
/// auditgate's own, and an app cannot hide its actions behind the viewer's switch that hides
/// auditgate's activity. Matched without regard to ASCII case, so `Audit.pruned` cannot pose as
/// one either.
pub const RESERVED_ACTION_PREFIX: &str = "audit.";

/// The prefix a rule's action that renders into [`RESERVED_ACTION_PREFIX`] at request time gets
/// (`audit.x` is recorded as `app.audit.x`, the rendered text under `metadata._actionRenamed`).
pub const RENAMED_ACTION_PREFIX: &str = "app.";

/// Whether `action` is in auditgate's own namespace (see [`RESERVED_ACTION_PREFIX`]).
pub fn is_reserved_action(action: &str) -> bool {
    action
        .get(..RESERVED_ACTION_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_ACTION_PREFIX))
}

/// How a request ended, as seen by the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The app answered 1xx, 2xx or 3xx.
    Success,
    /// The app refused the request: 4xx.
    Failure,
    /// The app or the way to it failed: 5xx, upstream unreachable or timing out.
    Error,
    /// The response was never seen (a crash between forwarding and completion).
    Unknown,
}

impl Outcome {
    /// The outcome a response status stands for.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            100..=399 => Outcome::Success,
            400..=499 => Outcome::Failure,
            _ => Outcome::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "error" => Some(Outcome::Error),
            "unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// ULID, unique across logs.
    pub id: String,
    /// Position in the log, 1-based; 0 until the writer appends the entry.
    pub seq: u64,
    /// When the request arrived (UTC).
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// The log this entry belongs to (one per sidecar).
    pub log_id: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub actor_name: Option<String>,
    /// Which actor source yielded the actor: jwt, basic, header, api_key, body, rule, app.
    pub actor_source: Option<String>,
    /// Whether the actor's identity was cryptographically or topologically verified.
    pub actor_verified: bool,
    pub tenant: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Outcome,
    /// The status the client received; absent when no response was seen.
    pub status: Option<u16>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The route template or regex of the matched rule.
    pub route: Option<String>,
    /// The name of the matched rule.
    pub rule: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Time from the request head to the end of the response body, in microseconds.
    pub duration_us: Option<u64>,
    /// What went wrong on the way, if anything (upstream refused, client went away, ...).
    pub error: Option<String>,
    pub metadata: Map<String, Value>,
}

impl AuditEntry {
    /// A blank entry with a fresh id, stamped now.
    pub fn new(log_id: &str, action: impl Into<String>) -> AuditEntry {
        AuditEntry {
            id: ulid::Ulid::new().to_string(),
            seq: 0,
            created_at: Utc::now(),
            log_id: log_id.to_string(),
            actor_id: None,
            actor_email: None,
            actor_name: None,
            actor_source: None,
            actor_verified: false,
            tenant: None,
            action: action.into(),
            resource_type: None,
            resource_id: None,
            outcome: Outcome::Unknown,
            status: None,
            method: None,
            path: None,
            route: None,
            rule: None,
            ip: None,
            user_agent: None,
            request_id: None,
            duration_us: None,
            error: None,
            metadata: Map::new(),
        }
    }

    /// The JSON the admin API and exports serve: every field in camelCase, plus `durationMs`.
    pub fn to_api_json(&self) -> Value {
        let mut object = match serde_json::to_value(self) {
            Ok(Value::Object(object)) => object,
            _ => Map::new(),
        };
        let duration_ms = self
            .duration_us
            .map(|us| Value::from((us as f64) / 1000.0))
            .unwrap_or(Value::Null);
        object.insert("durationMs".to_string(), duration_ms);
        Value::Object(object)
    }

    /// Writes [`AuditEntry::to_api_json`]'s object, byte for byte as `serde_json` writes it, straight
    /// from the entry's fields (exports and the SIEM stream write hundreds of thousands a second;
    /// building the `Value` first was most of their time).
    /// The fields are written one by one ([`SerializedEntry::write_json`], as for the canonical
    /// form that `verify` writes); the metadata and the milliseconds, a float, by `serde_json`.
    pub fn write_api_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut api = self.serialized();
        // The same number `to_api_json` carries; the API form has no `v`.
        api.duration_ms = Some(self.duration_us.map(|us| (us as f64) / 1000.0));
        api.v = None;
        api.write_json(out)
    }

    /// The entry's fields borrowed in the canonical form's shape (see [`SerializedEntry`]).
    fn serialized(&self) -> SerializedEntry<'_, CanonicalTime<'_>, Map<String, Value>> {
        SerializedEntry {
            action: &self.action,
            actor_email: self.actor_email.as_deref(),
            actor_id: self.actor_id.as_deref(),
            actor_name: self.actor_name.as_deref(),
            actor_source: self.actor_source.as_deref(),
            actor_verified: self.actor_verified,
            created_at: CanonicalTime(&self.created_at),
            duration_ms: None,
            duration_us: self.duration_us,
            error: self.error.as_deref(),
            id: &self.id,
            ip: self.ip.as_deref(),
            log_id: &self.log_id,
            metadata: &self.metadata,
            method: self.method.as_deref(),
            outcome: self.outcome.as_str(),
            path: self.path.as_deref(),
            request_id: self.request_id.as_deref(),
            resource_id: self.resource_id.as_deref(),
            resource_type: self.resource_type.as_deref(),
            route: self.route.as_deref(),
            rule: self.rule.as_deref(),
            seq: self.seq,
            status: self.status,
            tenant: self.tenant.as_deref(),
            user_agent: self.user_agent.as_deref(),
            v: Some(1),
        }
    }

    /// The canonical bytes of the entry, the input of its Merkle leaf hash.
    ///
    /// The form is JSON with every field present (absent values as `null`), keys sorted
    /// byte-wise at every depth, no insignificant white space, integers as integers and the
    /// timestamp as `YYYY-MM-DDTHH:MM:SS.ffffffZ`. It covers `seq` and `logId`, so an entry moved to
    /// another position or log no longer matches its leaf. The form is versioned by the
    /// `v` key; version 1 is this one.
    ///
    /// Written straight from a borrowed struct whose fields are declared in sorted key order (the
    /// writer hashes every entry, so building a `serde_json::Value` per entry would cost more than
    /// the hash); the fixed-vector test below pins the bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let canonical = self.serialized();
        // serde_json's Map is a BTreeMap (the `preserve_order` feature is off), so metadata keys
        // come out sorted at every depth; the struct's own keys are sorted by declaration.
        serde_json::to_vec(&canonical).unwrap_or_default()
    }
}

/// An entry's fields as a store holds them: text as stored, the timestamp in its stored form and
/// the metadata as its stored JSON text, borrowed from a [`StoredRow`].
///
/// [`StoredColumns::canonical_bytes`] writes the canonical form from them without building an
/// [`AuditEntry`] (no allocation per field, no parse of the metadata), for `verify`'s walk. It
/// equals [`AuditEntry::canonical_bytes`] of the decoded row whenever the row is in the form the
/// store writes (the timestamp as [`format_timestamp`] writes it, the metadata as serde_json
/// writes a map). For any other row it differs, and it then cannot equal the bytes hashed at
/// commit either: every string is escaped and the metadata text is one whole JSON value, so the
/// bytes parse back into exactly these fields. A caller that finds a mismatch decodes the row
/// and decides from that, as before.
#[derive(Debug, Clone, Copy)]
pub struct StoredColumns<'a> {
    pub seq: u64,
    pub id: &'a str,
    pub log_id: &'a str,
    pub created_at: &'a str,
    pub actor_id: Option<&'a str>,
    pub actor_email: Option<&'a str>,
    pub actor_name: Option<&'a str>,
    pub actor_source: Option<&'a str>,
    pub actor_verified: bool,
    pub tenant: Option<&'a str>,
    pub action: &'a str,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub outcome: &'a str,
    pub status: Option<u16>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub duration_us: Option<u64>,
    pub error: Option<&'a str>,
    pub metadata: &'a str,
}

impl StoredColumns<'_> {
    /// The canonical bytes these columns stand for, into `out` (cleared first); `false`, with
    /// `out` unspecified, when the metadata text is not one JSON value, or has white space
    /// around it.
    pub fn canonical_bytes(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(metadata) = self.metadata_value() else {
            return false;
        };
        // Byte for byte what `serde_json` writes for it (the test
        // `stored_columns_are_written_as_serde_writes_them` holds the two together), without its
        // serializer's calls per fragment: `verify` writes every entry of the log this way.
        self.serialized(metadata).write_json(out).is_ok()
    }

    /// The metadata text as one JSON value, `None` when it is not one or has white space around
    /// it (which the parse leaves out): such text is not what a store writes, and is decoded
    /// instead.
    fn metadata_value(&self) -> Option<&serde_json::value::RawValue> {
        serde_json::from_str::<&serde_json::value::RawValue>(self.metadata)
            .ok()
            .filter(|metadata| metadata.get().len() == self.metadata.len())
    }

    fn serialized<'a>(
        &'a self,
        metadata: &'a serde_json::value::RawValue,
    ) -> SerializedEntry<'a, &'a str, serde_json::value::RawValue> {
        SerializedEntry {
            action: self.action,
            actor_email: self.actor_email,
            actor_id: self.actor_id,
            actor_name: self.actor_name,
            actor_source: self.actor_source,
            actor_verified: self.actor_verified,
            created_at: self.created_at,
            duration_ms: None,
            duration_us: self.duration_us,
            error: self.error,
            id: self.id,
            ip: self.ip,
            log_id: self.log_id,
            metadata,
            method: self.method,
            outcome: self.outcome,
            path: self.path,
            request_id: self.request_id,
            resource_id: self.resource_id,
            resource_type: self.resource_type,
            route: self.route,
            rule: self.rule,
            seq: self.seq,
            status: self.status,
            tenant: self.tenant,
            user_agent: self.user_agent,
            v: Some(1),
        }
    }

    /// [`StoredColumns::canonical_bytes`] through `serde_json`, to hold the two together.
    #[cfg(test)]
    fn canonical_bytes_by_serde(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        self.metadata_value().is_some_and(|metadata| {
            serde_json::to_writer(&mut *out, &self.serialized(metadata)).is_ok()
        })
    }
}

/// Writes JSON as `serde_json`'s compact formatter does: strings escaped with its rules (`"`,
/// `\`, and the control characters below U+0020: `\b \t \n \f \r` by name, the others as
/// `\u00xx` in lower-case hex; everything else as it is), numbers in decimal.
struct JsonWriter<'a>(&'a mut Vec<u8>);

impl JsonWriter<'_> {
    fn key_first(&mut self, name: &[u8]) {
        self.0.extend_from_slice(b"{\"");
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b"\":");
    }

    fn key(&mut self, name: &[u8]) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b"\":");
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn optional_integer(&mut self, value: Option<u64>) {
        match value {
            Some(value) => self
                .0
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes()),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    fn optional_string(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.string(text),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    fn string(&mut self, text: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = text.as_bytes();
        self.0.reserve(bytes.len() + 2);
        self.0.push(b'"');
        let mut start = 0;
        for (index, &byte) in bytes.iter().enumerate() {
            let escape: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                0x0c => b"\\f",
                b'\r' => b"\\r",
                0x00..=0x1f => &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ],
                _ => continue,
            };
            self.0.extend_from_slice(&bytes[start..index]);
            self.0.extend_from_slice(escape);
            start = index + 1;
        }
        self.0.extend_from_slice(&bytes[start..]);
        self.0.push(b'"');
    }
}

/// An entry row's values copied as they are into one buffer, in the order of
/// [`StoredColumns`]' fields (`seq` first, `metadata` last): what a reader of the log hands to
/// another thread to check types, write the canonical form and hash it, so the thread walking
/// the database only copies bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredRow {
    bytes: Vec<u8>,
}

const STORED_NULL: u8 = 0;
const STORED_INTEGER: u8 = 1;
const STORED_TEXT: u8 = 2;
/// A value of a type an entry's column never holds (a real, a blob, text too long to copy).
const STORED_OTHER: u8 = 3;

impl StoredRow {
    pub fn with_capacity(bytes: usize) -> StoredRow {
        StoredRow {
            bytes: Vec::with_capacity(bytes),
        }
    }

    pub fn push_null(&mut self) {
        self.bytes.push(STORED_NULL);
    }

    pub fn push_integer(&mut self, value: i64) {
        self.bytes.push(STORED_INTEGER);
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Text as stored, not yet checked to be UTF-8.
    pub fn push_text(&mut self, text: &[u8]) {
        match u32::try_from(text.len()) {
            Ok(length) => {
                self.bytes.push(STORED_TEXT);
                self.bytes.extend_from_slice(&length.to_le_bytes());
                self.bytes.extend_from_slice(text);
            }
            Err(_) => self.push_other(),
        }
    }

    pub fn push_other(&mut self) {
        self.bytes.push(STORED_OTHER);
    }

    /// The canonical bytes of the entry the row holds, into `out`; `false` when a value is not
    /// of its column's type as the store writes it (text that is not UTF-8, a number out of
    /// range, a missing or extra value), the timestamp is not in the stored form, or the
    /// metadata is not JSON or nests deeper than an entry's decoding reads: such a row is decoded
    /// as an entry instead, so that it gets the decoded entry's verdict (a timestamp past year
    /// 9999 or metadata nested 128 deep is written by no store, and would not decode).
    pub fn canonical_bytes(&self, out: &mut Vec<u8>) -> bool {
        self.canonical_bytes_and_count_fields(out).0
    }

    /// [`StoredRow::canonical_bytes`], and the values the stats counts key the row by (read
    /// once for both): `(created_at, action, outcome, actor_email, actor_id)`, `None` when a
    /// value is not of its column's type.
    pub fn canonical_bytes_and_count_fields(
        &self,
        out: &mut Vec<u8>,
    ) -> (bool, Option<CountFields<'_>>) {
        let Some(columns) = self.columns() else {
            return (false, None);
        };
        let fields = (
            columns.created_at,
            columns.action,
            columns.outcome,
            columns.actor_email,
            columns.actor_id,
        );
        let canonical = is_stored_timestamp(columns.created_at.as_bytes())
            && nesting_depth(columns.metadata.as_bytes()) <= MAX_STORED_NESTING
            && columns.canonical_bytes(out);
        (canonical, Some(fields))
    }

    fn columns(&self) -> Option<StoredColumns<'_>> {
        let mut values = StoredValues(&self.bytes);
        let columns = StoredColumns {
            seq: u64::try_from(values.integer()?).ok()?,
            id: values.text()?,
            log_id: values.text()?,
            created_at: values.text()?,
            actor_id: values.optional_text()?,
            actor_email: values.optional_text()?,
            actor_name: values.optional_text()?,
            actor_source: values.optional_text()?,
            actor_verified: values.integer()? != 0,
            tenant: values.optional_text()?,
            action: values.text()?,
            resource_type: values.optional_text()?,
            resource_id: values.optional_text()?,
            outcome: values.text()?,
            status: match values.optional_integer()? {
                None => None,
                Some(status) => Some(u16::try_from(status).ok()?),
            },
            method: values.optional_text()?,
            path: values.optional_text()?,
            route: values.optional_text()?,
            rule: values.optional_text()?,
            ip: values.optional_text()?,
            user_agent: values.optional_text()?,
            request_id: values.optional_text()?,
            duration_us: match values.optional_integer()? {
                None => None,
                Some(duration) => Some(u64::try_from(duration).ok()?),
            },
            error: values.optional_text()?,
            metadata: values.text()?,
        };
        values.0.is_empty().then_some(columns)
    }
}

/// A row's `(created_at, action, outcome, actor_email, actor_id)`, as
/// [`StoredRow::canonical_bytes_and_count_fields`] reads them.
pub type CountFields<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

/// The deepest metadata [`StoredRow::canonical_bytes`] writes: well inside the 128 levels
/// serde_json decodes, so that any metadata it writes also decodes.
const MAX_STORED_NESTING: usize = 100;

/// Whether `text` has the form [`format_timestamp`] writes, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn is_stored_timestamp(text: &[u8]) -> bool {
    const FORM: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    text.len() == FORM.len()
        && text.iter().zip(FORM).all(|(&byte, &form)| match form {
            b'd' => byte.is_ascii_digit(),
            _ => byte == form,
        })
}

/// The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not
/// count).
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Reads a [`StoredRow`]'s values in order; `None` for a value of another type than asked.
struct StoredValues<'a>(&'a [u8]);

impl<'a> StoredValues<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.0.len() < count {
            return None;
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(taken)
    }

    fn optional_integer(&mut self) -> Option<Option<i64>> {
        match *self.take(1)?.first()? {
            STORED_NULL => Some(None),
            STORED_INTEGER => Some(Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))),
            _ => None,
        }
    }

    fn integer(&mut self) -> Option<i64> {
        self.optional_integer()?
    }

    fn optional_text(&mut self) -> Option<Option<&'a str>> {
        match *self.take(1)?.first()? {
            STORED_NULL => Some(None),
            STORED_TEXT => {
                let length = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
                let text = self.take(usize::try_from(length).ok()?)?;
                std::str::from_utf8(text).ok().map(Some)
            }
            _ => None,
        }
    }

    fn text(&mut self) -> Option<&'a str> {
        self.optional_text()?
    }
}

/// An entry as JSON: version 1 of the canonical form (`v` set, `duration_ms` absent) or the admin
/// API's object (`duration_ms` set, `v` absent), which differ in those two keys only. Field order
/// is the byte-wise order of the JSON keys and must stay so: serde writes fields in declaration
/// order, and the API object must come out as a `serde_json::Value` object (a sorted map while
/// serde_json's `preserve_order` feature is off) writes it. The timestamp and the metadata are
/// generic so the canonical form is written by this one struct whether from an entry or from
/// stored columns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SerializedEntry<'a, T: Serialize, M: Serialize + ?Sized> {
    action: &'a str,
    actor_email: Option<&'a str>,
    actor_id: Option<&'a str>,
    actor_name: Option<&'a str>,
    actor_source: Option<&'a str>,
    actor_verified: bool,
    created_at: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<Option<f64>>,
    duration_us: Option<u64>,
    error: Option<&'a str>,
    id: &'a str,
    ip: Option<&'a str>,
    log_id: &'a str,
    metadata: &'a M,
    method: Option<&'a str>,
    outcome: &'a str,
    path: Option<&'a str>,
    request_id: Option<&'a str>,
    resource_id: Option<&'a str>,
    resource_type: Option<&'a str>,
    route: Option<&'a str>,
    rule: Option<&'a str>,
    seq: u64,
    status: Option<u16>,
    tenant: Option<&'a str>,
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<u8>,
}

/// A timestamp field as the text `serde_json` writes for it.
trait TimeText {
    fn text(&self) -> std::borrow::Cow<'_, str>;
}

impl TimeText for &str {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl TimeText for CanonicalTime<'_> {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(format_timestamp(self.0))
    }
}

impl<T: Serialize + TimeText, M: Serialize + ?Sized> SerializedEntry<'_, T, M> {
    /// Writes what `serde_json::to_writer` writes for this struct, byte for byte, the strings
    /// through [`JsonWriter`] and the metadata and the milliseconds through `serde_json` (exports, the event stream and `verify` write every entry this way).
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut json = JsonWriter(out);
        json.key_first(b"action");
        json.string(self.action);
        json.key(b"actorEmail");
        json.optional_string(self.actor_email);
        json.key(b"actorId");
        json.optional_string(self.actor_id);
        json.key(b"actorName");
        json.optional_string(self.actor_name);
        json.key(b"actorSource");
        json.optional_string(self.actor_source);
        json.key(b"actorVerified");
        json.raw(if self.actor_verified {
            b"true"
        } else {
            b"false"
        });
        json.key(b"createdAt");
        json.string(&self.created_at.text());
        if let Some(duration_ms) = self.duration_ms {
            json.key(b"durationMs");
            serde_json::to_writer(&mut *json.0, &duration_ms)?;
        }
        json.key(b"durationUs");
        json.optional_integer(self.duration_us);
        json.key(b"error");
        json.optional_string(self.error);
        json.key(b"id");
        json.string(self.id);
        json.key(b"ip");
        json.optional_string(self.ip);
        json.key(b"logId");
        json.string(self.log_id);
        json.key(b"metadata");
        serde_json::to_writer(&mut *json.0, self.metadata)?;
        json.key(b"method");
        json.optional_string(self.method);
        json.key(b"outcome");
        json.string(self.outcome);
        json.key(b"path");
        json.optional_string(self.path);
        json.key(b"requestId");
        json.optional_string(self.request_id);
        json.key(b"resourceId");
        json.optional_string(self.resource_id);
        json.key(b"resourceType");
        json.optional_string(self.resource_type);
        json.key(b"route");
        json.optional_string(self.route);
        json.key(b"rule");
        json.optional_string(self.rule);
        json.key(b"seq");
        json.optional_integer(Some(self.seq));
        json.key(b"status");
        json.optional_integer(self.status.map(u64::from));
        json.key(b"tenant");
        json.optional_string(self.tenant);
        json.key(b"userAgent");
        json.optional_string(self.user_agent);
        if let Some(v) = self.v {
            json.key(b"v");
            json.optional_integer(Some(u64::from(v)));
        }
        json.raw(b"}");
        Ok(())
    }
}

struct CanonicalTime<'a>(&'a DateTime<Utc>);

impl Serialize for CanonicalTime<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(self.0))
    }
}

/// The one timestamp form of the store, the canonical form and the API.
pub fn format_timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses the stored or API timestamp form (any RFC 3339 timestamp is accepted).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

mod timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_timestamp(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_timestamp(&text)
            .ok_or_else(|| serde::de::Error::custom("timestamp is not RFC 3339"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_audit_prefix_is_reserved_in_any_case() {
        for action in ["audit.pruned", "audit.", "Audit.query", "AUDIT.x"] {
            assert!(is_reserved_action(action), "{action}");
        }
        for action in [
            "audit",
            "auditor.added",
            "app.audit.pruned",
            "audits.x",
            "",
            "ä",
        ] {
            assert!(!is_reserved_action(action), "{action}");
        }
    }

    fn sample() -> AuditEntry {
        let mut entry = AuditEntry::new("log-a", "user.deleted");
        entry.id = "01HZY0000000000000000000AA".into();
        entry.seq = 7;
        entry.created_at = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date")
            + chrono::Duration::microseconds(123_456);
        entry.actor_id = Some("u1".into());
        entry.outcome = Outcome::Success;
        entry.status = Some(204);
        entry.duration_us = Some(1500);
        entry.metadata.insert("z".into(), Value::from(1));
        entry
            .metadata
            .insert("a".into(), serde_json::json!({"y": true, "b": [1, "x"]}));
        entry
    }

    #[test]
    fn the_api_form_is_written_byte_for_byte_as_its_json_value() {
        let durations = [
            None,
            Some(0),
            Some(1),
            Some(1500),
            Some(123_456_789),
            Some(u64::MAX),
        ];
        for (index, duration) in durations.into_iter().enumerate() {
            let mut entry = sample();
            entry.duration_us = duration;
            if index % 2 == 1 {
                entry.actor_email = Some("quote \" \\ \u{1} é 😀 \u{2028}".into());
                entry.actor_verified = true;
                entry.status = None;
                entry.outcome = Outcome::Unknown;
                entry.error = Some("line\nbreak".into());
                entry
                    .metadata
                    .insert("ratio".into(), serde_json::json!(1.0 / 3.0));
                entry.metadata.insert("".into(), serde_json::json!(null));
            }
            let mut written = Vec::new();
            entry.write_api_json(&mut written).expect("writes");
            let expected = serde_json::to_vec(&entry.to_api_json()).expect("serializes");
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn random_entries_are_written_in_the_api_form_byte_for_byte_as_their_json_value() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let alphabet: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', '😀', '\u{2028}', '\u{ffff}', 'a', 'a', 'a', 'a'])
            .collect();
        let text = |rng: &mut rand::rngs::StdRng| -> String {
            let length = rng.gen_range(0..20);
            (0..length)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        };
        let durations = [
            None,
            Some(0),
            Some(1),
            Some(999),
            Some(1500),
            Some(u64::MAX),
        ];
        let statuses = [None, Some(0), Some(200), Some(u16::MAX)];
        let mut written = Vec::new();
        for case in 0..1000 {
            let mut entry = AuditEntry::new(&text(&mut rng), text(&mut rng));
            entry.seq = rng.gen();
            entry.created_at += chrono::Duration::microseconds(rng.gen_range(0..1_000_000_000));
            let optional = |rng: &mut rand::rngs::StdRng| rng.gen_bool(0.7).then(|| text(rng));
            entry.actor_id = optional(&mut rng);
            entry.actor_email = optional(&mut rng);
            entry.actor_name = optional(&mut rng);
            entry.actor_source = optional(&mut rng);
            entry.actor_verified = rng.gen_bool(0.5);
            entry.tenant = optional(&mut rng);
            entry.resource_type = optional(&mut rng);
            entry.resource_id = optional(&mut rng);
            entry.method = optional(&mut rng);
            entry.path = optional(&mut rng);
            entry.route = optional(&mut rng);
            entry.rule = optional(&mut rng);
            entry.ip = optional(&mut rng);
            entry.user_agent = optional(&mut rng);
            entry.request_id = optional(&mut rng);
            entry.error = optional(&mut rng);
            entry.outcome = [Outcome::Success, Outcome::Unknown][case % 2];
            entry.duration_us = durations[case % durations.len()];
            entry.status = statuses[case % statuses.len()];
            for _ in 0..rng.gen_range(0..4) {
                let value = match rng.gen_range(0..4) {
                    0 => Value::from(text(&mut rng)),
                    1 => Value::from(rng.gen::<f64>()),
                    2 => serde_json::json!({ text(&mut rng): [1, text(&mut rng), null] }),
                    _ => Value::from(rng.gen::<i64>()),
                };
                entry.metadata.insert(text(&mut rng), value);
            }
            written.clear();
            entry.write_api_json(&mut written).expect("writes");
            let expected = serde_json::to_vec(&entry.to_api_json()).expect("serializes");
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected),
                "case {case}"
            );
        }
    }

    #[test]
    fn stored_columns_are_written_as_serde_writes_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        // Every character serde_json escapes, the ones it does not (DEL, non-ASCII, U+2028), and
        // plain text.
        let alphabet: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', '😀', '\u{2028}', '\u{ffff}', 'a', 'a', 'a', 'a'])
            .collect();
        let mut texts: Vec<String> = vec![String::new(), "\"".into(), "\\".into(), "\u{1f}".into()];
        for _ in 0..400 {
            let length = rng.gen_range(0..24);
            texts.push(
                (0..length)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect(),
            );
        }
        let metadata = [
            r#"{}"#,
            r#"{"a":[1,"x\"y"],"b":null}"#,
            r#"[]"#,
            r#""s""#,
            "1",
        ];
        let integers = [None, Some(0), Some(1), Some(1500), Some(u64::MAX)];
        let (mut ours, mut serde) = (Vec::new(), Vec::new());
        for case in 0..2000 {
            let picked: Vec<&str> = (0..3)
                .map(|_| texts[rng.gen_range(0..texts.len())].as_str())
                .collect();
            let (a, q, r) = (picked[0], picked[1], picked[2]);
            let optional: Vec<Option<&str>> = (0..15)
                .map(|_| {
                    let text = texts[rng.gen_range(0..texts.len())].as_str();
                    rng.gen_bool(0.7).then_some(text)
                })
                .collect();
            let columns = StoredColumns {
                seq: integers[case % 4 + 1].unwrap_or(1),
                id: a,
                log_id: q,
                created_at: r,
                actor_id: optional[0],
                actor_email: optional[1],
                actor_name: optional[2],
                actor_source: optional[3],
                actor_verified: case % 2 == 0,
                tenant: optional[4],
                action: a,
                resource_type: optional[5],
                resource_id: optional[6],
                outcome: r,
                status: integers[case % 5].map(|status| (status % 65_536) as u16),
                method: optional[7],
                path: optional[8],
                route: optional[9],
                rule: optional[10],
                ip: optional[11],
                user_agent: optional[12],
                request_id: optional[13],
                duration_us: integers[(case / 5) % 5],
                error: optional[14],
                metadata: metadata[case % metadata.len()],
            };
            assert!(columns.canonical_bytes_by_serde(&mut serde));
            assert!(columns.canonical_bytes(&mut ours));
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde),
                "case {case}"
            );
            // Metadata that is not one JSON value, or has white space around it, is refused by
            // both.
            for bad in ["", " {}", "{} ", "{", "nope", "{}{}"]
                .into_iter()
                .take(case % 7)
            {
                let columns = StoredColumns {
                    metadata: bad,
                    ..columns
                };
                assert!(!columns.canonical_bytes(&mut ours), "{bad:?}");
                assert!(!columns.canonical_bytes_by_serde(&mut serde), "{bad:?}");
            }
        }
    }

    #[test]
    fn canonical_form_is_fixed() {
        let text = String::from_utf8(sample().canonical_bytes()).expect("utf-8");
        assert_eq!(
            text,
            concat!(
                r#"{"action":"user.deleted","actorEmail":null,"actorId":"u1","actorName":null,"#,
                r#""actorSource":null,"actorVerified":false,"createdAt":"2026-01-02T03:04:05.123456Z","#,
                r#""durationUs":1500,"error":null,"id":"01HZY0000000000000000000AA","ip":null,"#,
                r#""logId":"log-a","metadata":{"a":{"b":[1,"x"],"y":true},"z":1},"method":null,"#,
                r#""outcome":"success","path":null,"requestId":null,"resourceId":null,"#,
                r#""resourceType":null,"route":null,"rule":null,"seq":7,"status":204,"#,
                r#""tenant":null,"userAgent":null,"v":1}"#
            )
        );
    }

    #[test]
    fn api_json_uses_reference_names() {
        let json = sample().to_api_json();
        assert_eq!(json["actorId"], "u1");
        assert_eq!(json["durationMs"], 1.5);
        assert_eq!(json["createdAt"], "2026-01-02T03:04:05.123456Z");
        let back: AuditEntry = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, sample());
    }

    #[test]
    fn outcome_follows_status() {
        assert_eq!(Outcome::from_status(204), Outcome::Success);
        assert_eq!(Outcome::from_status(302), Outcome::Success);
        assert_eq!(Outcome::from_status(403), Outcome::Failure);
        assert_eq!(Outcome::from_status(502), Outcome::Error);
    }
}
