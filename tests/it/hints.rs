//! Response hints: the app's own `Audit-*` headers merged into entries and stripped.

use serde_json::json;

use crate::support::{HttpClient, TestSidecar, Upstream};

const RULES: &str = r#"
[hints]
enabled = true

[unmatched]
record = "none"

[[rule]]
name = "plan change"
method = "POST"
path = "/billing/plan"
action = "billing.updated"
resource = { type = "workspace", id = "query:ws" }
"#;

#[tokio::test]
async fn hints_are_merged_marked_and_never_reach_the_client() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, RULES).await;
    let client = HttpClient::new();
    let metadata = json!({"oldPlan": "free", "newPlan": "pro"}).to_string();
    let reply = client
        .send(
            "POST",
            &sidecar.url("/billing/plan?ws=w-1"),
            &[
                ("x-reply-audit-action", "billing.plan_changed"),
                ("x-reply-audit-actor-email", "owner@example.com"),
                ("x-reply-audit-metadata", &metadata),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    for name in ["audit-action", "audit-actor-email", "audit-metadata"] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client"
        );
    }
    let entries = sidecar.wait_entries(1).await;
    let entry = &entries[0];
    assert_eq!(
        entry.action, "billing.plan_changed",
        "the app's action overrides the rule's"
    );
    assert_eq!(
        entry.resource_id.as_deref(),
        Some("w-1"),
        "the rule's other fields stay"
    );
    assert_eq!(entry.actor_email.as_deref(), Some("owner@example.com"));
    assert_eq!(entry.actor_source.as_deref(), Some("app"));
    assert_eq!(entry.metadata["oldPlan"], "free");
    assert_eq!(
        entry.metadata["_app"],
        json!(["action", "actorEmail", "metadata"])
    );
}

#[tokio::test]
async fn a_hinted_action_is_recorded_without_a_rule_and_client_hints_are_ignored() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, RULES).await;
    let client = HttpClient::new();
    // The client tries to write its own audit record: ignored (hints come only from the app).
    let reply = client
        .send(
            "POST",
            &sidecar.url("/other"),
            &[("audit-action", "evil.forged"), ("audit-actor-id", "root")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    // The app names an action for an exchange no rule matches.
    client
        .send(
            "GET",
            &sidecar.url("/reports/9"),
            &[
                ("x-reply-audit-action", "report.viewed"),
                ("x-reply-audit-resource-id", "9"),
            ],
            "",
        )
        .await;
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].action, "report.viewed");
    assert_eq!(entries[0].resource_id.as_deref(), Some("9"));
    assert_eq!(entries[0].rule, None);
}

#[tokio::test]
async fn invalid_or_oversized_metadata_is_recorded_as_rejected() {
    let upstream = Upstream::start().await;
    let rules = RULES.replace("enabled = true", "enabled = true\nmax_metadata = \"32B\"");
    let sidecar = TestSidecar::start(upstream.addr, &rules).await;
    let client = HttpClient::new();
    let big = json!({"note": "x".repeat(100)}).to_string();
    let reply = client
        .send(
            "POST",
            &sidecar.url("/billing/plan?ws=a"),
            &[("x-reply-audit-metadata", &big)],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    client
        .send(
            "POST",
            &sidecar.url("/billing/plan?ws=b"),
            &[("x-reply-audit-metadata", "{not json")],
            "",
        )
        .await;
    let entries = sidecar.wait_entries(2).await;
    assert!(entries[0].metadata["_hintErrors"]["metadata"]
        .as_str()
        .unwrap_or("")
        .contains("limit"));
    assert_eq!(
        entries[1].metadata["_hintErrors"]["metadata"],
        "not valid JSON"
    );
    assert_eq!(entries[0].action, "billing.updated");
}

#[tokio::test]
async fn without_override_hints_fill_gaps_only_and_disabled_hints_pass_through() {
    let upstream = Upstream::start().await;
    let rules = RULES.replace("enabled = true", "enabled = true\noverride = false");
    let sidecar = TestSidecar::start(upstream.addr, &rules).await;
    let client = HttpClient::new();
    client
        .send(
            "POST",
            &sidecar.url("/billing/plan?ws=w-2"),
            &[
                ("x-reply-audit-action", "billing.plan_changed"),
                ("x-reply-audit-resource-type", "team"),
            ],
            "",
        )
        .await;
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "billing.updated");
    assert_eq!(entries[0].resource_type.as_deref(), Some("workspace"));

    let plain = TestSidecar::start(upstream.addr, "[unmatched]\nrecord = \"none\"\n").await;
    let reply = client
        .send(
            "GET",
            &plain.url("/x"),
            &[("x-reply-audit-action", "report.viewed")],
            "",
        )
        .await;
    assert_eq!(
        reply.headers["audit-action"], "report.viewed",
        "hints off: the app's headers are untouched"
    );
    assert!(plain.entries().await.is_empty());
}

/// auditgate's own entries are `audit.*`; nothing the app controls may produce one, or hide its
/// actions behind the viewer's switch that hides them.
#[tokio::test]
async fn the_app_cannot_record_actions_in_auditgates_namespace() {
    let upstream = Upstream::start().await;
    let rules = format!(
        "{RULES}\n[[rule]]\nname = \"sections\"\nmethod = \"GET\"\npath = \"/sections/{{section}}\"\naction = \"{{section}}.viewed\"\n"
    );
    let sidecar = TestSidecar::start(upstream.addr, &rules).await;
    let client = HttpClient::new();
    // A hint naming an auditgate action is refused like any invalid hint; the rule's stays.
    client
        .send(
            "POST",
            &sidecar.url("/billing/plan?ws=w-1"),
            &[("x-reply-audit-action", "audit.pruned")],
            "",
        )
        .await;
    // A template that renders into the namespace is renamed, the rendered text kept.
    for section in ["audit", "AUDIT", "users"] {
        let reply = client
            .send(
                "GET",
                &sidecar.url(&format!("/sections/{section}")),
                &[],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let entries = sidecar.wait_entries(4).await;
    assert_eq!(entries[0].action, "billing.updated");
    assert!(
        entries[0].metadata["_hintErrors"]["action"]
            .as_str()
            .unwrap_or("")
            .contains("reserved for auditgate's own entries"),
        "{:?}",
        entries[0].metadata
    );
    assert_eq!(entries[1].action, "app.audit.viewed");
    assert_eq!(
        entries[1].metadata["_actionRenamed"]["from"],
        "audit.viewed"
    );
    assert_eq!(entries[2].action, "app.AUDIT.viewed");
    assert_eq!(entries[3].action, "users.viewed");
    assert!(entries[3].metadata.get("_actionRenamed").is_none());

    // The viewer's "hide auditgate's own activity" switch does not hide them.
    let shown = client
        .get_admin(&format!(
            "http://{}/api/v1/entries?exclude_action_prefix=audit.&action_prefix=app.",
            sidecar.admin
        ))
        .await
        .json();
    let actions: Vec<&str> = shown["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| entry["action"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(actions.len(), 2, "{shown}");
    assert!(actions.contains(&"app.audit.viewed"), "{shown}");
}
