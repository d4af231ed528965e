//! Durability: write-ahead, fail-closed, spill and re-import, crashes, signals, slow clients.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::entry::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    config_text, read_entries, HttpClient, Process, TempDir, TestSidecar, Upstream,
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

#[tokio::test]
async fn write_ahead_records_the_intent_before_the_app_sees_the_request() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, WRITE_AHEAD_RULES).await;
    let url = sidecar.url("/slow/400");
    let request =
        tokio::spawn(async move { HttpClient::new().send("DELETE", &url, &[], "").await });
    // While the app is still working, the intent is already in the store.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() == 0 {
        assert!(Instant::now() < deadline, "request never reached the app");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        pending_rows(&sidecar.db).len(),
        1,
        "the intent is durable before forwarding"
    );
    let reply = request.await.expect("task");
    assert_eq!(reply.status, 200);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "slow.deleted");
    assert_eq!(entries[0].outcome, Outcome::Success);
    // The completed entry replaced its intent.
    for _ in 0..200 {
        if pending_rows(&sidecar.db).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(pending_rows(&sidecar.db).is_empty());
}

#[tokio::test]
async fn write_ahead_fails_closed_when_the_store_cannot_write() {
    let upstream = Upstream::start().await;
    // busy_timeout keeps the test short: the lock makes every write fail after 200 ms.
    let dir = TempDir::new("fail-closed");
    let db = dir.0.join("audit.db");
    let text = config_text(upstream.addr, &db, "", WRITE_AHEAD_RULES).replace(
        "flush_interval = \"1ms\"",
        "flush_interval = \"1ms\"\nbusy_timeout = \"200ms\"",
    );
    let config = auditgate::config::Config::parse(&text, &dir.0).expect("valid");
    let sidecar = auditgate::server::Sidecar::start(config, None)
        .await
        .expect("starts");
    let client = HttpClient::new();
    let base = format!("http://{}", sidecar.proxy_addr);
    let admin = format!("http://{}", sidecar.admin_addr);

    let lock = WriteLock::take(&db);
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
    assert!(
        metrics.contains("auditgate_fail_closed_total 1"),
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
    sidecar.shutdown().await;
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
    let dir = TempDir::new("forward");
    let db = dir.0.join("audit.db");
    let rules = WRITE_AHEAD_RULES.replace(
        "write_ahead = true",
        "write_ahead = true\non_store_failure = \"forward\"",
    );
    let text = config_text(upstream.addr, &db, "", &rules).replace(
        "flush_interval = \"1ms\"",
        "flush_interval = \"1ms\"\nbusy_timeout = \"200ms\"",
    );
    let config = auditgate::config::Config::parse(&text, &dir.0).expect("valid");
    let sidecar = auditgate::server::Sidecar::start(config, None)
        .await
        .expect("starts");
    let lock = WriteLock::take(&db);
    let reply = HttpClient::new()
        .send(
            "DELETE",
            &format!("http://{}/api/users/9", sidecar.proxy_addr),
            &[],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.count(), 1);
    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", sidecar.admin_addr))
        .await
        .text();
    assert!(
        metrics.contains("auditgate_forwarded_unrecorded_total 1"),
        "{metrics}"
    );
    drop(lock);
    assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
    sidecar.shutdown().await;
    // The final entry still reached the log once the lock was gone.
    assert_eq!(read_entries(&db).len(), 1);
}

#[tokio::test]
async fn entries_the_store_refuses_are_spilled_and_reimported_at_start() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("spill");
    let db = dir.0.join("audit.db");
    let rules = "[[rule]]\nname = \"delete\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n";
    let text = config_text(upstream.addr, &db, "", rules).replace(
        "flush_interval = \"1ms\"",
        "flush_interval = \"1ms\"\nbusy_timeout = \"50ms\"",
    );
    let config = auditgate::config::Config::parse(&text, &dir.0).expect("valid");
    let sidecar = auditgate::server::Sidecar::start(config.clone(), None)
        .await
        .expect("starts");
    let lock = WriteLock::take(&db);
    let client = HttpClient::new();
    for id in 0..5 {
        let reply = client
            .send(
                "DELETE",
                &format!("http://{}/api/users/{id}", sidecar.proxy_addr),
                &[],
                "",
            )
            .await;
        assert_eq!(
            reply.status, 200,
            "after-response traffic is served while the store is locked"
        );
    }
    let spill = dir.0.join("audit.db.spill.ndjson");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sidecar.writer().stats().entries_spilled.get() < 5 {
        assert!(Instant::now() < deadline, "entries were not spilled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spill.exists());
    sidecar.shutdown().await;
    drop(lock);
    assert_eq!(read_entries(&db).len(), 0);

    let sidecar = auditgate::server::Sidecar::start(config, None)
        .await
        .expect("restarts");
    assert_eq!(sidecar.writer().stats().entries_reimported.get(), 5);
    sidecar.shutdown().await;
    let mut ids: Vec<String> = read_entries(&db)
        .into_iter()
        .filter_map(|entry| entry.resource_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["0", "1", "2", "3", "4"]);
    assert!(!spill.exists());
}

// ---------------------------------------------------------------------------------------------
// The real binary: crashes and signals
// ---------------------------------------------------------------------------------------------

fn write_config(dir: &Path, upstream: SocketAddr, extra_store: &str, rules: &str) -> PathBuf {
    let db = dir.join("audit.db");
    let text = config_text(upstream, &db, "", rules).replace(
        "flush_interval = \"1ms\"",
        &format!("flush_interval = \"1ms\"\n{extra_store}"),
    );
    let path = dir.join("auditgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// SIGKILL under concurrent write-ahead load, again and again: every request whose response the
/// client received has its entry after restart, none twice, and interrupted ones are `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_write_ahead_request_is_lost_across_crashes() {
    let rounds: usize = std::env::var("AUDITGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let upstream = Upstream::start().await;
    let dir = TempDir::new("crash");
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
    eprintln!("{rounds} crashes, {sent} requests sent, {} answered, {} entries, {unknown} finished as unknown", answered.len(), entries.len());
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
    let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(
        seqs,
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "the log has no gaps"
    );
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
    while upstream.count() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client.get(&format!("http://{proxy}/a")).await;
        let metrics = client
            .get(&format!("http://{}/metrics", process.admin))
            .await
            .text();
        let written = metrics
            .lines()
            .find_map(|line| line.strip_prefix("auditgate_entries_written_total "))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0);
        let actions: Vec<String> = if written > 0 {
            read_entries(&dir.0.join("audit.db"))
                .into_iter()
                .map(|entry| entry.action)
                .collect()
        } else {
            Vec::new()
        };
        if actions.iter().any(|action| action == "second.rule") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload never took effect: {actions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An invalid file is refused; the running rules stay.
    std::fs::write(&config, "[proxy]\nupstream = \"nope\"\n").expect("write");
    process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = client.get(&format!("http://{proxy}/a")).await;
    assert_eq!(reply.status, 200);
    process.signal("TERM");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait");
    assert!(status.success());
    let entries = read_entries(&dir.0.join("audit.db"));
    assert_eq!(
        entries.last().map(|entry| entry.action.as_str()),
        Some("second.rule")
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
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "file.uploaded");
    assert!(entries[0].error.is_some(), "{:?}", entries[0]);
    assert_ne!(entries[0].outcome, Outcome::Success);
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
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    assert!(
        outcome.is_ok(),
        "the server never closed the slow connection"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(upstream.count(), 0);
}
