//! An entry as an OCSF API Activity event (class 6003), the normalized schema that AWS Security
//! Lake, Splunk, Datadog, CrowdStrike and Google SecOps ingest.
//!
//! Pure: [`to_ocsf`] turns one [`AuditEntry`] into one event and never fails. Every event is
//! valid against the OCSF schema version in [`OCSF_SCHEMA_VERSION`] whatever the entry holds, so
//! a value the schema would refuse in its OCSF attribute (an e-mail address that is not one, a
//! client address that is not an IP, an HTTP method outside the schema's list) is carried under
//! `unmapped` instead, under the entry's own API name: nothing the entry says is lost. The
//! schema requires an actor and a source endpoint; an entry without either gets the
//! placeholders the README's table names (`anonymous`, `unknown`), marked as such.
//!
//! The event's activity (create, read, update, delete, other) comes from, in order: the rule's
//! `ocsf_activity`, which the proxy records in the entry's metadata under
//! [`ACTIVITY_METADATA_KEY`] so the entry itself says how to classify it; the last word of the
//! action (`user.deleted` is a delete); the HTTP method; otherwise "other".

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::entry::{AuditEntry, Outcome};

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_SCHEMA_VERSION: &str = "1.3.0";
/// API Activity.
pub const CLASS_UID: u64 = 6003;
/// Application Activity.
pub const CATEGORY_UID: u64 = 6;
/// The entry metadata key under which a rule's `ocsf_activity` is recorded.
pub const ACTIVITY_METADATA_KEY: &str = "_ocsfActivity";

/// The HTTP methods OCSF 1.3's `http_request.http_method` enumerates; any other method (PATCH,
/// WebDAV's) is kept under `unmapped.method`.
const OCSF_HTTP_METHODS: [&str; 8] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "TRACE",
];

/// An API Activity's `activity_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcsfActivity {
    Create,
    Read,
    Update,
    Delete,
    Other,
}

impl OcsfActivity {
    /// The names a rule's `ocsf_activity` accepts.
    pub const NAMES: &'static str = "create, read, update, delete or other";

    /// Parses a rule's `ocsf_activity` (lowercase, as written in the rule file).
    pub fn parse(text: &str) -> Option<OcsfActivity> {
        match text {
            "create" => Some(OcsfActivity::Create),
            "read" => Some(OcsfActivity::Read),
            "update" => Some(OcsfActivity::Update),
            "delete" => Some(OcsfActivity::Delete),
            "other" => Some(OcsfActivity::Other),
            _ => None,
        }
    }

    /// The name [`OcsfActivity::parse`] reads back.
    pub fn as_str(self) -> &'static str {
        match self {
            OcsfActivity::Create => "create",
            OcsfActivity::Read => "read",
            OcsfActivity::Update => "update",
            OcsfActivity::Delete => "delete",
            OcsfActivity::Other => "other",
        }
    }

    pub fn id(self) -> u64 {
        match self {
            OcsfActivity::Create => 1,
            OcsfActivity::Read => 2,
            OcsfActivity::Update => 3,
            OcsfActivity::Delete => 4,
            OcsfActivity::Other => 99,
        }
    }

    /// The schema's caption (`activity_name`).
    pub fn label(self) -> &'static str {
        match self {
            OcsfActivity::Create => "Create",
            OcsfActivity::Read => "Read",
            OcsfActivity::Update => "Update",
            OcsfActivity::Delete => "Delete",
            OcsfActivity::Other => "Other",
        }
    }

    /// The activity an action's last word names (`user.deleted`, `invoice_viewed`, `key
    /// rotated` is none of them), without regard to ASCII case.
    pub fn from_action(action: &str) -> Option<OcsfActivity> {
        let word = action
            .rsplit(|c: char| !c.is_alphanumeric())
            .find(|word| !word.is_empty())?
            .to_ascii_lowercase();
        let activity = match word.as_str() {
            "created" | "create" | "added" | "add" | "inserted" | "registered" | "uploaded"
            | "invited" | "signup" => OcsfActivity::Create,
            "viewed" | "view" | "read" | "listed" | "list" | "fetched" | "get" | "accessed"
            | "downloaded" | "exported" | "export" | "searched" | "search" | "queried"
            | "query" => OcsfActivity::Read,
            "updated" | "update" | "changed" | "change" | "modified" | "edited" | "patched"
            | "renamed" | "replaced" | "set" => OcsfActivity::Update,
            "deleted" | "delete" | "removed" | "remove" | "destroyed" | "purged" | "revoked"
            | "pruned" => OcsfActivity::Delete,
            _ => return None,
        };
        Some(activity)
    }

    /// The activity an HTTP method stands for, by REST convention.
    pub fn from_method(method: &str) -> Option<OcsfActivity> {
        match method.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" => Some(OcsfActivity::Read),
            "POST" => Some(OcsfActivity::Create),
            "PUT" | "PATCH" => Some(OcsfActivity::Update),
            "DELETE" => Some(OcsfActivity::Delete),
            _ => None,
        }
    }

    /// The activity of an entry: the rule's override, then the action, then the method.
    pub fn of_entry(entry: &AuditEntry) -> OcsfActivity {
        entry
            .metadata
            .get(ACTIVITY_METADATA_KEY)
            .and_then(Value::as_str)
            .and_then(OcsfActivity::parse)
            .or_else(|| OcsfActivity::from_action(&entry.action))
            .or_else(|| entry.method.as_deref().and_then(OcsfActivity::from_method))
            .unwrap_or(OcsfActivity::Other)
    }
}

