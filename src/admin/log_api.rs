//! The log's tamper-evidence endpoints on the admin listener.
//!
//! - `GET /api/v1/log/head` — the latest signed tree head:
//!   `{"logId","size","rootHash"(hex),"timestamp","keyId","signature"(base64)}`;
//!   404 `{"error":"no signed tree head yet"}`.
//! - `GET /api/v1/log/checkpoint` — the latest signed tree head as a C2SP checkpoint (a signed
//!   note, `text/plain; charset=utf-8`; see [`crate::log::checkpoint`]) followed by the stored
//!   witness cosignatures of that checkpoint ([`crate::store::cosigned_checkpoint`]); 404 when no signing key
//!   is configured or no head is signed yet, 409 when the latest stored head does not verify under
//!   the running key (signed by a key since rotated, or altered in the database).
//! - `GET /api/v1/log/key` — the public key heads are signed with:
//!   `{"algorithm":"Ed25519","keyId","publicKeyPem","origin","vkey"}` (`vkey` verifies the
//!   checkpoints); 404 when no signing key is configured.
//! - `GET /api/v1/log/consistency?from=M&to=N` — RFC 9162 consistency proof between sizes
//!   (`to` defaults to the latest head's size): `{"from","to","fromRoot","toRoot","proof":[hex]}`.
//! - `GET /api/v1/entries/{id}/proof` — inclusion proof of an entry (by id, or by sequence number,
//!   which also works for pruned entries) against the latest head:
//!   `{"seq","leafIndex","leafHash","treeSize","auditPath":[hex],"head":{...},"pruned","prunedBy"}`;
//!   409 when no signed head covers the entry yet, 404 when there is no such entry.
//! - `GET /api/v1/entries/{id}/tlog-proof` — the entry's offline proof in the C2SP tlog-proof
//!   form (`text/plain; charset=utf-8`, an attachment `entry-<seq>.tlog-proof`; see
//!   [`crate::log::tlog_proof`]) against the latest checkpoint; audited as a read of the entry.
//!   404 when there is no such entry, 410 when retention pruned it, 409 when no signing key is
//!   configured, no signed head covers the entry yet, or the latest head does not verify.
//! - `GET /api/v1/verify[?full=true]` — the check of `auditgate verify`, resumed from where the
//!   last call stopped (cheap to call often; `full=true` starts over and re-reads everything):
//!   `{"ok","size","checkedAt","firstBadSeq","problem","problems":[{seq,message}],"mode",...}`.
//!   Both modes also compare the store with the newest head in each `file:` heads target, so a
//!   store rolled back behind what it published is reported whichever mode is asked for.
//!
//! Errors are `{"error": "..."}`; a store failure is logged and answered 500 without details.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use axum::Json;
use serde_json::{json, Value};

use super::audit::{self, AdminAction, RequestInfo, AUDIT_QUERY};
use super::caller::Caller;
use super::error::ApiError;
use super::AdminState;
use crate::log::checkpoint::VerifierKey;
use crate::log::head::{HeadError, LogVerifier, SignedTreeHead};
use crate::log::merkle::to_hex;
use crate::log::tlog_proof::FILE_EXTENSION;
use crate::signer::SignerStats;
use crate::store::Store;
use crate::verify::check::{HeadOrigin, HeadToCheck, LogCheck};

/// What the log endpoints keep between requests.
pub struct LogApiState {
    public_key: Option<LogVerifier>,
    /// The log's signing key: exports with proofs sign their manifest with it.
    signer: Option<Arc<crate::log::head::LogSigner>>,
    signer_stats: Option<Arc<SignerStats>>,
    /// The checkpoints' origin (`[log] origin`, or the log id when not given).
    checkpoint_origin: Option<String>,
    /// `[log] public_tiles`: `/tlog/` is served without a token.
    public_tiles: bool,
    verify: Mutex<IncrementalVerify>,
}

struct IncrementalVerify {
    check: LogCheck,
    /// The id of the last stored head handed to the check.
    last_head_id: u64,
    /// The `file:` heads targets, read on from where the last call stopped.
    published: Vec<crate::verify::PublishedHeads>,
}

impl LogApiState {
    /// `public_key` checks head signatures in `/verify` and is served at `/log/key`.
    pub fn new(
        public_key: Option<LogVerifier>,
        signer_stats: Option<Arc<SignerStats>>,
    ) -> LogApiState {
        let keys = public_key.iter().cloned().collect();
        LogApiState {
            public_key,
            signer: None,
            signer_stats,
            checkpoint_origin: None,
            public_tiles: false,
            verify: Mutex::new(IncrementalVerify {
                check: LogCheck::new(keys),
                last_head_id: 0,
                published: Vec::new(),
            }),
        }
    }

