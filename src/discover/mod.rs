//! Learning routes from traffic (`[discover] enabled = true`): the proxy tells the learner the
//! canonical path, method, status and how the rules handled each exchange; the learner groups
//! paths into route templates (`/users/123`, `/users/9f1c…` -> `/users/{id}`) and keeps, per
//! template and method, counts, status classes, first and last seen, and what covered it.
//!
//! Ids are recognized segment by segment (integers, UUIDs, ULIDs, long hex, long tokens mixing
//! letters and digits); any other segment is a literal until its position has seen
//! [`MAX_VALUES_PER_SEGMENT`] distinct values, after which every value there is `{id}` (a
//! high-cardinality segment such as a user name). Memory stays bounded whatever the traffic: at
//! most [`MAX_TEMPLATES`] templates of at most [`MAX_DEPTH`] segments, each literal at most
//! [`MAX_SEGMENT_BYTES`] long; an exchange that would need a template past the cap is counted as
//! not learned, never stored.
//!
//! The learner watches and never changes traffic; it knows nothing of the proxy or the rules
//! (the caller says what covered an exchange), so it can be unit-tested and read offline from
//! the file it is saved to ([`Learned`]).

pub mod config;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The most route templates kept.
pub const MAX_TEMPLATES: usize = 2000;
/// Distinct literal values one segment position keeps before it becomes `{id}`.
pub const MAX_VALUES_PER_SEGMENT: usize = 64;
/// Segments kept per template; deeper paths end in `{*rest}`.
pub const MAX_DEPTH: usize = 16;
/// Longer segments are taken for ids.
pub const MAX_SEGMENT_BYTES: usize = 100;
/// Methods kept apart per template; any further method is counted under `OTHER`.
pub const MAX_METHODS: usize = 8;
/// A sample path longer than this is not kept.
const MAX_SAMPLE_BYTES: usize = 512;
/// The version of the saved file's layout.
const FILE_VERSION: u32 = 1;

/// How the rules handled an exchange, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Recorded by this rule.
    Rule(&'a str),
    /// Deliberately not recorded by this skip rule.
    Skipped(&'a str),
    /// Recorded only by the generic `http.<method>` entry of `[unmatched]`.
    Fallback,
    /// Not recorded.
    NotRecorded,
}

/// How the rules handled a route's latest exchange, as kept and saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Covered {
    Rule { rule: String },
    Skipped { rule: String },
    Fallback,
    NotRecorded,
}

impl Covered {
    fn matches(&self, seen: Seen) -> bool {
        match (self, seen) {
            (Covered::Rule { rule }, Seen::Rule(name)) => rule == name,
            (Covered::Skipped { rule }, Seen::Skipped(name)) => rule == name,
            (Covered::Fallback, Seen::Fallback) => true,
            (Covered::NotRecorded, Seen::NotRecorded) => true,
            _ => false,
        }
    }

    fn from_seen(seen: Seen) -> Covered {
        match seen {
            Seen::Rule(name) => Covered::Rule {
                rule: name.to_string(),
            },
            Seen::Skipped(name) => Covered::Skipped {
                rule: name.to_string(),
            },
            Seen::Fallback => Covered::Fallback,
            Seen::NotRecorded => Covered::NotRecorded,
        }
    }

    /// Whether a rule of the configuration names this route (to record it, or to skip it).
    pub fn by_rule(&self) -> bool {
        matches!(self, Covered::Rule { .. } | Covered::Skipped { .. })
    }
}

/// What was learned of one method on one route template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodStats {
    pub method: String,
    pub count: u64,
    /// Exchanges by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status_classes: [u64; 5],
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Exchanges that only the generic `[unmatched]` fallback recorded.
    pub fallback_count: u64,
    /// How the latest exchange was handled.
    pub covered: Covered,
}

impl MethodStats {
    fn new(method: &str, now: i64, seen: Seen) -> MethodStats {
        MethodStats {
            method: method.to_string(),
            count: 0,
            status_classes: [0; 5],
            first_seen: now,
            last_seen: now,
            fallback_count: 0,
            covered: Covered::from_seen(seen),
        }
    }