/// The entry as one OCSF API Activity event; see the module documentation and the README's
/// table for where each field goes.
pub fn to_ocsf(entry: &AuditEntry) -> Value {
    let activity = OcsfActivity::of_entry(entry);
    let mut unmapped = Map::new();
    let (status_id, status) = match entry.outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure => (2, "Failure"),
        Outcome::Error => {
            // OCSF has no separate "error" status: the call failed either way. The entry's own
            // word stays visible so a 5xx is not confused with a refusal.
            unmapped.insert("outcome".into(), Value::from(entry.outcome.as_str()));
            (2, "Failure")
        }
        Outcome::Unknown => (0, "Unknown"),
    };

    let mut event = Map::new();
    event.insert("class_uid".into(), Value::from(CLASS_UID));
    event.insert("class_name".into(), Value::from("API Activity"));
    event.insert("category_uid".into(), Value::from(CATEGORY_UID));
    event.insert("category_name".into(), Value::from("Application Activity"));
    event.insert("activity_id".into(), Value::from(activity.id()));
    event.insert("activity_name".into(), Value::from(activity.label()));
    event.insert(
        "type_uid".into(),
        Value::from(CLASS_UID * 100 + activity.id()),
    );
    event.insert(
        "type_name".into(),
        Value::from(format!("API Activity: {}", activity.label())),
    );
    event.insert(
        "time".into(),
        Value::from(entry.created_at.timestamp_millis()),
    );
    event.insert("severity_id".into(), Value::from(1));
    event.insert("severity".into(), Value::from("Informational"));
    event.insert("status_id".into(), Value::from(status_id));
    event.insert("status".into(), Value::from(status));
    if let Some(code) = entry.status {
        event.insert("status_code".into(), Value::from(code.to_string()));
    }
    event.insert("actor".into(), actor(entry, &mut unmapped));
    event.insert("src_endpoint".into(), src_endpoint(entry, &mut unmapped));
    if let Some(request) = http_request(entry, &mut unmapped) {
        event.insert("http_request".into(), request);
    }
    event.insert("api".into(), json!({ "operation": entry.action }));
    match (&entry.resource_id, &entry.resource_type) {
        (Some(uid), resource_type) => {
            let mut resource = Map::new();
            resource.insert("uid".into(), Value::from(uid.as_str()));
            if let Some(resource_type) = resource_type {
                resource.insert("type".into(), Value::from(resource_type.as_str()));
            }
            event.insert("resources".into(), Value::Array(vec![resource.into()]));
        }
        // The schema wants a resource's uid or name; a type alone identifies nothing.
        (None, Some(resource_type)) => {
            unmapped.insert("resourceType".into(), Value::from(resource_type.as_str()));
        }
        (None, None) => {}
    }
    event.insert(
        "metadata".into(),
        json!({
            "version": OCSF_SCHEMA_VERSION,
            "product": {
                "name": "auditgate",
                "vendor_name": "auditgate",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": entry.id,
            "log_name": entry.log_id,
            "sequence": entry.seq,
        }),
    );

    let mut optional = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            unmapped.insert(key.into(), value);
        }
    };
    optional("tenant", entry.tenant.clone().map(Value::from));
    optional("route", entry.route.clone().map(Value::from));
    optional("rule", entry.rule.clone().map(Value::from));
    optional(
        "durationMs",
        entry
            .duration_us
            .map(|us| Value::from((us as f64) / 1000.0)),
    );
    optional("error", entry.error.clone().map(Value::from));
    optional("actorSource", entry.actor_source.clone().map(Value::from));
    unmapped.insert("actorVerified".into(), Value::from(entry.actor_verified));
    if !entry.metadata.is_empty() {
        unmapped.insert("metadata".into(), Value::Object(entry.metadata.clone()));
    }
    event.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(event)
}

