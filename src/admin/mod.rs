//! The admin listener: health, readiness and metrics (the query API and viewer build on it).
//!
//! Endpoints:
//! - `GET /healthz` — the process is up.
//! - `GET /readyz` — the store takes writes; 503 with the reason otherwise.
//! - `GET /metrics` — Prometheus text.
//! - The log's head, key, proofs and verification: see [`log_api`].
//!
//! The admin listener is its own socket (default 127.0.0.1:9090) and never the proxy's.

pub mod log_api;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::{write_metric, Metrics};
use crate::store::Store;
use crate::writer::WriterHandle;

/// What admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub log: Arc<log_api::LogApiState>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(log_api::routes())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.check_writable()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check failed\n".to_string(),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut out = String::new();
    let m = &state.metrics;
    let w = state.writer.stats();
    use std::sync::atomic::Ordering::Relaxed;
    write_metric(
        &mut out,
        "auditgate_requests_total",
        "counter",
        "Requests received on the proxy listener.",
        m.requests.get(),
    );
    write_metric(
        &mut out,
        "auditgate_entries_produced_total",
        "counter",
        "Entries finished by the proxy and handed to the writer.",
        m.entries_produced.get(),
    );
    write_metric(
        &mut out,
        "auditgate_upstream_errors_total",
        "counter",
        "Requests answered 502/504 because the app could not be reached in time.",
        m.upstream_errors.get(),
    );
    write_metric(
        &mut out,
        "auditgate_client_errors_total",
        "counter",
        "Requests refused because the client sent something unusable.",
        m.client_errors.get(),
    );
    write_metric(
        &mut out,
        "auditgate_entries_written_total",
        "counter",
        "Entries committed to the store.",
        w.entries_written.load(Relaxed),
    );
    write_metric(
        &mut out,
        "auditgate_batches_total",
        "counter",
        "Group commits.",
        w.batches.load(Relaxed),
    );
    write_metric(
        &mut out,
        "auditgate_store_errors_total",
        "counter",
        "Failed store appends (each retried).",
        w.store_errors.load(Relaxed),
    );
    write_metric(
        &mut out,
        "auditgate_entries_lost_total",
        "counter",
        "Entries that could never be stored. Alarm on anything but 0.",
        w.entries_lost.load(Relaxed),
    );
    write_metric(
        &mut out,
        "auditgate_backpressure_waits_total",
        "counter",
        "Audited requests that waited for room in the writer queue.",
        w.backpressure_waits.load(Relaxed),
    );
    write_metric(
        &mut out,
        "auditgate_queue_depth",
        "gauge",
        "Entries waiting for the writer.",
        state.writer.depth() as u64,
    );
    if let Some(signer) = state.log.signer_stats() {
        write_metric(
            &mut out,
            "auditgate_heads_signed_total",
            "counter",
            "Signed tree heads made and stored.",
            signer.heads_signed.get(),
        );
        write_metric(
            &mut out,
            "auditgate_heads_published_total",
            "counter",
            "Signed tree heads delivered to a publish target (one per target).",
            signer.heads_published.get(),
        );
        write_metric(
            &mut out,
            "auditgate_head_publish_failures_total",
            "counter",
            "Failed deliveries of a head to a publish target (retried with the next head).",
            signer.publish_failures.get(),
        );
        write_metric(
            &mut out,
            "auditgate_head_publish_dropped_total",
            "counter",
            "Heads given up on for a target that kept failing.",
            signer.publish_dropped.get(),
        );
        write_metric(
            &mut out,
            "auditgate_head_sign_failures_total",
            "counter",
            "Tree heads that could not be made or stored.",
            signer.sign_failures.get(),
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
