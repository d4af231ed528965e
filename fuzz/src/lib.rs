//! The fuzz targets' bodies: each takes raw fuzzer bytes, shapes them with `arbitrary`, drives
//! one of auditgate's parsers of untrusted input, and checks what must always hold besides "does
//! not panic". The files under `fuzz_targets/` only hand libFuzzer's bytes to these.
//!
//! - [`rule_matcher`]: route templates and regexes compiled into a rule set, matched against
//!   arbitrary request heads; a path built from a template always matches it, and its
//!   parameters put back into the template give the path again.
//! - [`template`]: value-source templates parsed and evaluated against arbitrary exchanges; text
//!   with no braces and no source prefix is its own value.
//! - [`client_ip`]: `X-Forwarded-For` / `Forwarded` walks from arbitrary headers and trust
//!   lists; the believed client is the chain's first hop, every later hop is trusted, and an
//!   untrusted peer's headers are never believed.
//! - [`jwt_actor`]: the actor chain (JWT in a header or a cookie, verified and not, basic auth,
//!   identity headers) on arbitrary Authorization, Cookie and identity headers; an identity is
//!   verified only when signed with the configured secret, and neither a raw token nor a basic
//!   auth password ever appears in what is recorded.
//! - [`signed_notes`]: tlog proof files, checkpoints, verifier keys, witness keys and witness
//!   answers, as an auditor or a witness hands them over; what is read writes back the same, no
//!   text the fuzzer makes verifies (it cannot sign), and a genuine proof with bytes changed
//!   verifies only if it still proves the same entry at the same index in the same tree.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use auditgate::identity::actor::{ActorChain, ActorFile, ActorRequest};
use auditgate::identity::client_ip;
use auditgate::policy::rules::file::{RuleFile, UnmatchedRecord};
use auditgate::policy::rules::{Decision, RequestView, RuleSet};
use auditgate::policy::template::{Context, RequestValues, Template};
use auditgate::request::route::compile_route;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

/// Inputs longer than this are cut: the targets look for logic errors, not for how long a
/// regex over a megabyte takes.
const MAX_TEXT: usize = 512;

fn short(text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

// ---------------------------------------------------------------------------------------------
// Rule matcher
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Arbitrary)]
struct RuleInput {
    route: RouteInput,
    method: Option<String>,
    action: String,
    /// A request path tried against the rule as is.
    path: String,
    query: Option<String>,
    host: Option<String>,
    /// Values put in place of the template's parameters to build a path that must match.
    values: Vec<String>,
    status: u16,
    /// Conditions: `host`, and header and query conditions (exact, `*`, `~regex`).
    host_condition: Option<String>,
    header_conditions: Vec<(String, String)>,
    query_conditions: Vec<(String, String)>,
    /// Request headers to match them against.
    request_headers: Vec<(String, Vec<u8>)>,
}

/// A route: any text, a template assembled from parts (so that parameters are common), or a
/// `path_regex`.
#[derive(Debug, Arbitrary)]
enum RouteInput {
    Text(String),
    Parts(Vec<RoutePart>),
    Regex(String),
}

#[derive(Debug, Arbitrary)]
enum RoutePart {
    Literal(String),
    Param(String),
    CatchAll(String),
}

fn parameter_name(text: &str, index: usize) -> String {
    let name: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(16)
        .collect();
    if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name
    } else {
        format!("p{index}{name}")
    }
}

impl RouteInput {
    /// The route text, and whether it is a regex.
    fn text(&self) -> (String, bool) {
        match self {
            RouteInput::Text(text) => (short(text.clone()), false),
            RouteInput::Regex(text) => (short(text.clone()), true),
            RouteInput::Parts(parts) => {
                let mut text = String::from("/");
                for (index, part) in parts.iter().take(12).enumerate() {
                    match part {
                        RoutePart::Literal(literal) => text.push_str(&short(literal.clone())),
                        RoutePart::Param(name) => {
                            text.push_str(&format!("{{{}}}", parameter_name(name, index)))
                        }
                        RoutePart::CatchAll(name) => {
                            text.push_str(&format!("{{*{}}}", parameter_name(name, index)))
                        }
                    }
                }
                (text, false)
            }
        }
    }
}

