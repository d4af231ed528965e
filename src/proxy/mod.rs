//! The hyper service: forward each request to the app, capture what the rules need, and finish
//! the entry when the response body ends or the client goes away.
//!
//! Per-request state travels with the request in [`Exchange`], built when the head arrives and
//! finished by [`ResponseBody`] when its last frame is sent (or when it is dropped early). The
//! phases are: request filter (rule candidates, actor, client address, back-pressure), upstream
//! request (hop-by-hop headers removed, forwarding headers added, body buffered only when a rule
//! reads it), response filter (the status decides the rule), body filter (tee of the response body
//! when a rule reads it), logging (the entry is pushed to the writer).

mod body;
mod capture;
pub mod config;
mod exchange;
mod logging;

pub use body::{BoxError, ClientBodyError, RequestBody, ResponseBody};
pub use exchange::{Exchange, ExchangeStart};

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;

use crate::store::config::{Durability, StoreConfig, StoreFailure};

use crate::policy::Policy;

use crate::identity::client_ip;
use crate::metrics::Metrics;
use crate::policy::rules::RequestView;
use crate::policy::template::Needs;
use crate::proxy::config::ProxyConfig;
use crate::request::FormBody;
use crate::writer::WriterHandle;

use body::{buffer_request_body, client_body_error};
use capture::Capture;
use exchange::{header_text, Completion};

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
        ResponseBody::upstream(incoming, exchange),
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
}
