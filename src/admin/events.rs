//! `POST /api/v1/events`: entries from the app itself, in the reference product's shape.
//!
//! The body is one entry or an array of them — `actorId, actorEmail, action, resourceType,
//! resourceId, metadata, ip, userAgent`, exactly what the reference's `logAction()` takes. Every
//! field is validated and every bad one named in the 400. An `action` in auditgate's own `audit.`
//! namespace (see [`crate::entry::RESERVED_ACTION_PREFIX`]) is well-formed but not the app's to
//! use: alone it is answered 422, naming the field; with other errors it is listed in their 400.
//! The entries go through the same writer and tamper-evident log as proxied ones, with
//! `actorSource = "app"`; the answer (201) comes only once they are stored.
//!
//! `Idempotency-Key` makes retries safe: the entries of a keyed request get ids derived from the
//! key, so a retry — within this process's memory (24 h) or after a restart, found in the store —
//! answers with the first attempt's ids instead of recording twice. The same key with a different
//! body is refused (422).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::caller::Caller;
use super::AdminState;
use crate::entry::{AuditEntry, Outcome};
use crate::policy::hints::valid_action;

/// The largest request body the endpoint reads.
pub const MAX_EVENTS_BODY: usize = 1024 * 1024;
/// The most entries in one request.
const MAX_BATCH: usize = 1000;
/// Longest text field (ids, emails, types); user agents may be longer.
const MAX_FIELD: usize = 512;
const MAX_USER_AGENT: usize = 2048;
/// Largest `metadata` object, serialized.
const MAX_METADATA: usize = 16 * 1024;
/// How long an idempotency key is remembered in memory, and how many at most.
const KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const MAX_KEYS: usize = 100_000;
const MAX_KEY_LENGTH: usize = 255;

const FIELDS: [&str; 8] = [
    "actorId",
    "actorEmail",
    "action",
    "resourceType",
    "resourceId",
    "metadata",
    "ip",
    "userAgent",
];

enum KeyState {
    /// The first request with this key is being stored.
    InProgress,
    /// Stored: the answer a retry gets.
    Done {
        body_hash: [u8; 32],
        ids: Vec<String>,
    },
}

/// Idempotency keys seen recently.
#[derive(Default)]
pub struct IdempotencyKeys {
    keys: Mutex<HashMap<String, (Instant, KeyState)>>,
}

impl IdempotencyKeys {
    fn forget_old(keys: &mut HashMap<String, (Instant, KeyState)>) {
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (seen, _)| seen.elapsed() < KEY_LIFETIME);
        }
        if keys.len() >= MAX_KEYS {
            // Still full of live keys: drop the oldest finished tenth rather than refuse service.
            let mut finished: Vec<(Instant, String)> = keys
                .iter()
                .filter(|(_, (_, state))| matches!(state, KeyState::Done { .. }))
                .map(|(key, (seen, _))| (*seen, key.clone()))
                .collect();
            finished.sort();
            for (_, key) in finished.into_iter().take(MAX_KEYS / 10) {
                keys.remove(&key);
            }
        }
    }

    /// Takes `key` for a request with this body, or answers for it: 409 while the first
    /// request with the key is being stored, its ids once it is, 422 for another body.
    fn claim(&self, key: &str, body_hash: [u8; 32]) -> Result<(), Box<Response>> {
        let Ok(mut keys) = self.keys.lock() else {
            return Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )));
        };
        IdempotencyKeys::forget_old(&mut keys);
        match keys.get(key) {
            Some((seen, state)) if seen.elapsed() < KEY_LIFETIME => match state {
                KeyState::InProgress => {
                    let mut response = error(
                        StatusCode::CONFLICT,
                        "a request with this Idempotency-Key is still being stored; retry shortly",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                    return Err(Box::new(response));
                }
                KeyState::Done {
                    body_hash: first,
                    ids: first_ids,
                } => {
                    if *first != body_hash {
                        return Err(Box::new(error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "this Idempotency-Key was used with a different body",
                        )));
                    }
                    return Err(Box::new(created(first_ids, true)));
                }
            },
            _ => {}
        }
        keys.insert(key.to_string(), (Instant::now(), KeyState::InProgress));
        Ok(())
    }

    /// Remembers the answer for `key` once its entries are stored.
    fn finish(&self, key: &str, body_hash: [u8; 32], ids: Vec<String>) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(
                key.to_string(),
                (Instant::now(), KeyState::Done { body_hash, ids }),
            );
        }
    }

    /// Lets `key` go when its entries could not be stored, so a retry tries again.
    fn release(&self, key: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(key);
        }
    }
}

