//! `GET /api/v1/coverage` (`read`): the route templates learned from traffic (`[discover]`),
//! busiest first, each method with what covers it — the rule that records it, a skip rule, the
//! generic `[unmatched]` fallback, or nothing — and, where no rule covers it, a draft rule to
//! copy into the configuration. Recorded as `audit.query`, like every query.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::audit::{self, AdminAction, RequestInfo, AUDIT_QUERY};
use super::caller::Caller;
use super::AdminState;
use crate::discover::{Covered, MethodStats, Route};
use crate::policy::draft::{learned_operation, render_rules};

/// Methods a draft rule is offered for when no rule covers them; `OTHER` (many methods counted
/// together), HEAD and OPTIONS are not worth one.
fn draftable(method: &str) -> bool {
    matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE")
}

pub async fn coverage(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
) -> Response {
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    action
        .metadata
        .insert("endpoint".into(), Value::from("coverage"));
    let body = match state.metrics.routes.get() {
        None => json!({
            "enabled": false,
            "routes": [],
            "unlearned": 0,
            "unmatchedMutations": state.metrics.unmatched_mutations.get(),
            "limits": limits(),
        }),
        Some(learner) => {
            let learned = learner.learned();
            action
                .metadata
                .insert("rows".into(), Value::from(learned.routes.len()));
            json!({
                "enabled": true,
                "routes": learned.routes.iter().map(route_json).collect::<Vec<_>>(),
                "unlearned": learned.unlearned,
                "unmatchedMutations": state.metrics.unmatched_mutations.get(),
                "limits": limits(),
            })
        }
    };
    audit::record(&state, Some(&caller), &info, action);
    Json(body).into_response()
}

fn limits() -> Value {
    json!({
        "maxTemplates": crate::discover::MAX_TEMPLATES,
        "maxValuesPerSegment": crate::discover::MAX_VALUES_PER_SEGMENT,
        "maxDepth": crate::discover::MAX_DEPTH,
    })
}

fn route_json(route: &Route) -> Value {
    let sample = route.sample.as_deref().unwrap_or(&route.template);
    json!({
        "template": route.template,
        "sample": route.sample,
        "count": route.count(),
        "methods": route
            .methods
            .iter()
            .map(|method| method_json(&route.template, sample, method))
            .collect::<Vec<_>>(),
    })
}

fn method_json(template: &str, sample: &str, stats: &MethodStats) -> Value {
    let (coverage, rule) = match &stats.covered {
        Covered::Rule { rule } => ("rule", Some(rule.as_str())),
        Covered::Skipped { rule } => ("skipped", Some(rule.as_str())),
        Covered::Fallback => ("fallback", None),
        Covered::NotRecorded => ("not_recorded", None),
    };
    let draft = (!stats.covered.by_rule() && draftable(&stats.method))
        .then(|| draft_rule(&stats.method, template, sample))
        .flatten();
    let [c1, c2, c3, c4, c5] = stats.status_classes;
    json!({
        "method": stats.method,
        "count": stats.count,
        "statusClasses": {"1xx": c1, "2xx": c2, "3xx": c3, "4xx": c4, "5xx": c5},
        "firstSeen": timestamp(stats.first_seen),
        "lastSeen": timestamp(stats.last_seen),
        "fallbackCount": stats.fallback_count,
        "coverage": coverage,
        "rule": rule,
        "draftRule": draft,
    })
}

/// The `[[rule]]` for one learned route and method, as `auditgate rules suggest` writes it, or
/// `None` when its template would not compile as a route.
pub fn draft_rule(method: &str, template: &str, sample: &str) -> Option<String> {
    crate::request::route::compile_route(template).ok()?;
    let operation = learned_operation(method, template, sample);
    let text = render_rules(&[operation], &|_| String::new());
    Some(text.trim_start().to_string())
}

fn timestamp(seconds: i64) -> Value {
    match Utc.timestamp_opt(seconds, 0).single() {
        Some(time) => Value::from(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => Value::Null,
    }
}
