//! The head signer: a background task that signs tree heads and publishes them.
//!
//! A head is signed when `sign_every` entries were added since the last one, at least every
//! `sign_interval` while entries are being added, every `heartbeat_interval` when nothing was
//! added (so a quiet log can prove it was quiet rather than cut off), at start when the log grew
//! since the last stored head, and once more at shutdown after the writer has flushed.
//!
//! Each head is first appended to every `file:` target (and fsynced), then stored, so a head in
//! the store is always in the files too; `auditgate verify --heads` relies on that to find a
//! truncated file. `http://` and `https://` targets are POSTed by a separate task, so a slow or
//! dead URL never holds up signing; a head that could not be delivered (to a file or a URL) is
//! retried before the next one, oldest first. At shutdown the URL publisher retries what a URL
//! refused a few times, waiting a little longer each time, until a deadline of twice
//! `publish_timeout` plus a second; then it logs and counts the heads each URL never got (they
//! are in the store and the files), so a collector that is briefly down still gets the final
//! head and one that stays down cannot hold up shutdown.
//!
//! A URL target with `format = "checkpoint"` receives each head as a C2SP checkpoint (a signed
//! note under the log's origin, [`crate::log::checkpoint`]) with `Content-Type: text/plain;
//! charset=utf-8` instead of the JSON; the checkpoint is signed beside the JSON head, by the same
//! key, only when such a target exists.
//!
//! Witnesses (`[[log.witnesses]]`, C2SP tlog-witness) are handed each signed checkpoint by
//! [`witness`]: one task per witness submits the newest one with a consistency proof and stores
//! the cosignatures that verify, off the signer's way like the URL targets.
//!
//! An https target is reached on a connection of its own per delivery round, checked against
//! `publish_ca_file` or the system's CAs (see [`crate::net::tls`]); an untrusted certificate is a
//! failed delivery like any other. Nothing here runs on the writer's thread or the proxy's path:
//! the signer reads the tree's root from the store's in-memory frontier, which costs no hashing.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::log::config::{LogConfig, PublishTarget};
use crate::log::head::{LogSigner, TreeHead};
use crate::metrics::Counter;
use crate::store::Store;
use crate::writer::WriterHandle;

mod witness;
use witness::{WitnessedHead, Witnesses};

/// Heads kept for a target that keeps failing; older ones are dropped first (and counted). A
/// later head supersedes an earlier one for rollback detection, so losing old ones costs little.
const MAX_PENDING: usize = 10_000;

/// Retries at shutdown of a URL delivery that failed, after the attempt every head gets: enough
/// to ride out a collector restarting, few enough to keep shutdown short.
const SHUTDOWN_RETRIES: u32 = 4;

/// The wait before the first retry at shutdown; each later wait is twice the one before.
const SHUTDOWN_FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct SignerStats {
    /// Heads signed and stored.
    pub heads_signed: Counter,
    /// Heads delivered to a publish target (one per target).
    pub heads_published: Counter,
    /// Failed deliveries (each retried with the next head).
    pub publish_failures: Counter,
    /// Heads given up on for a target: after 10,000 piled up unsent, or still unsent to a URL
    /// when the retries at shutdown ran out.
    pub publish_dropped: Counter,
    /// Heads that could not be made or stored.
    pub sign_failures: Counter,
    /// Each witness's cosignatures and failures.
    pub witnesses: crate::metrics::WitnessMetrics,
}

/// The running signer.
pub struct HeadSigner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<SignerStats>,
}

impl HeadSigner {
    /// Starts signing heads of `store` with `signer`.
    pub fn start(
        store: Arc<dyn Store>,
        signer: Arc<LogSigner>,
        log_id: String,
        config: LogConfig,
        writer: WriterHandle,
    ) -> HeadSigner {
        HeadSigner::start_with_stats(
            store,
            signer,
            log_id,
            config,
            writer,
            Arc::new(SignerStats::default()),
        )
    }

