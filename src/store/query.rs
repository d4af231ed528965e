//! What a reader asks the store for: filters, paging, and the parsing of admin and CLI query
//! parameters into them.
//!
//! Nothing here knows SQL. Each store dialect turns a [`Filter`] and a [`PageRequest`] into its own
//! query (SQLite: `sqlite_rows.rs`), so the admin API, the CLI and every store agree on what a
//! parameter means.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::entry::{parse_timestamp, AuditEntry, Outcome};

/// Entries per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most entries one page may hold, so a single request cannot pull the whole log into memory
/// (exports stream instead).
pub const MAX_LIMIT: u32 = 1000;
/// The longest parameter value accepted. Nothing legitimate comes close, and the bound keeps
/// hostile input out of SQL bind buffers and error messages.
pub const MAX_PARAM_BYTES: usize = 1024;
/// The most `exclude_action_prefix` values one request may give. A handful covers every real
/// use (auditgate's own `audit.` entries, a noisy health check); the bound keeps the SQL small.
pub const MAX_EXCLUDED_PREFIXES: usize = 16;

/// The filter parameters: the conditions of a listing, a count, stats and an export (the admin
/// API's OpenAPI document lists exactly these for each).
pub const FILTER_PARAMS: &[&str] = &[
    "actor",
    "action",
    "action_prefix",
    "exclude_action_prefix",
    "resource_type",
    "resource_id",
    "outcome",
    "status",
    "ip",
    "since",
    "until",
    "q",
    "log_id",
];

/// The paging parameters of a listing.
pub const PAGE_PARAMS: &[&str] = &["limit", "cursor", "order", "count"];

/// Whether [`parse_filter_and_page`] understands the parameter `name`.
pub fn is_known_param(name: &str) -> bool {
    FILTER_PARAMS.contains(&name) || PAGE_PARAMS.contains(&name)
}

/// The parameters that may be given more than once, each occurrence adding a value. Every other
/// parameter given twice is refused, because which of the two was meant cannot be guessed.
pub const REPEATABLE_PARAMS: &[&str] = &["exclude_action_prefix"];

/// Which entries a reader wants. Every condition that is set must hold (they are ANDed); an
/// empty filter matches every entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Matches `actor_id` or `actor_email` exactly, so an admin can paste either.
    pub actor: Option<String>,
    /// The action, exactly.
    pub action: Option<String>,
    /// The start of the action, case-sensitive: `user.` finds `user.deleted` and `user.created`.
    pub action_prefix: Option<String>,
    /// A substring of the action, case-insensitive for ASCII. The reference product's
    /// `GET /api/audit-log?action=` filters this way.
    pub action_contains: Option<String>,
    /// Leaves out every entry whose action starts with any of these, case-sensitive like
    /// `action_prefix`. Its use is hiding auditgate's own `audit.` entries, which heavy use of
    /// the admin API and viewer would otherwise make the bulk of every listing and chart.
    pub exclude_action_prefixes: Vec<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub status: Option<StatusFilter>,
    pub ip: Option<IpFilter>,
    /// Entries created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries created before this time, so consecutive windows never overlap.
    pub until: Option<DateTime<Utc>>,
    /// Free text: a case-insensitive substring of the actor id or email, action, resource type,
    /// resource id or path.
    pub q: Option<String>,
    /// One log, when several sidecars share a database.
    pub log_id: Option<String>,
}

/// A response status, exactly (`404`) or by class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// The hundreds digit, 1 to 5.
    Class(u8),
}

impl StatusFilter {
    /// The statuses matched, as a half-open range `[low, high)`, which is how every store
    /// compares them.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusFilter::Exact(status) => (status, status.saturating_add(1)),
            StatusFilter::Class(class) => {
                let low = u16::from(class) * 100;
                (low, low + 100)
            }
        }
    }

    pub fn matches(self, status: u16) -> bool {
        let (low, high) = self.range();
        (low..high).contains(&status)
    }
}