/// One field error: which entry, which field, what is wrong.
fn field_error(index: Option<usize>, field: &str, message: &str) -> Value {
    let param = match index {
        Some(index) => format!("[{index}].{field}"),
        None => field.to_string(),
    };
    json!({"param": param, "message": message})
}

/// The message of an `action` refused for being in auditgate's namespace; such errors alone make
/// the answer 422 rather than 400.
const RESERVED_ACTION_MESSAGE: &str =
    "starts with audit., which is reserved for auditgate's own entries (audit.query, audit.pruned, ...)";

fn bad_request(errors: Vec<Value>) -> Response {
    let first = errors.first().cloned().unwrap_or(Value::Null);
    // Well-formed, but naming an action the app may not use: the request is understood and
    // refused for what it says (422), unless something is also malformed (400).
    let status = if !errors.is_empty()
        && errors
            .iter()
            .all(|error| error["message"] == RESERVED_ACTION_MESSAGE)
    {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        Json(json!({
            "error": first["message"].clone(),
            "param": first["param"].clone(),
            "errors": errors,
        })),
    )
        .into_response()
}

fn text_field(
    object: &Map<String, Value>,
    field: &str,
    max: usize,
    index: Option<usize>,
    errors: &mut Vec<Value>,
) -> Option<String> {
    match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.is_empty() => {
            errors.push(field_error(index, field, "is empty"));
            None
        }
        Some(Value::String(text)) if text.len() > max => {
            errors.push(field_error(
                index,
                field,
                &format!("is longer than {max} bytes"),
            ));
            None
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            errors.push(field_error(index, field, "must be a string"));
            None
        }
    }
}

/// Validates one event into an entry; every problem is added to `errors`.
fn to_entry(
    value: &Value,
    index: Option<usize>,
    log_id: &str,
    token_name: &str,
    errors: &mut Vec<Value>,
) -> Option<AuditEntry> {
    let Some(object) = value.as_object() else {
        errors.push(field_error(index, "", "must be a JSON object"));
        return None;
    };
    let before = errors.len();
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(field_error(
                index,
                key,
                &format!("is not a field (fields: {})", FIELDS.join(", ")),
            ));
        }
    }
    let action = action_field(object, index, errors);
    let actor_id = text_field(object, "actorId", MAX_FIELD, index, errors);
    let actor_email = text_field(object, "actorEmail", MAX_FIELD, index, errors);
    if actor_id.is_none()
        && actor_email.is_none()
        && !object.contains_key("actorId")
        && !object.contains_key("actorEmail")
    {
        errors.push(field_error(
            index,
            "actorId",
            "is required (or actorEmail): who did it",
        ));
    }
    let resource_type = text_field(object, "resourceType", MAX_FIELD, index, errors);
    let resource_id = text_field(object, "resourceId", MAX_FIELD, index, errors);
    let user_agent = text_field(object, "userAgent", MAX_USER_AGENT, index, errors);
    let ip = ip_field(object, index, errors);
    let metadata = metadata_field(object, index, errors);
    if errors.len() > before {
        return None;
    }
    let mut entry = AuditEntry::new(log_id, action.unwrap_or_default());
    entry.actor_id = actor_id;
    entry.actor_email = actor_email;
    entry.actor_source = Some("app".to_string());
    entry.actor_verified = true;
    entry.resource_type = resource_type;
    entry.resource_id = resource_id;
    entry.ip = ip;
    entry.user_agent = user_agent;
    entry.outcome = Outcome::Success;
    entry.metadata = metadata;
    entry
        .metadata
        .insert("_ingest".to_string(), json!({ "token": token_name }));
    Some(entry)
}

/// `action`: required, in the shape of an action name, and not in auditgate's namespace.
fn action_field(
    object: &Map<String, Value>,
    index: Option<usize>,
    errors: &mut Vec<Value>,
) -> Option<String> {
    let action = text_field(object, "action", 128, index, errors);
    match &action {
        None if !object.contains_key("action") || object["action"].is_null() => {
            errors.push(field_error(index, "action", "is required"))
        }
        Some(action) if !valid_action(action) => errors.push(field_error(
            index,
            "action",
            "must be letters, digits and . _ - : / (like user.role_changed)",
        )),
        Some(action) if crate::entry::is_reserved_action(action) => {
            errors.push(field_error(index, "action", RESERVED_ACTION_MESSAGE))
        }
        _ => {}
    }
    action
}

