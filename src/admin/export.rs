//! `GET /api/v1/export?format=csv|json|ndjson|ocsf&<filters>`: the matching entries as a download,
//! streamed. With `proofs=true` (NDJSON only) every line also carries the entry's leaf hash and
//! inclusion proof against the latest signed head, which ends the file, so an auditor checks it
//! offline with `auditgate verify-export` ([`crate::export::proofs`] writes it).
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
use super::caller::Caller;
use super::error::ApiError;
use super::AdminState;
use crate::entry::Outcome;
use crate::export::proofs::{
    write_export_with_proofs, write_signed_export_with_proofs, ProofError,
};
use crate::export::{export_file_name, ExportEncoder, ExportFormat, ExportReader};
use crate::log::head::SignedTreeHead;
use crate::store::query::{parse_filter_and_page, Filter, ParamError};

pub async fn export(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_pairs(query.as_deref());
    let mut action = AdminAction::new(AUDIT_EXPORT, StatusCode::OK);
    match prepare(&state, &params).await {
        Ok(prepared) => {
            let format = match &prepared {
                Prepared::Plain(format, _) => *format,
                Prepared::Proofs { .. } => ExportFormat::Ndjson,
            };
            action
                .metadata
                .insert("format".into(), Value::from(format.name()));
            action.metadata.insert(
                "filters".into(),
                params_json(&params, &["format", "proofs"]),
            );
            let record = Record {
                caller,
                info,
                action,
            };
            let file_name = export_file_name(format, Utc::now());
            let disposition =
                HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
                    .unwrap_or(HeaderValue::from_static("attachment"));
            let body = match prepared {
                Prepared::Plain(format, reader) => Body::from_stream(
                    ExportRun {
                        state,
                        reader: Some(reader),
                        encoder: ExportEncoder::new(format),
                        stage: Stage::Begin,
                        record: Some(record),
                        rows: 0,
                        failure: None,
                    }
                    .into_stream(),
                ),
                Prepared::Proofs { filter, head } => {
                    Body::from_stream(proof_stream(state, filter, head, record))
                }
            };
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
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

/// A checked export request, ready to stream.
enum Prepared {
    Plain(ExportFormat, ExportReader),
    /// NDJSON with proofs against `head`, the latest signed head when the export began.
    Proofs {
        filter: Filter,
        head: SignedTreeHead,
    },
}

/// `proofs=true|false`, at most once.
fn parse_proofs(params: &[(String, String)], errors: &mut Vec<ParamError>) -> bool {
    let values: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name == "proofs")
        .map(|(_, value)| value.as_str())
        .collect();
    match values.as_slice() {
        [] | ["false"] => false,
        ["true"] => true,
        [_] => {
            errors.push(ParamError::new("proofs", "must be true or false"));
            false
        }
        _ => {
            errors.push(ParamError::new("proofs", "given more than once"));
            false
        }
    }
}

/// Parses the parameters and takes the snapshot. `format` is required; `cursor` and `order`
/// work as in a listing (resume after a position, oldest first); `limit` and `count` are
/// refused, because an export holds every matching entry.
async fn prepare(state: &AdminState, params: &[(String, String)]) -> Result<Prepared, ApiError> {
    let mut errors = Vec::new();
    let proofs = parse_proofs(params, &mut errors);
    let formats: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name == "format")
        .map(|(_, value)| value.as_str())
        .collect();
    let format = match formats.as_slice() {
        [] => {
            errors.push(ParamError::new(
                "format",
                "is required: csv, json, ndjson or ocsf",
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
    if proofs {
        if format.is_some_and(|format| format != ExportFormat::Ndjson) {
            errors.push(ParamError::new(
                "proofs",
                "only with format=ndjson: each line carries its entry's proof",
            ));
        }
        for (name, value) in params {
            // The proofs lead to one head, so the file is the whole covered log in log order.
            if name == "cursor" || (name == "order" && value != "asc") {
                errors.push(ParamError::new(
                    name.clone(),
                    "is not a parameter of an export with proofs: it holds every matching entry \
                     the signed head covers, oldest first",
                ));
            }
        }
    }
    let parsed = parse_filter_and_page(params, Utc::now(), &["format", "proofs"]);
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
    if proofs {
        let head = blocking(state, |store| store.latest_head()).await?;
        let Some(head) = head else {
            return Err(ApiError::Refused(
                StatusCode::CONFLICT,
                "no signed tree head yet: proofs need a [log] signing_key and a first head \
                 (signed within sign_interval of the first entries)"
                    .to_string(),
            ));
        };
        return Ok(Prepared::Proofs { filter, head });
    }
    let reader = blocking(state, move |store| {
        ExportReader::start(store, filter, page.order, page.cursor)
    })
    .await?;
    Ok(Prepared::Plain(format, reader))
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
        write_record(
            &self.state,
            record,
            self.rows,
            complete,
            self.failure.as_deref(),
        );
    }
}

/// Writes the `audit.export` entry of an export: its row count, and whether it ended.
fn write_record(
    state: &AdminState,
    record: Record,
    rows: u64,
    complete: bool,
    failure: Option<&str>,
) {
    let Record {
        caller,
        info,
        mut action,
    } = record;
    action.metadata.insert("rows".into(), Value::from(rows));
    action
        .metadata
        .insert("complete".into(), Value::from(complete));
    if !complete {
        action.outcome = Some(Outcome::Error);
        action.error = Some(
            failure
                .unwrap_or("the client left before the export ended")
                .to_string(),
        );
    }
    audit::record(state, Some(&caller), &info, action);
}

impl Drop for ExportRun {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.write_record(record, false);
        }
    }
}

/// Bytes the proof writer hands over per message, and how many messages may wait: memory stays
/// at about this much whatever the export's size.
const PROOF_CHUNK: usize = 64 * 1024;
const PROOF_CHUNKS_WAITING: usize = 4;

/// A `Write` on the blocking pool that hands full chunks to the response body through a bounded
/// channel, so the writer waits for the client instead of buffering the export.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(PROOF_CHUNK),
        ));
        self.sender.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= PROOF_CHUNK {
            self.send_buffer()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

/// One export with proofs in progress: the body stream's state.
struct ProofRun {
    state: AdminState,
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    writer: Option<tokio::task::JoinHandle<Result<u64, ProofError>>>,
    record: Option<Record>,
    /// Lines handed to the client so far (the head line included once it went).
    lines: u64,
    failure: Option<String>,
}

impl Drop for ProofRun {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            write_record(
                &self.state,
                record,
                self.lines,
                false,
                self.failure.as_deref(),
            );
        }
    }
}

