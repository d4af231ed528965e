//! Draft rules: the `[[rule]]` TOML that `auditgate rules from-openapi` writes for an API
//! document's operations and `auditgate rules suggest` and the viewer's coverage page write for
//! routes learned from traffic. One shape for both: an [`Operation`] (method, route template,
//! sample path, action and resource named from the path's words), ordered most specific path
//! first so no rule takes another's requests, each rendered with a unique name and action.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// One operation of the document, as the sidecar will see it.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Upper case: `DELETE`.
    pub method: String,
    /// The path as the document writes it, without the prefix: `/pet/{petId}`.
    pub document_path: String,
    /// Our route template, prefix included: `/v2/pet/{petId}`.
    pub template: String,
    /// Query conditions the document's path carries after a `?` (`/things?action=merge`).
    pub query: Vec<(String, String)>,
    /// A concrete path that the template matches, parameters filled with sample values.
    pub sample_path: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
    pub action: String,
    pub resource_type: String,
    /// A parameter name of `template` (`petId`) or a response source (`response.body:/id`).
    pub resource_id: Option<String>,
    /// Whether the document marks the operation deprecated.
    pub deprecated: bool,
}

/// Lower snake case: `uploadImage` -> `upload_image`, `Pet-Store` -> `pet_store`. A word that
/// would begin `request_` or `response_` keeps those joined (`requestbody`), since `check`
/// rightly takes `request_body.created` for a mistyped `request.body:` source.
pub fn snake(text: &str) -> String {
    let word = snake_case(text);
    for side in ["request_", "response_"] {
        if let Some(rest) = word.strip_prefix(side) {
            return format!("{}{rest}", side.trim_end_matches('_'));
        }
    }
    word
}

pub fn snake_case(text: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        if c.is_uppercase() {
            if previous_lower {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            previous_lower = false;
        } else if c.is_alphanumeric() {
            out.push(c);
            previous_lower = true;
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = false;
        }
    }
    out.trim_matches('_').to_string()
}

/// `pets` -> `pet`, `categories` -> `category`, `addresses` -> `address`; `status` stays.
pub fn singular(word: &str) -> String {
    if let Some(stem) = word.strip_suffix("ies") {
        if !stem.is_empty() {
            return format!("{stem}y");
        }
    }
    for ending in ["sses", "xes", "ches", "shes"] {
        if word.ends_with(ending) {
            return word[..word.len() - 2].to_string();
        }
    }
    if word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") && word.len() > 3 {
        return word[..word.len() - 1].to_string();
    }
    word.to_string()
}

/// `createWithList`, but not `Pets` or `pets`.
pub fn is_camel_case(word: &str) -> bool {
    word.chars().skip(1).any(|c| c.is_ascii_uppercase())
        && word.chars().any(|c| c.is_ascii_lowercase())
}

pub fn is_plural(word: &str) -> bool {
    singular(word) != word
}

/// Segments that name the API, not a resource: `api`, `v1`, `2.0`, `rest`.
pub fn is_version_or_api(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    lower == "api"
        || lower == "rest"
        || lower
            .trim_start_matches('v')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
}

pub fn verb(method: &str) -> &'static str {
    match method {
        "post" => "created",
        "put" | "patch" => "updated",
        "delete" => "deleted",
        _ => "read",
    }
}

/// The action, the resource type, and whether the path's last parameter is the resource's id,
/// from the path's words, the method, and whether the path has a parameter at all.
pub fn action_and_resource(
    method: &str,
    words: Vec<(String, bool)>,
    has_parameter: bool,
) -> (String, String, bool) {
    let words: Vec<(String, bool)> = words
        .into_iter()
        .filter(|(word, _)| !is_version_or_api(word) && !snake(word).is_empty())
        .collect();
    match words.as_slice() {
        [] => (
            format!("resource.{}", verb(method)),
            "resource".to_string(),
            has_parameter,
        ),
        [.., (parent, parent_followed), (last, false)]
            if is_camel_case(last) && !snake(last).is_empty() =>
        {
            // `/user/createWithList`: a command on the parent.
            let parent = snake(&singular(parent));
            (
                format!("{parent}.{}", snake(last)),
                parent,
                *parent_followed,
            )
        }
        [.., (parent, true), (last, false)] if !is_plural(last) && !snake(last).is_empty() => {
            // `/pet/{petId}/uploadImage`: a command on the parent, not a new kind of thing.
            let parent = snake(&singular(parent));
            (format!("{parent}.{}", snake(last)), parent, true)
        }
        [.., (last, followed)] => {
            let resource = snake(&singular(last));
            let resource = if resource.is_empty() {
                "resource".to_string()
            } else {
                resource
            };
            let read = match method {
                "get" if *followed => "viewed",
                "get" => "listed",
                // A POST to one resource's own path changes it; it creates nothing.
                "post" if *followed => "updated",
                _ => verb(method),
            };
            (format!("{resource}.{read}"), resource, *followed)
        }
    }
}

