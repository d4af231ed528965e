//! No way around the log: against an app that routes like Express, every spelling of a request
//! produces the entry the app's behaviour implies, or a refusal that is itself recorded.

use std::net::SocketAddr;

use auditgate::entry::AuditEntry;
use serde_json::json;

use crate::support::{raw_exchange, ExpressApp, HttpClient, TestSidecar};

const RULES: &str = r#"
[[rule]]
name = "static"
path = "/static/{*rest}"
skip = true

[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{id}"
status = "2xx"
action = "user.deleted"
resource = { type = "user", id = "{id}" }

[[rule]]
name = "view user"
method = "GET"
path = "/api/users/{id}"
status = "2xx"
action = "user.viewed"
resource = { type = "user", id = "{id}" }

[[rule]]
name = "export"
method = "GET"
path = "/api/reports/export"
status = "2xx"
action = "report.exported"

[[rule]]
name = "role change"
method = "PATCH"
path = "/api/users/{id}/role"
status = "2xx"
action = "user.role_changed"
resource = { type = "user", id = "{id}" }
metadata = { newRole = "request.body:/role" }
"#;

async fn setup(proxy_extra: &str) -> (ExpressApp, TestSidecar) {
    let app = ExpressApp::start().await;
    let sidecar = TestSidecar::start_with(app.addr, proxy_extra, RULES).await;
    (app, sidecar)
}

/// Sends one request exactly as written (no client normalizes the target) and returns the
/// status and the whole answer.
async fn raw(
    proxy: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let answer = raw_exchange(proxy, request.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The entries after `before` (waiting for exactly one more).
async fn next_entry(sidecar: &TestSidecar, before: usize) -> AuditEntry {
    let entries = sidecar.wait_entries(before + 1).await;
    assert_eq!(
        entries.len(),
        before + 1,
        "one entry per request: {entries:#?}"
    );
    entries[before].clone()
}

#[tokio::test]
async fn every_spelling_of_a_delete_is_the_delete_the_app_ran() {
    let (app, sidecar) = setup("").await;
    let spellings = [
        "/api/users/5/",
        "/API/Users/5",
        "//api/users/5",
        "/api//users/5",
        "/static/../api/users/5",
        "/static/%2e%2e/api/users/5",
        "/static/.%2E/api/users/5",
        "/api/users/%35",
        "/%61pi/users/5",
    ];
    for (index, target) in spellings.iter().enumerate() {
        let (status, answer) = raw(sidecar.proxy, "DELETE", target, &[], "").await;
        assert_eq!(status, 200, "{target}: {answer}");
        assert!(
            answer.contains("x-handler: DELETE /api/users/:id"),
            "{target}: {answer}"
        );
        let handled = app.last().expect("the app handled it");
        assert_eq!(handled.id.as_deref(), Some("5"), "{target}");
        let entry = next_entry(&sidecar, index).await;
        assert_eq!(entry.action, "user.deleted", "{target}: {entry:?}");
        assert_eq!(entry.resource_id.as_deref(), Some("5"), "{target}");
        assert_eq!(entry.method.as_deref(), Some("DELETE"));
        // The app received the canonical path the rules matched, and the entry keeps the
        // spelling the client sent.
        assert_eq!(
            entry.path.as_deref(),
            Some(handled.path.as_str()),
            "{target}"
        );
        if handled.path != *target {
            assert_eq!(entry.metadata["_pathSent"], json!(target), "{target}");
        }
    }
    assert_eq!(app.ran("DELETE /api/users/:id"), spellings.len());
}

#[tokio::test]
async fn reads_and_changes_in_any_case_or_with_a_trailing_slash_are_recorded() {
    let (app, sidecar) = setup("").await;
    let client = HttpClient::new();
    let reply = client
        .send(
            "PATCH",
            &sidecar.url("/API/USERS/5/ROLE"),
            &[("content-type", "application/json")],
            r#"{"role": "admin"}"#,
        )
        .await;
    assert_eq!(reply.headers["x-handler"], "PATCH /api/users/:id/role");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "user.role_changed");
    assert_eq!(entry.resource_id.as_deref(), Some("5"));
    assert_eq!(entry.metadata["newRole"], "admin");

    let reads = [
        ("/api/USERS/Ab5", "user.viewed", Some("Ab5")),
        ("/api/users/Ab5/", "user.viewed", Some("Ab5")),
        ("/api/Reports/export", "report.exported", None),
        ("/api/reports/export/", "report.exported", None),
    ];
    for (index, (path, action, id)) in reads.iter().enumerate() {
        let reply = client.get(&sidecar.url(path)).await;
        assert_eq!(reply.status, 200, "{path}");
        let entry = next_entry(&sidecar, index + 1).await;
        assert_eq!(entry.action, *action, "{path}");
        // The parameter keeps the case it was sent in.
        assert_eq!(entry.resource_id.as_deref(), *id, "{path}");
    }
    assert_eq!(app.ran("GET /api/users/:id"), 2);
}

#[tokio::test]
async fn a_skip_rule_cannot_be_used_to_reach_another_route() {
    let (app, sidecar) = setup("").await;
    let (status, answer) = raw(sidecar.proxy, "GET", "/static/../api/users/5", &[], "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.last().expect("handled").handler, "GET /api/users/:id");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "user.viewed");
    assert_eq!(entry.path.as_deref(), Some("/api/users/5"));

    // What the skip rule is for is still skipped.
    let (status, _) = raw(sidecar.proxy, "GET", "/static/app.js", &[], "").await;
    assert_eq!(status, 200);
    let (status, _) = raw(sidecar.proxy, "GET", "/api/users/6", &[], "").await;
    assert_eq!(status, 200);
    let entries = sidecar.wait_entries(2).await;
    assert_eq!(
        entries.len(),
        2,
        "the static file is not recorded: {entries:#?}"
    );
    assert_eq!(entries[1].resource_id.as_deref(), Some("6"));
}

#[tokio::test]
async fn paths_that_cannot_be_made_canonical_are_refused_and_recorded() {
    let (app, sidecar) = setup("").await;
    let refused = [
        ("DELETE", "/api/users%2F5", "encoded slash"),
        ("DELETE", "/api/users%2f5", "encoded slash"),
        ("DELETE", "/api%5Cusers%5C5", "encoded backslash"),
        ("DELETE", "/api\\users\\5", "backslash"),
        ("DELETE", "/api/users/5%00", "NUL"),
        ("GET", "/api/users/%zz", "invalid percent-encoding"),
    ];
    for (index, (method, target, why)) in refused.iter().enumerate() {
        let (status, answer) = raw(sidecar.proxy, method, target, &[], "").await;
        if status == 400 && !answer.contains("bad request path") {
            // The HTTP parser refused the target before any of auditgate's code ran.
            panic!("{target} was refused by the parser, not by normalization: {answer}");
        }
        assert_eq!(status, 400, "{target}: {answer}");
        let entry = next_entry(&sidecar, index).await;
        assert_eq!(entry.status, Some(400), "{target}");
        assert_eq!(entry.method.as_deref(), Some(*method));
        assert_eq!(
            entry.action,
            format!("http.{}", method.to_ascii_lowercase()),
            "{target}"
        );
        let error = entry.error.clone().unwrap_or_default();
        assert!(error.contains(why), "{target}: {error}");
    }
    assert!(app.handled().is_empty(), "the app saw {:?}", app.handled());
}

#[tokio::test]
async fn escaped_slashes_can_be_decoded_or_kept() {
    let (app, sidecar) = setup("escaped_slashes = \"decode\"").await;
    let (status, _) = raw(sidecar.proxy, "DELETE", "/api/users%2F5", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(app.last().expect("handled").path, "/api/users/5");
    assert_eq!(next_entry(&sidecar, 0).await.action, "user.deleted");

    let (app, sidecar) = setup("escaped_slashes = \"keep\"").await;
    let (status, _) = raw(sidecar.proxy, "DELETE", "/api/users%2f5", &[], "").await;
    // The app keeps `users/5` as one segment: no route, and the entry says so.
    assert_eq!(status, 404);
    assert_eq!(app.last().expect("handled").path, "/api/users%2F5");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "http.delete");
    assert_eq!(entry.status, Some(404));
}

/// Tomcat, Jetty and Spring remove `;` path parameters before routing; other stacks keep `;` as
/// data. With the parameter removed from the path the rules match and the app receives, both
/// kinds of app run the delete the entry records, with the id the entry names.
#[tokio::test]
async fn path_parameters_are_removed_for_the_rules_and_the_app_alike() {
    let spellings = [
        "/api/users;jsessionid=abc/42",
        "/api/users/42;x=1",
        "/api;/users/42",
        "/API/Users/42;v=2/",
        // Past the skip rule for /static as the raw path reads: Tomcat resolves `..;` as `..`.
        "/static/..;/api/users/42",
        "/static/%2e%2e;x/api/users/42",
    ];
    for servlet in [true, false] {
        let app = if servlet {
            ExpressApp::start_servlet().await
        } else {
            ExpressApp::start().await
        };
        let sidecar = TestSidecar::start_with(app.addr, "", RULES).await;
        for (index, target) in spellings.iter().enumerate() {
            let (status, answer) = raw(sidecar.proxy, "DELETE", target, &[], "").await;
            assert_eq!(status, 200, "servlet {servlet}, {target}: {answer}");
            let handled = app.last().expect("the app handled it");
            assert_eq!(handled.handler, "DELETE /api/users/:id", "{target}");
            assert_eq!(handled.id.as_deref(), Some("42"), "{target}");
            let entry = next_entry(&sidecar, index).await;
            assert_eq!(entry.action, "user.deleted", "{target}: {entry:?}");
            assert_eq!(entry.resource_id.as_deref(), Some("42"), "{target}");
            assert_eq!(entry.path.as_deref(), Some(handled.path.as_str()));
            assert!(!handled.path.contains(';'), "{target}: {}", handled.path);
            assert_eq!(entry.metadata["_pathSent"], json!(target), "{target}");
        }
        assert_eq!(app.ran("DELETE /api/users/:id"), spellings.len());
        // An encoded `;` is data to both kinds of app: the id is `42;x=1`, which names no user
        // the app has, and the entry names the same id.
        let (_, answer) = raw(sidecar.proxy, "GET", "/api/users/42%3Bx=1", &[], "").await;
        let handled = app.last().expect("the app handled it");
        assert_eq!(handled.id.as_deref(), Some("42;x=1"), "{answer}");
        let entry = next_entry(&sidecar, spellings.len()).await;
        assert_eq!(entry.action, "user.viewed");
        assert_eq!(entry.path.as_deref(), Some("/api/users/42%3Bx=1"));
    }
}

#[tokio::test]
async fn path_parameters_can_be_refused_or_kept() {
    let (app, sidecar) = setup("path_parameters = \"reject\"").await;
    let (status, answer) = raw(sidecar.proxy, "DELETE", "/api/users/42;x=1", &[], "").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("bad request path"), "{answer}");
    assert!(app.handled().is_empty(), "the app saw {:?}", app.handled());
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.status, Some(400));
    assert_eq!(entry.action, "http.delete");
    let error = entry.error.unwrap_or_default();
    assert!(error.contains("path parameter"), "{error}");

    // Kept for an app that reads `;` as data: the app and the entry both see the id `42;x=1`.
    let (app, sidecar) = setup("path_parameters = \"keep\"").await;
    let (status, _) = raw(sidecar.proxy, "DELETE", "/api/users/42;x=1", &[], "").await;
    assert_eq!(status, 200);
    let handled = app.last().expect("handled");
    assert_eq!(handled.path, "/api/users/42;x=1");
    assert_eq!(handled.id.as_deref(), Some("42;x=1"));
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "user.deleted");
    assert_eq!(entry.resource_id.as_deref(), Some("42;x=1"));
}

