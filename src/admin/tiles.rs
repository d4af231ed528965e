//! The log as tlog tiles (c2sp.org/tlog-tiles) on the admin listener, under the prefix `/tlog/`,
//! so that tlog clients auditgate did not write can fetch and check the whole log:
//!
//! - `GET /tlog/checkpoint` — the latest signed tree head as a C2SP checkpoint (the same note as
//!   `/api/v1/log/checkpoint`, with the witnesses' cosignatures), `text/plain; charset=utf-8`,
//!   never cached.
//! - `GET /tlog/tile/<L>/<N>[.p/<W>]` — hash tiles; `GET /tlog/tile/entries/<N>[.p/<W>]` — entry
//!   bundles (the format, and the marks of pruned and oversized entries, in
//!   [`crate::log::tiles`]);
//!   `application/octet-stream`. 404 for a path the spec does not allow or a tile the tree does
//!   not hold yet; 409 for a bundle over a position whose entry is missing without a prune mark
//!   (tampering: `auditgate verify` names it).
//!
//! Hash tiles never change once the tree holds them (a partial tile of width W is always the
//! first W hashes of its full tile), so they are served `immutable`. Entry bundles are cached
//! for an hour only: retention later replaces a pruned entry by the mark naming its prune
//! record, and a cache must not go on serving an entry long after it was removed. Between a prune
//! and the next signed head (`sign_interval`) that record lies past the served checkpoint, so a
//! reader cannot check the marks yet and should fetch the checkpoint again.
//!
//! These paths are the C2SP static API, not part of the JSON API: they are not in the OpenAPI
//! document. They need a token with the `read` scope, or nothing when `[log] public_tiles =
//! true`. Fetching them is not recorded as an entry: a mirror polling the tiles would otherwise
//! grow the log it mirrors with every poll.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

use super::auth::{self, Access};
use super::error::ApiError;
use super::{log_api, AdminState};
use crate::admin::config::Scope;
use crate::export::tiles::{read_tile, TileReadError};
use crate::log::tiles::{Tile, TileKind};

/// How long a cache may keep an entry bundle: the longest an entry may still be served from a
/// cache after retention pruned it.
const BUNDLE_MAX_AGE_SECONDS: u32 = 3600;

/// The `/tlog/` routes, behind the `read` scope unless `[log] public_tiles` is set.
pub fn routes(state: &AdminState) -> Router<AdminState> {
    let protect = |handler: MethodRouter<AdminState>| {
        if state.log.public_tiles() {
            handler
        } else {
            handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), Access::Scope(Scope::Read)),
                auth::require,
            ))
        }
    };
    Router::new()
        .route("/tlog/checkpoint", protect(get(log_api::checkpoint)))
        .route("/tlog/tile/{*path}", protect(get(tile)))
}

async fn tile(State(state): State<AdminState>, Path(path): Path<String>) -> Response {
    let Ok(tile) = Tile::parse(&path) else {
        return ApiError::Refused(StatusCode::NOT_FOUND, "no such tile".into()).into_response();
    };
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || read_tile(store.as_ref(), &tile)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(TileReadError::NotInTree(..))) => {
            return ApiError::Refused(StatusCode::NOT_FOUND, "the log has no such tile yet".into())
                .into_response()
        }
        Ok(Err(
            error @ (TileReadError::MissingEntry { .. } | TileReadError::UnreadableEntry { .. }),
        )) => {
            tracing::error!(%error, tile = %tile, "an entry bundle cannot be made");
            return ApiError::Refused(StatusCode::CONFLICT, error.to_string()).into_response();
        }
        Ok(Err(TileReadError::Store(error))) => return ApiError::from(error).into_response(),
        Err(error) => return ApiError::from(error).into_response(),
    };
    let visibility = if state.log.public_tiles() {
        "public"
    } else {
        "private"
    };
    let cache_control = match tile.kind {
        TileKind::Hashes { .. } => format!("{visibility}, max-age=31536000, immutable"),
        TileKind::Entries => format!("{visibility}, max-age={BUNDLE_MAX_AGE_SECONDS}"),
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}
