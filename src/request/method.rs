//! Method overrides: a POST that the app runs as another method because a header
//! (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`), a `_method` query parameter
//! or a `_method` form field says so, as Express's method-override, Rails, Laravel and Symfony do.
//!
//! With `[proxy] method_override` on (the default), rules match the method the override asks for
//! and the entry records the method the app ran, with what the client sent under
//! `_methodOverride`. Turned off (`method_override = []`), the override headers are removed before
//! the app sees them, so the app cannot act on a method the log did not see; a `_method` query
//! parameter cannot be removed without changing the request, so it is forwarded and recorded as
//! ignored.

use http::{header, HeaderMap, HeaderName, Method};
use serde_json::{json, Map, Value};

/// The override headers apps commonly honour, in the spelling header names are compared in
/// (lower case, `-` for `_`).
pub const WELL_KNOWN_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The default `_method` parameter and form field name.
const DEFAULT_FIELD: &str = "_method";

/// Where overrides are read from (`[proxy] method_override`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodOverride {
    /// Header names, lower case with `-` for `_`.
    headers: Vec<String>,
    /// The query parameter, if honoured.
    query: Option<String>,
    /// The urlencoded form field, if honoured.
    form: Option<String>,
}

impl Default for MethodOverride {
    fn default() -> MethodOverride {
        MethodOverride {
            headers: WELL_KNOWN_HEADERS
                .iter()
                .map(|name| name.to_string())
                .collect(),
            query: Some(DEFAULT_FIELD.to_string()),
            form: Some(DEFAULT_FIELD.to_string()),
        }
    }
}

/// One override the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// Where it came from: `header:x-http-method-override`, `query:_method`, `form:_method`.
    pub from: String,
    /// The value as sent.
    pub value: String,
}

/// Header names compare case-insensitively and with `_` and `-` as one, as CGI, WSGI and PHP
/// servers fold them.
fn folded_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

