//! `POST /api/v1/events`: entries from the app itself, through the real admin listener.

use serde_json::{json, Value};

use crate::support::{HttpClient, Reply, TestSidecar, Upstream, TEST_TOKEN, TEST_WRITE_TOKEN};

async fn post(
    sidecar: &TestSidecar,
    token: Option<&str>,
    key: Option<&str>,
    body: &Value,
) -> Reply {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    HttpClient::new()
        .send(
            "POST",
            &format!("http://{}/api/v1/events", sidecar.admin),
            &headers,
            body.to_string(),
        )
        .await
}

fn role_change() -> Value {
    json!({
        "actorId": "u-17",
        "actorEmail": "ann@example.com",
        "action": "user.role_changed",
        "resourceType": "user",
        "resourceId": "42",
        "metadata": {"oldRole": "member", "newRole": "admin"},
        "ip": "203.0.113.9",
        "userAgent": "orders-api/2.3"
    })
}

#[tokio::test]
async fn one_entry_and_a_batch_are_stored_and_queryable() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &role_change()).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["count"], 1);
    // Answered only once stored: the entry is in the database already.
    let entries = crate::support::read_entries(&sidecar.db);
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.action, "user.role_changed");
    assert_eq!(entry.actor_source.as_deref(), Some("app"));
    assert_eq!(entry.actor_email.as_deref(), Some("ann@example.com"));
    assert_eq!(entry.ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(entry.metadata["newRole"], "admin");
    assert_eq!(entry.metadata["_ingest"]["token"], "app-backend");
    assert_eq!(entry.id, reply.json()["ids"][0]);

    let batch: Vec<Value> = (0..25)
        .map(|index| json!({"actorId": "billing-job", "action": "billing.plan_changed", "resourceId": format!("ws-{index}")}))
        .collect();
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &Value::from(batch)).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json()["count"], 25);

    // In queries and exports like any other entry.
    let client = HttpClient::new();
    let listed = client
        .get_admin(&format!(
            "http://{}/api/v1/entries?action=billing.plan_changed&count=true",
            sidecar.admin
        ))
        .await
        .json();
    assert_eq!(listed["total"], 25);
    let exported = client
        .get_admin(&format!(
            "http://{}/api/v1/export?format=ndjson&actor=u-17",
            sidecar.admin
        ))
        .await
        .text();
    assert_eq!(exported.lines().count(), 1);
    assert!(exported.contains("\"oldRole\":\"member\""));
}

#[tokio::test]
async fn every_bad_field_is_named() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let bad = json!([
        {"action": "ok.action", "actorId": "a"},
        {"actorId": "a"},
        {"action": "has spaces", "actorId": "a", "ip": "not-an-ip", "metadata": [1], "extra": 1},
        {"action": "x.y"},
        {"action": "x.y", "actorId": 7, "resourceId": "r".repeat(600), "metadata": {"_secret": 1}},
        "not an object"
    ]);
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &bad).await;
    assert_eq!(reply.status, 400);
    let params: Vec<String> = reply.json()["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|error| error["param"].as_str().unwrap_or("").to_string())
        .collect();
    for expected in [
        "[1].action",
        "[2].action",
        "[2].ip",
        "[2].metadata",
        "[2].extra",
        "[3].actorId",
        "[4].actorId",
        "[4].resourceId",
        "[4].metadata",
        "[5].",
    ] {
        assert!(
            params.iter().any(|param| param == expected),
            "{expected} missing from {params:?}"
        );
    }
    // Nothing of a refused request is stored, not even its valid entries.
    assert!(sidecar.entries().await.is_empty());
    for body in ["", "{", "[]"] {
        let reply = HttpClient::new()
            .send(
                "POST",
                &format!("http://{}/api/v1/events", sidecar.admin),
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {TEST_WRITE_TOKEN}")),
                ],
                body,
            )
            .await;
        assert_eq!(reply.status, 400, "{body:?}");
    }
}

