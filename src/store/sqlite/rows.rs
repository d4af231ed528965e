//! Reading entries back out of SQLite: rows to [`AuditEntry`], filters to SQL, keyset pages,
//! counts and stats.
//!
//! Every value a user supplies reaches SQLite as a bound parameter; the SQL text is assembled only
//! from fixed fragments chosen by which filter fields are set.
//!
//! Listings are shaped so that SQLite answers each filter from an index of `schema_v1.sql`, and a
//! page costs about its own size however deep into the log it is:
//! - every secondary index implicitly ends in `seq` (the rowid), so an equality filter plus
//!   `ORDER BY seq` and the keyset condition `seq < ?` is one index range walked in order;
//! - the five indexes on columns with many values (actor id, actor email, resource, resource id,
//!   address) lead with the generation, `seq >> 20` (`schema_v8.sql`), so that a seal inserts
//!   only into their newest part: an equality there reads one such range per generation, newest
//!   first ([`GENERATIONS`] and [`generation_order`]), still in `seq` order without a sort;
//! - the actor filter (id OR email) takes one page from each of the two indexes and merges them;
//! - a range filter (time window, prefix, status class, network) is counted on its index first:
//!   a narrow one is read through its index as sequence numbers alone, sorted, and only the page's
//!   rows are fetched; a wide one walks a bounded window of the log in `seq` order and reads the
//!   rest of the page, if any, through its index (see [`RangePlan`]). Left to itself SQLite either
//!   sorts every match of a wide range or walks the whole log for matches that are not there;
//! - free text is one Rust function call per row ([`CONTAINS_FUNCTION`]), not six LIKEs, and so
//!   is the reference endpoint's action substring;
//! - day and hour stats of a time window count one index range per bucket instead of grouping.
//!
//! Every connection that runs these queries needs [`register_functions`] first.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, DurationRound, Utc};
use ipnet::IpNet;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Type, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row};
use serde_json::Map;

use crate::entry::{format_timestamp, parse_timestamp, AuditEntry, Outcome, StoredRow};
use crate::log::pruned::PRUNED_ACTION;
use crate::store::query::{
    prefix_upper_bound, Bucket, Cursor, Filter, IpFilter, Order, Page, PageRequest, StatsBy,
    MAX_LIMIT, UNPARSED_METADATA_KEY,
};

/// The columns of `entries` in schema order; [`entry_from_row`] reads them by position.
pub const ENTRY_COLUMNS: &str = "seq, id, log_id, created_at, actor_id, actor_email, actor_name, \
     actor_source, actor_verified, tenant, action, resource_type, resource_id, outcome, status, \
     method, path, route, rule, ip, user_agent, request_id, duration_us, error, metadata";

/// How many columns [`ENTRY_COLUMNS`] names.
const ENTRY_COLUMN_COUNT: usize = 25;

/// The table of entries appended but not sealed yet. Appends go there alone, in `seq` order and
/// without secondary indexes, which is what keeps a commit cheap at any log size; the store
/// moves them into `entries`, whose indexes answer every filter, in large batches off the commit
/// (see `SqliteStore::seal`). Its entries always follow every entry of `entries`, so a listing
/// reads one table after the other, and a filter reads `recent` by walking it: it holds seconds
/// of traffic.
pub const RECENT: &str = "recent";

/// The SQL function behind the CIDR filter: `auditgate_ip_in(ip_text, cidr_text)` is 1 when the
/// address is inside the network, 0 otherwise (also for NULL or unparsable addresses).
pub const IP_IN_FUNCTION: &str = "auditgate_ip_in";

/// The SQL function behind the free-text filter: `auditgate_contains(needle, text, ...)` is 1 when
/// any of the texts contains the needle, comparing ASCII letters without case, and 0 otherwise
/// (NULL and blobs contain nothing). It means what `text LIKE '%needle%' ESCAPE '\'` means for
/// each text, OR-ed, but costs one call per row instead of one LIKE per column. Free text is a
/// scan of the whole log when little matches; over a million entries this took it from about
/// 230 ms to 185 ms, of which about 90 ms is reading the rows at all.
pub const CONTAINS_FUNCTION: &str = "auditgate_contains";

/// Why a stored value could not become part of an [`AuditEntry`].
#[derive(Debug, thiserror::Error)]
enum ColumnError {
    #[error("timestamp is not RFC 3339: {0:?}")]
    Timestamp(String),
    #[error("unknown outcome {0:?}")]
    Outcome(String),
}

/// The second argument of `auditgate_ip_in` was not a network.
#[derive(Debug, thiserror::Error)]
#[error("auditgate_ip_in: second argument is not a CIDR network")]
struct NotANetwork;

/// The first argument of `auditgate_contains` was not text.
#[derive(Debug, thiserror::Error)]
#[error("auditgate_contains: first argument is not text")]
struct NotANeedle;

/// Registers the SQL functions the queries of this module rely on. Call it on every connection
/// that will run [`list`], [`count`] or [`stats`] with an IP network or free-text filter; SQLite
/// functions belong to one connection, so a pool must call it per connection.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        CONTAINS_FUNCTION,
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |context| {
            // The needle is the same for every row of a statement: fold it once.
            let needle: Arc<Vec<u8>> = context.get_or_create_aux(0, |value| match value {
                ValueRef::Text(text) => Ok(text.to_ascii_lowercase()),
                _ => Err(NotANeedle),
            })?;
            // The columns searched have TEXT affinity, so they hold text, NULL or (never written
            // by auditgate) blobs; LIKE matches no blob in this build
            // (SQLITE_LIKE_DOESNT_MATCH_BLOBS), and neither does this.
            let found = (1..context.len()).any(|index| match context.get_raw(index) {
                ValueRef::Text(text) => contains_ignoring_ascii_case(text, &needle),
                _ => false,
            });
            Ok(found)
        },
    )?;
    conn.create_scalar_function(
        IP_IN_FUNCTION,
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |context| {
            // The network is the same for every row of a statement: parse it once and let
            // SQLite keep it with the statement.
            let network: Arc<IpNet> = context.get_or_create_aux(1, |value| match value {
                ValueRef::Text(text) => std::str::from_utf8(text)
                    .ok()
                    .and_then(|text| text.parse::<IpNet>().ok())
                    .ok_or(NotANetwork),
                _ => Err(NotANetwork),
            })?;
            let inside = match context.get_raw(0) {
                ValueRef::Text(text) => std::str::from_utf8(text)
                    .ok()
                    .and_then(|text| text.parse::<IpAddr>().ok())
                    .is_some_and(|ip| network.contains(&ip)),
                _ => false,
            };
            Ok(inside)
        },
    )
}

/// Whether `haystack` contains `lower_needle` (already ASCII-lowercase), folding ASCII letters of
/// the haystack: the matching of LIKE without case in SQLite, which folds nothing else.
fn contains_ignoring_ascii_case(haystack: &[u8], lower_needle: &[u8]) -> bool {
    let Some((&first, rest)) = lower_needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(lower_needle.len()) else {
        return false;
    };
    haystack[..=last_start]
        .iter()
        .enumerate()
        .any(|(start, byte)| {
            byte.to_ascii_lowercase() == first
                && haystack[start + 1..start + lower_needle.len()].eq_ignore_ascii_case(rest)
        })
}

/// Builds an entry from a row selected with [`ENTRY_COLUMNS`].
///
/// Metadata that is not a JSON object is kept, as text under `{"_unparsed": ...}`, rather than
/// failing the row: one damaged entry must not make a whole listing or export fail, and the
/// Merkle verification reports the damage. A bad timestamp or outcome is an error, because
/// guessing would show an auditor a value that was never recorded.
pub fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    let created_at_text: String = row.get(3)?;
    let created_at = parse_timestamp(&created_at_text).ok_or_else(|| {
        conversion_error(
            3,
            Type::Text,
            ColumnError::Timestamp(created_at_text.clone()),
        )
    })?;
    let outcome_text: String = row.get(13)?;
    let outcome = Outcome::parse(&outcome_text).ok_or_else(|| {
        conversion_error(13, Type::Text, ColumnError::Outcome(outcome_text.clone()))
    })?;
    Ok(AuditEntry {
        seq: row.get(0)?,
        id: row.get(1)?,
        log_id: row.get(2)?,
        created_at,
        actor_id: row.get(4)?,
        actor_email: row.get(5)?,
        actor_name: row.get(6)?,
        actor_source: row.get(7)?,
        actor_verified: row.get::<_, i64>(8)? != 0,
        tenant: row.get(9)?,
        action: row.get(10)?,
        resource_type: row.get(11)?,
        resource_id: row.get(12)?,
        outcome,
        status: row.get(14)?,
        method: row.get(15)?,
        path: row.get(16)?,
        route: row.get(17)?,
        rule: row.get(18)?,
        ip: row.get(19)?,
        user_agent: row.get(20)?,
        request_id: row.get(21)?,
        duration_us: row.get(22)?,
        error: row.get(23)?,
        metadata: metadata_from_value(row.get_ref(24)?),
    })
}

/// A row selected with [`ENTRY_COLUMNS`], copied into a [`StoredRow`] (whose value order is
/// that of the columns) for `verify`'s hashing; `None` for a row of an `audit.pruned`
/// entry, whose claim `verify` checks, so it comes decoded.
pub fn stored_row(row: &Row<'_>) -> Option<StoredRow> {
    if matches!(row.get_ref(10).ok()?, ValueRef::Text(action) if action == PRUNED_ACTION.as_bytes())
    {
        return None;
    }
    let mut stored = StoredRow::with_capacity(1024);
    for index in 0..ENTRY_COLUMN_COUNT {
        match row.get_ref(index).ok()? {
            ValueRef::Null => stored.push_null(),
            ValueRef::Integer(number) => stored.push_integer(number),
            ValueRef::Text(text) => stored.push_text(text),
            ValueRef::Real(_) | ValueRef::Blob(_) => stored.push_other(),
        }
    }
    Some(stored)
}

