//! The hyper service: forward each request to the app, capture what the rules need, and finish
//! the entry when the response body ends or the client goes away.
//!
//! Per-request state travels with the request in [`Exchange`], built when the head arrives and
//! finished by [`ResponseBody`] when its last frame is sent (or when it is dropped early). The
//! phases are: request filter (rule candidates, actor, client address, back-pressure), upstream
//! request (hop-by-hop headers removed, forwarding headers added, body buffered only when a rule
//! reads it), response filter (the status decides the rule), body filter (tee of the response body
//! when a rule reads it), logging (the entry is pushed to the writer).

pub mod config;

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;

use crate::store::config::{Durability, StoreConfig, StoreFailure};

use crate::policy::Policy;

use crate::entry::{AuditEntry, Outcome};
use crate::identity::actor::{Actor, ActorRequest, PendingActor};
use crate::identity::client_ip;
use crate::metrics::Metrics;
use crate::policy::redact::Redactor;
use crate::policy::rules::{Decision, RequestView, RuleKind};
use crate::policy::template::{self, Needs};
use crate::proxy::config::ProxyConfig;
use crate::request::FormBody;
use crate::writer::WriterHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest accepted incoming X-Request-Id; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Everything the proxy shares across requests.
pub struct ProxyState {
    policy: RwLock<Arc<Policy>>,
    pub config: ProxyConfig,
    pub log_id: String,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    client: Client<HttpConnector, RequestBody>,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let upstream_authority = config
            .upstream
            .parse()
            .map_err(|_| format!("upstream `{}` is not host:port", config.upstream))?;
        // Key sets fetched from URLs are kept fresh while this state serves with them.
        policy.actors.start_key_refresh(&metrics.jwks);
        Ok(ProxyState {
            policy: RwLock::new(policy),
            config,
            log_id,
            writer,
            metrics,
            client,
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

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// The body sent to the app: the client's stream as is, or — when a rule reads it — buffered
/// up to the capture limit (and then the rest streamed after the buffered part).
pub enum RequestBody {
    Streamed(Incoming),
    Buffered(Full<Bytes>),
    Prefixed {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Streamed(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|error| ClientBodyError(error).into()),
            RequestBody::Buffered(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            RequestBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest)
                    .poll_frame(cx)
                    .map_err(|error| ClientBodyError(error).into()),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(incoming) => incoming.is_end_stream(),
            RequestBody::Buffered(full) => full.is_end_stream(),
            RequestBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streamed(incoming) => incoming.size_hint(),
            RequestBody::Buffered(full) => full.size_hint(),
            RequestBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map(|bytes| bytes.len() as u64).unwrap_or(0);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's request body broke while it was being forwarded: bad chunked framing (a bare LF,
/// a chunk size past 2^64), or the client went away mid-body. Kept as its own type so the proxy
/// can tell this failure, which is the client's, from the app's (400, not 502).
#[derive(Debug, thiserror::Error)]
#[error("the request body from the client is broken: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

/// The [`ClientBodyError`] behind an upstream client error, if that is what it was.
fn client_body_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(found) = cause.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        current = cause.source();
    }
    None
}

enum ResponseInner {
    Upstream(Incoming),
    Full(Full<Bytes>),
}

/// The body sent to the client. When the exchange is audited it carries the exchange and
/// finishes its entry on the last frame, on an error, or when dropped early (client gone).
pub struct ResponseBody {
    inner: ResponseInner,
    exchange: Option<Box<Exchange>>,
}

impl ResponseBody {
    fn full(bytes: impl Into<Bytes>, exchange: Option<Box<Exchange>>) -> ResponseBody {
        ResponseBody {
            inner: ResponseInner::Full(Full::new(bytes.into())),
            exchange,
        }
    }

    fn finish(&mut self, completion: Completion) {
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(completion);
        }
    }

    /// Whether a rule (not the `[unmatched]` fallback) decided this exchange's entry.
    pub fn rule_matched(&self) -> bool {
        self.exchange
            .as_ref()
            .is_some_and(|exchange| matches!(exchange.decision, Decision::Rule(_)))
    }
}

/// The first credential query parameter of the actor sources that the query holds more than once.
fn repeated_secret_parameter(policy: &Policy, query: &str) -> Option<String> {
    policy
        .actors
        .secret_query_parameters()
        .into_iter()
        .find(|secret| {
            form_urlencoded::parse(query.as_bytes())
                .filter(|(name, _)| name == secret.as_str())
                .nth(1)
                .is_some()
        })
}

/// Whether a method is one of HTTP's standard ones spelled in another case (`delete`, `Get`).
fn method_in_other_case(method: &Method) -> bool {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let sent = method.as_str();
    STANDARD
        .iter()
        .any(|standard| *standard != sent && standard.eq_ignore_ascii_case(sent))
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

enum Completion {
    Complete,
    UpstreamBodyError(String),
    ClientGone,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            ResponseInner::Upstream(incoming) => {
                Pin::new(incoming).poll_frame(cx).map_err(BoxError::from)
            }
            ResponseInner::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(exchange), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                    exchange.response_capture.push(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(Completion::UpstreamBodyError(error.to_string()));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finish(Completion::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Upstream(incoming) => incoming.is_end_stream(),
            ResponseInner::Full(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Upstream(incoming) => incoming.size_hint(),
            ResponseInner::Full(full) => full.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper does not poll a body it already knows is empty (HEAD, 204, 304, Content-Length: 0),
        // so "ended" is judged here too.
        let completion = if self.is_end_stream() {
            Completion::Complete
        } else {
            Completion::ClientGone
        };
        self.finish(completion);
    }
}

// ---------------------------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------------------------

/// A body captured for `*.body:` values, bounded by `max_body_capture`.
#[derive(Default)]
struct Capture {
    active: bool,
    limit: usize,
    bytes: BytesMut,
    overflow: bool,
    /// Why the body is not available, when it is not.
    unavailable: Option<&'static str>,
}

impl Capture {
    fn off(reason: &'static str) -> Capture {
        Capture {
            unavailable: Some(reason),
            ..Capture::default()
        }
    }

    fn on(limit: usize) -> Capture {
        Capture {
            active: true,
            limit,
            ..Capture::default()
        }
    }

    fn push(&mut self, data: &Bytes) {
        if !self.active || self.overflow {
            return;
        }
        if self.bytes.len() + data.len() > self.limit {
            self.overflow = true;
            self.bytes = BytesMut::new();
        } else {
            self.bytes.extend_from_slice(data);
        }
    }

    /// The captured bytes as sent, when the whole body was captured without a content coding
    /// (a method-override form field is read from them); otherwise why not.
    fn readable_bytes(&self, headers: &HeaderMap) -> Result<&[u8], &'static str> {
        if let Some(reason) = self.unavailable {
            return Err(reason);
        }
        if self.overflow {
            return Err("was larger than max_body_capture");
        }
        let coded = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                !value.trim().is_empty() && !value.trim().eq_ignore_ascii_case("identity")
            });
        if coded {
            return Err("has a content coding");
        }
        Ok(&self.bytes)
    }

    /// Parses the captured bytes as JSON, decoding gzip/deflate first; anything else is reported
    /// as not captured rather than mis-parsed.
    fn parse(&self, encoding: Option<&str>, limit: usize) -> Result<Value, String> {
        if let Some(reason) = self.unavailable {
            return Err(reason.to_string());
        }
        if self.overflow {
            return Err("was larger than max_body_capture".to_string());
        }
        let decoded;
        let bytes: &[u8] = match encoding.map(|e| e.trim().to_ascii_lowercase()) {
            None => &self.bytes,
            Some(encoding) if encoding.is_empty() || encoding == "identity" => &self.bytes,
            Some(encoding)
                if encoding == "gzip" || encoding == "x-gzip" || encoding == "deflate" =>
            {
                let mut out = Vec::new();
                let reader: Box<dyn Read> = if encoding == "deflate" {
                    Box::new(flate2::read::ZlibDecoder::new(&self.bytes[..]))
                } else {
                    Box::new(flate2::read::MultiGzDecoder::new(&self.bytes[..]))
                };
                // Bounded: a small compressed body must not inflate past the capture limit.
                let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
                match read {
                    Ok(_) if out.len() <= limit => {}
                    Ok(_) => {
                        return Err("was larger than max_body_capture once decompressed".to_string())
                    }
                    Err(_) => return Err(format!("is not valid {encoding}")),
                }
                decoded = out;
                &decoded
            }
            Some(encoding) => return Err(format!("is {encoding}-encoded, which is not decoded")),
        };
        if bytes.is_empty() {
            return Err("is empty".to_string());
        }
        serde_json::from_slice(bytes).map_err(|_| "is not JSON".to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// The exchange: per-request audit state
// ---------------------------------------------------------------------------------------------

/// Everything needed to finish one entry, gathered along the way.
pub struct Exchange {
    policy: Arc<Policy>,
    /// Where the finished entry goes; `None` for `auditgate explain`, which only prints it.
    sink: Option<(WriterHandle, Arc<Metrics>)>,
    entry: AuditEntry,
    /// The method the app runs (a POST's honoured override, else the request's).
    method: Method,
    /// The method on the wire, when an override changed it.
    sent_method: Option<Method>,
    /// The canonical path, as matched and forwarded.
    path: String,
    raw_query: Option<String>,
    /// Record the exchange even when no rule or `[unmatched]` would (refusals, upgrades).
    record_always: bool,
    candidates: Vec<usize>,
    decision: Decision,
    /// The actor as far as the request head tells; body sources finish it with the entry.
    actor: Option<PendingActor>,
    /// Whether this exchange is explained (`auditgate explain`) rather than proxied.
    explain: bool,
    request_headers: Option<HeaderMap>,
    response_headers: Option<HeaderMap>,
    request_capture: Capture,
    request_encoding: Option<String>,
    response_capture: Capture,
    response_encoding: Option<String>,
    capture_limit: usize,
    started: Instant,
    /// Set when the entry is final before the body (upgrades, proxy errors).
    error: Option<String>,
    /// Whether a write-ahead intent of this exchange is in the store.
    intent_recorded: bool,
    /// What the app said about the exchange in `Audit-*` response headers.
    hints: Option<crate::policy::hints::Hints>,
}

/// The read side of an exchange for templates, with parsed bodies.
struct TemplateContext<'a> {
    exchange: &'a Exchange,
    params: Vec<(String, String)>,
    query: Option<Vec<(String, String)>>,
    request_body: Result<Value, String>,
    response_body: Result<Value, String>,
}

impl template::Context for TemplateContext<'_> {
    fn path_param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn query(&self, name: &str) -> Option<String> {
        self.query
            .as_ref()?
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    fn request_header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        let value = self.exchange.request_headers.as_ref()?.get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()))
    }

    fn response_header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        let value = self.exchange.response_headers.as_ref()?.get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()))
    }

    fn request_body(&self) -> Result<&Value, &str> {
        self.request_body.as_ref().map_err(String::as_str)
    }

    fn response_body(&self) -> Result<&Value, &str> {
        self.response_body.as_ref().map_err(String::as_str)
    }
}

