//! Who made the request: ordered actor sources, first that yields wins.
//!
//! Sources are compiled once (keys parsed, secrets read from the environment) and evaluated per
//! request. Every actor records which source gave it and whether it was verified; an identity
//! that could not be verified is either recorded as unverified with the reason or dropped, as
//! configured. Secrets — passwords, raw tokens, API keys — never leave this module: what comes
//! out is a user name, claims, or the configured name (or keyed hash) of a key.
//!
//! Most sources read the request head. A `body` source reads the request body, which exists only
//! once the request has been read, so resolution has two steps: [`ActorChain::resolve_head`]
//! tries the sources in order until a head source yields, remembering the body sources it passed;
//! [`PendingActor::finish`] tries those with the captured body when the entry is finished. The
//! result is the same as trying every source in order.

mod api_key;
mod jwk;
mod jwks_remote;
mod jwt;

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use regex::RegexSet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::base::ConfigError;

/// How long a starting sidecar waits for the first fetch of each `jwks_url` key set.
pub const JWKS_START_WAIT: std::time::Duration = jwks_remote::FETCH_TIMEOUT;

/// One `[[actor]]` section as written. Which keys apply depends on `from`; a key that does not
/// apply to its source is a config error rather than silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorFile {
    /// jwt | header | basic | api_key | body
    pub from: String,
    /// jwt: header holding the token (default "authorization", read as `Bearer <token>`; any
    /// other header may hold the bare token, e.g. x-pomerium-jwt-assertion).
    /// api_key: header holding the key (in `authorization`, the part after the scheme).
    pub header: Option<String>,
    /// jwt: cookie holding the token, instead of a header.
    pub cookie: Option<String>,
    /// api_key: query parameter holding the key, instead of a header. jwt: query parameter
    /// holding the token (`access_token`), instead of a header or cookie.
    pub query: Option<String>,
    /// jwt: claim (dotted path) for the actor id (default "sub"). header: header name.
    /// body: JSON pointer into the request body.
    pub id: Option<String>,
    /// jwt: claim for the email (default "email"). header: header name. body: JSON pointer.
    pub email: Option<String>,
    /// jwt: claim for the display name (default "name"). header: header name. body: JSON pointer.
    pub name: Option<String>,
    /// jwt: claim (dotted path) holding the roles: a list, or a space/comma separated string.
    pub roles: Option<String>,
    /// header: header listing groups, comma-separated (recorded as roles).
    pub groups: Option<String>,
    /// jwt: claim for the tenant. header: header name. body: JSON pointer.
    pub tenant: Option<String>,
    /// jwt: environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// jwt: path to a PEM public key (RSA, EC P-256/P-384 or Ed25519), or the PEM text itself.
    pub public_key_pem: Option<String>,
    /// jwt: path to a JWKS file (`{"keys": [...]}`); the token's `kid` picks the key.
    pub jwks_file: Option<String>,
    /// jwt: URL of a JWKS document (https:// or http://), fetched when the sidecar starts and
    /// kept fresh. Until the first fetch succeeds, tokens are recorded unverified with the
    /// reason "key set not loaded yet"; a failed refresh keeps the last good keys.
    pub jwks_url: Option<String>,
    /// jwt: how often the `jwks_url` document is fetched again (default "10m").
    pub jwks_refresh: Option<String>,
    /// jwt: a token whose `kid` is not in the key set (a key rotation) triggers a refetch, at
    /// most once per this interval (default "30s"); a failed fetch is retried after it too.
    pub jwks_min_refresh: Option<String>,
    /// jwt: PEM file of the CAs trusted for an https `jwks_url` (a private CA); default: the
    /// system's CA store.
    pub jwks_ca_file: Option<String>,
    /// jwt: accepted algorithms (pinned; the token's `alg` only chooses among them). Default:
    /// the key's own (HS256 for a secret, RS256/ES256/EdDSA for a PEM, a JWK's `alg`).
    pub algorithms: Option<Vec<String>>,
    /// jwt: required issuer (`iss`).
    pub issuer: Option<String>,
    /// jwt: accepted audiences (`aud` must hold one of them).
    pub audience: Option<Vec<String>>,
    /// jwt: clock skew allowed for exp/nbf, in seconds (default 30).
    pub leeway_seconds: Option<u64>,
    /// jwt: false to read claims without verifying (every such actor is marked unverified).
    pub verify: Option<bool>,
    /// jwt: what an invalid token yields: "record_unverified" (default: its claims, marked
    /// unverified, with the reason) or "anonymous" (no actor, the reason noted).
    pub on_invalid: Option<String>,
    /// api_key: the known keys, each as a name and the SHA-256 (hex) of the key.
    pub keys: Option<Vec<ApiKeyFile>>,
    /// api_key: environment variable with a secret (16+ bytes) for naming keys that are not in
    /// `keys` as `key:<first 8 hex of HMAC-SHA256(secret, key)>`; without it they are ignored.
    pub hmac_key_env: Option<String>,
    /// body: route templates (`/login`, `/api/auth/{*rest}`) the source applies to; default all.
    pub paths: Option<Vec<String>>,
    /// header: true to remove this source's headers (id, email, name, groups, tenant) from a
    /// request whose peer is not in `proxy.trusted_proxies` before it reaches the app, so an app
    /// that trusts them cannot be fooled by a client setting them itself. The attempt is still
    /// recorded. Default false: auditgate changes nothing the app sees unless asked.
    pub strip_untrusted: Option<bool>,
}

/// One `keys = [{ name = "...", sha256 = "..." }]` item of an `api_key` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// What entries record as the actor when this key is used.
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// Who made a request, and how we know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actor {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
    /// Which source yielded the actor.
    pub source: Option<&'static str>,
    pub verified: bool,
    /// Why the identity could not be verified, or what was ignored; recorded in metadata.
    pub notes: Vec<String>,
    /// How the actor was found, step by step; only collected for `auditgate explain`.
    pub derivation: Vec<String>,
}

impl Actor {
    /// Extra facts for the entry's `_actor` metadata: roles and notes.
    pub fn metadata(&self) -> Option<Value> {
        if self.roles.is_empty() && self.notes.is_empty() {
            return None;
        }
        let mut object = Map::new();
        if !self.roles.is_empty() {
            object.insert("roles".into(), Value::from(self.roles.clone()));
        }
        if !self.notes.is_empty() {
            object.insert("notes".into(), Value::from(self.notes.clone()));
        }
        Some(Value::Object(object))
    }
}

/// The step-by-step account of a resolution, for `auditgate explain`; free when disabled.
#[derive(Debug, Default, Clone)]
struct Trace {
    enabled: bool,
    steps: Vec<String>,
    place: String,
}

impl Trace {
    fn step(&mut self, text: impl FnOnce() -> String) {
        if self.enabled {
            let line = format!("{}: {}", self.place, text());
            self.steps.push(line);
        }
    }

    fn at(&mut self, index: usize, from: &str) {
        if self.enabled {
            self.place = format!("actor #{} ({from})", index + 1);
        }
    }
}

struct HeaderSource {
    id: Option<HeaderName>,
    email: Option<HeaderName>,
    name: Option<HeaderName>,
    groups: Option<HeaderName>,
    tenant: Option<HeaderName>,
    /// Remove these headers from requests of untrusted peers before forwarding.
    strip_untrusted: bool,
}

struct BodySource {
    id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    tenant: Option<String>,
    /// Route templates the source applies to; `None` for every request.
    paths: Option<RegexSet>,
}

enum Source {
    Jwt(Box<jwt::JwtSource>),
    Basic,
    Header(HeaderSource),
    ApiKey(api_key::ApiKeySource),
    Body(BodySource),
}

impl Source {
    fn label(&self) -> &'static str {
        match self {
            Source::Jwt(_) => "jwt",
            Source::Basic => "basic",
            Source::Header(_) => "header",
            Source::ApiKey(_) => "api_key",
            Source::Body(_) => "body",
        }
    }
}

