//! Who made the request: ordered actor sources, first that yields wins.
//!
//! Sources are compiled once (keys parsed, secrets read from the environment) and evaluated per
//! request on the request head. Every actor records which source gave it and whether it was
//! verified; an identity that could not be verified is either recorded as unverified with the
//! reason or dropped, as configured. Secrets — passwords, raw tokens — never leave this module.

use std::collections::BTreeMap;

use base64::Engine;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ConfigError;

/// Tokens larger than this are not parsed (a JWT of this size is an attack, not an identity).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// One `[[actor]]` section as written. Which keys apply depends on `from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorFile {
    /// jwt | basic | header
    pub from: String,
    /// jwt: header holding the token (default "authorization", read as `Bearer <token>`).
    /// header: not used (see id/email/name/groups).
    pub header: Option<String>,
    /// jwt: cookie holding the token, instead of a header.
    pub cookie: Option<String>,
    /// jwt: claim (dotted path) for the actor id (default "sub"). header: header name.
    pub id: Option<String>,
    /// jwt: claim for the email (default "email"). header: header name.
    pub email: Option<String>,
    /// jwt: claim for the display name (default "name"). header: header name.
    pub name: Option<String>,
    /// jwt: claim for roles. header: not used.
    pub roles: Option<String>,
    /// header: header listing groups, comma-separated.
    pub groups: Option<String>,
    /// jwt: claim for the tenant. header: header name.
    pub tenant: Option<String>,
    /// jwt: environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// jwt: path to a PEM public key (RSA, EC P-256 or Ed25519), or the PEM text itself.
    pub public_key_pem: Option<String>,
    /// jwt: accepted algorithms; default from the key (HS256, RS256, ES256, EdDSA).
    pub algorithms: Option<Vec<String>>,
    /// jwt: required issuer.
    pub issuer: Option<String>,
    /// jwt: required audience (one of).
    pub audience: Option<Vec<String>>,
    /// jwt: clock skew allowed for exp/nbf, in seconds (default 30).
    pub leeway_seconds: Option<u64>,
    /// jwt: false to decode without verifying (every such actor is marked unverified).
    pub verify: Option<bool>,
    /// jwt: what an invalid token yields: "record_unverified" (default) or "anonymous".
    pub on_invalid: Option<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInvalid {
    RecordUnverified,
    Anonymous,
}

enum TokenPlace {
    Header(HeaderName),
    Cookie(String),
}

struct JwtSource {
    place: TokenPlace,
    claims: ClaimNames,
    /// `None` when verification is deliberately off.
    verifier: Option<(DecodingKey, Validation)>,
    on_invalid: OnInvalid,
}

struct ClaimNames {
    id: String,
    email: String,
    name: String,
    roles: Option<String>,
    tenant: Option<String>,
}

struct HeaderSource {
    id: Option<HeaderName>,
    email: Option<HeaderName>,
    name: Option<HeaderName>,
    groups: Option<HeaderName>,
    tenant: Option<HeaderName>,
}

enum Source {
    Jwt(Box<JwtSource>),
    Basic,
    Header(HeaderSource),
}

/// The compiled, ordered actor sources.
pub struct ActorChain {
    sources: Vec<Source>,
    trusted_proxies: Vec<IpNet>,
}

impl std::fmt::Debug for ActorChain {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ActorChain({} sources)", self.sources.len())
    }
}

/// What the actor sources see of a request.
pub struct ActorRequest<'a> {
    pub headers: &'a HeaderMap,
    /// Whether the socket peer is a trusted proxy (identity headers are believed only then).
    pub peer_trusted: bool,
}

