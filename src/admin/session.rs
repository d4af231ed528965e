//! The web viewer's sign-in: `POST /api/v1/session` trades a token for a session cookie,
//! `GET` describes the caller, `DELETE` signs out. The tables and checks live in `auth.rs`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{self, AdminAction, RequestInfo, AUDIT_LOGIN, AUDIT_LOGOUT};
use super::auth::{same_origin, session_cookie, NewSession, SESSION_COOKIE};
use super::caller::{Caller, Identity, Via};
use super::error::ApiError;
use super::AdminState;
use crate::entry::format_timestamp;

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /api/v1/session` with `{"token": "..."}`: 204 and the session cookie.
///
/// The request must be same-origin and `application/json`: a cross-site form can send neither,
/// so another site cannot sign a browser in under a token of its choosing.
pub async fn create(
    State(state): State<AdminState>,
    info: RequestInfo,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    match start(&state, &headers, &uri, &body) {
        Ok((identity, session)) => {
            let caller = Caller {
                identity,
                via: Via::Session {
                    expires_at: session.expires_at,
                },
            };
            let mut action = AdminAction::new(AUDIT_LOGIN, StatusCode::NO_CONTENT);
            action.metadata.insert(
                "expiresAt".into(),
                format_timestamp(&session.expires_at).into(),
            );
            audit::record(&state, Some(&caller), &info, action);
            let cookie = format!(
                "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
                session.id,
                state.auth.session_lifetime().as_secs(),
                secure_attribute(&state, &info, &headers)
            );
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(error) => {
            if matches!(error, ApiError::Unauthorized(_)) {
                super::auth::record_unknown_credential(&state, &info, &error);
            }
            error.into_response()
        }
    }
}

fn start(
    state: &AdminState,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<(Identity, NewSession), ApiError> {
    if !same_origin(headers, uri) {
        return Err(ApiError::CrossOrigin);
    }
    if !is_json(headers) {
        return Err(ApiError::NotJson);
    }
    let sign_in: SignIn = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadBody("the body must be {\"token\": \"<admin token>\"}"))?;
    let identity = state
        .auth
        .token(&sign_in.token)
        .ok_or(ApiError::Unauthorized("unknown token"))?;
    let session = state.auth.start_session(identity.clone());
    Ok((identity, session))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// `GET /api/v1/session`: who the caller is. `expiresAt` is null for a bearer token.
pub async fn describe(caller: Caller) -> Json<Value> {
    let expires_at = match &caller.via {
        Via::Session { expires_at } => Value::from(format_timestamp(expires_at)),
        Via::Bearer => Value::Null,
    };
    Json(json!({
        "name": &*caller.identity.name,
        "scopes": caller.identity.scope_names(),
        "expiresAt": expires_at,
    }))
}

/// `DELETE /api/v1/session`: forgets the session and clears the cookie.
pub async fn end(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    headers: HeaderMap,
) -> Response {
    let ended = session_cookie(&headers).is_some_and(|id| state.auth.end_session(id));
    if ended {
        audit::record(
            &state,
            Some(&caller),
            &info,
            AdminAction::new(AUDIT_LOGOUT, StatusCode::NO_CONTENT),
        );
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cleared = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attribute(&state, &info, &headers)
    );
    if let Ok(cleared) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, cleared);
    }
    response
}

/// `; Secure` when the browser came over https through a trusted TLS-terminating proxy.
fn secure_attribute(state: &AdminState, info: &RequestInfo, headers: &HeaderMap) -> &'static str {
    if state.auth.cookie_secure(info.peer, headers) {
        "; Secure"
    } else {
        ""
    }
}
