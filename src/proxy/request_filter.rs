//! The request filter's checks on the request head: what is refused before any rule sees the
//! request, and the canonical target the rules, the entry and the app all see.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use serde_json::Value;

use crate::policy::Policy;

/// Longest accepted incoming X-Request-Id; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The entry's `error` when the client's request body broke while the proxy read it.
pub(super) const BROKEN_BODY: &str =
    "the client went away or sent a broken body while sending the request body";

/// A request the proxy answers itself, before the app sees it; always recorded.
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    /// The short text the client gets.
    pub(super) text: &'static str,
    /// The entry's `error`.
    pub(super) detail: String,
}

impl Refusal {
    pub(super) fn bad_request(text: &'static str, detail: String) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            text,
            detail,
        }
    }

    pub(super) fn broken_body(detail: String) -> Refusal {
        Refusal::bad_request("bad request body", detail)
    }
}

/// Why the request head is refused before any rule sees it, if it is. The canonical view is made
/// here: a path that is not canonical is rewritten in place (and the path sent noted as
/// `_pathSent`), so the rules, the actor sources, the entry and the app all see the same path.
pub(super) fn refusal_of_head<B>(
    policy: &Policy,
    request: &mut Request<B>,
    notes: &mut serde_json::Map<String, Value>,
) -> Option<Refusal> {
    let method = request.method();
    // A target with no path (the authority form of a DELETE) reaches the app as `/` while the
    // rules would see an empty path; `*` is only OPTIONS's and an empty path only CONNECT's.
    let path = request.uri().path();
    let target_is_a_path = path.starts_with('/')
        || (path == "*" && method == Method::OPTIONS)
        || (path.is_empty() && method == Method::CONNECT);
    if !target_is_a_path {
        return Some(Refusal::bad_request(
            "bad request target",
            format!("refused: the request target of a {method} is not a path"),
        ));
    }
    // A standard method in another case (`delete`) is run as DELETE by app servers that fold
    // method case (Django, Werkzeug), while the rules would see an unknown method.
    if method_in_other_case(method) {
        return Some(Refusal::bad_request(
            "bad request method",
            format!("refused: the method {method} is a standard method in another case"),
        ));
    }
    // Two Host headers: the rules would read one and the app may read the other.
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        return Some(Refusal::bad_request(
            "more than one Host header",
            "refused: more than one Host header".to_string(),
        ));
    }
    // A credential sent twice in the query (`?access_token=A&access_token=B`): the actor source
    // reads the first, while many app frameworks (PHP, Rails) read the last.
    if let Some(name) = request
        .uri()
        .query()
        .and_then(|query| repeated_secret_parameter(policy, query))
    {
        return Some(Refusal::bad_request(
            "a credential parameter is given more than once",
            format!("refused: the query parameter {name} (a credential) is given more than once"),
        ));
    }
    // A credential or identity header sent twice (two Authorization headers, two
    // X-Forwarded-User): the actor source reads one, and the app may read the other or both.
    if let Some(what) = policy.actors.repeated_credential(request.headers()) {
        return Some(Refusal::bad_request(
            "a credential or identity header is given more than once",
            format!("refused: the {what} (read by an actor source) is given more than once"),
        ));
    }
    match canonical_target(&policy.canonical, request.uri()) {
        Ok(None) => {}
        Ok(Some(uri)) => {
            let sent = String::from_utf8_lossy(request.uri().path().as_bytes()).into_owned();
            notes.insert("_pathSent".to_string(), Value::from(sent));
            *request.uri_mut() = uri;
        }
        Err(error) => return Some(Refusal::bad_request("bad request path", error)),
    }
    // An HTTP/2 upgrade would turn the connection into a tunnel whose later requests no rule
    // sees; HTTP/2 is served with prior knowledge instead.
    if upgrade_names(request.headers(), "h2c") {
        return Some(Refusal::bad_request(
            "HTTP/2 upgrade (h2c) is not supported; use HTTP/2 with prior knowledge",
            "refused: an Upgrade to h2c (cleartext HTTP/2) would tunnel requests past the log"
                .to_string(),
        ));
    }
    None
}

/// The request filter's verdict on a request head, for `auditgate explain`: the canonical
/// target the rules and the app would see, or the entry's `error` when the head is refused; and
/// the notes the entry would carry. The same checks the proxy runs, in the same order.
pub(crate) fn screen_head(
    policy: &Policy,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> (Result<Uri, String>, serde_json::Map<String, Value>) {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    let mut notes = serde_json::Map::new();
    match refusal_of_head(policy, &mut request, &mut notes) {
        Some(refusal) => (Err(refusal.detail), notes),
        None => (Ok(request.uri().clone()), notes),
    }
}

/// The first credential query parameter of the actor sources that the query holds more than once.
fn repeated_secret_parameter(policy: &Policy, query: &str) -> Option<String> {
    policy
        .actors
        .secret_query_parameters()
        .into_iter()
        .find(|secret| {
            form_urlencoded::parse(query.as_bytes())
                .filter(|(name, _)| name == secret.as_str())
                .nth(1)
                .is_some()
        })
}

/// Whether a method is one of HTTP's standard ones spelled in another case (`delete`, `Get`).
fn method_in_other_case(method: &Method) -> bool {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let sent = method.as_str();
    STANDARD
        .iter()
        .any(|standard| *standard != sent && standard.eq_ignore_ascii_case(sent))
}

/// The request target with its path made canonical, or `None` when it is canonical already
/// (no allocation then); an error says why the path cannot be made canonical.
fn canonical_target(
    canonical: &crate::request::CanonicalConfig,
    uri: &Uri,
) -> Result<Option<Uri>, String> {
    let path = match canonical.path(uri.path()) {
        Ok(Cow::Borrowed(_)) => return Ok(None),
        Ok(Cow::Owned(path)) => path,
        Err(error) => return Err(format!("refused: {error}")),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|error| format!("refused: the canonical path is not a target: {error}"))?,
    );
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|error| format!("refused: the canonical path is not a target: {error}"))
}

/// Whether an Upgrade header offers this protocol (any case, any version suffix).
pub(crate) fn upgrade_names(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offer| {
            let name = offer.trim().split('/').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case(protocol)
        })
}

pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether the request's Transfer-Encoding is one the proxy forwards faithfully: none, or exactly
/// one `chunked`. hyper has already refused lists whose last coding is not `chunked` and
/// HTTP/1.0 requests with any; this refuses `identity, chunked`, `gzip, chunked`,
/// `chunked, chunked` and repeated headers, which hyper would take as plain `chunked`. One map
/// lookup on the hot path.
pub(super) fn transfer_encoding_acceptable(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

pub(super) fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_chunked_coding_is_forwarded() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static(value));
            }
            transfer_encoding_acceptable(&headers)
        };
        assert!(with(&[]));
        assert!(with(&["chunked"]));
        assert!(with(&["Chunked "]));
        assert!(!with(&["identity, chunked"]));
        assert!(!with(&["gzip, chunked"]));
        assert!(!with(&["chunked, chunked"]));
        assert!(!with(&["chunked", "chunked"]));
    }
}
