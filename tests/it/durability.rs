//! Durability: write-ahead, fail-closed, spill and re-import, crashes, signals, slow clients.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::entry::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    config_text, eventually, metric_count, read_all_entries, read_entries, write_config,
    HttpClient, IntentCheckingUpstream, Process, TempDir, TestSidecar, Upstream,
};

const WRITE_AHEAD_RULES: &str = r#"
[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{id}"
action = "user.deleted"
resource = { type = "user", id = "{id}" }
write_ahead = true

[[rule]]
name = "slow delete"
method = "DELETE"
path = "/slow/{ms}"
action = "slow.deleted"
write_ahead = true
"#;

fn pending_rows(db: &Path) -> Vec<String> {
    let connection = rusqlite::Connection::open(db).expect("open");
    let mut statement = connection
        .prepare("SELECT id FROM pending")
        .expect("prepare");
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("query");
    rows.map(|row| row.expect("row")).collect()
}

/// Holds SQLite's write lock on the database from another connection (another process would do
/// the same), until dropped.
struct WriteLock(#[allow(dead_code)] rusqlite::Connection);

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        let connection = rusqlite::Connection::open(db).expect("open");
        connection.execute_batch("BEGIN IMMEDIATE").expect("lock");
        WriteLock(connection)
    }
}

/// Keeps the write-ahead intent journal beside `db` from being written, until dropped: a
/// directory stands where its next segment (the first, in a fresh sidecar) would be created.
struct JournalBlocker(std::path::PathBuf);

impl JournalBlocker {
    fn place(db: &Path) -> JournalBlocker {
        let mut path = db.as_os_str().to_os_string();
        path.push(".intents.1");
        let path = std::path::PathBuf::from(path);
        std::fs::create_dir(&path).expect("block the journal");
        JournalBlocker(path)
    }
}

impl Drop for JournalBlocker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn write_ahead_records_the_intent_before_the_app_sees_the_request() {
    let dir = TempDir::new("write-ahead");
    let db = dir.0.join("audit.db");
    // The app itself looks for the intent in the store the moment each request arrives.
    let app = IntentCheckingUpstream::start(db.clone()).await;
    let mut sidecar = TestSidecar::start_in(dir, |db| {
        config_text(app.addr, db, "", WRITE_AHEAD_RULES).replace(
            "flush_interval = \"1ms\"",
            "flush_interval = \"1ms\"\nbusy_timeout = \"30s\"",
        )
    })
    .await;
    let client = HttpClient::new();

