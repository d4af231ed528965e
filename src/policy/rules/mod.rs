//! The compiled rule set. Pure: a request view (and later a status) in, a decision out.
//!
//! Rules are ordered and the first match wins, as in a Kubernetes audit policy. Matching happens
//! in two steps because the status is only known once the app answers: when the request head
//! arrives, [`RuleSet::candidates`] keeps the rules whose request conditions hold (one `RegexSet`
//! pass over the path for all rules at once); when the response head arrives,
//! [`RuleSet::decide`] picks the first candidate whose status condition holds.

//!
//! The rules come from [`file`] (the `[[rule]]` tables as written) through `compile` (each
//! table checked and compiled once, at load).

mod compile;
pub mod file;
#[cfg(test)]
mod tests;

use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};

use crate::policy::template::{Needs, Template};
use crate::request::route::{compile_route_with, RouteSemantics};
use crate::store::config::StoreFailure;
use file::UnmatchedRecord;

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
}

/// Where a rule is, for error messages: `rule #3 ("delete user")`.
pub fn rule_location(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("rule #{} ({name:?})", index + 1),
        None => format!("rule #{}", index + 1),
    }
}
