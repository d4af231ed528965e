//! The compiled rule set. Pure: a request view (and later a status) in, a decision out.
//!
//! Rules are ordered and the first match wins, as in a Kubernetes audit policy. Matching happens
//! in two steps because the status is only known once the app answers: when the request head
//! arrives, [`RuleSet::candidates`] keeps the rules whose request conditions hold (one `RegexSet`
//! pass over the path for all rules at once); when the response head arrives,
//! [`RuleSet::decide`] picks the first candidate whose status condition holds.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};
use serde::Deserialize;

use crate::request::route::{compile_route_with, RouteSemantics};

use crate::base::ConfigError;

use crate::policy::template::{Needs, Part, Template};
use crate::store::config::StoreFailure;

/// What the rules see of a request: the canonical view (see [`crate::request`]).
pub struct RequestView<'a> {
    /// The method the app runs: a POST's honoured method override, else the request's method.
    /// A HEAD also matches rules for GET, since apps serve HEAD with their GET handler.
    pub method: &'a Method,
    /// The canonical (percent-encoded) path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
struct PathMatcher {
    regex: Regex,
    /// The template or regex as written, recorded as the entry's `route`.
    route: String,
    /// Whether `route` is a template (route semantics apply) rather than a `path_regex`.
    template: bool,
}

/// How a rule's path matched a request path, for `auditgate explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMatch {
    /// The route semantics the rule was compiled with.
    pub semantics: RouteSemantics,
    /// The path matched the route exactly as written.
    pub exact: bool,
    /// Matching needed case-insensitivity.
    pub case_folded: bool,
    /// Matching needed the trailing slash to be optional.
    pub trailing_slash_ignored: bool,
}

#[derive(Debug)]
enum ValueCondition {
    Present,
    Exact(String),
    Regex(Regex),
}

impl ValueCondition {
    fn parse(text: &str) -> Result<ValueCondition, String> {
        if text == "*" {
            Ok(ValueCondition::Present)
        } else if let Some(pattern) = text.strip_prefix('~') {
            Regex::new(pattern)
                .map(ValueCondition::Regex)
                .map_err(|error| format!("`{pattern}` is not a valid regex: {error}"))
        } else {
            Ok(ValueCondition::Exact(text.to_string()))
        }
    }

    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (ValueCondition::Present, Some(_)) => true,
            (ValueCondition::Exact(expected), Some(value)) => expected == value,
            (ValueCondition::Regex(regex), Some(value)) => regex.is_match(value),
        }
    }
}

#[derive(Debug)]
enum HostCondition {
    Exact(String),
    /// `*.example.com`: any subdomain, stored as `.example.com`.
    Suffix(String),
}

/// A status condition: `any`, or a set of exact codes and classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusCondition {
    Any,
    OneOf { codes: Vec<u16>, classes: Vec<u16> },
}

impl StatusCondition {
    pub fn holds(&self, status: u16) -> bool {
        match self {
            StatusCondition::Any => true,
            StatusCondition::OneOf { codes, classes } => {
                codes.contains(&status) || classes.contains(&(status / 100))
            }
        }
    }

    fn parse(value: &toml::Value) -> Result<StatusCondition, String> {
        let mut codes = Vec::new();
        let mut classes = Vec::new();
        let mut add = |item: &toml::Value| -> Result<bool, String> {
            match item {
                toml::Value::Integer(code) if (100..=599).contains(code) => {
                    codes.push(*code as u16);
                    Ok(false)
                }
                toml::Value::String(text) if text == "any" => Ok(true),
                toml::Value::String(text) => {
                    let bytes = text.as_bytes();
                    if bytes.len() == 3
                        && (b'1'..=b'5').contains(&bytes[0])
                        && text[1..].eq_ignore_ascii_case("xx")
                    {
                        classes.push(u16::from(bytes[0] - b'0'));
                        Ok(false)
                    } else if let Ok(code) = text.parse::<u16>() {
                        if (100..=599).contains(&code) {
                            codes.push(code);
                            Ok(false)
                        } else {
                            Err(format!("status {code} is outside 100-599"))
                        }
                    } else {
                        Err(format!(
                            "status `{text}` is not a code, a class like 2xx, or `any`"
                        ))
                    }
                }
                other => Err(format!(
                    "status {other} is not a code 100-599, a class like 2xx, or `any`"
                )),
            }
        };
        let any = match value {
            toml::Value::Array(items) if items.is_empty() => {
                return Err("status is an empty list; leave it out to match any status".into())
            }
            toml::Value::Array(items) => {
                let mut any = false;
                for item in items {
                    any |= add(item)?;
                }
                any
            }
            single => add(single)?,
        };
        if any {
            Ok(StatusCondition::Any)
        } else {
            Ok(StatusCondition::OneOf { codes, classes })
        }
    }

