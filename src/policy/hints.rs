//! Response hints: what the app itself says about an exchange.
//!
//! An app that can be changed a little (or already knows things no rule can see, like the old
//! value of a role) may add `Audit-*` headers to its responses. When `[hints] enabled = true`,
//! auditgate reads them, merges them into the entry for that request, and strips them before the
//! response reaches the client. Hints are read only from the app's response, never from the
//! client's request. A response carrying `Audit-Action` is recorded even when no rule matched.
//! Every field a hint provided is listed under the entry's `metadata._app`, and a hint that was
//! refused (oversized or invalid `Audit-Metadata`, an `Audit-Action` that is not an action name
//! or is in auditgate's own `audit.` namespace) under `metadata._hintErrors` — the request itself
//! is never failed by a bad hint.

use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::base::units::parse_size;
use crate::base::ConfigError;
use crate::entry::AuditEntry;

static AUDIT_ACTION: HeaderName = HeaderName::from_static("audit-action");
static AUDIT_RESOURCE_TYPE: HeaderName = HeaderName::from_static("audit-resource-type");
static AUDIT_RESOURCE_ID: HeaderName = HeaderName::from_static("audit-resource-id");
static AUDIT_ACTOR_ID: HeaderName = HeaderName::from_static("audit-actor-id");
static AUDIT_ACTOR_EMAIL: HeaderName = HeaderName::from_static("audit-actor-email");
static AUDIT_METADATA: HeaderName = HeaderName::from_static("audit-metadata");

/// Longest accepted text hint (action, resource, actor); longer ones are refused.
const MAX_TEXT_HINT: usize = 512;

/// `[hints]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintsFile {
    /// Read `Audit-*` response headers from the app (default false).
    pub enabled: Option<bool>,
    /// Whether hints replace what a rule produced (default true); false only fills gaps.
    pub r#override: Option<bool>,
    /// Largest accepted `Audit-Metadata` header (default 8KiB).
    pub max_metadata: Option<String>,
}

/// The validated `[hints]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintsConfig {
    pub enabled: bool,
    pub override_rules: bool,
    pub max_metadata: usize,
}

impl Default for HintsConfig {
    fn default() -> Self {
        HintsConfig {
            enabled: false,
            override_rules: true,
            max_metadata: 8 * 1024,
        }
    }
}

impl HintsConfig {
    pub fn from_file(file: &HintsFile, errors: &mut Vec<ConfigError>) -> HintsConfig {
        let mut config = HintsConfig {
            enabled: file.enabled.unwrap_or(false),
            override_rules: file.r#override.unwrap_or(true),
            ..HintsConfig::default()
        };
        if let Some(text) = &file.max_metadata {
            match parse_size(text) {
                Ok(size) if (1..=1024 * 1024).contains(&size) => {
                    config.max_metadata = size as usize
                }
                Ok(_) => errors.push(ConfigError::new(
                    "hints.max_metadata",
                    "must be between 1B and 1MiB",
                )),
                Err(message) => errors.push(ConfigError::new("hints.max_metadata", message)),
            }
        }
        config
    }
}

/// The hints of one response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hints {
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// Hints that were refused, by name, with the reason.
    pub errors: Map<String, Value>,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        self.action.is_none()
            && self.resource_type.is_none()
            && self.resource_id.is_none()
            && self.actor_id.is_none()
            && self.actor_email.is_none()
            && self.metadata.is_none()
            && self.errors.is_empty()
    }
}

/// Reads and removes the `Audit-*` headers of a response. Cheap when there are none.
pub fn take(headers: &mut HeaderMap, config: &HintsConfig) -> Option<Hints> {
    let mut hints = Hints::default();
    let mut text =
        |name: &HeaderName, key: &str, errors: &mut Map<String, Value>| -> Option<String> {
            let value = headers.remove(name)?;
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
            if value.is_empty() {
                errors.insert(key.to_string(), Value::from("empty"));
                None
            } else if value.len() > MAX_TEXT_HINT {
                errors.insert(
                    key.to_string(),
                    Value::from(format!("longer than {MAX_TEXT_HINT} bytes")),
                );
                None
            } else {
                Some(value)
            }
        };
    let mut errors = Map::new();
    hints.action = text(&AUDIT_ACTION, "action", &mut errors);
    hints.resource_type = text(&AUDIT_RESOURCE_TYPE, "resourceType", &mut errors);
    hints.resource_id = text(&AUDIT_RESOURCE_ID, "resourceId", &mut errors);
    hints.actor_id = text(&AUDIT_ACTOR_ID, "actorId", &mut errors);
    hints.actor_email = text(&AUDIT_ACTOR_EMAIL, "actorEmail", &mut errors);
    if let Some(value) = headers.remove(&AUDIT_METADATA) {
        let bytes = value.as_bytes();
        if bytes.len() > config.max_metadata {
            errors.insert(
                "metadata".into(),
                Value::from(format!(
                    "{} bytes, over the {}-byte limit",
                    bytes.len(),
                    config.max_metadata
                )),
            );
        } else {
            match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(object)) => hints.metadata = Some(object),
                Ok(_) => {
                    errors.insert("metadata".into(), Value::from("not a JSON object"));
                }
                Err(_) => {
                    errors.insert("metadata".into(), Value::from("not valid JSON"));
                }
            }
        }
    }
    if let Some(action) = &hints.action {
        if !valid_action(action) {
            errors.insert(
                "action".into(),
                Value::from("not an action name (letters, digits, . _ - : /)"),
            );
            hints.action = None;
        } else if crate::entry::is_reserved_action(action) {
            errors.insert(
                "action".into(),
                Value::from(format!(
                    "`{action}`: actions starting with audit. are reserved for auditgate's own entries"
                )),
            );
            hints.action = None;
        }
    }
    hints.errors = errors;
    (!hints.is_empty()).then_some(hints)
}