/// The values [`stored_row`] reads from the row the store writes for `entry` (`log::append`):
/// what an untouched row of that entry holds.
pub fn stored_row_of(entry: &AuditEntry) -> StoredRow {
    let mut stored = StoredRow::with_capacity(1024);
    let text = |stored: &mut StoredRow, value: &Option<String>| match value {
        Some(value) => stored.push_text(value.as_bytes()),
        None => stored.push_null(),
    };
    stored.push_integer(entry.seq as i64);
    stored.push_text(entry.id.as_bytes());
    stored.push_text(entry.log_id.as_bytes());
    stored.push_text(format_timestamp(&entry.created_at).as_bytes());
    text(&mut stored, &entry.actor_id);
    text(&mut stored, &entry.actor_email);
    text(&mut stored, &entry.actor_name);
    text(&mut stored, &entry.actor_source);
    stored.push_integer(i64::from(entry.actor_verified));
    text(&mut stored, &entry.tenant);
    stored.push_text(entry.action.as_bytes());
    text(&mut stored, &entry.resource_type);
    text(&mut stored, &entry.resource_id);
    stored.push_text(entry.outcome.as_str().as_bytes());
    match entry.status {
        Some(status) => stored.push_integer(i64::from(status)),
        None => stored.push_null(),
    }
    text(&mut stored, &entry.method);
    text(&mut stored, &entry.path);
    text(&mut stored, &entry.route);
    text(&mut stored, &entry.rule);
    text(&mut stored, &entry.ip);
    text(&mut stored, &entry.user_agent);
    text(&mut stored, &entry.request_id);
    match entry.duration_us {
        Some(duration) => stored.push_integer(duration as i64),
        None => stored.push_null(),
    }
    text(&mut stored, &entry.error);
    let metadata = serde_json::to_string(&entry.metadata).unwrap_or_else(|_| "{}".to_string());
    stored.push_text(metadata.as_bytes());
    stored
}

fn conversion_error(index: usize, kind: Type, error: ColumnError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, kind, Box::new(error))
}

fn metadata_from_value(value: ValueRef<'_>) -> Map<String, serde_json::Value> {
    let raw = match value {
        ValueRef::Null => return Map::new(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => String::from_utf8_lossy(bytes),
        ValueRef::Integer(number) => number.to_string().into(),
        ValueRef::Real(number) => number.to_string().into(),
    };
    match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => {
            let mut kept = Map::new();
            kept.insert(
                UNPARSED_METADATA_KEY.to_string(),
                serde_json::Value::from(raw.into_owned()),
            );
            kept
        }
    }
}

/// The generation of the row's position: the leading column of the five high-cardinality
/// indexes of `entries` (`schema_v8.sql`), each of which holds the positions `g << 20` to
/// `(g + 1) << 20` in one stretch.
pub const GENERATION: &str = "(seq >> 20)";

/// The condition that lets SQLite read a generation-led index of `entries` (`schema_v8.sql`):
/// every generation that holds a sealed row, found from the newest down by one seek each (so a
/// log pruned down to its newest generations, or a row put at a far position by hand, costs no
/// more than its generations with rows). SQLite reads the list in the order the statement asks
/// for, so with [`generation_order`] a page comes out of the index in `seq` order, one short range
/// per generation, and stops when it is full. The list is read in the statement's own snapshot,
/// so no sealed row is left out whatever its position. On a file whose indexes predate the
/// generations it is a plain filter that every row passes.
const GENERATIONS: &str = "(seq >> 20) IN (WITH RECURSIVE generation(g) AS (\
     SELECT (SELECT max(seq) FROM entries) >> 20 \
     UNION ALL SELECT (SELECT max(seq) FROM entries WHERE seq < (g << 20)) >> 20 \
     FROM generation WHERE g > ((SELECT min(seq) FROM entries) >> 20)) \
     SELECT g FROM generation)";

/// `ORDER BY` of a page read through a generation-led index: generation, then position. It
/// means the same order as `seq` alone, but only this form tells SQLite that the index already
/// returns rows in it (given `seq` alone, it sorts every match).
fn generation_order(order: Order) -> String {
    let order = order_sql(order);
    format!("{GENERATION} {order}, seq {order}")
}

/// Which table a set of conditions is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// `entries`: conditions on a column with a generation-led index carry [`GENERATIONS`].
    Sealed,
    /// `recent`, the counts, or the `entries` of a file whose indexes do not lead with the
    /// generation: plain conditions.
    Other,
}

impl Table {
    /// How conditions on `entries` are written for this file: [`Table::Sealed`] once its
    /// indexes lead with the generation (schema version 8). A file of an earlier version, which
    /// the read commands read in place, keeps its one-column indexes, read in `seq` order by the
    /// plain conditions (through them, the generations' order would make SQLite sort every
    /// match).
    fn of_entries(conn: &Connection) -> rusqlite::Result<Table> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        Ok(if version >= super::GENERATION_SCHEMA_VERSION {
            Table::Sealed
        } else {
            Table::Other
        })
    }
}

/// SQL conditions and their bound values, in placeholder order.
struct Conditions {
    table: Table,
    clauses: Vec<String>,
    values: Vec<Value>,
    /// The range conditions among `clauses`, each with the index that serves it.
    ranges: Vec<RangeScan>,
    /// Whether some condition is an equality that an index serves in `seq` order (an action, a
    /// resource, an outcome, an exact status or address), so that walking that index finds a page
    /// without any help.
    has_ordered_equality: bool,
    /// The generation-led index of the first such equality on `entries` (an actor column, a
    /// resource, a resource id, an address): a page read through it asks for
    /// [`generation_order`].
    generation_index: Option<&'static str>,
}

/// Which actor columns the actor filter compares, so a listing can split the OR in two.
#[derive(Debug, Clone, Copy)]
enum ActorColumns {
    Either,
    Id,
    Email,
}

/// A condition whose index yields rows out of `seq` order (a time window, an action prefix, a
/// status class, a network, a resource type without id), and that index. See
/// [`narrow_range_index`] for why they are tracked apart.
struct RangeScan {
    index: &'static str,
    clause: String,
    values: Vec<Value>,
}

impl Conditions {
    fn new(table: Table) -> Conditions {
        Conditions {
            table,
            clauses: Vec::new(),
            values: Vec::new(),
            ranges: Vec::new(),
            has_ordered_equality: false,
            generation_index: None,
        }
    }

    fn push(&mut self, clause: impl Into<String>, values: impl IntoIterator<Item = Value>) {
        self.clauses.push(clause.into());
        self.values.extend(values);
    }

    /// An equality served by an index whose rows come out in `seq` order.
    fn push_ordered_equality(
        &mut self,
        clause: impl Into<String>,
        values: impl IntoIterator<Item = Value>,
    ) {
        self.push(clause, values);
        self.has_ordered_equality = true;
    }

    /// An equality on a column whose index leads with the generation (`schema_v8.sql`): on
    /// `entries` it carries [`GENERATIONS`], so that SQLite can read that index.
    fn push_generation_equality(
        &mut self,
        index: &'static str,
        clause: &str,
        values: impl IntoIterator<Item = Value>,
    ) {
        match self.table {
            Table::Sealed => {
                self.push_ordered_equality(format!("{GENERATIONS} AND {clause}"), values);
                // A resource or an address names fewer entries than an actor, who may have
                // millions: its index reads the page, and the actor is checked on each row.
                let is_actor = |index: &str| index.starts_with("entries_actor");
                if self
                    .generation_index
                    .is_none_or(|current| is_actor(current) && !is_actor(index))
                {
                    self.generation_index = Some(index);
                }
            }
            Table::Other => self.push_ordered_equality(clause, values),
        }
    }

    /// A range on a generation-led index: as [`Conditions::push_range`], with [`GENERATIONS`] on
    /// `entries`.
    fn push_generation_range(&mut self, index: &'static str, clause: &str, values: Vec<Value>) {
        let clause = match self.table {
            Table::Sealed => format!("{GENERATIONS} AND {clause}"),
            Table::Other => clause.to_string(),
        };
        self.push_range(index, clause, values);
    }

    fn push_range(&mut self, index: &'static str, clause: String, values: Vec<Value>) {
        self.push(clause.clone(), values.clone());
        self.ranges.push(RangeScan {
            index,
            clause,
            values,
        });
    }

    fn from_filter(filter: &Filter, table: Table) -> Conditions {
        Conditions::from_filter_matching_actor(filter, ActorColumns::Either, table)
    }

