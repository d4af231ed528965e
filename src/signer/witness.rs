//! Submitting checkpoints to witnesses (C2SP tlog-witness `add-checkpoint`) and keeping their
//! cosignatures.
//!
//! Each `[[log.witnesses]]` entry gets a task of its own, fed by a `watch` channel that holds only
//! the newest signed checkpoint: a witness that is slow or down never holds up signing, the
//! writer or another witness, and when it comes back it is sent the newest head, not a backlog
//! (a cosignature of a later checkpoint covers every earlier one).
//!
//! A submission is `old N`, the RFC 6962 consistency proof from N to the checkpoint's size, an
//! empty line and the signed checkpoint. N is what the task believes the witness last cosigned:
//! at start the largest size of this origin the store holds a cosignature of by the witness's
//! key, else 0; after each cosignature, its size. A 409 answer names the size the witness really
//! holds: when the log can prove consistency from it (it is not larger than the checkpoint's
//! size), the submission is made once more from it; a witness holding a larger size is an
//! alarm, as the log cannot have shrunk unless it was rolled back or forked. A 200 answer's
//! signature lines are kept only when they verify under the witness's configured key over this
//! very checkpoint; they are stored with the head ([`crate::store::Store::save_cosignature`]).
//!
//! Every failure is counted by reason in `auditgate_witness_failures_total` and logged with the
//! witness's name and the status; nothing is retried until the next head, which carries the
//! newer checkpoint. At shutdown each task gets the final head and a bounded time to submit it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::log::config::WitnessTarget;
use crate::log::merkle::Hash;
use crate::log::witness::{
    add_checkpoint_body, note_text, parse_size_response, MAX_PROOF_LINES, SIZE_CONTENT_TYPE,
};
use crate::metrics::WitnessSlot;
use crate::store::{Store, StoredCosignature};

/// The longest answer read from a witness.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A signed checkpoint to submit.
#[derive(Debug, Clone)]
pub(super) struct WitnessedHead {
    pub size: u64,
    pub root_hash: Hash,
    /// The log's signed note.
    pub note: String,
}

/// The running witness tasks and the channel that hands them each new checkpoint.
pub(super) struct Witnesses {
    heads: watch::Sender<Option<Arc<WitnessedHead>>>,
    tasks: Vec<JoinHandle<()>>,
    /// The longest timeout of any witness: what shutdown waits for, at most twice, plus a second.
    longest_timeout: Duration,
}

impl Witnesses {
    /// Starts one task per witness; `None` without witnesses.
    pub fn start(
        targets: &[WitnessTarget],
        store: Arc<dyn Store>,
        origin: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        slots: impl Fn(&str) -> Arc<WitnessSlot>,
    ) -> Option<Witnesses> {
        if targets.is_empty() {
            return None;
        }
        let (heads, receiver) = watch::channel(None);
        let tasks = targets
            .iter()
            .map(|target| {
                let submitter = Submitter {
                    target: target.clone(),
                    vkey: target.key.to_string(),
                    store: store.clone(),
                    origin: origin.clone(),
                    tls: tls.clone(),
                    slot: slots(target.name()),
                    connection: None,
                };
                tokio::spawn(submitter.run(receiver.clone()))
            })
            .collect();
        let longest_timeout = targets
            .iter()
            .map(|target| target.timeout)
            .max()
            .unwrap_or(Duration::from_secs(5));
        Some(Witnesses {
            heads,
            tasks,
            longest_timeout,
        })
    }

    /// Hands the witnesses a new signed checkpoint, replacing one they have not taken yet.
    pub fn submit(&self, head: WitnessedHead) {
        self.heads.send_replace(Some(Arc::new(head)));
    }

    /// Lets each task submit what it holds (the final head), then stops them: waits at most
    /// twice the longest timeout plus a second (a submission and its retry after a 409).
    pub async fn finish(self) {
        let deadline =
            Instant::now() + self.longest_timeout.saturating_mul(2) + Duration::from_secs(1);
        drop(self.heads);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "a witness did not answer by the shutdown deadline; stopped asking it"
                );
            }
        }
    }
}

/// Why a submission failed: the metric's reason and what to log.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// What a witness answered to one request.
enum Answer {
    Cosigned(Vec<StoredCosignature>),
    /// 409: the size the witness last cosigned.
    Conflict(u64),
}