    /// As [`HeadSigner::start`], counting into `stats` (a reload's new signer carries on the
    /// counters of the one it replaces).
    pub fn start_with_stats(
        store: Arc<dyn Store>,
        signer: Arc<LogSigner>,
        log_id: String,
        config: LogConfig,
        writer: WriterHandle,
        stats: Arc<SignerStats>,
    ) -> HeadSigner {
        let (stop, stopped) = watch::channel(false);
        let mut files = Vec::new();
        let mut urls = Vec::new();
        for target in &config.publish_heads {
            match target {
                PublishTarget::File(path) => files.push(FileTarget {
                    path: path.clone(),
                    pending: VecDeque::new(),
                }),
                PublishTarget::Url(uri) => urls.push(UrlTarget {
                    uri: uri.clone(),
                    checkpoint: false,
                    pending: VecDeque::new(),
                }),
                PublishTarget::UrlCheckpoint(uri) => urls.push(UrlTarget {
                    uri: uri.clone(),
                    checkpoint: true,
                    pending: VecDeque::new(),
                }),
            }
        }
        let checkpoint_origin = (urls.iter().any(|target| target.checkpoint)
            || !config.witnesses.is_empty())
        .then(|| config.checkpoint_origin(&log_id));
        let witness_stats = stats.clone();
        let witnesses = Witnesses::start(
            &config.witnesses,
            store.clone(),
            config.checkpoint_origin(&log_id),
            config.publish_tls.clone(),
            move |name| witness_stats.witnesses.slot(name),
        );
        let (to_publisher, from_signer) = mpsc::channel::<PublishedHead>(1024);
        let (finish, finish_by) = watch::channel(None);
        let publisher = tokio::spawn(publish_urls(
            urls,
            from_signer,
            finish_by,
            config.publish_timeout,
            config.publish_tls.clone(),
            stats.clone(),
        ));
        let work = SignerWork {
            store,
            signer,
            log_id,
            checkpoint_origin,
            files,
            to_publisher,
            stats: stats.clone(),
            last: None,
            last_root: None,
        };
        let task = tokio::spawn(run(
            work,
            config,
            writer,
            stopped,
            Publisher {
                task: publisher,
                finish,
            },
            witnesses,
        ));
        HeadSigner { stop, task, stats }
    }

    pub fn stats(&self) -> Arc<SignerStats> {
        self.stats.clone()
    }

    /// Signs a final head (call after the writer has flushed), delivers what it can, and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct FileTarget {
    path: PathBuf,
    /// Lines not yet written, oldest first.
    pending: VecDeque<String>,
}

struct UrlTarget {
    uri: http::Uri,
    /// Sent the checkpoint form (text/plain) rather than the JSON.
    checkpoint: bool,
    /// Bodies not yet delivered, oldest first.
    pending: VecDeque<String>,
}

/// One signed head in the forms the URL targets and witnesses take.
#[derive(Debug, Clone)]
struct PublishedHead {
    json: String,
    /// The signed checkpoint, made only when a target or a witness takes it.
    checkpoint: Option<String>,
    size: u64,
    root_hash: crate::log::merkle::Hash,
}

struct SignerWork {
    store: Arc<dyn Store>,
    signer: Arc<LogSigner>,
    log_id: String,
    /// The checkpoints' origin, when a URL target or a witness takes checkpoints.
    checkpoint_origin: Option<String>,
    files: Vec<FileTarget>,
    to_publisher: mpsc::Sender<PublishedHead>,
    stats: Arc<SignerStats>,
    /// Size and time of the last head signed (or found stored at start).
    last: Option<(u64, DateTime<Utc>)>,
    /// Size and root of the last head signed (or found stored at start): every new head must
    /// extend it, or it would fork what was published.
    last_root: Option<(u64, crate::log::merkle::Hash)>,
}

/// The URL publisher task, and where the signer tells it by when to finish at shutdown.
struct Publisher {
    task: JoinHandle<()>,
    finish: watch::Sender<Option<Instant>>,
}

/// How long shutdown waits for URL targets: time for one attempt that runs into the timeout, the
/// retries, and another attempt.
fn shutdown_budget(publish_timeout: Duration) -> Duration {
    publish_timeout.saturating_mul(2) + Duration::from_secs(1)
}