fn proof_stream(
    state: AdminState,
    filter: Filter,
    head: SignedTreeHead,
    record: Record,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (sender, chunks) = tokio::sync::mpsc::channel(PROOF_CHUNKS_WAITING);
    let store = state.store.clone();
    let signer = state.log.signer();
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            sender,
            buffer: Vec::with_capacity(PROOF_CHUNK),
        };
        let rows = match &signer {
            Some(signer) => write_signed_export_with_proofs(
                store.as_ref(),
                &filter,
                &head,
                signer.clone(),
                &mut out,
            )?,
            None => write_export_with_proofs(store.as_ref(), &filter, &head, &mut out)?,
        };
        std::io::Write::flush(&mut out)?;
        Ok(rows)
    });
    let run = ProofRun {
        state,
        chunks,
        writer: Some(writer),
        record: Some(record),
        lines: 0,
        failure: None,
    };
    futures_util::stream::unfold(run, |mut run| async move {
        if let Some(chunk) = run.chunks.recv().await {
            run.lines += chunk.iter().filter(|byte| **byte == b'\n').count() as u64;
            return Some((Ok(chunk), run));
        }
        // The writer finished (or failed): the channel closed behind its last chunk.
        let writer = run.writer.take()?;
        let failure = match writer.await {
            Ok(Ok(rows)) => {
                if let Some(record) = run.record.take() {
                    write_record(&run.state, record, rows, true, None);
                }
                return None;
            }
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::error!(error = %failure, lines = run.lines, "export with proofs failed part way; aborting the download");
        run.failure = Some("the export failed part way".to_string());
        // An error instead of an end: the client sees a cut connection, never a short file.
        Some((Err(std::io::Error::other("export failed")), run))
    })
}