    fn add(&mut self, status: u16, seen: Seen, now: i64) {
        self.count = self.count.saturating_add(1);
        if let Some(class) = status_class(status) {
            self.status_classes[class] = self.status_classes[class].saturating_add(1);
        }
        if seen == Seen::Fallback {
            self.fallback_count = self.fallback_count.saturating_add(1);
        }
        self.first_seen = self.first_seen.min(now);
        if now >= self.last_seen {
            self.last_seen = now;
            // Allocates only when the coverage changed (a rule added at a reload).
            if !self.covered.matches(seen) {
                self.covered = Covered::from_seen(seen);
            }
        }
    }

    fn merge(&mut self, other: MethodStats) {
        self.count = self.count.saturating_add(other.count);
        for (mine, theirs) in self.status_classes.iter_mut().zip(other.status_classes) {
            *mine = mine.saturating_add(theirs);
        }
        self.fallback_count = self.fallback_count.saturating_add(other.fallback_count);
        self.first_seen = self.first_seen.min(other.first_seen);
        if other.last_seen > self.last_seen {
            self.last_seen = other.last_seen;
            self.covered = other.covered;
        }
    }
}

/// Index into `[1xx, 2xx, 3xx, 4xx, 5xx]`.
fn status_class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(usize::from(status / 100 - 1)),
        _ => None,
    }
}

/// What was learned of one route template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `/users/{id}/posts/{id2}`: `{id…}` where ids were seen, `{*rest}` past [`MAX_DEPTH`].
    pub template: String,
    /// One concrete path of the template, as first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Busiest method first.
    pub methods: Vec<MethodStats>,
}

impl Route {
    pub fn count(&self) -> u64 {
        self.methods.iter().map(|method| method.count).sum()
    }
}

/// Everything learned, as saved to the file and served by the admin API: busiest route first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Learned {
    pub version: u32,
    pub routes: Vec<Route>,
    /// Exchanges not learned because the template cap was reached.
    pub unlearned: u64,
}

/// Why a learned file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LearnedFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a learned-routes file: {message}")]
    Format { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Learned {
    /// Reads a saved file.
    pub fn read(path: &Path) -> Result<Learned, LearnedFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LearnedFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let learned: Learned =
            serde_json::from_str(&text).map_err(|error| LearnedFileError::Format {
                path: shown.clone(),
                message: error.to_string(),
            })?;
        if learned.version != FILE_VERSION {
            return Err(LearnedFileError::Format {
                path: shown,
                message: format!(
                    "version {} (this auditgate reads version {FILE_VERSION})",
                    learned.version
                ),
            });
        }
        Ok(learned)
    }

    /// Writes the file whole: to a temporary file beside it, then renamed over it, so a crash
    /// mid-write leaves the previous file.
    pub fn write(&self, path: &Path) -> Result<(), LearnedFileError> {
        let shown = path.display().to_string();
        let failed = |source| LearnedFileError::Write {
            path: shown.clone(),
            source,
        };
        let text =
            serde_json::to_vec(self).map_err(|error| failed(std::io::Error::other(error)))?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = std::path::PathBuf::from(temporary);
        std::fs::write(&temporary, text).map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }
}

/// The learner the proxy feeds: a bounded tree of path segments behind one lock.
#[derive(Debug, Default)]
pub struct RouteLearner {
    tree: Mutex<Tree>,
}

impl RouteLearner {
    pub fn new() -> RouteLearner {
        RouteLearner::default()
    }

    /// A learner that goes on from what a saved file holds (bounded as any traffic is).
    pub fn from_learned(learned: Learned) -> RouteLearner {
        let mut tree = Tree {
            unlearned: learned.unlearned,
            ..Tree::default()
        };
        for route in learned.routes {
            tree.restore(route);
        }
        RouteLearner {
            tree: Mutex::new(tree),
        }
    }

    /// Learns one exchange. `path` is the canonical path the rules saw; `now` is Unix seconds.
    pub fn observe(&self, path: &str, method: &str, status: u16, seen: Seen, now: i64) {
        let mut tree = match self.tree.lock() {
            Ok(tree) => tree,
            Err(poisoned) => poisoned.into_inner(),
        };
        tree.observe(path, method, status, seen, now);
    }

    /// Everything learned so far, busiest route first.
    pub fn learned(&self) -> Learned {
        let tree = match self.tree.lock() {
            Ok(tree) => tree,
            Err(poisoned) => poisoned.into_inner(),
        };
        tree.learned()
    }

