//! Who is calling the admin API, and may they: bearer tokens, browser sessions, scopes, and the
//! same-origin check that keeps cookie-authenticated changes safe from other sites.
//!
//! Tokens are configured as SHA-256 hashes (`auditgate token` prints a token and its hash), so
//! the config never holds a usable secret. A presented token is hashed and compared with every
//! configured hash in constant time.
//!
//! The web viewer signs in once by posting a token to `POST /api/v1/session`; the server keeps a
//! session in memory (name and scopes, never the token) and hands the browser an `HttpOnly`,
//! `SameSite=Strict` cookie holding a random session id. Sessions are bounded in number, expire,
//! and are forgotten on restart. Either credential authenticates every protected route; with a
//! cookie, a request that changes state must also come from the admin listener's own origin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::audit::{self, AdminAction, RequestInfo};
use super::caller::{Caller, Identity, Via};
use super::error::ApiError;
use super::AdminState;
use crate::admin::config::{AdminToken, Scope};

/// The cookie that carries a viewer session id.
pub const SESSION_COOKIE: &str = "auditgate_session";
/// How long a viewer session lasts: a working day, after which the viewer asks for the token
/// again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// The most sessions kept at once. Creating one more first drops expired sessions, then the one
/// that would expire soonest, so a flood of sign-ins cannot grow memory without bound.
pub const MAX_SESSIONS: usize = 1024;
/// Longer bearer tokens and session ids are refused before any hashing or lookup. Tokens made by
/// `auditgate token` are 68 characters.
const MAX_CREDENTIAL_BYTES: usize = 512;

/// What a route demands of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (health, metrics, the OpenAPI document, signing in).
    Public,
    /// Any valid token or session, whatever its scopes.
    Authenticated,
    /// A token or session holding this scope.
    Scope(Scope),
}

struct Session {
    identity: Identity,
    expires: Instant,
    expires_at: DateTime<Utc>,
}

/// A session just started: the id goes into the cookie and nowhere else.
pub struct NewSession {
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

/// Each configured token's SHA-256 with who holds it.
type TokenTable = Arc<[([u8; 32], Identity)]>;

/// The configured tokens and the live sessions.
pub struct Authenticator {
    /// Swapped whole by a reload.
    tokens: std::sync::RwLock<TokenTable>,
    /// Keyed by the SHA-256 of the session id, so the table holds nothing a reader of memory
    /// could replay as a cookie, and lookup timing says nothing about live ids.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    lifetime: Duration,
    /// TLS-terminating proxies in front of the admin listener; their word on the scheme decides
    /// whether the session cookie is `Secure`.
    https_proxies: Vec<ipnet::IpNet>,
    /// How many refusals of unknown credentials were recorded in the current minute.
    unknown_credentials: Mutex<CredentialRefusals>,
}

/// The budget of `audit.denied` entries for unknown credentials: a token-guessing loop is
/// recorded, but cannot fill the log; what goes over is counted into the next recorded entry.
#[derive(Debug)]
struct CredentialRefusals {
    window_started: Instant,
    recorded: u32,
    suppressed: u64,
}

/// Most `audit.denied` entries for unknown credentials recorded per minute.
pub const UNKNOWN_CREDENTIALS_PER_MINUTE: u32 = 60;

impl Authenticator {
    pub fn new(tokens: &[AdminToken]) -> Authenticator {
        Authenticator::with_session_lifetime(tokens, SESSION_LIFETIME)
    }

