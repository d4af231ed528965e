//! Route learning (`[discover]`) through the real binary: traffic through the proxy, the
//! coverage API and metric, `auditgate rules suggest`, `auditgate check` on its output, and the
//! drafted rules recording what only the fallback caught before.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, HttpClient, Process, TempDir, Upstream};

const ORDER_ID: &str = "9f1c2b7e-4d3a-4f5e-8a9b-0c1d2e3f4a5b";

fn rules() -> String {
    "[discover]\nenabled = true\nsave_interval = \"1s\"\n\n\
     [[rule]]\nname = \"delete user\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\n\
     status = \"2xx\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n\n\
     [[rule]]\nname = \"health\"\npath = \"/healthz\"\nskip = true\n"
        .to_string()
}

async fn send_traffic(client: &HttpClient, proxy: std::net::SocketAddr) {
    let url = |path: &str| format!("http://{proxy}{path}");
    for id in 1..=3 {
        let reply = client
            .send("DELETE", &url(&format!("/api/users/{id}")), &[], "")
            .await;
        assert_eq!(reply.status, 200);
    }
    for _ in 0..5 {
        client.send("POST", &url("/api/orders"), &[], "{}").await;
    }
    client
        .send("PATCH", &url(&format!("/api/orders/{ORDER_ID}")), &[], "{}")
        .await;
    client
        .send(
            "PATCH",
            &url("/api/orders/77"),
            &[("x-test-status", "409")],
            "{}",
        )
        .await;
    client.get(&url("/api/orders/12")).await;
    client.get(&url("/healthz")).await;
}

fn method<'a>(
    coverage: &'a serde_json::Value,
    template: &str,
    verb: &str,
) -> &'a serde_json::Value {
    let route = coverage["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|route| route["template"] == template))
        .unwrap_or_else(|| panic!("no route {template} in {coverage:#}"));
    route["methods"]
        .as_array()
        .and_then(|methods| methods.iter().find(|m| m["method"] == verb))
        .unwrap_or_else(|| panic!("no {verb} on {template} in {coverage:#}"))
}