    fn from_filter_matching_actor(
        filter: &Filter,
        actor_columns: ActorColumns,
        table: Table,
    ) -> Conditions {
        let mut conditions = Conditions::new(table);
        if let Some(actor) = &filter.actor {
            match (actor_columns, table) {
                // Two indexed equalities joined by OR: SQLite answers it with both indexes
                // (MULTI-INDEX OR), where one LIKE or coalesce() would scan.
                (ActorColumns::Either, Table::Other) => conditions.push(
                    "(actor_id = ? OR actor_email = ?)",
                    [text(actor), text(actor)],
                ),
                // With a resource or an address too, that one's index finds the rows, and the
                // actor is a check on each.
                (ActorColumns::Either, Table::Sealed) if has_generation_equality(filter) => {
                    conditions.push(
                        "(actor_id = ? OR actor_email = ?)",
                        [text(actor), text(actor)],
                    )
                }
                // SQLite does not read an OR through indexes whose terms carry the generations:
                // the positions of both come from their own index instead.
                (ActorColumns::Either, Table::Sealed) => conditions.push(
                    format!(
                        "seq IN (SELECT seq FROM entries INDEXED BY entries_actor_id \
                         WHERE {GENERATIONS} AND actor_id = ? UNION ALL \
                         SELECT seq FROM entries INDEXED BY entries_actor_email \
                         WHERE {GENERATIONS} AND actor_email = ?)"
                    ),
                    [text(actor), text(actor)],
                ),
                (ActorColumns::Id, _) => conditions.push_generation_equality(
                    "entries_actor_id",
                    "actor_id = ?",
                    [text(actor)],
                ),
                (ActorColumns::Email, _) => conditions.push_generation_equality(
                    "entries_actor_email",
                    "actor_email = ?",
                    [text(actor)],
                ),
            }
        }
        if let Some(action) = &filter.action {
            conditions.push_ordered_equality("action = ?", [text(action)]);
        }
        if let Some(prefix) = &filter.action_prefix {
            // A range rather than LIKE 'prefix%': LIKE is case-insensitive, so SQLite will not
            // use the (binary) action index for it, and a prefix of a dotted action name is
            // case-sensitive anyway.
            match prefix_upper_bound(prefix) {
                Some(upper) => conditions.push_range(
                    "entries_action",
                    "action >= ? AND action < ?".into(),
                    vec![text(prefix), Value::Text(upper)],
                ),
                None => conditions.push_range(
                    "entries_action",
                    "action >= ?".into(),
                    vec![text(prefix)],
                ),
            }
        }
        if let Some(fragment) = &filter.action_contains {
            // The free-text function on one column: what `action LIKE '%fragment%'` means (ASCII
            // case folded, wildcards literal), without building and matching a LIKE pattern.
            conditions.push(format!("{CONTAINS_FUNCTION}(?, action)"), [text(fragment)]);
        }
        for prefix in &filter.exclude_action_prefixes {
            // The complement of the action_prefix range. No index serves a NOT, so this only
            // drops rows while another condition (or the walk in seq order) finds them.
            match prefix_upper_bound(prefix) {
                Some(upper) => conditions.push(
                    "NOT (action >= ? AND action < ?)",
                    [text(prefix), Value::Text(upper)],
                ),
                None => conditions.push("action < ?", [text(prefix)]),
            }
        }
        match (&filter.resource_type, &filter.resource_id) {
            (Some(resource_type), Some(resource_id)) => conditions.push_generation_equality(
                "entries_resource",
                "resource_type = ? AND resource_id = ?",
                [text(resource_type), text(resource_id)],
            ),
            // The type alone is a prefix of the (type, id) index, so its rows come out of the
            // index in id order, not seq order: it is planned like a range.
            (Some(resource_type), None) => conditions.push_generation_range(
                "entries_resource",
                "resource_type = ?",
                vec![text(resource_type)],
            ),
            (None, Some(resource_id)) => conditions.push_generation_equality(
                "entries_resource_id",
                "resource_id = ?",
                [text(resource_id)],
            ),
            (None, None) => {}
        }
        if let Some(outcome) = filter.outcome {
            conditions.push_ordered_equality("outcome = ?", [text(outcome.as_str())]);
        }
        if let Some(status) = filter.status {
            let (low, high) = status.range();
            if high == low + 1 {
                conditions.push_ordered_equality("status = ?", [Value::Integer(i64::from(low))]);
            } else {
                conditions.push_range(
                    "entries_status",
                    "status >= ? AND status < ?".into(),
                    vec![
                        Value::Integer(i64::from(low)),
                        Value::Integer(i64::from(high)),
                    ],
                );
            }
        }
        if let Some(ip) = &filter.ip {
            conditions.push_ip(ip);
        }
        let time_window = match (&filter.since, &filter.until) {
            (Some(since), Some(until)) => Some((
                "created_at >= ? AND created_at < ?",
                vec![
                    Value::Text(format_timestamp(since)),
                    Value::Text(format_timestamp(until)),
                ],
            )),
            (Some(since), None) => Some((
                "created_at >= ?",
                vec![Value::Text(format_timestamp(since))],
            )),
            (None, Some(until)) => {
                Some(("created_at < ?", vec![Value::Text(format_timestamp(until))]))
            }
            (None, None) => None,
        };
        if let Some((clause, values)) = time_window {
            conditions.push_range("entries_created_at", clause.into(), values);
        }
        if let Some(q) = &filter.q {
            conditions.push(
                format!(
                    "{CONTAINS_FUNCTION}(?, actor_id, actor_email, action, resource_type, \
                     resource_id, path)"
                ),
                [text(q)],
            );
        }
        if let Some(log_id) = &filter.log_id {
            conditions.push("log_id = ?", [text(log_id)]);
        }
        conditions
    }

    /// Stored addresses are the canonical text of `IpAddr` (`10.0.0.1`, `2001:db8::1`), so an
    /// exact address is a text equality on the ip index. A network is checked by
    /// `auditgate_ip_in`, which no index can serve; where the network fixes the leading octets
    /// (IPv4) or leading non-zero groups (IPv6), a text range on those narrows the rows through
    /// the index first.
    fn push_ip(&mut self, ip: &IpFilter) {
        let network = match *ip {
            IpFilter::Exact(address) => {
                self.push_generation_equality(
                    "entries_ip",
                    "ip = ?",
                    [Value::Text(address.to_string())],
                );
                return;
            }
            IpFilter::Network(network) => network,
        };
        if network.prefix_len() == network.max_prefix_len() {
            self.push_generation_equality(
                "entries_ip",
                "ip = ?",
                [Value::Text(network.addr().to_string())],
            );
            return;
        }
        if let Some(prefix) = canonical_text_prefix(&network) {
            // Every canonical address in the network starts with `prefix`, whose last character
            // is '.' or ':'; the next character up ('/' or ';') closes the range.
            let mut upper = prefix.clone();
            upper.pop();
            upper.push(if prefix.ends_with('.') { '/' } else { ';' });
            self.push_generation_range(
                "entries_ip",
                "ip >= ? AND ip < ?",
                vec![Value::Text(prefix), Value::Text(upper)],
            );
        }
        self.push(
            format!("{IP_IN_FUNCTION}(ip, ?)"),
            [Value::Text(network.to_string())],
        );
    }

    fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// Whether `filter` names a resource id or one address: an equality on a generation-led index
/// other than the actor's.
fn has_generation_equality(filter: &Filter) -> bool {
    filter.resource_id.is_some()
        || match &filter.ip {
            Some(IpFilter::Exact(_)) => true,
            Some(IpFilter::Network(network)) => network.prefix_len() == network.max_prefix_len(),
            None => false,
        }
}

fn text(value: &str) -> Value {
    Value::Text(value.to_string())
}

/// The text every canonical address of `network` starts with, ending in its separator, or
/// `None` when the network fixes no whole leading octet or non-zero group.
fn canonical_text_prefix(network: &IpNet) -> Option<String> {
    match network {
        IpNet::V4(v4) => {
            let whole_octets = usize::from(v4.prefix_len() / 8);
            if whole_octets == 0 {
                return None;
            }
            let octets = v4.network().octets();
            let mut prefix = octets[..whole_octets]
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(".");
            prefix.push('.');
            Some(prefix)
        }
        IpNet::V6(v6) => {
            // A zero group may be folded into "::", so the text is only predictable up to the
            // first zero group.
            let whole_groups = usize::from(v6.prefix_len() / 16);
            let groups: Vec<String> = v6.network().segments()[..whole_groups]
                .iter()
                .take_while(|group| **group != 0)
                .map(|group| format!("{group:x}"))
                .collect();
            if groups.is_empty() {
                return None;
            }
            Some(format!("{}:", groups.join(":")))
        }
    }
}

/// `%fragment%` for LIKE, with `\`, `%` and `_` in the fragment escaped so they match
/// themselves. Use with `ESCAPE '\'`. Only the tests still build LIKE patterns: they check that
/// [`CONTAINS_FUNCTION`] means the same.
#[cfg(test)]
fn contains_pattern(fragment: &str) -> Value {
    let mut pattern = String::with_capacity(fragment.len() + 2);
    pattern.push('%');
    for character in fragment.chars() {
        if matches!(character, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    Value::Text(pattern)
}

/// `WHERE ...` (or nothing, for an empty filter) and its bound values, in placeholder order, for
/// `recent` (or any table of the same columns without the generation-led indexes).
pub fn where_clause(filter: &Filter) -> (String, Vec<Value>) {
    table_where_clause(filter, Table::Other)
}

/// [`where_clause`] for `table`.
fn table_where_clause(filter: &Filter, table: Table) -> (String, Vec<Value>) {
    let conditions = Conditions::from_filter(filter, table);
    (conditions.where_sql(), conditions.values)
}

/// The most rows a range condition may match for [`list`] to read it through its index and
/// sort, rather than walk the log. Sorting this many sequence numbers takes about a millisecond;
/// a range matching more is usually dense enough that walking the log in `seq` order finds a page
/// quickly (see [`WALK_POSITIONS_PER_ROW`] for when it is not).
pub const NARROW_RANGE_MAX_ROWS: u64 = 10_000;

/// How many log positions per row asked for a page of a wide range walks in `seq` order before
/// it reads the range's index instead: 100 finds a page of 50 among the newest 5,100 entries
/// whenever at least 1% of them match, which a range matching more than
/// [`NARROW_RANGE_MAX_ROWS`] rows usually does. Walking that many rows costs about a millisecond;
/// when the window holds less than a page (matches that are old, or clustered elsewhere), the rest
/// of the page comes from the index below the window.
pub const WALK_POSITIONS_PER_ROW: u64 = 100;

/// How many more windows, each twice as wide as the one before, a page walks when its first
/// window holds less than a page, before it reads the rest through the range's index: three
/// windows of 5,100, 10,200 and 20,400 positions for a page of 50 (a few milliseconds), against
/// an index read that sorts every match below the window (a day's 555,000 at 50M entries:
/// 320 ms).
pub const WALK_EXTENSIONS: u32 = 2;

/// How [`list`] reads the filter's range conditions (a time window, a prefix, a status class, a
/// network, a resource type).
///
/// SQLite, without statistics (auditgate never runs ANALYZE on a live log), reads a range through
/// its index and sorts every match by `seq` to return the first page: 40 ms for a prefix matching
/// a tenth of a million entries, and more as the log grows. Walking the log in `seq` order and
/// stopping after a page is fast when matches are dense near the start of the walk and reads the
/// whole table when they are not (a quiet hour, the last page). Counting each range first (up to
/// `max_rows + 1` index entries) tells the cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangePlan {
    /// No range condition.
    NoRange,
    /// The narrowest range matches at most `max_rows` rows: read the sequence numbers through its
    /// index, sort them, and fetch a page.
    Narrow(&'static str),
    /// Every range matches more: walk a window of the log in order, then this index (the first
    /// range's) below the window if the page is not yet full.
    Wide(&'static str),
}

impl RangePlan {
    fn narrow_index(self) -> Option<&'static str> {
        match self {
            RangePlan::Narrow(index) => Some(index),
            RangePlan::NoRange | RangePlan::Wide(_) => None,
        }
    }
}

fn range_plan(
    conn: &Connection,
    conditions: &Conditions,
    max_rows: u64,
) -> rusqlite::Result<RangePlan> {
    let mut narrowest: Option<(u64, &'static str)> = None;
    for range in &conditions.ranges {
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM entries INDEXED BY {} WHERE {} LIMIT ?)",
            range.index, range.clause
        );
        let mut values = range.values.clone();
        values.push(Value::Integer(
            i64::try_from(max_rows.saturating_add(1)).unwrap_or(i64::MAX),
        ));
        let rows: u64 = conn
            .prepare_cached(&sql)?
            .query_row(rusqlite::params_from_iter(values), |row| row.get(0))?;
        let narrower = narrowest.is_none_or(|(fewest, _)| rows < fewest);
        if rows <= max_rows && narrower {
            narrowest = Some((rows, range.index));
        }
    }
    Ok(match (narrowest, conditions.ranges.first()) {
        (Some((_, index)), _) => RangePlan::Narrow(index),
        (None, Some(first)) => RangePlan::Wide(first.index),
        (None, None) => RangePlan::NoRange,
    })
}

/// The statement [`list`] runs first, and what it runs after when that one reads only a window
/// of the log.
struct PageQuery {
    sql: String,
    values: Vec<Value>,
    past_window: Option<PastWindow>,
}

/// The rest of a page after a walk of a window of the log: the entries past `boundary` in the
/// listing order, up to `end`, walked on in wider windows and then read through `index`.
#[derive(Debug, Clone, Copy)]
struct PastWindow {
    index: &'static str,
    boundary: i64,
    /// The oldest (newest first) or newest (oldest first) position the listing may read.
    end: i64,
    /// How conditions on `entries` are written for the file ([`Table::of_entries`]).
    table: Table,
}

/// `SELECT` of a page whose sequence numbers are found through `index` (`where_sql` may read
/// other columns too): the sort then handles sequence numbers only, and when the conditions are
/// all on the index's columns SQLite reads the index alone, fetching just the page's rows.
fn through_index_sql(index: &str, where_sql: &str, order: Order) -> String {
    let order = order_sql(order);
    format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE seq IN (SELECT seq FROM entries INDEXED BY \
         {index} {where_sql} ORDER BY seq {order} LIMIT ?) ORDER BY seq {order}"
    )
}

/// The SELECT behind [`list`], after choosing its index; apart so that the query plan tests
/// inspect the very same SQL.
fn page_query(
    conn: &Connection,
    filter: &Filter,
    page: &PageRequest,
    narrow_range_max_rows: u64,
) -> rusqlite::Result<PageQuery> {
    let limit = page_rows(page);
    let order = order_sql(page.order);
    let sealed = Table::of_entries(conn)?;
    let plan = range_plan(
        conn,
        &Conditions::from_filter(filter, sealed),
        narrow_range_max_rows,
    )?;
    if filter.actor.is_none() {
        let mut conditions = page_condition_set(filter, page, ActorColumns::Either, sealed);
        if let RangePlan::Narrow(index) = plan {
            conditions.values.push(Value::Integer(limit));
            return Ok(PageQuery {
                sql: through_index_sql(index, &conditions.where_sql(), page.order),
                values: conditions.values,
                past_window: None,
            });
        }
        // A wide time window: its entries lie in the seq range its hours hold, which bounds
        // both the walk below and SQLite's own plan (an equality index is read in seq order).
        let seqs = match plan {
            RangePlan::Wide(_) => window_seqs(conn, filter)?,
            RangePlan::NoRange | RangePlan::Narrow(_) => None,
        };
        // A wide range with no equality to walk instead: the window first. NOT INDEXED leaves
        // SQLite only the table itself, walked in seq order from the keyset position.
        let walk = match plan {
            // (No walk when no sealed entry has an hour of the window: `seq < 0` below.)
            RangePlan::Wide(index) if !conditions.has_ordered_equality && seqs != Some(None) => {
                window_boundary(conn, page, seqs.flatten())?.map(|walk| {
                    let past = PastWindow {
                        index,
                        boundary: walk.boundary,
                        end: walk.end,
                        table: sealed,
                    };
                    (walk.start, past)
                })
            }
            _ => None,
        };
        if let Some((start, window)) = walk {
            // The walk reads no index, and every row's generation is in the list: the plain
            // conditions mean the same and spare a lookup per row walked. Its two ends are the
            // window's alone (the cursor, the snapshot and the hours' positions are folded into
            // them): given a second lower or upper bound, SQLite may start from the looser one
            // and filter by the tighter, walking past the window to the end of the range.
            let mut conditions = Conditions::from_filter(filter, Table::Other);
            let (from_start, to_boundary) = match page.order {
                Order::Desc => ("seq <= ?", "seq >= ?"),
                Order::Asc => ("seq >= ?", "seq <= ?"),
            };
            conditions.push(from_start, [Value::Integer(start)]);
            conditions.push(to_boundary, [Value::Integer(window.boundary)]);
            conditions.values.push(Value::Integer(limit));
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM entries NOT INDEXED {} ORDER BY seq {order} LIMIT ?",
                conditions.where_sql(),
            );
            return Ok(PageQuery {
                sql,
                values: conditions.values,
                past_window: Some(window),
            });
        }
        // The hours' positions bound the page with the cursor and the snapshot, one bound a side.
        conditions =
            page_condition_set_within(filter, page, ActorColumns::Either, sealed, seqs.flatten());
        if seqs == Some(None) {
            // No sealed entry has an hour of the window.
            conditions.push("seq < ?", [Value::Integer(0)]);
        }
        let (from, order_by) = match conditions.generation_index {
            // An equality on a generation-led index: read through it, a generation at a time.
            Some(index) => (indexed_by(Some(index)), generation_order(page.order)),
            None => (String::new(), format!("seq {order}")),
        };
        // One row more than asked tells whether another page follows without a second query.
        conditions.values.push(Value::Integer(limit));
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM entries{from} {} ORDER BY {order_by} LIMIT ?",
            conditions.where_sql(),
        );
        return Ok(PageQuery {
            sql,
            values: conditions.values,
            past_window: None,
        });
    }
    // The actor is matched on two columns, and SQLite answers an OR over two indexes by
    // collecting and sorting every match, which for a busy account is its whole history on every
    // page. Instead take the first page of each column from its own index, in seq order, and merge
    // the two small lists.
    // Each column's page comes through its generation-led index, a generation at a time, unless
    // a narrow range is read instead.
    let mut values = Vec::new();
    let mut arms = Vec::new();
    for columns in [ActorColumns::Id, ActorColumns::Email] {
        let conditions = page_condition_set(filter, page, columns, sealed);
        let (index, arm_order) = match (plan.narrow_index(), conditions.generation_index) {
            (Some(index), _) => (Some(index), format!("seq {order}")),
            (None, Some(index)) => (Some(index), generation_order(page.order)),
            // A file before the generations: its own one-column index, in seq order.
            (None, None) => (None, format!("seq {order}")),
        };
        arms.push(format!(
            "SELECT seq FROM (SELECT seq FROM entries{} {} ORDER BY {arm_order} LIMIT ?)",
            indexed_by(index),
            conditions.where_sql(),
        ));
        values.extend(conditions.values);
        values.push(Value::Integer(limit));
    }
    values.push(Value::Integer(limit));
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE seq IN ({}) ORDER BY seq {order} LIMIT ?",
        arms.join(" UNION ALL "),
    );
    Ok(PageQuery {
        sql,
        values,
        past_window: None,
    })
}

/// Rows a page reads: one more than asked, which tells whether another page follows.
fn page_rows(page: &PageRequest) -> i64 {
    i64::from(page.limit.clamp(1, MAX_LIMIT)) + 1
}

/// The window a page of a wide range walks first, newest first or oldest first: from `start` to
/// `boundary`, both included (`start` is the first position the page may list: after the
/// cursor, within the snapshot and `seqs`, and within the sealed positions), and the far end of
/// what the listing may read past it, `end`, included (likewise the last).
#[derive(Debug, Clone, Copy)]
struct Walk {
    start: i64,
    boundary: i64,
    end: i64,
}

