//! The canonical request view: the path and method as the app behind will understand them,
//! built once when the request head arrives and before any rule sees it.
//!
//! Proxies that match rules on the raw request while the app routes on its own normalized view
//! can be walked around (`/static/../api/users/5`, `//api/users/5`, `%2e%2e`, a POST that the app
//! runs as a DELETE). So the path is made canonical here, the proxy forwards that same canonical
//! path, and the proxy and the app cannot disagree about it:
//!
//! - percent-encoded unreserved characters (RFC 3986 section 2.3) are decoded, every other
//!   percent-encoding is kept with upper-case hex digits, and bytes outside visible ASCII are
//!   percent-encoded;
//! - runs of slashes are merged (an empty segment is no segment);
//! - dot-segments are removed as in RFC 3986 section 5.2.4 (`..` never climbs above the root);
//! - an encoded `/` (`%2F`), an encoded `\` (`%5C`) and a raw `\` are refused, decoded into a
//!   separator, or kept encoded inside their segment, as `[proxy] escaped_slashes` says;
//! - an invalid percent-encoding and an encoded NUL are refused;
//! - a `;` path parameter (`/api/users;jsessionid=1/42`, `/api/users/42;v=2`) is removed with the
//!   rest of its segment before dot-segments are resolved, refused, or kept as segment data, as
//!   `[proxy] path_parameters` says. Only a raw `;` starts one: `%3B` is data, as it is to the
//!   servlet containers that strip them.
//!
//! The method side (HEAD served by GET rules, `X-HTTP-Method-Override` and `_method` on a POST)
//! is in [`method`].

pub mod method;
pub mod route;

use std::borrow::Cow;

use http::Method;

use crate::base::ConfigError;

pub use method::MethodOverride;

/// `[proxy] path_normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNormalization {
    /// The canonical path described in the module documentation (the default).
    Strict,
    /// The path as the client sent it, for rules and for the app alike. Only for an app behind
    /// another proxy that already normalizes.
    None,
}

/// `[proxy] escaped_slashes`: what `%2F`, `%5C` and a raw `\` in a path become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (recorded). The default: apps disagree on these.
    Reject,
    /// Decode them into a path separator (`/`), then merge and resolve dot-segments.
    Decode,
    /// Keep them percent-encoded inside their segment (`%2F`, `%5C`), as data.
    Keep,
}

/// `[proxy] path_parameters`: what a raw `;` in a path segment starts.
///
/// Java servlet containers (Tomcat, Jetty) and Spring remove `;name=value` from every segment
/// before routing, so `/api/users;jsessionid=1/42` and `/admin/..;/api` reach `/api/users/42` and
/// `/api`; most other stacks keep `;` as part of the segment. Rules that matched the path with
/// the parameter in it would miss the first kind of app's request, so the parameter is removed
/// from the path the rules match *and* the path the app receives: then both kinds of app route
/// exactly the path the rules saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathParameters {
    /// Remove `;` and the rest of its segment (the default).
    Strip,
    /// Refuse the request with 400 (recorded).
    Reject,
    /// Keep `;` as data inside its segment: only for an app that routes on it as data.
    Keep,
}

/// How requests are made canonical; part of the reloadable policy.
#[derive(Debug, Clone)]
pub struct CanonicalConfig {
    pub path_normalization: PathNormalization,
    pub escaped_slashes: EscapedSlashes,
    pub path_parameters: PathParameters,
    pub method_override: MethodOverride,
}

impl Default for CanonicalConfig {
    fn default() -> CanonicalConfig {
        CanonicalConfig {
            path_normalization: PathNormalization::Strict,
            escaped_slashes: EscapedSlashes::Reject,
            path_parameters: PathParameters::Strip,
            method_override: MethodOverride::default(),
        }
    }
}