    // While the intent journal cannot be written (a directory stands where its first segment
    // goes), the request is refused and the app must not see it.
    let blocker = JournalBlocker::place(&db);
    let reply = client
        .send(
            "DELETE",
            &format!("http://{}/api/users/held", sidecar.proxy),
            &[("x-request-id", "intent-held")],
            "",
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        app.seen_ids().is_empty(),
        "the app saw the request while its intent could not be written"
    );
    drop(blocker);
    // Intents no longer go through the database: a write lock held on it by another connection
    // does not hold write-ahead requests, whose intents are in the journal when the app sees
    // them; their entries are committed once the lock is gone.
    let lock = WriteLock::take(&db);
    let reply = client
        .send(
            "DELETE",
            &format!("http://{}/api/users/locked", sidecar.proxy),
            &[("x-request-id", "intent-locked")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    drop(lock);

    for id in ["a", "b", "c"] {
        let reply = client
            .send(
                "DELETE",
                &format!("http://{}/api/users/{id}", sidecar.proxy),
                &[("x-request-id", &format!("intent-{id}"))],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        app.seen_ids(),
        vec!["intent-locked", "intent-a", "intent-b", "intent-c"]
    );
    assert_eq!(
        app.forwarded_before_durable(),
        Vec::<String>::new(),
        "requests reached the app before their intent was in the store"
    );
    assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
    let entries = read_entries(&db);
    assert_eq!(entries.len(), 5);
    let summary: Vec<(String, Option<u16>)> = entries
        .iter()
        .map(|entry| (entry.resource_id.clone().unwrap_or_default(), entry.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("held", 503),
            ("locked", 200),
            ("a", 200),
            ("b", 200),
            ("c", 200)
        ]
        .map(|(id, status)| (id.to_string(), Some(status)))
    );
    assert!(entries.iter().all(|entry| entry.action == "user.deleted"
        && (entry.outcome == Outcome::Success || entry.status == Some(503))));
    // The completed entries resolved their intents: none in the journal, none in the table.
    assert_eq!(sidecar.writer().pending_intents(), 0);
    assert!(pending_rows(&db).is_empty(), "{:?}", pending_rows(&db));
    sidecar.stop().await;
}

#[tokio::test]
async fn write_ahead_fails_closed_when_the_store_cannot_write() {
    let upstream = Upstream::start().await;
    // busy_timeout keeps the test short: the lock makes every write fail after 200 ms.
    let mut sidecar = TestSidecar::start_with_store(
        upstream.addr,
        "flush_interval = \"1ms\"\nbusy_timeout = \"200ms\"",
        WRITE_AHEAD_RULES,
    )
    .await;
    let db = sidecar.db.clone();
    let client = HttpClient::new();
    let base = format!("http://{}", sidecar.proxy);
    let admin = format!("http://{}", sidecar.admin);

    // The intent journal cannot be written: write-ahead requests are refused.
    let lock = JournalBlocker::place(&db);
    let reply = client
        .send("DELETE", &format!("{base}/api/users/1"), &[], "")
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(
        upstream.count(),
        0,
        "a refused request never reaches the app"
    );
    assert_eq!(client.get(&format!("{admin}/readyz")).await.status, 503);
    let metrics = client.get(&format!("{admin}/metrics")).await.text();
    assert_eq!(
        metric_count(&metrics, "auditgate_fail_closed_total"),
        Some(1),
        "{metrics}"
    );

    drop(lock);
    // It recovers by itself once the store can write again.
    let reply = client
        .send("DELETE", &format!("{base}/api/users/2"), &[], "")
        .await;
    assert_eq!(reply.status, 200);
    assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
    assert_eq!(client.get(&format!("{admin}/readyz")).await.status, 200);
    sidecar.stop().await;
    let entries = read_entries(&db);
    let summary: Vec<(String, Option<u16>)> = entries
        .iter()
        .map(|entry| (entry.resource_id.clone().unwrap_or_default(), entry.status))
        .collect();
    // The refused attempt is recorded too (as a 503), once the store could write again.
    assert_eq!(
        summary,
        vec![("1".to_string(), Some(503)), ("2".to_string(), Some(200))]
    );
}

#[tokio::test]
async fn write_ahead_can_be_told_to_forward_when_the_store_fails() {
    let upstream = Upstream::start().await;
    let rules = WRITE_AHEAD_RULES.replace(
        "write_ahead = true",
        "write_ahead = true\non_store_failure = \"forward\"",
    );
    let mut sidecar = TestSidecar::start_with_store(
        upstream.addr,
        "flush_interval = \"1ms\"\nbusy_timeout = \"200ms\"",
        &rules,
    )
    .await;
    let db = sidecar.db.clone();
    let lock = JournalBlocker::place(&db);
    let reply = HttpClient::new()
        .send(
            "DELETE",
            &format!("http://{}/api/users/9", sidecar.proxy),
            &[],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.count(), 1);
    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", sidecar.admin))
        .await
        .text();
    assert_eq!(
        metric_count(&metrics, "auditgate_forwarded_unrecorded_total"),
        Some(1),
        "{metrics}"
    );
    drop(lock);
    assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
    sidecar.stop().await;
    // The final entry still reached the log once the lock was gone.
    assert_eq!(read_entries(&db).len(), 1);
}

#[tokio::test]
async fn entries_the_store_refuses_are_spilled_and_reimported_at_start() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"delete\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n";
    let store_keys = "flush_interval = \"1ms\"\nbusy_timeout = \"50ms\"";
    let mut sidecar = TestSidecar::start_with_store(upstream.addr, store_keys, rules).await;
    let db = sidecar.db.clone();
    // The run's `audit.started` is stored before the store is locked, so exactly the five
    // requests and the run's `audit.stopped` go to the spill file.
    assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
    let lock = WriteLock::take(&db);
    let client = HttpClient::new();
    for id in 0..5 {
        let reply = client
            .send(
                "DELETE",
                &format!("http://{}/api/users/{id}", sidecar.proxy),
                &[],
                "",
            )
            .await;
        assert_eq!(
            reply.status, 200,
            "after-response traffic is served while the store is locked"
        );
    }
    let spill = sidecar.dir.0.join("audit.db.spill.ndjson");
    assert!(
        eventually(Duration::from_secs(20), async || sidecar
            .writer()
            .stats()
            .entries_spilled
            .get()
            >= 5)
        .await,
        "entries were not spilled"
    );
    assert!(spill.exists());
    let writer = sidecar.writer();
    sidecar.stop().await;
    drop(lock);
    assert_eq!(
        writer.stats().entries_spilled.get(),
        6,
        "five requests and audit.stopped"
    );
    assert_eq!(read_entries(&db).len(), 0);
    assert_eq!(actions(&db), ["audit.started"]);

    sidecar
        .restart(
            &config_text(upstream.addr, &db, "", rules)
                .replace("flush_interval = \"1ms\"", store_keys),
        )
        .await;
    assert_eq!(
        sidecar.writer().stats().entries_reimported.get(),
        6,
        "the five requests and the first run's audit.stopped"
    );
    sidecar.stop().await;
    // The spilled entries keep their place: before the second run's start.
    assert_eq!(
        actions(&db),
        [
            "audit.started",
            "user.deleted",
            "user.deleted",
            "user.deleted",
            "user.deleted",
            "user.deleted",
            "audit.stopped",
            "audit.started",
            "audit.stopped"
        ]
    );
    let mut ids: Vec<String> = read_entries(&db)
        .into_iter()
        .filter_map(|entry| entry.resource_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["0", "1", "2", "3", "4"]);
    assert!(!spill.exists());
}

/// The one loss path: at shutdown the store refuses (another connection holds its write lock)
/// and the spill file cannot be written (a directory stands at its path). Every queued entry is
/// then counted in `entries_lost`, exactly, and named in the log one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_neither_the_store_nor_the_spill_file_takes_at_shutdown_are_counted_and_named() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"delete\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n";
    // The writer lingers an hour: the batch is whole when the shutdown comes.
    let _ = crate::support::error_log();
    let mut sidecar = TestSidecar::start_with_store(
        upstream.addr,
        "flush_interval = \"1h\"\nbusy_timeout = \"10ms\"",
        rules,
    )
    .await;
    let db = sidecar.db.clone();
    let writer = sidecar.writer();
    std::fs::create_dir(sidecar.dir.0.join("audit.db.spill.ndjson")).expect("block the spill file");
    let lock = WriteLock::take(&db);
    let client = HttpClient::new();
    let batch: Vec<String> = (0..5)
        .map(|index| format!("lost-{}-{index}", ulid::Ulid::new()))
        .collect();
    for id in &batch {
        let reply = client
            .send(
                "DELETE",
                &format!("http://{}/api/users/{id}", sidecar.proxy),
                &[("x-request-id", id.as_str())],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    // The run's `audit.started` lingers in the same batch.
    assert!(
        eventually(Duration::from_secs(10), async || writer.depth()
            == batch.len() + 1)
        .await,
        "{} entries queued",
        writer.depth()
    );
    sidecar.stop().await;
    drop(lock);

    assert_eq!(
        writer.stats().entries_lost.get(),
        batch.len() as u64 + 2,
        "the loss counter counts the batch, audit.started and audit.stopped"
    );
    let lost: Vec<serde_json::Value> = crate::support::error_lines()
        .into_iter()
        .filter(|line| {
            line["fields"]["client_request_id"]
                .as_str()
                .is_some_and(|id| batch.iter().any(|sent| sent == id))
        })
        .collect();
    let mut named: Vec<String> = lost
        .iter()
        .map(|line| {
            assert_eq!(
                line["fields"]["message"],
                "entry lost at shutdown: neither the store nor the spill file accepted it"
            );
            assert_eq!(line["fields"]["action"], "user.deleted");
            line["fields"]["client_request_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    named.sort();
    let mut expected = batch.clone();
    expected.sort();
    assert_eq!(named, expected, "one error line per lost entry");
    let entry_ids: BTreeSet<&str> = lost
        .iter()
        .filter_map(|line| line["fields"]["entry"].as_str())
        .collect();
    assert_eq!(entry_ids.len(), batch.len(), "each line names its entry id");
    // Counted as lost, and really not written.
    assert!(read_entries(&db).iter().all(|entry| entry
        .metadata
        .get("_clientRequestId")
        .and_then(serde_json::Value::as_str)
        .is_none_or(|id| !batch.iter().any(|lost| lost == id))));
}

// ---------------------------------------------------------------------------------------------
// The real binary: crashes and signals
// ---------------------------------------------------------------------------------------------

/// SIGKILL under concurrent write-ahead load, again and again: every request whose response the
/// client received has its entry after restart, none twice, and interrupted ones are `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_write_ahead_request_is_lost_across_crashes() {
    let rounds: usize = std::env::var("AUDITGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = TempDir::new("crash");
    // The app checks, as each request arrives, that its intent is already in the store.
    let upstream = IntentCheckingUpstream::start(dir.0.join("audit.db")).await;
    let config = write_config(&dir.0, upstream.addr, "durability = \"write-ahead\"", "[[rule]]\nname = \"delete\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n");
    let answered = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut sent = 0u64;
    for round in 0..rounds {
        let process = Process::start(&config);
        let stop_at = Instant::now() + Duration::from_millis(10 + (round as u64 * 7) % 40);
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let answered = answered.clone();
            let proxy = process.proxy;
            tasks.push(tokio::spawn(async move {
                let client = HttpClient::new();
                let mut index = 0;
                // Bounded: at most 200 requests per worker per round.
                while Instant::now() < stop_at && index < 200 {
                    let id = format!("r{round}-w{worker}-{index}");
                    index += 1;
                    let url = format!("http://{proxy}/api/users/{id}");
                    let Ok(reply) = tokio::time::timeout(
                        Duration::from_secs(5),
                        client_try_send(&client, &url, &id),
                    )
                    .await
                    else {
                        break;
                    };
                    if reply == Some(200) {
                        answered.lock().expect("lock").insert(id);
                    }
                }
                index as u64
            }));
        }
        // Kill while requests are in flight.
        tokio::time::sleep_until(stop_at.into()).await;
        process.signal("KILL");
        let _ = process.wait();
        for task in tasks {
            sent += task.await.unwrap_or(0);
        }
    }
    // One more start recovers the last crash; then a clean stop.
    let process = Process::start(&config);
    process.signal("TERM");
    assert!(process.wait().success());

    let entries = read_entries(&dir.0.join("audit.db"));
    let mut by_request: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for entry in &entries {
        // The client's id, kept apart from auditgate's own request id.
        if let Some(id) = entry
            .metadata
            .get("_clientRequestId")
            .and_then(|id| id.as_str())
            .map(str::to_string)
        {
            by_request.entry(id).or_default().push(entry.outcome);
        }
    }
    let answered = answered.lock().expect("lock");
    assert!(
        answered.len() > rounds,
        "too little load to mean anything: {} answered",
        answered.len()
    );
    // The write-ahead promise itself: every request the app was asked to serve (answered or
    // cut off by the kill) had its intent in the store when it arrived, and has its entry now.
    let early = upstream.forwarded_before_durable();
    assert!(
        early.is_empty(),
        "{} requests reached the app before their intent was durable, e.g. {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !by_request.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no entry, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let seen = upstream.seen_ids();
    assert!(
        seen.len() >= answered.len(),
        "the app saw {} requests, fewer than the {} answered",
        seen.len(),
        answered.len()
    );
    let unrecorded: Vec<&String> = seen
        .iter()
        .filter(|id| !by_request.contains_key(*id))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "{} requests the app saw have no entry, e.g. {:?}",
        unrecorded.len(),
        &unrecorded[..unrecorded.len().min(5)]
    );
    let twice: Vec<&String> = by_request
        .iter()
        .filter(|(_, outcomes)| outcomes.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "entries recorded twice: {twice:?}");
    // An answered request is `success`, or `unknown` when the crash came after the client got its
    // answer but before the completed entry was committed: the write-ahead intent stands in.
    for id in answered.iter() {
        let outcome = by_request[id][0];
        assert!(
            matches!(outcome, Outcome::Success | Outcome::Unknown),
            "{id}: {outcome:?}"
        );
    }
    let unknown = entries
        .iter()
        .filter(|entry| entry.outcome == Outcome::Unknown)
        .count();
    eprintln!("{rounds} crashes, {sent} requests sent, {} seen by the app, {} answered, {} entries, {unknown} finished as unknown", seen.len(), answered.len(), entries.len());
    for entry in entries
        .iter()
        .filter(|entry| entry.outcome == Outcome::Unknown)
    {
        assert_eq!(
            entry.action, "user.deleted",
            "a recovered entry keeps what the request said"
        );
        assert!(entry.resource_id.is_some());
    }
    assert!(entries.len() as u64 <= sent);
    // Gapless over the whole log, the runs' own `audit.started` and `audit.stopped` included;
    // only the last run stopped cleanly, so it alone recorded `audit.stopped`, last.
    let all = read_all_entries(&dir.0.join("audit.db"));
    let seqs: Vec<u64> = all.iter().map(|entry| entry.seq).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "the log has no gaps"
    );
    let stopped: Vec<u64> = all
        .iter()
        .filter(|entry| entry.action == auditgate::server::lifecycle::STOPPED)
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(
        stopped,
        [all.len() as u64],
        "one clean stop, the last entry"
    );
}

/// Every action in the log, the sidecar's own records included, in log order.
fn actions(db: &Path) -> Vec<String> {
    read_all_entries(db)
        .into_iter()
        .map(|entry| entry.action)
        .collect()
}

async fn client_try_send(client: &HttpClient, url: &str, id: &str) -> Option<u16> {
    client
        .try_send("DELETE", url, &[("x-request-id", id)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_writes_every_entry() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("sigterm");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        "[[rule]]\nname = \"slow\"\npath = \"/slow/{ms}\"\naction = \"slow.call\"\n",
    );
    let process = Process::start(&config);
    let proxy = process.proxy;
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                HttpClient::new()
                    .get(&format!("http://{proxy}/slow/500"))
                    .await
                    .status
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), async || upstream.count() >= 5).await,
        "the app saw {} of the five requests",
        upstream.count()
    );
    process.signal("TERM");
    for request in in_flight {
        assert_eq!(
            request.await.expect("task"),
            200,
            "in-flight requests finish during the drain"
        );
    }
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(read_entries(&dir.0.join("audit.db")).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_keeps_the_old_ones_on_error() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("sighup");
    let rule_a = "[unmatched]\nrecord = \"none\"\n[[rule]]\nname = \"a\"\npath = \"/a\"\naction = \"first.rule\"\n";
    let config = write_config(&dir.0, upstream.addr, "", rule_a);
    let process = Process::start(&config);
    let client = HttpClient::new();
    let proxy = process.proxy;
    client.get(&format!("http://{proxy}/a")).await;

    // A new rule set, then SIGHUP. The listeners stay; the rules change.
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("first.rule", "second.rule");
    std::fs::write(&config, text).expect("write");
    process.signal("HUP");
    let mut actions: Vec<String> = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), async || {
            client.get(&format!("http://{proxy}/a")).await;
            let metrics = client
                .get(&format!("http://{}/metrics", process.admin))
                .await
                .text();
            // The database is read only once the writer has stored something in it.
            let written = metric_count(&metrics, "auditgate_entries_written_total").unwrap_or(0);
            actions = if written > 0 {
                read_entries(&dir.0.join("audit.db"))
                    .into_iter()
                    .map(|entry| entry.action)
                    .collect()
            } else {
                Vec::new()
            };
            actions.iter().any(|action| action == "second.rule")
        })
        .await,
        "reload never took effect: {actions:?}"
    );