impl FromStr for StatusFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<StatusFilter, String> {
        let expected = || format!("{} is not a status (404) or a class (4xx)", quoted(text));
        let bytes = text.as_bytes();
        if bytes.len() != 3 {
            return Err(expected());
        }
        if bytes[1..].eq_ignore_ascii_case(b"xx") {
            return match bytes[0] {
                digit @ b'1'..=b'5' => Ok(StatusFilter::Class(digit - b'0')),
                _ => Err(expected()),
            };
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(expected());
        }
        match text.parse::<u16>() {
            Ok(status) if (100..=599).contains(&status) => Ok(StatusFilter::Exact(status)),
            _ => Err(format!("{} is outside 100 to 599", quoted(text))),
        }
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusFilter::Exact(status) => write!(formatter, "{status}"),
            StatusFilter::Class(class) => write!(formatter, "{class}xx"),
        }
    }
}

/// A client address, exactly or by network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFilter {
    /// Compared with the stored text in its canonical form (`IpAddr`'s `Display`), so
    /// `2001:DB8::1` finds `2001:db8::1`.
    Exact(IpAddr),
    /// Every address inside the network. An IPv4 network does not match IPv4-mapped IPv6
    /// addresses (`::ffff:10.0.0.1`); the sidecar stores IPv4 clients in dotted form.
    Network(IpNet),
}

impl IpFilter {
    pub fn matches(self, ip: IpAddr) -> bool {
        match self {
            IpFilter::Exact(address) => address == ip,
            IpFilter::Network(network) => network.contains(&ip),
        }
    }
}

impl FromStr for IpFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<IpFilter, String> {
        if text.contains('/') {
            text.parse::<IpNet>()
                .map(|network| IpFilter::Network(network.trunc()))
                .map_err(|_| format!("{} is not a CIDR network", quoted(text)))
        } else {
            text.parse::<IpAddr>()
                .map(IpFilter::Exact)
                .map_err(|_| format!("{} is not an IP address or CIDR network", quoted(text)))
        }
    }
}

impl fmt::Display for IpFilter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpFilter::Exact(address) => write!(formatter, "{address}"),
            IpFilter::Network(network) => write!(formatter, "{network}"),
        }
    }
}

/// Direction of a listing, by sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest first: what an admin looking at recent activity wants.
    #[default]
    Desc,
    /// Oldest first: for reading the log forward, or walking back towards newer entries.
    Asc,
}

impl Order {
    pub fn reversed(self) -> Order {
        match self {
            Order::Desc => Order::Asc,
            Order::Asc => Order::Desc,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Order::Desc => "desc",
            Order::Asc => "asc",
        }
    }
}

/// A position in a store's listing order for keyset paging: just past the last entry a page
/// returned.
///
/// SQLite holds one log per file and lists by sequence number; PostgreSQL holds many logs and
/// lists by `gid`, a database-wide increasing number. The two are different spaces, so each
/// cursor says which it belongs to and a store refuses the other kind instead of misreading it.
///
/// Clients see it as URL-safe base64 (no padding) of `v1:<seq>` (SQLite) or `g1:<gid>`
/// (PostgreSQL). The prefix lets the form change later without old cursors being misread, and
/// keeping it opaque stops clients from building cursors that the next version would not honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    position: u64,
    kind: CursorKind,
}

/// Which listing order a [`Cursor`] is a position in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    /// A sequence number of the one log of a SQLite file.
    Seq,
    /// A `gid` of a PostgreSQL store shared by many logs.
    Global,
}

impl CursorKind {
    fn prefix(self) -> &'static str {
        match self {
            CursorKind::Seq => "v1:",
            CursorKind::Global => "g1:",
        }
    }
}

/// Why a cursor was refused. Deliberately vague towards clients: a cursor is only ever one the
/// server handed out, so any other text is a client bug or a probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor returned by this server")]
pub struct CursorError;

/// `v1:` and the 20 digits of `u64::MAX`, base64-encoded, with room to spare.
const MAX_CURSOR_LEN: usize = 64;

impl Cursor {
    /// The cursor just past the entry with this sequence number (SQLite).
    pub fn after_seq(seq: u64) -> Cursor {
        Cursor {
            position: seq,
            kind: CursorKind::Seq,
        }
    }