/// What [`Exchange::begin`] needs from the request head.
pub struct ExchangeStart<'a> {
    pub policy: Arc<Policy>,
    pub log_id: &'a str,
    /// The method the app runs (see [`crate::request::MethodView`]).
    pub method: &'a Method,
    /// The method on the wire, when an override changed it.
    pub sent_method: Option<&'a Method>,
    /// The request target with its canonical path.
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub client: std::net::IpAddr,
    pub peer_trusted: bool,
    pub request_id: Option<&'a str>,
    pub candidates: Vec<usize>,
    pub needs: Needs,
    pub capture_limit: usize,
    pub started: Instant,
    /// Collect how the actor was derived (for `auditgate explain`).
    pub explain: bool,
    /// What auditgate noted about the request (`_pathSent`, `_methodOverride`,
    /// `_clientRequestId`, `_upgrade`), merged into the entry's metadata.
    pub notes: serde_json::Map<String, Value>,
    /// Record the exchange even when no rule or `[unmatched]` would.
    pub record_always: bool,
}

impl Exchange {
    /// Starts an exchange from the request head: the request-side fields and the actor.
    pub fn begin(start: ExchangeStart) -> Box<Exchange> {
        let headers = start.headers;
        let mut entry = AuditEntry::new(start.log_id, "");
        entry.created_at = Utc::now();
        entry.method = Some(start.method.as_str().to_string());
        entry.path = Some(String::from_utf8_lossy(start.uri.path().as_bytes()).into_owned());
        entry.ip = Some(start.client.to_string());
        entry.user_agent = header_text(headers, &header::USER_AGENT);
        entry.request_id = start.request_id.map(str::to_string);
        entry.metadata.extend(start.notes);
        let actor = (!start.policy.actors.is_empty()).then(|| {
            start.policy.actors.resolve_head(&ActorRequest {
                headers,
                query: start.uri.query(),
                path: start.uri.path(),
                peer_trusted: start.peer_trusted,
                explain: start.explain,
            })
        });
        Box::new(Exchange {
            policy: start.policy,
            sink: None,
            entry,
            method: start.method.clone(),
            sent_method: start.sent_method.cloned(),
            path: start.uri.path().to_string(),
            raw_query: start.uri.query().map(str::to_string),
            record_always: start.record_always,
            candidates: start.candidates,
            decision: Decision::Nothing,
            actor,
            explain: start.explain,
            request_headers: start.needs.request_headers.then(|| headers.clone()),
            response_headers: None,
            request_capture: Capture::off("was not captured"),
            request_encoding: header_text(headers, &header::CONTENT_ENCODING),
            response_capture: Capture::off("was not captured"),
            response_encoding: None,
            capture_limit: start.capture_limit,
            started: start.started,
            error: None,
            intent_recorded: false,
            hints: None,
        })
    }