/// One witness's task state.
struct Submitter {
    target: WitnessTarget,
    /// The witness's verifier key as text, as cosignatures are stored under it.
    vkey: String,
    store: Arc<dyn Store>,
    origin: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    slot: Arc<WitnessSlot>,
    /// A kept-alive connection to the witness, as the protocol recommends.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Submitter {
    async fn run(mut self, mut heads: watch::Receiver<Option<Arc<WitnessedHead>>>) {
        // What the witness is believed to have cosigned last; read from the store on first use.
        let mut known: Option<u64> = None;
        while heads.changed().await.is_ok() {
            let Some(head) = heads.borrow_and_update().clone() else {
                continue;
            };
            let old = match known {
                Some(size) => size,
                None => self.stored_size().await,
            };
            match self.submit(&head, old).await {
                Ok(count) => {
                    known = Some(head.size);
                    self.slot.cosigned(head.size);
                    tracing::debug!(witness = %self.target.name(), size = head.size, cosignatures = count, "the witness cosigned the checkpoint");
                }
                Err(failure) => {
                    self.slot.failed(failure.reason);
                    if failure.reason == "unreachable" {
                        tracing::warn!(witness = %self.target.name(), url = %self.target.add_checkpoint, size = head.size, error = %failure.message, "cannot reach the witness; the next head is submitted again");
                    } else {
                        tracing::error!(witness = %self.target.name(), url = %self.target.add_checkpoint, size = head.size, reason = failure.reason, error = %failure.message, "the witness did not cosign the checkpoint");
                    }
                    // A conflict means the witness's size is not what was believed: ask it again
                    // from the store's view next time, and let its 409 say where it stands.
                    if failure.reason == "conflict" {
                        known = None;
                    }
                }
            }
        }
    }

    /// The largest size the store holds a cosignature of by this witness, else 0.
    async fn stored_size(&self) -> u64 {
        let store = self.store.clone();
        let origin = self.origin.clone();
        let vkey = self.vkey.clone();
        match tokio::task::spawn_blocking(move || store.witness_size(&origin, &vkey)).await {
            Ok(Ok(size)) => size.unwrap_or(0),
            Ok(Err(error)) => {
                tracing::warn!(witness = %self.target.name(), %error, "cannot read the witness's last cosigned size; starting from 0");
                0
            }
            Err(_) => 0,
        }
    }

    /// Submits `head` from `old`, and once more from the witness's own size after a 409 the log
    /// can prove consistency from. Returns how many cosignatures were stored.
    async fn submit(&mut self, head: &WitnessedHead, old: u64) -> Result<usize, Failure> {
        let first = self.request(head, old).await?;
        let answer = match first {
            Answer::Conflict(held) if held != old && held <= head.size => {
                tracing::info!(witness = %self.target.name(), believed = old, held, size = head.size, "the witness holds another size; submitting again from it");
                self.request(head, held).await?
            }
            other => other,
        };
        match answer {
            Answer::Cosigned(cosignatures) => self.keep(cosignatures).await,
            Answer::Conflict(held) if held > head.size => Err(Failure::new(
                "conflict",
                format!(
                    "the witness has cosigned size {held} of this log, larger than its {} \
                     entries: the log was rolled back or forked (a database restored from an \
                     older copy?), or another log uses the origin `{}`",
                    head.size, self.origin
                ),
            )),
            Answer::Conflict(held) => Err(Failure::new(
                "conflict",
                format!("the witness still answered 409 with size {held} after a retry from it"),
            )),
        }
    }

    /// Stores the verified cosignatures.
    async fn keep(&self, cosignatures: Vec<StoredCosignature>) -> Result<usize, Failure> {
        let store = self.store.clone();
        let count = cosignatures.len();
        let saved = tokio::task::spawn_blocking(move || {
            cosignatures
                .iter()
                .try_for_each(|cosignature| store.save_cosignature(cosignature))
        })
        .await;
        match saved {
            Ok(Ok(())) => Ok(count),
            Ok(Err(error)) => Err(Failure::new(
                "local_error",
                format!("cannot store the cosignature: {error}"),
            )),
            Err(error) => Err(Failure::new("local_error", error.to_string())),
        }
    }