    /// Compares the store, on every `/verify`, with the newest head of `log_id` in each heads
    /// file (signed by one of `keys`, when given).
    pub fn with_heads_files(
        self,
        files: &[std::path::PathBuf],
        log_id: &str,
        keys: Vec<LogVerifier>,
    ) -> LogApiState {
        {
            let mut verify = self.verify.lock().unwrap_or_else(PoisonError::into_inner);
            verify.published = files
                .iter()
                .map(|path| crate::verify::PublishedHeads::new(path.clone(), log_id, keys.clone()))
                .collect();
        }
        self
    }

    /// Signs the manifests of exports with proofs with the log's key.
    pub fn with_signer(mut self, signer: Option<Arc<crate::log::head::LogSigner>>) -> LogApiState {
        self.signer = signer;
        self
    }

    /// The origin of the checkpoints served at `/log/checkpoint`.
    pub fn with_checkpoint_origin(mut self, origin: String) -> LogApiState {
        self.checkpoint_origin = Some(origin);
        self
    }

    /// Serves the tlog tiles under `/tlog/` without a token.
    pub fn with_public_tiles(mut self, public: bool) -> LogApiState {
        self.public_tiles = public;
        self
    }

    /// Whether `/tlog/` is served without a token.
    pub fn public_tiles(&self) -> bool {
        self.public_tiles
    }

    /// The log's signing key, if the sidecar has one.
    pub fn signer(&self) -> Option<Arc<crate::log::head::LogSigner>> {
        self.signer.clone()
    }

    pub fn signer_stats(&self) -> Option<&SignerStats> {
        self.signer_stats.as_deref()
    }
}

/// Runs store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(format!("task failed: {error}")))?
}

pub(crate) async fn head(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let head = blocking(move || Ok(store.latest_head()?)).await?;
    match head {
        Some(head) => Ok(Json(json!(head))),
        None => Err(ApiError::Refused(
            StatusCode::NOT_FOUND,
            "no signed tree head yet".into(),
        )),
    }
}

/// The origin of the log's checkpoints, by default its id.
fn checkpoint_origin(state: &AdminState) -> String {
    state
        .log
        .checkpoint_origin
        .clone()
        .unwrap_or_else(|| state.log_id.to_string())
}

