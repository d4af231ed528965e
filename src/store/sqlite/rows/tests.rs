//! Tests of the SQLite read path against real databases created from `schema_v1.sql`.

use super::*;
use crate::store::query::ANONYMOUS_ACTOR;
use crate::store::query::{StatusFilter, DEFAULT_LIMIT};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::params;
use serde_json::json;

const SCHEMA: &str = include_str!("../schema_v1.sql");

/// A database with the tables and indexes the queries read: `entries` with the generation-led
/// indexes of schema version 8, and `recent`.
fn open() -> Connection {
    let conn = open_before_generations();
    conn.execute_batch(
        "DROP INDEX entries_actor_id; DROP INDEX entries_actor_email; \
         DROP INDEX entries_resource; DROP INDEX entries_resource_id; DROP INDEX entries_ip;",
    )
    .expect("drop the one-column indexes");
    conn.execute_batch(include_str!("../schema_v8.sql"))
        .expect("schema v8");
    conn.pragma_update(
        None,
        "user_version",
        super::super::GENERATION_SCHEMA_VERSION,
    )
    .expect("version");
    conn
}

/// [`open`] as a file of schema version 7 has it, read in place by a read command: the
/// one-column indexes of schema version 1.
fn open_before_generations() -> Connection {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch(SCHEMA).expect("schema");
    conn.execute_batch(include_str!("../schema_v4.sql"))
        .expect("schema v4");
    conn.pragma_update(None, "user_version", 7)
        .expect("version");
    register_functions(&conn).expect("functions");
    conn
}

/// Leaves the entries after `seq` unsealed: moves them into [`RECENT`], as the store holds its
/// newest entries between seals.
fn unseal_after(conn: &Connection, seq: u64) {
    conn.execute_batch(&format!(
        "INSERT INTO {RECENT} ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM entries WHERE seq > {seq};
         DELETE FROM entries WHERE seq > {seq};"
    ))
    .expect("unseal");
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("valid time")
}

/// The test's own insert, independent of the writer's: it states exactly what the schema holds.
fn insert(conn: &Connection, entry: &AuditEntry) {
    conn.execute(
        &format!(
            "INSERT INTO entries ({ENTRY_COLUMNS}) VALUES \
             (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        params![
            entry.seq,
            entry.id,
            entry.log_id,
            format_timestamp(&entry.created_at),
            entry.actor_id,
            entry.actor_email,
            entry.actor_name,
            entry.actor_source,
            entry.actor_verified,
            entry.tenant,
            entry.action,
            entry.resource_type,
            entry.resource_id,
            entry.outcome.as_str(),
            entry.status,
            entry.method,
            entry.path,
            entry.route,
            entry.rule,
            entry.ip,
            entry.user_agent,
            entry.request_id,
            entry.duration_us,
            entry.error,
            serde_json::to_string(&entry.metadata).expect("metadata"),
        ],
    )
    .expect("insert");
}

fn entry(seq: u64) -> AuditEntry {
    let mut entry = AuditEntry::new("log-a", "user.deleted");
    entry.id = format!("01JTEST{seq:019}");
    entry.seq = seq;
    entry.created_at = start() + Duration::minutes(seq as i64);
    entry.outcome = Outcome::Success;
    entry.status = Some(204);
    entry
}

/// A deterministic pseudo-random stream (xorshift), so failures reproduce.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

const ACTIONS: [&str; 11] = [
    "user.deleted",
    "user.created",
    "user.role_changed",
    "users.listed",
    "post.created",
    "auth.login_failed",
    "http.post",
    "Ünïcode.action",
    // auditgate's own entries, and an app action that only looks like them.
    "audit.query",
    "audit.export",
    "auditor.note",
];
const IPS: [&str; 10] = [
    "10.0.0.1",
    "10.1.2.3",
    "10.255.255.255",
    "11.0.0.1",
    "172.16.5.4",
    "172.32.0.1",
    "192.168.1.77",
    "2001:db8::1",
    "2001:db8:0:1::5",
    "fe80::1",
];

/// A varied log: several thousand entries over about three weeks.
fn varied(conn: &Connection, rows: u64) -> Vec<AuditEntry> {
    varied_at(conn, rows, |n| n)
}

/// [`varied`] with the `n`th entry at log position `position(n)` (increasing), so that a test can
/// spread the same entries over several generations of the indexes (`schema_v8.sql`).
fn varied_at(conn: &Connection, rows: u64, position: Position) -> Vec<AuditEntry> {
    let all = varied_unanalysed(conn, rows, position);
    conn.execute_batch("ANALYZE").expect("analyze");
    all
}

/// [`varied_at`] without planner statistics, as a live log has none.
fn varied_unanalysed(conn: &Connection, rows: u64, position: Position) -> Vec<AuditEntry> {
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let transaction = conn.unchecked_transaction().expect("begin");
    let mut all = Vec::new();
    for seq in 1..=rows {
        let mut entry = entry(seq);
        entry.seq = position(seq);
        // Mostly increasing, with some jitter: created_at is when the request arrived, and a
        // slow request is appended after faster later ones.
        entry.created_at = start() + Duration::seconds((seq * 300) as i64 - dice.roll(900) as i64);
        entry.action = ACTIONS[dice.roll(ACTIONS.len() as u64) as usize].to_string();
        let actor = dice.roll(60);
        match actor % 4 {
            0 => {}
            1 => entry.actor_id = Some(format!("u{actor}")),
            _ => {
                entry.actor_id = Some(format!("u{actor}"));
                entry.actor_email = Some(format!("User{actor}@Example.com"));
            }
        }
        if dice.roll(3) > 0 {
            entry.resource_type = Some(["user", "post", "team"][dice.roll(3) as usize].into());
            entry.resource_id = Some(dice.roll(200).to_string());
        }
        entry.status = match dice.roll(10) {
            0 => None,
            1 => Some(404),
            2 => Some(403),
            3 => Some(500),
            4 => Some(502),
            5 => Some(302),
            _ => Some(200),
        };
        entry.outcome = entry
            .status
            .map(Outcome::from_status)
            .unwrap_or(Outcome::Unknown);
        entry.ip = (dice.roll(20) > 0).then(|| IPS[dice.roll(IPS.len() as u64) as usize].into());
        entry.path = Some(format!("/api/items/{}", dice.roll(1000)));
        entry.log_id = if dice.roll(10) == 0 { "log-b" } else { "log-a" }.into();
        all.push(entry.clone());
        insert(&transaction, &entry);
    }
    transaction.commit().expect("commit");
    all
}

/// What a filter means, written independently of the SQL, to check the SQL against.
fn oracle(filter: &Filter, entry: &AuditEntry) -> bool {
    let contains_ci = |haystack: &Option<String>, needle: &str| {
        haystack.as_deref().is_some_and(|text| {
            text.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        })
    };
    filter.actor.as_ref().is_none_or(|actor| {
        entry.actor_id.as_ref() == Some(actor) || entry.actor_email.as_ref() == Some(actor)
    }) && filter
        .action
        .as_ref()
        .is_none_or(|action| &entry.action == action)
        && filter
            .action_prefix
            .as_ref()
            .is_none_or(|prefix| entry.action.starts_with(prefix.as_str()))
        && filter
            .action_contains
            .as_ref()
            .is_none_or(|fragment| contains_ci(&Some(entry.action.clone()), fragment))
        && !filter
            .exclude_action_prefixes
            .iter()
            .any(|prefix| entry.action.starts_with(prefix.as_str()))
        && filter
            .resource_type
            .as_ref()
            .is_none_or(|value| entry.resource_type.as_ref() == Some(value))
        && filter
            .resource_id
            .as_ref()
            .is_none_or(|value| entry.resource_id.as_ref() == Some(value))
        && filter
            .outcome
            .is_none_or(|outcome| entry.outcome == outcome)
        && filter
            .status
            .is_none_or(|status| entry.status.is_some_and(|value| status.matches(value)))
        && filter.ip.is_none_or(|ip| {
            entry
                .ip
                .as_deref()
                .and_then(|text| text.parse().ok())
                .is_some_and(|address| ip.matches(address))
        })
        && filter.since.is_none_or(|since| entry.created_at >= since)
        && filter.until.is_none_or(|until| entry.created_at < until)
        && filter.q.as_ref().is_none_or(|q| {
            [
                &entry.actor_id,
                &entry.actor_email,
                &Some(entry.action.clone()),
                &entry.resource_type,
                &entry.resource_id,
                &entry.path,
            ]
            .iter()
            .any(|field| contains_ci(field, q))
        })
        && filter
            .log_id
            .as_ref()
            .is_none_or(|log_id| &entry.log_id == log_id)
}

/// The sequence numbers of the entries the oracle says `filter` matches, ascending.
fn matching(all: &[AuditEntry], filter: &Filter) -> Vec<u64> {
    all.iter()
        .filter(|entry| oracle(filter, entry))
        .map(|entry| entry.seq)
        .collect()
}

fn all_pages(conn: &Connection, filter: &Filter, order: Order, limit: u32) -> Vec<AuditEntry> {
    all_pages_planned(conn, filter, order, limit, NARROW_RANGE_MAX_ROWS)
}

fn all_pages_planned(
    conn: &Connection,
    filter: &Filter,
    order: Order,
    limit: u32,
    narrow_range_max_rows: u64,
) -> Vec<AuditEntry> {
    let knobs = Knobs {
        narrow_range_max_rows,
        walk_extensions: WALK_EXTENSIONS,
    };
    all_pages_with(conn, filter, order, limit, knobs)
}

fn all_pages_with(
    conn: &Connection,
    filter: &Filter,
    order: Order,
    limit: u32,
    knobs: Knobs,
) -> Vec<AuditEntry> {
    let mut found = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_with(
            conn,
            filter,
            &PageRequest {
                limit,
                cursor,
                order,
                count: false,
                through: None,
            },
            knobs,
        )
        .expect("list");
        assert!(page.entries.len() <= limit as usize);
        found.extend(page.entries);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return found,
        }
    }
}