    /// The number of templates and of exchanges not learned, for `/metrics`.
    pub fn counts(&self) -> (usize, u64) {
        let tree = match self.tree.lock() {
            Ok(tree) => tree,
            Err(poisoned) => poisoned.into_inner(),
        };
        (tree.templates, tree.unlearned)
    }
}

/// One position in the tree: the literal values seen there, the id branch, and the template
/// that ends here.
#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    id: Option<Box<Node>>,
    /// Past [`MAX_DEPTH`]: everything deeper.
    rest: Option<Box<Node>>,
    /// This position saw too many distinct values: every value here is an id from now on.
    collapsed: bool,
    end: Option<Box<Ending>>,
}

/// A template that ends at a node.
#[derive(Debug)]
struct Ending {
    sample: Option<Box<str>>,
    methods: Vec<MethodStats>,
}

impl Ending {
    fn merge(&mut self, other: Ending) {
        if self.sample.is_none() {
            self.sample = other.sample;
        }
        for stats in other.methods {
            match self
                .methods
                .iter()
                .position(|mine| mine.method == stats.method)
            {
                Some(index) => self.methods[index].merge(stats),
                None if self.methods.len() < MAX_METHODS => self.methods.push(stats),
                None => {
                    let other = self.other_method(&stats);
                    other.merge(MethodStats {
                        method: OTHER_METHOD.to_string(),
                        ..stats
                    });
                }
            }
        }
    }

    /// The stats of `method`, or of `OTHER` once [`MAX_METHODS`] methods are kept.
    fn method_stats(&mut self, method: &str, seen: Seen, now: i64) -> &mut MethodStats {
        let found = self.methods.iter().position(|stats| stats.method == method);
        match found {
            Some(index) => &mut self.methods[index],
            None if self.methods.len() < MAX_METHODS - 1 || method == OTHER_METHOD => {
                self.methods.push(MethodStats::new(method, now, seen));
                let last = self.methods.len() - 1;
                &mut self.methods[last]
            }
            None => {
                let template = MethodStats::new(OTHER_METHOD, now, seen);
                self.other_method(&template)
            }
        }
    }

    fn other_method(&mut self, template: &MethodStats) -> &mut MethodStats {
        let index = match self
            .methods
            .iter()
            .position(|stats| stats.method == OTHER_METHOD)
        {
            Some(index) => index,
            None => {
                self.methods.push(MethodStats {
                    method: OTHER_METHOD.to_string(),
                    count: 0,
                    status_classes: [0; 5],
                    fallback_count: 0,
                    ..template.clone()
                });
                self.methods.len() - 1
            }
        };
        &mut self.methods[index]
    }
}

/// Where methods past [`MAX_METHODS`] are counted, so a client inventing methods cannot grow a
/// template.
const OTHER_METHOD: &str = "OTHER";

/// How one segment of a path is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Literal(&'a str),
    Id,
    Rest,
}

#[derive(Debug, Default)]
struct Tree {
    root: Node,
    templates: usize,
    unlearned: u64,
}

impl Tree {
    fn observe(&mut self, path: &str, method: &str, status: u16, seen: Seen, now: i64) {
        let mut steps = [Step::Id; MAX_DEPTH + 1];
        let used = path_steps(path, &mut steps);
        let steps = &steps[..used];
        // A new template past the cap is not learned; nothing is created on its way, so the
        // tree's size follows the templates it ends in.
        let exists = self.root.find(steps);
        if !exists && self.templates >= MAX_TEMPLATES {
            self.unlearned = self.unlearned.saturating_add(1);
            return;
        }
        let mut merged_away = 0;
        let node = self.root.walk(steps, &mut merged_away);
        self.templates -= merged_away;
        let ending = node.end.get_or_insert_with(|| {
            self.templates += 1;
            Box::new(Ending {
                sample: (path.len() <= MAX_SAMPLE_BYTES).then(|| Box::from(path)),
                methods: Vec::new(),
            })
        });
        ending
            .method_stats(method, seen, now)
            .add(status, seen, now);
    }