/// The latest head as a signed checkpoint. The checkpoint is signed here, on request, and only
/// for a stored head whose signature verifies under the running key: someone who can write the
/// database but has not the key cannot make the sidecar sign a root it never signed. Ed25519 is
/// deterministic, so the same head always gives the same checkpoint.
pub(crate) async fn checkpoint(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let (_, note) = latest_checkpoint(&state, StatusCode::NOT_FOUND).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// The latest stored head and its signed checkpoint note: the one place the log's checkpoint is
/// rendered, for `/log/checkpoint` and for the tlog proofs of entries. `missing` is the status
/// of a refusal for a missing key or head (`/log/checkpoint` answers 404; a proof of an entry that
/// exists answers 409, the entry being there but its proof not yet).
async fn latest_checkpoint(
    state: &AdminState,
    missing: StatusCode,
) -> Result<(SignedTreeHead, String), ApiError> {
    let (Some(signer), Some(public_key)) = (state.log.signer.clone(), &state.log.public_key) else {
        return Err(ApiError::Refused(
            missing,
            "no signing key is configured ([log] signing_key)".into(),
        ));
    };
    let store = state.store.clone();
    let Some(head) = blocking(move || Ok(store.latest_head()?)).await? else {
        return Err(ApiError::Refused(missing, "no signed tree head yet".into()));
    };
    match public_key.verify(&head) {
        Ok(()) => {}
        Err(HeadError::WrongKey { expected, found }) => {
            return Err(ApiError::Refused(
                StatusCode::CONFLICT,
                format!(
                    "the latest head is signed by key {found}, not by the running key \
                     {expected}; the next head signed has a checkpoint"
                ),
            ))
        }
        Err(error) => {
            tracing::error!(size = head.head.size, %error, "the latest stored tree head does not verify under the log's key; not signing a checkpoint of it");
            return Err(ApiError::Refused(
                StatusCode::CONFLICT,
                "the latest stored head does not verify under the log's key; no checkpoint is \
                 signed for it (see /api/v1/verify)"
                    .into(),
            ));
        }
    }
    let note = signer
        .sign_checkpoint(&checkpoint_origin(state), &head.head)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    // The witnesses' cosignatures of this checkpoint go after the log's own signature.
    let store = state.store.clone();
    let note =
        blocking(move || Ok(crate::store::cosigned_checkpoint(store.as_ref(), &note)?)).await?;
    Ok((head, note))
}

/// `GET /api/v1/entries/{id}/tlog-proof`: the entry's offline proof in the C2SP tlog-proof form
/// ([`crate::log::tlog_proof`]) against the latest checkpoint, as a download. It carries the
/// entry's content, so it is audited as a read of the entry (`audit.query`).
pub(crate) async fn tlog_proof(
    State(state): State<AdminState>,
    caller: Caller,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Response {
    let mut action = AdminAction::new(AUDIT_QUERY, StatusCode::OK);
    action.resource = Some(("entry", id.chars().take(64).collect()));
    action
        .metadata
        .insert("proof".into(), Value::from("tlog-proof"));
    let result = tlog_proof_of(&state, id).await;
    action
        .metadata
        .insert("rows".into(), Value::from(u8::from(result.is_ok())));
    match result {
        Ok((seq, text)) => {
            audit::record(&state, Some(&caller), &info, action);
            let disposition = format!("attachment; filename=\"entry-{seq}.{FILE_EXTENSION}\"");
            (
                [
                    (
                        header::CONTENT_TYPE,
                        "text/plain; charset=utf-8".to_string(),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                text,
            )
                .into_response()
        }
        Err(error) => {
            action.status = error.status();
            audit::record(&state, Some(&caller), &info, action);
            error.into_response()
        }
    }
}

/// The entry `id` names (an id or a sequence number) and its tlog proof as text.
async fn tlog_proof_of(state: &AdminState, id: String) -> Result<(u64, String), ApiError> {
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::NotFound("no such entry"));
    }
    let store = state.store.clone();
    let entry = blocking(move || {
        let Some((seq, pruned_by)) = resolve_seq(store.as_ref(), &id)? else {
            return Err(ApiError::NotFound("no such entry"));
        };
        if let Some(pruned_by) = pruned_by {
            return Err(ApiError::Refused(
                StatusCode::GONE,
                format!(
                    "entry {seq} was pruned by retention (entry {pruned_by}); its content is \
                     gone, so there is nothing for a tlog proof to carry (its leaf is still \
                     proved by /api/v1/entries/{seq}/proof)"
                ),
            ));
        }
        store
            .get(&seq.to_string())?
            .ok_or(ApiError::NotFound("no such entry"))
    })
    .await?;
    let (head, note) = latest_checkpoint(state, StatusCode::CONFLICT).await?;
    if head.head.size < entry.seq {
        return Err(ApiError::Refused(
            StatusCode::CONFLICT,
            format!(
                "no signed tree head covers entry {} yet (the latest covers {}); the next one will",
                entry.seq, head.head.size
            ),
        ));
    }
    let store = state.store.clone();
    blocking(move || {
        let proof = crate::export::proofs::entry_tlog_proof(store.as_ref(), &entry, &head, note)
            .map_err(|error| match error {
                crate::export::proofs::ProofError::Store(error) => ApiError::from(error),
                other => ApiError::Internal(other.to_string()),
            })?;
        Ok((entry.seq, proof.format()))
    })
    .await
}

/// The longest id looked up; ULIDs are 26 characters and sequence numbers at most 20 digits.
const MAX_ID_BYTES: usize = 128;

pub(crate) async fn key(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let Some(key) = &state.log.public_key else {
        return Err(ApiError::Refused(
            StatusCode::NOT_FOUND,
            "no signing key is configured ([log] signing_key)".into(),
        ));
    };
    let pem = key
        .to_public_pem()
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let origin = checkpoint_origin(&state);
    let vkey =
        VerifierKey::new(&origin, key).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(json!({
        "algorithm": "Ed25519",
        "keyId": key.key_id(),
        "publicKeyPem": pem,
        "origin": origin,
        "vkey": vkey.to_string(),
    })))
}

/// The value of a query parameter given at most once. Parsed by hand rather than by axum's
/// `Query`, whose refusals (a repeated name, say) are plain text instead of the API's JSON error.
fn single_param(pairs: &[(String, String)], name: &str) -> Result<Option<String>, ApiError> {
    let mut values = pairs
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value);
    let first = values.next().cloned();
    if values.next().is_some() {
        return Err(ApiError::Refused(
            StatusCode::BAD_REQUEST,
            format!("{name} is given more than once"),
        ));
    }
    Ok(first)
}