#[tokio::test]
async fn method_overrides_on_a_post_are_recorded_as_the_method_the_app_ran() {
    let (app, sidecar) = setup("").await;
    let form = "application/x-www-form-urlencoded";
    let cases: [(&str, Vec<String>, &str, &str); 5] = [
        (
            "/api/users/5",
            vec!["X-HTTP-Method-Override: DELETE".into()],
            "",
            "header:x-http-method-override",
        ),
        (
            "/api/users/5",
            vec!["X-HTTP-Method: delete".into()],
            "",
            "header:x-http-method",
        ),
        (
            "/api/users/5",
            vec!["X_Method_Override: DELETE".into()],
            "",
            "header:x-method-override",
        ),
        ("/api/users/5?_method=DELETE", vec![], "", "query:_method"),
        (
            "/api/users/5",
            vec![format!("Content-Type: {form}")],
            "name=x&_method=DELETE",
            "form:_method",
        ),
    ];
    for (index, (target, headers, body, from)) in cases.iter().enumerate() {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, answer) = raw(sidecar.proxy, "POST", target, &headers, body).await;
        assert_eq!(status, 200, "{from}: {answer}");
        assert!(
            answer.contains("x-handler: DELETE /api/users/:id"),
            "{from}: {answer}"
        );
        let entry = next_entry(&sidecar, index).await;
        assert_eq!(entry.action, "user.deleted", "{from}: {entry:?}");
        assert_eq!(entry.method.as_deref(), Some("DELETE"), "{from}");
        let note = &entry.metadata["_methodOverride"];
        assert_eq!(note["sent"], "POST", "{from}: {note}");
        assert_eq!(note["method"], "DELETE", "{from}: {note}");
        assert!(note["from"].get(*from).is_some(), "{from}: {note}");
    }
    // The form was forwarded whole after it was read.
    assert_eq!(app.ran("DELETE /api/users/:id"), cases.len());

    // Overrides that disagree cannot say what the app did: refused, recorded, never forwarded.
    let before = app.handled().len();
    let (status, answer) = raw(
        sidecar.proxy,
        "POST",
        "/api/users/5?_method=PUT",
        &["X-HTTP-Method-Override: DELETE"],
        "",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(app.handled().len(), before);
    let entry = next_entry(&sidecar, cases.len()).await;
    assert_eq!(entry.status, Some(400));
    assert!(entry.error.unwrap_or_default().contains("disagree"));
}