    /// The cursor just past the entry with this `gid` (PostgreSQL).
    pub fn after_global(gid: u64) -> Cursor {
        Cursor {
            position: gid,
            kind: CursorKind::Global,
        }
    }

    /// The position: a sequence number or a `gid`, as [`Cursor::kind`] says.
    pub fn seq(self) -> u64 {
        self.position
    }

    pub fn kind(self) -> CursorKind {
        self.kind
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}", self.kind.prefix(), self.position))
    }

    /// Accepts exactly the text [`Cursor::encode`] produces: no padding, no other alphabet, no
    /// leading zeros or sign, so every position has one spelling.
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.is_empty() || text.len() > MAX_CURSOR_LEN {
            return Err(CursorError);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| CursorError)?;
        let plain = std::str::from_utf8(&bytes).map_err(|_| CursorError)?;
        let (kind, digits) = [CursorKind::Seq, CursorKind::Global]
            .into_iter()
            .find_map(|kind| Some((kind, plain.strip_prefix(kind.prefix())?)))
            .ok_or(CursorError)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(CursorError);
        }
        let position = digits.parse::<u64>().map_err(|_| CursorError)?;
        let cursor = Cursor { position, kind };
        // Base64 has several encodings of some byte strings (unused trailing bits); insist on
        // the one we hand out.
        if cursor.encode() != text {
            return Err(CursorError);
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.encode())
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Cursor, CursorError> {
        Cursor::decode(text)
    }
}

impl Serialize for Cursor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

/// Which page of the matching entries to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Entries per page, 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// Continue after this position; `None` starts at the newest (desc) or oldest (asc) entry.
    pub cursor: Option<Cursor>,
    pub order: Order,
    /// Also count every matching entry. Off by default because counting costs a pass over all
    /// matches, where a page only reads `limit` of them.
    pub count: bool,
    /// Only entries at or before this position, whatever the order: how an export keeps to the
    /// log as it was when it began (see [`crate::export::ExportReader`]).
    pub through: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> PageRequest {
        PageRequest {
            limit: DEFAULT_LIMIT,
            cursor: None,
            order: Order::Desc,
            count: false,
            through: None,
        }
    }
}

