//! The sidecar's own life, recorded in its log: `audit.started` and `audit.stopped` (version and
//! configuration hash) and `audit.config_reloaded` (old and new hash, every key that changed and
//! which of them wait for a restart). An auditor reading the log sees when auditing itself
//! changed, for instance a redaction field removed, without access to the host.

use serde_json::{json, Map, Value};

use crate::entry::{AuditEntry, Outcome};

pub const STARTED: &str = "audit.started";
pub const STOPPED: &str = "audit.stopped";
pub const CONFIG_RELOADED: &str = "audit.config_reloaded";

/// An entry about the sidecar itself: the actor is auditgate, the resource its log.
pub fn entry(log_id: &str, action: &str, metadata: Map<String, Value>) -> AuditEntry {
    let mut entry = AuditEntry::new(log_id, action);
    entry.actor_id = Some("auditgate".to_string());
    entry.actor_source = Some("auditgate".to_string());
    entry.actor_verified = true;
    entry.resource_type = Some("log".to_string());
    entry.resource_id = Some(log_id.to_string());
    entry.outcome = Outcome::Success;
    entry.metadata = metadata;
    entry
}

/// `audit.started` or `audit.stopped`.
pub fn run_entry(log_id: &str, action: &str, config_sha256: &str) -> AuditEntry {
    let metadata = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "configSha256": config_sha256,
        "pid": std::process::id(),
    });
    entry(log_id, action, object(metadata))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Whether a changed key only takes effect after a restart: listeners, the app's address and
/// the proxy's connection settings, the store, the log's identity and signing key, and route
/// learning (`[discover]`, whose learner and save task start with the sidecar).
pub fn needs_restart(key: &str) -> bool {
    const RESTART: &[&str] = &[
        "proxy",
        "store",
        "discover",
        "admin.listen",
        "admin.trusted_proxies",
        "log.log_id",
        "log.origin",
        "log.signing_key",
        "log.public_tiles",
    ];
    RESTART
        .iter()
        .any(|prefix| key == *prefix || key.starts_with(&format!("{prefix}.")))
}

/// What a reload found changed between the configuration in force and the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigChanges {
    /// Every changed key, as `section.key`, or `rule #N` / `actor #N` for array sections.
    pub changed: Vec<String>,
    /// Items removed from and added to changed lists of strings (`redact.fields` and the like),
    /// so "a redaction field was removed" is in the record, not only "redact changed".
    pub details: Map<String, Value>,
}

impl ConfigChanges {
    /// The changed keys that take effect now.
    pub fn applied(&self) -> Vec<String> {
        self.changed
            .iter()
            .filter(|key| !needs_restart(key))
            .cloned()
            .collect()
    }

    /// The changed keys that keep their running value until a restart.
    pub fn restart_needed(&self) -> Vec<String> {
        self.changed
            .iter()
            .filter(|key| needs_restart(key))
            .cloned()
            .collect()
    }

    /// Whether any key of `section` changed (`stream`, `retention`, `log.publish_heads`).
    pub fn touches(&self, prefix: &str) -> bool {
        self.changed.iter().any(|key| {
            key == prefix
                || key.starts_with(&format!("{prefix}."))
                || key.starts_with(&format!("{prefix} #"))
        })
    }
}

/// Compares two configurations key by key.
pub fn diff(old: &toml::Table, new: &toml::Table) -> ConfigChanges {
    let mut changes = ConfigChanges::default();
    let mut sections: Vec<&String> = old.keys().chain(new.keys()).collect();
    sections.sort();
    sections.dedup();
    for section in sections {
        match (old.get(section), new.get(section)) {
            (Some(toml::Value::Array(before)), Some(toml::Value::Array(after)))
                if is_array_of_tables(before) || is_array_of_tables(after) =>
            {
                for index in 0..before.len().max(after.len()) {
                    if before.get(index) != after.get(index) {
                        changes.changed.push(format!("{section} #{}", index + 1));
                    }
                }
            }
            (before, after) if section_is_table(before, after) => {
                let empty = toml::Table::new();
                let before = before.and_then(toml::Value::as_table).unwrap_or(&empty);
                let after = after.and_then(toml::Value::as_table).unwrap_or(&empty);
                let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    let (was, is) = (before.get(key), after.get(key));
                    if was != is {
                        let name = format!("{section}.{key}");
                        if let Some(detail) = list_change(was, is) {
                            changes.details.insert(name.clone(), detail);
                        }
                        changes.changed.push(name);
                    }
                }
            }
            (before, after) => {
                if before != after {
                    changes.changed.push(section.clone());
                }
            }
        }
    }
    changes
}

fn is_array_of_tables(items: &[toml::Value]) -> bool {
    !items.is_empty() && items.iter().all(toml::Value::is_table)
}