/// Where the walk of a wide range goes ([`Walk`]). `None` when the window already holds the
/// whole rest of the log, so nothing is left to read past it.
///
/// `seqs`, when known, is the seq range every match lies in (see [`window_seqs`]): the walk
/// starts at its end rather than at the end of the log.
fn window_boundary(
    conn: &Connection,
    page: &PageRequest,
    seqs: Option<(i64, i64)>,
) -> rusqlite::Result<Option<Walk>> {
    let positions = i128::from(WALK_POSITIONS_PER_ROW) * i128::from(page_rows(page));
    // Reading min or max of the primary key alone is one seek each.
    let end = |sql: &str| -> rusqlite::Result<Option<i64>> {
        conn.prepare_cached(sql)?.query_row([], |row| row.get(0))
    };
    let (Some(oldest), Some(newest)) = (
        end("SELECT min(seq) FROM entries")?,
        end("SELECT max(seq) FROM entries")?,
    ) else {
        return Ok(None);
    };
    let (lower, upper) = position_bounds(page, seqs);
    let lower = lower.map_or(i128::from(oldest), |bound| {
        bound.inclusive(false).max(oldest.into())
    });
    let upper = upper.map_or(i128::from(newest), |bound| {
        bound.inclusive(true).min(newest.into())
    });
    // Every value below lies between `oldest` and `newest`, so it is an i64.
    let walk = |start: i128, boundary: i128, end: i128| {
        Some(Walk {
            start: i64::try_from(start).ok()?,
            boundary: i64::try_from(boundary).ok()?,
            end: i64::try_from(end).ok()?,
        })
    };
    Ok(match page.order {
        Order::Desc => {
            let boundary = upper - positions + 1;
            if boundary > lower {
                walk(upper, boundary, lower)
            } else {
                None
            }
        }
        Order::Asc => {
            let boundary = lower + positions - 1;
            if boundary < upper {
                walk(lower, boundary, upper)
            } else {
                None
            }
        }
    })
}

/// One bound on a page's positions, as the page states it: a cursor excludes its own position,
/// a snapshot or an hour's last position includes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PositionBound {
    Exclusive(i64),
    Inclusive(i64),
}

impl PositionBound {
    /// The bound as an inclusive position (`upper`: the highest position it lets through, else
    /// the lowest), exact at the ends of i64.
    fn inclusive(self, upper: bool) -> i128 {
        match (self, upper) {
            (PositionBound::Exclusive(seq), true) => i128::from(seq) - 1,
            (PositionBound::Exclusive(seq), false) => i128::from(seq) + 1,
            (PositionBound::Inclusive(seq), _) => i128::from(seq),
        }
    }
}

/// The page's positions as at most one lower and one upper bound: the tightest of the cursor,
/// the snapshot (`through`) and `seqs` (the positions the window's hours hold) on each side.
/// Given two bounds on one side, SQLite seeks by one and only filters by the other, so a walk
/// from the looser one reads every position up to the tighter (every chunk of an export would
/// start again at the snapshot's top; a past day's page walked from the day's end down to its
/// start).
fn position_bounds(
    page: &PageRequest,
    seqs: Option<(i64, i64)>,
) -> (Option<PositionBound>, Option<PositionBound>) {
    let mut lowers = Vec::new();
    let mut uppers = Vec::new();
    if let Some(through) = page.through {
        // A snapshot past i64::MAX lets every position through.
        if let Ok(seq) = i64::try_from(through.seq()) {
            uppers.push(PositionBound::Inclusive(seq));
        }
    }
    if let Some(cursor) = page.cursor {
        match (page.order, i64::try_from(cursor.seq())) {
            (Order::Desc, Ok(seq)) => uppers.push(PositionBound::Exclusive(seq)),
            // A cursor past i64::MAX: every position is before it (newest first), none after.
            (Order::Desc, Err(_)) => {}
            (Order::Asc, Ok(seq)) => lowers.push(PositionBound::Exclusive(seq)),
            (Order::Asc, Err(_)) => lowers.push(PositionBound::Exclusive(i64::MAX)),
        }
    }
    if let Some((first, last)) = seqs {
        lowers.push(PositionBound::Inclusive(first));
        uppers.push(PositionBound::Inclusive(last));
    }
    (
        lowers
            .into_iter()
            .max_by_key(|bound| bound.inclusive(false)),
        uppers.into_iter().min_by_key(|bound| bound.inclusive(true)),
    )
}

/// Adds `bounds` (from [`position_bounds`]) to `conditions`.
fn push_position_bounds(
    conditions: &mut Conditions,
    (lower, upper): (Option<PositionBound>, Option<PositionBound>),
) {
    for (bound, exclusive, inclusive) in [
        (lower, "seq > ?", "seq >= ?"),
        (upper, "seq < ?", "seq <= ?"),
    ] {
        match bound {
            Some(PositionBound::Exclusive(seq)) => {
                conditions.push(exclusive, [Value::Integer(seq)])
            }
            Some(PositionBound::Inclusive(seq)) => {
                conditions.push(inclusive, [Value::Integer(seq)])
            }
            None => {}
        }
    }
}

/// The seq range the sealed entries of the filter's time window lie in, from the seq range of
/// each hour (`schema_v7.sql`): `Some(None)` when no sealed entry has an hour of the window,
/// `None` when the ranges cannot tell (no time window; a file without them, or whose sealed
/// entries are not all ranged yet).
///
/// Sound for any stored text: the filter compares `created_at` as text, and cutting two texts to
/// their first 13 characters keeps their order (or makes them equal), so a row inside the window
/// has an hour key between the window's two ends' keys.
fn window_seqs(conn: &Connection, filter: &Filter) -> rusqlite::Result<Option<Option<(i64, i64)>>> {
    if filter.since.is_none() && filter.until.is_none() {
        return Ok(None);
    }
    if !mark_covers_sealed(conn, "ranged_through")? {
        return Ok(None);
    }
    let hour_key = |time: &DateTime<Utc>| format_timestamp(time).get(..13).map(str::to_string);
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    for (bound, clause) in [(&filter.since, "hour >= ?"), (&filter.until, "hour <= ?")] {
        if let Some(time) = bound {
            let Some(key) = hour_key(time) else {
                return Ok(None);
            };
            clauses.push(clause);
            values.push(Value::Text(key));
        }
    }
    let range: (Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT min(first_seq), max(last_seq) FROM hour_seqs WHERE {}",
            clauses.join(" AND ")
        ))?
        .query_row(rusqlite::params_from_iter(values), |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    Ok(Some(match range {
        (Some(first), Some(last)) => Some((first, last)),
        _ => None,
    }))
}

/// A further walk of a wide range: up to `rows` entries from `boundary` (excluded) on in the
/// listing's order, to `stop` (included); the table itself, in `seq` order, as the first window
/// is walked.
fn walk_query(
    filter: &Filter,
    page: &PageRequest,
    boundary: i64,
    stop: i64,
    rows: i64,
) -> (String, Vec<Value>) {
    // The filter's conditions and these two bounds alone (see `page_query`'s walk); the cursor
    // and the snapshot lie beyond `boundary`, or within `stop`.
    let mut conditions = Conditions::from_filter(filter, Table::Other);
    let (past, up_to) = match page.order {
        Order::Desc => ("seq < ?", "seq >= ?"),
        Order::Asc => ("seq > ?", "seq <= ?"),
    };
    conditions.push(past, [Value::Integer(boundary)]);
    conditions.push(up_to, [Value::Integer(stop)]);
    conditions.values.push(Value::Integer(rows));
    (
        format!(
            "SELECT {ENTRY_COLUMNS} FROM entries NOT INDEXED {} ORDER BY seq {} LIMIT ?",
            conditions.where_sql(),
            order_sql(page.order),
        ),
        conditions.values,
    )
}

/// The rest of a page after its window: up to `rows` entries past the window, through the
/// range's index.
fn past_window_query(
    filter: &Filter,
    page: &PageRequest,
    past: PastWindow,
    rows: i64,
) -> (String, Vec<Value>) {
    let mut conditions = page_condition_set(filter, page, ActorColumns::Either, past.table);
    let clause = match page.order {
        Order::Desc => "seq < ?",
        Order::Asc => "seq > ?",
    };
    conditions.push(clause, [Value::Integer(past.boundary)]);
    conditions.values.push(Value::Integer(rows));
    (
        through_index_sql(past.index, &conditions.where_sql(), page.order),
        conditions.values,
    )
}

/// The filter's conditions and the cursor's, as `WHERE ...` and values.
#[cfg(test)]
fn page_conditions(
    filter: &Filter,
    page: &PageRequest,
    actor_columns: ActorColumns,
    table: Table,
) -> (String, Vec<Value>) {
    let conditions = page_condition_set(filter, page, actor_columns, table);
    (conditions.where_sql(), conditions.values)
}

/// The filter's conditions and the cursor's.
fn page_condition_set(
    filter: &Filter,
    page: &PageRequest,
    actor_columns: ActorColumns,
    table: Table,
) -> Conditions {
    page_condition_set_within(filter, page, actor_columns, table, None)
}

/// [`page_condition_set`] within `seqs` too, with one position bound on each side
/// ([`position_bounds`]).
fn page_condition_set_within(
    filter: &Filter,
    page: &PageRequest,
    actor_columns: ActorColumns,
    table: Table,
    seqs: Option<(i64, i64)>,
) -> Conditions {
    let mut conditions = Conditions::from_filter_matching_actor(filter, actor_columns, table);
    push_position_bounds(&mut conditions, position_bounds(page, seqs));
    conditions
}

fn indexed_by(index: Option<&str>) -> String {
    index
        .map(|index| format!(" INDEXED BY {index}"))
        .unwrap_or_default()
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    }
}