/// Characters a generated parameter value may use: unreserved in a URL path, so the value is
/// its own percent-decoding.
fn unreserved(text: &str, allow_slash: bool) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._~".contains(*c) || (allow_slash && *c == '/'))
        .collect()
}

/// Puts values in place of the template's `{name}` and `{*name}` parts, in order.
fn fill_template(template: &str, values: &[String]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut index = 0;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}').map(|offset| open + offset) else {
            break;
        };
        out.push_str(values.get(index).map(String::as_str).unwrap_or(""));
        index += 1;
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

pub fn rule_matcher(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let Ok(input) = RuleInput::arbitrary(&mut source) else {
        return;
    };
    let (route, regex) = input.route.text();
    let mut table = toml::Table::new();
    table.insert(
        if regex { "path_regex" } else { "path" }.into(),
        toml::Value::String(route.clone()),
    );
    table.insert("action".into(), toml::Value::String(short(input.action)));
    if let Some(method) = &input.method {
        table.insert("method".into(), toml::Value::String(short(method.clone())));
    }
    let conditions = input.host_condition.is_some()
        || !input.header_conditions.is_empty()
        || !input.query_conditions.is_empty();
    if let Some(host) = &input.host_condition {
        table.insert("host".into(), toml::Value::String(short(host.clone())));
    }
    let map = |pairs: &[(String, String)]| {
        toml::Value::Table(
            pairs
                .iter()
                .take(4)
                .map(|(key, value)| {
                    (
                        short(key.clone()),
                        toml::Value::String(short(value.clone())),
                    )
                })
                .collect(),
        )
    };
    table.insert("headers".into(), map(&input.header_conditions));
    table.insert("query".into(), map(&input.query_conditions));
    let Ok(file) = toml::Value::Table(table).try_into::<RuleFile>() else {
        return;
    };
    let Ok(rules) = RuleSet::compile(&[file], UnmatchedRecord::All) else {
        return;
    };
    let rule = rules.rule(0);
    let mut headers = HeaderMap::new();
    for (name, value) in input.request_headers.iter().take(8) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let path = short(input.path);
    let query = input.query.map(short);
    let host = input.host.map(short);

    // Any request head: never a panic, and a decision consistent with the candidates.
    for method in [Method::GET, Method::DELETE] {
        let view = RequestView {
            method: &method,
            path: &path,
            query: query.as_deref(),
            host: host.as_deref(),
            headers: &headers,
        };
        let candidates = rules.candidates(&view);
        let _ = rules.may_record(&candidates, &method);
        let _ = rules.needs(&candidates);
        match rules.decide(&candidates, &method, input.status) {
            Decision::Rule(index) => assert!(candidates.contains(&index)),
            Decision::Unmatched | Decision::Nothing => {}
        }
        let _ = rules.decide_unreachable(&candidates, &method, input.status);
        if candidates.contains(&0) {
            let _ = rule.path_params(&path);
        }
    }

    // A path built from a template matches it, and its parameters rebuild the path.
    if regex || input.method.is_some() || conditions {
        return;
    }
    let Ok((_, names)) = compile_route(&route) else {
        return;
    };
    // An accepted template has braces only around its parameters.
    let mut literal = route.clone();
    for name in &names {
        literal = literal.replacen(&format!("{{*{name}}}"), "", 1).replacen(
            &format!("{{{name}}}"),
            "",
            1,
        );
    }
    assert!(
        !literal.contains(['{', '}']),
        "{route:?} was accepted with a stray brace"
    );
    let values: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let raw = input.values.get(index).map(String::as_str).unwrap_or("v");
            let catch_all = route.contains(&format!("{{*{}}}", names[index]));
            let value = unreserved(raw, catch_all);
            if value.is_empty() && !catch_all {
                "v".to_string()
            } else {
                value
            }
        })
        .collect();
    let built = fill_template(&route, &values);
    let view = RequestView {
        method: &Method::GET,
        path: &built,
        query: None,
        host: None,
        headers: &headers,
    };
    let candidates = rules.candidates(&view);
    assert_eq!(
        candidates,
        vec![0],
        "route {route:?} does not match the path {built:?} built from it"
    );
    let params = rule.path_params(&built);
    assert_eq!(
        params.len(),
        names.len(),
        "{route:?} on {built:?}: {params:?}"
    );
    let by_name: Vec<String> = names
        .iter()
        .map(|name| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        fill_template(&route, &by_name),
        built,
        "{route:?}: parameters {params:?} do not rebuild {built:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Value-source templates
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Arbitrary)]
struct TemplateInput {
    text: String,
    params: Vec<(String, String)>,
    query: Vec<(String, String)>,
    request_header: Vec<u8>,
    response_header: Vec<u8>,
    /// JSON text (often not JSON at all).
    request_body: String,
    response_body: Option<String>,
}