/// `ip`: an IP address, recorded in the canonical form the proxy records client addresses in.
fn ip_field(
    object: &Map<String, Value>,
    index: Option<usize>,
    errors: &mut Vec<Value>,
) -> Option<String> {
    let text = text_field(object, "ip", 64, index, errors)?;
    match text.parse::<IpAddr>() {
        Ok(addr) => Some(crate::identity::client_ip::canonical(addr).to_string()),
        Err(_) => {
            errors.push(field_error(index, "ip", "is not an IP address"));
            None
        }
    }
}

/// `metadata`: a JSON object within the size limit, with none of auditgate's own `_` keys.
fn metadata_field(
    object: &Map<String, Value>,
    index: Option<usize>,
    errors: &mut Vec<Value>,
) -> Map<String, Value> {
    match object.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(metadata)) => {
            let size = serde_json::to_vec(metadata)
                .map(|bytes| bytes.len())
                .unwrap_or(usize::MAX);
            if size > MAX_METADATA {
                errors.push(field_error(
                    index,
                    "metadata",
                    &format!("is {size} bytes, over the {MAX_METADATA}-byte limit"),
                ));
            }
            if metadata.keys().any(|key| key.starts_with('_')) {
                errors.push(field_error(
                    index,
                    "metadata",
                    "keys starting with _ are reserved for auditgate",
                ));
            }
            metadata.clone()
        }
        Some(_) => {
            errors.push(field_error(index, "metadata", "must be a JSON object"));
            Map::new()
        }
    }
}

/// Entry ids for a keyed request: the same key, log and position give the same id, so a retry
/// can be recognised in the store after a restart.
fn keyed_id(log_id: &str, key: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{log_id}\n{key}\n{index}").as_bytes());
    format!("evt_{}", hex::encode(&digest[..16]))
}

fn created(ids: &[String], replayed: bool) -> Response {
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (
        status,
        Json(json!({ "ids": ids, "count": ids.len(), "replayed": replayed })),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `POST /api/v1/events` (scope `write`).
pub async fn ingest(
    State(state): State<AdminState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, value) = match read_request(&headers, &body) {
        Ok(request) => request,
        Err(answer) => return *answer,
    };
    let token_name = caller.identity.name.to_string();
    let request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok());
    let entries = match build_entries(&value, &state.log_id, &token_name, request_id) {
        Ok(entries) => entries,
        Err(answer) => return *answer,
    };
    match key {
        None => store(&state, entries).await,
        Some(key) => store_keyed(&state, entries, &token_name, &key, &body).await,
    }
}

/// The request's `Idempotency-Key` and its body as JSON, or the answer refusing them.
fn read_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Option<String>, Value), Box<Response>> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if !json_body {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json",
        )));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(text) if !text.is_empty() && text.len() <= MAX_KEY_LENGTH => Some(text.to_string()),
            _ => {
                return Err(Box::new(bad_request(vec![field_error(
                    None,
                    "Idempotency-Key",
                    &format!("must be 1-{MAX_KEY_LENGTH} visible ASCII characters"),
                )])))
            }
        },
    };
    match serde_json::from_slice(body) {
        Ok(value) => Ok((key, value)),
        Err(parse) => Err(Box::new(bad_request(vec![field_error(
            None,
            "body",
            &format!("is not JSON: {parse}"),
        )]))),
    }
}

/// The entries of a body holding one event or an array of them, each validated, with the
/// request's id; or the answer naming every bad field.
fn build_entries(
    value: &Value,
    log_id: &str,
    token_name: &str,
    request_id: Option<&str>,
) -> Result<Vec<AuditEntry>, Box<Response>> {
    let (items, batch) = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(Box::new(bad_request(vec![field_error(
                None,
                "body",
                "is an empty array",
            )])))
        }
        Value::Array(items) if items.len() > MAX_BATCH => {
            return Err(Box::new(bad_request(vec![field_error(
                None,
                "body",
                &format!(
                    "holds {} entries; at most {MAX_BATCH} a request",
                    items.len()
                ),
            )])))
        }
        Value::Array(items) => (items.iter().collect::<Vec<_>>(), true),
        other => (vec![other], false),
    };
    let mut errors = Vec::new();
    let mut entries = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(entry) = to_entry(
            item,
            batch.then_some(index),
            log_id,
            token_name,
            &mut errors,
        ) {
            entries.push(entry);
        }
    }
    if !errors.is_empty() {
        return Err(Box::new(bad_request(errors)));
    }
    if let Some(request_id) = request_id {
        for entry in &mut entries {
            entry.request_id = Some(request_id.chars().take(128).collect());
        }
    }
    Ok(entries)
}

