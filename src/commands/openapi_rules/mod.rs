//! Rules from an app's OpenAPI document (`auditgate rules from-openapi`) and the coverage of a
//! configuration against one (`auditgate check --coverage`).
//!
//! Both read the document the same way: every operation (OpenAPI 3.x or Swagger 2.0, JSON or
//! YAML) becomes an [`Operation`] with the route template the sidecar will see — the server's
//! path prefix (`servers[0].url`, or Swagger's `basePath`) put in front, parameter names made
//! valid for our templates, literal text percent-encoded as clients send it — an action named
//! from the resource and the verb, and a concrete sample path. Generation writes one rule per
//! operation; coverage runs each sample path through the configuration's own rule matcher.
//!
//! Documents come from outside: nothing in them may panic. A document that is not an API
//! description is an error naming where; an operation that cannot be turned into a rule is left
//! out with a note saying why, so one odd path does not cost the rest.

mod yaml;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::config::Config;
pub use crate::policy::draft::Operation;
use crate::policy::draft::{
    action_and_resource, one_line, operation_comment, order_and_disambiguate, render_rules,
    toml_string,
};
#[cfg(test)]
use crate::policy::draft::{is_version_or_api, singular, snake};
use crate::policy::rules::RuleKind;

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: String, message: String },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: {location}: {message}")]
    Document {
        path: String,
        location: String,
        message: String,
    },
}

/// The methods that change state; the others are reads.
const STATE_CHANGING: [&str; 4] = ["post", "put", "patch", "delete"];
const READS: [&str; 1] = ["get"];

/// What was read from a document.
#[derive(Debug, Default)]
pub struct Document {
    pub title: String,
    /// `OpenAPI 3.0.3` or `Swagger 2.0`.
    pub kind: String,
    /// The path prefix put in front of every path, and where it came from.
    pub prefix: String,
    pub prefix_origin: String,
    pub operations: Vec<Operation>,
    /// Request field and parameter names that hold secrets, for `[redact]`.
    pub sensitive_fields: BTreeSet<String>,
    /// Operations left out, each with where and why.
    pub skipped: Vec<String>,
}

/// How to read a document.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Reads (GET) too, not only the methods that change state.
    pub reads: bool,
    /// A prefix to use instead of the document's servers or basePath (`""` for none).
    pub base_path: Option<String>,
}

/// Reads a JSON or YAML file into a JSON value.
pub fn load_file(path: &Path) -> Result<Value, OpenApiError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| OpenApiError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_text(&text, &shown)
}

/// Parses document text: JSON when it starts with `{`, YAML otherwise.
pub fn parse_text(text: &str, shown: &str) -> Result<Value, OpenApiError> {
    let text = text.trim_start_matches('\u{feff}');
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|error| OpenApiError::Json {
            path: shown.to_string(),
            message: error.to_string(),
        })
    } else {
        yaml::to_json(text).map_err(|message| OpenApiError::Yaml {
            path: shown.to_string(),
            message,
        })
    }
}

/// Reads the operations of a parsed document.
pub fn read_document(
    root: &Value,
    shown: &str,
    options: &ReadOptions,
) -> Result<Document, OpenApiError> {
    let error = |location: &str, message: &str| OpenApiError::Document {
        path: shown.to_string(),
        location: location.to_string(),
        message: message.to_string(),
    };
    let Some(object) = root.as_object() else {
        return Err(error("the top level", "is not a mapping"));
    };
    let kind = document_kind(object).map_err(|(location, message)| error(location, &message))?;
    let swagger = kind.starts_with("Swagger");
    let paths = match object.get("paths") {
        Some(Value::Object(paths)) => paths.clone(),
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(_) => return Err(error("paths", "is not a mapping")),
    };
    let title = object
        .get("info")
        .and_then(|info| info.get("title"))
        .and_then(Value::as_str)
        .unwrap_or("untitled")
        .to_string();
    let (prefix, prefix_origin) = document_prefix(object, options, swagger);
    let mut document = Document {
        title,
        kind,
        prefix: prefix.clone(),
        prefix_origin,
        ..Document::default()
    };
    let walk = Walk {
        resolver: Resolver { root },
        options,
        swagger,
        prefix,
        methods: STATE_CHANGING
            .iter()
            .chain(if options.reads { &READS[..] } else { &[] })
            .copied()
            .collect(),
    };
    for (document_path, item) in &paths {
        walk.path_item(document_path, item, &mut document);
    }
    order_and_disambiguate(&mut document.operations);
    Ok(document)
}

