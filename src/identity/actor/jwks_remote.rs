//! A JWT key set fetched from a URL (`jwks_url`) and kept fresh in the background.
//!
//! The request path never waits on the network: it reads the current key set (an `Arc` swapped
//! whole under a lock held for a pointer copy) and, when a token names a `kid` the set lacks (a
//! key rotation) or no set is loaded yet, asks the background task for a refetch and goes on.
//! That token is recorded unverified with the reason; tokens after the refetch verify.
//!
//! The task fetches once at start, then every `jwks_refresh`; a refetch asked for by a request
//! happens at most once per `jwks_min_refresh` (a storm of tokens with made-up `kid`s costs one
//! fetch per interval, not one per request), and a failed fetch is retried after
//! `jwks_min_refresh`. A failed fetch, or a document without a usable key, keeps the last good
//! set and is logged. The task holds only a weak reference, so it ends once the policy that owns
//! the set is replaced (SIGHUP) and dropped.
//!
//! Every fetch is counted (ok or failed) and the time the set in use was fetched is kept in the
//! source's slot of [`crate::metrics::JwksMetrics`], for `/metrics`: failures are otherwise only
//! in the log, and tokens are recorded unverified rather than refused, so nothing else shows an
//! issuer whose keys stopped coming.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, Validation};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use super::jwk::{compile_key_set, VerifyingKey};
use crate::metrics::JwksSourceHandle;

/// Longest a fetch (connect, TLS, request, body) may take.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest key set document read; real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A key set as fetched: the compiled keys, and the document they came from (so that a reloaded
/// configuration with other pinned algorithms can recompile it without a fetch).
pub(super) struct LoadedKeys {
    pub keys: Vec<VerifyingKey>,
    /// Counts installed sets, so that tokens verified under an older set are checked again.
    pub generation: u64,
    document: Arc<Value>,
    /// When the document was fetched (kept across a reload's take-over, which does not fetch).
    fetched_at: SystemTime,
}

#[derive(Default)]
struct FetchState {
    /// A request asked for a refetch (unknown `kid`, or nothing loaded yet).
    wanted: bool,
    last_attempt: Option<Instant>,
    last_failed: bool,
    last_error: Option<String>,
    generation: u64,
}

/// The key set of one `jwks_url` source.
pub(super) struct RemoteKeys {
    pub url: http::Uri,
    pub refresh: Duration,
    pub min_refresh: Duration,
    /// For https URLs: the system's CAs or `jwks_ca_file`, host name checked.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The configured algorithms, and the validation every key starts from (issuer, audience,
    /// leeway).
    pinned: Option<Vec<Algorithm>>,
    template: Validation,
    current: RwLock<Option<Arc<LoadedKeys>>>,
    state: Mutex<FetchState>,
    wake: Arc<Notify>,
    /// Fetch attempts made, for waiting on the first one.
    attempts: watch::Sender<u64>,
    started: AtomicBool,
    /// The `[[actor]]` position (from 1), the `actor` label of this source's metrics.
    actor_position: AtomicUsize,
    /// This source's `/metrics` slot, attached when the background task starts.
    stats: OnceLock<JwksSourceHandle>,
}

impl Drop for RemoteKeys {
    fn drop(&mut self) {
        // Wakes the background task, which then finds the set gone and ends.
        self.wake.notify_one();
    }
}

impl RemoteKeys {
    pub(super) fn new(
        url: http::Uri,
        refresh: Duration,
        min_refresh: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
        pinned: Option<Vec<Algorithm>>,
        template: Validation,
    ) -> RemoteKeys {
        RemoteKeys {
            url,
            refresh,
            min_refresh,
            tls,
            pinned,
            template,
            current: RwLock::new(None),
            state: Mutex::new(FetchState::default()),
            wake: Arc::new(Notify::new()),
            attempts: watch::channel(0).0,
            started: AtomicBool::new(false),
            actor_position: AtomicUsize::new(0),
            stats: OnceLock::new(),
        }
    }

    /// The key set in use, if one was ever loaded.
    pub(super) fn current(&self) -> Option<Arc<LoadedKeys>> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why no key set is loaded, for the explanation of a request (`None` before any attempt).
    pub(super) fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// Asks the background task for a refetch; never waits. Requests within one
    /// `jwks_min_refresh` of the last fetch are folded into one fetch at the end of it.
    pub(super) fn request_refresh(&self) {
        let mut state = self.state();
        if !state.wanted {
            state.wanted = true;
            self.wake.notify_one();
        }
    }

    /// When the next fetch is due.
    fn next_due(&self) -> Instant {
        let state = self.state();
        let Some(last) = state.last_attempt else {
            return Instant::now();
        };
        if state.wanted || state.last_failed {
            last + self.min_refresh
        } else {
            last + self.refresh
        }
    }

    pub(super) fn set_actor_position(&self, position: usize) {
        self.actor_position.store(position, Ordering::Relaxed);
    }

    pub(super) fn actor_position(&self) -> usize {
        self.actor_position.load(Ordering::Relaxed)
    }

    /// The URL's host, the `host` label of this source's metrics.
    pub(super) fn host(&self) -> &str {
        self.url.host().unwrap_or("")
    }