#[tokio::test]
async fn retries_with_an_idempotency_key_never_duplicate() {
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(upstream.addr, "").await;
    let first = post(
        &sidecar,
        Some(TEST_WRITE_TOKEN),
        Some("order-7-role"),
        &role_change(),
    )
    .await;
    assert_eq!(first.status, 201);
    let again = post(
        &sidecar,
        Some(TEST_WRITE_TOKEN),
        Some("order-7-role"),
        &role_change(),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(again.json()["ids"], first.json()["ids"]);
    let mut other = role_change();
    other["resourceId"] = json!("43");
    let conflict = post(
        &sidecar,
        Some(TEST_WRITE_TOKEN),
        Some("order-7-role"),
        &other,
    )
    .await;
    assert_eq!(conflict.status, 422);
    assert_eq!(sidecar.entries().await.len(), 1);

    // After a restart the key is no longer in memory, but the store still knows the entry.
    let text = crate::support::config_text(upstream.addr, &sidecar.db, "", "");
    sidecar.restart(&text).await;
    let reply = HttpClient::new()
        .send(
            "POST",
            &format!("http://{}/api/v1/events", sidecar.admin),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {TEST_WRITE_TOKEN}")),
                ("idempotency-key", "order-7-role"),
            ],
            role_change().to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["ids"], first.json()["ids"]);
    sidecar.stop().await;
    let stored = crate::support::read_entries(&sidecar.db);
    assert_eq!(
        stored
            .iter()
            .filter(|entry| entry.action == "user.role_changed")
            .count(),
        1
    );
}

#[tokio::test]
async fn only_write_tokens_may_ingest() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    assert_eq!(post(&sidecar, None, None, &role_change()).await.status, 401);
    assert_eq!(
        post(&sidecar, Some("agt_wrong"), None, &role_change())
            .await
            .status,
        401
    );
    let read_only = post(&sidecar, Some(TEST_TOKEN), None, &role_change()).await;
    assert_eq!(read_only.status, 403);
    assert_eq!(read_only.json()["scope"], "write");
    // The write token cannot read.
    let reply = HttpClient::new()
        .send(
            "GET",
            &format!("http://{}/api/v1/entries", sidecar.admin),
            &[("authorization", &format!("Bearer {TEST_WRITE_TOKEN}"))],
            "",
        )
        .await;
    assert_eq!(reply.status, 403);
    // And the proxy port never takes events: it forwards to the app.
    let proxied = post_to(&sidecar.url("/api/v1/events")).await;
    assert_eq!(upstream.count(), 1);
    assert_ne!(proxied, 201);
    let stored = sidecar.entries().await;
    assert!(stored
        .iter()
        .all(|entry| entry.actor_source.as_deref() != Some("app")));
}

async fn post_to(url: &str) -> u16 {
    HttpClient::new()
        .send(
            "POST",
            url,
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {TEST_WRITE_TOKEN}")),
            ],
            role_change().to_string(),
        )
        .await
        .status
}

#[tokio::test]
async fn ingested_entries_are_in_the_tamper_evident_log() {
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(upstream.addr, "").await;
    for _ in 0..3 {
        assert_eq!(
            post(&sidecar, Some(TEST_WRITE_TOKEN), None, &role_change())
                .await
                .status,
            201
        );
    }
    sidecar.stop().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify", "--db"])
        .arg(&sidecar.db)
        .output()
        .expect("verify runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // Changing an ingested entry is caught like any other.
    let connection = rusqlite::Connection::open(&sidecar.db).expect("open");
    connection
        // Whichever table holds it: sealed, or still in `recent`.
        .execute_batch(
            "UPDATE entries SET actor_email = 'mallory@example.com' WHERE seq = 2;
             UPDATE recent SET actor_email = 'mallory@example.com' WHERE seq = 2;",
        )
        .expect("tamper");
    drop(connection);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify", "--db"])
        .arg(&sidecar.db)
        .output()
        .expect("verify runs");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test]
async fn an_action_in_auditgates_namespace_is_refused_with_422() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let forged = json!({"actorId": "cron", "action": "audit.pruned"});
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &forged).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["param"], "action");
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("reserved for auditgate's own entries"),
        "{}",
        reply.text()
    );
    // In a batch the entry is named; nothing of the batch is stored.
    let batch = json!([role_change(), {"actorId": "cron", "action": "Audit.query"}]);
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &batch).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["param"], "[1].action");
    // Alongside a malformed field it is one more error of the 400.
    let both = json!({"action": "audit.export", "ip": "not an ip", "actorId": "x"});
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &both).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let answer = reply.json();
    let params: Vec<&str> = answer["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|error| error["param"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(params, ["action", "ip"], "{}", reply.text());
    assert!(crate::support::read_entries(&sidecar.db).is_empty());
    // Names that merely start alike are the app's to use.
    let fine = json!({"actorId": "hr", "action": "auditor.assigned"});
    let reply = post(&sidecar, Some(TEST_WRITE_TOKEN), None, &fine).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}