/// `OpenAPI 3.0.3` or `Swagger 2.0`, or where and why the document is neither.
fn document_kind(object: &serde_json::Map<String, Value>) -> Result<String, (&str, String)> {
    match (object.get("openapi"), object.get("swagger")) {
        (Some(Value::String(version)), _) if version.starts_with('3') => {
            Ok(format!("OpenAPI {version}"))
        }
        (_, Some(Value::String(version))) if version.starts_with('2') => {
            Ok(format!("Swagger {version}"))
        }
        (Some(other), _) | (None, Some(other)) => Err((
            "openapi",
            format!("version {other} is not OpenAPI 3.x or Swagger 2.0"),
        )),
        (None, None) => Err((
            "the top level",
            "has neither `openapi` nor `swagger`: this is not an OpenAPI document".to_string(),
        )),
    }
}

/// The path prefix put in front of every path, and where it came from.
fn document_prefix(
    object: &serde_json::Map<String, Value>,
    options: &ReadOptions,
    swagger: bool,
) -> (String, String) {
    match &options.base_path {
        Some(prefix) => (clean_prefix(prefix), "--base-path".to_string()),
        None if swagger => (
            clean_prefix(object.get("basePath").and_then(Value::as_str).unwrap_or("")),
            "basePath".to_string(),
        ),
        None => (
            server_prefix(object.get("servers")),
            "servers[0].url".to_string(),
        ),
    }
}

/// The walk over a document's paths: what every path item and operation is read with.
struct Walk<'a> {
    resolver: Resolver<'a>,
    options: &'a ReadOptions,
    swagger: bool,
    /// The document's path prefix.
    prefix: String,
    /// The methods whose operations become rules.
    methods: Vec<&'static str>,
}

impl Walk<'_> {
    /// Reads the operations of one path item into `document`, or notes why they are left out.
    fn path_item(&self, document_path: &str, item: &Value, document: &mut Document) {
        let location = format!("paths.{document_path}");
        if document_path.starts_with("x-") {
            return;
        }
        let Some(item) = self.resolver.resolve(item).and_then(Value::as_object) else {
            document
                .skipped
                .push(format!("{location}: not a mapping (or a $ref to nothing)"));
            return;
        };
        // A path item's own servers take over from the document's (OpenAPI 3).
        let own_servers = self.options.base_path.is_none() && !self.swagger;
        let item_prefix = if own_servers && item.contains_key("servers") {
            server_prefix(item.get("servers"))
        } else {
            self.prefix.clone()
        };
        for method in &self.methods {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            let where_ = format!("{location}.{method}");
            let Some(operation) = self.resolver.resolve(operation).and_then(Value::as_object)
            else {
                document.skipped.push(format!("{where_}: not a mapping"));
                continue;
            };
            let op_prefix = match operation.get("servers") {
                Some(servers) if own_servers => server_prefix(Some(servers)),
                _ => item_prefix.clone(),
            };
            let parameters = merged_parameters(
                &self.resolver,
                item.get("parameters"),
                operation.get("parameters"),
            );
            collect_sensitive(
                &self.resolver,
                &parameters,
                operation,
                self.swagger,
                &mut document.sensitive_fields,
            );
            match build_operation(
                &self.resolver,
                method,
                document_path,
                &op_prefix,
                operation,
                &parameters,
                self.swagger,
            ) {
                Ok(built) => document.operations.push(built),
                Err(message) => document.skipped.push(format!("{where_}: {message}")),
            }
        }
    }
}