/// Why the signer woke up; decides whether a head is due.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// A batch was committed: due after `sign_every` more entries.
    Committed { sign_every: u64 },
    /// The interval ticked: due when the log changed, or after `heartbeat` of quiet.
    Tick { heartbeat: Duration },
    /// Shutdown: always due.
    Final,
}

async fn run(
    work: SignerWork,
    config: LogConfig,
    writer: WriterHandle,
    mut stopped: watch::Receiver<bool>,
    publisher: Publisher,
    witnesses: Option<Witnesses>,
) {
    tracing::info!(
        key_id = %work.signer.key_id(),
        sign_every = config.sign_every,
        sign_interval = ?config.sign_interval,
        targets = config.publish_heads.len(),
        "signing tree heads"
    );
    let to_publisher = work.to_publisher.clone();
    let work = Arc::new(Mutex::new(work));
    let loaded = work.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut work = lock(&loaded);
        let latest = work.store.latest_head().ok().flatten();
        work.last = latest
            .as_ref()
            .map(|head| (head.head.size, head.head.timestamp));
        work.last_root = latest.map(|head| (head.head.size, head.head.root_hash));
    })
    .await;
    let mut ticker = tokio::time::interval(config.sign_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = writer.committed() => Wake::Committed { sign_every: config.sign_every },
            // The first tick is immediate: a log that grew while no head was signed (a crash, a
            // CLI prune) gets one at start.
            _ = ticker.tick() => Wake::Tick { heartbeat: config.heartbeat_interval },
        };
        maybe_sign(&work, wake, witnesses.as_ref()).await;
    }
    // The shutdown head: always signed, so the last line of a heads file says when the log
    // stopped and how long it was.
    maybe_sign(&work, Wake::Final, witnesses.as_ref()).await;
    drop(work);
    // The witnesses submit the final head meanwhile, each within its own bounded wait.
    let witnesses_done = async {
        if let Some(witnesses) = witnesses {
            witnesses.finish().await;
        }
    };
    // The URL publisher delivers what is queued and retries what fails until the deadline, then
    // gives up by itself and says what it did not deliver. The wait here is only a backstop.
    let deadline = Instant::now() + shutdown_budget(config.publish_timeout);
    let _ = publisher.finish.send(Some(deadline));
    drop(to_publisher);
    let abort = publisher.task.abort_handle();
    let backstop = deadline + Duration::from_millis(500);
    let publisher_done = async {
        if tokio::time::timeout_at(backstop, publisher.task)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!("the URL publisher did not finish by its shutdown deadline; stopped it");
        }
    };
    tokio::join!(publisher_done, witnesses_done);
}

/// The work survives a panic in a signing step: the next step takes it over.
fn lock(work: &Mutex<SignerWork>) -> MutexGuard<'_, SignerWork> {
    work.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Signs a head if `wake` makes one due, off the async workers (the store and the files are
/// blocking), and hands it to the URL publisher and the witnesses.
async fn maybe_sign(work: &Arc<Mutex<SignerWork>>, wake: Wake, witnesses: Option<&Witnesses>) {
    let blocking = work.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut work = lock(&blocking);
        if !is_due(&work, wake) {
            return None;
        }
        let outcome = sign_now(&mut work);
        Some((outcome, work.to_publisher.clone(), work.stats.clone()))
    })
    .await;
    let (outcome, to_publisher, stats) = match joined {
        Ok(Some(done)) => done,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, "head signing step failed");
            return;
        }
    };
    match outcome {
        Ok(head) => {
            if let (Some(witnesses), Some(note)) = (witnesses, &head.checkpoint) {
                witnesses.submit(WitnessedHead {
                    size: head.size,
                    root_hash: head.root_hash,
                    note: note.clone(),
                });
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = to_publisher.try_send(head) {
                stats.publish_dropped.inc();
                tracing::warn!("URL publisher is behind; a head was not queued for it");
            }
        }
        Err(message) => {
            stats.sign_failures.inc();
            tracing::error!(error = %message, "cannot sign a tree head; trying again later");
        }
    }
}