    /// Whether every status `other` holds for, this holds for too.
    pub fn covers(&self, other: &StatusCondition) -> bool {
        match (self, other) {
            (StatusCondition::Any, _) => true,
            (StatusCondition::OneOf { .. }, StatusCondition::Any) => false,
            (
                StatusCondition::OneOf { classes: mine, .. },
                StatusCondition::OneOf { codes, classes },
            ) => {
                codes.iter().all(|code| self.holds(*code))
                    && classes.iter().all(|class| mine.contains(class))
            }
        }
    }
}

impl std::fmt::Display for StatusCondition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusCondition::Any => formatter.write_str("any"),
            StatusCondition::OneOf { codes, classes } => {
                let parts: Vec<String> = classes
                    .iter()
                    .map(|class| format!("{class}xx"))
                    .chain(codes.iter().map(u16::to_string))
                    .collect();
                formatter.write_str(&parts.join(","))
            }
        }
    }
}

/// What a recording rule writes.
#[derive(Debug)]
pub struct RecordSpec {
    pub action: Template,
    pub resource_type: Option<Template>,
    pub resource_id: Option<Template>,
    pub tenant: Option<Template>,
    pub metadata: Vec<(String, Template)>,
    pub actor_id: Option<Template>,
    pub actor_email: Option<Template>,
    pub actor_name: Option<Template>,
    /// The rule's `ocsf_activity`, recorded in each entry so its OCSF rendering follows it.
    pub ocsf_activity: Option<crate::entry::ocsf::OcsfActivity>,
}

#[derive(Debug)]
pub enum RuleKind {
    Skip,
    Record(Box<RecordSpec>),
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    methods: Option<Vec<Method>>,
    path: Option<PathMatcher>,
    host: Option<HostCondition>,
    headers: Vec<(HeaderName, ValueCondition)>,
    query: Vec<(String, ValueCondition)>,
    pub status: StatusCondition,
    pub kind: RuleKind,
    /// What the rule's values read, so the proxy captures only that.
    pub needs: Needs,
    /// How the path template matches (case, trailing slash).
    pub semantics: RouteSemantics,
    /// Whether the rule asks for write-ahead durability (`None`: the store's default).
    pub write_ahead: Option<bool>,
    /// What a write-ahead request does when the store cannot write (`None`: the store's default).
    pub on_store_failure: Option<StoreFailure>,
}

impl Rule {
    pub fn route(&self) -> Option<&str> {
        self.path.as_ref().map(|path| path.route.as_str())
    }

    /// The methods the rule matches, for `auditgate check`: `*` for any.
    pub fn methods_label(&self) -> String {
        match &self.methods {
            None => "*".to_string(),
            Some(methods) => methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Whether this rule takes every request and status that `later` would, so that `later`,
    /// further down the list (first match wins), can never be chosen. Only certain cases count:
    /// this rule has no host, header or query condition, its methods and status include
    /// `later`'s, and its path is absent or compiles to the very same matcher.
    pub fn shadows(&self, later: &Rule) -> bool {
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|method| mine.contains(method)),
        };
        let path = match (&self.path, &later.path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine.regex.as_str() == theirs.regex.as_str(),
        };
        let unconditional = self.host.is_none() && self.headers.is_empty() && self.query.is_empty();
        methods && path && unconditional && self.status.covers(&later.status)
    }