/// `/v1/` -> `/v1`; `` and `/` -> ``.
fn clean_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// The path of the first server's URL, its variables replaced by their defaults:
/// `https://api.example.com/{version}/` with `version: {default: v2}` -> `/v2`.
fn server_prefix(servers: Option<&Value>) -> String {
    let Some(server) = servers
        .and_then(Value::as_array)
        .and_then(|list| list.first())
    else {
        return String::new();
    };
    let Some(url) = server.get("url").and_then(Value::as_str) else {
        return String::new();
    };
    let mut url = url.to_string();
    if let Some(variables) = server.get("variables").and_then(Value::as_object) {
        for (name, variable) in variables {
            if let Some(default) = variable.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    let path = match url.find("://") {
        Some(scheme_end) => {
            let after = &url[scheme_end + 3..];
            after.find('/').map(|slash| &after[slash..]).unwrap_or("")
        }
        None if url.starts_with("//") => url[2..]
            .find('/')
            .map(|slash| &url[2 + slash..])
            .unwrap_or(""),
        None => url.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    // A variable without a default leaves a `{...}` that no request path holds literally.
    if path.contains('{') {
        return String::new();
    }
    clean_prefix(path)
}

/// Follows local `$ref`s (`#/components/schemas/Pet`), at most a few hops, so a cycle of
/// references ends.
struct Resolver<'a> {
    root: &'a Value,
}

impl<'a> Resolver<'a> {
    fn resolve(&self, mut value: &'a Value) -> Option<&'a Value> {
        for _ in 0..16 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(reference) => value = self.pointer(reference)?,
                None => return Some(value),
            }
        }
        None
    }

    fn pointer(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        let decoded = percent_encoding::percent_decode_str(pointer)
            .decode_utf8()
            .ok()?;
        self.root.pointer(&decoded)
    }
}

/// The operation's parameters over the path item's (an operation's parameter replaces the path
/// item's of the same name and location).
fn merged_parameters<'a>(
    resolver: &Resolver<'a>,
    shared: Option<&'a Value>,
    own: Option<&'a Value>,
) -> Vec<&'a serde_json::Map<String, Value>> {
    let mut merged: Vec<&serde_json::Map<String, Value>> = Vec::new();
    for list in [shared, own].into_iter().flatten() {
        for parameter in list.as_array().into_iter().flatten() {
            let Some(parameter) = resolver.resolve(parameter).and_then(Value::as_object) else {
                continue;
            };
            let key = |p: &serde_json::Map<String, Value>| {
                (
                    p.get("name").and_then(Value::as_str).map(str::to_string),
                    p.get("in").and_then(Value::as_str).map(str::to_string),
                )
            };
            merged.retain(|existing| key(existing) != key(parameter));
            merged.push(parameter);
        }
    }
    merged
}

/// One piece of a document path.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Parameter(String),
}

/// Splits `/pets/{petId}.json` into segments of pieces.
fn split_path(path: &str) -> Result<Vec<Vec<Piece>>, String> {
    if !path.starts_with('/') {
        return Err(format!("the path `{path}` does not start with `/`"));
    }
    let mut segments = Vec::new();
    for segment in path[1..].split('/') {
        let mut pieces = Vec::new();
        let mut rest = segment;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    rest = "";
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(format!("the path `{path}` has a `}}` with no `{{`"))
                }
                Some(open) => {
                    if open > 0 {
                        pieces.push(Piece::Literal(rest[..open].to_string()));
                    }
                    let close = rest[open..]
                        .find('}')
                        .map(|offset| open + offset)
                        .ok_or_else(|| format!("the path `{path}` has a `{{` never closed"))?;
                    let name = &rest[open + 1..close];
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("the path `{path}` has an empty or nested `{{}}`"));
                    }
                    pieces.push(Piece::Parameter(name.to_string()));
                    rest = &rest[close + 1..];
                }
            }
        }
        segments.push(pieces);
    }
    Ok(segments)
}

/// A parameter name our templates accept: letters, digits and `_`, not starting with a digit.
fn template_name(name: &str, taken: &HashSet<String>) -> String {
    let mut cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if cleaned.is_empty() || cleaned.starts_with(|c: char| c.is_ascii_digit()) {
        cleaned.insert(0, '_');
    }
    let mut candidate = cleaned.clone();
    let mut counter = 2;
    while taken.contains(&candidate) {
        candidate = format!("{cleaned}_{counter}");
        counter += 1;
    }
    candidate
}

/// What clients send literally in a path; everything else they percent-encode.
fn is_path_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&byte)
}

