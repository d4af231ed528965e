//! Wiring: store, writer, head signer, retention, proxy listener and admin listener, started
//! together and stopped in order (stop accepting, drain in-flight requests, stop pruning, flush
//! the writer, sign the shutdown head).

pub mod lifecycle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::auth::Authenticator;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyState};
use crate::signer::HeadSigner;
use crate::store::retention::RetentionTask;
use crate::store::Store;
use crate::writer::otlp::OtlpExporter;
use crate::writer::{Writer, WriterHandle, WriterOptions};

/// Most header lines a request may carry; more is answered 431.
pub const MAX_REQUEST_HEADERS: usize = 256;

/// A running sidecar.
pub struct Sidecar {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    pub store: Arc<dyn Store>,
    pub config_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    writer: Writer,
    auth: Arc<Authenticator>,
    log_id: String,
    signer_stats: Option<Arc<crate::signer::SignerStats>>,
    /// What a reload replaces, one reload at a time.
    running: tokio::sync::Mutex<Running>,
    checkpoint_task: JoinHandle<()>,
}

/// The parts of a running sidecar that a reload compares or replaces.
struct Running {
    /// The configuration in force (keys that need a restart at their running values).
    table: toml::Table,
    sha256: String,
    log: crate::log::config::LogConfig,
    signer: Option<HeadSigner>,
    retention: Option<RetentionTask>,
    /// The `[[otlp]]` outputs, each a task reading the store.
    otlp: Vec<OtlpExporter>,
    /// The store's settings at start (where the outputs keep their cursors).
    store: crate::store::config::StoreConfig,
}

/// How long the `[[otlp]]` outputs may go on sending at a clean stop.
const OTLP_SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// Starts one task per `[[otlp]]` output.
fn start_otlp(
    store: &Arc<dyn Store>,
    outputs: &[crate::writer::otlp::config::OtlpConfig],
    log_id: &str,
    store_config: &crate::store::config::StoreConfig,
    metrics: &Metrics,
) -> Vec<OtlpExporter> {
    outputs
        .iter()
        .map(|output| {
            OtlpExporter::start(
                store.clone(),
                output.clone(),
                log_id.to_string(),
                crate::writer::otlp::cursor::cursor_path(store_config, &output.name),
                metrics.otlp.output(&output.name, &output.endpoint_label()),
            )
        })
        .collect()
}

/// How long the final checkpoint at a clean stop waits for readers to finish.
const SHUTDOWN_CHECKPOINT_PATIENCE: Duration = Duration::from_secs(5);

/// How long a scheduled checkpoint waits for readers: it holds the writer connection meanwhile,
/// so it gives way quickly and tries again at the next interval.
const SCHEDULED_CHECKPOINT_PATIENCE: Duration = Duration::from_millis(50);

/// Copies the SQLite WAL into the database file every `interval` (see [`Store::checkpoint`]),
/// so the WAL stays small and the database file is never far behind the log.
async fn checkpoint_periodically(
    store: Arc<dyn Store>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint(SCHEDULED_CHECKPOINT_PATIENCE))
            .await
        {
            Ok(Ok(true)) => tracing::debug!("WAL checkpointed"),
            Ok(Ok(false)) => {
                tracing::debug!("WAL checkpoint gave way to readers; retrying at the next interval")
            }
            Ok(Err(error)) => tracing::warn!(%error, "WAL checkpoint failed"),
            Err(error) => tracing::warn!(%error, "WAL checkpoint task failed"),
        }
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's changes are in force, except `restart_needed`.
    Applied(crate::server::lifecycle::ConfigChanges),
    /// Nothing changed; every message says why.
    Refused(Vec<String>),
}