fn section_is_table(before: Option<&toml::Value>, after: Option<&toml::Value>) -> bool {
    before.is_none_or(toml::Value::is_table) && after.is_none_or(toml::Value::is_table)
}

/// `{"removed": [...], "added": [...]}` for a list of strings that changed.
fn list_change(before: Option<&toml::Value>, after: Option<&toml::Value>) -> Option<Value> {
    let strings = |value: Option<&toml::Value>| -> Option<Vec<String>> {
        match value {
            None => Some(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect(),
            Some(_) => None,
        }
    };
    let (before, after) = (strings(before)?, strings(after)?);
    let removed: Vec<&String> = before.iter().filter(|item| !after.contains(item)).collect();
    let added: Vec<&String> = after.iter().filter(|item| !before.contains(item)).collect();
    Some(json!({"removed": removed, "added": added}))
}

/// The configuration now in force: the file's, with every key that needs a restart kept at its
/// running value, so the next reload still reports it as pending.
pub fn in_force(old: &toml::Table, new: &toml::Table, changes: &ConfigChanges) -> toml::Table {
    let mut table = new.clone();
    for key in changes.restart_needed() {
        match key.split_once('.') {
            Some((section, name)) => {
                let old_value = old
                    .get(section)
                    .and_then(toml::Value::as_table)
                    .and_then(|section| section.get(name))
                    .cloned();
                let section = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(section) = section.as_table_mut() {
                    match old_value {
                        Some(value) => {
                            section.insert(name.to_string(), value);
                        }
                        None => {
                            section.remove(name);
                        }
                    }
                }
            }
            None => match old.get(&key) {
                Some(value) => {
                    table.insert(key.clone(), value.clone());
                }
                None => {
                    table.remove(&key);
                }
            },
        }
    }
    table
}

/// `audit.config_reloaded`: what changed, what took effect, what waits for a restart.
pub fn reloaded_entry(
    log_id: &str,
    old_sha256: &str,
    new_sha256: &str,
    changes: &ConfigChanges,
) -> AuditEntry {
    let metadata = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "oldConfigSha256": old_sha256,
        "newConfigSha256": new_sha256,
        "changed": changes.changed,
        "applied": changes.applied(),
        "restartNeeded": changes.restart_needed(),
        "details": changes.details,
    });
    entry(log_id, CONFIG_RELOADED, object(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn changes_are_named_by_key_and_lists_say_what_was_removed() {
        let old = table(
            "[proxy]\nupstream = \"a:1\"\n[redact]\nfields = [\"password\", \"ssn\"]\n\
             [[rule]]\nname = \"one\"\n[[rule]]\nname = \"two\"\n",
        );
        let new = table(
            "[proxy]\nupstream = \"b:2\"\n[redact]\nfields = [\"password\"]\n\
             [retention]\nmax_age = \"30d\"\n[[rule]]\nname = \"one\"\n[[rule]]\nname = \"TWO\"\n\
             [[rule]]\nname = \"three\"\n",
        );
        let changes = diff(&old, &new);
        assert_eq!(
            changes.changed,
            [
                "proxy.upstream",
                "redact.fields",
                "retention.max_age",
                "rule #2",
                "rule #3"
            ]
        );
        assert_eq!(
            changes.details["redact.fields"],
            json!({"removed": ["ssn"], "added": []})
        );
        assert_eq!(changes.restart_needed(), ["proxy.upstream"]);
        assert_eq!(
            changes.applied(),
            ["redact.fields", "retention.max_age", "rule #2", "rule #3"]
        );
        assert!(changes.touches("retention") && changes.touches("rule"));
        assert!(!changes.touches("stream"));
        assert_eq!(diff(&old, &old), ConfigChanges::default());

        // The upstream stays as it runs, so the next reload still reports it.
        let running = in_force(&old, &new, &changes);
        assert_eq!(running["proxy"]["upstream"].as_str(), Some("a:1"));
        assert_eq!(running["redact"]["fields"], new["redact"]["fields"]);
        assert_eq!(diff(&running, &new).changed, ["proxy.upstream"]);
    }

    #[test]
    fn restart_keys_cover_listeners_store_and_the_log_identity() {
        for key in [
            "proxy.listen",
            "store.path",
            "admin.listen",
            "log.signing_key",
            "log.log_id",
            "log.origin",
            "discover.enabled",
        ] {
            assert!(needs_restart(key), "{key}");
        }
        for key in [
            "admin.tokens",
            "redact.fields",
            "log.publish_heads",
            "stream.ndjson",
            "rule #1",
        ] {
            assert!(!needs_restart(key), "{key}");
        }
    }
}