impl ActorChain {
    pub fn empty() -> ActorChain {
        ActorChain {
            sources: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    pub fn compile(
        files: &[ActorFile],
        trusted_proxies: &[IpNet],
    ) -> Result<ActorChain, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        for (index, file) in files.iter().enumerate() {
            let location = format!("actor #{} ({})", index + 1, file.from);
            match compile_source(file, &location, &mut errors) {
                Some(source) => sources.push(source),
                None => continue,
            }
        }
        if errors.is_empty() {
            Ok(ActorChain {
                sources,
                trusted_proxies: trusted_proxies.to_vec(),
            })
        } else {
            Err(errors)
        }
    }

    /// Tries each source in order; the first that yields an actor wins. Notes from sources that
    /// did not yield (an ignored spoof, an invalid token) are kept on the result.
    pub fn resolve(&self, request: &ActorRequest) -> Actor {
        let mut notes = Vec::new();
        for source in &self.sources {
            let found = match source {
                Source::Jwt(jwt) => jwt.resolve(request.headers, &mut notes),
                Source::Basic => basic(request.headers),
                Source::Header(header) => header.resolve(request, &mut notes),
            };
            if let Some(mut actor) = found {
                actor.notes.splice(0..0, notes);
                return actor;
            }
        }
        Actor {
            notes,
            ..Actor::default()
        }
    }
}

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

fn compile_source(
    file: &ActorFile,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Source> {
    let unused = |keys: &[(&str, bool)], errors: &mut Vec<ConfigError>| {
        for (key, present) in keys {
            if *present {
                errors.push(ConfigError::new(
                    &format!("{location}.{key}"),
                    format!("does not apply to from = \"{}\"", file.from),
                ));
            }
        }
    };
    match file.from.as_str() {
        "basic" => {
            unused(
                &[
                    ("header", file.header.is_some()),
                    ("cookie", file.cookie.is_some()),
                    ("id", file.id.is_some()),
                    ("email", file.email.is_some()),
                    ("hs256_secret_env", file.hs256_secret_env.is_some()),
                    ("public_key_pem", file.public_key_pem.is_some()),
                ],
                errors,
            );
            Some(Source::Basic)
        }
        "header" => {
            unused(
                &[
                    ("header", file.header.is_some()),
                    ("cookie", file.cookie.is_some()),
                    ("roles", file.roles.is_some()),
                    ("hs256_secret_env", file.hs256_secret_env.is_some()),
                    ("public_key_pem", file.public_key_pem.is_some()),
                    ("algorithms", file.algorithms.is_some()),
                    ("issuer", file.issuer.is_some()),
                    ("audience", file.audience.is_some()),
                    ("verify", file.verify.is_some()),
                    ("on_invalid", file.on_invalid.is_some()),
                ],
                errors,
            );
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
            };
            if source.id.is_none() && source.email.is_none() {
                errors.push(ConfigError::new(
                    location,
                    "needs at least `id` or `email`: the header names the auth proxy sets (e.g. x-forwarded-user)",
                ));
            }
            Some(Source::Header(source))
        }
        "jwt" => compile_jwt(file, location, errors).map(|jwt| Source::Jwt(Box::new(jwt))),
        other => {
            errors.push(ConfigError::new(
                &format!("{location}.from"),
                format!("`{other}` is not one of jwt, basic, header"),
            ));
            None
        }
    }
}

fn compile_jwt(
    file: &ActorFile,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<JwtSource> {
    if file.groups.is_some() {
        errors.push(ConfigError::new(
            &format!("{location}.groups"),
            "does not apply to from = \"jwt\" (use roles)",
        ));
    }
    let place = match (&file.header, &file.cookie) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                location,
                "give either header or cookie, not both",
            ));
            return None;
        }
        (_, Some(cookie)) => TokenPlace::Cookie(cookie.clone()),
        (header, None) => TokenPlace::Header(header_name(
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
    let verify = file.verify.unwrap_or(true);
    let verifier = if !verify {
        if file.hs256_secret_env.is_some() || file.public_key_pem.is_some() {
            errors.push(ConfigError::new(
                &format!("{location}.verify"),
                "verify = false ignores keys; remove the key or verify",
            ));
        }
        None
    } else {
        let (key, default_algorithm) = match (&file.hs256_secret_env, &file.public_key_pem) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(
                    location,
                    "give either hs256_secret_env or public_key_pem, not both",
                ));
                return None;
            }
            (Some(variable), None) => match std::env::var(variable) {
                Ok(secret) if !secret.is_empty() => (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                ),
                _ => {
                    errors.push(ConfigError::new(
                        &format!("{location}.hs256_secret_env"),
                        format!("environment variable {variable} is not set or empty"),
                    ));
                    return None;
                }
            },
            (None, Some(pem)) => {
                let text = if pem.trim_start().starts_with("-----BEGIN") {
                    pem.clone()
                } else {
                    match std::fs::read_to_string(pem) {
                        Ok(text) => text,
                        Err(error) => {
                            errors.push(ConfigError::new(
                                &format!("{location}.public_key_pem"),
                                format!("cannot read {pem}: {error}"),
                            ));
                            return None;
                        }
                    }
                };
                if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(text.as_bytes()) {
                    (key, Algorithm::ES256)
                } else if let Ok(key) = DecodingKey::from_ed_pem(text.as_bytes()) {
                    (key, Algorithm::EdDSA)
                } else {
                    errors.push(ConfigError::new(
                        &format!("{location}.public_key_pem"),
                        "is not an RSA, EC or Ed25519 public key in PEM form",
                    ));
                    return None;
                }
            }
            (None, None) => {
                errors.push(ConfigError::new(
                    location,
                    "needs a key: hs256_secret_env or public_key_pem (or verify = false to record unverified identities)",
                ));
                return None;
            }
        };
        let mut algorithms = Vec::new();
        for name in file.algorithms.clone().unwrap_or_default() {
            match name.parse::<Algorithm>() {
                Ok(algorithm) if same_family(algorithm, default_algorithm) => {
                    algorithms.push(algorithm)
                }
                Ok(_) => errors.push(ConfigError::new(
                    &format!("{location}.algorithms"),
                    format!("{name} does not fit the configured key"),
                )),
                Err(_) => errors.push(ConfigError::new(
                    &format!("{location}.algorithms"),
                    format!("`{name}` is not a JWT algorithm (e.g. HS256, RS256, ES256, EdDSA)"),
                )),
            }
        }
        if algorithms.is_empty() {
            algorithms.push(default_algorithm);
        }
        let mut validation = Validation::new(algorithms[0]);
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
        Some((key, validation))
    };
    Some(JwtSource {
        place,
        claims,
        verifier,
        on_invalid,
    })
}

