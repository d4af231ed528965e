//! Who is calling the admin API: the token's identity and how it was presented, put into the
//! request by [`super::auth::require`] for handlers to extract.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};

use super::error::ApiError;
use crate::admin::config::Scope;

/// The holder of a token: their name (the actor of their admin actions) and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    pub scopes: Arc<[Scope]>,
    /// The SHA-256 of the token this identity signed in with (as in the config), so a reload
    /// that removes or rotates the token ends the sessions it opened.
    pub token_sha256: [u8; 32],
}

impl Identity {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn scope_names(&self) -> Vec<&'static str> {
        self.scopes.iter().copied().map(Scope::name).collect()
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Session { expires_at: DateTime<Utc> },
}

/// An authenticated caller, put into the request by [`require`] for handlers to extract.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub via: Via,
}

impl Caller {
    pub fn via_name(&self) -> &'static str {
        match self.via {
            Via::Bearer => "bearer",
            Via::Session { .. } => "session",
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Only routes behind [`require`] have a caller; on any other route this refuses, so a
    /// handler mounted without authentication fails closed.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized("authentication required"))
    }
}

/// The client address of a request served with connect info (the admin listener), if known.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}
