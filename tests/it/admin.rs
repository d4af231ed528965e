//! The admin API: authentication and sessions, every filter against a known store, pagination
//! under writes, malformed parameters, exports parsed back, the reference-compatible endpoint,
//! the audit entries of admin actions, and `auditgate export`.
//!
//! Filter semantics are checked with `router(...).oneshot` against a store seeded with known
//! entries, whose admin entries go to a second store so the expected results stay exact; the
//! rest runs against a real sidecar over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use auditgate::admin::auth::Authenticator;
use auditgate::admin::config::{AdminToken, Scope};
use auditgate::admin::{router, AdminState};
use auditgate::entry::{AuditEntry, Outcome};
use auditgate::export::CSV_COLUMNS;
use auditgate::metrics::Metrics;
use auditgate::store::config::SyncMode;
use auditgate::store::query::Cursor;
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use auditgate::writer::{Writer, WriterOptions};
use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::support::{
    filter_holds, filter_time, query_string, read_entries, sha256_hex, HttpClient, Reply, TempDir,
    TestSidecar, Upstream,
};

const OPS: &str = "agt_test_ops_token";
const READER: &str = "agt_test_reader_token";
const EXPORTER: &str = "agt_test_exporter_token";

/// The `[[admin.tokens]]` of every sidecar here: ops (read, export), reader, exporter.
fn tokens_toml() -> String {
    format!(
        "[[admin.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"read\", \"export\"]\n\n\
         [[admin.tokens]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\n\
         [[admin.tokens]]\nname = \"exporter\"\nsha256 = \"{}\"\nscopes = [\"export\"]\n",
        sha256_hex(OPS),
        sha256_hex(READER),
        sha256_hex(EXPORTER)
    )
}

fn admin_tokens() -> Vec<AdminToken> {
    let token = |name: &str, secret: &str, scopes: &[Scope]| AdminToken {
        name: name.into(),
        sha256: Sha256::digest(secret.as_bytes()).into(),
        scopes: scopes.to_vec(),
    };
    vec![
        token("ops", OPS, &[Scope::Read, Scope::Export]),
        token("reader", READER, &[Scope::Read]),
        token("exporter", EXPORTER, &[Scope::Export]),
    ]
}

const ACTIONS: [&str; 7] = [
    "user.deleted",
    "user.created",
    "user.role_changed",
    "post.created",
    "auth.login_failed",
    "http.post",
    "user_x.special",
];
const STATUSES: [Option<u16>; 11] = [
    Some(200),
    Some(201),
    Some(204),
    Some(302),
    Some(400),
    Some(401),
    Some(403),
    Some(404),
    Some(500),
    Some(502),
    None,
];

/// A known, varied set of entries, all created before `now` at times well away (17 minutes or
/// more) from any whole-hour boundary a relative filter might draw.
fn seed_entries(count: usize, now: DateTime<Utc>) -> Vec<AuditEntry> {
    (0..count)
        .map(|i| {
            let mut entry = AuditEntry::new("seed-log", ACTIONS[i % ACTIONS.len()]);
            entry.created_at =
                now - TimeDelta::hours(3 * i as i64) - TimeDelta::minutes(17 + (i % 5) as i64);
            let (actor_id, actor_email) = match i % 5 {
                0 => (Some("u1"), Some("alice@example.com")),
                1 => (Some("u2"), Some("bob@example.com")),
                2 => (None, Some("carol@example.com")),
                3 => (Some("u4"), None),
                _ => (None, None),
            };
            entry.actor_id = actor_id.map(str::to_string);
            entry.actor_email = actor_email.map(str::to_string);
            entry.actor_source = actor_id.or(actor_email).map(|_| "jwt".to_string());
            entry.actor_verified = actor_id.is_some();
            let (resource_type, resource_id) = match i % 4 {
                0 => (Some("user"), Some(format!("{}", i % 13))),
                1 => (Some("post"), Some(format!("p{}", i % 9))),
                2 => (Some("user"), None),
                _ => (None, None),
            };
            entry.resource_type = resource_type.map(str::to_string);
            entry.resource_id = resource_id;
            entry.status = STATUSES[i % STATUSES.len()];
            entry.outcome = entry
                .status
                .map(Outcome::from_status)
                .unwrap_or(Outcome::Unknown);
            entry.ip = match i % 6 {
                0 => Some(format!("10.0.0.{}", i % 250)),
                1 => Some("10.1.2.3".to_string()),
                2 => Some(format!("192.168.1.{}", i % 250)),
                3 => Some(format!("2001:db8::{:x}", i % 16)),
                4 => Some("172.16.5.4".to_string()),
                _ => None,
            };
            entry.path = Some(if i % 10 == 0 {
                format!("/files/100%_done/{i}")
            } else {
                format!("/api/things/{i}")
            });
            entry.method = Some(if i % 3 == 0 { "DELETE" } else { "POST" }.to_string());
            entry.user_agent = Some("seed/1.0".to_string());
            entry.metadata.insert("i".into(), json!(i));
            entry
        })
        .collect()
}

/// The router over a store holding exactly `seed_entries`, with the admin API's own entries
/// written to a second store.
struct Harness {
    app: axum::Router,
    seeded: Vec<AuditEntry>,
    audit_store: Arc<SqliteStore>,
    audit_writer: Option<Writer>,
    now: DateTime<Utc>,
    _dir: TempDir,
}

impl Harness {
    fn new(count: usize) -> Harness {
        let dir = TempDir::new("admin-filters");
        let now = Utc::now();
        let store =
            Arc::new(SqliteStore::open(&dir.0.join("seeded.db"), SyncMode::Normal).expect("store"));
        let mut seeded = seed_entries(count, now);
        // Append oldest first, so sequence numbers follow time like a real log.
        seeded.reverse();
        store.append(&mut seeded).expect("seed");
        let audit_store =
            Arc::new(SqliteStore::open(&dir.0.join("admin.db"), SyncMode::Normal).expect("store"));
        let audit_writer = Writer::start(
            audit_store.clone(),
            WriterOptions {
                capacity: 10_000,
                batch_size: 256,
                linger: Duration::from_millis(1),
                spill_path: None,
                journal: None,
            },
        )
        .expect("writer");
        let app = router(AdminState {
            store,
            writer: audit_writer.handle(),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(Authenticator::new(&admin_tokens())),
            log_id: Arc::from("admin-log"),
            log: Arc::new(auditgate::admin::log_api::LogApiState::new(None, None)),
            ingest_keys: Arc::default(),
        });
        Harness {
            app,
            seeded,
            audit_store,
            audit_writer: Some(audit_writer),
            now,
            _dir: dir,
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder().uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, body)
    }