    /// The entry as known before forwarding, for write-ahead: the first recording candidate's
    /// values from the request alone (response-derived values are recorded as not seen yet).
    pub fn intent_entry(&self) -> AuditEntry {
        let rules = &self.policy.rules;
        let mut entry = self.entry.clone();
        entry.outcome = Outcome::Unknown;
        let request_body = self
            .request_capture
            .parse(self.request_encoding.as_deref(), self.capture_limit);
        if let Some(pending) = self.actor.clone() {
            let body = request_body.as_ref().map_err(String::as_str);
            apply_actor(&mut entry, pending.finish(&self.policy.actors, body));
        }
        let first = self
            .candidates
            .iter()
            .copied()
            .find(|&index| matches!(rules.rule(index).kind, RuleKind::Record(_)));
        match first {
            Some(index) => {
                let rule = rules.rule(index);
                entry.rule = Some(rule.name.clone());
                entry.route = rule.route().map(str::to_string);
                if let RuleKind::Record(spec) = &rule.kind {
                    let context = TemplateContext {
                        exchange: self,
                        params: rule.path_params(&self.path),
                        query: self.raw_query.as_ref().map(|query| {
                            form_urlencoded::parse(query.as_bytes())
                                .into_owned()
                                .collect()
                        }),
                        request_body: if rule.needs.request_body {
                            request_body.clone()
                        } else {
                            Err("was not captured".to_string())
                        },
                        response_body: Err("was not seen yet".to_string()),
                    };
                    fill_from_rule(&mut entry, spec, &context, &self.policy.redact);
                }
            }
            None => entry.action = format!("http.{}", self.method.as_str().to_ascii_lowercase()),
        }
        entry
    }

    /// Records what the app answered and decides which rule the exchange falls under.
    pub fn set_response(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        declared_length: Option<u64>,
    ) -> Needs {
        self.entry.status = Some(status);
        self.decision = self
            .policy
            .rules
            .decide(&self.candidates, self.recording_method(), status);
        if self.decision == Decision::Nothing && self.record_always {
            self.decision = Decision::Unmatched;
        }
        let Decision::Rule(index) = self.decision else {
            return Needs::default();
        };
        let needs = self.policy.rules.rule(index).needs;
        if needs.response_headers {
            self.response_headers = Some(headers.clone());
        }
        if needs.response_body {
            let too_large =
                declared_length.is_some_and(|length| length > self.capture_limit as u64);
            self.response_capture = if too_large {
                Capture::off("was larger than max_body_capture")
            } else {
                Capture::on(self.capture_limit)
            };
            self.response_encoding = header_text(headers, &header::CONTENT_ENCODING);
        }
        needs
    }

    /// Records a request the proxy answered itself (the app unreachable, a broken request).
    pub(crate) fn set_proxy_answer(&mut self, status: u16, error: String) {
        self.entry.status = Some(status);
        self.error = Some(error);
        self.decision =
            self.policy
                .rules
                .decide_unreachable(&self.candidates, self.recording_method(), status);
        if self.decision == Decision::Nothing && self.record_always {
            self.decision = Decision::Unmatched;
        }
    }

    /// The method `[unmatched]` judges the exchange by: the one the app runs, unless only the
    /// method sent would be recorded (a POST overridden to GET is still recorded as a mutation,
    /// in case the app did not honour the override).
    fn recording_method(&self) -> &Method {
        match &self.sent_method {
            Some(sent)
                if !self.policy.rules.unmatched_records(&self.method)
                    && self.policy.rules.unmatched_records(sent) =>
            {
                sent
            }
            _ => &self.method,
        }
    }

    /// Gives the exchange a request body that was read whole (for `auditgate explain`).
    pub fn set_request_body(&mut self, body: Bytes) {
        let mut capture = Capture::on(self.capture_limit);
        capture.push(&body);
        self.request_capture = capture;
    }

    /// Gives the exchange a response body that was read whole (for `auditgate explain`).
    pub fn set_response_body(&mut self, body: Bytes) {
        if self.response_capture.active {
            self.response_capture.push(&body);
        }
    }

    /// The decision taken at the response.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// Whether the request body must be captured for the actor (a `body` actor source that
    /// the head sources did not pre-empt).
    pub fn actor_needs_request_body(&self) -> bool {
        self.actor.as_ref().is_some_and(PendingActor::needs_body)
    }

