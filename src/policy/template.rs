//! Value sources and templates: where an entry's action, resource and metadata come from.
//!
//! A value is either one whole source — `query:NAME`, `request.header:NAME`,
//! `response.header:NAME`, `request.body:/json/pointer`, `response.body:/json/pointer` — which
//! keeps the JSON type of a body field, or a template of literal text with `{...}` holes, where a
//! hole holds a path parameter name (`{id}`) or any of the sources above
//! (`{request.body:/kind}.updated`). `{{` and `}}` stand for literal braces. Anything else is a
//! literal.

use std::borrow::Cow;

use http::HeaderName;
use serde_json::Value;

/// One place a value can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    PathParam(String),
    Query(String),
    RequestHeader(HeaderName),
    ResponseHeader(HeaderName),
    RequestBody(String),
    ResponseBody(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Literal(String),
    Source(Source),
}

/// A compiled value: one whole source, or text with holes.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Whole(Source),
    Parts(Vec<Part>),
}

/// What a template needs from the exchange, so the proxy captures only that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: bool,
    pub response_body: bool,
}

impl Needs {
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            request_headers: self.request_headers || other.request_headers,
            response_headers: self.response_headers || other.response_headers,
            request_body: self.request_body || other.request_body,
            response_body: self.response_body || other.response_body,
        }
    }
}

/// Everything a template can read, gathered by the proxy during the exchange.
pub trait Context {
    fn path_param(&self, name: &str) -> Option<&str>;
    fn query(&self, name: &str) -> Option<String>;
    /// A header's value as text; bytes that are not UTF-8 (obs-text) become U+FFFD rather than
    /// making a present header look absent.
    fn request_header(&self, name: &HeaderName) -> Option<Cow<'_, str>>;
    fn response_header(&self, name: &HeaderName) -> Option<Cow<'_, str>>;
    /// The request body parsed as JSON, or why it is not available.
    fn request_body(&self) -> Result<&Value, &str>;
    fn response_body(&self) -> Result<&Value, &str>;
}

/// The parts of a request a [`Context`] answers from without its headers, kept the same way by
/// every context: the path parameters, the query pairs (`None` when the request had no query),
/// and each body parsed as JSON or why it is not available.
#[derive(Debug, Clone)]
pub struct RequestValues {
    pub params: Vec<(String, String)>,
    pub query: Option<Vec<(String, String)>>,
    pub request_body: Result<Value, String>,
    pub response_body: Result<Value, String>,
}

impl RequestValues {
    /// The first path parameter named `name`.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        first_named(&self.params, name)
    }

    /// The first query parameter named `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        first_named(self.query.as_ref()?, name).map(str::to_string)
    }

    pub fn request_body(&self) -> Result<&Value, &str> {
        self.request_body.as_ref().map_err(String::as_str)
    }

    pub fn response_body(&self) -> Result<&Value, &str> {
        self.response_body.as_ref().map_err(String::as_str)
    }
}

fn first_named<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Why a source yielded nothing; recorded in the entry so an auditor knows.
pub type Missing = String;

type SourceBuilder = fn(&str) -> Result<Source, String>;

fn parse_source(text: &str) -> Result<Option<Source>, String> {
    let prefixes: [(&str, SourceBuilder); 5] = [
        ("query:", |rest| Ok(Source::Query(rest.to_string()))),
        ("request.header:", |rest| {
            header_name(rest).map(Source::RequestHeader)
        }),
        ("response.header:", |rest| {
            header_name(rest).map(Source::ResponseHeader)
        }),
        ("request.body:", |rest| {
            pointer(rest).map(Source::RequestBody)
        }),
        ("response.body:", |rest| {
            pointer(rest).map(Source::ResponseBody)
        }),
    ];
    for (prefix, build) in prefixes {
        if let Some(rest) = text.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(format!(
                    "`{text}` names no {}",
                    prefix.trim_end_matches(':')
                ));
            }
            return build(rest).map(Some);
        }
    }
    Ok(None)
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not a header name"))
}

fn pointer(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a JSON pointer (it must start with `/`, e.g. /user/email)"
        ))
    }
}