    /// Starts the background task on the current tokio runtime (once; without a runtime, as in
    /// `auditgate check`, nothing is started). Fetches are counted in `stats` from then on.
    pub(super) fn start(self: &Arc<Self>, stats: JwksSourceHandle) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(loaded) = self.current() {
            // Keys taken over from before a reload: their age goes on from when they were fetched.
            stats.set_loaded_at(loaded.fetched_at);
        }
        let _ = self.stats.set(stats);
        runtime.spawn(refresh_loop(Arc::downgrade(self), self.wake.clone()));
    }

    /// Waits until the first fetch attempt has ended (loaded or failed), at most `timeout`.
    pub(super) async fn wait_first_attempt(&self, timeout: Duration) {
        let mut attempts = self.attempts.subscribe();
        let _ = tokio::time::timeout(timeout, attempts.wait_for(|count| *count > 0)).await;
    }

    /// Installs the set of `previous` (same URL, before a reload), recompiled with this source's
    /// settings, so a reload does not leave tokens unverified until the first fetch.
    pub(super) fn take_over(&self, previous: &RemoteKeys) {
        if previous.url != self.url {
            return;
        }
        let Some(loaded) = previous.current() else {
            return;
        };
        if let Ok(keys) = self.compile(&loaded.document) {
            self.install(keys, loaded.document.clone(), loaded.fetched_at);
        }
    }

    fn compile(&self, document: &Value) -> Result<Vec<VerifyingKey>, String> {
        let (keys, problems) = compile_key_set(document, self.pinned.as_deref(), &self.template)?;
        for problem in problems {
            tracing::warn!(url = %self.url, key = %problem.place, reason = %problem.message, "JWKS key skipped");
        }
        if keys.is_empty() {
            return Err("holds no signing key usable with the accepted algorithms".into());
        }
        Ok(keys)
    }

    fn install(&self, keys: Vec<VerifyingKey>, document: Arc<Value>, fetched_at: SystemTime) {
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            state.generation
        };
        let loaded = Arc::new(LoadedKeys {
            keys,
            generation,
            document,
            fetched_at,
        });
        match self.current.write() {
            Ok(mut current) => *current = Some(loaded),
            Err(poisoned) => *poisoned.into_inner() = Some(loaded),
        }
    }

    /// One fetch: on success the new set replaces the old; on failure the old stays.
    pub(super) async fn fetch_and_install(&self) {
        {
            let mut state = self.state();
            state.wanted = false;
            state.last_attempt = Some(Instant::now());
        }
        let outcome =
            match tokio::time::timeout(FETCH_TIMEOUT, fetch_document(&self.url, self.tls.as_ref()))
                .await
            {
                Ok(fetched) => fetched.and_then(|bytes| {
                    serde_json::from_slice::<Value>(&bytes)
                        .map_err(|error| format!("the answer is not JSON: {error}"))
                }),
                Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
            };
        let outcome = outcome.and_then(|document| {
            let keys = self.compile(&document)?;
            Ok((keys, document))
        });
        let stats = self.stats.get();
        match outcome {
            Ok((keys, document)) => {
                let count = keys.len();
                let fetched_at = SystemTime::now();
                self.install(keys, Arc::new(document), fetched_at);
                if let Some(stats) = stats {
                    stats.fetches_ok.inc();
                    stats.set_loaded_at(fetched_at);
                }
                let mut state = self.state();
                state.last_failed = false;
                state.last_error = None;
                tracing::info!(url = %self.url, keys = count, "JWKS loaded");
            }
            Err(reason) => {
                if let Some(stats) = stats {
                    stats.fetches_failed.inc();
                }
                let kept = self.current().map(|loaded| loaded.keys.len());
                {
                    let mut state = self.state();
                    state.last_failed = true;
                    state.last_error = Some(reason.clone());
                }
                match kept {
                    Some(kept) => {
                        tracing::warn!(url = %self.url, %reason, kept, retry_in = ?self.min_refresh, "cannot refresh the JWKS; keeping the keys loaded before")
                    }
                    None => {
                        tracing::error!(url = %self.url, %reason, retry_in = ?self.min_refresh, "cannot load the JWKS; tokens are recorded unverified until it loads")
                    }
                }
            }
        }
        self.attempts.send_modify(|count| *count += 1);
    }
}

/// The background task of one key set: fetch when due, sleep until the next due time or a
/// request's wake-up, end when the set is dropped.
async fn refresh_loop(keys: Weak<RemoteKeys>, wake: Arc<Notify>) {
    loop {
        let Some(remote) = keys.upgrade() else {
            return;
        };
        let due = remote.next_due();
        if due <= Instant::now() {
            remote.fetch_and_install().await;
            continue;
        }
        // Not held while asleep, so dropping the policy drops the set.
        drop(remote);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = wake.notified() => {}
        }
    }
}

/// GETs the document at `url` over http, or https with `tls`.
async fn fetch_document(
    url: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Bytes, String> {
    let host = url.host().ok_or("the URL names no host")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|error| format!("cannot connect to {host}:{port}: {error}"))?;
    if !https {
        return get(tcp, url).await;
    }
    let config = tls.ok_or("no TLS configuration for an https URL")?;
    let name = ServerName::try_from(bare_host.to_string())
        .map_err(|_| format!("`{host}` is not a TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| format!("TLS handshake with {host}:{port} failed: {error}"))?;
    get(stream, url).await
}

async fn get<S>(stream: S, url: &http::Uri) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let target = url.path_and_query().map_or("/", |target| target.as_str());
    let authority = url.authority().map_or("", |authority| authority.as_str());
    let request = http::Request::get(target)
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(http::header::USER_AGENT, "auditgate")
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("cannot build the request: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|error| format!("cannot read the answer: {error}"))?;
    Ok(body.to_bytes())
}