struct FuzzContext {
    values: RequestValues,
    request_header: Vec<u8>,
    response_header: Vec<u8>,
}

impl Context for FuzzContext {
    fn path_param(&self, name: &str) -> Option<&str> {
        self.values.path_param(name)
    }

    fn query(&self, name: &str) -> Option<String> {
        self.values.query(name)
    }

    fn request_header(&self, _name: &HeaderName) -> Option<Cow<'_, str>> {
        Some(String::from_utf8_lossy(&self.request_header))
    }

    fn response_header(&self, _name: &HeaderName) -> Option<Cow<'_, str>> {
        (!self.response_header.is_empty()).then(|| String::from_utf8_lossy(&self.response_header))
    }

    fn request_body(&self) -> Result<&Value, &str> {
        self.values.request_body()
    }

    fn response_body(&self) -> Result<&Value, &str> {
        self.values.response_body()
    }
}

const SOURCE_PREFIXES: [&str; 5] = [
    "query:",
    "request.header:",
    "response.header:",
    "request.body:",
    "response.body:",
];

pub fn template(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let Ok(input) = TemplateInput::arbitrary(&mut source) else {
        return;
    };
    let text = short(input.text);
    let names: Vec<String> = input.params.iter().map(|(name, _)| name.clone()).collect();
    let Ok(template) = Template::parse(&text, &names) else {
        return;
    };
    let _ = template.needs();
    let context = FuzzContext {
        values: RequestValues {
            params: input.params,
            query: Some(input.query),
            request_body: serde_json::from_str(&input.request_body)
                .map_err(|error| error.to_string()),
            response_body: match input.response_body {
                Some(text) => serde_json::from_str(&text).map_err(|error| error.to_string()),
                None => Err("was larger than max_body_capture".to_string()),
            },
        },
        request_header: input.request_header,
        response_header: input.response_header,
    };
    let value = template.evaluate(&context);
    let text_value = template.evaluate_text(&context);
    // Both forms agree on whether a value could be had, except a whole body source that is
    // JSON null: a value as JSON, missing as text.
    if value.is_ok() != text_value.is_ok() {
        assert_eq!(value, Ok(Value::Null), "{text:?}");
    }
    if !text.contains(['{', '}']) && !SOURCE_PREFIXES.iter().any(|p| text.starts_with(p)) {
        assert_eq!(
            text_value.as_deref(),
            Ok(text.as_str()),
            "a literal is itself"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Client address
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Arbitrary)]
struct AddrInput {
    peer: ArbitraryIp,
    forwarded_for: Vec<Vec<u8>>,
    forwarded: Vec<Vec<u8>>,
    trusted: Vec<(ArbitraryIp, u8)>,
    /// Text hops, some built to look like addresses.
    hops: Vec<HopInput>,
}

#[derive(Debug, Arbitrary)]
enum ArbitraryIp {
    V4([u8; 4]),
    V6([u8; 16]),
    Mapped([u8; 4]),
}

impl ArbitraryIp {
    fn ip(&self) -> IpAddr {
        match self {
            ArbitraryIp::V4(octets) => IpAddr::V4(Ipv4Addr::from(*octets)),
            ArbitraryIp::V6(octets) => IpAddr::V6(Ipv6Addr::from(*octets)),
            ArbitraryIp::Mapped(octets) => IpAddr::V6(Ipv4Addr::from(*octets).to_ipv6_mapped()),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum HopInput {
    Text(String),
    Plain(ArbitraryIp),
    WithPort(ArbitraryIp, u16),
    Quoted(ArbitraryIp),
}

impl HopInput {
    fn text(&self) -> String {
        match self {
            HopInput::Text(text) => short(text.clone()),
            HopInput::Plain(ip) => ip.ip().to_string(),
            HopInput::WithPort(ip, port) => match ip.ip() {
                IpAddr::V4(v4) => format!("{v4}:{port}"),
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            },
            HopInput::Quoted(ip) => format!("\"{}\"", ip.ip()),
        }
    }
}

pub fn client_ip(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let Ok(input) = AddrInput::arbitrary(&mut source) else {
        return;
    };
    let trusted: Vec<ipnet::IpNet> = input
        .trusted
        .iter()
        .filter_map(|(ip, prefix)| ipnet::IpNet::new(ip.ip(), *prefix).ok())
        .collect();
    let mut headers = HeaderMap::new();
    for value in input.forwarded_for.iter().take(16) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append("x-forwarded-for", value);
        }
    }
    let hop_list: Vec<String> = input.hops.iter().take(32).map(HopInput::text).collect();
    if let Ok(value) = HeaderValue::from_str(&hop_list.join(", ")) {
        headers.append("x-forwarded-for", value);
    }
    for value in input.forwarded.iter().take(16) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(http::header::FORWARDED, value);
        }
    }
    for hop in &hop_list {
        if let Some(ip) = client_ip::parse_hop(hop) {
            assert_eq!(
                ip,
                client_ip::canonical(ip),
                "{hop:?} parsed to a non-canonical form"
            );
        }
    }
    for hop in &input.hops {
        if let HopInput::Plain(ip) | HopInput::WithPort(ip, _) | HopInput::Quoted(ip) = hop {
            assert_eq!(
                client_ip::parse_hop(&hop.text()),
                Some(client_ip::canonical(ip.ip())),
                "{hop:?}"
            );
        }
    }

    let peer = input.peer.ip();
    let resolved = client_ip::resolve(peer, &headers, &trusted);
    let chain = &resolved.believed_chain;
    assert_eq!(chain.last(), Some(&client_ip::canonical(peer)));
    assert_eq!(chain.first(), Some(&resolved.client));
    if !client_ip::is_trusted(peer, &trusted) {
        assert_eq!(
            chain,
            &vec![client_ip::canonical(peer)],
            "an untrusted peer was believed"
        );
    }
    for hop in &chain[1..] {
        assert!(
            client_ip::is_trusted(*hop, &trusted),
            "{hop} believed past an untrusted hop"
        );
    }
    // What the proxy forwards as X-Forwarded-For is always a valid header value.
    let forwarded: Vec<String> = chain.iter().map(ToString::to_string).collect();
    assert!(HeaderValue::from_str(&forwarded.join(", ")).is_ok());
}

