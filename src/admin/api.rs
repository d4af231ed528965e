//! The query endpoints: list, one entry, stats, and the reference product's `GET /api/audit-log`.
//!
//! Parameters are parsed by [`parse_filter_and_page`], the same code behind `auditgate query`,
//! so the API and the CLI agree on what every filter means. Store calls are blocking and run
//! through `spawn_blocking`. Every request, answered or refused, is recorded as `audit.query`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::audit::{self, AdminAction, RequestInfo, AUDIT_QUERY};
use super::caller::Caller;
use super::error::ApiError;
use super::AdminState;
use crate::entry::AuditEntry;
use crate::store::query::{parse_filter_and_page, Filter, ParamError, MAX_LIMIT, MAX_PARAM_BYTES};
use crate::store::{Page, StatsBy, Store, StoreError};

/// Entries per page of `GET /api/audit-log`, as in the reference product.
pub const AUDIT_LOG_PAGE_SIZE: u32 = 50;
/// Buckets `GET /api/v1/stats` returns when `limit` is not given: enough for a year of days or
/// a month of hours, so a chart is never cut short by default.
pub const STATS_DEFAULT_LIMIT: u32 = MAX_LIMIT;

/// Query-string pairs in order, percent-decoded. Order matters for error messages and
/// duplicates are kept so the parser can refuse them.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|raw| {
        form_urlencoded::parse(raw.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The parameters as a JSON object for an audit entry's metadata (parsed, so bounded). A
/// parameter given several times (`exclude_action_prefix`) becomes an array of its values, so
/// the record shows every one.
pub fn params_json(params: &[(String, String)], skip: &[&str]) -> Value {
    let mut object: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in params {
        if !skip.contains(&name.as_str()) {
            object
                .entry(name.as_str())
                .or_default()
                .push(value.as_str());
        }
    }
    let object: Map<String, Value> = object
        .into_iter()
        .map(|(name, values)| {
            let value = match values.as_slice() {
                [one] => Value::from(*one),
                many => Value::from(many.to_vec()),
            };
            (name.to_string(), value)
        })
        .collect();
    Value::Object(object)
}

/// The names of refused parameters, for the audit entry of a 400 (names only: the values are
/// what was wrong and may be anything).
pub fn invalid_params_json(errors: &[ParamError]) -> Value {
    Value::from(
        errors
            .iter()
            .take(20)
            .map(|error| error.param.clone())
            .collect::<Vec<_>>(),
    )
}

/// Runs a store call on the blocking pool.
pub async fn blocking<T, F>(state: &AdminState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = state.store.clone();
    Ok(tokio::task::spawn_blocking(move || work(store.as_ref())).await??)
}

/// Records the `audit.query` entry of a finished request and turns its result into the response.
fn answer(
    state: &AdminState,
    caller: &Caller,
    info: &RequestInfo,
    mut action: AdminAction,
    result: Result<Value, ApiError>,
) -> Response {
    match result {
        Ok(body) => {
            action.status = StatusCode::OK;
            audit::record(state, Some(caller), info, action);
            Json(body).into_response()
        }
        Err(error) => {
            action.status = error.status();
            if let ApiError::Params(errors) = &error {
                action
                    .metadata
                    .insert("invalid".into(), invalid_params_json(errors));
            }
            audit::record(state, Some(caller), info, action);
            error.into_response()
        }
    }
}

/// `GET /api/v1/entries`: one keyset page of the entries matching the filters.
pub async fn list_entries(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_pairs(query.as_deref());
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    let result = async {
        let (filter, page) =
            parse_filter_and_page(&params, Utc::now(), &[]).map_err(ApiError::Params)?;
        action
            .metadata
            .insert("filters".into(), params_json(&params, &[]));
        let listed = blocking(&state, move |store| store.list(&filter, &page)).await?;
        action
            .metadata
            .insert("rows".into(), Value::from(listed.entries.len()));
        Ok(page_json(&listed))
    }
    .await;
    answer(&state, &caller, &info, action, result)
}

/// The list response: `{"entries", "nextCursor", "prevCursor"}`, and `total` when counted.
pub fn page_json(page: &Page) -> Value {
    let mut object = Map::new();
    object.insert(
        "entries".into(),
        page.entries.iter().map(AuditEntry::to_api_json).collect(),
    );
    let cursor = |cursor: &Option<crate::store::query::Cursor>| {
        cursor
            .map(|cursor| Value::from(cursor.encode()))
            .unwrap_or(Value::Null)
    };
    object.insert("nextCursor".into(), cursor(&page.next_cursor));
    object.insert("prevCursor".into(), cursor(&page.prev_cursor));
    if let Some(total) = page.total {
        object.insert("total".into(), Value::from(total));
    }
    Value::Object(object)
}

/// The longest id looked up; ULIDs are 26 characters and sequence numbers at most 20 digits.
const MAX_ID_BYTES: usize = 128;

/// `GET /api/v1/entries/{id}`: one entry by ULID or sequence number.
pub async fn get_entry(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Response {
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    let shown: String = id.chars().take(64).collect();
    action.resource = Some(("entry", shown));
    let result = async {
        if id.len() > MAX_ID_BYTES {
            return Err(ApiError::NotFound("no such entry"));
        }
        let found = blocking(&state, move |store| store.get(&id)).await?;
        action
            .metadata
            .insert("rows".into(), Value::from(u8::from(found.is_some())));
        found
            .map(|entry| entry.to_api_json())
            .ok_or(ApiError::NotFound("no such entry"))
    }
    .await;
    answer(&state, &caller, &info, action, result)
}

/// `GET /api/v1/stats`: counts grouped `by` action, actor, day, hour or outcome, for the entries
/// matching the same filters as a listing.
pub async fn stats(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_pairs(query.as_deref());
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    let result = async {
        let (filter, by, limit) = parse_stats_params(&params).map_err(ApiError::Params)?;
        action
            .metadata
            .insert("filters".into(), params_json(&params, &[]));
        let (buckets, total) = blocking(&state, move |store| {
            Ok((store.stats(&filter, by, limit)?, store.count(&filter)?))
        })
        .await?;
        action
            .metadata
            .insert("rows".into(), Value::from(buckets.len()));
        Ok(json!({"by": by.as_str(), "buckets": buckets, "total": total}))
    }
    .await;
    answer(&state, &caller, &info, action, result)
}

/// The parameters of stats: the listing's filters, `by` (default `day`) and `limit` (default
/// [`STATS_DEFAULT_LIMIT`]). Paging parameters mean nothing here and are refused.
fn parse_stats_params(
    params: &[(String, String)],
) -> Result<(Filter, StatsBy, u32), Vec<ParamError>> {
    let mut errors = Vec::new();
    let mut by = StatsBy::Day;
    let mut by_seen = false;
    for (name, value) in params {
        match name.as_str() {
            "by" if by_seen => errors.push(ParamError::new("by", "given more than once")),
            "by" => {
                by_seen = true;
                match value.parse() {
                    Ok(parsed) => by = parsed,
                    Err(error) => errors.push(ParamError::new("by", error.to_string())),
                }
            }
            "cursor" | "order" | "count" => errors.push(ParamError::new(
                name.clone(),
                "is not a parameter of stats (only of listings)",
            )),
            _ => {}
        }
    }
    let limit_given = params.iter().any(|(name, _)| name == "limit");
    let listing: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "by" | "cursor" | "order" | "count"))
        .cloned()
        .collect();
    match parse_filter_and_page(&listing, Utc::now(), &[]) {
        Ok((filter, page)) if errors.is_empty() => {
            let limit = if limit_given {
                page.limit
            } else {
                STATS_DEFAULT_LIMIT
            };
            Ok((filter, by, limit))
        }
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// `GET /api/audit-log?page=&action=`: the reference product's endpoint, answer for answer:
/// `{logs, total}`, 50 a page, `action` as a case-insensitive substring, newest first, the
/// reference's field names. Other parameters are ignored, as the reference ignores them.
pub async fn audit_log(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_pairs(query.as_deref());
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    let result = async {
        let (page, action_filter) = parse_audit_log_params(&params).map_err(ApiError::Params)?;
        // Only what was used: the parameters this endpoint ignores may be anything, any size.
        action.metadata.insert(
            "filters".into(),
            json!({"page": page, "action": action_filter}),
        );
        let filter = Filter {
            action_contains: action_filter,
            ..Filter::default()
        };
        let offset = u64::from(page - 1) * u64::from(AUDIT_LOG_PAGE_SIZE);
        let (logs, total) = blocking(&state, move |store| {
            Ok((
                store.list_offset(&filter, offset, AUDIT_LOG_PAGE_SIZE)?,
                store.count(&filter)?,
            ))
        })
        .await?;
        action
            .metadata
            .insert("rows".into(), Value::from(logs.len()));
        let logs: Vec<Value> = logs.iter().map(reference_json).collect();
        Ok(json!({"logs": logs, "total": total}))
    }
    .await;
    answer(&state, &caller, &info, action, result)
}

/// `page` (1-based; absent or empty is 1) and `action` (absent or empty is no filter, as in the
/// reference, where an empty string is falsy).
fn parse_audit_log_params(
    params: &[(String, String)],
) -> Result<(u32, Option<String>), Vec<ParamError>> {
    let mut errors = Vec::new();
    let mut page = 1;
    let mut action = None;
    for (name, value) in params {
        match name.as_str() {
            "page" if value.is_empty() => {}
            "page" => match value.parse::<u32>() {
                Ok(number) if number >= 1 && value.bytes().all(|b| b.is_ascii_digit()) => {
                    page = number
                }
                _ => errors.push(ParamError::new("page", "must be a whole number from 1")),
            },
            "action" if value.len() > MAX_PARAM_BYTES => errors.push(ParamError::new(
                "action",
                format!("is longer than {MAX_PARAM_BYTES} bytes"),
            )),
            "action" if !value.is_empty() => action = Some(value.clone()),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok((page, action))
    } else {
        Err(errors)
    }
}

/// An entry as the reference's pages expect it: the API form, with `actorId` and `actorEmail`
/// never null (they are required strings in the reference's schema).
pub fn reference_json(entry: &AuditEntry) -> Value {
    let mut json = entry.to_api_json();
    if let Value::Object(object) = &mut json {
        for key in ["actorId", "actorEmail"] {
            if object.get(key).is_none_or(Value::is_null) {
                object.insert(key.into(), Value::from(""));
            }
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn query_pairs_decode_in_order_and_keep_duplicates() {
        assert_eq!(
            query_pairs(Some("q=a%20b&action=x+y&action=z&empty=")),
            pairs(&[
                ("q", "a b"),
                ("action", "x y"),
                ("action", "z"),
                ("empty", "")
            ])
        );
        assert!(query_pairs(None).is_empty());
    }

    #[test]
    fn params_json_keeps_every_value_of_a_repeated_parameter() {
        let params = pairs(&[
            ("exclude_action_prefix", "audit."),
            ("actor", "u1"),
            ("format", "csv"),
            ("exclude_action_prefix", "http."),
        ]);
        assert_eq!(
            params_json(&params, &["format"]),
            json!({"actor": "u1", "exclude_action_prefix": ["audit.", "http."]})
        );
    }

    #[test]
    fn stats_parameters() {
        let (filter, by, limit) =
            parse_stats_params(&pairs(&[("by", "action"), ("action_prefix", "user.")]))
                .expect("valid");
        assert_eq!(by, StatsBy::Action);
        assert_eq!(limit, STATS_DEFAULT_LIMIT);
        assert_eq!(filter.action_prefix.as_deref(), Some("user."));
        let (filter, _, _) = parse_stats_params(&pairs(&[
            ("exclude_action_prefix", "audit."),
            ("exclude_action_prefix", "http."),
        ]))
        .expect("valid");
        assert_eq!(filter.exclude_action_prefixes, ["audit.", "http."]);
        let (_, by, limit) = parse_stats_params(&pairs(&[("limit", "8")])).expect("valid");
        assert_eq!((by, limit), (StatsBy::Day, 8));
        let errors = parse_stats_params(&pairs(&[
            ("by", "week"),
            ("cursor", "x"),
            ("limit", "0"),
            ("by", "day"),
        ]))
        .expect_err("invalid");
        let names: Vec<&str> = errors.iter().map(|error| error.param.as_str()).collect();
        assert_eq!(names, ["by", "cursor", "by", "limit"]);
    }

    #[test]
    fn audit_log_parameters_follow_the_reference() {
        assert_eq!(parse_audit_log_params(&[]), Ok((1, None)));
        assert_eq!(
            parse_audit_log_params(&pairs(&[("page", "3"), ("action", "user"), ("x", "y")])),
            Ok((3, Some("user".into())))
        );
        assert_eq!(
            parse_audit_log_params(&pairs(&[("page", ""), ("action", "")])),
            Ok((1, None))
        );
        for bad in ["0", "-1", "+2", "two", "1.5", "99999999999"] {
            let errors = parse_audit_log_params(&pairs(&[("page", bad)])).expect_err(bad);
            assert_eq!(errors[0].param, "page");
        }
    }

    #[test]
    fn reference_json_never_has_null_actor_strings() {
        let entry = AuditEntry::new("log", "user.deleted");
        let json = reference_json(&entry);
        assert_eq!(json["actorId"], "");
        assert_eq!(json["actorEmail"], "");
        assert_eq!(json["resourceType"], Value::Null);
        let mut known = AuditEntry::new("log", "user.deleted");
        known.actor_email = Some("a@example.com".into());
        assert_eq!(reference_json(&known)["actorEmail"], "a@example.com");
    }
}