fn encode_literal(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if is_path_char(byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A sample value for a path parameter: its example or first enum value when it has one, else
/// one of its type.
fn sample_value(parameter: Option<&serde_json::Map<String, Value>>, resolver: &Resolver) -> String {
    let schema = parameter.and_then(|p| match p.get("schema") {
        Some(schema) => resolver.resolve(schema).and_then(Value::as_object),
        None => Some(p),
    });
    let from = |value: Option<&Value>| match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    let chosen = parameter
        .and_then(|p| from(p.get("example")))
        .or_else(|| schema.and_then(|s| from(s.get("example"))))
        .or_else(|| {
            schema
                .and_then(|s| s.get("enum"))
                .and_then(Value::as_array)
                .and_then(|values| from(values.first()))
        });
    let text = chosen.unwrap_or_else(|| {
        match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
            Some("integer" | "number") => "1".to_string(),
            _ => "sample".to_string(),
        }
    });
    // A slash inside the value would make it two segments, which no `{param}` matches.
    percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Builds the operation, or says why it cannot be a rule.
fn build_operation(
    resolver: &Resolver,
    method: &str,
    document_path: &str,
    prefix: &str,
    operation: &serde_json::Map<String, Value>,
    parameters: &[&serde_json::Map<String, Value>],
    swagger: bool,
) -> Result<Operation, String> {
    let (path_part, query_part) = match document_path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (document_path, None),
    };
    let path_part = path_part.split('#').next().unwrap_or(path_part);
    let route = Route::read(resolver, document_path, path_part, prefix, parameters)?;
    let query = query_conditions(document_path, query_part)?;
    // The template must compile as the sidecar will compile it.
    crate::request::route::compile_route(&route.template)?;

    let (action, resource_type, has_id) =
        action_and_resource(method, route.words, route.last_parameter.is_some());
    let resource_id = match route.last_parameter.filter(|_| has_id) {
        Some(name) => Some(format!("{{{name}}}")),
        // A create names its new resource only in its answer.
        None if method == "post" => created_id_pointer(resolver, operation, swagger)
            .map(|pointer| format!("response.body:{pointer}")),
        None => None,
    };
    let text = |key: &str| {
        operation
            .get(key)
            .and_then(Value::as_str)
            .map(one_line)
            .filter(|text| !text.is_empty())
    };
    Ok(Operation {
        method: method.to_ascii_uppercase(),
        document_path: document_path.to_string(),
        template: route.template,
        query,
        sample_path: route.sample,
        operation_id: text("operationId"),
        summary: text("summary"),
        action,
        resource_type,
        resource_id,
        deprecated: operation.get("deprecated") == Some(&Value::Bool(true)),
    })
}

/// A document path as the sidecar will see it, and the words its action is named from.
struct Route {
    /// Our route template, prefix included.
    template: String,
    /// A concrete path the template matches.
    sample: String,
    /// Each literal segment, and whether a parameter follows it.
    words: Vec<(String, bool)>,
    /// Our name of the path's last parameter.
    last_parameter: Option<String>,
}

impl Route {
    /// Reads `path` (the document's path without its query), with `prefix` in front.
    fn read(
        resolver: &Resolver,
        document_path: &str,
        path: &str,
        prefix: &str,
        parameters: &[&serde_json::Map<String, Value>],
    ) -> Result<Route, String> {
        let segments = split_path(path)?;
        let mut taken = HashSet::new();
        let mut renamed: HashMap<String, String> = HashMap::new();
        let template = String::from(&encode_literal(prefix)[..]);
        let mut route = Route {
            sample: template.clone(),
            template,
            words: Vec::new(),
            last_parameter: None,
        };
        for segment in &segments {
            route.template.push('/');
            route.sample.push('/');
            for piece in segment {
                match piece {
                    Piece::Literal(text) => {
                        route.template.push_str(&encode_literal(text));
                        route.sample.push_str(&encode_literal(text));
                    }
                    Piece::Parameter(name) => {
                        let ours = renamed
                            .entry(name.clone())
                            .or_insert_with(|| {
                                let ours = template_name(name, &taken);
                                taken.insert(ours.clone());
                                ours
                            })
                            .clone();
                        if route.template.ends_with('}') {
                            return Err(format!(
                                "two parameters follow each other in `{document_path}`; no \
                                 template can tell where one ends"
                            ));
                        }
                        route.template.push_str(&format!("{{{ours}}}"));
                        let declared = parameters.iter().copied().find(|p| {
                            p.get("in").and_then(Value::as_str) == Some("path")
                                && p.get("name").and_then(Value::as_str) == Some(name)
                        });
                        route.sample.push_str(&sample_value(declared, resolver));
                        route.last_parameter = Some(ours);
                    }
                }
            }
            add_words(segment, &mut route.words);
        }
        if route.template.is_empty() {
            route.template.push('/');
            route.sample.push('/');
        }
        Ok(route)
    }
}

/// Adds a segment's words for the action: a literal segment is a word; a parameter marks the
/// word before it as followed by one.
fn add_words(segment: &[Piece], words: &mut Vec<(String, bool)>) {
    match segment {
        [] => {}
        [Piece::Literal(text)] => words.push((text.clone(), false)),
        [Piece::Parameter(_)] => {
            if let Some(last) = words.last_mut() {
                last.1 = true;
            }
        }
        pieces => {
            // `{name}:cancel` (Google) or `{id}.json`: the literal part after a parameter
            // is a custom method or a format, not a resource.
            let literal: String = pieces
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Literal(text) => Some(text.trim_matches(|c: char| !c.is_alphanumeric())),
                    Piece::Parameter(_) => None,
                })
                .collect();
            if let Some(last) = words.last_mut() {
                last.1 = true;
            }
            let is_format = matches!(literal.as_str(), "json" | "xml" | "yaml" | "csv" | "txt");
            if !literal.is_empty() && !is_format {
                words.push((literal, false));
            }
        }
    }
}