    /// Path parameters of a path this rule matched, percent-decoded.
    pub fn path_params(&self, path: &str) -> Vec<(String, String)> {
        let Some(matcher) = &self.path else {
            return Vec::new();
        };
        let Some(captures) = matcher.regex.captures(path) else {
            return Vec::new();
        };
        matcher
            .regex
            .capture_names()
            .flatten()
            .filter_map(|name| {
                captures.name(name).map(|value| {
                    let decoded = percent_encoding::percent_decode_str(value.as_str())
                        .decode_utf8_lossy()
                        .into_owned();
                    (name.to_string(), decoded)
                })
            })
            .collect()
    }

    /// How this rule's path matches `path` (`None` when the rule has no path or does not match
    /// it): exactly as written, or only thanks to the route semantics. For `auditgate explain`;
    /// it compiles the variants it compares, so it is not for the request path.
    pub fn path_match(&self, path: &str) -> Option<PathMatch> {
        let matcher = self.path.as_ref()?;
        if !matcher.regex.is_match(path) {
            return None;
        }
        let semantics = self.semantics;
        if !matcher.template {
            return Some(PathMatch {
                semantics,
                exact: true,
                case_folded: false,
                trailing_slash_ignored: false,
            });
        }
        let matches_with = |variant: RouteSemantics| {
            compile_route_with(&matcher.route, variant)
                .ok()
                .and_then(|(pattern, _)| Regex::new(&pattern).ok())
                .is_some_and(|regex| regex.is_match(path))
        };
        let exact = matches_with(RouteSemantics::STRICT);
        Some(PathMatch {
            semantics,
            exact,
            case_folded: !exact
                && !matches_with(RouteSemantics {
                    case_insensitive: false,
                    ..semantics
                }),
            trailing_slash_ignored: !exact
                && !matches_with(RouteSemantics {
                    optional_trailing_slash: false,
                    ..semantics
                }),
        })
    }

    /// Whether the request conditions other than the path hold.
    fn request_conditions_hold(&self, request: &RequestView) -> bool {
        if let Some(methods) = &self.methods {
            // Apps answer HEAD with their GET handler (Express, Rails, Django, ...), so a HEAD
            // is what a GET rule is about; it is recorded with method HEAD.
            let served_by_get = *request.method == Method::HEAD && methods.contains(&Method::GET);
            if !methods.contains(request.method) && !served_by_get {
                return false;
            }
        }
        if let Some(host) = &self.host {
            let Some(actual) = request.host else {
                return false;
            };
            let actual = strip_port(actual);
            let holds = match host {
                HostCondition::Exact(expected) => actual.eq_ignore_ascii_case(expected),
                // Compared as bytes: slicing the text could split a multi-byte character.
                HostCondition::Suffix(suffix) => {
                    let (actual, suffix) = (actual.as_bytes(), suffix.as_bytes());
                    actual.len() > suffix.len()
                        && actual[actual.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                }
            };
            if !holds {
                return false;
            }
        }
        for (name, condition) in &self.headers {
            let value = request
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok());
            if !condition.holds(value) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let pairs: Vec<(String, String)> = request
                .query
                .map(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            for (name, condition) in &self.query {
                let value = pairs
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.as_str());
                if !condition.holds(value) {
                    return false;
                }
            }
        }
        true
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The decision for one exchange once its status is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Record an entry with the rule at this index.
    Rule(usize),
    /// Record an entry as `http.<method>` (unmatched traffic under `[unmatched]`).
    Unmatched,
    /// Record nothing.
    Nothing,
}

/// The ordered, compiled rules and the policy for unmatched traffic.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// One pattern per rule that has a path, in rule order.
    path_set: RegexSet,
    /// For each pattern of `path_set`, the index of its rule.
    path_rule: Vec<usize>,
    /// Rules without a path condition (they match every path).
    pathless: Vec<usize>,
    pub unmatched: UnmatchedRecord,
}