    /// One `add-checkpoint` request from `old`.
    async fn request(&mut self, head: &WitnessedHead, old: u64) -> Result<Answer, Failure> {
        let proof = self.proof(old, head.size).await?;
        let body = add_checkpoint_body(old, &proof, &head.note);
        let timeout = self.target.timeout;
        let exchange = tokio::time::timeout(timeout, self.exchange(body)).await;
        let (status, content_type, text) = match exchange {
            Ok(Ok(answer)) => answer,
            Ok(Err(message)) => {
                self.connection = None;
                return Err(Failure::new("unreachable", message));
            }
            Err(_) => {
                self.connection = None;
                return Err(Failure::new(
                    "unreachable",
                    format!("no answer within {timeout:?}"),
                ));
            }
        };
        let status_failure = |reason, meaning: &str| {
            Err(Failure::new(
                reason,
                format!("answered {status}: {meaning}{}", excerpt(&text)),
            ))
        };
        match status.as_u16() {
            200 => {
                let checkpoint_text = note_text(&head.note)
                    .map_err(|error| Failure::new("local_error", error.to_string()))?;
                let cosignatures = self
                    .target
                    .key
                    .cosignatures_in_response(&text, checkpoint_text)
                    .map_err(|error| Failure::new("bad_cosignature", error.to_string()))?;
                Ok(Answer::Cosigned(
                    cosignatures
                        .into_iter()
                        .map(|cosignature| StoredCosignature {
                            origin: self.origin.clone(),
                            size: head.size,
                            root_hash: head.root_hash,
                            witness_vkey: self.vkey.clone(),
                            timestamp: cosignature.timestamp,
                            line: cosignature.line(),
                        })
                        .collect(),
                ))
            }
            409 => {
                let size = content_type
                    .filter(|value| {
                        value.split(';').next().is_some_and(|media| {
                            media.trim().eq_ignore_ascii_case(SIZE_CONTENT_TYPE)
                        })
                    })
                    .and_then(|_| parse_size_response(&text));
                match size {
                    Some(size) => Ok(Answer::Conflict(size)),
                    None => status_failure(
                        "conflict",
                        "without a text/x.tlog.size body naming the size it holds",
                    ),
                }
            }
            400 => status_failure("bad_request", "the witness found the request malformed"),
            403 => status_failure(
                "forbidden",
                "the witness does not trust the log's key for this origin, or its signature failed",
            ),
            404 => status_failure("unknown_log", "the witness does not know this log's origin"),
            422 => status_failure(
                "inconsistent",
                "the consistency proof or the root does not check out against what the witness \
                 holds: the log may have been forked or rolled back",
            ),
            _ => status_failure("http_error", "unexpected status"),
        }
    }

    /// The consistency proof from `old` to `size`, from the store.
    async fn proof(&self, old: u64, size: u64) -> Result<Vec<Hash>, Failure> {
        if old > size {
            return Err(Failure::new(
                "conflict",
                format!(
                    "the witness is believed to hold size {old}, larger than this log's {size}"
                ),
            ));
        }
        let store = self.store.clone();
        let proof = tokio::task::spawn_blocking(move || store.consistency_proof(old, size))
            .await
            .map_err(|error| Failure::new("local_error", error.to_string()))?
            .map_err(|error| {
                Failure::new(
                    "local_error",
                    format!("cannot prove consistency from size {old} to {size}: {error}"),
                )
            })?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(Failure::new(
                "local_error",
                format!(
                    "a consistency proof of {} hashes is longer than the protocol allows",
                    proof.len()
                ),
            ));
        }
        Ok(proof)
    }

    /// POSTs `body` on the kept connection (made anew when there is none or it closed) and
    /// reads the answer: status, content type, body as text.
    async fn exchange(
        &mut self,
        body: String,
    ) -> Result<(http::StatusCode, Option<String>, String), String> {
        let uri = &self.target.add_checkpoint;
        let reusable = match self.connection.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.connection = Some(crate::net::http1::connect(uri, self.tls.as_ref()).await?);
        }
        let sender = self.connection.as_mut().ok_or("no connection")?;
        let target = uri.path_and_query().map_or("/", |target| target.as_str());
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        let request = http::Request::post(target)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(http::header::USER_AGENT, "auditgate")
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| format!("cannot build the request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| format!("cannot read the answer: {error}"))?
            .to_bytes();
        let text =
            String::from_utf8(bytes.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())?;
        Ok((status, content_type, text))
    }
}

/// The start of a witness's answer, for a log line: one line, at most 200 characters.
fn excerpt(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default().trim();
    if first.is_empty() {
        return String::new();
    }
    let cut: String = first
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    format!(" (the witness said: {cut})")
}