    /// For tests of expiry; the sidecar uses [`SESSION_LIFETIME`].
    pub fn with_session_lifetime(tokens: &[AdminToken], lifetime: Duration) -> Authenticator {
        Authenticator {
            tokens: std::sync::RwLock::new(token_table(tokens)),
            sessions: Mutex::new(HashMap::new()),
            lifetime,
            https_proxies: Vec::new(),
            unknown_credentials: Mutex::new(CredentialRefusals {
                window_started: Instant::now(),
                recorded: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a refusal of unknown credentials is recorded now, and how many earlier ones went
    /// unrecorded since the last recorded one (over the per-minute budget).
    pub fn admit_credential_refusal(&self) -> Option<u64> {
        let mut refusals = self
            .unknown_credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if refusals.window_started.elapsed() >= Duration::from_secs(60) {
            refusals.window_started = Instant::now();
            refusals.recorded = 0;
        }
        if refusals.recorded >= UNKNOWN_CREDENTIALS_PER_MINUTE {
            refusals.suppressed += 1;
            return None;
        }
        refusals.recorded += 1;
        Some(std::mem::take(&mut refusals.suppressed))
    }

    /// Replaces the configured tokens (a reload). A removed token stops working at once, and so
    /// do the viewer sessions it opened; a session whose token stays takes the token's scopes as
    /// configured now. Returns how many sessions ended.
    pub fn replace_tokens(&self, tokens: &[AdminToken]) -> usize {
        let table = token_table(tokens);
        match self.tokens.write() {
            Ok(mut current) => *current = table.clone(),
            Err(poisoned) => *poisoned.into_inner() = table.clone(),
        }
        let mut sessions = self.sessions();
        let before = sessions.len();
        sessions.retain(|_, session| {
            match table
                .iter()
                .find(|(hash, _)| *hash == session.identity.token_sha256)
            {
                Some((_, identity)) => {
                    session.identity = identity.clone();
                    true
                }
                None => false,
            }
        });
        before - sessions.len()
    }

    fn token_table(&self) -> TokenTable {
        match self.tokens.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Believes these proxies when they say the viewer was reached over https.
    pub fn with_https_proxies(mut self, proxies: &[ipnet::IpNet]) -> Authenticator {
        self.https_proxies = proxies.to_vec();
        self
    }

    /// Whether the session cookie must be `Secure`: the browser reached the viewer over https
    /// through a trusted TLS-terminating proxy. (The admin listener itself speaks plain HTTP,
    /// where a `Secure` cookie would never come back.) Only the proxy's own word counts, so
    /// `Forwarded` is read for its last element and `X-Forwarded-Proto` for its last value.
    pub fn cookie_secure(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        let Some(peer) = peer else {
            return false;
        };
        if !self.https_proxies.iter().any(|net| net.contains(&peer)) {
            return false;
        }
        let last_value = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .next_back()
                .map(str::trim)
        };
        let forwarded_https = last_value("forwarded").is_some_and(|element| {
            element.split(';').any(|pair| {
                pair.trim().split_once('=').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("proto")
                        && value.trim().trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        });
        forwarded_https
            || last_value("x-forwarded-proto")
                .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
    }

    /// The session lifetime, for the cookie's `Max-Age`.
    pub fn session_lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The holder of a presented token, if it is one of the configured ones.
    pub fn token(&self, presented: &str) -> Option<Identity> {
        if presented.is_empty() || presented.len() > MAX_CREDENTIAL_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        // Every configured hash is compared, each in constant time, so the time taken says
        // nothing about how close a guess came or which token it resembled.
        let table = self.token_table();
        for (hash, identity) in table.iter() {
            let equal: bool = hash.ct_eq(&digest).into();
            if equal && found.is_none() {
                found = Some(identity);
            }
        }
        found.cloned()
    }

    /// Who is calling: a bearer token when an `Authorization` header is present (and then only
    /// it: a wrong token is not rescued by a cookie), else the session cookie.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = bearer_token(value).ok_or(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
            let identity = self
                .token(token)
                .ok_or(ApiError::Unauthorized("unknown bearer token"))?;
            return Ok(Caller {
                identity,
                via: Via::Bearer,
            });
        }
        if let Some(id) = session_cookie(headers) {
            let (identity, expires_at) = self.session(id).ok_or(ApiError::Unauthorized(
                "the session has ended; sign in again",
            ))?;
            return Ok(Caller {
                identity,
                via: Via::Session { expires_at },
            });
        }
        Err(ApiError::Unauthorized(
            "authentication required: send `Authorization: Bearer <token>` or sign in",
        ))
    }

    /// Starts a session for `identity`, making room first if the table is full.
    pub fn start_session(&self, identity: Identity) -> NewSession {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.lifetime).unwrap_or(chrono::Duration::zero());
        let mut sessions = self.sessions();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, session| session.expires > now);
        }
        while sessions.len() >= MAX_SESSIONS {
            let soonest = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(key, _)| *key);
            match soonest {
                Some(key) => sessions.remove(&key),
                None => break,
            };
        }
        sessions.insert(
            session_key(&id),
            Session {
                identity,
                expires: now + self.lifetime,
                expires_at,
            },
        );
        NewSession { id, expires_at }
    }