impl RuleSet {
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    /// The rules whose request conditions hold, in rule order.
    pub fn candidates(&self, request: &RequestView) -> Vec<usize> {
        let mut out = Vec::new();
        let path_matches = if self.path_rule.is_empty() {
            Vec::new()
        } else {
            self.path_set
                .matches(request.path)
                .into_iter()
                .map(|pattern| self.path_rule[pattern])
                .collect()
        };
        // Both lists are sorted by rule index; merge them to keep the configured order.
        let (mut a, mut b) = (
            path_matches.iter().peekable(),
            self.pathless.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if x < y {
                        a.next();
                        x
                    } else {
                        b.next();
                        y
                    }
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&y)) => {
                    b.next();
                    y
                }
                (None, None) => break,
            };
            if self.rules[next].request_conditions_hold(request) {
                out.push(next);
            }
        }
        out
    }

    /// As [`RuleSet::candidates`], for a request whose method was overridden (`sent_method` is
    /// the method on the wire): the rules for the method the app runs come first, then the
    /// rules for the method sent, so an app that ignores the override is still covered.
    pub fn candidates_for(
        &self,
        request: &RequestView,
        sent_method: Option<&Method>,
    ) -> Vec<usize> {
        let mut out = self.candidates(request);
        if let Some(sent) = sent_method.filter(|sent| *sent != request.method) {
            let sent_view = RequestView {
                method: sent,
                ..*request
            };
            for index in self.candidates(&sent_view) {
                if !out.contains(&index) {
                    out.push(index);
                }
            }
        }
        out
    }

    /// Whether an exchange with these candidates could produce an entry at all; when not, the
    /// proxy skips every audit step for it.
    pub fn may_record(&self, candidates: &[usize], method: &Method) -> bool {
        candidates
            .iter()
            .any(|&index| matches!(self.rules[index].kind, RuleKind::Record(_)))
            || self.unmatched_records(method)
    }

    /// Whether traffic with this method that no rule takes is recorded (`[unmatched]`).
    pub fn unmatched_records(&self, method: &Method) -> bool {
        match self.unmatched {
            UnmatchedRecord::None => false,
            UnmatchedRecord::All => true,
            UnmatchedRecord::Mutations => !matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            ),
        }
    }

    /// The first candidate whose status condition holds wins.
    pub fn decide(&self, candidates: &[usize], method: &Method, status: u16) -> Decision {
        for &index in candidates {
            let rule = &self.rules[index];
            if rule.status.holds(status) {
                return match rule.kind {
                    RuleKind::Skip => Decision::Nothing,
                    RuleKind::Record(_) => Decision::Rule(index),
                };
            }
        }
        if self.unmatched_records(method) {
            Decision::Unmatched
        } else {
            Decision::Nothing
        }
    }

    /// When the app could not be reached the attempt is still audited: a candidate whose status
    /// condition accepts the proxy's own error status wins as usual, and otherwise the first
    /// candidate rule, whatever its status condition.
    pub fn decide_unreachable(
        &self,
        candidates: &[usize],
        method: &Method,
        status: u16,
    ) -> Decision {
        match self.decide(candidates, method, status) {
            Decision::Rule(index) => Decision::Rule(index),
            other => match candidates.first() {
                Some(&index) => match self.rules[index].kind {
                    RuleKind::Skip => Decision::Nothing,
                    RuleKind::Record(_) => Decision::Rule(index),
                },
                None => other,
            },
        }
    }

    /// Whether an exchange must be made durable before it is forwarded, and what to do if it
    /// cannot be: the first recording candidate whose `write_ahead` (or the store's default) says
    /// so; unmatched traffic that will be recorded follows the store's default.
    pub fn write_ahead(
        &self,
        candidates: &[usize],
        method: &Method,
        default_write_ahead: bool,
        default_failure: StoreFailure,
    ) -> Option<StoreFailure> {
        for &index in candidates {
            let rule = &self.rules[index];
            if let RuleKind::Record(_) = rule.kind {
                if rule.write_ahead.unwrap_or(default_write_ahead) {
                    return Some(rule.on_store_failure.unwrap_or(default_failure));
                }
            }
        }
        let only_unmatched = !candidates
            .iter()
            .any(|&index| matches!(self.rules[index].kind, RuleKind::Record(_)));
        (default_write_ahead && only_unmatched && self.unmatched_records(method))
            .then_some(default_failure)
    }

    /// The union of what the candidates' request sides need.
    pub fn needs(&self, candidates: &[usize]) -> Needs {
        candidates.iter().fold(Needs::default(), |needs, &index| {
            needs.union(self.rules[index].needs)
        })
    }

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

