//! `auditgate check`'s warnings: what a valid configuration may still get wrong. None stops the
//! sidecar; each is something an operator would want to hear about before traffic does.
//!
//! - placeholder values left in: an all-zero token or key hash, a secret variable still holding
//!   the example's "replace-with-..." text;
//! - a rule that can never match because an earlier one takes every request it would;
//! - an Express- or glob-style path (`/posts/:id`, `/items/*`), which a route template matches
//!   only literally;
//! - a value that looks like a source with a typo (`response.body/id`), which is recorded as that
//!   literal text.
//!
//! Warnings are only given when certain; the raw TOML (after `${VAR}` substitution) is read for
//! what the compiled configuration no longer shows.

use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use crate::base::units::format_duration as human_duration;
use crate::config::Config;
use crate::policy::rules::file::UnmatchedRecord;
use crate::policy::rules::RuleKind;
use crate::request::route::literal_only_path;
use crate::store::config::Durability;

/// One warning, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.location, self.message)
    }
}

fn warning(location: impl Into<String>, message: impl Into<String>) -> Warning {
    Warning {
        location: location.into(),
        message: message.into(),
    }
}

/// The warnings for a configuration `text` that loaded as `config`.
pub fn warnings(text: &str, config: &Config) -> Vec<Warning> {
    warnings_with_env(text, config, &crate::config::env::process_environment)
}

/// [`warnings`] with environment variables read through `lookup`.
pub fn warnings_with_env(
    text: &str,
    config: &Config,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<Warning> {
    let mut found = Vec::new();
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return found;
    };
    crate::config::env::substitute(&mut table, lookup, &mut Vec::new());
    placeholder_hashes(config, &table, &mut found);
    placeholder_secrets(&toml::Value::Table(table.clone()), "", lookup, &mut found);
    shadowed_rules(config, &mut found);
    if let Some(rules) = table.get("rule").and_then(toml::Value::as_array) {
        for (index, rule) in rules.iter().enumerate() {
            let location = crate::policy::rules::rule_location(
                index,
                rule.get("name").and_then(toml::Value::as_str),
            );
            if let Some(path) = rule.get("path").and_then(toml::Value::as_str) {
                if let Some(message) = literal_only_path(path) {
                    found.push(warning(format!("{location}.path"), message));
                }
            }
            mistyped_sources(rule, &location, &mut found);
        }
    }
    found
}

fn is_all_zero_hex(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty() && text.bytes().all(|byte| byte == b'0')
}

/// All-zero SHA-256 hashes: the example configs' stand-in for a real token or key hash.
fn placeholder_hashes(config: &Config, table: &toml::Table, found: &mut Vec<Warning>) {
    for (index, token) in config.admin.tokens.iter().enumerate() {
        if token.sha256 == [0u8; 32] {
            found.push(warning(
                format!("admin.tokens #{} ({:?}).sha256", index + 1, token.name),
                "all zeros is a placeholder: no token has this hash, so this entry lets nobody \
                 in; put the sha256 that `auditgate token` prints",
            ));
        }
    }
    let Some(actors) = table.get("actor").and_then(toml::Value::as_array) else {
        return;
    };
    for (index, actor) in actors.iter().enumerate() {
        let location = crate::identity::actor::actor_location(
            index,
            actor.get("from").and_then(toml::Value::as_str),
        );
        let keys = actor.get("keys").and_then(toml::Value::as_array);
        for (key_index, key) in keys.into_iter().flatten().enumerate() {
            if key
                .get("sha256")
                .and_then(toml::Value::as_str)
                .is_some_and(is_all_zero_hex)
            {
                found.push(warning(
                    format!("{location}.keys[{key_index}].sha256"),
                    "all zeros is a placeholder: no API key has this hash",
                ));
            }
        }
    }
}

/// Whether a secret's value is the text an example left to be replaced.
fn looks_like_placeholder(value: &str) -> bool {
    let lower = value.trim().to_ascii_lowercase();
    const MARKERS: &[&str] = &[
        "replace-with",
        "replace_with",
        "replace-me",
        "replaceme",
        "change-me",
        "changeme",
        "change_me",
        "placeholder",
        "your-secret",
    ];
    MARKERS.iter().any(|marker| lower.contains(marker))
        || (lower.starts_with('<') && lower.ends_with('>'))
        || (lower.len() >= 16 && is_all_zero_hex(&lower))
}

