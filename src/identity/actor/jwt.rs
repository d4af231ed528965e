//! The `jwt` actor source: a token from a header, a cookie or a query parameter, verified with a
//! pinned key.
//!
//! Keys are compiled at load time: an HS256 secret read from the environment, one PEM public key
//! (RSA, EC P-256/P-384 or Ed25519), or a JWKS file whose keys are looked up by the token's `kid`.
//! A JWKS URL is the exception: its keys arrive after start and change while running
//! ([`super::jwks_remote`]).
//! The algorithms a key accepts are fixed by the configuration (or by the key itself), never by
//! the token: the token's `alg` only selects among them, so `alg=none` and RS/HS confusion are
//! refused before any signature code runs. Verified tokens are remembered by a hash of the token
//! until their `exp`, so the hot path does not re-check a signature on every request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jwk::{algorithm_name, compile_key_set, default_algorithm, shown, VerifyingKey};
use super::jwks_remote::RemoteKeys;
use super::{cookie_value, header_name, Actor, ActorFile, Trace};
use crate::base::resolve as resolve_path;
use crate::base::ConfigError;

/// Tokens larger than this are not parsed (a JWT of this size is an attack, not an identity).
pub(super) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Most verified tokens remembered per source; when full, expired ones are dropped, and if none
/// are, the cache starts over (the cost is one signature check per token, never a wrong answer).
const CACHE_CAPACITY: usize = 4096;

/// Longest a verified token is remembered, in seconds, whatever its `exp` says (and for a token
/// without `exp`, which would otherwise be remembered for the life of the key set): after this
/// its signature and claims are checked again.
pub(super) const CACHE_MAX_SECONDS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInvalid {
    RecordUnverified,
    Anonymous,
}

pub(super) enum TokenPlace {
    Header(HeaderName),
    Cookie(String),
    /// A query parameter (`?access_token=`), as headless CMSs, dashboards and WebSocket clients
    /// send it. The stored path never holds the query, and the parameter is always redacted.
    Query(String),
}

impl TokenPlace {
    fn describe(&self) -> String {
        match self {
            TokenPlace::Header(name) => format!("header {name}"),
            TokenPlace::Cookie(name) => format!("cookie {name}"),
            TokenPlace::Query(name) => format!("query parameter {name}"),
        }
    }
}

struct ClaimNames {
    id: String,
    email: String,
    name: String,
    roles: Option<String>,
    tenant: Option<String>,
}

/// How tokens are checked.
enum Verifier {
    /// `verify = false`: claims are read and recorded as unverified.
    Off,
    /// One configured key (secret or PEM): every token is checked against it.
    Single(Box<VerifyingKey>),
    /// A JWKS file: the token's `kid` picks the key (a token without `kid` is accepted only when
    /// the set holds exactly one key).
    Set(Vec<VerifyingKey>),
    /// A JWKS URL: as a file, with the set that was fetched last.
    Remote(Arc<RemoteKeys>),
}

/// Verified tokens by SHA-256 of the token, each with the mapped actor, the second its
/// verification stops holding (`exp`) and the generation of the key set that verified it (a
/// token verified under a key set that was since replaced is checked again).
#[derive(Default)]
struct VerifiedCache {
    entries: Mutex<HashMap<[u8; 32], (Actor, i64, u64)>>,
}

