//! Turning the `[[rule]]` tables into compiled rules: each concern of a rule (method, path,
//! request conditions, status, what it records, durability) is checked and compiled on its own,
//! and every error is collected with the key it is about so the file's author sees them all at
//! once.

use std::collections::BTreeMap;

use http::{HeaderName, Method};
use regex::{Regex, RegexSet};

use super::file::{OneOrMany, RuleActorFile, RuleFile, UnmatchedRecord};
use super::{
    rule_location, HostCondition, PathMatcher, RecordSpec, Rule, RuleKind, RuleSet,
    StatusCondition, ValueCondition,
};
use crate::base::ConfigError;
use crate::entry::ocsf::OcsfActivity;
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

/// A rule's errors, each with the key it is about (`method`, `resource.id`, ...).
type KeyedErrors = Vec<(&'static str, String)>;

/// Compiles one rule. Every concern is compiled even when an earlier one failed, so that one
/// run of `auditgate check` lists every mistake in the rule, in the order of the keys below.
fn compile_rule(
    index: usize,
    file: &RuleFile,
    default_semantics: RouteSemantics,
) -> Result<Rule, KeyedErrors> {
    let mut errors: KeyedErrors = Vec::new();
    let semantics = route_semantics(file, default_semantics, &mut errors);
    let name = file
        .name
        .clone()
        .unwrap_or_else(|| format!("rule #{}", index + 1));
    let methods = methods(file.method.as_ref().map(OneOrMany::items), &mut errors);
    let (path, params) = path_matcher(file, semantics, &mut errors);
    let host = host_condition(file.host.as_deref());
    let headers = header_conditions(&file.headers, &mut errors);
    let query = query_conditions(&file.query, &mut errors);
    let status = status_condition(file.status.as_ref(), &mut errors);
    let ocsf_activity = ocsf_activity(file.ocsf_activity.as_deref(), &mut errors);
    let kind = if file.skip {
        RuleKind::Skip
    } else {
        record_kind(file, &params, ocsf_activity, &mut errors)
    };
    skip_records_nothing(file, &mut errors);
    let on_store_failure = store_failure(file, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let needs = kind_needs(&kind);
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

/// The rule's route semantics: the configured default with the rule's own `route_case` and
/// `trailing_slash`, which only a path template can have.
fn route_semantics(
    file: &RuleFile,
    default_semantics: RouteSemantics,
    errors: &mut KeyedErrors,
) -> RouteSemantics {
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
    semantics
}

/// `method`: the listed methods, or `None` for any (absent, `*` or `any` anywhere in the list).
fn methods(items: Option<Vec<String>>, errors: &mut KeyedErrors) -> Option<Vec<Method>> {
    let mut methods = Vec::new();
    for text in items? {
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

/// `path` or `path_regex`: the matcher and the names of the parameters it captures (what the
/// rule's templates may read as `{name}`).
fn path_matcher(
    file: &RuleFile,
    semantics: RouteSemantics,
    errors: &mut KeyedErrors,
) -> (Option<PathMatcher>, Vec<String>) {
    let compiled = match (&file.path, &file.path_regex) {
        (Some(_), Some(_)) => Err((
            "path",
            "give either path or path_regex, not both".to_string(),
        )),
        (Some(template), None) => template_matcher(template, semantics),
        (None, Some(pattern)) => regex_matcher(pattern),
        (None, None) => return (None, Vec::new()),
    };
    match compiled {
        Ok((matcher, params)) => (Some(matcher), params),
        Err(error) => {
            errors.push(error);
            (None, Vec::new())
        }
    }
}

/// A route template, compiled with the rule's route semantics.
fn template_matcher(
    template: &str,
    semantics: RouteSemantics,
) -> Result<(PathMatcher, Vec<String>), (&'static str, String)> {
    let (pattern, names) =
        compile_route_with(template, semantics).map_err(|message| ("path", message))?;
    let regex = Regex::new(&pattern)
        .map_err(|error| ("path", format!("`{template}` did not compile: {error}")))?;
    let matcher = PathMatcher {
        regex,
        route: template.to_string(),
        template: true,
    };
    Ok((matcher, names))
}

/// A `path_regex`, anchored at the start of the path; its named captures are the parameters.
fn regex_matcher(pattern: &str) -> Result<(PathMatcher, Vec<String>), (&'static str, String)> {
    let anchored = if pattern.starts_with('^') {
        pattern.to_string()
    } else {
        format!("^(?:{pattern})")
    };
    let regex = Regex::new(&anchored).map_err(|error| {
        (
            "path_regex",
            format!("`{pattern}` is not a valid regex: {error}"),
        )
    })?;
    let params = regex
        .capture_names()
        .flatten()
        .map(str::to_string)
        .collect();
    let matcher = PathMatcher {
        regex,
        route: pattern.to_string(),
        template: false,
    };
    Ok((matcher, params))
}

/// `host`: a name, or `*.example.com` for any name under it.
fn host_condition(host: Option<&str>) -> Option<HostCondition> {
    host.map(|host| match host.strip_prefix("*.") {
        Some(suffix) => HostCondition::Suffix(format!(".{suffix}")),
        None => HostCondition::Exact(host.to_string()),
    })
}

/// `headers`: each header name with its value condition.
fn header_conditions(
    file: &BTreeMap<String, String>,
    errors: &mut KeyedErrors,
) -> Vec<(HeaderName, ValueCondition)> {
    let mut headers = Vec::new();
    for (header, condition) in file {
        match (
            HeaderName::from_bytes(header.as_bytes()),
            ValueCondition::parse(condition),
        ) {
            (Ok(header), Ok(condition)) => headers.push((header, condition)),
            (Err(_), _) => errors.push(("headers", format!("`{header}` is not a header name"))),
            (_, Err(message)) => errors.push(("headers", message)),
        }
    }
    headers
}

/// `query`: each query parameter with its value condition.
fn query_conditions(
    file: &BTreeMap<String, String>,
    errors: &mut KeyedErrors,
) -> Vec<(String, ValueCondition)> {
    let mut query = Vec::new();
    for (param, condition) in file {
        match ValueCondition::parse(condition) {
            Ok(condition) => query.push((param.clone(), condition)),
            Err(message) => errors.push(("query", message)),
        }
    }
    query
}

/// `status`: any status when absent.
fn status_condition(value: Option<&toml::Value>, errors: &mut KeyedErrors) -> StatusCondition {
    match value {
        None => StatusCondition::Any,
        Some(value) => StatusCondition::parse(value).unwrap_or_else(|message| {
            errors.push(("status", message));
            StatusCondition::Any
        }),
    }
}

/// `ocsf_activity`: one of the OCSF activity names.
fn ocsf_activity(text: Option<&str>, errors: &mut KeyedErrors) -> Option<OcsfActivity> {
    let text = text?;
    let parsed = OcsfActivity::parse(text);
    if parsed.is_none() {
        errors.push((
            "ocsf_activity",
            format!("`{text}` is not one of {}", OcsfActivity::NAMES),
        ));
    }
    parsed
}

/// A value template under `key`, reading the path's parameters; `None` when absent or invalid.
fn template(
    key: &'static str,
    text: Option<&str>,
    params: &[String],
    errors: &mut KeyedErrors,
) -> Option<Template> {
    match Template::parse(text?, params) {
        Ok(template) => Some(template),
        Err(message) => {
            errors.push((key, message));
            None
        }
    }
}

/// What a recording rule writes: its action, resource, tenant, metadata and actor templates.
fn record_kind(
    file: &RuleFile,
    params: &[String],
    ocsf_activity: Option<OcsfActivity>,
    errors: &mut KeyedErrors,
) -> RuleKind {
    let action = template("action", file.action.as_deref(), params, errors);
    let resource = file.resource.as_ref();
    let resource_type = resource.and_then(|resource| resource.r#type.as_deref());
    let resource_type = template("resource.type", resource_type, params, errors);
    let resource_id = resource.and_then(|resource| resource.id.as_deref());
    let resource_id = template("resource.id", resource_id, params, errors);
    let tenant = template("tenant", file.tenant.as_deref(), params, errors);
    let mut metadata = Vec::new();
    for (key, text) in &file.metadata {
        if let Some(value) = template("metadata", Some(text), params, errors) {
            metadata.push((key.clone(), value));
        }
    }
    let (actor_id, actor_email, actor_name) = actor_templates(file.actor.as_ref(), params, errors);
    if let Some(action) = &action {
        reserved_action(action, file.action.as_deref().unwrap_or_default(), errors);
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
}

/// `actor = { id, email, name }`: actor fields the rule takes from the exchange.
fn actor_templates(
    actor: Option<&RuleActorFile>,
    params: &[String],
    errors: &mut KeyedErrors,
) -> (Option<Template>, Option<Template>, Option<Template>) {
    let id = actor.and_then(|actor| actor.id.as_deref());
    let email = actor.and_then(|actor| actor.email.as_deref());
    let name = actor.and_then(|actor| actor.name.as_deref());
    (
        template("actor.id", id, params, errors),
        template("actor.email", email, params, errors),
        template("actor.name", name, params, errors),
    )
}

/// Refuses an action whose text before the first hole already claims auditgate's namespace; an
/// action that only renders into it at request time is renamed then (see the proxy).
fn reserved_action(action: &Template, written: &str, errors: &mut KeyedErrors) {
    let Template::Parts(parts) = action else {
        return;
    };
    if let Some(Part::Literal(start)) = parts.first() {
        if crate::entry::is_reserved_action(start) {
            errors.push((
                "action",
                format!(
                    "`{written}` starts with `{}`, which is reserved for auditgate's own entries (audit.query, audit.pruned, ...); name the app's action otherwise",
                    crate::entry::RESERVED_ACTION_PREFIX
                ),
            ));
        }
    }
}

/// A skip rule records nothing, so the keys that say what to record have no place on it.
fn skip_records_nothing(file: &RuleFile, errors: &mut KeyedErrors) {
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
}

/// `on_store_failure` (and `write_ahead`, which needs no parsing): the rule's durability, which
/// only a recording rule can have.
fn store_failure(file: &RuleFile, errors: &mut KeyedErrors) -> Option<StoreFailure> {
    let on_store_failure = file.on_store_failure.as_deref().and_then(|text| {
        let parsed = StoreFailure::parse(text);
        if parsed.is_none() {
            errors.push((
                "on_store_failure",
                format!("`{text}` is not one of reject, forward"),
            ));
        }
        parsed
    });
    if file.skip && (file.write_ahead.is_some() || file.on_store_failure.is_some()) {
        errors.push((
            "write_ahead",
            "a skip rule records nothing, so it has nothing to write ahead".to_string(),
        ));
    }
    on_store_failure
}

/// What a rule's values read, so the proxy captures only that.
fn kind_needs(kind: &RuleKind) -> Needs {
    let RuleKind::Record(spec) = kind else {
        return Needs::default();
    };
    let optional = [
        &spec.resource_type,
        &spec.resource_id,
        &spec.tenant,
        &spec.actor_id,
        &spec.actor_email,
        &spec.actor_name,
    ];
    let mut needs = spec.action.needs();
    for template in optional.into_iter().flatten() {
        needs = needs.union(template.needs());
    }
    for (_, template) in &spec.metadata {
        needs = needs.union(template.needs());
    }
    needs
}