// ---------------------------------------------------------------------------------------------
// JWT and the other actor sources
// ---------------------------------------------------------------------------------------------

const SECRET_VARIABLE: &str = "AUDITGATE_FUZZ_HS256_SECRET";
const SECRET: &str = "fuzz-secret-that-the-fuzzer-cannot-guess";
/// An API key the chain knows (by its SHA-256), sent as `?api_key=`.
const PARTNER_KEY: &str = "fuzz-partner-api-key-0123456789";
const PARTNER_KEY_SHA256: &str = "6e6a8e1dcc28ee6ae963e7ef456b6ff0d8ca785e6633601cb41e10522e59eb4d";

fn actor_chain() -> &'static ActorChain {
    static CHAIN: OnceLock<ActorChain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        std::env::set_var(SECRET_VARIABLE, SECRET);
        #[derive(serde::Deserialize)]
        struct File {
            actor: Vec<ActorFile>,
        }
        let text = format!(
            r#"
[[actor]]
from = "jwt"
hs256_secret_env = "{SECRET_VARIABLE}"
roles = "realm.roles"
tenant = "org.id"
on_invalid = "record_unverified"

[[actor]]
from = "jwt"
cookie = "session"
verify = false
email = "user.email"

[[actor]]
from = "basic"

[[actor]]
from = "header"
id = "x-forwarded-user"
email = "x-forwarded-email"
groups = "x-forwarded-groups"

[[actor]]
from = "api_key"
query = "api_key"
keys = [{{ name = "partner", sha256 = "{PARTNER_KEY_SHA256}" }}]
"#
        );
        let file: File = toml::from_str(&text).expect("the fuzz actor config parses");
        let files: Vec<(usize, ActorFile)> = file.actor.into_iter().enumerate().collect();
        ActorChain::compile(&files, &[], std::path::Path::new("."), &|name| {
            std::env::var(name).ok()
        })
        .expect("the fuzz actor config compiles")
    })
}

