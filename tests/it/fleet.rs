//! A fleet: three sidecars in front of three apps, one PostgreSQL database. Any sidecar's admin
//! API sees every log, each log verifies on its own, and a database outage loses nothing:
//! after-response entries wait in each sidecar's spill file and reach the database when it is
//! back; write-ahead routes refuse (503) while it is down, and those refusals are recorded too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use auditgate::config::Config;
use auditgate::server::Sidecar;
use serde_json::Value;

use crate::pg::{self, TestDatabase};
use crate::support::{eventually, HttpClient, TempDir, Upstream, TEST_TOKEN_CONFIG};

struct Member {
    log_id: String,
    sidecar: Sidecar,
    _upstream: Upstream,
}

async fn start_member(database_url: &str, dir: &TempDir, index: usize) -> Member {
    let upstream = Upstream::start().await;
    let log_id = format!("web-{index}");
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"

[admin]
listen = "127.0.0.1:0"
{TEST_TOKEN_CONFIG}
[store]
url = "{database_url}"
spill_file = "{spill}"
flush_interval = "1ms"

[log]
log_id = "{log_id}"

[[rule]]
name = "critical"
path = "/critical/{{id}}"
write_ahead = true
action = "fleet.critical"

[[rule]]
name = "everything else"
path = "/{{*rest}}"
action = "fleet.request"
"#,
        upstream = upstream.addr,
        spill = dir.0.join(format!("{log_id}.spill.ndjson")).display(),
    );
    let config = Config::parse(&text, &dir.0).expect("valid config");
    let sidecar = Sidecar::start(config, None).await.expect("sidecar starts");
    Member {
        log_id,
        sidecar,
        _upstream: upstream,
    }
}

/// Entries of the fleet's own traffic (not the admin API's), as one sidecar's admin API sees
/// them: `None` while the API cannot answer.
async fn fleet_entries(client: &HttpClient, admin: std::net::SocketAddr) -> Option<Vec<Value>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("http://{admin}/api/v1/entries?action_prefix=fleet.&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let reply = client.get_admin(&url).await;
        if reply.status != 200 {
            return None;
        }
        let page = reply.json();
        all.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Some(all),
        }
    }
    None
}

/// Waits (bounded) until the admin API shows `count` fleet entries.
async fn wait_for_entries(
    client: &HttpClient,
    admin: std::net::SocketAddr,
    count: usize,
) -> Vec<Value> {
    let mut entries: Option<Vec<Value>> = None;
    let arrived = eventually(Duration::from_secs(60), async || {
        entries = fleet_entries(client, admin).await;
        entries
            .as_ref()
            .is_some_and(|entries| entries.len() >= count)
    })
    .await;
    match entries {
        Some(entries) if arrived => entries,
        _ => panic!(
            "expected {count} fleet entries, the admin API shows {:?}",
            entries.map(|entries| entries.len())
        ),
    }
}

