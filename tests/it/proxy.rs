//! The proxy end to end: a real upstream behind the real sidecar.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, raw_exchange, HttpClient, TestSidecar, Upstream};

const RULES: &str = r#"
[unmatched]
record = "mutations"

[[rule]]
name = "health"
path = "/healthz"
skip = true

[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{id}"
status = "2xx"
action = "user.deleted"
resource = { type = "user", id = "{id}" }

[[rule]]
name = "role change"
method = ["PATCH", "PUT"]
path = "/api/users/{id}/role"
status = "2xx"
action = "user.role_changed"
resource = { type = "user", id = "{id}" }
metadata = { newRole = "request.body:/role", tags = "request.body:/tags", page = "query:page", tenant = "request.header:x-tenant" }

[[rule]]
name = "create thing"
method = "POST"
path = "/created"
status = 201
action = "{request.body:/kind}.created"
resource = { type = "thing", id = "response.body:/id" }
metadata = { location = "response.header:location", ok = "response.body:/nested/ok" }

[[rule]]
name = "gzip thing"
method = "POST"
path = "/gzip"
action = "gzip.created"
resource = { type = "thing", id = "response.body:/id" }

[[rule]]
name = "versioned"
path_regex = "^/v(?P<version>[0-9]+)/items/(?P<item>[a-z]+)$"
status = [200, "4xx"]
action = "item.v{version}.read"
resource = { type = "item", id = "{item}" }

[[rule]]
name = "files"
method = "GET"
path = "/files/{*rest}"
action = "file.read"
resource = { type = "file", id = "{rest}" }

[[rule]]
name = "tenant admin"
headers = { "x-tenant" = "acme" }
query = { dry = "*" }
path = "/admin/{*rest}"
action = "admin.dry_run"

[[rule]]
name = "status classes"
path = "/status/{code}"
status = ["5xx", 404]
action = "status.bad"
"#;

async fn setup() -> (Upstream, TestSidecar, HttpClient) {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, RULES).await;
    (upstream, sidecar, HttpClient::new())
}