    fn finish(self: Box<Self>, completion: Completion) {
        let sink = self.sink.clone();
        let id = self.entry.id.clone();
        let completes_intent = self.intent_recorded;
        let entry = self.into_entry(completion);
        let Some((writer, metrics)) = sink else {
            return;
        };
        match (entry, completes_intent) {
            (Some(entry), true) => {
                metrics.entries_produced.inc();
                writer.push_completing(entry);
            }
            (Some(entry), false) => {
                metrics.entries_produced.inc();
                writer.push(entry);
            }
            // The status sent the exchange to "record nothing" (no rule for it, unmatched traffic
            // not recorded): its intent is withdrawn rather than left to become an `unknown` entry.
            (None, true) => writer.withdraw_intent(id),
            (None, false) => {}
        }
    }

    /// The finished entry, or `None` when the decision is to record nothing.
    pub fn into_entry_complete(self: Box<Self>) -> Option<AuditEntry> {
        self.into_entry(Completion::Complete)
    }

    /// The finished entry (as [`Exchange::into_entry_complete`]) and how its actor was derived,
    /// step by step, for `auditgate explain`.
    pub fn into_explanation(self: Box<Self>) -> (Option<AuditEntry>, Vec<String>) {
        self.into_entry_traced(Completion::Complete)
    }

    fn into_entry(self: Box<Self>, completion: Completion) -> Option<AuditEntry> {
        self.into_entry_traced(completion).0
    }

    fn into_entry_traced(
        mut self: Box<Self>,
        completion: Completion,
    ) -> (Option<AuditEntry>, Vec<String>) {
        // Nothing to record: skip the work, unless explaining or the app named an action.
        let hinted = self
            .hints
            .as_ref()
            .is_some_and(|hints| hints.action.is_some());
        if self.decision == Decision::Nothing && !self.explain && !hinted {
            return (None, Vec::new());
        }
        let status = self.entry.status;
        match completion {
            Completion::Complete => {}
            Completion::UpstreamBodyError(error) => {
                self.error
                    .get_or_insert(format!("the app's response body failed: {error}"));
            }
            Completion::ClientGone => {
                self.error.get_or_insert_with(|| {
                    "the client went away before the response was complete".to_string()
                });
            }
        }
        let policy = self.policy.clone();
        let rules = &policy.rules;
        let mut entry = std::mem::replace(&mut self.entry, AuditEntry::new("", ""));
        entry.duration_us = Some(self.started.elapsed().as_micros() as u64);
        entry.error = self.error.take();
        entry.outcome = match (status, &entry.error) {
            (Some(status), _) => Outcome::from_status(status),
            (None, _) => Outcome::Error,
        };
        // The request body is parsed once, for the rule's values and the actor's body sources.
        let rule_reads_body = match self.decision {
            Decision::Rule(index) => rules.rule(index).needs.request_body,
            _ => false,
        };
        let mut request_body = Err("was not captured".to_string());
        if rule_reads_body || self.actor_needs_request_body() {
            request_body = self
                .request_capture
                .parse(self.request_encoding.as_deref(), self.capture_limit);
        }
        let mut derivation = Vec::new();
        if let Some(pending) = self.actor.take() {
            let body = request_body.as_ref().map_err(String::as_str);
            let actor = pending.finish(&policy.actors, body);
            derivation = apply_actor(&mut entry, actor);
        }
        let hints = self.hints.take();
        let hinted_action = hints.as_ref().is_some_and(|hints| hints.action.is_some());
        let from_rule = matches!(self.decision, Decision::Rule(_));
        match self.decision {
            // A response that names its own action is recorded even when no rule wants it.
            Decision::Nothing if hinted_action => {}
            Decision::Nothing => return (None, derivation),
            Decision::Unmatched => {
                entry.action = format!("http.{}", self.method.as_str().to_ascii_lowercase());
            }
            Decision::Rule(index) => {
                let rule = rules.rule(index);
                entry.rule = Some(rule.name.clone());
                entry.route = rule.route().map(str::to_string);
                if let RuleKind::Record(spec) = &rule.kind {
                    let context = TemplateContext {
                        exchange: &self,
                        params: rule.path_params(&self.path),
                        query: self.raw_query.as_ref().map(|query| {
                            form_urlencoded::parse(query.as_bytes())
                                .into_owned()
                                .collect()
                        }),
                        request_body,
                        response_body: if rule.needs.response_body {
                            self.response_capture
                                .parse(self.response_encoding.as_deref(), self.capture_limit)
                        } else {
                            Err("was not captured".to_string())
                        },
                    };
                    if fill_from_rule(&mut entry, spec, &context, &policy.redact) {
                        derivation.push(format!(
                            "rule {:?}: actor fields taken from the exchange (`actor = {{ ... }}`); actorSource \"rule\", unverified",
                            rule.name
                        ));
                    }
                }
            }
        }
        if let Some(hints) = hints {
            crate::policy::hints::apply(
                &mut entry,
                hints,
                self.policy.hints.override_rules,
                from_rule,
            );
        }
        (Some(entry), derivation)
    }

    /// Records the hints the app's response carried.
    pub fn set_hints(&mut self, hints: Option<crate::policy::hints::Hints>) {
        self.hints = hints;
    }
}

/// Writes the resolved actor into the entry; returns how it was derived.
fn apply_actor(entry: &mut AuditEntry, actor: Actor) -> Vec<String> {
    if let Some(extra) = actor.metadata() {
        entry.metadata.insert("_actor".to_string(), extra);
    }
    entry.actor_id = actor.id;
    entry.actor_email = actor.email;
    entry.actor_name = actor.name;
    if actor.tenant.is_some() {
        entry.tenant = actor.tenant;
    }
    entry.actor_source = actor.source.map(str::to_string);
    entry.actor_verified = actor.verified;
    actor.derivation
}