/// `*_env` keys whose variable holds a placeholder (the Kubernetes example's Secret, unedited).
fn placeholder_secrets(
    value: &toml::Value,
    location: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<Warning>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, item) in table {
                let here = if location.is_empty() {
                    key.clone()
                } else {
                    format!("{location}.{key}")
                };
                if let (true, Some(variable)) = (key.ends_with("_env"), item.as_str()) {
                    if lookup(variable).is_some_and(|secret| looks_like_placeholder(&secret)) {
                        found.push(warning(
                            here,
                            format!(
                                "environment variable `{variable}` holds a placeholder value; \
                                 set it to a real secret"
                            ),
                        ));
                    }
                    continue;
                }
                placeholder_secrets(item, &here, lookup, found);
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                placeholder_secrets(item, &format!("{location}[{index}]"), lookup, found);
            }
        }
        _ => {}
    }
}

/// Rules an earlier rule completely shadows (first match wins).
fn shadowed_rules(config: &Config, found: &mut Vec<Warning>) {
    let rules = config.policy.rules.rules();
    for (index, later) in rules.iter().enumerate() {
        if let Some((earlier_index, earlier)) = rules[..index]
            .iter()
            .enumerate()
            .find(|(_, earlier)| earlier.shadows(later))
        {
            found.push(warning(
                crate::policy::rules::rule_location(index, Some(&later.name)),
                format!(
                    "can never match: {} comes first and takes every request and status this \
                     rule would (first match wins); move this rule above it or narrow that one",
                    crate::policy::rules::rule_location(earlier_index, Some(&earlier.name))
                ),
            ));
        }
    }
}

/// Rule values that look like a source written wrong, which the template reads as literal text.
fn mistyped_sources(rule: &toml::Value, location: &str, found: &mut Vec<Warning>) {
    let mut values: Vec<(String, &str)> = Vec::new();
    for key in ["action", "tenant"] {
        if let Some(text) = rule.get(key).and_then(toml::Value::as_str) {
            values.push((key.to_string(), text));
        }
    }
    for table in ["resource", "metadata", "actor"] {
        if let Some(entries) = rule.get(table).and_then(toml::Value::as_table) {
            for (key, value) in entries {
                if let Some(text) = value.as_str() {
                    values.push((format!("{table}.{key}"), text));
                }
            }
        }
    }
    for (key, text) in values {
        if let Some(suggestion) = mistyped_source(text) {
            found.push(warning(
                format!("{location}.{key}"),
                format!(
                    "`{text}` looks like a value source but is recorded as this literal text; \
                     did you mean `{suggestion}`?"
                ),
            ));
        }
    }
}

/// The source `text` was probably meant to be, when it is a mistyped one.
fn mistyped_source(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    const VALID: &[&str] = &[
        "request.body:/",
        "response.body:/",
        "request.header:",
        "response.header:",
        "query:",
    ];
    if VALID.iter().any(|prefix| trimmed.starts_with(prefix)) {
        return None;
    }
    let separators: &[char] = &['/', '.', ':', '=', ' '];
    for side in ["request", "response"] {
        let Some(rest) = lower
            .strip_prefix(side)
            .and_then(|rest| rest.strip_prefix(['.', '_', '-', ':', '/']))
        else {
            continue;
        };
        // Keep the original spelling of the name or pointer that follows.
        let original = &trimmed[trimmed.len() - rest.len()..];
        if let Some(after) = rest.strip_prefix("body") {
            let pointer = original["body".len()..]
                .trim_start_matches(separators)
                .replace('.', "/");
            if after.is_empty() || after.starts_with(separators) {
                return Some(format!("{side}.body:/{pointer}"));
            }
        }
        for word in ["headers", "header"] {
            if let Some(after) = rest.strip_prefix(word) {
                let name = original[word.len()..].trim_start_matches(separators);
                if after.is_empty() || after.starts_with(separators) {
                    return Some(format!("{side}.header:{name}"));
                }
            }
        }
    }
    for wrong in ["query=", "query/", "query :"] {
        if let Some(name) = lower.strip_prefix(wrong) {
            let name = &trimmed[trimmed.len() - name.len()..];
            return Some(format!("query:{name}"));
        }
    }
    None
}