fn same_name(actual: &HeaderName, folded: &str) -> bool {
    let actual = actual.as_str().as_bytes();
    actual.len() == folded.len()
        && actual
            .iter()
            .zip(folded.as_bytes())
            .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

impl MethodOverride {
    /// Parses `method_override`: header names (or `header:NAME`), `query:NAME`, `form:NAME`.
    pub fn parse(items: &[String]) -> Result<MethodOverride, Vec<String>> {
        let mut errors = Vec::new();
        let mut out = MethodOverride {
            headers: Vec::new(),
            query: None,
            form: None,
        };
        for item in items {
            let (kind, name) = match item.split_once(':') {
                Some((kind, name)) => (kind.trim(), name.trim()),
                None => ("header", item.trim()),
            };
            if name.is_empty() {
                errors.push(format!("`{item}` names no header, parameter or field"));
                continue;
            }
            match kind {
                "header" => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(_) => out.headers.push(folded_name(name)),
                    Err(_) => errors.push(format!("`{name}` is not a header name")),
                },
                "query" if out.query.is_none() => out.query = Some(name.to_string()),
                "form" if out.form.is_none() => out.form = Some(name.to_string()),
                "query" | "form" => errors.push(format!("only one {kind}: source can be given")),
                other => errors.push(format!(
                    "`{other}:` is not a source; give a header name, query:NAME or form:NAME"
                )),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Whether any override is honoured.
    pub fn enabled(&self) -> bool {
        !self.headers.is_empty() || self.query.is_some() || self.form.is_some()
    }

    /// The honoured overrides a request's head asks for. Only a POST is overridden, as every
    /// common framework does.
    pub fn from_head(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Vec<Requested> {
        let mut out = Vec::new();
        if *method != Method::POST || !self.enabled() {
            return out;
        }
        if !self.headers.is_empty() {
            for (name, value) in headers {
                if let Some(wanted) = self.headers.iter().find(|wanted| same_name(name, wanted)) {
                    out.push(Requested {
                        from: format!("header:{wanted}"),
                        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    });
                }
            }
        }
        if let (Some(field), Some(query)) = (&self.query, query) {
            out.extend(query_values(query, field, "query"));
        }
        out
    }

    /// The form field to read from the body, when the request is a POST of an urlencoded form
    /// (with no content coding) and form overrides are honoured.
    pub fn form_field(&self, method: &Method, headers: &HeaderMap) -> Option<&str> {
        let field = self.form.as_deref()?;
        if *method != Method::POST {
            return None;
        }
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|kind| {
                kind.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        is_form.then_some(field)
    }

    /// The form field's values in a captured urlencoded body.
    pub fn from_form(&self, field: &str, body: &[u8]) -> Vec<Requested> {
        form_urlencoded::parse(body)
            .filter(|(key, _)| key == field)
            .map(|(_, value)| Requested {
                from: format!("form:{field}"),
                value: value.into_owned(),
            })
            .collect()
    }

    /// Overrides the request asks for that are not honoured: well-known headers left out of the
    /// list (they are stripped) and a `_method` query parameter when queries are not honoured
    /// (it is forwarded). Recorded so that an auditor sees the attempt.
    pub fn ignored(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Vec<Requested> {
        let mut out = Vec::new();
        if *method != Method::POST {
            return out;
        }
        for (name, value) in headers {
            if let Some(known) = self.stripped_name(name) {
                out.push(Requested {
                    from: format!("header:{known}"),
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                });
            }
        }
        if self.query.is_none() {
            if let Some(query) = query {
                out.extend(query_values(query, DEFAULT_FIELD, "query"));
            }
        }
        out
    }

    /// The well-known override header this name spells, when it is not honoured.
    fn stripped_name(&self, name: &HeaderName) -> Option<&'static str> {
        WELL_KNOWN_HEADERS.iter().copied().find(|known| {
            same_name(name, known) && !self.headers.iter().any(|honoured| honoured == known)
        })
    }

    /// Removes the well-known override headers that are not honoured, in every spelling, so the
    /// app never acts on an override the log did not follow. Returns how many were removed.
    pub fn strip(&self, headers: &mut HeaderMap) -> usize {
        if self.headers.len() >= WELL_KNOWN_HEADERS.len()
            && WELL_KNOWN_HEADERS
                .iter()
                .all(|known| self.headers.iter().any(|honoured| honoured == known))
        {
            return 0;
        }
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.stripped_name(name).is_some())
            .cloned()
            .collect();
        for name in &names {
            headers.remove(name);
        }
        names.len()
    }
}

fn query_values(query: &str, field: &str, kind: &str) -> Vec<Requested> {
    // A cheap test first: almost no query carries the field at all.
    if !query.contains(field) && !query.contains('%') {
        return Vec::new();
    }
    form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == field)
        .map(|(_, value)| Requested {
            from: format!("{kind}:{field}"),
            value: value.into_owned(),
        })
        .collect()
}

/// The method the app runs for these honoured overrides: `None` when there are none. Overrides
/// that disagree, or one that is not a method, are refused: apps differ in which source wins, so
/// no entry could say what the app did.
pub fn resolve(requested: &[Requested]) -> Result<Option<Method>, String> {
    let mut chosen: Option<(Method, &Requested)> = None;
    for item in requested {
        let text = item.value.trim().to_ascii_uppercase();
        let method = Method::from_bytes(text.as_bytes())
            .ok()
            .filter(|_| !text.is_empty())
            .ok_or_else(|| {
                format!(
                    "the method override {} = {:?} is not an HTTP method",
                    item.from, item.value
                )
            })?;
        match &chosen {
            Some((first, first_item)) if *first != method => {
                return Err(format!(
                    "the method overrides disagree: {} = {:?}, {} = {:?}",
                    first_item.from, first_item.value, item.from, item.value
                ))
            }
            Some(_) => {}
            None => chosen = Some((method, item)),
        }
    }
    Ok(chosen.map(|(method, _)| method))
}

/// The `_methodOverride` metadata of an entry.
pub fn note(
    sent: &Method,
    honoured: &[Requested],
    effective: Option<&Method>,
    ignored: &[Requested],
    unread: Option<&str>,
) -> Option<Value> {
    if honoured.is_empty() && ignored.is_empty() && unread.is_none() {
        return None;
    }
    let mut note = Map::new();
    note.insert("sent".to_string(), json!(sent.as_str()));
    if let Some(method) = effective {
        note.insert("method".to_string(), json!(method.as_str()));
    }
    let listed = |items: &[Requested]| {
        Value::Object(
            items
                .iter()
                .map(|item| (item.from.clone(), json!(item.value)))
                .collect(),
        )
    };
    if !honoured.is_empty() {
        note.insert("from".to_string(), listed(honoured));
    }
    if !ignored.is_empty() {
        note.insert("ignored".to_string(), listed(ignored));
    }
    if let Some(reason) = unread {
        note.insert("unread".to_string(), json!(reason));
    }
    Some(Value::Object(note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::test_headers as headers;

    #[test]
    fn a_post_is_overridden_by_header_query_or_form() {
        let honoured = MethodOverride::default();
        let post = Method::POST;
        let found = honoured.from_head(
            &post,
            &headers(&[("X_HTTP_Method_Override", "delete")]),
            Some("a=1&_method=DELETE"),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].from, "header:x-http-method-override");
        assert_eq!(resolve(&found), Ok(Some(Method::DELETE)));
        // Only a POST is overridden.
        assert!(honoured
            .from_head(&Method::GET, &headers(&[("x-http-method", "DELETE")]), None)
            .is_empty());
        let form_headers = headers(&[(
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        )]);
        let field = honoured.form_field(&post, &form_headers).expect("a form");
        let found = honoured.from_form(field, b"name=x&_method=PATCH");
        assert_eq!(resolve(&found), Ok(Some(Method::PATCH)));
        assert!(honoured
            .form_field(&post, &headers(&[("content-type", "application/json")]))
            .is_none());
    }

    #[test]
    fn disagreeing_or_invalid_overrides_are_refused() {
        let found = vec![
            Requested {
                from: "header:x-http-method".into(),
                value: "DELETE".into(),
            },
            Requested {
                from: "query:_method".into(),
                value: "PUT".into(),
            },
        ];
        assert!(resolve(&found).expect_err("disagree").contains("disagree"));
        let bad = vec![Requested {
            from: "form:_method".into(),
            value: "DE LETE".into(),
        }];
        assert!(resolve(&bad).is_err());
        assert_eq!(resolve(&[]), Ok(None));
    }

    #[test]
    fn turned_off_the_headers_are_stripped_in_every_spelling() {
        let off = MethodOverride::parse(&[]).expect("valid");
        assert!(!off.enabled());
        let mut map = headers(&[
            ("x-http-method-override", "DELETE"),
            ("X_HTTP_METHOD", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-app", "kept"),
        ]);
        let ignored = off.ignored(&Method::POST, &map, Some("_method=PUT"));
        assert_eq!(ignored.len(), 4, "{ignored:?}");
        assert_eq!(off.strip(&mut map), 3);
        assert_eq!(map.len(), 1);
        assert!(off
            .from_head(
                &Method::POST,
                &headers(&[("x-http-method", "DELETE")]),
                None
            )
            .is_empty());

        // Honouring one header strips the other two.
        let one = MethodOverride::parse(&["X-HTTP-Method-Override".to_string()]).expect("valid");
        let mut map = headers(&[
            ("x-http-method-override", "PUT"),
            ("x-http-method", "DELETE"),
        ]);
        assert_eq!(one.strip(&mut map), 1);
        assert!(map.contains_key("x-http-method-override"));
        assert_eq!(MethodOverride::default().strip(&mut map), 0);
    }

    #[test]
    fn sources_are_parsed() {
        let parsed = MethodOverride::parse(&[
            "X-Custom-Method".to_string(),
            "query:_verb".to_string(),
            "form:_m".to_string(),
        ])
        .expect("valid");
        assert_eq!(parsed.headers, vec!["x-custom-method".to_string()]);
        assert_eq!(parsed.query.as_deref(), Some("_verb"));
        assert_eq!(parsed.form.as_deref(), Some("_m"));
        let errors = MethodOverride::parse(&[
            "bad header".to_string(),
            "cookie:x".to_string(),
            "query:".to_string(),
        ])
        .expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
