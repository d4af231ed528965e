//! One request on its way through the proxy's phases, the ones pingora names (`pingora-proxy`'s
//! `ProxyHttp`): request filter, request body filter, upstream request, response filter. The
//! response body filter and logging run as the response body streams (`body.rs`, `logging.rs`).
//!
//! Each phase may answer the request itself instead of the app: it records why in the exchange
//! and returns an [`Answer`], which [`Flow::answer`] turns into the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::discover::Seen;
use crate::identity::client_ip::{self, ClientAddr};
use crate::policy::rules::{Decision, RequestView, RuleKind};
use crate::policy::template::Needs;
use crate::policy::Policy;
use crate::request::{FormBody, MethodView};
use crate::store::config::StoreFailure;

use super::body::{buffer_request_body, client_body_error, RequestBody, ResponseBody};
use super::capture::Capture;
use super::exchange::{header_text, Completion, Exchange, ExchangeStart};
use super::pool::{self, Lease};
use super::request_filter::{
    refusal_of_head, transfer_encoding_acceptable, valid_request_id, wants_upgrade, Refusal,
    BROKEN_BODY,
};
use super::upstream::{self, describe_upstream_error, humanize, remove_hop_by_hop, X_REQUEST_ID};
use super::ProxyState;

/// One request through the phases: what the request filter decided, and the exchange's audit
/// state when the exchange may be recorded.
pub(super) struct Flow {
    state: Arc<ProxyState>,
    /// The policy the request started with; a reload does not change it mid-request.
    policy: Arc<Policy>,
    started: Instant,
    client_version: Version,
    /// auditgate's own id of the exchange, sent to the app and the client and recorded.
    request_id: HeaderValue,
    /// The client's own X-Request-Id, when it is a usable one.
    client_request_id: Option<HeaderValue>,
    client_addr: ClientAddr,
    peer_trusted: bool,
    /// The client's side of a protocol upgrade (WebSocket) the request asks for.
    client_upgrade: Option<OnUpgrade>,
    /// What the candidate rules read from the exchange.
    needs: Needs,
    exchange: Option<Box<Exchange>>,
    /// What route learning (`[discover]`) needs at the response; `None` when it is off.
    observed: Option<Observed>,
}

/// A request as route learning sees it: the canonical path and method, and the candidate rules
/// when no exchange keeps them.
struct Observed {
    uri: Uri,
    method: Method,
    candidates: Vec<usize>,
}

/// The request body as the request filter leaves it.
pub(super) enum ClientBody {
    /// Not read yet.
    Unread(Incoming),
    /// Read (up to the capture limit) for a method override in a form field.
    Read(RequestBody, Capture),
    /// Broken while it was read; the request is refused.
    Gone,
}

/// A response the proxy gives itself in place of the app's; the exchange has recorded why.
pub(super) struct Answer {
    status: StatusCode,
    /// The short text the client gets.
    text: &'static str,
    /// Whether the connection closes after it: after a framing error what follows on the
    /// connection cannot be trusted to start a request.
    close_connection: bool,
}

