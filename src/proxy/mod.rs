//! The hyper service: forward each request to the app, capture what the rules need, and finish
//! the entry when the response body ends or the client goes away.
//!
//! [`handle`] runs one request through the phases pingora names (`pingora-proxy`'s `ProxyHttp`),
//! each a method of the request's flow (`flow.rs`):
//!
//! - request filter: refusals, the canonical view, the method the app runs, the candidate rules,
//!   back-pressure, and the [`Exchange`] with its actor when the exchange may be recorded
//!   (`request_filter.rs`, `exchange.rs`);
//! - request body filter: the body buffered only when a rule or an actor source reads it
//!   (`body.rs`, `capture.rs`), then write-ahead when a rule asks for it;
//! - upstream request: hop-by-hop headers removed, forwarding headers added (`upstream.rs`);
//! - response filter: the status decides the rule;
//! - response body filter: the response body teed into the exchange when a rule reads it, by
//!   [`ResponseBody`];
//! - logging: when the response body ends (or the client goes away) the entry is finished and
//!   pushed to the writer (`logging.rs`).
//!
//! Any phase may answer the request itself instead of the app; the exchange records why.

mod body;
mod capture;
pub mod config;
mod exchange;
mod flow;
mod logging;
mod pool;
mod request_filter;
mod upstream;

pub use body::{BoxError, ClientBodyError, RequestBody, ResponseBody};
pub use exchange::{Exchange, ExchangeStart};
pub(crate) use request_filter::screen_head;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::config::ProxyConfig;
use crate::store::config::{Durability, StoreConfig, StoreFailure};
use crate::writer::WriterHandle;

use flow::Flow;

/// Everything the proxy shares across requests.
pub struct ProxyState {
    policy: RwLock<Arc<Policy>>,
    pub config: ProxyConfig,
    pub log_id: String,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    /// Connections to the app.
    pool: pool::Pool<RequestBody>,
    upstream_authority: http::uri::Authority,
    /// Whether exchanges are made durable before forwarding unless a rule says otherwise.
    write_ahead_default: bool,
    on_store_failure: StoreFailure,
}

impl ProxyState {
    pub fn new(
        config: ProxyConfig,
        policy: Arc<Policy>,
        log_id: String,
        writer: WriterHandle,
        metrics: Arc<Metrics>,
    ) -> Result<ProxyState, String> {
        let upstream_authority: http::uri::Authority = config
            .upstream
            .parse()
            .map_err(|_| format!("upstream `{}` is not host:port", config.upstream))?;
        let pool = pool::Pool::new(
            &upstream_authority,
            config.connect_timeout,
            config.idle_timeout,
        );
        // Key sets fetched from URLs are kept fresh while this state serves with them.
        policy.actors.start_key_refresh(&metrics.jwks);
        Ok(ProxyState {
            policy: RwLock::new(policy),
            config,
            log_id,
            writer,
            metrics,
            pool,
            upstream_authority,
            write_ahead_default: false,
            on_store_failure: StoreFailure::Reject,
        })
    }

    /// Applies the store's durability mode and failure policy.
    pub fn with_durability(mut self, store: &StoreConfig) -> ProxyState {
        self.write_ahead_default = store.durability == Durability::WriteAhead;
        self.on_store_failure = store.on_store_failure;
        self
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps the rules and actor sources whole (SIGHUP reload); requests in flight keep the
    /// policy they started with.
    pub fn replace_policy(&self, policy: Arc<Policy>) {
        // Fetched key sets carry over (no window of "not loaded yet"), then refresh on their own.
        policy.actors.take_over_keys(&self.policy().actors);
        policy.actors.start_key_refresh(&self.metrics.jwks);
        match self.policy.write() {
            Ok(mut current) => *current = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }
}

/// [`handle`], counted in `/metrics` by method, status class and whether a rule matched, with the
/// time to the response head.
pub async fn handle_counted(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let metrics = state.metrics.clone();
    let response = handle(state, peer, request).await;
    if let Ok(response) = &response {
        let exchanges = &metrics.exchanges;
        exchanges.record(
            &method,
            Some(response.status().as_u16()),
            response.body().rule_matched(),
        );
        exchanges.duration.observe(started.elapsed().as_secs_f64());
    }
    response
}

/// Serves one request: each phase either passes the request on or answers it itself.
pub async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut flow = Flow::start(state, peer, &request);
    let app_response = async {
        let (parts, body) = flow.request_filter(request).await?;
        let body = flow.request_body_filter(&parts, body).await?;
        flow.write_ahead().await?;
        let upstream_request = flow.upstream_request(parts, body);
        flow.upstream_response(upstream_request).await
    }
    .await;
    Ok(match app_response {
        // The response body filter and logging run as the response body streams to the client.
        Ok(response) => flow.response_filter(response),
        Err(answer) => flow.answer(answer),
    })
}