/// Action names: printable, no spaces or control characters, reasonable length.
pub fn valid_action(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= 128
        && action
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

/// Merges hints into an entry. With `override_rules`, a hint replaces what a rule produced;
/// otherwise it only fills fields the rule left empty.
pub fn apply(entry: &mut AuditEntry, hints: Hints, override_rules: bool, from_rule: bool) {
    let mut provided = Vec::new();
    let replace = override_rules || !from_rule;
    if let Some(action) = hints.action {
        if replace || entry.action.is_empty() {
            entry.action = action;
            provided.push("action");
        }
    }
    let mut set = |field: &mut Option<String>, value: Option<String>, name: &'static str| {
        if let Some(value) = value {
            if replace || field.is_none() {
                *field = Some(value);
                provided.push(name);
            }
        }
    };
    set(
        &mut entry.resource_type,
        hints.resource_type,
        "resourceType",
    );
    set(&mut entry.resource_id, hints.resource_id, "resourceId");
    let actor_before = (entry.actor_id.clone(), entry.actor_email.clone());
    set(&mut entry.actor_id, hints.actor_id, "actorId");
    set(&mut entry.actor_email, hints.actor_email, "actorEmail");
    if (entry.actor_id.clone(), entry.actor_email.clone()) != actor_before {
        // The app vouches for the identity; say that it was the app.
        entry.actor_source = Some("app".to_string());
        entry.actor_verified = true;
    }
    if let Some(metadata) = hints.metadata {
        for (key, value) in metadata {
            if key.starts_with('_') {
                continue;
            }
            if replace || !entry.metadata.contains_key(&key) {
                entry.metadata.insert(key, value);
                provided.push("metadata");
            }
        }
    }
    provided.dedup();
    if !provided.is_empty() {
        entry
            .metadata
            .insert("_app".to_string(), Value::from(provided));
    }
    if !hints.errors.is_empty() {
        entry
            .metadata
            .insert("_hintErrors".to_string(), Value::Object(hints.errors));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn hints_are_read_and_stripped() {
        let mut response = headers(&[
            ("audit-action", "billing.plan_changed"),
            ("audit-resource-type", "workspace"),
            ("audit-metadata", r#"{"oldPlan":"free","newPlan":"pro"}"#),
            ("content-type", "application/json"),
        ]);
        let hints = take(&mut response, &HintsConfig::default()).expect("hints");
        assert_eq!(response.len(), 1, "only the app's own header is left");
        assert_eq!(hints.action.as_deref(), Some("billing.plan_changed"));
        let mut entry = AuditEntry::new("t", "http.post");
        apply(&mut entry, hints, true, false);
        assert_eq!(entry.action, "billing.plan_changed");
        assert_eq!(entry.metadata["newPlan"], "pro");
        assert_eq!(
            entry.metadata["_app"],
            serde_json::json!(["action", "resourceType", "metadata"])
        );
    }

    #[test]
    fn bad_metadata_is_refused_not_fatal() {
        let config = HintsConfig {
            max_metadata: 16,
            ..HintsConfig::default()
        };
        let mut response = headers(&[("audit-metadata", r#"{"a":"a long value here"}"#)]);
        let hints = take(&mut response, &config).expect("hints");
        assert!(hints.metadata.is_none());
        assert!(hints.errors["metadata"]
            .as_str()
            .unwrap_or("")
            .contains("limit"));
        let mut response = headers(&[("audit-metadata", "[1,2]"), ("audit-action", "has space")]);
        let hints = take(&mut response, &HintsConfig::default()).expect("hints");
        assert_eq!(hints.errors["metadata"], "not a JSON object");
        assert!(hints.errors.contains_key("action"));
        let mut response = headers(&[("audit-action", "Audit.pruned")]);
        let hints = take(&mut response, &HintsConfig::default()).expect("hints");
        assert_eq!(hints.action, None);
        assert!(
            hints.errors["action"]
                .as_str()
                .unwrap_or("")
                .contains("reserved for auditgate's own entries"),
            "{:?}",
            hints.errors
        );
    }

    #[test]
    fn without_override_hints_only_fill_gaps() {
        let mut entry = AuditEntry::new("t", "user.updated");
        entry.resource_id = Some("7".into());
        let hints = Hints {
            action: Some("user.renamed".into()),
            resource_id: Some("8".into()),
            resource_type: Some("user".into()),
            ..Hints::default()
        };
        apply(&mut entry, hints, false, true);
        assert_eq!(entry.action, "user.updated");
        assert_eq!(entry.resource_id.as_deref(), Some("7"));
        assert_eq!(entry.resource_type.as_deref(), Some("user"));
    }
}
