//! The exchange: one request's audit state, built when the head arrives and carried through the
//! phases: what was decided, the actor as far as the head tells, the captured bodies and the entry
//! being built. The logging phase, which finishes the entry, is in `logging.rs`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Uri};
use serde_json::Value;

use crate::entry::AuditEntry;
use crate::identity::actor::{ActorRequest, PendingActor};
use crate::metrics::Metrics;
use crate::policy::rules::Decision;
use crate::policy::template::Needs;
use crate::policy::Policy;
use crate::writer::WriterHandle;

use super::capture::Capture;

/// How an exchange ended, as the response body saw it.
pub(super) enum Completion {
    Complete,
    UpstreamBodyError(String),
    ClientGone,
}

/// Everything needed to finish one entry, gathered along the way.
pub struct Exchange {
    pub(super) policy: Arc<Policy>,
    /// Where the finished entry goes; `None` for `auditgate explain`, which only prints it.
    pub(super) sink: Option<(WriterHandle, Arc<Metrics>)>,
    pub(super) entry: AuditEntry,
    /// The method the app runs (a POST's honoured override, else the request's).
    pub(super) method: Method,
    /// The method on the wire, when an override changed it.
    pub(super) sent_method: Option<Method>,
    /// The canonical path, as matched and forwarded.
    pub(super) path: String,
    pub(super) raw_query: Option<String>,
    /// Record the exchange even when no rule or `[unmatched]` would (refusals, upgrades).
    pub(super) record_always: bool,
    pub(super) candidates: Vec<usize>,
    pub(super) decision: Decision,
    /// The actor as far as the request head tells; body sources finish it with the entry.
    pub(super) actor: Option<PendingActor>,
    /// Whether this exchange is explained (`auditgate explain`) rather than proxied.
    pub(super) explain: bool,
    pub(super) request_headers: Option<HeaderMap>,
    pub(super) response_headers: Option<HeaderMap>,
    pub(super) request_capture: Capture,
    pub(super) request_encoding: Option<String>,
    pub(super) response_capture: Capture,
    pub(super) response_encoding: Option<String>,
    pub(super) capture_limit: usize,
    pub(super) started: Instant,
    /// Set when the entry is final before the body (upgrades, proxy errors).
    pub(super) error: Option<String>,
    /// Whether a write-ahead intent of this exchange is in the store.
    pub(super) intent_recorded: bool,
    /// What the app said about the exchange in `Audit-*` response headers.
    pub(super) hints: Option<crate::policy::hints::Hints>,
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
    pub(super) fn recording_method(&self) -> &Method {
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

    /// Records the hints the app's response carried.
    pub fn set_hints(&mut self, hints: Option<crate::policy::hints::Hints>) {
        self.hints = hints;
    }
}

/// Text of a header for recording: lossy UTF-8 so hostile bytes are kept faithfully but safely.
pub(super) fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}