    /// Puts a saved route back, through the same caps as traffic.
    fn restore(&mut self, route: Route) {
        let Some(steps) = template_steps(&route.template) else {
            return;
        };
        let exists = self.root.find(&steps);
        if !exists && self.templates >= MAX_TEMPLATES {
            self.unlearned = self.unlearned.saturating_add(route.count());
            return;
        }
        let mut merged_away = 0;
        let node = self.root.walk(&steps, &mut merged_away);
        self.templates -= merged_away;
        let ending = Ending {
            sample: route
                .sample
                .filter(|sample| sample.len() <= MAX_SAMPLE_BYTES)
                .map(Box::from),
            methods: Vec::new(),
        };
        let ending = node.end.get_or_insert_with(|| {
            self.templates += 1;
            Box::new(ending)
        });
        ending.merge(Ending {
            sample: None,
            methods: route.methods,
        });
    }

    fn learned(&self) -> Learned {
        let mut routes = Vec::with_capacity(self.templates);
        let mut prefix = Vec::new();
        self.root.collect(&mut prefix, &mut routes);
        routes.sort_by(|a, b| {
            b.count()
                .cmp(&a.count())
                .then_with(|| a.template.cmp(&b.template))
        });
        Learned {
            version: FILE_VERSION,
            routes,
            unlearned: self.unlearned,
        }
    }
}

impl Node {
    /// Whether the template these steps lead to exists, following the rules `walk` applies.
    fn find(&self, steps: &[Step]) -> bool {
        let Some((step, rest)) = steps.split_first() else {
            return self.end.is_some();
        };
        let next = match *step {
            Step::Rest => self.rest.as_deref(),
            Step::Id => self.id.as_deref(),
            Step::Literal(value) => match self.literals.get(value) {
                Some(child) if !self.collapsed => Some(child),
                _ if self.collapsed || self.literals.len() >= MAX_VALUES_PER_SEGMENT => {
                    self.id.as_deref()
                }
                _ => None,
            },
        };
        next.is_some_and(|child| child.find(rest))
    }

    /// The node the steps lead to, created on the way; a position with too many distinct
    /// values is folded into its id branch. `merged_away` counts templates merged into others.
    fn walk(&mut self, steps: &[Step], merged_away: &mut usize) -> &mut Node {
        let Some((step, rest)) = steps.split_first() else {
            return self;
        };
        let child: &mut Node = match *step {
            Step::Rest => self.rest.get_or_insert_with(Box::default),
            Step::Id => self.id.get_or_insert_with(Box::default),
            Step::Literal(value) => {
                if !self.collapsed
                    && !self.literals.contains_key(value)
                    && self.literals.len() >= MAX_VALUES_PER_SEGMENT
                {
                    self.collapse(merged_away);
                }
                if self.collapsed {
                    self.id.get_or_insert_with(Box::default)
                } else {
                    self.literals.entry(Box::from(value)).or_default()
                }
            }
        };
        child.walk(rest, merged_away)
    }

    /// Folds every literal branch into the id branch, for good.
    fn collapse(&mut self, merged_away: &mut usize) {
        self.collapsed = true;
        let id = self.id.get_or_insert_with(Box::default);
        for (_, child) in self.literals.drain() {
            id.absorb(child, merged_away);
        }
        self.literals.shrink_to_fit();
    }

    /// Merges another subtree into this one.
    fn absorb(&mut self, other: Node, merged_away: &mut usize) {
        match (&mut self.end, other.end) {
            (Some(mine), Some(theirs)) => {
                mine.merge(*theirs);
                *merged_away += 1;
            }
            (mine @ None, Some(theirs)) => *mine = Some(theirs),
            (_, None) => {}
        }
        if let Some(rest) = other.rest {
            self.rest
                .get_or_insert_with(Box::default)
                .absorb(*rest, merged_away);
        }
        if let Some(id) = other.id {
            self.id
                .get_or_insert_with(Box::default)
                .absorb(*id, merged_away);
        }
        for (value, child) in other.literals {
            if self.collapsed {
                self.id
                    .get_or_insert_with(Box::default)
                    .absorb(child, merged_away);
            } else if let Some(mine) = self.literals.get_mut(&value) {
                mine.absorb(child, merged_away);
            } else if self.literals.len() < MAX_VALUES_PER_SEGMENT {
                self.literals.insert(value, child);
            } else {
                self.collapse(merged_away);
                self.id
                    .get_or_insert_with(Box::default)
                    .absorb(child, merged_away);
            }
        }
        if other.collapsed && !self.collapsed {
            self.collapse(merged_away);
        }
    }