/// `actor.user`. The schema requires an actor with a user id or name: an entry that names
/// nobody gets the user `anonymous` of type Unknown (0), and one that has only an e-mail
/// address uses it as the uid.
fn actor(entry: &AuditEntry, unmapped: &mut Map<String, Value>) -> Value {
    let mut user = Map::new();
    let email = entry.actor_email.as_deref();
    let valid_email = email.filter(|email| is_ocsf_email(email));
    if let (Some(email), None) = (email, valid_email) {
        unmapped.insert("actorEmail".into(), Value::from(email));
    }
    match (&entry.actor_id, &entry.actor_name, email) {
        (None, None, None) => {
            user.insert("name".into(), Value::from("anonymous"));
            user.insert("type_id".into(), Value::from(0));
            user.insert("type".into(), Value::from("Unknown"));
        }
        (id, name, _) => {
            let uid = id.as_deref().or(if name.is_none() { email } else { None });
            if let Some(uid) = uid {
                user.insert("uid".into(), Value::from(uid));
            }
            if let Some(name) = name {
                user.insert("name".into(), Value::from(name.as_str()));
            }
            if let Some(email) = valid_email {
                user.insert("email_addr".into(), Value::from(email));
            }
            user.insert("type_id".into(), Value::from(1));
            user.insert("type".into(), Value::from("User"));
        }
    }
    json!({ "user": user })
}

/// `src_endpoint.ip`, or the name `unknown` when the entry has no client address (the schema
/// requires the endpoint to say something).
fn src_endpoint(entry: &AuditEntry, unmapped: &mut Map<String, Value>) -> Value {
    match entry.ip.as_deref().map(|ip| (ip, ip.parse::<IpAddr>())) {
        Some((_, Ok(ip))) => json!({ "ip": ip.to_string() }),
        Some((raw, Err(_))) => {
            unmapped.insert("ip".into(), Value::from(raw));
            json!({ "name": "unknown" })
        }
        None => json!({ "name": "unknown" }),
    }
}

fn http_request(entry: &AuditEntry, unmapped: &mut Map<String, Value>) -> Option<Value> {
    let mut request = Map::new();
    if let Some(method) = &entry.method {
        let upper = method.to_ascii_uppercase();
        if OCSF_HTTP_METHODS.contains(&upper.as_str()) {
            request.insert("http_method".into(), Value::from(upper));
        } else {
            unmapped.insert("method".into(), Value::from(method.as_str()));
        }
    }
    if let Some(path) = &entry.path {
        request.insert("url".into(), json!({ "path": path }));
    }
    if let Some(user_agent) = &entry.user_agent {
        request.insert("user_agent".into(), Value::from(user_agent.as_str()));
    }
    if let Some(request_id) = &entry.request_id {
        request.insert("uid".into(), Value::from(request_id.as_str()));
    }
    (!request.is_empty()).then_some(Value::Object(request))
}