#[derive(Debug, Arbitrary)]
struct ActorInput {
    authorization: Authorization,
    cookie: Vec<u8>,
    /// A cookie `session=<token>` built from claims, unsigned.
    cookie_claims: Option<String>,
    forwarded_user: Vec<u8>,
    forwarded_groups: Vec<u8>,
    peer_trusted: bool,
    /// The query string: an API key (the known one, or any text) and other parameters.
    api_key: ApiKeyInput,
    query_rest: String,
    explain: bool,
}

#[derive(Debug, Arbitrary)]
enum ApiKeyInput {
    None,
    Known,
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Authorization {
    None,
    Raw(Vec<u8>),
    /// Claims (JSON text) signed with the configured secret: the only way to be verified.
    Signed(String),
    /// Claims signed with another key, or with the right key and a different algorithm.
    ForgedHs256(String, String),
    ForgedHs512(String),
    /// A token made of arbitrary parts: `header.payload.signature`, each base64url.
    Parts(Vec<u8>, Vec<u8>, Vec<u8>),
    Basic(String, String),
}

impl Authorization {
    /// The text this header was built from, for telling a value that was legitimately taken
    /// from it apart from a leak of another one.
    fn texts(&self) -> Vec<String> {
        let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match self {
            Authorization::None => Vec::new(),
            Authorization::Raw(bytes) => vec![lossy(bytes)],
            Authorization::Signed(claims) | Authorization::ForgedHs512(claims) => {
                vec![claims.clone()]
            }
            Authorization::ForgedHs256(claims, key) => vec![claims.clone(), key.clone()],
            Authorization::Parts(header, payload, signature) => {
                vec![lossy(header), lossy(payload), lossy(signature)]
            }
            Authorization::Basic(user, secret) => vec![user.clone(), secret.clone()],
        }
    }
}

fn claims(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_object)
}

fn sign(claims: &Value, secret: &str, algorithm: jsonwebtoken::Algorithm) -> Option<String> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .ok()
}