impl CanonicalConfig {
    /// Reads the `[proxy]` keys, collecting errors with their place.
    pub fn compile(
        path_normalization: Option<&str>,
        escaped_slashes: Option<&str>,
        path_parameters: Option<&str>,
        method_override: Option<&[String]>,
        errors: &mut Vec<ConfigError>,
    ) -> CanonicalConfig {
        let path_normalization = match path_normalization {
            None | Some("strict") => PathNormalization::Strict,
            Some("none") => PathNormalization::None,
            Some(other) => {
                errors.push(ConfigError::new(
                    "proxy.path_normalization",
                    format!("`{other}` is not one of strict, none"),
                ));
                PathNormalization::Strict
            }
        };
        let escaped_slashes = match escaped_slashes {
            None | Some("reject") => EscapedSlashes::Reject,
            Some("decode") => EscapedSlashes::Decode,
            Some("keep") => EscapedSlashes::Keep,
            Some(other) => {
                errors.push(ConfigError::new(
                    "proxy.escaped_slashes",
                    format!("`{other}` is not one of reject, decode, keep"),
                ));
                EscapedSlashes::Reject
            }
        };
        let path_parameters = match path_parameters {
            None | Some("strip") => PathParameters::Strip,
            Some("reject") => PathParameters::Reject,
            Some("keep") => PathParameters::Keep,
            Some(other) => {
                errors.push(ConfigError::new(
                    "proxy.path_parameters",
                    format!("`{other}` is not one of strip, reject, keep"),
                ));
                PathParameters::Strip
            }
        };
        let method_override = match method_override {
            None => MethodOverride::default(),
            Some(items) => MethodOverride::parse(items).unwrap_or_else(|messages| {
                errors.extend(
                    messages
                        .into_iter()
                        .map(|message| ConfigError::new("proxy.method_override", message)),
                );
                MethodOverride::default()
            }),
        };
        CanonicalConfig {
            path_normalization,
            escaped_slashes,
            path_parameters,
            method_override,
        }
    }

    /// The canonical form of a request path (without its query); borrowed when the path is
    /// canonical already, which is the common case and costs one scan.
    pub fn path<'a>(&self, raw: &'a str) -> Result<Cow<'a, str>, PathError> {
        match self.path_normalization {
            PathNormalization::None => Ok(Cow::Borrowed(raw)),
            PathNormalization::Strict => {
                canonical_path(raw, self.escaped_slashes, self.path_parameters)
            }
        }
    }
}