/// Whether `text` matches the schema's `email_t` pattern,
/// `^[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$` (ASCII only; `+-/` in the
/// class is the range `+ , - . /`).
fn is_ocsf_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+,-./=?^_`{|}~".contains(&b));
    let Some((first, rest)) = domain.split_once('.') else {
        return false;
    };
    let first_ok = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let rest_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    local_ok && first_ok && rest_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn full_entry() -> AuditEntry {
        let mut entry = AuditEntry::new("log-a", "user.deleted");
        entry.id = "01HZY0000000000000000000AA".into();
        entry.seq = 42;
        entry.created_at = chrono::Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date")
            + chrono::Duration::microseconds(123_456);
        entry.actor_id = Some("u-17".into());
        entry.actor_email = Some("ada@example.com".into());
        entry.actor_name = Some("Ada".into());
        entry.actor_source = Some("jwt".into());
        entry.actor_verified = true;
        entry.tenant = Some("acme".into());
        entry.resource_type = Some("user".into());
        entry.resource_id = Some("9".into());
        entry.outcome = Outcome::Failure;
        entry.status = Some(403);
        entry.method = Some("DELETE".into());
        entry.path = Some("/api/users/9".into());
        entry.route = Some("/api/users/{id}".into());
        entry.rule = Some("delete user".into());
        entry.ip = Some("203.0.113.7".into());
        entry.user_agent = Some("curl/8".into());
        entry.request_id = Some("req-1".into());
        entry.duration_us = Some(1500);
        entry
            .metadata
            .insert("reason".into(), Value::from("cleanup"));
        entry
    }

    #[test]
    fn a_full_entry_maps_field_by_field() {
        let event = to_ocsf(&full_entry());
        let expected = json!({
            "class_uid": 6003,
            "class_name": "API Activity",
            "category_uid": 6,
            "category_name": "Application Activity",
            "activity_id": 4,
            "activity_name": "Delete",
            "type_uid": 600304,
            "type_name": "API Activity: Delete",
            "time": 1767323045123_i64,
            "severity_id": 1,
            "severity": "Informational",
            "status_id": 2,
            "status": "Failure",
            "status_code": "403",
            "actor": {"user": {"uid": "u-17", "name": "Ada", "email_addr": "ada@example.com",
                               "type_id": 1, "type": "User"}},
            "src_endpoint": {"ip": "203.0.113.7"},
            "http_request": {"http_method": "DELETE", "url": {"path": "/api/users/9"},
                             "user_agent": "curl/8", "uid": "req-1"},
            "api": {"operation": "user.deleted"},
            "resources": [{"uid": "9", "type": "user"}],
            "metadata": {"version": "1.3.0",
                         "product": {"name": "auditgate", "vendor_name": "auditgate",
                                     "version": env!("CARGO_PKG_VERSION")},
                         "uid": "01HZY0000000000000000000AA", "log_name": "log-a", "sequence": 42},
            "unmapped": {"tenant": "acme", "route": "/api/users/{id}", "rule": "delete user",
                         "durationMs": 1.5, "actorSource": "jwt", "actorVerified": true,
                         "metadata": {"reason": "cleanup"}},
        });
        assert_eq!(event, expected);
    }

    #[test]
    fn the_activity_comes_from_the_override_then_the_action_then_the_method() {
        let mut entry = full_entry();
        assert_eq!(OcsfActivity::of_entry(&entry), OcsfActivity::Delete);
        entry
            .metadata
            .insert(ACTIVITY_METADATA_KEY.into(), Value::from("read"));
        assert_eq!(OcsfActivity::of_entry(&entry), OcsfActivity::Read);
        // A value no rule could have written is ignored rather than trusted.
        entry
            .metadata
            .insert(ACTIVITY_METADATA_KEY.into(), Value::from("Erase"));
        assert_eq!(OcsfActivity::of_entry(&entry), OcsfActivity::Delete);
        entry.metadata.clear();
        for (action, method, expected) in [
            ("invoice.Created", "POST", OcsfActivity::Create),
            ("report_viewed", "POST", OcsfActivity::Read),
            ("doc read", "DELETE", OcsfActivity::Read),
            ("password.changed", "POST", OcsfActivity::Update),
            ("member.removed", "POST", OcsfActivity::Delete),
            ("audit.pruned", "", OcsfActivity::Delete),
            ("http.patch", "PATCH", OcsfActivity::Update),
            ("http.post", "post", OcsfActivity::Create),
            ("key.rotated", "GET", OcsfActivity::Read),
            ("key.rotated", "PROPFIND", OcsfActivity::Other),
            ("user.deleted.", "GET", OcsfActivity::Delete),
            ("ünïcödé", "MKCOL", OcsfActivity::Other),
        ] {
            entry.action = action.into();
            entry.method = (!method.is_empty()).then(|| method.to_string());
            assert_eq!(
                OcsfActivity::of_entry(&entry),
                expected,
                "{action} {method}"
            );
            let event = to_ocsf(&entry);
            assert_eq!(event["activity_id"], expected.id());
            assert_eq!(event["type_uid"], 600300 + expected.id());
        }
        for name in ["create", "read", "update", "delete", "other"] {
            assert_eq!(
                OcsfActivity::parse(name).map(OcsfActivity::as_str),
                Some(name)
            );
        }
        assert_eq!(OcsfActivity::parse("Delete"), None);
    }

    #[test]
    fn status_follows_the_outcome() {
        let mut entry = full_entry();
        for (outcome, id, label) in [
            (Outcome::Success, 1, "Success"),
            (Outcome::Failure, 2, "Failure"),
            (Outcome::Error, 2, "Failure"),
            (Outcome::Unknown, 0, "Unknown"),
        ] {
            entry.outcome = outcome;
            let event = to_ocsf(&entry);
            assert_eq!(event["status_id"], id, "{outcome:?}");
            assert_eq!(event["status"], label, "{outcome:?}");
            let kept = event["unmapped"].get("outcome").cloned();
            assert_eq!(kept, (outcome == Outcome::Error).then(|| json!("error")));
        }
    }

    #[test]
    fn a_bare_entry_still_has_what_the_schema_requires() {
        let mut entry = AuditEntry::new("log-ü", "ünïcödé ✓");
        entry.seq = 1;
        let event = to_ocsf(&entry);
        assert_eq!(
            event["actor"],
            json!({"user": {"name": "anonymous", "type_id": 0, "type": "Unknown"}})
        );
        assert_eq!(event["src_endpoint"], json!({"name": "unknown"}));
        assert_eq!(event["status_id"], 0);
        assert_eq!(event["activity_id"], 99);
        assert_eq!(event["api"]["operation"], "ünïcödé ✓");
        assert_eq!(event["metadata"]["log_name"], "log-ü");
        assert!(event.get("http_request").is_none());
        assert!(event.get("resources").is_none());
        assert!(event.get("status_code").is_none());
        assert_eq!(event["unmapped"], json!({"actorVerified": false}));
    }

    #[test]
    fn values_the_schema_would_refuse_move_to_unmapped() {
        let mut entry = full_entry();
        entry.actor_id = None;
        entry.actor_name = None;
        entry.actor_email = Some("not an address ✉".into());
        entry.ip = Some("unix:/run/app.sock".into());
        entry.method = Some("PROPFIND".into());
        entry.resource_id = None;
        let event = to_ocsf(&entry);
        assert_eq!(
            event["actor"]["user"],
            json!({"uid": "not an address ✉", "type_id": 1, "type": "User"})
        );
        assert_eq!(event["src_endpoint"], json!({"name": "unknown"}));
        assert!(event["http_request"].get("http_method").is_none());
        assert!(event.get("resources").is_none());
        let unmapped = &event["unmapped"];
        assert_eq!(unmapped["actorEmail"], "not an address ✉");
        assert_eq!(unmapped["ip"], "unix:/run/app.sock");
        assert_eq!(unmapped["method"], "PROPFIND");
        assert_eq!(unmapped["resourceType"], "user");
        // An IPv6 client comes out in its canonical form.
        entry.ip = Some("2001:DB8::1".into());
        assert_eq!(to_ocsf(&entry)["src_endpoint"]["ip"], "2001:db8::1");
    }

    #[test]
    fn email_check_follows_the_schema_pattern() {
        for good in ["a@b.c", "first.last+tag@mail.example.co.uk", "x/y@d-1.io"] {
            assert!(is_ocsf_email(good), "{good}");
        }
        for bad in [
            "", "a", "@b.c", "a@", "a@b", "a@.c", "a@b.", "a b@c.d", "ä@b.c", "a@b@c.d",
        ] {
            assert!(!is_ocsf_email(bad), "{bad}");
        }
    }
}