#[tokio::test]
async fn an_override_the_app_may_ignore_still_leaves_a_mutation_recorded() {
    let (_app, sidecar) = setup("").await;
    // A POST that claims to be a GET: the app (which honours it) reads, but an app that did not
    // would have run the POST, so the entry is kept as the mutation policy wants.
    let (status, _) = raw(
        sidecar.proxy,
        "POST",
        "/api/unrouted",
        &["X-HTTP-Method-Override: GET"],
        "",
    )
    .await;
    assert_eq!(status, 404);
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.method.as_deref(), Some("GET"));
    assert_eq!(entry.metadata["_methodOverride"]["sent"], "POST");
}

#[tokio::test]
async fn turned_off_method_overrides_never_reach_the_app() {
    let (app, sidecar) = setup("method_override = []").await;
    let (status, answer) = raw(
        sidecar.proxy,
        "POST",
        "/api/users/5",
        &[
            "X-HTTP-Method-Override: DELETE",
            "X_HTTP_Method: DELETE",
            "x-method-override: DELETE",
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let handled = app.last().expect("handled");
    assert_eq!(handled.handler, "POST /api/users/:id");
    for name in [
        "x-http-method-override",
        "x_http_method",
        "x-method-override",
    ] {
        assert!(
            !handled.headers.contains_key(name),
            "{name} reached the app: {:?}",
            handled.headers
        );
    }
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "http.post");
    assert_eq!(entry.method.as_deref(), Some("POST"));
    let ignored = &entry.metadata["_methodOverride"]["ignored"];
    assert_eq!(
        ignored["header:x-http-method-override"], "DELETE",
        "{ignored}"
    );
    assert_eq!(ignored["header:x-http-method"], "DELETE", "{ignored}");
}

#[tokio::test]
async fn head_is_served_by_get_rules_and_recorded_as_head() {
    let (app, sidecar) = setup("").await;
    let reply = HttpClient::new()
        .send("HEAD", &sidecar.url("/api/users/5"), &[], "")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.last().expect("handled").handler, "GET /api/users/:id");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "user.viewed");
    assert_eq!(entry.method.as_deref(), Some("HEAD"));
}