    // An invalid file is refused; the running rules stay. The file would change the rule's
    // action too, so a reload that took any part of it shows in the next entry.
    let invalid = std::fs::read_to_string(&config)
        .expect("read")
        .replace("second.rule", "third.rule")
        .replace("[[rule]]", "[[rule]]\nmethod = \"NOT A METHOD\"");
    std::fs::write(&config, invalid).expect("write");
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || process
            .logged("reload refused; the running configuration stays"))
        .await,
        "the invalid file was not refused"
    );
    let reply = client
        .send(
            "GET",
            &format!("http://{proxy}/a"),
            &[("x-request-id", "after-the-refused-reload")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    process.signal("TERM");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait");
    assert!(status.success());
    let entries = read_entries(&dir.0.join("audit.db"));
    let after: Vec<&str> = entries
        .iter()
        .filter(|entry| {
            entry
                .metadata
                .get("_clientRequestId")
                .and_then(serde_json::Value::as_str)
                == Some("after-the-refused-reload")
        })
        .map(|entry| entry.action.as_str())
        .collect();
    assert_eq!(
        after,
        vec!["second.rule"],
        "the request after the refused reload is recorded by the running rules"
    );
}

// ---------------------------------------------------------------------------------------------
// Clients that go away or crawl
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_leaving_mid_download_is_recorded() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(
        upstream.addr,
        "[[rule]]\nname = \"big\"\npath = \"/big/{size}\"\naction = \"big.read\"\n",
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.proxy)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /big/104857600 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0u8; 256 * 1024];
    let read = stream.read(&mut buffer).await.expect("read");
    assert!(read > 0);
    drop(stream);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].status, Some(200));
    assert_eq!(
        entries[0].error.as_deref(),
        Some("the client went away before the response was complete")
    );
}