fn same_family(a: Algorithm, b: Algorithm) -> bool {
    use Algorithm::*;
    let family = |algorithm| match algorithm {
        HS256 | HS384 | HS512 => 0,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 1,
        ES256 | ES384 => 2,
        EdDSA => 3,
    };
    family(a) == family(b)
}

/// Reads a claim by dotted path (`realm_access.roles`).
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

/// The claims of a token without checking anything: only for recording an identity as
/// unverified.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.is_object().then_some(claims)
}

impl JwtSource {
    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        match &self.place {
            TokenPlace::Header(name) => {
                let value = headers.get(name)?.to_str().ok()?.trim();
                if name == http::header::AUTHORIZATION {
                    let (scheme, token) = value.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                } else {
                    Some(value.strip_prefix("Bearer ").unwrap_or(value))
                }
            }
            TokenPlace::Cookie(cookie) => cookie_value(headers, cookie),
        }
    }

    fn resolve(&self, headers: &HeaderMap, notes: &mut Vec<String>) -> Option<Actor> {
        let token = self.token(headers)?;
        if token.is_empty() {
            return None;
        }
        if token.len() > MAX_TOKEN_BYTES {
            notes.push(format!(
                "jwt: token of {} bytes ignored (limit {MAX_TOKEN_BYTES})",
                token.len()
            ));
            return None;
        }
        let (claims, verified) = match &self.verifier {
            None => match unverified_claims(token) {
                Some(claims) => (claims, false),
                None => {
                    notes.push("jwt: token is not a decodable JWT".into());
                    return None;
                }
            },
            Some((key, validation)) => {
                match jsonwebtoken::decode::<Value>(token, key, validation) {
                    Ok(data) => (data.claims, true),
                    Err(error) => {
                        notes.push(format!("jwt: {}", describe_jwt_error(&error)));
                        if self.on_invalid == OnInvalid::Anonymous {
                            return None;
                        }
                        (unverified_claims(token)?, false)
                    }
                }
            }
        };
        let actor = Actor {
            id: claim_text(&claims, &self.claims.id),
            email: claim_text(&claims, &self.claims.email),
            name: claim_text(&claims, &self.claims.name),
            roles: self
                .claims
                .roles
                .as_deref()
                .map(|path| claim_list(&claims, path))
                .unwrap_or_default(),
            tenant: self
                .claims
                .tenant
                .as_deref()
                .and_then(|path| claim_text(&claims, path)),
            source: Some("jwt"),
            verified,
            notes: Vec::new(),
        };
        (actor.id.is_some() || actor.email.is_some()).then_some(actor)
    }
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
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "token is malformed".into(),
        _ => "token rejected".into(),
    }
}