/// A urlencoded form body as far as the method override can read it.
pub enum FormBody<'a> {
    /// The request is not a form a method override is read from.
    NotAForm,
    /// The whole body, captured.
    Read(&'a [u8]),
    /// The body could not be read (why).
    Unreadable(&'a str),
}

/// The method side of the canonical view.
#[derive(Debug, Clone)]
pub struct MethodView {
    /// The method the app runs, which the rules match and the entry records.
    pub method: Method,
    /// The method on the wire, when an override changed it.
    pub sent: Option<Method>,
    /// `_methodOverride` for the entry's metadata.
    pub note: Option<serde_json::Value>,
    /// Why the request is refused (overrides that disagree or name no method).
    pub refused: Option<String>,
}

impl CanonicalConfig {
    /// The method the app runs for this request head (and form body, when one was read).
    pub fn method_view(
        &self,
        sent: &Method,
        headers: &http::HeaderMap,
        query: Option<&str>,
        form: FormBody,
    ) -> MethodView {
        let overrides = &self.method_override;
        let mut honoured = overrides.from_head(sent, headers, query);
        let ignored = overrides.ignored(sent, headers, query);
        let mut unread = None;
        match (form, overrides.form_field(sent, headers)) {
            (FormBody::Read(body), Some(field)) => {
                honoured.extend(overrides.from_form(field, body))
            }
            (FormBody::Unreadable(why), Some(field)) => {
                unread = Some(format!(
                    "form:{field}: the body {why}, so the field was not read"
                ))
            }
            _ => {}
        }
        let (effective, mut refused) = match method::resolve(&honoured) {
            Ok(effective) => (effective, None),
            Err(reason) => (None, Some(reason)),
        };
        // A form field that could not be read may still name a method: the app reads the whole
        // body (a large form, a content coding it decodes) and could run a DELETE that the log
        // records as a POST, or not at all. No entry could say what the app did.
        if let (None, Some(reason)) = (&refused, &unread) {
            refused = Some(format!(
                "{reason}; the app may run another method than the one recorded"
            ));
        }
        let note = method::note(
            sent,
            &honoured,
            effective.as_ref(),
            &ignored,
            unread.as_deref(),
        );
        let changed = effective.filter(|method| method != sent);
        MethodView {
            method: changed.clone().unwrap_or_else(|| sent.clone()),
            sent: changed.map(|_| sent.clone()),
            note,
            refused,
        }
    }
}

/// Why a path cannot be made canonical; the request is refused with 400 and recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path has an invalid percent-encoding at byte {0}")]
    InvalidPercentEncoding(usize),
    #[error("the path has an encoded NUL (%00)")]
    EncodedNul,
    #[error("the path has {0}, which escaped_slashes = \"reject\" refuses")]
    EscapedSlash(&'static str),
    #[error("the path has a `;` path parameter, which path_parameters = \"reject\" refuses")]
    PathParameter,
}

/// RFC 3986 section 2.3.
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Whether `raw` is its own canonical form: no percent sign, no backslash, no `;` unless kept,
/// no byte outside visible ASCII, no empty segment but a trailing one, and no dot-segment.
fn is_canonical(raw: &str, parameters: PathParameters) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let parameter_kept = parameters == PathParameters::Keep;
    if bytes.iter().any(|&byte| {
        byte == b'%'
            || byte == b'\\'
            || (byte == b';' && !parameter_kept)
            || !byte.is_ascii_graphic()
    }) {
        return false;
    }
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The canonical path of `raw` (see the module documentation). A target that is not a path
/// (`*` of `OPTIONS *`, the empty path of an authority-form CONNECT) is returned as it is.
pub fn canonical_path(
    raw: &str,
    escaped: EscapedSlashes,
    parameters: PathParameters,
) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') || is_canonical(raw, parameters) {
        return Ok(Cow::Borrowed(raw));
    }
    // First pass: decode into `decoded`, where every `/` is a separator and every other byte is
    // segment data in its canonical spelling.
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'%' => {
                let value = match (bytes.get(index + 1), bytes.get(index + 2)) {
                    (Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
                    _ => None,
                };
                let Some((high, low)) = value else {
                    return Err(PathError::InvalidPercentEncoding(index));
                };
                let value = high << 4 | low;
                match value {
                    0 => return Err(PathError::EncodedNul),
                    b'/' => slash(&mut decoded, escaped, "an encoded slash (%2F)", b"%2F")?,
                    b'\\' => slash(&mut decoded, escaped, "an encoded backslash (%5C)", b"%5C")?,
                    value if unreserved(value) => decoded.push(value),
                    value => push_encoded(&mut decoded, value),
                }
                index += 3;
                continue;
            }
            b'\\' => slash(&mut decoded, escaped, "a backslash", b"%5C")?,
            // A parameter runs to the next raw `/`, as servlet containers read it before they
            // decode anything: an escaped slash or backslash inside it is part of it. It goes
            // before dot-segments are resolved, so `..;x` is `..` here as it is to them.
            b';' if parameters == PathParameters::Strip => {
                index = bytes[index..]
                    .iter()
                    .position(|&byte| byte == b'/')
                    .map_or(bytes.len(), |offset| index + offset);
                continue;
            }
            b';' if parameters == PathParameters::Reject => return Err(PathError::PathParameter),
            byte if byte.is_ascii_graphic() => decoded.push(byte),
            byte => push_encoded(&mut decoded, byte),
        }
        index += 1;
    }
    // Second pass: merge slashes and remove dot-segments. `decoded` is ASCII by construction.
    let decoded = String::from_utf8_lossy(&decoded);
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            segment => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if kept.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn slash(
    decoded: &mut Vec<u8>,
    escaped: EscapedSlashes,
    what: &'static str,
    kept: &[u8],
) -> Result<(), PathError> {
    match escaped {
        EscapedSlashes::Reject => Err(PathError::EscapedSlash(what)),
        EscapedSlashes::Decode => {
            decoded.push(b'/');
            Ok(())
        }
        EscapedSlashes::Keep => {
            decoded.extend_from_slice(kept);
            Ok(())
        }
    }
}