/// Stores the entries of a request without a key; the answer comes once they are durable.
async fn store(state: &AdminState, entries: Vec<AuditEntry>) -> Response {
    let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
    match state.writer.push_durable(entries).await {
        Ok(()) => created(&ids, false),
        Err(cause) => {
            tracing::error!(%cause, "ingested entries could not be stored");
            store_unavailable()
        }
    }
}

/// Stores the entries of a keyed request: one request per key at a time, and a retry, here or
/// after a restart, gets the first attempt's ids instead of recording twice.
async fn store_keyed(
    state: &AdminState,
    mut entries: Vec<AuditEntry>,
    token_name: &str,
    key: &str,
    body: &[u8],
) -> Response {
    let body_hash: [u8; 32] = Sha256::digest(body).into();
    let scoped_key = format!("{token_name}\n{key}");
    for (index, entry) in entries.iter_mut().enumerate() {
        entry.id = keyed_id(&state.log_id, &scoped_key, index);
        entry.metadata.insert(
            "_ingest".to_string(),
            json!({ "token": token_name, "idempotencyKey": key }),
        );
    }
    let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
    if let Err(answer) = state.ingest_keys.claim(&scoped_key, body_hash) {
        return *answer;
    }
    // Not in memory (a restart since the first attempt?): the ids tell whether it is stored.
    let lookup = ids.clone();
    let store = state.store.clone();
    let present = match tokio::task::spawn_blocking(move || store.existing_ids(&lookup)).await {
        Ok(Ok(present)) => present,
        _ => {
            state.ingest_keys.release(&scoped_key);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit store cannot be read now",
            );
        }
    };
    let result = if present.len() == ids.len() {
        Ok(true)
    } else if present.is_empty() {
        state.writer.push_durable(entries).await.map(|()| false)
    } else {
        // Some of a batch: only a partial earlier store could do this; store the rest.
        entries.retain(|entry| !present.contains(&entry.id));
        state.writer.push_durable(entries).await.map(|()| false)
    };
    match result {
        Ok(replayed) => {
            state
                .ingest_keys
                .finish(&scoped_key, body_hash, ids.clone());
            created(&ids, replayed)
        }
        Err(cause) => {
            state.ingest_keys.release(&scoped_key);
            tracing::error!(%cause, "ingested entries could not be stored");
            store_unavailable()
        }
    }
}

fn store_unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit store cannot take entries now",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the answer has a body");
        serde_json::from_slice(&bytes).expect("the answer is JSON")
    }

    /// One request per key at a time: another while the first is being stored is told to retry;
    /// once stored, a retry gets the first ids and another body is refused; a key whose entries
    /// could not be stored is free again for the client's retry.
    #[tokio::test]
    async fn a_key_is_held_while_its_entries_are_stored_then_answers_retries() {
        let keys = IdempotencyKeys::default();
        let body_hash = [1; 32];
        assert!(keys.claim("reporter\nk1", body_hash).is_ok());
        let busy = keys.claim("reporter\nk1", body_hash).expect_err("held");
        assert_eq!(busy.status(), StatusCode::CONFLICT);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");

        keys.release("reporter\nk1");
        assert!(keys.claim("reporter\nk1", body_hash).is_ok());
        keys.finish("reporter\nk1", body_hash, vec!["evt_1".to_string()]);
        let replay = keys.claim("reporter\nk1", body_hash).expect_err("answered");
        assert_eq!(replay.status(), StatusCode::OK);
        assert_eq!(
            json_body(*replay).await,
            json!({"ids": ["evt_1"], "count": 1, "replayed": true})
        );
        let other = keys
            .claim("reporter\nk1", [2; 32])
            .expect_err("another body");
        assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
        // Keys are per token: another token's same key is its own.
        assert!(keys.claim("other\nk1", body_hash).is_ok());
    }
}