impl Sidecar {
    /// Opens the store and binds both listeners. Returns once the sidecar is serving.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Sidecar> {
        let store_config = config.store.clone();
        let store_log_id = config.log_id.clone();
        let store_name = crate::store::describe(&config.store);
        let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
            crate::store::open(&store_config, &store_log_id, true)
        })
        .await
        .context("store open task failed")?
        .with_context(|| format!("cannot open the store {store_name}"))?;
        // A log whose tree cannot be extended must not take entries it could never prove.
        let tree_store = store.clone();
        let tree = tokio::task::spawn_blocking(move || tree_store.tree())
            .await
            .context("store check task failed")?
            .with_context(|| {
                format!(
                    "the log in {} cannot be appended to",
                    crate::store::describe(&config.store)
                )
            })?;
        // A store behind a head it already published (a database restored from an older copy)
        // would sign a second head, with another root, for a size already published: a fork of
        // the log. Checked before recovery appends anything.
        let heads_files = config.log.heads_files();
        let keys: Vec<crate::log::head::LogVerifier> = config
            .log
            .signer
            .iter()
            .map(|signer| signer.public_key())
            .collect();
        let check_store = store.clone();
        let check_files = heads_files.clone();
        let check_keys = keys.clone();
        let check_log_id = config.log_id.clone();
        let behind = tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            for path in check_files {
                let place = path.display().to_string();
                let mut published =
                    crate::verify::PublishedHeads::new(path, &check_log_id, check_keys.clone());
                let (latest, _) = published.refresh()?;
                problems.extend(crate::verify::check::behind_published(
                    check_store.as_ref(),
                    latest,
                    &place,
                )?);
            }
            Ok::<_, crate::verify::VerifyError>(problems)
        })
        .await
        .context("published heads check task failed")?
        .context("cannot read the published heads")?;
        if !behind.is_empty() {
            let problems: Vec<String> = behind.into_iter().map(|problem| problem.message).collect();
            anyhow::bail!(
                "refusing to start on {}: {}. Signing on would publish a second head for a size \
                 already published (a fork). Put the newest copy of the database back, or move \
                 the database and the heads file aside to start a new log",
                crate::store::describe(&config.store),
                problems.join("; ")
            );
        }
        // Before any traffic: spilled entries go back into the store, and write-ahead requests a
        // crash interrupted are recorded with outcome unknown.
        let spill_path = config.store.spill_path();
        let recovery_store = store.clone();
        let recovery_spill = spill_path.clone();
        let stream = match config.stream.clone() {
            Some(stream_config) => Some(
                crate::writer::stream::NdjsonStream::open(stream_config)
                    .context("cannot open the NDJSON stream ([stream] ndjson)")?,
            ),
            None => None,
        };
        let (reimported, recovered, stream) = tokio::task::spawn_blocking(move || {
            let mut stream = stream;
            let counts = crate::writer::recover_into(
                recovery_store.as_ref(),
                Some(&recovery_spill),
                None,
                &mut |entries| {
                    if let Some(stream) = stream.as_mut() {
                        if let Err(error) = stream.write_entries(entries) {
                            tracing::error!(%error, "cannot write recovered entries to the NDJSON stream");
                        }
                    }
                },
            )?;
            Ok::<_, crate::store::StoreError>((counts.0, counts.1, stream))
        })
        .await
        .context("recovery task failed")?
        .context("cannot recover spilled entries and write-ahead intents")?;
        let writer = Writer::start(
            store.clone(),
            WriterOptions {
                capacity: config.store.queue_capacity,
                batch_size: config.store.batch_size,
                linger: config.store.flush_interval,
                spill_path: Some(spill_path),
            },
        )
        .context("cannot start the writer thread")?;
        if let Some(stream) = stream {
            writer.handle().attach_stream(stream);
        }
        writer
            .handle()
            .stats()
            .entries_reimported
            .add(reimported as u64);
        writer
            .handle()
            .stats()
            .intents_recovered
            .add(recovered as u64);
        let signer = match &config.log.signer {
            Some(key) => Some(HeadSigner::start(
                store.clone(),
                key.clone(),
                config.log_id.clone(),
                config.log.clone(),
                writer.handle(),
            )),
            None => {
                tracing::warn!(
                    size = tree.size,
                    "no [log] signing_key: the Merkle tree is kept, but no tree head is signed or \
                     published, so tampering is only detectable by comparing with an earlier \
                     copy; make a key with `auditgate keygen --out PATH`"
                );
                None
            }
        };
        let retention = RetentionTask::start(
            store.clone(),
            config.retention.clone(),
            config.log_id.clone(),
        );
        let signer_stats = signer.as_ref().map(HeadSigner::stats);
        let log_api = Arc::new(
            admin::log_api::LogApiState::new(
                config.log.signer.as_ref().map(|key| key.public_key()),
                signer.as_ref().map(HeadSigner::stats),
            )
            .with_heads_files(&heads_files, &config.log_id, keys)
            .with_signer(config.log.signer.clone())
            .with_checkpoint_origin(config.log.checkpoint_origin(&config.log_id)),
        );
        let metrics = Arc::new(Metrics::default());
        metrics.set_config_sha256(&config.sha256);
        let otlp = start_otlp(
            &store,
            &config.otlp,
            &config.log_id,
            &config.store,
            &metrics,
        );
        // Queued before the listeners open, so it precedes every request entry of this run.
        writer.handle().push(crate::server::lifecycle::run_entry(
            &config.log_id,
            crate::server::lifecycle::STARTED,
            &config.sha256,
        ));
        let state = Arc::new(
            ProxyState::new(
                config.proxy.clone(),
                config.policy.clone(),
                config.log_id.clone(),
                writer.handle(),
                metrics.clone(),
            )
            .map(|state| state.with_durability(&config.store))
            .map_err(anyhow::Error::msg)?,
        );

        // A JWKS URL that answers has its keys in before the first request; one that does not
        // delays the start by at most this, then tokens are recorded unverified until it loads.
        config
            .policy
            .actors
            .wait_for_keys(crate::identity::actor::JWKS_START_WAIT)
            .await;
        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy.listen)", config.proxy.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let proxy_task = tokio::spawn(serve_proxy(
            proxy_listener,
            state.clone(),
            shutdown_rx.clone(),
        ));
        let auth = Arc::new(
            Authenticator::new(&config.admin.tokens)
                .with_https_proxies(&config.admin.trusted_proxies),
        );
        let router = admin::router(AdminState {
            store: store.clone(),
            writer: writer.handle(),
            metrics,
            auth: auth.clone(),
            log_id: Arc::from(config.log_id.as_str()),
            log: log_api,
            ingest_keys: Arc::default(),
        });
        let checkpoint_task = tokio::spawn(checkpoint_periodically(
            store.clone(),
            config.store.checkpoint_interval,
            shutdown_rx.clone(),
        ));
        let mut admin_shutdown = shutdown_rx;
        let admin_task = tokio::spawn(async move {
            // Connect info gives the admin API's own entries the caller's address.
            let served = axum::serve(
                admin_listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin listener failed");
            }
        });
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config_sha256 = %config.sha256, proxy = %proxy_addr, admin = %admin_addr, upstream = %config.proxy.upstream, store = %crate::store::describe(&config.store), log = %config.log_id, "auditgate is serving");
        Ok(Sidecar {
            proxy_addr,
            admin_addr,
            state,
            store,
            config_path,
            shutdown,
            proxy_task,
            admin_task,
            writer,
            auth,
            log_id: config.log_id.clone(),
            signer_stats,
            running: tokio::sync::Mutex::new(Running {
                table: config.table.0,
                sha256: config.sha256,
                log: config.log,
                signer,
                retention,
                otlp,
                store: config.store.clone(),
            }),
            checkpoint_task,
        })
    }

    /// Applies a new configuration to the running sidecar, all of it or nothing: rules, actor
    /// sources, redaction and hints, admin tokens (a removed token and its viewer sessions stop
    /// working at once), retention, the NDJSON stream and head publishing. A changed key that
    /// needs a restart (listeners, the app's address, the store, the log's id and signing key)
    /// keeps its running value and is named in a warning and in the `audit.config_reloaded`
    /// entry, which records every change.
    pub async fn reload(&self, config: Config) -> ReloadOutcome {
        let mut running = self.running.lock().await;
        let changes = crate::server::lifecycle::diff(&running.table, &config.table.0);
        // What can fail comes first, so a failure leaves everything as it was.
        let stream = if changes.touches("stream") {
            match config
                .stream
                .clone()
                .map(crate::writer::stream::NdjsonStream::open)
                .transpose()
            {
                Ok(stream) => Some(stream),
                Err(error) => {
                    return ReloadOutcome::Refused(vec![format!(
                        "stream.ndjson: cannot open the new stream: {error}"
                    )])
                }
            }
        } else {
            None
        };
        self.state.replace_policy(config.policy.clone());
        let ended = self.auth.replace_tokens(&config.admin.tokens);
        if ended > 0 {
            tracing::info!(
                sessions = ended,
                "viewer sessions of removed admin tokens ended"
            );
        }
        if let Some(stream) = stream {
            self.writer.handle().replace_stream(stream);
        }
        if changes.touches("otlp") {
            // Each output's cursor is kept by its name, so a replaced output goes on where the
            // old one stopped.
            for exporter in running.otlp.drain(..) {
                exporter.stop().await;
            }
            running.otlp = start_otlp(
                &self.store,
                &config.otlp,
                &self.log_id,
                &running.store,
                &self.state.metrics,
            );
        }
        if changes.touches("retention") {
            if let Some(retention) = running.retention.take() {
                retention.shutdown().await;
            }
            running.retention = RetentionTask::start(
                self.store.clone(),
                config.retention.clone(),
                self.log_id.clone(),
            );
        }
        let publishing = [
            "log.publish_heads",
            "log.publish_timeout",
            "log.publish_ca_file",
            "log.sign_every",
            "log.sign_interval",
            "log.heartbeat_interval",
        ];
        if publishing.iter().any(|key| changes.touches(key)) {
            // The key that signs stays the running one (changing it needs a restart).
            let mut log = config.log.clone();
            log.signer = running.log.signer.clone();
            log.signing_key_path = running.log.signing_key_path.clone();
            log.origin = running.log.origin.clone();
            if let (Some(signer), Some(key), Some(stats)) = (
                running.signer.take(),
                log.signer.clone(),
                self.signer_stats.clone(),
            ) {
                signer.shutdown().await;
                running.signer = Some(HeadSigner::start_with_stats(
                    self.store.clone(),
                    key,
                    self.log_id.clone(),
                    log.clone(),
                    self.writer.handle(),
                    stats,
                ));
            }
            running.log = log;
        }
        for key in changes.restart_needed() {
            tracing::warn!(%key, "changed in the configuration file, but takes effect only after a restart; the running value stays");
        }
        self.state.metrics.set_config_sha256(&config.sha256);
        self.writer
            .handle()
            .push(crate::server::lifecycle::reloaded_entry(
                &self.log_id,
                &running.sha256,
                &config.sha256,
                &changes,
            ));
        running.table =
            crate::server::lifecycle::in_force(&running.table, &config.table.0, &changes);
        running.sha256 = config.sha256;
        ReloadOutcome::Applied(changes)
    }

    pub fn writer(&self) -> WriterHandle {
        self.writer.handle()
    }

    /// The head signer's counters, `None` without a signing key. They outlive [`Self::shutdown`],
    /// so a caller can see what the shutdown head's publishing did.
    pub fn signer_stats(&self) -> Option<Arc<crate::signer::SignerStats>> {
        self.signer_stats.clone()
    }

    /// Stops accepting, lets in-flight requests finish (within a grace period), and writes every
    /// queued entry before returning.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        let _ = self.admin_task.await;
        let running = self.running.into_inner();
        if let Some(retention) = running.retention {
            retention.shutdown().await;
        }
        // The listeners are closed and every request is answered, so this follows every entry
        // of the run; the writer's final flush below stores it and the shutdown head covers it.
        self.writer
            .handle()
            .push(crate::server::lifecycle::run_entry(
                &self.log_id,
                crate::server::lifecycle::STOPPED,
                &running.sha256,
            ));
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
        // After the writer: the shutdown head covers every entry.
        if let Some(signer) = running.signer {
            signer.shutdown().await;
        }
        // After the writer too, so the outputs send the last entries (audit.stopped) now if
        // their collectors answer; anything left waits in the store for the next start.
        let drains = running.otlp.into_iter().map(|exporter| {
            let deadline = std::time::Instant::now() + OTLP_SHUTDOWN_PATIENCE;
            exporter.drain(deadline)
        });
        futures_util::future::join_all(drains).await;
        // Last: the database file alone then holds every entry and head, so copying it after a
        // clean stop copies the whole log.
        let _ = self.checkpoint_task.await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint(SHUTDOWN_CHECKPOINT_PATIENCE))
            .await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                "readers kept the WAL busy at shutdown: part of the log stays in the -wal file \
                 beside the database until the next start"
            ),
            Ok(Err(error)) => tracing::warn!(%error, "final WAL checkpoint failed"),
            Err(error) => tracing::warn!(%error, "final WAL checkpoint task failed"),
        }
        tracing::info!("auditgate stopped; every queued entry was written");
    }
}