/// The compiled, ordered actor sources.
pub struct ActorChain {
    sources: Vec<Source>,
    trusted_proxies: Vec<IpNet>,
    /// The headers of every `strip_untrusted` header source, each once: removed from requests
    /// of untrusted peers before forwarding.
    strip_untrusted: Vec<HeaderName>,
    /// Every header an actor source reads (identity headers, token and API-key headers), each
    /// once. Only these spellings are read; any other spelling an app server would read as one
    /// of them (`x_forwarded_user`) is removed before forwarding, from every peer.
    identity_headers: Vec<HeaderName>,
    /// The headers a source reads one value of (a token, a key, `Authorization`, an identity
    /// header other than a groups list) and the cookies a token is read from, each once: a
    /// request that carries one of them twice is refused, since the source would read one and
    /// the app may read the other.
    single_value: SingleValue,
}

/// What [`ActorChain::repeated_credential`] looks for.
#[derive(Debug, Default)]
struct SingleValue {
    headers: Vec<HeaderName>,
    cookies: Vec<String>,
}

impl std::fmt::Debug for ActorChain {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ActorChain({} sources)", self.sources.len())
    }
}

/// What the actor sources see of a request head.
pub struct ActorRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The raw query string (for API keys sent as a query parameter).
    pub query: Option<&'a str>,
    /// The raw path (for body sources limited to some routes).
    pub path: &'a str,
    /// Whether the socket peer is a trusted proxy (identity headers are believed only then).
    pub peer_trusted: bool,
    /// Collect [`Actor::derivation`] (for `auditgate explain`; off on the proxy path).
    pub explain: bool,
}

/// The result of the head step: the actor the head sources gave, and the body sources that come
/// before it in the chain and so are tried first once the body is known.
#[derive(Debug, Clone)]
pub struct PendingActor {
    actor: Actor,
    body_sources: Vec<usize>,
    trace: Trace,
}

impl PendingActor {
    /// Whether the request body must be captured to finish the resolution.
    pub fn needs_body(&self) -> bool {
        !self.body_sources.is_empty()
    }

    /// Tries the pending body sources with the request body (parsed JSON, or why it is not
    /// available); the first that yields wins over the head result.
    pub fn finish(mut self, chain: &ActorChain, body: Result<&Value, &str>) -> Actor {
        for &index in &self.body_sources {
            let Some(Source::Body(source)) = chain.sources.get(index) else {
                continue;
            };
            self.trace.at(index, "body");
            let body = match body {
                Ok(body) => body,
                Err(why) => {
                    self.trace.step(|| format!("request body {why}"));
                    continue;
                }
            };
            if let Some(mut actor) = source.resolve(body, &mut self.trace) {
                actor.notes = std::mem::take(&mut self.actor.notes);
                actor.derivation = std::mem::take(&mut self.trace.steps);
                return actor;
            }
        }
        self.actor.derivation = std::mem::take(&mut self.trace.steps);
        self.actor
    }

    /// The head result as it stands (for exchanges that end before a body exists).
    pub fn without_body(self, chain: &ActorChain) -> Actor {
        self.finish(chain, Err("was not read"))
    }
}

/// Resolves a path from the config against the config file's directory.
fn header_name(
    location: &str,
    key: &str,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(ConfigError::new(
                &format!("{location}.{key}"),
                format!("`{text}` is not a header name"),
            ));
            None
        }
    }
}

/// Where an `[[actor]]` entry is, for error messages: `actor #2 (jwt)`.
pub fn actor_location(index: usize, from: Option<&str>) -> String {
    match from {
        Some(from) => format!("actor #{} ({from})", index + 1),
        None => format!("actor #{}", index + 1),
    }
}