#[tokio::test]
async fn a_matched_request_becomes_an_entry() {
    let (upstream, sidecar, client) = setup().await;
    let reply = client
        .send(
            "DELETE",
            &sidecar.url("/api/users/42"),
            &[("user-agent", "it/1.0")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    let entries = sidecar.wait_entries(1).await;
    let entry = &entries[0];
    assert_eq!(entry.action, "user.deleted");
    assert_eq!(entry.resource_type.as_deref(), Some("user"));
    assert_eq!(entry.resource_id.as_deref(), Some("42"));
    assert_eq!(entry.status, Some(200));
    assert_eq!(entry.outcome, auditgate::entry::Outcome::Success);
    assert_eq!(entry.rule.as_deref(), Some("delete user"));
    assert_eq!(entry.route.as_deref(), Some("/api/users/{id}"));
    assert_eq!(entry.method.as_deref(), Some("DELETE"));
    assert_eq!(entry.path.as_deref(), Some("/api/users/42"));
    assert_eq!(entry.user_agent.as_deref(), Some("it/1.0"));
    assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(entry.log_id, "test");
    assert_eq!(
        entry.seq, 2,
        "the first entry after the run's audit.started"
    );
    assert!(entry.duration_us.is_some());
    // The request id the app saw is the one recorded and returned.
    let request_id = reply.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(entry.request_id.as_deref(), Some(request_id.as_str()));
    let seen = upstream.seen.lock().expect("lock");
    assert_eq!(seen[0].2["x-request-id"], request_id.as_str());
}

#[tokio::test]
async fn request_and_response_values_fill_the_entry() {
    let (_upstream, sidecar, client) = setup().await;
    let body = json!({"role": "admin", "tags": ["a", "b"]}).to_string();
    let reply = client
        .send(
            "PATCH",
            &sidecar.url("/api/users/7/role?page=3"),
            &[("x-tenant", "acme"), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(reply.status, 200);
    // The app saw the body unchanged.
    assert_eq!(
        reply.json()["body"],
        json!({"role": "admin", "tags": ["a", "b"]}).to_string()
    );

    let reply = client
        .send(
            "POST",
            &sidecar.url("/created"),
            &[],
            json!({"kind": "invoice"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 201);
    let entries = sidecar.wait_entries(2).await;
    let role = &entries[0];
    assert_eq!(role.action, "user.role_changed");
    assert_eq!(role.metadata["newRole"], "admin");
    assert_eq!(role.metadata["tags"], json!(["a", "b"]));
    assert_eq!(role.metadata["page"], "3");
    assert_eq!(role.metadata["tenant"], "acme");
    assert!(!role.metadata.contains_key("_missing"));

    let created = &entries[1];
    assert_eq!(created.action, "invoice.created");
    assert_eq!(created.resource_id.as_deref(), Some("77"));
    assert_eq!(created.metadata["location"], "/things/77");
    assert_eq!(created.metadata["ok"], true);
}

#[tokio::test]
async fn gzip_response_bodies_are_decoded() {
    let (_upstream, sidecar, client) = setup().await;
    let reply = client.send("POST", &sidecar.url("/gzip"), &[], "").await;
    assert_eq!(reply.status, 201);
    // The client gets the bytes the app sent, still compressed.
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].resource_id.as_deref(), Some("5"));
}

#[tokio::test]
async fn regex_routes_catch_alls_and_conditions() {
    let (_upstream, sidecar, client) = setup().await;
    assert_eq!(
        client.get(&sidecar.url("/v2/items/widget")).await.status,
        200
    );
    assert_eq!(
        client
            .get(&sidecar.url("/files/docs/a%20b.txt"))
            .await
            .status,
        200
    );
    // Header and query conditions: only the request with both matches the rule. GETs that
    // match no rule are not recorded under `mutations`.
    client
        .send(
            "GET",
            &sidecar.url("/admin/x?dry=1"),
            &[("x-tenant", "other")],
            "",
        )
        .await;
    client
        .send("GET", &sidecar.url("/admin/x"), &[("x-tenant", "acme")], "")
        .await;
    client
        .send(
            "GET",
            &sidecar.url("/admin/x?dry=1"),
            &[("x-tenant", "acme")],
            "",
        )
        .await;
    let entries = sidecar.wait_entries(3).await;
    let actions: Vec<&str> = entries.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, vec!["item.v2.read", "file.read", "admin.dry_run"]);
    assert_eq!(entries[0].resource_id.as_deref(), Some("widget"));
    assert_eq!(entries[1].resource_id.as_deref(), Some("docs/a b.txt"));
}

#[tokio::test]
async fn status_conditions_skip_and_unmatched_traffic() {
    let (upstream, sidecar, client) = setup().await;
    assert_eq!(client.get(&sidecar.url("/healthz")).await.status, 200);
    assert_eq!(client.get(&sidecar.url("/status/500")).await.status, 500);
    assert_eq!(client.get(&sidecar.url("/status/404")).await.status, 404);
    assert_eq!(client.get(&sidecar.url("/status/403")).await.status, 403);
    // A refused delete does not match "user.deleted" (2xx only) and falls to unmatched.
    let refused = client
        .send("DELETE", &sidecar.url("/status/403"), &[], "")
        .await;
    assert_eq!(refused.status, 403);
    client
        .send("POST", &sidecar.url("/unrouted"), &[], "x")
        .await;
    let entries = sidecar.wait_entries(4).await;
    let summary: Vec<(String, Option<u16>, String)> = entries
        .iter()
        .map(|entry| {
            (
                entry.action.clone(),
                entry.status,
                entry.outcome.as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("status.bad".to_string(), Some(500), "error".to_string()),
            ("status.bad".to_string(), Some(404), "failure".to_string()),
            ("http.delete".to_string(), Some(403), "failure".to_string()),
            ("http.post".to_string(), Some(200), "success".to_string()),
        ]
    );
    assert_eq!(upstream.count(), 6, "every request reached the app");
}

#[tokio::test]
async fn bodies_over_the_capture_limit_stream_through_and_are_recorded_missing() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(upstream.addr, "max_body_capture = \"16B\"", RULES).await;
    let client = HttpClient::new();
    let body = json!({"role": "a-role-much-longer-than-sixteen-bytes"}).to_string();
    let reply = client
        .send("PUT", &sidecar.url("/api/users/9/role"), &[], body.clone())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["bodyLength"],
        body.len(),
        "the app got the whole body"
    );
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "user.role_changed");
    assert_eq!(entries[0].metadata["newRole"], serde_json::Value::Null);
    assert_eq!(
        entries[0].metadata["_missing"]["newRole"],
        "request body was larger than max_body_capture"
    );
}

#[tokio::test]
async fn truncated_or_non_json_bodies_are_recorded_missing_not_misparsed() {
    let (_upstream, sidecar, client) = setup().await;
    let reply = client
        .send(
            "PUT",
            &sidecar.url("/api/users/9/role"),
            &[],
            "{\"role\": \"adm",
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = client
        .send(
            "PUT",
            &sidecar.url("/api/users/9/role"),
            &[],
            vec![0xff, 0xfe, 0x00],
        )
        .await;
    assert_eq!(reply.status, 200);
    let entries = sidecar.wait_entries(2).await;
    for entry in &entries {
        assert_eq!(
            entry.metadata["_missing"]["newRole"],
            "request body is not JSON"
        );
    }
}

#[tokio::test]
async fn upstream_down_is_a_502_and_still_audited() {
    // A port with nothing listening: bind, note the address, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let sidecar = TestSidecar::start(closed, RULES).await;
    let client = HttpClient::new();
    let reply = client
        .send("DELETE", &sidecar.url("/api/users/5"), &[], "")
        .await;
    assert_eq!(reply.status, 502);
    let entries = sidecar.wait_entries(1).await;
    let entry = &entries[0];
    assert_eq!(
        entry.action, "user.deleted",
        "the attempt is recorded under its rule"
    );
    assert_eq!(entry.status, Some(502));
    assert_eq!(entry.outcome, auditgate::entry::Outcome::Error);
    assert!(
        entry
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{:?}",
        entry.error
    );
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_with_an_entry() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"slow\"\npath = \"/slow/{ms}\"\naction = \"slow.call\"\n";
    let sidecar =
        TestSidecar::start_with(upstream.addr, "upstream_timeout = \"200ms\"", rules).await;
    let reply = HttpClient::new().get(&sidecar.url("/slow/3000")).await;
    assert_eq!(reply.status, 504);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].status, Some(504));
    assert_eq!(entries[0].outcome, auditgate::entry::Outcome::Error);
    assert!(entries[0]
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("200ms"));
}