fn is_due(work: &SignerWork, wake: Wake) -> bool {
    let signed = work.last.map(|(size, _)| size);
    match wake {
        Wake::Final => true,
        Wake::Committed { sign_every } => {
            let size = work.store.size().unwrap_or(0);
            size >= signed.unwrap_or(0).saturating_add(sign_every)
        }
        Wake::Tick { heartbeat } => {
            let Some((signed, at)) = work.last else {
                return true;
            };
            let size = work.store.tree().map(|tree| tree.size).unwrap_or(signed);
            let quiet = Utc::now()
                .signed_duration_since(at)
                .to_std()
                .unwrap_or(Duration::ZERO);
            size != signed || quiet >= heartbeat
        }
    }
}

fn sign_now(work: &mut SignerWork) -> Result<PublishedHead, String> {
    let tree = work.store.tree().map_err(|error| error.to_string())?;
    // The store was checked against its published heads at start; this holds the line while it
    // runs (a database swapped or restored under a running sidecar).
    if let Some((size, root)) = work.last_root {
        let extends = tree.size >= size
            && work
                .store
                .root_at(size)
                .map_err(|error| error.to_string())?
                == root;
        if !extends {
            return Err(format!(
                "the log ({} entries) no longer contains the head of size {size} signed before: \
                 not signing a head that would fork the published log (was the database \
                 restored from an older copy?)",
                tree.size
            ));
        }
    }
    let head = TreeHead::new(work.log_id.clone(), tree.size, tree.root, Utc::now())
        .map_err(|error| error.to_string())?;
    let signed = work.signer.sign(head).map_err(|error| error.to_string())?;
    let line = serde_json::to_string(&signed).map_err(|error| error.to_string())?;
    let checkpoint = match &work.checkpoint_origin {
        Some(origin) => Some(
            work.signer
                .sign_checkpoint(origin, &signed.head)
                .map_err(|error| error.to_string())?,
        ),
        None => None,
    };
    let stats = work.stats.clone();
    for target in &mut work.files {
        push_pending(&mut target.pending, line.clone(), &stats);
        match append_lines(&target.path, &target.pending) {
            Ok(()) => {
                stats.heads_published.add(target.pending.len() as u64);
                target.pending.clear();
            }
            Err(error) => {
                stats.publish_failures.inc();
                tracing::error!(file = %target.path.display(), %error, pending = target.pending.len(), "cannot publish a tree head to its file; retrying with the next head");
            }
        }
    }
    work.store
        .save_head(&signed)
        .map_err(|error| format!("cannot store the head: {error}"))?;
    stats.heads_signed.inc();
    work.last = Some((signed.head.size, signed.head.timestamp));
    work.last_root = Some((signed.head.size, signed.head.root_hash));
    tracing::debug!(size = signed.head.size, "signed a tree head");
    Ok(PublishedHead {
        json: line,
        checkpoint,
        size: signed.head.size,
        root_hash: signed.head.root_hash,
    })
}

fn push_pending(pending: &mut VecDeque<String>, line: String, stats: &SignerStats) {
    if pending.len() >= MAX_PENDING {
        pending.pop_front();
        stats.publish_dropped.inc();
    }
    pending.push_back(line);
}

