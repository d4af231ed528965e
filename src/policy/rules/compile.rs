//! Turning the `[[rule]]` tables into compiled rules: each concern of a rule (method, path,
//! request conditions, status, what it records, durability) is checked and compiled on its own,
//! and every error is collected with the key it is about so the file's author sees them all at
//! once.

use std::collections::BTreeMap;

use http::{HeaderName, Method};
use regex::{Regex, RegexSet};

use super::file::{RuleFile, UnmatchedRecord};
use super::{
    rule_location, HostCondition, PathMatcher, RecordSpec, Rule, RuleKind, RuleSet,
    StatusCondition, ValueCondition,
};
use crate::base::ConfigError;
use crate::policy::template::{Needs, Part, Template};
use crate::request::route::{compile_route_with, RouteSemantics};
use crate::store::config::StoreFailure;

impl RuleSet {
    /// Compiles every rule with the default route semantics, collecting every error with the
    /// rule it is in.
    pub fn compile(
        files: &[RuleFile],
        unmatched: UnmatchedRecord,
    ) -> Result<RuleSet, Vec<ConfigError>> {
        let indexed: Vec<(usize, &RuleFile)> = files.iter().enumerate().collect();
        RuleSet::compile_indexed(&indexed, unmatched, RouteSemantics::default())
    }

    /// As [`RuleSet::compile`], for rules that keep their position in the file (some of the
    /// file's rules may have failed to parse and be missing here), with the configured route
    /// semantics (`[proxy] route_case` and `trailing_slash`) as every rule's default.
    pub fn compile_indexed(
        files: &[(usize, &RuleFile)],
        unmatched: UnmatchedRecord,
        semantics: RouteSemantics,
    ) -> Result<RuleSet, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
        for &(index, file) in files {
            let location = rule_location(index, file.name.as_deref());
            if let Some(name) = &file.name {
                if let Some(previous) = seen_names.insert(name.clone(), index) {
                    errors.push(ConfigError::new(
                        &location,
                        format!("the name is also used by rule #{}; names must be unique so entries say which rule matched", previous + 1),
                    ));
                }
            }
            match compile_rule(index, file, semantics) {
                Ok(rule) => rules.push(rule),
                Err(messages) => {
                    errors.extend(messages.into_iter().map(|(key, message)| {
                        ConfigError::new(&format!("{location}.{key}"), message)
                    }))
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut patterns = Vec::new();
        let mut path_rule = Vec::new();
        let mut pathless = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            match &rule.path {
                Some(path) => {
                    patterns.push(path.regex.as_str().to_string());
                    path_rule.push(index);
                }
                None => pathless.push(index),
            }
        }
        let path_set = RegexSet::new(&patterns).map_err(|error| {
            vec![ConfigError::new(
                "rule",
                format!("the rules' paths together are too large to compile: {error}"),
            )]
        })?;
        Ok(RuleSet {
            rules,
            path_set,
            path_rule,
            pathless,
            unmatched,
        })
    }
}

type KeyedErrors = Vec<(&'static str, String)>;

fn compile_rule(
    index: usize,
    file: &RuleFile,
    default_semantics: RouteSemantics,
) -> Result<Rule, KeyedErrors> {
    let mut errors: KeyedErrors = Vec::new();
    let semantics = default_semantics
        .with(file.route_case.as_deref(), file.trailing_slash.as_deref())
        .unwrap_or_else(|messages| {
            errors.extend(messages);
            default_semantics
        });
    if file.path.is_none() && (file.route_case.is_some() || file.trailing_slash.is_some()) {
        errors.push((
            "route_case",
            "route_case and trailing_slash apply to a path template; a path_regex says itself how it matches (e.g. `(?i)`)".to_string(),
        ));
    }
    let name = file
        .name
        .clone()
        .unwrap_or_else(|| format!("rule #{}", index + 1));

    let methods = match &file.method {
        None => None,
        Some(list) => {
            let mut methods = Vec::new();
            for text in list.items() {
                if text == "*" || text.eq_ignore_ascii_case("any") {
                    methods.clear();
                    break;
                }
                match Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => errors.push(("method", format!("`{text}` is not an HTTP method"))),
                }
            }
            if methods.is_empty() {
                None
            } else {
                Some(methods)
            }
        }
    };

    let mut params = Vec::new();
    let path = match (&file.path, &file.path_regex) {
        (Some(_), Some(_)) => {
            errors.push((
                "path",
                "give either path or path_regex, not both".to_string(),
            ));
            None
        }
        (Some(template), None) => match compile_route_with(template, semantics) {
            Ok((pattern, names)) => match Regex::new(&pattern) {
                Ok(regex) => {
                    params = names;
                    Some(PathMatcher {
                        regex,
                        route: template.clone(),
                        template: true,
                    })
                }
                Err(error) => {
                    errors.push(("path", format!("`{template}` did not compile: {error}")));
                    None
                }
            },
            Err(message) => {
                errors.push(("path", message));
                None
            }
        },
        (None, Some(pattern)) => {
            let anchored = if pattern.starts_with('^') {
                pattern.clone()
            } else {
                format!("^(?:{pattern})")
            };
            match Regex::new(&anchored) {
                Ok(regex) => {
                    params = regex
                        .capture_names()
                        .flatten()
                        .map(str::to_string)
                        .collect();
                    Some(PathMatcher {
                        regex,
                        route: pattern.clone(),
                        template: false,
                    })
                }
                Err(error) => {
                    errors.push((
                        "path_regex",
                        format!("`{pattern}` is not a valid regex: {error}"),
                    ));
                    None
                }
            }
        }
        (None, None) => None,
    };

    let host = file
        .host
        .as_ref()
        .map(|host| match host.strip_prefix("*.") {
            Some(suffix) => HostCondition::Suffix(format!(".{suffix}")),
            None => HostCondition::Exact(host.clone()),
        });

    let mut headers = Vec::new();
    for (header, condition) in &file.headers {
        match (
            HeaderName::from_bytes(header.as_bytes()),
            ValueCondition::parse(condition),
        ) {
            (Ok(header), Ok(condition)) => headers.push((header, condition)),
            (Err(_), _) => errors.push(("headers", format!("`{header}` is not a header name"))),
            (_, Err(message)) => errors.push(("headers", message)),
        }
    }
    let mut query = Vec::new();
    for (param, condition) in &file.query {
        match ValueCondition::parse(condition) {
            Ok(condition) => query.push((param.clone(), condition)),
            Err(message) => errors.push(("query", message)),
        }
    }

    let status = match &file.status {
        None => StatusCondition::Any,
        Some(value) => StatusCondition::parse(value).unwrap_or_else(|message| {
            errors.push(("status", message));
            StatusCondition::Any
        }),
    };

    let ocsf_activity = match file.ocsf_activity.as_deref() {
        None => None,
        Some(text) => {
            let parsed = crate::entry::ocsf::OcsfActivity::parse(text);
            if parsed.is_none() {
                errors.push((
                    "ocsf_activity",
                    format!(
                        "`{text}` is not one of {}",
                        crate::entry::ocsf::OcsfActivity::NAMES
                    ),
                ));
            }
            parsed
        }
    };

    let mut template = |key: &'static str, text: &str| -> Option<Template> {
        match Template::parse(text, &params) {
            Ok(template) => Some(template),
            Err(message) => {
                errors.push((key, message));
                None
            }
        }
    };