/// A bare HTTP/1.1 app: each connection answers `200 ok` to GETs (keep-alive) until the test
/// tells the app to close its connections, which it does without announcing it, as app servers
/// do when their keep-alive timeout runs out. Counts the connections it accepted and the ones
/// that ended.
struct CountingApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    close_all: tokio::sync::watch::Sender<u64>,
}

impl CountingApp {
    async fn start() -> CountingApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (close_all, closing) = tokio::sync::watch::channel(0u64);
        let (accepted_count, ended_count) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let ended_count = ended_count.clone();
                let mut closing = closing.clone();
                closing.mark_unchanged();
                tokio::spawn(async move {
                    Self::serve(stream, &mut closing).await;
                    ended_count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingApp {
            addr,
            accepted,
            ended,
            close_all,
        }
    }

    async fn serve(
        mut stream: tokio::net::TcpStream,
        closing: &mut tokio::sync::watch::Receiver<u64>,
    ) {
        let mut pending = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                pending.drain(..end + 4);
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(read) => pending.extend_from_slice(&buffer[..read]),
                },
                _ = closing.changed() => return,
            }
        }
    }

    /// Closes every open connection, and waits until the app has.
    async fn close_connections(&self) {
        let open = self.accepted.load(Ordering::SeqCst);
        self.close_all.send_modify(|generation| *generation += 1);
        let closed = eventually(Duration::from_secs(5), async || {
            self.ended.load(Ordering::SeqCst) == open
        })
        .await;
        assert!(closed, "the app did not close its connections");
    }
}

#[tokio::test]
async fn a_connection_the_app_closed_is_not_reused() {
    // The app closes its idle connections without saying so: a proxy that sent the next
    // request on the pooled connection would answer it 502.
    let app = CountingApp::start().await;
    let rules = "[[rule]]\nname = \"all\"\npath = \"/{*rest}\"\naction = \"item.read\"\n";
    let sidecar = TestSidecar::start(app.addr, rules).await;
    let client = HttpClient::new();
    for index in 0..5 {
        let reply = client.get(&sidecar.url(&format!("/items/{index}"))).await;
        assert_eq!(reply.status, 200, "request {index}: {}", reply.text());
        assert_eq!(reply.text(), "ok");
        app.close_connections().await;
    }
    assert_eq!(app.accepted.load(Ordering::SeqCst), 5);
    let entries = sidecar.wait_entries(5).await;
    assert!(entries.iter().all(|entry| entry.status == Some(200)));
}