/// The conditions of a query the document writes after the path (`/things?action=merge`): a
/// fixed value must be sent as written; a `{placeholder}` or empty value only present.
fn query_conditions(
    document_path: &str,
    query: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let query: Vec<(String, String)> = query
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .map(|(key, value)| {
                    let condition = if value.starts_with('{') || value.is_empty() {
                        "*".to_string()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), condition)
                })
                .collect()
        })
        .unwrap_or_default();
    if query.iter().any(|(key, _)| key.is_empty()) {
        return Err(format!("the query in `{document_path}` has an empty name"));
    }
    Ok(query)
}

/// The schema of the success response a create answers with: 201, else 200, else another 2xx.
fn success_schema<'a>(
    resolver: &Resolver<'a>,
    operation: &'a serde_json::Map<String, Value>,
    swagger: bool,
) -> Option<&'a Value> {
    let responses = operation.get("responses")?.as_object()?;
    let mut codes: Vec<&String> = responses
        .keys()
        .filter(|code| code.starts_with('2'))
        .collect();
    codes.sort_by_key(|code| match code.as_str() {
        "201" => 0,
        "200" => 1,
        _ => 2,
    });
    for code in codes {
        let Some(response) = resolver.resolve(&responses[code.as_str()]) else {
            continue;
        };
        let schema = if swagger {
            response.get("schema")
        } else {
            let content = response.get("content").and_then(Value::as_object);
            content.and_then(|content| {
                content
                    .iter()
                    .find(|(media, _)| media.contains("json"))
                    .and_then(|(_, media)| media.get("schema"))
            })
        };
        if let Some(schema) = schema.and_then(|schema| resolver.resolve(schema)) {
            return Some(schema);
        }
    }
    None
}

/// The properties of an object schema, `allOf` parts included.
fn properties<'a>(
    resolver: &Resolver<'a>,
    schema: &'a Value,
    depth: usize,
) -> Vec<(&'a String, &'a Value)> {
    let mut out = Vec::new();
    if depth > 8 {
        return out;
    }
    if let Some(own) = schema.get("properties").and_then(Value::as_object) {
        out.extend(own.iter());
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(part) = resolver.resolve(part) {
            out.extend(properties(resolver, part, depth + 1));
        }
    }
    out
}

/// The JSON pointer of the created resource's id in the response body: `/id`, `/uuid`, or the
/// same inside a `data` wrapper (`/data/id`).
fn created_id_pointer(
    resolver: &Resolver,
    operation: &serde_json::Map<String, Value>,
    swagger: bool,
) -> Option<String> {
    let schema = success_schema(resolver, operation, swagger)?;
    let id_name = |schema: &Value| {
        let names: Vec<&String> = properties(resolver, schema, 0)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        ["id", "uuid", "_id", "ID", "Id", "sid"]
            .iter()
            .find_map(|wanted| names.iter().find(|name| name.as_str() == *wanted).copied())
            .cloned()
    };
    if let Some(name) = id_name(schema) {
        return Some(format!("/{}", escape_pointer(&name)));
    }
    let data = properties(resolver, schema, 0)
        .into_iter()
        .find(|(name, _)| name.as_str() == "data")
        .and_then(|(_, data)| resolver.resolve(data))?;
    id_name(data).map(|name| format!("/data/{}", escape_pointer(&name)))
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Whether a field name holds a secret: passwords, tokens, secrets, API keys.
fn is_sensitive_name(name: &str) -> bool {
    let normalized: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "privatekey",
        "accesskey",
        "credential",
    ]
    .iter()
    .any(|marker| normalized.contains(marker))
        || normalized == "pwd"
}