/// One page of the entries matching `filter`, by keyset paging on `seq`: a page costs the same
/// however deep into the log it is, and entries appended meanwhile never shift later pages.
pub fn list(conn: &Connection, filter: &Filter, page: &PageRequest) -> rusqlite::Result<Page> {
    list_planned(conn, filter, page, NARROW_RANGE_MAX_ROWS)
}

fn query_entries(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut statement = conn.prepare_cached(sql)?;
    let entries = statement
        .query_map(rusqlite::params_from_iter(values), entry_from_row)?
        .collect();
    entries
}

/// [`list`] with the narrow-range threshold as a parameter, so tests cover both plans.
///
/// The log is two tables (see [`RECENT`]); a page is the first `limit + 1` of both tables'
/// matches merged by seq. The caller runs this in one read transaction, so a seal between the
/// two reads can neither show an entry twice nor hide it.
fn list_planned(
    conn: &Connection,
    filter: &Filter,
    page: &PageRequest,
    narrow_range_max_rows: u64,
) -> rusqlite::Result<Page> {
    list_with(
        conn,
        filter,
        page,
        Knobs {
            narrow_range_max_rows,
            walk_extensions: WALK_EXTENSIONS,
        },
    )
}

/// The thresholds of [`list`]'s plans, as parameters so that tests cover every plan.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    /// See [`NARROW_RANGE_MAX_ROWS`].
    narrow_range_max_rows: u64,
    /// See [`WALK_EXTENSIONS`].
    walk_extensions: u32,
}

/// [`list_planned`] with every threshold given.
fn list_with(
    conn: &Connection,
    filter: &Filter,
    page: &PageRequest,
    plan: Knobs,
) -> rusqlite::Result<Page> {
    let rows = page_rows(page);
    // The store keeps every unsealed seq above every sealed one, and `verify` reports a file
    // where that does not hold; the page is still a merge by seq rather than one table after the
    // other, so that rows moved between the tables by hand can neither hide entries from a
    // listing or an export nor show them twice.
    let mut entries = recent_entries(conn, filter, page, rows)?;
    let sealed = sealed_entries(conn, filter, page, plan, rows)?;
    if entries.is_empty() {
        entries = sealed;
    } else if !sealed.is_empty() {
        entries.extend(sealed);
        match page.order {
            Order::Desc => entries.sort_by_key(|entry| std::cmp::Reverse(entry.seq)),
            Order::Asc => entries.sort_by_key(|entry| entry.seq),
        }
    }
    // A position in both tables (only a hand-made copy) is listed once.
    entries.dedup_by_key(|entry| entry.seq);
    entries.truncate(usize::try_from(rows).unwrap_or(usize::MAX));
    let limit = usize::try_from(page.limit.clamp(1, MAX_LIMIT)).unwrap_or(usize::MAX);
    let next_cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|entry| Cursor::after_seq(entry.seq))
    } else {
        None
    };
    let prev_cursor = entries.first().map(|entry| Cursor::after_seq(entry.seq));
    let total = if page.count {
        Some(count(conn, filter)?)
    } else {
        None
    };
    Ok(Page {
        entries,
        next_cursor,
        prev_cursor,
        total,
    })
}

/// Up to `rows` matches of the page from the sealed, indexed table, through the planned index.
fn sealed_entries(
    conn: &Connection,
    filter: &Filter,
    page: &PageRequest,
    plan: Knobs,
    rows: i64,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let Knobs {
        narrow_range_max_rows,
        walk_extensions,
    } = plan;
    let query = page_query(conn, filter, page, narrow_range_max_rows)?;
    let mut entries = query_entries(conn, &query.sql, query.values)?;
    let found = |entries: &Vec<AuditEntry>| i64::try_from(entries.len()).unwrap_or(i64::MAX);
    let mut past = query.past_window;
    // The walk goes on in windows twice as wide as the last, a few times, before the rest is
    // read through the range's index (every match below the boundary, sorted). A window whose
    // positions are all outside the range but sit where the range's positions end (the part of
    // a time window's last hour past its end, 23,000 entries an hour at 50M entries over 90
    // days) would otherwise send every such page to the index.
    let mut width = i64::try_from(WALK_POSITIONS_PER_ROW)
        .unwrap_or(i64::MAX)
        .saturating_mul(rows);
    for _ in 0..walk_extensions {
        let Some(window) = past.filter(|_| found(&entries) < rows) else {
            break;
        };
        width = width.saturating_mul(2);
        let next = match page.order {
            Order::Desc => window.boundary.saturating_sub(width),
            Order::Asc => window.boundary.saturating_add(width),
        };
        let reaches_end = match page.order {
            Order::Desc => next <= window.end,
            Order::Asc => next >= window.end,
        };
        // Never past the range's far end: the walk reads every position up to its stop.
        let stop = if reaches_end { window.end } else { next };
        let (sql, values) = walk_query(filter, page, window.boundary, stop, rows - found(&entries));
        entries.extend(query_entries(conn, &sql, values)?);
        past = (!reaches_end).then_some(PastWindow {
            boundary: next,
            ..window
        });
    }
    if let Some(past) = past.filter(|_| found(&entries) < rows) {
        // The windows and the rest are separate statements, and appends may come between them;
        // the boundaries were fixed before each, so every entry is read by exactly one of them.
        let (sql, values) = past_window_query(filter, page, past, rows - found(&entries));
        entries.extend(query_entries(conn, &sql, values)?);
    }
    entries.truncate(usize::try_from(rows).unwrap_or(0));
    Ok(entries)
}

/// Up to `rows` matches of the page from [`RECENT`], the entries not sealed yet. The table has
/// no secondary index: it holds at most a few seconds of traffic, walked in `seq` order.
fn recent_entries(
    conn: &Connection,
    filter: &Filter,
    page: &PageRequest,
    rows: i64,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut conditions = page_condition_set(filter, page, ActorColumns::Either, Table::Other);
    conditions.values.push(Value::Integer(rows));
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM {RECENT} {} ORDER BY seq {} LIMIT ?",
        conditions.where_sql(),
        order_sql(page.order),
    );
    query_entries(conn, &sql, conditions.values)
}

/// Newest first, skipping `offset` entries: the page-number paging of the reference product's
/// `GET /api/audit-log?page=`. Its cost grows with the offset, so the admin API proper uses
/// [`list`].
pub fn list_offset(
    conn: &Connection,
    filter: &Filter,
    offset: u64,
    limit: u32,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let limit = i64::from(limit.clamp(1, MAX_LIMIT));
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    // The newest entries are in `recent`: skip into it first, then into the sealed table.
    let (recent_where, recent_values) = where_clause(filter);
    let in_recent: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM {RECENT} {recent_where}"))?
        .query_row(rusqlite::params_from_iter(recent_values.clone()), |row| {
            row.get(0)
        })?;
    let mut entries = Vec::new();
    if offset < in_recent {
        let mut values = recent_values;
        values.push(Value::Integer(limit));
        values.push(Value::Integer(offset));
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM {RECENT} {recent_where} ORDER BY seq DESC LIMIT ? OFFSET ?"
        );
        entries = query_entries(conn, &sql, values)?;
    }
    let wanted = limit - i64::try_from(entries.len()).unwrap_or(i64::MAX);
    if wanted <= 0 {
        return Ok(entries);
    }
    let mut conditions = Conditions::from_filter(filter, Table::of_entries(conn)?);
    let (index, order_by) = match range_plan(conn, &conditions, NARROW_RANGE_MAX_ROWS)? {
        RangePlan::Narrow(index) => (Some(index), "seq DESC".to_string()),
        RangePlan::NoRange | RangePlan::Wide(_) => match conditions.generation_index {
            Some(index) => (Some(index), generation_order(Order::Desc)),
            None => (None, "seq DESC".to_string()),
        },
    };
    conditions.values.push(Value::Integer(wanted));
    conditions
        .values
        .push(Value::Integer(offset.saturating_sub(in_recent).max(0)));
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM entries{} {} ORDER BY {order_by} LIMIT ? OFFSET ?",
        indexed_by(index),
        conditions.where_sql(),
    );
    entries.extend(query_entries(conn, &sql, conditions.values)?);
    Ok(entries)
}

/// How many entries match `filter`: from the per-hour counts where the filter allows it (a
/// count of every entry walks a whole index otherwise, a few hundred milliseconds at ten
/// million entries), else by counting the matching rows.
pub fn count(conn: &Connection, filter: &Filter) -> rusqlite::Result<u64> {
    if let Some(counts) = stats_from_counts(conn, filter, None)? {
        return Ok(counts.values().sum());
    }
    let (sealed_where, sealed_values) = table_where_clause(filter, Table::of_entries(conn)?);
    let (recent_where, recent_values) = where_clause(filter);
    let sql = format!(
        "SELECT (SELECT count(*) FROM entries {sealed_where}) + \
         (SELECT count(*) FROM {RECENT} {recent_where})"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let both = sealed_values.into_iter().chain(recent_values);
    statement.query_row(rusqlite::params_from_iter(both), |row| row.get(0))
}

/// One entry by its ULID or, failing that, by its sequence number written in decimal, so both
/// forms a user might copy from the viewer work. The id is tried first because a ULID may
/// consist of digits only.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<AuditEntry>> {
    for table in ["entries", RECENT] {
        let mut by_id =
            conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM {table} WHERE id = ?"))?;
        if let Some(entry) = by_id.query_row([id], entry_from_row).optional()? {
            return Ok(Some(entry));
        }
    }
    let is_decimal = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    let Some(seq) = id.parse::<i64>().ok().filter(|_| is_decimal) else {
        return Ok(None);
    };
    for table in ["entries", RECENT] {
        let mut by_seq = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM {table} WHERE seq = ?"
        ))?;
        if let Some(entry) = by_seq.query_row([seq], entry_from_row).optional()? {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// The hour bucket key of a row as SQL; also the key of the per-hour counts (`schema_v6.sql`).
pub const HOUR: &str = "substr(created_at, 1, 13)";

/// The day bucket key of a row as SQL; also the key of the per-day counts (`schema_v6.sql`).
pub const DAY: &str = "substr(created_at, 1, 10)";

/// The actor bucket key of a row as SQL; also the key of `actor_counts` (`schema_v6.sql`).
pub const ACTOR_KEY: &str =
    "coalesce(nullif(actor_email, ''), nullif(actor_id, ''), '(anonymous)')";

/// The bucket key as SQL over one row. Day and hour cut the fixed-width UTC text of
/// `created_at`, which is why the schema stores it in exactly one form.
fn key_sql(by: StatsBy) -> &'static str {
    match by {
        StatsBy::Action => "action",
        StatsBy::Actor => ACTOR_KEY,
        StatsBy::Day => DAY,
        StatsBy::Hour => HOUR,
        StatsBy::Outcome => "outcome",
    }
}