/// Every optional key of an `[[actor]]` entry, whether it is given, and the sources it applies
/// to.
fn given_keys(file: &ActorFile) -> [(&'static str, bool, &'static [&'static str]); 26] {
    const JWT: &[&str] = &["jwt"];
    [
        ("header", file.header.is_some(), &["jwt", "api_key"]),
        ("cookie", file.cookie.is_some(), JWT),
        ("query", file.query.is_some(), &["jwt", "api_key"]),
        ("id", file.id.is_some(), &["jwt", "header", "body"]),
        ("email", file.email.is_some(), &["jwt", "header", "body"]),
        ("name", file.name.is_some(), &["jwt", "header", "body"]),
        ("roles", file.roles.is_some(), JWT),
        ("groups", file.groups.is_some(), &["header"]),
        ("tenant", file.tenant.is_some(), &["jwt", "header", "body"]),
        ("hs256_secret_env", file.hs256_secret_env.is_some(), JWT),
        ("public_key_pem", file.public_key_pem.is_some(), JWT),
        ("jwks_file", file.jwks_file.is_some(), JWT),
        ("jwks_url", file.jwks_url.is_some(), JWT),
        ("jwks_refresh", file.jwks_refresh.is_some(), JWT),
        ("jwks_min_refresh", file.jwks_min_refresh.is_some(), JWT),
        ("jwks_ca_file", file.jwks_ca_file.is_some(), JWT),
        ("algorithms", file.algorithms.is_some(), JWT),
        ("issuer", file.issuer.is_some(), JWT),
        ("audience", file.audience.is_some(), JWT),
        ("leeway_seconds", file.leeway_seconds.is_some(), JWT),
        ("verify", file.verify.is_some(), JWT),
        ("on_invalid", file.on_invalid.is_some(), JWT),
        ("keys", file.keys.is_some(), &["api_key"]),
        ("hmac_key_env", file.hmac_key_env.is_some(), &["api_key"]),
        ("paths", file.paths.is_some(), &["body"]),
        (
            "strip_untrusted",
            file.strip_untrusted.is_some(),
            &["header"],
        ),
    ]
}

const SOURCES: [&str; 5] = ["jwt", "header", "basic", "api_key", "body"];

impl ActorChain {
    pub fn empty() -> ActorChain {
        ActorChain {
            sources: Vec::new(),
            trusted_proxies: Vec::new(),
            strip_untrusted: Vec::new(),
            identity_headers: Vec::new(),
            single_value: SingleValue::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    /// Compiles the `[[actor]]` entries; `base` is the directory key files are relative to, and
    /// `environment` reads the variables `hs256_secret_env` names (the process environment, or
    /// the lookup `Config::parse_with` was given). Every error is collected with the entry it is
    /// in.
    pub fn compile(
        files: &[(usize, ActorFile)],
        trusted_proxies: &[IpNet],
        base: &Path,
        environment: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ActorChain, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        for (index, file) in files {
            let location = actor_location(*index, Some(&file.from));
            if let Some(source) = compile_source(file, base, environment, &location, &mut errors) {
                if let Source::Jwt(jwt) = &source {
                    if let Some(remote) = jwt.remote_keys() {
                        remote.set_actor_position(index + 1);
                    }
                }
                sources.push(source);
            }
        }
        let mut strip_untrusted: Vec<HeaderName> = Vec::new();
        for source in &sources {
            if let Source::Header(header) = source {
                if header.strip_untrusted {
                    for name in header.names() {
                        if !strip_untrusted.contains(name) {
                            strip_untrusted.push(name.clone());
                        }
                    }
                }
            }
        }
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for source in &sources {
            let read: Vec<&HeaderName> = match source {
                Source::Header(header) => header.names().collect(),
                Source::Jwt(jwt) => jwt.token_header().into_iter().collect(),
                Source::ApiKey(key) => match &key.place {
                    api_key::KeyPlace::Header(name) => vec![name],
                    api_key::KeyPlace::Query(_) => Vec::new(),
                },
                Source::Basic | Source::Body(_) => Vec::new(),
            };
            for name in read {
                if !identity_headers.contains(name) {
                    identity_headers.push(name.clone());
                }
            }
        }
        let single_value = SingleValue::of(&sources);
        if errors.is_empty() {
            Ok(ActorChain {
                sources,
                trusted_proxies: trusted_proxies.to_vec(),
                strip_untrusted,
                identity_headers,
                single_value,
            })
        } else {
            Err(errors)
        }
    }

    /// Starts the background refresh of every key set fetched from a URL (`jwks_url`), on the
    /// current tokio runtime; a set already started is left alone. The tasks end by themselves
    /// once this chain is dropped. Fetches are counted in `metrics`, labelled by the source's
    /// `[[actor]]` position and URL host.
    pub fn start_key_refresh(&self, metrics: &crate::metrics::JwksMetrics) {
        for remote in self.remote_key_sets() {
            remote.start(metrics.source(remote.actor_position(), remote.host()));
        }
    }

    /// Waits until every URL key set has made its first fetch attempt, at most `timeout`, so
    /// that a sidecar whose key server answers serves its first request with keys.
    pub async fn wait_for_keys(&self, timeout: std::time::Duration) {
        for remote in self.remote_key_sets() {
            remote.wait_first_attempt(timeout).await;
        }
    }

    /// Fetches every URL key set once, now (for `auditgate explain`, which runs no background
    /// task).
    pub async fn load_keys_once(&self) {
        for remote in self.remote_key_sets() {
            remote.fetch_and_install().await;
        }
    }

    /// On a reload: each URL key set of this chain starts with the keys `previous` holds for the
    /// same URL, instead of none until its first fetch.
    pub fn take_over_keys(&self, previous: &ActorChain) {
        for remote in self.remote_key_sets() {
            for old in previous.remote_key_sets() {
                remote.take_over(old);
            }
        }
    }

    fn remote_key_sets(&self) -> impl Iterator<Item = &std::sync::Arc<jwks_remote::RemoteKeys>> {
        self.sources.iter().filter_map(|source| match source {
            Source::Jwt(jwt) => jwt.remote_keys(),
            _ => None,
        })
    }

    /// One line per source, for `auditgate check`: `jwt (header authorization)`.
    pub fn describe(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|source| match source {
                Source::Jwt(jwt) => format!("jwt ({})", jwt.describe()),
                Source::Basic => "basic (user name of Authorization: Basic)".to_string(),
                Source::Header(header) => {
                    let names: Vec<&str> = [&header.id, &header.email]
                        .into_iter()
                        .flatten()
                        .map(HeaderName::as_str)
                        .collect();
                    let strip = if header.strip_untrusted {
                        "; removed from other peers' requests"
                    } else {
                        ""
                    };
                    format!(
                        "header ({}, from trusted proxies only{strip})",
                        names.join(", ")
                    )
                }
                Source::ApiKey(key) => format!("api_key ({})", key.describe()),
                Source::Body(body) => format!(
                    "body ({})",
                    [&body.id, &body.email]
                        .into_iter()
                        .flatten()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect()
    }

    /// Request headers whose values are credentials of some source (JWT token headers, API-key
    /// headers): never stored, whatever the redaction mode.
    pub fn secret_headers(&self) -> Vec<HeaderName> {
        let mut names = Vec::new();
        for source in &self.sources {
            match source {
                Source::Jwt(jwt) => names.extend(jwt.token_header().cloned()),
                Source::ApiKey(key) => {
                    if let api_key::KeyPlace::Header(name) = &key.place {
                        names.push(name.clone());
                    }
                }
                _ => {}
            }
        }
        names
    }

    /// Removes, before forwarding, every spelling of an identity header that the chain does not
    /// read (`X_Forwarded_User` for `x-forwarded-user`: CGI, WSGI, PHP and nginx with
    /// `underscores_in_headers` read both as `HTTP_X_FORWARDED_USER`), whatever the peer; and,
    /// when the peer is not a trusted proxy, the identity headers of `strip_untrusted` header
    /// sources in every spelling. Returns the identity headers of which some spelling was
    /// removed. Called on the request to be forwarded, after [`ActorChain::resolve_head`] has seen
    /// the original headers and noted the attempt; costs one pass over the header names when no
    /// name could be another spelling.
    pub fn strip_untrusted_headers(
        &self,
        headers: &mut HeaderMap,
        peer_trusted: bool,
    ) -> Vec<&HeaderName> {
        let mut removed = Vec::new();
        let others = self.other_spellings(headers);
        for (other, canonical) in &others {
            headers.remove(other);
            if !removed.contains(canonical) {
                removed.push(*canonical);
            }
        }
        if !peer_trusted {
            for name in &self.strip_untrusted {
                if headers.remove(name).is_some() && !removed.contains(&name) {
                    removed.push(name);
                }
            }
        }
        removed
    }

    /// The request's headers that an app may read as one of the chain's identity headers but
    /// that are spelled otherwise, each with the identity header it stands for.
    fn other_spellings(&self, headers: &HeaderMap) -> Vec<(HeaderName, &HeaderName)> {
        // Header names arrive lowercased, so a configured name without `_` can only be spelled
        // otherwise with one; most requests have no such name and stop here.
        let underscored = self
            .identity_headers
            .iter()
            .any(|name| name.as_str().contains('_'));
        if self.identity_headers.is_empty()
            || (!underscored && !headers.keys().any(|name| name.as_str().contains('_')))
        {
            return Vec::new();
        }
        let mut others = Vec::new();
        for canonical in &self.identity_headers {
            for other in crate::identity::client_ip::other_spellings(headers, canonical.as_str()) {
                others.push((other.clone(), canonical));
            }
        }
        others
    }

    /// The first credential or identity header (`header authorization`) or token cookie
    /// (`cookie session`) that a source reads one value of and the request carries more than
    /// once. Apps differ on which of two they use (the first, the last, both joined), so no
    /// entry could name the actor the app acted for; the request is refused instead. A groups
    /// header is a list and may repeat: its values are read together. Costs one map lookup per
    /// header read, and a scan of the Cookie fields only when a token is read from a cookie.
    pub fn repeated_credential(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(name) = self
            .single_value
            .headers
            .iter()
            .find(|name| headers.get_all(*name).iter().nth(1).is_some())
        {
            return Some(format!("header {name}"));
        }
        self.single_value
            .cookies
            .iter()
            .find(|cookie| {
                cookies(headers)
                    .filter(|(name, _)| name == cookie)
                    .nth(1)
                    .is_some()
            })
            .map(|cookie| format!("cookie {cookie}"))
    }

    /// Query parameters that carry API keys: never stored.
    pub fn secret_query_parameters(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|source| match source {
                Source::ApiKey(key) => match &key.place {
                    api_key::KeyPlace::Query(name) => Some(name.clone()),
                    api_key::KeyPlace::Header(_) => None,
                },
                Source::Jwt(jwt) => jwt.token_query().map(str::to_string),
                _ => None,
            })
            .collect()
    }

    /// The head step: tries the sources in order until a head source yields. Notes from sources
    /// that did not yield (an ignored spoof, an invalid token) are kept on the result.
    pub fn resolve_head(&self, request: &ActorRequest) -> PendingActor {
        let mut notes = Vec::new();
        let mut body_sources = Vec::new();
        let mut trace = Trace {
            enabled: request.explain,
            place: "actor".into(),
            ..Trace::default()
        };
        let others = self.other_spellings(request.headers);
        if !others.is_empty() {
            let named = others
                .iter()
                .map(|(other, canonical)| format!("{other} (read by some apps as {canonical})"))
                .collect::<Vec<_>>()
                .join(", ");
            notes.push(format!(
                "header: removed {named} before forwarding: only the configured spelling is read (spoof attempt)"
            ));
            trace.step(|| format!("removed {named} before forwarding: only the configured spelling is read (spoof attempt)"));
        }
        for (index, source) in self.sources.iter().enumerate() {
            trace.at(index, source.label());
            let found = match source {
                Source::Jwt(jwt) => {
                    jwt.resolve(request.headers, request.query, &mut notes, &mut trace)
                }
                Source::Basic => basic(request.headers, &mut notes, &mut trace),
                Source::Header(header) => header.resolve(request, &mut notes, &mut trace),
                Source::ApiKey(key) => {
                    key.resolve(request.headers, request.query, &mut notes, &mut trace)
                }
                Source::Body(body) => {
                    if body.applies_to(request.path) {
                        trace.step(|| "read once the request body has arrived".into());
                        body_sources.push(index);
                    } else {
                        trace.step(|| "does not apply to this path".into());
                    }
                    None
                }
            };
            if let Some(mut actor) = found {
                // Sources after the winner are not asked, but headers a stripping source removes
                // are still a spoof attempt to record.
                for (later, source) in self.sources.iter().enumerate().skip(index + 1) {
                    if let Source::Header(header) = source {
                        trace.at(later, source.label());
                        header.note_removed(request, &mut notes, &mut trace);
                    }
                }
                actor.notes.splice(0..0, notes);
                return PendingActor {
                    actor,
                    body_sources,
                    trace,
                };
            }
        }
        trace.place = "actor".into();
        if !self.sources.is_empty() && body_sources.is_empty() {
            trace.step(|| "no source yielded: anonymous".into());
        }
        PendingActor {
            actor: Actor {
                notes,
                ..Actor::default()
            },
            body_sources,
            trace,
        }
    }

    /// Both steps at once, for a request whose body is not available.
    pub fn resolve(&self, request: &ActorRequest) -> Actor {
        self.resolve_head(request).without_body(self)
    }
}

fn compile_source(
    file: &ActorFile,
    base: &Path,
    environment: &dyn Fn(&str) -> Option<String>,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Source> {
    if !SOURCES.contains(&file.from.as_str()) {
        errors.push(ConfigError::new(
            &format!("{location}.from"),
            format!("`{}` is not one of {}", file.from, SOURCES.join(", ")),
        ));
        return None;
    }
    for (key, given, applies) in given_keys(file) {
        if given && !applies.contains(&file.from.as_str()) {
            let hint = match (file.from.as_str(), key) {
                ("jwt", "groups") => " (use roles)",
                ("header", "roles") => " (use groups)",
                ("header", "header") => " (name the headers in id, email, name, groups, tenant)",
                _ => "",
            };
            errors.push(ConfigError::new(
                &format!("{location}.{key}"),
                format!("does not apply to from = \"{}\"{hint}", file.from),
            ));
        }
    }
    match file.from.as_str() {
        "basic" => Some(Source::Basic),
        "header" => {
            let mut named = |key: &str, value: &Option<String>| {
                value
                    .as_deref()
                    .and_then(|text| header_name(location, key, text, errors))
            };
            let source = HeaderSource {
                id: named("id", &file.id),
                email: named("email", &file.email),
                name: named("name", &file.name),
                groups: named("groups", &file.groups),
                tenant: named("tenant", &file.tenant),
                strip_untrusted: file.strip_untrusted.unwrap_or(false),
            };
            if file.id.is_none() && file.email.is_none() {
                errors.push(ConfigError::new(
                    location,
                    "needs at least `id` or `email`: the header names the auth proxy sets (e.g. x-forwarded-user)",
                ));
            }
            Some(Source::Header(source))
        }
        "jwt" => jwt::compile(file, base, environment, location, errors)
            .map(|jwt| Source::Jwt(Box::new(jwt))),
        "api_key" => api_key::compile(file, location, errors).map(Source::ApiKey),
        "body" => compile_body(file, location, errors).map(Source::Body),
        _ => None,
    }
}

fn compile_body(
    file: &ActorFile,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<BodySource> {
    let mut pointer = |key: &str, value: &Option<String>| -> Option<String> {
        let text = value.as_deref()?;
        if text.starts_with('/') {
            Some(text.to_string())
        } else {
            errors.push(ConfigError::new(
                &format!("{location}.{key}"),
                format!("`{text}` is not a JSON pointer into the request body (e.g. /email)"),
            ));
            None
        }
    };
    let source = BodySource {
        id: pointer("id", &file.id),
        email: pointer("email", &file.email),
        name: pointer("name", &file.name),
        tenant: pointer("tenant", &file.tenant),
        paths: None,
    };
    if file.id.is_none() && file.email.is_none() {
        errors.push(ConfigError::new(
            location,
            "needs at least `id` or `email`: a JSON pointer into the request body (e.g. /email)",
        ));
    }
    let paths = match &file.paths {
        None => None,
        Some(templates) => {
            let mut patterns = Vec::new();
            for template in templates {
                match crate::request::route::compile_route(template) {
                    Ok((pattern, _)) => patterns.push(pattern),
                    Err(message) => {
                        errors.push(ConfigError::new(&format!("{location}.paths"), message))
                    }
                }
            }
            if templates.is_empty() {
                errors.push(ConfigError::new(
                    &format!("{location}.paths"),
                    "is empty; leave it out to read every request body",
                ));
            }
            match RegexSet::new(&patterns) {
                Ok(set) => Some(set),
                Err(error) => {
                    errors.push(ConfigError::new(
                        &format!("{location}.paths"),
                        error.to_string(),
                    ));
                    None
                }
            }
        }
    };
    Some(BodySource { paths, ..source })
}

/// The value of a named cookie from any `Cookie` header.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers).find_map(|(key, value)| (key == name).then_some(value))
}

/// Every cookie over all Cookie fields, in order, as (name, value without quotes).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            Some((key, value.trim_matches('"')))
        })
}

impl SingleValue {
    fn of(sources: &[Source]) -> SingleValue {
        let mut single = SingleValue::default();
        for source in sources {
            let headers: Vec<&HeaderName> = match source {
                Source::Header(header) => [&header.id, &header.email, &header.name, &header.tenant]
                    .into_iter()
                    .flatten()
                    .collect(),
                Source::Jwt(jwt) => {
                    if let Some(cookie) = jwt.token_cookie() {
                        if !single.cookies.iter().any(|known| known == cookie) {
                            single.cookies.push(cookie.to_string());
                        }
                    }
                    jwt.token_header().into_iter().collect()
                }
                Source::ApiKey(key) => match &key.place {
                    api_key::KeyPlace::Header(name) => vec![name],
                    api_key::KeyPlace::Query(_) => Vec::new(),
                },
                Source::Basic => vec![&http::header::AUTHORIZATION],
                Source::Body(_) => Vec::new(),
            };
            for name in headers {
                if !single.headers.contains(name) {
                    single.headers.push(name.clone());
                }
            }
        }
        single
    }
}

fn basic(headers: &HeaderMap, notes: &mut Vec<String>, trace: &mut Trace) -> Option<Actor> {
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        trace.step(|| "no Authorization header".into());
        return None;
    };
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        trace.step(|| "Authorization is not Basic".into());
        return None;
    }
    // RFC 7617: base64 of `user-id ":" password`. Anything else is a malformed credential, never
    // a user name: without the colon the decoded text may well be the password itself.
    let user = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            // Only the user name is kept; the password is dropped here and never copied anywhere.
            text.split_once(':').map(|(user, _)| user.to_string())
        });
    let Some(user) = user else {
        notes.push(
            "basic: malformed Authorization: Basic (not base64 of user:password); no user name recorded"
                .to_string(),
        );
        trace.step(|| "malformed credentials (not base64 of user:password): no actor".into());
        return None;
    };
    if user.is_empty() {
        trace.step(|| "empty user name".into());
        return None;
    }
    trace.step(|| {
        "user name from Authorization: Basic (the password is discarded; the app checks it, so unverified)"
            .into()
    });
    Some(Actor {
        id: Some(user),
        source: Some("basic"),
        verified: false,
        ..Actor::default()
    })
}