    let kind = if file.skip {
        RuleKind::Skip
    } else {
        let action = match &file.action {
            Some(text) => template("action", text),
            None => None,
        };
        let resource_type = file
            .resource
            .as_ref()
            .and_then(|resource| resource.r#type.as_deref())
            .and_then(|text| template("resource.type", text));
        let resource_id = file
            .resource
            .as_ref()
            .and_then(|resource| resource.id.as_deref())
            .and_then(|text| template("resource.id", text));
        let tenant = file
            .tenant
            .as_deref()
            .and_then(|text| template("tenant", text));
        let mut metadata = Vec::new();
        for (key, text) in &file.metadata {
            if let Some(value) = template("metadata", text) {
                metadata.push((key.clone(), value));
            }
        }
        let actor = file.actor.as_ref();
        let actor_id = actor
            .and_then(|actor| actor.id.as_deref())
            .and_then(|text| template("actor.id", text));
        let actor_email = actor
            .and_then(|actor| actor.email.as_deref())
            .and_then(|text| template("actor.email", text));
        let actor_name = actor
            .and_then(|actor| actor.name.as_deref())
            .and_then(|text| template("actor.name", text));
        if let Some(Template::Parts(parts)) = &action {
            // Text before the first hole that already claims auditgate's namespace; an action
            // that only renders into it at request time is renamed then (see `proxy.rs`).
            if let Some(Part::Literal(start)) = parts.first() {
                if crate::entry::is_reserved_action(start) {
                    errors.push((
                        "action",
                        format!(
                            "`{}` starts with `{}`, which is reserved for auditgate's own entries (audit.query, audit.pruned, ...); name the app's action otherwise",
                            file.action.as_deref().unwrap_or_default(),
                            crate::entry::RESERVED_ACTION_PREFIX
                        ),
                    ));
                }
            }
        }
        if file.action.is_none() {
            errors.push((
                "action",
                "a rule needs an action (or skip = true)".to_string(),
            ));
        }
        match action {
            Some(action) => RuleKind::Record(Box::new(RecordSpec {
                action,
                resource_type,
                resource_id,
                tenant,
                metadata,
                actor_id,
                actor_email,
                actor_name,
                ocsf_activity,
            })),
            None => RuleKind::Skip,
        }
    };
    if file.skip && (file.action.is_some() || file.resource.is_some() || !file.metadata.is_empty())
    {
        errors.push((
            "skip",
            "a skip rule records nothing, so action, resource and metadata make no sense on it"
                .to_string(),
        ));
    }
    if file.skip && file.ocsf_activity.is_some() {
        errors.push((
            "ocsf_activity",
            "a skip rule records nothing, so it has no OCSF activity".to_string(),
        ));
    }

    let on_store_failure = match file.on_store_failure.as_deref() {
        None => None,
        Some(text) => {
            let parsed = StoreFailure::parse(text);
            if parsed.is_none() {
                errors.push((
                    "on_store_failure",
                    format!("`{text}` is not one of reject, forward"),
                ));
            }
            parsed
        }
    };
    if file.skip && (file.write_ahead.is_some() || file.on_store_failure.is_some()) {
        errors.push((
            "write_ahead",
            "a skip rule records nothing, so it has nothing to write ahead".to_string(),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let needs = match &kind {
        RuleKind::Skip => Needs::default(),
        RuleKind::Record(spec) => {
            let mut needs = spec.action.needs();
            let optional = [
                &spec.resource_type,
                &spec.resource_id,
                &spec.tenant,
                &spec.actor_id,
                &spec.actor_email,
                &spec.actor_name,
            ];
            for template in optional.into_iter().flatten() {
                needs = needs.union(template.needs());
            }
            for (_, template) in &spec.metadata {
                needs = needs.union(template.needs());
            }
            needs
        }
    };
    Ok(Rule {
        name,
        methods,
        path,
        host,
        headers,
        query,
        status,
        kind,
        needs,
        semantics,
        write_ahead: file.write_ahead,
        on_store_failure,
    })
}