/// A human summary of a valid config, for `auditgate check`.
pub fn describe(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", path.display());
    let _ = writeln!(
        out,
        "  proxy {} -> {}   admin {}   store {} ({})",
        config.proxy.listen,
        config.proxy.upstream,
        config.admin.listen,
        crate::store::describe(&config.store),
        match config.store.durability {
            Durability::AfterResponse => "after-response",
            Durability::WriteAhead => "write-ahead",
        }
    );
    if let Some(database) = &config.store.postgres {
        let _ = writeln!(out, "  store TLS: {}", database.tls.describe());
    }
    let rules = config.policy.rules.rules();
    let _ = writeln!(
        out,
        "  {} rule{}:",
        rules.len(),
        if rules.len() == 1 { "" } else { "s" }
    );
    for (index, rule) in rules.iter().enumerate() {
        let what = match &rule.kind {
            RuleKind::Skip => "skip".to_string(),
            RuleKind::Record(_) => "record".to_string(),
        };
        let _ = writeln!(
            out,
            "    {:>3}. {:<28} {:<7} {:<12} {:<32} status {}",
            index + 1,
            rule.name,
            what,
            rule.methods_label(),
            rule.route().unwrap_or("(any path)"),
            rule.status
        );
    }
    for (index, source) in config.policy.actors.describe().iter().enumerate() {
        let _ = writeln!(out, "  actor #{}: {source}", index + 1);
    }
    let _ = writeln!(out, "  redaction: {}", config.policy.redact.describe());
    let unmatched = match config.policy.rules.unmatched {
        UnmatchedRecord::None => "not recorded",
        UnmatchedRecord::Mutations => "mutations recorded as http.<method>",
        UnmatchedRecord::All => "all recorded as http.<method>",
    };
    let _ = writeln!(out, "  unmatched traffic: {unmatched}");
    let _ = writeln!(out, "  {}", describe_log(config));
    for output in &config.otlp {
        let _ = writeln!(out, "  {}", output.describe());
    }
    out
}

/// One line on tree heads and retention, for `auditgate check`.
fn describe_log(config: &Config) -> String {
    let heads = match &config.log.signer {
        Some(signer) => {
            let targets: Vec<String> = config
                .log
                .publish_heads
                .iter()
                .map(ToString::to_string)
                .collect();
            format!(
                "tree heads signed (key {}) every {} entries or {}, published to {}",
                signer.key_id(),
                config.log.sign_every,
                human_duration(config.log.sign_interval),
                if targets.is_empty() {
                    "the store only".to_string()
                } else {
                    targets.join(", ")
                }
            )
        }
        None => "tree heads NOT signed (no [log] signing_key)".to_string(),
    };
    let retention = match (config.retention.max_age, config.retention.rules.len()) {
        (None, 0) => "entries kept forever".to_string(),
        (Some(age), rules) => format!(
            "entries pruned after {} ({rules} prefix rules)",
            human_duration(age)
        ),
        (None, rules) => format!("entries pruned by {rules} prefix rules only"),
    };
    format!("{heads}; {retention}")
}