#[tokio::test]
async fn a_client_leaving_mid_upload_is_recorded() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "[[rule]]\nname = \"upload\"\nmethod = \"POST\"\npath = \"/upload\"\naction = \"file.uploaded\"\n").await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.proxy)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nonly-a-little",
        )
        .await
        .expect("write");
    // The client leaves once the request is under way: the app has its head, the body is short.
    assert!(
        eventually(Duration::from_secs(10), async || upstream.count() == 1).await,
        "the upload never reached the app"
    );
    drop(stream);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "file.uploaded");
    assert!(entries[0].error.is_some(), "{:?}", entries[0]);
    assert_ne!(entries[0].outcome, Outcome::Success);
}

#[tokio::test]
async fn silent_connections_cannot_hold_every_connection_slot() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "header_read_timeout = \"300ms\"\nmax_connections = 2",
        "[unmatched]\nrecord = \"all\"\n",
    )
    .await;
    // More connections than slots, none of which ever sends a byte.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(
            tokio::net::TcpStream::connect(sidecar.proxy)
                .await
                .expect("connect"),
        );
    }
    let url = sidecar.url("/after-the-silent-ones");
    let real = tokio::spawn(async move { HttpClient::new().get(&url).await.status });
    assert!(
        crate::support::eventually(Duration::from_secs(20), async || real.is_finished()).await,
        "silent connections held every slot: a real request was never served"
    );
    assert_eq!(real.await.expect("request task"), 200);
    // The server closed every silent connection (end of stream, or a reset).
    for mut stream in silent {
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the server never closed a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].path.as_deref(), Some("/after-the-silent-ones"));
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_the_header_timeout() {
    let upstream = Upstream::start().await;
    let sidecar =
        TestSidecar::start_with(upstream.addr, "header_read_timeout = \"300ms\"", "").await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.proxy)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    // The bound is ten times the header timeout: without the timeout the connection would stay
    // open for as long as the client trickles.
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(Duration::from_secs(3), async {
        // Whatever the server says before closing (a 408) is read until the close.
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the server never closed the slow connection"
    );
    assert_eq!(upstream.count(), 0);
}