#[tokio::test]
async fn an_h2c_upgrade_is_refused_and_recorded() {
    let (app, sidecar) = setup("").await;
    let (status, answer) = raw(
        sidecar.proxy,
        "GET",
        "/api/users/5",
        &[
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
        ],
        "",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // No switch to another protocol anywhere in the reply (a request id may hold the digits 101).
    assert!(
        !answer.lines().any(|line| line.starts_with("HTTP/1.1 101")),
        "{answer}"
    );
    assert!(app.handled().is_empty(), "the app saw {:?}", app.handled());
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.status, Some(400));
    assert!(entry.error.unwrap_or_default().contains("h2c"));
}

#[tokio::test]
async fn the_entry_request_id_is_always_auditgates_own() {
    let (app, sidecar) = setup("").await;
    let reply = HttpClient::new()
        .send(
            "DELETE",
            &sidecar.url("/api/users/5"),
            &[("x-request-id", "client-chosen-id")],
            "",
        )
        .await;
    let ours = reply.headers["x-request-id"]
        .to_str()
        .expect("text")
        .to_string();
    assert_ne!(ours, "client-chosen-id");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.request_id.as_deref(), Some(ours.as_str()));
    assert_eq!(entry.metadata["_clientRequestId"], "client-chosen-id");
    let seen = app.last().expect("handled").headers;
    assert_eq!(seen["x-request-id"], ours.as_str());
    assert_eq!(seen["x-client-request-id"], "client-chosen-id");
}