impl Flow {
    /// Starts a request's way from its head: the policy it runs under, its ids, and the client
    /// address as believed.
    pub(super) fn start<B>(state: Arc<ProxyState>, peer: SocketAddr, request: &Request<B>) -> Flow {
        let started = Instant::now();
        state.metrics.requests.inc();
        let policy = state.policy();
        // The entry's request id is always auditgate's own; a client's X-Request-Id is noted
        // apart, so a client can never choose the id an auditor looks an exchange up by.
        let mut id_text = [0u8; ulid::ULID_LEN];
        let request_id = HeaderValue::from_str(ulid::Ulid::new().array_to_str(&mut id_text))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let client_request_id = request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|value| valid_request_id(value))
            .cloned();
        let trusted = &state.config.trusted_proxies;
        let client_addr = client_ip::resolve(peer.ip(), request.headers(), trusted);
        let peer_trusted = client_ip::is_trusted(peer.ip(), trusted);
        Flow {
            policy,
            started,
            client_version: request.version(),
            request_id,
            client_request_id,
            client_addr,
            peer_trusted,
            client_upgrade: None,
            needs: Needs::default(),
            exchange: None,
            observed: None,
            state,
        }
    }

    /// Request filter: refusals before any rule sees the request, the canonical view, the method
    /// the app runs, the candidate rules, and the exchange with its actor when it may be
    /// recorded. A refused request is recorded all the same.
    pub(super) async fn request_filter(
        &mut self,
        mut request: Request<Incoming>,
    ) -> Result<(request::Parts, ClientBody), Answer> {
        let mut notes = serde_json::Map::new();
        if let Some(id) = self
            .client_request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
        {
            notes.insert("_clientRequestId".to_string(), Value::from(id));
        }
        let mut refusal = refusal_of_head(&self.policy, &mut request, &mut notes);
        // Upgrades (WebSocket) keep their Upgrade header and are tunnelled after a 101; the
        // upgrade itself is always an entry, since what flows through the tunnel is not audited.
        if refusal.is_none() && wants_upgrade(request.headers()) {
            self.client_upgrade = Some(hyper::upgrade::on(&mut request));
            if let Some(protocol) = header_text(request.headers(), &header::UPGRADE) {
                notes.insert("_upgrade".to_string(), Value::from(protocol));
            }
        }
        let (parts, incoming) = request.into_parts();
        let (body, method_view) = self
            .method_override(&parts, incoming, &mut refusal, &mut notes)
            .await;
        self.begin_exchange(&parts, &method_view, refusal.is_some(), notes)
            .await;
        if let Some(refusal) = refusal {
            tracing::info!(request_id = %self.request_id.to_str().unwrap_or_default(), method = %parts.method, path = %parts.uri.path(), detail = %refusal.detail, "request refused");
            return Err(self.client_error(refusal.status, refusal.text, refusal.detail));
        }
        // hyper frames a request body by its last transfer coding; any other coding in the list
        // would be dropped silently with the hop-by-hop header, and such lists are smuggling
        // probes.
        if !transfer_encoding_acceptable(&parts.headers) {
            return Err(self.client_error(
                StatusCode::BAD_REQUEST,
                "unsupported Transfer-Encoding",
                "refused: a Transfer-Encoding other than a single `chunked`".to_string(),
            ));
        }
        Ok((parts, body))
    }

    /// The method the app runs. A POST's `_method` form field needs the body before the rules
    /// can be chosen, so a form that may carry one is read here (up to the capture limit).
    async fn method_override(
        &self,
        parts: &request::Parts,
        incoming: Incoming,
        refusal: &mut Option<Refusal>,
        notes: &mut serde_json::Map<String, Value>,
    ) -> (ClientBody, MethodView) {
        let overrides = &self.policy.canonical.method_override;
        let reads_form = refusal.is_none()
            && transfer_encoding_acceptable(&parts.headers)
            && overrides
                .form_field(&parts.method, &parts.headers)
                .is_some();
        let body = if reads_form {
            let limit = self.state.config.max_body_capture;
            match buffer_request_body(incoming, limit, &parts.headers).await {
                Ok((body, capture)) => ClientBody::Read(body, capture),
                Err(error) => {
                    *refusal = Some(Refusal::broken_body(format!("{BROKEN_BODY}: {error}")));
                    ClientBody::Gone
                }
            }
        } else {
            ClientBody::Unread(incoming)
        };
        let form = match &body {
            ClientBody::Read(_, capture) => match capture.readable_bytes(&parts.headers) {
                Ok(bytes) => FormBody::Read(bytes),
                Err(why) => FormBody::Unreadable(why),
            },
            ClientBody::Unread(_) | ClientBody::Gone => FormBody::NotAForm,
        };
        let mut method_view = self.policy.canonical.method_view(
            &parts.method,
            &parts.headers,
            parts.uri.query(),
            form,
        );
        if let Some(note) = method_view.note.take() {
            notes.insert("_methodOverride".to_string(), note);
        }
        if let (None, Some(reason)) = (&refusal, &method_view.refused) {
            *refusal = Some(Refusal::bad_request(
                "conflicting, invalid or unreadable method override",
                format!("refused: {reason}"),
            ));
        }
        (body, method_view)
    }

    /// The candidate rules, and the exchange when it may be recorded. Beginning one waits for
    /// room in the writer's queue: back-pressure reaches the client here.
    async fn begin_exchange(
        &mut self,
        parts: &request::Parts,
        method_view: &MethodView,
        refused: bool,
        notes: serde_json::Map<String, Value>,
    ) {
        let method = &method_view.method;
        let overridden_from = method_view.sent.as_ref();
        // A request refused before the rules is matched by none (its path may not even be
        // canonical), and recorded all the same.
        let candidates = if refused {
            Vec::new()
        } else {
            self.candidates(parts, method, overridden_from)
        };
        let record_always = refused || self.client_upgrade.is_some();
        let rules = &self.policy.rules;
        // With hints on, any response may ask to be recorded, so every exchange is followed.
        let audited = record_always
            || rules.may_record(&candidates, method)
            || overridden_from.is_some_and(|sent| rules.unmatched_records(sent))
            || self.policy.hints.enabled;
        // Route learning costs one branch when `[discover]` is off. A refused request is not
        // learned: its path may not even be canonical.
        if !refused && self.state.metrics.routes.get().is_some() {
            self.observed = Some(Observed {
                uri: parts.uri.clone(),
                method: method.clone(),
                candidates: Vec::new(),
            });
        }
        if !audited {
            // No exchange keeps the candidates: route learning judges the status by them.
            if let Some(observed) = self.observed.as_mut() {
                observed.candidates = candidates;
            }
            return;
        }
        self.needs = rules.needs(&candidates);
        self.state.writer.reserve().await;
        let mut exchange = Exchange::begin(ExchangeStart {
            policy: self.policy.clone(),
            log_id: &self.state.log_id,
            method,
            sent_method: overridden_from,
            uri: &parts.uri,
            headers: &parts.headers,
            client: self.client_addr.client,
            peer_trusted: self.peer_trusted,
            request_id: self.request_id.to_str().ok(),
            candidates,
            needs: self.needs,
            capture_limit: self.state.config.max_body_capture,
            started: self.started,
            explain: false,
            notes,
            record_always,
        });
        exchange.sink = Some((self.state.writer.clone(), self.state.metrics.clone()));
        self.exchange = Some(exchange);
    }

    /// The rules whose method, path, host and headers match the request.
    fn candidates(
        &self,
        parts: &request::Parts,
        method: &Method,
        overridden_from: Option<&Method>,
    ) -> Vec<usize> {
        let uri = &parts.uri;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| uri.authority().map(|authority| authority.as_str()));
        let view = RequestView {
            method,
            path: uri.path(),
            query: uri.query(),
            host,
            headers: &parts.headers,
        };
        self.policy.rules.candidates_for(&view, overridden_from)
    }

    /// Request body filter: the body is buffered (up to the capture limit) only when a
    /// candidate rule or an actor source reads it; otherwise it streams to the app untouched.
    pub(super) async fn request_body_filter(
        &mut self,
        parts: &request::Parts,
        body: ClientBody,
    ) -> Result<RequestBody, Answer> {
        let read_body = self.needs.request_body
            || self
                .exchange
                .as_ref()
                .is_some_and(|exchange| exchange.actor_needs_request_body());
        let incoming = match body {
            ClientBody::Read(body, capture) => {
                self.keep_request_capture(capture);
                return Ok(body);
            }
            ClientBody::Gone => return Ok(RequestBody::Empty),
            ClientBody::Unread(incoming) => incoming,
        };
        if !read_body {
            if incoming.is_end_stream() {
                return Ok(RequestBody::Empty);
            }
            return Ok(RequestBody::Streamed(incoming));
        }
        let limit = self.state.config.max_body_capture;
        match buffer_request_body(incoming, limit, &parts.headers).await {
            Ok((body, capture)) => {
                self.keep_request_capture(capture);
                Ok(body)
            }
            Err(error) => Err(self.bad_request_body(format!("{BROKEN_BODY}: {error}"))),
        }
    }

    fn keep_request_capture(&mut self, capture: Capture) {
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.request_capture = capture;
        }
    }

    /// Write-ahead: the exchange's entry is durable before the app sees the request. When the
    /// store cannot take it, the request is refused unless `on_store_failure = forward`.
    pub(super) async fn write_ahead(&mut self) -> Result<(), Answer> {
        let Some(exchange) = self.exchange.as_mut() else {
            return Ok(());
        };
        let state = &self.state;
        let mode = self.policy.rules.write_ahead(
            &exchange.candidates,
            &exchange.method,
            state.write_ahead_default,
            state.on_store_failure,
        );
        let Some(failure) = mode else {
            return Ok(());
        };
        let error = match state.writer.write_ahead(exchange.intent_entry()).await {
            Ok(()) => {
                exchange.intent_recorded = true;
                return Ok(());
            }
            Err(error) => error,
        };
        if failure == StoreFailure::Forward {
            state.metrics.forwarded_unrecorded.inc();
            tracing::error!(%error, request_id = ?self.request_id, "forwarding a write-ahead request whose entry could not be made durable (on_store_failure = forward)");
            return Ok(());
        }
        state.metrics.fail_closed.inc();
        tracing::error!(%error, request_id = ?self.request_id, "refusing a write-ahead request: its entry could not be made durable");
        Err(self.proxy_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit log unavailable; the request was not forwarded",
            format!("not forwarded: the audit store could not record the request ({error})"),
        ))
    }

    /// Upstream request: the same method, path, query and headers, minus hop-by-hop ones, plus
    /// the forwarding headers.
    pub(super) fn upstream_request(
        &mut self,
        mut parts: request::Parts,
        body: RequestBody,
    ) -> Request<RequestBody> {
        let upgrade = self.client_upgrade.is_some();
        upstream::strip_request_headers(&mut parts, &self.policy, upgrade, self.peer_trusted);
        upstream::add_forwarding_headers(
            &mut parts.headers,
            &self.client_addr,
            self.peer_trusted,
            &self.request_id,
            self.client_request_id.take(),
        );
        let target = std::mem::take(&mut parts.uri);
        parts.uri = pool::request_target(&self.state.upstream_authority, &parts.method, target);
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// Sends the request to the app and waits for its response head, within the upstream
    /// timeout.
    pub(super) async fn upstream_response(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease<RequestBody>), Answer> {
        // For the log line of an upstream failure (cheap clones: shared bytes).
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let forwarded = Instant::now();
        let timeout = self.state.config.upstream_timeout;
        let sent = tokio::time::timeout(timeout, self.state.pool.send(request)).await;
        let (status, detail) = match sent {
            Ok(Ok(answered)) => {
                let exchanges = &self.state.metrics.exchanges;
                exchanges
                    .upstream_duration
                    .observe(forwarded.elapsed().as_secs_f64());
                return Ok(answered);
            }
            Ok(Err(error)) => {
                if let Some(body_error) = client_body_error(&error) {
                    // The client's body broke on the way (bad chunk framing, a client gone): a
                    // client error, and the connection cannot be trusted to be in step any more.
                    return Err(self.bad_request_body(body_error.to_string()));
                }
                (StatusCode::BAD_GATEWAY, describe_upstream_error(&error))
            }
            Err(_) => {
                let detail = format!("the app did not answer within {}", humanize(timeout));
                (StatusCode::GATEWAY_TIMEOUT, detail)
            }
        };
        self.state.metrics.upstream_errors.inc();
        Err(self.upstream_failed(status, detail, (&method, &uri)))
    }

    /// Response filter: the app's hints are taken and the status decides the rule; the response
    /// goes to the client with its body teed into the exchange (the body filter), which finishes
    /// the entry when the body ends (logging).
    pub(super) fn response_filter(
        mut self,
        (mut response, connection): (Response<Incoming>, Lease<RequestBody>),
    ) -> Response<ResponseBody> {
        let status = response.status();
        if let Some(exchange) = self.exchange.as_mut() {
            if self.policy.hints.enabled {
                exchange.set_hints(crate::policy::hints::take(
                    response.headers_mut(),
                    &self.policy.hints,
                ));
            }
            let declared = response.body().size_hint().exact();
            exchange.set_response(status.as_u16(), response.headers(), declared);
        }
        self.learn(status.as_u16());
        // After a 101 the app's connection is the tunnel's (or, without a client upgrade, no
        // longer HTTP): it never goes back to the pool.
        let connection = (status != StatusCode::SWITCHING_PROTOCOLS).then_some(connection);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = self.client_upgrade.take() {
                return self.tunnel(client_upgrade, response);
            }
        }
        let (mut parts, incoming) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers, false);
        if !parts.headers.contains_key(&X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID.clone(), self.request_id);
        }
        parts.version = Version::default();
        Response::from_parts(
            parts,
            ResponseBody::upstream(incoming, self.exchange, connection),
        )
    }

    /// An upgrade the app accepted: the two connections are joined. The exchange is final at the
    /// 101, since what follows is no longer HTTP.
    fn tunnel(
        self,
        client_upgrade: OnUpgrade,
        mut response: Response<Incoming>,
    ) -> Response<ResponseBody> {
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
        let mut response = Response::from_parts(parts, ResponseBody::full(Bytes::new(), None));
        if let Some(exchange) = self.exchange {
            exchange.finish(Completion::Complete);
        }
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id);
        response
    }

    /// The response for a request the proxy answered itself, carrying the exchange so that its
    /// entry is finished when the client has it.
    pub(super) fn answer(mut self, answer: Answer) -> Response<ResponseBody> {
        self.learn(answer.status.as_u16());
        let mut response = Response::new(ResponseBody::full(
            format!("{}\n", answer.text),
            self.exchange,
        ));
        *response.status_mut() = answer.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(X_REQUEST_ID.clone(), self.request_id);
        // HTTP/1 only; HTTP/2 frames requests itself and forbids the header.
        if answer.close_connection && self.client_version < Version::HTTP_2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Tells the route learner (`[discover]`) how the exchange went: its status and how the
    /// rules handled it, the rule's name when one took it.
    fn learn(&mut self, status: u16) {
        let Some(observed) = self.observed.take() else {
            return;
        };
        let Some(routes) = self.state.metrics.routes.get() else {
            return;
        };
        let rules = &self.policy.rules;
        let (candidates, decision) = match &self.exchange {
            Some(exchange) => (&exchange.candidates[..], exchange.decision()),
            None => (
                &observed.candidates[..],
                rules.decide(&observed.candidates, &observed.method, status),
            ),
        };
        let seen = match decision {
            Decision::Rule(index) => Seen::Rule(&rules.rule(index).name),
            Decision::Unmatched => Seen::Fallback,
            Decision::Nothing => candidates
                .iter()
                .map(|&index| rules.rule(index))
                .find(|rule| rule.status.holds(status) && matches!(rule.kind, RuleKind::Skip))
                .map_or(Seen::NotRecorded, |rule| Seen::Skipped(&rule.name)),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        routes.observe(
            observed.uri.path(),
            observed.method.as_str(),
            status,
            seen,
            now,
        );
    }

    /// Records that the proxy answers the request itself (the app unreachable, the store down, a
    /// target that cannot be forwarded).
    fn proxy_answer(&mut self, status: StatusCode, text: &'static str, detail: String) -> Answer {
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.set_proxy_answer(status.as_u16(), detail);
        }
        Answer {
            status,
            text,
            close_connection: false,
        }
    }

    /// Records a request refused for the client's fault; the connection closes after it.
    fn client_error(&mut self, status: StatusCode, text: &'static str, detail: String) -> Answer {
        self.state.metrics.client_errors.inc();
        Answer {
            close_connection: true,
            ..self.proxy_answer(status, text, detail)
        }
    }

    /// Records a request whose body broke while the proxy read or forwarded it (bad chunked
    /// framing, a client gone mid-body).
    fn bad_request_body(&mut self, detail: String) -> Answer {
        self.client_error(StatusCode::BAD_REQUEST, "bad request body", detail)
    }

    /// Records an app that failed or did not answer in time.
    fn upstream_failed(
        &mut self,
        status: StatusCode,
        detail: String,
        (method, uri): (&Method, &Uri),
    ) -> Answer {
        tracing::warn!(status = status.as_u16(), request_id = %self.request_id.to_str().unwrap_or_default(), %method, path = %uri.path(), %detail, "upstream failed");
        let text = if status == StatusCode::GATEWAY_TIMEOUT {
            "upstream timed out"
        } else {
            "upstream unavailable"
        };
        self.proxy_answer(status, text, detail)
    }
}
