//! The proxy end to end: a real upstream behind the real sidecar.

use crate::support::{HttpClient, TestSidecar, Upstream};

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
"#;

#[tokio::test]
async fn a_matched_request_becomes_an_entry() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, RULES).await;
    let client = HttpClient::new();
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
    assert_eq!(entry.rule.as_deref(), Some("delete user"));
    assert_eq!(entry.route.as_deref(), Some("/api/users/{id}"));
    assert_eq!(entry.user_agent.as_deref(), Some("it/1.0"));
    assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(entry.seq, 1);
}
