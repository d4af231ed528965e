//! `GET /api/v1/export?format=csv|json|ndjson&<filters>`: the matching entries as a download,
//! streamed.
//!
//! The body is produced chunk by chunk as the client reads it: an [`ExportReader`] chunk is read
//! on the blocking pool, encoded, and handed to hyper, which asks for the next only once the
//! previous one is on its way. Memory stays at about one chunk whatever the export's size.
//!
//! The `audit.export` entry is written when the last bytes are handed to the connection, with
//! the row count; if the body is dropped before that (the client went away, the store failed) it
//! is written then, marked incomplete with the rows sent so far, so a partial download is on
//! record too. A failure after the headers were sent aborts the
//! connection instead of ending the body, so a client never mistakes a cut-short file for a
//! whole one.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::Value;

use super::api::{blocking, invalid_params_json, params_json, query_pairs};
use super::audit::{self, AdminAction, RequestInfo, AUDIT_EXPORT};
use super::auth::Caller;
use super::error::ApiError;
use super::AdminState;
use crate::entry::Outcome;
use crate::export::{export_file_name, ExportEncoder, ExportFormat, ExportReader};
use crate::store::query::{parse_filter_and_page, ParamError};

pub async fn export(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_pairs(query.as_deref());
    let mut action = AdminAction::new(AUDIT_EXPORT, StatusCode::OK);
    match prepare(&state, &params).await {
        Ok((format, reader)) => {
            action
                .metadata
                .insert("format".into(), Value::from(format.file_extension()));
            action
                .metadata
                .insert("filters".into(), params_json(&params, &["format"]));
            let run = ExportRun {
                state,
                reader: Some(reader),
                encoder: ExportEncoder::new(format),
                stage: Stage::Begin,
                record: Some(Record {
                    caller,
                    info,
                    action,
                }),
                rows: 0,
                failure: None,
            };
            let file_name = export_file_name(format, Utc::now());
            let disposition =
                HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
                    .unwrap_or(HeaderValue::from_static("attachment"));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                Body::from_stream(run.into_stream()),
            )
                .into_response()
        }
        Err(error) => {
            action.status = error.status();
            if let ApiError::Params(errors) = &error {
                action
                    .metadata
                    .insert("invalid".into(), invalid_params_json(errors));
            }
            audit::record(&state, Some(&caller), &info, action);
            error.into_response()
        }
    }
}

/// Parses the parameters and takes the snapshot. `format` is required; `cursor` and `order`
/// work as in a listing (resume after a position, oldest first); `limit` and `count` are
/// refused, because an export holds every matching entry.
async fn prepare(
    state: &AdminState,
    params: &[(String, String)],
) -> Result<(ExportFormat, ExportReader), ApiError> {
    let mut errors = Vec::new();
    let formats: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name == "format")
        .map(|(_, value)| value.as_str())
        .collect();
    let format = match formats.as_slice() {
        [] => {
            errors.push(ParamError::new(
                "format",
                "is required: csv, json or ndjson",
            ));
            None
        }
        [one] => match one.parse::<ExportFormat>() {
            Ok(format) => Some(format),
            Err(error) => {
                errors.push(ParamError::new("format", error.to_string()));
                None
            }
        },
        _ => {
            errors.push(ParamError::new("format", "given more than once"));
            None
        }
    };
    for (name, _) in params {
        if matches!(name.as_str(), "limit" | "count") {
            errors.push(ParamError::new(
                name.clone(),
                "is not a parameter of export: an export holds every matching entry",
            ));
        }
    }
    let parsed = parse_filter_and_page(params, Utc::now(), &["format"]);
    let (filter, page) = match parsed {
        Ok(parsed) => parsed,
        Err(more) => {
            errors.extend(more);
            return Err(ApiError::Params(errors));
        }
    };
    let Some(format) = format.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Params(errors));
    };
    let reader = blocking(state, move |store| {
        ExportReader::start(store, filter, page.order, page.cursor)
    })
    .await?;
    Ok((format, reader))
}

enum Stage {
    Begin,
    Chunks,
    Finish,
    Done,
}

/// What the `audit.export` entry needs; taken (and written) exactly once, on drop.
struct Record {
    caller: Caller,
    info: RequestInfo,
    action: AdminAction,
}

/// One export in progress: the state the body stream carries between chunks.
struct ExportRun {
    state: AdminState,
    /// Moved to the blocking pool while a chunk is read, and back.
    reader: Option<ExportReader>,
    encoder: ExportEncoder,
    stage: Stage,
    record: Option<Record>,
    rows: u64,
    /// Why the export stopped early, when it did because of us rather than the client.
    failure: Option<String>,
}

impl ExportRun {
    fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut run| async move {
            match run.next_bytes().await {
                Ok(Some(bytes)) => Some((Ok(bytes), run)),
                Ok(None) => None,
                Err(error) => {
                    tracing::error!(%error, rows = run.rows, "export failed part way; aborting the download");
                    run.failure = Some("the export failed part way".to_string());
                    run.stage = Stage::Done;
                    Some((Err(std::io::Error::other("export failed")), run))
                }
            }
        })
    }

    /// The next non-empty piece of the body, `None` at the end.
    async fn next_bytes(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let bytes = match self.stage {
                Stage::Begin => {
                    self.stage = Stage::Chunks;
                    self.encoder.begin()
                }
                Stage::Chunks => match self.next_chunk().await? {
                    Some(entries) => {
                        self.rows += entries.len() as u64;
                        self.encoder.encode(&entries).map_err(|error| {
                            ApiError::Internal(format!("export encoding: {error}"))
                        })?
                    }
                    None => {
                        self.stage = Stage::Finish;
                        continue;
                    }
                },
                Stage::Finish => {
                    self.stage = Stage::Done;
                    let bytes = self.encoder.finish();
                    self.complete();
                    bytes
                }
                Stage::Done => return Ok(None),
            };
            if !bytes.is_empty() {
                return Ok(Some(Bytes::from(bytes)));
            }
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Vec<crate::entry::AuditEntry>>, ApiError> {
        let Some(mut reader) = self.reader.take() else {
            return Ok(None);
        };
        let (reader, chunk) = blocking(&self.state, move |store| {
            let chunk = reader.next_chunk(store);
            Ok((reader, chunk))
        })
        .await?;
        self.reader = Some(reader);
        Ok(chunk?)
    }

    /// Records the finished export now, while the last bytes go out, rather than whenever the
    /// connection drops the body.
    fn complete(&mut self) {
        if let Some(record) = self.record.take() {
            self.write_record(record, true);
        }
    }

    fn write_record(&self, record: Record, complete: bool) {
        let Record {
            caller,
            info,
            mut action,
        } = record;
        action
            .metadata
            .insert("rows".into(), Value::from(self.rows));
        action
            .metadata
            .insert("complete".into(), Value::from(complete));
        if !complete {
            action.outcome = Some(Outcome::Error);
            action.error = Some(
                self.failure
                    .clone()
                    .unwrap_or_else(|| "the client left before the export ended".to_string()),
            );
        }
        audit::record(&self.state, Some(&caller), &info, action);
    }
}

impl Drop for ExportRun {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.write_record(record, false);
        }
    }
}