    fn collect<'a>(&'a self, prefix: &mut Vec<Step<'a>>, routes: &mut Vec<Route>) {
        if let Some(end) = &self.end {
            let mut methods = end.methods.clone();
            methods.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.method.cmp(&b.method)));
            routes.push(Route {
                template: render_template(prefix),
                sample: end.sample.as_deref().map(str::to_string),
                methods,
            });
        }
        for (value, child) in &self.literals {
            prefix.push(Step::Literal(value));
            child.collect(prefix, routes);
            prefix.pop();
        }
        for (step, child) in [(Step::Id, &self.id), (Step::Rest, &self.rest)] {
            if let Some(child) = child {
                prefix.push(step);
                child.collect(prefix, routes);
                prefix.pop();
            }
        }
    }
}

/// The steps of a canonical path into `out`; returns how many. A trailing slash is the same
/// route (rules match it either way by default).
fn path_steps<'a>(path: &'a str, out: &mut [Step<'a>; MAX_DEPTH + 1]) -> usize {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return 0;
    }
    let mut used = 0;
    for segment in trimmed.split('/') {
        if used == MAX_DEPTH {
            out[used] = Step::Rest;
            return used + 1;
        }
        out[used] = if is_id(segment) {
            Step::Id
        } else {
            Step::Literal(segment)
        };
        used += 1;
    }
    used
}

/// `/users/{id}/posts/{id2}` from the steps; the names are the ones [`template_steps`] reads.
fn render_template(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    let mut ids = 0;
    for step in steps {
        out.push('/');
        match step {
            Step::Literal(value) => out.push_str(value),
            Step::Id => {
                ids += 1;
                if ids == 1 {
                    out.push_str("{id}");
                } else {
                    out.push_str(&format!("{{id{ids}}}"));
                }
            }
            Step::Rest => out.push_str("{*rest}"),
        }
    }
    out
}

/// The steps of a template written by [`render_template`] (from a saved file), or `None` when it
/// is not one.
fn template_steps(template: &str) -> Option<Vec<Step<'_>>> {
    if template == "/" {
        return Some(Vec::new());
    }
    let rest = template.strip_prefix('/')?;
    let mut steps = Vec::new();
    for (index, segment) in rest.split('/').enumerate() {
        let step = if segment == "{*rest}" {
            Step::Rest
        } else if segment.starts_with("{id") && segment.ends_with('}') {
            Step::Id
        } else if segment.is_empty() || is_id(segment) {
            return None;
        } else {
            Step::Literal(segment)
        };
        // `{*rest}` stands exactly past the deepest position kept, and nothing follows it.
        if (step == Step::Rest) != (index == MAX_DEPTH) || index > MAX_DEPTH {
            return None;
        }
        steps.push(step);
    }
    Some(steps)
}

/// Whether a path segment is an identifier rather than a word of the API: an integer, a UUID, a
/// ULID, a long hex string, or a long token mixing letters and digits. Segments a route template
/// would read as syntax (`{`, `}`, a leading `*` or `:`) and overlong ones count as ids too, so
/// a literal can never change a draft rule's meaning.
pub fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    if bytes.len() > MAX_SEGMENT_BYTES
        || segment.contains(['{', '}'])
        || bytes[0] == b'*'
        || bytes[0] == b':'
    {
        return true;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return true;
    }
    is_uuid(bytes)
        || is_ulid(bytes)
        || (bytes.len() >= 8 && digits > 0 && bytes.iter().all(u8::is_ascii_hexdigit))
        || is_token(bytes, digits)
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// 26 characters of Crockford's base32 (no I, L, O, U), starting 0-7, with a digit among them
/// (an English word of 26 letters is not an id).
fn is_ulid(bytes: &[u8]) -> bool {
    bytes.len() == 26
        && matches!(bytes[0], b'0'..=b'7')
        && bytes.iter().all(|byte| {
            byte.is_ascii_digit()
                || (byte.is_ascii_alphabetic()
                    && !matches!(byte.to_ascii_uppercase(), b'I' | b'L' | b'O' | b'U'))
        })
}

/// A long opaque token (base64url, a slug with a number): 16 or more characters of letters,
/// digits, `-` and `_`, with at least two digits and a letter.
fn is_token(bytes: &[u8], digits: usize) -> bool {
    bytes.len() >= 16
        && digits >= 2
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-' || *byte == b'_')
}

#[cfg(test)]
mod tests;