/// `name=value`, form-encoded as a query string carries it.
fn form_urlencoded_pair(name: &str, value: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (byte as char).to_string()
                }
                _ => format!("%{byte:02X}"),
            })
            .collect()
    };
    format!("{}={}", encode(name), encode(value))
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn jwt_actor(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let Ok(input) = ActorInput::arbitrary(&mut source) else {
        return;
    };
    let chain = actor_chain();
    let mut headers = HeaderMap::new();
    let mut signed_by_us = false;
    let mut token: Option<String> = None;
    let mut password: Option<String> = None;
    let mut bearer = |headers: &mut HeaderMap, text: String| {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {text}")) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        token = Some(text);
    };
    match &input.authorization {
        Authorization::None => {}
        Authorization::Raw(bytes) => {
            if let Ok(value) = HeaderValue::from_bytes(bytes) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        Authorization::Signed(text) => {
            if let Some(signed) = claims(text)
                .and_then(|claims| sign(&claims, SECRET, jsonwebtoken::Algorithm::HS256))
            {
                signed_by_us = true;
                bearer(&mut headers, signed);
            }
        }
        Authorization::ForgedHs256(text, key) => {
            if key != SECRET {
                if let Some(forged) = claims(text)
                    .and_then(|claims| sign(&claims, key, jsonwebtoken::Algorithm::HS256))
                {
                    bearer(&mut headers, forged);
                }
            }
        }
        Authorization::ForgedHs512(text) => {
            if let Some(forged) = claims(text)
                .and_then(|claims| sign(&claims, SECRET, jsonwebtoken::Algorithm::HS512))
            {
                bearer(&mut headers, forged);
            }
        }
        Authorization::Parts(header, payload, signature) => {
            bearer(
                &mut headers,
                format!(
                    "{}.{}.{}",
                    base64url(header),
                    base64url(payload),
                    base64url(signature)
                ),
            );
        }
        Authorization::Basic(user, secret) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            if let Ok(value) = HeaderValue::from_str(&format!("Basic {encoded}")) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
            password = Some(secret.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(&input.cookie) {
        headers.append(http::header::COOKIE, value);
    }
    if let Some(text) = &input.cookie_claims {
        let unsigned = format!(
            "{}.{}.",
            base64url(br#"{"alg":"none"}"#),
            base64url(text.as_bytes())
        );
        if let Ok(value) = HeaderValue::from_str(&format!("session={unsigned}")) {
            headers.append(http::header::COOKIE, value);
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(&input.forwarded_user) {
        headers.insert("x-forwarded-user", value);
    }
    if let Ok(value) = HeaderValue::from_bytes(&input.forwarded_groups) {
        headers.insert("x-forwarded-groups", value);
    }

    let key = match &input.api_key {
        ApiKeyInput::None => None,
        ApiKeyInput::Known => Some(PARTNER_KEY.to_string()),
        ApiKeyInput::Text(text) => Some(short(text.clone())),
    };
    let mut query = short(input.query_rest.clone());
    if let Some(key) = &key {
        let encoded: String = form_urlencoded_pair("api_key", key);
        query = if query.is_empty() {
            encoded
        } else {
            format!("{query}&{encoded}")
        };
    }
    let actor = chain.resolve(&ActorRequest {
        headers: &headers,
        query: Some(&query),
        path: "/",
        peer_trusted: input.peer_trusted,
        explain: input.explain,
    });

    if actor.verified && actor.source == Some("jwt") {
        assert!(
            signed_by_us,
            "a token not signed with the secret was verified: {actor:?}"
        );
    }
    if actor.source == Some("header") {
        assert!(
            input.peer_trusted,
            "identity headers believed from an untrusted peer"
        );
    }
    if actor.source.is_some() {
        assert!(actor.id.is_some() || actor.email.is_some(), "{actor:?}");
    }
    // What is recorded of the request: the actor's fields and roles, as raw text (an escaped
    // form could contain the needle by accident: `\u{18}m` holds `}m`). Notes are left out:
    // they are fixed sentences and configured header names, which a short password can match.
    let recorded: Vec<&str> = [&actor.id, &actor.email, &actor.name, &actor.tenant]
        .into_iter()
        .flatten()
        .chain(&actor.roles)
        .map(String::as_str)
        .collect();
    let holds = |needle: &str| recorded.iter().any(|text| text.contains(needle));
    // (Unless the same text was also sent where a value is legitimately taken from.)
    let elsewhere = |needle: &str| {
        input
            .authorization
            .texts()
            .iter()
            .any(|text| text.contains(needle))
            || [
                &input.cookie,
                &input.forwarded_user,
                &input.forwarded_groups,
            ]
            .iter()
            .any(|bytes| String::from_utf8_lossy(bytes).contains(needle))
            || input
                .cookie_claims
                .as_deref()
                .is_some_and(|text| text.contains(needle))
    };
    if actor.source == Some("api_key") {
        // Only the configured key names an actor (no HMAC secret is set for unknown ones).
        assert!(query.contains(PARTNER_KEY), "{query:?} gave {actor:?}");
        assert_eq!(actor.id.as_deref(), Some("partner"));
    }
    if let Some(key) = key.filter(|key| key.len() >= 16 && !elsewhere(key)) {
        assert!(!holds(&key), "the raw API key was recorded: {recorded:?}");
    }
    if let Some(token) = token.filter(|token| token.len() >= 24 && !elsewhere(token)) {
        assert!(!holds(&token), "the raw token was recorded: {recorded:?}");
    }
    if let (Authorization::Basic(user, _), Some(password)) = (&input.authorization, password) {
        if actor.source == Some("basic")
            && password.len() >= 8
            && !user.contains(&password)
            && !password.contains(':')
        {
            assert!(
                !holds(&password),
                "a basic auth password was recorded: {recorded:?} (password {password:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// signed_notes: tlog proofs, checkpoints, verifier keys and witness answers
// ---------------------------------------------------------------------------------------------

/// What the `signed_notes` target reads: raw text for one of the parsers of files and answers
/// that come from outside (an auditor's proof file, a witness's `add-checkpoint` answer, a vkey),
/// or a genuine signed proof with bytes changed in it.
#[derive(Debug, Arbitrary)]
enum NoteInput {
    ProofText(String),
    CheckpointText(String),
    VerifierKeyText(String),
    WitnessKeyText(String),
    WitnessAnswer(String),
    /// A real proof of entry `seq % size + 1` in a tree of `size % 40 + 1` entries, with the
    /// byte at each `(position, value)` replaced.
    MutatedProof {
        size: u8,
        seq: u8,
        edits: Vec<(u16, u8)>,
    },
}

struct NoteKeys {
    signer: auditgate::log::head::LogSigner,
    vkey: auditgate::log::checkpoint::VerifierKey,
    witness: auditgate::log::witness::WitnessKey,
}

const NOTE_ORIGIN: &str = "audit.example.com/fuzz";

fn note_keys() -> &'static NoteKeys {
    static KEYS: OnceLock<NoteKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = auditgate::log::head::LogSigner::generate();
        let vkey = signer
            .verifier_key(NOTE_ORIGIN)
            .expect("the fuzz target's own origin is valid");
        // A witness key of the cosignature/v1 type, from the same public key bytes: what matters
        // here is parsing, not who holds the private half.
        let witness_text = {
            let text = vkey.to_string();
            let mut parts = text.splitn(3, '+');
            let (_, _, key) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
            let mut bytes = base64::engine::general_purpose::STANDARD
                .decode(key)
                .expect("our own vkey is base64");
            bytes[0] = 0x04;
            let id = auditgate::log::witness::cosigner_key_id(
                "witness.fuzz/w1",
                bytes[1..].try_into().expect("an Ed25519 key is 32 bytes"),
            );
            format!(
                "witness.fuzz/w1+{id:08x}+{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            )
        };
        let witness = auditgate::log::witness::WitnessKey::parse(&witness_text)
            .expect("the fuzz target's own witness key is valid");
        NoteKeys {
            signer,
            vkey,
            witness,
        }
    })
}

/// A proof file parsed, written back, verified: writing what was read gives a file that reads the
/// same, and a proof that verifies names the entry at its index.
fn check_proof_text(text: &str) -> Option<auditgate::log::tlog_proof::VerifiedEntry> {
    use auditgate::log::tlog_proof::{verify_entry_proof, TlogProof};
    let proof = TlogProof::parse(text).ok()?;
    let again = TlogProof::parse(&proof.format()).expect("a proof we wrote reads back");
    assert_eq!(again, proof, "a proof changed when written and read back");
    let verified = verify_entry_proof(&proof, &note_keys().vkey).ok()?;
    assert_eq!(verified.entry.seq, proof.index + 1);
    assert_eq!(verified.checkpoint.origin, NOTE_ORIGIN);
    Some(verified)
}

pub fn signed_notes(data: &[u8]) {
    use auditgate::log::checkpoint::{Checkpoint, VerifierKey};
    use auditgate::log::witness::WitnessKey;
    let Ok(input) = NoteInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let keys = note_keys();
    match input {
        NoteInput::ProofText(text) => {
            // Only a proof signed by the fuzz target's key can verify, and the fuzzer cannot
            // sign: any text that verifies is a forgery.
            assert!(
                check_proof_text(&text).is_none(),
                "an unsigned proof verified"
            );
        }
        NoteInput::CheckpointText(text) => {
            if let Ok(checkpoint) = Checkpoint::parse_text(&text) {
                let again = Checkpoint::parse_text(&checkpoint.text())
                    .expect("a checkpoint we wrote reads back");
                assert_eq!(again.text(), checkpoint.text());
            }
            assert!(
                keys.vkey.verify_checkpoint(&text).is_err(),
                "an unsigned checkpoint verified"
            );
        }
        NoteInput::VerifierKeyText(text) => {
            if let Ok(key) = VerifierKey::parse(&text) {
                let again =
                    VerifierKey::parse(&key.to_string()).expect("a vkey we wrote reads back");
                assert_eq!(again.to_string(), key.to_string());
            }
        }
        NoteInput::WitnessKeyText(text) => {
            if let Ok(key) = WitnessKey::parse(&text) {
                let again =
                    WitnessKey::parse(&key.to_string()).expect("a witness key we wrote reads back");
                assert_eq!(again.to_string(), key.to_string());
            }
        }
        NoteInput::WitnessAnswer(body) => {
            // The witness key's private half is nobody's: no answer can carry a cosignature
            // that verifies, and none may panic.
            let checkpoint =
                "audit.example.com/fuzz\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
            assert!(keys
                .witness
                .cosignatures_in_response(&body, checkpoint)
                .is_err());
            let _ = auditgate::log::witness::parse_size_response(&body);
        }
        NoteInput::MutatedProof { size, seq, edits } => {
            mutated_proof(keys, u64::from(size) % 40 + 1, u64::from(seq), &edits)
        }
    }
}

fn mutated_proof(keys: &NoteKeys, size: u64, seq: u64, edits: &[(u16, u8)]) {
    use auditgate::entry::AuditEntry;
    use auditgate::log::head::TreeHead;
    use auditgate::log::merkle::{inclusion_proof, leaf_hash, root_at, MemoryNodes};
    use auditgate::log::tlog_proof::TlogProof;
    let seq = seq % size + 1;
    let entries: Vec<AuditEntry> = (1..=size)
        .map(|n| {
            let mut entry = AuditEntry::new("fuzz", format!("order.{n}"));
            entry.seq = n;
            entry
        })
        .collect();
    let leaves: Vec<_> = entries
        .iter()
        .map(|entry| leaf_hash(&entry.canonical_bytes()))
        .collect();
    let nodes = MemoryNodes::from_leaves(&leaves);
    let (Ok(root), Ok(inclusion)) = (
        root_at(&nodes, size),
        inclusion_proof(&nodes, seq - 1, size),
    ) else {
        panic!("a tree of {size} entries gives its root and proofs");
    };
    let Ok(head) = TreeHead::new("fuzz", size, root, chrono::Utc::now()) else {
        return;
    };
    let Ok(checkpoint) = keys.signer.sign_checkpoint(NOTE_ORIGIN, &head) else {
        return;
    };
    let original = TlogProof::for_entry(&entries[(seq - 1) as usize], inclusion, checkpoint);
    let text = original.format();
    let verified = check_proof_text(&text).expect("a genuine proof verifies");
    assert_eq!(verified.entry.seq, seq);
    let mut bytes = text.into_bytes();
    for (position, value) in edits.iter().take(8) {
        let position = usize::from(*position) % bytes.len();
        bytes[position] = *value;
    }
    let Ok(mutated) = String::from_utf8(bytes) else {
        return;
    };
    // Whatever was changed, a proof that still verifies proves the same entry at the same place
    // in the same tree: the bytes changed only what the format ignores.
    if let Some(verified) = check_proof_text(&mutated) {
        let parsed = TlogProof::parse(&mutated).expect("it verified, so it parsed");
        assert_eq!(parsed.index, original.index);
        assert_eq!(parsed.extra, original.extra);
        assert_eq!(parsed.inclusion, original.inclusion);
        assert_eq!(verified.checkpoint.size, size);
        assert_eq!(verified.checkpoint.root_hash, root);
    }
}
