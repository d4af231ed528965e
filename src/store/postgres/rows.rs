//! Reading entries back out of PostgreSQL: rows to [`AuditEntry`], filters to SQL, keyset pages
//! on `gid`, counts and stats. The PostgreSQL twin of `sqlite_rows.rs`; the meaning of every
//! filter comes from [`crate::store::query`], so both stores answer the same question the same
//! way (the store test suite runs one set of assertions against both).
//!
//! Every value a user supplies reaches the database as a bound parameter; the SQL text is
//! assembled only from fixed fragments chosen by which filter fields are set.
//!
//! Listings read every log in `gid` order unless the filter names a log; each filter index ends
//! in `gid` (see the schema), so a page is one index range read in order however deep it is.

use std::net::IpAddr;

use chrono::{DateTime, NaiveDateTime, Utc};
use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use serde_json::Map;

use super::StatementCache;
use crate::entry::{AuditEntry, Outcome};
use crate::store::query::{
    prefix_upper_bound, Bucket, Page, StatsBy, ANONYMOUS_ACTOR, UNPARSED_METADATA_KEY,
};
use crate::store::query::{Cursor, Filter, IpFilter, Order, PageRequest, MAX_LIMIT};
use crate::store::StoreError;

/// The columns [`entry_from_row`] reads, by position.
pub const ENTRY_COLUMNS: &str = "seq, id, log_id, created_at, actor_id, actor_email, actor_name, \
     actor_source, actor_verified, tenant, action, resource_type, resource_id, outcome, status, \
     method, path, route, rule, ip, user_agent, request_id, duration_us, error, metadata, \
     verbatim, gid";

/// A bound parameter.
pub type Param = Box<dyn ToSql + Sync + Send>;

/// Borrows parameters the way the client takes them.
pub fn param_refs(values: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| value.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Builds an entry (and its `gid`) from a row selected with [`ENTRY_COLUMNS`].
///
/// As in SQLite, metadata that is not a JSON object is kept under `_unparsed` rather than
/// failing the row, and an unknown outcome is an error. An entry stored whole in `verbatim`
/// (it held a NUL character) is read from there.
pub fn entry_from_row(row: &Row) -> Result<(AuditEntry, u64), String> {
    let column = |error: postgres::Error| error.to_string();
    let gid: i64 = row.try_get(26).map_err(column)?;
    let gid = u64::try_from(gid).unwrap_or(0);
    if let Some(verbatim) = row.try_get::<_, Option<String>>(25).map_err(column)? {
        let entry = serde_json::from_str::<AuditEntry>(&verbatim)
            .map_err(|error| format!("the stored entry is not readable JSON: {error}"))?;
        return Ok((entry, gid));
    }
    let outcome_text: String = row.try_get(13).map_err(column)?;
    let outcome =
        Outcome::parse(&outcome_text).ok_or_else(|| format!("unknown outcome {outcome_text:?}"))?;
    let status = match row.try_get::<_, Option<i32>>(14).map_err(column)? {
        None => None,
        Some(status) => Some(
            u16::try_from(status).map_err(|_| format!("status {status} is not an HTTP status"))?,
        ),
    };
    let seq: i64 = row.try_get(0).map_err(column)?;
    // Durations are stored as the bits of the u64 (see `tree::entry_values`).
    let duration_us = row
        .try_get::<_, Option<i64>>(22)
        .map_err(column)?
        .map(|us| us as u64);
    let metadata_text: String = row.try_get(24).map_err(column)?;
    Ok((
        AuditEntry {
            seq: u64::try_from(seq).unwrap_or(0),
            id: row.try_get(1).map_err(column)?,
            log_id: row.try_get(2).map_err(column)?,
            created_at: row.try_get::<_, DateTime<Utc>>(3).map_err(column)?,
            actor_id: row.try_get(4).map_err(column)?,
            actor_email: row.try_get(5).map_err(column)?,
            actor_name: row.try_get(6).map_err(column)?,
            actor_source: row.try_get(7).map_err(column)?,
            actor_verified: row.try_get(8).map_err(column)?,
            tenant: row.try_get(9).map_err(column)?,
            action: row.try_get(10).map_err(column)?,
            resource_type: row.try_get(11).map_err(column)?,
            resource_id: row.try_get(12).map_err(column)?,
            outcome,
            status,
            method: row.try_get(15).map_err(column)?,
            path: row.try_get(16).map_err(column)?,
            route: row.try_get(17).map_err(column)?,
            rule: row.try_get(18).map_err(column)?,
            ip: row.try_get(19).map_err(column)?,
            user_agent: row.try_get(20).map_err(column)?,
            request_id: row.try_get(21).map_err(column)?,
            duration_us,
            error: row.try_get(23).map_err(column)?,
            metadata: metadata_from_text(&metadata_text),
        },
        gid,
    ))
}

fn metadata_from_text(raw: &str) -> Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => {
            let mut kept = Map::new();
            kept.insert(
                UNPARSED_METADATA_KEY.to_string(),
                serde_json::Value::from(raw.to_string()),
            );
            kept
        }
    }
}

