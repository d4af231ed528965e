//! The logging phase: the entry finished from what the exchange gathered (the decision, the actor,
//! the captured bodies, the rule's templates, the app's hints) and handed to the writer; also the
//! write-ahead intent, the same entry as known before forwarding.

use std::borrow::Cow;

use http::header::HeaderName;
use serde_json::Value;

use crate::entry::{AuditEntry, Outcome};
use crate::identity::actor::Actor;
use crate::policy::redact::Redactor;
use crate::policy::rules::{Decision, RecordSpec, Rule, RuleKind};
use crate::policy::template;

use super::exchange::{Completion, Exchange};

/// The read side of an exchange for templates: its headers, and the values parsed from the
/// request and response.
struct TemplateContext<'a> {
    exchange: &'a Exchange,
    values: template::RequestValues,
}

impl template::Context for TemplateContext<'_> {
    fn path_param(&self, name: &str) -> Option<&str> {
        self.values.path_param(name)
    }

    fn query(&self, name: &str) -> Option<String> {
        self.values.query(name)
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
        self.values.request_body()
    }

    fn response_body(&self) -> Result<&Value, &str> {
        self.values.response_body()
    }
}

impl Exchange {
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
                let request_body = if rule.needs.request_body {
                    request_body.clone()
                } else {
                    Err("was not captured".to_string())
                };
                self.fill_from_decided_rule(&mut entry, rule, request_body, false);
            }
            None => entry.action = format!("http.{}", self.method.as_str().to_ascii_lowercase()),
        }
        entry
    }

    pub(super) fn finish(self: Box<Self>, completion: Completion) {
        let sink = self.sink.clone();
        let id = self.entry.id.clone();
        let completes_intent = self.intent_recorded;
        // A mutation only the generic fallback caught is counted: a rule is missing for it.
        // Refusals and upgrades, recorded whatever the rules say, are not such traffic.
        let fallback_mutation = self.decision == Decision::Unmatched
            && !self.record_always
            && !matches!(
                self.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::TRACE
            );
        let entry = self.into_entry(completion);
        let Some((writer, metrics)) = sink else {
            return;
        };
        if fallback_mutation {
            metrics.unmatched_mutations.inc();
        }
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
        let mut entry = self.take_ended_entry(completion);
        let request_body = self.request_body_for_entry();
        let mut derivation = Vec::new();
        if let Some(pending) = self.actor.take() {
            let body = request_body.as_ref().map_err(String::as_str);
            let actor = pending.finish(&self.policy.actors, body);
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
                let rule = self.policy.rules.rule(index);
                if self.fill_from_decided_rule(&mut entry, rule, request_body, true) {
                    derivation.push(format!(
                        "rule {:?}: actor fields taken from the exchange (`actor = {{ ... }}`); actorSource \"rule\", unverified",
                        rule.name
                    ));
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

    /// Takes the entry out of the exchange with what the end of the exchange tells: how long it
    /// took, what went wrong, and the outcome.
    fn take_ended_entry(&mut self, completion: Completion) -> AuditEntry {
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
        let mut entry = std::mem::replace(&mut self.entry, AuditEntry::new("", ""));
        entry.duration_us = Some(self.started.elapsed().as_micros() as u64);
        entry.error = self.error.take();
        entry.outcome = match (status, &entry.error) {
            (Some(status), _) => Outcome::from_status(status),
            (None, _) => Outcome::Error,
        };
        entry
    }

    /// The request body, parsed once for the rule's values and the actor's body sources, and
    /// only when one of them reads it.
    fn request_body_for_entry(&self) -> Result<Value, String> {
        let rule_reads_body = match self.decision {
            Decision::Rule(index) => self.policy.rules.rule(index).needs.request_body,
            _ => false,
        };
        if rule_reads_body || self.actor_needs_request_body() {
            self.request_capture
                .parse(self.request_encoding.as_deref(), self.capture_limit)
        } else {
            Err("was not captured".to_string())
        }
    }

    /// Writes the rule's name and route into the entry and, for a record rule, its template
    /// values; `response_seen` is false for a write-ahead intent, made before the app answered.
    /// Returns whether the rule's templates set the actor.
    fn fill_from_decided_rule(
        &self,
        entry: &mut AuditEntry,
        rule: &Rule,
        request_body: Result<Value, String>,
        response_seen: bool,
    ) -> bool {
        entry.rule = Some(rule.name.clone());
        entry.route = rule.route().map(str::to_string);
        let RuleKind::Record(spec) = &rule.kind else {
            return false;
        };
        let response_body = match (response_seen, rule.needs.response_body) {
            (false, _) => Err("was not seen yet".to_string()),
            (true, true) => self
                .response_capture
                .parse(self.response_encoding.as_deref(), self.capture_limit),
            (true, false) => Err("was not captured".to_string()),
        };
        let context = TemplateContext {
            exchange: self,
            values: template::RequestValues {
                params: rule.path_params(&self.path),
                query: self.raw_query.as_ref().map(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect()
                }),
                request_body,
                response_body,
            },
        };
        fill_from_rule(entry, spec, &context, &self.policy.redact)
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
    spec: &RecordSpec,
    context: &dyn template::Context,
    redact: &Redactor,
) -> bool {
    let mut values = RuleValues {
        context,
        redact,
        missing: serde_json::Map::new(),
    };
    set_action(entry, values.text("action", &spec.action));
    if let Some(activity) = spec.ocsf_activity {
        entry.metadata.insert(
            crate::entry::ocsf::ACTIVITY_METADATA_KEY.to_string(),
            Value::from(activity.as_str()),
        );
    }
    if let Some(template) = &spec.resource_type {
        entry.resource_type = values.text("resourceType", template);
    }
    if let Some(template) = &spec.resource_id {
        entry.resource_id = values.text("resourceId", template);
    }
    if let Some(template) = &spec.tenant {
        if let Some(tenant) = values.text("tenant", template) {
            entry.tenant = Some(tenant);
        }
    }
    let actor_from_rule = values.fill_actor(entry, spec);
    values.fill_metadata(entry, spec);
    if !values.missing.is_empty() {
        entry
            .metadata
            .insert("_missing".to_string(), Value::Object(values.missing));
    }
    actor_from_rule
}

/// The action the rule's template rendered, or `unknown` when it rendered nothing.
fn set_action(entry: &mut AuditEntry, action: Option<String>) {
    match action {
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
}

/// A rule's values as they are evaluated, with why each one that could not be had is missing.
struct RuleValues<'a> {
    context: &'a dyn template::Context,
    redact: &'a Redactor,
    missing: serde_json::Map<String, Value>,
}

impl RuleValues<'_> {
    /// A text value, through the redactor; `None` with the reason noted under `key` when it
    /// cannot be had.
    fn text(&mut self, key: &str, template: &template::Template) -> Option<String> {
        let redact = self.redact;
        let filter = |source: &template::Source, value: Value| redact.source_value(source, value);
        match template.evaluate_text_filtered(self.context, &filter) {
            Ok(value) => Some(value),
            Err(why) => {
                self.missing.insert(key.to_string(), Value::from(why));
                None
            }
        }
    }

    /// The actor fields the rule takes from the exchange; returns whether it set any.
    fn fill_actor(&mut self, entry: &mut AuditEntry, spec: &RecordSpec) -> bool {
        let mut actor_from_rule = false;
        if let Some(template) = &spec.actor_id {
            if let Some(id) = self.text("actorId", template) {
                entry.actor_id = Some(id);
                actor_from_rule = true;
            }
        }
        if let Some(template) = &spec.actor_email {
            if let Some(email) = self.text("actorEmail", template) {
                entry.actor_email = Some(email);
                actor_from_rule = true;
            }
        }
        if let Some(template) = &spec.actor_name {
            if let Some(name) = self.text("actorName", template) {
                entry.actor_name = Some(name);
                actor_from_rule = true;
            }
        }
        if actor_from_rule {
            // The identity now comes from what the request claimed, which proves nothing.
            entry.actor_source = Some("rule".to_string());
            entry.actor_verified = false;
        }
        actor_from_rule
    }

    /// The rule's metadata values; one that cannot be had is recorded as null.
    fn fill_metadata(&mut self, entry: &mut AuditEntry, spec: &RecordSpec) {
        for (key, template) in &spec.metadata {
            match self.redact.metadata_value(key, template, self.context) {
                Ok(value) => {
                    entry.metadata.insert(key.clone(), value);
                }
                Err(why) => {
                    entry.metadata.insert(key.clone(), Value::Null);
                    self.missing.insert(key.clone(), Value::from(why));
                }
            }
        }
    }
}
