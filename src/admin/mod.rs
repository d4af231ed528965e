//! The admin listener: health, readiness and metrics (the query API and viewer build on it).
//!
//! Endpoints:
//! - `GET /healthz` — the process is up.
//! - `GET /readyz` — the store takes writes; 503 with the reason otherwise.
//! - `GET /metrics` — Prometheus text.
//! - `GET /`, `GET /ui/{file}` — the web viewer (static files embedded in the binary).
//!
//! The admin listener is its own socket (default 127.0.0.1:9090) and never the proxy's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

mod ui;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::WriterHandle;

/// What admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(ui::routes())
        .with_state(state)
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
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.check_writable()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(error)) => {
            // Logged at every probe while it lasts: the alarm for a store that stopped being
            // writable (a deleted database or WAL file) when no traffic is failing to say so.
            tracing::error!(%error, "not ready: the store cannot take writes");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {error}\n"),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check failed\n".to_string(),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let text = crate::metrics::render(&state.metrics, state.writer.stats(), state.writer.depth());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