fn size_param(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                ApiError::Refused(
                    StatusCode::BAD_REQUEST,
                    format!("{name} must be a tree size (a whole number)"),
                )
            })
        })
        .transpose()
}

pub(crate) async fn consistency(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = super::api::query_pairs(query.as_deref());
    let from = size_param("from", single_param(&pairs, "from")?.as_deref())?
        .ok_or_else(|| ApiError::Refused(StatusCode::BAD_REQUEST, "from is required".into()))?;
    let to = size_param("to", single_param(&pairs, "to")?.as_deref())?;
    let store = state.store.clone();
    blocking(move || {
        let to = match to {
            Some(to) => to,
            None => match store.latest_head()? {
                Some(head) => head.head.size,
                None => store.tree_size()?,
            },
        };
        let size = store.tree_size()?;
        if from > to || to > size {
            return Err(ApiError::Refused(
                StatusCode::BAD_REQUEST,
                format!("need from <= to <= {size} (the log's size); got from={from} to={to}"),
            ));
        }
        let proof = store.consistency_proof(from, to)?;
        Ok(Json(json!({
            "from": from,
            "to": to,
            "fromRoot": to_hex(&store.root_at(from)?),
            "toRoot": to_hex(&store.root_at(to)?),
            "proof": proof.iter().map(to_hex).collect::<Vec<_>>(),
        })))
    })
    .await
}

/// The sequence number `id` names: an entry's id or sequence number, or the sequence number of
/// a pruned entry. `None` when it names nothing.
fn resolve_seq(store: &dyn Store, id: &str) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    if let Some(entry) = store.get(id)? {
        // In a database shared by several logs, this log's tree proves only its own entries.
        if let Some(own) = store.log_scope() {
            if entry.log_id != own {
                return Err(ApiError::Refused(
                    StatusCode::CONFLICT,
                    format!(
                        "entry {id} is in log {:?}; its proof comes from that log's sidecar",
                        entry.log_id
                    ),
                ));
            }
        }
        return Ok(Some((entry.seq, None)));
    }
    let is_decimal = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    let Some(seq) = id.parse::<u64>().ok().filter(|_| is_decimal) else {
        return Ok(None);
    };
    Ok(store.pruned_record(seq)?.map(|record| (seq, Some(record))))
}

pub(crate) async fn proof(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        let Some((seq, pruned_by)) = resolve_seq(store.as_ref(), &id)? else {
            return Err(ApiError::Refused(
                StatusCode::NOT_FOUND,
                "no such entry".into(),
            ));
        };
        let Some(head) = store.latest_head()? else {
            return Err(ApiError::Refused(
                StatusCode::CONFLICT,
                "no signed tree head yet".into(),
            ));
        };
        if head.head.size < seq {
            return Err(ApiError::Refused(
                StatusCode::CONFLICT,
                format!(
                    "no signed tree head covers entry {seq} yet (the latest covers {}); the next \
                     one will",
                    head.head.size
                ),
            ));
        }
        let leaf = store
            .leaf_hash(seq)?
            .ok_or_else(|| ApiError::Internal(format!("entry {seq} has no leaf hash")))?;
        let path = store.inclusion_proof(seq, head.head.size)?;
        Ok(Json(json!({
            "seq": seq,
            "leafIndex": seq - 1,
            "leafHash": to_hex(&leaf),
            "treeSize": head.head.size,
            "auditPath": path.iter().map(to_hex).collect::<Vec<_>>(),
            "head": head,
            "pruned": pruned_by.is_some(),
            "prunedBy": pruned_by,
        })))
    })
    .await
}