#[tokio::test]
async fn connections_to_the_app_are_reused_and_closed_when_idle() {
    let app = CountingApp::start().await;
    let sidecar = TestSidecar::start_with(
        app.addr,
        "idle_timeout = \"300ms\"",
        "[unmatched]\nrecord = \"none\"\n",
    )
    .await;
    let client = HttpClient::new();
    for index in 0..5 {
        let reply = client.get(&sidecar.url(&format!("/items/{index}"))).await;
        assert_eq!(reply.status, 200);
    }
    // One request at a time: the one connection carried all five.
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    // Idle past idle_timeout, the proxy closes it even though no request comes to notice.
    let closed = eventually(Duration::from_secs(10), async || {
        app.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed, "the idle connection to the app was never closed");
    let reply = client.get(&sidecar.url("/items/again")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn after_an_upstream_timeout_the_next_request_is_answered_by_the_app() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"all\"\npath = \"/{*rest}\"\naction = \"item.read\"\n";
    let sidecar =
        TestSidecar::start_with(upstream.addr, "upstream_timeout = \"200ms\"", rules).await;
    let client = HttpClient::new();
    let reply = client.get(&sidecar.url("/slow/3000")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "upstream timed out\n");
    // The timed-out connection still owes the slow answer; the next request must not get it.
    let reply = client.get(&sidecar.url("/json?next=1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["query"], "next=1", "{}", reply.text());
    let entries = sidecar.wait_entries(2).await;
    let statuses: Vec<_> = entries.iter().map(|entry| entry.status).collect();
    assert!(
        statuses.contains(&Some(504)) && statuses.contains(&Some(200)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn an_app_failing_mid_body_is_recorded() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"abort\"\npath = \"/abort\"\naction = \"abort.read\"\n";
    let sidecar = TestSidecar::start(upstream.addr, rules).await;
    let reply = raw_exchange(sidecar.proxy, b"GET /abort HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let entries = sidecar.wait_entries(1).await;
    assert!(entries[0].error.is_some(), "{:?}", entries[0]);
}

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_headers_removed() {
    let (upstream, sidecar, client) = setup().await;
    let reply = client
        .send(
            "GET",
            &sidecar.url("/echo"),
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-request-id", "client-chosen-id"),
                ("connection", "x-hop"),
                ("x-hop", "secret"),
            ],
            "",
        )
        .await;
    let echoed = reply.json();
    let headers = &echoed["headers"];
    // The peer is not a trusted proxy, so its X-Forwarded-For claim is replaced by the peer.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    // The request id is auditgate's own, whatever the client sent; the client's stays
    // available to the app under its own name.
    let ours = reply.headers["x-request-id"].to_str().expect("text");
    assert_ne!(ours, "client-chosen-id");
    assert_eq!(headers["x-request-id"], ours);
    assert_eq!(headers["x-client-request-id"], "client-chosen-id");
    assert!(headers.get("x-hop").is_none());
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"ws\"\npath = \"/ws\"\naction = \"socket.opened\"\n";
    let sidecar = TestSidecar::start(upstream.addr, rules).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.proxy))
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    for text in ["hello", "world"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
    }
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "socket.opened");
    assert_eq!(entries[0].status, Some(101));
}

#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let upstream = Upstream::start().await;
    // A rule that reads the response body still streams it: the capture is a tee.
    let rules = "[[rule]]\nname = \"hold\"\npath = \"/hold\"\naction = \"hold.read\"\nmetadata = { id = \"response.body:/id\" }\n";
    let sidecar = TestSidecar::start(upstream.addr, rules).await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.proxy)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // The first chunk arrives while the app still holds the rest.
    while !String::from_utf8_lossy(&received).contains("first;") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the first chunk arrives before the app finishes: the proxy streams")
            .expect("read");
        assert!(read > 0, "connection closed early");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(!String::from_utf8_lossy(&received).contains("second"));
    crate::support::HOLD.notify_one();
    while !String::from_utf8_lossy(&received).contains("second") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("rest arrives")
            .expect("read");
        assert!(read > 0);
        received.extend_from_slice(&buffer[..read]);
    }
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "hold.read");
    assert_eq!(
        entries[0].metadata["_missing"]["id"],
        "response body is not JSON"
    );
}