/// Adds the sensitive names of an operation's request: parameters, form fields and the
/// properties of its request body at any depth.
fn collect_sensitive(
    resolver: &Resolver,
    parameters: &[&serde_json::Map<String, Value>],
    operation: &serde_json::Map<String, Value>,
    swagger: bool,
    found: &mut BTreeSet<String>,
) {
    let mut seen = HashSet::new();
    for parameter in parameters {
        let Some(name) = parameter.get("name").and_then(Value::as_str) else {
            continue;
        };
        let place = parameter.get("in").and_then(Value::as_str).unwrap_or("");
        if place == "body" {
            if let Some(schema) = parameter.get("schema") {
                sensitive_in_schema(resolver, schema, found, &mut seen, 0);
            }
            continue;
        }
        let password_format = parameter.get("format").and_then(Value::as_str) == Some("password")
            || parameter
                .get("schema")
                .and_then(|schema| resolver.resolve(schema))
                .and_then(|schema| schema.get("format"))
                .and_then(Value::as_str)
                == Some("password");
        if is_sensitive_name(name) || password_format {
            found.insert(name.to_string());
        }
    }
    if swagger {
        return;
    }
    let body = operation
        .get("requestBody")
        .and_then(|body| resolver.resolve(body));
    let media = body
        .and_then(|body| body.get("content"))
        .and_then(Value::as_object);
    for media in media.into_iter().flat_map(|media| media.values()) {
        if let Some(schema) = media.get("schema") {
            sensitive_in_schema(resolver, schema, found, &mut seen, 0);
        }
    }
}

fn sensitive_in_schema(
    resolver: &Resolver,
    schema: &Value,
    found: &mut BTreeSet<String>,
    seen: &mut HashSet<*const Value>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    let Some(schema) = resolver.resolve(schema) else {
        return;
    };
    // Recursive schemas (a tree node holding its children) are walked once.
    if !seen.insert(schema as *const Value) {
        return;
    }
    if let Some(own) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in own {
            let format = resolver
                .resolve(property)
                .and_then(|p| p.get("format"))
                .and_then(Value::as_str);
            if is_sensitive_name(name) || format == Some("password") {
                found.insert(name.clone());
            }
            sensitive_in_schema(resolver, property, found, seen, depth + 1);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for part in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            sensitive_in_schema(resolver, part, found, seen, depth + 1);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(key).filter(|inner| inner.is_object()) {
            sensitive_in_schema(resolver, inner, found, seen, depth + 1);
        }
    }
}

/// A `[[rule]]` per operation and a `[redact]` section, as TOML.
pub fn render(document: &Document, source: &str) -> String {
    let mut out = render_header(document, source);
    out.push_str(&render_rules(&document.operations, &operation_comment));
    if !document.sensitive_fields.is_empty() {
        let fields: Vec<String> = document
            .sensitive_fields
            .iter()
            .map(|field| toml_string(field))
            .collect();
        let _ = writeln!(
            out,
            "\n# Request fields the document marks or names as secrets: stored as [redacted]. \
             (If your config already has a [redact] section, merge these fields into it.)\n\
             [redact]\nfields = [{}]",
            fields.join(", ")
        );
    }
    out
}

/// The comment lines above the rules: where they come from, the prefix, how to use them, and
/// the operations left out.
fn render_header(document: &Document, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rules for {:?} ({}), written by `auditgate rules from-openapi` from {}.",
        one_line(&document.title),
        document.kind,
        one_line(source)
    );
    let _ =
        writeln!(
        out,
        "# Path prefix: {} (from {}); the sidecar sees paths as the app receives them, so change \
         it with --base-path if a gateway strips or adds one.",
        if document.prefix.is_empty() { "none" } else { document.prefix.as_str() },
        document.prefix_origin
    );
    let _ = writeln!(
        out,
        "# Rules are ordered most specific path first (the first match wins). Review the actions \
         and resources, then append this to your config."
    );
    for note in &document.skipped {
        let _ = writeln!(out, "# Left out: {}", one_line(note));
    }
    out
}

/// How a configuration handles one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Recorded by this rule.
    Rule(String),
    /// Deliberately not recorded by this skip rule.
    Skipped(String),
    /// Only the generic `http.<method>` entry records it.
    GenericFallback,
    /// Nothing records it.
    NotRecorded,
}