    /// The identity and expiry of a live session; an expired one is removed.
    pub fn session(&self, id: &str) -> Option<(Identity, DateTime<Utc>)> {
        if id.is_empty() || id.len() > MAX_CREDENTIAL_BYTES {
            return None;
        }
        let key = session_key(id);
        let mut sessions = self.sessions();
        let session = sessions.get(&key)?;
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some((session.identity.clone(), session.expires_at))
    }

    /// Forgets a session; whether it existed.
    pub fn end_session(&self, id: &str) -> bool {
        self.sessions().remove(&session_key(id)).is_some()
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The table is consistent after any single operation, so a panic elsewhere while holding
    /// the lock leaves nothing half-done: recover the guard rather than lock everyone out.
    fn sessions(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The lookup table of configured tokens.
fn token_table(tokens: &[AdminToken]) -> TokenTable {
    tokens
        .iter()
        .map(|token| {
            let identity = Identity {
                name: Arc::from(token.name.as_str()),
                scopes: Arc::from(token.scopes.as_slice()),
                token_sha256: token.sha256,
            };
            (token.sha256, identity)
        })
        .collect()
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, per RFC 9110).
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the session cookie, from any `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// Whether a request may change state on behalf of a cookie: it must come from a page of the
/// admin listener itself. Browsers send `Origin` with every POST and DELETE, and modern ones
/// `Sec-Fetch-Site`; when either is present it must say "this origin". Requests with neither
/// come from scripts and tools, which do not carry the browser's cookies by accident.
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    // "null" (sandboxed frames, file: pages) has no "://" and is refused here.
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if authority.is_empty() || authority.contains(['/', '@']) {
        return false;
    }
    normalized_authority(scheme, authority) == normalized_authority(scheme, host)
}

/// Lowercase, without the scheme's default port, so `http://Admin:80` matches `admin`.
fn normalized_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    match lower.strip_suffix(default_port) {
        Some(stripped) if !default_port.is_empty() => stripped.to_string(),
        _ => lower,
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware of every protected route: authenticates, checks the origin of cookie-borne
/// changes and the route's scope, then hands the [`Caller`] to the handler. Refusals of an
/// authenticated caller are themselves audited (`audit.denied`), and so are credentials nobody
/// holds, within a per-minute budget; requests with no credential at all are not, so
/// unauthenticated noise cannot fill the log.
pub async fn require(
    State((state, access)): State<(AdminState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match state.auth.identify(request.headers()) {
        Ok(caller) => caller,
        Err(error) => {
            // Someone presented a credential that is not (or no longer) valid: that attempt is
            // part of the record. A request with no credential at all is not (probes, a browser
            // before sign-in).
            let presented = request.headers().contains_key(header::AUTHORIZATION)
                || session_cookie(request.headers()).is_some();
            if presented {
                record_unknown_credential(&state, &RequestInfo::of(&request), &error);
            }
            return error.into_response();
        }
    };
    let refusal = if matches!(caller.via, Via::Session { .. })
        && changes_state(request.method())
        && !same_origin(request.headers(), request.uri())
    {
        Some(ApiError::CrossOrigin)
    } else {
        match access {
            Access::Scope(scope) if !caller.identity.has(scope) => {
                Some(ApiError::MissingScope(scope))
            }
            _ => None,
        }
    };
    if let Some(error) = refusal {
        let info = RequestInfo::of(&request);
        let mut action = AdminAction::new(audit::AUDIT_DENIED, error.status());
        action
            .metadata
            .insert("reason".into(), error.to_string().into());
        if let ApiError::MissingScope(scope) = error {
            action.metadata.insert("scope".into(), scope.name().into());
        }
        audit::record(&state, Some(&caller), &info, action);
        return error.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Records `audit.denied` for a credential nobody holds (an unknown or revoked token, an ended
/// session), within the per-minute budget. No actor: the credential names nobody, and is never
/// stored.
pub fn record_unknown_credential(state: &AdminState, info: &RequestInfo, error: &ApiError) {
    let Some(suppressed) = state.auth.admit_credential_refusal() else {
        tracing::warn!(peer = ?info.peer, path = %info.path, "admin request with unknown credentials (over the recording budget)");
        return;
    };
    tracing::warn!(peer = ?info.peer, path = %info.path, %error, "admin request with unknown credentials");
    let mut action = AdminAction::new(audit::AUDIT_DENIED, error.status());
    action
        .metadata
        .insert("reason".into(), error.to_string().into());
    if suppressed > 0 {
        action
            .metadata
            .insert("unrecordedBefore".into(), suppressed.into());
    }
    audit::record(state, None, info, action);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_token(name: &str, token: &str, scopes: &[Scope]) -> AdminToken {
        AdminToken {
            name: name.into(),
            sha256: Sha256::digest(token.as_bytes()).into(),
            scopes: scopes.to_vec(),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&[
            config_token("ops", "agt_ops", &[Scope::Read, Scope::Export]),
            config_token("viewer", "agt_viewer", &[Scope::Read]),
        ])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn refusals_of_unknown_credentials_have_a_budget_and_count_what_went_over() {
        let auth = authenticator();
        for _ in 0..UNKNOWN_CREDENTIALS_PER_MINUTE {
            assert_eq!(auth.admit_credential_refusal(), Some(0));
        }
        assert_eq!(auth.admit_credential_refusal(), None);
        assert_eq!(auth.admit_credential_refusal(), None);
        // A new minute: the next one is recorded and says how many were not.
        auth.unknown_credentials
            .lock()
            .expect("lock")
            .window_started -= Duration::from_secs(61);
        assert_eq!(auth.admit_credential_refusal(), Some(2));
        assert_eq!(auth.admit_credential_refusal(), Some(0));
    }

    #[test]
    fn the_cookie_is_secure_only_when_a_trusted_proxy_says_https() {
        let proxy: IpAddr = "10.0.0.5".parse().expect("ip");
        let stranger: IpAddr = "198.51.100.7".parse().expect("ip");
        let plain = authenticator();
        let behind = authenticator().with_https_proxies(&["10.0.0.0/24".parse().expect("net")]);
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(
            !plain.cookie_secure(Some(proxy), &https),
            "no proxy configured"
        );
        assert!(behind.cookie_secure(Some(proxy), &https));
        assert!(
            !behind.cookie_secure(Some(stranger), &https),
            "a client's own word"
        );
        assert!(!behind.cookie_secure(None, &https));
        assert!(!behind.cookie_secure(Some(proxy), &headers(&[])));
        assert!(!behind.cookie_secure(Some(proxy), &headers(&[("x-forwarded-proto", "http")])));
        // Only the last hop (the trusted proxy's own) counts.
        assert!(!behind.cookie_secure(
            Some(proxy),
            &headers(&[("x-forwarded-proto", "https, http")])
        ));
        assert!(behind.cookie_secure(
            Some(proxy),
            &headers(&[(
                "forwarded",
                "for=1.2.3.4;proto=http, for=5.6.7.8;Proto=\"HTTPS\""
            )])
        ));
        assert!(!behind.cookie_secure(
            Some(proxy),
            &headers(&[("forwarded", "proto=https, for=5.6.7.8;proto=http")])
        ));
    }

    #[test]
    fn tokens_are_found_by_hash_and_nothing_else() {
        let auth = authenticator();
        let ops = auth.token("agt_ops").expect("known");
        assert_eq!(&*ops.name, "ops");
        assert!(ops.has(Scope::Export));
        assert_eq!(
            auth.token("agt_viewer").map(|id| id.scope_names()),
            Some(vec!["read"])
        );
        for wrong in ["", "agt_op", "agt_ops ", "AGT_OPS", &"x".repeat(10_000)] {
            assert!(auth.token(wrong).is_none(), "{wrong:?} was accepted");
        }
        // The configured value is a hash: presenting the hash itself is not the token.
        let hash = hex::encode(Sha256::digest(b"agt_ops"));
        assert!(auth.token(&hash).is_none());
    }

    #[test]
    fn bearer_header_forms() {
        let auth = authenticator();
        for good in ["Bearer agt_ops", "bearer agt_ops", "BEARER  agt_ops"] {
            let caller = auth
                .identify(&headers(&[("authorization", good)]))
                .expect(good);
            assert_eq!(&*caller.identity.name, "ops");
            assert_eq!(caller.via, Via::Bearer);
        }
        for bad in [
            "agt_ops",
            "Basic agt_ops",
            "Bearer ",
            "Bearer wrong",
            "Token agt_ops",
        ] {
            let error = auth
                .identify(&headers(&[("authorization", bad)]))
                .expect_err(bad);
            assert!(matches!(error, ApiError::Unauthorized(_)), "{bad}");
        }
        assert!(auth.identify(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_wrong_bearer_is_not_rescued_by_a_good_cookie() {
        let auth = authenticator();
        let session = auth.start_session(auth.token("agt_ops").expect("known"));
        let cookie = format!("{SESSION_COOKIE}={}", session.id);
        assert!(auth.identify(&headers(&[("cookie", &cookie)])).is_ok());
        assert!(auth
            .identify(&headers(&[
                ("cookie", &cookie),
                ("authorization", "Bearer no")
            ]))
            .is_err());
    }

    #[test]
    fn sessions_remember_the_identity_not_the_token_and_end() {
        let auth = authenticator();
        let identity = auth.token("agt_viewer").expect("known");
        let session = auth.start_session(identity.clone());
        assert_eq!(session.id.len(), 43, "32 random bytes, base64url");
        let cookie = format!("theme=dark; {SESSION_COOKIE}={}; other=1", session.id);
        let caller = auth
            .identify(&headers(&[("cookie", &cookie)]))
            .expect("session cookie");
        assert_eq!(caller.identity, identity);
        assert_eq!(
            caller.via,
            Via::Session {
                expires_at: session.expires_at
            }
        );
        let lifetime = session.expires_at - Utc::now();
        assert!(lifetime > chrono::Duration::hours(11) && lifetime <= chrono::Duration::hours(12));

        assert!(auth.session("not-a-session").is_none());
        assert!(auth.end_session(&session.id));
        assert!(!auth.end_session(&session.id));
        assert!(auth.identify(&headers(&[("cookie", &cookie)])).is_err());
    }

    #[test]
    fn expired_sessions_are_refused_and_removed() {
        let auth = Authenticator::with_session_lifetime(
            &[config_token("ops", "agt_ops", &[Scope::Read])],
            Duration::ZERO,
        );
        let session = auth.start_session(auth.token("agt_ops").expect("known"));
        assert_eq!(auth.session_count(), 1);
        assert!(auth.session(&session.id).is_none());
        assert_eq!(auth.session_count(), 0);
    }

    #[test]
    fn the_session_table_is_bounded() {
        let auth = authenticator();
        let identity = auth.token("agt_ops").expect("known");
        let first = auth.start_session(identity.clone());
        let mut last = None;
        for _ in 0..MAX_SESSIONS + 10 {
            last = Some(auth.start_session(identity.clone()));
        }
        assert_eq!(auth.session_count(), MAX_SESSIONS);
        assert!(
            auth.session(&first.id).is_none(),
            "the oldest session made room"
        );
        let last = last.expect("made");
        assert!(auth.session(&last.id).is_some());
    }

    #[test]
    fn same_origin_rules() {
        let uri: Uri = "/api/v1/session".parse().expect("uri");
        let check = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), &uri);
        assert!(check(&[("host", "127.0.0.1:9090")]), "no Origin: a tool");
        assert!(check(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090")
        ]));
        assert!(check(&[
            ("host", "Admin.Example"),
            ("origin", "http://admin.example:80")
        ]));
        assert!(check(&[
            ("host", "admin.example"),
            ("origin", "https://admin.example")
        ]));
        assert!(check(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin"),
        ]));
        assert!(!check(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example")
        ]));
        assert!(!check(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9091")
        ]));
        assert!(!check(&[("host", "127.0.0.1:9090"), ("origin", "null")]));
        assert!(!check(&[("origin", "http://127.0.0.1:9090")]), "no host");
        assert!(!check(&[
            ("host", "127.0.0.1:9090"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(!check(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-site"),
        ]));
    }
}