fn per_log(entries: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in entries {
        *counts
            .entry(entry["logId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_sidecars_share_one_database_and_ride_out_an_outage() {
    let Some(url) = pg::server_url("fleet") else {
        return;
    };
    let database =
        tokio::task::spawn_blocking(move || TestDatabase::create_exclusive(&url, "fleet"))
            .await
            .expect("database");
    let dir = TempDir::new("fleet");
    let mut members = Vec::new();
    for index in 1..=3 {
        members.push(start_member(&database.url(), &dir, index).await);
    }
    let client = HttpClient::new();
    let proxy =
        |member: &Member, path: String| format!("http://{}{path}", member.sidecar.proxy_addr);

    // Normal traffic: every member, both kinds of route.
    for round in 0..20 {
        for member in &members {
            let reply = client.get(&proxy(member, format!("/items/{round}"))).await;
            assert_eq!(reply.status, 200);
            if round % 4 == 0 {
                let reply = client
                    .get(&proxy(member, format!("/critical/{round}")))
                    .await;
                assert_eq!(
                    reply.status, 200,
                    "write-ahead works while the database is up"
                );
            }
        }
    }
    let admin = members[0].sidecar.admin_addr;
    let entries = wait_for_entries(&client, admin, 75).await;
    assert_eq!(entries.len(), 75, "no duplicates");
    assert_eq!(
        per_log(&entries),
        BTreeMap::from([
            ("web-1".to_string(), 25),
            ("web-2".to_string(), 25),
            ("web-3".to_string(), 25)
        ]),
        "one sidecar's admin API answers for the whole fleet"
    );
    // The log filter narrows to one sidecar's log.
    let reply = client
        .get_admin(&format!(
            "http://{admin}/api/v1/entries?log_id=web-3&action_prefix=fleet.&limit=1000"
        ))
        .await;
    let only = reply.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(only.len(), 25);
    assert!(only.iter().all(|entry| entry["logId"] == "web-3"));

    // The database goes away for a few seconds while traffic continues.
    assert!(
        tokio::task::spawn_blocking(|| pg::server_control("stop"))
            .await
            .expect("stop task"),
        "could not stop the test server (is {} set?)",
        pg::DIR_VARIABLE
    );
    let outage = Instant::now();
    let (mut during, mut refused) = (0, 0);
    let mut unready_seen = false;
    while outage.elapsed() < Duration::from_secs(3) {
        for member in &members {
            let reply = client
                .get(&proxy(member, format!("/items/outage-{during}")))
                .await;
            assert_eq!(reply.status, 200, "after-response routes keep serving");
            during += 1;
        }
        if refused < 6 {
            for member in &members {
                let reply = client
                    .get(&proxy(member, format!("/critical/outage-{refused}")))
                    .await;
                assert_eq!(reply.status, 503, "write-ahead routes fail closed");
                refused += 1;
            }
        }
        let ready = client.get(&format!("http://{admin}/readyz")).await;
        unready_seen |= ready.status == 503;
        // Traffic is paced, not awaited: the outage lasts its three seconds whatever happens,
        // and this spreads the requests over it instead of crowding the first moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready_seen, "readiness reports the outage");
    assert!(
        tokio::task::spawn_blocking(|| pg::server_control("start"))
            .await
            .expect("start task"),
        "could not restart the test server"
    );

    // Everything arrives once the database is back: nothing lost, nothing twice.
    let expected = 75 + during + refused;
    let entries = wait_for_entries(&client, admin, expected).await;
    assert_eq!(entries.len(), expected, "no duplicates after the re-send");
    let refusals = entries
        .iter()
        .filter(|entry| entry["action"] == "fleet.critical" && entry["status"] == 503)
        .count();
    assert_eq!(refusals, refused, "every refused request is on record");
    for member in &members {
        let writer = member.sidecar.writer();
        let stats = writer.stats();
        assert_eq!(stats.entries_lost.get(), 0);
        // The re-send is counted just after its commit, which the query above may see first.
        let taken_back = eventually(Duration::from_secs(10), async || {
            stats.entries_reimported.get() == stats.entries_spilled.get()
        })
        .await;
        assert!(
            taken_back,
            "{}: every spilled entry was re-sent ({} spilled, {} re-sent)",
            member.log_id,
            stats.entries_spilled.get(),
            stats.entries_reimported.get()
        );
    }
    let spilled: u64 = members
        .iter()
        .map(|member| member.sidecar.writer().stats().entries_spilled.get())
        .sum();
    assert!(spilled > 0, "the outage was real: entries were spilled");
    eprintln!(
        "fleet: {during} requests and {refused} refusals during the outage, {spilled} entries spilled and re-sent"
    );
    let ready = client.get(&format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 200, "ready again");

    // Stop the sidecars (their shutdown flushes), then check every log on its own.
    let log_ids: Vec<String> = members.iter().map(|member| member.log_id.clone()).collect();
    for member in members {
        member.sidecar.shutdown().await;
    }
    let database_url = database.url();
    let reports = tokio::task::spawn_blocking(move || {
        log_ids
            .iter()
            .map(|log_id| {
                let store = auditgate::store::postgres::open_for_reading(&database_url, log_id)
                    .expect("opens");
                let report =
                    auditgate::verify::verify_log(&store, None, &[]).expect("verification runs");
                (log_id.clone(), report)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("verify task");
    for (log_id, report) in reports {
        assert!(report.ok(), "{log_id}: {report:?}");
        assert!(report.entries >= 37, "{log_id}: {} entries", report.entries);
    }
    drop(database);
}