/// Text for a one-line comment: control characters become spaces, long text is cut.
pub fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.chars().count() > 120 {
        let cut: String = cleaned.chars().take(117).collect();
        format!("{cut}...")
    } else {
        cleaned
    }
}

/// The sort key that puts more specific templates first, since the first matching rule wins:
/// at each segment a literal before a mixed segment (`{id}.json`) before a bare parameter.
pub fn specificity_key(template: &str) -> Vec<(u8, String)> {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{')
                && segment.ends_with('}')
                && segment.matches('{').count() == 1
            {
                (2, String::new())
            } else if segment.contains('{') {
                (1, segment.to_string())
            } else {
                (0, segment.to_string())
            }
        })
        .collect()
}

/// The template with its parameter names blanked: two templates with the same shape match the
/// same paths.
pub fn shape(template: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in template.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("{}");
            }
            '}' => inside = false,
            _ if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// Orders operations so no rule takes another's requests, and makes every action unique.
pub fn order_and_disambiguate(operations: &mut [Operation]) {
    let method_rank = |method: &str| {
        ["POST", "PUT", "PATCH", "DELETE", "GET"]
            .iter()
            .position(|m| *m == method)
            .unwrap_or(9)
    };
    operations.sort_by(|a, b| {
        specificity_key(&a.template)
            .cmp(&specificity_key(&b.template))
            // A rule with query conditions goes before the same route without them.
            .then_with(|| b.query.len().cmp(&a.query.len()))
            .then_with(|| method_rank(&a.method).cmp(&method_rank(&b.method)))
    });
    let mut counts: HashMap<String, usize> = HashMap::new();
    for operation in operations.iter() {
        *counts.entry(operation.action.clone()).or_default() += 1;
    }
    let mut used: HashSet<String> = HashSet::new();
    for operation in operations.iter_mut() {
        if counts.get(&operation.action).copied().unwrap_or(0) > 1 {
            // Two operations would record the same action: the operationId tells them apart,
            // else the path's own words.
            let detail = operation
                .operation_id
                .as_deref()
                .map(snake)
                .filter(|text| !text.is_empty())
                .unwrap_or_else(|| snake(&operation.document_path));
            let (resource, verb) = operation
                .action
                .rsplit_once('.')
                .map(|(r, v)| (r.to_string(), v.to_string()))
                .unwrap_or_default();
            operation.action = format!("{resource}.{verb}.{detail}");
        }
        let base = operation.action.clone();
        let mut counter = 2;
        while !used.insert(operation.action.clone()) {
            operation.action = format!("{base}_{counter}");
            counter += 1;
        }
    }
}

/// Method, template shape and query conditions: what decides which requests a rule takes.
pub type RouteShape = (String, String, Vec<(String, String)>);

pub fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `: operationId createPet - Creates a pet - deprecated` after a rule's method and path, or
/// nothing when the document says nothing of the operation.
pub fn operation_comment(operation: &Operation) -> String {
    let mut comment = Vec::new();
    if let Some(id) = &operation.operation_id {
        comment.push(format!("operationId {id}"));
    }
    if let Some(summary) = &operation.summary {
        comment.push(summary.clone());
    }
    if operation.deprecated {
        comment.push("deprecated".to_string());
    }
    if comment.is_empty() {
        String::new()
    } else {
        format!(": {}", comment.join(" - "))
    }
}

/// The names given to rules so far, and which rule takes each route shape first.
#[derive(Default)]
pub struct RuleNames {
    shapes: HashMap<RouteShape, String>,
    names: HashSet<String>,
}

impl RuleNames {
    /// A unique name for the operation's rule (`POST /pets?kind=cat`, `... (2)` when taken), and
    /// the name of an earlier rule that takes the same requests, if any: then this rule is
    /// written commented out.
    pub fn name(&mut self, operation: &Operation) -> (String, Option<String>) {
        let key = (
            operation.method.clone(),
            shape(&operation.template),
            operation.query.clone(),
        );
        let earlier = self.shapes.get(&key).cloned();
        let mut name = format!("{} {}", operation.method, operation.template);
        if !operation.query.is_empty() {
            let query: Vec<String> = operation
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            name = format!("{name}?{}", query.join("&"));
        }
        let base = name.clone();
        let mut counter = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base} ({counter})");
            counter += 1;
        }
        if earlier.is_none() {
            self.shapes.insert(key, name.clone());
        }
        (name, earlier)
    }
}