/// Where a rule is, for error messages: `rule #3 ("delete user")`.
pub fn rule_location(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("rule #{} ({name:?})", index + 1),
        None => format!("rule #{}", index + 1),
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

/// `[unmatched]`: traffic no rule matched.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmatchedFile {
    /// "none", "mutations" (default: everything but GET/HEAD/OPTIONS/TRACE) or "all".
    pub record: Option<String>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, recorded in each entry the rule produces.
    pub name: Option<String>,
    /// Method or list of methods; absent or "*" matches any.
    pub method: Option<OneOrMany>,
    /// Route template: `/api/users/{id}`, `/files/{*rest}`.
    pub path: Option<String>,
    /// Regex over the canonical path (matched as written: no case folding, no optional trailing
    /// slash), with named captures as parameters.
    pub path_regex: Option<String>,
    /// Host name, or `*.example.com`.
    pub host: Option<String>,
    /// Request header conditions: exact value, "*" for present, "~regex".
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameter conditions, as for headers.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// "2xx", 204, [401, 403], "any" (the default).
    pub status: Option<toml::Value>,
    /// Action name template: "user.deleted", "{kind}.updated".
    pub action: Option<String>,
    /// Resource type and id templates.
    pub resource: Option<ResourceFile>,
    /// Metadata key -> value source or template.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Actor fields taken from the exchange (e.g. the attempted login of a failed login).
    pub actor: Option<RuleActorFile>,
    /// Tenant template.
    pub tenant: Option<String>,
    /// Record nothing for matching traffic (health checks).
    #[serde(default)]
    pub skip: bool,
    /// "insensitive" or "sensitive": overrides `[proxy] route_case` for this rule's path.
    pub route_case: Option<String>,
    /// "optional" or "strict": overrides `[proxy] trailing_slash` for this rule's path.
    pub trailing_slash: Option<String>,
    /// Hold the request until its entry is durable (overrides `[store] durability`).
    pub write_ahead: Option<bool>,
    /// For write-ahead: "reject" or "forward" when the entry cannot be stored (overrides
    /// `[store] on_store_failure`).
    pub on_store_failure: Option<String>,
    /// The OCSF activity of the entries this rule records: "create", "read", "update",
    /// "delete" or "other" (default: from the action's last word, else the HTTP method).
    pub ocsf_activity: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(item) => vec![item.clone()],
            OneOrMany::Many(items) => items.clone(),
        }
    }
}

/// `resource = { type = "...", id = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    pub r#type: Option<String>,
    pub id: Option<String>,
}