/// Rows to entries for a listing: a row that is not an entry fails the listing, naming it.
fn entries_from_rows(rows: &[Row]) -> Result<Vec<(AuditEntry, u64)>, StoreError> {
    rows.iter()
        .map(|row| {
            entry_from_row(row).map_err(|message| {
                let seq: Option<i64> = row.try_get(0).ok();
                let log: Option<String> = row.try_get(2).ok();
                StoreError::Other(format!(
                    "entry {} of log {} is not readable: {message}",
                    seq.unwrap_or_default(),
                    log.unwrap_or_default()
                ))
            })
        })
        .collect()
}

/// SQL conditions and their bound values, numbered `$1, $2, ...` in order.
#[derive(Default)]
pub struct Conditions {
    clauses: Vec<String>,
    pub values: Vec<Param>,
}

/// Which actor columns the actor filter compares, so a listing can split the OR in two.
#[derive(Debug, Clone, Copy)]
enum ActorColumns {
    Either,
    Id,
    Email,
}

impl Conditions {
    /// Binds a value and returns its placeholder.
    pub fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    pub fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    pub fn from_filter(filter: &Filter) -> Conditions {
        let mut conditions = Conditions::default();
        conditions.add_filter(filter, ActorColumns::Either);
        conditions
    }

    fn add_filter(&mut self, filter: &Filter, actor_columns: ActorColumns) {
        if let Some(actor) = &filter.actor {
            let clause = match actor_columns {
                ActorColumns::Either => {
                    let id = self.bind(actor.clone());
                    let email = self.bind(actor.clone());
                    format!("(actor_id = {id} OR actor_email = {email})")
                }
                ActorColumns::Id => format!("actor_id = {}", self.bind(actor.clone())),
                ActorColumns::Email => format!("actor_email = {}", self.bind(actor.clone())),
            };
            self.push(clause);
        }
        if let Some(action) = &filter.action {
            let clause = format!("action = {}", self.bind(action.clone()));
            self.push(clause);
        }
        if let Some(prefix) = &filter.action_prefix {
            // The text columns are COLLATE "C" (byte order), so a prefix is a range on the
            // action index, exactly as in SQLite.
            let low = self.bind(prefix.clone());
            let clause = match prefix_upper_bound(prefix) {
                Some(upper) => format!("action >= {low} AND action < {}", self.bind(upper)),
                None => format!("action >= {low}"),
            };
            self.push(clause);
        }
        for prefix in &filter.exclude_action_prefixes {
            // The complement of the action_prefix range, in the same byte order.
            let low = self.bind(prefix.clone());
            let clause = match prefix_upper_bound(prefix) {
                Some(upper) => format!("NOT (action >= {low} AND action < {})", self.bind(upper)),
                None => format!("action < {low}"),
            };
            self.push(clause);
        }
        if let Some(fragment) = &filter.action_contains {
            let clause = format!(
                "lower(action) LIKE {} ESCAPE '\\'",
                self.bind(contains_pattern(fragment))
            );
            self.push(clause);
        }
        if let Some(resource_type) = &filter.resource_type {
            let clause = format!("resource_type = {}", self.bind(resource_type.clone()));
            self.push(clause);
        }
        if let Some(resource_id) = &filter.resource_id {
            let clause = format!("resource_id = {}", self.bind(resource_id.clone()));
            self.push(clause);
        }
        if let Some(outcome) = filter.outcome {
            let clause = format!("outcome = {}", self.bind(outcome.as_str().to_string()));
            self.push(clause);
        }
        if let Some(status) = filter.status {
            let (low, high) = status.range();
            let clause = if high == low + 1 {
                format!("status = {}", self.bind(i32::from(low)))
            } else {
                let low = self.bind(i32::from(low));
                format!(
                    "status >= {low} AND status < {}",
                    self.bind(i32::from(high))
                )
            };
            self.push(clause);
        }
        if let Some(ip) = &filter.ip {
            let clause = match *ip {
                IpFilter::Exact(address) => format!("ip = {}", self.bind(address.to_string())),
                IpFilter::Network(network) if network.prefix_len() == network.max_prefix_len() => {
                    format!("ip = {}", self.bind(network.addr().to_string()))
                }
                // `<<=`: inside the network or equal to it; served by the ip_net index.
                IpFilter::Network(network) => {
                    format!("ip_net <<= {}::text::inet", self.bind(network.to_string()))
                }
            };
            self.push(clause);
        }
        if let Some(since) = filter.since {
            let clause = format!("created_at >= {}", self.bind(since));
            self.push(clause);
        }
        if let Some(until) = filter.until {
            let clause = format!("created_at < {}", self.bind(until));
            self.push(clause);
        }
        if let Some(q) = &filter.q {
            let pattern = contains_pattern(q);
            let columns = [
                "actor_id",
                "actor_email",
                "action",
                "resource_type",
                "resource_id",
                "path",
            ];
            let any_column = |placeholder: &str, lowered: bool| {
                let clause = columns
                    .iter()
                    .map(|column| {
                        if lowered {
                            format!("lower({column}) LIKE {placeholder} ESCAPE '\\'")
                        } else {
                            format!("{column} LIKE {placeholder} ESCAPE '\\'")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ");
                format!("({clause})")
            };
            // Free text reads every row when little matches, and lower() copies each of the six
            // columns of each row (twice the time of the LIKEs themselves). Case folding changes
            // only ASCII letters, so a needle without any matches the columns as they are, and a
            // run of three or more non-letters in it is a necessary condition checked before
            // folding: over 200 000 entries "posts/4242" took 190 ms of one core, 65 ms so.
            if q.bytes().any(|byte| byte.is_ascii_alphabetic()) {
                if let Some(run) = letter_free_run(q) {
                    let placeholder = self.bind(contains_pattern(run));
                    self.push(any_column(&placeholder, false));
                }
                let placeholder = self.bind(pattern);
                self.push(any_column(&placeholder, true));
            } else {
                let placeholder = self.bind(pattern);
                self.push(any_column(&placeholder, false));
            }
        }
        if let Some(log_id) = &filter.log_id {
            let clause = format!("log_id = {}", self.bind(log_id.clone()));
            self.push(clause);
        }
    }

    /// The cursor's and the snapshot's conditions on `gid`.
    fn add_page(&mut self, page: &PageRequest) -> Result<(), StoreError> {
        if let Some(through) = page.through {
            let gid = global_position(through)?;
            let clause = format!("gid <= {}", self.bind(gid));
            self.push(clause);
        }
        if let Some(cursor) = page.cursor {
            let gid = global_position(cursor)?;
            let clause = match page.order {
                Order::Desc => format!("gid < {}", self.bind(gid)),
                Order::Asc => format!("gid > {}", self.bind(gid)),
            };
            self.push(clause);
        }
        Ok(())
    }

    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// A cursor's `gid`, or the refusal of a cursor from another kind of store.
fn global_position(cursor: Cursor) -> Result<i64, StoreError> {
    if cursor.kind() != crate::store::query::CursorKind::Global {
        return Err(StoreError::Cursor);
    }
    // Past i64::MAX no row can follow or precede; clamping keeps the comparison meaningful.
    Ok(i64::try_from(cursor.seq()).unwrap_or(i64::MAX))
}

/// The longest run of at least three characters of `needle` that are not ASCII letters: text
/// containing `needle` without regard to ASCII case contains this run exactly.
fn letter_free_run(needle: &str) -> Option<&str> {
    needle
        .split(|character: char| character.is_ascii_alphabetic())
        .filter(|run| run.chars().count() >= 3)
        .max_by_key(|run| run.len())
}

/// `%fragment%` for a case-insensitive LIKE on `lower(column)`, with `\`, `%` and `_` escaped.
fn contains_pattern(fragment: &str) -> String {
    let mut pattern = String::with_capacity(fragment.len() + 2);
    pattern.push('%');
    for character in fragment.to_ascii_lowercase().chars() {
        if matches!(character, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    }
}

/// Runs a query through the statement cache.
fn query(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    sql: &str,
    values: &[Param],
) -> Result<Vec<Row>, StoreError> {
    let statement = statements.get(client, sql)?;
    Ok(client.query(&statement, &param_refs(values))?)
}

/// One page of the entries matching `filter`, by keyset paging on `gid`.
pub fn list(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    filter: &Filter,
    page: &PageRequest,
) -> Result<Page, StoreError> {
    let limit = i64::from(page.limit.clamp(1, MAX_LIMIT)) + 1;
    let order = order_sql(page.order);
    let mut conditions = Conditions::default();
    let sql = if filter.actor.is_none() {
        conditions.add_filter(filter, ActorColumns::Either);
        conditions.add_page(page)?;
        let where_sql = conditions.where_sql();
        let limit = conditions.bind(limit);
        format!(
            "SELECT {ENTRY_COLUMNS} FROM entries {where_sql} ORDER BY gid {order} LIMIT {limit}"
        )
    } else {
        // As in SQLite: an OR over two indexes makes the planner collect and sort every match,
        // which for a busy account is its whole history; one page from each index, merged, costs
        // two pages. `= ANY(ARRAY(...))` rather than `IN (...)`: the array is computed first and
        // its rows fetched by gid; given `IN`, PostgreSQL without statistics on the table (a
        // fresh or bulk-loaded one) merges against a walk of every gid (13 ms for 200 000
        // entries, against under 1 ms).
        let mut arms = Vec::new();
        for columns in [ActorColumns::Id, ActorColumns::Email] {
            let mut arm = Conditions {
                values: std::mem::take(&mut conditions.values),
                clauses: Vec::new(),
            };
            arm.add_filter(filter, columns);
            arm.add_page(page)?;
            let where_sql = arm.where_sql();
            let arm_limit = arm.bind(limit);
            arms.push(format!(
                "(SELECT gid FROM entries {where_sql} ORDER BY gid {order} LIMIT {arm_limit})"
            ));
            conditions.values = arm.values;
        }
        let limit = conditions.bind(limit);
        format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE gid = ANY(ARRAY({})) ORDER BY gid {order} \
             LIMIT {limit}",
            arms.join(" UNION ALL ")
        )
    };
    let rows = query(client, statements, &sql, &conditions.values)?;
    let mut entries = entries_from_rows(&rows)?;
    let wanted = usize::try_from(page.limit.clamp(1, MAX_LIMIT)).unwrap_or(usize::MAX);
    let next_cursor = if entries.len() > wanted {
        entries.truncate(wanted);
        entries.last().map(|(_, gid)| Cursor::after_global(*gid))
    } else {
        None
    };
    let prev_cursor = entries.first().map(|(_, gid)| Cursor::after_global(*gid));
    let total = if page.count {
        Some(count(client, statements, filter)?)
    } else {
        None
    };
    Ok(Page {
        entries: entries.into_iter().map(|(entry, _)| entry).collect(),
        next_cursor,
        prev_cursor,
        total,
    })
}

/// Newest first, skipping `offset` entries (the reference endpoint's page numbers).
pub fn list_offset(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    filter: &Filter,
    offset: u64,
    limit: u32,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut conditions = Conditions::from_filter(filter);
    let where_sql = conditions.where_sql();
    let limit = conditions.bind(i64::from(limit.clamp(1, MAX_LIMIT)));
    let offset = conditions.bind(i64::try_from(offset).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM entries {where_sql} ORDER BY gid DESC LIMIT {limit} OFFSET {offset}"
    );
    let rows = query(client, statements, &sql, &conditions.values)?;
    Ok(entries_from_rows(&rows)?
        .into_iter()
        .map(|(entry, _)| entry)
        .collect())
}

/// How many entries match `filter`.
pub fn count(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    filter: &Filter,
) -> Result<u64, StoreError> {
    let conditions = Conditions::from_filter(filter);
    let sql = format!("SELECT count(*) FROM entries {}", conditions.where_sql());
    let rows = query(client, statements, &sql, &conditions.values)?;
    let count: i64 = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// One entry by its ULID (in any log) or, failing that, by its sequence number in `own_log`.
pub fn get(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    own_log: &str,
    id: &str,
) -> Result<Option<AuditEntry>, StoreError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id = $1 ORDER BY gid LIMIT 1");
    let rows = query(client, statements, &sql, &[Box::new(id.to_string())])?;
    if let Some((entry, _)) = entries_from_rows(&rows)?.into_iter().next() {
        return Ok(Some(entry));
    }
    let is_decimal = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    let Some(seq) = id.parse::<i64>().ok().filter(|_| is_decimal) else {
        return Ok(None);
    };
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE log_id = $1 AND seq = $2");
    let rows = query(
        client,
        statements,
        &sql,
        &[Box::new(own_log.to_string()), Box::new(seq)],
    )?;
    Ok(entries_from_rows(&rows)?
        .into_iter()
        .next()
        .map(|(entry, _)| entry))
}

/// Counts of the entries matching `filter`, grouped by `by`, at most `limit` buckets, in the
/// order `sqlite_rows::stats` documents.
pub fn stats(
    client: &mut impl GenericClient,
    statements: &mut StatementCache,
    filter: &Filter,
    by: StatsBy,
    limit: u32,
) -> Result<Vec<Bucket>, StoreError> {
    let mut conditions = Conditions::from_filter(filter);
    let where_sql = conditions.where_sql();
    let limit = conditions.bind(i64::from(limit));
    let time_unit = match by {
        StatsBy::Day => Some("day"),
        StatsBy::Hour => Some("hour"),
        _ => None,
    };
    if let Some(unit) = time_unit {
        // date_trunc over UTC wall time, formatted here: independent of the session's time zone
        // and DateStyle.
        let sql = format!(
            "SELECT bucket, n FROM (SELECT date_trunc('{unit}', created_at AT TIME ZONE 'UTC') AS \
             bucket, count(*) AS n FROM entries {where_sql} GROUP BY bucket ORDER BY bucket DESC \
             LIMIT {limit}) AS recent ORDER BY bucket ASC"
        );
        let rows = query(client, statements, &sql, &conditions.values)?;
        let format = if unit == "day" {
            "%Y-%m-%d"
        } else {
            "%Y-%m-%dT%H"
        };
        return rows
            .iter()
            .map(|row| {
                let bucket: NaiveDateTime = row.try_get(0)?;
                let count: i64 = row.try_get(1)?;
                Ok(Bucket {
                    key: bucket.format(format).to_string(),
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect();
    }
    let key = match by {
        StatsBy::Action => "action".to_string(),
        StatsBy::Outcome => "outcome".to_string(),
        _ => {
            format!("coalesce(nullif(actor_email, ''), nullif(actor_id, ''), '{ANONYMOUS_ACTOR}')")
        }
    };
    // COLLATE "C": ties come out in byte order, as in SQLite.
    let sql = format!(
        "SELECT bucket, n FROM (SELECT {key} AS bucket, count(*) AS n FROM entries {where_sql} \
         GROUP BY bucket) AS counted ORDER BY n DESC, bucket COLLATE \"C\" ASC LIMIT {limit}"
    );
    let rows = query(client, statements, &sql, &conditions.values)?;
    rows.iter()
        .map(|row| {
            let key: String = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            Ok(Bucket {
                key,
                count: u64::try_from(count).unwrap_or(0),
            })
        })
        .collect()
}

/// The address of `ip` for the `ip_net` column, or `None` when `ip` is not one.
pub fn ip_addr(ip: Option<&str>) -> Option<IpAddr> {
    ip.and_then(|ip| ip.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_free_run_is_the_longest_run_without_ascii_letters() {
        assert_eq!(letter_free_run("posts/4242"), Some("/4242"));
        assert_eq!(letter_free_run("a-1b/2c3"), None);
        assert_eq!(letter_free_run("10.2.3.4"), Some("10.2.3.4"));
        assert_eq!(letter_free_run("x_%1y\\é9"), Some("\\é9"));
        assert_eq!(letter_free_run("alice"), None);
    }

    #[test]
    fn free_text_prefilters_with_the_run_and_skips_folding_without_letters() {
        let filter = |q: &str| Filter {
            q: Some(q.into()),
            ..Filter::default()
        };
        let with_run = Conditions::from_filter(&filter("Posts/4242")).where_sql();
        assert!(with_run.contains("(actor_id LIKE $1"), "{with_run}");
        assert!(with_run.contains("lower(path) LIKE $2"), "{with_run}");
        let no_letters = Conditions::from_filter(&filter("4242")).where_sql();
        assert!(!no_letters.contains("lower("), "{no_letters}");
        let letters_only = Conditions::from_filter(&filter("alice")).where_sql();
        assert!(
            letters_only.contains("lower(path) LIKE $1"),
            "{letters_only}"
        );
        assert_eq!(letters_only.matches("LIKE").count(), 6);
    }
}