#[tokio::test]
async fn normalization_none_and_strict_route_semantics_are_the_old_behaviour() {
    // `none`: the path is matched and forwarded as sent (for an app behind a proxy that
    // normalizes already); the app here still resolves it, and the entry misses the rule.
    let (app, sidecar) = setup(
        "path_normalization = \"none\"\nroute_case = \"sensitive\"\ntrailing_slash = \"strict\"",
    )
    .await;
    let (status, _) = raw(sidecar.proxy, "DELETE", "//api/users/5", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(app.last().expect("handled").path, "//api/users/5");
    assert_eq!(next_entry(&sidecar, 0).await.action, "http.delete");
    for (index, target) in ["/API/users/5", "/api/users/5/"].iter().enumerate() {
        raw(sidecar.proxy, "DELETE", target, &[], "").await;
        assert_eq!(next_entry(&sidecar, index + 1).await.action, "http.delete");
    }

    // A rule can ask for the app's semantics back on its own.
    let app = ExpressApp::start().await;
    let rules = "[[rule]]\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\nroute_case = \"insensitive\"\ntrailing_slash = \"optional\"\naction = \"user.deleted\"\n";
    let sidecar = TestSidecar::start_with(
        app.addr,
        "route_case = \"sensitive\"\ntrailing_slash = \"strict\"",
        rules,
    )
    .await;
    raw(sidecar.proxy, "DELETE", "/API/users/5/", &[], "").await;
    assert_eq!(next_entry(&sidecar, 0).await.action, "user.deleted");
}

#[tokio::test]
async fn a_websocket_upgrade_is_one_entry_even_when_no_rule_wants_it() {
    use futures_util::SinkExt;
    let upstream = crate::support::Upstream::start().await;
    // GETs are not recorded when unmatched, but the tunnel after a 101 is not audited, so the
    // upgrade itself always is.
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.proxy))
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .expect("send");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.action, "http.get");
    assert_eq!(entry.status, Some(101));
    assert_eq!(entry.metadata["_upgrade"], "websocket");
}