/// One bad query parameter and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> ParamError {
        ParamError {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// Parses admin API or CLI parameters (query-string pairs, in order) into a filter and a page.
///
/// Parameters named in `extra_allowed` (such as `format` for an export) are left to the caller
/// and skipped here. Any other parameter this function does not know is an error, so a typo such
/// as `acton=` fails loudly instead of silently returning the whole log. Every bad parameter is
/// reported, not just the first, so a user fixes a request in one round.
pub fn parse_filter_and_page(
    params: &[(String, String)],
    now: DateTime<Utc>,
    extra_allowed: &[&str],
) -> Result<(Filter, PageRequest), Vec<ParamError>> {
    let mut filter = Filter::default();
    let mut page = PageRequest::default();
    let mut errors = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut reported: HashSet<&str> = HashSet::new();

    for (name, value) in params {
        let name = name.as_str();
        if extra_allowed.contains(&name) {
            continue;
        }
        if !is_known_param(name) {
            if reported.insert(name) {
                let expected: Vec<&str> = FILTER_PARAMS
                    .iter()
                    .chain(PAGE_PARAMS)
                    .chain(extra_allowed)
                    .copied()
                    .collect();
                errors.push(ParamError::new(
                    shorten(name),
                    format!("unknown parameter; expected one of {}", expected.join(", ")),
                ));
            }
            continue;
        }
        if !seen.insert(name) && !REPEATABLE_PARAMS.contains(&name) {
            if reported.insert(name) {
                errors.push(ParamError::new(name, "given more than once"));
            }
            continue;
        }
        if value.is_empty() {
            errors.push(ParamError::new(name, "must not be empty"));
            continue;
        }
        if value.len() > MAX_PARAM_BYTES {
            errors.push(ParamError::new(
                name,
                format!("is longer than {MAX_PARAM_BYTES} bytes"),
            ));
            continue;
        }
        if let Err(message) = apply_param(&mut filter, &mut page, name, value, now) {
            errors.push(ParamError::new(name, message));
        }
    }

    if filter.exclude_action_prefixes.len() > MAX_EXCLUDED_PREFIXES {
        errors.push(ParamError::new(
            "exclude_action_prefix",
            format!("more than {MAX_EXCLUDED_PREFIXES} distinct prefixes given"),
        ));
    }

    if let (Some(since), Some(until)) = (filter.since, filter.until) {
        if since > until {
            errors.push(ParamError::new("since", "must not be later than until"));
        }
    }

    if errors.is_empty() {
        Ok((filter, page))
    } else {
        Err(errors)
    }
}

/// Sets the one field `name` stands for; the value is known to be non-empty and bounded.
fn apply_param(
    filter: &mut Filter,
    page: &mut PageRequest,
    name: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let text = || Some(value.to_string());
    match name {
        "actor" => filter.actor = text(),
        "action" => filter.action = text(),
        "action_prefix" => filter.action_prefix = text(),
        // Counted against MAX_EXCLUDED_PREFIXES once every value is in, so an excess is
        // reported once.
        "exclude_action_prefix" => {
            let known = filter
                .exclude_action_prefixes
                .iter()
                .any(|known| known == value);
            if !known && filter.exclude_action_prefixes.len() <= MAX_EXCLUDED_PREFIXES {
                filter.exclude_action_prefixes.push(value.to_string());
            }
        }
        "resource_type" => filter.resource_type = text(),
        "resource_id" => filter.resource_id = text(),
        "q" => filter.q = text(),
        "log_id" => filter.log_id = text(),
        "outcome" => {
            let outcome = Outcome::parse(value).ok_or_else(|| {
                format!(
                    "{} is not one of success, failure, error, unknown",
                    quoted(value)
                )
            })?;
            filter.outcome = Some(outcome);
        }
        "status" => filter.status = Some(value.parse()?),
        "ip" => filter.ip = Some(value.parse()?),
        "since" => filter.since = Some(parse_time_bound(value, now)?),
        "until" => filter.until = Some(parse_time_bound(value, now)?),
        "limit" => page.limit = parse_limit(value)?,
        "cursor" => page.cursor = Some(Cursor::decode(value).map_err(|error| error.to_string())?),
        "order" => {
            page.order = match value {
                "desc" => Order::Desc,
                "asc" => Order::Asc,
                _ => return Err(format!("{} is not asc or desc", quoted(value))),
            }
        }
        "count" => {
            page.count = match value {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(format!("{} is not true or false", quoted(value))),
            }
        }
        _ => return Err("unknown parameter".to_string()),
    }
    Ok(())
}

fn parse_limit(value: &str) -> Result<u32, String> {
    let out_of_range = || format!("must be a whole number from 1 to {MAX_LIMIT}");
    if !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(out_of_range());
    }
    match value.parse::<u32>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(out_of_range()),
    }
}

/// Parses a `since`/`until` value: an RFC 3339 time, a date (`2026-01-01`, meaning UTC
/// midnight), or a duration back from `now` (`15m`, `24h`, `7d`, `2w`; also `30s`).
///
/// Relative forms are what people type when investigating ("the last day"), dates are what
/// auditors are asked for, and RFC 3339 is what scripts produce.
pub fn parse_time_bound(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Some(time) = parse_timestamp(text) {
        return Ok(time);
    }
    if let Some(date) = parse_date(text) {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Some(duration) = parse_relative_duration(text) {
        return now
            .checked_sub_signed(duration)
            .ok_or_else(|| format!("{} reaches too far into the past", quoted(text)));
    }
    Err(format!(
        "{} is not an RFC 3339 time, a date like 2026-01-01, or a duration like 15m, 24h, 7d, 2w",
        quoted(text)
    ))
}

/// `YYYY-MM-DD` only: chrono's `%Y` alone would also take `+2026` or a one-digit year.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// A whole number followed by one unit letter: `s`, `m`, `h`, `d` or `w`.
pub fn parse_relative_duration(text: &str) -> Option<Duration> {
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..unit_at)?, text.get(unit_at..)?);
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: i64 = digits.parse().ok()?;
    match unit {
        "s" => Duration::try_seconds(amount),
        "m" => Duration::try_minutes(amount),
        "h" => Duration::try_hours(amount),
        "d" => Duration::try_days(amount),
        "w" => Duration::try_weeks(amount),
        _ => None,
    }
}