/// The value of a named cookie from any `Cookie` header.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"'))
        })
}

fn basic(headers: &HeaderMap) -> Option<Actor> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    // Only the user name is kept; the password is dropped here and never copied anywhere.
    let user = text.split_once(':').map(|(user, _)| user).unwrap_or(&text);
    if user.is_empty() {
        return None;
    }
    Some(Actor {
        id: Some(user.to_string()),
        source: Some("basic"),
        verified: false,
        ..Actor::default()
    })
}

impl HeaderSource {
    fn resolve(&self, request: &ActorRequest, notes: &mut Vec<String>) -> Option<Actor> {
        let read = |name: &Option<HeaderName>| -> Option<String> {
            let value = request.headers.get(name.as_ref()?)?.to_str().ok()?.trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let id = read(&self.id);
        let email = read(&self.email);
        if id.is_none() && email.is_none() {
            return None;
        }
        if !request.peer_trusted {
            let mut names = BTreeMap::new();
            for name in [&self.id, &self.email].into_iter().flatten() {
                if request.headers.contains_key(name) {
                    names.insert(name.as_str(), ());
                }
            }
            let names: Vec<&str> = names.into_keys().collect();
            notes.push(format!(
                "header: ignored {} from a peer that is not a trusted proxy (spoof attempt)",
                names.join(", ")
            ));
            return None;
        }
        Some(Actor {
            id,
            email,
            name: read(&self.name),
            roles: read(&self.groups)
                .map(|groups| {
                    groups
                        .split(',')
                        .map(|group| group.trim().to_string())
                        .filter(|group| !group.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            tenant: read(&self.tenant),
            source: Some("header"),
            verified: true,
            notes: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn chain(text: &str) -> ActorChain {
        #[derive(Deserialize)]
        struct File {
            actor: Vec<ActorFile>,
        }
        let file: File = toml::from_str(text).expect("parses");
        ActorChain::compile(&file.actor, &[]).expect("compiles")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn hs256(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encodes")
    }

    #[test]
    fn verified_hs256_jwt() {
        std::env::set_var("ACTOR_TEST_SECRET_1", "s3cret");
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_1\"\nroles = \"realm.roles\"\n");
        let exp = chrono::Utc::now().timestamp() + 600;
        let token = hs256(
            json!({"sub": "u1", "email": "a@x.io", "exp": exp, "realm": {"roles": ["admin"]}}),
            "s3cret",
        );
        let auth = format!("Bearer {token}");
        let actor = chain.resolve(&ActorRequest {
            headers: &headers(&[("authorization", &auth)]),
            peer_trusted: false,
        });
        assert_eq!(actor.id.as_deref(), Some("u1"));
        assert_eq!(actor.email.as_deref(), Some("a@x.io"));
        assert_eq!(actor.roles, vec!["admin".to_string()]);
        assert!(actor.verified);
        assert_eq!(actor.source, Some("jwt"));
    }

    #[test]
    fn wrongly_signed_or_expired_jwt_is_unverified_with_reason() {
        std::env::set_var("ACTOR_TEST_SECRET_2", "right");
        let chain =
            chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_2\"\n");
        let token = hs256(json!({"sub": "mallory"}), "wrong");
        let auth = format!("Bearer {token}");
        let actor = chain.resolve(&ActorRequest {
            headers: &headers(&[("authorization", &auth)]),
            peer_trusted: false,
        });
        assert_eq!(actor.id.as_deref(), Some("mallory"));
        assert!(!actor.verified);
        assert_eq!(
            actor.notes,
            vec!["jwt: signature does not verify".to_string()]
        );

        let token = hs256(json!({"sub": "old", "exp": 1000}), "right");
        let auth = format!("Bearer {token}");
        let actor = chain.resolve(&ActorRequest {
            headers: &headers(&[("authorization", &auth)]),
            peer_trusted: false,
        });
        assert!(!actor.verified);
        assert_eq!(actor.notes, vec!["jwt: token expired".to_string()]);
    }

    #[test]
    fn garbage_tokens_never_panic() {
        std::env::set_var("ACTOR_TEST_SECRET_3", "k");
        let chain = chain("[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_SECRET_3\"\non_invalid = \"anonymous\"\n");
        let huge = format!("Bearer {}", "a".repeat(100_000));
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer a.b",
            "Bearer ...",
            "Bearer e30.e30.",
            "Basic Og==",
            huge.as_str(),
        ] {
            let actor = chain.resolve(&ActorRequest {
                headers: &headers(&[("authorization", value)]),
                peer_trusted: false,
            });
            assert_eq!(actor.id, None, "{value}");
        }
    }

    #[test]
    fn basic_keeps_only_the_user_name() {
        let chain = chain("[[actor]]\nfrom = \"basic\"\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:hunter2");
        let auth = format!("Basic {encoded}");
        let actor = chain.resolve(&ActorRequest {
            headers: &headers(&[("authorization", &auth)]),
            peer_trusted: false,
        });
        assert_eq!(actor.id.as_deref(), Some("alice"));
        assert!(!format!("{actor:?}").contains("hunter2"));
    }

    #[test]
    fn identity_headers_only_from_trusted_peers() {
        let chain = chain("[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nemail = \"x-forwarded-email\"\ngroups = \"x-forwarded-groups\"\n");
        let request_headers = headers(&[
            ("x-forwarded-user", "bob"),
            ("x-forwarded-email", "bob@x.io"),
            ("x-forwarded-groups", "ops, admins"),
        ]);
        let trusted = chain.resolve(&ActorRequest {
            headers: &request_headers,
            peer_trusted: true,
        });
        assert_eq!(trusted.id.as_deref(), Some("bob"));
        assert_eq!(trusted.roles, vec!["ops".to_string(), "admins".to_string()]);
        assert!(trusted.verified);
        let spoofed = chain.resolve(&ActorRequest {
            headers: &request_headers,
            peer_trusted: false,
        });
        assert_eq!(spoofed.id, None);
        assert!(spoofed.notes[0].contains("spoof"), "{:?}", spoofed.notes);
    }

    #[test]
    fn config_errors_are_specific() {
        #[derive(Deserialize)]
        struct File {
            actor: Vec<ActorFile>,
        }
        let file: File = toml::from_str(
            "[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"ACTOR_TEST_UNSET_VARIABLE\"\n[[actor]]\nfrom = \"magic\"\n[[actor]]\nfrom = \"header\"\n",
        )
        .expect("parses");
        let errors = ActorChain::compile(&file.actor, &[]).expect_err("invalid");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("actor #1 (jwt).hs256_secret_env: environment variable"),
            "{all}"
        );
        assert!(all.contains("actor #2 (magic).from"), "{all}");
        assert!(all.contains("actor #3 (header): needs at least"), "{all}");
    }
}