/// How `config` handles a successful request of each operation, through the sidecar's own rule
/// matcher on the operation's sample path.
pub fn coverage<'a>(
    config: &Config,
    operations: &'a [Operation],
) -> Vec<(&'a Operation, Coverage)> {
    let rules = &config.policy.rules;
    let headers = http::HeaderMap::new();
    operations
        .iter()
        .map(|operation| {
            let Ok(method) = http::Method::from_bytes(operation.method.as_bytes()) else {
                return (operation, Coverage::NotRecorded);
            };
            let query: Option<String> = (!operation.query.is_empty()).then(|| {
                let mut serializer = form_urlencoded::Serializer::new(String::new());
                for (key, value) in &operation.query {
                    serializer.append_pair(key, if value == "*" { "sample" } else { value });
                }
                serializer.finish()
            });
            let view = crate::policy::rules::RequestView {
                method: &method,
                path: &operation.sample_path,
                query: query.as_deref(),
                host: None,
                headers: &headers,
            };
            let candidates = rules.candidates(&view);
            let status = if operation.method == "POST" { 201 } else { 200 };
            let verdict = match rules.decide(&candidates, &method, status) {
                crate::policy::rules::Decision::Rule(index) => {
                    Coverage::Rule(rules.rule(index).name.clone())
                }
                crate::policy::rules::Decision::Unmatched => Coverage::GenericFallback,
                crate::policy::rules::Decision::Nothing => candidates
                    .iter()
                    .map(|&index| rules.rule(index))
                    .find(|rule| rule.status.holds(status) && matches!(rule.kind, RuleKind::Skip))
                    .map(|rule| Coverage::Skipped(rule.name.clone()))
                    .unwrap_or(Coverage::NotRecorded),
            };
            (operation, verdict)
        })
        .collect()
}

/// The report of `check --coverage`: the operations no rule covers, then a count.
pub fn coverage_report(document: &Document, report: &[(&Operation, Coverage)]) -> String {
    let mut out = String::new();
    let uncovered: Vec<&(&Operation, Coverage)> = report
        .iter()
        .filter(|(_, verdict)| matches!(verdict, Coverage::GenericFallback | Coverage::NotRecorded))
        .collect();
    let _ = writeln!(
        out,
        "{} of {} operations that change state in {:?} are covered by a rule; {} are not:",
        report.len() - uncovered.len(),
        report.len(),
        one_line(&document.title),
        uncovered.len()
    );
    for (operation, verdict) in &uncovered {
        let how = match verdict {
            Coverage::GenericFallback => "generic fallback (http.<method> entry)",
            _ => "not recorded",
        };
        let _ = writeln!(
            out,
            "  {:<7} {}  ({}; sample {}){}",
            operation.method,
            operation.template,
            how,
            operation.sample_path,
            operation
                .operation_id
                .as_deref()
                .map(|id| format!("  operationId {id}"))
                .unwrap_or_default()
        );
    }
    for note in &document.skipped {
        let _ = writeln!(out, "  left out of the check: {}", one_line(note));
    }
    out
}

/// `auditgate rules from-openapi`: reads the document, writes the rules to standard output or
/// the `--output` file, and tells on standard error what was left out.
pub fn run_from_openapi(args: &crate::commands::cli::FromOpenapiArgs) -> anyhow::Result<()> {
    let shown = args.spec.display().to_string();
    let root = load_file(&args.spec)?;
    let options = ReadOptions {
        reads: args.reads,
        base_path: args.base_path.clone(),
    };
    let document = read_document(&root, &shown, &options)?;
    let source = args
        .spec
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or(shown);
    let text = render(&document, &source);
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?,
        None => crate::commands::cli::print_stdout(&text)?,
    }
    eprintln!(
        "{} rule(s) for {} operation(s){}",
        document.operations.len(),
        document.operations.len() + document.skipped.len(),
        if document.skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; {} left out (see the comments at the top)",
                document.skipped.len()
            )
        }
    );
    Ok(())
}

/// `auditgate check --coverage SPEC`: the report for one loaded configuration.
pub fn run_coverage(spec: &Path, config: &Config) -> Result<String, OpenApiError> {
    let shown = spec.display().to_string();
    let root = load_file(spec)?;
    let document = read_document(&root, &shown, &ReadOptions::default())?;
    let report = coverage(config, &document.operations);
    Ok(coverage_report(&document, &report))
}

#[cfg(test)]
mod tests;