#[test]
fn explain_shows_the_canonical_path_and_the_semantics_that_matched() {
    let dir = crate::support::TempDir::new("explain-canonical");
    let text = crate::support::config_text(
        "127.0.0.1:9".parse().expect("address"),
        &dir.0.join("audit.db"),
        "",
        RULES,
    );
    let config = auditgate::config::Config::parse(&text, &dir.0).expect("valid config");
    let args =
        |method: &str, target: &str, headers: &[&str]| auditgate::commands::cli::ExplainArgs {
            config: dir.0.join("unused.toml"),
            method: method.to_string(),
            target: target.to_string(),
            status: 200,
            headers: headers.iter().map(|header| header.to_string()).collect(),
            body: None,
            response_headers: Vec::new(),
            response_body: None,
            peer: "127.0.0.1".to_string(),
        };
    let out = auditgate::commands::explain::explain(
        &config,
        &args("DELETE", "/static/../API/users/5/", &[]),
    )
    .expect("explained");
    assert_eq!(out["request"]["canonicalPath"], "/API/users/5/", "{out:#}");
    assert_eq!(out["request"]["path"], "/static/../API/users/5/");
    assert_eq!(out["rule"], "delete user");
    assert_eq!(out["routeMatch"]["exact"], false);
    assert_eq!(out["routeMatch"]["caseFolded"], true);
    assert_eq!(out["routeMatch"]["trailingSlashIgnored"], true);
    assert_eq!(out["entry"]["resourceId"], "5");

    let out = auditgate::commands::explain::explain(
        &config,
        &args("POST", "/api/users/5", &["X-HTTP-Method-Override: DELETE"]),
    )
    .expect("explained");
    assert_eq!(out["request"]["effectiveMethod"], "DELETE", "{out:#}");
    assert_eq!(out["entry"]["action"], "user.deleted");

    let out =
        auditgate::commands::explain::explain(&config, &args("DELETE", "/api/users%2F5", &[]))
            .expect("explained");
    assert_eq!(out["decision"], "refused", "{out:#}");
    assert_eq!(out["entry"]["status"], 400);

    // Every refusal of the request head the proxy makes, explain shows as the proxy records it.
    for (headers, error) in [
        (
            vec!["Host: a.example", "Host: b.example"],
            "refused: more than one Host header",
        ),
        (
            vec!["Connection: Upgrade", "Upgrade: h2c"],
            "refused: an Upgrade to h2c",
        ),
    ] {
        let out = auditgate::commands::explain::explain(
            &config,
            &args("DELETE", "/api/users/5", &headers),
        )
        .expect("explained");
        assert_eq!(out["decision"], "refused", "{headers:?}: {out:#}");
        assert_eq!(out["entry"]["status"], 400, "{out:#}");
        assert!(
            out["entry"]["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with(error),
            "{headers:?}: {out:#}"
        );
    }
}

#[tokio::test]
async fn a_form_override_that_cannot_be_read_is_refused_and_recorded() {
    let (app, sidecar) = setup("").await;
    // The field comes after more than max_body_capture (64 KiB by default): the app reads the
    // whole form and would run a DELETE that the log could only record as a POST.
    let large = format!("note={}&_method=DELETE", "x".repeat(70 * 1024));
    let form = "Content-Type: application/x-www-form-urlencoded";
    let cases: [(Vec<&str>, &str, &str); 2] = [
        (vec![form], &large, "max_body_capture"),
        (
            vec![form, "Content-Encoding: identity, identity"],
            "_method=DELETE",
            "content coding",
        ),
    ];
    for (index, (headers, body, why)) in cases.iter().enumerate() {
        let (status, answer) = raw(sidecar.proxy, "POST", "/api/users/5", headers, body).await;
        assert_eq!(status, 400, "{why}: {answer}");
        assert!(app.handled().is_empty(), "{why}: {:?}", app.handled());
        let entry = next_entry(&sidecar, index).await;
        assert_eq!(entry.status, Some(400), "{why}: {entry:?}");
        let error = entry.error.unwrap_or_default();
        assert!(error.contains(why), "{why}: {error}");
        assert!(
            entry.metadata["_methodOverride"]["unread"]
                .as_str()
                .is_some_and(|unread| unread.contains(why)),
            "{why}: {:?}",
            entry.metadata
        );
    }
    // A large form is fine when the body is not an override source.
    let (_app, sidecar) = setup("method_override = [\"X-HTTP-Method-Override\"]").await;
    let (status, answer) = raw(sidecar.proxy, "POST", "/api/users/5", &[form], &large).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_target_that_is_not_a_path_is_refused_and_recorded() {
    let (app, sidecar) = setup("").await;
    // The authority form (`DELETE host:port`) has no path for the rules to match, but it reaches
    // the app as `DELETE /`; `*` is only OPTIONS's.
    for (index, (method, target)) in [("DELETE", "app.test:80"), ("DELETE", "*")]
        .iter()
        .enumerate()
    {
        let (status, answer) = raw(sidecar.proxy, method, target, &[], "").await;
        assert_eq!(status, 400, "{target}: {answer}");
        assert!(app.handled().is_empty(), "{target}: {:?}", app.handled());
        let entry = next_entry(&sidecar, index).await;
        assert_eq!(entry.status, Some(400), "{target}: {entry:?}");
        assert!(
            entry.error.unwrap_or_default().contains("not a path"),
            "{target}"
        );
    }
    // `OPTIONS *` is still forwarded.
    let (status, _) = raw(sidecar.proxy, "OPTIONS", "*", &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(app.last().expect("handled").path, "*");
}

#[tokio::test]
async fn a_method_in_another_case_and_a_second_host_are_refused_and_recorded() {
    let (app, sidecar) = setup("").await;
    // `delete` runs as DELETE on app servers that fold method case; the rules would see an
    // unknown method.
    let (status, answer) = raw(sidecar.proxy, "delete", "/api/users/5", &[], "").await;
    assert_eq!(status, 400, "{answer}");
    let entry = next_entry(&sidecar, 0).await;
    assert_eq!(entry.status, Some(400), "{entry:?}");
    assert!(
        entry
            .error
            .unwrap_or_default()
            .contains("standard method in another case"),
        "the refusal says why"
    );
    // Two Host headers: rules with a host condition would read one, the app maybe the other.
    let (status, answer) = raw(
        sidecar.proxy,
        "DELETE",
        "/api/users/5",
        &["Host: admin.internal"],
        "",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let entry = next_entry(&sidecar, 1).await;
    assert!(entry
        .error
        .unwrap_or_default()
        .contains("more than one Host header"));
    assert!(app.handled().is_empty(), "{:?}", app.handled());
    // A method of the app's own in any case stays the app's business.
    let (status, _) = raw(sidecar.proxy, "PURGE", "/api/users/5", &[], "").await;
    assert_eq!(status, 404);
}