/// `actor = { id = "...", email = "...", name = "..." }` on a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleActorFile {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedRecord {
    None,
    Mutations,
    All,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::route::compile_route;

    /// Found while giving the rule_matcher fuzz target host conditions: the host suffix was
    /// compared on a text slice that could start inside a multi-byte character, which panics.
    /// (Hosts from a request are visible ASCII today, so no request could reach it; the rule set
    /// is a public interface all the same.)
    #[test]
    fn host_suffix_on_non_ascii_hosts_never_panics() {
        let set = rules(
            "[[rule]]\nhost = \"*.b\"\naction = \"x\"\n",
            UnmatchedRecord::None,
        );
        let headers = HeaderMap::new();
        for host in [
            "a\u{e9}z",
            "\u{e9}.b",
            "x.\u{e9}",
            "\u{1f642}\u{1f642}",
            "a.B",
        ] {
            let request = RequestView {
                method: &Method::GET,
                path: "/",
                query: None,
                host: Some(host),
                headers: &headers,
            };
            let matched = !set.candidates(&request).is_empty();
            assert_eq!(matched, host.ends_with(".b") || host == "a.B", "{host}");
        }
    }

    /// Found by the rule_matcher fuzz target: a stray `}` before a parameter was taken as
    /// literal text, while the same `}` after the last parameter was a config error.
    #[test]
    fn a_stray_closing_brace_is_refused_wherever_it_is() {
        for template in ["/a}b", "/a}b/{id}", "/]x}}}<{p2}", "/{id}/}"] {
            let error = compile_route(template).expect_err(template);
            assert!(error.contains("with no `{`"), "{template}: {error}");
        }
        assert!(compile_route("/a/{id}/b").is_ok());
    }

    fn rules(text: &str, unmatched: UnmatchedRecord) -> RuleSet {
        #[derive(serde::Deserialize)]
        struct File {
            rule: Vec<RuleFile>,
        }
        let file: File = toml::from_str(text).expect("test rules parse");
        RuleSet::compile(&file.rule, unmatched).expect("test rules compile")
    }

    fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        RequestView {
            method,
            path,
            query,
            host: Some("app.example.com:8080"),
            headers,
        }
    }

    const RULES: &str = r#"
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

        [[rule]]
        name = "files"
        method = ["GET", "put"]
        path = "/files/{*rest}"
        action = "file.{rest}"

        [[rule]]
        name = "by regex"
        path_regex = "^/v(?P<version>[0-9]+)/things$"
        status = [200, "4xx"]
        action = "thing.v{version}"

        [[rule]]
        name = "tenant header"
        headers = { "x-tenant" = "*" }
        query = { mode = "~^dry" }
        host = "*.example.com"
        action = "tenant.touch"
    "#;

    #[test]
    fn first_match_wins_with_status() {
        let set = rules(RULES, UnmatchedRecord::Mutations);
        let headers = HeaderMap::new();
        let delete = Method::DELETE;
        let candidates = set.candidates(&view(&delete, "/api/users/42", &headers));
        assert_eq!(candidates, vec![1]);
        assert_eq!(set.decide(&candidates, &delete, 204), Decision::Rule(1));
        // A refused delete is not "user.deleted"; it falls to the unmatched policy.
        assert_eq!(set.decide(&candidates, &delete, 403), Decision::Unmatched);
        assert_eq!(
            set.rule(1).path_params("/api/users/a%20b"),
            vec![("id".to_string(), "a b".to_string())]
        );
    }

    #[test]
    fn skip_and_unmatched_policies() {
        let headers = HeaderMap::new();
        let get = Method::GET;
        let post = Method::POST;
        let set = rules(RULES, UnmatchedRecord::All);
        let candidates = set.candidates(&view(&get, "/healthz", &headers));
        assert_eq!(set.decide(&candidates, &get, 200), Decision::Nothing);
        assert_eq!(set.decide(&[], &get, 200), Decision::Unmatched);
        let set = rules(RULES, UnmatchedRecord::Mutations);
        assert_eq!(set.decide(&[], &get, 200), Decision::Nothing);
        assert_eq!(set.decide(&[], &post, 200), Decision::Unmatched);
        assert!(!set.may_record(&[], &get));
        let set = rules(RULES, UnmatchedRecord::None);
        assert_eq!(set.decide(&[], &post, 200), Decision::Nothing);
    }

    #[test]
    fn catch_all_regex_methods_and_conditions() {
        let set = rules(RULES, UnmatchedRecord::None);
        let mut headers = HeaderMap::new();
        let put = Method::PUT;
        let candidates = set.candidates(&view(&put, "/files/a/b.txt", &headers));
        assert_eq!(candidates, vec![2]);
        assert_eq!(
            set.rule(2).path_params("/files/a/b.txt"),
            vec![("rest".to_string(), "a/b.txt".to_string())]
        );
        let post = Method::POST;
        assert!(set
            .candidates(&view(&post, "/files/a", &headers))
            .is_empty());

        let get = Method::GET;
        let candidates = set.candidates(&view(&get, "/v2/things", &headers));
        assert_eq!(candidates, vec![3]);
        assert_eq!(set.decide(&candidates, &get, 200), Decision::Rule(3));
        assert_eq!(set.decide(&candidates, &get, 404), Decision::Rule(3));
        assert_eq!(set.decide(&candidates, &get, 201), Decision::Nothing);

        assert!(set
            .candidates(&view(&get, "/x?mode=dry-run", &headers))
            .is_empty());
        headers.insert("x-tenant", "acme".parse().expect("header value"));
        assert_eq!(
            set.candidates(&view(&get, "/x?mode=dry-run", &headers)),
            vec![4]
        );
        assert!(set
            .candidates(&view(&get, "/x?mode=live", &headers))
            .is_empty());
    }

    #[test]
    fn unreachable_upstream_is_still_audited() {
        let set = rules(RULES, UnmatchedRecord::None);
        let headers = HeaderMap::new();
        let delete = Method::DELETE;
        let candidates = set.candidates(&view(&delete, "/api/users/42", &headers));
        assert_eq!(
            set.decide_unreachable(&candidates, &delete, 502),
            Decision::Rule(1)
        );
    }

    #[test]
    fn every_error_is_reported_with_its_rule() {
        #[derive(serde::Deserialize)]
        struct File {
            rule: Vec<RuleFile>,
        }
        let file: File = toml::from_str(
            r#"
            [[rule]]
            name = "a"
            method = "FETCH ME"
            path = "/x/{id"
            action = "x"
            [[rule]]
            name = "b"
            path = "/users/{id}"
            status = "6xx"
            action = "{user}.deleted"
            [[rule]]
            name = "a"
            path_regex = "("
            "#,
        )
        .expect("parses");
        let errors = RuleSet::compile(&file.rule, UnmatchedRecord::None).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains(r#"rule #1 ("a").method"#), "{all}");
        assert!(all.contains(r#"rule #1 ("a").path"#), "{all}");
        assert!(all.contains(r#"rule #2 ("b").status"#), "{all}");
        assert!(all.contains(r#"rule #2 ("b").action"#), "{all}");
        assert!(
            all.contains(r#"rule #3 ("a")"#) && all.contains("unique"),
            "{all}"
        );
        assert!(all.contains(r#"rule #3 ("a").path_regex"#), "{all}");
        assert!(all.contains(r#"rule #3 ("a").action"#), "{all}");
    }

    #[test]
    fn ocsf_activity_is_checked_and_kept_with_the_rule() {
        #[derive(serde::Deserialize)]
        struct File {
            rule: Vec<RuleFile>,
        }
        let file: File = toml::from_str(
            r#"
            [[rule]]
            name = "purge"
            method = "POST"
            path = "/purge"
            action = "cache.purge"
            ocsf_activity = "delete"
            [[rule]]
            name = "plain"
            path = "/x"
            action = "x.happened"
            "#,
        )
        .expect("parses");
        let rules = RuleSet::compile(&file.rule, UnmatchedRecord::None).expect("valid");
        let activities: Vec<Option<crate::entry::ocsf::OcsfActivity>> = rules
            .rules()
            .iter()
            .map(|rule| match &rule.kind {
                RuleKind::Record(spec) => spec.ocsf_activity,
                RuleKind::Skip => None,
            })
            .collect();
        assert_eq!(
            activities,
            [Some(crate::entry::ocsf::OcsfActivity::Delete), None]
        );

        let file: File = toml::from_str(
            r#"
            [[rule]]
            path = "/a"
            action = "a"
            ocsf_activity = "Erase"
            [[rule]]
            name = "health"
            path = "/health"
            skip = true
            ocsf_activity = "read"
            "#,
        )
        .expect("parses");
        let errors = RuleSet::compile(&file.rule, UnmatchedRecord::None).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "rule #1.ocsf_activity: `Erase` is not one of create, read, update, delete or other",
                r#"rule #2 ("health").ocsf_activity: a skip rule records nothing, so it has no OCSF activity"#,
            ]
        );
    }

    #[test]
    fn a_rule_cannot_name_an_action_in_auditgates_namespace() {
        #[derive(serde::Deserialize)]
        struct File {
            rule: Vec<RuleFile>,
        }
        let file: File = toml::from_str(
            r#"
            [[rule]]
            name = "own"
            path = "/prune"
            action = "audit.pruned"
            [[rule]]
            path = "/q/{id}"
            action = "Audit.query.{id}"
            [[rule]]
            name = "fine"
            path = "/x/{section}"
            action = "{section}.x"
            [[rule]]
            name = "also fine"
            path = "/y"
            action = "auditor.added"
            "#,
        )
        .expect("parses");
        let errors = RuleSet::compile(&file.rule, UnmatchedRecord::None).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with(
                "rule #1 (\"own\").action: `audit.pruned` starts with `audit.`, which is reserved"
            ),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("rule #2") && text[1].contains(".action: `Audit.query.{id}`"),
            "{text:#?}"
        );
    }

    #[test]
    fn templates_match_as_the_app_routes_by_default() {
        let set = rules(
            r#"
            [[rule]]
            name = "get user"
            method = "GET"
            path = "/api/users/{id}"
            action = "user.viewed"
            [[rule]]
            name = "strict"
            method = "PUT"
            path = "/Exact/{id}/"
            route_case = "sensitive"
            trailing_slash = "strict"
            action = "exact.put"
            [[rule]]
            name = "regex"
            method = "PATCH"
            path_regex = "^/r/(?P<id>[0-9]+)$"
            action = "r.patched"
            "#,
            UnmatchedRecord::None,
        );
        let headers = HeaderMap::new();
        let get = Method::GET;
        for path in ["/api/users/Ab5", "/API/Users/Ab5", "/api/users/Ab5/"] {
            assert_eq!(
                set.candidates(&view(&get, path, &headers)),
                vec![0],
                "{path}"
            );
            // The parameter keeps the case it was sent in; only matching is folded.
            assert_eq!(
                set.rule(0).path_params(path),
                vec![("id".to_string(), "Ab5".to_string())]
            );
        }
        assert!(set
            .candidates(&view(&get, "/api/users/5/x", &headers))
            .is_empty());
        let head = Method::HEAD;
        assert_eq!(
            set.candidates(&view(&head, "/api/users/5", &headers)),
            vec![0]
        );

        let put = Method::PUT;
        assert_eq!(set.candidates(&view(&put, "/Exact/1/", &headers)), vec![1]);
        assert!(set
            .candidates(&view(&put, "/exact/1/", &headers))
            .is_empty());
        assert!(set.candidates(&view(&put, "/Exact/1", &headers)).is_empty());
        // A path_regex is taken as written.
        let patch = Method::PATCH;
        assert_eq!(set.candidates(&view(&patch, "/r/1", &headers)), vec![2]);
        assert!(set.candidates(&view(&patch, "/R/1", &headers)).is_empty());
        assert!(set.candidates(&view(&patch, "/r/1/", &headers)).is_empty());

        let matched = set.rule(0).path_match("/API/users/5/").expect("matches");
        assert!(!matched.exact && matched.case_folded && matched.trailing_slash_ignored);
        let matched = set.rule(0).path_match("/api/users/5").expect("matches");
        assert!(matched.exact && !matched.case_folded && !matched.trailing_slash_ignored);

        // An overridden method: the rules for the method the app runs come first.
        let delete = Method::DELETE;
        assert_eq!(
            set.candidates_for(&view(&delete, "/api/users/5", &headers), Some(&get)),
            vec![0]
        );
    }

    #[test]
    fn route_semantics_are_checked() {
        #[derive(serde::Deserialize)]
        struct File {
            rule: Vec<RuleFile>,
        }
        let file: File = toml::from_str(
            r#"
            [[rule]]
            path = "/a"
            route_case = "folded"
            trailing_slash = "maybe"
            action = "a"
            [[rule]]
            path_regex = "^/b$"
            route_case = "sensitive"
            action = "b"
            "#,
        )
        .expect("parses");
        let errors = RuleSet::compile(&file.rule, UnmatchedRecord::None).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("rule #1.route_case"), "{text:#?}");
        assert!(text[1].starts_with("rule #1.trailing_slash"), "{text:#?}");
        assert!(text[2].starts_with("rule #2.route_case"), "{text:#?}");
        assert_eq!(
            compile_route_with("/", RouteSemantics::default())
                .expect("valid")
                .0,
            "^(?i:/)$"
        );
        assert_eq!(
            compile_route_with("/files/{*rest}", RouteSemantics::default())
                .expect("valid")
                .0,
            "^(?i:/files/(?P<rest>.*))$"
        );
        assert_eq!(
            compile_route_with("/a/", RouteSemantics::default())
                .expect("valid")
                .0,
            "^(?i:/a/?)$"
        );
    }

    #[test]
    fn routes_compile() {
        assert_eq!(
            compile_route("/a/{id}/b").expect("valid"),
            ("^/a/(?P<id>[^/]+)/b$".to_string(), vec!["id".to_string()])
        );
        assert!(compile_route("a").is_err());
        assert!(compile_route("/{*rest}/x").is_err());
        assert!(compile_route("/{a}/{a}").is_err());
        assert!(compile_route("/{a-b}").is_err());
    }
}