impl HeaderSource {
    /// Every header the source reads.
    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.id,
            &self.email,
            &self.name,
            &self.groups,
            &self.tenant,
        ]
        .into_iter()
        .flatten()
    }

    /// The source's headers the request carries, sorted and joined: `x-forwarded-email, ...`.
    fn present_names(&self, headers: &HeaderMap) -> String {
        let names: BTreeSet<&str> = self
            .names()
            .filter(|name| headers.contains_key(*name))
            .map(HeaderName::as_str)
            .collect();
        names.into_iter().collect::<Vec<_>>().join(", ")
    }

    /// Notes headers that [`ActorChain::strip_untrusted_headers`] will remove from this request,
    /// for when the source does not get to read them (no id or email, or an earlier source won).
    fn note_removed(&self, request: &ActorRequest, notes: &mut Vec<String>, trace: &mut Trace) {
        if !self.strip_untrusted || request.peer_trusted {
            return;
        }
        let names = self.present_names(request.headers);
        if names.is_empty() {
            return;
        }
        notes.push(format!(
            "header: removed {names} from a peer that is not a trusted proxy before forwarding (spoof attempt)"
        ));
        trace.step(|| {
            format!("removed {names} before forwarding: the peer is not in proxy.trusted_proxies (spoof attempt)")
        });
    }

    fn resolve(
        &self,
        request: &ActorRequest,
        notes: &mut Vec<String>,
        trace: &mut Trace,
    ) -> Option<Actor> {
        let read = |name: &Option<HeaderName>| -> Option<String> {
            let value = request.headers.get(name.as_ref()?)?.to_str().ok()?.trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let id = read(&self.id);
        let email = read(&self.email);
        if id.is_none() && email.is_none() {
            trace.step(|| "no identity headers".into());
            self.note_removed(request, notes, trace);
            return None;
        }
        if !request.peer_trusted {
            let names = self.present_names(request.headers);
            let removed = if self.strip_untrusted {
                "; removed before forwarding"
            } else {
                ""
            };
            notes.push(format!(
                "header: ignored {names} from a peer that is not a trusted proxy (spoof attempt){removed}"
            ));
            trace.step(|| {
                format!("ignored {names}: the peer is not in proxy.trusted_proxies (spoof attempt){removed}")
            });
            return None;
        }
        trace.step(|| "identity headers from a trusted proxy: verified".into());
        Some(Actor {
            id,
            email,
            name: read(&self.name),
            // A list header: every field counts (RFC 9110 section 5.3), as when an identity
            // proxy sends one field per group.
            roles: self
                .groups
                .iter()
                .flat_map(|name| request.headers.get_all(name))
                .filter_map(|value| value.to_str().ok())
                .flat_map(|groups| groups.split(','))
                .map(|group| group.trim().to_string())
                .filter(|group| !group.is_empty())
                .collect(),
            tenant: read(&self.tenant),
            source: Some("header"),
            verified: true,
            ..Actor::default()
        })
    }
}

