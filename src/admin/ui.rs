//! The web viewer's static files, embedded in the binary and served as they are.
//!
//! `GET /` is the page; `GET /ui/<file>` its scripts, style and icon. No build step: the files in
//! `src/admin/ui/` are the shipped files. Every response carries a strict Content-Security-Policy
//! (the page has no inline script or style and talks only to its own origin).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// (name, content type, bytes) of every served file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/api.js"),
    ),
    (
        "filters.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/filters.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/charts.js"),
    ),
    (
        "detail.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/detail.js"),
    ),
    (
        "proof.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/proof.js"),
    ),
    (
        "coverage.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/coverage.js"),
    ),
    (
        "integrity.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/integrity.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/dom.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("ui/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("ui/index.html");

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { file_response("text/html; charset=utf-8", INDEX) }),
        )
        .route("/ui/{file}", get(ui_file))
}

async fn ui_file(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => file_response(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

fn file_response(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