/// A user value for an error message: quoted with control characters escaped (so it cannot
/// forge log lines or terminal output), and cut short.
fn quoted(text: &str) -> String {
    format!("{:?}", shorten(text))
}

fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

/// The key under which `entry_from_row` keeps metadata text that is not a JSON object.
pub const UNPARSED_METADATA_KEY: &str = "_unparsed";

/// The smallest string greater than every string that starts with `prefix`, under SQLite's
/// binary collation (UTF-8 byte order, which is code point order): the prefix with its last
/// character replaced by the next one. `None` when no such string exists (an empty prefix, or one
/// made only of `char::MAX`), in which case the lower bound alone is exact.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut characters: Vec<char> = prefix.chars().collect();
    while let Some(last) = characters.pop() {
        let mut next = u32::from(last) + 1;
        if next == 0xD800 {
            next = 0xE000; // skip the surrogate gap, which holds no chars
        }
        if let Some(next) = char::from_u32(next) {
            characters.push(next);
            return Some(characters.into_iter().collect());
        }
    }
    None
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entries: Vec<AuditEntry>,
    /// Present when more entries follow in the requested order; pass it back to continue.
    pub next_cursor: Option<Cursor>,
    /// The position of the first entry of this page, for walking the other way (reverse the
    /// order and pass this cursor). Present whenever the page is not empty: on a newest-first
    /// first page it is how a viewer polls for entries written since.
    pub prev_cursor: Option<Cursor>,
    /// How many entries match the filter across all pages, when asked for.
    pub total: Option<u64>,
}

/// What `Store::stats` groups entries by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsBy {
    Action,
    /// The actor's email, else their id, else `(anonymous)`: the name an admin recognises.
    Actor,
    /// UTC day, `2026-11-26`.
    Day,
    /// UTC hour, `2026-11-26T13`.
    Hour,
    Outcome,
}

/// The key a [`Bucket`] has for entries without an actor.
pub const ANONYMOUS_ACTOR: &str = "(anonymous)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stats grouping {0:?}; expected action, actor, day, hour or outcome")]
pub struct UnknownStatsBy(pub String);

impl std::str::FromStr for StatsBy {
    type Err = UnknownStatsBy;

    fn from_str(text: &str) -> Result<StatsBy, UnknownStatsBy> {
        match text {
            "action" => Ok(StatsBy::Action),
            "actor" => Ok(StatsBy::Actor),
            "day" => Ok(StatsBy::Day),
            "hour" => Ok(StatsBy::Hour),
            "outcome" => Ok(StatsBy::Outcome),
            _ => Err(UnknownStatsBy(text.chars().take(64).collect())),
        }
    }
}

impl StatsBy {
    pub fn as_str(self) -> &'static str {
        match self {
            StatsBy::Action => "action",
            StatsBy::Actor => "actor",
            StatsBy::Day => "day",
            StatsBy::Hour => "hour",
            StatsBy::Outcome => "outcome",
        }
    }

    /// Whether the buckets are time windows (day, hour).
    pub fn is_time(self) -> bool {
        matches!(self, StatsBy::Day | StatsBy::Hour)
    }
}