/// Evaluates a rule's templates into the entry; a value that cannot be had is left empty and
/// the reason recorded under `_missing`, so an auditor sees why a field is blank. Every value
/// passes through the redactor on its way in. Returns whether the rule set the actor.
fn fill_from_rule(
    entry: &mut AuditEntry,
    spec: &crate::policy::rules::RecordSpec,
    context: &dyn template::Context,
    redact: &Redactor,
) -> bool {
    let filter = |source: &template::Source, value: Value| redact.source_value(source, value);
    let mut missing = serde_json::Map::new();
    let mut text = |key: &str, template: &template::Template| match template
        .evaluate_text_filtered(context, &filter)
    {
        Ok(value) => Some(value),
        Err(why) => {
            missing.insert(key.to_string(), Value::from(why));
            None
        }
    };
    match text("action", &spec.action) {
        Some(action) if crate::entry::is_reserved_action(&action) => {
            // A template that rendered into auditgate's own namespace (`{section}.x` with a
            // path segment `audit`): the app's entry keeps a name that cannot pass for one of
            // auditgate's, and the rendered text stays visible to an auditor.
            entry.action = format!("{}{action}", crate::entry::RENAMED_ACTION_PREFIX);
            entry.metadata.insert(
                "_actionRenamed".to_string(),
                serde_json::json!({
                    "from": action,
                    "reason": "actions starting with audit. are reserved for auditgate's own entries",
                }),
            );
        }
        Some(action) if !action.is_empty() => entry.action = action,
        _ => entry.action = "unknown".to_string(),
    }
    if let Some(activity) = spec.ocsf_activity {
        entry.metadata.insert(
            crate::entry::ocsf::ACTIVITY_METADATA_KEY.to_string(),
            Value::from(activity.as_str()),
        );
    }
    if let Some(template) = &spec.resource_type {
        entry.resource_type = text("resourceType", template);
    }
    if let Some(template) = &spec.resource_id {
        entry.resource_id = text("resourceId", template);
    }
    if let Some(template) = &spec.tenant {
        if let Some(tenant) = text("tenant", template) {
            entry.tenant = Some(tenant);
        }
    }
    let mut actor_from_rule = false;
    if let Some(template) = &spec.actor_id {
        if let Some(id) = text("actorId", template) {
            entry.actor_id = Some(id);
            actor_from_rule = true;
        }
    }
    if let Some(template) = &spec.actor_email {
        if let Some(email) = text("actorEmail", template) {
            entry.actor_email = Some(email);
            actor_from_rule = true;
        }
    }
    if let Some(template) = &spec.actor_name {
        if let Some(name) = text("actorName", template) {
            entry.actor_name = Some(name);
            actor_from_rule = true;
        }
    }
    if actor_from_rule {
        // The identity now comes from what the request claimed, which proves nothing.
        entry.actor_source = Some("rule".to_string());
        entry.actor_verified = false;
    }
    for (key, template) in &spec.metadata {
        match redact.metadata_value(key, template, context) {
            Ok(value) => {
                entry.metadata.insert(key.clone(), value);
            }
            Err(why) => {
                entry.metadata.insert(key.clone(), Value::Null);
                missing.insert(key.clone(), Value::from(why));
            }
        }
    }
    if !missing.is_empty() {
        entry
            .metadata
            .insert("_missing".to_string(), Value::Object(missing));
    }
    actor_from_rule
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// Hop-by-hop headers (RFC 9110 section 7.6.1), removed in both directions.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// A request the proxy answers itself, before the app sees it; always recorded.
struct Refusal {
    status: StatusCode,
    /// The short text the client gets.
    text: &'static str,
    /// The entry's `error`.
    detail: String,
}

impl Refusal {
    fn bad_request(text: &'static str, detail: String) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            text,
            detail,
        }
    }

    fn broken_body(detail: String) -> Refusal {
        Refusal::bad_request("bad request body", detail)
    }
}

/// The request target with its path made canonical, or `None` when it is canonical already
/// (no allocation then); an error says why the path cannot be made canonical.
fn canonical_target(
    canonical: &crate::request::CanonicalConfig,
    uri: &Uri,
) -> Result<Option<Uri>, String> {
    let path = match canonical.path(uri.path()) {
        Ok(Cow::Borrowed(_)) => return Ok(None),
        Ok(Cow::Owned(path)) => path,
        Err(error) => return Err(format!("refused: {error}")),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|error| format!("refused: the canonical path is not a target: {error}"))?,
    );
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|error| format!("refused: the canonical path is not a target: {error}"))
}

/// Whether an Upgrade header offers this protocol (any case, any version suffix).
pub(crate) fn upgrade_names(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offer| {
            let name = offer.trim().split('/').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case(protocol)
        })
}

fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether the request's Transfer-Encoding is one the proxy forwards faithfully: none, or exactly
/// one `chunked`. hyper has already refused lists whose last coding is not `chunked` and
/// HTTP/1.0 requests with any; this refuses `identity, chunked`, `gzip, chunked`,
/// `chunked, chunked` and repeated headers, which hyper would take as plain `chunked`. One map
/// lookup on the hot path.
fn transfer_encoding_acceptable(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Marks a refusal so that the connection closes after it: after a framing error what follows
/// on the connection cannot be trusted to start a request. (HTTP/1 only; HTTP/2 frames requests
/// itself and forbids the header.)
fn closing(
    mut response: Response<ResponseBody>,
    client_version: Version,
) -> Response<ResponseBody> {
    if client_version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Text of a header for recording: lossy UTF-8 so hostile bytes are kept faithfully but safely.
fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

fn plain_response(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
    exchange: Option<Box<Exchange>>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(format!("{message}\n"), exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

/// Serves one request.
pub async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    state.metrics.requests.inc();
    let policy = state.policy();
    let sent_method = request.method().clone();
    let client_version = request.version();

    // The entry's request id is always auditgate's own; a client's X-Request-Id is noted apart,
    // so a client can never choose the id an auditor looks an exchange up by.
    let request_id = HeaderValue::from_str(&ulid::Ulid::new().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    let client_request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|value| valid_request_id(value))
        .cloned();
    let mut notes = serde_json::Map::new();
    if let Some(id) = client_request_id.as_ref().and_then(|id| id.to_str().ok()) {
        notes.insert("_clientRequestId".to_string(), Value::from(id));
    }

    // The canonical view, before any rule sees the request: the path is rewritten in place, so
    // the rules, the actor sources, the entry and the app all see the same canonical path.
    let mut refusal: Option<Refusal> = None;
    // A target with no path (the authority form of a DELETE) reaches the app as `/` while the
    // rules would see an empty path; `*` is only OPTIONS's and an empty path only CONNECT's.
    let path = request.uri().path();
    let target_is_a_path = path.starts_with('/')
        || (path == "*" && sent_method == Method::OPTIONS)
        || (path.is_empty() && sent_method == Method::CONNECT);
    if !target_is_a_path {
        refusal = Some(Refusal::bad_request(
            "bad request target",
            format!("refused: the request target of a {sent_method} is not a path"),
        ));
    }
    // A standard method in another case (`delete`) is run as DELETE by app servers that fold
    // method case (Django, Werkzeug), while the rules would see an unknown method.
    if refusal.is_none() && method_in_other_case(&sent_method) {
        refusal = Some(Refusal::bad_request(
            "bad request method",
            format!("refused: the method {sent_method} is a standard method in another case"),
        ));
    }
    // Two Host headers: the rules would read one and the app may read the other.
    if refusal.is_none() && request.headers().get_all(header::HOST).iter().count() > 1 {
        refusal = Some(Refusal::bad_request(
            "more than one Host header",
            "refused: more than one Host header".to_string(),
        ));
    }
    // A credential sent twice in the query (`?access_token=A&access_token=B`): the actor source
    // reads the first, while many app frameworks (PHP, Rails) read the last.
    if refusal.is_none() {
        if let Some(name) = request
            .uri()
            .query()
            .and_then(|query| repeated_secret_parameter(&policy, query))
        {
            refusal = Some(Refusal::bad_request(
                "a credential parameter is given more than once",
                format!(
                    "refused: the query parameter {name} (a credential) is given more than once"
                ),
            ));
        }
    }
    if refusal.is_none() {
        match canonical_target(&policy.canonical, request.uri()) {
            Ok(None) => {}
            Ok(Some(uri)) => {
                let sent = String::from_utf8_lossy(request.uri().path().as_bytes()).into_owned();
                notes.insert("_pathSent".to_string(), Value::from(sent));
                *request.uri_mut() = uri;
            }
            Err(error) => refusal = Some(Refusal::bad_request("bad request path", error)),
        }
    }
    // An HTTP/2 upgrade would turn the connection into a tunnel whose later requests no rule
    // sees; HTTP/2 is served with prior knowledge instead.
    if refusal.is_none() && upgrade_names(request.headers(), "h2c") {
        refusal = Some(Refusal::bad_request(
            "HTTP/2 upgrade (h2c) is not supported; use HTTP/2 with prior knowledge",
            "refused: an Upgrade to h2c (cleartext HTTP/2) would tunnel requests past the log"
                .to_string(),
        ));
    }

    // Upgrades (WebSocket) keep their Upgrade header and are tunnelled after a 101; the upgrade
    // itself is always an entry, since what flows through the tunnel is not audited.
    let upgrade = refusal.is_none() && wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    if upgrade {
        if let Some(protocol) = header_text(request.headers(), &header::UPGRADE) {
            notes.insert("_upgrade".to_string(), Value::from(protocol));
        }
    }
    let (mut parts, incoming) = request.into_parts();
    let mut incoming = Some(incoming);

    // A POST's `_method` form field needs the body before the rules can be chosen.
    let mut early_body: Option<(RequestBody, Capture)> = None;
    let overrides = &policy.canonical.method_override;
    let reads_form = refusal.is_none()
        && transfer_encoding_acceptable(&parts.headers)
        && overrides.form_field(&sent_method, &parts.headers).is_some();
    if let Some(body) = incoming.take_if(|_| reads_form) {
        match buffer_request_body(body, state.config.max_body_capture, &parts.headers).await {
            Ok(buffered) => early_body = Some(buffered),
            Err(error) => {
                refusal = Some(Refusal::broken_body(format!(
                    "the client went away or sent a broken body while sending the request body: {error}"
                )))
            }
        }
    }
    let form = match &early_body {
        None => FormBody::NotAForm,
        Some((_, capture)) => match capture.readable_bytes(&parts.headers) {
            Ok(bytes) => FormBody::Read(bytes),
            Err(why) => FormBody::Unreadable(why),
        },
    };
    let method_view =
        policy
            .canonical
            .method_view(&sent_method, &parts.headers, parts.uri.query(), form);
    if let Some(note) = method_view.note.clone() {
        notes.insert("_methodOverride".to_string(), note);
    }
    if let (None, Some(reason)) = (&refusal, &method_view.refused) {
        refusal = Some(Refusal::bad_request(
            "conflicting, invalid or unreadable method override",
            format!("refused: {reason}"),
        ));
    }
    let method = method_view.method.clone();
    let overridden_from = method_view.sent.as_ref();

    // A request refused before the rules is matched by none (its path may not even be
    // canonical), and recorded all the same.
    let candidates = if refusal.is_some() {
        Vec::new()
    } else {
        let uri = &parts.uri;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| uri.authority().map(|authority| authority.as_str()));
        let view = RequestView {
            method: &method,
            path: uri.path(),
            query: uri.query(),
            host,
            headers: &parts.headers,
        };
        policy.rules.candidates_for(&view, overridden_from)
    };
    let record_always = refusal.is_some() || upgrade;
    // With hints on, any response may ask to be recorded, so every exchange is followed.
    let audited = record_always
        || policy.rules.may_record(&candidates, &method)
        || overridden_from.is_some_and(|sent| policy.rules.unmatched_records(sent))
        || policy.hints.enabled;

    let trusted = &state.config.trusted_proxies;
    let client_addr = client_ip::resolve(peer.ip(), &parts.headers, trusted);
    let peer_trusted = client_ip::is_trusted(peer.ip(), trusted);

    let needs = if audited {
        policy.rules.needs(&candidates)
    } else {
        Needs::default()
    };
    let mut exchange = if audited {
        state.writer.reserve().await;
        let mut exchange = Exchange::begin(ExchangeStart {
            policy: policy.clone(),
            log_id: &state.log_id,
            method: &method,
            sent_method: overridden_from,
            uri: &parts.uri,
            headers: &parts.headers,
            client: client_addr.client,
            peer_trusted,
            request_id: request_id.to_str().ok(),
            candidates,
            needs,
            capture_limit: state.config.max_body_capture,
            started,
            explain: false,
            notes,
            record_always,
        });
        exchange.sink = Some((state.writer.clone(), state.metrics.clone()));
        Some(exchange)
    } else {
        None
    };

    if let Some(refusal) = refusal {
        tracing::info!(request_id = %request_id.to_str().unwrap_or_default(), method = %sent_method, path = %parts.uri.path(), detail = %refusal.detail, "request refused");
        if let Some(exchange) = exchange.as_mut() {
            exchange.set_proxy_answer(refusal.status.as_u16(), refusal.detail);
        }
        state.metrics.client_errors.inc();
        return Ok(closing(
            plain_response(refusal.status, refusal.text, &request_id, exchange),
            client_version,
        ));
    }

    // hyper frames a request body by its last transfer coding; any other coding in the list would
    // be dropped silently with the hop-by-hop header, and such lists are smuggling probes.
    if !transfer_encoding_acceptable(&parts.headers) {
        if let Some(exchange) = exchange.as_mut() {
            exchange.set_proxy_answer(
                400,
                "refused: a Transfer-Encoding other than a single `chunked`".to_string(),
            );
        }
        state.metrics.client_errors.inc();
        return Ok(closing(
            plain_response(
                StatusCode::BAD_REQUEST,
                "unsupported Transfer-Encoding",
                &request_id,
                exchange,
            ),
            client_version,
        ));
    }

    let read_body = needs.request_body
        || exchange
            .as_ref()
            .is_some_and(|exchange| exchange.actor_needs_request_body());
    let body = match (early_body, incoming) {
        (Some((body, capture)), _) => {
            if let Some(exchange) = exchange.as_mut() {
                exchange.request_capture = capture;
            }
            body
        }
        (None, None) => RequestBody::Empty,
        (None, Some(incoming)) if read_body => {
            match buffer_request_body(incoming, state.config.max_body_capture, &parts.headers).await
            {
                Ok((body, capture)) => {
                    if let Some(exchange) = exchange.as_mut() {
                        exchange.request_capture = capture;
                    }
                    body
                }
                Err(error) => {
                    let message =
                        "the client went away or sent a broken body while sending the request body";
                    if let Some(exchange) = exchange.as_mut() {
                        exchange.set_proxy_answer(400, format!("{message}: {error}"));
                    }
                    state.metrics.client_errors.inc();
                    return Ok(closing(
                        plain_response(
                            StatusCode::BAD_REQUEST,
                            "bad request body",
                            &request_id,
                            exchange,
                        ),
                        client_version,
                    ));
                }
            }
        }
        (None, Some(incoming)) if incoming.is_end_stream() => RequestBody::Empty,
        (None, Some(incoming)) => RequestBody::Streamed(incoming),
    };

    // Write-ahead: the exchange's entry is durable before the app sees the request.
    let mut refuse = false;
    if let Some(exchange) = exchange.as_mut() {
        let mode = policy.rules.write_ahead(
            &exchange.candidates,
            &method,
            state.write_ahead_default,
            state.on_store_failure,
        );
        if let Some(failure) = mode {
            match state.writer.write_ahead(exchange.intent_entry()).await {
                Ok(()) => exchange.intent_recorded = true,
                Err(error) if failure == StoreFailure::Forward => {
                    state.metrics.forwarded_unrecorded.inc();
                    tracing::error!(%error, request_id = ?request_id, "forwarding a write-ahead request whose entry could not be made durable (on_store_failure = forward)");
                }
                Err(error) => {
                    state.metrics.fail_closed.inc();
                    tracing::error!(%error, request_id = ?request_id, "refusing a write-ahead request: its entry could not be made durable");
                    exchange.set_proxy_answer(
                        503,
                        format!(
                            "not forwarded: the audit store could not record the request ({error})"
                        ),
                    );
                    refuse = true;
                }
            }
        }
    }
    if refuse {
        return Ok(plain_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit log unavailable; the request was not forwarded",
            &request_id,
            exchange,
        ));
    }

    // The upstream request: same method, path, query and headers, minus hop-by-hop ones, plus
    // the forwarding headers.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let upstream_uri = Uri::builder()
        .scheme("http")
        .authority(state.upstream_authority.clone())
        .path_and_query(path_and_query)
        .build();
    let upstream_uri = match upstream_uri {
        Ok(uri) => uri,
        Err(_) => {
            if let Some(exchange) = exchange.as_mut() {
                exchange
                    .set_proxy_answer(400, "the request target could not be forwarded".to_string());
            }
            return Ok(plain_response(
                StatusCode::BAD_REQUEST,
                "bad request target",
                &request_id,
                exchange,
            ));
        }
    };
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, value);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers, upgrade);
    // Identity headers an untrusted client set itself, where a header actor asks for it; the
    // exchange has already seen and noted them.
    policy
        .actors
        .strip_untrusted_headers(&mut parts.headers, peer_trusted);
    // Other spellings of forwarding headers (`X_Forwarded_For`), which some apps read as the
    // dashed ones the proxy rebuilds from what it believed.
    client_ip::remove_other_forwarding_spellings(&mut parts.headers);
    // Override headers that are not honoured never reach the app: it could act on a method the
    // log did not follow.
    policy.canonical.method_override.strip(&mut parts.headers);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let forwarded_for = client_addr
        .believed_chain
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    // A Forwarded header is rebuilt the same way: only believed elements reach the app.
    if let Some(forwarded) = &client_addr.forwarded {
        match HeaderValue::from_str(forwarded) {
            Ok(value) => {
                parts.headers.insert(header::FORWARDED, value);
            }
            Err(_) => {
                parts.headers.remove(header::FORWARDED);
            }
        }
    }
    let keep_proto = peer_trusted && parts.headers.contains_key(&X_FORWARDED_PROTO);
    if !keep_proto {
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    // The client's own X-Request-Id stays available to the app under its own name (and only
    // the client's: a client-sent X-Client-Request-Id without one is dropped, so the header
    // always means the same thing).
    match client_request_id {
        Some(id) => {
            parts.headers.insert(X_CLIENT_REQUEST_ID.clone(), id);
        }
        None => {
            parts.headers.remove(&X_CLIENT_REQUEST_ID);
        }
    }
    parts.uri = upstream_uri;
    parts.version = Version::HTTP_11;
    // For the log line of an upstream failure (cheap clones: shared bytes).
    let (logged_method, logged_uri) = (parts.method.clone(), parts.uri.clone());
    let upstream_request = Request::from_parts(parts, body);

    let forwarded = Instant::now();
    let sent = tokio::time::timeout(
        state.config.upstream_timeout,
        state.client.request(upstream_request),
    )
    .await;
    if matches!(sent, Ok(Ok(_))) {
        state
            .metrics
            .exchanges
            .upstream_duration
            .observe(forwarded.elapsed().as_secs_f64());
    }
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            if let Some(body_error) = client_body_error(&error) {
                // The client's body broke on the way (bad chunk framing, a client gone): a
                // client error, and the connection cannot be trusted to be in step any more.
                state.metrics.client_errors.inc();
                if let Some(exchange) = exchange.as_mut() {
                    exchange.set_proxy_answer(400, body_error.to_string());
                }
                return Ok(closing(
                    plain_response(
                        StatusCode::BAD_REQUEST,
                        "bad request body",
                        &request_id,
                        exchange,
                    ),
                    client_version,
                ));
            }
            state.metrics.upstream_errors.inc();
            let detail = describe_client_error(&error);
            return Ok(proxy_error(
                StatusCode::BAD_GATEWAY,
                &detail,
                &request_id,
                (&logged_method, &logged_uri),
                exchange,
            ));
        }
        Err(_) => {
            state.metrics.upstream_errors.inc();
            let detail = format!(
                "the app did not answer within {}",
                humanize(state.config.upstream_timeout)
            );
            return Ok(proxy_error(
                StatusCode::GATEWAY_TIMEOUT,
                &detail,
                &request_id,
                (&logged_method, &logged_uri),
                exchange,
            ));
        }
    };

    let status = response.status();
    if let Some(exchange) = exchange.as_mut() {
        if policy.hints.enabled {
            exchange.set_hints(crate::policy::hints::take(
                response.headers_mut(),
                &policy.hints,
            ));
        }
        let declared = response.body().size_hint().exact();
        exchange.set_response(status.as_u16(), response.headers(), declared);
    }

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
            let (parts, _) = response.into_parts();
            // The exchange is final at the 101: what follows is no longer HTTP.
            let mut response = Response::from_parts(parts, ResponseBody::full(Bytes::new(), None));
            if let Some(exchange) = exchange {
                exchange.finish(Completion::Complete);
            }
            response
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), request_id);
            return Ok(response);
        }
    }

    let (mut parts, incoming) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers, false);
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID.clone(), request_id);
    }
    parts.version = Version::default();
    Ok(Response::from_parts(
        parts,
        ResponseBody {
            inner: ResponseInner::Upstream(incoming),
            exchange,
        },
    ))
}