    async fn json(&self, uri: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.get(uri, Some(OPS)).await;
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&body))),
        )
    }

    /// The admin API's own entries, once the writer has stored them.
    async fn admin_entries(&self) -> Vec<AuditEntry> {
        if let Some(writer) = &self.audit_writer {
            assert!(writer.handle().flushed(Duration::from_secs(10)).await);
        }
        read_entries(self.audit_store.path())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(writer) = self.audit_writer.take() {
            writer.shutdown();
        }
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn single_filters(now: DateTime<Utc>) -> Vec<Vec<(&'static str, String)>> {
    let date = (now - TimeDelta::days(10)).format("%Y-%m-%d").to_string();
    let offset_time = (now - TimeDelta::days(5))
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).expect("offset"))
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    let one = |name: &'static str, value: &str| vec![(name, value.to_string())];
    vec![
        one("actor", "u1"),
        one("actor", "alice@example.com"),
        one("actor", "carol@example.com"),
        one("actor", "nobody@example.com"),
        one("action", "user.deleted"),
        one("action_prefix", "user."),
        one("action_prefix", "user_"),
        one("action_prefix", "u"),
        one("exclude_action_prefix", "user."),
        one("exclude_action_prefix", "user"),
        one("resource_type", "user"),
        vec![
            ("resource_type", "post".into()),
            ("resource_id", "p3".into()),
        ],
        one("resource_id", "5"),
        one("outcome", "failure"),
        one("outcome", "unknown"),
        one("status", "404"),
        one("status", "4xx"),
        one("status", "5xx"),
        one("ip", "10.1.2.3"),
        one("ip", "10.0.0.0/8"),
        one("ip", "2001:db8::/32"),
        one("ip", "2001:DB8::3"),
        one("ip", "192.168.0.0/16"),
        one("since", "24h"),
        one("since", "7d"),
        one("until", "2d"),
        one("since", &date),
        one("until", &offset_time),
        one("q", "ALICE"),
        one("q", "100%_"),
        one("q", "_done"),
        one("q", "p3"),
        one("q", "role"),
    ]
}

/// Asks for every entry matching `params` (one page of up to 1000, counted) and checks the
/// answer against the oracle: the same entries, newest first, and the right total.
async fn check_filter(harness: &Harness, params: &[(&str, String)]) -> usize {
    let expected: Vec<u64> = harness
        .seeded
        .iter()
        .rev()
        .filter(|entry| {
            params
                .iter()
                .all(|(name, value)| filter_holds(entry, name, value, harness.now))
        })
        .map(|entry| entry.seq)
        .collect();
    let query = query_string(params);
    let (status, body) = harness
        .json(&format!("/api/v1/entries?{query}&limit=1000&count=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let got: Vec<u64> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, expected, "{query}");
    assert_eq!(body["total"], json!(expected.len()), "{query}");
    assert_eq!(body["nextCursor"], Value::Null, "{query}");
    expected.len()
}

#[tokio::test]
async fn every_filter_alone_and_in_pairs_returns_exactly_the_matching_entries() {
    let harness = Harness::new(240);
    let singles = single_filters(harness.now);
    for params in &singles {
        let found = check_filter(&harness, params).await;
        // A filter that matched nothing or everything would prove little.
        let informative = params[0].1 == "nobody@example.com" || (found > 0 && found < 240);
        assert!(informative, "{params:?} matched {found}");
    }
    let mut combined = 0;
    for (index, first) in singles.iter().enumerate() {
        for second in &singles[index + 1..] {
            if first
                .iter()
                .any(|(name, _)| second.iter().any(|(other, _)| other == name))
            {
                continue; // the same parameter twice is a 400, tested below
            }
            let params: Vec<(&str, String)> = first.iter().chain(second).cloned().collect();
            let bound = |name: &str| {
                params
                    .iter()
                    .find(|(param, _)| *param == name)
                    .map(|(_, value)| filter_time(value, harness.now))
            };
            if let (Some(since), Some(until)) = (bound("since"), bound("until")) {
                if since > until {
                    let (status, body) = harness
                        .json(&format!("/api/v1/entries?{}", query_string(&params)))
                        .await;
                    assert_eq!(status, StatusCode::BAD_REQUEST);
                    assert_eq!(body["param"], "since");
                    continue;
                }
            }
            if check_filter(&harness, &params).await > 0 {
                combined += 1;
            }
        }
    }
    assert!(
        combined > 100,
        "only {combined} combinations matched anything"
    );

    // The empty filter is every entry, and asc is the same set oldest first.
    let (_, all) = harness.json("/api/v1/entries?limit=1000&order=asc").await;
    let seqs: Vec<u64> = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=240).collect::<Vec<u64>>());
    assert!(all.get("total").is_none(), "total only when counted");

    // Each answered query was itself recorded, with the token's name and the row count.
    let admin = harness.admin_entries().await;
    assert!(admin.len() > 300);
    let first = &admin[0];
    assert_eq!(first.action, "audit.query");
    assert_eq!(first.actor_id.as_deref(), Some("ops"));
    assert_eq!(first.actor_source.as_deref(), Some("token"));
    assert!(first.actor_verified);
    assert_eq!(first.log_id, "admin-log");
    assert_eq!(first.status, Some(200));
    assert_eq!(first.outcome, Outcome::Success);
    assert_eq!(first.metadata["filters"]["actor"], "u1");
    assert_eq!(first.metadata["rows"], json!(48));
}