/// How many matching entries share one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub key: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 10, 15, 0)
            .single()
            .expect("valid time")
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn parse(items: &[(&str, &str)]) -> Result<(Filter, PageRequest), Vec<ParamError>> {
        parse_filter_and_page(&pairs(items), now(), &[])
    }

    fn errors_for(items: &[(&str, &str)]) -> Vec<ParamError> {
        match parse(items) {
            Ok(parsed) => panic!("expected errors, got {parsed:?}"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn no_parameters_give_the_defaults() {
        let (filter, page) = parse(&[]).expect("valid");
        assert_eq!(filter, Filter::default());
        assert_eq!(page.limit, 50);
        assert_eq!(page.order, Order::Desc);
        assert_eq!(page.cursor, None);
        assert!(!page.count);
    }

    #[test]
    fn every_parameter_is_parsed() {
        let cursor = Cursor::after_seq(1234).encode();
        let (filter, page) = parse(&[
            ("actor", "alice@example.com"),
            ("action", "user.deleted"),
            ("action_prefix", "user."),
            ("exclude_action_prefix", "audit."),
            ("resource_type", "user"),
            ("resource_id", "42"),
            ("outcome", "failure"),
            ("status", "4xx"),
            ("ip", "10.0.0.0/8"),
            ("since", "2026-01-01"),
            ("until", "2026-02-01T12:00:00+01:00"),
            ("q", "Bob"),
            ("log_id", "log-a"),
            ("limit", "1000"),
            ("cursor", &cursor),
            ("order", "asc"),
            ("count", "true"),
        ])
        .expect("valid");
        assert_eq!(filter.actor.as_deref(), Some("alice@example.com"));
        assert_eq!(filter.action.as_deref(), Some("user.deleted"));
        assert_eq!(filter.action_prefix.as_deref(), Some("user."));
        assert_eq!(filter.exclude_action_prefixes, ["audit."]);
        assert_eq!(filter.resource_type.as_deref(), Some("user"));
        assert_eq!(filter.resource_id.as_deref(), Some("42"));
        assert_eq!(filter.outcome, Some(Outcome::Failure));
        assert_eq!(filter.status, Some(StatusFilter::Class(4)));
        assert_eq!(
            filter.ip,
            Some(IpFilter::Network("10.0.0.0/8".parse().expect("net")))
        );
        assert_eq!(
            filter.since,
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            filter.until,
            Some(Utc.with_ymd_and_hms(2026, 2, 1, 11, 0, 0).unwrap())
        );
        assert_eq!(filter.q.as_deref(), Some("Bob"));
        assert_eq!(filter.log_id.as_deref(), Some("log-a"));
        assert_eq!(filter.action_contains, None);
        assert_eq!(page.limit, 1000);
        assert_eq!(page.cursor, Some(Cursor::after_seq(1234)));
        assert_eq!(page.order, Order::Asc);
        assert!(page.count);
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let cases = [
            ("30s", Duration::seconds(30)),
            ("15m", Duration::minutes(15)),
            ("24h", Duration::hours(24)),
            ("7d", Duration::days(7)),
            ("2w", Duration::weeks(2)),
            ("0m", Duration::zero()),
        ];
        for (text, back) in cases {
            assert_eq!(parse_time_bound(text, now()), Ok(now() - back), "{text}");
        }
    }

    #[test]
    fn bad_times_are_refused() {
        for text in [
            "yesterday",
            "7",
            "d",
            "7D",
            "-7d",
            "+7d",
            "7 d",
            "1.5h",
            "7y",
            "2026-13-01",
            "2026-02-30",
            "2026-1-1",
            "+2026-01-01",
            "2026-01-01T00:00:00",
            "9999999999w",
            "999999999w",
        ] {
            assert!(
                parse_time_bound(text, now()).is_err(),
                "{text} was accepted"
            );
        }
    }

    #[test]
    fn status_accepts_codes_and_classes() {
        assert_eq!("404".parse(), Ok(StatusFilter::Exact(404)));
        assert_eq!("100".parse(), Ok(StatusFilter::Exact(100)));
        assert_eq!("599".parse(), Ok(StatusFilter::Exact(599)));
        assert_eq!("2xx".parse(), Ok(StatusFilter::Class(2)));
        assert_eq!("5XX".parse(), Ok(StatusFilter::Class(5)));
        for bad in [
            "6xx", "0xx", "x04", "40x", "4x", "099", "600", "+40", " 404", "4040", "", "４04",
        ] {
            assert!(bad.parse::<StatusFilter>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(StatusFilter::Class(4).range(), (400, 500));
        assert_eq!(StatusFilter::Exact(404).range(), (404, 405));
        assert!(StatusFilter::Class(4).matches(499));
        assert!(!StatusFilter::Class(4).matches(500));
    }

    #[test]
    fn ip_accepts_addresses_and_networks() {
        assert_eq!(
            "2001:DB8::1".parse::<IpFilter>().map(|ip| ip.to_string()),
            Ok("2001:db8::1".to_string())
        );
        let network: IpFilter = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(network.to_string(), "10.0.0.0/8", "host bits are dropped");
        assert!(network.matches("10.200.0.1".parse().expect("ip")));
        assert!(!network.matches("11.0.0.1".parse().expect("ip")));
        let v6: IpFilter = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.matches("2001:db8:ffff::1".parse().expect("ip")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.256",
            "2001:db8::/129",
            "10.0.0.0/",
            "/8",
            "localhost",
            "10.0.0.1:80",
        ] {
            assert!(bad.parse::<IpFilter>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cursor_round_trips_and_rejects_everything_else() {
        for seq in [0, 1, 42, 1_000_000, u64::MAX] {
            let text = Cursor::after_seq(seq).encode();
            assert!(
                text.bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
                "{text} is not URL-safe"
            );
            assert_eq!(Cursor::decode(&text), Ok(Cursor::after_seq(seq)));
        }
        let encode = |plain: &str| URL_SAFE_NO_PAD.encode(plain);
        let padded = base64::engine::general_purpose::URL_SAFE.encode("v1:42");
        assert!(padded.ends_with('='));
        for bad in [
            String::new(),
            "42".to_string(),
            "!!!!".to_string(),
            padded,
            encode("v2:42"),
            encode("v1:"),
            encode("v1:042"),
            encode("v1:+42"),
            encode("v1:-1"),
            encode("v1:42 "),
            encode("v1:18446744073709551616"),
            encode("V1:42"),
            "A".repeat(65),
        ] {
            assert_eq!(
                Cursor::decode(&bad),
                Err(CursorError),
                "{bad:?} was accepted"
            );
        }
        // Same bytes, different unused trailing bits: only our own spelling is accepted.
        let good = Cursor::after_seq(7).encode();
        let last = good.chars().last().expect("non-empty");
        let mut twisted = good[..good.len() - 1].to_string();
        twisted.push(if last == 'w' { 'x' } else { 'w' });
        assert_eq!(Cursor::decode(&twisted), Err(CursorError));
    }

    #[test]
    fn global_cursors_are_their_own_kind() {
        let global = Cursor::after_global(42);
        let text = global.encode();
        assert_ne!(text, Cursor::after_seq(42).encode());
        let decoded = Cursor::decode(&text).expect("decodes");
        assert_eq!(decoded, global);
        assert_eq!(decoded.kind(), CursorKind::Global);
        assert_eq!(decoded.seq(), 42);
        for bad in ["g1:", "g1:01", "g2:5", "G1:5", "g1:-5"] {
            assert_eq!(
                Cursor::decode(&URL_SAFE_NO_PAD.encode(bad)),
                Err(CursorError),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursor_serializes_as_its_opaque_text() {
        let json = serde_json::to_value(Cursor::after_seq(9)).expect("serialize");
        assert_eq!(json, serde_json::json!(Cursor::after_seq(9).encode()));
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        let errors = errors_for(&[
            ("acton", "user.deleted"),
            ("actor", ""),
            ("limit", "0"),
            ("outcome", "ok"),
            ("ip", "10.0.0.0/40"),
            ("cursor", "bogus"),
            ("status", "7xx"),
            ("since", "last tuesday"),
            ("order", "newest"),
            ("count", "yes"),
            ("q", &"x".repeat(1025)),
        ]);
        let params: Vec<&str> = errors.iter().map(|error| error.param.as_str()).collect();
        assert_eq!(
            params,
            [
                "acton", "actor", "limit", "outcome", "ip", "cursor", "status", "since", "order",
                "count", "q"
            ]
        );
        assert!(errors[0].message.contains("unknown parameter"));
        assert_eq!(errors[1].message, "must not be empty");
        assert!(errors[2].message.contains("1 to 1000"));
        assert!(errors[3].message.contains("\"ok\""));
        assert!(errors[10].message.contains("1024 bytes"));
        assert_eq!(errors[1].to_string(), "actor: must not be empty");
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse(&[("limit", "1")]).expect("valid").1.limit, 1);
        assert_eq!(parse(&[("limit", "1000")]).expect("valid").1.limit, 1000);
        for bad in [
            "0",
            "1001",
            "-1",
            "+5",
            "5.0",
            "ten",
            "99999999999999999999",
        ] {
            assert_eq!(errors_for(&[("limit", bad)])[0].param, "limit", "{bad}");
        }
    }

    #[test]
    fn a_value_of_exactly_the_maximum_length_is_accepted() {
        let value = "a".repeat(MAX_PARAM_BYTES);
        let (filter, _) = parse(&[("q", &value)]).expect("valid");
        assert_eq!(filter.q, Some(value));
    }

    #[test]
    fn duplicates_are_reported_once() {
        let errors = errors_for(&[("action", "a"), ("action", "b"), ("action", "c")]);
        assert_eq!(
            errors,
            vec![ParamError::new("action", "given more than once")]
        );
    }

    #[test]
    fn excluded_prefixes_repeat_literally_and_are_bounded() {
        let (filter, _) = parse(&[
            ("exclude_action_prefix", "audit."),
            ("action", "x"),
            ("exclude_action_prefix", "http.get,http.head"),
            ("exclude_action_prefix", "audit."),
        ])
        .expect("valid");
        assert_eq!(
            filter.exclude_action_prefixes,
            ["audit.", "http.get,http.head"],
            "in order, duplicates dropped, commas kept as text"
        );
        let errors = errors_for(&[
            ("exclude_action_prefix", "audit."),
            ("exclude_action_prefix", ""),
            ("exclude_action_prefix", &"x".repeat(MAX_PARAM_BYTES + 1)),
        ]);
        assert_eq!(
            errors,
            vec![
                ParamError::new("exclude_action_prefix", "must not be empty"),
                ParamError::new("exclude_action_prefix", "is longer than 1024 bytes"),
            ]
        );
        let many: Vec<(String, String)> = (0..=MAX_EXCLUDED_PREFIXES + 5)
            .map(|index| ("exclude_action_prefix".to_string(), format!("p{index}.")))
            .collect();
        let errors = parse_filter_and_page(&many, now(), &[]).expect_err("too many");
        assert_eq!(
            errors,
            vec![ParamError::new(
                "exclude_action_prefix",
                "more than 16 distinct prefixes given"
            )],
            "reported once"
        );
        let exactly: Vec<(String, String)> = many[..MAX_EXCLUDED_PREFIXES].to_vec();
        let (filter, _) = parse_filter_and_page(&exactly, now(), &[]).expect("at the bound");
        assert_eq!(filter.exclude_action_prefixes.len(), MAX_EXCLUDED_PREFIXES);
    }

    #[test]
    fn since_after_until_is_refused() {
        let errors = errors_for(&[("since", "2026-02-01"), ("until", "2026-01-01")]);
        assert_eq!(
            errors,
            vec![ParamError::new("since", "must not be later than until")]
        );
        assert!(parse(&[("since", "2026-01-01"), ("until", "2026-01-01")]).is_ok());
        assert!(parse(&[("since", "7d"), ("until", "1d")]).is_ok());
    }

    #[test]
    fn caller_allowed_parameters_are_skipped() {
        let params = pairs(&[("format", "csv"), ("action", "user.deleted")]);
        let (filter, _) = parse_filter_and_page(&params, now(), &["format"]).expect("valid");
        assert_eq!(filter.action.as_deref(), Some("user.deleted"));
        let errors = parse_filter_and_page(&params, now(), &[]).expect_err("format unknown");
        assert_eq!(errors[0].param, "format");
    }

    #[test]
    fn hostile_names_and_values_are_shortened_and_escaped_in_messages() {
        let long_name = "n".repeat(5000);
        let errors = errors_for(&[(&long_name, "1"), ("outcome", "\u{1b}[31mred\n")]);
        assert!(errors[0].param.chars().count() <= 65);
        assert!(!errors[1].message.contains('\u{1b}'));
        assert!(!errors[1].message.contains('\n'));
        let errors = errors_for(&[("status", &"9".repeat(1000))]);
        assert!(errors[0].message.len() < 200);
    }
}