/// Counts of the entries matching `filter`, grouped by `by`, at most `limit` buckets.
///
/// Action, actor and outcome buckets come largest first (ties by key), answering "who or what
/// is most frequent". Day and hour buckets come in time order for a chart; when there are more
/// than `limit` of them the most recent ones are kept, because a chart of activity is about now.
/// Periods without entries are absent; a chart fills them in.
pub fn stats(
    conn: &Connection,
    filter: &Filter,
    by: StatsBy,
    limit: u32,
) -> rusqlite::Result<Vec<Bucket>> {
    let counts = match stats_from_counts(conn, filter, Some(by))? {
        Some(counts) => counts,
        None => {
            let window_only = Filter {
                since: filter.since,
                until: filter.until,
                ..Filter::default()
            };
            if by.is_time() && *filter == window_only {
                if let Some(buckets) = time_buckets_by_seeking(conn, filter, by, limit)? {
                    return Ok(buckets);
                }
            }
            let mut counts = BucketCounts::new();
            // Each table grouped through its own plan (a UNION ALL under one GROUP BY would hide
            // the indexes from SQLite and sort every row), the two sets of buckets added up here.
            for table in ["entries", RECENT] {
                group_rows(conn, table, filter, key_sql(by), &mut counts)?;
            }
            counts
        }
    };
    let mut buckets: Vec<Bucket> = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(key, count)| Bucket { key, count })
        .collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if by.is_time() {
        // The most recent `limit` periods, in time order.
        buckets.sort_by(|a, b| a.key.cmp(&b.key));
        let skip = buckets.len().saturating_sub(limit);
        buckets.drain(..skip);
    } else {
        buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        buckets.truncate(limit);
    }
    Ok(buckets)
}

/// Bucket key to count, as stats add them up.
type BucketCounts = std::collections::HashMap<String, u64>;

/// Adds `count` to the bucket `key`, allocating the key only for a bucket not seen yet.
fn add_count(counts: &mut BucketCounts, key: &str, count: u64) {
    match counts.get_mut(key) {
        Some(total) => *total += count,
        None => {
            counts.insert(key.to_string(), count);
        }
    }
}

/// Adds the rows of `table` that match `filter`, grouped by the SQL expression `key`, to
/// `counts`.
fn group_rows(
    conn: &Connection,
    table: &str,
    filter: &Filter,
    key: &str,
    counts: &mut BucketCounts,
) -> rusqlite::Result<()> {
    let table_kind = if table == RECENT {
        Table::Other
    } else {
        Table::of_entries(conn)?
    };
    let (where_sql, values) = table_where_clause(filter, table_kind);
    let sql = format!("SELECT {key} AS bucket, count(*) FROM {table} {where_sql} GROUP BY bucket");
    add_rows(conn, &sql, values, counts)
}

/// Runs `sql`, whose rows are (bucket key, count), and adds them to `counts`.
fn add_rows(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
    counts: &mut BucketCounts,
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(values))?;
    while let Some(row) = rows.next()? {
        let n: i64 = row.get(1)?;
        // Keys are text (every key expression is); another type still counts, under its text.
        let key = match row.get_ref(0)? {
            ValueRef::Text(text) | ValueRef::Blob(text) => String::from_utf8_lossy(text),
            ValueRef::Integer(n) => n.to_string().into(),
            ValueRef::Real(x) => x.to_string().into(),
            ValueRef::Null => "".into(),
        };
        add_count(counts, &key, u64::try_from(n).unwrap_or(0));
    }
    Ok(())
}

/// The first `len` characters of a stored time (13: its hour key, 10: its day key).
fn time_key(time: &DateTime<Utc>, len: usize) -> Option<String> {
    let text = format_timestamp(time);
    // Fixed width (`2026-11-26T13:...`) for years 0 to 9999 only; other years fall back.
    (text.len() > 13 && text.as_bytes()[13] == b':').then(|| text[..len].to_string())
}

/// One side of a window: a time, or unbounded.
type Bound = Option<DateTime<Utc>>;

/// Where the whole `unit`s between `lower` and `upper` start and end: the start of the unit after
/// `lower`'s, and the start of `upper`'s (an absent bound stays absent). `None` when a time is
/// out of chrono's range.
fn whole_units(
    lower: Option<DateTime<Utc>>,
    upper: Option<DateTime<Utc>>,
    unit: chrono::TimeDelta,
) -> Option<(Bound, Bound)> {
    let first = match lower {
        None => None,
        Some(lower) => Some(lower.duration_trunc(unit).ok()?.checked_add_signed(unit)?),
    };
    let last = match upper {
        None => None,
        Some(upper) => Some(upper.duration_trunc(unit).ok()?),
    };
    Some((first, last))
}

/// A part of a stats window and where its counts come from.
#[derive(Debug, PartialEq, Eq)]
enum WindowPart {
    /// The rows of `entries` with `created_at` in `[lower, upper)`, grouped row by row.
    Rows(String, String),
    /// Counts per hour with the hour key in `[lower, upper)`; `None` is unbounded.
    Hours(Option<String>, Option<String>),
    /// Counts per day with the day key in `[lower, upper)`; `None` is unbounded.
    Days(Option<String>, Option<String>),
}

/// Cuts the window `[since, until)` (either bound absent: unbounded) into the partial hours at
/// its ends, read as rows, and whole hours, or with `days` whole hours and whole days, read from
/// the counts. Each cut is a key compared as text, the way `created_at` is compared: a row is at
/// or after the key `K` exactly when its own hour (or day) key is, so every row, even one whose
/// stored time is not in the usual form, falls in exactly one part. `None` for a window shorter
/// than an hour (or empty), or a bound outside years 0 to 9999.
fn window_parts(
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    days: bool,
) -> Option<Vec<WindowPart>> {
    // The first whole hour starts after since's hour (its key is shorter than any stored time
    // that starts with it, so it sorts before since); the last one ends where until's starts.
    let (first_hour, last_hour) = whole_units(since, until, chrono::TimeDelta::hours(1))?;
    if let (Some(first), Some(last)) = (first_hour, last_hour) {
        if first > last {
            return None;
        }
    }
    // The key of a bound that may be absent; `None` when it has none.
    let keyed = |time: Option<DateTime<Utc>>, len: usize| match time {
        None => Some(None),
        Some(time) => time_key(&time, len).map(Some),
    };
    let first_hour_key = keyed(first_hour, 13)?;
    let last_hour_key = keyed(last_hour, 13)?;
    let mut parts = Vec::new();
    if let (Some(since), Some(first)) = (since, &first_hour_key) {
        parts.push(WindowPart::Rows(format_timestamp(&since), first.clone()));
    }
    if let (Some(until), Some(last)) = (until, &last_hour_key) {
        parts.push(WindowPart::Rows(last.clone(), format_timestamp(&until)));
    }
    if !days {
        parts.push(WindowPart::Hours(first_hour_key, last_hour_key));
        return Some(parts);
    }
    // Whole days inside the whole hours, cut the same way.
    let (first_day, last_day) = whole_units(first_hour, last_hour, chrono::TimeDelta::days(1))?;
    if let (Some(first), Some(last)) = (first_day, last_day) {
        if first >= last {
            parts.push(WindowPart::Hours(first_hour_key, last_hour_key));
            return Some(parts);
        }
    }
    let first_day_key = keyed(first_day, 10)?;
    let last_day_key = keyed(last_day, 10)?;
    if let Some(first) = &first_day_key {
        parts.push(WindowPart::Hours(first_hour_key, Some(first.clone())));
    }
    if let Some(last) = &last_day_key {
        parts.push(WindowPart::Hours(Some(last.clone()), last_hour_key));
    }
    parts.push(WindowPart::Days(first_day_key, last_day_key));
    Some(parts)
}