#[tokio::test]
async fn pages_walk_the_whole_set_both_ways_without_gap_or_duplicate() {
    let harness = Harness::new(240);
    for order in ["desc", "asc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut uri = format!("/api/v1/entries?action_prefix=user.&limit=7&order={order}");
            if let Some(cursor) = &cursor {
                uri.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = harness.json(&uri).await;
            assert_eq!(status, StatusCode::OK);
            let entries = page["entries"].as_array().expect("entries");
            assert!(entries.len() <= 7);
            seen.extend(
                entries
                    .iter()
                    .map(|entry| entry["seq"].as_u64().expect("seq")),
            );
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        let mut expected: Vec<u64> = harness
            .seeded
            .iter()
            .filter(|entry| entry.action.starts_with("user."))
            .map(|entry| entry.seq)
            .collect();
        if order == "desc" {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order}");
    }
    // prevCursor is the first row's position: reversing from it walks back to newer entries.
    let (_, second_page) = harness
        .json(&format!(
            "/api/v1/entries?limit=5&cursor={}",
            Cursor::after_seq(200).encode()
        ))
        .await;
    let back = second_page["prevCursor"].as_str().expect("prev cursor");
    let (_, newer) = harness
        .json(&format!("/api/v1/entries?limit=3&order=asc&cursor={back}"))
        .await;
    let seqs: Vec<u64> = newer["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [200, 201, 202]);
}

#[tokio::test]
async fn malformed_parameters_are_refused_naming_the_parameter() {
    let harness = Harness::new(30);
    let v2_cursor = base64_url(b"v2:10");
    let long = "x".repeat(1025);
    let cases: Vec<(String, &str)> = vec![
        ("since=yesterday".into(), "since"),
        ("until=2026-13-01".into(), "until"),
        ("since=2026-02-01&until=2026-01-01".into(), "since"),
        ("since=2026-01-01T00:00:00".into(), "since"),
        ("limit=0".into(), "limit"),
        ("limit=1001".into(), "limit"),
        ("limit=99999999999999999999".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("cursor=bogus".into(), "cursor"),
        (format!("cursor={v2_cursor}"), "cursor"),
        ("status=abc".into(), "status"),
        ("status=6xx".into(), "status"),
        ("ip=10.0.0.0/33".into(), "ip"),
        ("ip=localhost".into(), "ip"),
        ("outcome=ok".into(), "outcome"),
        ("order=random".into(), "order"),
        ("count=yes".into(), "count"),
        ("acton=user.deleted".into(), "acton"),
        ("action=a&action=b".into(), "action"),
        ("actor=".into(), "actor"),
        (format!("q={long}"), "q"),
        // SQL where a number, time, cursor or keyword belongs is just a malformed value.
        (format!("limit={}", encode("1;DROP TABLE entries")), "limit"),
        (
            format!("order={}", encode("seq;DROP TABLE entries--")),
            "order",
        ),
        (format!("cursor={}", encode("' OR 1=1 --")), "cursor"),
        (format!("since={}", encode("1' OR '1'='1")), "since"),
        (format!("status={}", encode("200 OR 1=1")), "status"),
        (format!("{}=1", encode("action; --")), "action; --"),
    ];
    for (query, param) in &cases {
        let (status, body) = harness.json(&format!("/api/v1/entries?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["param"], *param, "{query}: {body}");
        assert!(body["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()));
        assert_eq!(body["errors"][0]["param"], *param);
    }
    // Every bad parameter is listed at once.
    let (_, body) = harness
        .json("/api/v1/entries?limit=0&since=x&outcome=ok")
        .await;
    let params: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|error| error["param"].as_str().expect("param"))
        .collect();
    assert_eq!(params, ["limit", "since", "outcome"]);

    // In a text filter SQL is only text: it matches itself, here nothing.
    for query in [
        format!("action={}", encode("' OR '1'='1")),
        format!("q={}", encode("%' OR 1=1 --")),
        format!("actor={}", encode("u1' --")),
        format!("resource_id={}", encode("1 OR 1=1")),
    ] {
        let (status, body) = harness
            .json(&format!("/api/v1/entries?{query}&count=true"))
            .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(body["total"], 0, "{query}");
    }
    let (_, all) = harness.json("/api/v1/entries?count=true").await;
    assert_eq!(all["total"], 30, "the table is intact");

    // The other endpoints' own parameters.
    for (uri, param) in [
        ("/api/v1/stats?by=week", "by"),
        ("/api/v1/stats?cursor=x", "cursor"),
        ("/api/v1/stats?limit=5000", "limit"),
        ("/api/v1/export", "format"),
        ("/api/v1/export?format=xlsx", "format"),
        ("/api/v1/export?format=csv&limit=5", "limit"),
        ("/api/v1/export?format=csv&since=tomorrow", "since"),
        ("/api/audit-log?page=0", "page"),
        ("/api/audit-log?page=two", "page"),
    ] {
        let (status, body) = harness.json(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["param"], param, "{uri}");
    }

    // A refused query is recorded too, as a failure naming the bad parameters.
    let admin = harness.admin_entries().await;
    let refused = admin
        .iter()
        .find(|entry| entry.status == Some(400))
        .expect("a refused query was recorded");
    assert_eq!(refused.action, "audit.query");
    assert_eq!(refused.outcome, Outcome::Failure);
    assert_eq!(refused.metadata["invalid"], json!(["since"]));
}

/// The admin API's JSON form of an entry, written out key by key from the documented shape (the
/// reference's camelCase names, every key present, absent values as `null`, the time with
/// microseconds, the duration in milliseconds) rather than taken from `AuditEntry::to_api_json`,
/// so a renamed, dropped or reformatted field fails the tests that compare against it.
fn expected_api_json(entry: &AuditEntry) -> Value {
    let outcome = match entry.outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Error => "error",
        Outcome::Unknown => "unknown",
    };
    json!({
        "id": entry.id,
        "seq": entry.seq,
        "createdAt": entry.created_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "logId": entry.log_id,
        "actorId": entry.actor_id,
        "actorEmail": entry.actor_email,
        "actorName": entry.actor_name,
        "actorSource": entry.actor_source,
        "actorVerified": entry.actor_verified,
        "tenant": entry.tenant,
        "action": entry.action,
        "resourceType": entry.resource_type,
        "resourceId": entry.resource_id,
        "outcome": outcome,
        "status": entry.status,
        "method": entry.method,
        "path": entry.path,
        "route": entry.route,
        "rule": entry.rule,
        "ip": entry.ip,
        "userAgent": entry.user_agent,
        "requestId": entry.request_id,
        "durationUs": entry.duration_us,
        "durationMs": entry.duration_us.map(|us| us as f64 / 1000.0),
        "error": entry.error,
        "metadata": entry.metadata,
    })
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn one_entry_by_id_or_seq_and_stats() {
    let harness = Harness::new(60);
    let target = &harness.seeded[10];
    let (status, by_id) = harness
        .json(&format!("/api/v1/entries/{}", target.id))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id, expected_api_json(target));
    let (_, by_seq) = harness
        .json(&format!("/api/v1/entries/{}", target.seq))
        .await;
    assert_eq!(by_seq, by_id);
    for missing in ["01ZZZZZZZZZZZZZZZZZZZZZZZZ", "999", &"9".repeat(300)] {
        let (status, body) = harness.json(&format!("/api/v1/entries/{missing}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({"error": "no such entry"}));
    }

    let (status, stats) = harness.json("/api/v1/stats?by=action").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["by"], "action");
    assert_eq!(stats["total"], 60);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for entry in &harness.seeded {
        *expected.entry(entry.action.clone()).or_default() += 1;
    }
    let buckets = stats["buckets"].as_array().expect("buckets");
    let got: BTreeMap<String, u64> = buckets
        .iter()
        .map(|bucket| {
            (
                bucket["key"].as_str().expect("key").to_string(),
                bucket["count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let counts: Vec<u64> = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] >= pair[1]),
        "largest first"
    );

    let (_, limited) = harness
        .json("/api/v1/stats?by=actor&limit=2&status=4xx")
        .await;
    assert_eq!(limited["buckets"].as_array().expect("buckets").len(), 2);
    let failures = harness
        .seeded
        .iter()
        .filter(|entry| {
            entry
                .status
                .is_some_and(|status| (400..500).contains(&status))
        })
        .count();
    assert_eq!(
        limited["total"],
        json!(failures),
        "total covers every bucket"
    );

    let (_, days) = harness.json("/api/v1/stats?by=day&since=3d").await;
    let keys: Vec<&str> = days["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|bucket| bucket["key"].as_str().expect("key"))
        .collect();
    assert!(keys.len() >= 3 && keys.len() <= 4, "{keys:?}");
    assert!(
        keys.windows(2).all(|pair| pair[0] < pair[1]),
        "days in time order"
    );

    let (_, outcomes) = harness.json("/api/v1/stats?by=outcome").await;
    let sum: u64 = outcomes["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|bucket| bucket["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(sum, 60);
}

/// Sends a request to the admin listener with optional bearer token and extra headers.
async fn admin_request(
    client: &HttpClient,
    sidecar: &TestSidecar,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(value) = &authorization {
        all.push(("authorization", value));
    }
    client
        .send(
            method,
            &format!("http://{}{path}", sidecar.admin),
            &all,
            body.to_string(),
        )
        .await
}

async fn start_admin_sidecar() -> (Upstream, TestSidecar) {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, &tokens_toml()).await;
    (upstream, sidecar)
}

#[tokio::test]
async fn bearer_tokens_and_scopes_guard_the_admin_listener_only() {
    let (upstream, mut sidecar) = start_admin_sidecar().await;
    let client = HttpClient::new();
    let get = |path: &'static str, token: Option<&'static str>| {
        admin_request(&client, &sidecar, "GET", path, token, &[], "")
    };

    let anonymous = get("/api/v1/entries", None).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous
        .headers
        .get("www-authenticate")
        .is_some_and(|value| value.as_bytes().starts_with(b"Bearer")));
    assert!(anonymous.json()["error"].as_str().is_some());
    assert_eq!(get("/api/v1/entries", Some("agt_wrong")).await.status, 401);
    let basic = admin_request(
        &client,
        &sidecar,
        "GET",
        "/api/v1/entries",
        None,
        &[("authorization", "Basic b3BzOm9wcw==")],
        "",
    )
    .await;
    assert_eq!(basic.status, 401);
    for path in [
        "/api/v1/stats",
        "/api/v1/export?format=csv",
        "/api/audit-log",
        "/api/v1/session",
    ] {
        assert_eq!(get(path, None).await.status, 401, "{path}");
    }

    assert_eq!(get("/api/v1/entries", Some(READER)).await.status, 200);
    let no_export = get("/api/v1/export?format=csv", Some(READER)).await;
    assert_eq!(no_export.status, 403);
    assert_eq!(no_export.json()["scope"], "export");
    let no_read = get("/api/v1/entries", Some(EXPORTER)).await;
    assert_eq!(no_read.status, 403);
    assert_eq!(no_read.json()["scope"], "read");
    assert_eq!(
        get("/api/v1/export?format=csv", Some(EXPORTER))
            .await
            .status,
        200
    );

    // Public: health and the API description, which holds no data.
    assert_eq!(get("/healthz", None).await.status, 200);
    let openapi = get("/api/v1/openapi.json", None).await;
    assert_eq!(openapi.status, 200);
    assert_eq!(openapi.json()["openapi"], "3.1.0");

    // The proxy port never serves the admin API: the same path goes to the app.
    let via_proxy = client
        .send(
            "GET",
            &sidecar.url("/api/v1/entries"),
            &[("authorization", &format!("Bearer {OPS}"))],
            "",
        )
        .await;
    assert_eq!(via_proxy.status, 200);
    assert_eq!(
        via_proxy.json()["path"],
        "/api/v1/entries",
        "answered by the app"
    );
    assert_eq!(upstream.count(), 1);

    // The refusal of an authenticated caller is on record, and so is every presented
    // credential nobody holds (the wrong token, a Basic header); requests with no credential
    // at all are not.
    let denied = sidecar
        .wait_entry(|entry| entry.action == "audit.denied" && entry.actor_id.is_some())
        .await;
    assert_eq!(denied.actor_id.as_deref(), Some("reader"));
    assert_eq!(denied.status, Some(403));
    assert_eq!(denied.metadata["scope"], "export");
    assert_eq!(denied.ip.as_deref(), Some("127.0.0.1"));
    let query = sidecar
        .wait_entry(|entry| entry.action == "audit.query")
        .await;
    assert_eq!(query.actor_id.as_deref(), Some("reader"));
    assert_eq!(query.actor_source.as_deref(), Some("token"));
    assert!(query.actor_verified);
    assert_eq!(query.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(query.path.as_deref(), Some("/api/v1/entries"));
    assert_eq!(query.route.as_deref(), Some("/api/v1/entries"));
    assert_eq!(query.metadata["auth"], "bearer");
    let entries = sidecar.entries().await;
    let unknown: Vec<&AuditEntry> = entries
        .iter()
        .filter(|entry| entry.action == "audit.denied" && entry.actor_id.is_none())
        .collect();
    assert_eq!(
        unknown.len(),
        2,
        "the wrong token and the Basic header: {unknown:#?}"
    );
    for entry in &unknown {
        assert_eq!(entry.status, Some(401));
        assert_eq!(entry.path.as_deref(), Some("/api/v1/entries"));
        assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"));
        assert!(entry.metadata["reason"].as_str().is_some(), "{entry:?}");
    }
    // The anonymous 401s left no entries: every other entry names its token holder.
    assert!(entries
        .iter()
        .filter(|entry| !unknown.iter().any(|seen| seen.id == entry.id))
        .all(|entry| entry.actor_id.is_some()));
    // The wrong token itself is nowhere in the log.
    assert!(entries
        .iter()
        .all(|entry| !format!("{entry:?}").contains("agt_wrong")));
    sidecar.stop().await;
}

fn cookie_of(reply: &Reply) -> String {
    let set_cookie = reply
        .headers
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("set-cookie")
        .to_string();
    set_cookie.split(';').next().expect("pair").to_string()
}

#[tokio::test]
async fn viewer_sessions_sign_in_authenticate_and_refuse_cross_site_changes() {
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    let client = HttpClient::new();
    let origin = format!("http://{}", sidecar.admin);
    let sign_in = |token: &str, headers: Vec<(&'static str, String)>| {
        let body = json!({"token": token}).to_string();
        let client = &client;
        let sidecar = &sidecar;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            admin_request(
                client,
                sidecar,
                "POST",
                "/api/v1/session",
                None,
                &headers,
                &body,
            )
            .await
        }
    };

    let refused = sign_in(
        "agt_wrong",
        vec![("content-type", "application/json".into())],
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "unknown token");
    let garbled = admin_request(
        &client,
        &sidecar,
        "POST",
        "/api/v1/session",
        None,
        &[("content-type", "application/json")],
        READER,
    )
    .await;
    assert_eq!(garbled.status, 400, "the token belongs in a JSON body");
    let form = sign_in(READER, vec![("content-type", "text/plain".into())]).await;
    assert_eq!(form.status, 415, "a cross-site form cannot send JSON");
    let cross = sign_in(
        READER,
        vec![
            ("content-type", "application/json".into()),
            ("origin", "http://evil.example".into()),
        ],
    )
    .await;
    assert_eq!(cross.status, 403);
    assert!(cross.headers.get("set-cookie").is_none());

    let signed_in = sign_in(
        READER,
        vec![
            ("content-type", "application/json".into()),
            ("origin", origin.clone()),
        ],
    )
    .await;
    assert_eq!(signed_in.status, 204);
    let set_cookie = signed_in
        .headers
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("set-cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(READER), "the cookie is not the token");
    let cookie = cookie_of(&signed_in);

    let with_cookie =
        |method: &'static str, path: &'static str, extra: Vec<(&'static str, String)>| {
            let mut headers = vec![("cookie", cookie.clone())];
            headers.extend(extra);
            let client = &client;
            let sidecar = &sidecar;
            async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(name, value)| (*name, value.as_str()))
                    .collect();
                admin_request(client, sidecar, method, path, None, &headers, "").await
            }
        };
    let who = with_cookie("GET", "/api/v1/session", vec![]).await;
    assert_eq!(who.status, 200);
    let who = who.json();
    assert_eq!(who["name"], "reader");
    assert_eq!(who["scopes"], json!(["read"]));
    let expires =
        DateTime::parse_from_rfc3339(who["expiresAt"].as_str().expect("expiresAt")).expect("time");
    let lifetime = expires.with_timezone(&Utc) - Utc::now();
    assert!(lifetime > TimeDelta::hours(11) && lifetime <= TimeDelta::hours(12));
    assert_eq!(
        with_cookie("GET", "/api/v1/entries", vec![]).await.status,
        200
    );
    assert_eq!(
        with_cookie("GET", "/api/audit-log", vec![]).await.status,
        200
    );
    assert_eq!(
        with_cookie("GET", "/api/v1/export?format=csv", vec![])
            .await
            .status,
        403,
        "a session has its token's scopes"
    );
    let bearer_who = admin_request(
        &client,
        &sidecar,
        "GET",
        "/api/v1/session",
        Some(OPS),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(bearer_who["name"], "ops");
    assert_eq!(bearer_who["expiresAt"], Value::Null);

    // Signing out from another site is refused, and the session survives it.
    let forged = with_cookie(
        "DELETE",
        "/api/v1/session",
        vec![("origin", "http://evil.example".into())],
    )
    .await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        with_cookie("GET", "/api/v1/session", vec![]).await.status,
        200
    );

    let signed_out = with_cookie(
        "DELETE",
        "/api/v1/session",
        vec![("origin", origin.clone())],
    )
    .await;
    assert_eq!(signed_out.status, 204);
    let cleared = signed_out
        .headers
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("cookie cleared");
    assert!(cleared.starts_with("auditgate_session=;") && cleared.contains("Max-Age=0"));
    let after = with_cookie("GET", "/api/v1/entries", vec![]).await;
    assert_eq!(after.status, 401);
    assert!(after.json()["error"]
        .as_str()
        .is_some_and(|error| error.contains("session")));

    let login = sidecar
        .wait_entry(|entry| entry.action == "audit.login")
        .await;
    assert_eq!(login.actor_id.as_deref(), Some("reader"));
    assert_eq!(login.metadata["auth"], "session");
    let logout = sidecar
        .wait_entry(|entry| entry.action == "audit.logout")
        .await;
    assert_eq!(logout.actor_id.as_deref(), Some("reader"));
    sidecar.stop().await;
}

/// Entries pushed straight to the sidecar's writer, as the proxy would.
async fn push_entries(sidecar: &TestSidecar, entries: Vec<AuditEntry>) {
    let writer = sidecar.writer();
    for entry in entries {
        writer.reserve().await;
        writer.push(entry);
    }
    assert!(writer.flushed(Duration::from_secs(10)).await);
}

fn bulk(count: usize, action: &str) -> Vec<AuditEntry> {
    (0..count)
        .map(|index| {
            let mut entry = AuditEntry::new("test", action);
            entry.actor_id = Some(format!("u{}", index % 7));
            entry.outcome = Outcome::Success;
            entry.status = Some(200);
            entry.metadata.insert("n".into(), json!(index));
            entry
        })
        .collect()
}

/// The ids of the entries of a listing page.
fn page_seqs(body: &Value) -> Vec<u64> {
    body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn auditgates_own_entries_can_be_left_out_of_listings_stats_and_exports() {
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    let mut app = bulk(40, "app.thing");
    // An app action that merely starts like auditgate's own: `audit.` must not hide it.
    app.extend(bulk(5, "auditor.note"));
    push_entries(&sidecar, app).await;
    let client = HttpClient::new();
    let get = |path: String| {
        let client = &client;
        let sidecar = &sidecar;
        async move { admin_request(client, sidecar, "GET", &path, Some(OPS), &[], "").await }
    };
    // Heavy viewer use: every read is itself an `audit.query` entry by "ops".
    for _ in 0..60 {
        assert_eq!(get("/api/v1/entries?limit=1".into()).await.status, 200);
    }
    let stored = sidecar.wait_entries(45 + 60).await;
    let app_seqs: Vec<u64> = stored
        .iter()
        .rev()
        .filter(|entry| !entry.action.starts_with("audit."))
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(app_seqs.len(), 45);

    // Without the exclusion auditgate's reads lead both top lists.
    let top = |body: &Value| body["buckets"][0]["key"].as_str().unwrap_or("").to_string();
    let by_action = get("/api/v1/stats?by=action".into()).await.json();
    assert_eq!(top(&by_action), "audit.query");
    let by_actor = get("/api/v1/stats?by=actor".into()).await.json();
    assert_eq!(top(&by_actor), "ops");

    let hide = "exclude_action_prefix=audit.";
    let by_action = get(format!("/api/v1/stats?by=action&{hide}")).await.json();
    assert_eq!(
        by_action["buckets"],
        json!([{"key": "app.thing", "count": 40}, {"key": "auditor.note", "count": 5}])
    );
    assert_eq!(by_action["total"], 45);
    let by_actor = get(format!("/api/v1/stats?by=actor&{hide}")).await.json();
    let actors: Vec<&str> = by_actor["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|bucket| bucket["key"].as_str())
        .collect();
    assert!(!actors.contains(&"ops"), "{actors:?}");
    assert_eq!(actors.len(), 7);
    let by_day = get(format!("/api/v1/stats?by=day&{hide}")).await.json();
    let charted: u64 = by_day["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|bucket| bucket["count"].as_u64())
        .sum();
    assert_eq!(charted, 45);

    // Listing: counted, and walked by cursor in both directions, with the reads still coming.
    let first = get(format!("/api/v1/entries?{hide}&limit=7&count=true")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["total"], 45);
    let mut walked = page_seqs(&first);
    let mut cursor = first["nextCursor"].as_str().map(str::to_string);
    let mut pages = 1;
    while let Some(next) = cursor.take() {
        let page = get(format!("/api/v1/entries?{hide}&limit=7&cursor={next}"))
            .await
            .json();
        walked.extend(page_seqs(&page));
        cursor = page["nextCursor"].as_str().map(str::to_string);
        pages += 1;
        assert!(pages < 20, "paging did not end");
    }
    assert_eq!(walked, app_seqs);
    let oldest = app_seqs.last().expect("oldest");
    let back = get(format!(
        "/api/v1/entries?{hide}&order=asc&limit=1000&cursor={}",
        Cursor::after_seq(*oldest).encode()
    ))
    .await
    .json();
    let mut forward = app_seqs.clone();
    forward.reverse();
    assert_eq!(page_seqs(&back), forward[1..].to_vec());

    // Several prefixes, repeated.
    let both = get(format!(
        "/api/v1/entries?{hide}&exclude_action_prefix=auditor.&count=true&limit=1"
    ))
    .await
    .json();
    assert_eq!(both["total"], 40);

    // The export holds the same 45 entries, and its record says what was left out.
    let csv = get(format!("/api/v1/export?format=csv&{hide}")).await;
    assert_eq!(csv.status, 200);
    let rows = csv.text().lines().count() - 1;
    assert_eq!(rows, 45, "{}", csv.text());
    assert!(!csv.text().contains("audit.query"));
    let exported = sidecar
        .wait_entry(|entry| entry.action == "audit.export")
        .await;
    assert_eq!(
        exported.metadata["filters"]["exclude_action_prefix"],
        "audit."
    );

    // Bad values are refused, naming the parameter.
    for bad in ["exclude_action_prefix=", "exclude_action_prefix"] {
        for path in [
            "/api/v1/entries?",
            "/api/v1/stats?",
            "/api/v1/export?format=csv&",
        ] {
            let reply = get(format!("{path}{bad}")).await;
            assert_eq!(reply.status, 400, "{path}?{bad}");
            assert_eq!(
                reply.json()["param"],
                "exclude_action_prefix",
                "{path}?{bad}"
            );
        }
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn pagination_has_no_gap_or_duplicate_while_entries_arrive() {
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    push_entries(&sidecar, bulk(150, "bulk.before")).await;
    let writer = sidecar.writer();
    let arriving = tokio::spawn(async move {
        for entry in bulk(200, "bulk.during") {
            writer.reserve().await;
            writer.push(entry);
            // Pace the writes so that they interleave with the page reads.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let client = HttpClient::new();
    for order in ["desc", "asc"] {
        let mut seqs: Vec<u64> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..2000 {
            let mut path = format!("/api/v1/entries?limit=7&order={order}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page = admin_request(&client, &sidecar, "GET", &path, Some(OPS), &[], "").await;
            assert_eq!(page.status, 200);
            let page = page.json();
            seqs.extend(
                page["entries"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .map(|entry| entry["seq"].as_u64().expect("seq")),
            );
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        // Every entry (the bulk ones, and the audit.query entries of this very walk) from the
        // first seen to the last, once each, in order.
        let expected: Vec<u64> = match order {
            "desc" => (1..=seqs[0]).rev().collect(),
            _ => (1..=*seqs.last().expect("some")).collect(),
        };
        assert_eq!(seqs, expected, "{order}");
        assert!(seqs.len() >= 150);
        // Entries did arrive during the walk (at least the walk's own audit.query entries), and
        // the oldest-first walk, which runs into them, took them in.
        let newest = sidecar.entries().await.last().map_or(0, |entry| entry.seq);
        match order {
            "desc" => assert!(newest > seqs[0]),
            _ => assert!(seqs.len() > 150 + 30, "{} seen", seqs.len()),
        }
    }
    arriving.await.expect("writer task");
    sidecar.stop().await;
}

/// Entries whose values break naive CSV and JSON writers or attack a spreadsheet.
fn hostile_entries() -> Vec<AuditEntry> {
    let values = [
        "=HYPERLINK(\"http://evil\",\"click\")",
        "+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1:A9)",
        "\tindented",
        "\rcarriage",
        "a,b,\"c\"",
        "line one\nline two\r\nline three",
        "Zürich 東京 🙂 ñ",
        "O'Brien; DROP TABLE entries; --",
    ];
    values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let mut entry = AuditEntry::new("test", format!("hostile.{index}"));
            entry.actor_email = Some(value.to_string());
            entry.resource_id = Some(value.to_string());
            entry.path = Some(format!("/x/{value}"));
            entry.user_agent = Some(value.to_string());
            entry.outcome = Outcome::Failure;
            entry.status = Some(403);
            entry.metadata.insert("note".into(), json!(value));
            entry
        })
        .collect()
}

#[tokio::test]
async fn exports_stream_csv_json_and_ndjson_that_parse_back() {
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    push_entries(&sidecar, hostile_entries()).await;
    // Enough plain entries to span several store chunks.
    push_entries(&sidecar, bulk(2300, "hostile.bulk")).await;
    let stored: Vec<AuditEntry> = sidecar
        .entries()
        .await
        .into_iter()
        .filter(|entry| entry.action.starts_with("hostile."))
        .collect();
    assert_eq!(stored.len(), 2310);
    let newest_first: Vec<Value> = stored.iter().rev().map(expected_api_json).collect();
    let client = HttpClient::new();
    let export = |format: &str| {
        let path = format!("/api/v1/export?format={format}&action_prefix=hostile.");
        let client = &client;
        let sidecar = &sidecar;
        async move { admin_request(client, sidecar, "GET", &path, Some(OPS), &[], "").await }
    };

    let csv_reply = export("csv").await;
    assert_eq!(csv_reply.status, 200);
    assert_eq!(
        csv_reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    let disposition = csv_reply
        .headers
        .get("content-disposition")
        .and_then(|value| value.to_str().ok())
        .expect("disposition");
    assert!(
        disposition.starts_with("attachment; filename=\"auditgate-export-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    assert!(
        csv_reply.headers.get("transfer-encoding").is_some(),
        "streamed, not buffered"
    );
    let mut reader = csv::Reader::from_reader(csv_reply.body.as_ref());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header, CSV_COLUMNS);
    let column = |name: &str| header.iter().position(|c| c == name).expect("column");
    let rows: Vec<csv::StringRecord> = reader.records().map(|row| row.expect("row")).collect();
    assert_eq!(rows.len(), 2310);
    for (row, entry) in rows.iter().zip(stored.iter().rev()) {
        assert_eq!(row.get(column("id")), Some(entry.id.as_str()));
        assert_eq!(row.get(column("seq")), Some(entry.seq.to_string().as_str()));
        let metadata: Value =
            serde_json::from_str(row.get(column("metadata")).expect("metadata")).expect("json");
        assert_eq!(Value::Object(entry.metadata.clone()), metadata);
        let email = entry.actor_email.clone().unwrap_or_default();
        let expected_email = if email.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{email}")
        } else {
            email
        };
        assert_eq!(row.get(column("actorEmail")), Some(expected_email.as_str()));
        assert_eq!(
            row.get(column("userAgent")),
            Some(expected_email.as_str()),
            "the same value, the same treatment"
        );
    }
    let hostile_row = rows
        .iter()
        .find(|row| row.get(column("action")) == Some("hostile.7"))
        .expect("row with newlines");
    assert_eq!(
        hostile_row.get(column("resourceId")),
        Some("line one\nline two\r\nline three")
    );

    let json_reply = export("json").await;
    assert_eq!(json_reply.status, 200);
    let parsed: Value = serde_json::from_slice(&json_reply.body).expect("one JSON document");
    assert_eq!(parsed, Value::Array(newest_first.clone()));

    let ndjson_reply = export("ndjson").await;
    assert_eq!(
        ndjson_reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let lines: Vec<Value> = ndjson_reply
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one entry a line"))
        .collect();
    assert_eq!(lines, newest_first);

    // Oldest first, and resumed after a cursor.
    let resumed = admin_request(
        &client,
        &sidecar,
        "GET",
        &format!(
            "/api/v1/export?format=ndjson&order=asc&action_prefix=hostile.&cursor={}",
            Cursor::after_seq(stored[2299].seq).encode()
        ),
        Some(OPS),
        &[],
        "",
    )
    .await;
    let resumed: Vec<u64> = resumed
        .text()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(
        resumed,
        stored[2300..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // Each export is on record with its format, filters and row count.
    let is_export = |entry: &AuditEntry| entry.action == "audit.export";
    let exports: Vec<AuditEntry> = sidecar
        .wait_until("four audit.export entries", |entries| {
            entries.iter().filter(|entry| is_export(entry)).count() >= 4
        })
        .await
        .into_iter()
        .filter(is_export)
        .collect();
    assert_eq!(exports.len(), 4);
    let csv_export = &exports[0];
    assert_eq!(csv_export.actor_id.as_deref(), Some("ops"));
    assert_eq!(csv_export.metadata["format"], "csv");
    assert_eq!(csv_export.metadata["rows"], 2310);
    assert_eq!(csv_export.metadata["complete"], true);
    assert_eq!(
        csv_export.metadata["filters"],
        json!({"action_prefix": "hostile."})
    );
    assert_eq!(csv_export.outcome, Outcome::Success);
    assert_eq!(exports[3].metadata["rows"], 10);
    sidecar.stop().await;
}

#[tokio::test]
async fn an_export_cut_short_by_the_client_is_recorded_as_incomplete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    push_entries(&sidecar, bulk(20_000, "big.export")).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive window makes the server wait on us instead of finishing into buffers.
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut stream = socket.connect(sidecar.admin).await.expect("connect");
    let request = format!(
        "GET /api/v1/export?format=ndjson HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {OPS}\r\n\r\n",
        sidecar.admin
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut start = vec![0u8; 2048];
    let read = stream.read(&mut start).await.expect("read");
    assert!(String::from_utf8_lossy(&start[..read]).starts_with("HTTP/1.1 200"));
    drop(stream);

    let cut = sidecar
        .wait_entry(|entry| entry.action == "audit.export")
        .await;
    assert_eq!(cut.metadata["complete"], false);
    assert_eq!(cut.outcome, Outcome::Error);
    assert!(cut.error.is_some());
    let rows = cut.metadata["rows"].as_u64().expect("rows");
    assert!(rows < 20_000, "{rows} rows");
    sidecar.stop().await;
}

#[tokio::test]
async fn the_reference_endpoint_answers_like_the_reference() {
    let (_upstream, mut sidecar) = start_admin_sidecar().await;
    let mut entries = bulk(75, "user.role_changed");
    for (index, entry) in entries.iter_mut().enumerate() {
        if index % 3 == 0 {
            entry.actor_id = None; // anonymous: the reference never shows null here
        }
    }
    entries.extend(bulk(40, "post.created"));
    entries.extend(bulk(10, "User.Imported"));
    push_entries(&sidecar, entries).await;
    let client = HttpClient::new();
    let page = |query: &str| {
        let path = format!("/api/audit-log{query}");
        let client = &client;
        let sidecar = &sidecar;
        async move {
            let reply = admin_request(client, sidecar, "GET", &path, Some(READER), &[], "").await;
            assert_eq!(reply.status, 200, "{path}");
            reply.json()
        }
    };
    let first = page("?action=user").await;
    assert_eq!(
        first.as_object().expect("object").len(),
        2,
        "only logs and total"
    );
    assert_eq!(first["total"], 85, "case-insensitive substring");
    let logs = first["logs"].as_array().expect("logs");
    assert_eq!(logs.len(), 50);
    for field in [
        "id",
        "actorId",
        "actorEmail",
        "action",
        "resourceType",
        "resourceId",
        "metadata",
        "ip",
        "userAgent",
        "createdAt",
    ] {
        assert!(logs.iter().all(|log| log.get(field).is_some()), "{field}");
    }
    assert!(logs
        .iter()
        .all(|log| log["actorId"].is_string() && log["actorEmail"].is_string()));
    assert!(logs.iter().any(|log| log["actorId"] == ""));
    let second = page("?action=user&page=2").await;
    let third = page("?action=user&page=3").await;
    let seqs: Vec<u64> = [&first, &second, &third]
        .iter()
        .flat_map(|page| page["logs"].as_array().expect("logs").clone())
        .map(|log| log["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 85);
    assert!(
        seqs.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first, no overlap"
    );
    assert_eq!(second["logs"].as_array().expect("logs").len(), 35);
    assert_eq!(third["logs"], json!([]), "past the end");
    assert_eq!(third["total"], 85);
    let everything = page("").await;
    assert!(everything["total"].as_u64().expect("total") >= 125);
    assert_eq!(page("?page=99&junk=x").await["logs"], json!([]));
    let recorded = sidecar
        .wait_entry(|entry| {
            entry.path.as_deref() == Some("/api/audit-log")
                && entry.metadata["filters"]["page"] == 2
        })
        .await;
    assert_eq!(
        recorded.metadata["filters"],
        json!({"page": 2, "action": "user"})
    );
    assert_eq!(recorded.metadata["rows"], 35);
    assert_eq!(recorded.actor_id.as_deref(), Some("reader"));
    sidecar.stop().await;
}

fn seeded_db(dir: &TempDir) -> (std::path::PathBuf, Vec<AuditEntry>) {
    let db = dir.0.join("audit.db");
    let store = SqliteStore::open(&db, SyncMode::Normal).expect("store");
    let mut entries = hostile_entries();
    entries.extend(bulk(1500, "cli.bulk"));
    store.append(&mut entries).expect("append");
    (db, entries)
}

#[test]
fn the_cli_exports_with_the_same_filters() {
    let dir = TempDir::new("cli-export");
    let (db, entries) = seeded_db(&dir);
    let binary = env!("CARGO_BIN_EXE_auditgate");
    let out_file = dir.0.join("out/export.csv");
    std::fs::create_dir_all(out_file.parent().expect("parent")).expect("dir");
    let status = std::process::Command::new(binary)
        .args(["export", "--db"])
        .arg(&db)
        .args(["--format", "csv", "--action-prefix", "hostile.", "-o"])
        .arg(&out_file)
        .output()
        .expect("runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(!dir.0.join("out/export.csv.partial").exists());
    let mut reader = csv::Reader::from_path(&out_file).expect("csv");
    let actions: BTreeSet<String> = reader
        .records()
        .map(|row| row.expect("row").get(10).expect("action").to_string())
        .collect();
    assert_eq!(actions.len(), 10);
    assert!(actions.iter().all(|action| action.starts_with("hostile.")));

    let stdout = std::process::Command::new(binary)
        .args(["export", "--db"])
        .arg(&db)
        .args(["--format", "ndjson", "--asc", "--actor", "u3"])
        .output()
        .expect("runs");
    assert!(stdout.status.success());
    let seqs: Vec<u64> = String::from_utf8_lossy(&stdout.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    let expected: Vec<u64> = entries
        .iter()
        .filter(|entry| entry.actor_id.as_deref() == Some("u3"))
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(seqs, expected);
    assert!(seqs.len() > 200);

    // Exclusions repeat on the command line as in the API.
    let query = std::process::Command::new(binary)
        .args(["query", "--db"])
        .arg(&db)
        .args(["--format", "json", "--limit", "1000"])
        .args([
            "--exclude-action-prefix",
            "cli.",
            "--exclude-action-prefix",
            "hostile.1",
        ])
        .output()
        .expect("runs");
    assert!(
        query.status.success(),
        "{}",
        String::from_utf8_lossy(&query.stderr)
    );
    let shown: Vec<String> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["action"]
                .as_str()
                .expect("action")
                .to_string()
        })
        .collect();
    let expected: Vec<String> = entries
        .iter()
        .rev()
        .filter(|entry| !entry.action.starts_with("cli.") && !entry.action.starts_with("hostile.1"))
        .map(|entry| entry.action.clone())
        .collect();
    assert!(!expected.is_empty() && expected.len() < 10, "{expected:?}");
    assert_eq!(shown, expected);

    for (args, message) in [
        (vec!["--format", "xlsx"], "--format"),
        (vec!["--format", "csv", "--since", "someday"], "--since"),
        (vec!["--format", "csv", "--status", "6xx"], "--status"),
    ] {
        let refused = std::process::Command::new(binary)
            .args(["export", "--db"])
            .arg(&db)
            .args(&args)
            .output()
            .expect("runs");
        assert_eq!(refused.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(message),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
}