fn proxy_error(
    status: StatusCode,
    detail: &str,
    request_id: &HeaderValue,
    (method, uri): (&Method, &Uri),
    mut exchange: Option<Box<Exchange>>,
) -> Response<ResponseBody> {
    tracing::warn!(status = status.as_u16(), request_id = %request_id.to_str().unwrap_or_default(), %method, path = %uri.path(), %detail, "upstream failed");
    if let Some(exchange) = exchange.as_mut() {
        exchange.set_proxy_answer(status.as_u16(), detail.to_string());
    }
    let text = if status == StatusCode::GATEWAY_TIMEOUT {
        "upstream timed out"
    } else {
        "upstream unavailable"
    };
    plain_response(status, text, request_id, exchange)
}

fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_connect() {
        "cannot connect to the app".to_string()
    } else {
        "the app's connection failed".to_string()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn humanize(duration: Duration) -> String {
    if duration.as_millis() % 1000 == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Reads the request body up to the capture limit. A body that fits is forwarded whole (with its
/// length); a larger one is forwarded as what was read followed by the rest of the stream, and is
/// not parsed.
async fn buffer_request_body(
    mut incoming: Incoming,
    limit: usize,
    headers: &HeaderMap,
) -> Result<(RequestBody, Capture), hyper::Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok((
            RequestBody::Streamed(incoming),
            Capture::off("was larger than max_body_capture"),
        ));
    }
    let mut buffer = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                return Ok((
                    RequestBody::Prefixed {
                        prefix: Some(buffer.freeze()),
                        rest: incoming,
                    },
                    Capture::off("was larger than max_body_capture"),
                ));
            }
        }
    }
    let bytes = buffer.freeze();
    let mut capture = Capture::on(limit);
    capture.push(&bytes);
    if bytes.is_empty() {
        return Ok((RequestBody::Empty, capture));
    }
    Ok((RequestBody::Buffered(Full::new(bytes)), capture))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-app"));
    }

    #[test]
    fn capture_parses_gzip_and_refuses_unknown_encodings() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(br#"{"id": 7}"#).expect("compresses");
        let gz = Bytes::from(encoder.finish().expect("finishes"));
        let mut capture = Capture::on(1024);
        capture.push(&gz);
        assert_eq!(
            capture.parse(Some("gzip"), 1024),
            Ok(serde_json::json!({"id": 7}))
        );
        assert!(capture
            .parse(Some("br"), 1024)
            .expect_err("not decoded")
            .contains("br"));
        assert!(capture
            .parse(None, 1024)
            .expect_err("binary")
            .contains("not JSON"));

        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 1 << 20]).expect("compresses");
        let mut capture = Capture::on(64 * 1024);
        capture.push(&Bytes::from(bomb.finish().expect("finishes")));
        assert!(capture.parse(Some("gzip"), 64 * 1024).is_err());
    }

    #[test]
    fn only_a_single_chunked_coding_is_forwarded() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static(value));
            }
            transfer_encoding_acceptable(&headers)
        };
        assert!(with(&[]));
        assert!(with(&["chunked"]));
        assert!(with(&["Chunked "]));
        assert!(!with(&["identity, chunked"]));
        assert!(!with(&["gzip, chunked"]));
        assert!(!with(&["chunked, chunked"]));
        assert!(!with(&["chunked", "chunked"]));
    }

    #[test]
    fn capture_overflow_is_reported() {
        let mut capture = Capture::on(4);
        capture.push(&Bytes::from_static(b"{\"a\""));
        capture.push(&Bytes::from_static(b":1}"));
        assert_eq!(
            capture.parse(None, 4),
            Err("was larger than max_body_capture".to_string())
        );
    }
}