/// Stats answered from the counts of `schema_v6.sql` where the filter allows it: `None` when
/// the file has no counts (an earlier schema opened read-only), the filter names a field the
/// counts do not hold, or the window is under an hour, and the caller groups rows instead.
/// `by` `None` is a count: one bucket, keyed "".
///
/// The window is cut by [`window_parts`]: the whole hours (and, for actors, whole days) inside it
/// are added up from the counts, the rows of the partial hour at each end are grouped through the
/// `created_at` index, and `recent` (not sealed, so not counted) is grouped row by row, all in
/// the caller's one read transaction.
fn stats_from_counts(
    conn: &Connection,
    filter: &Filter,
    by: Option<StatsBy>,
) -> rusqlite::Result<Option<BucketCounts>> {
    // The key over a row (a count has one bucket: grouping by a constant lets SQLite count a
    // partial hour on the `created_at` index alone).
    let row_key = by.map_or("''", key_sql);
    // The key over the counts; actors have their own tables.
    let actors = by == Some(StatsBy::Actor);
    let counts_key = match by {
        None => "''",
        Some(StatsBy::Action) => "action",
        Some(StatsBy::Outcome) => "outcome",
        Some(StatsBy::Day) => "substr(hour, 1, 10)",
        Some(StatsBy::Hour) => "hour",
        Some(StatsBy::Actor) => "actor",
    };
    // The fields the counts can be narrowed by besides the window.
    let kept = if actors {
        Filter::default()
    } else {
        Filter {
            action: filter.action.clone(),
            action_prefix: filter.action_prefix.clone(),
            action_contains: filter.action_contains.clone(),
            exclude_action_prefixes: filter.exclude_action_prefixes.clone(),
            outcome: filter.outcome,
            ..Filter::default()
        }
    };
    let with_window = Filter {
        since: filter.since,
        until: filter.until,
        ..kept.clone()
    };
    if *filter != with_window || !has_counts(conn)? {
        return Ok(None);
    }
    let Some(parts) = window_parts(filter.since, filter.until, actors) else {
        return Ok(None);
    };
    let mut counts = BucketCounts::new();
    for part in parts {
        let (table, column, lower, upper) = match part {
            WindowPart::Rows(lower, upper) => {
                let Some(index) = edge_index(conn, &kept, &lower, &upper)? else {
                    continue;
                };
                let mut edge = Conditions::from_filter(&kept, Table::of_entries(conn)?);
                edge.push(
                    "created_at >= ? AND created_at < ?",
                    [Value::Text(lower), Value::Text(upper)],
                );
                let sql = format!(
                    "SELECT {row_key} AS bucket, count(*) FROM entries INDEXED BY {index} {} \
                     GROUP BY bucket",
                    edge.where_sql()
                );
                add_rows(conn, &sql, edge.values, &mut counts)?;
                continue;
            }
            WindowPart::Hours(lower, upper) if actors => ("actor_counts", "hour", lower, upper),
            WindowPart::Hours(lower, upper) => ("entry_counts", "hour", lower, upper),
            WindowPart::Days(lower, upper) => ("actor_day_counts", "day", lower, upper),
        };
        let mut conditions = Conditions::from_filter(&kept, Table::Other);
        if let Some(lower) = lower {
            conditions.push(format!("{column} >= ?"), [Value::Text(lower)]);
        }
        if let Some(upper) = upper {
            conditions.push(format!("{column} < ?"), [Value::Text(upper)]);
        }
        let sql = format!(
            "SELECT {counts_key}, n FROM {table} {}",
            conditions.where_sql()
        );
        add_rows(conn, &sql, conditions.values, &mut counts)?;
    }
    group_rows(conn, RECENT, filter, row_key, &mut counts)?;
    Ok(Some(counts))
}

/// How to read the rows of a partial hour `[lower, upper)` of a stats window narrowed by `kept`:
/// `None` when the counts show no sealed entry there that `kept` matches (nothing to read), else
/// the index to read them through: `created_at`'s (every row of the hour), or the action's when
/// the filter names one action with fewer entries in the whole log than the hour holds.
///
/// The counts are looked up over the hour keys from `lower`'s to `upper`'s, both included: every
/// row of the part has an hour key in that range (a cut compares as text, see [`window_parts`]),
/// so a sum of zero there means the part has no matching row.
fn edge_index(
    conn: &Connection,
    kept: &Filter,
    lower: &str,
    upper: &str,
) -> rusqlite::Result<Option<&'static str>> {
    let hour_of = |text: &str| text.get(..13).unwrap_or(text).to_string();
    let sum = |conditions: Conditions| -> rusqlite::Result<i64> {
        conn.prepare_cached(&format!(
            "SELECT coalesce(sum(n), 0) FROM entry_counts {}",
            conditions.where_sql()
        ))?
        .query_row(rusqlite::params_from_iter(conditions.values), |row| {
            row.get(0)
        })
    };
    let in_hours = |filter: &Filter| {
        let mut conditions = Conditions::from_filter(filter, Table::Other);
        conditions.push(
            "hour >= ? AND hour <= ?",
            [Value::Text(hour_of(lower)), Value::Text(hour_of(upper))],
        );
        conditions
    };
    if sum(in_hours(kept))? == 0 {
        return Ok(None);
    }
    if let Some(action) = &kept.action {
        let in_log = sum(Conditions::from_filter(
            &Filter {
                action: Some(action.clone()),
                ..Filter::default()
            },
            Table::Other,
        ))?;
        if in_log < sum(in_hours(&Filter::default()))? {
            return Ok(Some("entries_action"));
        }
    }
    Ok(Some("entries_created_at"))
}

/// Whether the file has the stats counts of schema version 6 and they hold every sealed entry. A
/// file of an earlier version opened by a read command has none; a file just upgraded, or one an
/// earlier release sealed entries into since, is counted a chunk at a time by its sidecar (see
/// `log::count_chunk`), and until then its stats group rows.
fn has_counts(conn: &Connection) -> rusqlite::Result<bool> {
    mark_covers_sealed(conn, "counted_through")
}

/// Whether the file has the table `name` (a file of an earlier version opened by a read command
/// is not migrated).
pub fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

/// Whether the one-row table `mark` (`counted_through`, `ranged_through`: how far a structure
/// kept beside `entries` goes) exists and holds an integer at or past every sealed entry.
pub(crate) fn mark_covers_sealed(conn: &Connection, mark: &str) -> rusqlite::Result<bool> {
    if !has_table(conn, mark)? {
        return Ok(false);
    }
    conn.prepare_cached(&format!(
        "SELECT (SELECT typeof(seq) = 'integer' AND seq >= \
         coalesce((SELECT max(seq) FROM entries), 0) FROM {mark})"
    ))?
    .query_row([], |row| row.get(0))
}

/// Day or hour buckets of a filter that is only a time window (or nothing), newest first, each
/// counted on the `created_at` index alone: the newest time left names the next bucket, whose
/// rows are one index range. Grouping instead reads every row of the window into a temporary
/// b-tree (70 ms for 30 days of a million-entry log); this reads the same index entries once and
/// sorts nothing.
///
/// `None` when a stored time is shorter than a bucket key (a damaged row), whose range would not
/// be its bucket: the caller then groups as usual.
fn time_buckets_by_seeking(
    conn: &Connection,
    filter: &Filter,
    by: StatsBy,
    limit: u32,
) -> rusqlite::Result<Option<Vec<Bucket>>> {
    let key_chars = match by {
        StatsBy::Hour => 13,
        _ => 10,
    };
    // The window's bounds and each bucket's are merged here into one lower and one upper bound:
    // given two bounds on one side, SQLite seeks by one and filters by the other, and would walk
    // from the window's start to every bucket.
    let since = filter.since.as_ref().map(format_timestamp);
    let mut upper: Option<String> = filter.until.as_ref().map(format_timestamp);
    let mut buckets = Vec::new();
    while buckets.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
        let newest: Option<String> =
            count_or_max(conn, "max(created_at)", since.clone(), upper.clone())?;
        let Some(newest) = newest else {
            break;
        };
        // What substr(created_at, 1, n) is in SQL: the first n characters.
        let key: String = newest.chars().take(key_chars).collect();
        if key.chars().count() < key_chars {
            return Ok(None);
        }
        let lower = since.clone().max(Some(key.clone()));
        let bucket_upper = match (prefix_upper_bound(&key), upper) {
            (Some(end), Some(upper)) => Some(end.min(upper)),
            (end, upper) => end.or(upper),
        };
        let count: Option<u64> = count_or_max(conn, "count(*)", lower, bucket_upper)?;
        buckets.push(Bucket {
            key: key.clone(),
            count: count.unwrap_or(0),
        });
        upper = Some(key);
    }
    buckets.reverse();
    // `recent` has no time index: its buckets are counted in one pass, then added; its entries
    // are the newest, so the newest `limit` buckets of both are kept.
    let mut conditions = Conditions::new(Table::Other);
    if let Some(since) = since {
        conditions.push("created_at >= ?", [Value::Text(since)]);
    }
    if let Some(until) = filter.until.as_ref().map(format_timestamp) {
        conditions.push("created_at < ?", [Value::Text(until)]);
    }
    let sql = format!(
        "SELECT substr(created_at, 1, {key_chars}), count(*) FROM {RECENT} {} GROUP BY 1",
        conditions.where_sql()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let recent = statement
        .query_map(rusqlite::params_from_iter(conditions.values), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if recent.is_empty() {
        return Ok(Some(buckets));
    }
    let mut counts: std::collections::BTreeMap<String, u64> = buckets
        .into_iter()
        .map(|bucket| (bucket.key, bucket.count))
        .collect();
    for (key, count) in recent {
        if key.chars().count() < key_chars {
            return Ok(None);
        }
        *counts.entry(key).or_default() += count;
    }
    let skip = counts
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Some(
        counts
            .into_iter()
            .skip(skip)
            .map(|(key, count)| Bucket { key, count })
            .collect(),
    ))
}

/// `SELECT {aggregate} FROM entries` over `created_at` in `[lower, upper)`, either bound absent
/// meaning unbounded.
fn count_or_max<T: rusqlite::types::FromSql>(
    conn: &Connection,
    aggregate: &str,
    lower: Option<String>,
    upper: Option<String>,
) -> rusqlite::Result<Option<T>> {
    let mut conditions = Conditions::new(Table::Other);
    if let Some(lower) = lower {
        conditions.push("created_at >= ?", [Value::Text(lower)]);
    }
    if let Some(upper) = upper {
        conditions.push("created_at < ?", [Value::Text(upper)]);
    }
    let sql = format!("SELECT {aggregate} FROM entries {}", conditions.where_sql());
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(conditions.values), |row| {
            row.get(0)
        })
}

#[cfg(test)]
mod tests;