fn push_encoded(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'%');
    out.push(HEX[usize::from(byte >> 4)]);
    out.push(HEX[usize::from(byte & 0x0f)]);
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A header map of `(name, value)` pairs, appended in order (a name may repeat), for tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            http::HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(raw: &str) -> String {
        canonical_path(raw, EscapedSlashes::Reject, PathParameters::Strip)
            .unwrap_or_else(|error| panic!("{raw}: {error}"))
            .into_owned()
    }

    fn kept_parameters(raw: &str) -> String {
        canonical_path(raw, EscapedSlashes::Reject, PathParameters::Keep)
            .unwrap_or_else(|error| panic!("{raw}: {error}"))
            .into_owned()
    }

    /// RFC 3986 section 5.2.4's worked examples and the dot-segment cases of section 5.4's
    /// reference resolution examples (base `/b/c/d;p`), written as the absolute paths they merge
    /// into.
    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        assert_eq!(strict("/a/b/c/./../../g"), "/a/g");
        assert_eq!(strict("/mid/content=5/../6"), "/mid/6");
        for (merged, expected) in [
            ("/b/c/g", "/b/c/g"),
            ("/b/c/./g", "/b/c/g"),
            ("/b/c/g/", "/b/c/g/"),
            ("/b/c/.", "/b/c/"),
            ("/b/c/./", "/b/c/"),
            ("/b/c/..", "/b/"),
            ("/b/c/../", "/b/"),
            ("/b/c/../g", "/b/g"),
            ("/b/c/../..", "/"),
            ("/b/c/../../", "/"),
            ("/b/c/../../g", "/g"),
            // Abnormal examples (5.4.2): `..` never climbs above the root.
            ("/b/c/../../../g", "/g"),
            ("/b/c/../../../../g", "/g"),
            ("/./g", "/g"),
            ("/../g", "/g"),
            ("/b/c/g.", "/b/c/g."),
            ("/b/c/.g", "/b/c/.g"),
            ("/b/c/g..", "/b/c/g.."),
            ("/b/c/..g", "/b/c/..g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
        ] {
            assert_eq!(strict(merged), expected, "{merged}");
        }
        // The examples with a `;` parameter, read with `;` as segment data as RFC 3986 does.
        assert_eq!(kept_parameters("/b/c/g;x=1/./y"), "/b/c/g;x=1/y");
        assert_eq!(kept_parameters("/b/c/g;x=1/../y"), "/b/c/y");
    }

    /// What Tomcat, Jetty and Spring route for paths with `;` parameters, and so what the rules
    /// must match and the app receive.
    #[test]
    fn path_parameters_are_stripped_before_dot_segments() {
        for (sent, expected) in [
            ("/api/users;jsessionid=abc/42", "/api/users/42"),
            ("/api/users/42;x=1", "/api/users/42"),
            ("/api/users/42;", "/api/users/42"),
            ("/admin;/users", "/admin/users"),
            ("/a;x;y=2/b", "/a/b"),
            // `..;` is a dot-segment once its parameter is gone: the classic way past a proxy
            // that matched the raw path in front of Tomcat.
            ("/static/..;/api/users/5", "/api/users/5"),
            ("/static/%2e%2e;x=1/api/users/5", "/api/users/5"),
            ("/static/.;x/api", "/static/api"),
            // A segment that is only a parameter is an empty segment, merged away.
            ("/api/;x/users/5", "/api/users/5"),
            ("/api/users/;x", "/api/users/"),
            ("/;x", "/"),
            // The parameter runs to the next raw `/`: an encoded slash or broken escape inside it
            // goes with it, as the servlet containers parse it before decoding.
            ("/a;x%2Fb/c", "/a/c"),
            ("/a;%zz/c", "/a/c"),
            // An encoded `;` is data, kept encoded, as it is to the containers that strip.
            ("/api/users/42%3Bx=1", "/api/users/42%3Bx=1"),
            ("/api/users/42%3bx=1", "/api/users/42%3Bx=1"),
        ] {
            assert_eq!(strict(sent), expected, "{sent}");
        }
        assert_eq!(
            canonical_path("/a;x/b", EscapedSlashes::Reject, PathParameters::Reject),
            Err(PathError::PathParameter)
        );
        assert_eq!(
            canonical_path("/a%3Bx/b", EscapedSlashes::Reject, PathParameters::Reject),
            Ok(Cow::Borrowed("/a%3Bx/b"))
        );
        assert_eq!(kept_parameters("/api/users/42;x=1"), "/api/users/42;x=1");
        assert_eq!(kept_parameters("/static/..;/api"), "/static/..;/api");
    }

    #[test]
    fn slashes_merge_and_unreserved_characters_decode() {
        assert_eq!(strict("//api/users/5"), "/api/users/5");
        assert_eq!(strict("/api///users//5//"), "/api/users/5/");
        // Merging comes first: an empty segment is no segment, so `..` removes `a`.
        assert_eq!(strict("/a//../b"), "/b");
        assert_eq!(strict("/static/%2e%2e/api/users/5"), "/api/users/5");
        assert_eq!(strict("/static/.%2E/api"), "/api");
        assert_eq!(strict("/%61pi/%7Eme"), "/api/~me");
        assert_eq!(strict("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(strict("/a%20b"), "/a%20b");
        assert_eq!(strict("/%252e%252e/x"), "/%252e%252e/x");
        assert_eq!(strict(""), "");
        assert_eq!(strict("*"), "*");
        assert_eq!(strict("/"), "/");
    }

    #[test]
    fn a_canonical_path_is_borrowed() {
        for path in ["/", "/api/users/5", "/api/users/5/", "/a.b/..c/.d"] {
            assert!(
                matches!(
                    canonical_path(path, EscapedSlashes::Reject, PathParameters::Strip),
                    Ok(Cow::Borrowed(_))
                ),
                "{path}"
            );
        }
        assert!(is_canonical("/a;b=c", PathParameters::Keep));
        for path in [
            "//a", "/a/./b", "/a/..", "/%41", "/a\\b", "/a/../", "/a;b=c",
        ] {
            assert!(
                !is_canonical(path, PathParameters::Strip),
                "{path} should have been seen as not canonical"
            );
        }
    }

    #[test]
    fn escaped_slashes_follow_the_configured_action() {
        for raw in ["/api/users%2F5", "/api/users%2f5", "/a%5Cb", "/a\\b"] {
            assert!(
                matches!(
                    canonical_path(raw, EscapedSlashes::Reject, PathParameters::Strip),
                    Err(PathError::EscapedSlash(_))
                ),
                "{raw}"
            );
        }
        let decode = |raw| {
            canonical_path(raw, EscapedSlashes::Decode, PathParameters::Strip)
                .expect("decodes")
                .into_owned()
        };
        assert_eq!(decode("/api/users%2F5"), "/api/users/5");
        assert_eq!(decode("/static/..%2Fapi%2fusers/5"), "/api/users/5");
        assert_eq!(decode("/static\\..\\api\\users\\5"), "/api/users/5");
        assert_eq!(decode("/a%5c..%5cb"), "/b");
        let keep = |raw| {
            canonical_path(raw, EscapedSlashes::Keep, PathParameters::Strip)
                .expect("keeps")
                .into_owned()
        };
        assert_eq!(keep("/repos/group%2fproject"), "/repos/group%2Fproject");
        assert_eq!(keep("/a\\b"), "/a%5Cb");
        // Kept as data: no dot-segment is formed across an encoded slash.
        assert_eq!(keep("/a/..%2Fb"), "/a/..%2Fb");
    }

    #[test]
    fn broken_paths_are_refused() {
        for (raw, expected) in [
            ("/a%", PathError::InvalidPercentEncoding(2)),
            ("/a%4", PathError::InvalidPercentEncoding(2)),
            ("/a%zz", PathError::InvalidPercentEncoding(2)),
            ("/a%00b", PathError::EncodedNul),
        ] {
            assert_eq!(
                canonical_path(raw, EscapedSlashes::Decode, PathParameters::Strip),
                Err(expected),
                "{raw}"
            );
        }
    }

    #[test]
    fn an_unreadable_form_override_is_refused() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let config = CanonicalConfig::default();
        let view = config.method_view(
            &Method::POST,
            &headers,
            None,
            FormBody::Unreadable("was larger than max_body_capture"),
        );
        assert_eq!(view.method, Method::POST);
        let reason = view.refused.expect("refused");
        assert!(reason.contains("max_body_capture"), "{reason}");
        // Without form overrides the body is not a source, and nothing is refused.
        let config = CanonicalConfig {
            method_override: MethodOverride::parse(&["X-HTTP-Method-Override".to_string()])
                .expect("parses"),
            ..CanonicalConfig::default()
        };
        let view = config.method_view(
            &Method::POST,
            &headers,
            None,
            FormBody::Unreadable("was larger than max_body_capture"),
        );
        assert_eq!(view.refused, None);
    }

    #[test]
    fn none_leaves_the_path_alone() {
        let config = CanonicalConfig {
            path_normalization: PathNormalization::None,
            ..CanonicalConfig::default()
        };
        assert_eq!(config.path("//a/../b%2F"), Ok(Cow::Borrowed("//a/../b%2F")));
        let config = CanonicalConfig::default();
        assert_eq!(config.path("//a/../b"), Ok(Cow::Owned("/b".to_string())));
    }

    #[test]
    fn config_values_are_checked() {
        let mut errors = Vec::new();
        let config = CanonicalConfig::compile(
            Some("none"),
            Some("keep"),
            Some("reject"),
            Some(&[]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.path_normalization, PathNormalization::None);
        assert_eq!(config.escaped_slashes, EscapedSlashes::Keep);
        assert_eq!(config.path_parameters, PathParameters::Reject);
        assert!(!config.method_override.enabled());
        let default = CanonicalConfig::compile(None, None, None, None, &mut errors);
        assert_eq!(default.path_parameters, PathParameters::Strip);
        CanonicalConfig::compile(
            Some("loose"),
            Some("drop"),
            Some("ignore"),
            Some(&["header:".to_string()]),
            &mut errors,
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].starts_with("proxy.path_normalization"), "{text:?}");
        assert!(text[1].starts_with("proxy.escaped_slashes"), "{text:?}");
        assert!(text[2].starts_with("proxy.path_parameters"), "{text:?}");
        assert!(text[3].starts_with("proxy.method_override"), "{text:?}");
    }
}
