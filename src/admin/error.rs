//! The one error type of admin handlers, and the JSON body every refusal carries.
//!
//! Clients get a short message and, for bad parameters, which parameter; never a store error, a
//! file path or SQL. The cause of a 500 is logged here, once, where it is turned into a response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::admin::config::Scope;
use crate::store::query::ParamError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or ones that name no token or live session.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but the token was not given this scope.
    #[error("this token does not have the {} scope", .0.name())]
    MissingScope(Scope),
    /// A cookie-authenticated change sent from another origin (CSRF).
    #[error("cross-origin request refused")]
    CrossOrigin,
    /// Query parameters that do not parse; every one is listed.
    #[error("invalid parameters")]
    Params(Vec<ParamError>),
    /// A request body that is not what the endpoint takes.
    #[error("{0}")]
    BadBody(&'static str),
    #[error("content-type must be application/json")]
    NotJson,
    #[error("{0}")]
    NotFound(&'static str),
    /// A refusal with its own status and message (a proof no head covers yet: 409, ...).
    #[error("{1}")]
    Refused(StatusCode, String),
    /// Something on our side failed; the cause is logged, the client only learns that it failed.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MissingScope(_) | ApiError::CrossOrigin => StatusCode::FORBIDDEN,
            ApiError::Params(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Refused(status, _) => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: always `{"error": ...}`, plus `param` and `errors` for bad parameters and
    /// `scope` for a missing scope.
    pub fn body(&self) -> Value {
        match self {
            ApiError::Params(errors) => {
                let first = errors.first();
                json!({
                    "error": first.map_or("invalid parameters", |error| error.message.as_str()),
                    "param": first.map(|error| error.param.as_str()),
                    "errors": errors,
                })
            }
            ApiError::MissingScope(scope) => {
                json!({"error": self.to_string(), "scope": scope.name()})
            }
            _ => json!({"error": self.to_string()}),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            // A cursor another kind of store handed out: the client's mistake, not ours.
            StoreError::Cursor => ApiError::Params(vec![ParamError::new(
                "cursor",
                crate::store::query::CursorError.to_string(),
            )]),
            error => ApiError::Internal(format!("store: {error}")),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("store task: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "admin request failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"auditgate\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_name_the_first_and_list_all() {
        let error = ApiError::Params(vec![
            ParamError::new("limit", "must be a whole number from 1 to 1000"),
            ParamError::new("since", "bad"),
        ]);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            error.body(),
            json!({
                "error": "must be a whole number from 1 to 1000",
                "param": "limit",
                "errors": [
                    {"param": "limit", "message": "must be a whole number from 1 to 1000"},
                    {"param": "since", "message": "bad"},
                ],
            })
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let error = ApiError::from(StoreError::Other("/secret/path.db is locked".into()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.body(), json!({"error": "internal error"}));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token_and_forbidden_names_the_scope() {
        let response = ApiError::Unauthorized("authentication required").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .is_some_and(|value| value.as_bytes().starts_with(b"Bearer")));
        let forbidden = ApiError::MissingScope(Scope::Export);
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(forbidden.body()["scope"], "export");
        assert_eq!(
            forbidden.body()["error"],
            "this token does not have the export scope"
        );
    }
}