async fn serve_proxy(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true)
        // Hostile heads are refused early with 431 and the connection closed: at most 256 header
        // lines, and the head (with any pipelined bytes) buffered to 256 KiB at most, so a
        // client cannot make a connection hold more.
        .max_headers(MAX_REQUEST_HEADERS)
        .max_buf_size(256 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(256 * 1024);
    if !state.config.http2 {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection_state = state.clone();
        // hyper's own header timeout starts only once it reads an HTTP/1 head, and the protocol
        // detection before it (HTTP/1 or HTTP/2) waits for bytes without limit: a connection
        // that never sends its first request would hold a slot forever. So the first head must
        // arrive within `header_read_timeout` of accept; later heads are hyper's to time.
        let first_request = Arc::new(tokio::sync::Notify::new());
        let first_request_seen = first_request.clone();
        let service = service_fn(move |request| {
            first_request_seen.notify_one();
            proxy::handle_counted(connection_state.clone(), peer, request)
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        let first_head_deadline = state.config.header_read_timeout;
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                _ = first_request.notified() => None,
                _ = tokio::time::sleep(first_head_deadline) => {
                    tracing::debug!(%peer, "no request head within header_read_timeout of accept; connection closed");
                    drop(permit);
                    return;
                }
            };
            let ended = match ended {
                Some(ended) => ended,
                None => connection.await,
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, error = %error, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after the shutdown grace period");
    }
}