/// `auditgate check`: validates each file (default: `AUDITGATE_CONFIG`, or auditgate.toml here),
/// prints its rules and warnings, and with `coverage` the OpenAPI operations no rule records.
pub fn check_files(
    mut paths: Vec<std::path::PathBuf>,
    coverage: Option<std::path::PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    if paths.is_empty() {
        // Like `run`: the file `AUDITGATE_CONFIG` names, or auditgate.toml here.
        paths.push(
            std::env::var_os("AUDITGATE_CONFIG")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "auditgate.toml".into()),
        );
    }
    let mut valid = true;
    for path in &paths {
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(errors) => {
                valid = false;
                eprint!("{errors}");
                continue;
            }
        };
        crate::commands::cli::print_stdout(&describe(path, &config))?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for warning in warnings(&text, &config) {
            eprintln!("{}: warning: {warning}", path.display());
        }
        if let Some(spec) = &coverage {
            match crate::commands::openapi_rules::run_coverage(spec, &config) {
                Ok(report) => crate::commands::cli::print_stdout(&report)?,
                Err(error) => {
                    eprintln!("auditgate check --coverage: {error}");
                    return Ok(ExitCode::from(super::EXIT_USAGE));
                }
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_USAGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_sources_are_recognized_and_valid_ones_and_literals_are_not() {
        assert_eq!(
            mistyped_source("response.body/id").as_deref(),
            Some("response.body:/id")
        );
        assert_eq!(
            mistyped_source("request.body.user.email").as_deref(),
            Some("request.body:/user/email")
        );
        assert_eq!(
            mistyped_source("request.header.X-Tenant").as_deref(),
            Some("request.header:X-Tenant")
        );
        assert_eq!(
            mistyped_source("request.headers:X-Tenant").as_deref(),
            Some("request.header:X-Tenant")
        );
        assert_eq!(
            mistyped_source("Response.Header:Location").as_deref(),
            Some("response.header:Location")
        );
        assert_eq!(mistyped_source("query=page").as_deref(), Some("query:page"));
        for fine in [
            "response.body:/id",
            "request.header:X-Tenant",
            "query:page",
            "user.deleted",
            "query.executed",
            "request.received",
            "response.bodyguard",
            "{kind}.updated",
        ] {
            assert_eq!(mistyped_source(fine), None, "{fine}");
        }
    }

    #[test]
    fn express_and_glob_paths_are_named() {
        assert!(literal_only_path("/posts/:id")
            .expect("express")
            .contains("write `{id}`"));
        assert!(literal_only_path("/items/*")
            .expect("glob")
            .contains("{*rest}"));
        assert_eq!(literal_only_path("/files/{*rest}"), None);
        assert_eq!(literal_only_path("/api/users/{id}"), None);
        // A colon inside a segment (`/v1:batch`) is ordinary text in many APIs.
        assert_eq!(literal_only_path("/v1/items:batch"), None);
    }

    #[test]
    fn placeholders_are_recognized() {
        assert!(looks_like_placeholder(
            "replace-with-32-random-bytes-of-hex"
        ));
        assert!(looks_like_placeholder("<your key>"));
        assert!(looks_like_placeholder(&"0".repeat(64)));
        assert!(!looks_like_placeholder("f3a9c0e1d2b4a6978877665544332211"));
    }

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new(".")).expect("valid")
    }

    #[test]
    fn a_rule_is_reported_shadowed_only_when_it_certainly_is() {
        let text = r#"
[proxy]
upstream = "127.0.0.1:3000"
[[rule]]
name = "any user change"
method = ["PUT", "PATCH", "DELETE"]
path = "/api/users/{id}"
action = "user.changed"
[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{id}"
status = "2xx"
action = "user.deleted"
[[rule]]
name = "posts with a header"
path = "/api/posts"
headers = { x-kind = "draft" }
action = "draft.touched"
[[rule]]
name = "posts"
path = "/api/posts"
action = "post.touched"
[[rule]]
name = "failed logins"
method = "POST"
path = "/login"
status = [401, 403]
action = "auth.failed"
[[rule]]
name = "logins"
method = "POST"
path = "/login"
status = "4xx"
action = "auth.refused"
"#;
        let found = warnings_with_env(text, &config(text), &|_| None);
        let shadowed: Vec<&str> = found
            .iter()
            .filter(|warning| warning.message.contains("can never match"))
            .map(|warning| warning.location.as_str())
            .collect();
        assert_eq!(shadowed, ["rule #2 (\"delete user\")"], "{found:#?}");
    }

    #[test]
    fn placeholder_hashes_are_named() {
        let text = format!(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[admin]\n[[admin.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            "0".repeat(64)
        );
        let found = warnings_with_env(&text, &config(&text), &|_| None);
        let locations: Vec<&str> = found.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(
            locations,
            ["admin.tokens #1 (\"ops\").sha256"],
            "{found:#?}"
        );
    }
}
