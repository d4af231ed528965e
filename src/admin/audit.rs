//! Auditing the auditors: every admin query, export, sign-in and refusal becomes an entry in the
//! same log, with the token's name as the actor.
//!
//! The entries go through the ordinary writer, so they get sequence numbers, Merkle leaves and
//! retention like any other; an auditor finds them with `action_prefix=audit.`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, Method, StatusCode, Uri};
use serde_json::{Map, Value};

use super::caller::{peer_ip, Caller};
use super::AdminState;
use crate::entry::{AuditEntry, Outcome};

/// A listing, an entry, stats or the reference-compatible page was read.
pub const AUDIT_QUERY: &str = "audit.query";
/// Entries were exported (written when the export ends, with its row count).
pub const AUDIT_EXPORT: &str = "audit.export";
/// An authenticated caller was refused: a missing scope, or a cross-origin change.
pub const AUDIT_DENIED: &str = "audit.denied";
/// A viewer session was started with a token.
pub const AUDIT_LOGIN: &str = "audit.login";
/// A viewer session was ended.
pub const AUDIT_LOGOUT: &str = "audit.logout";

/// The `actorSource` of admin entries.
pub const ACTOR_SOURCE: &str = "token";

/// What the audit entry of an admin request needs to know about the request itself, taken when
/// it arrives.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: Method,
    pub path: String,
    /// The route template that matched, e.g. `/api/v1/entries/{id}`.
    pub route: Option<String>,
    pub peer: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub started: Instant,
}

impl RequestInfo {
    pub fn of(request: &Request) -> RequestInfo {
        RequestInfo::from_parts(
            request.method(),
            request.uri(),
            request.headers(),
            request.extensions(),
        )
    }

    fn from_parts(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> RequestInfo {
        let header_text = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.chars().take(MAX_HEADER_CHARS).collect::<String>())
        };
        RequestInfo {
            method: method.clone(),
            path: uri.path().chars().take(MAX_HEADER_CHARS).collect(),
            route: extensions
                .get::<MatchedPath>()
                .map(|matched| matched.as_str().to_string()),
            peer: peer_ip(extensions),
            user_agent: header_text(header::USER_AGENT),
            request_id: header_text(header::HeaderName::from_static("x-request-id")),
            started: Instant::now(),
        }
    }
}

/// Request headers are bounded by the server, but an audit entry should not carry kilobytes of
/// somebody's user agent.
const MAX_HEADER_CHARS: usize = 512;

impl<S: Send + Sync> FromRequestParts<S> for RequestInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<RequestInfo, Infallible> {
        Ok(RequestInfo::from_parts(
            &parts.method,
            &parts.uri,
            &parts.headers,
            &parts.extensions,
        ))
    }
}

/// One admin action to record.
#[derive(Debug, Clone)]
pub struct AdminAction {
    pub action: &'static str,
    pub status: StatusCode,
    /// Overrides the outcome the status implies (an export cut short after its 200).
    pub outcome: Option<Outcome>,
    pub resource: Option<(&'static str, String)>,
    pub metadata: Map<String, Value>,
    pub error: Option<String>,
}

impl AdminAction {
    pub fn new(action: &'static str, status: StatusCode) -> AdminAction {
        AdminAction {
            action,
            status,
            outcome: None,
            resource: None,
            metadata: Map::new(),
            error: None,
        }
    }
}

/// Hands the entry for an admin action to the writer. Never blocks and never fails the request:
/// the writer counts and reports any entry it cannot store.
pub fn record(
    state: &AdminState,
    caller: Option<&Caller>,
    info: &RequestInfo,
    action: AdminAction,
) {
    state
        .writer
        .push(admin_entry(&state.log_id, caller, info, action));
}

/// The entry itself, apart from the writer so it can be checked field by field.
pub fn admin_entry(
    log_id: &str,
    caller: Option<&Caller>,
    info: &RequestInfo,
    action: AdminAction,
) -> AuditEntry {
    let mut entry = AuditEntry::new(log_id, action.action);
    if let Some(caller) = caller {
        entry.actor_id = Some(caller.identity.name.to_string());
        entry.actor_source = Some(ACTOR_SOURCE.to_string());
        entry.actor_verified = true;
    }
    let status = action.status.as_u16();
    entry.status = Some(status);
    entry.outcome = action
        .outcome
        .unwrap_or_else(|| Outcome::from_status(status));
    entry.method = Some(info.method.to_string());
    entry.path = Some(info.path.clone());
    entry.route = info.route.clone();
    entry.ip = info.peer.map(|ip| ip.to_string());
    entry.user_agent = info.user_agent.clone();
    entry.request_id = info.request_id.clone();
    entry.duration_us = Some(u64::try_from(info.started.elapsed().as_micros()).unwrap_or(u64::MAX));
    entry.error = action.error;
    if let Some((kind, id)) = action.resource {
        entry.resource_type = Some(kind.to_string());
        entry.resource_id = Some(id);
    }
    entry.metadata = action.metadata;
    if let Some(caller) = caller {
        entry
            .metadata
            .insert("auth".into(), Value::from(caller.via_name()));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::caller::{Identity, Via};
    use std::sync::Arc;

    #[test]
    fn admin_entries_name_the_token_holder_and_the_request() {
        let caller = Caller {
            identity: Identity {
                name: Arc::from("ops"),
                scopes: Arc::from(vec![crate::admin::config::Scope::Read]),
                token_sha256: [0; 32],
            },
            via: Via::Bearer,
        };
        let mut request = Request::builder()
            .method("GET")
            .uri("/api/v1/entries?action=x")
            .header("user-agent", "curl/8")
            .header("x-request-id", "r-1")
            .body(axum::body::Body::empty())
            .expect("request");
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                5555,
            ))));
        let info = RequestInfo::of(&request);
        let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::BAD_REQUEST);
        action.metadata.insert("rows".into(), Value::from(0));
        let entry = admin_entry("log-a", Some(&caller), &info, action);
        assert_eq!(entry.action, "audit.query");
        assert_eq!(entry.log_id, "log-a");
        assert_eq!(entry.actor_id.as_deref(), Some("ops"));
        assert_eq!(entry.actor_source.as_deref(), Some("token"));
        assert!(entry.actor_verified);
        assert_eq!(entry.status, Some(400));
        assert_eq!(entry.outcome, Outcome::Failure);
        assert_eq!(entry.method.as_deref(), Some("GET"));
        assert_eq!(entry.path.as_deref(), Some("/api/v1/entries"));
        assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(entry.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(entry.request_id.as_deref(), Some("r-1"));
        assert_eq!(entry.metadata["rows"], 0);
        assert_eq!(entry.metadata["auth"], "bearer");
    }
}
