//! `auditgate explain`: which rule a request would match and the entry it would produce, using
//! the same code the proxy runs, without a proxy or an app.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde_json::{json, Value};

use crate::commands::cli::ExplainArgs;
use crate::config::Config;
use crate::identity::client_ip;
use crate::policy::rules::{Decision, RequestView, RuleKind};
use crate::proxy::{Exchange, ExchangeStart};
use crate::request::FormBody;

fn parse_headers(items: &[String], what: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for item in items {
        let (name, value) = item
            .split_once(':')
            .ok_or_else(|| format!("{what} `{item}` is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{what} name `{}` is not valid", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("{what} value for {name} is not valid"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Runs the request through the rules and returns the explanation as JSON.
pub fn explain(config: &Config, args: &ExplainArgs) -> Result<Value, String> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", args.method))?;
    let uri: Uri = args.target.parse().map_err(|_| {
        format!(
            "`{}` is not a request target like /api/users/42",
            args.target
        )
    })?;
    let peer: IpAddr = args
        .peer
        .parse()
        .map_err(|_| format!("--peer `{}` is not an IP address", args.peer))?;
    let headers = parse_headers(&args.headers, "header")?;
    let response_headers = parse_headers(&args.response_headers, "response header")?;
    if !(100..=599).contains(&args.status) {
        return Err(format!("--status {} is outside 100-599", args.status));
    }

    let policy = config.policy.clone();
    let host = headers
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok());

    // The request filter's checks and the canonical view, as the proxy runs them: a refused head
    // (two Host headers, a credential given twice, a path that cannot be made canonical, an h2c
    // upgrade, ...) is explained as the refusal the proxy records.
    let sent_path = uri.path().to_string();
    let (screened, mut notes) = crate::proxy::screen_head(&policy, &method, &uri, &headers);
    let mut refused: Option<String> = None;
    let uri = match screened {
        Ok(canonical) => canonical,
        Err(detail) => {
            refused = Some(detail);
            uri
        }
    };
    let form_field = policy
        .canonical
        .method_override
        .form_field(&method, &headers);
    let form = match (&args.body, form_field) {
        (Some(body), Some(_)) if body.len() > config.proxy.max_body_capture => {
            FormBody::Unreadable("was larger than max_body_capture")
        }
        (Some(body), Some(_)) => FormBody::Read(body.as_bytes()),
        _ => FormBody::NotAForm,
    };
    let method_view = policy
        .canonical
        .method_view(&method, &headers, uri.query(), form);
    if let Some(note) = method_view.note.clone() {
        notes.insert("_methodOverride".to_string(), note);
    }
    if let (None, Some(reason)) = (&refused, &method_view.refused) {
        refused = Some(format!("refused: {reason}"));
    }
    let sent_method = method;
    let method = method_view.method.clone();
    let candidates = if refused.is_some() {
        Vec::new()
    } else {
        policy.rules.candidates_for(
            &RequestView {
                method: &method,
                path: uri.path(),
                query: uri.query(),
                host,
                headers: &headers,
            },
            method_view.sent.as_ref(),
        )
    };
    let candidate_names: Vec<&str> = candidates
        .iter()
        .map(|&index| policy.rules.rule(index).name.as_str())
        .collect();
    let trusted = &config.proxy.trusted_proxies;
    let client = client_ip::resolve(peer, &headers, trusted);
    let needs = policy.rules.needs(&candidates);
    let mut exchange = Exchange::begin(ExchangeStart {
        policy: policy.clone(),
        log_id: &config.log_id,
        method: &method,
        sent_method: method_view.sent.as_ref(),
        uri: &uri,
        headers: &headers,
        client: client.client,
        peer_trusted: client_ip::is_trusted(peer, trusted),
        request_id: Some("explain"),
        candidates: candidates.clone(),
        needs,
        capture_limit: config.proxy.max_body_capture,
        started: Instant::now(),
        explain: true,
        notes,
        record_always: refused.is_some(),
    });
    if let Some(body) = &args.body {
        exchange.set_request_body(Bytes::from(body.clone()));
    }
    let declared = args.response_body.as_ref().map(|body| body.len() as u64);
    let mut response_headers = response_headers;
    if policy.hints.enabled {
        exchange.set_hints(crate::policy::hints::take(
            &mut response_headers,
            &policy.hints,
        ));
    }
    match &refused {
        Some(reason) => exchange.set_proxy_answer(400, reason.clone()),
        None => {
            exchange.set_response(args.status, &response_headers, declared);
        }
    }
    if let Some(body) = &args.response_body {
        exchange.set_response_body(Bytes::from(body.clone()));
    }
    let decision = exchange.decision();
    let route_match = match decision {
        Decision::Rule(index) => policy.rules.rule(index).path_match(uri.path()),
        _ => None,
    }
    .map(|matched| {
        json!({
            "caseInsensitive": matched.semantics.case_insensitive,
            "trailingSlash": if matched.semantics.optional_trailing_slash { "optional" } else { "strict" },
            "exact": matched.exact,
            "caseFolded": matched.case_folded,
            "trailingSlashIgnored": matched.trailing_slash_ignored,
        })
    });
    let (decision_text, rule) = match decision {
        _ if refused.is_some() => ("refused", None),
        Decision::Rule(index) => {
            let rule = policy.rules.rule(index);
            let kind = match rule.kind {
                RuleKind::Record(_) => "record",
                RuleKind::Skip => "skip",
            };
            (kind, Some(rule.name.clone()))
        }
        Decision::Unmatched => ("unmatched", None),
        Decision::Nothing => {
            // A skip rule and "no rule, unmatched traffic not recorded" both record nothing; say which.
            let skipped_by = candidates
                .iter()
                .map(|&index| policy.rules.rule(index))
                .find(|rule| rule.status.holds(args.status));
            match skipped_by {
                Some(rule) => ("skip", Some(rule.name.clone())),
                None => ("not recorded", None),
            }
        }
    };
    // What the proxy would take out of the request before the app sees it.
    let peer_trusted = client_ip::is_trusted(peer, trusted);
    let mut forwarded = headers.clone();
    let removed: Vec<&str> = policy
        .actors
        .strip_untrusted_headers(&mut forwarded, peer_trusted)
        .into_iter()
        .map(HeaderName::as_str)
        .collect();
    let (entry, derivation) = exchange.into_explanation();
    let actor = entry.as_ref().map(|entry| {
        let extra = entry.metadata.get("_actor");
        json!({
            "id": entry.actor_id,
            "email": entry.actor_email,
            "name": entry.actor_name,
            "tenant": entry.tenant,
            "roles": extra.and_then(|extra| extra.get("roles")).cloned().unwrap_or_else(|| json!([])),
            "source": entry.actor_source,
            "verified": entry.actor_verified,
            "notes": extra.and_then(|extra| extra.get("notes")).cloned().unwrap_or_else(|| json!([])),
            "derivation": derivation,
        })
    });
    let actor = match actor {
        Some(actor) => actor,
        // Nothing is recorded, but how the actor would be found is still worth showing.
        None => json!({ "derivation": derivation }),
    };
    Ok(json!({
        "decision": decision_text,
        "rule": rule,
        "candidates": candidate_names,
        "request": {
            "method": sent_method.as_str(),
            "effectiveMethod": method.as_str(),
            "methodOverride": method_view.note,
            "path": sent_path,
            "canonicalPath": uri.path(),
            "refused": refused,
        },
        "routeMatch": route_match,
        "client": {
            "peer": peer.to_string(),
            "peerTrusted": peer_trusted,
            "ip": client.client.to_string(),
            "forwardedFor": client.believed_chain.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "actor": actor,
        "upstream": {
            "removedHeaders": removed,
        },
        "entry": entry.map(|entry| entry.to_api_json()),
    }))
}

/// `auditgate explain`: loads the configuration and prints the explanation as JSON.
pub fn print(args: &ExplainArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    use std::process::ExitCode;
    let config = match super::load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    // Key sets named by URL are fetched once, so tokens are checked as the sidecar would check
    // them.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(config.policy.actors.load_keys_once());
    match explain(&config, args) {
        Ok(explanation) => {
            crate::commands::cli::print_stdout(&format!(
                "{}\n",
                serde_json::to_string_pretty(&explanation)?
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("auditgate explain: {message}");
            Ok(ExitCode::from(super::EXIT_USAGE))
        }
    }
}