fn seqs(entries: &[AuditEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

/// The filter that `set` makes of the empty one.
fn filter_with(set: impl FnOnce(&mut Filter)) -> Filter {
    let mut filter = Filter::default();
    set(&mut filter);
    filter
}

fn ip_filter(text: &str) -> Option<IpFilter> {
    Some(text.parse().expect("ip filter"))
}

fn sample_filters() -> Vec<(&'static str, Filter)> {
    let at = |days: i64| Some(start() + Duration::days(days));
    vec![
        ("everything", Filter::default()),
        ("actor by id", filter_with(|f| f.actor = Some("u5".into()))),
        (
            "actor by email",
            filter_with(|f| f.actor = Some("User6@Example.com".into())),
        ),
        (
            "email is exact, not case-folded",
            filter_with(|f| f.actor = Some("user6@example.com".into())),
        ),
        (
            "action",
            filter_with(|f| f.action = Some("user.created".into())),
        ),
        (
            "prefix user.",
            filter_with(|f| f.action_prefix = Some("user.".into())),
        ),
        (
            "prefix user",
            filter_with(|f| f.action_prefix = Some("user".into())),
        ),
        (
            "prefix unicode",
            filter_with(|f| f.action_prefix = Some("Ünï".into())),
        ),
        (
            "prefix is case-sensitive",
            filter_with(|f| f.action_prefix = Some("USER".into())),
        ),
        (
            "contains",
            filter_with(|f| f.action_contains = Some("CREATED".into())),
        ),
        (
            "exclude audit.",
            filter_with(|f| f.exclude_action_prefixes = vec!["audit.".into()]),
        ),
        (
            "exclude several",
            filter_with(|f| {
                f.exclude_action_prefixes = vec!["audit.".into(), "user".into(), "http.".into()]
            }),
        ),
        (
            "exclude inside a prefix",
            filter_with(|f| {
                f.action_prefix = Some("user".into());
                f.exclude_action_prefixes = vec!["user.".into()];
            }),
        ),
        (
            "exclude is case-sensitive",
            filter_with(|f| f.exclude_action_prefixes = vec!["AUDIT.".into()]),
        ),
        (
            "exclude unicode with actor and window",
            filter_with(|f| {
                f.actor = Some("User6@Example.com".into());
                f.exclude_action_prefixes = vec!["Ünï".into(), "audit.".into()];
                f.since = at(2);
                f.until = at(12);
            }),
        ),
        (
            "resource type",
            filter_with(|f| f.resource_type = Some("team".into())),
        ),
        (
            "resource",
            filter_with(|f| {
                f.resource_type = Some("user".into());
                f.resource_id = Some("17".into());
            }),
        ),
        (
            "resource id alone",
            filter_with(|f| f.resource_id = Some("17".into())),
        ),
        (
            "outcome",
            filter_with(|f| f.outcome = Some(Outcome::Unknown)),
        ),
        (
            "status",
            filter_with(|f| f.status = Some(StatusFilter::Exact(404))),
        ),
        (
            "status class",
            filter_with(|f| f.status = Some(StatusFilter::Class(5))),
        ),
        ("ip exact", filter_with(|f| f.ip = ip_filter("10.1.2.3"))),
        (
            "ip exact v6 any case",
            filter_with(|f| f.ip = ip_filter("2001:DB8::1")),
        ),
        ("ip /8", filter_with(|f| f.ip = ip_filter("10.0.0.0/8"))),
        ("ip /12", filter_with(|f| f.ip = ip_filter("172.16.0.0/12"))),
        ("ip /32", filter_with(|f| f.ip = ip_filter("10.0.0.1/32"))),
        ("ip /0", filter_with(|f| f.ip = ip_filter("0.0.0.0/0"))),
        (
            "ip v6 /32",
            filter_with(|f| f.ip = ip_filter("2001:db8::/32")),
        ),
        (
            "ip v6 /64",
            filter_with(|f| f.ip = ip_filter("2001:db8:0:1::/64")),
        ),
        ("ip v6 /10", filter_with(|f| f.ip = ip_filter("fe80::/10"))),
        ("since", filter_with(|f| f.since = at(10))),
        ("until", filter_with(|f| f.until = at(3))),
        (
            "window",
            filter_with(|f| {
                f.since = at(4);
                f.until = at(5);
            }),
        ),
        (
            "q email case-insensitive",
            filter_with(|f| f.q = Some("user7@EXAMPLE".into())),
        ),
        ("q path", filter_with(|f| f.q = Some("items/12".into()))),
        ("log", filter_with(|f| f.log_id = Some("log-b".into()))),
        (
            "actor with a window and a status class",
            filter_with(|f| {
                f.actor = Some("User6@Example.com".into());
                f.status = Some(StatusFilter::Class(2));
                f.since = at(2);
                f.until = at(12);
            }),
        ),
        (
            "everything at once",
            filter_with(|f| {
                f.action_prefix = Some("user".into());
                f.outcome = Some(Outcome::Success);
                f.status = Some(StatusFilter::Class(2));
                f.since = at(1);
                f.until = at(15);
                f.ip = ip_filter("10.0.0.0/8");
                f.log_id = Some("log-a".into());
            }),
        ),
    ]
}

#[test]
fn entry_columns_are_the_schema_columns_in_order() {
    let conn = open();
    let mut statement = conn
        .prepare("SELECT name FROM pragma_table_info('entries') ORDER BY cid")
        .expect("prepare");
    let names: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("names");
    assert_eq!(
        names.join(", "),
        ENTRY_COLUMNS
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[test]
fn a_full_entry_round_trips() {
    let conn = open();
    let mut full = entry(7);
    full.actor_id = Some("u1".into());
    full.actor_email = Some("alice@example.com".into());
    full.actor_name = Some("Alice Ünïcode".into());
    full.actor_source = Some("jwt".into());
    full.actor_verified = true;
    full.tenant = Some("acme".into());
    full.resource_type = Some("user".into());
    full.resource_id = Some("42".into());
    full.outcome = Outcome::Failure;
    full.status = Some(403);
    full.method = Some("DELETE".into());
    full.path = Some("/api/users/42".into());
    full.route = Some("/api/users/{id}".into());
    full.rule = Some("delete user".into());
    full.ip = Some("2001:db8::1".into());
    full.user_agent = Some("curl/8".into());
    full.request_id = Some("req-1".into());
    full.duration_us = Some(12_345);
    full.error = Some("upstream refused".into());
    full.created_at = start() + Duration::microseconds(123_456);
    full.metadata.insert("newRole".into(), json!("admin"));
    full.metadata
        .insert("nested".into(), json!({"a": [1, null, true]}));
    insert(&conn, &full);
    insert(&conn, &entry(8));

    assert_eq!(get(&conn, &full.id).expect("get"), Some(full.clone()));
    assert_eq!(get(&conn, "7").expect("get by seq"), Some(full.clone()));
    assert_eq!(get(&conn, "8").expect("get by seq").map(|e| e.seq), Some(8));
    assert_eq!(get(&conn, "9").expect("missing"), None);
    assert_eq!(get(&conn, "").expect("empty"), None);
    assert_eq!(
        get(&conn, "07")
            .expect("leading zero is still seq 7")
            .map(|e| e.seq),
        Some(7)
    );
    assert_eq!(get(&conn, "-7").expect("negative"), None);
    assert_eq!(get(&conn, "99999999999999999999").expect("past i64"), None);
    assert_eq!(get(&conn, "' OR 1=1 --").expect("injection"), None);
}

#[test]
fn an_all_digit_ulid_is_found_by_id_before_seq() {
    let conn = open();
    let mut first = entry(1);
    first.id = "2".repeat(26);
    insert(&conn, &first);
    let mut second = entry(2);
    second.id = "01JSECOND00000000000000000".into();
    insert(&conn, &second);
    assert_eq!(
        get(&conn, &"2".repeat(26)).expect("get").map(|e| e.seq),
        Some(1)
    );
    assert_eq!(get(&conn, "2").expect("get").map(|e| e.seq), Some(2));
}

#[test]
fn damaged_metadata_is_kept_raw_instead_of_failing() {
    let conn = open();
    for seq in 1..=4 {
        insert(&conn, &entry(seq));
    }
    conn.execute(
        "UPDATE entries SET metadata = '{not json' WHERE seq = 1",
        [],
    )
    .expect("update");
    conn.execute("UPDATE entries SET metadata = '[1,2]' WHERE seq = 2", [])
        .expect("update");
    conn.execute("UPDATE entries SET metadata = X'FF00' WHERE seq = 3", [])
        .expect("update");
    let page = list(&conn, &Filter::default(), &PageRequest::default()).expect("list");
    let by_seq = |seq: u64| {
        page.entries
            .iter()
            .find(|entry| entry.seq == seq)
            .expect("present")
            .metadata
            .clone()
    };
    assert_eq!(json!(by_seq(1)), json!({"_unparsed": "{not json"}));
    assert_eq!(json!(by_seq(2)), json!({"_unparsed": "[1,2]"}));
    assert_eq!(json!(by_seq(3)), json!({"_unparsed": "\u{FFFD}\u{0}"}));
    assert_eq!(json!(by_seq(4)), json!({}));
}

#[test]
fn a_damaged_timestamp_or_outcome_is_an_error_not_a_guess() {
    let conn = open();
    insert(&conn, &entry(1));
    conn.execute("UPDATE entries SET created_at = 'yesterday'", [])
        .expect("update");
    assert!(get(&conn, "1").is_err());
    conn.execute(
        "UPDATE entries SET created_at = '2026-01-01T00:00:00.000000Z', outcome = 'fine'",
        [],
    )
    .expect("update");
    let error = get(&conn, "1").expect_err("bad outcome");
    assert!(error.to_string().contains("unknown outcome"), "{error}");
}

#[test]
fn every_filter_matches_its_meaning() {
    // All sealed, then the newest 700 entries unsealed: every answer must be the same.
    for unsealed in [0, 700] {
        let conn = open();
        let all = varied(&conn, 3000);
        unseal_after(&conn, 3000 - unsealed);
        every_filter_matches_its_meaning_in(&conn, &all, unsealed);
    }
}

/// Where [`varied_at`] puts its `n`th entry.
type Position = fn(u64) -> u64;

/// Layouts of the same entries over the log's positions, for the generation-led indexes
/// (`schema_v8.sql`, a generation is 2^20 positions): every entry in the first generation; spread
/// over five; two dense runs with two empty generations between them.
const LAYOUTS: [(&str, Position); 3] = [
    ("one generation", |n| n),
    ("spread", |n| n * 1_499),
    ("two runs and a gap", |n| {
        if n <= 1_500 {
            n
        } else {
            (3 << 20) + n
        }
    }),
];

/// The same filters over entries whose positions span several generations, one of them in a
/// run after generations that hold nothing: every filter still finds each match once, in order,
/// in both orders, by keyset and by offset, and counts them.
#[test]
fn every_filter_matches_its_meaning_across_generations() {
    for (layout, position) in LAYOUTS.into_iter().skip(1) {
        for unsealed in [0, 700] {
            let conn = open();
            let all = varied_at(&conn, 3000, position);
            unseal_after(&conn, position(3000 - unsealed));
            assert!(
                all.last().is_some_and(|entry| entry.seq >= 3 << 20),
                "{layout} spans generations"
            );
            every_filter_matches_its_meaning_in(&conn, &all, unsealed);
        }
    }
}

fn every_filter_matches_its_meaning_in(conn: &Connection, all: &[AuditEntry], unsealed: u64) {
    for (name, filter) in sample_filters() {
        let mut expected = matching(all, &filter);
        expected.reverse();
        // Both plans: ranges read through their index, and ranges left to SQLite.
        for narrow_range_max_rows in [NARROW_RANGE_MAX_ROWS, 0] {
            let found = all_pages_planned(conn, &filter, Order::Desc, 97, narrow_range_max_rows);
            assert_eq!(
                seqs(&found),
                expected,
                "{name}, {narrow_range_max_rows}, {unsealed} unsealed"
            );
            let found = all_pages_planned(conn, &filter, Order::Asc, 97, narrow_range_max_rows);
            let mut ascending = expected.clone();
            ascending.reverse();
            assert_eq!(seqs(&found), ascending, "{name} asc, {unsealed} unsealed");
        }
        assert_eq!(
            count(conn, &filter).expect("count"),
            expected.len() as u64,
            "{name}, {unsealed} unsealed"
        );
        // Page-number paging crosses from the unsealed entries into the sealed ones.
        let mut by_offset = Vec::new();
        for offset in (0..expected.len() as u64 + 1).step_by(301) {
            by_offset.extend(seqs(
                &list_offset(conn, &filter, offset, 301).expect("offset"),
            ));
        }
        assert_eq!(by_offset, expected, "{name} by offset, {unsealed} unsealed");
        // The sample filters would prove nothing if they matched nothing or everything, apart
        // from the ones meant to.
        let meant_empty = [
            "email is exact, not case-folded",
            "prefix is case-sensitive",
        ];
        if meant_empty.contains(&name) {
            assert!(expected.is_empty(), "{name} should match nothing");
        } else if name == "exclude is case-sensitive" {
            assert_eq!(expected.len(), all.len(), "{name} should leave out nothing");
        } else if !["everything", "ip /0"].contains(&name) {
            assert!(
                !expected.is_empty() && expected.len() < all.len(),
                "{name} is not selective"
            );
        }
    }
}

#[test]
fn keyset_pages_cover_every_match_once_in_both_orders() {
    let conn = open();
    let all = varied(&conn, 500);
    let filter = filter_with(|f| f.action_prefix = Some("user".into()));
    let expected: Vec<u64> = all
        .iter()
        .filter(|entry| oracle(&filter, entry))
        .map(|entry| entry.seq)
        .collect();
    for limit in [1, 7, 50, 1000] {
        let ascending = all_pages(&conn, &filter, Order::Asc, limit);
        assert_eq!(seqs(&ascending), expected, "asc limit {limit}");
        let descending = all_pages(&conn, &filter, Order::Desc, limit);
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(seqs(&descending), reversed, "desc limit {limit}");
    }
}

#[test]
fn next_cursor_is_absent_exactly_when_nothing_follows() {
    let conn = open();
    for seq in 1..=10 {
        insert(&conn, &entry(seq));
    }
    let request = |limit, cursor, order| PageRequest {
        limit,
        cursor,
        order,
        count: true,
        through: None,
    };
    let page = list(&conn, &Filter::default(), &request(10, None, Order::Desc)).expect("list");
    assert_eq!(page.entries.len(), 10);
    assert_eq!(page.next_cursor, None, "exactly a full page, nothing after");
    assert_eq!(page.total, Some(10));

    let page = list(&conn, &Filter::default(), &request(4, None, Order::Desc)).expect("list");
    assert_eq!(seqs(&page.entries), [10, 9, 8, 7]);
    assert_eq!(page.next_cursor, Some(Cursor::after_seq(7)));
    assert_eq!(page.prev_cursor, Some(Cursor::after_seq(10)));

    let page = list(
        &conn,
        &Filter::default(),
        &request(4, page.next_cursor, Order::Desc),
    )
    .expect("list");
    assert_eq!(seqs(&page.entries), [6, 5, 4, 3]);
    assert_eq!(page.total, Some(10), "the total ignores the cursor");

    // Walking back from the second page's first row gives the rows above it, oldest first.
    let back = list(
        &conn,
        &Filter::default(),
        &request(4, page.prev_cursor, Order::Asc),
    )
    .expect("list");
    assert_eq!(seqs(&back.entries), [7, 8, 9, 10]);
    assert_eq!(back.next_cursor, None);

    // Polling above the newest row finds nothing now, and new rows once appended.
    let newest = Some(Cursor::after_seq(10));
    let poll = list(&conn, &Filter::default(), &request(4, newest, Order::Asc)).expect("list");
    assert!(poll.entries.is_empty());
    assert_eq!((poll.next_cursor, poll.prev_cursor), (None, None));
    insert(&conn, &entry(11));
    let poll = list(&conn, &Filter::default(), &request(4, newest, Order::Asc)).expect("list");
    assert_eq!(seqs(&poll.entries), [11]);

    let far = Some(Cursor::after_seq(u64::MAX));
    let page = list(&conn, &Filter::default(), &request(3, far, Order::Desc)).expect("list");
    assert_eq!(seqs(&page.entries), [11, 10, 9]);
    let page = list(&conn, &Filter::default(), &request(3, far, Order::Asc)).expect("list");
    assert!(page.entries.is_empty());
}

#[test]
fn out_of_range_limits_are_clamped_rather_than_trusted() {
    let conn = open();
    for seq in 1..=3 {
        insert(&conn, &entry(seq));
    }
    let page = list(
        &conn,
        &Filter::default(),
        &PageRequest {
            limit: 0,
            ..PageRequest::default()
        },
    )
    .expect("list");
    assert_eq!(page.entries.len(), 1);
    assert_eq!(PageRequest::default().limit, DEFAULT_LIMIT);
}

#[test]
fn since_is_inclusive_and_until_exclusive() {
    let conn = open();
    for seq in 1..=5 {
        insert(&conn, &entry(seq)); // one a minute from start() + 1m
    }
    let at = |minutes| Some(start() + Duration::minutes(minutes));
    let filter = filter_with(|f| {
        f.since = at(2);
        f.until = at(4);
    });
    assert_eq!(seqs(&all_pages(&conn, &filter, Order::Asc, 50)), [2, 3]);
    // Sub-second precision is kept on both sides.
    let filter =
        filter_with(|f| f.since = Some(start() + Duration::minutes(2) + Duration::microseconds(1)));
    assert_eq!(seqs(&all_pages(&conn, &filter, Order::Asc, 50)), [3, 4, 5]);
}

#[test]
fn like_wildcards_in_user_text_match_only_themselves() {
    let conn = open();
    let paths = ["/100%", "/a_b", "/a\\b", "/axb", "/1000", "/plain"];
    for (index, path) in paths.iter().enumerate() {
        let mut row = entry(index as u64 + 1);
        row.path = Some((*path).into());
        insert(&conn, &row);
    }
    let found = |q: &str| {
        let filter = filter_with(|f| f.q = Some(q.into()));
        all_pages(&conn, &filter, Order::Asc, 50)
            .into_iter()
            .filter_map(|entry| entry.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(found("%"), ["/100%"]);
    assert_eq!(found("_"), ["/a_b"]);
    assert_eq!(found("a_b"), ["/a_b"]);
    assert_eq!(found("\\"), ["/a\\b"]);
    assert_eq!(found("a\\b"), ["/a\\b"]);
    assert_eq!(found("00%"), ["/100%"]);
    assert_eq!(found("PLAIN"), ["/plain"]);
    let contains = filter_with(|f| f.action_contains = Some("_".into()));
    assert!(all_pages(&conn, &contains, Order::Asc, 50).is_empty());
}

/// The reference endpoint's `action` substring: ASCII letters without case, `%`, `_` and `\`
/// only themselves, exactly the rows `action LIKE '%fragment%' ESCAPE '\'` finds (what it was
/// before it used the free-text function), counted the same.
#[test]
fn action_contains_matches_like_a_case_insensitive_literal_substring() {
    let conn = open();
    let actions = [
        "user.100%",
        "user_x",
        "USER.Created",
        "userxcreated",
        "post.Üser",
        "post.über",
        "a\\b",
        "straße",
    ];
    for (index, action) in actions.iter().enumerate() {
        let mut row = entry(index as u64 + 1);
        row.action = (*action).into();
        insert(&conn, &row);
    }
    let found = |fragment: &str| {
        let filter = filter_with(|f| f.action_contains = Some(fragment.into()));
        let listed: Vec<String> = all_pages(&conn, &filter, Order::Asc, 50)
            .into_iter()
            .map(|entry| entry.action)
            .collect();
        assert_eq!(
            count(&conn, &filter).expect("count"),
            listed.len() as u64,
            "{fragment:?}"
        );
        listed
    };
    assert_eq!(found("%"), ["user.100%"]);
    assert_eq!(found("0%"), ["user.100%"]);
    assert_eq!(found("_"), ["user_x"]);
    assert_eq!(found("r_x"), ["user_x"]);
    assert_eq!(found("\\"), ["a\\b"]);
    assert_eq!(found("uSeR.c"), ["USER.Created"]);
    assert_eq!(
        found("user"),
        ["user.100%", "user_x", "USER.Created", "userxcreated"]
    );
    // Only ASCII letters fold, as in LIKE.
    assert_eq!(found("Üser"), ["post.Üser"]);
    assert_eq!(found("üser"), Vec::<String>::new());
    assert_eq!(found("SS"), Vec::<String>::new());
    for fragment in [
        "", "%", "_", "\\", "user", "USER", "x", "ü", "Ü", "ß", "r.1", "%_", "created",
    ] {
        let mut like = conn
            .prepare("SELECT action FROM entries WHERE action LIKE ? ESCAPE '\\' ORDER BY seq")
            .expect("prepare");
        let by_like: Vec<String> = like
            .query_map([super::contains_pattern(fragment)], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(found(fragment), by_like, "{fragment:?}");
    }
}

#[test]
fn hostile_filter_values_are_data_not_sql() {
    let conn = open();
    insert(&conn, &entry(1));
    let hostile = "x' OR '1'='1'; DROP TABLE entries; --";
    let filter = filter_with(|f| {
        f.actor = Some(hostile.into());
        f.action = Some(hostile.into());
        f.action_prefix = Some(hostile.into());
        f.action_contains = Some(hostile.into());
        f.exclude_action_prefixes = vec![hostile.into(), "'".into()];
        f.resource_type = Some(hostile.into());
        f.resource_id = Some(hostile.into());
        f.q = Some(hostile.into());
        f.log_id = Some(hostile.into());
    });
    let (sql, values) = where_clause(&filter);
    assert!(!sql.contains("DROP"), "{sql}");
    assert_eq!(sql.matches('?').count(), values.len());
    assert_eq!(count(&conn, &filter).expect("count"), 0);
    for only_one in [
        filter_with(|f| f.q = Some(hostile.into())),
        filter_with(|f| f.action_prefix = Some(hostile.into())),
    ] {
        assert_eq!(count(&conn, &only_one).expect("count"), 0);
    }
    assert_eq!(count(&conn, &Filter::default()).expect("table intact"), 1);
}

#[test]
fn an_empty_filter_has_no_where_clause() {
    assert_eq!(
        where_clause(&Filter::default()),
        (String::new(), Vec::new())
    );
}

#[test]
fn prefix_upper_bound_is_the_next_string_up() {
    assert_eq!(prefix_upper_bound("user."), Some("user/".into()));
    assert_eq!(prefix_upper_bound("a\u{D7FF}"), Some("a\u{E000}".into()));
    assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".into()));
    assert_eq!(prefix_upper_bound("\u{10FFFF}\u{10FFFF}"), None);
    assert_eq!(prefix_upper_bound(""), None);

    let conn = open();
    for (index, action) in ["a", "a\u{10FFFF}", "a\u{10FFFF}z", "b", "\u{10FFFF}x"]
        .iter()
        .enumerate()
    {
        let mut row = entry(index as u64 + 1);
        row.action = (*action).into();
        insert(&conn, &row);
    }
    let prefixed = |prefix: &str| {
        let filter = filter_with(|f| f.action_prefix = Some(prefix.into()));
        seqs(&all_pages(&conn, &filter, Order::Asc, 50))
    };
    assert_eq!(prefixed("a\u{10FFFF}"), [2, 3]);
    assert_eq!(prefixed("\u{10FFFF}"), [5]);
    assert_eq!(prefixed(""), [1, 2, 3, 4, 5]);
    // Exclusion is the complement, on both sides of the upper bound.
    let excluded = |prefix: &str| {
        let filter = filter_with(|f| f.exclude_action_prefixes = vec![prefix.into()]);
        seqs(&all_pages(&conn, &filter, Order::Asc, 50))
    };
    assert_eq!(excluded("a\u{10FFFF}"), [1, 4, 5]);
    assert_eq!(excluded("\u{10FFFF}"), [1, 2, 3, 4]);
    assert_eq!(excluded("a"), [4, 5]);
}

#[test]
fn ip_function_checks_membership() {
    let conn = open();
    let ask = |ip: Option<&str>, cidr: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT auditgate_ip_in(?, ?)",
            rusqlite::params![ip, cidr],
            |row| row.get(0),
        )
    };
    assert_eq!(ask(Some("10.9.8.7"), "10.0.0.0/8"), Ok(true));
    assert_eq!(ask(Some("11.9.8.7"), "10.0.0.0/8"), Ok(false));
    assert_eq!(ask(Some("2001:db8::9"), "2001:db8::/32"), Ok(true));
    assert_eq!(
        ask(Some("10.9.8.7"), "::/0"),
        Ok(false),
        "v4 is not in a v6 net"
    );
    assert_eq!(ask(Some("::ffff:10.0.0.1"), "10.0.0.0/8"), Ok(false));
    assert_eq!(ask(None, "10.0.0.0/8"), Ok(false));
    assert_eq!(ask(Some("not an ip"), "10.0.0.0/8"), Ok(false));
    let error = ask(Some("10.0.0.1"), "10.0.0.0").expect_err("not a network");
    assert!(error.to_string().contains("not a CIDR network"), "{error}");
}

#[test]
fn canonical_prefixes_are_only_what_every_address_shares() {
    let prefix = |cidr: &str| canonical_text_prefix(&cidr.parse().expect("cidr"));
    assert_eq!(prefix("10.0.0.0/8"), Some("10.".into()));
    assert_eq!(prefix("172.16.0.0/12"), Some("172.".into()));
    assert_eq!(prefix("192.168.1.0/24"), Some("192.168.1.".into()));
    assert_eq!(prefix("10.0.0.0/7"), None);
    assert_eq!(prefix("2001:db8::/32"), Some("2001:db8:".into()));
    assert_eq!(
        prefix("2001:db8::/48"),
        Some("2001:db8:".into()),
        "stops at a zero group"
    );
    assert_eq!(prefix("fe80::/10"), None);
    assert_eq!(prefix("::/0"), None);
}

#[test]
fn stats_group_and_order_as_documented() {
    let conn = open();
    let rows: [(&str, Option<&str>, Option<&str>, &str); 7] = [
        (
            "user.deleted",
            Some("u1"),
            Some("a@x.com"),
            "2026-11-25T23:59:59.999999Z",
        ),
        (
            "user.deleted",
            Some("u1"),
            Some("a@x.com"),
            "2026-11-26T00:00:00.000000Z",
        ),
        (
            "user.deleted",
            Some("u2"),
            None,
            "2026-11-26T13:00:00.000000Z",
        ),
        (
            "post.created",
            Some("u2"),
            Some(""),
            "2026-11-26T13:30:00.000000Z",
        ),
        ("post.created", None, None, "2026-11-27T01:00:00.000000Z"),
        (
            "auth.login_failed",
            None,
            None,
            "2026-11-27T01:05:00.000000Z",
        ),
        (
            "auth.login_failed",
            Some(""),
            Some(""),
            "2026-11-28T09:00:00.000000Z",
        ),
    ];
    for (index, (action, actor_id, actor_email, created_at)) in rows.iter().enumerate() {
        let mut row = entry(index as u64 + 1);
        row.action = (*action).into();
        row.actor_id = actor_id.map(String::from);
        row.actor_email = actor_email.map(String::from);
        row.created_at = parse_timestamp(created_at).expect("time");
        row.outcome = if index == 5 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        insert(&conn, &row);
    }
    let buckets = |by: StatsBy, limit: u32| -> Vec<(String, u64)> {
        stats(&conn, &Filter::default(), by, limit)
            .expect("stats")
            .into_iter()
            .map(|bucket| (bucket.key, bucket.count))
            .collect()
    };
    let pairs = |items: &[(&str, u64)]| -> Vec<(String, u64)> {
        items
            .iter()
            .map(|(key, count)| (key.to_string(), *count))
            .collect()
    };
    assert_eq!(
        buckets(StatsBy::Action, 10),
        pairs(&[
            ("user.deleted", 3),
            ("auth.login_failed", 2),
            ("post.created", 2)
        ])
    );
    assert_eq!(buckets(StatsBy::Action, 1), pairs(&[("user.deleted", 3)]));
    assert_eq!(
        buckets(StatsBy::Actor, 10),
        pairs(&[(ANONYMOUS_ACTOR, 3), ("a@x.com", 2), ("u2", 2)])
    );
    assert_eq!(
        buckets(StatsBy::Day, 10),
        pairs(&[
            ("2026-11-25", 1),
            ("2026-11-26", 3),
            ("2026-11-27", 2),
            ("2026-11-28", 1)
        ])
    );
    assert_eq!(
        buckets(StatsBy::Day, 2),
        pairs(&[("2026-11-27", 2), ("2026-11-28", 1)]),
        "the most recent days, in time order"
    );
    assert_eq!(
        buckets(StatsBy::Hour, 3),
        pairs(&[
            ("2026-11-26T13", 2),
            ("2026-11-27T01", 2),
            ("2026-11-28T09", 1)
        ])
    );
    assert_eq!(
        buckets(StatsBy::Outcome, 10),
        pairs(&[("success", 6), ("failure", 1)])
    );
    let filtered = stats(
        &conn,
        &filter_with(|f| f.action = Some("post.created".into())),
        StatsBy::Day,
        10,
    )
    .expect("stats");
    assert_eq!(
        filtered,
        vec![
            Bucket {
                key: "2026-11-26".into(),
                count: 1
            },
            Bucket {
                key: "2026-11-27".into(),
                count: 1
            }
        ]
    );
    let without_users = stats(
        &conn,
        &filter_with(|f| f.exclude_action_prefixes = vec!["user.".into()]),
        StatsBy::Action,
        10,
    )
    .expect("stats");
    assert_eq!(
        without_users
            .into_iter()
            .map(|bucket| (bucket.key, bucket.count))
            .collect::<Vec<_>>(),
        pairs(&[("auth.login_failed", 2), ("post.created", 2)])
    );
}

#[test]
fn stats_are_the_same_whichever_entries_are_unsealed() {
    let sealed = open();
    varied(&sealed, 2000);
    let split = open();
    varied(&split, 2000);
    unseal_after(&split, 1234);
    for by in [
        StatsBy::Action,
        StatsBy::Actor,
        StatsBy::Outcome,
        StatsBy::Day,
        StatsBy::Hour,
    ] {
        for (name, filter) in sample_filters() {
            for limit in [1, 5, 1000] {
                let expected = stats(&sealed, &filter, by, limit).expect("stats");
                assert_eq!(
                    stats(&split, &filter, by, limit).expect("stats"),
                    expected,
                    "{by:?} {name} {limit}"
                );
                if limit == 1000 && name == "everything" {
                    assert!(!expected.is_empty(), "{by:?} counts something");
                }
            }
        }
    }
}

#[test]
fn stats_by_parses_its_names() {
    for by in [
        StatsBy::Action,
        StatsBy::Actor,
        StatsBy::Day,
        StatsBy::Hour,
        StatsBy::Outcome,
    ] {
        assert_eq!(by.as_str().parse(), Ok(by));
    }
    let error = "week".parse::<StatsBy>().expect_err("unknown");
    assert!(error
        .to_string()
        .contains("expected action, actor, day, hour or outcome"));
}

#[test]
fn list_offset_pages_like_the_reference_product() {
    let conn = open();
    for seq in 1..=120 {
        let mut row = entry(seq);
        row.action = if seq % 2 == 0 {
            "user.deleted"
        } else {
            "post.created"
        }
        .into();
        insert(&conn, &row);
    }
    let filter = filter_with(|f| f.action_contains = Some("user".into()));
    let page_one = list_offset(&conn, &filter, 0, 50).expect("page 1");
    assert_eq!(page_one.len(), 50);
    assert_eq!(page_one[0].seq, 120);
    let page_two = list_offset(&conn, &filter, 50, 50).expect("page 2");
    assert_eq!(
        seqs(&page_two),
        (1..=10).rev().map(|n| n * 2).collect::<Vec<_>>()
    );
    assert!(list_offset(&conn, &filter, u64::MAX, 50)
        .expect("far")
        .is_empty());
    assert_eq!(count(&conn, &filter).expect("total"), 60);
}

/// The plan of the SQL `list` runs for `filter`, one detail line per step.
fn plan(conn: &Connection, filter: &Filter, cursor: Option<Cursor>, max_rows: u64) -> Vec<String> {
    let request = PageRequest {
        cursor,
        ..PageRequest::default()
    };
    let PageQuery { sql, values, .. } =
        page_query(conn, filter, &request, max_rows).expect("query");
    explain(conn, &sql, values)
}

/// The plan SQLite makes for `sql` with `values`, one detail line per step.
fn explain(conn: &Connection, sql: &str, values: Vec<Value>) -> Vec<String> {
    let mut statement = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("explain");
    statement
        .query_map(rusqlite::params_from_iter(values), |row| {
            row.get::<_, String>(3)
        })
        .expect("plan")
        .collect::<Result<_, _>>()
        .expect("plan rows")
}

/// Ends of the varied log, for time windows relative to its newest entry.
fn newest(rows: u64) -> DateTime<Utc> {
    start() + Duration::seconds(rows as i64 * 300)
}

/// Every filter with an index reads through it, on a few thousand analysed rows, with and
/// without a cursor, whether the rows lie in one generation or several (`schema_v8.sql`).
/// Equality filters read in `seq` order straight from the index (no sort; on a generation-led
/// index, a generation at a time); range filters narrow enough to sort are read through their
/// index and sorted.
#[test]
fn indexed_filters_use_their_index() {
    for (layout, position) in LAYOUTS {
        indexed_filters_use_their_index_in(layout, position);
    }
}

fn indexed_filters_use_their_index_in(layout: &str, position: Position) {
    let conn = open();
    let rows = 4000;
    varied_at(&conn, rows, position);
    let ago = |duration: Duration| Some(newest(rows) - duration);
    let cases: Vec<(&str, Filter, &str, bool)> = vec![
        (
            "action",
            filter_with(|f| f.action = Some("user.created".into())),
            "entries_action",
            true,
        ),
        (
            "actor id",
            filter_with(|f| f.actor = Some("u5".into())),
            "entries_actor_id",
            true,
        ),
        (
            "actor email",
            filter_with(|f| f.actor = Some("u5".into())),
            "entries_actor_email",
            true,
        ),
        (
            "resource",
            filter_with(|f| {
                f.resource_type = Some("user".into());
                f.resource_id = Some("17".into());
            }),
            "entries_resource",
            true,
        ),
        (
            "resource type",
            filter_with(|f| f.resource_type = Some("team".into())),
            "entries_resource",
            false,
        ),
        (
            "status",
            filter_with(|f| f.status = Some(StatusFilter::Exact(404))),
            "entries_status",
            true,
        ),
        (
            "outcome",
            filter_with(|f| f.outcome = Some(Outcome::Unknown)),
            "entries_outcome",
            true,
        ),
        (
            "ip exact",
            filter_with(|f| f.ip = ip_filter("10.1.2.3")),
            "entries_ip",
            true,
        ),
        (
            "ip network",
            filter_with(|f| f.ip = ip_filter("192.168.1.0/24")),
            "entries_ip",
            false,
        ),
        (
            "ip v6 network",
            filter_with(|f| f.ip = ip_filter("2001:db8::/32")),
            "entries_ip",
            false,
        ),
        (
            "action prefix",
            filter_with(|f| f.action_prefix = Some("auth.".into())),
            "entries_action",
            false,
        ),
        (
            "status class",
            filter_with(|f| f.status = Some(StatusFilter::Class(5))),
            "entries_status",
            false,
        ),
        (
            "since 1h",
            filter_with(|f| f.since = ago(Duration::hours(1))),
            "entries_created_at",
            false,
        ),
        (
            "since 1d",
            filter_with(|f| f.since = ago(Duration::days(1))),
            "entries_created_at",
            false,
        ),
        (
            "a day a week ago",
            filter_with(|f| {
                f.since = ago(Duration::days(8));
                f.until = ago(Duration::days(7));
            }),
            "entries_created_at",
            false,
        ),
        (
            "until",
            filter_with(|f| f.until = ago(Duration::days(13))),
            "entries_created_at",
            false,
        ),
        (
            "window and action",
            filter_with(|f| {
                f.action = Some("user.created".into());
                f.since = ago(Duration::hours(6));
            }),
            "entries_created_at",
            false,
        ),
    ];
    for (name, filter, index, in_seq_order) in &cases {
        for cursor in [None, Some(Cursor::after_seq(position(rows - 5)))] {
            let steps = plan(&conn, filter, cursor, NARROW_RANGE_MAX_ROWS);
            let text = steps.join(" | ");
            println!("{layout}, {name} (cursor: {}): {text}", cursor.is_some());
            assert!(
                steps
                    .iter()
                    .any(|step| step.contains(&format!("INDEX {index} "))),
                "{name} does not use {index}: {text}"
            );
            assert!(
                !steps.iter().any(|step| step.starts_with("SCAN entries")),
                "{name} scans: {text}"
            );
            if *in_seq_order {
                assert!(!text.contains("TEMP B-TREE"), "{name} sorts: {text}");
            }
        }
    }
}

/// A range that matches more rows than is worth sorting is left to SQLite, which walks the log
/// in `seq` order and stops after a page: no sort, and no index forced on it.
#[test]
fn a_wide_range_walks_the_log_in_order() {
    let conn = open();
    let rows = 4000;
    varied(&conn, rows);
    let filter = filter_with(|f| f.since = Some(newest(rows) - Duration::days(7)));
    let narrow = plan(&conn, &filter, None, NARROW_RANGE_MAX_ROWS).join(" | ");
    assert!(narrow.contains("INDEX entries_created_at"), "{narrow}");
    let wide = plan(&conn, &filter, None, 100).join(" | ");
    assert!(!wide.contains("entries_created_at"), "{wide}");
    assert!(!wide.contains("TEMP B-TREE"), "{wide}");
    // Either way the rows are the same.
    let expected = count(&conn, &filter).expect("count");
    assert_eq!(
        all_pages(&conn, &filter, Order::Desc, 333).len() as u64,
        expected
    );
}

#[test]
fn newest_first_exports_seek_by_one_upper_bound() {
    // With both a cursor and a snapshot bound as upper bounds, SQLite seeks by one and filters by
    // the other; an export reading chunk after chunk would then rescan from the snapshot's top
    // every time. Only the tighter bound may be given.
    let page = PageRequest {
        limit: 1000,
        cursor: Some(Cursor::after_seq(500)),
        order: Order::Desc,
        count: false,
        through: Some(Cursor::after_seq(900)),
    };
    let (where_sql, values) = super::page_conditions(
        &Filter::default(),
        &page,
        super::ActorColumns::Either,
        super::Table::Sealed,
    );
    assert_eq!(where_sql.matches("seq").count(), 1, "{where_sql}");
    assert_eq!(values, vec![rusqlite::types::Value::Integer(500)]);
    let oldest_first = PageRequest {
        order: Order::Asc,
        ..page
    };
    let (where_sql, _) = super::page_conditions(
        &Filter::default(),
        &oldest_first,
        super::ActorColumns::Either,
        super::Table::Sealed,
    );
    assert_eq!(where_sql.matches("seq").count(), 2, "{where_sql}");
}

/// A wide range walks a window of the log and reads the rest through its index. With small
/// pages the window is a few hundred positions, so most pages need both parts, in both orders;
/// together they must still give every match once, in order.
#[test]
fn pages_split_between_window_and_index_lose_and_repeat_nothing() {
    for (layout, position) in LAYOUTS {
        let conn = open();
        let all = varied_at(&conn, 3000, position);
        // With no further walks (window, then index), one (window, a walk twice as wide, then
        // index), and the default.
        for walk_extensions in [0, 1, WALK_EXTENSIONS] {
            let knobs = Knobs {
                narrow_range_max_rows: 0,
                walk_extensions,
            };
            for (name, filter) in sample_filters() {
                let mut expected = matching(&all, &filter);
                let ascending = all_pages_with(&conn, &filter, Order::Asc, 4, knobs);
                assert_eq!(
                    seqs(&ascending),
                    expected,
                    "{layout}, {name}, asc, {walk_extensions}"
                );
                expected.reverse();
                let descending = all_pages_with(&conn, &filter, Order::Desc, 4, knobs);
                assert_eq!(
                    seqs(&descending),
                    expected,
                    "{layout}, {name}, desc, {walk_extensions}"
                );
            }
        }
    }
}

/// The page statement of a wide range walks the table in `seq` order from the cursor, bounded
/// by the window, and the rest of the page is found through the range's index and sorted as
/// sequence numbers only.
#[test]
fn a_wide_range_walks_a_window_then_its_index() {
    let conn = open();
    let rows = 4000;
    varied(&conn, rows);
    let filter = filter_with(|f| f.status = Some(StatusFilter::Class(5)));
    let request = PageRequest {
        cursor: Some(Cursor::after_seq(rows - 5)),
        limit: 3,
        ..PageRequest::default()
    };
    let query = page_query(&conn, &filter, &request, 100).expect("query");
    let past = query.past_window.expect("a window smaller than the log");
    assert_eq!(past.boundary, (rows - 5 - 400) as i64);
    assert_eq!(past.index, "entries_status");
    let explain = |sql: &str, values: Vec<Value>| explain(&conn, sql, values).join(" | ");
    let window = explain(&query.sql, query.values);
    assert!(
        window.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
        "{window}"
    );
    assert!(!window.contains("TEMP B-TREE"), "{window}");
    let (sql, values) = super::past_window_query(&filter, &request, past, 4);
    let rest = explain(&sql, values);
    assert!(rest.contains("COVERING INDEX entries_status"), "{rest}");
    // An equality served in seq order is walked instead: no window.
    let with_outcome = Filter {
        outcome: Some(Outcome::Error),
        ..filter
    };
    let query = page_query(&conn, &with_outcome, &request, 100).expect("query");
    assert!(query.past_window.is_none());
}

/// The free-text function matches exactly what LIKE '%text%' without case does in SQLite:
/// ASCII letters folded, nothing else, wildcards literal, NULL matching nothing.
#[test]
fn free_text_function_agrees_with_like() {
    let conn = open();
    let texts = [
        None,
        Some(""),
        Some("Alice@Example.COM"),
        Some("ÉCOLE école"),
        Some("100%_done\\"),
        Some("straße STRASSE"),
        Some("aaab"),
    ];
    let needles = [
        "",
        "alice",
        "EXAMPLE.com",
        "é",
        "É",
        "école",
        "ÉCOLE",
        "%",
        "_",
        "\\",
        "0%_d",
        "aab",
        "ß",
        "SS",
        "b",
        "bb",
        "ice@ex",
    ];
    for text_value in texts {
        for needle in needles {
            let (function, like): (Option<bool>, Option<bool>) = conn
                .query_row(
                    &format!("SELECT {CONTAINS_FUNCTION}(?1, ?2), ?2 LIKE ?3 ESCAPE '\\'"),
                    params![needle, text_value, super::contains_pattern(needle)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .expect("query");
            assert_eq!(
                function.unwrap_or(false),
                like.unwrap_or(false),
                "{needle:?} in {text_value:?}"
            );
        }
    }
    let any: bool = conn
        .query_row(
            &format!("SELECT {CONTAINS_FUNCTION}('x', NULL, 'abc', 'AXE')"),
            [],
            |row| row.get(0),
        )
        .expect("several texts");
    assert!(any);
}

/// Day and hour stats of a time window are counted bucket by bucket on the index; they must be
/// the buckets that grouping every row gives, for every window and limit, and a stored time
/// too short to be a bucket key falls back to grouping.
#[test]
fn time_stats_by_seeking_equal_grouping() {
    let conn = open();
    let rows = 3000;
    varied(&conn, rows);
    let grouped = |filter: &Filter, by: StatsBy, limit: u32| -> Vec<Bucket> {
        let (where_sql, mut values) = where_clause(filter);
        values.push(Value::Integer(i64::from(limit)));
        let sql = format!(
            "SELECT bucket, n FROM (SELECT {} AS bucket, count(*) AS n FROM entries {where_sql} \
             GROUP BY bucket ORDER BY bucket DESC LIMIT ?) ORDER BY bucket ASC",
            key_sql(by)
        );
        let mut statement = conn.prepare(&sql).expect("prepare");
        statement
            .query_map(rusqlite::params_from_iter(values), |row| {
                Ok(Bucket {
                    key: row.get(0)?,
                    count: row.get(1)?,
                })
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let end = newest(rows);
    let windows = [
        Filter::default(),
        filter_with(|f| f.since = Some(end - Duration::days(3))),
        filter_with(|f| f.until = Some(end - Duration::hours(30))),
        filter_with(|f| {
            f.since = Some(end - Duration::hours(77));
            f.until = Some(end - Duration::minutes(1441));
        }),
        filter_with(|f| f.since = Some(end + Duration::days(1))),
    ];
    for filter in &windows {
        for by in [StatsBy::Day, StatsBy::Hour] {
            for limit in [1, 5, 1000] {
                let expected = grouped(filter, by, limit);
                assert_eq!(
                    stats(&conn, filter, by, limit).expect("stats"),
                    expected,
                    "{filter:?} {by:?} {limit}"
                );
            }
        }
    }
    assert!(!grouped(&windows[3], StatsBy::Hour, 1000).is_empty());
    let mut damaged = entry(rows + 1);
    damaged.created_at = end;
    insert(&conn, &damaged);
    conn.execute(
        "UPDATE entries SET created_at = '2026-11-2' WHERE seq = ?",
        [rows + 1],
    )
    .expect("damage");
    let expected = grouped(&Filter::default(), StatsBy::Day, 1000);
    assert!(expected.iter().any(|bucket| bucket.key == "2026-11-2"));
    assert_eq!(
        stats(&conn, &Filter::default(), StatsBy::Day, 1000).expect("stats"),
        expected
    );
}

/// The entry at a window's boundary belongs to the window, and the index part starts just past
/// it: a page that needs both parts holds it once.
#[test]
fn the_window_boundary_entry_is_read_once() {
    let conn = open();
    let rows = 3000;
    // Pages of 4 walk 500 positions: newest first from 3001 the window is [2501, 3000], oldest
    // first [1, 500]. Only the boundary entry and a block far from it match.
    let matches = |seq: u64| seq == 2501 || seq == 500 || (1000..=2000).contains(&seq);
    let transaction = conn.unchecked_transaction().expect("begin");
    for seq in 1..=rows {
        let mut entry = entry(seq);
        if matches(seq) {
            entry.status = Some(503);
        }
        insert(&transaction, &entry);
    }
    transaction.commit().expect("commit");
    let filter = filter_with(|f| f.status = Some(StatusFilter::Class(5)));
    let first_page = |order| {
        let request = PageRequest {
            limit: 4,
            order,
            ..PageRequest::default()
        };
        seqs(
            &list_planned(&conn, &filter, &request, 100)
                .expect("list")
                .entries,
        )
    };
    assert_eq!(first_page(Order::Desc), [2501, 2000, 1999, 1998]);
    assert_eq!(first_page(Order::Asc), [500, 1000, 1001, 1002]);
}

/// Stats answered from the per-hour counts of schema version 6 equal the stats of grouping the
/// rows, for every grouping, window and limit: over rows counted by the upgrade, rows counted by
/// a seal, rows not sealed yet, pruned rows taken out again, and rows whose stored time is not
/// in the usual form.
#[test]
fn stats_from_the_hourly_counts_equal_grouping_the_rows() {
    let rows = 3000;
    let plain = open();
    let counted = open();
    for conn in [&plain, &counted] {
        varied(conn, rows);
        for (seq, time) in [(rows + 1, "2026-11-2"), (rows + 2, "garbage")] {
            let mut odd = entry(seq);
            odd.action = "odd.time".into();
            insert(conn, &odd);
            conn.execute(
                "UPDATE entries SET created_at = ? WHERE seq = ?",
                params![time, seq],
            )
            .expect("an odd time");
        }
        // A rare action, in the partial hours of some windows: read through the action's index.
        for (seq, minutes) in [(900, 30 * 60 + 20), (901, 30 * 60 + 40), (902, 60 * 60 + 3)] {
            conn.execute(
                "UPDATE entries SET action = 'rare.thing', created_at = ? WHERE seq = ?",
                params![
                    format_timestamp(&(start() + Duration::minutes(minutes))),
                    seq
                ],
            )
            .expect("a rare action");
        }
    }
    // The upgrade counts the sealed rows; a seal then counts the rows it moves, and the newest
    // stay in `recent`.
    unseal_after(&counted, 1500);
    counted
        .execute_batch(include_str!("../schema_v6.sql"))
        .expect("schema v6");
    counted
        .execute_batch(include_str!("../schema_v7.sql"))
        .expect("schema v7");
    use crate::store::sqlite::log;
    // Until the sealed rows are counted, stats group rows; a seal then counts nothing, and the
    // chunks count what it moved with the rest.
    assert!(!has_counts(&counted).expect("counts?"));
    assert_eq!(log::seal(&counted, 300).expect("seals").moved, 300);
    for _ in 0..100 {
        if log::count_chunk(&counted).expect("counts") {
            break;
        }
    }
    assert!(has_counts(&counted).expect("counts?") && !has_counts(&plain).expect("counts?"));
    assert_eq!(log::counts_through(&counted).expect("counted"), 1800);
    // Caught up: a seal counts the rows it moves.
    assert_eq!(log::seal(&counted, 800).expect("seals").moved, 800);
    assert_eq!(log::counts_through(&counted).expect("counted"), 2600);
    // A prune deletes rows of both kinds.
    for conn in [&plain, &counted] {
        conn.execute("DELETE FROM entries WHERE seq % 7 = 0 AND seq <= 2200", [])
            .expect("prunes");
        // Every sealed entry of one actor: the counts keep no trace of them (no key left at 0).
        for table in ["entries", RECENT] {
            conn.execute(&format!("DELETE FROM {table} WHERE actor_id = 'u5'"), [])
                .expect("prunes an actor");
        }
    }
    for table in ["entry_counts", "actor_counts", "actor_day_counts"] {
        let left: i64 = counted
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE n <= 0"),
                [],
                |row| row.get(0),
            )
            .expect("counts");
        assert_eq!(left, 0, "{table} keeps no empty key");
    }
    let u5: i64 = counted
        .query_row(
            "SELECT (SELECT count(*) FROM actor_counts WHERE actor = 'u5') + \
             (SELECT count(*) FROM actor_day_counts WHERE actor = 'u5')",
            [],
            |row| row.get(0),
        )
        .expect("counts");
    assert_eq!(u5, 0, "a pruned actor leaves the counts");
    let end = newest(rows);
    let hour = |h: i64| start() + Duration::hours(h);
    let windows = [
        Filter::default(),
        filter_with(|f| f.since = Some(end - Duration::days(3))),
        filter_with(|f| f.since = Some(hour(50))),
        filter_with(|f| f.until = Some(hour(100))),
        filter_with(|f| f.until = Some(end - Duration::minutes(1441))),
        filter_with(|f| {
            f.since = Some(hour(30) + Duration::minutes(7));
            f.until = Some(hour(200) - Duration::seconds(1));
        }),
        filter_with(|f| {
            f.since = Some(hour(30) + Duration::minutes(7));
            f.until = Some(hour(31));
        }),
        filter_with(|f| {
            f.since = Some(hour(30) + Duration::minutes(7));
            f.until = Some(hour(31) + Duration::minutes(7));
        }),
        filter_with(|f| {
            f.since = Some(hour(40));
            f.until = Some(hour(20));
        }),
        filter_with(|f| f.since = Some(end + Duration::days(1))),
    ];
    type Narrowing = (&'static str, fn(&mut Filter));
    let narrowing: [Narrowing; 8] = [
        ("nothing", |_| {}),
        ("action", |f| f.action = Some("user.created".into())),
        ("rare action", |f| f.action = Some("rare.thing".into())),
        ("prefix", |f| f.action_prefix = Some("user.".into())),
        ("contains", |f| f.action_contains = Some("ED".into())),
        ("exclusion", |f| {
            f.exclude_action_prefixes = vec!["user.".into(), "odd.".into()]
        }),
        ("outcome", |f| f.outcome = Some(Outcome::Failure)),
        ("actor, not counted", |f| f.actor = Some("u5".into())),
    ];
    let mut from_counts = 0;
    for window in &windows {
        for (name, narrow) in narrowing {
            let mut filter = window.clone();
            narrow(&mut filter);
            assert_eq!(
                count(&counted, &filter).expect("count"),
                count(&plain, &filter).expect("count"),
                "count {name} {window:?}"
            );
            for by in [
                StatsBy::Action,
                StatsBy::Actor,
                StatsBy::Outcome,
                StatsBy::Day,
                StatsBy::Hour,
            ] {
                if stats_from_counts(&counted, &filter, Some(by))
                    .expect("stats")
                    .is_some()
                {
                    from_counts += 1;
                }
                for limit in [1, 5, 1000] {
                    assert_eq!(
                        stats(&counted, &filter, by, limit).expect("stats"),
                        stats(&plain, &filter, by, limit).expect("stats"),
                        "{by:?} {name} {limit} {window:?}"
                    );
                }
            }
        }
    }
    // Every window but the one that ends before it starts: every grouping with no narrowing,
    // and the four groupings other than actor with the six narrowings the counts hold.
    assert_eq!(from_counts, 9 * (5 + 6 * 4));
    let rare = filter_with(|f| {
        f.since = Some(hour(30) + Duration::minutes(7));
        f.action = Some("rare.thing".into());
    });
    assert_eq!(count(&counted, &rare).expect("count"), 3);
    // An earlier release sealing beside this one moves rows without counting them: stats group
    // rows until the chunks have counted them, then answer from the counts again.
    counted
        .execute_batch(&format!(
            "INSERT INTO entries ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM {RECENT} \
             WHERE seq <= 2900 ORDER BY seq; DELETE FROM {RECENT} WHERE seq <= 2900;"
        ))
        .expect("an earlier release's seal");
    assert!(!has_counts(&counted).expect("counts?"));
    assert!(log::count_chunk(&counted).expect("counts"));
    assert!(has_counts(&counted).expect("counts?"));
    for by in [StatsBy::Actor, StatsBy::Day, StatsBy::Action] {
        assert_eq!(
            stats(&counted, &Filter::default(), by, 1000).expect("stats"),
            stats(&plain, &Filter::default(), by, 1000).expect("stats"),
            "{by:?} after an earlier release's seal"
        );
    }
    let everything = stats(&counted, &Filter::default(), StatsBy::Day, 1000).expect("stats");
    assert!(everything.iter().any(|bucket| bucket.key == "garbage"));
    assert!(everything.iter().any(|bucket| bucket.key == "2026-11-2"));
}

/// A window is cut into the partial hours at its ends (rows), whole hours, and for actors whole
/// days, each cut a key compared as text.
#[test]
fn a_stats_window_is_cut_at_hours_and_days() {
    let at = |text: &str| parse_timestamp(text).expect("a time");
    let text = |text: &str| text.to_string();
    let some = |key: &str| Some(key.to_string());
    let since = at("2026-11-01T10:30:00Z");
    let until = at("2026-11-05T04:10:00Z");
    assert_eq!(
        window_parts(Some(since), Some(until), true).expect("parts"),
        [
            WindowPart::Rows(text("2026-11-01T10:30:00.000000Z"), text("2026-11-01T11")),
            WindowPart::Rows(text("2026-11-05T04"), text("2026-11-05T04:10:00.000000Z")),
            WindowPart::Hours(some("2026-11-01T11"), some("2026-11-02")),
            WindowPart::Hours(some("2026-11-05"), some("2026-11-05T04")),
            WindowPart::Days(some("2026-11-02"), some("2026-11-05")),
        ]
    );
    assert_eq!(
        window_parts(Some(since), Some(until), false).expect("parts")[2],
        WindowPart::Hours(some("2026-11-01T11"), some("2026-11-05T04"))
    );
    // An exact hour still starts with a partial hour: a key sorts before every time under it.
    assert_eq!(
        window_parts(Some(at("2026-11-01T10:00:00Z")), None, true).expect("parts"),
        [
            WindowPart::Rows(text("2026-11-01T10:00:00.000000Z"), text("2026-11-01T11")),
            WindowPart::Hours(some("2026-11-01T11"), some("2026-11-02")),
            WindowPart::Days(some("2026-11-02"), None),
        ]
    );
    // Under a day: hours only; no bounds: every day.
    assert_eq!(
        window_parts(Some(since), Some(at("2026-11-02T03:00:00Z")), true).expect("parts")[2..],
        [WindowPart::Hours(
            some("2026-11-01T11"),
            some("2026-11-02T03")
        )]
    );
    assert_eq!(
        window_parts(None, None, true).expect("parts"),
        [WindowPart::Days(None, None)]
    );
    // Under an hour, backwards, or a year that is not four digits: rows are grouped instead.
    assert!(window_parts(Some(since), Some(at("2026-11-01T10:50:00Z")), true).is_none());
    assert!(window_parts(Some(until), Some(since), false).is_none());
    assert!(window_parts(Some(at("9999-12-31T23:30:00Z")), None, false).is_none());
}

#[test]
fn canonical_bytes_from_the_columns_equal_those_of_the_decoded_entry() {
    let conn = open();
    let awkward = [
        "plain",
        "",
        "quote \" backslash \\ slash /",
        "control \u{1} \n \t \u{7f}",
        "unicode é 漢字 😀 \u{2028}",
    ];
    let mut written = 0;
    for seq in 1..=40u64 {
        let mut entry = entry(seq);
        let text = |offset: u64| Some(awkward[((seq + offset) % 5) as usize].to_string());
        let sometimes = |offset: u64| (seq + offset) % 3 != 0;
        entry.created_at += Duration::microseconds(seq as i64 * 7_919);
        entry.actor_id = text(0).filter(|_| sometimes(0));
        entry.actor_email = text(1).filter(|_| sometimes(1));
        entry.actor_name = text(2).filter(|_| sometimes(2));
        entry.actor_source = text(3).filter(|_| sometimes(0));
        entry.actor_verified = seq % 2 == 0;
        entry.tenant = text(4).filter(|_| sometimes(1));
        entry.action = format!("user.{}", awkward[(seq % 5) as usize]);
        entry.resource_type = text(1).filter(|_| sometimes(2));
        entry.resource_id = text(2).filter(|_| sometimes(0));
        entry.outcome = [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Error,
            Outcome::Unknown,
        ][(seq % 4) as usize];
        entry.status = [None, Some(0), Some(204), Some(u16::MAX)][(seq % 4) as usize];
        entry.method = text(3).filter(|_| sometimes(1));
        entry.path = text(4).filter(|_| sometimes(2));
        entry.route = text(0).filter(|_| sometimes(1));
        entry.rule = text(1).filter(|_| sometimes(0));
        entry.ip = text(2).filter(|_| sometimes(2));
        entry.user_agent = text(3).filter(|_| sometimes(0));
        entry.request_id = text(4).filter(|_| sometimes(1));
        entry.duration_us = [None, Some(0), Some(1234), Some(i64::MAX as u64)][(seq % 4) as usize];
        entry.error = text(0).filter(|_| sometimes(2));
        if seq % 5 != 0 {
            entry.metadata = json!({
                "zeta": seq as f64 / 7.0,
                "alpha": {"nested": [1, -2, 3.5e300, null, true, awkward[(seq % 5) as usize]]},
                awkward[((seq + 1) % 5) as usize]: u64::MAX,
                "small": -0.0,
            })
            .as_object()
            .cloned()
            .expect("object");
        }
        insert(&conn, &entry);
        written += 1;
    }
    let mut statement = conn
        .prepare(&format!("SELECT {ENTRY_COLUMNS} FROM entries ORDER BY seq"))
        .expect("prepare");
    let mut rows = statement.query([]).expect("query");
    let mut compared = 0;
    while let Some(row) = rows.next().expect("row") {
        let decoded = entry_from_row(row).expect("decodes");
        let mut bytes = Vec::new();
        let stored = stored_row(row).expect("copied");
        assert!(stored.canonical_bytes(&mut bytes), "entry {}", decoded.seq);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&decoded.canonical_bytes()),
            "entry {}",
            decoded.seq
        );
        compared += 1;
    }
    assert_eq!(compared, written);

    // A prune record comes decoded (its claim is checked). Values of another type than the
    // store writes are copied, but give no canonical bytes: such a row is decoded instead.
    let mut pruned = entry(41);
    pruned.action = PRUNED_ACTION.to_string();
    insert(&conn, &pruned);
    conn.execute_batch(
        "UPDATE entries SET status = '20x' WHERE seq = 1;
         UPDATE entries SET actor_id = x'41' WHERE seq = 2;
         UPDATE entries SET duration_us = -1 WHERE seq = 4;
         UPDATE entries SET metadata = '{\"a\":' WHERE seq = 6;
         UPDATE entries SET path = CAST(x'ff' AS TEXT) WHERE seq = 7;
         UPDATE entries SET status = 70000 WHERE seq = 8;
         UPDATE entries SET duration_us = 2.5 WHERE seq = 9;",
    )
    .expect("edit");
    let mut statement = conn
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE seq IN (1, 2, 4, 6, 7, 8, 9, 41) ORDER BY seq"
        ))
        .expect("prepare");
    let mut rows = statement.query([]).expect("query");
    let mut refused = 0;
    while let Some(row) = rows.next().expect("row") {
        let seq: i64 = row.get(0).expect("seq");
        match stored_row(row) {
            None => assert_eq!(seq, 41),
            Some(stored) => {
                assert!(!stored.canonical_bytes(&mut Vec::new()), "entry {seq}");
                assert!(entry_from_row(row).is_err() || seq == 6, "entry {seq}");
            }
        }
        refused += 1;
    }
    assert_eq!(refused, 8);
}

/// A listing of a wide time window walks the seq range its hours hold (`schema_v7.sql`) and lists
/// what the rows hold, page after page in both orders: compared with the same rows and no ranges,
/// with entries far out of time order (re-imported late, sealed and unsealed), a time not in the
/// stored form, and pruned rows.
#[test]
fn a_time_window_listed_through_the_hours_seq_ranges_lists_what_the_rows_hold() {
    use crate::store::sqlite::log;
    let rows = 3000;
    let plain = open();
    let ranged = open();
    let late = |seq: u64, hours: i64| {
        let mut late = entry(seq);
        late.action = "late.import".into();
        late.created_at = start() + Duration::hours(hours) + Duration::minutes(5);
        late
    };
    for conn in [&plain, &ranged] {
        varied(conn, rows);
        insert(conn, &late(rows + 1, 10));
        insert(conn, &late(rows + 2, 120));
        insert(conn, &entry(rows + 3));
        conn.execute(
            "UPDATE entries SET created_at = '2026-11-03T07:00:00Z' WHERE seq = ?",
            [rows + 3],
        )
        .expect("a time not in the stored form");
        unseal_after(conn, 2500);
    }
    ranged
        .execute_batch(include_str!("../schema_v6.sql"))
        .expect("schema v6");
    ranged
        .execute_batch(include_str!("../schema_v7.sql"))
        .expect("schema v7");
    // The upgrade ranges nothing; the chunks range the sealed entries, then a seal ranges the
    // rows it moves, the late ones among them.
    assert_eq!(
        window_seqs(&ranged, &filter_with(|f| f.since = Some(start()))).expect("ranges"),
        None,
        "not ranged yet"
    );
    while !log::count_chunk(&ranged).expect("counts") {}
    while !log::range_chunk(&ranged).expect("ranges") {}
    let sealed = log::seal(&ranged, u64::MAX).expect("seals");
    assert_eq!((sealed.moved, sealed.ranged), (503, true));
    assert_eq!(
        log::ranged_through(&ranged).expect("ranged"),
        (rows + 3) as i64
    );
    plain
        .execute_batch(&format!(
            "INSERT INTO entries ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM {RECENT} \
             ORDER BY seq; DELETE FROM {RECENT};"
        ))
        .expect("sealed");
    for conn in [&plain, &ranged] {
        // Late again, not sealed yet.
        insert(conn, &late(rows + 4, 20));
        insert(conn, &late(rows + 5, 121));
        unseal_after(conn, rows + 3);
        conn.execute("DELETE FROM entries WHERE seq % 7 = 0 AND seq <= 2200", [])
            .expect("prunes");
    }
    assert!(has_counts(&ranged).expect("counts?"));

    let hour = |h: i64| start() + Duration::hours(h);
    let end = newest(rows);
    // The ranges are read: an hour of the log lies within a few dozen positions, and the hour of
    // a late entry reaches up to it.
    let range = |since: DateTime<Utc>, until: DateTime<Utc>| {
        let filter = filter_with(|f| {
            f.since = Some(since);
            f.until = Some(until);
        });
        window_seqs(&ranged, &filter).expect("ranges")
    };
    let (first, last) = range(hour(100), hour(101))
        .expect("known")
        .expect("entries");
    assert!(last - first < 30, "{first}..{last}");
    let (_, last) = range(hour(10), hour(11)).expect("known").expect("entries");
    assert_eq!(last, (rows + 1) as i64);
    assert_eq!(
        range(end + Duration::days(2), end + Duration::days(3)),
        Some(None)
    );
    assert_eq!(
        window_seqs(&plain, &filter_with(|f| f.since = Some(hour(100)))).expect("ranges"),
        None,
        "a file without ranges"
    );

    let windows = [
        filter_with(|f| f.since = Some(hour(50))),
        filter_with(|f| f.until = Some(hour(100))),
        filter_with(|f| {
            f.since = Some(hour(100));
            f.until = Some(hour(101));
        }),
        filter_with(|f| {
            f.since = Some(hour(10));
            f.until = Some(hour(11));
        }),
        filter_with(|f| {
            f.since = Some(hour(20) + Duration::minutes(3));
            f.until = Some(hour(60));
        }),
        filter_with(|f| {
            f.since = Some(hour(119));
            f.until = Some(hour(122));
        }),
        filter_with(|f| {
            f.since = Some(hour(50));
            f.until = Some(hour(50));
        }),
        filter_with(|f| f.until = Some(hour(51) - Duration::seconds(1))),
        filter_with(|f| f.since = Some(end + Duration::days(1))),
    ];
    type Narrowing = (&'static str, fn(&mut Filter));
    let narrowing: [Narrowing; 4] = [
        ("nothing", |_| {}),
        ("action", |f| f.action = Some("late.import".into())),
        ("outcome", |f| f.outcome = Some(Outcome::Failure)),
        ("contains", |f| f.action_contains = Some("ED".into())),
    ];
    let mut listed = 0;
    for window in &windows {
        for (name, narrow) in narrowing {
            let mut filter = window.clone();
            narrow(&mut filter);
            for order in [Order::Desc, Order::Asc] {
                for limit in [3, 50] {
                    for narrow_max in [0, NARROW_RANGE_MAX_ROWS] {
                        let expected = seqs(&all_pages_planned(
                            &plain, &filter, order, limit, narrow_max,
                        ));
                        assert_eq!(
                            seqs(&all_pages_planned(
                                &ranged, &filter, order, limit, narrow_max
                            )),
                            expected,
                            "{name} {order:?} {limit} {narrow_max} {window:?}"
                        );
                        listed += expected.len();
                    }
                }
            }
        }
    }
    assert!(listed > 10_000, "the windows hold entries: {listed}");
    // An earlier release sealing beside this one moves rows and ranges nothing (and may count
    // them): the ranges are not used until the chunks have ranged those rows too.
    for conn in [&plain, &ranged] {
        insert(conn, &late(rows + 6, 30));
        insert(conn, &late(rows + 7, 140));
    }
    ranged
        .execute("UPDATE counted_through SET seq = ?", [rows + 7])
        .expect("counted by an earlier release");
    assert_eq!(
        window_seqs(&ranged, &filter_with(|f| f.since = Some(hour(100)))).expect("ranges"),
        None,
        "rows sealed by an earlier release"
    );
    assert!(log::range_chunk(&ranged).expect("ranges"));
    let (_, last) = range(hour(140), hour(141))
        .expect("known")
        .expect("entries");
    assert_eq!(last, (rows + 7) as i64, "ranged by the chunk");
    for window in &windows {
        for order in [Order::Desc, Order::Asc] {
            assert_eq!(
                seqs(&all_pages_planned(&ranged, window, order, 3, 0)),
                seqs(&all_pages_planned(&plain, window, order, 3, 0)),
                "{order:?} {window:?}"
            );
        }
    }
}

/// The generations a filter reads are those that hold rows, found one seek each: a row put at a
/// far position by hand (which `verify` reports) neither hides any entry nor makes the list of
/// generations between it and the rest trillions long.
#[test]
fn a_row_at_a_far_position_costs_one_generation() {
    let conn = open();
    for (n, seq) in [1, 2, 3 << 20, 1 << 62].into_iter().enumerate() {
        let mut row = entry(n as u64 + 1);
        row.seq = seq;
        row.actor_id = Some("u1".into());
        row.ip = Some("10.1.2.3".into());
        insert(&conn, &row);
    }
    for filter in [
        filter_with(|f| f.actor = Some("u1".into())),
        filter_with(|f| f.ip = ip_filter("10.1.2.3")),
    ] {
        assert_eq!(
            seqs(&all_pages(&conn, &filter, Order::Desc, 2)),
            vec![1 << 62, 3 << 20, 2, 1]
        );
        assert_eq!(
            seqs(&all_pages(&conn, &filter, Order::Asc, 3)),
            vec![1, 2, 3 << 20, 1 << 62]
        );
        assert_eq!(count(&conn, &filter).expect("count"), 4);
    }
    let generations: Vec<i64> = conn
        .prepare(&format!(
            "SELECT g FROM ({}) ORDER BY g",
            GENERATIONS
                .strip_prefix("(seq >> 20) IN (")
                .and_then(|list| list.strip_suffix(')'))
                .expect("a list")
        ))
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(generations, vec![0, 3, 1 << 42]);
}

/// Without planner statistics (a live log has none), a filter on an actor and a resource or an
/// address reads the resource's or the address's index, a generation at a time: an actor may
/// have millions of entries, and reading them all to find the few with that resource is what
/// these plans avoid, for a page, a count and stats alike. An actor alone reads its own indexes,
/// in order.
#[test]
fn an_actor_with_a_resource_or_an_address_reads_the_narrower_index() {
    let conn = open();
    let rows = 4000;
    varied_unanalysed(&conn, rows, |n| n * 1_499);
    let actor = |set: fn(&mut Filter)| {
        let mut filter = filter_with(|f| f.actor = Some("u5".into()));
        set(&mut filter);
        filter
    };
    let cases: Vec<(&str, Filter, &[&str])> = vec![
        (
            "actor alone",
            actor(|_| {}),
            &["entries_actor_id", "entries_actor_email"],
        ),
        (
            "actor and resource",
            actor(|f| {
                f.resource_type = Some("user".into());
                f.resource_id = Some("17".into());
            }),
            &["entries_resource"],
        ),
        (
            "actor and resource id",
            actor(|f| f.resource_id = Some("17".into())),
            &["entries_resource_id"],
        ),
        (
            "actor and address",
            actor(|f| f.ip = ip_filter("10.1.2.3")),
            &["entries_ip"],
        ),
    ];
    for (name, filter, indexes) in &cases {
        for cursor in [None, Some(Cursor::after_seq(2000 * 1_499))] {
            let text = plan(&conn, filter, cursor, NARROW_RANGE_MAX_ROWS).join(" | ");
            for index in *indexes {
                assert!(
                    text.contains(&format!("INDEX {index} (<expr>=?")),
                    "{name}: {text}"
                );
            }
            if *name != "actor alone" {
                assert!(
                    !text.contains("entries_actor"),
                    "{name} reads the actor: {text}"
                );
            }
            assert!(!text.contains("TEMP B-TREE"), "{name} sorts: {text}");
            assert!(!text.contains("SCAN entries"), "{name} scans: {text}");
        }
        // Counts and stats group through the same conditions.
        let (where_sql, values) = table_where_clause(filter, Table::Sealed);
        let text = explain(
            &conn,
            &format!("SELECT count(*) FROM entries {where_sql}"),
            values,
        )
        .join(" | ");
        for index in *indexes {
            assert!(text.contains(index), "{name} count: {text}");
        }
        if *name != "actor alone" {
            assert!(
                !text.contains("entries_actor"),
                "{name} count reads the actor: {text}"
            );
        }
        assert!(!text.contains("SCAN entries"), "{name} count scans: {text}");
    }
}

/// A file of schema version 7 read in place (a read command never upgrades) keeps its
/// one-column indexes: every filter means the same, and the pages of an actor, a resource and an
/// address read those indexes in `seq` order, without the generations' order that would make
/// SQLite sort every match.
#[test]
fn a_file_before_the_generations_is_read_through_its_own_indexes() {
    let conn = open_before_generations();
    let all = varied_unanalysed(&conn, 3000, |n| n);
    every_filter_matches_its_meaning_in(&conn, &all, 0);
    for filter in [
        filter_with(|f| f.actor = Some("u5".into())),
        filter_with(|f| f.resource_id = Some("17".into())),
        filter_with(|f| f.ip = ip_filter("10.1.2.3")),
    ] {
        let text = plan(&conn, &filter, None, NARROW_RANGE_MAX_ROWS).join(" | ");
        assert!(!text.contains("TEMP B-TREE"), "{filter:?} sorts: {text}");
        assert!(!text.contains("generation"), "{filter:?}: {text}");
        assert!(!text.contains("SCAN entries"), "{filter:?} scans: {text}");
    }
}

/// The walk of a wide range bounds the position once from each side, whatever cursor and
/// snapshot the page has: given a second lower or upper bound, SQLite may start the walk from the
/// looser one and filter by the tighter, reading past the window to the end of the range (at 50M
/// entries, a past day's page read 578,000 rows that way).
#[test]
fn a_wide_range_walk_bounds_the_position_once_each_side() {
    let conn = open();
    let rows = 4000;
    varied(&conn, rows);
    let filter = filter_with(|f| f.since = Some(newest(rows) - Duration::days(7)));
    for (order, cursor) in [(Order::Desc, 3000), (Order::Asc, 500)] {
        let request = PageRequest {
            limit: 10,
            cursor: Some(Cursor::after_seq(cursor)),
            order,
            count: false,
            through: Some(Cursor::after_seq(3500)),
        };
        let query = page_query(&conn, &filter, &request, 100).expect("query");
        assert!(query.past_window.is_some(), "{order:?} walks a window");
        let conditions = &query.sql[query.sql.find("WHERE").expect("a WHERE")..];
        let bounds: usize = ["seq < ?", "seq > ?", "seq <= ?", "seq >= ?"]
            .iter()
            .map(|bound| conditions.matches(bound).count())
            .sum();
        assert_eq!(bounds, 2, "{order:?}: {}", query.sql);
        let found = list(&conn, &filter, &request).expect("list");
        assert_eq!(found.entries.len(), 10, "{order:?}");
    }
}

/// Wide time windows listed through the hours' positions (`schema_v7.sql`), page after page in
/// both orders under a snapshot bound as exports read them, with several walks and the index
/// after them: every match up to the snapshot once, in order, against the rows themselves; and
/// each statement bounds the position once a side, though the cursor, the snapshot and the hours
/// each give one.
#[test]
fn time_window_pages_under_a_snapshot_hold_every_match_once() {
    use crate::store::sqlite::log;
    let conn = open();
    let rows = 3000;
    let all = varied(&conn, rows);
    conn.execute_batch(include_str!("../schema_v6.sql"))
        .expect("schema v6");
    conn.execute_batch(include_str!("../schema_v7.sql"))
        .expect("schema v7");
    while !log::count_chunk(&conn).expect("counts") {}
    while !log::range_chunk(&conn).expect("ranges") {}
    assert!(mark_covers_sealed(&conn, "ranged_through").expect("ranged"));
    let through = 2600;
    let at = |hours: i64| Some(start() + Duration::hours(hours));
    for (name, filter) in [
        (
            "day",
            filter_with(|f| {
                f.since = at(40);
                f.until = at(64);
            }),
        ),
        ("since", filter_with(|f| f.since = at(30))),
        ("until", filter_with(|f| f.until = at(200))),
    ] {
        let mut expected: Vec<u64> = matching(&all, &filter)
            .into_iter()
            .filter(|seq| *seq <= through)
            .collect();
        assert!(expected.len() > 100, "{name} is wide");
        for order in [Order::Asc, Order::Desc] {
            if order == Order::Desc {
                expected.reverse();
            }
            for walk_extensions in [0, WALK_EXTENSIONS] {
                let knobs = Knobs {
                    narrow_range_max_rows: 10,
                    walk_extensions,
                };
                let mut found = Vec::new();
                let mut cursor = None;
                loop {
                    let request = PageRequest {
                        limit: 3,
                        cursor,
                        order,
                        count: false,
                        through: Some(Cursor::after_seq(through)),
                    };
                    let query = page_query(&conn, &filter, &request, 10).expect("query");
                    let conditions = &query.sql[query.sql.find("WHERE").expect("a WHERE")..];
                    for side in [["seq < ?", "seq <= ?"], ["seq > ?", "seq >= ?"]] {
                        let bounds: usize =
                            side.iter().map(|b| conditions.matches(b).count()).sum();
                        assert!(bounds <= 1, "{name} {order:?}: {}", query.sql);
                    }
                    let page = list_with(&conn, &filter, &request, knobs).expect("list");
                    found.extend(seqs(&page.entries));
                    match page.next_cursor {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                assert_eq!(found, expected, "{name} {order:?} {walk_extensions}");
            }
        }
    }
}