#[tokio::test]
async fn large_bodies_pass_whole_both_ways() {
    let (_upstream, sidecar, client) = setup().await;
    let reply = client.get(&sidecar.url("/big/16777216")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 16 * 1024 * 1024);
    let upload = vec![b'u'; 8 * 1024 * 1024];
    let reply = client
        .send("POST", &sidecar.url("/echo"), &[], upload)
        .await;
    assert_eq!(reply.json()["bodyLength"], 8 * 1024 * 1024);
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_never_crash() {
    let (_upstream, sidecar, client) = setup().await;
    // Invalid UTF-8 and control bytes in the path and a header value.
    let reply = raw_exchange(
        sidecar.proxy,
        b"DELETE /api/users/\xff\xfe HTTP/1.1\r\nHost: x\r\nUser-Agent: ev\xffil\x1b[31m\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    // Garbage instead of HTTP.
    let reply = raw_exchange(sidecar.proxy, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    // A header line without a colon.
    let reply = raw_exchange(sidecar.proxy, b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // The sidecar still serves afterwards, and recorded what it forwarded faithfully.
    let reply = client
        .send(
            "DELETE",
            &sidecar.url("/api/users/1"),
            &[("user-agent", "ok")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    let entries = sidecar.entries().await;
    assert!(entries
        .iter()
        .any(|entry| entry.path.as_deref() == Some("/api/users/1")));
    for entry in &entries {
        if let Some(agent) = &entry.user_agent {
            assert!(!agent.is_empty());
        }
    }
}

#[tokio::test]
async fn a_burst_of_concurrent_requests_gives_one_entry_each() {
    let (upstream, sidecar, client) = setup().await;
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for task in 0..16 {
        let client = client.clone();
        let url = sidecar.url("");
        tasks.push(tokio::spawn(async move {
            for index in 0..50 {
                let path = if index % 5 == 0 {
                    "/healthz".to_string()
                } else {
                    format!("/api/users/{task}-{index}")
                };
                let method = if index % 5 == 0 { "GET" } else { "DELETE" };
                let reply = client.send(method, &format!("{url}{path}"), &[], "").await;
                assert_eq!(reply.status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    // 16 x 50 requests, of which 16 x 10 are skipped health checks.
    let entries = sidecar.wait_entries(640).await;
    assert_eq!(entries.len(), 640);
    assert_eq!(upstream.count(), 800);
    // Gapless and without duplicates over the whole log: the run's audit.started, then one entry
    // per audited request.
    let all = crate::support::read_all_entries(&sidecar.db);
    assert_eq!(all[0].action, auditgate::server::lifecycle::STARTED);
    let mut seqs: Vec<u64> = all.iter().map(|entry| entry.seq).collect();
    seqs.dedup();
    assert_eq!(seqs, (1..=641).collect::<Vec<u64>>());
    let mut ids: Vec<&str> = entries
        .iter()
        .filter_map(|entry| entry.resource_id.as_deref())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        640,
        "every audited request has exactly one entry"
    );
}

#[tokio::test]
async fn shutdown_writes_every_queued_entry() {
    let upstream = Upstream::start().await;
    // The writer lingers an hour for a batch to gather: the entries are still queued when the
    // shutdown comes, and only the shutdown's flush can write them.
    let mut sidecar =
        TestSidecar::start_with_store(upstream.addr, "flush_interval = \"1h\"", RULES).await;
    let client = HttpClient::new();
    for index in 0..100 {
        let reply = client
            .send(
                "DELETE",
                &sidecar.url(&format!("/api/users/{index}")),
                &[],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let writer = sidecar.writer();
    // Entries are queued when the response body ends, a moment after the client has it; the
    // run's audit.started waits in the same batch.
    assert!(
        crate::support::eventually(Duration::from_secs(10), async || writer.depth() == 101).await,
        "{} entries queued",
        writer.depth()
    );
    assert_eq!(
        crate::support::read_entries(&sidecar.db).len(),
        0,
        "nothing was written before the shutdown"
    );
    sidecar.stop().await;
    let mut ids: Vec<String> = crate::support::read_entries(&sidecar.db)
        .into_iter()
        .filter_map(|entry| entry.resource_id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..100).map(|index| index.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every queued entry is written once");
    let all = crate::support::read_all_entries(&sidecar.db);
    assert_eq!(all.len(), 102);
    assert_eq!(all[0].action, auditgate::server::lifecycle::STARTED);
    assert_eq!(all[101].action, auditgate::server::lifecycle::STOPPED);
    assert_eq!(writer.stats().entries_lost.get(), 0);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (upstream, sidecar, _client) = setup().await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = http::Request::builder()
        .method("DELETE")
        .uri(sidecar.url("/api/users/h2"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = client
        .request(request)
        .await
        .expect("h2c request through the proxy");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].resource_id.as_deref(), Some("h2"));
    // The app still speaks HTTP/1.1 and sees a Host header.
    let seen = upstream.seen.lock().expect("lock");
    assert!(seen[0].2.contains_key("host"));
}