fn auditgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .output()
        .expect("run auditgate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_routes_show_their_coverage_and_become_a_check_clean_config() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("discover");
    let config = support::write_config(&dir.0, upstream.addr, "", &rules());
    let client = HttpClient::new();

    // An hour of traffic, in short.
    let sidecar = Process::start(&config);
    send_traffic(&client, sidecar.proxy).await;
    let coverage = client
        .get_admin(&format!("http://{}/api/v1/coverage", sidecar.admin))
        .await;
    assert_eq!(coverage.status, 200, "{}", coverage.text());
    let coverage = coverage.json();
    assert_eq!(coverage["enabled"], true);
    let templates: Vec<&str> = coverage["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|route| route["template"].as_str().expect("a template"))
        .collect();
    // Busiest first; ids of every kind grouped into one template.
    assert_eq!(
        templates,
        [
            "/api/orders",
            "/api/orders/{id}",
            "/api/users/{id}",
            "/healthz"
        ]
    );
    let delete = method(&coverage, "/api/users/{id}", "DELETE");
    assert_eq!(
        (delete["coverage"].as_str(), delete["rule"].as_str()),
        (Some("rule"), Some("delete user"))
    );
    assert_eq!(delete["count"], 3);
    assert!(delete["draftRule"].is_null());
    let create = method(&coverage, "/api/orders", "POST");
    assert_eq!(create["coverage"], "fallback");
    assert_eq!(create["fallbackCount"], 5);
    let draft = create["draftRule"]
        .as_str()
        .expect("a draft rule for the fallback");
    assert!(draft.contains("action = \"order.created\""), "{draft}");
    let patch = method(&coverage, "/api/orders/{id}", "PATCH");
    assert_eq!(patch["statusClasses"]["2xx"], 1);
    assert_eq!(patch["statusClasses"]["4xx"], 1);
    assert_eq!(
        method(&coverage, "/api/orders/{id}", "GET")["coverage"],
        "not_recorded"
    );
    let health = method(&coverage, "/healthz", "GET");
    assert_eq!(
        (health["coverage"].as_str(), health["rule"].as_str()),
        (Some("skipped"), Some("health"))
    );
    let metrics = client
        .get(&format!("http://{}/metrics", sidecar.admin))
        .await
        .text();
    assert_eq!(
        support::metric_count(&metrics, "auditgate_unmatched_mutations_total"),
        Some(7),
        "{metrics}"
    );
    assert_eq!(
        support::metric_count(&metrics, "auditgate_discover_templates"),
        Some(4)
    );
    // A clean stop saves what was learned beside the store.
    sidecar.stop();
    let saved = dir.0.join("audit.db.routes.json");
    assert!(saved.exists());

    // From what was learned to rules, without writing one by hand.
    let config_arg = config.to_str().expect("a UTF-8 path");
    let suggested = auditgate(&["rules", "suggest", "--config", config_arg]);
    assert!(
        suggested.status.success(),
        "{}",
        String::from_utf8_lossy(&suggested.stderr)
    );
    let drafts = String::from_utf8(suggested.stdout).expect("UTF-8 drafts");
    assert_eq!(drafts.matches("[[rule]]").count(), 2, "{drafts}");
    assert!(drafts.contains("action = \"order.created\""), "{drafts}");
    assert!(drafts.contains("action = \"order.updated\""), "{drafts}");
    assert!(
        !drafts.contains("user.deleted"),
        "a covered route is not drafted again: {drafts}"
    );
    // `--db` finds the same file.
    let by_db = auditgate(&[
        "rules",
        "suggest",
        "--db",
        dir.0.join("audit.db").to_str().expect("a UTF-8 path"),
    ]);
    assert!(by_db.status.success());

    let mut text = std::fs::read_to_string(&config).expect("the config");
    text.push('\n');
    text.push_str(&drafts);
    std::fs::write(&config, &text).expect("write the config");
    let check = auditgate(&["check", "--config", config_arg]);
    assert!(
        check.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let again = auditgate(&["rules", "suggest", "--config", config_arg]);
    let again = String::from_utf8(again.stdout).expect("UTF-8 drafts");
    assert_eq!(
        again.matches("[[rule]]").count(),
        0,
        "nothing left to draft: {again}"
    );

    // Used as the config: the mutations only the fallback caught are recorded under the drafted
    // actions, and the restarted sidecar still knows what it learned.
    let sidecar = Process::start(&config);
    client
        .send(
            "POST",
            &format!("http://{}/api/orders", sidecar.proxy),
            &[],
            "{}",
        )
        .await;
    client
        .send(
            "PATCH",
            &format!("http://{}/api/orders/31", sidecar.proxy),
            &[],
            "{}",
        )
        .await;
    let coverage = client
        .get_admin(&format!("http://{}/api/v1/coverage", sidecar.admin))
        .await
        .json();
    let create = method(&coverage, "/api/orders", "POST");
    assert_eq!(create["count"], 6, "the count goes on from the saved file");
    assert_eq!(create["coverage"], "rule");
    assert!(create["draftRule"].is_null());
    let admin = sidecar.admin;
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let metrics = client.get(&format!("http://{admin}/metrics")).await.text();
            support::metric_count(&metrics, "auditgate_entries_written_total").unwrap_or(0) >= 3
        })
        .await
    );
    let metrics = client.get(&format!("http://{admin}/metrics")).await.text();
    assert_eq!(
        support::metric_count(&metrics, "auditgate_unmatched_mutations_total"),
        Some(0)
    );
    sidecar.stop();
    let entries = support::read_entries(&dir.0.join("audit.db"));
    let actions: Vec<(&str, Option<&str>)> = entries
        .iter()
        .filter(|entry| entry.action.starts_with("order."))
        .map(|entry| (entry.action.as_str(), entry.resource_id.as_deref()))
        .collect();
    assert_eq!(
        actions,
        [("order.created", None), ("order.updated", Some("31"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_discover_nothing_is_learned_and_the_api_says_so() {
    let upstream = Upstream::start().await;
    let sidecar = support::TestSidecar::start(upstream.addr, "").await;
    let client = HttpClient::new();
    client
        .send("POST", &sidecar.url("/api/orders"), &[], "{}")
        .await;
    let coverage = client
        .get_admin(&format!("http://{}/api/v1/coverage", sidecar.admin))
        .await
        .json();
    assert_eq!(coverage["enabled"], false);
    assert_eq!(coverage["routes"], serde_json::json!([]));
    assert!(!sidecar.dir.0.join("audit.db.routes.json").exists());
    // The fallback metric counts all the same.
    let admin = sidecar.admin;
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let metrics = client.get(&format!("http://{admin}/metrics")).await.text();
            support::metric_count(&metrics, "auditgate_unmatched_mutations_total") == Some(1)
        })
        .await
    );
}
