//! The admin listener: health, metrics, the query and export API, and the web viewer.
//!
//! Endpoints (the route table in [`routes`] is the one list; `openapi.rs` documents it and a test
//! holds the two together):
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` — health, readiness, Prometheus text; public.
//! - `GET /api/v1/openapi.json` — the OpenAPI 3.1 document; public.
//! - `POST|GET|DELETE /api/v1/session` — viewer sign-in with a token, who am I, sign-out.
//! - `GET /api/v1/entries`, `GET /api/v1/entries/{id}`, `GET /api/v1/stats` — queries (`read`).
//! - `GET /api/v1/export` — streamed CSV/JSON/NDJSON download, NDJSON with proofs on `proofs=true`
//!   (`export`).
//! - `GET /api/v1/coverage` — the routes learned from traffic with what covers each (`read`; see
//!   [`coverage`]).
//! - `GET /api/audit-log` — the reference product's `{logs, total}` endpoint (`read`).
//! - `POST /api/v1/events` — entries from the app itself (`write`; see [`events`]).
//! - `GET /api/v1/log/head`, `/api/v1/log/checkpoint`, `/api/v1/log/key`, `/api/v1/log/consistency`,
//!   `/api/v1/entries/{id}/proof`, `/api/v1/entries/{id}/tlog-proof`, `/api/v1/verify` — tamper
//!   evidence (`read`; see [`log_api`]).
//! - `GET /tlog/checkpoint`, `GET /tlog/tile/...` — the log as C2SP tlog tiles, outside the JSON
//!   API and its OpenAPI document (`read`, or public with `[log] public_tiles`; see [`tiles`]).
//! - `GET /`, `GET /ui/{file}` — the web viewer (static files embedded in the binary); public,
//!   it signs in through `/api/v1/session`.
//!
//! The admin listener is its own socket (default 127.0.0.1:9090) and never the proxy's. Every
//! protected route authenticates with a bearer token or a viewer session (`auth.rs`), and every
//! query and export is itself an entry in the log (`audit.rs`).

pub mod api;
pub mod audit;
pub mod auth;
pub mod caller;
pub mod config;
pub mod coverage;
pub mod error;
pub mod events;
pub mod export;
pub mod log_api;
pub mod openapi;
pub mod session;
pub mod tiles;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

mod ui;

use crate::admin::config::Scope;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::WriterHandle;
use auth::{Access, Authenticator};

/// What admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    /// Where the admin API's own entries (`audit.query`, `audit.export`, ...) go.
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// The log the admin API's own entries belong to.
    pub log_id: Arc<str>,
    /// The log's public key, signer counters and the incremental verifier.
    pub log: Arc<log_api::LogApiState>,
    /// Idempotency keys of `POST /api/v1/events` seen recently.
    pub ingest_keys: Arc<events::IdempotencyKeys>,
}

/// The largest request body the admin API reads (a sign-in is a few dozen bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The HTTP methods of admin routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMethod {
    Get,
    Post,
    Delete,
}

impl RouteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMethod::Get => "GET",
            RouteMethod::Post => "POST",
            RouteMethod::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            RouteMethod::Get => MethodFilter::GET,
            RouteMethod::Post => MethodFilter::POST,
            RouteMethod::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route of the admin listener: what it is, and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: RouteMethod,
    pub path: &'static str,
    pub access: Access,
}

struct AdminRoute {
    spec: RouteSpec,
    handler: MethodRouter<AdminState>,
}

/// A route whose method filter comes from the same value as its spec, so the table cannot
/// describe a route differently from how it is served.
fn route<H, T>(method: RouteMethod, path: &'static str, access: Access, handler: H) -> AdminRoute
where
    H: Handler<T, AdminState>,
    T: 'static,
{
    AdminRoute {
        spec: RouteSpec {
            method,
            path,
            access,
        },
        handler: on(method.filter(), handler),
    }
}

/// Every route of the admin listener. Routes from other modules (the tamper-evidence API) join
/// this table, so they get the same authentication and show up in the OpenAPI check.
fn routes() -> Vec<AdminRoute> {
    use RouteMethod::{Delete, Get, Post};
    let read = Access::Scope(Scope::Read);
    vec![
        route(Get, "/healthz", Access::Public, healthz),
        route(Get, "/readyz", Access::Public, readyz),
        route(Get, "/metrics", Access::Public, metrics),
        route(Get, "/api/v1/openapi.json", Access::Public, openapi::serve),
        route(Post, "/api/v1/session", Access::Public, session::create),
        route(
            Get,
            "/api/v1/session",
            Access::Authenticated,
            session::describe,
        ),
        route(
            Delete,
            "/api/v1/session",
            Access::Authenticated,
            session::end,
        ),
        route(Get, "/api/v1/entries", read, api::list_entries),
        route(Get, "/api/v1/entries/{id}", read, api::get_entry),
        route(Get, "/api/v1/stats", read, api::stats),
        route(Get, "/api/v1/coverage", read, coverage::coverage),
        route(
            Get,
            "/api/v1/export",
            Access::Scope(Scope::Export),
            export::export,
        ),
        route(Get, "/api/audit-log", read, api::audit_log),
        route(Get, "/api/v1/log/head", read, log_api::head),
        route(Get, "/api/v1/log/checkpoint", read, log_api::checkpoint),
        route(Get, "/api/v1/log/key", read, log_api::key),
        route(Get, "/api/v1/log/consistency", read, log_api::consistency),
        route(Get, "/api/v1/entries/{id}/proof", read, log_api::proof),
        route(
            Get,
            "/api/v1/entries/{id}/tlog-proof",
            read,
            log_api::tlog_proof,
        ),
        route(Get, "/api/v1/verify", read, log_api::verify),
        {
            let mut ingest = route(
                Post,
                "/api/v1/events",
                Access::Scope(Scope::Write),
                events::ingest,
            );
            // A batch of events is larger than anything else the admin API reads.
            ingest.handler = ingest
                .handler
                .layer(DefaultBodyLimit::max(events::MAX_EVENTS_BODY));
            ingest
        },
    ]
}

/// What the router serves, for the OpenAPI check and for documentation.
pub fn route_specs() -> Vec<RouteSpec> {
    routes().into_iter().map(|route| route.spec).collect()
}

pub fn router(state: AdminState) -> Router {
    let mut router = Router::new();
    for AdminRoute { spec, handler } in routes() {
        let handler = match spec.access {
            Access::Public => handler,
            access => handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), access),
                auth::require,
            )),
        };
        router = router.route(spec.path, handler);
    }
    router
        .merge(tiles::routes(&state))
        .merge(ui::routes())
        .layer(middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Admin answers hold audit data: no cache may keep them, and no browser may guess their type.
/// Headers a handler set itself are kept.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state
        .writer
        .stats()
        .failing
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tracing::error!("not ready: the last write to the store failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the last write to the store failed\n".to_string(),
        );
    }
    if let Err(error) = state.writer.check_journal() {
        tracing::error!(%error, "not ready: the write-ahead intent journal cannot be written");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the write-ahead intent journal cannot be written\n".to_string(),
        );
    }
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.check_writable()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(error)) => {
            // Logged at every probe while it lasts: the alarm for a store that stopped being
            // writable (a deleted database or WAL file) when no traffic is failing to say so. The
            // cause (which may name files) goes to the log, not to whoever asks.
            tracing::error!(%error, "not ready: the store cannot take writes");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the store cannot take writes\n".to_string(),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check failed\n".to_string(),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text =
        crate::metrics::render(&state.metrics, state.writer.stats(), state.writer.depth());
    if let Some(signer) = state.log.signer_stats() {
        let counters = [
            (
                "auditgate_heads_signed_total",
                "Signed tree heads made and stored.",
                signer.heads_signed.get(),
            ),
            (
                "auditgate_heads_published_total",
                "Signed tree heads delivered to a publish target (one per target).",
                signer.heads_published.get(),
            ),
            (
                "auditgate_head_publish_failures_total",
                "Failed deliveries of a head to a publish target (retried with the next head).",
                signer.publish_failures.get(),
            ),
            (
                "auditgate_head_publish_dropped_total",
                "Heads given up on for a target that kept failing.",
                signer.publish_dropped.get(),
            ),
            (
                "auditgate_head_sign_failures_total",
                "Tree heads that could not be made or stored.",
                signer.sign_failures.get(),
            ),
        ];
        for (name, help, value) in counters {
            crate::metrics::write_metric(&mut text, name, "counter", help, value);
        }
        signer.witnesses.write(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;
    use crate::store::config::SyncMode;
    use crate::store::sqlite::SqliteStore;
    use crate::writer::{Writer, WriterOptions};

    #[tokio::test]
    async fn every_route_is_mounted_and_every_protected_route_refuses_strangers() {
        let dir = std::env::temp_dir().join(format!("auditgate-admin-{}", ulid::Ulid::new()));
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("opens"));
        let writer = Writer::start(
            store.clone(),
            WriterOptions {
                capacity: 100,
                batch_size: 10,
                linger: Duration::from_millis(1),
                spill_path: None,
                journal: None,
            },
        )
        .expect("writer");
        let router = router(AdminState {
            store,
            writer: writer.handle(),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(Authenticator::new(&[])),
            log_id: Arc::from("test"),
            log: Arc::new(log_api::LogApiState::new(None, None)),
            ingest_keys: Arc::default(),
        });
        let probe = |method: &str, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path.replace("{id}", "1"))
                .body(Body::empty())
                .expect("request");
            let router = router.clone();
            async move { router.oneshot(request).await.expect("infallible") }
        };
        for spec in route_specs() {
            let response = probe(spec.method.as_str(), spec.path).await;
            let status = response.status();
            assert_eq!(
                response.headers().get(header::CACHE_CONTROL),
                Some(&HeaderValue::from_static("no-store")),
                "{}",
                spec.path
            );
            match spec.access {
                Access::Public => assert!(
                    ![
                        StatusCode::NOT_FOUND,
                        StatusCode::METHOD_NOT_ALLOWED,
                        StatusCode::UNAUTHORIZED
                    ]
                    .contains(&status),
                    "{} {} is not mounted as a public route: {status}",
                    spec.method.as_str(),
                    spec.path
                ),
                _ => assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {} answers strangers",
                    spec.method.as_str(),
                    spec.path
                ),
            }
        }
        assert_eq!(
            probe("GET", "/api/v1/nothing").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            probe("POST", "/api/v1/entries").await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