impl VerifiedCache {
    fn get(&self, hash: &[u8; 32], now: i64, generation: u64) -> Option<Actor> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(hash) {
            Some((actor, until, verified_by)) if *until > now && *verified_by == generation => {
                Some(actor.clone())
            }
            _ => None,
        }
    }

    fn put(&self, hash: [u8; 32], actor: &Actor, until: i64, now: i64, generation: u64) {
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (_, until, _)| *until > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(hash, (actor.clone(), until, generation));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

pub(super) struct JwtSource {
    place: TokenPlace,
    claims: ClaimNames,
    verifier: Verifier,
    on_invalid: OnInvalid,
    cache: VerifiedCache,
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// The configured `algorithms`, parsed; an unknown name is an error.
fn configured_algorithms(
    file: &ActorFile,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Algorithm>> {
    let names = file.algorithms.as_ref()?;
    let mut algorithms = Vec::new();
    for name in names {
        match name.parse::<Algorithm>() {
            Ok(algorithm) => algorithms.push(algorithm),
            Err(_) => errors.push(ConfigError::new(
                &format!("{location}.algorithms"),
                format!("`{name}` is not a JWT algorithm (e.g. HS256, RS256, ES256, EdDSA); `none` is never accepted"),
            )),
        }
    }
    if names.is_empty() {
        errors.push(ConfigError::new(
            &format!("{location}.algorithms"),
            "is empty; leave it out to accept the key's own algorithm",
        ));
    }
    Some(algorithms)
}

fn base_validation(file: &ActorFile, algorithms: Vec<Algorithm>) -> Validation {
    let first = algorithms.first().copied().unwrap_or_default();
    let mut validation = Validation::new(first);
    validation.algorithms = algorithms;
    validation.leeway = file.leeway_seconds.unwrap_or(30);
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(issuer) = &file.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    if let Some(audience) = &file.audience {
        validation.set_audience(audience);
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".into());
    }
    validation
}

/// Reads a file named in the config: relative paths start at the config file's directory.
fn read_config_file(
    base: &Path,
    path: &str,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let full = resolve_path(base, path);
    match std::fs::read_to_string(&full) {
        Ok(text) => Some(text),
        Err(error) => {
            errors.push(ConfigError::new(
                location,
                format!("cannot read {}: {error}", full.display()),
            ));
            None
        }
    }
}

/// The usable keys of a JWKS file; every problem is a config error.
fn key_set(
    file: &ActorFile,
    base: &Path,
    path: &str,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<VerifyingKey>> {
    let key_location = format!("{location}.jwks_file");
    let text = read_config_file(base, path, &key_location, errors)?;
    let document: Value = match serde_json::from_str(&text) {
        Ok(document) => document,
        Err(error) => {
            errors.push(ConfigError::new(
                &key_location,
                format!("{path} is not JSON: {error}"),
            ));
            return None;
        }
    };
    let pinned = configured_algorithms(file, location, errors);
    let template = base_validation(file, Vec::new());
    let (keys, problems) = match compile_key_set(&document, pinned.as_deref(), &template) {
        Ok(compiled) => compiled,
        Err(message) => {
            errors.push(ConfigError::new(&key_location, format!("{path} {message}")));
            return None;
        }
    };
    for problem in problems {
        errors.push(ConfigError::new(
            &format!("{key_location} {}", problem.place),
            problem.message,
        ));
    }
    if keys.is_empty() {
        errors.push(ConfigError::new(
            &key_location,
            format!("{path} holds no signing key usable with the accepted algorithms"),
        ));
        return None;
    }
    Some(keys)
}

/// A `jwks_url` source: the URL, the refresh intervals and, for https, the TLS configuration.
/// Nothing is fetched here; the keys arrive once the sidecar runs.
fn remote_key_set(
    file: &ActorFile,
    base: &Path,
    url: &str,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<RemoteKeys> {
    let url_location = format!("{location}.jwks_url");
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|host| !host.is_empty()) => Some(uri),
        _ => {
            errors.push(ConfigError::new(
                &url_location,
                format!("`{url}` is not a URL like https://issuer.example/.well-known/jwks.json"),
            ));
            None
        }
    };
    let https = match uri.as_ref().and_then(http::Uri::scheme_str) {
        Some("https") => true,
        Some("http") => false,
        _ => {
            if uri.is_some() {
                errors.push(ConfigError::new(
                    &url_location,
                    format!("`{url}` must start with https:// or http://"),
                ));
            }
            false
        }
    };
    let interval = |key: &str, text: Option<&str>, default: Duration, errors: &mut Vec<_>| {
        crate::base::units::positive_duration_or(
            &format!("{location}.{key}"),
            text,
            default,
            errors,
        )
    };
    let refresh = interval(
        "jwks_refresh",
        file.jwks_refresh.as_deref(),
        Duration::from_secs(600),
        errors,
    );
    let min_refresh = interval(
        "jwks_min_refresh",
        file.jwks_min_refresh.as_deref(),
        Duration::from_secs(30),
        errors,
    );
    if file.jwks_ca_file.is_some() && uri.is_some() && !https {
        errors.push(ConfigError::new(
            &format!("{location}.jwks_ca_file"),
            "applies to an https:// jwks_url",
        ));
    }
    let ca_file = file
        .jwks_ca_file
        .as_deref()
        .map(|path| resolve_path(base, path));
    let tls = if https {
        crate::net::https_client(
            ca_file.as_deref(),
            &format!("{location}.jwks_ca_file"),
            &format!("{location}.jwks_url"),
            errors,
        )
    } else {
        None
    };
    let pinned = configured_algorithms(file, location, errors);
    let template = base_validation(file, Vec::new());
    Some(RemoteKeys::new(
        uri?,
        refresh,
        min_refresh,
        tls,
        pinned,
        template,
    ))
}

pub(super) fn compile(
    file: &ActorFile,
    base: &Path,
    environment: &dyn Fn(&str) -> Option<String>,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<JwtSource> {
    let given = [
        file.header.is_some(),
        file.cookie.is_some(),
        file.query.is_some(),
    ];
    if given.iter().filter(|given| **given).count() > 1 {
        errors.push(ConfigError::new(
            location,
            "give one of header, cookie or query, not several (use two [[actor]] entries for both)",
        ));
        return None;
    }
    let place = match (&file.header, &file.cookie, &file.query) {
        (_, _, Some(query)) if query.is_empty() => {
            errors.push(ConfigError::new(
                &format!("{location}.query"),
                "names no query parameter",
            ));
            return None;
        }
        (_, _, Some(query)) => TokenPlace::Query(query.clone()),
        (_, Some(cookie), _) => TokenPlace::Cookie(cookie.clone()),
        (header, None, None) => TokenPlace::Header(header_name(
            location,
            "header",
            header.as_deref().unwrap_or("authorization"),
            errors,
        )?),
    };
    let on_invalid = match file.on_invalid.as_deref() {
        None | Some("record_unverified") => OnInvalid::RecordUnverified,
        Some("anonymous") => OnInvalid::Anonymous,
        Some(other) => {
            errors.push(ConfigError::new(
                &format!("{location}.on_invalid"),
                format!("`{other}` is not one of record_unverified, anonymous"),
            ));
            OnInvalid::RecordUnverified
        }
    };
    let claims = ClaimNames {
        id: file.id.clone().unwrap_or_else(|| "sub".into()),
        email: file.email.clone().unwrap_or_else(|| "email".into()),
        name: file.name.clone().unwrap_or_else(|| "name".into()),
        roles: file.roles.clone(),
        tenant: file.tenant.clone(),
    };
    let key_sources = [
        file.hs256_secret_env.is_some(),
        file.public_key_pem.is_some(),
        file.jwks_file.is_some(),
        file.jwks_url.is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    if file.jwks_url.is_none() {
        for (key, given) in [
            ("jwks_refresh", file.jwks_refresh.is_some()),
            ("jwks_min_refresh", file.jwks_min_refresh.is_some()),
            ("jwks_ca_file", file.jwks_ca_file.is_some()),
        ] {
            if given {
                errors.push(ConfigError::new(
                    &format!("{location}.{key}"),
                    "applies with jwks_url only",
                ));
            }
        }
    }
    let verifier = if !file.verify.unwrap_or(true) {
        if key_sources > 0 || file.algorithms.is_some() {
            errors.push(ConfigError::new(
                &format!("{location}.verify"),
                "verify = false ignores keys and algorithms; remove them or verify",
            ));
        }
        Verifier::Off
    } else {
        match key_sources {
            0 => {
                errors.push(ConfigError::new(
                    location,
                    "needs a key: hs256_secret_env, public_key_pem, jwks_file or jwks_url (or verify = false to record every token as unverified)",
                ));
                return None;
            }
            1 => {}
            _ => {
                errors.push(ConfigError::new(
                    location,
                    "give only one of hs256_secret_env, public_key_pem, jwks_file, jwks_url",
                ));
                return None;
            }
        }
        match (&file.jwks_file, &file.jwks_url) {
            (Some(path), _) => Verifier::Set(key_set(file, base, path, location, errors)?),
            (None, Some(url)) => {
                Verifier::Remote(Arc::new(remote_key_set(file, base, url, location, errors)?))
            }
            (None, None) => Verifier::Single(Box::new(single_key(
                file,
                base,
                environment,
                location,
                errors,
            )?)),
        }
    };
    Some(JwtSource {
        place,
        claims,
        verifier,
        on_invalid,
        cache: VerifiedCache::default(),
    })
}

/// Reads a claim by dotted path (`realm_access.roles`); a claim whose own name holds a dot wins.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, key| value.get(key))
}

fn claim_text(claims: &Value, path: &str) -> Option<String> {
    match claim(claims, path)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn claim_list(claims: &Value, path: &str) -> Vec<String> {
    match claim(claims, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(text)) => text
            .split([' ', ','])
            .filter(|part| !part.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn decode_segment(segment: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// The claims of a token without checking anything: only for recording an identity as
/// unverified.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    decode_segment(payload)
}

fn describe_jwt_error(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => "signature does not verify".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidIssuer => "issuer not accepted".into(),
        ErrorKind::InvalidAudience => "audience not accepted".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("required claim {claim} is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("claim {claim} has the wrong type"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "token is malformed".into(),
        _ => "token rejected".into(),
    }
}

impl JwtSource {
    /// Where the token comes from and how it is checked, for `auditgate check`.
    pub(super) fn describe(&self) -> String {
        let check = match &self.verifier {
            Verifier::Off => "not verified".to_string(),
            Verifier::Single(key) => {
                let names: Vec<String> = key
                    .validation
                    .algorithms
                    .iter()
                    .map(|algorithm| algorithm_name(*algorithm))
                    .collect();
                names.join("/")
            }
            Verifier::Set(keys) => format!("key set of {}", keys.len()),
            Verifier::Remote(remote) => format!(
                "key set from {} (refreshed every {}, on an unknown kid at most every {})",
                remote.url,
                crate::base::units::format_duration(remote.refresh),
                crate::base::units::format_duration(remote.min_refresh)
            ),
        };
        format!("{}, {check}", self.place.describe())
    }

    /// The key set fetched from a URL, if this source has one.
    pub(super) fn remote_keys(&self) -> Option<&Arc<RemoteKeys>> {
        match &self.verifier {
            Verifier::Remote(remote) => Some(remote),
            _ => None,
        }
    }

    /// The generation of the key set in use (0 for keys fixed at load time, and before a URL's
    /// first set arrives).
    fn key_generation(&self) -> u64 {
        match &self.verifier {
            Verifier::Remote(remote) => remote.current().map_or(0, |loaded| loaded.generation),
            _ => 0,
        }
    }

    /// Where the token is read from, for the redaction of its raw value.
    pub(super) fn token_header(&self) -> Option<&HeaderName> {
        match &self.place {
            TokenPlace::Header(name) => Some(name),
            TokenPlace::Cookie(_) | TokenPlace::Query(_) => None,
        }
    }

    /// The cookie the token is read from.
    pub(super) fn token_cookie(&self) -> Option<&str> {
        match &self.place {
            TokenPlace::Cookie(name) => Some(name),
            TokenPlace::Header(_) | TokenPlace::Query(_) => None,
        }
    }

    /// The query parameter the token is read from, for its redaction.
    pub(super) fn token_query(&self) -> Option<&str> {
        match &self.place {
            TokenPlace::Query(name) => Some(name),
            TokenPlace::Header(_) | TokenPlace::Cookie(_) => None,
        }
    }

    fn token<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Option<std::borrow::Cow<'a, str>> {
        match &self.place {
            TokenPlace::Header(name) => {
                let value = headers.get(name)?.to_str().ok()?.trim();
                if name == http::header::AUTHORIZATION {
                    let (scheme, token) = value.split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| token.trim().into())
                } else {
                    Some(value.strip_prefix("Bearer ").unwrap_or(value).trim().into())
                }
            }
            TokenPlace::Cookie(cookie) => cookie_value(headers, cookie).map(Into::into),
            // The first occurrence, percent-decoded, as application servers read it.
            TokenPlace::Query(parameter) => form_urlencoded::parse(query?.as_bytes())
                .find(|(name, _)| name == parameter.as_str())
                .map(|(_, value)| value),
        }
    }

    fn map_claims(&self, claims: &Value, verified: bool) -> Actor {
        Actor {
            id: claim_text(claims, &self.claims.id),
            email: claim_text(claims, &self.claims.email),
            name: claim_text(claims, &self.claims.name),
            roles: self
                .claims
                .roles
                .as_deref()
                .map(|path| claim_list(claims, path))
                .unwrap_or_default(),
            tenant: self
                .claims
                .tenant
                .as_deref()
                .and_then(|path| claim_text(claims, path)),
            source: Some("jwt"),
            verified,
            ..Actor::default()
        }
    }

    /// Checks a token against the pinned keys: the verified claims and how, or why not.
    fn verify(&self, token: &str) -> Result<(Value, String), String> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("token is malformed (not three dot-separated parts)".into());
        };
        let Some(header) = decode_segment(header) else {
            return Err("token is malformed (header is not base64url JSON)".into());
        };
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg.eq_ignore_ascii_case("none") || alg.is_empty() {
            return Err("algorithm none is not accepted".into());
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let loaded;
        let (keys, remote) = match &self.verifier {
            Verifier::Off => return Err("verification is off".into()),
            Verifier::Single(key) => (std::slice::from_ref(key.as_ref()), None),
            Verifier::Set(keys) => (keys.as_slice(), None),
            Verifier::Remote(remote) => {
                let Some(current) = remote.current() else {
                    remote.request_refresh();
                    let why = remote
                        .last_error()
                        .map(|error| format!(" (last fetch: {error})"))
                        .unwrap_or_default();
                    return Err(format!("key set not loaded yet from {}{why}", remote.url));
                };
                loaded = current;
                (loaded.keys.as_slice(), Some(remote))
            }
        };
        let key = match (&self.verifier, kid, keys) {
            (Verifier::Single(_), _, [only]) => only,
            (_, Some(kid), _) => match keys.iter().find(|key| key.kid.as_deref() == Some(kid)) {
                Some(key) => key,
                None => {
                    // Perhaps a rotation: the next fetch (at most one per jwks_min_refresh) may
                    // bring the key for the tokens that follow.
                    let refetch = match remote {
                        Some(remote) => {
                            remote.request_refresh();
                            " (key set refetch requested)"
                        }
                        None => "",
                    };
                    return Err(format!(
                        "no key with kid {} in the key set{refetch}",
                        shown(kid)
                    ));
                }
            },
            (_, None, [only]) => only,
            (_, None, _) => {
                return Err(format!(
                    "token has no kid and the key set holds {} keys",
                    keys.len()
                ))
            }
        };
        let accepted = key
            .validation
            .algorithms
            .iter()
            .any(|algorithm| algorithm_name(*algorithm) == alg);
        if !accepted {
            let allowed: Vec<String> = key
                .validation
                .algorithms
                .iter()
                .map(|algorithm| algorithm_name(*algorithm))
                .collect();
            return Err(format!(
                "algorithm {} is not accepted (pinned: {})",
                shown(alg),
                allowed.join(", ")
            ));
        }
        match jsonwebtoken::decode::<Value>(token, &key.key, &key.validation) {
            Ok(data) => {
                let how = match &key.kid {
                    Some(kid) => format!("{alg}, kid {kid:?}"),
                    None => alg.to_string(),
                };
                Ok((data.claims, how))
            }
            Err(error) => Err(describe_jwt_error(&error)),
        }
    }

    pub(super) fn resolve(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        notes: &mut Vec<String>,
        trace: &mut Trace,
    ) -> Option<Actor> {
        let Some(token) = self.token(headers, query).filter(|token| !token.is_empty()) else {
            trace.step(|| format!("no token in {}", self.place.describe()));
            return None;
        };
        let token: &str = &token;
        if token.len() > MAX_TOKEN_BYTES {
            notes.push(format!(
                "jwt: token of {} bytes ignored (limit {MAX_TOKEN_BYTES})",
                token.len()
            ));
            trace.step(|| format!("token in {} is too large", self.place.describe()));
            return None;
        }
        if matches!(self.verifier, Verifier::Off) {
            let Some(claims) = unverified_claims(token) else {
                notes.push("jwt: token is not a decodable JWT".into());
                trace.step(|| "token cannot be decoded".into());
                return None;
            };
            notes.push("jwt: signature not checked (verify = false)".into());
            trace.step(|| {
                format!(
                    "claims read from {} without checking the signature (verify = false): unverified",
                    self.place.describe()
                )
            });
            let actor = self.map_claims(&claims, false);
            return (actor.id.is_some() || actor.email.is_some()).then_some(actor);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_seconds();
        let generation = self.key_generation();
        if let Some(actor) = self.cache.get(&hash, now, generation) {
            trace.step(|| {
                format!(
                    "token from {} verified (remembered from an earlier request until its exp, at most {CACHE_MAX_SECONDS} s)",
                    self.place.describe()
                )
            });
            return Some(actor);
        }
        match self.verify(token) {
            Ok((claims, how)) => {
                let actor = self.map_claims(&claims, true);
                if actor.id.is_none() && actor.email.is_none() {
                    notes.push(format!(
                        "jwt: verified token has no {} or {} claim",
                        self.claims.id, self.claims.email
                    ));
                    trace.step(|| "verified token names nobody".into());
                    return None;
                }
                trace.step(|| {
                    format!(
                        "token from {} verified ({how}); claims {} -> id, {} -> email",
                        self.place.describe(),
                        self.claims.id,
                        self.claims.email
                    )
                });
                self.cache.put(
                    hash,
                    &actor,
                    remembered_until(&claims, now),
                    now,
                    generation,
                );
                Some(actor)
            }
            Err(reason) => {
                notes.push(format!("jwt: {reason}"));
                if self.on_invalid == OnInvalid::Anonymous {
                    trace.step(|| {
                        format!("token rejected: {reason}; on_invalid = anonymous, so no actor")
                    });
                    return None;
                }
                let Some(claims) = unverified_claims(token) else {
                    trace.step(|| format!("token rejected: {reason}; its claims cannot be read"));
                    return None;
                };
                let actor = self.map_claims(&claims, false);
                if actor.id.is_none() && actor.email.is_none() {
                    trace.step(|| format!("token rejected: {reason}; it names nobody"));
                    return None;
                }
                trace.step(|| {
                    format!("token rejected: {reason}; recorded as unverified (on_invalid = record_unverified)")
                });
                Some(actor)
            }
        }
    }

    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The second until which a token is remembered as verified, if it is.
    #[cfg(test)]
    pub(super) fn remembered(&self, token: &str) -> Option<i64> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entries = self.cache.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&hash).map(|(_, until, _)| *until)
    }
}

/// The second until which a verified token may be answered from the cache: its `exp`, but never
/// more than [`CACHE_MAX_SECONDS`] from now, so a token without `exp` (or with a far one) is
/// checked again against the current keys and claims rules at a bounded interval.
fn remembered_until(claims: &Value, now: i64) -> i64 {
    let bound = now.saturating_add(CACHE_MAX_SECONDS);
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) => exp.min(bound),
        None => bound,
    }
}

/// A single key: the HS256 secret or a PEM public key, with its algorithms.
fn single_key(
    file: &ActorFile,
    base: &Path,
    environment: &dyn Fn(&str) -> Option<String>,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<VerifyingKey> {
    let key = if let Some(variable) = &file.hs256_secret_env {
        match environment(variable) {
            Some(secret) if !secret.is_empty() => DecodingKey::from_secret(secret.as_bytes()),
            _ => {
                errors.push(ConfigError::new(
                    &format!("{location}.hs256_secret_env"),
                    format!("environment variable {variable} is not set or empty"),
                ));
                return None;
            }
        }
    } else {
        let pem = file.public_key_pem.as_deref()?;
        let key_location = format!("{location}.public_key_pem");
        let text = if pem.trim_start().starts_with("-----BEGIN") {
            pem.to_string()
        } else {
            read_config_file(base, pem, &key_location, errors)?
        };
        let bytes = text.as_bytes();
        let parsed = DecodingKey::from_rsa_pem(bytes)
            .or_else(|_| DecodingKey::from_ec_pem(bytes))
            .or_else(|_| DecodingKey::from_ed_pem(bytes));
        match parsed {
            Ok(key) => key,
            Err(_) => {
                errors.push(ConfigError::new(
                    &key_location,
                    "is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
                ));
                return None;
            }
        }
    };
    let family = key.family();
    let algorithms = match configured_algorithms(file, location, errors) {
        None => vec![default_algorithm(family)],
        Some(configured) => {
            let mut fitting = Vec::new();
            for algorithm in configured {
                if algorithm.family() == family {
                    fitting.push(algorithm);
                } else {
                    errors.push(ConfigError::new(
                        &format!("{location}.algorithms"),
                        format!(
                            "{} does not fit the configured key ({family:?})",
                            algorithm_name(algorithm)
                        ),
                    ));
                }
            }
            fitting
        }
    };
    Some(VerifyingKey {
        kid: None,
        key,
        validation: base_validation(file, algorithms),
    })
}