impl Template {
    /// Compiles a value; `params` are the path parameters the rule's route defines, so that a
    /// misspelt `{idd}` is a config error rather than an empty field at run time.
    pub fn parse(text: &str, params: &[String]) -> Result<Template, String> {
        if let Some(source) = parse_source(text)? {
            return Ok(Template::Whole(source));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(index) = rest.find(['{', '}']) {
            literal.push_str(&rest[..index]);
            let tail = &rest[index..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(format!(
                    "`{text}` has a `}}` with no `{{` (write `}}}}` for a literal brace)"
                ));
            } else {
                let close = tail
                    .find('}')
                    .ok_or_else(|| format!("`{text}` has a `{{` that is never closed"))?;
                let inner = &tail[1..close];
                let source = match parse_source(inner)? {
                    Some(source) => source,
                    None => {
                        if inner.is_empty() {
                            return Err(format!("`{text}` has an empty `{{}}`"));
                        }
                        if !params.iter().any(|param| param == inner) {
                            let known = if params.is_empty() {
                                "the route has no parameters".to_string()
                            } else {
                                format!("the route's parameters are {}", params.join(", "))
                            };
                            return Err(format!(
                                "`{{{inner}}}` in `{text}` is not a path parameter ({known}; sources are query:, request.header:, response.header:, request.body:, response.body:)"
                            ));
                        }
                        Source::PathParam(inner.to_string())
                    }
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Source(source));
                rest = &tail[close + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template::Parts(parts))
    }

    /// A template that is plain text.
    pub fn literal(text: &str) -> Template {
        Template::Parts(vec![Part::Literal(text.to_string())])
    }

    /// Every source the template reads.
    pub fn sources(&self) -> Vec<&Source> {
        match self {
            Template::Whole(source) => vec![source],
            Template::Parts(parts) => parts
                .iter()
                .filter_map(|part| match part {
                    Part::Source(source) => Some(source),
                    Part::Literal(_) => None,
                })
                .collect(),
        }
    }

    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        let mut mark = |source: &Source| match source {
            Source::RequestHeader(_) => needs.request_headers = true,
            Source::ResponseHeader(_) => needs.response_headers = true,
            Source::RequestBody(_) => needs.request_body = true,
            Source::ResponseBody(_) => needs.response_body = true,
            Source::PathParam(_) | Source::Query(_) => {}
        };
        match self {
            Template::Whole(source) => mark(source),
            Template::Parts(parts) => {
                for part in parts {
                    if let Part::Source(source) = part {
                        mark(source);
                    }
                }
            }
        }
        needs
    }

    /// Evaluates to a JSON value: a whole body source keeps its JSON type, everything else is a
    /// string.
    pub fn evaluate(&self, context: &dyn Context) -> Result<Value, Missing> {
        self.evaluate_filtered(context, &|_, value| value)
    }

    /// Evaluates to text: JSON strings as they are, other JSON values in their JSON form.
    pub fn evaluate_text(&self, context: &dyn Context) -> Result<String, Missing> {
        self.evaluate_text_filtered(context, &|_, value| value)
    }

    /// As [`Template::evaluate`], passing each source's value through `filter` before it is
    /// used (redaction judges a value by the source it came from).
    pub fn evaluate_filtered(
        &self,
        context: &dyn Context,
        filter: Filter,
    ) -> Result<Value, Missing> {
        match self {
            Template::Whole(source) => {
                evaluate_source(source, context).map(|value| filter(source, value))
            }
            Template::Parts(parts) => self.render_parts(parts, context, filter).map(Value::String),
        }
    }

    /// As [`Template::evaluate_text`], with each source's value passed through `filter`.
    pub fn evaluate_text_filtered(
        &self,
        context: &dyn Context,
        filter: Filter,
    ) -> Result<String, Missing> {
        match self {
            Template::Whole(source) => evaluate_source(source, context)
                .map(|value| filter(source, value))
                .and_then(value_text),
            Template::Parts(parts) => self.render_parts(parts, context, filter),
        }
    }

    fn render_parts(
        &self,
        parts: &[Part],
        context: &dyn Context,
        filter: Filter,
    ) -> Result<String, Missing> {
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Source(source) => {
                    let value = evaluate_source(source, context)
                        .map(|value| filter(source, value))
                        .and_then(value_text)?;
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }
}

/// A pass over each value a template reads, given the source it came from.
pub type Filter<'a> = &'a dyn Fn(&Source, Value) -> Value;

fn value_text(value: Value) -> Result<String, Missing> {
    match value {
        Value::String(text) => Ok(text),
        Value::Null => Err("the value is null".to_string()),
        other => Ok(other.to_string()),
    }
}

fn evaluate_source(source: &Source, context: &dyn Context) -> Result<Value, Missing> {
    match source {
        Source::PathParam(name) => context
            .path_param(name)
            .map(|value| Value::from(value.to_string()))
            .ok_or_else(|| format!("path parameter {name} is absent")),
        Source::Query(name) => context
            .query(name)
            .map(Value::from)
            .ok_or_else(|| format!("query parameter {name} is absent")),
        Source::RequestHeader(name) => context
            .request_header(name)
            .map(|value| Value::from(value.into_owned()))
            .ok_or_else(|| format!("request header {name} is absent")),
        Source::ResponseHeader(name) => context
            .response_header(name)
            .map(|value| Value::from(value.into_owned()))
            .ok_or_else(|| format!("response header {name} is absent")),
        Source::RequestBody(pointer) => match context.request_body() {
            Ok(body) => body
                .pointer(pointer)
                .cloned()
                .ok_or_else(|| format!("request body has no {pointer}")),
            Err(why) => Err(format!("request body {why}")),
        },
        Source::ResponseBody(pointer) => match context.response_body() {
            Ok(body) => body
                .pointer(pointer)
                .cloned()
                .ok_or_else(|| format!("response body has no {pointer}")),
            Err(why) => Err(format!("response body {why}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed {
        body: Value,
    }

    impl Context for Fixed {
        fn path_param(&self, name: &str) -> Option<&str> {
            (name == "id").then_some("42")
        }
        fn query(&self, name: &str) -> Option<String> {
            (name == "page").then(|| "3".to_string())
        }
        fn request_header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
            (name == "x-tenant").then_some(Cow::Borrowed("acme"))
        }
        fn response_header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
            (name == "location").then_some(Cow::Borrowed("/api/posts/9"))
        }
        fn request_body(&self) -> Result<&Value, &str> {
            Ok(&self.body)
        }
        fn response_body(&self) -> Result<&Value, &str> {
            Err("was larger than max_body_capture")
        }
    }

    fn params() -> Vec<String> {
        vec!["id".to_string()]
    }

    #[test]
    fn request_values_answer_the_first_of_a_name_and_say_why_a_body_is_missing() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        let values = RequestValues {
            params: pairs(&[("id", "1"), ("id", "2")]),
            query: Some(pairs(&[("page", "3"), ("page", "4")])),
            request_body: Ok(json!({"a": 1})),
            response_body: Err("was not captured".to_string()),
        };
        assert_eq!(values.path_param("id"), Some("1"));
        assert_eq!(values.path_param("other"), None);
        assert_eq!(values.query("page").as_deref(), Some("3"));
        assert_eq!(values.request_body(), Ok(&json!({"a": 1})));
        assert_eq!(values.response_body(), Err("was not captured"));
        let without_query = RequestValues {
            query: None,
            ..values
        };
        assert_eq!(without_query.query("page"), None);
    }

    #[test]
    fn whole_sources_keep_json_types() {
        let context = Fixed {
            body: json!({"role": "admin", "count": 3, "tags": ["a"]}),
        };
        let template = Template::parse("request.body:/count", &params()).expect("valid");
        assert_eq!(template.evaluate(&context), Ok(json!(3)));
        let template = Template::parse("request.body:/tags", &params()).expect("valid");
        assert_eq!(template.evaluate(&context), Ok(json!(["a"])));
        let template = Template::parse("response.header:Location", &params()).expect("valid");
        assert_eq!(template.evaluate(&context), Ok(json!("/api/posts/9")));
    }

    #[test]
    fn templates_mix_literals_and_sources() {
        let context = Fixed {
            body: json!({"kind": "invoice"}),
        };
        let template = Template::parse(
            "{request.body:/kind}.updated by {request.header:X-Tenant} #{id}?p={query:page}",
            &params(),
        )
        .expect("valid");
        assert_eq!(
            template.evaluate_text(&context),
            Ok("invoice.updated by acme #42?p=3".to_string())
        );
        let template = Template::parse("literal {{braces}}", &params()).expect("valid");
        assert_eq!(
            template.evaluate_text(&context),
            Ok("literal {braces}".to_string())
        );
    }

    #[test]
    fn missing_values_say_why() {
        let context = Fixed { body: json!({}) };
        let template = Template::parse("response.body:/id", &params()).expect("valid");
        assert_eq!(
            template.evaluate(&context),
            Err("response body was larger than max_body_capture".to_string())
        );
        let template = Template::parse("request.body:/missing", &params()).expect("valid");
        assert!(template.evaluate(&context).is_err());
    }

    #[test]
    fn bad_templates_are_config_errors() {
        assert!(Template::parse("{idd}.deleted", &params())
            .unwrap_err()
            .contains("not a path parameter"));
        assert!(Template::parse("request.body:email", &params())
            .unwrap_err()
            .contains("JSON pointer"));
        assert!(Template::parse("{id", &params())
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("id}", &params()).is_err());
        assert!(Template::parse("request.header:bad header", &params()).is_err());
        assert!(Template::parse("query:", &params()).is_err());
    }

    #[test]
    fn needs_are_derived() {
        let template =
            Template::parse("{response.body:/id}-{request.header:x}", &[]).expect("valid");
        let needs = template.needs();
        assert!(needs.response_body && needs.request_headers);
        assert!(!needs.request_body && !needs.response_headers);
    }
}