impl BodySource {
    fn applies_to(&self, path: &str) -> bool {
        self.paths.as_ref().is_none_or(|paths| paths.is_match(path))
    }

    fn resolve(&self, body: &Value, trace: &mut Trace) -> Option<Actor> {
        let text = |pointer: &Option<String>| -> Option<String> {
            match body.pointer(pointer.as_deref()?)? {
                Value::String(text) if !text.is_empty() => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        };
        let id = text(&self.id);
        let email = text(&self.email);
        if id.is_none() && email.is_none() {
            trace.step(|| "the request body names nobody".into());
            return None;
        }
        trace.step(|| {
            "identity read from the request body: what the request claims, so unverified".into()
        });
        Some(Actor {
            id,
            email,
            name: text(&self.name),
            tenant: text(&self.tenant),
            source: Some("body"),
            verified: false,
            ..Actor::default()
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::test_headers as headers;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn parse(text: &str) -> Vec<(usize, ActorFile)> {
        #[derive(Deserialize)]
        struct File {
            actor: Vec<ActorFile>,
        }
        let file: File = toml::from_str(text).expect("parses");
        file.actor.into_iter().enumerate().collect()
    }

    fn chain(text: &str) -> ActorChain {
        ActorChain::compile(&parse(text), &[], Path::new("/"), &|name| {
            std::env::var(name).ok()
        })
        .expect("compiles")
    }

    fn errors(text: &str) -> String {
        let errors = ActorChain::compile(&parse(text), &[], Path::new("/"), &|name| {
            std::env::var(name).ok()
        })
        .expect_err("invalid");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        all.join("\n")
    }

    #[test]
    fn a_jwt_comes_from_one_place_and_its_query_parameter_is_a_secret() {
        let both = errors("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\nquery = \"access_token\"\ncookie = \"session\"\n");
        assert!(
            both.contains("give one of header, cookie or query"),
            "{both}"
        );
        let empty = errors(
            "[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\nquery = \"\"\n",
        );
        assert!(empty.contains("names no query parameter"), "{empty}");
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\nquery = \"access_token\"\n");
        assert_eq!(
            chain.secret_query_parameters(),
            vec!["access_token".to_string()]
        );
    }

    fn resolve(chain: &ActorChain, headers: &HeaderMap) -> Actor {
        chain.resolve(&ActorRequest {
            headers,
            query: None,
            path: "/",
            peer_trusted: false,
            explain: true,
        })
    }

    fn bearer(chain: &ActorChain, token: &str) -> Actor {
        resolve(
            chain,
            &headers(&[("authorization", &format!("Bearer {token}"))]),
        )
    }

    fn hs256(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encodes")
    }

    fn in_ten_minutes() -> i64 {
        chrono::Utc::now().timestamp() + 600
    }

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A P-256 key: the PEM private key and its public JWK.
    fn p256_key(kid: &str) -> (EncodingKey, Value) {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let pem = secret
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(point.x().expect("x")), "y": b64url(point.y().expect("y")),
        });
        (EncodingKey::from_ec_pem(pem.as_bytes()).expect("key"), jwk)
    }

    /// An Ed25519 key: the PEM private key and its public JWK.
    fn ed25519_key(kid: &str) -> (EncodingKey, Value) {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("pem");
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": b64url(signing.verifying_key().as_bytes()),
        });
        (EncodingKey::from_ed_pem(pem.as_bytes()).expect("key"), jwk)
    }

    fn signed(algorithm: Algorithm, kid: Option<&str>, claims: Value, key: &EncodingKey) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, key).expect("encodes")
    }

    fn jwks_file(keys: &[&Value]) -> tempfile_path::TempFile {
        tempfile_path::TempFile::with(&json!({ "keys": keys }).to_string())
    }

    /// A file removed on drop (the test binary has no tempfile crate).
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn with(text: &str) -> TempFile {
                let path = std::env::temp_dir()
                    .join(format!("auditgate-actor-{}.json", ulid::Ulid::new()));
                std::fs::write(&path, text).expect("write");
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn verified_hs256_jwt() {
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\nroles = \"realm.roles\"\ntenant = \"org.id\"\n");
        let token = hs256(
            json!({"sub": "u1", "email": "a@x.io", "exp": in_ten_minutes(), "realm": {"roles": ["admin"]}, "org": {"id": 7}}),
            "s3cret",
        );
        let actor = bearer(&chain, &token);
        assert_eq!(actor.id.as_deref(), Some("u1"));
        assert_eq!(actor.email.as_deref(), Some("a@x.io"));
        assert_eq!(actor.roles, vec!["admin".to_string()]);
        assert_eq!(actor.tenant.as_deref(), Some("7"));
        assert!(actor.verified);
        assert_eq!(actor.source, Some("jwt"));
        assert!(
            actor.derivation[0].contains("verified (HS256)"),
            "{:?}",
            actor.derivation
        );
    }

    #[test]
    fn wrongly_signed_or_expired_jwt_is_unverified_with_reason() {
        let chain =
            chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_2\"\n");
        let actor = bearer(&chain, &hs256(json!({"sub": "mallory"}), "wrong"));
        assert_eq!(actor.id.as_deref(), Some("mallory"));
        assert!(!actor.verified);
        assert_eq!(
            actor.notes,
            vec!["jwt: signature does not verify".to_string()]
        );

        let actor = bearer(&chain, &hs256(json!({"sub": "old", "exp": 1000}), "right"));
        assert!(!actor.verified);
        assert_eq!(actor.notes, vec!["jwt: token expired".to_string()]);
    }

    #[test]
    fn alg_none_and_key_confusion_are_refused_before_any_signature_check() {
        let chain =
            chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_5\"\n");
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(br#"{"sub":"root"}"#)
        );
        let actor = bearer(&chain, &none);
        assert!(!actor.verified);
        assert_eq!(
            actor.notes,
            vec!["jwt: algorithm none is not accepted".to_string()]
        );

        let (es_key, _) = p256_key("a");
        let es = signed(Algorithm::ES256, None, json!({"sub": "x"}), &es_key);
        let actor = bearer(&chain, &es);
        assert_eq!(
            actor.notes,
            vec!["jwt: algorithm \"ES256\" is not accepted (pinned: HS256)".to_string()]
        );
    }

    #[test]
    fn garbage_tokens_never_panic() {
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_3\"\non_invalid = \"anonymous\"\n");
        let huge = format!("Bearer {}", "a".repeat(100_000));
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer a.b",
            "Bearer ...",
            "Bearer e30.e30.",
            "Bearer %%%.%%%.%%%",
            "Bearer e30.e30.e30.e30",
            "Basic Og==",
            huge.as_str(),
        ] {
            let actor = resolve(&chain, &headers(&[("authorization", value)]));
            assert_eq!(actor.id, None, "{value}");
        }
    }

    #[test]
    fn jwks_picks_the_key_by_kid_across_families() {
        let (ec, ec_jwk) = p256_key("ec-1");
        let (ed, ed_jwk) = ed25519_key("ed-1");
        let file = jwks_file(&[&ec_jwk, &ed_jwk]);
        let chain = chain(&format!(
            "[[actor]]\nfrom = \"jwt\"\njwks_file = {:?}\nissuer = \"https://idp\"\naudience = [\"api\"]\n",
            file.0.display()
        ));
        let claims =
            json!({"sub": "u", "iss": "https://idp", "aud": "api", "exp": in_ten_minutes()});
        let actor = bearer(
            &chain,
            &signed(Algorithm::ES256, Some("ec-1"), claims.clone(), &ec),
        );
        assert!(actor.verified, "{:?}", actor.notes);
        let actor = bearer(
            &chain,
            &signed(Algorithm::EdDSA, Some("ed-1"), claims.clone(), &ed),
        );
        assert!(actor.verified, "{:?}", actor.notes);
        // The Ed25519 key's kid on an ES256 token: the key does not accept that algorithm.
        let actor = bearer(
            &chain,
            &signed(Algorithm::ES256, Some("ed-1"), claims.clone(), &ec),
        );
        assert!(!actor.verified);
        assert!(
            actor.notes[0].contains("is not accepted (pinned: EdDSA)"),
            "{:?}",
            actor.notes
        );
        // An unknown kid, and no kid with two keys in the set.
        let actor = bearer(
            &chain,
            &signed(Algorithm::ES256, Some("gone"), claims.clone(), &ec),
        );
        assert_eq!(
            actor.notes,
            vec!["jwt: no key with kid \"gone\" in the key set".to_string()]
        );
        let actor = bearer(&chain, &signed(Algorithm::ES256, None, claims.clone(), &ec));
        assert_eq!(
            actor.notes,
            vec!["jwt: token has no kid and the key set holds 2 keys".to_string()]
        );
        // Wrong audience and issuer.
        let wrong =
            json!({"sub": "u", "iss": "https://idp", "aud": "other", "exp": in_ten_minutes()});
        let actor = bearer(&chain, &signed(Algorithm::ES256, Some("ec-1"), wrong, &ec));
        assert_eq!(actor.notes, vec!["jwt: audience not accepted".to_string()]);
        let wrong =
            json!({"sub": "u", "iss": "https://evil", "aud": "api", "exp": in_ten_minutes()});
        let actor = bearer(&chain, &signed(Algorithm::ES256, Some("ec-1"), wrong, &ec));
        assert_eq!(actor.notes, vec!["jwt: issuer not accepted".to_string()]);
    }

    #[test]
    fn a_single_key_set_accepts_tokens_without_kid() {
        let (ed, ed_jwk) = ed25519_key("only");
        let file = jwks_file(&[&ed_jwk]);
        let chain = chain(&format!(
            "[[actor]]\nfrom = \"jwt\"\njwks_file = {:?}\n",
            file.0.display()
        ));
        let actor = bearer(
            &chain,
            &signed(Algorithm::EdDSA, None, json!({"sub": "u"}), &ed),
        );
        assert!(actor.verified, "{:?}", actor.notes);
    }

    #[test]
    fn verified_tokens_are_remembered_until_exp() {
        let chain =
            chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_6\"\n");
        let Source::Jwt(source) = &chain.sources[0] else {
            panic!("jwt source");
        };
        let token = hs256(json!({"sub": "u", "exp": in_ten_minutes()}), "cache");
        assert!(bearer(&chain, &token).verified);
        assert_eq!(source.cached(), 1);
        let again = bearer(&chain, &token);
        assert!(again.verified);
        assert!(
            again.derivation[0].contains("remembered"),
            "{:?}",
            again.derivation
        );
        // Rejected and expired tokens are never remembered.
        bearer(&chain, &hs256(json!({"sub": "u"}), "other"));
        bearer(&chain, &hs256(json!({"sub": "u", "exp": 1000}), "cache"));
        assert_eq!(source.cached(), 1);

        // A token without exp (or with a far one) is remembered for a bounded time only, then
        // checked again.
        let now = chrono::Utc::now().timestamp();
        let forever = hs256(json!({"sub": "u"}), "cache");
        let far = hs256(json!({"sub": "u", "exp": now + 86_400 * 365}), "cache");
        for token in [&forever, &far] {
            assert!(bearer(&chain, token).verified);
            let until = source.remembered(token).expect("remembered");
            assert!(
                until > now && until <= now + jwt::CACHE_MAX_SECONDS + 5,
                "remembered until {until}, now {now}"
            );
        }
        let soon = now + 60;
        let near = hs256(json!({"sub": "u", "exp": soon}), "cache");
        assert!(bearer(&chain, &near).verified);
        assert_eq!(source.remembered(&near), Some(soon));
    }

    #[test]
    fn verify_false_marks_every_actor_unverified() {
        let chain = chain(
            "[[actor]]\nfrom = \"jwt\"\nheader = \"x-pomerium-jwt-assertion\"\nverify = false\n",
        );
        let token = hs256(json!({"sub": "p", "email": "p@x.io"}), "whatever");
        let actor = resolve(&chain, &headers(&[("x-pomerium-jwt-assertion", &token)]));
        assert_eq!(actor.email.as_deref(), Some("p@x.io"));
        assert!(!actor.verified);
        assert!(actor.notes[0].contains("verify = false"));
    }

    #[test]
    fn basic_keeps_only_the_user_name() {
        let chain = chain("[[actor]]\nfrom = \"basic\"\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:hunter2");
        let auth = format!("Basic {encoded}");
        let actor = resolve(&chain, &headers(&[("authorization", &auth)]));
        assert_eq!(actor.id.as_deref(), Some("alice"));
        assert_eq!(actor.source, Some("basic"));
        assert!(!format!("{actor:?}").contains("hunter2"));
    }

    #[test]
    fn basic_without_a_colon_is_malformed_not_a_user_name() {
        let chain = chain("[[actor]]\nfrom = \"basic\"\n");
        for decoded in ["hunter2", "alice"] {
            let encoded = base64::engine::general_purpose::STANDARD.encode(decoded);
            let actor = resolve(
                &chain,
                &headers(&[("authorization", &format!("Basic {encoded}"))]),
            );
            assert_eq!(actor.id, None, "{decoded}");
            assert_eq!(actor.source, None);
            assert_eq!(
                actor.notes,
                ["basic: malformed Authorization: Basic (not base64 of user:password); no user name recorded"]
            );
            assert!(!format!("{actor:?}").contains(decoded));
        }
        let garbage = resolve(
            &chain,
            &headers(&[("authorization", "Basic %%%not-base64")]),
        );
        assert_eq!(garbage.id, None);
        assert_eq!(garbage.notes.len(), 1);
        // An empty password is still a password: the user name stands.
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:");
        let empty = resolve(
            &chain,
            &headers(&[("authorization", &format!("Basic {encoded}"))]),
        );
        assert_eq!(empty.id.as_deref(), Some("alice"));
    }

    #[test]
    fn a_credential_or_identity_header_given_twice_is_found() {
        let sources = chain(concat!(
            "[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\n",
            "[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\ncookie = \"session\"\n",
            "[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nemail = \"x-forwarded-email\"\ngroups = \"x-forwarded-groups\"\n",
            "[[actor]]\nfrom = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{ name = \"ci\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }]\n",
        ));
        let repeated = |pairs: &[(&str, &str)]| sources.repeated_credential(&headers(pairs));
        for (pairs, expected) in [
            (
                vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
                "header authorization",
            ),
            (
                vec![("x-forwarded-user", "alice"), ("x-forwarded-user", "bob")],
                "header x-forwarded-user",
            ),
            (
                vec![("x-forwarded-email", "a@x.io"), ("x-forwarded-email", "")],
                "header x-forwarded-email",
            ),
            (
                vec![("x-api-key", "k1"), ("x-api-key", "k2")],
                "header x-api-key",
            ),
            (
                vec![("cookie", "session=a; theme=dark; session=b")],
                "cookie session",
            ),
            (
                vec![("cookie", "session=a"), ("cookie", "session=b")],
                "cookie session",
            ),
        ] {
            assert_eq!(repeated(&pairs).as_deref(), Some(expected), "{pairs:?}");
        }
        // Once each, other cookies repeated, or a list header repeated: nothing to refuse.
        for pairs in [
            vec![
                ("authorization", "Bearer a"),
                ("x-forwarded-user", "alice"),
                ("x-api-key", "k1"),
                ("cookie", "session=a; theme=dark; theme=light"),
            ],
            vec![
                ("x-forwarded-groups", "ops"),
                ("x-forwarded-groups", "admins"),
            ],
            vec![("cookie", "session=a"), ("cookie", "theme=dark")],
        ] {
            assert_eq!(repeated(&pairs), None, "{pairs:?}");
        }
        // Basic reads Authorization too; a chain that reads nothing refuses nothing.
        let basic = chain("[[actor]]\nfrom = \"basic\"\n");
        let twice = headers(&[
            ("authorization", "Basic YTpi"),
            ("authorization", "Basic YjpjCg=="),
        ]);
        assert_eq!(
            basic.repeated_credential(&twice).as_deref(),
            Some("header authorization")
        );
        assert_eq!(ActorChain::empty().repeated_credential(&twice), None);
    }

    #[test]
    fn a_repeated_groups_header_is_one_list() {
        let chain = chain("[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\ngroups = \"x-forwarded-groups\"\n");
        let request_headers = headers(&[
            ("x-forwarded-user", "bob"),
            ("x-forwarded-groups", "ops, admins"),
            ("x-forwarded-groups", "auditors"),
        ]);
        let actor = chain.resolve(&ActorRequest {
            headers: &request_headers,
            query: None,
            path: "/",
            peer_trusted: true,
            explain: false,
        });
        assert_eq!(actor.roles, ["ops", "admins", "auditors"]);
    }

    #[test]
    fn identity_headers_only_from_trusted_peers() {
        let chain = chain("[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nemail = \"x-forwarded-email\"\ngroups = \"x-forwarded-groups\"\n");
        let request_headers = headers(&[
            ("x-forwarded-user", "bob"),
            ("x-forwarded-email", "bob@x.io"),
            ("x-forwarded-groups", "ops, admins"),
        ]);
        let request = |peer_trusted| ActorRequest {
            headers: &request_headers,
            query: None,
            path: "/",
            peer_trusted,
            explain: false,
        };
        let trusted = chain.resolve(&request(true));
        assert_eq!(trusted.id.as_deref(), Some("bob"));
        assert_eq!(trusted.roles, vec!["ops".to_string(), "admins".to_string()]);
        assert!(trusted.verified);
        let spoofed = chain.resolve(&request(false));
        assert_eq!(spoofed.id, None);
        assert_eq!(
            spoofed.notes,
            vec!["header: ignored x-forwarded-email, x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt)".to_string()]
        );
        assert!(
            spoofed.derivation.is_empty(),
            "collected only when explaining"
        );
    }

    #[test]
    fn untrusted_identity_headers_are_removed_only_where_asked() {
        let stripping = chain("[[actor]]\nfrom = \"basic\"\n[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nemail = \"x-forwarded-email\"\ngroups = \"x-forwarded-groups\"\nstrip_untrusted = true\n[[actor]]\nfrom = \"header\"\nid = \"x-auth-request-user\"\n");
        let sent = headers(&[
            ("x-forwarded-user", "admin"),
            ("x-forwarded-email", "admin@corp.example"),
            ("x-forwarded-groups", "admins"),
            ("x-auth-request-user", "root"),
            ("x-other", "kept"),
        ]);
        let request = |headers, peer_trusted| ActorRequest {
            headers,
            query: None,
            path: "/",
            peer_trusted,
            explain: true,
        };
        let spoofed = stripping.resolve(&request(&sent, false));
        assert_eq!(spoofed.id, None);
        assert_eq!(
            spoofed.notes,
            [
                "header: ignored x-forwarded-email, x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt); removed before forwarding",
                "header: ignored x-auth-request-user from a peer that is not a trusted proxy (spoof attempt)",
            ]
        );
        let mut forwarded = sent.clone();
        let removed: Vec<&str> = stripping
            .strip_untrusted_headers(&mut forwarded, false)
            .into_iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(
            removed,
            [
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups"
            ]
        );
        let left: BTreeSet<&str> = forwarded.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            left,
            BTreeSet::from(["x-auth-request-user", "x-other"]),
            "only the stripping source's headers go"
        );

        // A trusted proxy's headers are believed and forwarded untouched.
        let mut forwarded = sent.clone();
        assert!(stripping
            .strip_untrusted_headers(&mut forwarded, true)
            .is_empty());
        assert_eq!(forwarded, sent);
        assert_eq!(
            stripping.resolve(&request(&sent, true)).id.as_deref(),
            Some("admin")
        );

        // An earlier source wins; the headers are still removed, and that is on record.
        let with_basic = {
            let mut map = sent.clone();
            map.insert(
                http::header::AUTHORIZATION,
                "Basic bWFsbG9yeTpwdw==".parse().expect("value"),
            );
            map
        };
        let basic = stripping.resolve(&request(&with_basic, false));
        assert_eq!(basic.id.as_deref(), Some("mallory"));
        assert_eq!(
            basic.notes,
            ["header: removed x-forwarded-email, x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy before forwarding (spoof attempt)"]
        );
        assert!(
            basic
                .derivation
                .iter()
                .any(|step| step.starts_with("actor #2 (header): removed x-forwarded-email")),
            "{:?}",
            basic.derivation
        );

        // Groups alone name nobody, but are removed and noted all the same.
        let groups_only = headers(&[("x-forwarded-groups", "admins")]);
        assert_eq!(
            stripping.resolve(&request(&groups_only, false)).notes,
            ["header: removed x-forwarded-groups from a peer that is not a trusted proxy before forwarding (spoof attempt)"]
        );

        // Off by default: nothing is removed and the note says nothing of removing.
        let plain = chain("[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\n");
        let mut forwarded = sent.clone();
        assert!(plain
            .strip_untrusted_headers(&mut forwarded, false)
            .is_empty());
        assert_eq!(forwarded, sent);
        assert!(!plain.resolve(&request(&sent, false)).notes[0].contains("removed"));

        assert!(stripping.describe()[1].contains("removed from other peers' requests"));
        assert!(errors("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_UNSET_VARIABLE\"\nstrip_untrusted = true\n")
            .contains("actor #1 (jwt).strip_untrusted: does not apply to from = \"jwt\""));
    }

    #[test]
    fn other_spellings_of_identity_headers_never_reach_the_app() {
        let stripping = chain("[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nstrip_untrusted = true\n[[actor]]\nfrom = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{ name = \"ci\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }]\n");
        let request = |headers, peer_trusted| ActorRequest {
            headers,
            query: None,
            path: "/",
            peer_trusted,
            explain: false,
        };
        // Untrusted peer: every spelling goes, and the attempt is on record.
        let sent = headers(&[
            ("X_Forwarded_User", "admin"),
            ("x-forwarded_user", "admin"),
            ("x_api_key", "stolen"),
            ("x_other", "kept"),
        ]);
        let spoofed = stripping.resolve(&request(&sent, false));
        assert_eq!(spoofed.id, None);
        assert_eq!(
            spoofed.notes,
            ["header: removed x_forwarded_user (read by some apps as x-forwarded-user), x-forwarded_user (read by some apps as x-forwarded-user), x_api_key (read by some apps as x-api-key) before forwarding: only the configured spelling is read (spoof attempt)"]
        );
        let mut forwarded = sent.clone();
        let removed: Vec<&str> = stripping
            .strip_untrusted_headers(&mut forwarded, false)
            .into_iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(removed, ["x-forwarded-user", "x-api-key"]);
        let left: Vec<&str> = forwarded.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x_other"]);

        // Trusted peer: only the configured spelling is believed and forwarded; the underscore
        // spelling, which a CGI app would read in its place, is removed.
        let both = headers(&[("x-forwarded-user", "ann"), ("x_forwarded_user", "admin")]);
        let believed = stripping.resolve(&request(&both, true));
        assert_eq!(believed.id.as_deref(), Some("ann"));
        assert_eq!(believed.notes.len(), 1, "{:?}", believed.notes);
        let mut forwarded = both.clone();
        stripping.strip_untrusted_headers(&mut forwarded, true);
        let left: Vec<(&str, &[u8])> = forwarded
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(left, [("x-forwarded-user", &b"ann"[..])]);

        // Without strip_untrusted the configured spelling still passes as before; other
        // spellings never do.
        let plain = chain("[[actor]]\nfrom = \"header\"\nid = \"x_user\"\n");
        let mut forwarded = headers(&[("x_user", "a"), ("X-User", "b")]);
        plain.strip_untrusted_headers(&mut forwarded, false);
        let left: Vec<&str> = forwarded.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x_user"]);

        // A request with no other spelling is left alone.
        let mut clean = headers(&[("x-forwarded-user", "ann")]);
        assert!(plain.strip_untrusted_headers(&mut clean, false).is_empty());
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn api_keys_are_named_or_hashed_never_kept() {
        let known = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sk_live_known"));
        let chain = chain(&format!(
            "[[actor]]\nfrom = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{{ name = \"ci\", sha256 = \"{known}\" }}]\nhmac_key_env = \"ACTOR_TEST_HMAC_1\"\n[[actor]]\nfrom = \"api_key\"\nquery = \"api_key\"\nkeys = [{{ name = \"ci-query\", sha256 = \"{known}\" }}]\n"
        ));
        let actor = resolve(&chain, &headers(&[("x-api-key", "sk_live_known")]));
        assert_eq!((actor.id.as_deref(), actor.verified), (Some("ci"), true));
        assert_eq!(actor.source, Some("api_key"));
        let actor = resolve(&chain, &headers(&[("x-api-key", "sk_live_other")]));
        let id = actor.id.clone().expect("labelled");
        assert!(id.starts_with("key:") && id.len() == 12, "{id}");
        assert!(!actor.verified);
        assert!(!format!("{actor:?}").contains("sk_live_other"));
        // The same unknown key gets the same label; the query form works too.
        let again = resolve(&chain, &headers(&[("x-api-key", "sk_live_other")]));
        assert_eq!(again.id, Some(id));
        let empty = HeaderMap::new();
        let actor = chain.resolve(&ActorRequest {
            headers: &empty,
            query: Some("page=2&api_key=sk_live_known"),
            path: "/",
            peer_trusted: false,
            explain: false,
        });
        assert_eq!(actor.id.as_deref(), Some("ci-query"));
        assert_eq!(
            chain.secret_headers(),
            vec![HeaderName::from_static("x-api-key")]
        );
        assert_eq!(chain.secret_query_parameters(), vec!["api_key".to_string()]);
    }

    #[test]
    fn body_sources_wait_for_the_body_and_keep_the_chain_order() {
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_7\"\n[[actor]]\nfrom = \"body\"\nemail = \"/email\"\npaths = [\"/login\"]\n");
        let token = hs256(json!({"sub": "u"}), "k");
        let auth = format!("Bearer {token}");
        let with_token = headers(&[("authorization", &auth)]);
        let request = |headers, path| ActorRequest {
            headers,
            query: None,
            path,
            peer_trusted: false,
            explain: false,
        };
        // The JWT comes first and yields: the body is not needed.
        let pending = chain.resolve_head(&request(&with_token, "/login"));
        assert!(!pending.needs_body());
        // Without a token the body decides, on /login only.
        let none = HeaderMap::new();
        let pending = chain.resolve_head(&request(&none, "/login"));
        assert!(pending.needs_body());
        let actor = pending.finish(&chain, Ok(&json!({"email": "eve@x.io", "password": "pw"})));
        assert_eq!(actor.email.as_deref(), Some("eve@x.io"));
        assert_eq!((actor.source, actor.verified), (Some("body"), false));
        assert!(!chain.resolve_head(&request(&none, "/other")).needs_body());
        let pending = chain.resolve_head(&request(&none, "/login"));
        assert_eq!(pending.finish(&chain, Err("is not JSON")).id, None);
    }

    #[test]
    fn config_errors_are_specific() {
        let all = errors(
            "[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_UNSET_VARIABLE\"\n[[actor]]\nfrom = \"magic\"\n[[actor]]\nfrom = \"header\"\n[[actor]]\nfrom = \"basic\"\nroles = \"r\"\n[[actor]]\nfrom = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{ name = \"\", sha256 = \"abc\" }]\n[[actor]]\nfrom = \"body\"\nemail = \"email\"\n[[actor]]\nfrom = \"jwt\"\nalgorithms = [\"none\"]\nhs256_secret_env = \"ACTOR_TEST_UNSET_VARIABLE\"\njwks_file = \"/nonexistent/jwks.json\"\n[[actor]]\nfrom = \"jwt\"\njwks_file = \"/nonexistent/jwks.json\"\n",
        );
        for expected in [
            "actor #1 (jwt).hs256_secret_env: environment variable",
            "actor #2 (magic).from",
            "actor #3 (header): needs at least",
            "actor #4 (basic).roles: does not apply",
            "actor #5 (api_key).keys #1 (\"\").name",
            "actor #5 (api_key).keys #1 (\"\").sha256",
            "actor #6 (body).email: `email` is not a JSON pointer",
            "actor #7 (jwt): give only one of",
            "actor #8 (jwt).jwks_file: cannot read /nonexistent/jwks.json",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn jwks_url_settings_are_checked_at_load() {
        let all = errors(concat!(
            "[[actor]]\nfrom = \"jwt\"\njwks_url = \"ftp://keys.example/jwks.json\"\njwks_refresh = \"0s\"\njwks_min_refresh = \"often\"\n",
            "[[actor]]\nfrom = \"jwt\"\njwks_url = \"http://keys.example/jwks.json\"\njwks_ca_file = \"ca.pem\"\n",
            "[[actor]]\nfrom = \"jwt\"\njwks_url = \"https://keys.example/jwks.json\"\njwks_ca_file = \"/nonexistent/ca.pem\"\n",
            "[[actor]]\nfrom = \"jwt\"\npublic_key_pem = \"/nonexistent/key.pem\"\njwks_refresh = \"5m\"\n",
            "[[actor]]\nfrom = \"jwt\"\njwks_url = \"not a url\"\njwks_file = \"/nonexistent/jwks.json\"\n",
            "[[actor]]\nfrom = \"basic\"\njwks_url = \"https://keys.example/jwks.json\"\n",
        ));
        for expected in [
            "actor #1 (jwt).jwks_url: `ftp://keys.example/jwks.json` must start with https:// or http://",
            "actor #1 (jwt).jwks_refresh: must be longer than 0",
            "actor #1 (jwt).jwks_min_refresh: ",
            "actor #2 (jwt).jwks_ca_file: applies to an https:// jwks_url",
            "actor #3 (jwt).jwks_ca_file: cannot read the CA file /nonexistent/ca.pem",
            "actor #4 (jwt).jwks_refresh: applies with jwks_url only",
            "actor #5 (jwt): give only one of hs256_secret_env, public_key_pem, jwks_file, jwks_url",
            "actor #6 (basic).jwks_url: does not apply to from = \"basic\"",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        // A valid source compiles without fetching anything, and says where its keys come from.
        let chain = chain(
            "[[actor]]\nfrom = \"jwt\"\njwks_url = \"https://keys.example/jwks.json\"\njwks_refresh = \"1h\"\n",
        );
        assert_eq!(
            chain.describe(),
            ["jwt (header authorization, key set from https://keys.example/jwks.json (refreshed every 1h, on an unknown kid at most every 30s))"]
        );
        // Until the keys arrive, tokens are recorded unverified with the reason.
        let segment = |value: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let token = format!(
            "{}.{}.c2ln",
            segment(json!({"alg": "ES256", "kid": "k"})),
            segment(json!({"sub": "u"}))
        );
        let headers = headers(&[("authorization", &format!("Bearer {token}"))]);
        let actor = chain.resolve(&ActorRequest {
            headers: &headers,
            query: None,
            path: "/",
            peer_trusted: false,
            explain: false,
        });
        assert_eq!((actor.id.as_deref(), actor.verified), (Some("u"), false));
        assert_eq!(
            actor.notes,
            ["jwt: key set not loaded yet from https://keys.example/jwks.json"]
        );
    }

    #[test]
    fn key_sets_are_checked_at_load() {
        let secret = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        let file = jwks_file(&[&secret]);
        let all = errors(&format!(
            "[[actor]]\nfrom = \"jwt\"\njwks_file = {:?}\n",
            file.0.display()
        ));
        assert!(
            all.contains("actor #1 (jwt).jwks_file key #1 (kid \"s\"): is a symmetric (oct) key"),
            "{all}"
        );
        let (_, ec_jwk) = p256_key("e");
        let file = jwks_file(&[&ec_jwk]);
        let all = errors(&format!(
            "[[actor]]\nfrom = \"jwt\"\njwks_file = {:?}\nalgorithms = [\"RS256\"]\n",
            file.0.display()
        ));
        assert!(all.contains("holds no signing key usable"), "{all}");
    }
}