/// Appends lines to an NDJSON file and fsyncs it. A file whose last line was cut short (a crash
/// mid-write) gets a newline first, so the new line stands on its own.
pub fn append_lines(path: &Path, lines: &VecDeque<String>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut text = String::new();
    let length = file.seek(SeekFrom::End(0))?;
    if length > 0 {
        file.seek(SeekFrom::Start(length - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

/// How the publisher reaches its URL targets: a pooled client for http, and the TLS
/// configuration (from the config) for https.
struct Transport {
    http: Client<HttpConnector, Full<Bytes>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The URL publisher: POSTs each head to every URL target, oldest pending first. When the signer
/// closes `heads` at shutdown, it retries what is still pending until the deadline in
/// `finish_by`.
async fn publish_urls(
    mut targets: Vec<UrlTarget>,
    mut heads: mpsc::Receiver<PublishedHead>,
    finish_by: watch::Receiver<Option<Instant>>,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: Arc<SignerStats>,
) {
    let transport = Transport {
        http: {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(timeout));
            Client::builder(TokioExecutor::new()).build(connector)
        },
        tls,
    };
    while let Some(head) = heads.recv().await {
        let deadline = *finish_by.borrow();
        for target in &mut targets {
            let body = if target.checkpoint {
                head.checkpoint.clone()
            } else {
                Some(head.json.clone())
            };
            let Some(body) = body else {
                // The signer makes a checkpoint whenever a target takes them; this is a bug.
                stats.publish_dropped.inc();
                tracing::error!(url = %target.uri, "no checkpoint was made for a checkpoint target");
                continue;
            };
            push_pending(&mut target.pending, body, &stats);
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                // Past the shutdown deadline: only kept, to be reported below.
                continue;
            }
            if let Err(reason) = deliver(&transport, target, timeout, deadline, &stats).await {
                tracing::warn!(url = %target.uri, %reason, pending = target.pending.len(), "cannot publish a tree head; retrying with the next head");
            }
        }
    }
    let deadline = finish_by
        .borrow()
        .unwrap_or_else(|| Instant::now() + shutdown_budget(timeout));
    deliver_before_stopping(&transport, &mut targets, timeout, deadline, &stats).await;
}

/// At shutdown no next head will carry a refused one again, so a failed delivery is retried
/// here: up to [`SHUTDOWN_RETRIES`] times with a doubling wait, never past `deadline`. What a URL
/// still has not got is counted as dropped and logged by tree size, so an operator knows which
/// heads to hand to the collector from the heads file or the database.
async fn deliver_before_stopping(
    transport: &Transport,
    targets: &mut [UrlTarget],
    timeout: Duration,
    deadline: Instant,
    stats: &SignerStats,
) {
    let mut backoff = SHUTDOWN_FIRST_BACKOFF;
    for retry in 1..=SHUTDOWN_RETRIES {
        if targets.iter().all(|target| target.pending.is_empty()) {
            return;
        }
        if Instant::now() + backoff >= deadline {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
        for target in targets.iter_mut() {
            if target.pending.is_empty() {
                continue;
            }
            match deliver(transport, target, timeout, Some(deadline), stats).await {
                Ok(()) => {
                    tracing::info!(url = %target.uri, retry, "delivered the pending tree heads at shutdown")
                }
                Err(reason) => {
                    tracing::warn!(url = %target.uri, %reason, retry, pending = target.pending.len(), "cannot publish a tree head at shutdown; retrying")
                }
            }
        }
    }
    for target in targets.iter() {
        if target.pending.is_empty() {
            continue;
        }
        stats.publish_dropped.add(target.pending.len() as u64);
        tracing::error!(
            url = %target.uri,
            heads = target.pending.len(),
            sizes = %head_sizes(&target.pending),
            "gave up publishing signed tree heads at shutdown: this URL did not receive them \
             (they are in the database and any heads file)"
        );
    }
}

/// The tree sizes of pending heads (JSON lines or checkpoints), for a log line: all of them when
/// few, else the first and last few.
fn head_sizes(pending: &VecDeque<String>) -> String {
    let size = |body: &String| {
        if let Ok(head) = serde_json::from_str::<crate::log::head::SignedTreeHead>(body) {
            return head.head.size.to_string();
        }
        // A checkpoint's second line is its size.
        body.lines()
            .nth(1)
            .filter(|line| line.parse::<u64>().is_ok())
            .map_or_else(|| "?".to_string(), str::to_string)
    };
    if pending.len() <= 10 {
        return pending.iter().map(size).collect::<Vec<_>>().join(", ");
    }
    let first: Vec<String> = pending.iter().take(5).map(size).collect();
    let last: Vec<String> = pending.iter().skip(pending.len() - 5).map(size).collect();
    format!("{}, ... {}", first.join(", "), last.join(", "))
}

/// Sends `target`'s pending heads, oldest first, and stops at the first that fails (counted,
/// and its reason returned). Each attempt waits at most `timeout`, and never past `deadline`.
async fn deliver(
    transport: &Transport,
    target: &mut UrlTarget,
    timeout: Duration,
    deadline: Option<Instant>,
    stats: &SignerStats,
) -> Result<(), String> {
    // One TLS connection serves a whole round of pending heads.
    let mut https: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while let Some(line) = target.pending.front() {
        let body = Full::new(Bytes::from(line.clone()));
        let attempt = async {
            if target.uri.scheme_str() == Some("https") {
                let reusable = match https.as_mut() {
                    Some(sender) => sender.ready().await.is_ok(),
                    None => false,
                };
                let sender = if reusable {
                    https.as_mut().ok_or("no connection")?
                } else {
                    https.insert(
                        crate::net::http1::connect(&target.uri, transport.tls.as_ref()).await?,
                    )
                };
                let request = publish_request(&target.uri, true, target.checkpoint, body)?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|error| error.to_string())?;
                let status = response.status();
                // Read to the end, so the connection can carry the next pending head.
                let _ = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await;
                Ok(status)
            } else {
                let request = publish_request(&target.uri, false, target.checkpoint, body)?;
                transport
                    .http
                    .request(request)
                    .await
                    .map(|response| response.status())
                    .map_err(|error| error.to_string())
            }
        };
        let limit = deadline.map_or(timeout, |deadline| {
            timeout.min(deadline.saturating_duration_since(Instant::now()))
        });
        let outcome = tokio::time::timeout(limit, attempt).await;
        let failure = match outcome {
            Ok(Ok(status)) if status.is_success() => None,
            Ok(Ok(status)) => Some(format!("answered {status}")),
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!("no answer within {limit:?}")),
        };
        match failure {
            None => {
                stats.heads_published.inc();
                target.pending.pop_front();
            }
            Some(reason) => {
                stats.publish_failures.inc();
                return Err(reason);
            }
        }
    }
    Ok(())
}

/// The POST of one head (its JSON, or its checkpoint). Over a connection of our own (https) the
/// request carries the path and a Host header; the pooled http client takes the absolute URL.
fn publish_request(
    uri: &http::Uri,
    own_connection: bool,
    checkpoint: bool,
    body: Full<Bytes>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut request = if own_connection {
        let target = uri.path_and_query().map_or("/", |target| target.as_str());
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        http::Request::post(target).header(http::header::HOST, authority)
    } else {
        http::Request::post(uri.clone())
    };
    request = request
        .header(
            http::header::CONTENT_TYPE,
            if checkpoint {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            },
        )
        .header(http::header::USER_AGENT, "auditgate");
    request
        .body(body)
        .map_err(|error| format!("cannot build the request: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_repairs_a_cut_last_line() {
        let dir = std::env::temp_dir().join(format!("auditgate-signer-{}", ulid::Ulid::new()));
        let path = dir.join("heads.ndjson");
        let lines: VecDeque<String> = ["{\"a\":1}".to_string()].into();
        append_lines(&path, &lines).expect("first");
        std::fs::write(&path, "{\"a\":1}\n{\"cut").expect("cut");
        let next: VecDeque<String> = ["{\"b\":2}".to_string(), "{\"c\":3}".to_string()].into();
        append_lines(&path, &next).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"a\":1}\n{\"cut\n{\"b\":2}\n{\"c\":3}\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn heads_given_up_on_are_named_by_size() {
        let signer = LogSigner::generate();
        let line = |size: u64| {
            let head = TreeHead::new("t", size, [0; 32], Utc::now()).expect("head");
            serde_json::to_string(&signer.sign(head).expect("sign")).expect("json")
        };
        let checkpoint = signer
            .sign_checkpoint(
                "orders",
                &TreeHead::new("t", 5, [0; 32], Utc::now()).expect("head"),
            )
            .expect("checkpoint");
        let few: VecDeque<String> = [line(3), "not a head".into(), checkpoint, line(9)].into();
        assert_eq!(head_sizes(&few), "3, ?, 5, 9");
        let many: VecDeque<String> = (1..=12).map(line).collect();
        assert_eq!(head_sizes(&many), "1, 2, 3, 4, 5, ... 8, 9, 10, 11, 12");
    }
}