pub fn rule_lines(operation: &Operation, name: &str) -> Vec<String> {
    let mut lines = vec![
        "[[rule]]".to_string(),
        format!("name = {}", toml_string(name)),
        format!("method = {}", toml_string(&operation.method)),
    ];
    // `*` or `:name` at a segment's start would be read as a mistyped wildcard or parameter;
    // the same route as a regex says exactly what it matches.
    if crate::request::route::literal_only_path(&operation.template).is_some() {
        match crate::request::route::compile_route(&operation.template) {
            Ok((pattern, _)) => lines.push(format!("path_regex = {}", toml_string(&pattern))),
            Err(_) => lines.push(format!("path = {}", toml_string(&operation.template))),
        }
    } else {
        lines.push(format!("path = {}", toml_string(&operation.template)));
    }
    if !operation.query.is_empty() {
        let pairs: Vec<String> = operation
            .query
            .iter()
            .map(|(key, value)| format!("{} = {}", toml_string(key), toml_string(value)))
            .collect();
        lines.push(format!("query = {{ {} }}", pairs.join(", ")));
    }
    lines.push("status = \"2xx\"".to_string());
    lines.push(format!("action = {}", toml_string(&operation.action)));
    match &operation.resource_id {
        Some(id) => lines.push(format!(
            "resource = {{ type = {}, id = {} }}",
            toml_string(&operation.resource_type),
            toml_string(id)
        )),
        None => lines.push(format!(
            "resource = {{ type = {} }}",
            toml_string(&operation.resource_type)
        )),
    }
    lines
}

/// The words of a route template for naming its action: each literal segment, and whether a
/// parameter follows it; and whether the template has a parameter at all.
pub fn template_words(template: &str) -> (Vec<(String, bool)>, bool) {
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut has_parameter = false;
    for segment in template.split('/').filter(|segment| !segment.is_empty()) {
        if segment.starts_with('{') {
            has_parameter = true;
            if let Some(last) = words.last_mut() {
                last.1 = true;
            }
        } else {
            words.push((segment.to_string(), false));
        }
    }
    (words, has_parameter)
}

/// An operation for a route seen in traffic: `template` uses `{name}` parameters (and
/// `{*rest}`), `sample_path` is one path it was seen with. The resource id is the template's
/// last parameter when the action is about one resource.
pub fn learned_operation(method: &str, template: &str, sample_path: &str) -> Operation {
    let (words, has_parameter) = template_words(template);
    let lower = method.to_ascii_lowercase();
    let (action, resource_type, has_id) = action_and_resource(&lower, words, has_parameter);
    let last_parameter = template
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .rfind(|name| !name.starts_with('*'));
    Operation {
        method: method.to_ascii_uppercase(),
        document_path: template.to_string(),
        template: template.to_string(),
        query: Vec::new(),
        sample_path: sample_path.to_string(),
        operation_id: None,
        summary: None,
        action,
        resource_type,
        resource_id: last_parameter
            .filter(|_| has_id)
            .map(|name| format!("{{{name}}}")),
        deprecated: false,
    }
}

/// The `[[rule]]` of each operation, in their order, each under a `# METHOD path` comment line
/// (and `extra`'s text for it); a rule that another above already takes is written commented
/// out.
pub fn render_rules(operations: &[Operation], extra: &dyn Fn(&Operation) -> String) -> String {
    let mut out = String::new();
    let mut rules = RuleNames::default();
    for operation in operations {
        out.push('\n');
        let _ = writeln!(
            out,
            "# {} {}{}",
            operation.method,
            one_line(&operation.document_path),
            extra(operation)
        );
        let (name, earlier) = rules.name(operation);
        let commented = if let Some(earlier) = earlier {
            let _ = writeln!(
                out,
                "# Same requests as the rule {earlier:?} above, which takes them first:"
            );
            "# "
        } else {
            ""
        };
        for line in rule_lines(operation, &name) {
            let _ = writeln!(out, "{commented}{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_routes_are_named_from_their_words() {
        let delete = learned_operation("DELETE", "/api/users/{id}", "/api/users/7");
        assert_eq!(delete.action, "user.deleted");
        assert_eq!(delete.resource_id.as_deref(), Some("{id}"));
        let create = learned_operation("POST", "/api/v1/orders", "/api/v1/orders");
        assert_eq!(
            (create.action.as_str(), create.resource_id),
            ("order.created", None)
        );
        let role = learned_operation("PATCH", "/users/{id}/role", "/users/1/role");
        assert_eq!(role.action, "user.role");
        let text = render_rules(&[role], &|_| String::new());
        assert!(text.contains("path = \"/users/{id}/role\""), "{text}");
        assert!(text.contains("action = \"user.role\""), "{text}");
    }
}