pub(crate) async fn verify(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = super::api::query_pairs(query.as_deref());
    let full = matches!(
        single_param(&pairs, "full")?.as_deref(),
        Some("true" | "1" | "yes")
    );
    let store = state.store.clone();
    let log = state.log.clone();
    blocking(move || {
        let mut incremental = log.verify.lock().unwrap_or_else(PoisonError::into_inner);
        if full {
            let published = std::mem::take(&mut incremental.published)
                .into_iter()
                .map(crate::verify::PublishedHeads::restarted)
                .collect();
            *incremental = IncrementalVerify {
                check: LogCheck::new(log.public_key.iter().cloned().collect()),
                last_head_id: 0,
                published,
            };
            // A full check reads every row, so it also checks the stats counts against them.
            incremental.check.tally_counts(store.as_ref());
        }
        let state = &mut *incremental;
        for published in &mut state.published {
            let place = published.path.display().to_string();
            match published.refresh() {
                Ok((latest, truncated)) => {
                    let behind =
                        crate::verify::check::behind_published(store.as_ref(), latest, &place)?;
                    state
                        .check
                        .add_problems(truncated.into_iter().chain(behind).collect());
                }
                Err(crate::verify::VerifyError::Store(error)) => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, "cannot read a published heads file to verify against");
                }
            }
        }
        loop {
            let heads = store.heads_after(state.last_head_id, 1000)?;
            let Some(last) = heads.last() else {
                break;
            };
            state.last_head_id = last.id;
            let heads = heads
                .into_iter()
                .map(|stored| HeadToCheck {
                    head: stored.head,
                    origin: HeadOrigin::Store(stored.id),
                })
                .collect();
            state.check.add_heads(store.as_ref(), heads)?;
        }
        let end = store.tree_size()?.max(store.max_entry_seq()?);
        state.check.advance(store.as_ref(), end)?;
        state.check.check_counts(store.as_ref())?;
        let mut body = crate::verify::report_json(&state.check.report());
        body["mode"] = Value::from(if full { "full" } else { "incremental" });
        Ok(Json(body))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::to_bytes;
    use chrono::Utc;

    use super::*;
    use crate::log::checkpoint::VerifierKey;
    use crate::log::head::{LogSigner, TreeHead};
    use crate::metrics::Metrics;
    use crate::store::config::SyncMode;
    use crate::store::sqlite::SqliteStore;
    use crate::writer::{Writer, WriterOptions};

    /// An admin state over a fresh store, with `signer` as the running key.
    fn admin_state(
        dir: &std::path::Path,
        signer: Option<Arc<LogSigner>>,
    ) -> (AdminState, Writer, Arc<dyn Store>) {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("opens"));
        let writer = Writer::start(
            store.clone(),
            WriterOptions {
                capacity: 10,
                batch_size: 10,
                linger: Duration::from_millis(1),
                spill_path: None,
                journal: None,
            },
        )
        .expect("writer");
        let log = LogApiState::new(signer.as_ref().map(|key| key.public_key()), None)
            .with_signer(signer)
            .with_checkpoint_origin("audit.example.com/orders".into());
        let state = AdminState {
            store: store.clone(),
            writer: writer.handle(),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(super::super::auth::Authenticator::new(&[])),
            log_id: Arc::from("orders"),
            log: Arc::new(log),
            ingest_keys: Arc::default(),
        };
        (state, writer, store)
    }

    async fn served(state: &AdminState) -> (StatusCode, String) {
        let response = match checkpoint(State(state.clone())).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn head(size: u64, root: u8) -> TreeHead {
        TreeHead::new("orders", size, [root; 32], Utc::now()).expect("head")
    }

    /// The endpoint signs a checkpoint only of a stored head the running key signed: a head
    /// signed by another (rotated) key, or a head row altered in the database, gets none, so
    /// write access to the database never buys a signature over a root the log did not sign.
    #[tokio::test]
    async fn a_checkpoint_is_signed_only_for_a_stored_head_the_running_key_signed() {
        let dir = std::env::temp_dir().join(format!("auditgate-checkpoint-{}", ulid::Ulid::new()));
        let signer = Arc::new(LogSigner::generate());
        let (state, writer, store) = admin_state(&dir, Some(signer.clone()));
        let vkey = VerifierKey::parse(
            &signer
                .verifier_key("audit.example.com/orders")
                .expect("vkey")
                .to_string(),
        )
        .expect("parses");

        assert_eq!(served(&state).await.0, StatusCode::NOT_FOUND, "no head yet");

        store
            .save_head(&signer.sign(head(3, 1)).expect("signs"))
            .expect("stored");
        let (status, note) = served(&state).await;
        assert_eq!(status, StatusCode::OK, "{note}");
        let checkpoint = vkey.verify_checkpoint(&note).expect("verifies");
        assert_eq!((checkpoint.size, checkpoint.root_hash), (3, [1; 32]));

        let rotated = LogSigner::generate();
        store
            .save_head(&rotated.sign(head(4, 2)).expect("signs"))
            .expect("stored");
        let (status, message) = served(&state).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(message.contains("not by the running key"), "{message}");

        let mut altered = signer.sign(head(5, 3)).expect("signs");
        altered.head.root_hash = [9; 32];
        store.save_head(&altered).expect("stored");
        let (status, message) = served(&state).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(message.contains("does not verify"), "{message}");
        assert!(!message.contains("— "), "no checkpoint in {message}");

        writer.shutdown();
        let (keyless, writer, _) = admin_state(&dir.join("keyless"), None);
        let (status, message) = served(&keyless).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(message.contains("no signing key"), "{message}");
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
